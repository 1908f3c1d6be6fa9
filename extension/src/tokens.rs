//! `bulkhead._input_token_bound(...)`: an upper bound on the input tokens a provider bills for
//! some texts, by the policy crate's rules (`bulkhead_policy::tokens`: the model's own tokenizer
//! where one is known, the byte bound otherwise, plus framing). SQL reaches it through
//! `bulkhead.input_token_bound(model, inputs, chat)`, which looks up the model's provider.

use bulkhead_policy::requests::{self, Wire};
use bulkhead_policy::tokens;
use pgrx::prelude::*;

/// The bound, and how it was found (`o200k_base`, `cl100k_base` or `bytes`). NULL inputs count
/// as empty; NULL provider or model take the byte bound.
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
pub fn _input_token_bound(
    provider: Option<&str>,
    model: Option<&str>,
    inputs: Option<Vec<Option<String>>>,
    chat: Option<bool>,
) -> TableIterator<'static, (name!(tokens, i64), name!(method, String))> {
    let (provider, model) = (provider.unwrap_or(""), model.unwrap_or(""));
    let inputs = inputs.unwrap_or_default();
    let texts = inputs.iter().map(|t| t.as_deref().unwrap_or(""));
    // Tokenizing is CPU in this backend: a cancel or statement_timeout acts between texts.
    let between = || {
        pgrx::check_for_interrupts!();
    };
    let (bound, method) = if chat.unwrap_or(true) {
        tokens::chat_input_bound(provider, model, texts, between)
    } else {
        tokens::embedding_input_bound(provider, model, texts, between)
    };
    TableIterator::once((
        i64::try_from(bound).unwrap_or(i64::MAX),
        method.name().to_string(),
    ))
}

/// The input bounds of a chat request body (`request`, in `wire`'s format: `openai` or
/// `anthropic`): with the model's tokenizer where one is known for an OpenAI model (NULL
/// otherwise), and at a token per byte; both with framing, tool, image and cache-write
/// overheads (bulkhead_policy::requests). A body that is not a valid request raises 22023; one
/// whose cost cannot be bounded (audio, documents, server tools...) raises 0A000.
#[pg_extern(immutable, parallel_safe, name = "_request_input_bound")]
#[search_path(pg_catalog, pg_temp)]
pub fn _request_input_bound_text(
    wire: &str,
    model: &str,
    request: &str,
) -> TableIterator<'static, (name!(tokenized, Option<i64>), name!(bytes, i64))> {
    // Read here, not as a jsonb argument: pgrx would raise XX000 on what serde_json refuses
    // (nesting past 128 levels, a number past f64) and jsonb accepts.
    let request: serde_json::Value = match serde_json::from_str(request) {
        Ok(request) => request,
        Err(err) => crate::errors::raise(&requests::RequestError::Invalid(format!(
            "the request cannot be read: {err}"
        ))),
    };
    request_input_bound(wire, model, &request)
}

/// 0.1.0's `_request_input_bound(text, text, jsonb)`, which databases not yet updated to this
/// version still call: the library keeps every function a supported release's script names.
/// No SQL of this version declares it (`sql = false`).
#[pg_extern(immutable, parallel_safe, sql = false)]
pub fn _request_input_bound(
    wire: &str,
    model: &str,
    request: pgrx::JsonB,
) -> TableIterator<'static, (name!(tokenized, Option<i64>), name!(bytes, i64))> {
    request_input_bound(wire, model, &request.0)
}

fn request_input_bound(
    wire: &str,
    model: &str,
    request: &serde_json::Value,
) -> TableIterator<'static, (name!(tokenized, Option<i64>), name!(bytes, i64))> {
    let wire = if wire == "anthropic" {
        Wire::Anthropic
    } else {
        Wire::OpenAi
    };
    let input = match requests::chat_input(wire, request) {
        Ok(input) => input,
        Err(err) => crate::errors::raise(&err),
    };
    pgrx::check_for_interrupts!();
    let bounds = input.bounds(wire, model);
    let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    TableIterator::once((bounds.tokenized.map(as_i64), as_i64(bounds.bytes)))
}
