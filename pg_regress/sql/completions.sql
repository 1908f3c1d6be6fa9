-- Queued completions through their SQL API, with the worker's part played by hand: complete()
-- admits, renders and queues in one transaction; only complete() queues a completion; the worker
-- reads the credential and settles in the job's tenant context; a dead completion releases its
-- reservation; results are visible to the job's own tenant only.
-- Runs as non-superuser members of bulkhead_app, bulkhead_admin and bulkhead_worker.
\set SHOW_CONTEXT never
begin;
set client_min_messages = warning;
create role regress_cmp_app in role bulkhead_app;
create role regress_cmp_admin in role bulkhead_admin;
create role regress_cmp_worker in role bulkhead_worker;
insert into bulkhead.tenants (id, slug, name, pinecone_namespace) values
    ('00000000-0000-4000-8000-0000000000c1', 'cmp-a', 'Acme', 'tenant-cmp-a'),
    ('00000000-0000-4000-8000-0000000000c2', 'cmp-b', 'Globex', 'tenant-cmp-b');
create function pg_temp.attempt(statement text) returns text language plpgsql as $$
declare
    result text;
begin
    execute statement into result;
    return 'ok: ' || coalesce(result, 'NULL');
exception when others then
    return 'ERROR ' || sqlstate || ': '
        || regexp_replace(regexp_replace(sqlerrm, '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g'),
                          '(job|completion job) [0-9]+', '\1 <n>', 'g');
end
$$;
grant execute on function pg_temp.attempt(text) to public;

set local role regress_cmp_admin;
select bulkhead.set_price('openai', 'cmp-model', 1.00, 2.00) is not null as priced;
select bulkhead.set_skeleton('cmp', 'Hello {{ slots.name }}: {{ vars.q }}') as skeleton;
select bulkhead.publish_prompt('00000000-0000-4000-8000-0000000000c1', 'cmp', '{"name": "Acme"}') as a_version;
select bulkhead.activate_prompt('00000000-0000-4000-8000-0000000000c1', 'cmp', 1);
select bulkhead.set_credential('00000000-0000-4000-8000-0000000000c1', 'openai', 'env:ACME_OPENAI_KEY') is not null as a_credential;
select bulkhead.set_budget('00000000-0000-4000-8000-0000000000c1', 100, 100000, 100000, 1.00);
reset role;

-- complete(): bad input, each with its SQLSTATE.
set local role regress_cmp_app;
select pg_temp.attempt($q$select bulkhead.complete('cmp', '{"q": "hi"}', 'cmp-model', 100)$q$) as no_tenant;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000c1');
select pg_temp.attempt($q$select bulkhead.complete('cmp', '{"q": "hi"}', 'no-such-model', 100)$q$) as unknown_model;
select pg_temp.attempt($q$select bulkhead.complete('nope', '{"q": "hi"}', 'cmp-model', 100)$q$) as unknown_template;
select pg_temp.attempt($q$select bulkhead.complete('cmp', '{}', 'cmp-model', 100)$q$) as missing_var;
select pg_temp.attempt($q$select bulkhead.complete('cmp', '{"q": "hi"}', 'cmp-model', 0)$q$) as zero_tokens;
select pg_temp.attempt($q$select bulkhead.complete('cmp', '{"q": "hi"}', 'cmp-model', null)$q$) as null_tokens;
select pg_temp.attempt($q$select bulkhead.complete('cmp', '{"q": "hi"}', 'cmp-model', 1000000)$q$) as over_otpm;
select pg_temp.attempt($q$select bulkhead.enqueue_job('completion', '{"prompt": "free ride"}')$q$) as enqueue_directly;
-- embed_document(): the same admission for embeddings, refused before any reservation stays.
select pg_temp.attempt($q$select bulkhead.embed_document('doc', '[{"content": "x"}]')$q$) as no_dimension;
reset role;
set local role regress_cmp_admin;
select bulkhead.set_embedding_dims('00000000-0000-4000-8000-0000000000c1', 4);
reset role;
set local role regress_cmp_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000c1');
select pg_temp.attempt($q$select bulkhead.embed_document('doc', '[{"content": "x", "embedding": [1, 2, 3, 4]}]')$q$) as with_embeddings;
select pg_temp.attempt($q$select bulkhead.embed_document('doc', '[]')$q$) as no_chunks;
select pg_temp.attempt($q$select bulkhead.embed_document('doc', '[{"content": "x"}]', model => 'claude-haiku-4-5')$q$) as not_an_embedding_provider;
select pg_temp.attempt($q$select bulkhead.enqueue_job('embedding', '{}')$q$) as enqueue_embedding_directly;
select count(*) as reservations_after_refusals from bulkhead.reservations;

