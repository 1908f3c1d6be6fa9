//! What a chat or embeddings request sends a provider as billable input, read from the request
//! body in the provider's own wire format (OpenAI Chat Completions and Embeddings, Anthropic
//! Messages), and an upper bound on the input tokens it can be billed for.
//!
//! Admission reserves this bound before the call, so it must hold for any request a hostile end
//! user can write. Every text the model reads counts: message contents of every role, names, tool
//! calls and their arguments, tool results, tool definitions, response schemas, thinking blocks
//! passed back. What cannot be bounded before the call is refused instead of guessed: audio,
//! files and documents, server-side tools that bill per use, predicted outputs, priority tiers.
//! Images count at a fixed bound per image (see [`IMAGE_TOKENS_OPENAI`]).

use crate::tokens;
use serde_json::Value;

/// Tokens reserved per image on OpenAI's wire: gpt-4o-mini bills a high-detail 2048x768 image
/// (8 tiles) at 2,833 + 8 x 5,667 = 48,169 tokens, the most of any current model.
pub const IMAGE_TOKENS_OPENAI: u64 = 50_000;
/// Tokens reserved per image on Anthropic's wire: images are scaled to at most 1.15 megapixels,
/// about 1,600 tokens (width x height / 750); the bound leaves room for their framing.
pub const IMAGE_TOKENS_ANTHROPIC: u64 = 5_000;
/// Tokens reserved for the hidden text a provider adds when tools are declared, per request
/// and per tool (the definitions themselves are counted as their JSON text).
pub const TOOLS_OVERHEAD: u64 = 64;
/// Anthropic documents 346 tokens of tool-use system prompt for its current models.
pub const TOOLS_OVERHEAD_ANTHROPIC: u64 = 512;
pub const TOOL_OVERHEAD: u64 = 16;
/// A prompt-cache write costs up to twice the input price (Anthropic's one-hour TTL): a request
/// that marks cache breakpoints reserves its input twice.
pub const CACHE_WRITE_FACTOR: u64 = 2;
/// Most messages, parts and tools one request may hold.
pub const MAX_ITEMS: usize = 10_000;

impl crate::sqlstate::HasSqlState for RequestError {
    fn sqlstate(&self) -> crate::SqlState {
        match self {
            RequestError::Invalid(_) => crate::SqlState::INVALID_PARAMETER_VALUE,
            RequestError::Unsupported(_) => crate::SqlState::FEATURE_NOT_SUPPORTED,
        }
    }

    fn detail(&self) -> Option<String> {
        Some(match self {
            RequestError::Invalid(_) => "The request is an OpenAI Chat Completions or Anthropic Messages body, by the model's provider.".into(),
            RequestError::Unsupported(_) => "Admission reserves a bound on every call's cost before it is made; this input has none.".into(),
        })
    }
}

/// The billable input of a chat request body in `wire`'s format.
pub fn chat_input(wire: Wire, body: &Value) -> Result<Input, RequestError> {
    match wire {
        Wire::OpenAi => openai_chat(body),
        Wire::Anthropic => anthropic_messages(body),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    OpenAi,
    Anthropic,
}

/// A request the gateway refuses before admission (HTTP 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} is not supported: its cost cannot be bounded before the call")]
    Unsupported(String),
}

/// The billable input of one request.
#[derive(Debug, Default)]
pub struct Input {
    /// Each text the model reads, one per message (framing is added per text).
    pub texts: Vec<String>,
    pub images: u64,
    pub tools: u64,
    /// A cache breakpoint was marked (Anthropic's cache_control).
    pub cache_writes: bool,
}

/// The bounds admission needs: with the model's tokenizer (where one is known for an OpenAI
/// model) and at a token per byte (always valid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub tokenized: Option<u64>,
    pub bytes: u64,
}

impl Input {
    /// Both bounds, with framing, tool, image and cache-write overheads.
    pub fn bounds(&self, wire: Wire, model: &str) -> Bounds {
        let image = match wire {
            Wire::OpenAi => IMAGE_TOKENS_OPENAI,
            Wire::Anthropic => IMAGE_TOKENS_ANTHROPIC,
        };
        let tools_overhead = match wire {
            Wire::OpenAi => TOOLS_OVERHEAD,
            Wire::Anthropic => TOOLS_OVERHEAD_ANTHROPIC,
        };
        let extra = self
            .images
            .saturating_mul(image)
            .saturating_add(if self.tools > 0 {
                tools_overhead.saturating_add(self.tools.saturating_mul(TOOL_OVERHEAD))
            } else {
                0
            });
        let factor = if self.cache_writes {
            CACHE_WRITE_FACTOR
        } else {
            1
        };
        let texts = || self.texts.iter().map(String::as_str);
        let (bytes, _) = tokens::chat_input_bound("", model, texts(), || {});
        let tokenized = match wire {
            Wire::OpenAi => match tokens::chat_input_bound("openai", model, texts(), || {}) {
                (n, tokens::Method::Tokenizer(_)) => Some(n),
                _ => None,
            },
            Wire::Anthropic => None,
        };
        let total = |n: u64| n.saturating_add(extra).saturating_mul(factor);
        Bounds {
            tokenized: tokenized.map(total),
            bytes: total(bytes),
        }
    }
}

