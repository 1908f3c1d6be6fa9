-- The console's database side: the usage rollup (kept as ledger rows commit, equal to the ledger
-- for any window, stale after a time zone change until rebuilt), bulkhead_support and
-- bulkhead_finance (what each may read and change, refused by the database), tenant_overview().
\set SHOW_CONTEXT never
begin;
set client_min_messages = warning;
create role regress_con_admin in role bulkhead_admin;
create role regress_con_app in role bulkhead_app;
create role regress_con_support in role bulkhead_support;
create role regress_con_finance in role bulkhead_finance;
create role regress_con_worker in role bulkhead_worker;
set local bulkhead.billing_time_zone = 'America/New_York';
insert into bulkhead.tenants (id, slug, name, pinecone_namespace) values
    ('00000000-0000-4000-8000-0000000000c1', 'con-a', 'Tenant A', 'con-a'),
    ('00000000-0000-4000-8000-0000000000c2', 'con-b', 'Tenant B', 'con-b');

create function pg_temp.attempt(statement text) returns text language plpgsql as $$
declare
    result text;
begin
    execute statement into result;
    return 'ok: ' || coalesce(result, 'NULL');
exception when others then
    return 'ERROR ' || sqlstate || ': ' || sqlerrm;
end
$$;

set local role regress_con_admin;
select bulkhead.set_skeleton('greeting', 'Be {{ slots.tone }}. Greet {{ vars.name }}.') as skeleton;
select bulkhead.set_credential('00000000-0000-4000-8000-0000000000c1', 'openai', 'env:CON_A_KEY') is not null as credential_set;
reset role;

-- Ledger rows over ten days, every 37 minutes, for both tenants, two models and both budget
-- lines, written as a restore would not be (row security on): the trigger sums them.
insert into bulkhead.ledger (tenant_id, reservation_id, request_id, provider, model, input_tokens,
    cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens, itpm_tokens,
    reserved_usd, cost_usd, price_effective_from, created_at, budget_line)
select t.id, gen_random_uuid(), 'req-' || t.slug || '-' || g, 'openai',
       case when g % 3 = 0 then 'model-x' else 'model-y' end,
       100 + g, g % 7, 0, 10 + g % 11, g % 5, 100 + g, 0.001 * (g % 4), 0.0001 * g,
       '2025-01-01', timestamptz '2026-11-01 00:00:00+00' + g * interval '37 minutes',
       case when g % 10 = 0 then 'eval' else 'tenant' end
from (select id, slug from bulkhead.tenants where slug in ('con-a', 'con-b')) t,
     generate_series(1, 400) g;
-- One statement inserting rows for two tenants, days and models: summed per key.
select count(*) as rollup_rows, sum(requests) as requests from bulkhead.usage_daily
where tenant_id in ('00000000-0000-4000-8000-0000000000c1', '00000000-0000-4000-8000-0000000000c2');
select zone, stale_since is null as fresh from bulkhead.usage_rollup;

-- The rollup's sums equal the ledger's for whole days, for windows cut mid-day, for a window
-- inside one day, and for an empty one.
create function pg_temp.mismatches(lo timestamptz, hi timestamptz) returns bigint language sql as $$
    with rolled as (
        select tenant_id, day, provider, model, budget_line, sum(requests) r, sum(input_tokens) i,
               sum(cached_input_tokens) c, sum(output_tokens) o, sum(reasoning_tokens) rt,
               sum(reserved_usd) res, sum(cost_usd) cost
        from bulkhead._usage_sums(lo, hi, null)
        where tenant_id in ('00000000-0000-4000-8000-0000000000c1', '00000000-0000-4000-8000-0000000000c2')
        group by 1, 2, 3, 4, 5
    ),
    raw as (
        select tenant_id, (created_at at time zone current_setting('bulkhead.billing_time_zone'))::date as day,
               provider, model, budget_line, count(*) r, sum(input_tokens) i, sum(cached_input_tokens) c,
               sum(output_tokens) o, sum(reasoning_tokens) rt, sum(reserved_usd) res, sum(cost_usd) cost
        from bulkhead.ledger
        where created_at >= lo and created_at < hi
          and tenant_id in ('00000000-0000-4000-8000-0000000000c1', '00000000-0000-4000-8000-0000000000c2')
        group by 1, 2, 3, 4, 5
    )
    select count(*) from (
        (select * from rolled except all select * from raw)
        union all
        (select * from raw except all select * from rolled)) d
