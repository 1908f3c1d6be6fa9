-- The gateway's SQL surface: API keys (created once, stored hashed, revoked at once), suspension,
-- gateway_admit (authentication, wire check, output cap, tenant prompt, credential, reservation
-- in one call), settlement and release, and a lapsed call charged at its hold (fail closed).
-- Runs as non-superuser members of bulkhead_gateway, bulkhead_app and bulkhead_admin.
\set SHOW_CONTEXT never
begin;
set client_min_messages = warning;
create role regress_gw in role bulkhead_gateway;
create role regress_gw_app in role bulkhead_app;
create role regress_gw_admin in role bulkhead_admin;
create function pg_temp.attempt(statement text) returns text language plpgsql as $$
declare
    result text;
    detail text;
begin
    execute statement into result;
    return 'ok: ' || coalesce(result, 'NULL');
exception when others then
    get stacked diagnostics detail = pg_exception_detail;
    return regexp_replace(
        'ERROR ' || sqlstate || ': ' || sqlerrm || coalesce(' ' || nullif(detail, ''), ''),
        '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g');
end
$$;
grant execute on function pg_temp.attempt(text) to public;

insert into bulkhead.tenants (id, slug, name, pinecone_namespace) values
    ('00000000-0000-4000-8000-0000000000a1', 'gw-a', 'Acme', 'tenant-gw-a'),
    ('00000000-0000-4000-8000-0000000000b1', 'gw-b', 'Globex', 'tenant-gw-b');
insert into bulkhead.tenant_settings (tenant_id, display_name) values
    ('00000000-0000-4000-8000-0000000000a1', 'Acme'), ('00000000-0000-4000-8000-0000000000b1', 'Globex');
insert into bulkhead.prices (provider, model, effective_from, input_per_mtok, output_per_mtok) values
    ('openai', 'gw-gpt', '2025-01-01', 1, 2),
    ('anthropic', 'gw-claude', '2025-01-01', 3, 15),
    ('openai', 'gw-embed', '2025-01-01', 0.02, 0);
insert into bulkhead.shared_credentials (provider, secret_ref) values ('openai', 'env:GW_SHARED_OPENAI');
select bulkhead.set_credential('00000000-0000-4000-8000-0000000000a1', 'anthropic', 'env:GW_A_ANTHROPIC') is not null as credential_set;
select bulkhead.set_skeleton('gw-support', 'You support Acme customers. Topic: {{ vars.topic }}');
select bulkhead.publish_prompt('00000000-0000-4000-8000-0000000000a1', 'gw-support', '{}');
select bulkhead.activate_prompt('00000000-0000-4000-8000-0000000000a1', 'gw-support', 1);

-- Keys: created by the control plane, shown once, stored as a hash.
set local role regress_gw_admin;
select bulkhead.create_api_key('00000000-0000-4000-8000-0000000000a1', 'acme backend') as key_a \gset
select bulkhead.create_api_key('00000000-0000-4000-8000-0000000000b1', 'globex backend') as key_b \gset
select bulkhead.create_api_key('00000000-0000-4000-8000-0000000000a1', 'acme short-lived',
    pg_catalog.now() + interval '1 hour') as key_a_short \gset
select :'key_a' ~ '^bk_[A-Za-z0-9_-]{43}$' as secret_shape, :'key_a' <> :'key_b' as distinct_secrets;
select pg_temp.attempt($$select bulkhead.create_api_key('00000000-0000-4000-8000-0000000000a1', '  ')$$) as blank_name;
select pg_temp.attempt($$select bulkhead.create_api_key('00000000-0000-4000-8000-0000000000a1', 'x', now() - interval '1 s')$$) as expired_at_creation;
select pg_temp.attempt($$select bulkhead.create_api_key('00000000-0000-4000-8000-0000000000ff', 'x')$$) as unknown_tenant;
reset role;
-- Only the hash is stored: the secret appears in no column.
select count(*) as keys, count(*) filter (where key_hash = sha256(convert_to(:'key_a', 'UTF8'))) as hash_of_a,
       count(*) filter (where k::text like '%' || substr(:'key_a', 4, 20) || '%') as rows_holding_secret
from bulkhead.api_keys k;

