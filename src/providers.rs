//! Provider calls for completion jobs: OpenAI chat completions, Anthropic messages, and any
//! OpenAI-compatible server (vLLM, Ollama, llama.cpp). Each answer comes back with the provider's
//! own usage object, which `bulkhead.ledger_record` prices by that provider's counting rules.
//!
//! Failures are classified for the queue: a 429 waits as long as the provider asked without
//! using up an attempt; 5xx, timeouts, dropped connections and unreadable answers back off; any
//! other 4xx is final. Error texts never carry the key: provider bodies are redacted and cut.

use bulkhead_policy::requests::Wire;
use serde_json::{json, Map, Value};
use std::time::Duration;

pub use crate::secrets::Secret;
use crate::secrets::{redact_for_tenant, redact_for_tenant_and_cut};

/// Where each provider is reached (the SDKs' own environment variables, see `bulkhead worker --help`).
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// OpenAI's base URL, up to and including /v1.
    pub openai: String,
    /// Anthropic's base URL, without /v1 (as the Anthropic SDKs take it).
    pub anthropic: String,
    /// An OpenAI-compatible server's base URL, up to and including /v1.
    pub openai_compatible: Option<String>,
}

/// One completion to make.
pub struct Request<'a> {
    pub provider: &'a str,
    pub model: &'a str,
    /// The rendered template: the one user message, or with `body` its system prompt.
    pub prompt: Option<&'a str>,
    /// A full chat request in the provider's format (complete()'s `request`), sent as the
    /// gateway sends it (`shape_chat_body`).
    pub body: Option<&'a Value>,
    pub max_output_tokens: u32,
    pub stream: bool,
    /// What admission estimated for the prompt: the input count of a stream cut before usage.
    pub est_input_tokens: u64,
    pub key: &'a Secret,
    pub project: Option<&'a str>,
}

/// A provider's answer: what the ledger settles.
#[derive(Debug)]
pub struct Completion {
    pub request_id: String,
    pub output: String,
    /// The provider's usage object, as it sent it (or, for a stream cut short, as counted).
    pub usage: Value,
    /// For a call made from a full request: the answer's message (OpenAI's choices[0].message,
    /// with its tool calls; Anthropic's content blocks). Null otherwise, and for streams.
    pub message: Value,
    /// Set when a stream ended before the provider reported usage, or the answer could not be
    /// read: the call is settled for what was streamed (or at the reservation's estimate) and
    /// the job fails with this reason, without calling again.
    pub cut_short: Option<String>,
    /// The answer was unreadable (for the metrics).
    pub malformed: bool,
}

/// Why a call failed, for the queue's retry decision and the metrics.
#[derive(Debug)]
pub enum CallError {
    /// 429: try again after the provider's retry-after, without using up an attempt.
    RateLimited {
        retry_after: Duration,
        message: String,
    },
    /// 5xx, timeouts, connection errors, unreadable answers: back off and try again.
    Transient {
        class: &'static str,
        message: String,
    },
    /// Any other 4xx, or a provider this worker cannot reach: retrying cannot help.
    Permanent {
        class: &'static str,
        message: String,
    },
}

impl CallError {
    pub fn class(&self) -> &'static str {
        match self {
            CallError::RateLimited { .. } => "rate_limited",
            CallError::Transient { class, .. } | CallError::Permanent { class, .. } => class,
        }
    }
}

/// The largest answer read from a provider; a longer one is refused as malformed. Embeddings
/// of 256 chunks at 3,072 dimensions take about 16 MiB as JSON.
const MAX_BODY_BYTES: usize = 32 << 20;
/// A 429 without a usable retry-after waits this long.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(2);
/// How much of a provider's error text a job's error keeps (after redaction).
const ERROR_TEXT_CHARS: usize = 500;

pub struct Providers {
    http: reqwest::Client,
    endpoints: Endpoints,
}

