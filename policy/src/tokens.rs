//! Upper bounds on the input tokens a provider will bill for a prompt, for admission.
//!
//! Admission reserves a call's worst case before it is made, and the prompt is built from text
//! end users supply, so the reservation must hold for any text: CJK, rare symbols, digit runs,
//! emoji, invalid-looking sequences. Two bounds, both of which hold for every input:
//! - **the model's own tokenizer**, for OpenAI models whose encoding is known (o200k_base,
//!   cl100k_base, via tiktoken-rs): the exact count of the text, plus the chat format's framing;
//! - **the byte bound** otherwise (Anthropic, OpenAI-compatible servers, unknown models): every
//!   byte-level BPE token covers at least one byte, so a text never has more tokens than bytes;
//!   plus the framing.
//!
//! Framing is what the provider adds around each message and the request (role markers, the
//! reply's priming). OpenAI documents 3 tokens per message plus 1 for a name, and 3 for the
//! reply; we reserve [`FRAMING_PER_MESSAGE`] and [`FRAMING_PER_REQUEST`], more than either
//! provider adds for plain chat messages. Tools, images and documents add more and are the
//! gateway's to bound.
//!
//! Counting is linear in the text: tiktoken's merge for long pieces is O(n log n), and a text
//! longer than [`MAX_TOKENIZED_BYTES`] takes the byte bound instead, so counting an end user's
//! text costs a bounded, small amount of CPU.

use tiktoken_rs::CoreBPE;

/// Tokens reserved for the framing of each message (OpenAI: 3, plus 1 for a name).
pub const FRAMING_PER_MESSAGE: u64 = 8;
/// Tokens reserved for the framing of the request (OpenAI: 3 for the reply's priming).
pub const FRAMING_PER_REQUEST: u64 = 8;
/// At most this many bytes of one call's texts are tokenized; the rest take the byte bound:
/// tokenizing costs CPU in the caller's backend (about 0.3 to 0.7 s per MiB).
pub const MAX_TOKENIZED_BYTES: usize = 1 << 20;

/// How a bound was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The model's tokenizer (named by its encoding).
    Tokenizer(&'static str),
    /// The byte length (no tokenizer known for the model, or the text is too long to tokenize).
    Bytes,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Tokenizer(encoding) => encoding,
            Method::Bytes => "bytes",
        }
    }
}

/// The encoding of a provider's model, where the bound may use it. Only OpenAI's own models: an
/// OpenAI-compatible server runs its own tokenizer, whatever the model is called.
fn encoding(provider: &str, model: &str) -> Option<(&'static str, &'static CoreBPE)> {
    if provider != "openai" {
        return None;
    }
    match tiktoken_rs::tokenizer::get_tokenizer(model)? {
        tiktoken_rs::tokenizer::Tokenizer::O200kBase => {
            Some(("o200k_base", tiktoken_rs::o200k_base_singleton()))
        }
        tiktoken_rs::tokenizer::Tokenizer::Cl100kBase => {
            Some(("cl100k_base", tiktoken_rs::cl100k_base_singleton()))
        }
        // Older encodings are not byte-level for every model that named them: the byte bound.
        _ => None,
    }
}

/// The tokens of `text` alone (no framing), and how they were found.
pub fn text_tokens(provider: &str, model: &str, text: &str) -> (u64, Method) {
    if text.len() <= MAX_TOKENIZED_BYTES {
        if let Some((name, bpe)) = encoding(provider, model) {
            // tiktoken unwraps its regex's matches, and fancy-regex gives up (an Err) past its
            // backtracking limit: an input built for that must cost a bound, not a panic.
            if let Ok(tokens) = std::panic::catch_unwind(|| bpe.encode_ordinary(text).len() as u64)
            {
                return (tokens, Method::Tokenizer(name));
            }
        }
    }
    (text.len() as u64, Method::Bytes)
}

/// The input tokens a chat request of `messages` (their texts) can be billed at most.
pub fn chat_input_bound<'a>(
    provider: &str,
    model: &str,
    messages: impl IntoIterator<Item = &'a str>,
    between: impl FnMut(),
) -> (u64, Method) {
    bound(
        provider,
        model,
        messages,
        FRAMING_PER_MESSAGE,
        FRAMING_PER_REQUEST,
        between,
    )
}

/// The input tokens an embeddings request of `inputs` can be billed at most (no framing:
/// embeddings count the inputs' tokens only).
pub fn embedding_input_bound<'a>(
    provider: &str,
    model: &str,
    inputs: impl IntoIterator<Item = &'a str>,
    between: impl FnMut(),
) -> (u64, Method) {
    bound(provider, model, inputs, 0, 0, between)
}

