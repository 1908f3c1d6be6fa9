//! `bulkhead.price_usage(...)`: a provider usage object, normalised and priced by the policy crate.

use crate::errors;
use bulkhead_policy::usage::{self, Provider, Rates, UsageError};
use pgrx::prelude::*;
use pgrx::{AnyNumeric, JsonB};
use rust_decimal::Decimal;
use std::str::FromStr;

fn decimal(value: &AnyNumeric) -> Result<Decimal, UsageError> {
    // NaN and infinities have no Decimal form: they are not prices.
    Decimal::from_str(&value.to_string())
        .or_else(|_| Decimal::from_scientific(&value.to_string()))
        .map_err(|_| UsageError::InvalidRate)
}

/// Normalises `usage` by `provider`'s counting rules and prices it at the given rates.
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)]
pub fn price_usage(
    provider: &str,
    usage: JsonB,
    input_per_mtok: AnyNumeric,
    output_per_mtok: AnyNumeric,
    cached_input_per_mtok: default!(Option<AnyNumeric>, "NULL"),
    cache_write_per_mtok: default!(Option<AnyNumeric>, "NULL"),
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
        let provider = Provider::from_str(provider)?;
        let rates = Rates {
            input: decimal(&input_per_mtok)?,
            output: decimal(&output_per_mtok)?,
            cached_input: cached_input_per_mtok.as_ref().map(decimal).transpose()?,
            cache_write: cache_write_per_mtok.as_ref().map(decimal).transpose()?,
        };
        let counts = usage::normalize(provider, &usage.0)?;
        let cost = usage::cost(&counts, &rates)?;
        Ok((counts, cost))
    })();
    let (counts, cost) = priced.unwrap_or_else(|err| errors::raise(&err));
    let cost = AnyNumeric::try_from(cost.to_string().as_str()).expect("a Decimal prints as a numeric");
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
