//! `bulkhead`: the companion program of the Bulkhead PostgreSQL extension.
//!
//! The extension owns all state and decisions; this program carries out side effects and shows
//! the system at work: `bulkhead worker` drains the job queue, `bulkhead demo` narrates.

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use std::time::Duration;

mod console;
mod credentials;
mod database;
mod demo;
mod eval;
mod gateway;
mod http;
mod logging;
mod metrics;
mod pinecone;
mod providers;
mod provisioning;
mod reconcile;
mod report;
mod secrets;
mod vacuum;
mod worker;

#[derive(Parser)]
#[command(
    name = "bulkhead",
    version,
    about = "Companion program of the Bulkhead PostgreSQL extension"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drains the job queue (bulkhead.jobs). Many workers may run at once. Stops on SIGTERM or
    /// SIGINT after finishing, or giving back, the jobs in flight.
    Worker {
        /// URL of a role in bulkhead_worker.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Run even if the role is SUPERUSER or BYPASSRLS (row level security would not apply
        /// to the worker's sessions); refused otherwise.
        #[arg(long, env = "BULKHEAD_ALLOW_PRIVILEGED_ROLE")]
        allow_privileged_role: bool,
        /// Name recorded on the jobs this worker leases; unique per process (default:
        /// worker-<pid>-<random>, so replicas whose pid is 1 still differ).
        #[arg(long, env = "BULKHEAD_WORKER_NAME")]
        name: Option<String>,
        /// Jobs run at once.
        #[arg(long, env = "BULKHEAD_WORKER_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
        concurrency: u16,
        /// Milliseconds between polls when no NOTIFY arrives.
        #[arg(long, env = "BULKHEAD_WORKER_POLL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
        poll_ms: u64,
        /// Seconds a claimed job stays leased; keep it longer than any provider timeout.
        #[arg(long, env = "BULKHEAD_WORKER_LEASE_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86400))]
        lease_secs: u64,
        /// Seconds jobs in flight may take to finish after SIGTERM before they are given back.
        #[arg(long, env = "BULKHEAD_WORKER_SHUTDOWN_SECS", default_value_t = 30)]
        shutdown_secs: u64,
        /// Serve Prometheus metrics at http://<addr>/metrics (e.g. 127.0.0.1:9187).
        #[arg(long, env = "BULKHEAD_WORKER_METRICS_ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
        /// Log format: text, or json (one object per line, on stderr).
        #[arg(long, env = "BULKHEAD_WORKER_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
        /// Process until no job is runnable and none is in flight, then exit 0 (for scripts
        /// and tests). Jobs waiting for a retry later are left queued.
        #[arg(long)]
        drain: bool,
        /// OpenAI's base URL, as the OpenAI SDKs take it.
        #[arg(
            long,
            env = "OPENAI_BASE_URL",
            default_value = "https://api.openai.com/v1"
        )]
        openai_base_url: String,
        /// Anthropic's base URL, as the Anthropic SDKs take it (without /v1).
        #[arg(
            long,
            env = "ANTHROPIC_BASE_URL",
            default_value = "https://api.anthropic.com"
        )]
        anthropic_base_url: String,
        /// Base URL (with /v1) of the OpenAI-compatible server (vLLM, Ollama, llama.cpp) that
        /// the openai_compatible provider names.
        #[arg(long, env = "OPENAI_COMPATIBLE_BASE_URL")]
        openai_compatible_base_url: Option<String>,
        /// Seconds one provider call may take; must be shorter than the lease.
        #[arg(long, env = "BULKHEAD_PROVIDER_TIMEOUT_SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
        provider_timeout_secs: u64,
        /// Host of the Pinecone index to mirror chunks into (each tenant in its own namespace).
        /// Needs PINECONE_API_KEY in the environment (never a flag: it would show in ps).
        #[arg(long, env = "PINECONE_INDEX_HOST")]
        pinecone_index_host: Option<String>,
        /// Directory where provisioned OpenAI project keys are written (mode 0600), for
        /// provision_provider(..., '{"storage": "file"}'); the credential names the file.
        #[arg(long, env = "BULKHEAD_SECRETS_DIR")]
        secrets_dir: Option<std::path::PathBuf>,
    },
    /// OpenAI- and Anthropic-compatible HTTP endpoints (/v1/chat/completions, /v1/embeddings,
    /// /v1/messages, /v1/models, /healthz) where every call is authenticated by a per-tenant API
    /// key or a verified JWT, admitted by the database, relayed and settled in the ledger.
    /// Stops on SIGTERM or SIGINT, letting streams finish up to --shutdown-secs.
    Gateway {
        /// URL of a login in bulkhead_gateway.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Run even if the role is SUPERUSER or BYPASSRLS; refused otherwise.
        #[arg(long, env = "BULKHEAD_ALLOW_PRIVILEGED_ROLE")]
        allow_privileged_role: bool,
        /// Address to listen on.
        #[arg(
            long,
            env = "BULKHEAD_GATEWAY_LISTEN",
            default_value = "127.0.0.1:8787"
        )]
        listen: std::net::SocketAddr,
        /// OpenAI's base URL, as the OpenAI SDKs take it.
        #[arg(
            long,
            env = "OPENAI_BASE_URL",
            default_value = "https://api.openai.com/v1"
        )]
        openai_base_url: String,
        /// Anthropic's base URL, as the Anthropic SDKs take it (without /v1).
        #[arg(
            long,
            env = "ANTHROPIC_BASE_URL",
            default_value = "https://api.anthropic.com"
        )]
        anthropic_base_url: String,
        /// Base URL (with /v1) of the OpenAI-compatible server the openai_compatible provider names.
        #[arg(long, env = "OPENAI_COMPATIBLE_BASE_URL")]
        openai_compatible_base_url: Option<String>,
        /// Seconds a provider may stay silent (before its answer, or between stream events).
        #[arg(long, env = "BULKHEAD_PROVIDER_TIMEOUT_SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
        provider_timeout_secs: u64,
        /// HS256 secret of the JWTs to accept (e.g. Supabase's JWT secret), 32 bytes or more.
        #[arg(long, env = "BULKHEAD_JWT_SECRET", hide_env_values = true)]
        jwt_secret: Option<String>,
        /// JWKS file of the RS256/ES256 keys whose JWTs to accept.
        #[arg(long, env = "BULKHEAD_JWKS_FILE")]
        jwks_file: Option<std::path::PathBuf>,
        /// The audience JWTs must name (aud); unchecked when unset.
        #[arg(long, env = "BULKHEAD_JWT_AUDIENCE")]
        jwt_audience: Option<String>,
        /// The issuer JWTs must name (iss); unchecked when unset.
        #[arg(long, env = "BULKHEAD_JWT_ISSUER")]
        jwt_issuer: Option<String>,
        /// Longest lifetime (exp - iat, in seconds) a JWT may have; iat is then required.
        #[arg(long, env = "BULKHEAD_JWT_MAX_LIFETIME_SECS")]
        jwt_max_lifetime_secs: Option<u64>,
        /// Dot path of the tenant id in a JWT (default: the database's bulkhead.jwt_tenant_claim).
        #[arg(long, env = "BULKHEAD_JWT_TENANT_CLAIM")]
        jwt_tenant_claim: Option<String>,
        /// Largest request body accepted (413 beyond).
        #[arg(long, env = "BULKHEAD_GATEWAY_MAX_BODY_BYTES", default_value_t = 8 << 20)]
        max_body_bytes: usize,
        /// Seconds a call's reservation lasts; an unsettled call is charged at its hold after it.
        #[arg(long, env = "BULKHEAD_GATEWAY_LEASE_SECS", default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..=86400))]
        lease_secs: u64,
        /// Write every call's reservation as a row before the call (synchronous commit), so that
        /// a crash of the database server forgets no hold. Off: with bulkhead.memory_admission
        /// holds stay in the server's memory (a restart forgets the open ones; their calls are
        /// then settled as orphans), which is what makes admission cheap.
        #[arg(long, env = "BULKHEAD_GATEWAY_DURABLE_HOLDS")]
        durable_holds: bool,
        /// A client's own system message when the request names a tenant prompt: append (after
        /// the tenant prompt) or refuse (400).
        #[arg(long, env = "BULKHEAD_GATEWAY_CLIENT_SYSTEM_PROMPT", default_value = "append", value_parser = ["append", "refuse"])]
        client_system_prompt: String,
        /// Seconds streams may take to finish after SIGTERM before they are cut.
        #[arg(long, env = "BULKHEAD_GATEWAY_SHUTDOWN_SECS", default_value_t = 30)]
        shutdown_secs: u64,
        /// Database connections: up to this many for admission, and a quarter as many (at
        /// least 2) for the rest (key checks, settles, releases, sweeps).
        #[arg(long, env = "BULKHEAD_GATEWAY_POOL_SIZE", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1000))]
        pool_size: u32,
        /// Log format: json (one object per line, on stderr) or text.
        #[arg(long, env = "BULKHEAD_GATEWAY_LOG_FORMAT", default_value = "json", value_parser = ["text", "json"])]
        log_format: String,
        /// Connections open at once; more are closed as they arrive.
        #[arg(long, env = "BULKHEAD_GATEWAY_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        max_connections: u32,
        /// Seconds a client has to send a request's headers (also how long an idle keep-alive
        /// connection stays open).
        #[arg(long, env = "BULKHEAD_GATEWAY_HEADER_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
        header_timeout_secs: u64,
        /// A bearer token GET /metrics requires (unset: /metrics is open to anyone who can reach
        /// the gateway; it holds aggregate counts, no tenant ids, but set it when clients are not
        /// trusted to see the platform's traffic).
        #[arg(long, env = "BULKHEAD_GATEWAY_METRICS_TOKEN", hide_env_values = true)]
        metrics_token: Option<String>,
    },
    /// Compares one finished UTC day of provider usage (OpenAI's organization usage API by
    /// project, Anthropic's usage report by workspace) with the ledger and records the drift
    /// (bulkhead.usage_drift_report). Needs OPENAI_ADMIN_KEY and/or ANTHROPIC_ADMIN_KEY in the
    /// environment. `bulkhead worker` does this daily on its own when they are set.
    Reconcile {
        /// URL of a role in bulkhead_worker.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// The UTC day, YYYY-MM-DD (default: yesterday).
        #[arg(long)]
        day: Option<String>,
        #[arg(
            long,
            env = "OPENAI_BASE_URL",
            default_value = "https://api.openai.com/v1"
        )]
        openai_base_url: String,
        #[arg(
            long,
            env = "ANTHROPIC_BASE_URL",
            default_value = "https://api.anthropic.com"
        )]
        anthropic_base_url: String,
    },
    /// The physical end of a tenant deletion: VACUUM (ANALYZE) on every table the deletion
    /// receipt lists, each then proven on the receipt (bulkhead.record_vacuum). Run it as the
    /// owner of Bulkhead's tables (the role that created the extension).
    VacuumDeleted {
        /// URL of the tables' owner (or a superuser): only they may VACUUM.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// The receipt bulkhead.delete_tenant returned.
        #[arg(long)]
        receipt: uuid::Uuid,
    },
    /// Per-tenant evals and the release gate: start or join the runs of a prompt version and
    /// wait for their verdicts (`gate`), read one tenant's report (`report`), import cases
    /// (`add-cases`). A `bulkhead worker` must be running: it makes the calls.
    Eval {
        #[command(subcommand)]
        action: EvalAction,
    },
    /// The web console for customer success and finance. People sign in with their own
    /// PostgreSQL logins (members of bulkhead_admin, bulkhead_support or bulkhead_finance); every
    /// page runs as that login, so grants and row level security decide what each may see and do.
    Console {
        /// Host and database to connect to (a user or password in it is ignored: those come
        /// from each sign-in).
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        #[arg(
            long,
            env = "BULKHEAD_CONSOLE_LISTEN",
            default_value = "127.0.0.1:8788"
        )]
        listen: std::net::SocketAddr,
        /// Host header values the console answers (e.g. console.example.com behind a proxy);
        /// others get 421, which stops DNS rebinding. Default, on a loopback address: that
        /// address and localhost, with the port.
        #[arg(
            long = "allowed-host",
            env = "BULKHEAD_CONSOLE_ALLOWED_HOSTS",
            value_delimiter = ','
        )]
        allowed_hosts: Vec<String>,
        /// Mark the session cookie Secure (serve the console behind TLS, then set this).
        #[arg(long, env = "BULKHEAD_CONSOLE_SECURE_COOKIES")]
        secure_cookies: bool,
        /// Minutes a session lasts without a request.
        #[arg(long, env = "BULKHEAD_CONSOLE_IDLE_MINUTES", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=1440))]
        idle_minutes: u64,
        /// Hours a session lasts at most.
        #[arg(long, env = "BULKHEAD_CONSOLE_SESSION_HOURS", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=168))]
        session_hours: u64,
        /// Failed sign-ins allowed per login within 15 minutes (per client address: ten times as many).
        #[arg(long, env = "BULKHEAD_CONSOLE_SIGN_IN_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
        sign_in_failures: u32,
        /// Seconds a client has to send a request's headers (an idle connection is closed then).
        #[arg(long, env = "BULKHEAD_CONSOLE_HEADER_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
        header_timeout_secs: u64,
        #[arg(long, env = "BULKHEAD_CONSOLE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
    },
    /// Every tenant's settled LLM cost for a billing month, per provider and model
    /// (bulkhead.usage_by_tenant), on stdout: the console's Finance export.
    Report {
        /// URL of a login in bulkhead_finance or bulkhead_admin.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// The billing month, YYYY-MM (in bulkhead.billing_time_zone).
        #[arg(long)]
        period: report::Period,
        #[arg(long, default_value = "csv", value_parser = ["csv", "json"])]
        format: String,
    },
    /// Narrated walk-through of tenant isolation on a fresh database (recreated at every run).
    Demo {
        /// Superuser URL of the database to (re)create for the demo.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Stop once every check held, instead of leaving the console running for you to sign
        /// in to (for tests and scripts).
        #[arg(long)]
        exit: bool,
    },
}

