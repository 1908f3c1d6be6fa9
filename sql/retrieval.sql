-- Tenant retrieval: documents and chunks with pgvector embeddings under row level security, and
-- bulkhead.tenant_search(), which picks an access path per tenant so that every tenant gets full
-- recall: an exact scan of the tenant's own rows while it is small, and an HNSW index holding
-- only its rows (a partial index on tenant_id) once it is large. A shared index filtered by
-- tenant is never used: pgvector applies the filter after the index scan, so a small tenant
-- would get fewer than k rows (pgvector issue #751).
--
-- Embeddings have one dimension per tenant (bulkhead.set_embedding_dims). The column is an
-- untyped vector; a tenant's index casts it to vector(D), which only that tenant's rows satisfy.
-- Every change to a chunk queues a Pinecone sync job addressed to the namespace on the tenant's
-- row, never to anything the request supplied (the daemon issue consumes the outbox).
--
-- chunks is owned by bulkhead_meter, so that the SECURITY DEFINER index functions (owned by it
-- too) may create and drop a tenant's index; FORCE ROW LEVEL SECURITY binds the owner as well.

create table bulkhead.retrieval_settings (
    tenant_id      uuid        not null,
    embedding_dims int         not null,
    -- hnsw.ef_search for this tenant's index scans (at least k is used).
    ef_search      int         not null default 400,
    -- The tenant's own HNSW index, once built; NULL: exact scans. Its name is random.
    index_name     text,
    -- What the tenant's partial index is defined on (chunks.index_key = this): random, so that
    -- index definitions, public in pg_indexes, do not name the tenant.
    index_key      bigint      not null default bulkhead._random_id(),
    indexed_at     timestamptz,
    updated_at     timestamptz not null default pg_catalog.clock_timestamp(),
    constraint retrieval_settings_pkey primary key (tenant_id),
    constraint retrieval_settings_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id),
    constraint retrieval_settings_dims_range check (embedding_dims between 1 and 16000),
    constraint retrieval_settings_ef_search_range check (ef_search between 10 and 1000)
);

create table bulkhead.documents (
    tenant_id   uuid        not null,
    id          uuid        not null default pg_catalog.gen_random_uuid(),
    external_id text        not null,
    title       text,
    metadata    jsonb       not null default '{}',
    created_at  timestamptz not null default pg_catalog.clock_timestamp(),
    updated_at  timestamptz not null default pg_catalog.clock_timestamp(),
    constraint documents_pkey primary key (tenant_id, id),
    constraint documents_external_id_key unique (tenant_id, external_id),
    constraint documents_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id),
    constraint documents_external_id_length check (pg_catalog.char_length(external_id) between 1 and 500),
    constraint documents_metadata_object check (pg_catalog.jsonb_typeof(metadata) = 'object')
);

create table bulkhead.chunks (
    tenant_id   uuid        not null,
    -- Random, not a sequence: a global counter would tell a tenant how much the others write.
    id          uuid        not null default pg_catalog.gen_random_uuid(),
    document_id uuid        not null,
    ordinal     int         not null,
    content     text        not null,
    embedding   vector      not null,
    tsv         tsvector    generated always as (pg_catalog.to_tsvector('simple'::regconfig, content)) stored,
    metadata    jsonb       not null default '{}',
    -- The tenant's retrieval_settings.index_key, set by the chunks_embedding_dims trigger: the
    -- tenant's own index covers the rows with it.
    index_key   bigint,
    created_at  timestamptz not null default pg_catalog.clock_timestamp(),
    constraint chunks_pkey primary key (tenant_id, id),
    constraint chunks_ordinal_key unique (tenant_id, document_id, ordinal),
    constraint chunks_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id),
    constraint chunks_document_fkey foreign key (tenant_id, document_id)
        references bulkhead.documents (tenant_id, id) on delete cascade,
    constraint chunks_content_length check (pg_catalog.octet_length(content) <= 65536),
    constraint chunks_metadata_object check (pg_catalog.jsonb_typeof(metadata) = 'object')
);
-- The exact path reads one tenant's rows through this index, and full text is ranked within
-- them. (A GIN index on tsv would go unused: under row level security `@@` is not leakproof, so
-- the planner applies it only after the tenant's rows are read.)
create index chunks_by_tenant on bulkhead.chunks (tenant_id);

-- Sync jobs for the daemon: one row per chunk change, addressed to the tenant's namespace.
create table bulkhead.pinecone_outbox (
    tenant_id    uuid        not null,
    id           bigint      generated always as identity,
    namespace    text        not null,
    chunk_id     uuid        not null,
    op           text        not null,
    enqueued_at  timestamptz not null default pg_catalog.clock_timestamp(),
    processed_at timestamptz,
    constraint pinecone_outbox_pkey primary key (tenant_id, id),
    constraint pinecone_outbox_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id),
    constraint pinecone_outbox_op_known check (op in ('upsert', 'delete'))
);
-- One pending job per chunk: a later change of the same chunk replaces it.
create unique index pinecone_outbox_pending on bulkhead.pinecone_outbox (tenant_id, chunk_id) where processed_at is null;

-- Deleted tenants' namespaces, for the daemon to delete at Pinecone. No tenant_id and no foreign
-- key: the job outlives its tenant (its receipt names it), and only a trigger-free definer
-- function writes it, from the tenant's row.
create table bulkhead.pinecone_namespace_deletions (
    id             bigint      generated always as identity,
    deleted_tenant uuid        not null,
    namespace      text        not null,
    receipt_id     uuid,
    enqueued_at    timestamptz not null default pg_catalog.clock_timestamp(),
    processed_at   timestamptz,
    constraint pinecone_namespace_deletions_pkey primary key (id)
);

comment on column bulkhead.pinecone_namespace_deletions.deleted_tenant is
    'bulkhead:kept The job that deletes the namespace outlives the tenant; it holds ids only.';
comment on column bulkhead.pinecone_namespace_deletions.namespace is
    'bulkhead:kept The namespace to delete at Pinecone (tenant-<id>), named on the receipt.';

