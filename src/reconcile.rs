//! Usage reconciliation: what the providers counted for one UTC day, by project (OpenAI's
//! organization usage API) or workspace (Anthropic's usage report, or its newer analytics report
//! where the legacy one answers 404 or 410), handed to
//! `bulkhead.reconcile_usage`, which compares it with the ledger and records the drift.
//!
//! Needs the providers' admin keys (OPENAI_ADMIN_KEY, ANTHROPIC_ADMIN_KEY): the usage APIs do
//! not accept project or workspace keys.

use crate::providers::{self, CallError, Secret};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::Duration;

/// Pages read per report, at most: a day has one bucket, and a page holds many projects.
const MAX_PAGES: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{provider} usage API: {message}")]
    Provider { provider: String, message: String },
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// Anthropic's legacy usage report answered 404 or 410: the analytics report is read instead.
    #[error("anthropic usage API: the legacy usage report is not available")]
    LegacyReportGone,
}

/// The admin keys and where to reach the usage APIs (Debug shows no key: Secret hides it).
#[derive(Clone, Debug)]
pub struct UsageApis {
    pub openai_base: String,
    pub anthropic_base: String,
    pub openai_admin_key: Option<Secret>,
    pub anthropic_admin_key: Option<Secret>,
}

impl UsageApis {
    pub fn configured(&self) -> bool {
        self.openai_admin_key.is_some() || self.anthropic_admin_key.is_some()
    }
}

/// Per project: input tokens (cache reads and writes included), output tokens, requests.
type Totals = BTreeMap<String, (i64, i64, Option<i64>)>;

/// Reconciles one UTC day (YYYY-MM-DD) for every provider with an admin key; returns, per
/// provider, how many credentials disagree (None: that day was reconciled before).
pub async fn reconcile_day(
    pool: &PgPool,
    apis: &UsageApis,
    day: &str,
) -> Result<Vec<(&'static str, Option<i32>)>, ReconcileError> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .user_agent(concat!("bulkhead/", env!("CARGO_PKG_VERSION")))
        .build()?;
    // The day's bounds, computed (and validated) by PostgreSQL.
    let (start, next_day): (i64, String) = sqlx::query_as(
        "select extract(epoch from $1::pg_catalog.date::pg_catalog.timestamp at time zone 'UTC')::pg_catalog.int8,
                ($1::pg_catalog.date OPERATOR(pg_catalog.+) 1)::pg_catalog.text",
    )
    .bind(day)
    .fetch_one(pool)
    .await?;
    let mut outcome = Vec::new();
    if let Some(key) = &apis.openai_admin_key {
        let mut totals = Totals::new();
        for api in ["completions", "embeddings"] {
            openai_usage(&http, apis, key, api, start, &mut totals).await?;
        }
        outcome.push(("openai", record(pool, "openai", day, &totals).await?));
    }
    if let Some(key) = &apis.anthropic_admin_key {
        let totals = match anthropic_usage(&http, apis, key, day, &next_day).await {
            Err(ReconcileError::LegacyReportGone) => {
                anthropic_analytics_usage(&http, apis, key, day, &next_day).await?
            }
            other => other?,
        };
        outcome.push(("anthropic", record(pool, "anthropic", day, &totals).await?));
    }
    Ok(outcome)
}

async fn record(
    pool: &PgPool,
    provider: &str,
    day: &str,
    totals: &Totals,
) -> Result<Option<i32>, sqlx::Error> {
    let rows: Vec<Value> = totals
        .iter()
        .map(|(project, (input, output, requests))| {
            json!({"project_id": project, "input_tokens": input, "output_tokens": output, "requests": requests})
        })
        .collect();
    sqlx::query_scalar("select bulkhead.reconcile_usage($1, $2::date, $3)")
        .bind(provider)
        .bind(day)
        .bind(Value::Array(rows))
        .fetch_one(pool)
        .await
}

