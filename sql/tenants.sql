-- Tenant registry and per-tenant settings, both under row level security.
--
-- Every tenant-scoped table follows the same rules (the schema lint test enforces them):
-- a tenant_id column, ENABLE + FORCE ROW LEVEL SECURITY, a policy comparing tenant_id with
-- (select bulkhead.current_tenant()), and tenant_id in every UNIQUE and FOREIGN KEY.
-- The sub-select makes the context an InitPlan: evaluated once per query, not once per row.

-- A random id for rows a tenant can see: a sequence would tell each tenant how many rows the
-- others write. At most 2^53 - 1, so that JavaScript clients (supabase-js parses JSON numbers
-- as doubles) read it exactly.
create function bulkhead._random_id()
returns bigint
language sql volatile parallel safe
security invoker
set search_path to pg_catalog, pg_temp
as $$
    select 1 + ('x' || substr(md5(gen_random_uuid()::text), 1, 14))::bit(56)::bigint % 9007199254740991
$$;
revoke all on function bulkhead._random_id() from public;

-- Whether this session is restoring a dump: pg_dump's scripts (plain, and pg_restore's) set
-- row_security = off, and a restore logs in as a role that bypasses row level security (every
-- Bulkhead table forces it, so no other role could write them all). Both are required: the
-- setting alone could be switched off halfway through a statement planned with it on, by any
-- role. The row triggers that derive rows from others (sync jobs, recorded projects) or check
-- rows against other tables then stand aside: what they would write was dumped too, and what
-- they check held when the rows were written. (They could not run anyway: their lookups would
-- fail with row_security off.)
create function bulkhead._restoring()
returns boolean
language sql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
    select case when pg_catalog.current_setting('row_security') = 'off'
                then coalesce((select r.rolsuper or r.rolbypassrls from pg_catalog.pg_roles r
                               where r.rolname = pg_catalog.session_user()), false)
                else false end
$$;
revoke all on function bulkhead._restoring() from public;
grant execute on function bulkhead._restoring()
    to bulkhead_app, bulkhead_end_user, bulkhead_gateway, bulkhead_admin, bulkhead_worker, bulkhead_meter;

-- The worker's wake-up channels carry a secret of this installation: any role that can connect
-- may LISTEN on a channel it can name, and the notifications (and the sender's process id, which
-- pg_stat_activity maps to a login) would tell it when and how often tenants queue work.
create table bulkhead.notification_channels (
    base   text not null,
    name   text not null,
    constraint notification_channels_pkey primary key (base)
);
insert into bulkhead.notification_channels (base, name)
select b, b || '_' || pg_catalog.substr(pg_catalog.md5(pg_catalog.gen_random_uuid()::text), 1, 24)
from pg_catalog.unnest(array['bulkhead_jobs', 'bulkhead_pinecone']) b;
alter table bulkhead.notification_channels enable row level security;
alter table bulkhead.notification_channels force row level security;
create policy readers on bulkhead.notification_channels for select to bulkhead_meter, bulkhead_worker using (true);
grant select on bulkhead.notification_channels to bulkhead_meter, bulkhead_worker;

-- Wakes the workers listening on a channel (its secret name) at commit. SECURITY DEFINER as
-- bulkhead_meter, which reads the names; callable by Bulkhead's own functions only.
create function bulkhead._notify(base text)
returns void
language sql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
    select pg_catalog.pg_notify(c.name, '') from bulkhead.notification_channels c where c.base = _notify.base
$$;
alter function bulkhead._notify(text) owner to bulkhead_meter;
revoke all on function bulkhead._notify(text) from public;
grant execute on function bulkhead._notify(text) to bulkhead_meter, bulkhead_worker;
grant execute on function bulkhead._random_id() to bulkhead_meter, bulkhead_admin;

create table bulkhead.tenants (
    id                 uuid        not null default pg_catalog.gen_random_uuid(),
    slug               text        not null,
    name               text        not null,
    -- Derived from the id, never from the slug: a slug can be reused after a deletion,
    -- a namespace must never be.
    pinecone_namespace text        not null,
    status             text        not null default 'active',
    created_at         timestamptz not null default pg_catalog.now(),
    constraint tenants_pkey primary key (id),
    constraint tenants_slug_key unique (slug),
    constraint tenants_pinecone_namespace_key unique (pinecone_namespace),
    constraint tenants_slug_format check (slug ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    constraint tenants_name_length check (pg_catalog.char_length(name) between 1 and 200),
    constraint tenants_status_known check (status in ('active', 'suspended'))
);
comment on table bulkhead.tenants is
    'One row per tenant. Applications see only their own row; bulkhead_admin sees all.';

create table bulkhead.tenant_settings (
    tenant_id           uuid        not null,
    display_name        text,
    persona_tone        text,
    custom_instructions text,
    banned_topics       text[]      not null default '{}',
    -- The output cap of a gateway call that names none; NULL: budget_defaults'.
    default_max_output_tokens int,
    updated_at          timestamptz not null default pg_catalog.now(),
    constraint tenant_settings_pkey primary key (tenant_id),
    constraint tenant_settings_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id),
    constraint tenant_settings_display_name_length check (pg_catalog.char_length(display_name) <= 200),
    constraint tenant_settings_persona_tone_length check (pg_catalog.char_length(persona_tone) <= 200),
    constraint tenant_settings_custom_instructions_length
        check (pg_catalog.octet_length(custom_instructions) <= 65536),
    constraint tenant_settings_banned_topics_size
        check (pg_catalog.cardinality(banned_topics) <= 200),
    constraint tenant_settings_output_cap_valid check (default_max_output_tokens between 1 and 1000000)
);
comment on table bulkhead.tenant_settings is
    'Per-tenant prompt slot values (display name, persona tone, custom instructions, banned topics).';

