//! Pinecone sync against the FAKE Pinecone data plane (tests/fakes/fake_providers.py, a test
//! double speaking Pinecone's REST wire format): chunk changes reach each tenant's namespace
//! through 5xx, 429, timeouts and dropped deletes, and once the outbox drains the fake index
//! equals the chunks table (divergence 0); deleting a tenant deletes its namespace at the fake
//! and records that on the deletion receipt.

mod common;

use common::{admin, app, begin_as, create_tenant, superuser, FakeProviders};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use uuid::Uuid;

/// namespace -> chunk id -> values, as the fake index holds them.
fn index(fake: &FakeProviders) -> BTreeMap<String, BTreeMap<String, Vec<f64>>> {
    let state: Value = serde_json::from_str(&fake.call("GET", "/_fake/pinecone", "")).unwrap();
    let mut out = BTreeMap::new();
    for (namespace, vectors) in state.as_object().unwrap() {
        let mut ids = BTreeMap::new();
        for (id, v) in vectors.as_object().unwrap() {
            let values = v["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            ids.insert(id.clone(), values);
        }
        out.insert(namespace.clone(), ids);
    }
    out
}

/// `bulkhead worker --drain` with Pinecone configured; returns its exit status.
fn drain(fake: &FakeProviders) -> std::process::ExitStatus {
    let url = std::env::var("BULKHEAD_TEST_DATABASE_URL")
        .unwrap()
        .replacen("postgres@", "bulkhead_test_worker@", 1);
    Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args([
            "worker",
            "--drain",
            "--poll-ms",
            "100",
            "--provider-timeout-secs",
            "1",
        ])
        .args([
            "--pinecone-index-host",
            &format!("http://127.0.0.1:{}", fake.port),
        ])
        .env("DATABASE_URL", url)
        .env("PINECONE_API_KEY", "pcsk-test-not-a-real-key")
        .stderr(Stdio::null())
        .status()
        .unwrap()
}

/// Chunks of these tenants that the fake index does not hold exactly (missing, stale values,
/// or extra ids in their namespaces).
async fn divergence(fake: &FakeProviders, tenants: &[Uuid]) -> usize {
    let mut su = superuser().await;
    let rows: Vec<(String, String, Vec<f32>)> = sqlx::query_as(
        "select t.pinecone_namespace, c.id::text, c.embedding::real[]
         from bulkhead.chunks c join bulkhead.tenants t on t.id = c.tenant_id
         where c.tenant_id = any($1)",
    )
    .bind(tenants)
    .fetch_all(&mut su)
    .await
    .unwrap();
    let namespaces: Vec<String> =
        sqlx::query_scalar("select pinecone_namespace from bulkhead.tenants where id = any($1)")
            .bind(tenants)
            .fetch_all(&mut su)
            .await
            .unwrap();
    let held = index(fake);
    let mut diverging = 0;
    let mut expected: BTreeMap<&str, BTreeMap<&str, &Vec<f32>>> = BTreeMap::new();
    for (namespace, id, values) in &rows {
        expected.entry(namespace).or_default().insert(id, values);
    }
    for namespace in &namespaces {
        let want = expected.remove(namespace.as_str()).unwrap_or_default();
        let have = held.get(namespace).cloned().unwrap_or_default();
        for (id, values) in &want {
            let same = have.get(*id).is_some_and(|got| {
                got.len() == values.len()
                    && got
                        .iter()
                        .zip(values.iter())
                        .all(|(a, b)| (a - f64::from(*b)).abs() < 1e-6)
            });
            diverging += usize::from(!same);
        }
        diverging += have
            .keys()
            .filter(|id| !want.contains_key(id.as_str()))
            .count();
    }
    diverging
}

async fn ingest(conn: &mut sqlx::PgConnection, tenant: Uuid, external_id: &str, chunks: Value) {
    let mut tx = begin_as(conn, tenant).await.unwrap();
    sqlx::query("select bulkhead.ingest_document($1, $2)")
        .bind(external_id)
        .bind(chunks)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn pinecone_converges_after_faults_and_loses_deleted_namespaces() {
    let fake = FakeProviders::start();
    let mut admin_conn = admin().await;
    let mut conn = app().await;
    let p1 = create_tenant(&mut admin_conn, "pc-one").await;
    let p2 = create_tenant(&mut admin_conn, "pc-two").await;
    for tenant in [p1, p2] {
        sqlx::query("select bulkhead.set_embedding_dims($1, 3)")
            .bind(tenant)
            .execute(&mut admin_conn)
            .await
            .unwrap();
    }
    let chunk = |content: &str, e: [f32; 3]| json!({"content": content, "embedding": e, "metadata": {"lang": "en", "nested": {"dropped": true}}});
    for (tenant, name) in [(p1, "one"), (p2, "two")] {
        for doc in 0..5 {
            let chunks: Vec<Value> = (0..4)
                .map(|i| {
                    chunk(
                        &format!("{name} doc {doc} chunk {i}"),
                        [doc as f32, i as f32, 1.0],
                    )
                })
                .collect();
            ingest(&mut conn, tenant, &format!("{name}-{doc}"), json!(chunks)).await;
        }
    }
    assert_eq!(
        divergence(&fake, &[p1, p2]).await,
        40,
        "nothing synced yet: the check can fail"
    );

    // Faults on the way: a 503, a 429, a timeout, a 500 on a delete.
    fake.inject(
        "/vectors/upsert",
        json!([{"status": 503}, {"status": 429, "retry_after": "0"}, {"delay": 3}]),
    );
    assert!(drain(&fake).success());
    assert_eq!(
        fake.call("GET", "/_fake/faults", ""),
        "{}",
        "every fault was met"
    );
    assert_eq!(
        divergence(&fake, &[p1, p2]).await,
        0,
        "converged after upsert faults"
    );

    // Rewrite one document (new chunk ids), delete another, with deletes failing at first.
    ingest(
        &mut conn,
        p1,
        "one-0",
        json!([chunk("one doc 0 rewritten", [9.0, 9.0, 9.0])]),
    )
    .await;
    let mut tx = begin_as(&mut conn, p1).await.unwrap();
    sqlx::query("select bulkhead.delete_document('one-1')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(divergence(&fake, &[p1]).await > 0);
    fake.inject("/vectors/delete", json!([{"status": 500}, {"delay": 3}]));
    assert!(drain(&fake).success());
    assert_eq!(
        fake.call("GET", "/_fake/faults", ""),
        "{}",
        "every fault was met"
    );
    assert_eq!(
        divergence(&fake, &[p1, p2]).await,
        0,
        "converged after delete faults"
    );
    let mut su = superuser().await;
    let pending: i64 = sqlx::query_scalar(
        "select count(*) from bulkhead.pinecone_outbox where tenant_id = any($1) and processed_at is null",
    )
    .bind(vec![p1, p2])
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(pending, 0);
    // Pinecone metadata: the chunk's flat fields and its document; nested values are left out.
    let namespace: String =
        sqlx::query_scalar("select pinecone_namespace from bulkhead.tenants where id = $1")
            .bind(p2)
            .fetch_one(&mut su)
            .await
            .unwrap();
    let state: Value = serde_json::from_str(&fake.call("GET", "/_fake/pinecone", "")).unwrap();
    let any = state[&namespace]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap();
    assert_eq!(any["metadata"]["lang"], "en");
    assert!(any["metadata"]["document_id"].is_string());
    assert!(any["metadata"].get("nested").is_none());

    // Deleting a tenant deletes its namespace at Pinecone and says so on the receipt.
    let receipt: Uuid = sqlx::query_scalar("select bulkhead.delete_tenant($1)")
        .bind(p2)
        .fetch_one(&mut admin_conn)
        .await
        .unwrap();
    assert!(index(&fake).contains_key(&namespace));
    fake.inject("/vectors/delete", json!([{"status": 503}]));
    assert!(drain(&fake).success());
    assert_eq!(
        fake.call("GET", "/_fake/faults", ""),
        "{}",
        "every fault was met"
    );
    assert!(
        !index(&fake).contains_key(&namespace),
        "the namespace is gone at Pinecone"
    );
    let steps: Vec<String> = sqlx::query_scalar(
        "select step from bulkhead.deletion_receipt_steps where receipt_id = $1 and step like 'pinecone%' order by step",
    )
    .bind(receipt)
    .fetch_all(&mut admin_conn)
    .await
    .unwrap();
    assert_eq!(
        steps,
        vec![
            "pinecone namespace deleted",
            "pinecone namespace deletion queued"
        ]
    );
    assert_eq!(divergence(&fake, &[p1]).await, 0);
}
