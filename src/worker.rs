//! `bulkhead worker`: drains the job queue the extension keeps (`sql/jobs.sql`).
//!
//! One loop claims due jobs (`bulkhead.claim_jobs`, FOR UPDATE SKIP LOCKED, so any number of
//! workers may run side by side) and runs each in its own task, at most `concurrency` at a time.
//! The loop wakes on NOTIFY bulkhead_jobs, on a finished task, or after `poll_interval`. Each job
//! is read inside its tenant's context (`bulkhead.start_job` enters it), run outside any
//! transaction, and its outcome recorded by a function that enters that context again: row
//! level security applies to the worker too, and a job costs three round trips.
//! A lost connection (a database restart) ends the loop; `run` reconnects with a capped backoff.
//! SIGTERM or SIGINT stops the claiming, waits up to `shutdown_grace` for jobs in flight, and
//! gives the rest back (`bulkhead.release_job`).

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::Row;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use uuid::Uuid;

/// How a worker runs; from flags and the environment (see `bulkhead worker --help`).
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub name: String,
    pub concurrency: usize,
    pub poll_interval: Duration,
    pub lease: Duration,
    pub shutdown_grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// A claimed job, as `claim_jobs` returns it.
#[derive(Debug, Clone, Copy)]
struct Claimed {
    id: Uuid,
    tenant: Uuid,
}

/// Why a job did not succeed, and whether trying again may help.
#[derive(Debug)]
struct Failure {
    message: String,
    transient: bool,
    retry_after: Option<Duration>,
}

/// Runs until SIGTERM or SIGINT; reconnects after connection failures.
pub async fn run(config: Config) -> Result<(), WorkerError> {
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop_tx.send(true);
    });
    let mut backoff = Duration::from_millis(200);
    loop {
        match serve(&config, stop.clone()).await {
            Ok(()) => {
                log(&config, "stopped", "");
                return Ok(());
            }
            Err(err) => {
                log(
                    &config,
                    "disconnected",
                    &format!("error={err:?} retry_in_ms={}", backoff.as_millis()),
                );
                let mut stop = stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// One connected session of the claim loop.
async fn serve(config: &Config, mut stop: watch::Receiver<bool>) -> Result<(), WorkerError> {
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(config.concurrency + 2).unwrap_or(u32::MAX))
        .connect(&config.database_url)
        .await?;
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen("bulkhead_jobs").await?;
    log(
        config,
        "connected",
        &format!("concurrency={}", config.concurrency),
    );

    let mut in_flight: JoinSet<Claimed> = JoinSet::new();
    let mut held: Vec<Claimed> = Vec::new();
    while !*stop.borrow() {
        let free = config.concurrency.saturating_sub(in_flight.len());
        if free > 0 {
            for job in claim(&pool, config, free).await? {
                held.push(job);
                let (pool, name) = (pool.clone(), config.name.clone());
                in_flight.spawn(async move {
                    run_job(&pool, &name, job).await;
                    job
                });
            }
        }
        tokio::select! {
            notification = listener.recv() => { notification?; }
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Ok(job) = done {
                    held.retain(|h| h.id != job.id);
                }
            }
            _ = tokio::time::sleep(config.poll_interval) => {}
            _ = stop.changed() => {}
        }
    }

    // Shutting down: let jobs in flight finish for a while, then give back what is left.
    let deadline = tokio::time::sleep(config.shutdown_grace);
    tokio::pin!(deadline);
    while !in_flight.is_empty() {
        tokio::select! {
            Some(done) = in_flight.join_next() => {
                if let Ok(job) = done {
                    held.retain(|h| h.id != job.id);
                }
            }
            _ = &mut deadline => break,
        }
    }
    in_flight.abort_all();
    for job in held {
        if let Err(err) = release(&pool, &config.name, job).await {
            log(
                config,
                "release_failed",
                &format!("job={} error={err}", job.id),
            );
        }
    }
    Ok(())
}

async fn claim(
    pool: &PgPool,
    config: &Config,
    max_jobs: usize,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let lease_ms = i64::try_from(config.lease.as_millis()).unwrap_or(i64::MAX);
    let rows = sqlx::query(
        "select job_id, tenant_id from bulkhead.claim_jobs($1, $2, make_interval(secs => $3::float8 / 1000))",
    )
    .bind(&config.name)
    .bind(i32::try_from(max_jobs).unwrap_or(i32::MAX))
    .bind(lease_ms)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|row| Claimed {
            id: row.get(0),
            tenant: row.get(1),
        })
        .collect())
}

/// Reads, runs and settles one job. Errors recording the outcome are left to the lease: the job
/// becomes claimable again when it runs out, and its attempt stays counted.
async fn run_job(pool: &PgPool, worker: &str, job: Claimed) {
    let outcome = match read_job(pool, worker, job).await {
        Ok((kind, payload)) => execute(&kind, &payload).await,
        Err(err) => Err(Failure {
            message: format!("reading the job failed: {err}"),
            transient: true,
            retry_after: None,
        }),
    };
    let recorded = settle(pool, worker, job, outcome).await;
    if let Err(err) = recorded {
        eprintln!(
            "bulkhead worker {worker}: job {} of tenant {} outcome not recorded: {err}",
            job.id, job.tenant
        );
    }
}

/// Reads the job inside its tenant's context (`start_job` enters it): one round trip.
async fn read_job(
    pool: &PgPool,
    worker: &str,
    job: Claimed,
) -> Result<(String, serde_json::Value), sqlx::Error> {
    let row = sqlx::query("select kind, payload from bulkhead.start_job($1, $2)")
        .bind(job.id)
        .bind(worker)
        .fetch_one(pool)
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// The work itself, by kind. Kinds join as the daemon learns them (see jobs_kind_known).
async fn execute(kind: &str, _payload: &serde_json::Value) -> Result<serde_json::Value, Failure> {
    match kind {
        "noop" => Ok(serde_json::json!({"ok": true})),
        other => Err(Failure {
            message: format!("this worker cannot run jobs of kind {other:?}"),
            transient: false,
            retry_after: None,
        }),
    }
}

/// Records the outcome; the function enters the job's tenant context itself (one round trip).
async fn settle(
    pool: &PgPool,
    worker: &str,
    job: Claimed,
    outcome: Result<serde_json::Value, Failure>,
) -> Result<(), sqlx::Error> {
    match outcome {
        Ok(result) => {
            sqlx::query("select bulkhead.complete_job($1, $2, $3)")
                .bind(job.id)
                .bind(worker)
                .bind(result)
                .execute(pool)
                .await?;
        }
        Err(failure) => {
            let retry_after_ms = failure
                .retry_after
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            sqlx::query(
                "select bulkhead.fail_job($1, $2, $3, $4, make_interval(secs => $5::float8 / 1000))",
            )
            .bind(job.id)
            .bind(worker)
            .bind(&failure.message)
            .bind(failure.transient)
            .bind(retry_after_ms)
            .execute(pool)
            .await?;
        }
    }
    Ok(())
}

async fn release(pool: &PgPool, worker: &str, job: Claimed) -> Result<(), sqlx::Error> {
    sqlx::query("select bulkhead.release_job($1, $2)")
        .bind(job.id)
        .bind(worker)
        .execute(pool)
        .await?;
    Ok(())
}

fn log(config: &Config, event: &str, fields: &str) {
    eprintln!("bulkhead worker {}: {event} {fields}", config.name);
}
