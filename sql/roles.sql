-- Bulkhead's group roles: bulkhead_app (the trusted backend, which chooses its tenant),
-- bulkhead_end_user (end users: the tenant comes only from verified JWT claims), bulkhead_gateway
-- (the `bulkhead gateway` process: it authenticates callers and admits their calls), bulkhead_admin
-- and bulkhead_worker are granted to login roles, as are bulkhead_support (customer success: prompts,
-- evals, tenant status) and bulkhead_finance (read-only usage and budgets) for `bulkhead console`;
-- bulkhead_reporter only owns the console's cross-tenant sums (tenant_overview, usage_by_tenant); bulkhead_meter only owns the metering functions (budget_check, ledger_record...), which
-- run as it so that no caller needs write access to budget state or the ledger. Roles are cluster-wide: the first database that installs the
-- extension creates them, later ones reuse them. A pre-existing role that could bypass RLS would
-- void every guarantee, so installation refuses it instead of silently using it.
do $roles$
declare
    role_name text;
begin
    foreach role_name in array array['bulkhead_app', 'bulkhead_admin', 'bulkhead_worker', 'bulkhead_meter', 'bulkhead_end_user', 'bulkhead_gateway',
                                          'bulkhead_support', 'bulkhead_finance', 'bulkhead_reporter'] loop
        if exists (
            select from pg_catalog.pg_roles
            where rolname = role_name and (rolsuper or rolbypassrls)
        ) then
            raise exception 'role % can bypass row level security', role_name
                using errcode = '42501',
                      detail = 'Bulkhead''s roles must not be SUPERUSER or BYPASSRLS, or tenant isolation would not apply to them.',
                      hint = pg_catalog.format('Run ALTER ROLE %I NOSUPERUSER NOBYPASSRLS, then create the extension again.', role_name);
        end if;
        -- The owners of the functions that run for every caller must be nobody's: a login in
        -- either would read every tenant (bulkhead.doctor() checks this later too).
        if role_name in ('bulkhead_meter', 'bulkhead_reporter') and exists (
            select from pg_catalog.pg_roles r
            where r.rolname = role_name
              and (r.rolcanlogin or exists (
                       select from pg_catalog.pg_auth_members m join pg_catalog.pg_roles x on x.oid = m.member
                       where m.roleid = r.oid and (m.inherit_option or m.set_option or m.admin_option)
                         -- the installer (PostgreSQL 16 makes a CREATEROLE creator its admin)
                         and x.rolname <> current_user and not x.rolsuper))
        ) then
            raise exception 'role % can log in or has members', role_name
                using errcode = '42501',
                      detail = 'It owns functions that run for every tenant; nobody may use it.',
                      hint = pg_catalog.format('Run ALTER ROLE %I NOLOGIN and revoke it from its members, then create the extension again.', role_name);
        end if;
        if not exists (select from pg_catalog.pg_roles where rolname = role_name) then
            begin
                execute pg_catalog.format('create role %I nologin', role_name);
            exception when duplicate_object then
                null;  -- another database created it concurrently
            end;
        end if;
    end loop;
end
$roles$;
