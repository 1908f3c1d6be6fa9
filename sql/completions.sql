-- Queued completions: bulkhead.complete() admits a provider call against the tenant's budget,
-- renders its prompt and queues it, in the caller's transaction: a rollback leaves neither a
-- reservation nor a job. The daemon calls the provider with the tenant's credential and settles
-- the reservation with the provider's usage (bulkhead._finish_completion) in one transaction
-- with the job's outcome, so a call is recorded in the ledger at most once, whatever crashes.

-- Releases an open reservation whose call will not be made (its job died): the budget it held
-- and the tokens it took come back. Same lock order as budget_check (state row first).
create function bulkhead._cancel_reservation(reservation uuid)
returns boolean
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := bulkhead.current_tenant();
    r record;
begin
    if tenant is null then
        raise exception 'no tenant context' using errcode = '42501';
    end if;
    -- A tenant's own open transaction must not stall the worker here (55P03: retried later).
    perform pg_catalog.set_config('lock_timeout', '500ms', true);
    perform from bulkhead.budget_state s where s.tenant_id = tenant for update;
    update bulkhead.reservations x set expired_at = pg_catalog.clock_timestamp()
    where x.tenant_id = tenant and x.id = reservation and x.settled_at is null and x.expired_at is null
    returning x.reserved_usd, x.est_input_tokens, x.max_output_tokens, x.held_in_memory into r;
    if not found then
        return false;
    end if;
    perform bulkhead._release_in_memory(r.reserved_usd, 0, r.est_input_tokens, r.max_output_tokens);
    if r.held_in_memory then
        return true;
    end if;
    update bulkhead.budget_state s
    set reserved_usd = greatest(s.reserved_usd - r.reserved_usd, 0),
        itpm_level = least(s.itpm_cap, s.itpm_level + r.est_input_tokens),
        otpm_level = least(s.otpm_cap, s.otpm_level + r.max_output_tokens),
        next_expiry = (select min(o.lease_expires_at) from bulkhead.reservations o
                       where o.tenant_id = tenant and o.settled_at is null and o.expired_at is null)
    where s.tenant_id = tenant;
    return true;
end
$$;
comment on function bulkhead._cancel_reservation(uuid) is
    'Releases one of the current tenant''s open reservations whose call will not be made (the worker, for a dead completion).';

-- An upper bound on the input tokens the provider bills for these texts with this model: the
-- model's own tokenizer where one is known (OpenAI's o200k_base and cl100k_base models), else the
-- byte length (a byte-level BPE never emits more tokens than bytes), plus the provider's framing
-- per message and per request when chat is true (bulkhead_policy::tokens). Admission reserves
-- this for every call whose prompt an end user can shape: complete(), embed_document(), and the
-- gateway and evals after them. Tenant-agnostic: it reads only the model's price row.
create function bulkhead.input_token_bound(model text, inputs text[], chat boolean default true)
returns table (tokens bigint, method text)
language sql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
    -- The model's tokenizer only if every price row of the model, past or future, names OpenAI:
    -- admission prices the call at the version in effect when it runs, which may be another.
    select b.tokens, b.method
    from bulkhead._input_token_bound(
        (select case when pg_catalog.bool_and(p.provider = 'openai') then 'openai' end
         from bulkhead.prices p where p.model = input_token_bound.model),
        model, inputs, chat) b
$$;
comment on function bulkhead.input_token_bound(text, text[], boolean) is
    'An upper bound on the input tokens a provider bills for these texts: the model''s tokenizer, else their bytes, plus framing.';

