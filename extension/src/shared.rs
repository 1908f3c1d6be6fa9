//! Cluster-wide state in shared memory. It exists only when bulkhead is listed in
//! `shared_preload_libraries`; without it every caller takes the plain path (no caches).

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, register_xact_callback, PgAtomic, PgXactCallbackEvent};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

// SAFETY: the name is ours alone among the shared memory segments of the cluster.
static TENANTS_GENERATION: PgAtomic<AtomicU64> =
    unsafe { PgAtomic::new(c"bulkhead.tenants_generation") };

/// Set in the postmaster while it preloads the library, so every backend inherits it.
static PRELOADED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Whether this transaction already bumps the generation again when it ends.
    static BUMP_AT_END: Cell<bool> = const { Cell::new(false) };
}

/// Requests the shared memory, when the library is being preloaded.
pub fn init() {
    // SAFETY: a plain global the postmaster sets while it loads shared_preload_libraries.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    pg_shmem_init!(TENANTS_GENERATION);
    PRELOADED.store(true, Ordering::Relaxed);
}

/// The generation of `bulkhead.tenants`, bumped by every change to it; None without preload.
pub fn tenants_generation() -> Option<u64> {
    PRELOADED
        .load(Ordering::Relaxed)
        .then(|| TENANTS_GENERATION.get().load(Ordering::Acquire))
}

/// Bumps the generation now and again when the transaction ends (commit, abort or prepare):
/// a backend that checks a tenant between the two sees the change only after the end, and a
/// check that read an uncommitted row of this transaction is forgotten if it rolls back.
fn tenants_changed() {
    if !PRELOADED.load(Ordering::Relaxed) {
        return;
    }
    TENANTS_GENERATION.get().fetch_add(1, Ordering::AcqRel);
    if BUMP_AT_END.replace(true) {
        return;
    }
    for event in [
        PgXactCallbackEvent::Commit,
        PgXactCallbackEvent::Abort,
        PgXactCallbackEvent::Prepare,
    ] {
        register_xact_callback(event, || {
            TENANTS_GENERATION.get().fetch_add(1, Ordering::AcqRel);
            BUMP_AT_END.set(false);
        });
    }
}

/// Statement trigger on `bulkhead.tenants`: any INSERT, UPDATE, DELETE or TRUNCATE invalidates
/// the tenant checks every backend remembers.
#[pg_trigger]
fn _tenants_changed<'a>(
    _trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgHeapTupleError> {
    tenants_changed();
    Ok(None)
}
