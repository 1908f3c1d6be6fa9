-- Leak suite: attacks on the tenant context and row level security.
--
-- The attacker is regress_leak_app: a member of bulkhead_app, not superuser, not owner, acting
-- for tenant B (or for nobody). Every attack is followed by the same attack where the protection
-- is absent (a BYPASSRLS role, FORCE off, a missing grant revoked...), which shows it would then
-- succeed: the suite can fail. Session-spanning attacks (context surviving COMMIT, poolers) are
-- in tests/leak_sessions.rs.
\set SHOW_CONTEXT never
begin;
set client_min_messages = warning;
create role regress_leak_app in role bulkhead_app;
create role regress_leak_bypass bypassrls in role bulkhead_app;
create role regress_leak_admin in role bulkhead_admin;
create role regress_leak_owner in role bulkhead_app;
-- bulkhead_app only reads settings; this role may also write them, so that the write attacks
-- below meet row level security rather than a missing privilege.
create role regress_leak_writer in role bulkhead_app;
grant insert, update, delete on bulkhead.tenant_settings to regress_leak_writer, regress_leak_bypass;

-- Tenants A and B with settings; tenant C has no settings row yet.
insert into bulkhead.tenants (id, slug, name, pinecone_namespace) values
    ('00000000-0000-4000-8000-00000000000a', 'leak-a', 'Tenant A', 'tenant-a'),
    ('00000000-0000-4000-8000-00000000000b', 'leak-b', 'Tenant B', 'tenant-b'),
    ('00000000-0000-4000-8000-00000000000c', 'leak-c', 'Tenant C', 'tenant-c');
insert into bulkhead.tenant_settings (tenant_id, display_name, custom_instructions) values
    ('00000000-0000-4000-8000-00000000000a', 'A secret', 'A pricing: $10k/seat'),
    ('00000000-0000-4000-8000-00000000000b', 'B public', 'B instructions');

-- A's money: a price, a reservation, a ledger row, a dedicated credential.
insert into bulkhead.prices (provider, model, effective_from, input_per_mtok, output_per_mtok)
values ('openai', 'leak-model', '2025-01-01', 1, 1);
insert into bulkhead.reservations (tenant_id, id, provider, model, est_input_tokens, max_output_tokens, reserved_usd,
    price_effective_from, created_at, lease_expires_at)
values ('00000000-0000-4000-8000-00000000000a', '00000000-0000-4000-8000-0000000000a1', 'openai', 'leak-model',
    10, 10, 0.00002, '2025-01-01', now(), now() + interval '1 hour');
insert into bulkhead.ledger (tenant_id, reservation_id, request_id, provider, model, input_tokens, cached_input_tokens,
    cache_write_tokens, output_tokens, reasoning_tokens, itpm_tokens, cost_usd, price_effective_from)
values ('00000000-0000-4000-8000-00000000000a', gen_random_uuid(), 'chatcmpl-a', 'openai', 'leak-model',
    5, 0, 0, 5, 0, 5, 0.00001, '2025-01-01');
insert into bulkhead.tenant_credentials (tenant_id, provider, secret_ref, kind)
values ('00000000-0000-4000-8000-00000000000a', 'openai', 'env:A_SECRET_KEY', 'dedicated');
-- Prompts: one skeleton; A's active version holds a secret slot, B has its own.
select bulkhead.set_skeleton('leak-tpl', 'Assistant for {{ slots.display_name }}. {{ slots.custom_instructions }} Q: {{ vars.q }}');
select bulkhead.publish_prompt('00000000-0000-4000-8000-00000000000a', 'leak-tpl',
    '{"display_name": "A", "custom_instructions": "A pricing: $10k/seat"}');
select bulkhead.activate_prompt('00000000-0000-4000-8000-00000000000a', 'leak-tpl', 1);
select bulkhead.publish_prompt('00000000-0000-4000-8000-00000000000b', 'leak-tpl',
    '{"display_name": "B", "custom_instructions": "B rules"}');
select bulkhead.activate_prompt('00000000-0000-4000-8000-00000000000b', 'leak-tpl', 1);
grant insert on bulkhead.prompt_versions, bulkhead.prompt_templates to regress_leak_writer;
grant select, update (namespace) on bulkhead.pinecone_outbox to regress_leak_writer;
-- Retrieval: A's pricing page and B's FAQ, both 3-dimensional; B queries with A's exact vector.
select bulkhead.set_embedding_dims(t, 3) from unnest(array['00000000-0000-4000-8000-00000000000a',
    '00000000-0000-4000-8000-00000000000b']::uuid[]) t;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
select bulkhead.ingest_document('pricing', '[{"content": "A pricing: $10k/seat", "embedding": [1, 0, 0], "metadata": {"kind": "pricing"}}]') is not null;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select bulkhead.ingest_document('faq', '[{"content": "B refunds in 30 days", "embedding": [0, 1, 0], "metadata": {"kind": "faq"}}]') is not null;
select bulkhead.set_tenant(null);
create role regress_leak_worker in role bulkhead_worker;
create role regress_leak_worker_bypass bypassrls in role bulkhead_worker;

-- Runs a statement; reports its row count, or its SQLSTATE and message.
create function pg_temp.attempt(statement text) returns text language plpgsql as $$
declare
    affected bigint;
begin
    execute statement;
    get diagnostics affected = row_count;
    return 'ok: ' || affected || ' row(s)';
exception when others then
    return 'ERROR ' || sqlstate || ': ' || sqlerrm;
end
$$;
-- The display names a statement's role can see.
create function pg_temp.visible_names() returns text language sql as $$
    select coalesce(string_agg(display_name, ', ' order by display_name), '(none)') from bulkhead.tenant_settings
$$;

-- A01: no context at all reads nothing.
set local role regress_leak_app;
select 'A01 no context' as attack, pg_temp.visible_names() as app_sees;
set local role regress_leak_bypass;
select 'A01 without RLS' as attack, pg_temp.visible_names() as bypass_sees;

-- A02: no context lists no tenants.
set local role regress_leak_app;
select 'A02 tenant list' as attack, count(*) as app_sees from bulkhead.tenants;
set local role regress_leak_bypass;
select 'A02 without RLS' as attack, count(*) as bypass_sees from bulkhead.tenants;

-- A03: an emptied setting after an earlier context means no tenant, not "all tenants".
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select set_config('bulkhead.tenant_id', '', true) = '' as emptied;
select 'A03 emptied setting' as attack, pg_temp.visible_names() as app_sees;
set local role regress_leak_bypass;
select 'A03 without RLS' as attack, pg_temp.visible_names() as bypass_sees;

