//! `bulkhead.budget_check`: admission against every limit, in shared memory when
//! `bulkhead.memory_admission` is on (bulkhead preloaded), else by the table path in
//! sql/budgets.sql (`_budget_check_table`).
//!
//! In memory, a tenant's bucket levels, its period's money and its open reservations live in one
//! slot, and an admission is a few microseconds under one lock: no row written, no WAL, no lock
//! held after it returns. What must survive stays in tables: the ledger (written by the settle),
//! limits and prices, and the reservations of queued calls. A reservation is written to
//! `bulkhead.reservations` (`held_in_memory`) when it is settled, handed to the worker, or when
//! the memory is full; its hold on the budget stays in the slot, released when its row is
//! settled, cancelled or expired, at that transaction's commit.
//!
//! The bound, stated and tested (tests/memory_admission.rs): a restart or crash forgets the
//! open in-memory reservations and refills the buckets. A tenant can then overspend by at most
//! the reservations open at that moment; the ledger loses nothing, and a settle of a forgotten
//! reservation is recorded as an orphan (`ledger_record(..., model => ...)`).

use crate::{context, errors, gucs};
use bulkhead_policy::admission::{self, Buckets, BudgetLine, Limits, Micros, Refusal, Request};
use bulkhead_policy::sqlstate::{HasSqlState, SqlState};
use pgrx::pg_shmem_init;
use pgrx::prelude::*;
use pgrx::shmem::PgSharedMemoryInitialization;
use pgrx::spi::SpiClient;
use rust_decimal::Decimal;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::time::{Duration, Instant};

/// Tenants with admission state, over every database of the cluster.
const TENANT_SLOTS: usize = 1 << 15;
/// A tenant may always keep this many reservations in memory; beyond it, at most half of what
/// the other tenants leave free, so that no tenant can fill the memory the others use. More go
/// to the table.
const TENANT_RECORDS_FLOOR: u32 = 1024;
/// The reservation index lives in the low 24 bits of the (enciphered) id tail.
const INDEX_BITS: u32 = 24;
/// How long an expired reservation is kept so that a late settle finds it.
const EXPIRED_KEPT: Micros = 3600 * 1_000_000;
const NONE: u32 = u32::MAX;
const NEVER: Micros = i64::MAX;
const MODEL_MAX: usize = 64;
const PROVIDER_MAX: usize = 24;
const NAME: &CStr = c"bulkhead_admission";
/// Limits, prices and tenant status are re-read at least this often even without a signal (a
/// COMMIT PREPARED of a change, say); every committed change signals at once.
const TERMS_TTL: Duration = Duration::from_secs(1);
/// A tenant's terms in its slot: one read per tenant per 10 s over the whole cluster.
const TERMS_TTL_MICROS: Micros = 10_000_000;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
struct TenantKey {
    db: u32,
    tenant: [u8; 16],
}

#[repr(C)]
struct TenantSlot {
    /// 0 empty, 1 live, 2 deleted (a tombstone the probe walks past).
    used: u8,
    period: u8,
    key: TenantKey,
    buckets: Buckets,
    period_start: Micros,
    period_end: Micros,
    /// Cost settled within the period (from the ledger, then each settle at its commit).
    spent: Decimal,
    /// What open reservations hold: those in memory and those written with held_in_memory.
    reserved: Decimal,
    /// The tenant's records, a doubly linked list through `Record::prev/next`.
    head: u32,
    records: u32,
    /// Records still holding budget (state 1) and what they hold, for usage reports.
    open_records: u32,
    open_held: Decimal,
    /// Earliest moment a record of this tenant expires or is forgotten.
    next_expiry: Micros,
    /// Earliest lease among the tenant's open reservation rows, whose holds the slot counts
    /// (checked before a refusal for money).
    held_next_expiry: Micros,
    /// The tenant's terms, shared by every backend: read at `terms_read_at` under generation
    /// `terms_generation` of limits, prices and tenants (see shared.rs).
    terms: TenantTerms,
    terms_generation: u64,
    terms_read_at: Micros,
}

#[repr(C)]
struct Record {
    /// 0 free, 1 holding budget, 2 expired (hold released, kept for a late settle).
    state: u8,
    /// Being written to the table by an uncommitted transaction: expiry leaves it alone.
    materializing: u8,
    /// A gateway call (`_gateway_hold`): settled only by the gateway, and when its lease ends
    /// unsettled it keeps its hold until the expiry sweep charges it at that hold.
    gateway: u8,
    provider_len: u8,
    model_len: u8,
    key: TenantKey,
    id: [u8; 16],
    prev: u32,
    next: u32,
    est_input: i32,
    max_output: i32,
    reserved: Decimal,
    created_at: Micros,
    lease_end: Micros,
    price_from: Micros,
    provider: [u8; PROVIDER_MAX],
    model: [u8; MODEL_MAX],
}

#[repr(C)]
struct Admission {
    lock: *mut pg_sys::LWLock,
    free_head: u32,
    /// Live tenant slots (deleted ones are tombstones, reused by later inserts).
    live_slots: u32,
    /// Reservation records (bulkhead.memory_admission_reservations), stored after this header.
    capacity: u32,
    used_records: u32,
    /// Key of the permutation that hides a record's index in its reservation id.
    id_key: u64,
    tenants: [TenantSlot; TENANT_SLOTS],
}

fn segment_size(capacity: u32) -> usize {
    std::mem::size_of::<Admission>() + capacity as usize * std::mem::size_of::<Record>()
}

static MEMORY: AtomicPtr<Admission> = AtomicPtr::new(std::ptr::null_mut());
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Requests and creates the shared segment (the postmaster, while preloading).
struct AdmissionSegment;
static SEGMENT: AdmissionSegment = AdmissionSegment;

impl PgSharedMemoryInitialization for AdmissionSegment {
    type Value = ();

    unsafe fn on_shmem_request(&'static self) {
        // SAFETY: called from shmem_request_hook, where these requests belong.
        unsafe {
            pg_sys::RequestAddinShmemSpace(segment_size(gucs::memory_admission_reservations()));
            pg_sys::RequestNamedLWLockTranche(NAME.as_ptr(), 1);
        }
    }

    unsafe fn on_shmem_startup(&'static self, _value: ()) {
        // SAFETY: shmem_startup_hook, under AddinShmemInitLock as every add-in does; the
        // segment is zeroed (an empty state) before the free list is threaded through it.
        unsafe {
            let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
            pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
            let mut found = false;
            let capacity = gucs::memory_admission_reservations();
            let size = segment_size(capacity);
            let memory =
                pg_sys::ShmemInitStruct(NAME.as_ptr(), size, &mut found).cast::<Admission>();
            if !found {
                std::ptr::write_bytes(memory.cast::<u8>(), 0, size);
                let m = &mut *memory;
                m.lock = &raw mut (*pg_sys::GetNamedLWLockTranche(NAME.as_ptr())).lock;
                m.capacity = capacity;
                let mut key = [0u8; 8];
                pg_sys::pg_strong_random(key.as_mut_ptr().cast(), key.len());
                m.id_key = u64::from_le_bytes(key);
                for (i, record) in m.records_mut().iter_mut().enumerate() {
                    record.next = if i + 1 < capacity as usize {
                        (i + 1) as u32
                    } else {
                        NONE
                    };
                }
                m.free_head = 0;
            }
            MEMORY.store(memory, Ordering::Release);
            pg_sys::LWLockRelease(init_lock);
        }
    }
}

pub fn init() {
    // SAFETY: a plain global the postmaster sets while it loads shared_preload_libraries.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    pg_shmem_init!(SEGMENT = ());
    PRELOADED.store(true, Ordering::Relaxed);
    // SAFETY: registered once per process; the callbacks are #[pg_guard]ed and touch only
    // this module's state.
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact_event), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact_event), std::ptr::null_mut());
    }
}

fn attached() -> bool {
    PRELOADED.load(Ordering::Relaxed) && !MEMORY.load(Ordering::Acquire).is_null()
}

/// Whether the current tenant admits in memory: when this session's setting says so, and
/// always once the tenant has a slot (since the server started), whatever the session's
/// setting, so that a tenant never has two admission states (a slot and budget_state) at once.
fn in_memory() -> bool {
    if !attached() {
        return false;
    }
    if gucs::memory_admission() {
        return true;
    }
    context::current_tenant()
        .map(key_of)
        .is_some_and(|key| has_slot(&key))
}

