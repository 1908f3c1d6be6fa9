-- Control plane: creating, configuring and deleting tenants. Executable by bulkhead_admin only.
--
-- These functions act on one tenant's rows by switching the tenant context to that tenant, so
-- row level security still confines them: a bug here cannot touch another tenant's rows.
-- The previous context is restored before returning.

-- Columns of schema bulkhead whose comment declares how they name a tenant (the markers are
-- listed in tenants.sql: tenant-ref, tenant-ref-cascade, tenant-credential-ref,
-- tenant-project-ref, kept). Deletion and the schema lint read this list.
create function bulkhead.tenant_references()
returns table (table_name regclass, column_name name, marker text, note text)
language sql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
    select c.oid::regclass, a.attname,
           pg_catalog.substring(d.description, '^bulkhead:([a-z-]+)'),
           pg_catalog.btrim(pg_catalog.substring(d.description, '^bulkhead:[a-z-]+(.*)$'))
    from pg_catalog.pg_class c
    join pg_catalog.pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
    join pg_catalog.pg_description d
      on d.classoid = 'pg_catalog.pg_class'::regclass and d.objoid = c.oid and d.objsubid = a.attnum
    where c.relnamespace = 'bulkhead'::regnamespace
      and c.relkind in ('r', 'p')
      and d.description like 'bulkhead:%'
    order by c.oid::regclass::text, a.attname
$$;
comment on function bulkhead.tenant_references() is
    'Columns that name a tenant outside the tenant_id rule, with their declared marker (see delete_tenant).';

