//! Prompt templates: the publish-time checks and rendering, over `bulkhead_policy::prompts`.
//!
//! Rendering reads the current tenant's version itself, under row level security, and keeps it
//! compiled per backend by the version row's own id: versions are immutable, so an entry never
//! goes stale; a version number reused after a rolled-back publish, or a deleted tenant's version,
//! has no row this query can find; and no caller can hand the cache a template source.

use crate::{context, errors, gucs};
use bulkhead_policy::prompts::{self, CompiledPrompt, PromptError};
use bulkhead_policy::sqlstate::{HasSqlState, SqlState};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiResult};
use pgrx::PgOid;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Memory the compiled versions of one backend may hold (estimated); past it the cache starts over.
const CACHE_BYTES_MAX: usize = 32 * 1024 * 1024;

struct CachedVersion {
    prompt: CompiledPrompt,
    slots: serde_json::Value,
}

#[derive(Default)]
struct VersionCache {
    by_row: HashMap<uuid::Uuid, Rc<CachedVersion>>,
    bytes: usize,
}

thread_local! {
    static COMPILED: RefCell<VersionCache> = RefCell::new(VersionCache::default());
    static SOURCES_QUERY: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static ACTIVE_QUERY: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static VERSION_QUERY: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
}

/// Errors of this module that are not template errors.
#[derive(Debug, thiserror::Error)]
enum RenderError {
    #[error("no tenant context")]
    NoTenant,
    #[error("{0} must not be null")]
    Null(&'static str),
    #[error("prompt \"{0}\" has no active version for this tenant")]
    NoActiveVersion(String),
    #[error("prompt \"{0}\" has no version {1}")]
    NoSuchVersion(String, i32),
    #[error("a version of prompt \"{0}\" disappeared while it was being read")]
    VersionGone(String),
}

impl HasSqlState for RenderError {
    fn sqlstate(&self) -> SqlState {
        match self {
            RenderError::NoTenant => SqlState::INSUFFICIENT_PRIVILEGE,
            RenderError::Null(_) => SqlState::NULL_VALUE_NOT_ALLOWED,
            RenderError::NoActiveVersion(_)
            | RenderError::NoSuchVersion(..)
            | RenderError::VersionGone(_) => SqlState::UNDEFINED_OBJECT,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            RenderError::NoTenant => Some("Call bulkhead.set_tenant(...) first.".into()),
            RenderError::NoActiveVersion(_) => Some(
                "Publish and activate one with bulkhead.publish_prompt and bulkhead.activate_prompt.".into(),
            ),
            _ => None,
        }
    }
}

/// Checks a skeleton; returns the slots it declares. Raises 42601 with line and column for a
/// template that does not parse, 0A000 for a construct outside the sandbox.
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn _check_skeleton(template_name: &str, body: &str) -> Vec<String> {
    match prompts::check_skeleton(template_name, body) {
        Ok(skeleton) => skeleton.slots.into_iter().collect(),
        Err(err) => errors::raise(&err),
    }
}

/// Checks a tenant's version (its slots, as JSON text, and optional body) against its
/// skeleton's body.
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn _check_prompt_version(
    template_name: Option<&str>,
    skeleton_body: Option<&str>,
    slots: Option<&str>,
    body: Option<&str>,
) {
    let (Some(template_name), Some(skeleton_body), Some(slots)) =
        (template_name, skeleton_body, slots)
    else {
        errors::raise(&RenderError::Null("template_name, skeleton_body and slots"));
    };
    let checked =
        prompts::parse_object("slots", slots, prompts::MAX_SLOTS_BYTES).and_then(|slots| {
            prompts::check_skeleton(template_name, skeleton_body)
                .and_then(|skeleton| prompts::check_version(template_name, &skeleton, &slots, body))
        });
    if let Err(err) = checked {
        errors::raise(&err);
    }
}

/// Renders the current tenant's active version of `template_name`; `vars` is JSON text (the
/// SQL function bulkhead.render_prompt passes its jsonb argument as text).
#[pg_extern(stable, parallel_restricted)]
#[search_path(pg_catalog, pg_temp)]
fn _render_prompt(template_name: Option<&str>, vars: Option<&str>) -> String {
    let tenant = tenant_or_raise();
    let Some(template_name) = template_name else {
        errors::raise(&RenderError::Null("template_name"));
    };
    let row = match version_row(&ACTIVE_QUERY, ACTIVE_SQL, tenant, template_name, None) {
        Ok(Some(row)) => row,
        Ok(None) => errors::raise(&RenderError::NoActiveVersion(template_name.to_string())),
        Err(err) => spi_failed(err),
    };
    render(template_name, row, vars)
}

/// Renders one version of the current tenant's `template_name` (evals pin the version they ran).
#[pg_extern(stable, parallel_restricted)]
#[search_path(pg_catalog, pg_temp)]
fn _render_prompt_version(
    template_name: Option<&str>,
    version: Option<i32>,
    vars: Option<&str>,
) -> String {
    let tenant = tenant_or_raise();
    let (Some(template_name), Some(version)) = (template_name, version) else {
        errors::raise(&RenderError::Null("template_name and version"));
    };
    let row = match version_row(
        &VERSION_QUERY,
        VERSION_SQL,
        tenant,
        template_name,
        Some(version),
    ) {
        Ok(Some(row)) => row,
        Ok(None) => errors::raise(&RenderError::NoSuchVersion(
            template_name.to_string(),
            version,
        )),
        Err(err) => spi_failed(err),
    };
    render(template_name, row, vars)
}

fn tenant_or_raise() -> uuid::Uuid {
    match context::current_tenant() {
        Some(id) => uuid::Uuid::from_bytes(*id.as_bytes()),
        None => errors::raise(&RenderError::NoTenant),
    }
}

/// Called by a render between units of work: honours a query cancel or statement_timeout.
fn check_interrupts() {
    pgrx::check_for_interrupts!();
}

fn render(template_name: &str, row: uuid::Uuid, vars: Option<&str>) -> String {
    prompts::set_interrupt_check(check_interrupts);
    let Some(vars) = vars else {
        errors::raise(&RenderError::Null("vars"));
    };
    let vars = match prompts::parse_object("vars", vars, prompts::MAX_VARS_BYTES) {
        Ok(vars) => vars,
        Err(err) => errors::raise(&err),
    };
    let compiled = match compiled_version(template_name, row) {
        Ok(Ok(compiled)) => compiled,
        Ok(Err(failure)) => failure.raise(),
        Err(err) => spi_failed(err),
    };
    match compiled
        .prompt
        .render(&compiled.slots, &vars, gucs::prompt_output_limit())
    {
        Ok(text) => text,
        Err(err) => errors::raise(&err),
    }
}

/// The compiled version, from this backend's cache or read (under RLS) and compiled now.
/// The sources are checked again: a row written around publish_prompt gets no further.
fn compiled_version(
    template_name: &str,
    row: uuid::Uuid,
) -> SpiResult<Result<Rc<CachedVersion>, RenderFailure>> {
    let use_cache = gucs::prompt_cache();
    if use_cache {
        if let Some(hit) = COMPILED.with(|cache| cache.borrow().by_row.get(&row).cloned()) {
            return Ok(Ok(hit));
        }
    }
    let Some((skeleton, body, slots_text)) = version_sources(row)? else {
        return Ok(Err(RenderFailure::Missing(RenderError::VersionGone(
            template_name.to_string(),
        ))));
    };
    let checked =
        prompts::parse_object("slots", &slots_text, prompts::MAX_SLOTS_BYTES).and_then(|slots| {
            prompts::check_skeleton(template_name, &skeleton)
                .and_then(|declared| {
                    prompts::check_version(template_name, &declared, &slots, body.as_deref())
                })
                .and_then(|()| CompiledPrompt::compile(template_name, &skeleton, body.as_deref()))
                .map(|prompt| (prompt, slots))
        });
    let (prompt, slots) = match checked {
        Ok(compiled) => compiled,
        Err(err) => return Ok(Err(RenderFailure::Template(err))),
    };
    // Sources, their compiled form and the parsed slots: a generous estimate.
    let bytes =
        4 * (skeleton.len() + body.as_ref().map_or(0, String::len) + slots_text.len()) + 16 * 1024;
    let compiled = Rc::new(CachedVersion { prompt, slots });
    if !use_cache {
        return Ok(Ok(compiled));
    }
    COMPILED.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.bytes + bytes > CACHE_BYTES_MAX {
            cache.by_row.clear();
            cache.bytes = 0;
        }
        cache.bytes += bytes;
        cache.by_row.insert(row, Rc::clone(&compiled));
    });
    Ok(Ok(compiled))
}