/// Whether any tenant has a slot: read without the lock, as a hint that lets sessions of a
/// cluster where nobody admits in memory skip the lock. A slot created concurrently is loaded
/// under the tenant's budget_state row lock, which the table path holds when it checks again.
fn any_slot() -> bool {
    let memory = MEMORY.load(Ordering::Acquire);
    // SAFETY: an aligned u32 in the attached segment; a stale read only costs a lock trip.
    !memory.is_null() && unsafe { std::ptr::read_volatile(&raw const (*memory).live_slots) } > 0
}

/// Whether `key` has a slot, under the lock in shared mode.
fn has_slot(key: &TenantKey) -> bool {
    if !any_slot() {
        return false;
    }
    locked_shared(|m| m.find(key).is_some())
}

/// Runs `f` under the admission lock. `f` must not raise: errors are decided after the lock
/// is released (an ERROR would release it too, but leave the state half-changed).
fn locked<R>(f: impl FnOnce(&mut Admission) -> R) -> R {
    with_lock(pg_sys::LWLockMode::LW_EXCLUSIVE, |m| {
        // SAFETY: exclusive mode: no other backend reads or writes meanwhile.
        f(unsafe { &mut *m })
    })
}

/// Runs `f` under the admission lock in shared mode: for reads, which wait for no other reader.
fn locked_shared<R>(f: impl FnOnce(&Admission) -> R) -> R {
    with_lock(pg_sys::LWLockMode::LW_SHARED, |m| {
        // SAFETY: shared mode: only readers run meanwhile, and `f` only reads.
        f(unsafe { &*m })
    })
}

fn with_lock<R>(mode: pg_sys::LWLockMode::Type, f: impl FnOnce(*mut Admission) -> R) -> R {
    let memory = MEMORY.load(Ordering::Acquire);
    assert!(
        !memory.is_null(),
        "bulkhead admission memory is not attached"
    );
    // SAFETY: the segment lives as long as the cluster; the LWLock serialises every access.
    unsafe {
        pg_sys::LWLockAcquire((*memory).lock, mode);
        let result = f(memory);
        pg_sys::LWLockRelease((*memory).lock);
        result
    }
}

