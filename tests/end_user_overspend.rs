//! Issue 13, finding 1: an end user overspends the tenant's budget through text it puts in a
//! prompt. `complete()` used to reserve a third of the prompt's bytes plus 16 tokens; text that
//! tokenizes worst (rare symbols: up to a token per byte) is billed three times that, so a $0.05
//! budget ended at $0.08 in the outside review.
//!
//! The attack: queue completions whose request variables are rare symbols until admission
//! refuses, let the worker make the calls, and compare the ledger with the budget. The FAKE
//! provider server (tests/fakes/fake_providers.py, a test double speaking the OpenAI-compatible
//! wire format) bills each call at the worst a byte-level BPE can: a token per byte, plus framing.
//! The twin: the same calls admitted at the old estimate overspend.

mod common;

use common::{admin, app, begin_as, create_tenant, superuser, FakeProviders, KillOnDrop};
use sqlx::PgConnection;
use std::process::{Command, Stdio};
use uuid::Uuid;

const TEMPLATE: &str = "it_overspend";
/// $0.0001 per input token, output free: the $0.05 budget holds 500 input tokens.
const INPUT_PER_MTOK: &str = "100";
const BUDGET_USD: f64 = 0.05;

fn worker_url() -> String {
    std::env::var("BULKHEAD_TEST_DATABASE_URL")
        .expect("BULKHEAD_TEST_DATABASE_URL is set by `make test-integration`")
        .replacen("postgres@", "bulkhead_test_worker@", 1)
}

/// Rare symbols, three bytes each, one token each at worst.
fn hostile_question() -> String {
    "⟁⟟⧖⧗⨳".repeat(6)
}

async fn tenant_with_budget(admin_conn: &mut PgConnection, prefix: &str) -> Uuid {
    let tenant = create_tenant(admin_conn, prefix).await;
    sqlx::query("select bulkhead.set_budget($1, 1000, 10000000, 10000000, $2::numeric)")
        .bind(tenant)
        .bind(BUDGET_USD.to_string())
        .execute(&mut *admin_conn)
        .await
        .unwrap();
    sqlx::query("select bulkhead.publish_prompt($1, $2, '{}')")
        .bind(tenant)
        .bind(TEMPLATE)
        .execute(&mut *admin_conn)
        .await
        .unwrap();
    sqlx::query("select bulkhead.activate_prompt($1, $2, 1)")
        .bind(tenant)
        .bind(TEMPLATE)
        .execute(&mut *admin_conn)
        .await
        .unwrap();
    tenant
}

async fn spent(su: &mut PgConnection, tenant: Uuid) -> f64 {
    sqlx::query_scalar(
        "select coalesce(sum(cost_usd), 0)::float8 from bulkhead.ledger where tenant_id = $1",
    )
    .bind(tenant)
    .fetch_one(su)
    .await
    .unwrap()
}

