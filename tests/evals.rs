//! Evals end to end: cases -> `bulkhead.start_eval` -> `bulkhead worker` -> the FAKE provider
//! server (tests/fakes/fake_providers.py, a test double speaking OpenAI's wire format; a
//! FAKE_REPLY<<text>> directive in a request makes it answer exactly `text`) -> scores in the
//! database -> the release gate; and `bulkhead eval gate | report | add-cases` with their exit
//! codes. The tenants act through `bulkhead_test_app`, a non-superuser, non-owner login.
//!
//! One test function: the worker claims any tenant's jobs, so scenarios run in sequence.

mod common;

use common::{admin, app, begin_as, create_tenant, superuser, FakeProviders, KillOnDrop};
use serde_json::{json, Value};
use sqlx::PgConnection;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

fn url_as(login: &str) -> String {
    std::env::var("BULKHEAD_TEST_DATABASE_URL")
        .expect("BULKHEAD_TEST_DATABASE_URL is set by `make test-integration`")
        .replacen("postgres@", &format!("{login}@"), 1)
}

/// The FAKE's answer to a case: the directive its vars carry.
fn reply(text: &str) -> Value {
    json!({ "q": format!("FAKE_REPLY<<{text}>>") })
}

async fn add_case(
    conn: &mut PgConnection,
    tenant: Uuid,
    template: &str,
    name: &str,
    vars: Value,
    assertions: Value,
    request: Option<Value>,
) -> Uuid {
    let mut tx = begin_as(conn, tenant).await.unwrap();
    let id = sqlx::query_scalar(
        "select bulkhead.add_eval_case($1, $2, $3, $4, request => $5, name => $6)",
    )
    .bind(tenant)
    .bind(template)
    .bind(vars)
    .bind(assertions)
    .bind(request)
    .bind(name)
    .fetch_one(&mut *tx)
    .await
    .unwrap_or_else(|e| panic!("case {name}: {e}"));
    tx.commit().await.unwrap();
    id
}

async fn start(conn: &mut PgConnection, tenant: Uuid, template: &str, version: i32) -> i64 {
    let mut tx = begin_as(conn, tenant).await.unwrap();
    let run = sqlx::query_scalar("select bulkhead.start_eval($1, $2)")
        .bind(template)
        .bind(version)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    run
}