-- Tenant indexes whose DROP met a lock (a long reader of chunks): dropped later by
-- bulkhead.drop_pending_indexes(). Their names are random and their keys belong to no tenant
-- any more, so they hold no tenant data once vacuumed; they only wait for their DROP.
create table bulkhead.pending_index_drops (
    index_name   text        not null,
    requested_at timestamptz not null default pg_catalog.clock_timestamp(),
    constraint pending_index_drops_pkey primary key (index_name)
);
alter table bulkhead.pending_index_drops enable row level security;
alter table bulkhead.pending_index_drops force row level security;
create policy meter_drops on bulkhead.pending_index_drops for all to bulkhead_meter using (true) with check (true);
create policy admin_reads on bulkhead.pending_index_drops for select to bulkhead_admin using (true);
grant select, insert, delete on bulkhead.pending_index_drops to bulkhead_meter;
grant select on bulkhead.pending_index_drops to bulkhead_admin;
select pg_catalog.pg_extension_config_dump('bulkhead.pending_index_drops', '');

alter table bulkhead.retrieval_settings enable row level security;
alter table bulkhead.retrieval_settings force row level security;
alter table bulkhead.documents enable row level security;
alter table bulkhead.documents force row level security;
alter table bulkhead.chunks enable row level security;
alter table bulkhead.chunks force row level security;
alter table bulkhead.pinecone_outbox enable row level security;
alter table bulkhead.pinecone_outbox force row level security;
alter table bulkhead.pinecone_namespace_deletions enable row level security;
alter table bulkhead.pinecone_namespace_deletions force row level security;
create policy daemon_reads on bulkhead.pinecone_namespace_deletions for select to bulkhead_worker, bulkhead_admin using (true);
create policy daemon_marks_done on bulkhead.pinecone_namespace_deletions for update to bulkhead_worker using (true) with check (true);
create policy control_plane_queues on bulkhead.pinecone_namespace_deletions for insert to bulkhead_meter with check (true);
create policy tenant_isolation on bulkhead.retrieval_settings
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));
create policy tenant_isolation on bulkhead.documents
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));
create policy tenant_isolation on bulkhead.chunks
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));
create policy tenant_isolation on bulkhead.pinecone_outbox
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));

alter table bulkhead.chunks owner to bulkhead_meter;
-- An index lives in its table's schema, and creating one needs CREATE there.
grant create on schema bulkhead to bulkhead_meter;
grant select on bulkhead.retrieval_settings to bulkhead_app, bulkhead_worker, bulkhead_admin, bulkhead_meter;
grant insert, update on bulkhead.retrieval_settings to bulkhead_admin, bulkhead_meter;
-- Reads only: writes go through ingest_document and delete_document (as bulkhead_meter), so no
-- application role can take a lock on these tables that blocks other tenants.
grant select on bulkhead.documents, bulkhead.chunks to bulkhead_app, bulkhead_worker, bulkhead_admin, bulkhead_meter;
grant insert, update, delete on bulkhead.documents to bulkhead_meter;
-- The daemon marks jobs done; it can never readdress one.
grant select, update (processed_at) on bulkhead.pinecone_outbox to bulkhead_worker;
grant select on bulkhead.pinecone_outbox to bulkhead_admin;
grant insert, update on bulkhead.pinecone_outbox to bulkhead_meter;
grant select on bulkhead.pinecone_outbox to bulkhead_meter;
grant select, update (processed_at) on bulkhead.pinecone_namespace_deletions to bulkhead_worker;
grant select on bulkhead.pinecone_namespace_deletions to bulkhead_admin;
grant insert on bulkhead.pinecone_namespace_deletions to bulkhead_meter;
-- Tenant deletion only (delete_tenant runs as bulkhead_admin).
grant delete on bulkhead.retrieval_settings, bulkhead.documents, bulkhead.chunks, bulkhead.pinecone_outbox
    to bulkhead_admin;

select pg_catalog.pg_extension_config_dump('bulkhead.retrieval_settings', '');
select pg_catalog.pg_extension_config_dump('bulkhead.documents', '');
select pg_catalog.pg_extension_config_dump('bulkhead.chunks', '');
select pg_catalog.pg_extension_config_dump('bulkhead.pinecone_outbox', '');
select pg_catalog.pg_extension_config_dump('bulkhead.pinecone_namespace_deletions', '');
-- Identity counters continue after a restore: their sequences are dumped too.
select pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('bulkhead.pinecone_outbox', 'id')::regclass, '');
select pg_catalog.pg_extension_config_dump(
    pg_catalog.pg_get_serial_sequence('bulkhead.pinecone_namespace_deletions', 'id')::regclass, '');

