//! Bulkhead's settings. Secrets never go in a setting.

use bulkhead_policy::context::{ClaimPath, DEFAULT_CLAIM_PATH};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};

/// `bulkhead.tenant_id`: the transaction's tenant. Writable only through `bulkhead.set_tenant`,
/// which makes it transaction-local; a plain `SET` would outlive the transaction and, behind a
/// transaction-mode pooler, reach another client.
static TENANT_ID: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `bulkhead.jwt_tenant_claim`: where in `request.jwt.claims` the tenant id is read. Superuser
/// only: a role that could repoint it at a claim its end users write could pick its tenant.
static JWT_TENANT_CLAIM: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"app_metadata.tenant_id"));

/// `bulkhead.billing_time_zone`: where day, week and month budget periods begin.
static BILLING_TIME_ZONE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"UTC"));

/// `bulkhead.async_admission`: budget_check commits asynchronously (no WAL flush per check).
static ASYNC_ADMISSION: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `bulkhead.remember_tenants_for`: how long a remembered tenant stays good without a signal
/// (a COMMIT PREPARED of a deletion, or the extension dropped and created again, signals none).
static REMEMBER_TENANTS_FOR: GucSetting<i32> = GucSetting::<i32>::new(30);

/// `bulkhead.remember_tenants`: set_tenant may answer from the backend's memory of tenants.
static REMEMBER_TENANTS: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `bulkhead.prompt_output_limit`: largest rendered prompt, in kB.
static PROMPT_OUTPUT_LIMIT_KB: GucSetting<i32> = GucSetting::<i32>::new(256);

/// `bulkhead.prompt_cache`: render_prompt keeps compiled versions per backend.
static PROMPT_CACHE: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `bulkhead.retrieval_index_threshold`: chunks at which ingest builds a tenant's own index.
static RETRIEVAL_INDEX_THRESHOLD: GucSetting<i32> = GucSetting::<i32>::new(50_000);

/// `bulkhead.min_lease`: the shortest reservation lease budget_check accepts.
static MIN_LEASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"1 minute"));

/// `bulkhead.memory_admission_reservations`: open reservations kept in shared memory.
static MEMORY_ADMISSION_RESERVATIONS: GucSetting<i32> = GucSetting::<i32>::new(65536);

/// `bulkhead.memory_admission`: budget_check keeps admission state in shared memory.
static MEMORY_ADMISSION: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `bulkhead.eval_gate_empty_set`: what the release gate does for a tenant with no eval cases
/// for the template (`refuse` or `allow`). Superuser only: a role that could set it could
/// release past the gate by emptying its own eval set.
static EVAL_GATE_EMPTY_SET: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"refuse"));

/// `bulkhead.eval_authoring`: who may write eval sets, `tenant` (the application too, for the
/// tenant it acts for) or `admin` (bulkhead_admin only). Superuser only.
static EVAL_AUTHORING: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"tenant"));

/// `bulkhead.provider_limit_margin`: how far above a tenant's Bulkhead limits the provider-side
/// backstop of a provisioned project sits (0.1: 10 % above). Superuser only.
static PROVIDER_LIMIT_MARGIN: GucSetting<f64> = GucSetting::<f64>::new(0.1);

/// `bulkhead.pending_key_calls`: what calls of a tenant whose provisioned credential waits for a
/// key do: `shared_pool` (use it until the key comes) or `refuse`. Superuser only.
static PENDING_KEY_CALLS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"shared_pool"));

/// True only while `set_tenant` writes the setting.
static SET_TENANT_IN_PROGRESS: AtomicBool = AtomicBool::new(false);