/// Waits for a run to end; returns its status.
async fn finished(conn: &mut PgConnection, tenant: Uuid, run: i64) -> String {
    let started = Instant::now();
    loop {
        let mut tx = begin_as(conn, tenant).await.unwrap();
        let status: String =
            sqlx::query_scalar("select status from bulkhead.eval_runs where id = $1")
                .bind(run)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        tx.commit().await.unwrap();
        if status != "running" {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "run {run} did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (case name, passed, per-assertion verdicts) of a run, as its tenant reads it.
async fn report(conn: &mut PgConnection, tenant: Uuid, run: i64) -> Vec<(String, bool, Value)> {
    let mut tx = begin_as(conn, tenant).await.unwrap();
    let rows: Vec<(String, bool, Value)> = sqlx::query_as(
        "select c.name, r.passed, r.details -> 'calls' -> 0 -> 'assertions'
         from bulkhead.eval_report($1) r join bulkhead.eval_cases c on c.id = r.case_id
         order by c.name",
    )
    .bind(run)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    rows
}

async fn activate(
    conn: &mut PgConnection,
    tenant: Uuid,
    template: &str,
    version: i32,
) -> Result<(), String> {
    let mut tx = begin_as(conn, tenant).await.unwrap();
    let outcome = sqlx::query("select bulkhead.activate_prompt($1, $2, $3)")
        .bind(tenant)
        .bind(template)
        .bind(version)
        .execute(&mut *tx)
        .await;
    match outcome {
        Ok(_) => {
            tx.commit().await.unwrap();
            Ok(())
        }
        Err(sqlx::Error::Database(db)) => Err(format!(
            "{}: {}",
            db.code().unwrap_or_default(),
            db.message()
        )),
        Err(other) => panic!("{other}"),
    }
}

/// A product call of the tenant in context: `complete()` on the template's active version.
async fn product_call(
    conn: &mut PgConnection,
    template: &str,
    model: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select bulkhead.complete($1, '{\"q\": \"product\"}', $2, 20)")
        .bind(template)
        .bind(model)
        .fetch_one(conn)
        .await
}

fn bulkhead(args: &[&str], login: &str) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(args)
        .env("DATABASE_URL", url_as(login))
        .stdin(Stdio::null())
        .output()
        .expect("run bulkhead");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn evals_score_every_assertion_type_gate_releases_and_keep_tenants_apart() {
    let fake = FakeProviders::start();
    let mut admin_conn = admin().await;
    let mut conn = app().await;
    let mut su = superuser().await;
    let run_tag = &Uuid::new_v4().simple().to_string()[..8];
    let template = format!("it_eval_{run_tag}");
    let (model, judge) = (format!("it-eval-{run_tag}"), format!("it-judge-{run_tag}"));

    // Two tenants with their own keys; one skeleton; each tenant's version 1 and eval rules.
    let a = create_tenant(&mut admin_conn, "eval-a").await;
    let b = create_tenant(&mut admin_conn, "eval-b").await;
    let (key_a, key_b) = (
        format!("sk-eval-a-{}", Uuid::new_v4().simple()),
        format!("sk-eval-b-{}", Uuid::new_v4().simple()),
    );
    for (m, input, output) in [(&model, 1.0, 2.0), (&judge, 3.0, 3.0)] {
        sqlx::query("select bulkhead.set_price('openai', $1, $2::numeric, $3::numeric, effective_from => now() - interval '1 minute')")
            .bind(m)
            .bind(input)
            .bind(output)
            .execute(&mut admin_conn)
            .await
            .unwrap();
    }
    sqlx::query("select bulkhead.set_skeleton($1, 'You answer for {{ slots.company }}. {% if slots.banned_topics %}Never discuss {{ slots.banned_topics | join(\", \") }}. {% endif %}{{ vars.q }}')")
        .bind(&template)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    for (tenant, company) in [(a, "Acme"), (b, "Globex")] {
        let env_name = format!(
            "BULKHEAD_IT_EVAL_KEY_{}",
            if tenant == a { "A" } else { "B" }
        );
        sqlx::query("select bulkhead.set_credential($1, 'openai', $2)")
            .bind(tenant)
            .bind(format!("env:{env_name}"))
            .execute(&mut admin_conn)
            .await
            .unwrap();
        sqlx::query("select bulkhead.set_budget($1, 10000, 10000000, 10000000, 100.00)")
            .bind(tenant)
            .execute(&mut admin_conn)
            .await
            .unwrap();
        let mut tx = begin_as(&mut conn, tenant).await.unwrap();
        sqlx::query("select bulkhead.publish_prompt($1, $2, $3)")
            .bind(tenant)
            .bind(&template)
            .bind(json!({"company": company, "banned_topics": ["crypto"]}))
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query(
            "select bulkhead.set_eval_set($1, $2, $3, max_output_tokens => 64, judge_model => $4)",
        )
        .bind(tenant)
        .bind(&template)
        .bind(&model)
        .bind(&judge)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }

    let mut worker = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .args([
                "worker",
                "--name",
                "it-evals",
                "--concurrency",
                "8",
                "--poll-ms",
                "50",
            ])
            .args(["--lease-secs", "30", "--provider-timeout-secs", "5"])
            .env("DATABASE_URL", url_as("bulkhead_test_worker"))
            .env(
                "OPENAI_BASE_URL",
                format!("http://127.0.0.1:{}/v1", fake.port),
            )
            .env("BULKHEAD_IT_EVAL_KEY_A", &key_a)
            .env("BULKHEAD_IT_EVAL_KEY_B", &key_b)
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start bulkhead worker"),
    );

    // 1. Every assertion type passes on one crafted answer and fails on another.
    let search_tool = json!({"messages": [{"role": "user", "content": "find running shoes"}], "tools": [{"type": "function", "function": {
        "name": "search", "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]});
    let query_schema = json!({"type": "object", "required": ["query"],
                              "properties": {"query": {"type": "string", "minLength": 3}}});
    let judged =
        |score: f64| format!("FAKE_REPLY<<{{\"score\": {score}, \"reason\": \"graded\"}}>>");
    #[rustfmt::skip]
    let cases: Vec<(&str, Value, Value, Option<Value>, bool)> = vec![
        ("equals pass", reply("Hello"), json!([{"type": "equals", "value": "Hello"}]), None, true),
        ("equals fail", reply("Hello there"), json!([{"type": "equals", "value": "Hello"}]), None, false),
        ("contains pass", reply("your refund is on its way"), json!([{"type": "contains", "value": "refund"}]), None, true),
        ("contains fail", reply("your Refund is on its way"), json!([{"type": "contains", "value": "refund"}]), None, false),
        ("icontains pass", reply("your REFUND"), json!([{"type": "icontains", "value": "refund"}]), None, true),
        ("icontains fail", reply("your credit"), json!([{"type": "icontains", "value": "refund"}]), None, false),
        ("not_contains pass", reply("index funds"), json!([{"type": "not_contains", "value": "crypto"}]), None, true),
        ("not_contains fail", reply("crypto tips"), json!([{"type": "not_contains", "value": "crypto"}]), None, false),
        ("contains_any pass", reply("call us"), json!([{"type": "contains_any", "value": ["email", "call"]}]), None, true),
        ("contains_any fail", reply("write to us"), json!([{"type": "contains_any", "value": ["email", "call"]}]), None, false),
        ("contains_all pass", reply("email or call"), json!([{"type": "contains_all", "value": ["email", "call"]}]), None, true),
        ("contains_all fail", reply("email only"), json!([{"type": "contains_all", "value": ["email", "call"]}]), None, false),
        ("regex pass", reply("order #1234"), json!([{"type": "regex", "value": "^order #[0-9]{4}$"}]), None, true),
        ("regex fail", reply("order #12"), json!([{"type": "regex", "value": "^order #[0-9]{4}$"}]), None, false),
        ("starts_with pass", reply("Dear customer"), json!([{"type": "starts_with", "value": "Dear"}]), None, true),
        ("starts_with fail", reply("Hi, Dear"), json!([{"type": "starts_with", "value": "Dear"}]), None, false),
        ("is_json pass", reply("{\"ok\": true}"), json!([{"type": "is_json"}]), None, true),
        ("is_json fail", reply("{ok: true}"), json!([{"type": "is_json"}]), None, false),
        ("json_schema pass", reply("{\"id\": 7}"), json!([{"type": "json_schema", "value": {"type": "object", "required": ["id"]}}]), None, true),
        ("json_schema fail", reply("{\"name\": 7}"), json!([{"type": "json_schema", "value": {"type": "object", "required": ["id"]}}]), None, false),
        ("banned_topics_absent pass", reply("index funds"), json!([{"type": "banned_topics_absent"}]), None, true),
        ("banned_topics_absent fail", reply("buy CRYPTO now"), json!([{"type": "banned_topics_absent"}]), None, false),
        ("tool_call pass", json!({"q": "find running shoes"}), json!([{"type": "tool_call", "value": "search", "schema": query_schema}]), Some(search_tool.clone()), true),
        ("tool_call fail", json!({"q": "find running shoes"}), json!([{"type": "tool_call", "value": "lookup"}]), Some(search_tool.clone()), false),
        ("max_output_tokens pass", reply("one two three"), json!([{"type": "max_output_tokens", "value": 3}]), None, true),
        ("max_output_tokens fail", reply("one two three"), json!([{"type": "max_output_tokens", "value": 2}]), None, false),
        ("max_cost_usd pass", reply("cheap"), json!([{"type": "max_cost_usd", "value": 1}]), None, true),
        ("max_cost_usd fail", reply("cheap"), json!([{"type": "max_cost_usd", "value": 0}]), None, false),
        ("max_latency_ms pass", reply("fast"), json!([{"type": "max_latency_ms", "value": 60000}]), None, true),
        ("max_latency_ms fail", reply("fast"), json!([{"type": "max_latency_ms", "value": 0}]), None, false),
        ("similar pass", reply("the same words"), json!([{"type": "similar", "value": "the same words", "threshold": 0.99}]), None, true),
        ("similar fail", reply("other words"), json!([{"type": "similar", "value": "the same words", "threshold": 0.99}]), None, false),
        ("llm_rubric pass", reply("Thank you for asking."), json!([{"type": "llm_rubric", "value": format!("Polite. {}", judged(0.9))}]), None, true),
        ("llm_rubric fail", reply("Go away."), json!([{"type": "llm_rubric", "value": format!("Polite. {}", judged(0.1))}]), None, false),
    ];
    for (name, vars, assertions, request, _) in &cases {
        add_case(
            &mut conn,
            a,
            &template,
            name,
            vars.clone(),
            assertions.clone(),
            request.clone(),
        )
        .await;
    }
    let ledger_before: i64 =
        sqlx::query_scalar("select count(*) from bulkhead.ledger where tenant_id = $1")
            .bind(a)
            .fetch_one(&mut su)
            .await
            .unwrap();
    let run = start(&mut conn, a, &template, 1).await;
    assert_eq!(
        finished(&mut conn, a, run).await,
        "failed",
        "half the cases fail by design"
    );
    let verdicts = report(&mut conn, a, run).await;
    assert_eq!(verdicts.len(), cases.len());
    for (name, expected_pass) in cases.iter().map(|c| (c.0, c.4)) {
        let (_, passed, details) = verdicts.iter().find(|v| v.0 == name).unwrap();
        assert_eq!(*passed, expected_pass, "{name}: {details}");
    }
    // The judge's and the embeddings' calls were admitted, credentialed and ledgered as A's
    // own: each with A's key, on A's ledger, none on B's.
    let ledger: Vec<(String, i64)> = sqlx::query_as(
        "select model, count(*) from bulkhead.ledger where tenant_id = $1 group by model order by model",
    )
    .bind(a)
    .fetch_all(&mut su)
    .await
    .unwrap();
    let calls_of = |m: &str| ledger.iter().find(|(x, _)| x == m).map_or(0, |(_, n)| *n);
    assert_eq!(
        calls_of(&judge),
        2,
        "two rubric judgements, on A's ledger: {ledger:?}"
    );
    assert_eq!(
        calls_of("text-embedding-3-small"),
        2,
        "two similarity measurements: {ledger:?}"
    );
    assert_eq!(calls_of(&model), cases.len() as i64);
    assert_eq!(
        ledger.iter().map(|(_, n)| n).sum::<i64>() - ledger_before,
        cases.len() as i64 + 4
    );
    let b_ledger: i64 =
        sqlx::query_scalar("select count(*) from bulkhead.ledger where tenant_id = $1")
            .bind(b)
            .fetch_one(&mut su)
            .await
            .unwrap();
    assert_eq!(b_ledger, 0);
    let usage: Vec<Value> = serde_json::from_str(&fake.call("GET", "/_fake/usage", "")).unwrap();
    assert_eq!(usage.len(), cases.len() + 4);
    assert!(
        usage.iter().all(|u| u["key"] == key_a.as_str()),
        "every call with A's own key"
    );

    // 2. The gate: A's version 1 failed, so it cannot be activated; a version whose cases pass can.
    let refused = activate(&mut conn, a, &template, 1).await.unwrap_err();
    assert!(
        refused.starts_with("PT412") && refused.contains(&run.to_string()),
        "{refused}"
    );

    // 3. A and B hold a case with the same text; neither's report or rows hold the other's.
    let same = json!([{"type": "contains", "value": "shared"}]);
    let b_case = add_case(
        &mut conn,
        b,
        &template,
        "shared text",
        reply("shared answer"),
        same.clone(),
        None,
    )
    .await;
    let b_run = start(&mut conn, b, &template, 1).await;
    assert_eq!(finished(&mut conn, b, b_run).await, "passed");
    activate(&mut conn, b, &template, 1)
        .await
        .expect("B passed: the gate lets it through");
    let a_report = report(&mut conn, a, run).await;
    assert!(a_report.iter().all(|(name, _, _)| name != "shared text"));
    {
        let mut tx = begin_as(&mut conn, a).await.unwrap();
        let seen: i64 = sqlx::query_scalar(
            "select (select count(*) from bulkhead.eval_cases where id = $1)
                  + (select count(*) from bulkhead.eval_results where case_id = $1)
                  + (select count(*) from bulkhead.eval_runs where id = $2)",
        )
        .bind(b_case)
        .bind(b_run)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        assert_eq!(seen, 0, "A's context sees none of B's eval rows");
        let b_report = sqlx::query("select * from bulkhead.eval_report($1)")
            .bind(b_run)
            .fetch_all(&mut *tx)
            .await;
        assert_eq!(common::sqlstate(&b_report), "P0002");
    }

    // 3b. An eval budget is a budget line of its own. B's own budget is spent ($0): its product
    // call is refused, yet with an eval budget its evals run through the worker, settle on
    // that budget, and leave B's own spending as it was. Then the eval budget is spent ($0)
    // and B's budget has room: the product runs, the eval's call is refused.
    sqlx::query("select bulkhead.set_budget($1, 10000, 10000000, 10000000, 0)")
        .bind(b)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    sqlx::query("select bulkhead.set_eval_budget($1, 1)")
        .bind(b)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    let spent_before: String = {
        let mut tx = begin_as(&mut conn, b).await.unwrap();
        let refused = product_call(&mut tx, &template, &model).await;
        assert_eq!(
            common::sqlstate(&refused),
            "PT429",
            "B's own budget is spent"
        );
        tx.rollback().await.unwrap();
        let mut tx = begin_as(&mut conn, b).await.unwrap();
        let spent = sqlx::query_scalar("select coalesce(sum(cost_usd), 0)::text from bulkhead.ledger where budget_line = 'tenant'")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        spent
    };
    add_case(
        &mut conn,
        b,
        &template,
        "on the eval line",
        reply("eval line answer"),
        json!([{"type": "contains", "value": "eval line"}]),
        None,
    )
    .await;
    let line_run = start(&mut conn, b, &template, 1).await;
    assert_eq!(finished(&mut conn, b, line_run).await, "passed");
    {
        let mut tx = begin_as(&mut conn, b).await.unwrap();
        let (eval_rows, tenant_spent, eval_spent, held, ledger_eval): (i64, String, String, String, String) =
            sqlx::query_as(
                "select (select count(*) from bulkhead.ledger where budget_line = 'eval'),
                        (select coalesce(sum(cost_usd), 0)::text from bulkhead.ledger where budget_line = 'tenant'),
                        (select spent_usd::text from bulkhead.eval_budget_usage()),
                        (select held_usd::text from bulkhead.eval_budget_usage()),
                        (select sum(cost_usd)::text from bulkhead.ledger where budget_line = 'eval')",
            )
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert!(eval_rows >= 1, "the new case's call is on the eval line");
        assert_eq!(tenant_spent, spent_before, "B's own spending is untouched");
        assert_eq!(
            eval_spent.parse::<f64>().unwrap(),
            ledger_eval.parse::<f64>().unwrap()
        );
        assert_eq!(held.parse::<f64>().unwrap(), 0.0, "settled: nothing held");
    }
    sqlx::query("select bulkhead.set_budget($1, 10000, 10000000, 10000000, 100.00)")
        .bind(b)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    sqlx::query("select bulkhead.set_eval_budget($1, 0)")
        .bind(b)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    {
        let mut tx = begin_as(&mut conn, b).await.unwrap();
        product_call(&mut tx, &template, &model)
            .await
            .expect("B's own budget has room again");
        tx.commit().await.unwrap();
    }
    add_case(
        &mut conn,
        b,
        &template,
        "eval budget spent",
        reply("never asked"),
        json!([{"type": "contains", "value": "never"}]),
        None,
    )
    .await;
    let spent_run = start(&mut conn, b, &template, 1).await;
    finished(&mut conn, b, spent_run).await;
    {
        let mut tx = begin_as(&mut conn, b).await.unwrap();
        let refused: i64 = sqlx::query_scalar(
            "select count(*) from bulkhead.eval_results
             where run_id = $1 and status = 'error' and details ->> 'error' like '%eval_budget_exceeded%'",
        )
        .bind(spent_run)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            refused, 1,
            "the new case's call is refused by the spent eval budget"
        );
    }
    sqlx::query("select bulkhead.set_eval_budget($1, null)")
        .bind(b)
        .execute(&mut admin_conn)
        .await
        .unwrap();

    // 4. The CLI. A fresh template for A whose cases pass on version 2 and fail on version 1.
    let cli_template = format!("it_eval_cli_{run_tag}");
    sqlx::query("select bulkhead.set_skeleton($1, '{{ slots.answer }} {{ vars.q }}')")
        .bind(&cli_template)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    {
        let mut tx = begin_as(&mut conn, a).await.unwrap();
        for answer in ["FAKE_REPLY<<no>>", "FAKE_REPLY<<yes>>"] {
            sqlx::query("select bulkhead.publish_prompt($1, $2, $3)")
                .bind(a)
                .bind(&cli_template)
                .bind(json!({ "answer": answer }))
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        sqlx::query("select bulkhead.set_eval_set($1, $2, $3)")
            .bind(a)
            .bind(&cli_template)
            .bind(&model)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let scratch = std::env::temp_dir().join(format!("bulkhead-it-eval-{run_tag}"));
    std::fs::create_dir_all(&scratch).unwrap();
    let cases_file = scratch.join("cases.jsonl");
    let bad_file = scratch.join("bad.jsonl");
    std::fs::write(
        &cases_file,
        "{\"vars\": {\"q\": \"one\"}, \"assertions\": [{\"type\": \"equals\", \"value\": \"yes\"}], \"name\": \"cli says yes\"}\n\n\
         {\"vars\": {\"q\": \"two\"}, \"assertions\": [{\"type\": \"icontains\", \"value\": \"YES\"}], \"weight\": 2}\n",
    )
    .unwrap();
    std::fs::write(
        &bad_file,
        "{\"vars\": {}, \"assertions\": [{\"type\": \"equals\", \"value\": \"yes\"}]}\n{\"vars\": {}, \"assertions\": [{\"type\": \"regex\", \"value\": \"(\"}]}\n",
    )
    .unwrap();
    let (a_text, cli_text) = (a.to_string(), cli_template.as_str());
    let (code, _, err) = bulkhead(
        &[
            "eval",
            "add-cases",
            "--tenant",
            &a_text,
            "--template",
            cli_text,
            bad_file.to_str().unwrap(),
        ],
        "bulkhead_test_app",
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("line 2") && err.contains("22023"), "{err}");
    let (code, out, err) = bulkhead(
        &[
            "eval",
            "add-cases",
            "--tenant",
            &a_text,
            "--template",
            cli_text,
            cases_file.to_str().unwrap(),
        ],
        "bulkhead_test_app",
    );
    assert_eq!(
        (code, out.trim()),
        (0, format!("added 2 eval cases for tenant {a}").as_str()),
        "{err}"
    );
    let junit = scratch.join("junit.xml");
    let json_file = scratch.join("gate.json");
    let gate = |version: &str| {
        bulkhead(
            &[
                "eval",
                "gate",
                "--template",
                cli_text,
                "--version",
                version,
                "--tenant",
                &a_text,
                "--poll-ms",
                "100",
                "--timeout-secs",
                "60",
                "--junit",
                junit.to_str().unwrap(),
                "--json",
                json_file.to_str().unwrap(),
            ],
            "bulkhead_test_app",
        )
    };
    let (code, out, err) = gate("1");
    assert_eq!(code, 100, "version 1 fails: {out}{err}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("tests=\"1\" failures=\"1\"") && xml.contains("<failure "),
        "{xml}"
    );
    let (code, out, err) = gate("2");
    assert_eq!(code, 0, "version 2 passes: {out}{err}");
    assert!(out.contains("1 of 1 tenants passed"), "{out}");
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_file).unwrap()).unwrap();
    assert_eq!(summary["passed"], true);
    assert_eq!(summary["tenants"][0]["cases_passed"], 2);
    activate(&mut conn, a, &cli_template, 2)
        .await
        .expect("version 2 passed");
    let (code, out, _) = bulkhead(
        &[
            "eval",
            "report",
            "--tenant",
            &a_text,
            "--template",
            cli_text,
        ],
        "bulkhead_test_app",
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("PASS cli says yes") && !out.contains("shared"),
        "{out}"
    );
    // The same report for A's failing run: exit 100, and only A's cases.
    let (code, out, _) = bulkhead(
        &[
            "eval",
            "report",
            "--tenant",
            &a_text,
            "--run",
            &run.to_string(),
        ],
        "bulkhead_test_app",
    );
    assert_eq!(code, 100);
    assert!(
        out.contains("FAIL equals fail") && !out.contains("shared text"),
        "{out}"
    );
    // Errors exit 1: an unknown version, and a worker-less wait that times out.
    let (code, _, err) = gate("9");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no version 9"), "{err}");
    let _ = worker.0.kill();
    let _ = worker.0.wait();
    {
        let mut tx = begin_as(&mut conn, a).await.unwrap();
        sqlx::query("select bulkhead.publish_prompt($1, $2, $3)")
            .bind(a)
            .bind(&cli_template)
            .bind(json!({ "answer": "FAKE_REPLY<<yes!>>" }))
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let (code, _, err) = bulkhead(
        &[
            "eval",
            "gate",
            "--template",
            cli_text,
            "--version",
            "3",
            "--tenant",
            &a_text,
            "--timeout-secs",
            "1",
            "--poll-ms",
            "100",
        ],
        "bulkhead_test_app",
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is a `bulkhead worker` running?"), "{err}");
    let _ = std::fs::remove_dir_all(&scratch);
}
