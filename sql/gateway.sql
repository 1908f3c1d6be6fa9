-- The gateway's side of the database: per-tenant API keys, tenant suspension, and the functions
-- `bulkhead gateway` calls. The gateway authenticates a caller (a key's hash, or a JWT it verified
-- itself) and asks the database, in one round trip, to admit the call: the tenant's context, its
-- status, the model's provider, the output cap, the rendered tenant prompt, the reservation and
-- the credential reference. It settles with the provider's usage (gateway_settle), and a call it
-- never settles is charged at its hold when its lease ends (reservations.bill_on_expiry).
--
-- Only bulkhead_gateway may call these functions: it is trusted to name the tenant of a JWT it
-- verified, as bulkhead_app is trusted to call set_tenant.

-- Per-tenant API keys: the secret ('bk_' + 256 random bits, base64url) is shown once by
-- create_api_key; only its SHA-256 is kept. A key authenticates its tenant and nothing else.
create table bulkhead.api_keys (
    tenant_id    uuid        not null,
    id           uuid        not null default pg_catalog.gen_random_uuid(),
    name         text        not null,
    key_hash     bytea       not null,
    -- The first characters of the secret, so that people can tell their keys apart.
    key_prefix   text        not null,
    created_by   name        not null default current_user,
    created_at   timestamptz not null default pg_catalog.clock_timestamp(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    -- Recorded at most once a minute per key (gateway_admit), never a write per request.
    last_used_at timestamptz,
    constraint api_keys_pkey primary key (tenant_id, id),
    constraint api_keys_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id),
    constraint api_keys_name_length check (pg_catalog.char_length(name) between 1 and 200),
    constraint api_keys_hash_length check (pg_catalog.octet_length(key_hash) = 32)
);
-- Not unique: a unique index across tenants would be the only cross-tenant constraint, and two
-- 256-bit secrets never collide anyway.
create index api_keys_by_hash on bulkhead.api_keys (key_hash);
comment on table bulkhead.api_keys is
    'Per-tenant gateway API keys: SHA-256 of the secret only (the secret is shown once by create_api_key).';

alter table bulkhead.api_keys enable row level security;
alter table bulkhead.api_keys force row level security;
create policy tenant_isolation on bulkhead.api_keys
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));
-- The gateway's functions find a key by its hash before they know its tenant.
create policy gateway_lookup on bulkhead.api_keys for select to bulkhead_meter using (true);

grant usage on schema bulkhead to bulkhead_gateway;
-- Applications and the control plane list a tenant's keys; nobody but the meter reads a hash.
grant select (tenant_id, id, name, key_prefix, created_by, created_at, expires_at, revoked_at, last_used_at)
    on bulkhead.api_keys to bulkhead_app, bulkhead_admin;
grant insert (tenant_id, name, key_hash, key_prefix, expires_at) on bulkhead.api_keys to bulkhead_admin;
grant update (revoked_at) on bulkhead.api_keys to bulkhead_admin;
grant delete on bulkhead.api_keys to bulkhead_admin;  -- tenant deletion only
grant select, update (last_used_at) on bulkhead.api_keys to bulkhead_meter;
select pg_catalog.pg_extension_config_dump('bulkhead.api_keys', '');

-- Creates an API key for a tenant and returns its secret: the only time it is shown.
create function bulkhead.create_api_key(tenant_id uuid, name text, expires_at timestamptz default null)
returns text
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    secret text;
    previous text;
begin
    if create_api_key.tenant_id is null or create_api_key.name is null then
        raise exception 'tenant_id and name are required'
            using errcode = '22004', detail = 'An API key belongs to one tenant and has a name people recognise it by.';
    end if;
    if pg_catalog.char_length(pg_catalog.btrim(create_api_key.name)) not between 1 and 200 then
        raise exception 'api key name must be 1 to 200 characters'
            using errcode = '22023', detail = 'The name tells people which key is which; it is never secret.';
    end if;
    if create_api_key.expires_at is not null and create_api_key.expires_at <= pg_catalog.clock_timestamp() then
        raise exception 'expires_at must be in the future'
            using errcode = '22023', detail = 'A key that is already expired could never be used.';
    end if;
    if not exists (select from bulkhead.tenants t where t.id = create_api_key.tenant_id) then
        raise exception 'tenant % does not exist', create_api_key.tenant_id using errcode = '42704';
    end if;
    -- 366 random bits (three v4 UUIDs, from pg_strong_random) hashed down to 256.
    secret := 'bk_' || pg_catalog.rtrim(pg_catalog.translate(pg_catalog.encode(pg_catalog.sha256(
                  pg_catalog.uuid_send(pg_catalog.gen_random_uuid()) || pg_catalog.uuid_send(pg_catalog.gen_random_uuid())
                  || pg_catalog.uuid_send(pg_catalog.gen_random_uuid())), 'base64'), '+/', '-_'), '=');
    previous := bulkhead._enter_tenant(create_api_key.tenant_id);
    insert into bulkhead.api_keys (tenant_id, name, key_hash, key_prefix, expires_at)
    values (create_api_key.tenant_id, pg_catalog.btrim(create_api_key.name),
            pg_catalog.sha256(pg_catalog.convert_to(secret, 'UTF8')), pg_catalog.left(secret, 9),
            create_api_key.expires_at);
    perform bulkhead._leave_tenant(previous);
    return secret;