-- A chunk's embedding must have its tenant's dimension (the tenant's index casts to it).
create function bulkhead._check_chunk_embedding()
returns trigger
language plpgsql
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    dims int;
    key bigint;
begin
    if bulkhead._restoring() then
        return new;  -- as dumped, with the index key it had
    end if;
    select s.embedding_dims, s.index_key into dims, key from bulkhead.retrieval_settings s where s.tenant_id = new.tenant_id;
    new.index_key := key;
    -- A row of another tenant is row level security's to refuse, with its own error.
    if new.tenant_id is distinct from bulkhead.current_tenant() then
        return new;
    end if;
    if dims is null then
        raise exception 'tenant % has no embedding dimension', new.tenant_id
            using errcode = '55000',
                  hint = 'bulkhead_admin sets it with bulkhead.set_embedding_dims(tenant_id, dims).';
    end if;
    if @extschema:vector@.vector_norm(new.embedding) = 0 then
        raise exception 'embedding has zero length'
            using errcode = '22023', detail = 'Cosine distance to a zero vector is undefined.';
    end if;
    if @extschema:vector@.vector_dims(new.embedding) <> dims then
        raise exception 'embedding has % dimensions, tenant uses %', @extschema:vector@.vector_dims(new.embedding), dims
            using errcode = '22023',
                  detail = 'Every embedding of a tenant has the dimension set with bulkhead.set_embedding_dims.';
    end if;
    return new;
end
$$;
create trigger chunks_embedding_dims before insert or update of embedding on bulkhead.chunks
    for each row execute function bulkhead._check_chunk_embedding();

-- Queues a sync job for every chunk change. SECURITY DEFINER (as bulkhead_meter): the outbox is
-- not writable by applications, and the namespace comes from the tenant's row. A pending job of
-- the same chunk is replaced, so rewriting a chunk many times queues one job.
create function bulkhead._queue_pinecone_sync()
returns trigger
language plpgsql
security definer
set search_path to pg_catalog, pg_temp
as $$
begin
    if bulkhead._restoring() then
        return null;  -- the outbox is restored with its jobs, done and pending
    end if;
    if tg_op = 'DELETE' or (tg_op = 'UPDATE' and (old.id, old.tenant_id) is distinct from (new.id, new.tenant_id)) then
        insert into bulkhead.pinecone_outbox as o (tenant_id, namespace, chunk_id, op)
        select old.tenant_id, t.pinecone_namespace, old.id, 'delete'
        from bulkhead.tenants t where t.id = old.tenant_id
        on conflict (tenant_id, chunk_id) where processed_at is null
        do update set op = 'delete', namespace = excluded.namespace, enqueued_at = excluded.enqueued_at;
    end if;
    if tg_op in ('INSERT', 'UPDATE') then
        insert into bulkhead.pinecone_outbox as o (tenant_id, namespace, chunk_id, op)
        select new.tenant_id, t.pinecone_namespace, new.id, 'upsert'
        from bulkhead.tenants t where t.id = new.tenant_id
        on conflict (tenant_id, chunk_id) where processed_at is null
        do update set op = 'upsert', namespace = excluded.namespace, enqueued_at = excluded.enqueued_at;
    end if;
    -- Wakes a worker syncing Pinecone at commit (one notification per transaction).
    perform bulkhead._notify('bulkhead_pinecone');
    return null;
end
$$;
create trigger chunks_pinecone_sync after insert or delete on bulkhead.chunks
    for each row execute function bulkhead._queue_pinecone_sync();
-- An UPDATE that changes nothing queues nothing.
create trigger chunks_pinecone_sync_update after update on bulkhead.chunks
    for each row when (old.* is distinct from new.*) execute function bulkhead._queue_pinecone_sync();

-- Queues the deletion of a tenant's namespace (delete_tenant, before the tenant row goes).
create function bulkhead._queue_namespace_deletion(tenant uuid, receipt uuid)
returns text
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    namespace text;
begin
    if tenant is null or tenant is distinct from bulkhead.current_tenant() then
        raise exception 'a namespace deletion is queued in its tenant''s context' using errcode = '42501';
    end if;
    select t.pinecone_namespace into namespace from bulkhead.tenants t where t.id = tenant;
    insert into bulkhead.pinecone_namespace_deletions (deleted_tenant, namespace, receipt_id)
    values (tenant, namespace, receipt);
    perform bulkhead._notify('bulkhead_pinecone');
    return namespace;
end
$$;

-- Sets a tenant's embedding dimension (bulkhead_admin); only while it has no chunks.
create function bulkhead.set_embedding_dims(tenant_id uuid, dims int, ef_search int default 400)
returns void
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    previous text;
begin
    if set_embedding_dims.tenant_id is null or dims is null or ef_search is null then
        raise exception 'tenant_id, dims and ef_search are required' using errcode = '22004';
    end if;
    if dims not between 1 and 16000 or ef_search not between 10 and 1000 then
        raise exception 'dims must be 1 to 16000 and ef_search 10 to 1000' using errcode = '22023';
    end if;
    previous := bulkhead._enter_tenant(set_embedding_dims.tenant_id);
    if exists (select from bulkhead.retrieval_settings s
               where s.tenant_id = set_embedding_dims.tenant_id and s.embedding_dims <> dims)
       and exists (select from bulkhead.chunks c where c.tenant_id = set_embedding_dims.tenant_id) then
        raise exception 'tenant has chunks of another dimension'
            using errcode = '55000',
                  detail = 'Changing the dimension would leave its embeddings unsearchable; delete its documents first.';
    end if;
    -- An index of the old dimension would refuse the new embeddings: it goes (there are no
    -- chunks, checked above).
    if exists (select from bulkhead.retrieval_settings s
               where s.tenant_id = set_embedding_dims.tenant_id and s.embedding_dims <> dims
                 and s.index_name is not null) then
        perform bulkhead._drop_tenant_index(set_embedding_dims.tenant_id);
    end if;
    insert into bulkhead.retrieval_settings as s (tenant_id, embedding_dims, ef_search)
    values (set_embedding_dims.tenant_id, dims, set_embedding_dims.ef_search)
    on conflict on constraint retrieval_settings_pkey
    do update set embedding_dims = excluded.embedding_dims, ef_search = excluded.ef_search,
                  updated_at = pg_catalog.clock_timestamp();
    perform bulkhead._leave_tenant(previous);
end
$$;
comment on function bulkhead.set_embedding_dims(uuid, int, int) is
    'Sets a tenant''s embedding dimension (and HNSW ef_search). bulkhead_admin only.';

-- A new name for a tenant's own index: random, never derived from the tenant. Index names and
-- their scan counts are public (pg_indexes, pg_stat_user_indexes): a name derived from the
-- tenant would tell anyone which tenants are large and how often each one searches. The name
-- is kept in the tenant's retrieval_settings row, under row level security.
create function bulkhead._new_tenant_index_name()
returns text
language sql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$ select 'chunks_hnsw_' || pg_catalog.substr(pg_catalog.md5(pg_catalog.gen_random_uuid()::text), 1, 16) $$;

-- Takes the tenant's retrieval row lock without waiting: the mutex of its index build and of
-- its Pinecone sync. A row lock, not an advisory lock, because only roles that may UPDATE
-- retrieval_settings (bulkhead_meter, bulkhead_admin) can take it: an advisory key is open to
-- every role that can connect, which could hold a tenant's lock forever. In the tenant's own
-- context; false when the lock is held elsewhere or the tenant has no retrieval row.
create function bulkhead._lock_tenant_retrieval(tenant uuid)
returns boolean
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
begin
    if tenant is null or tenant is distinct from bulkhead.current_tenant() then
        raise exception 'a tenant''s retrieval lock is taken in its own context' using errcode = '42501';
    end if;
    perform from bulkhead.retrieval_settings s where s.tenant_id = tenant for no key update skip locked;
    return found;
end
$$;

-- HNSW indexes pgvector's vector type up to 2000 dimensions; wider tenants stay on exact scans.
create function bulkhead._hnsw_max_dims()
returns int
language sql immutable
security invoker
set search_path to pg_catalog, pg_temp
as $$ select 2000 $$;

-- Builds the tenant's own HNSW index (a partial index: its rows only) and switches its searches
-- to it. SECURITY DEFINER as bulkhead_meter, the owner of chunks. CREATE INDEX takes a SHARE lock
-- on chunks until the calling transaction ends: other tenants' writes wait meanwhile (the
-- daemon issue builds CONCURRENTLY instead). Called by build_tenant_index (bulkhead_admin) and,
-- through _build_tenant_index_if_due, by ingest_document.
create function bulkhead._build_tenant_index(tenant uuid)
returns text
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    dims int;
    name text;
    key bigint;
