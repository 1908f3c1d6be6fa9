//! Settlement off the request path: each finished call is queued here and settled in batches
//! (bulkhead.gateway_settle, one round trip and one commit for many calls). A call whose settle
//! never lands (the process died first) is charged at its hold when its lease ends, by the
//! database (reservations.bill_on_expiry): never free.

use crate::database::{without_nul, without_nul_json};
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
/// How long the first call of a batch waits for others; the ledger shows a call this much later.
const GATHER: Duration = Duration::from_millis(10);

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

/// A settle refused for a reason that passes (another session of the tenant holds its budget
/// row; a serialization failure or deadlock) is tried again, a second apart, this many times.
const TRANSIENT_RETRIES: u32 = 60;

async fn run(pool: PgPool, mut rx: mpsc::Receiver<Settle>, metrics: Arc<GatewayMetrics>) {
    let mut pending: Vec<(Settle, u32)> = Vec::new();
    let mut closed = false;
    loop {
        let first = if pending.is_empty() {
            match rx.recv().await {
                Some(item) => Some(item),
                None => break,
            }
        } else if closed {
            tokio::time::sleep(Duration::from_secs(1)).await;
            None
        } else {
            match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
                Ok(Some(item)) => Some(item),
                Ok(None) => {
                    closed = true;
                    None
                }
                Err(_) => None,
            }
        };
        if first.is_some() && !closed && rx.len() + 1 < BATCH {
            // Let a batch gather: each settle is a transaction with a durable commit, and
            // under a steady load a round trip per few calls would spend the database's time
            // (and wake-ups of every process) on commits rather than on calls. A backlog of a
            // full batch goes at once.
            tokio::time::sleep(GATHER).await;
        }
        let mut batch: Vec<(Settle, u32)> = std::mem::take(&mut pending);
        batch.extend(first.map(|item| (item, 0)));
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push((item, 0)),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let items: Vec<&Settle> = batch.iter().map(|(item, _)| item).collect();
        let retry = settle_resilient(&pool, &metrics, &items).await;
        for (item, tried) in batch {
            if !retry.contains(&item.reservation) {
                continue;
            }
            if tried + 1 < TRANSIENT_RETRIES {
                pending.push((item, tried + 1));
            } else {
                crate::gateway::log_error(&format!(
                    "settle of reservation {} given up after {} attempts; its lease will charge it at its hold",
                    item.reservation,
                    tried + 1
                ));
            }
        }
    }
}

/// Settles `items` in one round trip, waiting out a database that is away. A value the database
/// refuses (not the database being away) sends them one by one, so that one bad item cannot
/// stop every other tenant's settles; an item refused alone is left to its lease (charged at
/// its hold). Returns the reservations refused for a passing reason.
async fn settle_resilient(
    pool: &PgPool,
    metrics: &GatewayMetrics,
    items: &[&Settle],
) -> Vec<uuid::Uuid> {
    let mut backoff = Duration::from_millis(50);
    loop {
        match settle_batch(pool, items).await {
            Ok(retry) => return retry,
            // Refused for its values; a FATAL (the server ended the session: nothing was
            // committed) is waited out below like the database being away.
            Err(sqlx::Error::Database(err)) if !crate::gateway::fatal(err.as_ref()) => {
                if items.len() == 1 {
                    crate::gateway::log_error(&format!(
                        "settle of reservation {} refused ({err}); its lease will charge it at its hold",
                        items[0].reservation
                    ));
                    return Vec::new();
                }
                crate::gateway::log_error(&format!(
                    "a settle batch was refused ({err}); settling one by one"
                ));
                let mut retry = Vec::new();
                for item in items {
                    retry.extend(
                        Box::pin(settle_resilient(pool, metrics, std::slice::from_ref(item))).await,
                    );
                }
                return retry;
            }
            Err(err) => {
                metrics.settle_failed();
                // The database is away: keep the batch and try again. Should the process die
                // meanwhile, the leases bill these calls at their holds.
                crate::gateway::log_error(&format!(
                    "settling {} calls failed, retrying in {backoff:?}: {err}",
                    items.len()
                ));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// One round trip; returns the reservations refused for a passing reason.
async fn settle_batch(pool: &PgPool, batch: &[&Settle]) -> Result<Vec<uuid::Uuid>, sqlx::Error> {
    let tenants: Vec<uuid::Uuid> = batch.iter().map(|s| s.tenant).collect();
    let reservations: Vec<uuid::Uuid> = batch.iter().map(|s| s.reservation).collect();
    let usages: Vec<Value> = batch.iter().map(|s| without_nul_json(&s.usage)).collect();
    let request_ids: Vec<String> = batch
        .iter()
        .map(|s| without_nul(&s.request_id).chars().take(200).collect())
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
    let mut retry = Vec::new();
    for (reservation, error) in rows {
        match error {
            // Lock timeout, serialization failure, deadlock: tried again later.
            Some(error)
                if ["55P03", "40001", "40P01"]
                    .iter()
                    .any(|c| error.starts_with(c)) =>
            {
                retry.push(reservation)
            }
            Some(error) => crate::gateway::log_error(&format!(
                "settle of reservation {reservation} refused: {error}"
            )),
            None => {}
        }
    }
    Ok(retry)
}