end
$$;
comment on function bulkhead.create_api_key(uuid, text, timestamptz) is
    'Creates a gateway API key for a tenant and returns its secret (shown once; only its hash is kept). bulkhead_admin only.';

-- The tenant of a key, for revoke_api_key (the control plane names a key, not its tenant).
create function bulkhead._api_key_tenant(key_id uuid)
returns uuid
language sql stable
security definer
set search_path to pg_catalog, pg_temp
as $$ select k.tenant_id from bulkhead.api_keys k where k.id = _api_key_tenant.key_id $$;

-- Revokes a key: every gateway refuses it from its next request on (each request looks the key
-- up). Returns false if it was revoked already.
create function bulkhead.revoke_api_key(key_id uuid)
returns boolean
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := bulkhead._api_key_tenant(key_id);
    previous text;
    revoked boolean;
begin
    if tenant is null then
        raise exception 'api key % does not exist', key_id using errcode = '42704';
    end if;
    previous := bulkhead._enter_tenant(tenant);
    update bulkhead.api_keys k set revoked_at = pg_catalog.clock_timestamp()
    where k.tenant_id = tenant and k.id = revoke_api_key.key_id and k.revoked_at is null;
    revoked := found;
    perform bulkhead._leave_tenant(previous);
    return revoked;
end
$$;
comment on function bulkhead.revoke_api_key(uuid) is
    'Revokes a gateway API key at once (every gateway looks keys up per request); false if already revoked. bulkhead_admin only.';

-- Sets a tenant's status (suspend_tenant, resume_tenant); false if it had that status already.
create function bulkhead._set_tenant_status(tenant uuid, new_status text)
returns boolean
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
begin
    if not exists (select from bulkhead.tenants t where t.id = tenant) then
        raise exception 'tenant % does not exist', tenant using errcode = '42704';
    end if;
    update bulkhead.tenants t set status = new_status where t.id = tenant and t.status <> new_status;
    return found;
end
$$;

-- Suspends a tenant: its new calls are refused (PT403), and gateways cut its streams in flight
-- within a second (they poll gateway_inactive_tenants).
create function bulkhead.suspend_tenant(tenant_id uuid)
returns boolean
language sql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$ select bulkhead._set_tenant_status(suspend_tenant.tenant_id, 'suspended') $$;
comment on function bulkhead.suspend_tenant(uuid) is
    'Suspends a tenant: new calls refused (PT403), gateway streams in flight cut within a second; false if already suspended. bulkhead_admin only.';

create function bulkhead.resume_tenant(tenant_id uuid)
returns boolean
language sql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$ select bulkhead._set_tenant_status(resume_tenant.tenant_id, 'active') $$;
comment on function bulkhead.resume_tenant(uuid) is
    'Lets a suspended tenant make calls again; false if it was active. bulkhead_admin only.';

-- The output cap a gateway call gets when it names none: a tenant's own, or (NULL tenant_id) the
-- platform default. NULL tokens clears a tenant's own cap.
create function bulkhead.set_default_max_output_tokens(tenant_id uuid, tokens int)
returns void
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    previous text;
begin
    if tokens is not null and tokens not between 1 and 1000000 then
        raise exception 'default max output tokens must be between 1 and 1000000'
            using errcode = '22023', detail = 'The cap is the most output a call that names none may be reserved and sent.';
    end if;
    if set_default_max_output_tokens.tenant_id is null then
        if tokens is null then
            raise exception 'the platform default cannot be cleared' using errcode = '22004';
        end if;
        update bulkhead.budget_defaults d set default_max_output_tokens = tokens, updated_at = pg_catalog.now();
        return;
    end if;
    if not exists (select from bulkhead.tenants t where t.id = set_default_max_output_tokens.tenant_id) then
        raise exception 'tenant % does not exist', set_default_max_output_tokens.tenant_id using errcode = '42704';
    end if;
    previous := bulkhead._enter_tenant(set_default_max_output_tokens.tenant_id);
    update bulkhead.tenant_settings s set default_max_output_tokens = tokens, updated_at = pg_catalog.now()
    where s.tenant_id = set_default_max_output_tokens.tenant_id;
    perform bulkhead._leave_tenant(previous);
end
$$;
comment on function bulkhead.set_default_max_output_tokens(uuid, int) is
    'Sets the output cap of gateway calls that name none, for a tenant (or the platform default). bulkhead_admin only.';

