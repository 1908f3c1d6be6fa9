//! `bulkhead gateway` end to end: the official OpenAI and Anthropic Python SDKs (tests/sdk) call
//! a real gateway process, which calls the FAKE providers (tests/fakes, test doubles speaking the
//! real wire formats) with each tenant's credential, against the live cluster.

mod common;

use common::{admin, superuser, FakeProviders, KillOnDrop};
use serde_json::{json, Value};
use sqlx::PgConnection;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

const JWT_SECRET: &str = "gateway-test-secret-of-32-bytes-or-more";

/// A running gateway; its stderr is kept for the redaction checks.
struct Gateway {
    process: KillOnDrop,
    url: String,
    log: Arc<Mutex<String>>,
}

impl Gateway {
    fn start(fake: &FakeProviders, env: &[(String, String)], args: &[&str]) -> Gateway {
        Self::start_as(fake, "bulkhead_test_gateway", env, args)
    }

    fn start_as(
        fake: &FakeProviders,
        login: &str,
        env: &[(String, String)],
        args: &[&str],
    ) -> Gateway {
        let options = common::superuser_options();
        let url = format!(
            "postgres://{login}@{}:{}/{}",
            std::env::var("BULKHEAD_TEST_HOST").unwrap(),
            std::env::var("BULKHEAD_TEST_PORT").unwrap(),
            options.get_database().unwrap()
        );
        let mut command = Command::new(env!("CARGO_BIN_EXE_bulkhead"));
        command
            .args(["gateway", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("DATABASE_URL", url)
            .env(
                "OPENAI_BASE_URL",
                format!("http://127.0.0.1:{}/v1", fake.port),
            )
            .env(
                "ANTHROPIC_BASE_URL",
                format!("http://127.0.0.1:{}", fake.port),
            )
            .env("BULKHEAD_JWT_SECRET", JWT_SECRET)
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("the gateway starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(at) = line.find("listening on ") {
                        let addr: String =
                            line[at + 13..].chars().take_while(|c| *c != '"').collect();
                        let _ = tx.send(addr);
                    }
                    log.lock().unwrap().push_str(&line);
                    log.lock().unwrap().push('\n');
                }
            });
        }
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("the gateway did not start: {}", log.lock().unwrap()));
        Gateway {
            process: KillOnDrop(child),
            url: format!("http://{addr}"),
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

/// Runs tests/sdk/client.py with the official SDKs; returns its last JSON line.
fn sdk(gateway: &Gateway, key: &str, env: &[(String, String)], args: &[&str]) -> Value {
    let python = std::env::var("BULKHEAD_SDK_PYTHON")
        .expect("BULKHEAD_SDK_PYTHON is set by `make test-integration`");
    let mut command = Command::new(python);
    command
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/client.py"))
        .args(args)
        .env("GATEWAY", &gateway.url)
        .env("KEY", key);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client.py {args:?} failed:\n{stdout}\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        gateway.log()
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("null")).unwrap()
}

/// A tenant with its own provider credentials (env:NAME references the gateway resolves),
/// models priced for the test, and an API key.
struct Tenant {
    id: Uuid,
    key: String,
    openai_key_env: String,
    openai_key: String,
    anthropic_key: String,
}

struct Models {
    openai: String,
    anthropic: String,
    embedding: String,
}

impl Models {
    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("OPENAI_MODEL".into(), self.openai.clone()),
            ("ANTHROPIC_MODEL".into(), self.anthropic.clone()),
            ("EMBEDDING_MODEL".into(), self.embedding.clone()),
        ]
    }
}

/// Output at exactly $0.10 a token and input free: a call's hold is a tenth of its max_tokens
/// in dollars.
async fn models(admin: &mut PgConnection) -> Models {
    let suffix = Uuid::new_v4().simple().to_string()[..10].to_string();
    let m = Models {
        openai: format!("gpt-4o-mini-gw-{suffix}"),
        anthropic: format!("claude-gw-{suffix}"),
        embedding: format!("text-embedding-gw-{suffix}"),
    };
    for (provider, model, input, output) in [
        ("openai", &m.openai, 0i64, 100_000i64),
        ("anthropic", &m.anthropic, 0, 100_000),
        ("openai", &m.embedding, 100_000, 0),
    ] {
        sqlx::query("select bulkhead.set_price($1, $2, $3, $4, effective_from => now() - interval '1 minute')")
            .bind(provider)
            .bind(model)
            .bind(input)
            .bind(output)
            .execute(&mut *admin)
            .await
            .unwrap();
    }
    m
}

async fn tenant(admin: &mut PgConnection, prefix: &str, dollars: &str) -> Tenant {
    let id = common::create_tenant(admin, prefix).await;
    let tag = id.simple().to_string();
    let openai_key_env = format!("GW_IT_OPENAI_{}", &tag[..12]);
    let anthropic_key_env = format!("GW_IT_ANTHROPIC_{}", &tag[..12]);
    for (provider, env) in [
        ("openai", &openai_key_env),
        ("anthropic", &anthropic_key_env),
    ] {
        sqlx::query("select bulkhead.set_credential($1, $2, $3)")
            .bind(id)
            .bind(provider)
            .bind(format!("env:{env}"))
            .execute(&mut *admin)
            .await
            .unwrap();
    }
    sqlx::query("select bulkhead.set_budget($1, 100000, 100000000, 100000000, $2::numeric)")
        .bind(id)
        .bind(dollars)
        .execute(&mut *admin)
        .await
        .unwrap();
    let key: String = sqlx::query_scalar("select bulkhead.create_api_key($1, 'integration')")
        .bind(id)
        .fetch_one(&mut *admin)
        .await
        .unwrap();
    Tenant {
        id,
        key,
        openai_key_env,
        // Random: nothing else in a row or a log could contain them by chance.
        openai_key: format!("sk-planted-openai-{}", Uuid::new_v4().simple()),
        anthropic_key: format!("sk-ant-planted-{}", Uuid::new_v4().simple()),
    }
}

impl Tenant {
    /// The provider keys its credential references name, for the gateway's environment.
    fn env(&self) -> Vec<(String, String)> {
        vec![
            (self.openai_key_env.clone(), self.openai_key.clone()),
            (
                self.openai_key_env.replace("OPENAI", "ANTHROPIC"),
                self.anthropic_key.clone(),
            ),
        ]
    }
}

