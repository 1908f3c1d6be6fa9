//! Pinecone sync: mirrors each tenant's chunks into the tenant's own namespace of one Pinecone
//! index, from the outbox the extension fills (`sql/pinecone.sql`), and deletes the namespace of
//! a deleted tenant, recording that on its deletion receipt.
//!
//! Every operation is idempotent at Pinecone (upsert by id, delete by id, delete a namespace),
//! and a change is marked synced only after Pinecone acknowledged it and only if it did not
//! change meanwhile; after any fault the next round sends it again, so the index converges.

use crate::metrics::Metrics;
use crate::providers::{self, CallError, Secret};
use serde_json::{json, Map, Value};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

/// Changes read per tenant and statement; Pinecone takes up to 1,000 vectors per upsert.
const BATCH: i32 = 100;
/// Batches per tenant and round, so that one busy tenant cannot hold up the others.
const BATCHES_PER_TENANT: usize = 10;
/// Pinecone refuses requests over 2 MB; upserts are cut well below.
const MAX_UPSERT_BYTES: usize = 1_500_000;
/// Pinecone refuses metadata over 40 KB per vector; larger metadata is left out.
const MAX_METADATA_BYTES: usize = 40_000;

/// One worker at a time syncs a tenant: two workers sending the same chunk could otherwise land
/// an older upsert after a newer delete, or upsert into a namespace already deleted. The lock
/// (the tenant's retrieval row, which only Bulkhead's roles can lock: not an advisory key any
/// role could hold forever) belongs to the transaction around the tenant's sync, so however the
/// sync ends (an error, a worker killed or aborted), its end releases the lock; the marks
/// commit with it. delete_tenant waits for it.
const LOCK_TENANT_SQL: &str = "select bulkhead.pinecone_lock_tenant($1)";
/// A namespace deletion's own row lock: one worker deletes it.
const LOCK_DELETION_SQL: &str = "select bulkhead.pinecone_lock_deletion($1)";

pub struct Pinecone {
    http: reqwest::Client,
    host: String,
    key: Secret,
    /// Since when each tenant's sync lock has been found held, round after round.
    busy_since: std::sync::Mutex<std::collections::HashMap<Uuid, std::time::Instant>>,
}

/// A tenant's sync lock found held this long, round after round, is reported: only Bulkhead's
/// roles can take it, so it means a stuck session of theirs (an open transaction, say).
pub const LOCK_HELD_TOO_LONG: Duration = Duration::from_secs(300);

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub synced: usize,
    pub namespaces_deleted: usize,
    pub failures: usize,
    /// Tenants whose sync lock has been held elsewhere for at least LOCK_HELD_TOO_LONG.
    pub held_too_long: Vec<(Uuid, Duration)>,
}