fn invalid(message: impl Into<String>) -> RequestError {
    RequestError::Invalid(message.into())
}

fn json_text(value: &Value) -> String {
    value.to_string()
}

fn array<'a>(value: &'a Value, what: &str) -> Result<&'a Vec<Value>, RequestError> {
    let items = value
        .as_array()
        .ok_or_else(|| invalid(format!("{what} must be an array")))?;
    if items.len() > MAX_ITEMS {
        return Err(invalid(format!("{what} has more than {MAX_ITEMS} items")));
    }
    Ok(items)
}

/// An OpenAI Chat Completions request's billable input.
pub fn openai_chat(body: &Value) -> Result<Input, RequestError> {
    let mut input = Input::default();
    // Server-side templates and documents (vLLM and other OpenAI-compatible servers) make the
    // model read text the request does not hold.
    for field in [
        "prediction",
        "audio",
        "web_search_options",
        "chat_template",
        "chat_template_kwargs",
        "documents",
    ] {
        if !body[field].is_null() {
            return Err(RequestError::Unsupported(format!("the {field} parameter")));
        }
    }
    if let Some(modalities) = body.get("modalities").filter(|m| !m.is_null()) {
        if array(modalities, "modalities")?
            .iter()
            .any(|m| m.as_str() != Some("text"))
        {
            return Err(RequestError::Unsupported(
                "an output modality other than text".into(),
            ));
        }
    }
    if let Some(tier) = body.get("service_tier").filter(|t| !t.is_null()) {
        if !matches!(tier.as_str(), Some("auto" | "default")) {
            return Err(RequestError::Unsupported(format!("service_tier {tier}")));
        }
    }
    let messages = array(&body["messages"], "messages")?;
    if messages.is_empty() {
        return Err(invalid("messages must not be empty"));
    }
    for message in messages {
        let role = message["role"]
            .as_str()
            .ok_or_else(|| invalid("each message needs a role (a string)"))?;
        let mut text = String::new();
        text.push_str(role);
        if let Some(name) = message.get("name").filter(|n| !n.is_null()) {
            text.push_str(
                name.as_str()
                    .ok_or_else(|| invalid("a message name must be a string"))?,
            );
        }
        match &message["content"] {
            Value::Null => {}
            Value::String(s) => text.push_str(s),
            Value::Array(parts) => {
                if parts.len() > MAX_ITEMS {
                    return Err(invalid("a message has too many content parts"));
                }
                for part in parts {
                    match part["type"].as_str() {
                        Some("text") => text.push_str(
                            part["text"]
                                .as_str()
                                .ok_or_else(|| invalid("a text part needs text (a string)"))?,
                        ),
                        Some("refusal") => text.push_str(part["refusal"].as_str().unwrap_or("")),
                        Some("image_url") => input.images += 1,
                        Some(other) => {
                            return Err(RequestError::Unsupported(format!(
                                "content part type {other:?}"
                            )))
                        }
                        None => return Err(invalid("each content part needs a type")),
                    }
                }
            }
            _ => {
                return Err(invalid(
                    "message content must be a string, an array of parts or null",
                ))
            }
        }
        for field in ["refusal", "reasoning_content", "reasoning"] {
            if let Some(extra) = message[field].as_str() {
                text.push_str(extra);
            }
        }
        if let Some(calls) = message.get("tool_calls").filter(|c| !c.is_null()) {
            for call in array(calls, "tool_calls")? {
                text.push_str(&json_text(call));
            }
        }
        if let Some(call) = message.get("function_call").filter(|c| !c.is_null()) {
            text.push_str(&json_text(call));
        }
        if let Some(id) = message["tool_call_id"].as_str() {
            text.push_str(id);
        }
        input.texts.push(text);
    }
    for field in ["tools", "functions"] {
        if let Some(tools) = body.get(field).filter(|t| !t.is_null()) {
            let tools = array(tools, field)?;
            input.tools += tools.len() as u64;
            input.texts.push(json_text(&Value::Array(tools.clone())));
        }
    }
    for field in ["tool_choice", "function_call", "response_format"] {
        if let Some(value) = body.get(field).filter(|v| !v.is_null()) {
            input.texts.push(json_text(value));
        }
    }
    Ok(input)
}

