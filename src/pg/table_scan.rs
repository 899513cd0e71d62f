//! Reading a user's table across tenants without planning a query on it.
//!
//! pg_tenancy must sometimes see every tenant's rows of a table (what a TRUNCATE, DROP TABLE,
//! DROP COLUMN or ALTER COLUMN TYPE takes from each tenant; whether a table joining a
//! protected parent holds rows and whose; what decommission left behind). Row security
//! confines every role but a superuser, the table's owner too, so that read is the catalog
//! owner's. It used to be SQL (`SELECT tenant, count(*) FROM ONLY t GROUP BY 1`), and SQL is
//! planned: while it plans, PostgreSQL folds the constant parts of the table's index
//! expressions and predicates, of its extended statistics' expressions and (with
//! `constraint_exclusion = on`) of its CHECK constraints, calling any IMMUTABLE function in
//! them, as the current user: the table's owner's code then ran as the catalog owner, a
//! superuser (an attacker's pass made a NOSUPERUSER table owner a superuser that way).
//!
//! Here the rows are read through the table access method's sequential scan, or a B-tree
//! index scan on the tenant column, with no planner and no executor: nothing of the table's
//! definition is looked at but its tenant column, which must be of type uuid, read as 16 bytes
//! and compared in Rust. The access method and a B-tree index of the built-in uuid operator
//! family are PostgreSQL's code or a superuser's (only superusers create access methods or
//! change built-in operator families), never the table owner's.
//!
//! The callers lock the table first as their command will, and the rows are read with a
//! snapshot taken now (every transaction committed before, and this one's earlier commands).

use pgrx::pg_sys;
use std::collections::HashMap;

/// The counts of a table's rows by tenant: `None` for rows whose tenant column is NULL.
pub type Counts = HashMap<Option<uuid::Uuid>, i64>;

/// What to count of a table's rows.
#[derive(Clone, Copy)]
pub enum Count<'a> {
    /// Whether it holds a row at all (the count is 0 or 1).
    Any,
    /// Its rows by tenant; with a column, only the rows that hold a value in that column.
    ByTenant {
        tenant_column: &'a str,
        non_null: Option<&'a str>,
    },
    /// The rows of one tenant.
    OfTenant {
        tenant_column: &'a str,
        tenant: uuid::Uuid,
    },
}