fn now() -> Micros {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

fn key_of(tenant: pgrx::Uuid) -> TenantKey {
    TenantKey {
        // SAFETY: a plain global set at connection start.
        db: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        tenant: *tenant.as_bytes(),
    }
}

/// The current tenant's key, when shared memory is set up and a tenant is set.
fn current_key() -> Option<TenantKey> {
    if MEMORY.load(Ordering::Acquire).is_null() {
        return None;
    }
    context::current_tenant().map(key_of)
}

impl Admission {
    fn probe_start(key: &TenantKey) -> usize {
        // Tenant ids are random (v4 or v7 tails): their bytes hash well enough.
        let mut h = u64::from(key.db).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for chunk in key.tenant.chunks(8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            h = (h ^ u64::from_le_bytes(word)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
        (h as usize) & (TENANT_SLOTS - 1)
    }

    fn find(&self, key: &TenantKey) -> Option<usize> {
        let mut i = Self::probe_start(key);
        for _ in 0..TENANT_SLOTS {
            let slot = &self.tenants[i];
            match slot.used {
                0 => return None,
                1 if slot.key == *key => return Some(i),
                _ => i = (i + 1) & (TENANT_SLOTS - 1),
            }
        }
        None
    }

    /// The slot for `key`, created empty (period 0, so the caller loads it) if missing. Only
    /// for a tenant whose terms were just read (so it exists): no slot for an unknown id.
    fn find_or_insert(&mut self, key: &TenantKey) -> Option<usize> {
        if let Some(i) = self.find(key) {
            return Some(i);
        }
        if self.live_slots as usize >= TENANT_SLOTS * 7 / 8 {
            return None;
        }
        // The first empty slot or tombstone on the probe path (find() walks past tombstones).
        let mut i = Self::probe_start(key);
        while self.tenants[i].used == 1 {
            i = (i + 1) & (TENANT_SLOTS - 1);
        }
        self.live_slots += 1;
        let slot = &mut self.tenants[i];
        slot.used = 1;
        slot.period = 0;
        slot.key = *key;
        slot.buckets = Buckets::default();
        slot.period_start = 0;
        slot.period_end = 0;
        slot.spent = Decimal::ZERO;
        slot.reserved = Decimal::ZERO;
        slot.head = NONE;
        slot.records = 0;
        slot.open_records = 0;
        slot.open_held = Decimal::ZERO;
        slot.next_expiry = NEVER;
        slot.held_next_expiry = NEVER;
        slot.terms.period = 0;
        Some(i)
    }

    fn records(&self) -> &[Record] {
        // SAFETY: `capacity` records follow the header in the segment (see segment_size).
        unsafe {
            let first = (self as *const Admission).add(1).cast::<Record>();
            std::slice::from_raw_parts(first, self.capacity as usize)
        }
    }

    fn records_mut(&mut self) -> &mut [Record] {
        // SAFETY: as in records(); the caller holds the lock and `&mut self`.
        unsafe {
            let first = (self as *mut Admission).add(1).cast::<Record>();
            std::slice::from_raw_parts_mut(first, self.capacity as usize)
        }
    }

    /// A four-round Feistel permutation of the id's last 32 bits: the record index (and with it,
    /// how many reservations are open in the cluster) cannot be read from an id.
    fn permute(&self, x: u32, inverse: bool) -> u32 {
        let round_key = |round: u32| (self.id_key >> (16 * round)) as u32 & 0xFFFF;
        let f = |half: u32, k: u32| ((half ^ k).wrapping_mul(0x9E37_79B1) >> 13) & 0xFFFF;
        let (mut left, mut right) = (x >> 16, x & 0xFFFF);
        if inverse {
            for round in (0..4).rev() {
                (left, right) = (right ^ f(left, round_key(round)), left);
            }
        } else {
            for round in 0..4 {
                (left, right) = (right, left ^ f(right, round_key(round)));
            }
        }
        (left << 16) | right
    }

    fn record_index(&self, id: &[u8; 16]) -> usize {
        let mut tail = [0u8; 4];
        tail.copy_from_slice(&id[12..16]);
        (self.permute(u32::from_le_bytes(tail), true) & ((1 << INDEX_BITS) - 1)) as usize
    }

    /// Writes record `index` into the tail of `id`, under random high bits.
    fn stamp_index(&self, id: &mut [u8; 16], index: usize) {
        let high = u32::from(id[12]) << INDEX_BITS;
        let tail = self.permute(high | index as u32, false);
        id[12..16].copy_from_slice(&tail.to_le_bytes());
    }

    /// The live record with this id, of this tenant.
    fn record(&self, id: &[u8; 16], key: &TenantKey) -> Option<usize> {
        let i = self.record_index(id);
        let r = self.records().get(i)?;
        (r.state != 0 && r.id == *id && r.key == *key).then_some(i)
    }

    /// Whether a tenant holding `held` records may take one more.
    fn may_take_record(&self, held: u32) -> bool {
        let left_by_others = self.capacity - (self.used_records - held);
        self.free_head != NONE && (held < TENANT_RECORDS_FLOOR || held < left_by_others / 2)
    }

    fn unlink_and_free(&mut self, slot: usize, index: usize) {
        let (prev, next) = (
            self.records_mut()[index].prev,
            self.records_mut()[index].next,
        );
        if prev == NONE {
            self.tenants[slot].head = next;
        } else {
            self.records_mut()[prev as usize].next = next;
        }
        if next != NONE {
            self.records_mut()[next as usize].prev = prev;
        }
        self.tenants[slot].records -= 1;
        self.used_records -= 1;
        if self.records()[index].state == 1 {
            let hold = self.records()[index].reserved;
            let s = &mut self.tenants[slot];
            s.open_records -= 1;
            s.open_held = (s.open_held - hold).max(Decimal::ZERO);
        }
        let free_head = self.free_head;
        let r = &mut self.records_mut()[index];
        r.state = 0;
        r.materializing = 0;
        r.prev = NONE;
        r.next = free_head;
        self.free_head = index as u32;
    }

    /// Expired leases stop holding budget; records expired long ago are forgotten.
    /// Returns how many leases expired.
    fn expire(&mut self, slot: usize, now: Micros) -> i64 {
        if self.tenants[slot].next_expiry > now {
            return 0;
        }
        let mut expired = 0;
        let mut next_expiry = NEVER;
        let mut i = self.tenants[slot].head;
        while i != NONE {
            let index = i as usize;
            i = self.records_mut()[index].next;
            let r = &mut self.records_mut()[index];
            if r.materializing != 0 {
                // Being written to the table: left alone (a writer that rolls back puts its
                // due time back, see on_abort).
                continue;
            }
            if r.state == 1 && r.lease_end <= now && r.gateway != 0 {
                // Lapsed unsettled: billed at its hold by the next expiry sweep (see
                // _materialize_lapsed_gateway_holds), or by this tenant's next refusal for money
                // (due like a row); until then it holds, and is not due here again.
                let lease_end = r.lease_end;
                let s = &mut self.tenants[slot];
                s.held_next_expiry = s.held_next_expiry.min(lease_end);
                continue;
            }
            if r.state == 1 && r.lease_end <= now {
                r.state = 2;
                let hold = r.reserved;
                let s = &mut self.tenants[slot];
                s.reserved = (s.reserved - hold).max(Decimal::ZERO);
                s.open_records -= 1;
                s.open_held = (s.open_held - hold).max(Decimal::ZERO);
                expired += 1;
            }
            let r = &self.records_mut()[index];
            if r.state == 2 && r.lease_end.saturating_add(EXPIRED_KEPT) <= now {
                self.unlink_and_free(slot, index);
                continue;
            }
            let due = if r.state == 1 {
                r.lease_end
            } else {
                r.lease_end.saturating_add(EXPIRED_KEPT)
            };
            next_expiry = next_expiry.min(due);
        }
        self.tenants[slot].next_expiry = next_expiry;
        expired
    }
}

/// A tenant's status, limits and billing period (1 day, 2 week, 3 month; 0: never read).
#[derive(Clone, Copy)]
#[repr(C)]
struct TenantTerms {
    active: bool,
    period: u8,
    limits: Limits,
}

fn period_name(period: u8) -> &'static str {
    match period {
        1 => "day",
        2 => "week",
        _ => "month",
    }
}

/// A model's price in effect.
#[derive(Clone)]
struct Price {
    provider: String,
    effective_from: Micros,
    input_per_mtok: Decimal,
    output_per_mtok: Decimal,
}

/// A backend's memory of a model's price (None: the model has no price).
struct CachedPrice {
    generation: u64,
    read_at: Instant,
    price: Option<Price>,
}

/// What this backend must do to the shared state when a (sub)transaction ends.
enum Pending {
    /// Abort: take back an admission still in memory.
    Admitted {
        key: TenantKey,
        index: u32,
        id: [u8; 16],
    },
    /// Abort: take back an admission whose reservation went to the table (memory full).
    AdmittedToTable {
        key: TenantKey,
        hold: Decimal,
        tokens: [f64; 3],
    },
    /// Commit: the record now lives in the table, forget it here. Abort: it stays here.
    Materializing {
        key: TenantKey,
        index: u32,
        id: [u8; 16],
    },
    /// Commit: a reservation row was settled, cancelled or expired; a cost was recorded.
    /// `counted`: a reload of the tenant's slot in this same transaction read the tables with
    /// this change in them already (hold released, cost in the ledger), so commit must not
    /// apply it again, and an abort must take it back out of the slot.
    Release {
        key: TenantKey,
        hold: Decimal,
        spent: Decimal,
        itpm: f64,
        otpm: f64,
        counted_hold: bool,
        counted_spent: bool,
    },
    /// The table path admitted a call (a reservation row) for a tenant without a slot. If this
    /// transaction then loads the tenant's slot, the load counts that row (`counted`), and an
    /// abort must take it back out.
    TableHold {
        key: TenantKey,
        hold: Decimal,
        counted: bool,
    },
    /// Commit: the tenant was deleted.
    Forget { key: TenantKey },
}

thread_local! {
    static PRICES: RefCell<HashMap<String, CachedPrice>> = RefCell::new(HashMap::new());
    static PENDING: RefCell<Vec<(pg_sys::SubTransactionId, Pending)>> = const { RefCell::new(Vec::new()) };
    static REFUSAL: RefCell<Option<AdmissionError>> = const { RefCell::new(None) };
    /// Releases applied at PRE_COMMIT, undone if the transaction aborts after all.
    static APPLIED: RefCell<Vec<(Pending, Applied)>> = const { RefCell::new(Vec::new()) };
    static ENTROPY: RefCell<([u8; 4096], usize)> = const { RefCell::new(([0; 4096], 4096)) };
    static MIN_LEASE: RefCell<Option<(String, f64)>> = const { RefCell::new(None) };
}

fn push_pending(action: Pending) {
    // SAFETY: reads the current subtransaction id.
    let subxid = unsafe { pg_sys::GetCurrentSubTransactionId() };
    PENDING.with(|p| p.borrow_mut().push((subxid, action)));
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_PREPARE => {
            // Nothing in memory can wait for a COMMIT PREPARED in another session. What may be
            // skipped: forgetting a deleted tenant (its slot only goes stale), and what concerns
            // tenants without a slot (the table path's admissions and settles).
            let actions = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
            if actions.is_empty() || !attached() {
                return;
            }
            let blocking = locked(|m| {
                actions.iter().any(|(_, action)| match action {
                    Pending::Forget { .. } => false,
                    Pending::Release { key, .. } | Pending::TableHold { key, .. } => {
                        m.find(key).is_some()
                    }
                    _ => true,
                })
            });
            if blocking {
                // Kept for the abort that this error causes.
                PENDING.with(|p| *p.borrow_mut() = actions);
                errors::raise(&AdmissionError::Prepared);
            }
        }
        XACT_EVENT_PRE_COMMIT => {
            // Releases are applied while this transaction still holds its budget_state row
            // locks: a slot loaded after them reads tables that show them and a slot that
            // already shows them (applied at COMMIT, a load could fall between the commit
            // becoming visible and the callback). Undone if the commit fails after this.
            let releases =
                PENDING.with(|p| {
                    let mut p = p.borrow_mut();
                    let (releases, rest) =
                        std::mem::take(&mut *p).into_iter().partition::<Vec<_>, _>(
                            |(_, action)| matches!(action, Pending::Release { .. }),
                        );
                    *p = rest;
                    releases
                });
            if releases.is_empty() || !attached() {
                return;
            }
            let applied = locked(|m| {
                releases
                    .into_iter()
                    .map(|(_, release)| {
                        let applied = apply_release(m, &release);
                        (release, applied)
                    })
                    .collect::<Vec<_>>()
            });
            APPLIED.with(|a| *a.borrow_mut() = applied);
        }
        XACT_EVENT_COMMIT | XACT_EVENT_ABORT | XACT_EVENT_PREPARE => {
            // A refusal belongs to its transaction: the next one on this connection may act
            // for another tenant (a pooler hands the connection to another client).
            REFUSAL.with(|r| r.borrow_mut().take());
            let applied = APPLIED.with(|a| std::mem::take(&mut *a.borrow_mut()));
            let mut actions = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
            if event == XACT_EVENT_PREPARE || !attached() {
                return; // PRE_PREPARE let only what may be skipped through
            }
            let commit = event == XACT_EVENT_COMMIT;
            if commit {
                // An admission that commits is already in place: no second trip to the lock.
                actions.retain(|(_, action)| {
                    !matches!(
                        action,
                        Pending::Admitted { .. }
                            | Pending::AdmittedToTable { .. }
                            | Pending::TableHold { .. }
                    )
                });
                if actions.is_empty() {
                    return;
                }
            } else if actions.is_empty() && applied.is_empty() {
                return;
            }
            locked(|m| {
                if !commit {
                    for (release, applied) in applied {
                        revert_release(m, &release, applied);
                        on_abort(m, release);
                    }
                }
                for (_, action) in actions.into_iter().rev() {
                    if commit {
                        on_commit(m, action);
                    } else {
                        on_abort(m, action);
                    }
                }
            });
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact_event(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    parent_subid: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    match event {
        SUBXACT_EVENT_COMMIT_SUB => PENDING.with(|p| {
            for (subxid, _) in p.borrow_mut().iter_mut() {
                if *subxid == my_subid {
                    *subxid = parent_subid;
                }
            }
        }),
        SUBXACT_EVENT_ABORT_SUB => {
            let undone: Vec<Pending> = PENDING.with(|p| {
                let mut p = p.borrow_mut();
                let (undone, kept) = std::mem::take(&mut *p)
                    .into_iter()
                    .partition::<Vec<_>, _>(|(subxid, _)| *subxid == my_subid);
                *p = kept;
                undone.into_iter().map(|(_, action)| action).collect()
            });
            if !undone.is_empty() && !MEMORY.load(Ordering::Acquire).is_null() {
                locked(|m| {
                    undone
                        .into_iter()
                        .rev()
                        .for_each(|action| on_abort(m, action))
                });
            }
        }
        _ => {}
    }
}

/// What applying a Release changed in its tenant's slot, to undo it exactly.
#[derive(Default)]
struct Applied {
    hold: Decimal,
    spent: Decimal,
    tokens: (f64, f64),
}

fn apply_release(m: &mut Admission, release: &Pending) -> Applied {
    let Pending::Release {
        key,
        hold,
        spent,
        itpm,
        otpm,
        counted_hold,
        counted_spent,
    } = release
    else {
        return Applied::default();
    };
    let Some(slot) = m.find(key) else {
        return Applied::default();
    };
    let s = &mut m.tenants[slot];
    let mut applied = Applied::default();
    if !counted_hold {
        let before = s.reserved;
        s.reserved = (s.reserved - *hold).max(Decimal::ZERO);
        applied.hold = before - s.reserved;
    }
    let t = now();
    if !counted_spent && t >= s.period_start && t < s.period_end {
        s.spent += *spent;
        applied.spent = *spent;
    }
    s.buckets.refund(0.0, *itpm, *otpm);
    applied.tokens = (*itpm, *otpm);
    applied
}

fn revert_release(m: &mut Admission, release: &Pending, applied: Applied) {
    let Pending::Release { key, .. } = release else {
        return;
    };
    if let Some(slot) = m.find(key) {
        let s = &mut m.tenants[slot];
        s.reserved += applied.hold;
        s.spent = (s.spent - applied.spent).max(Decimal::ZERO);
        s.buckets.refund(0.0, -applied.tokens.0, -applied.tokens.1);
    }
}

fn on_commit(m: &mut Admission, action: Pending) {
    match action {
        Pending::Admitted { .. } | Pending::AdmittedToTable { .. } | Pending::TableHold { .. } => {}
        Pending::Materializing { key, index, id } => {
            if let (Some(slot), true) = (m.find(&key), m.record(&id, &key) == Some(index as usize))
            {
                m.unlink_and_free(slot, index as usize);
            }
        }
        release @ Pending::Release { .. } => {
            apply_release(m, &release);
        }
        Pending::Forget { key } => {
            if let Some(slot) = m.find(&key) {
                while m.tenants[slot].head != NONE {
                    let head = m.tenants[slot].head as usize;
                    m.unlink_and_free(slot, head);
                }
                m.tenants[slot].used = 2;
                m.live_slots -= 1;
            }
        }
    }
}

fn on_abort(m: &mut Admission, action: Pending) {
    match action {
        Pending::Admitted { key, index, id } => {
            let (Some(slot), Some(i)) = (m.find(&key), m.record(&id, &key)) else {
                return; // settled and written to the table meanwhile: the row owns the hold
            };
            if i != index as usize || m.records_mut()[i].materializing != 0 {
                return;
            }
            let r = &m.records_mut()[i];
            let hold = if r.state == 1 {
                r.reserved
            } else {
                Decimal::ZERO
            };
            let tokens = [1.0, f64::from(r.est_input), f64::from(r.max_output)];
            let s = &mut m.tenants[slot];
            s.reserved = (s.reserved - hold).max(Decimal::ZERO);
            s.buckets.refund(tokens[0], tokens[1], tokens[2]);
            m.unlink_and_free(slot, i);
        }
        Pending::AdmittedToTable { key, hold, tokens } => {
            if let Some(slot) = m.find(&key) {
                let s = &mut m.tenants[slot];
                s.reserved = (s.reserved - hold).max(Decimal::ZERO);
                s.buckets.refund(tokens[0], tokens[1], tokens[2]);
            }
        }
        Pending::Materializing { key, index, id } => {
            if let (Some(slot), true) = (m.find(&key), m.record(&id, &key) == Some(index as usize))
            {
                let r = &mut m.records_mut()[index as usize];
                r.materializing = 0;
                let due = r.lease_end;
                let s = &mut m.tenants[slot];
                s.next_expiry = s.next_expiry.min(due);
            }
        }
        Pending::Release {
            key,
            hold,
            spent,
            counted_hold,
            counted_spent,
            ..
        } => {
            // The reload counted this change, which did not happen after all.
            if let Some(slot) = m.find(&key) {
                let s = &mut m.tenants[slot];
                if counted_hold {
                    s.reserved += hold;
                }
                if counted_spent {
                    s.spent = (s.spent - spent).max(Decimal::ZERO);
                }
            }
        }
        Pending::TableHold {
            key,
            hold,
            counted: true,
        } => {
            if let Some(slot) = m.find(&key) {
                let s = &mut m.tenants[slot];
                s.reserved = (s.reserved - hold).max(Decimal::ZERO);
            }
        }
        Pending::TableHold { .. } | Pending::Forget { .. } => {}
    }
}

#[derive(Debug, thiserror::Error)]
enum AdmissionError {
    #[error("no tenant context")]
    NoTenant,
    #[error("model, est_input_tokens, max_output_tokens and lease are required")]
    MissingArgument,
    #[error("token counts must be between 0 and 100000000")]
    TokenRange,
    #[error("lease must be between bulkhead.min_lease ({0}) and one day")]
    Lease(String),
    #[error("tenant {0} does not exist")]
    UnknownTenant(pgrx::Uuid),
    #[error("tenant_suspended")]
    Suspended(pgrx::Uuid),
    #[error("unknown model '{0}'")]
    UnknownModel(String),
    #[error("{}", .refusal.code)]
    Refused {
        tenant: pgrx::Uuid,
        refusal: Refusal,
    },
    #[error("admission memory is full")]
    Full,
    #[error("a transaction that admitted or settled LLM calls in memory cannot be prepared")]
    Prepared,
    #[error("invalid amount {0}")]
    Amount(String),
    #[error("memory admission is off in this session")]
    Off,
}

impl HasSqlState for AdmissionError {
    fn sqlstate(&self) -> SqlState {
        match self {
            AdmissionError::NoTenant => SqlState::INSUFFICIENT_PRIVILEGE,
            AdmissionError::MissingArgument => SqlState::NULL_VALUE_NOT_ALLOWED,
            AdmissionError::TokenRange
            | AdmissionError::Lease(_)
            | AdmissionError::UnknownModel(_) => SqlState::INVALID_PARAMETER_VALUE,
            AdmissionError::UnknownTenant(_) => SqlState::UNDEFINED_OBJECT,
            AdmissionError::Suspended(_) => SqlState::TENANT_FORBIDDEN,
            AdmissionError::Refused { .. } => SqlState::TENANT_LIMIT_EXCEEDED,
            AdmissionError::Full => SqlState::OUT_OF_MEMORY,
            AdmissionError::Prepared => SqlState::FEATURE_NOT_SUPPORTED,
            AdmissionError::Amount(_) => SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
            AdmissionError::Off => SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
        }
    }

    fn detail(&self) -> Option<String> {
        Some(match self {
            AdmissionError::NoTenant => "budget_check admits calls for the current tenant, and this transaction has none.".into(),
            AdmissionError::MissingArgument => "budget_check cannot estimate a call without them.".into(),
            AdmissionError::TokenRange => "est_input_tokens and max_output_tokens describe one call.".into(),
            AdmissionError::Lease(_) => "An unsettled reservation stops holding budget when its lease ends, so a lease shorter than the provider call would let the call escape the budget.".into(),
            AdmissionError::UnknownTenant(_) => "The tenant context names no tenant, so it has no budget.".into(),
            AdmissionError::Suspended(tenant) => {
                format!(r#"{{"code": "tenant_suspended", "tenant_id": "{tenant}"}}"#)
            }
            AdmissionError::UnknownModel(_) => "No price is in effect for this model, so its cost cannot be bounded; the call is refused.".into(),
            // The same text as the table path's jsonb_build_object.
            AdmissionError::Refused { tenant, refusal } => format!(
                r#"{{"code": "{}", "limit": "{}", "tenant_id": "{tenant}", "retry_after_ms": {}}}"#,
                refusal.code,
                refusal.limit,
                refusal.retry_after_ms.map_or("null".to_string(), |ms| ms.to_string())
            ),
            AdmissionError::Full => format!("Shared memory holds admission state for {} tenants; every database of the cluster counts.", TENANT_SLOTS * 7 / 8),
            AdmissionError::Prepared => "Their budget holds live in this server's memory and are applied when the transaction commits here.".into(),
            AdmissionError::Amount(_) => "Amounts are finite USD values with at most 28 significant digits.".into(),
            AdmissionError::Off => "bulkhead.memory_admission is off, or bulkhead is not in shared_preload_libraries; bulkhead.budget_check takes the table path.".into(),
        })
    }

    fn hint(&self) -> Option<String> {
        match self {
            AdmissionError::NoTenant => Some("Call bulkhead.set_tenant(...) first, or pass a JWT with app_metadata.tenant_id.".into()),
            AdmissionError::Suspended(_) => Some("A suspended tenant makes no LLM calls until bulkhead_admin sets its status back to active.".into()),
            AdmissionError::UnknownModel(_) => Some("Add one with bulkhead.set_price(provider, model, input_per_mtok, output_per_mtok).".into()),
            AdmissionError::Refused { refusal, .. } => Some(if refusal.retry_after_ms.is_none() {
                "This request can never fit the tenant's limit; lower it or raise the limit.".into()
            } else {
                "Retry after retry_after_ms milliseconds.".into()
            }),
            AdmissionError::Full => Some("Turn bulkhead.memory_admission off, or delete unused tenants.".into()),
            _ => None,
        }
    }
}

fn decimal(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap_or_else(|_| errors::raise(&AdmissionError::Amount(text.into())))
}

/// Runs `f` as bulkhead_meter, as the table path's SECURITY DEFINER functions run: the slow
/// paths call only meter-owned helpers with pinned search paths.
fn as_meter<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(pg_sys::Oid, i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores what GetUserIdAndSecContext returned.
            unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) };
        }
    }
    // SAFETY: the same switch fmgr makes for a SECURITY DEFINER function; an error unwinds
    // through Restore, and transaction abort restores it anyway.
    unsafe {
        let (mut user, mut context) = (pg_sys::InvalidOid, 0);
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        let meter = pg_sys::get_role_oid(c"bulkhead_meter".as_ptr(), false);
        pg_sys::SetUserIdAndSecContext(
            meter,
            context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
        let _restore = Restore(user, context);
        f()
    }
}

fn generation() -> u64 {
    crate::shared::tenants_generation().unwrap_or(0)
}

fn cached_price(model: &str, generation: u64) -> Option<Option<Price>> {
    PRICES.with(|p| {
        p.borrow().get(model).and_then(|c| {
            (c.generation == generation && c.read_at.elapsed() < TERMS_TTL).then(|| c.price.clone())
        })
    })
}

/// Reads the tenant's terms and the model's price (as bulkhead_meter) and remembers the price.
/// None: the tenant does not exist.
fn read_terms(model: &str, generation: u64) -> Option<(TenantTerms, Option<Price>)> {
    let read = as_meter(|| Spi::connect_mut(|client| read_terms_row(client, model)))
        .unwrap_or_else(|e| error!("reading admission terms: {e}"));
    if let Some((_, price)) = &read {
        PRICES.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() >= 1024 {
                p.clear();
            }
            p.insert(
                model.to_string(),
                CachedPrice {
                    generation,
                    read_at: Instant::now(),
                    price: price.clone(),
                },
            );
        });
    }
    read
}