$$;
select pg_temp.mismatches('2026-11-02 05:00:00+00', '2026-11-06 05:00:00+00') as whole_days,
       pg_temp.mismatches('2026-11-01 13:17:00+00', '2026-11-08 02:45:00+00') as cut_mid_day,
       pg_temp.mismatches('2026-11-03 10:00:00+00', '2026-11-03 20:00:00+00') as inside_one_day,
       pg_temp.mismatches('2026-11-03 10:00:00+00', '2026-11-03 10:00:00+00') as empty,
       pg_temp.mismatches('-infinity', 'infinity') as everything;
-- The same window with the rollup's rows doubled: the comparison can fail.
savepoint doubled;
update bulkhead.usage_daily set requests = requests * 2;
select pg_temp.mismatches('2026-11-02 05:00:00+00', '2026-11-06 05:00:00+00') > 0 as doubled_rollup_is_caught;
rollback to savepoint doubled;

-- A settle under another time zone marks the rollup stale: the sums come from the ledger alone
-- (still right), and stay so until rebuild_usage_rollup() rebuilds it in the new zone.
set local bulkhead.billing_time_zone = 'Asia/Kolkata';
insert into bulkhead.ledger (tenant_id, reservation_id, request_id, provider, model, input_tokens,
    cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens, itpm_tokens,
    reserved_usd, cost_usd, price_effective_from, created_at)
values ('00000000-0000-4000-8000-0000000000c1', gen_random_uuid(), 'req-kolkata', 'openai', 'model-x',
        5, 0, 0, 5, 0, 5, 0, 0.5, '2025-01-01', '2026-11-04 12:00:00+00');
select zone, stale_since is not null as stale from bulkhead.usage_rollup;
select first_day = end_day as rollup_unused from bulkhead._usage_span('2026-11-02 00:00:00+00', '2026-11-09 00:00:00+00');
select pg_temp.mismatches('2026-11-01 18:30:00+00', '2026-11-08 18:30:00+00') as stale_whole_days;
set local role regress_con_app;
select pg_temp.attempt('select bulkhead.rebuild_usage_rollup()') as app_rebuilds;
set local role regress_con_admin;
select bulkhead.rebuild_usage_rollup() > 0 as rebuilt;
reset role;
select zone, stale_since is null as fresh from bulkhead.usage_rollup;
select first_day, end_day from bulkhead._usage_span('2026-11-01 18:30:00+00', '2026-11-08 18:30:00+00');
select pg_temp.mismatches('2026-11-01 18:30:00+00', '2026-11-08 18:30:00+00') as rebuilt_whole_days,
       pg_temp.mismatches('2026-11-01 13:17:00+00', '2026-11-08 02:45:00+00') as rebuilt_cut_mid_day;

