-- The job queue through its SQL API: enqueue (idempotent), claim with SKIP LOCKED, complete,
-- fail with backoff or retry-after, dead letters, lease expiry, release, and tenant isolation.
-- Runs as non-superuser members of bulkhead_app and bulkhead_worker.
\set SHOW_CONTEXT never
begin;
set client_min_messages = warning;
create role regress_job_app in role bulkhead_app;
create role regress_job_worker in role bulkhead_worker;
insert into bulkhead.tenants (id, slug, name, pinecone_namespace) values
    ('00000000-0000-4000-8000-00000000000a', 'job-a', 'Acme', 'tenant-a'),
    ('00000000-0000-4000-8000-00000000000b', 'job-b', 'Globex', 'tenant-b');
create function pg_temp.attempt(statement text) returns text language plpgsql as $$
declare
    result text;
begin
    execute statement into result;
    return 'ok: ' || coalesce(result, 'NULL');
exception when others then
    return 'ERROR ' || sqlstate || ': '
        || regexp_replace(regexp_replace(sqlerrm, '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g'),
                          'job [0-9]+', 'job <n>', 'g');
end
$$;
grant execute on function pg_temp.attempt(text) to public;

set local role regress_job_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
create temp table a_jobs as
select bulkhead.enqueue_job('noop', jsonb_build_object('n', n)) as id from generate_series(1, 3) n;
grant select on a_jobs to public;
select bulkhead.enqueue_job('noop', '{}', idempotency_key => 'once') = bulkhead.enqueue_job('noop', '{"other": 1}', idempotency_key => 'once') as idempotent;
select pg_temp.attempt($q$select bulkhead.enqueue_job('launch_missiles')$q$) as unknown_kind;
select pg_temp.attempt($q$select bulkhead.enqueue_job('noop', '[1]')$q$) as payload_not_object;
select pg_temp.attempt($q$select bulkhead.enqueue_job('noop', idempotency_key => '')$q$) as empty_key;
select pg_temp.attempt($q$select bulkhead.enqueue_job('noop', run_at => now() + interval '31 days')$q$) as too_far_ahead;
select pg_temp.attempt($q$select bulkhead.enqueue_job('noop', jsonb_build_object('big', repeat('x', 300000)))$q$) as payload_too_big;
-- No queue jumping: a run_at in the past (even -infinity) means now.
create temp table jumper as select bulkhead.enqueue_job('noop', '{"jump": true}', run_at => '-infinity') as id;
grant select on jumper to public;
select state, attempts from bulkhead.job_status((select id from jumper));
select pg_temp.attempt($q$select count(*) from bulkhead.job_schedule$q$) as app_reads_schedule;
select pg_temp.attempt($q$select count(*) from bulkhead.claim_jobs('app')$q$) as app_claims;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select bulkhead.enqueue_job('noop', '{"tenant": "b"}') is not null as b_job;
select count(*) as b_sees_jobs from bulkhead.jobs;
select count(*) as b_sees_a_status from a_jobs, bulkhead.job_status(a_jobs.id);
select bulkhead.set_tenant(null);
select pg_temp.attempt($q$select bulkhead.enqueue_job('noop')$q$) as no_tenant;

-- The worker claims across tenants, counting attempts; a second claim finds nothing left.
reset role;
set local role regress_job_worker;
create temp table claimed as select * from bulkhead.claim_jobs('w1', 10, '1 minute');
select count(*) as claimed, count(distinct tenant_id) as tenants, max(attempts) as attempts from claimed;
select count(*) as claimed_again from bulkhead.claim_jobs('w2', 10, '1 minute');
-- Outcomes are recorded in the job's tenant context, by the worker holding the lease.
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
select bulkhead.complete_job(id, 'w1', '{"ok": true}') from a_jobs limit 1;
select pg_temp.attempt($q$select bulkhead.complete_job((select id from a_jobs offset 1 limit 1), 'w2')$q$) as other_worker;
select pg_temp.attempt($q$select bulkhead.complete_job((select job_id from claimed where tenant_id = '00000000-0000-4000-8000-00000000000b'), 'w1')$q$) as wrong_tenant_context;
select pg_temp.attempt($q$select count(*) from bulkhead.start_job((select job_id from claimed where tenant_id = '00000000-0000-4000-8000-00000000000b'), 'w1')$q$) as start_in_wrong_context;
select bulkhead.fail_job((select id from a_jobs offset 1 limit 1), 'w1', 'provider 503') as transient_failure;
select bulkhead.fail_job((select id from a_jobs offset 2 limit 1), 'w1', 'provider 429', retry_after => '30 seconds') as rate_limited;
select bulkhead.fail_job((select id from bulkhead.jobs where idempotency_key = 'once'), 'w1', 'provider 400: bad request', transient => false) as permanent_failure;
reset role;
select j.payload, s.state, s.attempts, s.run_at > clock_timestamp() as retry_later, j.result, j.last_error
from bulkhead.jobs j join bulkhead.job_schedule s on s.job_id = j.id
where j.tenant_id = '00000000-0000-4000-8000-00000000000a' order by j.created_at, j.payload::text;
select job_tenant, attempts from bulkhead.dead_letters;
set local role regress_job_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
select s.state, s.result from a_jobs, bulkhead.job_status(a_jobs.id) s order by s.state;
select pg_temp.attempt($q$select run_at from bulkhead.job_schedule limit 1$q$) as app_cannot_read_schedule;
reset role;
select run_at > '-infinity' and run_at >= now() as jumper_runs_now from bulkhead.job_schedule where job_id = (select id from jumper);