-- An application sees its own tenant's keys, never a hash, never another tenant's.
set local role regress_gw_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000a1');
select name, key_prefix = left(:'key_a', 9) or key_prefix = left(:'key_a_short', 9) as prefix_matches
from bulkhead.api_keys order by name;
select pg_temp.attempt($$select count(key_hash)::text from bulkhead.api_keys$$) as app_reads_hash;
-- It cannot call the gateway's functions: only the gateway names a tenant it verified.
select pg_temp.attempt(format($$select reservation::text from bulkhead.gateway_admit(null,
    '00000000-0000-4000-8000-0000000000b1', 'openai', 'chat', 'gw-gpt', 10, 10, 10, 1, null, null, '10 minutes')$$)) as app_admits;
reset role;

-- The gateway: a key admits its own tenant's call, with the shared credential's reference.
set local role regress_gw;
select pg_temp.attempt($$select count(*)::text from bulkhead.api_keys$$) as gateway_reads_keys;
select pg_temp.attempt($$select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000a1')::text$$) as gateway_sets_tenant;
select tenant_id, key_id is not null as has_key, provider, output_cap, est_input_tokens, system_prompt,
       secret_ref, credential_kind
from bulkhead.gateway_admit(sha256(convert_to(:'key_a', 'UTF8')), null, 'openai', 'chat', 'gw-gpt',
                            100, 400, null, 1, null, null, '10 minutes');
-- Tokenizer counts are used only for models priced only by OpenAI; Anthropic gets the byte
-- bound, the tenant prompt rendered and counted, and the tenant's own credential.
select tenant_id, provider, output_cap, est_input_tokens, system_prompt, secret_ref, credential_kind
from bulkhead.gateway_admit(sha256(convert_to(:'key_a', 'UTF8')), null, 'anthropic', 'chat', 'gw-claude',
                            100, 400, 50, 2, 'gw-support', '{"topic": "billing"}', '10 minutes');
-- A JWT's tenant (verified by the gateway), with the tenant's own default cap.
reset role;
select bulkhead.set_default_max_output_tokens('00000000-0000-4000-8000-0000000000b1', 256);
set local role regress_gw;
select tenant_id, key_id, output_cap
from bulkhead.gateway_admit(null, '00000000-0000-4000-8000-0000000000b1', 'openai', 'chat', 'gw-gpt',
                            10, 10, null, 1, null, null, '10 minutes');
-- Embeddings reserve no output.
select output_cap, est_input_tokens from bulkhead.gateway_admit(null, '00000000-0000-4000-8000-0000000000b1',
    'openai', 'embeddings', 'gw-embed', 5, 20, null, 1, null, null, '10 minutes');

-- Refusals, each with its own SQLSTATE (the gateway maps them to HTTP statuses).
select pg_temp.attempt($$select reservation::text from bulkhead.gateway_admit(sha256(convert_to('bk_forged', 'UTF8')), null,
    'openai', 'chat', 'gw-gpt', 1, 1, 1, 1, null, null, '10 minutes')$$) as forged_key;
select pg_temp.attempt(format($$select reservation::text from bulkhead.gateway_admit(%L, %L,
    'openai', 'chat', 'gw-gpt', 1, 1, 1, 1, null, null, '10 minutes')$$, sha256(convert_to(:'key_a', 'UTF8')),
    '00000000-0000-4000-8000-0000000000b1')) as key_and_jwt;
select pg_temp.attempt($$select reservation::text from bulkhead.gateway_admit(null, '00000000-0000-4000-8000-0000000000ff',
    'openai', 'chat', 'gw-gpt', 1, 1, 1, 1, null, null, '10 minutes')$$) as unknown_tenant;
select pg_temp.attempt($$select reservation::text from bulkhead.gateway_admit(null, '00000000-0000-4000-8000-0000000000b1',
    'openai', 'chat', 'gw-nonexistent', 1, 1, 1, 1, null, null, '10 minutes')$$) as unknown_model;
select pg_temp.attempt($$select reservation::text from bulkhead.gateway_admit(null, '00000000-0000-4000-8000-0000000000b1',
    'openai', 'chat', 'gw-claude', 1, 1, 1, 1, null, null, '10 minutes')$$) as anthropic_model_on_openai_wire;
select pg_temp.attempt($$select reservation::text from bulkhead.gateway_admit(null, '00000000-0000-4000-8000-0000000000b1',
    'anthropic', 'chat', 'gw-gpt', 1, 1, 1, 1, null, null, '10 minutes')$$) as openai_model_on_anthropic_wire;
select pg_temp.attempt($$select reservation::text from bulkhead.gateway_admit(null, '00000000-0000-4000-8000-0000000000b1',
    'anthropic', 'chat', 'gw-claude', 1, 1, 1, 1, null, null, '10 minutes')$$) as no_credential;
select pg_temp.attempt($$select reservation::text from bulkhead.gateway_admit(null, '00000000-0000-4000-8000-0000000000b1',
    'openai', 'chat', 'gw-gpt', 1, 1, 0, 1, null, null, '10 minutes')$$) as zero_max_tokens;
select pg_temp.attempt($$select reservation::text from bulkhead.gateway_admit(null, '00000000-0000-4000-8000-0000000000b1',
    'openai', 'chat', 'gw-gpt', 1, 1, 1000000, 5000, null, null, '10 minutes')$$) as too_many_choices;
select pg_temp.attempt($$select reservation::text from bulkhead.gateway_admit(null, '00000000-0000-4000-8000-0000000000b1',
    'openai', 'chat', 'gw-gpt', 1, 1, 1, 1, 'gw-support', '{}', '10 minutes')$$) as prompt_of_another_tenant;
select pg_temp.attempt($$select reservation::text from bulkhead.gateway_admit(null, '00000000-0000-4000-8000-0000000000b1',
    'openai', 'chat', 'gw-gpt', 1, 1, 100000000, 1, null, null, '10 minutes')$$) as over_the_output_limit;
reset role;

-- Revoked and expired keys stop at once.
select id as key_b_id from bulkhead.api_keys where key_hash = sha256(convert_to(:'key_b', 'UTF8')) \gset
update bulkhead.api_keys set expires_at = now() - interval '1 second' where key_hash = sha256(convert_to(:'key_a_short', 'UTF8'));
set local role regress_gw_admin;
select bulkhead.revoke_api_key(:'key_b_id') as revoked, bulkhead.revoke_api_key(:'key_b_id') as revoked_again;
select pg_temp.attempt($$select bulkhead.revoke_api_key('00000000-0000-4000-8000-0000000000ff')::text$$) as unknown_key;
set local role regress_gw;
select pg_temp.attempt(format($$select reservation::text from bulkhead.gateway_admit(%L, null,
    'openai', 'chat', 'gw-gpt', 1, 1, 1, 1, null, null, '10 minutes')$$, sha256(convert_to(:'key_b', 'UTF8')))) as revoked_key;
select pg_temp.attempt(format($$select reservation::text from bulkhead.gateway_admit(%L, null,
    'openai', 'chat', 'gw-gpt', 1, 1, 1, 1, null, null, '10 minutes')$$, sha256(convert_to(:'key_a_short', 'UTF8')))) as expired_key;

-- Suspension: 403 for its calls, listed for the gateways to cut its streams; resume undoes it.
set local role regress_gw_admin;
select bulkhead.suspend_tenant('00000000-0000-4000-8000-0000000000a1') as suspended,
       bulkhead.suspend_tenant('00000000-0000-4000-8000-0000000000a1') as suspended_again;
set local role regress_gw;
select pg_temp.attempt(format($$select reservation::text from bulkhead.gateway_admit(%L, null,
    'openai', 'chat', 'gw-gpt', 1, 1, 1, 1, null, null, '10 minutes')$$, sha256(convert_to(:'key_a', 'UTF8')))) as suspended_tenant;
select * from bulkhead.gateway_inactive_tenants(array['00000000-0000-4000-8000-0000000000a1',
    '00000000-0000-4000-8000-0000000000b1', '00000000-0000-4000-8000-0000000000ff']::uuid[]) order by 1;
set local role regress_gw_admin;
select bulkhead.resume_tenant('00000000-0000-4000-8000-0000000000a1') as resumed;
set local role regress_gw;
select model, provider from bulkhead.gateway_models(sha256(convert_to(:'key_a', 'UTF8')), null) where model like 'gw-%' order by model;
select pg_temp.attempt($$select count(*)::text from bulkhead.gateway_models(sha256(convert_to('bk_forged', 'UTF8')), null)$$) as models_forged;

-- Settlement: the gateway settles with the provider's usage; an application cannot settle a
-- gateway call (at zero, before the gateway does).
select reservation as r1 from bulkhead.gateway_admit(sha256(convert_to(:'key_a', 'UTF8')), null, 'openai', 'chat',
    'gw-gpt', 1000, 1000, 1000, 1, null, null, '10 minutes') \gset
reset role;
set local role regress_gw_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000a1');
select pg_temp.attempt(format($$select bulkhead.ledger_record(%L, '{"prompt_tokens": 0, "completion_tokens": 0}', 'free')::text$$, :'r1')) as app_settles_gateway_call;
select bulkhead.set_tenant(null);
set local role regress_gw;
select reservation = :'r1' as same, cost_usd, error from bulkhead.gateway_settle(
    array['00000000-0000-4000-8000-0000000000a1']::uuid[], array[:'r1']::uuid[],
    array['{"prompt_tokens": 800, "completion_tokens": 300}']::jsonb[], array['chatcmpl-gw-1'], array['gw-gpt']);
-- A repeat is answered from the ledger; another tenant's context finds nothing to settle.
select cost_usd, error from bulkhead.gateway_settle(
    array['00000000-0000-4000-8000-0000000000a1']::uuid[], array[:'r1']::uuid[],
    array['{"prompt_tokens": 800, "completion_tokens": 300}']::jsonb[], array['chatcmpl-gw-1'], array['gw-gpt']);
select cost_usd, regexp_replace(error, '[0-9a-f-]{36}', '<uuid>') as error from bulkhead.gateway_settle(
    array['00000000-0000-4000-8000-0000000000b1']::uuid[], array[:'r1']::uuid[],
    array['{"prompt_tokens": 1, "completion_tokens": 1}']::jsonb[], array['chatcmpl-gw-2'], array[null]);
select pg_temp.attempt($$select count(*)::text from bulkhead.gateway_settle(array[null]::uuid[], '{}', '{}', '{}', '{}')$$) as ragged_arrays;
-- The tenant's application squats every id a gateway settle could use (the provider's id, the
-- same qualified by the reservation, the lapse id), read from the stream and the
-- x-bulkhead-request-id header, on cheap reservations of its own: the gateway's call is still
-- recorded, at its own cost.
select reservation as r5 from bulkhead.gateway_admit(sha256(convert_to(:'key_a', 'UTF8')), null, 'openai', 'chat',
    'gw-gpt', 1000, 1000, 1000, 1, null, null, '10 minutes') \gset
