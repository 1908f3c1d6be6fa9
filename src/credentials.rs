//! Resolves a credential reference (`env:NAME`, `file:/path`, `vault:<uuid>`) to its key at call
//! time. Errors name the reference, never what it holds.

use crate::providers::Secret;
use sqlx::PgPool;

/// Keys are short; a file larger than this is not a key file.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

pub async fn resolve(reference: &str, pool: &PgPool) -> Result<Secret, String> {
    let key = if let Some(name) = reference.strip_prefix("env:") {
        std::env::var(name)
            .map_err(|_| format!("environment variable {name} (from {reference}) is not set"))?
    } else if let Some(path) = reference.strip_prefix("file:") {
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(|err| format!("cannot read {reference}: {}", err.kind()))?;
        if meta.len() > MAX_KEY_FILE_BYTES {
            return Err(format!("{reference} is larger than a key file can be"));
        }
        tokio::fs::read_to_string(path)
            .await
            .map_err(|err| format!("cannot read {reference}: {}", err.kind()))?
    } else if let Some(id) = reference.strip_prefix("vault:") {
        let id = uuid::Uuid::parse_str(id).map_err(|_| format!("{reference} is not a vault id"))?;
        // Supabase Vault decrypts on read, for roles granted its view.
        let secret: Option<Option<String>> = sqlx::query_scalar(
            "select decrypted_secret from vault.decrypted_secrets where id OPERATOR(pg_catalog.=) $1",
        )
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(|err| match err {
            sqlx::Error::Database(db) => format!(
                "Supabase Vault is not readable by the worker ({}): {}",
                db.code().unwrap_or_default(),
                db.message()
            ),
            other => format!("reading {reference} failed: {other}"),
        })?;
        secret
            .flatten()
            .ok_or_else(|| format!("{reference} names no secret in Supabase Vault"))?
    } else {
        return Err("the credential is not a reference (env:, file: or vault:)".into());
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("{reference} holds an empty key"));
    }
    Ok(Secret::new(key.to_string()))
}
