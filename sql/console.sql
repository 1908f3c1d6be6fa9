-- The console's roles and reads (`bulkhead console`). The console signs people in with their own
-- PostgreSQL logins and runs every statement as them, so what each may see and do is decided
-- here, by grants and row level security, not by the web pages:
--   bulkhead_admin    everything the control plane does (as before);
--   bulkhead_support  customer success: tenant status, prompts (publish, activate through the
--                     eval gate, roll back) and eval results; no credentials, budgets, keys or
--                     deletion, and no money;
--   bulkhead_finance  read-only: spend, budgets and limits, usage sums per tenant and model,
--                     drift; no prompts, no ledger rows, nothing it could change.
-- Cross-tenant numbers come from SECURITY DEFINER functions owned by bulkhead_reporter, whose
-- policies read every tenant's sums and which return sums only.

grant usage on schema bulkhead to bulkhead_support, bulkhead_finance, bulkhead_reporter;

-- bulkhead_reporter: reads for sums, writes only the rollup it rebuilds.
grant select on bulkhead.tenants, bulkhead.budgets, bulkhead.budget_state, bulkhead.budget_defaults,
    bulkhead.ledger, bulkhead.usage_drift to bulkhead_reporter;
grant select, insert, delete on bulkhead.usage_daily, bulkhead.usage_latest to bulkhead_reporter;
grant select, insert, update on bulkhead.usage_rollup to bulkhead_reporter;
create policy reporter_reads on bulkhead.tenants for select to bulkhead_reporter using (true);
create policy reporter_sums on bulkhead.budgets for select to bulkhead_reporter using (true);
create policy reporter_sums on bulkhead.budget_state for select to bulkhead_reporter using (true);
create policy reporter_sums on bulkhead.ledger for select to bulkhead_reporter using (true);
create policy reporter_sums on bulkhead.usage_daily for all to bulkhead_reporter using (true) with check (true);
create policy reporter_sums on bulkhead.usage_latest for all to bulkhead_reporter using (true) with check (true);
create policy reporter_rebuilds on bulkhead.usage_rollup for all to bulkhead_reporter using (true) with check (true);
create policy reporter_sums on bulkhead.usage_drift for select to bulkhead_reporter using (true);
grant execute on function bulkhead._usage_sums(timestamptz, timestamptz, uuid), bulkhead._usage_span(timestamptz, timestamptz),
    bulkhead._billing_zone(),
    bulkhead._caller() to bulkhead_reporter;

-- Temporary budget raises: a tenant's dollar limit raised until a time, then put back by the
-- worker (a budget_raise_end job due then). One open raise per tenant; a new one replaces it and
-- keeps what it will put back. A limit changed by hand meanwhile is kept at the end.
create table bulkhead.budget_raises (
    tenant_id     uuid        not null,
    id            bigint      not null default bulkhead._random_id(),
    raised_limit  numeric     not null,
    -- What the end puts back: the tenant's own dollar limit, or (had_budget false) the defaults.
    had_budget    boolean     not null,
    restore_limit numeric,
    -- The limits of the budget row the raise created (had_budget false): at the end the row goes
    -- only if they are still these, so the tenant follows the defaults again, even new ones.
    created_rpm    int,
    created_itpm   int,
    created_otpm   int,
    created_period text,
    ends_at       timestamptz not null,
    reason        text        not null,
    raised_by     text        not null,
    raised_at     timestamptz not null default pg_catalog.clock_timestamp(),
    ended_at      timestamptz,
    ended_how     text,
    constraint budget_raises_pkey primary key (tenant_id, id),
    constraint budget_raises_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id),
    constraint budget_raises_limit_valid check (raised_limit >= 0 and raised_limit < 1e12),
    constraint budget_raises_restore_known check (had_budget = (restore_limit is not null)),
    constraint budget_raises_created_known check (had_budget = (created_rpm is null)
        and (created_rpm is null) = (created_itpm is null) and (created_rpm is null) = (created_otpm is null)
        and (created_rpm is null) = (created_period is null)),
    constraint budget_raises_reason_length check (pg_catalog.char_length(reason) between 1 and 1000),
    constraint budget_raises_ended_how_known check (ended_how in ('restored', 'kept', 'replaced')),
    constraint budget_raises_ended check ((ended_at is null) = (ended_how is null))
);
create unique index budget_raises_one_open on bulkhead.budget_raises (tenant_id) where ended_at is null;
alter table bulkhead.budget_raises enable row level security;
alter table bulkhead.budget_raises force row level security;
create policy tenant_isolation on bulkhead.budget_raises
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));
create policy reporter_sums on bulkhead.budget_raises for select to bulkhead_reporter using (true);
grant select, insert, update on bulkhead.budget_raises to bulkhead_admin;
grant delete on bulkhead.budget_raises to bulkhead_admin;  -- tenant deletion only
grant select, update on bulkhead.budget_raises to bulkhead_meter;
grant select on bulkhead.budget_raises to bulkhead_reporter;
select pg_catalog.pg_extension_config_dump('bulkhead.budget_raises', '');

