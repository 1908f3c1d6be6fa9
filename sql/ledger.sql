-- The cost ledger: one durable row per settled provider call, priced by the provider's own
-- counting rules (bulkhead.price_usage). Append-only: no role may update it, and only tenant
-- deletion removes rows.

create table bulkhead.ledger (
    tenant_id            uuid        not null,
    id                   uuid        not null default pg_catalog.gen_random_uuid(),
    reservation_id       uuid        not null,
    request_id           text        not null,
    provider             text        not null,
    model                text        not null,
    input_tokens         bigint      not null,
    cached_input_tokens  bigint      not null,
    cache_write_tokens   bigint      not null,
    output_tokens        bigint      not null,
    reasoning_tokens     bigint      not null,
    itpm_tokens          bigint      not null,
    reserved_usd         numeric,
    cost_usd             numeric     not null,
    price_effective_from timestamptz not null,
    -- Settled without its reservation (lost in a crash): charged, but never admitted by this ledger.
    orphan               boolean     not null default false,
    created_at           timestamptz not null default pg_catalog.clock_timestamp(),
    -- The budget the cost counts against (its reservation's): 'eval' costs are the tenant's
    -- eval budget's (bulkhead.eval_budgets), not part of its own period spend.
    budget_line          text        not null default 'tenant',
    constraint ledger_pkey primary key (tenant_id, id),
    constraint ledger_budget_line_known check (budget_line in ('tenant', 'eval')),
    constraint ledger_request_key unique (tenant_id, provider, request_id),
    constraint ledger_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id),
    constraint ledger_counts_valid check (
        input_tokens >= 0 and cached_input_tokens >= 0 and cache_write_tokens >= 0
        and output_tokens >= 0 and reasoning_tokens >= 0 and itpm_tokens >= 0 and cost_usd >= 0),
    constraint ledger_request_id_length check (pg_catalog.char_length(request_id) between 1 and 200)
);
create index ledger_by_time on bulkhead.ledger (tenant_id, created_at);
-- What a tenant's eval line spent this period (_eval_budget_used, at every eval admission).
create index ledger_eval_line_by_time on bulkhead.ledger (tenant_id, created_at) where budget_line = 'eval';

alter table bulkhead.ledger enable row level security;
alter table bulkhead.ledger force row level security;
create policy tenant_isolation on bulkhead.ledger
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));
grant select on bulkhead.ledger to bulkhead_app, bulkhead_worker, bulkhead_admin;
grant select, insert on bulkhead.ledger to bulkhead_meter;
grant delete on bulkhead.ledger to bulkhead_admin;  -- tenant deletion only: see delete_tenant
select pg_catalog.pg_extension_config_dump('bulkhead.ledger', '');

-- The ledger's sums per tenant, day (in the rollup's time zone), provider, model and budget line,
-- kept as settles commit: reports and the console read one row per day and model, not one per
-- call. Written by the ledger's insert trigger only; usage_rollup says whether it can be trusted.
create table bulkhead.usage_daily (
    tenant_id           uuid        not null,
    day                 date        not null,
    provider            text        not null,
    model               text        not null,
    budget_line         text        not null,
    requests            bigint      not null,
    input_tokens        bigint      not null,
    cached_input_tokens bigint      not null,
    cache_write_tokens  bigint      not null,
    output_tokens       bigint      not null,
    reasoning_tokens    bigint      not null,
    reserved_usd        numeric     not null,
    cost_usd            numeric     not null,
    last_at             timestamptz not null,
    constraint usage_daily_pkey primary key (tenant_id, day, provider, model, budget_line),
    constraint usage_daily_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id)
);
alter table bulkhead.usage_daily enable row level security;
alter table bulkhead.usage_daily force row level security;
create policy tenant_isolation on bulkhead.usage_daily
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));
-- Dumped with the ledger it sums; the trigger stands aside while a dump is restored.
-- Reports over every tenant read a range of days.
create index usage_daily_by_day on bulkhead.usage_daily (day);
select pg_catalog.pg_extension_config_dump('bulkhead.usage_daily', '');