fn read_terms_row(
    client: &mut SpiClient<'_>,
    model: &str,
) -> pgrx::spi::SpiResult<Option<(TenantTerms, Option<Price>)>> {
    let table = client.update(
        "select * from bulkhead._admission_terms($1)",
        Some(1),
        &[model.into()],
    )?;
    if table.is_empty() {
        return Ok(None);
    }
    let row = table.first();
    let terms = TenantTerms {
        active: row.get::<String>(1)?.as_deref() == Some("active"),
        period: match row.get::<String>(6)?.as_deref() {
            Some("day") => 1,
            Some("week") => 2,
            _ => 3,
        },
        limits: Limits {
            rpm: row.get(2)?.unwrap_or(0),
            itpm: row.get(3)?.unwrap_or(0),
            otpm: row.get(4)?.unwrap_or(0),
            dollars: decimal(&row.get::<String>(5)?.unwrap_or_default()),
        },
    };
    let price = match row.get::<String>(7)? {
        None => None,
        Some(provider) => Some(Price {
            provider,
            effective_from: row.get(8)?.unwrap_or(0),
            input_per_mtok: decimal(&row.get::<String>(9)?.unwrap_or_default()),
            output_per_mtok: decimal(&row.get::<String>(10)?.unwrap_or_default()),
        }),
    };
    Ok(Some((terms, price)))
}

