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