/// A provider API the worker and the gateway call.
#[derive(Debug, Clone, Copy)]
pub enum Api {
    ChatCompletions,
    Embeddings,
    Messages,
}

impl Providers {
    pub fn new(endpoints: Endpoints, timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("bulkhead/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Providers { http, endpoints })
    }

    /// For relaying streams: no limit on a whole answer, only on each wait for more of it.
    pub fn streaming(endpoints: Endpoints, idle_timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .read_timeout(idle_timeout)
            .connect_timeout(idle_timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(256)
            .user_agent(concat!("bulkhead/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Providers { http, endpoints })
    }

    /// A POST to a provider's API with the call's key (and OpenAI project), nothing else of
    /// the client's request: no header a caller sent reaches a provider.
    pub fn post(
        &self,
        provider: &str,
        api: Api,
        key: &Secret,
        project: Option<&str>,
    ) -> Result<reqwest::RequestBuilder, CallError> {
        let not_here = |what: String| CallError::Permanent {
            class: "client",
            message: what,
        };
        let builder = match (provider, api) {
            ("openai" | "openai_compatible", Api::ChatCompletions | Api::Embeddings) => {
                let base = if provider == "openai" {
                    &self.endpoints.openai
                } else {
                    self.endpoints.openai_compatible.as_ref().ok_or_else(|| {
                        not_here("no OpenAI-compatible base URL is configured (OPENAI_COMPATIBLE_BASE_URL)".into())
                    })?
                };
                let path = match api {
                    Api::Embeddings => "embeddings",
                    _ => "chat/completions",
                };
                let mut builder = self
                    .http
                    .post(format!("{}/{path}", base.trim_end_matches('/')))
                    .bearer_auth(key.expose());
                if let (Some(project), "openai") = (project, provider) {
                    builder = builder.header("OpenAI-Project", project);
                }
                builder
            }
            ("anthropic", Api::Messages) => self
                .http
                .post(format!(
                    "{}/v1/messages",
                    self.endpoints.anthropic.trim_end_matches('/')
                ))
                .header("x-api-key", key.expose())
                .header("anthropic-version", "2023-06-01"),
            (other, api) => {
                return Err(not_here(format!(
                    "provider {other:?} has no {api:?} API here"
                )))
            }
        };
        Ok(builder)
    }

    pub async fn complete(&self, request: &Request<'_>) -> Result<Completion, CallError> {
        let key = request.key.expose();
        let (api, body) = match (request.body, request.provider) {
            (Some(client), provider) => {
                let (wire, api) = if provider == "anthropic" {
                    (Wire::Anthropic, Api::Messages)
                } else {
                    (Wire::OpenAi, Api::ChatCompletions)
                };
                let mut body = client.as_object().cloned().unwrap_or_default();
                body.insert("model".into(), json!(request.model));
                body.insert("stream".into(), json!(request.stream));
                shape_chat_body(
                    &mut body,
                    wire,
                    provider,
                    i64::from(request.max_output_tokens),
                    request.stream,
                    request.prompt,
                );
                (api, Value::Object(body))
            }
            (None, "openai" | "openai_compatible") => {
                let mut body = json!({
                    "model": request.model,
                    "messages": [{"role": "user", "content": request.prompt.unwrap_or_default()}],
                });
                body[output_cap_field(request.provider)] = json!(request.max_output_tokens);
                if request.stream {
                    body["stream"] = json!(true);
                    body["stream_options"] = json!({"include_usage": true});
                }
                (Api::ChatCompletions, body)
            }
            (None, _) => {
                let mut body = json!({
                    "model": request.model,
                    "max_tokens": request.max_output_tokens,
                    "messages": [{"role": "user", "content": request.prompt.unwrap_or_default()}],
                });
                if request.stream {
                    body["stream"] = json!(true);
                }
                (Api::Messages, body)
            }
        };
        let builder = self
            .post(request.provider, api, request.key, request.project)?
            .json(&body);

        let response = builder
            .send()
            .await
            .map_err(|err| transport_error(&err, Some(key)))?;
        let status = response.status();
        let header_request_id = ["x-request-id", "request-id"]
            .iter()
            .find_map(|name| response.headers().get(*name))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if !status.is_success() {
            return Err(error_response(request.provider, response, Some(key)).await);
        }

        // From here on the provider accepted the call and bills it: an answer that cannot be
        // read is charged at the reservation's estimate, never made again for free.
        let read = if request.stream {
            let stream = Stream::read(response, request.provider).await?;
            stream.into_completion(request, header_request_id.clone())
        } else {
            read_answer(request, response, header_request_id.clone()).await
        };
        Ok(read.unwrap_or_else(|why| Completion {
            request_id: header_request_id
                .unwrap_or_else(|| format!("unreadable-{}", uuid::Uuid::new_v4().simple())),
            output: String::new(),
            message: Value::Null,
            usage: if request.provider == "anthropic" {
                json!({"input_tokens": request.est_input_tokens, "output_tokens": request.max_output_tokens})
            } else {
                json!({"prompt_tokens": request.est_input_tokens, "completion_tokens": request.max_output_tokens})
            },
            cut_short: Some(format!(
                "{} sent an answer that could not be read ({why}); charged at the reservation's estimate",
                request.provider
            )),
            malformed: true,
        }))
    }
}

/// A chat request as a provider gets it from Bulkhead (the gateway's and complete()'s): the
/// output cap of the reservation (in the field the provider reads, the client's own removed),
/// usage reported on streams, and the tenant prompt as the system prompt, before the client's
/// own if any.
pub fn shape_chat_body(
    body: &mut Map<String, Value>,
    wire: Wire,
    provider: &str,
    output_cap: i64,
    stream: bool,
    system_prompt: Option<&str>,
) {
    match wire {
        Wire::OpenAi => {
            body.remove("max_tokens");
            body.remove("max_completion_tokens");
            body.insert(output_cap_field(provider).into(), json!(output_cap));
            if stream {
                let options = body.entry("stream_options").or_insert_with(|| json!({}));
                if !options.is_object() {
                    *options = json!({});
                }
                options["include_usage"] = json!(true);
            }
            if let (Some(prompt), Some(Value::Array(messages))) =
                (system_prompt, body.get_mut("messages"))
            {
                messages.insert(0, json!({"role": "system", "content": prompt}));
            }
        }
        Wire::Anthropic => {
            body.insert("max_tokens".into(), json!(output_cap));
            if let Some(prompt) = system_prompt {
                let system = match body.remove("system") {
                    None | Some(Value::Null) => json!(prompt),
                    Some(Value::String(client)) => json!(format!("{prompt}\n\n{client}")),
                    Some(Value::Array(mut blocks)) => {
                        blocks.insert(0, json!({"type": "text", "text": prompt}));
                        Value::Array(blocks)
                    }
                    Some(other) => other,
                };
                body.insert("system".into(), system);
            }
        }
    }
}

/// The field that caps a chat call's output: OpenAI's own API wants max_completion_tokens
/// (reasoning models refuse max_tokens); compatible servers know max_tokens.
pub fn output_cap_field(provider: &str) -> &'static str {
    if provider == "openai" {
        "max_completion_tokens"
    } else {
        "max_tokens"
    }
}

/// A plain (not streamed) answer: the output, the usage object and the request id.
async fn read_answer(
    request: &Request<'_>,
    response: reqwest::Response,
    header_request_id: Option<String>,
) -> Result<Completion, String> {
    {
        let body = read_capped(response, MAX_BODY_BYTES)
            .await
            .map_err(|err| redact_for_tenant(&err.to_string(), None))?;
        let answer: Value = serde_json::from_slice(&body).map_err(|err| err.to_string())?;
        let (output, usage) = if request.provider == "anthropic" {
            let output = answer["content"]
                .as_array()
                .map(|blocks| {
                    blocks
                        .iter()
                        .filter(|b| b["type"] == "text")
                        .filter_map(|b| b["text"].as_str())
                        .collect::<String>()
                })
                .ok_or("no content array")?;
            (output, answer["usage"].clone())
        } else {
            let message = &answer["choices"][0]["message"];
            if !message.is_object() {
                return Err("no choices[0].message".into());
            }
            let output = message["content"].as_str().unwrap_or_default().to_string();
            (output, answer["usage"].clone())
        };
        let message = match (request.body, request.provider) {
            (None, _) => Value::Null,
            (Some(_), "anthropic") => answer["content"].clone(),
            (Some(_), _) => answer["choices"][0]["message"].clone(),
        };
        if !usage.is_object() {
            return Err("no usage object".into());
        }
        let request_id = answer["id"]
            .as_str()
            .filter(|id| !id.is_empty())
            .map(str::to_string)
            .or(header_request_id)
            .ok_or("no id")?;
        Ok(Completion {
            request_id,
            output,
            usage,
            message,
            cut_short: None,
            malformed: false,
        })
    }
}

/// One embeddings call (OpenAI or an OpenAI-compatible server).
pub struct EmbeddingRequest<'a> {
    pub provider: &'a str,
    pub model: &'a str,
    pub inputs: Vec<&'a str>,
    /// The tenant's dimension: asked for where the model can shorten (OpenAI's
    /// text-embedding-3), and checked on every vector returned.
    pub dims: usize,
    pub key: &'a Secret,
    pub project: Option<&'a str>,
    /// The request id to record when the provider sends none (embeddings answers have no id).
    pub fallback_request_id: String,
}

#[derive(Debug)]
pub struct Embeddings {
    pub request_id: String,
    /// One array of numbers per input, in input order (null when unusable).
    pub vectors: Value,
    pub usage: Value,
    /// Set when the answer could not be used: the call is charged at the estimate and the job
    /// fails with this reason.
    pub unusable: Option<String>,
}

impl Providers {
    pub async fn embed(&self, request: &EmbeddingRequest<'_>) -> Result<Embeddings, CallError> {
        let key = request.key.expose();
        if !matches!(request.provider, "openai" | "openai_compatible") {
            return Err(CallError::Permanent {
                class: "client",
                message: format!(
                    "provider {:?} has no embeddings endpoint here",
                    request.provider
                ),
            });
        }
        let mut body =
            json!({"model": request.model, "input": request.inputs, "encoding_format": "float"});
        if request.provider == "openai" && request.model.starts_with("text-embedding-3") {
            body["dimensions"] = json!(request.dims);
        }
        let builder = self
            .post(
                request.provider,
                Api::Embeddings,
                request.key,
                request.project,
            )?
            .json(&body);
        let response = builder
            .send()
            .await
            .map_err(|err| transport_error(&err, Some(key)))?;
        if !response.status().is_success() {
            return Err(error_response(request.provider, response, Some(key)).await);
        }
        let request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| request.fallback_request_id.clone());
        // The provider accepted the call and bills it: an answer that cannot be used is charged
        // at the reservation's estimate (see `_finish_embedding`), never made again for free.
        Ok(match read_embeddings(request, response).await {
            Ok((vectors, usage)) => Embeddings {
                request_id,
                vectors,
                usage,
                unusable: None,
            },
            Err(why) => Embeddings {
                request_id,
                vectors: Value::Null,
                usage: Value::Null,
                unusable: Some(format!(
                    "{} sent an embeddings answer that could not be used ({why}); charged at the reservation's estimate",
                    request.provider
                )),
            },
        })
    }
}

/// The vectors, in input order, and the usage object of an embeddings answer.
async fn read_embeddings(
    request: &EmbeddingRequest<'_>,
    response: reqwest::Response,
) -> Result<(Value, Value), String> {
    {
        let body = read_capped(response, MAX_BODY_BYTES)
            .await
            .map_err(|err| redact_for_tenant(&err.to_string(), None))?;
        let answer: Value = serde_json::from_slice(&body).map_err(|_| "not JSON".to_string())?;
        let mut data: Vec<&Value> = answer["data"]
            .as_array()
            .ok_or("no data array")?
            .iter()
            .collect();
        data.sort_by_key(|d| d["index"].as_u64().unwrap_or(u64::MAX));
        if data.len() != request.inputs.len() {
            return Err("not one embedding per input".into());
        }
        let mut vectors = Vec::with_capacity(data.len());
        for item in data {
            let vector = item["embedding"]
                .as_array()
                .ok_or("an embedding is not an array")?;
            if vector.len() != request.dims || !vector.iter().all(Value::is_number) {
                return Err(format!(
                    "{} returned {}-dimensional embeddings; the tenant's dimension is {}",
                    request.model,
                    vector.len(),
                    request.dims
                ));
            }
            vectors.push(Value::Array(vector.clone()));
        }
        let usage = answer["usage"].clone();
        if !usage.is_object() {
            return Err("no usage object".into());
        }
        Ok((Value::Array(vectors), usage))
    }
}

/// What a stream delivered so far.
#[derive(Default)]
struct Stream {
    request_id: Option<String>,
    output: String,
    deltas: u64,
    usage: Option<Value>,
    /// Anthropic's message_start usage, completed by message_delta.
    anthropic_usage: Option<Value>,
    finished: bool,
    broken: Option<String>,
}

impl Stream {
    /// Reads server-sent events until the stream ends; a read error ends it early.
    async fn read(mut response: reqwest::Response, provider: &str) -> Result<Stream, CallError> {
        let mut stream = Stream::default();
        let mut pending: Vec<u8> = Vec::new();
        let mut total = 0usize;
        loop {
            match response.chunk().await {
                Ok(Some(bytes)) => {
                    total += bytes.len();
                    if total > MAX_BODY_BYTES {
                        stream.broken = Some("the stream exceeded 32 MiB".into());
                        break;
                    }
                    pending.extend_from_slice(&bytes);
                    while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=end).collect();
                        let line = String::from_utf8_lossy(&line);
                        stream.event_line(line.trim_end(), provider);
                    }
                    if stream.finished {
                        break;
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    stream.broken = Some(redact_for_tenant(&err.to_string(), None));
                    break;
                }
            }
        }
        Ok(stream)
    }

