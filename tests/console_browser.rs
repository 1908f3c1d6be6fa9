//! The console in a real browser (tests/browser/console_flows.py: Debian's headless chromium
//! through chromedriver, driven by Selenium). This test prepares the database, starts
//! `bulkhead console`, runs the flows, and then checks in the database what the clicks did: the
//! key the page showed is the stored one and is revoked, the tenant is suspended, the rollback
//! is recorded under the admin's login, the deleted tenant has its receipt, and the downloaded
//! CSV is usage_by_tenant's month.

mod common;

use common::{superuser, superuser_options, KillOnDrop};
use sqlx::{ConnectOptions, Executor, PgConnection};
use std::process::{Command, Stdio};
use std::time::Duration;
use uuid::Uuid;

const ADMIN: &str = "console_browser_admin";
const SUPPORT: &str = "console_browser_support";
const FINANCE: &str = "console_browser_finance";
const TEMPLATE: &str = "browser-reply";

fn password_of(login: &str) -> String {
    format!("Browser-{login}-7x")
}

async fn login(su: &mut PgConnection, name: &str, group: &str) {
    let exists: bool =
        sqlx::query_scalar("select exists (select from pg_roles where rolname = $1)")
            .bind(name)
            .fetch_one(&mut *su)
            .await
            .unwrap();
    if !exists {
        su.execute(format!("create role {name} login in role {group}").as_str())
            .await
            .unwrap();
    }
    su.execute(format!("alter role {name} password '{}'", password_of(name)).as_str())
        .await
        .unwrap();
}

