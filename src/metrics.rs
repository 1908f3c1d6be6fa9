//! Prometheus metrics of the worker and the gateway (prometheus-client registries, served by
//! axum at GET /metrics). Labels carry only names this program chose (kinds, providers,
//! endpoints, outcomes), never anything from a request or a response, which could echo a key.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

/// Upper bounds (seconds) of the job duration histogram.
const JOB_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0];
/// Upper bounds (seconds) of the gateway's admission and upstream histograms.
const CALL_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn job_histogram() -> Histogram {
    Histogram::new(JOB_BUCKETS)
}

fn call_histogram() -> Histogram {
    Histogram::new(CALL_BUCKETS)
}

/// A label value from a name we chose (job kind, provider): prometheus-client writes label
/// values unescaped, so anything outside a plain name's characters becomes `_`.
fn label(value: &str) -> String {
    value
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.:-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn render(registry: &Registry) -> String {
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    kind: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderErrorLabels {
    provider: String,
    class: &'static str,
}

/// The worker's metrics, shared by the claim loop, the job tasks and the endpoint.
pub struct Metrics {
    registry: Registry,
    connected: Gauge,
    jobs: Family<JobLabels, Counter>,
    durations: HistogramFamily<KindLabels>,
    provider_errors: Family<ProviderErrorLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let connected = Gauge::default();
        let jobs = Family::<JobLabels, Counter>::default();
        let durations =
            HistogramFamily::<KindLabels>::new_with_constructor(job_histogram as fn() -> Histogram);
        let provider_errors = Family::<ProviderErrorLabels, Counter>::default();
        registry.register(
            "bulkhead_worker_connected",
            "Whether the worker holds a database session (1) or is reconnecting (0)",
            connected.clone(),
        );
        registry.register(
            "bulkhead_jobs",
            "Jobs this worker finished, by kind and outcome (done, failed)",
            jobs.clone(),
        );
        registry.register(
            "bulkhead_job_duration_seconds",
            "Time a job took to run, by kind",
            durations.clone(),
        );
        registry.register(
            "bulkhead_provider_errors",
            "Failed provider calls, by provider and class (rate_limited, server, timeout, connect, client, malformed)",
            provider_errors.clone(),
        );
        Metrics {
            registry,
            connected,
            jobs,
            durations,
            provider_errors,
        }
    }
}

impl Metrics {
    pub fn job_finished(&self, kind: &str, outcome: &'static str, took: Duration) {
        self.jobs
            .get_or_create(&JobLabels {
                kind: label(kind),
                outcome,
            })
            .inc();
        self.durations
            .get_or_create(&KindLabels { kind: label(kind) })
            .observe(took.as_secs_f64());
    }

    /// A provider call that failed; `class` is rate_limited, server, timeout, connect, client or
    /// malformed.
    pub fn provider_error(&self, provider: &str, class: &'static str) {
        self.provider_errors
            .get_or_create(&ProviderErrorLabels {
                provider: label(provider),
                class,
            })
            .inc();
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.set(i64::from(connected));
    }

    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    provider: String,
    direction: &'static str,
}

/// The gateway's metrics.
pub struct GatewayMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    admission: Histogram,
    upstream: HistogramFamily<ProviderLabels>,
    streams_cut: Family<ReasonLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    settle_failures: Counter,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let admission = call_histogram();
        let upstream = HistogramFamily::<ProviderLabels>::new_with_constructor(
            call_histogram as fn() -> Histogram,
        );
        let streams_cut = Family::<ReasonLabels, Counter>::default();
        let tokens = Family::<TokenLabels, Counter>::default();
        let settle_failures = Counter::default();
        registry.register(
            "bulkhead_gateway_requests",
            "Requests answered, by endpoint and outcome (ok, or the error code)",
            requests.clone(),
        );
        registry.register(
            "bulkhead_gateway_admission_seconds",
            "Time of the admission round trip (gateway_admit)",
            admission.clone(),
        );
        registry.register(
            "bulkhead_gateway_upstream_seconds",
            "Time until the provider's answer began (headers received), by provider",
            upstream.clone(),
        );
        registry.register(
            "bulkhead_gateway_streams_cut",
            "Streams ended before the provider finished, by reason (client_left, suspended, shutdown, provider_broke)",
            streams_cut.clone(),
        );
        registry.register(
            "bulkhead_gateway_tokens",
            "Tokens settled, by provider and direction (input, output)",
            tokens.clone(),
        );
        registry.register(
            "bulkhead_gateway_settle_failures",
            "Settle round trips that failed and were retried",
            settle_failures.clone(),
        );
        GatewayMetrics {
            registry,
            requests,
            admission,
            upstream,
            streams_cut,
            tokens,
            settle_failures,
        }
    }
}

impl GatewayMetrics {
    pub fn request(&self, endpoint: &'static str, outcome: &'static str) {
        self.requests
            .get_or_create(&RequestLabels { endpoint, outcome })
            .inc();
    }

    pub fn admitted_in(&self, took: Duration) {
        self.admission.observe(took.as_secs_f64());
    }

    pub fn upstream_in(&self, provider: &str, took: Duration) {
        self.upstream
            .get_or_create(&ProviderLabels {
                provider: label(provider),
            })
            .observe(took.as_secs_f64());
    }

    pub fn stream_cut(&self, reason: &'static str) {
        self.streams_cut
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn tokens(&self, provider: &str, input: u64, output: u64) {
        for (direction, n) in [("input", input), ("output", output)] {
            self.tokens
                .get_or_create(&TokenLabels {
                    provider: label(provider),
                    direction,
                })
                .inc_by(n);
        }
    }

    pub fn settle_failed(&self) {
        self.settle_failures.inc();
    }

    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

/// The Prometheus text format's response.
pub fn response(body: String) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Serves GET /metrics of the worker on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = Arc::clone(&metrics);
            async move { response(metrics.render()) }
        }),
    );
    let _ = axum::serve(listener, app).await;
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
            text.contains("bulkhead_job_duration_seconds_bucket{le=\"0.005\",kind=\"noop\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("bulkhead_job_duration_seconds_count{kind=\"noop\"} 2\n"),
            "{text}"
        );
        assert!(
            !text.contains("kind=\"odd\"kind"),
            "label values are escaped: {text}"
        );
    }

    #[test]
    fn gateway_metrics_name_endpoints_and_outcomes() {
        let metrics = GatewayMetrics::default();
        metrics.request("chat_completions", "ok");
        metrics.tokens("openai", 10, 3);
        metrics.stream_cut("suspended");
        let text = metrics.render();
        assert!(
            text.contains(
                "bulkhead_gateway_requests_total{endpoint=\"chat_completions\",outcome=\"ok\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "bulkhead_gateway_tokens_total{provider=\"openai\",direction=\"output\"} 3\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("bulkhead_gateway_streams_cut_total{reason=\"suspended\"} 1\n"),
            "{text}"
        );
    }
}
