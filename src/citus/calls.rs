//! Citus's own functions that would take a protected table's protection apart, refused before
//! the statement that calls them is planned (`pg::binding_param::set_query_check`).
//!
//! Citus lets a table's owner reshape its table with SQL functions that change the catalog in
//! C, with no DDL command for pg_tenancy's guard to see: `undistribute_table` copies the rows
//! the caller can read (under row security, one tenant's) into a local table and drops the
//! rest; `citus_drop_all_shards` after `master_remove_distributed_table_metadata_from_workers`
//! drops every tenant's shards unrecorded; on a worker, `worker_drop_distributed_table` and
//! `citus_internal`'s metadata functions take a shard out of the metadata through which the
//! guard there knows it, after which the owner changed its row security and read every
//! tenant's rows (an attacker's pass did each of these as a table owner). So, for a protected
//! table:
//! - `undistribute_table`, `alter_distributed_table` and `alter_table_set_access_method` are
//!   refused to everyone (a superuser unprotects first);
//! - `citus_drop_all_shards`, `master_drop_all_shards`,
//!   `master_remove_distributed_table_metadata_from_workers` and
//!   `master_remove_partition_metadata` are refused to a role that is not a superuser outside
//!   a DROP (Citus calls them from its DROP event trigger, where the table is gone already);
//! - `worker_drop_distributed_table` and `worker_drop_shell_table` are refused to a role that
//!   is not a superuser, also in a connection named as Citus's own: Citus trusts that name from
//!   any role, and a table's owner connected to a worker under it took the table's metadata
//!   and copy off the node with the first, and with the copy the shards' policies (a
//!   reviewer's pass; the owner then wrote metadata of its own with `citus_internal`'s
//!   functions to pass the guard's knowledge of the shards by name). So on Citus a protected
//!   table is dropped by a superuser, or by its owner once an operator has unprotected it
//!   (`src/protection/guard.rs` says so on the coordinator before Citus starts); and `citus_internal.delete_shard_metadata`, `delete_placement_metadata`,
//!   `update_placement_metadata` and `delete_partition_metadata` to a role that is not a
//!   superuser (shard moves and splits of a protected table are a superuser's).
//!
//! - `stop_metadata_sync_to_node` is refused to everyone while any Citus table is protected:
//!   it drops the node's shell tables, and with them the policies of every protected table's
//!   shards there (they name their table), and leaves the node without the metadata through
//!   which the guard there knows a shard, after which the table's owner turned a shard's row
//!   security off on that node and read every tenant's rows from it (found trying it);
//! - `citus_activate_node` (`master_activate_node`), `start_metadata_sync_to_node`,
//!   `start_metadata_sync_to_all_nodes` and `citus_add_node` (`master_add_node`) are refused, while a Citus table is protected, with
//!   `citus.metadata_sync_mode` set to `nontransactional`: they then drop the node's shell
//!   tables and its metadata in transactions of their own, committed before the metadata is
//!   written again, and in between the guard there could not tell a shard (a reviewer's pass
//!   polled for that moment as the table's owner and turned a shard's row security off).
//!   Synced in one transaction (the default), the node never shows that moment; the shards'
//!   policies there still go with the shell tables, and those shards serve no rows until the
//!   tables are protected again (verify() lists them).
//!
//! These two are refused in Citus's own connections too (a superuser's
//! `run_command_on_coordinator` opens one): Citus calls neither through SQL itself.
//!
//! A call whose table cannot be told before it runs (an argument that is not a constant) is
//! refused to a role that is not a superuser. Citus's own calls from C are not SQL and are not
//! seen here: only what a statement names.

use crate::{catalog, errors};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// Reshapes a table (first argument a regclass): refused for a protected table.
    Reshape,
    /// Drops a table's shards or metadata (first argument a regclass): only inside a DROP.
    Drop,
    /// Drops a worker's copy of a table (first argument its name): only in Citus's connections.
    WorkerDrop,
    /// Changes Citus's metadata of a shard (first argument a shard id).
    Shard,
    /// ... of a placement (first argument a placement id).
    Placement,
    /// ... of a table (first argument a regclass).
    Partition,
    /// Takes Citus's metadata off a node (no table): refused while a Citus table is protected.
    Node,
    /// Syncs a node's metadata again (no table): refused in the non-transactional mode while a
    /// Citus table is protected.
    Activate,
}

