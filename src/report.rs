//! `bulkhead report --period YYYY-MM --format csv|json`: every tenant's settled cost for a billing
//! month, per provider and model, as `bulkhead.usage_by_tenant` returns it. The console's
//! Finance page exports the same bytes.

use sqlx::PgConnection;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("--period must be a month as YYYY-MM (e.g. 2026-11), not {0:?}")]
    Period(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("writing the report: {0}")]
    Write(String),
}

/// A billing month, checked: YYYY-MM with a month 01..12.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub year: i32,
    pub month: u32,
}

impl std::str::FromStr for Period {
    type Err = ReportError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let refuse = || ReportError::Period(text.chars().take(40).collect());
        let (year, month) = text.split_once('-').ok_or_else(refuse)?;
        if year.len() != 4
            || month.len() != 2
            || !(year.bytes().chain(month.bytes())).all(|b| b.is_ascii_digit())
        {
            return Err(refuse());
        }
        let year: i32 = year.parse().map_err(|_| refuse())?;
        let month: u32 = month.parse().map_err(|_| refuse())?;
        if !(1..=12).contains(&month) || year < 1970 {
            return Err(refuse());
        }
        Ok(Period { year, month })
    }
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// One row of usage_by_tenant, numbers as PostgreSQL prints them (exact decimals).
#[derive(Debug, Clone, serde::Serialize)]
pub struct UsageRow {
    pub tenant_id: uuid::Uuid,
    pub slug: String,
    pub provider: String,
    pub model: String,
    pub requests: i64,
    pub input_tokens: i64,
    pub cached_input_tokens: i64,
    pub cache_write_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: String,
}

pub const CSV_HEADER: [&str; 11] = [
    "period",
    "tenant_id",
    "slug",
    "provider",
    "model",
    "requests",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "cost_usd",
];

/// The month's rows: [first instant, next month's first instant) in the billing time zone.
pub async fn usage_for(
    conn: &mut PgConnection,
    period: Period,
) -> Result<Vec<UsageRow>, ReportError> {
    let rows: Vec<(uuid::Uuid, String, String, String, i64, i64, i64, i64, i64, String)> = sqlx::query_as(
        "with bounds as (
             select (make_date($1, $2, 1)::timestamp at time zone pg_catalog.current_setting('bulkhead.billing_time_zone')) as lo,
                    ((make_date($1, $2, 1) + interval '1 month')::timestamp
                        at time zone pg_catalog.current_setting('bulkhead.billing_time_zone')) as hi
         )
         select u.tenant_id, u.slug, u.provider, u.model, u.requests, u.input_tokens, u.cached_input_tokens,
                u.cache_write_tokens, u.output_tokens, u.cost_usd::text
         from bounds b, bulkhead.usage_by_tenant(b.lo, b.hi) u",
    )
    .bind(period.year)
    .bind(period.month as i32)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| UsageRow {
            tenant_id: r.0,
            slug: r.1,
            provider: r.2,
            model: r.3,
            requests: r.4,
            input_tokens: r.5,
            cached_input_tokens: r.6,
            cache_write_tokens: r.7,
            output_tokens: r.8,
            cost_usd: r.9,
        })
        .collect())
}

/// A spreadsheet reads a cell that begins with = + - @ (or a tab or return) as a formula: such
/// text cells get a leading apostrophe (OWASP's advice for CSV injection).
fn inert(cell: &str) -> std::borrow::Cow<'_, str> {
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{cell}").into(),
        _ => cell.into(),
    }
}

pub fn to_csv(period: Period, rows: &[UsageRow]) -> Result<Vec<u8>, ReportError> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let write_error = |e: csv::Error| ReportError::Write(e.to_string());
    writer.write_record(CSV_HEADER).map_err(write_error)?;
    let period = period.to_string();
    for row in rows {
        writer
            .write_record([
                period.as_str(),
                &row.tenant_id.to_string(),
                &inert(&row.slug),
                &inert(&row.provider),
                &inert(&row.model),
                &row.requests.to_string(),
                &row.input_tokens.to_string(),
                &row.cached_input_tokens.to_string(),
                &row.cache_write_tokens.to_string(),
                &row.output_tokens.to_string(),
                &row.cost_usd,
            ])
            .map_err(write_error)?;
    }
    writer
        .into_inner()
        .map_err(|e| ReportError::Write(e.to_string()))
}

pub fn to_json(period: Period, rows: &[UsageRow]) -> Result<Vec<u8>, ReportError> {
    serde_json::to_vec_pretty(&serde_json::json!({ "period": period.to_string(), "rows": rows }))
        .map_err(|e| ReportError::Write(e.to_string()))
}

/// The CLI: prints the report on stdout.
pub async fn run(database_url: &str, period: Period, format: &str) -> Result<(), ReportError> {
    use sqlx::Connection;
    let mut conn = PgConnection::connect(database_url).await?;
    let rows = usage_for(&mut conn, period).await?;
    let bytes = match format {
        "json" => to_json(period, &rows)?,
        _ => to_csv(period, &rows)?,
    };
    use std::io::Write;
    std::io::stdout()
        .write_all(&bytes)
        .map_err(|e| ReportError::Write(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_checked() {
        assert_eq!(
            "2026-11".parse::<Period>().unwrap(),
            Period {
                year: 2026,
                month: 11
            }
        );
        for bad in [
            "2026-13",
            "2026-00",
            "2026-1",
            "26-11",
            "2026/11",
            "2026-11-01",
            "",
            "abcd-ef",
            "1969-12",
            "+026-11",
        ] {
            assert!(bad.parse::<Period>().is_err(), "{bad}");
        }
    }

    #[test]
    fn csv_cells_cannot_become_formulas() {
        let row = UsageRow {
            tenant_id: uuid::Uuid::nil(),
            slug: "acme".into(),
            provider: "openai".into(),
            model: "=HYPERLINK(\"http://x\")".into(),
            requests: 1,
            input_tokens: 2,
            cached_input_tokens: 0,
            cache_write_tokens: 0,
            output_tokens: 3,
            cost_usd: "0.0001".into(),
        };
        let text = String::from_utf8(to_csv("2026-11".parse().unwrap(), &[row]).unwrap()).unwrap();
        assert!(text.starts_with("period,tenant_id,slug,"), "{text}");
        assert!(text.contains("\"'=HYPERLINK(\"\"http://x\"\")\""), "{text}");
    }
}
