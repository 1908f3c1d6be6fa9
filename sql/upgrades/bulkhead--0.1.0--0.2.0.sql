-- Bulkhead 0.1.0 to 0.2.0. Unreleased: every schema change goes here as well as into sql/*.sql
-- until 0.2.0 is released; from then on this file never changes (scripts/check-releases.sh).
\echo Use "ALTER EXTENSION bulkhead UPDATE TO '0.2.0'" to load this file. \quit

comment on table bulkhead.prices is
    'Model prices (USD per million tokens), versioned by effective_from; a missing cached or cache-write rate bills at the input rate. Seeded rows come with the extension and are not dumped.';

-- _request_input_bound reads the request as text (a jsonb argument made pgrx raise XX000 on
-- what serde_json refuses: nesting past 128 levels, numbers past f64).
drop function bulkhead._request_input_bound(text, text, jsonb);
create function bulkhead."_request_input_bound"("wire" text, "model" text, "request" text)
returns table ("tokenized" bigint, "bytes" bigint)
immutable strict parallel safe
set search_path to pg_catalog, pg_temp
language c
as 'MODULE_PATHNAME', '_request_input_bound_text_wrapper';
revoke all on function bulkhead._request_input_bound(text, text, text) from public;
grant execute on function bulkhead._request_input_bound(text, text, text) to bulkhead_meter;

-- Its caller passes the request as text; the evals' helpers and _create_tenant_index refuse
-- what the bad-input sweep found them raising XX000 or 42601 on.
create or replace function bulkhead._queue_completion(
    prompt text,
    model text,
    max_output_tokens int,
    stream boolean,
    lease interval,
    idempotency_key text,
    request jsonb,
    template_name text,
    -- An eval's call ({"run": id}): its outcome is scored when the worker records it.
    eval_call jsonb default null
)
returns bigint
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := bulkhead.current_tenant();
    model_provider text;
    bounds record;
    choices int := 1;
    est_input bigint;
    reservation uuid;
    r bulkhead.reservations;
    job bigint;
begin
    if tenant is null then
        raise exception 'no tenant context' using errcode = '42501';
    end if;
    if model is null or max_output_tokens is null or stream is null or (prompt is null and request is null) then
        raise exception 'model, max_output_tokens, stream, and a prompt or a request are required' using errcode = '22004';
    end if;
    if max_output_tokens < 1 then
        raise exception 'max_output_tokens must be at least 1' using errcode = '22023';
    end if;
    if request is not null and (pg_catalog.jsonb_typeof(request) <> 'object' or pg_catalog.octet_length(request::text) > 8388608) then
        raise exception 'request must be a JSON object of at most 8 MiB' using errcode = '22023',
            detail = 'An OpenAI Chat Completions or Anthropic Messages request body, by the model''s provider.';
    end if;
    if idempotency_key is not null then
        select j.id into job from bulkhead.jobs j
        where j.tenant_id = tenant and j.idempotency_key = 'completion:' || _queue_completion.idempotency_key;
        if found then
            return job;  -- a retried request: no second admission, no second call
        end if;
    end if;
    -- The prompt holds end users' text: reserve a bound that holds for any text (the model's
    -- tokenizer, else one token per byte, plus framing), never an average. The settle charges
    -- what the provider counted and gives the rest back.
    if request is null then
        est_input := (select b.tokens from bulkhead.input_token_bound(model, array[prompt]) b);
    else
        select p.provider into model_provider from bulkhead.prices p
        where p.model = _queue_completion.model and p.effective_from <= pg_catalog.clock_timestamp()
        order by p.effective_from desc limit 1;
        if not found then
            raise exception 'unknown model %', pg_catalog.quote_literal(model) using errcode = '22023',
                detail = 'No price is in effect for this model, so its cost cannot be bounded; the call is refused.';
        end if;
        select * into bounds from bulkhead._request_input_bound(
            case when model_provider = 'anthropic' then 'anthropic' else 'openai' end, model, request::text);
        -- The tokenizer's count only where input_token_bound would use it (every price row OpenAI).
        est_input := case when (select pg_catalog.bool_and(p.provider = 'openai') from bulkhead.prices p
                                where p.model = _queue_completion.model) and bounds.tokenized is not null
                          then bounds.tokenized else bounds.bytes end;
        if prompt is not null then
            est_input := est_input + (select b.tokens from bulkhead.input_token_bound(model, array[prompt]) b);
        end if;
        if model_provider <> 'anthropic' and request ? 'n' then
            if pg_catalog.jsonb_typeof(request -> 'n') <> 'number' or (request ->> 'n')::numeric not between 1 and 128
               or (request ->> 'n')::numeric <> pg_catalog.trunc((request ->> 'n')::numeric) then
                raise exception 'n must be an integer between 1 and 128' using errcode = '22023';
            end if;
            choices := (request ->> 'n')::int;
        end if;
        if max_output_tokens::bigint * choices > 2147483647 then
            raise exception 'max_output_tokens x n is too large' using errcode = '22023';
        end if;
    end if;
    -- An eval's call goes on the tenant's eval budget when it has one (sql/evals.sql).
    reservation := case when eval_call is null
                        then bulkhead.budget_check(model, least(est_input, 100000000)::int, max_output_tokens * choices, lease)
                        else bulkhead._budget_check_eval(model, least(est_input, 100000000)::int, max_output_tokens * choices, lease)
                   end;
    -- Admitted in memory: the worker's call needs the reservation as a row.
    perform bulkhead._materialize_reservation(reservation);
    -- budget_check may have switched synchronous commit off for the transaction (admission
    -- state need not be durable); a queued job must be, once the caller saw its id.
    perform pg_catalog.set_config('synchronous_commit', 'on', true);
    update bulkhead.reservations x set queued = true
    where x.tenant_id = tenant and x.id = reservation
    returning * into r;
    return bulkhead._enqueue(
        'completion',
        pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
            'reservation', reservation,
            'provider', r.provider,
            'model', r.model,
            'template', template_name,
            'prompt', prompt,
            'request', request,
            'max_output_tokens', max_output_tokens,
            'choices', choices,
            'est_input_tokens', least(est_input, 100000000),
            'stream', stream,
            'eval', eval_call)),
        'completion:' || coalesce(_queue_completion.idempotency_key, reservation::text),
        null,
        5);
end
$$;

create or replace function bulkhead._eval_candidate(tenant uuid, template text, skeleton int)
returns int
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    found_version int;
    active bulkhead.prompt_versions;
    skeleton_body text;
    new_version int;
begin
    select v.version into found_version from bulkhead.prompt_versions v
    where v.tenant_id = tenant and v.template_name = template and v.skeleton_version = skeleton
    order by v.version desc limit 1;
    if found then
        return found_version;
    end if;
    select v.* into active from bulkhead.prompt_versions v
    join bulkhead.prompt_templates p on p.tenant_id = v.tenant_id and p.template_name = v.template_name
                                    and p.active_version = v.version
    where v.tenant_id = tenant and v.template_name = template;
    select s.body into skeleton_body from bulkhead.prompt_skeletons s
    where s.template_name = template and s.version = skeleton;
    if active.version is null or skeleton_body is null then
        raise exception 'tenant % has no active version of prompt %, or the prompt no skeleton version %',
                tenant, pg_catalog.quote_literal(template), skeleton
            using errcode = '42704';
    end if;
    perform bulkhead._check_prompt_version(template, skeleton_body, active.slots::text, active.body);
    update bulkhead.prompt_templates p set latest_version = p.latest_version + 1
    where p.tenant_id = tenant and p.template_name = template
    returning p.latest_version into new_version;
    insert into bulkhead.prompt_versions (tenant_id, template_name, version, skeleton_version, slots, body, created_by)
    values (tenant, template, new_version, skeleton, active.slots, active.body, bulkhead._caller());
    return new_version;
end
$$;

create or replace function bulkhead._eval_score_result(run bigint, case_id uuid, attempt int)
returns void
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := bulkhead.current_tenant();
    res bulkhead.eval_results;
    slots jsonb;
    banned text[];
    verdicts jsonb;
begin
    select r.* into res from bulkhead.eval_results r
    where r.tenant_id = tenant and r.run_id = run and r.case_id = _eval_score_result.case_id
      and r.attempt = _eval_score_result.attempt;
    if not found then
        raise exception 'eval run % has no result for case % (attempt %)', run, case_id, attempt
            using errcode = 'P0002';
    end if;
    select v.slots into slots from bulkhead.eval_runs x
    join bulkhead.prompt_versions v on v.tenant_id = x.tenant_id and v.template_name = x.template_name
                                   and v.version = x.version
    where x.tenant_id = tenant and x.id = run;
    select pg_catalog.array_agg(distinct t) into banned from (
        select pg_catalog.unnest(s.banned_topics) as t from bulkhead.tenant_settings s where s.tenant_id = tenant
        union all
        select pg_catalog.jsonb_array_elements_text(slots -> 'banned_topics')
        where pg_catalog.jsonb_typeof(slots -> 'banned_topics') = 'array'
        union all
        select pg_catalog.regexp_split_to_table(slots ->> 'banned_topics', '\s*[,;\n]\s*')
        where pg_catalog.jsonb_typeof(slots -> 'banned_topics') = 'string') topics
    where pg_catalog.btrim(t) <> '';
    verdicts := bulkhead._eval_score(res.assertions::text, pg_catalog.jsonb_build_object(
        'output', coalesce(res.output, ''),
        'output_tokens', coalesce(
            case when pg_catalog.jsonb_typeof(res.usage -> 'completion_tokens') = 'number' then res.usage -> 'completion_tokens' end,
            case when pg_catalog.jsonb_typeof(res.usage -> 'output_tokens') = 'number' then res.usage -> 'output_tokens' end),
        'cost_usd', res.cost_usd,
        'latency_ms', res.latency_ms,
        'banned_topics', pg_catalog.to_jsonb(coalesce(banned, '{}')),
        'similarity', res.measurements -> 'similarity',
        'judge', res.measurements -> 'judge')::text, res.message::text)::jsonb;
    update bulkhead.eval_results r
    set status = 'scored', details = verdicts, scored_at = pg_catalog.clock_timestamp(),
        passed = not exists (select from pg_catalog.jsonb_array_elements(verdicts) v where not (v.value ->> 'passed')::boolean)
    where r.tenant_id = tenant and r.run_id = run and r.case_id = _eval_score_result.case_id
      and r.attempt = _eval_score_result.attempt;
end
$$;

create or replace function bulkhead._create_tenant_index(name text, dims int, key bigint)
returns void
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
begin
    if name is null or name !~ '^chunks_hnsw_[0-9a-f]{16}$' or key is null
       or dims is null or dims not between 1 and bulkhead._hnsw_max_dims() then
        raise exception 'not a tenant index: %, % dimensions, key %', pg_catalog.quote_literal(name), dims, key
            using errcode = '22023', detail = 'Tenant indexes are named by _new_tenant_index_name().';
    end if;
    if pg_catalog.to_regclass('bulkhead.' || pg_catalog.quote_ident(name)) is null then
        execute pg_catalog.format(
            'create index %I on bulkhead.chunks using hnsw ((embedding::@extschema:vector@.vector(%s)) @extschema:vector@.vector_cosine_ops)'
            ' with (m = 16, ef_construction = 64) where index_key = %s::bigint',
            name, dims, key);
    end if;
end
$$;


create or replace function bulkhead._drop_index_now_or_later(name text)
returns text
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    saved_timeout text := pg_catalog.current_setting('lock_timeout');
begin
    -- Only a tenant's own index: a partial HNSW index on chunks keyed by index_key, under the
    -- name _new_tenant_index_name gives (never chunks' shared indexes, whatever a name says).
    if name !~ '^chunks_hnsw_[0-9a-f]{16}$' or not exists (
        select from pg_catalog.pg_index i
        where i.indexrelid = pg_catalog.to_regclass('bulkhead.' || pg_catalog.quote_ident(name))
          and i.indrelid = 'bulkhead.chunks'::regclass
          and pg_catalog.pg_get_expr(i.indpred, i.indrelid) ~ '^\(index_key = ''[0-9]+''::bigint\)$') then
        return 'none';
    end if;
    perform pg_catalog.set_config('lock_timeout', '100ms', true);
    begin
        execute pg_catalog.format('drop index if exists bulkhead.%I', name);
        delete from bulkhead.pending_index_drops p where p.index_name = name;
        perform pg_catalog.set_config('lock_timeout', saved_timeout, true);
        return 'dropped';
    -- Two transactions that both write chunks and then drop an index each (two tenants deleted
    -- at once) wait for each other's row-exclusive lock: PostgreSQL reports that deadlock at
    -- once, before any lock_timeout, so it defers the drop just the same.
    exception when lock_not_available or deadlock_detected then
        perform pg_catalog.set_config('lock_timeout', saved_timeout, true);
        insert into bulkhead.pending_index_drops (index_name) values (name) on conflict do nothing;
        return 'deferred';
    end;
end
$$;


-- 0.2.0: provider-side provisioning (sql/provisioning.sql). A tenant credential may wait for its
-- key (pending_key); jobs of kinds provision and provider_limits.
alter table bulkhead.tenant_credentials alter column secret_ref drop not null;
alter table bulkhead.tenant_credentials add column status text not null default 'active';
alter table bulkhead.tenant_credentials add constraint tenant_credentials_status_known check (status in ('active', 'pending_key'));
alter table bulkhead.tenant_credentials add constraint tenant_credentials_key_unless_pending check ((secret_ref is null) = (status = 'pending_key'));
alter table bulkhead.jobs drop constraint jobs_kind_known;
alter table bulkhead.jobs add constraint jobs_kind_known check (kind in ('noop', 'completion', 'embedding', 'index_build', 'eval_score',
                                           'provision', 'provider_limits'));

create or replace function bulkhead.set_credential(
    tenant_id uuid,
    provider text,
    secret_ref text,
    kind text default 'dedicated',
    provider_project_id text default null
)
returns uuid
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    previous text;
    credential uuid;
    statement_logging text := pg_catalog.current_setting('log_min_error_statement');
begin
    -- Any error here would log the failing statement, and with it whatever was passed, perhaps
    -- a key in the wrong argument. No error message below repeats an argument either.
    perform pg_catalog.set_config('log_min_error_statement', 'panic', true);
    if provider is null or provider not in ('openai', 'anthropic', 'openai_compatible') then
        raise exception 'unknown provider'
            using errcode = '22023', detail = 'Known providers are openai, anthropic and openai_compatible.';
    end if;
    if not coalesce(bulkhead._is_secret_reference(secret_ref), false) then
        raise exception 'secret_ref must be a reference to a secret, not a secret'
            using errcode = '22023',
                  detail = 'Accepted forms: env:NAME, file:/absolute/path, vault:<uuid>. The value given was not stored and is not repeated here.',
                  hint = 'Put the key in an environment variable, a file or Supabase Vault, and pass its reference.';
    end if;
    if kind is null or kind not in ('dedicated', 'shared_pool') then
        raise exception 'unknown credential kind'
            using errcode = '22023',
                  detail = 'dedicated: the tenant''s own OpenAI project or Anthropic workspace; shared_pool: a key shared by tenants.';
    end if;
    if provider_project_id is not null and pg_catalog.char_length(provider_project_id) not between 1 and 200 then
        raise exception 'provider_project_id must be 1 to 200 characters'
            using errcode = '22023', detail = 'It is the OpenAI project id or Anthropic workspace id of the key.';
    end if;

    if set_credential.tenant_id is null then
        insert into bulkhead.shared_credentials as c (provider, secret_ref, provider_project_id)
        values (set_credential.provider, set_credential.secret_ref, set_credential.provider_project_id)
        on conflict on constraint shared_credentials_pkey do update
        set secret_ref = excluded.secret_ref, provider_project_id = excluded.provider_project_id,
            created_at = pg_catalog.now()
        returning c.id into credential;
        perform pg_catalog.set_config('log_min_error_statement', statement_logging, true);
        return credential;
    end if;

    previous := bulkhead._enter_tenant(set_credential.tenant_id);
    insert into bulkhead.tenant_credentials as c (tenant_id, provider, secret_ref, kind, provider_project_id)
    values (set_credential.tenant_id, set_credential.provider, set_credential.secret_ref,
            set_credential.kind, set_credential.provider_project_id)
    on conflict on constraint tenant_credentials_provider_key do update
    set secret_ref = excluded.secret_ref, kind = excluded.kind, status = 'active',
        -- A key attached to a provisioned workspace keeps the workspace's id unless given another.
        provider_project_id = case when c.status = 'pending_key'
                                   then coalesce(excluded.provider_project_id, c.provider_project_id)
                                   else excluded.provider_project_id end,
        created_at = pg_catalog.now()
    returning c.id into credential;
    -- A key for a provisioned workspace that waited for one: its provisioning is complete.
    perform bulkhead._provisioned_key_attached(set_credential.tenant_id, set_credential.provider);
    perform bulkhead._leave_tenant(previous);
    perform pg_catalog.set_config('log_min_error_statement', statement_logging, true);
    return credential;
end
$$;

create or replace function bulkhead.credential_for_tenant(provider text)
returns table (credential_id uuid, secret_ref text, kind text, provider_project_id text, source text)
language sql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
    select * from (
        -- A credential waiting for its key: the shared pool serves, or (pending_key_calls =
        -- refuse) the row comes without a key and the call is refused.
        select c.id, c.secret_ref, c.kind, c.provider_project_id, 'tenant'
        from bulkhead.tenant_credentials c
        where c.tenant_id = bulkhead.current_tenant() and c.provider = credential_for_tenant.provider
          and (c.status = 'active' or pg_catalog.current_setting('bulkhead.pending_key_calls', true) = 'refuse')
        union all
        select s.id, s.secret_ref, 'shared_pool', s.provider_project_id, 'shared'
        from bulkhead.shared_credentials s
        where s.provider = credential_for_tenant.provider and bulkhead.current_tenant() is not null
    ) found
    order by 5 desc  -- 'tenant' before 'shared'
    limit 1
$$;

create or replace function bulkhead._gateway_admit_sql(
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

create or replace function bulkhead.enqueue_job(
    kind text,
    payload jsonb default '{}',
    idempotency_key text default null,
    run_at timestamptz default null,
    max_attempts int default 5
)
returns bigint
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
begin
    if kind in ('completion', 'embedding') then
        raise exception '% jobs are queued by bulkhead.%()', kind,
                case kind when 'completion' then 'complete' else 'embed_document' end
            using errcode = '42501',
                  detail = 'They admit the provider call against the tenant''s budget in the same transaction.';
    end if;
    if kind = 'eval_score' then
        raise exception 'eval_score jobs are queued by the evals themselves' using errcode = '42501';
    end if;
    if kind in ('provision', 'provider_limits') then
        raise exception '% jobs are queued by bulkhead.provision_provider() and set_budget()', kind
            using errcode = '42501', detail = 'Provisioning is the control plane''s (bulkhead_admin).';
    end if;
    if kind = 'index_build' then
        raise exception 'index_build jobs are queued by bulkhead.ingest_document()'
            using errcode = '42501', detail = 'A tenant''s index is built when it passes bulkhead.retrieval_index_threshold chunks.';
    end if;
    return bulkhead._enqueue(kind, payload, idempotency_key, run_at, max_attempts);
end
$$;

create or replace function bulkhead._enqueue(
    kind text,
    payload jsonb,
    idempotency_key text,
    run_at timestamptz,
    max_attempts int
)
returns bigint
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := bulkhead.current_tenant();
    job bigint;
    starts timestamptz;
    front timestamptz;
    last_key timestamptz;
begin
    if tenant is null then
        raise exception 'no tenant context'
            using errcode = '42501', hint = 'Call bulkhead.set_tenant(...) first: a job runs for one tenant.';
    end if;
    if kind is null or payload is null or max_attempts is null then
        raise exception 'kind, payload and max_attempts are required' using errcode = '22004';
    end if;
    if pg_catalog.jsonb_typeof(payload) <> 'object' then
        raise exception 'job payload must be a JSON object' using errcode = '22023';
    end if;
    if pg_catalog.octet_length(payload::text) > 262144 then
        raise exception 'job payload is over 256 kB' using errcode = '54000';
    end if;
    if idempotency_key is not null and pg_catalog.char_length(idempotency_key) not between 1 and 200 then
        raise exception 'idempotency_key must be 1 to 200 characters' using errcode = '22023';
    end if;
    -- No queue jumping: a job runs now or later, never "earlier than now"; at most 30 days out.
    if run_at is not null and run_at > pg_catalog.clock_timestamp() + interval '30 days' then
        raise exception 'run_at is more than 30 days away' using errcode = '22023';
    end if;
    if max_attempts not between 1 and 100 then
        raise exception 'max_attempts must be between 1 and 100' using errcode = '22023';
    end if;
    if idempotency_key is not null then
        select j.id into job from bulkhead.jobs j
        where j.tenant_id = tenant and j.idempotency_key = _enqueue.idempotency_key;
        if found then
            return job;
        end if;
    end if;
    -- A random id no job of any tenant has (the schedule lists them all): 2^53 ids make a
    -- collision rare, not impossible, and a collision must not fail (or tell) anything.
    loop
        job := bulkhead._random_id();
        exit when not exists (select from bulkhead.job_schedule s where s.job_id = job);
    end loop;
    begin
        insert into bulkhead.jobs (tenant_id, id, kind, payload, idempotency_key)
        values (tenant, job, _enqueue.kind, _enqueue.payload, _enqueue.idempotency_key)
        returning id into job;
    exception
        when check_violation then
            raise exception 'unknown job kind %', pg_catalog.quote_literal(kind)
                using errcode = '22023', detail = 'Known kinds: noop, completion, embedding, index_build, eval_score, provision, provider_limits.';
        when unique_violation then
            -- A concurrent enqueue of the same key won: answer with its job (invisible to a
            -- REPEATABLE READ snapshot taken before it committed: then retry the transaction).
            select j.id into job from bulkhead.jobs j
            where j.tenant_id = tenant and j.idempotency_key = _enqueue.idempotency_key;
            if job is null then
                raise exception 'a concurrent enqueue of this idempotency key is not visible yet'
                    using errcode = '40001', hint = 'Retry the transaction.';
            end if;
            return job;
    end;
    starts := greatest(coalesce(_enqueue.run_at, pg_catalog.clock_timestamp()), pg_catalog.clock_timestamp());
    -- Fair key (see job_schedule.fair_key): a job set to start later is ordered by its own
    -- start and joins no block.
    if starts <= pg_catalog.clock_timestamp() then
        select min(s.fair_key) into front from bulkhead.job_schedule s
        where s.state = 'queued' and s.run_at <= pg_catalog.clock_timestamp();
        select max(s.fair_key) into last_key from bulkhead.job_schedule s
        where s.job_tenant = tenant and s.state = 'queued' and s.run_at <= pg_catalog.clock_timestamp();
        if last_key is null then
            last_key := coalesce(front, starts);
        end if;
        if (select count(*) from bulkhead.job_schedule s
            where s.job_tenant = tenant and s.fair_key = last_key) >= 16 then
            last_key := last_key + interval '10 milliseconds';  -- the block is full: the next one
        end if;
    end if;
    insert into bulkhead.job_schedule (job_id, job_tenant, max_attempts, run_at, fair_key)
    values (job, tenant, _enqueue.max_attempts, starts, coalesce(last_key, starts));
    perform bulkhead._notify('bulkhead_jobs');
    return job;
end
$$;

create or replace function bulkhead.delete_tenant(id uuid)
returns uuid
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := delete_tenant.id;
    receipt uuid := pg_catalog.gen_random_uuid();
    started timestamptz := pg_catalog.clock_timestamp();
    previous text;
    target record;
    deleted bigint;
    state_rows bigint := 0;
    remaining bigint;
    steps jsonb := '[]';
    reference record;
    credential_ids uuid[];
    project_ids text[];
    touched text[] := '{}';
    index_drop text;
    index_name text;
    revocations int;
begin
    if tenant is null then
        raise exception 'tenant id must not be null'
            using errcode = '22004',
                  detail = 'bulkhead.delete_tenant needs the id of the tenant to delete.';
    end if;
    -- Budget admission locks the tenant's budget_state row and then, through the foreign key
    -- of the reservation it inserts, shares the tenant row. Taking the locks in that same order
    -- (state first, waiting for admissions in flight) rules out a deadlock with them.
    if exists (select from bulkhead.tenants t where t.id = tenant) then
        previous := bulkhead._enter_tenant(tenant);
        delete from bulkhead.budget_state s where s.tenant_id = tenant;
        get diagnostics state_rows = row_count;
        perform bulkhead._forget_in_memory(tenant);
        perform bulkhead._leave_tenant(previous);
    end if;
    -- The row lock serialises concurrent deletions of one tenant and blocks new rows that
    -- reference it (their foreign key check waits for this transaction).
    perform from bulkhead.tenants t where t.id = tenant for update;
    if not found then
        raise exception 'tenant % does not exist', tenant
            using errcode = '42704',
                  detail = 'There is no tenant with this id; it may have been deleted already.',
                  hint = 'Deletion receipts for deleted tenants are in bulkhead.deletion_receipts.';
    end if;

    previous := bulkhead._enter_tenant(tenant);
    -- The tenant's own vector index: its name is in the tenant's retrieval row, which goes; it is
    -- dropped at the end, so that DROP INDEX's exclusive lock on chunks is held only until the
    -- commit, not for the whole deletion.
    select s.index_name into index_name from bulkhead.retrieval_settings s where s.tenant_id = tenant;
    -- What other tables may name the tenant by: its credentials and provider projects (read
    -- before its credentials go).
    select pg_catalog.array_agg(c.id) into credential_ids
    from bulkhead.tenant_credentials c where c.tenant_id = tenant;
    -- Every project its dedicated credentials ever named, not only the current ones.
    select pg_catalog.array_agg(distinct p.provider_project_id) into project_ids
    from (select c.provider_project_id from bulkhead.tenant_credentials c
          where c.tenant_id = tenant and c.provider_project_id is not null
          union all
          select h.provider_project_id from bulkhead.tenant_provider_projects h where h.tenant_id = tenant) p;
    -- Its provisioned projects and workspaces are revoked at the providers by the daemon
    -- (provisioning.sql), each step added to this receipt when done.
    revocations := bulkhead._queue_provider_revocations(tenant, receipt);
    for target in select table_name from bulkhead.tenant_scoped_tables() order by deletion_order desc, table_name::text loop
        -- Identifiers come from the catalog, the value is a bound parameter; RLS confines the delete.
        execute pg_catalog.format('delete from %s where tenant_id = $1', target.table_name) using tenant;
        get diagnostics deleted = row_count;
        if target.table_name = 'bulkhead.budget_state'::regclass then
            deleted := deleted + state_rows;
        end if;
        execute pg_catalog.format('select count(*) from %s where tenant_id = $1', target.table_name)
            into remaining using tenant;
        if remaining <> 0 then
            raise exception 'tenant deletion left % rows in %', remaining, target.table_name
                using errcode = '55000',
                      detail = 'Rows of the tenant remained after the delete, so nothing was deleted.';
        end if;
        steps := steps || pg_catalog.jsonb_build_object(
            'step', target.table_name::text, 'rows', deleted, 'at', pg_catalog.clock_timestamp());
        if deleted > 0 then
            touched := touched || target.table_name::text;
        end if;
    end loop;

    -- Tables that name the tenant without a tenant_id column, found by their declared markers
    -- (bulkhead.tenant_references()), not by column names; the schema lint requires a marker.
    for reference in select * from bulkhead.tenant_references() r where r.marker <> 'kept' loop
        deleted := 0;
        if reference.marker = 'tenant-ref' then
            execute pg_catalog.format('delete from %s where %I = $1', reference.table_name, reference.column_name)
                using tenant;
            get diagnostics deleted = row_count;
        elsif reference.marker = 'tenant-credential-ref' and credential_ids is not null then
            execute pg_catalog.format('delete from %s where %I = any($1)', reference.table_name, reference.column_name)
                using credential_ids;
            get diagnostics deleted = row_count;
        elsif reference.marker = 'tenant-project-ref' and project_ids is not null then
            execute pg_catalog.format('delete from %s where %I = any($1)', reference.table_name, reference.column_name)
                using project_ids;
            get diagnostics deleted = row_count;
        elsif reference.marker not in ('tenant-ref-cascade', 'tenant-credential-ref', 'tenant-project-ref') then
            raise exception 'unknown tenant reference marker % on %.%', reference.marker,
                    reference.table_name, reference.column_name
                using errcode = '55000', detail = 'Nothing was deleted.';
        end if;
        if reference.marker in ('tenant-ref', 'tenant-ref-cascade') then
            execute pg_catalog.format('select count(*) from %s where %I = $1', reference.table_name, reference.column_name)
                into remaining using tenant;
            if remaining <> 0 then
                raise exception 'tenant deletion left % rows in % (%)', remaining, reference.table_name, reference.column_name
                    using errcode = '55000',
                          detail = 'Rows naming the tenant remained after the delete, so nothing was deleted.';
            end if;
        end if;
        steps := steps || pg_catalog.jsonb_build_object(
            'step', reference.table_name::text || '.' || reference.column_name, 'rows', deleted,
            'at', pg_catalog.clock_timestamp());
        -- Rows that went by cascade left dead versions too.
        if deleted > 0 or (reference.marker = 'tenant-ref-cascade' and pg_catalog.cardinality(touched) > 0) then
            touched := touched || reference.table_name::text;
        end if;
    end loop;
    -- Usage reports name a deleted tenant's projects for days after: reconciliation records that
    -- usage against this receipt, never the project's id (bulkhead.deleted_tenant_projects).
    insert into bulkhead.deleted_tenant_projects (project_hash, receipt_id)
    select pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(p, 'UTF8')), 'hex'), receipt
    from pg_catalog.unnest(project_ids) p
    on conflict do nothing;

    -- The index last; a DROP that meets a long reader of chunks is deferred
    -- (bulkhead.drop_pending_indexes) rather than waited for.
    index_drop := case when index_name is null then 'none' else bulkhead._drop_deleted_tenant_index(index_name) end;
    steps := steps || pg_catalog.jsonb_build_object(
        'step', 'tenant vector index', 'rows', (index_drop = 'dropped')::int,
        'at', pg_catalog.clock_timestamp());
    if index_drop = 'deferred' then
        steps := steps || pg_catalog.jsonb_build_object(
            'step', 'tenant vector index drop deferred (bulkhead.drop_pending_indexes)', 'rows', 1,
            'at', pg_catalog.clock_timestamp());
    end if;
    -- Its Pinecone namespace is queued for deletion (the daemon marks that job done).
    perform bulkhead._queue_namespace_deletion(tenant, receipt);
    steps := steps || pg_catalog.jsonb_build_object(
        'step', 'pinecone namespace deletion queued', 'rows', 1, 'at', pg_catalog.clock_timestamp());
    delete from bulkhead.tenants t where t.id = tenant;
    get diagnostics deleted = row_count;
    steps := steps || pg_catalog.jsonb_build_object(
        'step', 'bulkhead.tenants', 'rows', deleted, 'at', pg_catalog.clock_timestamp());
    perform bulkhead._leave_tenant(previous);

    touched := array(select distinct t from pg_catalog.unnest(touched || 'bulkhead.tenants'::text) t order by t);
    insert into bulkhead.deletion_receipts (id, tenant_id, started_at, completed_at, remaining_physical_state)
    values (receipt, tenant, started, pg_catalog.clock_timestamp(), pg_catalog.jsonb_build_object(
        'dead_row_versions', pg_catalog.jsonb_build_object(
            'tables', pg_catalog.to_jsonb(touched),
            'until', 'VACUUM of each table (autovacuum, or `bulkhead vacuum-deleted`); bulkhead.record_vacuum(receipt, table) proves it on this receipt'),
        'planner_statistics', pg_catalog.jsonb_build_object(
            'tables', pg_catalog.to_jsonb(touched),
            'until', 'ANALYZE of each table (`bulkhead vacuum-deleted` runs VACUUM (ANALYZE))'),
        'vector_index', case index_drop
            when 'dropped' then 'dropped in this transaction; its files are removed at commit'
            when 'deferred' then 'its drop queued in bulkhead.pending_index_drops: its entries stay in its files until bulkhead.drop_pending_indexes() drops it'
            else 'none' end,
        'wal', 'the deleted rows stay in write-ahead log segments until they are recycled after a checkpoint, and in WAL archives until those expire',
        'backups', 'base backups and dumps taken before this deletion keep the rows until they expire',
        'pinecone', 'the namespace is deleted by the worker; the step ''pinecone namespace deleted'' on this receipt proves it',
        'providers', case when revocations > 0
            then 'the worker revokes the provisioned key, archives the project or workspace and deletes the stored key; the steps ''provider key revoked'', ''provider project archived'' and ''secret deleted'' on this receipt prove it (bulkhead.deletion_receipt_pending lists those not done)'
            else 'none provisioned' end));
    insert into bulkhead.deletion_receipt_steps (receipt_id, step, rows_deleted, completed_at)
    select receipt, s->>'step', (s->>'rows')::bigint, (s->>'at')::timestamptz
    from pg_catalog.jsonb_array_elements(steps) s;
    return receipt;
end
$$;

create or replace function bulkhead.reconcile_usage(provider text, usage_date date, provider_usage jsonb)
returns int
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    previous text := coalesce(pg_catalog.current_setting('bulkhead.tenant_id', true), '');
    day_start timestamptz;
    tenant uuid;
    own record;
    sums record;
    shared record;
    -- Per tenant, accumulated in a variable: a temp table here could be one the caller
    -- planted, with triggers that would run as bulkhead_meter.
    ledger_rows jsonb := '[]';
    disagreeing int;
begin
    if provider is null or provider not in ('openai', 'anthropic', 'openai_compatible') then
        raise exception 'unknown provider' using errcode = '22023';
    end if;
    if usage_date is null or usage_date >= (pg_catalog.now() at time zone 'UTC')::date then
        raise exception 'only a finished UTC day can be reconciled' using errcode = '22023';
    end if;
    if pg_catalog.jsonb_typeof(provider_usage) is distinct from 'array'
       or exists (select from pg_catalog.jsonb_array_elements(provider_usage) u
                  where pg_catalog.jsonb_typeof(u -> 'project_id') is distinct from 'string'
                     or pg_catalog.jsonb_typeof(u -> 'input_tokens') is distinct from 'number'
                     or pg_catalog.jsonb_typeof(u -> 'output_tokens') is distinct from 'number'
                     or (u ? 'requests' and pg_catalog.jsonb_typeof(u -> 'requests') not in ('number', 'null'))) then
        raise exception 'provider_usage must be an array of {"project_id", "input_tokens", "output_tokens", "requests"}'
            using errcode = '22023';
    end if;
    insert into bulkhead.reconciliation_runs (provider, usage_date)
    values (reconcile_usage.provider, reconcile_usage.usage_date)
    on conflict do nothing;
    if not found then
        return null;
    end if;
    day_start := reconcile_usage.usage_date::timestamp at time zone 'UTC';

    -- What the ledger holds, per tenant, and which credential each tenant's calls used.
    select s.id, s.provider_project_id into shared
    from bulkhead.shared_credentials s where s.provider = reconcile_usage.provider;
    for tenant in select t.id from bulkhead.tenants t loop
        perform bulkhead._set_tenant_within_function(tenant);
        -- A credential waiting for its key served no call: the tenant's went to the shared pool.
        select c.id, c.provider_project_id into own
        from bulkhead.tenant_credentials c
        where c.tenant_id = tenant and c.provider = reconcile_usage.provider and c.status = 'active';
        select coalesce(sum(l.input_tokens + l.cached_input_tokens + l.cache_write_tokens), 0) as input_tokens,
               coalesce(sum(l.output_tokens), 0) as output_tokens, count(*) as requests
        into sums
        from bulkhead.ledger l
        where l.tenant_id = tenant and l.provider = reconcile_usage.provider
          and l.created_at >= day_start and l.created_at < day_start + interval '1 day';
        ledger_rows := ledger_rows || pg_catalog.jsonb_build_object(
            'tenant', tenant,
            'credential_id', coalesce(own.id, shared.id),
            'project_id', coalesce(own.provider_project_id, shared.provider_project_id),
            'attribution', case when own.id is not null then 'tenant' else 'shared_pool' end,
            'input_tokens', sums.input_tokens, 'output_tokens', sums.output_tokens, 'requests', sums.requests);
        -- Its other projects and workspaces, known by id (provisioned, waiting for a key, named
        -- by an earlier credential): usage reported there is the tenant's, against no ledger row
        -- (a key used outside Bulkhead), never 'unknown'.
        ledger_rows := ledger_rows || coalesce((
            select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                       'tenant', tenant, 'credential_id', null, 'project_id', k.project_id, 'attribution', 'tenant',
                       'input_tokens', 0, 'output_tokens', 0, 'requests', 0))
            from (select p.project_id from bulkhead.provider_provisions p
                  where p.tenant_id = tenant and p.provider = reconcile_usage.provider and p.project_id is not null
                  union
                  select h.provider_project_id from bulkhead.tenant_provider_projects h
                  where h.tenant_id = tenant and h.provider = reconcile_usage.provider) k
            where k.project_id is distinct from own.provider_project_id
              and k.project_id is distinct from shared.provider_project_id), '[]');
    end loop;
    perform bulkhead._leave_tenant(previous);

    -- One comparison per project: the provider's counts against the ledger of its tenants.
    with expected as (
        select r.project_id, r.credential_id, r.attribution,
               case when r.attribution = 'tenant' then r.tenant end as dedicated_tenant,
               sum(r.input_tokens) as input_tokens, sum(r.output_tokens) as output_tokens,
               sum(r.requests) as requests
        from pg_catalog.jsonb_to_recordset(ledger_rows) as r(
            tenant uuid, credential_id uuid, project_id text, attribution text,
            input_tokens bigint, output_tokens bigint, requests bigint)
        where r.project_id is not null
        group by 1, 2, 3, 4
    ),
    reported as (
        select u ->> 'project_id' as project_id,
               sum((u ->> 'input_tokens')::bigint) as input_tokens,
               sum((u ->> 'output_tokens')::bigint) as output_tokens,
               sum((u ->> 'requests')::bigint) as requests
        from pg_catalog.jsonb_array_elements(provider_usage) u
        group by 1
    ),
    compared as (
        insert into bulkhead.usage_drift
            (provider, usage_date, provider_project_id, credential_id, attribution, dedicated_tenant,
             provider_input_tokens, provider_output_tokens, provider_requests,
             ledger_input_tokens, ledger_output_tokens, ledger_requests)
        select reconcile_usage.provider, reconcile_usage.usage_date,
               case when d.receipt_id is not null then 'deleted tenant (receipt ' || d.receipt_id || ')'
                    else coalesce(e.project_id, p.project_id) end,
               e.credential_id,
               case when d.receipt_id is not null then 'deleted_tenant' else coalesce(e.attribution, 'unknown') end,
               e.dedicated_tenant,
               coalesce(p.input_tokens, 0), coalesce(p.output_tokens, 0),
               -- Anthropic's report has no request counts: only counts that exist are compared.
               case when p.project_id is null then 0 else p.requests end,
               coalesce(e.input_tokens, 0), coalesce(e.output_tokens, 0), coalesce(e.requests, 0)
        from expected e full join reported p on p.project_id = e.project_id
        left join bulkhead.deleted_tenant_projects d
          on e.project_id is null
         and d.project_hash = pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(p.project_id, 'UTF8')), 'hex')
        -- Projects with no calls on either side say nothing.
        where coalesce(p.input_tokens, 0) + coalesce(p.output_tokens, 0) + coalesce(e.requests, 0) > 0
        returning *
    )
    select count(*) into disagreeing from compared c
    where c.provider_input_tokens <> c.ledger_input_tokens
       or c.provider_output_tokens <> c.ledger_output_tokens
       or c.provider_requests <> c.ledger_requests;
    return disagreeing;
end
$$;


-- One row per tenant and provider that is (being) provisioned.
create table bulkhead.provider_provisions (
    tenant_id          uuid        not null,
    provider           text        not null,
    -- queued: a job is on its way; active: project, key and limits in place; pending_key: an
    -- Anthropic workspace waits for an admin to attach a key (keys cannot be made by API).
    state              text        not null default 'queued',
    options            jsonb       not null default '{}',
    -- Looked up at the provider before creating, so that a retry never creates a second one.
    project_name       text        not null,
    -- OpenAI project id (proj_...) or Anthropic workspace id (wrkspc_...).
    project_id         text,
    service_account_id text,
    key_id             text,
    -- Where the daemon stored the key it was given (file:... or vault:...).
    secret_ref         text,
    -- Counts rotations; names the service account of each key (bulkhead-<generation>).
    generation         int         not null default 1,
    -- The backstop the provider should hold (from the tenant's budget plus the margin), and what
    -- it last accepted.
    desired_limits     jsonb,
    applied_limits     jsonb,
    job_id             bigint,
    created_at         timestamptz not null default pg_catalog.clock_timestamp(),
    updated_at         timestamptz not null default pg_catalog.clock_timestamp(),
    constraint provider_provisions_pkey primary key (tenant_id, provider),
    constraint provider_provisions_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id),
    constraint provider_provisions_provider_known check (provider in ('openai', 'anthropic')),
    constraint provider_provisions_state_known check (state in ('queued', 'active', 'pending_key')),
    constraint provider_provisions_options_known check (
        pg_catalog.jsonb_typeof(options) = 'object' and options - 'storage' = '{}'::jsonb
        and (not options ? 'storage' or (provider = 'openai' and options -> 'storage' in ('"file"'::jsonb, '"vault"'::jsonb)))),
    constraint provider_provisions_reference_only check (bulkhead._is_secret_reference(secret_ref)),
    constraint provider_provisions_generation_positive check (generation >= 1)
);
comment on table bulkhead.provider_provisions is
    'A tenant''s provisioned OpenAI project or Anthropic workspace: ids and references only, never a key.';

-- Which tenant each provider project, workspace and service account was recorded for: one
-- tenant's, for good (a deleted tenant's stay its own). provisioning_step refuses to record
-- another tenant's, so that no worker can attach one tenant's project or key to another.
create table bulkhead.provider_resources (
    provider    text        not null,
    resource_id text        not null,
    tenant_ref  uuid        not null,
    recorded_at timestamptz not null default pg_catalog.clock_timestamp(),
    constraint provider_resources_pkey primary key (provider, resource_id)
);
comment on column bulkhead.provider_resources.resource_id is
    'bulkhead:kept A provider''s project, workspace or account id (no tenant data), kept with its owner.';
comment on column bulkhead.provider_resources.tenant_ref is
    'bulkhead:kept Whose a provider id is, kept after a deletion so that no other tenant can take it; ids only.';
alter table bulkhead.provider_resources enable row level security;
alter table bulkhead.provider_resources force row level security;
create policy meter_records on bulkhead.provider_resources for all to bulkhead_meter using (true) with check (true);
create policy admin_reads on bulkhead.provider_resources for select to bulkhead_admin using (true);
grant select, insert, update on bulkhead.provider_resources to bulkhead_meter;
grant select on bulkhead.provider_resources to bulkhead_admin;
select pg_catalog.pg_extension_config_dump('bulkhead.provider_resources', '');

-- Projects named by credentials are registered too, whoever wrote them (set_credential, the
-- control plane's own writes, the shared pool's as the platform's, under the nil uuid): the
-- worker can record none of them for a tenant, and no lookup by name may archive them.
create function bulkhead._register_credential_project()
returns trigger
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
begin
    if new.provider_project_id is not null and not bulkhead._restoring() then
        -- The platform's (the shared pool's) wins over a tenant's claim on the same id.
        if tg_table_name = 'shared_credentials' then
            insert into bulkhead.provider_resources as r (provider, resource_id, tenant_ref)
            values (new.provider, new.provider_project_id, '00000000-0000-0000-0000-000000000000'::uuid)
            on conflict on constraint provider_resources_pkey do update set tenant_ref = excluded.tenant_ref;
        else
            insert into bulkhead.provider_resources (provider, resource_id, tenant_ref)
            values (new.provider, new.provider_project_id, (pg_catalog.to_jsonb(new) ->> 'tenant_id')::uuid)
            on conflict do nothing;
        end if;
    end if;
    return null;
end
$$;
create trigger tenant_credentials_register_project after insert or update of provider_project_id
    on bulkhead.tenant_credentials for each row execute function bulkhead._register_credential_project();
create trigger shared_credentials_register_project after insert or update of provider_project_id
    on bulkhead.shared_credentials for each row execute function bulkhead._register_credential_project();

-- Whether a provider id found by name may be archived or deleted for a deleted tenant: recorded
-- for nobody (what a job made after the rows were gone), or for that tenant, which is gone.
-- bulkhead_worker (as bulkhead_meter, which reads the registry).
create function bulkhead.provider_resource_free(provider text, resource_id text, tenant uuid)
returns boolean
language sql stable
security definer
set search_path to pg_catalog, pg_temp
as $$
    select not exists (
        select from bulkhead.provider_resources r
        where r.provider = provider_resource_free.provider and r.resource_id = provider_resource_free.resource_id
          and (r.tenant_ref is distinct from provider_resource_free.tenant
               or exists (select from bulkhead.tenants t where t.id = provider_resource_free.tenant)))
$$;

-- Each step of a provisioning, as the daemon last reported it (provisioning_status reads it).
create table bulkhead.provisioning_steps (
    tenant_id  uuid        not null,
    provider   text        not null,
    step       text        not null,
    state      text        not null,
    detail     text,
    updated_at timestamptz not null default pg_catalog.clock_timestamp(),
    constraint provisioning_steps_pkey primary key (tenant_id, provider, step),
    constraint provisioning_steps_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id),
    constraint provisioning_steps_provision_fkey foreign key (tenant_id, provider)
        references bulkhead.provider_provisions (tenant_id, provider) on delete cascade,
    constraint provisioning_steps_state_known check (state in ('done', 'failed', 'unsupported', 'pending')),
    constraint provisioning_steps_detail_length check (pg_catalog.char_length(detail) <= 2000),
    constraint provisioning_steps_step_length check (pg_catalog.char_length(step) between 1 and 100)
);

alter table bulkhead.provider_provisions enable row level security;
alter table bulkhead.provider_provisions force row level security;
alter table bulkhead.provisioning_steps enable row level security;
alter table bulkhead.provisioning_steps force row level security;
create policy tenant_isolation on bulkhead.provider_provisions
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));
create policy tenant_isolation on bulkhead.provisioning_steps
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));
-- Writes go through the functions below (as bulkhead_meter); admins read and delete (deletion).
grant select, delete on bulkhead.provider_provisions, bulkhead.provisioning_steps to bulkhead_admin;
grant select, insert, update on bulkhead.provider_provisions, bulkhead.provisioning_steps to bulkhead_meter;
grant delete on bulkhead.provisioning_steps to bulkhead_meter;
-- The provisioned credential is written by provisioned_credential (as bulkhead_meter), and with
-- it the project it names (tenant_credentials_record_project).
grant insert, update on bulkhead.tenant_credentials to bulkhead_meter;
grant select, insert on bulkhead.tenant_provider_projects to bulkhead_meter;
select pg_catalog.pg_extension_config_dump('bulkhead.provider_provisions', '');
select pg_catalog.pg_extension_config_dump('bulkhead.provisioning_steps', '');

-- The backstop for a tenant: its Bulkhead limits raised by bulkhead.provider_limit_margin, never
-- below them. OpenAI counts input and output tokens in one per-minute limit (Anthropic apart); a
-- spend limit is monthly, so a daily or weekly budget is scaled to the longest month it can make.
-- A limit of 0 (Bulkhead blocks that dimension) becomes 1: providers take positive limits only,
-- and Bulkhead's own 0 still refuses every call.
create function bulkhead._provider_limits(tenant uuid)
returns jsonb
language plpgsql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    margin numeric := coalesce(nullif(pg_catalog.current_setting('bulkhead.provider_limit_margin', true), ''), '0.1')::numeric;
    limits record;
begin
    select b.rpm, b.itpm, b.otpm, b.dollar_limit, b.period into limits
    from bulkhead.budgets b where b.tenant_id = tenant;
    if not found then
        select d.rpm, d.itpm, d.otpm, d.dollar_limit, d.period into limits from bulkhead.budget_defaults d;
    end if;
    return pg_catalog.jsonb_build_object(
        'margin', margin,
        'rpm', greatest(1, pg_catalog.ceil(limits.rpm * (1 + margin))::bigint),
        'tpm', greatest(1, pg_catalog.ceil((limits.itpm::bigint + limits.otpm) * (1 + margin))::bigint),
        'itpm', greatest(1, pg_catalog.ceil(limits.itpm * (1 + margin))::bigint),
        'otpm', greatest(1, pg_catalog.ceil(limits.otpm * (1 + margin))::bigint),
        'monthly_spend_usd', greatest(0.01, pg_catalog.ceil(limits.dollar_limit
            * case limits.period when 'day' then 31 when 'week' then 5 else 1 end * (1 + margin) * 100) / 100),
        'from', pg_catalog.jsonb_build_object('rpm', limits.rpm, 'itpm', limits.itpm, 'otpm', limits.otpm,
                                              'dollar_limit', limits.dollar_limit, 'period', limits.period));
end
$$;

-- Queues a provisioning job for the current tenant (the caller entered it). SECURITY DEFINER
-- as bulkhead_meter: only it may queue jobs of these kinds.
create function bulkhead._queue_provisioning(tenant uuid, kind text, provider text)
returns bigint
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    job bigint;
begin
    if tenant is null or tenant is distinct from bulkhead.current_tenant() then
        raise exception 'provisioning is queued in the tenant''s own context' using errcode = '42501';
    end if;
    -- Callable by bulkhead_admin: never a kind that spends (those are admitted first).
    if kind is null or kind not in ('provision', 'provider_limits') or provider not in ('openai', 'anthropic') then
        raise exception 'not a provisioning job' using errcode = '42501';
    end if;
    if not exists (select from bulkhead.provider_provisions p
                   where p.tenant_id = tenant and p.provider = _queue_provisioning.provider) then
        raise exception 'the tenant has no % provision', provider using errcode = '42704';
    end if;
    job := bulkhead._enqueue(kind, pg_catalog.jsonb_build_object('provider', provider), null, null, 25);
    -- job_id names the provisioning itself; a limits update is one of its steps.
    update bulkhead.provider_provisions p
    set job_id = case when kind = 'provision' then job else p.job_id end,
        desired_limits = bulkhead._provider_limits(tenant), updated_at = pg_catalog.clock_timestamp()
    where p.tenant_id = tenant and p.provider = _queue_provisioning.provider;
    return job;
end
$$;

-- provision_provider's writes, in the tenant's context, as bulkhead_meter (provisions are its to
-- write): the provision row (created with its deterministic name) and the job.
create function bulkhead._provision(tenant uuid, provider text, options jsonb)
returns bigint
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    existing bulkhead.provider_provisions;
    in_flight bigint;
    slug text := (select t.slug from bulkhead.tenants t where t.id = tenant);
begin
    if tenant is null or tenant is distinct from bulkhead.current_tenant() then
        raise exception 'provisioning is queued in the tenant''s own context' using errcode = '42501';
    end if;
    select * into existing from bulkhead.provider_provisions p
    where p.tenant_id = tenant and p.provider = _provision.provider
    for update;
    if found then
        -- One provisioning at a time: the one on its way is the answer.
        select j.id into in_flight from bulkhead.jobs j join bulkhead.job_schedule q on q.job_id = j.id
        where j.tenant_id = tenant and j.kind = 'provision' and j.payload ->> 'provider' = _provision.provider
          and q.state in ('queued', 'running')
        limit 1;
        if in_flight is not null then
            return in_flight;
        end if;
    end if;
    if existing.tenant_id is null then
        -- The tenant's whole id in the name: a slug may be reused after a deletion, a project
        -- must not, and a lookup by name must find no other tenant's. At most 62 characters.
        insert into bulkhead.provider_provisions (tenant_id, provider, options, project_name)
        values (tenant, provider, options,
                'bulkhead-' || pg_catalog.rtrim(pg_catalog.left(slug, 20), '-') || '-'
                || pg_catalog.replace(tenant::text, '-', ''));
    else
        update bulkhead.provider_provisions p
        set options = _provision.options, state = case when p.state = 'active' then 'active' else 'queued' end,
            updated_at = pg_catalog.clock_timestamp()
        where p.tenant_id = tenant and p.provider = _provision.provider;
    end if;
    return bulkhead._queue_provisioning(tenant, 'provision', provider);
end
$$;

-- Provisions a tenant at a provider (bulkhead_admin): queues the job the daemon carries out and
-- returns its id. Again for a tenant already provisioned: a job still queued or running is
-- returned as it is; otherwise a new job checks every step again (each one finds what exists).
-- options: {"storage": "file" | "vault"} (OpenAI: where the daemon keeps the key; default file,
-- in the worker's BULKHEAD_SECRETS_DIR).
create function bulkhead.provision_provider(tenant_id uuid, provider text, options jsonb default '{}')
returns bigint
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := provision_provider.tenant_id;
    previous text;
    slug text;
    job bigint;
    unknown text;
begin
    if tenant is null or provider is null or options is null then
        raise exception 'tenant_id, provider and options are required' using errcode = '22004';
    end if;
    if provider not in ('openai', 'anthropic') then
        raise exception 'provider % cannot be provisioned', pg_catalog.quote_literal(provider)
            using errcode = '22023',
                  detail = 'openai (a project with a service account key) and anthropic (a workspace) have admin APIs; openai_compatible servers have none.';
    end if;
    if pg_catalog.jsonb_typeof(options) <> 'object' then
        raise exception 'options must be a JSON object' using errcode = '22023';
    end if;
    select k into unknown from pg_catalog.jsonb_object_keys(options) k where k <> 'storage' limit 1;
    if unknown is not null then
        raise exception 'unknown provisioning option %', pg_catalog.quote_literal(unknown)
            using errcode = '22023', detail = 'Known options: storage ("file" or "vault").';
    end if;
    if options ? 'storage' and (options -> 'storage') not in ('"file"', '"vault"') then
        raise exception 'storage must be "file" or "vault"'
            using errcode = '22023',
                  detail = 'file: a file of mode 0600 in the worker''s BULKHEAD_SECRETS_DIR; vault: Supabase Vault (vault.create_secret).';
    end if;
    if provider = 'anthropic' and options ? 'storage' then
        raise exception 'an Anthropic workspace gets no key from Bulkhead, so nothing is stored'
            using errcode = '22023',
                  detail = 'Anthropic API keys cannot be created by API: create one in the Console and attach it with bulkhead.set_credential.';
    end if;
    select t.slug into slug from bulkhead.tenants t where t.id = tenant;
    if not found then
        raise exception 'tenant % does not exist', tenant using errcode = '42704';
    end if;

    previous := bulkhead._enter_tenant(tenant);
    job := bulkhead._provision(tenant, provider, options);
    perform bulkhead._leave_tenant(previous);
    return job;
end
$$;
comment on function bulkhead.provision_provider(uuid, text, jsonb) is
    'Queues the provisioning of a tenant''s OpenAI project and key or Anthropic workspace; returns the job id. bulkhead_admin only.';

-- Each step of a tenant's provisioning and how it went (bulkhead_admin), with the job's own
-- state as the step 'job': a permanent failure shows there with the provider's error (keys
-- redacted by the daemon before it wrote it).
create function bulkhead.provisioning_status(tenant_id uuid)
returns table (provider text, step text, state text, detail text, updated_at timestamptz)
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    previous text;
begin
    if provisioning_status.tenant_id is null then
        raise exception 'tenant_id is required' using errcode = '22004';
    end if;
    if not exists (select from bulkhead.tenants t where t.id = provisioning_status.tenant_id) then
        raise exception 'tenant % does not exist', provisioning_status.tenant_id using errcode = '42704';
    end if;
    previous := bulkhead._enter_tenant(provisioning_status.tenant_id);
    return query
        select s.provider, s.step, s.state, s.detail, s.updated_at
        from bulkhead.provisioning_steps s
        where s.tenant_id = provisioning_status.tenant_id
        union all
        select p.provider, 'job', coalesce(j.state, 'none'),
               pg_catalog.concat_ws(': ', 'job ' || p.job_id || ', ' || coalesce(j.attempts, 0) || ' attempt(s), provision ' || p.state,
                                    jobs.last_error),
               coalesce(j.updated_at, p.updated_at)
        from bulkhead.provider_provisions p
        left join bulkhead.job_schedule j on j.job_id = p.job_id
        left join bulkhead.jobs jobs on jobs.tenant_id = p.tenant_id and jobs.id = p.job_id
        where p.tenant_id = provisioning_status.tenant_id
        order by 1, 5, 2;
    perform bulkhead._leave_tenant(previous);
end
$$;
comment on function bulkhead.provisioning_status(uuid) is
    'A tenant''s provisioning steps (provider, step, state, detail, updated_at), and its latest job. bulkhead_admin only.';

-- What the daemon needs for a provisioning job it holds: the provision's recorded facts, the
-- name to look up, the limits to set. Read in the job's tenant context. bulkhead_worker.
create function bulkhead.provisioning_job(job bigint, worker text)
returns jsonb
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    s bulkhead.job_schedule := bulkhead._held_job(job, worker);
    j bulkhead.jobs;
    p bulkhead.provider_provisions;
begin
    select * into j from bulkhead.jobs x where x.tenant_id = s.job_tenant and x.id = job;
    if j.kind not in ('provision', 'provider_limits') then
        raise exception 'job % is not a provisioning job', job using errcode = '22023';
    end if;
    select * into p from bulkhead.provider_provisions x
    where x.tenant_id = s.job_tenant and x.provider = j.payload ->> 'provider';
    if not found then
        raise exception 'the tenant has no % provision (deleted meanwhile?)', j.payload ->> 'provider'
            using errcode = '42704';
    end if;
    -- One job at a time per provision: two would set limits out of order, or make two accounts.
    -- A limits job waits for a provisioning; of two jobs of one kind the later id waits: never
    -- both.
    if exists (select from bulkhead.jobs o join bulkhead.job_schedule q on q.job_id = o.id
               where o.tenant_id = s.job_tenant and o.id <> job and o.kind in ('provision', 'provider_limits')
                 and o.payload ->> 'provider' = p.provider
                 and q.state = 'running' and q.leased_until > pg_catalog.clock_timestamp()
                 and ((o.kind = 'provision' and j.kind = 'provider_limits') or (o.kind = j.kind and o.id < job))) then
        raise exception 'another provisioning job of this tenant and provider is running'
            using errcode = '55P03', hint = 'The job is tried again later.';
    end if;
    -- The limits as they are now: a set_budget since the job was queued counts.
    return pg_catalog.jsonb_build_object(
        'kind', j.kind, 'tenant', s.job_tenant, 'provider', p.provider, 'state', p.state,
        'options', p.options, 'project_name', p.project_name, 'project_id', p.project_id,
        'service_account_id', p.service_account_id, 'key_id', p.key_id, 'secret_ref', p.secret_ref,
        'generation', p.generation, 'limits', bulkhead._provider_limits(s.job_tenant),
        'applied_limits', p.applied_limits);
end
$$;

-- Records one step of a provisioning job the worker holds, and the facts it learned (only the
-- columns named here: ids and a reference, never a key). bulkhead_worker.
create function bulkhead.provisioning_step(job bigint, worker text, step text, state text, detail text,
                                           facts jsonb default '{}')
returns void
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    s bulkhead.job_schedule := bulkhead._held_job(job, worker);
    job_provider text;
    unknown text;
    current_facts bulkhead.provider_provisions;
begin
    select j.payload ->> 'provider' into job_provider from bulkhead.jobs j
    where j.tenant_id = s.job_tenant and j.id = job and j.kind in ('provision', 'provider_limits');
    if job_provider is null then
        raise exception 'job % is not a provisioning job', job using errcode = '22023';
    end if;
    if facts is null or pg_catalog.jsonb_typeof(facts) <> 'object' then
        raise exception 'facts must be a JSON object' using errcode = '22023';
    end if;
    select k into unknown from pg_catalog.jsonb_object_keys(facts) k
    where k not in ('project_id', 'service_account_id', 'key_id', 'secret_ref', 'applied_limits', 'state') limit 1;
    if unknown is not null then
        raise exception 'unknown provisioning fact %', pg_catalog.quote_literal(unknown) using errcode = '22023';
    end if;
    -- Only what the daemon stores: a file or a Vault secret (an env: reference would name the
    -- daemon's own environment, its admin keys among it).
    if facts ? 'secret_ref' and not (coalesce(bulkhead._is_secret_reference(facts ->> 'secret_ref'), false)
                                     and facts ->> 'secret_ref' ~ '^(file|vault):') then
        raise exception 'secret_ref must be a file: or vault: reference'
            using errcode = '22023', detail = 'The value given was not stored and is not repeated here.';
    end if;
    -- Ids go into the daemon's admin API paths: plain characters only.
    if exists (select from pg_catalog.jsonb_each(facts) f
               where f.key in ('project_id', 'service_account_id', 'key_id')
                 and f.value <> 'null'::jsonb
                 and (pg_catalog.jsonb_typeof(f.value) <> 'string' or (f.value #>> '{}') !~ '^[A-Za-z0-9_-]{1,200}$')) then
        raise exception 'provider ids are 1 to 200 letters, digits, _ or -'
            using errcode = '22023';
    end if;
    if facts ? 'state' and (facts ->> 'state') not in ('queued', 'active', 'pending_key') then
        raise exception 'unknown provision state' using errcode = '22023';
    end if;
    -- Facts are learned once: a recorded id or reference is never replaced (a rotation clears
    -- the account's before its job runs), and a key file is named for this tenant and account.
    select * into current_facts from bulkhead.provider_provisions p
    where p.tenant_id = s.job_tenant and p.provider = job_provider for update;
    if (facts ? 'project_id' and current_facts.project_id is not null and current_facts.project_id is distinct from facts ->> 'project_id')
       or (facts ? 'service_account_id' and current_facts.service_account_id is not null
           and current_facts.service_account_id is distinct from facts ->> 'service_account_id')
       or (facts ? 'secret_ref' and current_facts.secret_ref is not null and current_facts.secret_ref is distinct from facts ->> 'secret_ref') then
        raise exception 'a recorded provisioning fact is never replaced' using errcode = '55000';
    end if;
    insert into bulkhead.provider_resources (provider, resource_id, tenant_ref)
    select job_provider, f.value #>> '{}', s.job_tenant
    from pg_catalog.jsonb_each(facts) f
    where f.key in ('project_id', 'service_account_id') and f.value <> 'null'::jsonb
    on conflict do nothing;
    if exists (select from bulkhead.provider_resources r
               join pg_catalog.jsonb_each(facts) f on f.key in ('project_id', 'service_account_id')
               where r.provider = job_provider and r.resource_id = f.value #>> '{}' and r.tenant_ref <> s.job_tenant) then
        raise exception 'that provider id was recorded for another tenant' using errcode = '55000';
    end if;
    if facts ->> 'secret_ref' like 'file:%' and facts ->> 'secret_ref' not like
           '%/bulkhead-' || s.job_tenant || '-openai-' || coalesce(facts ->> 'service_account_id', current_facts.service_account_id, '?') || '.key' then
        raise exception 'a key file is named for its tenant and account' using errcode = '22023';
    end if;
    update bulkhead.provider_provisions p
    set project_id = case when facts ? 'project_id' then facts ->> 'project_id' else p.project_id end,
        service_account_id = case when facts ? 'service_account_id' then facts ->> 'service_account_id' else p.service_account_id end,
        key_id = case when facts ? 'key_id' then facts ->> 'key_id' else p.key_id end,
        secret_ref = case when facts ? 'secret_ref' then facts ->> 'secret_ref' else p.secret_ref end,
        applied_limits = case when facts ? 'applied_limits' then facts -> 'applied_limits' else p.applied_limits end,
        state = coalesce(facts ->> 'state', p.state),
        updated_at = pg_catalog.clock_timestamp()
    where p.tenant_id = s.job_tenant and p.provider = job_provider;
    if step is not null then
        insert into bulkhead.provisioning_steps as x (tenant_id, provider, step, state, detail)
        values (s.job_tenant, job_provider, step, state, pg_catalog.left(detail, 2000))
        on conflict on constraint provisioning_steps_pkey do update
        set state = excluded.state, detail = excluded.detail, updated_at = pg_catalog.clock_timestamp();
    end if;
end
$$;

-- The provisioned credential becomes the tenant's (kind dedicated, its project or workspace):
-- with a key reference for OpenAI; for Anthropic the workspace id only, pending_key until an
-- admin attaches a key with set_credential. Written in the job's tenant context. bulkhead_worker.
create function bulkhead.provisioned_credential(job bigint, worker text)
returns void
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    s bulkhead.job_schedule := bulkhead._held_job(job, worker);
    p bulkhead.provider_provisions;
begin
    select x.* into p from bulkhead.provider_provisions x
    join bulkhead.jobs j on j.tenant_id = x.tenant_id and j.id = job and j.payload ->> 'provider' = x.provider
    where x.tenant_id = s.job_tenant and j.kind = 'provision';
    if not found or p.project_id is null then
        raise exception 'job % has no provisioned project to make a credential of', job using errcode = '55000';
    end if;
    if p.provider = 'openai' then
        if p.secret_ref is null then
            raise exception 'the project''s key is not stored yet' using errcode = '55000';
        end if;
        -- A rotation switches only a credential that is still its old key (or already the new
        -- one): a credential an admin set by hand meanwhile stays, and the old key, no longer
        -- anyone's credential, is revoked after its calls as it would have been.
        if exists (select from bulkhead.provider_revocations r
                   where r.tenant_ref = p.tenant_id and r.provider = 'openai' and r.reason = 'rotation'
                     and r.switched_at is null)
           and not exists (select from bulkhead.tenant_credentials c
                           where c.tenant_id = p.tenant_id and c.provider = 'openai'
                             and (c.secret_ref = p.secret_ref
                                  or c.secret_ref in (select r.secret_ref from bulkhead.provider_revocations r
                                                      where r.tenant_ref = p.tenant_id and r.provider = 'openai'
                                                        and r.reason = 'rotation' and r.switched_at is null))) then
            update bulkhead.provider_revocations r
            set switched_at = pg_catalog.clock_timestamp(), not_before = pg_catalog.clock_timestamp() + interval '30 seconds'
            where r.tenant_ref = p.tenant_id and r.provider = 'openai' and r.reason = 'rotation' and r.switched_at is null;
            return;
        end if;
        insert into bulkhead.tenant_credentials as c (tenant_id, provider, secret_ref, kind, provider_project_id, status)
        values (p.tenant_id, 'openai', p.secret_ref, 'dedicated', p.project_id, 'active')
        on conflict on constraint tenant_credentials_provider_key do update
        set secret_ref = excluded.secret_ref, kind = 'dedicated', provider_project_id = excluded.provider_project_id,
            status = 'active', created_at = pg_catalog.now()
        where (c.secret_ref, c.provider_project_id, c.status) is distinct from (excluded.secret_ref, excluded.provider_project_id, 'active');
        update bulkhead.provider_provisions x set state = 'active', updated_at = pg_catalog.clock_timestamp()
        where x.tenant_id = p.tenant_id and x.provider = p.provider;
        -- The old key of a rotation is switched out now: its revocation waits for the calls
        -- admitted before this moment, and for a grace in which caches see the new reference.
        update bulkhead.provider_revocations r
        set switched_at = pg_catalog.clock_timestamp(), not_before = pg_catalog.clock_timestamp() + interval '30 seconds'
        where r.tenant_ref = p.tenant_id and r.provider = 'openai' and r.reason = 'rotation'
          and r.switched_at is null and r.secret_ref is distinct from p.secret_ref;
    else
        -- A key attached already (set_credential on the workspace) stays.
        insert into bulkhead.tenant_credentials as c (tenant_id, provider, secret_ref, kind, provider_project_id, status)
        values (p.tenant_id, 'anthropic', null, 'dedicated', p.project_id, 'pending_key')
        on conflict on constraint tenant_credentials_provider_key do update
        set provider_project_id = excluded.provider_project_id, kind = 'dedicated',
            secret_ref = case when c.provider_project_id is distinct from excluded.provider_project_id then null else c.secret_ref end,
            status = case when c.provider_project_id is distinct from excluded.provider_project_id then 'pending_key' else c.status end
        where c.provider_project_id is distinct from excluded.provider_project_id;
        update bulkhead.provider_provisions x
        set state = (select case c.status when 'active' then 'active' else 'pending_key' end
                     from bulkhead.tenant_credentials c where c.tenant_id = p.tenant_id and c.provider = 'anthropic'),
            updated_at = pg_catalog.clock_timestamp()
        where x.tenant_id = p.tenant_id and x.provider = p.provider;
    end if;
end
$$;

-- set_credential attached a key: a provision waiting for one (pending_key) is active, and its
-- step 'key' says who attached it. SECURITY DEFINER as bulkhead_meter (set_credential runs as
-- the admin, who does not write provisions).
create function bulkhead._provisioned_key_attached(tenant uuid, provider text)
returns void
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
begin
    if tenant is null or tenant is distinct from bulkhead.current_tenant() then
        raise exception 'a key is attached in the tenant''s own context' using errcode = '42501';
    end if;
    update bulkhead.provider_provisions p set state = 'active', updated_at = pg_catalog.clock_timestamp()
    where p.tenant_id = tenant and p.provider = _provisioned_key_attached.provider and p.state = 'pending_key'
      and exists (select from bulkhead.tenant_credentials c
                  where c.tenant_id = tenant and c.provider = _provisioned_key_attached.provider and c.status = 'active');
    if found then
        insert into bulkhead.provisioning_steps as x (tenant_id, provider, step, state, detail)
        values (tenant, provider, 'key', 'done', 'attached by ' || session_user || ' (bulkhead.set_credential)')
        on conflict on constraint provisioning_steps_pkey do update
        set state = excluded.state, detail = excluded.detail, updated_at = pg_catalog.clock_timestamp();
    end if;
end
$$;

-- Limits follow the tenant: a budget change of a provisioned tenant queues an update of its
-- project's or workspace's rate limits and spend limit from the new budget.
create function bulkhead._provider_limits_follow_budget()
returns trigger
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
begin
    if bulkhead._restoring() then
        return null;
    end if;
    perform bulkhead._limits_follow(new.tenant_id);
    return null;
end
$$;
create trigger budgets_provider_limits after insert or update on bulkhead.budgets
    for each row execute function bulkhead._provider_limits_follow_budget();

-- Queues a limits update for each provision of the tenant (in its context), unless one is queued
-- already (a job reads the limits when it runs: one is enough). A provisioning still on its way
-- sets them itself; a limits job waits for it (provisioning_job).
create function bulkhead._limits_follow(tenant uuid)
returns void
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    p record;
begin
    for p in select x.provider from bulkhead.provider_provisions x where x.tenant_id = tenant loop
        if exists (select from bulkhead.jobs j join bulkhead.job_schedule q on q.job_id = j.id
                   where j.tenant_id = tenant and j.kind = 'provider_limits'
                     and j.payload ->> 'provider' = p.provider and q.state = 'queued') then
            update bulkhead.provider_provisions x set desired_limits = bulkhead._provider_limits(tenant)
            where x.tenant_id = tenant and x.provider = p.provider;
        else
            perform bulkhead._queue_provisioning(tenant, 'provider_limits', p.provider);
        end if;
    end loop;
end
$$;

-- The platform default budget changed: provisioned tenants without a budget of their own follow.
create function bulkhead._provider_limits_follow_defaults()
returns trigger
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid;
    previous text := pg_catalog.current_setting('bulkhead.tenant_id', true);
begin
    if bulkhead._restoring() then
        return null;
    end if;
    for tenant in select t.id from bulkhead.tenants t loop
        perform bulkhead._set_tenant_within_function(tenant);
        if not exists (select from bulkhead.budgets b where b.tenant_id = tenant) then
            perform bulkhead._limits_follow(tenant);
        end if;
    end loop;
    perform bulkhead._set_tenant_within_function(nullif(previous, '')::uuid);
    return null;
end
$$;
create trigger budget_defaults_provider_limits after update on bulkhead.budget_defaults
    for each row
    when ((old.rpm, old.itpm, old.otpm, old.dollar_limit, old.period) is distinct from
          (new.rpm, new.itpm, new.otpm, new.dollar_limit, new.period))
    execute function bulkhead._provider_limits_follow_defaults();

-- What the daemon must undo at a provider: after a tenant's deletion, its project's key revoked,
-- the project or workspace archived and the key the daemon stored deleted; after a rotation, the
-- old key revoked and deleted once no call admitted before the switch is still open. Rows
-- outlive the tenant (ids and references only, no tenant data); the receipt lists each step
-- once it is done (deletion_receipt_pending shows what is not).
create table bulkhead.provider_revocations (
    id                  bigint      generated always as identity,
    receipt_id          uuid,
    tenant_ref          uuid        not null,
    provider            text        not null,
    reason              text        not null,
    project_id          text,
    service_account_id  text,
    secret_ref          text,
    -- A rotation's old key is in use until the new one is switched in (provisioned_credential).
    switched_at         timestamptz,
    not_before          timestamptz,
    key_revoked_at      timestamptz,
    archived_at         timestamptz,
    secret_deleted_at   timestamptz,
    -- A provisioning was in flight at the deletion: its job may still create a project, an
    -- account or a key file after the rows are gone. Once every job's time is up, the daemon
    -- looks them up by name (project_name, and the key names of the tenant) and revokes them.
    project_name        text,
    recheck_at          timestamptz,
    rechecked_at        timestamptz,
    last_error          text,
    enqueued_at         timestamptz not null default pg_catalog.clock_timestamp(),
    processed_at        timestamptz,
    constraint provider_revocations_pkey primary key (id),
    constraint provider_revocations_reason_known check (reason in ('deletion', 'rotation')),
    constraint provider_revocations_provider_known check (provider in ('openai', 'anthropic')),
    constraint provider_revocations_reference_only check (bulkhead._is_secret_reference(secret_ref))
);
comment on column bulkhead.provider_revocations.tenant_ref is
    'bulkhead:kept The revocation outlives a deleted tenant (its receipt names it); ids only.';
comment on column bulkhead.provider_revocations.project_id is
    'bulkhead:kept The provider project or workspace to archive, named on no receipt.';
comment on column bulkhead.provider_revocations.project_name is
    'bulkhead:kept The name a provisioning in flight at the deletion may still give a project: looked up once more.';
create index provider_revocations_pending on bulkhead.provider_revocations (enqueued_at) where processed_at is null;
alter table bulkhead.provider_revocations enable row level security;
alter table bulkhead.provider_revocations force row level security;
create policy daemon_reads on bulkhead.provider_revocations for select to bulkhead_worker, bulkhead_admin using (true);
create policy meter_writes on bulkhead.provider_revocations for all to bulkhead_meter using (true) with check (true);
grant select on bulkhead.provider_revocations to bulkhead_worker, bulkhead_admin;
grant select, insert, update on bulkhead.provider_revocations to bulkhead_meter;
select pg_catalog.pg_extension_config_dump('bulkhead.provider_revocations', '');
select pg_catalog.pg_extension_config_dump(
    pg_catalog.pg_get_serial_sequence('bulkhead.provider_revocations', 'id')::regclass, '');

-- provider_revocation_done (as bulkhead_meter) adds the providers' steps to a deletion receipt,
-- only these steps and only to a receipt with revocations.
grant insert on bulkhead.deletion_receipt_steps to bulkhead_meter;
create policy meter_records_revocations on bulkhead.deletion_receipt_steps
    for insert to bulkhead_meter
    with check (step in ('provider key revoked', 'provider project archived', 'secret deleted',
                         'provider lookup after a provisioning in flight')
                and exists (select from bulkhead.provider_revocations r where r.receipt_id = deletion_receipt_steps.receipt_id));

-- delete_tenant queues the revocation of each provision of the tenant (in its context).
create function bulkhead._queue_provider_revocations(tenant uuid, receipt uuid)
returns int
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    n int;
begin
    if tenant is null or tenant is distinct from bulkhead.current_tenant() then
        raise exception 'revocations are queued in the tenant''s own context' using errcode = '42501';
    end if;
    -- A provisioning job still running (claimed, between two of its steps) may create what these
    -- rows do not name yet: looked up by name again once its lease and its calls are surely over.
    insert into bulkhead.provider_revocations (receipt_id, tenant_ref, provider, reason, project_id,
                                               service_account_id, secret_ref, switched_at, not_before,
                                               project_name, recheck_at)
    select receipt, tenant, p.provider, 'deletion', p.project_id, p.service_account_id, p.secret_ref,
           pg_catalog.clock_timestamp(), pg_catalog.clock_timestamp(), p.project_name,
           -- Unless it is complete and nothing of it is on its way, something unrecorded may
           -- exist (a create that timed out, a job between two steps).
           case when p.state = 'queued'
                  or exists (select from bulkhead.job_schedule s join bulkhead.jobs j on j.id = s.job_id
                             where s.job_tenant = tenant and j.tenant_id = tenant
                               and (s.state in ('queued', 'running') or (j.kind = 'provision' and s.attempts > 1))
                               and j.kind in ('provision', 'provider_limits') and j.payload ->> 'provider' = p.provider)
                  or exists (select from bulkhead.provider_revocations r
                             where r.tenant_ref = tenant and r.provider = p.provider and r.reason = 'rotation'
                               and r.switched_at is null)
                then pg_catalog.clock_timestamp() + interval '15 minutes' end
    from bulkhead.provider_provisions p
    where p.tenant_id = tenant;
    get diagnostics n = row_count;
    -- A rotation still waiting drops its old key with the rest.
    update bulkhead.provider_revocations r
    set receipt_id = receipt, reason = 'deletion', switched_at = coalesce(r.switched_at, pg_catalog.clock_timestamp()),
        not_before = pg_catalog.clock_timestamp()
    where r.tenant_ref = tenant and r.processed_at is null and r.reason = 'rotation';
    return n;
end
$$;

-- The external steps of deletion receipts not done yet: the Pinecone namespace and each provider
-- revocation's parts. Empty for a receipt whose every step is done. bulkhead_admin.
create view bulkhead.deletion_receipt_pending with (security_invoker = true) as
    select d.receipt_id, 'pinecone namespace deleted'::text as step, d.enqueued_at as since
    from bulkhead.pinecone_namespace_deletions d
    where d.processed_at is null and d.receipt_id is not null
    union all
    select r.receipt_id, s.step, r.enqueued_at
    from bulkhead.provider_revocations r
    cross join lateral (values
        ('provider key revoked', r.key_revoked_at is null),
        ('provider project archived', r.archived_at is null and r.project_id is not null),
        ('secret deleted', r.secret_deleted_at is null and r.secret_ref is not null),
        ('provider lookup after a provisioning in flight', r.recheck_at is not null and r.rechecked_at is null)) s(step, pending)
    where r.receipt_id is not null and r.reason = 'deletion' and s.pending;
grant select on bulkhead.deletion_receipt_pending to bulkhead_admin;

-- Revocations the daemon may carry out now (bulkhead_worker): a deletion's at once; a
-- rotation's once its new key is switched in, its grace has passed, and no call admitted before
-- the switch is still open (a reservation in the table, or a gateway call held in memory).
create function bulkhead.provider_revocations_due(max_rows int default 50)
returns table (id bigint, provider text, reason text, project_id text, service_account_id text,
               secret_ref text, key_revoked boolean, project_archived boolean, secret_deleted boolean,
               tenant_ref uuid, project_name text, recheck boolean)
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    r bulkhead.provider_revocations;
    busy boolean;
    returned int := 0;
begin
    for r in select * from bulkhead.provider_revocations x
             where x.processed_at is null and x.switched_at is not null
               and x.not_before <= pg_catalog.clock_timestamp()
               -- Rows whose only part left is a lookup not due yet wait without taking a place.
               and (x.key_revoked_at is null or x.secret_deleted_at is null and x.secret_ref is not null
                    or x.archived_at is null and x.project_id is not null and x.reason = 'deletion'
                    or x.recheck_at <= pg_catalog.clock_timestamp())
             order by x.enqueued_at
             limit greatest(least(coalesce(max_rows, 50), 1000), 1) * 4 loop
        busy := false;
        if r.reason = 'rotation' then
            perform bulkhead._set_tenant_within_function(r.tenant_ref);
            busy := exists (select from bulkhead.reservations v
                            where v.tenant_id = r.tenant_ref and v.created_at < r.switched_at
                              and v.settled_at is null and v.expired_at is null
                              and v.lease_expires_at > pg_catalog.clock_timestamp())
                 or exists (select from bulkhead._tenants_with_old_gateway_holds(pg_catalog.clock_timestamp() - r.switched_at) h
                            where h.tenant_id = r.tenant_ref);
            perform bulkhead._set_tenant_within_function(null);
        end if;
        continue when busy;
        id := r.id; provider := r.provider; reason := r.reason; project_id := r.project_id;
        service_account_id := r.service_account_id; secret_ref := r.secret_ref;
        key_revoked := r.key_revoked_at is not null;
        project_archived := r.archived_at is not null or r.reason = 'rotation' or r.project_id is null;
        secret_deleted := r.secret_deleted_at is not null or r.secret_ref is null;
        tenant_ref := r.tenant_ref; project_name := r.project_name;
        recheck := r.recheck_at is not null and r.rechecked_at is null and r.recheck_at <= pg_catalog.clock_timestamp();
        -- Parts all done, the lookup not due yet: nothing to do now.
        continue when key_revoked and project_archived and secret_deleted and not recheck;
        return next;
        returned := returned + 1;
        exit when returned >= max_rows;
    end loop;
end
$$;

-- Records a part of a revocation done ('key', 'project', 'secret') or failed (error given: kept
-- for operators, the part stays pending); once every part is done the revocation is, and a
-- deletion's receipt gains the step when every revocation of the receipt has it.
create function bulkhead.provider_revocation_done(revocation bigint, part text, error text default null)
returns void
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    r bulkhead.provider_revocations;
    receipt_step text := case part when 'key' then 'provider key revoked' when 'project' then 'provider project archived'
                           when 'secret' then 'secret deleted' when 'recheck' then 'provider lookup after a provisioning in flight' end;
begin
    if receipt_step is null then
        raise exception 'unknown revocation part %', pg_catalog.quote_literal(part)
            using errcode = '22023', detail = 'Parts: key, project, secret, recheck.';
    end if;
    if error is not null then
        update bulkhead.provider_revocations x set last_error = pg_catalog.left(error, 2000)
        where x.id = revocation;
        return;
    end if;
    update bulkhead.provider_revocations x
    set key_revoked_at = case when part = 'key' then coalesce(x.key_revoked_at, pg_catalog.clock_timestamp()) else x.key_revoked_at end,
        archived_at = case when part = 'project' then coalesce(x.archived_at, pg_catalog.clock_timestamp()) else x.archived_at end,
        secret_deleted_at = case when part = 'secret' then coalesce(x.secret_deleted_at, pg_catalog.clock_timestamp()) else x.secret_deleted_at end,
        rechecked_at = case when part = 'recheck' then coalesce(x.rechecked_at, pg_catalog.clock_timestamp()) else x.rechecked_at end,
        last_error = null
    where x.id = revocation and x.processed_at is null
    returning x.* into r;
    if not found then
        return;
    end if;
    if r.key_revoked_at is not null
       and (r.archived_at is not null or r.reason = 'rotation' or r.project_id is null)
       and (r.secret_deleted_at is not null or r.secret_ref is null)
       and (r.recheck_at is null or r.rechecked_at is not null) then
        update bulkhead.provider_revocations x set processed_at = pg_catalog.clock_timestamp() where x.id = revocation;
    end if;
    if r.receipt_id is not null and r.reason = 'deletion'
       and not exists (select from bulkhead.provider_revocations x
                       where x.receipt_id = r.receipt_id
                         and case part when 'key' then x.key_revoked_at is null
                                       when 'project' then x.archived_at is null and x.project_id is not null
                                       when 'recheck' then x.recheck_at is not null and x.rechecked_at is null
                                       else x.secret_deleted_at is null and x.secret_ref is not null end) then
        insert into bulkhead.deletion_receipt_steps (receipt_id, step, rows_deleted, completed_at)
        select r.receipt_id, receipt_step, pg_catalog.count(*), pg_catalog.clock_timestamp()
        from bulkhead.provider_revocations x
        where x.receipt_id = r.receipt_id
          and case part when 'key' then true when 'project' then x.project_id is not null
                        when 'recheck' then x.recheck_at is not null else x.secret_ref is not null end
        on conflict do nothing;
    end if;
end
$$;

-- Rotates a provisioned OpenAI tenant's key (bulkhead_admin): the daemon makes a new service
-- account and key (the next generation), stores it, switches the tenant's credential to it in
-- one statement, and revokes the old key once no call admitted before the switch is open.
-- Returns the job id. Anthropic keys cannot be created by API: 0A000.
create function bulkhead.rotate_credential(tenant_id uuid, provider text)
returns bigint
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := rotate_credential.tenant_id;
    previous text;
    job bigint;
begin
    if tenant is null or provider is null then
        raise exception 'tenant_id and provider are required' using errcode = '22004';
    end if;
    if provider = 'anthropic' then
        raise exception 'Anthropic API keys cannot be created by API'
            using errcode = '0A000',
                  detail = 'Create a new key for the tenant''s workspace in the Console, attach its reference with bulkhead.set_credential, then set the old key inactive in the Console.';
    end if;
    if provider <> 'openai' then
        raise exception 'provider % has no provisioned credential to rotate', pg_catalog.quote_literal(provider)
            using errcode = '22023';
    end if;
    if not exists (select from bulkhead.tenants t where t.id = tenant) then
        raise exception 'tenant % does not exist', tenant using errcode = '42704';
    end if;
    previous := bulkhead._enter_tenant(tenant);
    job := bulkhead._queue_rotation(tenant);
    perform bulkhead._leave_tenant(previous);
    return job;
end
$$;
comment on function bulkhead.rotate_credential(uuid, text) is
    'Queues the rotation of a tenant''s provisioned OpenAI key (new service account and key, switched atomically, the old one revoked after calls in flight); returns the job id. bulkhead_admin only.';

-- rotate_credential's work in the tenant's context, as bulkhead_meter (provisions and
-- revocations are its to write).
create function bulkhead._queue_rotation(tenant uuid)
returns bigint
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    p bulkhead.provider_provisions;
    current_ref text;
begin
    if tenant is null or tenant is distinct from bulkhead.current_tenant() then
        raise exception 'a rotation is queued in the tenant''s own context' using errcode = '42501';
    end if;
    select * into p from bulkhead.provider_provisions x
    where x.tenant_id = tenant and x.provider = 'openai' for update;
    if not found or p.project_id is null then
        raise exception 'the tenant has no provisioned OpenAI project'
            using errcode = '55000', hint = 'bulkhead.provision_provider(tenant_id, ''openai'') first.';
    end if;
    if exists (select from bulkhead.jobs j join bulkhead.job_schedule q on q.job_id = j.id
               where j.tenant_id = tenant and j.kind = 'provision' and j.payload ->> 'provider' = 'openai'
                 and q.state in ('queued', 'running')) then
        raise exception 'a provisioning of this tenant''s OpenAI project is on its way'
            using errcode = '55006', hint = 'Rotate once it is done (bulkhead.provisioning_status).';
    end if;
    select c.secret_ref into current_ref from bulkhead.tenant_credentials c
    where c.tenant_id = tenant and c.provider = 'openai';
    if exists (select from bulkhead.provider_revocations r
               where r.tenant_ref = tenant and r.provider = 'openai' and r.reason = 'rotation' and r.switched_at is null) then
        -- A rotation whose new key is not switched in yet is carried on, not started again.
        null;
    elsif p.secret_ref is not null and p.secret_ref is not distinct from current_ref then
        insert into bulkhead.provider_revocations (tenant_ref, provider, reason, project_id, service_account_id, secret_ref)
        values (tenant, 'openai', 'rotation', p.project_id, p.service_account_id, p.secret_ref);
        update bulkhead.provider_provisions x
        set generation = x.generation + 1, service_account_id = null, key_id = null, secret_ref = null,
            updated_at = pg_catalog.clock_timestamp()
        where x.tenant_id = tenant and x.provider = 'openai';
    else
        raise exception 'the tenant''s OpenAI credential is not the provisioned key'
            using errcode = '55000',
                  detail = 'Its credential was set by hand (bulkhead.set_credential) or the provisioning never finished.',
                  hint = 'bulkhead.provision_provider(tenant_id, ''openai'') makes the provisioned key the tenant''s again.';
    end if;
    return bulkhead._queue_provisioning(tenant, 'provision', 'openai');
end
$$;

alter function bulkhead._queue_provisioning(uuid, text, text) owner to bulkhead_meter;
alter function bulkhead._provision(uuid, text, jsonb) owner to bulkhead_meter;
alter function bulkhead.provisioning_job(bigint, text) owner to bulkhead_meter;
alter function bulkhead.provisioning_step(bigint, text, text, text, text, jsonb) owner to bulkhead_meter;
alter function bulkhead.provisioned_credential(bigint, text) owner to bulkhead_meter;
alter function bulkhead._provider_limits_follow_budget() owner to bulkhead_meter;
alter function bulkhead._register_credential_project() owner to bulkhead_meter;
alter function bulkhead.provider_resource_free(text, text, uuid) owner to bulkhead_meter;
alter function bulkhead._limits_follow(uuid) owner to bulkhead_meter;
alter function bulkhead._provider_limits_follow_defaults() owner to bulkhead_meter;
alter function bulkhead._provisioned_key_attached(uuid, text) owner to bulkhead_meter;
alter function bulkhead._queue_provider_revocations(uuid, uuid) owner to bulkhead_meter;
alter function bulkhead.provider_revocations_due(int) owner to bulkhead_meter;
alter function bulkhead.provider_revocation_done(bigint, text, text) owner to bulkhead_meter;
alter function bulkhead._queue_rotation(uuid) owner to bulkhead_meter;
revoke all on function bulkhead._provider_limits(uuid) from public;
revoke all on function bulkhead._queue_provisioning(uuid, text, text) from public;
revoke all on function bulkhead._provision(uuid, text, jsonb) from public;
grant execute on function bulkhead._provision(uuid, text, jsonb) to bulkhead_admin;
revoke all on function bulkhead.provision_provider(uuid, text, jsonb) from public;
revoke all on function bulkhead.provisioning_status(uuid) from public;
revoke all on function bulkhead.provisioning_job(bigint, text) from public;
revoke all on function bulkhead.provisioning_step(bigint, text, text, text, text, jsonb) from public;
revoke all on function bulkhead.provisioned_credential(bigint, text) from public;
revoke all on function bulkhead._provider_limits_follow_budget() from public;
revoke all on function bulkhead._register_credential_project() from public;
revoke all on function bulkhead.provider_resource_free(text, text, uuid) from public;
grant execute on function bulkhead.provider_resource_free(text, text, uuid) to bulkhead_worker;
revoke all on function bulkhead._limits_follow(uuid) from public;
revoke all on function bulkhead._provider_limits_follow_defaults() from public;
revoke all on function bulkhead._provisioned_key_attached(uuid, text) from public;
grant execute on function bulkhead._provisioned_key_attached(uuid, text) to bulkhead_admin;
revoke all on function bulkhead._queue_provider_revocations(uuid, uuid) from public;
revoke all on function bulkhead.provider_revocations_due(int) from public;
revoke all on function bulkhead.provider_revocation_done(bigint, text, text) from public;
revoke all on function bulkhead.rotate_credential(uuid, text) from public;
revoke all on function bulkhead._queue_rotation(uuid) from public;
grant execute on function bulkhead._queue_provider_revocations(uuid, uuid), bulkhead._queue_rotation(uuid),
    bulkhead.rotate_credential(uuid, text) to bulkhead_admin;
grant execute on function bulkhead.provider_revocations_due(int), bulkhead.provider_revocation_done(bigint, text, text)
    to bulkhead_worker;
grant execute on function bulkhead._provider_limits(uuid) to bulkhead_meter, bulkhead_admin;
grant execute on function bulkhead._queue_provisioning(uuid, text, text) to bulkhead_admin;
grant execute on function bulkhead.provision_provider(uuid, text, jsonb), bulkhead.provisioning_status(uuid)
    to bulkhead_admin;
grant execute on function bulkhead.provisioning_job(bigint, text), bulkhead.provisioning_step(bigint, text, text, text, text, jsonb),
    bulkhead.provisioned_credential(bigint, text) to bulkhead_worker;

-- The projects credentials already name are registered as their triggers would have (the
-- update runs as the extension's owner, which row level security does not confine).
-- The shared pool's first: the platform's id is never a tenant's.
insert into bulkhead.provider_resources (provider, resource_id, tenant_ref)
select s.provider, s.provider_project_id, '00000000-0000-0000-0000-000000000000'::uuid
from bulkhead.shared_credentials s where s.provider_project_id is not null
on conflict do nothing;
insert into bulkhead.provider_resources (provider, resource_id, tenant_ref)
select c.provider, c.provider_project_id, c.tenant_id
from bulkhead.tenant_credentials c where c.provider_project_id is not null
union
select h.provider, h.provider_project_id, h.tenant_id from bulkhead.tenant_provider_projects h
on conflict do nothing;

-- 0.2.0: the console (sql/console.sql): roles bulkhead_support, bulkhead_finance and
-- bulkhead_reporter, the per-day usage rollup (sql/ledger.sql), which usage_report and
-- usage_by_tenant now read, and the console's sums.
do $roles$
declare
    role_name text;
begin
    foreach role_name in array array['bulkhead_app', 'bulkhead_admin', 'bulkhead_worker', 'bulkhead_meter', 'bulkhead_end_user', 'bulkhead_gateway',
                                          'bulkhead_support', 'bulkhead_finance', 'bulkhead_reporter'] loop
        if exists (
            select from pg_catalog.pg_roles
            where rolname = role_name and (rolsuper or rolbypassrls)
        ) then
            raise exception 'role % can bypass row level security', role_name
                using errcode = '42501',
                      detail = 'Bulkhead''s roles must not be SUPERUSER or BYPASSRLS, or tenant isolation would not apply to them.',
                      hint = pg_catalog.format('Run ALTER ROLE %I NOSUPERUSER NOBYPASSRLS, then create the extension again.', role_name);
        end if;
        -- The owners of the functions that run for every caller must be nobody's: a login in
        -- either would read every tenant (bulkhead.doctor() checks this later too).
        if role_name in ('bulkhead_meter', 'bulkhead_reporter') and exists (
            select from pg_catalog.pg_roles r
            where r.rolname = role_name
              and (r.rolcanlogin or exists (
                       select from pg_catalog.pg_auth_members m join pg_catalog.pg_roles x on x.oid = m.member
                       where m.roleid = r.oid and (m.inherit_option or m.set_option or m.admin_option)
                         -- the installer (PostgreSQL 16 makes a CREATEROLE creator its admin)
                         and x.rolname <> current_user and not x.rolsuper))
        ) then
            raise exception 'role % can log in or has members', role_name
                using errcode = '42501',
                      detail = 'It owns functions that run for every tenant; nobody may use it.',
                      hint = pg_catalog.format('Run ALTER ROLE %I NOLOGIN and revoke it from its members, then create the extension again.', role_name);
        end if;
        if not exists (select from pg_catalog.pg_roles where rolname = role_name) then
            begin
                execute pg_catalog.format('create role %I nologin', role_name);
            exception when duplicate_object then
                null;  -- another database created it concurrently
            end;
        end if;
    end loop;
end
$roles$;
alter table bulkhead.jobs drop constraint jobs_kind_known;
alter table bulkhead.jobs add constraint jobs_kind_known check (kind in ('noop', 'completion', 'embedding', 'index_build', 'eval_score',
                                           'provision', 'provider_limits', 'budget_raise_end'));
create or replace function bulkhead.enqueue_job(
    kind text,
    payload jsonb default '{}',
    idempotency_key text default null,
    run_at timestamptz default null,
    max_attempts int default 5
)
returns bigint
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
begin
    if kind in ('completion', 'embedding') then
        raise exception '% jobs are queued by bulkhead.%()', kind,
                case kind when 'completion' then 'complete' else 'embed_document' end
            using errcode = '42501',
                  detail = 'They admit the provider call against the tenant''s budget in the same transaction.';
    end if;
    if kind = 'eval_score' then
        raise exception 'eval_score jobs are queued by the evals themselves' using errcode = '42501';
    end if;
    if kind in ('provision', 'provider_limits') then
        raise exception '% jobs are queued by bulkhead.provision_provider() and set_budget()', kind
            using errcode = '42501', detail = 'Provisioning is the control plane''s (bulkhead_admin).';
    end if;
    if kind = 'budget_raise_end' then
        raise exception 'budget_raise_end jobs are queued by bulkhead.raise_budget()' using errcode = '42501',
            detail = 'A temporary budget raise is the control plane''s (bulkhead_admin).';
    end if;
    if kind = 'index_build' then
        raise exception 'index_build jobs are queued by bulkhead.ingest_document()'
            using errcode = '42501', detail = 'A tenant''s index is built when it passes bulkhead.retrieval_index_threshold chunks.';
    end if;
    return bulkhead._enqueue(kind, payload, idempotency_key, run_at, max_attempts);
end
$$;


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

-- The ledger so far, summed in the billing time zone as the trigger would have (ALTER EXTENSION
-- runs as the extension's owner, which row level security does not confine; the trigger above
-- holds off new ledger rows until this commits).
insert into bulkhead.usage_daily
select l.tenant_id, (l.created_at at time zone pg_catalog.current_setting('bulkhead.billing_time_zone'))::date,
       l.provider, l.model, l.budget_line, count(*), sum(l.input_tokens), sum(l.cached_input_tokens),
       sum(l.cache_write_tokens), sum(l.output_tokens), sum(l.reasoning_tokens), coalesce(sum(l.reserved_usd), 0),
       sum(l.cost_usd), max(l.created_at)
from bulkhead.ledger l
group by 1, 2, 3, 4, 5;
insert into bulkhead.usage_latest select l.tenant_id, max(l.created_at) from bulkhead.ledger l group by 1;
insert into bulkhead.usage_rollup (zone)
select pg_catalog.current_setting('bulkhead.billing_time_zone') where exists (select from bulkhead.ledger);

create or replace function bulkhead.usage_report("from" timestamptz, "to" timestamptz)
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

create or replace function bulkhead.usage_by_tenant("from" timestamptz, "to" timestamptz)
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

-- doctor() knows the console's roles; activate_prompt's force checks the privileges a caller has (USAGE); set_budget ends a temporary raise.
create or replace function bulkhead.doctor()
returns table (check_name text, severity text, detail text)
language sql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
    with recursive bulkhead_roles as (
        select r.oid, r.rolname from pg_catalog.pg_roles r
        where r.rolname in ('bulkhead_app', 'bulkhead_admin', 'bulkhead_worker', 'bulkhead_meter', 'bulkhead_end_user',
                            'bulkhead_gateway', 'bulkhead_support', 'bulkhead_finance', 'bulkhead_reporter')
    ),
    -- Every role that holds a Bulkhead role, directly or through others.
    members (member, granted) as (
        select m.member, b.rolname from pg_catalog.pg_auth_members m join bulkhead_roles b on b.oid = m.roleid
        union
        select m.member, members.granted from pg_catalog.pg_auth_members m join members on m.roleid = members.member
    ),
    held as (
        select r.rolname, r.rolsuper, r.rolbypassrls, r.rolinherit, r.rolcanlogin,
               pg_catalog.array_agg(distinct members.granted order by members.granted) as bulkhead_roles
        from members join pg_catalog.pg_roles r on r.oid = members.member
        where r.rolname not in (select rolname from bulkhead_roles)
        group by r.rolname, r.rolsuper, r.rolbypassrls, r.rolinherit, r.rolcanlogin
    ),
    vector_schema as (
        select n.nspname from pg_catalog.pg_extension e join pg_catalog.pg_namespace n on n.oid = e.extnamespace
        where e.extname = 'vector'
    )
    -- Row level security does not apply to these roles: whoever uses them reads every tenant.
    select 'role_bypasses_rls', 'critical',
           pg_catalog.format('role %I is %s and holds %s: row level security does not apply to it, so it reads and writes every tenant''s rows. Use a role without SUPERUSER or BYPASSRLS (on Supabase, a dedicated control-plane login instead of service_role).',
                             h.rolname, case when h.rolsuper then 'SUPERUSER' else 'BYPASSRLS' end,
                             pg_catalog.array_to_string(h.bulkhead_roles, ', '))
    from held h where h.rolsuper or h.rolbypassrls
    union all
    -- ... or reads Bulkhead's tables some other way: a direct or column grant, a grant to a group
    -- it inherits, pg_read_all_data. The privilege functions follow every route. (Superusers
    -- read everything by definition: only those wired to Bulkhead are named above.)
    select 'role_bypasses_rls', 'critical',
           pg_catalog.format('role %I is BYPASSRLS and may read %s: row level security does not apply to it, so it reads every tenant''s rows there. Revoke its access; use a role without BYPASSRLS in bulkhead_admin instead.',
                             g.rolname, g.tables)
    from (select r.rolname, pg_catalog.string_agg(c.oid::regclass::text, ', ' order by c.oid::regclass::text) as tables
          from pg_catalog.pg_roles r
          cross join pg_catalog.pg_class c
          where r.rolbypassrls and not r.rolsuper
            and r.rolname not in (select rolname from bulkhead_roles)
            and r.rolname not in (select h.rolname from held h)
            and c.relnamespace = 'bulkhead'::regnamespace and c.relkind in ('r', 'p', 'v')
            and pg_catalog.has_any_column_privilege(r.oid, c.oid, 'SELECT')
          group by r.rolname) g
    union all
    -- PostgreSQL 16: a membership granted WITH INHERIT FALSE passes on no privilege.
    select 'grant_does_not_inherit', 'error',
           pg_catalog.format('role %I holds %I WITH INHERIT FALSE: it gets none of its privileges unless it sets the role. GRANT %I TO %I WITH INHERIT TRUE.',
                             r.rolname, b.rolname, b.rolname, r.rolname)
    from pg_catalog.pg_auth_members m
    join bulkhead_roles b on b.oid = m.roleid
    join pg_catalog.pg_roles r on r.oid = m.member
    -- (Nobody should hold the owners' roles at all: owner_role_in_use.)
    where not m.inherit_option and b.rolname not in ('bulkhead_meter', 'bulkhead_reporter')
    union all
    -- An end user must never choose its tenant: a role that is also the trusted backend can.
    select 'end_user_can_choose_tenant', 'critical',
           pg_catalog.format('role %I holds bulkhead_end_user and %s: its users can call set_tenant or name a tenant in an argument. Grant end-user roles bulkhead_end_user only.',
                             h.rolname, pg_catalog.array_to_string(pg_catalog.array_remove(h.bulkhead_roles, 'bulkhead_end_user'), ', '))
    from held h where 'bulkhead_end_user' = any (h.bulkhead_roles) and pg_catalog.cardinality(h.bulkhead_roles) > 1
    union all
    -- PostgREST's request roles are end users (their JWT names the tenant), never the backend.
    select 'postgrest_role_is_backend', 'critical',
           pg_catalog.format('role %I (a PostgREST request role) holds %s: any end user can act for any tenant. Grant it bulkhead_end_user instead.',
                             h.rolname, pg_catalog.array_to_string(h.bulkhead_roles, ', '))
    from held h
    where h.bulkhead_roles <> array['bulkhead_end_user']::name[]  -- any Bulkhead role but that one
      and (h.rolname in ('anon', 'authenticated', 'service_role')
           or exists (select from pg_catalog.pg_auth_members m join pg_catalog.pg_roles a on a.oid = m.member
                      where a.rolname = 'authenticator' and m.roleid = (select oid from pg_catalog.pg_roles x where x.rolname = h.rolname)))
    union all
    -- The owners of the functions that run for every caller: bulkhead_meter (metering) and
    -- bulkhead_reporter (the console's sums, whose policies read every tenant's rows). Whoever
    -- holds one reads every tenant and can change what its functions do for everyone else.
    select 'owner_role_in_use', 'critical',
           pg_catalog.format('role %I holds %I, which owns functions that run for every tenant and reads every tenant''s rows: nobody may hold it. REVOKE %I FROM %I.',
                             r.rolname, o.rolname, o.rolname, r.rolname)
    from pg_catalog.pg_auth_members m
    join pg_catalog.pg_roles o on o.oid = m.roleid
    join pg_catalog.pg_roles r on r.oid = m.member
    -- Also a grant WITH ADMIN only: its holder may grant the role to itself. Not the extension's
    -- owner (PostgreSQL 16 makes a CREATEROLE installer the admin of the roles it creates; it
    -- owns every table anyway) and not superusers.
    where o.rolname in ('bulkhead_meter', 'bulkhead_reporter')
      and (m.inherit_option or m.set_option or m.admin_option)
      and not r.rolsuper
      and r.oid <> (select e.extowner from pg_catalog.pg_extension e where e.extname = 'bulkhead')
    union all
    select 'owner_role_in_use', 'critical',
           pg_catalog.format('role %I can log in: it owns functions that run for every tenant and reads every tenant''s rows. ALTER ROLE %I NOLOGIN.',
                             o.rolname, o.rolname)
    from pg_catalog.pg_roles o
    where o.rolname in ('bulkhead_meter', 'bulkhead_reporter') and o.rolcanlogin
    union all
    select 'anonymous_end_user', 'warning',
           'role anon holds bulkhead_end_user: requests without a JWT act as end users (they see nothing without a tenant claim, but may ask for nothing either). Grant bulkhead_end_user to authenticated only.'
    from held h where h.rolname = 'anon'
    union all
    select 'end_user_role_does_not_inherit', 'error',
           pg_catalog.format('role %I holds %s but is NOINHERIT: it gets none of their privileges until it sets the role. ALTER ROLE %I INHERIT.',
                             h.rolname, pg_catalog.array_to_string(h.bulkhead_roles, ', '), h.rolname)
    -- Direct members only: PostgREST's authenticator is NOINHERIT by design (it SETs the role).
    from held h where not h.rolinherit and not h.rolsuper
      and exists (select from pg_catalog.pg_auth_members m join bulkhead_roles b on b.oid = m.roleid
                  where m.member = (select x.oid from pg_catalog.pg_roles x where x.rolname = h.rolname))
    union all
    select 'vector_schema_not_usable', 'error',
           pg_catalog.format('role %I has no USAGE on schema %I, where pgvector lives: searches and the per-tenant index build fail. GRANT USAGE ON SCHEMA %I TO %I.',
                             b.rolname, v.nspname, v.nspname, b.rolname)
    from bulkhead_roles b, vector_schema v
    where b.rolname in ('bulkhead_app', 'bulkhead_admin', 'bulkhead_worker', 'bulkhead_meter', 'bulkhead_end_user')
      and not pg_catalog.has_schema_privilege(b.oid, v.nspname, 'USAGE')
    union all
    -- Any role may create objects there: an operator or function planted on a path that others
    -- resolve names through runs as whoever calls it.
    select 'schema_creatable_by_public', 'warning',
           pg_catalog.format('PUBLIC may CREATE in schema %I: a role could plant a function or operator there that runs as another role whose search_path includes it. REVOKE CREATE ON SCHEMA %I FROM PUBLIC.',
                             n.nspname, n.nspname)
    from pg_catalog.pg_namespace n
    where n.nspname not like 'pg\_%' and n.nspname <> 'information_schema'
      and pg_catalog.has_schema_privilege('public', n.oid, 'CREATE')
    union all
    select 'index_drop_pending', 'warning',
           pg_catalog.format('%s tenant index(es) wait to be dropped since %s: a long transaction reading bulkhead.chunks keeps taking precedence. Run select bulkhead.drop_pending_indexes() (the worker does, once a minute) and look for long transactions.',
                             pg_catalog.count(*), pg_catalog.min(p.requested_at))
    from bulkhead.pending_index_drops p
    having pg_catalog.min(p.requested_at) < pg_catalog.now() - interval '10 minutes'
    union all
    select 'statements_logged', 'warning',
           pg_catalog.format('log_statement = %s: statements are written to the server log with their arguments. Keep keys out of SQL (set_credential takes references only) and prefer ddl or none.',
                             pg_catalog.current_setting('log_statement'))
    where pg_catalog.current_setting('log_statement') in ('all', 'mod')
    union all
    select 'not_preloaded', 'info',
           'bulkhead is not in shared_preload_libraries: a SET bulkhead.tenant_id is refused only once the library loads, set_tenant looks tenants up every time, and admission in memory is off.'
    -- The setting is readable by pg_read_all_settings only: otherwise the check is skipped.
    where case when pg_catalog.pg_has_role('pg_read_all_settings', 'USAGE')
               then not pg_catalog.string_to_array(pg_catalog.replace(pg_catalog.current_setting('shared_preload_libraries'), ' ', ''), ',') @> array['bulkhead']
               else false end
    union all
    -- Supabase Vault: reading decrypted_secrets needs its decrypt function too.
    select 'vault_not_readable', 'error',
           pg_catalog.format('Supabase Vault is installed or referenced, but bulkhead_worker lacks %s: the worker cannot read those keys. GRANT USAGE ON SCHEMA vault, SELECT ON vault.decrypted_secrets and EXECUTE ON FUNCTION vault._crypto_aead_det_decrypt to the worker''s role.', missing.what)
    from (select pg_catalog.string_agg(w.what, ', ') as what
          from (select 'USAGE on schema vault' as what
                where pg_catalog.to_regnamespace('vault') is null
                   or not pg_catalog.has_schema_privilege('bulkhead_worker', 'vault', 'USAGE')
                union all
                select 'SELECT on vault.decrypted_secrets'
                where pg_catalog.to_regclass('vault.decrypted_secrets') is null
                   or not pg_catalog.has_table_privilege('bulkhead_worker', 'vault.decrypted_secrets', 'SELECT')
                union all
                select 'EXECUTE on vault._crypto_aead_det_decrypt'
                where exists (select from pg_catalog.pg_proc p
                              where p.pronamespace = pg_catalog.to_regnamespace('vault')
                                and p.proname = '_crypto_aead_det_decrypt'
                                and not pg_catalog.has_function_privilege('bulkhead_worker', p.oid, 'EXECUTE'))) w) missing
    where missing.what is not null
      -- Vault installed, or named by the shared pool (tenants' own references are under row
      -- level security: the control plane sees none of them from here).
      and (pg_catalog.to_regnamespace('vault') is not null
           or exists (select from bulkhead.shared_credentials c where c.secret_ref like 'vault:%'))
$$;

create or replace function bulkhead.activate_prompt(
    tenant_id uuid, template_name text, version int, force boolean default false, reason text default null
)
returns void
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    previous text;
    head bulkhead.prompt_templates;
    verdict record;
begin
    if template_name is null or version is null or force is null then
        raise exception 'template_name, version and force are required'
            using errcode = '22004', detail = 'Name the version to activate.';
    end if;
    previous := bulkhead._act_for_tenant(activate_prompt.tenant_id, 'activate_prompt');
    -- The pointer's row lock serialises concurrent activations and rollbacks.
    select t.* into head from bulkhead.prompt_templates t
    where t.tenant_id = activate_prompt.tenant_id and t.template_name = activate_prompt.template_name
    for update;
    if not found or not exists (
        select from bulkhead.prompt_versions v
        where v.tenant_id = activate_prompt.tenant_id and v.template_name = activate_prompt.template_name
          and v.version = activate_prompt.version) then
        raise exception 'prompt % has no version %', pg_catalog.quote_literal(template_name), version
            using errcode = '42704', hint = 'Publish it first with bulkhead.publish_prompt(...).';
    end if;
    -- The eval gate (evals.sql): a passing run of this version on the tenant's current eval set.
    verdict := bulkhead._eval_gate_verdict(activate_prompt.tenant_id, activate_prompt.template_name,
                                           activate_prompt.version);
    if force then
        if not pg_catalog.pg_has_role(bulkhead._caller(), 'bulkhead_admin', 'USAGE') then
            raise exception 'only bulkhead_admin may force a release past the eval gate'
                using errcode = '42501',
                      detail = 'The application role activates versions that passed their tenant''s eval set.';
        end if;
        if pg_catalog.btrim(coalesce(reason, '')) = '' then
            raise exception 'a forced release needs a reason' using errcode = '22023',
                detail = 'The reason is kept in the release history with who forced it and which run failed.';
        end if;
    end if;
    if verdict.refusal is not null and not force then
        perform bulkhead._eval_gate_refuse(verdict.refusal, verdict.run_id);
    end if;
    perform bulkhead._move_prompt_pointer(activate_prompt.tenant_id, activate_prompt.template_name,
                                          activate_prompt.version, 'activate', reason, null,
                                          case when verdict.refusal is null then verdict.gate else 'forced' end,
                                          verdict.run_id, verdict.digest);
    perform bulkhead._leave_tenant(previous);
end
$$;

create or replace function bulkhead.set_budget(
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

-- The console's roles evaluate row level security policies (current_tenant()) as themselves.
-- Granted last, so a fresh install lists the grants in the order an upgrade leaves them.
grant execute on function bulkhead.current_tenant() to bulkhead_reporter, bulkhead_support;
