//! Tenant context: which tenant the current transaction acts for.
//!
//! Two sources, in order: the transaction-local setting `bulkhead.tenant_id` (written only by
//! `bulkhead.set_tenant`), else the PostgREST/Supabase JWT claims in `request.jwt.claims` at a
//! configurable path. Every doubtful case resolves to "no tenant", which RLS turns into no rows.

use crate::sqlstate::{HasSqlState, SqlState};
use serde_json::Value;
use uuid::Uuid;

/// The claim path used when `bulkhead.jwt_tenant_claim` is not set: Supabase's `app_metadata` is
/// writable only with the service key, unlike `user_metadata`, which end users edit themselves.
pub const DEFAULT_CLAIM_PATH: &str = "app_metadata.tenant_id";

/// Claim objects that end users can write; a tenant id is never read from them.
const USER_WRITABLE_CLAIMS: &[&str] = &["user_metadata"];

const MAX_CLAIM_PATH_SEGMENTS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    #[error("invalid tenant claim path \"{path}\": {reason}")]
    InvalidClaimPath { path: String, reason: &'static str },
    #[error("tenant {0} does not exist")]
    UnknownTenant(Uuid),
    #[error("tenant context conflicts with the request's JWT")]
    JwtTenantMismatch { jwt_tenant: Uuid, requested: Uuid },
}

impl HasSqlState for ContextError {
    fn sqlstate(&self) -> SqlState {
        match self {
            ContextError::InvalidClaimPath { .. } => SqlState::INVALID_PARAMETER_VALUE,
            ContextError::UnknownTenant(_) => SqlState::UNDEFINED_OBJECT,
            ContextError::JwtTenantMismatch { .. } => SqlState::INSUFFICIENT_PRIVILEGE,
        }
    }

    fn detail(&self) -> Option<String> {
        Some(match self {
            ContextError::InvalidClaimPath { .. } => {
                "The claim path is a dot-separated list of 1 to 8 non-empty JSON keys, and may not \
                 pass through user_metadata, which end users can edit."
                    .to_string()
            }
            ContextError::UnknownTenant(id) => {
                format!("No tenant with id {id} exists, so no tenant context was set.")
            }
            ContextError::JwtTenantMismatch {
                jwt_tenant,
                requested,
            } => format!(
                "The request's JWT names tenant {jwt_tenant}, and a transaction carrying it \
                 cannot act for tenant {requested}."
            ),
        })
    }

    fn hint(&self) -> Option<String> {
        match self {
            ContextError::UnknownTenant(_) => {
                Some("Create it with bulkhead.create_tenant(slug, name) first.".to_string())
            }
            _ => None,
        }
    }
}

/// A validated path into the JWT claims, e.g. `app_metadata.tenant_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath {
    segments: Vec<String>,
}

impl ClaimPath {
    pub fn parse(path: &str) -> Result<ClaimPath, ContextError> {
        let invalid = |reason| ContextError::InvalidClaimPath {
            path: path.to_string(),
            reason,
        };
        let segments: Vec<String> = path.split('.').map(str::to_string).collect();
        if segments.len() > MAX_CLAIM_PATH_SEGMENTS {
            return Err(invalid("it has more than 8 segments"));
        }
        if segments.iter().any(|s| s.is_empty() || s.trim() != s) {
            return Err(invalid(
                "every segment must be a non-empty key without surrounding spaces",
            ));
        }
        if segments.iter().any(|s| {
            USER_WRITABLE_CLAIMS
                .iter()
                .any(|u| s.eq_ignore_ascii_case(u))
        }) {
            return Err(invalid("user_metadata is writable by end users"));
        }
        Ok(ClaimPath { segments })
    }

    /// The tenant id at this path in a claims document, if there is a well-formed one.
    pub fn tenant_in(&self, claims_json: &str) -> Option<Uuid> {
        let claims: Value = serde_json::from_str(claims_json).ok()?;
        let mut node = &claims;
        for key in &self.segments {
            node = node.as_object()?.get(key)?;
        }
        parse_tenant_id(node.as_str()?)
    }
}

impl Default for ClaimPath {
    fn default() -> Self {
        ClaimPath::parse(DEFAULT_CLAIM_PATH).expect("the default claim path is valid")
    }
}

/// Parses a tenant id. The nil uuid is never a tenant: treating it as one would let a zeroed
/// value from a buggy caller act as a real context.
pub fn parse_tenant_id(text: &str) -> Option<Uuid> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return None;
    }
    Uuid::parse_str(trimmed).ok().filter(|id| !id.is_nil())
}

/// What the transaction-local setting says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingValue {
    /// Missing or empty: fall back to the JWT.
    Unset,
    Tenant(Uuid),
    /// Set but unparsable: fail closed, do not fall back.
    Garbage,
}

impl SettingValue {
    pub fn read(setting: Option<&str>) -> SettingValue {
        match setting.map(str::trim) {
            None | Some("") => SettingValue::Unset,
            Some(text) => parse_tenant_id(text).map_or(SettingValue::Garbage, SettingValue::Tenant),
        }
    }
}

/// The tenant the transaction acts for, or `None` (which means: no rows anywhere).
///
/// When both sources name a tenant and they differ, the answer is `None`: a transaction
/// authenticated as one tenant must never be steered to another by a setting.
pub fn resolve_tenant(
    setting: Option<&str>,
    jwt_claims: Option<&str>,
    path: &ClaimPath,
) -> Option<Uuid> {
    let from_jwt = || jwt_claims.and_then(|claims| path.tenant_in(claims));
    match SettingValue::read(setting) {
        SettingValue::Garbage => None,
        SettingValue::Unset => from_jwt(),
        SettingValue::Tenant(tenant) => match from_jwt() {
            Some(jwt_tenant) if jwt_tenant != tenant => None,
            _ => Some(tenant),
        },
    }
}

