//! Keys the program holds, and the redaction of every text it writes anywhere (job rows, which
//! tenants read; logs, which operators read) against all of them.
//!
//! A provider may echo a key whole, in part ("sk-ab***yz", "Incorrect API key: 1a2b3c4d..."),
//! or in a body longer than we keep. So a text is redacted in full before it is cut, and:
//! - text bound for the log ([`redact`]) against every key the process holds (each registered the
//!   moment it becomes a [`Secret`]) and every fragment of one of at least [`MIN_FRAGMENT`] bytes;
//! - text a tenant reads, a job's error ([`redact_for_tenant`]), against the key of that call
//!   only, whole and in fragments. Redacting it against the other tenants' keys too would be an
//!   oracle: a provider that echoes request text would tell a tenant which 8-byte guesses match
//!   another tenant's key ("sk-proj-" is a known start), one character at a time;
//! - both against words shaped like keys, whoever's: `sk-...`, what follows `Bearer ` or an
//!   `api_key` label, and any long random-looking word (24 or more key characters with letters
//!   and digits), which is what every provider's keys look like.

use std::collections::HashSet;
use std::fmt;
use std::sync::{OnceLock, RwLock};

/// The shortest run of a key's bytes that counts as a fragment of it.
pub const MIN_FRAGMENT: usize = 8;
/// How many distinct keys are remembered; beyond it the oldest are forgotten (a worker serving
/// more tenants than this re-registers a key whenever it resolves it again).
const MAX_HELD: usize = 16_384;
const REDACTED: &str = "[redacted]";
/// A word of key characters at least this long, with letters and digits, is taken for a key.
const LONG_TOKEN: usize = 24;

/// An API key, resolved at call time. Never printed: Debug shows nothing of it. Creating one
/// registers it, so that no text this process writes can carry it afterwards.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(key: String) -> Self {
        held().register(&key);
        Secret(key)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Every key registered so far, as the set of its MIN_FRAGMENT-byte windows (a fragment of a key
/// is a run of overlapping windows, all of them the key's), plus short keys whole.
#[derive(Default)]
struct Held {
    inner: RwLock<HeldKeys>,
}

#[derive(Default)]
struct HeldKeys {
    order: Vec<String>,
    keys: HashSet<String>,
    windows: HashSet<[u8; MIN_FRAGMENT]>,
}

fn held() -> &'static Held {
    static HELD: OnceLock<Held> = OnceLock::new();
    HELD.get_or_init(Held::default)
}

impl Held {
    fn register(&self, key: &str) {
        let key = key.trim();
        if key.is_empty() {
            return;
        }
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if inner.keys.contains(key) {
            return;
        }
        if inner.order.len() >= MAX_HELD {
            let forget = inner.order.len() / 4;
            inner.order.drain(..forget);
            let order = std::mem::take(&mut inner.order);
            *inner = HeldKeys::default();
            for key in order {
                inner.add(key);
            }
        }
        inner.add(key.to_string());
    }
}

impl HeldKeys {
    fn add(&mut self, key: String) {
        for window in key.as_bytes().windows(MIN_FRAGMENT) {
            self.windows
                .insert(window.try_into().expect("windows are MIN_FRAGMENT long"));
        }
        self.keys.insert(key.clone());
        self.order.push(key);
    }
}

/// Redacts text bound for the log against every key this process holds, then key shapes.
pub fn redact(text: &str) -> String {
    let inner = held().inner.read().unwrap_or_else(|p| p.into_inner());
    redact_against(text, &inner, false)
}

/// Redacts text a tenant reads against the call's own key (if any) and key shapes only.
pub fn redact_for_tenant(text: &str, own_key: Option<&str>) -> String {
    let mut own = HeldKeys::default();
    if let Some(key) = own_key.map(str::trim).filter(|k| !k.is_empty()) {
        own.add(key.to_string());
    }
    redact_against(text, &own, true)
}

/// Redacts for a tenant, then cuts to at most `max_chars` characters: never the other way
/// round, or a key straddling the cut would survive in part.
pub fn redact_for_tenant_and_cut(text: &str, own_key: Option<&str>, max_chars: usize) -> String {
    let redacted = redact_for_tenant(text, own_key);
    match redacted.char_indices().nth(max_chars) {
        Some((end, _)) => redacted[..end].to_string(),
        None => redacted,
    }
}

