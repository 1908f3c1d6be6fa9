-- Per-tenant evals and the release gate.
--
-- A tenant's eval set for a template (eval_sets: model and pass rules; eval_cases: variables,
-- an optional full chat request, assertions and a weight) lives under row level security like
-- every tenant table. start_eval() renders each case with one exact prompt version and queues
-- its call through complete()'s own path (_queue_completion: the same input bound, budget
-- reservation, credential, worker and ledger), tagged with the run. When the worker records a
-- call, _eval_call_closed() stores the answer, queues the extra calls `similar` (embeddings) and
-- `llm_rubric` (a judge) need, as the tenant's own calls, and scores the case here, in the
-- database (bulkhead._eval_score, extension/src/evals.rs): the gate trusts no verdict from
-- outside. A run that passes writes its evidence to prompt_eval_passes, and the gate, a trigger
-- on the active pointer itself, refuses any move to a version without a pass on the tenant's
-- current eval set (its digest): activate_prompt, a direct UPDATE by the table owner, anything.
--
-- The writing functions are SECURITY DEFINER, owned by bulkhead_meter (as in prompts.sql):
-- nobody writes these tables directly, so every case passed its checks and every verdict was
-- computed here.

create table bulkhead.eval_sets (
    tenant_id         uuid        not null,
    template_name     text        not null,
    -- The model the cases run on (NULL until set_eval_set names one: start_eval refuses then).
    model             text,
    max_output_tokens int         not null default 256,
    -- The share of the cases' weight that must pass (1: every case).
    pass_threshold    numeric     not null default 1,
    -- Each case runs `repeats` times and passes when at least `min_passes` of them do.
    repeats           int         not null default 1,
    min_passes        int,
    -- The judge of llm_rubric assertions (NULL: the set's model) and the embedding model of
    -- similar ones: both called as the tenant's own calls.
    judge_model       text,
    embedding_model   text        not null default 'text-embedding-3-small',
    updated_at        timestamptz not null default pg_catalog.clock_timestamp(),
    updated_by        text        not null,
    constraint eval_sets_pkey primary key (tenant_id, template_name),
    constraint eval_sets_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id),
    constraint eval_sets_output_range check (max_output_tokens between 1 and 100000),
    constraint eval_sets_threshold_range check (pass_threshold > 0 and pass_threshold <= 1),
    constraint eval_sets_repeats_range check (repeats between 1 and 10 and min_passes between 1 and repeats)
);

create table bulkhead.eval_cases (
    tenant_id     uuid        not null,
    id            uuid        not null default pg_catalog.gen_random_uuid(),
    template_name text        not null,
    name          text,
    vars          jsonb       not null,
    -- A full chat request (messages, tools...) in the model's provider's format: the rendered
    -- prompt becomes its system prompt. NULL: the rendered prompt is the one user message.
    request       jsonb,
    assertions    jsonb       not null,
    weight        numeric     not null default 1,
    created_at    timestamptz not null default pg_catalog.clock_timestamp(),
    created_by    text        not null,
    constraint eval_cases_pkey primary key (tenant_id, id),
    constraint eval_cases_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id),
    constraint eval_cases_set_fkey foreign key (tenant_id, template_name)
        references bulkhead.eval_sets (tenant_id, template_name),
    constraint eval_cases_weight_range check (weight > 0 and weight <= 1000000),
    constraint eval_cases_name_length check (pg_catalog.char_length(name) <= 200)
);
create index eval_cases_set on bulkhead.eval_cases (tenant_id, template_name);

create table bulkhead.eval_runs (
    tenant_id        uuid        not null,
    -- Random (bulkhead._random_id), as job ids: a sequence would tell a tenant how often the
    -- others run evals.
    id               bigint      not null default bulkhead._random_id(),
    template_name    text        not null,
    -- The exact version run (NULL only for a run that could not get one: see error).
    version          int,
    -- For an admin's skeleton run: the skeleton version the tenant's version was built on.
    skeleton_version int,
    -- The eval set as it was when the run started (bulkhead._eval_set_digest).
    set_digest       text,
    model            text,
    params           jsonb       not null default '{}',
    status           text        not null default 'running',
    error            text,
    score            numeric,
    cases            int         not null default 0,
    calls            int         not null default 0,
    reused           int         not null default 0,
    started_by       text        not null,
    started_at       timestamptz not null default pg_catalog.clock_timestamp(),
    finished_at      timestamptz,
    constraint eval_runs_pkey primary key (tenant_id, id),
    constraint eval_runs_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id),
    constraint eval_runs_version_fkey foreign key (tenant_id, template_name, version)
        references bulkhead.prompt_versions (tenant_id, template_name, version),
    constraint eval_runs_status_known check (status in ('running', 'passed', 'failed', 'error'))
);
create index eval_runs_version on bulkhead.eval_runs (tenant_id, template_name, version, started_at);

-- One call of one case in a run (attempt 1..repeats): its answer, measurements and verdict.
create table bulkhead.eval_results (
    tenant_id    uuid        not null,
    run_id       bigint      not null,
    case_id      uuid        not null,
    attempt      int         not null,
    -- The case as the run read it: a later edit of the case does not change this run.
    assertions   jsonb       not null,
    weight       numeric     not null,
    -- What makes a call the same call (version row, case, model, parameters, attempt): a later
    -- run with the same key reuses this answer instead of paying for it again.
    call_key     text        not null,
    job_id       bigint,
    status       text        not null default 'pending',
    -- pending: a call is out; answered: all calls are back, scoring is queued (an eval_score
    -- job); scored; error (the call failed, or its answer could not be scored).
    -- Extra calls (judge, embeddings) still out.
    pending      int         not null default 0,
    output       text,
    message      jsonb,
    usage        jsonb,
    cost_usd     numeric,
    latency_ms   bigint,
    measurements jsonb       not null default '{"similarity": {}, "judge": {}}',
    passed       boolean,
    details      jsonb,
    reused_from  bigint,
    scored_at    timestamptz,
    constraint eval_results_pkey primary key (tenant_id, run_id, case_id, attempt),
    constraint eval_results_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id),
    constraint eval_results_run_fkey foreign key (tenant_id, run_id) references bulkhead.eval_runs (tenant_id, id),
    constraint eval_results_status_known check (status in ('pending', 'answered', 'scored', 'error'))
);
create index eval_results_call_key on bulkhead.eval_results (tenant_id, call_key) where status = 'scored';
-- Each scored call asks whether its run has any left: only those are read.
create index eval_results_pending on bulkhead.eval_results (tenant_id, run_id) where status in ('pending', 'answered');

-- The jobs an eval is waiting for: which result each one answers, and for what.
create table bulkhead.eval_calls (
    tenant_id  uuid   not null,
    job_id     bigint not null,
    run_id     bigint not null,
    case_id    uuid   not null,
    attempt    int    not null,
    purpose    text   not null,
    -- For judge and similar: the assertion's index in the case's list.
    assertion  int,
    -- When its outcome was recorded in the case (once: _eval_call_closed).
    closed_at  timestamptz,
    constraint eval_calls_pkey primary key (tenant_id, job_id),
    constraint eval_calls_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id),
    constraint eval_calls_result_fkey foreign key (tenant_id, run_id, case_id, attempt)
        references bulkhead.eval_results (tenant_id, run_id, case_id, attempt),
    constraint eval_calls_purpose_known check (purpose in ('answer', 'judge', 'similar'))
);

-- A tenant's eval budget: a budget line of its own for its eval calls (answers, judges,
-- embeddings), which then hold and spend on it instead of on the tenant's budget (they keep its
-- rate limits: _budget_check_eval). What the line holds and spent is not kept here but read
-- from the reservations and the ledger (_eval_budget_used): no counter for a settle, a retry or
-- a worker to get wrong.
create table bulkhead.eval_budgets (
    tenant_id    uuid        not null,
    dollar_limit numeric     not null,
    period       text        not null,
    updated_at   timestamptz not null default pg_catalog.clock_timestamp(),
    constraint eval_budgets_pkey primary key (tenant_id),
    constraint eval_budgets_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id),
    constraint eval_budgets_limit_range check (dollar_limit >= 0 and dollar_limit < 1000000000),
    constraint eval_budgets_period_known check (period in ('day', 'week', 'month'))
);

alter table bulkhead.prompt_eval_passes add constraint prompt_eval_passes_run_fkey
    foreign key (tenant_id, eval_run_id) references bulkhead.eval_runs (tenant_id, id);

alter table bulkhead.eval_sets enable row level security;
alter table bulkhead.eval_sets force row level security;
alter table bulkhead.eval_cases enable row level security;
alter table bulkhead.eval_cases force row level security;
alter table bulkhead.eval_runs enable row level security;
alter table bulkhead.eval_runs force row level security;
alter table bulkhead.eval_results enable row level security;
alter table bulkhead.eval_results force row level security;
alter table bulkhead.eval_calls enable row level security;
alter table bulkhead.eval_calls force row level security;
alter table bulkhead.eval_budgets enable row level security;
alter table bulkhead.eval_budgets force row level security;
create policy tenant_isolation on bulkhead.eval_budgets
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));
create policy tenant_isolation on bulkhead.eval_sets
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));
create policy tenant_isolation on bulkhead.eval_cases
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));
create policy tenant_isolation on bulkhead.eval_runs
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));
create policy tenant_isolation on bulkhead.eval_results
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));
create policy tenant_isolation on bulkhead.eval_calls
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));

-- Not bulkhead_worker: it reaches the evals only through the functions its settles call.
grant select on bulkhead.eval_sets, bulkhead.eval_cases, bulkhead.eval_runs, bulkhead.eval_results
    to bulkhead_app, bulkhead_admin, bulkhead_meter;
