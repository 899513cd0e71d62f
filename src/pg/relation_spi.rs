//! A statement on one relation named by its oid, for code that runs it as another role than
//! the caller (a table's owner): the name is read from the oid right before the statement is
//! prepared, and the prepared statement is checked to name that relation and no other before
//! it runs.
//!
//! SQL names a table by schema and name, looked up when the statement is parsed. A name read
//! earlier can mean another table by then: an attacker's pass, as the owner of a schema holding
//! a superuser's protected table, renamed the schema from a trigger of its own table while
//! `decommission_tenant` deleted table after table, put a table of its own under the old name,
//! and had its trigger run as the superuser that owned the next table on the list.
//!
//! Left: a schema renamed by another session between the statement's check and its run, which
//! makes PostgreSQL analyze the prepared statement again by its name (a namespace change resets
//! every cached plan). Nothing runs in that window (the relation is already locked); the attack
//! above needed its own code to run inside pg_tenancy's call.

use pgrx::pg_sys;
use std::ffi::CString;

/// Run `sql`, a statement whose only relation is `relid` (named in it as
/// `crate::catalog::relation_name(relid)` gives it right before, after locking `relid` in
/// `lockmode`), with `args` (type, value) as its parameters, inside an SPI connection; refuse
/// it if the statement as PostgreSQL analyzed it names any other relation. Returns
/// `SPI_processed` and, for a query, its first row's first column as an `i64` (a count).
///
/// # Safety
/// Inside a transaction and an SPI connection (pgrx's `Spi::connect`); `args`' values are valid
/// datums of their types.
pub unsafe fn run_on(
    relid: pg_sys::Oid,
    lockmode: u32,
    build: impl FnOnce(&str) -> String,
    args: &[(pg_sys::Oid, pg_sys::Datum)],
) -> (u64, Option<i64>) {
    // SAFETY: a lock the statement takes anyway, held to the end of the transaction.
    unsafe { pg_sys::LockRelationOid(relid, lockmode as pg_sys::LOCKMODE) };
    // SAFETY: inside a transaction (this function's contract); the relation is locked.
    let sql = build(&unsafe { name_of(relid) });
    let query =
        CString::new(sql).unwrap_or_else(|_| pgrx::error!("pg_tenancy: a NUL in a statement"));
    let mut types: Vec<pg_sys::Oid> = args.iter().map(|a| a.0).collect();
    let mut values: Vec<pg_sys::Datum> = args.iter().map(|a| a.1).collect();
    let nulls: Vec<std::ffi::c_char> = args.iter().map(|_| b' ' as std::ffi::c_char).collect();
    // SAFETY: SPI_prepare parses and analyzes the NUL-terminated statement in the caller's SPI
    // connection (this function's contract) with `types.len()` parameter types, and returns a
    // plan in the connection's memory or NULL (SPI_result says why). Its plan sources are a
    // List of CachedPlanSource, each with its List of analyzed Query nodes, each with its range
    // table, a List of RangeTblEntry: read, not changed. Nothing runs between the check and
    // SPI_execute_plan, which runs the plan with `values.len()` datums and as many ' ' (not
    // null) flags; the tuple table read after it is the one it made (for a query), with one
    // int8 column.
    unsafe {
        let plan = pg_sys::SPI_prepare(query.as_ptr(), types.len() as i32, types.as_mut_ptr());
        if plan.is_null() {
            let result = pg_sys::SPI_result;
            pgrx::error!(
                "pg_tenancy: preparing a statement on {} failed (SPI result {result})",
                u32::from(relid)
            );
        }
        for source in cells(pg_sys::SPI_plan_get_plan_sources(plan)) {
            let source = source as *mut pg_sys::CachedPlanSource;
            for q in cells((*source).query_list) {
                let q = q as *mut pg_sys::Query;
                for rte in cells((*q).rtable) {
                    let rte = rte as *mut pg_sys::RangeTblEntry;
                    if (*rte).rtekind == pg_sys::RTEKind::RTE_RELATION && (*rte).relid != relid {
                        pgrx::pg_sys::panic::ErrorReport::new(
                            pgrx::PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                            format!(
                                "pg_tenancy: the statement on relation {} names relation {}: a schema or table was renamed during the call",
                                u32::from(relid),
                                u32::from((*rte).relid)
                            ),
                            "relation_spi::run_on",
                        )
                        .set_hint("Nothing was changed. Find what renamed it (a table owner's trigger, a concurrent session) and run the call again.")
                        .report(pgrx::PgLogLevel::ERROR);
                        unreachable!();
                    }
                }
            }
        }
        let rc = pg_sys::SPI_execute_plan(plan, values.as_mut_ptr(), nulls.as_ptr(), false, 0);
        if rc < 0 {
            pgrx::error!(
                "pg_tenancy: a statement on {} failed (SPI result {rc})",
                u32::from(relid)
            );
        }
        let processed = pg_sys::SPI_processed;
        let mut first = None;
        let table = pg_sys::SPI_tuptable;
        if rc == pg_sys::SPI_OK_SELECT as i32 && !table.is_null() && processed > 0 {
            let mut isnull = false;
            let d = pg_sys::SPI_getbinval(*(*table).vals, (*table).tupdesc, 1, &mut isnull);
            if !isnull {
                first = Some(d.value() as i64);
            }
        }
        pg_sys::SPI_freeplan(plan);
        (processed, first)
    }
}

