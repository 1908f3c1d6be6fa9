//! `bulkhead eval`: the release gate from a terminal or a CI job.
//!
//! The database does the work: `bulkhead.start_eval` queues the runs (a running `bulkhead
//! worker` makes the calls), the scores and the gate's verdict are computed there. This command
//! starts or joins the runs, shows their progress, and reports: a table, optional JSON and JUnit
//! XML files, and promptfoo's exit codes (0 every tenant passed, 100 one did not, 1 an error).
//! It prints counts and ids only: a tenant's case text is read by `eval report --tenant`, in that
//! tenant's context, and never by the gate's summary.

use crate::database;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row;
use std::collections::HashMap;
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// promptfoo's exit code for "an eval ran and failed".
pub const EXIT_FAILED: u8 = 100;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the runs did not finish within {0} s: is a `bulkhead worker` running?")]
    Timeout(u64),
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {message}")]
    CaseLine {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Usage(String),
}

/// One tenant's run as the gate shows it (no case text).
struct RunStatus {
    tenant: String,
    run_id: i64,
    version: Option<i32>,
    skeleton_version: Option<i32>,
    status: String,
    error: Option<String>,
    passed: i32,
    failed: i32,
    pending: i32,
    reused: i32,
}

pub struct GateArgs {
    pub database_url: String,
    pub template: String,
    pub version: i32,
    pub tenant: Option<Uuid>,
    pub timeout: Duration,
    pub poll: Duration,
    pub json: Option<PathBuf>,
    pub junit: Option<PathBuf>,
}

async fn connect(url: &str) -> Result<PgPool, EvalError> {
    Ok(PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(database::connect_options(url)?)
        .await?)
}

