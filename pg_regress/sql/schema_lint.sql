-- Schema lint: the rules every table and function in schema bulkhead must follow.
-- Run once on the real schema (expect no violations), then once with planted bad objects to show
-- that every rule can fail.
begin;
set client_min_messages = warning;

create view pg_temp.schema_lint as
with tables as (
    select c.oid, c.oid::regclass::text as name, c.relrowsecurity, c.relforcerowsecurity,
           exists (select from pg_attribute a where a.attrelid = c.oid and a.attname = 'tenant_id'
                   and a.attnum > 0 and not a.attisdropped) as has_tenant_id,
           (select attnum from pg_attribute a where a.attrelid = c.oid and a.attname = 'tenant_id'
            and not a.attisdropped) as tenant_attnum
    from pg_class c
    where c.relnamespace = 'bulkhead'::regnamespace and c.relkind in ('r', 'p')
),
-- Receipts outlive their tenant and hold no tenant data: exempt from tenant keys, by the
-- bulkhead:kept marker on their tenant_id (as bulkhead.tenant_scoped_tables() reads it).
tenant_tables as (
    select * from tables t
    where has_tenant_id
      and coalesce(col_description(t.oid, t.tenant_attnum), '') not like 'bulkhead:kept%'
),
-- Columns outside tenant tables whose name says they may name a tenant, its credential, its
-- provider project or its namespace: each must declare how deletion treats it.
naming_columns as (
    select t.name, a.attname, col_description(t.oid, a.attnum) as note
    from tables t join pg_attribute a on a.attrelid = t.oid and a.attnum > 0 and not a.attisdropped
    where t.name <> 'bulkhead.tenants'
      and t.oid not in (select oid from tenant_tables)
      and a.attname ~ '(tenant|project|workspace|credential|namespace)'
),
-- Tables whose rows a dump leaves out: each install writes its own.
dump_exempt (name) as (
    -- The workers' wake-up channel names: a secret of each installation.
    values ('bulkhead.notification_channels')
),
registered_for_dump (oid) as (
    select unnest(e.extconfig) from pg_extension e where e.extname = 'bulkhead'
),
definer_allow_list (proname) as (
    -- The metering functions: callers may not write budget state or the ledger themselves.
    -- The table path of budget_check and the reads memory admission makes as bulkhead_meter.
    values ('_budget_check_table'::name), ('_admission_terms'), ('_admission_load'), ('_expire_held_in_memory'), ('ledger_record'), ('_settle_queued_call'), ('expire_reservations'), ('expire_all_reservations'),
    -- The prompt writers: every skeleton and version passes the template checks on the way in.
           ('set_skeleton'), ('publish_prompt'), ('activate_prompt'), ('rollback_prompt'),
    -- Checks at commit, as any role, that deleted prompt rows went with their tenant.
           ('_check_prompt_row_deleted_with_tenant'),
    -- chunks' owner builds and drops a tenant's own index; the outbox is written by a trigger only.
           ('_build_tenant_index'), ('build_index_for_job'), ('_drop_tenant_index'),
           ('_drop_deleted_tenant_index'),
           ('_queue_pinecone_sync'), ('_queue_namespace_deletion'),
    -- Applications queue jobs and read their status, never the schedule itself.
           ('enqueue_job'), ('job_status'),
    -- Only complete() queues a completion (admitted first); results are read, never written, by apps;
    -- a dead completion releases its reservation.
           ('complete'), ('embed_document'), ('completion_result'), ('_cancel_reservation'),
    -- The Pinecone sweep learns which tenants have pending changes (ids only).
           ('pinecone_pending_tenants'),
    -- Reconciliation compares every tenant's ledger (each read in its own context) with a provider's report.
           ('reconcile_usage'),
    -- Only the meter reads a kept admission refusal; applications meet it only as the raise.
           ('_raise_refusal'),
    -- Applications write documents and chunks only through these, so they hold no table
    -- privilege that could lock the tables against other tenants; the retrieval row lock is
    -- open to roles that may update the row only.
           ('ingest_document'), ('delete_document'), ('_lock_tenant_retrieval'),
    -- The owner of the tenant indexes drops those whose drop was deferred.
           ('drop_pending_indexes'),
    -- Wakes the worker on its secret channel names, which only the meter and the worker read.
           ('_notify'),
    -- The gateway (bulkhead_gateway only) authenticates by a key's hash before it knows the
    -- tenant, then admits, settles and releases in that tenant's context; the control plane
    -- finds a key's tenant to revoke it.
           ('gateway_admit'), ('gateway_settle'), ('gateway_release'), ('gateway_inactive_tenants'), ('gateway_persist_holds'),
           ('gateway_models'), ('gateway_key_valid'), ('_api_key_tenant'),
    -- Eval cases are written only through their checks; runs are queued through complete()'s
    -- path; the worker's settle records a call's outcome and its eval_score job scores it (as the
    -- job's holder); the gate on the active
    -- pointer reads the tenant's evals and writes the history whoever moves it.
           ('set_eval_set'), ('add_eval_case'), ('remove_eval_case'), ('start_eval'), ('_eval_call_closed'),
           ('_eval_call_closed_safely'), ('score_eval_job'), ('_eval_gate_on_pointer'), ('set_eval_budget'),
    -- Provisioning: only the control plane queues it (never a job kind that spends); the worker
    -- records steps and facts (ids and references, never a key) only of a job it holds, and
    -- carries out revocations that outlive their tenant; set_budget and set_credential keep a
    -- provision's limits and state in step.
           ('_provision'), ('_queue_provisioning'), ('_queue_rotation'), ('_queue_provider_revocations'),
           ('provisioning_job'), ('provisioning_step'), ('provisioned_credential'),
           ('provider_revocations_due'), ('provider_revocation_done'),
           ('_provider_limits_follow_budget'), ('_provisioned_key_attached'), ('_limits_follow'),
           ('_provider_limits_follow_defaults'), ('_register_credential_project'), ('provider_resource_free'),
           -- The console's sums (console.sql), as bulkhead_reporter.
           ('tenant_overview'), ('usage_by_tenant'), ('drift_by_tenant'), ('rebuild_usage_rollup'), ('tenant_daily_usage'), ('end_budget_raise'), ('_queue_budget_raise_end')
),
-- Extra policies on tenant tables (beside the one on current_tenant() for all roles), each read
-- only by one SECURITY DEFINER function that returns no tenant data.
cross_tenant_policy_allow_list (table_name, polname) as (
    -- pinecone_pending_tenants(): which tenants have unsynced chunk changes (tenant ids only).
    values ('bulkhead.pinecone_outbox', 'meter_lists_pending'::name),
    -- _gateway_authenticate() (in gateway_admit and gateway_models) finds a key by its hash and
    -- returns only the key's own tenant; _api_key_tenant() returns a key's tenant id.
           ('bulkhead.api_keys', 'gateway_lookup'),
    -- bulkhead_reporter owns only tenant_overview(), usage_by_tenant(), drift_by_tenant() and
    -- rebuild_usage_rollup(): sums and limits per tenant, never a row's content.
           ('bulkhead.budgets', 'reporter_sums'), ('bulkhead.budget_state', 'reporter_sums'),
           ('bulkhead.ledger', 'reporter_sums'), ('bulkhead.usage_daily', 'reporter_sums'),
           ('bulkhead.budget_raises', 'reporter_sums'), ('bulkhead.usage_latest', 'reporter_sums')
),
unpinned_allow_list (proname) as (
    -- Runs no SQL; a SET clause would add a settings save/restore to every policy evaluation.
    values ('current_tenant'::name),
    -- Admission in memory: per call only shared memory; its slow paths call only schema-qualified,
    -- pinned meter functions with typed parameters, so the caller's search_path resolves nothing.
           ('budget_check'), ('_admit_in_memory'), ('_admit_eval_in_memory'), ('_admission_in_memory')
)
select 'rls not enabled and forced' as rule, name as object
from tables where not (relrowsecurity and relforcerowsecurity)
union all
-- pg_dump keeps an extension's rows only for the tables (and the identity counters) it registers.
select 'table not registered for dumping', t.name
from tables t
where t.name not in (select name from dump_exempt) and t.oid not in (select oid from registered_for_dump)
union all
select 'identity sequence not registered for dumping', s.oid::regclass::text
from pg_class s
join pg_depend d on d.classid = 'pg_class'::regclass and d.objid = s.oid and d.deptype in ('a', 'i')
join tables t on t.oid = d.refobjid
where s.relkind = 'S' and t.name not in (select name from dump_exempt)
  and s.oid not in (select oid from registered_for_dump)
union all
select 'tenant_id is nullable', name
from tenant_tables t
where exists (select from pg_attribute a where a.attrelid = t.oid and a.attname = 'tenant_id' and not a.attnotnull)
union all
select 'tenant table without a policy', name
from tenant_tables t where not exists (select from pg_policy p where p.polrelid = t.oid)
union all
select 'tenant table without a foreign key to bulkhead.tenants', name
from tenant_tables t
where not exists (select from pg_constraint con
                  where con.conrelid = t.oid and con.contype = 'f'
                    and con.confrelid = 'bulkhead.tenants'::regclass and con.conkey = array[t.tenant_attnum])
union all
-- A policy for some roles only leaves the others (the control plane's deletion among them) with no rows.
select 'tenant table policy not for all roles', t.name || ' ' || p.polname
from tenant_tables t join pg_policy p on p.polrelid = t.oid
where p.polroles <> '{0}'
  and (t.name, p.polname) not in (select table_name, polname from cross_tenant_policy_allow_list)
union all
select 'tenant table policy not on current_tenant()', t.name || ' ' || p.polname
from tenant_tables t join pg_policy p on p.polrelid = t.oid
where (pg_get_expr(p.polqual, p.polrelid) !~ 'bulkhead\.current_tenant\(\)'
       or (p.polwithcheck is not null and pg_get_expr(p.polwithcheck, p.polrelid) !~ 'bulkhead\.current_tenant\(\)'))
  and (t.name, p.polname) not in (select table_name, polname from cross_tenant_policy_allow_list)
union all
select 'unique key without tenant_id', t.name || ' ' || i.indexrelid::regclass::text
from tenant_tables t join pg_index i on i.indrelid = t.oid
where i.indisunique and not (t.tenant_attnum = any (i.indkey::int2[]))
union all
select 'foreign key without tenant_id', t.name || ' ' || con.conname
from tenant_tables t join pg_constraint con on con.conrelid = t.oid and con.contype = 'f'
where not (t.tenant_attnum = any (con.conkey))
union all
select 'security definer function not allow-listed or search_path not pinned',
       p.oid::regprocedure::text
from pg_proc p
where p.pronamespace = 'bulkhead'::regnamespace and p.prosecdef
  and (p.proname not in (select proname from definer_allow_list where proname is not null)
       or not exists (select from unnest(p.proconfig) s where s like 'search\_path=%'))
union all
select 'security definer function owned by a role that bypasses RLS', p.oid::regprocedure::text
from pg_proc p join pg_roles r on r.oid = p.proowner
where p.pronamespace = 'bulkhead'::regnamespace and p.prosecdef and (r.rolsuper or r.rolbypassrls)
union all
select 'function without a pinned search_path', p.oid::regprocedure::text
from pg_proc p
where p.pronamespace = 'bulkhead'::regnamespace
  and p.proname not in (select proname from unpinned_allow_list)
  and not exists (select from unnest(p.proconfig) s where s like 'search\_path=%')
union all
select 'view without security_invoker', c.oid::regclass::text
from pg_class c
where c.relnamespace = 'bulkhead'::regnamespace and c.relkind = 'v'
  and not coalesce('security_invoker=true' = any (c.reloptions) or 'security_invoker=on' = any (c.reloptions), false)
union all
select 'privilege granted to PUBLIC', c.oid::regclass::text
from pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) acl
where c.relnamespace = 'bulkhead'::regnamespace and acl.grantee = 0
union all
select 'function executable by PUBLIC', p.oid::regprocedure::text
from pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) acl
where p.pronamespace = 'bulkhead'::regnamespace and acl.grantee = 0
union all
select 'column naming a tenant without a deletion marker', name || '.' || attname
from naming_columns
where coalesce(note, '') !~ '^bulkhead:(tenant-ref|tenant-ref-cascade|tenant-credential-ref|tenant-project-ref|kept) '
union all
select 'bulkhead role can bypass RLS', rolname
from pg_roles where rolname in ('bulkhead_app', 'bulkhead_admin', 'bulkhead_worker', 'bulkhead_meter', 'bulkhead_end_user', 'bulkhead_gateway') and (rolsuper or rolbypassrls);

