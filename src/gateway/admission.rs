//! The one round trip before a call: bulkhead.gateway_admit authenticates the caller, checks
//! the model's wire format, renders the tenant prompt, names the credential and reserves the
//! budget. Its SQLSTATEs become HTTP statuses here.

use super::auth::Caller;
use super::errors::ApiError;
use super::lanes::{ended_by_server, Lanes};
use super::AppState;
use axum::http::StatusCode;
use bulkhead_policy::requests::{Bounds, Wire};
use serde_json::Value;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

pub struct Request<'a> {
    pub caller: &'a Caller,
    pub wire: Wire,
    pub embeddings: bool,
    pub model: &'a str,
    pub bounds: Bounds,
    pub max_output_tokens: Option<i32>,
    pub choices: i32,
    pub prompt: Option<(&'a str, &'a Value)>,
    pub lease_secs: u64,
    pub durable_hold: bool,
}

#[derive(Debug, sqlx::FromRow)]
pub struct Admitted {
    pub tenant_id: uuid::Uuid,
    pub reservation: uuid::Uuid,
    pub provider: String,
    pub output_cap: i32,
    pub est_input_tokens: i32,
    pub system_prompt: Option<String>,
    pub secret_ref: String,
    pub credential_kind: String,
    pub provider_project_id: Option<String>,
}

/// How long a call waits for its admission; past it the call gets a 503. The statement goes on
/// (see `admit`).
const ADMISSION_WAIT: Duration = Duration::from_secs(10);
/// How long the statement itself may take before its lane is closed: a server that stopped
/// answering must not keep a lane, and its server session, for as long as TCP would.
const STATEMENT_LIMIT: Duration = Duration::from_secs(60);

/// What the statement needs, owned: it runs in a task of its own.
struct Args {
    key_hash: Option<Vec<u8>>,
    jwt_tenant: Option<uuid::Uuid>,
    wire: &'static str,
    endpoint: &'static str,
    model: String,
    tokenized: Option<i64>,
    bytes: i64,
    max_output_tokens: Option<i32>,
    choices: i32,
    prompt_name: Option<String>,
    prompt_vars: Option<Value>,
    lease_secs: f64,
    durable_hold: bool,
}

impl Args {
    fn of(request: &Request<'_>) -> Args {
        let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let (key_hash, jwt_tenant) = match request.caller {
            Caller::ApiKey(hash) => (Some(hash.to_vec()), None),
            Caller::Jwt(tenant) => (None, Some(*tenant)),
        };
        Args {
            key_hash,
            jwt_tenant,
            wire: match request.wire {
                Wire::OpenAi => "openai",
                Wire::Anthropic => "anthropic",
            },
            endpoint: if request.embeddings {
                "embeddings"
            } else {
                "chat"
            },
            model: request.model.to_string(),
            tokenized: request.bounds.tokenized.map(as_i64),
            bytes: as_i64(request.bounds.bytes),
            max_output_tokens: request.max_output_tokens,
            choices: request.choices,
            prompt_name: request.prompt.map(|(name, _)| name.to_string()),
            prompt_vars: request.prompt.map(|(_, vars)| vars.clone()),
            lease_secs: request.lease_secs as f64,
            durable_hold: request.durable_hold,
        }
    }
}

/// Admits a call. The statement runs in a task of its own, and a call that waited
/// ADMISSION_WAIT for it gets a 503; a server that is slow rather than gone still commits the
/// admission after that, and the task then gives the hold back, so the tenant pays nothing for
/// a call that was answered 503. The task keeps its lane meanwhile (at most STATEMENT_LIMIT), so
/// that a stalled server is not sent one new session per call.
pub async fn admit(state: &Arc<AppState>, request: &Request<'_>) -> Result<Admitted, ApiError> {
    let args = Args::of(request);
    let (answer, answered) = oneshot::channel();
    let task_state = state.clone();
    tokio::spawn(async move {
        let admitted = on_a_lane(&task_state.lanes, &args).await;
        if let Err(Ok(late)) = answer.send(admitted) {
            release_now(&task_state.pool, late.tenant_id, late.reservation).await;
        }
    });
    match tokio::time::timeout(ADMISSION_WAIT, answered).await {
        Ok(Ok(admitted)) => admitted.map_err(|err| refusal(request.wire, err)),
        Ok(Err(_)) => Err(ApiError::new(
            request.wire,
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "admission failed",
        )),
        Err(_) => Err(refusal(request.wire, sqlx::Error::PoolTimedOut)),
    }
}

async fn on_a_lane(lanes: &Lanes, args: &Args) -> Result<Admitted, sqlx::Error> {
    let mut fresh = false;
    loop {
        let mut lane = lanes.acquire(fresh).await?;
        let admitted = match lane.connection() {
            Some(connection) => tokio::time::timeout(STATEMENT_LIMIT, statement(connection, args))
                .await
                .unwrap_or(Err(sqlx::Error::PoolTimedOut)),
            None => Err(sqlx::Error::PoolClosed),
        };
        lane.finish(&admitted);
        match admitted {
            // The server ended the session (a restart, pg_terminate_backend): its FATAL is read
            // as the answer to the next statement, which therefore did not run, or did not
            // commit. Once more, on a new connection.
            Err(ref err) if !fresh && ended_by_server(err) => fresh = true,
            other => return other,
        }
    }
}