/// Counts the rows of plain table `rel` itself (not its partitions or children: each is read
/// on its own), as the module's documentation says; a table that no longer exists holds none.
/// Errors (the table is not a plain table, a column is missing or the tenant column is not
/// uuid) are returned, not raised.
pub fn count(rel: pg_sys::Oid, what: Count) -> Result<Counts, String> {
    // SAFETY: `rel` is opened, and every pointer read below comes from the open relation, the
    // scan or its slot, all valid until they are closed at the end of this block; a column is
    // read only after slot_getsomeattrs_int has filled it (attnum within the tuple
    // descriptor's natts, checked by attribute()); a uuid Datum points to 16 bytes (a
    // fixed-length pass-by-reference type, never toasted). The snapshot is registered and
    // made active for the scan, and released after it. An ERROR raised inside (by the access
    // method, or at an interrupt) unwinds through the FFI guards, and the transaction's abort
    // releases the relation, the scan, the slot and the snapshot through their resource
    // owners.
    unsafe {
        // A table dropped since the caller listed it (decommission reads every protected
        // table, unlocked until now) holds no rows.
        let r = pg_sys::try_table_open(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        if r.is_null() {
            return Ok(Counts::new());
        }
        let out = count_open(r, what);
        pg_sys::table_close(r, pg_sys::NoLock as pg_sys::LOCKMODE);
        out
    }
}

/// # Safety
/// `r` an open relation.
unsafe fn count_open(r: pg_sys::Relation, what: Count) -> Result<Counts, String> {
    // SAFETY: this function's contract; see count().
    unsafe {
        if (*(*r).rd_rel).relkind as u8 != pg_sys::RELKIND_RELATION || (*r).rd_tableam.is_null() {
            return Err("not a plain table".into());
        }
        let (tenant_att, non_null_att, only) = match what {
            Count::Any => (0, 0, None),
            Count::ByTenant {
                tenant_column,
                non_null,
            } => (
                attribute(r, tenant_column, true)?,
                match non_null {
                    Some(c) => attribute(r, c, false)?,
                    None => 0,
                },
                None,
            ),
            Count::OfTenant {
                tenant_column,
                tenant,
            } => (attribute(r, tenant_column, true)?, 0, Some(tenant)),
        };
        let am = &*(*r).rd_tableam;
        let (Some(begin), Some(next), Some(end)) =
            (am.scan_begin, am.scan_getnextslot, am.scan_end)
        else {
            return Err("its access method cannot scan".into());
        };
        let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
        pg_sys::PushActiveSnapshot(snapshot);
        let slot = pg_sys::table_slot_create(r, std::ptr::null_mut());
        let mut counts = Counts::new();
        let index = only.and_then(|_| tenant_index(r, tenant_att));
        match (index, only) {
            (Some(index), Some(tenant)) => {
                let n = index_count(r, index, snapshot, slot, tenant);
                counts.insert(Some(tenant), n);
            }
            _ => {
                let flags = pg_sys::ScanOptions::SO_TYPE_SEQSCAN
                    | pg_sys::ScanOptions::SO_ALLOW_STRAT
                    | pg_sys::ScanOptions::SO_ALLOW_SYNC
                    | pg_sys::ScanOptions::SO_ALLOW_PAGEMODE;
                let scan = pg_sys::ffi::pg_guard_ffi_boundary(|| {
                    begin(
                        r,
                        snapshot,
                        0,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        flags,
                    )
                });
                while pg_sys::ffi::pg_guard_ffi_boundary(|| {
                    next(scan, pg_sys::ScanDirection::ForwardScanDirection, slot)
                }) {
                    pgrx::check_for_interrupts!();
                    if tenant_att == 0 {
                        counts.insert(None, 1);
                        break;
                    }
                    if non_null_att != 0 && column(slot, non_null_att).is_none() {
                        continue;
                    }
                    let tenant = column(slot, tenant_att).map(|d| uuid_of(d));
                    if only.is_some() && tenant != only {
                        continue;
                    }
                    *counts.entry(tenant).or_default() += 1;
                }
                pg_sys::ffi::pg_guard_ffi_boundary(|| end(scan));
            }
        }
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::PopActiveSnapshot();
        pg_sys::UnregisterSnapshot(snapshot);
        Ok(counts)
    }
}

/// The attribute number of column `name` of `r` (a live column), checked to be uuid when
/// `uuid`.
///
/// # Safety
/// `r` an open relation.
unsafe fn attribute(r: pg_sys::Relation, name: &str, uuid: bool) -> Result<i16, String> {
    let c = std::ffi::CString::new(name).map_err(|_| format!("no column \"{name}\""))?;
    // SAFETY: `r` is open (this function's contract); get_attnum reads the syscache and
    // returns InvalidAttrNumber (0) for a missing or dropped column; the tuple descriptor
    // holds natts attributes, and attnum is checked to be within them before it is read.
    unsafe {
        let attnum = pg_sys::get_attnum((*r).rd_id, c.as_ptr());
        let desc = (*r).rd_att;
        if attnum <= 0 || attnum as i32 > (*desc).natts {
            return Err(format!("no column \"{name}\""));
        }
        let att = (*desc).attrs.as_ptr().add(attnum as usize - 1);
        if (*att).attisdropped || uuid && (*att).atttypid != pg_sys::UUIDOID {
            return Err(format!("column \"{name}\" is not a uuid"));
        }
        Ok(attnum)
    }
}

/// The value of column `attnum` of the tuple in `slot`, None when NULL.
///
/// # Safety
/// `slot` holds a tuple of a relation with at least `attnum` attributes.
unsafe fn column(slot: *mut pg_sys::TupleTableSlot, attnum: i16) -> Option<pg_sys::Datum> {
    // SAFETY: this function's contract; slot_getsomeattrs_int fills tts_values and
    // tts_isnull up to attnum.
    unsafe {
        if ((*slot).tts_nvalid as i32) < attnum as i32 {
            pg_sys::slot_getsomeattrs_int(slot, attnum as i32);
        }
        let i = attnum as usize - 1;
        (!*(*slot).tts_isnull.add(i)).then(|| *(*slot).tts_values.add(i))
    }
}

/// The uuid a non-NULL uuid Datum points to.
///
/// # Safety
/// `d` is a Datum of type uuid.
unsafe fn uuid_of(d: pg_sys::Datum) -> uuid::Uuid {
    // SAFETY: a uuid Datum points to its 16 bytes (this function's contract).
    let bytes = unsafe { *(d.cast_mut_ptr::<[u8; 16]>()) };
    uuid::Uuid::from_bytes(bytes)
}

/// A B-tree index of `r` led by column `attnum` with the built-in uuid operator family, with
/// no predicate, valid and ready: scanning it runs PostgreSQL's uuid comparison only. Opened
/// (the caller closes it), or None.
///
/// # Safety
/// `r` an open relation.
unsafe fn tenant_index(r: pg_sys::Relation, attnum: i16) -> Option<pg_sys::Relation> {
    // SAFETY: `r` is open; RelationGetIndexList returns a palloc'd list of index oids, read
    // within its length and freed; each index is opened before its relcache entry (its
    // pg_index tuple, operator families) is read, and closed unless returned.
    unsafe {
        let opclass = pg_sys::GetDefaultOpClass(pg_sys::UUIDOID, pg_sys::BTREE_AM_OID);
        if opclass == pg_sys::InvalidOid {
            return None;
        }
        let family = pg_sys::get_opclass_family(opclass);
        let list = pg_sys::RelationGetIndexList(r);
        let mut found = None;
        if !list.is_null() {
            for i in 0..(*list).length as usize {
                let oid = (*(*list).elements.add(i)).oid_value;
                let idx = pg_sys::index_open(oid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
                let form = (*idx).rd_index;
                let usable = (*(*idx).rd_rel).relam == pg_sys::BTREE_AM_OID
                    && (*form).indisvalid
                    && (*form).indisready
                    && (*form).indislive
                    && (*form).indnkeyatts >= 1
                    && *(*form).indkey.values.as_ptr() == attnum
                    && *(*idx).rd_opfamily == family
                    && *(*idx).rd_opcintype == pg_sys::UUIDOID
                    && pg_sys::heap_attisnull(
                        (*idx).rd_indextuple,
                        pg_sys::Anum_pg_index_indpred as i32,
                        std::ptr::null_mut(),
                    );
                if usable {
                    found = Some(idx);
                    break;
                }
                pg_sys::index_close(idx, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
            }
            pg_sys::list_free(list);
        }
        found
    }
}

/// The rows of `tenant` in `r`, through `index` (from [`tenant_index`], closed here).
///
/// # Safety
/// `r` open, `index` one of its indexes opened by [`tenant_index`], `snapshot` registered,
/// `slot` a slot of `r`.
unsafe fn index_count(
    r: pg_sys::Relation,
    index: pg_sys::Relation,
    snapshot: pg_sys::Snapshot,
    slot: *mut pg_sys::TupleTableSlot,
    tenant: uuid::Uuid,
) -> i64 {
    let bytes = *tenant.as_bytes();
    // SAFETY: this function's contract; the scan key's argument points to `bytes`, which
    // outlives the scan; the scan is ended and the index closed before returning.
    unsafe {
        let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
        pg_sys::ScanKeyInit(
            &mut key,
            1,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::Oid::from(pg_sys::F_UUID_EQ),
            pg_sys::Datum::from(bytes.as_ptr()),
        );
        let scan = pg_sys::index_beginscan(r, index, snapshot, 1, 0);
        pg_sys::index_rescan(scan, &mut key, 1, std::ptr::null_mut(), 0);
        let mut n = 0i64;
        while pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
            pgrx::check_for_interrupts!();
            n += 1;
        }
        pg_sys::index_endscan(scan);
        pg_sys::index_close(index, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        n
    }
}
