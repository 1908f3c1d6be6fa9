-- Provider credentials, stored as references only: env:NAME, file:/path or vault:<uuid>
-- (Supabase Vault). The daemon resolves a reference at call time; no table ever holds a key.

-- True for env:NAME, file:/absolute/path (no "..") and vault:<uuid>; anything else may be a key.
create function bulkhead._is_secret_reference(secret_ref text)
returns boolean
language sql immutable parallel safe
security invoker
set search_path to pg_catalog, pg_temp
as $$
    -- "sk-" anywhere is a pasted OpenAI or Anthropic key, even behind a valid-looking prefix.
    select pg_catalog.char_length(secret_ref) <= 1024
       and pg_catalog.strpos(secret_ref, 'sk-') = 0
       and secret_ref ~ '^(env:[A-Za-z_][A-Za-z0-9_]{0,127}|file:/[^[:cntrl:]]+|vault:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$'
       and secret_ref !~ '/[.][.](/|$)'
$$;
revoke all on function bulkhead._is_secret_reference(text) from public;
grant execute on function bulkhead._is_secret_reference(text) to bulkhead_app, bulkhead_worker, bulkhead_admin, bulkhead_meter;

create table bulkhead.tenant_credentials (
    tenant_id           uuid        not null,
    id                  uuid        not null default pg_catalog.gen_random_uuid(),
    provider            text        not null,
    -- NULL only while the credential waits for a key (status pending_key).
    secret_ref          text,
    kind                text        not null,
    provider_project_id text,
    created_at          timestamptz not null default pg_catalog.now(),
    -- pending_key: a provisioned Anthropic workspace whose key an admin has not attached yet
    -- (provisioning.sql); its calls use the shared pool or are refused (bulkhead.pending_key_calls).
    status              text        not null default 'active',
    constraint tenant_credentials_pkey primary key (tenant_id, id),
    constraint tenant_credentials_provider_key unique (tenant_id, provider),
    constraint tenant_credentials_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id),
    constraint tenant_credentials_provider_known check (provider in ('openai', 'anthropic', 'openai_compatible')),
    constraint tenant_credentials_kind_known check (kind in ('dedicated', 'shared_pool')),
    constraint tenant_credentials_reference_only check (bulkhead._is_secret_reference(secret_ref)),
    constraint tenant_credentials_status_known check (status in ('active', 'pending_key')),
    constraint tenant_credentials_key_unless_pending check ((secret_ref is null) = (status = 'pending_key'))
);
comment on table bulkhead.tenant_credentials is
    'A tenant''s own provider credential (OpenAI project key, Anthropic workspace key) as a reference, one per provider.';

-- The shared pool: tenants without their own credential use it, attributed in the ledger.
create table bulkhead.shared_credentials (
    provider            text        not null,
    id                  uuid        not null default pg_catalog.gen_random_uuid(),
    secret_ref          text        not null,
    provider_project_id text,
    created_at          timestamptz not null default pg_catalog.now(),
    constraint shared_credentials_pkey primary key (provider),
    constraint shared_credentials_id_key unique (id),
    constraint shared_credentials_provider_known check (provider in ('openai', 'anthropic', 'openai_compatible')),
    constraint shared_credentials_reference_only check (bulkhead._is_secret_reference(secret_ref))
);

comment on column bulkhead.shared_credentials.provider_project_id is
    'bulkhead:kept The shared pool''s project belongs to the platform, not to a tenant.';

