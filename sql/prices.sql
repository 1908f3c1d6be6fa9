-- Versioned model prices, in USD per million tokens. Rows are never updated: a new price is a new
-- row with a later effective_from, so every ledger row can name the exact price it was billed at.

create table bulkhead.prices (
    provider              text        not null,
    model                 text        not null,
    effective_from        timestamptz not null,
    input_per_mtok        numeric     not null,
    output_per_mtok       numeric     not null,
    cached_input_per_mtok numeric,
    cache_write_per_mtok  numeric,
    created_at            timestamptz not null default pg_catalog.now(),
    -- Written by the extension script (the seed list below): a dump leaves it out, since
    -- CREATE EXTENSION writes it again on restore. Admins' rows are dumped.
    seeded                boolean     not null default false,
    constraint prices_pkey primary key (provider, model, effective_from),
    constraint prices_provider_known check (provider in ('openai', 'anthropic', 'openai_compatible')),
    constraint prices_model_length check (pg_catalog.char_length(model) between 1 and 200),
    -- Finite (the upper bound also refuses NaN and Infinity), at most 12 decimal places.
    constraint prices_rates_valid check (
        input_per_mtok >= 0 and input_per_mtok < 1000000 and pg_catalog.scale(input_per_mtok) <= 12
        and output_per_mtok >= 0 and output_per_mtok < 1000000 and pg_catalog.scale(output_per_mtok) <= 12
        and coalesce(cached_input_per_mtok >= 0 and cached_input_per_mtok < 1000000
                     and pg_catalog.scale(cached_input_per_mtok) <= 12, true)
        and coalesce(cache_write_per_mtok >= 0 and cache_write_per_mtok < 1000000
                     and pg_catalog.scale(cache_write_per_mtok) <= 12, true))
);
-- budget_check finds a model's price by name: a model belongs to one provider.
create index prices_by_model on bulkhead.prices (model, effective_from desc);
comment on table bulkhead.prices is
    'Model prices (USD per million tokens), versioned by effective_from; a missing cached or cache-write rate bills at the input rate. Seeded rows come with the extension and are not dumped.';

alter table bulkhead.prices enable row level security;
alter table bulkhead.prices force row level security;
-- Prices are platform data, the same for every tenant.
create policy readable on bulkhead.prices for select using (true);
create policy control_plane on bulkhead.prices for insert to bulkhead_admin with check (not seeded);
grant select on bulkhead.prices to bulkhead_app, bulkhead_worker, bulkhead_admin, bulkhead_meter;
grant insert on bulkhead.prices to bulkhead_admin;
select pg_catalog.pg_extension_config_dump('bulkhead.prices', 'where not seeded');

-- Seed list: list prices published by OpenAI and Anthropic (standard tier, 5-minute cache writes).
-- Providers change prices: add a row with set_price() rather than trusting this list forever.
-- created_at is fixed too, so that every install holds the same seed rows.
insert into bulkhead.prices
    (provider, model, effective_from, input_per_mtok, cached_input_per_mtok, cache_write_per_mtok, output_per_mtok,
     seeded, created_at)
select v.*, true, v.effective_from from (values
    ('openai', 'gpt-4o',                 timestamptz '2025-01-01', 2.50,  1.25,   null::numeric,  10.00),
    ('openai', 'gpt-4o-mini',            '2025-01-01', 0.15,  0.075,  null,   0.60),
    ('openai', 'gpt-4.1',                '2025-01-01', 2.00,  0.50,   null,   8.00),
    ('openai', 'gpt-4.1-mini',           '2025-01-01', 0.40,  0.10,   null,   1.60),
    ('openai', 'gpt-4.1-nano',           '2025-01-01', 0.10,  0.025,  null,   0.40),
    ('openai', 'o3',                     '2025-01-01', 2.00,  0.50,   null,   8.00),
    ('openai', 'o4-mini',                '2025-01-01', 1.10,  0.275,  null,   4.40),
    ('openai', 'text-embedding-3-small', '2025-01-01', 0.02,  null,   null,   0),
    ('openai', 'text-embedding-3-large', '2025-01-01', 0.13,  null,   null,   0),
    ('anthropic', 'claude-opus-4-1',     '2025-01-01', 15.00, 1.50,  18.75,  75.00),
    ('anthropic', 'claude-sonnet-4-5',   '2025-01-01', 3.00,  0.30,   3.75,  15.00),
    ('anthropic', 'claude-sonnet-4',     '2025-01-01', 3.00,  0.30,   3.75,  15.00),
    ('anthropic', 'claude-haiku-4-5',    '2025-01-01', 1.00,  0.10,   1.25,   5.00),
    ('anthropic', 'claude-3-5-haiku',    '2025-01-01', 0.80,  0.08,   1.00,   4.00))
    v (provider, model, effective_from, input_per_mtok, cached_input_per_mtok, cache_write_per_mtok, output_per_mtok);

