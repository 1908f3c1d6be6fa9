//! The console's pages. Each runs its SQL through the signed-in login's own pool; what a role
//! may not read or do, the database refuses (42501 becomes 403), whatever the page shows.

use super::{database_failure, failure, Console, Refusal};
use crate::report::{self, Period};
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use minijinja::context;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use uuid::Uuid;

/// `?` for handlers: a refusal or a database error becomes its page.
macro_rules! attempt {
    ($e:expr) => {
        match $e {
            Ok(value) => value,
            Err(err) => return Failure::from(err).into_response(),
        }
    };
}

enum Failure {
    Refusal(Refusal),
    Database(sqlx::Error),
    Page(StatusCode, String),
}

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Self {
        Failure::Refusal(r)
    }
}
impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Database(e)
    }
}
impl From<report::ReportError> for Failure {
    fn from(e: report::ReportError) -> Self {
        match e {
            report::ReportError::Database(e) => Failure::Database(e),
            other => Failure::Page(StatusCode::UNPROCESSABLE_ENTITY, other.to_string()),
        }
    }
}
impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self {
            Failure::Refusal(r) => r.into_response(),
            Failure::Database(e) => database_failure(e),
            Failure::Page(status, message) => failure(status, &message),
        }
    }
}

/// What every page shows of who is signed in.
#[derive(Serialize)]
struct Me<'a> {
    login: &'a str,
    admin: bool,
    support: bool,
    finance: bool,
    sees_money: bool,
    csrf: &'a str,
}

fn me(signed: &super::Signed) -> Me<'_> {
    let s = &signed.0;
    Me {
        login: &s.login,
        admin: s.roles.admin,
        support: s.roles.support,
        finance: s.roles.finance,
        sees_money: s.roles.sees_money(),
        csrf: &s.csrf,
    }
}

fn only_admin(signed: &super::Signed) -> Result<(), Failure> {
    if signed.0.roles.admin {
        Ok(())
    } else {
        Err(Failure::Page(
            StatusCode::FORBIDDEN,
            "Only bulkhead_admin logins may do this.".into(),
        ))
    }
}

// ------------------------------------------------------------------ Tenants

#[derive(Deserialize, Default)]
pub struct TenantsQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    sort: String,
    #[serde(default)]
    dir: String,
    #[serde(default)]
    page: Option<u32>,
}

const PAGE_SIZE: i64 = 50;
const TENANT_COLUMNS: &str = "tenant_id, slug, name, status, rpm, itpm, otpm, own_budget, period,
    dollar_limit::text as dollar_limit, spent_usd::text as spent_usd, reserved_usd::text as reserved_usd,
    case when dollar_limit > 0 then least(999, floor(100 * spent_usd / dollar_limit))::int
         when dollar_limit = 0 and spent_usd > 0 then 999 end as used_percent,
    calls_today, cost_today::text as cost_today,
    to_char(last_activity at time zone 'UTC', 'YYYY-MM-DD HH24:MI') || ' UTC' as last_activity,
    to_char(created_at at time zone 'UTC', 'YYYY-MM-DD') as created_at,
    to_char(raised_until at time zone 'UTC', 'YYYY-MM-DD HH24:MI') || ' UTC' as raised_until";

pub async fn tenants(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(query): Query<TenantsQuery>,
) -> Response {
    let signed = attempt!(console.signed(&headers, &Method::GET));
    let status = match query.status.as_str() {
        "active" | "suspended" => query.status.as_str(),
        _ => "all",
    };
    let sort = match query.sort.as_str() {
        "name" | "status" | "spend" | "used" | "calls" | "activity" | "created" => {
            query.sort.as_str()
        }
        _ => "slug",
    };
    let descending = query.dir == "desc";
    let page = query.page.unwrap_or(1).clamp(1, 100_000) as i64;
    let filter: String = query.q.chars().take(100).collect();
    // The sort key and direction are bound values chosen among fixed expressions.
    let sql = format!(
        "select {TENANT_COLUMNS}, count(*) over () as total from bulkhead.tenant_overview()
         where ($1 = '' or strpos(lower(slug), lower($1)) > 0 or strpos(lower(name), lower($1)) > 0)
           and ($2 = 'all' or status = $2)
         order by
           case when not $4 then case $3 when 'name' then name when 'status' then status when 'slug' then slug end end asc,
           case when $4 then case $3 when 'name' then name when 'status' then status when 'slug' then slug end end desc,
           case when not $4 then case $3 when 'spend' then spent_usd when 'calls' then calls_today
                when 'used' then case when dollar_limit > 0 then spent_usd / dollar_limit end end end asc nulls first,
           case when $4 then case $3 when 'spend' then spent_usd when 'calls' then calls_today
                when 'used' then case when dollar_limit > 0 then spent_usd / dollar_limit end end end desc nulls last,
           case when not $4 then case $3 when 'activity' then last_activity when 'created' then created_at end end asc nulls first,
           case when $4 then case $3 when 'activity' then last_activity when 'created' then created_at end end desc nulls last,
           slug
         limit $5 offset $6"
    );
    let rows: Vec<(sqlx::types::Json<serde_json::Value>, i64)> = attempt!(
        sqlx::query_as(&format!(
            "select to_jsonb(t) - 'total', t.total from ({sql}) t"
        ))
        .bind(&filter)
        .bind(status)
        .bind(sort)
        .bind(descending)
        .bind(PAGE_SIZE)
        .bind((page - 1) * PAGE_SIZE)
        .fetch_all(&signed.0.pool)
        .await
    );
    let total = rows.first().map(|r| r.1).unwrap_or(0);
    let tenants: Vec<serde_json::Value> = rows.into_iter().map(|r| r.0 .0).collect();
    let pages = ((total + PAGE_SIZE - 1) / PAGE_SIZE).max(1);
    console.render(
        "tenants.html",
        context! {
            me => me(&signed), tenants => tenants, total => total, page => page, pages => pages,
            q => filter, status => status, sort => sort, dir => if descending { "desc" } else { "asc" },
        },
    )
}

