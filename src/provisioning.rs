//! Provider-side provisioning: carries out the jobs `sql/provisioning.sql` queues, with the
//! providers' admin keys (OPENAI_ADMIN_KEY, ANTHROPIC_ADMIN_KEY), which never reach the database.
//!
//! - OpenAI (`provision`): the project (looked up by its deterministic name first, created
//!   otherwise), a service account in it whose key OpenAI returns once (stored at once in a file
//!   of mode 0600 or in Supabase Vault; only the reference is recorded), the project's rate limits
//!   from the tenant's budget, then the tenant's credential row. `provider_limits` sets the limits
//!   again after a `set_budget`.
//! - Anthropic (`provision`): the workspace (looked up, else created), its rate limits per model
//!   group and, where the organization is in Anthropic's early-access preview, its spend limit;
//!   its key must come from the Console (keys cannot be created by API), so the credential waits
//!   as `pending_key`.
//!
//! Every fact is recorded (`bulkhead.provisioning_step`) before the next step; a retry after a
//! crash finds at the provider what it did not record, so nothing is created twice. A service
//! account whose key was never stored (a crash between OpenAI's answer and the store) cannot give
//! its key again: it is deleted and a new one made.

use crate::providers::{self, CallError, Secret};
use crate::secrets;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Pages read when looking a name up, at most (100 items each).
const MAX_PAGES: usize = 50;

/// Where the admin APIs are and the keys for them (Debug shows no key: Secret hides it).
#[derive(Clone, Debug)]
pub struct AdminApis {
    pub openai_base: String,
    pub anthropic_base: String,
    pub openai_admin_key: Option<Secret>,
    pub anthropic_admin_key: Option<Secret>,
    /// Where `storage = file` keys go (BULKHEAD_SECRETS_DIR).
    pub secrets_dir: Option<PathBuf>,
}

/// Why a provisioning job did not finish: the text is redacted against every key the process
/// holds, and says which step failed.
#[derive(Debug)]
pub struct ProvisionError {
    pub message: String,
    pub transient: bool,
    pub retry_after: Option<Duration>,
    /// The provider answered 404: what was to be removed is gone already.
    pub not_found: bool,
}

impl ProvisionError {
    fn permanent(message: impl Into<String>) -> Self {
        ProvisionError {
            message: secrets::redact(&message.into()),
            transient: false,
            retry_after: None,
            not_found: false,
        }
    }

    fn from_call(step: &str, err: CallError) -> Self {
        let (message, transient, retry_after) = match err {
            CallError::RateLimited {
                retry_after,
                message,
            } => (message, true, Some(retry_after)),
            CallError::Transient { message, .. } => (message, true, None),
            CallError::Permanent { message, .. } => (message, false, None),
        };
        ProvisionError {
            message: secrets::redact(&format!("{step}: {message}")),
            transient,
            retry_after,
            not_found: false,
        }
    }
}

impl From<sqlx::Error> for ProvisionError {
    fn from(err: sqlx::Error) -> Self {
        // Lock conflicts and lost connections pass; anything else is this job's fault.
        let transient = match &err {
            sqlx::Error::Database(db) => matches!(
                db.code().as_deref(),
                Some("40001" | "40P01" | "55P03" | "57014")
            ),
            _ => true,
        };
        // Another provisioning job of the tenant runs: later, without using up an attempt.
        let retry_after = match &err {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03") => {
                Some(Duration::from_secs(10))
            }
            _ => None,
        };
        ProvisionError {
            message: secrets::redact(&format!("database: {err}")),
            transient,
            retry_after,
            not_found: false,
        }
    }
}

/// A job being carried out: the database calls it needs, in the job's name.
struct Job<'a> {
    pool: &'a PgPool,
    id: i64,
    worker: &'a str,
}

impl Job<'_> {
    /// Records a step (and facts: ids and references only).
    async fn step(
        &self,
        step: &str,
        state: &str,
        detail: &str,
        facts: Value,
    ) -> Result<(), ProvisionError> {
        sqlx::query("select bulkhead.provisioning_step($1, $2, $3, $4, $5, $6)")
            .bind(self.id)
            .bind(self.worker)
            .bind(step)
            .bind(state)
            .bind(crate::database::without_nul(&secrets::redact(detail)))
            .bind(facts)
            .execute(self.pool)
            .await?;
        Ok(())
    }

    /// Records a failed step, then returns the error for the job (retried or dead).
    async fn failed(&self, step: &str, err: ProvisionError) -> ProvisionError {
        let _ = self
            .step(step, "failed", &err.message, json!({}))
            .await
            .map_err(|db| tracing::warn!(job = self.id, error = %db.message, "recording a failed provisioning step"));
        err
    }
}

/// The tenant's limits as they are now (provisioning_job reads them afresh).
async fn current_limits(job: &Job<'_>) -> Result<Value, ProvisionError> {
    let info: Value = sqlx::query_scalar("select bulkhead.provisioning_job($1, $2)")
        .bind(job.id)
        .bind(job.worker)
        .fetch_one(job.pool)
        .await?;
    Ok(info["limits"].clone())
}

/// Runs one `provision` or `provider_limits` job the worker holds; returns the job's result.
pub async fn run(
    pool: &PgPool,
    http: &reqwest::Client,
    apis: &AdminApis,
    job: i64,
    worker: &str,
) -> Result<Value, ProvisionError> {
    let info: Value = sqlx::query_scalar("select bulkhead.provisioning_job($1, $2)")
        .bind(job)
        .bind(worker)
        .fetch_one(pool)
        .await?;
    let provider = info["provider"].as_str().unwrap_or_default().to_string();
    let job = Job {
        pool,
        id: job,
        worker,
    };
    match (provider.as_str(), info["kind"].as_str()) {
        ("openai", Some(kind)) => match openai_for(http, apis) {
            Ok(openai) => openai_job(&job, &openai, apis, &info, kind == "provision").await,
            Err(err) => Err(job.failed("admin key", err).await),
        },
        ("anthropic", Some(kind)) => match anthropic_for(http, apis) {
            Ok(anthropic) => anthropic_job(&job, &anthropic, &info, kind == "provision").await,
            Err(err) => Err(job.failed("admin key", err).await),
        },
        _ => Err(ProvisionError::permanent(format!(
            "no provisioning of kind {:?} for provider {provider:?}",
            info["kind"]
        ))),
    }
}

