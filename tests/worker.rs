//! `bulkhead worker` against the real queue: it drains every tenant's jobs and stops cleanly on
//! SIGTERM; killed with SIGKILL mid-run, no job is lost, and another worker finishes the rest once
//! the dead worker's leases run out; with PostgreSQL crashed and restarted under it, it reconnects
//! and goes on. One test: workers claim any tenant's jobs, so scenarios that count jobs must not
//! overlap (and the crash would break any test running beside it).

mod common;

use common::{admin, app, create_tenant, superuser};
use sqlx::{ConnectOptions, PgConnection};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

fn worker_url() -> String {
    std::env::var("BULKHEAD_TEST_DATABASE_URL")
        .expect("BULKHEAD_TEST_DATABASE_URL is set by `make test-integration`")
        .replacen("postgres@", "bulkhead_test_worker@", 1)
}

fn start_worker(name: &str, lease_secs: u64) -> Child {
    start_worker_with(name, lease_secs, &[], Stdio::null())
}

fn start_worker_with(name: &str, lease_secs: u64, extra: &[&str], stderr: Stdio) -> Child {
    Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args([
            "worker",
            "--name",
            name,
            "--concurrency",
            "4",
            "--poll-ms",
            "100",
        ])
        .args([
            "--lease-secs",
            &lease_secs.to_string(),
            "--shutdown-secs",
            "5",
            // Shorter than the shortest lease here (2 s); noop jobs call no provider anyway.
            "--provider-timeout-secs",
            "1",
        ])
        .args(extra)
        .env("DATABASE_URL", worker_url())
        .stderr(stderr)
        .spawn()
        .expect("start bulkhead worker")
}

/// GET /metrics from the worker's endpoint.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

async fn enqueue(conn: &mut PgConnection, tenant: Uuid, jobs: usize) {
    let mut tx = common::begin_as(conn, tenant).await.unwrap();
    sqlx::query("select bulkhead.enqueue_job('noop', jsonb_build_object('n', n)) from generate_series(1, $1) n")
        .bind(i32::try_from(jobs).unwrap())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// (done, dead, most attempts) over the jobs of these tenants, read as superuser.
async fn progress(tenants: &[Uuid]) -> (i64, i64, i32) {
    sqlx::query_as(
        "select count(*) filter (where state = 'done'), count(*) filter (where state = 'dead'),
                coalesce(max(attempts), 0)
         from bulkhead.job_schedule where job_tenant = any($1)",
    )
    .bind(tenants)
    .fetch_one(&mut superuser().await)
    .await
    .unwrap()
}

async fn wait_until_done(tenants: &[Uuid], total: i64, within: Duration) -> (i64, i64, i32) {
    let start = Instant::now();
    loop {
        let p = progress(tenants).await;
        if p.0 + p.1 >= total || start.elapsed() > within {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn workers_drain_every_tenant_and_lose_nothing_when_killed() {
    let mut admin = admin().await;
    let mut conn = app().await;

    // Two tenants' jobs, one worker, then SIGTERM: a clean exit.
    let (a, b) = (
        create_tenant(&mut admin, "jobs-a").await,
        create_tenant(&mut admin, "jobs-b").await,
    );
    enqueue(&mut conn, a, 100).await;
    enqueue(&mut conn, b, 100).await;
    // A poison payload (nested deeper than serde_json reads) fails for good; the worker goes on.
    let mut tx = common::begin_as(&mut conn, b).await.unwrap();
    sqlx::query("select bulkhead.enqueue_job('noop', jsonb_build_object('deep', (repeat('[', 200) || repeat(']', 200))::jsonb))")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let metrics_addr = "127.0.0.1:54391";
    let worker = start_worker_with(
        "drain",
        30,
        &["--metrics-addr", metrics_addr, "--log-format", "json"],
        Stdio::piped(),
    );
    let (done, dead, attempts) = wait_until_done(&[a, b], 201, Duration::from_secs(60)).await;
    assert_eq!(
        (done, dead, attempts),
        (200, 1, 1),
        "every job done once, the poison one dead"
    );
    let results: i64 = sqlx::query_scalar(
        "select count(*) from bulkhead.jobs where tenant_id = any($1) and result = '{\"ok\": true}'",
    )
    .bind(&[a, b][..])
    .fetch_one(&mut superuser().await)
    .await
    .unwrap();
    assert_eq!(results, 200);
    let metrics = scrape(metrics_addr);
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    assert!(metrics.contains("bulkhead_worker_connected 1"), "{metrics}");
    // At least this test's 200: the worker also drains jobs other test binaries left queued.
    let counted = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from {metrics}"))
    };
    assert!(counted("bulkhead_jobs_total{kind=\"noop\",outcome=\"done\"}") >= 200);
    assert_eq!(
        counted("bulkhead_jobs_total{kind=\"noop\",outcome=\"failed\"}"),
        1
    );
    assert_eq!(
        counted("bulkhead_job_duration_seconds_count{kind=\"noop\"}"),
        counted("bulkhead_jobs_total{kind=\"noop\",outcome=\"done\"}") + 1
    );
    let term = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let output = worker.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "SIGTERM ends the worker cleanly: {:?}",
        output.status
    );
    // --log-format json: every line is one JSON object naming its event.
    let logs = String::from_utf8(output.stderr).unwrap();
    let events: Vec<String> = logs
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
            value["event"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(
        events.first().map(String::as_str),
        Some("connected"),
        "{logs}"
    );
    assert_eq!(events.last().map(String::as_str), Some("stopped"), "{logs}");

    // SIGKILL mid-run: the jobs it held come back when their 2-second leases end.
    let c = create_tenant(&mut admin, "jobs-c").await;
    enqueue(&mut conn, c, 1000).await;
    let mut doomed = start_worker("doomed", 2);
    let start = Instant::now();
    while progress(&[c]).await.0 < 100 && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let at_kill = progress(&[c]).await.0;
    assert!(
        at_kill < 1000,
        "the worker was killed before it finished ({at_kill} done)"
    );
    let mut survivor = start_worker("survivor", 30);
    let (done, dead, attempts) = wait_until_done(&[c], 1000, Duration::from_secs(90)).await;
    survivor.kill().unwrap();
    survivor.wait().unwrap();
    assert_eq!(
        (done, dead),
        (1000, 0),
        "no job lost or dead after the kill"
    );
    assert!(
        attempts <= 2,
        "a job held at the kill ran at most twice: {attempts}"
    );

    // PostgreSQL crashes and restarts under a running worker: it reconnects and drains new jobs.
    let mut worker = start_worker("restart", 30);
    tokio::time::sleep(Duration::from_millis(500)).await;
    common::crash_and_restart();
    let d = create_tenant(&mut admin_after_restart().await, "jobs-d").await;
    enqueue(&mut app().await, d, 100).await;
    let (done, dead, _) = wait_until_done(&[d], 100, Duration::from_secs(60)).await;
    assert_eq!(
        (done, dead),
        (100, 0),
        "the worker reconnected after the restart"
    );
    let term = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(worker.wait().unwrap().success());
}

/// The admin connection, retried while the restarted server finishes recovery.
async fn admin_after_restart() -> PgConnection {
    for _ in 0..50 {
        if let Ok(conn) = common::superuser_options()
            .username("bulkhead_test_admin")
            .connect()
            .await
        {
            return conn;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    admin().await
}