reset role;
set local role regress_gw_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000a1');
select count(*) as squatted from unnest(array['chatcmpl-squat', 'chatcmpl-squat#' || :'r5', 'lease-ended:' || :'r5']) x,
    lateral (select bulkhead.ledger_record(bulkhead.budget_check('gw-gpt', 1, 1),
                                           '{"prompt_tokens": 0, "completion_tokens": 0}', x)) l;
select bulkhead.set_tenant(null);
reset role;
set local role regress_gw;
select cost_usd, error from bulkhead.gateway_settle(
    array['00000000-0000-4000-8000-0000000000a1']::uuid[], array[:'r5']::uuid[],
    array['{"prompt_tokens": 800, "completion_tokens": 300}']::jsonb[], array['chatcmpl-squat'], array['gw-gpt']);
reset role;
select count(*) as rows_for_the_call, sum(cost_usd) as charged,
       bool_and(request_id like 'chatcmpl-squat#' || :'r5' || '#%') as unguessable_id
from bulkhead.ledger where reservation_id = :'r5';
set local role regress_gw;

-- A call the provider refused gives its hold back.
select reservation as r2 from bulkhead.gateway_admit(sha256(convert_to(:'key_a', 'UTF8')), null, 'openai', 'chat',
    'gw-gpt', 1000, 1000, 1000, 1, null, null, '10 minutes') \gset