/// The period's bounds and money from the tables, for a slot that is new or whose period ended.
struct Loaded {
    /// The kind of period it was computed for (the terms may change meanwhile).
    period: u8,
    period_start: Micros,
    period_end: Micros,
    spent: Decimal,
    held: Decimal,
    held_next_expiry: Micros,
}

fn load_period(period: u8) -> Loaded {
    let period_name = period_name(period);
    as_meter(|| {
        Spi::connect_mut(|client| {
            let row = client
                .update(
                    "select * from bulkhead._admission_load($1)",
                    Some(1),
                    &[period_name.into()],
                )?
                .first();
            Ok::<_, pgrx::spi::SpiError>(Loaded {
                period,
                period_start: row.get(1)?.unwrap_or(0),
                period_end: row.get(2)?.unwrap_or(0),
                spent: decimal(&row.get::<String>(3)?.unwrap_or_default()),
                held: decimal(&row.get::<String>(4)?.unwrap_or_default()),
                held_next_expiry: row.get(5)?.unwrap_or(NEVER),
            })
        })
    })
    .unwrap_or_else(|e| error!("loading admission state: {e}"))
}

/// bulkhead.min_lease in seconds (the setting parsed by PostgreSQL, once per value).
fn min_lease_seconds() -> (String, f64) {
    let setting = gucs::min_lease();
    if let Some(hit) = MIN_LEASE.with(|m| m.borrow().clone().filter(|(s, _)| *s == setting)) {
        return hit;
    }
    let seconds = Spi::get_one_with_args::<f64>(
        "select pg_catalog.date_part('epoch', $1::pg_catalog.interval)",
        &[setting.as_str().into()],
    )
    .ok()
    .flatten()
    .unwrap_or(60.0);
    let hit = (setting, seconds);
    MIN_LEASE.with(|m| *m.borrow_mut() = Some(hit.clone()));
    hit
}

/// The memory path of bulkhead.budget_check (sql/budgets.sql): admits one LLM call for the
/// current tenant and returns its reservation id, or returns NULL when a limit refuses it; the
/// caller then raises `_admission_refusal()` (pgrx cannot raise a SQLSTATE outside the standard
/// list, such as PT429).
#[pg_extern(volatile, parallel_unsafe)]
pub(crate) fn _admit_in_memory(
    model: Option<&str>,
    est_input_tokens: Option<i32>,
    max_output_tokens: Option<i32>,
    lease: Option<pgrx::datum::Interval>,
) -> Option<pgrx::Uuid> {
    admit_in_memory(
        model,
        est_input_tokens,
        max_output_tokens,
        lease,
        BudgetLine::Tenant,
    )
}

/// `_admit_in_memory` for an eval call whose tenant has an eval budget (`_budget_check_eval`
/// in sql/evals.sql, which holds its dollars there): rate limits as any call, no dollars held
/// or checked on the tenant's budget. Granted to bulkhead_meter only.
#[pg_extern(volatile, parallel_unsafe)]
fn _admit_eval_in_memory(
    model: Option<&str>,
    est_input_tokens: Option<i32>,
    max_output_tokens: Option<i32>,
    lease: Option<pgrx::datum::Interval>,
) -> Option<pgrx::Uuid> {
    admit_in_memory(
        model,
        est_input_tokens,
        max_output_tokens,
        lease,
        BudgetLine::Eval,
    )
}