-- Who is calling: the tenant of an API key (by its SHA-256), or of a JWT the gateway verified.
-- Refusals: PT401 for a key that is unknown, revoked or expired (HTTP 401; not 28000, which the
-- server itself raises when the gateway's own login fails), PT403 for a tenant
-- that is suspended or gone (HTTP 403). Sets the tenant context for the rest of the transaction.
create function bulkhead._gateway_authenticate(api_key_hash bytea, jwt_tenant uuid)
returns table (tenant_id uuid, key_id uuid)
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    k record;
    tenant_status text;
begin
    if (api_key_hash is null) = (jwt_tenant is null) then
        raise exception 'exactly one of api_key_hash and jwt_tenant is required' using errcode = '22023';
    end if;
    if api_key_hash is not null then
        select x.tenant_id, x.id, x.revoked_at, x.expires_at into k
        from bulkhead.api_keys x where x.key_hash = api_key_hash
        limit 1;
        if not found then
            raise exception 'invalid api key' using errcode = 'PT401';
        elsif k.revoked_at is not null then
            raise exception 'api key revoked' using errcode = 'PT401';
        elsif k.expires_at is not null and k.expires_at <= pg_catalog.clock_timestamp() then
            raise exception 'api key expired' using errcode = 'PT401';
        end if;
        tenant_id := k.tenant_id;
        key_id := k.id;
    else
        tenant_id := jwt_tenant;
    end if;
    select t.status into tenant_status from bulkhead.tenants t where t.id = _gateway_authenticate.tenant_id;
    if not found then
        raise exception 'tenant_not_found'
            using errcode = 'PT403',
                  detail = pg_catalog.jsonb_build_object('code', 'tenant_not_found', 'tenant_id', _gateway_authenticate.tenant_id)::text;
    elsif tenant_status <> 'active' then
        raise exception 'tenant_suspended'
            using errcode = 'PT403',
                  detail = pg_catalog.jsonb_build_object('code', 'tenant_suspended', 'tenant_id', _gateway_authenticate.tenant_id)::text;
    end if;
    perform bulkhead._set_tenant_within_function(_gateway_authenticate.tenant_id);
    -- Last use, at most once a minute per key, and never waiting on another request's update.
    if key_id is not null then
        update bulkhead.api_keys x set last_used_at = pg_catalog.clock_timestamp()
        where x.tenant_id = _gateway_authenticate.tenant_id and x.id = (
            select y.id from bulkhead.api_keys y
            where y.tenant_id = _gateway_authenticate.tenant_id and y.id = k.id
              and (y.last_used_at is null or y.last_used_at < pg_catalog.clock_timestamp() - interval '1 minute')
            for update skip locked);
    end if;
    return next;
end
$$;

-- Whether a key may call at all (known, not revoked or expired, its tenant active): checked
-- before the gateway reads a request's body, so that a caller without a valid key costs it no
-- parsing or counting. The admission checks again, in its own round trip.
create function bulkhead.gateway_key_valid(api_key_hash bytea)
returns boolean
language sql stable
security definer
set search_path to pg_catalog, pg_temp
as $$
    select exists (
        select from bulkhead.api_keys k join bulkhead.tenants t on t.id = k.tenant_id
        where k.key_hash = gateway_key_valid.api_key_hash and k.revoked_at is null
          and (k.expires_at is null or k.expires_at > pg_catalog.clock_timestamp()) and t.status = 'active')
$$;

-- The SQL path of gateway_admit (below): admits one gateway call. The gateway passes its bounds
-- on the client's input: tokenized_input with the model's own tokenizer (used only where
-- input_token_bound would use it: every price row of the model names OpenAI) and byte_input at
-- a token per byte (always valid), both including its framing, tools and image overheads. Adds
-- the tenant prompt (rendered here) and reserves input + max_output_tokens x choices.
create function bulkhead._gateway_admit_sql(
    api_key_hash bytea,
    jwt_tenant uuid,
    wire text,
    endpoint text,
    model text,
    tokenized_input bigint,
    byte_input bigint,
    max_output_tokens int,
    choices int,
    prompt_name text,
    prompt_vars jsonb,
    lease interval,
    durable_hold boolean default false
)
returns table (
    tenant_id uuid, key_id uuid, reservation uuid, provider text, output_cap int, est_input_tokens int,
    system_prompt text, secret_ref text, credential_kind text, provider_project_id text
)
language plpgsql volatile
security invoker  -- as gateway_admit, its only caller (bulkhead_meter)
set search_path to pg_catalog, pg_temp
as $$
declare
    model_provider text;
    openai_tokenizer boolean;
    reserved_output bigint;
    est bigint;
    cred record;
begin
    if wire is null or endpoint is null or model is null or byte_input is null or choices is null or lease is null
       or durable_hold is null then
        raise exception 'wire, endpoint, model, byte_input, choices, lease and durable_hold are required' using errcode = '22004';
    end if;
    if wire not in ('openai', 'anthropic') or endpoint not in ('chat', 'embeddings')
       or (endpoint = 'embeddings' and wire <> 'openai') then
        raise exception 'unknown gateway endpoint %/%', wire, endpoint using errcode = '22023';
    end if;
    if byte_input < 0 or tokenized_input < 0 then
        raise exception 'input bounds must not be negative' using errcode = '22023';
    end if;
    if choices not between 1 and 128 then
        raise exception 'n must be between 1 and 128'
            using errcode = '22023', detail = 'Each choice is reserved at the output cap.';
    end if;
    -- Another session of the tenant holding its budget row (an application's open transaction
    -- after budget_check) must not stall the gateway's sessions, which every tenant shares:
    -- 55P03 after 200 ms, answered as "busy, retry" to this tenant only.
    perform pg_catalog.set_config('lock_timeout', '200ms', true);
    select a.tenant_id, a.key_id into _gateway_admit_sql.tenant_id, _gateway_admit_sql.key_id
    from bulkhead._gateway_authenticate(api_key_hash, jwt_tenant) a;

    select p.provider into model_provider from bulkhead.prices p
    where p.model = _gateway_admit_sql.model and p.effective_from <= pg_catalog.clock_timestamp()
    order by p.effective_from desc limit 1;
    if not found then
        raise exception 'unknown model %', pg_catalog.quote_literal(model)
            using errcode = '42704',
                  detail = 'No price is in effect for this model, so the gateway serves no call to it.',
                  hint = 'GET /v1/models lists the models this tenant may use.';
    end if;
    if (model_provider = 'anthropic') <> (wire = 'anthropic') then
        raise exception 'model % is served by %, not through this endpoint', pg_catalog.quote_literal(model), model_provider
            using errcode = '22023',
                  detail = case when model_provider = 'anthropic'
                           then 'Anthropic models are served at POST /v1/messages, in Anthropic''s format.'
                           else 'OpenAI-format models are served at POST /v1/chat/completions and /v1/embeddings.' end,
                  hint = 'The gateway does not translate between wire formats.';
    end if;
    provider := model_provider;

    -- The credential before the reservation: a call that cannot be made holds no budget.
    -- credential_for_tenant's query, inline: a SQL function with its own search_path is planned
    -- again on every call, and this runs on every gateway call.
    select c.secret_ref, c.kind, c.provider_project_id into cred from (
        select t.secret_ref, t.kind, t.provider_project_id, 1 as rank
        from bulkhead.tenant_credentials t
        where t.tenant_id = _gateway_admit_sql.tenant_id and t.provider = model_provider
          and (t.status = 'active' or pg_catalog.current_setting('bulkhead.pending_key_calls', true) = 'refuse')
        union all
        select s.secret_ref, 'shared_pool', s.provider_project_id, 2
        from bulkhead.shared_credentials s
        where s.provider = model_provider
    ) c
    order by c.rank
    limit 1;
    if not found then
        raise exception 'no credential for provider %', model_provider
            using errcode = '55000',
                  detail = 'Neither this tenant nor the shared pool has a credential for this provider.',
                  hint = 'bulkhead_admin: bulkhead.set_credential(...).';
    end if;
    if cred.secret_ref is null then
        raise exception 'the tenant''s % credential waits for its key', model_provider
            using errcode = '55000',
                  detail = 'Its provisioned workspace has no key attached yet, and bulkhead.pending_key_calls is refuse.',
                  hint = 'bulkhead_admin: attach a key reference with bulkhead.set_credential(...).';
    end if;
    secret_ref := cred.secret_ref;
    credential_kind := cred.kind;
    provider_project_id := cred.provider_project_id;

    if endpoint = 'embeddings' then
        output_cap := 0;
        reserved_output := 0;
    else
        output_cap := coalesce(_gateway_admit_sql.max_output_tokens,
            (select s.default_max_output_tokens from bulkhead.tenant_settings s where s.tenant_id = _gateway_admit_sql.tenant_id),
            (select d.default_max_output_tokens from bulkhead.budget_defaults d));
        if output_cap < 1 then
            raise exception 'max_tokens must be at least 1' using errcode = '22023';
        end if;
        reserved_output := output_cap::bigint * choices;
        if reserved_output > 2147483647 then
            raise exception 'max_tokens x n is too large' using errcode = '22023';
        end if;
    end if;

    if prompt_name is not null then
        system_prompt := bulkhead.render_prompt(prompt_name, coalesce(prompt_vars, '{}'));
    end if;
    select pg_catalog.bool_and(p.provider = 'openai') into openai_tokenizer
    from bulkhead.prices p where p.model = _gateway_admit_sql.model;
    est := case when openai_tokenizer and tokenized_input is not null then tokenized_input else byte_input end;
    if system_prompt is not null then
        est := est + (select b.tokens from bulkhead.input_token_bound(model, array[system_prompt], true) b);
    end if;
    est_input_tokens := least(est, 100000000)::int;

    reservation := bulkhead.budget_check(model, est_input_tokens, reserved_output::int, lease);
    -- Only the gateway settles it; unsettled when its lease ends, it is charged at its hold.
    -- Admitted in memory (bulkhead.memory_admission), it is marked there and nothing is written:
    -- it survives the gateway, and a restart of the server forgets it like any hold in memory
    -- (the gateway then settles the call as an orphan). durable_hold writes it as a row too.
    if durable_hold or not bulkhead._gateway_hold(reservation) then
        perform bulkhead._materialize_reservation(reservation);
        update bulkhead.reservations x set queued = true, bill_on_expiry = true
        where x.tenant_id = _gateway_admit_sql.tenant_id and x.id = reservation;
        -- The call is made once this returns: its reservation must survive a crash of the server.
        perform pg_catalog.set_config('synchronous_commit', 'on', true);
    end if;
    return next;
end
$$;
comment on function bulkhead._gateway_admit_sql(bytea, uuid, text, text, text, bigint, bigint, int, int, text, jsonb, interval, boolean) is
    'gateway_admit''s SQL path: every table read on every call (extension/src/gateway.rs has the path in memory). Reached through gateway_admit only.';
-- The gateway's admission of one call. With memory admission on, a call that names no tenant
-- prompt and wants no durable hold takes the memory path (extension/src/gateway.rs), which
-- runs no SQL of its own; the others take _gateway_admit_sql. The same answers, and the same
-- errors (see README): PT401 -> 401, PT403 -> 403, PT429 -> 429, 42704 -> 404, 22023 -> 400.
create function bulkhead.gateway_admit(
    api_key_hash bytea,
    jwt_tenant uuid,
    wire text,
    endpoint text,
    model text,
    tokenized_input bigint,
    byte_input bigint,
    max_output_tokens int,
    choices int,
    prompt_name text,
    prompt_vars jsonb,
    lease interval,
    durable_hold boolean default false
)
returns table (
    tenant_id uuid, key_id uuid, reservation uuid, provider text, output_cap int, est_input_tokens int,
    system_prompt text, secret_ref text, credential_kind text, provider_project_id text
)
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    r record;
begin
    if prompt_name is null and durable_hold is false and bulkhead._admission_in_memory() then
        select * into r from bulkhead._gateway_admit_in_memory(api_key_hash, jwt_tenant, wire, endpoint, model,
            tokenized_input, byte_input, max_output_tokens, choices, lease) m;
        if r.sqlstate is not null then
            if r.hint is not null then
                raise exception using errcode = r.sqlstate, message = r.message, detail = r.detail, hint = r.hint;
            elsif r.detail is not null then
                raise exception using errcode = r.sqlstate, message = r.message, detail = r.detail;
            end if;
            raise exception using errcode = r.sqlstate, message = r.message;
        end if;
        if r.reservation is null then
            perform bulkhead._raise_refusal();
        end if;
        return query select r.tenant_id, r.key_id, r.reservation, r.provider, r.output_cap, r.est_input_tokens,
            null::text, r.secret_ref, r.credential_kind, r.provider_project_id;
        return;
    end if;
    return query select * from bulkhead._gateway_admit_sql(api_key_hash, jwt_tenant, wire, endpoint, model,
        tokenized_input, byte_input, max_output_tokens, choices, prompt_name, prompt_vars, lease, durable_hold);
end
$$;
comment on function bulkhead.gateway_admit(bytea, uuid, text, text, text, bigint, bigint, int, int, text, jsonb, interval, boolean) is
    'The gateway''s admission of one call: authentication, tenant prompt, credential reference and reservation in one round trip. bulkhead_gateway only.';

-- Settles gateway calls with the providers' usage, each in its tenant's context; one bad item
-- does not stop the others. A reservation lost in a server crash is recorded as an orphan
-- (charged, never admitted), so that no call the provider served goes unrecorded.
create function bulkhead.gateway_settle(
    tenants uuid[], reservations uuid[], usages jsonb[], request_ids text[], models text[]
)
returns table (reservation uuid, cost_usd numeric, error text)
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    i int;
    n int := coalesce(pg_catalog.cardinality(tenants), 0);
    gateway_call boolean;
    err text;
    tenant uuid;
    group_ids uuid[];
    group_costs numeric[];
    taken_count int;
    priced_count int;
    pending bulkhead.ledger[];
    settled uuid[] := '{}';
    busy uuid[] := '{}';
    hold numeric;
    spent numeric;
    itpm_refund bigint;
    otpm_refund bigint;
begin
    if n <> coalesce(pg_catalog.cardinality(reservations), 0) or n <> coalesce(pg_catalog.cardinality(usages), 0)
       or n <> coalesce(pg_catalog.cardinality(request_ids), 0) or n <> coalesce(pg_catalog.cardinality(models), 0) then
        raise exception 'gateway_settle needs arrays of one length' using errcode = '22023';
    end if;
    -- As in admission: a tenant's own open transaction delays only its own settles (55P03,
    -- retried by the gateway), never the batch's other tenants for long.
    perform pg_catalog.set_config('lock_timeout', '200ms', true);
    -- The ledger is the money record (as in _ledger_record): durable when this returns.
    perform pg_catalog.set_config('synchronous_commit', 'on', true);

    -- Calls whose holds are still in memory (bulkhead.memory_admission), a tenant at a time: one
    -- ledger insert and one budget_state update per tenant, no reservation row. Should anything
    -- in a tenant's group fail (a lock timeout, a bad usage object, a request id taken), the
    -- group is rolled back and its calls take the per-call path below, which reports each error.
    for tenant in select distinct u.t from pg_catalog.unnest(tenants) u(t) where u.t is not null loop
        begin
            perform bulkhead._set_tenant_within_function(tenant);
            -- Lock order as in budget_check and _ledger_record: the state row first.
            perform from bulkhead.budget_state s where s.tenant_id = tenant for update;
            with batch as (
                select distinct on (u.r) u.r, u.usage, u.request_id
                from rows from (pg_catalog.unnest(tenants), pg_catalog.unnest(reservations),
                               pg_catalog.unnest(usages), pg_catalog.unnest(request_ids)) u(t, r, usage, request_id)
                where u.t = tenant and u.r is not null
                order by u.r
            ),
            taken as (
                select h.* from bulkhead._take_gateway_holds(array(select b.r from batch b)) h
            ),
            priced as (
                select t.reservation, t.provider, t.model, t.est_input_tokens, t.max_output_tokens,
                       t.reserved_usd::numeric as reserved_usd, p.effective_from, b.request_id, pu.*
                from taken t
                join batch b on b.r = t.reservation
                left join bulkhead.prices p on p.provider = t.provider and p.model = t.model
                    and p.effective_from = timestamptz '2000-01-01 00:00:00+00' + t.price_from * interval '1 microsecond'
                left join lateral bulkhead.price_usage(t.provider, b.usage, p.input_per_mtok, p.output_per_mtok,
                                                       p.cached_input_per_mtok, p.cache_write_per_mtok) pu on true
            )
            select count(*), count(p.cost_usd),
                   pg_catalog.array_agg(row(tenant, pg_catalog.gen_random_uuid(), p.reservation, p.request_id, p.provider,
                       p.model, p.input_tokens, p.cached_input_tokens, p.cache_write_tokens, p.output_tokens,
                       p.reasoning_tokens, p.itpm_tokens, p.reserved_usd, p.cost_usd, p.effective_from, false,
                       pg_catalog.clock_timestamp(), 'tenant')::bulkhead.ledger),
                   coalesce(sum(p.reserved_usd), 0), coalesce(sum(p.cost_usd), 0),
                   coalesce(sum(p.est_input_tokens - p.itpm_tokens), 0), coalesce(sum(p.max_output_tokens - p.output_tokens), 0)
            into taken_count, priced_count, pending, hold, spent, itpm_refund, otpm_refund
            from priced p;
            if taken_count > priced_count then
                raise exception 'a call of the group needs the per-call path' using errcode = 'P0001';
            end if;
            continue when taken_count = 0;
            -- Each call under the provider's request id; one taken already (a retried settle of
            -- another call, or an id an application recorded first) goes under the id qualified
            -- by its reservation, and should that be taken too, by a random suffix, as in
            -- _ledger_record.
            group_ids := '{}';
            group_costs := '{}';
            for attempt in 1 .. 3 loop
                with inserted as (
                    insert into bulkhead.ledger select * from pg_catalog.unnest(pending)
                    on conflict on constraint ledger_request_key do nothing
                    returning bulkhead.ledger.reservation_id, bulkhead.ledger.cost_usd
                )
                select group_ids || coalesce(pg_catalog.array_agg(x.reservation_id), '{}'),
                       group_costs || coalesce(pg_catalog.array_agg(x.cost_usd), '{}')
                into group_ids, group_costs
                from inserted x;
                pending := array(
                    select row(l.tenant_id, l.id, l.reservation_id,
                               case attempt when 1 then pg_catalog.left(l.request_id, 140) || '#' || l.reservation_id::text
                                   else l.request_id || '#' || pg_catalog.substr(pg_catalog.md5(pg_catalog.gen_random_uuid()::text), 1, 16) end,
                               l.provider, l.model, l.input_tokens, l.cached_input_tokens, l.cache_write_tokens,
                               l.output_tokens, l.reasoning_tokens, l.itpm_tokens, l.reserved_usd, l.cost_usd,
                               l.price_effective_from, l.orphan, l.created_at, l.budget_line)::bulkhead.ledger
                    from pg_catalog.unnest(pending) l
                    where l.reservation_id <> all (group_ids));
                exit when pg_catalog.cardinality(pending) = 0;
            end loop;
            if pg_catalog.cardinality(pending) > 0 then
                raise exception 'a call of the group needs the per-call path' using errcode = 'P0001';
            end if;
            -- Holds released, costs counted and tokens given back in memory at commit.
            perform bulkhead._release_in_memory(hold, spent, itpm_refund, otpm_refund);
            update bulkhead.budget_state s
            set spent_usd = s.spent_usd + case when pg_catalog.clock_timestamp() >= s.period_start
                                                and pg_catalog.clock_timestamp() < s.period_end then spent else 0 end
            where s.tenant_id = tenant;
            settled := settled || group_ids;
            for i in 1 .. pg_catalog.cardinality(group_ids) loop
                reservation := group_ids[i];
                cost_usd := group_costs[i];
                error := null;
                return next;
            end loop;
        exception
            when lock_not_available then
                -- Another session holds the tenant's budget row: its calls wait for the next
                -- batch rather than each waiting here, while this batch holds other tenants' rows.
                busy := busy || tenant;
            when others then
                null;  -- the per-call path below settles this tenant's calls one by one
        end;
    end loop;

    for i in 1 .. n loop
        continue when reservations[i] = any(settled);
        reservation := reservations[i];
        cost_usd := null;
        error := null;
        if tenants[i] = any(busy) then
            error := '55P03: the tenant''s budget row is held by another session';
            return next;
            continue;
        end if;
        begin
            perform bulkhead._set_tenant_within_function(tenants[i]);
            select x.bill_on_expiry into gateway_call from bulkhead.reservations x
            where x.tenant_id = tenants[i] and x.id = reservations[i];
            if found and not gateway_call then
                raise exception 'reservation % is not a gateway call', reservations[i] using errcode = '42501';
            end if;
            cost_usd := bulkhead._ledger_record(reservations[i], usages[i], request_ids[i], models[i], true);
            -- Held in memory until _ledger_record wrote it: a reservation of another caller
            -- (budget_check, complete()) is not the gateway's to settle.
            if not found and exists (select from bulkhead.reservations x
                                     where x.tenant_id = tenants[i] and x.id = reservations[i] and not x.bill_on_expiry) then
                raise exception 'reservation % is not a gateway call', reservations[i] using errcode = '42501';
            end if;
        exception when others then
            get stacked diagnostics err = message_text;
            cost_usd := null;
            error := sqlstate || ': ' || err;
            if sqlstate = '55P03' then
                busy := busy || tenants[i];
            end if;
        end;
        return next;
    end loop;
    perform bulkhead._set_tenant_within_function(null);