-- Queues the end of the current tenant's open raise, due when it ends. SECURITY DEFINER (as
-- bulkhead_meter, which queues jobs): the control plane writes no job rows itself.
create function bulkhead._queue_budget_raise_end(raise_id bigint)
returns bigint
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    ends timestamptz;
begin
    select r.ends_at into ends from bulkhead.budget_raises r
    where r.tenant_id = bulkhead.current_tenant() and r.id = raise_id and r.ended_at is null;
    if not found then
        raise exception 'no open budget raise %', raise_id using errcode = '55000';
    end if;
    return bulkhead._enqueue('budget_raise_end', pg_catalog.jsonb_build_object('raise_id', raise_id),
                             'budget-raise-' || raise_id::text, ends, 10);
end
$$;
alter function bulkhead._queue_budget_raise_end(bigint) owner to bulkhead_meter;
revoke all on function bulkhead._queue_budget_raise_end(bigint) from public;
grant execute on function bulkhead._queue_budget_raise_end(bigint) to bulkhead_admin;

-- Raises a tenant's dollar limit to dollar_limit until `until`, for a reason; returns the raise's
-- id. The other limits and the period stay as they are (the defaults', for a tenant without its
-- own). bulkhead_admin.
create function bulkhead.raise_budget(tenant_id uuid, dollar_limit numeric, "until" timestamptz, reason text)
returns bigint
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    previous text;
    own bulkhead.budgets;
    defaults bulkhead.budget_defaults;
    created bulkhead.budgets;
    open_raise bulkhead.budget_raises;
    current_limit numeric;
    raise_id bigint;
