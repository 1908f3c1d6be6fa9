-- Bulkhead's Rust functions read text as UTF-8: in a database of another encoding they would
-- fail with internal errors on non-ASCII text, so such a database is refused up front.
do $$
begin
    if pg_catalog.getdatabaseencoding() <> 'UTF8' then
        raise exception 'Bulkhead needs a UTF8 database; this one is %', pg_catalog.getdatabaseencoding()
            using errcode = '22021', hint = 'Create it with ENCODING ''UTF8'' (and TEMPLATE template0).';
    end if;
end
$$;

-- Who may read and set the tenant context. current_tenant() runs inside every policy, so every
-- Bulkhead role needs it; nothing is left to PUBLIC.
revoke all on function bulkhead.current_tenant() from public;
revoke all on function bulkhead.set_tenant(uuid) from public;
grant execute on function bulkhead.current_tenant() to bulkhead_app, bulkhead_worker, bulkhead_admin, bulkhead_meter;
grant execute on function bulkhead.set_tenant(uuid) to bulkhead_app, bulkhead_worker, bulkhead_admin, bulkhead_meter;
revoke all on function bulkhead._set_tenant_within_function(uuid) from public;
grant execute on function bulkhead._set_tenant_within_function(uuid) to bulkhead_admin, bulkhead_meter, bulkhead_worker;
comment on function bulkhead.current_tenant() is
    'The tenant this transaction acts for: bulkhead.set_tenant(), else the JWT claim; NULL when neither.';
comment on function bulkhead.set_tenant(uuid) is
    'Sets the tenant context for the rest of the current transaction; NULL clears it.';