async fn run(conn: &mut PgConnection, sql: &str, tenant: Uuid) {
    sqlx::query(sql)
        .bind(tenant)
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test]
async fn the_console_in_a_browser() {
    let python = std::env::var("BULKHEAD_BROWSER_PYTHON")
        .expect("BULKHEAD_BROWSER_PYTHON (a venv with selenium) is set by `make test-integration`");
    let shots = std::env::var("BULKHEAD_CONSOLE_SHOTS").unwrap_or_else(|_| {
        common::bulkhead_home()
            .join("console-screenshots")
            .display()
            .to_string()
    });
    let mut su = superuser().await;
    login(&mut su, ADMIN, "bulkhead_admin").await;
    login(&mut su, SUPPORT, "bulkhead_support").await;
    login(&mut su, FINANCE, "bulkhead_finance").await;

    // Acme: usage, a credential, a prompt with three versions (1 then 2 activated; 3 refused by
    // its eval set), a pending eval run, and a budget it is over.
    let mut admin = common::admin().await;
    let acme_slug = common::unique_slug("console-browser-acme");
    let acme: Uuid = sqlx::query_scalar("select bulkhead.create_tenant($1, 'Acme Browser')")
        .bind(&acme_slug)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    common::populate_tenant(&mut admin, acme).await;
    run(
        &mut admin,
        "select bulkhead.set_budget($1, 100, 100000, 100000, 0.00001)",
        acme,
    )
    .await;
    sqlx::query("select bulkhead.set_skeleton($1, 'Answer {{ vars.question }} in a {{ slots.tone }} tone.')")
        .bind(TEMPLATE)
        .execute(&mut admin)
        .await
        .unwrap();
    for (version, tone) in [(1, "friendly"), (2, "warm"), (3, "brisk")] {
        sqlx::query("select bulkhead.publish_prompt($1, $2, jsonb_build_object('tone', $3::text))")
            .bind(acme)
            .bind(TEMPLATE)
            .bind(tone)
            .execute(&mut admin)
            .await
            .unwrap();
        if version < 3 {
            sqlx::query("select bulkhead.activate_prompt($1, $2, $3)")
                .bind(acme)
                .bind(TEMPLATE)
                .bind(version)
                .execute(&mut admin)
                .await
                .unwrap();
        }
    }
    sqlx::query("select bulkhead.set_eval_set($1, $2, 'gpt-4o-mini')")
        .bind(acme)
        .bind(TEMPLATE)
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query("select bulkhead.add_eval_case($1, $2, '{\"question\": \"Where is my order?\"}', '[{\"type\": \"contains\", \"value\": \"order\"}]')")
        .bind(acme)
        .bind(TEMPLATE)
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query("select bulkhead.set_eval_budget($1, 5)")
        .bind(acme)
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query("select bulkhead.start_eval($1, 3, $2)")
        .bind(TEMPLATE)
        .bind(acme)
        .execute(&mut admin)
        .await
        .unwrap();

    // A tenant named with markup, at 90 % of its budget; one to delete, under budget.
    let xss_slug = common::unique_slug("console-browser-xss");
    let xss: Uuid = sqlx::query_scalar("select bulkhead.create_tenant($1, $2)")
        .bind(&xss_slug)
        .bind("<script>alert('console')</script> Markup Inc")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    run(
        &mut admin,
        "select bulkhead.set_budget($1, 100, 100000, 100000, 1)",
        xss,
    )
    .await;
    sqlx::query(
        "insert into bulkhead.ledger (tenant_id, reservation_id, request_id, provider, model, input_tokens,
             cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens, itpm_tokens, cost_usd,
             price_effective_from)
         values ($1, gen_random_uuid(), 'browser-near', 'openai', 'gpt-4o-mini', 10, 0, 0, 10, 0, 10, 0.9, now())",
    )
    .bind(xss)
    .execute(&mut su)
    .await
    .unwrap();
    let doomed_slug = common::unique_slug("console-browser-doomed");
    let doomed: Uuid = sqlx::query_scalar("select bulkhead.create_tenant($1, 'Doomed Browser')")
        .bind(&doomed_slug)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    run(
        &mut admin,
        "select bulkhead.set_credential($1, 'openai', 'env:DOOMED_KEY', provider_project_id => 'proj_doomed_' || $1::text)",
        doomed,
    )
    .await;
    let period: String = sqlx::query_scalar(
        "select to_char(now() at time zone current_setting('bulkhead.billing_time_zone'), 'YYYY-MM')",
    )
    .fetch_one(&mut su)
    .await
    .unwrap();

    // The console, and the flows.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let options = superuser_options();
    let _console = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .args(["console", "--listen", &format!("127.0.0.1:{port}")])
            .env(
                "DATABASE_URL",
                format!(
                    "postgres://{}:{}/{}",
                    options.get_host(),
                    options.get_port(),
                    options.get_database().unwrap()
                ),
            )
            .env("PGPASSFILE", "/nonexistent")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if reqwest::get(format!("{base}/sign-in")).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let downloads =
        std::env::temp_dir().join(format!("bulkhead-console-downloads-{}", std::process::id()));
    let flows = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/browser/console_flows.py"
        ))
        .env("SE_OFFLINE", "true")
        .env("CONSOLE_URL", &base)
        .env("SHOTS", &shots)
        .env("DOWNLOADS", &downloads)
        .env("ADMIN_LOGIN", ADMIN)
        .env("ADMIN_PASSWORD", password_of(ADMIN))
        .env("SUPPORT_LOGIN", SUPPORT)
        .env("SUPPORT_PASSWORD", password_of(SUPPORT))
        .env("FINANCE_LOGIN", FINANCE)
        .env("FINANCE_PASSWORD", password_of(FINANCE))
        .env("ACME_ID", acme.to_string())
        .env("ACME_SLUG", &acme_slug)
        .env("ACME_NAME", "Acme Browser")
        .env("XSS_ID", xss.to_string())
        .env("DOOMED_ID", doomed.to_string())
        .env("DOOMED_SLUG", &doomed_slug)
        .env("TEMPLATE", TEMPLATE)
        .env("PERIOD", &period)
        .env("CREDENTIAL_REF", "OPENAI_KEY_FIXTURE")
        .output()
        .expect("the browser flows run");
    let stdout = String::from_utf8_lossy(&flows.stdout);
    assert!(
        flows.status.success(),
        "the browser flows failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&flows.stderr)
    );
    let result: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap()).expect("the flows' JSON result");

    // What the clicks did, in the database.
    let secret = result["key_secret"].as_str().unwrap();
    let revoked: Option<bool> = sqlx::query_scalar(
        "select revoked_at is not null from bulkhead.api_keys
         where tenant_id = $1 and key_hash = sha256(convert_to($2, 'UTF8'))",
    )
    .bind(acme)
    .bind(secret)
    .fetch_optional(&mut su)
    .await
    .unwrap();
    assert_eq!(
        revoked,
        Some(true),
        "the page's secret is the stored key, revoked"
    );
    let status: String = sqlx::query_scalar("select status from bulkhead.tenants where id = $1")
        .bind(xss)
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert_eq!(status, "suspended");
    let latest: (String, String, Option<i32>, i32) = sqlx::query_as(
        "select action, released_by, from_version, to_version from bulkhead.prompt_releases
         where tenant_id = $1 and template_name = $2 order by seq desc limit 1",
    )
    .bind(acme)
    .bind(TEMPLATE)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(
        latest,
        ("rollback".into(), ADMIN.into(), Some(2), 1),
        "the rollback, recorded under the signed-in login"
    );
    let active: Option<i32> = sqlx::query_scalar(
        "select active_version from bulkhead.prompt_templates where tenant_id = $1 and template_name = $2",
    )
    .bind(acme)
    .bind(TEMPLATE)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(
        active,
        Some(1),
        "neither the refused nor the reasonless forced activation moved the pointer"
    );
    let receipt: Uuid = result["receipt_id"].as_str().unwrap().parse().unwrap();
    let receipt_for: Uuid =
        sqlx::query_scalar("select tenant_id from bulkhead.deletion_receipts where id = $1")
            .bind(receipt)
            .fetch_one(&mut su)
            .await
            .unwrap();
    assert_eq!(receipt_for, doomed);
    let gone: bool =
        sqlx::query_scalar("select not exists (select from bulkhead.tenants where id = $1)")
            .bind(doomed)
            .fetch_one(&mut su)
            .await
            .unwrap();
    assert!(gone);
    let still_there: bool =
        sqlx::query_scalar("select exists (select from bulkhead.tenants where id = $1)")
            .bind(acme)
            .fetch_one(&mut su)
            .await
            .unwrap();
    assert!(still_there, "support's or finance's deletion went through");

    // The downloaded CSV is usage_by_tenant's month, row for row.
    let csv = std::fs::read_to_string(result["csv_path"].as_str().unwrap()).unwrap();
    let mut finance = superuser_options()
        .username(FINANCE)
        .password(&password_of(FINANCE))
        .connect()
        .await
        .unwrap();
    let expected: Vec<(Uuid, String, String, String, i64, String)> = sqlx::query_as(
        "with b as (select date_trunc('month', now() at time zone current_setting('bulkhead.billing_time_zone')) as m,
                           current_setting('bulkhead.billing_time_zone') as z)
         select u.tenant_id, u.slug, u.provider, u.model, u.requests, u.cost_usd::text
         from b, bulkhead.usage_by_tenant(b.m at time zone b.z, (b.m + interval '1 month') at time zone b.z) u",
    )
    .fetch_all(&mut finance)
    .await
    .unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), expected.len(), "{csv}");
    for (row, want) in rows.iter().zip(&expected) {
        assert_eq!(row[0], period);
        assert_eq!(
            (row[1], row[2], row[3], row[4], row[5], row[10]),
            (
                want.0.to_string().as_str(),
                want.1.as_str(),
                want.2.as_str(),
                want.3.as_str(),
                want.4.to_string().as_str(),
                want.5.as_str()
            )
        );
    }
    assert!(
        rows.iter().any(|r| r[1] == acme.to_string()),
        "Acme's usage is in the export"
    );
    for page in [
        "sign_in_refused",
        "tenants",
        "tenant",
        "key_created",
        "prompt",
        "gate_refused",
        "evals",
        "eval_run",
        "delete",
        "receipt",
        "tenant_as_support",
        "finance",
    ] {
        let path = std::path::Path::new(&shots).join(format!("{page}.png"));
        assert!(
            path.metadata().map(|m| m.len() > 1000).unwrap_or(false),
            "no screenshot {}",
            path.display()
        );
    }
    let _ = std::fs::remove_dir_all(&downloads);
}
