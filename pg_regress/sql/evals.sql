-- Evals through the SQL API, with the worker's part played by hand (as in completions.sql):
-- cases under row level security, their assertions checked at insert; runs queued through
-- complete()'s path and scored in the database; the release gate on the pointer itself, for
-- activate_prompt and a direct UPDATE alike; force; the empty-set setting; reuse; a skeleton
-- change gated per tenant; reports that hold one tenant's rows only.
-- Runs as non-superuser members of bulkhead_app, bulkhead_admin and bulkhead_worker; the
-- direct UPDATE is the table owner's (the superuser that created the extension).
\set SHOW_CONTEXT never
begin;
set client_min_messages = warning;
-- The default (the suite's other files run with allow, see the Makefile).
set bulkhead.eval_gate_empty_set = 'refuse';
create role regress_ev_app in role bulkhead_app;
create role regress_ev_admin in role bulkhead_admin;
create role regress_ev_worker in role bulkhead_worker;
insert into bulkhead.tenants (id, slug, name, pinecone_namespace) values
    ('00000000-0000-4000-8000-0000000000e1', 'ev-a', 'Acme', 'tenant-ev-a'),
    ('00000000-0000-4000-8000-0000000000e2', 'ev-b', 'Globex', 'tenant-ev-b'),
    ('00000000-0000-4000-8000-0000000000e3', 'ev-c', 'Initech', 'tenant-ev-c');
create function pg_temp.attempt(statement text) returns text language plpgsql as $$
declare
    result text;
begin
    execute statement into result;
    return 'ok: ' || coalesce(result, 'NULL');
exception when others then
    return 'ERROR ' || sqlstate || ': '
        || regexp_replace(regexp_replace(sqlerrm, '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g'),
                          'run [0-9]+', 'run <n>', 'g');
end
$$;
-- The worker's part: claim every queued job and carry it out, until none is left. A
-- completion's answer is the text of the first entry of `answers` whose key its request
-- contains; an embedding's two vectors are equal when its two texts are; an eval_score job
-- scores, as the worker's does. Returns the jobs carried out.
create function pg_temp.work(answers jsonb) returns int language plpgsql as $$
declare
    j record;
    answered int := 0;
    this_round int;
    reply text;
begin
    loop
        this_round := 0;
        perform bulkhead._set_tenant_within_function(null);
        for j in select * from bulkhead.claim_and_start_jobs('w1', 100) loop
            perform bulkhead._set_tenant_within_function(null);
            if j.kind = 'completion' then
                select a.value #>> '{}' into reply from jsonb_each(answers) a
                where strpos(coalesce(j.payload ->> 'prompt', '') || coalesce((j.payload -> 'request')::text, ''), a.key) > 0
                order by a.key limit 1;
                perform bulkhead._finish_completion(j.job_id, 'w1', '{"prompt_tokens": 20, "completion_tokens": 5}',
                                                    'chatcmpl-ev-' || j.job_id, coalesce(reply, 'no answer scripted'));
            elsif j.kind = 'embedding' then
                perform bulkhead._finish_embedding(j.job_id, 'w1', '{"prompt_tokens": 4}', 'emb-ev-' || j.job_id,
                    case when j.payload -> 'chunks' -> 0 = j.payload -> 'chunks' -> 1 then '[[1, 0], [1, 0]]'
                         else '[[1, 0], [0.6, 0.8]]' end::jsonb);
            else
                begin
                    perform bulkhead.complete_job(j.job_id, 'w1', bulkhead.score_eval_job(j.job_id, 'w1'));
                exception when others then
                    -- As the worker does with a scoring it cannot do: the job fails for good.
                    perform bulkhead._set_tenant_within_function(null);
                    perform bulkhead.fail_job(j.job_id, 'w1', 'scoring failed: ' || sqlerrm, false);
                end;
            end if;
            this_round := this_round + 1;
        end loop;
        answered := answered + this_round;
        exit when this_round = 0;
    end loop;
    perform bulkhead._set_tenant_within_function(null);
    return answered;
end
$$;
grant execute on function pg_temp.attempt(text), pg_temp.work(jsonb) to public;

set local role regress_ev_admin;
select bulkhead.set_price('openai', 'ev-model', 1.00, 2.00) is not null as priced;
select bulkhead.set_price('openai', 'ev-embed', 0.02, 0) is not null as embedding_priced;
select bulkhead.set_skeleton('ev', $t$You are {{ slots.display_name }}'s assistant.{% if slots.banned_topics %} Never discuss: {{ slots.banned_topics | join(', ') }}.{% endif %} Q: {{ vars.q }}$t$) as skeleton_v1;
select bulkhead.publish_prompt('00000000-0000-4000-8000-0000000000e1', 'ev', '{"display_name": "Acme", "banned_topics": ["crypto"]}') as a_v1;
select bulkhead.publish_prompt('00000000-0000-4000-8000-0000000000e2', 'ev', '{"display_name": "Globex", "banned_topics": []}') as b_v1;
select bulkhead.publish_prompt('00000000-0000-4000-8000-0000000000e3', 'ev', '{"display_name": "Initech", "banned_topics": []}') as c_v1;
select bulkhead.set_credential(t, 'openai', 'env:EV_KEY') is not null as credential
from unnest(array['00000000-0000-4000-8000-0000000000e1', '00000000-0000-4000-8000-0000000000e2']::uuid[]) t;
select bulkhead.set_budget(t, 1000, 1000000, 1000000, 10.00)
from unnest(array['00000000-0000-4000-8000-0000000000e1', '00000000-0000-4000-8000-0000000000e2']::uuid[]) t;
reset role;

-- 1. Cases: malformed assertions are 22023 at insert, naming which one; only the tenant the
-- app acts for.
set local role regress_ev_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e1');
select pg_temp.attempt(format($q$select bulkhead.add_eval_case('00000000-0000-4000-8000-0000000000e1', 'ev', '{"q": "x"}', %L)$q$, a)) as malformed
from unnest(array[
    '[]', '{"type": "contains", "value": "x"}', '[{"type": "contain", "value": "x"}]', '[{"type": "contains"}]',
    '[{"type": "contains", "value": "x", "negate": true}]', '[{"type": "regex", "value": "(a)\\1"}]',
    '[{"type": "json_schema", "value": {"$ref": "https://evil.example/s.json"}}]',
    '[{"type": "similar", "value": "x", "threshold": 3}]', '[{"type": "max_cost_usd", "value": -1}]',
    '[{"type": "tool_call", "value": "search", "schema": {"type": 7}}]',
    '[{"type": "regex", "value": "[a-z]*a[a-z]{8000}[^a-z]"}]',
    '[{"type": "json_schema", "value": {"$id": "https://x.example/s", "type": "object"}}]']) a;
-- A 1.7 kB schema whose definitions each refer twice to the next: 2^24 nodes to validate.
select pg_temp.attempt(format($q$select bulkhead.add_eval_case('00000000-0000-4000-8000-0000000000e1', 'ev', '{"q": "x"}', %L)$q$,
    jsonb_build_array(jsonb_build_object('type', 'json_schema', 'value', jsonb_build_object('$ref', '#/$defs/d0', '$defs',
        (select jsonb_object_agg('d' || i, case when i = 24 then '{"type": "string"}'::jsonb
                 else jsonb_build_object('allOf', jsonb_build_array(jsonb_build_object('$ref', '#/$defs/d' || (i + 1)),
                                                                    jsonb_build_object('$ref', '#/$defs/d' || (i + 1)))) end)
         from generate_series(0, 24) i)))))) as schema_bomb;
select pg_temp.attempt($q$select bulkhead.add_eval_case('00000000-0000-4000-8000-0000000000e1', 'ev', '{}', jsonb_build_array(jsonb_build_object('type', 'contains_any', 'value', (select jsonb_agg(repeat('x', 16000)) from generate_series(1, 10)))))$q$) as oversized;
select pg_temp.attempt($q$select bulkhead.add_eval_case('00000000-0000-4000-8000-0000000000e1', 'nosuch', '{}', '[{"type": "is_json"}]')$q$) as unknown_template;
select pg_temp.attempt($q$select bulkhead.add_eval_case('00000000-0000-4000-8000-0000000000e1', 'ev', '[]', '[{"type": "is_json"}]')$q$) as vars_not_object;
select pg_temp.attempt($q$select bulkhead.add_eval_case('00000000-0000-4000-8000-0000000000e1', 'ev', '{}', '[{"type": "is_json"}]', weight => 0)$q$) as zero_weight;
select pg_temp.attempt($q$select bulkhead.add_eval_case('00000000-0000-4000-8000-0000000000e2', 'ev', '{}', '[{"type": "is_json"}]')$q$) as other_tenant;
select pg_temp.attempt($q$insert into bulkhead.eval_cases (tenant_id, template_name, vars, assertions, created_by) values ('00000000-0000-4000-8000-0000000000e1', 'ev', '{}', '[]', 'me')$q$) as direct_insert;
create temp table a_cases as
select bulkhead.add_eval_case('00000000-0000-4000-8000-0000000000e1', 'ev', '{"q": "refund-case"}',
           '[{"type": "contains", "value": "refund"}, {"type": "banned_topics_absent"}]', name => 'refunds') as id
union all
select bulkhead.add_eval_case('00000000-0000-4000-8000-0000000000e1', 'ev', '{"q": "order-case"}',
           '[{"type": "regex", "value": "^order #[0-9]{4}$"}, {"type": "max_output_tokens", "value": 5}]', weight => 2);
grant select on a_cases to public;
select name, vars, weight from bulkhead.eval_cases order by weight;
-- B's identical case, in B's context.
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e2');
create temp table b_cases as
select bulkhead.add_eval_case('00000000-0000-4000-8000-0000000000e2', 'ev', '{"q": "refund-case"}',
           '[{"type": "contains", "value": "refund"}, {"type": "banned_topics_absent"}]', name => 'refunds') as id;
grant select on b_cases to public;
select count(*) as b_sees_cases, count(*) filter (where id in (select id from a_cases)) as b_sees_a_cases
from bulkhead.eval_cases;
select pg_temp.attempt($q$select bulkhead.remove_eval_case('00000000-0000-4000-8000-0000000000e2', (select id from a_cases limit 1))$q$) as b_removes_a_case;
reset role;

-- 2. The gate: no run, then a run that has not finished, then a pass.
set local role regress_ev_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e1');
select pg_temp.attempt($q$select bulkhead.activate_prompt('00000000-0000-4000-8000-0000000000e1', 'ev', 1)$q$) as no_run;
-- A set with no model: the run is an error that says so.
create temp table run0 as select bulkhead.start_eval('ev', 1) as id;
select status, error from bulkhead.eval_runs where id = (select id from run0);
select bulkhead.set_eval_set('00000000-0000-4000-8000-0000000000e1', 'ev', 'ev-model', max_output_tokens => 50);
create temp table run1 as select bulkhead.start_eval('ev', 1) as id;
grant select on run1 to public;
select status, cases, calls, reused, version from bulkhead.eval_runs where id = (select id from run1);
select bulkhead.start_eval('ev', 1) = (select id from run1) as joins_the_running_run;
select pg_temp.attempt($q$select bulkhead.activate_prompt('00000000-0000-4000-8000-0000000000e1', 'ev', 1)$q$) as unfinished;
select count(*) as reservations_held from bulkhead.reservations where settled_at is null and expired_at is null;
-- B runs its own version 1 on its own (identical) case.
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e2');
select bulkhead.set_eval_set('00000000-0000-4000-8000-0000000000e2', 'ev', 'ev-model');
create temp table b_run1 as select bulkhead.start_eval('ev', 1) as id;
grant select on b_run1 to public;
reset role;
set local role regress_ev_worker;
select pg_temp.work('{"refund-case": "Your refund is on its way", "order-case": "order #1234"}') as answered;
reset role;
set local role regress_ev_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e1');
select status, score from bulkhead.eval_runs where id = (select id from run1);
select c.name, r.passed, r.output, r.details -> 'calls' -> 0 -> 'assertions' as verdicts
from bulkhead.eval_report((select id from run1)) r join bulkhead.eval_cases c on c.id = r.case_id order by c.name, c.vars::text;
select count(*) as ledger_rows from bulkhead.ledger;
select bulkhead.activate_prompt('00000000-0000-4000-8000-0000000000e1', 'ev', 1);
select action, to_version, forced, gate, eval_run_id = (select id from run1) as names_the_run
from bulkhead.prompt_releases order by seq;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e2');
select status from bulkhead.eval_runs where id = (select id from b_run1);
select bulkhead.activate_prompt('00000000-0000-4000-8000-0000000000e2', 'ev', 1);
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e1');

-- 3. A failing run names itself; editing the set invalidates a pass.
select bulkhead.publish_prompt('00000000-0000-4000-8000-0000000000e1', 'ev', '{"display_name": "Acme v2", "banned_topics": ["crypto"]}') as a_v2;
create temp table run2 as select bulkhead.start_eval('ev', 2) as id;
grant select on run2 to public;
reset role;
set local role regress_ev_worker;
select pg_temp.work('{"refund-case": "Try crypto instead of a refund", "order-case": "order #1234"}') as answered;
reset role;
set local role regress_ev_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e1');
select status, round(score, 3) as score from bulkhead.eval_runs where id = (select id from run2);
select c.name, r.passed, r.details -> 'calls' -> 0 -> 'assertions' -> 1 ->> 'detail' as banned_topic_verdict
from bulkhead.eval_report((select id from run2)) r join bulkhead.eval_cases c on c.id = r.case_id order by c.name, c.vars::text;
select pg_temp.attempt($q$select bulkhead.activate_prompt('00000000-0000-4000-8000-0000000000e1', 'ev', 2)$q$) as failed_run;
-- Version 1 passed; a new case changes the set, and its pass no longer counts.
select bulkhead.add_eval_case('00000000-0000-4000-8000-0000000000e1', 'ev', '{"q": "hello"}', '[{"type": "icontains", "value": "HELLO"}]') is not null as added;
select pg_temp.attempt($q$select bulkhead.activate_prompt('00000000-0000-4000-8000-0000000000e1', 'ev', 1)$q$) as edited_set;
-- Run again: the unchanged cases' answers are reused (not paid for again), the new one is called.
create temp table run3 as select bulkhead.start_eval('ev', 1) as id;
grant select on run3 to public;
select status, cases, calls, reused from bulkhead.eval_runs where id = (select id from run3);
reset role;
set local role regress_ev_worker;
select pg_temp.work('{"hello": "Hello there"}') as answered;
reset role;
set local role regress_ev_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e1');
select status from bulkhead.eval_runs where id = (select id from run3);
select c.name, r.passed, r.details ->> 'reused' as reused, (r.details -> 'calls' -> 0 ->> 'reused_from')::bigint = (select id from run1) as from_run1
from bulkhead.eval_report((select id from run3)) r join bulkhead.eval_cases c on c.id = r.case_id order by c.name nulls first, c.vars::text;
select bulkhead.activate_prompt('00000000-0000-4000-8000-0000000000e1', 'ev', 1);
reset role;

-- 4. A direct UPDATE of the pointer by the table owner is refused without a pass; with the
-- gate's trigger disabled (the protection removed) the same UPDATE goes through.
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e1');
select pg_temp.attempt($q$update bulkhead.prompt_templates set active_version = 2 where tenant_id = '00000000-0000-4000-8000-0000000000e1' returning active_version$q$) as owner_update;
savepoint unprotected;
alter table bulkhead.prompt_templates disable trigger prompt_templates_eval_gate;
select pg_temp.attempt($q$update bulkhead.prompt_templates set active_version = 2 where tenant_id = '00000000-0000-4000-8000-0000000000e1' returning active_version$q$) as owner_update_without_gate;
rollback to savepoint unprotected;
select bulkhead._set_tenant_within_function(null);

-- 5. Force: bulkhead_admin only, with a reason, recorded with the run that failed.
set local role regress_ev_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e1');
select pg_temp.attempt($q$select bulkhead.activate_prompt('00000000-0000-4000-8000-0000000000e1', 'ev', 2, force => true, reason => 'trust me')$q$) as app_forces;
reset role;
set local role regress_ev_admin;
select pg_temp.attempt($q$select bulkhead.activate_prompt('00000000-0000-4000-8000-0000000000e1', 'ev', 2, force => true)$q$) as no_reason;
select bulkhead.activate_prompt('00000000-0000-4000-8000-0000000000e1', 'ev', 2, force => true, reason => 'hotfix for a legal notice');
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e1');
reset role;
-- Back to version 1, which passed, by a direct UPDATE: let through, and written into the history.
select pg_temp.attempt($q$update bulkhead.prompt_templates set active_version = 1 where tenant_id = '00000000-0000-4000-8000-0000000000e1' returning active_version$q$) as owner_update_to_passed;
select seq, action, from_version, to_version, forced, gate, reason, released_by,
       eval_run_id = (select id from run2) as names_failed_run
from bulkhead.prompt_releases order by seq;
select bulkhead._set_tenant_within_function(null);

-- 6. A tenant with no eval cases: refused by default, allowed by the setting, which the
-- release row states.
set local role regress_ev_admin;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e3');
select pg_temp.attempt($q$select bulkhead.activate_prompt('00000000-0000-4000-8000-0000000000e3', 'ev', 1)$q$) as empty_set_refused;
reset role;
set bulkhead.eval_gate_empty_set = 'allow';
set local role regress_ev_admin;
select bulkhead.activate_prompt('00000000-0000-4000-8000-0000000000e3', 'ev', 1);
select pg_temp.attempt($q$set bulkhead.eval_gate_empty_set = 'refuse'$q$) as admin_sets_gate;
reset role;
set bulkhead.eval_gate_empty_set = 'refuse';
select pg_temp.attempt($q$set bulkhead.eval_gate_empty_set = 'sometimes'$q$) as bad_setting;
set local role regress_ev_admin;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e3');
select action, to_version, gate from bulkhead.prompt_releases;
reset role;

-- 7. A skeleton change, gated per tenant: the new skeleton drops the banned-topics line; A's
-- answer then strays into its banned topic and fails, B passes. bulkhead_admin runs the
-- skeleton version for every tenant on the template, each with its own slots.
select bulkhead._set_tenant_within_function(null);
set local role regress_ev_admin;
select bulkhead.activate_prompt('00000000-0000-4000-8000-0000000000e1', 'ev', 1);
select bulkhead.set_skeleton('ev', $t$You are {{ slots.display_name }}'s assistant, ready for anything.{% set topics = slots.banned_topics %} Q: {{ vars.q }}$t$) as skeleton_v2;
create temp table skeleton_runs as select bulkhead.start_eval('ev', 2) as id;
grant select on skeleton_runs to public;
select slug, version, skeleton_version, status, cases_pending from bulkhead.eval_summary('ev', (select array_agg(id) from skeleton_runs)) order by slug;
reset role;
set local role regress_ev_worker;
select pg_temp.work('{"Acme": "A refund? Crypto is better", "Globex": "Your refund is on its way", "hello": "hello"}') as answered;
reset role;
set local role regress_ev_admin;
select slug, version, skeleton_version, status, cases_passed, cases_failed from bulkhead.eval_summary('ev', (select array_agg(id) from skeleton_runs)) order by slug;
-- The admin's summary has no case text: its columns are counts, ids and states.
select array_to_string(proargnames, ', ') as summary_arguments_and_columns from pg_proc where proname = 'eval_summary';
select pg_temp.attempt($q$select bulkhead.activate_prompt('00000000-0000-4000-8000-0000000000e1', 'ev', 3)$q$) as a_refused;
select pg_temp.attempt($q$select bulkhead.activate_prompt('00000000-0000-4000-8000-0000000000e2', 'ev', 2)$q$) as b_moves;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e1');
select active_version as a_stays_on from bulkhead.prompt_templates;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e2');
select active_version as b_is_on from bulkhead.prompt_templates;
reset role;

-- 8. Reports: only in the run's tenant context, and never a row of another tenant, though A
-- and B have a case with the same text.
set local role regress_ev_app;
select pg_temp.attempt($q$select count(*) from bulkhead.eval_report((select id from run1))$q$) as no_context;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e2');
select pg_temp.attempt($q$select count(*) from bulkhead.eval_report((select id from run1))$q$) as b_reads_a_run;
select count(*) as b_sees_runs, count(*) filter (where id in (select id from run1)) as b_sees_a_runs from bulkhead.eval_runs;
select count(*) filter (where case_id in (select id from a_cases)) as b_results_with_a_cases from bulkhead.eval_results;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e1');
select count(*) as a_report_rows, count(*) filter (where case_id in (select id from b_cases)) as b_rows_in_a_report
from bulkhead.eval_report((select id from run3));
-- The app cannot write a verdict or a pass, nor score or close a call itself.
select pg_temp.attempt($q$update bulkhead.eval_runs set status = 'passed' returning id$q$) as app_marks_passed;
select pg_temp.attempt($q$insert into bulkhead.prompt_eval_passes (tenant_id, template_name, version, eval_run_id, set_digest) values ('00000000-0000-4000-8000-0000000000e1', 'ev', 2, 1, 'x') returning 1$q$) as app_inserts_pass;
select pg_temp.attempt($q$select bulkhead._eval_call_closed(1)$q$) as app_closes_call;
select pg_temp.attempt($q$select bulkhead.eval_summary()$q$) as app_summary;
select pg_temp.attempt($q$select bulkhead.start_eval('ev', 1, '00000000-0000-4000-8000-0000000000e2')$q$) as app_starts_for_b;
reset role;

-- 8b. With bulkhead.eval_authoring = admin, the exam is the control plane's: the app still runs
-- its evals and reads its reports, but may not change a set or a case.
set bulkhead.eval_authoring = 'admin';
set local role regress_ev_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e1');
select pg_temp.attempt($q$select bulkhead.add_eval_case('00000000-0000-4000-8000-0000000000e1', 'ev', '{}', '[{"type": "is_json"}]')$q$) as app_adds;
select pg_temp.attempt($q$select bulkhead.remove_eval_case('00000000-0000-4000-8000-0000000000e1', (select id from a_cases limit 1))$q$) as app_removes;
select pg_temp.attempt($q$select bulkhead.set_eval_set('00000000-0000-4000-8000-0000000000e1', 'ev', 'ev-model', pass_threshold => 0.01)$q$) as app_lowers_the_bar;
select pg_temp.attempt($q$select bulkhead.start_eval('ev', 1)::text$q$) ~ '^ok: [0-9]+$' as app_still_runs;
reset role;
set local role regress_ev_admin;
select bulkhead.add_eval_case('00000000-0000-4000-8000-0000000000e1', 'ev', '{"q": "admin"}', '[{"type": "is_json"}]') is not null as admin_adds;
reset role;
select pg_temp.attempt($q$set bulkhead.eval_authoring = 'anyone'$q$) as bad_setting;
set bulkhead.eval_authoring = 'tenant';
select bulkhead._set_tenant_within_function(null);

-- 9. An answer the scorer cannot read (a tool call nested 130 levels deep) still settles: the
-- provider's charge reaches the ledger, the settle stores it and the scoring job fails the
-- assertion that needed the message. A call whose lease runs out on its last attempt ends its
-- case too, so the run ends instead of waiting for ever.
set local role regress_ev_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e2');
select bulkhead.add_eval_case('00000000-0000-4000-8000-0000000000e2', 'ev', '{"q": "deep"}',
    '[{"type": "tool_call", "value": "f"}]', request => '{"messages": [{"role": "user", "content": "deep"}]}') is not null as added;
create temp table run9 as select bulkhead.start_eval('ev', 2) as id;
grant select on run9 to public;
select count(*) as b_ledger_before from bulkhead.ledger;
reset role;
set local role regress_ev_worker;
select bulkhead._set_tenant_within_function(null);
create temp table claimed9 as select * from bulkhead.claim_and_start_jobs('w1', 100);
-- The new case's call, answered with the deep message (the reused case's scoring is queued too).
select kind, count(*) from claimed9 group by kind order by kind;
select outcome from bulkhead._finish_completions('w1', array(select job_id from claimed9 where kind = 'completion'),
    array['{"prompt_tokens": 20, "completion_tokens": 5}'::jsonb], array['chatcmpl-deep'], array['x'], array[null::text],
    array[jsonb_build_object('role', 'assistant', 'tool_calls', jsonb_build_array(jsonb_build_object(
        'type', 'function', 'function', jsonb_build_object('name', 'f', 'arguments',
            (repeat('{"a":', 130) || '1' || repeat('}', 130))::jsonb))))]);
select bulkhead._set_tenant_within_function(null);
select bulkhead.complete_job(job_id, 'w1', bulkhead.score_eval_job(job_id, 'w1')) is null as scored_the_reused
from claimed9 where kind = 'eval_score';
select bulkhead._set_tenant_within_function(null);
select pg_temp.work('{}') as scored;
reset role;
set local role regress_ev_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e2');
select count(*) as b_ledger_after from bulkhead.ledger;
select status, cases from bulkhead.eval_runs where id = (select id from run9);
select c.name is null as unnamed, r.passed, r.details -> 'calls' -> 0 -> 'assertions' as verdicts
from bulkhead.eval_report((select id from run9)) r join bulkhead.eval_cases c on c.id = r.case_id
where c.vars ->> 'q' = 'deep';
-- Started again with nothing changed, the finished run is joined: a new one would only copy it.
select bulkhead.start_eval('ev', 2) = (select id from run9) as joins_the_finished_run;
-- A new case: a new run, whose one call is lost.
select bulkhead.add_eval_case('00000000-0000-4000-8000-0000000000e2', 'ev', '{"q": "lost"}',
    '[{"type": "contains", "value": "x"}]') is not null as added;
create temp table run10 as select bulkhead.start_eval('ev', 2) as id;
grant select on run10 to public;
select calls, reused from bulkhead.eval_runs where id = (select id from run10);
reset role;
-- The worker claimed the call and vanished; its lease ran out on the last attempt.
update bulkhead.job_schedule set attempts = max_attempts, state = 'running', leased_by = 'gone',
    leased_until = now() - interval '1 minute'
where job_id in (select r.job_id from bulkhead.eval_results r where r.run_id = (select id from run10) and r.job_id is not null);
set local role regress_ev_worker;
select bulkhead._set_tenant_within_function(null);
-- Any worker's next claim finds it dead (and gives back what it claimed, for pg_temp.work).
select count(*) as claimed_and_given_back
from (select bulkhead.release_job(c.job_id, 'w2') from bulkhead.claim_jobs('w2', 100, '1 minute') c) released;
select bulkhead._set_tenant_within_function(null);
select pg_temp.work('{}') >= 0 as scored;
reset role;
select r.status, (select count(*) from bulkhead.eval_results x where x.run_id = r.id and x.status = 'error') as errors
from bulkhead.eval_runs r where r.id = (select id from run10);

-- 10. An eval budget is a budget line of its own. With one, a tenant's eval calls keep its rate
-- limits, but their dollars are checked and held on the eval budget: the tenant's own budget
-- neither refuses nor counts them. Here the product's budget is spent ($0): its own call is
-- refused, an eval at an eval budget of $0 too (its case is an error), and with room on the
-- eval budget the eval runs and settles there.
set local role regress_ev_app;
select pg_temp.attempt($q$select bulkhead.set_eval_budget('00000000-0000-4000-8000-0000000000e2', 1)$q$) as app_sets_eval_budget;
reset role;
set local role regress_ev_admin;
select bulkhead.set_eval_budget('00000000-0000-4000-8000-0000000000e2', 0);
select pg_temp.attempt($q$select bulkhead.set_eval_budget('00000000-0000-4000-8000-0000000000e2', -1)$q$) as negative;
select bulkhead.set_budget('00000000-0000-4000-8000-0000000000e2', 1000, 1000000, 1000000, 0);
select bulkhead._set_tenant_within_function(null);
reset role;
set local role regress_ev_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e2');
select pg_temp.attempt($q$select bulkhead.complete('ev', '{"q": "product"}', 'ev-model', 50)$q$) as product_call;
select bulkhead.add_eval_case('00000000-0000-4000-8000-0000000000e2', 'ev', '{"q": "budget"}',
    '[{"type": "contains", "value": "x"}]') is not null as added;
create temp table run11 as select bulkhead.start_eval('ev', 2) as id;
grant select on run11 to public;
select r.details ->> 'error' as refused from bulkhead.eval_results r
where r.run_id = (select id from run11) and r.status = 'error';
-- An application cannot put its own calls on the eval line.
select pg_temp.attempt($q$select bulkhead._budget_check_eval('ev-model', 1, 1, '10 minutes')$q$) as app_eval_check;
select pg_temp.attempt($q$select bulkhead._admit_in_table('ev-model', 1, 1, '10 minutes', 'eval')$q$) as app_eval_line;
select pg_temp.attempt($q$select bulkhead._admit_eval_in_memory('ev-model', 1, 1, '10 minutes')$q$) as app_eval_in_memory;
reset role;
-- What those grants keep from it: the eval line admits on a spent budget (here as the meter).
set local role bulkhead_meter;
select bulkhead._set_tenant_within_function('00000000-0000-4000-8000-0000000000e2');
savepoint meter_line;
select bulkhead._admit_in_table('ev-model', 1, 1, '10 minutes', 'eval') is not null as meter_admits_on_eval_line;
rollback to savepoint meter_line;
select bulkhead._set_tenant_within_function(null);
reset role;
set local role regress_ev_admin;
select bulkhead.set_eval_budget('00000000-0000-4000-8000-0000000000e2', 1);
select bulkhead._set_tenant_within_function(null);
reset role;
set local role regress_ev_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e2');
select bulkhead.add_eval_case('00000000-0000-4000-8000-0000000000e2', 'ev', '{"q": "budget 2"}',
    '[{"type": "contains", "value": "x"}]') is not null as added;
create temp table holds_before as select s.reserved_usd from bulkhead.budget_state s;
create temp table run12 as select bulkhead.start_eval('ev', 2) as id;
grant select on run12 to public;
select held_usd > 0 as holds, spent_usd from bulkhead.eval_budget_usage();
-- Each call's hold is on the eval budget alone: nothing on the tenant's.
select x.budget_line, x.reserved_usd as tenant_hold, count(*) as calls
from bulkhead.eval_results r
join bulkhead.jobs j on j.id = r.job_id
join bulkhead.reservations x on x.id = (j.payload ->> 'reservation')::uuid
where r.run_id = (select id from run12)
group by 1, 2;
select s.reserved_usd = (select h.reserved_usd from holds_before h) as tenant_holds_unchanged from bulkhead.budget_state s;
reset role;
set local role regress_ev_worker;
select pg_temp.work('{"budget": "x marks the spot"}') > 0 as worked;
reset role;
set local role regress_ev_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e2');
select held_usd, spent_usd > 0 as spent from bulkhead.eval_budget_usage();
select status from bulkhead.eval_runs where id = (select id from run12);
create temp table usage12 as select * from bulkhead.eval_budget_usage();
grant select on usage12 to public;
reset role;
-- A worker that replays a call's hook, or writes a cost into a job's result, moves nothing:
-- the eval line is read from the reservations and the ledger, and a call is recorded once.
update bulkhead.jobs set result = jsonb_set(result, '{cost_usd}', '-1000')
where id in (select r.job_id from bulkhead.eval_results r where r.run_id = (select id from run12));
create temp table calls12 as select c.job_id from bulkhead.eval_calls c where c.run_id = (select id from run12);
grant select on calls12 to public;
set local role regress_ev_worker;
select bulkhead._set_tenant_within_function('00000000-0000-4000-8000-0000000000e2');
select count(*) as replayed from (
    select bulkhead._eval_call_closed_safely(c.job_id) from calls12 c
    union all
    select bulkhead._eval_call_closed_safely(c.job_id) from calls12 c) x;
select bulkhead._set_tenant_within_function(null);
reset role;
set local role regress_ev_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e2');
select (u.spent_usd, u.held_usd) = (b.spent_usd, b.held_usd) as unchanged,
       (select r.status from bulkhead.eval_results r where r.run_id = (select id from run12) and r.status <> 'scored' limit 1) as unscored
from bulkhead.eval_budget_usage() u, usage12 b;
-- Their costs are in the ledger on the eval line, and the tenant's spending leaves them out.
select b.spent_usd = (select sum(l.cost_usd) from bulkhead.ledger l where l.budget_line = 'eval') as eval_spent_is_eval_line
from bulkhead.eval_budget_usage() b;
select s.spent_usd = (select sum(l.cost_usd) from bulkhead.ledger l where l.budget_line = 'tenant') as tenant_spent_is_tenant_line
from bulkhead.budget_state s;
reset role;
-- So does the tenant's spending rebuilt from the ledger: by the table path at a new period...
update bulkhead.budget_state set period_end = '-infinity', spent_usd = 1000;
set local role regress_ev_admin;
select bulkhead.set_budget('00000000-0000-4000-8000-0000000000e2', 1000, 1000000, 1000000, 10.00);
select bulkhead._set_tenant_within_function(null);
reset role;
set local role regress_ev_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e2');
select bulkhead.complete('ev', '{"q": "product"}', 'ev-model', 50) is not null as product_runs;
select s.spent_usd = (select sum(l.cost_usd) from bulkhead.ledger l where l.budget_line = 'tenant') as rebuilt_without_evals
from bulkhead.budget_state s;
-- ...and by memory admission loading the tenant's slot.
reset role;
set local bulkhead.memory_admission = on;
set local role regress_ev_app;
select bulkhead.add_eval_case('00000000-0000-4000-8000-0000000000e2', 'ev', '{"q": "budget 3"}',
    '[{"type": "contains", "value": "x"}]') is not null as added;
create temp table run13 as select bulkhead.start_eval('ev', 2) as id;
grant select on run13 to public;
select x.budget_line, x.reserved_usd as tenant_hold, x.held_in_memory, count(*) as calls
from bulkhead.eval_results r
join bulkhead.jobs j on j.id = r.job_id
join bulkhead.reservations x on x.id = (j.payload ->> 'reservation')::uuid
where r.run_id = (select id from run13)
group by 1, 2, 3;
reset role;
set local role regress_ev_worker;
select pg_temp.work('{"budget": "x marks the spot"}') > 0 as worked;
reset role;
set local role regress_ev_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e2');
select status from bulkhead.eval_runs where id = (select id from run13);
select held_usd, spent_usd = (select sum(l.cost_usd) from bulkhead.ledger l where l.budget_line = 'eval') as eval_spent
from bulkhead.eval_budget_usage();
reset role;
-- Rate limits are the tenant's, whichever line pays: at 0 RPM the eval's call is refused.
set local role regress_ev_admin;
select bulkhead.set_budget('00000000-0000-4000-8000-0000000000e2', 0, 1000000, 1000000, 10.00);
select bulkhead._set_tenant_within_function(null);
reset role;
set local role regress_ev_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e2');
select bulkhead.add_eval_case('00000000-0000-4000-8000-0000000000e2', 'ev', '{"q": "budget 4"}',
    '[{"type": "contains", "value": "x"}]') is not null as added;
create temp table run14 as select bulkhead.start_eval('ev', 2) as id;
grant select on run14 to public;
select count(*) as rate_limited from bulkhead.eval_results r
where r.run_id = (select id from run14) and r.status = 'error' and r.details ->> 'error' like '%tenant_rate_limit_exceeded%';
reset role;
set local bulkhead.memory_admission = off;
-- An eval budget that is spent refuses evals while the product goes on.
set local role regress_ev_admin;
select bulkhead.set_budget('00000000-0000-4000-8000-0000000000e2', 1000, 1000000, 1000000, 10.00);
select bulkhead.set_eval_budget('00000000-0000-4000-8000-0000000000e2', 0);
select bulkhead._set_tenant_within_function(null);
reset role;
set local role regress_ev_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e2');
select bulkhead.add_eval_case('00000000-0000-4000-8000-0000000000e2', 'ev', '{"q": "budget 5"}',
    '[{"type": "contains", "value": "x"}]') is not null as added;
create temp table run15 as select bulkhead.start_eval('ev', 2) as id;
grant select on run15 to public;
select count(*) filter (where r.details ->> 'error' like '%eval_budget_exceeded%') as eval_budget_refused,
       count(*) filter (where r.status <> 'error') as not_refused
from bulkhead.eval_results r where r.run_id = (select id from run15);
select bulkhead.complete('ev', '{"q": "product"}', 'ev-model', 50) is not null as product_runs;
reset role;

-- 11. Embeddings from a provider are data: extreme values make the measurement unusable (NULL,
-- an error in the assertion), never an overflow that would fail the settle.
select v as vectors, round(bulkhead._eval_cosine(v::jsonb)::numeric, 4) as cosine
from (values ('[[1, 0], [1, 0]]'), ('[[1, 0], [0.6, 0.8]]'), ('[[1e99, 1e99], [1e99, 1e99]]'),
             ('[[1e300, 1], [1, 1]]'), ('[[1e-400, 1], [1, 1]]'), ('[[1, 0], [1]]'), ('[[0, 0], [1, 1]]'),
             ('{"a": 1}')) t(v);
rollback;
