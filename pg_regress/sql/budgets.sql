-- Budgets, rate limits, prices, the ledger and credentials, through the SQL API.
-- Runs as non-superuser members of bulkhead_admin (control plane) and bulkhead_app (tenants).
\set SHOW_CONTEXT never
begin;
set client_min_messages = warning;
create role regress_bud_admin in role bulkhead_admin;
create role regress_bud_app in role bulkhead_app;
create role regress_bud_worker in role bulkhead_worker;
insert into bulkhead.tenants (id, slug, name, pinecone_namespace) values
    ('00000000-0000-4000-8000-00000000000a', 'bud-a', 'Tenant A', 'tenant-a'),
    ('00000000-0000-4000-8000-00000000000b', 'bud-b', 'Tenant B', 'tenant-b');

-- Runs a statement; reports its result, or its SQLSTATE, message and detail. Numbers of
-- milliseconds to wait depend on the clock and are masked.
create function pg_temp.attempt(statement text) returns text language plpgsql as $$
declare
    result text;
    detail text;
begin
    execute statement into result;
    return 'ok: ' || coalesce(result, 'NULL');
exception when others then
    get stacked diagnostics detail = pg_exception_detail;
    return 'ERROR ' || sqlstate || ': '
        || regexp_replace(sqlerrm, '(?!00000000)[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g')
        || coalesce(' ' || regexp_replace(detail, '"retry_after_ms": [0-9]+', '"retry_after_ms": <ms>'), '');
end
$$;

-- Short leases for this test (superuser only: by default a lease lasts at least a minute).
set local bulkhead.min_lease = '1 millisecond';
set local role regress_bud_admin;
-- Prices: versioned, validated.
select bulkhead.set_price('openai', 'test-model', 1.00, 2.00, cached_input_per_mtok => 0.50, effective_from => '2025-06-01');
select pg_temp.attempt($q$select bulkhead.set_price('openai', 'test-model', 9, 9, effective_from => '2025-06-01')$q$) as duplicate_version;
select pg_temp.attempt($q$select bulkhead.set_price('mistral', 'x', 1, 1)$q$) as unknown_provider;
select pg_temp.attempt($q$select bulkhead.set_price('openai', 'x', -1, 1)$q$) as negative_rate;
select pg_temp.attempt($q$select bulkhead.set_price('openai', 'x', 'NaN', 1)$q$) as nan_rate;
select pg_temp.attempt($q$select bulkhead.set_price('openai', 'x', null, 1)$q$) as null_rate;
select pg_temp.attempt($q$select bulkhead.set_price('openai', 'x', 1, 1, cached_input_per_mtok => 'Infinity')$q$) as infinite_rate;
select pg_temp.attempt($q$select bulkhead.set_price('anthropic', 'x', 1, 1, cache_write_per_mtok => 1e25)$q$) as huge_rate;
select pg_temp.attempt($q$select bulkhead.set_price('openai', 'x', 0.0000000000001, 1)$q$) as too_precise;
select pg_temp.attempt($q$select bulkhead.set_price('anthropic', 'test-model', 1, 1)$q$) as second_provider;
select pg_temp.attempt($q$update bulkhead.prices set input_per_mtok = 0$q$) as rewrite_history;