select bulkhead.gateway_release('00000000-0000-4000-8000-0000000000a1', :'r2') as released;
select pg_temp.attempt(format($$select bulkhead.gateway_release('00000000-0000-4000-8000-0000000000b1', %L)::text$$, :'r2')) as release_across_tenants;

-- The gateway dies between sending a call and settling it: when the lease ends, the call is
-- charged at its hold (a ledger row 'lease-ended:...'), not released.
select reservation as r3 from bulkhead.gateway_admit(sha256(convert_to(:'key_a', 'UTF8')), null, 'openai', 'chat',
    'gw-gpt', 2000, 2000, 500, 1, null, null, '10 minutes') \gset
reset role;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000a1');
select spent_usd as spent_before, reserved_usd as reserved_before from bulkhead.budget_state
where tenant_id = '00000000-0000-4000-8000-0000000000a1' \gset
update bulkhead.reservations set lease_expires_at = now() - interval '1 second' where id = :'r3';
update bulkhead.budget_state set next_expiry = now() - interval '1 second'
where tenant_id = '00000000-0000-4000-8000-0000000000a1';
select bulkhead.set_tenant(null);
set local role regress_gw;
select bulkhead.expire_all_reservations() as expired;
reset role;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000a1');
select request_id like 'lease-ended:' || :'r3' || '#%' as named, input_tokens, output_tokens, cost_usd, cost_usd = reserved_usd as at_hold
from bulkhead.ledger where reservation_id = :'r3';
select settled_at is not null as settled, expired_at is not null as expired from bulkhead.reservations where id = :'r3';
select spent_usd - :'spent_before' as spent_added, :'reserved_before'::numeric - reserved_usd as hold_released
from bulkhead.budget_state where tenant_id = '00000000-0000-4000-8000-0000000000a1';
-- The gateway's own late settle of it is refused, not recorded twice.
select bulkhead.set_tenant(null);
set local role regress_gw;
select cost_usd, regexp_replace(error, '[0-9a-f-]{36}', '<uuid>') as error from bulkhead.gateway_settle(
    array['00000000-0000-4000-8000-0000000000a1']::uuid[], array[:'r3']::uuid[],
    array['{"prompt_tokens": 1, "completion_tokens": 1}']::jsonb[], array['chatcmpl-gw-3'], array['gw-gpt']);
