//! The HTTP server under the gateway and the console: axum on hyper, with the limits axum::serve
//! does not have.

use axum::body::Body;
use axum::Router;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Accepts connections until shutdown, then lets them finish (streams are cut after the grace
/// period, which ends them). Unlike axum::serve: a client must send a request's headers within
/// `header_timeout` (idle keep-alive connections and slow senders are closed, not held open), and
/// at most `max_connections` are open at once (more are closed at accept), so that no client can
/// use up the process's file descriptors.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: &CancellationToken,
    max_connections: usize,
    header_timeout: Duration,
    per_client: Option<usize>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Connections open per client address (when capped): one host cannot hold every slot.
    let per_address = OpenPerClient::default();
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => {
                    // Out of descriptors, say: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(tcp);
            continue;
        };
        let client = match peer.ip() {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(std::net::IpAddr::V4)
                .unwrap_or(peer.ip()),
            v4 => v4,
        };
        let release = match per_client {
            Some(cap) => match ClientSlot::take(&per_address, client, cap) {
                Some(slot) => Some(slot),
                None => {
                    drop(tcp);
                    continue;
                }
            },
            None => None,
        };
        // Stream events are small writes: without TCP_NODELAY, Nagle's algorithm holds each one
        // back until the client's delayed ACK (about 40 ms).
        let _ = tcp.set_nodelay(true);
        // Each request carries its client's address (the console rate-limits sign-ins by it).
        let service =
            hyper_util::service::TowerToHyperService::new(tower::ServiceExt::map_request(
                app.clone(),
                move |request: axum::http::Request<hyper::body::Incoming>| {
                    let mut request = request.map(Body::new);
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    request
                },
            ));
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // A client that connects and sends nothing is closed after the header timeout:
            // hyper's own timeout starts only with its first byte.
            // (peek, not readable(): a new socket may report readiness before any byte.)
            let mut first = [0u8; 1];
            if tokio::time::timeout(header_timeout, tcp.peek(&mut first))
                .await
                .is_err()
            {
                drop((slot, release));
                return;
            }
            // HTTP/1 only: the auto builder's HTTP/2 sniffing would read with no timeout.
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                .into_owned();
            let _ = watcher.watch(connection).await;
            drop((slot, release));
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

type OpenPerClient = Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>;

/// One of a client address's connections; its place goes back when the connection ends.
struct ClientSlot {
    counts: OpenPerClient,
    client: std::net::IpAddr,
}

impl ClientSlot {
    /// A place for `client`, unless it already has `cap` connections open.
    fn take(counts: &OpenPerClient, client: std::net::IpAddr, cap: usize) -> Option<Self> {
        let mut open = counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(client).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(Self {
            counts: counts.clone(),
            client,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

pub(crate) async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}