impl Pinecone {
    /// `host` is the index host Pinecone shows (scheme optional: https is assumed).
    pub fn new(host: &str, key: String, timeout: Duration) -> Result<Self, reqwest::Error> {
        let host = if host.contains("://") {
            host.trim_end_matches('/').to_string()
        } else {
            format!("https://{}", host.trim_end_matches('/'))
        };
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("bulkhead/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Pinecone {
            http,
            host,
            key: Secret::new(key),
            busy_since: Default::default(),
        })
    }

    async fn post(&self, path: &str, body: &Value) -> Result<reqwest::StatusCode, CallError> {
        let key = self.key.expose();
        let response = self
            .http
            .post(format!("{}{path}", self.host))
            .header("Api-Key", key)
            .header("X-Pinecone-API-Version", "2025-01")
            .json(body)
            .send()
            .await
            .map_err(|err| providers::transport_error(&err, None))?;
        let status = response.status();
        if status.is_success() {
            // The answer ({"upsertedCount": n} or {}) is not needed; read it to reuse the connection.
            let _ = providers::read_capped(response, 64 * 1024).await;
            return Ok(status);
        }
        if status == reqwest::StatusCode::NOT_FOUND && path == "/vectors/delete" {
            return Ok(status); // deleting from a namespace that does not exist: nothing to do
        }
        Err(providers::error_response("pinecone", response, None).await)
    }

    /// Upserts in requests Pinecone accepts (bytes and count).
    async fn upsert(&self, namespace: &str, vectors: Vec<Value>) -> Result<(), CallError> {
        let mut request: Vec<Value> = Vec::new();
        let mut bytes = 0;
        for vector in vectors {
            let size = vector.to_string().len();
            if !request.is_empty() && (bytes + size > MAX_UPSERT_BYTES || request.len() >= 1000) {
                self.post(
                    "/vectors/upsert",
                    &json!({"namespace": namespace, "vectors": std::mem::take(&mut request)}),
                )
                .await?;
                bytes = 0;
            }
            bytes += size;
            request.push(vector);
        }
        if !request.is_empty() {
            self.post(
                "/vectors/upsert",
                &json!({"namespace": namespace, "vectors": request}),
            )
            .await?;
        }
        Ok(())
    }

    async fn delete(&self, namespace: &str, ids: Vec<String>) -> Result<(), CallError> {
        self.post(
            "/vectors/delete",
            &json!({"namespace": namespace, "ids": ids}),
        )
        .await
        .map(drop)
    }

    async fn delete_namespace(&self, namespace: &str) -> Result<(), CallError> {
        self.post(
            "/vectors/delete",
            &json!({"namespace": namespace, "deleteAll": true}),
        )
        .await
        .map(drop)
    }

    /// One sweep: pending namespace deletions, then every tenant with pending chunk changes,
    /// each read and marked in that tenant's context. Pinecone failures are counted and left
    /// for the next round; database errors end the round.
    pub async fn round(&self, pool: &PgPool, metrics: &Metrics) -> Result<Round, sqlx::Error> {
        let mut round = Round::default();
        let deletions: Vec<(i64, String)> = sqlx::query_as(
            "select id, namespace from bulkhead.pinecone_namespace_deletions
             where processed_at is null order by id limit 100",
        )
        .fetch_all(pool)
        .await?;
        // The tenant is gone: its deletion waited for any sync of it in flight.
        for (id, namespace) in deletions {
            let mut tx = pool.begin().await?;
            let locked: bool = sqlx::query_scalar(LOCK_DELETION_SQL)
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            if !locked {
                continue; // another worker is deleting it, or did
            }
            match self.delete_namespace(&namespace).await {
                Ok(()) => {
                    sqlx::query("select bulkhead.pinecone_namespace_deleted($1)")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    round.namespaces_deleted += 1;
                }
                Err(err) => {
                    metrics.provider_error("pinecone", err.class());
                    round.failures += 1;
                }
            }
        }

        let tenants: Vec<Uuid> =
            sqlx::query_scalar("select bulkhead.pinecone_pending_tenants(100)")
                .fetch_all(pool)
                .await?;
        for tenant in tenants {
            // A transaction per batch: the marks commit right after Pinecone acknowledged them,
            // so the outbox rows they touch are locked only for a moment.
            for _ in 0..BATCHES_PER_TENANT {
                let mut tx = pool.begin().await?;
                let locked: bool = sqlx::query_scalar(LOCK_TENANT_SQL)
                    .bind(tenant)
                    .fetch_one(&mut *tx)
                    .await?;
                if !locked {
                    // Another worker is syncing this tenant, or a session holds its lock.
                    let mut busy = self.busy_since.lock().unwrap_or_else(|p| p.into_inner());
                    let held = busy
                        .entry(tenant)
                        .or_insert_with(std::time::Instant::now)
                        .elapsed();
                    if held >= LOCK_HELD_TOO_LONG {
                        round.held_too_long.push((tenant, held));
                    }
                    break;
                }
                self.busy_since
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&tenant);
                let batch = self.sync_batch(&mut tx, tenant).await?;
                tx.commit().await?;
                match batch {
                    Ok(0) => break,
                    Ok(n) => round.synced += n,
                    Err(err) => {
                        metrics.provider_error("pinecone", err.class());
                        round.failures += 1;
                        break;
                    }
                }
            }
        }
        Ok(round)
    }

    /// Syncs one batch of a tenant's changes; Ok(0) when none is pending.
    async fn sync_batch(
        &self,
        conn: &mut sqlx::PgConnection,
        tenant: Uuid,
    ) -> Result<Result<usize, CallError>, sqlx::Error> {
        // enqueued_at travels as PostgreSQL's own text, so the compare-and-mark sees the exact value.
        type Row = (
            i64,
            String,
            String,
            String,
            Uuid,
            Option<Uuid>,
            Option<Vec<f32>>,
            Option<Value>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "select outbox_id, enqueued_at::text, namespace, op, chunk_id, document_id, embedding, metadata
             from bulkhead.pinecone_batch($1, $2)",
        )
        .bind(tenant)
        .bind(BATCH)
        .fetch_all(&mut *conn)
        .await?;
        if rows.is_empty() {
            return Ok(Ok(0));
        }
        // Grouped by namespace (a tenant has one, but a row names its own) and operation.
        let mut upserts: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
        let mut deletes: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (_, _, namespace, op, chunk, document, embedding, metadata) in &rows {
            match (op.as_str(), embedding) {
                ("upsert", Some(values)) => upserts.entry(namespace).or_default().push(json!({
                    "id": chunk.to_string(),
                    "values": values,
                    "metadata": pinecone_metadata(*document, metadata.as_ref()),
                })),
                _ => deletes
                    .entry(namespace)
                    .or_default()
                    .push(chunk.to_string()),
            }
        }
        for (namespace, vectors) in upserts {
            if let Err(err) = self.upsert(namespace, vectors).await {
                return Ok(Err(err));
            }
        }
        for (namespace, ids) in deletes {
            if let Err(err) = self.delete(namespace, ids).await {
                return Ok(Err(err));
            }
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let enqueued: Vec<String> = rows.iter().map(|r| r.1.clone()).collect();
        let marked: i32 = sqlx::query_scalar(
            "select bulkhead.pinecone_synced($1, $2, $3::text[]::timestamptz[])",
        )
        .bind(tenant)
        .bind(&ids)
        .bind(&enqueued)
        .fetch_one(&mut *conn)
        .await?;
        Ok(Ok(usize::try_from(marked).unwrap_or(0)))
    }
}

