//! What is stored survives a crash whole or not at all. Each operation that writes several rows
//! (delete_tenant, publish_prompt, activate_prompt, ingest_document, the gateway's settle batch)
//! is stopped half-way, after some of its writes, by a test trigger that sleeps (pg_sleep: no
//! lock_timeout an operation sets can cut it short); the server is then killed (`pg_ctl restart -m immediate`: no checkpoint, WAL replay
//! on start). After recovery none of its writes may be there. The settle batch is also crashed
//! right after it committed: then all of it must be there.
//!
//! Alone in its binary: it crashes the shared test cluster, once per operation, in sequence.

mod common;

use common::{admin, create_tenant, superuser, superuser_options};
use sqlx::{ConnectOptions, PgConnection};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A trigger on `table` that sleeps in transactions that set crash_test.pause (until the crash).
async fn install_pause(su: &mut PgConnection, table: &str, timing: &str) {
    sqlx::query(
        "create or replace function public.crash_test_pause() returns trigger language plpgsql as $$
         begin
             if current_setting('crash_test.pause', true) = 'on' then
                 perform pg_sleep(120);
             end if;
             return coalesce(new, old);
         end $$",
    )
    .execute(&mut *su)
    .await
    .unwrap();
    // `table` and `timing` are constants of this file.
    sqlx::query(&format!(
        "create trigger crash_test_pause {timing} on {table} for each row execute function public.crash_test_pause()"
    ))
    .execute(&mut *su)
    .await
    .unwrap();
}

async fn remove_pause(table: &str) {
    let mut su = superuser().await;
    sqlx::query(&format!("drop trigger crash_test_pause on {table}"))
        .execute(&mut su)
        .await
        .unwrap();
}

/// Runs `statements` in one transaction as `login` (in `tenant`'s context when given), stopped
/// at the pause trigger; once it sleeps there, with writes made, kills the server.
async fn crash_half_way(login: &str, tenant: Option<Uuid>, statements: Vec<String>) {
    let mut watcher = superuser().await;
    let (pid_sender, pid_receiver) = tokio::sync::oneshot::channel();
    let options = superuser_options().username(login);
    let worker = tokio::spawn(async move {
        let mut conn = options.connect().await.unwrap();
        let pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        pid_sender.send(pid).unwrap();
        let run = async {
            sqlx::query("begin").execute(&mut conn).await?;
            sqlx::query("select set_config('crash_test.pause', 'on', true)")
                .execute(&mut conn)
                .await?;
            if let Some(tenant) = tenant {
                sqlx::query("select bulkhead.set_tenant($1)")
                    .bind(tenant)
                    .execute(&mut conn)
                    .await?;
            }
            for statement in &statements {
                sqlx::query(statement).execute(&mut conn).await?;
            }
            sqlx::query("commit").execute(&mut conn).await
        };
        (pid, run.await.map(|_| ()))
    });
    // Its backend sleeps in the pause, holding a transaction id: it has written something.
    let pid = pid_receiver.await.unwrap();
    let started = Instant::now();
    loop {
        let waiting: bool = sqlx::query_scalar(
            "select exists (select from pg_stat_activity where pid = $1 and wait_event = 'PgSleep'
                            and backend_xid is not null)",
        )
        .bind(pid)
        .fetch_one(&mut watcher)
        .await
        .unwrap();
        if waiting {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the operation never reached its pause"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    common::crash_and_restart();
    let (_, outcome) = worker.await.unwrap();
    assert!(
        outcome.is_err(),
        "the operation cannot have committed: the crash came first"
    );
    drop(watcher);
}

/// Rows of each tenant table (the catalog's list) for `tenant`.
async fn tenant_rows(su: &mut PgConnection, tenant: Uuid) -> Vec<(String, i64)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "select table_name::text from bulkhead.tenant_scoped_tables() order by 1",
    )
    .fetch_all(&mut *su)
    .await
    .unwrap();
    let mut rows = Vec::new();
    for table in tables {
        // Names from the catalog.
        let n: i64 = sqlx::query_scalar(&format!(
            "select count(*) from {table} where tenant_id = $1"
        ))
        .bind(tenant)
        .fetch_one(&mut *su)
        .await
        .unwrap();
        rows.push((table, n));
    }
    rows
}