grant select on bulkhead.eval_calls to bulkhead_meter, bulkhead_admin;
grant select on bulkhead.eval_budgets to bulkhead_app, bulkhead_admin, bulkhead_meter;
grant insert, update, delete on bulkhead.eval_budgets to bulkhead_meter;
grant delete on bulkhead.eval_budgets to bulkhead_admin;
grant insert, update, delete on bulkhead.eval_sets, bulkhead.eval_cases, bulkhead.eval_runs,
    bulkhead.eval_results, bulkhead.eval_calls to bulkhead_meter;
grant insert on bulkhead.prompt_eval_passes to bulkhead_meter;
-- Tenant deletion (delete_tenant runs as bulkhead_admin).
grant delete on bulkhead.eval_sets, bulkhead.eval_cases, bulkhead.eval_runs, bulkhead.eval_results,
    bulkhead.eval_calls to bulkhead_admin;

select pg_catalog.pg_extension_config_dump('bulkhead.eval_sets', '');
select pg_catalog.pg_extension_config_dump('bulkhead.eval_cases', '');
select pg_catalog.pg_extension_config_dump('bulkhead.eval_runs', '');
select pg_catalog.pg_extension_config_dump('bulkhead.eval_results', '');
select pg_catalog.pg_extension_config_dump('bulkhead.eval_calls', '');
select pg_catalog.pg_extension_config_dump('bulkhead.eval_budgets', '');

-- Sets (or, with a NULL limit, removes) a tenant's eval budget. bulkhead_admin.
-- SECURITY DEFINER (as bulkhead_meter): the budget row is written only here; what its line
-- spent and holds is read from the ledger and the reservations (_eval_budget_used).
create function bulkhead.set_eval_budget(tenant_id uuid, dollar_limit numeric, period text default 'month')
returns void
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    previous text;
begin
    if not pg_catalog.pg_has_role(bulkhead._caller(), 'bulkhead_admin', 'member') then
        raise exception 'only bulkhead_admin sets eval budgets' using errcode = '42501';
    end if;
    if period is null or period not in ('day', 'week', 'month') then
        raise exception 'period must be day, week or month' using errcode = '22023';
    end if;
    if dollar_limit is not null and (dollar_limit < 0 or dollar_limit >= 1000000000 or dollar_limit = 'NaN') then
        raise exception 'dollar_limit must be between 0 and 1e9' using errcode = '22023';
    end if;
    previous := bulkhead._act_for_tenant(set_eval_budget.tenant_id, 'set_eval_budget');
    if dollar_limit is null then
        delete from bulkhead.eval_budgets b where b.tenant_id = set_eval_budget.tenant_id;
    else
        insert into bulkhead.eval_budgets as b (tenant_id, dollar_limit, period)
        values (set_eval_budget.tenant_id, set_eval_budget.dollar_limit, set_eval_budget.period)
        on conflict on constraint eval_budgets_pkey do update
        set dollar_limit = excluded.dollar_limit, period = excluded.period,
            updated_at = pg_catalog.clock_timestamp();
    end if;
    perform bulkhead._leave_tenant(previous);
end
$$;
comment on function bulkhead.set_eval_budget(uuid, numeric, text) is
    'Gives a tenant''s eval calls a budget of their own per day, week or month, apart from its budget (NULL removes it). bulkhead_admin only.';

-- A reservation's worst-case cost at the price it was admitted at: what an eval call on the eval
-- line holds on the eval budget (its reserved_usd, the hold on the tenant's budget, is 0).
create function bulkhead._worst_case_usd(r bulkhead.reservations)
returns numeric
language sql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
    select pg_catalog.trim_scale((r.est_input_tokens * p.input_per_mtok + r.max_output_tokens * p.output_per_mtok) / 1000000)
    from bulkhead.prices p
    where p.provider = r.provider and p.model = r.model and p.effective_from = r.price_effective_from
$$;

-- The current tenant's eval line in the period of this length (aligned to
-- bulkhead.billing_time_zone): what its settled calls cost since the period began (ledger rows on
-- the eval line) and what its calls out hold (eval-line reservations whose lease runs).
create function bulkhead._eval_budget_used(period text)
returns table (period_start timestamptz, spent_usd numeric, held_usd numeric)
language sql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
    with bounds as (
        select pg_catalog.date_trunc(period, pg_catalog.clock_timestamp() at time zone tz) at time zone tz as starts
        from pg_catalog.current_setting('bulkhead.billing_time_zone') tz
    )
    select b.starts,
           (select coalesce(sum(l.cost_usd), 0) from bulkhead.ledger l
            where l.tenant_id = bulkhead.current_tenant() and l.budget_line = 'eval' and l.created_at >= b.starts),
           (select coalesce(sum(bulkhead._worst_case_usd(r)), 0) from bulkhead.reservations r
            where r.tenant_id = bulkhead.current_tenant() and r.budget_line = 'eval'
              and r.settled_at is null and r.expired_at is null and r.lease_expires_at > pg_catalog.clock_timestamp())
    from bounds b
$$;

-- The current tenant's eval budget and what its eval line spent and holds now; no row without one.
create function bulkhead.eval_budget_usage()
returns table (tenant_id uuid, dollar_limit numeric, period text, period_start timestamptz,
               spent_usd numeric, held_usd numeric)
language sql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
    select b.tenant_id, b.dollar_limit, b.period, u.period_start, u.spent_usd, u.held_usd
    from bulkhead.eval_budgets b
    cross join lateral bulkhead._eval_budget_used(b.period) u
    where b.tenant_id = bulkhead.current_tenant()
$$;
comment on function bulkhead.eval_budget_usage() is
    'The current tenant''s eval budget with what its eval calls spent this period and hold now.';

-- Admits an eval's call. For a tenant with an eval budget, on that budget's line: the tenant's
-- rate limits as for any call, but its dollars are checked against the eval budget (PT429
-- eval_budget_exceeded), and the tenant's own dollar budget neither refuses nor counts them
-- (their reservations hold 0 on it; their ledger rows say budget_line 'eval'). Otherwise as any
-- call, on the tenant's budget. bulkhead_meter only: the eval paths that queue calls run as it.
create function bulkhead._budget_check_eval(model text, est_input_tokens int, max_output_tokens int, lease interval)
returns uuid
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := bulkhead.current_tenant();
    budget bulkhead.eval_budgets;
    used record;
    reservation uuid;
begin
    -- The budget row's lock orders the tenant's eval admissions, each of which sees the calls
    -- the one before it admitted, and holds off its removal meanwhile. Nothing takes it after
    -- the admission state's lock (settles do not touch it), so this order cannot deadlock.
    select b.* into budget from bulkhead.eval_budgets b where b.tenant_id = tenant for update;
    if not found then
        return bulkhead.budget_check(model, est_input_tokens, max_output_tokens, lease);
    end if;
    reservation := case when bulkhead._admission_in_memory()
                        then coalesce(bulkhead._admit_eval_in_memory(model, est_input_tokens, max_output_tokens, lease),
                                      bulkhead._raise_refusal())
                        else bulkhead._admit_in_table(model, est_input_tokens, max_output_tokens, lease, 'eval')
                   end;
    perform bulkhead._materialize_reservation(reservation);
    update bulkhead.reservations x set budget_line = 'eval' where x.tenant_id = tenant and x.id = reservation;
    -- This call's worst case is among the holds now: refused, the admission rolls back with it.
    select * into used from bulkhead._eval_budget_used(budget.period);
    if used.spent_usd + used.held_usd > budget.dollar_limit then
        perform bulkhead._raise_for_client('PT429', 'eval_budget_exceeded',
            pg_catalog.json_build_object('code', 'eval_budget_exceeded', 'tenant_id', tenant,
                                         'limit', 'eval_budget', 'retry_after_ms', null)::text,
            'The tenant''s eval budget (bulkhead.set_eval_budget) has no room for this call.');
    end if;
    return reservation;
end
$$;

-- The eval set's identity: its rules, the tenant's banned topics and every case's variables,
-- request, assertions and weight (not names). Any edit changes it, which is what invalidates earlier passes. NULL when
-- the tenant has no case for the template.
create function bulkhead._eval_set_digest(tenant uuid, template text)
returns text
language sql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
    select pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(pg_catalog.jsonb_build_array(
               pg_catalog.to_jsonb(s) - 'tenant_id' - 'updated_at' - 'updated_by',
               -- banned_topics_absent reads them: a newly banned topic needs a new pass.
               (select pg_catalog.to_jsonb(t.banned_topics) from bulkhead.tenant_settings t where t.tenant_id = tenant),
               (select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(c.id, c.vars, c.request, c.assertions, c.weight)
                                            order by c.id)
                from bulkhead.eval_cases c where c.tenant_id = tenant and c.template_name = template))::text,
           'UTF8')), 'hex')
    from bulkhead.eval_sets s
    where s.tenant_id = tenant and s.template_name = template
      and exists (select from bulkhead.eval_cases c where c.tenant_id = tenant and c.template_name = template)
$$;