// ---------------------------------------------------------------------------------- OpenAI

struct OpenAi<'a> {
    http: &'a reqwest::Client,
    /// Up to and with /v1.
    base: &'a str,
    key: &'a Secret,
}

impl OpenAi<'_> {
    async fn call(
        &self,
        step: &str,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, ProvisionError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .query(query)
            .bearer_auth(self.key.expose());
        if let Some(body) = body {
            request = request.json(body);
        }
        send_json(step, "OpenAI", request).await
    }

    /// Every item of a list endpoint (`limit`, `after`, `has_more`, `last_id`).
    async fn list(&self, step: &str, path: &str) -> Result<Vec<Value>, ProvisionError> {
        let mut items = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut query = vec![("limit", "100".to_string())];
            if let Some(after) = &after {
                query.push(("after", after.clone()));
            }
            let page = self
                .call(step, reqwest::Method::GET, path, &query, None)
                .await?;
            let data = page["data"].as_array().cloned().unwrap_or_default();
            let last = data
                .last()
                .and_then(|item| item["id"].as_str())
                .map(str::to_string);
            items.extend(data);
            match (
                page["has_more"].as_bool(),
                page["last_id"].as_str().map(str::to_string).or(last),
            ) {
                (Some(true), Some(next)) => after = Some(next),
                _ => return Ok(items),
            }
        }
        Err(ProvisionError::permanent(format!(
            "{step}: more than {MAX_PAGES} pages at {path}"
        )))
    }
}

async fn send_json(
    step: &str,
    who: &str,
    request: reqwest::RequestBuilder,
) -> Result<Value, ProvisionError> {
    let response = request
        .send()
        .await
        .map_err(|err| ProvisionError::from_call(step, providers::transport_error(&err, None)))?;
    if !response.status().is_success() {
        let not_found = response.status() == reqwest::StatusCode::NOT_FOUND;
        return Err(ProvisionError {
            not_found,
            ..ProvisionError::from_call(step, providers::error_response(who, response, None).await)
        });
    }
    let body = providers::read_capped(response, 4 << 20)
        .await
        .map_err(|err| ProvisionError::from_call(step, providers::transport_error(&err, None)))?;
    serde_json::from_slice(&body).map_err(|_| ProvisionError {
        message: format!("{step}: {who}'s answer is not JSON"),
        transient: true,
        retry_after: None,
        not_found: false,
    })
}

fn text<'a>(value: &'a Value, field: &str) -> Option<&'a str> {
    value[field].as_str().filter(|s| !s.is_empty())
}

/// An id from a provider's answer, which goes into later request paths: plain characters only,
/// so that an answer cannot steer a request elsewhere ("../", "?", "#").
fn provider_id<'a>(value: &'a Value, field: &str, what: &str) -> Result<&'a str, ProvisionError> {
    match text(value, field) {
        Some(id) if is_plain_id(id) => Ok(id),
        Some(_) => Err(ProvisionError::permanent(format!(
            "{what}: the provider's answer has an id with characters no id has"
        ))),
        None => Err(ProvisionError::permanent(format!(
            "{what}: the provider's answer has no id"
        ))),
    }
}