end
$$;
comment on function bulkhead.gateway_settle(uuid[], uuid[], jsonb[], text[], text[]) is
    'Settles a batch of gateway calls with the providers'' usage, each in its tenant''s context. bulkhead_gateway only.';

-- Gives back the hold of a gateway call the provider refused (an error answer, nothing served).
create function bulkhead.gateway_release(tenant uuid, reservation uuid)
returns boolean
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    released boolean;
begin
    -- A tenant's own open transaction must not stall the gateway's shared sessions (55P03).
    perform pg_catalog.set_config('lock_timeout', '200ms', true);
    perform bulkhead._set_tenant_within_function(tenant);
    perform from bulkhead.budget_state s where s.tenant_id = tenant for update;
    -- A hold in memory is written first, as a settle does.
    if not exists (select from bulkhead.reservations x where x.tenant_id = tenant and x.id = reservation) then
        perform bulkhead._materialize_reservation(reservation);
    end if;
    if bulkhead._reservation_being_written(reservation) then
        raise exception 'reservation % is being written by another transaction', reservation using errcode = '40001';
    end if;
    if not exists (select from bulkhead.reservations x
                   where x.tenant_id = tenant and x.id = reservation and x.bill_on_expiry) then
        raise exception 'no gateway reservation %', reservation using errcode = 'P0002';
    end if;
    released := bulkhead._cancel_reservation(reservation);
    perform bulkhead._set_tenant_within_function(null);
    return released;