-- What the gate says about moving tenant's pointer for template to version, in the tenant's
-- context: gate is passed or empty_set_allowed with the run and digest, or refusal says why not
-- (naming the failed, unfinished or outdated run, if there is one).
create function bulkhead._eval_gate_verdict(
    tenant uuid, template text, version int,
    out gate text, out run_id bigint, out digest text, out refusal text
)
language plpgsql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    latest bulkhead.eval_runs;
begin
    digest := bulkhead._eval_set_digest(tenant, template);
    if digest is null then
        if coalesce(pg_catalog.current_setting('bulkhead.eval_gate_empty_set', true), 'refuse') = 'allow' then
            gate := 'empty_set_allowed';
            return;
        end if;
        refusal := pg_catalog.format('the tenant has no eval cases for prompt %s, so version %s cannot pass its eval set',
                                     pg_catalog.quote_literal(template), version);
        return;
    end if;
    select p.eval_run_id into run_id from bulkhead.prompt_eval_passes p
    where p.tenant_id = tenant and p.template_name = template and p.version = _eval_gate_verdict.version
      and p.set_digest = digest
    order by p.passed_at desc limit 1;
    if found then
        gate := 'passed';
        return;
    end if;
    -- The most telling run: one on the current set first, then the newest.
    select r.* into latest from bulkhead.eval_runs r
    where r.tenant_id = tenant and r.template_name = template and r.version = _eval_gate_verdict.version
    order by (r.set_digest = digest) desc, r.started_at desc limit 1;
    if not found then
        refusal := pg_catalog.format('version %s of prompt %s has no eval run', version, pg_catalog.quote_literal(template));
        return;
    end if;
    run_id := latest.id;
    refusal := case
        when latest.set_digest is distinct from digest then
            pg_catalog.format('eval run %s of version %s of prompt %s ran an earlier eval set: its cases or rules changed since',
                              latest.id, version, pg_catalog.quote_literal(template))
        when latest.status = 'running' then
            pg_catalog.format('eval run %s of version %s of prompt %s has not finished', latest.id, version,
                              pg_catalog.quote_literal(template))
        when latest.status = 'error' then
            pg_catalog.format('eval run %s of version %s of prompt %s ended in an error', latest.id, version,
                              pg_catalog.quote_literal(template))
        else
            pg_catalog.format('eval run %s of version %s of prompt %s failed (score %s, needed %s)', latest.id, version,
                              pg_catalog.quote_literal(template), pg_catalog.round(coalesce(latest.score, 0), 3),
                              latest.params ->> 'pass_threshold')
        end;
end
$$;

-- The gate's refusal: PT412 (PostgREST answers HTTP 412, Precondition Failed).
create function bulkhead._eval_gate_refuse(refusal text, run bigint)
returns void
language plpgsql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
begin
    raise exception '%', refusal
        using errcode = 'PT412',
              detail = pg_catalog.json_build_object('code', 'eval_gate_refused', 'eval_run_id', run)::text,
              hint = 'Run bulkhead.start_eval(template, version) and activate once it passes; editing the eval set '
                     'needs a new run. bulkhead_admin may pass force => true with a reason, which the release history keeps.';
end
$$;

-- The gate on the pointer itself, for every role and every path. A move passes if its release
-- row (which _move_prompt_pointer writes first) forced it or is a rollback; otherwise the
-- version needs a pass on the tenant's current eval set, whoever moves it. A move that no
-- release row describes (a direct UPDATE) gets one here, naming the role.
-- SECURITY DEFINER (as bulkhead_meter): it reads the tenant's evals and writes the history,
-- whatever the moving role may read or write.
create function bulkhead._eval_gate_on_pointer()
returns trigger
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    previous text;
    from_version int;
    latest bulkhead.prompt_releases;
    described boolean;
    verdict record;
begin
    -- A restored pointer passed the gate when it moved (its release row says how). Only a
    -- restore's insert: an UPDATE, whoever makes it, meets the gate.
    if tg_op = 'INSERT' and bulkhead._restoring() then
        return new;
    end if;
    previous := bulkhead._enter_tenant(new.tenant_id);
    if tg_op = 'UPDATE' then
        from_version := old.active_version;
    end if;
    select r.* into latest from bulkhead.prompt_releases r
    where r.tenant_id = new.tenant_id and r.template_name = new.template_name
    order by r.seq desc limit 1;
    described := found and latest.to_version = new.active_version
                 and latest.from_version is not distinct from from_version;
    if described and latest.gate in ('forced', 'rollback') then
        perform bulkhead._leave_tenant(previous);
        return new;
    end if;
    verdict := bulkhead._eval_gate_verdict(new.tenant_id, new.template_name, new.active_version);
    if verdict.refusal is not null then
        perform bulkhead._eval_gate_refuse(verdict.refusal, verdict.run_id);
    end if;
    if not described then
        insert into bulkhead.prompt_releases
            (tenant_id, template_name, seq, action, from_version, to_version, forced, reason, released_by,
             gate, eval_run_id, eval_set_digest)
        values (new.tenant_id, new.template_name, coalesce(latest.seq, 0) + 1, 'activate', from_version,
                new.active_version, false, 'moved by a direct UPDATE of bulkhead.prompt_templates',
                bulkhead._caller(), verdict.gate, verdict.run_id, verdict.digest);
    end if;
    perform bulkhead._leave_tenant(previous);
    return new;
end
$$;

create trigger prompt_templates_eval_gate
    before update of active_version on bulkhead.prompt_templates
    for each row
    when (new.active_version is not null and new.active_version is distinct from old.active_version)
    execute function bulkhead._eval_gate_on_pointer();
create trigger prompt_templates_eval_gate_on_insert
    before insert on bulkhead.prompt_templates
    for each row
    when (new.active_version is not null)
    execute function bulkhead._eval_gate_on_pointer();

-- Sets a tenant's eval rules for a template (creating the set): the model, output cap, pass
-- threshold, repeats and the judge and embedding models. Invalidates earlier passes.
create function bulkhead.set_eval_set(
    tenant_id uuid,
    template_name text,
    model text,
    max_output_tokens int default 256,
    pass_threshold numeric default 1,
    repeats int default 1,
    min_passes int default null,
    judge_model text default null,
    embedding_model text default 'text-embedding-3-small'
)
returns void
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    previous text;
    unknown text;
begin
    if template_name is null or model is null or max_output_tokens is null or pass_threshold is null
       or repeats is null or embedding_model is null then
        raise exception 'template_name, model, max_output_tokens, pass_threshold, repeats and embedding_model are required'
            using errcode = '22004';
    end if;
    if max_output_tokens not between 1 and 100000 then
        raise exception 'max_output_tokens must be between 1 and 100000' using errcode = '22023';
    end if;
    if pass_threshold <= 0 or pass_threshold > 1 then
        raise exception 'pass_threshold must be above 0 and at most 1' using errcode = '22023',
            detail = 'It is the share of the cases'' weight that must pass; 1 means every case.';
    end if;
    if repeats not between 1 and 10 or coalesce(min_passes, repeats) not between 1 and repeats then
        raise exception 'repeats must be 1 to 10, and min_passes 1 to repeats' using errcode = '22023',
            detail = 'A case runs repeats times and passes when at least min_passes of them pass.';
    end if;
    select m into unknown from pg_catalog.unnest(array[model, judge_model, embedding_model]) m
    where m is not null and not exists (select from bulkhead.prices p where p.model = m) limit 1;
    if unknown is not null then
        raise exception 'unknown model %', pg_catalog.quote_literal(unknown) using errcode = '22023',
            detail = 'Eval calls are admitted and priced like any call: the model needs a price (bulkhead.set_price).';
    end if;
    previous := bulkhead._act_for_tenant(set_eval_set.tenant_id, 'set_eval_set');
    perform bulkhead._check_eval_author('set_eval_set');
    perform bulkhead._check_eval_template(template_name);
    insert into bulkhead.eval_sets as s (tenant_id, template_name, model, max_output_tokens, pass_threshold, repeats,
                                         min_passes, judge_model, embedding_model, updated_by)
    values (set_eval_set.tenant_id, set_eval_set.template_name, set_eval_set.model, set_eval_set.max_output_tokens,
            set_eval_set.pass_threshold, set_eval_set.repeats, coalesce(set_eval_set.min_passes, set_eval_set.repeats),
            set_eval_set.judge_model, set_eval_set.embedding_model, bulkhead._caller())
    on conflict on constraint eval_sets_pkey do update
    set model = excluded.model, max_output_tokens = excluded.max_output_tokens,
        pass_threshold = excluded.pass_threshold, repeats = excluded.repeats, min_passes = excluded.min_passes,
        judge_model = excluded.judge_model, embedding_model = excluded.embedding_model,
        updated_at = pg_catalog.clock_timestamp(), updated_by = excluded.updated_by;
    perform bulkhead._leave_tenant(previous);
end
$$;
comment on function bulkhead.set_eval_set(uuid, text, text, int, numeric, int, int, text, text) is
    'Sets a tenant''s eval rules for a template: model, output cap, pass threshold, repeats (k of n), judge and embedding models.';

-- A template an eval set may name: one with a skeleton.
create function bulkhead._check_eval_template(template_name text)
returns void
language plpgsql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
begin
    if not exists (select from bulkhead.prompt_skeletons s where s.template_name = _check_eval_template.template_name) then
        raise exception 'no skeleton named %', pg_catalog.quote_literal(template_name)
            using errcode = '42704', detail = 'Eval sets belong to a prompt template, which needs a skeleton.';
    end if;
end
$$;

-- Who may write eval sets: with bulkhead.eval_authoring = admin (superuser setting), only
-- bulkhead_admin; else also the application, for the tenant it acts for. A tenant's app that may
-- edit its own set may also rewrite the exam a version must pass: the setting is for platforms
-- whose evals are the platform's, not the tenant's.
create function bulkhead._check_eval_author(action text)
returns void
language plpgsql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
begin
    if coalesce(pg_catalog.current_setting('bulkhead.eval_authoring', true), 'tenant') = 'admin'
       and not pg_catalog.pg_has_role(bulkhead._caller(), 'bulkhead_admin', 'member') then
        raise exception 'only bulkhead_admin may change eval sets here' using errcode = '42501',
            detail = pg_catalog.format('bulkhead.eval_authoring is admin: bulkhead.%s is the control plane''s.', action);
    end if;
end
$$;