/// Starts (or joins) the runs, waits for them, reports. Ok(true) when every tenant passed.
pub async fn gate(args: GateArgs) -> Result<bool, EvalError> {
    let pool = connect(&args.database_url).await?;
    let runs: Vec<i64> = sqlx::query_scalar("select r from bulkhead.start_eval($1, $2, $3) r")
        .bind(&args.template)
        .bind(args.version)
        .bind(args.tenant)
        .fetch_all(&pool)
        .await?;
    if runs.is_empty() {
        println!(
            "no tenant's active prompt uses template {:?}: nothing to gate",
            args.template
        );
        return Ok(true);
    }
    let started = Instant::now();
    let terminal = std::io::stderr().is_terminal();
    let bars = MultiProgress::with_draw_target(if terminal {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style = ProgressStyle::with_template("{prefix:<24} [{bar:30}] {pos}/{len} cases {msg}")
        .expect("a valid template")
        .progress_chars("=> ");
    let mut shown: HashMap<i64, ProgressBar> = HashMap::new();
    let mut reported: Vec<i64> = Vec::new();
    let statuses = loop {
        let statuses = status(&pool, args.tenant, &runs).await?;
        for run in &statuses {
            let total = (run.passed + run.failed + run.pending).max(0) as u64;
            let bar = shown.entry(run.run_id).or_insert_with(|| {
                let bar = bars.add(ProgressBar::new(total));
                bar.set_style(style.clone());
                bar.set_prefix(run.tenant.clone());
                bar
            });
            bar.set_length(total);
            bar.set_position((run.passed + run.failed) as u64);
            bar.set_message(format!("{} passed, {} failed", run.passed, run.failed));
            if run.status != "running" && !reported.contains(&run.run_id) {
                reported.push(run.run_id);
                bar.finish_with_message(format!(
                    "{} ({} passed, {} failed)",
                    run.status, run.passed, run.failed
                ));
                if !terminal {
                    eprintln!(
                        "{}: run {} {} ({} passed, {} failed)",
                        run.tenant, run.run_id, run.status, run.passed, run.failed
                    );
                }
            }
        }
        if statuses.iter().all(|r| r.status != "running") {
            break statuses;
        }
        if started.elapsed() > args.timeout {
            return Err(EvalError::Timeout(args.timeout.as_secs()));
        }
        tokio::time::sleep(args.poll).await;
    };
    let _ = bars.clear();
    print_table(&args.template, &statuses);
    let seconds = started.elapsed().as_secs_f64();
    if let Some(path) = &args.json {
        write_file(path, &json_report(&args.template, args.version, &statuses))?;
    }
    if let Some(path) = &args.junit {
        write_file(
            path,
            &junit_report(&args.template, args.version, &statuses, seconds),
        )?;
    }
    Ok(statuses.iter().all(|r| r.status == "passed"))
}

/// The runs' progress: every tenant's (bulkhead_admin), or one tenant's, read in its context.
async fn status(
    pool: &PgPool,
    tenant: Option<Uuid>,
    runs: &[i64],
) -> Result<Vec<RunStatus>, EvalError> {
    const COLUMNS: &str = "run_id, version, skeleton_version, status, error, cases_passed, \
                           cases_failed, cases_pending, reused";
    let rows = match tenant {
        None => {
            sqlx::query(&format!(
                "select slug, {COLUMNS} from bulkhead.eval_summary(null, $1) order by slug"
            ))
            .bind(runs)
            .fetch_all(pool)
            .await?
        }
        Some(tenant) => {
            let mut tx = pool.begin().await?;
            sqlx::query("select bulkhead.set_tenant($1)")
                .bind(tenant)
                .execute(&mut *tx)
                .await?;
            let rows = sqlx::query(&format!(
                "select $2::pg_catalog.text as slug, {COLUMNS} from bulkhead.eval_run_status($1)"
            ))
            .bind(runs)
            .bind(tenant.to_string())
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            rows
        }
    };
    rows.iter()
        .map(|row| {
            Ok(RunStatus {
                tenant: row.try_get("slug")?,
                run_id: row.try_get("run_id")?,
                version: row.try_get("version")?,
                skeleton_version: row.try_get("skeleton_version")?,
                status: row.try_get("status")?,
                error: row.try_get("error")?,
                passed: row.try_get("cases_passed")?,
                failed: row.try_get("cases_failed")?,
                pending: row.try_get("cases_pending")?,
                reused: row.try_get("reused")?,
            })
        })
        .collect()
}

fn print_table(template: &str, runs: &[RunStatus]) {
    println!("eval gate for template {template:?}");
    println!(
        "{:<24} {:>18} {:>8} {:>8} {:>7} {:>7} {:>7}  {}",
        "tenant", "run", "version", "status", "passed", "failed", "reused", "note"
    );
    for run in runs {
        println!(
            "{:<24} {:>18} {:>8} {:>8} {:>7} {:>7} {:>7}  {}",
            printable(&run.tenant),
            run.run_id,
            run.version.map_or("-".into(), |v| v.to_string()),
            run.status,
            run.passed,
            run.failed,
            run.reused,
            printable(run.error.as_deref().unwrap_or(""))
        );
    }
    let failed = runs.iter().filter(|r| r.status != "passed").count();
    println!(
        "{} of {} tenants passed{}",
        runs.len() - failed,
        runs.len(),
        if failed > 0 {
            ": the gate refuses activate_prompt for the others"
        } else {
            ""
        }
    );
}

fn json_report(template: &str, version: i32, runs: &[RunStatus]) -> String {
    let tenants: Vec<serde_json::Value> = runs
        .iter()
        .map(|r| {
            serde_json::json!({
                "tenant": r.tenant, "run_id": r.run_id, "version": r.version,
                "skeleton_version": r.skeleton_version, "status": r.status, "error": r.error,
                "cases_passed": r.passed, "cases_failed": r.failed, "reused": r.reused,
            })
        })
        .collect();
    let passed = runs.iter().all(|r| r.status == "passed");
    serde_json::to_string_pretty(&serde_json::json!({
        "template": template, "version": version, "passed": passed, "tenants": tenants,
    }))
    .expect("JSON values serialize")
}

/// JUnit XML: one test case per tenant (its run), failed unless the run passed.
fn junit_report(template: &str, version: i32, runs: &[RunStatus], seconds: f64) -> String {
    let failures = runs.iter().filter(|r| r.status != "passed").count();
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"bulkhead eval\" tests=\"{}\" failures=\"{failures}\" time=\"{seconds:.3}\">\n  <testsuite name=\"{} version {version}\" tests=\"{}\" failures=\"{failures}\" time=\"{seconds:.3}\">\n",
        runs.len(),
        escape(template),
        runs.len()
    );
    for run in runs {
        xml.push_str(&format!(
            "    <testcase classname=\"{}\" name=\"{} run {}\">",
            escape(&run.tenant),
            escape(template),
            run.run_id
        ));
        if run.status != "passed" {
            let message = format!(
                "{}: {} of {} cases failed{}",
                run.status,
                run.failed,
                run.passed + run.failed + run.pending,
                run.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
            xml.push_str(&format!(
                "<failure message=\"{}\" type=\"{}\"/>",
                escape(&message),
                escape(&run.status)
            ));
        }
        xml.push_str("</testcase>\n");
    }
    xml.push_str("  </testsuite>\n</testsuites>\n");
    xml
}

/// XML attribute text (and HTML text): the five predefined entities, and control characters
/// (which XML 1.0 cannot hold) dropped.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
    out
}

fn write_file(path: &Path, contents: &str) -> Result<(), EvalError> {
    std::fs::write(path, contents).map_err(|source| EvalError::File {
        path: path.display().to_string(),
        source,
    })
}

/// Text from the database for a terminal: control characters (a model's answer may carry ANSI
/// or OSC escape sequences) become spaces, so nothing printed can drive the terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            // Bidirectional overrides and isolates reorder what the terminal shows.
            let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            if c.is_control() || bidi {
                ' '
            } else {
                c
            }
        })
        .collect()
}