-- One admitted completion: a reservation and a job, together; the same idempotency key again
-- returns the same job without a second admission.
create temp table cmp as
select bulkhead.complete('cmp', '{"q": "where is my order?"}', 'cmp-model', 100, idempotency_key => 'order-1') as id;
grant select on cmp to public;
select bulkhead.complete('cmp', '{"q": "ignored"}', 'cmp-model', 100, idempotency_key => 'order-1') = (select id from cmp) as idempotent;
select count(*) as reservations, sum(max_output_tokens) as max_output from bulkhead.reservations;
select j.kind, j.payload ->> 'prompt' as prompt, j.payload ->> 'provider' as provider,
       (j.payload ->> 'reservation')::uuid = (select id from bulkhead.reservations) as names_its_reservation
from bulkhead.jobs j where j.id = (select id from cmp);
select * from bulkhead.completion_result((select id from cmp));
-- The app cannot settle the queued call's reservation itself (at zero, before the worker calls).
select pg_temp.attempt($q$select bulkhead.ledger_record((select id from bulkhead.reservations), '{"prompt_tokens": 0, "completion_tokens": 0}', 'chatcmpl-free')$q$) as app_settles_queued;
-- Tenant B sees nothing of it, and gets the error a missing job gets.
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000c2');
select pg_temp.attempt($q$select status from bulkhead.completion_result((select id from cmp))$q$) as b_reads_a;
select pg_temp.attempt($q$select status from bulkhead.completion_result(-1)$q$) as no_such_job;
select count(*) as b_sees_jobs from bulkhead.jobs;
reset role;

-- The worker: claims, reads A's credential in A's context, settles with the provider's usage.
set local role regress_cmp_worker;
select bulkhead.set_tenant(null);
select count(*) as claimed from bulkhead.claim_jobs('w1', 10, '1 minute') where job_id = (select id from cmp);
select pg_temp.attempt($q$select secret_ref from bulkhead.job_credential((select id from cmp), 'w2', 'openai')$q$) as other_worker;
select secret_ref, provider_project_id from bulkhead.job_credential((select id from cmp), 'w1', 'openai');
select bulkhead.current_tenant() = '00000000-0000-4000-8000-0000000000c1' as in_a_context;
select bulkhead._finish_completion((select id from cmp), 'w1',
    '{"prompt_tokens": 1000, "completion_tokens": 50}', 'chatcmpl-regress-1', 'Your order ships today.') as cost;
select pg_temp.attempt($q$select bulkhead._finish_completion((select id from cmp), 'w1', '{"prompt_tokens": 1}', 'chatcmpl-regress-2', 'again')$q$) as settle_twice;
reset role;
select request_id, input_tokens, output_tokens, cost_usd from bulkhead.ledger where tenant_id = '00000000-0000-4000-8000-0000000000c1';
set local role regress_cmp_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000c1');
select * from bulkhead.completion_result((select id from cmp));
select reserved_usd, spent_usd from bulkhead.budget_state;

