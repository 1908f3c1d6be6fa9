//! The three call endpoints, in each provider's own wire format: OpenAI's
//! `/v1/chat/completions` and `/v1/embeddings`, Anthropic's `/v1/messages`. Every call is
//! admitted by the database before it reaches a provider (no route skips it), sent with the
//! tenant's credential and an output cap no larger than its reservation, relayed (streams event
//! by event, as they arrive), and settled with the provider's usage.

use super::admission::{self, Admitted};
use super::errors::ApiError;
use super::{auth, log_error, AppState, ClientSystemPrompt};
use crate::providers::{self, Api, CallError, Secret};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bulkhead_policy::requests::{self, Wire};
use bulkhead_policy::streams::StreamUsage;
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The largest answer read from a provider when not streaming.
const MAX_ANSWER_BYTES: usize = 32 << 20;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Embeddings,
    Messages,
}

impl Endpoint {
    fn wire(self) -> Wire {
        match self {
            Endpoint::Messages => Wire::Anthropic,
            _ => Wire::OpenAi,
        }
    }
}

impl Endpoint {
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Messages => "messages",
        }
    }
}

pub async fn serve(
    state: Arc<AppState>,
    endpoint: Endpoint,
    caller: auth::Caller,
    headers: HeaderMap,
    body: Bytes,
    room: tokio::sync::OwnedSemaphorePermit,
) -> Response {
    // In a task of its own: hyper drops a handler whose client closed the connection, and a
    // call dropped after it was sent would be charged at its hold when its lease ends. A call
    // whose client left before it was sent is not made (`left`); one sent runs to its end and
    // settles at what was served (a stream's relay has its own task, which charges what was
    // streamed). The task keeps the body's room in memory, and shutdown waits for it.
    let left = CancellationToken::new();
    let _leaving = left.clone().drop_guard();
    let wire = endpoint.wire();
    let in_flight = InFlight::enter(&state);
    let task_state = state.clone();
    let handled = tokio::spawn(async move {
        let (_in_flight, _room) = (in_flight, room);
        let state = task_state;
        match call(&state, endpoint, caller, &headers, body, &left).await {
            Ok(response) => {
                state.metrics.request(endpoint.name(), "ok");
                response
            }
            Err(error) => {
                state.metrics.request(endpoint.name(), error.code);
                error.into_response()
            }
        }
    });
    handled.await.unwrap_or_else(|_| {
        state.metrics.request(endpoint.name(), "internal_error");
        ApiError::new(
            wire,
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the call failed",
        )
        .into_response()
    })
}

/// A call being handled, counted so that shutdown can wait for it.
struct InFlight(Arc<AppState>);