-- Admits, renders and queues one completion for the current tenant; returns the job id.
-- With `request` (an OpenAI Chat Completions or Anthropic Messages body, by the model's
-- provider: messages, tools, response_format...), the call is that request, as the gateway would
-- send it: the rendered template (if one is named) becomes its system prompt, `model`,
-- `max_output_tokens` and `stream` override the body's, and its input is bounded from every
-- text it holds (bulkhead._request_input_bound). Without it, the rendered template is the one
-- user message.
-- SECURITY DEFINER (as bulkhead_meter): only this function may queue a completion job, so every
-- provider call the daemon makes was admitted against the budget first.
create function bulkhead.complete(
    template_name text,
    vars jsonb,
    model text,
    max_output_tokens int,
    stream boolean default false,
    lease interval default '30 minutes',
    idempotency_key text default null,
    request jsonb default null
)
returns bigint
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    prompt text;
begin
    if bulkhead.current_tenant() is null then
        raise exception 'no tenant context'
            using errcode = '42501', hint = 'Call bulkhead.set_tenant(...) first: a completion runs for one tenant.';
    end if;
    if model is null or max_output_tokens is null or stream is null
       or (request is null and (template_name is null or vars is null)) then
        raise exception 'model, max_output_tokens and stream are required, and template_name and vars unless a request is given'
            using errcode = '22004';
    end if;
    if template_name is not null then
        prompt := bulkhead.render_prompt(template_name, coalesce(vars, '{}'));
    end if;
    return bulkhead._queue_completion(prompt, model, max_output_tokens, stream, lease, idempotency_key, request,
                                      template_name);
end
$$;
comment on function bulkhead.complete(text, jsonb, text, int, boolean, interval, text, jsonb) is
    'Admits one LLM call against the current tenant''s budget, renders the prompt (and takes a full chat request) and queues the call for the daemon; returns the job id.';

-- complete()'s admission and queueing of an already rendered prompt (evals render a pinned
-- version, not the active one, and queue through here: the same bound, reservation and job).
-- With a request, the prompt becomes its system prompt; without one, its one user message.
create function bulkhead._queue_completion(
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

-- A completion's outcome, for the tenant that queued it (no row of another tenant is visible).
-- status: queued, running (also while waiting to retry after a transient failure), done, failed.
-- message: the provider's whole answer message for a call made from a full request (OpenAI's
-- choices[0].message with its tool_calls, or Anthropic's content blocks), else NULL.
create function bulkhead.completion_result(job_id bigint)
returns table (status text, output text, cost_usd numeric, error text, message jsonb)
language plpgsql stable
security definer
set search_path to pg_catalog, pg_temp
as $$
begin
    if bulkhead.current_tenant() is null then
        raise exception 'no tenant context' using errcode = '42501';
    end if;
    return query
        select case s.state when 'dead' then 'failed' else s.state end,
               j.result ->> 'output',
               (j.result ->> 'cost_usd')::numeric,
               j.last_error,
               j.result -> 'message'
        from bulkhead.jobs j join bulkhead.job_schedule s on s.job_id = j.id and s.job_tenant = j.tenant_id
        where j.tenant_id = bulkhead.current_tenant() and j.id = completion_result.job_id
          and j.kind = 'completion';
    if not found then
        raise exception 'no completion job % for the current tenant', job_id
            using errcode = 'P0002', hint = 'Pass the id bulkhead.complete() returned, in the same tenant''s context.';
    end if;
end
$$;
comment on function bulkhead.completion_result(bigint) is
    'Status, output, settled cost, error and (for a full request) the answer message of one of the current tenant''s completion jobs.';

-- The provider credential for a job the worker holds, read in the job's tenant context (its
-- own credential, else the shared pool). The worker resolves the reference at call time.
create function bulkhead.job_credential(job bigint, worker text, provider text)
returns table (secret_ref text, kind text, provider_project_id text)
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
begin
    perform bulkhead._held_job(job, worker);
    return query select c.secret_ref, c.kind, c.provider_project_id
        from bulkhead.credential_for_tenant(provider) c;
end
$$;

-- Settles a completion the worker holds with the provider's usage and records its outcome, in
-- one transaction: the ledger row and the job's result commit together or not at all. With an
-- error (a stream cut short), the call is settled for what was streamed and the job fails.
create function bulkhead._finish_completion(
    job bigint, worker text, usage jsonb, request_id text, output text, error text default null,
    message jsonb default null
)
returns numeric
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    payload jsonb;
    cost numeric;
