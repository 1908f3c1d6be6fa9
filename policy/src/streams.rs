//! What a provider's server-sent event stream says about its cost, event by event: the call's
//! id, the usage object the provider reports at the end (OpenAI's final chunk with
//! `stream_options.include_usage`; Anthropic's message_start usage completed by message_delta),
//! and the output streamed so far, for settling a stream that ends before its usage arrives.

use crate::requests::Wire;
use crate::tokens;
use serde_json::Value;

#[derive(Debug)]
pub struct StreamUsage {
    wire: Wire,
    pub id: Option<String>,
    /// The provider's usage object, once complete (OpenAI's final chunk, Anthropic's
    /// message_start usage merged with message_delta's).
    pub usage: Option<Value>,
    partial: Option<Value>,
    /// Every output text streamed (content, refusals, tool arguments, thinking).
    pub text: String,
    pub deltas: u64,
    pub finished: bool,
}

impl StreamUsage {
    pub fn new(wire: Wire) -> Self {
        StreamUsage {
            wire,
            id: None,
            usage: None,
            partial: None,
            text: String::new(),
            deltas: 0,
            finished: false,
        }
    }

    /// Whether this event is OpenAI's usage-only chunk (`choices: []` with usage), which a
    /// client that did not ask for it must not see.
    pub fn is_usage_only_chunk(event: &Value) -> bool {
        event["usage"].is_object() && event["choices"].as_array().is_some_and(|c| c.is_empty())
    }

    /// Takes one event's JSON data.
    pub fn observe(&mut self, event: &Value) {
        match self.wire {
            Wire::OpenAi => {
                if self.id.is_none() {
                    self.id = event["id"].as_str().map(str::to_string);
                }
                if let Some(choices) = event["choices"].as_array() {
                    for choice in choices {
                        let delta = &choice["delta"];
                        let mut streamed = false;
                        for field in ["content", "refusal", "reasoning_content"] {
                            if let Some(text) = delta[field].as_str() {
                                self.text.push_str(text);
                                streamed = true;
                            }
                        }
                        if let Some(calls) = delta["tool_calls"].as_array() {
                            for call in calls {
                                for part in
                                    [&call["function"]["name"], &call["function"]["arguments"]]
                                {
                                    if let Some(text) = part.as_str() {
                                        self.text.push_str(text);
                                        streamed = true;
                                    }
                                }
                            }
                        }
                        if streamed {
                            self.deltas += 1;
                        }
                    }
                }
                if event["usage"].is_object() {
                    self.usage = Some(event["usage"].clone());
                }
            }
            Wire::Anthropic => match event["type"].as_str() {
                Some("message_start") => {
                    self.id = event["message"]["id"].as_str().map(str::to_string);
                    self.partial = Some(event["message"]["usage"].clone());
                }
                Some("content_block_delta") => {
                    let delta = &event["delta"];
                    for field in ["text", "partial_json", "thinking"] {
                        if let Some(text) = delta[field].as_str() {
                            self.text.push_str(text);
                            self.deltas += 1;
                        }
                    }
                }
                Some("content_block_start") => {
                    if let Some(name) = event["content_block"]["name"].as_str() {
                        self.text.push_str(name);
                    }
                }
                Some("message_delta") => {
                    if let (Some(Value::Object(partial)), Some(Value::Object(more))) =
                        (self.partial.as_mut(), event.get("usage"))
                    {
                        for (k, v) in more {
                            if !v.is_null() {
                                partial.insert(k.clone(), v.clone());
                            }
                        }
                    }
                }
                Some("message_stop") => {
                    self.usage = self.partial.clone();
                    self.finished = true;
                }
                _ => {}
            },
        }
    }

    /// The usage to settle a stream cut before the provider reported it (the client left, or
    /// the tenant was suspended): the input at what admission reserved (Anthropic's own count
    /// where message_start gave it) and the output streamed, counted with the model's
    /// tokenizer where one is known, else at a token per byte, and never less than a token per
    /// delta.
    pub fn streamed_usage(&self, provider: &str, model: &str, reserved_input: u64) -> Value {
        let (counted, _) = tokens::text_tokens(provider, model, &self.text);
        let output = counted.max(self.deltas);
        match self.wire {
            Wire::OpenAi => {
                serde_json::json!({"prompt_tokens": reserved_input, "completion_tokens": output})
            }
            Wire::Anthropic => {
                let mut usage = self
                    .partial
                    .clone()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| serde_json::json!({"input_tokens": reserved_input}));
                usage["output_tokens"] = serde_json::json!(output);
                usage
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn openai_usage_comes_from_the_final_chunk() {
        let mut s = StreamUsage::new(Wire::OpenAi);
        s.observe(&json!({"id": "chatcmpl-1", "choices": [{"delta": {"content": "Hel"}}]}));
        s.observe(&json!({"id": "chatcmpl-1", "choices": [{"delta": {"tool_calls": [{"function": {"arguments": "{}"}}]}}]}));
        let last = json!({"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}});
        assert!(StreamUsage::is_usage_only_chunk(&last));
        s.observe(&last);
        assert_eq!(s.id.as_deref(), Some("chatcmpl-1"));
        assert_eq!(s.usage.as_ref().unwrap()["completion_tokens"], 2);
        assert_eq!(s.text, "Hel{}");
        assert_eq!(s.deltas, 2);
    }

    #[test]
    fn anthropic_usage_merges_start_and_delta() {
        let mut s = StreamUsage::new(Wire::Anthropic);
        s.observe(&json!({"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 10, "cache_read_input_tokens": 4, "output_tokens": 1}}}));
        s.observe(
            &json!({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "hi"}}),
        );
        let cut = s.streamed_usage("anthropic", "claude", 99);
        assert_eq!(
            cut["input_tokens"], 10,
            "Anthropic's own input count when it gave one"
        );
        assert_eq!(cut["output_tokens"], 2, "two bytes streamed");
        s.observe(&json!({"type": "message_delta", "usage": {"output_tokens": 7}}));
        assert!(s.usage.is_none(), "usage is complete at message_stop only");
        s.observe(&json!({"type": "message_stop"}));
        let usage = s.usage.unwrap();
        assert_eq!(
            (
                usage["input_tokens"].as_u64(),
                usage["output_tokens"].as_u64()
            ),
            (Some(10), Some(7))
        );
        assert_eq!(usage["cache_read_input_tokens"], 4);
    }

    #[test]
    fn a_cut_openai_stream_counts_at_least_a_token_per_delta() {
        let mut s = StreamUsage::new(Wire::OpenAi);
        for _ in 0..3 {
            s.observe(&json!({"choices": [{"delta": {"content": ""}}]}));
        }
        let cut = s.streamed_usage("openai", "gpt-4o-mini", 42);
        assert_eq!(cut["prompt_tokens"], 42);
        assert_eq!(cut["completion_tokens"], 3);
    }
}