begin
    if raise_budget.tenant_id is null or raise_budget.dollar_limit is null or "until" is null or reason is null then
        raise exception 'tenant_id, dollar_limit, until and reason are required' using errcode = '22004';
    end if;
    if reason !~ '[^[:space:]]' or pg_catalog.char_length(reason) > 1000 then
        raise exception 'a raise needs a reason of 1 to 1000 characters' using errcode = '22023',
            detail = 'The reason is kept with the raise, beside who made it.';
    end if;
    -- (The end is a job, and a job is queued at most 30 days out.)
    if "until" <= pg_catalog.clock_timestamp() or "until" > pg_catalog.clock_timestamp() + interval '30 days' then
        raise exception 'until must be in the future, within 30 days' using errcode = '22023',
            hint = 'Raise again when it ends, or set a new budget with bulkhead.set_budget.';
    end if;
    if raise_budget.dollar_limit = 'NaN' or raise_budget.dollar_limit >= 1e12 then
        raise exception 'invalid limit' using errcode = '22023';
    end if;
    -- One change to a tenant's budget at a time, in one lock order (tenant, budget, raise): a
    -- second raise, and the tenant's deletion, wait here.
    perform from bulkhead.tenants t where t.id = raise_budget.tenant_id for no key update;
    if not found then
        raise exception 'tenant % does not exist', raise_budget.tenant_id using errcode = '42704';
    end if;
    previous := bulkhead._enter_tenant(raise_budget.tenant_id);
    select * into defaults from bulkhead.budget_defaults;
    select * into own from bulkhead.budgets b where b.tenant_id = raise_budget.tenant_id for update;
    if not found then
        -- No budget of its own: the raise gives it one with the defaults' limits (which its end
        -- removes). A budget set by hand at this moment wins, and is what gets raised.
        insert into bulkhead.budgets (tenant_id, rpm, itpm, otpm, dollar_limit, period)
        values (raise_budget.tenant_id, defaults.rpm, defaults.itpm, defaults.otpm, defaults.dollar_limit, defaults.period)
        on conflict on constraint budgets_pkey do nothing
        returning * into created;
        select * into own from bulkhead.budgets b where b.tenant_id = raise_budget.tenant_id for update;
    end if;
    current_limit := own.dollar_limit;
    if raise_budget.dollar_limit <= current_limit then
        raise exception 'a raise must be above the current limit of % USD', current_limit using errcode = '22023',
            hint = 'Lower a limit with bulkhead.set_budget.';
    end if;
    -- A raise on top of a raise replaces it and keeps what the first one will put back.
    select * into open_raise from bulkhead.budget_raises r
    where r.tenant_id = raise_budget.tenant_id and r.ended_at is null for update;
    if found then
        update bulkhead.budget_raises r set ended_at = pg_catalog.clock_timestamp(), ended_how = 'replaced'
        where r.tenant_id = open_raise.tenant_id and r.id = open_raise.id;
        -- Its limit no longer in force (set by hand since): nothing of it is put back.
        if own.dollar_limit is distinct from open_raise.raised_limit then
            open_raise := null;
        end if;
    end if;
    -- What the end puts back: what the open raise would have, or else the budget as it was.
    insert into bulkhead.budget_raises (tenant_id, raised_limit, had_budget, restore_limit,
                                        created_rpm, created_itpm, created_otpm, created_period,
                                        ends_at, reason, raised_by)
    select raise_budget.tenant_id, raise_budget.dollar_limit, k.had_budget,
           case when k.had_budget then coalesce(open_raise.restore_limit, own.dollar_limit) end,
           case when not k.had_budget then coalesce(open_raise.created_rpm, own.rpm) end,
           case when not k.had_budget then coalesce(open_raise.created_itpm, own.itpm) end,
           case when not k.had_budget then coalesce(open_raise.created_otpm, own.otpm) end,
           case when not k.had_budget then coalesce(open_raise.created_period, own.period) end,
           "until", pg_catalog.btrim(reason), bulkhead._caller()
    from (select coalesce(open_raise.had_budget, created.tenant_id is null) as had_budget) k
    returning id into raise_id;
    update bulkhead.budgets b set dollar_limit = raise_budget.dollar_limit, updated_at = pg_catalog.now()
    where b.tenant_id = raise_budget.tenant_id;
    perform bulkhead._queue_budget_raise_end(raise_id);
    perform bulkhead._leave_tenant(previous);
    return raise_id;
end
$$;
comment on function bulkhead.raise_budget(uuid, numeric, timestamptz, text) is
    'Raises a tenant''s dollar limit until a time, for a reason; the worker puts the limit back then. bulkhead_admin only.';

