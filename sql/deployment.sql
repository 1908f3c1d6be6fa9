-- Deployment: the end-user role, pgvector in any schema, and bulkhead.doctor().

-- bulkhead_end_user is for end users (PostgREST/Supabase `authenticated`): its tenant comes only
-- from verified JWT claims (bulkhead.current_tenant() reads request.jwt.claims). It holds no
-- privilege that chooses a tenant: not set_tenant, and no function taking a tenant id. It reads
-- and searches its tenant's documents, asks for completions (admitted against its tenant's
-- budget like any call) and reads their results. Budget checks and ledger records, whose numbers
-- the caller supplies, stay with the trusted backend (bulkhead_app).
grant usage on schema bulkhead to bulkhead_end_user;
-- Reads: what its functions read as the end user, no more (not the tenant's settings: custom
-- instructions and banned topics are the tenant's, rendered into prompts as bulkhead_meter).
grant select on bulkhead.retrieval_settings, bulkhead.documents, bulkhead.chunks, bulkhead.prices
    to bulkhead_end_user;
grant execute on function bulkhead.current_tenant(),
    bulkhead.tenant_search(vector, int, jsonb), bulkhead.tenant_search_hybrid(text, vector, int),
    bulkhead.tenant_search_path(), bulkhead._indexed_search_sql(int),
    bulkhead.complete(text, jsonb, text, int, boolean, interval, text, jsonb), bulkhead.completion_result(bigint),
    bulkhead.job_status(bigint),
    bulkhead.input_token_bound(text, text[], boolean), bulkhead._input_token_bound(text, text, text[], boolean)
    to bulkhead_end_user;

-- pgvector may live in any schema (Supabase installs it in `extensions`): every Bulkhead role
-- resolves the vector type and its operators there (the per-tenant index build among them).
do $grant_vector$
begin
    execute pg_catalog.format('grant usage on schema %I to bulkhead_app, bulkhead_admin, bulkhead_worker, bulkhead_meter, bulkhead_end_user',
                              (select n.nspname from pg_catalog.pg_extension e
                               join pg_catalog.pg_namespace n on n.oid = e.extnamespace
                               where e.extname = 'vector'));
end
$grant_vector$;

-- Deployment checks: the mistakes that void Bulkhead's guarantees without any error at run time.
-- One row per finding: (check_name, severity, detail); an empty result means nothing was found.
-- Severity: critical (tenant isolation or budgets do not hold), error (a feature fails),
-- warning (a weakness to fix), info. bulkhead_admin.
create function bulkhead.doctor()
returns table (check_name text, severity text, detail text)
language sql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
    with recursive bulkhead_roles as (
        select r.oid, r.rolname from pg_catalog.pg_roles r
        where r.rolname in ('bulkhead_app', 'bulkhead_admin', 'bulkhead_worker', 'bulkhead_meter', 'bulkhead_end_user',
                            'bulkhead_gateway', 'bulkhead_support', 'bulkhead_finance', 'bulkhead_reporter')
    ),
    -- Every role that holds a Bulkhead role, directly or through others.
    members (member, granted) as (
        select m.member, b.rolname from pg_catalog.pg_auth_members m join bulkhead_roles b on b.oid = m.roleid
        union
        select m.member, members.granted from pg_catalog.pg_auth_members m join members on m.roleid = members.member
    ),
    held as (
        select r.rolname, r.rolsuper, r.rolbypassrls, r.rolinherit, r.rolcanlogin,
               pg_catalog.array_agg(distinct members.granted order by members.granted) as bulkhead_roles
        from members join pg_catalog.pg_roles r on r.oid = members.member
        where r.rolname not in (select rolname from bulkhead_roles)
        group by r.rolname, r.rolsuper, r.rolbypassrls, r.rolinherit, r.rolcanlogin
    ),
    vector_schema as (
        select n.nspname from pg_catalog.pg_extension e join pg_catalog.pg_namespace n on n.oid = e.extnamespace
        where e.extname = 'vector'
    )
    -- Row level security does not apply to these roles: whoever uses them reads every tenant.
    select 'role_bypasses_rls', 'critical',
           pg_catalog.format('role %I is %s and holds %s: row level security does not apply to it, so it reads and writes every tenant''s rows. Use a role without SUPERUSER or BYPASSRLS (on Supabase, a dedicated control-plane login instead of service_role).',
                             h.rolname, case when h.rolsuper then 'SUPERUSER' else 'BYPASSRLS' end,
                             pg_catalog.array_to_string(h.bulkhead_roles, ', '))
    from held h where h.rolsuper or h.rolbypassrls
    union all
    -- ... or reads Bulkhead's tables some other way: a direct or column grant, a grant to a group
    -- it inherits, pg_read_all_data. The privilege functions follow every route. (Superusers
    -- read everything by definition: only those wired to Bulkhead are named above.)
    select 'role_bypasses_rls', 'critical',
           pg_catalog.format('role %I is BYPASSRLS and may read %s: row level security does not apply to it, so it reads every tenant''s rows there. Revoke its access; use a role without BYPASSRLS in bulkhead_admin instead.',
                             g.rolname, g.tables)
    from (select r.rolname, pg_catalog.string_agg(c.oid::regclass::text, ', ' order by c.oid::regclass::text) as tables
          from pg_catalog.pg_roles r
          cross join pg_catalog.pg_class c
          where r.rolbypassrls and not r.rolsuper
            and r.rolname not in (select rolname from bulkhead_roles)
            and r.rolname not in (select h.rolname from held h)
            and c.relnamespace = 'bulkhead'::regnamespace and c.relkind in ('r', 'p', 'v')
            and pg_catalog.has_any_column_privilege(r.oid, c.oid, 'SELECT')
          group by r.rolname) g
    union all
    -- PostgreSQL 16: a membership granted WITH INHERIT FALSE passes on no privilege.
    select 'grant_does_not_inherit', 'error',
           pg_catalog.format('role %I holds %I WITH INHERIT FALSE: it gets none of its privileges unless it sets the role. GRANT %I TO %I WITH INHERIT TRUE.',
                             r.rolname, b.rolname, b.rolname, r.rolname)
    from pg_catalog.pg_auth_members m
    join bulkhead_roles b on b.oid = m.roleid
    join pg_catalog.pg_roles r on r.oid = m.member
    -- (Nobody should hold the owners' roles at all: owner_role_in_use.)
    where not m.inherit_option and b.rolname not in ('bulkhead_meter', 'bulkhead_reporter')
    union all
    -- An end user must never choose its tenant: a role that is also the trusted backend can.
    select 'end_user_can_choose_tenant', 'critical',
           pg_catalog.format('role %I holds bulkhead_end_user and %s: its users can call set_tenant or name a tenant in an argument. Grant end-user roles bulkhead_end_user only.',
                             h.rolname, pg_catalog.array_to_string(pg_catalog.array_remove(h.bulkhead_roles, 'bulkhead_end_user'), ', '))
    from held h where 'bulkhead_end_user' = any (h.bulkhead_roles) and pg_catalog.cardinality(h.bulkhead_roles) > 1
    union all
    -- PostgREST's request roles are end users (their JWT names the tenant), never the backend.
    select 'postgrest_role_is_backend', 'critical',
           pg_catalog.format('role %I (a PostgREST request role) holds %s: any end user can act for any tenant. Grant it bulkhead_end_user instead.',
                             h.rolname, pg_catalog.array_to_string(h.bulkhead_roles, ', '))
    from held h
    where h.bulkhead_roles <> array['bulkhead_end_user']::name[]  -- any Bulkhead role but that one
      and (h.rolname in ('anon', 'authenticated', 'service_role')
           or exists (select from pg_catalog.pg_auth_members m join pg_catalog.pg_roles a on a.oid = m.member
                      where a.rolname = 'authenticator' and m.roleid = (select oid from pg_catalog.pg_roles x where x.rolname = h.rolname)))
    union all
    -- The owners of the functions that run for every caller: bulkhead_meter (metering) and
    -- bulkhead_reporter (the console's sums, whose policies read every tenant's rows). Whoever
    -- holds one reads every tenant and can change what its functions do for everyone else.
    select 'owner_role_in_use', 'critical',
           pg_catalog.format('role %I holds %I, which owns functions that run for every tenant and reads every tenant''s rows: nobody may hold it. REVOKE %I FROM %I.',
                             r.rolname, o.rolname, o.rolname, r.rolname)
    from pg_catalog.pg_auth_members m
    join pg_catalog.pg_roles o on o.oid = m.roleid
    join pg_catalog.pg_roles r on r.oid = m.member
    -- Also a grant WITH ADMIN only: its holder may grant the role to itself. Not the extension's
    -- owner (PostgreSQL 16 makes a CREATEROLE installer the admin of the roles it creates; it
    -- owns every table anyway) and not superusers.
    where o.rolname in ('bulkhead_meter', 'bulkhead_reporter')
      and (m.inherit_option or m.set_option or m.admin_option)
      and not r.rolsuper
      and r.oid <> (select e.extowner from pg_catalog.pg_extension e where e.extname = 'bulkhead')
    union all
    select 'owner_role_in_use', 'critical',
           pg_catalog.format('role %I can log in: it owns functions that run for every tenant and reads every tenant''s rows. ALTER ROLE %I NOLOGIN.',
                             o.rolname, o.rolname)
    from pg_catalog.pg_roles o
    where o.rolname in ('bulkhead_meter', 'bulkhead_reporter') and o.rolcanlogin
    union all
    select 'anonymous_end_user', 'warning',
           'role anon holds bulkhead_end_user: requests without a JWT act as end users (they see nothing without a tenant claim, but may ask for nothing either). Grant bulkhead_end_user to authenticated only.'
    from held h where h.rolname = 'anon'
    union all
    select 'end_user_role_does_not_inherit', 'error',
           pg_catalog.format('role %I holds %s but is NOINHERIT: it gets none of their privileges until it sets the role. ALTER ROLE %I INHERIT.',
                             h.rolname, pg_catalog.array_to_string(h.bulkhead_roles, ', '), h.rolname)
    -- Direct members only: PostgREST's authenticator is NOINHERIT by design (it SETs the role).
    from held h where not h.rolinherit and not h.rolsuper
      and exists (select from pg_catalog.pg_auth_members m join bulkhead_roles b on b.oid = m.roleid
                  where m.member = (select x.oid from pg_catalog.pg_roles x where x.rolname = h.rolname))
    union all
    select 'vector_schema_not_usable', 'error',
           pg_catalog.format('role %I has no USAGE on schema %I, where pgvector lives: searches and the per-tenant index build fail. GRANT USAGE ON SCHEMA %I TO %I.',
                             b.rolname, v.nspname, v.nspname, b.rolname)
    from bulkhead_roles b, vector_schema v
    where b.rolname in ('bulkhead_app', 'bulkhead_admin', 'bulkhead_worker', 'bulkhead_meter', 'bulkhead_end_user')
      and not pg_catalog.has_schema_privilege(b.oid, v.nspname, 'USAGE')
    union all
    -- Any role may create objects there: an operator or function planted on a path that others
    -- resolve names through runs as whoever calls it.
    select 'schema_creatable_by_public', 'warning',
           pg_catalog.format('PUBLIC may CREATE in schema %I: a role could plant a function or operator there that runs as another role whose search_path includes it. REVOKE CREATE ON SCHEMA %I FROM PUBLIC.',
                             n.nspname, n.nspname)
    from pg_catalog.pg_namespace n
    where n.nspname not like 'pg\_%' and n.nspname <> 'information_schema'
      and pg_catalog.has_schema_privilege('public', n.oid, 'CREATE')
    union all
    select 'index_drop_pending', 'warning',
           pg_catalog.format('%s tenant index(es) wait to be dropped since %s: a long transaction reading bulkhead.chunks keeps taking precedence. Run select bulkhead.drop_pending_indexes() (the worker does, once a minute) and look for long transactions.',
                             pg_catalog.count(*), pg_catalog.min(p.requested_at))
    from bulkhead.pending_index_drops p
    having pg_catalog.min(p.requested_at) < pg_catalog.now() - interval '10 minutes'
    union all
    select 'statements_logged', 'warning',
           pg_catalog.format('log_statement = %s: statements are written to the server log with their arguments. Keep keys out of SQL (set_credential takes references only) and prefer ddl or none.',
                             pg_catalog.current_setting('log_statement'))
    where pg_catalog.current_setting('log_statement') in ('all', 'mod')
    union all
    select 'not_preloaded', 'info',
           'bulkhead is not in shared_preload_libraries: a SET bulkhead.tenant_id is refused only once the library loads, set_tenant looks tenants up every time, and admission in memory is off.'
    -- The setting is readable by pg_read_all_settings only: otherwise the check is skipped.
    where case when pg_catalog.pg_has_role('pg_read_all_settings', 'USAGE')
               then not pg_catalog.string_to_array(pg_catalog.replace(pg_catalog.current_setting('shared_preload_libraries'), ' ', ''), ',') @> array['bulkhead']
               else false end
    union all
    -- Supabase Vault: reading decrypted_secrets needs its decrypt function too.
    select 'vault_not_readable', 'error',
           pg_catalog.format('Supabase Vault is installed or referenced, but bulkhead_worker lacks %s: the worker cannot read those keys. GRANT USAGE ON SCHEMA vault, SELECT ON vault.decrypted_secrets and EXECUTE ON FUNCTION vault._crypto_aead_det_decrypt to the worker''s role.', missing.what)
    from (select pg_catalog.string_agg(w.what, ', ') as what
          from (select 'USAGE on schema vault' as what
                where pg_catalog.to_regnamespace('vault') is null
                   or not pg_catalog.has_schema_privilege('bulkhead_worker', 'vault', 'USAGE')
                union all
                select 'SELECT on vault.decrypted_secrets'
                where pg_catalog.to_regclass('vault.decrypted_secrets') is null
                   or not pg_catalog.has_table_privilege('bulkhead_worker', 'vault.decrypted_secrets', 'SELECT')
                union all
                select 'EXECUTE on vault._crypto_aead_det_decrypt'
                where exists (select from pg_catalog.pg_proc p
                              where p.pronamespace = pg_catalog.to_regnamespace('vault')
                                and p.proname = '_crypto_aead_det_decrypt'
                                and not pg_catalog.has_function_privilege('bulkhead_worker', p.oid, 'EXECUTE'))) w) missing
    where missing.what is not null
      -- Vault installed, or named by the shared pool (tenants' own references are under row
      -- level security: the control plane sees none of them from here).
      and (pg_catalog.to_regnamespace('vault') is not null
           or exists (select from bulkhead.shared_credentials c where c.secret_ref like 'vault:%'))
$$;
comment on function bulkhead.doctor() is
    'Deployment checks (roles that bypass RLS or let end users choose a tenant, pgvector and Vault privileges, ...); empty means nothing found. bulkhead_admin.';
revoke all on function bulkhead.doctor() from public;
grant execute on function bulkhead.doctor() to bulkhead_admin;

-- The console's roles evaluate row level security policies (current_tenant()) as themselves.
-- Granted last, so a fresh install lists the grants in the order an upgrade leaves them.
grant execute on function bulkhead.current_tenant() to bulkhead_reporter, bulkhead_support;
