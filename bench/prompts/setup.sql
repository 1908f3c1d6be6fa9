-- Prompt benchmark fixtures: 100 tenants, each with an active version of one realistic support
-- prompt (about 1 kB rendered); every third tenant overrides a block with its own body.
set client_min_messages = warning;
do $$
begin
    if not exists (select from pg_roles where rolname = 'bulkhead_bench_app') then
        create role bulkhead_bench_app login in role bulkhead_app;
    end if;
end
$$;
create schema if not exists bench;
create or replace function bench.tenant_id(i int) returns uuid language sql immutable
    as $$ select ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid $$;
insert into bulkhead.tenants (id, slug, name, pinecone_namespace)
select bench.tenant_id(i), 'bench-' || i, 'Bench ' || i, 'tenant-' || bench.tenant_id(i)
from generate_series(1, 100) i;

select bulkhead.set_skeleton('support', $t$You are the support assistant of {{ slots.display_name }}.
{% block persona %}Speak in a {{ slots.persona_tone | default('friendly') }} tone. Be accurate and brief.{% endblock %}
{% if slots.banned_topics %}
Never discuss these topics, and say so politely if asked:
{% for topic in slots.banned_topics %}- {{ topic }}
{% endfor %}{% endif %}
{% block instructions %}{{ slots.custom_instructions | default('') }}{% endblock %}

Context documents:
{% for doc in vars.documents %}[{{ loop.index }}] {{ doc.title }}: {{ doc.text }}
{% endfor %}
Customer ({{ vars.customer_name | default('anonymous') }}) asks: {{ vars.question }}$t$);

select bulkhead.publish_prompt(bench.tenant_id(i), 'support',
    jsonb_build_object(
        'display_name', 'Bench ' || i,
        'persona_tone', (array['formal', 'warm', 'playful'])[1 + i % 3],
        'banned_topics', jsonb_build_array('pricing of competitors', 'legal advice', 'topic ' || i),
        'custom_instructions', 'Always cite the document number. Escalate refunds over $' || i * 10 || '.'),
    case when i % 3 = 0 then '{% extends "support" %}{% block persona %}Speak like a pirate, kindly.{% endblock %}' end)
from generate_series(1, 100) i;
select bulkhead.activate_prompt(bench.tenant_id(i), 'support', 1) from generate_series(1, 100) i;

-- make db checks passwords (PGPASSFILE holds the development one).
alter role bulkhead_bench_app password :'dev_password';
