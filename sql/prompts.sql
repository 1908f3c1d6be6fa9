-- Per-tenant prompts: global skeletons (bulkhead_admin, versioned), per-tenant versions holding
-- slot values and an optional body that extends the skeleton, one active pointer per tenant and
-- template with its release history. Checking and rendering templates is Rust (policy/src/prompts.rs).
--
-- Published skeletons and versions are immutable: no role may UPDATE them, and a version's rows
-- go only with its tenant (a deferred check refuses a DELETE whose tenant still exists at
-- commit). That is what lets every backend cache compiled templates by (tenant, name, version).
--
-- The writing functions are SECURITY DEFINER, owned by bulkhead_meter: nobody writes these tables
-- directly, so every row passed the template checks. They act for the transaction's tenant when
-- one is set (and refuse another tenant's id), else they enter the named tenant as set_tenant
-- would, so a JWT-bound session stays within its tenant.

create table bulkhead.prompt_skeletons (
    template_name text        not null,
    version       int         not null,
    body          text        not null,
    -- The slots the body reads (slots.<name>): what a tenant's version may set.
    slots         text[]      not null,
    created_at    timestamptz not null default pg_catalog.clock_timestamp(),
    created_by    text        not null,
    constraint prompt_skeletons_pkey primary key (template_name, version),
    constraint prompt_skeletons_version_positive check (version >= 1)
);
comment on table bulkhead.prompt_skeletons is
    'Global prompt skeletons (bulkhead_admin), versioned and immutable: the shared structure and its named slots.';

-- One row per tenant and template: the version counter (its lock serialises publishing) and the
-- active pointer (its lock serialises activations and rollbacks).
create table bulkhead.prompt_templates (
    tenant_id      uuid        not null,
    template_name  text        not null,
    latest_version int         not null,
    active_version int,
    updated_at     timestamptz not null default pg_catalog.clock_timestamp(),
    constraint prompt_templates_pkey primary key (tenant_id, template_name),
    constraint prompt_templates_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id),
    constraint prompt_templates_active_published check (active_version between 1 and latest_version)
);

create table bulkhead.prompt_versions (
    tenant_id        uuid        not null,
    -- The row's own identity: renders cache by it, so a version number that a rolled-back
    -- publish used and a later publish reuses is never mistaken for the first.
    id               uuid        not null default pg_catalog.gen_random_uuid(),
    template_name    text        not null,
    version          int         not null,
    -- The skeleton version this one extends: a later skeleton never changes a published version.
    skeleton_version int         not null,
    slots            jsonb       not null,
    body             text,
    created_at       timestamptz not null default pg_catalog.clock_timestamp(),
    created_by       text        not null,
    constraint prompt_versions_pkey primary key (tenant_id, template_name, version),
    constraint prompt_versions_id_key unique (tenant_id, id),
    constraint prompt_versions_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id),
    constraint prompt_versions_template_fkey foreign key (tenant_id, template_name)
        references bulkhead.prompt_templates (tenant_id, template_name)
);

