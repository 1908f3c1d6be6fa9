//! `bulkhead.current_tenant()` and `bulkhead.set_tenant(uuid)`: the root of every policy.

use crate::{errors, gucs, shared};
use bulkhead_policy::context::{self, ContextError};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiResult};
use pgrx::PgOid;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Instant;

thread_local! {
    /// The existence check's plan, prepared once per backend (the plan cache re-plans it when
    /// the role or the schema changes). Preparing it on every call cost more than running it.
    static TENANT_EXISTS: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    /// Tenants this backend has seen exist, while nothing in `bulkhead.tenants` changed.
    static KNOWN_TENANTS: RefCell<KnownTenants> = RefCell::new(KnownTenants::default());
}

const KNOWN_TENANTS_MAX: usize = 4096;

/// The existence checks one backend remembers, valid for one role and one generation of
/// `bulkhead.tenants` (see `shared::tenants_generation`). A remembered tenant only saves the
/// query: a tenant deleted meanwhile still has no rows, and foreign keys refuse new ones.
#[derive(Default)]
struct KnownTenants {
    generation: u64,
    role: pg_sys::Oid,
    checked_at: HashMap<uuid::Uuid, Instant>,
}

impl KnownTenants {
    fn contains(&self, generation: u64, role: pg_sys::Oid, id: uuid::Uuid) -> bool {
        self.generation == generation
            && self.role == role
            && self
                .checked_at
                .get(&id)
                .is_some_and(|at| at.elapsed() < gucs::remember_tenants_for())
    }

    fn remember(&mut self, generation: u64, role: pg_sys::Oid, id: uuid::Uuid) {
        if self.generation != generation
            || self.role != role
            || self.checked_at.len() >= KNOWN_TENANTS_MAX
        {
            self.checked_at.clear();
            self.generation = generation;
            self.role = role;
        }
        self.checked_at.insert(id, Instant::now());
    }
}

/// Whether tenant `id` exists for the current role: remembered, or checked with a query.
fn tenant_exists(id: uuid::Uuid) -> bool {
    // Read before the query: a change that lands during it makes the answer stale at once.
    let generation = shared::tenants_generation().filter(|_| gucs::remember_tenants());
    // SAFETY: GetUserId reads the backend's current role.
    let role = unsafe { pg_sys::GetUserId() };
    if let Some(generation) = generation {
        if KNOWN_TENANTS.with(|known| known.borrow().contains(generation, role, id)) {
            return true;
        }
    }
    let exists = matches!(
        tenant_visible(pgrx::Uuid::from_bytes(*id.as_bytes())),
        Ok(true)
    );
    if let (true, Some(generation)) = (exists, generation) {
        KNOWN_TENANTS.with(|known| known.borrow_mut().remember(generation, role, id));
    }
    exists
}

/// Whether the caller can see tenant `id`, under row level security.
fn tenant_visible(id: pgrx::Uuid) -> SpiResult<bool> {
    Spi::connect(|client| {
        TENANT_EXISTS.with(|cell| {
            let mut slot = cell.borrow_mut();
            let plan = match &mut *slot {
                Some(plan) => plan,
                empty @ None => empty.insert(
                    client
                        .prepare(
                            "select exists (select from bulkhead.tenants where id = $1)",
                            &[PgOid::BuiltIn(pgrx::pg_sys::BuiltinOid::UUIDOID)],
                        )?
                        .keep(),
                ),
            };
            client
                .select(&*plan, Some(1), &[id.into()])?
                .first()
                .get_one::<bool>()
                .map(|v| v.unwrap_or(false))
        })
    })
}

/// The tenant the current transaction acts for, or NULL. Runs no SQL, so it carries no
/// `SET search_path`: that clause would add a settings save/restore to every call.
/// Parallel restricted: only the leader knows whether the JWT claims were set in this
/// transaction, so workers get the tenant as a parameter (policies use it as an InitPlan).
#[pg_extern(stable, parallel_restricted)]
pub fn current_tenant() -> Option<pgrx::Uuid> {
    let setting = gucs::tenant_id_setting();
    let claims = gucs::jwt_claims();
    context::resolve_tenant(setting.as_deref(), claims.as_deref(), &gucs::claim_path())
        .map(|id| pgrx::Uuid::from_bytes(*id.as_bytes()))
}

/// Sets the tenant context for the rest of the current transaction; NULL clears it.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
pub fn set_tenant(tenant_id: Option<pgrx::Uuid>) {
    // SAFETY: IsTransactionBlock only reads the transaction state.
    if tenant_id.is_some() && !unsafe { pgrx::pg_sys::IsTransactionBlock() } {
        pgrx::warning!("bulkhead.set_tenant() outside a transaction block lasts only until the end of this statement");
    }
    enter_tenant(tenant_id);
}

/// set_tenant for Bulkhead's own functions (the control plane, per-tenant sweeps): the same
/// checks, without the warning meant for an application that set a context outside BEGIN.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
pub fn _set_tenant_within_function(tenant_id: Option<pgrx::Uuid>) {
    enter_tenant(tenant_id);
}

pub(crate) fn enter_tenant(tenant_id: Option<pgrx::Uuid>) {
    let Some(tenant_id) = tenant_id else {
        gucs::set_tenant_id_locally("");
        return;
    };
    let requested = uuid_of(tenant_id);
    let jwt_tenant = gucs::jwt_claims().and_then(|claims| gucs::claim_path().tenant_in(&claims));
    if let Err(err) = context::check_switch(jwt_tenant, requested) {
        errors::raise(&err);
    }
    if requested.is_nil() {
        errors::raise(&ContextError::UnknownTenant(requested));
    }
    gucs::set_tenant_id_locally(&requested.to_string());
    // Checked after the switch, so that row level security lets the caller see the row: an
    // unknown or invisible tenant raises, and the error rolls the setting back with it.
    if !tenant_exists(requested) {
        errors::raise(&ContextError::UnknownTenant(requested));
    }
}

fn uuid_of(id: pgrx::Uuid) -> uuid::Uuid {
    uuid::Uuid::from_bytes(*id.as_bytes())
}

/// Whether the current transaction serves a PostgREST request (`request.method` set in this
/// transaction): refusals are then raised as PostgREST's custom error (`_raise_for_client`).
#[pg_extern(stable, parallel_restricted)]
#[search_path(pg_catalog, pg_temp)]
fn _postgrest_request() -> bool {
    gucs::in_postgrest_request()
}
