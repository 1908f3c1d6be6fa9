//! The durability bound of asynchronous admission, tested with a real crash.
//!
//! budget_check commits asynchronously, so a crash may lose the reservations admitted in the
//! last moments. The claim: after a crash a tenant can overspend by at most the reservations that
//! were in flight (admitted, not yet settled) at the crash. Settled costs are never lost, because
//! ledger_record commits synchronously (and so flushes every earlier asynchronous commit too).
//!
//! With admission in shared memory (bulkhead.memory_admission) a crash forgets every open
//! in-memory reservation, whatever its age: the same bound holds, with all of them lost.
//! This test is alone in its binary: it crashes and restarts the shared test cluster, once per
//! admission path, in sequence.

mod common;

use common::{admin, app, create_tenant, memory_app};
use uuid::Uuid;

const K: i64 = 20;
const SETTLED: i64 = 5;
const IN_FLIGHT: i64 = 10;

async fn check(tenant: Uuid, model: &str, in_memory: bool) -> Result<Uuid, sqlx::Error> {
    let mut conn = if in_memory {
        memory_app().await
    } else {
        app().await
    };
    let mut tx = common::begin_as(&mut conn, tenant).await?;
    let reservation = sqlx::query_scalar("select bulkhead.budget_check($1, 1, 0)")
        .bind(model)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(reservation)
}

async fn settle(tenant: Uuid, reservation: Uuid, request: &str, model: Option<&str>) {
    let mut conn = app().await;
    let mut tx = common::begin_as(&mut conn, tenant).await.unwrap();
    sqlx::query("select bulkhead.ledger_record($1, '{\"prompt_tokens\": 1, \"completion_tokens\": 0}', $2, $3)")
        .bind(reservation)
        .bind(request)
        .bind(model)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn a_crash_costs_at_most_the_reservations_in_flight() {
    crash_with_reservations_in_flight(false).await;
    crash_with_reservations_in_flight(true).await;
}

async fn crash_with_reservations_in_flight(in_memory: bool) {
    let mut admin_conn = admin().await;
    let tenant = create_tenant(&mut admin_conn, "crash").await;
    let model = format!("crash-model-{}", Uuid::new_v4().simple());
    sqlx::query("select bulkhead.set_price('openai', $1, 1000, 0, effective_from => now() - interval '1 minute')")
        .bind(&model)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    sqlx::query("select bulkhead.set_budget($1, 100000, 100000, 100000, $2::numeric / 1000)")
        .bind(tenant)
        .bind(K)
        .execute(&mut admin_conn)
        .await
        .unwrap();
    drop(admin_conn);

    for n in 0..SETTLED {
        let reservation = check(tenant, &model, in_memory).await.unwrap();
        settle(tenant, reservation, &format!("settled-{n}"), None).await;
    }
    let mut in_flight = Vec::new();
    for _ in 0..IN_FLIGHT {
        in_flight.push(check(tenant, &model, in_memory).await.unwrap());
    }

    common::crash_and_restart();

    let mut su = common::superuser().await;
    let ledger_rows: i64 =
        sqlx::query_scalar("select count(*) from bulkhead.ledger where tenant_id = $1")
            .bind(tenant)
            .fetch_one(&mut su)
            .await
            .unwrap();
    assert_eq!(ledger_rows, SETTLED, "settled costs survive a crash");
    let surviving: i64 = sqlx::query_scalar(
        "select count(*) from bulkhead.reservations where tenant_id = $1 and settled_at is null",
    )
    .bind(tenant)
    .fetch_one(&mut su)
    .await
    .unwrap();
    let lost = IN_FLIGHT - surviving;
    assert!((0..=IN_FLIGHT).contains(&lost));
    if in_memory {
        assert_eq!(
            lost, IN_FLIGHT,
            "a restart forgets every open in-memory reservation"
        );
    }

    // Admit until refused: exactly what the surviving records leave room for.
    let mut admitted_after = 0;
    loop {
        match check(tenant, &model, in_memory).await {
            Ok(_) => admitted_after += 1,
            Err(err) => {
                assert_eq!(
                    err.as_database_error().and_then(|e| e.code()).as_deref(),
                    Some("PT429")
                );
                break;
            }
        }
        assert!(admitted_after <= K, "admission never stopped");
    }
    assert_eq!(admitted_after, K - SETTLED - surviving);

    // The in-flight calls finish and settle; those whose reservation was lost are recorded as
    // orphans. The overspend is exactly the lost reservations: within the bound.
    for (n, reservation) in in_flight.iter().enumerate() {
        settle(
            tenant,
            *reservation,
            &format!("in-flight-{n}"),
            Some(&model),
        )
        .await;
    }
    let calls = SETTLED + IN_FLIGHT + admitted_after;
    let overspent_calls = (calls - K).max(0);
    assert_eq!(overspent_calls, lost);
    assert!(
        overspent_calls <= IN_FLIGHT,
        "overspend beyond the reservations in flight"
    );
    let orphans: i64 =
        sqlx::query_scalar("select count(*) from bulkhead.ledger where tenant_id = $1 and orphan")
            .bind(tenant)
            .fetch_one(&mut su)
            .await
            .unwrap();
    assert_eq!(orphans, lost);
    let path = if in_memory { "in memory" } else { "table path" };
    eprintln!("{path}: crash lost {lost} of {IN_FLIGHT} in-flight reservations; overspend {overspent_calls} calls");
}