reset role;

-- Last use is recorded (at most once a minute per key).
select name, last_used_at is not null as used from bulkhead.api_keys order by name;

-- The same in memory admission: the gateway's reservation stays in memory (no row, no write at
-- admission), and when its lease ends unsettled the expiry sweep writes it and charges it at its
-- hold. A durable hold is written at admission.
set local bulkhead.memory_admission = on;
set local bulkhead.min_lease = '1 second';
select bulkhead.set_budget('00000000-0000-4000-8000-0000000000b1', 60, 100000, 100000, 1);
set local role regress_gw;
select reservation as r4 from bulkhead.gateway_admit(null, '00000000-0000-4000-8000-0000000000b1', 'openai', 'chat',
    'gw-gpt', 3000, 3000, 1000, 1, null, null, '1 second') \gset
select reservation as r5 from bulkhead.gateway_admit(null, '00000000-0000-4000-8000-0000000000b1', 'openai', 'chat',
    'gw-gpt', 3000, 3000, 1000, 1, null, null, '10 minutes', durable_hold => true) \gset
reset role;
select id = :'r5' as durable_only, held_in_memory, queued, bill_on_expiry from bulkhead.reservations where id in (:'r4', :'r5');
select pg_sleep(1.2);
set local role regress_gw;
select bulkhead.expire_all_reservations() as expired;
reset role;
select held_in_memory, queued, bill_on_expiry, expired_at is not null as expired, settled_at is not null as settled
from bulkhead.reservations where id = :'r4';
select request_id like 'lease-ended:' || :'r4' || '#%' as named, cost_usd, cost_usd = reserved_usd as at_hold
from bulkhead.ledger where reservation_id = :'r4';
-- Settled in memory: one ledger row, no reservation row; the same request id twice goes under
-- the id qualified by the reservation; settling again is answered from the ledger.
set local role regress_gw;
select reservation as r6 from bulkhead.gateway_admit(null, '00000000-0000-4000-8000-0000000000b1', 'openai', 'chat',
    'gw-gpt', 10, 10, 10, 1, null, null, '10 minutes') \gset
select reservation as r7 from bulkhead.gateway_admit(null, '00000000-0000-4000-8000-0000000000b1', 'openai', 'chat',
    'gw-gpt', 10, 10, 10, 1, null, null, '10 minutes') \gset
