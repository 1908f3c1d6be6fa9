-- Budgets and rate limits: per-tenant RPM / ITPM / OTPM token buckets and a dollar budget per
-- billing period, admitted atomically by bulkhead.budget_check() before every LLM call.
--
-- Admission is reserve-then-settle: budget_check() reserves the worst-case cost of a call under
-- the tenant's budget_state row lock and returns a leased reservation; ledger_record() settles it
-- with the provider's actual usage. Concurrent checks of one tenant queue on that row, so no
-- interleaving can admit more than the budget holds.
--
-- The metering functions are SECURITY DEFINER, owned by bulkhead_meter: callers only read budget
-- state and the ledger, so no tenant can rewrite its own spend. Row level security still applies
-- inside them (bulkhead_meter is neither superuser nor BYPASSRLS), keyed on the caller's context.

-- Limits per tenant. A tenant without a row gets bulkhead.budget_defaults: never "unlimited".
create table bulkhead.budgets (
    tenant_id    uuid        not null,
    rpm          int         not null,
    itpm         int         not null,
    otpm         int         not null,
    dollar_limit numeric     not null,
    period       text        not null,
    updated_at   timestamptz not null default pg_catalog.now(),
    constraint budgets_pkey primary key (tenant_id),
    constraint budgets_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id),
    -- "< 1e12" also refuses NaN and Infinity: no limit is unlimited by accident.
    constraint budgets_limits_valid check (rpm >= 0 and itpm >= 0 and otpm >= 0 and dollar_limit >= 0 and dollar_limit < 1e12),
    constraint budgets_period_known check (period in ('day', 'week', 'month'))
);

-- The platform default: a single row, seeded with modest limits.
create table bulkhead.budget_defaults (
    singleton    boolean     not null default true,
    rpm          int         not null,
    itpm         int         not null,
    otpm         int         not null,
    dollar_limit numeric     not null,
    period       text        not null,
    -- The output cap of a gateway call that names none (a tenant's own: tenant_settings).
    default_max_output_tokens int not null default 1024,
    updated_at   timestamptz not null default pg_catalog.now(),
    constraint budget_defaults_output_cap_valid check (default_max_output_tokens between 1 and 1000000),
    constraint budget_defaults_pkey primary key (singleton),
    constraint budget_defaults_one_row check (singleton),
    constraint budget_defaults_limits_valid check (rpm >= 0 and itpm >= 0 and otpm >= 0 and dollar_limit >= 0 and dollar_limit < 1e12),
    constraint budget_defaults_period_known check (period in ('day', 'week', 'month'))
);
insert into bulkhead.budget_defaults (rpm, itpm, otpm, dollar_limit, period)
values (60, 200000, 50000, 10, 'month');

-- CREATE EXTENSION writes the default row; a restore then brings the dumped one, as the admins
-- left it, which replaces the seed rather than colliding with it. (Nobody else inserts here.)
create function bulkhead._budget_defaults_replace_seed()
returns trigger
language plpgsql
security invoker
set search_path to pg_catalog, pg_temp
as $$
begin
    delete from bulkhead.budget_defaults d where d.singleton = new.singleton;
    return new;
end
$$;
revoke all on function bulkhead._budget_defaults_replace_seed() from public;
create trigger budget_defaults_replace_seed before insert on bulkhead.budget_defaults
    for each row execute function bulkhead._budget_defaults_replace_seed();

-- Admission state: token bucket levels and the period's money, one row per tenant, created on
-- first use. spent_usd is the ledger's cost settled within [period_start, period_end); it is
-- rebuilt from the durable ledger whenever the row is missing or the period rolls over.
-- reserved_usd is what open, unexpired reservations hold, whatever period admitted them.
create table bulkhead.budget_state (
    tenant_id    uuid        not null,
    rpm_level    float8      not null,
    itpm_level   float8      not null,
    otpm_level   float8      not null,
    -- The limits the levels were last computed under: a raised limit raises the level with it.
    rpm_cap      int         not null,
    itpm_cap     int         not null,
    otpm_cap     int         not null,
    refilled_at  timestamptz not null,
    period       text        not null,
    period_start timestamptz not null,
    period_end   timestamptz not null,
    spent_usd    numeric     not null,
    reserved_usd numeric     not null,
    -- The earliest lease among open reservations: expiry runs only once it has passed.
    next_expiry  timestamptz,
    constraint budget_state_pkey primary key (tenant_id),
    constraint budget_state_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id)
) with (fillfactor = 50);  -- room for HOT updates: one update per admitted call

create table bulkhead.reservations (
    tenant_id            uuid        not null,
    id                   uuid        not null,
    provider             text        not null,
    model                text        not null,
    est_input_tokens     int         not null,
    max_output_tokens    int         not null,
    reserved_usd         numeric     not null,
    price_effective_from timestamptz not null,
    created_at           timestamptz not null,
    lease_expires_at     timestamptz not null,
    settled_at           timestamptz,
    expired_at           timestamptz,
    -- Admitted for a call Bulkhead makes itself (complete(), embed_document(), the gateway):
    -- only the worker or the gateway settles it.
    queued               boolean     not null default false,
    -- A gateway call: when its lease ends unsettled (the gateway died after sending it), it is
    -- charged at its hold, never released: the provider may have served it (fail closed).
    bill_on_expiry       boolean     not null default false,
    -- Admitted in memory (bulkhead.memory_admission): its hold on the budget is in the tenant's
    -- slot in shared memory, not in budget_state, and is released there when this row closes.
    held_in_memory       boolean     not null default false,
    -- The budget its dollars count against: the tenant's own, or its eval budget (an eval call
    -- of a tenant with one, sql/evals.sql). reserved_usd is what it holds on the tenant's
    -- budget: 0 on the eval line, whose worst case the eval budget counts (_eval_budget_used).
    budget_line          text        not null default 'tenant',
    constraint reservations_pkey primary key (tenant_id, id),
    constraint reservations_budget_line_known check (budget_line in ('tenant', 'eval')),
    constraint reservations_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id)
);
create index reservations_open_by_lease on bulkhead.reservations (tenant_id, lease_expires_at)
    where settled_at is null and expired_at is null;

