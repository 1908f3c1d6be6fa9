-- Admission in shared memory (bulkhead.memory_admission): the same contract as the table path,
-- without writing a row per admission. Reservations reach bulkhead.reservations when they are
-- settled or handed to the worker, with their hold still counted in memory (held_in_memory).
-- One transaction, rolled back at the end: every change to shared memory is undone with it.
-- Runs as non-superuser members of bulkhead_app, bulkhead_admin and bulkhead_worker.
\set SHOW_CONTEXT never
begin;
set client_min_messages = warning;
set local bulkhead.memory_admission = on;
create role regress_mem_app in role bulkhead_app;
create role regress_mem_admin in role bulkhead_admin;
create role regress_mem_worker in role bulkhead_worker;
insert into bulkhead.tenants (id, slug, name, pinecone_namespace) values
    ('00000000-0000-4000-8000-0000000000e1', 'mem-a', 'Acme', 'tenant-mem-a'),
    ('00000000-0000-4000-8000-0000000000e2', 'mem-b', 'Globex', 'tenant-mem-b');
-- The error's SQLSTATE, message and detail, with ids and waits masked.
create function pg_temp.attempt(statement text) returns text language plpgsql as $$
declare
    result text;
    detail text;
begin
    execute statement into result;
    return 'ok: ' || coalesce(result, 'NULL');
exception when others then
    get stacked diagnostics detail = pg_exception_detail;
    return regexp_replace(regexp_replace(
        'ERROR ' || sqlstate || ': ' || sqlerrm || coalesce(' ' || nullif(detail, ''), ''),
        '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g'),
        '"retry_after_ms": [0-9]+', '"retry_after_ms": <ms>', 'g');
end
$$;
grant execute on function pg_temp.attempt(text) to public;

set local role regress_mem_admin;
-- $1 per million input tokens, $2 per million output tokens; A may spend one cent.
select bulkhead.set_price('openai', 'mem-model', 1.00, 2.00) is not null as priced;
select bulkhead.set_skeleton('mem', 'Hello {{ slots.name }}: {{ vars.q }}') as skeleton;
select bulkhead.publish_prompt('00000000-0000-4000-8000-0000000000e1', 'mem', '{"name": "Acme"}') as a_version;
select bulkhead.activate_prompt('00000000-0000-4000-8000-0000000000e1', 'mem', 1);
select bulkhead.set_credential('00000000-0000-4000-8000-0000000000e1', 'openai', 'env:ACME_OPENAI_KEY') is not null as a_credential;
select bulkhead.set_budget('00000000-0000-4000-8000-0000000000e1', 100, 100000, 100000, 0.01);
reset role;

-- An admission holds budget in memory and writes no row.
set local role regress_mem_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e1');
create temp table r1 as select bulkhead.budget_check('mem-model', 1000, 500) as id;  -- $0.002
grant select on r1 to public;
select count(*) as rows_written from bulkhead.reservations;
select provider, model, open_reservations, open_reserved_usd from bulkhead._open_in_memory();
select model, requests, open_reservations, open_reserved_usd
from bulkhead.usage_report(now() - interval '1 day', now() + interval '1 day');

-- Refusals and bad input, each with its SQLSTATE (and for PT429, the JSON detail clients read).
select pg_temp.attempt($q$select bulkhead.budget_check('mem-model', 1000, 5000)$q$) as never_fits;
select pg_temp.attempt($q$select bulkhead.budget_check('mem-model', 1000, 4000)$q$) as over_budget;
select pg_temp.attempt($q$select bulkhead.budget_check('mem-model', 200000, 1)$q$) as over_itpm;
select pg_temp.attempt($q$select bulkhead.budget_check('no-such-model', 1, 1)$q$) as unknown_model;
select pg_temp.attempt($q$select bulkhead.budget_check('mem-model', -1, 1)$q$) as negative_tokens;
select pg_temp.attempt($q$select bulkhead.budget_check('mem-model', null, 1)$q$) as null_tokens;
select pg_temp.attempt($q$select bulkhead.budget_check('mem-model', 1, 1, '1 second')$q$) as short_lease;
select pg_temp.attempt($q$select bulkhead.budget_check('mem-model', 1, 1, '2 days')$q$) as long_lease;
select bulkhead.set_tenant(null);
select pg_temp.attempt($q$select bulkhead.budget_check('mem-model', 1, 1)$q$) as no_tenant;

-- Tenant B can neither see nor settle A's reservation.
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e2');
select count(*) as b_sees_open from bulkhead._open_in_memory();
select pg_temp.attempt($q$select bulkhead.ledger_record((select id from r1), '{"prompt_tokens": 1, "completion_tokens": 1}', 'chatcmpl-b')$q$) as b_settles_a;
-- A settles it: the reservation is written, settled, its hold released when this commits.
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e1');
select bulkhead.ledger_record((select id from r1), '{"prompt_tokens": 100, "completion_tokens": 10}', 'chatcmpl-mem-1') as cost;
select bulkhead.ledger_record((select id from r1), '{"prompt_tokens": 100, "completion_tokens": 10}', 'chatcmpl-mem-1') as cost_again;
select held_in_memory, queued, settled_at is not null as settled, reserved_usd, est_input_tokens, max_output_tokens
from bulkhead.reservations where id = (select id from r1);
select request_id, cost_usd, reserved_usd from bulkhead.ledger;

-- The meter's functions are out of the app's reach.
select pg_temp.attempt($q$select bulkhead._release_in_memory(1, 0, 0, 0)$q$) as app_releases;
select pg_temp.attempt($q$select bulkhead._materialize_reservation((select id from r1))$q$) as app_materializes;
select pg_temp.attempt($q$select bulkhead._forget_in_memory('00000000-0000-4000-8000-0000000000e1')$q$) as app_forgets;
select pg_temp.attempt($q$select bulkhead._reservation_from_memory(gen_random_uuid(), 'openai', 'mem-model', 1, 1, 1, 0, 0, 0, false, false)$q$) as app_writes_reservation;
-- The table path, called directly, admits in memory too: a tenant keeps one admission state.
select bulkhead._budget_check_table('mem-model', 1, 1, '10 minutes') is not null as table_path_goes_to_memory;
select count(*) as table_path_rows from bulkhead.reservations where not held_in_memory;

-- complete() hands the reservation to the worker as a row; a dead completion releases it.
create temp table c1 as select bulkhead.complete('mem', '{"q": "hi"}', 'mem-model', 100) as id;
grant select on c1 to public;
select r.queued, r.held_in_memory, r.settled_at is null and r.expired_at is null as open
from bulkhead.reservations r join bulkhead.jobs j on (j.payload ->> 'reservation')::uuid = r.id
where j.id = (select id from c1);
reset role;
set local role regress_mem_worker;
select bulkhead.set_tenant(null);
select count(*) as claimed from bulkhead.claim_jobs('w1', 10, '1 minute') where job_id = (select id from c1);
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e1');
select bulkhead.fail_job((select id from c1), 'w1', 'openai returned HTTP 400: model not found', transient => false) as next;
reset role;
select r.expired_at is not null as released
from bulkhead.reservations r join bulkhead.jobs j on (j.payload ->> 'reservation')::uuid = r.id
where j.id = (select id from c1);

-- A suspended tenant is refused with PT403, as on the table path.
set local role regress_mem_admin;
update bulkhead.tenants set status = 'suspended' where id = '00000000-0000-4000-8000-0000000000e1';
reset role;
set local role regress_mem_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000e1');
select pg_temp.attempt($q$select bulkhead.budget_check('mem-model', 1, 1)$q$) as suspended;
reset role;
rollback;
