//! Prompt templates: the publish-time checks and rendering, over `bulkhead_policy::prompts`.
//!
//! Rendering reads the current tenant's version itself, under row level security, and keeps it
//! compiled per backend by (tenant, name, version): versions are immutable, so the cache never
//! goes stale, and no caller can hand it a template source.

use crate::{context, errors, gucs};
use bulkhead_policy::prompts::{self, CompiledPrompt, PromptError};
use bulkhead_policy::sqlstate::{HasSqlState, SqlState};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiResult};
use pgrx::PgOid;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Compiled versions one backend keeps; past this the cache starts over.
const CACHED_VERSIONS_MAX: usize = 512;

struct CachedVersion {
    prompt: CompiledPrompt,
    slots: serde_json::Value,
}

type VersionKey = (uuid::Uuid, String, i32);

thread_local! {
    static COMPILED: RefCell<HashMap<VersionKey, Rc<CachedVersion>>> = RefCell::new(HashMap::new());
    static VERSION_QUERY: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static ACTIVE_QUERY: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
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
}

impl HasSqlState for RenderError {
    fn sqlstate(&self) -> SqlState {
        match self {
            RenderError::NoTenant => SqlState::INSUFFICIENT_PRIVILEGE,
            RenderError::Null(_) => SqlState::NULL_VALUE_NOT_ALLOWED,
            RenderError::NoActiveVersion(_) | RenderError::NoSuchVersion(..) => {
                SqlState::UNDEFINED_OBJECT
            }
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
    template_name: &str,
    skeleton_body: &str,
    slots: &str,
    body: Option<&str>,
) {
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
    let active = match active_version(tenant, template_name) {
        Ok(Some(version)) => version,
        Ok(None) => errors::raise(&RenderError::NoActiveVersion(template_name.to_string())),
        Err(err) => spi_failed(err),
    };
    render(tenant, template_name, active, vars)
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
    render(tenant, template_name, version, vars)
}

fn tenant_or_raise() -> uuid::Uuid {
    match context::current_tenant() {
        Some(id) => uuid::Uuid::from_bytes(*id.as_bytes()),
        None => errors::raise(&RenderError::NoTenant),
    }
}

fn render(tenant: uuid::Uuid, template_name: &str, version: i32, vars: Option<&str>) -> String {
    let Some(vars) = vars else {
        errors::raise(&RenderError::Null("vars"));
    };
    let vars = match prompts::parse_object("vars", vars, prompts::MAX_VARS_BYTES) {
        Ok(vars) => vars,
        Err(err) => errors::raise(&err),
    };
    let compiled = match compiled_version(tenant, template_name, version) {
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
    tenant: uuid::Uuid,
    template_name: &str,
    version: i32,
) -> SpiResult<Result<Rc<CachedVersion>, RenderFailure>> {
    let key = (tenant, template_name.to_string(), version);
    let use_cache = gucs::prompt_cache();
    if use_cache {
        if let Some(hit) = COMPILED.with(|cache| cache.borrow().get(&key).cloned()) {
            return Ok(Ok(hit));
        }
    }
    let Some((skeleton, body, slots)) = version_sources(tenant, template_name, version)? else {
        return Ok(Err(RenderFailure::Missing(RenderError::NoSuchVersion(
            template_name.to_string(),
            version,
        ))));
    };
    let slots: serde_json::Value = match serde_json::from_str(&slots) {
        Ok(slots) => slots,
        Err(_) => {
            return Ok(Err(RenderFailure::Template(PromptError::NotAnObject {
                what: "slots",
            })))
        }
    };
    let checked = prompts::check_skeleton(template_name, &skeleton)
        .and_then(|declared| {
            prompts::check_version(template_name, &declared, &slots, body.as_deref())
        })
        .and_then(|()| CompiledPrompt::compile(template_name, &skeleton, body.as_deref()));
    let prompt = match checked {
        Ok(prompt) => prompt,
        Err(err) => return Ok(Err(RenderFailure::Template(err))),
    };
    let compiled = Rc::new(CachedVersion { prompt, slots });
    if !use_cache {
        return Ok(Ok(compiled));
    }
    COMPILED.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.len() >= CACHED_VERSIONS_MAX {
            cache.clear();
        }
        cache.insert(key, Rc::clone(&compiled));
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

fn version_sources(
    tenant: uuid::Uuid,
    template_name: &str,
    version: i32,
) -> SpiResult<Option<(String, Option<String>, String)>> {
    Spi::connect(|client| {
        with_kept_plan(
            &VERSION_QUERY,
            client,
            "select s.body, v.body, v.slots::text
             from bulkhead.prompt_versions v
             join bulkhead.prompt_skeletons s on s.template_name = v.template_name and s.version = v.skeleton_version
             where v.tenant_id = $1 and v.template_name = $2 and v.version = $3",
            &[pg_sys::BuiltinOid::UUIDOID, pg_sys::BuiltinOid::TEXTOID, pg_sys::BuiltinOid::INT4OID],
            |client, plan| {
                let rows = client.select(
                    plan,
                    Some(1),
                    &[pgrx_uuid(tenant).into(), template_name.into(), version.into()],
                )?;
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

fn active_version(tenant: uuid::Uuid, template_name: &str) -> SpiResult<Option<i32>> {
    Spi::connect(|client| {
        with_kept_plan(
            &ACTIVE_QUERY,
            client,
            "select t.active_version from bulkhead.prompt_templates t
             where t.tenant_id = $1 and t.template_name = $2",
            &[pg_sys::BuiltinOid::UUIDOID, pg_sys::BuiltinOid::TEXTOID],
            |client, plan| {
                let rows = client.select(
                    plan,
                    Some(1),
                    &[pgrx_uuid(tenant).into(), template_name.into()],
                )?;
                match rows.into_iter().next() {
                    Some(row) => row.get::<i32>(1),
                    None => Ok(None),
                }
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