impl InFlight {
    fn enter(state: &Arc<AppState>) -> InFlight {
        state.calls_in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.calls_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A request body read and counted: what admission needs from it.
struct Counted {
    request: Map<String, Value>,
    model: String,
    stream: bool,
    bounds: requests::Bounds,
    max_output: Option<i32>,
    choices: i32,
    hidden_output: bool,
}

/// Parses and bounds a body (CPU: up to a MiB tokenized; run off the async workers).
fn count(endpoint: Endpoint, body: &[u8]) -> Result<Counted, ApiError> {
    let wire = endpoint.wire();
    let request: Map<String, Value> = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            return Err(ApiError::bad_request(
                wire,
                "the request body must be a JSON object",
            ))
        }
        Err(err) => {
            return Err(ApiError::bad_request(
                wire,
                format!("the request body is not valid JSON: {err}"),
            ))
        }
    };
    let model = match request.get("model") {
        Some(Value::String(m)) if !m.is_empty() && m.len() <= 200 => m.clone(),
        _ => return Err(ApiError::bad_request(wire, "model is required (a string)")),
    };
    let as_value = Value::Object(request.clone());
    let stream = match request.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b && endpoint != Endpoint::Embeddings,
        Some(_) => return Err(ApiError::bad_request(wire, "stream must be a boolean")),
    };
    let (mut bounds, max_output, choices) = match endpoint {
        Endpoint::Embeddings => {
            let (bounds, _) = requests::openai_embeddings(&as_value, &model)
                .map_err(|e| ApiError::bad_request(wire, e.to_string()))?;
            (bounds, None, 1)
        }
        Endpoint::ChatCompletions => {
            let input = requests::openai_chat(&as_value)
                .map_err(|e| ApiError::bad_request(wire, e.to_string()))?;
            let max = match (
                positive(&request, "max_completion_tokens", wire)?,
                positive(&request, "max_tokens", wire)?,
            ) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let n = positive(&request, "n", wire)?.unwrap_or(1);
            (input.bounds(Wire::OpenAi, &model), max, n)
        }
        Endpoint::Messages => {
            let input = requests::anthropic_messages(&as_value)
                .map_err(|e| ApiError::bad_request(wire, e.to_string()))?;
            (
                input.bounds(Wire::Anthropic, &model),
                positive(&request, "max_tokens", wire)?,
                1,
            )
        }
    };
    // A byte-level BPE bills no more tokens than the provider reads bytes, and the body holds
    // every byte it reads, whatever field carries them (fields the counting above does not know
    // included): the byte bound never goes below the body's length.
    if endpoint != Endpoint::Embeddings {
        bounds.bytes = bounds.bytes.max(body.len() as u64);
    }
    let hidden_output = endpoint != Endpoint::Embeddings
        && requests::may_bill_hidden_output(wire, &model, &as_value);
    Ok(Counted {
        request,
        model,
        stream,
        bounds,
        max_output,
        choices,
        hidden_output,
    })
}

/// Bodies up to this size are counted on the request's own thread; larger ones (up to the body
/// limit, with images and long histories) in the blocking pool, so that they never stall the
/// threads that relay streams.
const INLINE_COUNT_BYTES: usize = 16 * 1024;

async fn call(
    state: &Arc<AppState>,
    endpoint: Endpoint,
    caller: auth::Caller,
    headers: &HeaderMap,
    body: Bytes,
    left: &CancellationToken,
) -> Result<Response, ApiError> {
    let wire = endpoint.wire();
    let Counted {
        mut request,
        model,
        stream,
        bounds,
        max_output,
        choices,
        hidden_output,
    } = if body.len() <= INLINE_COUNT_BYTES {
        // A small body is parsed and counted in microseconds: on this thread, without the hop
        // to the blocking pool (a thread wake-up each way).
        count(endpoint, &body)?
    } else {
        tokio::task::spawn_blocking(move || count(endpoint, &body))
            .await
            .map_err(|_| {
                ApiError::new(
                    wire,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "counting failed",
                )
            })??
    };

    let prompt = tenant_prompt(headers, &mut request, wire)?;
    if prompt.is_some()
        && state.client_system == ClientSystemPrompt::Refuse
        && has_client_system(&request, endpoint)
    {
        return Err(ApiError::bad_request(
            wire,
            "this gateway sets the system prompt from the tenant's prompt template; send no system message with x-bulkhead-prompt",
        ));
    }
    if state.shutdown.is_cancelled() {
        return Err(ApiError::unavailable(wire, "the gateway is shutting down"));
    }
    if left.is_cancelled() {
        return Err(client_left(wire));
    }
    let admitting = std::time::Instant::now();
    let admitted = admission::admit(
        state,
        &admission::Request {
            caller: &caller,
            wire,
            embeddings: endpoint == Endpoint::Embeddings,
            model: &model,
            bounds,
            max_output_tokens: max_output,
            choices,
            prompt: prompt.as_ref().map(|(name, vars)| (name.as_str(), vars)),
            lease_secs: state.lease_secs,
            durable_hold: state.durable_holds,
        },
    )
    .await?;
    state.metrics.admitted_in(admitting.elapsed());
    let call = Admission {
        admitted,
        model,
        wire,
        choices,
        hidden_output,
    };

    let key = match state.credential(&call.admitted.secret_ref).await {
        Ok(key) => key,
        Err(err) => {
            log_error(&format!(
                "credential {} unavailable: {err}",
                call.admitted.secret_ref
            ));
            state.release(&call).await;
            return Err(call.error(ApiError::unavailable(
                wire,
                "the provider credential is unavailable; no call was made",
            )));
        }
    };

    let client_wants_usage = request
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    shape_upstream(&mut request, &call, endpoint, stream);
    let api = match endpoint {
        Endpoint::ChatCompletions => Api::ChatCompletions,
        Endpoint::Embeddings => Api::Embeddings,
        Endpoint::Messages => Api::Messages,
    };
    if left.is_cancelled() {
        state.release(&call).await;
        return Err(call.error(client_left(wire)));
    }
    let sending = std::time::Instant::now();
    let sent = match state.providers.post(
        &call.admitted.provider,
        api,
        &key,
        call.admitted.provider_project_id.as_deref(),
    ) {
        Ok(builder) => builder.json(&request).send().await,
        Err(
            CallError::Permanent { message, .. }
            | CallError::Transient { message, .. }
            | CallError::RateLimited { message, .. },
        ) => {
            state.release(&call).await;
            log_error(&message);
            return Err(call.error(ApiError::unavailable(
                wire,
                "the gateway cannot reach this model's provider",
            )));
        }
    };
    let response = match sent {
        Ok(response) => {
            state
                .metrics
                .upstream_in(&call.admitted.provider, sending.elapsed());
            response
        }
        Err(err) => {
            if err.is_connect() {
                // Never reached the provider: nothing to pay.
                state.release(&call).await;
            } else {
                // Sent, answer unknown: the provider may have served it (fail closed).
                state.settle_at_hold(&call).await;
            }
            log_error(&crate::secrets::redact(&format!(
                "provider call failed: {err}"
            )));
            return Err(call.error(ApiError::new(
                wire,
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "the provider could not be reached",
            )));
        }
    };
    if !response.status().is_success() {
        state.release(&call).await;
        return Err(call.error(upstream_error(wire, &call.admitted, response, &key).await));
    }
    if stream {
        Ok(relay_stream(
            state.clone(),
            call,
            response,
            client_wants_usage,
        ))
    } else {
        answer(state, call, response).await
    }
}