fn is_plain_id(id: &str) -> bool {
    (1..=200).contains(&id.len())
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

async fn openai_job(
    job: &Job<'_>,
    openai: &OpenAi<'_>,
    apis: &AdminApis,
    info: &Value,
    provision: bool,
) -> Result<Value, ProvisionError> {
    let project = match text(info, "project_id") {
        Some(id) => id.to_string(),
        None if provision => {
            let name = text(info, "project_name").unwrap_or_default();
            match openai_project(job.pool, openai, name).await {
                Ok((id, how)) => {
                    job.step(
                        "project",
                        "done",
                        &format!("{id} ({how}, named {name})"),
                        json!({"project_id": id}),
                    )
                    .await?;
                    id
                }
                Err(err) => return Err(job.failed("project", err).await),
            }
        }
        // The provisioning, still on its way, sets the limits itself.
        None => return Ok(json!({"provider": "openai", "limits": "set by the provisioning"})),
    };
    if provision && text(info, "secret_ref").is_none() {
        if let Err(err) = openai_key(job, openai, apis, info, &project).await {
            return Err(job.failed("service account", err).await);
        }
    }
    // The limits as they are now: a set_budget while the steps above ran counts.
    let fresh = current_limits(job).await?;
    let limits = &fresh;
    let applied = match openai_rate_limits(openai, &project, limits).await {
        Ok(applied) => applied,
        Err(err) => return Err(job.failed("rate limits", err).await),
    };
    job.step(
        "rate limits",
        "done",
        &format!(
            "{} model(s): {} requests and {} tokens per minute (the budget's plus {} margin)",
            applied["models"], limits["rpm"], limits["tpm"], limits["margin"]
        ),
        json!({"applied_limits": applied}),
    )
    .await?;
    // The project's hard spend limit (POST creates or replaces it: a retry is harmless).
    let cents = spend_cents(limits);
    if let Err(err) = openai
        .call(
            "spend limit",
            reqwest::Method::POST,
            &format!("/organization/projects/{project}/spend_limit"),
            &[],
            Some(&json!({"threshold_amount": cents, "currency": "USD", "interval": "month"})),
        )
        .await
    {
        return Err(job.failed("spend limit", err).await);
    }
    job.step(
        "spend limit",
        "done",
        &format!("${:.2} a month (the budget's plus margin)", cents as f64 / 100.0),
        json!({"applied_limits": {"models": applied["models"], "rpm": applied["rpm"], "tpm": applied["tpm"], "monthly_spend_cents": cents}}),
    )
    .await?;
    if provision {
        sqlx::query("select bulkhead.provisioned_credential($1, $2)")
            .bind(job.id)
            .bind(job.worker)
            .execute(job.pool)
            .await?;
        job.step(
            "credential",
            "done",
            "the tenant's calls use the project's key",
            json!({}),
        )
        .await?;
        if let Err(err) = tidy_project(job, openai, apis, info, &project).await {
            return Err(job.failed("tidy", err).await);
        }
    }
    Ok(
        json!({"provider": "openai", "project_id": project, "limits": applied, "monthly_spend_cents": cents}),
    )
}

/// The monthly backstop in cents, rounded up (never below the budget), at least a cent.
fn spend_cents(limits: &Value) -> i64 {
    let dollars = limits["monthly_spend_usd"]
        .as_f64()
        .or_else(|| {
            limits["monthly_spend_usd"]
                .as_str()
                .and_then(|s| s.parse().ok())
        })
        .unwrap_or(0.01);
    ((dollars * 100.0).ceil() as i64).max(1)
}

/// The project named `name`, found (not archived) or created: (id, "found" | "created").
async fn openai_project(
    pool: &PgPool,
    openai: &OpenAi<'_>,
    name: &str,
) -> Result<(String, &'static str), ProvisionError> {
    let projects = openai.list("project", "/organization/projects").await?;
    let mut named = Vec::new();
    for project in projects
        .iter()
        .filter(|p| p["name"] == name && p["archived_at"].is_null() && p["status"] != "archived")
    {
        // Only a project recorded for nobody: never one a credential or another tenant names.
        if resource_free(pool, "openai", provider_id(project, "id", "project")?, None).await? {
            named.push(project);
        }
    }
    // A create that timed out may have made one after the retry made another (neither provider
    // takes an idempotency key): the oldest is kept, the others, unused, are archived.
    named.sort_by_key(|p| {
        (
            p["created_at"].as_i64().unwrap_or(i64::MAX),
            p["id"].to_string(),
        )
    });
    if let Some((kept, extra)) = named.split_first() {
        for duplicate in extra {
            let duplicate = provider_id(duplicate, "id", "project")?;
            gone_is_done(
                openai
                    .call(
                        "project",
                        reqwest::Method::POST,
                        &format!("/organization/projects/{duplicate}/archive"),
                        &[],
                        None,
                    )
                    .await,
            )?;
        }
        return Ok((provider_id(kept, "id", "project")?.to_string(), "found"));
    }
    let created = openai
        .call(
            "project",
            reqwest::Method::POST,
            "/organization/projects",
            &[],
            Some(&json!({"name": name})),
        )
        .await?;
    Ok((
        provider_id(&created, "id", "project")?.to_string(),
        "created",
    ))
}

/// The service account of this generation and its key, stored; recorded with its reference.
async fn openai_key(
    job: &Job<'_>,
    openai: &OpenAi<'_>,
    apis: &AdminApis,
    info: &Value,
    project: &str,
) -> Result<(), ProvisionError> {
    let tenant = text(info, "tenant").unwrap_or_default();
    let account_name = format!("bulkhead-{}", info["generation"].as_i64().unwrap_or(1));
    let storage = info["options"]["storage"].as_str().unwrap_or("file");
    let accounts_path = format!("/organization/projects/{project}/service_accounts");
    let accounts = openai.list("service account", &accounts_path).await?;
    if let Some(existing) = accounts
        .iter()
        .find(|a| a["name"] == account_name.as_str())
        .map(|a| provider_id(a, "id", "service account"))
        .transpose()?
    {
        // Made by an attempt that crashed: its key was stored, or it is lost for good.
        if let Some(reference) = stored_key(job.pool, apis, storage, tenant, existing).await? {
            job.step(
                "service account",
                "done",
                &format!("{existing} (found, its key stored before)"),
                json!({"service_account_id": existing, "secret_ref": reference}),
            )
            .await?;
            job.step("key stored", "done", &reference, json!({}))
                .await?;
            return Ok(());
        }
        openai
            .call(
                "service account",
                reqwest::Method::DELETE,
                &format!("{accounts_path}/{existing}"),
                &[],
                None,
            )
            .await?;
    }
    let created = openai
        .call(
            "service account",
            reqwest::Method::POST,
            &accounts_path,
            &[],
            Some(&json!({"name": account_name})),
        )
        .await?;
    let account = provider_id(&created, "id", "service account")?.to_string();
    let key_id = text(&created["api_key"], "id")
        .filter(|id| is_plain_id(id))
        .map(str::to_string);
    // Held as a Secret from here on: registered, so no text this process writes can carry it.
    let key = Secret::new(
        text(&created["api_key"], "value")
            .ok_or_else(|| {
                ProvisionError::permanent("service account: OpenAI's answer has no api_key.value")
            })?
            .to_string(),
    );
    let reference = match store_key(job.pool, apis, storage, tenant, &account, &key).await {
        Ok(reference) => reference,
        Err(err) => {
            // The key cannot be kept: the account goes, or it would be a key nobody holds.
            let _ = openai
                .call(
                    "service account",
                    reqwest::Method::DELETE,
                    &format!("{accounts_path}/{account}"),
                    &[],
                    None,
                )
                .await;
            return Err(err);
        }
    };
    job.step(
        "service account",
        "done",
        &format!("{account} (created)"),
        json!({"service_account_id": account, "key_id": key_id, "secret_ref": reference}),
    )
    .await?;
    job.step("key stored", "done", &reference, json!({}))
        .await?;
    Ok(())
}

/// Whatever an earlier run of this job left (a run whose lease ran out while it went on, or a
/// crash between making an account and recording it) goes once the provisioning is recorded:
/// the project's other accounts and the tenant's other key files. An account or key of a
/// rotation not revoked yet stays: its own revocation removes it after its calls end.
async fn tidy_project(
    job: &Job<'_>,
    openai: &OpenAi<'_>,
    apis: &AdminApis,
    info: &Value,
    project: &str,
) -> Result<(), ProvisionError> {
    let tenant = text(info, "tenant").unwrap_or_default();
    let recorded: Value = sqlx::query_scalar("select bulkhead.provisioning_job($1, $2)")
        .bind(job.id)
        .bind(job.worker)
        .fetch_one(job.pool)
        .await?;
    let keep: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
        "select service_account_id, secret_ref from bulkhead.provider_revocations
         where tenant_ref OPERATOR(pg_catalog.=) $1::pg_catalog.uuid and processed_at is null",
    )
    .bind(tenant)
    .fetch_all(job.pool)
    .await?;
    let kept_account = |id: &str| {
        recorded["service_account_id"].as_str() == Some(id)
            || keep
                .iter()
                .any(|(account, _)| account.as_deref() == Some(id))
    };
    let accounts_path = format!("/organization/projects/{project}/service_accounts");
    let mut removed = 0;
    for account in openai.list("tidy", &accounts_path).await? {
        let id = provider_id(&account, "id", "tidy")?;
        let ours = account["name"]
            .as_str()
            .is_some_and(|name| name.starts_with("bulkhead-"));
        if ours && !kept_account(id) {
            gone_is_done(
                openai
                    .call(
                        "tidy",
                        reqwest::Method::DELETE,
                        &format!("{accounts_path}/{id}"),
                        &[],
                        None,
                    )
                    .await,
            )?;
            removed += 1;
        }
    }
    if let Some(dir) = &apis.secrets_dir {
        let prefix = key_name(tenant, "");
        // By file name: the directory may be spelled otherwise in a reference (another host,
        // a trailing "/."), the file name never is.
        let file_of = |reference: &str| {
            reference
                .strip_prefix("file:")
                .and_then(|path| Path::new(path).file_name().map(|f| f.to_owned()))
        };
        let kept_file = |path: &Path| {
            let name = path.file_name().map(|f| f.to_owned());
            recorded["secret_ref"].as_str().and_then(file_of) == name
                || keep
                    .iter()
                    .any(|(_, r)| r.as_deref().and_then(file_of) == name)
        };
        if let Ok(mut entries) = tokio::fs::read_dir(dir).await {
            while let Ok(Some(entry)) = entries.next_entry().await {
                let file = entry.file_name().to_string_lossy().into_owned();
                if file.starts_with(&prefix)
                    && (file.ends_with(".key") || file.ends_with(".partial"))
                    && !kept_file(&entry.path())
                {
                    let _ = tokio::fs::remove_file(entry.path()).await;
                    removed += 1;
                }
            }
        }
    }
    if removed > 0 {
        job.step(
            "tidy",
            "done",
            &format!("{removed} account(s) or key file(s) left by an earlier run removed"),
            json!({}),
        )
        .await?;
    }
    Ok(())
}

