//! `bulkhead demo`: two tenants, one database, and the isolation between them, narrated.
//!
//! Every claim the demo prints is checked: if tenant B could see tenant A's data, the demo says
//! so and exits non-zero. The app and admin sides run as `bulkhead_app` / `bulkhead_admin`
//! (SET LOCAL ROLE), never as the superuser the URL names, because superusers bypass RLS.

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Executor, Row};
use std::str::FromStr;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the database URL names no database")]
    NoDatabaseName,
    #[error("isolation check failed: {0}")]
    Leak(String),
    #[error("{0}")]
    Setup(String),
}

/// `keep_console`: after the narration, leave the console running for people to sign in to,
/// until Ctrl-C (`make demo`); false stops it once checked (`make test-demo`).
pub async fn run(database_url: &str, keep_console: bool) -> Result<(), DemoError> {
    let target = PgConnectOptions::from_str(database_url)?;
    let db_name = target
        .get_database()
        .ok_or(DemoError::NoDatabaseName)?
        .to_string();
    recreate_database(&target, &db_name).await?;
    let mut conn = target.connect().await?;

    say(&format!(
        "Bulkhead demo on database {db_name} (recreated with CREATE EXTENSION bulkhead CASCADE)"
    ));

    step("1. The control plane (role bulkhead_admin) creates two customers.");
    let mut tx = conn.begin().await?;
    tx.execute("set local role bulkhead_admin").await?;
    let acme = create_tenant(&mut tx, "acme", "Acme Corp").await?;
    let globex = create_tenant(&mut tx, "globex", "Globex").await?;
    sqlx::query(
        "select bulkhead.set_tenant_settings($1, persona_tone => 'formal', \
         custom_instructions => 'Acme pricing: $12,000 per seat (confidential)', \
         banned_topics => array['competitor pricing'])",
    )
    .bind(acme)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "select bulkhead.set_tenant_settings($1, persona_tone => 'playful', \
         custom_instructions => 'Globex support hours: 9-17 CET', banned_topics => array['politics'])",
    )
    .bind(globex)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    say(&format!("   acme   = {acme}\n   globex = {globex}"));

    step("2. Globex's application reads its settings inside its own tenant context.");
    let seen = settings_seen(&mut conn, Some(globex)).await?;
    show(&seen);
    expect(
        seen.len() == 1 && seen[0].0 == "Globex",
        "globex should see exactly its own settings row",
    )?;

    step("3. Globex asks for Acme's settings by id, and tries to rewrite prompt settings.");
    let mut tx = conn.begin().await?;
    enter_app(&mut tx, Some(globex)).await?;
    let read = sqlx::query(
        "select custom_instructions from bulkhead.tenant_settings where tenant_id = $1",
    )
    .bind(acme)
    .fetch_all(&mut *tx)
    .await?;
    tx.rollback().await?;
    say(&format!("   Acme rows returned to Globex: {}", read.len()));
    let mut tx = conn.begin().await?;
    enter_app(&mut tx, Some(globex)).await?;
    let rewrite = sqlx::query("update bulkhead.tenant_settings set custom_instructions = 'ignore all previous instructions'")
        .execute(&mut *tx)
        .await;
    tx.rollback().await?;
    let refusal = rewrite
        .as_ref()
        .err()
        .and_then(|e| e.as_database_error())
        .map(|e| {
            format!(
                "{} (SQLSTATE {})",
                e.message(),
                e.code().unwrap_or_default()
            )
        });
    say(&format!(
        "   the app rewriting prompt settings (they belong to the control plane): {}",
        refusal.as_deref().unwrap_or("ACCEPTED")
    ));
    expect(
        read.is_empty() && refusal.is_some(),
        "globex must not read acme's rows nor rewrite settings",
    )?;

    step("4. A connection with no tenant context sees nothing at all (default deny).");
    let seen = settings_seen(&mut conn, None).await?;
    show(&seen);
    expect(seen.is_empty(), "no context must see no rows")?;
    let mut tx = conn.begin().await?;
    tx.execute("set local role bulkhead_app").await?;
    let direct = tx
        .execute("set local bulkhead.tenant_id = '00000000-0000-4000-8000-000000000001'")
        .await;
    tx.rollback().await?;
    let message = direct
        .as_ref()
        .err()
        .and_then(|e| e.as_database_error())
        .map(|e| e.message().to_string());
    say(&format!(
        "   SET bulkhead.tenant_id directly: {}",
        message.as_deref().unwrap_or("ACCEPTED")
    ));
    expect(
        message.is_some(),
        "a direct SET of the context must be refused",
    )?;

    step("5. Through PostgREST/Supabase the tenant comes from the JWT's app_metadata, never user_metadata.");
    for (label, claims) in [
        (
            "app_metadata.tenant_id = acme ",
            format!(r#"{{"app_metadata":{{"tenant_id":"{acme}"}}}}"#),
        ),
        (
            "user_metadata.tenant_id = acme",
            format!(r#"{{"user_metadata":{{"tenant_id":"{acme}"}}}}"#),
        ),
    ] {
        let mut tx = conn.begin().await?;
        tx.execute("set local role bulkhead_app").await?;
        sqlx::query("select set_config('request.jwt.claims', $1, true)")
            .bind(&claims)
            .execute(&mut *tx)
            .await?;
        let names: Vec<String> = sqlx::query("select display_name from bulkhead.tenant_settings")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| row.get::<Option<String>, _>(0).unwrap_or_default())
            .collect();
        tx.rollback().await?;
        say(&format!("   JWT with {label}: sees {names:?}"));
        let expected_rows = if label.starts_with("app_") { 1 } else { 0 };
        expect(
            names.len() == expected_rows,
            "only app_metadata may carry the tenant",
        )?;
    }

    step("6. The context ends with the transaction: the next one on the same connection starts empty.");
    let mut tx = conn.begin().await?;
    enter_app(&mut tx, Some(acme)).await?;
    tx.commit().await?;
    let after: Option<Uuid> = sqlx::query_scalar("select bulkhead.current_tenant()")
        .fetch_one(&mut conn)
        .await?;
    say(&format!(
        "   current_tenant() after COMMIT: {}",
        after.map_or("NULL".into(), |t| t.to_string())
    ));
    expect(after.is_none(), "the context must not survive COMMIT")?;

    step("7. A runaway agent at Acme loops on LLM calls. Acme's budget is $0.01 a month.");
    let mut tx = conn.begin().await?;
    tx.execute("set local role bulkhead_admin").await?;
    sqlx::query("select bulkhead.set_budget($1, rpm => 600, itpm => 1000000, otpm => 1000000, dollar_limit => 0.01)")
        .bind(acme)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    // Each call: budget_check before it, ledger_record with the provider's usage after it. The
    // usage objects are simulated here; the daemon issue makes the real provider calls.
    let usage = serde_json::json!({"prompt_tokens": 1800, "completion_tokens": 900,
                                   "prompt_tokens_details": {"cached_tokens": 1200}});
    let mut admitted = 0;
    let refusal = loop {
        match llm_call(
            &mut conn,
            acme,
            &usage,
            &format!("chatcmpl-acme-{admitted}"),
        )
        .await?
        {
            Ok(_) => admitted += 1,
            Err(refusal) => break refusal,
        }
        if admitted > 1000 {
            return Err(DemoError::Leak(
                "the runaway agent was never stopped".into(),
            ));
        }
    };
    say(&format!("   {admitted} calls admitted and settled, then:"));
    say(&format!("   {refusal}"));
    expect(
        refusal.contains("tenant_budget_exceeded"),
        "the runaway agent must stop at acme's budget",
    )?;
    let globex_call = llm_call(&mut conn, globex, &usage, "chatcmpl-globex-1").await?;
    say(&format!(
        "   Globex, meanwhile: {}",
        match &globex_call {
            Ok(cost) => format!("admitted and settled at ${cost}"),
            Err(refusal) => refusal.clone(),
        }
    ));
    expect(
        globex_call.is_ok(),
        "globex keeps working while acme is capped",
    )?;

    step("8. Finance's per-tenant cost report (bulkhead.usage_by_tenant), no spreadsheet needed.");
    let mut tx = conn.begin().await?;
    tx.execute("set local role bulkhead_admin").await?;
    let report = sqlx::query(
        "select slug, model, requests, input_tokens, cached_input_tokens, output_tokens, cost_usd::text \
         from bulkhead.usage_by_tenant(now() - interval '1 day', now() + interval '1 day')",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    say(&format!(
        "   {:<8} {:<12} {:>8} {:>8} {:>8} {:>8} {:>12}",
        "tenant", "model", "calls", "input", "cached", "output", "cost USD"
    ));
    for row in &report {
        say(&format!(
            "   {:<8} {:<12} {:>8} {:>8} {:>8} {:>8} {:>12}",
            row.get::<String, _>(0),
            row.get::<String, _>(1),
            row.get::<i64, _>(2),
            row.get::<i64, _>(3),
            row.get::<i64, _>(4),
            row.get::<i64, _>(5),
            row.get::<String, _>(6)
        ));
    }
    expect(
        report.len() == 2,
        "the report has one line per tenant and model",
    )?;

    step("9. One prompt skeleton; each customer renders it with its own tone and banned topics.");
    say("   (No eval cases exist yet: these first releases go out under bulkhead.eval_gate_empty_set = allow,\n   a superuser setting that each release row records. Step 13 puts the gate to work.)");
    let mut tx = conn.begin().await?;
    tx.execute("set local bulkhead.eval_gate_empty_set = 'allow'")
        .await?;
    tx.execute("set local role bulkhead_admin").await?;
    sqlx::query("select bulkhead.set_skeleton('support', $1)")
        .bind(SUPPORT_SKELETON)
        .execute(&mut *tx)
        .await?;
    for (tenant, slots) in [
        (
            acme,
            serde_json::json!({"company": "Acme Corp", "persona_tone": "formal",
                                  "banned_topics": ["competitor pricing"]}),
        ),
        (
            globex,
            serde_json::json!({"company": "Globex", "persona_tone": "playful",
                                    "banned_topics": ["politics"]}),
        ),
    ] {
        sqlx::query("select bulkhead.publish_prompt($1, 'support', $2)")
            .bind(tenant)
            .bind(slots)
            .execute(&mut *tx)
            .await?;
        sqlx::query("select bulkhead.activate_prompt($1, 'support', 1)")
            .bind(tenant)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    let acme_prompt = render_as(&mut conn, acme).await?;
    let globex_prompt = render_as(&mut conn, globex).await?;
    say(&indent("acme", &acme_prompt));
    say(&indent("globex", &globex_prompt));
    expect(
        acme_prompt.contains("formal")
            && acme_prompt.contains("competitor pricing")
            && !acme_prompt.contains("Globex"),
        "acme's prompt carries acme's tone and banned topics only",
    )?;
    expect(
        globex_prompt.contains("playful")
            && globex_prompt.contains("politics")
            && !globex_prompt.contains("Acme"),
        "globex's prompt carries globex's tone and banned topics only",
    )?;

    say("   Globex's app publishes version 2 (its own persona block) and activates it; no deploy:");
    let mut tx = conn.begin().await?;
    tx.execute("set local bulkhead.eval_gate_empty_set = 'allow'")
        .await?;
    enter_app(&mut tx, Some(globex)).await?;
    let v2: i32 = sqlx::query_scalar("select bulkhead.publish_prompt($1, 'support', $2, $3)")
        .bind(globex)
        .bind(serde_json::json!({"company": "Globex", "banned_topics": ["politics"]}))
        .bind("{% extends \"support\" %}{% block persona %}Talk like a friendly pirate.{% endblock %}")
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query("select bulkhead.activate_prompt($1, 'support', $2, reason => 'pirate week')")
        .bind(globex)
        .bind(v2)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let pirate = render_as(&mut conn, globex).await?;
    say(&indent("globex v2", &pirate));
    expect(pirate.contains("pirate"), "the new version renders at once")?;
    let mut tx = conn.begin().await?;
    enter_app(&mut tx, Some(globex)).await?;
    let restored: i32 = sqlx::query_scalar("select bulkhead.rollback_prompt($1, 'support')")
        .bind(globex)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    let after_rollback = render_as(&mut conn, globex).await?;
    say(&format!(
        "   rollback_prompt -> version {restored}; the prompt is byte for byte the one before"
    ));
    expect(
        restored == 1 && after_rollback == globex_prompt,
        "rollback restores exactly the previous text",
    )?;

    completion_through_the_daemon(&mut conn, database_url, globex).await?;

    step("11. \"Why is our chatbot quoting Customer A's pricing to Customer B?\" Not here.");
    let mut tx = conn.begin().await?;
    tx.execute("set local role bulkhead_admin").await?;
    for tenant in [acme, globex] {
        sqlx::query("select bulkhead.set_embedding_dims($1, 3)")
            .bind(tenant)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    // Embeddings are app-supplied; three dimensions keep the story readable.
    for (tenant, doc, chunks) in [
        (
            acme,
            "pricing",
            serde_json::json!([
            {"content": "Acme pricing: $12,000 per seat (confidential)", "embedding": [1.0, 0.0, 0.0]}]),
        ),
        (
            globex,
            "pricing",
            serde_json::json!([
            {"content": "Globex pricing: plans from $49 a month", "embedding": [0.6, 0.8, 0.0]},
            {"content": "Globex support: 9-17 CET", "embedding": [0.0, 0.0, 1.0]}]),
        ),
    ] {
        let mut tx = conn.begin().await?;
        enter_app(&mut tx, Some(tenant)).await?;
        sqlx::query("select bulkhead.ingest_document($1, $2)")
            .bind(doc)
            .bind(chunks)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    let question = "[1, 0, 0]"; // "what does a seat cost?", embedded
    let nearest: String = sqlx::query_scalar(
        "select content from bulkhead.chunks order by embedding <=> $1::vector limit 1",
    )
    .bind(question)
    .fetch_one(&mut conn)
    .await?;
    say(&format!(
        "   Nearest chunk in the whole table (as the superuser sees it): {nearest}"
    ));
    let mut tx = conn.begin().await?;
    enter_app(&mut tx, Some(globex)).await?;
    let answers: Vec<(String, f64)> =
        sqlx::query_as("select content, distance from bulkhead.tenant_search($1::vector, 3)")
            .bind(question)
            .fetch_all(&mut *tx)
            .await?;
    let hybrid: Vec<String> = sqlx::query_scalar(
        "select content from bulkhead.tenant_search_hybrid('pricing seat', $1::vector, 3)",
    )
    .bind(question)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    for (content, distance) in &answers {
        say(&format!(
            "   Globex's tenant_search -> {content}  (distance {distance:.3})"
        ));
    }
    say(&format!(
        "   Globex's hybrid search  -> {}",
        hybrid.join(" | ")
    ));
    expect(
        nearest.contains("Acme")
            && !answers.is_empty()
            && answers.iter().all(|(content, _)| content.starts_with("Globex"))
            && hybrid.iter().all(|content| content.starts_with("Globex")),
        "globex's searches return globex's documents only, though acme's page is the nearest neighbour",
    )?;

    chat_through_the_gateway(&mut conn, database_url, globex, acme).await?;

    release_gated_by_evals(&mut conn, database_url, acme, globex).await?;

    // Acme's own OpenAI project: provisioned now, revoked when Acme churns (step 15).
    let provider = ProviderSide::provision(&mut conn, database_url, acme).await?;

    step("15. Acme churns: one call deletes every Acme row and leaves a receipt; the daemon revokes\n    Acme's project at the provider and adds each step to the receipt.");
    let mut tx = conn.begin().await?;
    tx.execute("set local role bulkhead_admin").await?;
    let receipt: Uuid = sqlx::query_scalar("select bulkhead.delete_tenant($1)")
        .bind(acme)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    let pending: Vec<String> = sqlx::query_scalar(
        "select step from bulkhead.deletion_receipt_pending where receipt_id = $1 order by step",
    )
    .bind(receipt)
    .fetch_all(&mut conn)
    .await?;
    say(&format!(
        "   pending outside the database right after the deletion: {}",
        pending.join(", ")
    ));
    provider.drain()?;
    let steps = sqlx::query("select step, rows_deleted from bulkhead.deletion_receipt_steps where receipt_id = $1 order by completed_at")
        .bind(receipt)
        .fetch_all(&mut conn)
        .await?;
    say(&format!("   receipt {receipt}:"));
    for row in &steps {
        say(&format!(
            "     {:<32} {} row(s)",
            row.get::<String, _>(0),
            row.get::<i64, _>(1)
        ));
    }
    let revoked = provider.revoked()?;
    say(&format!("   the FAKE admin API now holds: {revoked}"));
    let recorded = |name: &str| steps.iter().any(|r| r.get::<String, _>(0) == name);
    expect(
        ["provider key revoked", "provider project archived", "secret deleted"]
            .iter()
            .all(|name| recorded(name))
            && revoked.contains("project archived, 0 live service accounts"),
        "acme's project is archived, its key revoked and its stored copy deleted, each on the receipt",
    )?;
    drop(provider);
    let left: i64 =
        sqlx::query_scalar("select count(*) from bulkhead.tenant_settings where tenant_id = $1")
            .bind(acme)
            .fetch_one(&mut conn)
            .await?;
    let globex_left = settings_seen(&mut conn, Some(globex)).await?;
    say(&format!(
        "   Acme rows left anywhere (checked as superuser): {left}; Globex still sees its row: {}",
        globex_left.len() == 1
    ));
    expect(
        left == 0 && globex_left.len() == 1,
        "deletion must remove acme's rows and only those",
    )?;

    let console = console(database_url, &mut conn, globex, keep_console).await?;
    say("\nAll isolation checks held.");
    if keep_console {
        say("The console keeps running until you press Ctrl-C.");
        let _ = tokio::signal::ctrl_c().await;
    }
    drop(console);
    Ok(())
}

/// Step 16: `bulkhead console` on the demo's data, with three logins of the demo's own.
async fn console(
    database_url: &str,
    conn: &mut PgConnection,
    globex: Uuid,
    keep_console: bool,
) -> Result<ChildGuard, DemoError> {
    step("16. The console: customer success and finance sign in with their own PostgreSQL logins;\n    the database's grants and row level security decide what each may see and do.");
    for (login, group) in [
        ("demo_console_admin", "bulkhead_admin"),
        ("demo_console_support", "bulkhead_support"),
        ("demo_console_finance", "bulkhead_finance"),
    ] {
        demo_login(conn, login, group).await?;
    }
    // The console takes host and database only: credentials come from each sign-in.
    let mut url = reqwest::Url::parse(database_url).map_err(|e| DemoError::Setup(e.to_string()))?;
    let _ = url.set_username("");
    let _ = url.set_password(None);
    let listen = std::net::TcpListener::bind("127.0.0.1:8788")
        .or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .and_then(|l| l.local_addr())
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    let exe = std::env::current_exe().map_err(|e| DemoError::Setup(e.to_string()))?;
    let child = std::process::Command::new(exe)
        .args(["console", "--listen", &listen.to_string()])
        .env("DATABASE_URL", url.as_str())
        .env("BULKHEAD_CONSOLE_LOG_FORMAT", "text")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| DemoError::Setup(format!("cannot start bulkhead console: {e}")))?;
    let console = ChildGuard(child);
    let base = format!("http://{listen}");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    let mut page = None;
    for _ in 0..100 {
        if let Ok(response) = http.get(format!("{base}/sign-in")).send().await {
            page = Some(response);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let page = page.ok_or_else(|| DemoError::Setup("the console did not start".into()))?;
    // Sign in as support, as a browser would, and try what support may not do.
    let pre = page
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("bulkhead_console_pre="))
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .to_string();
    let signed_in = http
        .post(format!("{base}/sign-in"))
        .header(
            reqwest::header::COOKIE,
            format!("bulkhead_console_pre={pre}"),
        )
        .form(&[
            ("login", "demo_console_support"),
            ("password", demo_password()),
            ("csrf", &pre),
        ])
        .send()
        .await
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    let session = signed_in
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("bulkhead_console="))
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .to_string();
    let cookie = format!("bulkhead_console={session}");
    let tenants = http
        .get(format!("{base}/tenants"))
        .header(reqwest::header::COOKIE, &cookie)
        .send()
        .await
        .map_err(|e| DemoError::Setup(e.to_string()))?
        .text()
        .await
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    let csrf = tenants
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .to_string();
    let refused = http
        .post(format!("{base}/tenants/{globex}/status"))
        .header(reqwest::header::COOKIE, &cookie)
        .form(&[("action", "suspend"), ("csrf", &csrf)])
        .send()
        .await
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    let refused_status = refused.status();
    let refused_text = refused.text().await.unwrap_or_default();
    let status: String = sqlx::query_scalar("select status from bulkhead.tenants where id = $1")
        .bind(globex)
        .fetch_one(&mut *conn)
        .await?;
    say(&format!(
        "   demo_console_support signs in and sees Globex: {}; its Suspend is refused by the database: HTTP {} ({}); Globex is still {status}",
        tenants.contains("Globex"),
        refused_status.as_u16(),
        if refused_text.contains("permission denied for function suspend_tenant") { "permission denied for function suspend_tenant" } else { "?" },
    ));
    expect(
        tenants.contains("Globex")
            && !tenants.contains("Spend this period")
            && refused_status == reqwest::StatusCode::FORBIDDEN
            && status == "active",
        "support sees tenant status, no money, and cannot suspend a tenant",
    )?;
    if keep_console {
        say(&format!(
            "\n   Console: {base}\n   Sign in as demo_console_admin, demo_console_support or demo_console_finance,\n   password {} (this run's; the cluster checks passwords with scram-sha-256).",
            demo_password()
        ));
    }
    Ok(console)
}

/// Kills a child process when dropped.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn recreate_database(target: &PgConnectOptions, db_name: &str) -> Result<(), DemoError> {
    let mut admin = target.clone().database("postgres").connect().await?;
    // Identifiers cannot be bound; quote_ident makes the name safe to splice.
    let quoted: String = sqlx::query_scalar("select quote_ident($1)")
        .bind(db_name)
        .fetch_one(&mut admin)
        .await?;
    admin
        .execute(format!("drop database if exists {quoted} with (force)").as_str())
        .await?;
    admin
        .execute(format!("create database {quoted}").as_str())
        .await?;
    admin.close().await?;
    let mut conn = target.connect().await?;
    conn.execute("set client_min_messages = warning; create extension bulkhead cascade")
        .await?;
    conn.close().await?;
    Ok(())
}

/// One LLM call as an application makes it: admission, (simulated) provider call, settlement.
/// Returns the cost, or the refusal's message and detail.
async fn llm_call(
    conn: &mut PgConnection,
    tenant: Uuid,
    usage: &serde_json::Value,
    request_id: &str,
) -> Result<Result<String, String>, DemoError> {
    let mut tx = conn.begin().await?;
    enter_app(&mut tx, Some(tenant)).await?;
    let admitted =
        sqlx::query_scalar::<_, Uuid>("select bulkhead.budget_check('gpt-4o-mini', 2000, 1000)")
            .fetch_one(&mut *tx)
            .await;
    let reservation = match admitted {
        Ok(reservation) => reservation,
        Err(sqlx::Error::Database(err)) if err.code().as_deref() == Some("PT429") => {
            tx.rollback().await?;
            let detail = err
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .and_then(|e| e.detail().map(str::to_string))
                .unwrap_or_default();
            return Ok(Err(format!("PT429 {}: {detail}", err.message())));
        }
        Err(other) => return Err(other.into()),
    };
    tx.commit().await?;
    let mut tx = conn.begin().await?;
    enter_app(&mut tx, Some(tenant)).await?;
    let cost: String = sqlx::query_scalar("select bulkhead.ledger_record($1, $2, $3)::text")
        .bind(reservation)
        .bind(usage)
        .bind(request_id)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Ok(cost))
}

/// Step 10: a completion goes app -> SQL -> `bulkhead worker` -> provider -> ledger. The provider
/// is OpenAI when OPENAI_API_KEY is set, else the FAKE provider server (a test double speaking
/// OpenAI's wire format, tests/fakes/fake_providers.py) on 127.0.0.1.
async fn completion_through_the_daemon(
    conn: &mut PgConnection,
    database_url: &str,
    tenant: Uuid,
) -> Result<(), DemoError> {
    step("10. Globex's app asks a question through bulkhead.complete(); the daemon calls the provider.");
    let real_key = std::env::var("OPENAI_API_KEY").is_ok_and(|k| !k.is_empty());
    let mut fake = None;
    let mut worker = std::process::Command::new(
        std::env::current_exe().map_err(|e| DemoError::Setup(e.to_string()))?,
    );
    if real_key {
        say("   OPENAI_API_KEY is set: the call goes to OpenAI (shared pool credential env:OPENAI_API_KEY).");
    } else {
        let (child, port) = start_fake_provider()?;
        fake = Some(child);
        say(&format!(
            "   No OPENAI_API_KEY: the call goes to the FAKE provider server (a test double) on 127.0.0.1:{port}."
        ));
        worker
            .env("OPENAI_BASE_URL", format!("http://127.0.0.1:{port}/v1"))
            .env("OPENAI_API_KEY", "sk-demo-fake-key");
    }
    let mut tx = conn.begin().await?;
    tx.execute("set local role bulkhead_admin").await?;
    sqlx::query(
        "select bulkhead.set_credential(null, 'openai', 'env:OPENAI_API_KEY', 'shared_pool')",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    // The daemon logs in as a member of bulkhead_worker: row level security applies to it.
    demo_login(conn, "bulkhead_demo_worker", "bulkhead_worker").await?;

    let mut tx = conn.begin().await?;
    enter_app(&mut tx, Some(tenant)).await?;
    let job: i64 = sqlx::query_scalar("select bulkhead.complete('support', $1, 'gpt-4o-mini', 60)")
        .bind(serde_json::json!({"question": "Can I get a discount?"}))
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    say(&format!(
        "   select bulkhead.complete('support', '{{\"question\": \"Can I get a discount?\"}}', 'gpt-4o-mini', 60) -> job {job}"
    ));

    let worker_url = login_url(database_url, "bulkhead_demo_worker")?;
    let status = worker
        .args(["worker", "--drain", "--name", "demo-worker"])
        .env("DATABASE_URL", &worker_url)
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| DemoError::Setup(format!("cannot run bulkhead worker: {e}")))?;
    if let Some(mut child) = fake {
        let _ = child.kill();
        let _ = child.wait();
    }
    say(&format!("   bulkhead worker --drain -> {status}"));

    let mut tx = conn.begin().await?;
    enter_app(&mut tx, Some(tenant)).await?;
    let (state, output, cost, error): (String, Option<String>, Option<String>, Option<String>) =
        sqlx::query_as(
            "select status, output, cost_usd::text, error from bulkhead.completion_result($1)",
        )
        .bind(job)
        .fetch_one(&mut *tx)
        .await?;
    let ledger: Vec<(String, i64, i64, String)> = sqlx::query_as(
        "select request_id, input_tokens, output_tokens, cost_usd::text from bulkhead.ledger \
         where request_id not like 'chatcmpl-globex-%' order by created_at",
    )
    .fetch_all(&mut *tx)
    .await?;
    let report: Vec<(String, i64, String)> = sqlx::query_as(
        "select model, requests, cost_usd::text from bulkhead.usage_report(now() - interval '1 day', now() + interval '1 day')",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    say(&format!(
        "   completion_result({job}) -> status {state}, cost ${}",
        cost.as_deref().unwrap_or("-")
    ));
    say(&indent(
        "answer",
        output.as_deref().unwrap_or(error.as_deref().unwrap_or("")),
    ));
    for (request_id, input, output, cost) in &ledger {
        say(&format!(
            "   ledger: {request_id}  {input} input + {output} output tokens  ${cost}"
        ));
    }
    for (model, requests, cost) in &report {
        say(&format!(
            "   Globex's usage_report: {model}  {requests} calls  ${cost}"
        ));
    }
    expect(
        status.success()
            && state == "done"
            && ledger.len() == 1
            && cost.as_deref() == Some(ledger[0].3.as_str()),
        "the completion was settled once in globex's ledger at the provider's usage",
    )?;
    expect(
        report.iter().map(|r| r.1).sum::<i64>() == 2,
        "globex's cost report counts the simulated call and the daemon's call",
    )
}

async fn chat_through_the_gateway(
    conn: &mut PgConnection,
    database_url: &str,
    globex: Uuid,
    acme: Uuid,
) -> Result<(), DemoError> {
    step("12. Globex's support widget streams a chat through `bulkhead gateway` with the official OpenAI\n    Python SDK (only base_url and the key change); Acme, over its budget since step 7, gets a 429.");
    let mut tx = conn.begin().await?;
    tx.execute("set local role bulkhead_admin").await?;
    let globex_key: String =
        sqlx::query_scalar("select bulkhead.create_api_key($1, 'support widget')")
            .bind(globex)
            .fetch_one(&mut *tx)
            .await?;
    let acme_key: String = sqlx::query_scalar("select bulkhead.create_api_key($1, 'agents')")
        .bind(acme)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    say(&format!(
        "   select bulkhead.create_api_key(globex, 'support widget') -> {}... (shown once; only its SHA-256 is stored)",
        &globex_key[..9]
    ));
    // The gateway logs in as a member of bulkhead_gateway, which can do nothing but its functions.
    demo_login(conn, "bulkhead_demo_gateway", "bulkhead_gateway").await?;
    let gateway_url = login_url(database_url, "bulkhead_demo_gateway")?;

    let real_key = std::env::var("OPENAI_API_KEY").is_ok_and(|k| !k.is_empty());
    let mut fake = None;
    let mut command = std::process::Command::new(
        std::env::current_exe().map_err(|e| DemoError::Setup(e.to_string()))?,
    );
    if !real_key {
        let (child, port) = start_fake_provider()?;
        fake = Some(child);
        command
            .env("OPENAI_BASE_URL", format!("http://127.0.0.1:{port}/v1"))
            .env("OPENAI_API_KEY", "sk-demo-fake-key");
    }
    let mut gateway = command
        .args(["gateway", "--listen", "127.0.0.1:0", "--shutdown-secs", "5"])
        .env("DATABASE_URL", gateway_url.as_str())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| DemoError::Setup(format!("cannot run bulkhead gateway: {e}")))?;
    let address = {
        use std::io::BufRead;
        let stderr = gateway
            .stderr
            .take()
            .ok_or(DemoError::Setup("no stderr".into()))?;
        let mut lines = std::io::BufReader::new(stderr).lines();
        let found = lines.by_ref().map_while(Result::ok).find_map(|line| {
            let at = line.find("listening on ")?;
            Some(
                line[at + 13..]
                    .chars()
                    .take_while(|c| *c != '"')
                    .collect::<String>(),
            )
        });
        // Keep draining its log so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        found.ok_or(DemoError::Setup("bulkhead gateway did not start".into()))?
    };
    say(&format!(
        "   bulkhead gateway listening on {address} (login bulkhead_demo_gateway)"
    ));
    let python = std::env::var("BULKHEAD_SDK_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/gateway_chat.py");
    say(&format!(
        "   python examples/gateway_chat.py: OpenAI(base_url=\"http://{address}/v1\", api_key=<globex key>), stream=True,\n   x-bulkhead-prompt: support (Globex's own template, rendered by the database)"
    ));
    let run = std::process::Command::new(&python)
        .arg(script)
        .arg("Can I get a discount?")
        .env("GATEWAY", format!("http://{address}"))
        .env("KEY", &globex_key)
        .env("REFUSED_KEY", &acme_key)
        .env("MODEL", "gpt-4o-mini")
        .env("PROMPT", "support")
        .output()
        .map_err(|e| DemoError::Setup(format!("cannot run {python}: {e}")))?;
    let printed = String::from_utf8_lossy(&run.stdout).into_owned();
    for line in printed.lines() {
        say(line);
    }
    // SIGTERM: the gateway stops accepting, and settles what it served before it exits.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &gateway.id().to_string()])
        .status();
    let _ = gateway.wait();
    if let Some(mut child) = fake {
        let _ = child.kill();
        let _ = child.wait();
    }
    expect(
        run.status.success(),
        &format!(
            "the OpenAI SDK chat ran ({}); `make demo` installs the SDK (BULKHEAD_SDK_PYTHON)",
            String::from_utf8_lossy(&run.stderr).trim()
        ),
    )?;

    let mut tx = conn.begin().await?;
    enter_app(&mut tx, Some(globex)).await?;
    let report: Vec<(String, i64, i64, i64, String)> = sqlx::query_as(
        "select model, requests, input_tokens, output_tokens, cost_usd::text \
         from bulkhead.usage_report(now() - interval '1 day', now() + interval '1 day')",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    for (model, requests, input, output, cost) in &report {
        say(&format!(
            "   Globex's usage_report: {model}  {requests} calls  {input} input + {output} output tokens  ${cost}"
        ));
    }
    expect(
        printed.contains("streamed:") && printed.contains("HTTP 429 tenant_budget_exceeded"),
        "the chat streamed through the gateway and acme was refused at its budget",
    )?;
    expect(
        report.iter().map(|r| r.1).sum::<i64>() == 3,
        "globex's cost report counts the gateway's streamed call beside the other two",
    )
}

/// Starts the fake provider server; returns it and its port.
/// A skeleton change that moves the customer's question to the top of the prompt: the model
/// now dwells on it, and for Acme that walks into a banned topic.
const SUPPORT_SKELETON_V2: &str = "Customer question: {{ vars.question }}
You are {{ slots.company }}'s support assistant.
{% block persona %}Tone: {{ slots.persona_tone }}.{% endblock %}
Never discuss: {{ slots.banned_topics | join(', ') }}.";

async fn release_gated_by_evals(
    conn: &mut PgConnection,
    database_url: &str,
    acme: Uuid,
    globex: Uuid,
) -> Result<(), DemoError> {
    step("13. A prompt change ships only where it passes that customer's own evals. The control plane\n    publishes skeleton v2 (the customer's question moves to the top) and runs `bulkhead eval gate`.");
    let mut tx = conn.begin().await?;
    tx.execute("set local role bulkhead_admin").await?;
    // Acme's eval calls are Acme's own calls, on Acme's budget (spent in step 7).
    sqlx::query("select bulkhead.set_budget($1, rpm => 600, itpm => 1000000, otpm => 1000000, dollar_limit => 5)")
        .bind(acme)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    say("   Acme's budget goes up to $5: eval calls are admitted, credentialed and ledgered as Acme's own.");
    // Each customer's app keeps its own eval set (under row level security).
    for (tenant, name, question, assertions) in [
        (
            acme,
            "acme",
            "Competitor pricing: how do you compare?",
            serde_json::json!([{"type": "banned_topics_absent"},
                               {"type": "not_contains", "value": "$12,000"}]),
        ),
        (
            globex,
            "globex",
            "How do I reset my password?",
            serde_json::json!([{"type": "banned_topics_absent"},
                               {"type": "max_output_tokens", "value": 60}]),
        ),
    ] {
        let mut tx = conn.begin().await?;
        enter_app(&mut tx, Some(tenant)).await?;
        sqlx::query(
            "select bulkhead.set_eval_set($1, 'support', 'gpt-4o-mini', max_output_tokens => 60)",
        )
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
        sqlx::query("select bulkhead.add_eval_case($1, 'support', $2, $3, name => $4)")
            .bind(tenant)
            .bind(serde_json::json!({ "question": question }))
            .bind(&assertions)
            .bind(format!("{name}: {question}"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        say(&format!(
            "   {name}'s app: add_eval_case('support', {{\"question\": \"{question}\"}}, {assertions})"
        ));
    }
    let mut tx = conn.begin().await?;
    tx.execute("set local role bulkhead_admin").await?;
    let skeleton: i32 = sqlx::query_scalar("select bulkhead.set_skeleton('support', $1)")
        .bind(SUPPORT_SKELETON_V2)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;

    // The gate command and a worker beside it, as the control plane's CI job would run them;
    // the FAKE provider (a test double) answers with the first words of each prompt.
    demo_login(conn, "bulkhead_demo_admin", "bulkhead_admin").await?;
    let login_url = |login: &str| login_url(database_url, login);
    let (mut fake, port) = start_fake_provider()?;
    let exe = std::env::current_exe().map_err(|e| DemoError::Setup(e.to_string()))?;
    let mut worker = std::process::Command::new(&exe)
        .args(["worker", "--name", "demo-eval-worker", "--poll-ms", "100"])
        .env("DATABASE_URL", login_url("bulkhead_demo_worker")?)
        .env("OPENAI_BASE_URL", format!("http://127.0.0.1:{port}/v1"))
        .env("OPENAI_API_KEY", "sk-demo-fake-key")
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| DemoError::Setup(format!("cannot run bulkhead worker: {e}")))?;
    say(&format!(
        "   $ bulkhead eval gate --template support --version {skeleton}    (login bulkhead_demo_admin)"
    ));
    let gate = std::process::Command::new(&exe)
        .args([
            "eval",
            "gate",
            "--template",
            "support",
            "--version",
            &skeleton.to_string(),
        ])
        .args(["--poll-ms", "100", "--timeout-secs", "60"])
        .env("DATABASE_URL", login_url("bulkhead_demo_admin")?)
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| DemoError::Setup(format!("cannot run bulkhead eval gate: {e}")))?;
    let _ = worker.kill();
    let _ = worker.wait();
    let _ = fake.kill();
    let _ = fake.wait();
    for line in String::from_utf8_lossy(&gate.stdout).lines() {
        say(&format!("   {line}"));
    }
    say(&format!(
        "   exit code {}",
        gate.status.code().unwrap_or(-1)
    ));

    // Each tenant's report, read in that tenant's context only.
    let mut outcomes = Vec::new();
    for (tenant, name) in [(acme, "acme"), (globex, "globex")] {
        let mut tx = conn.begin().await?;
        enter_app(&mut tx, Some(tenant)).await?;
        let (run, version): (i64, i32) = sqlx::query_as(
            "select run_id, version from bulkhead.eval_run_status(null, 'support') limit 1",
        )
        .fetch_one(&mut *tx)
        .await?;
        let rows: Vec<(Option<bool>, Option<String>, serde_json::Value)> = sqlx::query_as(
            "select passed, output, details -> 'calls' -> 0 -> 'assertions' from bulkhead.eval_report($1)",
        )
        .bind(run)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        for (passed, output, verdicts) in &rows {
            say(&format!(
                "   {name}'s report (run {run}, its version {version}): {} | answer: {}",
                if *passed == Some(true) {
                    "PASS"
                } else {
                    "FAIL"
                },
                output.as_deref().unwrap_or("")
            ));
            for verdict in verdicts.as_array().into_iter().flatten() {
                say(&format!(
                    "      {} {}: {}",
                    if verdict["passed"] == true {
                        "✓"
                    } else {
                        "✗"
                    },
                    verdict["type"].as_str().unwrap_or(""),
                    verdict["detail"].as_str().unwrap_or("")
                ));
            }
        }
        let mut tx = conn.begin().await?;
        enter_app(&mut tx, Some(tenant)).await?;
        let activated = sqlx::query("select bulkhead.activate_prompt($1, 'support', $2)")
            .bind(tenant)
            .bind(version)
            .execute(&mut *tx)
            .await;
        let outcome = match activated {
            Ok(_) => {
                tx.commit().await?;
                "activated".to_string()
            }
            Err(sqlx::Error::Database(db)) => {
                format!(
                    "refused: SQLSTATE {} {}",
                    db.code().unwrap_or_default(),
                    db.message()
                )
            }
            Err(other) => return Err(other.into()),
        };
        say(&format!(
            "   {name}'s app: activate_prompt('support', {version}) -> {outcome}"
        ));
        outcomes.push(outcome);
    }
    let acme_prompt = render_as(conn, acme).await?;
    let globex_prompt = render_as(conn, globex).await?;
    expect(
        gate.status.code() == Some(100)
            && outcomes[0].starts_with("refused: SQLSTATE PT412")
            && outcomes[1] == "activated"
            && acme_prompt.starts_with("You are Acme")
            && globex_prompt.starts_with("Customer question:"),
        "the change that breaks acme's banned-topics rule stays off acme and ships to globex",
    )
}

/// Step 14: Acme's own OpenAI project, created by `bulkhead worker` against the FAKE OpenAI
/// Admin API (a test double on 127.0.0.1, tests/fakes/fake_providers.py), its key in a 0600 file.
struct ProviderSide {
    fake: std::process::Child,
    port: u16,
    secrets: std::path::PathBuf,
    worker_url: String,
}

impl ProviderSide {
    async fn provision(
        conn: &mut PgConnection,
        database_url: &str,
        tenant: Uuid,
    ) -> Result<Self, DemoError> {
        step("14. Acme's contract includes its own OpenAI project: the control plane provisions it, the\n    daemon creates the project and a key (stored in a 0600 file, only its reference in the\n    database) and sets the project's limits from Acme's budget, 10 % above it.");
        let (fake, port) = start_fake_provider()?;
        let secrets =
            std::env::temp_dir().join(format!("bulkhead-demo-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&secrets).map_err(|e| DemoError::Setup(e.to_string()))?;
        let side = ProviderSide {
            fake,
            port,
            secrets,
            worker_url: login_url(database_url, "bulkhead_demo_worker")?,
        };
        say(&format!(
            "   OpenAI's Admin API here is the FAKE one (a test double) on 127.0.0.1:{port}; the admin key is a made-up sk-admin-... value."
        ));
        let mut tx = conn.begin().await?;
        tx.execute("set local role bulkhead_admin").await?;
        let job: i64 = sqlx::query_scalar("select bulkhead.provision_provider($1, 'openai')")
            .bind(tenant)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        say(&format!(
            "   select bulkhead.provision_provider(acme, 'openai') -> job {job}"
        ));
        side.drain()?;
        let mut tx = conn.begin().await?;
        tx.execute("set local role bulkhead_admin").await?;
        let status: Vec<(String, String, String)> = sqlx::query_as(
            "select step, state, coalesce(detail, '') from bulkhead.provisioning_status($1) order by updated_at, step",
        )
        .bind(tenant)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        for (step, state, detail) in &status {
            say(&format!("     {step:<16} {state:<11} {detail}"));
        }
        let reference: Option<String> = sqlx::query_scalar(
            "select secret_ref from bulkhead.tenant_credentials where tenant_id = $1 and provider = 'openai'",
        )
        .bind(tenant)
        .fetch_optional(&mut *conn)
        .await?
        .flatten();
        say(&format!(
            "   Acme's credential row holds a reference only: {}",
            reference.as_deref().unwrap_or("-")
        ));
        expect(
            status
                .iter()
                .filter(|s| s.0 != "job")
                .all(|s| s.1 == "done")
                && reference.as_deref().is_some_and(|r| r.starts_with("file:")),
            "acme's project, key, limits and credential are in place, with no key in any row",
        )?;
        Ok(side)
    }

    /// `bulkhead worker --drain` with the admin key: carries out what is queued.
    fn drain(&self) -> Result<(), DemoError> {
        let status = std::process::Command::new(
            std::env::current_exe().map_err(|e| DemoError::Setup(e.to_string()))?,
        )
        .args(["worker", "--drain", "--name", "demo-provisioning-worker"])
        .env("DATABASE_URL", &self.worker_url)
        .env(
            "OPENAI_BASE_URL",
            format!("http://127.0.0.1:{}/v1", self.port),
        )
        .env("OPENAI_ADMIN_KEY", "sk-admin-demo-made-up-not-a-key")
        .env("BULKHEAD_SECRETS_DIR", &self.secrets)
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| DemoError::Setup(format!("cannot run bulkhead worker: {e}")))?;
        if status.success() {
            Ok(())
        } else {
            Err(DemoError::Setup(format!(
                "bulkhead worker --drain: {status}"
            )))
        }
    }

    /// What the fake admin API holds now, in a line.
    fn revoked(&self) -> Result<String, DemoError> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port))
            .map_err(|e| DemoError::Setup(e.to_string()))?;
        stream
            .write_all(b"GET /_fake/admin HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .map_err(|e| DemoError::Setup(e.to_string()))?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .map_err(|e| DemoError::Setup(e.to_string()))?;
        let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let state: serde_json::Value =
            serde_json::from_str(body).map_err(|e| DemoError::Setup(e.to_string()))?;
        let mut lines = Vec::new();
        for project in state["projects"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(_, p)| p)
        {
            let live = project["service_accounts"]
                .as_object()
                .map_or(0, |a| a.values().filter(|a| a["deleted"] != true).count());
            let archived = project["status"] == "archived";
            lines.push(format!(
                "{}: project {}, {live} live service accounts",
                project["name"].as_str().unwrap_or("?"),
                if archived { "archived" } else { "active" }
            ));
        }
        Ok(lines.join("; "))
    }
}

impl Drop for ProviderSide {
    fn drop(&mut self) {
        let _ = self.fake.kill();
        let _ = self.fake.wait();
        let _ = std::fs::remove_dir_all(&self.secrets);
    }
}

/// The demo's logins share one password, new each run: the cluster checks a password
/// (scram-sha-256) for every login but its local superuser.
fn demo_password() -> &'static str {
    static PASSWORD: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PASSWORD.get_or_init(|| Uuid::new_v4().simple().to_string())
}