    fn event_line(&mut self, line: &str, provider: &str) {
        let Some(data) = line.strip_prefix("data:").map(str::trim_start) else {
            return; // event names, comments, blank separators
        };
        if data == "[DONE]" {
            self.finished = true;
            return;
        }
        let Ok(event) = serde_json::from_str::<Value>(data) else {
            return;
        };
        if provider == "anthropic" {
            match event["type"].as_str() {
                Some("message_start") => {
                    self.request_id = event["message"]["id"].as_str().map(str::to_string);
                    self.anthropic_usage = Some(event["message"]["usage"].clone());
                }
                Some("content_block_delta") => {
                    if let Some(text) = event["delta"]["text"].as_str() {
                        self.output.push_str(text);
                        self.deltas += 1;
                    }
                }
                Some("message_delta") => {
                    if let (Some(usage), Some(out)) = (
                        self.anthropic_usage.as_mut(),
                        event["usage"]["output_tokens"].as_u64(),
                    ) {
                        usage["output_tokens"] = json!(out);
                    }
                }
                Some("message_stop") => {
                    self.usage = self.anthropic_usage.clone();
                    self.finished = true;
                }
                _ => {}
            }
        } else {
            if self.request_id.is_none() {
                self.request_id = event["id"].as_str().map(str::to_string);
            }
            if let Some(text) = event["choices"][0]["delta"]["content"].as_str() {
                self.output.push_str(text);
                self.deltas += 1;
            }
            if event["usage"].is_object() {
                self.usage = Some(event["usage"].clone());
            }
        }
    }