begin
    perform bulkhead._held_job(job, worker);
    select j.payload into payload from bulkhead.jobs j
    where j.tenant_id = bulkhead.current_tenant() and j.id = job and j.kind = 'completion';
    if not found then
        raise exception 'job % is not a completion', job using errcode = '22023';
    end if;
    cost := bulkhead._settle_queued_call((payload ->> 'reservation')::uuid, usage, request_id);
    perform bulkhead._close_job(job, pg_catalog.jsonb_build_object(
        'output', output, 'cost_usd', cost, 'request_id', request_id, 'usage', usage)
        || case when message is null then '{}'::jsonb else pg_catalog.jsonb_build_object('message', message) end, error);
    if payload ? 'eval' then
        perform bulkhead._eval_call_closed_safely(job);  -- an eval's call (evals.sql)
    end if;
    return cost;
end
$$;

-- Admits and queues the embedding of a document's chunks for the current tenant; returns the
-- job id. The worker calls the provider's embeddings endpoint (at the tenant's dimension) and
-- ingests the chunks with their embeddings (bulkhead.ingest_document), in the tenant's context.
-- SECURITY DEFINER (as bulkhead_meter): only this function may queue an embedding job.
create function bulkhead.embed_document(
    external_id text,
    chunks jsonb,
    model text default 'text-embedding-3-small',
    title text default null,
    metadata jsonb default '{}',
    lease interval default '30 minutes'
)
returns bigint
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := bulkhead.current_tenant();
    dims int;
begin
    if tenant is null then
        raise exception 'no tenant context'
            using errcode = '42501', hint = 'Call bulkhead.set_tenant(...) first.';
    end if;
    if external_id is null or chunks is null or model is null or metadata is null then
        raise exception 'external_id, chunks, model and metadata are required' using errcode = '22004';
    end if;
    if pg_catalog.jsonb_typeof(chunks) <> 'array' or pg_catalog.jsonb_array_length(chunks) = 0
       or pg_catalog.jsonb_array_length(chunks) > 256
       or exists (select from pg_catalog.jsonb_array_elements(chunks) c
                  where pg_catalog.jsonb_typeof(c) <> 'object'
                     or pg_catalog.jsonb_typeof(c->'content') is distinct from 'string'
                     or c ? 'embedding'
                     or pg_catalog.jsonb_typeof(coalesce(c->'metadata', '{}')) <> 'object') then
        raise exception 'chunks must be an array of 1 to 256 {"content": text, "metadata": {...}} without embeddings'
            using errcode = '22023', hint = 'Chunks that already have embeddings go to bulkhead.ingest_document().';
    end if;
    if pg_catalog.jsonb_typeof(metadata) <> 'object' then
        raise exception 'metadata must be a JSON object' using errcode = '22023';
    end if;
    -- What ingest_document will require, checked before the provider is paid.
    if pg_catalog.char_length(external_id) not between 1 and 500 then
        raise exception 'external_id must be 1 to 500 characters' using errcode = '22023';
    end if;
    if exists (select from pg_catalog.jsonb_array_elements(chunks) c
               where pg_catalog.octet_length(c->>'content') not between 1 and 65536) then
        raise exception 'each chunk''s content must be 1 to 65536 bytes' using errcode = '22023';
    end if;
    select s.embedding_dims into dims from bulkhead.retrieval_settings s where s.tenant_id = tenant;
    if dims is null then
        raise exception 'the tenant has no embedding dimension'
            using errcode = '55000', hint = 'bulkhead_admin sets one with bulkhead.set_embedding_dims().';
    end if;
    return bulkhead._queue_embedding(model, chunks, dims, lease,
        pg_catalog.jsonb_build_object('external_id', external_id, 'title', title, 'metadata', metadata),
        'embedding:');
end
$$;

