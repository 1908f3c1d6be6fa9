-- Retrieval through the SQL API: dimensions, ingest, both access paths, filters, hybrid search,
-- the Pinecone outbox, and the errors. Runs as non-superuser members of bulkhead_admin and
-- bulkhead_app.
\set SHOW_CONTEXT never
begin;
set client_min_messages = warning;
create role regress_ret_admin in role bulkhead_admin;
create role regress_ret_app in role bulkhead_app;
insert into bulkhead.tenants (id, slug, name, pinecone_namespace) values
    ('00000000-0000-4000-8000-00000000000a', 'ret-a', 'Acme', 'tenant-a'),
    ('00000000-0000-4000-8000-00000000000b', 'ret-b', 'Globex', 'tenant-b');

create function pg_temp.attempt(statement text) returns text language plpgsql as $$
declare
    result text;
begin
    execute statement into result;
    return 'ok: ' || coalesce(result, 'NULL');
exception when others then
    return 'ERROR ' || sqlstate || ': ' || sqlerrm;
end
$$;
grant execute on function pg_temp.attempt(text) to public;

set local role regress_ret_admin;
select bulkhead.set_embedding_dims('00000000-0000-4000-8000-00000000000a', 3);
select bulkhead.set_embedding_dims('00000000-0000-4000-8000-00000000000b', 3);
select pg_temp.attempt($q$select bulkhead.set_embedding_dims('00000000-0000-4000-8000-00000000000a', 0)$q$) as zero_dims;

reset role;
set local role regress_ret_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
-- Acme: a pricing page, a support page with metadata, and 40 filler chunks around [0, 0, 1].
select bulkhead.ingest_document('pricing', '[{"content": "Acme pricing: 12000 USD per seat", "embedding": [1, 0, 0], "metadata": {"kind": "pricing"}},
                                              {"content": "Acme support hours 9-17", "embedding": [0.7, 0.7, 0], "metadata": {"kind": "support"}}]',
                                title => 'Pricing') is not null as acme_pricing;
select bulkhead.ingest_document('filler', (select jsonb_agg(jsonb_build_object(
    'content', 'filler ' || i, 'embedding', jsonb_build_array(0.01 * i, 0, 1))) from generate_series(1, 40) i)) is not null as acme_filler;
select * from bulkhead.tenant_search_path();
-- Exact path: ordered by cosine distance; equal to a plain ORDER BY over the tenant's rows.
select content, round(distance::numeric, 4) as distance from bulkhead.tenant_search('[1, 0.1, 0]', 3);
select array(select chunk_id from bulkhead.tenant_search('[0.2, 0.1, 0.9]', 10))
     = array(select id from bulkhead.chunks order by embedding <=> '[0.2, 0.1, 0.9]', id limit 10) as exact_equals_plain_order;
-- The filter narrows within the tenant; it cannot widen the scope.
select content from bulkhead.tenant_search('[1, 0, 0]', 5, '{"kind": "support"}');
select count(*) as tenant_b_rows_via_filter from bulkhead.tenant_search('[1, 0, 0]', 50, '{"tenant_id": "00000000-0000-4000-8000-00000000000b"}');
-- Hybrid: full-text and vector ranks fused.
select content, vector_rank, text_rank from bulkhead.tenant_search_hybrid('pricing seat', '[0, 0, 1]', 3);

