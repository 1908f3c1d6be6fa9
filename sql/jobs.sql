-- The job queue the bulkhead daemon drains. A job is split in two:
-- - bulkhead.jobs holds what is tenant data (kind, payload, result, errors) under row level
--   security, like every tenant table: the worker reads it only inside the job's tenant context;
-- - bulkhead.job_schedule holds only when and by whom a job runs (state, attempts, run_at, lease),
--   which the worker reads across tenants to claim work.
-- Attempts are counted at claim, so a worker killed mid-job still uses one up; a lease that runs
-- out makes the job claimable again; after max_attempts a job is dead (bulkhead.dead_letters).

create table bulkhead.jobs (
    tenant_id       uuid        not null,
    -- A number (bulkhead.complete() returns one), but random, not a sequence: a global counter
    -- would tell a tenant how many jobs the others queue. Within 2^53 (bulkhead._random_id).
    id              bigint      not null default bulkhead._random_id(),
    kind            text        not null,
    payload         jsonb       not null default '{}',
    idempotency_key text,
    result          jsonb,
    last_error      text,
    created_at      timestamptz not null default pg_catalog.clock_timestamp(),
    constraint jobs_pkey primary key (tenant_id, id),
    constraint jobs_idempotency_key unique (tenant_id, idempotency_key),
    constraint jobs_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id),
    -- Kinds join as the daemon learns to run them.
    -- noop: does nothing (tests, benchmarks). completion and embedding: one provider call,
    -- queued only by bulkhead.complete() and bulkhead.embed_document() (the payload names an
    -- open reservation).
    -- index_build: a tenant's own vector index, queued by ingest_document (retrieval.sql).
    -- eval_score: scoring one call of an eval case, queued when its answer is in (evals.sql).
    -- provision, provider_limits: a tenant's provider project and its limits (provisioning.sql).
    -- budget_raise_end: the end of a temporary budget raise (console.sql).
    constraint jobs_kind_known check (kind in ('noop', 'completion', 'embedding', 'index_build', 'eval_score',
                                               'provision', 'provider_limits', 'budget_raise_end')),
    constraint jobs_payload_object check (pg_catalog.jsonb_typeof(payload) = 'object'),
    constraint jobs_idempotency_key_length check (pg_catalog.char_length(idempotency_key) between 1 and 200)
);

create table bulkhead.job_schedule (
    job_id       bigint      not null,
    job_tenant   uuid        not null,
    state        text        not null default 'queued',
    attempts     int         not null default 0,
    max_attempts int         not null,
    -- Waits a provider asked for (429 retry-after): they give the attempt back, up to 50 times.
    deferrals    int         not null default 0,
    run_at       timestamptz not null default pg_catalog.clock_timestamp(),
    -- Claim order among due jobs (start-time fair queuing): a job's key is virtual time. A
    -- tenant with nothing queued starts at the front (the smallest queued key); a tenant with a
    -- backlog continues after its own last key, in blocks of at most 16 jobs, each block 10 ms
    -- of virtual time after the previous one. So a tenant that queues 10,000 jobs at once
    -- delays another tenant's job by one block, not by its backlog, whatever the drain rate.
    -- Blocks keep a claim's batch to few tenants (each read in its own context).
    -- Nothing waits for it: a due job is claimable whatever its key.
    fair_key     timestamptz not null default pg_catalog.clock_timestamp(),
    leased_by    text,
    leased_until timestamptz,
    -- When the latest attempt was claimed (enqueue-to-start latency is claimed_at - jobs.created_at).
    claimed_at   timestamptz,
    updated_at   timestamptz not null default pg_catalog.clock_timestamp(),
    constraint job_schedule_pkey primary key (job_id),
    constraint job_schedule_job_fkey foreign key (job_tenant, job_id)
        references bulkhead.jobs (tenant_id, id) on delete cascade,
    constraint job_schedule_state_known check (state in ('queued', 'running', 'done', 'dead')),
    constraint job_schedule_attempts_range check (attempts >= 0 and max_attempts between 1 and 100)
);
comment on column bulkhead.job_schedule.job_tenant is
    'bulkhead:tenant-ref-cascade Deleted with the job (jobs.tenant_id, ON DELETE CASCADE).';
