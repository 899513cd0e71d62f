//! The in-database audit trail: written in the same transaction as the change, append-only,
//! and tamper-evident.
//!
//! - Changes to protected tables are recorded by statement-level AFTER triggers with
//!   transition tables; `src/audit/writer.rs` forms and inserts the records without SQL.
//!   UPDATE entries keep the changed columns only; `audit_exclude` columns never reach the
//!   trail.
//! - Management actions are ADMIN entries.
//! - Every record carries `row_hash`, an HMAC-SHA-256 over the whole record including its id,
//!   keyed per tenant by a secret only the catalog owner reads (`tenancy.audit_key`), computed
//!   by the writer (a row inserted by hand has none, or a wrong one; without the key nobody can
//!   confirm a guessed row against its hash).
//! - Records are linked per tenant in `tenancy.audit_chain` at PRE_COMMIT of the writing
//!   transaction. A tenant has `LANES` chains; the transaction takes the lock of the first lane
//!   no other committer holds (an advisory tag SQL cannot take), reads that lane's head with
//!   the latest snapshot, appends its entry and keeps the lock to the end of its commit.
//!   Concurrent writers of a tenant therefore neither serialise for their whole transaction
//!   nor queue behind each other's commit (unless more than `CONCURRENT_LANES` commit at the
//!   same moment), and no committed record is ever unlinked. A transaction that links more
//!   than `BULK_TENANTS` tenants takes one lock instead of one per tenant and links into each
//!   tenant's `BULK_LANE` (see there).

pub mod anchor;
pub mod writer;

use crate::catalog::{self, to_pg_uuid};
use crate::errors;
use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};
use sha2::{Digest, Sha256};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use uuid::Uuid;

/// Records written by this transaction and not yet linked: (chain tenant, id, row_hash, subxact).
struct Pending {
    tenant: Uuid,
    id: i64,
    hash: Vec<u8>,
    subxact: pg_sys::SubTransactionId,
}

thread_local! {
    static PENDING: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
    static PURGING: Cell<bool> = const { Cell::new(false) };
    /// The chain locks this transaction took, as taken (released at XACT_EVENT_COMMIT, where
    /// no tag may be computed again: that reads a key through SPI).
    static CHAIN_LOCKED: RefCell<Vec<pg_sys::LOCKTAG>> = const { RefCell::new(Vec::new()) };
    /// Bumped by every relcache invalidation: cached audit settings and plans are rebuilt.
    static EPOCH: Cell<u64> = const { Cell::new(1) };
    /// Per table: its audit settings, with the epoch they were read at.
    static TRIGGER_CACHE: RefCell<HashMap<u32, (u64, Rc<AuditMeta>)>> =
        RefCell::new(HashMap::new());
    /// Per (tenant, lane): a seq this backend read as the lane's committed head. Heads only
    /// grow, so it bounds the next head read from below (see chain_head).
    static KNOWN_HEADS: RefCell<HashMap<(Uuid, i16), i64>> = RefCell::new(HashMap::new());
}

/// At most this many (tenant, lane) heads are remembered per backend (about 40 bytes each).
const KNOWN_HEADS_MAX: usize = 16_384;

use crate::audit::writer::Written;

/// One record of a chain entry as verification reads it: id, present (under the chain's
/// tenant), stored row_hash, recomputed row_hash.
type ChainedRecord = (i64, bool, Option<Vec<u8>>, Option<Vec<u8>>);

/// Any relcache invalidation (DDL, ANALYZE, a change of pg_tenancy's catalog) may change a
/// table's audit settings or row type: rebuild on next use. Called from the relcache callback,
/// so it only bumps a counter (plans are released when replaced, not while one may run).
fn relcache_changed() {
    EPOCH.with(|e| e.set(e.get() + 1));
}

/// The tenant_id of the platform's records (management actions that concern no tenant) and of
/// their chain. No tenant has it (tenancy.tenant's CHECK).
pub const PLATFORM_CHAIN: Uuid = Uuid::nil();
/// prev_hash of a chain's first entry.
const GENESIS: [u8; 32] = [0; 32];
/// How many chains ("lanes") a tenant has (bootstrap.sql's CHECK): `CONCURRENT_LANES` that
/// ordinary commits link into, and `BULK_LANE`.
pub const LANES: i16 = CONCURRENT_LANES + 1;
/// Up to this many transactions of one tenant link their records at the same moment without
/// waiting for each other.
const CONCURRENT_LANES: i16 = 16;
/// The lane of transactions that link more than `BULK_TENANTS` tenants (a backfill, a
/// migration, bulk onboarding). A lock per tenant would need one lock table entry per tenant
/// (an UPDATE across 100,000 tenants ran out of shared memory with the default
/// max_locks_per_transaction); instead such a transaction takes one lock, the bulk lock,
/// which only bulk transactions take, and links every tenant's records into that tenant's
/// bulk lane. Bulk commits therefore queue behind each other, and never behind a tenant's
/// ordinary commits, which keep to the other lanes.
pub const BULK_LANE: i16 = CONCURRENT_LANES;
/// More tenants than this in one commit link through the bulk lane.
const BULK_TENANTS: usize = 32;
/// The fourth field of the chain's lock tags is this plus the lane. SQL's advisory lock
/// functions only use 1 and 2 there, so no session can take (and hold) a tenant's chain lock
/// to stall its commits.
const CHAIN_LOCK_FIELD4: u16 = 0x7400;

/// The two fields of `tenant`'s lock tags (its write lock, its chain's lanes) that tell one
/// tenant's from another's: eight bytes of an HMAC under the tenant's audit key, not the bytes
/// of its id. `pg_locks` is readable by every role: tags made of the id showed any session
/// which tenants were writing and in which backend (an attacker's pass tied them to
/// `pg_stat_activity`'s statements and terminated one chosen tenant's sessions). Every
/// backend of the database reads the same committed key (created with the tenant, or by the
/// first writer of a tenant that has none, which a second one waits for), so their tags
/// agree. The nil tenant's (the bulk lane's) stays (0, 0): it names nobody. Reads the key
/// through SPI the first time: never called at the commit itself (the tags taken are kept).
pub(crate) fn lock_tag_fields(tenant: Uuid) -> (u32, u32) {
    if tenant.is_nil() {
        return (0, 0);
    }
    // A NUL byte first: no record's text (the other messages under this key) has one.
    let d = writer::record_hmac(&audit_mac(tenant), b"\0pg_tenancy lock tag");
    (
        u32::from_be_bytes([d[0], d[1], d[2], d[3]]),
        u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
    )
}

/// The chain lock of `lane` of the tenant whose [`lock_tag_fields`] are `fields`.
fn chain_lock_tag(fields: (u32, u32), lane: i16) -> pg_sys::LOCKTAG {
    let (field2, field3) = fields;
    pg_sys::LOCKTAG {
        // SAFETY: MyDatabaseId is this backend's own variable, set once it connected to its
        // database and read on its only thread.
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: field2,
        locktag_field3: field3,
        locktag_field4: CHAIN_LOCK_FIELD4 + lane as u16,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    }
}

/// The bulk lock: the tag of the bulk lane of the nil tenant, which no ordinary commit takes
/// (they keep to lanes below `BULK_LANE`).
fn lock_bulk() {
    let tag = chain_lock_tag(lock_tag_fields(Uuid::nil()), BULK_LANE);
    // SAFETY: a transaction-level lock, released at commit (release_chain_locks) or abort.
    unsafe {
        pg_sys::LockAcquire(
            &tag,
            pg_sys::ExclusiveLock as pg_sys::LOCKMODE,
            false,
            false,
        )
    };
    CHAIN_LOCKED.with(|l| l.borrow_mut().push(tag));
}

/// Take the lock of one of the tenant's lanes for this transaction's commit and return the
/// lane: the first free one, starting from this backend's own (so a backend usually links
/// into the same lane); only when every lane is held does it wait, for its own lane.
fn lock_chain(tenant: Uuid) -> i16 {
    let mode = pg_sys::ExclusiveLock as pg_sys::LOCKMODE;
    // SAFETY: MyProc is set for every backend that runs a transaction.
    let home = (unsafe { (*pg_sys::MyProc).pgprocno }).rem_euclid(CONCURRENT_LANES as i32) as i16;
    // The tenant's fields once (its key is read through SPI the first time).
    let fields = lock_tag_fields(tenant);
    let tag_of = |lane: i16| chain_lock_tag(fields, lane);
    let free = (0..CONCURRENT_LANES)
        .map(|i| (home + i) % CONCURRENT_LANES)
        .find(|&lane| {
            let tag = tag_of(lane);
            // SAFETY: a transaction-level lock, released at commit (release_chain_locks) or abort.
            let got = unsafe { pg_sys::LockAcquire(&tag, mode, false, true) };
            got != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
        });
    let lane = free.unwrap_or_else(|| {
        let tag = tag_of(home);
        // SAFETY: as above; this one waits for the lock (dontWait = false).
        unsafe { pg_sys::LockAcquire(&tag, mode, false, false) };
        home
    });
    CHAIN_LOCKED.with(|l| l.borrow_mut().push(tag_of(lane)));
    lane
}

/// At XACT_EVENT_COMMIT the commit record is written (and flushed, as synchronous_commit
/// asks) and the transaction is visible to new snapshots, so the next committer of the tenant
/// reads this transaction's chain entry as the head. The chain locks can go now rather than
/// after the resource-owner clean-up that follows; that shortens the one-tenant critical
/// section. (A prepared transaction keeps them until COMMIT PREPARED.)
fn release_chain_locks() {
    for tag in CHAIN_LOCKED.with(|l| std::mem::take(&mut *l.borrow_mut())) {
        // SAFETY: a transaction-level lock this backend took in lock_chain (CHAIN_LOCKED lists
        // only those), released once: the list is taken.
        unsafe { pg_sys::LockRelease(&tag, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, false) };
    }
}

pub fn init() {
    crate::pg::hooks::at_transaction_event(xact_callback);
    crate::pg::hooks::at_subtransaction_event(subxact_callback);
    // SAFETY: called once from _PG_init; the callback stays valid for the backend's life.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0));
    }
    catalog::on_invalidate(forget_keys);
    catalog::name_tenant_locks_with(lock_tag_fields);
}

/// The relcache callback registered by [`init`].
///
/// # Safety
/// Called by PostgreSQL's invalidation processing.
#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, _relid: pg_sys::Oid) {
    relcache_changed();
}

