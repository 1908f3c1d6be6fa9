#!/usr/bin/env bash
# The CPU cost of admission's input-token bound (bulkhead.input_token_bound) on 256 KiB texts of
# the worst shapes beside English prose, in one run. Usage: bench/tokens/run.sh [model]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo run --quiet --locked --release -p bench-tokens -- "${1:-gpt-4o-mini}"