create index job_schedule_ready on bulkhead.job_schedule (fair_key) where state = 'queued';
-- All states: a block counts every job ever given its key, claimed ones too, so a tenant that
-- keeps topping up a partly claimed block cannot hold the front forever.
create index job_schedule_tenant_keys on bulkhead.job_schedule (job_tenant, fair_key);
create index job_schedule_leased on bulkhead.job_schedule (leased_until) where state = 'running';

alter table bulkhead.jobs enable row level security;
alter table bulkhead.jobs force row level security;
alter table bulkhead.job_schedule enable row level security;
alter table bulkhead.job_schedule force row level security;
create policy tenant_isolation on bulkhead.jobs
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));
create policy worker_schedules on bulkhead.job_schedule for all to bulkhead_worker using (true) with check (true);
create policy meter_schedules on bulkhead.job_schedule for all to bulkhead_meter using (true) with check (true);
create policy admin_reads on bulkhead.job_schedule for select to bulkhead_admin using (true);

grant select on bulkhead.jobs to bulkhead_app, bulkhead_worker, bulkhead_admin;
grant update (result, last_error) on bulkhead.jobs to bulkhead_worker;
grant select, insert on bulkhead.jobs to bulkhead_meter;
grant delete on bulkhead.jobs to bulkhead_admin;  -- tenant deletion (the schedule row cascades)
grant select, update on bulkhead.job_schedule to bulkhead_worker;
grant select, insert, update on bulkhead.job_schedule to bulkhead_meter;
grant select on bulkhead.job_schedule to bulkhead_admin;
select pg_catalog.pg_extension_config_dump('bulkhead.jobs', '');
select pg_catalog.pg_extension_config_dump('bulkhead.job_schedule', '');

-- Dead jobs, for operators: which job of which tenant, after how many attempts, since when. The
-- kind and last error are tenant data: job_status shows them inside the tenant's context.
create view bulkhead.dead_letters with (security_invoker = true) as
    select s.job_id, s.job_tenant, s.attempts, s.updated_at as died_at
    from bulkhead.job_schedule s
    where s.state = 'dead';
grant select on bulkhead.dead_letters to bulkhead_worker, bulkhead_admin;

-- Queues a job for the current tenant; returns its id. With an idempotency key, queueing the
-- same key again returns the first job. The daemon wakes at commit (NOTIFY bulkhead_jobs).
-- Private (bulkhead_meter): enqueue_job() and complete() check what only they may queue.
create function bulkhead._enqueue(
    kind text,
    payload jsonb,
    idempotency_key text,
    run_at timestamptz,
    max_attempts int
)
returns bigint
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := bulkhead.current_tenant();
    job bigint;
    starts timestamptz;
    front timestamptz;
    last_key timestamptz;