/// The transaction callback registered by [`init`]: links the records at PRE_COMMIT.
fn xact_callback(event: pg_sys::XactEvent::Type) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT | XACT_EVENT_PRE_PREPARE => link_pending(),
        XACT_EVENT_COMMIT => {
            CREATED_KEYS.with(|c| c.borrow_mut().clear());
            release_chain_locks();
            PENDING.with(|p| p.borrow_mut().clear());
            PURGING.with(|p| p.set(false));
        }
        XACT_EVENT_ABORT | XACT_EVENT_PREPARE | XACT_EVENT_PARALLEL_ABORT => {
            // Aborted or prepared: the locks go with the transaction (or stay with the
            // prepared one).
            CHAIN_LOCKED.with(|l| l.borrow_mut().clear());
            PENDING.with(|p| p.borrow_mut().clear());
            PURGING.with(|p| p.set(false));
            // Prepared too: PostgreSQL treats a backend's caches after PREPARE as after an
            // abort, and a prepared transaction may still be rolled back; a key it created is
            // read back from the table once committed.
            forget_created_keys(0);
        }
        _ => {}
    }
}

/// The subtransaction callback registered by [`init`].
fn subxact_callback(event: pg_sys::SubXactEvent::Type, my_subid: pg_sys::SubTransactionId) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        // Records of the aborted subtransaction (and of its children, which have larger ids)
        // were rolled back with it.
        PENDING.with(|p| p.borrow_mut().retain(|r| r.subxact < my_subid));
        PURGING.with(|p| p.set(false));
        forget_created_keys(my_subid);
    }
}

fn remember(rows: Vec<Written>) {
    // SAFETY: reads the current transaction state's subtransaction id (the audit trigger's
    // caller is inside one).
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        for (tenant, id, hash) in rows {
            p.push(Pending {
                tenant,
                id,
                hash,
                subxact,
            });
        }
    });
}

/// sha256(id_1 || row_hash_1 || id_2 || row_hash_2 ...), ids as 8-byte big-endian.
pub fn batch_hash<'a>(records: impl IntoIterator<Item = (i64, &'a [u8])>) -> Vec<u8> {
    let mut h = Sha256::new();
    for (id, row_hash) in records {
        h.update(id.to_be_bytes());
        h.update(row_hash);
    }
    h.finalize().to_vec()
}

/// sha256(prev_hash || seq || batch_hash), seq as 8-byte big-endian.
pub fn chain_hash(prev: &[u8], seq: i64, batch: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(batch);
    h.finalize().to_vec()
}

thread_local! {
    /// Kept SPI plan of the purge-checkpoint query (planned once per backend).
    static CHECKPOINT_PLAN: Cell<Option<pg_sys::SPIPlanPtr>> = const { Cell::new(None) };
}

