//! The program's own database sessions: how they connect, and which roles they refuse.
//!
//! Every name the program's SQL uses is resolved through the session's search_path, operators
//! and casts included (`$1::float8 / 1000` looks up `/`). A role with CREATE on any schema on
//! that path could plant an operator that then runs as the worker, so the path is pinned to
//! `pg_catalog, pg_temp` at connection start (PostgreSQL never looks up functions or operators
//! in pg_temp), and the SQL qualifies what it calls as well.

use sqlx::postgres::{PgConnectOptions, PgPool};
use std::str::FromStr;

/// The pinned search_path (no space: it travels in the startup packet's `options`).
pub const SEARCH_PATH: &str = "pg_catalog,pg_temp";

#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(
        "role {role:?} is {what}: row level security would not apply to this program's sessions, \
         so a bug here could reach every tenant's rows. Connect as a role in bulkhead_worker, or \
         pass --allow-privileged-role if you mean it"
    )]
    Privileged { role: String, what: &'static str },
}

/// Connection options for `url` with the search_path pinned.
pub fn connect_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    Ok(PgConnectOptions::from_str(url)?.options([("search_path", SEARCH_PATH)]))
}

/// Refuses a SUPERUSER or BYPASSRLS role unless the operator said it means it.
pub async fn refuse_privileged_role(pool: &PgPool, allow: bool) -> Result<(), RoleError> {
    let (role, superuser, bypass): (String, bool, bool) = sqlx::query_as(
        "select r.rolname::pg_catalog.text, r.rolsuper, r.rolbypassrls
         from pg_catalog.pg_roles r where r.rolname OPERATOR(pg_catalog.=) current_user",
    )
    .fetch_one(pool)
    .await?;
    let what = match (superuser, bypass) {
        (true, _) => "a superuser",
        (false, true) => "BYPASSRLS",
        (false, false) => return Ok(()),
    };
    if allow {
        return Ok(());
    }
    Err(RoleError::Privileged { role, what })
}

/// Text PostgreSQL accepts: U+0000 becomes U+FFFD. A model can be made to emit it, and an
/// OpenAI-compatible server can echo it from a client's field.
pub fn without_nul(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// A JSON value jsonb accepts (it refuses \u0000 in strings).
pub fn without_nul_json(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::String(text) => serde_json::Value::String(without_nul(text)),
        serde_json::Value::Array(items) => items.iter().map(without_nul_json).collect(),
        serde_json::Value::Object(fields) => fields
            .iter()
            .map(|(k, v)| (without_nul(k), without_nul_json(v)))
            .collect(),
        other => other.clone(),
    }
}