/// `relid`'s schema-qualified name, each part quoted by PostgreSQL (`quote_identifier`), read
/// from the system caches now (raises if it does not exist). Inside a transaction, as every
/// caller of pg_tenancy's SQL functions is.
pub fn qualified_name(relid: pg_sys::Oid) -> String {
    // SAFETY: called from SQL functions, inside their transaction.
    unsafe { name_of(relid) }
}

/// [`qualified_name`], or `None` where `relid` names no relation: for messages. Read from the
/// system caches, not by a query on `pg_class`, which Citus filters: on a worker, a shard's
/// name read so was missing from the guard's refusals, which printed its oid.
pub fn qualified_name_if_exists(relid: pg_sys::Oid) -> Option<String> {
    // SAFETY: called from SQL functions and hooks, inside their transaction.
    unsafe { try_name_of(relid) }
}

/// [`qualified_name`].
///
/// # Safety
/// Inside a transaction.
unsafe fn name_of(relid: pg_sys::Oid) -> String {
    // SAFETY: inside a transaction (this function's contract).
    unsafe { try_name_of(relid) }.unwrap_or_else(|| {
        pgrx::error!("pg_tenancy: relation {} no longer exists", u32::from(relid))
    })
}

/// [`qualified_name_if_exists`].
///
/// # Safety
/// Inside a transaction.
unsafe fn try_name_of(relid: pg_sys::Oid) -> Option<String> {
    // SAFETY: syscache lookups by oid (NULL when missing, returned as None); quote_identifier
    // returns its argument or a palloc'd quoted copy, both NUL-terminated and read at once.
    unsafe {
        let rel = pg_sys::get_rel_name(relid);
        if rel.is_null() {
            return None;
        }
        let nsp = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(relid));
        if nsp.is_null() {
            return None;
        }
        let q = |p: *const std::ffi::c_char| {
            std::ffi::CStr::from_ptr(pg_sys::quote_identifier(p))
                .to_string_lossy()
                .into_owned()
        };
        Some(format!("{}.{}", q(nsp), q(rel)))
    }
}

/// The cells of a List of pointers (none for NIL).
///
/// # Safety
/// `list` is NIL or a valid List of pointers.
unsafe fn cells(list: *mut pg_sys::List) -> Vec<*mut std::ffi::c_void> {
    if list.is_null() {
        return Vec::new();
    }
    // SAFETY: a valid List (this function's contract) holds `length` cells whose pointer member
    // is the live one.
    unsafe {
        (0..(*list).length as usize)
            .map(|i| (*(*list).elements.add(i)).ptr_value)
            .collect()
    }
}
