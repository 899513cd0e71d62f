//! Per-tenant telemetry (issue #30): counts of what each tenant's sessions did, kept in shared
//! memory when the library is preloaded, never a value of a row.
//!
//! - Counted per tenant: token binds; executor runs of statements on protected tables and
//!   the rows they returned (SELECT) or wrote (INSERT, UPDATE, DELETE), in all and for each
//!   protected table (the first [`TABLES`] a tenant used; the rest summed as one); audit
//!   records linked into its chain; security events by kind; its last bind and last write;
//!   the sessions bound to it now; and the latest time to revoke (from the commit of a
//!   revocation of its access to the first refusal of a session bound before it).
//! - A backend adds up its transaction's counts and publishes them in one step when the
//!   transaction ends (one lock per transaction): after a COMMIT all of them; after a
//!   rollback its binds, statements and rows read, not rows written or audit records (which
//!   did not happen). Security events and the time to revoke are published at once (the
//!   statement that causes them is rolled back).
//! - Bounded: at most `tenancy.telemetry_tenants` tenants (at most [`MAX_TRACKED`]) are
//!   tracked; a new one takes the slot of the least recently active, whose counts are added to
//!   one "other" bucket.
//! - Off with `tenancy.telemetry = off` (superusers: per database or role), and nothing without
//!   preloading: `tenancy.tenant_stats` then says so and shows what the catalog and the
//!   planner's statistics tell.

use crate::pg::executor_end::{self, Touched};
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, pg_sys, PGRXSharedMemory, PgLwLock};
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use uuid::Uuid;

/// The most tenants tracked at once (the setting's maximum).
pub const MAX_TRACKED: usize = crate::gucs::TELEMETRY_MAX_TENANTS as usize;
/// Protected tables counted one by one per tenant.
pub const TABLES: usize = 8;
/// Sessions whose binding is published (by PostgreSQL process slot).
const SESSIONS: usize = 1024;
/// Security event kinds (`events::KINDS`, at most this many).
pub const KINDS: usize = 16;

#[derive(Clone, Copy, Default, Debug, PartialEq)]
pub struct TableCounts {
    pub relid: u32,
    pub statements: u64,
    pub rows_read: u64,
    pub rows_written: u64,
}

impl TableCounts {
    fn add(&mut self, o: &TableCounts) {
        self.statements += o.statements;
        self.rows_read += o.rows_read;
        self.rows_written += o.rows_written;
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Counts {
    pub binds: u64,
    pub statements: u64,
    pub rows_read: u64,
    pub rows_written: u64,
    pub audit_records: u64,
    pub events: [u64; KINDS],
    /// PostgreSQL timestamps (microseconds since 2000), 0: never.
    pub last_bind: i64,
    pub last_write: i64,
    /// The commit of a revocation no session has been refused for yet (0: none).
    pub revoked_at: i64,
    /// Microseconds; -1: none measured.
    pub time_to_revoke: i64,
    pub tables: [TableCounts; TABLES],
    /// The tables past the first [`TABLES`] (relid 0).
    pub other_tables: TableCounts,
    /// A statement wrote to a protected table (for `last_write`; pending counts only).
    pub wrote: bool,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            binds: 0,
            statements: 0,
            rows_read: 0,
            rows_written: 0,
            audit_records: 0,
            events: [0; KINDS],
            last_bind: 0,
            last_write: 0,
            revoked_at: 0,
            time_to_revoke: -1,
            tables: [TableCounts::default(); TABLES],
            other_tables: TableCounts::default(),
            wrote: false,
        }
    }
}

impl Counts {
    /// Add `o`'s counts (the later of their times).
    pub fn add(&mut self, o: &Counts) {
        self.binds += o.binds;
        self.statements += o.statements;
        self.rows_read += o.rows_read;
        self.rows_written += o.rows_written;
        self.audit_records += o.audit_records;
        for (a, b) in self.events.iter_mut().zip(o.events.iter()) {
            *a += b;
        }
        self.last_bind = self.last_bind.max(o.last_bind);
        self.last_write = self.last_write.max(o.last_write);
        for t in o.tables.iter().filter(|t| t.relid != 0) {
            self.table(t.relid).add(t);
        }
        self.other_tables.add(&o.other_tables);
    }