fn admit_in_memory(
    model: Option<&str>,
    est_input_tokens: Option<i32>,
    max_output_tokens: Option<i32>,
    lease: Option<pgrx::datum::Interval>,
    line: BudgetLine,
) -> Option<pgrx::Uuid> {
    if !in_memory() {
        errors::raise(&AdmissionError::Off);
    }
    let Some(tenant) = context::current_tenant() else {
        errors::raise(&AdmissionError::NoTenant);
    };
    let (Some(model), Some(est_input), Some(max_output), Some(lease)) =
        (model, est_input_tokens, max_output_tokens, lease)
    else {
        errors::raise(&AdmissionError::MissingArgument);
    };
    if !(0..=100_000_000).contains(&est_input) || !(0..=100_000_000).contains(&max_output) {
        errors::raise(&AdmissionError::TokenRange);
    }
    let lease_seconds = interval_micros(&lease) as f64 / 1e6;
    let (min_lease, min_seconds) = min_lease_seconds();
    if lease_seconds < min_seconds || lease_seconds > 86400.0 {
        errors::raise(&AdmissionError::Lease(min_lease));
    }
    let generation = generation();
    // The tenant's terms come from its slot; a backend reads them (and the price) when the slot
    // has none that are current.
    // Terms this call read, with the generation they were read under: used for this call even
    // if a change lands meanwhile (as if the call had come just before it).
    let mut fresh: Option<(TenantTerms, u64)> = None;
    let price = match cached_price(model, generation) {
        Some(price) => price,
        None => {
            let Some((terms, price)) = read_terms(model, generation) else {
                errors::raise(&AdmissionError::UnknownTenant(tenant));
            };
            fresh = Some((terms, generation));
            price
        }
    };
    let Some(price) = price else {
        errors::raise(&AdmissionError::UnknownModel(model.to_string()));
    };
    let request = Request {
        est_input_tokens: est_input,
        max_output_tokens: max_output,
        estimate: admission::estimate(
            est_input,
            max_output,
            price.input_per_mtok,
            price.output_per_mtok,
        ),
        line,
    };
    let key = key_of(tenant);
    let mut id = random_bytes();
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;

    let mut provisional = Decimal::ZERO;
    let mut expired_rows = false;
    let mut loaded: Option<Loaded> = None;
    for _ in 0..8 {
        let t = now();
        let lease_end = t + (lease_seconds * 1e6) as i64;
        let mut installed = None;
        let outcome = locked(|m| {
            admit_locked(
                m,
                &key,
                fresh.as_ref(),
                &price,
                &request,
                model,
                &mut id,
                t,
                lease_end,
                loaded.as_ref(),
                &mut installed,
                provisional,
            )
        });
        if let Some(new_slot) = installed {
            loaded = None;
            count_as_loaded(&key, new_slot);
        }
        match outcome {
            Outcome::Admitted(index) => {
                push_pending(Pending::Admitted { key, index, id });
                return Some(pgrx::Uuid::from_bytes(id));
            }
            Outcome::AdmittedToTable => {
                push_pending(Pending::AdmittedToTable {
                    key,
                    hold: request.tenant_hold(),
                    tokens: [1.0, f64::from(est_input), f64::from(max_output)],
                });
                as_meter(|| {
                    write_reservation_row(
                        &key,
                        &RecordRow {
                            id,
                            provider: price.provider.clone(),
                            model: model.to_string(),
                            est_input,
                            max_output,
                            reserved: request.tenant_hold(),
                            price_from: price.effective_from,
                            created_at: t,
                            lease_end,
                            expired: false,
                            gateway: false,
                        },
                    )
                });
                return Some(pgrx::Uuid::from_bytes(id));
            }
            Outcome::Load(period) => loaded = Some(load_period(period)),
            Outcome::Terms => {
                let generation = self::generation();
                match read_terms(model, generation) {
                    Some((terms, _)) => fresh = Some((terms, generation)),
                    None => errors::raise(&AdmissionError::UnknownTenant(tenant)),
                }
            }
            Outcome::Suspended => return refuse(AdmissionError::Suspended(tenant)),
            Outcome::Full => errors::raise(&AdmissionError::Full),
            Outcome::Refused(refusal, held_due) => {
                // Before refusing for money, let expired rows held in memory go (their release
                // is applied at commit; this decision counts it already).
                if refusal.limit == "dollar_budget" && held_due && !expired_rows {
                    expired_rows = true;
                    let (freed, next) = as_meter(|| {
                        Spi::get_two::<String, i64>(
                            "select freed::pg_catalog.text, next_expiry from bulkhead._expire_held_in_memory()",
                        )
                    })
                    .unwrap_or_else(|e| error!("expiring reservations: {e}"));
                    let freed = freed.map(|s| decimal(&s)).unwrap_or(Decimal::ZERO);
                    locked(|m| {
                        if let Some(slot) = m.find(&key) {
                            m.tenants[slot].held_next_expiry = next.unwrap_or(NEVER);
                        }
                    });
                    if freed > Decimal::ZERO {
                        provisional = freed;
                        continue;
                    }
                }
                return refuse(AdmissionError::Refused { tenant, refusal });
            }
        }
    }
    error!("budget_check could not load the tenant's admission state")
}

/// 16 bytes from pg_strong_random, drawn 4 kB at a time: without OpenSSL each call opens and
/// reads /dev/urandom, which cost more than the rest of an admission.
fn random_bytes() -> [u8; 16] {
    ENTROPY.with(|e| {
        let mut e = e.borrow_mut();
        let (pool, used) = &mut *e;
        if *used + 16 > pool.len() {
            // SAFETY: fills the buffer.
            if !unsafe { pg_sys::pg_strong_random(pool.as_mut_ptr().cast(), pool.len()) } {
                error!("could not generate a reservation id");
            }
            *used = 0;
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&pool[*used..*used + 16]);
        // Used bytes are overwritten, so that no id can be read back from the pool.
        pool[*used..*used + 16].fill(0);
        *used += 16;
        id
    })
}

/// After a reload of `key`'s slot in this transaction: the releases this transaction queued
/// for the tenant are in what the reload read (their holds, if the slot is new; their costs
/// either way), so commit must not apply them twice and an abort must take them back out.
fn count_as_loaded(key: &TenantKey, new_slot: bool) {
    PENDING.with(|p| {
        for (_, action) in p.borrow_mut().iter_mut() {
            match action {
                Pending::Release {
                    key: k,
                    counted_hold,
                    counted_spent,
                    ..
                } if k == key => {
                    *counted_hold |= new_slot;
                    *counted_spent = true;
                }
                Pending::TableHold {
                    key: k, counted, ..
                } if k == key => *counted |= new_slot,
                _ => {}
            }
        }
    });
}

/// Keeps a refusal for `_admission_refusal()` and answers NULL.
fn refuse(err: AdmissionError) -> Option<pgrx::Uuid> {
    REFUSAL.with(|r| *r.borrow_mut() = Some(err));
    None
}

/// The refusal `_admit_in_memory` just answered with NULL: (sqlstate, message, detail, hint).
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn _admission_refusal() -> TableIterator<
    'static,
    (
        name!(sqlstate, String),
        name!(message, String),
        name!(detail, Option<String>),
        name!(hint, Option<String>),
    ),
> {
    // Only the current tenant's own refusal: within one transaction the app may switch tenants.
    let current = context::current_tenant();
    let refusal = REFUSAL
        .with(|r| r.borrow_mut().take())
        .filter(|err| match err {
            AdmissionError::Refused { tenant, .. } | AdmissionError::Suspended(tenant) => {
                Some(*tenant) == current
            }
            _ => true,
        });
    TableIterator::new(refusal.into_iter().map(|err| {
        (
            err.sqlstate().code().to_string(),
            err.to_string(),
            err.detail(),
            err.hint(),
        )
    }))
}

enum Outcome {
    Admitted(u32),
    AdmittedToTable,
    /// The slot has no current terms: read them and come back.
    Terms,
    Suspended,
    /// The slot's money is not for the current period (of this kind): load it and come back.
    Load(u8),
    Full,
    /// The refusal, and whether rows held in memory have leases due.
    Refused(Refusal, bool),
}

