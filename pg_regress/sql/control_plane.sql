-- Control plane: create_tenant, set_tenant_settings, delete_tenant and its receipt.
-- Runs as a non-superuser member of bulkhead_admin; the app role's view is checked too.
\set SHOW_CONTEXT never
begin;
set client_min_messages = warning;
create role regress_cp_admin in role bulkhead_admin;
create role regress_cp_app in role bulkhead_app;
set local role regress_cp_admin;

select bulkhead.create_tenant('acme', 'Acme Corp') as acme \gset
select bulkhead.create_tenant('globex', 'Globex') as globex \gset
select slug, name, pinecone_namespace = 'tenant-' || id as namespace_from_id, status
from bulkhead.tenants order by slug;
-- The control plane leaves no tenant context behind.
select bulkhead.current_tenant() is null as no_context_after_create;

-- Bad input: specific SQLSTATEs, and nothing is stored.
savepoint s;
select bulkhead.create_tenant('Acme!', 'x');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
rollback to savepoint s;
savepoint s;
select bulkhead.create_tenant('acme', 'Another Acme');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
rollback to savepoint s;
savepoint s;
select bulkhead.create_tenant('ok-slug', '   ');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
rollback to savepoint s;
savepoint s;
select bulkhead.create_tenant(null, 'x');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
rollback to savepoint s;
select count(*) as tenants_after_bad_input from bulkhead.tenants;

select bulkhead.set_tenant_settings(:'acme', persona_tone => 'formal', banned_topics => array['pricing of competitors']);
select bulkhead.set_tenant_settings(:'globex', display_name => 'Globex Support', persona_tone => 'playful');
select bulkhead.current_tenant() is null as no_context_after_settings;

-- An admin inside a tenant context keeps it after acting on another tenant.
select bulkhead.set_tenant(:'globex');
select bulkhead.set_tenant_settings(:'acme', custom_instructions => 'Answer in English.');
select bulkhead.current_tenant() = :'globex' as context_restored;
select bulkhead.set_tenant(null);

-- Each tenant sees its own settings only.
set local role regress_cp_app;
select bulkhead.set_tenant(:'acme');
select display_name, persona_tone, custom_instructions, banned_topics from bulkhead.tenant_settings;
select bulkhead.set_tenant(:'globex');
select display_name, persona_tone, custom_instructions, banned_topics from bulkhead.tenant_settings;
select bulkhead.set_tenant(null);

-- Delete acme: its rows go, globex's stay, and the receipt proves each step.
set local role regress_cp_admin;
select bulkhead.delete_tenant(:'acme') as receipt \gset
select slug from bulkhead.tenants order by slug;
select tenant_id = :'acme' as receipt_names_tenant, requested_by, completed_at >= started_at as ordered
from bulkhead.deletion_receipts where id = :'receipt';
select step, rows_deleted, completed_at is not null as timestamped
from bulkhead.deletion_receipt_steps where receipt_id = :'receipt' order by completed_at, step;
-- Every tenant table is in the receipt.
select t.table_name::text as missing_from_receipt
from bulkhead.tenant_scoped_tables() t
where t.table_name::text not in (select step from bulkhead.deletion_receipt_steps where receipt_id = :'receipt');
-- Globex is intact.
select bulkhead.set_tenant(:'globex');
select display_name, persona_tone from bulkhead.tenant_settings;
select bulkhead.set_tenant(null);

-- Deleting again (42704), deleting NULL (22004), entering a deleted tenant (42704).
-- Random ids are masked so that the expected output is stable.
create function pg_temp.attempt(statement text) returns text language plpgsql as $$
begin
    execute statement;
    return 'ok';
exception when others then
    return 'ERROR ' || sqlstate || ': '
        || regexp_replace(sqlerrm, '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g');
end
$$;
select pg_temp.attempt(format('select bulkhead.delete_tenant(%L)', :'acme')) as delete_again;
select pg_temp.attempt('select bulkhead.delete_tenant(null)') as delete_null;
select pg_temp.attempt(format('select bulkhead.set_tenant(%L)', :'acme')) as enter_deleted;

-- Receipts are append-only, even for the control plane.
savepoint s;
delete from bulkhead.deletion_receipts;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
rollback to savepoint s;
savepoint s;
update bulkhead.deletion_receipt_steps set rows_deleted = 0;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
rollback to savepoint s;

-- The application role cannot read receipts.
set local role regress_cp_app;
savepoint s;
select count(*) from bulkhead.deletion_receipts;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
rollback to savepoint s;
rollback;