async fn get_json(
    request: reqwest::RequestBuilder,
    provider: &str,
) -> Result<Value, ReconcileError> {
    get_json_or_gone(request, provider, false).await
}

/// With `gone_is_distinct`, a 404 or 410 is ReconcileError::LegacyReportGone.
async fn get_json_or_gone(
    request: reqwest::RequestBuilder,
    provider: &str,
    gone_is_distinct: bool,
) -> Result<Value, ReconcileError> {
    let fail = |err: CallError| ReconcileError::Provider {
        provider: provider.to_string(),
        message: match err {
            CallError::RateLimited { message, .. }
            | CallError::Transient { message, .. }
            | CallError::Permanent { message, .. } => message,
        },
    };
    let response = request
        .send()
        .await
        .map_err(|err| fail(providers::transport_error(&err, None)))?;
    if gone_is_distinct && matches!(response.status().as_u16(), 404 | 410) {
        return Err(ReconcileError::LegacyReportGone);
    }
    if !response.status().is_success() {
        return Err(fail(
            providers::error_response(provider, response, None).await,
        ));
    }
    let body = providers::read_capped(response, 16 << 20)
        .await
        .map_err(|err| fail(providers::transport_error(&err, None)))?;
    serde_json::from_slice(&body).map_err(|_| ReconcileError::Provider {
        provider: provider.to_string(),
        message: "the usage report is not JSON".into(),
    })
}

/// GET /organization/usage/{completions,embeddings}, one day, grouped by project, all pages.
async fn openai_usage(
    http: &reqwest::Client,
    apis: &UsageApis,
    key: &Secret,
    api: &str,
    start: i64,
    totals: &mut Totals,
) -> Result<(), ReconcileError> {
    let url = format!(
        "{}/organization/usage/{api}",
        apis.openai_base.trim_end_matches('/')
    );
    let mut page: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut query = vec![
            ("start_time", start.to_string()),
            ("end_time", (start + 86_400).to_string()),
            ("bucket_width", "1d".to_string()),
            ("group_by", "project_id".to_string()),
        ];
        if let Some(page) = &page {
            query.push(("page", page.clone()));
        }
        let answer = get_json(
            http.get(&url).query(&query).bearer_auth(key.expose()),
            "openai",
        )
        .await?;
        for bucket in answer["data"].as_array().into_iter().flatten() {
            for result in bucket["results"].as_array().into_iter().flatten() {
                let project = result["project_id"].as_str().unwrap_or("").to_string();
                let entry = totals.entry(project).or_insert((0, 0, Some(0)));
                entry.0 += result["input_tokens"].as_i64().unwrap_or(0);
                entry.1 += result["output_tokens"].as_i64().unwrap_or(0);
                entry.2 =
                    Some(entry.2.unwrap_or(0) + result["num_model_requests"].as_i64().unwrap_or(0));
            }
        }
        match (answer["has_more"].as_bool(), answer["next_page"].as_str()) {
            (Some(true), Some(next)) => page = Some(next.to_string()),
            _ => return Ok(()),
        }
    }
    Err(too_many_pages("openai"))
}

/// Partial totals would be recorded as drift for good: stop instead.
fn too_many_pages(provider: &str) -> ReconcileError {
    ReconcileError::Provider {
        provider: provider.to_string(),
        message: format!("the usage report has more than {MAX_PAGES} pages; nothing was recorded"),
    }
}