-- Limits: a tenant's own, or the platform default; validated.
select bulkhead.set_budget('00000000-0000-4000-8000-00000000000a', rpm => 3, itpm => 10000, otpm => 5000, dollar_limit => 0.02);
select pg_temp.attempt($q$select bulkhead.set_budget('00000000-0000-4000-8000-00000000000a', -1, 1, 1, 1)$q$) as negative_limit;
select pg_temp.attempt($q$select bulkhead.set_budget('00000000-0000-4000-8000-00000000000a', 1, 1, 1, 'NaN')$q$) as nan_limit;
select pg_temp.attempt($q$select bulkhead.set_budget('00000000-0000-4000-8000-00000000000a', 1, 1, 1, 'Infinity')$q$) as infinite_limit;
select pg_temp.attempt($q$update bulkhead.budget_defaults set dollar_limit = 'NaN'$q$) as nan_default;
select pg_temp.attempt($q$select bulkhead.set_budget('00000000-0000-4000-8000-00000000000a', 1, 1, 1, 1, 'fortnight')$q$) as unknown_period;
select pg_temp.attempt($q$select bulkhead.set_budget('00000000-0000-4000-8000-00000000000a', null, 1, 1, 1)$q$) as missing_limit;
select pg_temp.attempt($q$select bulkhead.set_budget('00000000-0000-4000-8000-0000000000ff', 1, 1, 1, 1)$q$) as unknown_tenant;
select rpm, itpm, otpm, dollar_limit, period from bulkhead.budget_defaults;

-- Credentials: references only; a raw key is refused and never repeated.
select bulkhead.set_credential('00000000-0000-4000-8000-00000000000a', 'openai', 'env:ACME_OPENAI_KEY',
                               provider_project_id => 'proj_acme') is not null as stored;
select bulkhead.set_credential(null, 'openai', 'vault:6f1c1a4e-3b0a-4b53-9a39-9d1b7f0f2a01', kind => 'shared_pool') is not null as pool_stored;
select pg_temp.attempt($q$select bulkhead.set_credential('00000000-0000-4000-8000-00000000000a', 'openai', 'sk-proj-abc123SECRETSECRET')$q$) as raw_key;
select pg_temp.attempt($q$select bulkhead.set_credential('00000000-0000-4000-8000-00000000000a', 'anthropic', 'file:/etc/../root/key')$q$) as path_escape;
select pg_temp.attempt($q$select bulkhead.set_credential('00000000-0000-4000-8000-00000000000a', 'anthropic', 'env:KEY', kind => 'borrowed')$q$) as unknown_kind;
-- A key in the wrong argument is not repeated either; a key behind a reference prefix is refused.
select pg_temp.attempt($q$select bulkhead.set_credential('00000000-0000-4000-8000-00000000000a', 'sk-ant-api03-SECRET', 'env:KEY')$q$) as key_as_provider;
select pg_temp.attempt($q$select bulkhead.set_credential('00000000-0000-4000-8000-00000000000a', 'openai', 'file:/sk-proj-SECRET')$q$) as key_behind_prefix;
select count(*) as rows_holding_the_raw_key from bulkhead.tenant_credentials where secret_ref like '%SECRET%';

-- The worker resolves tenant A's credential: its own dedicated key.
set local role regress_bud_worker;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
select secret_ref, kind, provider_project_id, source from bulkhead.credential_for_tenant('openai');
-- Applications never see credential references.
set local role regress_bud_app;
select pg_temp.attempt($q$select secret_ref from bulkhead.credential_for_tenant('openai')$q$) as app_reads_reference;

-- Tenant A spends.

-- Bad requests: specific SQLSTATEs.
select pg_temp.attempt($q$select bulkhead.budget_check('no-such-model', 10, 10)$q$) as unknown_model;
select pg_temp.attempt($q$select bulkhead.budget_check('test-model', -1, 10)$q$) as negative_tokens;
select pg_temp.attempt($q$select bulkhead.budget_check('test-model', 10, 2000000000)$q$) as huge_tokens;
select pg_temp.attempt($q$select bulkhead.budget_check('test-model', null, 10)$q$) as null_tokens;
select pg_temp.attempt($q$select bulkhead.budget_check('test-model', 10, 10, lease => '0 seconds')$q$) as zero_lease;
select pg_temp.attempt($q$select bulkhead.budget_check('test-model', 10, 10, lease => '1200 mons -35999 days 1 second')$q$) as mixed_sign_lease;
select pg_temp.attempt($q$select bulkhead.budget_check('test-model', 20000, 10)$q$) as larger_than_itpm;