-- Adds a case to a tenant's eval set for a template; returns its id. The app role adds cases
-- for the tenant it acts for, bulkhead_admin for any tenant. Invalidates earlier passes.
create function bulkhead.add_eval_case(
    tenant_id uuid,
    template_name text,
    vars jsonb,
    assertions jsonb,
    request jsonb default null,
    weight numeric default 1,
    name text default null
)
returns uuid
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    previous text;
    new_id uuid;
begin
    if template_name is null or vars is null or assertions is null or weight is null then
        raise exception 'template_name, vars, assertions and weight are required' using errcode = '22004',
            detail = 'Pass ''{}'' for a case that sets no variables.';
    end if;
    if pg_catalog.jsonb_typeof(vars) <> 'object' or pg_catalog.octet_length(vars::text) > 65536 then
        raise exception 'vars must be a JSON object of at most 64 kB' using errcode = '22023';
    end if;
    if pg_catalog.octet_length(assertions::text) > 65536 then
        raise exception 'assertions are over 64 kB' using errcode = '54000';
    end if;
    if request is not null and (pg_catalog.jsonb_typeof(request) <> 'object'
                                or pg_catalog.octet_length(request::text) > 262144
                                or pg_catalog.jsonb_typeof(coalesce(request -> 'messages', '[]')) <> 'array') then
        raise exception 'request must be a JSON object of at most 256 kB whose messages are an array' using errcode = '22023',
            detail = 'A chat request in the set''s model''s provider format (messages, tools...); its model, max tokens and stream are the set''s.';
    end if;
    if weight <= 0 or weight > 1000000 then
        raise exception 'weight must be above 0 and at most 1000000' using errcode = '22023';
    end if;
    if pg_catalog.char_length(name) > 200 then
        raise exception 'name must be at most 200 characters' using errcode = '22023';
    end if;
    perform bulkhead._eval_check_assertions(assertions::text);
    previous := bulkhead._act_for_tenant(add_eval_case.tenant_id, 'add_eval_case');
    perform bulkhead._check_eval_template(template_name);
    perform bulkhead._check_eval_author('add_eval_case');
    insert into bulkhead.eval_sets (tenant_id, template_name, updated_by)
    values (add_eval_case.tenant_id, add_eval_case.template_name, bulkhead._caller())
    on conflict on constraint eval_sets_pkey do nothing;
    -- The set's row lock orders edits against runs starting (which read the set under it).
    perform from bulkhead.eval_sets s
    where s.tenant_id = add_eval_case.tenant_id and s.template_name = add_eval_case.template_name for update;
    if (select count(*) from bulkhead.eval_cases c
        where c.tenant_id = add_eval_case.tenant_id and c.template_name = add_eval_case.template_name) >= 1000 then
        raise exception 'the eval set already has 1000 cases' using errcode = '54000';
    end if;
    if (select coalesce(sum(pg_catalog.octet_length(c.vars::text) + pg_catalog.octet_length(c.assertions::text)
                            + coalesce(pg_catalog.octet_length(c.request::text), 0)), 0)
        from bulkhead.eval_cases c
        where c.tenant_id = add_eval_case.tenant_id and c.template_name = add_eval_case.template_name) > 33554432 then
        raise exception 'the eval set is over 32 MB' using errcode = '54000';
    end if;
    insert into bulkhead.eval_cases (tenant_id, template_name, name, vars, request, assertions, weight, created_by)
    values (add_eval_case.tenant_id, add_eval_case.template_name, add_eval_case.name, add_eval_case.vars,
            add_eval_case.request, add_eval_case.assertions, add_eval_case.weight, bulkhead._caller())
    returning id into new_id;
    perform bulkhead._leave_tenant(previous);
    return new_id;
end
$$;
comment on function bulkhead.add_eval_case(uuid, text, jsonb, jsonb, jsonb, numeric, text) is
    'Adds a case (variables, optional chat request, assertions, weight) to a tenant''s eval set for a template; returns its id.';

-- Removes a case from a tenant's eval set; false if the tenant has no such case.
create function bulkhead.remove_eval_case(tenant_id uuid, case_id uuid)
returns boolean
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    previous text;
    removed boolean;
begin
    if case_id is null then
        raise exception 'case_id is required' using errcode = '22004';
    end if;
    previous := bulkhead._act_for_tenant(remove_eval_case.tenant_id, 'remove_eval_case');
    perform bulkhead._check_eval_author('remove_eval_case');
    perform from bulkhead.eval_sets s join bulkhead.eval_cases c on c.tenant_id = s.tenant_id and c.template_name = s.template_name
    where c.tenant_id = remove_eval_case.tenant_id and c.id = case_id
    for update of s;
    delete from bulkhead.eval_cases c where c.tenant_id = remove_eval_case.tenant_id and c.id = case_id;
    removed := found;
    perform bulkhead._leave_tenant(previous);
    return removed;
end
$$;
comment on function bulkhead.remove_eval_case(uuid, uuid) is
    'Removes a case from a tenant''s eval set (invalidating earlier passes); false if there was none.';

-- Queues eval runs; returns their ids. In a tenant context (the app role, or anyone who names
-- tenant_id), version is that tenant's version: one run. Without one (bulkhead_admin), version
-- is a skeleton version: one run for every tenant whose active prompt uses the template, of the
-- tenant's own version on that skeleton (published now from its active slots and body, if it
-- has none). A run already going for the same version and eval set is joined, not repeated.
create function bulkhead.start_eval(template_name text, version int, tenant_id uuid default null)
returns setof bigint
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    current uuid := bulkhead.current_tenant();
    previous text;
    t record;
    candidate int;
    run bigint;
    lock_wait text := pg_catalog.current_setting('lock_timeout');
begin
    if template_name is null or version is null then
        raise exception 'template_name and version are required' using errcode = '22004';
    end if;
    if current is not null or start_eval.tenant_id is not null then
        previous := bulkhead._act_for_tenant(coalesce(start_eval.tenant_id, current), 'start_eval');
        if not exists (select from bulkhead.prompt_versions v
                       where v.tenant_id = bulkhead.current_tenant() and v.template_name = start_eval.template_name
                         and v.version = start_eval.version) then
            raise exception 'prompt % has no version %', pg_catalog.quote_literal(template_name), version
                using errcode = '42704', hint = 'Publish it first with bulkhead.publish_prompt(...).';
        end if;
        run := bulkhead._start_tenant_eval(start_eval.template_name, start_eval.version, null);
        perform bulkhead._leave_tenant(previous);
        return next run;
        return;
    end if;
    if not pg_catalog.pg_has_role(bulkhead._caller(), 'bulkhead_admin', 'member') then
        raise exception 'start_eval needs a tenant context' using errcode = '42501',
            hint = 'Call bulkhead.set_tenant(...) first; only bulkhead_admin runs a skeleton version for every tenant.';
    end if;
    if not exists (select from bulkhead.prompt_skeletons s
                   where s.template_name = start_eval.template_name and s.version = start_eval.version) then
        raise exception 'skeleton % has no version %', pg_catalog.quote_literal(template_name), version
            using errcode = '42704',
                  detail = 'Without a tenant context, start_eval runs a skeleton version for every tenant on the template.';
    end if;
    previous := coalesce(pg_catalog.current_setting('bulkhead.tenant_id', true), '');
    for t in select x.id from bulkhead.tenants x order by x.id loop
        perform bulkhead._set_tenant_within_function(t.id);
        if not exists (select from bulkhead.prompt_templates p
                       where p.tenant_id = t.id and p.template_name = start_eval.template_name
                         and p.active_version is not null) then
            continue;
        end if;
        -- One tenant's own open transaction (holding its budget row, say) must not stall or
        -- abort every other tenant's run: a lock that does not come within 2 s makes that
        -- tenant's run an error to start again.
        perform pg_catalog.set_config('lock_timeout', '2s', true);
        begin
            begin
                candidate := bulkhead._eval_candidate(t.id, start_eval.template_name, start_eval.version);
            exception when lock_not_available or serialization_failure or deadlock_detected or query_canceled then
                raise;
            when others then
                -- The tenant's slots or body do not fit the new skeleton: a run with no version says so.
                insert into bulkhead.eval_runs (tenant_id, template_name, skeleton_version, status, error, started_by,
                                                finished_at)
                values (t.id, start_eval.template_name, start_eval.version, 'error',
                        'the tenant''s active slots and body do not fit this skeleton version: ' || sqlerrm,
                        bulkhead._caller(), pg_catalog.clock_timestamp())
                returning id into run;
            end;
            if run is null then
                run := bulkhead._start_tenant_eval(start_eval.template_name, candidate, start_eval.version);
            end if;
        exception when lock_not_available or deadlock_detected then
            insert into bulkhead.eval_runs (tenant_id, template_name, skeleton_version, status, error, started_by,
                                            finished_at)
            values (t.id, start_eval.template_name, start_eval.version, 'error',
                    'the tenant was busy (a lock did not come within 2 s): start its run again',
                    bulkhead._caller(), pg_catalog.clock_timestamp())
            returning id into run;
        end;
        perform pg_catalog.set_config('lock_timeout', lock_wait, true);
        return next run;
        run := null;
    end loop;
    perform bulkhead._leave_tenant(previous);
end
$$;
comment on function bulkhead.start_eval(text, int, uuid) is
    'Queues eval runs of a prompt version (a tenant''s version in its context; a skeleton version for every tenant on it, for bulkhead_admin); returns the run ids.';

-- The current tenant's version of template on skeleton version skeleton: its newest, or one
-- published now from its active version's slots and body (checked against that skeleton).
create function bulkhead._eval_candidate(tenant uuid, template text, skeleton int)
returns int
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    found_version int;
    active bulkhead.prompt_versions;
    skeleton_body text;
    new_version int;
