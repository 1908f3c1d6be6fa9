-- Provider-side provisioning: an OpenAI project with its own service account key, or an
-- Anthropic workspace, per tenant, created and capped by the daemon (src/provisioning.rs) on the
-- control plane's word. The database decides what should exist and what the limits are; the
-- daemon carries it out with the providers' admin keys, which never reach the database.
--
-- Crash safety: every fact the daemon learns (a project's id, a service account's id, where it
-- stored the key) is recorded before the next step, and whatever it did not record is found
-- again at the provider by a deterministic name (provider_provisions.project_name) before
-- anything is created. The key itself is returned once by OpenAI; it goes from the response
-- straight into its store (a file or Supabase Vault) and only its reference is recorded.

-- One row per tenant and provider that is (being) provisioned.
create table bulkhead.provider_provisions (
    tenant_id          uuid        not null,
    provider           text        not null,
    -- queued: a job is on its way; active: project, key and limits in place; pending_key: an
    -- Anthropic workspace waits for an admin to attach a key (keys cannot be made by API).
    state              text        not null default 'queued',
    options            jsonb       not null default '{}',
    -- Looked up at the provider before creating, so that a retry never creates a second one.
    project_name       text        not null,
    -- OpenAI project id (proj_...) or Anthropic workspace id (wrkspc_...).
    project_id         text,
    service_account_id text,
    key_id             text,
    -- Where the daemon stored the key it was given (file:... or vault:...).
    secret_ref         text,
    -- Counts rotations; names the service account of each key (bulkhead-<generation>).
    generation         int         not null default 1,
    -- The backstop the provider should hold (from the tenant's budget plus the margin), and what
    -- it last accepted.
    desired_limits     jsonb,
    applied_limits     jsonb,
    job_id             bigint,
    created_at         timestamptz not null default pg_catalog.clock_timestamp(),
    updated_at         timestamptz not null default pg_catalog.clock_timestamp(),
    constraint provider_provisions_pkey primary key (tenant_id, provider),
    constraint provider_provisions_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id),
    constraint provider_provisions_provider_known check (provider in ('openai', 'anthropic')),
    constraint provider_provisions_state_known check (state in ('queued', 'active', 'pending_key')),
    constraint provider_provisions_options_known check (
        pg_catalog.jsonb_typeof(options) = 'object' and options - 'storage' = '{}'::jsonb
        and (not options ? 'storage' or (provider = 'openai' and options -> 'storage' in ('"file"'::jsonb, '"vault"'::jsonb)))),
    constraint provider_provisions_reference_only check (bulkhead._is_secret_reference(secret_ref)),
    constraint provider_provisions_generation_positive check (generation >= 1)
);
comment on table bulkhead.provider_provisions is
    'A tenant''s provisioned OpenAI project or Anthropic workspace: ids and references only, never a key.';

-- Which tenant each provider project, workspace and service account was recorded for: one
-- tenant's, for good (a deleted tenant's stay its own). provisioning_step refuses to record
-- another tenant's, so that no worker can attach one tenant's project or key to another.
create table bulkhead.provider_resources (
    provider    text        not null,
    resource_id text        not null,
    tenant_ref  uuid        not null,
    recorded_at timestamptz not null default pg_catalog.clock_timestamp(),
    constraint provider_resources_pkey primary key (provider, resource_id)
);
comment on column bulkhead.provider_resources.resource_id is
    'bulkhead:kept A provider''s project, workspace or account id (no tenant data), kept with its owner.';
comment on column bulkhead.provider_resources.tenant_ref is
    'bulkhead:kept Whose a provider id is, kept after a deletion so that no other tenant can take it; ids only.';
alter table bulkhead.provider_resources enable row level security;
alter table bulkhead.provider_resources force row level security;
create policy meter_records on bulkhead.provider_resources for all to bulkhead_meter using (true) with check (true);
create policy admin_reads on bulkhead.provider_resources for select to bulkhead_admin using (true);
grant select, insert, update on bulkhead.provider_resources to bulkhead_meter;
grant select on bulkhead.provider_resources to bulkhead_admin;
select pg_catalog.pg_extension_config_dump('bulkhead.provider_resources', '');

-- Projects named by credentials are registered too, whoever wrote them (set_credential, the
-- control plane's own writes, the shared pool's as the platform's, under the nil uuid): the
-- worker can record none of them for a tenant, and no lookup by name may archive them.
create function bulkhead._register_credential_project()
returns trigger
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
begin
    if new.provider_project_id is not null and not bulkhead._restoring() then
        -- The platform's (the shared pool's) wins over a tenant's claim on the same id.
        if tg_table_name = 'shared_credentials' then
            insert into bulkhead.provider_resources as r (provider, resource_id, tenant_ref)
            values (new.provider, new.provider_project_id, '00000000-0000-0000-0000-000000000000'::uuid)
            on conflict on constraint provider_resources_pkey do update set tenant_ref = excluded.tenant_ref;
        else
            insert into bulkhead.provider_resources (provider, resource_id, tenant_ref)
            values (new.provider, new.provider_project_id, (pg_catalog.to_jsonb(new) ->> 'tenant_id')::uuid)
            on conflict do nothing;
        end if;
    end if;
    return null;
end
$$;
create trigger tenant_credentials_register_project after insert or update of provider_project_id
    on bulkhead.tenant_credentials for each row execute function bulkhead._register_credential_project();
create trigger shared_credentials_register_project after insert or update of provider_project_id
    on bulkhead.shared_credentials for each row execute function bulkhead._register_credential_project();

-- Whether a provider id found by name may be archived or deleted for a deleted tenant: recorded
-- for nobody (what a job made after the rows were gone), or for that tenant, which is gone.
-- bulkhead_worker (as bulkhead_meter, which reads the registry).
create function bulkhead.provider_resource_free(provider text, resource_id text, tenant uuid)
returns boolean
language sql stable
security definer
set search_path to pg_catalog, pg_temp
as $$
    select not exists (
        select from bulkhead.provider_resources r
        where r.provider = provider_resource_free.provider and r.resource_id = provider_resource_free.resource_id
          and (r.tenant_ref is distinct from provider_resource_free.tenant
               or exists (select from bulkhead.tenants t where t.id = provider_resource_free.tenant)))
$$;

-- Each step of a provisioning, as the daemon last reported it (provisioning_status reads it).
create table bulkhead.provisioning_steps (
    tenant_id  uuid        not null,
    provider   text        not null,
    step       text        not null,
    state      text        not null,
    detail     text,
    updated_at timestamptz not null default pg_catalog.clock_timestamp(),
    constraint provisioning_steps_pkey primary key (tenant_id, provider, step),
    constraint provisioning_steps_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id),
    constraint provisioning_steps_provision_fkey foreign key (tenant_id, provider)
        references bulkhead.provider_provisions (tenant_id, provider) on delete cascade,
    constraint provisioning_steps_state_known check (state in ('done', 'failed', 'unsupported', 'pending')),
    constraint provisioning_steps_detail_length check (pg_catalog.char_length(detail) <= 2000),
    constraint provisioning_steps_step_length check (pg_catalog.char_length(step) between 1 and 100)
);