/// An Anthropic Messages request's billable input.
pub fn anthropic_messages(body: &Value) -> Result<Input, RequestError> {
    let mut input = Input::default();
    for field in ["mcp_servers", "container"] {
        if !body[field].is_null() {
            return Err(RequestError::Unsupported(format!("the {field} parameter")));
        }
    }
    if let Some(tier) = body.get("service_tier").filter(|t| !t.is_null()) {
        if !matches!(tier.as_str(), Some("auto" | "standard_only")) {
            return Err(RequestError::Unsupported(format!("service_tier {tier}")));
        }
    }
    input.cache_writes = contains_key(body, "cache_control", 0);
    match &body["system"] {
        Value::Null => {}
        Value::String(s) => input.texts.push(s.clone()),
        Value::Array(blocks) => {
            let mut text = String::new();
            for block in blocks.iter().take(MAX_ITEMS + 1) {
                if block["type"].as_str() != Some("text") {
                    return Err(invalid("system blocks must be text blocks"));
                }
                text.push_str(block["text"].as_str().unwrap_or(""));
            }
            input.texts.push(text);
        }
        _ => {
            return Err(invalid(
                "system must be a string or an array of text blocks",
            ))
        }
    }
    let messages = array(&body["messages"], "messages")?;
    if messages.is_empty() {
        return Err(invalid("messages must not be empty"));
    }
    for message in messages {
        let role = message["role"]
            .as_str()
            .ok_or_else(|| invalid("each message needs a role (a string)"))?;
        let mut text = role.to_string();
        match &message["content"] {
            Value::String(s) => text.push_str(s),
            Value::Array(blocks) => {
                if blocks.len() > MAX_ITEMS {
                    return Err(invalid("a message has too many content blocks"));
                }
                for block in blocks {
                    anthropic_block(block, &mut text, &mut input, true)?;
                }
            }
            _ => {
                return Err(invalid(
                    "message content must be a string or an array of blocks",
                ))
            }
        }
        input.texts.push(text);
    }
    if let Some(tools) = body.get("tools").filter(|t| !t.is_null()) {
        let tools = array(tools, "tools")?;
        for tool in tools {
            match tool.get("type").and_then(Value::as_str) {
                None | Some("custom") => {}
                Some(other) => {
                    return Err(RequestError::Unsupported(format!("tool type {other:?}")))
                }
            }
        }
        input.tools += tools.len() as u64;
        input.texts.push(json_text(&Value::Array(tools.clone())));
    }
    if let Some(choice) = body.get("tool_choice").filter(|c| !c.is_null()) {
        input.texts.push(json_text(choice));
    }
    Ok(input)
}

fn anthropic_block(
    block: &Value,
    text: &mut String,
    input: &mut Input,
    nested_results: bool,
) -> Result<(), RequestError> {
    match block["type"].as_str() {
        Some("text") => text.push_str(
            block["text"]
                .as_str()
                .ok_or_else(|| invalid("a text block needs text (a string)"))?,
        ),
        Some("image") => input.images += 1,
        Some("tool_use") => {
            text.push_str(block["name"].as_str().unwrap_or(""));
            text.push_str(&json_text(&block["input"]));
        }
        Some("tool_result") if nested_results => {
            text.push_str(block["tool_use_id"].as_str().unwrap_or(""));
            match &block["content"] {
                Value::Null => {}
                Value::String(s) => text.push_str(s),
                Value::Array(inner) => {
                    if inner.len() > MAX_ITEMS {
                        return Err(invalid("a tool result has too many blocks"));
                    }
                    for b in inner {
                        anthropic_block(b, text, input, false)?;
                    }
                }
                _ => {
                    return Err(invalid(
                        "tool_result content must be a string or an array of blocks",
                    ))
                }
            }
        }
        Some("thinking") => {
            text.push_str(block["thinking"].as_str().unwrap_or(""));
            text.push_str(block["signature"].as_str().unwrap_or(""));
        }
        Some("redacted_thinking") => text.push_str(block["data"].as_str().unwrap_or("")),
        Some(other) => {
            return Err(RequestError::Unsupported(format!(
                "content block type {other:?}"
            )))
        }
        None => return Err(invalid("each content block needs a type")),
    }
    Ok(())
}