begin
    if tenant is null then
        raise exception 'no tenant context'
            using errcode = '42501', hint = 'Call bulkhead.set_tenant(...) first: a job runs for one tenant.';
    end if;
    if kind is null or payload is null or max_attempts is null then
        raise exception 'kind, payload and max_attempts are required' using errcode = '22004';
    end if;
    if pg_catalog.jsonb_typeof(payload) <> 'object' then
        raise exception 'job payload must be a JSON object' using errcode = '22023';
    end if;
    if pg_catalog.octet_length(payload::text) > 262144 then
        raise exception 'job payload is over 256 kB' using errcode = '54000';
    end if;
    if idempotency_key is not null and pg_catalog.char_length(idempotency_key) not between 1 and 200 then
        raise exception 'idempotency_key must be 1 to 200 characters' using errcode = '22023';
    end if;
    -- No queue jumping: a job runs now or later, never "earlier than now"; at most 30 days out.
    if run_at is not null and run_at > pg_catalog.clock_timestamp() + interval '30 days' then
        raise exception 'run_at is more than 30 days away' using errcode = '22023';
    end if;
    if max_attempts not between 1 and 100 then
        raise exception 'max_attempts must be between 1 and 100' using errcode = '22023';
    end if;
    if idempotency_key is not null then
        select j.id into job from bulkhead.jobs j
        where j.tenant_id = tenant and j.idempotency_key = _enqueue.idempotency_key;
        if found then
            return job;
        end if;
    end if;
    -- A random id no job of any tenant has (the schedule lists them all): 2^53 ids make a
    -- collision rare, not impossible, and a collision must not fail (or tell) anything.
    loop
        job := bulkhead._random_id();
        exit when not exists (select from bulkhead.job_schedule s where s.job_id = job);
    end loop;
    begin
        insert into bulkhead.jobs (tenant_id, id, kind, payload, idempotency_key)
        values (tenant, job, _enqueue.kind, _enqueue.payload, _enqueue.idempotency_key)
        returning id into job;
    exception
        when check_violation then
            raise exception 'unknown job kind %', pg_catalog.quote_literal(kind)
                using errcode = '22023', detail = 'Known kinds: noop, completion, embedding, index_build, eval_score, provision, provider_limits.';
        when unique_violation then
            -- A concurrent enqueue of the same key won: answer with its job (invisible to a
            -- REPEATABLE READ snapshot taken before it committed: then retry the transaction).
            select j.id into job from bulkhead.jobs j
            where j.tenant_id = tenant and j.idempotency_key = _enqueue.idempotency_key;
            if job is null then
                raise exception 'a concurrent enqueue of this idempotency key is not visible yet'
                    using errcode = '40001', hint = 'Retry the transaction.';
            end if;
            return job;
    end;
    starts := greatest(coalesce(_enqueue.run_at, pg_catalog.clock_timestamp()), pg_catalog.clock_timestamp());
    -- Fair key (see job_schedule.fair_key): a job set to start later is ordered by its own
    -- start and joins no block.
    if starts <= pg_catalog.clock_timestamp() then
        select min(s.fair_key) into front from bulkhead.job_schedule s
        where s.state = 'queued' and s.run_at <= pg_catalog.clock_timestamp();
        select max(s.fair_key) into last_key from bulkhead.job_schedule s
        where s.job_tenant = tenant and s.state = 'queued' and s.run_at <= pg_catalog.clock_timestamp();
        if last_key is null then
            last_key := coalesce(front, starts);
        end if;
        if (select count(*) from bulkhead.job_schedule s
            where s.job_tenant = tenant and s.fair_key = last_key) >= 16 then
            last_key := last_key + interval '10 milliseconds';  -- the block is full: the next one
        end if;
    end if;
    insert into bulkhead.job_schedule (job_id, job_tenant, max_attempts, run_at, fair_key)
    values (job, tenant, _enqueue.max_attempts, starts, coalesce(last_key, starts));
    perform bulkhead._notify('bulkhead_jobs');
    return job;
end
$$;

-- The public way to queue a job. SECURITY DEFINER (as bulkhead_meter): applications cannot
-- write the schedule themselves. Completions are queued by bulkhead.complete() only, which
-- admits them against the budget first.
create function bulkhead.enqueue_job(
    kind text,
    payload jsonb default '{}',
    idempotency_key text default null,
    run_at timestamptz default null,
    max_attempts int default 5
)
returns bigint
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
begin
    if kind in ('completion', 'embedding') then
        raise exception '% jobs are queued by bulkhead.%()', kind,
                case kind when 'completion' then 'complete' else 'embed_document' end
            using errcode = '42501',
                  detail = 'They admit the provider call against the tenant''s budget in the same transaction.';
    end if;
    if kind = 'eval_score' then
        raise exception 'eval_score jobs are queued by the evals themselves' using errcode = '42501';
    end if;
    if kind in ('provision', 'provider_limits') then
        raise exception '% jobs are queued by bulkhead.provision_provider() and set_budget()', kind
            using errcode = '42501', detail = 'Provisioning is the control plane''s (bulkhead_admin).';
    end if;
    if kind = 'budget_raise_end' then
        raise exception 'budget_raise_end jobs are queued by bulkhead.raise_budget()' using errcode = '42501',
            detail = 'A temporary budget raise is the control plane''s (bulkhead_admin).';
    end if;
    if kind = 'index_build' then
        raise exception 'index_build jobs are queued by bulkhead.ingest_document()'
            using errcode = '42501', detail = 'A tenant''s index is built when it passes bulkhead.retrieval_index_threshold chunks.';
    end if;
    return bulkhead._enqueue(kind, payload, idempotency_key, run_at, max_attempts);
