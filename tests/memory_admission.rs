//! Admission in shared memory (`bulkhead.memory_admission`): the budget_check contract without a
//! row written per admission. Runs as `bulkhead_test_memory_app` (memory admission on for that
//! role, see tests/setup.sql), a LOGIN member of bulkhead_app, neither superuser nor owner.
//! The crash bound of memory admission is tested in tests/crash_bound.rs.

mod common;

use common::{admin, app, check, create_tenant, memory_app, sqlstate, thousandth_dollar_model};
use sqlx::types::BigDecimal;
use sqlx::PgConnection;
use uuid::Uuid;

/// A tenant whose budget holds `calls` calls of one input token.
async fn tenant_with_budget(prefix: &str, calls: &str) -> (Uuid, String) {
    let mut admin_conn = admin().await;
    let tenant = create_tenant(&mut admin_conn, prefix).await;
    let model = thousandth_dollar_model(&mut admin_conn).await;
    sqlx::query(
        "select bulkhead.set_budget($1, 1000000, 100000000, 100000000, $2::numeric / 1000)",
    )
    .bind(tenant)
    .bind(calls)
    .execute(&mut admin_conn)
    .await
    .unwrap();
    (tenant, model)
}

async fn settle(
    conn: &mut PgConnection,
    tenant: Uuid,
    reservation: Uuid,
    input_tokens: i64,
    request: &str,
) -> Result<BigDecimal, sqlx::Error> {
    let mut tx = common::begin_as(conn, tenant).await?;
    let cost = sqlx::query_scalar("select bulkhead.ledger_record($1, jsonb_build_object('prompt_tokens', $2::bigint, 'completion_tokens', 0), $3)")
        .bind(reservation)
        .bind(input_tokens)
        .bind(request)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(cost)
}

