//! bench/gateway's load generator: `--concurrency N` clients each send chat completions back to
//! back to `--url` for `--seconds S` (after a one-second warm-up), plain or `--stream`, and it
//! prints one JSON line: calls/s, latency p50/p99, time to first byte p50/p99 (ms), statuses.
//! A 429 counts as a refusal, not an error: the budget runs use it. `--rate R` paces the clients
//! to R calls/s in all (each client starts a call every N/R s, or at once when it is late), to
//! measure the latency a gateway adds when it is not saturated.

use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let url = arg("--url").expect("--url http://host:port/v1/chat/completions");
    let key = arg("--key").unwrap_or_else(|| "sk-bench".into());
    let model = arg("--model").unwrap_or_else(|| "gpt-4o-mini".into());
    let concurrency: usize = arg("--concurrency")
        .and_then(|c| c.parse().ok())
        .unwrap_or(1);
    let seconds: f64 = arg("--seconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    let max_calls: u64 = arg("--calls")
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX);
    let stream = std::env::args().any(|a| a == "--stream");
    let interval = arg("--rate")
        .and_then(|r| r.parse::<f64>().ok())
        .filter(|r| *r > 0.0)
        .map(|rate| Duration::from_secs_f64(concurrency as f64 / rate));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let body = serde_json::json!({
        "model": model, "stream": stream, "max_tokens": 16,
        "messages": [{"role": "user", "content": "Say ok."}],
    });
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let warmup = Instant::now() + Duration::from_secs(1);
    let end = warmup + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for client_index in 0..concurrency {
        let (client, url, key, body, calls) = (
            client.clone(),
            url.clone(),
            key.clone(),
            body.clone(),
            calls.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut statuses = BTreeMap::<u16, u64>::new();
            // Paced clients start spread over one interval.
            let mut next = interval
                .map(|i| Instant::now() + i.mul_f64(client_index as f64 / concurrency as f64));
            while Instant::now() < end {
                if let (Some(at), Some(i)) = (next, interval) {
                    tokio::time::sleep_until(at.into()).await;
                    next = Some((at + i).max(Instant::now()));
                }
                if calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= max_calls {
                    break;
                }
                let started = Instant::now();
                let response = client.post(&url).bearer_auth(&key).json(&body).send().await;
                let (status, first) = match response {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let mut chunks = response.bytes_stream();
                        let mut first = None;
                        while let Some(chunk) = chunks.next().await {
                            if first.is_none() && chunk.is_ok() {
                                first = Some(started.elapsed());
                            }
                        }
                        (status, first)
                    }
                    Err(_) => (0, None),
                };
                let took = started.elapsed();
                *statuses.entry(status).or_default() += 1;
                if started >= warmup || max_calls != u64::MAX {
                    samples.push((took, first.unwrap_or(took), status));
                }
            }
            (samples, statuses)
        }));
    }
    let mut latency = Vec::new();
    let mut ttfb = Vec::new();
    let mut statuses = BTreeMap::<u16, u64>::new();
    let mut ok = 0u64;
    for task in tasks {
        let (samples, counts) = task.await.unwrap();
        for (status, n) in counts {
            *statuses.entry(status).or_default() += n;
        }
        for (took, first, status) in samples {
            if status == 200 {
                ok += 1;
                latency.push(took.as_secs_f64() * 1000.0);
                ttfb.push(first.as_secs_f64() * 1000.0);
            }
        }
    }
    latency.sort_by(f64::total_cmp);
    ttfb.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({
            "concurrency": concurrency, "stream": stream, "ok": ok,
            "calls_per_s": ok as f64 / seconds,
            "p50_ms": percentile(&latency, 0.5), "p99_ms": percentile(&latency, 0.99),
            "ttfb_p50_ms": percentile(&ttfb, 0.5), "ttfb_p99_ms": percentile(&ttfb, 0.99),
            "statuses": statuses,
        })
    );
}