end
$$;
comment on function bulkhead.enqueue_job(text, jsonb, text, timestamptz, int) is
    'Queues a job for the current tenant (idempotent on idempotency_key) and wakes the daemon at commit.';

-- Claims up to max_jobs due jobs for one worker (bulkhead_worker): queued jobs whose time has
-- come, and running jobs whose lease ran out. Counts the attempt now. Jobs that ran out of
-- attempts while leased die instead. SKIP LOCKED: many workers claim side by side.
create function bulkhead.claim_jobs(worker text, max_jobs int default 10, lease interval default '5 minutes')
returns table (job_id bigint, tenant_id uuid, attempts int)
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    now_ts timestamptz;
    died record;
begin
    if worker is null or max_jobs is null or lease is null then
        raise exception 'worker, max_jobs and lease are required' using errcode = '22004';
    end if;
    if max_jobs not between 1 and 1000 or lease < interval '1 second' or lease > interval '1 day' then
        raise exception 'max_jobs must be 1 to 1000 and the lease between a second and a day' using errcode = '22023';
    end if;
    now_ts := pg_catalog.clock_timestamp();
    -- A lease that ran out on the last attempt: the job is dead. An eval waiting for it learns so
    -- (in the job's tenant context), or its run would wait for ever.
    for died in
        update bulkhead.job_schedule s
        set state = 'dead', leased_by = null, leased_until = null, updated_at = now_ts
        where s.state = 'running' and s.leased_until < now_ts and s.attempts >= s.max_attempts
        returning s.job_id, s.job_tenant
    loop
        perform bulkhead._set_tenant_within_function(died.job_tenant);
        if exists (select from bulkhead.jobs j where j.tenant_id = died.job_tenant and j.id = died.job_id
                   and j.payload ? 'eval') then
            perform bulkhead._eval_call_closed_safely(died.job_id);
        end if;
        perform bulkhead._set_tenant_within_function(null);
    end loop;
    -- Each branch walks its own partial index in order (one timestamp, known to the planner).
    -- A row the second branch locks but the limit leaves out is free again at commit.
    return query
        with queued as (
            select q.job_id from bulkhead.job_schedule q
            where q.state = 'queued' and q.run_at <= now_ts
            order by q.fair_key limit max_jobs
            for update skip locked
        ),
        expired as (
            select r.job_id from bulkhead.job_schedule r
            where r.state = 'running' and r.leased_until < now_ts and r.attempts < r.max_attempts
            order by r.leased_until limit max_jobs
            for update skip locked
        )
        update bulkhead.job_schedule s
        set state = 'running', attempts = s.attempts + 1, leased_by = worker,
            leased_until = now_ts + lease, claimed_at = now_ts, updated_at = now_ts
        where s.job_id in (
            select c.job_id from (select qd.job_id from queued qd union all select ex.job_id from expired ex) c
            limit max_jobs)
        returning s.job_id, s.job_tenant, s.attempts;
end
$$;
comment on function bulkhead.claim_jobs(text, int, interval) is
    'Claims due jobs for a worker (FOR UPDATE SKIP LOCKED), counting the attempt. bulkhead_worker only.';

-- The schedule row of a job this worker holds, locked; raises if the lease is no longer its.
create function bulkhead._held_job(job bigint, worker text)
returns bulkhead.job_schedule
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    s bulkhead.job_schedule;
begin
    select * into s from bulkhead.job_schedule x where x.job_id = job for update;
    if not found or s.state <> 'running' or s.leased_by is distinct from worker then
        raise exception 'job % is not held by worker %', job, pg_catalog.quote_literal(worker)
            using errcode = '55000',
                  detail = 'Its lease ran out and another worker may have claimed it; this worker must not record an outcome.';
    end if;
    -- Without a context, the job's own tenant is entered (for the rest of this transaction);
    -- a context naming another tenant is refused.
    if bulkhead.current_tenant() is null then
        perform bulkhead._set_tenant_within_function(s.job_tenant);
    elsif s.job_tenant is distinct from bulkhead.current_tenant() then
        raise exception 'job % belongs to another tenant than the context', job
            using errcode = '42501', hint = 'Enter the job''s tenant with bulkhead.set_tenant, or set no context.';
    end if;
    return s;
end
$$;

-- Starts a held job: enters its tenant's context (for the rest of the transaction) and returns
-- what the worker needs, read under row level security. One round trip for the worker.
create function bulkhead.start_job(job bigint, worker text)
returns table (kind text, payload jsonb)
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    s bulkhead.job_schedule;
begin
    select * into s from bulkhead.job_schedule x where x.job_id = job;
    if not found or s.state <> 'running' or s.leased_by is distinct from worker then
        raise exception 'job % is not held by worker %', job, pg_catalog.quote_literal(worker)
            using errcode = '55000';
    end if;
    if bulkhead.current_tenant() is null then
        perform bulkhead._set_tenant_within_function(s.job_tenant);
    elsif s.job_tenant is distinct from bulkhead.current_tenant() then
        raise exception 'job % belongs to another tenant than the context', job using errcode = '42501';
    end if;
    return query select j.kind, j.payload from bulkhead.jobs j
        where j.tenant_id = bulkhead.current_tenant() and j.id = job;
end
$$;

-- Closes a held job in its tenant's context: its result and error, then done (no error) or
-- dead (an error). The worker's settles end with it.
create function bulkhead._close_job(job bigint, result jsonb, error text)
returns void
language sql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
    update bulkhead.jobs j set result = _close_job.result, last_error = pg_catalog.left(error, 2000)
    where j.tenant_id = bulkhead.current_tenant() and j.id = job;
    update bulkhead.job_schedule s
    set state = case when error is null then 'done' else 'dead' end,
        leased_by = null, leased_until = null, updated_at = pg_catalog.clock_timestamp()
    where s.job_id = job;
$$;

-- Records a job's success (as the worker holding it, in the job's tenant context).
create function bulkhead.complete_job(job bigint, worker text, result jsonb default null)
returns void
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
begin
    perform bulkhead._held_job(job, worker);
    perform bulkhead._close_job(job, complete_job.result, null);
