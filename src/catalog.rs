//! pg_tenancy's own catalog (tenants, keys, tenant roles, members, role mappings): privileged
//! access and a per-backend cache.
//!
//! The tables are readable only by their owner. Functions of the extension are SECURITY INVOKER
//! (so they know their real caller) and read or write the tables through [`with_owner`], which
//! switches to the owner with a pinned `search_path` for the length of one call, as a SECURITY
//! DEFINER function would.
//!
//! Lookups are cached per backend, one entry per tenant (its row, roles, grants, members,
//! support grants, revocations; at most `tenancy.cache_tenants`, least recently used dropped
//! first) beside the platform-wide rows (keys, mappings, protected tables). Every backend
//! receives invalidations at its next transaction start (or lock acquisition, and at the start
//! of every statement that reads the binding: `binding::accept_invalidations_once_per_statement`):
//! - a change to a tenant's own rows is announced by the row trigger [`tenant_changed`] as a
//!   targeted invalidation of that tenant (`src/pg/targeted_inval.rs`); [`tenant_invalidated`]
//!   drops that tenant's entry and moves its [`generation_of`];
//! - any other change (and a TRUNCATE, and a bulk change of more than 256 tenants) queues a
//!   relcache invalidation of the table (`catalog_changed`); [`relcache_callback`] drops the
//!   whole cache and bumps [`generation`], which every tenant's generation includes.
//!
//! Bindings remember their tenant's generation as they were validated and are validated again
//! when it moves: that is how a suspension, a revoked key or a removed member reaches every
//! session from its next statement, without a catalog query on every statement, and without
//! the sessions of other tenants reading anything again.
//!
//! Every read of the catalog takes a fresh MVCC snapshot ([`fresh_select`]), never the
//! transaction's: a session in a REPEATABLE READ transaction (or one long statement) that
//! refills its cache after a revocation must read the revocation, not the rows its old snapshot
//! shows, or the stale rows would stay cached for later transactions too. A fill that an
//! invalidation overtakes while it runs is not kept ([`store`]).
//!
//! Switching user: [`with_owner`] / [`as_owner_running_no_sql`] (pg_tenancy's own tables, as their owner) and
//! [`as_table_owner`] (DML and DDL on a user's table, as that table's owner, inside a
//! security-restricted operation). Every call site is listed, with why it is safe, in
//! `src/TRUST_BOUNDARIES.md`; a unit test keeps that list and the code in step.

use crate::errors::{self, UNDEFINED_OBJECT};
use jsonwebtoken::{Algorithm, DecodingKey};
use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct TenantRow {
    pub id: Uuid,
    pub slug: String,
    pub status: String,
    pub region: Option<String>,
    pub settings: serde_json::Value,
    /// Operators' ceilings on the resource settings (src/lifecycle/limits.rs).
    pub limits: serde_json::Value,
}

impl TenantRow {
    pub fn is_active(&self) -> bool {
        self.status == "active"
    }
}

pub struct KeyRow {
    pub kid: String,
    pub alg: Algorithm,
    pub key: Option<DecodingKey>,
    pub tenant: Option<Uuid>,
    pub not_after: Option<i64>,
    pub revoked: bool,
}

#[derive(Debug, Clone)]
pub struct Mapping {
    pub tenant: Uuid,
    pub roles: Vec<String>,
}

/// What the cache keeps about one tenant: dropped together when the tenant changes (a
/// targeted invalidation, see [`tenant_invalidated`]) or when the tenant is the least recently
/// used of more than `tenancy.cache_tenants`.
struct TenantEntry {
    /// The hash its changes are announced with ([`tenant_hash`]).
    hash: u32,
    /// The tenant's row (Some(None): no such tenant).
    row: Option<Option<Rc<TenantRow>>>,
    roles: Option<Rc<Vec<String>>>,
    privileges: Option<Rc<Vec<Privilege>>>,
    /// Whether the tenant has any member row: most tenants of a platform that signs roles
    /// into tokens have none, and then no (tenant, subject) is looked up.
    has_members: Option<bool>,
    /// Whether the tenant has any subject revocation (likewise).
    has_revocations: Option<bool>,
    members: HashMap<String, Rc<Vec<String>>>,
    support: HashMap<u32, Option<Rc<SupportGrant>>>,
    /// subject -> tokens issued before this instant (microseconds since the Unix epoch) are
    /// refused (tenancy.revoke_subject); None: no revocation.
    subject_revocations: HashMap<String, Option<i64>>,
    /// jti -> whether a token of that id is revoked in this tenant (tenancy.revoke_token, for
    /// this tenant or for every tenant). Kept with the tenant, so that a revocation in one
    /// tenant drops this tenant's entry only (a targeted invalidation); one for every tenant
    /// drops every cache.
    token_revocations: HashMap<String, bool>,
}

impl TenantEntry {
    fn new(hash: u32) -> TenantEntry {
        TenantEntry {
            hash,
            row: None,
            roles: None,
            privileges: None,
            has_members: None,
            has_revocations: None,
            members: HashMap::new(),
            support: HashMap::new(),
            subject_revocations: HashMap::new(),
            token_revocations: HashMap::new(),
        }
    }
}

/// At most this many subjects (members, revocations), token ids (token revocations) or
/// operators (support grants) are kept per tenant; a full map is emptied. It bounds memory,
/// not work.
const PER_TENANT_KEPT: usize = 1024;

struct Cache {
    tenants: lru::LruCache<Uuid, TenantEntry>,
    /// slug -> tenant id (None: no such tenant). Slugs never change; a tenant's entry is
    /// dropped with it, and entries saying "none" with any tenant's change (one may be new).
    slugs: HashMap<String, Option<Uuid>>,
    keys: HashMap<String, Option<Rc<KeyRow>>>,
    mappings: HashMap<u32, Rc<Vec<Mapping>>>,
    protected: Option<Rc<OidSet>>,
}

/// `tenancy.cache_tenants`, as a capacity.
fn tenants_capacity() -> std::num::NonZeroUsize {
    std::num::NonZeroUsize::new(crate::gucs::CACHE_TENANTS.get().max(1) as usize)
        .unwrap_or(std::num::NonZeroUsize::MIN)
}

impl Default for Cache {
    fn default() -> Cache {
        Cache {
            tenants: lru::LruCache::new(tenants_capacity()),
            slugs: HashMap::new(),
            keys: HashMap::new(),
            mappings: HashMap::new(),
            protected: None,
        }
    }
}

/// A live support grant: an operator may act in a tenant with these privileges until expiry.
#[derive(Debug, Clone)]
pub struct SupportGrant {
    pub id: i64,
    pub privileges: Vec<String>,
    pub expires_at: i64,
}

/// A tenant role's privilege on one protected table, or on all of them (`relid` None).
#[derive(Debug, Clone)]
pub struct Privilege {
    pub role: String,
    pub relid: Option<pg_sys::Oid>,
    pub privilege: String,
}

#[derive(Clone, Copy)]
struct Rels {
    owner: pg_sys::Oid,
    oids: [pg_sys::Oid; 12],
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
    static RELS: Cell<Option<Rels>> = const { Cell::new(None) };
    static GENERATION: Cell<u64> = const { Cell::new(1) };
    /// Targeted invalidations received, per bucket of their hash ([`generation_of`]).
    static BUCKETS: RefCell<[u32; BUCKETS_N]> = const { RefCell::new([0; BUCKETS_N]) };
    /// Targeted invalidations received, all told ([`fill_epoch`]).
    static TARGETED: Cell<u32> = const { Cell::new(0) };
    /// This backend's counters, shown by `tenancy.cache_stats()`: tenants' rows read from the
    /// catalog, targeted invalidations received, times the whole cache was dropped.
    static STATS: Cell<(u64, u64, u64)> = const { Cell::new((0, 0, 0)) };
}

fn count(f: impl FnOnce(&mut (u64, u64, u64))) {
    STATS.with(|s| {
        let mut v = s.get();
        f(&mut v);
        s.set(v);
    });
}

/// This backend's catalog cache: how many tenants it holds and may hold, how many tenant rows
/// it read from the catalog, how many targeted invalidations it received (a change to one
/// tenant) and how many times it dropped everything (a change to keys, mappings or protected
/// tables, a bulk change, or an invalidation queue overflow); and how many verified tokens it
/// holds and may hold (`tenancy.token_cache_size`). For measuring and testing the caches; it
/// shows nothing of any tenant.
#[pg_extern(volatile, parallel_restricted)]
fn cache_stats() -> pgrx::JsonB {
    let (loads, targeted, full) = STATS.with(|s| s.get());
    let (cached, capacity) = CACHE.with(|c| {
        let c = c.borrow();
        (c.tenants.len(), c.tenants.cap().get())
    });
    let mut stats = serde_json::json!({
        "tenants_cached": cached,
        "tenants_capacity": capacity,
        "tenant_loads": loads,
        "targeted_invalidations": targeted,
        "full_invalidations": full,
    });
    for i in 0..COUNTERS.with(|c| c.borrow().len()) {
        for (name, value) in COUNTERS.with(|c| c.borrow()[i])() {
            stats[name] = value.into();
        }
    }
    pgrx::JsonB(stats)
}

thread_local! {
    /// The entry counters of caches kept above the catalog (the verified tokens), registered
    /// at _PG_init.
    static COUNTERS: RefCell<Vec<CacheCounters>> = const { RefCell::new(Vec::new()) };
}

/// A cache's counters, by name, for tenancy.cache_stats().
pub type CacheCounters = fn() -> Vec<(&'static str, usize)>;

/// Report a cache's counters in tenancy.cache_stats().
pub fn report_cache(f: CacheCounters) {
    COUNTERS.with(|c| c.borrow_mut().push(f));
}

/// Buckets of tenants' generations: a change to one tenant makes the bindings of the tenants
/// of its bucket (about 1 in 4096) check again, no more.
const BUCKETS_N: usize = 4096;

const TABLES: [&std::ffi::CStr; 12] = [
    c"tenant",
    c"signing_key",
    c"tenant_role",
    c"member",
    c"role_mapping",
    c"role_privilege",
    c"support_grant",
    c"protected_table",
    c"subject_revocation",
    c"token_revocation",
    c"audit_key",
    c"audit_exclusion",
];

pub fn init() {
    // SAFETY: called once from _PG_init; the callback stays valid for the backend's life.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0));
    }
    crate::pg::targeted_inval::on_invalidation(tenant_invalidated);
    crate::pg::hooks::at_transaction_event(xact_callback);
}

/// Before a transaction commits (or is prepared), whatever its row triggers noted and no
/// statement trigger announced is announced: a change is never left unannounced because a
/// statement trigger did not run after its rows (an announcement too many costs a reload).
/// At its end, what is still noted goes: its changes were announced, or rolled back.
///
/// A transaction that took a tenant's lock ([`lock_tenant_row`], or the platform revocations'
/// lock) is not prepared: a prepared transaction keeps its locks until someone who may ends it
/// does, and a tenant admin who prepared a `create_role` blocked every operator's kill switch
/// for the tenant (and, through a role mapped to both, for another tenant) for ever, with no
/// timeout that ends it (an attacker's pass).
fn xact_callback(event: pg_sys::XactEvent::Type) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_PREPARE if MANAGEMENT_LOCKED.with(|m| m.get()) => errors::raise(
            errors::FEATURE_NOT_SUPPORTED,
            "cannot PREPARE a transaction that made a pg_tenancy management call",
            "Commit management calls (tenants, roles, members, grants, mappings, revocations) in a transaction of their own: a prepared one would keep the tenant locked until it is ended.",
        ),
        XACT_EVENT_PRE_COMMIT | XACT_EVENT_PRE_PREPARE => announce_changed(),
        XACT_EVENT_COMMIT | XACT_EVENT_ABORT | XACT_EVENT_PREPARE | XACT_EVENT_PARALLEL_ABORT => {
            CHANGED.with(|c| *c.borrow_mut() = Changed::default());
            MANAGEMENT_LOCKED.with(|m| m.set(false));
        }
        _ => {}
    }
}