-- Every provider project or workspace a tenant's dedicated credential ever named: set_credential
-- overwrites the credential, but usage reports keep naming an old project, and deletion must
-- know them all (delete_tenant, tenant-project-ref markers).
create table bulkhead.tenant_provider_projects (
    tenant_id           uuid        not null,
    provider            text        not null,
    provider_project_id text        not null,
    first_named_at      timestamptz not null default pg_catalog.clock_timestamp(),
    constraint tenant_provider_projects_pkey primary key (tenant_id, provider, provider_project_id),
    constraint tenant_provider_projects_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id)
);
alter table bulkhead.tenant_provider_projects enable row level security;
alter table bulkhead.tenant_provider_projects force row level security;
create policy tenant_isolation on bulkhead.tenant_provider_projects
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));
grant select, insert, delete on bulkhead.tenant_provider_projects to bulkhead_admin;
select pg_catalog.pg_extension_config_dump('bulkhead.tenant_provider_projects', '');

-- Every write of a tenant credential records its project, whoever writes it (set_credential, or
-- the control plane's own INSERT or UPDATE).
create function bulkhead._record_provider_project()
returns trigger
language plpgsql
security invoker
set search_path to pg_catalog, pg_temp
as $$
begin
    -- A restore brings the recorded projects back from the dump.
    if new.provider_project_id is not null and not bulkhead._restoring() then
        insert into bulkhead.tenant_provider_projects (tenant_id, provider, provider_project_id)
        values (new.tenant_id, new.provider, new.provider_project_id)
        on conflict do nothing;
    end if;
    return null;
end
$$;
revoke all on function bulkhead._record_provider_project() from public;

alter table bulkhead.tenant_credentials enable row level security;
alter table bulkhead.tenant_credentials force row level security;
alter table bulkhead.shared_credentials enable row level security;
alter table bulkhead.shared_credentials force row level security;
create policy tenant_isolation on bulkhead.tenant_credentials
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));
create policy readable on bulkhead.shared_credentials for select using (true);
create policy control_plane on bulkhead.shared_credentials for all to bulkhead_admin using (true) with check (true);
-- Applications see references only through credential_for_tenant(); the worker reads them.
grant select on bulkhead.tenant_credentials, bulkhead.shared_credentials to bulkhead_worker, bulkhead_admin;
grant insert, update, delete on bulkhead.tenant_credentials, bulkhead.shared_credentials to bulkhead_admin;
select pg_catalog.pg_extension_config_dump('bulkhead.tenant_credentials', '');
select pg_catalog.pg_extension_config_dump('bulkhead.shared_credentials', '');

-- Stores a credential reference for a tenant (tenant_id NULL: the shared pool); returns its id.
-- A raw key is refused without being stored or repeated in the error.
create function bulkhead.set_credential(
    tenant_id uuid,
    provider text,
    secret_ref text,
    kind text default 'dedicated',
    provider_project_id text default null
)
returns uuid
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    previous text;
    credential uuid;
    statement_logging text := pg_catalog.current_setting('log_min_error_statement');
