-- Prompts through the SQL API: skeletons, tenant versions, activation and rollback, rendering,
-- immutability, and the sandbox's refusals with their SQLSTATEs.
-- Runs as non-superuser members of bulkhead_admin (control plane) and bulkhead_app (tenants).
\set SHOW_CONTEXT never
begin;
set client_min_messages = warning;
create role regress_prm_admin in role bulkhead_admin;
create role regress_prm_app in role bulkhead_app;
insert into bulkhead.tenants (id, slug, name, pinecone_namespace) values
    ('00000000-0000-4000-8000-00000000000a', 'prm-a', 'Acme', 'tenant-a'),
    ('00000000-0000-4000-8000-00000000000b', 'prm-b', 'Globex', 'tenant-b');

-- Runs a statement; reports its result, or its SQLSTATE and message.
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
grant execute on function pg_temp.attempt(text) to public;

set local role regress_prm_admin;
-- Skeletons: versioned; the slots are what the body reads.
select bulkhead.set_skeleton('support', $t$You are {{ slots.display_name }}'s assistant.
{% block tone %}Tone: {{ slots.persona_tone | default('friendly') }}.{% endblock %}
{% if slots.banned_topics %}Never discuss: {{ slots.banned_topics | join(', ') }}.
{% endif %}Question: {{ vars.question }}$t$) as skeleton_v1;
select template_name, version, slots from bulkhead.prompt_skeletons order by version;
-- Refused at publish: parse errors (with line and column) and constructs outside the sandbox.
select pg_temp.attempt($q$select bulkhead.set_skeleton('bad', E'line one\n{% if slots.x %}\nunclosed')$q$) as unclosed_if;
select pg_temp.attempt($q$select bulkhead.set_skeleton('bad', '{{ "x" * 99999999 }}')$q$) as string_repeat;
select pg_temp.attempt($q$select bulkhead.set_skeleton('bad', '{% set a = slots.x %}{% for i in slots.n %}{% set a = a ~ a %}{% endfor %}{{ a }}')$q$) as doubling_loop;
select pg_temp.attempt($q$select bulkhead.set_skeleton('bad', '{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}')$q$) as recursive_macro;
select pg_temp.attempt($q$select bulkhead.set_skeleton('bad', '{% include "support" %}')$q$) as include;
select pg_temp.attempt($q$select bulkhead.set_skeleton('bad', '{% set a = 0 %}{% for c in slots.s %}{% set a = [[[a]]] %}{% endfor %}{{ a == a }}')$q$) as nesting_literal;
select pg_temp.attempt($q$select bulkhead.set_skeleton('bad', '{% set a = slots.x %}{% set a = [a, a] %}{% set a = [a, a] %}{{ a | join }}')$q$) as doubling_literal;
select pg_temp.attempt($q$select bulkhead.set_skeleton('bad', '{{ other_tenant }}')$q$) as unknown_variable;
select pg_temp.attempt($q$select bulkhead.set_skeleton('Bad Name', 'x')$q$) as bad_name;
select pg_temp.attempt($q$select bulkhead.set_skeleton('bad', repeat('x', 70000))$q$) as too_large;
select pg_temp.attempt($q$select bulkhead.set_skeleton(null, 'x')$q$) as null_name;

-- Tenant versions: slot values, and for B a body that overrides a block.
select bulkhead.publish_prompt('00000000-0000-4000-8000-00000000000a', 'support',
    '{"display_name": "Acme", "persona_tone": "formal", "banned_topics": ["pricing", "competitors"]}') as a_v1;
select bulkhead.publish_prompt('00000000-0000-4000-8000-00000000000b', 'support',
    '{"display_name": "Globex", "banned_topics": []}',
    '{% extends "support" %}{% block tone %}Tone: playful.{% endblock %}') as b_v1;
select pg_temp.attempt($q$select bulkhead.publish_prompt('00000000-0000-4000-8000-00000000000a', 'support', '{"dispaly_name": "typo"}')$q$) as unknown_slot;
select pg_temp.attempt($q$select bulkhead.publish_prompt('00000000-0000-4000-8000-00000000000a', 'support', '{}', 'no extends')$q$) as body_without_extends;
select pg_temp.attempt($q$select bulkhead.publish_prompt('00000000-0000-4000-8000-00000000000a', 'nosuch', '{}')$q$) as no_skeleton;
select pg_temp.attempt($q$select bulkhead.publish_prompt('00000000-0000-4000-8000-00000000000a', 'support', '[1]')$q$) as slots_not_object;
select pg_temp.attempt($q$select bulkhead.publish_prompt('00000000-0000-4000-8000-00000000000a', 'support', jsonb_build_object('display_name', (repeat('[', 300) || repeat(']', 300))::jsonb))$q$) as slots_too_deep;
select bulkhead.activate_prompt('00000000-0000-4000-8000-00000000000a', 'support', 1);
select bulkhead.activate_prompt('00000000-0000-4000-8000-00000000000b', 'support', 1);
select pg_temp.attempt($q$select bulkhead.activate_prompt('00000000-0000-4000-8000-00000000000a', 'support', 9)$q$) as unpublished;

