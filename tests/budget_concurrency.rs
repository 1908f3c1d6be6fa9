//! Admission under concurrency: no interleaving of budget_check may admit more than the budget,
//! leases free what they held, and a settle repeated concurrently is recorded once.

mod common;

use common::{admin, app, check, create_tenant, thousandth_dollar_model};
use sqlx::PgConnection;
use uuid::Uuid;

fn refusal_code(err: &sqlx::Error) -> Option<(String, String)> {
    err.as_database_error().map(|e| {
        (
            e.code().unwrap_or_default().to_string(),
            e.message().to_string(),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_checks_from_32_connections_admit_exactly_the_budget() {
    const CONNECTIONS: usize = 32;
    const ATTEMPTS: usize = 1000;
    const K: i64 = 137;

    let mut admin_conn = admin().await;
    let tenant = create_tenant(&mut admin_conn, "race").await;
    let model = thousandth_dollar_model(&mut admin_conn).await;
    // Room for exactly K calls of $0.001; rate limits far above what the test uses.
    sqlx::query(
        "select bulkhead.set_budget($1, 1000000, 100000000, 100000000, $2::numeric / 1000)",
    )
    .bind(tenant)
    .bind(K)
    .execute(&mut admin_conn)
    .await
    .unwrap();

    let admitted = common::race_for_budget(tenant, &model, false, CONNECTIONS, ATTEMPTS).await;
    assert_eq!(admitted, K, "exactly K calls fit the budget");

    let mut su = common::superuser().await;
    let (reservations, reserved): (i64, sqlx::types::BigDecimal) = sqlx::query_as(
        "select count(*), coalesce(sum(reserved_usd), 0) from bulkhead.reservations where tenant_id = $1",
    )
    .bind(tenant)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(reservations, K);
    let cap: sqlx::types::BigDecimal = format!("{}", K as f64 / 1000.0).parse().unwrap();
    assert!(reserved <= cap, "reserved {reserved} exceeds the cap {cap}");
}

#[tokio::test]
async fn an_expired_lease_frees_its_budget_without_a_phantom_refusal() {
    let mut admin_conn = admin().await;
    let tenant = create_tenant(&mut admin_conn, "lease").await;
    let model = thousandth_dollar_model(&mut admin_conn).await;
    sqlx::query("select bulkhead.set_budget($1, 1000, 1000, 1000, 0.0015)")
        .bind(tenant)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    let mut conn = app().await;

    check(&mut conn, tenant, &model, "200 milliseconds")
        .await
        .expect("the first call fits");
    let refused = check(&mut conn, tenant, &model, "10 minutes")
        .await
        .unwrap_err();
    assert_eq!(refusal_code(&refused).unwrap().1, "tenant_budget_exceeded");
    // The first reservation is never settled (its caller crashed, say): once its lease ends,
    // the next check releases it and is admitted.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    check(&mut conn, tenant, &model, "10 minutes")
        .await
        .expect("the expired lease no longer holds budget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_repeated_concurrently_is_recorded_once() {
    let mut admin_conn = admin().await;
    let tenant = create_tenant(&mut admin_conn, "settle").await;
    let model = thousandth_dollar_model(&mut admin_conn).await;
    let mut conn = app().await;
    let reservation = check(&mut conn, tenant, &model, "10 minutes")
        .await
        .unwrap();

    let settle = |conn_future: std::pin::Pin<
        Box<dyn std::future::Future<Output = PgConnection> + Send>,
    >| async move {
        let mut conn = conn_future.await;
        let mut tx = common::begin_as(&mut conn, tenant).await.unwrap();
        let cost: sqlx::types::BigDecimal = sqlx::query_scalar(
            "select bulkhead.ledger_record($1, '{\"prompt_tokens\": 3, \"completion_tokens\": 2}', 'chatcmpl-dup')",
        )
        .bind(reservation)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        cost
    };
    let (first, second) = tokio::join!(
        tokio::spawn(settle(Box::pin(app()))),
        tokio::spawn(settle(Box::pin(app())))
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first, second);
    assert_eq!(first, "0.003".parse::<sqlx::types::BigDecimal>().unwrap());

    let mut su = common::superuser().await;
    let rows: i64 = sqlx::query_scalar("select count(*) from bulkhead.ledger where tenant_id = $1")
        .bind(tenant)
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    let spent: sqlx::types::BigDecimal =
        sqlx::query_scalar("select spent_usd from bulkhead.budget_state where tenant_id = $1")
            .bind(tenant)
            .fetch_one(&mut su)
            .await
            .unwrap();
    assert_eq!(spent, "0.003".parse::<sqlx::types::BigDecimal>().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_tenant_while_it_spends_never_deadlocks() {
    let mut admin_conn = admin().await;
    let tenant = create_tenant(&mut admin_conn, "deleted-while-spending").await;
    let model = thousandth_dollar_model(&mut admin_conn).await;
    sqlx::query("select bulkhead.set_budget($1, 1000000, 100000000, 100000000, 1000)")
        .bind(tenant)
        .execute(&mut admin_conn)
        .await
        .unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spending = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut spenders = Vec::new();
    for _ in 0..8 {
        let (model, stop, spending) = (model.clone(), stop.clone(), spending.clone());
        spenders.push(tokio::spawn(async move {
            let mut conn = app().await;
            let mut codes = std::collections::BTreeSet::new();
            let mut counted = false;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let checked = check(&mut conn, tenant, &model, "10 minutes").await;
                if checked.is_ok() && !counted {
                    counted = true;
                    spending.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                if let Err(err) = checked {
                    codes.insert(
                        err.as_database_error()
                            .and_then(|e| e.code())
                            .unwrap_or_default()
                            .to_string(),
                    );
                }
            }
            codes
        }));
    }
    // Every spender admitted once (its login, now checked with scram-sha-256, takes a while on
    // 2 cores): the deletion then meets admissions in flight on an existing state row. (A
    // deletion that races the tenant's very first admission is the case this does not cover.)
    for _ in 0..200 {
        if spending.load(std::sync::atomic::Ordering::Relaxed) == 8 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let receipt: Result<Uuid, _> = sqlx::query_scalar("select bulkhead.delete_tenant($1)")
        .bind(tenant)
        .fetch_one(&mut admin_conn)
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut codes = std::collections::BTreeSet::new();
    for spender in spenders {
        codes.extend(spender.await.unwrap());
    }
    receipt.expect("the deletion succeeds while the tenant spends");
    // After the deletion, checks fail cleanly: the tenant is unknown to set_tenant or to
    // budget_check. Never a deadlock (40P01) or an internal error.
    assert!(
        codes.iter().all(|code| code == "42704"),
        "unexpected errors: {codes:?}"
    );
    let mut su = common::superuser().await;
    let left: i64 = sqlx::query_scalar(
        "select (select count(*) from bulkhead.reservations where tenant_id = $1) \
              + (select count(*) from bulkhead.budget_state where tenant_id = $1)",
    )
    .bind(tenant)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(left, 0, "rows of the deleted tenant survived");
}
