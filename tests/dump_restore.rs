//! Dump and restore lose nothing. The test database, with tenants filled through the real
//! functions (common::populate_tenant, whose completeness tenant_deletion.rs proves) and a tenant
//! deleted, is dumped by pg_dump in plain and custom format and restored into fresh databases:
//! the plain script through psql, the custom archive by pg_restore --single-transaction. Each
//! must run without an error or a warning, and give back every row of every table the extension
//! registers for dumping (compared row by row), the catalog as it was (row level security,
//! FORCE, policies, grants, functions, indexes including each tenant's own vector index), the
//! identity counters, and a database that takes new writes.

mod common;

use common::{admin, begin_as, create_tenant, superuser, superuser_options};
use sqlx::{ConnectOptions, PgConnection};
use std::path::PathBuf;
use std::process::{Command, Output};
use uuid::Uuid;

/// A PostgreSQL client program against the test cluster as its superuser.
fn client(program: &str) -> Command {
    let options = superuser_options();
    let mut command = Command::new(common::pg_bin(program));
    command
        .args(["-h", options.get_host()])
        .args(["-p", &options.get_port().to_string()])
        .args(["-U", options.get_username()]);
    command
}

/// Runs it; fails the test unless it succeeds without a word on stderr (an error or a warning
/// such as pg_dump's circular foreign keys).
fn quietly(mut command: Command, what: &str) -> Output {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "{what} exited {:?}, stderr:\n{stderr}",
        out.status.code()
    );
    out
}

async fn connect_to(database: &str) -> PgConnection {
    superuser_options()
        .database(database)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {database}: {e}"))
}

/// Runs one statement in database postgres, as the superuser.
fn in_postgres(sql: &str) {
    let mut psql = client("psql");
    psql.args([
        "-X",
        "-q",
        "-d",
        "postgres",
        "-c",
        "set client_min_messages = warning",
        "-c",
        sql,
    ]);
    quietly(psql, sql);
}

fn recreate_database(name: &str) {
    in_postgres(&format!("drop database if exists {name} with (force)"));
    in_postgres(&format!("create database {name}"));
}

/// The tables the extension registers for dumping (pg_extension.extconfig), by name.
async fn registered_tables(conn: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar(
        "select c.oid::regclass::text from pg_extension e, unnest(e.extconfig) t(oid)
         join pg_class c on c.oid = t.oid
         where e.extname = 'bulkhead' and c.relkind = 'r' order by 1",
    )
    .fetch_all(conn)
    .await
    .unwrap()
}

/// Every row of a table, as one digest and a count (as the superuser: nothing hidden).
async fn rows(conn: &mut PgConnection, table: &str) -> (i64, String) {
    // `table` is a regclass name from the catalog query above.
    sqlx::query_as(&format!(
        "select count(*), coalesce(md5(string_agg(t::text, E'\\n' order by t::text)), '') from {table} t"
    ))
    .fetch_one(conn)
    .await
    .unwrap()
}

/// The schema (common::schema_catalog) and what the data adds to it: the tenants' own indexes
/// and the identity counters.
async fn catalog(conn: &mut PgConnection) -> Vec<String> {
    let mut lines = common::schema_catalog(conn).await;
    lines.extend(
        sqlx::query_scalar::<_, String>(
            "select format('index %s', i.indexdef) from pg_indexes i
             where i.schemaname = 'bulkhead' and i.indexname like 'chunks\\_hnsw\\_%'
             union all
             select format('sequence %s %s', s.sequencename, s.last_value) from pg_sequences s
             where s.schemaname = 'bulkhead'",
        )
        .fetch_all(conn)
        .await
        .unwrap(),
    );
    lines.sort();
    lines
}