thread_local! {
    /// Whether this transaction took a tenant's lock or the platform revocations' lock, wrote
    /// the catalog or recorded a management action.
    static MANAGEMENT_LOCKED: Cell<bool> = const { Cell::new(false) };
}

/// This transaction holds locks of a management call (a catalog row, a tenant, a trail's
/// chain): it will not be prepared ([`xact_callback`]). Every catalog write and management
/// record notes it, not only the tenant's lock: `set_setting` updated the tenant's row without
/// that lock, and a tenant admin prepared it (a later pass).
pub fn note_management_lock() {
    MANAGEMENT_LOCKED.with(|m| m.set(true));
}

/// The key a tenant's changes are announced under.
fn tenant_key(tenant: Uuid) -> String {
    format!("t:{tenant}")
}

/// The hash a change of `tenant` is announced with: from its cache entry, or computed (never
/// while the cache is borrowed: computing it may initialise a syscache, which takes a lock,
/// which processes invalidations, which change the cache).
fn tenant_hash(tenant: Uuid) -> u32 {
    // A tenant's hash never changes: the last one asked for (the bound tenant, asked again by
    // every statement) is kept.
    if let Some((t, h)) = LAST_HASH.with(|l| l.get()) {
        if t == tenant {
            return h;
        }
    }
    let h = match CACHE.with(|c| c.borrow().tenants.peek(&tenant).map(|e| e.hash)) {
        Some(h) => h,
        None => crate::pg::targeted_inval::hash_of(&tenant_key(tenant)),
    };
    LAST_HASH.with(|l| l.set(Some((tenant, h))));
    h
}

thread_local! {
    /// The last tenant [`tenant_hash`] was asked for, and its hash.
    static LAST_HASH: Cell<Option<(Uuid, u32)>> = const { Cell::new(None) };
}

/// Queue, in the current transaction, the invalidation of everything cached about `tenant`
/// in every backend (received by [`tenant_invalidated`]).
pub fn announce_tenant_change(tenant: Uuid) {
    crate::pg::targeted_inval::announce(&tenant_key(tenant));
}

/// A targeted invalidation arrived (src/pg/targeted_inval.rs): drop the tenants whose hash it
/// carries, every slug looked up in vain, and move their bucket's generation. 0 means every
/// cache was reset: drop everything.
fn tenant_invalidated(hash: u32) {
    if hash == 0 {
        invalidate();
        return;
    }
    BUCKETS.with(|b| {
        let mut b = b.borrow_mut();
        let n = &mut b[hash as usize % BUCKETS_N];
        *n = n.wrapping_add(1);
    });
    TARGETED.with(|t| t.set(t.get().wrapping_add(1)));
    count(|s| s.1 += 1);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let gone: Vec<Uuid> = c
            .tenants
            .iter()
            .filter(|(_, e)| e.hash == hash)
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            c.tenants.pop(id);
        }
        c.slugs
            .retain(|_, id| id.is_some_and(|id| !gone.contains(&id)));
    });
}

/// The relcache callback: a change to one of pg_tenancy's tables drops the cache.
///
/// # Safety
/// Called by PostgreSQL's invalidation processing, as registered by [`init`].
#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let ours = match RELS.with(|r| r.get()) {
        Some(rels) => relid == pg_sys::InvalidOid || rels.oids.contains(&relid),
        None => true,
    };
    if ours {
        invalidate();
    }
}

/// Drop every cached row and bump the generation. Also run, locally, when a transaction that
/// changed the catalog aborts: nothing read from its rows stays cached (audit keys included).
pub fn invalidate() {
    CACHE.with(|c| *c.borrow_mut() = Cache::default());
    count(|s| s.2 += 1);
    for f in ON_INVALIDATE.with(|o| o.borrow().clone()) {
        f();
    }
    RELS.with(|r| r.set(None));
    GENERATION.with(|g| g.set(g.get() + 1));
}

thread_local! {
    /// What pillars above keep from pg_tenancy's catalog outside this cache (audit keys, say):
    /// forgotten with it.
    static ON_INVALIDATE: RefCell<Vec<fn()>> = const { RefCell::new(Vec::new()) };
}

/// Have `f` run whenever the cache is dropped (at _PG_init).
pub fn on_invalidate(f: fn()) {
    ON_INVALIDATE.with(|o| o.borrow_mut().push(f));
}

/// Bumped whenever pg_tenancy's catalog may have changed as a whole (a change of keys,
/// mappings, protected tables, ...; or every cache reset).
pub fn generation() -> u64 {
    GENERATION.with(|g| g.get())
}

/// Moves whenever what is known of `tenant` may have changed: with [`generation`], and with
/// every change announced for a tenant of its bucket. What a binding derived from the catalog
/// is checked again when this moved.
pub fn generation_of(tenant: Uuid) -> u64 {
    let h = tenant_hash(tenant);
    (generation() << 32) | u64::from(BUCKETS.with(|b| b.borrow()[h as usize % BUCKETS_N]))
}

/// Moves with every invalidation of any kind: a fill that saw it move while it read may have
/// read rows older than the change ([`store`]).
pub fn fill_epoch() -> u64 {
    (generation() << 32) | u64::from(TARGETED.with(|t| t.get()))
}

/// Keep what a fill read, unless an invalidation arrived while it ran (the generation moved):
/// the SPI query of a fill takes locks, and taking a lock processes invalidations, so a change
/// committed after the fill's snapshot can be announced in the middle of the fill. Its rows are
/// then possibly older than the change, and caching them would outlive the invalidation.
fn store(epoch_at_start: u64, f: impl FnOnce(&mut Cache)) {
    if fill_epoch() == epoch_at_start {
        CACHE.with(|c| f(&mut c.borrow_mut()));
    }
}

/// Whether pg_tenancy is installed in this database (the library may be preloaded for the
/// whole cluster; the hooks must leave databases without the extension alone).
pub fn installed() -> bool {
    RELS.with(|r| r.get()).is_some()
        // SAFETY: a catalog lookup by name.
        || unsafe { pg_sys::get_extension_oid(c"pg_tenancy".as_ptr(), true) } != pg_sys::InvalidOid
}

/// Whether this database's pg_tenancy objects are of another version than this library:
/// between installing a new build's files and `ALTER EXTENSION pg_tenancy UPDATE`, the library
/// runs with the older SQL objects, whose event triggers watch fewer commands (0.1.0's did not
/// fire before CREATE TRIGGER, CREATE CAST or a column renamed through ALTER VIEW). False where
/// the extension is not created. Read from the catalog on every call: asked for DDL only.
pub fn sql_objects_of_another_version() -> bool {
    if !installed() {
        return false;
    }
    let v = read_one::<String>(
        "SELECT extversion::pg_catalog.text FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'pg_tenancy'",
        &[],
    );
    v.is_some_and(|v| v != env!("CARGO_PKG_VERSION"))
}

fn rels() -> Rels {
    if let Some(r) = RELS.with(|r| r.get()) {
        return r;
    }
    // SAFETY: catalog lookups by name and a syscache lookup whose tuple is released at once.
    let r = unsafe {
        let nsp = pg_sys::get_namespace_oid(c"tenancy".as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            errors::raise(
                UNDEFINED_OBJECT,
                "pg_tenancy is not installed in this database",
                "Run CREATE EXTENSION pg_tenancy;",
            );
        }
        let mut oids = [pg_sys::InvalidOid; TABLES.len()];
        for (i, name) in TABLES.iter().enumerate() {
            oids[i] = pg_sys::get_relname_relid(name.as_ptr(), nsp);
        }
        // From the syscache, not a query: this runs at a backend's first use of the catalog,
        // which can be inside a parallel operation (a parallel plan's InitPlan) or on a hot
        // standby, where nothing may ask for a transaction id (see `read_one`).
        let mut owner = pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID);
        let tup = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::RELOID as i32,
            pg_sys::Datum::from(oids[0]),
        );
        if !tup.is_null() {
            owner = (*(pg_sys::GETSTRUCT(tup) as *mut pg_sys::FormData_pg_class)).relowner;
            pg_sys::ReleaseSysCache(tup);
        }
        Rels { owner, oids }
    };
    RELS.with(|c| c.set(Some(r)));
    r
}

/// Pin `search_path = pg_catalog, pg_temp` (and `quote_all_identifiers = off`, so that names,
/// types and expressions print as pg_tenancy compares and digests them; on Citus, the output
/// settings of values too) for the length of `f`.
/// On return every setting
/// changed inside, by us or by code `f` reached (a table owner's trigger calling
/// `set_config(..., false)`, say), is rolled back, as PostgreSQL's maintenance commands roll
/// back what they ran as a table's owner; on error, the transaction's or subtransaction's abort
/// does it.
pub fn with_pinned_search_path<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: a GUC nest level of our own, closed below (or by (sub)transaction abort); the
    // setting is changed with GUC_ACTION_SAVE, which PostgreSQL allows in parallel mode too.
    unsafe {
        let nest = pg_sys::NewGUCNestLevel();
        crate::pg::guc::set_in_nest_level(c"search_path", c"pg_catalog, pg_temp");
        crate::pg::guc::set_in_nest_level(c"quote_all_identifiers", c"off");
        if crate::pg::citus::in_database() {
            // Reads of the catalog's copies stay on this node (see
            // `pg::citus::before_reading_locally_as_another`).
            crate::pg::guc::set_in_nest_level(c"citus.enable_local_execution", c"on");
            // Citus prints the values of a statement it sends the workers (an INSERT's
            // literals, a DELETE's parameters) with the session's output settings, and each
            // worker reads them with its own: a catalog write made under `DateStyle = 'SQL,
            // DMY'` stored 2026-07-12 on the workers for the coordinator's 2026-12-07, and
            // `standard_conforming_strings = off` doubled a backslash there, so an unmapping
            // or a revocation matched nothing on the workers (an attacker's pass). Values
            // print here in forms every node reads back alike.
            for (name, value) in [
                (c"DateStyle", c"ISO, MDY"),
                (c"IntervalStyle", c"postgres"),
                (c"standard_conforming_strings", c"on"),
                (c"extra_float_digits", c"1"),
                (c"bytea_output", c"hex"),
            ] {
                crate::pg::guc::set_in_nest_level(name, value);
            }
        }
        // On Citus, the catalog is read inside the queries Citus runs on a node too.
        crate::pg::citus::allow_nested_catalog_reads();
        let r = f();
        // false: nothing set inside this level outlives it.
        pg_sys::AtEOXact_GUC(false, nest);
        r
    }
}

/// Run `f` as the owner of pg_tenancy's catalog with `search_path = pg_catalog, pg_temp`, the way
/// a SECURITY DEFINER function with a pinned search_path runs. On error, transaction or
/// subtransaction abort restores the user and the setting, as it does for SECURITY DEFINER.
///
/// Only for pg_tenancy's own tables and the system catalogs: never for SQL that can reach code
/// a user wrote (a user table's triggers, defaults, constraints, index expressions, rules):
/// that runs under [`as_table_owner`]. `src/TRUST_BOUNDARIES.md` lists every call site.
pub fn with_owner<R>(f: impl FnOnce() -> R) -> R {
    // On Citus, what runs as the owner may be sent to other nodes on the owner's connections.
    crate::pg::citus::before_routing_as_another();
    with_owner_reading_locally(f)
}

/// [`with_owner`] for reads of pg_tenancy's catalog (its reference tables have a copy on every
/// node, read locally), of this node's shards and of the system catalogs: nothing reaches
/// another node, so a client's carried settings (see [`with_owner`]) play no part.
pub fn with_owner_reading_locally<R>(f: impl FnOnce() -> R) -> R {
    crate::pg::citus::before_reading_locally_as_another();
    with_pinned_search_path(|| as_owner_running_no_sql(f))
}

