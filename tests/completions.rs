//! Queued completions end to end: app -> `bulkhead.complete()` -> `bulkhead worker` -> the FAKE
//! provider server (tests/fakes/fake_providers.py, a test double speaking OpenAI's and
//! Anthropic's wire formats) -> the ledger -> `bulkhead.completion_result()`.
//!
//! One test function: workers claim any tenant's jobs, so scenarios run in sequence.

mod common;

use common::{admin, app, begin_as, create_tenant, sqlstate, superuser, FakeProviders, KillOnDrop};
use serde_json::Value;
use sqlx::PgConnection;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

const TEMPLATE: &str = "it_completion";

fn requests(fake: &FakeProviders) -> Vec<Value> {
    serde_json::from_str(&fake.call("GET", "/_fake/requests", "")).unwrap()
}

fn worker_url() -> String {
    std::env::var("BULKHEAD_TEST_DATABASE_URL")
        .expect("BULKHEAD_TEST_DATABASE_URL is set by `make test-integration`")
        .replacen("postgres@", "bulkhead_test_worker@", 1)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scrape(port: u16) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

async fn complete(
    conn: &mut PgConnection,
    tenant: Uuid,
    question: &str,
    model: &str,
    stream: bool,
) -> i64 {
    let mut tx = begin_as(conn, tenant).await.unwrap();
    let job: i64 = sqlx::query_scalar(
        "select bulkhead.complete($1, jsonb_build_object('question', $2::text), $3, 40, stream => $4)",
    )
    .bind(TEMPLATE)
    .bind(question)
    .bind(model)
    .bind(stream)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    job
}

/// (status, output, cost, error) as the job's own tenant reads it; the cost as PostgreSQL prints it.
async fn result(
    conn: &mut PgConnection,
    tenant: Uuid,
    job: i64,
) -> (String, Option<String>, Option<String>, Option<String>) {
    let mut tx = begin_as(conn, tenant).await.unwrap();
    let row = sqlx::query_as(
        "select status, output, cost_usd::text, error from bulkhead.completion_result($1)",
    )
    .bind(job)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    row
}

/// Waits until a job is done or dead; returns (state, attempts).
async fn wait_for(job: i64, within: Duration) -> (String, i32) {
    let start = Instant::now();
    let mut su = superuser().await;
    loop {
        let row: (String, i32) =
            sqlx::query_as("select state, attempts from bulkhead.job_schedule where job_id = $1")
                .bind(job)
                .fetch_one(&mut su)
                .await
                .unwrap();
        if row.0 == "done" || row.0 == "dead" || start.elapsed() > within {
            return row;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn completions_flow_to_the_ledger_and_survive_provider_faults() {
    let fake = FakeProviders::start();
    let mut admin_conn = admin().await;
    let mut conn = app().await;
    let mut su = superuser().await;
    let scratch = tempdir();

    // The planted key: it must reach the provider and nothing else.
    let planted = format!("sk-planted-{}", Uuid::new_v4().simple());
    let anthropic_key = format!("sk-ant-file-{}", Uuid::new_v4().simple());
    // Project and workspace ids unique to this run: reconciliation groups by them.
    let run = &Uuid::new_v4().simple().to_string()[..8];
    let vault_key = format!("sk-vault-{}", Uuid::new_v4().simple());
    let key_file = scratch.join("anthropic.key");
    std::fs::write(&key_file, format!("{anthropic_key}\n")).unwrap();

    // A test double of Supabase Vault 0.3 (supabase/vault, sql/supabase_vault--0.3.0.sql): the
    // view is not security_invoker, so its table needs no grant, but it decrypts with
    // vault._crypto_aead_det_decrypt, which the reader must be allowed to run. Here it "decrypts"
    // by reversing what the table holds. The worker's role gets the README's three grants.
    sqlx::raw_sql(
        "create schema if not exists vault;
         create table if not exists vault.secrets (id uuid primary key, secret text not null);
         create or replace function vault._crypto_aead_det_decrypt(message bytea, additional bytea, key_id bigint,
                 context bytea = 'pgsodium', nonce bytea = null) returns bytea
             language sql immutable as $f$ select convert_to(reverse(convert_from(message, 'utf8')), 'utf8') $f$;
         revoke all on function vault._crypto_aead_det_decrypt(bytea, bytea, bigint, bytea, bytea) from public;
         create or replace view vault.decrypted_secrets as
             select id, convert_from(vault._crypto_aead_det_decrypt(convert_to(secret, 'utf8'), convert_to(id::text, 'utf8'), 0), 'utf8')
                    as decrypted_secret
             from vault.secrets;
         grant usage on schema vault to bulkhead_worker;
         grant select on vault.decrypted_secrets to bulkhead_worker;",
    )
    .execute(&mut su)
    .await
    .unwrap();
    let vault_id = Uuid::new_v4();
    sqlx::query("insert into vault.secrets values ($1, reverse($2))")
        .bind(vault_id)
        .bind(&vault_key)
        .execute(&mut su)
        .await
        .unwrap();
    // USAGE and SELECT are not enough (what the README used to say): the decrypt function too.
    {
        use sqlx::{ConnectOptions, Connection};
        let mut worker_session = common::superuser_options()
            .username("bulkhead_test_worker")
            .connect()
            .await
            .unwrap();
        let read = "select decrypted_secret from vault.decrypted_secrets where id = $1";
        let denied = sqlx::query_scalar::<_, String>(read)
            .bind(vault_id)
            .fetch_one(&mut worker_session)
            .await;
        assert_eq!(sqlstate(&denied), "42501");
        sqlx::raw_sql(
            "grant execute on function vault._crypto_aead_det_decrypt(bytea, bytea, bigint, bytea, bytea) to bulkhead_worker",
        )
        .execute(&mut su)
        .await
        .unwrap();
        let key: String = sqlx::query_scalar(read)
            .bind(vault_id)
            .fetch_one(&mut worker_session)
            .await
            .unwrap();
        assert_eq!(key, vault_key, "the README's three grants read the key");
        worker_session.close().await.unwrap();
    }

    let a = create_tenant(&mut admin_conn, "cmpl-a").await;
    let b = create_tenant(&mut admin_conn, "cmpl-b").await;
    let c = create_tenant(&mut admin_conn, "cmpl-c").await;
    sqlx::query("select bulkhead.set_skeleton($1, 'You help {{ slots.company }}. Question: {{ vars.question }}')")
        .bind(TEMPLATE)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    for (tenant, company) in [(a, "Acme"), (b, "Globex"), (c, "Initech")] {
        sqlx::query(
            "select bulkhead.publish_prompt($1, $2, jsonb_build_object('company', $3::text))",
        )
        .bind(tenant)
        .bind(TEMPLATE)
        .bind(company)
        .execute(&mut admin_conn)
        .await
        .unwrap();
        sqlx::query("select bulkhead.activate_prompt($1, $2, 1)")
            .bind(tenant)
            .bind(TEMPLATE)
            .execute(&mut admin_conn)
            .await
            .unwrap();
    }
    // The fake tells Anthropic workspaces apart by key, as Anthropic does.
    fake.call(
        "POST",
        "/_fake/workspaces",
        &serde_json::json!({&anthropic_key: format!("wrkspc_b{run}")}).to_string(),
    );
    let env_name = format!("BULKHEAD_IT_KEY_{}", Uuid::new_v4().simple());
    let (proj_a, wrkspc_b, proj_c) = (
        format!("proj_a{run}"),
        format!("wrkspc_b{run}"),
        format!("proj_c{run}"),
    );
    for (tenant, provider, reference, project) in [
        (a, "openai", format!("env:{env_name}"), &proj_a),
        (
            b,
            "anthropic",
            format!("file:{}", key_file.display()),
            &wrkspc_b,
        ),
        (c, "openai", format!("vault:{vault_id}"), &proj_c),
    ] {
        sqlx::query("select bulkhead.set_credential($1, $2, $3, 'dedicated', $4)")
            .bind(tenant)
            .bind(provider)
            .bind(reference)
            .bind(project)
            .execute(&mut admin_conn)
            .await
            .unwrap();
    }

    // An OpenAI-compatible server (vLLM, Ollama...) through the shared pool: a model priced under
    // openai_compatible, and a shared credential every tenant without its own uses.
    let compat_model = format!("llama-it-{run}");
    let compat_key = format!("sk-compat-{}", Uuid::new_v4().simple());
    let compat_env = format!("BULKHEAD_IT_COMPAT_{}", Uuid::new_v4().simple());
    sqlx::query("select bulkhead.set_price('openai_compatible', $1, 0.10, 0.20)")
        .bind(&compat_model)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    sqlx::query("select bulkhead.set_credential(null, 'openai_compatible', $1, 'shared_pool')")
        .bind(format!("env:{compat_env}"))
        .execute(&mut admin_conn)
        .await
        .unwrap();

    // A rolled-back complete() leaves neither a reservation nor a job.
    {
        let mut tx = begin_as(&mut conn, a).await.unwrap();
        sqlx::query(
            "select bulkhead.complete($1, '{\"question\": \"never mind\"}', 'gpt-4o-mini', 40)",
        )
        .bind(TEMPLATE)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.rollback().await.unwrap();
        let left: (i64, i64) = sqlx::query_as(
            "select (select count(*) from bulkhead.jobs where tenant_id = $1),
                    (select count(*) from bulkhead.reservations where tenant_id = $1)",
        )
        .bind(a)
        .fetch_one(&mut su)
        .await
        .unwrap();
        assert_eq!(left, (0, 0), "a rollback leaves no job and no reservation");
    }
    // The app cannot queue a completion around the budget.
    {
        let mut tx = begin_as(&mut conn, a).await.unwrap();
        let direct =
            sqlx::query("select bulkhead.enqueue_job('completion', '{\"prompt\": \"free ride\"}')")
                .execute(&mut *tx)
                .await;
        assert_eq!(sqlstate(&direct), "42501");
    }

    // The worker runs beside the scenarios, with a one-second provider timeout.
    let metrics_port = free_port();
    let log_path = scratch.join("worker.log");
    let mut worker = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .args([
                "worker",
                "--name",
                "it-completions",
                "--concurrency",
                "4",
                "--poll-ms",
                "100",
            ])
            .args([
                "--lease-secs",
                "30",
                "--provider-timeout-secs",
                "1",
                "--log-format",
                "json",
            ])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .env("DATABASE_URL", worker_url())
            .env(
                "OPENAI_BASE_URL",
                format!("http://127.0.0.1:{}/v1", fake.port),
            )
            .env(
                "ANTHROPIC_BASE_URL",
                format!("http://127.0.0.1:{}", fake.port),
            )
            .env(&env_name, &planted)
            .env(&compat_env, &compat_key)
            .env(
                "OPENAI_COMPATIBLE_BASE_URL",
                format!("http://127.0.0.1:{}/v1", fake.port),
            )
            .stderr(std::fs::File::create(&log_path).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .expect("start bulkhead worker"),
    );

    // 1. Each provider, plain and streamed, settles to the ledger with the provider's usage.
    let mut jobs = Vec::new();
    for (tenant, model) in [
        (a, "gpt-4o-mini"),
        (b, "claude-haiku-4-5"),
        (c, "gpt-4o-mini"),
        (b, compat_model.as_str()),
    ] {
        for stream in [false, true] {
            let job = complete(&mut conn, tenant, "where is my order?", model, stream).await;
            jobs.push((tenant, job));
        }
    }
    for &(tenant, job) in &jobs {
        assert_eq!(
            wait_for(job, Duration::from_secs(20)).await,
            ("done".into(), 1)
        );
        let (status, output, cost, error) = result(&mut conn, tenant, job).await;
        assert_eq!(status, "done");
        assert!(
            output
                .as_deref()
                .unwrap()
                .starts_with("fake answer: You help"),
            "{output:?}"
        );
        assert_eq!(error, None);
        // The cost is the ledger's, for exactly one row of this job's reservation.
        let ledger: Vec<String> = sqlx::query_scalar(
            "select l.cost_usd::text from bulkhead.ledger l join bulkhead.jobs j
               on j.tenant_id = l.tenant_id and (j.payload ->> 'reservation')::uuid = l.reservation_id
             where j.id = $1",
        )
        .bind(job)
        .fetch_all(&mut su)
        .await
        .unwrap();
        assert_eq!(ledger.len(), 1, "one ledger row per completion");
        assert_eq!(cost.unwrap(), ledger[0]);
    }
    // Each call carried its tenant's own key, in the provider's own header.
    let seen = requests(&fake);
    let auth = |path: &str, header: &str| -> Vec<String> {
        seen.iter()
            .filter(|r| r["path"] == path)
            .filter_map(|r| r["headers"][header].as_str().map(str::to_string))
            .collect()
    };
    let bearer = auth("/v1/chat/completions", "authorization");
    assert_eq!(
        bearer
            .iter()
            .filter(|h| **h == format!("Bearer {planted}"))
            .count(),
        2
    );
    assert_eq!(
        bearer
            .iter()
            .filter(|h| **h == format!("Bearer {vault_key}"))
            .count(),
        2
    );
    assert_eq!(
        auth("/v1/messages", "x-api-key"),
        vec![anthropic_key.clone(); 2]
    );
    // The compatible server got the shared pool's key and max_tokens (not max_completion_tokens).
    let compat_calls: Vec<&Value> = seen
        .iter()
        .filter(|r| r["body"]["model"] == compat_model.as_str())
        .collect();
    assert_eq!(compat_calls.len(), 2);
    for call in compat_calls {
        assert_eq!(
            call["headers"]["authorization"],
            format!("Bearer {compat_key}")
        );
        assert_eq!(call["body"]["max_tokens"], 40);
        assert!(call["body"].get("max_completion_tokens").is_none());
    }
    assert!(seen
        .iter()
        .any(|r| r["body"]["stream_options"]["include_usage"] == true));

    // Another tenant cannot read the result (the same error as for no such job).
    let mut tx = begin_as(&mut conn, b).await.unwrap();
    let foreign = sqlx::query("select * from bulkhead.completion_result($1)")
        .bind(jobs[0].1)
        .fetch_all(&mut *tx)
        .await;
    assert_eq!(sqlstate(&foreign), "P0002");
    drop(tx);

    // Embedding jobs fill chunk embeddings: the provider embeds, the worker ingests and settles.
    sqlx::query("select bulkhead.set_embedding_dims($1, 8)")
        .bind(a)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    let mut tx = begin_as(&mut conn, a).await.unwrap();
    let embed_job: i64 = sqlx::query_scalar(
        "select bulkhead.embed_document('kb-refunds', '[{\"content\": \"Refunds take 5 days.\"}, {\"content\": \"Shipping is free.\", \"metadata\": {\"lang\": \"en\"}}]')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        wait_for(embed_job, Duration::from_secs(20)).await,
        ("done".into(), 1)
    );
    let mut tx = begin_as(&mut conn, a).await.unwrap();
    let embedded: Vec<(String, i32, Option<String>)> = sqlx::query_as(
        "select c.content, vector_dims(c.embedding), c.metadata ->> 'lang' from bulkhead.chunks c
         join bulkhead.documents d on d.tenant_id = c.tenant_id and d.id = c.document_id
         where d.external_id = 'kb-refunds' order by c.ordinal",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let nearest: String = sqlx::query_scalar(
        "select s.content from bulkhead.chunks c, bulkhead.tenant_search(c.embedding, 1) s
         where c.content = 'Shipping is free.'",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        embedded,
        vec![
            ("Refunds take 5 days.".to_string(), 8, None),
            ("Shipping is free.".to_string(), 8, Some("en".to_string()))
        ]
    );
    assert_eq!(
        nearest, "Shipping is free.",
        "the stored embedding is the provider's"
    );
    let embedding_cost: (String, i64) = sqlx::query_as(
        "select model, input_tokens from bulkhead.ledger where tenant_id = $1 and model like 'text-embedding%'",
    )
    .bind(a)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(embedding_cost, ("text-embedding-3-small".to_string(), 9));
    let asked_dims = requests(&fake)
        .iter()
        .filter(|r| r["path"] == "/v1/embeddings")
        .map(|r| r["body"]["dimensions"].clone())
        .collect::<Vec<_>>();
    assert_eq!(asked_dims, vec![serde_json::json!(8)]);

    // An embeddings answer that cannot be used was still paid for: charged at the estimate,
    // nothing ingested, the job failed, the call not made again.
    fake.inject("/v1/embeddings", serde_json::json!([{"malformed": true}]));
    let mut tx = begin_as(&mut conn, a).await.unwrap();
    let broken_job: i64 = sqlx::query_scalar(
        "select bulkhead.embed_document('kb-broken', '[{\"content\": \"Never ingested.\"}]')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        wait_for(broken_job, Duration::from_secs(20)).await,
        ("dead".into(), 1)
    );
    let (charged, reserved, ingested): (String, String, i64) = sqlx::query_as(
        "select l.cost_usd::text, l.reserved_usd::text,
                (select count(*) from bulkhead.documents d where d.tenant_id = $1 and d.external_id = 'kb-broken')
         from bulkhead.ledger l join bulkhead.jobs j
           on j.tenant_id = l.tenant_id and (j.payload ->> 'reservation')::uuid = l.reservation_id
         where j.id = $2",
    )
    .bind(a)
    .bind(broken_job)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(ingested, 0);
    assert_eq!(
        charged.parse::<f64>().unwrap(),
        reserved.parse::<f64>().unwrap()
    );
    assert!(charged.parse::<f64>().unwrap() > 0.0);

    // 2. Faults. A 429 with retry-after waits without using up an attempt.
    let chat = "/v1/chat/completions";
    fake.inject(chat, serde_json::json!([{"status": 429, "retry_after": "1"}, {"status": 429, "retry_after": "1"}]));
    let job = complete(&mut conn, a, "rate limited", "gpt-4o-mini", false).await;
    assert_eq!(
        wait_for(job, Duration::from_secs(20)).await,
        ("done".into(), 1)
    );
    let deferrals: i32 =
        sqlx::query_scalar("select deferrals from bulkhead.job_schedule where job_id = $1")
            .bind(job)
            .fetch_one(&mut su)
            .await
            .unwrap();
    assert_eq!(deferrals, 2);
    // 5xx and a timeout each cost an attempt and back off.
    for fault in [
        serde_json::json!({"status": 503}),
        serde_json::json!({"delay": 3}),
    ] {
        fake.inject(chat, serde_json::json!([fault]));
        let job = complete(&mut conn, a, "flaky", "gpt-4o-mini", false).await;
        assert_eq!(
            wait_for(job, Duration::from_secs(20)).await,
            ("done".into(), 2),
            "after {fault}"
        );
    }
    // An answer that cannot be read came from a call the provider bills: it is charged at the
    // reservation's estimate and not made again.
    fake.inject(chat, serde_json::json!([{"malformed": true}]));
    let job = complete(&mut conn, a, "garbled", "gpt-4o-mini", false).await;
    assert_eq!(
        wait_for(job, Duration::from_secs(20)).await,
        ("dead".into(), 1)
    );
    let (status, _, cost, error) = result(&mut conn, a, job).await;
    assert_eq!(status, "failed");
    assert!(error.unwrap().contains("could not be read"));
    let charged: (String, String) = sqlx::query_as(
        "select l.cost_usd::text, l.reserved_usd::text from bulkhead.ledger l join bulkhead.jobs j
           on j.tenant_id = l.tenant_id and (j.payload ->> 'reservation')::uuid = l.reservation_id
         where j.id = $1",
    )
    .bind(job)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(Some(charged.0.clone()), cost);
    assert_eq!(
        charged.0.parse::<f64>().unwrap(),
        charged.1.parse::<f64>().unwrap(),
        "charged exactly what was reserved"
    );
    // Another 4xx is final: a readable error, the key redacted even where the provider echoed
    // it, and the reservation released.
    fake.inject(
        chat,
        serde_json::json!([{"status": 401, "message": format!("Incorrect API key provided: {planted}")}]),
    );
    let job = complete(&mut conn, a, "bad key", "gpt-4o-mini", false).await;
    assert_eq!(
        wait_for(job, Duration::from_secs(20)).await,
        ("dead".into(), 1)
    );
    let (status, output, cost, error) = result(&mut conn, a, job).await;
    assert_eq!((status.as_str(), output, cost), ("failed", None, None));
    let error = error.unwrap();
    assert!(
        error.contains("HTTP 401") && error.contains("Incorrect API key provided"),
        "{error}"
    );
    assert!(
        error.contains("[redacted]") && !error.contains(&planted),
        "{error}"
    );
    let reserved: String = sqlx::query_scalar(
        "select reserved_usd::float8::text from bulkhead.budget_state where tenant_id = $1",
    )
    .bind(a)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(
        reserved, "0",
        "the dead job's reservation no longer holds budget"
    );
    // A stream cut before usage settles what was streamed, and the job fails with the reason.
    fake.inject(chat, serde_json::json!([{"cut_after": 2}]));
    let job = complete(&mut conn, a, "cut me off", "gpt-4o-mini", true).await;
    assert_eq!(wait_for(job, Duration::from_secs(20)).await.0, "dead");
    let (status, output, cost, error) = result(&mut conn, a, job).await;
    assert_eq!(status, "failed");
    assert_eq!(output.as_deref(), Some("fake answer:"));
    assert!(
        cost.is_some_and(|c| c != "0"),
        "the streamed part is charged"
    );
    assert!(error.unwrap().contains("stream cut short"));
    // At its reservation: a count of deltas could undercount what the provider generated.
    let charged: (String, String) = sqlx::query_as(
        "select l.cost_usd::text, l.reserved_usd::text from bulkhead.ledger l join bulkhead.jobs j
           on j.tenant_id = l.tenant_id and (j.payload ->> 'reservation')::uuid = l.reservation_id
         where j.id = $1",
    )
    .bind(job)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(
        charged.0.parse::<f64>().unwrap(),
        charged.1.parse::<f64>().unwrap(),
        "a cut stream is charged what was reserved"
    );

    // Metrics count the provider errors by class.
    let metrics = scrape(metrics_port);
    for class in ["rate_limited", "server", "timeout", "malformed", "client"] {
        assert!(
            metrics.contains(&format!(
                "bulkhead_provider_errors_total{{provider=\"openai\",class=\"{class}\"}}"
            )),
            "{class} missing from:\n{metrics}"
        );
    }

    // Stop the worker, then grep everything it wrote or touched for the keys.
    terminate(&mut worker.0);
    assert!(worker.0.wait().unwrap().success());
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.contains("job_failed"),
        "the worker logged the failures:\n{logs}"
    );
    let rows: String = sqlx::query_scalar(
        "select concat_ws(' ',
            (select string_agg(j::text, ' ') from bulkhead.jobs j),
            (select string_agg(s::text, ' ') from bulkhead.job_schedule s),
            (select string_agg(l::text, ' ') from bulkhead.ledger l),
            (select string_agg(c::text, ' ') from bulkhead.tenant_credentials c))",
    )
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert!(
        rows.contains("Incorrect API key provided"),
        "the grep reads the job rows"
    );
    for key in [&planted, &anthropic_key, &vault_key, &compat_key] {
        for (place, text) in [("logs", &logs), ("rows", &rows), ("metrics", &metrics)] {
            assert!(
                !text.contains(key.as_str()),
                "a key leaked into the {place}"
            );
        }
    }

    // 3. Reconciliation: the fake providers count what they served, by project and workspace.
    // A key of tenant A used outside Bulkhead, and a project Bulkhead does not know, make drift.
    for (project, prompt) in [
        (proj_a.as_str(), "leaked key"),
        ("proj_rogue", "unknown project"),
    ] {
        let body = serde_json::json!({"model": "gpt-4o-mini", "max_completion_tokens": 5,
                                      "messages": [{"role": "user", "content": prompt}]})
        .to_string();
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", fake.port)).unwrap();
        write!(
            stream,
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer sk-outside\r\nopenai-project: {project}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // The call the worker timed out on is still being answered (and counted) by the fake.
    let settle_start = Instant::now();
    while !fake
        .call("GET", "/_fake/inflight", "")
        .contains("\"inflight\": 0")
    {
        assert!(
            settle_start.elapsed() < Duration::from_secs(10),
            "the fake never finished answering"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Everything happened today; reconciliation compares finished days, so the ledger rows of
    // these tenants and the fake's record both move back one day.
    sqlx::query("update bulkhead.ledger set created_at = created_at - interval '1 day' where tenant_id = any($1)")
        .bind(vec![a, b, c])
        .execute(&mut su)
        .await
        .unwrap();
    fake.call("POST", "/_fake/usage/shift", "{\"seconds\": -86400}");
    let yesterday: String =
        sqlx::query_scalar("select ((now() at time zone 'UTC')::date - 1)::text")
            .fetch_one(&mut su)
            .await
            .unwrap();
    let reconcile = |expect: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .args(["reconcile", "--day", &yesterday])
            .env("DATABASE_URL", worker_url())
            .env(
                "OPENAI_BASE_URL",
                format!("http://127.0.0.1:{}/v1", fake.port),
            )
            .env(
                "ANTHROPIC_BASE_URL",
                format!("http://127.0.0.1:{}", fake.port),
            )
            .env("OPENAI_ADMIN_KEY", "sk-admin-fake")
            .env("ANTHROPIC_ADMIN_KEY", "sk-ant-admin-fake")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(expect), "{stdout}");
    };
    reconcile("credential(s) disagree");
    reconcile("reconciled before");
    let report: Vec<(String, String, Option<Uuid>, Option<i64>)> = sqlx::query_as(
        "select provider_project_id, attribution, dedicated_tenant, request_drift
         from bulkhead.usage_drift_report where usage_date = $1::date order by 1",
    )
    .bind(&yesterday)
    .fetch_all(&mut admin_conn)
    .await
    .unwrap();
    let drift_of = |project: &str| report.iter().find(|r| r.0 == project);
    let rogue = drift_of("proj_rogue").expect("an unknown project is reported");
    assert_eq!((rogue.1.as_str(), rogue.2), ("unknown", None));
    let leaked = drift_of(&proj_a).expect("the leaked key's calls are reported");
    assert_eq!((leaked.1.as_str(), leaked.2), ("tenant", Some(a)));
    // Two calls the provider served that the ledger never settled: the leaked key's, and the
    // one the worker gave up on at its one-second timeout (the provider answered it anyway).
    assert_eq!(leaked.3, Some(2), "{leaked:?}");
    // Tenant C's calls all went through Bulkhead: compared, and in agreement.
    assert!(drift_of(&proj_c).is_none(), "{report:?}");
    assert!(drift_of(&wrkspc_b).is_none(), "{report:?}");
    let c_compared: (i64, i64, i64) = sqlx::query_as(
        "select ledger_requests, provider_requests, ledger_output_tokens from bulkhead.usage_drift
         where usage_date = $1::date and provider_project_id = $2",
    )
    .bind(&yesterday)
    .bind(&proj_c)
    .fetch_one(&mut admin_conn)
    .await
    .unwrap();
    assert_eq!((c_compared.0, c_compared.1), (2, 2));
    // The app cannot read the drift (finance data across tenants).
    let mut tx = begin_as(&mut conn, a).await.unwrap();
    let denied = sqlx::query("select count(*) from bulkhead.usage_drift")
        .fetch_one(&mut *tx)
        .await;
    assert_eq!(sqlstate(&denied), "42501");
    drop(tx);

    // 4. Workers killed with SIGKILL at random points over 1,000 completions: no job is lost and
    // no call is settled twice (a settle commits with its job's outcome, or not at all).
    let k = create_tenant(&mut admin_conn, "cmpl-kill").await;
    for statement in [
        "select bulkhead.publish_prompt($1, 'it_completion', '{\"company\": \"Killjoy\"}')",
        "select bulkhead.activate_prompt($1, 'it_completion', 1)",
        "select bulkhead.set_credential($1, 'openai', 'env:BULKHEAD_IT_KILL_KEY')",
        "select bulkhead.set_budget($1, 1000000, 100000000, 100000000, 1000)",
    ] {
        sqlx::query(statement)
            .bind(k)
            .execute(&mut admin_conn)
            .await
            .unwrap();
    }
    let mut tx = begin_as(&mut conn, k).await.unwrap();
    let queued: i64 = sqlx::query_scalar(
        "select count(bulkhead.complete('it_completion', jsonb_build_object('question', 'q' || n), 'gpt-4o-mini', 20))
         from generate_series(1, 1000) n",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(queued, 1000);
    let kill_worker = || {
        KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_bulkhead"))
                .args(["worker", "--concurrency", "16", "--poll-ms", "50"])
                .args(["--lease-secs", "3", "--provider-timeout-secs", "2"])
                .env("DATABASE_URL", worker_url())
                .env(
                    "OPENAI_BASE_URL",
                    format!("http://127.0.0.1:{}/v1", fake.port),
                )
                .env("BULKHEAD_IT_KILL_KEY", "sk-kill-test")
                .stderr(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut kills = 0;
    for _ in 0..8 {
        let mut victim = kill_worker();
        // 100 to 700 ms, at random: mid-claim, mid-call or mid-settle.
        let wait = 100 + u64::from(Uuid::new_v4().as_bytes()[0]) * 600 / 255;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let status = Command::new("kill")
            .args(["-KILL", &victim.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let _ = victim.0.wait();
        kills += 1;
        if count_done(&mut su, k).await >= 900 {
            break;
        }
    }
    let mut survivor = kill_worker();
    let started = Instant::now();
    while count_done(&mut su, k).await < 1000 && started.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    terminate(&mut survivor.0);
    let _ = survivor.0.wait();
    let (done_jobs, dead, ledger_rows, settled_twice, reservations_open): (i64, i64, i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from bulkhead.job_schedule where job_tenant = $1 and state = 'done'),
                (select count(*) from bulkhead.job_schedule where job_tenant = $1 and state = 'dead'),
                (select count(*) from bulkhead.ledger where tenant_id = $1),
                (select count(*) from (select reservation_id from bulkhead.ledger where tenant_id = $1
                                       group by 1 having count(*) > 1) twice),
                (select count(*) from bulkhead.reservations where tenant_id = $1 and settled_at is null)",
    )
    .bind(k)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert!(kills >= 1);
    assert_eq!(
        (
            done_jobs,
            dead,
            ledger_rows,
            settled_twice,
            reservations_open
        ),
        (1000, 0, 1000, 0, 0),
        "after {kills} SIGKILLs: every job done once, one ledger row each"
    );
    let _ = std::fs::remove_dir_all(&scratch);
}

async fn count_done(su: &mut PgConnection, tenant: Uuid) -> i64 {
    sqlx::query_scalar(
        "select count(*) from bulkhead.job_schedule where job_tenant = $1 and state = 'done'",
    )
    .bind(tenant)
    .fetch_one(su)
    .await
    .unwrap()
}

/// SIGTERM: the worker finishes or gives back its jobs and exits 0.
fn terminate(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("bulkhead-it-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
