//! Tenant deletion covers every tenant table, proven table by table.
//!
//! The list of tables comes from the catalog (every table in schema bulkhead with a tenant_id
//! column), not from this file: a new table is checked the day it is created. A table that the
//! fixture leaves empty fails the test, so a new table must get fixture rows here to be proven.

mod common;

use common::{admin, create_tenant, sqlstate, superuser};
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

/// Tables holding tenant data, as the catalog says (receipts outlive tenants by design).
async fn catalog_tenant_tables(conn: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar(
        "select c.oid::regclass::text from pg_class c join pg_attribute a on a.attrelid = c.oid \
         where c.relnamespace = 'bulkhead'::regnamespace and c.relkind in ('r', 'p') \
           and not c.relispartition and a.attname = 'tenant_id' and not a.attisdropped \
           and coalesce(col_description(c.oid, a.attnum), '') not like 'bulkhead:kept%' order by 1",
    )
    .fetch_all(conn)
    .await
    .unwrap()
}

/// Rows of `tenant` in `table`, counted as superuser (RLS does not hide anything).
async fn rows_of(conn: &mut PgConnection, table: &str, tenant: Uuid) -> i64 {
    // The table name comes from the catalog query above; quote_ident-safe regclass text.
    sqlx::query_scalar(&format!(
        "select count(*) from {table} where tenant_id = $1"
    ))
    .bind(tenant)
    .fetch_one(conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn deletion_empties_every_tenant_table_and_only_that_tenant() {
    let mut admin_conn = admin().await;
    let doomed = create_tenant(&mut admin_conn, "doomed").await;
    let survivor = create_tenant(&mut admin_conn, "survivor").await;
    common::populate_tenant(&mut admin_conn, doomed).await;
    common::populate_tenant(&mut admin_conn, survivor).await;

    let mut su = superuser().await;
    let doomed_index: String = sqlx::query_scalar(
        "select index_name from bulkhead.retrieval_settings where tenant_id = $1",
    )
    .bind(doomed)
    .fetch_one(&mut su)
    .await
    .unwrap();
    let tables = catalog_tenant_tables(&mut su).await;
    let listed: Vec<String> = sqlx::query_scalar(
        "select table_name::text from bulkhead.tenant_scoped_tables() order by 1",
    )
    .fetch_all(&mut su)
    .await
    .unwrap();
    assert_eq!(
        tables, listed,
        "bulkhead.tenant_scoped_tables() must list every tenant table"
    );
    assert!(!tables.is_empty());

    let mut before = Vec::new();
    for table in &tables {
        let doomed_rows = rows_of(&mut su, table, doomed).await;
        assert!(
            doomed_rows > 0,
            "{table} has no fixture rows: add some to common::populate_tenant() so its deletion is proven"
        );
        before.push((
            table.clone(),
            doomed_rows,
            rows_of(&mut su, table, survivor).await,
        ));
    }

    let receipt: Uuid = sqlx::query_scalar("select bulkhead.delete_tenant($1)")
        .bind(doomed)
        .fetch_one(&mut admin_conn)
        .await
        .unwrap();

    for (table, doomed_rows, survivor_rows) in &before {
        assert_eq!(
            rows_of(&mut su, table, doomed).await,
            0,
            "{table} still holds the deleted tenant's rows"
        );
        assert_eq!(
            rows_of(&mut su, table, survivor).await,
            *survivor_rows,
            "{table} lost another tenant's rows"
        );
        let recorded: i64 = sqlx::query_scalar(
            "select rows_deleted from bulkhead.deletion_receipt_steps where receipt_id = $1 and step = $2",
        )
        .bind(receipt)
        .bind(table)
        .fetch_one(&mut su)
        .await
        .unwrap_or_else(|_| panic!("the receipt has no step for {table}"));
        assert_eq!(recorded, *doomed_rows, "the receipt's count for {table}");
    }
    // The namespace at Pinecone goes too: one job, outliving the tenant, addressed from its row.
    let namespace_jobs: Vec<String> = sqlx::query_scalar(
        "select namespace from bulkhead.pinecone_namespace_deletions where deleted_tenant = $1 and receipt_id = $2",
    )
    .bind(doomed)
    .bind(receipt)
    .fetch_all(&mut su)
    .await
    .unwrap();
    assert_eq!(namespace_jobs, vec![format!("tenant-{doomed}")]);
    // Dropped now, or (when another transaction held chunks: the other tests here) deferred
    // and dropped by drop_pending_indexes, as the receipt says.
    assert_eq!(
        index_left_after_pending_drops(&mut su, &doomed_index).await,
        None,
        "the deleted tenant's vector index is gone"
    );
    let tenant_rows: i64 =
        sqlx::query_scalar("select count(*) from bulkhead.tenants where id = $1")
            .bind(doomed)
            .fetch_one(&mut su)
            .await
            .unwrap();
    assert_eq!(tenant_rows, 0);
    let receipt_tenant: Uuid =
        sqlx::query_scalar("select tenant_id from bulkhead.deletion_receipts where id = $1")
            .bind(receipt)
            .fetch_one(&mut su)
            .await
            .unwrap();
    assert_eq!(receipt_tenant, doomed);

    // Nothing in schema bulkhead names the deleted tenant any more, whatever the column: every
    // uuid, text and jsonb column of every table is searched for its id, except the columns
    // whose marker says they outlive it (receipts, the namespace deletion job).
    let columns: Vec<(String, String)> = sqlx::query_as(
        "select c.oid::regclass::text, a.attname::text
         from pg_class c join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
         where c.relnamespace = 'bulkhead'::regnamespace and c.relkind in ('r', 'p')
           and a.atttypid in ('uuid'::regtype, 'text'::regtype, 'jsonb'::regtype)
           and coalesce(col_description(c.oid, a.attnum), '') not like 'bulkhead:kept%'
         order by 1, 2",
    )
    .fetch_all(&mut su)
    .await
    .unwrap();
    assert!(
        columns.iter().any(|c| c.0 == "bulkhead.usage_drift"),
        "the scan reaches usage_drift"
    );
    let mut left = Vec::new();
    for (table, column) in &columns {
        // Identifiers from the catalog, quoted by PostgreSQL; the id is a bound parameter.
        let count_sql: String = sqlx::query_scalar(
            "select format('select count(*) from %s where strpos(%I::text, $1) > 0', $1::regclass, $2)",
        )
        .bind(table)
        .bind(column)
        .fetch_one(&mut su)
        .await
        .unwrap();
        let n: i64 = sqlx::query_scalar(&count_sql)
            .bind(doomed.to_string())
            .fetch_one(&mut su)
            .await
            .unwrap();
        if n > 0 {
            left.push(format!("{table}.{column}: {n}"));
        }
    }
    assert_eq!(
        left,
        Vec::<String>::new(),
        "rows still naming the deleted tenant"
    );

    // The provider reports the deleted tenant's project for days after (the deletion day is
    // reconciled the next day; a leaked key goes on being used): reconciliation records that usage
    // against the receipt, never the project's id. The twin: the survivor's project, reported in
    // the same report, is recorded by its id.
    let day: String =
        sqlx::query_scalar("select (current_date - 3000 - (random() * 3000)::int)::text")
            .fetch_one(&mut su)
            .await
            .unwrap();
    let report = serde_json::json!([
        {"project_id": format!("proj_{doomed}"), "input_tokens": 10, "output_tokens": 1, "requests": 1},
        {"project_id": format!("proj_{survivor}"), "input_tokens": 20, "output_tokens": 2, "requests": 1},
    ]);
    sqlx::query("select bulkhead.reconcile_usage('openai_compatible', $1::date, $2)")
        .bind(&day)
        .bind(&report)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    let recorded: Vec<(String, String)> = sqlx::query_as(
        "select provider_project_id, attribution from bulkhead.usage_drift
         where provider = 'openai_compatible' and usage_date = $1::date order by attribution",
    )
    .bind(&day)
    .fetch_all(&mut su)
    .await
    .unwrap();
    assert_eq!(
        recorded,
        vec![
            (
                format!("deleted tenant (receipt {receipt})"),
                "deleted_tenant".to_string()
            ),
            (format!("proj_{survivor}"), "unknown".to_string()),
        ]
    );
    let survivor_drift: i64 = sqlx::query_scalar(
        "select count(*) from bulkhead.usage_drift where provider_project_id = 'proj_' || $1::text and provider = 'openai'",
    )
    .bind(survivor)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(survivor_drift, 2, "the survivor's drift rows stay");
    let drift_steps: Vec<(String, i64)> = sqlx::query_as(
        "select step, rows_deleted from bulkhead.deletion_receipt_steps
         where receipt_id = $1 and step like 'bulkhead.usage_drift.%' order by step",
    )
    .bind(receipt)
    .fetch_all(&mut su)
    .await
    .unwrap();
    assert_eq!(
        drift_steps,
        vec![
            ("bulkhead.usage_drift.credential_id".to_string(), 1),
            ("bulkhead.usage_drift.dedicated_tenant".to_string(), 0),
            ("bulkhead.usage_drift.provider_project_id".to_string(), 1),
        ],
        "each marked column is a step, in column order (the dedicated row went by its credential)"
    );

    // The physical state the transaction could not remove is on the receipt, and VACUUM ANALYZE
    // is proven table by table. Before any vacuum, the proof is refused.
    let physical: serde_json::Value = sqlx::query_scalar(
        "select remaining_physical_state from bulkhead.deletion_receipts where id = $1",
    )
    .bind(receipt)
    .fetch_one(&mut su)
    .await
    .unwrap();
    for key in [
        "dead_row_versions",
        "planner_statistics",
        "wal",
        "backups",
        "pinecone",
    ] {
        assert!(physical.get(key).is_some(), "{key} missing from {physical}");
    }
    let touched: Vec<String> = physical["dead_row_versions"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    assert!(
        touched.contains(&"bulkhead.usage_drift".to_string())
            && touched.contains(&"bulkhead.chunks".to_string()),
        "{touched:?}"
    );
    let early =
        sqlx::query_scalar::<_, i64>("select bulkhead.record_vacuum($1, 'bulkhead.tenants')")
            .bind(receipt)
            .fetch_one(&mut admin_conn)
            .await;
    assert_eq!(
        sqlstate(&early),
        "55000",
        "no vacuum ran since the deletion yet"
    );
    let url = std::env::var("BULKHEAD_TEST_DATABASE_URL").unwrap();
    let as_admin = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["vacuum-deleted", "--receipt", &receipt.to_string()])
        .env(
            "DATABASE_URL",
            url.replacen("postgres@", "bulkhead_test_admin@", 1),
        )
        .output()
        .unwrap();
    assert!(
        !as_admin.status.success(),
        "only the tables' owner may vacuum them"
    );
    assert!(String::from_utf8_lossy(&as_admin.stderr).contains("owner"));
    let vacuumed = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["vacuum-deleted", "--receipt", &receipt.to_string()])
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(
        vacuumed.status.success(),
        "{}",
        String::from_utf8_lossy(&vacuumed.stderr)
    );
    let proven: Vec<String> = sqlx::query_scalar(
        "select replace(step, 'vacuumed and analyzed ', '') from bulkhead.deletion_receipt_steps
         where receipt_id = $1 and step like 'vacuumed and analyzed %' order by 1",
    )
    .bind(receipt)
    .fetch_all(&mut su)
    .await
    .unwrap();
    let mut expected = touched.clone();
    expected.sort();
    assert_eq!(
        proven, expected,
        "every table the deletion touched is proven vacuumed"
    );
}

#[tokio::test]
async fn deletion_is_all_or_nothing() {
    let mut admin_conn = admin().await;
    let tenant = create_tenant(&mut admin_conn, "atomic").await;
    common::populate_tenant(&mut admin_conn, tenant).await;
    // A row elsewhere that references the tenant makes the final delete fail: nothing may be
    // half-deleted, and no receipt may claim otherwise.
    let mut su = superuser().await;
    su.execute("create table if not exists public.it_external_ref (tenant uuid references bulkhead.tenants (id))")
        .await
        .unwrap();
    sqlx::query("insert into public.it_external_ref values ($1)")
        .bind(tenant)
        .execute(&mut su)
        .await
        .unwrap();

    let mut tx = admin_conn.begin().await.unwrap();
    let failed = sqlx::query_scalar::<_, Uuid>("select bulkhead.delete_tenant($1)")
        .bind(tenant)
        .fetch_one(&mut *tx)
        .await;
    assert_eq!(sqlstate(&failed), "23503");
    tx.rollback().await.unwrap();

    assert_eq!(
        rows_of(&mut su, "bulkhead.tenant_settings", tenant).await,
        1
    );
    let receipts: i64 =
        sqlx::query_scalar("select count(*) from bulkhead.deletion_receipts where tenant_id = $1")
            .bind(tenant)
            .fetch_one(&mut su)
            .await
            .unwrap();
    assert_eq!(receipts, 0);
    sqlx::query("delete from public.it_external_ref where tenant = $1")
        .bind(tenant)
        .execute(&mut su)
        .await
        .unwrap();
}

/// Two deletions at once (CI saw it: 40P01 from `delete_tenant`): each holds a row-exclusive lock
/// on chunks from deleting its rows, and each then asks for the access-exclusive lock that
/// DROP INDEX needs. PostgreSQL reports that cycle at once, before any lock_timeout. The second
/// deletion here stands in as a transaction that holds chunks row-exclusive and waits for an
/// access-exclusive lock; the deletion must complete with its index drop deferred, not fail.
#[tokio::test]
async fn concurrent_deletions_defer_the_index_drop_instead_of_deadlocking() {
    let mut admin_conn = admin().await;
    let tenant = create_tenant(&mut admin_conn, "concurrent").await;
    common::populate_tenant(&mut admin_conn, tenant).await;
    let mut su = superuser().await;
    let index: String = sqlx::query_scalar(
        "select index_name from bulkhead.retrieval_settings where tenant_id = $1",
    )
    .bind(tenant)
    .fetch_one(&mut su)
    .await
    .unwrap();

    // The deletion's transaction already writes chunks (as delete_tenant does before its DROP).
    let mut deleting = superuser().await;
    deleting.execute("begin").await.unwrap();
    deleting
        .execute("lock table bulkhead.chunks in row exclusive mode")
        .await
        .unwrap();
    // The other deletion: it writes chunks too, then waits to drop its own index.
    let waiting = other_deletion_waiting_for_chunks(&mut su).await;

    let receipt = sqlx::query_scalar::<_, Uuid>("select bulkhead.delete_tenant($1)")
        .bind(tenant)
        .fetch_one(&mut deleting)
        .await;
    let receipt =
        receipt.unwrap_or_else(|e| panic!("delete_tenant failed beside another deletion: {e}"));
    let deferred: i64 = sqlx::query_scalar(
        "select count(*) from bulkhead.deletion_receipt_steps where receipt_id = $1 and step like 'tenant vector index drop deferred%'",
    )
    .bind(receipt)
    .fetch_one(&mut deleting)
    .await
    .unwrap();
    assert_eq!(deferred, 1, "the receipt says the index drop was deferred");
    deleting.execute("commit").await.unwrap();
    let (mut other, got) = waiting.await.unwrap();
    got.unwrap();
    other.execute("rollback").await.unwrap();

    assert_eq!(
        index_left_after_pending_drops(&mut su, &index).await,
        None,
        "the deferred index is dropped later"
    );
}

/// A transaction that holds chunks row-exclusive and waits for its access-exclusive lock, as a
/// second deletion does; returned once PostgreSQL shows it waiting. The other tests of this file
/// delete tenants at the same time: when one of them is itself waiting for chunks, PostgreSQL
/// refuses this request at once as a deadlock (40P01), and it is asked again; any other outcome
/// (granted, another error, no wait within 60 s) fails the test instead of waiting forever.
async fn other_deletion_waiting_for_chunks(
    su: &mut PgConnection,
) -> tokio::task::JoinHandle<(PgConnection, Result<(), sqlx::Error>)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    'attempt: loop {
        let mut other = superuser().await;
        other.execute("begin").await.unwrap();
        // Its own deadlock check must not end the wait once it is queued (a third deletion that
        // waits a moment for chunks forms a cycle with it, which that deletion's lock_timeout
        // ends); only the check made on joining the queue remains, answered below.
        other
            .execute("set local deadlock_timeout = '60s'")
            .await
            .unwrap();
        other
            .execute("lock table bulkhead.chunks in row exclusive mode")
            .await
            .unwrap();
        let other_pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
            .fetch_one(&mut other)
            .await
            .unwrap();
        let waiting = tokio::spawn(async move {
            let got = other
                .execute("lock table bulkhead.chunks in access exclusive mode")
                .await
                .map(|_| ());
            (other, got)
        });
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "the other transaction never waited for chunks"
            );
            if waiting.is_finished() {
                let (_, got) = waiting.await.unwrap();
                match got {
                    Err(e)
                        if e.as_database_error().and_then(|d| d.code()).as_deref()
                            == Some("40P01") =>
                    {
                        continue 'attempt
                    }
                    outcome => {
                        panic!("the other transaction did not wait for chunks: {outcome:?}")
                    }
                }
            }
            let waits: bool = sqlx::query_scalar(
                "select exists (select from pg_locks where pid = $1 and not granted and mode = 'AccessExclusiveLock')",
            )
            .bind(other_pid)
            .fetch_one(&mut *su)
            .await
            .unwrap();
            if waits {
                return waiting;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

/// The index's name if it still exists after drop_pending_indexes has had a few chances (other
/// tests may hold chunks a moment, and a drop that meets them is deferred again).
async fn index_left_after_pending_drops(su: &mut PgConnection, index: &str) -> Option<String> {
    let mut left = None;
    for _ in 0..50 {
        left = sqlx::query_scalar("select to_regclass('bulkhead.' || quote_ident($1))::text")
            .bind(index)
            .fetch_one(&mut *su)
            .await
            .unwrap();
        if left.is_none() {
            break;
        }
        let _: i32 = sqlx::query_scalar("select bulkhead.drop_pending_indexes()")
            .fetch_one(&mut *su)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    left
}