/// The per-minute limits of every model of the project that has them, set to the backstop.
async fn openai_rate_limits(
    openai: &OpenAi<'_>,
    project: &str,
    limits: &Value,
) -> Result<Value, ProvisionError> {
    let rpm = limits["rpm"].as_i64().unwrap_or(1).max(1);
    let tpm = limits["tpm"].as_i64().unwrap_or(1).max(1);
    let path = format!("/organization/projects/{project}/rate_limits");
    let mut models = 0;
    for limit in openai.list("rate limits", &path).await? {
        let id = provider_id(&limit, "id", "rate limits")?;
        let mut body = json!({});
        if !limit["max_requests_per_1_minute"].is_null() {
            body["max_requests_per_1_minute"] = json!(rpm);
        }
        if !limit["max_tokens_per_1_minute"].is_null() {
            body["max_tokens_per_1_minute"] = json!(tpm);
        }
        if body.as_object().is_some_and(|b| b.is_empty()) {
            continue;
        }
        openai
            .call(
                "rate limits",
                reqwest::Method::POST,
                &format!("{path}/{id}"),
                &[],
                Some(&body),
            )
            .await?;
        models += 1;
    }
    Ok(json!({"models": models, "rpm": rpm, "tpm": tpm}))
}

// ------------------------------------------------------------------------------- key storage

/// Where a key of `account` is (or would be) kept: a file name or a Vault secret name, both
/// fixed by the tenant and the account, so that a retry finds what an earlier attempt stored.
fn key_name(tenant: &str, account: &str) -> String {
    format!("bulkhead-{tenant}-openai-{account}")
}

fn key_file(apis: &AdminApis, tenant: &str, account: &str) -> Result<PathBuf, ProvisionError> {
    let dir = apis.secrets_dir.as_ref().ok_or_else(|| {
        ProvisionError::permanent(
            "key storage: the worker has no BULKHEAD_SECRETS_DIR for keys stored in files (or provision with {\"storage\": \"vault\"})",
        )
    })?;
    // Ids from the provider go into a file name: only plain characters.
    if !account
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ProvisionError::permanent(
            "key storage: the service account id has characters a file name must not",
        ));
    }
    Ok(dir.join(format!("{}.key", key_name(tenant, account))))
}

/// The reference of a key stored for `account` before, if any.
async fn stored_key(
    pool: &PgPool,
    apis: &AdminApis,
    storage: &str,
    tenant: &str,
    account: &str,
) -> Result<Option<String>, ProvisionError> {
    if storage == "vault" {
        let id: Option<uuid::Uuid> = sqlx::query_scalar(
            "select s.id from vault.secrets s where s.name OPERATOR(pg_catalog.=) $1",
        )
        .bind(key_name(tenant, account))
        .fetch_optional(pool)
        .await
        .map_err(vault_error)?;
        return Ok(id.map(|id| format!("vault:{id}")));
    }
    let path = key_file(apis, tenant, account)?;
    Ok(tokio::fs::try_exists(&path)
        .await
        .unwrap_or(false)
        .then(|| format!("file:{}", path.display())))
}