/// Whether `key` appears anywhere in `value` (bounded depth: serde_json refuses deeper input).
fn contains_key(value: &Value, key: &str, depth: usize) -> bool {
    if depth > 256 {
        return true;
    }
    match value {
        Value::Object(map) => {
            map.contains_key(key) || map.values().any(|v| contains_key(v, key, depth + 1))
        }
        Value::Array(items) => items.iter().any(|v| contains_key(v, key, depth + 1)),
        _ => false,
    }
}

/// Whether the provider may bill output it never streams: reasoning tokens (OpenAI's reasoning
/// models, or a request that sets a reasoning effort) or Anthropic's thinking. A stream of such
/// a call that is cut before its usage arrives cannot be charged for "what was streamed": it is
/// charged at its hold.
pub fn may_bill_hidden_output(wire: Wire, model: &str, body: &Value) -> bool {
    match wire {
        Wire::Anthropic => body
            .get("thinking")
            .is_some_and(|t| !t.is_null() && t["type"].as_str() != Some("disabled")),
        Wire::OpenAi => {
            let model = model.to_ascii_lowercase();
            let reasoning_model = ["o1", "o3", "o4", "gpt-5", "gpt-oss"]
                .iter()
                .any(|prefix| model.starts_with(prefix));
            reasoning_model || !body["reasoning_effort"].is_null() || !body["reasoning"].is_null()
        }
    }
}