-- Every pointer move: who, when, from, to, and whether it skipped the eval gate.
create table bulkhead.prompt_releases (
    tenant_id     uuid        not null,
    -- Random (bulkhead._random_id): a sequence would tell each tenant how often the others release.
    id            bigint      not null default bulkhead._random_id(),
    template_name text        not null,
    -- The move's place in this template's history (1, 2, ...), numbered under the pointer's row
    -- lock: the order rollbacks walk back through.
    seq           int         not null,
    action        text        not null,
    from_version  int,
    to_version    int         not null,
    forced        boolean     not null,
    reason        text,
    -- A rollback names the activation it undoes; rollbacks walk back through the activations
    -- no rollback has undone yet, newest first.
    undoes        bigint,
    released_by   text        not null,
    released_at   timestamptz not null default pg_catalog.clock_timestamp(),
    -- What the eval gate (evals.sql) said: passed (eval_run_id passed the tenant's eval set
    -- whose digest is eval_set_digest), forced (past a refusal, naming the run that failed or
    -- none), empty_set_allowed (no cases, and bulkhead.eval_gate_empty_set = allow), rollback.
    gate          text        not null,
    eval_run_id   bigint,
    eval_set_digest text,
    constraint prompt_releases_pkey primary key (tenant_id, id),
    constraint prompt_releases_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id),
    constraint prompt_releases_version_fkey foreign key (tenant_id, template_name, to_version)
        references bulkhead.prompt_versions (tenant_id, template_name, version),
    constraint prompt_releases_undoes_once unique (tenant_id, undoes),
    constraint prompt_releases_seq_key unique (tenant_id, template_name, seq),
    constraint prompt_releases_action_known check (action in ('activate', 'rollback')),
    constraint prompt_releases_rollback_undoes check ((action = 'rollback') = (undoes is not null)),
    constraint prompt_releases_reason_length check (pg_catalog.char_length(reason) <= 1000),
    constraint prompt_releases_gate_known check (gate in ('passed', 'forced', 'empty_set_allowed', 'rollback')),
    constraint prompt_releases_forced_gate check (forced = (gate = 'forced')),
    constraint prompt_releases_forced_reason check (not forced or reason is not null)
);

-- The eval gate's evidence: version V of template T passed tenant X's eval set, as it was
-- (its digest), in run R. Written only when a run passes (evals.sql); activate_prompt requires
-- a row here for the set's current digest unless force => true.
create table bulkhead.prompt_eval_passes (
    tenant_id     uuid        not null,
    template_name text        not null,
    version       int         not null,
    eval_run_id   bigint      not null,
    set_digest    text        not null,
    passed_at     timestamptz not null default pg_catalog.clock_timestamp(),
    constraint prompt_eval_passes_pkey primary key (tenant_id, template_name, version, eval_run_id),
    constraint prompt_eval_passes_tenant_fkey foreign key (tenant_id) references bulkhead.tenants (id),
    constraint prompt_eval_passes_version_fkey foreign key (tenant_id, template_name, version)
        references bulkhead.prompt_versions (tenant_id, template_name, version)
);

alter table bulkhead.prompt_skeletons enable row level security;
alter table bulkhead.prompt_skeletons force row level security;
alter table bulkhead.prompt_templates enable row level security;
alter table bulkhead.prompt_templates force row level security;
alter table bulkhead.prompt_versions enable row level security;
alter table bulkhead.prompt_versions force row level security;
alter table bulkhead.prompt_releases enable row level security;
alter table bulkhead.prompt_releases force row level security;
alter table bulkhead.prompt_eval_passes enable row level security;
alter table bulkhead.prompt_eval_passes force row level security;

create policy readable on bulkhead.prompt_skeletons for select using (true);
create policy publisher on bulkhead.prompt_skeletons for insert to bulkhead_meter with check (true);
create policy tenant_isolation on bulkhead.prompt_templates
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));
create policy tenant_isolation on bulkhead.prompt_versions
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));
create policy tenant_isolation on bulkhead.prompt_releases
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));
create policy tenant_isolation on bulkhead.prompt_eval_passes
    using (tenant_id = (select bulkhead.current_tenant()))
    with check (tenant_id = (select bulkhead.current_tenant()));

grant select on bulkhead.prompt_skeletons to bulkhead_app, bulkhead_worker, bulkhead_admin, bulkhead_meter;
grant select on bulkhead.prompt_templates, bulkhead.prompt_versions, bulkhead.prompt_releases,
    bulkhead.prompt_eval_passes to bulkhead_app, bulkhead_worker, bulkhead_admin, bulkhead_meter;
grant insert on bulkhead.prompt_skeletons, bulkhead.prompt_versions, bulkhead.prompt_releases to bulkhead_meter;
grant insert, update on bulkhead.prompt_templates to bulkhead_meter;
-- Tenant deletion only (delete_tenant runs as bulkhead_admin); see the deferred check below.
grant delete on bulkhead.prompt_templates, bulkhead.prompt_versions, bulkhead.prompt_releases,
    bulkhead.prompt_eval_passes to bulkhead_admin;