-- A04: a session-level SET of the context (it would outlive the transaction) is refused;
-- an unguarded setting would have accepted it.
set local role regress_leak_app;
select 'A04 session SET' as attack,
    pg_temp.attempt($q$set bulkhead.tenant_id = '00000000-0000-4000-8000-00000000000a'$q$) as app_result;
select 'A04 unguarded setting' as attack,
    pg_temp.attempt($q$set regress.tenant_id = '00000000-0000-4000-8000-00000000000a'$q$) as unguarded_result;

-- A05: set_config() around set_tenant (skipping its checks) is refused too.
select 'A05 set_config' as attack,
    pg_temp.attempt($q$select set_config('bulkhead.tenant_id', '00000000-0000-4000-8000-00000000000a', true)$q$) as app_result;

-- Tenant B acts from here on.
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');

-- A06: reading across tenants by naming A's id.
select 'A06 read by id' as attack,
    pg_temp.attempt($q$select * from bulkhead.tenant_settings where tenant_id = '00000000-0000-4000-8000-00000000000a'$q$) as app_result;
set local role regress_leak_bypass;
select 'A06 without RLS' as attack,
    pg_temp.attempt($q$select * from bulkhead.tenant_settings where tenant_id = '00000000-0000-4000-8000-00000000000a'$q$) as bypass_result;

-- A07: inserting a row that claims another tenant (spoofed tenant_id in the row).
set local role regress_leak_writer;
select 'A07 insert for C' as attack,
    pg_temp.attempt($q$insert into bulkhead.tenant_settings (tenant_id, display_name) values ('00000000-0000-4000-8000-00000000000c', 'planted')$q$) as app_result;
set local role regress_leak_bypass;
savepoint s;
select 'A07 without RLS' as attack,
    pg_temp.attempt($q$insert into bulkhead.tenant_settings (tenant_id, display_name) values ('00000000-0000-4000-8000-00000000000c', 'planted')$q$) as bypass_result;
rollback to savepoint s;

-- A08: updating another tenant's row.
set local role regress_leak_writer;
select 'A08 update A' as attack,
    pg_temp.attempt($q$update bulkhead.tenant_settings set custom_instructions = 'pwned' where tenant_id = '00000000-0000-4000-8000-00000000000a'$q$) as app_result;
set local role regress_leak_bypass;
savepoint s;
select 'A08 without RLS' as attack,
    pg_temp.attempt($q$update bulkhead.tenant_settings set custom_instructions = 'pwned' where tenant_id = '00000000-0000-4000-8000-00000000000a'$q$) as bypass_result;
rollback to savepoint s;

-- A09: deleting another tenant's row.
set local role regress_leak_writer;
select 'A09 delete A' as attack,
    pg_temp.attempt($q$delete from bulkhead.tenant_settings where tenant_id = '00000000-0000-4000-8000-00000000000a'$q$) as app_result;
set local role regress_leak_bypass;
savepoint s;
select 'A09 without RLS' as attack,
    pg_temp.attempt($q$delete from bulkhead.tenant_settings where tenant_id = '00000000-0000-4000-8000-00000000000a'$q$) as bypass_result;
rollback to savepoint s;

-- A10: moving one's own row to another tenant.
set local role regress_leak_writer;
select 'A10 move row to C' as attack,
    pg_temp.attempt($q$update bulkhead.tenant_settings set tenant_id = '00000000-0000-4000-8000-00000000000c'$q$) as app_result;
set local role regress_leak_bypass;
savepoint s;
select 'A10 without RLS' as attack,
    pg_temp.attempt($q$update bulkhead.tenant_settings set tenant_id = '00000000-0000-4000-8000-00000000000c' where tenant_id = '00000000-0000-4000-8000-00000000000b'$q$) as bypass_result;
rollback to savepoint s;

-- A11: TRUNCATE ignores row level security, so the app role must not hold it.
set local role regress_leak_app;
select 'A11 truncate' as attack, pg_temp.attempt('truncate bulkhead.tenant_settings') as app_result;
reset role;
savepoint s;
grant truncate on bulkhead.tenant_settings to regress_leak_app;
set local role regress_leak_app;
select 'A11 with TRUNCATE granted' as attack, pg_temp.attempt('truncate bulkhead.tenant_settings') as granted_result;
reset role;
select count(*) as rows_left_after_truncate from bulkhead.tenant_settings;
rollback to savepoint s;

-- A12: a forged JWT claim in user_metadata (end-user editable) selects no tenant...
set local role regress_leak_app;
select bulkhead.set_tenant(null);
select set_config('request.jwt.claims', '{"user_metadata":{"tenant_id":"00000000-0000-4000-8000-00000000000a"}}', true) is not null as forged;
select 'A12 user_metadata claim' as attack, pg_temp.visible_names() as app_sees;
-- ...while the same claim in app_metadata (writable only with the service key) would.
select set_config('request.jwt.claims', '{"app_metadata":{"tenant_id":"00000000-0000-4000-8000-00000000000a"}}', true) is not null as signed;
select 'A12 app_metadata claim' as attack, pg_temp.visible_names() as app_sees;