#[tokio::test]
async fn an_end_users_text_cannot_drive_the_tenant_past_its_budget() {
    let fake = FakeProviders::start();
    let mut admin_conn = admin().await;
    let mut conn = app().await;
    let mut su = superuser().await;
    let model = format!("it-bytes-{}", Uuid::new_v4().simple());
    sqlx::query("select bulkhead.set_price('openai_compatible', $1, $2::numeric, 0, effective_from => now() - interval '1 minute')")
        .bind(&model)
        .bind(INPUT_PER_MTOK)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    sqlx::query("select bulkhead.set_skeleton($1, 'Q: {{ vars.question }}')")
        .bind(TEMPLATE)
        .execute(&mut admin_conn)
        .await
        .unwrap();

    // The bound is what the provider can bill at worst: a token per byte plus framing.
    let prompt = format!("Q: {}", hostile_question());
    let (bound, method): (i64, String) =
        sqlx::query_as("select tokens, method from bulkhead.input_token_bound($1, array[$2])")
            .bind(&model)
            .bind(&prompt)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(method, "bytes");
    assert!(
        bound >= prompt.len() as i64 + 7,
        "{bound} for {} bytes",
        prompt.len()
    );
    let old_estimate = (prompt.len() as i64 + 2) / 3 + 16;
    assert!(
        old_estimate < prompt.len() as i64 + 7,
        "the old estimate falls short of the worst case"
    );

    // The twin: the same calls admitted at the old estimate, all before any is settled (as
    // queued completions are), then billed the worst case.
    let twin = tenant_with_budget(&mut admin_conn, "overspend-twin").await;
    let mut reservations = Vec::new();
    loop {
        let mut tx = begin_as(&mut conn, twin).await.unwrap();
        let admitted: Result<Uuid, _> =
            sqlx::query_scalar("select bulkhead.budget_check($1, $2, 1)")
                .bind(&model)
                .bind(i32::try_from(old_estimate).unwrap())
                .fetch_one(&mut *tx)
                .await;
        let Ok(reservation) = admitted else { break };
        tx.commit().await.unwrap();
        reservations.push(reservation);
    }
    for reservation in reservations {
        let mut tx = begin_as(&mut conn, twin).await.unwrap();
        sqlx::query("select bulkhead.ledger_record($1, jsonb_build_object('prompt_tokens', $2::int, 'completion_tokens', 1), $3)")
            .bind(reservation)
            .bind(i32::try_from(prompt.len() + 7).unwrap())
            .bind(format!("twin-{}", Uuid::new_v4().simple()))
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let twin_spent = spent(&mut su, twin).await;
    assert!(
        twin_spent > BUDGET_USD * 1.5,
        "the old estimate overspends: ${twin_spent}"
    );

    // The attack through complete(): the end user's text is in vars.question.
    let tenant = tenant_with_budget(&mut admin_conn, "overspend").await;
    let env_name = format!("BULKHEAD_IT_OVERSPEND_{}", Uuid::new_v4().simple());
    sqlx::query("select bulkhead.set_credential($1, 'openai_compatible', $2)")
        .bind(tenant)
        .bind(format!("env:{env_name}"))
        .execute(&mut admin_conn)
        .await
        .unwrap();
    let mut queued = 0;
    loop {
        let mut tx = begin_as(&mut conn, tenant).await.unwrap();
        let job: Result<i64, _> = sqlx::query_scalar(
            "select bulkhead.complete($1, jsonb_build_object('question', $2::text), $3, 1)",
        )
        .bind(TEMPLATE)
        .bind(hostile_question())
        .bind(&model)
        .fetch_one(&mut *tx)
        .await;
        match job {
            Ok(_) => {
                tx.commit().await.unwrap();
                queued += 1;
            }
            Err(err) => {
                assert_eq!(common::sqlstate::<()>(&Err(err)), "PT429");
                break;
            }
        }
        assert!(queued < 1000, "admission never refused");
    }
    assert!(queued >= 1);
    fake.inject(
        "/v1/chat/completions",
        serde_json::Value::Array(vec![serde_json::json!({"worst_case_tokens": true}); queued]),
    );
    let mut worker = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .args([
                "worker",
                "--name",
                "it-overspend",
                "--drain",
                "--poll-ms",
                "100",
            ])
            .args(["--lease-secs", "30", "--provider-timeout-secs", "5"])
            .env("DATABASE_URL", worker_url())
            .env(
                "OPENAI_COMPATIBLE_BASE_URL",
                format!("http://127.0.0.1:{}/v1", fake.port),
            )
            .env(&env_name, format!("compat-key-{}", Uuid::new_v4().simple()))
            .stdout(Stdio::null())
            .spawn()
            .expect("start bulkhead worker"),
    );
    assert!(worker.0.wait().unwrap().success());
    let settled: i64 =
        sqlx::query_scalar("select count(*) from bulkhead.ledger where tenant_id = $1")
            .bind(tenant)
            .fetch_one(&mut su)
            .await
            .unwrap();
    assert_eq!(
        settled, queued as i64,
        "every queued call was made and settled"
    );
    let attack_spent = spent(&mut su, tenant).await;
    assert!(
        attack_spent <= BUDGET_USD,
        "{queued} calls spent ${attack_spent} of a ${BUDGET_USD} budget"
    );
}
