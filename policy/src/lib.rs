//! Bulkhead's policy logic: the rules that decide, kept free of Postgres and of any runtime so
//! that the extension and the daemon share one tested implementation.

pub mod admission;
pub mod context;
pub mod evals;
pub mod prompts;
pub mod requests;
pub mod sqlstate;
pub mod streams;
pub mod tokens;
pub mod usage;

pub use sqlstate::SqlState;