begin
    select v.version into found_version from bulkhead.prompt_versions v
    where v.tenant_id = tenant and v.template_name = template and v.skeleton_version = skeleton
    order by v.version desc limit 1;
    if found then
        return found_version;
    end if;
    select v.* into active from bulkhead.prompt_versions v
    join bulkhead.prompt_templates p on p.tenant_id = v.tenant_id and p.template_name = v.template_name
                                    and p.active_version = v.version
    where v.tenant_id = tenant and v.template_name = template;
    select s.body into skeleton_body from bulkhead.prompt_skeletons s
    where s.template_name = template and s.version = skeleton;
    if active.version is null or skeleton_body is null then
        raise exception 'tenant % has no active version of prompt %, or the prompt no skeleton version %',
                tenant, pg_catalog.quote_literal(template), skeleton
            using errcode = '42704';
    end if;
    perform bulkhead._check_prompt_version(template, skeleton_body, active.slots::text, active.body);
    update bulkhead.prompt_templates p set latest_version = p.latest_version + 1
    where p.tenant_id = tenant and p.template_name = template
    returning p.latest_version into new_version;
    insert into bulkhead.prompt_versions (tenant_id, template_name, version, skeleton_version, slots, body, created_by)
    values (tenant, template, new_version, skeleton, active.slots, active.body, bulkhead._caller());
    return new_version;
end
$$;

-- One run for the current tenant: every case, repeats times, rendered with exactly this version
-- and queued as the tenant's own call, or reused from an earlier identical call.
create function bulkhead._start_tenant_eval(template text, version int, skeleton int)
returns bigint
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := bulkhead.current_tenant();
    ver bulkhead.prompt_versions;
    rules bulkhead.eval_sets;
    digest text;
    run bigint;
    c bulkhead.eval_cases;
    key text;
    prior bulkhead.eval_results;
    rendered text;
    job bigint;
    n_calls int := 0;
    n_reused int := 0;
    n_cases int := 0;