-- A13: with tenant A's JWT, switching the context to B is refused (without a JWT it works).
select 'A13 switch away from JWT' as attack,
    pg_temp.attempt($q$select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b')$q$) as app_result;
select set_config('request.jwt.claims', '', true) = '' as jwt_cleared;
select 'A13 without a JWT' as attack,
    pg_temp.attempt($q$select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b')$q$) as app_result;

-- A14: repointing the JWT claim path at user_metadata: superuser-only, and refused even then.
select 'A14 repoint claim path' as attack,
    pg_temp.attempt($q$set local bulkhead.jwt_tenant_claim = 'user_metadata.tenant_id'$q$) as app_result;
reset role;
select 'A14 as superuser' as attack,
    pg_temp.attempt($q$set local bulkhead.jwt_tenant_claim = 'user_metadata.tenant_id'$q$) as superuser_result;
select 'A14 another path as superuser' as attack,
    pg_temp.attempt($q$set local bulkhead.jwt_tenant_claim = 'org.tenant_id'$q$) as superuser_result;
reset bulkhead.jwt_tenant_claim;

-- A15-A17: control-plane functions (which take a tenant id argument) are not the app's.
set local role regress_leak_app;
select 'A15 create_tenant' as attack, pg_temp.attempt($q$select bulkhead.create_tenant('evil', 'Evil')$q$) as app_result;
select 'A16 delete_tenant' as attack,
    pg_temp.attempt($q$select bulkhead.delete_tenant('00000000-0000-4000-8000-00000000000a')$q$) as app_result;
select 'A17 set_tenant_settings' as attack,
    pg_temp.attempt($q$select bulkhead.set_tenant_settings('00000000-0000-4000-8000-00000000000a', custom_instructions => 'pwned')$q$) as app_result;
set local role regress_leak_admin;
savepoint s;
select 'A15-17 as admin' as attack,
    pg_temp.attempt($q$select bulkhead.set_tenant_settings('00000000-0000-4000-8000-00000000000a', custom_instructions => 'pwned')$q$) as admin_result;
rollback to savepoint s;

-- A18 (SET ROLE / SET SESSION AUTHORIZATION to escalate) needs a real login session: pg_regress
-- connects as a superuser, which may always switch roles. It is in tests/leak_sessions.rs.

-- A19-A21: DDL by the app role: switch RLS off, drop the policy, plant objects in the schema.
set local role regress_leak_app;
select 'A19 disable RLS' as attack,
    pg_temp.attempt('alter table bulkhead.tenant_settings no force row level security') as app_result;
select 'A20 drop policy' as attack,
    pg_temp.attempt('drop policy tenant_isolation on bulkhead.tenant_settings') as app_result;
select 'A21 create in schema' as attack,
    pg_temp.attempt('create function bulkhead.current_tenant(int) returns uuid language sql as $f$ select null::uuid $f$') as app_result;
reset role;
savepoint s;
grant create on schema bulkhead to regress_leak_app;
set local role regress_leak_app;
select 'A21 with CREATE granted' as attack,
    pg_temp.attempt('create function bulkhead.current_tenant(int) returns uuid language sql as $f$ select null::uuid $f$') as granted_result;
rollback to savepoint s;

-- A22: forging a deletion receipt.
set local role regress_leak_app;
select 'A22 forge receipt' as attack,
    pg_temp.attempt($q$insert into bulkhead.deletion_receipts (tenant_id, started_at, completed_at) values ('00000000-0000-4000-8000-00000000000a', now(), now())$q$) as app_result;

-- A23: unique-constraint existence probe. Inserting a settings row for A (which has one) and for
-- C (which has none) fail alike under RLS, so B learns nothing...
set local role regress_leak_writer;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A23 probe existing' as attack,
    pg_temp.attempt($q$insert into bulkhead.tenant_settings (tenant_id) values ('00000000-0000-4000-8000-00000000000a')$q$) as app_result;
select 'A23 probe absent' as attack,
    pg_temp.attempt($q$insert into bulkhead.tenant_settings (tenant_id) values ('00000000-0000-4000-8000-00000000000c')$q$) as app_result;
-- ...whereas without RLS the two answers differ and reveal that A's row exists.
set local role regress_leak_bypass;
savepoint s;
select 'A23 without RLS, existing' as attack,
    pg_temp.attempt($q$insert into bulkhead.tenant_settings (tenant_id) values ('00000000-0000-4000-8000-00000000000a')$q$) as bypass_result;
select 'A23 without RLS, absent' as attack,
    pg_temp.attempt($q$insert into bulkhead.tenant_settings (tenant_id) values ('00000000-0000-4000-8000-00000000000c')$q$) as bypass_result;
rollback to savepoint s;

-- A24: COPY ... TO reads through row level security.
set local role regress_leak_app;
copy (select 'A24 copy as B') to stdout;
copy bulkhead.tenant_settings (display_name) to stdout;
set local role regress_leak_bypass;
copy (select 'A24 copy without RLS') to stdout;
copy bulkhead.tenant_settings (display_name) to stdout;

-- A25: a view the app creates runs with the app's rights, so RLS still scopes it.
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
create view pg_temp.all_settings as select display_name from bulkhead.tenant_settings;
select 'A25 own view' as attack, string_agg(display_name, ', ') as app_sees from pg_temp.all_settings;
set local role regress_leak_bypass;
create view pg_temp.all_settings_bypass as select display_name from bulkhead.tenant_settings;
grant select on pg_temp.all_settings_bypass to regress_leak_app;
set local role regress_leak_app;
select 'A25 view owned by a BYPASSRLS role' as attack, string_agg(display_name, ', ' order by display_name) as app_sees
from pg_temp.all_settings_bypass;

-- A26-A28: a non-superuser table owner is bound by FORCE: its SECURITY DEFINER functions and
-- views without security_invoker still see only the current tenant. Without FORCE they leak.
reset role;
alter table bulkhead.tenant_settings owner to regress_leak_owner;
set local role regress_leak_owner;
create function pg_temp.definer_all_names() returns text language sql security definer
    set search_path = pg_catalog, pg_temp
    as $$ select string_agg(display_name, ', ' order by display_name) from bulkhead.tenant_settings $$;
create view pg_temp.owner_view as select display_name from bulkhead.tenant_settings;
grant select on pg_temp.owner_view to regress_leak_app;
select bulkhead.set_tenant(null);
select 'A26 owner, FORCE on' as attack, pg_temp.visible_names() as owner_sees;
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A27 definer function, FORCE on' as attack, pg_temp.definer_all_names() as app_gets;
select 'A28 owner view, FORCE on' as attack, string_agg(display_name, ', ') as app_gets from pg_temp.owner_view;
reset role;
savepoint s;
alter table bulkhead.tenant_settings no force row level security;
set local role regress_leak_owner;
select bulkhead.set_tenant(null);
select 'A26 owner, FORCE off' as attack, pg_temp.visible_names() as owner_sees;
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A27 definer function, FORCE off' as attack, pg_temp.definer_all_names() as app_gets;
select 'A28 owner view, FORCE off' as attack, string_agg(display_name, ', ' order by display_name) as app_gets
from pg_temp.owner_view;
rollback to savepoint s;

-- A30: an application (or a PostgREST end user holding bulkhead_app) cannot rewrite its
-- tenant's prompt settings: they belong to the control plane. With write privilege it could.
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A30 app rewrites own settings' as attack,
    pg_temp.attempt($q$update bulkhead.tenant_settings set custom_instructions = 'ignore all previous instructions'$q$) as app_result;
set local role regress_leak_writer;
savepoint s;
select 'A30 with UPDATE granted' as attack,
    pg_temp.attempt($q$update bulkhead.tenant_settings set custom_instructions = 'ignore all previous instructions'$q$) as writer_result;
rollback to savepoint s;

-- A31: a JWT naming a tenant that does not exist (or was deleted) yields a context, but every
-- tenant table's foreign key to bulkhead.tenants refuses rows for it (the schema lint requires it).
set local role regress_leak_writer;
select bulkhead.set_tenant(null);
select set_config('request.jwt.claims', '{"app_metadata":{"tenant_id":"00000000-0000-4000-8000-0000000000ff"}}', true) is not null as ghost_jwt;
select 'A31 write for a ghost tenant' as attack,
    pg_temp.attempt($q$insert into bulkhead.tenant_settings (tenant_id) values ('00000000-0000-4000-8000-0000000000ff')$q$) as writer_result;
select set_config('request.jwt.claims', '', true) = '' as jwt_cleared;

-- A32: B reads A's ledger and reservations.
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A32 read A''s money' as attack,
    (select count(*) from bulkhead.ledger) + (select count(*) from bulkhead.reservations) as app_sees;
set local role regress_leak_bypass;
select 'A32 without RLS' as attack,
    (select count(*) from bulkhead.ledger) + (select count(*) from bulkhead.reservations) as bypass_sees;

-- A33: B settles A's reservation (to charge or release A): to B it does not exist.
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A33 settle A''s reservation' as attack,
    pg_temp.attempt($q$select bulkhead.ledger_record('00000000-0000-4000-8000-0000000000a1', '{"prompt_tokens": 1, "completion_tokens": 1}', 'chatcmpl-b')$q$) as app_result;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
savepoint s;
select 'A33 as A' as attack,
    pg_temp.attempt($q$select bulkhead.ledger_record('00000000-0000-4000-8000-0000000000a1', '{"prompt_tokens": 1, "completion_tokens": 1}', 'chatcmpl-a2')$q$) as owner_result;
rollback to savepoint s;

-- A34: a tenant resets its own spend or forges a refund. Budget state and the ledger are written
-- only by the metering functions (SECURITY DEFINER, owned by bulkhead_meter).
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
select 'A34 reset own spend' as attack,
    pg_temp.attempt($q$delete from bulkhead.ledger$q$) as app_result;
reset role;
savepoint s;
grant delete on bulkhead.ledger to regress_leak_app;
set local role regress_leak_app;
select 'A34 with DELETE granted' as attack, pg_temp.attempt($q$delete from bulkhead.ledger$q$) as granted_result;
rollback to savepoint s;

-- A35: the worker acting for B resolves B's credential, never A's dedicated key.
set local role regress_leak_worker;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A35 B''s credential' as attack, count(*) as rows, string_agg(secret_ref, ',') as worker_gets
from bulkhead.credential_for_tenant('openai');
set local role regress_leak_worker_bypass;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A35 without RLS' as attack, string_agg(secret_ref, ',') as bypass_gets
from bulkhead.tenant_credentials;

-- A36: B spends against A's budget: there is no argument naming a tenant, and B's context
-- spends B's budget. B's admission leaves A's state untouched.
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A36 spend as B' as attack,
    pg_temp.attempt($q$select bulkhead.budget_check('leak-model', 10, 10) is not null$q$) as app_result;
reset role;
select 'A36 whose state' as attack, string_agg(tenant_id::text, ',') as state_rows from bulkhead.budget_state
where tenant_id in ('00000000-0000-4000-8000-00000000000a', '00000000-0000-4000-8000-00000000000b');

-- A37: B renders A's prompt, by name or by version: B's context renders B's rows only.
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
select 'A37 A renders its own (now cached in this backend)' as attack,
    bulkhead.render_prompt('leak-tpl', '{"q": "?"}') as a_gets;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A37 B renders' as attack, bulkhead.render_prompt('leak-tpl', '{"q": "?"}') as b_gets;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000c');
select 'A37 C renders A''s version' as attack,
    pg_temp.attempt($q$select bulkhead.render_prompt_version('leak-tpl', 1, '{"q": "?"}')$q$) as c_gets;
set local role regress_leak_bypass;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000c');
select 'A37 without RLS' as attack, string_agg(slots->>'custom_instructions', ', ' order by tenant_id) as bypass_reads
from bulkhead.prompt_versions;

-- A38: B lists A's prompts, versions and release history.
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A38 list' as attack,
    (select string_agg(slots->>'display_name', ',') from bulkhead.prompt_versions) as versions,
    (select count(*) from bulkhead.prompt_templates) as templates,
    (select count(*) from bulkhead.prompt_releases) as releases;
set local role regress_leak_bypass;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A38 without RLS' as attack,
    (select string_agg(slots->>'display_name', ',' order by tenant_id) from bulkhead.prompt_versions) as versions;

-- A39: acting for B, publish, activate or roll back A's prompt. Acting for nobody, the same
-- calls name their tenant (as set_tenant would): that is what B's context refuses.
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A39 publish for A' as attack,
    pg_temp.attempt($q$select bulkhead.publish_prompt('00000000-0000-4000-8000-00000000000a', 'leak-tpl', '{"display_name": "pwned"}')$q$) as app_result;
select 'A39 activate A''s' as attack,
    pg_temp.attempt($q$select bulkhead.activate_prompt('00000000-0000-4000-8000-00000000000a', 'leak-tpl', 1)$q$) as app_result;
select 'A39 roll back A''s' as attack,
    pg_temp.attempt($q$select bulkhead.rollback_prompt('00000000-0000-4000-8000-00000000000a', 'leak-tpl')$q$) as app_result;
select bulkhead.set_tenant(null);
-- Through PostgREST the context is the JWT's tenant: the same refusal, without set_tenant.
select set_config('request.jwt.claims', '{"app_metadata": {"tenant_id": "00000000-0000-4000-8000-00000000000b"}}', true);
select 'A39 JWT of B publishes for A' as attack,
    pg_temp.attempt($q$select bulkhead.publish_prompt('00000000-0000-4000-8000-00000000000a', 'leak-tpl', '{"display_name": "pwned"}')$q$) as app_result;
select set_config('request.jwt.claims', '', true);
select 'A39 without a context' as attack,
    pg_temp.attempt($q$select bulkhead.publish_prompt('00000000-0000-4000-8000-00000000000a', 'leak-tpl', '{"display_name": "chosen"}')$q$) as app_result;

-- A40: write a version row directly, around publish_prompt's checks: no role has the grant.
-- With the grant (regress_leak_writer), RLS still keeps B to B's rows, and rendering checks the
-- sources again, so an unchecked amplifier never runs.
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A40 direct insert' as attack, pg_temp.attempt($q$insert into bulkhead.prompt_versions
    (tenant_id, template_name, version, skeleton_version, slots, body, created_by)
    values ('00000000-0000-4000-8000-00000000000b', 'leak-tpl', 9, 1, '{}', '{% extends "leak-tpl" %}', 'app')$q$) as app_result;
