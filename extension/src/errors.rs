//! Raising policy errors as Postgres errors with their own SQLSTATE, detail and hint.

use bulkhead_policy::sqlstate::HasSqlState;
use bulkhead_policy::SqlState;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// Postgres' MAKE_SQLSTATE: five six-bit characters packed into an int.
pub fn packed_sqlstate(state: SqlState) -> i32 {
    state.chars().iter().enumerate().fold(0, |packed, (i, ch)| {
        packed | ((((*ch as i32) - ('0' as i32)) & 0x3F) << (6 * i))
    })
}

/// Raises `err` as an ERROR; never returns.
pub fn raise(err: &impl HasSqlState) -> ! {
    let code = PgSqlErrorCode::from(packed_sqlstate(err.sqlstate()));
    let mut report = ErrorReport::new(code, err.to_string(), "bulkhead");
    if let Some(detail) = err.detail() {
        report = report.set_detail(detail);
    }
    if let Some(hint) = err.hint() {
        report = report.set_hint(hint);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("an ERROR report does not return")
}
