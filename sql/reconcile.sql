-- Usage reconciliation: once a day the worker pulls what the providers counted (OpenAI's
-- organization usage API by project, Anthropic's usage report by workspace) and
-- bulkhead.reconcile_usage() compares it, per credential and day, with what the ledger recorded
-- for the tenants using that credential. Each comparison is a row of bulkhead.usage_drift;
-- bulkhead.usage_drift_report lists the ones that disagree (a key used outside Bulkhead, a
-- call never settled, a lost ledger row).
--
-- Attribution: a tenant's own (dedicated) credential is its project or workspace; the shared
-- pool's project is every tenant without one. Tenants are attributed by their credentials at
-- reconciliation time. Days are UTC days, as the providers bucket them.

-- One row per provider and day reconciled: a day is compared once, however many workers run.
create table bulkhead.reconciliation_runs (
    provider   text        not null,
    usage_date date        not null,
    ran_at     timestamptz not null default pg_catalog.clock_timestamp(),
    constraint reconciliation_runs_pkey primary key (provider, usage_date)
);

-- Credential-level finance data across tenants: bulkhead_admin reads it, nobody else.
create table bulkhead.usage_drift (
    id                  bigint      generated always as identity,
    provider            text        not null,
    usage_date          date        not null,
    -- The provider's project (OpenAI) or workspace (Anthropic) id.
    provider_project_id text        not null,
    -- Which Bulkhead credential it is: a tenant's own, the shared pool, or none known.
    credential_id       uuid,
    attribution         text        not null,
    dedicated_tenant    uuid,
    provider_input_tokens  bigint   not null,
    provider_output_tokens bigint   not null,
    provider_requests      bigint,
    ledger_input_tokens    bigint   not null,
    ledger_output_tokens   bigint   not null,
    ledger_requests        bigint   not null,
    checked_at          timestamptz not null default pg_catalog.clock_timestamp(),
    constraint usage_drift_pkey primary key (id),
    constraint usage_drift_attribution_known check (attribution in ('tenant', 'shared_pool', 'unknown', 'deleted_tenant'))
);
create index usage_drift_by_day on bulkhead.usage_drift (usage_date, provider);

-- The provider projects of deleted tenants, as hashes: a usage report names a project for days
-- after its tenant was deleted (the deletion day is reconciled the day after, a leaked key may go
-- on being used), and reconcile_usage must not write the project's id back. It records such
-- usage as 'deleted_tenant', naming the deletion receipt instead.
create table bulkhead.deleted_tenant_projects (
    project_hash text        not null,
    receipt_id   uuid        not null,
    deleted_at   timestamptz not null default pg_catalog.clock_timestamp(),
    constraint deleted_tenant_projects_pkey primary key (project_hash)
);
comment on column bulkhead.deleted_tenant_projects.project_hash is
    'bulkhead:kept The sha256 of a deleted tenant''s provider project, so that reconciliation never records its id again.';
alter table bulkhead.deleted_tenant_projects enable row level security;
alter table bulkhead.deleted_tenant_projects force row level security;
create policy control_plane_records on bulkhead.deleted_tenant_projects for all to bulkhead_admin using (true) with check (true);
create policy meter_reads on bulkhead.deleted_tenant_projects for select to bulkhead_meter using (true);
grant select, insert on bulkhead.deleted_tenant_projects to bulkhead_admin;
grant select on bulkhead.deleted_tenant_projects to bulkhead_meter;
select pg_catalog.pg_extension_config_dump('bulkhead.deleted_tenant_projects', '');
comment on column bulkhead.usage_drift.dedicated_tenant is
    'bulkhead:tenant-ref The tenant whose dedicated credential this is.';
comment on column bulkhead.usage_drift.credential_id is
    'bulkhead:tenant-credential-ref A tenant''s credential (or the shared pool''s, which stays).';
comment on column bulkhead.usage_drift.provider_project_id is
    'bulkhead:tenant-project-ref The provider project or workspace: a tenant''s names the tenant.';

alter table bulkhead.reconciliation_runs enable row level security;
alter table bulkhead.reconciliation_runs force row level security;
alter table bulkhead.usage_drift enable row level security;
alter table bulkhead.usage_drift force row level security;
create policy meter_records on bulkhead.reconciliation_runs for all to bulkhead_meter using (true) with check (true);
create policy admin_reads on bulkhead.reconciliation_runs for select to bulkhead_admin, bulkhead_worker using (true);
create policy meter_records on bulkhead.usage_drift for all to bulkhead_meter using (true) with check (true);
create policy admin_reads on bulkhead.usage_drift for select to bulkhead_admin using (true);
-- Tenant deletion (delete_tenant runs as bulkhead_admin) removes the rows that name the tenant.
create policy admin_deletes_with_tenant on bulkhead.usage_drift for delete to bulkhead_admin using (true);
grant select, insert on bulkhead.reconciliation_runs, bulkhead.usage_drift to bulkhead_meter;
grant select on bulkhead.reconciliation_runs, bulkhead.usage_drift to bulkhead_admin;
grant delete on bulkhead.usage_drift to bulkhead_admin;  -- tenant deletion only
-- The worker checks which days still need a run (no tenant data there).
grant select on bulkhead.reconciliation_runs to bulkhead_worker;
select pg_catalog.pg_extension_config_dump('bulkhead.reconciliation_runs', '');
select pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('bulkhead.usage_drift', 'id')::regclass, '');
select pg_catalog.pg_extension_config_dump('bulkhead.usage_drift', '');