/// Pinecone metadata values are strings, numbers, booleans or lists of strings: the chunk's
/// top-level metadata of those kinds, and its document id.
fn pinecone_metadata(document: Option<Uuid>, metadata: Option<&Value>) -> Value {
    let mut out = Map::new();
    if let Some(Value::Object(fields)) = metadata {
        for (name, value) in fields {
            let keep = match value {
                Value::String(_) | Value::Number(_) | Value::Bool(_) => true,
                Value::Array(items) => items.iter().all(Value::is_string),
                _ => false,
            };
            if keep {
                out.insert(name.clone(), value.clone());
            }
        }
    }
    if Value::Object(out.clone()).to_string().len() > MAX_METADATA_BYTES {
        out.clear();
    }
    if let Some(document) = document {
        out.insert("document_id".into(), json!(document.to_string()));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_over_pinecones_limit_is_left_out() {
        let doc = Uuid::nil();
        let big = "x".repeat(MAX_METADATA_BYTES);
        let out = pinecone_metadata(Some(doc), Some(&json!({"body": big})));
        assert_eq!(out, json!({"document_id": doc.to_string()}));
    }

    #[test]
    fn metadata_keeps_what_pinecone_accepts() {
        let doc = Uuid::nil();
        let out = pinecone_metadata(
            Some(doc),
            Some(
                &json!({"lang": "en", "page": 3, "draft": false, "tags": ["a", "b"],
                         "nested": {"x": 1}, "mixed": [1, "a"], "none": null}),
            ),
        );
        assert_eq!(
            out,
            json!({"lang": "en", "page": 3, "draft": false, "tags": ["a", "b"],
                   "document_id": doc.to_string()})
        );
    }
}