-- Each tenant renders its own tone and banned topics; slot values are data, not template code.
reset role;
set local role regress_prm_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
select bulkhead.render_prompt('support', '{"question": "What does it cost?"}') as a_renders;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select bulkhead.render_prompt('support', '{"question": "{{ slots }}{% include \"x\" %}"}') as b_renders;
-- The tenant acts for itself: a new version, activated and rolled back, without any deploy.
select bulkhead.publish_prompt('00000000-0000-4000-8000-00000000000b', 'support',
    '{"display_name": "Globex", "banned_topics": ["layoffs"]}') as b_v2;
create temp table before_activation as select bulkhead.render_prompt('support', '{"question": "q"}') as text;
select text as b_still_v1 from before_activation;
select bulkhead.activate_prompt('00000000-0000-4000-8000-00000000000b', 'support', 2, reason => 'new policy');
select bulkhead.render_prompt('support', '{"question": "q"}') as b_v2_active;
select bulkhead.rollback_prompt('00000000-0000-4000-8000-00000000000b', 'support') as rolled_back_to;
select bulkhead.render_prompt('support', '{"question": "q"}') = (select text from before_activation) as rollback_restores_exact_text;
set local bulkhead.prompt_cache = off;
select bulkhead.render_prompt('support', '{"question": "q"}') = (select text from before_activation) as same_text_compiled_afresh;
set local bulkhead.prompt_cache = on;
select pg_temp.attempt($q$select bulkhead.rollback_prompt('00000000-0000-4000-8000-00000000000b', 'support')$q$) as nothing_earlier;
-- Rollbacks walk back through activations, newest first: 1, 2, 1, 2, then back to 1, 2, 1.
select bulkhead.activate_prompt('00000000-0000-4000-8000-00000000000b', 'support', v) from unnest(array[2, 1, 2]) v;
select bulkhead.rollback_prompt('00000000-0000-4000-8000-00000000000b', 'support') as back_1,
       bulkhead.rollback_prompt('00000000-0000-4000-8000-00000000000b', 'support') as back_2,
       bulkhead.rollback_prompt('00000000-0000-4000-8000-00000000000b', 'support') as back_3;
select pg_temp.attempt($q$select bulkhead.rollback_prompt('00000000-0000-4000-8000-00000000000b', 'support')$q$) as back_4;
-- A publish rolled back at a savepoint frees its version number; the next publish reuses it,
-- and this backend, which rendered the rolled-back text, renders the new one.
savepoint before_publish;
select bulkhead.publish_prompt('00000000-0000-4000-8000-00000000000b', 'support', '{"display_name": "Rolled back", "banned_topics": []}') as v3_rolled_back;
select bulkhead.render_prompt_version('support', 3, '{"question": "q"}') like '%Rolled back%' as renders_uncommitted_v3;
rollback to savepoint before_publish;
select bulkhead.publish_prompt('00000000-0000-4000-8000-00000000000b', 'support', '{"display_name": "Kept", "banned_topics": []}') as v3_again;
select bulkhead.render_prompt_version('support', 3, '{"question": "q"}') like '%Kept%' as renders_the_new_v3;
select template_name, action, from_version, to_version, forced, reason, released_by
from bulkhead.prompt_releases order by seq;
select bulkhead.render_prompt_version('support', 2, '{"question": "q"}') as b_pinned_v2;