-- Each tenant's latest settled call, kept by the same trigger in any time zone: the console's
-- "last activity" for every tenant in one join instead of an index probe per tenant.
create table bulkhead.usage_latest (
    tenant_id uuid        not null,
    last_at   timestamptz not null,
    constraint usage_latest_pkey primary key (tenant_id),
    constraint usage_latest_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id)
);
alter table bulkhead.usage_latest enable row level security;
alter table bulkhead.usage_latest force row level security;
create policy tenant_isolation on bulkhead.usage_latest
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));
select pg_catalog.pg_extension_config_dump('bulkhead.usage_latest', '');

-- Whether usage_daily holds every ledger row, and in which time zone its days are. No row: no
-- ledger row was ever written, so the (empty) rollup is complete in any zone. A settle under
-- another bulkhead.billing_time_zone marks it stale: readers then sum the ledger itself until
-- bulkhead.rebuild_usage_rollup() runs.
create table bulkhead.usage_rollup (
    singleton   boolean     not null default true,
    zone        text        not null,
    stale_since timestamptz,
    built_at    timestamptz not null default pg_catalog.clock_timestamp(),
    constraint usage_rollup_pkey primary key (singleton),
    constraint usage_rollup_one_row check (singleton)
);
alter table bulkhead.usage_rollup enable row level security;
alter table bulkhead.usage_rollup force row level security;
create policy readable on bulkhead.usage_rollup for select using (true);
create policy meter_marks on bulkhead.usage_rollup for all to bulkhead_meter using (true) with check (true);
select pg_catalog.pg_extension_config_dump('bulkhead.usage_rollup', '');

-- Adds a new ledger row to usage_daily and usage_latest. A row trigger: a settle writes one row,
-- and a statement trigger's transition table cost a settle a fifth of its throughput (BENCHMARKS.md).
create function bulkhead._usage_rollup_add()
returns trigger
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    zone text;
    rollup bulkhead.usage_rollup;
