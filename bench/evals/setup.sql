-- Eval benchmark fixtures: 4 tenants with an active version of one support prompt and 500 eval
-- cases each (deterministic assertions only: 8 per case), tenant 5 with 20 cases that pass (the
-- gate's benchmark), tenant 6 with none (the gate off), a shared-pool credential for the
-- zero-latency fake, and budgets that never refuse. Run as the superuser with
-- bulkhead.eval_gate_empty_set = allow (the first activations come before any case).
set client_min_messages = warning;
do $$
begin
    if not exists (select from pg_roles where rolname = 'bulkhead_bench_app') then
        create role bulkhead_bench_app login in role bulkhead_app;
    end if;
    if not exists (select from pg_roles where rolname = 'bulkhead_bench_admin') then
        create role bulkhead_bench_admin login in role bulkhead_admin;
    end if;
    if not exists (select from pg_roles where rolname = 'bulkhead_bench_worker') then
        create role bulkhead_bench_worker login in role bulkhead_worker;
    end if;
end
$$;
create schema if not exists bench;
grant usage on schema bench to public;
create or replace function bench.tenant_id(i int) returns uuid language sql immutable
    as $$ select ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid $$;
insert into bulkhead.tenants (id, slug, name, pinecone_namespace)
select bench.tenant_id(i), 'bench-' || i, 'Bench ' || i, 'tenant-' || bench.tenant_id(i)
from generate_series(1, 6) i;
select bulkhead.set_credential(null, 'openai', 'env:BENCH_OPENAI_KEY', 'shared_pool');
select bulkhead.set_budget(bench.tenant_id(i), 10000000, 2000000000, 2000000000, 1000000)
from generate_series(1, 6) i;
select bulkhead.set_skeleton('support', $t$You are the support assistant of {{ slots.display_name }}.
{% if slots.banned_topics %}Never discuss: {{ slots.banned_topics | join(', ') }}.
{% endif %}Customer asks: {{ vars.question }}$t$);
select bulkhead.publish_prompt(bench.tenant_id(i), 'support',
    jsonb_build_object('display_name', 'Bench ' || i, 'banned_topics', jsonb_build_array('crypto', 'politics')))
from generate_series(1, 6) i;
select bulkhead.publish_prompt(bench.tenant_id(i), 'support',
    jsonb_build_object('display_name', 'Bench ' || i || ' v2', 'banned_topics', jsonb_build_array('crypto', 'politics')))
from generate_series(1, 6) i;
select bulkhead.activate_prompt(bench.tenant_id(i), 'support', 1) from generate_series(1, 6) i;
select bulkhead.set_eval_set(bench.tenant_id(i), 'support', 'gpt-4o-mini', max_output_tokens => 64)
from generate_series(1, 5) i;
select count(bulkhead.add_eval_case(bench.tenant_id(i), 'support',
    jsonb_build_object('question', 'Question ' || n || ' of tenant ' || i || ': where is my order?'),
    '[{"type": "contains", "value": "order"}, {"type": "not_contains", "value": "crypto"},
      {"type": "regex", "value": "(?i)\\border\\b"}, {"type": "is_json"},
      {"type": "json_schema", "value": {"type": "object", "required": ["answer"]}},
      {"type": "banned_topics_absent"}, {"type": "max_output_tokens", "value": 64},
      {"type": "max_cost_usd", "value": 0.01}]'))
from generate_series(1, 4) i, generate_series(1, 500) n;
select count(bulkhead.add_eval_case(bench.tenant_id(5), 'support', jsonb_build_object('question', 'Question ' || n),
    '[{"type": "max_output_tokens", "value": 1000}, {"type": "not_contains", "value": "crypto"}]'))
from generate_series(1, 20) n;

-- make db checks passwords (PGPASSFILE holds the development one).
alter role bulkhead_bench_app password :'dev_password';
alter role bulkhead_bench_admin password :'dev_password';
alter role bulkhead_bench_worker password :'dev_password';
