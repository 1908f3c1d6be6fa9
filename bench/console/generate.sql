-- The console benchmark's database: :tenants tenants, :rows ledger rows over the last 90 days
-- (two models each), budgets for every other tenant, and each tenant's budget state for this
-- period, as admissions would have left it. Rows go in as the ledger's trigger sees them in
-- production: in statements of :batch rows, each summed into the rollup by the trigger.
\set ON_ERROR_STOP 1
set client_min_messages = warning;
insert into bulkhead.tenants (id, slug, name, pinecone_namespace)
select ('00000000-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid,
       'bench-' || g, 'Bench Tenant ' || g, 'bench-ns-' || g
from generate_series(1, :tenants) g;
insert into bulkhead.budgets (tenant_id, rpm, itpm, otpm, dollar_limit, period)
select id, 600, 1000000, 200000, 50 + (hashtext(id::text) & 511), 'month'
from bulkhead.tenants where slug like 'bench-%' and (hashtext(id::text) & 1) = 0;

-- The ledger, in batches (a procedure: one transaction per batch, as settles commit).
create procedure pg_temp.fill(total bigint, batch bigint, tenants int)
language plpgsql as $$
declare
    done bigint := 0;
begin
    while done < total loop
        insert into bulkhead.ledger (tenant_id, reservation_id, request_id, provider, model, input_tokens,
            cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens, itpm_tokens,
            reserved_usd, cost_usd, price_effective_from, created_at)
        select ('00000000-0000-4000-8000-' || lpad(to_hex(1 + (g % tenants)), 12, '0'))::uuid,
               gen_random_uuid(), 'bench-' || g,
               case when g % 3 = 0 then 'anthropic' else 'openai' end,
               case when g % 3 = 0 then 'claude-3-5-haiku' else 'gpt-4o-mini' end,
               800 + g % 400, g % 200, 0, 150 + g % 100, 0, 800 + g % 400,
               0.002, 0.0004 + (g % 17) * 0.00001, '2025-01-01',
               pg_catalog.clock_timestamp() - (g % 7776000) * interval '1 second'
        from generate_series(done + 1, least(done + batch, total)) g;
        commit;
        done := done + batch;
    end loop;
end
$$;
call pg_temp.fill(:rows, :batch, :tenants);

-- This period's state per tenant, as its first admission this period would have built it.
insert into bulkhead.budget_state (tenant_id, rpm_level, itpm_level, otpm_level, rpm_cap, itpm_cap, otpm_cap,
    refilled_at, period, period_start, period_end, spent_usd, reserved_usd)
select t.id, 600, 1000000, 200000, 600, 1000000, 200000, now(), 'month', m.starts,
       (m.local + interval '1 month') at time zone m.zone,
       coalesce((select sum(l.cost_usd) from bulkhead.ledger l
                 where l.tenant_id = t.id and l.created_at >= m.starts and l.budget_line = 'tenant'), 0), 0
from bulkhead.tenants t,
     lateral (select current_setting('bulkhead.billing_time_zone') as zone,
                     date_trunc('month', now() at time zone current_setting('bulkhead.billing_time_zone')) as local) z,
     lateral (select z.zone, z.local, z.local at time zone z.zone as starts) m
where t.slug like 'bench-%';
vacuum analyze;