end
$$;

-- Gateway holds admitted in memory more than five seconds ago become rows (held in memory,
-- charged at their hold if their lease ends unsettled), so that a call outlives a restart of the
-- server even when its gateway is gone too: only calls in their first seconds depend on memory
-- alone, and the many that end sooner are never written. Each gateway runs it every second and
-- every worker every 5 s, each in a transaction of its own (a settle meeting a hold being
-- written waits for that transaction). Needs no budget lock. SECURITY DEFINER (as
-- bulkhead_meter): it writes reservation rows for every tenant with holds in memory, which
-- neither the gateway's nor the worker's role may write.
create function bulkhead.gateway_persist_holds(older_than interval default '5 seconds')
returns bigint
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    target uuid;
    written bigint := 0;
begin
    if older_than is null or older_than < interval '0' then
        raise exception 'older_than must be a duration of zero or more' using errcode = '22023';
    end if;
    -- Never waits long on one tenant (a row lock of a deletion in progress, say): its holds are
    -- left for the next run, and the others are written meanwhile.
    perform pg_catalog.set_config('lock_timeout', '200ms', true);
    for target in select h.tenant_id from bulkhead._tenants_with_old_gateway_holds(older_than) h loop
        begin
            perform bulkhead._set_tenant_within_function(target);
            written := written + bulkhead._persist_gateway_holds(older_than);
        exception when others then
            null;  -- deleted meanwhile, or busy: its holds stay in memory until the next run
        end;
    end loop;
    perform bulkhead._set_tenant_within_function(null);
    if written > 0 then
        perform pg_catalog.set_config('synchronous_commit', 'on', true);
    end if;
    return written;