begin
    select v.* into ver from bulkhead.prompt_versions v
    where v.tenant_id = tenant and v.template_name = template and v.version = _start_tenant_eval.version;
    -- The set's row lock: no edit lands between the digest and the rules and cases read, and two
    -- starts of one template take turns (the second joins the first's run).
    select s.* into rules from bulkhead.eval_sets s where s.tenant_id = tenant and s.template_name = template
    for update;
    digest := bulkhead._eval_set_digest(tenant, template);
    -- A run of this version that still waits, ten minutes on, though none of its jobs is queued
    -- or running any more, never ends by itself (a job lost its way): it ends in error, and a new
    -- run may start. A run whose calls are only slow (a provider's 429s) is left alone.
    update bulkhead.eval_runs r
    set status = 'error', finished_at = pg_catalog.clock_timestamp(),
        error = 'abandoned: it waited for calls that no job was making any more'
    where r.tenant_id = tenant and r.template_name = template and r.version = _start_tenant_eval.version
      and r.status = 'running' and r.started_at < pg_catalog.clock_timestamp() - interval '10 minutes'
      and not exists (
          select from bulkhead.jobs j join bulkhead.job_schedule s on s.job_id = j.id
          where j.tenant_id = tenant and s.state in ('queued', 'running')
            and j.kind in ('completion', 'embedding', 'eval_score') and (j.payload -> 'eval' ->> 'run') = r.id::text);
    -- Join a run already going for this version and eval set, or one that ended and that a new
    -- run would only copy (every call answered and measured: all of it would be reused).
    select r.id into run from bulkhead.eval_runs r
    where r.tenant_id = tenant and r.template_name = template and r.version = _start_tenant_eval.version
      and r.set_digest = digest
      and (r.status = 'running'
           or (r.status in ('passed', 'failed')
               and not exists (select from bulkhead.eval_results x
                               where x.tenant_id = tenant and x.run_id = r.id
                                 and (x.status <> 'scored' or pg_catalog.jsonb_path_exists(x.measurements, '$.*.*.error')))))
    order by r.started_at desc limit 1;
    if found then
        return run;
    end if;
    insert into bulkhead.eval_runs (tenant_id, template_name, version, skeleton_version, set_digest, model, params,
                                    started_by)
    values (tenant, template, _start_tenant_eval.version, skeleton, digest, rules.model,
            pg_catalog.jsonb_build_object('max_output_tokens', rules.max_output_tokens,
                                          'pass_threshold', rules.pass_threshold, 'repeats', rules.repeats,
                                          'min_passes', rules.min_passes, 'judge_model', rules.judge_model,
                                          'embedding_model', rules.embedding_model),
            bulkhead._caller())
    returning id into run;
    if digest is null or rules.model is null then
        update bulkhead.eval_runs r
        set status = 'error', finished_at = pg_catalog.clock_timestamp(),
            error = case when digest is null then 'the tenant has no eval cases for this template'
                         else 'the eval set names no model (bulkhead.set_eval_set)' end
        where r.tenant_id = tenant and r.id = run;
        return run;
    end if;
    for c in select x.* from bulkhead.eval_cases x where x.tenant_id = tenant and x.template_name = template
             order by x.id loop
        n_cases := n_cases + 1;
        for attempt_no in 1 .. rules.repeats loop
            key := pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(pg_catalog.jsonb_build_array(
                       ver.id, c.vars, c.request, c.assertions, rules.model, rules.max_output_tokens,
                       rules.judge_model, rules.embedding_model, attempt_no)::text, 'UTF8')), 'hex');
            -- Not one whose judge or embeddings failed: that was the moment, not the answer.
            select r.* into prior from bulkhead.eval_results r
            where r.tenant_id = tenant and r.call_key = key and r.status = 'scored'
              and not pg_catalog.jsonb_path_exists(r.measurements, '$.*.*.error')
            order by r.scored_at desc limit 1;
            if found then
                insert into bulkhead.eval_results (tenant_id, run_id, case_id, attempt, assertions, weight, call_key,
                                                   output, message, usage, cost_usd, latency_ms, measurements,
                                                   reused_from)
                values (tenant, run, c.id, attempt_no, c.assertions, c.weight, key, prior.output, prior.message,
                        prior.usage, prior.cost_usd, prior.latency_ms, prior.measurements,
                        coalesce(prior.reused_from, prior.run_id));
                -- Scored again (the tenant's banned topics may have changed since), by the
                -- worker: never here, in a transaction that may hold budget locks.
                update bulkhead.eval_results r set status = 'answered'
                where r.tenant_id = tenant and r.run_id = run and r.case_id = c.id and r.attempt = attempt_no;
                perform bulkhead._eval_queue_score(run, c.id, attempt_no);
                n_reused := n_reused + 1;
                continue;
            end if;
            insert into bulkhead.eval_results (tenant_id, run_id, case_id, attempt, assertions, weight, call_key)
            values (tenant, run, c.id, attempt_no, c.assertions, c.weight, key);
            begin
                rendered := bulkhead.render_prompt_version(template, _start_tenant_eval.version, c.vars);
                -- No idempotency key: the call is queued once, here, and a key a client could
                -- also send would let it plant a job in the call's place.
                job := bulkhead._queue_completion(rendered, rules.model, rules.max_output_tokens, false,
                                                  '30 minutes', null, c.request, template,
                                                  pg_catalog.jsonb_build_object('run', run));
                insert into bulkhead.eval_calls (tenant_id, job_id, run_id, case_id, attempt, purpose)
                values (tenant, job, run, c.id, attempt_no, 'answer');
                update bulkhead.eval_results r set job_id = job
                where r.tenant_id = tenant and r.run_id = run and r.case_id = c.id and r.attempt = attempt_no;
                n_calls := n_calls + 1;
            exception when lock_not_available or serialization_failure or deadlock_detected or query_canceled then
                raise;
            when others then
                -- A case that does not render, or a call the budget refuses: an error in this run.
                update bulkhead.eval_results r
                set status = 'error', passed = false, scored_at = pg_catalog.clock_timestamp(),
                    details = pg_catalog.jsonb_build_object('error', sqlstate || ': ' || sqlerrm)
                where r.tenant_id = tenant and r.run_id = run and r.case_id = c.id and r.attempt = attempt_no;
            end;
        end loop;
    end loop;
    update bulkhead.eval_runs r set cases = n_cases, calls = n_calls, reused = n_reused
    where r.tenant_id = tenant and r.id = run;
    perform bulkhead._eval_finish_run(run);
    return run;
end
$$;

-- Called when the worker records one of an eval's calls (in the job's tenant context, inside
-- the settle's transaction): stores the answer or the measurement and queues what comes next,
-- the extra calls a case needs (judge, embeddings) or, once nothing is out, its scoring (an
-- eval_score job). Nothing here scores: a case's assertions run in a job of their own, never
-- while a settle holds budget locks, and never able to undo a settle.
-- SECURITY DEFINER (as bulkhead_meter): it writes eval rows and queues calls, which the worker
-- that settles may not do itself.
create function bulkhead._eval_call_closed(job bigint)
returns void
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := bulkhead.current_tenant();
    this_call bulkhead.eval_calls;
    j record;
    res bulkhead.eval_results;
    a record;
    extra bigint;
    outstanding int := 0;
    measured jsonb;
    path text[];
begin
    select x.kind, x.payload, x.result, x.last_error, s.state, s.claimed_at into j
    from bulkhead.jobs x join bulkhead.job_schedule s on s.job_id = x.id
    where x.tenant_id = tenant and x.id = job;
    if j.kind = 'eval_score' then
        -- The scoring job itself died: its case is an error in the run, which can then end.
        -- (Its run ends through one more eval_score job: here, in fail_job or a claim, no
        -- worker may wait for the run's row lock.)
        if j.state = 'dead' and exists (
                select from bulkhead.eval_results r
                where r.tenant_id = tenant and r.run_id = (j.payload ->> 'run')::bigint
                  and r.case_id = (j.payload ->> 'case')::uuid and r.attempt = (j.payload ->> 'attempt')::int
                  and r.status in ('pending', 'answered')) then
            perform bulkhead._eval_result_failed((j.payload ->> 'run')::bigint, (j.payload ->> 'case')::uuid,
                (j.payload ->> 'attempt')::int, 'scoring failed: ' || coalesce(j.last_error, 'unknown error'));
            perform bulkhead._eval_queue_score((j.payload ->> 'run')::bigint, (j.payload ->> 'case')::uuid,
                (j.payload ->> 'attempt')::int);
        end if;
        return;
    end if;
    -- Only a call that ended (done or dead: a failed attempt waiting for its retry has not),
    -- recorded once.
    if not found or j.state not in ('done', 'dead') then
        return;
    end if;
    update bulkhead.eval_calls c set closed_at = pg_catalog.clock_timestamp()
    where c.tenant_id = tenant and c.job_id = job and c.closed_at is null
    returning c.* into this_call;
    -- Only a job the eval queued itself, for this run.
    if not found or (j.payload -> 'eval' ->> 'run') is distinct from this_call.run_id::text then
        return;
    end if;
    select r.* into res from bulkhead.eval_results r
    where r.tenant_id = tenant and r.run_id = this_call.run_id and r.case_id = this_call.case_id
      and r.attempt = this_call.attempt
    for update;
    if res.status <> 'pending' then
        return;
    end if;
    if this_call.purpose = 'answer' then
        if j.state = 'dead' or j.last_error is not null then
            perform bulkhead._eval_result_failed(this_call.run_id, this_call.case_id, this_call.attempt,
                                                 coalesce(j.last_error, 'the call failed'));
            perform bulkhead._eval_queue_score(this_call.run_id, this_call.case_id, this_call.attempt);
            return;
        end if;
        res.output := coalesce(j.result ->> 'output', '');
        res.measurements := '{"similarity": {}, "judge": {}}';
        for a in select e.value, (e.ordinality - 1)::int as idx
                 from pg_catalog.jsonb_array_elements(res.assertions) with ordinality e
                 where e.value ->> 'type' in ('similar', 'llm_rubric') loop
            path := array[case when a.value ->> 'type' = 'similar' then 'similarity' else 'judge' end, a.idx::text];
            begin
                if a.value ->> 'type' = 'similar' then
                    extra := bulkhead._eval_queue_similarity(this_call, a.idx, a.value ->> 'value', res.output);
                else
                    extra := bulkhead._eval_queue_judge(this_call, a.idx, a.value ->> 'value', res.output);
                end if;
                insert into bulkhead.eval_calls (tenant_id, job_id, run_id, case_id, attempt, purpose, assertion)
                values (tenant, extra, this_call.run_id, this_call.case_id, this_call.attempt,
                        case when a.value ->> 'type' = 'similar' then 'similar' else 'judge' end, a.idx);
                outstanding := outstanding + 1;
            exception when lock_not_available or serialization_failure or deadlock_detected or query_canceled then
                raise;
            when others then
                res.measurements := pg_catalog.jsonb_set(res.measurements, path,
                    pg_catalog.jsonb_build_object('error', pg_catalog.left(sqlerrm, 300)));
            end;
        end loop;
        update bulkhead.eval_results r
        set output = res.output, message = j.result -> 'message', usage = j.result -> 'usage',
            cost_usd = (j.result ->> 'cost_usd')::numeric, pending = outstanding, measurements = res.measurements,
            status = case when outstanding = 0 then 'answered' else 'pending' end,
            -- As the worker saw it: from the claim to the recorded answer.
            latency_ms = greatest(0, pg_catalog.round(extract(epoch from pg_catalog.clock_timestamp() - j.claimed_at) * 1000))::bigint
        where r.tenant_id = tenant and r.run_id = this_call.run_id and r.case_id = this_call.case_id
          and r.attempt = this_call.attempt;
    else
        path := array[case when this_call.purpose = 'similar' then 'similarity' else 'judge' end, this_call.assertion::text];
        if j.state = 'dead' or j.last_error is not null then
            measured := pg_catalog.jsonb_build_object('error', 'the ' || this_call.purpose || ' call failed: '
                                                      || pg_catalog.left(coalesce(j.last_error, ''), 300));
        else
            begin
                if this_call.purpose = 'judge' then
                    measured := bulkhead._eval_judge_score(coalesce(j.result ->> 'output', ''))::jsonb;
                else
                    measured := coalesce(pg_catalog.to_jsonb(bulkhead._eval_cosine(j.result -> 'embeddings')),
                                         '{"error": "the provider returned unusable embeddings"}');
                end if;
            exception when query_canceled then
                raise;
            when others then
                measured := pg_catalog.jsonb_build_object('error', 'the ' || this_call.purpose
                    || ' answer could not be read: ' || pg_catalog.left(sqlerrm, 200));
            end;
        end if;
        update bulkhead.eval_results r
        set measurements = pg_catalog.jsonb_set(r.measurements, path, measured), pending = r.pending - 1,
            status = case when r.pending - 1 = 0 then 'answered' else 'pending' end
        where r.tenant_id = tenant and r.run_id = this_call.run_id and r.case_id = this_call.case_id
          and r.attempt = this_call.attempt
        returning r.pending into outstanding;
    end if;
    if outstanding = 0 then
        perform bulkhead._eval_queue_score(this_call.run_id, this_call.case_id, this_call.attempt);
    end if;
end
$$;

-- _eval_call_closed for the settles and for fail_job: whatever it meets (an answer it cannot
-- read, a refusal), the settle it runs in goes through, and the case becomes an error.
-- SECURITY DEFINER (as bulkhead_meter): the worker calls it and may not write eval rows.
create function bulkhead._eval_call_closed_safely(job bigint)
returns void
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    this_call bulkhead.eval_calls;
begin
    begin
        perform bulkhead._eval_call_closed(job);
    exception when lock_not_available or serialization_failure or deadlock_detected or query_canceled then
        raise;
    when others then
        select c.* into this_call from bulkhead.eval_calls c
        where c.tenant_id = bulkhead.current_tenant() and c.job_id = job;
        if found then
            perform bulkhead._eval_result_failed(this_call.run_id, this_call.case_id, this_call.attempt,
                                                 'the answer could not be recorded: ' || sqlstate || ': ' || sqlerrm);
            perform bulkhead._eval_queue_score(this_call.run_id, this_call.case_id, this_call.attempt);
        end if;
    end;
end
$$;

-- Marks one call of a case an error (it fails), unless it was already scored.
create function bulkhead._eval_result_failed(run bigint, case_id uuid, attempt int, why text)
returns void
language sql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
    update bulkhead.eval_results r
    set status = 'error', passed = false, pending = 0, scored_at = pg_catalog.clock_timestamp(),
        details = pg_catalog.jsonb_build_object('error', pg_catalog.left(why, 500))
    where r.tenant_id = bulkhead.current_tenant() and r.run_id = run and r.case_id = _eval_result_failed.case_id
      and r.attempt = _eval_result_failed.attempt and r.status in ('pending', 'answered');
$$;

-- Queues the scoring of one call of a case (which also ends the run if it was the last).
create function bulkhead._eval_queue_score(run bigint, case_id uuid, attempt int)
returns bigint
language sql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
    select bulkhead._enqueue('eval_score',
        pg_catalog.jsonb_build_object('run', run, 'case', case_id, 'attempt', attempt,
                                      'eval', pg_catalog.jsonb_build_object('run', run)),
        null, null, 3)
$$;

-- The worker's eval_score job: scores one call of a case in the database, from what was stored,
-- and ends the run if nothing is left. A repeat (the job claimed again) finds it scored and only
-- tries to end the run. Returns the call's verdict.
-- SECURITY DEFINER (as bulkhead_meter): the worker holding the job may not write eval rows.
create function bulkhead.score_eval_job(job bigint, worker text)
returns jsonb
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    payload jsonb;
    res bulkhead.eval_results;
begin
    perform bulkhead._held_job(job, worker);
    -- Scoring is bounded by the case's limits and checks for a cancel between assertions; these
    -- bound the rest. A lock held elsewhere (a run's row, a start in progress) is met by 55P03,
    -- which the worker retries later.
    perform pg_catalog.set_config('statement_timeout', '60s', true);
    perform pg_catalog.set_config('lock_timeout', '500ms', true);
    select j.payload into payload from bulkhead.jobs j
    where j.tenant_id = bulkhead.current_tenant() and j.id = job and j.kind = 'eval_score';
    if not found then
        raise exception 'job % is not an eval_score job', job using errcode = '22023';
    end if;
    select r.* into res from bulkhead.eval_results r
    where r.tenant_id = bulkhead.current_tenant() and r.run_id = (payload ->> 'run')::bigint
      and r.case_id = (payload ->> 'case')::uuid and r.attempt = (payload ->> 'attempt')::int
    for update;
    if res.status = 'answered' then
        perform bulkhead._eval_score_result(res.run_id, res.case_id, res.attempt);
    end if;
    perform bulkhead._eval_finish_run(res.run_id);
    return (select pg_catalog.jsonb_build_object('status', r.status, 'passed', r.passed)
            from bulkhead.eval_results r
            where r.tenant_id = res.tenant_id and r.run_id = res.run_id and r.case_id = res.case_id
              and r.attempt = res.attempt);
end
$$;

-- The cosine similarity of the first two vectors of a JSON array; NULL if they are not two
-- equally long, non-zero numeric vectors of values between 1e-100 and 1e100 in size (or 0); a
-- value outside is dropped, which makes the lengths differ: nothing overflows or underflows.
create function bulkhead._eval_cosine(vectors jsonb)
returns double precision
language sql immutable
security invoker
set search_path to pg_catalog, pg_temp
as $$
    select case when count(*) > 0 and count(*) = pg_catalog.jsonb_array_length(vectors -> 0)
                     and count(*) = pg_catalog.jsonb_array_length(vectors -> 1)
                     and sum(a * a) > 0 and sum(b * b) > 0
                then sum(a * b) / (pg_catalog.sqrt(sum(a * a)) * pg_catalog.sqrt(sum(b * b))) end
    from (select (x.value)::text::double precision as a, (y.value)::text::double precision as b
          from pg_catalog.jsonb_array_elements(case when pg_catalog.jsonb_typeof(vectors -> 0) = 'array'
                                                    then vectors -> 0 else '[]' end) with ordinality x
          join pg_catalog.jsonb_array_elements(case when pg_catalog.jsonb_typeof(vectors -> 1) = 'array'
                                                    then vectors -> 1 else '[]' end) with ordinality y
            on y.ordinality = x.ordinality
          where pg_catalog.jsonb_typeof(x.value) = 'number' and pg_catalog.jsonb_typeof(y.value) = 'number'
            and abs((x.value)::text::numeric) < 1e100 and abs((y.value)::text::numeric) < 1e100
            and (abs((x.value)::text::numeric) = 0 or abs((x.value)::text::numeric) > 1e-100)
            and (abs((y.value)::text::numeric) = 0 or abs((y.value)::text::numeric) > 1e-100)) v
$$;

-- A judge call for an llm_rubric assertion, admitted and queued as the tenant's own call (on
-- the tenant's budget and credential): the judge sees this tenant's rubric and answer only.
create function bulkhead._eval_queue_judge(this_call bulkhead.eval_calls, assertion int, rubric text, answer text)
returns bigint
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    judge text;
    messages text[];
begin
    -- The run's judge, as the run started: never the set's current one.
    select coalesce(r.params ->> 'judge_model', r.model) into judge from bulkhead.eval_runs r
    where r.tenant_id = this_call.tenant_id and r.id = this_call.run_id;
    messages := bulkhead._eval_judge_messages(rubric, answer);
    return bulkhead._queue_completion(
        messages[1], judge, 256, false, '30 minutes',
        null,
        pg_catalog.jsonb_build_object('messages', pg_catalog.jsonb_build_array(
            pg_catalog.jsonb_build_object('role', 'user', 'content', messages[2]))),
        null, pg_catalog.jsonb_build_object('run', this_call.run_id));
end
$$;

-- The embeddings of a similar assertion's expected text and the answer, admitted and queued
-- as the tenant's own call (embed_document's path, measured instead of ingested).
create function bulkhead._eval_queue_similarity(this_call bulkhead.eval_calls, assertion int, expected text, answer text)
returns bigint
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    model text;
    dims int;
begin
    if pg_catalog.btrim(answer) = '' then
        raise exception 'the answer is empty: there is nothing to embed' using errcode = '22023';
    end if;
    select x.params ->> 'embedding_model' into model from bulkhead.eval_runs x
    where x.tenant_id = this_call.tenant_id and x.id = this_call.run_id;
    select s.embedding_dims into dims from bulkhead.retrieval_settings s where s.tenant_id = this_call.tenant_id;
    return bulkhead._queue_embedding(model,
        pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object('content', answer),
                                     pg_catalog.jsonb_build_object('content', expected)),
        coalesce(dims, 1536), '30 minutes',
        pg_catalog.jsonb_build_object('eval', pg_catalog.jsonb_build_object('run', this_call.run_id)),
        'eval-similar:');
end
$$;

-- Scores one call of a case in the database: the stored answer and measurements against the
-- case's assertions as the run read them, with the tenant's banned topics (its version's
-- banned_topics slot and its settings).
create function bulkhead._eval_score_result(run bigint, case_id uuid, attempt int)
returns void
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := bulkhead.current_tenant();
    res bulkhead.eval_results;
    slots jsonb;
    banned text[];
    verdicts jsonb;
begin
    select r.* into res from bulkhead.eval_results r
    where r.tenant_id = tenant and r.run_id = run and r.case_id = _eval_score_result.case_id
      and r.attempt = _eval_score_result.attempt;
    if not found then
        raise exception 'eval run % has no result for case % (attempt %)', run, case_id, attempt
            using errcode = 'P0002';
    end if;
    select v.slots into slots from bulkhead.eval_runs x
    join bulkhead.prompt_versions v on v.tenant_id = x.tenant_id and v.template_name = x.template_name
                                   and v.version = x.version
    where x.tenant_id = tenant and x.id = run;
    select pg_catalog.array_agg(distinct t) into banned from (
        select pg_catalog.unnest(s.banned_topics) as t from bulkhead.tenant_settings s where s.tenant_id = tenant
        union all
        select pg_catalog.jsonb_array_elements_text(slots -> 'banned_topics')
        where pg_catalog.jsonb_typeof(slots -> 'banned_topics') = 'array'
        union all
        select pg_catalog.regexp_split_to_table(slots ->> 'banned_topics', '\s*[,;\n]\s*')
        where pg_catalog.jsonb_typeof(slots -> 'banned_topics') = 'string') topics
    where pg_catalog.btrim(t) <> '';
    verdicts := bulkhead._eval_score(res.assertions::text, pg_catalog.jsonb_build_object(
        'output', coalesce(res.output, ''),
        'output_tokens', coalesce(
            case when pg_catalog.jsonb_typeof(res.usage -> 'completion_tokens') = 'number' then res.usage -> 'completion_tokens' end,
            case when pg_catalog.jsonb_typeof(res.usage -> 'output_tokens') = 'number' then res.usage -> 'output_tokens' end),
        'cost_usd', res.cost_usd,
        'latency_ms', res.latency_ms,
        'banned_topics', pg_catalog.to_jsonb(coalesce(banned, '{}')),
        'similarity', res.measurements -> 'similarity',
        'judge', res.measurements -> 'judge')::text, res.message::text)::jsonb;
    update bulkhead.eval_results r
    set status = 'scored', details = verdicts, scored_at = pg_catalog.clock_timestamp(),
        passed = not exists (select from pg_catalog.jsonb_array_elements(verdicts) v where not (v.value ->> 'passed')::boolean)
    where r.tenant_id = tenant and r.run_id = run and r.case_id = _eval_score_result.case_id
      and r.attempt = _eval_score_result.attempt;
end
$$;

-- Ends a run once no call is outstanding: a case passes when at least min_passes of its
-- attempts do; the run passes when the passing cases hold at least pass_threshold of the
-- weight. A pass is the gate's evidence for this version and the eval set as the run read it.
create function bulkhead._eval_finish_run(run bigint)
returns void
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := bulkhead.current_tenant();
    r bulkhead.eval_runs;
    total numeric;
    passing numeric;
begin
    -- The run's row lock orders the last calls' settles: the one that comes second sees the first.
    select x.* into r from bulkhead.eval_runs x where x.tenant_id = tenant and x.id = run for update;
    if r.status <> 'running' then
        return;
    end if;
    if exists (select from bulkhead.eval_results x where x.tenant_id = tenant and x.run_id = run
               and x.status in ('pending', 'answered')) then
        return;
    end if;
    select sum(c.weight), coalesce(sum(c.weight) filter (where c.passes >= (r.params ->> 'min_passes')::int), 0)
    into total, passing
    from (select x.case_id, max(x.weight) as weight, count(*) filter (where x.passed) as passes
          from bulkhead.eval_results x where x.tenant_id = tenant and x.run_id = run
          group by x.case_id) c;
    update bulkhead.eval_runs x
    set score = passing / nullif(total, 0), finished_at = pg_catalog.clock_timestamp(),
        status = case when total > 0 and passing / total >= (r.params ->> 'pass_threshold')::numeric
                      then 'passed' else 'failed' end
    where x.tenant_id = tenant and x.id = run
    returning * into r;
    if r.status = 'passed' then
        insert into bulkhead.prompt_eval_passes (tenant_id, template_name, version, eval_run_id, set_digest)
        values (tenant, r.template_name, r.version, r.id, r.set_digest);
    end if;
end
$$;

-- One row per case of one of the current tenant's runs: whether it passed (NULL while a call
-- is out), its first answer, and per attempt the assertions' verdicts, cost, latency and, for
-- an answer reused from an earlier identical call, that run's id. Only the run's own tenant
-- sees anything: the rows are read under row level security in the caller's context.
create function bulkhead.eval_report(run_id bigint)
returns table (case_id uuid, passed boolean, output text, details jsonb)
language plpgsql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := bulkhead.current_tenant();
    needed int;