fn jwt(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

fn epoch() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The ledger of one tenant, read as the superuser: (rows, input tokens, output tokens, cost).
async fn ledger(tenant: Uuid) -> (i64, i64, i64, f64) {
    let mut su = superuser().await;
    sqlx::query_as(
        "select count(*), coalesce(sum(input_tokens), 0)::int8, coalesce(sum(output_tokens), 0)::int8,
                coalesce(sum(cost_usd), 0)::float8
         from bulkhead.ledger where tenant_id = $1",
    )
    .bind(tenant)
    .fetch_one(&mut su)
    .await
    .unwrap()
}

/// The tenant's open reservations: rows, and holds in the server's memory (memory admission).
async fn open_reservations(tenant: Uuid) -> i64 {
    use sqlx::Connection;
    let mut su = superuser().await;
    let mut tx = su.begin().await.unwrap();
    sqlx::query("select bulkhead.set_tenant($1)")
        .bind(tenant)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query_scalar(
        "select (select count(*) from bulkhead.reservations
                 where tenant_id = $1 and settled_at is null and expired_at is null)
              + (select coalesce(sum(open_reservations), 0) from bulkhead._open_in_memory())::int8",
    )
    .bind(tenant)
    .fetch_one(&mut *tx)
    .await
    .unwrap()
}