-- Every table in schema bulkhead that holds tenant data, in an order that is safe to delete in:
-- tables that reference others come first. Deletion and the schema lint both read this list, so a
-- new table is covered the moment it has a tenant_id column. The exception is a tenant_id
-- column marked bulkhead:kept (receipts: they outlive the tenant and hold counts, not data).
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
          and coalesce(pg_catalog.col_description(c.oid, a.attnum), '') not like 'bulkhead:kept%'
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
    reference record;
    credential_ids uuid[];
    project_ids text[];
    touched text[] := '{}';
    index_drop text;
    index_name text;
    revocations int;
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
    -- The tenant's own vector index: its name is in the tenant's retrieval row, which goes; it is
    -- dropped at the end, so that DROP INDEX's exclusive lock on chunks is held only until the
    -- commit, not for the whole deletion.
    select s.index_name into index_name from bulkhead.retrieval_settings s where s.tenant_id = tenant;
    -- What other tables may name the tenant by: its credentials and provider projects (read
    -- before its credentials go).
    select pg_catalog.array_agg(c.id) into credential_ids
    from bulkhead.tenant_credentials c where c.tenant_id = tenant;
    -- Every project its dedicated credentials ever named, not only the current ones.
    select pg_catalog.array_agg(distinct p.provider_project_id) into project_ids
    from (select c.provider_project_id from bulkhead.tenant_credentials c
          where c.tenant_id = tenant and c.provider_project_id is not null
          union all
          select h.provider_project_id from bulkhead.tenant_provider_projects h where h.tenant_id = tenant) p;
    -- Its provisioned projects and workspaces are revoked at the providers by the daemon
    -- (provisioning.sql), each step added to this receipt when done.
    revocations := bulkhead._queue_provider_revocations(tenant, receipt);
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
        if deleted > 0 then
            touched := touched || target.table_name::text;
        end if;
    end loop;

    -- Tables that name the tenant without a tenant_id column, found by their declared markers
    -- (bulkhead.tenant_references()), not by column names; the schema lint requires a marker.
    for reference in select * from bulkhead.tenant_references() r where r.marker <> 'kept' loop
        deleted := 0;
        if reference.marker = 'tenant-ref' then
            execute pg_catalog.format('delete from %s where %I = $1', reference.table_name, reference.column_name)
                using tenant;
            get diagnostics deleted = row_count;
        elsif reference.marker = 'tenant-credential-ref' and credential_ids is not null then
            execute pg_catalog.format('delete from %s where %I = any($1)', reference.table_name, reference.column_name)
                using credential_ids;
            get diagnostics deleted = row_count;
        elsif reference.marker = 'tenant-project-ref' and project_ids is not null then
            execute pg_catalog.format('delete from %s where %I = any($1)', reference.table_name, reference.column_name)
                using project_ids;
            get diagnostics deleted = row_count;
        elsif reference.marker not in ('tenant-ref-cascade', 'tenant-credential-ref', 'tenant-project-ref') then
            raise exception 'unknown tenant reference marker % on %.%', reference.marker,
                    reference.table_name, reference.column_name
                using errcode = '55000', detail = 'Nothing was deleted.';
        end if;
        if reference.marker in ('tenant-ref', 'tenant-ref-cascade') then
            execute pg_catalog.format('select count(*) from %s where %I = $1', reference.table_name, reference.column_name)
                into remaining using tenant;
            if remaining <> 0 then
                raise exception 'tenant deletion left % rows in % (%)', remaining, reference.table_name, reference.column_name
                    using errcode = '55000',
                          detail = 'Rows naming the tenant remained after the delete, so nothing was deleted.';
            end if;
        end if;
        steps := steps || pg_catalog.jsonb_build_object(
            'step', reference.table_name::text || '.' || reference.column_name, 'rows', deleted,
            'at', pg_catalog.clock_timestamp());
        -- Rows that went by cascade left dead versions too.
        if deleted > 0 or (reference.marker = 'tenant-ref-cascade' and pg_catalog.cardinality(touched) > 0) then
            touched := touched || reference.table_name::text;
        end if;
    end loop;
    -- Usage reports name a deleted tenant's projects for days after: reconciliation records that
    -- usage against this receipt, never the project's id (bulkhead.deleted_tenant_projects).
    insert into bulkhead.deleted_tenant_projects (project_hash, receipt_id)
    select pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(p, 'UTF8')), 'hex'), receipt
    from pg_catalog.unnest(project_ids) p
    on conflict do nothing;

    -- The index last; a DROP that meets a long reader of chunks is deferred
    -- (bulkhead.drop_pending_indexes) rather than waited for.
    index_drop := case when index_name is null then 'none' else bulkhead._drop_deleted_tenant_index(index_name) end;
    steps := steps || pg_catalog.jsonb_build_object(
        'step', 'tenant vector index', 'rows', (index_drop = 'dropped')::int,
        'at', pg_catalog.clock_timestamp());
    if index_drop = 'deferred' then
        steps := steps || pg_catalog.jsonb_build_object(
            'step', 'tenant vector index drop deferred (bulkhead.drop_pending_indexes)', 'rows', 1,
            'at', pg_catalog.clock_timestamp());
    end if;
    -- Its Pinecone namespace is queued for deletion (the daemon marks that job done).
    perform bulkhead._queue_namespace_deletion(tenant, receipt);
    steps := steps || pg_catalog.jsonb_build_object(
        'step', 'pinecone namespace deletion queued', 'rows', 1, 'at', pg_catalog.clock_timestamp());
    delete from bulkhead.tenants t where t.id = tenant;
    get diagnostics deleted = row_count;
    steps := steps || pg_catalog.jsonb_build_object(
        'step', 'bulkhead.tenants', 'rows', deleted, 'at', pg_catalog.clock_timestamp());
    perform bulkhead._leave_tenant(previous);

    touched := array(select distinct t from pg_catalog.unnest(touched || 'bulkhead.tenants'::text) t order by t);
    insert into bulkhead.deletion_receipts (id, tenant_id, started_at, completed_at, remaining_physical_state)
    values (receipt, tenant, started, pg_catalog.clock_timestamp(), pg_catalog.jsonb_build_object(
        'dead_row_versions', pg_catalog.jsonb_build_object(
            'tables', pg_catalog.to_jsonb(touched),
            'until', 'VACUUM of each table (autovacuum, or `bulkhead vacuum-deleted`); bulkhead.record_vacuum(receipt, table) proves it on this receipt'),
        'planner_statistics', pg_catalog.jsonb_build_object(
            'tables', pg_catalog.to_jsonb(touched),
            'until', 'ANALYZE of each table (`bulkhead vacuum-deleted` runs VACUUM (ANALYZE))'),
        'vector_index', case index_drop
            when 'dropped' then 'dropped in this transaction; its files are removed at commit'
            when 'deferred' then 'its drop queued in bulkhead.pending_index_drops: its entries stay in its files until bulkhead.drop_pending_indexes() drops it'
            else 'none' end,
        'wal', 'the deleted rows stay in write-ahead log segments until they are recycled after a checkpoint, and in WAL archives until those expire',
        'backups', 'base backups and dumps taken before this deletion keep the rows until they expire',
        'pinecone', 'the namespace is deleted by the worker; the step ''pinecone namespace deleted'' on this receipt proves it',
        'providers', case when revocations > 0
            then 'the worker revokes the provisioned key, archives the project or workspace and deletes the stored key; the steps ''provider key revoked'', ''provider project archived'' and ''secret deleted'' on this receipt prove it (bulkhead.deletion_receipt_pending lists those not done)'
            else 'none provisioned' end));
    insert into bulkhead.deletion_receipt_steps (receipt_id, step, rows_deleted, completed_at)
    select receipt, s->>'step', (s->>'rows')::bigint, (s->>'at')::timestamptz
    from pg_catalog.jsonb_array_elements(steps) s;
    return receipt;