/// The texts' tokens plus framing; named by the weakest method any text needed. Once
/// MAX_TOKENIZED_BYTES of the texts were tokenized, the rest take the byte bound, so a call costs
/// bounded CPU however many texts it passes; `between` runs before each text (the extension
/// checks for query cancellation there).
fn bound<'a>(
    provider: &str,
    model: &str,
    texts: impl IntoIterator<Item = &'a str>,
    per_text: u64,
    per_request: u64,
    mut between: impl FnMut(),
) -> (u64, Method) {
    let mut method = match encoding(provider, model) {
        Some((name, _)) => Method::Tokenizer(name),
        None => Method::Bytes,
    };
    let mut total = per_request;
    let mut budget = MAX_TOKENIZED_BYTES;
    for text in texts {
        between();
        let (tokens, how) = if text.len() <= budget {
            budget -= text.len();
            text_tokens(provider, model, text)
        } else {
            budget = 0;
            (text.len() as u64, Method::Bytes)
        };
        total = total.saturating_add(tokens).saturating_add(per_text);
        if how == Method::Bytes {
            method = Method::Bytes;
        }
    }
    (total, method)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Texts chosen to tokenize badly: many tokens per character or per byte.
    fn adversarial() -> Vec<(&'static str, String)> {
        vec![
            (
                "cjk",
                "漢字仮名交じり文で書かれた長い質問です。".repeat(200),
            ),
            ("rare symbols", "⟁⟟⧖⧗⨳⩘⫷⫸⯑🜁🜂🜃🜄".repeat(300)),
            ("digits", "9".repeat(10_000)),
            (
                "mixed digits",
                (0..5_000).map(|i| (i * 7919 % 10).to_string()).collect(),
            ),
            ("emoji zwj", "👩‍👩‍👧‍👦🏳️‍🌈🧑🏽‍🚀".repeat(300)),
            ("combining", "é\u{301}\u{302}\u{303}\u{304}".repeat(1_000)),
            ("whitespace runs", " \t\n\u{a0}\u{3000}".repeat(2_000)),
            (
                "control bytes",
                (1u8..32).map(char::from).collect::<String>().repeat(300),
            ),
            ("one long word", "abcdefghijklmnopqrstuvwxyz".repeat(4_000)),
            (
                "special token text",
                "<|endoftext|><|fim_prefix|><|im_start|>".repeat(300),
            ),
            (
                "scattered code points",
                (0..20_000u64)
                    .filter_map(|i| char::from_u32(0x4e00 + (i * 2_654_435_761 % 0x5000) as u32))
                    .collect(),
            ),
            (
                "long whitespace then a word",
                format!("{}x", " ".repeat(200_000)),
            ),
        ]
    }

    #[test]
    fn the_tokenizer_never_exceeds_the_byte_bound_and_the_bound_is_what_is_billed() {
        for model in [
            "gpt-4o-mini",
            "gpt-4.1",
            "gpt-5",
            "gpt-4",
            "text-embedding-3-small",
        ] {
            for (name, text) in adversarial() {
                let (tokens, method) = text_tokens("openai", model, &text);
                assert!(matches!(method, Method::Tokenizer(_)), "{model} {name}");
                assert!(
                    tokens <= text.len() as u64,
                    "{model} {name}: {tokens} > {} bytes",
                    text.len()
                );
                // The bound of a one-message chat: the text's exact tokens plus framing that
                // covers OpenAI's documented 3 + 1 per message and 3 per request.
                let (bound, _) = chat_input_bound("openai", model, [text.as_str()], || {});
                assert!(bound >= tokens + 3 + 1 + 3, "{model} {name}");
            }
        }
    }

    #[test]
    fn the_old_estimate_falls_short_on_adversarial_text() {
        // The estimate complete() used: a third of the bytes plus 16. The twin of the tests above.
        let mut short = Vec::new();
        for (name, text) in adversarial() {
            let old = (text.len() as u64).div_ceil(3) + 16;
            let (real, _) = text_tokens("openai", "gpt-4o-mini", &text);
            if real > old {
                short.push(name);
            }
        }
        assert!(
            short.contains(&"rare symbols") && short.contains(&"emoji zwj"),
            "{short:?}"
        );
    }

    #[test]
    fn other_providers_and_unknown_models_take_the_byte_bound() {
        for (provider, model) in [
            ("anthropic", "claude-sonnet-4-5"),
            ("openai_compatible", "gpt-4o-mini"),
            ("openai", "some-future-model"),
        ] {
            let text = "漢字".repeat(10);
            assert_eq!(
                text_tokens(provider, model, &text),
                (text.len() as u64, Method::Bytes)
            );
            let (bound, method) = chat_input_bound(provider, model, [text.as_str(), "hi"], || {});
            assert_eq!(method, Method::Bytes);
            assert_eq!(
                bound,
                text.len() as u64 + 2 + 2 * FRAMING_PER_MESSAGE + FRAMING_PER_REQUEST
            );
        }
        let long = "a".repeat(MAX_TOKENIZED_BYTES + 1);
        assert_eq!(text_tokens("openai", "gpt-4o", &long).1, Method::Bytes);
        // The budget covers the whole call: many texts under the limit each are not all tokenized.
        let half = "ab".repeat(MAX_TOKENIZED_BYTES / 4 + 1);
        let mut calls = 0;
        let texts = [half.as_str(), half.as_str(), half.as_str()];
        let (bound, method) = chat_input_bound("openai", "gpt-4o", texts, || calls += 1);
        assert_eq!((method, calls), (Method::Bytes, 3));
        assert!(bound >= half.len() as u64 && bound <= 3 * half.len() as u64 + 32);
        let inputs = ["a b", "漢字", "⟁⟟⧖"];
        let (bound, method) =
            embedding_input_bound("openai", "text-embedding-3-small", inputs, || {});
        assert_eq!(method, Method::Tokenizer("cl100k_base"));
        assert!(
            bound >= 3 && bound <= inputs.iter().map(|t| t.len() as u64).sum(),
            "{bound}"
        );
    }
}
