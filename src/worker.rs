//! `bulkhead worker`: drains the job queue the extension keeps (`sql/jobs.sql`).
//!
//! One loop claims due jobs and reads them (`bulkhead.claim_and_start_jobs`: FOR UPDATE SKIP
//! LOCKED, so any number of workers may run side by side; each tenant's jobs read inside that
//! tenant's context, so row level security applies to the worker too) and runs each in its own
//! task, at most `concurrency` at a time, outside any transaction. The loop wakes on NOTIFY
//! bulkhead_jobs, on an outcome, or after `poll_interval`, and records outcomes in batches
//! (`bulkhead.complete_jobs`, which enters each tenant's context in turn).
//! A lost connection (a database restart) ends the loop; `run` reconnects with a capped backoff.
//! SIGTERM or SIGINT stops the claiming, waits up to `shutdown_grace` for jobs in flight, and
//! gives the rest back (`bulkhead.release_job`).

use crate::credentials;
use crate::database;
use crate::database::{without_nul, without_nul_json};
use crate::metrics::{self, Metrics};
use crate::pinecone::Pinecone;
use crate::providers::{self, CallError, Completion, Embeddings, Providers, Secret};
use crate::provisioning;
use crate::reconcile::{self, UsageApis};
use crate::secrets;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::Row;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use uuid::Uuid;

/// How a worker runs; from flags and the environment (see `bulkhead worker --help`).
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    /// Run as a SUPERUSER or BYPASSRLS role anyway (`--allow-privileged-role`).
    pub allow_privileged_role: bool,
    pub name: String,
    pub concurrency: usize,
    pub poll_interval: Duration,
    pub lease: Duration,
    pub shutdown_grace: Duration,
    /// Where to serve Prometheus metrics (GET /metrics); None: no endpoint.
    pub metrics_addr: Option<SocketAddr>,
    /// One JSON object per log line instead of text.
    /// Exit once no job is runnable and none is in flight (instead of waiting for more).
    pub drain: bool,
    /// Where the providers are reached.
    pub endpoints: providers::Endpoints,
    /// How long one provider call may take; shorter than the lease.
    pub provider_timeout: Duration,
    /// Pinecone index host and API key: with both, the worker syncs chunks to Pinecone.
    pub pinecone: Option<(String, Secret)>,
    /// The providers' usage APIs: with an admin key, the worker reconciles each finished day.
    pub usage_apis: UsageApis,
    /// Where provisioned keys stored as files go (BULKHEAD_SECRETS_DIR).
    pub secrets_dir: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("metrics endpoint on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{0}")]
    Role(database::RoleError),
    #[error("the lease ({lease:?}) must be longer than the provider timeout ({timeout:?}), or a slow call would run twice")]
    LeaseTooShort { lease: Duration, timeout: Duration },
}

/// A claimed job, as `claim_jobs` returns it.
#[derive(Debug, Clone, Copy)]
struct Claimed {
    id: i64,
    tenant: Uuid,
}

/// Why a job did not succeed, and whether trying again may help.
#[derive(Debug)]
struct Failure {
    /// What the job row keeps: the tenant reads it.
    message: String,
    transient: bool,
    retry_after: Option<Duration>,
    /// What only the worker's log gets (say, which credential reference could not be read:
    /// on the shared pool, every tenant would otherwise read the operator's configuration).
    operator_detail: Option<String>,
}

/// How a job ended well: a result to record as is, or a provider call to settle.
#[derive(Debug)]
enum Finish {
    Result(serde_json::Value),
    Completion(Completion),
    Embedding(Embeddings),
}

/// What a job's task needs besides its payload.
struct TaskContext {
    pool: PgPool,
    providers: Arc<Providers>,
    metrics: Arc<Metrics>,
    provider_timeout: Duration,
    /// This worker's name, which holds the leases.
    worker: String,
    /// The providers' admin APIs, for provisioning jobs.
    admin: provisioning::AdminApis,
    admin_http: reqwest::Client,
}