/// [`with_owner`] for DDL: refused first while the session, not a superuser's, has temporary
/// objects ([`refuse_temporary_objects`]): a DBA's event trigger
/// fires on the DDL as the catalog owner and would reach them. Every statement pg_tenancy runs
/// as the catalog owner that fires event triggers (DDL, GRANT) goes through here.
pub fn with_owner_ddl<R>(f: impl FnOnce() -> R) -> R {
    // No exemption for the table's owner here: a DBA's event trigger fires on the DDL as the
    // catalog owner, and a name it looks up reaches the session's temporary schema first (a
    // table owner's temporary table named as the DBA's log table, with a trigger of its own,
    // ran as the superuser when auto-protection protected the owner's new partition, and made
    // the owner a superuser: a reviewer's pass).
    refuse_temporary_objects();
    with_owner(f)
}

/// Run `f` as the owner of pg_tenancy's catalog without touching search_path: only for code
/// that runs no SQL text and no kept plan (the audit writer, which opens pg_tenancy's own
/// relations and inserts into them through the executor's simple-insert path). A kept plan is
/// analyzed and planned again whenever the search_path in force differs from the one it was
/// prepared under, so a plan run here would resolve names through the caller's search_path as
/// the catalog owner: plans, kept or not, run under [`with_owner`].
pub fn as_owner_running_no_sql<R>(f: impl FnOnce() -> R) -> R {
    switch_user(rels().owner, f)
}

/// Run `f` as `role` inside a security-restricted operation, the way PostgreSQL's maintenance
/// commands (VACUUM, CREATE INDEX, REFRESH MATERIALIZED VIEW) run a table owner's index
/// expressions: `SET ROLE`, `SET SESSION AUTHORIZATION`, temporary objects, `PREPARE`, cursors
/// `WITH HOLD` and `LISTEN` are refused inside, so code reached there cannot keep or widen the
/// identity it runs with.
fn switch_user<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    // SAFETY: the previous user and security context are restored below; when `f` raises, the
    // (sub)transaction abort that follows restores them, as it does for SECURITY DEFINER.
    unsafe {
        let mut save_user = pg_sys::InvalidOid;
        let mut save_sec: i32 = 0;
        pg_sys::GetUserIdAndSecContext(&mut save_user, &mut save_sec);
        pg_sys::SetUserIdAndSecContext(
            role,
            save_sec
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
        let r = f();
        pg_sys::SetUserIdAndSecContext(save_user, save_sec);
        r
    }
}

/// The owner of a relation, from the syscache.
pub fn relation_owner(rel: pg_sys::Oid) -> Option<pg_sys::Oid> {
    // SAFETY: a syscache lookup whose tuple is released before returning.
    unsafe {
        let tup = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::RELOID as i32,
            pg_sys::Datum::from(rel),
        );
        if tup.is_null() {
            return None;
        }
        let owner = (*(pg_sys::GETSTRUCT(tup) as *mut pg_sys::FormData_pg_class)).relowner;
        pg_sys::ReleaseSysCache(tup);
        Some(owner)
    }
}

/// Run `f`, which runs DML or DDL on the user table `rel`, as that table's owner in a
/// security-restricted operation with `search_path = pg_catalog, pg_temp`: whatever code of the
/// table's owner the statement reaches (triggers, rules, defaults, generated columns, CHECK and
/// domain constraints, index expressions, functions and operators of policies, foreign-key
/// actions into the owner's other tables) runs with exactly the owner's privileges, never the
/// catalog owner's. Row security applies to the owner (protected tables force it).
pub fn as_table_owner<R>(rel: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let owner = relation_owner(rel).unwrap_or_else(|| {
        errors::raise(
            UNDEFINED_OBJECT,
            format!("relation with oid {} does not exist", u32::from(rel)),
            "It may have been dropped concurrently; try again.",
        )
    });
    refuse_temporary_objects_before_running_as(owner);
    crate::pg::citus::before_routing_as_another();
    with_pinned_search_path(|| switch_user(owner, f))
}

/// Before a table owner's code runs in this session for another role: refuse while the
/// session has temporary objects. PostgreSQL looks relations and types up in the session's
/// temporary schema first unless a search_path names `pg_temp` (a function's own `SET
/// search_path = app` included), and `pg_temp.x` names it outright: an operator's temporary
/// view named as the owner's history table, with an INSTEAD OF trigger of its own, ran as the
/// owner inside `decommission_tenant`, read the tenant's rows, planted a trigger copying every
/// tenant's writes, and made the operator a superuser where the owner was one (an attacker's
/// pass). A security-restricted operation refuses creating temporary relations and types, not
/// using them, so this check at the switch covers all that runs inside it. The table's owner
/// itself and superusers pass here (the owner's code then runs as the caller).
fn refuse_temporary_objects_before_running_as(owner: pg_sys::Oid) {
    // SAFETY: GetUserId reads this backend's current user.
    if unsafe { pg_sys::GetUserId() } != owner {
        refuse_temporary_objects();
    }
}

/// Refuse (55000) while this session has temporary objects, unless both its session user and
/// its current user are superusers (a superuser's own temporary objects reach nothing it could
/// not). A superuser current user alone is not enough: a DBA's SECURITY DEFINER function that
/// protects a table for its caller runs as a superuser over the caller's temporary objects.
fn refuse_temporary_objects() {
    let (mut temp, mut toast) = (pg_sys::InvalidOid, pg_sys::InvalidOid);
    // SAFETY: reads this backend's own temporary namespace state (InvalidOid: it has none);
    // GetUserId, GetSessionUserId and superuser_arg read the current and the session user and
    // a syscache row.
    let skip = unsafe {
        pg_sys::GetTempNamespaceState(&mut temp, &mut toast);
        temp == pg_sys::InvalidOid
            || (pg_sys::superuser_arg(pg_sys::GetUserId())
                && pg_sys::superuser_arg(pg_sys::GetSessionUserId()))
    };
    if skip {
        return;
    }
    let has = with_pinned_search_path(|| {
        read_one::<bool>(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_class WHERE relnamespace OPERATOR(pg_catalog.=) $1) \
                 OR EXISTS (SELECT FROM pg_catalog.pg_type WHERE typnamespace OPERATOR(pg_catalog.=) $1) \
                 OR EXISTS (SELECT FROM pg_catalog.pg_proc WHERE pronamespace OPERATOR(pg_catalog.=) $1) \
                 OR EXISTS (SELECT FROM pg_catalog.pg_operator WHERE oprnamespace OPERATOR(pg_catalog.=) $1) \
                 OR EXISTS (SELECT FROM pg_catalog.pg_collation WHERE collnamespace OPERATOR(pg_catalog.=) $1) \
                 OR EXISTS (SELECT FROM pg_catalog.pg_conversion WHERE connamespace OPERATOR(pg_catalog.=) $1) \
                 OR EXISTS (SELECT FROM pg_catalog.pg_opclass WHERE opcnamespace OPERATOR(pg_catalog.=) $1) \
                 OR EXISTS (SELECT FROM pg_catalog.pg_opfamily WHERE opfnamespace OPERATOR(pg_catalog.=) $1) \
                 OR EXISTS (SELECT FROM pg_catalog.pg_statistic_ext WHERE stxnamespace OPERATOR(pg_catalog.=) $1) \
                 OR EXISTS (SELECT FROM pg_catalog.pg_ts_config WHERE cfgnamespace OPERATOR(pg_catalog.=) $1) \
                 OR EXISTS (SELECT FROM pg_catalog.pg_ts_dict WHERE dictnamespace OPERATOR(pg_catalog.=) $1) \
                 OR EXISTS (SELECT FROM pg_catalog.pg_ts_parser WHERE prsnamespace OPERATOR(pg_catalog.=) $1) \
                 OR EXISTS (SELECT FROM pg_catalog.pg_ts_template WHERE tmplnamespace OPERATOR(pg_catalog.=) $1)",
            &[temp.into()],
        )
    })
    // Unread (it cannot fail short of an error, which raises): refuse.
    .unwrap_or(true);
    if has {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            "this session has temporary objects, which code pg_tenancy runs here as another role (a table's owner's, an event trigger's) would reach in place of that role's own",
            "Drop them first (DISCARD TEMP), or run it from a session that has none.",
        );
    }
}

pub fn to_pg_uuid(id: Uuid) -> pgrx::Uuid {
    pgrx::Uuid::from_bytes(*id.as_bytes())
}

pub fn from_pg_uuid(id: &pgrx::Uuid) -> Uuid {
    Uuid::from_bytes(**id)
}

/// A tenant as first read: its row, and what a bind reads next (whether it has members or
/// subject revocations, its roles, its grants), in the same query: a backend's first bind of a tenant costs one query
/// for all of them, not one each.
struct LoadedTenant {
    row: TenantRow,
    has_members: bool,
    has_revocations: bool,
    roles: Vec<String>,
    privileges: Vec<Privilege>,
}

fn loaded_tenant(row: &pgrx::spi::SpiHeapTupleData) -> Result<LoadedTenant, pgrx::spi::Error> {
    let privilege_roles = row.get::<Vec<String>>(9)?.unwrap_or_default();
    let privilege_rels = row.get::<Vec<Option<pg_sys::Oid>>>(10)?.unwrap_or_default();
    let privilege_names = row.get::<Vec<String>>(11)?.unwrap_or_default();
    Ok(LoadedTenant {
        row: TenantRow {
            id: from_pg_uuid(&row.get::<pgrx::Uuid>(1)?.expect("id")),
            slug: row.get::<String>(2)?.unwrap_or_default(),
            status: row.get::<String>(3)?.unwrap_or_default(),
            region: row.get::<String>(4)?,
            settings: row.get::<JsonB>(5)?.map(|j| j.0).unwrap_or_default(),
            limits: row.get::<JsonB>(6)?.map(|j| j.0).unwrap_or_default(),
        },
        has_members: row.get::<bool>(7)?.unwrap_or(true),
        has_revocations: row.get::<bool>(12)?.unwrap_or(true),
        roles: row.get::<Vec<String>>(8)?.unwrap_or_default(),
        privileges: privilege_roles
            .into_iter()
            .zip(privilege_rels)
            .zip(privilege_names)
            .map(|((role, relid), privilege)| Privilege {
                role,
                relid,
                privilege,
            })
            .collect(),
    })
}

/// Read a tenant (by `id = $1` or `slug = $1`) and keep it with its members flag, roles and
/// grants, unless an invalidation arrived since `epoch` (see [`store`]).
///
/// One query, run at a tenant's first bind in a backend. The grants come as three arrays,
/// each read in the order of the grants' unique key, so that their elements line up. Array
/// subqueries, not `array_agg`: on Citus this query can be printed again for a node (a node
/// whose transaction reached its own copy of the catalog over a connection), pg_catalog's
/// functions unqualified, and run there with the node's default search_path, where a role's
/// exact-typed `array_agg(text)` in public beat pg_catalog's polymorphic one (an attacker's
/// pass: it ran as the superuser at a bind, and could have returned grants of its choosing).
fn load_tenant(
    where_clause: &str,
    arg: pgrx::datum::DatumWithOid,
    epoch: u64,
) -> Option<Rc<TenantRow>> {
    count(|s| s.0 += 1);
    let q = format!(
        "SELECT t.id, t.slug, t.status, t.region, t.settings, t.limits, \
                EXISTS (SELECT FROM tenancy.member m WHERE m.tenant_id = t.id), \
                ARRAY(SELECT r.role FROM tenancy.tenant_role r WHERE r.tenant_id = t.id ORDER BY r.role), \
                ARRAY(SELECT g.role FROM tenancy.role_privilege g WHERE g.tenant_id = t.id \
                       ORDER BY g.role, g.relid::oid NULLS FIRST, g.privilege), \
                ARRAY(SELECT g.relid::oid FROM tenancy.role_privilege g WHERE g.tenant_id = t.id \
                       ORDER BY g.role, g.relid::oid NULLS FIRST, g.privilege), \
                ARRAY(SELECT g.privilege FROM tenancy.role_privilege g WHERE g.tenant_id = t.id \
                       ORDER BY g.role, g.relid::oid NULLS FIRST, g.privilege), \
                EXISTS (SELECT FROM tenancy.subject_revocation v WHERE v.tenant_id = t.id) \
           FROM tenancy.tenant t \
          WHERE t.{where_clause}"
    );
    let loaded = owner_rows("tenancy.tenant", &q, &[arg], loaded_tenant)
        .into_iter()
        .next()?;
    let row = Rc::new(loaded.row);
    let (has_members, has_revocations, roles, privileges) = (
        loaded.has_members,
        loaded.has_revocations,
        Rc::new(loaded.roles),
        Rc::new(loaded.privileges),
    );
    store_tenant(epoch, row.id, |e| {
        e.row = Some(Some(row.clone()));
        e.has_members = Some(has_members);
        e.has_revocations = Some(has_revocations);
        e.roles = Some(roles);
        e.privileges = Some(privileges);
    });
    Some(row)
}