/// Stores the key; returns its reference. A file is written under another name with mode 0600
/// and renamed, so that a reader never sees half a key.
async fn store_key(
    pool: &PgPool,
    apis: &AdminApis,
    storage: &str,
    tenant: &str,
    account: &str,
    key: &Secret,
) -> Result<String, ProvisionError> {
    if storage == "vault" {
        let id: uuid::Uuid = sqlx::query_scalar(
            "select vault.create_secret($1, $2, 'Bulkhead: a tenant''s OpenAI project key')",
        )
        .bind(key.expose())
        .bind(key_name(tenant, account))
        .fetch_one(pool)
        .await
        .map_err(vault_error)?;
        return Ok(format!("vault:{id}"));
    }
    let path = key_file(apis, tenant, account)?;
    write_key_file(&path, key)
        .await
        .map_err(|err| ProvisionError {
            message: format!(
                "key storage: cannot write {}: {}",
                path.display(),
                err.kind()
            ),
            transient: true,
            retry_after: None,
            not_found: false,
        })?;
    Ok(format!("file:{}", path.display()))
}

async fn write_key_file(path: &Path, key: &Secret) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = path.to_path_buf();
    let key = key.clone();
    tokio::task::spawn_blocking(move || {
        let partial = path.with_extension("partial");
        let _ = std::fs::remove_file(&partial);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)?;
        file.write_all(key.expose().as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&partial, &path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}

fn vault_error(err: sqlx::Error) -> ProvisionError {
    match err {
        sqlx::Error::Database(db) => ProvisionError::permanent(format!(
            "key storage: Supabase Vault is not usable by the worker ({}): {}",
            db.code().unwrap_or_default(),
            db.message()
        )),
        other => ProvisionError::from(other),
    }
}

// ------------------------------------------------------------------------------- Anthropic

struct Anthropic<'a> {
    http: &'a reqwest::Client,
    /// Without /v1.
    base: &'a str,
    key: &'a Secret,
}

impl Anthropic<'_> {
    async fn call(
        &self,
        step: &str,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, ProvisionError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .query(query)
            .header("x-api-key", self.key.expose())
            .header("anthropic-version", "2023-06-01");
        if let Some(body) = body {
            request = request.json(body);
        }
        send_json(step, "Anthropic", request).await
    }
}

async fn anthropic_job(
    job: &Job<'_>,
    anthropic: &Anthropic<'_>,
    info: &Value,
    provision: bool,
) -> Result<Value, ProvisionError> {
    let name = text(info, "project_name").unwrap_or_default();
    let workspace = match text(info, "project_id") {
        Some(id) => id.to_string(),
        None if !provision => {
            return Ok(json!({"provider": "anthropic", "limits": "set by the provisioning"}))
        }
        None => {
            match anthropic_workspace(anthropic, name, text(info, "tenant").unwrap_or_default())
                .await
            {
                Ok((id, how)) => {
                    job.step(
                        "workspace",
                        "done",
                        &format!("{id} ({how}, named {name})"),
                        json!({"project_id": id}),
                    )
                    .await?;
                    id
                }
                Err(err) => return Err(job.failed("workspace", err).await),
            }
        }
    };
    let fresh = current_limits(job).await?;
    let limits = &fresh;
    match anthropic_rate_limits(anthropic, &workspace, limits).await {
        Ok(groups) => {
            job.step(
                "rate limits",
                "done",
                &format!(
                    "{groups} model group(s): {} requests, {} input and {} output tokens per minute (the budget's plus {} margin; Anthropic applies a change within about an hour)",
                    limits["rpm"], limits["itpm"], limits["otpm"], limits["margin"]
                ),
                json!({"applied_limits": {"groups": groups, "rpm": limits["rpm"], "itpm": limits["itpm"], "otpm": limits["otpm"]}}),
            )
            .await?
        }
        Err(err) => return Err(job.failed("rate limits", err).await),
    }
    // Workspace spend limits are an early-access preview at Anthropic: a refusal (4xx) says the
    // organization is not in it, and the Console is the way.
    let cents = spend_cents(limits);
    let spend = anthropic
        .call(
            "spend limit",
            reqwest::Method::POST,
            "/v1/organizations/spend_limits",
            &[],
            Some(&json!({
                "scope": {"type": "workspace", "workspace_id": workspace},
                "amount": cents.to_string(),
                "period": "monthly"
            })),
        )
        .await;
    match spend {
        Ok(_) => {
            job.step("spend limit", "done", &format!("${:.2} a month", cents as f64 / 100.0), json!({}))
                .await?
        }
        Err(err) if !err.transient => {
            job.step(
                "spend limit",
                "unsupported",
                &format!(
                    "Anthropic refused the workspace spend limit (an early-access API): set ${:.2} a month for {workspace} in the Console ({})",
                    cents as f64 / 100.0,
                    err.message
                ),
                json!({}),
            )
            .await?
        }
        Err(err) => return Err(job.failed("spend limit", err).await),
    }
    if !provision {
        return Ok(
            json!({"provider": "anthropic", "workspace_id": workspace, "monthly_spend_cents": cents}),
        );
    }
    sqlx::query("select bulkhead.provisioned_credential($1, $2)")
        .bind(job.id)
        .bind(job.worker)
        .execute(job.pool)
        .await?;
    job.step(
        "key",
        "pending",
        &format!(
            "Anthropic API keys cannot be created by API: create one in the Console for workspace {workspace} and attach its reference with bulkhead.set_credential"
        ),
        json!({}),
    )
    .await?;
    Ok(json!({"provider": "anthropic", "workspace_id": workspace}))
}