#[derive(Subcommand)]
enum EvalAction {
    /// Runs a version through every affected tenant's eval set and waits for the verdicts.
    /// Without --tenant (as bulkhead_admin), --version is a skeleton version: every tenant whose
    /// active prompt uses the template is run on its own version over that skeleton. With
    /// --tenant, --version is that tenant's version. Exits 0 when every tenant passed, 100 when
    /// one did not, 1 on an error (promptfoo's convention).
    Gate {
        /// URL of a login in bulkhead_admin (or bulkhead_app, with --tenant).
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        #[arg(long)]
        template: String,
        #[arg(long)]
        version: i32,
        /// One tenant only (its id).
        #[arg(long)]
        tenant: Option<uuid::Uuid>,
        /// Give up (exit 1) if the runs have not finished by then.
        #[arg(long, default_value_t = 1800)]
        timeout_secs: u64,
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(50..))]
        poll_ms: u64,
        /// Also write the per-tenant results as JSON.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        /// Also write JUnit XML (one test case per tenant) for CI systems.
        #[arg(long)]
        junit: Option<std::path::PathBuf>,
    },
    /// Prints one tenant's eval report (that tenant's cases only, read in its context).
    /// Exits 0 if the run passed, 100 if not.
    Report {
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        #[arg(long)]
        tenant: uuid::Uuid,
        /// The newest run of this template (default: the newest run).
        #[arg(long)]
        template: Option<String>,
        /// This run.
        #[arg(long)]
        run: Option<i64>,
    },
    /// Imports eval cases from a JSON Lines file, one case per line: {"template", "vars",
    /// "assertions", "request", "weight", "name"}; all lines or none. Cases are stored as
    /// given: scrubbing personal data from them is the caller's job.
    AddCases {
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        #[arg(long)]
        tenant: uuid::Uuid,
        /// For lines that name no template.
        #[arg(long)]
        template: Option<String>,
        file: std::path::PathBuf,
    },
}