-- The comparisons that disagree, newest day first.
create view bulkhead.usage_drift_report with (security_invoker = true) as
    select d.usage_date, d.provider, d.provider_project_id, d.attribution, d.dedicated_tenant, d.credential_id,
           d.provider_input_tokens - d.ledger_input_tokens as input_token_drift,
           d.provider_output_tokens - d.ledger_output_tokens as output_token_drift,
           d.provider_requests - d.ledger_requests as request_drift,
           d.provider_input_tokens, d.ledger_input_tokens, d.provider_output_tokens, d.ledger_output_tokens,
           d.provider_requests, d.ledger_requests, d.checked_at
    from bulkhead.usage_drift d
    where d.provider_input_tokens <> d.ledger_input_tokens
       or d.provider_output_tokens <> d.ledger_output_tokens
       or d.provider_requests <> d.ledger_requests
    order by d.usage_date desc, d.provider, d.provider_project_id;
grant select on bulkhead.usage_drift_report to bulkhead_admin;

-- Compares one provider's usage for one UTC day with the ledger and records a row per
-- credential; returns how many disagree, or NULL if the day was reconciled before.
-- provider_usage: [{"project_id": text, "input_tokens": n, "output_tokens": n, "requests": n|null}]
-- (input counts cache reads and writes too, as both usage APIs do). SECURITY DEFINER (as
-- bulkhead_meter): it reads each tenant's credentials and ledger inside that tenant's context.
create function bulkhead.reconcile_usage(provider text, usage_date date, provider_usage jsonb)
returns int
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    previous text := coalesce(pg_catalog.current_setting('bulkhead.tenant_id', true), '');
    day_start timestamptz;
    tenant uuid;
    own record;
    sums record;
    shared record;
    -- Per tenant, accumulated in a variable: a temp table here could be one the caller
    -- planted, with triggers that would run as bulkhead_meter.
    ledger_rows jsonb := '[]';
    disagreeing int;
