//! Attacks on `bulkhead worker` itself (issue 13, findings 2 and 6), each beside its unprotected
//! twin:
//! - a provider error that echoes a key, whole or in part, with or without an `sk-` prefix,
//!   straddling the point where the error text is cut: nothing of the key reaches the job row
//!   the tenant reads, nor the worker's log;
//! - an unreadable credential reference: the tenant sees "credential unavailable", the operator's
//!   log names the reference;
//! - an operator planted on the connection's search_path by a role with CREATE on `public`: it
//!   fires for a session of the worker's role that does not pin its path, never for the worker;
//! - a SUPERUSER or BYPASSRLS role: the worker refuses to run as it without a flag.
//!
//! Provider calls go to the FAKE provider server (tests/fakes/fake_providers.py), a test double
//! speaking OpenAI's wire format. One test function: workers claim any tenant's jobs.

mod common;

use common::{
    admin, app, begin_as, create_tenant, superuser, superuser_options, FakeProviders, KillOnDrop,
};
use sqlx::{ConnectOptions, Connection, PgConnection};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

const TEMPLATE: &str = "it_hardening";

fn url_as(role: &str) -> String {
    std::env::var("BULKHEAD_TEST_DATABASE_URL")
        .expect("BULKHEAD_TEST_DATABASE_URL is set by `make test-integration`")
        .replacen("postgres@", &format!("{role}@"), 1)
}