/// Why a version could not be compiled.
enum RenderFailure {
    Missing(RenderError),
    Template(PromptError),
}

impl RenderFailure {
    fn raise(&self) -> ! {
        match self {
            RenderFailure::Missing(err) => errors::raise(err),
            RenderFailure::Template(err) => errors::raise(err),
        }
    }
}

const ACTIVE_SQL: &str = "select v.id from bulkhead.prompt_templates t
     join bulkhead.prompt_versions v
       on v.tenant_id = t.tenant_id and v.template_name = t.template_name and v.version = t.active_version
     where t.tenant_id = $1 and t.template_name = $2";

const VERSION_SQL: &str = "select v.id from bulkhead.prompt_versions v
     where v.tenant_id = $1 and v.template_name = $2 and v.version = $3";

/// The id of the tenant's active version (`version` None) or of one version, under RLS.
fn version_row(
    plan: &'static std::thread::LocalKey<RefCell<Option<OwnedPreparedStatement>>>,
    query: &str,
    tenant: uuid::Uuid,
    template_name: &str,
    version: Option<i32>,
) -> SpiResult<Option<uuid::Uuid>> {
    Spi::connect(|client| {
        let mut types = vec![pg_sys::BuiltinOid::UUIDOID, pg_sys::BuiltinOid::TEXTOID];
        let mut args = vec![pgrx_uuid(tenant).into(), template_name.into()];
        if let Some(version) = version {
            types.push(pg_sys::BuiltinOid::INT4OID);
            args.push(version.into());
        }
        with_kept_plan(plan, client, query, &types, |client, plan| {
            let rows = client.select(plan, Some(1), &args)?;
            match rows.into_iter().next() {
                Some(row) => Ok(row
                    .get::<pgrx::Uuid>(1)?
                    .map(|id| uuid::Uuid::from_bytes(*id.as_bytes()))),
                None => Ok(None),
            }
        })
    })
}