/// By the C function each calls (`prosrc` of a function in C): Citus 13 installs some under
/// two SQL names (`citus_internal.delete_shard_metadata` and
/// `pg_catalog.citus_internal_delete_shard_metadata`), both calling the same C function.
const FUNCTIONS: &[(&str, Kind)] = &[
    ("undistribute_table", Kind::Reshape),
    ("alter_distributed_table", Kind::Reshape),
    ("alter_table_set_access_method", Kind::Reshape),
    ("update_distributed_table_colocation", Kind::Reshape),
    ("citus_drop_all_shards", Kind::Drop),
    ("master_drop_all_shards", Kind::Drop),
    (
        "master_remove_distributed_table_metadata_from_workers",
        Kind::Drop,
    ),
    ("master_remove_partition_metadata", Kind::Drop),
    ("worker_drop_distributed_table", Kind::WorkerDrop),
    ("worker_drop_shell_table", Kind::WorkerDrop),
    ("citus_internal_delete_shard_metadata", Kind::Shard),
    ("citus_internal_update_placement_metadata", Kind::Shard),
    ("citus_internal_delete_placement_metadata", Kind::Placement),
    ("citus_internal_delete_partition_metadata", Kind::Partition),
    ("stop_metadata_sync_to_node", Kind::Node),
    ("citus_activate_node", Kind::Activate),
    ("master_activate_node", Kind::Activate),
    ("start_metadata_sync_to_node", Kind::Activate),
    ("start_metadata_sync_to_all_nodes", Kind::Activate),
    // Adding a node activates it the same way (a node added again may hold a protected
    // table's old shards; a reviewer's pass).
    ("citus_add_node", Kind::Activate),
    ("master_add_node", Kind::Activate),
];

thread_local! {
    /// Functions looked up so far, by OID: which of the above each is (None: none).
    static KINDS: RefCell<HashMap<pg_sys::Oid, Option<(&'static str, Kind)>>> =
        RefCell::new(HashMap::new());
}

/// Which of the functions above `func` is, by the C function it calls (a syscache lookup: no
/// statement runs, which on a worker could give the transaction a distributed id before
/// Citus's own first statement does). Never raises.
fn kind_of(func: pg_sys::Oid) -> Option<(&'static str, Kind)> {
    if u32::from(func) < pg_sys::FirstNormalObjectId {
        return None;
    }
    if let Some(k) = KINDS.with(|k| k.borrow().get(&func).copied()) {
        return k;
    }
    // SAFETY: a syscache lookup of a function by OID (callers run inside a transaction, where
    // functions are looked up). A found tuple is a pg_proc row: its fixed part is read through
    // GETSTRUCT and its prosrc through SysCacheGetAttr (a text datum pointing into the tuple,
    // copied to a Rust string) before ReleaseSysCache.
    let symbol = unsafe {
        let tup = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::PROCOID as std::ffi::c_int,
            pg_sys::Datum::from(func),
        );
        if tup.is_null() {
            return None;
        }
        let form = &*(pg_sys::GETSTRUCT(tup) as *mut pg_sys::FormData_pg_proc);
        let symbol = if form.prolang == pg_sys::Oid::from_u32(13)
        /* ClanguageId */
        {
            let mut isnull = false;
            let d = pg_sys::SysCacheGetAttr(
                pg_sys::SysCacheIdentifier::PROCOID as std::ffi::c_int,
                tup,
                pg_sys::Anum_pg_proc_prosrc as pg_sys::AttrNumber,
                &mut isnull,
            );
            if isnull {
                None
            } else {
                let t = pg_sys::text_to_cstring(d.cast_mut_ptr());
                let s = std::ffi::CStr::from_ptr(t).to_string_lossy().into_owned();
                pg_sys::pfree(t.cast());
                Some(s)
            }
        } else {
            None
        };
        pg_sys::ReleaseSysCache(tup);
        symbol
    };
    let k = symbol.and_then(|sym| {
        FUNCTIONS
            .iter()
            .find(|(name, _)| *name == sym)
            .map(|(name, k)| (*name, *k))
    });
    KINDS.with(|m| {
        let mut m = m.borrow_mut();
        // Bounded: a backend that looks up many functions (temporary ones, say) starts again.
        if m.len() >= 4096 {
            m.clear();
        }
        m.insert(func, k);
    });
    k
}

pub fn init() {
    crate::pg::binding_param::set_query_check(check_query);
    crate::pg::fmgr_gate::set(
        |func| crate::pg::citus::loaded() && kind_of(func).is_some(),
        before_call,
    );
}