#[allow(clippy::too_many_arguments)]
fn admit_locked(
    m: &mut Admission,
    key: &TenantKey,
    fresh: Option<&(TenantTerms, u64)>,
    price: &Price,
    request: &Request,
    model: &str,
    id: &mut [u8; 16],
    t: Micros,
    lease_end: Micros,
    loaded: Option<&Loaded>,
    installed: &mut Option<bool>,
    provisional: Decimal,
) -> Outcome {
    // A slot is created only from terms just read, which prove the tenant exists.
    let slot = match (m.find(key), fresh.is_some()) {
        (Some(slot), _) => slot,
        (None, true) => match m.find_or_insert(key) {
            Some(slot) => slot,
            None => return Outcome::Full,
        },
        (None, false) => return Outcome::Terms,
    };
    let s = &mut m.tenants[slot];
    if let Some((terms, read_under)) = fresh {
        // Unless another backend put terms read under a newer generation there meanwhile.
        if s.terms.period == 0 || s.terms_generation <= *read_under {
            s.terms = *terms;
            s.terms_generation = *read_under;
            s.terms_read_at = t;
        }
    } else if s.terms.period == 0
        || s.terms_generation != generation()
        || t - s.terms_read_at >= TERMS_TTL_MICROS
    {
        return Outcome::Terms;
    }
    let terms = s.terms;
    if !terms.active {
        return Outcome::Suspended;
    }
    {
        let s = &m.tenants[slot];
        let stale =
            s.period == 0 || s.period != terms.period || t >= s.period_end || t < s.period_start;
        if stale {
            let Some(l) = loaded.filter(|l| l.period == terms.period) else {
                return Outcome::Load(terms.period);
            };
            let s = &mut m.tenants[slot];
            *installed = Some(s.period == 0);
            if s.period == 0 {
                // New here (or after a restart): full buckets; holds are the rows held in memory.
                s.buckets = Buckets::full(&terms.limits, t);
                s.reserved = l.held;
                s.held_next_expiry = l.held_next_expiry;
            }
            s.period = terms.period;
            s.period_start = l.period_start;
            s.period_end = l.period_end;
            s.spent = l.spent;
        }
    }
    m.expire(slot, t);
    let s = &m.tenants[slot];
    let reserved = (s.reserved - provisional).max(Decimal::ZERO);
    let buckets = match admission::admit(
        &s.buckets,
        &terms.limits,
        s.spent,
        reserved,
        request,
        t,
        s.period_end,
    ) {
        Ok(b) => b,
        Err(refusal) => return Outcome::Refused(refusal, s.held_next_expiry <= t),
    };
    let fits = model.len() <= MODEL_MAX
        && price.provider.len() <= PROVIDER_MAX
        && m.may_take_record(s.records);
    let s = &mut m.tenants[slot];
    s.buckets = buckets;
    s.reserved += request.tenant_hold();
    if !fits {
        return Outcome::AdmittedToTable;
    }
    let index = m.free_head as usize;
    m.free_head = m.records_mut()[index].next;
    m.used_records += 1;
    m.stamp_index(id, index);
    let head = m.tenants[slot].head;
    let r = &mut m.records_mut()[index];
    r.state = 1;
    r.materializing = 0;
    r.gateway = 0;
    r.key = *key;
    r.id = *id;
    r.prev = NONE;
    r.next = head;
    r.est_input = request.est_input_tokens;
    r.max_output = request.max_output_tokens;
    r.reserved = request.tenant_hold();
    r.created_at = t;
    r.lease_end = lease_end;
    r.price_from = price.effective_from;
    r.provider_len = price.provider.len() as u8;
    r.provider[..price.provider.len()].copy_from_slice(price.provider.as_bytes());
    r.model_len = model.len() as u8;
    r.model[..model.len()].copy_from_slice(model.as_bytes());
    if head != NONE {
        m.records_mut()[head as usize].prev = index as u32;
    }
    let s = &mut m.tenants[slot];
    s.head = index as u32;
    s.records += 1;
    s.open_records += 1;
    s.open_held += request.tenant_hold();
    s.next_expiry = s.next_expiry.min(lease_end);
    Outcome::Admitted(index as u32)
}

/// An in-memory reservation, as `_reservation_from_memory` writes it to the table.
struct RecordRow {
    id: [u8; 16],
    provider: String,
    model: String,
    est_input: i32,
    max_output: i32,
    reserved: Decimal,
    price_from: Micros,
    created_at: Micros,
    lease_end: Micros,
    expired: bool,
    /// Written as a gateway call (queued, billed at its hold when its lease ends).
    gateway: bool,
}

/// Writes the row (its hold stays in the tenant's slot) and keeps the slot's earliest row lease.
fn write_reservation_row(key: &TenantKey, row: &RecordRow) {
    Spi::run_with_args(
        "select bulkhead._reservation_from_memory($1, $2, $3, $4, $5, $6::pg_catalog.numeric, $7, $8, $9, $10, $11)",
        &[
            pgrx::Uuid::from_bytes(row.id).into(),
            row.provider.as_str().into(),
            row.model.as_str().into(),
            row.est_input.into(),
            row.max_output.into(),
            row.reserved.to_string().into(),
            row.price_from.into(),
            row.created_at.into(),
            row.lease_end.into(),
            row.expired.into(),
            row.gateway.into(),
        ],
    )
    .unwrap_or_else(|e| error!("writing a reservation: {e}"));
    if !row.expired {
        locked(|m| {
            if let Some(slot) = m.find(key) {
                let s = &mut m.tenants[slot];
                s.held_next_expiry = s.held_next_expiry.min(row.lease_end);
            }
        });
    }
}

/// Whether this session admits in memory (for the SQL paths that settle and cancel).
/// Runs no SQL, so it carries no SET search_path (budget_check calls it on every admission).
#[pg_extern(stable, parallel_safe)]
fn _admission_in_memory() -> bool {
    in_memory()
}

/// Writes one of the current tenant's in-memory reservations to `bulkhead.reservations`
/// (`held_in_memory`): for a settle, or a queued call the worker will make. The record leaves
/// memory when this transaction commits. False when no such record is in memory.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn _materialize_reservation(reservation: pgrx::Uuid) -> bool {
    let Some(key) = current_key() else {
        return false;
    };
    materialize(&key, *reservation.as_bytes())
}

/// Takes the record `id` of `key` if `wanted` accepts it and no other transaction is writing it:
/// marked, it leaves memory when this transaction commits (and stays if it rolls back).
fn take_locked(
    m: &mut Admission,
    key: &TenantKey,
    id: &[u8; 16],
    wanted: impl Fn(&Record) -> bool,
) -> Option<(u32, RecordRow)> {
    let index = m.record(id, key)?;
    let r = &mut m.records_mut()[index];
    if r.materializing != 0 || !wanted(r) {
        return None;
    }
    r.materializing = 1;
    Some((
        index as u32,
        RecordRow {
            id: *id,
            provider: String::from_utf8_lossy(&r.provider[..r.provider_len as usize]).into_owned(),
            model: String::from_utf8_lossy(&r.model[..r.model_len as usize]).into_owned(),
            est_input: r.est_input,
            max_output: r.max_output,
            reserved: r.reserved,
            price_from: r.price_from,
            created_at: r.created_at,
            lease_end: r.lease_end,
            expired: r.state == 2,
            gateway: r.gateway != 0,
        },
    ))
}

fn materialize(key: &TenantKey, id: [u8; 16]) -> bool {
    let Some((index, taken)) = locked(|m| take_locked(m, key, &id, |_| true)) else {
        return false;
    };
    push_pending(Pending::Materializing {
        key: *key,
        index,
        id,
    });
    write_reservation_row(key, &taken);
    true
}

/// Whether one of the current tenant's reservations is in memory and being written to the
/// table by another transaction (a settle, a sweep): a settle that finds no row for it must
/// wait for that transaction rather than record the call as an orphan.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn _reservation_being_written(reservation: pgrx::Uuid) -> bool {
    let Some(key) = current_key() else {
        return false;
    };
    let id = *reservation.as_bytes();
    // This transaction's own writing (a settle in memory, then a repeat of it) is not another's.
    let ours = PENDING.with(|p| {
        p.borrow().iter().any(|(_, action)| {
            matches!(action, Pending::Materializing { key: k, id: i, .. } if *k == key && *i == id)
        })
    });
    !ours
        && locked_shared(|m| {
            m.record(&id, &key)
                .is_some_and(|index| m.records()[index].materializing != 0)
        })
}

/// Marks a reservation the current tenant's gateway admission just made as a gateway call:
/// only the gateway settles it, and unsettled when its lease ends it is charged at its hold.
/// False when it is not in memory (the caller marks its row instead).
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
pub(crate) fn _gateway_hold(reservation: pgrx::Uuid) -> bool {
    let Some(key) = current_key() else {
        return false;
    };
    let id = *reservation.as_bytes();
    locked(|m| {
        let Some(index) = m.record(&id, &key) else {
            return false;
        };
        let r = &mut m.records_mut()[index];
        if r.state != 1 || r.materializing != 0 {
            return false;
        }
        r.gateway = 1;
        true
    })
}

/// The gateway's settle of calls whose holds are still in memory: takes those of `reservations`
/// that are the current tenant's open gateway calls, without writing a reservation row (the
/// ledger row is the record; the caller releases their holds with `_release_in_memory`). They
/// leave memory when this transaction commits. Returns them, with what their ledger rows need.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn _take_gateway_holds(
    reservations: Vec<Option<pgrx::Uuid>>,
) -> TableIterator<
    'static,
    (
        name!(reservation, pgrx::Uuid),
        name!(provider, String),
        name!(model, String),
        name!(est_input_tokens, i32),
        name!(max_output_tokens, i32),
        name!(reserved_usd, String),
        name!(price_from, i64),
    ),
