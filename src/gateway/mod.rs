//! `bulkhead gateway`: OpenAI- and Anthropic-compatible HTTP endpoints where every call is
//! authenticated (a per-tenant API key or a verified JWT), admitted by the database in one round
//! trip (budget, tenant prompt, credential), relayed to the provider and settled in the ledger.
//! See README, "The gateway".

mod admission;
mod auth;
mod calls;
mod errors;
mod lanes;
mod settle;

pub(crate) use lanes::fatal;

use crate::providers::{Endpoints, Providers, Secret};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bulkhead_policy::requests::Wire;
use calls::Endpoint;
use errors::ApiError;
use serde_json::json;
use sha2::Digest;
use sqlx::PgPool;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What to do with a client's own system message when the request names a tenant prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientSystemPrompt {
    /// The tenant prompt comes first, the client's after it.
    Append,
    /// 400: the tenant prompt is the only system prompt.
    Refuse,
}

pub struct Config {
    pub database_url: String,
    pub allow_privileged_role: bool,
    pub listen: SocketAddr,
    pub endpoints: Endpoints,
    pub provider_idle_timeout: Duration,
    pub jwt_secret: Option<String>,
    pub jwks_file: Option<std::path::PathBuf>,
    pub jwt_audience: Option<String>,
    pub jwt_issuer: Option<String>,
    pub jwt_max_lifetime_secs: Option<u64>,
    pub jwt_tenant_claim: Option<String>,
    pub max_body_bytes: usize,
    pub lease: Duration,
    pub durable_holds: bool,
    pub client_system: ClientSystemPrompt,
    pub shutdown_grace: Duration,
    pub pool_size: u32,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub metrics_token: Option<String>,
}

pub struct AppState {
    pool: PgPool,
    /// Admission's own connections (lanes.rs).
    lanes: lanes::Lanes,
    metrics: Arc<crate::metrics::GatewayMetrics>,
    providers: Providers,
    jwt: Option<auth::JwtVerifier>,
    settler: settle::Settler,
    streams: Arc<Streams>,
    client_system: ClientSystemPrompt,
    lease_secs: u64,
    durable_holds: bool,
    max_body_bytes: usize,
    /// How long a request's body may take to arrive (the header timeout).
    body_timeout: Duration,
    credentials: Mutex<HashMap<String, (Secret, Instant)>>,
    body_permits: Arc<tokio::sync::Semaphore>,
    /// SHA-256 of the token GET /metrics requires, if one is set.
    metrics_token: Option<[u8; 32]>,
    /// API key hashes found valid, and when.
    valid_keys: Mutex<HashMap<[u8; 32], Instant>>,
    /// Cancelled on SIGTERM/SIGINT: calls not yet admitted get a 503.
    shutdown: CancellationToken,
    /// Calls being handled (calls::serve), which shutdown waits for.
    calls_in_flight: AtomicUsize,
    /// The last /healthz check and its outcome, reused for a second.
    health: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

/// Request bodies held at once: 256 MiB (with their parsed form, a few times that), in permits
/// of 64 KiB.
const BODY_PERMIT_BYTES: u64 = 64 << 10;
const BODY_PERMITS: u32 = 4096;
/// How long a key found valid is trusted before the body is read (admission checks it again):
/// a revoked key stops within this time.
const KEY_CHECK_TTL: Duration = Duration::from_millis(1000);

/// How long a resolved key is reused: a rotated reference takes effect within this time.
const CREDENTIAL_TTL: Duration = Duration::from_secs(30);
/// How often streams in flight are checked against their tenants' status.
const SUSPENSION_POLL: Duration = Duration::from_millis(250);

impl AppState {
    async fn key_valid(&self, hash: &[u8; 32]) -> Result<bool, sqlx::Error> {
        if let Some(at) = self
            .valid_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
        {
            if at.elapsed() < KEY_CHECK_TTL {
                return Ok(true);
            }
        }
        let valid: bool = sqlx::query_scalar("select bulkhead.gateway_key_valid($1)")
            .bind(hash.to_vec())
            .fetch_one(&self.pool)
            .await?;
        let mut keys = self.valid_keys.lock().unwrap_or_else(|p| p.into_inner());
        if valid {
            if keys.len() > 100_000 {
                keys.retain(|_, at| at.elapsed() < KEY_CHECK_TTL);
            }
            keys.insert(*hash, Instant::now());
        } else {
            keys.remove(hash);
        }
        Ok(valid)
    }