alter table bulkhead.provider_provisions enable row level security;
alter table bulkhead.provider_provisions force row level security;
alter table bulkhead.provisioning_steps enable row level security;
alter table bulkhead.provisioning_steps force row level security;
create policy tenant_isolation on bulkhead.provider_provisions
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));
create policy tenant_isolation on bulkhead.provisioning_steps
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));
-- Writes go through the functions below (as bulkhead_meter); admins read and delete (deletion).
grant select, delete on bulkhead.provider_provisions, bulkhead.provisioning_steps to bulkhead_admin;
grant select, insert, update on bulkhead.provider_provisions, bulkhead.provisioning_steps to bulkhead_meter;
grant delete on bulkhead.provisioning_steps to bulkhead_meter;
-- The provisioned credential is written by provisioned_credential (as bulkhead_meter), and with
-- it the project it names (tenant_credentials_record_project).
grant insert, update on bulkhead.tenant_credentials to bulkhead_meter;
grant select, insert on bulkhead.tenant_provider_projects to bulkhead_meter;
select pg_catalog.pg_extension_config_dump('bulkhead.provider_provisions', '');
select pg_catalog.pg_extension_config_dump('bulkhead.provisioning_steps', '');

-- The backstop for a tenant: its Bulkhead limits raised by bulkhead.provider_limit_margin, never
-- below them. OpenAI counts input and output tokens in one per-minute limit (Anthropic apart); a
-- spend limit is monthly, so a daily or weekly budget is scaled to the longest month it can make.
-- A limit of 0 (Bulkhead blocks that dimension) becomes 1: providers take positive limits only,
-- and Bulkhead's own 0 still refuses every call.
create function bulkhead._provider_limits(tenant uuid)
returns jsonb
language plpgsql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    margin numeric := coalesce(nullif(pg_catalog.current_setting('bulkhead.provider_limit_margin', true), ''), '0.1')::numeric;
    limits record;
begin
    select b.rpm, b.itpm, b.otpm, b.dollar_limit, b.period into limits
    from bulkhead.budgets b where b.tenant_id = tenant;
    if not found then
        select d.rpm, d.itpm, d.otpm, d.dollar_limit, d.period into limits from bulkhead.budget_defaults d;
    end if;
    return pg_catalog.jsonb_build_object(
        'margin', margin,
        'rpm', greatest(1, pg_catalog.ceil(limits.rpm * (1 + margin))::bigint),
        'tpm', greatest(1, pg_catalog.ceil((limits.itpm::bigint + limits.otpm) * (1 + margin))::bigint),
        'itpm', greatest(1, pg_catalog.ceil(limits.itpm * (1 + margin))::bigint),
        'otpm', greatest(1, pg_catalog.ceil(limits.otpm * (1 + margin))::bigint),
        'monthly_spend_usd', greatest(0.01, pg_catalog.ceil(limits.dollar_limit
            * case limits.period when 'day' then 31 when 'week' then 5 else 1 end * (1 + margin) * 100) / 100),
        'from', pg_catalog.jsonb_build_object('rpm', limits.rpm, 'itpm', limits.itpm, 'otpm', limits.otpm,
                                              'dollar_limit', limits.dollar_limit, 'period', limits.period));
end
$$;

-- Queues a provisioning job for the current tenant (the caller entered it). SECURITY DEFINER
-- as bulkhead_meter: only it may queue jobs of these kinds.
create function bulkhead._queue_provisioning(tenant uuid, kind text, provider text)
returns bigint
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    job bigint;
begin
    if tenant is null or tenant is distinct from bulkhead.current_tenant() then
        raise exception 'provisioning is queued in the tenant''s own context' using errcode = '42501';
    end if;
    -- Callable by bulkhead_admin: never a kind that spends (those are admitted first).
    if kind is null or kind not in ('provision', 'provider_limits') or provider not in ('openai', 'anthropic') then
        raise exception 'not a provisioning job' using errcode = '42501';
    end if;
    if not exists (select from bulkhead.provider_provisions p
                   where p.tenant_id = tenant and p.provider = _queue_provisioning.provider) then
        raise exception 'the tenant has no % provision', provider using errcode = '42704';
    end if;
    job := bulkhead._enqueue(kind, pg_catalog.jsonb_build_object('provider', provider), null, null, 25);
    -- job_id names the provisioning itself; a limits update is one of its steps.
    update bulkhead.provider_provisions p
    set job_id = case when kind = 'provision' then job else p.job_id end,
        desired_limits = bulkhead._provider_limits(tenant), updated_at = pg_catalog.clock_timestamp()
    where p.tenant_id = tenant and p.provider = _queue_provisioning.provider;
    return job;
end
$$;

-- provision_provider's writes, in the tenant's context, as bulkhead_meter (provisions are its to
-- write): the provision row (created with its deterministic name) and the job.
create function bulkhead._provision(tenant uuid, provider text, options jsonb)
returns bigint
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    existing bulkhead.provider_provisions;
    in_flight bigint;
    slug text := (select t.slug from bulkhead.tenants t where t.id = tenant);
begin
    if tenant is null or tenant is distinct from bulkhead.current_tenant() then
        raise exception 'provisioning is queued in the tenant''s own context' using errcode = '42501';
    end if;
    select * into existing from bulkhead.provider_provisions p
    where p.tenant_id = tenant and p.provider = _provision.provider
    for update;
    if found then
        -- One provisioning at a time: the one on its way is the answer.
        select j.id into in_flight from bulkhead.jobs j join bulkhead.job_schedule q on q.job_id = j.id
        where j.tenant_id = tenant and j.kind = 'provision' and j.payload ->> 'provider' = _provision.provider
          and q.state in ('queued', 'running')
        limit 1;
        if in_flight is not null then
            return in_flight;
        end if;
    end if;
    if existing.tenant_id is null then
        -- The tenant's whole id in the name: a slug may be reused after a deletion, a project
        -- must not, and a lookup by name must find no other tenant's. At most 62 characters.
        insert into bulkhead.provider_provisions (tenant_id, provider, options, project_name)
        values (tenant, provider, options,
                'bulkhead-' || pg_catalog.rtrim(pg_catalog.left(slug, 20), '-') || '-'
                || pg_catalog.replace(tenant::text, '-', ''));
    else
        update bulkhead.provider_provisions p
        set options = _provision.options, state = case when p.state = 'active' then 'active' else 'queued' end,
            updated_at = pg_catalog.clock_timestamp()
        where p.tenant_id = tenant and p.provider = _provision.provider;
    end if;
    return bulkhead._queue_provisioning(tenant, 'provision', provider);
end
$$;