-- Receipts outlive the tenant they describe: they hold its id and row counts, never its data,
-- so tenant deletion leaves them in place and only bulkhead_admin can read them.
create table bulkhead.deletion_receipts (
    id           uuid        not null default pg_catalog.gen_random_uuid(),
    tenant_id    uuid        not null,
    requested_by name        not null default current_user,
    started_at   timestamptz not null,
    completed_at timestamptz not null,
    -- What the deletion could not remove in its transaction, and what removes it (dead row
    -- versions until VACUUM, planner statistics until ANALYZE, WAL, backups, Pinecone).
    remaining_physical_state jsonb not null default '{}',
    constraint deletion_receipts_pkey primary key (id)
);
-- Columns that name a tenant outside the tenant_id rule carry a marker in their comment, which
-- delete_tenant and the schema lint read (bulkhead.tenant_references()):
--   bulkhead:tenant-ref                rows naming the tenant are deleted with it
--   bulkhead:tenant-ref-cascade        ... by a foreign key's ON DELETE CASCADE (checked empty)
--   bulkhead:tenant-credential-ref     rows naming one of its credentials are deleted with it
--   bulkhead:tenant-project-ref        rows naming its provider project or workspace are deleted
--   bulkhead:kept                      the row outlives the tenant on purpose (the comment says why)
comment on column bulkhead.deletion_receipts.tenant_id is
    'bulkhead:kept The receipt proves the deletion; it holds ids and counts, not tenant data.';
comment on table bulkhead.deletion_receipts is
    'Proof of tenant deletion: one row per deleted tenant, with one step row per table or external action.';

create table bulkhead.deletion_receipt_steps (
    receipt_id   uuid        not null,
    step         text        not null,
    rows_deleted bigint      not null,
    completed_at timestamptz not null,
    constraint deletion_receipt_steps_pkey primary key (receipt_id, step),
    constraint deletion_receipt_steps_receipt_fkey
        foreign key (receipt_id) references bulkhead.deletion_receipts (id)
);
comment on table bulkhead.deletion_receipt_steps is
    'What each deletion removed: one row per table (schema-qualified name) with its row count and time.';

-- Row level security: enabled and forced everywhere, so even a non-superuser table owner obeys it.
-- set_tenant remembers the tenants it found per backend (with bulkhead preloaded): any change
-- to the registry makes every backend check again.
create trigger tenants_changed
    after insert or update or delete or truncate on bulkhead.tenants
    for each statement execute function bulkhead._tenants_changed();
alter function bulkhead._tenants_changed() set search_path to pg_catalog, pg_temp;
revoke all on function bulkhead._tenants_changed() from public;

alter table bulkhead.tenants enable row level security;
alter table bulkhead.tenants force row level security;
alter table bulkhead.tenant_settings enable row level security;
alter table bulkhead.tenant_settings force row level security;
alter table bulkhead.deletion_receipts enable row level security;
alter table bulkhead.deletion_receipts force row level security;
alter table bulkhead.deletion_receipt_steps enable row level security;
alter table bulkhead.deletion_receipt_steps force row level security;

-- Applications and the worker see their own tenant's registry row; the control plane sees all.
create policy tenant_isolation on bulkhead.tenants
    for select to bulkhead_app, bulkhead_worker
    using (id = (select bulkhead.current_tenant()));
create policy control_plane on bulkhead.tenants
    for all to bulkhead_admin
    using (true) with check (true);

-- No "to" list: every role that is not a superuser or BYPASSRLS sees only the current tenant,
-- the control plane included (its functions switch context to the tenant they act on).
create policy tenant_isolation on bulkhead.tenant_settings
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));

create policy control_plane on bulkhead.deletion_receipts
    for all to bulkhead_admin
    using (true) with check (true);
create policy control_plane on bulkhead.deletion_receipt_steps
    for all to bulkhead_admin
    using (true) with check (true);

-- Privileges. Nothing is granted to PUBLIC.
grant usage on schema bulkhead to bulkhead_app, bulkhead_admin, bulkhead_worker, bulkhead_meter;
grant select on bulkhead.tenants to bulkhead_app, bulkhead_worker;
-- A tenant's id and Pinecone namespace never change: the control plane may rename or suspend.
grant select, insert, delete on bulkhead.tenants to bulkhead_admin;
grant update (name, status) on bulkhead.tenants to bulkhead_admin;
-- Settings are the control plane's (set_tenant_settings): applications and end users read them.
grant select, insert, update, delete on bulkhead.tenant_settings to bulkhead_admin;
grant select on bulkhead.tenant_settings to bulkhead_app, bulkhead_worker;
-- Receipts are append-only, even for the control plane.
grant select, insert on bulkhead.deletion_receipts, bulkhead.deletion_receipt_steps to bulkhead_admin;

-- User data in extension tables must survive pg_dump / pg_restore.
select pg_catalog.pg_extension_config_dump('bulkhead.tenants', '');
select pg_catalog.pg_extension_config_dump('bulkhead.tenant_settings', '');
select pg_catalog.pg_extension_config_dump('bulkhead.deletion_receipts', '');
select pg_catalog.pg_extension_config_dump('bulkhead.deletion_receipt_steps', '');