end
$$;
comment on function bulkhead.gateway_persist_holds(interval) is
    'Writes gateway holds admitted in memory over five seconds ago as rows, so that they outlive a restart. bulkhead_gateway and the sweeps.';

-- Of these tenants, those that may no longer make calls (suspended or deleted): the gateway
-- cuts their streams in flight.
create function bulkhead.gateway_inactive_tenants(tenants uuid[])
returns setof uuid
language sql stable
security definer
set search_path to pg_catalog, pg_temp
as $$
    select u from pg_catalog.unnest(tenants) u
    where not exists (select from bulkhead.tenants t where t.id = u and t.status = 'active')
$$;

-- The models a caller may use (those with a price in effect), after authenticating it.
create function bulkhead.gateway_models(api_key_hash bytea, jwt_tenant uuid)
returns table (model text, provider text, since timestamptz)
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
begin
    perform from bulkhead._gateway_authenticate(api_key_hash, jwt_tenant);
    return query
        select distinct on (p.model) p.model, p.provider, p.effective_from
        from bulkhead.prices p
        where p.effective_from <= pg_catalog.clock_timestamp()
        order by p.model, p.effective_from desc;
end
$$;

alter function bulkhead._api_key_tenant(uuid) owner to bulkhead_meter;
alter function bulkhead.gateway_admit(bytea, uuid, text, text, text, bigint, bigint, int, int, text, jsonb, interval, boolean)
    owner to bulkhead_meter;