/// Whether the checks stand aside now: an extension's script runs, Citus is not in the
/// database, pg_tenancy is not, or this is a superuser's connection Citus opened for its own
/// work. (Asked only once a call of one of the functions above is found: they exist only
/// where Citus does.)
fn stands_aside(kind: Kind) -> bool {
    // SAFETY: creating_extension is this backend's own flag (an extension's script runs).
    let creating = unsafe { pg_sys::creating_extension };
    creating
        || !crate::pg::citus::in_database()
        || (!matches!(kind, Kind::Node | Kind::Activate)
            && crate::pg::citus::catalog_work_stands_aside())
        || !catalog::installed()
}

/// Before each call of one of the functions above, however it is reached (a constraint's
/// expression, an inlined SQL function's body: `pg::fmgr_gate`), with its call expression.
/// A call from C (no expression) is Citus's own.
fn before_call(func: pg_sys::Oid, expr: *mut pg_sys::Node) {
    let Some((name, kind)) = kind_of(func) else {
        return;
    };
    if expr.is_null() || stands_aside(kind) {
        return;
    }
    // SAFETY: a call's fn_expr is its FuncExpr (or another node, read by its tag).
    let arg = unsafe {
        if (*expr).type_ == pg_sys::NodeTag::T_FuncExpr {
            first_constant(expr as *mut pg_sys::FuncExpr)
        } else {
            None
        }
    };
    refuse(name, kind, arg);
}

/// The first argument of call `f`, folded to a constant as the planner would fold it (a
/// literal's implicit cast), when it is one.
///
/// # Safety
/// `f` must be a valid FuncExpr.
unsafe fn first_constant(f: *mut pg_sys::FuncExpr) -> Option<Constant> {
    // SAFETY: `f` is valid (this function's contract); its argument list holds expression
    // nodes; eval_const_expressions returns a new node (or the same) for one.
    unsafe {
        let args = (*f).args;
        if args.is_null() || (*args).length == 0 {
            return None;
        }
        let a = (*(*args).elements).ptr_value as *mut pg_sys::Node;
        // Folded only when it calls nothing but built-in functions: folding runs the
        // IMMUTABLE functions it calls, as the caller, and a function of the caller's could
        // call one of the functions above from inside the check (a reviewer's bypass).
        if pg_sys::expression_tree_walker(a, Some(calls_a_defined_function), std::ptr::null_mut())
            || calls_a_defined_function(a, std::ptr::null_mut())
        {
            return None;
        }
        let folded = pg_sys::eval_const_expressions(std::ptr::null_mut(), a);
        (!folded.is_null() && (*folded).type_ == pg_sys::NodeTag::T_Const)
            .then_some(folded as *mut pg_sys::Const)
            .filter(|c| !(**c).constisnull)
            .map(|c| ((*c).constvalue, (*c).consttype))
    }
}

/// A constant argument: its value and type.
type Constant = (pg_sys::Datum, pg_sys::Oid);

