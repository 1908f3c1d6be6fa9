-- Benchmark fixtures: 1,000 tenants with predictable ids, a benchmark model, generous limits (the
-- throughput runs never refuse), and a login role for pgbench in bulkhead_app
-- for each admission path.
set client_min_messages = warning;
do $$
begin
    if not exists (select from pg_roles where rolname = 'bulkhead_bench_app') then
        create role bulkhead_bench_app login in role bulkhead_app;
    end if;
    -- The same application, admitting in shared memory (bulkhead.memory_admission).
    if not exists (select from pg_roles where rolname = 'bulkhead_bench_memory_app') then
        create role bulkhead_bench_memory_app login in role bulkhead_app;
    end if;
end
$$;
insert into bulkhead.tenants (id, slug, name, pinecone_namespace)
select bench.tenant_id(i), 'bench-' || i, 'Bench ' || i, 'tenant-' || bench.tenant_id(i)
from generate_series(1, 1000) i
on conflict do nothing;
insert into bulkhead.prices (provider, model, effective_from, input_per_mtok, output_per_mtok)
values ('openai', 'bench-model', '2025-01-01', 1, 1)
on conflict do nothing;
insert into bulkhead.budgets (tenant_id, rpm, itpm, otpm, dollar_limit, period)
select bench.tenant_id(i), 2000000000, 2000000000, 2000000000, 1e11, 'month'
from generate_series(1, 1000) i
on conflict (tenant_id) do update set rpm = excluded.rpm, itpm = excluded.itpm, otpm = excluded.otpm,
    dollar_limit = excluded.dollar_limit;
alter role bulkhead_bench_memory_app set bulkhead.memory_admission = on;