/// The workspace's limits for every model group of the organization: requests, input and
/// output tokens per minute, set to the backstop. Returns how many groups were set.
async fn anthropic_rate_limits(
    anthropic: &Anthropic<'_>,
    workspace: &str,
    limits: &Value,
) -> Result<usize, ProvisionError> {
    let value = |name: &str| limits[name].as_i64().unwrap_or(1).max(1);
    let body = json!({"limits": [
        {"type": "requests_per_minute", "value": value("rpm")},
        {"type": "input_tokens_per_minute", "value": value("itpm")},
        {"type": "output_tokens_per_minute", "value": value("otpm")},
    ]});
    let mut groups = Vec::new();
    let mut page: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut query = vec![("limit", "100".to_string())];
        if let Some(page) = &page {
            query.push(("page", page.clone()));
        }
        let answer = anthropic
            .call(
                "rate limits",
                reqwest::Method::GET,
                "/v1/organizations/rate_limits",
                &query,
                None,
            )
            .await?;
        for entry in answer["data"].as_array().into_iter().flatten() {
            groups.push(provider_id(entry, "id", "rate limits")?.to_string());
        }
        match answer["next_page"].as_str() {
            Some(next) if !next.is_empty() => page = Some(next.to_string()),
            _ => break,
        }
    }
    for group in &groups {
        anthropic
            .call(
                "rate limits",
                reqwest::Method::POST,
                &format!("/v1/organizations/workspaces/{workspace}/rate_limits/{group}"),
                &[],
                Some(&body),
            )
            .await?;
    }
    Ok(groups.len())
}

/// The workspace named `name`, found (not archived) or created: (id, "found" | "created").
async fn anthropic_workspace(
    anthropic: &Anthropic<'_>,
    name: &str,
    tenant: &str,
) -> Result<(String, &'static str), ProvisionError> {
    let mut after: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut query = vec![("limit", "100".to_string())];
        if let Some(after) = &after {
            query.push(("after_id", after.clone()));
        }
        let page = anthropic
            .call(
                "workspace",
                reqwest::Method::GET,
                "/v1/organizations/workspaces",
                &query,
                None,
            )
            .await?;
        let data = page["data"].as_array().cloned().unwrap_or_default();
        if let Some(found) = data
            .iter()
            .find(|w| w["name"] == name && w["archived_at"].is_null())
        {
            return Ok((provider_id(found, "id", "workspace")?.to_string(), "found"));
        }
        match (page["has_more"].as_bool(), page["last_id"].as_str()) {
            (Some(true), Some(last)) => after = Some(last.to_string()),
            _ => break,
        }
    }
    let created = anthropic
        .call(
            "workspace",
            reqwest::Method::POST,
            "/v1/organizations/workspaces",
            &[],
            Some(&json!({"name": name, "tags": {"bulkhead_tenant": tenant}})),
        )
        .await?;
    Ok((
        provider_id(&created, "id", "workspace")?.to_string(),
        "created",
    ))
}

// ------------------------------------------------------------------------------- revocation

/// One revocation due now, as `bulkhead.provider_revocations_due` lists it.
#[derive(sqlx::FromRow, Clone)]
struct Revocation {
    id: i64,
    provider: String,
    project_id: Option<String>,
    service_account_id: Option<String>,
    secret_ref: Option<String>,
    key_revoked: bool,
    project_archived: bool,
    secret_deleted: bool,
    tenant_ref: uuid::Uuid,
    project_name: Option<String>,
    /// A provisioning was in flight at the deletion and its time is up: look up by name.
    recheck: bool,
}

/// Carries out the revocations due (after deletions, and rotations whose old key is no longer
/// in use): the key first, then the stored copy, then the project or workspace. Each part is
/// recorded as it is done; a failed part stays pending for the next sweep. Returns (parts done,
/// parts failed).
pub async fn revoke_due(
    pool: &PgPool,
    http: &reqwest::Client,
    apis: &AdminApis,
) -> Result<(usize, usize), sqlx::Error> {
    let due: Vec<Revocation> = sqlx::query_as(
        "select id, provider, project_id, service_account_id, secret_ref, key_revoked, project_archived,
                secret_deleted, tenant_ref, project_name, recheck
         from bulkhead.provider_revocations_due(50)",
    )
    .fetch_all(pool)
    .await?;
    let (mut done, mut failed) = (0, 0);
    for revocation in &due {
        let mut parts: Vec<(&str, Result<(), ProvisionError>)> = Vec::new();
        if !revocation.key_revoked {
            parts.push(("key", revoke_key(http, apis, revocation).await));
        }
        // The stored copy goes only once the key is revoked: until then it may still be in use.
        let key_gone =
            revocation.key_revoked || parts.iter().any(|(p, r)| *p == "key" && r.is_ok());
        if key_gone && !revocation.secret_deleted {
            parts.push(("secret", delete_secret(pool, apis, revocation).await));
        }
        if key_gone && !revocation.project_archived {
            parts.push(("project", archive_project(http, apis, revocation).await));
        }
        if revocation.recheck && parts.iter().all(|(_, r)| r.is_ok()) {
            parts.push((
                "recheck",
                revoke_by_name(pool, http, apis, revocation).await,
            ));
        }
        for (part, outcome) in parts {
            let error = outcome
                .err()
                .map(|err| crate::database::without_nul(&err.message));
            if error.is_some() {
                failed += 1;
                tracing::warn!(revocation = revocation.id, part, error = ?error, "provider revocation failed");
            } else {
                done += 1;
            }
            // One row the database will not take stops only that row: the others go on.
            if let Err(err) = sqlx::query("select bulkhead.provider_revocation_done($1, $2, $3)")
                .bind(revocation.id)
                .bind(part)
                .bind(error.as_deref())
                .execute(pool)
                .await
            {
                if !matches!(err, sqlx::Error::Database(_)) {
                    return Err(err);
                }
                failed += 1;
                tracing::warn!(revocation = revocation.id, part, error = %err, "recording a provider revocation failed");
            }
        }
    }
    Ok((done, failed))
}