/// Run a kept one-row plan with the latest snapshot; returns (seq, chain_hash) if a row came.
///
/// # Safety
/// Inside an SPI connection; `plan` must be a kept plan of a SELECT of two non-null columns
/// (bigint, text) taking a uuid and a smallint.
unsafe fn head_row(plan: pg_sys::SPIPlanPtr, tenant: Uuid, lane: i16) -> Option<(i64, Vec<u8>)> {
    let mut values = [
        to_pg_uuid(tenant).into_datum().expect("uuid datum"),
        lane.into_datum().expect("int2 datum"),
    ];
    let nulls = [b' ' as std::ffi::c_char; 2];
    // SAFETY: inside an SPI connection (this function's contract); `plan` takes a uuid and a
    // smallint (this function's contract), given as `values` (the uuid palloc'd in the
    // current context) with `nulls` of the same length marking none null; read-only, at most
    // one row, with the latest snapshot.
    let rc = unsafe {
        pg_sys::SPI_execute_snapshot(
            plan,
            values.as_mut_ptr(),
            nulls.as_ptr(),
            pg_sys::GetLatestSnapshot(),
            std::ptr::null_mut(),
            true,
            false,
            1,
        )
    };
    if rc != pg_sys::SPI_OK_SELECT as i32 {
        pgrx::error!("pg_tenancy: reading the audit chain head failed ({rc})");
    }
    // SAFETY: SPI's result count of the SELECT just run, on the backend's only thread.
    if unsafe { pg_sys::SPI_processed } == 0 {
        return None;
    }
    // SAFETY: SPI_OK_SELECT with a row: SPI_tuptable is the SELECT's result, whose `vals`
    // holds at least that first row.
    let tt = unsafe { pg_sys::SPI_tuptable };
    // SAFETY: as above.
    let tuple = unsafe { *(*tt).vals };
    let text = |col: i32| {
        // SAFETY: columns 1 and 2 of the result's row, both non-null (this function's
        // contract), so SPI_getvalue returns a palloc'd NUL-terminated string, copied at once.
        unsafe {
            let p = pg_sys::SPI_getvalue(tuple, (*tt).tupdesc, col);
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    Some((
        text(1).parse().unwrap_or(0),
        hex::decode(text(2)).unwrap_or_default(),
    ))
}

/// The newest entry of one of `tenant`'s lanes (or the lane's purge checkpoint), read with the
/// latest snapshot so that a REPEATABLE READ transaction links after the newest committed
/// entry.
///
/// The read is bounded below by the head this backend saw last time on the lane: a committed
/// entry's seq, and entries are only ever added above the head, so the newest entry is at or
/// above it unless entries were removed since (retention, a decommissioned tenant); then the
/// bounded read finds nothing and the lane is read whole. The bound spares checking every
/// entry of the lane on the index's last page (about 4% of an audited single-row insert).
fn chain_head(shards: &ChainShards, tenant: Uuid, lane: i16) -> (i64, Vec<u8>) {
    use crate::audit::writer::newest_chain_entry;
    let chain = shards.chain.as_c_str();
    let known = KNOWN_HEADS.with(|k| k.borrow().get(&(tenant, lane)).copied());
    // SAFETY: at PRE_COMMIT, with the lane's lock held.
    let newest = unsafe {
        known
            .and_then(|bound| newest_chain_entry(chain, tenant, lane, Some(bound)))
            .or_else(|| newest_chain_entry(chain, tenant, lane, None))
    };
    if let Some(head) = newest {
        KNOWN_HEADS.with(|k| {
            let mut k = k.borrow_mut();
            if k.len() >= KNOWN_HEADS_MAX {
                k.clear();
            }
            k.insert((tenant, lane), head.0);
        });
        return head;
    }
    if let Some(checkpoint) = &shards.checkpoint {
        // On Citus: this node's shard of audit_checkpoint holding the tenant (its name is
        // Citus's, quoted here), read with the latest snapshot as below.
        let sql = format!(
            "SELECT seq, chain_hash FROM tenancy.{} WHERE tenant_id = $1 AND lane = $2",
            catalog::quote_ident(checkpoint)
        );
        return catalog::with_owner_reading_locally(|| {
            Spi::connect(|c| {
                let t = c.select(&sql, Some(1), &[to_pg_uuid(tenant).into(), lane.into()])?;
                Ok::<_, pgrx::spi::Error>(if t.is_empty() {
                    (0, GENESIS.to_vec())
                } else {
                    let r = t.first();
                    (
                        r.get::<i64>(1)?.unwrap_or(0),
                        r.get::<Vec<u8>>(2)?.unwrap_or_default(),
                    )
                })
            })
        })
        .unwrap_or_else(|e| pgrx::error!("pg_tenancy: reading the audit checkpoint failed: {e}"));
    }
    let checkpoint = checkpoint_plan();
    // With the search_path pinned, as the plan was prepared: PostgreSQL analyzes and plans a
    // kept plan again whenever the search_path in force differs from the one it was made
    // under, and so as the catalog owner with the caller's (an application role's own
    // `=` (int2, int2) on its search_path ran as the superuser at its transaction's commit and
    // made the role a superuser: an attacker's pass).
    // SAFETY: head_row runs inside the SPI connection made here, with the kept plan of
    // checkpoint_plan (a SELECT of seq and encode(chain_hash, 'hex'), both NOT NULL columns,
    // taking a uuid and a smallint).
    catalog::with_owner_reading_locally(|| unsafe {
        Spi::connect(|_| head_row(checkpoint, tenant, lane).unwrap_or((0, GENESIS.to_vec())))
    })
}

/// Prepare (once per backend, with the pinned search_path) and keep an SPI plan.
fn keep_plan(sql: &std::ffi::CStr, argtypes: &[pg_sys::Oid]) -> pg_sys::SPIPlanPtr {
    // SAFETY: inside the SPI connection made here; `sql` is NUL-terminated and `types` holds
    // the number of argument types passed. The kept plan is moved out of SPI's memory, so it
    // outlives the connection.
    catalog::with_owner_reading_locally(|| unsafe {
        Spi::connect(|_| {
            let mut types = argtypes.to_vec();
            let plan = pg_sys::SPI_prepare(sql.as_ptr(), types.len() as i32, types.as_mut_ptr());
            if plan.is_null() || pg_sys::SPI_keepplan(plan) != 0 {
                pgrx::error!("pg_tenancy: preparing an audit statement failed");
            }
            plan
        })
    })
}

fn checkpoint_plan() -> pg_sys::SPIPlanPtr {
    if let Some(plan) = CHECKPOINT_PLAN.with(|p| p.get()) {
        return plan;
    }
    let plan = keep_plan(
        c"SELECT seq, encode(chain_hash, 'hex') FROM tenancy.audit_checkpoint WHERE tenant_id = $1 AND lane = $2",
        &[pg_sys::UUIDOID, pg_sys::INT2OID],
    );
    CHECKPOINT_PLAN.with(|p| p.set(Some(plan)));
    plan
}

/// The chain entry's columns, in the order link_pending gives them.
const CHAIN_COLUMNS: [(&std::ffi::CStr, pg_sys::Oid); 7] = [
    (c"tenant_id", pg_sys::UUIDOID),
    (c"lane", pg_sys::INT2OID),
    (c"seq", pg_sys::INT8OID),
    (c"record_ids", pg_sys::INT8ARRAYOID),
    (c"batch_hash", pg_sys::BYTEAOID),
    (c"prev_hash", pg_sys::BYTEAOID),
    (c"chain_hash", pg_sys::BYTEAOID),
];

/// Where a tenant's chain is linked: `audit_chain` and the checkpoints of `audit_checkpoint`
/// (read by a kept plan) on one node; on Citus, this node's shards of both that hold the
/// tenant.
struct ChainShards {
    chain: std::ffi::CString,
    checkpoint: Option<String>,
}

fn chain_shards(tenant: Uuid) -> ChainShards {
    if crate::citus::trail::distributed() {
        ChainShards {
            chain: std::ffi::CString::new(crate::citus::trail::chain_shard("audit_chain", tenant))
                .expect("a relation name"),
            checkpoint: Some(crate::citus::trail::chain_shard("audit_checkpoint", tenant)),
        }
    } else {
        ChainShards {
            chain: c"audit_chain".into(),
            checkpoint: None,
        }
    }
}

/// Management actions that take access away inside a tenant: telemetry measures how long its
/// bound sessions take to be refused after one commits.
const REVOCATIONS: &[&str] = &[
    "revoke_subject",
    "revoke_token",
    "suspend_tenant",
    "remove_member",
    "unmap_role",
    "revoke_support",
    "revoke",
    "drop_role",
    "revoke_key",
    "decommission_tenant",
];

/// Link this transaction's records into their tenants' chains (PRE_COMMIT).
fn link_pending() {
    let mut pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    if pending.is_empty() {
        return;
    }
    pending.sort_by_key(|r| (r.tenant, r.id));
    for run in pending.chunk_by(|a, b| a.tenant == b.tenant) {
        crate::telemetry::audit_records(run[0].tenant, run.len() as u64);
    }
    // Everything the linking allocates (executor state, index scan, datums) goes into a
    // context of its own under the transaction's, deleted below or with the transaction on an
    // error. The caller's context can outlive many transactions: a procedure that COMMITs in
    // a loop commits in its own context, which grew by every commit's allocations until the
    // procedure returned (and every commit paid for fresh pages).
    // SAFETY: a child of TopTransactionContext, valid at PRE_COMMIT; the name is a static
    // string, as the context keeps the pointer.
    let link_cxt = unsafe {
        pg_sys::AllocSetContextCreateExtended(
            pg_sys::TopTransactionContext,
            c"pg_tenancy audit chain link".as_ptr(),
            pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
        )
    };
    // SAFETY: `link_cxt` was just made; the previous context is switched back to below.
    let outer = unsafe { pg_sys::MemoryContextSwitchTo(link_cxt) };
    // PRE_COMMIT runs outside any portal: SPI needs an active snapshot (an error pops it
    // through transaction abort).
    // SAFETY: inside the committing transaction, which has a transaction snapshot to push;
    // popped below.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    // The chain tables written, by name (one on one node; on Citus the shards of this
    // node's tenants).
    let mut chain_tables: Vec<(std::ffi::CString, crate::audit::writer::SimpleInsert)> = Vec::new();
    let tenants = 1 + pending
        .windows(2)
        .filter(|w| w[0].tenant != w[1].tenant)
        .count();
    let bulk = tenants > BULK_TENANTS;
    if bulk {
        lock_bulk();
    }
    let mut i = 0;
    while i < pending.len() {
        let tenant = pending[i].tenant;
        let mut j = i;
        while j < pending.len() && pending[j].tenant == tenant {
            j += 1;
        }
        let shards = chain_shards(tenant);
        let lane = if bulk { BULK_LANE } else { lock_chain(tenant) };
        let (head, prev) = chain_head(&shards, tenant, lane);
        let seq = head + 1;
        let records = &pending[i..j];
        let batch = batch_hash(records.iter().map(|r| (r.id, r.hash.as_slice())));
        let chain = chain_hash(&prev, seq, &batch);
        let ids: Vec<i64> = records.iter().map(|r| r.id).collect();
        let at = match chain_tables.iter().position(|(n, _)| *n == shards.chain) {
            Some(at) => at,
            None => {
                // SAFETY: in the committing transaction; closed below.
                let t = unsafe {
                    crate::audit::writer::SimpleInsert::open(
                        &shards.chain,
                        &CHAIN_COLUMNS,
                        &[c"audit_chain_lane_check"],
                    )
                };
                chain_tables.push((shards.chain.clone(), t));
                chain_tables.len() - 1
            }
        };
        let chain_table = &mut chain_tables[at].1;
        // SAFETY: values of the columns' types (uuid, smallint, bigint, bigint[], bytea x 3).
        unsafe {
            chain_table.insert(&[
                to_pg_uuid(tenant).into_datum(),
                lane.into_datum(),
                seq.into_datum(),
                ids.into_datum(),
                batch.as_slice().into_datum(),
                prev.as_slice().into_datum(),
                chain.as_slice().into_datum(),
            ]);
            chain_table.reset_row();
        }
        i = j;
    }
    // SAFETY: the inserts opened above, each closed once, in the same transaction with
    // `link_cxt` (their memory) still alive; then the snapshot pushed above is popped, the
    // caller's context made current again, and `link_cxt`, which nothing refers to any more,
    // deleted.
    unsafe {
        for (_, t) in chain_tables {
            t.close();
        }
        pg_sys::PopActiveSnapshot();
        pg_sys::MemoryContextSwitchTo(outer);
        pg_sys::MemoryContextDelete(link_cxt);
    }
}

/// (tenant, id, row_hash) of the records an audit INSERT ... RETURNING id, tenant_id, row_hash
/// wrote.
fn returned_records(t: pgrx::spi::SpiTupleTable) -> pgrx::spi::Result<Vec<Written>> {
    let mut out = Vec::with_capacity(t.len());
    for r in t {
        out.push((
            r.get::<pgrx::Uuid>(2)?
                .map_or(PLATFORM_CHAIN, |u| catalog::from_pg_uuid(&u)),
            r.get::<i64>(1)?.unwrap_or_default(),
            r.get::<Vec<u8>>(3)?.unwrap_or_default(),
        ));
    }
    Ok(out)
}

/// Run an audit INSERT ... RETURNING id, tenant_id, row_hash as the catalog owner and
/// remember the records for linking at commit.
fn insert_records(sql: &str, args: &[pgrx::datum::DatumWithOid]) {
    let rows =
        catalog::with_owner(|| Spi::connect_mut(|c| returned_records(c.update(sql, None, args)?)))
            .unwrap_or_else(|e| pgrx::error!("pg_tenancy: writing the audit trail failed: {e}"));
    // On Citus the records went to their tenants' shards, where `_audit_link_inserted` hands
    // them to that node's linking.
    if !crate::citus::trail::distributed() {
        remember(rows);
    }
}

/// The columns every audit INSERT fills, and the hash over them.
const RECORD_COLUMNS: &str =
    "id, tenant_id, occurred_at, txid, table_name, op, row_key, old_row, new_row, \
     db_role, subject, application_name, client_addr, row_hash";
const HASHED: &str =
    "tenancy._audit_row_hash(s.id, s.tenant_id, s.occurred_at, s.txid, s.table_name, s.op, \
     s.row_key::text, s.old_row::text, s.new_row::text, s.db_role, s.subject, s.application_name, s.client_addr::text)";
/// Per-record values that do not come from the changed row.
/// (On Citus, plus this node's offset: `src/citus/trail.rs`.)
fn context() -> String {
    match crate::citus::trail::id_offset() {
        0 => "nextval('tenancy.audit_log_id_seq') AS id".into(),
        o => format!("nextval('tenancy.audit_log_id_seq') + {o} AS id"),
    }
}
const CONTEXT_TAIL: &str = "clock_timestamp() AS occurred_at, txid_current() AS txid";
const SESSION_TAIL: &str =
    "current_setting('application_name') AS application_name, inet_client_addr() AS client_addr";

fn caller_and_subject() -> (String, Option<String>) {
    (
        crate::authz::role_name(crate::authz::caller()),
        crate::authz::transaction_subject()
            .unwrap_or_else(|| crate::authz::acting_unchecked().and_then(|a| a.subject)),
    )
}

thread_local! {
    /// Per tenant, the HMAC state keyed with its audit key (read or created by this backend;
    /// a key never changes once created). Cloned per record: the key's two blocks are hashed
    /// once, not per record.
    static AUDIT_MACS: RefCell<HashMap<Uuid, Rc<crate::audit::writer::RecordMac>>> =
        RefCell::new(HashMap::new());
    /// The audit keys this transaction created, with the subtransaction that created each:
    /// forgotten if it rolls back (the key was never saved). Creating a key invalidates no
    /// other backend's cache: none can hold a key that did not exist, and keys never change.
    static CREATED_KEYS: RefCell<Vec<(pg_sys::SubTransactionId, Uuid)>> =
        const { RefCell::new(Vec::new()) };
}

/// Note that this (sub)transaction created `tenant`'s audit key.
fn created_key(tenant: Uuid) {
    // SAFETY: the current subtransaction's id, this backend's own.
    let sub = unsafe { pg_sys::GetCurrentSubTransactionId() };
    CREATED_KEYS.with(|c| c.borrow_mut().push((sub, tenant)));
}

/// Forget the keys created by subtransaction `from` and its children (every key this
/// transaction created, for 0): they were rolled back.
fn forget_created_keys(from: pg_sys::SubTransactionId) {
    let gone: Vec<Uuid> = CREATED_KEYS.with(|c| {
        let mut c = c.borrow_mut();
        let gone = c
            .iter()
            .filter(|(s, _)| *s >= from)
            .map(|(_, t)| *t)
            .collect();
        c.retain(|(s, _)| *s < from);
        gone
    });
    AUDIT_MACS.with(|m| {
        let mut m = m.borrow_mut();
        for t in gone {
            m.remove(&t);
        }
    });
}

/// Forget every kept audit key (at any invalidation of pg_tenancy's catalog, and when a
/// transaction that created one aborts: its key was never saved).
pub fn forget_keys() {
    AUDIT_MACS.with(|k| k.borrow_mut().clear());
}

/// `tenant`'s keyed record MAC, if it has an audit key (read fresh as the catalog owner, then
/// kept).
fn existing_audit_mac(tenant: Uuid) -> Option<Rc<crate::audit::writer::RecordMac>> {
    if let Some(k) = AUDIT_MACS.with(|k| k.borrow().get(&tenant).cloned()) {
        return Some(k);
    }
    let key: Vec<u8> = catalog::owner_rows(
        "tenancy.audit_key",
        "SELECT secret FROM tenancy.audit_key WHERE tenant_id = $1",
        &[to_pg_uuid(tenant).into()],
        |r| Ok(r.get::<Vec<u8>>(1)?.unwrap_or_default()),
    )
    .into_iter()
    .next()
    .filter(|k| k.len() == 32)?;
    let mac = Rc::new(crate::audit::writer::record_mac(&key));
    AUDIT_MACS.with(|k| k.borrow_mut().insert(tenant, mac.clone()));
    Some(mac)
}

/// The MAC that keys `tenant`'s record hashes (HMAC-SHA-256), its secret created on first use:
/// 32 bytes from the server's strong random source, in `tenancy.audit_key`, which only
/// pg_tenancy's owner reads (no operator, key admin or tenant).
pub fn audit_mac(tenant: Uuid) -> Rc<crate::audit::writer::RecordMac> {
    if let Some(k) = existing_audit_mac(tenant) {
        return k;
    }
    let mut secret = [0u8; 32];
    // SAFETY: writes exactly 32 bytes into the buffer.
    if !unsafe { pg_sys::pg_strong_random(secret.as_mut_ptr().cast(), secret.len()) } {
        pgrx::error!("pg_tenancy: the server's strong random source failed");
    }
    catalog::write(
        "INSERT INTO tenancy.audit_key (tenant_id, secret) VALUES ($1, $2) ON CONFLICT (tenant_id) DO NOTHING",
        &[to_pg_uuid(tenant).into(), secret.as_slice().into()],
    );
    created_key(tenant);
    existing_audit_mac(tenant)
        .unwrap_or_else(|| pgrx::error!("pg_tenancy: creating the audit key of {tenant} failed"))
}

/// A record's `row_hash`, for the SQL paths (management records, audit_verify): the fields as
/// stored (jsonb and inet as their text), formatted, joined and keyed by the same Rust code as
/// the trigger's writer ([`writer::record_text`], [`writer::record_hmac`]): one definition of
/// the record hash. NULL when the tenant has no audit key. Not executable by PUBLIC, operators
/// or tenants: it would confirm guesses.
#[allow(clippy::too_many_arguments)]
#[pg_extern(stable, parallel_unsafe, name = "_audit_row_hash")]
fn audit_row_hash(
    id: Option<i64>,
    tenant_id: Option<pgrx::Uuid>,
    occurred_at: Option<pgrx::datum::TimestampWithTimeZone>,
    txid: Option<i64>,
    table_name: Option<&str>,
    op: Option<&str>,
    row_key: Option<&str>,
    old_row: Option<&str>,
    new_row: Option<&str>,
    db_role: Option<&str>,
    subject: Option<&str>,
    application_name: Option<&str>,
    client_addr: Option<&str>,
) -> Option<Vec<u8>> {
    // A record's NOT NULL fields missing (a record audit_verify looks for and does not find):
    // no hash.
    let (id, tenant_id, occurred_at, txid, op, db_role) =
        (id?, tenant_id?, occurred_at?, txid?, op?, db_role?);
    let tenant = catalog::from_pg_uuid(&tenant_id);
    let mac = existing_audit_mac(tenant)?;
    let (id, tenant, at, txid) = (
        id.to_string(),
        tenant.hyphenated().to_string(),
        writer::epoch_text(pg_sys::TimestampTz::from(occurred_at)),
        txid.to_string(),
    );
    let text = writer::record_text(&[
        Some(id.as_bytes()),
        Some(tenant.as_bytes()),
        Some(at.as_bytes()),
        Some(txid.as_bytes()),
        table_name.map(str::as_bytes),
        Some(op.as_bytes()),
        row_key.map(str::as_bytes),
        old_row.map(str::as_bytes),
        new_row.map(str::as_bytes),
        Some(db_role.as_bytes()),
        subject.map(str::as_bytes),
        application_name.map(str::as_bytes),
        client_addr.map(str::as_bytes),
    ]);
    Some(writer::record_hmac(&mac, &text))
}

/// Record a management action.
pub fn admin(action: &str, tenant: Option<Uuid>, detail: serde_json::Value) {
    crate::catalog::refuse_on_a_citus_worker();
    crate::catalog::note_management_lock();
    crate::pg::citus::before_routing_as_another();
    if let Some(t) = tenant.filter(|_| REVOCATIONS.contains(&action)) {
        crate::telemetry::revoked(t);
    }
    let mut detail = detail;
    if let Some(obj) = detail.as_object_mut() {
        obj.insert("action".into(), action.into());
    }
    record("ADMIN", tenant, None, detail);
}

/// Keep the record MACs of audit keys this transaction just created (create_tenants knows
/// their secrets), so that records written next need not read each key back. Forgotten if the
/// transaction (or the subtransaction) rolls back, as any key it created is.
pub fn prime_keys<'a>(keys: impl IntoIterator<Item = (Uuid, &'a [u8])>) {
    for (tenant, secret) in keys {
        AUDIT_MACS.with(|m| {
            m.borrow_mut()
                .insert(tenant, Rc::new(crate::audit::writer::record_mac(secret)))
        });
        created_key(tenant);
    }
}