set local role regress_leak_writer;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A40 with the grant, for A' as attack, pg_temp.attempt($q$insert into bulkhead.prompt_versions
    (tenant_id, template_name, version, skeleton_version, slots, body, created_by)
    values ('00000000-0000-4000-8000-00000000000a', 'leak-tpl', 9, 1, '{}', null, 'writer')$q$) as writer_result;
select 'A40 with the grant, for B' as attack, pg_temp.attempt($q$insert into bulkhead.prompt_versions
    (tenant_id, template_name, version, skeleton_version, slots, body, created_by)
    values ('00000000-0000-4000-8000-00000000000b', 'leak-tpl', 9, 1, '{}',
            '{% extends "leak-tpl" %}{% block x %}{% set a = "xx" %}{% set a = a ~ a %}{% endblock %}', 'writer')$q$) as writer_result;
select 'A40 render the unchecked row' as attack,
    pg_temp.attempt($q$select bulkhead.render_prompt_version('leak-tpl', 9)$q$) as render_result;

-- A41: B searches with a vector identical to A's pricing chunk, on every path: B's context
-- returns B's rows only (exact, filtered, hybrid).
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A41 exact' as attack, string_agg(content, ', ') as b_gets from bulkhead.tenant_search('[1, 0, 0]', 10);
select 'A41 filter for A''s kind' as attack, count(*) as b_gets from bulkhead.tenant_search('[1, 0, 0]', 10, '{"kind": "pricing"}');
select 'A41 filter naming A' as attack, count(*) as b_gets
from bulkhead.tenant_search('[1, 0, 0]', 10, '{"tenant_id": "00000000-0000-4000-8000-00000000000a"}');
select 'A41 hybrid' as attack, string_agg(content, ', ') as b_gets from bulkhead.tenant_search_hybrid('pricing seat', '[1, 0, 0]', 10);
set local role regress_leak_bypass;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A41 without RLS' as attack, string_agg(content, ', ' order by content) as bypass_gets
from (select content from bulkhead.chunks order by embedding <=> '[1, 0, 0]' limit 10) nearest;