/// What admission decided for one call, with what the relay needs to settle it.
pub struct Admission {
    pub admitted: Admitted,
    pub model: String,
    pub wire: Wire,
    pub choices: i32,
    /// The provider may bill output it never streams (reasoning, thinking).
    pub hidden_output: bool,
}

impl Admission {
    fn error(&self, mut error: ApiError) -> ApiError {
        error.request_id = Some(self.admitted.reservation.to_string());
        error
    }

    /// The usage of a call charged at everything its reservation holds.
    pub fn usage_at_hold(&self) -> Value {
        let input = self.admitted.est_input_tokens.max(0);
        let output = i64::from(self.admitted.output_cap.max(0)) * i64::from(self.choices.max(1));
        match self.wire {
            Wire::Anthropic => json!({"input_tokens": input, "output_tokens": output}),
            Wire::OpenAi => json!({"prompt_tokens": input, "completion_tokens": output}),
        }
    }
}

fn positive(
    request: &Map<String, Value>,
    field: &str,
    wire: Wire,
) -> Result<Option<i32>, ApiError> {
    match request.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=i32::MAX as u64).contains(n))
            .map(|n| Some(n as i32))
            .ok_or_else(|| {
                ApiError::bad_request(wire, format!("{field} must be a positive integer"))
            }),
    }
}

