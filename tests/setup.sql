-- Login roles for the integration tests: real sessions of non-superuser, non-owner roles.
-- Roles are cluster-wide, so this is idempotent.
set client_min_messages = warning;
do $$
begin
    if not exists (select from pg_roles where rolname = 'bulkhead_test_app') then
        create role bulkhead_test_app login in role bulkhead_app;
    end if;
    if not exists (select from pg_roles where rolname = 'bulkhead_test_admin') then
        create role bulkhead_test_admin login in role bulkhead_admin;
    end if;
    if not exists (select from pg_roles where rolname = 'bulkhead_test_worker') then
        create role bulkhead_test_worker login in role bulkhead_worker;
    end if;
    if not exists (select from pg_roles where rolname = 'bulkhead_test_gateway') then
        create role bulkhead_test_gateway login in role bulkhead_gateway;
    end if;
    -- The gateway again, admitting in shared memory (its fast path).
    if not exists (select from pg_roles where rolname = 'bulkhead_test_memory_gateway') then
        create role bulkhead_test_memory_gateway login in role bulkhead_gateway;
    end if;
    -- The application again, admitting in shared memory (bulkhead.memory_admission).
    if not exists (select from pg_roles where rolname = 'bulkhead_test_memory_app') then
        create role bulkhead_test_memory_app login in role bulkhead_app;
    end if;
end
$$;

-- The lease tests use leases shorter than the one-minute default minimum.
do $$
begin
    execute format('alter database %I set bulkhead.min_lease = %L', current_database(), '100 milliseconds');
end
$$;

alter role bulkhead_test_memory_app set bulkhead.memory_admission = on;
alter role bulkhead_test_memory_gateway set bulkhead.memory_admission = on;
-- tests/tenant_cache.rs waits out the memory of tenants: one second, not the default 30.
alter role bulkhead_test_app set bulkhead.remember_tenants_for = 1;

-- `make db` checks passwords for every login but the local superuser: the test logins share the
-- development password (psql -v dev_password=..., and PGPASSFILE for the clients).
alter role bulkhead_test_app password :'dev_password';
alter role bulkhead_test_admin password :'dev_password';
alter role bulkhead_test_worker password :'dev_password';
alter role bulkhead_test_gateway password :'dev_password';
alter role bulkhead_test_memory_gateway password :'dev_password';
alter role bulkhead_test_memory_app password :'dev_password';