/// The calls of the functions above that a statement makes, each with its first argument
/// folded to a constant where it is one.
struct Found {
    calls: Vec<(&'static str, Kind, Option<Constant>)>,
}

/// Before a query is planned, where Citus is created in the database.
///
/// # Safety
/// `parse` must be a valid Query.
unsafe fn check_query(parse: *mut pg_sys::Query) {
    // Nothing to find where Citus is not loaded (a cached answer): no walk.
    if !crate::pg::citus::loaded() {
        return;
    }
    let mut found = Found { calls: Vec::new() };
    // SAFETY: `parse` is a valid Query (this function's contract); the walker reads it as its
    // tags say and collects into `found`, alive for the walk.
    unsafe {
        walker(parse.cast(), (&mut found as *mut Found).cast());
    }
    for (name, kind, arg) in found.calls {
        if !stands_aside(kind) {
            refuse(name, kind, arg);
        }
    }
}

/// Whether `node`, or an expression under it, calls a function that is not built in (or holds
/// a subquery): true stops the walk.
///
/// # Safety
/// `node` must be null or a node of a valid analyzed expression tree.
#[pg_guard]
unsafe extern "C-unwind" fn calls_a_defined_function(
    node: *mut pg_sys::Node,
    context: *mut c_void,
) -> bool {
    if node.is_null() {
        return false;
    }
    // SAFETY: as this function's contract says; nodes are read as their tags say.
    unsafe {
        if matches!(
            (*node).type_,
            pg_sys::NodeTag::T_SubLink | pg_sys::NodeTag::T_Query
        ) {
            return true;
        }
        if pg_sys::check_functions_in_node(node, Some(defined), context) {
            return true;
        }
        pg_sys::expression_tree_walker(node, Some(calls_a_defined_function), context)
    }
}

/// # Safety
/// Called by check_functions_in_node with a function's OID.
#[pg_guard]
unsafe extern "C-unwind" fn defined(func: pg_sys::Oid, _context: *mut c_void) -> bool {
    u32::from(func) >= pg_sys::FirstNormalObjectId
}

/// The tree walker: every FuncExpr of the query, its subqueries and CTEs.
///
/// # Safety
/// `node` must be null or a node of a valid analyzed query tree, and `context` point at the
/// live [`Found`] of the walk.
#[pg_guard]
unsafe extern "C-unwind" fn walker(node: *mut pg_sys::Node, context: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    // SAFETY: as this function's contract says; nodes are read as their tags say.
    unsafe {
        if (*node).type_ == pg_sys::NodeTag::T_Query {
            return pg_sys::query_tree_walker(node.cast(), Some(walker), context, 0);
        }
        if (*node).type_ == pg_sys::NodeTag::T_FuncExpr {
            let f = node as *mut pg_sys::FuncExpr;
            let found = &mut *(context as *mut Found);
            if let Some((name, kind)) = kind_of((*f).funcid) {
                found.calls.push((name, kind, first_constant(f)));
            }
        }
        pg_sys::expression_tree_walker(node, Some(walker), context)
    }
}

/// The table a call is about, when its argument says (None: none that exists, or not known).
fn table_of(kind: Kind, arg: Constant) -> Option<pg_sys::Oid> {
    let (value, typ) = arg;
    let sql = match (kind, typ) {
        (Kind::Reshape | Kind::Drop | Kind::Partition, pg_sys::REGCLASSOID | pg_sys::OIDOID) => {
            return Some(pg_sys::Oid::from(value.value() as u32));
        }
        (Kind::WorkerDrop, pg_sys::TEXTOID) => {
            "SELECT pg_catalog.to_regclass($1::text)::pg_catalog.oid"
        }
        (Kind::Shard, pg_sys::INT8OID) => {
            "SELECT s.logicalrelid::pg_catalog.oid FROM pg_catalog.pg_dist_shard s WHERE s.shardid = $1::int8"
        }
        (Kind::Placement, pg_sys::INT8OID) => {
            "SELECT s.logicalrelid::pg_catalog.oid FROM pg_catalog.pg_dist_placement pl \
               JOIN pg_catalog.pg_dist_shard s ON s.shardid = pl.shardid WHERE pl.placementid = $1::int8"
        }
        _ => return None,
    };
    let bound: pgrx::datum::DatumWithOid = if typ == pg_sys::TEXTOID {
        // SAFETY: a non-null text Const's value is a text varlena.
        unsafe { String::from_datum(value, false) }
            .unwrap_or_default()
            .into()
    } else {
        (value.value() as i64).into()
    };
    catalog::owner_rows("Citus's metadata", sql, &[bound], |r| {
        r.get::<pg_sys::Oid>(1)
    })
    .into_iter()
    .flatten()
    .next()
}

/// Whether `rel` is a protected table: on the coordinator in `tenancy.protected_table`, on a
/// worker (a Citus table's copy there) in this node's copy of `tenancy.citus_protection`, by
/// name. The records' `coordinator_relid` is an oid of the coordinator's, compared only there:
/// on a worker it may be the oid of an unrelated table of that node.
fn protected(rel: pg_sys::Oid) -> bool {
    catalog::with_owner_reading_locally(|| {
        Spi::connect(|c| {
            let records = super::guard::local_copy(c)?;
            // With a snapshot taken now, not the transaction's (see guard::refuse_drift).
            crate::catalog::fresh_select(
                &format!(
                    "SELECT EXISTS (SELECT FROM tenancy.protected_table p WHERE p.relid::pg_catalog.oid = $1) \
                         OR EXISTS (SELECT FROM {records} q WHERE q.relation = $1::pg_catalog.regclass::text \
                                       OR (pg_catalog.citus_is_coordinator() AND q.coordinator_relid = $1))"
                ),
                Some(1),
                &[rel.into()],
                |r| r.get::<bool>(1),
            )
            .map(|v| v.into_iter().flatten().next())
        })
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: reading whether a table is protected failed: {e}"))
    .unwrap_or(false)
}

/// Whether any protected table is a Citus table (read on the coordinator, where the calls of
/// [`Kind::Node`] and [`Kind::Activate`] run).
fn any_protected_citus_table() -> bool {
    catalog::owner_rows(
        "whether Citus tables are protected",
        "SELECT EXISTS (SELECT FROM tenancy.protected_table p \
                          JOIN pg_catalog.pg_dist_partition d ON d.logicalrelid = p.relid)",
        &[],
        |r| r.get::<bool>(1),
    )
    .into_iter()
    .flatten()
    .next()
    .unwrap_or(false)
}

/// Whether Citus syncs metadata in transactions of its own (`citus.metadata_sync_mode`, read as
/// Citus reads it, whoever the caller: the setting is a superuser's to show).
fn nontransactional_sync() -> bool {
    // SAFETY: GetConfigOption with missing_ok returns NULL for an unknown setting and raises
    // nothing else (restrict_privileged = false); the string is read at once, before anything
    // can change the setting.
    unsafe {
        let v = pg_sys::GetConfigOption(c"citus.metadata_sync_mode".as_ptr(), true, false);
        !v.is_null() && std::ffi::CStr::from_ptr(v).to_bytes() == b"nontransactional"
    }
}

fn refuse(name: &str, kind: Kind, arg: Option<Constant>) {
    if kind == Kind::Node || (kind == Kind::Activate && nontransactional_sync()) {
        if any_protected_citus_table() {
            errors::raise(
                errors::INSUFFICIENT_PRIVILEGE,
                if kind == Kind::Node {
                    format!("Citus's {name}() would drop the policies of protected tables' shards on that node, and leave pg_tenancy's guard there unable to tell a shard")
                } else {
                    format!("Citus's {name}() in the non-transactional metadata sync mode would leave pg_tenancy's guard on that node unable to tell a shard while it runs")
                },
                if kind == Kind::Node {
                    "Keep Citus's metadata on every node while Citus tables are protected. To take a node out of the cluster, move its shards off (SELECT citus_drain_node(...)) and remove it (SELECT citus_remove_node(...))."
                } else {
                    "Sync in one transaction: SET citus.metadata_sync_mode = 'transactional'; then call it again, and protect the Citus tables again afterwards (SELECT tenancy.protect(...)): syncing drops the policies of their shards on that node."
                },
            );
        }
        return;
    }
    // SAFETY: superuser() reads the current user's role through the syscache.
    let superuser = unsafe { pg_sys::superuser() };
    let exempt = match kind {
        Kind::Reshape => false,
        Kind::Drop => {
            superuser
                || crate::pg::hooks::running(&[
                    pg_sys::NodeTag::T_DropStmt,
                    pg_sys::NodeTag::T_DropOwnedStmt,
                ])
        }
        // Citus's DROP TABLE sends these as the table's owner; a protected table is dropped by
        // a superuser (see the module's comment).
        Kind::WorkerDrop => superuser,
        Kind::Shard | Kind::Placement | Kind::Partition => superuser,
        // Answered above.
        Kind::Node | Kind::Activate => true,
    };
    if exempt {
        return;
    }
    let table = arg.and_then(|a| table_of(kind, a));
    let is_protected = table.is_some_and(protected);
    let unknown = arg.is_none();
    let refused = is_protected || (unknown && !superuser);
    if !refused {
        return;
    }
    let shown = table
        .map(catalog::relation_name)
        .map(|t| format!("protected table \"{}\"", errors::clean(&t)))
        .unwrap_or_else(|| "a table it cannot name before it runs".to_string());
    errors::raise(
        errors::INSUFFICIENT_PRIVILEGE,
        format!("Citus's {name}() on {shown} would undo its protection, unrecorded"),
        match kind {
            Kind::Reshape => "An operator unprotects the table first (SELECT tenancy.unprotect(...)); reshape it; then protects it again.",
            Kind::Drop => "Drop the table with DROP TABLE on the coordinator, which records each tenant's rows it removes.",
            Kind::WorkerDrop => "Drop the table on the coordinator: a superuser (a trusted migration role) does, or its owner once an operator has unprotected it (SELECT tenancy.unprotect(...)).",
            _ => "Moving, splitting or removing a protected table's shards is a superuser's work on Citus.",
        },
    );
}
