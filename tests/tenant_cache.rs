//! set_tenant remembers, per backend, the tenants it found (with bulkhead preloaded, as
//! `make db` runs it). These tests show the memory is really used, and that a change to
//! `bulkhead.tenants` (a deletion, a rolled-back creation) is never answered from it.
//!
//! The twins change `bulkhead.tenants` with `session_replication_role = replica`, which skips
//! the invalidation trigger for that session only: the stale answer they then get is what the
//! protected paths would give without the trigger.

mod common;

use common::{admin, app, create_tenant, sqlstate, superuser};
use sqlx::{Connection, PgConnection};
use std::time::Duration;
use uuid::Uuid;

/// set_tenant in a transaction of its own; Ok when the tenant was accepted.
async fn enter(conn: &mut PgConnection, tenant: Uuid) -> Result<(), sqlx::Error> {
    let tx = common::begin_as(conn, tenant).await?;
    tx.rollback().await
}

/// Removes a tenant's rows without firing any trigger (foreign keys included).
async fn delete_silently(tenant: Uuid) {
    let mut conn = superuser().await;
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("set local session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    for table in ["bulkhead.tenant_settings", "bulkhead.tenants"] {
        let column = if table == "bulkhead.tenants" {
            "id"
        } else {
            "tenant_id"
        };
        sqlx::query(&format!("delete from {table} where {column} = $1"))
            .bind(tenant)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
}

async fn assert_preloaded() {
    let preload: String = sqlx::query_scalar("select current_setting('shared_preload_libraries')")
        .fetch_one(&mut superuser().await)
        .await
        .unwrap();
    assert!(
        preload.split(',').any(|lib| lib.trim() == "bulkhead"),
        "these tests need the cluster of `make db` (bulkhead preloaded), got {preload:?}"
    );
}

// One test: the twins need no other session to change `bulkhead.tenants` meanwhile, and the
// tests of one binary run in parallel.
#[tokio::test]
async fn changes_to_the_registry_are_never_answered_from_memory() {
    assert_preloaded().await;
    a_deleted_tenant_is_not_entered_from_memory().await;
    a_tenant_seen_in_a_rolled_back_transaction_is_forgotten().await;
}

async fn a_deleted_tenant_is_not_entered_from_memory() {
    let mut admin = admin().await;
    let mut conn = app().await;

    // The twin: deleted without the trigger, the remembered answer still lets the app in, for
    // at most the memory's time to live.
    let unsignalled = create_tenant(&mut admin, "cache-twin").await;
    enter(&mut conn, unsignalled).await.unwrap();
    delete_silently(unsignalled).await;
    assert!(
        enter(&mut conn, unsignalled).await.is_ok(),
        "set_tenant did not answer from memory: the deletion test below could not fail"
    );
    // With the memory switched off, the same session looks the tenant up, and is refused.
    sqlx::query("set bulkhead.remember_tenants = off")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(sqlstate(&enter(&mut conn, unsignalled).await), "42704");
    sqlx::query("reset bulkhead.remember_tenants")
        .execute(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(sqlstate(&enter(&mut conn, unsignalled).await), "42704");

    // Deleted through the control plane, the tenant is refused at once.
    let tenant = create_tenant(&mut admin, "cache").await;
    enter(&mut conn, tenant).await.unwrap();
    sqlx::query("select bulkhead.delete_tenant($1)")
        .bind(tenant)
        .execute(&mut admin)
        .await
        .unwrap();
    assert_eq!(sqlstate(&enter(&mut conn, tenant).await), "42704");
}

async fn a_tenant_seen_in_a_rolled_back_transaction_is_forgotten() {
    let mut conn = superuser().await;

    for silent in [true, false] {
        let mut tx = conn.begin().await.unwrap();
        if silent {
            sqlx::query("set local session_replication_role = replica")
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        let tenant: Uuid = sqlx::query_scalar("select bulkhead.create_tenant($1, 'Rolled back')")
            .bind(common::unique_slug("cache-rollback"))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        sqlx::query("select bulkhead.set_tenant($1)")
            .bind(tenant)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.rollback().await.unwrap();

        let after = enter(&mut conn, tenant).await;
        if silent {
            assert!(
                after.is_ok(),
                "without the trigger the rolled-back tenant should still be remembered (twin)"
            );
        } else {
            assert_eq!(
                sqlstate(&after),
                "42704",
                "a rolled-back tenant was entered"
            );
        }
    }
}