-- A42: after A's data moves to A's own HNSW index, B's search still never reaches it (B has no
-- index: exact over B's rows), and A's index holds A's rows only.
reset role;
select bulkhead.build_tenant_index('00000000-0000-4000-8000-00000000000a') is not null as a_indexed;
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A42 after A''s index' as attack, string_agg(content, ', ') as b_gets from bulkhead.tenant_search('[1, 0, 0]', 10);
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
select 'A42 A on its index' as attack, (select path from bulkhead.tenant_search_path()) like 'hnsw:%' as a_indexed,
    string_agg(content, ', ') as a_gets from bulkhead.tenant_search('[1, 0, 0]', 10);

-- A43: B builds an index over A's rows, or reads A's index path: refused, and nothing of A's.
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A43 build A''s index' as attack,
    pg_temp.attempt($q$select bulkhead._build_tenant_index('00000000-0000-4000-8000-00000000000a')$q$) as app_result;
select 'A43 A''s settings' as attack, count(*) as rows_seen from bulkhead.retrieval_settings
where tenant_id = '00000000-0000-4000-8000-00000000000a';

-- A44: B writes chunks into A's document, or readdresses a sync job to another namespace.
select 'A44 chunk into A''s document' as attack, pg_temp.attempt($q$insert into bulkhead.chunks
    (tenant_id, document_id, ordinal, content, embedding)
    select '00000000-0000-4000-8000-00000000000a', d.id, 9, 'injected', '[1, 0, 0]'
    from bulkhead.documents d$q$) as app_result;
select 'A44 write the outbox' as attack, pg_temp.attempt($q$insert into bulkhead.pinecone_outbox
    (tenant_id, namespace, chunk_id, op) values ('00000000-0000-4000-8000-00000000000b', 'tenant-a', gen_random_uuid(), 'delete')$q$) as app_result;
set local role regress_leak_worker;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A44 worker readdresses a job' as attack,
    pg_temp.attempt($q$update bulkhead.pinecone_outbox set namespace = 'tenant-a'$q$) as worker_result;
set local role regress_leak_writer;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
savepoint readdress;
select 'A44 with an UPDATE grant on namespace' as attack,
    pg_temp.attempt($q$update bulkhead.pinecone_outbox set namespace = 'tenant-a'$q$) as writer_result;
rollback to savepoint readdress;
reset role;
select 'A44 queued namespaces' as attack, string_agg(distinct tenant_id::text || '=' || namespace, ', ') as jobs
from bulkhead.pinecone_outbox;

-- A45: B reads A's queued completion (its rendered prompt is A's data): the job table and
-- completion_result show B nothing, the same as for a job that does not exist.
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
create temp table a_completion as
select bulkhead.complete('leak-tpl', '{"q": "quote my price"}', 'leak-model', 10) as id;
grant select on a_completion to public;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A45 B reads A''s completion' as attack,
    pg_temp.attempt($q$select * from bulkhead.jobs where kind = 'completion'$q$) as jobs_seen,
    regexp_replace(pg_temp.attempt($q$select * from bulkhead.completion_result((select id from a_completion))$q$),
                   '[0-9]{6,}', '<job>') as result_seen;
set local role regress_leak_bypass;
select 'A45 as BYPASSRLS' as attack,
    pg_temp.attempt($q$select * from bulkhead.jobs where kind = 'completion'$q$) as jobs_seen;

-- A46: A's own app settles its queued call's reservation at zero before the worker calls the
-- provider (a free call): refused. The same settle of a reservation it admitted for itself works.
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
savepoint settle;
select 'A46 settle the queued reservation' as attack,
    regexp_replace(pg_temp.attempt($q$select bulkhead.ledger_record((select (payload ->> 'reservation')::uuid from bulkhead.jobs
        where id = (select id from a_completion)), '{"prompt_tokens": 0, "completion_tokens": 0}', 'free-call')$q$),
                   '[0-9a-f]{8}-[0-9a-f-]{27}', '<uuid>') as app_result;
select 'A46 settle its own reservation' as attack,
    pg_temp.attempt($q$select bulkhead.ledger_record('00000000-0000-4000-8000-0000000000a1',
        '{"prompt_tokens": 0, "completion_tokens": 0}', 'own-call')$q$) as app_result;
rollback to savepoint settle;

-- A47: the app reads the usage drift (finance data across tenants); bulkhead_admin may.
select 'A47 app reads usage drift' as attack,
    pg_temp.attempt($q$select * from bulkhead.usage_drift_report$q$) as app_result;