/// `long_tokens`: also every long random-looking word (text for tenants, which is not redacted
/// against the keys of others).
fn redact_against(text: &str, held: &HeldKeys, long_tokens: bool) -> String {
    let bytes = text.as_bytes();
    let mut covered = vec![false; bytes.len()];
    for (at, window) in bytes.windows(MIN_FRAGMENT).enumerate() {
        let window: [u8; MIN_FRAGMENT] = window.try_into().expect("windows are MIN_FRAGMENT long");
        if held.windows.contains(&window) {
            covered[at..at + MIN_FRAGMENT].fill(true);
        }
    }
    // Keys shorter than a fragment can only be matched whole.
    for key in held
        .keys
        .iter()
        .filter(|k| k.len() < MIN_FRAGMENT && k.len() >= 4)
    {
        for (at, _) in text.match_indices(key.as_str()) {
            covered[at..at + key.len()].fill(true);
        }
    }
    cover_key_shapes(text, &mut covered, long_tokens);
    let mut out = String::with_capacity(text.len());
    let mut in_redaction = false;
    for (at, ch) in text.char_indices() {
        // A character is covered if any of its bytes is: a cut never lands inside one.
        if covered[at..at + ch.len_utf8()].iter().any(|c| *c) {
            if !in_redaction {
                out.push_str(REDACTED);
                in_redaction = true;
            }
        } else {
            in_redaction = false;
            out.push(ch);
        }
    }
    out
}

/// Words shaped like keys of any provider: `sk-...` (OpenAI, Anthropic `sk-ant-...`), and
/// whatever follows `Bearer ` or an `api-key`/`api_key` label.
fn cover_key_shapes(text: &str, covered: &mut [bool], long_tokens: bool) {
    let lower = text.to_ascii_lowercase();
    let is_key_char = |c: u8| {
        c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'*' | b'+' | b'/' | b'=')
    };
    let word_end = |from: usize| {
        lower.as_bytes()[from..]
            .iter()
            .position(|c| !is_key_char(*c))
            .map_or(lower.len(), |n| from + n)
    };
    // Long random-looking words: every provider's keys, whatever their prefix. Not uuids (ids of
    // jobs, tenants, reservations), which error texts name and which are not secrets.
    let bytes = lower.as_bytes();
    let mut at = if long_tokens { 0 } else { bytes.len() };
    while at < bytes.len() {
        if !is_key_char(bytes[at]) {
            at += 1;
            continue;
        }
        let end = word_end(at);
        let word = &bytes[at..end];
        if word.len() >= LONG_TOKEN
            && word.iter().any(u8::is_ascii_digit)
            && word.iter().any(u8::is_ascii_alphabetic)
            && !is_uuid(word)
        {
            covered[at..end].fill(true);
        }
        at = end;
    }
    for (at, _) in lower.match_indices("sk-") {
        let starts_word = at == 0 || !is_key_char(lower.as_bytes()[at - 1]);
        if starts_word {
            covered[at..word_end(at)].fill(true);
        }
    }
    for label in ["bearer ", "api-key", "api_key", "apikey", "x-api-key"] {
        for (at, _) in lower.match_indices(label) {
            // The value after the label and its separators (": ", "=", quotes).
            let mut from = at + label.len();
            while from < lower.len()
                && matches!(lower.as_bytes()[from], b' ' | b':' | b'=' | b'"' | b'\'')
            {
                from += 1;
            }
            let end = word_end(from);
            if end > from {
                covered[from..end].fill(true);
            }
        }
    }
}

