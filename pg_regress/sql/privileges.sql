-- Privilege matrix: role x object x privilege, for every table, function and the schema.
-- Any change to who may do what shows up as a diff here.
begin;
set client_min_messages = warning;

create temp table roles (role_name name, ord int);
insert into roles values ('bulkhead_app', 1), ('bulkhead_worker', 2), ('bulkhead_admin', 3), ('bulkhead_meter', 4), ('public', 5),
    ('bulkhead_end_user', 6), ('bulkhead_gateway', 7), ('bulkhead_support', 8), ('bulkhead_finance', 9), ('bulkhead_reporter', 10);

-- Tables: S(elect) I(nsert) U(pdate) D(elete) T(runcate) R(eferences) t(rigger); '-' = not held.
select c.oid::regclass as table_name, r.role_name,
       concat(
         case when has_table_privilege(r.role_name, c.oid, 'SELECT') then 'S' else '-' end,
         case when has_table_privilege(r.role_name, c.oid, 'INSERT') then 'I' else '-' end,
         case when has_table_privilege(r.role_name, c.oid, 'UPDATE') then 'U' else '-' end,
         case when has_table_privilege(r.role_name, c.oid, 'DELETE') then 'D' else '-' end,
         case when has_table_privilege(r.role_name, c.oid, 'TRUNCATE') then 'T' else '-' end,
         case when has_table_privilege(r.role_name, c.oid, 'REFERENCES') then 'R' else '-' end,
         case when has_table_privilege(r.role_name, c.oid, 'TRIGGER') then 't' else '-' end
       ) as privileges
from pg_class c cross join roles r
where c.relnamespace = 'bulkhead'::regnamespace and c.relkind in ('r', 'p', 'v', 'm')
order by c.oid::regclass::text, r.ord;

-- Functions: X = may execute; who owns the SECURITY DEFINER ones.
select p.oid::regprocedure as definer_function, pg_get_userbyid(p.proowner) as runs_as
from pg_proc p where p.pronamespace = 'bulkhead'::regnamespace and p.prosecdef order by p.oid::regprocedure::text;
-- Columns the control plane may update in the tenant registry.
select attname as admin_may_update from pg_attribute
where attrelid = 'bulkhead.tenants'::regclass and attnum > 0 and not attisdropped
  and has_column_privilege('bulkhead_admin', 'bulkhead.tenants'::regclass, attnum, 'UPDATE')
order by attnum;
select p.oid::regprocedure as function_name,
       max(case when r.role_name = 'bulkhead_app' and has_function_privilege(r.role_name, p.oid, 'EXECUTE') then 'X' else '-' end) as app,
       max(case when r.role_name = 'bulkhead_worker' and has_function_privilege(r.role_name, p.oid, 'EXECUTE') then 'X' else '-' end) as worker,
       max(case when r.role_name = 'bulkhead_admin' and has_function_privilege(r.role_name, p.oid, 'EXECUTE') then 'X' else '-' end) as admin,
       max(case when r.role_name = 'bulkhead_meter' and has_function_privilege(r.role_name, p.oid, 'EXECUTE') then 'X' else '-' end) as meter,
       max(case when r.role_name = 'bulkhead_end_user' and has_function_privilege(r.role_name, p.oid, 'EXECUTE') then 'X' else '-' end) as end_user,
       max(case when r.role_name = 'bulkhead_gateway' and has_function_privilege(r.role_name, p.oid, 'EXECUTE') then 'X' else '-' end) as gateway,
       max(case when r.role_name = 'bulkhead_support' and has_function_privilege(r.role_name, p.oid, 'EXECUTE') then 'X' else '-' end) as support,
       max(case when r.role_name = 'bulkhead_finance' and has_function_privilege(r.role_name, p.oid, 'EXECUTE') then 'X' else '-' end) as finance,
       max(case when r.role_name = 'bulkhead_reporter' and has_function_privilege(r.role_name, p.oid, 'EXECUTE') then 'X' else '-' end) as reporter,
       max(case when r.role_name = 'public' and has_function_privilege(r.role_name, p.oid, 'EXECUTE') then 'X' else '-' end) as public
from pg_proc p cross join roles r
where p.pronamespace = 'bulkhead'::regnamespace
group by p.oid
order by p.oid::regprocedure::text;

-- Schema: U(sage) C(reate).
select r.role_name,
       concat(case when has_schema_privilege(r.role_name, 'bulkhead', 'USAGE') then 'U' else '-' end,
              case when has_schema_privilege(r.role_name, 'bulkhead', 'CREATE') then 'C' else '-' end) as schema_bulkhead
from roles r order by r.ord;

-- Role attributes: none may log in, bypass RLS or be superuser.
select rolname, rolcanlogin, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb, rolinherit
from pg_roles where rolname in ('bulkhead_app', 'bulkhead_admin', 'bulkhead_worker', 'bulkhead_meter', 'bulkhead_end_user', 'bulkhead_gateway',
    'bulkhead_support', 'bulkhead_finance', 'bulkhead_reporter') order by rolname;
rollback;