    /// The counts of table `relid`: its own, a free one, or the others'.
    fn table(&mut self, relid: u32) -> &mut TableCounts {
        let i = self
            .tables
            .iter()
            .position(|t| t.relid == relid)
            .or_else(|| self.tables.iter().position(|t| t.relid == 0));
        match i {
            Some(i) => {
                self.tables[i].relid = relid;
                &mut self.tables[i]
            }
            None => &mut self.other_tables,
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Slot {
    used: bool,
    /// The database whose tenant this is: tenant ids are a database's (a database cloned from
    /// another has the same ones), so counts are kept per database and tenant.
    db: u32,
    tenant: [u8; 16],
    last_active: i64,
    counts: Counts,
}

#[derive(Clone, Copy, Default)]
struct Session {
    pid: i32,
    db: u32,
    tenant: [u8; 16],
}

#[derive(Clone, Copy)]
pub struct Telemetry {
    slots: [Slot; MAX_TRACKED],
    /// Tenants evicted from their slot, all added up.
    other: Counts,
    evicted: u64,
    sessions: [Session; SESSIONS],
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            slots: [Slot::default(); MAX_TRACKED],
            other: Counts::default(),
            evicted: 0,
            sessions: [Session::default(); SESSIONS],
        }
    }
}

// SAFETY: plain data (integers, booleans and byte arrays), no pointers: valid in shared memory.
unsafe impl PGRXSharedMemory for Telemetry {}

// SAFETY: the lock's name is unique to pg_tenancy; pg_shmem_init! registers it at preload.
static TELEMETRY: PgLwLock<Telemetry> = unsafe { PgLwLock::new(c"pg_tenancy_telemetry") };
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// What this backend's transaction has counted, per tenant, not published yet.
#[derive(Default)]
struct Pending {
    /// FxHash: tenant ids are the catalog's, and this map is filled on every statement.
    counts: FxHashMap<Uuid, Counts>,
    /// Tenants whose access this transaction revoked.
    revoked: Vec<Uuid>,
    /// Rows written per tenant and table when each open subtransaction started: what a
    /// rolled-back savepoint's rows are undone to.
    savepoints: Vec<FxHashMap<Uuid, Written>>,
    /// The tenant this session's entry publishes (None: unbound).
    published_session: Option<Uuid>,
    exit_registered: bool,
}

/// A tenant's rows written, in all and per table, at a savepoint.
#[derive(Clone)]
struct Written {
    rows: u64,
    tables: [u64; TABLES],
    other: u64,
}

impl Written {
    fn of(c: &Counts) -> Written {
        Written {
            rows: c.rows_written,
            tables: c.tables.map(|t| t.rows_written),
            other: c.other_tables.rows_written,
        }
    }

    fn restore(&self, c: &mut Counts) {
        c.rows_written = self.rows;
        for (t, w) in c.tables.iter_mut().zip(self.tables) {
            t.rows_written = w;
        }
        c.other_tables.rows_written = self.other;
    }
}

/// A subtransaction started, committed or aborted: an aborted one's rows written are undone
/// (its statements and rows read stay counted, as a rolled-back transaction's do).
fn subxact(e: executor_end::SubXact) {
    if !on() {
        return;
    }
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        match e {
            executor_end::SubXact::Start => {
                let saved = p.counts.iter().map(|(t, c)| (*t, Written::of(c))).collect();
                p.savepoints.push(saved);
            }
            executor_end::SubXact::Commit => {
                p.savepoints.pop();
            }
            executor_end::SubXact::Abort => {
                if let Some(saved) = p.savepoints.pop() {
                    for (tenant, c) in p.counts.iter_mut() {
                        match saved.get(tenant) {
                            Some(w) => w.restore(c),
                            None => Written {
                                rows: 0,
                                tables: [0; TABLES],
                                other: 0,
                            }
                            .restore(c),
                        }
                    }
                }
            }
        }
    });
}