-- Render errors: strict variables, the output cap, fuel; never a crash.
select pg_temp.attempt($q$select bulkhead.render_prompt('support')$q$) as missing_var;
select pg_temp.attempt($q$select bulkhead.render_prompt('support', '{"question": 7}')$q$) as number_var;
select pg_temp.attempt($q$select bulkhead.render_prompt('support', jsonb_build_object('question', repeat('q', 300000)))$q$) as over_output_cap;
select pg_temp.attempt($q$select bulkhead.render_prompt('support', '[]')$q$) as vars_not_object;
select pg_temp.attempt($q$select bulkhead.render_prompt('support', jsonb_build_object('question', (repeat('[', 300) || repeat(']', 300))::jsonb))$q$) as vars_too_deep;
select pg_temp.attempt($q$select bulkhead.render_prompt('nosuch')$q$) as no_active_version;
reset role;
select bulkhead.set_skeleton('divide', '{{ 10 is divisibleby(vars.k) }}');
select bulkhead.publish_prompt('00000000-0000-4000-8000-00000000000b', 'divide', '{}');
select bulkhead.activate_prompt('00000000-0000-4000-8000-00000000000b', 'divide', 1);
set local role regress_prm_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000b');
select pg_temp.attempt($q$select bulkhead.render_prompt('divide', '{"k": 0}')$q$) as divide_by_zero;
select pg_temp.attempt($q$select bulkhead.render_prompt_version('support', 99)$q$) as no_such_version;
select pg_temp.attempt($q$select bulkhead.render_prompt(null)$q$) as null_name;
select bulkhead.set_tenant(null);
select pg_temp.attempt($q$select bulkhead.render_prompt('support', '{"question": "q"}')$q$) as no_tenant;
reset role;
set local role regress_prm_admin;
select bulkhead.set_skeleton('loops', '{% for a in vars.n %}{% for b in vars.n %}{% for c in vars.n %}{% if a == c %}{% endif %}{% endfor %}{% endfor %}{% endfor %}done');
select bulkhead.publish_prompt('00000000-0000-4000-8000-00000000000a', 'loops', '{}');
select bulkhead.activate_prompt('00000000-0000-4000-8000-00000000000a', 'loops', 1);
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
select pg_temp.attempt($q$select bulkhead.render_prompt('loops', jsonb_build_object('n', (select jsonb_agg(i) from generate_series(1, 200) i)))$q$) as out_of_fuel;
select bulkhead.render_prompt('loops', '{"n": [1, 2]}') as small_loop;
reset role;
set local bulkhead.prompt_output_limit = '1kB';
set local role regress_prm_app;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
select pg_temp.attempt($q$select bulkhead.render_prompt('support', jsonb_build_object('question', repeat('q', 2000)))$q$) as over_1kb_cap;
select pg_temp.attempt($q$set bulkhead.prompt_output_limit = '1GB'$q$) as app_cannot_raise_cap;

-- Immutability: no role updates a published version; a delete must take its tenant with it.
reset role;
set local role regress_prm_admin;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
select pg_temp.attempt($q$update bulkhead.prompt_versions set slots = '{}'$q$) as admin_update;
set constraints all immediate;
select bulkhead.publish_prompt('00000000-0000-4000-8000-00000000000a', 'loops', '{}') as loops_v2_never_released;
select pg_temp.attempt($q$delete from bulkhead.prompt_versions where template_name = 'loops' and version = 2$q$) as admin_delete_version;
select pg_temp.attempt($q$delete from bulkhead.prompt_releases$q$) as admin_delete_history;
reset role;
insert into bulkhead.eval_runs (tenant_id, id, template_name, version, status, started_by)
values ('00000000-0000-4000-8000-00000000000a', 1, 'loops', 1, 'passed', 'regress');
insert into bulkhead.prompt_eval_passes (tenant_id, template_name, version, eval_run_id, set_digest)
values ('00000000-0000-4000-8000-00000000000a', 'loops', 1, 1, 'regress');
set local role regress_prm_admin;
select bulkhead.set_tenant('00000000-0000-4000-8000-00000000000a');
select pg_temp.attempt($q$delete from bulkhead.prompt_eval_passes$q$) as admin_delete_eval_pass;
reset role;
select pg_temp.attempt($q$update bulkhead.prompt_versions set body = 'x'$q$) as owner_update;
select pg_temp.attempt($q$update bulkhead.prompt_skeletons set body = 'x'$q$) as owner_update_skeleton;
select pg_temp.attempt($q$delete from bulkhead.prompt_skeletons$q$) as owner_delete_skeleton;
select pg_temp.attempt($q$update bulkhead.prompt_eval_passes set version = 1$q$) as owner_update_eval_pass;
select pg_temp.attempt($q$truncate bulkhead.prompt_versions cascade$q$) as owner_truncate;
set constraints all deferred;
-- Deleting the tenant removes its prompts.
set local role regress_prm_admin;
select bulkhead.delete_tenant('00000000-0000-4000-8000-00000000000a') is not null as deleted;
set constraints all immediate;
reset role;
select count(*) as a_versions_left from bulkhead.prompt_versions where tenant_id = '00000000-0000-4000-8000-00000000000a';
rollback;
