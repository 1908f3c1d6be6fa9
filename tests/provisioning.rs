//! Provider-side provisioning against the FAKE admin APIs (tests/fakes/fake_providers.py, a test
//! double speaking OpenAI's and Anthropic's documented Admin API shapes, with injectable faults):
//! a project, its service account key stored in a 0600 file, rate limits from the budget, the
//! credential row; retries after a crash at every step create nothing twice; limits follow
//! set_budget; an Anthropic workspace waits for its key; planted admin keys and the project key
//! appear in no row, log or error.
//!
//! The scenarios share one fake and run in sequence in one test: a worker claims any tenant's
//! jobs, so two scenarios with their own workers would run each other's.

mod common;

use common::{admin, begin_as, create_tenant, sqlstate, superuser, FakeProviders, KillOnDrop};
use serde_json::Value;
use sqlx::{ConnectOptions, Executor, PgConnection};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use uuid::Uuid;

/// Admin keys planted in the worker's environment: none may reach a row, a log or an error.
struct Keys {
    openai_admin: String,
    anthropic_admin: String,
}

struct Setup {
    fake: FakeProviders,
    keys: Keys,
    secrets: PathBuf,
    log: PathBuf,
}

impl Setup {
    fn worker(&self, drain: bool) -> Command {
        let url = std::env::var("BULKHEAD_TEST_DATABASE_URL")
            .unwrap()
            .replacen("postgres@", "bulkhead_test_worker@", 1);
        let mut command = Command::new(env!("CARGO_BIN_EXE_bulkhead"));
        command
            .args(["worker", "--poll-ms", "50", "--provider-timeout-secs", "2"])
            .args(if drain { &["--drain"][..] } else { &[][..] })
            .env("DATABASE_URL", url)
            .env(
                "OPENAI_BASE_URL",
                format!("http://127.0.0.1:{}/v1", self.fake.port),
            )
            .env(
                "ANTHROPIC_BASE_URL",
                format!("http://127.0.0.1:{}", self.fake.port),
            )
            .env("OPENAI_ADMIN_KEY", &self.keys.openai_admin)
            .env("ANTHROPIC_ADMIN_KEY", &self.keys.anthropic_admin)
            .env("BULKHEAD_SECRETS_DIR", &self.secrets)
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .unwrap(),
            );
        command
    }

    /// Runs `worker --drain` until the job is done or dead, making retries due at once (as the
    /// job queue's backoff would, later).
    async fn run_job(&self, su: &mut PgConnection, job: i64) -> String {
        for _ in 0..30 {
            // A request the provider is still carrying out (a timeout's) finishes first, as the
            // queue's backoff lets it in production.
            while !self
                .fake
                .call("GET", "/_fake/inflight", "")
                .contains("\"inflight\": 0")
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let status = self.worker(true).status().unwrap();
            assert!(status.success());
            let state: String =
                sqlx::query_scalar("select state from bulkhead.job_schedule where job_id = $1")
                    .bind(job)
                    .fetch_one(&mut *su)
                    .await
                    .unwrap();
            if state == "done" || state == "dead" {
                return state;
            }
            sqlx::query(
                "update bulkhead.job_schedule set run_at = now(), leased_until = least(leased_until, now())
                 where job_id = $1",
            )
            .bind(job)
            .execute(&mut *su)
            .await
            .unwrap();
        }
        panic!("job {job} neither done nor dead after 30 runs");
    }

    fn admin_state(&self) -> Value {
        serde_json::from_str(&self.fake.call("GET", "/_fake/admin", "")).unwrap()
    }
}

async fn provision(admin: &mut PgConnection, tenant: Uuid, provider: &str, options: &str) -> i64 {
    sqlx::query_scalar("select bulkhead.provision_provider($1, $2, $3::jsonb)")
        .bind(tenant)
        .bind(provider)
        .bind(options)
        .fetch_one(admin)
        .await
        .unwrap()
}

async fn status(admin: &mut PgConnection, tenant: Uuid) -> Vec<(String, String, String, String)> {
    sqlx::query_as(
        "select provider, step, state, coalesce(detail, '') from bulkhead.provisioning_status($1)",
    )
    .bind(tenant)
    .fetch_all(admin)
    .await
    .unwrap()
}

fn step<'a>(
    steps: &'a [(String, String, String, String)],
    name: &str,
) -> &'a (String, String, String, String) {
    steps
        .iter()
        .find(|s| s.1 == name)
        .unwrap_or_else(|| panic!("no step {name} in {steps:?}"))
}

async fn project_name(su: &mut PgConnection, tenant: Uuid, provider: &str) -> String {
    sqlx::query_scalar(
        "select project_name from bulkhead.provider_provisions where tenant_id = $1 and provider = $2",
    )
    .bind(tenant)
    .bind(provider)
    .fetch_one(su)
    .await
    .unwrap()
}

/// The fake's live (not archived) projects of this name.
fn projects_named(state: &Value, name: &str) -> Vec<Value> {
    state["projects"]
        .as_object()
        .unwrap()
        .values()
        .filter(|p| p["name"] == name && p["status"] == "active")
        .cloned()
        .collect()
}