pub fn init() {
    // SAFETY: both hooks are #[pg_guard]ed and only read their arguments.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"bulkhead.tenant_id",
            c"The tenant this transaction acts for (set it with bulkhead.set_tenant).",
            c"Transaction-local; SET and set_config() are refused so that it cannot outlive the transaction.",
            &TENANT_ID,
            GucContext::Userset,
            GucFlags::DISALLOW_IN_FILE | GucFlags::DISALLOW_IN_AUTO_FILE,
            Some(check_tenant_id),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"bulkhead.jwt_tenant_claim",
            c"Dot-separated path of the tenant id inside request.jwt.claims.",
            c"Defaults to app_metadata.tenant_id. Paths through user_metadata are refused.",
            &JWT_TENANT_CLAIM,
            GucContext::Suset,
            GucFlags::default(),
            Some(check_jwt_tenant_claim),
            None,
            None,
        );
    }
    // SAFETY: the hook is #[pg_guard]ed and only reads its argument.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"bulkhead.eval_gate_empty_set",
            c"What activate_prompt does for a tenant with no eval cases for the template: refuse or allow.",
            c"Either way the release row records it. Superuser only.",
            &EVAL_GATE_EMPTY_SET,
            GucContext::Suset,
            GucFlags::default(),
            Some(check_eval_gate_empty_set),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"bulkhead.pending_key_calls",
            c"What calls of a tenant whose provisioned credential waits for a key do: shared_pool or refuse.",
            c"An Anthropic workspace gets its key from an admin (keys cannot be created by API). Superuser only.",
            &PENDING_KEY_CALLS,
            GucContext::Suset,
            GucFlags::default(),
            Some(check_pending_key_calls),
            None,
            None,
        );
        GucRegistry::define_string_guc_with_hooks(
            c"bulkhead.eval_authoring",
            c"Who may write eval sets and cases: tenant (the application too, for its tenant) or admin (bulkhead_admin only).",
            c"admin keeps the exam a version must pass with the control plane. Superuser only.",
            &EVAL_AUTHORING,
            GucContext::Suset,
            GucFlags::default(),
            Some(check_eval_authoring),
            None,
            None,
        );
    }
    GucRegistry::define_float_guc(
        c"bulkhead.provider_limit_margin",
        c"How far above a tenant's Bulkhead limits a provisioned project's provider-side limits sit (0.1: 10 %).",
        c"The backstop never sits below Bulkhead's own limits. Superuser only; set it for the database so the daemon's and the control plane's sessions agree.",
        &PROVIDER_LIMIT_MARGIN,
        0.0,
        10.0,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"bulkhead.billing_time_zone",
        c"Time zone in which daily, weekly and monthly budget periods begin.",
        c"Any name PostgreSQL's AT TIME ZONE accepts. Superuser only: it moves every tenant's period boundaries.",
        &BILLING_TIME_ZONE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"bulkhead.min_lease",
        c"Shortest lease budget_check accepts for a reservation.",
        c"An expired reservation stops holding budget; a lease shorter than the provider call would let the call escape the budget. Superuser only.",
        &MIN_LEASE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"bulkhead.async_admission",
        c"Commit budget_check transactions asynchronously.",
        c"On: a crash can lose the reservations of the last moments (at most those in flight), never a ledger row. Off: one WAL flush per check.",
        &ASYNC_ADMISSION,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"bulkhead.memory_admission",
        c"Admit LLM calls against budgets kept in shared memory (needs bulkhead in shared_preload_libraries).",
        c"Set it per database (ALTER DATABASE) or in postgresql.conf, and change it only with no calls in flight. A restart forgets open in-memory reservations: a tenant can overspend by at most those.",
        &MEMORY_ADMISSION,
        GucContext::Suset,
        GucFlags::default(),
    );
    // A server-start setting can only be defined while the postmaster preloads the library
    // (defining it later is a FATAL error); without preload there is no memory to size.
    // SAFETY: a plain global the postmaster sets while it loads shared_preload_libraries.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        GucRegistry::define_int_guc(
            c"bulkhead.memory_admission_reservations",
            c"Open reservations memory admission keeps in shared memory (about 190 bytes each).",
            c"Reservations beyond it are written to bulkhead.reservations, at the table path's speed. Read at server start.",
            &MEMORY_ADMISSION_RESERVATIONS,
            1024,
            1 << 24,
            GucContext::Postmaster,
            GucFlags::default(),
        );
    }
    GucRegistry::define_bool_guc(
        c"bulkhead.remember_tenants",
        c"Let set_tenant remember, per backend, the tenants it found (needs bulkhead preloaded).",
        c"Off: every set_tenant looks the tenant up. Turning it off only costs time.",
        &REMEMBER_TENANTS,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"bulkhead.remember_tenants_for",
        c"How long set_tenant trusts a remembered tenant when no change was signalled.",
        c"Every committed change to bulkhead.tenants is signalled at once; this bounds the rest (COMMIT PREPARED).",
        &REMEMBER_TENANTS_FOR,
        0,
        3600,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_bool_guc(
        c"bulkhead.prompt_cache",
        c"Keep compiled prompt versions per backend (versions are immutable).",
        c"Off: read and compile the version on every render (for measurement and debugging).",
        &PROMPT_CACHE,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"bulkhead.retrieval_index_threshold",
        c"Chunks at which ingest_document builds a tenant's own HNSW index.",
        c"Below it tenant_search scans the tenant's rows exactly; from it on, the tenant's own index.",
        &RETRIEVAL_INDEX_THRESHOLD,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"bulkhead.prompt_output_limit",
        c"Largest prompt render_prompt may produce.",
        c"A render whose output would pass it fails with SQLSTATE 54000.",
        &PROMPT_OUTPUT_LIMIT_KB,
        1,
        1024 * 1024,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
}

pub fn remember_tenants_for() -> std::time::Duration {
    std::time::Duration::from_secs(REMEMBER_TENANTS_FOR.get().max(0) as u64)
}

pub fn memory_admission() -> bool {
    MEMORY_ADMISSION.get()
}

pub fn memory_admission_reservations() -> u32 {
    MEMORY_ADMISSION_RESERVATIONS.get().max(1024) as u32
}

/// `bulkhead.min_lease` as written (an interval).
pub fn min_lease() -> String {
    MIN_LEASE
        .get()
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_else(|| "1 minute".to_string())
}

/// The render output limit in bytes.
pub fn prompt_output_limit() -> usize {
    usize::try_from(PROMPT_OUTPUT_LIMIT_KB.get()).unwrap_or(1) * 1024
}

pub fn prompt_cache() -> bool {
    PROMPT_CACHE.get()
}

pub fn remember_tenants() -> bool {
    REMEMBER_TENANTS.get()
}

/// The raw transaction-local setting.
pub fn tenant_id_setting() -> Option<String> {
    TENANT_ID
        .get()
        .map(|value| value.to_string_lossy().into_owned())
}

/// The configured claim path; the check hook has already validated it.
pub fn claim_path() -> ClaimPath {
    JWT_TENANT_CLAIM
        .get()
        .and_then(|value| ClaimPath::parse(&value.to_string_lossy()).ok())
        .unwrap_or_default()
}

/// `request.jwt.claims` as PostgREST / Supabase set it, if it was set in this transaction.
///
/// PostgREST sets the claims with `set_config(..., true)` in every request's transaction. A value
/// left over from an earlier transaction (a session-level SET, perhaps by another client of a
/// transaction-mode pooler) is ignored, so the JWT source is as transaction-scoped as set_tenant.
pub fn jwt_claims() -> Option<String> {
    set_in_this_transaction(c"request.jwt.claims")
}

/// Whether this transaction serves a PostgREST request: PostgREST sets `request.method` with
/// `set_config(..., true)` in each request's transaction. A session-level value left by an earlier
/// client does not count (as for the claims above).
pub fn in_postgrest_request() -> bool {
    set_in_this_transaction(c"request.method").is_some_and(|method| !method.is_empty())
}

/// A placeholder setting's value, if it was set in this transaction.
fn set_in_this_transaction(name: &CStr) -> Option<String> {
    // SAFETY: find_option and GetConfigOption only read GUC storage; the value is copied at once.
    unsafe {
        let option = pg_sys::find_option(name.as_ptr(), false, true, PgLogLevel::DEBUG1 as i32);
        if option.is_null() {
            return None;
        }
        // A setting changed in this transaction has a stack entry until the transaction ends.
        // (current_tenant() is parallel restricted, so this never runs in a parallel worker,
        // which gets its settings restored without stack entries.)
        if (*option).stack.is_null() {
            return None;
        }
        let raw = pg_sys::GetConfigOption(name.as_ptr(), true, false);
        (!raw.is_null()).then(|| CStr::from_ptr(raw).to_string_lossy().into_owned())
    }
}

/// SET LOCAL of a server setting (as set_config(name, value, true)), without running SQL.
pub fn set_locally(name: &std::ffi::CStr, value: &std::ffi::CStr) {
    // SAFETY: both strings outlive the call; errors are raised as Postgres errors (ERROR level).
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_LOCAL,
            true,
            PgLogLevel::ERROR as i32,
            false,
        );
    }
}