begin
    if tenant is null or tenant is distinct from bulkhead.current_tenant() then
        raise exception 'a tenant''s index is built in its own context' using errcode = '42501';
    end if;
    -- Under the tenant's retrieval row lock: two builds never pick two names.
    select s.embedding_dims, coalesce(s.index_name, bulkhead._new_tenant_index_name()), s.index_key
    into dims, name, key
    from bulkhead.retrieval_settings s where s.tenant_id = tenant for no key update;
    if dims is null then
        raise exception 'tenant % has no embedding dimension', tenant using errcode = '55000';
    end if;
    if dims > bulkhead._hnsw_max_dims() then
        raise exception 'an HNSW index holds at most % dimensions; this tenant uses %', bulkhead._hnsw_max_dims(), dims
            using errcode = '0A000', detail = 'The tenant stays on exact scans, which keep full recall.';
    end if;
    perform bulkhead._create_tenant_index(name, dims, key);
    update bulkhead.retrieval_settings s
    set index_name = name, indexed_at = pg_catalog.clock_timestamp(), updated_at = pg_catalog.clock_timestamp()
    where s.tenant_id = tenant;
    return name;
end
$$;

-- Creates a tenant's index on chunks unless it exists: the rows whose index_key is `key`, cast
-- to `dims`. The name is random, the dimension an int and the key a bigint; the key is a literal
-- because a partial index predicate cannot take a parameter. Not the tenant id: index
-- definitions are public (pg_indexes).
create function bulkhead._create_tenant_index(name text, dims int, key bigint)
returns void
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
begin
    if name is null or name !~ '^chunks_hnsw_[0-9a-f]{16}$' or key is null
       or dims is null or dims not between 1 and bulkhead._hnsw_max_dims() then
        raise exception 'not a tenant index: %, % dimensions, key %', pg_catalog.quote_literal(name), dims, key
            using errcode = '22023', detail = 'Tenant indexes are named by _new_tenant_index_name().';
    end if;
    if pg_catalog.to_regclass('bulkhead.' || pg_catalog.quote_ident(name)) is null then
        execute pg_catalog.format(
            'create index %I on bulkhead.chunks using hnsw ((embedding::@extschema:vector@.vector(%s)) @extschema:vector@.vector_cosine_ops)'
            ' with (m = 16, ef_construction = 64) where index_key = %s::bigint',
            name, dims, key);
    end if;
end
$$;

-- A restore brings a tenant's retrieval row back naming its own index, which no dump holds (the
-- indexes of an extension's tables are the extension's to make): made again here, as it was.
-- A row naming no index Bulkhead could have made (a tampered dump: another name, a name taken
-- by something else, a dimension HNSW cannot hold) comes back without one: exact scans, and a
-- new index once the tenant is due one.
create function bulkhead._restore_tenant_index()
returns trigger
language plpgsql
security invoker
set search_path to pg_catalog, pg_temp
as $$
begin
    if new.index_name is null or not bulkhead._restoring() then
        return new;
    end if;
    if new.index_name !~ '^chunks_hnsw_[0-9a-f]{16}$' or new.embedding_dims > bulkhead._hnsw_max_dims()
       or pg_catalog.to_regclass('bulkhead.' || pg_catalog.quote_ident(new.index_name)) is not null then
        new.index_name := null;
        new.indexed_at := null;
        return new;
    end if;
    perform bulkhead._create_tenant_index(new.index_name, new.embedding_dims, new.index_key);
    return new;
end
$$;
create trigger retrieval_settings_restore_index before insert on bulkhead.retrieval_settings
    for each row execute function bulkhead._restore_tenant_index();

-- Whether a tenant is due its own index: it has passed bulkhead.retrieval_index_threshold
-- chunks, has none yet, and its dimension fits HNSW. In the tenant's context.
create function bulkhead._tenant_index_due(tenant uuid)
returns boolean
language sql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
    select exists (
        select from bulkhead.retrieval_settings s
        where s.tenant_id = tenant and s.index_name is null and s.embedding_dims <= bulkhead._hnsw_max_dims()
          and (select count(*) from bulkhead.chunks c where c.tenant_id = tenant)
              >= pg_catalog.current_setting('bulkhead.retrieval_index_threshold')::bigint)
$$;

