//! `bulkhead._price_usage(...)`: a provider usage object, normalised and priced by the policy
//! crate. SQL calls it through `bulkhead.price_usage(provider, usage jsonb, ...)`, which passes
//! the usage as text so that numbers jsonb holds but serde_json cannot (1e400) and deep nesting
//! are refused as malformed usage (22023) rather than failing inside pgrx's conversion.

use crate::errors;
use bulkhead_policy::usage::{self, Provider, Rates, UsageError};
use pgrx::prelude::*;
use pgrx::AnyNumeric;
use rust_decimal::Decimal;
use std::str::FromStr;

fn decimal(value: &AnyNumeric) -> Result<Decimal, UsageError> {
    // NaN, infinities and more than 28 significant digits have no exact Decimal form.
    Decimal::from_str_exact(&value.to_string()).map_err(|_| UsageError::InvalidRate)
}

fn required<T>(value: Option<T>, name: &'static str) -> Result<T, UsageError> {
    value.ok_or(UsageError::NullArgument(name))
}

/// Normalises `usage` by `provider`'s counting rules and prices it at the given rates.
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)]
pub fn _price_usage(
    provider: Option<&str>,
    usage: Option<&str>,
    input_per_mtok: Option<AnyNumeric>,
    output_per_mtok: Option<AnyNumeric>,
    cached_input_per_mtok: Option<AnyNumeric>,
    cache_write_per_mtok: Option<AnyNumeric>,
) -> TableIterator<
    'static,
    (
        name!(input_tokens, i64),
        name!(cached_input_tokens, i64),
        name!(cache_write_tokens, i64),
        name!(output_tokens, i64),
        name!(reasoning_tokens, i64),
        name!(itpm_tokens, i64),
        name!(cost_usd, AnyNumeric),
    ),
> {
    let priced = (|| -> Result<_, UsageError> {
        let provider = Provider::from_str(required(provider, "provider")?)?;
        let usage = required(usage, "usage")?;
        let rates = Rates {
            input: decimal(&required(input_per_mtok, "input_per_mtok")?)?,
            output: decimal(&required(output_per_mtok, "output_per_mtok")?)?,
            cached_input: cached_input_per_mtok.as_ref().map(decimal).transpose()?,
            cache_write: cache_write_per_mtok.as_ref().map(decimal).transpose()?,
        };
        let counts = usage::normalize_text(provider, usage)?;
        let cost = usage::cost(&counts, &rates)?;
        let cost =
            AnyNumeric::try_from(cost.to_string().as_str()).map_err(|_| UsageError::Overflow)?;
        Ok((counts, cost))
    })();
    let (counts, cost) = priced.unwrap_or_else(|err| errors::raise(&err));
    // Counts are capped at MAX_TOKENS_PER_CALL, far below i64::MAX.
    let as_i64 = |n: u64| n as i64;
    TableIterator::once((
        as_i64(counts.input),
        as_i64(counts.cached_input),
        as_i64(counts.cache_write + counts.cache_write_1h),
        as_i64(counts.output),
        as_i64(counts.reasoning),
        as_i64(counts.itpm_counted),
        cost,
    ))
}