/// A POST to the fake's OpenAI Admin API with an admin key; the raw answer.
fn admin_post(port: u16, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-admin-test\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// A chat call to the fake with `key`, as a client holding it would make; the raw answer.
fn chat_with_key(port: u16, key: &str) -> String {
    use std::io::{Read, Write};
    let body = r#"{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}"#;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

fn live_accounts_of(project: &Value) -> Vec<&Value> {
    project["service_accounts"]
        .as_object()
        .unwrap()
        .values()
        .filter(|a| a["deleted"] != true)
        .collect()
}

/// A provisioned OpenAI tenant's credential, and the key in the file it names.
async fn check_openai_credential(su: &mut PgConnection, setup: &Setup, tenant: Uuid) -> String {
    let name = project_name(su, tenant, "openai").await;
    let state = setup.admin_state();
    let projects = projects_named(&state, &name);
    assert_eq!(
        projects.len(),
        1,
        "exactly one project named {name}: {projects:?}"
    );
    let project = &projects[0];
    let live: Vec<&Value> = project["service_accounts"]
        .as_object()
        .unwrap()
        .values()
        .filter(|a| a["deleted"] != true)
        .collect();
    assert_eq!(live.len(), 1, "one live service account: {live:?}");
    let (secret_ref, project_id, kind, status): (String, String, String, String) = sqlx::query_as(
        "select secret_ref, provider_project_id, kind, status from bulkhead.tenant_credentials
         where tenant_id = $1 and provider = 'openai'",
    )
    .bind(tenant)
    .fetch_one(&mut *su)
    .await
    .unwrap();
    assert_eq!(project_id, project["id"].as_str().unwrap());
    assert_eq!((kind.as_str(), status.as_str()), ("dedicated", "active"));
    let path = secret_ref.strip_prefix("file:").expect("a file reference");
    assert!(Path::new(path).starts_with(&setup.secrets));
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key file is readable by its owner only");
    let key = std::fs::read_to_string(path).unwrap();
    assert_eq!(
        key.trim(),
        live[0]["key_value"].as_str().unwrap(),
        "the file holds the live account's key"
    );
    key.trim().to_string()
}

#[tokio::test]
async fn provisioning_creates_once_caps_and_keeps_keys_out_of_sight() {
    let scratch =
        std::env::temp_dir().join(format!("bulkhead-provisioning-{}", Uuid::new_v4().simple()));
    let secrets = scratch.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let setup = Setup {
        fake: FakeProviders::start(),
        keys: Keys {
            openai_admin: format!("sk-admin-{}", Uuid::new_v4().simple()),
            anthropic_admin: format!("sk-ant-admin01-{}", Uuid::new_v4().simple()),
        },
        secrets: secrets.clone(),
        log: scratch.join("worker.log"),
    };
    let mut admin_conn = admin().await;
    let mut su = superuser().await;
    let mut project_keys = Vec::new();

    // 1. Provision: project, service account, key file, rate limits, credential.
    let tenant = create_tenant(&mut admin_conn, "prov").await;
    let first = tenant;
    sqlx::query("select bulkhead.set_budget($1, 100, 10000, 2000, 50)")
        .bind(tenant)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    let job = provision(&mut admin_conn, tenant, "openai", "{}").await;
    // Asked again while queued: the same job.
    assert_eq!(
        provision(&mut admin_conn, tenant, "openai", "{}").await,
        job
    );
    assert_eq!(setup.run_job(&mut su, job).await, "done");
    project_keys.push(check_openai_credential(&mut su, &setup, tenant).await);
    let steps = status(&mut admin_conn, tenant).await;
    for name in [
        "project",
        "service account",
        "key stored",
        "rate limits",
        "credential",
    ] {
        assert_eq!(step(&steps, name).2, "done", "{steps:?}");
    }
    assert_eq!(step(&steps, "spend limit").2, "done");
    assert!(
        step(&steps, "spend limit").3.contains("$55.00"),
        "{steps:?}"
    );
    // The backstop sits at the budget plus 10 %, never below it, for every model.
    let name = project_name(&mut su, tenant, "openai").await;
    let state = setup.admin_state();
    let limits = projects_named(&state, &name)[0]["rate_limits"].clone();
    for limit in limits.as_object().unwrap().values() {
        assert_eq!(limit["max_requests_per_1_minute"], 110, "{limit}");
        assert_eq!(limit["max_tokens_per_1_minute"], 13200, "{limit}");
    }
    assert_eq!(
        projects_named(&state, &name)[0]["spend_limit"]["threshold_amount"],
        5500
    );

    // 2. Limits follow set_budget: a lower budget lowers the backstop, to the budget plus margin.
    sqlx::query("select bulkhead.set_budget($1, 40, 3000, 1000, 20)")
        .bind(tenant)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    let limits_job: i64 = sqlx::query_scalar(
        "select id from bulkhead.jobs where tenant_id = $1 and kind = 'provider_limits' order by created_at desc limit 1",
    )
    .bind(tenant)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_ne!(limits_job, job, "set_budget queued a limits update");
    assert_eq!(setup.run_job(&mut su, limits_job).await, "done");
    let state = setup.admin_state();
    for limit in projects_named(&state, &name)[0]["rate_limits"]
        .as_object()
        .unwrap()
        .values()
    {
        assert_eq!(limit["max_requests_per_1_minute"], 44, "{limit}");
        assert_eq!(limit["max_tokens_per_1_minute"], 4400, "{limit}");
    }
    assert_eq!(
        projects_named(&state, &name)[0]["spend_limit"]["threshold_amount"],
        2200
    );
    assert_eq!(
        projects_named(&state, &name).len(),
        1,
        "a limits update creates nothing"
    );

    // 3. A crash at every step: the worker dies while the provider carries the step out (the
    // fake answers after 3 s, the worker is killed once the request is in); the next worker
    // finds what was done and creates nothing twice. At the service account, the account made
    // after the crash holds a key nobody stored: it is deleted and a new one made.
    for fault in [
        "POST /v1/organization/projects",
        "POST /v1/organization/projects/*/service_accounts",
        "POST /v1/organization/projects/*/rate_limits/*",
    ] {
        let tenant = create_tenant(&mut admin_conn, "crash").await;
        let job = provision(&mut admin_conn, tenant, "openai", "{}").await;
        setup.fake.inject(fault, serde_json::json!([{"delay": 3}]));
        {
            let _worker = KillOnDrop(setup.worker(false).spawn().unwrap());
            let mut waited = 0;
            while setup
                .fake
                .call("GET", "/_fake/inflight", "")
                .contains("\"inflight\": 0")
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
                waited += 1;
                assert!(waited < 500, "the worker never reached {fault}");
            }
        } // SIGKILL: no step after the request is recorded.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(
            setup.run_job(&mut su, job).await,
            "done",
            "after a crash at {fault}"
        );
        project_keys.push(check_openai_credential(&mut su, &setup, tenant).await);
    }

    // 3b. A crash between storing the key and recording it (the database refuses the record
    // once, as a crash would lose it): the retry finds the account and the key it stored, and
    // makes no second account.
    sqlx::raw_sql(
        // A sequence counts the refusals: it is not rolled back with the refused transaction.
        "drop sequence if exists public.it_refusals; create sequence public.it_refusals;
         grant usage, select on sequence public.it_refusals to public;
         create or replace function public.it_refuse_record() returns trigger language plpgsql as $f$
         begin
             if new.service_account_id is not null and old.service_account_id is null
                and pg_catalog.nextval('public.it_refusals') = 1 then
                 raise exception 'the record is lost, as in a crash' using errcode = '40001';
             end if;
             return new;
         end $f$;
         drop trigger if exists it_refuse_record on bulkhead.provider_provisions;
         create trigger it_refuse_record before update on bulkhead.provider_provisions
             for each row execute function public.it_refuse_record();",
    )
    .execute(&mut su)
    .await
    .unwrap();
    let tenant = create_tenant(&mut admin_conn, "lost").await;
    let job = provision(&mut admin_conn, tenant, "openai", "{}").await;
    assert_eq!(setup.run_job(&mut su, job).await, "done");
    let refusals: i64 = sqlx::query_scalar("select last_value from public.it_refusals")
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert_eq!(refusals, 2, "refused once, recorded the second time");
    sqlx::raw_sql(
        "drop trigger it_refuse_record on bulkhead.provider_provisions;
         drop function public.it_refuse_record(); drop sequence public.it_refusals;",
    )
    .execute(&mut su)
    .await
    .unwrap();
    project_keys.push(check_openai_credential(&mut su, &setup, tenant).await);
    let steps = status(&mut admin_conn, tenant).await;
    assert!(
        step(&steps, "service account")
            .3
            .contains("found, its key stored before"),
        "{steps:?}"
    );

    // 3c. Supabase Vault as the store (a test double of Vault 0.3's SQL: vault.secrets, and
    // vault.create_secret, SECURITY DEFINER as in Vault; here it "encrypts" by reversing). The worker gets the grants the
    // README lists.
    sqlx::raw_sql(
        "create schema if not exists vault;
         create table if not exists vault.secrets (id uuid primary key, secret text not null);
         alter table vault.secrets add column if not exists name text unique;
         create or replace function vault.create_secret(new_secret text, new_name text default null,
                 new_description text default '', new_key_id uuid default null) returns uuid
             language sql security definer set search_path to ''
             as $f$ insert into vault.secrets (id, secret, name)
                    values (pg_catalog.gen_random_uuid(), pg_catalog.reverse(new_secret), new_name) returning id $f$;
         revoke all on function vault.create_secret(text, text, text, uuid) from public;
         grant usage on schema vault to bulkhead_worker;
         grant execute on function vault.create_secret(text, text, text, uuid) to bulkhead_worker;
         grant select, delete on vault.secrets to bulkhead_worker;",
    )
    .execute(&mut su)
    .await
    .unwrap();
    let vaulted = create_tenant(&mut admin_conn, "vaulted").await;
    let job = provision(
        &mut admin_conn,
        vaulted,
        "openai",
        r#"{"storage": "vault"}"#,
    )
    .await;
    assert_eq!(setup.run_job(&mut su, job).await, "done");
    let vault_ref: String = sqlx::query_scalar(
        "select secret_ref from bulkhead.tenant_credentials where tenant_id = $1 and provider = 'openai'",
    )
    .bind(vaulted)
    .fetch_one(&mut su)
    .await
    .unwrap();
    let vault_id =
        Uuid::parse_str(vault_ref.strip_prefix("vault:").expect("a vault reference")).unwrap();
    let stored: String =
        sqlx::query_scalar("select reverse(secret) from vault.secrets where id = $1")
            .bind(vault_id)
            .fetch_one(&mut su)
            .await
            .unwrap();
    let vaulted_name = project_name(&mut su, vaulted, "openai").await;
    let state = setup.admin_state();
    let live = live_accounts_of(&projects_named(&state, &vaulted_name)[0])
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(live.len(), 1);
    assert_eq!(
        stored,
        live[0]["key_value"].as_str().unwrap(),
        "Vault holds the live account's key"
    );
    project_keys.push(stored);

    // 4. 5xx, 429 and a timeout (the project is made after the worker gave up): retried with
    // the queue's backoff, one project.
    let tenant = create_tenant(&mut admin_conn, "faults").await;
    let job = provision(&mut admin_conn, tenant, "openai", "{}").await;
    setup.fake.inject(
        "POST /v1/organization/projects",
        serde_json::json!([{"status": 503}, {"status": 429, "retry_after": "0"}, {"delay": 3}]),
    );
    assert_eq!(setup.run_job(&mut su, job).await, "done");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    project_keys.push(check_openai_credential(&mut su, &setup, tenant).await);

    // 5. A permanent failure is readable, the provider's error kept, keys redacted (the fake
    // echoes the admin key, as a provider quoting a request might).
    let tenant = create_tenant(&mut admin_conn, "refused").await;
    let job = provision(&mut admin_conn, tenant, "openai", "{}").await;
    setup.fake.inject(
        "POST /v1/organization/projects",
        serde_json::json!([{"status": 400, "message": format!("name refused; you sent {}", setup.keys.openai_admin)}]),
    );
    assert_eq!(setup.run_job(&mut su, job).await, "dead");
    let steps = status(&mut admin_conn, tenant).await;
    let failed = step(&steps, "project");
    assert_eq!(failed.2, "failed");
    assert!(
        failed.3.contains("HTTP 400") && failed.3.contains("name refused"),
        "{failed:?}"
    );
    assert!(step(&steps, "job").2 == "dead", "{steps:?}");
    // The job row, which the tenant's application reads, says where to look, not what failed.
    let job_error: String =
        sqlx::query_scalar("select last_error from bulkhead.jobs where id = $1")
            .bind(job)
            .fetch_one(&mut su)
            .await
            .unwrap();
    assert!(
        job_error.contains("provisioning_status") && !job_error.contains("HTTP 400"),
        "{job_error}"
    );

    // 6. Anthropic: a workspace, found again rather than made twice; the credential waits for
    // its key (the shared pool serves meanwhile, or the call is refused), until an admin attaches
    // one.
    let tenant = create_tenant(&mut admin_conn, "anthropic").await;
    let job = provision(&mut admin_conn, tenant, "anthropic", "{}").await;
    setup.fake.inject(
        "POST /v1/organizations/workspaces",
        serde_json::json!([{"delay": 3}]),
    );
    assert_eq!(setup.run_job(&mut su, job).await, "done");
    let name = project_name(&mut su, tenant, "anthropic").await;
    let workspaces: Vec<String> = setup.admin_state()["workspaces"]
        .as_object()
        .unwrap()
        .values()
        .filter(|w| w["name"] == name.as_str())
        .map(|w| w["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(workspaces.len(), 1, "one workspace named {name}");
    let steps = status(&mut admin_conn, tenant).await;
    assert_eq!(step(&steps, "workspace").2, "done");
    assert_eq!(step(&steps, "key").2, "pending");
    assert_eq!(step(&steps, "rate limits").2, "done");
    assert_eq!(step(&steps, "spend limit").2, "done");
    // Each model group's limits at the backstop, at or above the tenant's own.
    let (rpm, itpm, otpm): (i64, i64, i64) = sqlx::query_as(
        "select (l->>'rpm')::int8, (l->>'itpm')::int8, (l->>'otpm')::int8 from bulkhead._provider_limits($1) l",
    )
    .bind(tenant)
    .fetch_one(&mut su)
    .await
    .unwrap();
    let state = setup.admin_state();
    let groups = state["workspaces"][workspaces[0].as_str()]["rate_limits"]
        .as_object()
        .unwrap()
        .clone();
    assert_eq!(groups.len(), 2, "{groups:?}");
    for limits in groups.values() {
        assert_eq!(
            (
                limits["requests_per_minute"].as_i64(),
                limits["input_tokens_per_minute"].as_i64(),
                limits["output_tokens_per_minute"].as_i64()
            ),
            (Some(rpm), Some(itpm), Some(otpm))
        );
    }
    let (reference, workspace, cred_status): (Option<String>, String, String) = sqlx::query_as(
        "select secret_ref, provider_project_id, status from bulkhead.tenant_credentials
         where tenant_id = $1 and provider = 'anthropic'",
    )
    .bind(tenant)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(
        (reference, workspace.as_str(), cred_status.as_str()),
        (None, workspaces[0].as_str(), "pending_key")
    );
    let source = |refuse: bool| async move {
        let mut su = superuser().await;
        let mut tx = begin_as(&mut su, tenant).await.unwrap();
        if refuse {
            tx.execute("set local bulkhead.pending_key_calls = refuse")
                .await
                .unwrap();
        }
        let row: Option<(Option<String>, String)> = sqlx::query_as(
            "select secret_ref, source from bulkhead.credential_for_tenant('anthropic')",
        )
        .fetch_optional(&mut *tx)
        .await
        .unwrap();
        row
    };
    assert!(
        source(false)
            .await
            .is_none_or(|(_, source)| source == "shared"),
        "the shared pool, or nothing"
    );
    assert_eq!(
        source(true).await,
        Some((None, "tenant".to_string())),
        "refused: the tenant's row without a key"
    );
    sqlx::query(
        "select bulkhead.set_credential($1, 'anthropic', 'env:ANTHROPIC_KEY_OF_THE_WORKSPACE')",
    )
    .bind(tenant)
    .execute(&mut admin_conn)
    .await
    .unwrap();
    let (cred_status, workspace_kept): (String, String) = sqlx::query_as(
        "select status, provider_project_id from bulkhead.tenant_credentials where tenant_id = $1 and provider = 'anthropic'",
    )
    .bind(tenant)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(
        (cred_status.as_str(), workspace_kept.as_str()),
        ("active", workspaces[0].as_str())
    );
    // Provisioned again: the workspace is found, the attached key stays.
    let again = provision(&mut admin_conn, tenant, "anthropic", "{}").await;
    assert_ne!(again, job);
    assert_eq!(setup.run_job(&mut su, again).await, "done");
    assert_eq!(source(false).await.map(|r| r.1), Some("tenant".to_string()));
    let steps = status(&mut admin_conn, tenant).await;
    assert!(
        step(&steps, "workspace").3.contains("found")
            || step(&steps, "workspace").3.contains("created")
    );

    // 6b. Reconciliation knows provisioned workspaces by id, even one waiting for its key (whose
    // tenant's calls go to the shared pool); a workspace nobody provisioned stays 'unknown'. And
    // where Anthropic's legacy usage report is gone (404), the analytics report is read.
    let waiting = create_tenant(&mut admin_conn, "waiting").await;
    let job = provision(&mut admin_conn, waiting, "anthropic", "{}").await;
    assert_eq!(setup.run_job(&mut su, job).await, "done");
    let waiting_workspace: String = sqlx::query_scalar(
        "select project_id from bulkhead.provider_provisions where tenant_id = $1",
    )
    .bind(waiting)
    .fetch_one(&mut su)
    .await
    .unwrap();
    let day: String =
        sqlx::query_scalar("select (current_date - 3000 - (random() * 3000)::int)::text")
            .fetch_one(&mut su)
            .await
            .unwrap();
    let day_start: f64 = sqlx::query_scalar(
        "select extract(epoch from $1::date::timestamp at time zone 'UTC')::float8",
    )
    .bind(&day)
    .fetch_one(&mut su)
    .await
    .unwrap();
    let stranger = format!("wrkspc_nobody_{}", Uuid::new_v4().simple());
    for workspace in [&waiting_workspace, &stranger] {
        setup.fake.call(
            "POST",
            "/_fake/usage/add",
            &serde_json::json!({"api": "messages", "project": workspace, "ts": day_start + 3600.0, "input": 40, "output": 4})
                .to_string(),
        );
    }
    setup.fake.inject(
        "GET /v1/organizations/usage_report/messages",
        serde_json::json!([{"status": 404}]),
    );
    let reconciled = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["reconcile", "--day", &day])
        .env(
            "DATABASE_URL",
            std::env::var("BULKHEAD_TEST_DATABASE_URL")
                .unwrap()
                .replacen("postgres@", "bulkhead_test_worker@", 1),
        )
        .env(
            "ANTHROPIC_BASE_URL",
            format!("http://127.0.0.1:{}", setup.fake.port),
        )
        .env("ANTHROPIC_ADMIN_KEY", &setup.keys.anthropic_admin)
        .env_remove("OPENAI_ADMIN_KEY")
        .output()
        .unwrap();
    assert!(
        reconciled.status.success(),
        "{}",
        String::from_utf8_lossy(&reconciled.stderr)
    );
    let drift: Vec<(String, String, Option<Uuid>, i64, i64)> = sqlx::query_as(
        "select provider_project_id, attribution, dedicated_tenant, provider_input_tokens, provider_requests
         from bulkhead.usage_drift where provider = 'anthropic' and usage_date = $1::date order by attribution",
    )
    .bind(&day)
    .fetch_all(&mut su)
    .await
    .unwrap();
    assert_eq!(
        drift,
        vec![
            (
                waiting_workspace.clone(),
                "tenant".to_string(),
                Some(waiting),
                40,
                1
            ),
            (stranger.clone(), "unknown".to_string(), None, 40, 1),
        ],
        "read from the analytics report (it has request counts; the legacy one has none)"
    );

    // 6c. Live projects with the provisioning's name: two a create that timed out and its retry
    // made (the oldest is kept, the other archived), and one a credential names (someone's:
    // neither used nor archived).
    let doubled = create_tenant(&mut admin_conn, "doubled").await;
    let job = provision(&mut admin_conn, doubled, "openai", "{}").await;
    let doubled_name = project_name(&mut su, doubled, "openai").await;
    let mut made = Vec::new();
    for _ in 0..3 {
        let answer = admin_post(
            setup.fake.port,
            "/v1/organization/projects",
            &serde_json::json!({"name": doubled_name}).to_string(),
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let body: Value = serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
        made.push(body["id"].as_str().unwrap().to_string());
    }
    let someones = made[0].clone();
    let owner = create_tenant(&mut admin_conn, "owner").await;
    sqlx::query("select bulkhead.set_credential($1, 'openai', 'env:OWNERS_OWN_KEY', provider_project_id => $2)")
        .bind(owner)
        .bind(&someones)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    assert_eq!(projects_named(&setup.admin_state(), &doubled_name).len(), 3);
    assert_eq!(setup.run_job(&mut su, job).await, "done");
    let live: Vec<String> = projects_named(&setup.admin_state(), &doubled_name)
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    let used: String = sqlx::query_scalar(
        "select project_id from bulkhead.provider_provisions where tenant_id = $1 and provider = 'openai'",
    )
    .bind(doubled)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(used, made[1], "the oldest free project is used");
    assert!(
        live.contains(&someones) && live.contains(&used) && live.len() == 2,
        "{live:?}"
    );
    let kept: Vec<Value> = projects_named(&setup.admin_state(), &doubled_name)
        .into_iter()
        .filter(|p| p["id"] == used.as_str())
        .collect();
    // Its key (the file the credential names holds the used project's live account's key).
    let doubled_ref: String = sqlx::query_scalar(
        "select secret_ref from bulkhead.tenant_credentials where tenant_id = $1 and provider = 'openai'",
    )
    .bind(doubled)
    .fetch_one(&mut su)
    .await
    .unwrap();
    let doubled_key = std::fs::read_to_string(doubled_ref.strip_prefix("file:").unwrap()).unwrap();
    assert_eq!(
        doubled_key.trim(),
        live_accounts_of(&kept[0])[0]["key_value"].as_str().unwrap()
    );
    project_keys.push(doubled_key.trim().to_string());

    // 6d. Rotation refuses what it cannot do: while a provisioning is on its way (55006), and
    // for a credential set by hand instead of the provisioned key (55000).
    // What an earlier run left (an account and a key file recorded nowhere) goes with the next
    // provisioning's tidy step.
    let stray = admin_post(
        setup.fake.port,
        &format!("/v1/organization/projects/{used}/service_accounts"),
        r#"{"name": "bulkhead-1"}"#,
    );
    assert!(stray.starts_with("HTTP/1.1 200"), "{stray}");
    let stray_file = setup
        .secrets
        .join(format!("bulkhead-{doubled}-openai-svc_acct_stray.key"));
    std::fs::write(&stray_file, "sk-stray-key-left-by-an-earlier-run\n").unwrap();
    let busy = provision(&mut admin_conn, doubled, "openai", "{}").await;
    let refused = sqlx::query("select bulkhead.rotate_credential($1, 'openai')")
        .bind(doubled)
        .execute(&mut admin_conn)
        .await;
    assert_eq!(sqlstate(&refused), "55006");
    assert_eq!(setup.run_job(&mut su, busy).await, "done");
    assert!(!stray_file.exists(), "the stray key file is removed");
    let state = setup.admin_state();
    let used_project = &state["projects"][used.as_str()];
    assert_eq!(
        live_accounts_of(used_project).len(),
        1,
        "the stray account is deleted"
    );
    sqlx::query("select bulkhead.set_credential($1, 'openai', 'env:A_KEY_SET_BY_HAND')")
        .bind(doubled)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    let refused = sqlx::query("select bulkhead.rotate_credential($1, 'openai')")
        .bind(doubled)
        .execute(&mut admin_conn)
        .await;
    assert_eq!(sqlstate(&refused), "55000");
    // A rotation, then a key set by hand before the rotation's job runs: the hand-set key stays
    // (the rotation does not undo it), and the old provisioned key is revoked all the same.
    let again = provision(&mut admin_conn, doubled, "openai", "{}").await;
    assert_eq!(setup.run_job(&mut su, again).await, "done");
    let rotation: i64 = sqlx::query_scalar("select bulkhead.rotate_credential($1, 'openai')")
        .bind(doubled)
        .fetch_one(&mut admin_conn)
        .await
        .unwrap();
    sqlx::query("select bulkhead.set_credential($1, 'openai', 'env:A_SECOND_KEY_BY_HAND')")
        .bind(doubled)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    assert_eq!(setup.run_job(&mut su, rotation).await, "done");
    let (current, switched): (String, bool) = sqlx::query_as(
        "select c.secret_ref, (select bool_and(r.switched_at is not null) from bulkhead.provider_revocations r
                               where r.tenant_ref = c.tenant_id and r.reason = 'rotation')
         from bulkhead.tenant_credentials c where c.tenant_id = $1 and c.provider = 'openai'",
    )
    .bind(doubled)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(
        (current.as_str(), switched),
        ("env:A_SECOND_KEY_BY_HAND", true)
    );

    // 6e. A worker cannot attach one tenant's project or key to another, even holding a job of
    // the other (here a finished job reopened as the worker's role may): ids are recorded for
    // one tenant for good, facts are never replaced, a key file is named for its tenant.
    let mut worker_session = common::superuser_options()
        .username("bulkhead_test_worker")
        .connect()
        .await
        .unwrap();
    let thief = create_tenant(&mut admin_conn, "thief").await;
    let thief_job = provision(&mut admin_conn, thief, "openai", "{}").await;
    sqlx::query("update bulkhead.job_schedule set state = 'running', leased_by = 'reopened', leased_until = now() + interval '1 minute' where job_id = $1")
        .bind(thief_job)
        .execute(&mut worker_session)
        .await
        .unwrap();
    let victim_project = kept[0]["id"].as_str().unwrap().to_string();
    let victim_file = std::fs::read_dir(&setup.secrets)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for (facts, code) in [
        (serde_json::json!({"project_id": victim_project}), "55000"),
        (
            serde_json::json!({"secret_ref": format!("file:{}", victim_file.display())}),
            "22023",
        ),
        (
            serde_json::json!({"project_id": "../../admin_api_keys"}),
            "22023",
        ),
        (
            serde_json::json!({"secret_ref": "env:OPENAI_ADMIN_KEY"}),
            "22023",
        ),
    ] {
        let refused = sqlx::query(
            "select bulkhead.provisioning_step($1, 'reopened', 'project', 'done', 'x', $2)",
        )
        .bind(thief_job)
        .bind(&facts)
        .execute(&mut worker_session)
        .await;
        assert_eq!(sqlstate(&refused), code, "{facts}");
    }
    // The twin: the same call with the thief's own new project is recorded, once.
    sqlx::query("select bulkhead.provisioning_step($1, 'reopened', 'project', 'done', 'x', jsonb_build_object('project_id', $2::text))")
        .bind(thief_job)
        .bind(format!("proj_thiefs_own_{}", Uuid::new_v4().simple()))
        .execute(&mut worker_session)
        .await
        .unwrap();
    let replaced = sqlx::query("select bulkhead.provisioning_step($1, 'reopened', 'project', 'done', 'x', '{\"project_id\": \"proj_another\"}')")
        .bind(thief_job)
        .execute(&mut worker_session)
        .await;
    assert_eq!(
        sqlstate(&replaced),
        "55000",
        "a recorded fact is never replaced"
    );
    sqlx::query("update bulkhead.job_schedule set state = 'dead', leased_by = null, leased_until = null where job_id = $1")
        .bind(thief_job)
        .execute(&mut su)
        .await
        .unwrap();

    // A relative secrets directory is refused at start (its references would name other files).
    let relative = setup
        .worker(true)
        .env("BULKHEAD_SECRETS_DIR", "relative/secrets")
        .status()
        .unwrap();
    assert_eq!(relative.code(), Some(2));

    // 7. Who may do what: the application may not provision, read provisioning or queue its
    // jobs; an admin reads a tenant's provision only in that tenant's context (RLS).
    let mut app = common::app().await;
    for statement in [
        "select bulkhead.provision_provider($1, 'openai')",
        "select * from bulkhead.provisioning_status($1)",
        "select bulkhead.rotate_credential($1, 'openai')",
    ] {
        let refused = sqlx::query(statement).bind(tenant).execute(&mut app).await;
        assert_eq!(sqlstate(&refused), "42501", "{statement}");
    }
    let other = create_tenant(&mut admin_conn, "other").await;
    for statement in [
        "select count(*) from bulkhead.provider_provisions",
        "select count(*) from bulkhead.provisioning_steps",
        "select count(*) from bulkhead.provider_revocations",
    ] {
        let mut tx = begin_as(&mut app, other).await.unwrap();
        let refused = sqlx::query_scalar::<_, i64>(statement)
            .fetch_one(&mut *tx)
            .await;
        assert_eq!(sqlstate(&refused), "42501", "{statement}");
        tx.rollback().await.unwrap();
    }
    let mut tx = begin_as(&mut app, other).await.unwrap();
    let refused = sqlx::query_scalar::<_, i64>(
        "select bulkhead.enqueue_job('provision', '{\"provider\": \"openai\"}')",
    )
    .fetch_one(&mut *tx)
    .await;
    assert_eq!(sqlstate(&refused), "42501");
    tx.rollback().await.unwrap();
    let mut tx = begin_as(&mut admin_conn, other).await.unwrap();
    let seen: i64 = sqlx::query_scalar("select count(*) from bulkhead.provider_provisions")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, 0, "another tenant's context sees no provision");
    tx.rollback().await.unwrap();
    let seen: i64 = sqlx::query_scalar("select count(*) from bulkhead.provider_provisions")
        .fetch_one(&mut admin_conn)
        .await
        .unwrap();
    assert_eq!(seen, 0, "no context, no provision");
    // The twin: RLS off (as the superuser, which bypasses it) shows them all.
    let all: i64 = sqlx::query_scalar("select count(*) from bulkhead.provider_provisions")
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert!(all >= 6);
    // A worker records steps only of a job it holds.
    let mut worker = common::superuser_options()
        .username("bulkhead_test_worker")
        .connect()
        .await
        .unwrap();
    let refused = sqlx::query(
        "select bulkhead.provisioning_step($1, 'not-the-holder', 'project', 'done', 'x')",
    )
    .bind(job)
    .execute(&mut worker)
    .await;
    assert_eq!(sqlstate(&refused), "55000");

    // 8. Rotation: a new service account and key, switched in at once; the old key is revoked
    // only once no call admitted before the switch is open, and no call ever meets a revoked
    // key (the fake refuses a deleted account's key with 401).
    let old_key = project_keys[0].clone();
    let name = project_name(&mut su, first, "openai").await;
    let old_ref: String = sqlx::query_scalar(
        "select secret_ref from bulkhead.tenant_credentials where tenant_id = $1 and provider = 'openai'",
    )
    .bind(first)
    .fetch_one(&mut su)
    .await
    .unwrap();
    let mut app_conn = common::app().await;
    let mut tx = begin_as(&mut app_conn, first).await.unwrap();
    let in_flight: Uuid =
        sqlx::query_scalar("select bulkhead.budget_check('gpt-4o-mini', 100, 50)")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    tx.commit().await.unwrap();
    let refused = sqlx::query("select bulkhead.rotate_credential($1, 'anthropic')")
        .bind(first)
        .execute(&mut admin_conn)
        .await;
    assert_eq!(
        sqlstate(&refused),
        "0A000",
        "Anthropic keys cannot be made by API"
    );
    let rotation: i64 = sqlx::query_scalar("select bulkhead.rotate_credential($1, 'openai')")
        .bind(first)
        .fetch_one(&mut admin_conn)
        .await
        .unwrap();
    assert_eq!(setup.run_job(&mut su, rotation).await, "done");
    let new_ref: String = sqlx::query_scalar(
        "select secret_ref from bulkhead.tenant_credentials where tenant_id = $1 and provider = 'openai'",
    )
    .bind(first)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_ne!(new_ref, old_ref, "the credential names the new key");
    let new_key = std::fs::read_to_string(new_ref.strip_prefix("file:").unwrap())
        .unwrap()
        .trim()
        .to_string();
    project_keys.push(new_key.clone());
    assert!(
        Path::new(old_ref.strip_prefix("file:").unwrap()).exists(),
        "the old key stays while a call may use it"
    );
    // Past the grace, but a reservation from before the switch is open: not revoked yet.
    sqlx::query("update bulkhead.provider_revocations set not_before = now() where tenant_ref = $1 and reason = 'rotation'")
        .bind(first)
        .execute(&mut su)
        .await
        .unwrap();
    assert!(setup.worker(true).status().unwrap().success());
    let live_accounts = |state: &Value| -> Vec<String> {
        projects_named(state, &name)[0]["service_accounts"]
            .as_object()
            .unwrap()
            .values()
            .filter(|a| a["deleted"] != true)
            .map(|a| a["key_value"].as_str().unwrap().to_string())
            .collect()
    };
    let live = live_accounts(&setup.admin_state());
    assert!(
        live.contains(&old_key) && live.contains(&new_key),
        "both keys live while the old call is open"
    );
    // A call made now uses the new key.
    sqlx::query("select bulkhead.set_skeleton('prov-rotation', 'Q: {{ vars.question }}')")
        .execute(&mut admin_conn)
        .await
        .unwrap();
    for statement in [
        "select bulkhead.publish_prompt($1, 'prov-rotation', '{}')",
        "select bulkhead.activate_prompt($1, 'prov-rotation', 1)",
    ] {
        sqlx::query(statement)
            .bind(first)
            .execute(&mut admin_conn)
            .await
            .unwrap();
    }
    let mut tx = begin_as(&mut app_conn, first).await.unwrap();
    let call: i64 = sqlx::query_scalar(
        "select bulkhead.complete('prov-rotation', '{\"question\": \"which key\"}', 'gpt-4o-mini', 20)",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(setup.run_job(&mut su, call).await, "done");
    let usage: Value = serde_json::from_str(&setup.fake.call("GET", "/_fake/usage", "")).unwrap();
    let keys_used: Vec<&str> = usage
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["key"].as_str())
        .collect();
    assert!(
        keys_used.contains(&new_key.as_str()),
        "the call after the switch used the new key"
    );
    // The old call ends: the old key is revoked, its file deleted.
    let mut tx = begin_as(&mut app_conn, first).await.unwrap();
    sqlx::query("select bulkhead.ledger_record($1, '{\"prompt_tokens\": 90, \"completion_tokens\": 10}', 'chatcmpl-rotation')")
        .bind(in_flight)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(setup.worker(true).status().unwrap().success());
    let live = live_accounts(&setup.admin_state());
    assert_eq!(live, vec![new_key.clone()], "only the new key is live");
    assert!(
        !Path::new(old_ref.strip_prefix("file:").unwrap()).exists(),
        "the old key file is gone"
    );

    // 9. Deletion revokes at the providers; the receipt lists each step once done, and what is
    // pending until then.
    let anthropic_tenant = tenant;
    setup.fake.call(
        "POST",
        "/_fake/admin/anthropic_keys",
        &serde_json::json!({"workspace_id": workspaces[0]}).to_string(),
    );
    // A revocation row the database will not record a receipt step for (its receipt does not
    // exist) stops only itself: the sweep goes on to the others.
    sqlx::query(
        "insert into bulkhead.provider_revocations (receipt_id, tenant_ref, provider, reason, switched_at, not_before, enqueued_at)
         values (gen_random_uuid(), gen_random_uuid(), 'openai', 'deletion', now(), now(), now() - interval '1 day')",
    )
    .execute(&mut su)
    .await
    .unwrap();
    let mut receipts = Vec::new();
    for doomed in [first, anthropic_tenant, vaulted] {
        let receipt: Uuid = sqlx::query_scalar("select bulkhead.delete_tenant($1)")
            .bind(doomed)
            .fetch_one(&mut admin_conn)
            .await
            .unwrap();
        receipts.push(receipt);
    }
    let pending: Vec<String> = sqlx::query_scalar(
        "select step from bulkhead.deletion_receipt_pending where receipt_id = $1 and step <> 'pinecone namespace deleted' order by step",
    )
    .bind(receipts[0])
    .fetch_all(&mut admin_conn)
    .await
    .unwrap();
    assert_eq!(
        pending,
        [
            "provider key revoked",
            "provider project archived",
            "secret deleted"
        ]
    );
    assert!(setup.worker(true).status().unwrap().success());
    let steps: Vec<String> = sqlx::query_scalar(
        "select step from bulkhead.deletion_receipt_steps where receipt_id = $1 and step like any (array['provider%', 'secret%']) order by step",
    )
    .bind(receipts[0])
    .fetch_all(&mut admin_conn)
    .await
    .unwrap();
    assert_eq!(
        steps,
        [
            "provider key revoked",
            "provider project archived",
            "secret deleted"
        ]
    );
    let state = setup.admin_state();
    let archived: Vec<&Value> = state["projects"]
        .as_object()
        .unwrap()
        .values()
        .filter(|p| p["name"] == name.as_str())
        .collect();
    assert_eq!(archived.len(), 1);
    assert_eq!(archived[0]["status"], "archived");
    assert!(
        live_accounts_of(archived[0]).is_empty(),
        "no service account left"
    );
    assert!(
        !Path::new(new_ref.strip_prefix("file:").unwrap()).exists(),
        "the key file is gone"
    );
    let steps: Vec<String> = sqlx::query_scalar(
        "select step from bulkhead.deletion_receipt_steps where receipt_id = $1 and step like 'provider%' order by step",
    )
    .bind(receipts[1])
    .fetch_all(&mut admin_conn)
    .await
    .unwrap();
    assert_eq!(steps, ["provider key revoked", "provider project archived"]);
    assert!(
        !state["workspaces"][workspaces[0].as_str()]["archived_at"].is_null(),
        "the workspace is archived"
    );
    for key in state["anthropic_keys"].as_object().unwrap().values() {
        if key["workspace_id"] == workspaces[0].as_str() {
            assert_eq!(key["status"], "inactive", "{key}");
        }
    }
    let vault_left: i64 = sqlx::query_scalar("select count(*) from vault.secrets where id = $1")
        .bind(vault_id)
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert_eq!(vault_left, 0, "the Vault secret is deleted with the tenant");
    // Nothing pending at the providers but, for the Anthropic tenant whose workspace create timed
    // out once (scenario 6), the lookup by name 15 minutes on (9b shows one carried out).
    for (receipt, lookup) in receipts.iter().zip([0, 1, 0]) {
        let left: Vec<String> = sqlx::query_scalar(
            "select step from bulkhead.deletion_receipt_pending where receipt_id = $1 and step <> 'pinecone namespace deleted'",
        )
        .bind(receipt)
        .fetch_all(&mut admin_conn)
        .await
        .unwrap();
        let expected = vec!["provider lookup after a provisioning in flight".to_string(); lookup];
        assert_eq!(left, expected, "pending at the providers");
    }
    // 9b. A deletion while a provisioning job is between its steps: the job creates the project
    // after the rows are gone (its next step finds no job). Once every job's time is up the
    // daemon looks the name up and archives what it finds; the receipt says so, and shows the
    // lookup pending until then.
    let racing = create_tenant(&mut admin_conn, "racing").await;
    let job = provision(&mut admin_conn, racing, "openai", "{}").await;
    let racing_name = project_name(&mut su, racing, "openai").await;
    setup.fake.inject(
        "POST /v1/organization/projects",
        serde_json::json!([{"delay": 2}]),
    );
    let receipt: Uuid = {
        let _worker = KillOnDrop(setup.worker(false).spawn().unwrap());
        let mut waited = 0;
        while setup
            .fake
            .call("GET", "/_fake/inflight", "")
            .contains("\"inflight\": 0")
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
            waited += 1;
            assert!(waited < 500, "the worker never asked for the project");
        }
        let receipt = sqlx::query_scalar("select bulkhead.delete_tenant($1)")
            .bind(racing)
            .fetch_one(&mut admin_conn)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(3000)).await;
        receipt
    };
    let _ = job;
    assert_eq!(
        projects_named(&setup.admin_state(), &racing_name).len(),
        1,
        "the job made its project after the deletion"
    );
    let pending: Vec<String> = sqlx::query_scalar(
        "select step from bulkhead.deletion_receipt_pending where receipt_id = $1 and step like 'provider%'",
    )
    .bind(receipt)
    .fetch_all(&mut admin_conn)
    .await
    .unwrap();
    assert!(
        pending.contains(&"provider lookup after a provisioning in flight".to_string()),
        "{pending:?}"
    );
    // 15 minutes later (the lookup's time, brought forward here).
    sqlx::query(
        "update bulkhead.provider_revocations set recheck_at = now() where receipt_id = $1",
    )
    .bind(receipt)
    .execute(&mut su)
    .await
    .unwrap();
    assert!(setup.worker(true).status().unwrap().success());
    assert!(
        projects_named(&setup.admin_state(), &racing_name).is_empty(),
        "the late project is archived"
    );
    let recorded: i64 = sqlx::query_scalar(
        "select count(*) from bulkhead.deletion_receipt_steps where receipt_id = $1 and step = 'provider lookup after a provisioning in flight'",
    )
    .bind(receipt)
    .fetch_one(&mut admin_conn)
    .await
    .unwrap();
    assert_eq!(recorded, 1);
    let left: i64 = sqlx::query_scalar(
        "select count(*) from bulkhead.deletion_receipt_pending where receipt_id = $1 and step like 'provider%'",
    )
    .bind(receipt)
    .fetch_one(&mut admin_conn)
    .await
    .unwrap();
    assert_eq!(left, 0);

    // No call met a revoked key (the fake counts the ones it refused for that). The twin: a
    // call with the revoked key is refused and counted.
    assert_eq!(setup.admin_state()["refused_revoked_calls"], 0);
    let answer = chat_with_key(setup.fake.port, &old_key);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert_eq!(setup.admin_state()["refused_revoked_calls"], 1);

    // The worker's metrics, read while it runs.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = {
        let _worker = KillOnDrop(
            setup
                .worker(false)
                .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
                .spawn()
                .unwrap(),
        );
        let mut text = String::new();
        for _ in 0..200 {
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                stream
                    .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                    .unwrap();
                stream.read_to_string(&mut text).unwrap();
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        text
    };
    assert!(
        metrics.contains("bulkhead_"),
        "the metrics endpoint answered: {metrics}"
    );

    // Planted keys: nowhere in the database, the worker's log or the fake's error texts.
    let dump = common::command_as_postgres(common::pg_bin("pg_dump"))
        .args(["--data-only", "-d"])
        .arg(std::env::var("BULKHEAD_TEST_DATABASE_URL").unwrap())
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump = String::from_utf8_lossy(&dump.stdout);
    let log = std::fs::read_to_string(&setup.log).unwrap_or_default();
    // The twin: the grep finds a key where one is (the fake logs every request's headers).
    let fake_log = setup.fake.call("GET", "/_fake/requests", "");
    assert!(
        fake_log.contains(setup.keys.openai_admin.as_str())
            && fake_log.contains(setup.keys.anthropic_admin.as_str())
    );
    for key in [&setup.keys.openai_admin, &setup.keys.anthropic_admin]
        .into_iter()
        .chain(project_keys.iter())
    {
        assert!(!dump.contains(key.as_str()), "a key is in the database");
        assert!(!log.contains(key.as_str()), "a key is in the worker's log");
        assert!(!metrics.contains(key.as_str()), "a key is in the metrics");
    }
    std::fs::remove_dir_all(&scratch).ok();
}