#[derive(Deserialize)]
pub struct CreateTenantForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    slug: String,
    #[serde(default)]
    name: String,
}

pub async fn create_tenant(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<CreateTenantForm>,
) -> Response {
    let signed = attempt!(console.posted(&headers, &form.csrf));
    attempt!(only_admin(&signed));
    let id: Uuid = attempt!(
        sqlx::query_scalar("select bulkhead.create_tenant($1, $2)")
            .bind(form.slug.trim())
            .bind(form.name.trim())
            .fetch_one(&signed.0.pool)
            .await
    );
    Redirect::to(&format!("/tenants/{id}")).into_response()
}

// ------------------------------------------------------------------ Tenant

#[derive(Serialize, sqlx::FromRow)]
struct DailyRow {
    day: String,
    provider: String,
    model: String,
    requests: i64,
    input_tokens: i64,
    output_tokens: i64,
    cost_usd: Option<String>,
}

#[derive(Serialize, sqlx::FromRow)]
struct CredentialRow {
    provider: String,
    kind: String,
    status: String,
    reference: Option<String>,
    provider_project_id: Option<String>,
}

#[derive(Serialize, sqlx::FromRow)]
struct KeyRow {
    id: Uuid,
    name: String,
    key_prefix: String,
    created_by: String,
    created_at: String,
    expires_at: Option<String>,
    revoked_at: Option<String>,
    last_used_at: Option<String>,
}

#[derive(Serialize, sqlx::FromRow)]
struct LedgerRow {
    id: Uuid,
    created_at: String,
    provider: String,
    model: String,
    budget_line: String,
    input_tokens: i64,
    cached_input_tokens: i64,
    output_tokens: i64,
    cost_usd: String,
    orphan: bool,
}

#[derive(Serialize, sqlx::FromRow)]
struct ProvisioningRow {
    provider: String,
    step: String,
    state: String,
    detail: Option<String>,
}

#[derive(Serialize, sqlx::FromRow)]
struct DriftRow {
    provider: String,
    days: i64,
    input_token_drift: Option<i64>,
    output_token_drift: Option<i64>,
    request_drift: Option<i64>,
}

/// A credential reference shown masked: its scheme and last four characters.
fn masked(reference: &str) -> String {
    let (scheme, rest) = reference.split_once(':').unwrap_or(("", reference));
    let tail: String = rest
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{scheme}:…{tail}")
}