end
$$;
comment on function bulkhead.delete_tenant(uuid) is
    'Deletes a tenant and all its rows in every tenant table, in one transaction; returns the deletion receipt id. bulkhead_admin only.';

-- Proves on a deletion receipt that one of its tables was vacuumed and analyzed after the
-- deletion: PostgreSQL's own statistics (pg_stat_all_tables) show a VACUUM and an ANALYZE (manual
-- or autovacuum's) that started after the receipt completed, so the deleted row versions were
-- removable and the planner statistics no longer sample them. The step records the table's dead
-- row versions left at that time (0 unless an older snapshot was still open). VACUUM cannot run
-- inside a function: `bulkhead vacuum-deleted --receipt <id>` runs it, as the tables' owner, and
-- then calls this. bulkhead_admin.
create function bulkhead.record_vacuum(receipt uuid, table_name regclass)
returns bigint
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    done timestamptz;
    touched jsonb;
    stats record;
begin
    if receipt is null or table_name is null then
        raise exception 'receipt and table_name are required' using errcode = '22004';
    end if;
    select r.completed_at, r.remaining_physical_state->'dead_row_versions'->'tables' into done, touched
    from bulkhead.deletion_receipts r where r.id = receipt;
    if not found then
        raise exception 'deletion receipt % does not exist', receipt using errcode = '42704';
    end if;
    if touched is null or not touched ? table_name::text then
        raise exception '% held no rows of the deleted tenant', table_name
            using errcode = '22023', detail = 'The receipt lists the tables its deletion left dead row versions in.';
    end if;
    select greatest(s.last_vacuum, s.last_autovacuum) as vacuumed, greatest(s.last_analyze, s.last_autoanalyze) as analyzed,
           s.n_dead_tup
    into stats from pg_catalog.pg_stat_all_tables s where s.relid = table_name;
    if stats.vacuumed is null or stats.vacuumed < done or stats.analyzed is null or stats.analyzed < done then
        raise exception '% was not vacuumed and analyzed since the deletion', table_name
            using errcode = '55000',
                  detail = pg_catalog.format('The deletion completed at %s; last vacuum %s, last analyze %s.',
                                             done, coalesce(stats.vacuumed::text, 'never'), coalesce(stats.analyzed::text, 'never')),
                  hint = 'Run VACUUM (ANALYZE) on it as its owner, or `bulkhead vacuum-deleted --receipt <id>`.';
    end if;
    insert into bulkhead.deletion_receipt_steps (receipt_id, step, rows_deleted, completed_at)
    values (receipt, 'vacuumed and analyzed ' || table_name::text, stats.n_dead_tup, least(stats.vacuumed, stats.analyzed))
    on conflict on constraint deletion_receipt_steps_pkey do nothing;  -- receipts are append-only
    return stats.n_dead_tup;
end
$$;
comment on function bulkhead.record_vacuum(uuid, regclass) is
    'Records on a deletion receipt that a table was vacuumed and analyzed after the deletion (bulkhead_admin).';

revoke all on function bulkhead.tenant_scoped_tables() from public;
revoke all on function bulkhead._enter_tenant(uuid) from public;
revoke all on function bulkhead._leave_tenant(text) from public;
revoke all on function bulkhead.create_tenant(text, text) from public;
revoke all on function bulkhead.set_tenant_settings(uuid, text, text, text, text[]) from public;
revoke all on function bulkhead.delete_tenant(uuid) from public;
revoke all on function bulkhead.tenant_references() from public;
revoke all on function bulkhead.record_vacuum(uuid, regclass) from public;
grant execute on function bulkhead.tenant_scoped_tables() to bulkhead_admin;
grant execute on function bulkhead._enter_tenant(uuid) to bulkhead_admin;
grant execute on function bulkhead._leave_tenant(text) to bulkhead_admin;
grant execute on function bulkhead.create_tenant(text, text) to bulkhead_admin;
grant execute on function bulkhead.set_tenant_settings(uuid, text, text, text, text[]) to bulkhead_admin;
grant execute on function bulkhead.delete_tenant(uuid) to bulkhead_admin;
grant execute on function bulkhead.tenant_references(), bulkhead.record_vacuum(uuid, regclass) to bulkhead_admin;
