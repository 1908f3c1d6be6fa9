-- What a restore of a dump may skip, and who counts as restoring (bulkhead._restoring(): the
-- setting pg_dump's scripts make, row_security = off, in a session whose login bypasses row
-- level security). tests/dump_restore.rs restores real dumps; this shows the guards' edges.
\set SHOW_CONTEXT never
begin;
set client_min_messages = warning;
create role regress_rg_admin login in role bulkhead_admin;
insert into bulkhead.tenants (id, slug, name, pinecone_namespace) values
    ('00000000-0000-4000-8000-0000000000f1', 'rg-a', 'Acme', 'tenant-rg-a'),
    ('00000000-0000-4000-8000-0000000000f2', 'rg-b', 'Globex', 'tenant-rg-b'),
    ('00000000-0000-4000-8000-0000000000f3', 'rg-c', 'Initech', 'tenant-rg-c');

-- The superuser (the login here) with row_security off is restoring; with it on, not.
select bulkhead._restoring() as row_security_on;
set local row_security = off;
select bulkhead._restoring() as superuser_restoring;
reset row_security;
-- Any other login is never restoring, even with the setting off (which it could switch off
-- halfway through a statement planned with it on).
set local session authorization regress_rg_admin;
select set_config('row_security', 'off', true) as switched_off, bulkhead._restoring() as admin_restoring;
reset row_security;
reset session authorization;

-- A restored retrieval row builds the index it names, if Bulkhead could have made it; a
-- tampered name, or a dimension HNSW cannot hold, comes back without an index.
set local row_security = off;
insert into bulkhead.retrieval_settings (tenant_id, embedding_dims, index_name, index_key, indexed_at) values
    ('00000000-0000-4000-8000-0000000000f1', 3, 'chunks_hnsw_0123456789abcdef', 42, now()),
    ('00000000-0000-4000-8000-0000000000f2', 3, 'chunks_by_tenant', 43, now()),
    ('00000000-0000-4000-8000-0000000000f3', 3000, 'chunks_hnsw_fedcba9876543210', 44, now());
reset row_security;
select s.tenant_id, s.index_name, s.indexed_at is not null as indexed,
       to_regclass('bulkhead.' || quote_ident(coalesce(s.index_name, 'none'))) is not null as index_exists
from bulkhead.retrieval_settings s
where s.tenant_id in ('00000000-0000-4000-8000-0000000000f1', '00000000-0000-4000-8000-0000000000f2',
                      '00000000-0000-4000-8000-0000000000f3')
order by 1;
select pg_get_expr(i.indpred, i.indrelid) as predicate
from pg_index i where i.indexrelid = 'bulkhead.chunks_hnsw_0123456789abcdef'::regclass;

-- Outside a restore, the same insert builds nothing.
delete from bulkhead.retrieval_settings where tenant_id = '00000000-0000-4000-8000-0000000000f2';
insert into bulkhead.retrieval_settings (tenant_id, embedding_dims, index_name, index_key)
values ('00000000-0000-4000-8000-0000000000f2', 3, 'chunks_hnsw_aaaaaaaaaaaaaaaa', 45);
select to_regclass('bulkhead.chunks_hnsw_aaaaaaaaaaaaaaaa') is null as not_built;

-- Seeded prices are not dumped, admins' are; the default budget row a restore brings replaces
-- the seeded one.
select count(*) filter (where seeded) > 0 as seeded_rows, count(*) filter (where not seeded) as admin_rows
from bulkhead.prices;
select c.relname, e.extcondition[t.n] as dump_filter
from pg_extension e, unnest(e.extconfig) with ordinality t(oid, n) join pg_class c on c.oid = t.oid
where e.extname = 'bulkhead' and c.relname in ('prices', 'budget_defaults');
insert into bulkhead.budget_defaults (rpm, itpm, otpm, dollar_limit, period, default_max_output_tokens)
values (61, 200001, 50001, 11, 'week', 999);
select rpm, itpm, otpm, dollar_limit, period, default_max_output_tokens from bulkhead.budget_defaults;
rollback;