    fn into_completion(
        self,
        request: &Request<'_>,
        header_request_id: Option<String>,
    ) -> Result<Completion, String> {
        let request_id = self.request_id.or(header_request_id);
        match (self.usage, request_id) {
            (Some(usage), Some(request_id)) if usage.is_object() => Ok(Completion {
                request_id,
                output: self.output,
                usage,
                message: Value::Null,
                cut_short: None,
                malformed: false,
            }),
            // Cut before usage came: the provider bills what it generated, which a delta count
            // can undercount (a delta may carry several tokens, and generation may go on after
            // the cut), so the output is settled at its reservation (max_output_tokens): budgets
            // fail closed. Reconciliation shows what the provider counted.
            (_, Some(request_id)) if self.deltas > 0 => {
                let reason = self.broken.unwrap_or_else(|| {
                    "the stream ended before the provider reported usage".into()
                });
                let usage = if request.provider == "anthropic" {
                    let input = self
                        .anthropic_usage
                        .as_ref()
                        .and_then(|u| u["input_tokens"].as_u64())
                        .unwrap_or(request.est_input_tokens);
                    json!({"input_tokens": input, "output_tokens": request.max_output_tokens})
                } else {
                    json!({"prompt_tokens": request.est_input_tokens, "completion_tokens": request.max_output_tokens})
                };
                Ok(Completion {
                    request_id,
                    output: self.output,
                    usage,
                    message: Value::Null,
                    cut_short: Some(format!("stream cut short: {reason}")),
                    malformed: false,
                })
            }
            _ => Err(format!(
                "the stream ended before any output: {}",
                self.broken.unwrap_or_else(|| "no events".into())
            )),
        }
    }
}

