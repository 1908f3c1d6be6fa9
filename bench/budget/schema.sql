-- Helpers for the benchmark database (not part of the extension).
create schema if not exists bench;
create or replace function bench.tenant_id(i int) returns uuid language sql immutable
    as $$ select ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid $$;
grant usage on schema bench to public;