select pg_catalog.pg_extension_config_dump('bulkhead.prompt_skeletons', '');
select pg_catalog.pg_extension_config_dump('bulkhead.prompt_templates', '');
select pg_catalog.pg_extension_config_dump('bulkhead.prompt_versions', '');
select pg_catalog.pg_extension_config_dump('bulkhead.prompt_releases', '');
select pg_catalog.pg_extension_config_dump('bulkhead.prompt_eval_passes', '');

-- Immutability, for every role (the table owner included).
create function bulkhead._refuse_prompt_change()
returns trigger
language plpgsql
security invoker
set search_path to pg_catalog, pg_temp
as $$
begin
    raise exception '% of % is not allowed', tg_op, tg_table_name
        using errcode = '55000',
              detail = 'Published prompt skeletons, versions and releases are immutable; publish a new version instead.',
              hint = 'A tenant''s prompt rows are removed only by bulkhead.delete_tenant().';
end
$$;

-- SECURITY DEFINER (as bulkhead_meter, which may list every tenant): the check runs at commit,
-- as whichever role is current then, and must see the tenant whatever that role may see.
create function bulkhead._check_prompt_row_deleted_with_tenant()
returns trigger
language plpgsql
security definer
set search_path to pg_catalog, pg_temp
as $$
begin
    if exists (select from bulkhead.tenants t where t.id = old.tenant_id) then
        raise exception 'prompt rows of tenant % can only be deleted with the tenant', old.tenant_id
            using errcode = '55000',
                  detail = 'Published prompt versions and their history are immutable while the tenant exists.',
                  hint = 'Use bulkhead.delete_tenant() to remove a tenant and all its data.';
    end if;
    return null;
end
$$;

create trigger prompt_skeletons_immutable before update or delete on bulkhead.prompt_skeletons
    for each row execute function bulkhead._refuse_prompt_change();
create trigger prompt_skeletons_no_truncate before truncate on bulkhead.prompt_skeletons
    for each statement execute function bulkhead._refuse_prompt_change();
create trigger prompt_versions_immutable before update on bulkhead.prompt_versions
    for each row execute function bulkhead._refuse_prompt_change();
create trigger prompt_releases_immutable before update on bulkhead.prompt_releases
    for each row execute function bulkhead._refuse_prompt_change();
create trigger prompt_versions_no_truncate before truncate on bulkhead.prompt_versions
    for each statement execute function bulkhead._refuse_prompt_change();
create trigger prompt_releases_no_truncate before truncate on bulkhead.prompt_releases
    for each statement execute function bulkhead._refuse_prompt_change();
-- Checked at commit: by then delete_tenant has removed the tenant row itself.
create constraint trigger prompt_versions_deleted_with_tenant after delete on bulkhead.prompt_versions
    deferrable initially deferred
    for each row execute function bulkhead._check_prompt_row_deleted_with_tenant();
create constraint trigger prompt_releases_deleted_with_tenant after delete on bulkhead.prompt_releases
    deferrable initially deferred
    for each row execute function bulkhead._check_prompt_row_deleted_with_tenant();
create trigger prompt_eval_passes_immutable before update on bulkhead.prompt_eval_passes
    for each row execute function bulkhead._refuse_prompt_change();
create trigger prompt_eval_passes_no_truncate before truncate on bulkhead.prompt_eval_passes
    for each statement execute function bulkhead._refuse_prompt_change();
create constraint trigger prompt_eval_passes_deleted_with_tenant after delete on bulkhead.prompt_eval_passes
    deferrable initially deferred
    for each row execute function bulkhead._check_prompt_row_deleted_with_tenant();

