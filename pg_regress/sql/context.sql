-- Tenant context: bulkhead.current_tenant() and bulkhead.set_tenant(uuid).
-- Runs as a non-owner, non-superuser member of bulkhead_app.
\set SHOW_CONTEXT never
begin;
set client_min_messages = warning;
create role regress_ctx_app in role bulkhead_app;
insert into bulkhead.tenants (id, slug, name, pinecone_namespace) values
    ('00000000-0000-4000-8000-00000000000a', 'ctx-a', 'Tenant A', 'tenant-a'),
    ('00000000-0000-4000-8000-00000000000b', 'ctx-b', 'Tenant B', 'tenant-b');
set local role regress_ctx_app;

-- No context at all: NULL, never "all tenants".
select bulkhead.current_tenant() is null as no_context_is_null;

-- set_tenant is transaction-local and visible at once.
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
select bulkhead.current_tenant();
select count(*) as rows_seen_in_tenants from bulkhead.tenants;

-- NULL clears it.
select bulkhead.set_tenant(null);
select bulkhead.current_tenant() is null as cleared;

-- An invalid uuid is refused by the uuid type (22P02), a nil or unknown one by set_tenant (42704).
savepoint s;
select bulkhead.set_tenant('not-a-uuid');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
rollback to savepoint s;
savepoint s;
select bulkhead.set_tenant('00000000-0000-0000-0000-000000000000');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
rollback to savepoint s;
savepoint s;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000ff');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
rollback to savepoint s;
-- ... and a failed set_tenant leaves no context behind.
select bulkhead.current_tenant() is null as still_no_context;

-- A savepoint rolled back takes its context with it.
savepoint no_error;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
rollback to savepoint no_error;
select bulkhead.current_tenant() is null as rolled_back_with_savepoint;

-- The setting cannot be written directly, locally or not (42501).
savepoint s;
set local bulkhead.tenant_id = '00000000-0000-4000-8000-00000000000a';
\echo SQLSTATE :LAST_ERROR_SQLSTATE
rollback to savepoint s;
savepoint s;
set bulkhead.tenant_id = '00000000-0000-4000-8000-00000000000a';
\echo SQLSTATE :LAST_ERROR_SQLSTATE
rollback to savepoint s;
savepoint s;
select set_config('bulkhead.tenant_id', '00000000-0000-4000-8000-00000000000a', true);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
rollback to savepoint s;
-- Clearing it directly is allowed: it can only narrow what is visible.
select set_config('bulkhead.tenant_id', '', true) = '' as clearing_allowed;

-- JWT fallback (PostgREST / Supabase): app_metadata.tenant_id by default.
select set_config('request.jwt.claims',
    '{"sub":"u1","app_metadata":{"tenant_id":"00000000-0000-4000-8000-00000000000b"}}', true) is not null as jwt_set;
select bulkhead.current_tenant() as tenant_from_jwt;
-- user_metadata is editable by end users and never read.
select set_config('request.jwt.claims',
    '{"user_metadata":{"tenant_id":"00000000-0000-4000-8000-00000000000b"}}', true) is not null as jwt_set;
select bulkhead.current_tenant() is null as user_metadata_ignored;
-- Unparsable or mistyped claims: NULL, never an error that would break every query.
select set_config('request.jwt.claims', 'not json', true) is not null as jwt_set;
select bulkhead.current_tenant() is null as garbage_claims_are_null;
select set_config('request.jwt.claims', '{"app_metadata":{"tenant_id":42}}', true) is not null as jwt_set;
select bulkhead.current_tenant() is null as numeric_claim_is_null;

-- A transaction carrying tenant B's JWT cannot switch to tenant A, but may name B itself.
select set_config('request.jwt.claims',
    '{"app_metadata":{"tenant_id":"00000000-0000-4000-8000-00000000000b"}}', true) is not null as jwt_set;
savepoint s;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
rollback to savepoint s;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select bulkhead.current_tenant() as jwt_and_setting_agree;
select set_config('request.jwt.claims', '', true) = '' as jwt_cleared;

-- The claim path is superuser-only: an application role cannot repoint it (42501).
savepoint s;
set local bulkhead.jwt_tenant_claim = 'user_metadata.tenant_id';
\echo SQLSTATE :LAST_ERROR_SQLSTATE
rollback to savepoint s;
reset role;
-- Even a superuser cannot point it through user_metadata (22023); other paths work.
savepoint s;
set local bulkhead.jwt_tenant_claim = 'user_metadata.tenant_id';
\echo SQLSTATE :LAST_ERROR_SQLSTATE
rollback to savepoint s;
savepoint s;
set local bulkhead.jwt_tenant_claim = 'a..b';
\echo SQLSTATE :LAST_ERROR_SQLSTATE
rollback to savepoint s;
set local bulkhead.jwt_tenant_claim = 'org.tenant';
set local role regress_ctx_app;
select bulkhead.set_tenant(null);
select set_config('request.jwt.claims', '{"org":{"tenant":"00000000-0000-4000-8000-00000000000a"}}', true) is not null as jwt_set;
select bulkhead.current_tenant() as tenant_from_custom_path;
reset role;
reset bulkhead.jwt_tenant_claim;
set local role regress_ctx_app;

-- Parallel query: current_tenant() is parallel restricted (only the leader can tell whether the
-- JWT claims belong to this transaction); workers receive the tenant as a parameter, and the
-- setting's guard lets the leader's context be copied into them.
select proparallel from pg_proc where oid = 'bulkhead.current_tenant()'::regprocedure;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
set local debug_parallel_query = on;
explain (costs off) select count(*) from generate_series(1, 3);
select count(*) as rows_in_parallel_query from generate_series(1, 3);
select slug from bulkhead.tenants order by slug;
reset debug_parallel_query;

-- Prepared statements re-read the context at each execution: no plan carries a tenant.
prepare tenant_slugs as select slug from bulkhead.tenants;
execute tenant_slugs;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
execute tenant_slugs;
deallocate tenant_slugs;
rollback;
