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
grant select, insert, delete on bulkhead.usage_daily to bulkhead_reporter;
grant select, insert, update on bulkhead.usage_rollup to bulkhead_reporter;
create policy reporter_reads on bulkhead.tenants for select to bulkhead_reporter using (true);
create policy reporter_sums on bulkhead.budgets for select to bulkhead_reporter using (true);
create policy reporter_sums on bulkhead.budget_state for select to bulkhead_reporter using (true);
create policy reporter_sums on bulkhead.ledger for select to bulkhead_reporter using (true);
create policy reporter_sums on bulkhead.usage_daily for all to bulkhead_reporter using (true) with check (true);
create policy reporter_rebuilds on bulkhead.usage_rollup for all to bulkhead_reporter using (true) with check (true);
create policy reporter_sums on bulkhead.usage_drift for select to bulkhead_reporter using (true);
grant execute on function bulkhead._usage_sums(timestamptz, timestamptz, uuid), bulkhead._usage_span(timestamptz, timestamptz),
    bulkhead._caller() to bulkhead_reporter;

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
    if pg_catalog.pg_has_role(caller, 'bulkhead_admin', 'member')
       or pg_catalog.pg_has_role(caller, 'bulkhead_finance', 'member') then
        return true;
    end if;
    if pg_catalog.pg_has_role(caller, 'bulkhead_support', 'member') then
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
create function bulkhead.tenant_overview()
returns table (
    tenant_id uuid, slug text, name text, status text, created_at timestamptz,
    rpm int, itpm int, otpm int, own_budget boolean,
    period text, period_start timestamptz, dollar_limit numeric, spent_usd numeric, reserved_usd numeric,
    calls_today bigint, cost_today numeric, last_activity timestamptz
)
language plpgsql stable
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    sees_money boolean := bulkhead._console_reader('tenant_overview');
    zone text := pg_catalog.current_setting('bulkhead.billing_time_zone');
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
        ),
        bounds as (
            select l.*, pg_catalog.date_trunc(l.period, now_ts at time zone zone) at time zone zone as starts
            from limits l
        ),
        today_sums as (
            select u.tenant_id, sum(u.requests)::bigint as calls, sum(u.cost_usd) as cost
            from bulkhead._usage_sums(today::timestamp at time zone zone, (today + 1)::timestamp at time zone zone, null) u
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
               (select max(u.last_at) from bulkhead.usage_daily u
                where u.tenant_id = b.id
                  and u.day = (select max(v.day) from bulkhead.usage_daily v where v.tenant_id = b.id))
        from bounds b
        left join bulkhead.budget_state s on s.tenant_id = b.id
        left join today_sums x on x.tenant_id = b.id;
end
$$;
comment on function bulkhead.tenant_overview() is
    'One row per tenant for the console: status, limits, this period''s spend and reservations, today''s calls and cost, last activity (money for bulkhead_admin and bulkhead_finance only).';

-- One tenant's usage per day, provider and model over the days [from, to) (billing time zone),
-- for the console's chart: calls and tokens, and cost for bulkhead_admin and bulkhead_finance.
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
    zone text := pg_catalog.current_setting('bulkhead.billing_time_zone');
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
-- (UTC days): what the provider counted minus what the ledger holds.
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
create function bulkhead.rebuild_usage_rollup()
returns bigint
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    zone text := pg_catalog.current_setting('bulkhead.billing_time_zone');
    written bigint;
begin
    if pg_catalog.current_setting('transaction_isolation') <> 'read committed' then
        raise exception 'rebuild_usage_rollup runs at read committed'
            using errcode = '25001', detail = 'It must see every settle that committed before it took its lock.';
    end if;
    lock table bulkhead.usage_daily in exclusive mode;
    delete from bulkhead.usage_daily;
    insert into bulkhead.usage_daily
    select l.tenant_id, (l.created_at at time zone zone)::date, l.provider, l.model, l.budget_line,
           count(*), sum(l.input_tokens), sum(l.cached_input_tokens), sum(l.cache_write_tokens),
           sum(l.output_tokens), sum(l.reasoning_tokens), coalesce(sum(l.reserved_usd), 0), sum(l.cost_usd),
           max(l.created_at)
    from bulkhead.ledger l
    group by 1, 2, 3, 4, 5;
    get diagnostics written = row_count;
    insert into bulkhead.usage_rollup (zone, stale_since, built_at) values (zone, null, pg_catalog.clock_timestamp())
    on conflict on constraint usage_rollup_pkey do update
        set zone = excluded.zone, stale_since = null, built_at = excluded.built_at;
    return written;
end
$$;
comment on function bulkhead.rebuild_usage_rollup() is
    'Rebuilds the per-day usage rollup from the ledger in the current billing time zone (after that setting changed). bulkhead_admin only.';

alter function bulkhead.tenant_overview() owner to bulkhead_reporter;
alter function bulkhead.usage_by_tenant(timestamptz, timestamptz) owner to bulkhead_reporter;
alter function bulkhead.drift_by_tenant(date, date) owner to bulkhead_reporter;
alter function bulkhead.tenant_daily_usage(uuid, date, date) owner to bulkhead_reporter;
alter function bulkhead.rebuild_usage_rollup() owner to bulkhead_reporter;
revoke all on function bulkhead.tenant_overview(), bulkhead.drift_by_tenant(date, date), bulkhead.tenant_daily_usage(uuid, date, date),
    bulkhead.rebuild_usage_rollup() from public;
grant execute on function bulkhead.tenant_overview(), bulkhead.tenant_daily_usage(uuid, date, date)
    to bulkhead_admin, bulkhead_support, bulkhead_finance;
grant execute on function bulkhead.usage_by_tenant(timestamptz, timestamptz), bulkhead.drift_by_tenant(date, date)
    to bulkhead_admin, bulkhead_finance;
grant execute on function bulkhead.rebuild_usage_rollup() to bulkhead_admin;

-- The rollup: the meter writes it as settles commit; tenants read their own rows (usage_report);
-- the control plane deletes a tenant's rows with the tenant.
grant select, insert, update on bulkhead.usage_daily to bulkhead_meter;
grant select on bulkhead.usage_daily to bulkhead_app, bulkhead_worker, bulkhead_admin;
grant delete on bulkhead.usage_daily to bulkhead_admin;  -- tenant deletion only
grant select on bulkhead.usage_rollup to bulkhead_meter, bulkhead_app, bulkhead_worker, bulkhead_admin,
    bulkhead_support, bulkhead_finance;
grant insert, update on bulkhead.usage_rollup to bulkhead_meter;
revoke all on function bulkhead._usage_rollup_add(), bulkhead._usage_span(timestamptz, timestamptz),
    bulkhead._usage_sums(timestamptz, timestamptz, uuid) from public;
grant execute on function bulkhead._usage_span(timestamptz, timestamptz), bulkhead._usage_sums(timestamptz, timestamptz, uuid)
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