-- The end of a raise, for the worker holding its budget_raise_end job: the dollar limit goes
-- back (or the tenant's own budget row goes, when it had none and nothing else changed), unless
-- someone set it by hand since. SECURITY DEFINER (as bulkhead_meter): the worker writes no
-- budgets itself; this changes only the raised limit of the job's own tenant.
create function bulkhead.end_budget_raise(job bigint, worker text)
returns text
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    s bulkhead.job_schedule := bulkhead._held_job(job, worker);
    lock_wait text := pg_catalog.current_setting('lock_timeout');
    raise_row bulkhead.budget_raises;
    own bulkhead.budgets;
    defaults bulkhead.budget_defaults;
    how text;
begin
    select r.* into raise_row
    from bulkhead.jobs j
    join bulkhead.budget_raises r on r.tenant_id = j.tenant_id and r.id = (j.payload ->> 'raise_id')::bigint
    where j.tenant_id = s.job_tenant and j.id = job and j.kind = 'budget_raise_end';
    if not found then
        raise exception 'job % ends no budget raise', job using errcode = '55000';
    end if;
    -- raise_budget's lock order: the budget row, then the raise. The tenant's deletion takes
    -- them before the job row this worker holds: waiting at most 500 ms, the end gives way
    -- (55P03, tried again later) before PostgreSQL's deadlock check could fail the deletion.
    perform pg_catalog.set_config('lock_timeout', '500ms', true);
    select * into own from bulkhead.budgets b where b.tenant_id = s.job_tenant for update;
    select r.* into raise_row from bulkhead.budget_raises r
    where r.tenant_id = raise_row.tenant_id and r.id = raise_row.id for update;
    if not found then
        raise exception 'job % ends no budget raise', job using errcode = '55000';
    end if;
    perform pg_catalog.set_config('lock_timeout', lock_wait, true);
    if raise_row.ended_at is not null then
        return raise_row.ended_how;
    end if;
    select * into defaults from bulkhead.budget_defaults;
    if own.tenant_id is null or own.dollar_limit is distinct from raise_row.raised_limit then
        how := 'kept';
    elsif raise_row.had_budget then
        update bulkhead.budgets b set dollar_limit = raise_row.restore_limit, updated_at = pg_catalog.now()
        where b.tenant_id = s.job_tenant;
        how := 'restored';
    elsif (own.rpm, own.itpm, own.otpm, own.period)
          = (raise_row.created_rpm, raise_row.created_itpm, raise_row.created_otpm, raise_row.created_period) then
        -- The row the raise created, untouched since: the tenant follows the defaults again.
        delete from bulkhead.budgets b where b.tenant_id = s.job_tenant;
        -- A provisioned project's limits follow (its trigger sees inserts and updates only).
        perform bulkhead._limits_follow(s.job_tenant);
        how := 'restored';
    else
        -- Its rate limits were changed since (by a direct update: set_budget ends the raise):
        -- they stay, and the dollar limit is the defaults'.
        update bulkhead.budgets b set dollar_limit = defaults.dollar_limit, updated_at = pg_catalog.now()
        where b.tenant_id = s.job_tenant;
        how := 'restored';
    end if;
    update bulkhead.budget_raises r set ended_at = pg_catalog.clock_timestamp(), ended_how = how
    where r.tenant_id = raise_row.tenant_id and r.id = raise_row.id;
    return how;
end
$$;
comment on function bulkhead.end_budget_raise(bigint, text) is
    'Ends the budget raise of the budget_raise_end job the worker holds: puts the dollar limit back unless it was changed by hand since. bulkhead_worker.';
alter function bulkhead.end_budget_raise(bigint, text) owner to bulkhead_meter;
-- The end of a raise writes the job's own tenant's budget row (row level security keeps it there).
grant update, delete on bulkhead.budgets to bulkhead_meter;
revoke all on function bulkhead.raise_budget(uuid, numeric, timestamptz, text), bulkhead.end_budget_raise(bigint, text) from public;
grant execute on function bulkhead.raise_budget(uuid, numeric, timestamptz, text) to bulkhead_admin;
grant execute on function bulkhead._caller() to bulkhead_admin;  -- raise_budget records who raised
grant execute on function bulkhead.end_budget_raise(bigint, text) to bulkhead_worker;

-- Who may read the console's sums: raises 42501 for a caller in none of the console's roles;
-- returns whether it may see money (bulkhead_admin, bulkhead_finance) or not (bulkhead_support).
create function bulkhead._console_reader(what text)
returns boolean
language plpgsql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    caller text := bulkhead._caller();
begin
    if pg_catalog.pg_has_role(caller, 'bulkhead_admin', 'USAGE')
       or pg_catalog.pg_has_role(caller, 'bulkhead_finance', 'USAGE') then
        return true;
    end if;
    if pg_catalog.pg_has_role(caller, 'bulkhead_support', 'USAGE') then
        return false;
    end if;
    raise exception 'permission denied for function %', what
        using errcode = '42501', detail = 'It is for bulkhead_admin, bulkhead_support and bulkhead_finance.';
end
$$;
revoke all on function bulkhead._console_reader(text) from public;
grant execute on function bulkhead._console_reader(text) to bulkhead_reporter;

-- One row per tenant for the console's Tenants page: status, limits, this period's spend and
-- what is reserved, today's calls and cost, the last settled call. Money is null unless the
-- caller is in bulkhead_admin or bulkhead_finance. SECURITY DEFINER (bulkhead_reporter): it
-- reads every tenant's budget state and rollup, and returns numbers only.
create function bulkhead.tenant_overview(tenant uuid default null)
returns table (
    tenant_id uuid, slug text, name text, status text, created_at timestamptz,
    rpm int, itpm int, otpm int, own_budget boolean,
    period text, period_start timestamptz, dollar_limit numeric, spent_usd numeric, reserved_usd numeric,
    calls_today bigint, cost_today numeric, last_activity timestamptz, raised_until timestamptz
)
language plpgsql stable
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    sees_money boolean := bulkhead._console_reader('tenant_overview');
    zone text := bulkhead._billing_zone();
    now_ts timestamptz := pg_catalog.clock_timestamp();
    today date := (now_ts at time zone zone)::date;
begin
    return query
        with limits as (
            select t.id, t.slug, t.name, t.status, t.created_at,
                   coalesce(b.rpm, d.rpm) as rpm, coalesce(b.itpm, d.itpm) as itpm, coalesce(b.otpm, d.otpm) as otpm,
                   b.tenant_id is not null as own_budget,
                   coalesce(b.period, d.period) as period, coalesce(b.dollar_limit, d.dollar_limit) as dollar_limit
            from bulkhead.tenants t
            cross join bulkhead.budget_defaults d
            left join bulkhead.budgets b on b.tenant_id = t.id
            where tenant_overview.tenant is null or t.id = tenant_overview.tenant
        ),
        bounds as (
            select l.*, pg_catalog.date_trunc(l.period, now_ts at time zone zone) at time zone zone as starts
            from limits l
        ),
        today_sums as (
            select u.tenant_id, sum(u.requests)::bigint as calls, sum(u.cost_usd) as cost
            from bulkhead._usage_sums(today::timestamp at time zone zone, (today + 1)::timestamp at time zone zone,
                                      tenant_overview.tenant) u
            group by u.tenant_id
        )
        select b.id, b.slug, b.name, b.status, b.created_at, b.rpm, b.itpm, b.otpm, b.own_budget,
               b.period, b.starts,
               case when sees_money then b.dollar_limit end,
               case when not sees_money then null
                    -- budget_state keeps the period's spend as calls settle; a period that rolled
                    -- over since the tenant's last admission is summed from its ledger instead.
                    when s.period = b.period and s.period_start = b.starts then s.spent_usd
                    else (select coalesce(sum(l.cost_usd), 0) from bulkhead.ledger l
                          where l.tenant_id = b.id and l.created_at >= b.starts and l.budget_line = 'tenant') end,
               case when sees_money then coalesce(s.reserved_usd, 0) end,
               coalesce(x.calls, 0),
               case when sees_money then coalesce(x.cost, 0) end,
               a.last_at,
               case when sees_money then
                   (select r.ends_at from bulkhead.budget_raises r where r.tenant_id = b.id and r.ended_at is null) end
        from bounds b
        left join bulkhead.budget_state s on s.tenant_id = b.id
        left join today_sums x on x.tenant_id = b.id
        left join bulkhead.usage_latest a on a.tenant_id = b.id;
end
$$;
comment on function bulkhead.tenant_overview(uuid) is
    'One row per tenant for the console: status, limits, this period''s spend and reservations, today''s calls and cost, last activity (money for bulkhead_admin and bulkhead_finance only).';

-- One tenant's usage per day, provider and model over the days [from, to) (billing time zone),
-- for the console's chart: calls and tokens, and cost for bulkhead_admin and bulkhead_finance.
-- SECURITY DEFINER (bulkhead_reporter): finance reads no rollup row itself; this returns sums.
create function bulkhead.tenant_daily_usage(tenant uuid, "from" date, "to" date)
returns table (
    day date, provider text, model text, requests bigint, input_tokens bigint, output_tokens bigint,
    cost_usd numeric
)
language plpgsql stable
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    sees_money boolean := bulkhead._console_reader('tenant_daily_usage');
    zone text := bulkhead._billing_zone();
begin
    if tenant is null or "from" is null or "to" is null then
        raise exception 'tenant, from and to are required' using errcode = '22004';
    end if;
    if "to" - "from" > 400 then
        raise exception 'at most 400 days at once' using errcode = '22023';
    end if;
    return query
        select u.day, u.provider, u.model, sum(u.requests)::bigint, sum(u.input_tokens)::bigint,
               sum(u.output_tokens)::bigint, case when sees_money then sum(u.cost_usd) end
        from bulkhead._usage_sums("from"::timestamp at time zone zone, "to"::timestamp at time zone zone, tenant) u
        group by 1, 2, 3
        order by 1, 2, 3;
end
$$;
comment on function bulkhead.tenant_daily_usage(uuid, date, date) is
    'One tenant''s calls, tokens and (for bulkhead_admin and bulkhead_finance) cost per day, provider and model.';

-- Reconciliation drift per tenant with a dedicated credential, per provider, over [from, to]
-- (UTC days): what the provider counted minus what the ledger holds. SECURITY DEFINER
-- (bulkhead_reporter): usage_drift is bulkhead_admin's; finance gets these sums only.
create function bulkhead.drift_by_tenant("from" date, "to" date)
returns table (
    tenant_id uuid, provider text, days bigint, input_token_drift bigint, output_token_drift bigint,
    request_drift bigint
)
language sql stable
security definer
set search_path to pg_catalog, pg_temp
as $$
    select d.dedicated_tenant, d.provider, count(distinct d.usage_date),
           sum(d.provider_input_tokens - d.ledger_input_tokens)::bigint,
           sum(d.provider_output_tokens - d.ledger_output_tokens)::bigint,
           sum(d.provider_requests - d.ledger_requests)::bigint
    from bulkhead.usage_drift d
    where d.dedicated_tenant is not null and d.usage_date between "from" and "to"
    group by 1, 2
$$;
comment on function bulkhead.drift_by_tenant(date, date) is
    'Provider-counted minus ledger tokens and requests per tenant with a dedicated credential and provider, for finance.';

-- Rebuilds usage_daily from the ledger in this session's billing time zone: after
-- bulkhead.billing_time_zone changed (the rollup is then stale, and reports read the ledger).
-- Settles wait for it (they add to the rollup under a lock this takes). Returns the rows written.
-- SECURITY DEFINER (bulkhead_reporter): it rewrites every tenant's rollup rows, which no
-- control-plane login may read or write across tenants itself.
create function bulkhead.rebuild_usage_rollup()
returns bigint
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    zone text := bulkhead._billing_zone();
    lock_wait text := pg_catalog.current_setting('lock_timeout');
    written bigint;
begin
    if pg_catalog.current_setting('transaction_isolation') <> 'read committed' then
        raise exception 'rebuild_usage_rollup runs at read committed'
            using errcode = '25001', detail = 'It must see every settle that committed before it took its lock.';
    end if;
    -- Settles take ROW EXCLUSIVE on usage_daily in the rollup trigger, stale rollup or not:
    -- this waits for those in flight, and holds off new ones until it commits. Settles queue
    -- behind the wait, so it is short: a transaction left open elsewhere makes this fail (55P03,
    -- try again) rather than stall every tenant's settles.
    perform pg_catalog.set_config('lock_timeout', '2s', true);
    lock table bulkhead.usage_daily in exclusive mode;
    perform pg_catalog.set_config('lock_timeout', lock_wait, true);
    delete from bulkhead.usage_daily;
    insert into bulkhead.usage_daily
    select l.tenant_id, (l.created_at at time zone zone)::date, l.provider, l.model, l.budget_line,
           count(*), sum(l.input_tokens), sum(l.cached_input_tokens), sum(l.cache_write_tokens),
           sum(l.output_tokens), sum(l.reasoning_tokens), coalesce(sum(l.reserved_usd), 0), sum(l.cost_usd),
           max(l.created_at)
    from bulkhead.ledger l
    group by 1, 2, 3, 4, 5;
    get diagnostics written = row_count;
    delete from bulkhead.usage_latest;
    insert into bulkhead.usage_latest select l.tenant_id, max(l.created_at) from bulkhead.ledger l group by 1;
    insert into bulkhead.usage_rollup (zone, stale_since, built_at) values (zone, null, pg_catalog.clock_timestamp())
    on conflict on constraint usage_rollup_pkey do update
        set zone = excluded.zone, stale_since = null, built_at = excluded.built_at;
    return written;
end
$$;
comment on function bulkhead.rebuild_usage_rollup() is
    'Rebuilds the per-day usage rollup from the ledger in the current billing time zone (after that setting changed). bulkhead_admin only.';

alter function bulkhead.tenant_overview(uuid) owner to bulkhead_reporter;
alter function bulkhead.usage_by_tenant(timestamptz, timestamptz) owner to bulkhead_reporter;
alter function bulkhead.drift_by_tenant(date, date) owner to bulkhead_reporter;
alter function bulkhead.tenant_daily_usage(uuid, date, date) owner to bulkhead_reporter;
alter function bulkhead.rebuild_usage_rollup() owner to bulkhead_reporter;
revoke all on function bulkhead.tenant_overview(uuid), bulkhead.drift_by_tenant(date, date), bulkhead.tenant_daily_usage(uuid, date, date),
    bulkhead.rebuild_usage_rollup() from public;
grant execute on function bulkhead.tenant_overview(uuid), bulkhead.tenant_daily_usage(uuid, date, date)
    to bulkhead_admin, bulkhead_support, bulkhead_finance;
grant execute on function bulkhead.usage_by_tenant(timestamptz, timestamptz), bulkhead.drift_by_tenant(date, date)
    to bulkhead_admin, bulkhead_finance;
grant execute on function bulkhead.rebuild_usage_rollup() to bulkhead_admin;

-- The rollup: the meter writes it as settles commit; tenants read their own rows (usage_report);
-- the control plane deletes a tenant's rows with the tenant.
grant select, insert, update on bulkhead.usage_daily, bulkhead.usage_latest to bulkhead_meter;
grant select on bulkhead.usage_daily, bulkhead.usage_latest to bulkhead_app, bulkhead_worker, bulkhead_admin;
grant delete on bulkhead.usage_daily, bulkhead.usage_latest to bulkhead_admin;  -- tenant deletion only
grant select on bulkhead.usage_rollup to bulkhead_meter, bulkhead_app, bulkhead_worker, bulkhead_admin,
    bulkhead_support, bulkhead_finance;
grant insert, update on bulkhead.usage_rollup to bulkhead_meter;
revoke all on function bulkhead._usage_rollup_add(), bulkhead._usage_span(timestamptz, timestamptz), bulkhead._billing_zone(),
    bulkhead._usage_sums(timestamptz, timestamptz, uuid) from public;
grant execute on function bulkhead._usage_span(timestamptz, timestamptz), bulkhead._usage_sums(timestamptz, timestamptz, uuid),
    bulkhead._billing_zone()
    to bulkhead_app, bulkhead_worker, bulkhead_admin, bulkhead_meter;

-- bulkhead_support: tenant status (tenant_overview), and a tenant's prompts and evals inside
-- that tenant's context. The prompt functions are SECURITY DEFINER and record the caller.
grant execute on function bulkhead.set_tenant(uuid) to bulkhead_support;
-- set_tenant checks the tenant exists; the list of tenants is what tenant_overview shows anyway.
grant select on bulkhead.tenants to bulkhead_support;
create policy support_lists on bulkhead.tenants for select to bulkhead_support using (true);
grant select on bulkhead.prompt_skeletons, bulkhead.prompt_templates, bulkhead.prompt_versions,
    bulkhead.prompt_releases, bulkhead.eval_sets, bulkhead.eval_cases, bulkhead.eval_runs, bulkhead.eval_results
    to bulkhead_support;
grant execute on function bulkhead.publish_prompt(uuid, text, jsonb, text),
    bulkhead.activate_prompt(uuid, text, int, boolean, text), bulkhead.rollback_prompt(uuid, text),
    bulkhead.render_prompt_version(text, int, jsonb), bulkhead._render_prompt_version(text, int, text),
    bulkhead.eval_report(bigint), bulkhead.eval_run_status(bigint[], text),
    -- every tenant's runs, counts only (it enters each tenant's context as set_tenant would)
    bulkhead.eval_summary(text, bigint[]), bulkhead._set_tenant_within_function(uuid), bulkhead._leave_tenant(text)
    to bulkhead_support;

-- bulkhead_finance: the numbers above, through tenant_overview, usage_by_tenant and
-- drift_by_tenant; and the platform's default limits. Nothing else: no context, no rows.
grant select on bulkhead.budget_defaults to bulkhead_finance;