end
$$;

-- Records a failure. A transient one is retried after retry_after (a provider's 429: the attempt
-- is given back) or after a capped, jittered exponential backoff; a permanent one, or one past
-- max_attempts, is dead.
create function bulkhead.fail_job(
    job bigint, worker text, error text, transient boolean default true, retry_after interval default null
)
returns text
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    s bulkhead.job_schedule := bulkhead._held_job(job, worker);
    next_state text;
    delay interval;
begin
    update bulkhead.jobs j set last_error = pg_catalog.left(coalesce(error, 'unknown error'), 2000)
    where j.tenant_id = bulkhead.current_tenant() and j.id = job;
    if transient and retry_after is not null and s.deferrals < 50 then
        next_state := 'queued';
        delay := least(greatest(retry_after, interval '0'), interval '1 hour');
        s.attempts := s.attempts - 1;  -- the provider asked to wait: not the job's fault
        s.deferrals := s.deferrals + 1;
    elsif transient and s.attempts < s.max_attempts then
        next_state := 'queued';
        -- 1 s, 2 s, 4 s ... capped at 5 minutes, each between half and all of it (jitter).
        delay := pg_catalog.make_interval(secs => least(300, 2 ^ (s.attempts - 1)) * (0.5 + pg_catalog.random() / 2));
    else
        next_state := 'dead';
        -- A provider call that will not be made stops holding its tenant's budget now.
        perform bulkhead._cancel_reservation((j.payload ->> 'reservation')::uuid)
        from bulkhead.jobs j
        where j.tenant_id = bulkhead.current_tenant() and j.id = job and j.kind in ('completion', 'embedding');
    end if;
    update bulkhead.job_schedule x
    set state = next_state, attempts = s.attempts, deferrals = s.deferrals, leased_by = null, leased_until = null,
        run_at = case when next_state = 'queued' then pg_catalog.clock_timestamp() + delay else x.run_at end,
        fair_key = case when next_state = 'queued' then pg_catalog.clock_timestamp() + delay else x.fair_key end,
        updated_at = pg_catalog.clock_timestamp()
    where x.job_id = job;
    -- A dead eval call is an error in its run (evals.sql), recorded once the job is dead.
    if next_state = 'dead' and exists (select from bulkhead.jobs j where j.tenant_id = bulkhead.current_tenant()
                                       and j.id = job and j.payload ? 'eval') then
        perform bulkhead._eval_call_closed_safely(job);
    end if;
    return next_state;