begin
    if provider is null or provider not in ('openai', 'anthropic', 'openai_compatible') then
        raise exception 'unknown provider' using errcode = '22023';
    end if;
    if usage_date is null or usage_date >= (pg_catalog.now() at time zone 'UTC')::date then
        raise exception 'only a finished UTC day can be reconciled' using errcode = '22023';
    end if;
    if pg_catalog.jsonb_typeof(provider_usage) is distinct from 'array'
       or exists (select from pg_catalog.jsonb_array_elements(provider_usage) u
                  where pg_catalog.jsonb_typeof(u -> 'project_id') is distinct from 'string'
                     or pg_catalog.jsonb_typeof(u -> 'input_tokens') is distinct from 'number'
                     or pg_catalog.jsonb_typeof(u -> 'output_tokens') is distinct from 'number'
                     or (u ? 'requests' and pg_catalog.jsonb_typeof(u -> 'requests') not in ('number', 'null'))) then
        raise exception 'provider_usage must be an array of {"project_id", "input_tokens", "output_tokens", "requests"}'
            using errcode = '22023';
    end if;
    insert into bulkhead.reconciliation_runs (provider, usage_date)
    values (reconcile_usage.provider, reconcile_usage.usage_date)
    on conflict do nothing;
    if not found then
        return null;
    end if;
    day_start := reconcile_usage.usage_date::timestamp at time zone 'UTC';

    -- What the ledger holds, per tenant, and which credential each tenant's calls used.
    select s.id, s.provider_project_id into shared
    from bulkhead.shared_credentials s where s.provider = reconcile_usage.provider;
    for tenant in select t.id from bulkhead.tenants t loop
        perform bulkhead._set_tenant_within_function(tenant);
        -- A credential waiting for its key served no call: the tenant's went to the shared pool.
        select c.id, c.provider_project_id into own
        from bulkhead.tenant_credentials c
        where c.tenant_id = tenant and c.provider = reconcile_usage.provider and c.status = 'active';
        select coalesce(sum(l.input_tokens + l.cached_input_tokens + l.cache_write_tokens), 0) as input_tokens,
               coalesce(sum(l.output_tokens), 0) as output_tokens, count(*) as requests
        into sums
        from bulkhead.ledger l
        where l.tenant_id = tenant and l.provider = reconcile_usage.provider
          and l.created_at >= day_start and l.created_at < day_start + interval '1 day';
        ledger_rows := ledger_rows || pg_catalog.jsonb_build_object(
            'tenant', tenant,
            'credential_id', coalesce(own.id, shared.id),
            'project_id', coalesce(own.provider_project_id, shared.provider_project_id),
            'attribution', case when own.id is not null then 'tenant' else 'shared_pool' end,
            'input_tokens', sums.input_tokens, 'output_tokens', sums.output_tokens, 'requests', sums.requests);
        -- Its other projects and workspaces, known by id (provisioned, waiting for a key, named
        -- by an earlier credential): usage reported there is the tenant's, against no ledger row
        -- (a key used outside Bulkhead), never 'unknown'.
        ledger_rows := ledger_rows || coalesce((
            select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                       'tenant', tenant, 'credential_id', null, 'project_id', k.project_id, 'attribution', 'tenant',
                       'input_tokens', 0, 'output_tokens', 0, 'requests', 0))
            from (select p.project_id from bulkhead.provider_provisions p
                  where p.tenant_id = tenant and p.provider = reconcile_usage.provider and p.project_id is not null
                  union
                  select h.provider_project_id from bulkhead.tenant_provider_projects h
                  where h.tenant_id = tenant and h.provider = reconcile_usage.provider) k
            where k.project_id is distinct from own.provider_project_id
              and k.project_id is distinct from shared.provider_project_id), '[]');
    end loop;
    perform bulkhead._leave_tenant(previous);

    -- One comparison per project: the provider's counts against the ledger of its tenants.
    with expected as (
        select r.project_id, r.credential_id, r.attribution,
               case when r.attribution = 'tenant' then r.tenant end as dedicated_tenant,
               sum(r.input_tokens) as input_tokens, sum(r.output_tokens) as output_tokens,
               sum(r.requests) as requests
        from pg_catalog.jsonb_to_recordset(ledger_rows) as r(
            tenant uuid, credential_id uuid, project_id text, attribution text,
            input_tokens bigint, output_tokens bigint, requests bigint)
        where r.project_id is not null
        group by 1, 2, 3, 4
    ),
    reported as (
        select u ->> 'project_id' as project_id,
               sum((u ->> 'input_tokens')::bigint) as input_tokens,
               sum((u ->> 'output_tokens')::bigint) as output_tokens,
               sum((u ->> 'requests')::bigint) as requests
        from pg_catalog.jsonb_array_elements(provider_usage) u
        group by 1
    ),
    compared as (
        insert into bulkhead.usage_drift
            (provider, usage_date, provider_project_id, credential_id, attribution, dedicated_tenant,
             provider_input_tokens, provider_output_tokens, provider_requests,
             ledger_input_tokens, ledger_output_tokens, ledger_requests)
        select reconcile_usage.provider, reconcile_usage.usage_date,
               case when d.receipt_id is not null then 'deleted tenant (receipt ' || d.receipt_id || ')'
                    else coalesce(e.project_id, p.project_id) end,
               e.credential_id,
               case when d.receipt_id is not null then 'deleted_tenant' else coalesce(e.attribution, 'unknown') end,
               e.dedicated_tenant,
               coalesce(p.input_tokens, 0), coalesce(p.output_tokens, 0),
               -- Anthropic's report has no request counts: only counts that exist are compared.
               case when p.project_id is null then 0 else p.requests end,
               coalesce(e.input_tokens, 0), coalesce(e.output_tokens, 0), coalesce(e.requests, 0)
        from expected e full join reported p on p.project_id = e.project_id
        left join bulkhead.deleted_tenant_projects d
          on e.project_id is null
         and d.project_hash = pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(p.project_id, 'UTF8')), 'hex')
        -- Projects with no calls on either side say nothing.
        where coalesce(p.input_tokens, 0) + coalesce(p.output_tokens, 0) + coalesce(e.requests, 0) > 0
        returning *
    )
    select count(*) into disagreeing from compared c
    where c.provider_input_tokens <> c.ledger_input_tokens
       or c.provider_output_tokens <> c.ledger_output_tokens
       or c.provider_requests <> c.ledger_requests;
    return disagreeing;
end
$$;
comment on function bulkhead.reconcile_usage(text, date, jsonb) is
    'Compares a provider''s usage report for one UTC day with the ledger, per credential; records bulkhead.usage_drift rows and returns how many disagree (NULL: reconciled before).';

alter function bulkhead.reconcile_usage(text, date, jsonb) owner to bulkhead_meter;
revoke all on function bulkhead.reconcile_usage(text, date, jsonb) from public;
grant execute on function bulkhead.reconcile_usage(text, date, jsonb) to bulkhead_worker, bulkhead_admin;
-- reconcile_usage (as bulkhead_meter) reads each tenant's credentials in its context.
grant select on bulkhead.tenant_credentials, bulkhead.shared_credentials to bulkhead_meter;