-- embed_document()'s admission and queueing of texts to embed (evals' `similar` assertions
-- queue theirs here too): a bound that holds for any text, the reservation, the job. `extra`
-- joins the payload; with an `eval` key, the call goes on the tenant's eval budget if it has one.
create function bulkhead._queue_embedding(
    model text, chunks jsonb, dims int, lease interval, extra jsonb, key_prefix text
)
returns bigint
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    tenant uuid := bulkhead.current_tenant();
    est_input int;
    reservation uuid;
    r bulkhead.reservations;
begin
    -- As in complete(): a bound that holds for any text (embeddings add no framing).
    est_input := least((select b.tokens from bulkhead.input_token_bound(model,
                            array(select c->>'content' from pg_catalog.jsonb_array_elements(chunks) c), false) b),
                       100000000)::int;
    reservation := case when extra ? 'eval' then bulkhead._budget_check_eval(model, est_input, 0, lease)
                        else bulkhead.budget_check(model, est_input, 0, lease) end;
    perform bulkhead._materialize_reservation(reservation);
    -- budget_check may have switched synchronous commit off for the transaction; a queued job
    -- (and a settle this may run in) must be durable.
    perform pg_catalog.set_config('synchronous_commit', 'on', true);
    update bulkhead.reservations x set queued = true
    where x.tenant_id = tenant and x.id = reservation
    returning * into r;
    if r.provider not in ('openai', 'openai_compatible') then
        raise exception 'model % is not an embedding model of an OpenAI-style provider', pg_catalog.quote_literal(model)
            using errcode = '22023';
    end if;
    return bulkhead._enqueue(
        'embedding',
        pg_catalog.jsonb_build_object(
            'reservation', reservation, 'provider', r.provider, 'model', r.model, 'dims', dims, 'chunks', chunks)
            || extra,
        key_prefix || reservation::text,
        null,
        5);
end
$$;
comment on function bulkhead.embed_document(text, jsonb, text, text, jsonb, interval) is
    'Admits and queues the embedding of a document''s chunks; the worker ingests them with their embeddings. Returns the job id.';

-- Settles an embedding job the worker holds and ingests the document, in one transaction.
-- With an error (an answer that could not be used), the call is charged at the reservation's
-- estimate, nothing is ingested and the job fails.
create function bulkhead._finish_embedding(
    job bigint, worker text, usage jsonb, request_id text, embeddings jsonb, error text default null
)
returns numeric
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    payload jsonb;
    cost numeric;
    doc uuid;