thread_local! {
    static PENDING: RefCell<Pending> = RefCell::new(Pending::default());
    /// The slot each tenant had when this backend last found it (checked under the lock).
    static SLOT_OF: RefCell<FxHashMap<Uuid, usize>> = RefCell::new(FxHashMap::default());
}

pub fn init() {
    // SAFETY: reads a flag PostgreSQL sets while it loads shared_preload_libraries.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        pg_shmem_init!(TELEMETRY);
        PRELOADED.store(true, Ordering::Relaxed);
    }
    executor_end::on_subxact(subxact);
    executor_end::observe(executor_end::Observer {
        wanted: || on() && crate::authz::acting_tenant_unchecked().is_some(),
        finished: statement,
    });
}

/// Whether counts are kept: preloaded and `tenancy.telemetry` on.
pub fn on() -> bool {
    PRELOADED.load(Ordering::Relaxed) && crate::gucs::flag(&crate::gucs::TELEMETRY)
}

pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

/// This backend's database.
fn my_db() -> u32 {
    // SAFETY: reads this process's own database oid, set once at connection.
    u32::from(unsafe { pg_sys::MyDatabaseId })
}

fn now() -> i64 {
    crate::pg::unguarded::now()
}

fn pending(tenant: Uuid, f: impl FnOnce(&mut Counts)) {
    PENDING.with(|p| f(p.borrow_mut().counts.entry(tenant).or_default()));
}

/// A finished statement of a bound session (the executor's observer).
fn statement(processed: u64, touched: &[Touched]) {
    let Some(tenant) = crate::authz::acting_tenant_unchecked() else {
        return;
    };
    let Some(protected) = crate::catalog::protected_relids() else {
        return;
    };
    // A role-mapped session is published as bound when its transaction ends (never in a
    // transaction callback: registering there could fail at COMMIT).
    register_exit();
    let mut any = false;
    pending(tenant, |c| {
        let (mut wrote, mut rows_written, mut rows_read) = (false, false, false);
        for t in touched.iter().filter(|t| protected.contains(&t.relid)) {
            any = true;
            let tc = c.table(t.relid);
            tc.statements += 1;
            if t.written {
                wrote = true;
                // Written by the top-level statement: its rows. Written by a data-modifying
                // WITH only: PostgreSQL counts no rows of it.
                if t.counted {
                    tc.rows_written += processed;
                    rows_written = true;
                }
            } else if t.read {
                // Only read: the statement's rows came from it (a SELECT's rows returned;
                // an INSERT ... SELECT's rows copied out of it).
                tc.rows_read += processed;
                rows_read = true;
            }
        }
        if any {
            c.statements += 1;
            if rows_written {
                c.rows_written += processed;
            }
            if rows_read {
                c.rows_read += processed;
            }
            c.wrote |= wrote;
        }
    });
}

/// A token bind of `tenant` succeeded.
pub fn bound(tenant: Uuid) {
    if !on() {
        return;
    }
    pending(tenant, |c| {
        c.binds += 1;
        c.last_bind = now();
    });
    publish_session(Some(tenant));
}

/// `n` audit records of `tenant` were linked into its chain (at PRE_COMMIT).
pub fn audit_records(tenant: Uuid, n: u64) {
    if on() {
        pending(tenant, |c| c.audit_records += n);
    }
}

/// This transaction revoked access in `tenant` (a member, mapping, token, subject, support
/// grant, privilege or role; a suspension or decommission).
pub fn revoked(tenant: Uuid) {
    if on() {
        PENDING.with(|p| p.borrow_mut().revoked.push(tenant));
    }
}

/// A security event of kind `kind` (its index) concerning `tenant` (None: no tenant
/// verified: counted in the "other" bucket).
pub fn event(tenant: Option<Uuid>, kind: usize) {
    if !on() || kind >= KINDS {
        return;
    }
    let mut t = TELEMETRY.exclusive();
    match tenant {
        Some(tenant) => slot(&mut t, tenant, now()).events[kind] += 1,
        None => t.other.events[kind] += 1,
    }
}