/// Writes `bulkhead.tenant_id` for the rest of the current transaction only.
pub fn set_tenant_id_locally(value: &str) {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            SET_TENANT_IN_PROGRESS.store(false, Ordering::SeqCst);
        }
    }
    // A uuid or "" never holds a NUL byte; if one ever did, the empty default clears the
    // context: failing closed.
    let value = CString::new(value).unwrap_or_default();
    SET_TENANT_IN_PROGRESS.store(true, Ordering::SeqCst);
    let _reset = Reset;
    set_locally(c"bulkhead.tenant_id", &value);
}

unsafe fn refuse(code: PgSqlErrorCode, message: &CStr, detail: &CStr, hint: Option<&CStr>) -> bool {
    pg_sys::GUC_check_errcode(code as i32);
    pg_sys::GUC_check_errmsg_string = pg_sys::pstrdup(message.as_ptr());
    pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(detail.as_ptr());
    if let Some(hint) = hint {
        pg_sys::GUC_check_errhint_string = pg_sys::pstrdup(hint.as_ptr());
    }
    false
}

unsafe fn new_value<'a>(newval: *mut *mut c_char) -> Option<&'a CStr> {
    if newval.is_null() || (*newval).is_null() {
        None
    } else {
        Some(CStr::from_ptr(*newval))
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn check_tenant_id(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    let clearing =
        new_value(newval).is_none_or(|v| v.to_bytes().iter().all(u8::is_ascii_whitespace));
    // A parallel worker copies its leader's settings; they were checked when the leader set them.
    if clearing
        || SET_TENANT_IN_PROGRESS.load(Ordering::SeqCst)
        || pg_sys::InitializingParallelWorker
    {
        return true;
    }
    refuse(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        c"bulkhead.tenant_id can only be set by bulkhead.set_tenant()",
        c"A tenant context set with SET, set_config() or ALTER ... SET could outlive its transaction and reach another client through a connection pooler.",
        Some(c"Call SELECT bulkhead.set_tenant('<tenant uuid>') inside the transaction."),
    )
}

/// A setting that takes one of two words; anything else is refused with 22023.
unsafe fn check_one_of(
    newval: *mut *mut c_char,
    words: [&str; 2],
    message: &CStr,
    detail: &CStr,
) -> bool {
    match new_value(newval).map(|v| v.to_string_lossy()) {
        None => true,
        Some(v) if words.contains(&v.as_ref()) => true,
        Some(_) => refuse(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            message,
            detail,
            None,
        ),
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn check_eval_gate_empty_set(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    check_one_of(
        newval,
        ["refuse", "allow"],
        c"bulkhead.eval_gate_empty_set must be refuse or allow",
        c"refuse (the default): a tenant with no eval cases for a template cannot activate a version of it without force; allow: it can, and the release row says so.",
    )
}

#[pg_guard]
unsafe extern "C-unwind" fn check_pending_key_calls(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    check_one_of(
        newval,
        ["shared_pool", "refuse"],
        c"bulkhead.pending_key_calls must be shared_pool or refuse",
        c"shared_pool (the default): the tenant's calls use the shared pool until its key is attached; refuse: they are refused (55000).",
    )
}

#[pg_guard]
unsafe extern "C-unwind" fn check_eval_authoring(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    check_one_of(
        newval,
        ["tenant", "admin"],
        c"bulkhead.eval_authoring must be tenant or admin",
        c"tenant (the default): the application may write its tenant's eval sets; admin: only bulkhead_admin may.",
    )
}

#[pg_guard]
unsafe extern "C-unwind" fn check_jwt_tenant_claim(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    let path = new_value(newval).map_or(DEFAULT_CLAIM_PATH.into(), |v| v.to_string_lossy());
    match ClaimPath::parse(&path) {
        Ok(_) => true,
        Err(err) => {
            let message = CString::new(err.to_string()).unwrap_or_default();
            refuse(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                &message,
                c"The claim path is a dot-separated list of 1 to 8 non-empty JSON keys, and may not pass through user_metadata, which end users can edit.",
                None,
            )
        }
    }
}

/// True when bulkhead.pending_key_calls is refuse: calls of a tenant whose provisioned credential
/// waits for its key are refused rather than served by the shared pool.
pub fn pending_key_calls_refuse() -> bool {
    PENDING_KEY_CALLS
        .get()
        .is_some_and(|value| value.as_bytes() == b"refuse")
}