/// The tenant prompt a request names: `x-bulkhead-prompt` (+ `x-bulkhead-vars`, a JSON object),
/// or `metadata.bulkhead_prompt` (+ `metadata.bulkhead_vars`, a JSON object or a string holding
/// one). The metadata keys are removed before the request goes upstream.
fn tenant_prompt(
    headers: &HeaderMap,
    request: &mut Map<String, Value>,
    wire: Wire,
) -> Result<Option<(String, Value)>, ApiError> {
    let bad = |m: &str| ApiError::bad_request(wire, m.to_string());
    let parse_vars = |v: Option<Value>| -> Result<Value, ApiError> {
        match v {
            None | Some(Value::Null) => Ok(json!({})),
            Some(Value::Object(o)) => Ok(Value::Object(o)),
            Some(Value::String(s)) => match serde_json::from_str::<Value>(&s) {
                Ok(Value::Object(o)) => Ok(Value::Object(o)),
                _ => Err(bad("bulkhead prompt vars must be a JSON object")),
            },
            Some(_) => Err(bad("bulkhead prompt vars must be a JSON object")),
        }
    };
    let mut from_metadata = None;
    if let Some(Value::Object(metadata)) = request.get_mut("metadata") {
        let name = metadata.remove("bulkhead_prompt");
        let vars = metadata.remove("bulkhead_vars");
        if let Some(name) = name {
            let name = name
                .as_str()
                .ok_or_else(|| bad("metadata.bulkhead_prompt must be a string"))?
                .to_string();
            from_metadata = Some((name, parse_vars(vars)?));
        } else if vars.is_some() {
            return Err(bad("metadata.bulkhead_vars needs metadata.bulkhead_prompt"));
        }
        if metadata.is_empty() {
            request.remove("metadata");
        }
    }
    let header = |name: &str| -> Result<Option<String>, ApiError> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map(str::to_string)
                    .map_err(|_| bad("bulkhead headers must be ASCII"))
            })
            .transpose()
    };
    let from_headers = match header("x-bulkhead-prompt")? {
        Some(name) => Some((
            name,
            parse_vars(header("x-bulkhead-vars")?.map(Value::String))?,
        )),
        None if headers.contains_key("x-bulkhead-vars") => {
            return Err(bad("x-bulkhead-vars needs x-bulkhead-prompt"))
        }
        None => None,
    };
    match (from_headers, from_metadata) {
        (Some(_), Some(_)) => Err(bad(
            "name the tenant prompt once: x-bulkhead-prompt or metadata.bulkhead_prompt",
        )),
        (Some(p), None) | (None, Some(p)) => {
            if p.0.is_empty() || p.0.len() > 200 {
                return Err(bad("the prompt name must be 1 to 200 characters"));
            }
            Ok(Some(p))
        }
        (None, None) => Ok(None),
    }
}

fn has_client_system(request: &Map<String, Value>, endpoint: Endpoint) -> bool {
    match endpoint {
        Endpoint::Messages => request.get("system").is_some_and(|s| !s.is_null()),
        _ => request
            .get("messages")
            .and_then(Value::as_array)
            .is_some_and(|m| {
                m.iter()
                    .any(|m| matches!(m["role"].as_str(), Some("system" | "developer")))
            }),
    }
}

/// The request as the provider gets it (providers::shape_chat_body; embeddings as sent).
fn shape_upstream(
    request: &mut Map<String, Value>,
    call: &Admission,
    endpoint: Endpoint,
    stream: bool,
) {
    if endpoint == Endpoint::Embeddings {
        return;
    }
    let a = &call.admitted;
    providers::shape_chat_body(
        request,
        endpoint.wire(),
        &a.provider,
        i64::from(a.output_cap),
        stream,
        a.system_prompt.as_deref(),
    );
}

/// A provider's error answer, for the client: the status (a 401/403 of the provider is the
/// platform's problem, not the caller's: 502), and the provider's message redacted against the
/// call's key, for a tenant's own credential only (issue 13: shared-pool calls give the status).
async fn upstream_error(
    wire: Wire,
    a: &Admitted,
    response: reqwest::Response,
    key: &Secret,
) -> ApiError {
    let status = response.status().as_u16();
    let body = providers::read_capped(response, 4096)
        .await
        .unwrap_or_default();
    // The provider's own message (error.message, else message), else the body as text.
    let provider_message = if body.is_empty() {
        String::new()
    } else {
        providers::error_text(&body)
    };
    let message = if a.credential_kind == "shared_pool" || provider_message.is_empty() {
        format!("{} returned HTTP {status}", a.provider)
    } else {
        format!(
            "{} returned HTTP {status}: {}",
            a.provider,
            crate::secrets::redact_for_tenant_and_cut(&provider_message, Some(key.expose()), 500)
        )
    };
    let (status, code) = match status {
        400 | 404 | 409 | 413 | 422 => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            "upstream_invalid_request",
        ),
        429 => (StatusCode::TOO_MANY_REQUESTS, "upstream_rate_limited"),
        _ => (StatusCode::BAD_GATEWAY, "upstream_error"),
    };
    ApiError::new(wire, status, code, message)
}