/// After a deletion that met a provisioning in flight: whatever that job made after the rows
/// were gone, found by name (the project or workspace, the key files and Vault secrets named for
/// the tenant), is revoked too.
async fn revoke_by_name(
    pool: &PgPool,
    http: &reqwest::Client,
    apis: &AdminApis,
    revocation: &Revocation,
) -> Result<(), ProvisionError> {
    let Some(name) = &revocation.project_name else {
        return Ok(());
    };
    if revocation.provider == "openai" {
        let openai = openai_for(http, apis)?;
        let projects = openai.list("lookup", "/organization/projects").await?;
        for project in projects
            .iter()
            .filter(|p| p["name"] == name.as_str() && p["status"] != "archived")
        {
            let project = provider_id(project, "id", "lookup")?;
            if !resource_free(pool, "openai", project, Some(revocation.tenant_ref)).await? {
                continue; // someone's: a credential's, or a live tenant's
            }
            let accounts_path = format!("/organization/projects/{project}/service_accounts");
            for account in openai.list("lookup", &accounts_path).await? {
                let account = provider_id(&account, "id", "lookup")?;
                gone_is_done(
                    openai
                        .call(
                            "lookup",
                            reqwest::Method::DELETE,
                            &format!("{accounts_path}/{account}"),
                            &[],
                            None,
                        )
                        .await,
                )?;
            }
            gone_is_done(
                openai
                    .call(
                        "lookup",
                        reqwest::Method::POST,
                        &format!("/organization/projects/{project}/archive"),
                        &[],
                        None,
                    )
                    .await,
            )?;
        }
        // Keys such a job stored: their names begin with the tenant's.
        let prefix = key_name(&revocation.tenant_ref.to_string(), "");
        if let Some(dir) = &apis.secrets_dir {
            let mut entries = match tokio::fs::read_dir(dir).await {
                Ok(entries) => Some(entries),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
                Err(err) => {
                    return Err(ProvisionError::permanent(format!(
                        "lookup: cannot list BULKHEAD_SECRETS_DIR: {}",
                        err.kind()
                    )))
                }
            };
            while let Some(entry) = match entries.as_mut() {
                Some(entries) => entries.next_entry().await.ok().flatten(),
                None => None,
            } {
                let file = entry.file_name().to_string_lossy().into_owned();
                if file.starts_with(&prefix)
                    && (file.ends_with(".key") || file.ends_with(".partial"))
                {
                    let _ = tokio::fs::remove_file(entry.path()).await;
                }
            }
        }
        let vault: Option<String> =
            sqlx::query_scalar("select pg_catalog.to_regclass('vault.secrets')::pg_catalog.text")
                .fetch_one(pool)
                .await?;
        if vault.is_some() {
            sqlx::query(
                "delete from vault.secrets where name OPERATOR(pg_catalog.~~) ($1 OPERATOR(pg_catalog.||) '%')",
            )
            .bind(&prefix)
            .execute(pool)
            .await
            .map_err(vault_error)?;
        }
        return Ok(());
    }
    let anthropic = anthropic_for(http, apis)?;
    let mut after: Option<String> = None;
    let mut found = Vec::new();
    for _ in 0..MAX_PAGES {
        let mut query = vec![("limit", "100".to_string())];
        if let Some(after) = &after {
            query.push(("after_id", after.clone()));
        }
        let page = anthropic
            .call(
                "lookup",
                reqwest::Method::GET,
                "/v1/organizations/workspaces",
                &query,
                None,
            )
            .await?;
        for workspace in page["data"].as_array().into_iter().flatten() {
            if workspace["name"] == name.as_str() && workspace["archived_at"].is_null() {
                let id = provider_id(workspace, "id", "lookup")?;
                if resource_free(pool, "anthropic", id, Some(revocation.tenant_ref)).await? {
                    found.push(id.to_string());
                }
            }
        }
        match (page["has_more"].as_bool(), page["last_id"].as_str()) {
            (Some(true), Some(last)) => after = Some(last.to_string()),
            _ => break,
        }
    }
    for workspace in found {
        let one = Revocation {
            project_id: Some(workspace),
            service_account_id: None,
            secret_ref: None,
            ..revocation.clone()
        };
        revoke_key(http, apis, &one).await?;
        archive_project(http, apis, &one).await?;
    }
    Ok(())
}

/// Whether a provider id may be taken or removed for `tenant` (bulkhead.provider_resource_free):
/// recorded for nobody, or for that tenant and it is gone.
/// `tenant` None: recorded for nobody at all.
async fn resource_free(
    pool: &PgPool,
    provider: &str,
    id: &str,
    tenant: Option<uuid::Uuid>,
) -> Result<bool, ProvisionError> {
    Ok(
        sqlx::query_scalar("select bulkhead.provider_resource_free($1, $2, $3)")
            .bind(provider)
            .bind(id)
            .bind(tenant)
            .fetch_one(pool)
            .await?,
    )
}

/// 404 counts as done: what was to be removed is gone already.
fn gone_is_done(outcome: Result<Value, ProvisionError>) -> Result<(), ProvisionError> {
    match outcome {
        Ok(_) => Ok(()),
        Err(err) if err.not_found => Ok(()),
        Err(err) => Err(err),
    }
}