begin
    perform bulkhead._held_job(job, worker);
    select j.payload into payload from bulkhead.jobs j
    where j.tenant_id = bulkhead.current_tenant() and j.id = job and j.kind = 'embedding';
    if not found then
        raise exception 'job % is not an embedding job', job using errcode = '22023';
    end if;
    if error is not null then
        perform pg_catalog.set_config('lock_timeout', '500ms', true);
        cost := bulkhead._settle_queued_call(
            (payload ->> 'reservation')::uuid,
            (select pg_catalog.jsonb_build_object('prompt_tokens', r.est_input_tokens)
             from bulkhead.reservations r
             where r.tenant_id = bulkhead.current_tenant() and r.id = (payload ->> 'reservation')::uuid),
            request_id);
        perform bulkhead._close_job(job, pg_catalog.jsonb_build_object('cost_usd', cost, 'request_id', request_id), error);
        if payload ? 'eval' then
            perform bulkhead._eval_call_closed_safely(job);
        end if;
        return cost;
    end if;
    if pg_catalog.jsonb_typeof(embeddings) is distinct from 'array'
       or pg_catalog.jsonb_array_length(embeddings) <> pg_catalog.jsonb_array_length(payload -> 'chunks') then
        raise exception 'the provider returned % embeddings for % chunks',
                pg_catalog.jsonb_array_length(embeddings), pg_catalog.jsonb_array_length(payload -> 'chunks')
            using errcode = '22023';
    end if;
    perform pg_catalog.set_config('lock_timeout', '500ms', true);
    cost := bulkhead._settle_queued_call((payload ->> 'reservation')::uuid, usage, request_id);
    -- An eval's embeddings (a `similar` assertion's two texts) are measured, not ingested.
    if payload ? 'eval' then
        perform bulkhead._close_job(job, pg_catalog.jsonb_build_object(
            'cost_usd', cost, 'request_id', request_id, 'usage', usage, 'embeddings', embeddings), null);
        perform bulkhead._eval_call_closed_safely(job);
        return cost;
    end if;
    -- The provider did the work: if the ingest is refused, the charge stays and the job fails.
    -- A lock conflict is not a refusal: it undoes the settle too, and the worker tries again.
    perform pg_catalog.set_config('lock_timeout', '0', true);
    begin
        doc := bulkhead.ingest_document(
            payload ->> 'external_id',
            (select pg_catalog.jsonb_agg(c.value || pg_catalog.jsonb_build_object('embedding', e.value) order by c.ordinality)
             from pg_catalog.jsonb_array_elements(payload -> 'chunks') with ordinality c
             join pg_catalog.jsonb_array_elements(embeddings) with ordinality e on e.ordinality = c.ordinality),
            payload ->> 'title',
            payload -> 'metadata');
    exception
        when lock_not_available or serialization_failure or deadlock_detected then
            raise;
        when others then
            perform bulkhead._close_job(job,
                pg_catalog.jsonb_build_object('cost_usd', cost, 'request_id', request_id, 'usage', usage),
                'the embeddings were paid for but could not be ingested: ' || sqlerrm);
            return cost;
    end;
    perform bulkhead._close_job(job, pg_catalog.jsonb_build_object(
        'document_id', doc, 'cost_usd', cost, 'request_id', request_id,
        'chunks', pg_catalog.jsonb_array_length(embeddings), 'usage', usage), null);
    return cost;
end
$$;

-- Settles many completions in one round trip and one commit (one WAL flush for the batch):
-- each in its own subtransaction, so a refused settle leaves the others in place. Returns per
-- job: done, failed (a stream cut short, settled), lease_lost, or the error that refused it.
create function bulkhead._finish_completions(
    worker text, jobs bigint[], usages jsonb[], request_ids text[], outputs text[], errors text[],
    messages jsonb[] default null
)
returns table (job_id bigint, outcome text)
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    n int := pg_catalog.cardinality(jobs);
    i bigint;
begin
    if bulkhead.current_tenant() is not null then
        raise exception '_finish_completions runs without a tenant context' using errcode = '42501',
            detail = 'It enters each job''s own tenant in turn.';
    end if;
    if worker is null or jobs is null or pg_catalog.cardinality(usages) is distinct from n
       or pg_catalog.cardinality(request_ids) is distinct from n or pg_catalog.cardinality(outputs) is distinct from n
       or pg_catalog.cardinality(errors) is distinct from n
       or (messages is not null and pg_catalog.cardinality(messages) is distinct from n) then
        raise exception 'worker, and one usage, request id, output and error per job, are required' using errcode = '22023';
    end if;
    -- Tenant by tenant, in tenant id order: each settle locks its tenant's budget state until
    -- commit, and one global order keeps concurrent batches of other workers from deadlocking.
    -- A tenant's own open transaction holding its budget row must not stall the batch: a
    -- settle that cannot lock it soon is reported (55P03) and retried by the worker later.
    perform pg_catalog.set_config('lock_timeout', '500ms', true);
    for i in
        select b.i from pg_catalog.unnest(jobs) with ordinality as b(job, i)
        left join bulkhead.job_schedule s on s.job_id = b.job
        order by s.job_tenant, b.job
    loop
        job_id := jobs[i];
        begin
            perform bulkhead._set_tenant_within_function(null);
            perform bulkhead._finish_completion(jobs[i], worker, usages[i], request_ids[i], outputs[i], errors[i],
                                                messages[i]);
            outcome := case when errors[i] is null then 'done' else 'failed' end;
        exception when others then
            outcome := case when sqlstate = '55000' and sqlerrm like '%is not held by worker%' then 'lease_lost'
                            else 'error ' || sqlstate || ': ' || sqlerrm end;
            -- A settle the worker will try again keeps its lease meanwhile: otherwise another
            -- worker would claim the job and make the call a second time.
            if sqlstate = '55P03' or sqlstate like '40%' then
                update bulkhead.job_schedule x
                set leased_until = greatest(x.leased_until, pg_catalog.clock_timestamp() + interval '5 minutes')
                where x.job_id = jobs[i] and x.state = 'running' and x.leased_by = worker;
            end if;
        end;
        return next;
    end loop;
    perform bulkhead._set_tenant_within_function(null);