end
$$;

-- Gives a held job back untouched (a worker shutting down): its attempt is returned.
create function bulkhead.release_job(job bigint, worker text)
returns void
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
begin
    perform bulkhead._held_job(job, worker);
    update bulkhead.job_schedule s
    set state = 'queued', attempts = greatest(s.attempts - 1, 0), leased_by = null, leased_until = null,
        run_at = pg_catalog.clock_timestamp(), fair_key = pg_catalog.clock_timestamp(),
        updated_at = pg_catalog.clock_timestamp()
    where s.job_id = job;
    perform bulkhead._notify('bulkhead_jobs');
end
$$;

-- Claims up to max_jobs and returns what the worker needs to run them, in one round trip. Each
-- tenant's jobs are read inside that tenant's context (row level security decides), one tenant
-- at a time; the context is cleared again before returning.
create function bulkhead.claim_and_start_jobs(worker text, max_jobs int default 10, lease interval default '5 minutes')
returns table (job_id bigint, tenant_id uuid, kind text, payload jsonb, credential jsonb, reservation_left float8)
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    claimed bigint[];
    claimed_tenants uuid[];
    tenant uuid;
begin
    if bulkhead.current_tenant() is not null then
        raise exception 'claim_and_start_jobs runs without a tenant context' using errcode = '42501',
            detail = 'It enters each claimed job''s own tenant in turn.';
    end if;
    select pg_catalog.array_agg(c.job_id), pg_catalog.array_agg(distinct c.tenant_id)
    into claimed, claimed_tenants
    from bulkhead.claim_jobs(worker, max_jobs, lease) c;
    foreach tenant in array coalesce(claimed_tenants, '{}') loop
        perform bulkhead._set_tenant_within_function(tenant);
        -- A provider call's credential reference comes along (the tenant's own, else the
        -- shared pool), read in the same context: the worker resolves it at call time.
        -- So does how long its reservation still holds budget (NULL: no longer open): the
        -- worker makes no call its reservation would not cover to the end.
        return query select j.id, j.tenant_id, j.kind, j.payload,
                            case when j.kind in ('completion', 'embedding') then
                                (select pg_catalog.to_jsonb(c) from bulkhead.credential_for_tenant(j.payload ->> 'provider') c)
                            end,
                            case when j.kind in ('completion', 'embedding') then
                                (select extract(epoch from r.lease_expires_at - pg_catalog.clock_timestamp())::float8
                                 from bulkhead.reservations r
                                 where r.tenant_id = tenant and r.id = (j.payload ->> 'reservation')::uuid
                                   and r.settled_at is null and r.expired_at is null)
                            end
            from bulkhead.jobs j
            where j.tenant_id = tenant and j.id = any (claimed);
    end loop;
    perform bulkhead._set_tenant_within_function(null);
end
$$;

-- Records many successes in one round trip, tenant by tenant in each tenant's context. Jobs
-- this worker no longer holds (a lease ran out) are skipped; returns how many were recorded.
create function bulkhead.complete_jobs(worker text, jobs bigint[], results jsonb[])
returns int
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid;
    recorded int := 0;
    n int;