-- Provisions a tenant at a provider (bulkhead_admin): queues the job the daemon carries out and
-- returns its id. Again for a tenant already provisioned: a job still queued or running is
-- returned as it is; otherwise a new job checks every step again (each one finds what exists).
-- options: {"storage": "file" | "vault"} (OpenAI: where the daemon keeps the key; default file,
-- in the worker's BULKHEAD_SECRETS_DIR).
create function bulkhead.provision_provider(tenant_id uuid, provider text, options jsonb default '{}')
returns bigint
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := provision_provider.tenant_id;
    previous text;
    slug text;
    job bigint;
    unknown text;
begin
    if tenant is null or provider is null or options is null then
        raise exception 'tenant_id, provider and options are required' using errcode = '22004';
    end if;
    if provider not in ('openai', 'anthropic') then
        raise exception 'provider % cannot be provisioned', pg_catalog.quote_literal(provider)
            using errcode = '22023',
                  detail = 'openai (a project with a service account key) and anthropic (a workspace) have admin APIs; openai_compatible servers have none.';
    end if;
    if pg_catalog.jsonb_typeof(options) <> 'object' then
        raise exception 'options must be a JSON object' using errcode = '22023';
    end if;
    select k into unknown from pg_catalog.jsonb_object_keys(options) k where k <> 'storage' limit 1;
    if unknown is not null then
        raise exception 'unknown provisioning option %', pg_catalog.quote_literal(unknown)
            using errcode = '22023', detail = 'Known options: storage ("file" or "vault").';
    end if;
    if options ? 'storage' and (options -> 'storage') not in ('"file"', '"vault"') then
        raise exception 'storage must be "file" or "vault"'
            using errcode = '22023',
                  detail = 'file: a file of mode 0600 in the worker''s BULKHEAD_SECRETS_DIR; vault: Supabase Vault (vault.create_secret).';
    end if;
    if provider = 'anthropic' and options ? 'storage' then
        raise exception 'an Anthropic workspace gets no key from Bulkhead, so nothing is stored'
            using errcode = '22023',
                  detail = 'Anthropic API keys cannot be created by API: create one in the Console and attach it with bulkhead.set_credential.';
    end if;
    select t.slug into slug from bulkhead.tenants t where t.id = tenant;
    if not found then
        raise exception 'tenant % does not exist', tenant using errcode = '42704';
    end if;

    previous := bulkhead._enter_tenant(tenant);
    job := bulkhead._provision(tenant, provider, options);
    perform bulkhead._leave_tenant(previous);
    return job;
end
$$;
comment on function bulkhead.provision_provider(uuid, text, jsonb) is
    'Queues the provisioning of a tenant''s OpenAI project and key or Anthropic workspace; returns the job id. bulkhead_admin only.';

-- Each step of a tenant's provisioning and how it went (bulkhead_admin), with the job's own
-- state as the step 'job': a permanent failure shows there with the provider's error (keys
-- redacted by the daemon before it wrote it).
create function bulkhead.provisioning_status(tenant_id uuid)
returns table (provider text, step text, state text, detail text, updated_at timestamptz)
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    previous text;
begin
    if provisioning_status.tenant_id is null then
        raise exception 'tenant_id is required' using errcode = '22004';
    end if;
    if not exists (select from bulkhead.tenants t where t.id = provisioning_status.tenant_id) then
        raise exception 'tenant % does not exist', provisioning_status.tenant_id using errcode = '42704';
    end if;
    previous := bulkhead._enter_tenant(provisioning_status.tenant_id);
    return query
        select s.provider, s.step, s.state, s.detail, s.updated_at
        from bulkhead.provisioning_steps s
        where s.tenant_id = provisioning_status.tenant_id
        union all
        select p.provider, 'job', coalesce(j.state, 'none'),
               pg_catalog.concat_ws(': ', 'job ' || p.job_id || ', ' || coalesce(j.attempts, 0) || ' attempt(s), provision ' || p.state,
                                    jobs.last_error),
               coalesce(j.updated_at, p.updated_at)
        from bulkhead.provider_provisions p
        left join bulkhead.job_schedule j on j.job_id = p.job_id
        left join bulkhead.jobs jobs on jobs.tenant_id = p.tenant_id and jobs.id = p.job_id
        where p.tenant_id = provisioning_status.tenant_id
        order by 1, 5, 2;
    perform bulkhead._leave_tenant(previous);
end
$$;
comment on function bulkhead.provisioning_status(uuid) is
    'A tenant''s provisioning steps (provider, step, state, detail, updated_at), and its latest job. bulkhead_admin only.';

-- What the daemon needs for a provisioning job it holds: the provision's recorded facts, the
-- name to look up, the limits to set. Read in the job's tenant context. bulkhead_worker.
create function bulkhead.provisioning_job(job bigint, worker text)
returns jsonb
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    s bulkhead.job_schedule := bulkhead._held_job(job, worker);
    j bulkhead.jobs;
    p bulkhead.provider_provisions;
begin
    select * into j from bulkhead.jobs x where x.tenant_id = s.job_tenant and x.id = job;
    if j.kind not in ('provision', 'provider_limits') then
        raise exception 'job % is not a provisioning job', job using errcode = '22023';
    end if;
    select * into p from bulkhead.provider_provisions x
    where x.tenant_id = s.job_tenant and x.provider = j.payload ->> 'provider';
    if not found then
        raise exception 'the tenant has no % provision (deleted meanwhile?)', j.payload ->> 'provider'
            using errcode = '42704';
    end if;
    -- One job at a time per provision: two would set limits out of order, or make two accounts.
    -- A limits job waits for a provisioning; of two jobs of one kind the later id waits: never
    -- both.
    if exists (select from bulkhead.jobs o join bulkhead.job_schedule q on q.job_id = o.id
               where o.tenant_id = s.job_tenant and o.id <> job and o.kind in ('provision', 'provider_limits')
                 and o.payload ->> 'provider' = p.provider
                 and q.state = 'running' and q.leased_until > pg_catalog.clock_timestamp()
                 and ((o.kind = 'provision' and j.kind = 'provider_limits') or (o.kind = j.kind and o.id < job))) then
        raise exception 'another provisioning job of this tenant and provider is running'
            using errcode = '55P03', hint = 'The job is tried again later.';
    end if;
    -- The limits as they are now: a set_budget since the job was queued counts.
    return pg_catalog.jsonb_build_object(
        'kind', j.kind, 'tenant', s.job_tenant, 'provider', p.provider, 'state', p.state,
        'options', p.options, 'project_name', p.project_name, 'project_id', p.project_id,
        'service_account_id', p.service_account_id, 'key_id', p.key_id, 'secret_ref', p.secret_ref,
        'generation', p.generation, 'limits', bulkhead._provider_limits(s.job_tenant),
        'applied_limits', p.applied_limits);
end
$$;

