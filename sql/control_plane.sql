-- Control plane: creating, configuring and deleting tenants. Executable by bulkhead_admin only.
--
-- These functions act on one tenant's rows by switching the tenant context to that tenant, so
-- row level security still confines them: a bug here cannot touch another tenant's rows.
-- The previous context is restored before returning.

-- Every table in schema bulkhead that holds tenant data, in an order that is safe to delete in:
-- tables that reference others come first. Deletion and the schema lint both read this list, so a
-- new table is covered the moment it has a tenant_id column. Receipts are the one exception:
-- they outlive the tenant and hold counts, not tenant data.
create function bulkhead.tenant_scoped_tables()
returns table (table_name regclass, deletion_order int)
language sql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
    with recursive tenant_tables as (
        select c.oid
        from pg_catalog.pg_class c
        join pg_catalog.pg_attribute a on a.attrelid = c.oid
        where c.relnamespace = 'bulkhead'::regnamespace
          and c.relkind in ('r', 'p')
          and not c.relispartition
          and a.attname = 'tenant_id' and a.attnum > 0 and not a.attisdropped
          and c.oid <> 'bulkhead.deletion_receipts'::regclass
    ),
    references_between as (
        select distinct con.conrelid as referencing, con.confrelid as referenced
        from pg_catalog.pg_constraint con
        where con.contype = 'f'
          and con.conrelid <> con.confrelid
          and con.conrelid in (select oid from tenant_tables)
          and con.confrelid in (select oid from tenant_tables)
    ),
    -- depth = length of the longest reference chain starting at a table; the bound stops cycles.
    depth (oid, depth) as (
        select oid, 0 from tenant_tables
        union all
        select r.referencing, d.depth + 1
        from depth d
        join references_between r on r.referenced = d.oid
        where d.depth < 64
    )
    select oid::regclass, max(depth)::int
    from depth
    group by oid
    order by max(depth) desc, oid::regclass::text
$$;
comment on function bulkhead.tenant_scoped_tables() is
    'Every tenant-data table in schema bulkhead, referencing tables first (the order tenant deletion uses).';

-- Switches the context to a tenant for a control-plane function; returns the previous raw setting.
create function bulkhead._enter_tenant(tenant uuid)
returns text
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    previous text := pg_catalog.current_setting('bulkhead.tenant_id', true);
begin
    perform bulkhead._set_tenant_within_function(tenant);
    return coalesce(pg_catalog.btrim(previous), '');
end
$$;

-- Restores what _enter_tenant returned; a context naming a tenant that is gone becomes empty.
create function bulkhead._leave_tenant(previous text)
returns void
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
begin
    previous := pg_catalog.btrim(coalesce(previous, ''));
    if previous <> '' and exists (select from bulkhead.tenants where id::text = previous) then
        perform bulkhead._set_tenant_within_function(previous::uuid);
    else
        perform bulkhead._set_tenant_within_function(null);
    end if;
end
$$;

-- Creates a tenant with its settings row; returns the new tenant id.
create function bulkhead.create_tenant(slug text, name text)
returns uuid
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    new_id uuid := pg_catalog.gen_random_uuid();
    previous text;
begin
    if slug is null or slug !~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$' then
        raise exception 'invalid tenant slug: %', coalesce(pg_catalog.quote_literal(slug), 'NULL')
            using errcode = '22023',
                  detail = 'A slug is 1 to 63 characters of lowercase letters, digits and inner hyphens.',
                  hint = 'For example: acme-corp.';
    end if;
    if name is null or pg_catalog.char_length(pg_catalog.btrim(name)) not between 1 and 200 then
        raise exception 'invalid tenant name'
            using errcode = '22023',
                  detail = 'A tenant name is 1 to 200 characters and not only spaces.';
    end if;

    begin
        insert into bulkhead.tenants (id, slug, name, pinecone_namespace)
        values (new_id, create_tenant.slug, pg_catalog.btrim(create_tenant.name), 'tenant-' || new_id::text);
    exception when unique_violation then
        raise exception 'tenant slug % already exists', pg_catalog.quote_literal(slug)
            using errcode = '23505',
                  detail = 'Tenant slugs are unique across the platform.',
                  hint = 'Choose another slug, or delete the existing tenant first.';
    end;

    previous := bulkhead._enter_tenant(new_id);
    insert into bulkhead.tenant_settings (tenant_id, display_name)
    values (new_id, pg_catalog.btrim(create_tenant.name));
    perform bulkhead._leave_tenant(previous);
    return new_id;