begin
    if bulkhead.current_tenant() is not null then
        raise exception 'complete_jobs runs without a tenant context' using errcode = '42501';
    end if;
    if worker is null or jobs is null or results is null
       or pg_catalog.cardinality(jobs) <> pg_catalog.cardinality(results) then
        raise exception 'worker, and as many results as jobs, are required' using errcode = '22023';
    end if;
    for tenant in
        select distinct s.job_tenant from bulkhead.job_schedule s
        where s.job_id = any (jobs) and s.state = 'running' and s.leased_by = worker
    loop
        perform bulkhead._set_tenant_within_function(tenant);
        with held as (
            update bulkhead.job_schedule s
            set state = 'done', leased_by = null, leased_until = null, updated_at = pg_catalog.clock_timestamp()
            from rows from (pg_catalog.unnest(jobs), pg_catalog.unnest(results)) as r(job, result)
            where s.job_id = r.job and s.job_tenant = tenant and s.state = 'running' and s.leased_by = worker
            returning s.job_id, r.result
        )
        update bulkhead.jobs j set result = h.result, last_error = null
        from held h where j.tenant_id = tenant and j.id = h.job_id;
        get diagnostics n = row_count;
        recorded := recorded + n;
    end loop;
    perform bulkhead._set_tenant_within_function(null);
    return recorded;
end
$$;

-- A job's state and result, for the tenant that queued it.
create function bulkhead.job_status(job bigint)
returns table (state text, attempts int, result jsonb, last_error text)
language sql stable
security definer
set search_path to pg_catalog, pg_temp
as $$
    select s.state, s.attempts, j.result, j.last_error
    from bulkhead.jobs j join bulkhead.job_schedule s on s.job_id = j.id and s.job_tenant = j.tenant_id
    where j.tenant_id = bulkhead.current_tenant() and j.id = job
$$;
comment on function bulkhead.job_status(bigint) is
    'State, attempts, result and last error of one of the current tenant''s jobs.';

alter function bulkhead.enqueue_job(text, jsonb, text, timestamptz, int) owner to bulkhead_meter;
alter function bulkhead.job_status(bigint) owner to bulkhead_meter;

revoke all on function bulkhead._enqueue(text, jsonb, text, timestamptz, int) from public;
revoke all on function bulkhead.enqueue_job(text, jsonb, text, timestamptz, int) from public;
grant execute on function bulkhead._enqueue(text, jsonb, text, timestamptz, int) to bulkhead_meter;
revoke all on function bulkhead.claim_jobs(text, int, interval) from public;
revoke all on function bulkhead._held_job(bigint, text) from public;
-- build_index_for_job (retrieval.sql) runs as bulkhead_meter and checks the worker's lease.
grant execute on function bulkhead._held_job(bigint, text) to bulkhead_meter;
revoke all on function bulkhead._close_job(bigint, jsonb, text) from public;
revoke all on function bulkhead.complete_job(bigint, text, jsonb) from public;
revoke all on function bulkhead.start_job(bigint, text) from public;
revoke all on function bulkhead.claim_and_start_jobs(text, int, interval) from public;
revoke all on function bulkhead.complete_jobs(text, bigint[], jsonb[]) from public;
revoke all on function bulkhead.fail_job(bigint, text, text, boolean, interval) from public;
revoke all on function bulkhead.release_job(bigint, text) from public;
revoke all on function bulkhead.job_status(bigint) from public;
grant execute on function bulkhead.enqueue_job(text, jsonb, text, timestamptz, int), bulkhead.job_status(bigint)
    to bulkhead_app, bulkhead_worker, bulkhead_admin;
grant execute on function bulkhead.claim_jobs(text, int, interval), bulkhead._held_job(bigint, text),
    bulkhead.start_job(bigint, text), bulkhead.complete_job(bigint, text, jsonb), bulkhead._close_job(bigint, jsonb, text), bulkhead.fail_job(bigint, text, text, boolean, interval),
    bulkhead.claim_and_start_jobs(text, int, interval), bulkhead.complete_jobs(text, bigint[], jsonb[]),
    bulkhead.release_job(bigint, text) to bulkhead_worker;