    async fn credential(&self, reference: &str) -> Result<Secret, String> {
        if let Some((key, at)) = self
            .credentials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(reference)
        {
            if at.elapsed() < CREDENTIAL_TTL {
                return Ok(key.clone());
            }
        }
        let key = crate::credentials::resolve(reference, &self.pool).await?;
        self.credentials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(reference.to_string(), (key.clone(), Instant::now()));
        Ok(key)
    }

    async fn settle(&self, call: &calls::Admission, usage: serde_json::Value, request_id: String) {
        let count = |fields: [&str; 2]| fields.iter().find_map(|f| usage[*f].as_u64()).unwrap_or(0);
        self.metrics.tokens(
            &call.admitted.provider,
            count(["prompt_tokens", "input_tokens"]),
            count(["completion_tokens", "output_tokens"]),
        );
        self.settler
            .settle(settle::Settle {
                tenant: call.admitted.tenant_id,
                reservation: call.admitted.reservation,
                usage,
                request_id,
                model: call.model.clone(),
            })
            .await;
    }

    /// Gives back the hold of a call that was never sent, or that the provider refused.
    async fn release(&self, call: &calls::Admission) {
        admission::release(
            &self.pool,
            call.admitted.tenant_id,
            call.admitted.reservation,
        )
        .await;
    }

    async fn settle_at_hold(&self, call: &calls::Admission) {
        let id = format!("bulkhead-hold-{}", call.admitted.reservation);
        self.settle(call, call.usage_at_hold(), id).await;
    }
}

/// Streams in flight, each with a token that cuts it (suspension, shutdown).
#[derive(Default)]
pub struct Streams {
    inner: Mutex<HashMap<uuid::Uuid, (uuid::Uuid, CancellationToken)>>,
    shutting_down: Arc<AtomicBool>,
}

pub struct StreamCut {
    token: CancellationToken,
    shutting_down: Arc<AtomicBool>,
}

impl StreamCut {
    pub async fn cancelled(&self) -> &'static str {
        self.token.cancelled().await;
        if self.shutting_down.load(Ordering::Relaxed) {
            "the gateway is shutting down; the stream was cut"
        } else {
            "tenant_suspended: the stream was cut"
        }
    }
}

impl Streams {
    fn register(&self, tenant: uuid::Uuid, reservation: uuid::Uuid) -> StreamCut {
        let token = CancellationToken::new();
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(reservation, (tenant, token.clone()));
        StreamCut {
            token,
            shutting_down: self.shutting_down.clone(),
        }
    }

    fn unregister(&self, reservation: uuid::Uuid) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&reservation);
    }

    fn tenants(&self) -> Vec<uuid::Uuid> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut tenants: Vec<uuid::Uuid> = inner.values().map(|(t, _)| *t).collect();
        tenants.sort();
        tenants.dedup();
        tenants
    }

    fn cut(&self, which: impl Fn(&uuid::Uuid) -> bool) {
        for (tenant, token) in self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            if which(tenant) {
                token.cancel();
            }
        }
    }

    fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// An error for the operator's log (logging.rs redacts every line against the keys held).
pub fn log_error(message: &str) {
    tracing::error!(target: "bulkhead::gateway", "{message}");
}

