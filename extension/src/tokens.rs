//! `bulkhead._input_token_bound(...)`: an upper bound on the input tokens a provider bills for
//! some texts, by the policy crate's rules (`bulkhead_policy::tokens`: the model's own tokenizer
//! where one is known, the byte bound otherwise, plus framing). SQL reaches it through
//! `bulkhead.input_token_bound(model, inputs, chat)`, which looks up the model's provider.

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