-- Adds a price version for a model; returns nothing. New calls use it from effective_from on.
create function bulkhead.set_price(
    provider text,
    model text,
    input_per_mtok numeric,
    output_per_mtok numeric,
    cached_input_per_mtok numeric default null,
    cache_write_per_mtok numeric default null,
    effective_from timestamptz default pg_catalog.now()
)
returns void
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
begin
    if provider is null or provider not in ('openai', 'anthropic', 'openai_compatible') then
        raise exception 'unknown provider %', coalesce(pg_catalog.quote_literal(provider), 'NULL')
            using errcode = '22023',
                  detail = 'Known providers are openai, anthropic and openai_compatible.';
    end if;
    if model is null or pg_catalog.char_length(model) not between 1 and 200 then
        raise exception 'invalid model name'
            using errcode = '22023', detail = 'A model name is 1 to 200 characters.';
    end if;
    if input_per_mtok is null or output_per_mtok is null or effective_from is null then
        raise exception 'input and output rates and effective_from are required'
            using errcode = '22004', detail = 'A price needs both rates, in USD per million tokens.';
    end if;
    if not (input_per_mtok >= 0 and input_per_mtok < 1000000 and pg_catalog.scale(input_per_mtok) <= 12
            and output_per_mtok >= 0 and output_per_mtok < 1000000 and pg_catalog.scale(output_per_mtok) <= 12
            and coalesce(cached_input_per_mtok >= 0 and cached_input_per_mtok < 1000000
                         and pg_catalog.scale(cached_input_per_mtok) <= 12, true)
            and coalesce(cache_write_per_mtok >= 0 and cache_write_per_mtok < 1000000
                         and pg_catalog.scale(cache_write_per_mtok) <= 12, true)) then
        raise exception 'invalid price rate'
            using errcode = '22023',
                  detail = 'Rates are USD per million tokens: finite, at least 0, below 1,000,000, with at most 12 decimal places.';
    end if;
    if exists (select from bulkhead.prices p where p.model = set_price.model and p.provider <> set_price.provider) then
        raise exception 'model % is already priced by another provider', pg_catalog.quote_literal(model)
            using errcode = '23505',
                  detail = 'budget_check finds a price by model name, so a model name belongs to one provider.',
                  hint = 'Name the model as the provider does, with a prefix if two providers serve it (e.g. vllm/llama-3).';
    end if;
    begin
        insert into bulkhead.prices
            (provider, model, effective_from, input_per_mtok, output_per_mtok, cached_input_per_mtok, cache_write_per_mtok)
        values
            (set_price.provider, set_price.model, set_price.effective_from, set_price.input_per_mtok,
             set_price.output_per_mtok, set_price.cached_input_per_mtok, set_price.cache_write_per_mtok);
    exception when unique_violation then
        raise exception 'a price for % % effective from % already exists', provider, model, effective_from
            using errcode = '23505',
                  detail = 'Price versions are immutable.',
                  hint = 'Add a version with a later effective_from.';
    end;
end
$$;
comment on function bulkhead.set_price(text, text, numeric, numeric, numeric, numeric, timestamptz) is
    'Adds a price version (USD per million tokens) for a provider''s model. bulkhead_admin only.';
revoke all on function bulkhead.set_price(text, text, numeric, numeric, numeric, numeric, timestamptz) from public;
grant execute on function bulkhead.set_price(text, text, numeric, numeric, numeric, numeric, timestamptz) to bulkhead_admin;
