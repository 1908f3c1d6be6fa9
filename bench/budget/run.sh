#!/usr/bin/env bash
# Budget admission benchmark: Bulkhead's budget_check (pgbench), on the table path and in shared
# memory (bulkhead.memory_admission), against the seed's design, a Redis token bucket in Lua
# (redis-benchmark), side by side in one run; then the overspend of each under 64 concurrent
# clients. Runs on its own cluster (see env.sh). Usage: bench/budget/run.sh [seconds per run]
set -euo pipefail
# shellcheck source=bench/budget/env.sh
source "$(dirname "$0")/env.sh"
super="postgres://postgres@127.0.0.1:$port"
duration=${1:-10}
redis_port=6390
out=$home/bench-budget
mkdir -p "$out"

# Redis from Debian, and the Python clients for the overspend run, installed once.
if ! command -v redis-server >/dev/null; then
    apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null
fi
if [ ! -x "$home/bench-venv/bin/python" ]; then
    python3 -m venv "$home/bench-venv"
    "$home/bench-venv/bin/pip" install -q 'redis==5.2.1' 'psycopg[binary]==3.2.10'
fi
redis-cli -p $redis_port shutdown nosave >/dev/null 2>&1 || true
redis-server --port $redis_port --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --logfile "$out/redis.log" --dir "$out"
trap 'redis-cli -p $redis_port shutdown nosave >/dev/null 2>&1 || true' EXIT

bench_cluster restart  # (re)started: the installed library may be newer than the running one
psql() { "$pgi/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
psql -d "$super/postgres" -c "set client_min_messages = warning" -c "drop database if exists $db with (force)" -c "create database $db"
psql -d "$super/$db" -c "set client_min_messages = warning" -c "create extension bulkhead cascade" \
    -f "$here/schema.sql" -f "$here/setup.sql"
sha=$(redis-cli -p $redis_port script load "$(cat "$here/bucket.lua")")

# p50 / p99 in ms from pgbench's per-transaction log (3rd column: latency in microseconds).
percentiles() {
    cat "$@" | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {printf "%.2f %.2f", a[int(NR*0.5)]/1000, a[int(NR*0.99)]/1000}'
}

# One pgbench cell as `role`; prints "tps p50 p99".
pgbench_cell() {
    local role=$1 workload=$2 clients=$3 threads
    threads=$(( clients < 2 ? 1 : 2 ))
    rm -f "$out"/pgbench_log.*
    local tps
    tps=$(cd "$out" && "$pgi/pgbench" -n -M prepared -c "$clients" -j "$threads" -T "$duration" -l \
          -f "$here/admit_$workload.sql" "postgres://$role@127.0.0.1:$port/$db" 2>/dev/null \
          | awk '/^tps/ {print int($3)}')
    echo "$tps $(percentiles "$out"/pgbench_log.*)"
}

# Before each memory cell: a restart forgets the reservations earlier cells left open (nothing
# here settles), then one admission per tenant loads each tenant's slot, as traffic would.
fresh_memory() {
    bench_cluster restart
    for i in $(seq 1 1000); do
        printf "begin; select bulkhead.set_tenant(bench.tenant_id(%d)); select bulkhead.budget_check('bench-model', 100, 100); commit;\n" "$i"
    done | psql -d "postgres://bulkhead_bench_memory_app@127.0.0.1:$port/$db" >/dev/null
}

echo "| workload | clients | table path checks/s | in memory checks/s | p50 ms | p99 ms | Redis Lua checks/s | p50 ms | p99 ms | table / Redis | memory / Redis |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for workload in hot spread; do
    for clients in 1 16 64; do
        # A tenant admitted in memory since the server started stays there, from every session:
        # the table arm starts from a restart too.
        bench_cluster restart
        read -r table_tps _ _ <<<"$(pgbench_cell bulkhead_bench_app "$workload" "$clients")"
        fresh_memory
        read -r memory_tps p50 p99 <<<"$(pgbench_cell bulkhead_bench_memory_app "$workload" "$clients")"
        if [ "$workload" = hot ]; then keys="bench:hot:bucket bench:hot:spent"; rand=""; else
            keys="bench:__rand_int__:bucket bench:__rand_int__:spent"; rand="-r 1000"; fi
        requests=$(( duration * 20000 ))
        # shellcheck disable=SC2086
        csv=$(redis-benchmark -p $redis_port -c "$clients" -n $requests $rand --csv \
              EVALSHA "$sha" 2 $keys 2000000000 2000000000 2000000000 100 100 0.0002 100000000000 | tail -1)
        rps=$(echo "$csv" | tr -d '"' | cut -d, -f2 | cut -d. -f1)
        rp50=$(echo "$csv" | tr -d '"' | cut -d, -f5)
        rp99=$(echo "$csv" | tr -d '"' | cut -d, -f7)
        table_ratio=$(awk -v a="$table_tps" -v b="$rps" 'BEGIN {printf "%.2f", a / b}')
        memory_ratio=$(awk -v a="$memory_tps" -v b="$rps" 'BEGIN {printf "%.2f", a / b}')
        label=$([ "$workload" = hot ] && echo "1 hot tenant" || echo "1,000 tenants")
        echo "| $label | $clients | $table_tps | $memory_tps | $p50 | $p99 | $rps | $rp50 | $rp99 | $table_ratio | $memory_ratio |"
    done
done

echo
echo "Overspend: 64 clients, budget of exactly 500 calls, 20 ms simulated provider call between check and charge"
"$home/bench-venv/bin/python" "$here/overspend.py" "$super/$db" $redis_port "$here/bucket.lua"