fn worker(url: &str, extra: &[&str], fake_port: u16, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bulkhead"));
    command
        .args(["worker", "--name", "it-hardening", "--poll-ms", "100"])
        .args(["--lease-secs", "30", "--provider-timeout-secs", "2"])
        .args(extra)
        .env("DATABASE_URL", url)
        .env(
            "OPENAI_BASE_URL",
            format!("http://127.0.0.1:{fake_port}/v1"),
        )
        .stdout(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

async fn complete(conn: &mut PgConnection, tenant: Uuid, model: &str) -> i64 {
    let mut tx = begin_as(conn, tenant).await.unwrap();
    let job: i64 =
        sqlx::query_scalar("select bulkhead.complete($1, '{\"question\": \"hello\"}', $2, 20)")
            .bind(TEMPLATE)
            .bind(model)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    tx.commit().await.unwrap();
    job
}

/// The job's error, as its own tenant reads it, once the job is dead.
async fn dead_error(conn: &mut PgConnection, tenant: Uuid, job: i64) -> String {
    let start = Instant::now();
    loop {
        let mut tx = begin_as(conn, tenant).await.unwrap();
        let (status, error): (String, Option<String>) =
            sqlx::query_as("select status, error from bulkhead.completion_result($1)")
                .bind(job)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        tx.commit().await.unwrap();
        if status == "failed" {
            return error.expect("a failed job has an error");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "job {job} still {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every run of MIN_FRAGMENT (8) characters of `key` found in `text`.
fn fragments_in(text: &str, key: &str) -> Vec<String> {
    key.as_bytes()
        .windows(8)
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .filter(|w| text.contains(w.as_str()))
        .collect()
}

#[tokio::test]
async fn the_worker_leaks_no_key_or_reference_and_resists_search_path_and_role_attacks() {
    let fake = FakeProviders::start();
    let mut admin_conn = admin().await;
    let mut conn = app().await;
    let mut su = superuser().await;
    let scratch =
        std::env::temp_dir().join(format!("bulkhead-hardening-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&scratch).unwrap();

    let tenant = create_tenant(&mut admin_conn, "harden").await;
    let shared = create_tenant(&mut admin_conn, "harden-ref").await;
    sqlx::query("select bulkhead.set_skeleton($1, 'Q: {{ vars.question }}')")
        .bind(TEMPLATE)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    for t in [tenant, shared] {
        sqlx::query("select bulkhead.publish_prompt($1, $2, '{}')")
            .bind(t)
            .bind(TEMPLATE)
            .execute(&mut admin_conn)
            .await
            .unwrap();
        sqlx::query("select bulkhead.activate_prompt($1, $2, 1)")
            .bind(t)
            .bind(TEMPLATE)
            .execute(&mut admin_conn)
            .await
            .unwrap();
    }
    // A key with no provider prefix: no pattern can know its shape, only the worker's memory.
    let key = format!("plainkey{}", Uuid::new_v4().simple());
    let env_name = format!("BULKHEAD_IT_PLAIN_{}", Uuid::new_v4().simple());
    let missing_file = scratch.join("no-such-secret-operator-path.key");
    sqlx::query("select bulkhead.set_credential($1, 'openai', $2)")
        .bind(tenant)
        .bind(format!("env:{env_name}"))
        .execute(&mut admin_conn)
        .await
        .unwrap();
    sqlx::query("select bulkhead.set_credential($1, 'openai', $2)")
        .bind(shared)
        .bind(format!("file:{}", missing_file.display()))
        .execute(&mut admin_conn)
        .await
        .unwrap();

    // Finding 6: an operator planted on the search_path by a role with CREATE on public. It
    // records the session user of whoever it runs for.
    sqlx::raw_sql(
        "do $$ begin
           if not exists (select from pg_roles where rolname = 'bulkhead_test_planter') then
             create role bulkhead_test_planter login;
           end if;
         end $$;
         grant create on schema public to bulkhead_test_planter;
         drop table if exists public.hijacked;
         drop operator if exists public./ (float8, integer);
         drop function if exists public.planted_div(float8, integer);
         create table public.hijacked (who text);
         alter table public.hijacked owner to bulkhead_test_planter;",
    )
    .execute(&mut su)
    .await
    .unwrap();
    common::give_dev_password(&mut su, &["bulkhead_test_planter"]).await;
    let mut planter = superuser_options()
        .username("bulkhead_test_planter")
        .connect()
        .await
        .unwrap();
    sqlx::raw_sql(
        "create function public.planted_div(float8, integer) returns float8
         language plpgsql security definer set search_path = pg_catalog as $$
         begin insert into public.hijacked values (session_user); return $1 / $2::float8; end $$;
         create operator public./ (leftarg = float8, rightarg = integer, function = public.planted_div);",
    )
    .execute(&mut planter)
    .await
    .unwrap();
    // The twin: a session of the worker's role that does not pin its path runs the operator.
    let mut unpinned = superuser_options()
        .username("bulkhead_test_worker")
        .connect()
        .await
        .unwrap();
    let _: Option<String> =
        sqlx::query_scalar("select make_interval(secs => $1::float8 / 1000)::text")
            .bind(1500i64)
            .fetch_one(&mut unpinned)
            .await
            .unwrap();
    unpinned.close().await.unwrap();
    let twin: Vec<String> = sqlx::query_scalar("select who from public.hijacked")
        .fetch_all(&mut su)
        .await
        .unwrap();
    assert_eq!(
        twin,
        vec!["bulkhead_test_worker".to_string()],
        "the attack works on an unpinned session"
    );
    sqlx::query("truncate public.hijacked")
        .execute(&mut su)
        .await
        .unwrap();

    // Finding 2: the provider echoes the key twice: whole, straddling character 500 where the
    // error text is cut (so the old redact-after-cut left 30 of its characters), and as a
    // masked fragment. The fake sent what the key's owner would see.
    let echo = format!(
        "{}{key} is not a valid key; did you mean {}****{}?",
        "x".repeat(470),
        &key[..12],
        &key[key.len() - 10..]
    );
    fake.inject(
        "/v1/chat/completions",
        serde_json::json!([{"status": 401, "message": echo}]),
    );
    let leaky_job = complete(&mut conn, tenant, "gpt-4o-mini").await;
    let reference_job = complete(&mut conn, shared, "gpt-4o-mini").await;

    let log_path = scratch.join("worker.log");
    let mut running = KillOnDrop(
        worker(
            &url_as("bulkhead_test_worker"),
            &["--concurrency", "2"],
            fake.port,
            &[(&env_name, &key)],
        )
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("start bulkhead worker"),
    );
    let leaky_error = dead_error(&mut conn, tenant, leaky_job).await;
    let reference_error = dead_error(&mut conn, shared, reference_job).await;
    let _ = Command::new("kill")
        .args(["-TERM", &running.0.id().to_string()])
        .status();
    assert!(running.0.wait().unwrap().success());
    let log = std::fs::read_to_string(&log_path).unwrap();

    assert!(
        leaky_error.contains("HTTP 401") && leaky_error.contains("[redacted]"),
        "{leaky_error}"
    );
    assert_eq!(
        fragments_in(&leaky_error, &key),
        Vec::<String>::new(),
        "{leaky_error}"
    );
    assert_eq!(
        fragments_in(&log, &key),
        Vec::<String>::new(),
        "the worker's log:\n{log}"
    );
    let rows: String = sqlx::query_scalar(
        "select coalesce(string_agg(j::text, ' '), '') from bulkhead.jobs j where tenant_id in ($1, $2)",
    )
    .bind(tenant)
    .bind(shared)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(fragments_in(&rows, &key), Vec::<String>::new());

    // The reference: generic for the tenant, the detail for the operator only.
    let path = missing_file.display().to_string();
    assert!(
        reference_error.contains("credential is unavailable"),
        "{reference_error}"
    );
    assert!(
        !reference_error.contains(&path) && !reference_error.contains("file:"),
        "{reference_error}"
    );
    assert!(!rows.contains(&path), "the reference reached a job row");
    assert!(
        log.contains(&path),
        "the operator's log names the reference:\n{log}"
    );

    // The worker claimed and failed jobs (make_interval on every claim and failure), with the
    // planted operator on its role's default path: it never ran.
    let hijacked: i64 = sqlx::query_scalar("select count(*) from public.hijacked")
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert_eq!(hijacked, 0, "the planted operator ran for the worker");
    sqlx::raw_sql(
        "drop operator public./ (float8, integer); drop function public.planted_div(float8, integer);
         drop table public.hijacked; revoke create on schema public from bulkhead_test_planter;",
    )
    .execute(&mut su)
    .await
    .unwrap();

    // A superuser (or BYPASSRLS) role: refused, with exit code 1 and the reason. The twin: the
    // flag that says the operator means it lets the same role run (and drain an empty queue).
    let superuser_url = url_as("postgres");
    let refused = worker(&superuser_url, &["--drain"], fake.port, &[])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("is a superuser") && said.contains("--allow-privileged-role"),
        "{said}"
    );
    sqlx::raw_sql(
        "do $$ begin
           if not exists (select from pg_roles where rolname = 'bulkhead_test_bypass') then
             create role bulkhead_test_bypass login bypassrls in role bulkhead_worker;
           end if;
         end $$;",
    )
    .execute(&mut su)
    .await
    .unwrap();
    common::give_dev_password(&mut su, &["bulkhead_test_bypass"]).await;
    let refused = worker(
        &url_as("bulkhead_test_bypass"),
        &["--drain"],
        fake.port,
        &[],
    )
    .output()
    .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is BYPASSRLS"));
    let allowed = worker(
        &url_as("bulkhead_test_bypass"),
        &["--drain", "--allow-privileged-role"],
        fake.port,
        &[],
    )
    .output()
    .unwrap();
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    let _ = std::fs::remove_dir_all(&scratch);
}