/// The first column of the first row of a read-only query, or None, through a read-only SPI
/// connection. pgrx's `Spi::get_one_with_args` runs every query as an update and first asks for
/// the transaction's id, assigning one to a transaction that only reads: that fails inside a
/// parallel operation ("cannot assign XIDs during a parallel operation", for example when a
/// policy's InitPlan runs for a parallel plan) and on a hot standby, and costs a commit record
/// and an XID everywhere else. Every lookup on a read path goes through here instead.
///
/// With `search_path = pg_catalog, pg_temp` ([`with_pinned_search_path`]): the lookups run as
/// the caller, and an operator or function the caller created on its own search_path would
/// otherwise take part in them (an application role's `=` (oid, oid) made every protected
/// table a partition of one its role was granted, and an operator's `>` (timestamptz,
/// timestamptz) purged audit records inside the retention floor: an attacker's pass).
pub fn read_one<A: FromDatum + IntoDatum>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
) -> Option<A> {
    with_pinned_search_path(|| {
        Spi::connect(|c| c.select(sql, Some(1), args)?.first().get_one::<A>())
    })
    .ok()
    .flatten()
}

/// Lock `tenant` for management until the transaction ends: first its management lock (a tag
/// of pg_tenancy's own, [`management_lock_tag`], which `pg_locks` shows with the session that
/// holds it), then its row (`FOR NO KEY UPDATE`). Every change of a tenant's status, settings,
/// limits, memberships, grants, role mappings and quota-bound rows takes both first, so that a
/// check and the change it allows are not interleaved with another session's.
pub fn lock_tenant_row(tenant: Uuid) {
    MANAGEMENT_LOCKED.with(|m| m.set(true));
    let tag = management_lock_tag(tenant);
    let mode = pg_sys::ExclusiveLock as pg_sys::LOCKMODE;
    match KILL_SWITCH.with(|k| k.borrow().as_ref().map(|(wait, _)| *wait)) {
        Some(wait_ms) => {
            let ended = take_lock_ending_holders(
                &tag,
                mode,
                wait_ms,
                true,
                &format!("the management lock of tenant {tenant}"),
                format!("a prepared transaction holds the management lock of tenant {tenant}"),
                "Finish it first (SELECT gid FROM pg_prepared_xacts; then COMMIT PREPARED or ROLLBACK PREPARED), and call again.",
            );
            KILL_SWITCH.with(|k| {
                if let Some((_, all)) = k.borrow_mut().as_mut() {
                    all.extend(ended.into_iter().map(|pid| (tenant, pid)));
                }
            });
        }
        // SAFETY: a transaction-level lock of a tag only pg_tenancy takes (released at the end
        // of the transaction, or of the subtransaction that took it, with what it guarded).
        None => unsafe {
            pg_sys::LockAcquire(&tag, mode, false, false);
        },
    }
    lock_row_of(tenant);
}

/// A kill switch's state ([`ending_holders`]): how long each tenant lock it takes waits before
/// it ends the sessions that hold it, and the sessions it ended, each with its tenant.
type KillSwitch = (u64, Vec<(Uuid, i32)>);

thread_local! {
    /// While an operator's kill switch runs.
    static KILL_SWITCH: RefCell<Option<KillSwitch>> = const { RefCell::new(None) };
}

/// Run `f`, an operator's kill switch (`suspend_tenant`, `revoke_subject`, `unmap_role`,
/// `remove_member`, `revoke`, `decommission_tenant`), with every tenant lock it takes
/// ([`lock_tenant_row`]) ending the transactions that hold it for longer than `wait_ms` (their
/// sessions terminated, their changes rolled back), unless an operator's or a superuser's
/// session holds it. A tenant admin who left a management call's transaction open held every
/// operator's kill switch for the tenant for as long as the session stayed, and a table owner's
/// open `DROP TABLE` those of every tenant with a grant on the table (attackers' passes).
/// Returns what `f` returned and the sessions ended, each with the tenant whose lock it held.
pub fn ending_holders<R>(wait_ms: u64, f: impl FnOnce() -> R) -> (R, Vec<(Uuid, i32)>) {
    /// Puts the outer state back however `f` ends.
    struct Restore(Option<Option<KillSwitch>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(outer) = self.0.take() {
                KILL_SWITCH.with(|k| *k.borrow_mut() = outer);
            }
        }
    }
    let _restore = Restore(Some(
        KILL_SWITCH.with(|k| k.replace(Some((wait_ms, Vec::new())))),
    ));
    let r = f();
    let ended = KILL_SWITCH.with(|k| {
        k.borrow_mut()
            .as_mut()
            .map(|(_, all)| std::mem::take(all))
            .unwrap_or_default()
    });
    (r, ended)
}

fn lock_row_of(tenant: Uuid) {
    write(
        "SELECT 1 FROM tenancy.tenant WHERE id = $1 FOR NO KEY UPDATE",
        &[to_pg_uuid(tenant).into()],
    );
}

/// The fourth field of a tenant's management lock tag (SQL's advisory lock functions use 1 and
/// 2 only: no SQL takes it).
const MANAGEMENT_LOCK_FIELD4: u16 = 0x7700;

/// How a tenant's lock tags name it (`audit::lock_tag_fields`: 64 bits of an HMAC keyed by the
/// tenant's audit key), registered by the audit pillar at load ([`name_tenant_locks_with`]).
static TENANT_LOCK_FIELDS: std::sync::OnceLock<fn(Uuid) -> (u32, u32)> = std::sync::OnceLock::new();

/// Name every tenant lock this module takes with `f` (once, from _PG_init).
pub fn name_tenant_locks_with(f: fn(Uuid) -> (u32, u32)) {
    let _ = TENANT_LOCK_FIELDS.set(f);
}

/// The tag of `tenant`'s management lock: the database, and the fields of the tenant's write
/// and chain locks, keyed by its audit key, so that `pg_locks` does not name the tenant to
/// whoever knows its uuid (a plain fold of the uuid did, and tied its write locks' keyed tags
/// to it: an attacker's pass). Two tenants whose fields agree share a lock (their management
/// calls queue behind each other); no tenant can choose another's.
fn management_lock_tag(tenant: Uuid) -> pg_sys::LOCKTAG {
    let (field2, field3) = TENANT_LOCK_FIELDS
        .get()
        .map(|f| f(tenant))
        .unwrap_or_else(|| pgrx::error!("pg_tenancy: the tenant lock tags are not set up"));
    pg_sys::LOCKTAG {
        // SAFETY: MyDatabaseId is set for every backend connected to a database.
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: field2,
        locktag_field3: field3,
        locktag_field4: MANAGEMENT_LOCK_FIELD4,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    }
}

/// Take `tag` in `mode` for the transaction, ending those who hold it: polls every 50 ms; after
/// `wait_ms`, every session that holds or waits for it (a waiter would hold it next) is sent
/// the signal to terminate, all at once, and this call queues for the lock at once after it,
/// so that a session that asks for it later queues behind (a tenant admin's sessions, asking
/// without pause, were always ahead of a call that only polled: an attacker's pass); a session
/// that got in before is ended at the next round. A prepared transaction holding it is refused
/// (55000) with `prepared` and its `hint`. With `spare_platform`, the session of a superuser or
/// an operator (by its session user) is never ended: once only such sessions are left, this
/// waits for them. The sessions ended are written to the server's log (with `what`, the lock
/// they held) and told the caller in a NOTICE, also when the call fails later and its records
/// roll back. Returns their process ids.
pub fn take_lock_ending_holders(
    tag: &pg_sys::LOCKTAG,
    mode: pg_sys::LOCKMODE,
    wait_ms: u64,
    spare_platform: bool,
    what: &str,
    prepared: String,
    hint: &str,
) -> Vec<i32> {
    // (pid, granted, whether the session's user is a superuser or an operator); a prepared
    // transaction has no pid. Read as the catalog's owner: pg_stat_activity shows every
    // session's user to it.
    let others = || -> Vec<(Option<i32>, bool, bool)> {
        owner_rows(
            "pg_locks",
            "SELECT l.pid, l.granted, \
                    coalesce((SELECT r.rolsuper OR pg_catalog.pg_has_role(r.oid, 'tenancy_operator', 'MEMBER') \
                                FROM pg_catalog.pg_stat_activity a \
                                JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) a.usesysid \
                               WHERE a.pid OPERATOR(pg_catalog.=) l.pid), false) \
               FROM pg_catalog.pg_locks l \
              WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory' AND l.database OPERATOR(pg_catalog.=) $1 \
                AND l.classid OPERATOR(pg_catalog.=) $2 AND l.objid OPERATOR(pg_catalog.=) $3 \
                AND l.objsubid OPERATOR(pg_catalog.=) $4 \
                AND l.pid IS DISTINCT FROM pg_catalog.pg_backend_pid()",
            &[
                pg_sys::Oid::from(tag.locktag_field1).into(),
                pg_sys::Oid::from(tag.locktag_field2).into(),
                pg_sys::Oid::from(tag.locktag_field3).into(),
                (tag.locktag_field4 as i16).into(),
            ],
            |r| {
                Ok((
                    r.get::<i32>(1)?,
                    r.get::<bool>(2)?.unwrap_or(false),
                    r.get::<bool>(3)?.unwrap_or(false),
                ))
            },
        )
    };
    let start = std::time::Instant::now();
    let mut ended: Vec<i32> = Vec::new();
    loop {
        // SAFETY: a transaction-level lock of a tag of pg_tenancy's own, not waited for.
        let got = unsafe { pg_sys::LockAcquire(tag, mode, false, true) };
        if got != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL {
            return ended;
        }
        let found = others();
        if found
            .iter()
            .any(|(pid, granted, _)| pid.is_none() && *granted)
        {
            errors::raise(errors::NOT_IN_PREREQUISITE_STATE, prepared, hint);
        }
        if start.elapsed().as_millis() as u64 >= wait_ms {
            let to_end: Vec<i32> = found
                .iter()
                .filter(|(_, _, platform)| !(spare_platform && *platform))
                .filter_map(|(pid, _, _)| *pid)
                .collect();
            if to_end.is_empty() {
                // Only the platform's sessions stand before it: wait for them.
                // SAFETY: as above, now waited for.
                unsafe { pg_sys::LockAcquire(tag, mode, false, false) };
                return ended;
            }
            let signalled: Vec<i32> = owner_rows(
                "pg_terminate_backend",
                "SELECT p FROM pg_catalog.unnest($1::pg_catalog.int4[]) p WHERE pg_catalog.pg_terminate_backend(p)",
                &[to_end.into()],
                |r| r.get::<i32>(1),
            )
            .into_iter()
            .flatten()
            .collect();
            if !signalled.is_empty() {
                pgrx::log!(
                    "pg_tenancy: ended sessions {signalled:?}, which held {what} longer than {wait_ms} ms"
                );
                pgrx::notice!(
                    "pg_tenancy: ended sessions {signalled:?}, which held {what} longer than {wait_ms} ms"
                );
            }
            for pid in signalled {
                if !ended.contains(&pid) {
                    ended.push(pid);
                }
            }
            // Queued now, behind the sessions just ended (they leave the queue as they exit).
            if crate::pg::lock_wait::acquire_within(tag, mode, 5_000) {
                return ended;
            }
            continue;
        }
        // SAFETY: waits 50 ms on the backend's own latch (reset after), reported in
        // pg_stat_activity as the wait for a lock of the tag's type that it is; then lets a
        // cancel or a shutdown in.
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                50,
                pg_sys::PG_WAIT_LOCK | u32::from(tag.locktag_type),
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
            pgrx::check_for_interrupts!();
        }
    }
}