-- A completion that dies (a provider's 400) releases the budget and tokens it held.
create temp table doomed as select bulkhead.complete('cmp', '{"q": "doomed"}', 'cmp-model', 500) as id;
grant select on doomed to public;
select reserved_usd > 0 as holding from bulkhead.budget_state;
select otpm_level as otpm_held from bulkhead.budget_state \gset
reset role;
set local role regress_cmp_worker;
select count(*) as claimed from bulkhead.claim_jobs('w1', 10, '1 minute') where job_id = (select id from doomed);
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000c1');
select bulkhead.fail_job((select id from doomed), 'w1', 'openai returned HTTP 400: model not found', transient => false) as next;
reset role;
set local role regress_cmp_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000c1');
select * from bulkhead.completion_result((select id from doomed));
select reserved_usd, (otpm_level >= :otpm_held + 500 or otpm_level = otpm_cap) as tokens_returned from bulkhead.budget_state;
select count(*) filter (where settled_at is null and expired_at is null) as open_reservations from bulkhead.reservations;
-- The app may neither settle through the worker's functions nor cancel reservations.
select pg_temp.attempt($q$select bulkhead._cancel_reservation(gen_random_uuid())$q$) as app_cancels;
select pg_temp.attempt($q$select bulkhead._finish_completion((select id from doomed), 'w1', '{}', 'x', 'y')$q$) as app_finishes;
select pg_temp.attempt($q$select secret_ref from bulkhead.job_credential((select id from doomed), 'w1', 'openai')$q$) as app_reads_credential;

-- An application records first the request id the worker's call will get: the worker's settle
-- is still recorded (under the id qualified by its reservation), so the call is paid.
select bulkhead.ledger_record(gen_random_uuid(), '{"prompt_tokens": 1, "completion_tokens": 1}', 'chatcmpl-guessed',
                              model => 'cmp-model') > 0 as squatted;
create temp table guessed as select bulkhead.complete('cmp', '{"q": "guess"}', 'cmp-model', 100) as id;
grant select on guessed to public;
reset role;
set local role regress_cmp_worker;
select bulkhead.set_tenant(null);
select count(*) as claimed from bulkhead.claim_jobs('w1', 10, '1 minute') where job_id = (select id from guessed);
select bulkhead._finish_completion((select id from guessed), 'w1',
    '{"prompt_tokens": 100, "completion_tokens": 10}', 'chatcmpl-guessed', 'ok') > 0 as paid;
reset role;
select count(*) as guessed_rows, count(*) filter (where request_id like 'chatcmpl-guessed#%') as qualified
from bulkhead.ledger where request_id like 'chatcmpl-guessed%';
set local role regress_cmp_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000c1');

-- A full chat request (the gateway's shape) through the queue: the template is its system
-- prompt, every text of the request is bounded, tools included; what cannot be bounded is refused.
create temp table full_request as select bulkhead.complete('cmp', '{"q": "tools"}', 'cmp-model', 50,
    request => '{"messages": [{"role": "user", "content": "find order 42"}],
                 "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
                 "n": 2}') as id;
grant select on full_request to public;
select j.payload ->> 'prompt' as prompt, j.payload -> 'request' -> 'tools' -> 0 -> 'function' ->> 'name' as tool,
       (j.payload ->> 'choices')::int as choices, (j.payload ->> 'est_input_tokens')::int > 60 as tools_counted,
       r.max_output_tokens as reserved_output
from bulkhead.jobs j join bulkhead.reservations r on r.id = (j.payload ->> 'reservation')::uuid
where j.id = (select id from full_request);
select pg_temp.attempt($q$select bulkhead.complete(null, null, 'cmp-model', 50, request => '{"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}')$q$) as audio;
select pg_temp.attempt($q$select bulkhead.complete(null, null, 'cmp-model', 50, request => '{"messages": "hi"}')$q$) as malformed_request;
select pg_temp.attempt($q$select bulkhead.complete(null, null, 'cmp-model', 50, request => '[]')$q$) as not_an_object;
select pg_temp.attempt($q$select bulkhead.complete(null, null, 'cmp-model', 50, request => '{"messages": [{"role": "user", "content": "x"}], "n": 1.5}')$q$) as fractional_n;
select pg_temp.attempt($q$select bulkhead.complete(null, null, 'cmp-model', 50)$q$) as neither_template_nor_request;
select pg_temp.attempt($q$select bulkhead.complete(null, null, 'no-such-model', 50, request => '{"messages": [{"role": "user", "content": "x"}]}')$q$) as unknown_model;
-- Its answer message (with tool calls) is kept beside the output text.
reset role;
set local role regress_cmp_worker;
select bulkhead.set_tenant(null);
select count(*) as claimed from bulkhead.claim_jobs('w1', 10, '1 minute') where job_id = (select id from full_request);
select bulkhead._finish_completions('w1', array[(select id from full_request)],
    array['{"prompt_tokens": 80, "completion_tokens": 12}'::jsonb], array['chatcmpl-tools-1'], array[''], array[null],
    array['{"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]}'::jsonb]) is not null as finished;
reset role;
set local role regress_cmp_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000c1');
select status, output, message -> 'tool_calls' -> 0 -> 'function' ->> 'name' as called
from bulkhead.completion_result((select id from full_request));

-- Reconciliation input: a finished UTC day, a well-formed report; the app may not run it.
select pg_temp.attempt($q$select bulkhead.reconcile_usage('openai', current_date - 1, '[]')$q$) as app_reconciles;
reset role;
set local role regress_cmp_worker;
select bulkhead.set_tenant(null);
select pg_temp.attempt($q$select bulkhead.reconcile_usage('openai', (now() at time zone 'UTC')::date, '[]')$q$) as today;
select pg_temp.attempt($q$select bulkhead.reconcile_usage('mistral', '2025-01-01', '[]')$q$) as unknown_provider;
select pg_temp.attempt($q$select bulkhead.reconcile_usage('openai', '2025-01-01', '[{"project_id": 1}]')$q$) as malformed_report;
-- A's ledger rows (moved to a finished day: 4 calls, 1181 input and 73 output tokens) against a
-- report that disagrees, and a project no credential names.
reset role;
update bulkhead.ledger set created_at = '2025-01-01 12:00+00' where tenant_id = '00000000-0000-4000-8000-0000000000c1';
set local role regress_cmp_admin;
select bulkhead.set_credential('00000000-0000-4000-8000-0000000000c1', 'openai', 'env:ACME_OPENAI_KEY', 'dedicated', 'proj_acme') is not null as a_project;
reset role;
set local role regress_cmp_worker;
select bulkhead.reconcile_usage('openai', '2025-01-01',
    '[{"project_id": "proj_acme", "input_tokens": 1500, "output_tokens": 60, "requests": 2},
      {"project_id": "proj_elsewhere", "input_tokens": 10, "output_tokens": 1, "requests": 1}]') as disagreeing;
select pg_temp.attempt($q$select bulkhead.reconcile_usage('openai', '2025-01-01', '[]')$q$) as again;
select pg_temp.attempt($q$select count(*) from bulkhead.usage_drift$q$) as worker_reads_drift;
reset role;
set local role regress_cmp_admin;
select provider_project_id, attribution, dedicated_tenant, input_token_drift, output_token_drift, request_drift
from bulkhead.usage_drift_report where usage_date = '2025-01-01';
rollback;