end
$$;
comment on function bulkhead.create_tenant(text, text) is
    'Creates a tenant (and its settings row) and returns its id. bulkhead_admin only.';

-- Updates a tenant's prompt slot values. A NULL argument leaves that value unchanged.
create function bulkhead.set_tenant_settings(
    tenant_id uuid,
    display_name text default null,
    persona_tone text default null,
    custom_instructions text default null,
    banned_topics text[] default null
)
returns void
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    previous text;
begin
    if set_tenant_settings.tenant_id is null then
        raise exception 'tenant id must not be null'
            using errcode = '22004',
                  detail = 'bulkhead.set_tenant_settings needs the id of the tenant to configure.';
    end if;
    previous := bulkhead._enter_tenant(set_tenant_settings.tenant_id);
    update bulkhead.tenant_settings s
    set display_name        = coalesce(set_tenant_settings.display_name, s.display_name),
        persona_tone        = coalesce(set_tenant_settings.persona_tone, s.persona_tone),
        custom_instructions = coalesce(set_tenant_settings.custom_instructions, s.custom_instructions),
        banned_topics       = coalesce(set_tenant_settings.banned_topics, s.banned_topics),
        updated_at          = pg_catalog.now()
    where s.tenant_id = set_tenant_settings.tenant_id;
    if not found then
        insert into bulkhead.tenant_settings (tenant_id, display_name, persona_tone, custom_instructions, banned_topics)
        values (set_tenant_settings.tenant_id, set_tenant_settings.display_name, set_tenant_settings.persona_tone,
                set_tenant_settings.custom_instructions, coalesce(set_tenant_settings.banned_topics, '{}'));
    end if;
    perform bulkhead._leave_tenant(previous);
end
$$;
comment on function bulkhead.set_tenant_settings(uuid, text, text, text, text[]) is
    'Sets a tenant''s display name, persona tone, custom instructions and banned topics. bulkhead_admin only.';

-- Deletes a tenant and every row it owns in one transaction; returns the deletion receipt's id.
create function bulkhead.delete_tenant(id uuid)
returns uuid
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := delete_tenant.id;
    receipt uuid := pg_catalog.gen_random_uuid();
    started timestamptz := pg_catalog.clock_timestamp();
    previous text;
    target record;
    deleted bigint;
    state_rows bigint := 0;
    remaining bigint;
    steps jsonb := '[]';