pub async fn run(config: Config) -> Result<(), String> {
    let options =
        crate::database::connect_options(&config.database_url).map_err(|e| e.to_string())?;
    // Admission, one statement per call, has `pool_size` lanes; what is not per call (key
    // checks once a second per key, settle batches, releases, sweeps) a quarter of that.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections((config.pool_size / 4).max(2))
        .acquire_timeout(Duration::from_secs(5))
        // Tested before use (a round trip), so that one the server dropped is replaced rather
        // than failing a call: the pool serves what is not per call (key checks once a second
        // per key, settle batches, releases, sweeps); admission has its lanes.
        .test_before_acquire(true)
        .connect_with(options.clone())
        .await
        .map_err(|e| format!("cannot connect to the database: {e}"))?;
    crate::database::refuse_privileged_role(&pool, config.allow_privileged_role)
        .await
        .map_err(|e| e.to_string())?;
    let claim = match config.jwt_tenant_claim {
        Some(claim) => claim,
        None => sqlx::query_scalar::<_, String>(
            "select pg_catalog.current_setting('bulkhead.jwt_tenant_claim')",
        )
        .fetch_one(&pool)
        .await
        .map_err(|e| format!("cannot read bulkhead.jwt_tenant_claim: {e}"))?,
    };
    let jwks = match &config.jwks_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let jwt = auth::JwtVerifier::new(
        config.jwt_secret.as_deref(),
        jwks.as_deref(),
        auth::JwtRules {
            audience: config.jwt_audience.clone(),
            issuer: config.jwt_issuer.clone(),
            max_lifetime_secs: config.jwt_max_lifetime_secs,
        },
        &claim,
    )?;
    let providers = Providers::streaming(config.endpoints.clone(), config.provider_idle_timeout)
        .map_err(|e| e.to_string())?;
    let metrics = Arc::new(crate::metrics::GatewayMetrics::default());
    let (settler, settling) = settle::Settler::start(pool.clone(), metrics.clone());
    let shutdown = CancellationToken::new();
    let state = Arc::new(AppState {
        pool: pool.clone(),
        lanes: lanes::Lanes::new(options, config.pool_size as usize),
        metrics,
        providers,
        jwt,
        settler,
        streams: Arc::new(Streams::default()),
        client_system: config.client_system,
        lease_secs: config.lease.as_secs().max(1),
        durable_holds: config.durable_holds,
        max_body_bytes: config.max_body_bytes,
        body_timeout: config.header_timeout,
        credentials: Mutex::new(HashMap::new()),
        body_permits: Arc::new(tokio::sync::Semaphore::new(BODY_PERMITS as usize)),
        valid_keys: Mutex::new(HashMap::new()),
        metrics_token: config
            .metrics_token
            .as_deref()
            .map(|t| sha2::Sha256::digest(t.as_bytes()).into()),
        shutdown: shutdown.clone(),
        calls_in_flight: AtomicUsize::new(0),
        health: tokio::sync::Mutex::new(None),
    });

    tokio::spawn(watch_suspensions(state.clone(), shutdown.clone()));
    tokio::spawn(sweep_leases(state.clone(), shutdown.clone()));
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            crate::http::wait_for_signal().await;
            shutdown.cancel();
        });
    }
    {
        // Streams may finish for the grace period; then they are cut (and settled for what
        // they streamed) so that the process can exit.
        // It holds the streams only: the settler must be free to finish once serving ends.
        let streams = state.streams.clone();
        let shutdown = shutdown.clone();
        let grace = config.shutdown_grace;
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
            streams.shutting_down.store(true, Ordering::Relaxed);
            streams.cut(|_| true);
        });
    }

    let app = router(state.clone());
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(target: "bulkhead::gateway", "listening on {local}");
    crate::http::serve(
        listener,
        app,
        &shutdown,
        config.max_connections,
        config.header_timeout,
        // Not per address: a gateway's callers often share a load balancer's or NAT's address.
        None,
    )
    .await;
    // Every call (its client may have left) and every stream's relay settles before it ends;
    // then the settle queue drains.
    let deadline = Instant::now() + config.shutdown_grace + Duration::from_secs(5);
    while (state.streams.len() > 0 || state.calls_in_flight.load(Ordering::SeqCst) > 0)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(state);
    let _ = tokio::time::timeout(Duration::from_secs(10), settling).await;
    tracing::info!(target: "bulkhead::gateway", "stopped");
    Ok(())
}