/// A session bound to `tenant` was refused because its access was revoked: the time since
/// that revocation's commit, for the first such session.
pub fn revocation_noticed(tenant: Uuid) {
    if !on() {
        return;
    }
    let at = now();
    let mut t = TELEMETRY.exclusive();
    let c = slot(&mut t, tenant, at);
    if c.revoked_at > 0 {
        c.time_to_revoke = (at - c.revoked_at).max(0);
        c.revoked_at = 0;
    }
}

/// The end of this backend's transaction: publishes its counts (`committed`: committed or
/// prepared), and the tenant the session is still bound to (`bound`, None when its binding
/// ended with the transaction).
pub fn end_of_transaction(committed: bool, bound: Option<Uuid>) {
    executor_end::forget_runs();
    let (mut counts, revoked, session_changed, bound) = PENDING.with(|p| {
        let mut p = p.borrow_mut();
        // Published only once its exit will clear it (registered outside this callback).
        let bound = bound.filter(|_| p.exit_registered);
        let changed = p.published_session != bound;
        p.savepoints.clear();
        (
            std::mem::take(&mut p.counts),
            std::mem::take(&mut p.revoked),
            changed,
            bound,
        )
    });
    if !on() || (counts.is_empty() && revoked.is_empty() && !session_changed) {
        give_back(counts);
        return;
    }
    let at = now();
    if !committed {
        for c in counts.values_mut() {
            c.rows_written = 0;
            c.audit_records = 0;
            for t in c
                .tables
                .iter_mut()
                .chain(std::iter::once(&mut c.other_tables))
            {
                t.rows_written = 0;
            }
        }
    }
    let procno = executor_end::my_procno().filter(|n| *n < SESSIONS);
    {
        // One lock for the counts and the session's entry.
        let mut t = TELEMETRY.exclusive();
        if let (true, Some(procno)) = (session_changed, procno) {
            // SAFETY: reads this process's pid.
            let pid = unsafe { pg_sys::MyProcPid };
            t.sessions[procno] = Session {
                pid: if bound.is_some() { pid } else { 0 },
                db: my_db(),
                tenant: bound.map(|b| *b.as_bytes()).unwrap_or_default(),
            };
        }
        for (tenant, c) in &counts {
            let s = slot(&mut t, *tenant, at);
            if committed && (c.rows_written > 0 || c.wrote) {
                s.last_write = at;
            }
            s.add(c);
        }
        if committed {
            for tenant in &revoked {
                slot(&mut t, *tenant, at).revoked_at = at;
            }
        }
    }
    if session_changed {
        PENDING.with(|p| p.borrow_mut().published_session = bound);
    }
    give_back(counts);
}

/// The next transaction counts into this map's allocation, emptied, rather than a new one
/// (one allocation and its rehash less a statement in autocommit), unless a transaction of
/// many tenants grew it.
fn give_back(mut counts: FxHashMap<Uuid, Counts>) {
    if counts.capacity() <= 16 {
        counts.clear();
        PENDING.with(|p| {
            let mut p = p.borrow_mut();
            if p.counts.is_empty() && p.counts.capacity() == 0 {
                p.counts = counts;
            }
        });
    }
}

/// This session's entry among the bound sessions: `tenant`, or none.
fn publish_session(tenant: Option<Uuid>) {
    let Some(procno) = executor_end::my_procno().filter(|n| *n < SESSIONS) else {
        return;
    };
    if tenant.is_some() {
        register_exit();
    }
    let changed = PENDING.with(|p| {
        let mut p = p.borrow_mut();
        let changed = p.published_session != tenant;
        p.published_session = tenant;
        changed
    });
    if changed {
        // SAFETY: reads this process's pid.
        let pid = unsafe { pg_sys::MyProcPid };
        TELEMETRY.exclusive().sessions[procno] = Session {
            pid: if tenant.is_some() { pid } else { 0 },
            db: my_db(),
            tenant: tenant.map(|t| *t.as_bytes()).unwrap_or_default(),
        };
    }
}

/// Once per backend: clear its session entry when it exits.
fn register_exit() {
    let first = PENDING.with(|p| !std::mem::replace(&mut p.borrow_mut().exit_registered, true));
    if first {
        executor_end::at_exit(session_exit);
    }
}