set local role regress_leak_admin;
select 'A47 as bulkhead_admin' as attack,
    pg_temp.attempt($q$select * from bulkhead.usage_drift_report$q$) as admin_result;
reset role;

-- A48: admission in shared memory (bulkhead.memory_admission). B neither sees, settles nor
-- releases A's in-memory reservation: memory is keyed by database and tenant, and the release
-- function is the meter's. The twin: A settles it.
set local bulkhead.memory_admission = on;
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
create temp table a_memory as select bulkhead.budget_check('leak-model', 10, 10) as id;
grant select on a_memory to public;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A48 B lists A''s holds' as attack, count(*) as seen from bulkhead._open_in_memory();
select 'A48 B settles A''s reservation' as attack,
    regexp_replace(pg_temp.attempt($q$select bulkhead.ledger_record((select id from a_memory),
        '{"prompt_tokens": 0, "completion_tokens": 0}', 'b-takes-it')$q$),
                   '[0-9a-f]{8}-[0-9a-f-]{27}', '<uuid>') as b_result;
select 'A48 B releases a hold' as attack,
    pg_temp.attempt($q$select bulkhead._release_in_memory(1, 0, 0, 0)$q$) as b_result;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
select 'A48 A lists its holds' as attack, count(*) as seen from bulkhead._open_in_memory();
select 'A48 A settles its reservation' as attack,
    pg_temp.attempt($q$select bulkhead.ledger_record((select id from a_memory),
        '{"prompt_tokens": 0, "completion_tokens": 0}', 'a-memory-call')$q$) as a_result;
reset role;
set local bulkhead.memory_admission = off;

-- A49: the app locks a table every tenant searches (LOCK TABLE needs a write privilege for any
-- mode above ACCESS SHARE, and applications hold none on documents or chunks: ingest_document
-- and delete_document write for them), or a tenant's retrieval row (the mutex of its index build
-- and Pinecone sync: FOR UPDATE needs UPDATE). The twin: a role with the write grants the app
-- used to hold locks chunks against every tenant.
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A49 lock chunks' as attack,
    pg_temp.attempt($q$lock table bulkhead.chunks in access exclusive mode$q$) as app_result;
select 'A49 lock documents' as attack,
    pg_temp.attempt($q$lock table bulkhead.documents in share row exclusive mode$q$) as app_result;
select 'A49 lock B''s retrieval row' as attack,
    pg_temp.attempt($q$select count(*) from (select from bulkhead.retrieval_settings for key share) l$q$) as app_result;
reset role;
grant insert, update, delete on bulkhead.chunks to regress_leak_writer;
set local role regress_leak_writer;
savepoint lock_twin;
select 'A49 with the old write grants' as attack,
    pg_temp.attempt($q$lock table bulkhead.chunks in access exclusive mode$q$) as writer_result;
rollback to savepoint lock_twin;
reset role;

-- A50: index names, definitions and scan counts are public (pg_indexes, pg_stat_user_indexes, to
-- any role): a name or a predicate naming the tenant told everyone which tenant is large and how
-- often it searches. Names are random and predicates name a random key now; only the tenant
-- reads its own (retrieval_settings, under RLS).
set local role regress_leak_admin;
select bulkhead.build_tenant_index('00000000-0000-4000-8000-00000000000a') is not null as a_index_built;
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A50 find A''s index by A''s id' as attack, count(*) as found from pg_indexes
where indexname like '%' || replace('00000000-0000-4000-8000-00000000000a', '-', '') || '%'
   or indexname like '%0000000a%' or indexdef like '%00000000-0000-4000-8000-00000000000a%';
select 'A50 index definitions name no tenant' as attack, count(*) filter (where indexdef ~ '[0-9a-f]{8}-[0-9a-f]{4}-') as naming_a_uuid,
    count(*) filter (where indexdef like '%WHERE (index_key = %') as keyed_by_opaque_key
from pg_indexes where schemaname = 'bulkhead' and indexname like 'chunks_hnsw_%';
select 'A50 B reads A''s index name' as attack, count(*) as seen from bulkhead.retrieval_settings where index_name is not null;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
select 'A50 the twin: A finds its own index by the name it may read' as attack, count(*) as found from pg_indexes
where indexname = (select index_name from bulkhead.retrieval_settings);
reset role;

-- A51: ids a tenant sees say nothing of the others' activity. Between B's two activations A
-- activates five times: with one sequence (the twin, as prompt_releases.id was) B's ids would
-- differ by six; they are random now, and B's own history is numbered by its own moves only
-- (seq 2 and 3, after its first activation at setup).
create temp sequence pg_temp.old_release_ids;
grant usage on sequence pg_temp.old_release_ids to public;
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select bulkhead.publish_prompt('00000000-0000-4000-8000-00000000000b', 'leak-tpl', '{"display_name": "B2", "custom_instructions": "B2"}');
create temp table b_releases (id bigint, seq int, twin bigint);
select bulkhead.activate_prompt('00000000-0000-4000-8000-00000000000b', 'leak-tpl', 2);
insert into b_releases select id, seq, nextval('pg_temp.old_release_ids') from bulkhead.prompt_releases order by seq desc limit 1;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
select count(*) as a_activations from (select bulkhead.activate_prompt('00000000-0000-4000-8000-00000000000a', 'leak-tpl', 1),
    nextval('pg_temp.old_release_ids') from generate_series(1, 5)) moves;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select bulkhead.activate_prompt('00000000-0000-4000-8000-00000000000b', 'leak-tpl', 1);
insert into b_releases select id, seq, nextval('pg_temp.old_release_ids') from bulkhead.prompt_releases order by seq desc limit 1;
select 'A51 B''s release ids' as attack,
    max(id) - min(id) = 6 as ids_count_a, array_agg(seq order by seq) as b_seq,
    max(twin) - min(twin) as twin_difference, bool_and(id between 1 and 9007199254740991) as within_2_53
from b_releases;
reset role;

