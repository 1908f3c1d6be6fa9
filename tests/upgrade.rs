//! The last release upgrades to this version and keeps its data. A database is created at the
//! last release (its install script, committed under sql/releases/ and installed by `make
//! test`), filled through the real functions (common::populate_tenant), and updated with `ALTER
//! EXTENSION bulkhead UPDATE` through the scripts under sql/upgrades/. Its schema must then
//! equal a fresh install's, fact by fact (common::schema_catalog: tables, columns, constraints,
//! indexes, policies, functions with SECURITY, search_path and body, grants, triggers), and every
//! row written before the update must be there after it.

mod common;

use common::{begin_as, create_tenant, superuser_options};
use sqlx::{ConnectOptions, PgConnection};
use std::process::Command;

/// The last release: its install script is sql/releases/bulkhead--<PREVIOUS>.sql.
const PREVIOUS: &str = "0.1.0";

fn psql_postgres(sql: &str) {
    let options = superuser_options();
    let out = Command::new(common::pg_bin("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", options.get_host()])
        .args(["-p", &options.get_port().to_string()])
        .args(["-U", options.get_username(), "-d", "postgres"])
        .args(["-c", "set client_min_messages = warning", "-c", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn recreate_database(name: &str) {
    psql_postgres(&format!("drop database if exists {name} with (force)"));
    psql_postgres(&format!("create database {name}"));
    // As the test database: prompts of tenants without eval cases may be activated.
    psql_postgres(&format!(
        "alter database {name} set bulkhead.eval_gate_empty_set = 'allow'"
    ));
}

/// Each registered table with its columns.
async fn registered_tables(conn: &mut PgConnection) -> Vec<(String, String)> {
    sqlx::query_as(
        "select c.oid::regclass::text,
                string_agg(quote_ident(a.attname), ', ' order by a.attnum)
         from pg_extension e, unnest(e.extconfig) t(oid)
         join pg_class c on c.oid = t.oid and c.relkind = 'r'
         join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
         where e.extname = 'bulkhead'
         group by 1 order by 1",
    )
    .fetch_all(conn)
    .await
    .unwrap()
}

/// The rows of each table over the given columns: a count and a digest.
async fn rows(conn: &mut PgConnection, tables: &[(String, String)]) -> Vec<(i64, String)> {
    let mut rows = Vec::new();
    for (table, columns) in tables {
        // Names from the catalog, quoted by quote_ident.
        let row: (i64, String) = sqlx::query_as(&format!(
            "select count(*), coalesce(md5(string_agg(r::text, E'\\n' order by r::text)), '')
             from (select {columns} from {table}) r"
        ))
        .fetch_one(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{table} ({columns}): {e}"));
        rows.push(row);
    }
    rows
}

#[tokio::test]
async fn the_last_release_upgrades_to_this_version_with_its_data() {
    let old_db = "bulkhead_upgrade_old";
    let fresh_db = "bulkhead_upgrade_fresh";
    recreate_database(old_db);
    recreate_database(fresh_db);
    let old = superuser_options().database(old_db);
    let mut su = old.connect().await.unwrap();
    sqlx::query(&format!(
        "create extension bulkhead version '{PREVIOUS}' cascade"
    ))
    .execute(&mut su)
    .await
    .unwrap_or_else(|e| panic!("installing the release {PREVIOUS}: {e}"));
    let current: String = sqlx::query_scalar(
        "select default_version from pg_available_extensions where name = 'bulkhead'",
    )
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_ne!(current, PREVIOUS, "this version is the next one");

    // Data written by the release itself.
    let mut admin = old
        .clone()
        .username("bulkhead_test_admin")
        .connect()
        .await
        .unwrap();
    let mut tenants = Vec::new();
    for prefix in ["upgrade-a", "upgrade-b"] {
        let tenant = create_tenant(&mut admin, prefix).await;
        common::populate_tenant_in(&old, &mut admin, tenant).await;
        tenants.push(tenant);
    }
    drop(admin);
    // Until it is updated, the release's schema runs on this library: a call that reaches code
    // whose SQL signature changed since (complete() with a request reads it through
    // _request_input_bound, jsonb in the release and text now).
    let mut app = old
        .clone()
        .username("bulkhead_test_app")
        .connect()
        .await
        .unwrap();
    let mut tx = begin_as(&mut app, tenants[0]).await.unwrap();
    sqlx::query(
        "select bulkhead.complete(null, null, 'gpt-4o-mini', 10,
             request => '{\"messages\": [{\"role\": \"user\", \"content\": \"hello\"}]}')",
    )
    .execute(&mut *tx)
    .await
    .unwrap_or_else(|e| panic!("a {PREVIOUS} database on this library: {e}"));
    tx.commit().await.unwrap();
    drop(app);
    let tables = registered_tables(&mut su).await;
    let before = rows(&mut su, &tables).await;
    assert!(before.iter().filter(|(n, _)| *n > 0).count() > 25);

    sqlx::query("alter extension bulkhead update")
        .execute(&mut su)
        .await
        .unwrap_or_else(|e| panic!("ALTER EXTENSION bulkhead UPDATE from {PREVIOUS}: {e}"));
    let version: String =
        sqlx::query_scalar("select extversion from pg_extension where extname = 'bulkhead'")
            .fetch_one(&mut su)
            .await
            .unwrap();
    assert_eq!(version, current);

    // The schema a fresh install of this version makes.
    let mut fresh = superuser_options()
        .database(fresh_db)
        .connect()
        .await
        .unwrap();
    sqlx::query("create extension bulkhead cascade")
        .execute(&mut fresh)
        .await
        .unwrap();
    let (missing, extra) = common::catalog_difference(
        &common::schema_catalog(&mut fresh).await,
        &common::schema_catalog(&mut su).await,
    );
    assert!(
        missing.is_empty() && extra.is_empty(),
        "after the upgrade from {PREVIOUS}, the schema differs from a fresh install of {current}.\n\
         missing from the upgraded one: {missing:#?}\nonly in the upgraded one: {extra:#?}"
    );

    // Every row written before, over the columns it had.
    let after = rows(&mut su, &tables).await;
    for ((table, _), (before, after)) in tables.iter().zip(before.iter().zip(after.iter())) {
        assert_eq!(after, before, "{table}: rows differ after the upgrade");
    }

    // The console's rollup starts out holding the release's ledger: every day's sums and each
    // tenant's last call (rows in one and not the other are counted both ways).
    let rollup_mismatches: i64 = sqlx::query_scalar(
        "with ledger_days as (
             select tenant_id, (created_at at time zone current_setting('bulkhead.billing_time_zone'))::date as day,
                    provider, model, budget_line, count(*) as requests, sum(cost_usd) as cost_usd
             from bulkhead.ledger group by 1, 2, 3, 4, 5),
         rollup_days as (
             select tenant_id, day, provider, model, budget_line, requests, cost_usd from bulkhead.usage_daily),
         ledger_latest as (select tenant_id, max(created_at) as last_at from bulkhead.ledger group by 1),
         rollup_latest as (select tenant_id, last_at from bulkhead.usage_latest)
         select (select count(*) from (select * from ledger_days except select * from rollup_days) a)
              + (select count(*) from (select * from rollup_days except select * from ledger_days) b)
              + (select count(*) from (select * from ledger_latest except select * from rollup_latest) c)
              + (select count(*) from (select * from rollup_latest except select * from ledger_latest) d)",
    )
    .fetch_one(&mut su)
    .await
    .unwrap();
    let latest_rows: i64 = sqlx::query_scalar("select count(*) from bulkhead.usage_latest")
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert_eq!(
        (rollup_mismatches, latest_rows > 0),
        (0, true),
        "the rollup after the upgrade holds the release's ledger"
    );

    // And it takes new writes.
    let mut admin = old
        .clone()
        .username("bulkhead_test_admin")
        .connect()
        .await
        .unwrap();
    let tenant = create_tenant(&mut admin, "upgrade-after").await;
    common::populate_tenant_in(&old, &mut admin, tenant).await;
    drop(admin);
    drop(su);
    drop(fresh);
    psql_postgres(&format!("drop database {old_db} with (force)"));
    psql_postgres(&format!("drop database {fresh_db} with (force)"));
}
