//! Times `bulkhead_policy::tokens::text_tokens` (what `bulkhead.input_token_bound` runs for an
//! OpenAI model) on 256 KiB texts of the shapes that tokenize worst or take the tokenizer longest,
//! beside English prose of the same size, in one run. Prints a Markdown table for BENCHMARKS.md.

use bulkhead_policy::tokens::text_tokens;
use std::time::{Duration, Instant};

const SIZE: usize = 256 * 1024;

fn fill(unit: &str) -> String {
    unit.repeat(SIZE / unit.len())
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let model = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "gpt-4o-mini".into());
    let started = Instant::now();
    let _ = text_tokens("openai", &model, "warm up");
    let load = started.elapsed();
    let english =
        fill("The quick brown fox jumps over the lazy dog, and the support team answers. ");
    let cases = [
        ("English prose", english.clone()),
        ("one run of spaces", fill(" ")),
        ("one run of newlines", fill("\n")),
        ("one long word", fill("a")),
        ("digits", fill("7")),
        ("CJK", fill("漢")),
        ("rare symbols", fill("⟁⟟⧖⧗⨳")),
        ("punctuation pairs", fill("!?")),
        ("spaces and tabs", fill(" \t")),
    ];
    let baseline = median((0..5).map(|_| time(&model, &english)).collect());
    println!(
        "model {model}; BPE load (once per backend): {:.1} ms",
        ms(load)
    );
    println!();
    println!("| text (256 KiB) | tokens | method | median of 5 | × English |");
    println!("|---|---:|---|---:|---:|");
    for (name, text) in cases {
        let (tokens, method) = text_tokens("openai", &model, &text);
        let took = median((0..5).map(|_| time(&model, &text)).collect());
        println!(
            "| {name} | {tokens} | {} | {:.1} ms | {:.1} |",
            method.name(),
            ms(took),
            took.as_secs_f64() / baseline.as_secs_f64()
        );
    }
}

fn time(model: &str, text: &str) -> Duration {
    let started = Instant::now();
    std::hint::black_box(text_tokens("openai", model, text));
    started.elapsed()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
