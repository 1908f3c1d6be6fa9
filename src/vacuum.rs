//! `bulkhead vacuum-deleted`: the physical end of a tenant deletion. `delete_tenant` removes the
//! rows in one transaction, but their old versions stay in the tables' files until VACUUM, and
//! planner statistics may sample them until ANALYZE. This runs VACUUM (ANALYZE) on every table
//! the receipt lists, then proves each on the receipt (`bulkhead.record_vacuum`).
//!
//! VACUUM cannot run inside a function or a transaction, and only a table's owner (or a
//! superuser) may vacuum it: run this as the role that created the extension.

use crate::database;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum VacuumError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("deletion receipt {0} does not exist (bulkhead.deletion_receipts)")]
    NoReceipt(Uuid),
    #[error("the role cannot vacuum {0}: connect as the owner of Bulkhead's tables (the role that created the extension) or a superuser")]
    NotOwner(String),
}

/// Vacuums and analyzes the receipt's tables; returns (table, dead row versions left) for each.
/// Index cleanup is forced: a small deletion from a large table would otherwise skip it, leaving
/// the deleted rows' index entries (the tenant's vectors among them) in place.
pub async fn vacuum_deleted(
    database_url: &str,
    receipt: Uuid,
) -> Result<Vec<(String, i64)>, VacuumError> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(database::connect_options(database_url)?)
        .await?;
    let tables: Option<Vec<String>> = sqlx::query_scalar(
        "select array(select pg_catalog.jsonb_array_elements_text(r.remaining_physical_state->'dead_row_versions'->'tables'))
         from bulkhead.deletion_receipts r where r.id OPERATOR(pg_catalog.=) $1",
    )
    .bind(receipt)
    .fetch_optional(&pool)
    .await?;
    let tables = tables.ok_or(VacuumError::NoReceipt(receipt))?;
    // A tenant index whose DROP met a lock at deletion goes first.
    sqlx::query("select bulkhead.drop_pending_indexes()")
        .execute(&pool)
        .await?;
    let mut proven = Vec::with_capacity(tables.len());
    for table in tables {
        // PostgreSQL quotes the name (regclass output), and says whether this role may vacuum it.
        let (statement, may): (String, bool) = sqlx::query_as(
            "select pg_catalog.format('vacuum (analyze, index_cleanup on) %s', $1::pg_catalog.regclass),
                    pg_catalog.pg_has_role(c.relowner, 'USAGE') or r.rolsuper
             from pg_catalog.pg_class c, pg_catalog.pg_roles r
             where c.oid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass and r.rolname OPERATOR(pg_catalog.=) current_user",
        )
        .bind(&table)
        .fetch_one(&pool)
        .await?;
        if !may {
            return Err(VacuumError::NotOwner(table));
        }
        sqlx::raw_sql(&statement).execute(&pool).await?;
        let dead: i64 =
            sqlx::query_scalar("select bulkhead.record_vacuum($1, $2::pg_catalog.regclass)")
                .bind(receipt)
                .bind(&table)
                .fetch_one(&pool)
                .await?;
        proven.push((table, dead));
    }
    Ok(proven)
}