pub async fn tenant(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Response {
    let signed = attempt!(console.signed(&headers, &Method::GET));
    let pool = &signed.0.pool;
    let overview: Option<sqlx::types::Json<serde_json::Value>> = attempt!(
        sqlx::query_scalar(&format!(
            "select to_jsonb(t) from (select {TENANT_COLUMNS} from bulkhead.tenant_overview($1)) t"
        ))
        .bind(id)
        .fetch_optional(pool)
        .await
    );
    let Some(overview) = overview else {
        return failure(StatusCode::NOT_FOUND, "No such tenant.");
    };
    let daily: Vec<DailyRow> = attempt!(sqlx::query_as(
        "with today as (select (pg_catalog.clock_timestamp() at time zone pg_catalog.current_setting('bulkhead.billing_time_zone'))::date as d)
         select u.day::text as day, u.provider, u.model, u.requests, u.input_tokens, u.output_tokens, u.cost_usd::text as cost_usd
         from today, bulkhead.tenant_daily_usage($1, today.d - 89, today.d + 1) u",
    )
    .bind(id)
    .fetch_all(pool)
    .await);
    let drift: Vec<DriftRow> = if signed.0.roles.sees_money() {
        attempt!(sqlx::query_as(
            "select provider, days, input_token_drift, output_token_drift, request_drift
             from bulkhead.drift_by_tenant(current_date - 90, current_date) where tenant_id = $1 order by provider",
        )
        .bind(id)
        .fetch_all(pool)
        .await)
    } else {
        Vec::new()
    };
    // The control plane's view inside the tenant's context: credentials (references only),
    // keys, the latest ledger rows (ids, tokens, cost; never text), open reservations.
    let mut credentials = Vec::new();
    let mut keys: Vec<KeyRow> = Vec::new();
    let mut ledger: Vec<LedgerRow> = Vec::new();
    let mut provisioning: Vec<ProvisioningRow> = Vec::new();
    let mut open: (i64, Option<String>) = (0, None);
    let mut raise: Option<(String, String, String, String)> = None;
    if signed.0.roles.admin {
        let mut tx = attempt!(pool.begin().await);
        attempt!(
            sqlx::query("select bulkhead.set_tenant($1)")
                .bind(id)
                .execute(&mut *tx)
                .await
        );
        let rows: Vec<CredentialRow> = attempt!(
            sqlx::query_as(
                "select provider, kind, status, secret_ref as reference, provider_project_id
             from bulkhead.tenant_credentials order by provider",
            )
            .fetch_all(&mut *tx)
            .await
        );
        credentials = rows
            .into_iter()
            .map(|mut c| {
                c.reference = c.reference.as_deref().map(masked);
                c
            })
            .collect();
        keys = attempt!(
            sqlx::query_as(
                "select id, name, key_prefix, created_by::text as created_by,
                    to_char(created_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI') as created_at,
                    to_char(expires_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI') as expires_at,
                    to_char(revoked_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI') as revoked_at,
                    to_char(last_used_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI') as last_used_at
             from bulkhead.api_keys order by created_at desc limit 100",
            )
            .fetch_all(&mut *tx)
            .await
        );
        ledger = attempt!(sqlx::query_as(
            "select id, to_char(created_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS') as created_at,
                    provider, model, budget_line, input_tokens, cached_input_tokens, output_tokens,
                    cost_usd::text as cost_usd, orphan
             from bulkhead.ledger where tenant_id = $1 order by created_at desc limit 50",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await);
        open = attempt!(sqlx::query_as(
            "select coalesce(sum(open_reservations), 0)::bigint, sum(open_reserved_usd)::text
             from bulkhead.usage_report(pg_catalog.clock_timestamp() - interval '400 days', pg_catalog.clock_timestamp() + interval '1 day')",
        )
        .fetch_one(&mut *tx)
        .await);
        provisioning = attempt!(
            sqlx::query_as(
                "select provider, step, state, detail from bulkhead.provisioning_status($1)",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await
        );
        raise = attempt!(sqlx::query_as(
            "select raised_limit::text, to_char(ends_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI') || ' UTC', reason, raised_by
             from bulkhead.budget_raises where ended_at is null",
        )
        .fetch_optional(&mut *tx)
        .await);
        attempt!(tx.commit().await);
    }
    console.render(
        "tenant.html",
        context! {
            me => me(&signed), t => overview.0, daily => daily, drift => drift,
            credentials => credentials, keys => keys, ledger => ledger,
            open_reservations => open.0, open_reserved_usd => open.1, provisioning => provisioning,
            raise => raise,
        },
    )
}

#[derive(Deserialize)]
pub struct StatusForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    action: String,
}

pub async fn set_status(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Form(form): Form<StatusForm>,
) -> Response {
    let signed = attempt!(console.posted(&headers, &form.csrf));
    let sql = match form.action.as_str() {
        "suspend" => "select bulkhead.suspend_tenant($1)",
        "resume" => "select bulkhead.resume_tenant($1)",
        _ => {
            return failure(
                StatusCode::UNPROCESSABLE_ENTITY,
                "The action must be suspend or resume.",
            )
        }
    };
    // Not only_admin: the database refuses other roles, and the test shows it does.
    attempt!(sqlx::query(sql).bind(id).execute(&signed.0.pool).await);
    Redirect::to(&format!("/tenants/{id}")).into_response()
}

#[derive(Deserialize)]
pub struct RaiseForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    dollar_limit: String,
    /// The last day of the raise (YYYY-MM-DD, billing time zone): it ends at the next midnight.
    #[serde(default)]
    until: String,
    #[serde(default)]
    reason: String,
}

pub async fn raise_budget(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Form(form): Form<RaiseForm>,
) -> Response {
    let signed = attempt!(console.posted(&headers, &form.csrf));
    let Some(until) = chrono_free_date(form.until.trim()) else {
        return failure(
            StatusCode::UNPROCESSABLE_ENTITY,
            "The end date must be a date as YYYY-MM-DD.",
        );
    };
    let limit = form.dollar_limit.trim();
    if limit.is_empty()
        || limit.len() > 20
        || !limit.chars().all(|c| c.is_ascii_digit() || c == '.')
    {
        return failure(
            StatusCode::UNPROCESSABLE_ENTITY,
            "The raised limit must be an amount in USD, e.g. 250 or 99.50.",
        );
    }
    attempt!(sqlx::query(
        "select bulkhead.raise_budget($1, $2::numeric,
             ($3::date + 1)::timestamp at time zone pg_catalog.current_setting('bulkhead.billing_time_zone'), $4)",
    )
    .bind(id)
    .bind(limit)
    .bind(until)
    .bind(form.reason.trim())
    .execute(&signed.0.pool)
    .await);
    Redirect::to(&format!("/tenants/{id}")).into_response()
}

#[derive(Deserialize)]
pub struct KeyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    /// YYYY-MM-DD, or empty for a key that does not expire.
    #[serde(default)]
    expires_on: String,
}

pub async fn create_key(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Form(form): Form<KeyForm>,
) -> Response {
    let signed = attempt!(console.posted(&headers, &form.csrf));
    let expires = form.expires_on.trim();
    let expires = if expires.is_empty() {
        None
    } else {
        match chrono_free_date(expires) {
            Some(date) => Some(date),
            None => {
                return failure(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "The expiry must be a date as YYYY-MM-DD, or empty.",
                )
            }
        }
    };
    let secret: String = attempt!(
        sqlx::query_scalar("select bulkhead.create_api_key($1, $2, $3::date::timestamptz)")
            .bind(id)
            .bind(form.name.trim())
            .bind(expires)
            .fetch_one(&signed.0.pool)
            .await
    );
    // Shown once, on this response only (no-store): the database keeps its hash.
    console.render(
        "key_created.html",
        context! { me => me(&signed), tenant_id => id, name => form.name.trim(), secret => secret },
    )
}

/// A YYYY-MM-DD date, as text PostgreSQL will read (checked here for a clear message).
fn chrono_free_date(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let shape = bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit());
    shape.then(|| text.to_string())
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

pub async fn revoke_key(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path((id, key)): Path<(Uuid, Uuid)>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    let signed = attempt!(console.posted(&headers, &form.csrf));
    // Inside the page's tenant's context: a key of another tenant is not found there.
    let mut tx = attempt!(signed.0.pool.begin().await);
    attempt!(
        sqlx::query("select bulkhead.set_tenant($1)")
            .bind(id)
            .execute(&mut *tx)
            .await
    );
    let mine: bool = attempt!(
        sqlx::query_scalar("select exists (select from bulkhead.api_keys where id = $1)")
            .bind(key)
            .fetch_one(&mut *tx)
            .await
    );
    if !mine {
        return failure(StatusCode::NOT_FOUND, "This tenant has no such key.");
    }
    attempt!(
        sqlx::query("select bulkhead.revoke_api_key($1)")
            .bind(key)
            .execute(&mut *tx)
            .await
    );
    attempt!(tx.commit().await);
    Redirect::to(&format!("/tenants/{id}")).into_response()
}

// ------------------------------------------------------------------ Finance

#[derive(Deserialize, Default)]
pub struct PeriodQuery {
    #[serde(default)]
    period: String,
}

async fn chosen_period(pool: &sqlx::PgPool, text: &str) -> Result<Period, Failure> {
    if !text.is_empty() {
        return Ok(text.parse()?);
    }
    let current: String = sqlx::query_scalar(
        "select to_char(pg_catalog.clock_timestamp() at time zone pg_catalog.current_setting('bulkhead.billing_time_zone'), 'YYYY-MM')",
    )
    .fetch_one(pool)
    .await?;
    Ok(current.parse()?)
}

pub async fn finance(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(query): Query<PeriodQuery>,
) -> Response {
    let signed = attempt!(console.signed(&headers, &Method::GET));
    if !signed.0.roles.sees_money() {
        return failure(
            StatusCode::FORBIDDEN,
            "Finance is for bulkhead_finance and bulkhead_admin logins.",
        );
    }
    let pool = &signed.0.pool;
    let period = attempt!(chosen_period(pool, &query.period).await);
    // Per tenant: the month's cost beside its budget and its reconciliation drift; and totals
    // per provider and model. One pass over usage_by_tenant (sums only, as finance may read).
    let (tenants, totals): (sqlx::types::Json<serde_json::Value>, sqlx::types::Json<serde_json::Value>) = attempt!(sqlx::query_as(
        "with bounds as (
             select make_date($1, $2, 1) as first_day, (make_date($1, $2, 1) + interval '1 month')::date as next_day,
                    pg_catalog.current_setting('bulkhead.billing_time_zone') as zone
         ),
         rows as materialized (
             select u.* from bounds b,
                  bulkhead.usage_by_tenant(b.first_day::timestamp at time zone b.zone, b.next_day::timestamp at time zone b.zone) u
         ),
         usage as (
             select r.tenant_id, r.slug, sum(r.requests)::bigint as requests, sum(r.cost_usd) as cost
             from rows r group by 1, 2
         ),
         drift as (
             select d.tenant_id, sum(d.input_token_drift)::bigint as input_drift, sum(d.output_token_drift)::bigint as output_drift
             from bounds b, bulkhead.drift_by_tenant(b.first_day, b.next_day - 1) d group by 1
         ),
         per_tenant as (
             select u.tenant_id, u.slug, u.requests, u.cost, o.dollar_limit, o.period, d.input_drift, d.output_drift
             from usage u
             left join bulkhead.tenant_overview() o on o.tenant_id = u.tenant_id
             left join drift d on d.tenant_id = u.tenant_id
         ),
         totals as (
             select r.provider, r.model, sum(r.requests)::bigint as requests, sum(r.input_tokens)::bigint as input_tokens,
                    sum(r.output_tokens)::bigint as output_tokens, sum(r.cost_usd) as cost
             from rows r group by 1, 2
         )
         select
             (select coalesce(jsonb_agg(jsonb_build_object(
                  'tenant_id', p.tenant_id, 'slug', p.slug, 'requests', p.requests, 'cost_usd', p.cost::text,
                  'dollar_limit', p.dollar_limit::text, 'period', p.period,
                  'input_token_drift', p.input_drift, 'output_token_drift', p.output_drift)
                  order by p.cost desc, p.slug), '[]') from per_tenant p),
             (select coalesce(jsonb_agg(jsonb_build_object(
                  'provider', t.provider, 'model', t.model, 'requests', t.requests, 'input_tokens', t.input_tokens,
                  'output_tokens', t.output_tokens, 'cost_usd', t.cost::text)
                  order by t.cost desc, t.provider, t.model), '[]') from totals t)",
    )
    .bind(period.year)
    .bind(period.month as i32)
    .fetch_one(pool)
    .await);
    let (tenants, totals) = (tenants.0, totals.0);
    console.render(
        "finance.html",
        context! { me => me(&signed), period => period.to_string(), tenants => tenants, totals => totals },
    )
}

pub async fn finance_csv(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(query): Query<PeriodQuery>,
) -> Response {
    let signed = attempt!(console.signed(&headers, &Method::GET));
    let pool = &signed.0.pool;
    let period = attempt!(chosen_period(pool, &query.period).await);
    let mut conn = attempt!(pool.acquire().await);
    let rows = attempt!(report::usage_for(&mut conn, period).await);
    let bytes = attempt!(report::to_csv(period, &rows));
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"bulkhead-usage-{period}.csv\""),
            ),
        ],
        bytes,
    )
        .into_response()
}