begin
    -- Any error here would log the failing statement, and with it whatever was passed, perhaps
    -- a key in the wrong argument. No error message below repeats an argument either.
    perform pg_catalog.set_config('log_min_error_statement', 'panic', true);
    if provider is null or provider not in ('openai', 'anthropic', 'openai_compatible') then
        raise exception 'unknown provider'
            using errcode = '22023', detail = 'Known providers are openai, anthropic and openai_compatible.';
    end if;
    if not coalesce(bulkhead._is_secret_reference(secret_ref), false) then
        raise exception 'secret_ref must be a reference to a secret, not a secret'
            using errcode = '22023',
                  detail = 'Accepted forms: env:NAME, file:/absolute/path, vault:<uuid>. The value given was not stored and is not repeated here.',
                  hint = 'Put the key in an environment variable, a file or Supabase Vault, and pass its reference.';
    end if;
    if kind is null or kind not in ('dedicated', 'shared_pool') then
        raise exception 'unknown credential kind'
            using errcode = '22023',
                  detail = 'dedicated: the tenant''s own OpenAI project or Anthropic workspace; shared_pool: a key shared by tenants.';
    end if;
    if provider_project_id is not null and pg_catalog.char_length(provider_project_id) not between 1 and 200 then
        raise exception 'provider_project_id must be 1 to 200 characters'
            using errcode = '22023', detail = 'It is the OpenAI project id or Anthropic workspace id of the key.';
    end if;

    if set_credential.tenant_id is null then
        insert into bulkhead.shared_credentials as c (provider, secret_ref, provider_project_id)
        values (set_credential.provider, set_credential.secret_ref, set_credential.provider_project_id)
        on conflict on constraint shared_credentials_pkey do update
        set secret_ref = excluded.secret_ref, provider_project_id = excluded.provider_project_id,
            created_at = pg_catalog.now()
        returning c.id into credential;
        perform pg_catalog.set_config('log_min_error_statement', statement_logging, true);
        return credential;
    end if;

    previous := bulkhead._enter_tenant(set_credential.tenant_id);
    insert into bulkhead.tenant_credentials as c (tenant_id, provider, secret_ref, kind, provider_project_id)
    values (set_credential.tenant_id, set_credential.provider, set_credential.secret_ref,
            set_credential.kind, set_credential.provider_project_id)
    on conflict on constraint tenant_credentials_provider_key do update
    set secret_ref = excluded.secret_ref, kind = excluded.kind, status = 'active',
        -- A key attached to a provisioned workspace keeps the workspace's id unless given another.
        provider_project_id = case when c.status = 'pending_key'
                                   then coalesce(excluded.provider_project_id, c.provider_project_id)
                                   else excluded.provider_project_id end,
        created_at = pg_catalog.now()
    returning c.id into credential;
    -- A key for a provisioned workspace that waited for one: its provisioning is complete.
    perform bulkhead._provisioned_key_attached(set_credential.tenant_id, set_credential.provider);
    perform bulkhead._leave_tenant(previous);
    perform pg_catalog.set_config('log_min_error_statement', statement_logging, true);
    return credential;
end
$$;
comment on function bulkhead.set_credential(uuid, text, text, text, text) is
    'Stores a provider credential reference (env:, file:, vault:) for a tenant or, with NULL tenant, the shared pool. bulkhead_admin only.';

-- The credential the current tenant's calls to a provider use: its own, else the shared pool.
create function bulkhead.credential_for_tenant(provider text)
returns table (credential_id uuid, secret_ref text, kind text, provider_project_id text, source text)
language sql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
    select * from (
        -- A credential waiting for its key: the shared pool serves, or (pending_key_calls =
        -- refuse) the row comes without a key and the call is refused.
        select c.id, c.secret_ref, c.kind, c.provider_project_id, 'tenant'
        from bulkhead.tenant_credentials c
        where c.tenant_id = bulkhead.current_tenant() and c.provider = credential_for_tenant.provider
          and (c.status = 'active' or pg_catalog.current_setting('bulkhead.pending_key_calls', true) = 'refuse')
        union all
        select s.id, s.secret_ref, 'shared_pool', s.provider_project_id, 'shared'
        from bulkhead.shared_credentials s
        where s.provider = credential_for_tenant.provider and bulkhead.current_tenant() is not null
    ) found
    order by 5 desc  -- 'tenant' before 'shared'
    limit 1
$$;
comment on function bulkhead.credential_for_tenant(text) is
    'The current tenant''s credential reference for a provider: its own, else the shared pool; no row without a tenant context.';

revoke all on function bulkhead.set_credential(uuid, text, text, text, text) from public;
revoke all on function bulkhead.credential_for_tenant(text) from public;
grant execute on function bulkhead.set_credential(uuid, text, text, text, text) to bulkhead_admin;
grant execute on function bulkhead.credential_for_tenant(text) to bulkhead_worker, bulkhead_admin;
grant set on parameter log_min_error_statement to bulkhead_admin;

create trigger tenant_credentials_record_project after insert or update of provider_project_id
    on bulkhead.tenant_credentials for each row execute function bulkhead._record_provider_project();
