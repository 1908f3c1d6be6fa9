#!/usr/bin/env bash
# How fast can any durable admission be here? Runs, side by side, pgbench transactions of growing
# weight against the database run.sh prepared: a bare round trip, set_tenant, one UPDATE, one
# UPDATE plus one INSERT (all committed asynchronously, as budget_check is), and budget_check.
# Usage: bench/budget/run.sh first, then bench/budget/floor.sh [seconds per run]
set -euo pipefail
# shellcheck source=bench/budget/env.sh
source "$(dirname "$0")/env.sh"
duration=${1:-6}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$pgi/psql" -X -q -v ON_ERROR_STOP=1 -d "postgres://postgres@127.0.0.1:$port/$db" <<'SQL'
set client_min_messages = warning;
create table if not exists bench.counter (id int primary key, n bigint not null) with (fillfactor = 50);
insert into bench.counter select i, 0 from generate_series(1, 1000) i on conflict do nothing;
create table if not exists bench.log (tenant int not null, id uuid primary key default gen_random_uuid(),
                                      at timestamptz not null default now());
grant select, insert, update on bench.counter, bench.log to bulkhead_bench_app;
SQL

printf 'SELECT 1;\n' > "$work/round_trip.sql"
cat > "$work/set_tenant.sql" <<'SQL'
\set n random(1, 1000)
SELECT bulkhead.set_tenant(('00000000-0000-4000-8000-' || lpad(to_hex(:n), 12, '0'))::uuid) \; SELECT 1;
SQL
printf '\\set n random(1, 1000)\nUPDATE bench.counter SET n = n + 1 WHERE id = :n;\n' > "$work/update.sql"
printf '\\set n random(1, 1000)\nUPDATE bench.counter SET n = n + 1 WHERE id = :n \\; INSERT INTO bench.log (tenant) VALUES (:n);\n' > "$work/update_insert.sql"
cp "$here/check_spread.sql" "$work/budget_check.sql"

echo "| transaction (1,000 tenants) | 1 client | 16 clients | 64 clients |"
echo "|---|---:|---:|---:|"
for script in round_trip set_tenant update update_insert budget_check; do
    row="| $script"
    for clients in 1 16 64; do
        threads=$(( clients < 2 ? 1 : 2 ))
        tps=$(PGOPTIONS='-c synchronous_commit=off' "$pgi/pgbench" -n -M simple -c "$clients" -j "$threads" \
              -T "$duration" -f "$work/$script.sql" "postgres://bulkhead_bench_app@127.0.0.1:$port/$db" 2>/dev/null \
              | awk '/^tps/ {print int($3)}')
        row="$row | $tps"
    done
    echo "$row |"
done