-- Admission reserves input x input rate + max output x output rate: 1000 x $1 + 500 x $2 per million.
select bulkhead.budget_check('test-model', 1000, 500) as r1 \gset
select reserved_usd, provider, model, settled_at is null as open from bulkhead.reservations where id = :'r1';
select spent_usd, reserved_usd, round(rpm_level) as rpm_level, round(itpm_level) as itpm_level, round(otpm_level) as otpm_level from bulkhead.budget_state;

-- Settling with OpenAI's usage: 800 prompt tokens of which 600 cached, 100 completion tokens.
select bulkhead.ledger_record(:'r1', '{"prompt_tokens": 800, "completion_tokens": 100, "prompt_tokens_details": {"cached_tokens": 600}}', 'chatcmpl-1') as cost_usd;
select input_tokens, cached_input_tokens, output_tokens, itpm_tokens, reserved_usd, cost_usd from bulkhead.ledger;
-- The hold is released and the unused estimate refunded to the buckets.
select spent_usd, reserved_usd, round(rpm_level) as rpm_level, round(itpm_level) as itpm_level, round(otpm_level) as otpm_level from bulkhead.budget_state;
-- The same provider call settled again is recorded once.
select bulkhead.ledger_record(:'r1', '{"prompt_tokens": 800, "completion_tokens": 100}', 'chatcmpl-1') as cost_again;
select count(*) as ledger_rows from bulkhead.ledger;
-- A second call on one reservation, malformed usage, an unknown reservation: refused.
select pg_temp.attempt(format($q$select bulkhead.ledger_record(%L, '{"prompt_tokens": 1, "completion_tokens": 1}', 'chatcmpl-2')$q$, :'r1')) as second_settle;
select bulkhead.budget_check('test-model', 1000, 500) as r2 \gset
select pg_temp.attempt(format($q$select bulkhead.ledger_record(%L, '{"prompt_tokens": "lots"}', 'chatcmpl-2')$q$, :'r2')) as malformed_usage;
select pg_temp.attempt(format($q$select bulkhead.ledger_record(%L, '{"prompt_tokens": -5, "completion_tokens": 1}', 'chatcmpl-2')$q$, :'r2')) as negative_usage;
select pg_temp.attempt(format($q$select bulkhead.ledger_record(%L, '[1,2]', 'chatcmpl-2')$q$, :'r2')) as not_an_object;
select pg_temp.attempt(format($q$select bulkhead.ledger_record(%L, '{"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 1e400}', 'chatcmpl-2')$q$, :'r2')) as number_beyond_double;
select pg_temp.attempt(format($q$select bulkhead.ledger_record(%L, '{"prompt_tokens": 1, "completion_tokens": 1}', 'chatcmpl-1')$q$, :'r2')) as request_id_of_another_call;
select pg_temp.attempt($q$select bulkhead.ledger_record('00000000-0000-4000-8000-0000000000ee', '{"prompt_tokens": 1, "completion_tokens": 1}', 'chatcmpl-3')$q$) as unknown_reservation;
-- ...unless the model is named: a reservation lost in a crash still gets its cost recorded.
select bulkhead.ledger_record('00000000-0000-4000-8000-0000000000ee', '{"prompt_tokens": 1000, "completion_tokens": 0}', 'chatcmpl-3', model => 'test-model') as orphan_cost;

-- The ledger is append-only for applications.
select pg_temp.attempt($q$update bulkhead.ledger set cost_usd = 0$q$) as rewrite_ledger;
select pg_temp.attempt($q$delete from bulkhead.ledger$q$) as delete_ledger;
select pg_temp.attempt($q$insert into bulkhead.ledger (tenant_id, reservation_id, request_id, provider, model, input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens, itpm_tokens, cost_usd, price_effective_from) values ('00000000-0000-4000-8000-00000000000a', gen_random_uuid(), 'forged', 'openai', 'test-model', 0, 0, 0, 0, 0, 0, 0, now())$q$) as forge_ledger;
select pg_temp.attempt($q$update bulkhead.budget_state set spent_usd = 0$q$) as reset_own_spend;