-- Errors.
select pg_temp.attempt($q$select count(*) from bulkhead.tenant_search('[1, 0]')$q$) as wrong_dimension;
select pg_temp.attempt($q$select count(*) from bulkhead.tenant_search('[0, 0, 0]')$q$) as zero_vector;
select pg_temp.attempt($q$select count(*) from bulkhead.tenant_search('[NaN, 0, 1]')$q$) as nan_vector;
select pg_temp.attempt($q$select count(*) from bulkhead.tenant_search('[]')$q$) as empty_vector;
select pg_temp.attempt($q$select count(*) from bulkhead.tenant_search('[1, 0, 0]', 0)$q$) as k_zero;
select pg_temp.attempt($q$select count(*) from bulkhead.tenant_search('[1, 0, 0]', 5, '[1]')$q$) as filter_not_object;
select pg_temp.attempt($q$select bulkhead.ingest_document('bad', '[{"content": "x", "embedding": [1, 2]}]')$q$) as ingest_wrong_dimension;
select pg_temp.attempt($q$select bulkhead.ingest_document('bad', '[{"content": "x"}]')$q$) as ingest_no_embedding;
select pg_temp.attempt($q$select bulkhead.ingest_document('bad', '[{"content": "x", "embedding": [1, "NaN", 0]}]')$q$) as ingest_nan;
select pg_temp.attempt($q$insert into bulkhead.chunks (tenant_id, document_id, ordinal, content, embedding)
    select tenant_id, document_id, 99, 'direct', '[1, 2]' from bulkhead.chunks limit 1$q$) as direct_insert_wrong_dimension;
-- The dimension check holds for the table's owner too (Bulkhead's own writers).
reset role;
select pg_temp.attempt($q$insert into bulkhead.chunks (tenant_id, document_id, ordinal, content, embedding)
    select tenant_id, document_id, 99, 'direct', '[1, 2]' from bulkhead.chunks limit 1$q$) as owner_insert_wrong_dimension;
set local role regress_ret_app;
select pg_temp.attempt($q$insert into bulkhead.pinecone_outbox (tenant_id, namespace, chunk_id, op)
    values ('00000000-0000-4000-8000-00000000000a', 'attacker-namespace', gen_random_uuid(), 'upsert')$q$) as app_writes_outbox;