/// Waits until the tenant's calls are all settled (the settler works off the request path).
async fn settled(tenant: Uuid) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while open_reservations(tenant).await > 0 {
        assert!(
            Instant::now() < deadline,
            "calls of {tenant} left unsettled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn fake_usage(fake: &FakeProviders) -> Vec<Value> {
    serde_json::from_str(&fake.call("GET", "/_fake/usage", "")).unwrap()
}

fn fake_requests(fake: &FakeProviders) -> Vec<Value> {
    serde_json::from_str(&fake.call("GET", "/_fake/requests", "")).unwrap()
}

#[tokio::test]
async fn both_sdks_work_unchanged_plain_streamed_and_with_tools() {
    let fake = FakeProviders::start();
    let mut admin = admin().await;
    let models = models(&mut admin).await;
    let a = tenant(&mut admin, "gw-sdk", "1000").await;
    let gateway = Gateway::start(&fake, &a.env(), &[]);
    let result = sdk(&gateway, &a.key, &models.env(), &["calls"]);
    assert_eq!(result["ok"], true, "{result}");
    settled(a.id).await;
    // Every call the fake served is one ledger row of the tenant, with the fake's counts.
    let served: Vec<Value> = fake_usage(&fake);
    let (rows, input, output, _) = ledger(a.id).await;
    assert_eq!(
        rows as usize,
        served.len(),
        "one ledger row per call served"
    );
    let served_input: i64 = served.iter().map(|u| u["input"].as_i64().unwrap()).sum();
    let served_output: i64 = served.iter().map(|u| u["output"].as_i64().unwrap()).sum();
    assert_eq!(
        (input, output),
        (served_input, served_output),
        "the ledger holds what the fake served"
    );
    // Only the tenant's own credentials reached the provider.
    assert!(served
        .iter()
        .all(|u| u["key"] == a.openai_key.as_str() || u["key"] == a.anthropic_key.as_str()));
}

#[tokio::test]
async fn a_tenant_never_reaches_another_tenants_credential_prompt_budget_or_ledger() {
    let fake = FakeProviders::start();
    let mut admin = admin().await;
    let models = models(&mut admin).await;
    let a = tenant(&mut admin, "gw-iso-a", "1000").await;
    let b = tenant(&mut admin, "gw-iso-b", "1000").await;
    let skeleton = format!("gw-iso-{}", &Uuid::new_v4().simple().to_string()[..8]);
    sqlx::query("select bulkhead.set_skeleton($1, 'Policy of {{ slots.who }}: {{ vars.topic }}')")
        .bind(&skeleton)
        .execute(&mut admin)
        .await
        .unwrap();
    for (t, who) in [(&a, "ACME-ONLY"), (&b, "GLOBEX-ONLY")] {
        sqlx::query("select bulkhead.publish_prompt($1, $2, jsonb_build_object('who', $3::text))")
            .bind(t.id)
            .bind(&skeleton)
            .bind(who)
            .execute(&mut admin)
            .await
            .unwrap();
        sqlx::query("select bulkhead.activate_prompt($1, $2, 1)")
            .bind(t.id)
            .bind(&skeleton)
            .execute(&mut admin)
            .await
            .unwrap();
    }
    let mut env = a.env();
    env.extend(b.env());
    let gateway = Gateway::start(&fake, &env, &[]);
    let b_jwt = jwt(
        json!({"exp": epoch() + 300, "app_metadata": {"tenant_id": b.id.to_string()},
                           "user_metadata": {"tenant_id": a.id.to_string()}}),
    );
    let http = reqwest::Client::new();
    // A's key, with every plain-header and body trick that names B.
    for (credential, tenant) in [(a.key.as_str(), &a), (b_jwt.as_str(), &b)] {
        let response = http
            .post(format!("{}/v1/chat/completions", gateway.url))
            .bearer_auth(credential)
            .header("x-bulkhead-prompt", &skeleton)
            .header("x-bulkhead-vars", r#"{"topic": "refunds"}"#)
            .header(
                "x-tenant-id",
                if tenant.id == a.id {
                    b.id.to_string()
                } else {
                    a.id.to_string()
                },
            )
            .header("x-litellm-customer-id", b.id.to_string())
            .json(
                &json!({"model": models.openai, "messages": [{"role": "user", "content": "hi"}],
                          "user": b.id.to_string(), "metadata": {"tenant_id": b.id.to_string()}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
    settled(a.id).await;
    settled(b.id).await;
    // The fake saw each prompt with its own tenant's key only.
    let requests = fake_requests(&fake);
    assert_eq!(requests.len(), 2);
    for request in &requests {
        let auth = request["headers"]["Authorization"]
            .as_str()
            .or(request["headers"]["authorization"].as_str())
            .unwrap();
        let system = request["body"]["messages"][0]["content"].as_str().unwrap();
        if auth.ends_with(&a.openai_key) {
            assert_eq!(system, "Policy of ACME-ONLY: refunds");
        } else {
            assert!(
                auth.ends_with(&b.openai_key),
                "only A's or B's own key is ever sent"
            );
            assert_eq!(system, "Policy of GLOBEX-ONLY: refunds");
        }
    }
    assert_eq!(ledger(a.id).await.0, 1, "A's call is in A's ledger only");
    assert_eq!(ledger(b.id).await.0, 1, "B's call is in B's ledger only");
}

#[tokio::test]
async fn forged_expired_user_metadata_and_revoked_credentials_get_401() {
    let fake = FakeProviders::start();
    let mut admin = admin().await;
    let models = models(&mut admin).await;
    let a = tenant(&mut admin, "gw-auth", "1000").await;
    let gateway = Gateway::start(&fake, &a.env(), &[]);
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"exp": epoch() + 300, "app_metadata": {"tenant_id": a.id.to_string()}}),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-gateway-secret-but-32-bytes-long"),
    )
    .unwrap();
    let expired = jwt(json!({"exp": epoch() - 5, "app_metadata": {"tenant_id": a.id.to_string()}}));
    let user_metadata =
        jwt(json!({"exp": epoch() + 300, "user_metadata": {"tenant_id": a.id.to_string()}}));
    let unsigned = format!(
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
        base64_url(
            &json!({"exp": epoch() + 300, "app_metadata": {"tenant_id": a.id.to_string()}})
                .to_string()
        )
    );
    let mut env = models.env();
    env.push((
        "CREDENTIALS".into(),
        json!([
            forged,
            expired,
            user_metadata,
            unsigned,
            "bk_not-a-key",
            format!("{}x", a.key)
        ])
        .to_string(),
    ));
    let result = sdk(&gateway, "", &env, &["refused"]);
    assert!(
        result["statuses"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s == 401),
        "{result}"
    );

    // The key works, then is revoked: refused within a second, everywhere (looked up per call).
    let valid = jwt(json!({"exp": epoch() + 300, "app_metadata": {"tenant_id": a.id.to_string()}}));
    let http = reqwest::Client::new();
    let call = |credential: String| {
        let http = http.clone();
        let url = format!("{}/v1/chat/completions", gateway.url);
        let model = models.openai.clone();
        async move {
            http.post(url)
                .bearer_auth(credential)
                .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(call(a.key.clone()).await, 200);
    assert_eq!(call(valid.clone()).await, 200, "a valid JWT is accepted");
    let key_id: Uuid = sqlx::query_scalar("select id from bulkhead.api_keys where tenant_id = $1")
        .bind(a.id)
        .fetch_one(&mut superuser().await)
        .await
        .unwrap();
    sqlx::query("select bulkhead.revoke_api_key($1)")
        .bind(key_id)
        .execute(&mut admin)
        .await
        .unwrap();
    assert_eq!(
        call(a.key.clone()).await,
        401,
        "revoked: refused on the next call"
    );
    // A suspended tenant: 403 for its keys and tokens alike.
    sqlx::query("select bulkhead.suspend_tenant($1)")
        .bind(a.id)
        .execute(&mut admin)
        .await
        .unwrap();
    assert_eq!(call(valid).await, 403);
}

fn base64_url(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn sixty_four_concurrent_streams_against_k_calls_admit_exactly_k() {
    exactly_k("bulkhead_test_gateway", "gw-race").await;
}

#[tokio::test]
async fn sixty_four_concurrent_streams_against_k_calls_admit_exactly_k_in_memory() {
    exactly_k("bulkhead_test_memory_gateway", "gw-race-mem").await;
}

async fn exactly_k(login: &str, prefix: &str) {
    const K: i64 = 7;
    let fake = FakeProviders::start();
    let mut admin = admin().await;
    let models = models(&mut admin).await;
    // Each call holds max_tokens (10) x $0.10; the budget fits K of them and not K + 1.
    let a = tenant(&mut admin, prefix, &format!("{K}.5")).await;
    // Slow streams: every admitted call still holds its reservation while the others arrive.
    fake.inject(
        "/v1/chat/completions",
        json!(vec![json!({"slow": 0.1, "words": 8}); K as usize + 2]),
    );
    let gateway = Gateway::start_as(&fake, login, &a.env(), &[]);
    let result = sdk(&gateway, &a.key, &models.env(), &["race", "64"]);
    assert_eq!(result["admitted"], K, "{result}");
    let refused = result["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 64 - K as usize);
    assert!(
        refused.iter().all(|r| r == "tenant_budget_exceeded"),
        "{result}"
    );
    settled(a.id).await;
    let served = fake_usage(&fake);
    assert_eq!(served.len() as i64, K, "the fake served exactly K calls");
    let (rows, _, output, cost) = ledger(a.id).await;
    let served_output: i64 = served.iter().map(|u| u["output"].as_i64().unwrap()).sum();
    assert_eq!(
        (rows, output),
        (K, served_output),
        "the ledger equals what the fake served"
    );
    assert!(cost <= K as f64 + 0.5, "no overspend: {cost}");
}

#[tokio::test]
async fn a_client_that_disconnects_is_charged_what_was_streamed() {
    let fake = FakeProviders::start();
    let mut admin = admin().await;
    let models = models(&mut admin).await;
    let a = tenant(&mut admin, "gw-leave", "1000").await;
    fake.inject(
        "/v1/chat/completions",
        json!([{"slow": 0.05, "words": 150}]),
    );
    let gateway = Gateway::start(&fake, &a.env(), &[]);
    let result = sdk(&gateway, &a.key, &models.env(), &["disconnect", "5"]);
    assert_eq!(result["chunks"], 5);
    settled(a.id).await;
    // The fake stops when its writes fail: it bills the words it sent.
    let deadline = Instant::now() + Duration::from_secs(10);
    let served = loop {
        let usage = fake_usage(&fake);
        if !usage.is_empty() {
            break usage[0]["output"].as_i64().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the fake never saw the client leave"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (rows, _, output, _) = ledger(a.id).await;
    assert_eq!(rows, 1);
    assert!(output >= 5, "at least what the client received: {output}");
    assert!(output < 200, "not the whole reservation (200): {output}");
    eprintln!("the fake served {served} words; the gateway charged {output} tokens");
}

/// A client that leaves a plain call while the provider is answering: the call goes on in its
/// own task and settles at what the provider served. (Without that task hyper drops the
/// handler: the upstream call is cut, and its hold stays open until its lease ends, then is
/// charged in full.)
#[tokio::test]
async fn a_client_that_leaves_a_plain_call_is_charged_what_was_served() {
    let fake = FakeProviders::start();
    let mut admin = admin().await;
    let models = models(&mut admin).await;
    let a = tenant(&mut admin, "gw-leave-plain", "1000").await;
    fake.inject("/v1/chat/completions", json!([{"delay": 2}]));
    let gateway = Gateway::start(&fake, &a.env(), &[]);
    let request = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth(&a.key)
        .json(&json!({"model": models.openai, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}))
        .send();
    let client = tokio::spawn(request);
    // The client leaves once the provider has the call (and before its answer, 2 s later).
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake_requests(&fake).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the call never reached the provider"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.abort();
    assert!(client.await.is_err(), "the client left before the answer");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    settled(a.id).await;
    let usage = fake_usage(&fake);
    assert_eq!(usage.len(), 1, "the provider served the call: {usage:?}");
    let (rows, _, output, _) = ledger(a.id).await;
    assert_eq!(rows, 1);
    assert_eq!(
        output,
        usage[0]["output"].as_i64().unwrap(),
        "what was served, not the hold (50)"
    );
}

#[tokio::test]
async fn suspending_a_tenant_cuts_its_live_stream_within_a_second() {
    let fake = FakeProviders::start();
    let mut admin = admin().await;
    let models = models(&mut admin).await;
    let a = tenant(&mut admin, "gw-cut", "1000").await;
    fake.inject("/v1/chat/completions", json!([{"slow": 0.1, "words": 150}]));
    let gateway = Gateway::start(&fake, &a.env(), &[]);
    let python = std::env::var("BULKHEAD_SDK_PYTHON").unwrap();
    let mut client = Command::new(python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/client.py"))
        .arg("until-cut")
        .env("GATEWAY", &gateway.url)
        .env("KEY", &a.key)
        .envs(models.env())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    assert!(lines.next().unwrap().unwrap().contains("streaming"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let suspended_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    sqlx::query("select bulkhead.suspend_tenant($1)")
        .bind(a.id)
        .execute(&mut admin)
        .await
        .unwrap();
    let result: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(client.wait().unwrap().success());
    let error = result["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("tenant_suspended"),
        "the stream ends with an error event: {result}"
    );
    let took = result["ended_at"].as_f64().unwrap() - suspended_at;
    assert!(took < 1.0, "cut {took:.3} s after the suspension");
    assert!(
        result["chunks"].as_i64().unwrap() < 150,
        "cut before the end"
    );
    settled(a.id).await;
    let (rows, _, output, _) = ledger(a.id).await;
    assert_eq!(rows, 1);
    assert!(
        output < 200,
        "charged what was streamed, not the reservation: {output}"
    );
}

#[tokio::test]
async fn a_gateway_killed_under_load_leaves_no_call_unaccounted() {
    killed_under_load("bulkhead_test_gateway", "gw-kill").await;
}

/// In memory, the holds of the killed gateway's calls outlive it in the server's memory, and the
/// sweep writes and charges them.
#[tokio::test]
async fn a_gateway_killed_under_load_leaves_no_call_unaccounted_in_memory() {
    killed_under_load("bulkhead_test_memory_gateway", "gw-kill-mem").await;
}

async fn killed_under_load(login: &str, prefix: &str) {
    let fake = FakeProviders::start();
    let mut admin = admin().await;
    let models = models(&mut admin).await;
    let a = tenant(&mut admin, prefix, "100000").await;
    fake.inject(
        "/v1/chat/completions",
        json!(vec![json!({"slow": 0.05, "words": 100}); 24]),
    );
    let mut gateway = Gateway::start_as(&fake, login, &a.env(), &["--lease-secs", "2"]);
    let python = std::env::var("BULKHEAD_SDK_PYTHON").unwrap();
    let mut client = Command::new(python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/client.py"))
        .args(["load", "24"])
        .env("GATEWAY", &gateway.url)
        .env("KEY", &a.key)
        .envs(models.env())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Some calls finish, most are mid-stream: then SIGKILL.
    let deadline = Instant::now() + Duration::from_secs(20);
    while fake_requests(&fake).len() < 24 {
        assert!(Instant::now() < deadline, "the load never reached the fake");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    gateway.process.0.kill().unwrap();
    gateway.process.0.wait().unwrap();
    let _ = client.kill();
    let _ = client.wait();
    let sent = fake_requests(&fake).len() as i64;
    assert_eq!(sent, 24);
    // After the leases end, a sweep (any gateway's or worker's) charges the rest at their hold.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut su = superuser().await;
    sqlx::query("select bulkhead.expire_all_reservations()")
        .execute(&mut su)
        .await
        .unwrap();
    assert_eq!(open_reservations(a.id).await, 0, "no call is left open");
    let (rows, _, output, _) = ledger(a.id).await;
    assert_eq!(rows, sent, "every call the fake received is in the ledger");
    let at_hold: i64 = sqlx::query_scalar(
        "select count(*) from bulkhead.ledger where tenant_id = $1 and request_id like 'lease-ended:%'",
    )
    .bind(a.id)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert!(
        at_hold > 0,
        "the calls cut by the kill were charged at their hold"
    );
    // In memory, the only rows are the lapsed holds the sweep wrote; the table path wrote a row
    // for every call at its admission.
    let held_in_memory: Option<bool> = sqlx::query_scalar(
        "select bool_and(held_in_memory) from bulkhead.reservations where tenant_id = $1",
    )
    .bind(a.id)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(
        held_in_memory,
        Some(login == "bulkhead_test_memory_gateway")
    );
    let served: i64 = fake_usage(&fake)
        .iter()
        .map(|u| u["output"].as_i64().unwrap())
        .sum();
    assert!(
        output >= served,
        "never less than the provider served: {output} < {served}"
    );
    // The twin: released at lease end instead (what budget_check does for other calls), the
    // calls the kill cut would have cost nothing though the provider served them.
    let settled_output: i64 = sqlx::query_scalar(
        "select coalesce(sum(output_tokens), 0)::int8 from bulkhead.ledger
         where tenant_id = $1 and request_id not like 'lease-ended:%'",
    )
    .bind(a.id)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert!(
        settled_output < served,
        "without the charge at the hold: {settled_output} of {served} served tokens recorded"
    );
}

#[tokio::test]
async fn planted_provider_keys_appear_nowhere() {
    let fake = FakeProviders::start();
    let mut admin = admin().await;
    let models = models(&mut admin).await;
    let a = tenant(&mut admin, "gw-plant", "1000").await;
    // The provider echoes the key in its error, as some do ("Incorrect API key: sk-...").
    fake.inject(
        "/v1/chat/completions",
        json!([{"status": 400, "message": format!("Incorrect API key provided: {}", a.openai_key)},
               {"status": 400, "message": format!("Incorrect API key provided: {}", a.openai_key)},
               {"status": 500, "message": format!("upstream failed for {}", a.openai_key)}]),
    );
    // The twin: asked directly, the provider does echo the key.
    let echoed = fake.call("POST", "/v1/chat/completions", "{}");
    assert!(
        echoed.contains(&a.openai_key),
        "the fake echoes the key: {echoed}"
    );
    let gateway = Gateway::start(&fake, &a.env(), &[]);
    let http = reqwest::Client::new();
    let mut bodies = String::new();
    for _ in 0..3 {
        let response = http
            .post(format!("{}/v1/chat/completions", gateway.url))
            .bearer_auth(&a.key)
            .json(&json!({"model": models.openai, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        bodies.push_str(&format!("{:?}", response.headers()));
        bodies.push_str(&response.text().await.unwrap());
    }
    settled(a.id).await;
    let mut su = superuser().await;
    let rows: String = sqlx::query_scalar(
        "select coalesce(string_agg(t::text, ' '), '') from (
            select l::text as t from bulkhead.ledger l where tenant_id = $1
            union all select r::text from bulkhead.reservations r where tenant_id = $1
            union all select c::text from bulkhead.tenant_credentials c where tenant_id = $1) x",
    )
    .bind(a.id)
    .fetch_one(&mut su)
    .await
    .unwrap();
    let metrics = http
        .get(format!("{}/metrics", gateway.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "bulkhead_gateway_requests_total{endpoint=\"chat_completions\",outcome=\"ok\"} 1"
        ),
        "{metrics}"
    );
    let secret = &a.openai_key;
    let fragment = &secret[secret.len() - 12..];
    for (what, text) in [
        ("responses", &bodies),
        ("gateway log", &gateway.log()),
        ("rows", &rows),
        ("metrics", &metrics),
    ] {
        assert!(
            !text.contains(fragment),
            "the key leaked into the {what}: {text}"
        );
    }
    assert!(
        bodies.contains("returned HTTP 400"),
        "the client still learns what happened: {bodies}"
    );
}

/// With --metrics-token, GET /metrics answers only the bearer of that token; without it (the
/// twin), anyone who reaches the gateway reads the metrics.
#[tokio::test]
async fn metrics_can_require_a_token() {
    let fake = FakeProviders::start();
    let mut admin = admin().await;
    let a = tenant(&mut admin, "gw-metrics", "10").await;
    let http = reqwest::Client::new();
    let open = Gateway::start(&fake, &a.env(), &[]);
    let response = http
        .get(format!("{}/metrics", open.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the twin: open without a token");
    let mut env = a.env();
    env.push((
        "BULKHEAD_GATEWAY_METRICS_TOKEN".into(),
        "metrics-token-for-the-test".into(),
    ));
    let closed = Gateway::start(&fake, &env, &[]);
    for token in [
        None,
        Some(a.key.as_str()),
        Some("metrics-token-for-the-tes"),
    ] {
        let mut request = http.get(format!("{}/metrics", closed.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        assert_eq!(request.send().await.unwrap().status(), 401, "{token:?}");
    }
    let response = http
        .get(format!("{}/metrics", closed.url))
        .bearer_auth("metrics-token-for-the-test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains("# TYPE bulkhead_gateway"), "{text}");
}

#[tokio::test]
async fn bad_bodies_get_4xx_in_the_endpoints_error_format() {
    let fake = FakeProviders::start();
    let mut admin = admin().await;
    let models = models(&mut admin).await;
    let a = tenant(&mut admin, "gw-bad", "1000").await;
    let gateway = Gateway::start(&fake, &a.env(), &["--max-body-bytes", "100000"]);
    let http = reqwest::Client::new();
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let huge = format!(
        r#"{{"model": "{}", "messages": [{{"role": "user", "content": "{}"}}]}}"#,
        models.openai,
        "x".repeat(200_000)
    );
    let cases: Vec<(&str, String, u16)> = vec![
        ("/v1/chat/completions", "{not json".into(), 400),
        ("/v1/chat/completions", "[]".into(), 400),
        (
            "/v1/chat/completions",
            format!(r#"{{"model": "{}", "messages": {deep}}}"#, models.openai),
            400,
        ),
        ("/v1/chat/completions", huge.clone(), 413),
        (
            "/v1/chat/completions",
            r#"{"messages": [{"role": "user", "content": "x"}]}"#.into(),
            400,
        ),
        (
            "/v1/chat/completions",
            format!(r#"{{"model": "{}", "messages": "x"}}"#, models.openai),
            400,
        ),
        (
            "/v1/chat/completions",
            format!(
                r#"{{"model": "{}", "messages": [{{"role": "user", "content": "x"}}], "max_tokens": -1}}"#,
                models.openai
            ),
            400,
        ),
        (
            "/v1/chat/completions",
            format!(
                r#"{{"model": "{}", "messages": [{{"role": "user", "content": "x"}}], "n": "2"}}"#,
                models.openai
            ),
            400,
        ),
        (
            "/v1/chat/completions",
            format!(
                r#"{{"model": "{}", "messages": [{{"role": "user", "content": "x"}}], "stream": "yes"}}"#,
                models.openai
            ),
            400,
        ),
        (
            "/v1/chat/completions",
            format!(
                r#"{{"model": "{}", "messages": [{{"role": "user", "content": [{{"type": "input_audio"}}]}}]}}"#,
                models.openai
            ),
            400,
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}"#.into(),
            404,
        ),
        (
            "/v1/messages",
            format!(
                r#"{{"model": "{}", "max_tokens": 5, "messages": [{{"role": "user", "content": 5}}]}}"#,
                models.anthropic
            ),
            400,
        ),
        ("/v1/messages", huge, 413),
        (
            "/v1/embeddings",
            format!(r#"{{"model": "{}", "input": [[1, -1]]}}"#, models.embedding),
            400,
        ),
        ("/v1/nothing", "{}".into(), 404),
    ];
    for (path, body, status) in cases {
        let response = http
            .post(format!("{}{path}", gateway.url))
            .bearer_auth(&a.key)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status().as_u16(),
            status,
            "{path} {}",
            &body[..body.len().min(120)]
        );
        assert!(
            response.headers().contains_key("x-bulkhead-request-id"),
            "every answer carries a request id"
        );
        let error: Value = response.json().await.unwrap();
        if path == "/v1/messages" {
            assert_eq!(error["type"], "error", "{error}");
        } else {
            assert!(error["error"]["message"].is_string(), "{error}");
        }
    }
    assert!(
        fake_requests(&fake).is_empty(),
        "no bad request reached the provider"
    );
    assert_eq!(open_reservations(a.id).await, 0, "and none holds budget");
    assert!(
        gateway.log().is_empty() || !gateway.log().contains("panicked"),
        "{}",
        gateway.log()
    );
}

#[tokio::test]
async fn the_queued_path_takes_the_gateways_request_shape() {
    let fake = FakeProviders::start();
    let mut admin = admin().await;
    let models = models(&mut admin).await;
    let a = tenant(&mut admin, "gw-queue", "1000").await;
    let mut app = common::app().await;
    let mut tx = common::begin_as(&mut app, a.id).await.unwrap();
    let openai_job: i64 = sqlx::query_scalar(
        "select bulkhead.complete(null, null, $1, 40, request => $2)",
    )
    .bind(&models.openai)
    .bind(json!({"messages": [{"role": "user", "content": "find order 42"}],
                 "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
                 "max_tokens": 100000}))
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let anthropic_job: i64 = sqlx::query_scalar(
        "select bulkhead.complete(null, null, $1, 40, request => $2)",
    )
    .bind(&models.anthropic)
    .bind(
        json!({"system": "be brief", "messages": [{"role": "user", "content": "find order 42"}],
                 "tools": [{"name": "lookup", "input_schema": {"type": "object"}}]}),
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let options = common::superuser_options();
    let worker_url = format!(
        "postgres://bulkhead_test_worker@{}:{}/{}",
        std::env::var("BULKHEAD_TEST_HOST").unwrap(),
        std::env::var("BULKHEAD_TEST_PORT").unwrap(),
        options.get_database().unwrap()
    );
    let status = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["worker", "--drain", "--name", "gw-queue"])
        .env("DATABASE_URL", worker_url)
        .env(
            "OPENAI_BASE_URL",
            format!("http://127.0.0.1:{}/v1", fake.port),
        )
        .env(
            "ANTHROPIC_BASE_URL",
            format!("http://127.0.0.1:{}", fake.port),
        )
        .envs(a.env())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let mut tx = common::begin_as(&mut app, a.id).await.unwrap();
    for (job, called) in [
        (openai_job, "/tool_calls/0/function/name"),
        (anthropic_job, "/0/name"),
    ] {
        let (state, message): (String, Option<Value>) =
            sqlx::query_as("select status, message from bulkhead.completion_result($1)")
                .bind(job)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        assert_eq!(state, "done");
        let message = message.expect("the answer message is kept");
        assert_eq!(message.pointer(called), Some(&json!("lookup")), "{message}");
    }
    tx.commit().await.unwrap();
    // The provider got the request as the gateway sends it: the reservation's cap, not the client's.
    let requests = fake_requests(&fake);
    let openai = requests
        .iter()
        .find(|r| r["path"] == "/v1/chat/completions")
        .unwrap();
    assert_eq!(openai["body"]["max_completion_tokens"], 40);
    assert!(openai["body"].get("max_tokens").is_none());
    assert_eq!(openai["body"]["tools"][0]["function"]["name"], "lookup");
    let anthropic = requests
        .iter()
        .find(|r| r["path"] == "/v1/messages")
        .unwrap();
    assert_eq!(anthropic["body"]["max_tokens"], 40);
    assert_eq!(anthropic["body"]["system"], "be brief");
    settled(a.id).await;
    assert_eq!(
        ledger(a.id).await.0,
        2,
        "both calls are in the tenant's ledger"
    );
}

/// A gateway login of a test's own, so that cutting its sessions touches no other test's gateway.
async fn own_gateway_login(su: &mut PgConnection, prefix: &str) -> String {
    let login = format!("{prefix}_{}", &Uuid::new_v4().simple().to_string()[..8]);
    sqlx::query(&format!(
        "create role {login} login in role bulkhead_gateway"
    ))
    .execute(&mut *su)
    .await
    .unwrap();
    common::give_dev_password(su, &[&login]).await;
    login
}

#[tokio::test]
async fn an_unreachable_database_gives_503_and_no_call_is_made() {
    let fake = FakeProviders::start();
    let mut admin = admin().await;
    let models = models(&mut admin).await;
    let a = tenant(&mut admin, "gw-dbdown", "1000").await;
    let mut su = superuser().await;
    let login = own_gateway_login(&mut su, "gw_dbdown").await;
    let gateway = Gateway::start_as(&fake, &login, &a.env(), &["--pool-size", "2"]);
    let http = reqwest::Client::new();
    let call = || async {
        http.post(format!("{}/v1/chat/completions", gateway.url))
            .bearer_auth(&a.key)
            .json(&json!({"model": models.openai, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
    };
    assert_eq!(
        call().await.status(),
        200,
        "the twin: with its database the call is made"
    );
    sqlx::query(&format!("alter role {login} nologin"))
        .execute(&mut su)
        .await
        .unwrap();
    sqlx::query("select pg_terminate_backend(pid) from pg_stat_activity where usename = $1")
        .bind(&login)
        .execute(&mut su)
        .await
        .unwrap();
    let response = call().await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "service_unavailable", "{body}");
    assert_eq!(fake_requests(&fake).len(), 1, "no call without admission");
    let health = http
        .get(format!("{}/healthz", gateway.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 503);
    drop(gateway);
    sqlx::query(&format!("drop role {login}"))
        .execute(&mut su)
        .await
        .unwrap();
}

/// Admission's connections (lanes.rs): when the server ends every session (a restart,
/// pg_terminate_backend), the first call to read its lane's FATAL drops the idle lanes with
/// it and is admitted again on a new connection: no call fails. (Without the retry and the
/// drop, each idle lane failed a call with a 503: [503, 503, 200, 200] here.)
#[tokio::test]
async fn connections_the_server_ended_fail_no_call() {
    let fake = FakeProviders::start();
    let mut admin = admin().await;
    let models = models(&mut admin).await;
    let a = tenant(&mut admin, "gw-lanes", "1000").await;
    let mut su = superuser().await;
    let login = own_gateway_login(&mut su, "gw_lanes").await;
    let gateway = Gateway::start_as(&fake, &login, &a.env(), &["--pool-size", "8"]);
    let http = reqwest::Client::new();
    let call = || async {
        http.post(format!("{}/v1/chat/completions", gateway.url))
            .bearer_auth(&a.key)
            .json(&json!({"model": models.openai, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
            .status()
    };
    // Concurrent calls open several admission connections.
    for _ in 0..5 {
        let statuses = futures_util::future::join_all((0..32).map(|_| call())).await;
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    let lanes: i64 = sqlx::query_scalar(
        "select count(*) from pg_stat_activity where usename = $1 and query like '%gateway_admit%'",
    )
    .bind(&login)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert!(
        lanes >= 2,
        "several admission connections were open: {lanes}"
    );
    let served = fake_requests(&fake).len();
    sqlx::query("select pg_terminate_backend(pid) from pg_stat_activity where usename = $1")
        .bind(&login)
        .execute(&mut su)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(call().await);
    }
    assert_eq!(statuses, [200; 4]);
    assert_eq!(fake_requests(&fake).len(), served + 4);
    // Nothing admitted twice: every call settled once, no hold left.
    settled(a.id).await;
    assert_eq!(ledger(a.id).await.0 as usize, served + 4);
    drop(gateway);
    sqlx::query(&format!("drop role {login}"))
        .execute(&mut su)
        .await
        .unwrap();
}

/// A TCP relay to the database that can go silent: it keeps every connection open and stops
/// passing bytes either way, as a network partition or a hung server does.
async fn silenceable_relay(silent: Arc<std::sync::atomic::AtomicBool>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = format!(
        "{}:{}",
        std::env::var("BULKHEAD_TEST_HOST").unwrap(),
        std::env::var("BULKHEAD_TEST_PORT").unwrap()
    );
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            for (mut from, mut to) in [(client_read, server_write), (server_read, client_write)] {
                let silent = silent.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16384];
                    loop {
                        let n = match from.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        while silent.load(std::sync::atomic::Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        if to.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    port
}

/// A database that stops answering (the connection stays open) gives a 503 after the
/// admission's wait (10 s), not a call that hangs for as long as TCP keeps the connection
/// (without the limit: until the client gave up), and the hold the server makes once it answers
/// again is given back.
// Multi-threaded: the relay runs on the test's runtime while Gateway::start blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_stops_answering_gives_503_within_seconds() {
    let fake = FakeProviders::start();
    let mut admin = admin().await;
    let models = models(&mut admin).await;
    let a = tenant(&mut admin, "gw-silent", "1000").await;
    let silent = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = silenceable_relay(silent.clone()).await;
    let mut env = a.env();
    env.push((
        "DATABASE_URL".into(),
        format!(
            "postgres://bulkhead_test_gateway@127.0.0.1:{port}/{}",
            common::superuser_options().get_database().unwrap()
        ),
    ));
    let gateway = Gateway::start(&fake, &env, &[]);
    // A JWT: no key check before admission, so the admission itself meets the silence.
    let token = jwt(json!({"exp": epoch() + 300, "app_metadata": {"tenant_id": a.id.to_string()}}));
    let http = reqwest::Client::new();
    let call = || {
        http.post(format!("{}/v1/chat/completions", gateway.url))
            .bearer_auth(&token)
            .timeout(Duration::from_secs(60))
            .json(&json!({"model": models.openai, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    assert_eq!(
        call().await.unwrap().status(),
        200,
        "the twin: answered while the database answers"
    );
    silent.store(true, std::sync::atomic::Ordering::SeqCst);
    let started = Instant::now();
    let response = call().await.unwrap();
    let waited = started.elapsed();
    assert_eq!(response.status(), 503);
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(15),
        "answered by the admission's wait (10 s) in {waited:?}"
    );
    assert_eq!(fake_requests(&fake).len(), 1, "no call without admission");
    // The server answers again: the admission it held commits now, and the gateway gives that
    // hold back, since its call was answered 503. Only the first call is charged.
    silent.store(false, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    settled(a.id).await;
    assert_eq!(ledger(a.id).await.0, 1, "the 503 call is not charged");
}

#[tokio::test]
async fn sigterm_lets_streams_finish_then_cuts_and_settles_them() {
    let fake = FakeProviders::start();
    let mut admin = admin().await;
    let models = models(&mut admin).await;
    let a = tenant(&mut admin, "gw-term", "1000").await;
    let mut gateway = Gateway::start(&fake, &a.env(), &["--shutdown-secs", "2"]);
    let http = reqwest::Client::new();
    // A first call warms the gateway's sessions, so that the two streams arrive in order.
    let warm = http
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth(&a.key)
        .json(&json!({"model": models.openai, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), 200);
    // One stream ends within the grace period, one outlasts it.
    fake.inject(
        "/v1/chat/completions",
        json!([{"slow": 0.05, "words": 10}, {"slow": 0.1, "words": 150}]),
    );
    let stream = |http: reqwest::Client, url: String, model: String, key: String| async move {
        let response = http
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(key)
            .json(&json!({"model": model, "stream": true, "max_tokens": 200,
                          "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        response.text().await.unwrap_or_default()
    };
    let short = tokio::spawn(stream(
        http.clone(),
        gateway.url.clone(),
        models.openai.clone(),
        a.key.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let long = tokio::spawn(stream(
        http.clone(),
        gateway.url.clone(),
        models.openai.clone(),
        a.key.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let term = Command::new("kill")
        .args(["-TERM", &gateway.process.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let started = Instant::now();
    let short = short.await.unwrap();
    let long = long.await.unwrap();
    let status = gateway.process.0.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM ends the gateway cleanly: {status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it exits soon after the grace period"
    );
    assert!(
        short.contains("[DONE]"),
        "a stream that ends within the grace period finishes: {short}"
    );
    assert!(
        long.contains("shutting down"),
        "a longer one is cut with an error event: {long}"
    );
    // Both are settled before the process exits: nothing is left to the lease.
    assert_eq!(open_reservations(a.id).await, 0);
    assert_eq!(ledger(a.id).await.0, 3);
}

#[tokio::test]
async fn review_fixes_hold() {
    let fake = FakeProviders::start();
    let mut admin = admin().await;
    let models = models(&mut admin).await;
    let a = tenant(&mut admin, "gw-fix-a", "1000").await;
    let b = tenant(&mut admin, "gw-fix-b", "1000").await;
    let mut env = a.env();
    env.extend(b.env());
    let gateway = Gateway::start(&fake, &env, &[]);
    let http = reqwest::Client::new();
    let chat = |key: String, body: Value| {
        let http = http.clone();
        let url = format!("{}/v1/chat/completions", gateway.url);
        async move {
            http.post(url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let hi = json!({"model": models.openai, "messages": [{"role": "user", "content": "hi"}]});

    // H2: a caller without a valid key is refused before its body is read or parsed (before the
    // fix, this body's JSON error was found first: a 400, after parsing it).
    let response = http
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth("bk_guessed")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // H3: an answer id the database refuses (U+0000, as an OpenAI-compatible server echoing a
    // client's field sends it) is cleaned, and never stops the other tenants' settles.
    fake.inject(
        "/v1/chat/completions",
        json!([{"id": "chatcmpl-\u{0}-evil"}]),
    );
    assert_eq!(chat(a.key.clone(), hi.clone()).await.status(), 200);
    assert_eq!(chat(b.key.clone(), hi.clone()).await.status(), 200);
    settled(a.id).await;
    settled(b.id).await;
    assert_eq!((ledger(a.id).await.0, ledger(b.id).await.0), (1, 1));
    // The twin: sent as it came, the database refuses it (what stopped every settle).
    let raw = sqlx::query("select $1::text")
        .bind("chatcmpl-\u{0}-evil")
        .fetch_one(&mut superuser().await)
        .await;
    assert!(raw.is_err(), "PostgreSQL text cannot hold U+0000");

    // M2: A's backend holds A's budget row in an open transaction; A's gateway calls get a quick
    // 503 tenant_busy (Retry-After), and B's calls go on meanwhile.
    let mut app = common::app().await;
    let mut held = common::begin_as(&mut app, a.id).await.unwrap();
    sqlx::query("select bulkhead.budget_check($1, 1, 1)")
        .bind(&models.openai)
        .execute(&mut *held)
        .await
        .unwrap();
    let started = Instant::now();
    let busy = chat(a.key.clone(), hi.clone()).await;
    assert_eq!(busy.status(), 503);
    assert_eq!(busy.headers()["retry-after"], "1");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused quickly: {:?}",
        started.elapsed()
    );
    assert_eq!(
        chat(b.key.clone(), hi.clone()).await.status(),
        200,
        "B is not held up"
    );
    held.rollback().await.unwrap();
    assert_eq!(chat(a.key.clone(), hi.clone()).await.status(), 200);

    // H1: a stream that may think unseen (Anthropic thinking) cut by its client is charged at
    // its hold, not at the few words it streamed.
    fake.inject("/v1/messages", json!([{"slow": 0.1, "words": 150}]));
    let mut response = http
        .post(format!("{}/v1/messages", gateway.url))
        .header("x-api-key", &a.key)
        .header("anthropic-version", "2023-06-01")
        .json(
            &json!({"model": models.anthropic, "max_tokens": 300, "stream": true,
                      "thinking": {"type": "enabled", "budget_tokens": 200},
                      "messages": [{"role": "user", "content": "think hard"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let _ = response.chunk().await;
    let _ = response.chunk().await;
    drop(response);
    settled(a.id).await;
    let mut su = superuser().await;
    let charged: i64 = sqlx::query_scalar(
        "select output_tokens from bulkhead.ledger where tenant_id = $1 and model = $2",
    )
    .bind(a.id)
    .bind(&models.anthropic)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(charged, 300, "charged at the hold");
}

#[tokio::test]
async fn idle_and_slow_connections_are_closed_and_capped() {
    use std::io::{Read, Write};
    let fake = FakeProviders::start();
    let mut admin = admin().await;
    let models = models(&mut admin).await;
    let a = tenant(&mut admin, "gw-conn", "1000").await;
    let gateway = Gateway::start(
        &fake,
        &a.env(),
        &["--max-connections", "4", "--header-timeout-secs", "1"],
    );
    let addr = gateway.url.trim_start_matches("http://").to_string();
    // A client that sends half a request and waits: closed after the header timeout.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut buffer = Vec::new();
    let _ = slow.read_to_end(&mut buffer);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed after about a second: {:?}",
        started.elapsed()
    );
    // Idle connections beyond the cap are closed as they arrive; the cap frees up as the idle
    // ones time out, and a real request is served again.
    let idle: Vec<_> = (0..4)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut over = std::net::TcpStream::connect(&addr).unwrap();
    over.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        over.read(&mut byte).unwrap_or(0),
        0,
        "over the cap: closed at once"
    );
    drop(idle);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth(&a.key)
        .json(&json!({"model": models.openai, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