-- Who called: the role the session set (SET ROLE), else the login role. Inside a SECURITY
-- DEFINER function current_user is the owner, so this is what the history records.
create function bulkhead._caller()
returns text
language sql stable
security invoker
set search_path to pg_catalog, pg_temp
as $$
    select coalesce(nullif(pg_catalog.current_setting('role'), 'none'), session_user::text)
$$;

-- Which tenant a prompt call acts for: the transaction's, or (with none set) the one named,
-- entered as set_tenant would. Returns the previous context for _leave_tenant.
create function bulkhead._act_for_tenant(tenant uuid, action text)
returns text
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
declare
    current uuid := bulkhead.current_tenant();
begin
    if tenant is null then
        raise exception 'tenant_id must not be null'
            using errcode = '22004', detail = pg_catalog.format('bulkhead.%s needs the tenant it acts for.', action);
    end if;
    if current is not null and current <> tenant then
        raise exception 'this transaction acts for another tenant'
            using errcode = '42501',
                  detail = pg_catalog.format('bulkhead.%s can only act for the current tenant.', action);
    end if;
    return bulkhead._enter_tenant(tenant);
end
$$;

-- Adds a skeleton version (bulkhead_admin); returns its number.
create function bulkhead.set_skeleton(template_name text, body text)
returns int
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    declared text[];
    new_version int;
begin
    if template_name is null or body is null then
        raise exception 'template_name and body are required'
            using errcode = '22004', detail = 'A skeleton is a named template body.';
    end if;
    declared := bulkhead._check_skeleton(template_name, body);
    -- Two admins publishing at once: the loser of the (template_name, version) key numbers
    -- again. No lock: an advisory key (as before) is open to any role that can connect, which
    -- could hold it forever.
    loop
        select coalesce(max(s.version), 0) + 1 into new_version
        from bulkhead.prompt_skeletons s where s.template_name = set_skeleton.template_name;
        begin
            insert into bulkhead.prompt_skeletons (template_name, version, body, slots, created_by)
            values (set_skeleton.template_name, new_version, set_skeleton.body, declared, bulkhead._caller());
            return new_version;
        exception when unique_violation then
            if pg_catalog.current_setting('transaction_isolation') <> 'read committed' then
                raise;  -- a snapshot that cannot see the winner would number the same again
            end if;
        end;
    end loop;
end
$$;
comment on function bulkhead.set_skeleton(text, text) is
    'Adds a version of a global prompt skeleton and returns its number. bulkhead_admin only.';

-- Publishes a tenant's new version of a template (not yet active); returns its number.
create function bulkhead.publish_prompt(tenant_id uuid, template_name text, slots jsonb, body text default null)
returns int
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    previous text;
    skeleton bulkhead.prompt_skeletons;
    new_version int;
begin
    if template_name is null or slots is null then
        raise exception 'template_name and slots are required'
            using errcode = '22004', detail = 'Pass ''{}'' for a version that sets no slots.';
    end if;
    previous := bulkhead._act_for_tenant(publish_prompt.tenant_id, 'publish_prompt');
    select s.* into skeleton from bulkhead.prompt_skeletons s
    where s.template_name = publish_prompt.template_name
    order by s.version desc limit 1;
    if not found then
        raise exception 'no skeleton named %', pg_catalog.quote_literal(template_name)
            using errcode = '42704', hint = 'bulkhead_admin adds skeletons with bulkhead.set_skeleton(name, body).';
    end if;
    perform bulkhead._check_prompt_version(template_name, skeleton.body, slots::text, body);

    insert into bulkhead.prompt_templates as t (tenant_id, template_name, latest_version)
    values (publish_prompt.tenant_id, publish_prompt.template_name, 1)
    on conflict on constraint prompt_templates_pkey
    do update set latest_version = t.latest_version + 1, updated_at = pg_catalog.clock_timestamp()
    returning t.latest_version into new_version;
    insert into bulkhead.prompt_versions (tenant_id, template_name, version, skeleton_version, slots, body, created_by)
    values (publish_prompt.tenant_id, publish_prompt.template_name, new_version, skeleton.version,
            publish_prompt.slots, publish_prompt.body, bulkhead._caller());
    perform bulkhead._leave_tenant(previous);
    return new_version;