/// The fourth field of the platform revocations' lock tag (SQL's advisory lock functions use 1
/// and 2 only; the chain's locks use 0x7400 + lane, a tenant's write lock 0x7500).
const PLATFORM_REVOCATIONS_FIELD4: u16 = 0x7600;

/// Lock the platform's token revocations (those of no tenant) until the transaction ends:
/// their quota is counted under it. A tag no SQL can take: under `pg_advisory_xact_lock` of a
/// key of its own, any role could hold it (in a prepared transaction, for ever) and stop every
/// operator's `revoke_token` (an attacker's pass).
pub fn lock_platform_revocations() {
    MANAGEMENT_LOCKED.with(|m| m.set(true));
    let tag = pg_sys::LOCKTAG {
        // SAFETY: MyDatabaseId is set for every backend connected to a database.
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: 0,
        locktag_field3: 0,
        locktag_field4: PLATFORM_REVOCATIONS_FIELD4,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    };
    // SAFETY: a transaction-level lock of a tag only pg_tenancy takes (released at the end of
    // the transaction, or of the subtransaction that took it, with what it guarded).
    unsafe {
        pg_sys::LockAcquire(
            &tag,
            pg_sys::ExclusiveLock as pg_sys::LOCKMODE,
            false,
            false,
        );
    }
}

/// Lock `t`'s row ([`lock_tenant_row`]) and read the tenant again after the lock: the
/// invalidations of what was committed while this call waited are processed first (a row lock
/// waited for takes no lock that would), so the row, its settings and its privileges are those
/// of the transaction that held the lock, not those read before (an operator's `remove_member`
/// waiting for a tenant admin's `set_setting` of richer `default_roles` checked the old ones,
/// and let the subject fall back to the new: an attacker's pass). A tenant decommissioned
/// meanwhile is refused.
pub fn lock_live_tenant(t: &TenantRow) -> Rc<TenantRow> {
    lock_tenant_row(t.id);
    // SAFETY: processes this backend's pending invalidation messages, inside a transaction.
    unsafe { pg_sys::AcceptInvalidationMessages() };
    let fresh = tenant_by_id(t.id).unwrap_or_else(|| {
        errors::raise(
            UNDEFINED_OBJECT,
            format!("tenant \"{}\" does not exist", t.slug),
            "SELECT slug, id FROM tenancy.tenants lists the tenants.",
        )
    });
    if fresh.status == "decommissioned" {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!("tenant \"{}\" is decommissioned", t.slug),
            "Decommissioned tenants cannot change.",
        );
    }
    fresh
}

/// Run a read-only query on the catalog as its owner, with a fresh snapshot, and map every row.
pub fn owner_rows<T>(
    what: &str,
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
    map: impl Fn(&pgrx::spi::SpiHeapTupleData) -> Result<T, pgrx::spi::Error>,
) -> Vec<T> {
    with_owner_reading_locally(|| Spi::connect(|_| fresh_select(sql, None, args, map)))
        .unwrap_or_else(|e| pgrx::error!("pg_tenancy: reading {what} failed: {e}"))
}

/// Run a read-only query inside an open SPI connection with a snapshot taken now, and map every
/// row. The snapshot is the one PostgreSQL takes for scanning a catalog that has no syscache
/// (`GetCatalogSnapshot` refreshes it for such a table on every call): it sees every
/// transaction committed before this call, whatever the isolation level, and unlike
/// `GetLatestSnapshot` it may be taken inside a parallel operation (a parallel plan's InitPlan
/// in the leader). `read_only` keeps SPI from taking another.
pub fn fresh_select<T>(
    sql: &str,
    limit: Option<i64>,
    args: &[pgrx::datum::DatumWithOid],
    map: impl Fn(&pgrx::spi::SpiHeapTupleData) -> Result<T, pgrx::spi::Error>,
) -> Result<Vec<T>, pgrx::spi::Error> {
    select_with_snapshot(sql, limit, args, map, false)
}

thread_local! {
    /// Prepared catalog reads, by their argument types and SQL text, kept for the backend's life (PostgreSQL's
    /// plan cache revalidates them after any change of what they read): a read parsed and
    /// planned on every call cost more than the read. At most [`PLANS_KEPT`].
    static PLANS: RefCell<HashMap<String, pg_sys::SPIPlanPtr>> = RefCell::new(HashMap::new());
}

/// Distinct catalog reads kept prepared per backend; past this, further ones are prepared for
/// each use (the catalog's own reads are a few dozen texts; a table's name in the text, as
/// decommission's reads have, is what could reach it).
const PLANS_KEPT: usize = 128;

/// The plan of `sql` (argument types `types`), and whether it is kept: prepared and kept on
/// first use while fewer than [`PLANS_KEPT`] are; past that, prepared for this read only (the
/// caller frees it). A kept plan is never freed: one may be running in an outer read while a
/// nested read (a hook, an invalidation processed at a lock) prepares another.
///
/// # Safety
/// Inside an SPI connection, as the user every read of pg_tenancy's catalog runs as (the
/// catalog owner, with the pinned search path), so that a kept plan is always used by the user
/// and search path it was made for.
unsafe fn plan_for(sql: &str, types: &mut [pg_sys::Oid]) -> (pg_sys::SPIPlanPtr, bool) {
    // The argument types are part of the key: a plan is only ever given the types it was
    // prepared for.
    let key = format!(
        "{:?}\n{sql}",
        types.iter().map(|t| t.to_u32()).collect::<Vec<_>>()
    );
    if let Some(plan) = PLANS.with(|p| p.borrow().get(&key).copied()) {
        return (plan, true);
    }
    let csql = std::ffi::CString::new(sql).expect("SQL text without NUL");
    // SAFETY: inside an SPI connection (the caller's contract). SPI_keepplan moves the plan
    // out of the connection's memory into its own context under CacheMemoryContext, so that it
    // outlives the connection; kept plans are never freed. A plan not kept stays in the
    // connection's memory and is freed by the caller after its one use.
    unsafe {
        let plan = pg_sys::SPI_prepare(csql.as_ptr(), types.len() as i32, types.as_mut_ptr());
        if plan.is_null() {
            pgrx::error!("pg_tenancy: preparing a catalog read failed");
        }
        if PLANS.with(|p| p.borrow().len() >= PLANS_KEPT) {
            return (plan, false);
        }
        if pg_sys::SPI_keepplan(plan) != 0 {
            pgrx::error!("pg_tenancy: keeping a catalog read's plan failed");
        }
        PLANS.with(|p| p.borrow_mut().insert(key, plan));
        (plan, true)
    }
}

/// Bound arguments as SPI's `*_snapshot` and `*_plan` calls take them: types, values, and
/// ' ' / 'n' for each value's nullness.
fn spi_args(
    args: &[pgrx::datum::DatumWithOid],
) -> (Vec<pg_sys::Oid>, Vec<pg_sys::Datum>, Vec<std::ffi::c_char>) {
    let types = args.iter().map(|a| a.oid()).collect();
    let values = args
        .iter()
        .map(|a| {
            a.datum()
                .map_or(pg_sys::Datum::from(0usize), |d| d.sans_lifetime())
        })
        .collect();
    let nulls = args
        .iter()
        .map(|a| if a.datum().is_some() { b' ' } else { b'n' } as std::ffi::c_char)
        .collect();
    (types, values, nulls)
}

fn select_with_snapshot<T>(
    sql: &str,
    limit: Option<i64>,
    args: &[pgrx::datum::DatumWithOid],
    map: impl Fn(&pgrx::spi::SpiHeapTupleData) -> Result<T, pgrx::spi::Error>,
    latest: bool,
) -> Result<Vec<T>, pgrx::spi::Error> {
    let (mut types, mut values, nulls) = spi_args(args);
    let snapshot_rel = rels().oids[0];
    // SAFETY: inside an SPI connection (the caller's Spi::connect), as the catalog owner (every
    // caller reads through with_owner). The plan is kept, or freed below (plan_for); the tuple table lives in
    // SPI's procedure context until SPI_finish; the snapshot is registered for the length of
    // the execution and released below (or by resource-owner clean-up on error). Every row is
    // mapped (copied out) before the connection closes.
    unsafe {
        let (plan, kept) = plan_for(sql, &mut types);
        let snapshot = pg_sys::RegisterSnapshot(if latest {
            pg_sys::GetLatestSnapshot()
        } else {
            pg_sys::GetCatalogSnapshot(snapshot_rel)
        });
        let rc = pg_sys::SPI_execute_snapshot(
            plan,
            values.as_mut_ptr(),
            nulls.as_ptr(),
            snapshot,
            std::ptr::null_mut(),
            true,
            false,
            limit.unwrap_or(0),
        );
        pg_sys::UnregisterSnapshot(snapshot);
        if rc != pg_sys::SPI_OK_SELECT as i32 {
            pgrx::error!("pg_tenancy: a catalog read returned SPI code {rc}");
        }
        let table = pg_sys::SPI_tuptable;
        let n = pg_sys::SPI_processed as usize;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let tuple = *(*table).vals.add(i);
            if let Some(row) = pgrx::spi::SpiHeapTupleData::new((*table).tupdesc, tuple)? {
                out.push(map(&row)?);
            }
        }
        if !kept {
            pg_sys::SPI_freeplan(plan);
        }
        Ok(out)
    }
}

/// Keep something about `tenant` (its entry made if needed, and made the most recently used),
/// unless an invalidation arrived since `epoch_at_start` ([`store`]).
fn store_tenant(epoch_at_start: u64, tenant: Uuid, f: impl FnOnce(&mut TenantEntry)) {
    let hash = tenant_hash(tenant);
    store(epoch_at_start, |c| {
        let cap = tenants_capacity();
        if c.tenants.cap() != cap {
            c.tenants.resize(cap);
        }
        if c.slugs.len() > cap.get() {
            c.slugs.clear();
        }
        f(c.tenants
            .get_or_insert_mut(tenant, || TenantEntry::new(hash)));
    });
}

/// Something kept about `tenant`, if any (the tenant made the most recently used).
fn cached<R>(tenant: Uuid, f: impl FnOnce(&TenantEntry) -> Option<R>) -> Option<R> {
    CACHE.with(|c| c.borrow_mut().tenants.get(&tenant).and_then(f))
}

pub fn tenant_by_id(id: Uuid) -> Option<Rc<TenantRow>> {
    if let Some(hit) = cached(id, |e| e.row.clone()) {
        return hit;
    }
    let gen = fill_epoch();
    let row = load_tenant("id = $1", to_pg_uuid(id).into(), gen);
    if row.is_none() {
        store_tenant(gen, id, |e| e.row = Some(None));
    }
    row
}

/// A tenant named by its uuid or its slug.
pub fn tenant_by_ref(reference: &str) -> Option<Rc<TenantRow>> {
    if let Ok(id) = Uuid::parse_str(reference) {
        return tenant_by_id(id);
    }
    let cached = CACHE.with(|c| c.borrow().slugs.get(reference).cloned());
    match cached {
        Some(id) => id.and_then(tenant_by_id),
        None => {
            let gen = fill_epoch();
            let row = load_tenant("slug = $1", reference.into(), gen);
            store(gen, |c| {
                if c.slugs.len() >= tenants_capacity().get() {
                    c.slugs.clear();
                }
                c.slugs
                    .insert(reference.to_string(), row.as_ref().map(|r| r.id));
            });
            row
        }
    }
}