/// An OpenAI Embeddings request's input bound: texts (counted like chat texts, without
/// framing) or token arrays (counted exactly). Returns the bounds and the number of inputs.
pub fn openai_embeddings(body: &Value, model: &str) -> Result<(Bounds, usize), RequestError> {
    let mut texts: Vec<&str> = Vec::new();
    let mut token_count: u64 = 0;
    let mut inputs = 0usize;
    let mut token_array = |items: &Vec<Value>| -> Result<(), RequestError> {
        if !items.iter().all(Value::is_u64) {
            return Err(invalid("input token arrays hold integers only"));
        }
        token_count = token_count.saturating_add(items.len() as u64);
        Ok(())
    };
    match &body["input"] {
        Value::String(s) => {
            texts.push(s);
            inputs = 1;
        }
        Value::Array(items) if items.is_empty() => return Err(invalid("input must not be empty")),
        Value::Array(items) if items.len() > 2048 => {
            return Err(invalid("input holds at most 2048 items"))
        }
        Value::Array(items) if items[0].is_number() => {
            token_array(items)?;
            inputs = 1;
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::String(s) => texts.push(s),
                    Value::Array(tokens) => token_array(tokens)?,
                    _ => return Err(invalid("input items must be strings or token arrays")),
                }
                inputs += 1;
            }
        }
        _ => {
            return Err(invalid(
                "input must be a string, an array of strings or token arrays",
            ))
        }
    }
    let (bytes, _) = tokens::embedding_input_bound("", model, texts.iter().copied(), || {});
    let tokenized =
        match tokens::embedding_input_bound("openai", model, texts.iter().copied(), || {}) {
            (n, tokens::Method::Tokenizer(_)) => Some(n.saturating_add(token_count)),
            _ if texts.is_empty() => Some(token_count),
            _ => None,
        };
    Ok((
        Bounds {
            tokenized,
            bytes: bytes.saturating_add(token_count),
        },
        inputs,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_role_and_tool_text_counts() {
        let body = json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "image_url", "image_url": {"url": "data:"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\": \"x\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "result text"}
            ],
            "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
            "response_format": {"type": "json_object"}
        });
        let input = openai_chat(&body).unwrap();
        assert_eq!(input.images, 1);
        assert_eq!(input.tools, 1);
        let all = input.texts.join("|");
        for needle in [
            "be brief",
            "hello",
            "lookup",
            "result text",
            "json_object",
            "\\\"q\\\"",
        ] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
        let bounds = input.bounds(Wire::OpenAi, "gpt-4o-mini");
        let tokenized = bounds.tokenized.expect("gpt-4o-mini has a tokenizer");
        assert!(tokenized >= IMAGE_TOKENS_OPENAI + TOOLS_OVERHEAD);
        assert!(bounds.bytes >= tokenized, "the byte bound is the larger");
    }

    #[test]
    fn unboundable_inputs_are_refused() {
        let audio = json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]});
        assert!(matches!(
            openai_chat(&audio),
            Err(RequestError::Unsupported(_))
        ));
        let prediction = json!({"messages": [{"role": "user", "content": "x"}], "prediction": {"type": "content"}});
        assert!(matches!(
            openai_chat(&prediction),
            Err(RequestError::Unsupported(_))
        ));
        let priority =
            json!({"messages": [{"role": "user", "content": "x"}], "service_tier": "priority"});
        assert!(matches!(
            openai_chat(&priority),
            Err(RequestError::Unsupported(_))
        ));
        let search = json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search_20250305", "name": "web_search"}]});
        assert!(matches!(
            anthropic_messages(&search),
            Err(RequestError::Unsupported(_))
        ));
        let document = json!({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]});
        assert!(matches!(
            anthropic_messages(&document),
            Err(RequestError::Unsupported(_))
        ));
    }

    #[test]
    fn malformed_requests_are_invalid_not_panics() {
        for body in [
            json!({}),
            json!({"messages": "hi"}),
            json!({"messages": []}),
            json!({"messages": [{"content": "no role"}]}),
            json!({"messages": [{"role": "user", "content": 7}]}),
            json!({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}),
            json!({"messages": [{"role": 1, "content": "x"}]}),
        ] {
            assert!(
                matches!(openai_chat(&body), Err(RequestError::Invalid(_))),
                "{body}"
            );
            assert!(
                matches!(anthropic_messages(&body), Err(RequestError::Invalid(_))),
                "{body}"
            );
        }
    }

    #[test]
    fn anthropic_cache_breakpoints_double_the_input() {
        let plain =
            json!({"system": "s", "messages": [{"role": "user", "content": "hello there"}]});
        let cached = json!({"system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
                            "messages": [{"role": "user", "content": "hello there"}]});
        let p = anthropic_messages(&plain)
            .unwrap()
            .bounds(Wire::Anthropic, "claude-sonnet-4-5");
        let c = anthropic_messages(&cached)
            .unwrap()
            .bounds(Wire::Anthropic, "claude-sonnet-4-5");
        assert_eq!(
            p.tokenized, None,
            "no tokenizer is claimed for Anthropic models"
        );
        assert_eq!(c.bytes, p.bytes * CACHE_WRITE_FACTOR);
    }

    #[test]
    fn hidden_output_is_recognised() {
        let plain = json!({"messages": []});
        assert!(!may_bill_hidden_output(Wire::OpenAi, "gpt-4o-mini", &plain));
        assert!(may_bill_hidden_output(Wire::OpenAi, "o4-mini", &plain));
        assert!(may_bill_hidden_output(Wire::OpenAi, "gpt-5-mini", &plain));
        assert!(may_bill_hidden_output(
            Wire::OpenAi,
            "m",
            &json!({"reasoning_effort": "low"})
        ));
        assert!(may_bill_hidden_output(
            Wire::Anthropic,
            "claude",
            &json!({"thinking": {"type": "enabled", "budget_tokens": 2000}})
        ));
        assert!(!may_bill_hidden_output(
            Wire::Anthropic,
            "claude",
            &json!({"thinking": {"type": "disabled"}})
        ));
        assert!(!may_bill_hidden_output(Wire::Anthropic, "claude", &plain));
    }

    #[test]
    fn message_refusals_and_server_templates() {
        let long = "r".repeat(10_000);
        let body = json!({"messages": [{"role": "assistant", "content": null, "refusal": long}]});
        let input = openai_chat(&body).unwrap();
        assert!(input.bounds(Wire::OpenAi, "gpt-4o-mini").bytes >= 10_000);
        let templated = json!({"messages": [{"role": "user", "content": "x"}], "chat_template": "{% for i in range(99999) %}x{% endfor %}"});
        assert!(matches!(
            openai_chat(&templated),
            Err(RequestError::Unsupported(_))
        ));
    }

    #[test]
    fn embedding_token_arrays_count_exactly() {
        let body = json!({"input": [[1, 2, 3], [4, 5]]});
        let (bounds, inputs) = openai_embeddings(&body, "text-embedding-3-small").unwrap();
        assert_eq!(inputs, 2);
        assert_eq!(bounds.tokenized, Some(5));
        assert_eq!(bounds.bytes, 5);
        assert!(openai_embeddings(&json!({"input": [[1, -2]]}), "m").is_err());
        assert!(openai_embeddings(&json!({"input": []}), "m").is_err());
        let (texts, _) =
            openai_embeddings(&json!({"input": ["hello world"]}), "text-embedding-3-small")
                .unwrap();
        assert_eq!(texts.bytes, 11);
        assert!(texts.tokenized.unwrap() <= 11);
    }
}
