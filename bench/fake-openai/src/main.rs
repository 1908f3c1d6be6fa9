//! Test double for benchmarks only: a FAKE OpenAI server that answers `POST /v1/chat/completions`
//! at once with a fixed answer and usage, in OpenAI's wire format, over HTTP/1.1 keep-alive; a
//! request with `"stream": true` gets the same answer as server-sent events (three content
//! chunks, the finish chunk, the usage chunk when `stream_options.include_usage` asks, [DONE]).
//! The Python fake (tests/fakes/fake_providers.py) has faults and more endpoints; this one is
//! here so that the benchmark measures the worker, not the fake. Prints "listening on ADDR".

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .skip_while(|a| a != "--port")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {}", listener.local_addr()?);
    let counter = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = listener.accept().await?;
        let counter = Arc::clone(&counter);
        tokio::spawn(async move {
            let _ = serve(stream, &counter).await;
        });
    }
}

async fn serve(mut stream: TcpStream, counter: &AtomicU64) -> std::io::Result<()> {
    let mut buffer = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        // One request: headers up to the blank line, then content-length bytes of body.
        let (head_end, body_len) = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                break (end + 4, length);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..n]);
        };
        while buffer.len() < head_end + body_len {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..n]);
        }
        let request =
            String::from_utf8_lossy(&buffer[head_end..head_end + body_len]).replace(' ', "");
        buffer.drain(..head_end + body_len);
        let id = counter.fetch_add(1, Ordering::Relaxed);
        let (content_type, body) = if request.contains("\"stream\":true") {
            let chunk = |delta: &str| {
                format!(
                    "data: {{\"id\":\"chatcmpl-bench-{id}\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":null}}]}}\n\n"
                )
            };
            let mut body = String::new();
            for word in ["o", "k", "!"] {
                body.push_str(&chunk(&format!("{{\"content\":\"{word}\"}}")));
            }
            body.push_str(&format!(
                "data: {{\"id\":\"chatcmpl-bench-{id}\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\n"
            ));
            if request.contains("\"include_usage\":true") {
                body.push_str(&format!(
                    "data: {{\"id\":\"chatcmpl-bench-{id}\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{{\"prompt_tokens\":10,\"completion_tokens\":3,\"total_tokens\":13}}}}\n\n"
                ));
            }
            body.push_str("data: [DONE]\n\n");
            ("text/event-stream", body)
        } else {
            (
                "application/json",
                format!(
                    r#"{{"id":"chatcmpl-bench-{id}","object":"chat.completion","model":"gpt-4o-mini","choices":[{{"index":0,"message":{{"role":"assistant","content":"ok"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":10,"completion_tokens":1,"total_tokens":11}}}}"#
                ),
            )
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(response.as_bytes()).await?;
    }
}