alter table bulkhead.budgets enable row level security;
alter table bulkhead.budgets force row level security;
alter table bulkhead.budget_defaults enable row level security;
alter table bulkhead.budget_defaults force row level security;
alter table bulkhead.budget_state enable row level security;
alter table bulkhead.budget_state force row level security;
alter table bulkhead.reservations enable row level security;
alter table bulkhead.reservations force row level security;

create policy tenant_isolation on bulkhead.budgets
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));
create policy tenant_isolation on bulkhead.budget_state
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));
create policy tenant_isolation on bulkhead.reservations
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));
create policy readable on bulkhead.budget_defaults for select using (true);
create policy control_plane on bulkhead.budget_defaults for update to bulkhead_admin using (true) with check (true);
-- The meter walks all tenants to expire their leases; it reads ids only.
create policy meter_lists_tenants on bulkhead.tenants for select to bulkhead_meter using (true);

grant select on bulkhead.budgets, bulkhead.budget_state, bulkhead.reservations to bulkhead_app, bulkhead_worker;
grant select, insert, update on bulkhead.budgets to bulkhead_admin;
grant select on bulkhead.budget_defaults to bulkhead_app, bulkhead_worker, bulkhead_admin, bulkhead_meter;
grant update on bulkhead.budget_defaults to bulkhead_admin;
grant select on bulkhead.tenants, bulkhead.budgets to bulkhead_meter;
grant select, insert, update on bulkhead.budget_state, bulkhead.reservations to bulkhead_meter;
-- Deleting a tenant removes its rows here too (delete_tenant runs as bulkhead_admin).
grant select, delete on bulkhead.budget_state, bulkhead.reservations to bulkhead_admin;
grant delete on bulkhead.budgets to bulkhead_admin;

select pg_catalog.pg_extension_config_dump('bulkhead.budgets', '');
select pg_catalog.pg_extension_config_dump('bulkhead.budget_defaults', '');
select pg_catalog.pg_extension_config_dump('bulkhead.budget_state', '');
select pg_catalog.pg_extension_config_dump('bulkhead.reservations', '');

-- Sets a tenant's limits (tenant_id NULL: the platform default for tenants without their own).
create function bulkhead.set_budget(
    tenant_id uuid,
    rpm int,
    itpm int,
    otpm int,
    dollar_limit numeric,
    period text default 'month'
)
returns void
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    previous text;
begin
    if rpm is null or itpm is null or otpm is null or dollar_limit is null or period is null then
        raise exception 'every limit is required'
            using errcode = '22004',
                  detail = 'rpm, itpm, otpm, dollar_limit and period must all be given; 0 blocks that dimension.';
    end if;
    if rpm < 0 or itpm < 0 or otpm < 0 or dollar_limit < 0 or dollar_limit = 'NaN' or dollar_limit >= 1e12 then
        raise exception 'invalid limit'
            using errcode = '22023',
                  detail = 'Limits are non-negative; dollar_limit is a finite amount below 1e12 USD.';
    end if;
    if period not in ('day', 'week', 'month') then
        raise exception 'unknown budget period %', pg_catalog.quote_literal(period)
            using errcode = '22023',
                  detail = 'A billing period is day, week or month, aligned to bulkhead.billing_time_zone.';
    end if;

    if set_budget.tenant_id is null then
        update bulkhead.budget_defaults d
        set rpm = set_budget.rpm, itpm = set_budget.itpm, otpm = set_budget.otpm,
            dollar_limit = set_budget.dollar_limit, period = set_budget.period, updated_at = pg_catalog.now();
        return;
    end if;

    previous := bulkhead._enter_tenant(set_budget.tenant_id);
    insert into bulkhead.budgets as b (tenant_id, rpm, itpm, otpm, dollar_limit, period)
    values (set_budget.tenant_id, set_budget.rpm, set_budget.itpm, set_budget.otpm,
            set_budget.dollar_limit, set_budget.period)
    on conflict on constraint budgets_pkey do update
    set rpm = excluded.rpm, itpm = excluded.itpm, otpm = excluded.otpm,
        dollar_limit = excluded.dollar_limit, period = excluded.period, updated_at = pg_catalog.now();
    -- A budget set by hand ends the tenant's temporary raise (console.sql): what was set stays.
    update bulkhead.budget_raises r set ended_at = pg_catalog.clock_timestamp(), ended_how = 'kept'
    where r.tenant_id = set_budget.tenant_id and r.ended_at is null;
    perform bulkhead._leave_tenant(previous);
end
$$;
comment on function bulkhead.set_budget(uuid, int, int, int, numeric, text) is
    'Sets a tenant''s RPM, ITPM, OTPM and dollar budget per period (NULL tenant: the platform default). bulkhead_admin only.';

-- Raises the 429 that PostgREST turns into HTTP 429, with the JSON detail clients act on.
-- Raises a refusal (PT429 or PT403, with its JSON detail). A request that came through PostgREST
-- (request.method set in this transaction, not left in the session by an earlier client: Rust,
-- _postgrest_request) gets PostgREST's documented custom error
-- instead, RAISE SQLSTATE 'PGRST', so that the HTTP answer carries the status and a Retry-After
-- header. PostgREST accepts only a string as `details` (an object fails the whole error with
-- PGRST121), so the JSON detail travels as text there; the headers carry what clients act on.
-- Everyone else gets the SQLSTATE itself.
create function bulkhead._raise_for_client(code text, message text, detail text, hint text)
returns void
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    retry_after_ms bigint;
    headers jsonb := '{}';