end
$$;
comment on function bulkhead.publish_prompt(uuid, text, jsonb, text) is
    'Publishes a tenant''s new, immutable version of a prompt template (checked, not yet active); returns its number.';

-- Moves the active pointer: one history row, then one locked update. The row comes first: the
-- eval gate's trigger on the pointer (evals.sql) lets through only a move that its release row
-- describes, and checks the gate again itself, so no path around these functions skips it.
create function bulkhead._move_prompt_pointer(
    tenant uuid, name text, target int, move_action text, why text, undone bigint,
    gate text, run bigint, digest text
)
returns int
language plpgsql volatile
security invoker
set search_path to pg_catalog, pg_temp
as $$
begin
    insert into bulkhead.prompt_releases
        (tenant_id, template_name, seq, action, from_version, to_version, forced, reason, undoes, released_by,
         gate, eval_run_id, eval_set_digest)
    select tenant, name, coalesce(last.seq, 0) + 1, move_action, t.active_version,
           target, gate = 'forced', why, undone, bulkhead._caller(), gate, run, digest
    from bulkhead.prompt_templates t
    left join lateral (select r.seq from bulkhead.prompt_releases r
                       where r.tenant_id = tenant and r.template_name = name
                       order by r.seq desc limit 1) last on true
    where t.tenant_id = tenant and t.template_name = name;
    update bulkhead.prompt_templates t
    set active_version = target, updated_at = pg_catalog.clock_timestamp()
    where t.tenant_id = tenant and t.template_name = name;
    return target;
end
$$;