select reservation = :'r6' as r6, cost_usd, error from bulkhead.gateway_settle(
    array['00000000-0000-4000-8000-0000000000b1', '00000000-0000-4000-8000-0000000000b1']::uuid[], array[:'r6', :'r7']::uuid[],
    array['{"prompt_tokens": 5, "completion_tokens": 5}', '{"prompt_tokens": 5, "completion_tokens": 5}']::jsonb[],
    array['chatcmpl-mem', 'chatcmpl-mem'], array['gw-gpt', 'gw-gpt']) order by 1 desc;
select reservation = :'r6' as r6, cost_usd, error from bulkhead.gateway_settle(
    array['00000000-0000-4000-8000-0000000000b1']::uuid[], array[:'r6']::uuid[],
    array['{"prompt_tokens": 5, "completion_tokens": 5}']::jsonb[], array['chatcmpl-mem'], array['gw-gpt']);
reset role;
select count(*) as reservation_rows from bulkhead.reservations where id in (:'r6', :'r7');
select count(*) filter (where request_id = 'chatcmpl-mem') as plain_id,
       count(*) filter (where request_id = 'chatcmpl-mem#' || reservation_id::text) as qualified_id
from bulkhead.ledger where reservation_id in (:'r6', :'r7');
-- A reservation of the application's own budget_check, in memory, is not the gateway's to settle.
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000b1');
select bulkhead.budget_check('gw-gpt', 1, 1, '10 minutes') as r8 \gset
set local role regress_gw;
select cost_usd, regexp_replace(error, '[0-9a-f-]{36}', '<uuid>') as error from bulkhead.gateway_settle(
    array['00000000-0000-4000-8000-0000000000b1']::uuid[], array[:'r8']::uuid[],
    array['{"prompt_tokens": 1, "completion_tokens": 1}']::jsonb[], array['chatcmpl-app'], array['gw-gpt']);
reset role;
select count(*) as app_reservation_rows from bulkhead.reservations where id = :'r8';

-- The memory path gives the same refusals, with the same SQLSTATEs, as the SQL path above.
set local bulkhead.memory_admission = on;
set local role regress_gw;
select pg_temp.attempt($$select reservation::text from bulkhead.gateway_admit(sha256(convert_to('bk_forged', 'UTF8')), null,
    'openai', 'chat', 'gw-gpt', 1, 1, 1, 1, null, null, '10 minutes')$$) as forged_key;
select pg_temp.attempt(format($$select reservation::text from bulkhead.gateway_admit(%L, %L,
    'openai', 'chat', 'gw-gpt', 1, 1, 1, 1, null, null, '10 minutes')$$, sha256(convert_to(:'key_a', 'UTF8')),
    '00000000-0000-4000-8000-0000000000b1')) as key_and_jwt;
select pg_temp.attempt($$select reservation::text from bulkhead.gateway_admit(null, '00000000-0000-4000-8000-0000000000ff',
    'openai', 'chat', 'gw-gpt', 1, 1, 1, 1, null, null, '10 minutes')$$) as unknown_tenant;
select pg_temp.attempt($$select reservation::text from bulkhead.gateway_admit(null, '00000000-0000-4000-8000-0000000000b1',
    'openai', 'chat', 'gw-nonexistent', 1, 1, 1, 1, null, null, '10 minutes')$$) as unknown_model;
select pg_temp.attempt($$select reservation::text from bulkhead.gateway_admit(null, '00000000-0000-4000-8000-0000000000b1',
    'openai', 'chat', 'gw-claude', 1, 1, 1, 1, null, null, '10 minutes')$$) as anthropic_model_on_openai_wire;
select pg_temp.attempt($$select reservation::text from bulkhead.gateway_admit(null, '00000000-0000-4000-8000-0000000000b1',
    'anthropic', 'chat', 'gw-gpt', 1, 1, 1, 1, null, null, '10 minutes')$$) as openai_model_on_anthropic_wire;
select pg_temp.attempt($$select reservation::text from bulkhead.gateway_admit(null, '00000000-0000-4000-8000-0000000000b1',
    'anthropic', 'chat', 'gw-claude', 1, 1, 1, 1, null, null, '10 minutes')$$) as no_credential;
select pg_temp.attempt($$select reservation::text from bulkhead.gateway_admit(null, '00000000-0000-4000-8000-0000000000b1',
    'openai', 'chat', 'gw-gpt', 1, 1, 0, 1, null, null, '10 minutes')$$) as zero_max_tokens;