begin
    if code in ('PT429', 'PT403') and bulkhead._postgrest_request() then
        retry_after_ms := (detail::jsonb ->> 'retry_after_ms')::bigint;
        if retry_after_ms is not null then
            headers := pg_catalog.jsonb_build_object('Retry-After', pg_catalog.ceil(retry_after_ms / 1000.0)::bigint::text);
        end if;
        raise sqlstate 'PGRST' using
            message = pg_catalog.jsonb_build_object('code', code, 'message', message, 'details', detail, 'hint', hint)::text,
            detail = pg_catalog.jsonb_build_object('status', pg_catalog.substr(code, 3)::int, 'headers', headers)::text;
    end if;
    raise exception using errcode = code, message = message, detail = detail, hint = hint;
end
$$;

create function bulkhead._refuse(tenant uuid, code text, limit_name text, retry_after_ms bigint)
returns void
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
begin
    perform bulkhead._raise_for_client('PT429', code,
        pg_catalog.jsonb_build_object(
            'code', code, 'tenant_id', tenant, 'limit', limit_name, 'retry_after_ms', retry_after_ms)::text,
        case when retry_after_ms is null
             then 'This request can never fit the tenant''s limit; lower it or raise the limit.'
             else 'Retry after retry_after_ms milliseconds.' end);
end
$$;

-- Creates a tenant's budget_state row on its first budget event (a check, or an orphan settle).
-- Its '-infinity' period makes the next check rebuild the money from the durable ledger.
create function bulkhead._create_budget_state(tenant uuid, now_ts timestamptz)
returns void
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
begin
    insert into bulkhead.budget_state as s
        (tenant_id, rpm_level, itpm_level, otpm_level, rpm_cap, itpm_cap, otpm_cap,
         refilled_at, period, period_start, period_end, spent_usd, reserved_usd)
    select tenant, coalesce(b.rpm, d.rpm), coalesce(b.itpm, d.itpm), coalesce(b.otpm, d.otpm),
           coalesce(b.rpm, d.rpm), coalesce(b.itpm, d.itpm), coalesce(b.otpm, d.otpm),
           now_ts, coalesce(b.period, d.period), '-infinity', '-infinity', 0, 0
    from bulkhead.budget_defaults d left join bulkhead.budgets b on b.tenant_id = tenant
    on conflict on constraint budget_state_pkey do nothing;
exception when foreign_key_violation then
    -- A context naming a tenant that does not exist (a JWT of a deleted tenant, say).
    raise exception 'tenant % does not exist', tenant
        using errcode = '42704', detail = 'The tenant context names no tenant, so it has no budget.';
end
$$;

-- The table path of bulkhead.budget_check, which calls it unless bulkhead.memory_admission is
-- on. Admits one LLM call for the current tenant, or raises PT429; returns the reservation id
-- to pass to bulkhead.ledger_record(). The tenant's budget row stays locked until the
-- transaction ends, so keep it short. SECURITY DEFINER (as bulkhead_meter): it writes the
-- admission state, which callers only read.
create function bulkhead._budget_check_table(
    model text,
    est_input_tokens int,
    max_output_tokens int,
    lease interval default '10 minutes'
)
returns uuid
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
begin
    return bulkhead._admit_in_table(model, est_input_tokens, max_output_tokens, lease, 'tenant');
end
$$;

-- The admission itself, on a budget line: 'tenant' (every call), or 'eval' (an eval call of a
-- tenant with an eval budget, _budget_check_eval in sql/evals.sql, which holds its dollars on
-- that budget): the same rate limits, neither checks nor holds on the tenant's dollar budget.
-- bulkhead_meter only: the eval line must not be an application's way around its budget.
create function bulkhead._admit_in_table(
    model text,
    est_input_tokens int,
    max_output_tokens int,
    lease interval,
    line text
)
returns uuid
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := bulkhead.current_tenant();
    now_ts timestamptz := pg_catalog.clock_timestamp();
    tz text;
    st record;
    estimate numeric;
    local_period timestamp;
    elapsed float8;
    freed numeric;
    freed_all numeric;
    billed_usd numeric;
    reservation uuid := pg_catalog.gen_random_uuid();
    lease_seconds numeric;
    -- Named as the public function in messages.
    budget_check constant text := 'budget_check';
    lease_end timestamptz;
    hold numeric;
