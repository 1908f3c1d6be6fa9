//! Settlement off the request path: each finished call is queued here and settled in batches
//! (bulkhead.gateway_settle, one round trip and one commit for many calls). A call whose settle
//! never lands (the process died first) is charged at its hold when its lease ends, by the
//! database (reservations.bill_on_expiry): never free.

use crate::metrics::GatewayMetrics;
use serde_json::Value;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug)]
pub struct Settle {
    pub tenant: uuid::Uuid,
    pub reservation: uuid::Uuid,
    pub usage: Value,
    pub request_id: String,
    pub model: String,
}

#[derive(Clone)]
pub struct Settler {
    tx: mpsc::Sender<Settle>,
}

/// Most calls settled in one round trip.
const BATCH: usize = 256;

impl Settler {
    /// Starts the settling task; it ends once every Settler handle is dropped and the queue is
    /// drained.
    pub fn start(
        pool: PgPool,
        metrics: Arc<GatewayMetrics>,
    ) -> (Settler, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(65_536);
        (Settler { tx }, tokio::spawn(run(pool, rx, metrics)))
    }

    pub async fn settle(&self, item: Settle) {
        if let Err(lost) = self.tx.send(item).await {
            // Only after shutdown began; the lease will bill it at its hold.
            crate::gateway::log_error(&format!(
                "settle of reservation {} not queued: the settler has stopped",
                lost.0.reservation
            ));
        }
    }
}

async fn run(pool: PgPool, mut rx: mpsc::Receiver<Settle>, metrics: Arc<GatewayMetrics>) {
    let mut batch: Vec<Settle> = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            match settle_batch(&pool, &batch).await {
                Ok(()) => break,
                Err(err) => {
                    metrics.settle_failed();
                    // The database is away: keep the batch and try again. Should the process
                    // die meanwhile, the leases bill these calls at their holds.
                    crate::gateway::log_error(&format!(
                        "settling {} calls failed, retrying in {backoff:?}: {err}",
                        batch.len()
                    ));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        batch.clear();
    }
}

async fn settle_batch(pool: &PgPool, batch: &[Settle]) -> Result<(), sqlx::Error> {
    let tenants: Vec<uuid::Uuid> = batch.iter().map(|s| s.tenant).collect();
    let reservations: Vec<uuid::Uuid> = batch.iter().map(|s| s.reservation).collect();
    let usages: Vec<Value> = batch.iter().map(|s| s.usage.clone()).collect();
    let request_ids: Vec<String> = batch
        .iter()
        .map(|s| s.request_id.chars().take(200).collect())
        .collect();
    let models: Vec<String> = batch.iter().map(|s| s.model.clone()).collect();
    let rows: Vec<(uuid::Uuid, Option<String>)> = sqlx::query_as(
        "select reservation, error from bulkhead.gateway_settle($1, $2, $3, $4, $5)",
    )
    .bind(&tenants)
    .bind(&reservations)
    .bind(&usages)
    .bind(&request_ids)
    .bind(&models)
    .fetch_all(pool)
    .await?;
    for (reservation, error) in rows {
        if let Some(error) = error {
            crate::gateway::log_error(&format!(
                "settle of reservation {reservation} refused: {error}"
            ));
        }
    }
    Ok(())
}
