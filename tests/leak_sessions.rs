//! Leak attacks that span transactions, connections and a real PgBouncer in transaction mode.
//! Each attack is paired with the same move against an unguarded setting, which does leak:
//! that is what makes these tests able to fail.

mod common;

use common::{admin, app, create_tenant, sqlstate};
use sqlx::{ConnectOptions, Connection, Executor, Row};
use std::process::{Child, Command};
use std::time::Duration;
use uuid::Uuid;

async fn current_tenant(conn: &mut sqlx::PgConnection) -> Option<Uuid> {
    sqlx::query_scalar("select bulkhead.current_tenant()")
        .fetch_one(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn context_does_not_survive_commit_or_rollback() {
    let tenant = create_tenant(&mut admin().await, "commit").await;
    let mut conn = app().await;

    let mut tx = common::begin_as(&mut conn, tenant).await.unwrap();
    assert_eq!(current_tenant(&mut tx).await, Some(tenant));
    let seen: i64 = sqlx::query_scalar("select count(*) from bulkhead.tenant_settings")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, 1);
    tx.commit().await.unwrap();
    assert_eq!(
        current_tenant(&mut conn).await,
        None,
        "context survived COMMIT"
    );

    let tx = common::begin_as(&mut conn, tenant).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        current_tenant(&mut conn).await,
        None,
        "context survived ROLLBACK"
    );
    let seen: i64 = sqlx::query_scalar("select count(*) from bulkhead.tenant_settings")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(seen, 0);
}

#[tokio::test]
async fn session_level_context_is_refused_while_an_unguarded_setting_persists() {
    let tenant = create_tenant(&mut admin().await, "session").await;
    let mut conn = app().await;
    // Load the extension's library, as the first query touching a Bulkhead table would.
    assert_eq!(current_tenant(&mut conn).await, None);

    let direct = conn
        .execute(format!("set bulkhead.tenant_id = '{tenant}'").as_str())
        .await;
    assert_eq!(sqlstate(&direct), "42501");
    let via_set_config = sqlx::query("select set_config('bulkhead.tenant_id', $1, false)")
        .bind(tenant.to_string())
        .execute(&mut conn)
        .await;
    assert_eq!(sqlstate(&via_set_config), "42501");
    assert_eq!(current_tenant(&mut conn).await, None);

    // The attack itself works on a setting without Bulkhead's guard: it outlives the statement.
    sqlx::query("select set_config('unguarded.tenant_id', $1, false)")
        .bind(tenant.to_string())
        .execute(&mut conn)
        .await
        .unwrap();
    let persisted: String = sqlx::query_scalar("select current_setting('unguarded.tenant_id')")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(persisted, tenant.to_string());
}

#[tokio::test]
async fn a_context_set_before_the_library_loads_is_discarded_when_it_loads() {
    let tenant = create_tenant(&mut admin().await, "preload").await;
    let mut conn = app().await;
    // Preloaded (as `make db` runs it), the library refuses the SET at once. Otherwise, before
    // the library is loaded in this session, Postgres accepts the SET as a placeholder, and
    // loading the library re-checks it and drops it (with a WARNING).
    let set = conn
        .execute(format!("set bulkhead.tenant_id = '{tenant}'").as_str())
        .await;
    if set.is_err() {
        assert_eq!(sqlstate(&set), "42501");
    }
    assert_eq!(current_tenant(&mut conn).await, None);
    let seen: i64 = sqlx::query_scalar("select count(*) from bulkhead.tenant_settings")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(seen, 0);
    let setting: String = sqlx::query_scalar("select current_setting('bulkhead.tenant_id')")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(setting, "");
}

#[tokio::test]
async fn a_login_role_cannot_escalate() {
    let mut conn = app().await;
    assert_eq!(
        sqlstate(&conn.execute("set role bulkhead_admin").await),
        "42501"
    );
    assert_eq!(
        sqlstate(&conn.execute("set session authorization postgres").await),
        "42501"
    );
    assert_eq!(sqlstate(&conn.execute("set role postgres").await), "42501");
    // A member of the control-plane role can: the refusal above comes from membership.
    let mut admin_conn = admin().await;
    admin_conn.execute("set role bulkhead_admin").await.unwrap();
}