begin
    if line is null or line not in ('tenant', 'eval') then
        raise exception 'budget line must be tenant or eval' using errcode = '22023';
    end if;
    if tenant is null then
        raise exception 'no tenant context'
            using errcode = '42501',
                  detail = 'budget_check admits calls for the current tenant, and this transaction has none.',
                  hint = 'Call bulkhead.set_tenant(...) first, or pass a JWT with app_metadata.tenant_id.';
    end if;
    if model is null or est_input_tokens is null or max_output_tokens is null or lease is null then
        raise exception 'model, est_input_tokens, max_output_tokens and lease are required'
            using errcode = '22004', detail = 'budget_check cannot estimate a call without them.';
    end if;
    if est_input_tokens < 0 or max_output_tokens < 0
       or est_input_tokens > 100000000 or max_output_tokens > 100000000 then
        raise exception 'token counts must be between 0 and 100000000'
            using errcode = '22023', detail = 'est_input_tokens and max_output_tokens describe one call.';
    end if;
    -- Compared in seconds: intervals mixing months and days compare by a 30-day month.
    lease_seconds := extract(epoch from lease);
    if lease_seconds < extract(epoch from pg_catalog.current_setting('bulkhead.min_lease')::interval)
       or lease_seconds > 86400 then
        raise exception 'lease must be between bulkhead.min_lease (%) and one day',
                pg_catalog.current_setting('bulkhead.min_lease')
            using errcode = '22023',
                  detail = 'An unsettled reservation stops holding budget when its lease ends, so a lease shorter than the provider call would let the call escape the budget.';
    end if;
    lease_end := now_ts + pg_catalog.make_interval(secs => lease_seconds);

    -- One statement takes the lock that serialises this tenant's admissions (its state row) and
    -- reads its limits and the model's current price. A tenant's first call creates the row.
    for attempt in 1..2 loop
        select s.*,
               coalesce(b.rpm, d.rpm) as lim_rpm, coalesce(b.itpm, d.itpm) as lim_itpm,
               coalesce(b.otpm, d.otpm) as lim_otpm, coalesce(b.dollar_limit, d.dollar_limit) as lim_dollars,
               coalesce(b.period, d.period) as lim_period,
               p.provider as price_provider, p.effective_from as price_from,
               p.input_per_mtok, p.output_per_mtok, t.status as tenant_status
        into st
        from bulkhead.budget_state s
        join bulkhead.tenants t on t.id = s.tenant_id
        cross join bulkhead.budget_defaults d
        left join bulkhead.budgets b on b.tenant_id = s.tenant_id
        left join lateral (
            select pr.provider, pr.effective_from, pr.input_per_mtok, pr.output_per_mtok
            from bulkhead.prices pr
            where pr.model = _admit_in_table.model and pr.effective_from <= now_ts
            order by pr.effective_from desc
            limit 1
        ) p on true
        where s.tenant_id = tenant
        for update of s;
        exit when found;
        perform bulkhead._create_budget_state(tenant, now_ts);
    end loop;

    -- A tenant that admits in memory (a slot was loaded, under the lock now held) keeps a single
    -- admission state there: this call goes there too.
    if bulkhead._admission_in_memory() then
        if line = 'eval' then
            return coalesce(bulkhead._admit_eval_in_memory(model, est_input_tokens, max_output_tokens, lease),
                            bulkhead._raise_refusal());
        end if;
        return bulkhead.budget_check(model, est_input_tokens, max_output_tokens, lease);
    end if;

    if st.tenant_status <> 'active' then
        perform bulkhead._raise_for_client('PT403', 'tenant_suspended',
            pg_catalog.jsonb_build_object('code', 'tenant_suspended', 'tenant_id', tenant)::text,
            'A suspended tenant makes no LLM calls until bulkhead_admin sets its status back to active.');
    end if;

    if st.price_provider is null then
        raise exception 'unknown model %', pg_catalog.quote_literal(model)
            using errcode = '22023',
                  detail = 'No price is in effect for this model, so its cost cannot be bounded; the call is refused.',
                  hint = 'Add one with bulkhead.set_price(provider, model, input_per_mtok, output_per_mtok).';
    end if;
    estimate := pg_catalog.trim_scale(
        (est_input_tokens * st.input_per_mtok + max_output_tokens * st.output_per_mtok) / 1000000);

    -- A new billing period (or a changed period length): the money is rebuilt from the ledger
    -- (costs settled inside the new window) and the reservations still holding budget.
    if now_ts >= st.period_end or now_ts < st.period_start or st.period <> st.lim_period then
        tz := pg_catalog.current_setting('bulkhead.billing_time_zone');
        local_period := pg_catalog.date_trunc(st.lim_period, now_ts at time zone tz);
        st.period := st.lim_period;
        st.period_start := local_period at time zone tz;
        st.period_end := (local_period + pg_catalog.make_interval(
            days => case st.lim_period when 'day' then 1 when 'week' then 7 else 0 end,
            months => case st.lim_period when 'month' then 1 else 0 end)) at time zone tz;
        select coalesce(sum(l.cost_usd), 0) into st.spent_usd
        from bulkhead.ledger l
        where l.tenant_id = tenant and l.created_at >= st.period_start and l.created_at < st.period_end
          and l.budget_line = 'tenant';
        -- Holds of rows admitted in memory were never in budget_state (nor are released there).
        select coalesce(sum(r.reserved_usd) filter (where not r.held_in_memory), 0), min(r.lease_expires_at)
        into st.reserved_usd, st.next_expiry
        from bulkhead.reservations r
        where r.tenant_id = tenant and r.settled_at is null and r.expired_at is null;
    end if;

    -- Leases that ran out stop holding budget (here, lazily, and in expire_reservations()).
    if st.next_expiry <= now_ts then
        with expired as (
            update bulkhead.reservations r set expired_at = now_ts,
                settled_at = case when r.bill_on_expiry then now_ts end
            where r.tenant_id = tenant and r.settled_at is null and r.expired_at is null
              and r.lease_expires_at <= now_ts
            returning r.*
        ),
        billed as (
            select bulkhead._bill_at_hold(pg_catalog.array_agg(row(e.*)::bulkhead.reservations)) as usd from expired e where e.bill_on_expiry
        )
        select coalesce(sum(e.reserved_usd) filter (where not e.held_in_memory), 0), coalesce(sum(e.reserved_usd), 0),
               coalesce((select b.usd from billed b), 0)
        into freed, freed_all, billed_usd from expired e;
        st.reserved_usd := greatest(st.reserved_usd - freed, 0);
        if now_ts >= st.period_start and now_ts < st.period_end then
            st.spent_usd := st.spent_usd + billed_usd;
        end if;
        -- Should this transaction go on to load the tenant's slot in memory (see
        -- Pending::Release in extension/src/admission.rs).
        if freed_all > 0 then
            perform bulkhead._release_in_memory(freed_all, billed_usd, 0, 0);
        end if;
        select min(r.lease_expires_at) into st.next_expiry
        from bulkhead.reservations r
        where r.tenant_id = tenant and r.settled_at is null and r.expired_at is null;
    end if;

    -- A changed limit moves the level by the change: raising RPM from 3 to 1000 admits at once.
    -- Buckets refill continuously at limit-per-minute; a burst is at most one minute's worth.
    elapsed := greatest(extract(epoch from now_ts - st.refilled_at), 0);
    st.rpm_level := least(st.lim_rpm, st.rpm_level + (st.lim_rpm - st.rpm_cap) + elapsed * st.lim_rpm / 60.0);
    st.itpm_level := least(st.lim_itpm, st.itpm_level + (st.lim_itpm - st.itpm_cap) + elapsed * st.lim_itpm / 60.0);
    st.otpm_level := least(st.lim_otpm, st.otpm_level + (st.lim_otpm - st.otpm_cap) + elapsed * st.lim_otpm / 60.0);

    -- A limit of 0 blocks its dimension, whatever the request asks for.
    if st.lim_itpm = 0 then
        perform bulkhead._refuse(tenant, 'tenant_rate_limit_exceeded', 'itpm', null);
    elsif st.lim_otpm = 0 then
        perform bulkhead._refuse(tenant, 'tenant_rate_limit_exceeded', 'otpm', null);
    elsif st.lim_dollars = 0 and line = 'tenant' then
        perform bulkhead._refuse(tenant, 'tenant_budget_exceeded', 'dollar_budget', null);
    end if;
    if st.lim_rpm < 1 then
        perform bulkhead._refuse(tenant, 'tenant_rate_limit_exceeded', 'rpm', null);
    elsif st.rpm_level < 1 then
        perform bulkhead._refuse(tenant, 'tenant_rate_limit_exceeded', 'rpm',
            ceil((1 - st.rpm_level) * 60000 / st.lim_rpm)::bigint);
    end if;
    if est_input_tokens > st.lim_itpm then
        perform bulkhead._refuse(tenant, 'tenant_rate_limit_exceeded', 'itpm', null);
    elsif est_input_tokens > st.itpm_level then
        perform bulkhead._refuse(tenant, 'tenant_rate_limit_exceeded', 'itpm',
            ceil((est_input_tokens - st.itpm_level) * 60000 / st.lim_itpm)::bigint);
    end if;
    if max_output_tokens > st.lim_otpm then
        perform bulkhead._refuse(tenant, 'tenant_rate_limit_exceeded', 'otpm', null);
    elsif max_output_tokens > st.otpm_level then
        perform bulkhead._refuse(tenant, 'tenant_rate_limit_exceeded', 'otpm',
            ceil((max_output_tokens - st.otpm_level) * 60000 / st.lim_otpm)::bigint);
    end if;
    if line = 'eval' then
        hold := 0;
    elsif estimate > st.lim_dollars then
        perform bulkhead._refuse(tenant, 'tenant_budget_exceeded', 'dollar_budget', null);
    elsif st.spent_usd + st.reserved_usd + estimate > st.lim_dollars then
        perform bulkhead._refuse(tenant, 'tenant_budget_exceeded', 'dollar_budget',
            ceil(extract(epoch from st.period_end - now_ts) * 1000)::bigint);
    else
        hold := estimate;
    end if;

    insert into bulkhead.reservations
        (tenant_id, id, provider, model, est_input_tokens, max_output_tokens, reserved_usd,
         price_effective_from, created_at, lease_expires_at, budget_line)
    values
        (tenant, reservation, st.price_provider, _admit_in_table.model, est_input_tokens, max_output_tokens, hold,
         st.price_from, now_ts, lease_end, line);
    update bulkhead.budget_state s
    set rpm_level = st.rpm_level - 1,
        itpm_level = st.itpm_level - est_input_tokens,
        otpm_level = st.otpm_level - max_output_tokens,
        rpm_cap = st.lim_rpm,
        itpm_cap = st.lim_itpm,
        otpm_cap = st.lim_otpm,
        refilled_at = now_ts,
        period = st.period,
        period_start = st.period_start,
        period_end = st.period_end,
        spent_usd = st.spent_usd,
        reserved_usd = st.reserved_usd + hold,
        next_expiry = least(st.next_expiry, lease_end)
    where s.tenant_id = tenant;
    -- Should this transaction go on to load the tenant's slot in memory, it counts this row.
    perform bulkhead._table_hold_in_memory(hold);

    -- Admission state need not survive a crash (the ledger does): an asynchronous commit lets
    -- checks run without a WAL flush each. A crash loses at most the reservations in flight.
    -- This applies to the whole transaction; ledger_record switches it back on for its own.
    if pg_catalog.current_setting('bulkhead.async_admission')::boolean then
        perform pg_catalog.set_config('synchronous_commit', 'off', true);
    end if;
    return reservation;