-- Makes a published version the active one, at once (no deploy, no cache to expire).
create function bulkhead.activate_prompt(
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
comment on function bulkhead.activate_prompt(uuid, text, int, boolean, text) is
    'Makes a published version of a tenant''s prompt the active one if it passed the tenant''s eval set (or, for bulkhead_admin, force => true with a reason), recording who, when, from, to and the gate''s verdict.';

-- Undoes the latest activation: the pointer goes back to the version that activation replaced.
create function bulkhead.rollback_prompt(tenant_id uuid, template_name text)
returns int
language plpgsql volatile
security definer
set search_path to pg_catalog, pg_temp
as $$
declare
    previous text;
    head bulkhead.prompt_templates;
    target int;
    undone bigint;
begin
    if template_name is null then
        raise exception 'template_name is required' using errcode = '22004';
    end if;
    previous := bulkhead._act_for_tenant(rollback_prompt.tenant_id, 'rollback_prompt');
    select t.* into head from bulkhead.prompt_templates t
    where t.tenant_id = rollback_prompt.tenant_id and t.template_name = rollback_prompt.template_name
    for update;
    if head.active_version is null then
        raise exception 'prompt % has no active version to roll back', pg_catalog.quote_literal(template_name)
            using errcode = '55000';
    end if;
    -- The newest activation no rollback has undone made the current version active (each
    -- activation pushes, each rollback pops): going back means going to its from_version.
    select r.id, r.from_version into undone, target from bulkhead.prompt_releases r
    where r.tenant_id = rollback_prompt.tenant_id and r.template_name = rollback_prompt.template_name
      and r.action = 'activate'
      and not exists (select from bulkhead.prompt_releases u
                      where u.tenant_id = r.tenant_id and u.undoes = r.id)
    order by r.seq desc limit 1;
    if target is null then
        raise exception 'prompt % has no earlier version to roll back to', pg_catalog.quote_literal(template_name)
            using errcode = '55000',
                  detail = 'Every activation still in effect started from no version; activate another version instead.';
    end if;
    perform bulkhead._move_prompt_pointer(rollback_prompt.tenant_id, rollback_prompt.template_name,
                                          target, 'rollback', null, undone, 'rollback', null, null);
    perform bulkhead._leave_tenant(previous);
    return target;
end
$$;
comment on function bulkhead.rollback_prompt(uuid, text) is
    'Moves a tenant''s prompt back to the version its latest activation replaced; returns the version now active.';

-- Rendering is Rust (extension/src/prompts.rs): it reads the current tenant's version under row
-- level security and keeps it compiled per backend. It takes no template source from the caller,
-- so no session can plant a compiled template under another tenant's key. The SQL functions pass
-- vars as JSON text, which Rust parses itself (a value nested too deeply is then a clear 22023).
create function bulkhead.render_prompt(template_name text, vars jsonb default '{}')
returns text
language sql stable parallel restricted
security invoker
set search_path to pg_catalog, pg_temp
as $$ select bulkhead._render_prompt(template_name, vars::text) $$;
comment on function bulkhead.render_prompt(text, jsonb) is
    'Renders the current tenant''s active version of a prompt template with the request variables.';

create function bulkhead.render_prompt_version(template_name text, version int, vars jsonb default '{}')
returns text
language sql stable parallel restricted
security invoker
set search_path to pg_catalog, pg_temp
as $$ select bulkhead._render_prompt_version(template_name, version, vars::text) $$;
comment on function bulkhead.render_prompt_version(text, int, jsonb) is
    'Renders one version of the current tenant''s prompt template, active or not (for evals).';

alter function bulkhead.set_skeleton(text, text) owner to bulkhead_meter;
alter function bulkhead.publish_prompt(uuid, text, jsonb, text) owner to bulkhead_meter;
alter function bulkhead.activate_prompt(uuid, text, int, boolean, text) owner to bulkhead_meter;
alter function bulkhead.rollback_prompt(uuid, text) owner to bulkhead_meter;
alter function bulkhead._check_prompt_row_deleted_with_tenant() owner to bulkhead_meter;

revoke all on function bulkhead._refuse_prompt_change() from public;
revoke all on function bulkhead._check_prompt_row_deleted_with_tenant() from public;
revoke all on function bulkhead._act_for_tenant(uuid, text) from public;
revoke all on function bulkhead._caller() from public;
revoke all on function bulkhead._move_prompt_pointer(uuid, text, int, text, text, bigint, text, bigint, text) from public;
revoke all on function bulkhead.set_skeleton(text, text) from public;
revoke all on function bulkhead.publish_prompt(uuid, text, jsonb, text) from public;
revoke all on function bulkhead.activate_prompt(uuid, text, int, boolean, text) from public;
revoke all on function bulkhead.rollback_prompt(uuid, text) from public;
revoke all on function bulkhead.render_prompt(text, jsonb) from public;
revoke all on function bulkhead.render_prompt_version(text, int, jsonb) from public;
revoke all on function bulkhead._check_skeleton(text, text) from public;
revoke all on function bulkhead._check_prompt_version(text, text, text, text) from public;
revoke all on function bulkhead._render_prompt(text, text) from public;
revoke all on function bulkhead._render_prompt_version(text, int, text) from public;

grant execute on function bulkhead._act_for_tenant(uuid, text), bulkhead._caller(), bulkhead._move_prompt_pointer(uuid, text, int, text, text, bigint, text, bigint, text),
    bulkhead._check_skeleton(text, text), bulkhead._check_prompt_version(text, text, text, text),
    bulkhead._enter_tenant(uuid) to bulkhead_meter;
grant execute on function bulkhead.set_skeleton(text, text) to bulkhead_admin;
grant execute on function bulkhead.publish_prompt(uuid, text, jsonb, text),
    bulkhead.activate_prompt(uuid, text, int, boolean, text), bulkhead.rollback_prompt(uuid, text)
    to bulkhead_app, bulkhead_admin;
grant execute on function bulkhead.render_prompt(text, jsonb), bulkhead.render_prompt_version(text, int, jsonb),
    bulkhead._render_prompt(text, text), bulkhead._render_prompt_version(text, int, text)
    to bulkhead_app, bulkhead_worker, bulkhead_admin;
