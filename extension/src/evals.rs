//! Eval assertions in the database, over `bulkhead_policy::evals`: checked when a case is added
//! and scored when a run's call comes back, so the release gate's verdict is computed here from
//! what was stored, never taken from a client.

use crate::errors;
use bulkhead_policy::evals::{self, Observation};
use pgrx::prelude::*;

/// Refuses malformed assertions (22023, naming the assertion's index and what is wrong).
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn _eval_check_assertions(assertions: &str) {
    if let Err(err) = evals::parse_assertions(assertions) {
        errors::raise(&err);
    }
}

/// Scores assertions (JSON text) against an observation (JSON text): a JSON array with one
/// `{"type", "passed", "detail"}` per assertion, in order.
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn _eval_score(assertions: &str, observation: &str) -> String {
    let parsed = evals::parse_assertions(assertions).unwrap_or_else(|err| errors::raise(&err));
    let seen = Observation::from_json(observation).unwrap_or_else(|err| errors::raise(&err));
    let verdicts: Vec<serde_json::Value> = evals::score(&parsed, &seen)
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