async fn revoke_key(
    http: &reqwest::Client,
    apis: &AdminApis,
    revocation: &Revocation,
) -> Result<(), ProvisionError> {
    match revocation.provider.as_str() {
        "openai" => {
            let (Some(project), Some(account)) =
                (&revocation.project_id, &revocation.service_account_id)
            else {
                return Ok(()); // no key was ever made
            };
            let openai = openai_for(http, apis)?;
            gone_is_done(
                openai
                    .call(
                        "key revocation",
                        reqwest::Method::DELETE,
                        &format!("/organization/projects/{project}/service_accounts/{account}"),
                        &[],
                        None,
                    )
                    .await,
            )
        }
        _ => {
            // Anthropic: every active key of the workspace set inactive (keys are the Console's
            // to make, and the API's to switch off).
            let Some(workspace) = &revocation.project_id else {
                return Ok(());
            };
            let anthropic = anthropic_for(http, apis)?;
            let mut keys = Vec::new();
            let mut after: Option<String> = None;
            for _ in 0..MAX_PAGES {
                let mut query = vec![
                    ("limit", "100".to_string()),
                    ("workspace_id", workspace.clone()),
                    ("status", "active".to_string()),
                ];
                if let Some(after) = &after {
                    query.push(("after_id", after.clone()));
                }
                let page = anthropic
                    .call(
                        "key revocation",
                        reqwest::Method::GET,
                        "/v1/organizations/api_keys",
                        &query,
                        None,
                    )
                    .await?;
                for key in page["data"].as_array().into_iter().flatten() {
                    // Only the workspace's own keys, whatever the filter answered.
                    let scope = key["scope"]["workspace_id"]
                        .as_str()
                        .or_else(|| key["workspace_id"].as_str());
                    if scope == Some(workspace.as_str()) {
                        keys.push(provider_id(key, "id", "key revocation")?.to_string());
                    }
                }
                match (page["has_more"].as_bool(), page["last_id"].as_str()) {
                    (Some(true), Some(last)) => after = Some(last.to_string()),
                    _ => break,
                }
            }
            for key in keys {
                gone_is_done(
                    anthropic
                        .call(
                            "key revocation",
                            reqwest::Method::POST,
                            &format!("/v1/organizations/api_keys/{key}"),
                            &[],
                            Some(&json!({"status": "inactive"})),
                        )
                        .await,
                )?;
            }
            Ok(())
        }
    }
}

async fn archive_project(
    http: &reqwest::Client,
    apis: &AdminApis,
    revocation: &Revocation,
) -> Result<(), ProvisionError> {
    let Some(project) = &revocation.project_id else {
        return Ok(());
    };
    if revocation.provider == "openai" {
        let openai = openai_for(http, apis)?;
        gone_is_done(
            openai
                .call(
                    "project archive",
                    reqwest::Method::POST,
                    &format!("/organization/projects/{project}/archive"),
                    &[],
                    None,
                )
                .await,
        )
    } else {
        let anthropic = anthropic_for(http, apis)?;
        gone_is_done(
            anthropic
                .call(
                    "workspace archive",
                    reqwest::Method::POST,
                    &format!("/v1/organizations/workspaces/{project}/archive"),
                    &[],
                    None,
                )
                .await,
        )
    }
}

/// Deletes the key the daemon stored: a file in BULKHEAD_SECRETS_DIR (never anywhere else,
/// whatever the row says), or a Supabase Vault secret.
async fn delete_secret(
    pool: &PgPool,
    apis: &AdminApis,
    revocation: &Revocation,
) -> Result<(), ProvisionError> {
    let Some(reference) = &revocation.secret_ref else {
        return Ok(());
    };
    // Only a key the daemon stored for this tenant: its name says so (key_name).
    let prefix = key_name(&revocation.tenant_ref.to_string(), "");
    if let Some(id) = reference.strip_prefix("vault:") {
        let id = uuid::Uuid::parse_str(id)
            .map_err(|_| ProvisionError::permanent("secret deletion: not a vault id"))?;
        // A row whose name is not the tenant's (or has none) is not one the daemon stored.
        let name: Option<Option<String>> = sqlx::query_scalar(
            "select s.name from vault.secrets s where s.id OPERATOR(pg_catalog.=) $1",
        )
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(vault_error)?;
        if name.is_some_and(|name| !name.is_some_and(|name| name.starts_with(&prefix))) {
            return Err(ProvisionError::permanent(
                "secret deletion: the Vault secret is not one the daemon stored for this tenant; left in place",
            ));
        }
        sqlx::query("delete from vault.secrets where id OPERATOR(pg_catalog.=) $1")
            .bind(id)
            .execute(pool)
            .await
            .map_err(vault_error)?;
        return Ok(());
    }
    let Some(path) = reference.strip_prefix("file:").map(Path::new) else {
        return Ok(()); // an env: reference is the operator's, not ours to delete
    };
    let dir = apis.secrets_dir.as_ref().ok_or_else(|| {
        ProvisionError::permanent("secret deletion: the worker has no BULKHEAD_SECRETS_DIR")
    })?;
    let named_for_tenant = path
        .file_name()
        .is_some_and(|file| file.to_string_lossy().starts_with(&prefix));
    if path.parent() != Some(dir.as_path())
        || path.extension().is_none_or(|e| e != "key")
        || !named_for_tenant
    {
        return Err(ProvisionError::permanent(format!(
            "secret deletion: {} is not a key file of BULKHEAD_SECRETS_DIR; left in place",
            path.display()
        )));
    }
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(ProvisionError {
            message: format!(
                "secret deletion: cannot remove {}: {}",
                path.display(),
                err.kind()
            ),
            transient: true,
            retry_after: None,
            not_found: false,
        }),
    }
}

fn openai_for<'a>(
    http: &'a reqwest::Client,
    apis: &'a AdminApis,
) -> Result<OpenAi<'a>, ProvisionError> {
    Ok(OpenAi {
        http,
        base: apis.openai_base.trim_end_matches('/'),
        key: apis
            .openai_admin_key
            .as_ref()
            .ok_or_else(|| {
                ProvisionError::permanent(
                    "the worker has no OPENAI_ADMIN_KEY: OpenAI projects are provisioned and revoked with an admin key",
                )
            })?,
    })
}

fn anthropic_for<'a>(
    http: &'a reqwest::Client,
    apis: &'a AdminApis,
) -> Result<Anthropic<'a>, ProvisionError> {
    Ok(Anthropic {
        http,
        base: apis.anthropic_base.trim_end_matches('/'),
        key: apis
            .anthropic_admin_key
            .as_ref()
            .ok_or_else(|| {
                ProvisionError::permanent(
                    "the worker has no ANTHROPIC_ADMIN_KEY: Anthropic workspaces are provisioned and revoked with an admin key",
                )
            })?,
    })
}