async fn statement(
    connection: &mut sqlx::PgConnection,
    args: &Args,
) -> Result<Admitted, sqlx::Error> {
    sqlx::query_as::<_, Admitted>(
        "select tenant_id, reservation, provider, output_cap, est_input_tokens, system_prompt, \
                secret_ref, credential_kind, provider_project_id \
         from bulkhead.gateway_admit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
                                     pg_catalog.make_interval(secs => $12), $13)",
    )
    .bind(&args.key_hash)
    .bind(args.jwt_tenant)
    .bind(args.wire)
    .bind(args.endpoint)
    .bind(&args.model)
    .bind(args.tokenized)
    .bind(args.bytes)
    .bind(args.max_output_tokens)
    .bind(args.choices)
    .bind(&args.prompt_name)
    .bind(&args.prompt_vars)
    .bind(args.lease_secs)
    .bind(args.durable_hold)
    .fetch_one(connection)
    .await
}

/// A database error as the client sees it. Messages from Bulkhead's own functions are meant
/// for clients; anything else is logged and answered without detail.
pub fn refusal(wire: Wire, err: sqlx::Error) -> ApiError {
    let db = match err {
        sqlx::Error::Database(db) => db,
        other => {
            super::log_error(&format!("database unavailable: {other}"));
            return ApiError::unavailable(
                wire,
                "the gateway cannot reach its database; no call was made",
            );
        }
    };
    let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
    let message = db.message().to_string();
    let detail = db
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .and_then(|pg| pg.detail().map(str::to_string));
    match code.as_str() {
        "PT401" => ApiError::unauthorized(wire, message),
        "PT403" => {
            let code = if message == "tenant_not_found" {
                "tenant_not_found"
            } else {
                "tenant_suspended"
            };
            ApiError::new(
                wire,
                StatusCode::FORBIDDEN,
                code,
                format!("{code}: this tenant may not make calls"),
            )
        }
        "PT429" => {
            let detail: Value = detail
                .as_deref()
                .and_then(|d| serde_json::from_str(d).ok())
                .unwrap_or(Value::Null);
            let code = if message == "tenant_rate_limit_exceeded" {
                "tenant_rate_limit_exceeded"
            } else {
                "tenant_budget_exceeded"
            };
            let retry_ms = detail["retry_after_ms"].as_u64();
            let mut error = ApiError::new(
                wire,
                StatusCode::TOO_MANY_REQUESTS,
                code,
                format!(
                    "{code}: the tenant's {} limit does not admit this call{}",
                    detail["limit"].as_str().unwrap_or("budget"),
                    match retry_ms {
                        Some(ms) => format!("; retry after {ms} ms"),
                        None => " at any time in this period".into(),
                    }
                ),
            );
            error.details = Some(serde_json::json!({
                "limit": detail["limit"],
                "retry_after_ms": detail["retry_after_ms"],
            }));
            // No Retry-After for a call that can never fit: SDKs would wait and retry.
            error.retry_after_secs = retry_ms.map(|ms| ms.div_ceil(1000).max(1));
            error
        }
        // Another session of the tenant holds its budget row (lock_timeout in gateway_admit).
        "55P03" => {
            let mut error = ApiError::new(
                wire,
                StatusCode::SERVICE_UNAVAILABLE,
                "tenant_busy",
                "another session of this tenant holds its budget; retry in a moment",
            );
            error.retry_after_secs = Some(1);
            error
        }
        "42704" | "P0002" => ApiError::new(
            wire,
            StatusCode::NOT_FOUND,
            "not_found",
            with_detail(message, detail),
        ),
        "55000" => ApiError::new(
            wire,
            StatusCode::SERVICE_UNAVAILABLE,
            "provider_not_configured",
            with_detail(message, detail),
        ),
        c if c.starts_with("22") => ApiError::bad_request(wire, with_detail(message, detail)),
        // The gateway's own session: its login refused, the server shutting down or full.
        c if ["08", "28", "53", "57"]
            .iter()
            .any(|class| c.starts_with(class)) =>
        {
            super::log_error(&format!("database unavailable ({code}): {message}"));
            ApiError::unavailable(
                wire,
                "the gateway cannot reach its database; no call was made",
            )
        }
        _ => {
            super::log_error(&format!("admission failed ({code}): {message}"));
            ApiError::new(
                wire,
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "admission failed",
            )
        }
    }
}

fn with_detail(message: String, detail: Option<String>) -> String {
    match detail {
        Some(detail) if !detail.is_empty() => format!("{message}: {detail}"),
        _ => message,
    }
}

/// Gives back the hold of a call the provider refused or that was never sent.
pub async fn release(pool: &PgPool, tenant: uuid::Uuid, reservation: uuid::Uuid) {
    // Off the request path: the client's error answer does not wait for it.
    let pool = pool.clone();
    tokio::spawn(async move { release_now(&pool, tenant, reservation).await });
}

/// Gives the hold back, trying again for a few seconds when the database refuses for a passing
/// reason (another session of the tenant holds its budget row: 55P03; a connection the server
/// dropped). Not released: the lease ends and bills it at its hold (fail closed).
async fn release_now(pool: &PgPool, tenant: uuid::Uuid, reservation: uuid::Uuid) {
    let mut last = None;
    for attempt in 0..10u32 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(100 * u64::from(attempt))).await;
        }
        match sqlx::query("select bulkhead.gateway_release($1, $2)")
            .bind(tenant)
            .bind(reservation)
            .execute(pool)
            .await
        {
            Ok(_) => return,
            // A FATAL (the server ended the session) is passing too: nothing was committed.
            Err(sqlx::Error::Database(db))
                if !matches!(db.code().as_deref(), Some("55P03" | "40001" | "40P01"))
                    && !super::lanes::fatal(db.as_ref()) =>
            {
                last = Some(db.to_string());
                break;
            }
            Err(err) => last = Some(err.to_string()),
        }
    }
    super::log_error(&format!(
        "release of reservation {reservation} failed: {}",
        last.unwrap_or_default()
    ));
}
