//! The worker's Prometheus metrics, served as text on `--metrics-addr` (GET /metrics).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Upper bounds (seconds) of the job duration histogram.
const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct State {
    /// Jobs finished, by (kind, outcome).
    jobs: BTreeMap<(String, &'static str), u64>,
    durations: BTreeMap<String, Histogram>,
    /// Failed provider calls, by (provider, class).
    provider_errors: BTreeMap<(String, &'static str), u64>,
    connected: bool,
}

/// Shared by the claim loop, the job tasks and the HTTP endpoint.
#[derive(Default)]
pub struct Metrics {
    state: Mutex<State>,
}

impl Metrics {
    pub fn job_finished(&self, kind: &str, outcome: &'static str, took: Duration) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        *state.jobs.entry((kind.to_string(), outcome)).or_default() += 1;
        let seconds = took.as_secs_f64();
        let histogram = state.durations.entry(kind.to_string()).or_default();
        for (count, bound) in histogram.counts.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *count += 1;
            }
        }
        histogram.count += 1;
        histogram.sum += seconds;
    }

    /// A provider call that failed; `class` is rate_limited, server, timeout, connect, client or
    /// malformed (never anything from the response, which could echo a key).
    pub fn provider_error(&self, provider: &str, class: &'static str) {
        if let Ok(mut state) = self.state.lock() {
            *state
                .provider_errors
                .entry((provider.to_string(), class))
                .or_default() += 1;
        }
    }

    pub fn set_connected(&self, connected: bool) {
        if let Ok(mut state) = self.state.lock() {
            state.connected = connected;
        }
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let Ok(state) = self.state.lock() else {
            return String::new();
        };
        let mut out = String::new();
        let _ = writeln!(out, "# HELP bulkhead_worker_connected Whether the worker holds a database session (1) or is reconnecting (0).");
        let _ = writeln!(out, "# TYPE bulkhead_worker_connected gauge");
        let _ = writeln!(
            out,
            "bulkhead_worker_connected {}",
            u8::from(state.connected)
        );
        let _ = writeln!(out, "# HELP bulkhead_jobs_total Jobs this worker finished, by kind and outcome (done, failed).");
        let _ = writeln!(out, "# TYPE bulkhead_jobs_total counter");
        for ((kind, outcome), n) in &state.jobs {
            let kind = label(kind);
            let _ = writeln!(
                out,
                "bulkhead_jobs_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# HELP bulkhead_provider_errors_total Failed provider calls, by provider and class (rate_limited, server, timeout, connect, client, malformed).");
        let _ = writeln!(out, "# TYPE bulkhead_provider_errors_total counter");
        for ((provider, class), n) in &state.provider_errors {
            let provider = label(provider);
            let _ = writeln!(
                out,
                "bulkhead_provider_errors_total{{provider=\"{provider}\",class=\"{class}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP bulkhead_job_duration_seconds Time a job took to run, by kind."
        );
        let _ = writeln!(out, "# TYPE bulkhead_job_duration_seconds histogram");
        for (kind, h) in &state.durations {
            let kind = label(kind);
            for (bound, count) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(out, "bulkhead_job_duration_seconds_bucket{{kind=\"{kind}\",le=\"{bound}\"}} {count}");
            }
            let _ = writeln!(
                out,
                "bulkhead_job_duration_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "bulkhead_job_duration_seconds_sum{{kind=\"{kind}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "bulkhead_job_duration_seconds_count{{kind=\"{kind}\"}} {}",
                h.count
            );
        }
        out
    }
}

/// Answers GET /metrics on `listener` until the task is dropped; anything else gets 404. At most
/// 16 connections at once, each given 5 seconds to send its request.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(16));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (mut stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                // Out of file descriptors, say: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let _permit = permit;
            let mut request = Vec::with_capacity(1024);
            let mut chunk = [0u8; 512];
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let (status, body) = if request.starts_with(b"GET /metrics ") {
                ("200 OK", metrics.render())
            } else {
                ("404 Not Found", "not found\n".to_string())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

/// A label value in the text format: backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_escaped_labels() {
        let metrics = Metrics::default();
        metrics.set_connected(true);
        metrics.job_finished("noop", "done", Duration::from_millis(3));
        metrics.job_finished("noop", "done", Duration::from_millis(700));
        metrics.job_finished("odd\"kind\n", "failed", Duration::from_secs(200));
        let text = metrics.render();
        assert!(text.contains("bulkhead_worker_connected 1\n"), "{text}");
        assert!(
            text.contains("bulkhead_jobs_total{kind=\"noop\",outcome=\"done\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("bulkhead_job_duration_seconds_bucket{kind=\"noop\",le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("bulkhead_job_duration_seconds_bucket{kind=\"noop\",le=\"1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("bulkhead_job_duration_seconds_count{kind=\"noop\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("kind=\"odd\\\"kind\\n\",outcome=\"failed\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "bulkhead_job_duration_seconds_bucket{kind=\"odd\\\"kind\\n\",le=\"120\"} 0\n"
            ),
            "{text}"
        );
    }
}
