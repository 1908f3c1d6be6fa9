#!/usr/bin/env bash
# sqlsmith (Debian's) against a database with the extension and two populated tenants, as a
# login in bulkhead_app and one in bulkhead_admin, for a time budget split between them. Counts
#  - server crashes (a backend killed by a signal, from the server log),
#  - internal errors (SQLSTATE XX000 and the XX001/XX002 of corruption, logged with their code
#    for the fuzz logins only: log_error_verbosity = verbose is set on them),
#  - rows of a tenant returned to the application: sqlsmith's sessions have no tenant context,
#    so no tenant row may reach them. Every query sqlsmith ran as the application is replayed
#    and its output searched for the tenants' canaries,
# prints them with the number of queries, and fails unless all three are 0.
# Usage: scripts/fuzz-sql.sh <seconds> <PostgreSQL bin dir> <superuser URL without database> <server log>
set -euo pipefail
seconds=$1 bin=$2 super=$3 server_log=$4
db=bulkhead_fuzz
work=$(mktemp -d)
# FUZZ_KEEP=<dir>: keep sqlsmith's queries, its log, the replay and the server log there.
trap 'if [ -n "${FUZZ_KEEP:-}" ]; then mkdir -p "$FUZZ_KEEP" && cp "$work"/* "$FUZZ_KEEP"/; fi; rm -rf "$work"' EXIT
psql() { "$bin/psql" -X -v ON_ERROR_STOP=1 -q "$@"; }

psql -d "$super/postgres" -c "set client_min_messages = warning" \
    -c "drop database if exists $db with (force)" -c "create database $db"
# The logins prove the development password (make db; PGPASSFILE gives it to psql and sqlsmith).
psql -d "$super/$db" -v dev_password="${BULKHEAD_DEV_PASSWORD:-bulkhead-dev-login}" >/dev/null <<'SQL'
set client_min_messages = warning;
create extension bulkhead cascade;
do $$
begin
    if not exists (select from pg_roles where rolname = 'bulkhead_fuzz_app') then
        create role bulkhead_fuzz_app login in role bulkhead_app;
    end if;
    if not exists (select from pg_roles where rolname = 'bulkhead_fuzz_admin') then
        create role bulkhead_fuzz_admin login in role bulkhead_admin;
    end if;
end
$$;
alter role bulkhead_fuzz_app password :'dev_password';
alter role bulkhead_fuzz_admin password :'dev_password';
alter role bulkhead_fuzz_app set log_error_verbosity = verbose;
alter role bulkhead_fuzz_admin set log_error_verbosity = verbose;
alter role bulkhead_fuzz_app set statement_timeout = '5s';
alter role bulkhead_fuzz_admin set statement_timeout = '5s';
-- Two tenants whose rows carry a canary in every text they hold.
insert into bulkhead.tenants (id, slug, name, pinecone_namespace) values
    ('00000000-0000-4000-8000-0000000f0a01', 'fuzz-a', 'CANARY_TENANT_A', 'tenant-fuzz-a'),
    ('00000000-0000-4000-8000-0000000f0a02', 'fuzz-b', 'CANARY_TENANT_B', 'tenant-fuzz-b');
select bulkhead.set_tenant_settings(t, 'CANARY_TENANT_' || s, 'CANARY_TENANT_' || s, 'CANARY_TENANT_' || s,
                                    array['CANARY_TENANT_' || s])