begin
    if tenant is null then
        raise exception 'no tenant context' using errcode = '42501',
            hint = 'A report is read in its tenant''s context: bulkhead.set_tenant(...) first.';
    end if;
    select (r.params ->> 'min_passes')::int into needed from bulkhead.eval_runs r
    where r.tenant_id = tenant and r.id = eval_report.run_id;
    if not found then
        raise exception 'no eval run % for the current tenant', run_id using errcode = 'P0002';
    end if;
    return query
        select x.case_id,
               case when pg_catalog.bool_or(x.status in ('pending', 'answered')) then null
                    else count(*) filter (where x.passed) >= coalesce(needed, 1) end,
               (pg_catalog.array_agg(x.output order by x.attempt))[1],
               pg_catalog.jsonb_build_object(
                   'weight', max(x.weight),
                   'passes', count(*) filter (where x.passed),
                   'attempts', count(*),
                   'needed', coalesce(needed, 1),
                   'reused', pg_catalog.bool_and(x.reused_from is not null),
                   'calls', pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                       'attempt', x.attempt, 'status', x.status, 'passed', x.passed, 'assertions', x.details,
                       'reused_from', x.reused_from, 'cost_usd', x.cost_usd, 'latency_ms', x.latency_ms,
                       'job_id', x.job_id) order by x.attempt))
        from bulkhead.eval_results x
        where x.tenant_id = tenant and x.run_id = eval_report.run_id
        group by x.case_id
        order by x.case_id;