-- usage_report (the tenant's own, invoker) reads the rollup too; without a context, nothing.
set local role regress_con_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000c1');
select sum(requests) as a_requests, sum(cost_usd) as a_cost
from bulkhead.usage_report('2026-11-01 18:30:00+00', '2026-11-08 18:30:00+00');
select count(*) as a_reads_b_rollup from bulkhead.usage_daily where tenant_id = '00000000-0000-4000-8000-0000000000c2';
select bulkhead.set_tenant(null);
select count(*) as rows_without_context from bulkhead.usage_report('-infinity', 'infinity');
reset role;
select count(*) as raw_a_requests, sum(cost_usd) as raw_a_cost from bulkhead.ledger
where tenant_id = '00000000-0000-4000-8000-0000000000c1'
  and created_at >= '2026-11-01 18:30:00+00' and created_at < '2026-11-08 18:30:00+00';

-- Finance: every tenant's sums, and nothing it could change or read row by row.
set local role regress_con_finance;
select slug, provider, model, requests, cost_usd
from bulkhead.usage_by_tenant('2026-11-01 18:30:00+00', '2026-11-08 18:30:00+00')
where slug in ('con-a', 'con-b') order by slug, model;
select slug, dollar_limit is not null as sees_money, spent_usd, calls_today
from bulkhead.tenant_overview() where slug in ('con-a', 'con-b') order by slug;
select day, model, requests, cost_usd from bulkhead.tenant_daily_usage('00000000-0000-4000-8000-0000000000c1', '2026-11-03', '2026-11-05') order by 1, 2;
select pg_temp.attempt($q$select count(*) from bulkhead.tenant_daily_usage('00000000-0000-4000-8000-0000000000c1', '2025-01-01', '2026-11-05')$q$) as too_many_days;
select pg_temp.attempt('select count(*) from bulkhead.ledger') as finance_reads_ledger;
select pg_temp.attempt('select count(*) from bulkhead.usage_daily') as finance_reads_rollup_rows;
select pg_temp.attempt($q$select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000c1')$q$) as finance_enters_tenant;
select pg_temp.attempt($q$select bulkhead.set_budget('00000000-0000-4000-8000-0000000000c1', 1, 1, 1, 1, 'month')$q$) as finance_sets_budget;
select pg_temp.attempt('update bulkhead.budget_defaults set rpm = 1') as finance_updates_defaults;
select pg_temp.attempt($q$select bulkhead.suspend_tenant('00000000-0000-4000-8000-0000000000c1')$q$) as finance_suspends;
select pg_temp.attempt($q$select bulkhead.delete_tenant('00000000-0000-4000-8000-0000000000c1')$q$) as finance_deletes;
select pg_temp.attempt('select count(*) from bulkhead.prompt_versions') as finance_reads_prompts;
select pg_temp.attempt('select count(*) from bulkhead.tenant_credentials') as finance_reads_credentials;
select pg_temp.attempt('select bulkhead.rebuild_usage_rollup()') as finance_rebuilds;
reset role;
-- Every privilege finance holds on a table is SELECT: it can change nothing.
select count(*) as finance_write_privileges
from pg_class c
where c.relnamespace = 'bulkhead'::regnamespace and c.relkind in ('r', 'v')
  and (has_table_privilege('bulkhead_finance', c.oid, 'INSERT') or has_table_privilege('bulkhead_finance', c.oid, 'UPDATE')
       or has_table_privilege('bulkhead_finance', c.oid, 'DELETE') or has_table_privilege('bulkhead_finance', c.oid, 'TRUNCATE'));
-- And every function it may run only reads (stable or immutable): none that writes.
select p.oid::regprocedure as finance_runs_a_volatile_function
from pg_proc p
where p.pronamespace = 'bulkhead'::regnamespace and p.provolatile = 'v'
  and has_function_privilege('bulkhead_finance', p.oid, 'EXECUTE')
order by 1;

-- Support: tenant status without money; prompts inside the tenant's context; no credentials,
-- budgets, keys or deletion.
set local role regress_con_support;
select slug, status, dollar_limit, spent_usd, reserved_usd, cost_today, calls_today > 0 as has_calls_column
from bulkhead.tenant_overview() where slug in ('con-a', 'con-b') order by slug;
select pg_temp.attempt($q$select bulkhead.usage_by_tenant('-infinity', 'infinity')$q$) as support_reads_sums;
select day, model, requests, cost_usd from bulkhead.tenant_daily_usage('00000000-0000-4000-8000-0000000000c1', '2026-11-03', '2026-11-04') order by 1, 2;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000c1');
select pg_temp.attempt('select count(*) from bulkhead.tenant_credentials') as support_reads_credentials;
select pg_temp.attempt('select count(*) from bulkhead.ledger') as support_reads_ledger;
select pg_temp.attempt('select count(*) from bulkhead.api_keys') as support_reads_keys;
select pg_temp.attempt($q$select bulkhead.create_api_key('00000000-0000-4000-8000-0000000000c1', 'k')$q$) as support_creates_key;
select pg_temp.attempt($q$select bulkhead.set_budget('00000000-0000-4000-8000-0000000000c1', 1, 1, 1, 1, 'month')$q$) as support_sets_budget;
select pg_temp.attempt($q$select bulkhead.delete_tenant('00000000-0000-4000-8000-0000000000c1')$q$) as support_deletes;
select pg_temp.attempt($q$select bulkhead.suspend_tenant('00000000-0000-4000-8000-0000000000c1')$q$) as support_suspends;
select bulkhead.publish_prompt('00000000-0000-4000-8000-0000000000c1', 'greeting', '{"tone": "warm"}') as published;
select bulkhead.publish_prompt('00000000-0000-4000-8000-0000000000c1', 'greeting', '{"tone": "brisk"}') as published;
select bulkhead.activate_prompt('00000000-0000-4000-8000-0000000000c1', 'greeting', 1);
select bulkhead.activate_prompt('00000000-0000-4000-8000-0000000000c1', 'greeting', 2);
select pg_temp.attempt($q$select bulkhead.activate_prompt('00000000-0000-4000-8000-0000000000c1', 'greeting', 1, force => true, reason => 'x')$q$) as support_forces;
select bulkhead.rollback_prompt('00000000-0000-4000-8000-0000000000c1', 'greeting') as rolled_back_to;
select bulkhead.render_prompt_version('greeting', 2, '{"name": "<b>Ada</b>"}') as render;
select pg_temp.attempt($q$select bulkhead.set_skeleton('greeting', 'x')$q$) as support_edits_skeleton;
select seq, action, from_version, to_version, released_by, gate from bulkhead.prompt_releases
where tenant_id = '00000000-0000-4000-8000-0000000000c1' order by seq;
-- Another tenant's prompts, from inside A's context: none.
select pg_temp.attempt($q$select bulkhead.publish_prompt('00000000-0000-4000-8000-0000000000c2', 'greeting', '{"tone": "x"}')$q$) as support_crosses_tenants;
select bulkhead.set_tenant(null);
reset role;
-- The twin: the refusals above come from the grants. With one granted, support reads credentials.
savepoint twin;
grant select on bulkhead.tenant_credentials to bulkhead_support;
set local role regress_con_support;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000c1');
select pg_temp.attempt('select count(*) from bulkhead.tenant_credentials') as support_reads_credentials_when_granted;
reset role;
rollback to savepoint twin;

-- Applications and end users get none of it.
set local role regress_con_app;
select pg_temp.attempt('select count(*) from bulkhead.tenant_overview()') as app_overview;
select pg_temp.attempt($q$select count(*) from bulkhead.usage_by_tenant('-infinity', 'infinity')$q$) as app_sums;
select pg_temp.attempt($q$select count(*) from bulkhead.drift_by_tenant('2026-01-01', '2026-12-31')$q$) as app_drift;
select pg_temp.attempt($q$select count(*) from bulkhead.tenant_daily_usage('00000000-0000-4000-8000-0000000000c1', '2026-11-03', '2026-11-04')$q$) as app_daily;
reset role;

-- A temporary raise: the limit goes up now, and the worker's job puts it back when it ends.
set local role regress_con_admin;
select bulkhead.set_budget('00000000-0000-4000-8000-0000000000c1', 100, 1000, 1000, 20);
select pg_temp.attempt($q$select bulkhead.raise_budget('00000000-0000-4000-8000-0000000000c1', 10, now() + interval '1 day', 'x')$q$) as raise_below;
select pg_temp.attempt($q$select bulkhead.raise_budget('00000000-0000-4000-8000-0000000000c1', 50, now() - interval '1 day', 'x')$q$) as raise_in_the_past;
select pg_temp.attempt($q$select bulkhead.raise_budget('00000000-0000-4000-8000-0000000000c1', 50, now() + interval '31 days', 'x')$q$) as raise_too_long;
select pg_temp.attempt($q$select bulkhead.raise_budget('00000000-0000-4000-8000-0000000000c1', 50, now() + interval '1 day', '  ')$q$) as raise_without_reason;
select pg_temp.attempt($q$select bulkhead.raise_budget('00000000-0000-4000-8000-0000000000c1', 50, now() + interval '1 day', E'\t\n ')$q$) as raise_with_a_blank_reason;
select bulkhead.raise_budget('00000000-0000-4000-8000-0000000000c1', 50, now() + interval '1 day', 'launch week') > 0 as raised;
select bulkhead.raise_budget('00000000-0000-4000-8000-0000000000c1', 80, now() + interval '2 days', 'launch week, extended') > 0 as raised_again;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000c1');
select raised_limit, had_budget, restore_limit, reason, raised_by, ended_how from bulkhead.budget_raises order by raised_at;
select dollar_limit from bulkhead.budgets;
select bulkhead.set_tenant(null);
-- The tenant's application may not queue the end (or anyone's) itself.
set local role regress_con_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000c1');
select pg_temp.attempt($q$select bulkhead.enqueue_job('budget_raise_end', '{"raise_id": 1}')$q$) as app_ends_raise;
select pg_temp.attempt($q$select bulkhead.raise_budget('00000000-0000-4000-8000-0000000000c1', 1000, now() + interval '1 day', 'x')$q$) as app_raises;
select bulkhead.set_tenant(null);
set local role regress_con_finance;
select slug, dollar_limit, raised_until is not null as raised from bulkhead.tenant_overview() where slug = 'con-a';
set local role regress_con_support;
select slug, raised_until from bulkhead.tenant_overview() where slug = 'con-a';
reset role;
-- Both ends are queued for their times; the worker ends the first (already replaced: a no-op),
-- then the second, which puts back the limit from before the first raise.
update bulkhead.job_schedule set run_at = now() - interval '1 second'
where job_tenant = '00000000-0000-4000-8000-0000000000c1'
  and job_id in (select id from bulkhead.jobs where kind = 'budget_raise_end');
set local role regress_con_worker;
select count(*) as claimed from bulkhead.claim_jobs('regress-con-worker', 10, '1 minute');
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000c1');
select bulkhead.end_budget_raise(j.id, 'regress-con-worker') as ended
from bulkhead.jobs j where j.kind = 'budget_raise_end' order by j.created_at;
select pg_temp.attempt($q$select bulkhead.end_budget_raise(1, 'regress-con-worker')$q$) as ends_an_unheld_job;
reset role;
select dollar_limit from bulkhead.budgets where tenant_id = '00000000-0000-4000-8000-0000000000c1';
-- A raise on a tenant without a budget of its own: at the end the defaults apply again (the row
-- goes); a limit set by hand during a raise is kept.
set local role regress_con_admin;
select bulkhead.raise_budget('00000000-0000-4000-8000-0000000000c2', 500, now() + interval '1 day', 'pilot') > 0 as raised_b;
-- The defaults change during the raise: the tenant follows the new ones after it.
select bulkhead.set_budget(null, 7, 7000, 7000, 70, 'month');
reset role;
update bulkhead.job_schedule set run_at = now() - interval '1 second'
where job_tenant = '00000000-0000-4000-8000-0000000000c2' and job_id in (select id from bulkhead.jobs where kind = 'budget_raise_end');
set local role regress_con_worker;
select count(*) as claimed_b from bulkhead.claim_jobs('regress-con-worker', 10, '1 minute');
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000c2');
select bulkhead.end_budget_raise(id, 'regress-con-worker') as ended_b from bulkhead.jobs where kind = 'budget_raise_end';
reset role;
select count(*) as b_own_budget_rows from bulkhead.budgets where tenant_id = '00000000-0000-4000-8000-0000000000c2';
-- A budget set by hand during a raise ends it: what was set stays (here its rate limits, with
-- the raised amount made permanent).
set local role regress_con_admin;
select bulkhead.raise_budget('00000000-0000-4000-8000-0000000000c2', 600, now() + interval '1 day', 'pilot 2') > 0 as raised_b2;
select bulkhead.set_budget('00000000-0000-4000-8000-0000000000c2', 9, 9000, 9000, 600);
reset role;
update bulkhead.job_schedule set run_at = now() - interval '1 second'
where job_tenant = '00000000-0000-4000-8000-0000000000c2' and state = 'queued'
  and job_id in (select id from bulkhead.jobs where kind = 'budget_raise_end');
set local role regress_con_worker;
select job_id as raise_b2_end from bulkhead.claim_jobs('regress-con-worker', 10, '1 minute') \gset
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000c2');
select bulkhead.end_budget_raise(:raise_b2_end, 'regress-con-worker') as ended_b2;
reset role;
select rpm, dollar_limit from bulkhead.budgets where tenant_id = '00000000-0000-4000-8000-0000000000c2';

-- A limit set by hand during a raise is kept at its end.
set local role regress_con_admin;
select bulkhead.raise_budget('00000000-0000-4000-8000-0000000000c1', 300, now() + interval '1 day', 'promo') > 0 as raised_c;
select bulkhead.set_budget('00000000-0000-4000-8000-0000000000c1', 100, 1000, 1000, 33);
-- The hand-set budget ended that raise (kept); a new raise puts back the hand-set limit.
select bulkhead.raise_budget('00000000-0000-4000-8000-0000000000c1', 400, now() + interval '1 day', 'promo, more') > 0 as raised_d;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000c1');
select raised_limit, restore_limit, ended_how from bulkhead.budget_raises where raised_limit in (300, 400) order by raised_limit;
select bulkhead.set_tenant(null);
select bulkhead.set_budget('00000000-0000-4000-8000-0000000000c1', 100, 1000, 1000, 33);
reset role;
update bulkhead.job_schedule set run_at = now() - interval '1 second'
where job_tenant = '00000000-0000-4000-8000-0000000000c1' and state = 'queued'
  and job_id in (select id from bulkhead.jobs where kind = 'budget_raise_end');
set local role regress_con_worker;
select count(*) as claimed_c from bulkhead.claim_jobs('regress-con-worker', 10, '1 minute');
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000c1');
select bulkhead.end_budget_raise(j.id, 'regress-con-worker') as ended_c
from bulkhead.jobs j join bulkhead.job_schedule s on s.job_id = j.id
where j.kind = 'budget_raise_end' and s.state = 'running';
reset role;
select dollar_limit as kept_limit from bulkhead.budgets where tenant_id = '00000000-0000-4000-8000-0000000000c1';

-- Deleting a tenant deletes its rollup rows with its ledger.
set local role regress_con_admin;
select bulkhead.delete_tenant('00000000-0000-4000-8000-0000000000c2') is not null as deleted;
reset role;
select count(*) as b_rollup_rows_left from bulkhead.usage_daily where tenant_id = '00000000-0000-4000-8000-0000000000c2';
rollback;