select pg_temp.attempt($q$select bulkhead.ingest_document('zero', '[{"content": "x", "embedding": [0, 0, 0]}]')$q$) as ingest_zero_vector;
select pg_temp.attempt($q$select bulkhead._build_tenant_index('00000000-0000-4000-8000-00000000000a')$q$) as app_builds_index;
-- Applications hold no write privilege on documents or chunks (writes go through ingest_document
-- and delete_document), so none can lock them against other tenants.
select pg_temp.attempt($q$update bulkhead.chunks set metadata = metadata$q$) as app_updates_chunks;
select pg_temp.attempt($q$delete from bulkhead.documents$q$) as app_deletes_documents;
select pg_temp.attempt($q$lock table bulkhead.chunks in access exclusive mode$q$) as app_locks_chunks;
select pg_temp.attempt($q$lock table bulkhead.documents in share mode$q$) as app_locks_documents;
-- An update that changes nothing queues nothing; a real change replaces the chunk's pending job
-- (as the table owner: only Bulkhead's own functions write chunks).
reset role;
update bulkhead.pinecone_outbox set processed_at = now();  -- as the daemon would, once synced
update bulkhead.chunks set metadata = metadata;
select count(*) as jobs_after_noop_update from bulkhead.pinecone_outbox where processed_at is null;
update bulkhead.chunks set metadata = metadata || '{"touched": true}' where content like 'filler 1%';
update bulkhead.chunks set metadata = metadata || '{"touched": 2}' where content like 'filler 1%';
select count(*) as jobs_after_two_real_updates_of_11_chunks from bulkhead.pinecone_outbox where processed_at is null;
set local role regress_ret_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');

-- The outbox (read as superuser: applications cannot read or write it): one job per chunk
-- change, addressed to the namespace on the tenant's row.
reset role;
select namespace, op, count(*) from bulkhead.pinecone_outbox group by 1, 2 order by 1, 2;
set local role regress_ret_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
-- Re-ingesting a document replaces its chunks (deletes, then upserts, queued).
select bulkhead.ingest_document('pricing', '[{"content": "Acme pricing: 15000 USD per seat", "embedding": [1, 0, 0], "metadata": {"kind": "pricing"}},
                                              {"content": "Acme support hours 8-18", "embedding": [0.7, 0.7, 0], "metadata": {"kind": "support"}}]') is not null as reingest;
select count(*) as pricing_chunks from bulkhead.chunks c join bulkhead.documents d on d.id = c.document_id where d.external_id = 'pricing';
reset role;
select op, count(*) from bulkhead.pinecone_outbox group by 1 order by 1;

-- Acme grows: its own HNSW index (this threshold is low for the test); searches move to it.
-- The ingest that crosses the threshold queues the build for the worker: the build holds a SHARE
-- lock on chunks (every tenant's writes wait) until its transaction ends, and an application
-- could keep its own transaction open.
reset role;
set local bulkhead.retrieval_index_threshold = 46;
create role regress_ret_worker in role bulkhead_worker;
set local role regress_ret_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
select bulkhead.ingest_document('more', (select jsonb_agg(jsonb_build_object(
    'content', 'more ' || i, 'embedding', jsonb_build_array(0, 0.01 * i, 1))) from generate_series(1, 5) i)) is not null as crosses_threshold;
select path from bulkhead.tenant_search_path();
select count(*) as share_locks_held_by_the_app from pg_locks
where relation = 'bulkhead.chunks'::regclass and mode = 'ShareLock' and pid = pg_backend_pid();
select kind, payload from bulkhead.jobs where kind = 'index_build';
select pg_temp.attempt($q$select bulkhead.enqueue_job('index_build')$q$) as app_queues_a_build;
-- The worker builds it, in a transaction of its own (here: this one, as the worker's role).
set local role regress_ret_worker;
select job_id as build_job from bulkhead.claim_jobs('regress-worker', 10) \gset
select bulkhead.build_index_for_job(:build_job, 'regress-worker') ~ '^chunks_hnsw_[0-9a-f]{16}$' as built;
-- The twin: the build holds a SHARE lock on chunks until its transaction ends.
select count(*) as share_locks_held_by_the_build from pg_locks
where relation = 'bulkhead.chunks'::regclass and mode = 'ShareLock' and pid = pg_backend_pid();
select bulkhead.complete_job(:build_job, 'regress-worker', '{}');
select bulkhead.set_tenant(null);
set local role regress_ret_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
select regexp_replace(path, '[0-9a-f]{16}$', '<random>') as path, chunks, embedding_dims, ef_search
from bulkhead.tenant_search_path();
select content, round(distance::numeric, 4) as distance from bulkhead.tenant_search('[1, 0.1, 0]', 3);
select content from bulkhead.tenant_search('[1, 0, 0]', 5, '{"kind": "support"}');
select array(select chunk_id from bulkhead.tenant_search('[0.2, 0.1, 0.9]', 10))
     = array(select id from bulkhead.chunks order by embedding <=> '[0.2, 0.1, 0.9]', id limit 10) as indexed_equals_exact;
select current_setting('hnsw.iterative_scan') as iterative_scan_restored, current_setting('hnsw.ef_search') as ef_search_restored,
       current_setting('hnsw.max_scan_tuples') as max_scan_tuples_restored;
-- (Whether searches use the index is for tests/retrieval_recall.rs: inside this one transaction,
-- the index built after the UPDATEs above is invisible to the planner until the transaction
-- ends, its pg_index row being marked indcheckxmin.)
-- Its name says nothing about the tenant (names and scan counts are public in the catalogs).
select index_name ~ '^chunks_hnsw_[0-9a-f]{16}$' as opaque_name,
       strpos(index_name, replace(tenant_id::text, '-', '')) = 0 and strpos(index_name, '000a') = 0 as not_the_tenant_id,
       (select strpos(i.indexdef, tenant_id::text) = 0 and strpos(i.indexdef, format('WHERE (index_key = %L::bigint)', index_key)) > 0
        from pg_indexes i where i.indexname = index_name) as predicate_on_opaque_key
from bulkhead.retrieval_settings;
-- One session, a large tenant then a small one: each gets its own path.
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select bulkhead.ingest_document('faq', '[{"content": "Globex refunds in 30 days", "embedding": [1, 0, 0]}]') is not null as globex_doc;
select * from bulkhead.tenant_search_path();
select content from bulkhead.tenant_search('[1, 0, 0]', 3);
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
select (select path from bulkhead.tenant_search_path()) like 'hnsw:%' as acme_still_indexed,
       (select count(*) from bulkhead.tenant_search('[1, 0, 0]', 3)) as acme_rows;
select pg_temp.attempt($q$select bulkhead.set_embedding_dims('00000000-0000-4000-8000-00000000000a', 768)$q$) as app_sets_dims;

-- The common embedding sizes: a 1536-dimension tenant next to a 3-dimension one.
reset role;
insert into bulkhead.tenants (id, slug, name, pinecone_namespace) values
    ('00000000-0000-4000-8000-00000000000c', 'ret-c', 'Initech', 'tenant-c');
set local role regress_ret_admin;
select bulkhead.set_embedding_dims('00000000-0000-4000-8000-00000000000c', dims) from unnest(array[384, 768, 1536]) dims;
reset role;
set local role regress_ret_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000c');
select bulkhead.ingest_document('wide', jsonb_build_array(jsonb_build_object('content', 'wide',
    'embedding', to_jsonb(array_fill(0.5::real, array[1536]))))) is not null as ingested_1536;
select content, embedding_dims from bulkhead.tenant_search(array_fill(0.5::real, array[1536])::vector, 1),
    bulkhead.tenant_search_path();
select pg_temp.attempt($q$select count(*) from bulkhead.tenant_search(array_fill(0.5::real, array[768])::vector)$q$) as query_768_on_1536;
select bulkhead.delete_document('wide') as deleted_wide, bulkhead.delete_document('wide') as deleted_again;

-- A dimension change drops the tenant's index of the old dimension (there are no chunks then),
-- and HNSW's 2000-dimension limit keeps wider tenants on exact scans.
reset role;
set local role regress_ret_admin;
select bulkhead.build_tenant_index('00000000-0000-4000-8000-00000000000b') ~ '^chunks_hnsw_[0-9a-f]{16}$' as b_index;
reset role;
select index_name as b_index_name from bulkhead.retrieval_settings
where tenant_id = '00000000-0000-4000-8000-00000000000b' \gset
set local role regress_ret_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select bulkhead.delete_document(external_id) from bulkhead.documents;
reset role;
set local role regress_ret_admin;
select bulkhead.set_embedding_dims('00000000-0000-4000-8000-00000000000b', 4);
reset role;
select to_regclass('bulkhead.' || :'b_index_name') as b_old_index;
set local role regress_ret_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select bulkhead.ingest_document('wider', '[{"content": "four", "embedding": [1, 0, 0, 0]}]') is not null as ingest_4d;
select path from bulkhead.tenant_search_path();
reset role;
set local role regress_ret_admin;
select bulkhead.set_embedding_dims('00000000-0000-4000-8000-00000000000c', 3072);
select pg_temp.attempt($q$select bulkhead.build_tenant_index('00000000-0000-4000-8000-00000000000c')$q$) as index_over_2000_dims;
reset role;
set local role regress_ret_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');

-- Changing a dimension is refused while chunks of the old one exist.
reset role;
set local role regress_ret_admin;
select pg_temp.attempt($q$select bulkhead.set_embedding_dims('00000000-0000-4000-8000-00000000000a', 768)$q$) as change_dims_with_chunks;
-- Deleting the tenant drops its index with its rows.
reset role;
select index_name as a_index_name from bulkhead.retrieval_settings
where tenant_id = '00000000-0000-4000-8000-00000000000a' \gset
set local role regress_ret_admin;
select bulkhead.delete_tenant('00000000-0000-4000-8000-00000000000a') is not null as deleted;
reset role;
select to_regclass('bulkhead.' || :'a_index_name') as index_left;
select step, rows_deleted from bulkhead.deletion_receipt_steps
where step in ('bulkhead.chunks', 'bulkhead.documents', 'tenant vector index', 'pinecone namespace deletion queued') order by step;
select deleted_tenant, namespace from bulkhead.pinecone_namespace_deletions;
rollback;
