-- Pinecone sync, driven by a worker that has Pinecone configured: every chunk change waits in
-- bulkhead.pinecone_outbox (retrieval.sql) until the worker has upserted or deleted it in the
-- tenant's namespace; a deleted tenant's namespace waits in pinecone_namespace_deletions.
--
-- The worker finds work without reading tenant data: pinecone_pending_tenants() returns tenant
-- ids only. It reads and marks a tenant's outbox rows inside that tenant's context. A row is
-- marked synced only if it did not change meanwhile (its enqueued_at is compared), so a chunk
-- rewritten during a sync is synced again: the namespace converges on the table.

-- bulkhead_meter lists which tenants have pending rows, for the definer function below only.
create policy meter_lists_pending on bulkhead.pinecone_outbox for select to bulkhead_meter using (true);

-- Tenants with chunk changes not yet in Pinecone, oldest change first. Ids only.
create function bulkhead.pinecone_pending_tenants(max_tenants int default 100)
returns setof uuid
language sql stable
security definer
set search_path to pg_catalog, pg_temp
as $$
    select o.tenant_id from bulkhead.pinecone_outbox o
    where o.processed_at is null
    group by o.tenant_id
    order by min(o.enqueued_at)
    limit greatest(least(max_tenants, 1000), 1)
$$;
comment on function bulkhead.pinecone_pending_tenants(int) is
    'Ids of tenants with chunk changes not yet synced to Pinecone (the worker''s sweep; no tenant data).';

-- A tenant's pending changes with what Pinecone needs, read in that tenant's context (entered
-- for the rest of the transaction). An upsert whose chunk is gone by now is a delete.
create function bulkhead.pinecone_batch(tenant uuid, max_rows int default 100)
returns table (outbox_id bigint, enqueued_at timestamptz, namespace text, op text, chunk_id uuid,
               document_id uuid, embedding real[], metadata jsonb)
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
begin
    if tenant is null or max_rows is null or max_rows not between 1 and 1000 then
        raise exception 'a tenant and max_rows between 1 and 1000 are required' using errcode = '22023';
    end if;
    if bulkhead.current_tenant() is not null and bulkhead.current_tenant() <> tenant then
        raise exception 'pinecone_batch reads the tenant it names only' using errcode = '42501';
    end if;
    perform bulkhead._set_tenant_within_function(tenant);
    return query
        select o.id, o.enqueued_at, o.namespace,
               case when c.id is null then 'delete' else o.op end,
               o.chunk_id, c.document_id,
               case when c.id is null or o.op = 'delete' then null else c.embedding::real[] end,
               case when c.id is null or o.op = 'delete' then null else c.metadata end
        from bulkhead.pinecone_outbox o
        left join bulkhead.chunks c on c.tenant_id = o.tenant_id and c.id = o.chunk_id
        where o.tenant_id = tenant and o.processed_at is null
        order by o.id
        limit max_rows;
end
$$;

-- One worker at a time syncs a tenant: enters the tenant's context (for the rest of the
-- transaction) and takes its retrieval row lock without waiting (_lock_tenant_retrieval). False
-- when another worker holds it. delete_tenant waits for it, so no sync outlives its tenant.
create function bulkhead.pinecone_lock_tenant(tenant uuid)
returns boolean
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
begin
    if bulkhead.current_tenant() is not null and bulkhead.current_tenant() <> tenant then
        raise exception 'pinecone_lock_tenant locks the tenant it names only' using errcode = '42501';
    end if;
    perform bulkhead._set_tenant_within_function(tenant);
    return bulkhead._lock_tenant_retrieval(tenant);
end
$$;

-- One worker at a time deletes a namespace: the deletion's row lock, without waiting. Only
-- roles that may update the row can take it (not an advisory key anyone could hold).
create function bulkhead.pinecone_lock_deletion(deletion bigint)
returns boolean
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
begin
    perform from bulkhead.pinecone_namespace_deletions d
    where d.id = deletion and d.processed_at is null
    for update skip locked;
    return found;
end
$$;

-- Marks synced changes; a change rewritten since it was read (another enqueued_at) stays pending.
create function bulkhead.pinecone_synced(tenant uuid, outbox_ids bigint[], enqueued timestamptz[])
returns int
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    n int;
begin
    if bulkhead.current_tenant() is not null and bulkhead.current_tenant() <> tenant then
        raise exception 'pinecone_synced marks the tenant it names only' using errcode = '42501';
    end if;
    if pg_catalog.cardinality(outbox_ids) <> pg_catalog.cardinality(enqueued) then
        raise exception 'one enqueued_at per outbox id is required' using errcode = '22023';
    end if;
    perform bulkhead._set_tenant_within_function(tenant);
    update bulkhead.pinecone_outbox o set processed_at = pg_catalog.clock_timestamp()
    from rows from (pg_catalog.unnest(outbox_ids), pg_catalog.unnest(enqueued)) as s(id, at)
    where o.tenant_id = tenant and o.id = s.id and o.enqueued_at = s.at and o.processed_at is null;
    get diagnostics n = row_count;
    return n;
end
$$;

-- The worker records on the deletion receipt that the namespace is gone at Pinecone.
grant insert on bulkhead.deletion_receipt_steps to bulkhead_worker;
create policy daemon_records_namespace_deletion on bulkhead.deletion_receipt_steps
    for insert to bulkhead_worker
    with check (step = 'pinecone namespace deleted'
                and exists (select from bulkhead.pinecone_namespace_deletions d where d.receipt_id = deletion_receipt_steps.receipt_id));

-- Marks a namespace deletion done, and says so on the tenant's deletion receipt.
create function bulkhead.pinecone_namespace_deleted(deletion bigint)
returns boolean
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    receipt uuid;
begin
    update bulkhead.pinecone_namespace_deletions d set processed_at = pg_catalog.clock_timestamp()
    where d.id = deletion and d.processed_at is null
    returning d.receipt_id into receipt;
    if not found then
        return false;
    end if;
    if receipt is not null then
        insert into bulkhead.deletion_receipt_steps (receipt_id, step, rows_deleted, completed_at)
        values (receipt, 'pinecone namespace deleted', 1, pg_catalog.clock_timestamp())
        on conflict do nothing;
    end if;
    return true;
end
$$;

alter function bulkhead.pinecone_pending_tenants(int) owner to bulkhead_meter;
revoke all on function bulkhead.pinecone_pending_tenants(int) from public;
revoke all on function bulkhead.pinecone_batch(uuid, int) from public;
revoke all on function bulkhead.pinecone_synced(uuid, bigint[], timestamptz[]) from public;
revoke all on function bulkhead.pinecone_namespace_deleted(bigint) from public;
revoke all on function bulkhead.pinecone_lock_tenant(uuid) from public;
revoke all on function bulkhead.pinecone_lock_deletion(bigint) from public;
grant execute on function bulkhead.pinecone_pending_tenants(int), bulkhead.pinecone_batch(uuid, int),
    bulkhead.pinecone_synced(uuid, bigint[], timestamptz[]), bulkhead.pinecone_namespace_deleted(bigint),
    bulkhead.pinecone_lock_tenant(uuid), bulkhead.pinecone_lock_deletion(bigint)
    to bulkhead_worker;