/// Admin keys come from the environment only (a flag would show in ps).
fn usage_apis(openai_base: String, anthropic_base: String) -> reconcile::UsageApis {
    let key = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|k| !k.is_empty())
            .map(providers::Secret::new)
    };
    reconcile::UsageApis {
        openai_base,
        anthropic_base,
        openai_admin_key: key("OPENAI_ADMIN_KEY"),
        anthropic_admin_key: key("ANTHROPIC_ADMIN_KEY"),
    }
}

async fn reconcile_once(
    database_url: &str,
    day: Option<String>,
    apis: reconcile::UsageApis,
) -> Result<(), String> {
    if !apis.configured() {
        return Err(
            "set OPENAI_ADMIN_KEY and/or ANTHROPIC_ADMIN_KEY to read the providers' usage".into(),
        );
    }
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(database::connect_options(database_url).map_err(|e| e.to_string())?)
        .await
        .map_err(|e| e.to_string())?;
    database::refuse_privileged_role(&pool, false)
        .await
        .map_err(|e| e.to_string())?;
    let day = match day {
        Some(day) => day,
        None => sqlx::query_scalar("select ((pg_catalog.now() at time zone 'UTC')::pg_catalog.date OPERATOR(pg_catalog.-) 1)::pg_catalog.text")
            .fetch_one(&pool)
            .await
            .map_err(|e| e.to_string())?,
    };
    let outcome = reconcile::reconcile_day(&pool, &apis, &day)
        .await
        .map_err(|e| e.to_string())?;
    for (provider, disagreeing) in outcome {
        match disagreeing {
            Some(n) => println!(
                "{provider} {day}: {n} credential(s) disagree (bulkhead.usage_drift_report)"
            ),
            None => println!("{provider} {day}: reconciled before; nothing recorded"),
        }
    }
    Ok(())
}