begin
    if tenant is null then
        raise exception 'tenant id must not be null'
            using errcode = '22004',
                  detail = 'bulkhead.delete_tenant needs the id of the tenant to delete.';
    end if;
    -- Budget admission locks the tenant's budget_state row and then, through the foreign key
    -- of the reservation it inserts, shares the tenant row. Taking the locks in that same order
    -- (state first, waiting for admissions in flight) rules out a deadlock with them.
    if exists (select from bulkhead.tenants t where t.id = tenant) then
        previous := bulkhead._enter_tenant(tenant);
        delete from bulkhead.budget_state s where s.tenant_id = tenant;
        get diagnostics state_rows = row_count;
        perform bulkhead._forget_in_memory(tenant);
        perform bulkhead._leave_tenant(previous);
    end if;
    -- The row lock serialises concurrent deletions of one tenant and blocks new rows that
    -- reference it (their foreign key check waits for this transaction).
    perform from bulkhead.tenants t where t.id = tenant for update;
    if not found then
        raise exception 'tenant % does not exist', tenant
            using errcode = '42704',
                  detail = 'There is no tenant with this id; it may have been deleted already.',
                  hint = 'Deletion receipts for deleted tenants are in bulkhead.deletion_receipts.';
    end if;

    previous := bulkhead._enter_tenant(tenant);
    for target in select table_name from bulkhead.tenant_scoped_tables() order by deletion_order desc, table_name::text loop
        -- Identifiers come from the catalog, the value is a bound parameter; RLS confines the delete.
        execute pg_catalog.format('delete from %s where tenant_id = $1', target.table_name) using tenant;
        get diagnostics deleted = row_count;
        if target.table_name = 'bulkhead.budget_state'::regclass then
            deleted := deleted + state_rows;
        end if;
        execute pg_catalog.format('select count(*) from %s where tenant_id = $1', target.table_name)
            into remaining using tenant;
        if remaining <> 0 then
            raise exception 'tenant deletion left % rows in %', remaining, target.table_name
                using errcode = '55000',
                      detail = 'Rows of the tenant remained after the delete, so nothing was deleted.';
        end if;
        steps := steps || pg_catalog.jsonb_build_object(
            'step', target.table_name::text, 'rows', deleted, 'at', pg_catalog.clock_timestamp());
    end loop;

    -- The tenant's own vector index (if it had one) goes with its rows, and its Pinecone
    -- namespace is queued for deletion (the daemon marks that job done).
    steps := steps || pg_catalog.jsonb_build_object(
        'step', 'tenant vector index', 'rows', bulkhead._drop_tenant_index(tenant)::int,
        'at', pg_catalog.clock_timestamp());
    perform bulkhead._queue_namespace_deletion(tenant, receipt);
    steps := steps || pg_catalog.jsonb_build_object(
        'step', 'pinecone namespace deletion queued', 'rows', 1, 'at', pg_catalog.clock_timestamp());
    delete from bulkhead.tenants t where t.id = tenant;
    get diagnostics deleted = row_count;
    steps := steps || pg_catalog.jsonb_build_object(
        'step', 'bulkhead.tenants', 'rows', deleted, 'at', pg_catalog.clock_timestamp());
    perform bulkhead._leave_tenant(previous);

    insert into bulkhead.deletion_receipts (id, tenant_id, started_at, completed_at)
    values (receipt, tenant, started, pg_catalog.clock_timestamp());
    insert into bulkhead.deletion_receipt_steps (receipt_id, step, rows_deleted, completed_at)
    select receipt, s->>'step', (s->>'rows')::bigint, (s->>'at')::timestamptz
    from pg_catalog.jsonb_array_elements(steps) s;
    return receipt;
end
$$;
comment on function bulkhead.delete_tenant(uuid) is
    'Deletes a tenant and all its rows in every tenant table, in one transaction; returns the deletion receipt id. bulkhead_admin only.';

revoke all on function bulkhead.tenant_scoped_tables() from public;
revoke all on function bulkhead._enter_tenant(uuid) from public;
revoke all on function bulkhead._leave_tenant(text) from public;
revoke all on function bulkhead.create_tenant(text, text) from public;
revoke all on function bulkhead.set_tenant_settings(uuid, text, text, text, text[]) from public;
revoke all on function bulkhead.delete_tenant(uuid) from public;
grant execute on function bulkhead.tenant_scoped_tables() to bulkhead_admin;
grant execute on function bulkhead._enter_tenant(uuid) to bulkhead_admin;
grant execute on function bulkhead._leave_tenant(text) to bulkhead_admin;
grant execute on function bulkhead.create_tenant(text, text) to bulkhead_admin;
grant execute on function bulkhead.set_tenant_settings(uuid, text, text, text, text[]) to bulkhead_admin;
grant execute on function bulkhead.delete_tenant(uuid) to bulkhead_admin;
