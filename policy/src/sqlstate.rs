//! SQLSTATE codes that Bulkhead raises. Every user-facing error maps to one of these, never to
//! the generic 22000 / XX000 that a plain `Err` or `error!()` would give.

/// A five-character SQLSTATE, e.g. `42501`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlState(&'static str);

impl SqlState {
    /// 0A000: a construct this feature deliberately does not support.
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");
    /// 22003: a number too large to compute with.
    pub const NUMERIC_VALUE_OUT_OF_RANGE: SqlState = SqlState("22003");
    /// 22004: a required argument is NULL.
    pub const NULL_VALUE_NOT_ALLOWED: SqlState = SqlState("22004");
    /// 22P05: a character PostgreSQL text cannot hold (U+0000).
    pub const UNTRANSLATABLE_CHARACTER: SqlState = SqlState("22P05");
    /// 22023: an argument or setting has a value that is well-typed but not acceptable.
    pub const INVALID_PARAMETER_VALUE: SqlState = SqlState("22023");
    /// 42601: text that does not parse (a template).
    pub const SYNTAX_ERROR: SqlState = SqlState("42601");
    /// 54000: an input or output over a size limit.
    pub const PROGRAM_LIMIT_EXCEEDED: SqlState = SqlState("54000");
    /// 54001: work over a complexity limit (fuel, nesting).
    pub const STATEMENT_TOO_COMPLEX: SqlState = SqlState("54001");
    /// 42501: the caller is not allowed to do this.
    pub const INSUFFICIENT_PRIVILEGE: SqlState = SqlState("42501");
    /// 42704: a named object (here: a tenant) does not exist or is not visible.
    pub const UNDEFINED_OBJECT: SqlState = SqlState("42704");
    /// 55000: the object is not in the state the operation needs.
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: SqlState = SqlState("55000");
    /// 53200: a fixed-size shared structure is full.
    pub const OUT_OF_MEMORY: SqlState = SqlState("53200");
    /// PT429: a tenant's budget or rate limit refuses the call (PostgREST answers HTTP 429).
    pub const TENANT_LIMIT_EXCEEDED: SqlState = SqlState("PT429");
    /// PT401: the caller's credential (a gateway API key) is unknown, revoked or expired.
    pub const UNAUTHENTICATED: SqlState = SqlState("PT401");
    /// PT403: the tenant may not make the call (PostgREST answers HTTP 403).
    pub const TENANT_FORBIDDEN: SqlState = SqlState("PT403");

    pub const fn code(self) -> &'static str {
        self.0
    }

    /// The five characters, for building Postgres' packed error code.
    pub fn chars(self) -> [u8; 5] {
        let b = self.0.as_bytes();
        [b[0], b[1], b[2], b[3], b[4]]
    }
}

/// Implemented by every module's error enum: the message is its `Display`, lowercase and short;
/// the detail and hint are full sentences.
pub trait HasSqlState: std::fmt::Display {
    fn sqlstate(&self) -> SqlState;

    fn detail(&self) -> Option<String> {
        None
    }

    fn hint(&self) -> Option<String> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_five_uppercase_alphanumerics() {
        for state in [
            SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
            SqlState::NULL_VALUE_NOT_ALLOWED,
            SqlState::INVALID_PARAMETER_VALUE,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::UNDEFINED_OBJECT,
            SqlState::FEATURE_NOT_SUPPORTED,
            SqlState::SYNTAX_ERROR,
            SqlState::PROGRAM_LIMIT_EXCEEDED,
            SqlState::STATEMENT_TOO_COMPLEX,
            SqlState::UNTRANSLATABLE_CHARACTER,
            SqlState::OUT_OF_MEMORY,
            SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
            SqlState::TENANT_LIMIT_EXCEEDED,
            SqlState::TENANT_FORBIDDEN,
        ] {
            let code = state.code();
            assert_eq!(code.len(), 5, "{code}");
            assert!(
                code.chars()
                    .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()),
                "{code}"
            );
        }
    }
}