-- A lease that runs out makes the job claimable again; past max_attempts it dies instead.
set local role regress_job_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
create temp table fragile as select bulkhead.enqueue_job('noop', '{"fragile": true}', max_attempts => 2) as id;
grant select on fragile to public;
reset role;
set local role regress_job_worker;
select count(*) as claimed from bulkhead.claim_jobs('w1', 10, '1 second');
reset role;
update bulkhead.job_schedule set leased_until = now() - interval '1 second' where state = 'running';
set local role regress_job_worker;
select attempts as reclaimed_attempt from bulkhead.claim_jobs('w2', 10, '1 second') where job_id = (select id from fragile);
reset role;
update bulkhead.job_schedule set leased_until = now() - interval '1 second' where state = 'running';
set local role regress_job_worker;
select count(*) as claimable_after_max from bulkhead.claim_jobs('w3', 10, '1 second') c where c.job_id = (select id from fragile);
reset role;
select state, attempts from bulkhead.job_schedule where job_id = (select id from fragile);
-- A worker shutting down gives its job back with the attempt returned.
set local role regress_job_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
create temp table released as select bulkhead.enqueue_job('noop', '{"released": true}') as id;
grant select on released to public;
reset role;
update bulkhead.job_schedule set run_at = now() + interval '1 hour' where state = 'queued' and job_id <> (select id from released);
set local role regress_job_worker;
select count(*) as claimed from bulkhead.claim_jobs('w4', 10, '1 minute');
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select bulkhead.release_job((select id from released), 'w4');
reset role;
select state, attempts from bulkhead.job_schedule where job_id = (select id from released);

-- In batches: claim and read many jobs in one call (each tenant's inside its own context, none
-- left set after), complete them in one call; a job whose lease another worker took is skipped.
set local role regress_job_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
select count(bulkhead.enqueue_job('noop', jsonb_build_object('batch', n))) as a_batch from generate_series(1, 3) n;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select count(bulkhead.enqueue_job('noop', jsonb_build_object('batch', n))) as b_batch from generate_series(1, 2) n;
reset role;
update bulkhead.job_schedule set run_at = now() + interval '1 hour'
where state = 'queued' and job_id not in (select id from bulkhead.jobs where payload ? 'batch');
set local role regress_job_worker;
select bulkhead.set_tenant(null);
create temp table batch as select * from bulkhead.claim_and_start_jobs('w5', 10, '1 minute');
select count(*) as claimed, count(distinct tenant_id) as tenants, count(*) filter (where payload ? 'batch') as read_payloads,
       bulkhead.current_tenant() is null as no_context_left from batch;
reset role;
update bulkhead.job_schedule set leased_by = 'w6' where job_id = (select job_id from batch order by job_id limit 1);
set local role regress_job_worker;
select bulkhead.complete_jobs('w5', array_agg(job_id), array_agg('{"batched": true}'::jsonb)) as recorded from batch;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
select pg_temp.attempt($q$select bulkhead.complete_jobs('w5', '{}', '{}')$q$) as with_a_context;
reset role;
select s.state, s.leased_by, count(*) from bulkhead.job_schedule s where s.job_id in (select job_id from batch) group by 1, 2 order by 1;

-- Fair claims: tenant A queues 50 jobs, then tenant B one; B's job is claimed right after A's
-- first block of 16, not after A's whole backlog (51st, in plain arrival order).
reset role;
update bulkhead.job_schedule set state = 'done' where state in ('queued', 'running');
set local role regress_job_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
select count(bulkhead.enqueue_job('noop', jsonb_build_object('flood', n))) as a_flood from generate_series(1, 50) n;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select bulkhead.enqueue_job('noop', '{"late": true}') is not null as b_late;
reset role;
-- In arrival order (run_at) B's job would not be among the first twenty:
select count(*) filter (where job_tenant = '00000000-0000-4000-8000-00000000000b') as b_in_first_twenty_by_arrival
from (select job_tenant from bulkhead.job_schedule where state = 'queued' order by run_at limit 20) first_twenty;
set local role regress_job_worker;
select bulkhead.set_tenant(null);
select count(*) filter (where tenant_id = '00000000-0000-4000-8000-00000000000b') as b_in_first_twenty,
       count(*) as claimed
from bulkhead.claim_jobs('fair', 20, '1 minute');
rollback;