/// `bulkhead eval ...`: 0 passed (or done), 100 a tenant did not pass, 1 an error.
async fn run_eval(action: EvalAction) -> ExitCode {
    let outcome = match action {
        EvalAction::Gate {
            database_url,
            template,
            version,
            tenant,
            timeout_secs,
            poll_ms,
            json,
            junit,
        } => {
            eval::gate(eval::GateArgs {
                database_url,
                template,
                version,
                tenant,
                timeout: Duration::from_secs(timeout_secs),
                poll: Duration::from_millis(poll_ms),
                json,
                junit,
            })
            .await
        }
        EvalAction::Report {
            database_url,
            tenant,
            template,
            run,
        } => eval::report(&database_url, tenant, template.as_deref(), run).await,
        EvalAction::AddCases {
            database_url,
            tenant,
            template,
            file,
        } => eval::add_cases(&database_url, tenant, template.as_deref(), &file)
            .await
            .map(|n| {
                println!("added {n} eval cases for tenant {tenant}");
                true
            }),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(eval::EXIT_FAILED),
        Err(err) => {
            eprintln!("bulkhead eval: {err}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Demo { database_url, exit } => demo::run(&database_url, !exit)
            .await
            .map_err(|e| e.to_string()),
        Command::Eval { action } => return run_eval(action).await,
        Command::Report {
            database_url,
            period,
            format,
        } => report::run(&database_url, period, &format)
            .await
            .map_err(|e| e.to_string()),
        Command::Console {
            database_url,
            listen,
            allowed_hosts,
            secure_cookies,
            idle_minutes,
            session_hours,
            sign_in_failures,
            header_timeout_secs,
            log_format,
        } => {
            logging::init(log_format == "json");
            console::run(console::Config {
                database_url,
                listen,
                allowed_hosts,
                secure_cookies,
                idle: Duration::from_secs(idle_minutes * 60),
                lifetime: Duration::from_secs(session_hours * 3600),
                sign_in_failures,
                header_timeout: Duration::from_secs(header_timeout_secs),
            })
            .await
            .map_err(|e| e.to_string())
        }
        Command::VacuumDeleted {
            database_url,
            receipt,
        } => vacuum::vacuum_deleted(&database_url, receipt)
            .await
            .map(|proven| {
                for (table, dead) in proven {
                    println!("{table}: vacuumed and analyzed; {dead} dead row versions left");
                }
            })
            .map_err(|e| e.to_string()),
        Command::Reconcile {
            database_url,
            day,
            openai_base_url,
            anthropic_base_url,
        } => {
            reconcile_once(
                &database_url,
                day,
                usage_apis(openai_base_url, anthropic_base_url),
            )
            .await
        }
        Command::Gateway {
            database_url,
            allow_privileged_role,
            listen,
            openai_base_url,
            anthropic_base_url,
            openai_compatible_base_url,
            provider_timeout_secs,
            jwt_secret,
            jwks_file,
            jwt_audience,
            jwt_issuer,
            jwt_max_lifetime_secs,
            jwt_tenant_claim,
            max_body_bytes,
            lease_secs,
            durable_holds,
            client_system_prompt,
            shutdown_secs,
            pool_size,
            log_format,
            max_connections,
            header_timeout_secs,
            metrics_token,
        } => {
            logging::init(log_format == "json");
            gateway::run(gateway::Config {
                database_url,
                allow_privileged_role,
                listen,
                endpoints: providers::Endpoints {
                    openai: openai_base_url,
                    anthropic: anthropic_base_url,
                    openai_compatible: openai_compatible_base_url,
                },
                provider_idle_timeout: Duration::from_secs(provider_timeout_secs),
                jwt_secret,
                jwks_file,
                jwt_audience,
                jwt_issuer,
                jwt_max_lifetime_secs,
                jwt_tenant_claim,
                max_body_bytes,
                lease: Duration::from_secs(lease_secs),
                durable_holds,
                client_system: if client_system_prompt == "refuse" {
                    gateway::ClientSystemPrompt::Refuse
                } else {
                    gateway::ClientSystemPrompt::Append
                },
                shutdown_grace: Duration::from_secs(shutdown_secs),
                pool_size,
                max_connections: max_connections as usize,
                header_timeout: Duration::from_secs(header_timeout_secs),
                metrics_token,
            })
            .await
        }
        Command::Worker {
            database_url,
            allow_privileged_role,
            name,
            concurrency,
            poll_ms,
            lease_secs,
            shutdown_secs,
            metrics_addr,
            log_format,
            drain,
            openai_base_url,
            anthropic_base_url,
            openai_compatible_base_url,
            provider_timeout_secs,
            pinecone_index_host,
            secrets_dir,
        } => {
            logging::init(log_format == "json");
            // A key file's reference is an absolute path: a relative directory would name
            // another file for every process that reads it.
            // ... and it must make references the database takes (checked before any key is
            // made, not after: a refused reference would leave a key recorded nowhere).
            if secrets_dir.as_ref().is_some_and(|dir| {
                let text = dir.to_string_lossy();
                !dir.is_absolute()
                    || text.len() > 800
                    || text.contains("sk-")
                    || text.split('/').any(|part| part == "..")
                    || text.chars().any(char::is_control)
            }) {
                eprintln!("bulkhead: BULKHEAD_SECRETS_DIR (--secrets-dir) must be an absolute path of at most 800 characters, without '..', control characters or \"sk-\"");
                return ExitCode::from(2);
            }
            worker::run(worker::Config {
                database_url,
                allow_privileged_role,
                name: name.unwrap_or_else(|| {
                    let suffix = uuid::Uuid::new_v4().simple().to_string();
                    format!("worker-{}-{}", std::process::id(), &suffix[..8])
                }),
                concurrency: usize::from(concurrency),
                poll_interval: Duration::from_millis(poll_ms),
                lease: Duration::from_secs(lease_secs),
                shutdown_grace: Duration::from_secs(shutdown_secs),
                metrics_addr,
                drain,
                endpoints: providers::Endpoints {
                    openai: openai_base_url.clone(),
                    anthropic: anthropic_base_url.clone(),
                    openai_compatible: openai_compatible_base_url,
                },
                provider_timeout: Duration::from_secs(provider_timeout_secs),
                usage_apis: usage_apis(openai_base_url, anthropic_base_url),
                secrets_dir,
                pinecone: match (pinecone_index_host, std::env::var("PINECONE_API_KEY").ok()) {
                    (Some(host), Some(key)) if !key.is_empty() => {
                        Some((host, providers::Secret::new(key)))
                    }
                    (Some(_), _) => {
                        eprintln!(
                        "bulkhead: --pinecone-index-host needs PINECONE_API_KEY in the environment"
                    );
                        return ExitCode::from(2);
                    }
                    (None, _) => None,
                },
            })
            .await
            .map_err(|e| e.to_string())
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bulkhead: {err}");
            ExitCode::FAILURE
        }
    }
}