select pg_temp.attempt($$select reservation::text from bulkhead.gateway_admit(null, '00000000-0000-4000-8000-0000000000b1',
    'openai', 'chat', 'gw-gpt', 1, 1, 1000000, 5000, null, null, '10 minutes')$$) as too_many_choices;
select pg_temp.attempt($$select reservation::text from bulkhead.gateway_admit(null, '00000000-0000-4000-8000-0000000000b1',
    'openai', 'chat', 'gw-gpt', 1, 1, 100000000, 1, null, null, '10 minutes')$$) as over_the_output_limit;
select pg_temp.attempt(format($$select reservation::text from bulkhead.gateway_admit(%L, null,
    'openai', 'chat', 'gw-gpt', 1, 1, 1, 1, null, null, '10 minutes')$$, sha256(convert_to(:'key_b', 'UTF8')))) as revoked_key;
select pg_temp.attempt(format($$select reservation::text from bulkhead.gateway_admit(%L, null,
    'openai', 'chat', 'gw-gpt', 1, 1, 1, 1, null, null, '10 minutes')$$, sha256(convert_to(:'key_a_short', 'UTF8')))) as expired_key;
-- A key admitted (and remembered by this backend) stops at its revocation; a suspended tenant
-- at its suspension; a new credential is used on the next call.
reset role;
set local role regress_gw_admin;
select bulkhead.create_api_key('00000000-0000-4000-8000-0000000000a1', 'memory path') as key_m \gset
set local role regress_gw;
select key_id as key_m_id, secret_ref, reservation as r9 from bulkhead.gateway_admit(sha256(convert_to(:'key_m', 'UTF8')), null,
    'openai', 'chat', 'gw-gpt', 1, 1, 1, 1, null, null, '10 minutes') \gset
reset role;
select :'secret_ref' as secret_before, not exists (select from bulkhead.reservations where id = :'r9') as held_in_memory_only;
set local role regress_gw_admin;
select bulkhead.set_credential('00000000-0000-4000-8000-0000000000a1', 'openai', 'env:GW_ROTATED_KEY') is not null as rotated;
set local role regress_gw;
select secret_ref as secret_after from bulkhead.gateway_admit(sha256(convert_to(:'key_m', 'UTF8')), null,
    'openai', 'chat', 'gw-gpt', 1, 1, 1, 1, null, null, '10 minutes');
set local role regress_gw_admin;
select bulkhead.suspend_tenant('00000000-0000-4000-8000-0000000000a1') as suspended;
set local role regress_gw;
select pg_temp.attempt(format($$select reservation::text from bulkhead.gateway_admit(%L, null,
    'openai', 'chat', 'gw-gpt', 1, 1, 1, 1, null, null, '10 minutes')$$, sha256(convert_to(:'key_m', 'UTF8')))) as suspended_tenant;
set local role regress_gw_admin;
select bulkhead.resume_tenant('00000000-0000-4000-8000-0000000000a1') as resumed;
select bulkhead.revoke_api_key(:'key_m_id') as revoked;
set local role regress_gw;
select pg_temp.attempt(format($$select reservation::text from bulkhead.gateway_admit(%L, null,
    'openai', 'chat', 'gw-gpt', 1, 1, 1, 1, null, null, '10 minutes')$$, sha256(convert_to(:'key_m', 'UTF8')))) as revoked_after_use;
reset role;
-- Twin: without the signal (the trigger disabled), a backend keeps admitting a revoked key it
-- remembers, until its cache ages out (a second).
set local role regress_gw_admin;
select bulkhead.create_api_key('00000000-0000-4000-8000-0000000000a1', 'no signal') as key_n \gset
set local role regress_gw;
select key_id as key_n_id from bulkhead.gateway_admit(sha256(convert_to(:'key_n', 'UTF8')), null,
    'openai', 'chat', 'gw-gpt', 1, 1, 1, 1, null, null, '10 minutes') \gset
reset role;
alter table bulkhead.api_keys disable trigger api_keys_changed;
set local role regress_gw_admin;
select bulkhead.revoke_api_key(:'key_n_id') as revoked;
set local role regress_gw;
select pg_temp.attempt(format($$select (reservation is not null)::text from bulkhead.gateway_admit(%L, null,
    'openai', 'chat', 'gw-gpt', 1, 1, 1, 1, null, null, '10 minutes')$$, sha256(convert_to(:'key_n', 'UTF8')))) as revoked_unsignalled;