/// A plain answer: passed to the client as the provider sent it, settled with its usage.
async fn answer(
    state: &Arc<AppState>,
    call: Admission,
    response: reqwest::Response,
) -> Result<Response, ApiError> {
    let header_id = response
        .headers()
        .get("x-request-id")
        .or_else(|| response.headers().get("request-id"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match providers::read_capped(response, MAX_ANSWER_BYTES).await {
        Ok(body) => body,
        Err(err) => {
            state.settle_at_hold(&call).await;
            log_error(&crate::secrets::redact(&format!(
                "reading an answer failed: {err}"
            )));
            return Err(call.error(ApiError::new(
                call.wire,
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "the provider's answer was cut off",
            )));
        }
    };
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    match parsed.as_ref().map(|v| (&v["usage"], v["id"].as_str())) {
        Some((usage, id)) if usage.is_object() => {
            let request_id = id
                .map(str::to_string)
                .or(header_id)
                .unwrap_or_else(|| format!("bulkhead-{}", call.admitted.reservation));
            state.settle(&call, usage.clone(), request_id).await;
        }
        // Served, but unreadable: charged at its hold.
        _ => state.settle_at_hold(&call).await,
    }
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    insert_request_id(response.headers_mut(), &call);
    Ok(response)
}

fn insert_request_id(headers: &mut HeaderMap, call: &Admission) {
    if let Ok(id) = HeaderValue::from_str(&call.admitted.reservation.to_string()) {
        headers.insert("x-bulkhead-request-id", id);
    }
}

/// How a relayed stream ended.
enum Ended {
    /// The provider finished (usage reported, or not).
    Provider,
    /// The provider's stream broke off.
    Broken,
    /// The client went away.
    ClientLeft,
    /// Cut by the gateway: the tenant was suspended, or the gateway is shutting down.
    Cut(&'static str),
}

/// The answer to a call whose client left before it was sent (nobody reads it; the metrics
/// count it).
fn client_left(wire: Wire) -> ApiError {
    ApiError::new(
        wire,
        StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        "client_closed_request",
        "the client left before the call was made",
    )
}

/// Relays a stream event by event as it arrives, tracking usage; settles when it ends.
fn relay_stream(
    state: Arc<AppState>,
    call: Admission,
    upstream: reqwest::Response,
    client_wants_usage: bool,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let cut = state
        .streams
        .register(call.admitted.tenant_id, call.admitted.reservation);
    let request_id = call.admitted.reservation.to_string();
    tokio::spawn(async move {
        let mut usage = StreamUsage::new(call.wire);
        let mut pending: Vec<u8> = Vec::new();
        let mut body = upstream.bytes_stream();
        let ended = loop {
            tokio::select! {
                biased;
                reason = cut.cancelled() => break Ended::Cut(reason),
                _ = tx.closed() => break Ended::ClientLeft,
                chunk = body.next() => match chunk {
                    Some(Ok(bytes)) => {
                        pending.extend_from_slice(&bytes);
                        let out = take_events(&mut pending, &mut usage, call.wire, client_wants_usage);
                        if !out.is_empty() && tx.send(Ok(Bytes::from(out))).await.is_err() {
                            break Ended::ClientLeft;
                        }
                    }
                    Some(Err(_)) => break Ended::Broken,
                    None => break Ended::Provider,
                },
            }
        };
        drop(body); // cancels the upstream call when it is still running
        match ended {
            Ended::ClientLeft => state.metrics.stream_cut("client_left"),
            Ended::Broken => state.metrics.stream_cut("provider_broke"),
            Ended::Cut(reason) if reason.contains("shutting down") => {
                state.metrics.stream_cut("shutdown")
            }
            Ended::Cut(_) => state.metrics.stream_cut("suspended"),
            Ended::Provider => {}
        }
        if let Ended::Cut(reason) = ended {
            let _ = tx.send(Ok(Bytes::from(cut_event(call.wire, reason)))).await;
        }
        let a = &call.admitted;
        match (&ended, usage.usage.take()) {
            (_, Some(reported)) => {
                let id = usage
                    .id
                    .clone()
                    .unwrap_or_else(|| format!("bulkhead-{}", a.reservation));
                state.settle(&call, reported, id).await;
            }
            // Cut by us or the client, of a call that may think or reason unseen: what was
            // streamed says nothing of what was billed, so it is charged at its hold.
            (Ended::ClientLeft | Ended::Cut(_), None) if call.hidden_output => {
                state.settle_at_hold(&call).await
            }
            // Cut by us or the client: what was streamed.
            (Ended::ClientLeft | Ended::Cut(_), None) => {
                let streamed = usage.streamed_usage(
                    &a.provider,
                    &call.model,
                    a.est_input_tokens.max(0) as u64,
                );
                let id = usage
                    .id
                    .clone()
                    .unwrap_or_else(|| format!("bulkhead-{}", a.reservation));
                state.settle(&call, streamed, id).await;
            }
            // The provider ended or broke without usage: charged at the hold (fail closed).
            (Ended::Provider | Ended::Broken, None) => state.settle_at_hold(&call).await,
        }
        state.streams.unregister(a.reservation);
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        headers.insert("x-bulkhead-request-id", id);
    }
    response
}

/// Takes the complete events out of `pending`: each is observed for usage and passed on as it
/// came, except OpenAI's usage-only chunk when the client did not ask for it.
fn take_events(
    pending: &mut Vec<u8>,
    usage: &mut StreamUsage,
    wire: Wire,
    client_wants_usage: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some((end, sep)) = find_event_end(pending) else {
            break;
        };
        let event: Vec<u8> = pending.drain(..end + sep).collect();
        let text = String::from_utf8_lossy(&event[..end]);
        let mut keep = true;
        for line in text.lines() {
            let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            if let Ok(json) = serde_json::from_str::<Value>(data) {
                usage.observe(&json);
                if wire == Wire::OpenAi
                    && !client_wants_usage
                    && StreamUsage::is_usage_only_chunk(&json)
                {
                    keep = false;
                }
            }
        }
        if keep {
            out.extend_from_slice(&event);
        }
    }
    out
}

fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The last event of a stream the gateway cut, in the wire's error shape (the SDKs raise it).
fn cut_event(wire: Wire, reason: &str) -> String {
    match wire {
        Wire::OpenAi => format!(
            "data: {}\n\n",
            json!({"error": {"message": reason, "type": "stream_cut", "code": "stream_cut", "param": null}})
        ),
        Wire::Anthropic => format!(
            "event: error\ndata: {}\n\n",
            json!({"type": "error", "error": {"type": "permission_error", "message": reason}})
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_only_chunks_are_dropped_unless_asked_for() {
        let stream = "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
                      data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n\
                      data: [DONE]\n\npartial";
        let mut pending = stream.as_bytes().to_vec();
        let mut usage = StreamUsage::new(Wire::OpenAi);
        let out =
            String::from_utf8(take_events(&mut pending, &mut usage, Wire::OpenAi, false)).unwrap();
        assert!(out.contains("\"hi\"") && out.contains("[DONE]"));
        assert!(
            !out.contains("usage"),
            "the client did not ask for usage: {out}"
        );
        assert_eq!(
            usage.usage.unwrap()["completion_tokens"],
            1,
            "but it is settled with it"
        );
        assert_eq!(
            pending, b"partial",
            "an incomplete event waits for the rest"
        );
        let mut pending = stream.as_bytes().to_vec();
        let mut usage = StreamUsage::new(Wire::OpenAi);
        let out =
            String::from_utf8(take_events(&mut pending, &mut usage, Wire::OpenAi, true)).unwrap();
        assert!(out.contains("usage"));
    }
}