from (values ('00000000-0000-4000-8000-0000000f0a01'::uuid, 'A'), ('00000000-0000-4000-8000-0000000f0a02', 'B')) v(t, s);
select bulkhead.set_embedding_dims(t, 3), bulkhead.set_budget(t, 100, 100000, 100000, 50)
from unnest(array['00000000-0000-4000-8000-0000000f0a01', '00000000-0000-4000-8000-0000000f0a02']::uuid[]) t;
select bulkhead.set_skeleton('fuzz', 'Answer for {{ slots.name }}: {{ vars.q }}');
select bulkhead.set_price('openai', 'fuzz-model', 1, 2);
SQL
for tenant in 00000000-0000-4000-8000-0000000f0a01:A 00000000-0000-4000-8000-0000000f0a02:B; do
    id=${tenant%%:*} tag=CANARY_TENANT_${tenant##*:}
    psql -d "$super/$db" -c "set client_min_messages = warning" -c "begin" \
        -c "select bulkhead.set_tenant('$id')" \
        -c "select bulkhead.ingest_document('$tag', '[{\"content\": \"$tag\", \"embedding\": [1, 0, 0], \"metadata\": {\"t\": \"$tag\"}}]', '$tag')" \
        -c "select bulkhead.publish_prompt('$id', 'fuzz', '{\"name\": \"$tag\"}')" \
        -c "select bulkhead.ledger_record(bulkhead.budget_check('fuzz-model', 10, 10), '{\"prompt_tokens\": 5, \"completion_tokens\": 5}', 'chatcmpl-$tag')" \
        -c "select bulkhead.enqueue_job('noop', '{\"t\": \"$tag\"}')" \
        -c "commit" >/dev/null
done

log_start=$(stat -c %s "$server_log")
half=$(( seconds / 2 > 1 ? seconds / 2 : 1 ))
run_sqlsmith() {  # login, output prefix
    timeout --signal=INT "$half" sqlsmith --target="host=$(echo "$super" | sed 's|.*@\([^:]*\):.*|\1|') port=$(echo "$super" | sed 's|.*:\([0-9]*\)$|\1|') user=$1 dbname=$db" \
        --exclude-catalog --dump-all-queries --seed=$RANDOM >"$work/$2.queries" 2>"$work/$2.log" || true
}
run_sqlsmith bulkhead_fuzz_app app
run_sqlsmith bulkhead_fuzz_admin admin

# sqlsmith prints each query, then ';', before running it.
queries_app=$(grep -c '^;$' "$work/app.queries" || true)
queries_admin=$(grep -c '^;$' "$work/admin.queries" || true)
# Replay the application's queries, each in its own transaction, and look for tenant rows.
{ echo '\set ON_ERROR_STOP 0'; cat "$work/app.queries"; } \
    | "$bin/psql" -X -q -d "host=$(echo "$super" | sed 's|.*@\([^:]*\):.*|\1|') port=$(echo "$super" | sed 's|.*:\([0-9]*\)$|\1|') user=bulkhead_fuzz_app dbname=$db" \
    >"$work/replay.out" 2>/dev/null || true
# The canaries in any case, and the tenants' ids (a row can show without its text).
leaks=$(grep -ciE 'canary_tenant_|0000000f0a0[12]' "$work/replay.out" || true)
tail -c +"$((log_start + 1))" "$server_log" >"$work/server.log"
crashes=$(grep -c 'terminated by signal' "$work/server.log" || true)
# An internal error is Bulkhead's when raised in its code: a Rust source location (pgrx), or a
# context naming one of its functions. sqlsmith also finds PostgreSQL's own (a location in its
# C sources, e.g. parse_coerce.c, and no Bulkhead function on the way): counted apart.
awk '
    function flush() {
        if (record != "") {
            if (record ~ /LOCATION:  [^\n]*\.rs:[0-9]+/ || record ~ /CONTEXT:[^\n]*bulkhead\./) bulkhead++; else core++
        }
        record = ""; pid = ""
    }
    # Each line of a log record starts with the time and [pid]; continuation lines with a tab.
    /^[0-9]/ {
        match($0, /\[[0-9]+\]/); this = substr($0, RSTART, RLENGTH)
        if (record != "" && (this != pid || $0 !~ /\] (DETAIL|HINT|CONTEXT|LOCATION|STATEMENT): /)) flush()
        if ($0 ~ /ERROR:  XX00[012]:/) { record = $0; pid = this; next }
    }
    { if (record != "") record = record "\n" $0 }
    END { flush(); printf "%d %d\n", bulkhead + 0, core + 0 }
' "$work/server.log" >"$work/internal.counts"
read -r internal core_internal <"$work/internal.counts"
echo "==> sqlsmith for ${seconds}s: $queries_app queries as bulkhead_app, $queries_admin as bulkhead_admin;" \
     "crashes $crashes, internal errors $internal, tenant rows returned to the application $leaks" \
     "(and PostgreSQL's own internal errors, not Bulkhead's: $core_internal)"
# A run that did not run proves nothing: each login must have had its queries.
if [ "$queries_app" -lt 10 ] || [ "$queries_admin" -lt 10 ]; then
    echo "fuzz-sql: sqlsmith ran too few queries to count (see its log):" >&2
    tail -5 "$work/app.log" "$work/admin.log" >&2
    exit 1
fi
if [ "$crashes$internal$leaks" != "000" ]; then
    grep -E 'terminated by signal|ERROR:  (XX000|XX001|XX002):' -A 3 "$work/server.log" | head -40 >&2 || true
    grep -iE -B 5 'canary_tenant_|0000000f0a0[12]' "$work/replay.out" | head -40 >&2 || true
    exit 1
fi
psql -d "$super/postgres" -c "set client_min_messages = warning" -c "drop database $db with (force)"