/// Cuts the streams of tenants that were suspended or deleted, within SUSPENSION_POLL.
async fn watch_suspensions(state: Arc<AppState>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(SUSPENSION_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !shutdown.is_cancelled() || state.streams.len() > 0 {
        tick.tick().await;
        let tenants = state.streams.tenants();
        if tenants.is_empty() {
            continue;
        }
        match sqlx::query_scalar::<_, uuid::Uuid>("select bulkhead.gateway_inactive_tenants($1)")
            .bind(&tenants)
            .fetch_all(&state.pool)
            .await
        {
            Ok(inactive) if !inactive.is_empty() => state.streams.cut(|t| inactive.contains(t)),
            Ok(_) => {}
            Err(err) => log_error(&format!(
                "checking tenants of streams in flight failed: {err}"
            )),
        }
    }
}

/// Charges at their hold the gateway calls whose lease ended unsettled (any gateway's), every
/// 5 s, and writes the holds of calls in flight for over five seconds as rows every second
/// (`gateway_persist_holds`), so that they outlive a restart of the database server.
async fn sweep_leases(state: Arc<AppState>, shutdown: CancellationToken) {
    let pool = &state.pool;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks = 0u64;
    while !shutdown.is_cancelled() {
        tick.tick().await;
        ticks += 1;
        state.lanes.prune();
        let statement = if ticks.is_multiple_of(5) {
            "select bulkhead.expire_all_reservations()"
        } else {
            "select bulkhead.gateway_persist_holds()"
        };
        if let Err(err) = sqlx::query(statement).execute(pool).await {
            log_error(&format!("lease sweep failed: {err}"));
        }
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/messages", post(messages))
        .route("/v1/models", get(models))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::map_response(with_request_id))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// Every answer carries `x-bulkhead-request-id`: a call's reservation id (its ledger row's
/// `reservation_id`), else a fresh id to quote when asking about it.
async fn with_request_id(mut response: Response) -> Response {
    if !response.headers().contains_key("x-bulkhead-request-id") {
        let id = format!("req-{}", uuid::Uuid::new_v4().simple());
        if let Ok(value) = axum::http::HeaderValue::from_str(&id) {
            response
                .headers_mut()
                .insert("x-bulkhead-request-id", value);
        }
    }
    response
}

async fn chat_completions(State(state): State<Arc<AppState>>, request: Request) -> Response {
    with_body(state, Endpoint::ChatCompletions, request).await
}

async fn embeddings(State(state): State<Arc<AppState>>, request: Request) -> Response {
    with_body(state, Endpoint::Embeddings, request).await
}

async fn messages(State(state): State<Arc<AppState>>, request: Request) -> Response {
    with_body(state, Endpoint::Messages, request).await
}

/// Reads the body up to the limit (413 in the endpoint's error shape beyond it).
async fn with_body(state: Arc<AppState>, endpoint: Endpoint, request: Request) -> Response {
    let wire = if endpoint == Endpoint::Messages {
        Wire::Anthropic
    } else {
        Wire::OpenAi
    };
    let (parts, body) = request.into_parts();
    // The rest of the body is never read: the connection cannot carry another request.
    let too_large = || {
        let mut response = ApiError::new(
            wire,
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!(
                "the request body is larger than {} bytes",
                state.max_body_bytes
            ),
        )
        .into_response();
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        response
    };
    // Who is calling, before a byte of the body is read: a caller without a valid key or token
    // costs no parsing, counting or memory.
    let caller = match auth::caller(&parts.headers, state.jwt.as_ref()) {
        Ok(caller) => caller,
        Err(e) => return ApiError::unauthorized(wire, e.to_string()).into_response(),
    };
    if let auth::Caller::ApiKey(hash) = &caller {
        match state.key_valid(hash).await {
            Ok(true) => {}
            Ok(false) => {
                return ApiError::unauthorized(
                    wire,
                    "invalid, revoked or expired api key, or its tenant may not call",
                )
                .into_response()
            }
            Err(err) => return admission::refusal(wire, err).into_response(),
        }
    }
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.max_body_bytes as u64) {
        return too_large();
    }
    // Bodies in memory at once are bounded (BODY_MEMORY): a request waits for room.
    let wanted = declared.unwrap_or(state.max_body_bytes as u64).max(1);
    let permits = u32::try_from(wanted.div_ceil(BODY_PERMIT_BYTES))
        .unwrap_or(u32::MAX)
        .min(BODY_PERMITS);
    let Ok(room) = state.body_permits.clone().acquire_many_owned(permits).await else {
        return ApiError::unavailable(wire, "the gateway is shutting down").into_response();
    };
    // A body that trickles or never comes holds its memory permits: it gets the headers' time.
    let bytes = match tokio::time::timeout(
        state.body_timeout,
        axum::body::to_bytes(Body::new(body), state.max_body_bytes),
    )
    .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => return too_large(),
        Err(_) => {
            return ApiError::new(
                wire,
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body did not arrive in time",
            )
            .into_response()
        }
    };
    calls::serve(state, endpoint, caller, parts.headers, bytes, room).await
}