-- A56: the gateway's API keys. B's app lists keys: none of A's, and never a hash; it can neither
-- revoke A's key nor admit a call as A through the gateway's function (only bulkhead_gateway
-- may name a tenant); a forged key hash authenticates nobody. The twin: without row level
-- security (a BYPASSRLS member of bulkhead_app) A's key is listed.
select bulkhead.create_api_key('00000000-0000-4000-8000-00000000000a', 'leak-a-key') as a_secret \gset
create temp table a_key as
select id from bulkhead.api_keys where key_hash = sha256(convert_to(:'a_secret', 'UTF8'));
grant select on a_key to public;
create role regress_leak_gateway in role bulkhead_gateway;
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A56 B lists keys' as attack, count(*) as seen from bulkhead.api_keys;
select 'A56 B reads hashes' as attack, pg_temp.attempt($q$select count(key_hash)::text from bulkhead.api_keys$q$) as b_result;
select 'A56 B revokes A''s key' as attack, pg_temp.attempt($q$select bulkhead.revoke_api_key((select id from a_key))::text$q$) as b_result;
select 'A56 B admits as A' as attack, pg_temp.attempt($q$select reservation::text from bulkhead.gateway_admit(null,
    '00000000-0000-4000-8000-00000000000a', 'openai', 'chat', 'leak-model', 1, 1, 1, 1, null, null, '10 minutes')$q$) as b_result;
reset role;
set local role regress_leak_gateway;
select 'A56 forged key hash' as attack, pg_temp.attempt($q$select reservation::text from bulkhead.gateway_admit(
    sha256(convert_to('bk_guess', 'UTF8')), null, 'openai', 'chat', 'leak-model', 1, 1, 1, 1, null, null, '10 minutes')$q$) as result;
reset role;
set local role regress_leak_bypass;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A56 twin: BYPASSRLS lists keys' as attack, count(*) as seen from bulkhead.api_keys;
reset role;

-- A57: evals. A and B hold a case with the same text (A's also carries a secret); A has a run.
-- B's app lists every eval table: none of A's rows. The twin: a BYPASSRLS member of
-- bulkhead_app sees A's case text.
reset role;
select bulkhead._set_tenant_within_function(null);
set local role regress_leak_admin;
select bulkhead.set_eval_set(t, 'leak-tpl', 'leak-model') from unnest(array[
    '00000000-0000-4000-8000-00000000000a', '00000000-0000-4000-8000-00000000000b']::uuid[]) t;
select bulkhead.add_eval_case(t, 'leak-tpl', jsonb_build_object('q', 'same question', 'note', n),
                              '[{"type": "contains", "value": "same"}]') is not null as added
from (values ('00000000-0000-4000-8000-00000000000a'::uuid, 'A secret eval note'),
             ('00000000-0000-4000-8000-00000000000b'::uuid, 'B note')) c(t, n);
select bulkhead.set_budget('00000000-0000-4000-8000-00000000000a', 100, 100000, 100000, 1.00);
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
create temp table a_run as select bulkhead.start_eval('leak-tpl', 1) as id;
grant select on a_run to public;
select bulkhead._set_tenant_within_function(null);
reset role;
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A57 B lists eval rows' as attack,
    (select string_agg(vars ->> 'note', ',') from bulkhead.eval_cases) as cases,
    (select count(*) from bulkhead.eval_sets) as sets,
    (select count(*) from bulkhead.eval_runs) as runs,
    (select count(*) from bulkhead.eval_results) as results,
    pg_temp.attempt($q$select count(*)::text from bulkhead.eval_calls$q$) as calls;
reset role;
set local role regress_leak_bypass;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A57 twin: BYPASSRLS lists cases' as attack, string_agg(vars ->> 'note', ',' order by tenant_id) as cases
from bulkhead.eval_cases;
reset role;

-- A58: B's app calls every eval function on A's data: A's report, A's run status, A's cases
-- and rules, a run for A, the cross-tenant summary, the scorer's hook. The twin: the same
-- report and status in A's own context.
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A58 B reads A''s report' as attack, regexp_replace(
    pg_temp.attempt($q$select count(*)::text from bulkhead.eval_report((select id from a_run))$q$), '[0-9]{6,}', '<run>') as b_result;
select 'A58 B reads A''s run status' as attack,
    (select count(*) from bulkhead.eval_run_status(array[(select id from a_run)])) as b_rows;
select 'A58 B adds a case for A' as attack,
    pg_temp.attempt($q$select bulkhead.add_eval_case('00000000-0000-4000-8000-00000000000a', 'leak-tpl', '{}', '[{"type": "is_json"}]')::text$q$) as b_result;
select 'A58 B removes A''s case' as attack,
    pg_temp.attempt($q$select bulkhead.remove_eval_case('00000000-0000-4000-8000-00000000000a', gen_random_uuid())::text$q$) as b_result;
select 'A58 B sets A''s rules' as attack,
    pg_temp.attempt($q$select bulkhead.set_eval_set('00000000-0000-4000-8000-00000000000a', 'leak-tpl', 'leak-model')::text$q$) as b_result;
select 'A58 B starts A''s run' as attack,
    pg_temp.attempt($q$select bulkhead.start_eval('leak-tpl', 1, '00000000-0000-4000-8000-00000000000a')::text$q$) as b_result;
select 'A58 B reads the summary' as attack,
    pg_temp.attempt($q$select count(*)::text from bulkhead.eval_summary()$q$) as b_result;
select 'A58 B calls the scorer''s hook' as attack,
    pg_temp.attempt($q$select bulkhead._eval_call_closed(1)::text$q$) as b_result;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
select 'A58 twin: A reads its report' as attack,
    (select count(*) from bulkhead.eval_report((select id from a_run))) as a_rows,
    (select count(*) from bulkhead.eval_run_status(array[(select id from a_run)])) as a_status;
reset role;

-- A59: an end user (PostgREST, B's JWT) has no eval privilege at all: it can neither read a
-- case nor add one, not even its own tenant's. The twin: B's trusted backend reads B's.
create role regress_leak_end_user in role bulkhead_end_user;
set local role regress_leak_end_user;
select set_config('request.jwt.claims', '{"app_metadata": {"tenant_id": "00000000-0000-4000-8000-00000000000b"}}', true);
select 'A59 end user reads cases' as attack,
    pg_temp.attempt($q$select count(*)::text from bulkhead.eval_cases$q$) as end_user_result;
select 'A59 end user adds a case' as attack,
    pg_temp.attempt($q$select bulkhead.add_eval_case('00000000-0000-4000-8000-00000000000b', 'leak-tpl', '{}', '[{"type": "is_json"}]')::text$q$) as end_user_result;
select set_config('request.jwt.claims', '', true);
reset role;
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A59 twin: B''s backend reads B''s cases' as attack, count(*) as seen from bulkhead.eval_cases;
reset role;

-- A60: forging the gate's evidence. B's app may not write a run, a result or a pass, so its
-- unevaluated version 2 stays off. The twin: a role granted those writes (for its own tenant,
-- under RLS) forges a pass and the gate lets version 2 through: the missing grant is the
-- protection, and RLS keeps even that role off A.
set local role regress_leak_admin;
select bulkhead.publish_prompt('00000000-0000-4000-8000-00000000000b', 'leak-tpl', '{"display_name": "B2", "custom_instructions": "x"}') as b_v2;
select bulkhead._set_tenant_within_function(null);
reset role;
set bulkhead.eval_gate_empty_set = 'refuse';
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A60 B forges a run' as attack, pg_temp.attempt($q$insert into bulkhead.eval_runs (tenant_id, id, template_name, version, status, started_by)
    values ('00000000-0000-4000-8000-00000000000b', 42, 'leak-tpl', 2, 'passed', 'me') returning 'forged'$q$) as app_result;