-- RPM 3: the third request this minute is admitted, the fourth gets tenant_rate_limit_exceeded
-- with a JSON detail.
select pg_temp.attempt($q$select bulkhead.budget_check('test-model', 10, 10) is not null$q$) as third_request;
select pg_temp.attempt($q$select bulkhead.budget_check('test-model', 10, 10)$q$) as fourth_request;

-- Dollars: raise the rate limits, then spend up to the $0.02 budget.
reset role;
set local role regress_bud_admin;
select bulkhead.set_budget('00000000-0000-4000-8000-00000000000a', 1000, 1000000, 1000000, 0.02);
set local role regress_bud_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
select spent_usd, reserved_usd from bulkhead.budget_state;
select pg_temp.attempt($q$select bulkhead.budget_check('test-model', 1000, 500) is not null$q$) as fits;
select pg_temp.attempt($q$select bulkhead.budget_check('test-model', 10000, 5000)$q$) as over_budget;
select pg_temp.attempt($q$select bulkhead.budget_check('test-model', 100000, 100000)$q$) as never_fits;

-- Leases: a reservation that is never settled stops holding budget when its lease ends.
select bulkhead.budget_check('test-model', 1000, 2000, lease => '1 millisecond') as r_short \gset
select reserved_usd as reserved_before_expiry from bulkhead.budget_state;
select pg_sleep(0.01);
select bulkhead.expire_reservations() as expired;
select pg_temp.attempt($q$select bulkhead.expire_all_reservations()$q$) as app_sweeps_all_tenants;
select reserved_usd as reserved_after_expiry from bulkhead.budget_state;
select expired_at is not null as marked_expired from bulkhead.reservations where id = :'r_short';
-- Settling after the lease ran out still records the cost.
select bulkhead.ledger_record(:'r_short', '{"prompt_tokens": 1000, "completion_tokens": 1000}', 'chatcmpl-late') as late_cost;

-- price_usage: the same rules, nothing recorded; bad input is a specific error, never XX000.
select input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, itpm_tokens, cost_usd
from bulkhead.price_usage('anthropic', '{"input_tokens": 10, "output_tokens": 20, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 100}', 3, 15, 0.30, 3.75);
select pg_temp.attempt($q$select cost_usd from bulkhead.price_usage('openai', '{"prompt_tokens": 100000000, "completion_tokens": 1}', 999999, 999999)$q$) as largest_cost;
select pg_temp.attempt($q$select cost_usd from bulkhead.price_usage(null, '{}', 1, 1)$q$) as null_provider;
select pg_temp.attempt($q$select cost_usd from bulkhead.price_usage('openai', '{"prompt_tokens": 1, "completion_tokens": 1}', null, 1)$q$) as null_rate;
select pg_temp.attempt($q$select cost_usd from bulkhead.price_usage('openai', '{"prompt_tokens": 1, "completion_tokens": 1}', 'NaN', 1)$q$) as nan_rate;
select pg_temp.attempt(format($q$select cost_usd from bulkhead.price_usage('openai', '{"prompt_tokens": %s1%s}', 1, 1)$q$, repeat('[', 300), repeat(']', 300))) as deep_nesting;