/// May a transaction whose JWT names `jwt_tenant` switch its context to `requested`?
pub fn check_switch(jwt_tenant: Option<Uuid>, requested: Uuid) -> Result<(), ContextError> {
    match jwt_tenant {
        Some(jwt_tenant) if jwt_tenant != requested => Err(ContextError::JwtTenantMismatch {
            jwt_tenant,
            requested,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "6f1c1a4e-3b0a-4b53-9a39-9d1b7f0f2a01";
    const B: &str = "0b7e6d33-2c4f-4e0e-8a44-51f8d9e5c7b2";

    fn a() -> Uuid {
        Uuid::parse_str(A).unwrap()
    }

    fn claims(json: &str) -> Option<&str> {
        Some(json)
    }

    #[test]
    fn setting_wins_when_present() {
        let path = ClaimPath::default();
        assert_eq!(resolve_tenant(Some(A), None, &path), Some(a()));
        assert_eq!(
            resolve_tenant(Some(&format!("  {A} ")), None, &path),
            Some(a())
        );
    }

    #[test]
    fn missing_or_empty_everything_is_no_tenant() {
        let path = ClaimPath::default();
        assert_eq!(resolve_tenant(None, None, &path), None);
        assert_eq!(resolve_tenant(Some(""), None, &path), None);
        assert_eq!(resolve_tenant(Some("   "), Some(""), &path), None);
        assert_eq!(resolve_tenant(None, claims("{}"), &path), None);
    }

    #[test]
    fn garbage_setting_fails_closed_even_with_a_valid_jwt() {
        let path = ClaimPath::default();
        let jwt = format!(r#"{{"app_metadata":{{"tenant_id":"{A}"}}}}"#);
        assert_eq!(resolve_tenant(Some("not-a-uuid"), Some(&jwt), &path), None);
        assert_eq!(
            resolve_tenant(
                Some("00000000-0000-0000-0000-000000000000"),
                Some(&jwt),
                &path
            ),
            None
        );
    }

    #[test]
    fn jwt_fallback_reads_app_metadata() {
        let path = ClaimPath::default();
        let jwt = format!(r#"{{"sub":"u1","app_metadata":{{"tenant_id":"{A}"}}}}"#);
        assert_eq!(resolve_tenant(None, Some(&jwt), &path), Some(a()));
        assert_eq!(resolve_tenant(Some(""), Some(&jwt), &path), Some(a()));
    }

    #[test]
    fn user_metadata_is_never_read() {
        let path = ClaimPath::default();
        let jwt = format!(r#"{{"user_metadata":{{"tenant_id":"{A}"}}}}"#);
        assert_eq!(resolve_tenant(None, Some(&jwt), &path), None);
        for bad in [
            "user_metadata.tenant_id",
            "app_metadata.User_Metadata.tenant",
            "x.user_metadata",
        ] {
            let err = ClaimPath::parse(bad).unwrap_err();
            assert_eq!(err.sqlstate(), SqlState::INVALID_PARAMETER_VALUE, "{bad}");
        }
    }

    #[test]
    fn unparsable_or_mistyped_claims_are_no_tenant() {
        let path = ClaimPath::default();
        for jwt in [
            "not json",
            "[]",
            r#"{"app_metadata":"x"}"#,
            r#"{"app_metadata":{"tenant_id":42}}"#,
            r#"{"app_metadata":{"tenant_id":"nope"}}"#,
            r#"{"app_metadata":{"tenant_id":null}}"#,
            r#"{"app_metadata":{"tenant_id":""}}"#,
            r#"{"app_metadata":{"tenant_id":"00000000-0000-0000-0000-000000000000"}}"#,
        ] {
            assert_eq!(resolve_tenant(None, Some(jwt), &path), None, "{jwt}");
        }
    }

    #[test]
    fn conflicting_sources_fail_closed() {
        let path = ClaimPath::default();
        let jwt_b = format!(r#"{{"app_metadata":{{"tenant_id":"{B}"}}}}"#);
        assert_eq!(resolve_tenant(Some(A), Some(&jwt_b), &path), None);
        let jwt_a = format!(r#"{{"app_metadata":{{"tenant_id":"{A}"}}}}"#);
        assert_eq!(resolve_tenant(Some(A), Some(&jwt_a), &path), Some(a()));
    }

    #[test]
    fn custom_claim_paths() {
        let path = ClaimPath::parse("https://example.com/claims.org").unwrap();
        let jwt = format!(r#"{{"https://example.com/claims":{{"org":"{A}"}}}}"#);
        // Dots split keys, so a key containing a dot is not reachable; documented limitation.
        assert_eq!(path.tenant_in(&jwt), None);
        let path = ClaimPath::parse("tenant").unwrap();
        assert_eq!(path.tenant_in(&format!(r#"{{"tenant":"{A}"}}"#)), Some(a()));
    }

    #[test]
    fn claim_path_validation() {
        for bad in ["", ".", "a..b", " a.b", "a.b ", "a.b.c.d.e.f.g.h.i"] {
            assert!(ClaimPath::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(ClaimPath::parse("a.b.c.d.e.f.g.h").is_ok());
    }

    #[test]
    fn switching_against_the_jwt_is_refused() {
        let b = Uuid::parse_str(B).unwrap();
        assert!(check_switch(None, a()).is_ok());
        assert!(check_switch(Some(a()), a()).is_ok());
        let err = check_switch(Some(a()), b).unwrap_err();
        assert_eq!(err.sqlstate(), SqlState::INSUFFICIENT_PRIVILEGE);
        assert!(err.detail().unwrap().contains(B));
    }
}
