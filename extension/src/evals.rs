//! Eval assertions in the database, over `bulkhead_policy::evals`: checked when a case is added
//! and scored when a run's call comes back, so the release gate's verdict is computed here from
//! what was stored, never taken from a client.

use crate::errors;
use bulkhead_policy::evals::{self, Assertion, EvalError, Observation};
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Source bytes of parsed assertion lists a backend keeps: a case is scored once per attempt
/// and again when reused, and compiling a pattern or a schema costs far more than running it.
const PARSED_CACHE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Default)]
struct ParsedCache {
    by_source: HashMap<String, Rc<Vec<Assertion>>>,
    bytes: usize,
}

thread_local! {
    static PARSED: RefCell<ParsedCache> = RefCell::new(ParsedCache::default());
}

/// The parsed assertions, from this backend's cache or parsed now (raising 22023 if malformed).
fn parsed(source: &str) -> Rc<Vec<Assertion>> {
    if let Some(hit) = PARSED.with(|c| c.borrow().by_source.get(source).cloned()) {
        return hit;
    }
    let list = Rc::new(evals::parse_assertions(source).unwrap_or_else(|err| errors::raise(&err)));
    PARSED.with(|c| {
        let mut cache = c.borrow_mut();
        if cache.bytes + source.len() > PARSED_CACHE_BYTES {
            cache.by_source.clear();
            cache.bytes = 0;
        }
        if source.len() <= PARSED_CACHE_BYTES {
            cache.bytes += source.len();
            cache.by_source.insert(source.to_string(), Rc::clone(&list));
        }
    });
    list
}

/// Refuses malformed assertions (22023, naming the assertion's index and what is wrong).
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn _eval_check_assertions(assertions: &str) {
    if let Err(err) = evals::parse_assertions(assertions) {
        errors::raise(&err);
    }
}

/// Scores assertions (JSON text) against an observation (JSON text) and the provider's answer
/// message (JSON text, read only if a `tool_call` assertion needs it: a message nested too deep
/// to read then fails that assertion, not the case's others): a JSON array with one
/// `{"type", "passed", "detail"}` per assertion, in order.
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn _eval_score(
    assertions: Option<&str>,
    observation: Option<&str>,
    message: Option<&str>,
) -> String {
    let (Some(assertions), Some(observation)) = (assertions, observation) else {
        errors::raise(&EvalError::Null("assertions and observation"));
    };
    let list = parsed(assertions);
    let mut seen = Observation::from_json(observation).unwrap_or_else(|err| errors::raise(&err));
    if list.iter().any(|a| matches!(a, Assertion::ToolCall { .. })) {
        seen.message = message.and_then(|m| serde_json::from_str(m).ok());
    }
    let verdicts: Vec<serde_json::Value> = evals::score(&list, &seen, &|| {
        pgrx::check_for_interrupts!();
    })
    .into_iter()
    .map(|v| serde_json::json!({"type": v.kind, "passed": v.passed, "detail": v.detail}))
    .collect();
    serde_json::Value::Array(verdicts).to_string()
}

/// The judge's instruction and the user message holding the rubric and the answer.
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn _eval_judge_messages(rubric: &str, output: &str) -> Vec<String> {
    let (system, user) = evals::judge_messages(rubric, output);
    vec![system, user]
}

/// A judge's reply read strictly: `{"score", "reason"}`, or `{"error"}` when it gave no score.
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn _eval_judge_score(reply: &str) -> String {
    match evals::judge_score(reply) {
        Ok((score, reason)) => serde_json::json!({"score": score, "reason": reason}),
        Err(error) => serde_json::json!({"error": error}),
    }
    .to_string()
}