-- Zero limits block, whatever the request asks for.
reset role;
set local role regress_bud_admin;
select bulkhead.set_budget('00000000-0000-4000-8000-00000000000b', 1000, 0, 1000, 1);
set local role regress_bud_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select pg_temp.attempt($q$select bulkhead.budget_check('test-model', 0, 0)$q$) as zero_itpm;
reset role;
set local role regress_bud_admin;
select bulkhead.set_budget('00000000-0000-4000-8000-00000000000b', 1000, 1000, 1000, 0);
set local role regress_bud_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select pg_temp.attempt($q$select bulkhead.budget_check('test-model', 0, 0)$q$) as zero_dollars;
reset role;
set local role regress_bud_admin;
delete from bulkhead.budgets where tenant_id = '00000000-0000-4000-8000-00000000000b';
-- A suspended tenant is refused with PT403 (PostgREST: HTTP 403).
update bulkhead.tenants set status = 'suspended' where id = '00000000-0000-4000-8000-00000000000b';
set local role regress_bud_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select pg_temp.attempt($q$select bulkhead.budget_check('test-model', 1, 1)$q$) as suspended;
reset role;
set local role regress_bud_admin;
update bulkhead.tenants set status = 'active' where id = '00000000-0000-4000-8000-00000000000b';
set local role regress_bud_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');

-- Usage report for the current tenant.
select provider, model, requests, input_tokens, cached_input_tokens, output_tokens, reserved_usd, cost_usd,
       open_reservations, open_reserved_usd
from bulkhead.usage_report(now() - interval '1 day', now() + interval '1 day');

-- Tenant B sees none of A's reservations, ledger, state or credentials, and cannot settle them.
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select (select count(*) from bulkhead.reservations) as reservations,
       (select count(*) from bulkhead.ledger) as ledger_rows,
       (select count(*) from bulkhead.budget_state) as state_rows;
select pg_temp.attempt(format($q$select bulkhead.ledger_record(%L, '{"prompt_tokens": 1, "completion_tokens": 1}', 'chatcmpl-b')$q$, :'r2')) as settle_a_reservation;
select count(*) as usage_rows from bulkhead.usage_report(now() - interval '1 day', now() + interval '1 day');
-- B has no credential of its own: the worker gets the shared pool.
set local role regress_bud_worker;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select secret_ref, kind, source from bulkhead.credential_for_tenant('openai');
set local role regress_bud_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
-- B spends under the platform default, untouched by A's exhaustion.
select pg_temp.attempt($q$select bulkhead.budget_check('test-model', 10, 10) is not null$q$) as b_admitted;
-- Mixed-sign intervals are measured in seconds, as the lease is applied: this one is one hour.
select pg_temp.attempt($q$select bulkhead.budget_check('test-model', 10, 10, lease => '-1 mon 30 days 1 hour') is not null$q$) as mixed_sign_one_hour;


-- A tenant's first event may be an orphan settle (its reservation lost in a crash): the cost
-- counts in the money the next check rebuilds.
reset role;
insert into bulkhead.tenants (id, slug, name, pinecone_namespace) values
    ('00000000-0000-4000-8000-00000000000c', 'bud-c', 'Tenant C', 'tenant-c');
set local role regress_bud_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000c');
select bulkhead.ledger_record('00000000-0000-4000-8000-0000000000cc', '{"prompt_tokens": 2000, "completion_tokens": 0}', 'chatcmpl-c', model => 'test-model') as orphan_first;
select pg_temp.attempt($q$select bulkhead.budget_check('test-model', 10, 10) is not null$q$) as c_admitted;
select spent_usd as spent_includes_orphan from bulkhead.budget_state;

-- No context: nothing to spend against.
select bulkhead.set_tenant(null);
select pg_temp.attempt($q$select bulkhead.budget_check('test-model', 10, 10)$q$) as no_context;
select pg_temp.attempt($q$select bulkhead.ledger_record('00000000-0000-4000-8000-0000000000ee', '{}', 'x')$q$) as no_context_settle;
set local role regress_bud_worker;
select count(*) as credentials_without_context from bulkhead.credential_for_tenant('openai');

-- Finance sees every tenant's settled cost.
reset role;
set local role regress_bud_admin;
select slug, provider, model, requests, cost_usd from bulkhead.usage_by_tenant(now() - interval '1 day', now() + interval '1 day')
where slug like 'bud-%';
rollback;