end
$$;

alter function bulkhead.embed_document(text, jsonb, text, text, jsonb, interval) owner to bulkhead_meter;
alter function bulkhead._cancel_reservation(uuid) owner to bulkhead_meter;
alter function bulkhead.complete(text, jsonb, text, int, boolean, interval, text, jsonb) owner to bulkhead_meter;
alter function bulkhead.completion_result(bigint) owner to bulkhead_meter;
revoke all on function bulkhead._queue_completion(text, text, int, boolean, interval, text, jsonb, text, jsonb) from public;
revoke all on function bulkhead._queue_embedding(text, jsonb, int, interval, jsonb, text) from public;
grant execute on function bulkhead._queue_embedding(text, jsonb, int, interval, jsonb, text) to bulkhead_meter;
grant execute on function bulkhead._queue_completion(text, text, int, boolean, interval, text, jsonb, text, jsonb) to bulkhead_meter;

revoke all on function bulkhead._cancel_reservation(uuid) from public;
revoke all on function bulkhead._input_token_bound(text, text, text[], boolean) from public;
revoke all on function bulkhead.input_token_bound(text, text[], boolean) from public;
grant execute on function bulkhead._input_token_bound(text, text, text[], boolean), bulkhead.input_token_bound(text, text[], boolean)
    to bulkhead_app, bulkhead_worker, bulkhead_admin, bulkhead_meter;
-- complete() (as bulkhead_meter) bounds a full chat request's input; pure, like price_usage.
revoke all on function bulkhead._request_input_bound(text, text, text) from public;
grant execute on function bulkhead._request_input_bound(text, text, text) to bulkhead_meter;
revoke all on function bulkhead.complete(text, jsonb, text, int, boolean, interval, text, jsonb) from public;
revoke all on function bulkhead.completion_result(bigint) from public;
revoke all on function bulkhead.embed_document(text, jsonb, text, text, jsonb, interval) from public;
revoke all on function bulkhead._finish_embedding(bigint, text, jsonb, text, jsonb, text) from public;
grant execute on function bulkhead.embed_document(text, jsonb, text, text, jsonb, interval) to bulkhead_app;
grant execute on function bulkhead._finish_embedding(bigint, text, jsonb, text, jsonb, text) to bulkhead_worker;
revoke all on function bulkhead.job_credential(bigint, text, text) from public;
revoke all on function bulkhead._finish_completion(bigint, text, jsonb, text, text, text, jsonb) from public;
revoke all on function bulkhead._finish_completions(text, bigint[], jsonb[], text[], text[], text[], jsonb[]) from public;
grant execute on function bulkhead._finish_completions(text, bigint[], jsonb[], text[], text[], text[], jsonb[]) to bulkhead_worker;
grant execute on function bulkhead.complete(text, jsonb, text, int, boolean, interval, text, jsonb),
    bulkhead.completion_result(bigint) to bulkhead_app, bulkhead_admin;
grant execute on function bulkhead._cancel_reservation(uuid), bulkhead.job_credential(bigint, text, text),
    bulkhead._finish_completion(bigint, text, jsonb, text, text, text, jsonb) to bulkhead_worker;
-- complete() runs as bulkhead_meter: it renders and admits like the caller would.
grant execute on function bulkhead.render_prompt(text, jsonb), bulkhead._render_prompt(text, text),
    bulkhead.budget_check(text, int, int, interval) to bulkhead_meter;