/// Record the same management action once in each of many tenants' chains, one set-based
/// INSERT (create_tenants): `items` pairs each tenant with its record's detail.
pub fn admin_each(action: &str, items: Vec<(Uuid, serde_json::Value)>) {
    crate::catalog::refuse_on_a_citus_worker();
    crate::catalog::note_management_lock();
    crate::pg::citus::before_routing_as_another();
    if items.is_empty() {
        return;
    }
    let (role, subject) = caller_and_subject();
    let mut tenants = Vec::with_capacity(items.len());
    let mut details = Vec::with_capacity(items.len());
    for (tenant, mut detail) in items {
        audit_mac(tenant);
        if let Some(obj) = detail.as_object_mut() {
            obj.insert("action".into(), action.into());
        }
        tenants.push(to_pg_uuid(tenant));
        details.push(JsonB(detail));
    }
    let context = context();
    let sql = format!(
        "INSERT INTO tenancy.audit_log ({RECORD_COLUMNS}) SELECT s.*, {HASHED} FROM ( \
           SELECT {context}, x.t AS tenant_id, {CONTEXT_TAIL}, NULL::text AS table_name, 'ADMIN'::text AS op, \
                  NULL::jsonb AS row_key, NULL::jsonb AS old_row, x.d AS new_row, $3::text AS db_role, \
                  $4::text AS subject, {SESSION_TAIL} \
             FROM unnest($1::uuid[], $2::jsonb[]) AS x(t, d)) s \
         RETURNING id, tenant_id, row_hash"
    );
    insert_records(
        &sql,
        &[tenants.into(), details.into(), role.into(), subject.into()],
    );
}

/// Record one entry that is not a row change (ADMIN, or a TRUNCATE by an operator).
pub fn record(op: &str, tenant: Option<Uuid>, table: Option<String>, detail: serde_json::Value) {
    let (role, subject) = caller_and_subject();
    audit_mac(tenant.unwrap_or(PLATFORM_CHAIN));
    let context = context();
    let sql = format!(
        "INSERT INTO tenancy.audit_log ({RECORD_COLUMNS}) SELECT s.*, {HASHED} FROM ( \
           SELECT {context}, $1::uuid AS tenant_id, {CONTEXT_TAIL}, $5::text AS table_name, $6::text AS op, \
                  NULL::jsonb AS row_key, NULL::jsonb AS old_row, $2::jsonb AS new_row, $3::text AS db_role, \
                  $4::text AS subject, {SESSION_TAIL}) s \
         RETURNING id, tenant_id, row_hash"
    );
    insert_records(
        &sql,
        &[
            to_pg_uuid(tenant.unwrap_or(PLATFORM_CHAIN)).into(),
            JsonB(detail).into(),
            role.into(),
            subject.into(),
            table.into(),
            op.into(),
        ],
    );
}

/// Record, in each tenant's own chain, a change to protected table `rel`'s rows that no row
/// trigger sees (`action`: truncate, drop_table, drop_column, alter_column_type): one record
/// per tenant with rows in the table itself (not its partitions, which are recorded on their
/// own), with how many (for a column, how many hold a value in it).
///
/// The rows' tenants are read from a plain table only (relkind 'r'; a partitioned table's rows
/// are in its partitions) by `pg::table_scan`, which row security does not confine and which
/// plans nothing: no code of the table's owner runs. Callers check first that the current
/// user owns the table (ddl_command_start runs before PostgreSQL's own check).
pub fn record_rows_changed(rel: pg_sys::Oid, action: &str, column: Option<&str>) {
    // The command locks the table this way anyway (TRUNCATE has already): no transaction
    // is still writing it when it is counted, with a snapshot taken after the lock.
    // SAFETY: a lock held to the end of the transaction.
    unsafe { pg_sys::LockRelationOid(rel, pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE) };
    let Some((table, tenant_column)) = catalog::owner_rows(
        "tenancy.protected_table",
        "SELECT p.relid::text, p.tenant_column::text FROM tenancy.protected_table p \
           JOIN pg_catalog.pg_attribute a ON a.attrelid = p.relid AND a.attname = p.tenant_column \
           JOIN pg_catalog.pg_class c ON c.oid = p.relid \
          WHERE p.relid = $1::oid::regclass AND a.atttypid = 'pg_catalog.uuid'::pg_catalog.regtype \
            AND c.relkind = 'r'",
        &[rel.into()],
        |r| {
            Ok((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
            ))
        },
    )
    .into_iter()
    .next() else {
        return;
    };
    let mut counts: Vec<(Option<Uuid>, i64)> = crate::pg::table_scan::count(
        rel,
        crate::pg::table_scan::Count::ByTenant {
            tenant_column: &tenant_column,
            non_null: column,
        },
    )
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: counting the rows of {table} failed: {e}"))
    .into_iter()
    .collect();
    counts.sort();
    let op = if action == "truncate" {
        "TRUNCATE"
    } else {
        "ADMIN"
    };
    for (tenant, rows) in counts {
        let Some(tenant) = tenant else { continue };
        let mut detail = serde_json::json!({"action": action, "rows": rows});
        if let Some(c) = column {
            detail["column"] = c.into();
        }
        record(op, Some(tenant), Some(table.clone()), detail);
    }
}

/// The relations that hold `rel`'s rows: `rel` and its partitions and inheritance children
/// that are not themselves partitioned, each with whether it is a plain table.
fn leaves(rel: pg_sys::Oid) -> Vec<(pg_sys::Oid, bool)> {
    catalog::owner_rows(
        "pg_inherits",
        "WITH RECURSIVE d(rel) AS (SELECT $1::oid UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN d ON i.inhparent = d.rel) \
         SELECT c.oid, c.relkind = 'r' FROM d JOIN pg_catalog.pg_class c ON c.oid = d.rel WHERE c.relkind <> 'p' ORDER BY 1",
        &[rel.into()],
        |r| {
            Ok((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<bool>(2)?.unwrap_or(false),
            ))
        },
    )
}

/// Whether table `rel` (or any of its partitions or children) holds a row, read with the
/// latest snapshot (the caller has locked `rel`), by `pg::table_scan` (which row security does
/// not confine, and which runs nothing of the table's owner's), and only from plain tables.
/// Anything else that would hold the rows (a foreign table, a view a temporary relation stands
/// in for) counts as holding rows.
pub fn holds_rows(rel: pg_sys::Oid) -> bool {
    leaves(rel).into_iter().any(|(leaf, plain)| {
        !plain
            || crate::pg::table_scan::count(leaf, crate::pg::table_scan::Count::Any)
                .map_or(true, |c| !c.is_empty())
    })
}

