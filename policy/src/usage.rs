//! Provider usage objects, normalised, and what they cost.
//!
//! Providers count tokens differently, and getting it wrong misprices every cached request:
//! - OpenAI (Chat Completions and Responses, and OpenAI-compatible servers): the input count
//!   INCLUDES cached tokens (`prompt_tokens_details.cached_tokens` / `input_tokens_details.cached_tokens`);
//!   the output count includes reasoning tokens.
//! - Anthropic Messages: `input_tokens` EXCLUDES both cache reads (`cache_read_input_tokens`) and
//!   cache writes (`cache_creation_input_tokens`); cache reads do not count toward ITPM.

use crate::sqlstate::{HasSqlState, SqlState};
use rust_decimal::Decimal;
use serde_json::{Map, Value};
use std::fmt;
use std::str::FromStr;

/// No single call uses more; larger numbers are a bug or an attack on the arithmetic.
pub const MAX_TOKENS_PER_CALL: u64 = 100_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    OpenAi,
    Anthropic,
    /// vLLM, Ollama, llama.cpp server...: OpenAI's wire format and counting rules.
    OpenAiCompatible,
}

impl FromStr for Provider {
    type Err = UsageError;

    fn from_str(name: &str) -> Result<Provider, UsageError> {
        match name {
            "openai" => Ok(Provider::OpenAi),
            "anthropic" => Ok(Provider::Anthropic),
            "openai_compatible" => Ok(Provider::OpenAiCompatible),
            other => Err(UsageError::UnknownProvider(other.to_string())),
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::OpenAiCompatible => "openai_compatible",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("unknown provider \"{0}\"")]
    UnknownProvider(String),
    #[error("usage must be a JSON object")]
    NotAnObject,
    #[error("usage field \"{0}\" is missing")]
    Missing(&'static str),
    #[error("usage field \"{field}\" must be a whole number of tokens from 0 to {max}")]
    BadCount { field: &'static str, max: u64 },
    #[error("usage is inconsistent: {0}")]
    Inconsistent(&'static str),
    #[error("price rates must be finite and non-negative")]
    InvalidRate,
    #[error("usage is not valid JSON")]
    NotJson,
    #[error("cost is out of range")]
    Overflow,
    #[error("{0} must not be null")]
    NullArgument(&'static str),
}

impl HasSqlState for UsageError {
    fn sqlstate(&self) -> SqlState {
        match self {
            UsageError::Overflow => SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
            UsageError::NullArgument(_) => SqlState::NULL_VALUE_NOT_ALLOWED,
            _ => SqlState::INVALID_PARAMETER_VALUE,
        }
    }

    fn detail(&self) -> Option<String> {
        Some(match self {
            UsageError::UnknownProvider(_) => {
                "Known providers are openai, anthropic and openai_compatible.".to_string()
            }
            UsageError::NotAnObject | UsageError::NotJson | UsageError::Missing(_) | UsageError::BadCount { .. } => {
                "Pass the provider's usage object as it arrived: OpenAI Chat Completions \
                 (prompt_tokens, completion_tokens), OpenAI Responses (input_tokens, output_tokens) \
                 or Anthropic Messages (input_tokens, output_tokens, cache_read_input_tokens, \
                 cache_creation_input_tokens)."
                    .to_string()
            }
            UsageError::Inconsistent(_) => {
                "The usage object contradicts itself, so its cost cannot be computed.".to_string()
            }
            UsageError::InvalidRate => "A price is a finite, non-negative number of USD per million tokens.".to_string(),
            UsageError::Overflow => "These rates and token counts give a cost too large to represent.".to_string(),
            UsageError::NullArgument(_) => {
                "Pricing needs the provider, the usage object and the input and output rates.".to_string()
            }
        })
    }
}

/// Token counts by how they are billed. Every count is disjoint from the others, except
/// `reasoning`, which is the part of `output` spent on reasoning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NormalizedUsage {
    /// Input billed at the full input rate.
    pub input: u64,
    /// Input read from the prompt cache.
    pub cached_input: u64,
    /// Input written to the prompt cache (Anthropic's 5-minute cache).
    pub cache_write: u64,
    /// Input written to Anthropic's 1-hour cache: billed at twice the input rate.
    pub cache_write_1h: u64,
    pub output: u64,
    pub reasoning: u64,
    /// Input tokens the provider counts toward its input-tokens-per-minute limit.
    pub itpm_counted: u64,
}

impl NormalizedUsage {
    pub fn output_counted(&self) -> u64 {
        self.output
    }
}

/// USD per million tokens. A missing cached or cache-write rate bills those tokens at the input rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    pub input: Decimal,
    pub output: Decimal,
    pub cached_input: Option<Decimal>,
    pub cache_write: Option<Decimal>,
}

impl Rates {
    fn check(&self) -> Result<(), UsageError> {
        let all = [
            Some(self.input),
            Some(self.output),
            self.cached_input,
            self.cache_write,
        ];
        if all
            .into_iter()
            .flatten()
            .any(|r| r.is_sign_negative() && !r.is_zero())
        {
            return Err(UsageError::InvalidRate);
        }
        Ok(())
    }
}

/// Parses and normalises a usage object given as JSON text. Numbers serde_json cannot hold and
/// nesting past its recursion limit are refused like any other malformed usage.
pub fn normalize_text(provider: Provider, usage: &str) -> Result<NormalizedUsage, UsageError> {
    let value: Value = serde_json::from_str(usage).map_err(|_| UsageError::NotJson)?;
    normalize(provider, &value)
}

/// Reads a provider's usage object by that provider's counting rules.
pub fn normalize(provider: Provider, usage: &Value) -> Result<NormalizedUsage, UsageError> {
    let object = usage.as_object().ok_or(UsageError::NotAnObject)?;
    match provider {
        Provider::OpenAi | Provider::OpenAiCompatible => normalize_openai(object),
        Provider::Anthropic => normalize_anthropic(object),
    }
}

fn normalize_openai(usage: &Map<String, Value>) -> Result<NormalizedUsage, UsageError> {
    // Chat Completions says prompt/completion, Responses says input/output.
    let (total_input, cached, output, reasoning) = if usage.contains_key("prompt_tokens") {
        (
            count(usage, "prompt_tokens")?,
            nested_count(usage, "prompt_tokens_details", "cached_tokens")?,
            // Embeddings report no completion tokens.
            optional_count(usage, "completion_tokens")?.unwrap_or(0),
            nested_count(usage, "completion_tokens_details", "reasoning_tokens")?,
        )
    } else {
        (
            count(usage, "input_tokens")?,
            nested_count(usage, "input_tokens_details", "cached_tokens")?,
            count(usage, "output_tokens")?,
            nested_count(usage, "output_tokens_details", "reasoning_tokens")?,
        )
    };
    if cached > total_input {
        return Err(UsageError::Inconsistent(
            "more cached tokens than input tokens",
        ));
    }
    if reasoning > output {
        return Err(UsageError::Inconsistent(
            "more reasoning tokens than output tokens",
        ));
    }
    Ok(NormalizedUsage {
        input: total_input - cached,
        cached_input: cached,
        cache_write: 0,
        cache_write_1h: 0,
        output,
        reasoning,
        // OpenAI counts the whole prompt, cached or not, toward its token limits.
        itpm_counted: total_input,
    })
}

fn normalize_anthropic(usage: &Map<String, Value>) -> Result<NormalizedUsage, UsageError> {
    let input = count(usage, "input_tokens")?;
    let output = count(usage, "output_tokens")?;
    let cache_read = optional_count(usage, "cache_read_input_tokens")?.unwrap_or(0);
    let cache_creation = optional_count(usage, "cache_creation_input_tokens")?.unwrap_or(0);
    // Newer responses split cache writes by lifetime; the 1-hour cache costs twice the input rate.
    let write_1h = nested_count(usage, "cache_creation", "ephemeral_1h_input_tokens")?;
    if write_1h > cache_creation {
        return Err(UsageError::Inconsistent(
            "more 1-hour cache writes than cache writes",
        ));
    }
    Ok(NormalizedUsage {
        input,
        cached_input: cache_read,
        cache_write: cache_creation - write_1h,
        cache_write_1h: write_1h,
        output,
        reasoning: 0,
        // Cache reads do not count toward Anthropic's ITPM; cache writes do.
        itpm_counted: checked_sum(&[input, cache_creation])?,
    })
}

/// Cost in USD of a normalised usage at the given rates.
pub fn cost(usage: &NormalizedUsage, rates: &Rates) -> Result<Decimal, UsageError> {
    rates.check()?;
    let terms = [
        (rates.input, usage.input),
        (
            rates.cached_input.unwrap_or(rates.input),
            usage.cached_input,
        ),
        (rates.cache_write.unwrap_or(rates.input), usage.cache_write),
        (
            rates
                .input
                .checked_mul(Decimal::TWO)
                .ok_or(UsageError::Overflow)?,
            usage.cache_write_1h,
        ),
        (rates.output, usage.output),
    ];
    let mut total = Decimal::ZERO;
    for (rate, tokens) in terms {
        let term = rate
            .checked_mul(Decimal::from(tokens))
            .ok_or(UsageError::Overflow)?;
        total = total.checked_add(term).ok_or(UsageError::Overflow)?;
    }
    Ok((total / Decimal::from(1_000_000u32)).normalize())
}

/// The admission estimate: every input token at the input rate, every allowed output token at
/// the output rate (the most the call can cost, short of cache writes).
pub fn estimate(est_input: u64, max_output: u64, rates: &Rates) -> Result<Decimal, UsageError> {
    let usage = NormalizedUsage {
        input: est_input,
        output: max_output,
        ..Default::default()
    };
    cost(&usage, rates)
}

fn count(usage: &Map<String, Value>, field: &'static str) -> Result<u64, UsageError> {
    optional_count(usage, field)?.ok_or(UsageError::Missing(field))
}

fn optional_count(
    usage: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<u64>, UsageError> {
    match usage.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .filter(|n| *n <= MAX_TOKENS_PER_CALL)
            .map(Some)
            .ok_or(UsageError::BadCount {
                field,
                max: MAX_TOKENS_PER_CALL,
            }),
    }
}

/// A count inside an optional details object; absent means zero.
fn nested_count(
    usage: &Map<String, Value>,
    object: &'static str,
    field: &'static str,
) -> Result<u64, UsageError> {
    match usage.get(object) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Object(details)) => Ok(optional_count(details, field)?.unwrap_or(0)),
        Some(_) => Err(UsageError::BadCount {
            field: object,
            max: MAX_TOKENS_PER_CALL,
        }),
    }
}

fn checked_sum(parts: &[u64]) -> Result<u64, UsageError> {
    let sum: u64 = parts.iter().sum();
    if sum > MAX_TOKENS_PER_CALL {
        return Err(UsageError::Inconsistent(
            "more tokens than one call can use",
        ));
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rates(input: &str, output: &str, cached: Option<&str>, write: Option<&str>) -> Rates {
        Rates {
            input: input.parse().unwrap(),
            output: output.parse().unwrap(),
            cached_input: cached.map(|c| c.parse().unwrap()),
            cache_write: write.map(|w| w.parse().unwrap()),
        }
    }

    /// What a usage costs, with its normalised counts, for the snapshots.
    fn priced(provider: Provider, usage: Value, rates: &Rates) -> String {
        let normalized = normalize(provider, &usage).unwrap();
        format!(
            "{normalized:#?}\ncost_usd = {}",
            cost(&normalized, rates).unwrap()
        )
    }

    // Usage objects below are the providers' documented examples.

    #[test]
    fn openai_chat_completions_with_cached_and_reasoning_tokens() {
        let gpt_4o = rates("2.50", "10.00", Some("1.25"), None);
        insta::assert_snapshot!(priced(
            Provider::OpenAi,
            json!({
                "prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
                "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                    "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
            }),
            &gpt_4o
        ));
        let o3 = rates("2.00", "8.00", Some("0.50"), None);
        insta::assert_snapshot!(priced(
            Provider::OpenAi,
            json!({"prompt_tokens": 75, "completion_tokens": 1186, "total_tokens": 1261,
                   "prompt_tokens_details": {"cached_tokens": 0},
                   "completion_tokens_details": {"reasoning_tokens": 1024}}),
            &o3
        ));
    }

    #[test]
    fn openai_responses_api() {
        let gpt_41 = rates("2.00", "8.00", Some("0.50"), None);
        insta::assert_snapshot!(priced(
            Provider::OpenAi,
            json!({"input_tokens": 36, "input_tokens_details": {"cached_tokens": 0},
                   "output_tokens": 87, "output_tokens_details": {"reasoning_tokens": 0},
                   "total_tokens": 123}),
            &gpt_41
        ));
    }

    #[test]
    fn openai_embeddings_have_no_completion_tokens() {
        let small = rates("0.02", "0", None, None);
        insta::assert_snapshot!(priced(
            Provider::OpenAi,
            json!({"prompt_tokens": 8, "total_tokens": 8}),
            &small
        ));
    }

    #[test]
    fn anthropic_messages_with_cache_write_and_read() {
        let sonnet = rates("3.00", "15.00", Some("0.30"), Some("3.75"));
        insta::assert_snapshot!(priced(
            Provider::Anthropic,
            json!({"input_tokens": 21, "cache_creation_input_tokens": 188086,
                   "cache_read_input_tokens": 0, "output_tokens": 393}),
            &sonnet
        ));
        insta::assert_snapshot!(priced(
            Provider::Anthropic,
            json!({"input_tokens": 50, "cache_creation_input_tokens": 0,
                   "cache_read_input_tokens": 100000, "output_tokens": 503}),
            &sonnet
        ));
        insta::assert_snapshot!(priced(
            Provider::Anthropic,
            json!({"input_tokens": 10, "cache_creation_input_tokens": 3000,
                   "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
                   "cache_read_input_tokens": 0, "output_tokens": 20}),
            &sonnet
        ));
    }

    #[test]
    fn the_same_numbers_mean_different_things_per_provider() {
        // 1,000 input of which 800 cached: OpenAI bills 200 at full rate, Anthropic all 1,000.
        let openai = normalize(
            Provider::OpenAi,
            &json!({"prompt_tokens": 1000, "completion_tokens": 0, "prompt_tokens_details": {"cached_tokens": 800}}),
        )
        .unwrap();
        assert_eq!(
            (openai.input, openai.cached_input, openai.itpm_counted),
            (200, 800, 1000)
        );
        let anthropic = normalize(
            Provider::Anthropic,
            &json!({"input_tokens": 1000, "output_tokens": 0, "cache_read_input_tokens": 800}),
        )
        .unwrap();
        assert_eq!(
            (
                anthropic.input,
                anthropic.cached_input,
                anthropic.itpm_counted
            ),
            (1000, 800, 1000)
        );
    }

    #[test]
    fn cache_reads_do_not_count_toward_anthropic_itpm() {
        let usage = normalize(
            Provider::Anthropic,
            &json!({"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 90000,
                    "cache_creation_input_tokens": 40}),
        )
        .unwrap();
        assert_eq!(usage.itpm_counted, 50);
    }

    #[test]
    fn missing_rates_bill_at_the_input_rate() {
        let no_discount = rates("1", "2", None, None);
        let usage = NormalizedUsage {
            cached_input: 1_000_000,
            cache_write: 1_000_000,
            ..Default::default()
        };
        assert_eq!(cost(&usage, &no_discount).unwrap(), Decimal::from(2));
    }

    #[test]
    fn estimate_is_input_plus_max_output() {
        let gpt_4o = rates("2.50", "10.00", Some("1.25"), None);
        assert_eq!(
            estimate(1000, 500, &gpt_4o).unwrap(),
            "0.0075".parse::<Decimal>().unwrap()
        );
    }

    #[test]
    fn bad_usage_is_refused_with_22023() {
        let cases = [
            (Provider::OpenAi, json!([1, 2])),
            (Provider::OpenAi, json!({"completion_tokens": 3})),
            (
                Provider::OpenAi,
                json!({"prompt_tokens": -1, "completion_tokens": 3}),
            ),
            (
                Provider::OpenAi,
                json!({"prompt_tokens": 1.5, "completion_tokens": 3}),
            ),
            (
                Provider::OpenAi,
                json!({"prompt_tokens": "10", "completion_tokens": 3}),
            ),
            (
                Provider::OpenAi,
                json!({"prompt_tokens": 1e300, "completion_tokens": 3}),
            ),
            (
                Provider::OpenAi,
                json!({"prompt_tokens": 100_000_001u64, "completion_tokens": 3}),
            ),
            (
                Provider::OpenAi,
                json!({"prompt_tokens": 10, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 11}}),
            ),
            (
                Provider::OpenAi,
                json!({"prompt_tokens": 10, "completion_tokens": 3, "completion_tokens_details": {"reasoning_tokens": 4}}),
            ),
            (
                Provider::OpenAi,
                json!({"prompt_tokens": 10, "completion_tokens": 3, "prompt_tokens_details": 7}),
            ),
            (Provider::Anthropic, json!({"input_tokens": 10})),
            (
                Provider::Anthropic,
                json!({"input_tokens": 10, "output_tokens": 1, "cache_read_input_tokens": -5}),
            ),
            (
                Provider::Anthropic,
                json!({"input_tokens": 99_999_999u64, "output_tokens": 1, "cache_creation_input_tokens": 99_999_999u64}),
            ),
        ];
        for (provider, usage) in cases {
            let err = normalize(provider, &usage).unwrap_err();
            assert_eq!(err.sqlstate(), SqlState::INVALID_PARAMETER_VALUE, "{usage}");
        }
        assert!("mistral".parse::<Provider>().is_err());
        let deep = format!(
            "{{\"prompt_tokens\": {}1{}, \"completion_tokens\": 1}}",
            "[".repeat(300),
            "]".repeat(300)
        );
        assert_eq!(
            normalize_text(Provider::OpenAi, &deep),
            Err(UsageError::NotJson)
        );
        assert_eq!(
            normalize_text(
                Provider::OpenAi,
                r#"{"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 1e400}"#
            ),
            Err(UsageError::NotJson)
        );
        let huge = Rates {
            input: Decimal::from_str("1e25").unwrap(),
            ..rates("1", "1", None, None)
        };
        let usage = NormalizedUsage {
            input: MAX_TOKENS_PER_CALL,
            ..Default::default()
        };
        let overflow = cost(&usage, &huge).unwrap_err();
        assert_eq!(overflow.sqlstate(), SqlState::NUMERIC_VALUE_OUT_OF_RANGE);
        let negative = rates("-1", "1", None, None);
        assert_eq!(
            cost(&NormalizedUsage::default(), &negative),
            Err(UsageError::InvalidRate)
        );
    }
}