/// Prints one tenant's run, read in that tenant's context: the run named, or the newest (of a
/// template, if named).
pub async fn report(
    database_url: &str,
    tenant: Uuid,
    template: Option<&str>,
    run: Option<i64>,
) -> Result<bool, EvalError> {
    let pool = connect(database_url).await?;
    let mut tx = pool.begin().await?;
    sqlx::query("select bulkhead.set_tenant($1)")
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    let summary = sqlx::query(
        "select run_id, template_name, version, status, error, score::pg_catalog.float8 as score
         from bulkhead.eval_run_status(case when $1::pg_catalog.int8 is null then null else array[$1::pg_catalog.int8] end, $2)
         limit 1",
    )
    .bind(run)
    .bind(template)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| EvalError::Usage("this tenant has no such eval run".into()))?;
    let run_id: i64 = summary.try_get("run_id")?;
    let status: String = summary.try_get("status")?;
    println!(
        "tenant {tenant}: run {run_id} of {:?} version {}: {}{}{}",
        summary.try_get::<String, _>("template_name")?,
        summary
            .try_get::<Option<i32>, _>("version")?
            .map_or("-".into(), |v| v.to_string()),
        printable(&status),
        summary
            .try_get::<Option<f64>, _>("score")?
            .map(|s| format!(", score {s:.3}"))
            .unwrap_or_default(),
        summary
            .try_get::<Option<String>, _>("error")?
            .map(|e| format!(" ({})", printable(&e)))
            .unwrap_or_default()
    );
    let rows = sqlx::query(
        "select r.case_id, c.name, r.passed, r.output, r.details
         from bulkhead.eval_report($1) r
         left join bulkhead.eval_cases c on c.tenant_id = bulkhead.current_tenant() and c.id = r.case_id
         order by c.name nulls last, r.case_id",
    )
    .bind(run_id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    for row in &rows {
        let case: Uuid = row.try_get("case_id")?;
        let name: Option<String> = row.try_get("name")?;
        let passed: Option<bool> = row.try_get("passed")?;
        let output: Option<String> = row.try_get("output")?;
        let details: serde_json::Value = row.try_get("details")?;
        let verdict = match passed {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "....",
        };
        println!(
            "{verdict} {}{}",
            printable(&name.unwrap_or_else(|| case.to_string())),
            if details["reused"] == true {
                " (reused)"
            } else {
                ""
            }
        );
        if passed == Some(false) {
            for call in details["calls"].as_array().into_iter().flatten() {
                if let Some(error) = call["assertions"]["error"].as_str() {
                    println!("     error: {}", printable(error));
                }
                for assertion in call["assertions"].as_array().into_iter().flatten() {
                    if assertion["passed"] == false {
                        println!(
                            "     {}: {}",
                            printable(assertion["type"].as_str().unwrap_or("?")),
                            printable(assertion["detail"].as_str().unwrap_or(""))
                        );
                    }
                }
            }
            if let Some(output) = output {
                let first: String = output.chars().take(160).collect();
                println!("     answer: {}", printable(&first));
            }
        }
    }
    Ok(status == "passed")
}