/// GET /v1/organizations/usage_report/messages, one day, grouped by workspace, all pages.
/// The report has no request counts.
async fn anthropic_usage(
    http: &reqwest::Client,
    apis: &UsageApis,
    key: &Secret,
    day: &str,
    next_day: &str,
) -> Result<Totals, ReconcileError> {
    let url = format!(
        "{}/v1/organizations/usage_report/messages",
        apis.anthropic_base.trim_end_matches('/')
    );
    let mut totals = Totals::new();
    let mut page: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut query = vec![
            ("starting_at", format!("{day}T00:00:00Z")),
            ("ending_at", format!("{next_day}T00:00:00Z")),
            ("bucket_width", "1d".to_string()),
            ("group_by[]", "workspace_id".to_string()),
        ];
        if let Some(page) = &page {
            query.push(("page", page.clone()));
        }
        let answer = get_json_or_gone(
            http.get(&url)
                .query(&query)
                .header("x-api-key", key.expose())
                .header("anthropic-version", "2023-06-01"),
            "anthropic",
            page.is_none(),
        )
        .await?;
        for bucket in answer["data"].as_array().into_iter().flatten() {
            for result in bucket["results"].as_array().into_iter().flatten() {
                // The default workspace has no id.
                let workspace = result["workspace_id"]
                    .as_str()
                    .unwrap_or("default")
                    .to_string();
                let count = |v: &Value| v.as_i64().unwrap_or(0);
                let input = count(&result["uncached_input_tokens"])
                    + count(&result["cache_read_input_tokens"])
                    + count(&result["cache_creation"]["ephemeral_5m_input_tokens"])
                    + count(&result["cache_creation"]["ephemeral_1h_input_tokens"]);
                let entry = totals.entry(workspace).or_insert((0, 0, None));
                entry.0 += input;
                entry.1 += count(&result["output_tokens"]);
            }
        }
        match (answer["has_more"].as_bool(), answer["next_page"].as_str()) {
            (Some(true), Some(next)) => page = Some(next.to_string()),
            _ => return Ok(totals),
        }
    }
    Err(too_many_pages("anthropic"))
}

/// GET /v1/organizations/analytics/usage (beta), one day, grouped by workspace, all pages: where
/// the legacy report is not available. Its rows carry the same token counts under `usage`, and
/// request counts too.
async fn anthropic_analytics_usage(
    http: &reqwest::Client,
    apis: &UsageApis,
    key: &Secret,
    day: &str,
    next_day: &str,
) -> Result<Totals, ReconcileError> {
    let url = format!(
        "{}/v1/organizations/analytics/usage",
        apis.anthropic_base.trim_end_matches('/')
    );
    let mut totals = Totals::new();
    let mut page: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut query = vec![
            ("starting_at", format!("{day}T00:00:00Z")),
            ("ending_at", format!("{next_day}T00:00:00Z")),
            ("time_bucket_width", "1d".to_string()),
            ("group_by[]", "workspace_id".to_string()),
        ];
        if let Some(page) = &page {
            query.push(("page", page.clone()));
        }
        let answer = get_json(
            http.get(&url)
                .query(&query)
                .header("x-api-key", key.expose())
                .header("anthropic-version", "2023-06-01")
                .header("anthropic-beta", "analytics-usage-cost-2026-08-24"),
            "anthropic",
        )
        .await?;
        for row in answer["data"].as_array().into_iter().flatten() {
            let workspace = row["group"]["workspace_id"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            let usage = &row["usage"];
            let count = |v: &Value| v.as_i64().unwrap_or(0);
            let input = count(&usage["uncached_input_tokens"])
                + count(&usage["cache_read_input_tokens"])
                + count(&usage["cache_creation"]["ephemeral_5m_input_tokens"])
                + count(&usage["cache_creation"]["ephemeral_1h_input_tokens"]);
            let entry = totals.entry(workspace).or_insert((0, 0, None));
            entry.0 += input;
            entry.1 += count(&usage["output_tokens"]);
            // Anthropic's legacy report has no request counts; this one may.
            if let Some(requests) = usage["requests"].as_i64() {
                entry.2 = Some(entry.2.unwrap_or(0) + requests);
            }
        }
        match answer["next_page"].as_str() {
            Some(next) if !next.is_empty() => page = Some(next.to_string()),
            _ => return Ok(totals),
        }
    }
    Err(too_many_pages("anthropic"))
}