/// At the backend's exit: its session entry is cleared.
extern "C-unwind" fn session_exit(_code: i32, _arg: pg_sys::Datum) {
    if let Some(procno) = executor_end::my_procno().filter(|n| *n < SESSIONS) {
        TELEMETRY.exclusive().sessions[procno] = Session::default();
    }
}

/// The counts of `tenant`, taking a slot for it if it has none (under the caller's exclusive
/// lock): its own (as this backend last found it, or searched), a free one within the cap, or
/// the least recently active tenant's, whose counts go to the "other" bucket.
fn slot(t: &mut Telemetry, tenant: Uuid, at: i64) -> &mut Counts {
    let key = *tenant.as_bytes();
    let db = my_db();
    let cap = (crate::gucs::TELEMETRY_TENANTS.get().max(1) as usize).min(MAX_TRACKED);
    let cached = SLOT_OF.with(|s| s.borrow().get(&tenant).copied());
    let mine = |s: &Slot| s.used && s.tenant == key && s.db == db;
    let i = match cached.filter(|&i| i < cap && mine(&t.slots[i])) {
        Some(i) => i,
        None => {
            let i = match t.slots[..cap].iter().position(mine) {
                Some(i) => i,
                None => {
                    let i = match t.slots[..cap].iter().position(|s| !s.used) {
                        Some(i) => i,
                        None => {
                            let (i, _) = t.slots[..cap]
                                .iter()
                                .enumerate()
                                .min_by_key(|(_, s)| s.last_active)
                                .expect("a cap of at least one slot");
                            let mut gone = t.slots[i].counts;
                            // The bucket is read from every database, where a table oid of
                            // this one names nothing: its tables are summed as one.
                            for tc in std::mem::take(&mut gone.tables) {
                                gone.other_tables.add(&tc);
                            }
                            t.other.add(&gone);
                            t.evicted += 1;
                            i
                        }
                    };
                    t.slots[i] = Slot {
                        used: true,
                        db,
                        tenant: key,
                        last_active: at,
                        counts: Counts::default(),
                    };
                    i
                }
            };
            SLOT_OF.with(|s| {
                let mut s = s.borrow_mut();
                if s.len() > 4 * MAX_TRACKED {
                    s.clear();
                }
                s.insert(tenant, i);
            });
            i
        }
    };
    t.slots[i].last_active = at;
    &mut t.slots[i].counts
}

/// What shared memory holds for this database: each tracked tenant's counts with its bound
/// sessions, then the "other" bucket with the number of tenants evicted into it, the counts of
/// other databases' tenants and the sessions of untracked tenants. Empty when not preloaded.
pub struct Snapshot {
    pub tenants: Vec<(Uuid, Counts, u64)>,
    pub other: Counts,
    pub other_sessions: u64,
    pub evicted: u64,
    pub cap: usize,
}

pub fn snapshot() -> Option<Snapshot> {
    if !preloaded() {
        return None;
    }
    let cap = (crate::gucs::TELEMETRY_TENANTS.get().max(1) as usize).min(MAX_TRACKED);
    let db = my_db();
    let t = TELEMETRY.share();
    let mut sessions: HashMap<(u32, [u8; 16]), u64> = HashMap::new();
    for s in t.sessions.iter().filter(|s| s.pid != 0) {
        *sessions.entry((s.db, s.tenant)).or_default() += 1;
    }
    let mut other = t.other;
    for s in t.slots.iter().filter(|s| s.used && s.db != db) {
        // Another database's table oids name nothing here: its tables are summed as one.
        let mut c = s.counts;
        for tc in std::mem::take(&mut c.tables) {
            c.other_tables.add(&tc);
        }
        other.add(&c);
    }
    let tenants: Vec<(Uuid, Counts, u64)> = t
        .slots
        .iter()
        .filter(|s| s.used && s.db == db)
        .map(|s| {
            (
                Uuid::from_bytes(s.tenant),
                s.counts,
                sessions.remove(&(s.db, s.tenant)).unwrap_or(0),
            )
        })
        .collect();
    Some(Snapshot {
        tenants,
        other,
        other_sessions: sessions.values().sum(),
        evicted: t.evicted,
        cap,
    })
}