reset role;
alter table bulkhead.api_keys enable trigger api_keys_changed;
-- The memory path records a key's last use too.
select last_used_at is not null as used from bulkhead.api_keys where id = :'key_m_id';
-- A call in flight for longer than gateway_persist_holds' age (five seconds unless given) is
-- written as a row (held in memory, charged at its hold if its lease ends unsettled), so that it
-- outlives a restart of the server; its settle then takes the per-call path.
set local role regress_gw;
select reservation as r10 from bulkhead.gateway_admit(null, '00000000-0000-4000-8000-0000000000b1', 'openai', 'chat',
    'gw-gpt', 10, 10, 10, 1, null, null, '10 minutes') \gset
select bulkhead.gateway_persist_holds(interval '1 second') as written_at_once;
select pg_sleep(1.1);
select bulkhead.gateway_persist_holds(interval '1 second') > 0 as written_after_a_second;
reset role;
select held_in_memory, queued, bill_on_expiry, settled_at is null as open from bulkhead.reservations where id = :'r10';
set local role regress_gw;
select cost_usd, error from bulkhead.gateway_settle(array['00000000-0000-4000-8000-0000000000b1']::uuid[], array[:'r10']::uuid[],
    array['{"prompt_tokens": 5, "completion_tokens": 5}']::jsonb[], array['chatcmpl-persisted'], array['gw-gpt']);
reset role;
select settled_at is not null as settled from bulkhead.reservations where id = :'r10';
-- After a restart of the server forgot a call's hold, the tenant's application records the call
-- first, as an orphan at a usage of its choosing, under the reservation and request id it read
-- from the response: the gateway's settle still records the call at the provider's usage.
select gen_random_uuid() as r11 \gset
set local role regress_gw_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-0000000000a1');
select bulkhead.ledger_record(:'r11', '{"prompt_tokens": 0, "completion_tokens": 0}', 'chatcmpl-preempt', 'gw-gpt') as app_recorded;
select bulkhead.set_tenant(null);
reset role;
set local role regress_gw;
select cost_usd, error from bulkhead.gateway_settle(array['00000000-0000-4000-8000-0000000000a1']::uuid[], array[:'r11']::uuid[],
    array['{"prompt_tokens": 800, "completion_tokens": 300}']::jsonb[], array['chatcmpl-preempt'], array['gw-gpt']);
reset role;
select count(*) as rows_for_the_call, sum(cost_usd) as charged from bulkhead.ledger where reservation_id = :'r11';
-- A provisioned Anthropic workspace waiting for its key (tenant_credentials.status pending_key):
-- its calls use the shared pool (bulkhead.pending_key_calls = shared_pool, the default), or are
-- refused with 55000 (refuse); on the table path and in memory alike.
insert into bulkhead.tenant_credentials (tenant_id, provider, secret_ref, kind, provider_project_id, status)
values ('00000000-0000-4000-8000-0000000000b1', 'anthropic', null, 'dedicated', 'wrkspc_waiting', 'pending_key');
insert into bulkhead.shared_credentials (provider, secret_ref) values ('anthropic', 'env:GW_SHARED_ANTHROPIC');
create function pg_temp.pending_admit() returns text language sql as $$
    select pg_temp.attempt($q$select secret_ref || ' ' || credential_kind from bulkhead.gateway_admit(null,
        '00000000-0000-4000-8000-0000000000b1', 'anthropic', 'chat', 'gw-claude', 10, 10, 10, 1, null, null, '10 minutes')$q$)
$$;
grant execute on function pg_temp.pending_admit() to public;
set local bulkhead.memory_admission = off;
set local role regress_gw;
select pg_temp.pending_admit() as waiting_uses_shared_pool_table_path;
reset role;
set local bulkhead.pending_key_calls = refuse;
set local role regress_gw;
select pg_temp.pending_admit() as waiting_refused_table_path;
reset role;
set local bulkhead.memory_admission = on;
set local role regress_gw;
select pg_temp.pending_admit() as waiting_refused_in_memory;
reset role;
set local bulkhead.pending_key_calls = shared_pool;
set local role regress_gw;
select pg_temp.pending_admit() as waiting_uses_shared_pool_in_memory;
reset role;
select pg_temp.attempt($$set bulkhead.pending_key_calls = sometimes$$) as unknown_setting;
rollback;