/// A provider's (or Pinecone's) error answer, classified; its text redacted and cut.
/// `key` is the call's own: the text reaches the tenant's job row (see secrets.rs).
pub async fn error_response(
    who: &str,
    response: reqwest::Response,
    key: Option<&str>,
) -> CallError {
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let body = read_capped(response, 4096).await.unwrap_or_default();
    // Redacted before it is cut: a key straddling the cut would survive in part.
    let message = format!(
        "{who} returned HTTP {}: {}",
        status.as_u16(),
        redact_for_tenant_and_cut(&error_text(&body), key, ERROR_TEXT_CHARS)
    );
    match status.as_u16() {
        429 => CallError::RateLimited {
            retry_after: retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
            message,
        },
        // Anthropic's 529 is "overloaded"; 408 is a timeout.
        408 | 409 | 500..=599 => CallError::Transient {
            class: "server",
            message,
        },
        _ => CallError::Permanent {
            class: "client",
            message,
        },
    }
}

pub fn transport_error(err: &reqwest::Error, key: Option<&str>) -> CallError {
    let class = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect"
    } else {
        "server"
    };
    // reqwest's Display walks no headers, but redact anyway: its sources may quote a URL.
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    CallError::Transient {
        class,
        message: redact_for_tenant_and_cut(&message, key, ERROR_TEXT_CHARS),
    }
}

pub async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = cap.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= cap {
            break;
        }
    }
    Ok(body)
}

/// Seconds (retry-after, or OpenAI's retry-after-ms); an HTTP date is not worth parsing here.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        return Duration::try_from_secs_f64(ms / 1000.0).ok();
    }
    text("retry-after")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
}

/// The error message of a provider's error body ({"error": {"message": ...}}), else the body.
pub fn error_text(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(v) => v["error"]["message"]
            .as_str()
            .or_else(|| v["message"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string()),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_prefers_the_provider_message() {
        assert_eq!(
            error_text(
                br#"{"error": {"message": "model not found", "type": "invalid_request_error"}}"#
            ),
            "model not found"
        );
        assert_eq!(error_text(b"<html>oops</html>"), "<html>oops</html>");
    }
}