-- ingest_document's automatic build, queued: an index_build job for the worker, once per index
-- key (a dropped index retires its key, so the tenant can be due again). The build itself holds a
-- SHARE lock on chunks (other tenants' writes wait) for as long as its transaction lasts, so it
-- never runs in an application's transaction, which the application could keep open: the worker
-- builds in a short transaction of its own (bulkhead.build_index_for_job).
create function bulkhead._queue_index_build_if_due(tenant uuid)
returns boolean
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
begin
    if not bulkhead._tenant_index_due(tenant) then
        return false;
    end if;
    -- One pending build per tenant (not an idempotency key, which a dead job would hold forever,
    -- or the tenant could take first with a job of its own).
    if exists (select from bulkhead.jobs j join bulkhead.job_schedule s on s.job_id = j.id
               where j.tenant_id = tenant and j.kind = 'index_build' and s.state in ('queued', 'running')) then
        return false;
    end if;
    perform bulkhead._enqueue('index_build', '{}', null, null, 5);
    return true;
end
$$;

-- The worker's side of an index_build job: the lease is checked and the job's tenant entered
-- (_held_job), then the tenant's index is built if it is still due, waiting at most 200 ms for
-- the SHARE lock on chunks: while it waits, every tenant's writes queue behind it, and a tenant
-- could hold a write transaction open on purpose. lock_not_available makes the worker try again
-- later without using up an attempt. Returns the index
-- name, or NULL when there was nothing to build. SECURITY DEFINER as bulkhead_meter, the owner of
-- chunks; in the job's own short transaction.
create function bulkhead.build_index_for_job(job bigint, worker text)
returns text
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    s bulkhead.job_schedule := bulkhead._held_job(job, worker);
    name text;
begin
    if (select j.kind from bulkhead.jobs j where j.tenant_id = s.job_tenant and j.id = job) <> 'index_build' then
        raise exception 'job % is not an index_build job', job using errcode = '22023';
    end if;
    if not bulkhead._tenant_index_due(s.job_tenant) then
        return null;
    end if;
    perform pg_catalog.set_config('lock_timeout', '200ms', true);
    name := bulkhead._build_tenant_index(s.job_tenant);
    return name;
end
$$;

-- Drops one tenant index on chunks now if its lock comes within 100 ms (and without a deadlock), else queues it in
-- pending_index_drops: DROP INDEX needs an ACCESS EXCLUSIVE lock on chunks, and waiting behind
-- one long reader (any role that may SELECT chunks) would queue every tenant's search behind it.
-- Runs as bulkhead_meter (its callers' owner). 'dropped' or 'deferred'.
create function bulkhead._drop_index_now_or_later(name text)
returns text
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    saved_timeout text := pg_catalog.current_setting('lock_timeout');
begin
    -- Only a tenant's own index: a partial HNSW index on chunks keyed by index_key, under the
    -- name _new_tenant_index_name gives (never chunks' shared indexes, whatever a name says).
    if name !~ '^chunks_hnsw_[0-9a-f]{16}$' or not exists (
        select from pg_catalog.pg_index i
        where i.indexrelid = pg_catalog.to_regclass('bulkhead.' || pg_catalog.quote_ident(name))
          and i.indrelid = 'bulkhead.chunks'::regclass
          and pg_catalog.pg_get_expr(i.indpred, i.indrelid) ~ '^\(index_key = ''[0-9]+''::bigint\)$') then
        return 'none';
    end if;
    perform pg_catalog.set_config('lock_timeout', '100ms', true);
    begin
        execute pg_catalog.format('drop index if exists bulkhead.%I', name);
        delete from bulkhead.pending_index_drops p where p.index_name = name;
        perform pg_catalog.set_config('lock_timeout', saved_timeout, true);
        return 'dropped';
    -- Two transactions that both write chunks and then drop an index each (two tenants deleted
    -- at once) wait for each other's row-exclusive lock: PostgreSQL reports that deadlock at
    -- once, before any lock_timeout, so it defers the drop just the same.
    exception when lock_not_available or deadlock_detected then
        perform pg_catalog.set_config('lock_timeout', saved_timeout, true);
        insert into bulkhead.pending_index_drops (index_name) values (name) on conflict do nothing;
        return 'deferred';
    end;
end
$$;

-- Drops the tenant indexes whose DROP was deferred, each if its lock comes within 100 ms; returns
-- how many were dropped. The worker calls it; so does `bulkhead vacuum-deleted`. SECURITY
-- DEFINER as bulkhead_meter, the indexes' owner.
create function bulkhead.drop_pending_indexes()
returns int
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    pending record;
    dropped int := 0;
begin
    for pending in select p.index_name from bulkhead.pending_index_drops p order by p.requested_at loop
        if bulkhead._drop_index_now_or_later(pending.index_name) = 'dropped' then
            dropped := dropped + 1;
        end if;
    end loop;
    return dropped;
end
$$;

-- Drops the own index of a tenant being deleted (delete_tenant reads its name before the
-- tenant's retrieval row goes, and calls this last, so that DROP INDEX's ACCESS EXCLUSIVE lock on
-- chunks is held only until the commit that follows): 'dropped', 'deferred' or 'none' (see
-- _drop_index_now_or_later, which drops tenant indexes only). The index's key belongs to no
-- tenant any more, so a deferred index receives no new rows. SECURITY DEFINER as
-- bulkhead_meter, the indexes' owner.
create function bulkhead._drop_deleted_tenant_index(name text)
returns text
language sql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$ select bulkhead._drop_index_now_or_later(name) $$;

-- Drops a tenant's own index once its chunks are gone (a dimension change), in its context: its
-- searches go back to exact scans, and the tenant gets a new index key, so that an index whose
-- drop was deferred receives none of its new rows (no row has the new key yet: there are no
-- chunks). SECURITY DEFINER as bulkhead_meter. 'dropped', 'deferred' (see
-- _drop_index_now_or_later) or 'none'.
create function bulkhead._drop_tenant_index(tenant uuid)
returns text
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    name text;
begin
    if tenant is null or tenant is distinct from bulkhead.current_tenant() then
        raise exception 'a tenant''s index is dropped in its own context' using errcode = '42501';
    end if;
    -- With chunks left, a new key would leave them out of the next index.
    if exists (select from bulkhead.chunks c where c.tenant_id = tenant) then
        raise exception 'a tenant''s index is dropped only once its chunks are gone' using errcode = '55000';
    end if;
    select s.index_name into name from bulkhead.retrieval_settings s where s.tenant_id = tenant for update;
    update bulkhead.retrieval_settings s
    set index_name = null, indexed_at = null, index_key = bulkhead._random_id()
    where s.tenant_id = tenant;
    if name is null then
        return 'none';
    end if;
    return bulkhead._drop_index_now_or_later(name);
end
$$;

-- Builds a tenant's own index now (bulkhead_admin). ingest_document also builds it when the
-- tenant passes bulkhead.retrieval_index_threshold chunks.
create function bulkhead.build_tenant_index(tenant_id uuid)
returns text
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    previous text := bulkhead._enter_tenant(build_tenant_index.tenant_id);
    name text;
begin
    name := bulkhead._build_tenant_index(build_tenant_index.tenant_id);
    perform bulkhead._leave_tenant(previous);
    return name;
end
$$;
comment on function bulkhead.build_tenant_index(uuid) is
    'Builds the tenant''s own HNSW index (its rows only) and moves its searches to it. bulkhead_admin only.';

-- Stores a document and its chunks for the current tenant, replacing an earlier version with
-- the same external_id. chunks: [{"content": text, "embedding": [numbers], "metadata": {...}}].
create function bulkhead.ingest_document(
    external_id text, chunks jsonb, title text default null, metadata jsonb default '{}'
)
returns uuid
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := bulkhead.current_tenant();
    doc uuid;
begin
    if tenant is null then
        raise exception 'no tenant context'
            using errcode = '42501', hint = 'Call bulkhead.set_tenant(...) first.';
    end if;
    if external_id is null or chunks is null or metadata is null then
        raise exception 'external_id, chunks and metadata are required' using errcode = '22004';
    end if;
    if pg_catalog.jsonb_typeof(chunks) <> 'array'
       or exists (select from pg_catalog.jsonb_array_elements(chunks) c
                  where pg_catalog.jsonb_typeof(c) <> 'object'
                     or pg_catalog.jsonb_typeof(c->'content') is distinct from 'string'
                     or pg_catalog.jsonb_typeof(c->'embedding') is distinct from 'array'
                     or pg_catalog.jsonb_typeof(coalesce(c->'metadata', '{}')) <> 'object') then
        raise exception 'chunks must be an array of {"content": text, "embedding": [numbers], "metadata": {...}}'
            using errcode = '22023';
    end if;

    insert into bulkhead.documents as d (tenant_id, external_id, title, metadata)
    values (tenant, ingest_document.external_id, ingest_document.title, ingest_document.metadata)
    on conflict on constraint documents_external_id_key
    do update set title = excluded.title, metadata = excluded.metadata, updated_at = pg_catalog.clock_timestamp()
    returning d.id into doc;
    delete from bulkhead.chunks c where c.tenant_id = tenant and c.document_id = doc;
    insert into bulkhead.chunks (tenant_id, document_id, ordinal, content, embedding, metadata)
    select tenant, doc, e.ordinality::int, e.value->>'content', (e.value->>'embedding')::@extschema:vector@.vector,
           coalesce(e.value->'metadata', '{}')
    from pg_catalog.jsonb_array_elements(chunks) with ordinality e;

    perform bulkhead._queue_index_build_if_due(tenant);
    return doc;
end
$$;

-- Deletes one of the current tenant's documents and its chunks (their deletions queue for
-- Pinecone). SECURITY DEFINER (as bulkhead_meter), like ingest_document: applications hold no
-- write privilege on documents or chunks, and so cannot lock those tables against other tenants
-- (LOCK TABLE ... IN ACCESS EXCLUSIVE MODE needs one). Row level security still applies.
create function bulkhead.delete_document(external_id text)
returns boolean
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := bulkhead.current_tenant();
begin
    if tenant is null then
        raise exception 'no tenant context'
            using errcode = '42501', hint = 'Call bulkhead.set_tenant(...) first.';
    end if;
    if external_id is null then
        raise exception 'external_id is required' using errcode = '22004';
    end if;
    delete from bulkhead.documents d where d.tenant_id = tenant and d.external_id = delete_document.external_id;
    return found;
end
$$;
comment on function bulkhead.delete_document(text) is
    'Deletes one of the current tenant''s documents and its chunks; false if it had none by that external_id.';
comment on function bulkhead.ingest_document(text, jsonb, text, jsonb) is
    'Stores a document and its chunks (with app-supplied embeddings) for the current tenant; replaces the same external_id.';

-- How tenant_search will read the current tenant's rows: 'exact' or 'hnsw:<index>'.
create function bulkhead.tenant_search_path()
returns table (path text, chunks bigint, embedding_dims int, ef_search int)
language sql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
    select case when s.index_name is null then 'exact' else 'hnsw:' || s.index_name end,
           (select count(*) from bulkhead.chunks c where c.tenant_id = bulkhead.current_tenant()),
           s.embedding_dims, s.ef_search
    from bulkhead.retrieval_settings s
    where s.tenant_id = bulkhead.current_tenant()
$$;
comment on function bulkhead.tenant_search_path() is
    'The access path tenant_search uses for the current tenant (exact scan or its own HNSW index).';

-- The query tenant_search runs through a tenant's own index: the cast to vector(D) matches the
-- index expression, and EXECUTE binds $1 (the tenant) as a constant so the partial index applies.
create function bulkhead._indexed_search_sql(dims int)
returns text
language sql immutable
security invoker
set search_path to pg_catalog, pg_temp
as $$
    select pg_catalog.format(
        'with nearest as materialized ('
        '  select c.id, c.document_id, c.content,'
        '         (c.embedding::@extschema:vector@.vector(%1$s) operator(@extschema:vector@.<=>) $2::@extschema:vector@.vector(%1$s))::float8 as distance, c.metadata'
        '  from bulkhead.chunks c'
        '  where c.tenant_id = $1 and c.index_key = $5 and ($3::jsonb is null or c.metadata @> $3)'
        '  order by c.embedding::@extschema:vector@.vector(%1$s) operator(@extschema:vector@.<=>) $2::@extschema:vector@.vector(%1$s)'
        '  limit $4)'
        ' select * from nearest order by distance, id',
        dims::int)
$$;

-- The k chunks of the current tenant nearest to query (cosine distance), optionally only those
-- whose metadata contains filter.
create function bulkhead.tenant_search(query vector, k int default 10, filter jsonb default null)
returns table (chunk_id uuid, document_id uuid, content text, distance float8, metadata jsonb)
language plpgsql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := bulkhead.current_tenant();
    cfg bulkhead.retrieval_settings;
    saved_ef text;
    saved_iterative text;
    saved_max_scan text;
begin
    if tenant is null then
        raise exception 'no tenant context'
            using errcode = '42501', hint = 'Call bulkhead.set_tenant(...) first.';
    end if;
    if query is null or k is null then
        raise exception 'query and k are required' using errcode = '22004';
    end if;
    if k not between 1 and 1000 then
        raise exception 'k must be between 1 and 1000' using errcode = '22023';
    end if;
    if filter is not null and pg_catalog.jsonb_typeof(filter) <> 'object' then
        raise exception 'filter must be a JSON object (matched with @> against chunk metadata)'
            using errcode = '22023';
    end if;
    select s.* into cfg from bulkhead.retrieval_settings s where s.tenant_id = tenant;
    if not found then
        return;  -- no dimension set: the tenant has no chunks
    end if;
    if @extschema:vector@.vector_dims(query) <> cfg.embedding_dims then
        raise exception 'query has % dimensions, tenant uses %', @extschema:vector@.vector_dims(query), cfg.embedding_dims
            using errcode = '22023';
    end if;
    if @extschema:vector@.vector_norm(query) = 0 then
        raise exception 'query vector has zero length' using errcode = '22023',
            detail = 'Cosine distance to a zero vector is undefined.';
    end if;

    if cfg.index_name is null then
        -- Exact: every row of the tenant, through chunks_by_tenant; the filter narrows them.
        return query
            select c.id, c.document_id, c.content, (c.embedding operator(@extschema:vector@.<=>) query)::float8, c.metadata
            from bulkhead.chunks c
            where c.tenant_id = tenant and (filter is null or c.metadata @> filter)
            order by c.embedding operator(@extschema:vector@.<=>) query, c.id
            limit k;
        return;
    end if;

    -- The tenant's own index, planned for this tenant's id (EXECUTE binds it as a constant, so
    -- the partial index applies). Iterative scans keep going until k rows pass the filter.
    -- A selective filter may need the whole index scanned: max_scan_tuples would stop it early.
    saved_ef := pg_catalog.current_setting('hnsw.ef_search');
    saved_iterative := pg_catalog.current_setting('hnsw.iterative_scan');
    saved_max_scan := pg_catalog.current_setting('hnsw.max_scan_tuples');
    perform pg_catalog.set_config('hnsw.ef_search', greatest(cfg.ef_search, k)::text, true);
    perform pg_catalog.set_config('hnsw.iterative_scan', 'relaxed_order', true);
    perform pg_catalog.set_config('hnsw.max_scan_tuples', '2147483647', true);
    return query execute bulkhead._indexed_search_sql(cfg.embedding_dims)
        using tenant, query, filter, k, cfg.index_key;
    perform pg_catalog.set_config('hnsw.ef_search', saved_ef, true);
    perform pg_catalog.set_config('hnsw.iterative_scan', saved_iterative, true);
    perform pg_catalog.set_config('hnsw.max_scan_tuples', saved_max_scan, true);
end
$$;
comment on function bulkhead.tenant_search(vector, int, jsonb) is
    'The current tenant''s k nearest chunks (cosine), exact for small tenants and through the tenant''s own HNSW index for large ones.';

-- The plan tenant_search uses for the current tenant and this query (EXPLAIN, same settings).
create function bulkhead.tenant_search_explain(query vector, k int default 10, filter jsonb default null)
returns setof text
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := bulkhead.current_tenant();
    cfg bulkhead.retrieval_settings;
begin
    select s.* into cfg from bulkhead.retrieval_settings s where s.tenant_id = tenant;
    if not found then
        return;
    end if;
    if cfg.index_name is null then
        return query explain (costs off)
            select c.id from bulkhead.chunks c
            where c.tenant_id = tenant and (filter is null or c.metadata @> filter)
            order by c.embedding operator(@extschema:vector@.<=>) query, c.id
            limit k;
        return;
    end if;
    perform pg_catalog.set_config('hnsw.ef_search', greatest(cfg.ef_search, k)::text, true);
    perform pg_catalog.set_config('hnsw.iterative_scan', 'relaxed_order', true);
    perform pg_catalog.set_config('hnsw.max_scan_tuples', '2147483647', true);
    return query execute 'explain (costs off) ' || bulkhead._indexed_search_sql(cfg.embedding_dims)
        using tenant, query, filter, k, cfg.index_key;
end
$$;
comment on function bulkhead.tenant_search_explain(vector, int, jsonb) is
    'EXPLAIN of the query tenant_search runs for the current tenant (it leaves hnsw settings changed for the transaction).';

-- Full-text and vector ranks fused by reciprocal rank fusion (k = 60), the current tenant only.
create function bulkhead.tenant_search_hybrid(query_text text, query vector, k int default 10)
returns table (chunk_id uuid, document_id uuid, content text, score float8, vector_rank int, text_rank int)
language plpgsql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := bulkhead.current_tenant();
    depth int;
begin
    if tenant is null then
        raise exception 'no tenant context' using errcode = '42501';
    end if;
    if query_text is null or k is null then
        raise exception 'query_text, query and k are required' using errcode = '22004';
    end if;
    if k not between 1 and 1000 then
        raise exception 'k must be between 1 and 1000' using errcode = '22023';
    end if;
    depth := least(greatest(4 * k, 40), 1000);
    return query
        with by_vector as (
            select s.chunk_id, s.document_id, s.content,
                   (row_number() over (order by s.distance, s.chunk_id))::int as rank
            from bulkhead.tenant_search(query, depth) s
        ),
        by_text as (
            select c.id as chunk_id, c.document_id, c.content,
                   (row_number() over (order by pg_catalog.ts_rank_cd(c.tsv, q) desc, c.id))::int as rank
            from bulkhead.chunks c, pg_catalog.websearch_to_tsquery('simple'::regconfig, query_text) q
            where c.tenant_id = tenant and c.tsv @@ q
            order by pg_catalog.ts_rank_cd(c.tsv, q) desc, c.id
            limit depth
        )
        select coalesce(v.chunk_id, t.chunk_id), coalesce(v.document_id, t.document_id),
               coalesce(v.content, t.content),
               (coalesce(1.0 / (60 + v.rank), 0) + coalesce(1.0 / (60 + t.rank), 0))::float8,
               v.rank, t.rank
        from by_vector v full join by_text t on t.chunk_id = v.chunk_id
        -- Equal scores: the better vector rank first, then the better text rank.
        order by 4 desc, coalesce(v.rank, 2147483647), coalesce(t.rank, 2147483647), 1
        limit k;
end
$$;
comment on function bulkhead.tenant_search_hybrid(text, vector, int) is
    'The current tenant''s chunks ranked by reciprocal rank fusion of full-text and vector search.';

alter function bulkhead._queue_pinecone_sync() owner to bulkhead_meter;
alter function bulkhead._build_tenant_index(uuid) owner to bulkhead_meter;
alter function bulkhead._drop_tenant_index(uuid) owner to bulkhead_meter;
alter function bulkhead._lock_tenant_retrieval(uuid) owner to bulkhead_meter;
alter function bulkhead.drop_pending_indexes() owner to bulkhead_meter;
alter function bulkhead._drop_deleted_tenant_index(text) owner to bulkhead_meter;
alter function bulkhead.ingest_document(text, jsonb, text, jsonb) owner to bulkhead_meter;
alter function bulkhead.delete_document(text) owner to bulkhead_meter;
alter function bulkhead.build_index_for_job(bigint, text) owner to bulkhead_meter;
alter function bulkhead._queue_namespace_deletion(uuid, uuid) owner to bulkhead_meter;

revoke all on function bulkhead._check_chunk_embedding() from public;
revoke all on function bulkhead._queue_pinecone_sync() from public;
revoke all on function bulkhead.set_embedding_dims(uuid, int, int) from public;
revoke all on function bulkhead._new_tenant_index_name() from public;
revoke all on function bulkhead._lock_tenant_retrieval(uuid) from public;
revoke all on function bulkhead._drop_index_now_or_later(text) from public;
revoke all on function bulkhead.drop_pending_indexes() from public;
revoke all on function bulkhead._drop_deleted_tenant_index(text) from public;
grant execute on function bulkhead._drop_deleted_tenant_index(text) to bulkhead_admin;
grant execute on function bulkhead._drop_index_now_or_later(text) to bulkhead_meter;
grant execute on function bulkhead.drop_pending_indexes() to bulkhead_worker, bulkhead_admin;
revoke all on function bulkhead._build_tenant_index(uuid) from public;
revoke all on function bulkhead._create_tenant_index(text, int, bigint) from public;
revoke all on function bulkhead._restore_tenant_index() from public;
revoke all on function bulkhead._drop_tenant_index(uuid) from public;
revoke all on function bulkhead._tenant_index_due(uuid) from public;
revoke all on function bulkhead._queue_index_build_if_due(uuid) from public;
revoke all on function bulkhead.build_index_for_job(bigint, text) from public;
grant execute on function bulkhead._tenant_index_due(uuid), bulkhead._queue_index_build_if_due(uuid) to bulkhead_meter;
grant execute on function bulkhead.build_index_for_job(bigint, text) to bulkhead_worker;
revoke all on function bulkhead._queue_namespace_deletion(uuid, uuid) from public;
revoke all on function bulkhead._hnsw_max_dims() from public;
revoke all on function bulkhead.build_tenant_index(uuid) from public;
revoke all on function bulkhead.ingest_document(text, jsonb, text, jsonb) from public;
revoke all on function bulkhead.delete_document(text) from public;
revoke all on function bulkhead.tenant_search_path() from public;
revoke all on function bulkhead._indexed_search_sql(int) from public;
revoke all on function bulkhead.tenant_search_explain(vector, int, jsonb) from public;
revoke all on function bulkhead.tenant_search(vector, int, jsonb) from public;
revoke all on function bulkhead.tenant_search_hybrid(text, vector, int) from public;
grant execute on function bulkhead.set_embedding_dims(uuid, int, int), bulkhead.build_tenant_index(uuid)
    to bulkhead_admin;
grant execute on function bulkhead._new_tenant_index_name(), bulkhead._hnsw_max_dims(),
    bulkhead._create_tenant_index(text, int, bigint) to bulkhead_meter;
grant execute on function bulkhead._lock_tenant_retrieval(uuid) to bulkhead_worker, bulkhead_meter;
grant execute on function bulkhead._build_tenant_index(uuid), bulkhead._drop_tenant_index(uuid),
    bulkhead._queue_namespace_deletion(uuid, uuid) to bulkhead_admin;
grant execute on function bulkhead.ingest_document(text, jsonb, text, jsonb), bulkhead.delete_document(text),
    bulkhead.tenant_search_path(),
    bulkhead._indexed_search_sql(int), bulkhead.tenant_search_explain(vector, int, jsonb),
    bulkhead.tenant_search(vector, int, jsonb), bulkhead.tenant_search_hybrid(text, vector, int)
    to bulkhead_app, bulkhead_worker, bulkhead_admin;