#[tokio::test]
async fn dump_and_restore_give_back_every_row_and_the_schema_as_it_was() {
    let mut admin_conn = admin().await;
    let mut su = superuser().await;

    // Two tenants with a row in every tenant table; a third deleted (its receipt, its
    // namespace's deletion job, its dedicated project).
    let kept = create_tenant(&mut admin_conn, "dump-kept").await;
    let other = create_tenant(&mut admin_conn, "dump-other").await;
    let gone = create_tenant(&mut admin_conn, "dump-gone").await;
    for tenant in [kept, other, gone] {
        common::populate_tenant(&mut admin_conn, tenant).await;
    }
    sqlx::query("select bulkhead.delete_tenant($1)")
        .bind(gone)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    // Admins' changes to what the extension seeds: the default budget row, and a price row of
    // their own (the seeded ones are not dumped: CREATE EXTENSION writes them again).
    let (defaults_cap,): (i32,) =
        sqlx::query_as("select default_max_output_tokens from bulkhead.budget_defaults")
            .fetch_one(&mut su)
            .await
            .unwrap();
    sqlx::query("update bulkhead.budget_defaults set default_max_output_tokens = $1")
        .bind(defaults_cap + 1)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    let model = format!("dump-model-{}", &Uuid::new_v4().simple().to_string()[..8]);
    sqlx::query("select bulkhead.set_price('openai', $1, 1, 2)")
        .bind(&model)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    // A shared credential (another test binary sets the same one for itself), removed at the end.
    let shared_ref = format!("env:BULKHEAD_IT_DUMP_{}", Uuid::new_v4().simple());
    sqlx::query("select bulkhead.set_credential(null, 'openai_compatible', $1, 'shared_pool')")
        .bind(&shared_ref)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    // A reconciliation run, on a day of its own.
    let day: String =
        sqlx::query_scalar("select (current_date - 3000 - (random() * 3000)::int)::text")
            .fetch_one(&mut su)
            .await
            .unwrap();
    sqlx::query("select bulkhead.reconcile_usage('openai_compatible', $1::date, $2)")
        .bind(&day)
        .bind(serde_json::json!([
            {"project_id": format!("proj_{kept}"), "input_tokens": 10, "output_tokens": 1, "requests": 1}
        ]))
        .execute(&mut admin_conn)
        .await
        .unwrap();
    // A deferred index drop (no fixture makes one: it needs a lock held by another session), and
    // a provider id recorded for a tenant (the worker records them while provisioning).
    for fixture in [
        "insert into bulkhead.pending_index_drops (index_name) values ('chunks_hnsw_dumpfixture') on conflict do nothing",
        "insert into bulkhead.provider_resources (provider, resource_id, tenant_ref)
         values ('openai', 'proj_dumpfixture', gen_random_uuid()) on conflict do nothing",
    ] {
        sqlx::query(fixture).execute(&mut su).await.unwrap();
    }

    let tables = registered_tables(&mut su).await;
    assert!(tables.len() > 30, "registered tables: {tables:?}");
    let mut source = Vec::new();
    for table in &tables {
        let (count, digest) = rows(&mut su, table).await;
        assert!(
            count > 0,
            "{table} has no rows here: give it fixture rows so its restore is proven"
        );
        source.push((table.clone(), count, digest));
    }
    let source_catalog = catalog(&mut su).await;
    let kept_index: String = sqlx::query_scalar(
        "select index_name from bulkhead.retrieval_settings where tenant_id = $1",
    )
    .bind(kept)
    .fetch_one(&mut su)
    .await
    .unwrap();

    // Dump, both formats.
    let scratch = std::env::temp_dir().join(format!("bulkhead-dump-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&scratch).unwrap();
    let plain = scratch.join("bulkhead.sql");
    let custom = scratch.join("bulkhead.dump");
    let source_db = superuser_options().get_database().unwrap().to_string();
    let mut dump = client("pg_dump");
    dump.arg("-f").arg(&plain).arg(&source_db);
    quietly(dump, "pg_dump (plain)");
    let mut dump = client("pg_dump");
    dump.arg("-Fc").arg("-f").arg(&custom).arg(&source_db);
    quietly(dump, "pg_dump -Fc");

    // Restore each way: the plain script through psql, the archive through pg_restore, each
    // with and without one transaction.
    let restores: [(&str, &str, &[&str], &PathBuf); 4] = [
        (
            "bulkhead_restore_plain",
            "psql",
            &["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"],
            &plain,
        ),
        (
            "bulkhead_restore_plain_1tx",
            "psql",
            &[
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "--single-transaction",
                "-f",
            ],
            &plain,
        ),
        (
            "bulkhead_restore_custom",
            "pg_restore",
            &["--exit-on-error"],
            &custom,
        ),
        (
            "bulkhead_restore_custom_1tx",
            "pg_restore",
            &["--exit-on-error", "--single-transaction"],
            &custom,
        ),
    ];
    for (database, program, args, file) in &restores {
        recreate_database(database);
        let mut restore = client(program);
        restore.args(["-d", database]).args(*args).arg(file);
        quietly(restore, &format!("{program} {args:?} into {database}"));
    }

    for (database, ..) in &restores {
        let mut restored = connect_to(database).await;
        for (table, count, digest) in &source {
            let (restored_count, restored_digest) = rows(&mut restored, table).await;
            assert_eq!(
                (restored_count, &restored_digest),
                (*count, digest),
                "{database}: the rows of {table} differ from the source's"
            );
        }
        let restored_catalog = catalog(&mut restored).await;
        let (missing, extra) = common::catalog_difference(&source_catalog, &restored_catalog);
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{database}: catalog differs.\nmissing: {missing:#?}\nextra: {extra:#?}"
        );
        assert!(
            restored_catalog
                .iter()
                .any(|line| line.starts_with("index CREATE INDEX ") && line.contains(&kept_index)),
            "{database}: the kept tenant's own index {kept_index} is back"
        );

        // New writes: an ingest (chunks, their sync jobs with identity ids) and a search through
        // the tenant's own index, in the kept tenant's context as the application; a price.
        let app_options = superuser_options()
            .database(database)
            .username("bulkhead_test_app");
        let mut app_conn = app_options.connect().await.unwrap();
        let mut tx = begin_as(&mut app_conn, kept).await.unwrap();
        sqlx::query(
            "select bulkhead.ingest_document('after-restore', '[{\"content\": \"c\", \"embedding\": [0, 0, 1]}]')",
        )
        .execute(&mut *tx)
        .await
        .unwrap_or_else(|e| panic!("{database}: ingest after the restore: {e}"));
        let path: String = sqlx::query_scalar("select path from bulkhead.tenant_search_path()")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(path, format!("hnsw:{kept_index}"), "{database}");
        let found: i64 = sqlx::query_scalar(
            "select count(*) from bulkhead.tenant_search('[0, 0, 1]'::vector, 5)",
        )
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        assert_eq!(
            found, 3,
            "{database}: the kept tenant's chunks and the new one"
        );
        tx.commit().await.unwrap();
        let mut restored_admin = superuser_options()
            .database(database)
            .username("bulkhead_test_admin")
            .connect()
            .await
            .unwrap();
        sqlx::query("select bulkhead.set_price('openai', $1, 1.5, 2.5)")
            .bind(&model)
            .execute(&mut restored_admin)
            .await
            .unwrap_or_else(|e| panic!("{database}: a price after the restore: {e}"));
        drop(restored);
    }

    // Put the source back as the other tests expect it.
    sqlx::query("update bulkhead.budget_defaults set default_max_output_tokens = $1")
        .bind(defaults_cap)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    sqlx::query("delete from bulkhead.shared_credentials where secret_ref = $1")
        .bind(&shared_ref)
        .execute(&mut su)
        .await
        .unwrap();
    sqlx::query(
        "delete from bulkhead.pending_index_drops where index_name = 'chunks_hnsw_dumpfixture'",
    )
    .execute(&mut su)
    .await
    .unwrap();
    for (database, ..) in &restores {
        in_postgres(&format!("drop database {database} with (force)"));
    }
    let _ = std::fs::remove_dir_all(&scratch);
}