/// A uuid in its canonical form (8-4-4-4-12 hex digits).
fn is_uuid(word: &[u8]) -> bool {
    word.len() == 36
        && word.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> HeldKeys {
        let mut held = HeldKeys::default();
        for key in list {
            held.add(key.to_string());
        }
        held
    }

    /// The old order: cut to 500 characters, then replace the whole key and `sk-` words.
    fn cut_then_redact(text: &str, key: &str) -> String {
        let cut: String = text.chars().take(500).collect();
        cut.replace(key, REDACTED)
    }

    #[test]
    fn a_key_straddling_the_cut_leaves_nothing() {
        let key = "proj9f2c41d07a6b4e21b0c9d8e7f6a5b4c3";
        let text = format!("{}{key} is not valid", "x".repeat(470));
        // The attack, against the old order: 30 of the key's characters survive.
        let leaked = cut_then_redact(&text, key);
        assert!(leaked.contains(&key[..30]), "the twin shows the leak");
        let mut held = keys(&[key]);
        let out = redact_against(&text, &held, false);
        let out: String = out.chars().take(500).collect();
        assert!(!out.contains(&key[..MIN_FRAGMENT]), "{out}");
        held.add("other-key-of-another-tenant".into());
        assert!(redact_against(&text, &held, false).contains(REDACTED));
    }

    #[test]
    fn fragments_of_held_keys_are_redacted_whatever_their_shape() {
        let key = "AbCdEf0123456789GhIjKlMnOp";
        let held = keys(&[key]);
        for echo in [
            format!("bad key {key}!"),
            format!(
                "Incorrect API key provided: {}****{}",
                &key[..9],
                &key[18..]
            ),
            format!("key prefix {}", &key[3..11]),
            format!("\"{}\"", &key[10..]),
        ] {
            let out = redact_against(&echo, &held, false);
            for window in key.as_bytes().windows(MIN_FRAGMENT) {
                let window = std::str::from_utf8(window).unwrap();
                assert!(!out.contains(window), "{window} survived in {out}");
            }
            assert!(out.contains(REDACTED), "{out}");
        }
        // Seven characters of a key are not a fragment; ordinary text is untouched.
        assert_eq!(redact_against("AbCdEf0 fine", &held, false), "AbCdEf0 fine");
    }

    #[test]
    fn key_shapes_go_even_for_keys_never_held() {
        let held = HeldKeys::default();
        let out = redact_against(
            "was it sk-ab***yz? or sk-ant-api03-xyz, Authorization: Bearer abc.def-123 api_key=zz9",
            &held,
            false,
        );
        for gone in ["sk-ab", "sk-ant", "abc.def", "zz9"] {
            assert!(!out.contains(gone), "{gone} in {out}");
        }
        assert!(
            out.starts_with("was it [redacted]? or [redacted],"),
            "{out}"
        );
        // "task-" is not a key.
        assert_eq!(redact_against("a task-list", &held, false), "a task-list");
    }

    #[test]
    fn tenant_facing_text_is_no_oracle_for_other_tenants_keys() {
        // The process holds A's key; tenant B's provider echoes B's prompt: guesses at A's key.
        let a_key = "sk-proj-Zq81xY7w";
        let held = keys(&[a_key]);
        let echo = "your prompt was: k-proj-Z k-proj-Q";
        // The twin: redacting against every held key answers B's guess ("k-proj-Z" matches).
        assert!(redact_against(echo, &held, false).contains(REDACTED));
        // What B reads is redacted against B's own key and shapes only: the same either way.
        assert_eq!(redact_for_tenant(echo, Some("sk-b-own-key-0000")), echo);
        // B's own key, echoed in part, still goes.
        let b_key = "bkey9f2c41d07a6b4e21b0c9";
        let out = redact_for_tenant(&format!("bad key {}...", &b_key[..10]), Some(b_key));
        assert!(!out.contains(&b_key[..8]), "{out}");
    }

    #[test]
    fn long_random_words_go_as_keys_of_any_shape() {
        let out = redact_for_tenant(
            "key AbC123dEf456GhI789jKl012mNo is wrong; model gpt-4o-mini-2024-07-18",
            None,
        );
        assert_eq!(out, "key [redacted] is wrong; model gpt-4o-mini-2024-07-18");
        let out = redact_for_tenant("Basic YWxhZGRpbjpvcGVuc2VzYW1lMTIzNDU2Nzg5MA==", None);
        assert!(!out.contains("YWxhZGRp"), "{out}");
    }

    #[test]
    fn cutting_respects_characters() {
        assert_eq!(redact_for_tenant_and_cut("héllo wörld", None, 4), "héll");
        let held = keys(&["ünïcödé-kéy-ünïcödé"]);
        let out = redact_against("x ünïcödé-kéy-ünïcödé y", &held, false);
        assert_eq!(out, "x [redacted] y");
    }
}