end
$$;
-- Raises the refusal bulkhead._admit_in_memory() just answered with NULL (PT429 or PT403).
-- SECURITY DEFINER (as bulkhead_meter) so that only the meter can read the kept refusal
-- (_admission_refusal): applications reach it only through this raise.
create function bulkhead._raise_refusal()
returns uuid
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    refusal record;
begin
    select * into refusal from bulkhead._admission_refusal();
    if not found then
        raise exception 'no admission refusal to raise'
            using errcode = '55000',
                  detail = 'A refusal is kept only for the transaction and tenant that met it.';
    end if;
    perform bulkhead._raise_for_client(refusal.sqlstate, refusal.message, refusal.detail, refusal.hint);
    return null;
end
$$;

-- Admits one LLM call for the current tenant against RPM, ITPM, OTPM and the dollar budget, or
-- raises PT429; returns the reservation id to pass to bulkhead.ledger_record(). In memory when
-- bulkhead.memory_admission is on (extension/src/admission.rs), else by the table path.
-- A single SELECT in SQL, without SET search_path, so that the planner inlines it into the
-- caller's statement: it runs on every LLM call, and every name in it is schema-qualified.
create function bulkhead.budget_check(
    model text,
    est_input_tokens int,
    max_output_tokens int,
    lease interval default '10 minutes'
)
returns uuid
language sql volatile
security invoker
as $$
    select case when bulkhead._admission_in_memory()
                then coalesce(bulkhead._admit_in_memory(model, est_input_tokens, max_output_tokens, lease),
                              bulkhead._raise_refusal())
                else bulkhead._budget_check_table(model, est_input_tokens, max_output_tokens, lease)
           end