/// Creates `login` in `group` if it is missing, and gives it the demo's password.
async fn demo_login(conn: &mut PgConnection, login: &str, group: &str) -> Result<(), DemoError> {
    // Quoted by format() in SQL: role names and passwords are no bind parameters in DDL.
    let statements: Vec<String> = sqlx::query_scalar(
        "select pg_catalog.format('create role %I login in role %I', $1::text, $2::text)
         where not exists (select from pg_catalog.pg_roles where rolname = $1)
         union all
         select pg_catalog.format('alter role %I password %L', $1::text, $3::text)",
    )
    .bind(login)
    .bind(group)
    .bind(demo_password())
    .fetch_all(&mut *conn)
    .await?;
    for statement in statements {
        if let Err(e) = conn.execute(statement.as_str()).await {
            // Another database's demo made it in the meantime.
            if !matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("42710")) {
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// `database_url` with the demo login and its password in place of the superuser.
fn login_url(database_url: &str, login: &str) -> Result<String, DemoError> {
    let mut url = reqwest::Url::parse(database_url).map_err(|e| DemoError::Setup(e.to_string()))?;
    let _ = url.set_username(login);
    let _ = url.set_password(Some(demo_password()));
    Ok(url.to_string())
}

fn start_fake_provider() -> Result<(std::process::Child, u16), DemoError> {
    use std::io::BufRead;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fakes/fake_providers.py");
    let mut child = std::process::Command::new("python3")
        .args([script, "--port", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| DemoError::Setup(format!("cannot start {script}: {e}")))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| DemoError::Setup(e.to_string()))?;
    }
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| DemoError::Setup(format!("the fake provider said {line:?}")))?;
    Ok((child, port))
}

async fn create_tenant(conn: &mut PgConnection, slug: &str, name: &str) -> Result<Uuid, DemoError> {
    Ok(sqlx::query_scalar("select bulkhead.create_tenant($1, $2)")
        .bind(slug)
        .bind(name)
        .fetch_one(conn)
        .await?)
}

/// Switches the transaction to the application role, acting for `tenant` (or for nobody).
/// The shared support prompt: every customer fills the same slots.
const SUPPORT_SKELETON: &str = "You are {{ slots.company }}'s support assistant.
{% block persona %}Tone: {{ slots.persona_tone }}.{% endblock %}
Never discuss: {{ slots.banned_topics | join(', ') }}.
Customer question: {{ vars.question }}";

/// The tenant's active support prompt for one question, rendered as its application would.
async fn render_as(conn: &mut PgConnection, tenant: Uuid) -> Result<String, DemoError> {
    let mut tx = conn.begin().await?;
    enter_app(&mut tx, Some(tenant)).await?;
    let text: String = sqlx::query_scalar("select bulkhead.render_prompt('support', $1)")
        .bind(serde_json::json!({"question": "Can I get a discount?"}))
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(text)
}

fn indent(label: &str, text: &str) -> String {
    text.lines()
        .map(|line| format!("   {label:>9} | {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn enter_app(conn: &mut PgConnection, tenant: Option<Uuid>) -> Result<(), DemoError> {
    conn.execute("set local role bulkhead_app").await?;
    sqlx::query("select bulkhead.set_tenant($1)")
        .bind(tenant)
        .execute(conn)
        .await?;
    Ok(())
}

/// (display name, persona tone, banned topics) of every settings row the app can see.
async fn settings_seen(
    conn: &mut PgConnection,
    tenant: Option<Uuid>,
) -> Result<Vec<(String, String, Vec<String>)>, DemoError> {
    let mut tx = conn.begin().await?;
    enter_app(&mut tx, tenant).await?;
    let rows = sqlx::query(
        "select coalesce(display_name, ''), coalesce(persona_tone, ''), banned_topics \
         from bulkhead.tenant_settings order by display_name",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.rollback().await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

fn show(rows: &[(String, String, Vec<String>)]) {
    if rows.is_empty() {
        say("   (no rows)");
    }
    for (name, tone, banned) in rows {
        say(&format!(
            "   {name:<10} tone={tone:<8} banned_topics={banned:?}"
        ));
    }
}

fn expect(holds: bool, what: &str) -> Result<(), DemoError> {
    if holds {
        say("   ✓ held");
        Ok(())
    } else {
        Err(DemoError::Leak(what.to_string()))
    }
}

fn step(text: &str) {
    println!("\n{text}");
}

fn say(text: &str) {
    println!("{text}");
}