begin
    -- (row_security is off only for a dump's restore; the check is cheap before the call.)
    if pg_catalog.current_setting('row_security') = 'off' and bulkhead._restoring() then
        return null;  -- the dump holds the rollup that matches its ledger
    end if;
    -- Taken before the rollup's state is read, stale or not, and held to commit: a rebuild
    -- (which locks usage_daily EXCLUSIVE) waits for this settle, or this settle for the rebuild
    -- and then adds its rows to the rebuilt rollup. Either way no settle falls between them.
    lock table bulkhead.usage_daily in row exclusive mode;
    insert into bulkhead.usage_latest as u values (new.tenant_id, new.created_at)
    on conflict on constraint usage_latest_pkey do update set last_at = greatest(u.last_at, excluded.last_at);
    select * into rollup from bulkhead.usage_rollup;
    zone := pg_catalog.current_setting('bulkhead.billing_time_zone');
    if not found then
        insert into bulkhead.usage_rollup (zone) values (zone) on conflict do nothing;
        select * into rollup from bulkhead.usage_rollup;
    end if;
    if rollup.stale_since is not null then
        return null;
    end if;
    if rollup.zone <> zone then
        update bulkhead.usage_rollup set stale_since = pg_catalog.clock_timestamp() where stale_since is null;
        return null;
    end if;
    insert into bulkhead.usage_daily as d
    values (new.tenant_id, (new.created_at at time zone zone)::date, new.provider, new.model, new.budget_line,
            1, new.input_tokens, new.cached_input_tokens, new.cache_write_tokens, new.output_tokens,
            new.reasoning_tokens, coalesce(new.reserved_usd, 0), new.cost_usd, new.created_at)
    on conflict on constraint usage_daily_pkey do update set
        requests = d.requests + 1,
        input_tokens = d.input_tokens + excluded.input_tokens,
        cached_input_tokens = d.cached_input_tokens + excluded.cached_input_tokens,
        cache_write_tokens = d.cache_write_tokens + excluded.cache_write_tokens,
        output_tokens = d.output_tokens + excluded.output_tokens,
        reasoning_tokens = d.reasoning_tokens + excluded.reasoning_tokens,
        reserved_usd = d.reserved_usd + excluded.reserved_usd,
        cost_usd = d.cost_usd + excluded.cost_usd,
        last_at = greatest(d.last_at, excluded.last_at);
    return null;
end
$$;
create trigger usage_rollup_add after insert on bulkhead.ledger
    for each row execute function bulkhead._usage_rollup_add();

-- bulkhead.billing_time_zone, read after a call into the library: the call loads it (if this
-- backend had not yet), and loading it discards a placeholder value that a session SET before
-- (without shared_preload_libraries, any role may set one). The readers of the rollup and the
-- console's sums take their zone from here.
create function bulkhead._billing_zone()
returns text
language plpgsql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
begin
    perform bulkhead.current_tenant();
    return pg_catalog.current_setting('bulkhead.billing_time_zone');
end
$$;

-- Which part of [from, to) the rollup can answer: its whole days [first_day, end_day), in its
-- zone. The rest, [from, raw_before) and [raw_after, to), is summed from the ledger itself; all of
-- it when the rollup is stale or kept in another zone than this session's billing time zone.
create function bulkhead._usage_span("from" timestamptz, "to" timestamptz)
returns table (zone text, first_day date, end_day date, raw_before timestamptz, raw_after timestamptz)
language plpgsql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    session_zone text := bulkhead._billing_zone();
    rollup bulkhead.usage_rollup;
begin
    zone := session_zone;
    select * into rollup from bulkhead.usage_rollup;
    if "from" is null or "to" is null or "from" >= "to"
       or (found and (rollup.stale_since is not null or rollup.zone <> session_zone)) then
        first_day := 'epoch';
        end_day := 'epoch';
        raw_before := "to";
        raw_after := "to";
        return next;
        return;
    end if;
    first_day := ("from" at time zone zone)::date;
    if (first_day::timestamp at time zone zone) < "from" then
        first_day := first_day + 1;
    end if;
    end_day := ("to" at time zone zone)::date;
    if first_day >= end_day then
        first_day := 'epoch';
        end_day := 'epoch';
        raw_before := "to";
        raw_after := "to";
    else
        raw_before := first_day::timestamp at time zone zone;
        raw_after := end_day::timestamp at time zone zone;
    end if;
    return next;
end
$$;

-- The ledger's sums per tenant, day, provider, model and budget line over [from, to): the
-- rollup's whole days and the ledger's edges. Row level security decides whose rows count; a
-- null tenant means every row the caller may read. (An edge over every tenant reads the whole
-- ledger: whole days, as reports by month use, never do.)
create function bulkhead._usage_sums("from" timestamptz, "to" timestamptz, tenant uuid)
returns table (
    tenant_id uuid, day date, provider text, model text, budget_line text, requests bigint,
    input_tokens bigint, cached_input_tokens bigint, cache_write_tokens bigint, output_tokens bigint,
    reasoning_tokens bigint, reserved_usd numeric, cost_usd numeric, last_at timestamptz
)
language plpgsql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    s record;
    edge record;
begin
    select * into s from bulkhead._usage_span("from", "to");
    -- Separate statements, not "tenant is null or ...": each keeps its own index plan.
    if s.first_day < s.end_day and tenant is null then
        return query
            select d.tenant_id, d.day, d.provider, d.model, d.budget_line, d.requests, d.input_tokens,
                   d.cached_input_tokens, d.cache_write_tokens, d.output_tokens, d.reasoning_tokens,
                   d.reserved_usd, d.cost_usd, d.last_at
            from bulkhead.usage_daily d
            where d.day >= s.first_day and d.day < s.end_day;
    elsif s.first_day < s.end_day then
        return query
            select d.tenant_id, d.day, d.provider, d.model, d.budget_line, d.requests, d.input_tokens,
                   d.cached_input_tokens, d.cache_write_tokens, d.output_tokens, d.reasoning_tokens,
                   d.reserved_usd, d.cost_usd, d.last_at
            from bulkhead.usage_daily d
            where d.tenant_id = tenant and d.day >= s.first_day and d.day < s.end_day;
    end if;
    for edge in select * from (values ("from", s.raw_before), (s.raw_after, "to")) w (lo, hi) where w.lo < w.hi loop
        if tenant is null then
            return query
                select l.tenant_id, (l.created_at at time zone s.zone)::date, l.provider, l.model, l.budget_line,
                       count(*), sum(l.input_tokens)::bigint, sum(l.cached_input_tokens)::bigint,
                       sum(l.cache_write_tokens)::bigint, sum(l.output_tokens)::bigint, sum(l.reasoning_tokens)::bigint,
                       coalesce(sum(l.reserved_usd), 0), sum(l.cost_usd), max(l.created_at)
                from bulkhead.ledger l
                where l.created_at >= edge.lo and l.created_at < edge.hi
                group by 1, 2, 3, 4, 5;
        else
            return query
                select l.tenant_id, (l.created_at at time zone s.zone)::date, l.provider, l.model, l.budget_line,
                       count(*), sum(l.input_tokens)::bigint, sum(l.cached_input_tokens)::bigint,
                       sum(l.cache_write_tokens)::bigint, sum(l.output_tokens)::bigint, sum(l.reasoning_tokens)::bigint,
                       coalesce(sum(l.reserved_usd), 0), sum(l.cost_usd), max(l.created_at)
                from bulkhead.ledger l
                where l.tenant_id = tenant and l.created_at >= edge.lo and l.created_at < edge.hi
                group by 1, 2, 3, 4, 5;
        end if;
    end loop;
end
$$;

-- Settles a reservation with the provider's usage object; returns the call's cost in USD.
-- Idempotent on the provider's request id. Releases what the reservation held beyond the
-- actual cost, and refunds to the token buckets what the provider did not count.
-- The body of ledger_record and _settle_queued_call, run as bulkhead_meter: a reservation of a
-- queued call (complete(), embed_document()) is settled by the worker only (queued_ok).
create function bulkhead._ledger_record(
    reservation uuid,
    usage jsonb,
    request_id text,
    model text,
    queued_ok boolean
)
returns numeric
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := bulkhead.current_tenant();
    now_ts timestamptz := pg_catalog.clock_timestamp();
    r bulkhead.reservations;
    price bulkhead.prices;
    priced record;
    st bulkhead.budget_state;
    existing numeric;
    existing_reservation uuid;
    existing_orphan boolean;
    is_orphan boolean := false;
    -- What the cost adds to the tenant's own period spend: nothing on the eval line.
    tenant_cost numeric;
begin
    if tenant is null then
        raise exception 'no tenant context'
            using errcode = '42501',
                  detail = 'ledger_record settles the current tenant''s reservations, and this transaction has none.';
    end if;
    if reservation is null or usage is null or request_id is null then
        raise exception 'reservation, usage and request_id are required'
            using errcode = '22004', detail = 'A settle names its reservation, the provider''s usage and its request id.';
    end if;
    -- The ledger is the money record: its transaction commits synchronously, even after a
    -- budget_check in the same transaction switched that off.
    perform pg_catalog.set_config('synchronous_commit', 'on', true);
    if pg_catalog.char_length(request_id) not between 1 and 200 then
        raise exception 'request_id must be 1 to 200 characters'
            using errcode = '22023', detail = 'The request id is the provider''s id for the call (e.g. chatcmpl-..., msg_...).';
    end if;

    -- Lock order as in budget_check: the state row, then the reservation. A tenant without a
    -- state row gets one first, so that a concurrent first budget_check cannot rebuild its
    -- money from the ledger while this settle is still uncommitted.
    select * into st from bulkhead.budget_state s where s.tenant_id = tenant for update;
    if not found then
        perform bulkhead._create_budget_state(tenant, now_ts);
        select * into st from bulkhead.budget_state s where s.tenant_id = tenant for update;
    end if;
    select * into r from bulkhead.reservations x where x.tenant_id = tenant and x.id = reservation for update;
    -- Admitted in memory: written to the table first (its hold stays in memory until commit).
    if not found and bulkhead._materialize_reservation(reservation) then
        select * into r from bulkhead.reservations x where x.tenant_id = tenant and x.id = reservation for update;
    end if;
    if not found and bulkhead._reservation_being_written(reservation) then
        -- Another transaction is writing it from memory as a row (a settle, the sweep of holds
        -- in flight): recorded as an orphan now, it would be charged again when that row lapses.
        raise exception 'reservation % is being written by another transaction', reservation
            using errcode = '40001', hint = 'Try again: the row is there once that transaction ends.';
    end if;
    if not found then
        -- Such a writer may have committed since the first look (its record leaves memory only
        -- once its row is visible): look again before calling the call an orphan.
        select * into r from bulkhead.reservations x where x.tenant_id = tenant and x.id = reservation for update;
    end if;
    if not found then
        if model is null then
            raise exception 'reservation % does not exist', reservation
                using errcode = 'P0002',
                      detail = 'No reservation of the current tenant has this id; it may have been lost in a crash.',
                      hint = 'Pass model => ''<model>'' to record the call''s cost without its reservation.';
        end if;
        is_orphan := true;
        select p.* into price from bulkhead.prices p
        where p.model = _ledger_record.model and p.effective_from <= now_ts
        order by p.effective_from desc limit 1;
        if not found then
            raise exception 'unknown model %', pg_catalog.quote_literal(model)
                using errcode = '22023', detail = 'No price is in effect for this model.';
        end if;
        r.id := reservation;
        r.provider := price.provider;
        r.model := price.model;
        r.est_input_tokens := 0;
        r.max_output_tokens := 0;
        r.budget_line := 'tenant';
    else
        -- The worker makes a queued call and settles it: were the app to settle it first (at
        -- zero), the call would be made unpaid.
        if r.queued and not queued_ok then
            raise exception 'reservation % belongs to a queued call', reservation
                using errcode = '42501',
                      detail = 'Reservations of bulkhead.complete(), bulkhead.embed_document() and the gateway are settled by the worker or gateway that makes the call.';
        end if;
        select p.* into price from bulkhead.prices p
        where p.provider = r.provider and p.model = r.model and p.effective_from = r.price_effective_from;
    end if;

    -- A repeated settle of the same provider call is answered from the ledger; the same request
    -- id on another reservation is a caller's bug, not a repeat.
    select l.cost_usd, l.reservation_id, l.orphan into existing, existing_reservation, existing_orphan from bulkhead.ledger l
    where l.tenant_id = tenant and l.provider = r.provider and l.request_id = _ledger_record.request_id;
    if found then
        -- A repeat. Not for the worker's or gateway's settle when the row is an orphan: after a
        -- restart of the server an application could record the gateway's call first, under
        -- its reservation and request id, at a usage of its choosing (the call is then recorded
        -- again, at its own usage, below).
        if existing_reservation = r.id and not (queued_ok and existing_orphan) then
            return existing;
        end if;
        if not queued_ok then
            raise exception 'request_id % is already recorded for another reservation', pg_catalog.quote_literal(request_id)
                using errcode = '23505',
                      detail = 'A provider request id settles one reservation; this reservation stays open.',
                      hint = 'Pass the provider''s own id for this call.';
        end if;
        -- The worker's or gateway's settle of a call it made: an id recorded first by someone
        -- else (an application that guessed it, or read it from the stream) must not leave the
        -- call unpaid. It is recorded under an id qualified by the reservation, and should that
        -- be taken too (squatted on purpose), by a random suffix no one can know in advance.
        request_id := pg_catalog.left(request_id, 140) || '#' || r.id::text;
        select l.cost_usd, l.reservation_id into existing, existing_reservation from bulkhead.ledger l
        where l.tenant_id = tenant and l.provider = r.provider and l.request_id = _ledger_record.request_id;
        if found and existing_reservation = r.id then
            return existing;
        elsif found then
            -- A repeat of a settle that left no reservation row (the gateway's settle in
            -- memory) recorded under a random id: found by its reservation (in the last day).
            if is_orphan then
                select l.cost_usd into existing from bulkhead.ledger l
                where l.tenant_id = tenant and l.reservation_id = r.id and not l.orphan
                  and l.created_at > now_ts - interval '1 day'
                limit 1;
                if found then
                    return existing;
                end if;
            end if;
            request_id := request_id || '#' || pg_catalog.substr(pg_catalog.md5(pg_catalog.gen_random_uuid()::text), 1, 16);
        end if;
    end if;
    if r.settled_at is not null then
        raise exception 'reservation % is already settled by another request', reservation
            using errcode = '55000',
                  detail = 'A reservation admits one provider call and is settled once.',
                  hint = 'Call bulkhead.budget_check() for every provider call, retries included.';
    end if;

    select * into priced from bulkhead.price_usage(r.provider, usage, price.input_per_mtok, price.output_per_mtok,
                                                   price.cached_input_per_mtok, price.cache_write_per_mtok);

    begin
        insert into bulkhead.ledger
            (tenant_id, reservation_id, request_id, provider, model, input_tokens, cached_input_tokens,
             cache_write_tokens, output_tokens, reasoning_tokens, itpm_tokens, reserved_usd, cost_usd,
             price_effective_from, orphan, created_at, budget_line)
        values
            (tenant, r.id, _ledger_record.request_id, r.provider, r.model, priced.input_tokens, priced.cached_input_tokens,
             priced.cache_write_tokens, priced.output_tokens, priced.reasoning_tokens, priced.itpm_tokens,
             case when is_orphan then null else r.reserved_usd end, priced.cost_usd,
             price.effective_from, is_orphan, now_ts, r.budget_line);
    exception when foreign_key_violation then
        raise exception 'tenant % does not exist', tenant
            using errcode = '42704', detail = 'The tenant context names no tenant, so no cost can be recorded for it.';
    end;

    if not is_orphan then
        update bulkhead.reservations x set settled_at = now_ts where x.tenant_id = tenant and x.id = r.id;
    end if;
    tenant_cost := case when r.budget_line = 'tenant' then priced.cost_usd else 0 end;

    -- A tenant with a slot in memory holds every reservation's hold and counts every cost there:
    -- released and counted when this commits (nothing happens for a tenant without a slot).
    perform bulkhead._release_in_memory(
        case when is_orphan or r.expired_at is not null then 0 else r.reserved_usd end,
        tenant_cost,
        case when is_orphan then 0 else r.est_input_tokens - priced.itpm_tokens end,
        case when is_orphan then 0 else r.max_output_tokens - priced.output_tokens end);

    if st.tenant_id is not null then
        update bulkhead.budget_state s
        -- Costs count in the period they are settled in; outside the state's window the next
        -- check rebuilds the money from the ledger anyway.
        set spent_usd = s.spent_usd + case when now_ts >= s.period_start and now_ts < s.period_end
                                            then tenant_cost else 0 end,
            -- An expired reservation released its hold already.
            reserved_usd = case when is_orphan or r.expired_at is not null or r.held_in_memory then s.reserved_usd
                                else greatest(s.reserved_usd - r.reserved_usd, 0) end,
            -- Tokens estimated but not counted by the provider go back; overruns stay as debt.
            itpm_level = case when r.held_in_memory then s.itpm_level
                              else least(s.itpm_cap, s.itpm_level + (r.est_input_tokens - priced.itpm_tokens)) end,
            otpm_level = case when r.held_in_memory then s.otpm_level
                              else least(s.otpm_cap, s.otpm_level + (r.max_output_tokens - priced.output_tokens)) end
        where s.tenant_id = tenant;
    end if;
    return priced.cost_usd;
end
$$;
create function bulkhead.ledger_record(
    reservation uuid,
    usage jsonb,
    request_id text,
    model text default null
)
returns numeric
language sql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$ select bulkhead._ledger_record(reservation, usage, request_id, model, false) $$;

-- The worker's settle of a queued call (see complete() and _finish_completion).
create function bulkhead._settle_queued_call(reservation uuid, usage jsonb, request_id text)
returns numeric
language sql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$ select bulkhead._ledger_record(reservation, usage, request_id, null, true) $$;

-- Gateway calls whose lease ended unsettled (the gateway died between sending a call and
-- settling it): each is charged at its hold, as if the provider had served the whole reservation,
-- under the request id 'lease-ended:<reservation>#<random>'. Reconciliation shows what the provider really
-- counted. Called by the expiry paths, under the tenant's budget_state lock, with the rows they
-- just closed; returns the total charged (what they add to the period's spending).
create function bulkhead._bill_at_hold(lapsed bulkhead.reservations[])
returns numeric
language sql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
    with billed as (
        insert into bulkhead.ledger
            (tenant_id, reservation_id, request_id, provider, model, input_tokens, cached_input_tokens,
             cache_write_tokens, output_tokens, reasoning_tokens, itpm_tokens, reserved_usd, cost_usd,
             price_effective_from, orphan, created_at)
        -- A random suffix: an id an application could record first would make the charge vanish.
        select r.tenant_id, r.id,
               'lease-ended:' || r.id::text || '#' || pg_catalog.substr(pg_catalog.md5(pg_catalog.gen_random_uuid()::text), 1, 16),
               r.provider, r.model, r.est_input_tokens, 0,
               0, r.max_output_tokens, 0, r.est_input_tokens, r.reserved_usd, r.reserved_usd,
               r.price_effective_from, false, pg_catalog.clock_timestamp()
        from pg_catalog.unnest(lapsed) r
        where r.bill_on_expiry
        returning cost_usd
    )
    select coalesce(sum(b.cost_usd), 0) from billed b
$$;
revoke all on function bulkhead._bill_at_hold(bulkhead.reservations[]) from public;
grant execute on function bulkhead._bill_at_hold(bulkhead.reservations[]) to bulkhead_meter;

comment on function bulkhead.ledger_record(uuid, jsonb, text, text) is
    'Settles a reservation with the provider''s usage object (OpenAI or Anthropic shape) and returns the cost in USD; idempotent on request_id.';

-- The current tenant's costs by day (in the billing time zone), provider and model.
create function bulkhead.usage_report("from" timestamptz, "to" timestamptz)
returns table (
    day date, provider text, model text, requests bigint,
    input_tokens bigint, cached_input_tokens bigint, cache_write_tokens bigint,
    output_tokens bigint, reasoning_tokens bigint,
    reserved_usd numeric, cost_usd numeric,
    open_reservations bigint, open_reserved_usd numeric
)
language sql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
    with settled as (
        select u.day, u.provider, u.model, sum(u.requests)::bigint as requests,
               sum(u.input_tokens)::bigint as input_tokens, sum(u.cached_input_tokens)::bigint as cached_input_tokens,
               sum(u.cache_write_tokens)::bigint as cache_write_tokens, sum(u.output_tokens)::bigint as output_tokens,
               sum(u.reasoning_tokens)::bigint as reasoning_tokens,
               sum(u.reserved_usd) as reserved_usd, sum(u.cost_usd) as cost_usd
        -- No context, no rows (a null tenant would mean every row the caller may read).
        from bulkhead._usage_sums("from", "to", coalesce(bulkhead.current_tenant(), '00000000-0000-0000-0000-000000000000')) u
        group by 1, 2, 3
    ),
    open_rows as (
        select (r.created_at at time zone bulkhead._billing_zone())::date as day,
               r.provider, r.model, count(*) as open_reservations, sum(r.reserved_usd) as open_reserved_usd
        from bulkhead.reservations r
        where r.tenant_id = bulkhead.current_tenant() and r.created_at >= "from" and r.created_at < "to"
          and r.settled_at is null and r.expired_at is null and r.lease_expires_at > pg_catalog.clock_timestamp()
        group by 1, 2, 3
        union all
        -- Admitted in memory and not settled yet (bulkhead.memory_admission): listed under today.
        select (pg_catalog.clock_timestamp() at time zone bulkhead._billing_zone())::date,
               m.provider, m.model, m.open_reservations, m.open_reserved_usd
        from bulkhead._open_in_memory() m
        where pg_catalog.clock_timestamp() >= "from" and pg_catalog.clock_timestamp() < "to"
    ),
    open as (
        select o.day, o.provider, o.model, sum(o.open_reservations)::bigint as open_reservations,
               sum(o.open_reserved_usd) as open_reserved_usd
        from open_rows o
        group by 1, 2, 3
    )
    select coalesce(s.day, o.day), coalesce(s.provider, o.provider), coalesce(s.model, o.model),
           coalesce(s.requests, 0), coalesce(s.input_tokens, 0), coalesce(s.cached_input_tokens, 0),
           coalesce(s.cache_write_tokens, 0), coalesce(s.output_tokens, 0), coalesce(s.reasoning_tokens, 0),
           coalesce(s.reserved_usd, 0), coalesce(s.cost_usd, 0),
           coalesce(o.open_reservations, 0), coalesce(o.open_reserved_usd, 0)
    from settled s full join open o on o.day = s.day and o.provider = s.provider and o.model = s.model
    order by 1, 2, 3
$$;
comment on function bulkhead.usage_report(timestamptz, timestamptz) is
    'The current tenant''s LLM usage and cost by day, provider and model, settled and still reserved.';

-- Finance: every tenant's settled cost by provider and model. SECURITY DEFINER, owned by
-- bulkhead_reporter, whose policies read every tenant's ledger sums: it returns sums only, and
-- only to bulkhead_admin and bulkhead_finance (execute grants).
create function bulkhead.usage_by_tenant("from" timestamptz, "to" timestamptz)
returns table (
    tenant_id uuid, slug text, provider text, model text, requests bigint,
    input_tokens bigint, cached_input_tokens bigint, cache_write_tokens bigint, output_tokens bigint,
    cost_usd numeric
)
language sql stable
security definer
set search_path to pg_catalog, pg_temp
as $$
    select u.tenant_id, t.slug, u.provider, u.model, sum(u.requests)::bigint,
           sum(u.input_tokens)::bigint, sum(u.cached_input_tokens)::bigint,
           sum(u.cache_write_tokens)::bigint, sum(u.output_tokens)::bigint, sum(u.cost_usd)
    from bulkhead._usage_sums("from", "to", null) u
    join bulkhead.tenants t on t.id = u.tenant_id
    group by u.tenant_id, t.slug, u.provider, u.model
    order by t.slug, u.provider, u.model
$$;
comment on function bulkhead.usage_by_tenant(timestamptz, timestamptz) is
    'Settled LLM cost per tenant, provider and model, for finance. bulkhead_admin and bulkhead_finance only.';

-- Normalises a provider usage object and prices it; records nothing.
create function bulkhead.price_usage(
    provider text,
    usage jsonb,
    input_per_mtok numeric,
    output_per_mtok numeric,
    cached_input_per_mtok numeric default null,
    cache_write_per_mtok numeric default null
)
returns table (
    input_tokens bigint, cached_input_tokens bigint, cache_write_tokens bigint, output_tokens bigint,
    reasoning_tokens bigint, itpm_tokens bigint, cost_usd numeric
)
language sql immutable parallel safe
security invoker
set search_path to pg_catalog, pg_temp
as $$
    select * from bulkhead._price_usage(provider, usage::text, input_per_mtok, output_per_mtok,
                                        cached_input_per_mtok, cache_write_per_mtok)
$$;
comment on function bulkhead.price_usage(text, jsonb, numeric, numeric, numeric, numeric) is
    'Normalises a provider usage object by that provider''s counting rules and prices it (USD); records nothing.';

-- price_usage is pure; every Bulkhead role may price a usage object.
revoke all on function bulkhead._price_usage(text, text, numeric, numeric, numeric, numeric) from public;
grant execute on function bulkhead._price_usage(text, text, numeric, numeric, numeric, numeric)
    to bulkhead_app, bulkhead_worker, bulkhead_admin, bulkhead_meter;
revoke all on function bulkhead.price_usage(text, jsonb, numeric, numeric, numeric, numeric) from public;
grant execute on function bulkhead.price_usage(text, jsonb, numeric, numeric, numeric, numeric)
    to bulkhead_app, bulkhead_worker, bulkhead_admin, bulkhead_meter;

-- The metering functions run as bulkhead_meter (see budgets.sql).
alter function bulkhead._budget_check_table(text, int, int, interval) owner to bulkhead_meter;
alter function bulkhead._admission_terms(text) owner to bulkhead_meter;
alter function bulkhead._admission_load(text) owner to bulkhead_meter;
alter function bulkhead._expire_held_in_memory() owner to bulkhead_meter;
alter function bulkhead.expire_reservations() owner to bulkhead_meter;
alter function bulkhead.expire_all_reservations() owner to bulkhead_meter;
alter function bulkhead.ledger_record(uuid, jsonb, text, text) owner to bulkhead_meter;
alter function bulkhead._settle_queued_call(uuid, jsonb, text) owner to bulkhead_meter;
alter function bulkhead._raise_refusal() owner to bulkhead_meter;

revoke all on function bulkhead.ledger_record(uuid, jsonb, text, text) from public;
revoke all on function bulkhead._ledger_record(uuid, jsonb, text, text, boolean) from public;
revoke all on function bulkhead._settle_queued_call(uuid, jsonb, text) from public;
grant execute on function bulkhead._ledger_record(uuid, jsonb, text, text, boolean) to bulkhead_meter;
grant execute on function bulkhead._settle_queued_call(uuid, jsonb, text) to bulkhead_worker;
revoke all on function bulkhead.usage_report(timestamptz, timestamptz) from public;
revoke all on function bulkhead.usage_by_tenant(timestamptz, timestamptz) from public;
grant execute on function bulkhead.ledger_record(uuid, jsonb, text, text) to bulkhead_app, bulkhead_worker;
grant execute on function bulkhead.usage_report(timestamptz, timestamptz) to bulkhead_app, bulkhead_worker, bulkhead_admin;
grant execute on function bulkhead.usage_by_tenant(timestamptz, timestamptz) to bulkhead_admin;