-- Records one step of a provisioning job the worker holds, and the facts it learned (only the
-- columns named here: ids and a reference, never a key). bulkhead_worker.
create function bulkhead.provisioning_step(job bigint, worker text, step text, state text, detail text,
                                           facts jsonb default '{}')
returns void
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    s bulkhead.job_schedule := bulkhead._held_job(job, worker);
    job_provider text;
    unknown text;
    current_facts bulkhead.provider_provisions;
begin
    select j.payload ->> 'provider' into job_provider from bulkhead.jobs j
    where j.tenant_id = s.job_tenant and j.id = job and j.kind in ('provision', 'provider_limits');
    if job_provider is null then
        raise exception 'job % is not a provisioning job', job using errcode = '22023';
    end if;
    if facts is null or pg_catalog.jsonb_typeof(facts) <> 'object' then
        raise exception 'facts must be a JSON object' using errcode = '22023';
    end if;
    select k into unknown from pg_catalog.jsonb_object_keys(facts) k
    where k not in ('project_id', 'service_account_id', 'key_id', 'secret_ref', 'applied_limits', 'state') limit 1;
    if unknown is not null then
        raise exception 'unknown provisioning fact %', pg_catalog.quote_literal(unknown) using errcode = '22023';
    end if;
    -- Only what the daemon stores: a file or a Vault secret (an env: reference would name the
    -- daemon's own environment, its admin keys among it).
    if facts ? 'secret_ref' and not (coalesce(bulkhead._is_secret_reference(facts ->> 'secret_ref'), false)
                                     and facts ->> 'secret_ref' ~ '^(file|vault):') then
        raise exception 'secret_ref must be a file: or vault: reference'
            using errcode = '22023', detail = 'The value given was not stored and is not repeated here.';
    end if;
    -- Ids go into the daemon's admin API paths: plain characters only.
    if exists (select from pg_catalog.jsonb_each(facts) f
               where f.key in ('project_id', 'service_account_id', 'key_id')
                 and f.value <> 'null'::jsonb
                 and (pg_catalog.jsonb_typeof(f.value) <> 'string' or (f.value #>> '{}') !~ '^[A-Za-z0-9_-]{1,200}$')) then
        raise exception 'provider ids are 1 to 200 letters, digits, _ or -'
            using errcode = '22023';
    end if;
    if facts ? 'state' and (facts ->> 'state') not in ('queued', 'active', 'pending_key') then
        raise exception 'unknown provision state' using errcode = '22023';
    end if;
    -- Facts are learned once: a recorded id or reference is never replaced (a rotation clears
    -- the account's before its job runs), and a key file is named for this tenant and account.
    select * into current_facts from bulkhead.provider_provisions p
    where p.tenant_id = s.job_tenant and p.provider = job_provider for update;
    if (facts ? 'project_id' and current_facts.project_id is not null and current_facts.project_id is distinct from facts ->> 'project_id')
       or (facts ? 'service_account_id' and current_facts.service_account_id is not null
           and current_facts.service_account_id is distinct from facts ->> 'service_account_id')
       or (facts ? 'secret_ref' and current_facts.secret_ref is not null and current_facts.secret_ref is distinct from facts ->> 'secret_ref') then
        raise exception 'a recorded provisioning fact is never replaced' using errcode = '55000';
    end if;
    insert into bulkhead.provider_resources (provider, resource_id, tenant_ref)
    select job_provider, f.value #>> '{}', s.job_tenant
    from pg_catalog.jsonb_each(facts) f
    where f.key in ('project_id', 'service_account_id') and f.value <> 'null'::jsonb
    on conflict do nothing;
    if exists (select from bulkhead.provider_resources r
               join pg_catalog.jsonb_each(facts) f on f.key in ('project_id', 'service_account_id')
               where r.provider = job_provider and r.resource_id = f.value #>> '{}' and r.tenant_ref <> s.job_tenant) then
        raise exception 'that provider id was recorded for another tenant' using errcode = '55000';
    end if;
    if facts ->> 'secret_ref' like 'file:%' and facts ->> 'secret_ref' not like
           '%/bulkhead-' || s.job_tenant || '-openai-' || coalesce(facts ->> 'service_account_id', current_facts.service_account_id, '?') || '.key' then
        raise exception 'a key file is named for its tenant and account' using errcode = '22023';
    end if;
    update bulkhead.provider_provisions p
    set project_id = case when facts ? 'project_id' then facts ->> 'project_id' else p.project_id end,
        service_account_id = case when facts ? 'service_account_id' then facts ->> 'service_account_id' else p.service_account_id end,
        key_id = case when facts ? 'key_id' then facts ->> 'key_id' else p.key_id end,
        secret_ref = case when facts ? 'secret_ref' then facts ->> 'secret_ref' else p.secret_ref end,
        applied_limits = case when facts ? 'applied_limits' then facts -> 'applied_limits' else p.applied_limits end,
        state = coalesce(facts ->> 'state', p.state),
        updated_at = pg_catalog.clock_timestamp()
    where p.tenant_id = s.job_tenant and p.provider = job_provider;
    if step is not null then
        insert into bulkhead.provisioning_steps as x (tenant_id, provider, step, state, detail)
        values (s.job_tenant, job_provider, step, state, pg_catalog.left(detail, 2000))
        on conflict on constraint provisioning_steps_pkey do update
        set state = excluded.state, detail = excluded.detail, updated_at = pg_catalog.clock_timestamp();
    end if;
end
$$;

-- The provisioned credential becomes the tenant's (kind dedicated, its project or workspace):
-- with a key reference for OpenAI; for Anthropic the workspace id only, pending_key until an
-- admin attaches a key with set_credential. Written in the job's tenant context. bulkhead_worker.
create function bulkhead.provisioned_credential(job bigint, worker text)
returns void
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    s bulkhead.job_schedule := bulkhead._held_job(job, worker);
    p bulkhead.provider_provisions;
begin
    select x.* into p from bulkhead.provider_provisions x
    join bulkhead.jobs j on j.tenant_id = x.tenant_id and j.id = job and j.payload ->> 'provider' = x.provider
    where x.tenant_id = s.job_tenant and j.kind = 'provision';
    if not found or p.project_id is null then
        raise exception 'job % has no provisioned project to make a credential of', job using errcode = '55000';
    end if;
    if p.provider = 'openai' then
        if p.secret_ref is null then
            raise exception 'the project''s key is not stored yet' using errcode = '55000';
        end if;
        -- A rotation switches only a credential that is still its old key (or already the new
        -- one): a credential an admin set by hand meanwhile stays, and the old key, no longer
        -- anyone's credential, is revoked after its calls as it would have been.
        if exists (select from bulkhead.provider_revocations r
                   where r.tenant_ref = p.tenant_id and r.provider = 'openai' and r.reason = 'rotation'
                     and r.switched_at is null)
           and not exists (select from bulkhead.tenant_credentials c
                           where c.tenant_id = p.tenant_id and c.provider = 'openai'
                             and (c.secret_ref = p.secret_ref
                                  or c.secret_ref in (select r.secret_ref from bulkhead.provider_revocations r
                                                      where r.tenant_ref = p.tenant_id and r.provider = 'openai'
                                                        and r.reason = 'rotation' and r.switched_at is null))) then
            update bulkhead.provider_revocations r
            set switched_at = pg_catalog.clock_timestamp(), not_before = pg_catalog.clock_timestamp() + interval '30 seconds'
            where r.tenant_ref = p.tenant_id and r.provider = 'openai' and r.reason = 'rotation' and r.switched_at is null;
            return;
        end if;
        insert into bulkhead.tenant_credentials as c (tenant_id, provider, secret_ref, kind, provider_project_id, status)
        values (p.tenant_id, 'openai', p.secret_ref, 'dedicated', p.project_id, 'active')
        on conflict on constraint tenant_credentials_provider_key do update
        set secret_ref = excluded.secret_ref, kind = 'dedicated', provider_project_id = excluded.provider_project_id,
            status = 'active', created_at = pg_catalog.now()
        where (c.secret_ref, c.provider_project_id, c.status) is distinct from (excluded.secret_ref, excluded.provider_project_id, 'active');
        update bulkhead.provider_provisions x set state = 'active', updated_at = pg_catalog.clock_timestamp()
        where x.tenant_id = p.tenant_id and x.provider = p.provider;
        -- The old key of a rotation is switched out now: its revocation waits for the calls
        -- admitted before this moment, and for a grace in which caches see the new reference.
        update bulkhead.provider_revocations r
        set switched_at = pg_catalog.clock_timestamp(), not_before = pg_catalog.clock_timestamp() + interval '30 seconds'
        where r.tenant_ref = p.tenant_id and r.provider = 'openai' and r.reason = 'rotation'
          and r.switched_at is null and r.secret_ref is distinct from p.secret_ref;
    else
        -- A key attached already (set_credential on the workspace) stays.
        insert into bulkhead.tenant_credentials as c (tenant_id, provider, secret_ref, kind, provider_project_id, status)
        values (p.tenant_id, 'anthropic', null, 'dedicated', p.project_id, 'pending_key')
        on conflict on constraint tenant_credentials_provider_key do update
        set provider_project_id = excluded.provider_project_id, kind = 'dedicated',
            secret_ref = case when c.provider_project_id is distinct from excluded.provider_project_id then null else c.secret_ref end,
            status = case when c.provider_project_id is distinct from excluded.provider_project_id then 'pending_key' else c.status end
        where c.provider_project_id is distinct from excluded.provider_project_id;
        update bulkhead.provider_provisions x
        set state = (select case c.status when 'active' then 'active' else 'pending_key' end
                     from bulkhead.tenant_credentials c where c.tenant_id = p.tenant_id and c.provider = 'anthropic'),
            updated_at = pg_catalog.clock_timestamp()
        where x.tenant_id = p.tenant_id and x.provider = p.provider;
    end if;
end
$$;

-- set_credential attached a key: a provision waiting for one (pending_key) is active, and its
-- step 'key' says who attached it. SECURITY DEFINER as bulkhead_meter (set_credential runs as
-- the admin, who does not write provisions).
create function bulkhead._provisioned_key_attached(tenant uuid, provider text)
returns void
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
begin
    if tenant is null or tenant is distinct from bulkhead.current_tenant() then
        raise exception 'a key is attached in the tenant''s own context' using errcode = '42501';
    end if;
    update bulkhead.provider_provisions p set state = 'active', updated_at = pg_catalog.clock_timestamp()
    where p.tenant_id = tenant and p.provider = _provisioned_key_attached.provider and p.state = 'pending_key'
      and exists (select from bulkhead.tenant_credentials c
                  where c.tenant_id = tenant and c.provider = _provisioned_key_attached.provider and c.status = 'active');
    if found then
        insert into bulkhead.provisioning_steps as x (tenant_id, provider, step, state, detail)
        values (tenant, provider, 'key', 'done', 'attached by ' || session_user || ' (bulkhead.set_credential)')
        on conflict on constraint provisioning_steps_pkey do update
        set state = excluded.state, detail = excluded.detail, updated_at = pg_catalog.clock_timestamp();
    end if;
end
$$;

-- Limits follow the tenant: a budget change of a provisioned tenant queues an update of its
-- project's or workspace's rate limits and spend limit from the new budget.
create function bulkhead._provider_limits_follow_budget()
returns trigger
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
begin
    if bulkhead._restoring() then
        return null;
    end if;
    perform bulkhead._limits_follow(new.tenant_id);
    return null;
end
$$;
create trigger budgets_provider_limits after insert or update on bulkhead.budgets
    for each row execute function bulkhead._provider_limits_follow_budget();

-- Queues a limits update for each provision of the tenant (in its context), unless one is queued
-- already (a job reads the limits when it runs: one is enough). A provisioning still on its way
-- sets them itself; a limits job waits for it (provisioning_job).
create function bulkhead._limits_follow(tenant uuid)
returns void
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    p record;
begin
    for p in select x.provider from bulkhead.provider_provisions x where x.tenant_id = tenant loop
        if exists (select from bulkhead.jobs j join bulkhead.job_schedule q on q.job_id = j.id
                   where j.tenant_id = tenant and j.kind = 'provider_limits'
                     and j.payload ->> 'provider' = p.provider and q.state = 'queued') then
            update bulkhead.provider_provisions x set desired_limits = bulkhead._provider_limits(tenant)
            where x.tenant_id = tenant and x.provider = p.provider;
        else
            perform bulkhead._queue_provisioning(tenant, 'provider_limits', p.provider);
        end if;
    end loop;
end
$$;

-- The platform default budget changed: provisioned tenants without a budget of their own follow.
create function bulkhead._provider_limits_follow_defaults()
returns trigger
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid;
    previous text := pg_catalog.current_setting('bulkhead.tenant_id', true);
begin
    if bulkhead._restoring() then
        return null;
    end if;
    for tenant in select t.id from bulkhead.tenants t loop
        perform bulkhead._set_tenant_within_function(tenant);
        if not exists (select from bulkhead.budgets b where b.tenant_id = tenant) then
            perform bulkhead._limits_follow(tenant);
        end if;
    end loop;
    perform bulkhead._set_tenant_within_function(nullif(previous, '')::uuid);
    return null;
end
$$;
create trigger budget_defaults_provider_limits after update on bulkhead.budget_defaults
    for each row
    when ((old.rpm, old.itpm, old.otpm, old.dollar_limit, old.period) is distinct from
          (new.rpm, new.itpm, new.otpm, new.dollar_limit, new.period))
    execute function bulkhead._provider_limits_follow_defaults();

-- What the daemon must undo at a provider: after a tenant's deletion, its project's key revoked,
-- the project or workspace archived and the key the daemon stored deleted; after a rotation, the
-- old key revoked and deleted once no call admitted before the switch is still open. Rows
-- outlive the tenant (ids and references only, no tenant data); the receipt lists each step
-- once it is done (deletion_receipt_pending shows what is not).
create table bulkhead.provider_revocations (
    id                  bigint      generated always as identity,
    receipt_id          uuid,
    tenant_ref          uuid        not null,
    provider            text        not null,
    reason              text        not null,
    project_id          text,
    service_account_id  text,
    secret_ref          text,
    -- A rotation's old key is in use until the new one is switched in (provisioned_credential).
    switched_at         timestamptz,
    not_before          timestamptz,
    key_revoked_at      timestamptz,
    archived_at         timestamptz,
    secret_deleted_at   timestamptz,
    -- A provisioning was in flight at the deletion: its job may still create a project, an
    -- account or a key file after the rows are gone. Once every job's time is up, the daemon
    -- looks them up by name (project_name, and the key names of the tenant) and revokes them.
    project_name        text,
    recheck_at          timestamptz,
    rechecked_at        timestamptz,
    last_error          text,
    enqueued_at         timestamptz not null default pg_catalog.clock_timestamp(),
    processed_at        timestamptz,
    constraint provider_revocations_pkey primary key (id),
    constraint provider_revocations_reason_known check (reason in ('deletion', 'rotation')),
    constraint provider_revocations_provider_known check (provider in ('openai', 'anthropic')),
    constraint provider_revocations_reference_only check (bulkhead._is_secret_reference(secret_ref))
);
comment on column bulkhead.provider_revocations.tenant_ref is
    'bulkhead:kept The revocation outlives a deleted tenant (its receipt names it); ids only.';
comment on column bulkhead.provider_revocations.project_id is
    'bulkhead:kept The provider project or workspace to archive, named on no receipt.';
comment on column bulkhead.provider_revocations.project_name is
    'bulkhead:kept The name a provisioning in flight at the deletion may still give a project: looked up once more.';
create index provider_revocations_pending on bulkhead.provider_revocations (enqueued_at) where processed_at is null;
alter table bulkhead.provider_revocations enable row level security;
alter table bulkhead.provider_revocations force row level security;
create policy daemon_reads on bulkhead.provider_revocations for select to bulkhead_worker, bulkhead_admin using (true);
create policy meter_writes on bulkhead.provider_revocations for all to bulkhead_meter using (true) with check (true);
grant select on bulkhead.provider_revocations to bulkhead_worker, bulkhead_admin;
grant select, insert, update on bulkhead.provider_revocations to bulkhead_meter;
select pg_catalog.pg_extension_config_dump('bulkhead.provider_revocations', '');
select pg_catalog.pg_extension_config_dump(
    pg_catalog.pg_get_serial_sequence('bulkhead.provider_revocations', 'id')::regclass, '');

-- provider_revocation_done (as bulkhead_meter) adds the providers' steps to a deletion receipt,
-- only these steps and only to a receipt with revocations.
grant insert on bulkhead.deletion_receipt_steps to bulkhead_meter;
create policy meter_records_revocations on bulkhead.deletion_receipt_steps
    for insert to bulkhead_meter
    with check (step in ('provider key revoked', 'provider project archived', 'secret deleted',
                         'provider lookup after a provisioning in flight')
                and exists (select from bulkhead.provider_revocations r where r.receipt_id = deletion_receipt_steps.receipt_id));

-- delete_tenant queues the revocation of each provision of the tenant (in its context).
create function bulkhead._queue_provider_revocations(tenant uuid, receipt uuid)
returns int
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    n int;
begin
    if tenant is null or tenant is distinct from bulkhead.current_tenant() then
        raise exception 'revocations are queued in the tenant''s own context' using errcode = '42501';
    end if;
    -- A provisioning job still running (claimed, between two of its steps) may create what these
    -- rows do not name yet: looked up by name again once its lease and its calls are surely over.
    insert into bulkhead.provider_revocations (receipt_id, tenant_ref, provider, reason, project_id,
                                               service_account_id, secret_ref, switched_at, not_before,
                                               project_name, recheck_at)
    select receipt, tenant, p.provider, 'deletion', p.project_id, p.service_account_id, p.secret_ref,
           pg_catalog.clock_timestamp(), pg_catalog.clock_timestamp(), p.project_name,
           -- Unless it is complete and nothing of it is on its way, something unrecorded may
           -- exist (a create that timed out, a job between two steps).
           case when p.state = 'queued'
                  or exists (select from bulkhead.job_schedule s join bulkhead.jobs j on j.id = s.job_id
                             where s.job_tenant = tenant and j.tenant_id = tenant
                               and (s.state in ('queued', 'running') or (j.kind = 'provision' and s.attempts > 1))
                               and j.kind in ('provision', 'provider_limits') and j.payload ->> 'provider' = p.provider)
                  or exists (select from bulkhead.provider_revocations r
                             where r.tenant_ref = tenant and r.provider = p.provider and r.reason = 'rotation'
                               and r.switched_at is null)
                then pg_catalog.clock_timestamp() + interval '15 minutes' end
    from bulkhead.provider_provisions p
    where p.tenant_id = tenant;
    get diagnostics n = row_count;
    -- A rotation still waiting drops its old key with the rest.
    update bulkhead.provider_revocations r
    set receipt_id = receipt, reason = 'deletion', switched_at = coalesce(r.switched_at, pg_catalog.clock_timestamp()),
        not_before = pg_catalog.clock_timestamp()
    where r.tenant_ref = tenant and r.processed_at is null and r.reason = 'rotation';
    return n;
end
$$;

-- The external steps of deletion receipts not done yet: the Pinecone namespace and each provider
-- revocation's parts. Empty for a receipt whose every step is done. bulkhead_admin.
create view bulkhead.deletion_receipt_pending with (security_invoker = true) as
    select d.receipt_id, 'pinecone namespace deleted'::text as step, d.enqueued_at as since
    from bulkhead.pinecone_namespace_deletions d
    where d.processed_at is null and d.receipt_id is not null
    union all
    select r.receipt_id, s.step, r.enqueued_at
    from bulkhead.provider_revocations r
    cross join lateral (values
        ('provider key revoked', r.key_revoked_at is null),
        ('provider project archived', r.archived_at is null and r.project_id is not null),
        ('secret deleted', r.secret_deleted_at is null and r.secret_ref is not null),
        ('provider lookup after a provisioning in flight', r.recheck_at is not null and r.rechecked_at is null)) s(step, pending)
    where r.receipt_id is not null and r.reason = 'deletion' and s.pending;
grant select on bulkhead.deletion_receipt_pending to bulkhead_admin;

-- Revocations the daemon may carry out now (bulkhead_worker): a deletion's at once; a
-- rotation's once its new key is switched in, its grace has passed, and no call admitted before
-- the switch is still open (a reservation in the table, or a gateway call held in memory).
create function bulkhead.provider_revocations_due(max_rows int default 50)
returns table (id bigint, provider text, reason text, project_id text, service_account_id text,
               secret_ref text, key_revoked boolean, project_archived boolean, secret_deleted boolean,
               tenant_ref uuid, project_name text, recheck boolean)
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    r bulkhead.provider_revocations;
    busy boolean;
    returned int := 0;
begin
    for r in select * from bulkhead.provider_revocations x
             where x.processed_at is null and x.switched_at is not null
               and x.not_before <= pg_catalog.clock_timestamp()
               -- Rows whose only part left is a lookup not due yet wait without taking a place.
               and (x.key_revoked_at is null or x.secret_deleted_at is null and x.secret_ref is not null
                    or x.archived_at is null and x.project_id is not null and x.reason = 'deletion'
                    or x.recheck_at <= pg_catalog.clock_timestamp())
             order by x.enqueued_at
             limit greatest(least(coalesce(max_rows, 50), 1000), 1) * 4 loop
        busy := false;
        if r.reason = 'rotation' then
            perform bulkhead._set_tenant_within_function(r.tenant_ref);
            busy := exists (select from bulkhead.reservations v
                            where v.tenant_id = r.tenant_ref and v.created_at < r.switched_at
                              and v.settled_at is null and v.expired_at is null
                              and v.lease_expires_at > pg_catalog.clock_timestamp())
                 or exists (select from bulkhead._tenants_with_old_gateway_holds(pg_catalog.clock_timestamp() - r.switched_at) h
                            where h.tenant_id = r.tenant_ref);
            perform bulkhead._set_tenant_within_function(null);
        end if;
        continue when busy;
        id := r.id; provider := r.provider; reason := r.reason; project_id := r.project_id;
        service_account_id := r.service_account_id; secret_ref := r.secret_ref;
        key_revoked := r.key_revoked_at is not null;
        project_archived := r.archived_at is not null or r.reason = 'rotation' or r.project_id is null;
        secret_deleted := r.secret_deleted_at is not null or r.secret_ref is null;
        tenant_ref := r.tenant_ref; project_name := r.project_name;
        recheck := r.recheck_at is not null and r.rechecked_at is null and r.recheck_at <= pg_catalog.clock_timestamp();
        -- Parts all done, the lookup not due yet: nothing to do now.
        continue when key_revoked and project_archived and secret_deleted and not recheck;
        return next;
        returned := returned + 1;
        exit when returned >= max_rows;
    end loop;
end
$$;

-- Records a part of a revocation done ('key', 'project', 'secret') or failed (error given: kept
-- for operators, the part stays pending); once every part is done the revocation is, and a
-- deletion's receipt gains the step when every revocation of the receipt has it.
create function bulkhead.provider_revocation_done(revocation bigint, part text, error text default null)
returns void
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    r bulkhead.provider_revocations;
    receipt_step text := case part when 'key' then 'provider key revoked' when 'project' then 'provider project archived'
                           when 'secret' then 'secret deleted' when 'recheck' then 'provider lookup after a provisioning in flight' end;
begin
    if receipt_step is null then
        raise exception 'unknown revocation part %', pg_catalog.quote_literal(part)
            using errcode = '22023', detail = 'Parts: key, project, secret, recheck.';
    end if;
    if error is not null then
        update bulkhead.provider_revocations x set last_error = pg_catalog.left(error, 2000)
        where x.id = revocation;
        return;
    end if;
    update bulkhead.provider_revocations x
    set key_revoked_at = case when part = 'key' then coalesce(x.key_revoked_at, pg_catalog.clock_timestamp()) else x.key_revoked_at end,
        archived_at = case when part = 'project' then coalesce(x.archived_at, pg_catalog.clock_timestamp()) else x.archived_at end,
        secret_deleted_at = case when part = 'secret' then coalesce(x.secret_deleted_at, pg_catalog.clock_timestamp()) else x.secret_deleted_at end,
        rechecked_at = case when part = 'recheck' then coalesce(x.rechecked_at, pg_catalog.clock_timestamp()) else x.rechecked_at end,
        last_error = null
    where x.id = revocation and x.processed_at is null
    returning x.* into r;
    if not found then
        return;
    end if;
    if r.key_revoked_at is not null
       and (r.archived_at is not null or r.reason = 'rotation' or r.project_id is null)
       and (r.secret_deleted_at is not null or r.secret_ref is null)
       and (r.recheck_at is null or r.rechecked_at is not null) then
        update bulkhead.provider_revocations x set processed_at = pg_catalog.clock_timestamp() where x.id = revocation;
    end if;
    if r.receipt_id is not null and r.reason = 'deletion'
       and not exists (select from bulkhead.provider_revocations x
                       where x.receipt_id = r.receipt_id
                         and case part when 'key' then x.key_revoked_at is null
                                       when 'project' then x.archived_at is null and x.project_id is not null
                                       when 'recheck' then x.recheck_at is not null and x.rechecked_at is null
                                       else x.secret_deleted_at is null and x.secret_ref is not null end) then
        insert into bulkhead.deletion_receipt_steps (receipt_id, step, rows_deleted, completed_at)
        select r.receipt_id, receipt_step, pg_catalog.count(*), pg_catalog.clock_timestamp()
        from bulkhead.provider_revocations x
        where x.receipt_id = r.receipt_id
          and case part when 'key' then true when 'project' then x.project_id is not null
                        when 'recheck' then x.recheck_at is not null else x.secret_ref is not null end
        on conflict do nothing;
    end if;
end
$$;

-- Rotates a provisioned OpenAI tenant's key (bulkhead_admin): the daemon makes a new service
-- account and key (the next generation), stores it, switches the tenant's credential to it in
-- one statement, and revokes the old key once no call admitted before the switch is open.
-- Returns the job id. Anthropic keys cannot be created by API: 0A000.
create function bulkhead.rotate_credential(tenant_id uuid, provider text)
returns bigint
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := rotate_credential.tenant_id;
    previous text;
    job bigint;
begin
    if tenant is null or provider is null then
        raise exception 'tenant_id and provider are required' using errcode = '22004';
    end if;
    if provider = 'anthropic' then
        raise exception 'Anthropic API keys cannot be created by API'
            using errcode = '0A000',
                  detail = 'Create a new key for the tenant''s workspace in the Console, attach its reference with bulkhead.set_credential, then set the old key inactive in the Console.';
    end if;
    if provider <> 'openai' then
        raise exception 'provider % has no provisioned credential to rotate', pg_catalog.quote_literal(provider)
            using errcode = '22023';
    end if;
    if not exists (select from bulkhead.tenants t where t.id = tenant) then
        raise exception 'tenant % does not exist', tenant using errcode = '42704';
    end if;
    previous := bulkhead._enter_tenant(tenant);
    job := bulkhead._queue_rotation(tenant);
    perform bulkhead._leave_tenant(previous);
    return job;
end
$$;
comment on function bulkhead.rotate_credential(uuid, text) is
    'Queues the rotation of a tenant''s provisioned OpenAI key (new service account and key, switched atomically, the old one revoked after calls in flight); returns the job id. bulkhead_admin only.';

-- rotate_credential's work in the tenant's context, as bulkhead_meter (provisions and
-- revocations are its to write).
create function bulkhead._queue_rotation(tenant uuid)
returns bigint
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    p bulkhead.provider_provisions;
    current_ref text;
begin
    if tenant is null or tenant is distinct from bulkhead.current_tenant() then
        raise exception 'a rotation is queued in the tenant''s own context' using errcode = '42501';
    end if;
    select * into p from bulkhead.provider_provisions x
    where x.tenant_id = tenant and x.provider = 'openai' for update;
    if not found or p.project_id is null then
        raise exception 'the tenant has no provisioned OpenAI project'
            using errcode = '55000', hint = 'bulkhead.provision_provider(tenant_id, ''openai'') first.';
    end if;
    if exists (select from bulkhead.jobs j join bulkhead.job_schedule q on q.job_id = j.id
               where j.tenant_id = tenant and j.kind = 'provision' and j.payload ->> 'provider' = 'openai'
                 and q.state in ('queued', 'running')) then
        raise exception 'a provisioning of this tenant''s OpenAI project is on its way'
            using errcode = '55006', hint = 'Rotate once it is done (bulkhead.provisioning_status).';
    end if;
    select c.secret_ref into current_ref from bulkhead.tenant_credentials c
    where c.tenant_id = tenant and c.provider = 'openai';
    if exists (select from bulkhead.provider_revocations r
               where r.tenant_ref = tenant and r.provider = 'openai' and r.reason = 'rotation' and r.switched_at is null) then
        -- A rotation whose new key is not switched in yet is carried on, not started again.
        null;
    elsif p.secret_ref is not null and p.secret_ref is not distinct from current_ref then
        insert into bulkhead.provider_revocations (tenant_ref, provider, reason, project_id, service_account_id, secret_ref)
        values (tenant, 'openai', 'rotation', p.project_id, p.service_account_id, p.secret_ref);
        update bulkhead.provider_provisions x
        set generation = x.generation + 1, service_account_id = null, key_id = null, secret_ref = null,
            updated_at = pg_catalog.clock_timestamp()
        where x.tenant_id = tenant and x.provider = 'openai';
    else
        raise exception 'the tenant''s OpenAI credential is not the provisioned key'
            using errcode = '55000',
                  detail = 'Its credential was set by hand (bulkhead.set_credential) or the provisioning never finished.',
                  hint = 'bulkhead.provision_provider(tenant_id, ''openai'') makes the provisioned key the tenant''s again.';
    end if;
    return bulkhead._queue_provisioning(tenant, 'provision', 'openai');
end
$$;

alter function bulkhead._queue_provisioning(uuid, text, text) owner to bulkhead_meter;
alter function bulkhead._provision(uuid, text, jsonb) owner to bulkhead_meter;
alter function bulkhead.provisioning_job(bigint, text) owner to bulkhead_meter;
alter function bulkhead.provisioning_step(bigint, text, text, text, text, jsonb) owner to bulkhead_meter;
alter function bulkhead.provisioned_credential(bigint, text) owner to bulkhead_meter;
alter function bulkhead._provider_limits_follow_budget() owner to bulkhead_meter;
alter function bulkhead._register_credential_project() owner to bulkhead_meter;
alter function bulkhead.provider_resource_free(text, text, uuid) owner to bulkhead_meter;
alter function bulkhead._limits_follow(uuid) owner to bulkhead_meter;
alter function bulkhead._provider_limits_follow_defaults() owner to bulkhead_meter;
alter function bulkhead._provisioned_key_attached(uuid, text) owner to bulkhead_meter;
alter function bulkhead._queue_provider_revocations(uuid, uuid) owner to bulkhead_meter;
alter function bulkhead.provider_revocations_due(int) owner to bulkhead_meter;
alter function bulkhead.provider_revocation_done(bigint, text, text) owner to bulkhead_meter;
alter function bulkhead._queue_rotation(uuid) owner to bulkhead_meter;
revoke all on function bulkhead._provider_limits(uuid) from public;
revoke all on function bulkhead._queue_provisioning(uuid, text, text) from public;
revoke all on function bulkhead._provision(uuid, text, jsonb) from public;
grant execute on function bulkhead._provision(uuid, text, jsonb) to bulkhead_admin;
revoke all on function bulkhead.provision_provider(uuid, text, jsonb) from public;
revoke all on function bulkhead.provisioning_status(uuid) from public;
revoke all on function bulkhead.provisioning_job(bigint, text) from public;
revoke all on function bulkhead.provisioning_step(bigint, text, text, text, text, jsonb) from public;
revoke all on function bulkhead.provisioned_credential(bigint, text) from public;
revoke all on function bulkhead._provider_limits_follow_budget() from public;
revoke all on function bulkhead._register_credential_project() from public;
revoke all on function bulkhead.provider_resource_free(text, text, uuid) from public;
grant execute on function bulkhead.provider_resource_free(text, text, uuid) to bulkhead_worker;
revoke all on function bulkhead._limits_follow(uuid) from public;
revoke all on function bulkhead._provider_limits_follow_defaults() from public;
revoke all on function bulkhead._provisioned_key_attached(uuid, text) from public;
grant execute on function bulkhead._provisioned_key_attached(uuid, text) to bulkhead_admin;
revoke all on function bulkhead._queue_provider_revocations(uuid, uuid) from public;
revoke all on function bulkhead.provider_revocations_due(int) from public;
revoke all on function bulkhead.provider_revocation_done(bigint, text, text) from public;
revoke all on function bulkhead.rotate_credential(uuid, text) from public;
revoke all on function bulkhead._queue_rotation(uuid) from public;
grant execute on function bulkhead._queue_provider_revocations(uuid, uuid), bulkhead._queue_rotation(uuid),
    bulkhead.rotate_credential(uuid, text) to bulkhead_admin;
grant execute on function bulkhead.provider_revocations_due(int), bulkhead.provider_revocation_done(bigint, text, text)
    to bulkhead_worker;
grant execute on function bulkhead._provider_limits(uuid) to bulkhead_meter, bulkhead_admin;
grant execute on function bulkhead._queue_provisioning(uuid, text, text) to bulkhead_admin;
grant execute on function bulkhead.provision_provider(uuid, text, jsonb), bulkhead.provisioning_status(uuid)
    to bulkhead_admin;
grant execute on function bulkhead.provisioning_job(bigint, text), bulkhead.provisioning_step(bigint, text, text, text, text, jsonb),
    bulkhead.provisioned_credential(bigint, text) to bulkhead_worker;