// ------------------------------------------------------------------ Prompts

#[derive(Serialize, sqlx::FromRow)]
struct TemplateRow {
    template_name: String,
    latest_version: i32,
    active_version: Option<i32>,
    updated_at: String,
}

#[derive(Serialize, sqlx::FromRow)]
struct VersionRow {
    version: i32,
    skeleton_version: i32,
    slots: String,
    body: Option<String>,
    created_at: String,
    created_by: String,
}

#[derive(Serialize, sqlx::FromRow)]
struct ReleaseRow {
    seq: i32,
    action: String,
    from_version: Option<i32>,
    to_version: i32,
    forced: bool,
    reason: Option<String>,
    released_by: String,
    released_at: String,
    gate: String,
    eval_run_id: Option<i64>,
}

/// Enters a tenant's context in a transaction of the signed-in login (admin and support only:
/// the database refuses set_tenant to anyone else).
async fn in_tenant<'c>(
    pool: &'c sqlx::PgPool,
    tenant: Uuid,
) -> Result<sqlx::Transaction<'c, sqlx::Postgres>, Failure> {
    let mut tx = pool.begin().await?;
    sqlx::query("select bulkhead.set_tenant($1)")
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

async fn tenant_name(pool: &sqlx::PgPool, tenant: Uuid) -> Result<(String, String), Failure> {
    let row: Option<(String, String)> =
        sqlx::query_as("select slug, name from bulkhead.tenant_overview($1)")
            .bind(tenant)
            .fetch_optional(pool)
            .await?;
    row.ok_or_else(|| Failure::Page(StatusCode::NOT_FOUND, "No such tenant.".into()))
}