select 'A60 B forges a pass' as attack, pg_temp.attempt($q$insert into bulkhead.prompt_eval_passes (tenant_id, template_name, version, eval_run_id, set_digest)
    values ('00000000-0000-4000-8000-00000000000b', 'leak-tpl', 2, 42, 'x') returning 'forged'$q$) as app_result;
select 'A60 B activates version 2' as attack,
    pg_temp.attempt($q$select bulkhead.activate_prompt('00000000-0000-4000-8000-00000000000b', 'leak-tpl', 2)::text$q$) as app_result;
reset role;
create temp table b_digest as
select bulkhead._eval_set_digest('00000000-0000-4000-8000-00000000000b', 'leak-tpl') as digest;
grant select on b_digest to public;
grant insert on bulkhead.eval_runs, bulkhead.prompt_eval_passes to regress_leak_writer;
set local role regress_leak_writer;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A60 twin: with the grant, for A' as attack, pg_temp.attempt($q$insert into bulkhead.eval_runs (tenant_id, id, template_name, version, status, started_by)
    values ('00000000-0000-4000-8000-00000000000a', 42, 'leak-tpl', 1, 'passed', 'me') returning 'forged'$q$) as writer_result;
select 'A60 twin: with the grant, for B' as attack, pg_temp.attempt($q$with run as (
        insert into bulkhead.eval_runs (tenant_id, id, template_name, version, status, started_by)
        values ('00000000-0000-4000-8000-00000000000b', 42, 'leak-tpl', 2, 'passed', 'me') returning id)
    insert into bulkhead.prompt_eval_passes (tenant_id, template_name, version, eval_run_id, set_digest)
    select '00000000-0000-4000-8000-00000000000b', 'leak-tpl', 2, id, (select digest from b_digest) from run
    returning 'forged'$q$) as writer_result;
select 'A60 twin: the forged pass opens the gate' as attack,
    pg_temp.attempt($q$select bulkhead.activate_prompt('00000000-0000-4000-8000-00000000000b', 'leak-tpl', 2)::text$q$) as writer_result;
reset role;
set bulkhead.eval_gate_empty_set = 'allow';

-- A61: provisioning. A has a provisioned OpenAI project (its provision row and a step, as the
-- worker records them). B's app can neither read A's provision, steps or revocations, nor
-- provision, rotate or read the status of A, nor queue provisioning jobs; the worker records
-- nothing for a job it does not hold. The twins: A's own context shows its rows to the admin,
-- a BYPASSRLS role with the grant reads A's row from B's context.
insert into bulkhead.provider_provisions (tenant_id, provider, state, project_name, project_id, secret_ref)
values ('00000000-0000-4000-8000-00000000000a', 'openai', 'active', 'bulkhead-leak-a', 'proj_leak_a',
        'file:/secrets/bulkhead-00000000-0000-4000-8000-00000000000a-openai-svc_a.key');
insert into bulkhead.provisioning_steps (tenant_id, provider, step, state, detail)
values ('00000000-0000-4000-8000-00000000000a', 'openai', 'project', 'done', 'proj_leak_a (created)');
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A61 B reads provisions' as attack, pg_temp.attempt($q$select count(*)::text from bulkhead.provider_provisions$q$) as app_result;
select 'A61 B reads steps' as attack, pg_temp.attempt($q$select count(*)::text from bulkhead.provisioning_steps$q$) as app_result;
select 'A61 B reads revocations' as attack, pg_temp.attempt($q$select count(*)::text from bulkhead.provider_revocations$q$) as app_result;
select 'A61 B reads A''s status' as attack,
    pg_temp.attempt($q$select count(*)::text from bulkhead.provisioning_status('00000000-0000-4000-8000-00000000000a')$q$) as app_result;
select 'A61 B rotates A' as attack,
    pg_temp.attempt($q$select bulkhead.rotate_credential('00000000-0000-4000-8000-00000000000a', 'openai')::text$q$) as app_result;
select 'A61 B provisions A' as attack,
    pg_temp.attempt($q$select bulkhead.provision_provider('00000000-0000-4000-8000-00000000000a', 'openai')::text$q$) as app_result;
select 'A61 B queues a provisioning job' as attack,
    pg_temp.attempt($q$select bulkhead.enqueue_job('provider_limits', '{"provider": "openai"}')::text$q$) as app_result;
select 'A61 B queues revocations of A' as attack,
    pg_temp.attempt($q$select bulkhead._queue_provider_revocations('00000000-0000-4000-8000-00000000000a', gen_random_uuid())::text$q$) as app_result;
reset role;
set local role regress_leak_worker;
select 'A61 worker records for a job it does not hold' as attack,
    pg_temp.attempt($q$select bulkhead.provisioning_step(1, 'nobody', 'project', 'done', 'x', '{"project_id": "proj_x"}')::text$q$) as worker_result;
reset role;
set local role regress_leak_admin;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A61 admin in B''s context' as attack, pg_temp.attempt($q$select project_id from bulkhead.provider_provisions$q$) as admin_result;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
select 'A61 twin: admin in A''s context' as attack, pg_temp.attempt($q$select project_id from bulkhead.provider_provisions$q$) as admin_result;
select bulkhead.set_tenant(null);
reset role;
grant select on bulkhead.provider_provisions to regress_leak_bypass;
set local role regress_leak_bypass;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select 'A61 twin: BYPASSRLS with the grant, from B' as attack, pg_temp.attempt($q$select project_id from bulkhead.provider_provisions$q$) as bypass_result;
reset role;

-- A29: shadowing bulkhead.current_tenant() through search_path changes nothing: policies hold
-- the function itself, not its name.
set local role regress_leak_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
create function pg_temp.current_tenant() returns uuid language sql
    as $$ select '00000000-0000-4000-8000-00000000000a'::uuid $$;
set local search_path = pg_temp, bulkhead, public;
select 'A29 shadowed current_tenant' as attack, pg_temp.visible_names() as app_sees;
reset search_path;
rollback;