-- The installed schema: no violations.
select rule, object from pg_temp.schema_lint order by rule, object;

-- The deletion list covers exactly the tenant tables the lint sees.
select table_name, deletion_order from bulkhead.tenant_scoped_tables() order by deletion_order desc, table_name::text;
-- And the tables that name a tenant another way, by their declared markers.
select table_name, column_name, marker from bulkhead.tenant_references();

-- Planted violations: each rule fires.
savepoint planted;
create table bulkhead.lint_bad_table (tenant_id uuid not null, email text unique,
    parent uuid references bulkhead.tenants (id));
create table bulkhead.lint_bad_policy (tenant_id uuid);
alter table bulkhead.lint_bad_policy enable row level security;
alter table bulkhead.lint_bad_policy force row level security;
create policy everyone on bulkhead.lint_bad_policy using (true);
create policy app_only on bulkhead.lint_bad_policy to bulkhead_app using (tenant_id = (select bulkhead.current_tenant()));
create function bulkhead.lint_bad_definer() returns int language sql security definer as 'select 1';
create view bulkhead.lint_bad_view as select 1 as one;
-- A table naming tenants and projects with no tenant_id and no marker (usage_drift before the fix).
create table bulkhead.lint_bad_reference (owner_tenant uuid, provider_project_id text);
alter table bulkhead.lint_bad_reference enable row level security;
alter table bulkhead.lint_bad_reference force row level security;
comment on column bulkhead.lint_bad_reference.provider_project_id is 'bulkhead:forgotten not a marker';
grant select on bulkhead.lint_bad_view to public;
-- A table a dump would leave out, and its identity counter.
create table bulkhead.lint_bad_counter (id bigint generated always as identity);
alter role bulkhead_worker bypassrls;
select rule, object from pg_temp.schema_lint order by rule, object;
-- A new tenant table is in the deletion list at once, referencing tables first.
create table bulkhead.lint_child (tenant_id uuid not null, parent_id int not null,
    primary key (tenant_id, parent_id));
create table bulkhead.lint_grandchild (tenant_id uuid not null, parent_id int not null,
    foreign key (tenant_id, parent_id) references bulkhead.lint_child (tenant_id, parent_id));
select table_name, deletion_order from bulkhead.tenant_scoped_tables() order by deletion_order desc, table_name::text;
rollback to savepoint planted;
rollback;