alter function bulkhead._gateway_admit_sql(bytea, uuid, text, text, text, bigint, bigint, int, int, text, jsonb, interval, boolean) owner to bulkhead_meter;
alter function bulkhead.gateway_settle(uuid[], uuid[], jsonb[], text[], text[]) owner to bulkhead_meter;
alter function bulkhead.gateway_release(uuid, uuid) owner to bulkhead_meter;
alter function bulkhead.gateway_inactive_tenants(uuid[]) owner to bulkhead_meter;
alter function bulkhead.gateway_persist_holds(interval) owner to bulkhead_meter;
alter function bulkhead.gateway_models(bytea, uuid) owner to bulkhead_meter;
alter function bulkhead.gateway_key_valid(bytea) owner to bulkhead_meter;

revoke all on function bulkhead.create_api_key(uuid, text, timestamptz) from public;
revoke all on function bulkhead._api_key_tenant(uuid) from public;
revoke all on function bulkhead.revoke_api_key(uuid) from public;
revoke all on function bulkhead._set_tenant_status(uuid, text) from public;
revoke all on function bulkhead.suspend_tenant(uuid) from public;
revoke all on function bulkhead.resume_tenant(uuid) from public;
revoke all on function bulkhead.set_default_max_output_tokens(uuid, int) from public;
revoke all on function bulkhead._gateway_authenticate(bytea, uuid) from public;
revoke all on function bulkhead.gateway_admit(bytea, uuid, text, text, text, bigint, bigint, int, int, text, jsonb, interval, boolean) from public;
revoke all on function bulkhead._gateway_admit_sql(bytea, uuid, text, text, text, bigint, bigint, int, int, text, jsonb, interval, boolean) from public;
revoke all on function bulkhead.gateway_settle(uuid[], uuid[], jsonb[], text[], text[]) from public;
revoke all on function bulkhead.gateway_release(uuid, uuid) from public;
revoke all on function bulkhead.gateway_inactive_tenants(uuid[]) from public;
revoke all on function bulkhead.gateway_persist_holds(interval) from public;
-- The worker's lease sweep writes a dead gateway's holds in flight too.
grant execute on function bulkhead.gateway_persist_holds(interval) to bulkhead_worker;
revoke all on function bulkhead.gateway_models(bytea, uuid) from public;
revoke all on function bulkhead.gateway_key_valid(bytea) from public;
grant execute on function bulkhead.create_api_key(uuid, text, timestamptz), bulkhead._api_key_tenant(uuid),
    bulkhead.revoke_api_key(uuid), bulkhead._set_tenant_status(uuid, text), bulkhead.suspend_tenant(uuid), bulkhead.resume_tenant(uuid),
    bulkhead.set_default_max_output_tokens(uuid, int)
    to bulkhead_admin;
