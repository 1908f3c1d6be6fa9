-- End users (bulkhead_end_user, PostgREST's `authenticated`): the tenant comes only from verified
-- JWT claims. Attacks of an end user without a tenant claim, with a claim for A trying to reach B,
-- and through user_metadata; each beside its twin, the same moves by a role holding bulkhead_app
-- (what the README used to grant to `authenticated`), which succeed. Then refusals as PostgREST
-- answers them, and bulkhead.doctor() finding the deployment mistakes.
\set SHOW_CONTEXT never
begin;
set client_min_messages = warning;
create role regress_eu in role bulkhead_end_user;
create role regress_eu_as_app in role bulkhead_app;
create role regress_eu_admin in role bulkhead_admin;
insert into bulkhead.tenants (id, slug, name, pinecone_namespace) values
    ('00000000-0000-4000-8000-00000000000a', 'eu-a', 'Acme', 'tenant-a'),
    ('00000000-0000-4000-8000-00000000000b', 'eu-b', 'Globex', 'tenant-b');
select bulkhead.set_embedding_dims(t, 3) from unnest(array['00000000-0000-4000-8000-00000000000a',
    '00000000-0000-4000-8000-00000000000b']::uuid[]) t;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
select bulkhead.ingest_document('a-doc', '[{"content": "Acme secret roadmap", "embedding": [1, 0, 0]}]') is not null;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select bulkhead.ingest_document('b-doc', '[{"content": "Globex secret pricing", "embedding": [1, 0, 0]}]') is not null;
select bulkhead.set_tenant(null);
insert into bulkhead.prices (provider, model, effective_from, input_per_mtok, output_per_mtok)
values ('openai', 'eu-model', '2025-01-01', 1000, 1000);
select bulkhead.set_skeleton('eu-tpl', 'Q: {{ vars.q }}');
select bulkhead.publish_prompt('00000000-0000-4000-8000-00000000000a', 'eu-tpl', '{}');
select bulkhead.activate_prompt('00000000-0000-4000-8000-00000000000a', 'eu-tpl', 1);
-- A's budget holds nothing: every call is refused.
select bulkhead.set_budget('00000000-0000-4000-8000-00000000000a', 60, 100000, 100000, 0);
select bulkhead.set_tenant(null);

create function pg_temp.attempt(statement text) returns text language plpgsql as $$
declare
    result text;
begin
    execute statement into result;
    return 'ok: ' || coalesce(result, 'NULL');
exception when others then
    return 'ERROR ' || sqlstate || ': ' || sqlerrm;
end
$$;
grant execute on function pg_temp.attempt(text) to public;
-- The claims PostgREST sets for a request (transaction-local, as PostgREST does).
create function pg_temp.claims(claims text) returns void language sql
    as $$ select set_config('request.jwt.claims', claims, true) $$;
grant execute on function pg_temp.claims(text) to public;

-- 1. No tenant claim: sees nothing, and cannot choose a tenant.
set local role regress_eu;
select pg_temp.claims('{"role": "authenticated", "sub": "user-1"}');
select bulkhead.current_tenant() as tenant_without_claim;
select count(*) as documents_seen from bulkhead.documents;
select pg_temp.attempt($q$select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b')$q$) as set_tenant;
select pg_temp.attempt($q$select bulkhead.publish_prompt('00000000-0000-4000-8000-00000000000b', 'eu-tpl', '{}')$q$) as name_a_tenant;
select pg_temp.attempt($q$select count(*) from bulkhead.tenant_search('[1, 0, 0]')$q$) as search;
select pg_temp.attempt($q$select bulkhead.complete('eu-tpl', '{"q": "hi"}', 'eu-model', 5)$q$) as complete;
-- Only user_metadata names a tenant: end users edit it themselves, so it counts for nothing.
select pg_temp.claims('{"role": "authenticated", "user_metadata": {"tenant_id": "00000000-0000-4000-8000-00000000000b"}}');
select bulkhead.current_tenant() as tenant_from_user_metadata, (select count(*) from bulkhead.documents) as documents_seen;
-- The twin: the backend role (granted to `authenticated` by the old README) picks B.
set local role regress_eu_as_app;
select pg_temp.attempt($q$select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b')$q$) as app_set_tenant;
select string_agg(content, ', ') as app_reads from bulkhead.documents d join bulkhead.chunks c on c.document_id = d.id;
select bulkhead.set_tenant(null);

-- 2. A claim for A: A's rows only, and no way to B.
set local role regress_eu;
select pg_temp.claims('{"role": "authenticated", "app_metadata": {"tenant_id": "00000000-0000-4000-8000-00000000000a"}}');
select bulkhead.current_tenant() = '00000000-0000-4000-8000-00000000000a' as tenant_from_claim;
select content from bulkhead.tenant_search('[1, 0, 0]');
select pg_temp.attempt($q$select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b')$q$) as switch_to_b;
select pg_temp.attempt($q$select bulkhead.rollback_prompt('00000000-0000-4000-8000-00000000000b', 'eu-tpl')$q$) as act_for_b;
select pg_temp.attempt($q$select bulkhead.budget_check('eu-model', 1, 1)$q$) as budget_check;
select pg_temp.attempt($q$select bulkhead.ledger_record(gen_random_uuid(), '{"prompt_tokens": 0, "completion_tokens": 0}', 'x')$q$) as ledger_record;
select pg_temp.attempt($q$select count(*) from bulkhead.ledger$q$) as ledger;
select pg_temp.attempt($q$select count(*) from bulkhead.prompt_versions$q$) as prompt_versions;
select pg_temp.attempt($q$lock table bulkhead.chunks in share mode$q$) as lock_chunks;

-- 3. Refusals. Outside PostgREST: PT429 with its JSON detail. Through PostgREST (request.method
-- is set for the request): PostgREST's custom error, status 429 and no Retry-After here (the
-- request can never fit a zero budget).
select pg_temp.attempt($q$select bulkhead.complete('eu-tpl', '{"q": "hi"}', 'eu-model', 5)$q$) as refused;
create function pg_temp.raised(statement text) returns table (state text, message text, detail text)
language plpgsql as $$
declare
    s text; m text; d text;
begin
    execute statement;
    return;
exception when others then
    get stacked diagnostics s = returned_sqlstate, m = message_text, d = pg_exception_detail;
    return query select s, m, d;
end
$$;
grant execute on function pg_temp.raised(text) to public;
select set_config('request.method', 'POST', true) is not null as via_postgrest;
select state, message::jsonb - 'details' as message, message::jsonb ->> 'details' as details, detail::jsonb as status_and_headers
from pg_temp.raised($q$select bulkhead.complete('eu-tpl', '{"q": "hi"}', 'eu-model', 5)$q$);
reset role;
-- A rate limit refusal carries Retry-After (seconds, rounded up).
select bulkhead.set_budget('00000000-0000-4000-8000-00000000000a', 1, 100000, 100000, 100);
set local role regress_eu;
select pg_temp.attempt($q$select bulkhead.complete('eu-tpl', '{"q": "first"}', 'eu-model', 5) > 0$q$) as first_call;
select state, message::jsonb ->> 'message' as message, detail::jsonb -> 'status' as status,
       (detail::jsonb -> 'headers' ->> 'Retry-After')::int between 1 and 60 as retry_after_seconds
from pg_temp.raised($q$select bulkhead.complete('eu-tpl', '{"q": "second"}', 'eu-model', 5)$q$);
select set_config('request.method', '', true) is not null as not_postgrest;
reset role;

-- 4. doctor(): the deployment's mistakes, planted one by one (only the planted roles are shown:
-- the cluster's other roles belong to other tests).
set local role regress_eu_admin;
select check_name, severity from bulkhead.doctor() where detail like '%regress\_doctor%';
reset role;
create role regress_doctor_bypass bypassrls in role bulkhead_admin;
create role regress_doctor_both in role bulkhead_end_user, bulkhead_app;
create role regress_doctor_noinherit noinherit in role bulkhead_end_user;
create role regress_doctor_svc bypassrls;
grant select on bulkhead.chunks to regress_doctor_svc;
create role regress_doctor_grant_noinherit;
grant bulkhead_end_user to regress_doctor_grant_noinherit with inherit false;
-- The console's roles: support beside the end-user role, and a member of the sums' owner.
create role regress_doctor_support_eu in role bulkhead_end_user, bulkhead_support;
create role regress_doctor_reporter in role bulkhead_reporter;
-- A grant WITH ADMIN only: its holder can grant the role to itself.
create role regress_doctor_reporter_admin;
grant bulkhead_reporter to regress_doctor_reporter_admin with admin true, inherit false, set false;
alter role bulkhead_reporter login;
set local role regress_eu_admin;
select check_name, severity, regexp_replace(detail, ':.*', '') as detail
from bulkhead.doctor() where detail like '%regress\_doctor%' order by 1, 3;
select check_name, severity from bulkhead.doctor() where detail like 'role bulkhead\_reporter can log in%';
rollback;
