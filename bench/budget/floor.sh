#!/usr/bin/env bash
# How fast can any admission be here? Runs, side by side, pgbench transactions of growing weight
# against the database run.sh prepared: a bare round trip; set_tenant with its tenant lookup on
# every call (bulkhead.remember_tenants off) and as configured; set_tenant plus a Rust
# call that runs no SQL (the ceiling of any admission kept in shared memory); the same through a
# plpgsql SECURITY DEFINER function; one UPDATE; one UPDATE plus one INSERT (all committed
# asynchronously, as budget_check is); budget_check. Last, the Redis Lua bucket of run.sh, in the
# same run, and each row's ratio to it.
# Usage: bench/budget/run.sh first, then bench/budget/floor.sh [seconds per run]
set -euo pipefail
# shellcheck source=bench/budget/env.sh
source "$(dirname "$0")/env.sh"
bench_cluster restart  # the cluster run.sh prepared, on the installed library
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
-- The cheapest function an admission could hide behind in plpgsql: definer, pinned search_path.
create or replace function bench.definer_noop() returns uuid
language plpgsql volatile security definer set search_path to pg_catalog, pg_temp
as $$ begin return bulkhead.current_tenant(); end $$;
grant usage on schema bench to bulkhead_bench_app;
grant execute on function bench.definer_noop() to bulkhead_bench_app;
SQL

printf 'SELECT 1;\n' > "$work/round_trip.sql"
cat > "$work/set_tenant.sql" <<'SQL'
\set n random(1, 1000)
SELECT bulkhead.set_tenant(('00000000-0000-4000-8000-' || lpad(to_hex(:n), 12, '0'))::uuid) \; SELECT 1;
SQL
sed 's/SELECT 1;$/SELECT bulkhead.current_tenant();/' "$work/set_tenant.sql" > "$work/set_tenant_rust_call.sql"
sed 's/SELECT 1;$/SELECT bench.definer_noop();/' "$work/set_tenant.sql" > "$work/set_tenant_definer_call.sql"
printf '\\set n random(1, 1000)\nUPDATE bench.counter SET n = n + 1 WHERE id = :n;\n' > "$work/update.sql"
printf '\\set n random(1, 1000)\nUPDATE bench.counter SET n = n + 1 WHERE id = :n \\; INSERT INTO bench.log (tenant) VALUES (:n);\n' > "$work/update_insert.sql"
cp "$here/check_spread.sql" "$work/budget_check.sql"

# The Redis arm first, so that every row can show its ratio.
redis_port=6390
redis-cli -p $redis_port shutdown nosave >/dev/null 2>&1 || true
redis-server --port $redis_port --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --logfile /dev/null
trap 'redis-cli -p $redis_port shutdown nosave >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
sleep 0.5
sha=$(redis-cli -p $redis_port script load "$(cat "$here/bucket.lua")")
declare -A redis
for clients in 1 16 64; do
    redis[$clients]=$(redis-benchmark -p $redis_port -c "$clients" -n $(( duration * 20000 )) -r 1000 --csv \
        EVALSHA "$sha" 2 bench:__rand_int__:bucket bench:__rand_int__:spent \
        2000000000 2000000000 2000000000 100 100 0.0002 100000000000 | tail -1 | tr -d '"' | cut -d, -f2 | cut -d. -f1)
done

echo "| transaction (1,000 tenants) | 1 client | 16 clients | 64 clients |"
echo "|---|---:|---:|---:|"
cp "$work/set_tenant.sql" "$work/set_tenant_unremembered.sql"
for script in round_trip set_tenant_unremembered set_tenant set_tenant_rust_call set_tenant_definer_call update update_insert budget_check; do
    row="| $script"
    for clients in 1 16 64; do
        threads=$(( clients < 2 ? 1 : 2 ))
        options='-c synchronous_commit=off'
        [ "$script" = set_tenant_unremembered ] && options="$options -c bulkhead.remember_tenants=off"
        tps=$(PGOPTIONS=$options "$pgi/pgbench" -n -M simple -c "$clients" -j "$threads" \
              -T "$duration" -f "$work/$script.sql" "postgres://bulkhead_bench_app@127.0.0.1:$port/$db" 2>/dev/null \
              | awk '/^tps/ {print int($3)}')
        row="$row | $tps ($(awk -v a="$tps" -v b="${redis[$clients]}" 'BEGIN {printf "%.2f", a / b}')×)"
    done
    echo "$row |"
done
echo "| Redis Lua bucket (redis-benchmark) | ${redis[1]} | ${redis[16]} | ${redis[64]} |"