grant execute on function bulkhead._gateway_authenticate(bytea, uuid) to bulkhead_meter;
grant execute on function
    bulkhead.gateway_admit(bytea, uuid, text, text, text, bigint, bigint, int, int, text, jsonb, interval, boolean),
    bulkhead.gateway_settle(uuid[], uuid[], jsonb[], text[], text[]),
    bulkhead.gateway_release(uuid, uuid),
    bulkhead.gateway_inactive_tenants(uuid[]),
    bulkhead.gateway_persist_holds(interval),
    bulkhead.gateway_models(bytea, uuid),
    bulkhead.gateway_key_valid(bytea),
    bulkhead.expire_all_reservations(),
    bulkhead.input_token_bound(text, text[], boolean)
    to bulkhead_gateway;
-- What gateway_admit reads, as bulkhead_meter, in the caller's tenant context.
grant execute on function bulkhead.credential_for_tenant(text) to bulkhead_meter;
grant select on bulkhead.tenant_credentials, bulkhead.shared_credentials, bulkhead.tenant_settings to bulkhead_meter;
-- The gateway's holds in memory (extension/src/admission.rs), reached through gateway_admit and
-- gateway_settle only.
revoke all on function bulkhead._tenants_with_old_gateway_holds(interval), bulkhead._persist_gateway_holds(interval)
    from public;
grant execute on function bulkhead._tenants_with_old_gateway_holds(interval), bulkhead._persist_gateway_holds(interval)
    to bulkhead_meter;
revoke all on function bulkhead._gateway_hold(uuid), bulkhead._take_gateway_holds(uuid[]),
    bulkhead._gateway_admit_in_memory(bytea, uuid, text, text, text, bigint, bigint, int, int, interval) from public;
grant execute on function bulkhead._gateway_hold(uuid), bulkhead._take_gateway_holds(uuid[]),
    bulkhead._gateway_admit_in_memory(bytea, uuid, text, text, text, bigint, bigint, int, int, interval) to bulkhead_meter;

-- gateway_admit's backends remember keys, credential references and output caps (see
-- extension/src/gateway.rs): every change to them signals, as changes to tenants, limits and
-- prices do, so that a revoked key or a rotated credential is refused or used on the next call.
create trigger api_keys_changed
    after insert or delete or truncate or update of key_hash, tenant_id, revoked_at, expires_at
    on bulkhead.api_keys for each statement execute function bulkhead._tenants_changed();
create trigger tenant_credentials_changed after insert or update or delete or truncate on bulkhead.tenant_credentials
    for each statement execute function bulkhead._tenants_changed();
create trigger shared_credentials_changed after insert or update or delete or truncate on bulkhead.shared_credentials
    for each statement execute function bulkhead._tenants_changed();
create trigger tenant_settings_changed
    after insert or delete or truncate or update of default_max_output_tokens
    on bulkhead.tenant_settings for each statement execute function bulkhead._tenants_changed();