/// A tenant that must exist (any status), or an error naming it.
pub fn require_tenant(reference: &str) -> Rc<TenantRow> {
    tenant_by_ref(reference).unwrap_or_else(|| {
        errors::raise(
            UNDEFINED_OBJECT,
            format!("tenant \"{reference}\" does not exist"),
            "Name a tenant by its slug or uuid; SELECT slug, id FROM tenancy.tenants lists them.",
        )
    })
}

/// How a stored key becomes a verification key: its algorithm and, unless the material is
/// unusable, the key (src/binding/token.rs decides; the catalog only keeps the result).
pub type KeyDecoder = fn(&str, &str) -> Option<(Algorithm, Option<DecodingKey>)>;

pub fn key(kid: &str, decode: KeyDecoder) -> Option<Rc<KeyRow>> {
    if let Some(hit) = CACHE.with(|c| c.borrow().keys.get(kid).cloned()) {
        return hit;
    }
    let gen = fill_epoch();
    let loaded = owner_rows(
        "tenancy.signing_key",
        "SELECT alg, key_material, tenant_id, floor(extract(epoch FROM not_after))::int8, revoked_at IS NOT NULL \
           FROM tenancy.signing_key WHERE kid = $1",
        &[kid.into()],
        |row| {
            Ok((
                row.get::<String>(1)?.unwrap_or_default(),
                row.get::<String>(2)?.unwrap_or_default(),
                row.get::<pgrx::Uuid>(3)?.map(|u| from_pg_uuid(&u)),
                row.get::<i64>(4)?,
                row.get::<bool>(5)?.unwrap_or(true),
            ))
        },
    )
    .into_iter()
    .next();
    let row = loaded.and_then(|(alg_name, material, tenant, not_after, revoked)| {
        let (alg, key) = decode(&alg_name, &material)?;
        Some(Rc::new(KeyRow {
            kid: kid.to_string(),
            alg,
            key,
            tenant,
            not_after,
            revoked,
        }))
    });
    store(gen, |c| {
        c.keys.insert(kid.to_string(), row.clone());
    });
    row
}

/// The tenants a database role is mapped to.
/// On Citus, before a read of one of the catalog's reference tables whose rows name a role or
/// a table by this node's own oid (`role_mapping`, `role_privilege`, `support_grant`): refused
/// (55000) where this node holds no copy of it. Citus then reads another node's copy, whose
/// oids name other roles here: on a node just added, a role a CREATEROLE role made with another
/// node's oid of a mapped role was bound to its tenant without a token (an attacker's pass).
/// `citus_setup()` on the coordinator gives the node its copy, written by name.
fn require_own_copy(table: &'static str) {
    // Not in Citus's own superuser connections, which serve no client's binding: one copying
    // the catalog to a new node reads it before the node's placement shows there.
    if !crate::pg::citus::in_database() || crate::pg::citus::internal_superuser_backend() {
        return;
    }
    // As the catalog owner: Citus's placement metadata is not every role's to read.
    let own = owner_rows(
        "Citus's placements of pg_tenancy's catalog",
        "SELECT NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition d \
                             WHERE d.logicalrelid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass) \
             OR EXISTS (SELECT FROM pg_catalog.pg_dist_shard s \
                          JOIN pg_catalog.pg_dist_placement p ON p.shardid OPERATOR(pg_catalog.=) s.shardid \
                         WHERE s.logicalrelid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass \
                           AND p.groupid OPERATOR(pg_catalog.=) (SELECT g.groupid FROM pg_catalog.pg_dist_local_group g))",
        &[table.into()],
        |r| r.get::<bool>(1),
    )
    .into_iter()
    .next()
    .flatten()
    .unwrap_or(false);
    if !own {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!("this Citus node holds no copy of {table} yet"),
            "A node added to the cluster gets pg_tenancy's catalog from SELECT tenancy.citus_setup(); run by a superuser on the coordinator.",
        );
    }
}

pub fn mappings(role: pg_sys::Oid) -> Rc<Vec<Mapping>> {
    let k = u32::from(role);
    if let Some(hit) = CACHE.with(|c| c.borrow().mappings.get(&k).cloned()) {
        return hit;
    }
    require_own_copy("tenancy.role_mapping");
    let gen = fill_epoch();
    let rows = owner_rows(
        "tenancy.role_mapping",
        "SELECT m.tenant_id, m.tenant_roles FROM tenancy.role_mapping m WHERE m.role::oid = $1 ORDER BY m.tenant_id",
        &[role.into()],
        |row| {
            Ok(Mapping {
                tenant: from_pg_uuid(&row.get::<pgrx::Uuid>(1)?.expect("tenant_id")),
                roles: row.get::<Vec<String>>(2)?.unwrap_or_default(),
            })
        },
    );
    let rows = Rc::new(rows);
    store(gen, |c| {
        c.mappings.insert(k, rows.clone());
    });
    rows
}

/// The roles `subject` holds in `tenant` (empty when not a member).
pub fn member_roles(tenant: Uuid, subject: &str) -> Rc<Vec<String>> {
    // Most tenants of a platform that signs roles into tokens have no member rows at all: know
    // which do with one probe per tenant instead of one per (tenant, subject).
    let has_members = match cached(tenant, |e| e.has_members) {
        Some(h) => h,
        None => {
            let gen = fill_epoch();
            let h = owner_rows(
                "tenancy.member",
                "SELECT EXISTS (SELECT FROM tenancy.member WHERE tenant_id = $1)",
                &[to_pg_uuid(tenant).into()],
                |row| Ok(row.get::<bool>(1)?.unwrap_or(true)),
            )
            .into_iter()
            .next()
            .unwrap_or(true);
            store_tenant(gen, tenant, |e| e.has_members = Some(h));
            h
        }
    };
    if !has_members {
        return Rc::new(Vec::new());
    }
    if let Some(hit) = cached(tenant, |e| e.members.get(subject).cloned()) {
        return hit;
    }
    let gen = fill_epoch();
    let rows = owner_rows(
        "tenancy.member",
        "SELECT role FROM tenancy.member WHERE tenant_id = $1 AND subject = $2 ORDER BY role",
        &[to_pg_uuid(tenant).into(), subject.into()],
        |row| Ok(row.get::<String>(1)?.unwrap_or_default()),
    );
    let rows = Rc::new(rows);
    store_tenant(gen, tenant, |e| {
        if e.members.len() >= PER_TENANT_KEPT {
            e.members.clear();
        }
        e.members.insert(subject.to_string(), rows.clone());
    });
    rows
}

/// The roles defined in `tenant`.
pub fn tenant_roles(tenant: Uuid) -> Rc<Vec<String>> {
    if let Some(hit) = cached(tenant, |e| e.roles.clone()) {
        return hit;
    }
    let gen = fill_epoch();
    let rows = owner_rows(
        "tenancy.tenant_role",
        "SELECT role FROM tenancy.tenant_role WHERE tenant_id = $1 ORDER BY role",
        &[to_pg_uuid(tenant).into()],
        |row| Ok(row.get::<String>(1)?.unwrap_or_default()),
    );
    let rows = Rc::new(rows);
    store_tenant(gen, tenant, |e| e.roles = Some(rows.clone()));
    rows
}

/// Whether `tenant` has had an admin: one was ever seated (a member with the `admin` role, a
/// role mapped with it, or `default_roles` naming it), which `admin_seated_at` remembers even
/// after every admin is removed, or one is there now (also seated by this transaction). From
/// then on the tenant's admins, not operators, decide who gets in
/// (`authz::require_may_widen`). Read fresh, never cached: it guards management calls only.
pub fn has_admin(tenant: Uuid) -> bool {
    owner_rows(
        "tenancy.tenant",
        "SELECT t.admin_seated_at IS NOT NULL \
             OR coalesce(t.settings->'default_roles' ? 'admin', false) \
             OR EXISTS (SELECT FROM tenancy.member WHERE tenant_id = t.id AND role = 'admin') \
             OR EXISTS (SELECT FROM tenancy.role_mapping WHERE tenant_id = t.id AND 'admin' = ANY (tenant_roles)) \
           FROM tenancy.tenant t WHERE t.id = $1",
        &[to_pg_uuid(tenant).into()],
        |row| Ok(row.get::<bool>(1)?.unwrap_or(true)),
    )
    .into_iter()
    .next()
    .unwrap_or(true)
}

/// Remember that `tenant` has an admin from now on (see [`has_admin`]).
pub fn seat_admin(tenant: Uuid) {
    crate::catalog::write(
        "UPDATE tenancy.tenant SET admin_seated_at = now() WHERE id = $1 AND admin_seated_at IS NULL",
        &[to_pg_uuid(tenant).into()],
    );
}

/// Why a token of `subject` in `tenant`, issued at `iat` (seconds) with id `jti`, has been
/// revoked (tenancy.revoke_subject, tenancy.revoke_token), or None. A token without `iat` counts
/// as issued before any subject revocation. One index probe per kind, kept for the generation.
pub fn token_revocation(
    tenant: Uuid,
    subject: &str,
    iat: Option<i64>,
    jti: Option<&str>,
) -> Option<String> {
    // A tenant read with no subject revocation at all needs no probe per subject.
    let none = cached(tenant, |e| {
        (e.has_revocations == Some(false)).then_some(None)
    });
    let before =
        match none.or_else(|| cached(tenant, |e| e.subject_revocations.get(subject).copied())) {
            Some(b) => b,
            None => {
                let gen = fill_epoch();
                let b = owner_rows(
                    "tenancy.subject_revocation",
                    "SELECT (extract(epoch FROM issued_before) * 1000000)::int8 \
                   FROM tenancy.subject_revocation WHERE tenant_id = $1 AND subject = $2",
                    &[to_pg_uuid(tenant).into(), subject.into()],
                    |row| Ok(row.get::<i64>(1)?.unwrap_or(i64::MAX)),
                )
                .into_iter()
                .next();
                store_tenant(gen, tenant, |e| {
                    if e.subject_revocations.len() >= PER_TENANT_KEPT {
                        e.subject_revocations.clear();
                    }
                    e.subject_revocations.insert(subject.to_string(), b);
                });
                b
            }
        };
    if let Some(before) = before {
        let issued = iat.map_or(i64::MIN, |s| s.saturating_mul(1_000_000));
        if issued < before {
            return Some(format!(
                "tokens of subject \"{subject}\" issued before its revocation are refused"
            ));
        }
    }
    let jti = jti?;
    let revoked = match cached(tenant, |e| e.token_revocations.get(jti).copied()) {
        Some(r) => r,
        None => {
            let gen = fill_epoch();
            let r = owner_rows(
                "tenancy.token_revocation",
                "SELECT EXISTS (SELECT FROM tenancy.token_revocation WHERE jti = $1 \
                    AND (tenant_id = $2 OR tenant_id IS NULL))",
                &[jti.into(), to_pg_uuid(tenant).into()],
                |row| Ok(row.get::<bool>(1)?.unwrap_or(true)),
            )
            .into_iter()
            .next()
            // Unread (it cannot fail short of an error, which raises): revoked.
            .unwrap_or(true);
            store_tenant(gen, tenant, |e| {
                if e.token_revocations.len() >= PER_TENANT_KEPT {
                    e.token_revocations.clear();
                }
                e.token_revocations.insert(jti.to_string(), r);
            });
            r
        }
    };
    revoked.then(|| format!("token \"{jti}\" has been revoked"))
}

/// Lock a row of a system catalog (`sql`, a `SELECT ... FOR KEY SHARE` of it) as the catalog's
/// owner: a local lock, which reaches no other node and holds no row of pg_tenancy's.
pub fn lock_system_row(sql: &str, args: &[pgrx::datum::DatumWithOid]) {
    with_owner_reading_locally(|| Spi::connect_mut(|c| c.update(sql, None, args).map(|_| ())))
        .unwrap_or_else(|e| pgrx::error!("pg_tenancy: locking a catalog row failed: {e}"))
}