async fn models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let anthropic = headers.contains_key("anthropic-version");
    let wire = if anthropic {
        Wire::Anthropic
    } else {
        Wire::OpenAi
    };
    let caller = match auth::caller(&headers, state.jwt.as_ref()) {
        Ok(caller) => caller,
        Err(e) => return ApiError::unauthorized(wire, e.to_string()).into_response(),
    };
    let (hash, tenant) = match &caller {
        auth::Caller::ApiKey(h) => (Some(h.to_vec()), None),
        auth::Caller::Jwt(t) => (None, Some(*t)),
    };
    // The `created` of OpenAI's model objects: when the model's price took effect.
    let rows: Vec<(String, String, i64)> = match sqlx::query_as(
        "select model, provider, extract(epoch from since)::int8 from bulkhead.gateway_models($1, $2) order by model",
    )
    .bind(hash)
    .bind(tenant)
    .fetch_all(&state.pool)
    .await
    {
        Ok(rows) => rows,
        Err(err) => return admission::refusal(wire, err).into_response(),
    };
    let served: Vec<_> = rows
        .into_iter()
        .filter(|(_, provider, _)| (provider == "anthropic") == anthropic)
        .collect();
    let body = if anthropic {
        json!({
            "data": served.iter().map(|(m, _, _)| json!({"type": "model", "id": m, "display_name": m, "created_at": "1970-01-01T00:00:00Z"})).collect::<Vec<_>>(),
            "has_more": false,
            "first_id": served.first().map(|(m, _, _)| m),
            "last_id": served.last().map(|(m, _, _)| m),
        })
    } else {
        json!({
            "object": "list",
            "data": served.iter().map(|(m, p, since)| json!({"id": m, "object": "model", "created": since, "owned_by": p})).collect::<Vec<_>>(),
        })
    };
    axum::Json(body).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(expected) = state.metrics_token {
        // Compared as digests: equal-length values, whose comparison time says nothing useful.
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| <[u8; 32]>::from(sha2::Sha256::digest(t.as_bytes())));
        if presented != Some(expected) {
            return (StatusCode::UNAUTHORIZED, "metrics need the bearer token\n").into_response();
        }
    }
    crate::metrics::response(state.metrics.render())
}

/// Unauthenticated, so one check serves every caller for a second: a flood of health checks
/// cannot take the pool that key checks and settles use.
async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let mut last = state.health.lock().await;
    let healthy = match *last {
        Some((at, healthy)) if at.elapsed() < Duration::from_secs(1) => healthy,
        _ => {
            let healthy = sqlx::query("select 1").execute(&state.pool).await.is_ok();
            *last = Some((Instant::now(), healthy));
            healthy
        }
    };
    if healthy {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n").into_response()
    }
}

async fn not_found(headers: HeaderMap) -> Response {
    let wire = if headers.contains_key("anthropic-version") {
        Wire::Anthropic
    } else {
        Wire::OpenAi
    };
    ApiError::new(
        wire,
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint on this gateway",
    )
    .into_response()
}
