-- Bad-input sweep: every function of schema bulkhead (from the catalog, so a new function is
-- covered the day it lands) called with NULLs, empty values, huge strings and arrays, deep JSON,
-- NaN and infinities, negative and overflowing numbers, and another tenant's or no one's ids,
-- as a role that may call it, in a tenant's context. Each call must end in success or a
-- specific SQLSTATE: never an internal error (XX000, which is what a Rust panic or pgrx's
-- error! raise), never data corruption (XX001/XX002), never the generic P0001, never a syntax
-- error (42601: SQL built from the input), and never a crash (which would end this session).
-- One transaction, rolled back.
\set SHOW_CONTEXT never
begin;
set client_min_messages = warning;
insert into bulkhead.tenants (id, slug, name, pinecone_namespace) values
    ('00000000-0000-4000-8000-00000000005a', 'sweep-a', 'Acme', 'tenant-sweep-a'),
    ('00000000-0000-4000-8000-00000000005b', 'sweep-b', 'Globex', 'tenant-sweep-b');
select bulkhead.set_embedding_dims('00000000-0000-4000-8000-00000000005a', 3);
select bulkhead.set_embedding_dims('00000000-0000-4000-8000-00000000005b', 3);

-- A literal of `type` for one kind of bad input, or NULL when the kind means nothing for it
-- (the sweep then passes the type's 'neutral' value: one bad argument is not hidden behind a
-- NULL another argument got for want of a bad value).
create function pg_temp.bad_value(type regtype, kind text) returns text language sql immutable as $$
    select case
        when kind = 'null' then 'null::' || type::text
        when kind = 'neutral' then case type
            when 'text'::regtype then quote_literal('x')
            when 'uuid'::regtype then '''00000000-0000-4000-8000-00000000005a''::uuid'
            when 'integer'::regtype then '1'
            when 'bigint'::regtype then '1::bigint'
            when 'numeric'::regtype then '1::numeric'
            when 'double precision'::regtype then '1::float8'
            when 'jsonb'::regtype then '''{}''::jsonb'
            when 'boolean'::regtype then 'false'
            when 'interval'::regtype then '''10 minutes''::interval'
            when 'timestamp with time zone'::regtype then 'now()'
            when 'date'::regtype then 'current_date'
            when 'bytea'::regtype then '''\x00''::bytea'
            when 'vector'::regtype then '''[1,0,0]''::vector'
            when 'regclass'::regtype then '''bulkhead.tenants''::regclass'
            when 'text[]'::regtype then '''{x}''::text[]'
            when 'uuid[]'::regtype then 'array[''00000000-0000-4000-8000-00000000005a''::uuid]'
            when 'bigint[]'::regtype then '''{1}''::bigint[]'
            when 'jsonb[]'::regtype then 'array[''{}''::jsonb]'
            when 'timestamp with time zone[]'::regtype then 'array[now()]'
            end
        when type = 'text'::regtype then case kind
            when 'empty' then quote_literal('')
            when 'huge' then 'repeat(''x'', 1000000)'
            when 'deep' then quote_literal(repeat('{"a":', 3000) || '1' || repeat('}', 3000))
            when 'nan' then quote_literal('NaN')
            when 'negative' then quote_literal('-1')
            when 'hostile' then quote_literal(E'{{ 7*7 }}\u202e''; select 1; --' || repeat('ü', 300))
            when 'foreign' then quote_literal('00000000-0000-4000-8000-00000000005b')
            end
        when type = 'uuid'::regtype then case kind
            when 'empty' then '''00000000-0000-0000-0000-000000000000''::uuid'
            when 'foreign' then '''00000000-0000-4000-8000-00000000005b''::uuid'
            when 'hostile' then 'gen_random_uuid()'
            end
        when type in ('integer'::regtype, 'bigint'::regtype) then case kind
            when 'empty' then '0::' || type::text
            when 'huge' then case when type = 'integer'::regtype then '2147483647' else '9223372036854775807' end
            when 'negative' then case when type = 'integer'::regtype then '(-2147483648)' else '(-9223372036854775808)' end
            when 'foreign' then '123456789::' || type::text
            end
        when type in ('numeric'::regtype, 'double precision'::regtype) then case kind
            when 'empty' then '0::' || type::text
            when 'huge' then '1e300::' || type::text
            when 'nan' then '''NaN''::' || type::text
            when 'negative' then '''-Infinity''::' || type::text
            when 'hostile' then '''Infinity''::' || type::text
            end
        when type = 'jsonb'::regtype then case kind
            when 'empty' then '''{}''::jsonb'
            when 'huge' then 'jsonb_build_object(''x'', repeat(''y'', 1000000), ''a'', (select jsonb_agg(g) from generate_series(1, 100000) g))'
            when 'deep' then quote_literal(repeat('[', 2000) || repeat(']', 2000)) || '::jsonb'
            when 'nan' then '''{"n": 1e400, "m": "NaN", "k": -0}''::jsonb'
            when 'negative' then '''[-1, {"max_tokens": -1, "n": -5}]''::jsonb'
            when 'hostile' then '''{"a": "\u202e</answer>{{ 7*7 }}", "messages": [{"role": "system", "content": {"x": 1}}]}''::jsonb'
            when 'foreign' then '''{"tenant_id": "00000000-0000-4000-8000-00000000005b", "app_metadata": {"tenant_id": "00000000-0000-4000-8000-00000000005b"}}''::jsonb'
            end
        when type = 'boolean'::regtype then case kind when 'empty' then 'false' when 'hostile' then 'true' end
        when type = 'interval'::regtype then case kind
            when 'empty' then '''0''::interval'
            when 'huge' then '''170000000 years''::interval'
            when 'negative' then '''-1 day''::interval'
            end
        when type = 'timestamp with time zone'::regtype then case kind
            when 'empty' then 'now()'
            when 'huge' then '''infinity''::timestamptz'
            when 'negative' then '''-infinity''::timestamptz'
            end
        when type = 'date'::regtype then case kind when 'huge' then '''infinity''::date' when 'negative' then '''-infinity''::date' end
        when type = 'bytea'::regtype then case kind
            when 'empty' then '''''::bytea' when 'huge' then 'decode(repeat(''ab'', 500000), ''hex'')' end
        when type = 'vector'::regtype then case kind
            when 'empty' then '''[0,0,0]''::vector' when 'huge' then 'array_fill(1, array[16000])::vector'
            when 'negative' then '''[-1e38,1,1]''::vector' end
        when type = 'regclass'::regtype then case kind when 'hostile' then '''bulkhead.tenants''::regclass' end
        when type in ('text[]'::regtype, 'uuid[]'::regtype, 'bigint[]'::regtype, 'jsonb[]'::regtype,
                      'timestamp with time zone[]'::regtype) then case kind
            when 'empty' then '''{}''::' || type::text
            when 'hostile' then '''{NULL}''::' || type::text
            when 'huge' then 'array(select ' || case type
                when 'text[]'::regtype then '''x''' when 'uuid[]'::regtype then 'gen_random_uuid()'
                when 'bigint[]'::regtype then 'g::bigint' when 'jsonb[]'::regtype then '''{}''::jsonb'
                else 'now()' end || ' from generate_series(1, 100000) g)'
            end
        end
$$;

create temp table sweep (fn text, role text, kind text, sqlstate text, message text);
do $$
declare
    f record;
    kind text;
    args text;
    statement text;
    state text;
    message text;
    caller text;
begin
    for f in
        select p.oid, p.oid::regprocedure::text as signature, p.proargtypes::regtype[] as types, p.proretset,
               -- A role that may call it, from the application's outward.
               (select r from unnest(array['bulkhead_app', 'bulkhead_end_user', 'bulkhead_gateway',
                                            'bulkhead_worker', 'bulkhead_admin', 'bulkhead_meter']) r
                where has_function_privilege(r, p.oid, 'execute') limit 1) as role
        from pg_proc p
        where p.pronamespace = 'bulkhead'::regnamespace and p.prokind = 'f'
          and p.prorettype not in ('trigger'::regtype, 'event_trigger'::regtype)
        order by 2
    loop
        continue when f.role is null;
        foreach kind in array array['null', 'empty', 'huge', 'deep', 'nan', 'negative', 'hostile', 'foreign'] loop
            select string_agg(coalesce(pg_temp.bad_value(t, kind), pg_temp.bad_value(t, 'neutral'),
                                       'null::' || t::text), ', ' order by n)
            into args from unnest(f.types) with ordinality a(t, n);
            statement := format('select count(*) from %s(%s)', f.oid::regproc, coalesce(args, ''));
            state := '00000';
            message := null;
            begin
                perform bulkhead._set_tenant_within_function('00000000-0000-4000-8000-00000000005a');
                execute format('set local role %I', f.role);
                execute statement;
                reset role;
            exception when others then
                get stacked diagnostics state = returned_sqlstate, message = message_text;
            end;
            reset role;
            insert into sweep values (f.signature, f.role, kind, state, left(message, 200));
        end loop;
    end loop;
end
$$;
reset role;

-- Every function was called, with every kind of input.
select count(distinct fn) > 150 as functions_swept, count(*) > 1200 as calls,
       count(*) filter (where sqlstate = '00000') > 0 as some_succeeded,
       count(distinct sqlstate) > 10 as many_sqlstates
from sweep;
-- The violations: none.
select fn, kind, sqlstate, message
from sweep
where sqlstate in ('XX000', 'XX001', 'XX002', 'P0001', '42601') or sqlstate like '58%'
order by 1, 2;
rollback;