/// Run a writing statement on the catalog as its owner.
pub fn write(sql: &str, args: &[pgrx::datum::DatumWithOid]) -> u64 {
    // A catalog row written is locked until the transaction ends: not to be prepared (but by
    // Citus, whose own connections prepare every transaction they write in, the catalog's
    // copies included; a management call is also noted at its record, whoever names its
    // connection as Citus does).
    if !crate::pg::citus::internal_backend() {
        note_management_lock();
    }
    // SAFETY: reads this backend's isolation level.
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32
        && !crate::pg::citus::in_database()
    {
        return with_owner(|| Spi::connect_mut(|_| write_with_latest_snapshot(sql, args)))
            .unwrap_or_else(|e| pgrx::error!("pg_tenancy: catalog write failed: {e}"));
    }
    with_owner(|| Spi::connect_mut(|c| c.update(sql, None, args).map(|t| t.len() as u64)))
        .unwrap_or_else(|e| pgrx::error!("pg_tenancy: catalog write failed: {e}"))
}

/// A catalog write in a REPEATABLE READ or SERIALIZABLE transaction: run with a snapshot taken
/// now, and the transaction's own as the cross-check, as PostgreSQL runs its foreign-key checks
/// there. The management calls read the catalog with a snapshot taken now (after the tenant's
/// lock), and a write with the transaction's older one missed what committed in between: an
/// `unmap_role` under REPEATABLE READ, of a mapping made again after its transaction began,
/// reported success, was recorded, and removed nothing (an attacker's pass). Now a row the
/// transaction's snapshot does not show, changed or deleted here, fails the transaction with
/// 40001 (could not serialize access), to be run again.
fn write_with_latest_snapshot(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
) -> Result<u64, pgrx::spi::Error> {
    let (mut types, mut values, nulls) = spi_args(args);
    // SAFETY: inside an SPI connection (the caller's Spi::connect_mut), as the catalog owner
    // with the pinned search_path (with_owner), which is what kept plans are made for
    // (plan_for); both snapshots are registered for the length of the execution and released
    // below (or by resource-owner clean-up on error).
    unsafe {
        let (plan, kept) = plan_for(sql, &mut types);
        let crosscheck = pg_sys::RegisterSnapshot(pg_sys::GetTransactionSnapshot());
        let latest = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
        let rc = pg_sys::SPI_execute_snapshot(
            plan,
            values.as_mut_ptr(),
            nulls.as_ptr(),
            latest,
            crosscheck,
            false,
            true,
            0,
        );
        pg_sys::UnregisterSnapshot(latest);
        pg_sys::UnregisterSnapshot(crosscheck);
        if !kept {
            pg_sys::SPI_freeplan(plan);
        }
        if rc < 0 {
            pgrx::error!("pg_tenancy: a catalog write returned SPI code {rc}");
        }
        Ok(pg_sys::SPI_processed)
    }
}

/// On a Citus worker, pg_tenancy's catalog is changed only through Citus, from the
/// coordinator: a management call made in a session of a worker wrote its node's copies of the
/// reference tables with ids the coordinator's sequences hand out too (`grant_support` failed
/// on a duplicate key, a reviewer's pass) and past the coordinator's locks. Refused there
/// (Citus's own connections write the copies with plain SQL, never through here): every
/// management record (`audit::admin`, which every management call writes, and fails the call
/// with all it wrote) and first the calls that draw an id from a sequence (`grant_support`)
/// check it. Not every catalog write: a worker's own guard work (a dropped table forgotten)
/// writes its node's local tables.
pub fn refuse_on_a_citus_worker() {
    // Citus's own connections are its superuser's: a client that names its connection as
    // Citus does is not exempt (an attacker's pass ran management on a worker so).
    if !crate::pg::citus::in_database() || crate::pg::citus::internal_superuser_backend() {
        return;
    }
    let worker = read_one::<bool>(
        "SELECT groupid OPERATOR(pg_catalog.<>) 0 FROM pg_catalog.pg_dist_local_group",
        &[],
    )
    .unwrap_or(false);
    if worker {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            "pg_tenancy's catalog is changed on the Citus coordinator only, and this node is a worker",
            "Run pg_tenancy's management functions (tenants, keys, mappings, roles, grants, members, revocations, support) in a session of the coordinator.",
        );
    }
}

/// The relation whose relcache invalidation drops every backend's cache for a change to
/// `relid`: `relid` itself when it is one of the catalog's tables; otherwise (on Citus, the
/// trigger fires on a node's copy of a catalog table, a shard of another name) the first
/// catalog table, which every backend listens for ([`relcache_callback`]).
fn invalidation_relid(relid: pg_sys::Oid) -> pg_sys::Oid {
    let rels = rels();
    if rels.oids.contains(&relid) {
        relid
    } else {
        rels.oids[0]
    }
}

/// On Citus, a node reads the values of the catalog writes sent to it with its own
/// `standard_conforming_strings`: with it off there (a database default its owner may set), a
/// backslash in a subject or a role's name became an escape, and the node's copy took another
/// value than the coordinator's (a revocation of another subject: an attacker's pass). Refused
/// on such a node, and the write with it (the catalog's triggers call this).
fn refuse_nonstandard_strings() {
    // SAFETY: reads this backend's setting.
    if !unsafe { pg_sys::standard_conforming_strings } && crate::pg::citus::in_database() {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            "pg_tenancy's catalog is not written on a Citus node with standard_conforming_strings off",
            "Turn standard_conforming_strings on for the database on every node (ALTER DATABASE ... RESET standard_conforming_strings).",
        );
    }
}

thread_local! {
    /// What a node does when its copy of the role mappings changes (registered by the RBAC
    /// pillar: the mapped roles' grants on `tenancy.mapped_role`).
    static ON_MAPPINGS_CHANGED: Cell<Option<fn()>> = const { Cell::new(None) };
}

/// Run `f` on each Citus node whose copy of `tenancy.role_mapping` a statement changed (once,
/// from _PG_init).
pub fn on_mappings_changed(f: fn()) {
    ON_MAPPINGS_CHANGED.with(|c| c.set(Some(f)));
}

/// Statement-level trigger on every catalog table: queue a relcache invalidation of the table so
/// that every backend drops its cached rows when this transaction commits. On Citus, where the
/// catalog is reference tables whose writes reach each node's copy (`role_mapping_<shard>`, with
/// this trigger), a change of the mappings also runs [`on_mappings_changed`]'s callback there:
/// each node keeps its own mapped roles' grants (a role dropped on a worker from another
/// database left that worker's copy naming its oid: an attacker's pass).
#[pg_trigger]
fn catalog_changed<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, pgrx::PgTriggerError> {
    let relid = trigger.relid()?;
    refuse_nonstandard_strings();
    // SAFETY: queues an invalidation message for a relation that exists (the trigger's, or a
    // catalog table of this database).
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(invalidation_relid(relid)) };
    if crate::pg::citus::in_database()
        && trigger
            .table_name()?
            .strip_prefix("role_mapping_")
            .is_some_and(|shard| !shard.is_empty() && shard.bytes().all(|b| b.is_ascii_digit()))
    {
        if let Some(f) = ON_MAPPINGS_CHANGED.with(|c| c.get()) {
            // The statement's own changes are not visible to the statement that made them,
            // which an AFTER trigger's reads still are part of: a mapping deleted was read as
            // still there, and its role kept its grant on every worker (found by this
            // change's test). Made visible first, as SPI does before a query that writes.
            // SAFETY: inside the trigger's transaction, after its statement's changes (an
            // AFTER STATEMENT trigger); the catalog snapshot taken next includes them.
            unsafe {
                pg_sys::CommandCounterIncrement();
                pg_sys::InvalidateCatalogSnapshot();
            }
            f();
        }
    }
    Ok(None)
}

thread_local! {
    /// Tenants whose rows the row triggers saw change since the last statement-level
    /// announcement, and the tables they changed in; a table is named in `full` when a row
    /// named no tenant.
    static CHANGED: RefCell<Changed> = RefCell::new(Changed::default());
    /// (local transaction id, announcements made in it).
    static ANNOUNCED_IN_TRANSACTION: Cell<(u32, usize)> = const { Cell::new((0, 0)) };
    /// (local transaction id, subtransaction id, the tenants announced in it): a tenant
    /// announced again in the same subtransaction queues no second message.
    static ANNOUNCED_HERE: RefCell<(u32, pg_sys::SubTransactionId, std::collections::HashSet<Uuid>)> =
        RefCell::new((0, 0, std::collections::HashSet::new()));
}

#[derive(Default)]
struct Changed {
    tenants: std::collections::HashSet<Uuid>,
    tables: Vec<pg_sys::Oid>,
    full: bool,
}

/// More announcements than this in one transaction (a bulk change): the rest invalidate the
/// whole cache instead (a relcache invalidation of the table), so that the bulk change does
/// not overflow the backends' invalidation queues; every backend then drops its cache once.
const ANNOUNCE_MAX: usize = 256;

/// Row-level trigger on the catalog tables whose rows belong to one tenant (tenant, member,
/// tenant_role, role_privilege, support_grant, subject_revocation, token_revocation), naming
/// the tenant column as its argument: note the old and the new row's tenant (a row with no
/// tenant, a token revocation for every tenant, drops every backend's whole cache). Nothing is queued per row: the
/// statement's `tenant_changes_announce` queues one invalidation per tenant. (Queued per row,
/// each would be processed by this backend at the next command-counter increment, which a
/// foreign-key check makes for every row: a statement of many rows then re-read its caches
/// for every row.)
#[pg_trigger]
fn tenant_changed<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, pgrx::PgTriggerError> {
    refuse_nonstandard_strings();
    let relid = trigger.relid()?;
    let column = trigger
        .extra_args()?
        .into_iter()
        .next()
        .unwrap_or_else(|| "tenant_id".to_string());
    let mut tenants = Vec::with_capacity(2);
    let mut full = false;
    for tuple in [trigger.old(), trigger.new()].into_iter().flatten() {
        match tuple.get_by_name::<pgrx::Uuid>(&column) {
            Ok(Some(id)) => tenants.push(from_pg_uuid(&id)),
            // No tenant to name (the column is NOT NULL, so this is not expected): drop every
            // backend's whole cache rather than miss the change.
            _ => full = true,
        }
    }
    CHANGED.with(|c| {
        let mut c = c.borrow_mut();
        c.tenants.extend(tenants);
        c.full |= full;
        if !c.tables.contains(&relid) {
            c.tables.push(relid);
        }
    });
    Ok(None)
}

/// Statement-level trigger beside [`tenant_changed`]: queue, in the current transaction, the
/// invalidation of every tenant whose rows the statement changed, so that every backend drops
/// what it cached about those tenants, and only that, when this transaction commits (and this
/// backend from its next command). Past [`ANNOUNCE_MAX`] announcements in the transaction, or
/// for a row that named no tenant, the table's relcache invalidation drops every cache instead.
/// (Tenants noted by a statement that failed before its statement triggers ran are announced
/// with the next statement's: an announcement too many costs a reload, never a miss.)
#[pg_trigger]
fn tenant_changes_announce<'a>(
    _trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, pgrx::PgTriggerError> {
    announce_changed();
    Ok(None)
}