/// The first live column of relation `rel` (name, type) whose type reaches one defined in
/// the database (`pg::row_json::reaches_a_defined_type`): `to_jsonb` of its rows could call a cast its
/// type's owner wrote.
pub fn column_of_a_defined_type(rel: pg_sys::Oid) -> Option<(String, String)> {
    let columns: Vec<(String, pg_sys::Oid, String)> = crate::catalog::owner_rows(
        "pg_attribute",
        "SELECT a.attname::text, a.atttypid, pg_catalog.format_type(a.atttypid, NULL) \
           FROM pg_catalog.pg_attribute a \
          WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        &[rel.into()],
        |r| {
            Ok((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<String>(3)?.unwrap_or_default(),
            ))
        },
    );
    columns
        .into_iter()
        // SAFETY: inside the caller's transaction (owner_rows ran SQL in it).
        .find(|(_, typ, _)| unsafe { crate::pg::row_json::reaches_a_defined_type(*typ, 0) })
        .map(|(name, _, shown)| (name, shown))
}

/// Record every row of `table` (and of its partitions) as an INSERT in its tenant's chain, as
/// if the tenant had written it: for tenancy.attach_partition, which has locked `table`.
/// `key_columns` are the protected parent's key, `ancestors` the parent and its own parents
/// (whose audit exclusions apply). Every row's tenant must be an active tenant.
///
/// Two reads, neither running a user's code with more privilege than its owner has: the
/// rows' tenants, by `pg::table_scan`, from plain tables only (as [`holds_rows`]); the rows
/// as jsonb, as the table's owner (`to_jsonb` may call the owner's casts and output
/// functions), which must see as many rows as there are (no row security of its own hiding
/// some). The records are then written as the catalog owner from those values. Returns how
/// many rows were recorded.
pub fn record_joining_rows(
    table: pg_sys::Oid,
    tenant_column: &str,
    key_columns: &[String],
    ancestors: &[pg_sys::Oid],
) -> i64 {
    let name = crate::catalog::relation_name(table);
    let tc = crate::catalog::quote_ident(tenant_column);
    let mut counts: HashMap<Option<Uuid>, i64> = HashMap::new();
    for (leaf, plain) in leaves(table) {
        let leaf_name = crate::catalog::relation_name(leaf);
        if !plain {
            errors::raise(
                errors::NOT_IN_PREREQUISITE_STATE,
                format!("table \"{name}\" cannot be attached: {leaf_name} is not a plain table"),
                "Only plain tables (and partitioned tables of them) can bring rows into a protected table.",
            );
        }
        let leaf_counts = crate::pg::table_scan::count(
            leaf,
            crate::pg::table_scan::Count::ByTenant {
                tenant_column,
                non_null: None,
            },
        )
        .unwrap_or_else(|e| {
            errors::raise(
                errors::NOT_IN_PREREQUISITE_STATE,
                format!("table \"{name}\" cannot be attached: {leaf_name}: {e}"),
                "A table joining a protected table has its tenant column, of type uuid.",
            )
        });
        for (t, n) in leaf_counts {
            *counts.entry(t).or_default() += n;
        }
    }
    let mut excluded: HashMap<Uuid, Vec<String>> = HashMap::new();
    for tenant in counts.keys() {
        let bad = match tenant {
            None => Some("a row has no tenant".to_string()),
            Some(t) => match catalog::tenant_by_id(*t) {
                None => Some(format!("rows name tenant {t}, which does not exist")),
                Some(row) if row.status != "active" => {
                    Some(format!("rows name tenant {t}, which is {}", row.status))
                }
                Some(_) => None,
            },
        };
        if let Some(why) = bad {
            errors::raise(
                errors::NOT_IN_PREREQUISITE_STATE,
                format!("table \"{name}\" cannot be attached: {why}"),
                "Every row must belong to an active tenant; fix or delete those rows first.",
            );
        }
        if let Some(t) = tenant {
            audit_mac(*t);
            let mut cols: Vec<String> = Vec::new();
            for a in ancestors {
                cols.extend(exclusions(*a, *t, None).iter().cloned());
            }
            excluded.insert(*t, cols);
        }
    }
    let expected: i64 = counts.values().sum();
    // The rows become jsonb by SQL (`to_jsonb`), which calls a cast to json of a type defined
    // in the database: its owner's code, run as the table's owner. The audit trigger records
    // such columns as their text instead (`src/pg/row_json.rs`); here they are refused.
    if expected > 0 {
        if let Some((column, typ)) = column_of_a_defined_type(table) {
            errors::raise(
                pgrx::PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!(
                    "table \"{name}\" cannot be attached with its rows: column \"{}\" is of type {}, defined in the database, whose conversion to json could run its owner's code",
                    errors::clean(&column),
                    errors::clean(&typ)
                ),
                "Attach it empty and insert its rows through the protected table (INSERT INTO <parent> SELECT ...), where the audit trigger records them.",
            );
        }
    }
    let key = if key_columns.is_empty() {
        "NULL::jsonb".to_string()
    } else {
        format!(
            "pg_catalog.jsonb_build_object({})",
            key_columns
                .iter()
                .map(|c| format!(
                    "{}, p.{}",
                    crate::catalog::quote_literal(c),
                    crate::catalog::quote_ident(c)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let read = format!("SELECT p.{tc}, {key}, pg_catalog.to_jsonb(p) FROM {name} p");
    let rows: Vec<(Option<pgrx::Uuid>, Option<JsonB>, Option<JsonB>)> =
        catalog::as_table_owner(table, || {
            Spi::connect(|c| {
                let t = c.select(&read, None, &[])?;
                let mut out = Vec::new();
                for r in t {
                    out.push((
                        r.get::<pgrx::Uuid>(1)?,
                        r.get::<JsonB>(2)?,
                        r.get::<JsonB>(3)?,
                    ));
                }
                Ok::<_, pgrx::spi::Error>(out)
            })
        })
        .unwrap_or_else(|e| pgrx::error!("pg_tenancy: reading the rows to attach failed: {e}"));
    if rows.len() as i64 != expected {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!("table \"{name}\" cannot be attached: its owner sees {} of its {expected} rows", rows.len()),
            "Row security of the table's own hides rows from its owner; disable it (ALTER TABLE ... DISABLE ROW LEVEL SECURITY) first.",
        );
    }
    let mut tenants = Vec::with_capacity(rows.len());
    let mut keys = Vec::with_capacity(rows.len());
    let mut news = Vec::with_capacity(rows.len());
    for (t, k, mut new_row) in rows {
        let Some(t) = t else { continue };
        if let (Some(obj), Some(cols)) = (
            new_row.as_mut().and_then(|j| j.0.as_object_mut()),
            excluded.get(&catalog::from_pg_uuid(&t)),
        ) {
            for c in cols {
                obj.remove(c);
            }
        }
        tenants.push(t);
        keys.push(k);
        news.push(new_row);
    }
    let (role, subject) = caller_and_subject();
    let context = context();
    let sql = format!(
        "INSERT INTO tenancy.audit_log ({RECORD_COLUMNS}) SELECT s.*, {HASHED} FROM ( \
           SELECT {context}, r.t AS tenant_id, {CONTEXT_TAIL}, $1::text AS table_name, 'INSERT'::text AS op, \
                  r.k AS row_key, NULL::jsonb AS old_row, r.n AS new_row, \
                  $2::text AS db_role, $3::text AS subject, {SESSION_TAIL} \
             FROM unnest($4::uuid[], $5::jsonb[], $6::jsonb[]) AS r(t, k, n)) s \
         RETURNING id, tenant_id, row_hash"
    );
    let written = catalog::with_owner(|| {
        Spi::connect_mut(|c| {
            returned_records(c.update(
                &sql,
                None,
                &[
                    name.as_str().into(),
                    role.into(),
                    subject.into(),
                    tenants.into(),
                    keys.into(),
                    news.into(),
                ],
            )?)
        })
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: recording the attached rows failed: {e}"));
    let n = written.len() as i64;
    remember(written);
    n
}

/// What the audit trigger needs to know about a table (cached per statement; cheap to read).
struct AuditMeta {
    name: String,
    tenant_column: String,
    key_columns: Vec<String>,
    /// The trail's table in schema tenancy (`audit_log`, or on Citus a shard of it).
    log: std::ffi::CString,
    /// On Citus, the range of tenant hashes the shard holds.
    range: Option<(i32, i32)>,
}

fn audit_meta(rel: pg_sys::Oid) -> AuditMeta {
    if crate::citus::trail::distributed() {
        return citus_audit_meta(rel);
    }
    local_audit_meta(rel)
}

/// On Citus: a shard of a protected table records into the trail's shard beside it; nothing
/// else may record (the trail is read from its shards only).
fn citus_audit_meta(rel: pg_sys::Oid) -> AuditMeta {
    let Some(shard) = crate::citus::trail::shard_of(rel) else {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!(
                "{} has an audit trigger but is no shard of a protected distributed table, and the audit trail is distributed",
                catalog::relation_name(rel)
            ),
            "On Citus, audit tables distributed by their tenant column and colocated with tenancy.audit_log; protect the others with audit => false.",
        )
    };
    let key_columns = catalog::owner_rows(
        "the table's key",
        "SELECT coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord)                    FROM pg_index x CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord)                    JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum                   WHERE x.indrelid = $1 AND x.indisprimary), '{}')",
        &[rel.into()],
        |r| Ok(r.get::<Vec<String>>(1)?.unwrap_or_default()),
    )
    .into_iter()
    .next()
    .unwrap_or_default();
    AuditMeta {
        name: shard.table,
        tenant_column: shard.tenant_column,
        key_columns,
        log: std::ffi::CString::new(shard.log_shard).expect("a relation name"),
        range: Some(shard.range),
    }
}

fn local_audit_meta(rel: pg_sys::Oid) -> AuditMeta {
    catalog::owner_rows(
        "the table's audit settings",
        "SELECT $1::oid::regclass::text, p.tenant_column::text, \
                coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord) \
                   FROM pg_index x CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord) \
                   JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum \
                  WHERE x.indrelid = $1 AND x.indisprimary), '{}') \
           FROM tenancy.protected_table p WHERE p.relid = $1::oid::regclass",
        &[rel.into()],
        |r| {
            Ok(AuditMeta {
                name: r.get::<String>(1)?.unwrap_or_default(),
                tenant_column: r.get::<String>(2)?.unwrap_or_default(),
                key_columns: r.get::<Vec<String>>(3)?.unwrap_or_default(),
                log: c"audit_log".into(),
                range: None,
            })
        },
    )
    .into_iter()
    .next()
    .unwrap_or_else(|| {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!("table with oid {} has an audit trigger but is not protected", u32::from(rel)),
            "Run tenancy.protect() on it again, or drop the tenancy_audit_* triggers.",
        )
    })
}

/// Statement-level AFTER INSERT/UPDATE/DELETE trigger of protected tables (transition tables
/// `tenancy_new` / `tenancy_old`): records every row through `audit_writer`, with the table's
/// audit settings cached per relcache epoch.
#[pg_trigger]
fn _audit<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, pgrx::PgTriggerError> {
    use crate::audit::writer::{self as audit_writer, Op};
    let op = match trigger.op()? {
        pgrx::PgTriggerOperation::Insert => Op::Insert,
        pgrx::PgTriggerOperation::Update => Op::Update,
        pgrx::PgTriggerOperation::Delete => Op::Delete,
        // TRUNCATE is recorded by the truncate guard (tenancy._refuse_truncate), not here.
        pgrx::PgTriggerOperation::Truncate => return Ok(None),
    };
    let rel = trigger.relid()?;
    let epoch = EPOCH.with(|e| e.get());
    let (role, subject) = caller_and_subject();
    let cached = TRIGGER_CACHE.with(|c| {
        c.borrow()
            .get(&u32::from(rel))
            .filter(|(e, _)| *e == epoch)
            .map(|(_, m)| m.clone())
    });
    let meta = cached.unwrap_or_else(|| {
        let meta = Rc::new(audit_meta(rel));
        TRIGGER_CACHE.with(|tc| {
            tc.borrow_mut()
                .insert(u32::from(rel), (epoch, meta.clone()))
        });
        meta
    });
    // On a Citus shard (a hash range known), the table's exclusions kept for every node.
    let citus_table = meta.range.map(|_| meta.name.as_str());
    let exclude = |tenant: Uuid| exclusions(rel, tenant, citus_table);
    let table = audit_writer::Table {
        name: &meta.name,
        log: &meta.log,
        tenant_column: &meta.tenant_column,
        exclude: &exclude,
        key_columns: &meta.key_columns,
    };
    let actor = audit_writer::Actor {
        role: &role,
        subject: subject.as_deref(),
    };
    // SAFETY: a statement-level AFTER trigger created by protect() with the transition
    // tables of its event.
    let rows =
        unsafe { audit_writer::record_statement(trigger.trigger_data(), &table, op, &actor) };
    if let Some(range) = meta.range {
        // On Citus: a row written into a shard whose hash range its tenant is outside of
        // (a client writing a shard directly on a worker) would sit where Citus never looks for
        // the tenant, and its record in a trail shard other than the tenant's chain's.
        if let Some((tenant, _, _)) = rows
            .iter()
            .find(|(t, _, _)| !crate::citus::trail::in_range(*t, range))
        {
            errors::raise(
                errors::INSUFFICIENT_PRIVILEGE,
                format!(
                    "a row of tenant {tenant} does not belong in this shard of {}",
                    meta.name
                ),
                "Write a distributed table through Citus (on the coordinator, or on a worker through the table's name), never into one of its shards.",
            );
        }
    }
    remember(rows);
    Ok(None)
}

/// On Citus, the statement-level AFTER INSERT trigger `link_inserted` of `tenancy.audit_log`'s
/// shards (`src/citus/trail.rs`): the records a statement of SQL inserted here (sent by Citus
/// from the coordinator, which does not link them) are linked when this node's part of the
/// transaction commits or prepares. The writer's own records never fire it (it inserts
/// without the executor's statement triggers) and are linked as on one node. Only the
/// catalog owner and superusers may insert into the trail.
#[pg_trigger]
fn _audit_link_inserted<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, pgrx::PgTriggerError> {
    // Only on the trail (its shards are in schema tenancy, where no one else creates tables):
    // on a table of anyone's choosing it would link rows of their making into a tenant's chain.
    let schema = trigger.table_schema().unwrap_or_default();
    let table = trigger.table_name().unwrap_or_default();
    if schema != "tenancy" || !(table == "audit_log" || table.starts_with("audit_log_")) {
        errors::raise(
            errors::INSUFFICIENT_PRIVILEGE,
            format!("tenancy._audit_link_inserted() fires on pg_tenancy's trail only, not on {schema}.{table}"),
            "It is pg_tenancy's own trigger: tenancy.citus_setup() creates it.",
        );
    }
    let rows = Spi::connect(|c| {
        // SAFETY: inside the SPI connection just made; the trigger's TriggerData, valid for
        // this call, names its transition table (the trigger is created with NEW TABLE AS
        // tenancy_new), which SPI's queries see once registered.
        if unsafe {
            pg_sys::SPI_register_trigger_data(std::ptr::from_ref(trigger.trigger_data()).cast_mut())
        } < 0
        {
            pgrx::error!("pg_tenancy: the records to link cannot be read");
        }
        returned_records(c.select("SELECT id, tenant_id, row_hash FROM tenancy_new", None, &[])?)
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: reading the records to link failed: {e}"));
    remember(rows);
    Ok(None)
}

/// UPDATE, DELETE and TRUNCATE on the trail are refused for everyone; only audit_purge removes
/// records (leaving a checkpoint).
#[pg_trigger]
fn _audit_append_only<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, pgrx::PgTriggerError> {
    // What a BEFORE ROW trigger returns to let the change through: the new row of an UPDATE
    // (the old one would undo it), the old row of a DELETE.
    let pass = || match trigger.op() {
        Ok(pgrx::PgTriggerOperation::Update) => trigger.new(),
        _ => trigger.old(),
    };
    if PURGING.with(|p| p.get()) {
        return Ok(pass());
    }
    // On a Citus worker, a purge carried from the coordinator, for the old row's tenant only.
    let tenant = trigger.old().and_then(|old| {
        old.get_by_name::<pgrx::Uuid>("tenant_id")
            .ok()
            .flatten()
            .map(|u| catalog::from_pg_uuid(&u))
    });
    if tenant.is_some_and(crate::citus::trail::purge_asserted) {
        return Ok(pass());
    }
    let table = trigger.table_name().unwrap_or_default();
    let mut f = serde_json::Map::new();
    f.insert("table".into(), format!("tenancy.{table}").into());
    errors::refuse(
        "audit_tamper_refused",
        f,
        errors::INSUFFICIENT_PRIVILEGE,
        format!(
            "the audit trail is append-only: {} on tenancy.{table} is refused",
            match trigger.op() {
                Ok(pgrx::PgTriggerOperation::Update) => "UPDATE",
                Ok(pgrx::PgTriggerOperation::Delete) => "DELETE",
                Ok(pgrx::PgTriggerOperation::Truncate) => "TRUNCATE",
                _ => "this change",
            }
        ),
        "Records are removed only for retention, by an operator: SELECT tenancy.audit_purge(tenant, before);",
    )
}

/// The tenant whose records the caller may read in tenancy.audit_log: the bound tenant, for
/// its admins; NULL (no rows) otherwise. Never raises.
#[pg_extern(stable, parallel_restricted, name = "_audit_reader_tenant")]
fn audit_reader_tenant() -> Option<pgrx::Uuid> {
    crate::authz::admin_of().map(to_pg_uuid)
}

/// (table, tenant) -> the tenant's generation when read ([`catalog::generation_of`]), and the
/// columns the tenant keeps out of its records of the table.
type ExclusionCache = HashMap<(u32, Uuid), (u64, Rc<Vec<String>>)>;

/// At most this many (table, tenant) exclusions are kept; a full map is emptied.
const EXCLUSIONS_KEPT: usize = 4096;

thread_local! {
    /// The exclusions read, each with its tenant's generation: a change of one tenant's
    /// exclusions is announced as a change of that tenant, and makes this backend read that
    /// tenant's again (it dropped every backend's whole cache: a tenant admin's loop of
    /// audit_exclude slowed every tenant, an attacker's pass).
    static EXCLUSIONS: RefCell<ExclusionCache> = RefCell::new(HashMap::new());
}

/// The columns tenant `tenant` keeps out of its records of table `rel`: its exclusions for the
/// table and for every protected table the table is a partition or child of.
fn exclusions(rel: pg_sys::Oid, tenant: Uuid, citus_table: Option<&str>) -> Rc<Vec<String>> {
    let gen = catalog::generation_of(tenant);
    let key = (u32::from(rel), tenant);
    if let Some(hit) = EXCLUSIONS.with(|e| {
        e.borrow()
            .get(&key)
            .and_then(|(g, c)| (*g == gen).then(|| c.clone()))
    }) {
        return hit;
    }
    let columns: Vec<String> = match citus_table {
        Some(table) => crate::citus::trail::shard_exclusions(table, tenant),
        None => local_exclusions(rel, tenant),
    };
    let columns = Rc::new(columns);
    EXCLUSIONS.with(|e| {
        let mut e = e.borrow_mut();
        if e.len() >= EXCLUSIONS_KEPT {
            e.clear();
        }
        e.insert(key, (gen, columns.clone()));
    });
    columns
}

/// A table's exclusions on one node: its own and its ancestors'.
fn local_exclusions(rel: pg_sys::Oid, tenant: Uuid) -> Vec<String> {
    catalog::owner_rows(
        "tenancy.audit_exclusion",
        "WITH RECURSIVE up(rel) AS (SELECT $1::oid UNION SELECT i.inhparent FROM pg_catalog.pg_inherits i JOIN up ON i.inhrelid = up.rel) \
         SELECT DISTINCT c FROM tenancy.audit_exclusion e CROSS JOIN LATERAL unnest(e.columns) c \
          WHERE e.tenant_id = $2 AND e.relid::oid IN (SELECT rel FROM up) ORDER BY 1",
        &[rel.into(), to_pg_uuid(tenant).into()],
        |r| Ok(r.get::<String>(1)?.unwrap_or_default()),
    )
}

/// The audit exclusions of Citus tables (`tenancy.citus_audit_exclusion`, a reference table)
/// of the tenants the caller manages, for the view `tenancy.audit_exclusions`: read as the
/// catalog owner here, because Citus plans a view over a reference table and a table on one
/// node in parts, each checked as the caller. The same rows as the view's filter lets through.
#[pg_extern(volatile, parallel_unsafe, name = "_citus_audit_exclusions")]
#[allow(clippy::type_complexity)]
fn citus_audit_exclusions() -> TableIterator<
    'static,
    (
        name!(tenant_id, pgrx::Uuid),
        name!(relid, pg_sys::Oid),
        name!(columns, Vec<String>),
        name!(set_at, pgrx::datum::TimestampWithTimeZone),
        name!(set_by, String),
    ),
> {
    let rows = catalog::owner_rows(
        "tenancy.citus_audit_exclusion",
        "SELECT e.tenant_id, e.coordinator_relid, e.columns, e.set_at, e.set_by::text \
           FROM tenancy.citus_audit_exclusion e \
          WHERE EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = e.coordinator_relid) \
          ORDER BY 1, 2",
        &[],
        |r| {
            Ok((
                r.get::<pgrx::Uuid>(1)?.expect("tenant_id"),
                r.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<Vec<String>>(3)?.unwrap_or_default(),
                r.get::<pgrx::datum::TimestampWithTimeZone>(4)?
                    .expect("set_at"),
                r.get::<String>(5)?.unwrap_or_default(),
            ))
        },
    );
    TableIterator::new(
        rows.into_iter()
            .filter(|r| crate::authz::manages_tenant(catalog::from_pg_uuid(&r.0))),
    )
}

/// Keep `columns` of the bound tenant's rows of `tbl` (and of its partitions) out of the
/// tenant's audit records from now on (`old_row` / `new_row`; '{}' records every column
/// again). The tenant's admin's decision: a session bound with the tenant's admin role
/// (not a support binding); recorded in the tenant's own chain. The tenant column and the
/// key's columns are always recorded.
#[pg_extern(volatile, parallel_unsafe)]
fn audit_exclude(tbl: crate::pg::types::Regclass, columns: Vec<Option<String>>) {
    let tbl = tbl.0;
    let columns = errors::names("audit_exclude", columns);
    let tenant = match crate::authz::admin_of() {
        Some(t) => t,
        None => errors::raise(
            errors::INSUFFICIENT_PRIVILEGE,
            "permission denied: audit_exclude is a tenant admin's decision",
            "Bind with a token of the tenant's admin role; what is left out of a tenant's trail is the tenant's to decide, not the platform's.",
        ),
    };
    let table = crate::catalog::relation_name(tbl);
    // On Citus, each node writes its shards' records: the exclusions of a Citus table are kept
    // in a reference table every node reads, by the table's oid on the coordinator.
    let citus = crate::citus::trail::citus_table(tbl);
    if citus && !crate::citus::trail::on_coordinator() {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!("the audit exclusions of Citus table \"{table}\" are set on the coordinator"),
            "Connect to the Citus coordinator and call tenancy.audit_exclude() there.",
        );
    }
    // The columns are named: a rename of the table's columns committed while this call runs
    // (an attacker's pass, as the table's owner, swapped two columns' names in a transaction
    // still open, and the admin's exclusion went to the other column) is waited for. The lock
    // is a reader's, taken only on a protected table (the call refuses any other below); the
    // names are read from the system caches after it, not under a snapshot that may predate it.
    if catalog::protected_relids().is_some_and(|p| p.contains(&u32::from(tbl))) {
        // SAFETY: a lock held to the end of the transaction; it processes the invalidations of
        // whatever committed while it was awaited.
        unsafe { pg_sys::LockRelationOid(tbl, pg_sys::AccessShareLock as pg_sys::LOCKMODE) };
    }
    let meta = catalog::owner_rows(
        "tenancy.protected_table",
        "SELECT p.tenant_column::text, \
                coalesce((SELECT array_agg(k.attnum) FROM pg_index x CROSS JOIN LATERAL unnest(x.indkey) k(attnum) \
                  WHERE x.indrelid = p.relid AND x.indisprimary), '{}') \
           FROM tenancy.protected_table p WHERE p.relid = $1::oid::regclass",
        &[tbl.into()],
        |r| {
            Ok((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<Vec<i16>>(2)?.unwrap_or_default(),
            ))
        },
    );
    let Some((tenant_column, key)) = meta.into_iter().next() else {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!("table \"{table}\" is not protected"),
            "An operator protects it first with tenancy.protect().",
        );
    };
    // SAFETY: syscache lookups of the locked table's columns (InvalidAttrNumber / NULL for a
    // column that does not exist or was dropped); names are copied at once.
    let key: Vec<String> = key
        .into_iter()
        .filter_map(|attnum| unsafe {
            let name = pg_sys::get_attname(tbl, attnum, true);
            (!name.is_null()).then(|| {
                std::ffi::CStr::from_ptr(name)
                    .to_string_lossy()
                    .into_owned()
            })
        })
        .collect();
    if let Some(c) = columns.iter().find(|c| {
        let name = std::ffi::CString::new(c.as_str()).unwrap_or_default();
        // SAFETY: as above.
        (unsafe { pg_sys::get_attnum(tbl, name.as_ptr()) }) <= 0
    }) {
        errors::raise(
            errors::UNDEFINED_COLUMN,
            format!("column \"{c}\" of table \"{table}\" does not exist"),
            "Name columns of the table.",
        );
    }
    if let Some(c) = columns
        .iter()
        .find(|c| **c == tenant_column || key.contains(c))
    {
        errors::raise(
            errors::INVALID_PARAMETER,
            format!("column \"{c}\" of table \"{table}\" cannot be left out of the audit trail"),
            "The tenant column and the primary key's columns identify every record's row; leave out other columns.",
        );
    }
    let mut sorted = columns.clone();
    sorted.sort();
    sorted.dedup();
    let set_by = caller_and_subject()
        .1
        .unwrap_or_else(|| caller_and_subject().0);
    if citus && sorted.is_empty() {
        catalog::write(
            "DELETE FROM tenancy.citus_audit_exclusion WHERE tenant_id = $1 AND coordinator_relid = $2",
            &[to_pg_uuid(tenant).into(), tbl.into()],
        );
    } else if citus {
        // Citus refuses non-IMMUTABLE functions in ON CONFLICT's SET: the values are the
        // inserted row's (its defaults evaluated here).
        catalog::write(
            "INSERT INTO tenancy.citus_audit_exclusion (tenant_id, coordinator_relid, columns, set_by) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant_id, coordinator_relid) DO UPDATE SET columns = EXCLUDED.columns, set_at = EXCLUDED.set_at, set_by = EXCLUDED.set_by",
            &[
                to_pg_uuid(tenant).into(),
                tbl.into(),
                sorted.clone().into(),
                set_by.clone().into(),
            ],
        );
    } else if sorted.is_empty() {
        catalog::write(
            "DELETE FROM tenancy.audit_exclusion WHERE tenant_id = $1 AND relid = $2::oid::regclass",
            &[to_pg_uuid(tenant).into(), tbl.into()],
        );
    } else {
        catalog::write(
            "INSERT INTO tenancy.audit_exclusion (tenant_id, relid, columns, set_by) VALUES ($1, $2::oid::regclass, $3, $4) \
             ON CONFLICT (tenant_id, relid) DO UPDATE SET columns = EXCLUDED.columns, set_at = EXCLUDED.set_at, set_by = EXCLUDED.set_by",
            &[
                to_pg_uuid(tenant).into(),
                tbl.into(),
                sorted.clone().into(),
                set_by.into(),
            ],
        );
    }
    admin(
        "audit_exclude",
        Some(tenant),
        serde_json::json!({"table": table, "columns": sorted}),
    );
}

/// One tenant's verification result.
type VerifyRow = (Option<pgrx::Uuid>, i64, bool, Option<i64>, Option<String>);

fn verify_chain(tenant: Uuid) -> VerifyRow {
    let pending: Vec<i64> = PENDING.with(|p| p.borrow().iter().map(|r| r.id).collect());
    catalog::with_owner(|| {
        Spi::connect(|c| {
            let uuid = to_pg_uuid(tenant);
            // Where each lane's purged prefix ended; a lane without one starts at the genesis.
            let mut checkpoints = HashMap::new();
            for r in c.select(
                "SELECT lane, seq, chain_hash FROM tenancy.audit_checkpoint WHERE tenant_id = $1",
                None,
                &[uuid.into()],
            )? {
                checkpoints.insert(
                    r.get::<i16>(1)?.unwrap_or(0),
                    (r.get::<i64>(2)?.unwrap_or(0), r.get::<Vec<u8>>(3)?.unwrap_or_default()),
                );
            }
            let start = |lane: i16| checkpoints.get(&lane).cloned().unwrap_or((0, GENESIS.to_vec()));
            let mut bad: Option<(i64, String)> = None;
            let note = |id: i64, why: String, bad: &mut Option<(i64, String)>| {
                if bad.as_ref().is_none_or(|(b, _)| id < *b) {
                    *bad = Some((id, why));
                }
            };
            // Every chain entry with its records, lane by lane, in order.
            let rows = c.select(
                "SELECT c.lane, c.seq, c.prev_hash, c.chain_hash, c.batch_hash, r.id, l.id IS NOT NULL, l.row_hash, \
                        tenancy._audit_row_hash(l.id, l.tenant_id, l.occurred_at, l.txid, l.table_name, l.op, \
                            l.row_key::text, l.old_row::text, l.new_row::text, l.db_role, l.subject, \
                            l.application_name, l.client_addr::text) \
                   FROM tenancy.audit_chain c CROSS JOIN LATERAL tenancy._record_ids(c.record_ids) WITH ORDINALITY AS r(id, ord) \
                   LEFT JOIN tenancy.audit_log l ON l.tenant_id = c.tenant_id AND l.id = r.id \
                  WHERE c.tenant_id = $1 ORDER BY c.lane, c.seq, r.ord",
                None,
                &[uuid.into()],
            )?;
            struct Entry {
                lane: i16,
                seq: i64,
                prev: Vec<u8>,
                chain: Vec<u8>,
                batch: Vec<u8>,
                records: Vec<ChainedRecord>,
            }
            let mut entries: Vec<Entry> = Vec::new();
            for r in rows {
                let lane = r.get::<i16>(1)?.unwrap_or(0);
                let eseq = r.get::<i64>(2)?.unwrap_or(0);
                if entries.last().is_none_or(|e| (e.lane, e.seq) != (lane, eseq)) {
                    entries.push(Entry {
                        lane,
                        seq: eseq,
                        prev: r.get::<Vec<u8>>(3)?.unwrap_or_default(),
                        chain: r.get::<Vec<u8>>(4)?.unwrap_or_default(),
                        batch: r.get::<Vec<u8>>(5)?.unwrap_or_default(),
                        records: Vec::new(),
                    });
                }
                entries.last_mut().expect("pushed").records.push((
                    r.get::<i64>(6)?.unwrap_or(0),
                    r.get::<bool>(7)?.unwrap_or(false),
                    r.get::<Vec<u8>>(8)?,
                    r.get::<Vec<u8>>(9)?,
                ));
            }
            let mut chained = std::collections::HashSet::new();
            let mut records = 0i64;
            let (mut lane, (mut seq, mut prev)) = (-1i16, (0i64, Vec::new()));
            for e in &entries {
                if e.lane != lane {
                    lane = e.lane;
                    (seq, prev) = start(lane);
                }
                let first = e.records.first().map(|r| r.0).unwrap_or(0);
                records += e.records.len() as i64;
                let at = || format!("chain entry {} of lane {}", e.seq, e.lane);
                if e.seq != seq + 1 {
                    note(first, format!("{} follows {seq}: entries are missing", at()), &mut bad);
                } else if e.prev != prev || e.chain != chain_hash(&prev, e.seq, &e.batch) {
                    note(first, format!("{} does not link to the one before (changed or reordered)", at()), &mut bad);
                }
                let mut intact = true;
                // A record moved to another tenant is missing here (the trail is read by tenant
                // and id) and, in that tenant's trail, in no chain entry.
                for (id, present, stored, recomputed) in &e.records {
                    chained.insert(*id);
                    if !present {
                        note(*id, format!("record {id} was deleted or moved to another tenant"), &mut bad);
                        intact = false;
                    } else if stored.is_none() || stored != recomputed {
                        note(*id, format!("record {id} was changed"), &mut bad);
                        intact = false;
                    }
                }
                if intact {
                    let b = batch_hash(e.records.iter().map(|r| (r.0, r.2.as_deref().unwrap_or(&[]))));
                    if b != e.batch {
                        note(first, format!("records of {} were rewritten with recomputed hashes", at()), &mut bad);
                    }
                }
                seq = e.seq;
                prev = e.chain.clone();
            }
            // Records of the tenant that no chain entry covers were inserted outside pg_tenancy
            // or moved here from another tenant (purged records are gone from the log with their
            // entries, whatever their ids). Read through the key (tenant_id, id).
            let logged = c.select(
                "SELECT id FROM tenancy.audit_log WHERE tenant_id = $1 AND id <> ALL ($2) ORDER BY id",
                None,
                &[uuid.into(), pending.clone().into()],
            )?;
            for r in logged {
                let id = r.get::<i64>(1)?.unwrap_or(0);
                if !chained.contains(&id) {
                    note(id, format!("record {id} is not in the chain (inserted outside pg_tenancy)"), &mut bad);
                    break;
                }
            }
            Ok::<_, pgrx::spi::Error>((
                Some(uuid),
                records,
                bad.is_none(),
                bad.as_ref().map(|b| b.0),
                bad.map(|b| b.1).or(Some("ok".into())),
            ))
        })
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: audit_verify failed: {e}"))
}

/// The tenants whose trail a call may examine: the one named (operators any; a session bound
/// with the tenant's admin role its own: record counts and heads are the trail's metadata), or,
/// with NULL, every tenant with a record and the platform chain (operators only).
pub(crate) fn trail_tenants(tenant: Option<&str>, action: &str) -> Vec<Uuid> {
    let operator = crate::authz::is_operator(crate::authz::caller());
    match tenant {
        Some(t) => {
            // Refused alike whether or not the tenant exists (authz::tenant_for_manager).
            let row = crate::authz::tenant_for_manager(t, operator, |shown| {
                errors::raise(
                    errors::INSUFFICIENT_PRIVILEGE,
                    format!("permission denied: {action} the audit trail of tenant \"{shown}\""),
                    "Operators may examine any tenant's trail; a session bound with the tenant's admin role only its own tenant's.",
                )
            });
            vec![row.id]
        }
        None => {
            crate::authz::require_operator(&format!("{action} the audit trail of every tenant"));
            catalog::with_owner(|| {
                Spi::connect(|c| {
                    let t = c.select(
                        "SELECT DISTINCT t FROM (SELECT tenant_id FROM tenancy.audit_chain UNION \
                           SELECT tenant_id FROM tenancy.audit_log) x(t) ORDER BY 1",
                        None,
                        &[],
                    )?;
                    let mut out = Vec::new();
                    for r in t {
                        if let Some(u) = r.get::<pgrx::Uuid>(1)? {
                            out.push(catalog::from_pg_uuid(&u));
                        }
                    }
                    Ok::<_, pgrx::spi::Error>(out)
                })
            })
            .unwrap_or_else(|e| {
                pgrx::error!("pg_tenancy: listing the audit trail's tenants failed: {e}")
            })
        }
    }
}

#[allow(clippy::type_complexity)]
/// Verify the hash chain of one tenant (slug or uuid), or of every tenant and the platform
/// chain. Detects changed, deleted, inserted and reordered records, also when a superuser
/// bypassed the append-only guard.
#[pg_extern(volatile, parallel_unsafe)]
fn audit_verify(
    tenant: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(tenant, Option<pgrx::Uuid>),
        name!(records, i64),
        name!(ok, bool),
        name!(first_bad_id, Option<i64>),
        name!(detail, Option<String>),
    ),
> {
    let tenants = trail_tenants(tenant, "verifying");
    let rows: Vec<VerifyRow> = tenants.into_iter().map(verify_chain).collect();
    TableIterator::new(rows)
}

/// Retention: remove a tenant's records older than `before` (a prefix of each of its lanes),
/// leaving a checkpoint per lane so the rest of the chain still verifies. Operators only, and
/// never records younger than `tenancy.audit_min_retention` (a superuser's setting) nor a
/// deletion certificate (a lane's prefix stops before it). What was cut, and where, is recorded
/// in the tenant's own chain. Returns the count.
#[pg_extern(volatile, parallel_unsafe)]
fn audit_purge(tenant: &str, before: pgrx::datum::TimestampWithTimeZone) -> i64 {
    crate::authz::require_operator("audit_purge");
    let t = catalog::require_tenant(tenant);
    let uuid = to_pg_uuid(t.id);
    let purged_by = crate::authz::role_name(crate::pg::unguarded::session_user_id());
    let floor = crate::gucs::AUDIT_MIN_RETENTION.get();
    let too_young = catalog::read_one::<bool>(
        "SELECT $1 > pg_catalog.clock_timestamp() - pg_catalog.make_interval(secs => $2)",
        &[before.into(), (floor as f64).into()],
    )
    .unwrap_or(true);
    if too_young {
        let mut f = serde_json::Map::new();
        f.insert("tenant".into(), t.slug.clone().into());
        errors::refuse(
            "audit_purge_refused",
            f,
            errors::INSUFFICIENT_PRIVILEGE,
            format!(
                "audit records of tenant \"{}\" younger than the retention floor ({} days) cannot be purged",
                t.slug,
                floor / 86_400
            ),
            "Pass a cut-off at least tenancy.audit_min_retention in the past (a superuser's setting), for example now() - interval '1 year'.",
        );
    }
    PURGING.with(|p| p.set(true));
    // On Citus the tenant's trail is in its shards on a worker, whose append-only triggers let
    // the deletions through for an assertion carried from here (signed, for this tenant, a
    // minute at most), adopted there only by the trail's owner, as whom Citus connects (the
    // statements below run as the catalog owner).
    let citus = crate::citus::trail::distributed();
    if citus {
        crate::citus::trail::carry_purge(t.id);
    }
    let purged = catalog::with_owner(|| {
        Spi::connect_mut(|c| {
            // Per lane, the longest prefix whose records are all older than `before`: its last
            // entry (seq, chain_hash, largest record id).
            let cuts = c.update(
                "SELECT DISTINCT ON (c.lane) c.lane, c.seq, c.chain_hash, (SELECT max(x) FROM tenancy._record_ids(c.record_ids) x) \
                   FROM tenancy.audit_chain c \
                  WHERE c.tenant_id = $1 AND c.seq < coalesce((SELECT min(c2.seq) FROM tenancy.audit_chain c2 \
                        WHERE c2.tenant_id = $1 AND c2.lane = c.lane AND EXISTS (SELECT FROM tenancy._record_ids(c2.record_ids) x \
                              LEFT JOIN tenancy.audit_log l ON l.tenant_id = $1 AND l.id = x \
                              WHERE l.occurred_at IS NULL OR l.occurred_at >= $2 \
                                 OR (l.op = 'ADMIN' AND l.new_row->>'action' = 'decommission_tenant'))), \
                        9223372036854775807) \
                  ORDER BY c.lane, c.seq DESC",
                None,
                &[uuid.into(), before.into()],
            )?;
            let mut lanes = Vec::new();
            for r in cuts {
                lanes.push((
                    r.get::<i16>(1)?.unwrap_or(0),
                    r.get::<i64>(2)?.unwrap_or(0),
                    r.get::<Vec<u8>>(3)?.unwrap_or_default(),
                    r.get::<i64>(4)?.unwrap_or(0),
                ));
            }
            let mut n = 0i64;
            let mut cut = Vec::new();
            for (lane, seq, hash, last_id) in lanes {
                cut.push(serde_json::json!({
                    "lane": lane, "seq": seq, "chain_hash": hex::encode(&hash), "last_record_id": last_id,
                }));
                let last_at = c
                    .update(
                        "SELECT max(l.occurred_at) FROM tenancy.audit_chain ch CROSS JOIN LATERAL tenancy._record_ids(ch.record_ids) x \
                           JOIN tenancy.audit_log l ON l.tenant_id = $1 AND l.id = x \
                          WHERE ch.tenant_id = $1 AND ch.lane = $2 AND ch.seq = $3",
                        None,
                        &[uuid.into(), lane.into(), seq.into()],
                    )?
                    .first()
                    .get::<pgrx::datum::TimestampWithTimeZone>(1)?;
                let purged = c
                    .update(
                        "DELETE FROM tenancy.audit_log WHERE tenant_id = $1 AND id IN (SELECT tenancy._record_ids(record_ids) \
                           FROM tenancy.audit_chain WHERE tenant_id = $1 AND lane = $2 AND seq <= $3)",
                        None,
                        &[uuid.into(), lane.into(), seq.into()],
                    )?
                    .len() as i64;
                c.update(
                    "DELETE FROM tenancy.audit_chain WHERE tenant_id = $1 AND lane = $2 AND seq <= $3",
                    None,
                    &[uuid.into(), lane.into(), seq.into()],
                )?;
                c.update(
                    "INSERT INTO tenancy.audit_checkpoint (tenant_id, lane, seq, chain_hash, last_record_id, last_record_at, purged_records, purged_by) \
                     VALUES ($1, $2, $3, $4, $5, $7, $6, $8::name) ON CONFLICT (tenant_id, lane) DO UPDATE SET seq = EXCLUDED.seq, \
                       chain_hash = EXCLUDED.chain_hash, last_record_id = EXCLUDED.last_record_id, \
                       last_record_at = EXCLUDED.last_record_at, \
                       purged_records = tenancy.audit_checkpoint.purged_records + EXCLUDED.purged_records, \
                       purged_at = EXCLUDED.purged_at, purged_by = EXCLUDED.purged_by",
                    None,
                    // Who purged, as a value: on Citus the checkpoint is written on the
                    // tenant's worker, where the column's default (`SESSION_USER`) named the
                    // connection's user (a reviewer's pass).
                    &[uuid.into(), lane.into(), seq.into(), hash.into(), last_id.into(), purged.into(), last_at.into(), purged_by.as_str().into()],
                )?;
                n += purged;
            }
            Ok::<_, pgrx::spi::Error>((n, cut))
        })
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: audit_purge failed: {e}"));
    PURGING.with(|p| p.set(false));
    if citus {
        crate::citus::trail::end_purge();
    }
    let (purged, cut) = purged;
    admin(
        "audit_purge",
        Some(t.id),
        serde_json::json!({
            "before": format!("{before}"),
            "records": purged,
            "min_retention_seconds": floor,
            "cut": cut,
        }),
    );
    purged
}