end
$$;
comment on function bulkhead.eval_report(bigint) is
    'The current tenant''s eval run, one row per case: passed, first answer, and per attempt the verdicts, cost, latency and reuse.';

-- The current tenant's runs (those named, or all of a template, or all), with pass, fail and
-- pending case counts: what `bulkhead eval gate` shows while it waits.
create function bulkhead.eval_run_status(runs bigint[] default null, template text default null)
returns table (
    run_id bigint, template_name text, version int, skeleton_version int, status text, error text,
    cases_passed int, cases_failed int, cases_pending int, reused int, score numeric,
    started_at timestamptz, finished_at timestamptz
)
language sql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
    select r.id, r.template_name, r.version, r.skeleton_version, r.status,
           -- Run-level errors are Bulkhead's own sentences (a case's error stays in its report);
           -- a skeleton that does not fit is named without the template error's text.
           case when r.error like 'the tenant''s active slots%'
                then 'the tenant''s active slots and body do not fit this skeleton version' else r.error end,
           (count(c.case_id) filter (where c.verdict))::int,
           (count(c.case_id) filter (where not c.verdict))::int,
           (count(c.case_id) filter (where c.verdict is null))::int,
           r.reused, r.score, r.started_at, r.finished_at
    from bulkhead.eval_runs r
    left join lateral (
        select x.case_id,
               case when pg_catalog.bool_or(x.status in ('pending', 'answered')) then null
                    else count(*) filter (where x.passed) >= (r.params ->> 'min_passes')::int end as verdict
        from bulkhead.eval_results x
        where x.tenant_id = r.tenant_id and x.run_id = r.id
        group by x.case_id) c on true
    where r.tenant_id = bulkhead.current_tenant()
      and (runs is null or r.id = any (runs))
      and (template is null or r.template_name = template)
    group by r.tenant_id, r.id
    order by r.started_at desc, r.id
$$;
comment on function bulkhead.eval_run_status(bigint[], text) is
    'The current tenant''s eval runs with pass, fail and pending case counts (no case text).';

-- For the control plane: every tenant's runs (or the runs named), with pass and fail counts
-- and no case text, no answer and no variables. bulkhead_admin only.
create function bulkhead.eval_summary(template text default null, runs bigint[] default null)
returns table (
    tenant_id uuid, slug text, run_id bigint, template_name text, version int, skeleton_version int,
    status text, error text, cases_passed int, cases_failed int, cases_pending int, reused int,
    score numeric, started_at timestamptz, finished_at timestamptz
)
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    previous text := coalesce(pg_catalog.current_setting('bulkhead.tenant_id', true), '');
    t record;
begin
    for t in select x.id, x.slug from bulkhead.tenants x order by x.slug loop
        perform bulkhead._set_tenant_within_function(t.id);
        return query select t.id, t.slug, s.* from bulkhead.eval_run_status(runs, template) s;
    end loop;
    perform bulkhead._leave_tenant(previous);
end
$$;
comment on function bulkhead.eval_summary(text, bigint[]) is
    'Every tenant''s eval runs with pass, fail and pending case counts, and no case text. bulkhead_admin only.';

alter function bulkhead._eval_gate_on_pointer() owner to bulkhead_meter;
alter function bulkhead.set_eval_set(uuid, text, text, int, numeric, int, int, text, text) owner to bulkhead_meter;
alter function bulkhead.add_eval_case(uuid, text, jsonb, jsonb, jsonb, numeric, text) owner to bulkhead_meter;
alter function bulkhead.remove_eval_case(uuid, uuid) owner to bulkhead_meter;
alter function bulkhead.start_eval(text, int, uuid) owner to bulkhead_meter;
alter function bulkhead.set_eval_budget(uuid, numeric, text) owner to bulkhead_meter;
alter function bulkhead._eval_call_closed(bigint) owner to bulkhead_meter;
alter function bulkhead._eval_call_closed_safely(bigint) owner to bulkhead_meter;
alter function bulkhead.score_eval_job(bigint, text) owner to bulkhead_meter;

revoke all on function bulkhead._eval_set_digest(uuid, text) from public;
revoke all on function bulkhead._eval_gate_verdict(uuid, text, int) from public;
revoke all on function bulkhead._eval_gate_refuse(text, bigint) from public;
revoke all on function bulkhead._eval_gate_on_pointer() from public;
revoke all on function bulkhead.set_eval_set(uuid, text, text, int, numeric, int, int, text, text) from public;
revoke all on function bulkhead._check_eval_template(text) from public;
revoke all on function bulkhead.add_eval_case(uuid, text, jsonb, jsonb, jsonb, numeric, text) from public;
revoke all on function bulkhead.remove_eval_case(uuid, uuid) from public;
revoke all on function bulkhead.start_eval(text, int, uuid) from public;
revoke all on function bulkhead._eval_candidate(uuid, text, int) from public;
revoke all on function bulkhead._start_tenant_eval(text, int, int) from public;
revoke all on function bulkhead._eval_call_closed(bigint) from public;
revoke all on function bulkhead._eval_call_closed_safely(bigint) from public;
revoke all on function bulkhead._eval_result_failed(bigint, uuid, int, text) from public;
revoke all on function bulkhead._eval_queue_score(bigint, uuid, int) from public;
revoke all on function bulkhead.score_eval_job(bigint, text) from public;
revoke all on function bulkhead._check_eval_author(text) from public;
revoke all on function bulkhead.set_eval_budget(uuid, numeric, text) from public;
revoke all on function bulkhead._worst_case_usd(bulkhead.reservations) from public;
revoke all on function bulkhead._eval_budget_used(text) from public;
revoke all on function bulkhead.eval_budget_usage() from public;
revoke all on function bulkhead._budget_check_eval(text, int, int, interval) from public;
revoke all on function bulkhead._eval_cosine(jsonb) from public;
revoke all on function bulkhead._eval_queue_judge(bulkhead.eval_calls, int, text, text) from public;
revoke all on function bulkhead._eval_queue_similarity(bulkhead.eval_calls, int, text, text) from public;
revoke all on function bulkhead._eval_score_result(bigint, uuid, int) from public;
revoke all on function bulkhead._eval_finish_run(bigint) from public;
revoke all on function bulkhead.eval_report(bigint) from public;
revoke all on function bulkhead.eval_summary(text, bigint[]) from public;
revoke all on function bulkhead.eval_run_status(bigint[], text) from public;
revoke all on function bulkhead._eval_check_assertions(text) from public;
revoke all on function bulkhead._eval_score(text, text, text) from public;
revoke all on function bulkhead._eval_judge_messages(text, text) from public;
revoke all on function bulkhead._eval_judge_score(text) from public;

-- The SECURITY DEFINER functions above run as bulkhead_meter and call these.
grant execute on function bulkhead._eval_set_digest(uuid, text), bulkhead._eval_gate_verdict(uuid, text, int),
    bulkhead._eval_gate_refuse(text, bigint), bulkhead._check_eval_template(text),
    bulkhead._eval_candidate(uuid, text, int), bulkhead._start_tenant_eval(text, int, int),
    bulkhead._eval_cosine(jsonb), bulkhead._eval_queue_judge(bulkhead.eval_calls, int, text, text),
    bulkhead._eval_queue_similarity(bulkhead.eval_calls, int, text, text),
    bulkhead._eval_score_result(bigint, uuid, int), bulkhead._eval_finish_run(bigint),
    bulkhead._eval_call_closed(bigint), bulkhead._eval_result_failed(bigint, uuid, int, text),
    bulkhead._eval_queue_score(bigint, uuid, int), bulkhead._check_eval_author(text), bulkhead._held_job(bigint, text),
    bulkhead._raise_for_client(text, text, text, text), bulkhead._budget_check_eval(text, int, int, interval),
    bulkhead._eval_check_assertions(text), bulkhead._eval_score(text, text, text),
    bulkhead._eval_judge_messages(text, text), bulkhead._eval_judge_score(text),
    bulkhead._leave_tenant(text), bulkhead._enqueue(text, jsonb, text, timestamptz, int),
    bulkhead._materialize_reservation(uuid), bulkhead.render_prompt_version(text, int, jsonb),
    bulkhead._render_prompt_version(text, int, text)
    to bulkhead_meter;
grant execute on function bulkhead.set_eval_set(uuid, text, text, int, numeric, int, int, text, text),
    bulkhead.add_eval_case(uuid, text, jsonb, jsonb, jsonb, numeric, text), bulkhead.remove_eval_case(uuid, uuid),
    bulkhead.start_eval(text, int, uuid), bulkhead.eval_report(bigint), bulkhead.eval_run_status(bigint[], text)
    to bulkhead_app, bulkhead_admin;
-- eval_budget_usage (invoker) reads what the tenant's own rows say.
grant execute on function bulkhead.eval_budget_usage(), bulkhead._eval_budget_used(text),
    bulkhead._worst_case_usd(bulkhead.reservations) to bulkhead_app, bulkhead_admin, bulkhead_meter;
grant execute on function bulkhead.eval_summary(text, bigint[]), bulkhead.set_eval_budget(uuid, numeric, text)
    to bulkhead_admin;
-- The worker's settles call it, in the job's tenant context; its eval_score jobs call the scorer.
grant execute on function bulkhead._eval_call_closed_safely(bigint), bulkhead.score_eval_job(bigint, text)
    to bulkhead_worker;