/// Queue the invalidations of what the row triggers noted and no statement trigger announced
/// yet (see [`tenant_changes_announce`]); nothing when nothing is noted.
fn announce_changed() {
    let changed = CHANGED.with(|c| std::mem::take(&mut *c.borrow_mut()));
    if changed.tenants.is_empty() && !changed.full {
        return;
    }
    // SAFETY: MyProc is set for every backend that runs a transaction; the subtransaction id
    // is this backend's own.
    let (lxid, sub) = unsafe { ((*pg_sys::MyProc).lxid, pg_sys::GetCurrentSubTransactionId()) };
    let mut changed = changed;
    if !changed.full {
        // A tenant already announced in this subtransaction: its message is queued and goes
        // (or is dropped) with the subtransaction's other changes, so only this backend's own
        // cache must drop it again, at once. Counted once, the 256 announcements a transaction
        // may make are 256 tenants (a tenant admin's transaction of 310 set_setting calls
        // made every backend drop its whole cache: an attacker's pass).
        let again: Vec<Uuid> = ANNOUNCED_HERE.with(|a| {
            let mut a = a.borrow_mut();
            if a.0 != lxid || a.1 != sub {
                *a = (lxid, sub, std::collections::HashSet::new());
            }
            let again = changed
                .tenants
                .iter()
                .filter(|t| a.2.contains(t))
                .copied()
                .collect();
            a.2.extend(changed.tenants.iter().copied());
            again
        });
        for t in again {
            changed.tenants.remove(&t);
            tenant_invalidated(tenant_hash(t));
        }
        if changed.tenants.is_empty() {
            return;
        }
    }
    let (tx, sent) = ANNOUNCED_IN_TRANSACTION.with(|c| c.get());
    let sent = if tx == lxid { sent } else { 0 };
    if changed.full || sent + changed.tenants.len() > ANNOUNCE_MAX {
        ANNOUNCED_IN_TRANSACTION.with(|c| c.set((lxid, ANNOUNCE_MAX)));
        for relid in changed.tables {
            // SAFETY: queues an invalidation message for a relation that exists (a catalog
            // table whose trigger noted it in this transaction, or one of this database's).
            unsafe { pg_sys::CacheInvalidateRelcacheByRelid(invalidation_relid(relid)) };
        }
        return;
    }
    ANNOUNCED_IN_TRANSACTION.with(|c| c.set((lxid, sent + changed.tenants.len())));
    for tenant in changed.tenants {
        announce_tenant_change(tenant);
    }
}

fn privilege_row(
    row: &pgrx::spi::SpiHeapTupleData,
    first: usize,
) -> Result<Privilege, pgrx::spi::Error> {
    Ok(Privilege {
        role: row.get::<String>(first)?.unwrap_or_default(),
        relid: row.get::<pg_sys::Oid>(first + 1)?,
        privilege: row.get::<String>(first + 2)?.unwrap_or_default(),
    })
}

/// Every privilege granted to `tenant`'s roles.
pub fn privileges(tenant: Uuid) -> Rc<Vec<Privilege>> {
    if let Some(hit) = cached(tenant, |e| e.privileges.clone()) {
        return hit;
    }
    require_own_copy("tenancy.role_privilege");
    let gen = fill_epoch();
    let rows = owner_rows(
        "tenancy.role_privilege",
        "SELECT role, relid::oid, privilege FROM tenancy.role_privilege WHERE tenant_id = $1",
        &[to_pg_uuid(tenant).into()],
        |row| privilege_row(row, 1),
    );
    let rows = Rc::new(rows);
    store_tenant(gen, tenant, |e| e.privileges = Some(rows.clone()));
    rows
}

/// Whether any of `roles` holds `privilege` on `rel` under a tenant's grants `privs`
/// ([`privileges`]). A partition inherits the grants of the protected table it belongs to.
pub fn roles_allow(
    privs: &[Privilege],
    roles: &[String],
    rel: pg_sys::Oid,
    privilege: &str,
) -> bool {
    let matches = |target: pg_sys::Oid| {
        privs.iter().any(|p| {
            p.privilege == privilege
                && roles.contains(&p.role)
                && p.relid.is_none_or(|r| r == target)
        })
    };
    if matches(rel) {
        return true;
    }
    // Grants on a partitioned table apply to its partitions.
    parent_of(rel).is_some_and(|parent| roles_allow(privs, roles, parent, privilege))
}

/// The newest unrevoked, unexpired support grant of `tenant` to `operator`.
pub fn support_grant(tenant: Uuid, operator: pg_sys::Oid) -> Option<Rc<SupportGrant>> {
    let op = u32::from(operator);
    let grant = match cached(tenant, |e| e.support.get(&op).cloned()) {
        Some(g) => g,
        None => {
            require_own_copy("tenancy.support_grant");
            let gen = fill_epoch();
            let g = owner_rows(
                "tenancy.support_grant",
                "SELECT id, privileges, floor(extract(epoch FROM expires_at))::int8 FROM tenancy.support_grant \
                  WHERE tenant_id = $1 AND operator::oid = $2 AND revoked_at IS NULL AND expires_at > now() \
                  ORDER BY expires_at DESC LIMIT 1",
                &[to_pg_uuid(tenant).into(), operator.into()],
                |r| {
                    Ok(Rc::new(SupportGrant {
                        id: r.get::<i64>(1)?.unwrap_or_default(),
                        privileges: r.get::<Vec<String>>(2)?.unwrap_or_default(),
                        expires_at: r.get::<i64>(3)?.unwrap_or_default(),
                    }))
                },
            )
            .into_iter()
            .next();
            store_tenant(gen, tenant, |e| {
                if e.support.len() >= PER_TENANT_KEPT {
                    e.support.clear();
                }
                e.support.insert(op, g.clone());
            });
            g
        }
    };
    // Expiry is checked on every use, cached or not.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    grant.filter(|g| g.expires_at > now)
}

thread_local! {
    static LOADING_PROTECTED: Cell<bool> = const { Cell::new(false) };
}

/// Set while the protected tables are being read; cleared on drop, so also when an error
/// unwinds through the read (a flag left set would make the executor hook skip its privilege
/// checks for the rest of the backend's life).
struct LoadingProtected;
impl Drop for LoadingProtected {
    fn drop(&mut self) {
        LOADING_PROTECTED.with(|l| l.set(false));
    }
}

/// A set of relation oids, hashed with FxHash: looked up on every statement, with keys the
/// catalog assigns (no client chooses them, so SipHash's defence against chosen keys buys
/// nothing here).
pub type OidSet = rustc_hash::FxHashSet<u32>;

/// The oids of protected tables (and partitions), or None while they are being loaded (the
/// executor hook must not recurse into its own catalog query).
pub fn protected_relids() -> Option<Rc<OidSet>> {
    if let Some(hit) = CACHE.with(|c| c.borrow().protected.clone()) {
        return Some(hit);
    }
    if !installed() || LOADING_PROTECTED.with(|l| l.replace(true)) {
        return None;
    }
    let _loading = LoadingProtected;
    let gen = fill_epoch();
    let set: OidSet = owner_rows(
        "tenancy.protected_table",
        "SELECT relid::oid FROM tenancy.protected_table",
        &[],
        |r| Ok(r.get::<pg_sys::Oid>(1)?.map(u32::from)),
    )
    .into_iter()
    .flatten()
    .collect();
    let set = Rc::new(set);
    store(gen, |c| c.protected = Some(set.clone()));
    Some(set)
}

/// Whether the error-unwind reset of the loading flag holds (for the in-process test).
#[cfg(any(test, feature = "pg_test"))]
pub fn loading_protected() -> bool {
    LOADING_PROTECTED.with(|l| l.get())
}

/// SQL text: the types a value of type `ty` (a `pg_catalog.pg_type` row in the FROM clause
/// before it) is made of, one step down, as rows `x(child)`: the base of a domain, the element
/// of an array, the attributes of a composite, the subtype of a range, the range of a
/// multirange. A recursive query over it reaches every type a column's values are made of
/// (`leakproof::REACHABLE_TYPES`; on Citus, the functions the guard knows a shard runs).
macro_rules! type_parts {
    () => {
        "CROSS JOIN LATERAL ( \
               SELECT ty.typbasetype WHERE ty.typtype = 'd' \
               UNION ALL SELECT ty.typelem WHERE ty.typelem <> 0 \
               UNION ALL SELECT a.atttypid FROM pg_catalog.pg_attribute a \
                          WHERE ty.typrelid <> 0 AND a.attrelid = ty.typrelid AND a.attnum > 0 AND NOT a.attisdropped \
               UNION ALL SELECT r.rngsubtype FROM pg_catalog.pg_range r WHERE r.rngtypid = ty.oid \
               UNION ALL SELECT r.rngtypid FROM pg_catalog.pg_range r WHERE r.rngmultitypid = ty.oid \
               UNION ALL SELECT d.refobjid FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_depend d \
                   ON d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass AND d.objid = k.oid \
                  AND d.refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass \
                WHERE ty.typtype = 'd' AND k.contypid = ty.oid \
               UNION ALL SELECT d.refobjid FROM pg_catalog.pg_depend d \
                WHERE ty.typtype = 'd' AND d.classid = 'pg_catalog.pg_type'::pg_catalog.regclass \
                  AND d.objid = ty.oid AND d.refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass) x(child)"
    };
}
pub(crate) use type_parts;

/// SQL text: a condition on a `pg_catalog.pg_depend` row `d` that says it is the dependency of
/// one of relation `$rel`'s stored expressions (or of the relation itself) on another object:
/// of the relation, its indexes, column defaults and generated columns, constraints,
/// triggers, policies, rules or statistics objects. With `d.refclassid` = pg_type, the types
/// those expressions name (a conversion to a domain, a constant of a type), which PostgreSQL
/// records in `pg_depend`.
macro_rules! expression_dependency_of {
    ($rel:literal) => {
        concat!(
            "((d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
               AND (d.objid = ", $rel, " OR d.objid IN (SELECT i.indexrelid FROM pg_catalog.pg_index i WHERE i.indrelid = ", $rel, "))) \
           OR (d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass \
               AND d.objid IN (SELECT x.oid FROM pg_catalog.pg_attrdef x WHERE x.adrelid = ", $rel, ")) \
           OR (d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass \
               AND d.objid IN (SELECT x.oid FROM pg_catalog.pg_constraint x WHERE x.conrelid = ", $rel, ")) \
           OR (d.classid = 'pg_catalog.pg_trigger'::pg_catalog.regclass \
               AND d.objid IN (SELECT x.oid FROM pg_catalog.pg_trigger x WHERE x.tgrelid = ", $rel, ")) \
           OR (d.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass \
               AND d.objid IN (SELECT x.oid FROM pg_catalog.pg_policy x WHERE x.polrelid = ", $rel, ")) \
           OR (d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
               AND d.objid IN (SELECT x.oid FROM pg_catalog.pg_rewrite x WHERE x.ev_class = ", $rel, ")) \
           OR (d.classid = 'pg_catalog.pg_statistic_ext'::pg_catalog.regclass \
               AND d.objid IN (SELECT x.oid FROM pg_catalog.pg_statistic_ext x WHERE x.stxrelid = ", $rel, ")))"
        )
    };
}
pub(crate) use expression_dependency_of;

/// An identifier quoted by PostgreSQL (`quote_identifier`).
pub fn quote_ident(s: &str) -> String {
    pgrx::spi::quote_identifier(s)
}

/// A string literal quoted by PostgreSQL (`quote_literal_cstr`): quotes doubled, and written
/// `E'...'` with backslashes doubled when it holds one, so it reads the same whatever
/// `standard_conforming_strings` is.
pub fn quote_literal(s: &str) -> String {
    pgrx::spi::quote_literal(s)
}

/// Whether relation `rel` exists.
pub fn relation_exists(rel: pg_sys::Oid) -> bool {
    crate::pg::relation_spi::qualified_name_if_exists(rel).is_some()
}

/// A relation's name, schema-qualified and quoted where needed (its oid, when it is gone).
pub fn relation_name(rel: pg_sys::Oid) -> String {
    crate::pg::relation_spi::qualified_name_if_exists(rel)
        .unwrap_or_else(|| format!("{}", u32::from(rel)))
}

/// The first parent of a partition or inheritance child.
pub fn parent_of(rel: pg_sys::Oid) -> Option<pg_sys::Oid> {
    read_one::<pg_sys::Oid>(
        "SELECT inhparent FROM pg_catalog.pg_inherits WHERE inhrelid = $1 ORDER BY inhseqno LIMIT 1",
        &[rel.into()],
    )
}