#[tokio::test]
async fn a_crash_leaves_each_operation_whole_or_not_at_all() {
    let mut admin_conn = admin().await;
    let tenant = create_tenant(&mut admin_conn, "crash-whole").await;
    common::populate_tenant(&mut admin_conn, tenant).await;
    drop(admin_conn);
    let mut su = superuser().await;

    // delete_tenant, stopped before its last delete (the tenant's own row): every row stays.
    let before = tenant_rows(&mut su, tenant).await;
    assert!(before.iter().all(|(_, n)| *n > 0));
    install_pause(&mut su, "bulkhead.tenants", "before delete").await;
    drop(su);
    crash_half_way(
        "bulkhead_test_admin",
        None,
        vec![format!("select bulkhead.delete_tenant('{tenant}')")],
    )
    .await;
    let mut su = superuser().await;
    assert_eq!(
        tenant_rows(&mut su, tenant).await,
        before,
        "a half-done deletion left no trace"
    );
    let receipts: i64 =
        sqlx::query_scalar("select count(*) from bulkhead.deletion_receipts where tenant_id = $1")
            .bind(tenant)
            .fetch_one(&mut su)
            .await
            .unwrap();
    assert_eq!(receipts, 0, "nor a receipt");
    remove_pause("bulkhead.tenants").await;

    // publish_prompt, stopped after its version row: no version 2, the counter as it was.
    let state = "select latest_version, active_version, (select count(*) from bulkhead.prompt_versions v
                    where v.tenant_id = p.tenant_id and v.template_name = p.template_name),
                   (select count(*) from bulkhead.prompt_releases r
                    where r.tenant_id = p.tenant_id and r.template_name = p.template_name)
                 from bulkhead.prompt_templates p where tenant_id = $1 and template_name = 'deletion-fixture'";
    let prompt_before: (i32, Option<i32>, i64, i64) = sqlx::query_as(state)
        .bind(tenant)
        .fetch_one(&mut su)
        .await
        .unwrap();
    install_pause(&mut su, "bulkhead.prompt_versions", "after insert").await;
    drop(su);
    crash_half_way(
        "bulkhead_test_admin",
        None,
        vec![format!(
            "select bulkhead.publish_prompt('{tenant}', 'deletion-fixture', '{{\"name\": \"v2\"}}')"
        )],
    )
    .await;
    remove_pause("bulkhead.prompt_versions").await;
    let mut su = superuser().await;
    let prompt_after: (i32, Option<i32>, i64, i64) = sqlx::query_as(state)
        .bind(tenant)
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert_eq!(
        prompt_after, prompt_before,
        "a half-done publish left no trace"
    );

    // activate_prompt of a published version 2 (forced past its eval gate: no run here), stopped
    // after its release row and before the pointer moved: the pointer and the history as they were.
    let mut admin_conn = admin().await;
    sqlx::query("select bulkhead.publish_prompt($1, 'deletion-fixture', '{\"name\": \"v2\"}')")
        .bind(tenant)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    drop(admin_conn);
    let prompt_before: (i32, Option<i32>, i64, i64) = sqlx::query_as(state)
        .bind(tenant)
        .fetch_one(&mut su)
        .await
        .unwrap();
    install_pause(&mut su, "bulkhead.prompt_releases", "after insert").await;
    drop(su);
    crash_half_way(
        "bulkhead_test_admin",
        None,
        vec![format!(
            "select bulkhead.activate_prompt('{tenant}', 'deletion-fixture', 2, force => true, reason => 'crash test')"
        )],
    )
    .await;
    remove_pause("bulkhead.prompt_releases").await;
    let mut su = superuser().await;
    let prompt_after: (i32, Option<i32>, i64, i64) = sqlx::query_as(state)
        .bind(tenant)
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert_eq!(
        prompt_after, prompt_before,
        "a half-done activation left no trace"
    );
    assert_eq!(prompt_after.1, Some(1));

    // ingest_document, stopped after its document and first chunk: neither, nor sync jobs.
    let ingest_state = "select (select count(*) from bulkhead.documents where tenant_id = $1),
                               (select count(*) from bulkhead.chunks where tenant_id = $1),
                               (select count(*) from bulkhead.pinecone_outbox where tenant_id = $1)";
    let ingest_before: (i64, i64, i64) = sqlx::query_as(ingest_state)
        .bind(tenant)
        .fetch_one(&mut su)
        .await
        .unwrap();
    install_pause(&mut su, "bulkhead.chunks", "after insert").await;
    drop(su);
    crash_half_way(
        "bulkhead_test_app",
        Some(tenant),
        vec!["select bulkhead.ingest_document('crash-doc', '[{\"content\": \"x\", \"embedding\": [1, 1, 0]},
                                                            {\"content\": \"y\", \"embedding\": [0, 1, 1]}]')"
            .to_string()],
    )
    .await;
    remove_pause("bulkhead.chunks").await;
    let mut su = superuser().await;
    let ingest_after: (i64, i64, i64) = sqlx::query_as(ingest_state)
        .bind(tenant)
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert_eq!(
        ingest_after, ingest_before,
        "a half-done ingest left no trace"
    );

    // The gateway's settle batch (two calls admitted in memory), stopped after its ledger rows
    // and before the tenant's budget row: no ledger row. Then settled and committed just
    // before a crash: both.
    let ids = [
        format!("chatcmpl-crash-{}", Uuid::new_v4().simple()),
        format!("chatcmpl-crash-{}", Uuid::new_v4().simple()),
    ];
    let settle = |reservations: &[Uuid]| {
        format!(
            "select count(*) from bulkhead.gateway_settle(array['{tenant}', '{tenant}']::uuid[],
                 array['{}', '{}']::uuid[],
                 array['{{\"prompt_tokens\": 5, \"completion_tokens\": 5}}', '{{\"prompt_tokens\": 5, \"completion_tokens\": 5}}']::jsonb[],
                 array['{}', '{}'], array['gpt-4o-mini', 'gpt-4o-mini'])",
            reservations[0], reservations[1], ids[0], ids[1]
        )
    };
    let ledger_rows =
        "select count(*) from bulkhead.ledger where tenant_id = $1 and request_id = any($2)";
    for crash_after_commit in [false, true] {
        let mut gateway = superuser_options()
            .username("bulkhead_test_memory_gateway")
            .connect()
            .await
            .unwrap();
        let mut reservations = Vec::new();
        for _ in 0..2 {
            let reservation: Uuid = sqlx::query_scalar(
                "select reservation from bulkhead.gateway_admit(null, $1, 'openai', 'chat', 'gpt-4o-mini',
                     10, 10, 10, 1, null, null, '10 minutes')",
            )
            .bind(tenant)
            .fetch_one(&mut gateway)
            .await
            .unwrap();
            reservations.push(reservation);
        }
        if crash_after_commit {
            sqlx::query(&settle(&reservations))
                .execute(&mut gateway)
                .await
                .unwrap();
            drop(gateway);
            common::crash_and_restart();
        } else {
            drop(gateway);
            install_pause(&mut su, "bulkhead.budget_state", "before update").await;
            drop(su);
            crash_half_way(
                "bulkhead_test_memory_gateway",
                None,
                vec![settle(&reservations)],
            )
            .await;
            remove_pause("bulkhead.budget_state").await;
        }
        su = superuser().await;
        let settled: i64 = sqlx::query_scalar(ledger_rows)
            .bind(tenant)
            .bind(&ids[..])
            .fetch_one(&mut su)
            .await
            .unwrap();
        assert_eq!(
            settled,
            if crash_after_commit { 2 } else { 0 },
            "a settle batch is in the ledger whole or not at all (crashed after its commit: {crash_after_commit})"
        );
    }
}