/// Runs until SIGTERM or SIGINT (or, with `drain`, until the queue is empty); reconnects after
/// connection failures.
pub async fn run(config: Config) -> Result<(), WorkerError> {
    if config.lease <= config.provider_timeout {
        return Err(WorkerError::LeaseTooShort {
            lease: config.lease,
            timeout: config.provider_timeout,
        });
    }
    let providers = Arc::new(Providers::new(
        config.endpoints.clone(),
        config.provider_timeout,
    )?);
    let pinecone = match &config.pinecone {
        Some((host, key)) => Some(Arc::new(Pinecone::new(
            host,
            key.expose().to_string(),
            config.provider_timeout,
        )?)),
        None => None,
    };
    let metrics = Arc::new(Metrics::default());
    let _endpoint = match config.metrics_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| WorkerError::Metrics { addr, source })?;
            Some(tokio::spawn(metrics::serve(listener, Arc::clone(&metrics))))
        }
        None => None,
    };
    let mut work = Work::new();
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop_tx.send(true);
    });
    let mut backoff = Duration::from_millis(200);
    loop {
        let session = serve(
            &config,
            &metrics,
            &providers,
            pinecone.as_ref(),
            &mut work,
            stop.clone(),
        )
        .await;
        metrics.set_connected(false);
        match session {
            Ok(()) => {
                log(&config, "stopped", "");
                return Ok(());
            }
            // Reconnecting would not change the role.
            Err(err @ WorkerError::Role(_)) => return Err(err),
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

/// A job's outcome, sent by its task to the loop, which records outcomes in batches.
type Outcome = (Claimed, String, Duration, Result<Finish, Failure>);

/// Outcomes recorded per statement, at most.
const SETTLE_BATCH: usize = 256;

/// What outlives one database session: the jobs this worker holds, their tasks, and outcomes
/// not yet recorded. After a reconnect they are recorded, not run again.
struct Work {
    held: HashMap<i64, Claimed>,
    tasks: JoinSet<()>,
    outcomes_tx: mpsc::UnboundedSender<Outcome>,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    unrecorded: Vec<Outcome>,
    /// Settles that met a lock (a tenant's own open transaction holds its budget row), tried
    /// again from `retry_at` on, without holding up the others.
    deferred: Vec<Outcome>,
    retry_at: Option<Instant>,
}

impl Work {
    fn new() -> Self {
        let (outcomes_tx, outcomes) = mpsc::unbounded_channel();
        Work {
            held: HashMap::new(),
            tasks: JoinSet::new(),
            outcomes_tx,
            outcomes,
            unrecorded: Vec::new(),
            deferred: Vec::new(),
            retry_at: None,
        }
    }

    /// Deferred settles whose time has come (all of them when `force`).
    fn due_deferred(&mut self, force: bool) -> Vec<Outcome> {
        if force || self.retry_at.is_some_and(|at| Instant::now() >= at) {
            self.retry_at = None;
            std::mem::take(&mut self.deferred)
        } else {
            Vec::new()
        }
    }

    /// Unrecorded outcomes first, then whatever is waiting, up to a batch.
    fn next_batch(&mut self, first: Option<Outcome>) -> Vec<Outcome> {
        let mut batch: Vec<Outcome> = self.unrecorded.drain(..).collect();
        batch.extend(self.due_deferred(false));
        batch.extend(first);
        while batch.len() < SETTLE_BATCH {
            match self.outcomes.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        batch
    }

    /// Records a batch; on a database error keeps it for the next session.
    async fn record(
        &mut self,
        pool: &PgPool,
        config: &Config,
        metrics: &Metrics,
        batch: Vec<Outcome>,
    ) -> Result<(), sqlx::Error> {
        match settle(pool, config, metrics, &batch).await {
            Ok(retry) => {
                for outcome in batch {
                    if retry.contains(&outcome.0.id) {
                        self.deferred.push(outcome);
                    } else {
                        self.held.remove(&outcome.0.id);
                    }
                }
                if !self.deferred.is_empty() && self.retry_at.is_none() {
                    self.retry_at = Some(Instant::now() + Duration::from_secs(1));
                }
                Ok(())
            }
            Err(err) => {
                self.unrecorded = batch;
                Err(err)
            }
        }
    }
}

/// One connected session of the claim loop.
async fn serve(
    config: &Config,
    metrics: &Arc<Metrics>,
    providers: &Arc<Providers>,
    pinecone: Option<&Arc<Pinecone>>,
    work: &mut Work,
    mut stop: watch::Receiver<bool>,
) -> Result<(), WorkerError> {
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(config.concurrency + 2).unwrap_or(u32::MAX))
        .connect_with(database::connect_options(&config.database_url)?)
        .await?;
    database::refuse_privileged_role(&pool, config.allow_privileged_role)
        .await
        .map_err(|err| match err {
            database::RoleError::Database(err) => WorkerError::Database(err),
            refused => WorkerError::Role(refused),
        })?;
    // The channels' names carry a secret of the installation (outsiders could LISTEN otherwise).
    let channels: HashMap<String, String> =
        sqlx::query_as("select base, name from bulkhead.notification_channels")
            .fetch_all(&pool)
            .await?
            .into_iter()
            .collect();
    let pinecone_channel = channels
        .get("bulkhead_pinecone")
        .cloned()
        .unwrap_or_default();
    let mut listener = PgListener::connect_with(&pool).await?;
    listener
        .listen_all(channels.values().map(String::as_str))
        .await?;
    // Pinecone sync runs beside the claim loop, woken by NOTIFY bulkhead_pinecone or the poll.
    let pinecone_wake = Arc::new(Notify::new());
    let _reconciliation = (config.usage_apis.configured() && !config.drain)
        .then(|| AbortOnDrop(tokio::spawn(reconcile_loop(pool.clone(), config.clone()))));
    let _index_drops = (!config.drain)
        .then(|| AbortOnDrop(tokio::spawn(index_drop_loop(pool.clone(), config.clone()))));
    let _lease_sweep = (!config.drain)
        .then(|| AbortOnDrop(tokio::spawn(lease_sweep_loop(pool.clone(), config.clone()))));
    let _pinecone_sync = match pinecone {
        Some(pinecone) if !config.drain => Some(AbortOnDrop(tokio::spawn(pinecone_loop(
            Arc::clone(pinecone),
            pool.clone(),
            Arc::clone(metrics),
            Arc::clone(&pinecone_wake),
            config.clone(),
        )))),
        _ => None,
    };
    metrics.set_connected(true);
    log(
        config,
        "connected",
        &format!("concurrency={}", config.concurrency),
    );
    if !work.unrecorded.is_empty() {
        let batch = work.next_batch(None);
        work.record(&pool, config, metrics, batch).await?;
    }

    let context = Arc::new(TaskContext {
        pool: pool.clone(),
        providers: Arc::clone(providers),
        metrics: Arc::clone(metrics),
        provider_timeout: config.provider_timeout,
        worker: config.name.clone(),
        admin: provisioning::AdminApis {
            openai_base: config.usage_apis.openai_base.clone(),
            anthropic_base: config.usage_apis.anthropic_base.clone(),
            openai_admin_key: config.usage_apis.openai_admin_key.clone(),
            anthropic_admin_key: config.usage_apis.anthropic_admin_key.clone(),
            secrets_dir: config.secrets_dir.clone(),
        },
        admin_http: reqwest::Client::builder()
            .timeout(config.provider_timeout)
            .user_agent(concat!("bulkhead/", env!("CARGO_PKG_VERSION")))
            .build()?,
    });
    let _revocations = (!config.drain).then(|| {
        AbortOnDrop(tokio::spawn(revocation_loop(
            Arc::clone(&context),
            config.clone(),
        )))
    });
    while !*stop.borrow() {
        let free = config.concurrency.saturating_sub(work.held.len());
        let mut claimed_now = 0;
        if free > 0 {
            let claimed = claim_and_start(&pool, config, free).await?;
            claimed_now = claimed.len();
            for (job, kind, payload, credential, reservation_left) in claimed {
                work.held.insert(job.id, job);
                let outcomes_tx = work.outcomes_tx.clone();
                let context = Arc::clone(&context);
                work.tasks.spawn(async move {
                    let started = Instant::now();
                    let outcome = match payload {
                        // A provider call is made only while its reservation holds budget, to
                        // the end of the longest call: an expired one was released already.
                        Ok(_)
                            if (kind == "completion" || kind == "embedding")
                                && reservation_left.is_none_or(|left| {
                                    left < context.provider_timeout.as_secs_f64() + 5.0
                                }) =>
                        {
                            Err(Failure::permanent(
                                "the call's reservation ended (its lease ran out) before the call could be made; queue it again, with a longer lease if the queue is slow".into(),
                            ))
                        }
                        Ok(payload) => {
                            execute(&context, job, &kind, &payload, credential.as_ref()).await
                        }
                        Err(message) => Err(Failure::permanent(message)),
                    };
                    let _ = outcomes_tx.send((job, kind, started.elapsed(), outcome));
                });
            }
        }
        if config.drain && claimed_now == 0 && work.held.is_empty() {
            if let Some(pinecone) = pinecone {
                drain_pinecone(pinecone, &pool, metrics, config).await?;
            }
            revoke_due(&context, config).await;
            log(config, "drained", "");
            break;
        }
        tokio::select! {
            notification = listener.recv() => {
                if notification?.channel() == pinecone_channel {
                    pinecone_wake.notify_one();
                }
            }
            Some(first) = work.outcomes.recv() => {
                let batch = work.next_batch(Some(first));
                work.record(&pool, config, metrics, batch).await?;
            }
            Some(_) = work.tasks.join_next(), if !work.tasks.is_empty() => {}
            _ = sleep_until(work.retry_at), if work.retry_at.is_some() => {
                let batch = work.next_batch(None);
                work.record(&pool, config, metrics, batch).await?;
            }
            _ = tokio::time::sleep(config.poll_interval) => {}
            _ = stop.changed() => {}
        }
    }

    // Shutting down: let jobs in flight finish for a while, record every outcome that came in,
    // then give back the jobs still held.
    let deadline = tokio::time::sleep(config.shutdown_grace);
    tokio::pin!(deadline);
    while !work.held.is_empty() {
        tokio::select! {
            Some(first) = work.outcomes.recv() => {
                let batch = work.next_batch(Some(first));
                work.record(&pool, config, metrics, batch).await?;
            }
            _ = &mut deadline => break,
        }
    }
    work.tasks.abort_all();
    while !work.tasks.is_empty() {
        let _ = work.tasks.join_next().await;
    }
    let mut batch = work.next_batch(None);
    batch.extend(work.due_deferred(true));
    if !batch.is_empty() {
        work.record(&pool, config, metrics, batch).await?;
    }
    for job in std::mem::take(&mut work.held).into_values() {
        if let Err(err) = release(&pool, &config.name, job).await {
            log(
                config,
                "release_failed",
                &format!("job={} tenant={} error={err}", job.id, job.tenant),
            );
        }
    }
    Ok(())
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

/// Aborts a background task when the session that started it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Once an hour: reconciles the last UTC day that ended at least 6 hours ago, for each provider
/// with an admin key, unless a worker did already.
async fn reconcile_loop(pool: PgPool, config: Config) {
    loop {
        let pending: Result<Option<String>, sqlx::Error> = sqlx::query_scalar(
            // The last UTC day that ended at least 6 hours ago: the usage APIs lag a little.
            // Qualified throughout, like all of this program's SQL (see database.rs).
            "select y.d::pg_catalog.text
             from (select ((pg_catalog.now() at time zone 'UTC') OPERATOR(pg_catalog.-) interval '30 hours')::pg_catalog.date as d) y
             where (select pg_catalog.count(*) from bulkhead.reconciliation_runs r
                    where r.usage_date OPERATOR(pg_catalog.=) y.d) OPERATOR(pg_catalog.<) $1",
        )
        .bind(
            i64::from(config.usage_apis.openai_admin_key.is_some())
                + i64::from(config.usage_apis.anthropic_admin_key.is_some()),
        )
        .fetch_optional(&pool)
        .await;
        match pending {
            Ok(Some(day)) => {
                match reconcile::reconcile_day(&pool, &config.usage_apis, &day).await {
                    Ok(outcome) => log(
                        &config,
                        "reconciled",
                        &format!("day={day} disagreeing={outcome:?}"),
                    ),
                    Err(err) => log(
                        &config,
                        "reconcile_failed",
                        &format!("day={day} error={err}"),
                    ),
                }
            }
            Ok(None) => {}
            Err(err) => log(&config, "reconcile_failed", &format!("error={err}")),
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// Once a minute: drops the tenant indexes whose DROP met a lock at tenant deletion
/// (`bulkhead.drop_pending_indexes`, which waits at most 100 ms for each).
async fn index_drop_loop(pool: PgPool, config: Config) {
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        match sqlx::query_scalar::<_, i32>("select bulkhead.drop_pending_indexes()")
            .fetch_one(&pool)
            .await
        {
            Ok(0) => {}
            Ok(dropped) => log(&config, "indexes_dropped", &format!("dropped={dropped}")),
            Err(err) => log(&config, "index_drop_failed", &format!("error={err}")),
        }
    }
}

/// Every 10 s: the provider revocations due (deleted tenants' projects and keys, rotated keys no
/// call uses any more), src/provisioning.rs.
async fn revocation_loop(context: Arc<TaskContext>, config: Config) {
    loop {
        revoke_due(&context, &config).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// One sweep of the revocations due; a failure is logged, and what it left is due next time.
async fn revoke_due(context: &TaskContext, config: &Config) {
    match provisioning::revoke_due(&context.pool, &context.admin_http, &context.admin).await {
        Ok((0, 0)) => {}
        Ok((done, failed)) => log(
            config,
            "revocations",
            &format!("done={done} failed={failed}"),
        ),
        Err(err) => log(config, "revocation_failed", &format!("error={err}")),
    }
}

/// Every 5 s: expired leases of every tenant (gateway calls that lapsed unsettled are charged at
/// their hold), and the holds of gateway calls in flight written as rows, so that a dead
/// gateway's calls are accounted for even when no gateway is left to sweep.
async fn lease_sweep_loop(pool: PgPool, config: Config) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        // Two transactions: holds the first writes are not held up by the second's tenants.
        for statement in [
            "select bulkhead.gateway_persist_holds()",
            "select bulkhead.expire_all_reservations()",
        ] {
            if let Err(err) = sqlx::query(statement).execute(&pool).await {
                log(&config, "lease_sweep_failed", &format!("error={err}"));
            }
        }
    }
}

/// Sweeps the Pinecone outbox until it is empty, then waits for a NOTIFY or the poll interval.
async fn pinecone_loop(
    pinecone: Arc<Pinecone>,
    pool: PgPool,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    config: Config,
) {
    loop {
        let round = pinecone.round(&pool, &metrics).await;
        if let Ok(round) = &round {
            for (tenant, held) in &round.held_too_long {
                log(
                    &config,
                    "pinecone_lock_held_long",
                    &format!("tenant={tenant} held_secs={}", held.as_secs()),
                );
            }
        }
        match round {
            // Work done and none failed: more may be pending, go again at once.
            Ok(round) if round.failures == 0 && round.synced + round.namespaces_deleted > 0 => {
                continue
            }
            Ok(round) if round.failures > 0 => log(
                &config,
                "pinecone_failures",
                &format!("failed={} synced={}", round.failures, round.synced),
            ),
            Ok(_) => {}
            Err(err) => log(&config, "pinecone_error", &format!("error={err}")),
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(config.poll_interval) => {}
        }
    }
}

/// With --drain: sweeps until a round finds nothing to do; failing rounds are retried after
/// the poll interval, at most 20 times, and whatever still fails is left for the next run.
async fn drain_pinecone(
    pinecone: &Pinecone,
    pool: &PgPool,
    metrics: &Metrics,
    config: &Config,
) -> Result<(), sqlx::Error> {
    let mut failed_rounds = 0;
    loop {
        let round = pinecone.round(pool, metrics).await?;
        if round.failures == 0 && round.synced + round.namespaces_deleted == 0 {
            return Ok(());
        }
        if round.failures > 0 {
            failed_rounds += 1;
            if failed_rounds >= 20 {
                log(
                    config,
                    "pinecone_left_pending",
                    &format!("failed={}", round.failures),
                );
                return Ok(());
            }
            tokio::time::sleep(config.poll_interval).await;
        }
    }
}

/// A claimed job's payload, or why it could not be read (a payload serde_json refuses, e.g.
/// nested deeper than 128 levels: the job fails for good, the worker goes on).
type Payload = Result<serde_json::Value, String>;

/// Claims up to `max_jobs` and reads them, each inside its tenant's context, in one round trip.
async fn claim_and_start(
    pool: &PgPool,
    config: &Config,
    max_jobs: usize,
) -> Result<
    Vec<(
        Claimed,
        String,
        Payload,
        Option<serde_json::Value>,
        Option<f64>,
    )>,
    sqlx::Error,
> {
    let lease_ms = i64::try_from(config.lease.as_millis()).unwrap_or(i64::MAX);
    let rows = sqlx::query(
        "select job_id, tenant_id, kind, payload, credential, reservation_left
         from bulkhead.claim_and_start_jobs($1, $2,
             pg_catalog.make_interval(secs => $3::pg_catalog.float8 OPERATOR(pg_catalog./) 1000))",
    )
    .bind(&config.name)
    .bind(i32::try_from(max_jobs).unwrap_or(i32::MAX))
    .bind(lease_ms)
    .fetch_all(pool)
    .await?;
    let mut claimed = Vec::with_capacity(rows.len());
    for row in &rows {
        let job = Claimed {
            id: row.try_get(0)?,
            tenant: row.try_get(1)?,
        };
        let kind: String = row.try_get(2)?;
        let payload = row
            .try_get::<serde_json::Value, _>(3)
            .map_err(|err| format!("the payload cannot be read: {err}"));
        // A credential that cannot be read is as good as none: the job then fails for good.
        let credential = row
            .try_get::<Option<serde_json::Value>, _>(4)
            .ok()
            .flatten();
        let reservation_left = row.try_get::<Option<f64>, _>(5)?;
        claimed.push((job, kind, payload, credential, reservation_left));
    }
    Ok(claimed)
}

/// The work itself, by kind. Kinds join as the daemon learns them (see jobs_kind_known).
async fn execute(
    context: &TaskContext,
    job: Claimed,
    kind: &str,
    payload: &serde_json::Value,
    credential: Option<&serde_json::Value>,
) -> Result<Finish, Failure> {
    match kind {
        "noop" => Ok(Finish::Result(serde_json::json!({"ok": true}))),
        "completion" => complete(context, payload, credential)
            .await
            .map(Finish::Completion),
        "embedding" => embed(context, job, payload, credential)
            .await
            .map(Finish::Embedding),
        // A tenant's own vector index, in a short transaction of the worker's (never an
        // application's, which could hold the SHARE lock on chunks the build takes).
        "index_build" => {
            sqlx::query_scalar::<_, Option<String>>("select bulkhead.build_index_for_job($1, $2)")
                .bind(job.id)
                .bind(&context.worker)
                .fetch_one(&context.pool)
                .await
                .map(|index| Finish::Result(serde_json::json!({"index": index})))
                .map_err(|err| match &err {
                    // The lock on chunks did not come within 200 ms (a writer holds chunks):
                    // later, without using up an attempt, as for a provider's 429.
                    sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03") => Failure {
                        retry_after: Some(Duration::from_secs(30)),
                        ..Failure::transient(format!(
                            "the index build could not take its lock on chunks: {}",
                            db.message()
                        ))
                    },
                    sqlx::Error::Database(db) => {
                        Failure::permanent(format!("the index build failed: {}", db.message()))
                    }
                    other => Failure::transient(format!("the index build failed: {other}")),
                })
        }
        // An eval case's scoring, in the database (its assertions against the stored answer),
        // in a short transaction of its own: never inside a settle that holds budget locks.
        "eval_score" => {
            sqlx::query_scalar::<_, serde_json::Value>("select bulkhead.score_eval_job($1, $2)")
                .bind(job.id)
                .bind(&context.worker)
                .fetch_one(&context.pool)
                .await
                .map(Finish::Result)
                .map_err(|err| match &err {
                    sqlx::Error::Database(db)
                        if matches!(db.code().as_deref(), Some("55P03" | "40001" | "40P01")) =>
                    {
                        Failure::transient(format!("scoring met a lock: {}", db.message()))
                    }
                    sqlx::Error::Database(db) => {
                        Failure::permanent(format!("scoring failed: {}", db.message()))
                    }
                    other => Failure::transient(format!("scoring failed: {other}")),
                })
        }
        // A tenant's provider project, workspace and limits (src/provisioning.rs).
        "provision" | "provider_limits" => provisioning::run(
            &context.pool,
            &context.admin_http,
            &context.admin,
            job.id,
            &context.worker,
        )
        .await
        // The job row is the tenant's to read: it says how it went, the ids, steps and the
        // providers' errors are for bulkhead_admin (provisioning_status) and the log.
        .map(|result| {
            Finish::Result(serde_json::json!({"provider": result["provider"], "provisioned": true}))
        })
        .map_err(|err| Failure {
            message: "a provisioning step failed: bulkhead.provisioning_status (bulkhead_admin) and the worker's log have the detail".into(),
            transient: err.transient,
            retry_after: err.retry_after,
            operator_detail: Some(err.message),
        }),
        // The end of a temporary budget raise (console.sql): the limit goes back.
        "budget_raise_end" => {
            sqlx::query_scalar::<_, String>("select bulkhead.end_budget_raise($1, $2)")
                .bind(job.id)
                .bind(&context.worker)
                .fetch_one(&context.pool)
                .await
                .map(|how| Finish::Result(serde_json::json!({"raise": how})))
                .map_err(|err| match &err {
                    sqlx::Error::Database(db) if db.code().as_deref() == Some("55000") => {
                        Failure::permanent(format!("ending the raise failed: {}", db.message()))
                    }
                    other => Failure::transient(format!("ending the raise failed: {other}")),
                })
        }
        other => Err(Failure::permanent(format!(
            "this worker cannot run jobs of kind {other:?}"
        ))),
    }
}

/// A resolved credential: the key, the provider project id, and whether it is the shared pool's.
struct Resolved {
    key: Secret,
    project: Option<String>,
    shared: bool,
}

/// The tenant's credential for a provider (its reference came with the claim, read in the
/// job's tenant context), resolved now.
async fn credential_for(
    context: &TaskContext,
    credential: Option<&serde_json::Value>,
    provider: &str,
) -> Result<Resolved, Failure> {
    let Some(secret_ref) = credential.and_then(|c| c["secret_ref"].as_str()) else {
        return Err(Failure::permanent(format!(
            "the tenant has no {provider} credential and there is no shared one (bulkhead.set_credential)"
        )));
    };
    let project = credential
        .and_then(|c| c["provider_project_id"].as_str())
        .map(str::to_string);
    let key = credentials::resolve(secret_ref, &context.pool)
        .await
        .map_err(|detail| Failure {
            operator_detail: Some(detail),
            ..Failure::permanent(format!(
                "the {provider} credential is unavailable; the operator's worker log says why"
            ))
        })?;
    let shared = credential.is_some_and(|c| c["source"] == "shared" || c["kind"] == "shared_pool");
    Ok(Resolved {
        key,
        project,
        shared,
    })
}

/// A call on the shared pool's key fails with the provider's status only; its message goes to
/// the operator's log. A provider that echoes request text in its errors would otherwise let a
/// tenant test guesses at the platform's key against the redaction of its own error.
fn for_shared_pool(resolved: &Resolved, failure: Failure) -> Failure {
    if !resolved.shared {
        return failure;
    }
    let public = match failure.message.split_once(": ") {
        Some((status, _)) => {
            format!("{status} (the provider's message is in the operator's worker log)")
        }
        None => failure.message.clone(),
    };
    Failure {
        operator_detail: Some(failure.message),
        message: public,
        ..failure
    }
}

/// Maps a provider failure to the queue's terms, counting it in the metrics.
fn provider_failure(context: &TaskContext, provider: &str, err: CallError) -> Failure {
    context.metrics.provider_error(provider, err.class());
    match err {
        CallError::RateLimited {
            retry_after,
            message,
        } => Failure {
            retry_after: Some(retry_after),
            ..Failure::transient(message)
        },
        CallError::Transient { message, .. } => Failure::transient(message),
        CallError::Permanent { message, .. } => Failure::permanent(message),
    }
}

/// A payload field the job cannot run without.
fn field<'a>(payload: &'a serde_json::Value, name: &str) -> Result<&'a str, Failure> {
    payload[name]
        .as_str()
        .ok_or_else(|| Failure::permanent(format!("the job payload has no {name}")))
}

/// One queued embedding: the chunks' texts to the provider's embeddings endpoint. The settle
/// and the ingest happen when the outcome is recorded (`_finish_embedding`).
async fn embed(
    context: &TaskContext,
    job: Claimed,
    payload: &serde_json::Value,
    credential: Option<&serde_json::Value>,
) -> Result<Embeddings, Failure> {
    let provider = field(payload, "provider")?;
    let chunks = payload["chunks"]
        .as_array()
        .ok_or_else(|| Failure::permanent("the job payload has no chunks".into()))?;
    let inputs = chunks
        .iter()
        .map(|c| c["content"].as_str())
        .collect::<Option<Vec<&str>>>()
        .ok_or_else(|| Failure::permanent("a chunk has no content".into()))?;
    let dims = payload["dims"]
        .as_u64()
        .and_then(|d| usize::try_from(d).ok())
        .ok_or_else(|| Failure::permanent("the job payload has no dims".into()))?;
    let resolved = credential_for(context, credential, provider).await?;
    let key = &resolved.key;
    let request = providers::EmbeddingRequest {
        provider,
        model: field(payload, "model")?,
        inputs,
        dims,
        key,
        project: resolved.project.as_deref(),
        // Unguessable: a tenant must not be able to record this id first.
        fallback_request_id: format!("embedding-job-{}-{}", job.id, uuid::Uuid::new_v4().simple()),
    };
    context
        .providers
        .embed(&request)
        .await
        .map(|embeddings| {
            if embeddings.unusable.is_some() {
                context.metrics.provider_error(provider, "malformed");
            }
            embeddings
        })
        .map_err(|err| for_shared_pool(&resolved, provider_failure(context, provider, err)))
}

/// One queued completion: the tenant's credential, resolved now, and the provider call. The
/// settle happens when the outcome is recorded (`_finish_completion`).
async fn complete(
    context: &TaskContext,
    payload: &serde_json::Value,
    credential: Option<&serde_json::Value>,
) -> Result<Completion, Failure> {
    let provider = field(payload, "provider")?;
    let max_output_tokens = payload["max_output_tokens"]
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| Failure::permanent("the job payload has no max_output_tokens".into()))?;
    let resolved = credential_for(context, credential, provider).await?;
    let key = &resolved.key;
    let request = providers::Request {
        provider,
        model: field(payload, "model")?,
        prompt: payload["prompt"].as_str(),
        body: payload.get("request").filter(|r| r.is_object()),
        max_output_tokens,
        stream: payload["stream"].as_bool().unwrap_or(false),
        est_input_tokens: payload["est_input_tokens"].as_u64().unwrap_or(0),
        key,
        project: resolved.project.as_deref(),
    };
    context
        .providers
        .complete(&request)
        .await
        .map(|completion| {
            if completion.malformed {
                context.metrics.provider_error(provider, "malformed");
            }
            completion
        })
        .map_err(|err| for_shared_pool(&resolved, provider_failure(context, provider, err)))
}

impl Failure {
    /// Every failure's text is redacted here, whatever produced it: it reaches a job row, which
    /// the tenant reads (key shapes only: see secrets.rs on why not every held key).
    fn permanent(message: String) -> Self {
        Failure {
            message: secrets::redact_for_tenant(&message, None),
            transient: false,
            retry_after: None,
            operator_detail: None,
        }
    }

    fn transient(message: String) -> Self {
        Failure {
            transient: true,
            ..Failure::permanent(message)
        }
    }
}

/// Records a batch of outcomes: successes in one statement (`complete_jobs`, which enters each
/// tenant's context in turn), failures one by one (`fail_job` enters the job's context). A job
/// whose lease this worker lost is skipped there: its next holder records it.
async fn settle(
    pool: &PgPool,
    config: &Config,
    metrics: &Metrics,
    batch: &[Outcome],
) -> Result<Vec<i64>, sqlx::Error> {
    let mut retry = Vec::new();
    let mut done_ids = Vec::new();
    let mut done_results = Vec::new();
    let mut completions = Vec::new();
    for (job, kind, took, outcome) in batch {
        match outcome {
            Ok(Finish::Result(result)) => {
                done_ids.push(job.id);
                done_results.push(result.clone());
            }
            // Completions settle together below: one statement, one commit.
            Ok(Finish::Completion(completion)) => completions.push((job, kind, took, completion)),
            Ok(Finish::Embedding(embeddings)) => {
                let settled =
                    sqlx::query("select bulkhead._finish_embedding($1, $2, $3, $4, $5, $6)")
                        .bind(job.id)
                        .bind(&config.name)
                        .bind(without_nul_json(&embeddings.usage))
                        .bind(without_nul(&embeddings.request_id))
                        .bind(&embeddings.vectors)
                        .bind(embeddings.unusable.as_deref().map(without_nul))
                        .execute(pool)
                        .await;
                match settled {
                    Ok(_) if embeddings.unusable.is_some() => {
                        metrics.job_finished(kind, "failed", *took)
                    }
                    Ok(_) => metrics.job_finished(kind, "done", *took),
                    Err(err) if is_lease_lost(&err) => log(
                        config,
                        "lease_lost",
                        &format!("job={} tenant={}", job.id, job.tenant),
                    ),
                    // A lock held elsewhere or a serialization failure: settle it again later.
                    Err(err) if is_lock_conflict(&err) => retry.push(job.id),
                    Err(err) if is_infrastructure(&err) => return Err(err),
                    // The settle itself was refused (say, a usage object the ledger cannot
                    // price): retrying would call the provider again, so the job fails for good.
                    Err(err) => {
                        let failure =
                            Failure::permanent(format!("settling the call failed: {err}"));
                        record_failure(pool, config, metrics, job, kind, *took, &failure).await?;
                    }
                }
            }
            Err(failure) => {
                record_failure(pool, config, metrics, job, kind, *took, failure).await?;
            }
        }
    }
    if !completions.is_empty() {
        retry.extend(settle_completions(pool, config, metrics, &completions).await?);
    }
    if !done_ids.is_empty() {
        let recorded: i32 = sqlx::query_scalar("select bulkhead.complete_jobs($1, $2, $3)")
            .bind(&config.name)
            .bind(&done_ids)
            .bind(&done_results)
            .fetch_one(pool)
            .await?;
        for (_, kind, took, outcome) in batch {
            if matches!(outcome, Ok(Finish::Result(_))) {
                metrics.job_finished(kind, "done", *took);
            }
        }
        if usize::try_from(recorded).ok() != Some(done_ids.len()) {
            log(
                config,
                "leases_lost",
                &format!("completed={} recorded={recorded}", done_ids.len()),
            );
        }
    }
    Ok(retry)
}

/// Settles provider calls and records their jobs' outcomes in one statement
/// (`_finish_completions`: each job in its tenant's context and its own subtransaction).
/// Returns the jobs to settle again later: those that met a lock or a serialization conflict.
/// If the statement itself is refused (not a connection problem), each job is settled alone,
/// so that one bad outcome cannot stop the worker.
async fn settle_completions(
    pool: &PgPool,
    config: &Config,
    metrics: &Metrics,
    completions: &[(&Claimed, &String, &Duration, &Completion)],
) -> Result<Vec<i64>, sqlx::Error> {
    let outcomes = match finish_completions(pool, config, completions).await {
        Ok(outcomes) => outcomes,
        Err(err) if is_infrastructure(&err) || completions.len() == 1 => {
            if is_infrastructure(&err) {
                return Err(err);
            }
            vec![(completions[0].0.id, format!("error {err}"))]
        }
        Err(_) => {
            let mut outcomes = Vec::with_capacity(completions.len());
            for one in completions {
                match finish_completions(pool, config, std::slice::from_ref(one)).await {
                    Ok(mut outcome) => outcomes.append(&mut outcome),
                    Err(err) if is_infrastructure(&err) => return Err(err),
                    Err(err) => outcomes.push((one.0.id, format!("error {err}"))),
                }
            }
            outcomes
        }
    };
    // Outcomes come back in settle order (by tenant), so they are matched by job id.
    let by_job: HashMap<i64, &str> = outcomes.iter().map(|(id, o)| (*id, o.as_str())).collect();
    let mut retry = Vec::new();
    for (job, kind, took, _) in completions {
        let outcome = by_job.get(&job.id).copied().unwrap_or("lease_lost");
        match outcome {
            "done" => metrics.job_finished(kind, "done", **took),
            "failed" => metrics.job_finished(kind, "failed", **took),
            "lease_lost" => log(
                config,
                "lease_lost",
                &format!("job={} tenant={}", job.id, job.tenant),
            ),
            // A lock held elsewhere (55P03, say a tenant's own open transaction) or a
            // serialization failure (class 40) says nothing about the call: settle it later.
            conflict if conflict.starts_with("error 55P03") || conflict.starts_with("error 40") => {
                retry.push(job.id);
            }
            // The settle was refused (say, a usage object the ledger cannot price): retrying
            // would call the provider again, so the job fails for good.
            refused => {
                let failure = Failure::permanent(format!("settling the call failed: {refused}"));
                record_failure(pool, config, metrics, job, kind, **took, &failure).await?;
            }
        }
    }
    if !retry.is_empty() {
        log(config, "settle_deferred", &format!("jobs={retry:?}"));
    }
    Ok(retry)
}

async fn finish_completions(
    pool: &PgPool,
    config: &Config,
    completions: &[(&Claimed, &String, &Duration, &Completion)],
) -> Result<Vec<(i64, String)>, sqlx::Error> {
    let ids: Vec<i64> = completions.iter().map(|c| c.0.id).collect();
    let usages: Vec<serde_json::Value> = completions
        .iter()
        .map(|c| without_nul_json(&c.3.usage))
        .collect();
    let request_ids: Vec<String> = completions
        .iter()
        .map(|c| without_nul(&c.3.request_id))
        .collect();
    // PostgreSQL text cannot hold U+0000, and a model can be made to emit it.
    let outputs: Vec<String> = completions
        .iter()
        .map(|c| without_nul(&c.3.output))
        .collect();
    let errors: Vec<Option<String>> = completions
        .iter()
        .map(|c| c.3.cut_short.as_deref().map(without_nul))
        .collect();
    let messages: Vec<Option<serde_json::Value>> = completions
        .iter()
        .map(|c| {
            Some(&c.3.message)
                .filter(|m| !m.is_null())
                .map(without_nul_json)
        })
        .collect();
    sqlx::query_as(
        "select job_id, outcome from bulkhead._finish_completions($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&config.name)
    .bind(&ids)
    .bind(&usages)
    .bind(&request_ids)
    .bind(&outputs)
    .bind(&errors)
    .bind(&messages)
    .fetch_all(pool)
    .await
}

/// Records a failure (`fail_job` decides: retry later, or dead). A job whose lease is gone has a
/// new holder, which records its own outcome.
async fn record_failure(
    pool: &PgPool,
    config: &Config,
    metrics: &Metrics,
    job: &Claimed,
    kind: &str,
    took: Duration,
    failure: &Failure,
) -> Result<(), sqlx::Error> {
    let retry_after_ms = failure
        .retry_after
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let failed = sqlx::query_scalar::<_, String>(
        "select bulkhead.fail_job($1, $2, $3, $4, pg_catalog.make_interval(secs => $5::pg_catalog.float8 OPERATOR(pg_catalog./) 1000))",
    )
    .bind(job.id)
    .bind(&config.name)
    .bind(without_nul(&failure.message))
    .bind(failure.transient)
    .bind(retry_after_ms)
    .fetch_one(pool)
    .await;
    match failed {
        Ok(next) => {
            metrics.job_finished(kind, "failed", took);
            log(
                config,
                "job_failed",
                &format!(
                    "job={} tenant={} kind={kind} next={next} error={:?}{}",
                    job.id,
                    job.tenant,
                    failure.message,
                    failure
                        .operator_detail
                        .as_ref()
                        .map(|d| format!(" detail={d:?}"))
                        .unwrap_or_default()
                ),
            );
            Ok(())
        }
        Err(err) if is_lease_lost(&err) => {
            log(
                config,
                "lease_lost",
                &format!("job={} tenant={}", job.id, job.tenant),
            );
            Ok(())
        }
        Err(err) => Err(err),
    }
}

fn is_lock_conflict(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if db.code().is_some_and(|code| code == "55P03" || code.starts_with("40")))
}

fn is_lease_lost(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("55000")
        && db.message().contains("is not held by worker"))
}

/// Errors of the connection or the server rather than of the statement: the session ends and
/// the outcome is recorded after reconnecting.
fn is_infrastructure(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            ["08", "40", "53", "57", "58"]
                .iter()
                .any(|class| code.starts_with(class))
        }),
        _ => true,
    }
}

async fn release(pool: &PgPool, worker: &str, job: Claimed) -> Result<(), sqlx::Error> {
    sqlx::query("select bulkhead.release_job($1, $2)")
        .bind(job.id)
        .bind(worker)
        .execute(pool)
        .await?;
    Ok(())
}

/// One event of this worker (logging.rs redacts every line against the keys the process holds).
fn log(config: &Config, event: &str, fields: &str) {
    if event.ends_with("_failed") || event.ends_with("_error") || event == "lease_lost" {
        tracing::warn!(worker = %config.name, event, detail = %fields);
    } else {
        tracing::info!(worker = %config.name, event, detail = %fields);
    }
}