/// A version's skeleton body, tenant body and slots (as JSON text), under RLS.
fn version_sources(row: uuid::Uuid) -> SpiResult<Option<(String, Option<String>, String)>> {
    Spi::connect(|client| {
        with_kept_plan(
            &SOURCES_QUERY,
            client,
            "select s.body, v.body, v.slots::text
             from bulkhead.prompt_versions v
             join bulkhead.prompt_skeletons s on s.template_name = v.template_name and s.version = v.skeleton_version
             where v.tenant_id = bulkhead.current_tenant() and v.id = $1",
            &[pg_sys::BuiltinOid::UUIDOID],
            |client, plan| {
                let rows = client.select(plan, Some(1), &[pgrx_uuid(row).into()])?;
                let Some(row) = rows.into_iter().next() else {
                    return Ok(None);
                };
                let skeleton = row.get::<String>(1)?.unwrap_or_default();
                let body = row.get::<String>(2)?;
                let slots = row.get::<String>(3)?.unwrap_or_else(|| "{}".to_string());
                Ok(Some((skeleton, body, slots)))
            },
        )
    })
}

/// Runs `run` with a plan prepared once per backend (the plan cache re-plans it on DDL).
fn with_kept_plan<T>(
    slot: &'static std::thread::LocalKey<RefCell<Option<OwnedPreparedStatement>>>,
    client: &SpiClient<'_>,
    query: &str,
    types: &[pg_sys::BuiltinOid],
    run: impl FnOnce(&SpiClient<'_>, &OwnedPreparedStatement) -> SpiResult<T>,
) -> SpiResult<T> {
    slot.with(|cell| {
        let mut kept = cell.borrow_mut();
        let plan = match &mut *kept {
            Some(plan) => plan,
            empty @ None => {
                let types: Vec<PgOid> = types.iter().map(|oid| PgOid::BuiltIn(*oid)).collect();
                empty.insert(client.prepare(query, &types)?.keep())
            }
        };
        run(client, plan)
    })
}

fn pgrx_uuid(id: uuid::Uuid) -> pgrx::Uuid {
    pgrx::Uuid::from_bytes(*id.as_bytes())
}

fn spi_failed(err: pgrx::spi::SpiError) -> ! {
    pgrx::error!("bulkhead: reading the prompt failed: {err}")
}