fn refusal(result: &Result<Uuid, sqlx::Error>) -> (String, String) {
    match result {
        Err(sqlx::Error::Database(err)) => (
            err.code().unwrap_or_default().to_string(),
            err.message().to_string(),
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn rows_written(tenant: Uuid) -> i64 {
    let mut su = common::superuser().await;
    sqlx::query_scalar("select count(*) from bulkhead.reservations where tenant_id = $1")
        .bind(tenant)
        .fetch_one(&mut su)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_checks_from_32_connections_admit_exactly_the_budget_in_memory() {
    const CONNECTIONS: usize = 32;
    const ATTEMPTS: usize = 1000;
    const K: i64 = 137;
    let (tenant, model) = tenant_with_budget("mem-race", &K.to_string()).await;

    let admitted = common::race_for_budget(tenant, &model, true, CONNECTIONS, ATTEMPTS).await;
    assert_eq!(admitted, K, "exactly K calls fit the budget");
    // Admitted in memory: no row was written, and the tenant's open holds are the K calls.
    assert_eq!(rows_written(tenant).await, 0);
    let mut conn = memory_app().await;
    let mut tx = common::begin_as(&mut conn, tenant).await.unwrap();
    let (open, held): (i64, BigDecimal) = sqlx::query_as(
        "select coalesce(sum(open_reservations), 0)::bigint, coalesce(sum(open_reserved_usd), 0) from bulkhead._open_in_memory()",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(open, K);
    assert_eq!(
        held,
        format!("{}", K as f64 / 1000.0)
            .parse::<BigDecimal>()
            .unwrap()
    );
}

#[tokio::test]
async fn rollbacks_and_savepoints_give_their_holds_back() {
    let (tenant, model) = tenant_with_budget("mem-rollback", "2.5").await;
    let mut conn = memory_app().await;

    let mut tx = common::begin_as(&mut conn, tenant).await.unwrap();
    sqlx::query("select bulkhead.budget_check($1, 1, 0)")
        .bind(&model)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    check(&mut conn, tenant, &model, "10 minutes")
        .await
        .expect("the rolled-back admission left its dollar");

    // Within one transaction: a check rolled back to a savepoint gives its hold back at once.
    let mut tx = common::begin_as(&mut conn, tenant).await.unwrap();
    sqlx::query("savepoint before_check")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("select bulkhead.budget_check($1, 1, 0)")
        .bind(&model)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("rollback to savepoint before_check")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("select bulkhead.budget_check($1, 1, 0)")
        .bind(&model)
        .execute(&mut *tx)
        .await
        .expect("the savepoint's admission was given back");
    tx.commit().await.unwrap();

    let third = check(&mut conn, tenant, &model, "10 minutes").await;
    assert_eq!(
        refusal(&third),
        ("PT429".into(), "tenant_budget_exceeded".into())
    );
}

#[tokio::test]
async fn a_settle_releases_its_hold_counts_its_cost_and_is_recorded_once() {
    let (tenant, model) = tenant_with_budget("mem-settle", "1.5").await;
    let (other, _) = tenant_with_budget("mem-settle-other", "1.5").await;
    let mut conn = memory_app().await;

    let reservation = check(&mut conn, tenant, &model, "10 minutes")
        .await
        .unwrap();
    let refused = check(&mut conn, tenant, &model, "10 minutes").await;
    assert_eq!(refusal(&refused).0, "PT429");

    // Another tenant cannot settle it (and so cannot release A's hold); A can.
    let stolen = settle(&mut conn, other, reservation, 0, "chatcmpl-stolen").await;
    assert_eq!(sqlstate(&stolen), "P0002");
    // The settle may come from a session on the table path: the reservation says where its hold is.
    let mut table_session = app().await;
    let cost = settle(&mut table_session, tenant, reservation, 0, "chatcmpl-free")
        .await
        .unwrap();
    assert_eq!(cost, BigDecimal::from(0));
    let again = settle(&mut conn, tenant, reservation, 0, "chatcmpl-free")
        .await
        .unwrap();
    assert_eq!(again, cost);

    // The hold is gone: the next call fits. The one after it does not.
    let next = check(&mut conn, tenant, &model, "10 minutes")
        .await
        .expect("the settled reservation no longer holds budget");
    let mut su = common::superuser().await;
    let (ledger_rows, held): (i64, bool) = sqlx::query_as(
        "select (select count(*) from bulkhead.ledger where tenant_id = $1),
                (select held_in_memory and settled_at is not null from bulkhead.reservations where id = $2)",
    )
    .bind(tenant)
    .bind(reservation)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!((ledger_rows, held), (1, true));

    // A settle at the full estimate counts in the period's money: then nothing more fits.
    let cost = settle(&mut conn, tenant, next, 1, "chatcmpl-paid")
        .await
        .unwrap();
    assert_eq!(cost, "0.001".parse::<BigDecimal>().unwrap());
    let after = check(&mut conn, tenant, &model, "10 minutes").await;
    assert_eq!(refusal(&after).0, "PT429");
}

#[tokio::test]
async fn an_expired_lease_frees_its_budget_and_a_late_settle_still_counts() {
    let (tenant, model) = tenant_with_budget("mem-lease", "1.5").await;
    let mut conn = memory_app().await;

    let late = check(&mut conn, tenant, &model, "200 milliseconds")
        .await
        .unwrap();
    let refused = check(&mut conn, tenant, &model, "10 minutes").await;
    assert_eq!(refusal(&refused).0, "PT429");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    check(&mut conn, tenant, &model, "10 minutes")
        .await
        .expect("the expired lease no longer holds budget");

    // The expired call did happen: its settle is recorded, and its cost counts.
    let cost = settle(&mut conn, tenant, late, 1, "chatcmpl-late")
        .await
        .unwrap();
    assert_eq!(cost, "0.001".parse::<BigDecimal>().unwrap());
    let mut su = common::superuser().await;
    let expired: bool = sqlx::query_scalar(
        "select expired_at is not null and settled_at is not null from bulkhead.reservations where id = $1",
    )
    .bind(late)
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert!(expired);
    let after = check(&mut conn, tenant, &model, "10 minutes").await;
    assert_eq!(refusal(&after).0, "PT429");
}

#[tokio::test]
async fn a_transaction_that_admitted_in_memory_cannot_be_prepared() {
    let (tenant, model) = tenant_with_budget("mem-2pc", "1.5").await;
    let mut conn = memory_app().await;
    sqlx::query("begin").execute(&mut conn).await.unwrap();
    sqlx::query("select bulkhead.set_tenant($1)")
        .bind(tenant)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("select bulkhead.budget_check($1, 1, 0)")
        .bind(&model)
        .execute(&mut conn)
        .await
        .unwrap();
    let prepared = sqlx::query("prepare transaction 'bulkhead-memory-2pc'")
        .execute(&mut conn)
        .await;
    assert_eq!(sqlstate(&prepared), "0A000");
    // The refused PREPARE rolled the transaction back, and its hold with it.
    check(&mut conn, tenant, &model, "10 minutes")
        .await
        .expect("the rolled-back admission left its dollar");
}

#[tokio::test]
async fn a_tenant_admitted_in_memory_is_admitted_there_from_every_session() {
    // On the table path first: a session with memory admission off writes a reservation row.
    let (tenant, model) = tenant_with_budget("mem-paths", "3.5").await;
    let mut table = app().await;
    check(&mut table, tenant, &model, "10 minutes")
        .await
        .unwrap();
    assert_eq!(rows_written(tenant).await, 1);
    // Without a slot, the memory path refuses a session with memory admission off.
    let mut tx = common::begin_as(&mut table, tenant).await.unwrap();
    let direct = sqlx::query("select bulkhead._admit_in_memory($1, 1, 0, '10 minutes')")
        .bind(&model)
        .execute(&mut *tx)
        .await;
    assert_eq!(sqlstate(&direct), "55000");
    drop(tx);

    // A memory session loads the tenant's slot, with the open row's hold in it; from then on
    // the table session's checks go to memory too (no new row), against the same budget.
    let mut memory = memory_app().await;
    check(&mut memory, tenant, &model, "10 minutes")
        .await
        .unwrap();
    check(&mut table, tenant, &model, "10 minutes")
        .await
        .expect("routed to memory");
    assert_eq!(rows_written(tenant).await, 1, "no second table-path row");
    // Three calls of the 3.5 the budget holds: whichever session asks, the fourth is refused.
    let fourth = check(&mut table, tenant, &model, "10 minutes").await;
    assert_eq!(refusal(&fourth).0, "PT429");
    let fourth = check(&mut memory, tenant, &model, "10 minutes").await;
    assert_eq!(refusal(&fourth).0, "PT429");
    // Calling the table path directly changes nothing: it goes to memory as well.
    let mut tx = common::begin_as(&mut table, tenant).await.unwrap();
    let direct = sqlx::query("select bulkhead._budget_check_table($1, 1, 0, '10 minutes')")
        .bind(&model)
        .execute(&mut *tx)
        .await;
    assert_eq!(sqlstate(&direct), "PT429");
    drop(tx);
    assert_eq!(rows_written(tenant).await, 1);
}

#[tokio::test]
async fn a_slot_loaded_after_a_settle_in_the_same_transaction_survives_its_rollback() {
    // A call admitted on the table path, estimated at two thousandths, before any slot exists.
    let (tenant, model) = tenant_with_budget("mem-reload", "2.5").await;
    let mut table = app().await;
    let mut tx = common::begin_as(&mut table, tenant).await.unwrap();
    let first: Uuid = sqlx::query_scalar("select bulkhead.budget_check($1, 2, 0)")
        .bind(&model)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // One transaction settles it (for nothing), then admits in memory: the tenant's slot is
    // loaded from tables that already show the settle. Then the transaction rolls back.
    let mut memory = memory_app().await;
    let mut tx = common::begin_as(&mut memory, tenant).await.unwrap();
    sqlx::query("select bulkhead.ledger_record($1, '{\"prompt_tokens\": 0, \"completion_tokens\": 0}', 'chatcmpl-undone')")
        .bind(first)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("select bulkhead.budget_check($1, 1, 0)")
        .bind(&model)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    // The first call is open again and holds its two thousandths: a third one does not fit.
    // (A slot that kept what the rolled-back transaction showed would admit it.)
    let next = check(&mut memory, tenant, &model, "10 minutes").await;
    assert_eq!(refusal(&next).0, "PT429");
    // Settled for real, its hold goes, once.
    settle(&mut memory, tenant, first, 0, "chatcmpl-done")
        .await
        .unwrap();
    check(&mut memory, tenant, &model, "10 minutes")
        .await
        .unwrap();
    check(&mut memory, tenant, &model, "10 minutes")
        .await
        .unwrap();
    let third = check(&mut memory, tenant, &model, "10 minutes").await;
    assert_eq!(refusal(&third).0, "PT429");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_path_admission_rolled_back_after_its_slot_loaded_leaves_no_hold() {
    let (tenant, model) = tenant_with_budget("mem-handover", "3.5").await;
    // T, on the table path, admits after a savepoint and keeps the tenant's budget_state row.
    let mut table = app().await;
    let mut tx = common::begin_as(&mut table, tenant).await.unwrap();
    sqlx::query("savepoint before_checks")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("select bulkhead.budget_check($1, 1, 0)")
        .bind(&model)
        .execute(&mut *tx)
        .await
        .unwrap();

    // M's first check in memory creates the tenant's slot, then waits for that row to load it.
    let memory_check = {
        let model = model.clone();
        tokio::spawn(async move {
            let mut memory = memory_app().await;
            check(&mut memory, tenant, &model, "10 minutes").await
        })
    };
    let mut su = common::superuser().await;
    let mut waited = 0;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where usename = 'bulkhead_test_memory_app' and wait_event_type = 'Lock'",
        )
        .fetch_one(&mut su)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        waited += 1;
        assert!(waited < 100, "the memory session never waited for the row");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // T checks again: the tenant has a slot now, so T loads it (seeing its own uncommitted row)
    // and admits in memory. Then T rolls both back.
    sqlx::query("select bulkhead.budget_check($1, 1, 0)")
        .bind(&model)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("rollback to savepoint before_checks")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    memory_check.await.unwrap().expect("M's check fits");

    // Only M's call holds budget: two more fit, the third does not.
    let mut memory = memory_app().await;
    check(&mut memory, tenant, &model, "10 minutes")
        .await
        .unwrap();
    check(&mut memory, tenant, &model, "10 minutes")
        .await
        .unwrap();
    let fourth = check(&mut memory, tenant, &model, "10 minutes").await;
    assert_eq!(refusal(&fourth).0, "PT429");
    assert_eq!(rows_written(tenant).await, 0);
}
