//! Targeted invalidation: announce that one key of pg_tenancy's catalog (a tenant) changed, so
//! that every backend drops what it cached about that key only, through PostgreSQL's own
//! transactional invalidation messages.
//!
//! PostgreSQL offers extensions relcache invalidations only, and those name a whole table: a
//! change to one tenant's members made every backend drop its whole cache. Catcache
//! invalidations carry a 32-bit hash of the changed row's key instead, and every backend hands
//! that hash to the syscache callbacks registered for the cache. So pg_tenancy announces a key
//! as if a `pg_am` row named `pg_tenancy <key>` had changed: the message is queued in the
//! transaction like any catalog change (sent at commit, dropped at abort, seen by the changing
//! backend itself at its next command), and the callback registered here for `AMNAME`
//! receives its hash. Nothing is written to `pg_am`.
//!
//! Why `pg_am`: its caches (`AMNAME`, `AMOID`) have no other callback in PostgreSQL, so the
//! message costs the other backends nothing but their cache lookups of access methods whose
//! name or oid hashes alike (a cache miss, no more). `pg_namespace`, tried first, is the wrong
//! catalog: an invalidation of `NAMESPACEOID` makes every backend discard all its cached plans
//! and recompute its search path, and a statement that changed many rows re-planned its
//! foreign-key checks for every row (56 us a row, measured). The callback here also receives
//! the hashes of real access method changes, and 0 when a backend's caches are reset (its
//! invalidation queue overflowed): receivers treat 0 as "drop everything", and a collision as
//! a change (a reload, no more). Only the sender's choice of hash matters, so the receivers
//! compute it with the same function, `GetSysCacheHashValue`.

use pgrx::pg_sys;
use std::ffi::CString;

/// The name of the announced (never stored) `pg_am` row for `key`.
fn row_name(key: &str) -> CString {
    // A NUL cannot occur in a tenant's uuid or slug; strip it regardless. Cut to what a
    // `name` holds (NAMEDATALEN - 1 bytes), as the announced row's NameData is: the sender
    // hashes the stored name and the receivers this text, so both must be the same bytes.
    let mut bytes = format!("pg_tenancy {key}").replace('\0', "").into_bytes();
    bytes.truncate(pg_sys::NAMEDATALEN as usize - 1);
    CString::new(bytes).expect("no NUL")
}

/// The hash every backend receives when [`announce`] is called for `key` (never 0 in practice;
/// a 0 would read as "drop everything", which is safe).
pub fn hash_of(key: &str) -> u32 {
    let name = row_name(key);
    // SAFETY: AMNAME is keyed by one `name`; a C string is how its lookups pass it
    // (only NameStr() of it is read, up to the NUL). The syscache is initialised in any
    // backend connected to a database, where pg_tenancy's code runs.
    unsafe {
        pg_sys::GetSysCacheHashValue(
            pg_sys::SysCacheIdentifier::AMNAME as i32,
            pg_sys::Datum::from(name.as_ptr()),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
        )
    }
}

/// Queue, in the current transaction, the invalidation of `key`: at commit every backend's
/// callback registered with [`on_invalidation`] receives [`hash_of`]`(key)`.
pub fn announce(key: &str) {
    let name = row_name(key);
    // SAFETY: inside a transaction (the caller is a trigger). pg_am is opened with
    // AccessShareLock, as any reader does, and closed before returning. The tuple is formed
    // with pg_am's own descriptor: a NameData filled by namestrcpy (which truncates to
    // NAMEDATALEN and NUL-terminates), InvalidOid for oid and handler, 't' for the type; it
    // lives in the current memory context and is only read by CacheInvalidateHeapTuple, which
    // computes the hashes of its keys and queues catcache invalidation messages (pg_am defines
    // no relcache entry, so nothing else happens). The tuple is never written anywhere.
    unsafe {
        let rel = pg_sys::table_open(pg_sys::AccessMethodRelationId, pg_sys::AccessShareLock as _);
        let mut amname: pg_sys::NameData = std::mem::zeroed();
        pg_sys::namestrcpy(&mut amname, name.as_ptr());
        let mut values = [pg_sys::Datum::from(0); pg_sys::Natts_pg_am as usize];
        let mut nulls = [false; pg_sys::Natts_pg_am as usize];
        values[(pg_sys::Anum_pg_am_oid - 1) as usize] = pg_sys::Datum::from(pg_sys::InvalidOid);
        values[(pg_sys::Anum_pg_am_amname - 1) as usize] =
            pg_sys::Datum::from(&mut amname as *mut pg_sys::NameData);
        values[(pg_sys::Anum_pg_am_amhandler - 1) as usize] =
            pg_sys::Datum::from(pg_sys::InvalidOid);
        values[(pg_sys::Anum_pg_am_amtype - 1) as usize] = pg_sys::Datum::from(b't' as i8);
        let tuple = pg_sys::heap_form_tuple((*rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::CacheInvalidateHeapTuple(rel, tuple, std::ptr::null_mut());
        pg_sys::heap_freetuple(tuple);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as _);
    }
}

thread_local! {
    static CALLBACK: std::cell::Cell<Option<fn(u32)>> = const { std::cell::Cell::new(None) };
}

/// Have `f` receive the hash of every announced key (and of every change of an access method, and 0
/// when everything must be dropped), from PostgreSQL's invalidation processing. Once, at
/// _PG_init.
pub fn on_invalidation(f: fn(u32)) {
    CALLBACK.with(|c| c.set(Some(f)));
    // SAFETY: called once from _PG_init; the callback stays valid for the backend's life.
    unsafe {
        pg_sys::CacheRegisterSyscacheCallback(
            pg_sys::SysCacheIdentifier::AMNAME as i32,
            Some(syscache_callback),
            pg_sys::Datum::from(0),
        );
    }
}

/// # Safety
/// Called by PostgreSQL's invalidation processing, as registered by [`on_invalidation`].
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn syscache_callback(_arg: pg_sys::Datum, _cacheid: i32, hash: u32) {
    if let Some(f) = CALLBACK.with(|c| c.get()) {
        f(hash);
    }
}