/// Imports cases from a JSON Lines file into one tenant's eval sets, in one transaction: every
/// line or none. Each line: {"template"?, "vars"?, "assertions", "request"?, "weight"?, "name"?}.
pub async fn add_cases(
    database_url: &str,
    tenant: Uuid,
    template: Option<&str>,
    path: &Path,
) -> Result<usize, EvalError> {
    let file_error = |source| EvalError::File {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(file_error)?;
    let mut cases = Vec::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(file_error)?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| EvalError::CaseLine {
            path: path.display().to_string(),
            line: index + 1,
            message,
        };
        let case: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let serde_json::Value::Object(fields) = &case else {
            return Err(bad("a case is a JSON object".into()));
        };
        const KEYS: [&str; 6] = [
            "template",
            "vars",
            "assertions",
            "request",
            "weight",
            "name",
        ];
        if let Some(key) = fields.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(bad(format!(
                "unknown key {key:?} (keys: {})",
                KEYS.join(", ")
            )));
        }
        if !matches!(
            case.get("weight"),
            None | Some(serde_json::Value::Number(_))
        ) {
            return Err(bad("\"weight\" must be a number".into()));
        }
        let template = match (case["template"].as_str(), template) {
            (Some(t), _) | (None, Some(t)) => t.to_string(),
            (None, None) => return Err(bad("no \"template\", and no --template".into())),
        };
        cases.push((index + 1, template, case));
    }
    let pool = connect(database_url).await?;
    let mut tx = pool.begin().await?;
    for (line, template, case) in &cases {
        sqlx::query(
            "select bulkhead.add_eval_case($1, $2, $3, $4, $5, coalesce($6::pg_catalog.numeric, 1), $7)",
        )
        .bind(tenant)
        .bind(template)
        .bind(case.get("vars").cloned().unwrap_or(serde_json::json!({})))
        .bind(case.get("assertions").cloned().unwrap_or(serde_json::Value::Null))
        .bind(case.get("request").filter(|r| !r.is_null()).cloned())
        .bind(case["weight"].as_f64())
        .bind(case["name"].as_str())
        .execute(&mut *tx)
        .await
        .map_err(|err| EvalError::CaseLine {
            path: path.display().to_string(),
            line: *line,
            message: match &err {
                sqlx::Error::Database(db) => format!(
                    "{} (SQLSTATE {}); no case was added",
                    db.message(),
                    db.code().unwrap_or_default()
                ),
                other => format!("{other}; no case was added"),
            },
        })?;
    }
    tx.commit().await?;
    Ok(cases.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(tenant: &str, status: &str, failed: i32) -> RunStatus {
        RunStatus {
            tenant: tenant.into(),
            run_id: 7,
            version: Some(2),
            skeleton_version: None,
            status: status.into(),
            error: None,
            passed: 3 - failed,
            failed,
            pending: 0,
            reused: 0,
        }
    }

    #[test]
    fn junit_marks_each_tenant_that_did_not_pass_and_escapes_names() {
        let xml = junit_report(
            "support",
            2,
            &[run("a&b<c>", "passed", 0), run("b\"x", "failed", 1)],
            1.5,
        );
        assert!(xml.contains("tests=\"2\" failures=\"1\""), "{xml}");
        assert!(xml.contains("classname=\"a&amp;b&lt;c&gt;\""), "{xml}");
        assert!(xml.contains("classname=\"b&quot;x\""), "{xml}");
        assert_eq!(xml.matches("<failure ").count(), 1, "{xml}");
        assert!(xml.contains("failed: 1 of 3 cases failed"), "{xml}");
    }

    #[test]
    fn terminal_text_loses_its_escape_sequences() {
        assert_eq!(
            printable("ok\u{1b}]52;c;cHduZWQ=\u{7}\n"),
            "ok ]52;c;cHduZWQ=  "
        );
    }

    #[test]
    fn escape_drops_what_xml_cannot_hold() {
        assert_eq!(escape("a\u{0}b\u{1b}c\nd'"), "abc d&apos;");
    }
}