#[tokio::test]
async fn pooled_connection_starts_every_transaction_without_context() {
    let tenant = create_tenant(&mut admin().await, "pool").await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(common::superuser_options().username("bulkhead_test_app"))
        .await
        .unwrap();
    let pid_first: i32 = {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("select bulkhead.set_tenant($1)")
            .bind(tenant)
            .execute(&mut *tx)
            .await
            .unwrap();
        let pid = sqlx::query_scalar("select pg_backend_pid()")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        pid
    };
    let mut tx = pool.begin().await.unwrap();
    let pid_second: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(
        pid_first, pid_second,
        "the pool should reuse its one connection"
    );
    assert_eq!(current_tenant(&mut tx).await, None);
    let seen: i64 = sqlx::query_scalar("select count(*) from bulkhead.tenant_settings")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, 0);
}

/// A real PgBouncer in transaction mode with a single server connection, so that two clients
/// share one backend. Runs as the `postgres` OS user when the tests run as root.
struct PgBouncer {
    child: Child,
    port: u16,
}

impl PgBouncer {
    fn start() -> PgBouncer {
        let dir = common::bulkhead_home().join("pgbouncer-test");
        std::fs::create_dir_all(&dir).unwrap();
        let pg_port = std::env::var("BULKHEAD_TEST_PORT").unwrap_or_else(|_| "54329".into());
        let port = 54339;
        let config = format!(
            "[databases]\nbulkhead_it = host=127.0.0.1 port={pg_port} dbname=bulkhead_it pool_size=1\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {auth}\npool_mode = transaction\nmax_client_conn = 20\n\
             default_pool_size = 1\nignore_startup_parameters = extra_float_digits,options\n\
             server_reset_query =\nlogfile = {log}\npidfile = {pid}\n",
            auth = dir.join("users.txt").display(),
            log = dir.join("pgbouncer.log").display(),
            pid = dir.join("pgbouncer.pid").display(),
        );
        // PgBouncer trusts its clients and logs in to PostgreSQL with this password.
        std::fs::write(
            dir.join("users.txt"),
            format!("\"bulkhead_test_app\" \"{}\"\n", common::dev_password()),
        )
        .unwrap();
        std::fs::write(dir.join("pgbouncer.ini"), config).unwrap();
        if common::running_as_root() {
            Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status()
                .unwrap();
        }
        // Stop one a killed earlier run left behind.
        if let Ok(pid) = std::fs::read_to_string(dir.join("pgbouncer.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
            std::thread::sleep(Duration::from_millis(300));
        }
        // Debian installs it in /usr/sbin, which a non-root PATH may lack.
        let binary = if std::path::Path::new("/usr/sbin/pgbouncer").exists() {
            "/usr/sbin/pgbouncer"
        } else {
            "pgbouncer"
        };
        let child = common::command_as_postgres(binary)
            .arg("--quiet")
            .arg(dir.join("pgbouncer.ini"))
            .spawn()
            .expect("pgbouncer is installed by make");
        PgBouncer { child, port }
    }

    async fn client(&self) -> sqlx::PgConnection {
        let options = common::superuser_options()
            .username("bulkhead_test_app")
            .port(self.port);
        for _ in 0..50 {
            if let Ok(conn) = sqlx::ConnectOptions::connect(&options).await {
                return conn;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("pgbouncer did not accept connections on port {}", self.port);
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // pgbouncer runs under sudo as another user: signal it through its pid file.
        if let Ok(pid) =
            std::fs::read_to_string(common::bulkhead_home().join("pgbouncer-test/pgbouncer.pid"))
        {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = self.child.wait();
    }
}

/// Simple-protocol query returning the first column of each row as text (no prepared
/// statements, which transaction pooling cannot carry).
async fn texts(conn: &mut sqlx::PgConnection, sql: &str) -> Vec<Option<String>> {
    sqlx::raw_sql(sql)
        .fetch_all(conn)
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<Option<String>, _>(0))
        .collect()
}

#[tokio::test]
async fn pgbouncer_transaction_pooling_does_not_carry_context_between_clients() {
    let tenant = create_tenant(&mut admin().await, "bouncer").await;
    let bouncer = PgBouncer::start();
    let mut first = bouncer.client().await;
    let mut second = bouncer.client().await;

    // Client 1 works for the tenant inside a transaction.
    first.execute("begin").await.unwrap();
    first
        .execute(format!("select bulkhead.set_tenant('{tenant}')").as_str())
        .await
        .unwrap();
    let pid_first = texts(&mut first, "select pg_backend_pid()::text").await;
    let seen = texts(
        &mut first,
        "select count(*)::text from bulkhead.tenant_settings",
    )
    .await;
    assert_eq!(seen, vec![Some("1".to_string())]);
    first.execute("commit").await.unwrap();

    // Client 2 gets the same server connection and no context.
    second.execute("begin").await.unwrap();
    let pid_second = texts(&mut second, "select pg_backend_pid()::text").await;
    assert_eq!(
        pid_first, pid_second,
        "pool_size=1 must give both clients one backend"
    );
    assert_eq!(
        texts(&mut second, "select bulkhead.current_tenant()::text").await,
        vec![None]
    );
    assert_eq!(
        texts(
            &mut second,
            "select count(*)::text from bulkhead.tenant_settings"
        )
        .await,
        vec![Some("0".to_string())]
    );
    second.execute("commit").await.unwrap();

    // The pooler does carry session state: an unguarded session setting set by client 1
    // reaches client 2 — which is why Bulkhead refuses session-level context.
    let refused = first
        .execute(format!("set bulkhead.tenant_id = '{tenant}'").as_str())
        .await;
    assert_eq!(sqlstate(&refused), "42501");
    first
        .execute(format!("set unguarded.tenant_id = '{tenant}'").as_str())
        .await
        .unwrap();
    assert_eq!(
        texts(
            &mut second,
            "select current_setting('unguarded.tenant_id', true)"
        )
        .await,
        vec![Some(tenant.to_string())]
    );
    drop(bouncer);
}

#[tokio::test]
async fn jwt_claims_count_only_in_the_transaction_that_set_them() {
    let tenant = create_tenant(&mut admin().await, "jwt").await;
    let claims = format!(r#"{{"app_metadata":{{"tenant_id":"{tenant}"}}}}"#);
    let mut conn = app().await;

    // As PostgREST does it: set inside the request's transaction.
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("select set_config('request.jwt.claims', $1, true)")
        .bind(&claims)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(current_tenant(&mut tx).await, Some(tenant));
    tx.commit().await.unwrap();
    assert_eq!(current_tenant(&mut conn).await, None);

    // Set for the whole session, the claims stay in the setting (a pooler would hand them to the
    // next client) but no later transaction takes a tenant from them.
    sqlx::query("select set_config('request.jwt.claims', $1, false)")
        .bind(&claims)
        .execute(&mut conn)
        .await
        .unwrap();
    let lingering: String = sqlx::query_scalar("select current_setting('request.jwt.claims')")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(lingering, claims, "the session-level claims are still set");
    assert_eq!(current_tenant(&mut conn).await, None);
    let seen: i64 = sqlx::query_scalar("select count(*) from bulkhead.tenant_settings")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(seen, 0);
}

/// A52 (issue 13, finding 7): in-memory admission keeps the refusal it answered NULL with for
/// the raise that follows. It must not outlive its transaction (a pooler hands the connection to
/// another client, acting for another tenant) nor cross to another tenant within one. The twin:
/// inside the refused transaction, for the refused tenant, the raise finds it.
#[tokio::test]
async fn an_admission_refusal_does_not_outlive_its_transaction_or_tenant() {
    let mut admin_conn = admin().await;
    let a = create_tenant(&mut admin_conn, "refusal-a").await;
    let b = create_tenant(&mut admin_conn, "refusal-b").await;
    let model = common::thousandth_dollar_model(&mut admin_conn).await;
    sqlx::query("select bulkhead.set_budget($1, 1000, 1000000, 1000000, 0)")
        .bind(a)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    let mut conn = common::memory_app().await;
    let admit = "select bulkhead._admit_in_memory($1, 1, 0, '10 minutes')";
    let raise = "select bulkhead._raise_refusal()";

    // The twin: refused for A (NULL), the raise in the same transaction is A's refusal.
    let mut tx = common::begin_as(&mut conn, a).await.unwrap();
    let refused: Option<Uuid> = sqlx::query_scalar(admit)
        .bind(&model)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(refused, None, "a zero budget refuses");
    let err = sqlx::query(raise).execute(&mut *tx).await.unwrap_err();
    let err = err.as_database_error().unwrap();
    assert_eq!(err.code().as_deref(), Some("PT429"));
    assert!(err.message().contains("tenant_budget_exceeded"));
    tx.rollback().await.unwrap();

    // Refused again, then the transaction ends: the next one finds nothing, acting for A again
    // (only the clearing at transaction end stops that one) or for B (the tenant check too).
    for (end_with_commit, next) in [(true, a), (false, a), (true, b), (false, b)] {
        let mut tx = common::begin_as(&mut conn, a).await.unwrap();
        let refused: Option<Uuid> = sqlx::query_scalar(admit)
            .bind(&model)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(refused, None);
        if end_with_commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        let mut tx = common::begin_as(&mut conn, next).await.unwrap();
        let err = sqlx::query(raise).execute(&mut *tx).await.unwrap_err();
        let err = err.as_database_error().unwrap();
        assert_eq!(err.code().as_deref(), Some("55000"), "{}", err.message());
        assert!(!err.message().contains(&a.to_string()));
        tx.rollback().await.unwrap();
    }

    // Within one transaction: refused for A, then acting for B, the raise finds nothing.
    let mut tx = common::begin_as(&mut conn, a).await.unwrap();
    let _: Option<Uuid> = sqlx::query_scalar(admit)
        .bind(&model)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    sqlx::query("select bulkhead.set_tenant($1)")
        .bind(b)
        .execute(&mut *tx)
        .await
        .unwrap();
    let err = sqlx::query(raise).execute(&mut *tx).await.unwrap_err();
    assert_eq!(
        err.as_database_error().unwrap().code().as_deref(),
        Some("55000")
    );
    tx.rollback().await.unwrap();

    // And the kept refusal itself is the meter's to read, not the application's.
    let direct = sqlx::query("select * from bulkhead._admission_refusal()")
        .execute(&mut conn)
        .await;
    assert_eq!(sqlstate(&direct), "42501");
}

/// A53 (issue 13, finding 4): a role with no Bulkhead grant at all holds the advisory keys the
/// worker and the index build used (computable from a tenant id) for as long as it likes. They
/// stop nothing now: the mutexes are row locks only Bulkhead's roles can take. The twin: the
/// old lock statement, run by the worker's role, is refused its lock while the outsider holds it.
#[tokio::test]
async fn an_outsider_holding_advisory_keys_stops_no_worker_or_index_build() {
    let mut admin_conn = admin().await;
    let tenant = create_tenant(&mut admin_conn, "advisory").await;
    sqlx::query("select bulkhead.set_embedding_dims($1, 3)")
        .bind(tenant)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    let mut su = common::superuser().await;
    sqlx::raw_sql(
        "do $$ begin
           if not exists (select from pg_roles where rolname = 'bulkhead_test_outsider') then
             create role bulkhead_test_outsider login;
           end if;
         end $$;",
    )
    .execute(&mut su)
    .await
    .unwrap();
    common::give_dev_password(&mut su, &["bulkhead_test_outsider"]).await;
    let mut outsider = common::superuser_options()
        .username("bulkhead_test_outsider")
        .connect()
        .await
        .unwrap();
    let old_keys = [
        "select pg_advisory_lock(hashtext('bulkhead.pinecone'), hashtext($1::text))",
        "select pg_advisory_lock(hashtext('bulkhead.chunks index'), hashtext($1::text))",
    ];
    for key in old_keys {
        sqlx::query(key)
            .bind(tenant)
            .execute(&mut outsider)
            .await
            .unwrap();
    }
    // Nor can the outsider take the row lock (no privilege on schema bulkhead at all).
    let row_lock = sqlx::query("select from bulkhead.retrieval_settings for update")
        .execute(&mut outsider)
        .await;
    assert_eq!(sqlstate(&row_lock), "42501");

    // The twin: the worker's old Pinecone lock is refused while the outsider holds the key.
    let worker_options = common::superuser_options().username("bulkhead_test_worker");
    let mut worker = worker_options.connect().await.unwrap();
    let old: bool = sqlx::query_scalar(
        "select pg_try_advisory_xact_lock(hashtext('bulkhead.pinecone'), hashtext($1::text))",
    )
    .bind(tenant)
    .fetch_one(&mut worker)
    .await
    .unwrap();
    assert!(!old, "the outsider's advisory lock stops the old sync");

    // The worker's lock now: taken; a second worker (another session) is told it is busy.
    let mut tx = worker.begin().await.unwrap();
    let locked: bool = sqlx::query_scalar("select bulkhead.pinecone_lock_tenant($1)")
        .bind(tenant)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert!(locked, "the sync lock is Bulkhead's own");
    let mut second = worker_options.connect().await.unwrap();
    let mut tx2 = second.begin().await.unwrap();
    let busy: bool = sqlx::query_scalar("select bulkhead.pinecone_lock_tenant($1)")
        .bind(tenant)
        .fetch_one(&mut *tx2)
        .await
        .unwrap();
    assert!(!busy, "one worker at a time");
    tx2.rollback().await.unwrap();
    tx.rollback().await.unwrap();

    // The tenant's own index builds while the outsider still holds the old key.
    let built: String = sqlx::query_scalar("select bulkhead.build_tenant_index($1)")
        .bind(tenant)
        .fetch_one(&mut admin_conn)
        .await
        .unwrap();
    assert!(built.starts_with("chunks_hnsw_"), "{built}");
    // And the application, acting for the tenant, cannot take the row lock either.
    let mut app_conn = app().await;
    let mut tx = common::begin_as(&mut app_conn, tenant).await.unwrap();
    let app_lock = sqlx::query("select from bulkhead.retrieval_settings for key share")
        .execute(&mut *tx)
        .await;
    assert_eq!(sqlstate(&app_lock), "42501");
    tx.rollback().await.unwrap();
    outsider.close().await.unwrap();
}

/// A55 (issue 13, finding 8; review F8): the PostgREST form of a refusal (SQLSTATE PGRST) is for the
/// transaction PostgREST set `request.method` in. A session-level value left on a pooled
/// connection by an earlier client does not turn a backend's PT429 into PGRST; the twin, the
/// same value set in the refusing transaction (as PostgREST does), does.
#[tokio::test]
async fn a_leftover_request_method_does_not_change_the_refusal() {
    let mut admin_conn = admin().await;
    let tenant = create_tenant(&mut admin_conn, "pgrst-leftover").await;
    let model = common::thousandth_dollar_model(&mut admin_conn).await;
    sqlx::query("select bulkhead.set_budget($1, 1000, 1000000, 1000000, 0)")
        .bind(tenant)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    let mut conn = app().await;
    conn.execute("set request.method = 'POST'").await.unwrap();
    let refused = common::check(&mut conn, tenant, &model, "10 minutes").await;
    assert_eq!(
        sqlstate(&refused),
        "PT429",
        "a leftover session value counts for nothing"
    );
    let mut tx = common::begin_as(&mut conn, tenant).await.unwrap();
    sqlx::query("select set_config('request.method', 'POST', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let refused = sqlx::query_scalar::<_, Uuid>("select bulkhead.budget_check($1, 1, 0)")
        .bind(&model)
        .fetch_one(&mut *tx)
        .await;
    assert_eq!(
        sqlstate(&refused),
        "PGRST",
        "set in the refusing transaction, as PostgREST does"
    );
}

/// A54 (issue 13, side channels; review finding F6): a role with no Bulkhead grant LISTENs on
/// the channel the worker used to wake on, and learns nothing when tenants queue work. The twin:
/// listening on the installation's actual channel (which only the worker and the meter may
/// read) it hears every enqueue.
#[tokio::test]
async fn an_outsider_cannot_listen_to_tenants_activity() {
    let mut su = common::superuser().await;
    sqlx::raw_sql(
        "do $$ begin
           if not exists (select from pg_roles where rolname = 'bulkhead_test_outsider') then
             create role bulkhead_test_outsider login;
           end if;
         end $$;",
    )
    .execute(&mut su)
    .await
    .unwrap();
    common::give_dev_password(&mut su, &["bulkhead_test_outsider"]).await;
    let secret_channel: String = sqlx::query_scalar(
        "select name from bulkhead.notification_channels where base = 'bulkhead_jobs'",
    )
    .fetch_one(&mut su)
    .await
    .unwrap();
    let outsider = common::superuser_options().username("bulkhead_test_outsider");
    let mut guessed = sqlx::postgres::PgListener::connect_with(
        &sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_with(outsider.clone())
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    guessed.listen("bulkhead_jobs").await.unwrap();
    let mut knowing = sqlx::postgres::PgListener::connect_with(
        &sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_with(outsider)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    knowing.listen(&secret_channel).await.unwrap();

    let tenant = create_tenant(&mut admin().await, "listen").await;
    let mut conn = app().await;
    let mut tx = common::begin_as(&mut conn, tenant).await.unwrap();
    sqlx::query("select bulkhead.enqueue_job('noop')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let heard = tokio::time::timeout(Duration::from_secs(2), knowing.recv()).await;
    assert!(
        heard.is_ok_and(|n| n.is_ok()),
        "the twin: the secret channel carries the enqueue"
    );
    let guessed_heard = tokio::time::timeout(Duration::from_millis(500), guessed.recv()).await;
    assert!(
        guessed_heard.is_err(),
        "the old, guessable channel carries nothing"
    );
    // Workers of later tests claim any tenant's jobs: this one goes now.
    sqlx::query("delete from bulkhead.jobs where tenant_id = $1")
        .bind(tenant)
        .execute(&mut su)
        .await
        .unwrap();
    // The outsider cannot read the names either.
    let mut plain = common::superuser_options()
        .username("bulkhead_test_outsider")
        .connect()
        .await
        .unwrap();
    let read = sqlx::query_scalar::<_, String>("select name from bulkhead.notification_channels")
        .fetch_all(&mut plain)
        .await;
    assert_eq!(sqlstate(&read), "42501");
}