> {
    let (false, Some(tenant)) = (
        MEMORY.load(Ordering::Acquire).is_null(),
        context::current_tenant(),
    ) else {
        return TableIterator::new(Vec::new());
    };
    let key = key_of(tenant);
    let ids: Vec<[u8; 16]> = reservations
        .into_iter()
        .flatten()
        .map(|u| *u.as_bytes())
        .collect();
    let taken: Vec<(u32, RecordRow)> = locked(|m| {
        ids.iter()
            .filter_map(|id| take_locked(m, &key, id, |r| r.gateway != 0 && r.state == 1))
            .collect()
    });
    let rows: Vec<_> = taken
        .into_iter()
        .map(|(index, t)| {
            push_pending(Pending::Materializing {
                key,
                index,
                id: t.id,
            });
            (
                pgrx::Uuid::from_bytes(t.id),
                t.provider,
                t.model,
                t.est_input,
                t.max_output,
                t.reserved.to_string(),
                t.price_from,
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// Writes the current tenant's gateway calls whose lease ended unsettled (the gateway died, or
/// lost its connection) to `bulkhead.reservations`, lease ended, for the caller's expiry to
/// charge at their hold. Returns how many.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn _materialize_lapsed_gateway_holds() -> i32 {
    let t = now();
    write_gateway_holds(|r| r.lease_end <= t)
}

/// Writes the current tenant's gateway calls admitted at least `age` ago as rows (their holds
/// stay in memory), so that they outlive a restart of the server. Returns how many.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn _persist_gateway_holds(age: pgrx::datum::Interval) -> i32 {
    let before = now() - interval_micros(&age);
    write_gateway_holds(|r| r.created_at <= before)
}

/// The tenants of this database with gateway calls in memory admitted at least `age` ago.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn _tenants_with_old_gateway_holds(
    age: pgrx::datum::Interval,
) -> TableIterator<'static, (name!(tenant_id, pgrx::Uuid),)> {
    if MEMORY.load(Ordering::Acquire).is_null() {
        return TableIterator::new(Vec::new());
    }
    let before = now() - interval_micros(&age);
    // SAFETY: a plain global set at connection start.
    let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
    // A walk over every record, once a second per gateway: in shared mode, beside other readers.
    let tenants: std::collections::BTreeSet<[u8; 16]> = locked_shared(|m| {
        m.records()
            .iter()
            .filter(|r| {
                r.state == 1
                    && r.gateway != 0
                    && r.materializing == 0
                    && r.key.db == db
                    && r.created_at <= before
            })
            .map(|r| r.key.tenant)
            .collect()
    });
    TableIterator::new(
        tenants
            .into_iter()
            .map(|t| (pgrx::Uuid::from_bytes(t),))
            .collect::<Vec<_>>(),
    )
}

/// Writes the current tenant's open gateway holds that `due` selects as rows.
fn write_gateway_holds(due: impl Fn(&Record) -> bool) -> i32 {
    let Some(key) = current_key() else {
        return 0;
    };
    let taken: Vec<(u32, RecordRow)> = locked(|m| {
        let Some(slot) = m.find(&key) else {
            return Vec::new();
        };
        let mut chosen = Vec::new();
        let mut i = m.tenants[slot].head;
        while i != NONE {
            let r = &m.records()[i as usize];
            if r.gateway != 0 && r.state == 1 && r.materializing == 0 && due(r) {
                chosen.push(r.id);
            }
            i = r.next;
        }
        chosen
            .iter()
            .filter_map(|id| take_locked(m, &key, id, |_| true))
            .collect()
    });
    // Every taken record is this transaction's before the first write: should a write fail, the
    // abort gives them all back (none is left marked with no owner).
    for (index, taken) in &taken {
        push_pending(Pending::Materializing {
            key,
            index: *index,
            id: taken.id,
        });
    }
    for (_, taken) in &taken {
        write_reservation_row(&key, taken);
    }
    taken.len() as i32
}

/// An interval in microseconds, as PostgreSQL's extract(epoch ...) counts it (a month is 30.4375
/// days).
fn interval_micros(interval: &pgrx::datum::Interval) -> i64 {
    let seconds = f64::from(interval.months()) * 30.4375 * 86400.0
        + f64::from(interval.days()) * 86400.0
        + interval.micros() as f64 / 1e6;
    (seconds * 1e6) as i64
}

/// At commit: releases `hold` from the current tenant's budget in memory, counts `spent` in its
/// period and gives back the tokens the provider did not count (negative: debt).
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn _release_in_memory(
    hold: pgrx::AnyNumeric,
    spent: pgrx::AnyNumeric,
    itpm_refund: i64,
    otpm_refund: i64,
) {
    let Some(tenant) = context::current_tenant() else {
        return;
    };
    let (hold, spent) = (decimal(&hold.to_string()), decimal(&spent.to_string()));
    if hold < Decimal::ZERO || spent < Decimal::ZERO {
        errors::raise(&AdmissionError::Amount(format!("{hold} / {spent}")));
    }
    if !attached() {
        return;
    }
    // Applied at commit to the tenant's slot, if it has one. Kept even when it has none now: a
    // slot loaded later in this transaction reads the tables with this change in them (see
    // Pending::Release). A slot loaded by another session waits for the budget_state row lock
    // every caller holds, so it reads the tables after this transaction ends.
    push_pending(Pending::Release {
        key: key_of(tenant),
        hold,
        spent,
        itpm: itpm_refund as f64,
        otpm: otpm_refund as f64,
        counted_hold: false,
        counted_spent: false,
    });
}

/// The table path admitted a call holding `hold` for the current tenant (see Pending::TableHold).
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn _table_hold_in_memory(hold: pgrx::AnyNumeric) {
    let (true, Some(tenant)) = (attached(), context::current_tenant()) else {
        return;
    };
    push_pending(Pending::TableHold {
        key: key_of(tenant),
        hold: decimal(&hold.to_string()).max(Decimal::ZERO),
        counted: false,
    });
}

/// At commit: forgets a deleted tenant's admission state in this database.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn _forget_in_memory(tenant: pgrx::Uuid) {
    let key = key_of(tenant);
    if attached() && has_slot(&key) {
        push_pending(Pending::Forget { key });
    }
}

/// Expires the current tenant's in-memory reservations whose lease ran out; returns how many
/// (for expire_reservations() and the sweep of expire_all_reservations()).
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn _expire_in_memory() -> i64 {
    if MEMORY.load(Ordering::Acquire).is_null() {
        return 0;
    }
    let Some(key) = context::current_tenant().map(key_of) else {
        return 0;
    };
    let t = now();
    locked(|m| m.find(&key).map_or(0, |slot| m.expire(slot, t)))
}

/// Records `_open_in_memory` lists one by one; the rest are summed from the slot's counters,
/// so that a report never holds the admission lock for longer than this walk.
const REPORT_WALK_MAX: usize = 256;

/// The current tenant's open in-memory reservations by model: (provider, model, count, held).
/// Beyond REPORT_WALK_MAX records, the rest come as one row with an empty provider and model
/// `(more in memory)`.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn _open_in_memory() -> TableIterator<
    'static,
    (
        name!(provider, String),
        name!(model, String),
        name!(open_reservations, i64),
        name!(open_reserved_usd, pgrx::AnyNumeric),
    ),
> {
    type Copied = ([u8; PROVIDER_MAX], u8, [u8; MODEL_MAX], u8, Decimal);
    let mut copied: Vec<Copied> = Vec::with_capacity(REPORT_WALK_MAX);
    let mut total = (0u32, Decimal::ZERO);
    if let (true, Some(tenant)) = (attached(), context::current_tenant()) {
        let key = key_of(tenant);
        locked(|m| {
            let Some(slot) = m.find(&key) else {
                return;
            };
            total = (m.tenants[slot].open_records, m.tenants[slot].open_held);
            let (mut i, mut steps) = (m.tenants[slot].head, 0);
            while i != NONE && steps < REPORT_WALK_MAX {
                let r = &m.records()[i as usize];
                if r.state == 1 {
                    copied.push((r.provider, r.provider_len, r.model, r.model_len, r.reserved));
                }
                i = r.next;
                steps += 1;
            }
        });
    }
    let mut rows: HashMap<(String, String), (i64, Decimal)> = HashMap::new();
    let (mut listed, mut listed_held) = (0u32, Decimal::ZERO);
    for (provider, provider_len, model, model_len, held) in copied {
        let name =
            |bytes: &[u8], len: u8| String::from_utf8_lossy(&bytes[..len as usize]).into_owned();
        let e = rows
            .entry((name(&provider, provider_len), name(&model, model_len)))
            .or_default();
        e.0 += 1;
        e.1 += held;
        listed += 1;
        listed_held += held;
    }
    if total.0 > listed {
        rows.insert(
            (String::new(), "(more in memory)".to_string()),
            (
                i64::from(total.0 - listed),
                (total.1 - listed_held).max(Decimal::ZERO),
            ),
        );
    }
    TableIterator::new(rows.into_iter().map(|((provider, model), (n, held))| {
        (
            provider,
            model,
            n,
            pgrx::AnyNumeric::try_from(held.to_string().as_str()).unwrap_or_default(),
        )
    }))
}