pub async fn prompts(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Response {
    let signed = attempt!(console.signed(&headers, &Method::GET));
    let (slug, name) = attempt!(tenant_name(&signed.0.pool, id).await);
    let mut tx = attempt!(in_tenant(&signed.0.pool, id).await);
    let templates: Vec<TemplateRow> = attempt!(
        sqlx::query_as(
            "select template_name, latest_version, active_version,
                to_char(updated_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI') as updated_at
         from bulkhead.prompt_templates order by template_name",
        )
        .fetch_all(&mut *tx)
        .await
    );
    attempt!(tx.commit().await);
    console.render(
        "prompts.html",
        context! { me => me(&signed), tenant_id => id, slug => slug, name => name, templates => templates },
    )
}

#[derive(Deserialize, Default)]
pub struct DiffQuery {
    a: Option<i32>,
    b: Option<i32>,
    /// Sample variables for the two renders, as a JSON object.
    #[serde(default)]
    vars: String,
}

/// One line of a side-by-side diff: the left and right text, and whether they differ.
#[derive(Serialize)]
struct DiffLine {
    left: Option<String>,
    right: Option<String>,
    change: &'static str,
}

fn side_by_side(old: &str, new: &str) -> Vec<DiffLine> {
    use similar::{ChangeTag, TextDiff};
    let diff = TextDiff::from_lines(old, new);
    let mut lines = Vec::new();
    for op in diff.ops() {
        let mut removed = Vec::new();
        let mut added = Vec::new();
        for change in diff.iter_changes(op) {
            let text = change.value().trim_end_matches('\n').to_string();
            match change.tag() {
                ChangeTag::Equal => lines.push(DiffLine {
                    left: Some(text.clone()),
                    right: Some(text),
                    change: "same",
                }),
                ChangeTag::Delete => removed.push(text),
                ChangeTag::Insert => added.push(text),
            }
        }
        // A replaced block pairs its old and new lines row by row.
        let rows = removed.len().max(added.len());
        for i in 0..rows {
            lines.push(DiffLine {
                left: removed.get(i).cloned(),
                right: added.get(i).cloned(),
                change: match (removed.get(i), added.get(i)) {
                    (Some(_), Some(_)) => "changed",
                    (Some(_), None) => "removed",
                    _ => "added",
                },
            });
        }
    }
    lines
}

fn pretty_json(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| text.to_string())
}

pub async fn prompt(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path((id, template)): Path<(Uuid, String)>,
    Query(query): Query<DiffQuery>,
) -> Response {
    let signed = attempt!(console.signed(&headers, &Method::GET));
    let (slug, name) = attempt!(tenant_name(&signed.0.pool, id).await);
    let vars_text = if query.vars.trim().is_empty() {
        "{}".to_string()
    } else {
        query.vars.clone()
    };
    let vars: serde_json::Value = match serde_json::from_str(&vars_text) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        _ => {
            return failure(
                StatusCode::UNPROCESSABLE_ENTITY,
                "The sample variables must be a JSON object, e.g. {\"question\": \"Hi\"}.",
            )
        }
    };
    let mut tx = attempt!(in_tenant(&signed.0.pool, id).await);
    let head: Option<TemplateRow> = attempt!(
        sqlx::query_as(
            "select template_name, latest_version, active_version,
                to_char(updated_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI') as updated_at
         from bulkhead.prompt_templates where template_name = $1",
        )
        .bind(&template)
        .fetch_optional(&mut *tx)
        .await
    );
    let Some(head) = head else {
        return failure(
            StatusCode::NOT_FOUND,
            "This tenant has no such prompt template.",
        );
    };
    let versions: Vec<VersionRow> = attempt!(sqlx::query_as(
        "select version, skeleton_version, jsonb_pretty(slots) as slots, body,
                to_char(created_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI') as created_at, created_by
         from bulkhead.prompt_versions where template_name = $1 order by version desc",
    )
    .bind(&template)
    .fetch_all(&mut *tx)
    .await);
    let releases: Vec<ReleaseRow> = attempt!(sqlx::query_as(
        "select seq, action, from_version, to_version, forced, reason, released_by,
                to_char(released_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS') as released_at, gate, eval_run_id
         from bulkhead.prompt_releases where template_name = $1 order by seq desc",
    )
    .bind(&template)
    .fetch_all(&mut *tx)
    .await);
    // The two versions compared: by default the active one and the newest.
    let b = query.b.unwrap_or(head.latest_version);
    let a = query.a.unwrap_or(head.active_version.unwrap_or(b));
    let find = |v: i32| versions.iter().find(|x| x.version == v);
    let (Some(left), Some(right)) = (find(a), find(b)) else {
        return failure(StatusCode::NOT_FOUND, "No such version of this template.");
    };
    let mut renders = Vec::new();
    for version in [a, b] {
        // A render error (a missing variable, say) is shown in place of the text.
        attempt!(sqlx::query("savepoint render").execute(&mut *tx).await);
        let rendered: Result<String, sqlx::Error> =
            sqlx::query_scalar("select bulkhead.render_prompt_version($1, $2, $3)")
                .bind(&template)
                .bind(version)
                .bind(&vars)
                .fetch_one(&mut *tx)
                .await;
        let rendered = match rendered {
            Ok(text) => text,
            Err(sqlx::Error::Database(db)) => {
                attempt!(
                    sqlx::query("rollback to savepoint render")
                        .execute(&mut *tx)
                        .await
                );
                format!("(does not render: {})", db.message())
            }
            Err(e) => return database_failure(e),
        };
        renders.push(rendered);
    }
    let slots_diff = side_by_side(&pretty_json(&left.slots), &pretty_json(&right.slots));
    let body_diff = side_by_side(
        left.body.as_deref().unwrap_or(""),
        right.body.as_deref().unwrap_or(""),
    );
    let render_diff = side_by_side(&renders[0], &renders[1]);
    attempt!(tx.commit().await);
    console.render(
        "prompt.html",
        context! {
            me => me(&signed), tenant_id => id, slug => slug, name => name, head => head,
            versions => versions, releases => releases, a => a, b => b, vars => vars_text,
            slots_diff => slots_diff, body_diff => body_diff, render_diff => render_diff,
        },
    )
}

#[derive(Deserialize)]
pub struct ActivateForm {
    #[serde(default)]
    csrf: String,
    version: i32,
    #[serde(default)]
    force: Option<String>,
    #[serde(default)]
    reason: String,
}

pub async fn activate(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path((id, template)): Path<(Uuid, String)>,
    Form(form): Form<ActivateForm>,
) -> Response {
    let signed = attempt!(console.posted(&headers, &form.csrf));
    let force = form.force.is_some();
    let reason = form.reason.trim();
    // The gate's verdict (or the refusal of force to a non-admin) comes from the database.
    attempt!(
        sqlx::query("select bulkhead.activate_prompt($1, $2, $3, $4, nullif($5, ''))")
            .bind(id)
            .bind(&template)
            .bind(form.version)
            .bind(force)
            .bind(reason)
            .execute(&signed.0.pool)
            .await
    );
    Redirect::to(&prompt_path(id, &template)).into_response()
}

pub async fn rollback(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path((id, template)): Path<(Uuid, String)>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    let signed = attempt!(console.posted(&headers, &form.csrf));
    attempt!(
        sqlx::query("select bulkhead.rollback_prompt($1, $2)")
            .bind(id)
            .bind(&template)
            .execute(&signed.0.pool)
            .await
    );
    Redirect::to(&prompt_path(id, &template)).into_response()
}

/// The template's page; its name percent-encoded as a path segment.
fn prompt_path(id: Uuid, template: &str) -> String {
    let encoded: String = template
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("/tenants/{id}/prompts/{encoded}")
}

// ------------------------------------------------------------------ Evals

#[derive(Deserialize, Default)]
pub struct EvalsQuery {
    #[serde(default)]
    template: String,
}

#[derive(Serialize, sqlx::FromRow)]
struct EvalRunRow {
    tenant_id: Uuid,
    slug: String,
    run_id: i64,
    template_name: String,
    version: i32,
    status: String,
    error: Option<String>,
    cases_passed: i32,
    cases_failed: i32,
    cases_pending: i32,
    score: Option<String>,
    started_at: String,
}

/// Every tenant's runs with pass and fail counts, and no case text (eval_summary).
pub async fn evals(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(query): Query<EvalsQuery>,
) -> Response {
    let signed = attempt!(console.signed(&headers, &Method::GET));
    let template = query.template.trim();
    let runs: Vec<EvalRunRow> = attempt!(sqlx::query_as(
        "select tenant_id, slug, run_id, template_name, version, status, error, cases_passed, cases_failed,
                cases_pending, score::text as score,
                to_char(started_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI') as started_at
         from bulkhead.eval_summary(nullif($1, ''), null)
         order by template_name, version desc, slug, run_id desc
         limit 500",
    )
    .bind(template)
    .fetch_all(&signed.0.pool)
    .await);
    console.render(
        "evals.html",
        context! { me => me(&signed), runs => runs, template => template },
    )
}

#[derive(Serialize, sqlx::FromRow)]
struct CaseRow {
    case_id: Uuid,
    passed: Option<bool>,
    output: Option<String>,
    details: String,
}

/// One run's cases: read only inside its tenant's context, on that tenant's page.
pub async fn eval_run(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path((id, run)): Path<(Uuid, i64)>,
) -> Response {
    let signed = attempt!(console.signed(&headers, &Method::GET));
    let (slug, name) = attempt!(tenant_name(&signed.0.pool, id).await);
    let mut tx = attempt!(in_tenant(&signed.0.pool, id).await);
    let status: Option<EvalRunRow> = attempt!(sqlx::query_as(
        "select $1::uuid as tenant_id, $2::text as slug, run_id, template_name, version, status, error,
                cases_passed, cases_failed, cases_pending, score::text as score,
                to_char(started_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI') as started_at
         from bulkhead.eval_run_status(array[$3::bigint], null)",
    )
    .bind(id)
    .bind(&slug)
    .bind(run)
    .fetch_optional(&mut *tx)
    .await);
    let Some(status) = status else {
        return failure(StatusCode::NOT_FOUND, "This tenant has no such eval run.");
    };
    let cases: Vec<CaseRow> = attempt!(sqlx::query_as(
        "select case_id, passed, output,
                jsonb_pretty(case when $2 or jsonb_typeof(details -> 'calls') <> 'array' then details
                                  else jsonb_set(details, '{calls}', coalesce((select jsonb_agg(c - 'cost_usd')
                                                 from jsonb_array_elements(details -> 'calls') c), '[]')) end) as details
         from bulkhead.eval_report($1)",
    )
    .bind(run)
    // Support sees no money: the calls' costs are left out for it.
    .bind(signed.0.roles.sees_money())
    .fetch_all(&mut *tx)
    .await);
    attempt!(tx.commit().await);
    console.render(
        "eval_run.html",
        context! { me => me(&signed), tenant_id => id, slug => slug, name => name, run => status, cases => cases },
    )
}

// ------------------------------------------------------------------ Deletion

pub async fn delete_page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Response {
    let signed = attempt!(console.signed(&headers, &Method::GET));
    let (slug, name) = attempt!(tenant_name(&signed.0.pool, id).await);
    console.render(
        "delete.html",
        context! { me => me(&signed), tenant_id => id, slug => slug, name => name, error => None::<String> },
    )
}

#[derive(Deserialize)]
pub struct DeleteForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirm: String,
}

pub async fn delete_tenant(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Form(form): Form<DeleteForm>,
) -> Response {
    let signed = attempt!(console.posted(&headers, &form.csrf));
    let (slug, name) = attempt!(tenant_name(&signed.0.pool, id).await);
    if form.confirm.trim() != slug {
        let mut response = console.render(
            "delete.html",
            context! {
                me => me(&signed), tenant_id => id, slug => slug, name => name,
                error => Some("Type the tenant's slug exactly to confirm. Nothing was deleted."),
            },
        );
        *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
        return response;
    }
    let receipt: Uuid = attempt!(
        sqlx::query_scalar("select bulkhead.delete_tenant($1)")
            .bind(id)
            .fetch_one(&signed.0.pool)
            .await
    );
    Redirect::to(&format!("/receipts/{receipt}")).into_response()
}

#[derive(Serialize, sqlx::FromRow)]
struct ReceiptRow {
    id: Uuid,
    tenant_id: Uuid,
    requested_by: String,
    started_at: String,
    completed_at: String,
    pending: i64,
}

pub async fn receipts(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let signed = attempt!(console.signed(&headers, &Method::GET));
    let rows: Vec<ReceiptRow> = attempt!(sqlx::query_as(
        "select r.id, r.tenant_id, r.requested_by::text as requested_by,
                to_char(r.started_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS') as started_at,
                to_char(r.completed_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS') as completed_at,
                (select count(*) from bulkhead.deletion_receipt_pending p where p.receipt_id = r.id) as pending
         from bulkhead.deletion_receipts r order by r.completed_at desc limit 200",
    )
    .fetch_all(&signed.0.pool)
    .await);
    console.render(
        "receipts.html",
        context! { me => me(&signed), receipts => rows },
    )
}

pub async fn receipt(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Response {
    let signed = attempt!(console.signed(&headers, &Method::GET));
    let pool = &signed.0.pool;
    let head: Option<ReceiptRow> = attempt!(sqlx::query_as(
        "select r.id, r.tenant_id, r.requested_by::text as requested_by,
                to_char(r.started_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS') as started_at,
                to_char(r.completed_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS') as completed_at, 0::bigint as pending
         from bulkhead.deletion_receipts r where r.id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await);
    let Some(head) = head else {
        return failure(StatusCode::NOT_FOUND, "No such receipt.");
    };
    let steps: Vec<(String, i64, String)> = attempt!(sqlx::query_as(
        "select step, rows_deleted, to_char(completed_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS')
         from bulkhead.deletion_receipt_steps where receipt_id = $1 order by completed_at, step",
    )
    .bind(id)
    .fetch_all(pool)
    .await);
    let pending: Vec<(String, String)> = attempt!(
        sqlx::query_as(
            "select step, to_char(since at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS')
         from bulkhead.deletion_receipt_pending where receipt_id = $1 order by step",
        )
        .bind(id)
        .fetch_all(pool)
        .await
    );
    console.render(
        "receipt.html",
        context! { me => me(&signed), r => head, steps => steps, pending => pending },
    )
}

// ------------------------------------------------------------------ Charts

#[derive(Deserialize, Default)]
pub struct ChartQuery {
    /// `90` (the last 90 days) or `period` (this budget period).
    #[serde(default)]
    days: String,
}

/// The chart's days, in the billing time zone: today, and the first day ($2: the tenant's budget
/// period's, else 89 days before today).
const CHART_DAYS: &str = "with today as (
        select (pg_catalog.clock_timestamp() at time zone pg_catalog.current_setting('bulkhead.billing_time_zone'))::date as d),
     first as (
        select case when $2 then coalesce((select (o.period_start at time zone pg_catalog.current_setting('bulkhead.billing_time_zone'))::date
                                           from bulkhead.tenant_overview($1) o), today.d)
                    else today.d - 89 end as d
        from today)";

/// The tenant's daily cost (calls, for support) per model as an SVG line chart, drawn here.
pub async fn usage_chart(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Query(query): Query<ChartQuery>,
) -> Response {
    let signed = attempt!(console.signed(&headers, &Method::GET));
    let money = signed.0.roles.sees_money();
    let since_period = query.days == "period";
    let rows: Vec<(i32, String, i64, Option<f64>)> = attempt!(
        sqlx::query_as(&format!(
            "{CHART_DAYS}
         select (u.day - first.d)::int, u.model, u.requests, u.cost_usd::float8
         from today, first, bulkhead.tenant_daily_usage($1, first.d, today.d + 1) u
         order by u.model, u.day"
        ))
        .bind(id)
        .bind(since_period)
        .fetch_all(&signed.0.pool)
        .await
    );
    let span: i32 = attempt!(
        sqlx::query_scalar(&format!(
            "{CHART_DAYS} select (today.d - first.d + 1)::int from today, first"
        ))
        .bind(id)
        .bind(since_period)
        .fetch_one(&signed.0.pool)
        .await
    );
    let mut series: Vec<(String, Vec<(i32, f64)>)> = Vec::new();
    for (day, model, requests, cost) in rows {
        let value = if money {
            cost.unwrap_or(0.0)
        } else {
            requests as f64
        };
        // Legend text from the data: markup characters dropped.
        let label: String = model
            .chars()
            .filter(|c| !"<>&\"'".contains(*c))
            .take(40)
            .collect();
        match series.last_mut() {
            Some((name, points)) if *name == label => points.push((day, value)),
            _ => series.push((label, vec![(day, value)])),
        }
    }
    let title = match (money, since_period) {
        (true, true) => "Cost per day this period (USD)",
        (true, false) => "Cost per day, last 90 days (USD)",
        (false, true) => "Calls per day this period",
        (false, false) => "Calls per day, last 90 days",
    };
    match draw_chart(title, span.max(1), &series) {
        Ok(svg) => (
            [(header::CONTENT_TYPE, "image/svg+xml; charset=utf-8")],
            svg,
        )
            .into_response(),
        Err(err) => {
            tracing::error!(target: "bulkhead::console", "drawing a chart: {err}");
            failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The chart could not be drawn.",
            )
        }
    }
}

fn draw_chart(
    title: &str,
    span: i32,
    series: &[(String, Vec<(i32, f64)>)],
) -> Result<String, String> {
    use plotters::prelude::*;
    const PALETTE: [RGBColor; 6] = [
        RGBColor(36, 83, 199),
        RGBColor(216, 110, 27),
        RGBColor(20, 140, 90),
        RGBColor(170, 40, 120),
        RGBColor(100, 100, 100),
        RGBColor(180, 30, 30),
    ];
    let top = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let top = if top > 0.0 { top * 1.1 } else { 1.0 };
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (900, 300)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(28)
            .y_label_area_size(64)
            .build_cartesian_2d(0..span, 0f64..top)
            .map_err(|e| e.to_string())?;
        // Small amounts (a cent and less) in scientific notation, the rest with two decimals.
        let y_label = |v: &f64| {
            if top < 0.1 && *v != 0.0 {
                format!("{v:.1e}")
            } else if top < 100.0 {
                format!("{v:.2}")
            } else {
                format!("{v:.0}")
            }
        };
        chart
            .configure_mesh()
            .x_desc("day")
            .y_label_formatter(&y_label)
            .light_line_style(RGBColor(238, 240, 244))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (model, points)) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            // Days without calls are zero, not a line drawn across them.
            let mut full: Vec<(i32, f64)> = (0..span).map(|d| (d, 0.0)).collect();
            for &(day, value) in points {
                if let Some(slot) = full.get_mut(day.max(0) as usize) {
                    slot.1 += value;
                }
            }
            chart
                .draw_series(LineSeries::new(full, color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(model.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        if !series.is_empty() {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.9))
                .border_style(RGBColor(217, 222, 231))
                .draw()
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}