$$;
comment on function bulkhead.budget_check(text, int, int, interval) is
    'Admits one LLM call for the current tenant against RPM, ITPM, OTPM and the dollar budget, or raises PT429; returns the reservation id.';

-- Microseconds since 2000-01-01 UTC: PostgreSQL's own TimestampTz, as the Rust side reads it.
create function bulkhead._micros(t timestamptz)
returns bigint
language sql immutable parallel safe
security invoker
set search_path to pg_catalog, pg_temp
as $$ select ((extract(epoch from t) - 946684800) * 1000000)::bigint $$;

-- What memory admission needs from the tables for one (tenant, model): the tenant's status,
-- its limits (or the default's) and the model's price in effect. No row: no such tenant.
create function bulkhead._admission_terms(model text)
returns table (status text, rpm int, itpm int, otpm int, dollar_limit text, period text,
               provider text, price_from bigint, input_per_mtok text, output_per_mtok text)
language sql stable
security definer
set search_path to pg_catalog, pg_temp
as $$
    select t.status, coalesce(b.rpm, d.rpm), coalesce(b.itpm, d.itpm), coalesce(b.otpm, d.otpm),
           coalesce(b.dollar_limit, d.dollar_limit)::text, coalesce(b.period, d.period),
           p.provider, bulkhead._micros(p.effective_from), p.input_per_mtok::text, p.output_per_mtok::text
    from bulkhead.tenants t
    cross join bulkhead.budget_defaults d
    left join bulkhead.budgets b on b.tenant_id = t.id
    left join lateral (
        select pr.provider, pr.effective_from, pr.input_per_mtok, pr.output_per_mtok
        from bulkhead.prices pr
        where pr.model = _admission_terms.model and pr.effective_from <= pg_catalog.clock_timestamp()
        order by pr.effective_from desc
        limit 1
    ) p on true
    where t.id = bulkhead.current_tenant()
$$;

-- The current tenant's period bounds and money, for a memory slot that is new or whose period
-- ended. It locks the budget_state row that settles lock too, until this transaction ends: a
-- settle either committed before the ledger is summed here (and is in the sum) or commits after
-- the slot holds this sum (and adds its cost to the slot). held_usd: what the tenant's open
-- reservation rows hold, whichever path admitted them (a slot holds every hold of its tenant).
create function bulkhead._admission_load(period text)
returns table (period_start bigint, period_end bigint, spent_usd text, held_usd text, held_next_expiry bigint)
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := bulkhead.current_tenant();
    now_ts timestamptz := pg_catalog.clock_timestamp();
    tz text := pg_catalog.current_setting('bulkhead.billing_time_zone');
    local_period timestamp := pg_catalog.date_trunc(period, now_ts at time zone tz);
    starts timestamptz := local_period at time zone tz;
    ends timestamptz := (local_period + pg_catalog.make_interval(
        days => case period when 'day' then 1 when 'week' then 7 else 0 end,
        months => case period when 'month' then 1 else 0 end)) at time zone tz;
begin
    perform from bulkhead.budget_state s where s.tenant_id = tenant for update;
    if not found then
        perform bulkhead._create_budget_state(tenant, now_ts);
        perform from bulkhead.budget_state s where s.tenant_id = tenant for update;
    end if;
    return query
    select bulkhead._micros(starts), bulkhead._micros(ends),
           (select coalesce(sum(l.cost_usd), 0) from bulkhead.ledger l
            where l.tenant_id = tenant and l.created_at >= starts and l.created_at < ends
              and l.budget_line = 'tenant')::text,
           (select coalesce(sum(r.reserved_usd), 0) from bulkhead.reservations r
            where r.tenant_id = tenant and r.settled_at is null and r.expired_at is null)::text,
           (select bulkhead._micros(min(r.lease_expires_at)) from bulkhead.reservations r
            where r.tenant_id = tenant and r.settled_at is null and r.expired_at is null);
end
$$;

-- Writes an in-memory reservation of the current tenant as a row (its hold stays in memory).
-- A gateway call's row is queued (only the gateway settles it) and billed at its hold if its
-- lease ends unsettled.
create function bulkhead._reservation_from_memory(
    id uuid, provider text, model text, est_input_tokens int, max_output_tokens int,
    reserved_usd numeric, price_from bigint, created bigint, lease_end bigint, expired boolean,
    gateway boolean)
returns void
language sql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
    insert into bulkhead.reservations
        (tenant_id, id, provider, model, est_input_tokens, max_output_tokens, reserved_usd,
         price_effective_from, created_at, lease_expires_at, expired_at, held_in_memory, queued, bill_on_expiry)
    select bulkhead.current_tenant(), id, provider, model, est_input_tokens, max_output_tokens, reserved_usd,
           ts.price_from, ts.created, ts.lease_end, case when expired then ts.lease_end end, true, gateway, gateway
    from (select timestamptz '2000-01-01 00:00:00+00' + price_from * interval '1 microsecond' as price_from,
                 timestamptz '2000-01-01 00:00:00+00' + created * interval '1 microsecond' as created,
                 timestamptz '2000-01-01 00:00:00+00' + lease_end * interval '1 microsecond' as lease_end) ts
$$;

-- Before memory admission refuses for money: the current tenant's reservation rows whose lease
-- ran out stop holding budget (released in memory at commit). Returns what they held and the
-- earliest lease still open.
create function bulkhead._expire_held_in_memory()
returns table (freed numeric, next_expiry bigint)
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := bulkhead.current_tenant();
    freed_in_table numeric;
    billed_usd numeric;
begin
    perform from bulkhead.budget_state s where s.tenant_id = tenant for update;
    -- Gateway calls lapsed unsettled in memory become rows, charged below.
    perform bulkhead._materialize_lapsed_gateway_holds();
    with expired as (
        update bulkhead.reservations r set expired_at = pg_catalog.clock_timestamp(),
            settled_at = case when r.bill_on_expiry then pg_catalog.clock_timestamp() end
        where r.tenant_id = tenant and r.settled_at is null and r.expired_at is null
          and r.lease_expires_at <= pg_catalog.clock_timestamp()
        returning r.*
    ),
    billed as (
        select bulkhead._bill_at_hold(pg_catalog.array_agg(row(e.*)::bulkhead.reservations)) as usd from expired e where e.bill_on_expiry
    )
    select coalesce(sum(e.reserved_usd), 0), coalesce(sum(e.reserved_usd) filter (where not e.held_in_memory), 0),
           coalesce((select b.usd from billed b), 0)
    into freed, freed_in_table, billed_usd from expired e;
    -- Gateway calls lapsed unsettled: their holds become costs (fail closed), the rest is freed.
    if freed > 0 then
        perform bulkhead._release_in_memory(freed, billed_usd, 0, 0);
    end if;
    -- Rows the table path admitted are in budget_state's holds too.
    if freed_in_table > 0 or billed_usd > 0 then
        update bulkhead.budget_state s set reserved_usd = greatest(s.reserved_usd - freed_in_table, 0),
            spent_usd = s.spent_usd + case when pg_catalog.clock_timestamp() >= s.period_start
                                            and pg_catalog.clock_timestamp() < s.period_end then billed_usd else 0 end
        where s.tenant_id = tenant;
    end if;
    if billed_usd > 0 then
        -- Charges are ledger rows: durable when this commits, as every settle's.
        perform pg_catalog.set_config('synchronous_commit', 'on', true);
    end if;
    -- What the admission may count as room: a hold charged at its hold frees nothing.
    freed := freed - billed_usd;
    select bulkhead._micros(min(r.lease_expires_at)) into next_expiry from bulkhead.reservations r
    where r.tenant_id = tenant and r.settled_at is null and r.expired_at is null;
    return next;
end
$$;

-- Changes to limits and prices reach every backend's cached terms (the same signal as tenants).
create trigger budgets_changed after insert or update or delete or truncate on bulkhead.budgets
    for each statement execute function bulkhead._tenants_changed();
create trigger budget_defaults_changed after insert or update or delete or truncate on bulkhead.budget_defaults
    for each statement execute function bulkhead._tenants_changed();
create trigger prices_changed after insert or update or delete or truncate on bulkhead.prices
    for each statement execute function bulkhead._tenants_changed();

-- Expires the current tenant's unsettled reservations whose lease ran out; returns how many.
create function bulkhead.expire_reservations()
returns bigint
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := bulkhead.current_tenant();
begin
    if tenant is null then
        raise exception 'no tenant context'
            using errcode = '42501',
                  detail = 'expire_reservations acts for the current tenant; bulkhead.expire_all_reservations() sweeps every tenant.';
    end if;
    return bulkhead._expire_tenant(tenant, false);
end
$$;
comment on function bulkhead.expire_reservations() is
    'Releases the budget held by the current tenant''s reservations whose lease ran out.';

-- For the worker's periodic sweep: every tenant, each in its own context. A tenant whose state
-- row is busy (an admission in flight) is skipped: its next check expires its leases itself.
create function bulkhead.expire_all_reservations()
returns bigint
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    previous text := coalesce(pg_catalog.current_setting('bulkhead.tenant_id', true), '');
    target uuid;
    expired_count bigint := 0;
begin
    for target in select t.id from bulkhead.tenants t order by t.id loop
        perform bulkhead._set_tenant_within_function(target);
        expired_count := expired_count + bulkhead._expire_tenant(target, true);
    end loop;
    perform bulkhead._leave_tenant(previous);
    return expired_count;
end
$$;
comment on function bulkhead.expire_all_reservations() is
    'Releases the budget held by expired reservations of every tenant (for the worker''s sweep).';

-- The expiry itself, in the tenant's context; same lock order as budget_check (state row first).
create function bulkhead._expire_tenant(tenant uuid, skip_busy boolean)
returns bigint
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    n bigint;
    freed numeric;
    freed_in_memory numeric;
    billed_usd numeric;
begin
    if skip_busy then
        perform from bulkhead.budget_state s where s.tenant_id = tenant for update skip locked;
        if not found then
            return 0;
        end if;
    else
        perform from bulkhead.budget_state s where s.tenant_id = tenant for update;
    end if;
    -- Gateway calls lapsed unsettled in memory become rows, charged below.
    perform bulkhead._materialize_lapsed_gateway_holds();
    with expired as (
        update bulkhead.reservations r set expired_at = pg_catalog.clock_timestamp(),
            settled_at = case when r.bill_on_expiry then pg_catalog.clock_timestamp() end
        where r.tenant_id = tenant and r.settled_at is null and r.expired_at is null
          and r.lease_expires_at <= pg_catalog.clock_timestamp()
        returning r.*
    ),
    billed as (
        select bulkhead._bill_at_hold(pg_catalog.array_agg(row(e.*)::bulkhead.reservations)) as usd from expired e where e.bill_on_expiry
    )
    select count(*), coalesce(sum(e.reserved_usd) filter (where not e.held_in_memory), 0),
           coalesce(sum(e.reserved_usd), 0), coalesce((select b.usd from billed b), 0)
    into n, freed, freed_in_memory, billed_usd from expired e;
    -- A tenant with a slot in memory holds every row's hold there (applied at commit); gateway
    -- calls lapsed unsettled become costs at their hold (fail closed).
    if freed_in_memory > 0 then
        perform bulkhead._release_in_memory(freed_in_memory, billed_usd, 0, 0);
    end if;
    if billed_usd > 0 then
        perform pg_catalog.set_config('synchronous_commit', 'on', true);
    end if;
    n := n + bulkhead._expire_in_memory();
    if n > 0 then
        update bulkhead.budget_state s
        set reserved_usd = greatest(s.reserved_usd - freed, 0),
            spent_usd = s.spent_usd + case when pg_catalog.clock_timestamp() >= s.period_start
                                            and pg_catalog.clock_timestamp() < s.period_end then billed_usd else 0 end,
            next_expiry = (select min(r.lease_expires_at) from bulkhead.reservations r
                           where r.tenant_id = tenant and r.settled_at is null and r.expired_at is null)
        where s.tenant_id = tenant;
    end if;
    return n;
end
$$;

revoke all on function bulkhead.set_budget(uuid, int, int, int, numeric, text) from public;
revoke all on function bulkhead._refuse(uuid, text, text, bigint) from public;
revoke all on function bulkhead._raise_for_client(text, text, text, text) from public;
revoke all on function bulkhead._postgrest_request() from public;
grant execute on function bulkhead._postgrest_request() to bulkhead_meter;
grant execute on function bulkhead._raise_for_client(text, text, text, text) to bulkhead_meter;
revoke all on function bulkhead._create_budget_state(uuid, timestamptz) from public;
revoke all on function bulkhead.budget_check(text, int, int, interval) from public;
revoke all on function bulkhead._budget_check_table(text, int, int, interval) from public;
revoke all on function bulkhead._admit_in_table(text, int, int, interval, text) from public;
revoke all on function bulkhead._admit_eval_in_memory(text, int, int, interval) from public;
revoke all on function bulkhead._admission_terms(text) from public;
revoke all on function bulkhead._admission_load(text) from public;
revoke all on function bulkhead._reservation_from_memory(uuid, text, text, int, int, numeric, bigint, bigint, bigint, boolean, boolean) from public;
revoke all on function bulkhead._expire_held_in_memory() from public;
revoke all on function bulkhead._admission_in_memory() from public;
revoke all on function bulkhead._materialize_reservation(uuid) from public;
revoke all on function bulkhead._materialize_lapsed_gateway_holds() from public;
revoke all on function bulkhead._reservation_being_written(uuid) from public;
revoke all on function bulkhead._release_in_memory(numeric, numeric, bigint, bigint) from public;
revoke all on function bulkhead._forget_in_memory(uuid) from public;
revoke all on function bulkhead._expire_in_memory() from public;
revoke all on function bulkhead._open_in_memory() from public;
revoke all on function bulkhead._admit_in_memory(text, int, int, interval) from public;
revoke all on function bulkhead._admission_refusal() from public;
revoke all on function bulkhead._raise_refusal() from public;
revoke all on function bulkhead._micros(timestamptz) from public;
revoke all on function bulkhead._table_hold_in_memory(numeric) from public;
revoke all on function bulkhead.expire_reservations() from public;
revoke all on function bulkhead.expire_all_reservations() from public;
revoke all on function bulkhead._expire_tenant(uuid, boolean) from public;
grant execute on function bulkhead.set_budget(uuid, int, int, int, numeric, text) to bulkhead_admin;
grant execute on function bulkhead._refuse(uuid, text, text, bigint) to bulkhead_meter;
grant execute on function bulkhead._create_budget_state(uuid, timestamptz) to bulkhead_meter;
grant execute on function bulkhead._leave_tenant(text) to bulkhead_meter;
grant execute on function bulkhead.budget_check(text, int, int, interval) to bulkhead_app, bulkhead_worker, bulkhead_meter;
grant execute on function bulkhead._budget_check_table(text, int, int, interval), bulkhead._admission_in_memory(),
    bulkhead._admit_in_memory(text, int, int, interval), bulkhead._raise_refusal()
    to bulkhead_app, bulkhead_worker, bulkhead_meter;
-- budget_check runs its slow paths as bulkhead_meter: only the meter reaches these.
grant execute on function bulkhead._budget_check_table(text, int, int, interval), bulkhead._admission_terms(text),
    bulkhead._admission_load(text), bulkhead._expire_held_in_memory(), bulkhead._admission_in_memory(),
    bulkhead._reservation_from_memory(uuid, text, text, int, int, numeric, bigint, bigint, bigint, boolean, boolean),
    bulkhead._materialize_reservation(uuid), bulkhead._release_in_memory(numeric, numeric, bigint, bigint),
    bulkhead._materialize_lapsed_gateway_holds(), bulkhead._reservation_being_written(uuid), bulkhead._expire_in_memory(), bulkhead._open_in_memory(), bulkhead._micros(timestamptz),
    bulkhead._admit_in_memory(text, int, int, interval), bulkhead._admission_refusal(),
    bulkhead._table_hold_in_memory(numeric), bulkhead._admit_in_table(text, int, int, interval, text),
    bulkhead._admit_eval_in_memory(text, int, int, interval) to bulkhead_meter;
grant execute on function bulkhead._forget_in_memory(uuid) to bulkhead_admin;
-- usage_report (invoker) lists the caller's own open reservations in memory.
grant execute on function bulkhead._open_in_memory() to bulkhead_app, bulkhead_worker, bulkhead_admin;
grant execute on function bulkhead.expire_reservations() to bulkhead_app, bulkhead_worker;
grant execute on function bulkhead.expire_all_reservations() to bulkhead_worker, bulkhead_admin;
grant execute on function bulkhead._expire_tenant(uuid, boolean) to bulkhead_meter;
