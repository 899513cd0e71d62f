//! The policies' binding, planned as an executor parameter instead of an InitPlan.
//!
//! The generated policies compare the tenant column with
//! `tenancy.allowed_tenant('t'::regclass, 'p')`, stored bare (the rewriter copies a policy's
//! expression into every statement, and a scalar subquery's Query cost a point lookup 5% of its
//! instructions). Planned as written ([`plan_as_written`]), the call becomes the scalar subquery
//! `(SELECT tenancy.allowed_tenant('t'::regclass, 'p'))` again, which PostgreSQL plans and runs
//! as an InitPlan: about 3 µs a statement, most of the gap between a protected point lookup and
//! the application's own `WHERE tenant_id = $1`. (Tables protected before 2026-12-06 stored
//! that subquery; the upgrade rewrites them, and the subquery is recognised as the call.)
//!
//! When `tenancy.plan_binding_as_param` is on (the default), a planner hook replaces exactly that
//! call, where the rewriter put it into the security quals of the statement's relations or
//! into its WITH CHECK options (in FROM, in views, in CTEs and in subqueries of its expressions),
//! with an external parameter whose number is reserved (`$1000000000` and up, one per table and
//! privilege in this backend). An `ExecutorStart` hook gives the statement a copy of its
//! parameter list whose compile hook turns a reserved parameter into a call of
//! [`eval_reserved`], which answers what `allowed_tenant` computes (the bound tenant, or ERROR
//! 42501 / "no tenant bound") and keeps it for the rest of the statement, as the InitPlan did:
//! computed when the statement started where PostgreSQL's permission check computed the same
//! table and privilege there ([`computed_at_start`]), at its first evaluation otherwise. A plan
//! therefore holds no tenant: a prepared statement, the unnamed statement of the extended
//! protocol or a PL/pgSQL plan reused under another binding reads the new binding.
//!
//! A statement planned for one execution only, with `tenancy.plan_binding_as_const` on (the
//! default), gets the bound tenant itself, as a constant, where the binding allows the
//! privilege: PostgreSQL then plans and runs it as it would the application's own
//! `WHERE tenant_id = '...'` (no parameter to estimate, compile or evaluate). One execution
//! only means: the simple protocol's statement planned at the top level (the planner's query
//! text is `debug_query_string` and the process title does not say BIND, the only other
//! caller that plans with that text: a cached plan of the extended protocol), or a custom plan,
//! planned with its parameters' values (PostgreSQL plans a generic plan, the one it caches,
//! without them; a custom plan serves the one execution, or the one portal, it was made for).
//! Everything else, cached plans above all, keeps the reserved parameter. A plan with
//! constants carries a stamp (items in its invalidation list): the tables and privileges it
//! folded and the tenant. When it starts, the tenant is computed again for each of them, as
//! `allowed_tenant` computes it (raising as it raises), and must be the stamped one; otherwise
//! the statement fails (ERROR 42501), and the stamp's invalidation item drops a cached copy so
//! that it is planned again. A plan started keeps its constant, as a parameter keeps its first
//! value: a transaction acts for one tenant (src/binding: no rebinding), a cursor held past its
//! transaction is materialised at commit, tenancy.unbind() refuses while a cursor declared
//! under the binding is open, and FETCH is refused once a transaction's binding has ended.
//!
//! Why this cannot read another tenant's rows, or fail open:
//! - a reserved number is above anything a real parameter list holds (65,535 protocol
//!   parameters, a function's arguments, PL/pgSQL's variables) and above what the parser
//!   accepts in SQL text (`$268435455`), so it is never answered by another value;
//! - where the copy with the compile hook is missing (a parallel worker, any path this hook does
//!   not see), PostgreSQL's own evaluation finds no value for the parameter and raises an error;
//! - the planner hook never leaves a reserved parameter in a parallel plan: when the planner
//!   chose one, the statement is planned again as written (InitPlans run in the leader);
//! - the value is computed by the same function as the policy's (`privileges::allowed_tenant`);
//! - a constant is checked against that value when its statement starts, whoever planned it.

use crate::gucs;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::ffi::{c_int, c_void, CStr};

/// The first reserved parameter number. PostgreSQL numbers external parameters from 1; the
/// protocol allows 65,535, SQL functions 100 arguments, PL/pgSQL one per variable.
pub const RESERVED_BASE: i32 = 1_000_000_000;
/// Distinct (table, privilege) pairs given a number per backend; beyond it, InitPlans as written
/// (the call wrapped in its scalar subquery).
const MAX_RESERVED: usize = 100_000;
/// The privileges the generated policies pass to `allowed_tenant`.
const PRIVILEGES: [&str; 4] = ["select", "insert", "update", "delete"];
/// `ClanguageId` of pg_language.h (the bindings do not carry it).
const C_LANGUAGE_ID: pg_sys::Oid = pg_sys::Oid::from_u32(13);

thread_local! {
    /// Reserved number - RESERVED_BASE -> (table, privilege), for this backend's plans.
    static RESERVED: RefCell<Vec<(pg_sys::Oid, &'static str)>> = const { RefCell::new(Vec::new()) };
    /// (table, privilege) -> its index in RESERVED: found in one step however many tables a
    /// backend has planned (a linear search made planning 100,000 pairs take minutes).
    static RESERVED_INDEX: RefCell<Option<rustc_hash::FxHashMap<(u32, &'static str), usize>>> =
        const { RefCell::new(None) };
    /// How many pairs may be reserved: MAX_RESERVED, lowered by a test of what lies beyond it.
    static RESERVE_CAP: Cell<usize> = const { Cell::new(MAX_RESERVED) };
    /// The oid of `tenancy.allowed_tenant` once checked in the catalog (reset by pg_proc
    /// invalidations, so a re-created extension is checked again).
    static ALLOWED_TENANT: Cell<Option<pg_sys::Oid>> = const { Cell::new(None) };
    /// Set once this backend has planned a reserved parameter: only then are lists wrapped.
    static IN_USE: Cell<bool> = const { Cell::new(false) };
}

/// The stamp of a plan with the binding folded in, as items of its invalidation list: one per
/// folded (table, privilege), whose hash value is its reserved number minus RESERVED_BASE;
/// one for the tenant, whose hash value is its serial in FOLD_TENANTS; one of pg_proc with
/// STAMP_HASH, through which a cached copy is invalidated. PostgreSQL records only pg_proc and
/// pg_type items in plans, and its plan cache looks at no others: pg_am's cache ids are free.
const STAMP_PAIR: c_int = pg_sys::SysCacheIdentifier::AMOID as c_int;
const STAMP_TENANT: c_int = pg_sys::SysCacheIdentifier::AMNAME as c_int;
const STAMP_HASH: u32 = 0x7465_6e61;
/// Tenants folded most recently, by serial.
const FOLD_RING: usize = 16;

/// The tenants folded into plans, by serial: a plan is stamped with its tenant's serial, and
/// a serial no longer here fails the check (a plan outlives its planning by one statement).
struct FoldTenants {
    next: u32,
    ring: [Option<(u32, [u8; 16])>; FOLD_RING],
}

impl FoldTenants {
    fn serial_of(&mut self, tenant: [u8; 16]) -> u32 {
        let last = self.next.wrapping_sub(1);
        if self.ring[last as usize % FOLD_RING] == Some((last, tenant)) {
            return last;
        }
        let serial = self.next;
        self.ring[serial as usize % FOLD_RING] = Some((serial, tenant));
        self.next = serial.wrapping_add(1);
        serial
    }

    fn tenant_of(&self, serial: u32) -> Option<[u8; 16]> {
        self.ring[serial as usize % FOLD_RING]
            .filter(|(s, _)| *s == serial)
            .map(|(_, t)| t)
    }
}

thread_local! {
    static FOLD_TENANTS: RefCell<FoldTenants> =
        const { RefCell::new(FoldTenants { next: 0, ring: [None; FOLD_RING] }) };
    /// Set once this backend has stamped a plan: only then are plans looked at when they start.
    static FOLDED_EVER: Cell<bool> = const { Cell::new(false) };
    /// The bound tenant where the binding allows (table, privilege), or None: the constant a
    /// plan for one execution compares with (src/protection/privileges.rs), set at _PG_init.
    static FOLDED_VALUE: Cell<Option<FoldedValue>> = const { Cell::new(None) };
    /// The (table, privilege) pairs computed in the ExecutorStart running now (the innermost
    /// one), with the tenant each gave: by check_folded, then by PostgreSQL's permission check
    /// (src/protection/privileges.rs), which need not compute a pair check_folded computed; the
    /// reserved parameters compiled after it start with the value (see [`computed_at_start`]).
    static VERIFIED: RefCell<Verified> = const { RefCell::new(Verified::new_const()) };
    /// Whether an ExecutorStart of this hook is running now (the innermost call of it: a query
    /// it starts is inside it too): only then are pairs noted in VERIFIED.
    static STARTING: Cell<bool> = const { Cell::new(false) };
    /// Whether the ExecutorStart running now (the innermost one) only prepares a plan for
    /// EXPLAIN (no ANALYZE): nothing will run, so no binding is asked for.
    static EXPLAIN_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Whether the ExecutorStart running now prepares its plan only to show it (EXPLAIN without
/// ANALYZE): no row is read or written and no expression evaluated, so the permission hook
/// does not ask for a binding (src/protection/privileges.rs).
pub fn explain_only() -> bool {
    EXPLAIN_ONLY.with(|e| e.get())
}

/// Restores the enclosing ExecutorStart's EXPLAIN_ONLY when this one ends (also when it raises).
/// Only the permission check of the start running now and the reserved parameters compiled
/// in it read the flag (each [`Reserved`] keeps the value it was compiled under): a query that
/// a function of the EXPLAIN's pruning runs, or a cursor opened before it and fetched from
/// inside it, is answered as any query is.
struct ExplainOnlyScope(bool);
impl Drop for ExplainOnlyScope {
    fn drop(&mut self) {
        EXPLAIN_ONLY.with(|e| e.set(self.0));
    }
}

/// Ends the window of [`loaded_while_planning`] when the EXPLAIN-only start it was kept open
/// for ends (also when it raises).
struct EndWindowAtEnd;
impl Drop for EndWindowAtEnd {
    fn drop(&mut self) {
        end_window();
    }
}

/// Ends the window of [`loaded_while_planning`], if open: at the next executor start (the
/// statement's own EXPLAIN-only start: when it ends), and at the end of the transaction (a
/// statement that starts no executor, a DO block, keeps no window past its transaction).
/// The plans made in the window were planned without the planner hook, with the policies'
/// bare calls as PostgreSQL found them; a cached one (a prepared statement's generic plan,
/// PL/pgSQL's) would keep them, and an EXPLAIN of it would then raise where the window
/// answered. So every cached plan of this backend is marked invalid when the window ends, and
/// is planned again, with the hook, at its next use (once per session at most).
pub fn end_window() {
    if LOADED_WHILE_PLANNING.with(|l| l.replace(false)) {
        // SAFETY: ResetPlanCache only marks this backend's cached plans and expressions
        // invalid (no catalog access, no allocation, no error), as PostgreSQL's own
        // invalidation processing does at any point of a transaction; a plan being run keeps
        // running (its executor holds it) and is planned again at its next use.
        unsafe { pg_sys::ResetPlanCache() };
    }
}

/// The tenant (`relid`, `privilege`) gave when the ExecutorStart running now computed it, as
/// the reserved parameter computes it (`privileges::allowed_tenant_id`): None when it did not,
/// or outside an ExecutorStart.
///
/// A reserved parameter compiled in that ExecutorStart starts with this value instead of
/// computing it at its first evaluation: the statement acts for the binding in force when it
/// started, as a plan with the tenant folded in does (checked in the same place), and PostgreSQL
/// checks permissions, where the pairs of the statement's tables are computed, before it
/// compiles the plan's expressions.
pub fn computed_at_start(relid: pg_sys::Oid, privilege: &str) -> Option<[u8; 16]> {
    VERIFIED.with(|v| {
        v.borrow()
            .iter()
            .find(|(r, p, _)| *r == relid && *p == privilege)
            .map(|(_, _, t)| *t)
    })
}

/// Notes that (`relid`, `privilege`) gave `tenant` in the ExecutorStart running now, computed
/// as the reserved parameter computes it. Outside an ExecutorStart (a permission check of COPY
/// or of a foreign key's validation), nothing is noted.
pub fn note_computed_at_start(relid: pg_sys::Oid, privilege: &'static str, tenant: [u8; 16]) {
    if STARTING.with(|s| s.get()) {
        VERIFIED.with(|v| v.borrow_mut().push((relid, privilege, tenant)));
    }
}

/// Restores the pairs of the enclosing ExecutorStart, and whether one is running, when this one
/// ends (also when it raises).
struct VerifiedScope(Verified, bool);
impl Drop for VerifiedScope {
    fn drop(&mut self) {
        VERIFIED.with(|v| *v.borrow_mut() = std::mem::take(&mut self.0));
        STARTING.with(|s| s.set(self.1));
    }
}

/// The (table, privilege, tenant) triples an ExecutorStart computed: one or two, kept inline.
type Verified = smallvec::SmallVec<[(pg_sys::Oid, &'static str, [u8; 16]); 2]>;

/// Computes a folded constant: (table, privilege) to the tenant's uuid bytes, or None where
/// the reserved parameter's value would be a refusal.
pub type FoldedValue = fn(pg_sys::Oid, &'static str) -> Option<[u8; 16]>;

/// Set how plans for one execution get their constant.
pub fn set_folded_value(f: FoldedValue) {
    FOLDED_VALUE.with(|v| v.set(Some(f)));
}

/// Checks a top-level call `SELECT f(<constant>, ...)` before it is planned: (function, the
/// first argument's value, its type). Raises to refuse it.
pub type CallCheck = fn(pg_sys::Oid, pg_sys::Datum, pg_sys::Oid);

thread_local! {
    static CALL_CHECK: Cell<Option<CallCheck>> = const { Cell::new(None) };
}

/// Set the check of top-level calls (`src/protection/policy.rs`: distributing a protected table
/// on Citus).
pub fn set_call_check(f: CallCheck) {
    CALL_CHECK.with(|c| c.set(Some(f)));
}

/// A check of every query before it is planned (it may refuse it by raising).
pub type QueryCheck = unsafe fn(*mut pg_sys::Query);

thread_local! {
    static QUERY_CHECK: Cell<Option<QueryCheck>> = const { Cell::new(None) };
}

/// Set the check of every query planned (`src/citus/calls.rs`: Citus's functions that would
/// undo a protected table's protection).
pub fn set_query_check(f: QueryCheck) {
    QUERY_CHECK.with(|c| c.set(Some(f)));
}

/// Give every `SELECT f(<constant>, ...)` with no FROM to the call check.
///
/// # Safety
/// `parse` must be a valid Query.
unsafe fn check_calls(parse: *mut pg_sys::Query) {
    let Some(check) = CALL_CHECK.with(|c| c.get()) else {
        return;
    };
    // SAFETY: the caller's contract: a valid Query, whose target list holds TargetEntry nodes
    // and whose expressions are read as their tags say.
    unsafe {
        if (*parse).commandType != pg_sys::CmdType::CMD_SELECT
            || !(*parse).rtable.is_null()
            || (*parse).targetList.is_null()
        {
            return;
        }
        let tl = (*parse).targetList;
        for i in 0..(*tl).length as usize {
            let te = (*(*tl).elements.add(i)).ptr_value as *mut pg_sys::TargetEntry;
            let expr = (*te).expr as *mut pg_sys::Node;
            if expr.is_null() || (*expr).type_ != pg_sys::NodeTag::T_FuncExpr {
                continue;
            }
            let f = expr as *mut pg_sys::FuncExpr;
            let args = (*f).args;
            if args.is_null() || (*args).length == 0 {
                continue;
            }
            let first = (*(*args).elements).ptr_value as *mut pg_sys::Node;
            if first.is_null() || (*first).type_ != pg_sys::NodeTag::T_Const {
                continue;
            }
            let c = first as *mut pg_sys::Const;
            if !(*c).constisnull {
                check((*f).funcid, (*c).constvalue, (*c).consttype);
            }
        }
    }
}

static mut PREV_PLANNER: pg_sys::planner_hook_type = None;
static mut PREV_EXPLAIN_ONE_QUERY: pg_sys::ExplainOneQuery_hook_type = None;

thread_local! {
    /// Set by the EXPLAIN hook until the first statement with policies is planned: Citus's
    /// EXPLAIN plans the statement it shows with no query text, for that EXPLAIN only.
    static EXPLAINING: Cell<bool> = const { Cell::new(false) };
    /// Set with EXPLAINING when the EXPLAIN runs nothing (no ANALYZE).
    static EXPLAINING_ONLY: Cell<bool> = const { Cell::new(false) };
}
static mut PREV_EXECUTOR_START: pg_sys::ExecutorStart_hook_type = None;

thread_local! {
    /// Set when the library loaded inside a statement, until the next executor start: the
    /// statement was being planned without this hook (the first of a session without the
    /// library preloaded), and PostgreSQL's planner evaluates a policy's bare
    /// `tenancy.allowed_tenant(...)` to estimate its selectivity, which loaded the library.
    static LOADED_WHILE_PLANNING: Cell<bool> = const { Cell::new(false) };
    /// How many answers of `allowed_tenant` inside that window are running now: the queries
    /// they run (pg_tenancy's own catalog reads) start executors inside the planning of the
    /// statement, which must not end its window.
    static IN_WINDOW_ANSWER: Cell<u32> = const { Cell::new(0) };
}

/// Runs `f`, `allowed_tenant`'s answer while the library's loading statement is planned (see
/// [`loaded_while_planning`]): the executors its queries start do not end that window (the
/// planner estimates the policy of every partition of a table, each a call).
pub fn answer_in_window<R>(f: impl FnOnce() -> R) -> R {
    struct Out;
    impl Drop for Out {
        fn drop(&mut self) {
            IN_WINDOW_ANSWER.with(|n| n.set(n.get().saturating_sub(1)));
        }
    }
    IN_WINDOW_ANSWER.with(|n| n.set(n.get() + 1));
    let _out = Out;
    f()
}

/// Whether no executor has started since the library loaded inside a statement: a call of
/// `tenancy.allowed_tenant` now is the planner's estimate, not a row being read (every plan
/// runs through the executor start hook, installed with the library, which clears this).
pub fn loaded_while_planning() -> bool {
    LOADED_WHILE_PLANNING.with(|l| l.get())
}

pub fn init() {
    LOADED_WHILE_PLANNING.with(|l| l.set(super::unguarded::in_transaction()));
    // SAFETY: called once from _PG_init, on the backend's only thread, before any statement is
    // planned or run: the hooks installed before ours are kept (read only by our hooks) and
    // called from ours; our functions and the syscache callback stay valid for the life of the
    // backend (the library is not unloaded).
    unsafe {
        PREV_PLANNER = pg_sys::planner_hook;
        pg_sys::planner_hook = Some(planner);
        PREV_EXECUTOR_START = pg_sys::ExecutorStart_hook;
        pg_sys::ExecutorStart_hook = Some(executor_start);
        // Only over a hook installed before ours (Citus's, which plans with no query text):
        // PostgreSQL 15 exports no standard ExplainOneQuery to call otherwise.
        let prev_explain = pg_sys::ExplainOneQuery_hook;
        if prev_explain.is_some() {
            PREV_EXPLAIN_ONE_QUERY = prev_explain;
            pg_sys::ExplainOneQuery_hook = Some(explain_one_query);
        }
        pg_sys::CacheRegisterSyscacheCallback(
            pg_sys::SysCacheIdentifier::PROCOID as c_int,
            Some(proc_invalidated),
            pg_sys::Datum::from(0),
        );
    }
}

/// The EXPLAIN hook (installed over Citus's): the statement it plans is planned for this
/// EXPLAIN alone (and run once under EXPLAIN ANALYZE), so its first planning with policies
/// may hold the bound tenant as a constant, as the statement itself would under the simple
/// protocol; Citus then routes it as it routes the statement.
///
/// # Safety
/// Called by PostgreSQL as `ExplainOneQuery_hook`, with its arguments.
#[pg_guard]
unsafe extern "C-unwind" fn explain_one_query(
    query: *mut pg_sys::Query,
    cursor_options: c_int,
    into: *mut pg_sys::IntoClause,
    es: *mut pg_sys::ExplainState,
    query_string: *const std::ffi::c_char,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
) {
    struct Done(bool, bool);
    impl Drop for Done {
        fn drop(&mut self) {
            EXPLAINING.with(|e| e.set(self.0));
            EXPLAINING_ONLY.with(|e| e.set(self.1));
        }
    }
    // SAFETY: `es` is the EXPLAIN's valid ExplainState (this hook's contract).
    let analyze = unsafe { (*es).analyze };
    let _done = Done(
        EXPLAINING.with(|e| e.replace(true)),
        EXPLAINING_ONLY.with(|e| e.replace(!analyze)),
    );
    // SAFETY: PREV_EXPLAIN_ONE_QUERY is written once by init (this hook is installed only over
    // one), on the backend's only thread; it is called with PostgreSQL's own arguments through
    // the FFI guard (its errors come back as a Rust panic, re-raised by #[pg_guard]).
    unsafe {
        if let Some(prev) = PREV_EXPLAIN_ONE_QUERY {
            pg_sys::ffi::pg_guard_ffi_boundary(|| {
                prev(
                    query,
                    cursor_options,
                    into,
                    es,
                    query_string,
                    params,
                    query_env,
                )
            })
        }
    }
}

/// Plan with the planner hook installed before ours, or with the standard planner.
///
/// # Safety
/// The arguments must be the planner's, as PostgreSQL passes them to `planner_hook` (a parse
/// tree may be planned only once: the planner scribbles on it).
unsafe fn plan(
    parse: *mut pg_sys::Query,
    query_string: *const std::ffi::c_char,
    cursor_options: c_int,
    bound: pg_sys::ParamListInfo,
) -> *mut pg_sys::PlannedStmt {
    // SAFETY: PREV_PLANNER is written once by init, before any planning, on the backend's
    // only thread; it is copied out here.
    match unsafe { PREV_PLANNER } {
        // SAFETY: the hook installed before ours, with the planner's own arguments, through the
        // FFI guard (its errors come back as a Rust panic, re-raised by #[pg_guard]).
        Some(prev) => unsafe {
            pg_sys::ffi::pg_guard_ffi_boundary(|| prev(parse, query_string, cursor_options, bound))
        },
        // SAFETY: the standard planner with the planner's own arguments (this function's
        // contract); pgrx's binding guards the call.
        None => unsafe { pg_sys::standard_planner(parse, query_string, cursor_options, bound) },
    }
}

/// Plan the statement as written: each policy's bare `tenancy.allowed_tenant(table,
/// privilege)` becomes the scalar subquery `(SELECT tenancy.allowed_tenant(table, privilege))`,
/// planned as one InitPlan, evaluated once per statement (in the leader of a parallel plan),
/// never per row and never while planning, as PostgreSQL would have planned the policy
/// written with the subquery. The policies are stored bare because the rewriter copies and
/// compares a policy's expression into every statement: a subquery is a whole Query to copy,
/// about 5% of a point lookup's instructions (`src/pg/README.md`). Where Citus is created the
/// calls stay bare: Citus refuses subqueries in the policies of its tables, and evaluates the
/// call on each node.
///
/// # Safety
/// As [`plan`], with `parse` not null.
unsafe fn plan_as_written(
    parse: *mut pg_sys::Query,
    query_string: *const std::ffi::c_char,
    cursor_options: c_int,
    bound: pg_sys::ParamListInfo,
) -> *mut pg_sys::PlannedStmt {
    if !super::citus::in_database() {
        let mut r = Replace::as_written();
        // SAFETY: `parse` is the planner's valid Query (this function's contract), changed in
        // place before it is planned: nothing else reads it.
        unsafe { visit_query(parse, Some(&mut r)) };
    }
    // SAFETY: this function's contract.
    unsafe { plan(parse, query_string, cursor_options, bound) }
}

/// `(SELECT <call>)`: a scalar subquery over `call`, as the parser makes one for the text
/// (an EXPR_SUBLINK whose Query selects the one expression from no relation).
///
/// # Safety
/// `call` must be a valid expression node of a parse tree; on the backend's thread, while
/// planning; the nodes are palloc'd in the current memory context.
unsafe fn scalar_subquery(call: *mut pg_sys::Node) -> *mut pg_sys::Node {
    // SAFETY: palloc0 returns zeroed memory of each node's size (or raises), filled as
    // makeNode and the parser's transformation of `SELECT <call>` would fill it; makeFromExpr,
    // makeTargetEntry and list_make1 allocate in the same context. The TargetEntry's name is a
    // palloc'd copy of a NUL-terminated literal.
    unsafe {
        let q = pg_sys::palloc0(std::mem::size_of::<pg_sys::Query>()) as *mut pg_sys::Query;
        (*q).type_ = pg_sys::NodeTag::T_Query;
        (*q).commandType = pg_sys::CmdType::CMD_SELECT;
        (*q).querySource = pg_sys::QuerySource::QSRC_ORIGINAL;
        (*q).canSetTag = true;
        (*q).jointree = pg_sys::makeFromExpr(std::ptr::null_mut(), std::ptr::null_mut());
        let tle = pg_sys::makeTargetEntry(
            call as *mut pg_sys::Expr,
            1,
            pg_sys::pstrdup(c"allowed_tenant".as_ptr()),
            false,
        );
        (*q).targetList = pg_sys::list_make1_impl(
            pg_sys::NodeTag::T_List,
            pg_sys::ListCell {
                ptr_value: tle as *mut c_void,
            },
        );
        (*q).stmt_location = -1;
        let sl = pg_sys::palloc0(std::mem::size_of::<pg_sys::SubLink>()) as *mut pg_sys::SubLink;
        (*sl).xpr.type_ = pg_sys::NodeTag::T_SubLink;
        (*sl).subLinkType = pg_sys::SubLinkType::EXPR_SUBLINK;
        (*sl).subLinkId = 0;
        (*sl).testexpr = std::ptr::null_mut();
        (*sl).operName = std::ptr::null_mut();
        (*sl).subselect = q as *mut pg_sys::Node;
        (*sl).location = -1;
        sl as *mut pg_sys::Node
    }
}

/// Whether the planner may choose a parallel plan for this statement (then the statement is
/// kept as written, to be planned again if it does). A superset of standard_planner's own
/// condition for `parallelModeOK` in PostgreSQL 15.
///
/// # Safety
/// `parse` must point at a valid Query.
unsafe fn parallel_possible(parse: *mut pg_sys::Query, cursor_options: c_int) -> bool {
    // SAFETY: `parse` is a valid Query (this function's contract); the two settings are this
    // backend's GUC variables, read on its only thread.
    unsafe {
        (cursor_options & pg_sys::CURSOR_OPT_PARALLEL_OK as c_int) != 0
            && (*parse).commandType == pg_sys::CmdType::CMD_SELECT
            && (pg_sys::max_parallel_workers_per_gather > 0 || pg_sys::force_parallel_mode != 0)
    }
}

/// The planner hook: the policy subqueries of the statement become reserved parameters.
///
/// # Safety
/// Called by PostgreSQL as `planner_hook`, with the planner's arguments.
#[pg_guard]
unsafe extern "C-unwind" fn planner(
    parse: *mut pg_sys::Query,
    query_string: *const std::ffi::c_char,
    cursor_options: c_int,
    bound: pg_sys::ParamListInfo,
) -> *mut pg_sys::PlannedStmt {
    super::citus::note_connection_name();
    if !parse.is_null() {
        // SAFETY: the planner's Query (this function's contract).
        unsafe { check_calls(parse) };
        if let Some(check) = QUERY_CHECK.with(|c| c.get()) {
            // SAFETY: as above.
            unsafe { check(parse) };
        }
    }
    // The resource limits hold while the statement is planned too: the planner runs the
    // IMMUTABLE calls it folds, which a session that set statement_timeout = 0 would otherwise
    // run with no timer (an attacker's pass folded 12 s of hashing under a 1 s ceiling).
    // SAFETY: ParallelWorkerNumber is this process's own variable, read on its only thread.
    if unsafe { pg_sys::ParallelWorkerNumber } < 0
        && !super::unguarded::in_parallel_mode()
        && !IN_HOOK.with(|h| h.replace(true))
    {
        let _done = HookDone;
        for i in 0..PLAN_START.with(|q| q.borrow().len()) {
            PLAN_START.with(|q| q.borrow()[i])();
        }
    }
    // SAFETY: ParallelWorkerNumber is this process's own variable, read on its only thread.
    if unsafe { pg_sys::ParallelWorkerNumber } >= 0 || parse.is_null() {
        // SAFETY: the planner's own arguments (this function's contract), planned once.
        return unsafe { plan(parse, query_string, cursor_options, bound) };
    }
    if !gucs::flag(&gucs::PLAN_BINDING_AS_PARAM) {
        // SAFETY: the planner's own arguments (this function's contract), not null (checked
        // above); the policies' calls wrapped as written, planned once.
        return unsafe { plan_as_written(parse, query_string, cursor_options, bound) };
    }
    // Only a plan for one execution may hold the tenant (see the module's comment).
    let explaining = EXPLAINING.with(|e| e.get()) && query_string.is_null();
    let fold = gucs::flag(&gucs::PLAN_BINDING_AS_CONST)
        // SAFETY: `query_string` is the planner's (null or a NUL-terminated string).
        && (!bound.is_null() || explaining || unsafe { simple_query_at_top_level(query_string) });
    // The planner scribbles on its input: keep the statement as written while a parallel plan
    // with a reserved parameter is possible.
    let mut original = std::ptr::null_mut();
    // SAFETY: `parse` is the planner's Query (this function's contract), not null (checked
    // above): a valid parse tree. Without a Replace visit_query only reads it; copyObjectImpl
    // copies it deeply into the current memory context (the planner caller's, alive for the
    // planning). Each return plans the untouched tree once.
    unsafe {
        if parallel_possible(parse, cursor_options) {
            if !visit_query(parse, None) {
                return plan(parse, query_string, cursor_options, bound);
            }
            original = pg_sys::copyObjectImpl(parse as *const c_void) as *mut pg_sys::Query;
        }
    }
    let mut r = Replace {
        fold,
        tenant: None,
        folded: smallvec::SmallVec::new(),
        params: false,
        // A Citus worker plans its shard queries itself (shards are plain tables to it): there
        // the parameter stays on that node.
        params_allowed: !super::citus::in_database() || super::citus::internal_backend(),
        explain_only: explaining && EXPLAINING_ONLY.with(|e| e.get()),
        wrap: false,
        wrap_leftovers: !super::citus::in_database(),
        wrapped: 0,
    };
    // SAFETY: as above; the policy subqueries are replaced in place by Params or Consts
    // palloc'd in the current memory context, and the tree, untouched otherwise, is planned.
    if !unsafe { visit_query(parse, Some(&mut r)) } {
        // SAFETY: visit_query found nothing, so it replaced nothing: the tree as written,
        // planned once.
        return unsafe { plan(parse, query_string, cursor_options, bound) };
    }
    if explaining {
        // Only the statement EXPLAIN shows: what it runs under EXPLAIN ANALYZE is planned as
        // usual.
        EXPLAINING.with(|e| e.set(false));
    }
    if r.params {
        IN_USE.with(|u| u.set(true));
    }
    // SAFETY: the planner's arguments, the tree with its reserved parameters or constants,
    // planned once; the planner returns a valid, non-null PlannedStmt (or raises).
    let stmt = unsafe { plan(parse, query_string, cursor_options, bound) };
    // A parallel worker can read a constant, not a reserved parameter.
    // SAFETY: `stmt` is the planner's result (above).
    if r.params && unsafe { (*stmt).parallelModeNeeded } {
        if original.is_null() {
            // parallel_possible() covers every statement PostgreSQL 15 may plan in parallel;
            // should that ever change, fail rather than hand workers a parameter they lack.
            error!("pg_tenancy: a parallel plan for a statement not expected to have one");
        }
        // SAFETY: `original` is the copy of the tree as written (not null, checked above),
        // never planned before, with the planner's other arguments.
        return unsafe { plan_as_written(original, query_string, cursor_options, bound) };
    }
    // Citus's plans carry no reserved parameter: its executor sends the statement's text to the
    // workers with no value for it (and crashed the node on one, found by an attacker's pass in
    // a connection a client had named as Citus's). Only Citus's own connections place one, for
    // the shard queries they plan as plain tables.
    // SAFETY: `stmt` is the planner's result (above).
    if r.params && super::citus::in_database() && unsafe { planned_by_citus(stmt) } {
        if !original.is_null() {
            // SAFETY: as for the parallel plan above.
            return unsafe { plan(original, query_string, cursor_options, bound) };
        }
        pg_sys::panic::ErrorReport::new(
            pgrx::PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "pg_tenancy: a statement Citus distributes cannot be planned in this connection: it is named as one of Citus's own (application_name citus_internal ...)",
            "binding_param::planner",
        )
        .set_hint("Connect under another application_name: names beginning citus_internal are Citus's own connections.")
        .report(pgrx::PgLogLevel::ERROR);
        unreachable!();
    }
    if let Some(tenant) = r.tenant {
        let serial = FOLD_TENANTS.with(|f| f.borrow_mut().serial_of(tenant));
        // SAFETY: `stmt` is the planner's valid PlannedStmt, whose invalidation list is null or
        // a List of PlanInvalItem nodes; the items are palloc'd in the current memory context,
        // the one the planner made the statement in (a plan cache copies them with it).
        unsafe { stamp(stmt, &r.folded, serial) };
        FOLDED_EVER.with(|f| f.set(true));
    }
    stmt
}

/// Whether Citus planned the statement: one of its custom scans is anywhere in the plan.
///
/// # Safety
/// `stmt` must be a valid PlannedStmt the planner returned.
unsafe fn planned_by_citus(stmt: *mut pg_sys::PlannedStmt) -> bool {
    /// # Safety
    /// `p` null or a valid plan node.
    unsafe fn walk(p: *mut pg_sys::Plan) -> bool {
        if p.is_null() {
            return false;
        }
        // SAFETY: each node is read as its tag says; child lists hold plan nodes, the custom
        // scan's methods a static table with a NUL-terminated name.
        unsafe {
            let children: *mut pg_sys::List = match (*p).type_ {
                pg_sys::NodeTag::T_CustomScan => {
                    let m = (*(p as *mut pg_sys::CustomScan)).methods;
                    if !m.is_null()
                        && !(*m).CustomName.is_null()
                        && CStr::from_ptr((*m).CustomName)
                            .to_bytes()
                            .starts_with(b"Citus")
                    {
                        return true;
                    }
                    (*(p as *mut pg_sys::CustomScan)).custom_plans
                }
                pg_sys::NodeTag::T_Append => (*(p as *mut pg_sys::Append)).appendplans,
                pg_sys::NodeTag::T_MergeAppend => (*(p as *mut pg_sys::MergeAppend)).mergeplans,
                pg_sys::NodeTag::T_BitmapAnd => (*(p as *mut pg_sys::BitmapAnd)).bitmapplans,
                pg_sys::NodeTag::T_BitmapOr => (*(p as *mut pg_sys::BitmapOr)).bitmapplans,
                pg_sys::NodeTag::T_SubqueryScan => {
                    return walk((*(p as *mut pg_sys::SubqueryScan)).subplan)
                        || walk((*p).lefttree)
                        || walk((*p).righttree);
                }
                _ => std::ptr::null_mut(),
            };
            let mut found = false;
            for_each_cell(children, |c| found = found || walk(*c as *mut pg_sys::Plan));
            found || walk((*p).lefttree) || walk((*p).righttree)
        }
    }
    // SAFETY: the planner's result: its tree and its subplans (a List of plan nodes, or null
    // entries for subplans it removed).
    unsafe {
        let mut found = walk((*stmt).planTree);
        for_each_cell((*stmt).subplans, |c| {
            found = found || walk(*c as *mut pg_sys::Plan)
        });
        found
    }
}

/// Whether the planner was called by the simple protocol for a statement of the client's
/// query string (or a utility command planning its query there: EXPLAIN, DECLARE, CREATE
/// TABLE AS, COPY), planned for that one execution. The only other caller planning with
/// `debug_query_string` as its text is the extended protocol's Bind, which may cache its plan
/// and sets the process title to BIND first. Without process titles, never.
///
/// # Safety
/// `query_string` must be null or the planner's query text.
unsafe fn simple_query_at_top_level(query_string: *const std::ffi::c_char) -> bool {
    // SAFETY: debug_query_string and update_process_title are this backend's variables, read
    // on its only thread; get_ps_display returns the title's buffer (or an empty string) and
    // its length, read within that length.
    unsafe {
        if query_string.is_null()
            || !std::ptr::eq(query_string, pg_sys::debug_query_string)
            || !pg_sys::update_process_title
        {
            return false;
        }
        let mut len: c_int = 0;
        let title = pg_sys::get_ps_display(&mut len);
        !(len == 4
            && !title.is_null()
            && std::slice::from_raw_parts(title as *const u8, 4) == b"BIND")
    }
}

/// What the replacing visit puts where a policy subquery was, and what it put there.
struct Replace {
    /// Whether the plan serves one execution, so that the bound tenant may be a constant.
    fold: bool,
    /// The tenant folded in (one binding: the same for every table of the statement).
    tenant: Option<[u8; 16]>,
    /// The reserved numbers of the (table, privilege) pairs folded.
    folded: smallvec::SmallVec<[i32; 4]>,
    /// Whether a reserved parameter was placed.
    params: bool,
    /// Whether reserved parameters may be placed: not where Citus plans the statement (it
    /// would send `$1000000000` to the workers in the shard queries' text, with no value).
    params_allowed: bool,
    /// Whether the plan is only shown (EXPLAIN without ANALYZE, where Citus plans it): without
    /// a binding, the tenant is NULL there, as a reserved parameter is on one node, rather than
    /// the policy's call, which Citus would evaluate while planning and which would refuse.
    explain_only: bool,
    /// Whether a policy's bare call left in place becomes the scalar subquery
    /// `(SELECT tenancy.allowed_tenant(...))`, one InitPlan per statement (see [`as_written`]).
    wrap: bool,
    /// Whether a bare call neither folded nor made a parameter is wrapped so (not where Citus
    /// is created: see [`plan_as_written`]).
    wrap_leftovers: bool,
    /// How many calls were wrapped so (the Query holding them must say it has sublinks).
    wrapped: usize,
}

impl Replace {
    /// A visit that only wraps the policies' bare calls: the statement planned as written.
    fn as_written() -> Replace {
        Replace {
            fold: false,
            tenant: None,
            folded: smallvec::SmallVec::new(),
            params: false,
            params_allowed: false,
            explain_only: false,
            wrap: true,
            wrap_leftovers: true,
            wrapped: 0,
        }
    }
}

impl Replace {
    /// The operand that replaces the policy subquery of (`relid`, `privilege`), numbered `id`:
    /// the bound tenant as a constant where allowed and folding, the reserved parameter else,
    /// or nothing (the policy stays as written) where parameters are not allowed.
    ///
    /// # Safety
    /// Inside a transaction, while planning: the value may read the catalog; the node is
    /// palloc'd in the current memory context.
    unsafe fn operand(
        &mut self,
        id: i32,
        relid: pg_sys::Oid,
        privilege: &'static str,
    ) -> Option<*mut c_void> {
        if self.fold {
            let value = FOLDED_VALUE
                .with(|v| v.get())
                .and_then(|f| f(relid, privilege));
            if let Some(tenant) = value {
                if self.tenant.is_none_or(|t| t == tenant) {
                    self.tenant = Some(tenant);
                    self.folded.push(id);
                    // SAFETY: this function's contract.
                    return Some(unsafe { tenant_const(&tenant) } as *mut c_void);
                }
            }
        }
        if self.explain_only {
            // SAFETY: this function's contract.
            return Some(unsafe { null_tenant_const() } as *mut c_void);
        }
        if !self.params_allowed {
            return None;
        }
        self.params = true;
        // SAFETY: this function's contract.
        Some(unsafe { reserved_param(id) as *mut c_void })
    }
}

/// A uuid Const holding `tenant`, as the parser makes one for a uuid literal.
///
/// # Safety
/// On the backend's thread; palloc'd in the current memory context.
unsafe fn tenant_const(tenant: &[u8; 16]) -> *mut pg_sys::Const {
    let tenant = *tenant;
    // SAFETY: one FFI guard around both calls (an ERROR in either comes back as a panic; the
    // closure owns nothing to drop). palloc returns 16 bytes (or raises), filled whole;
    // makeConst allocates the node in the same context, holding the by-reference value (a uuid
    // is 16 bytes, not by value).
    unsafe {
        pg_sys::ffi::pg_guard_ffi_boundary(|| {
            let v = raw::palloc(16) as *mut u8;
            std::ptr::copy_nonoverlapping(tenant.as_ptr(), v, 16);
            raw::makeConst(
                pg_sys::UUIDOID,
                -1,
                pg_sys::InvalidOid,
                16,
                pg_sys::Datum::from(v),
                false,
                false,
            )
        })
    }
}

/// PostgreSQL 15's allocation and node functions, declared without pgrx's per-call guard, for
/// the planner hook to call several under one `pg_guard_ffi_boundary` (each guard saves a
/// `sigsetjmp` point: about a hundred instructions, on every statement). The same symbols and
/// signatures as utils/palloc.h, nodes/pg_list.h and nodes/makefuncs.h; called only inside a
/// guard.
mod raw {
    use pgrx::pg_sys;
    use std::ffi::c_void;
    unsafe extern "C-unwind" {
        pub fn palloc(size: usize) -> *mut c_void;
        pub fn palloc0(size: usize) -> *mut c_void;
        pub fn lappend(list: *mut pg_sys::List, datum: *mut c_void) -> *mut pg_sys::List;
        pub fn makeConst(
            consttype: pg_sys::Oid,
            consttypmod: i32,
            constcollid: pg_sys::Oid,
            constlen: std::ffi::c_int,
            constvalue: pg_sys::Datum,
            constisnull: bool,
            constbyval: bool,
        ) -> *mut pg_sys::Const;
    }
}

/// A NULL uuid Const: the tenant of a plan only shown, without a binding.
///
/// # Safety
/// On the backend's thread; palloc'd in the current memory context.
unsafe fn null_tenant_const() -> *mut pg_sys::Const {
    // SAFETY: makeConst allocates the node in the current context; a null Const holds no value.
    unsafe {
        pg_sys::makeConst(
            pg_sys::UUIDOID,
            -1,
            pg_sys::InvalidOid,
            16,
            pg_sys::Datum::from(0usize),
            true,
            false,
        )
    }
}

/// Stamps `stmt` with the pairs folded into it and its tenant's serial (see STAMP_PAIR).
///
/// # Safety
/// `stmt` must be a valid PlannedStmt just planned; the items are palloc'd in the current
/// memory context, which must be the statement's.
unsafe fn stamp(stmt: *mut pg_sys::PlannedStmt, folded: &[i32], serial: u32) {
    let item = |cache: c_int, hash: u32| {
        // SAFETY: inside the guard below. palloc0 returns zeroed memory of a PlanInvalItem's
        // size (or raises), filled as makeNode(PlanInvalItem) and the planner would fill it.
        unsafe {
            let i = raw::palloc0(std::mem::size_of::<pg_sys::PlanInvalItem>())
                as *mut pg_sys::PlanInvalItem;
            (*i).type_ = pg_sys::NodeTag::T_PlanInvalItem;
            (*i).cacheId = cache;
            (*i).hashValue = hash;
            i as *mut c_void
        }
    };
    // SAFETY: one FFI guard around every allocation (an ERROR comes back as a panic; the
    // closure owns nothing to drop). `stmt` is valid (this function's contract); lappend takes
    // null or a List of pointers and returns the list with the item appended, in the current
    // memory context.
    unsafe {
        pg_sys::ffi::pg_guard_ffi_boundary(|| {
            let mut items = (*stmt).invalItems;
            for id in folded {
                items = raw::lappend(items, item(STAMP_PAIR, (id - RESERVED_BASE) as u32));
            }
            items = raw::lappend(items, item(STAMP_TENANT, serial));
            items = raw::lappend(
                items,
                item(pg_sys::SysCacheIdentifier::PROCOID as c_int, STAMP_HASH),
            );
            (*stmt).invalItems = items;
        })
    }
}

/// The check of a plan with the binding folded in, when it starts: every folded (table,
/// privilege) must give the stamped tenant now, computed as the reserved parameter is (which
/// raises what `allowed_tenant` raises: no tenant bound, the privilege not granted). Anything
/// else fails the statement, and a cached copy of the plan is invalidated.
///
/// # Safety
/// `stmt` must be null or the valid PlannedStmt of the query starting, in the leader, inside
/// its transaction.
unsafe fn check_folded(stmt: *mut pg_sys::PlannedStmt) -> Verified {
    let mut verified = Verified::new();
    if stmt.is_null() {
        return verified;
    }
    let item = |cell: *mut *mut c_void| -> Option<(c_int, u32)> {
        // SAFETY: `cell` is a live cell of the plan's invalidation list, a List of
        // PlanInvalItem nodes (checked by tag before the cast).
        unsafe {
            let i = *cell as *mut pg_sys::PlanInvalItem;
            (!i.is_null() && (*i).type_ == pg_sys::NodeTag::T_PlanInvalItem)
                .then(|| ((*i).cacheId, (*i).hashValue))
        }
    };
    let (mut serial, mut pairs) = (None, false);
    // SAFETY: `stmt` is valid (this function's contract): its invalidation list is null or a
    // List of pointers.
    unsafe {
        for_each_cell((*stmt).invalItems, |c| match item(c) {
            Some((cache, h)) if cache == STAMP_TENANT => serial = Some(h),
            Some((cache, _)) if cache == STAMP_PAIR => pairs = true,
            _ => {}
        })
    };
    if !pairs && serial.is_none() {
        return verified;
    }
    let expected = serial.and_then(|s| FOLD_TENANTS.with(|f| f.borrow().tenant_of(s)));
    let value = RESERVED_VALUE
        .with(|v| v.get())
        .expect("pg_tenancy registers the reserved parameters' value at load");
    let mut same = pairs && expected.is_some();
    // SAFETY: as above.
    unsafe {
        for_each_cell((*stmt).invalItems, |c| {
            if let Some((cache, h)) = item(c) {
                if cache == STAMP_PAIR {
                    match i32::try_from(h)
                        .ok()
                        .and_then(|h| reserved(RESERVED_BASE.saturating_add(h)))
                    {
                        Some((relid, privilege)) => {
                            let v = value(relid, privilege);
                            same &= Some(v) == expected;
                            verified.push((relid, privilege, v));
                        }
                        None => same = false,
                    }
                }
            }
        })
    };
    if !same {
        // SAFETY: inside a transaction (this function's contract); the pg_proc callbacks of
        // this backend run with a hash no function is looked up by here: the plan cache marks
        // plans holding the stamp's item invalid, pg_tenancy's own callback forgets an oid.
        unsafe {
            pg_sys::CallSyscacheCallbacks(pg_sys::SysCacheIdentifier::PROCOID as c_int, STAMP_HASH)
        };
        pgrx::pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "pg_tenancy: this plan was made for another tenant binding",
            "check_folded",
        )
        .set_hint("Run the statement again: it is planned again for the binding in force.")
        .report(PgLogLevel::ERROR);
        unreachable!("an ERROR does not return");
    }
    verified
}

/// Finds (and with a Replace, replaces) the policy subqueries in the security quals of the
/// statement's relations and in its WITH CHECK options (INSERT, UPDATE, ON CONFLICT), of its
/// subqueries in FROM (views included), of its CTEs and of the subqueries in its expressions
/// (WHERE, the select list, HAVING, ...), and returns whether there was one. WITH CHECK
/// options are compiled by ModifyTable with the statement's parameter list, like any qual of
/// the plan. Plain Rust over the range tables; PostgreSQL's walker only over a Query that has
/// sublinks in its expressions. With a Replace that folds, each policy found reads the binding.
///
/// # Safety
/// `q` must point at a valid Query (a parse tree as the rewriter leaves it), inside a
/// transaction (see [`policy_subquery`]). With a Replace, the tree is changed in place:
/// nothing else may be reading it.
unsafe fn visit_query(q: *mut pg_sys::Query, mut replace: Option<&mut Replace>) -> bool {
    let mut found = false;
    let wrapped_before = replace.as_deref().map_or(0, |r| r.wrapped);
    // Subqueries in the Query's own expressions (WHERE, the select list, HAVING, join
    // conditions, RETURNING, a function's or a VALUES list's arguments): their tables carry
    // policies too (an attacker's pass found `EXISTS (SELECT ... FROM protected)` and scalar
    // subqueries evaluating the policies' call per row). Only where the parser or the
    // rewriter says the Query has some: a point lookup pays nothing for this.
    // SAFETY: `q` is a valid Query (this function's contract); query_tree_walker visits its
    // expressions with sublink_walker, which receives the SubWalk below as its context, alive
    // for the walk; range-table and CTE subqueries are left to the loops below.
    unsafe {
        if (*q).hasSubLinks {
            let mut w = SubWalk {
                replace: replace.as_deref_mut().map(|r| r as *mut Replace),
                found: false,
            };
            pg_sys::query_tree_walker(
                q,
                Some(sublink_walker),
                (&mut w as *mut SubWalk).cast(),
                (pg_sys::QTW_IGNORE_RT_SUBQUERIES | pg_sys::QTW_IGNORE_CTE_SUBQUERIES) as c_int,
            );
            found |= w.found;
        }
    }
    // SAFETY: `q` is a valid Query (this function's contract): its range table, WITH CHECK
    // options and CTE list are null or Lists of pointers to RangeTblEntry, WithCheckOption
    // and CommonTableExpr nodes. Every element is checked for null, and a WithCheckOption's
    // or a CTE query's node tag checked, before it is read; a RangeTblEntry's security quals
    // are a List of expression nodes, its subquery (for RTE_SUBQUERY) a Query of the same
    // tree, as is a CTE's query once its tag says so. Each cell passed on to in_qual is a
    // live cell of its List, or a WithCheckOption's `qual` field, which holds a node pointer
    // just as a cell does; still inside the transaction.
    unsafe {
        for_each_cell((*q).rtable, |cell| {
            let rte = *cell as *mut pg_sys::RangeTblEntry;
            if rte.is_null() {
                return;
            }
            for_each_cell((*rte).securityQuals, |c| {
                found |= in_qual(c, replace.as_deref_mut())
            });
            if (*rte).rtekind == pg_sys::RTEKind::RTE_SUBQUERY && !(*rte).subquery.is_null() {
                found |= visit_query((*rte).subquery, replace.as_deref_mut());
            }
        });
        for_each_cell((*q).withCheckOptions, |cell| {
            let wco = *cell as *mut pg_sys::WithCheckOption;
            if !wco.is_null() && (*wco).type_ == pg_sys::NodeTag::T_WithCheckOption {
                found |= in_qual(
                    std::ptr::addr_of_mut!((*wco).qual).cast(),
                    replace.as_deref_mut(),
                );
            }
        });
        for_each_cell((*q).cteList, |cell| {
            let cte = *cell as *mut pg_sys::CommonTableExpr;
            if !cte.is_null() {
                let sub = (*cte).ctequery;
                if !sub.is_null() && (*sub).type_ == pg_sys::NodeTag::T_Query {
                    found |= visit_query(sub as *mut pg_sys::Query, replace.as_deref_mut());
                }
            }
        });
        // A subquery wrapped into this Query's quals (not a subquery's or a CTE's, which set
        // their own flag): the planner processes sublinks only in a Query that says it has some.
        // Counted after the subqueries and CTEs too, which may only raise the count: the flag
        // is then set where it was not needed, which costs nothing but a walk.
        if replace
            .as_deref()
            .is_some_and(|r| r.wrapped > wrapped_before)
        {
            (*q).hasSubLinks = true;
        }
    }
    found
}

/// The context of [`sublink_walker`]: the visit's Replace (as a pointer: the walk passes it
/// through C) and whether a policy was found.
struct SubWalk {
    replace: Option<*mut Replace>,
    found: bool,
}

/// `query_tree_walker`'s callback for [`visit_query`]: each SubLink's subquery is visited as
/// a Query of its own; nothing else is descended into but expressions.
///
/// # Safety
/// Called by PostgreSQL's walkers with a node of a valid parse tree (or null) and the SubWalk
/// that visit_query passed as `context`, inside the transaction the statement is planned in.
#[pg_guard]
unsafe extern "C-unwind" fn sublink_walker(node: *mut pg_sys::Node, context: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    // SAFETY: `node` is a valid node (this function's contract), cast to a SubLink only once
    // its tag says so; `context` is visit_query's SubWalk, whose Replace pointer (if any) is
    // the visit's own, not otherwise borrowed while the walk runs.
    unsafe {
        match (*node).type_ {
            // Visited by the SubLink case below, or by visit_query's own loops.
            pg_sys::NodeTag::T_Query => false,
            pg_sys::NodeTag::T_SubLink => {
                let sub = (*(node as *mut pg_sys::SubLink)).subselect;
                if !sub.is_null() && (*sub).type_ == pg_sys::NodeTag::T_Query {
                    let w = &mut *(context as *mut SubWalk);
                    let r = w.replace.map(|r| &mut *r);
                    w.found |= visit_query(sub as *mut pg_sys::Query, r);
                }
                // Its test expression may hold subqueries too (the Query is skipped above).
                pg_sys::expression_tree_walker(node, Some(sublink_walker), context)
            }
            _ => pg_sys::expression_tree_walker(node, Some(sublink_walker), context),
        }
    }
}

/// Call `f` with a pointer to each cell of a List of pointers.
///
/// # Safety
/// `list` must be null or a valid List of pointers (not an integer or oid List); `f` must not
/// change the list's length (it may replace the pointer in its cell).
unsafe fn for_each_cell(list: *mut pg_sys::List, mut f: impl FnMut(*mut *mut c_void)) {
    if list.is_null() {
        return;
    }
    // SAFETY: `list` is a valid List (this function's contract), not null (checked above):
    // `elements` holds `length` cells, whose pointer member is the live one, and `f` leaves
    // the length alone.
    unsafe {
        for i in 0..(*list).length as usize {
            f(&mut (*(*list).elements.add(i)).ptr_value);
        }
    }
}

/// A security qual is a policy's expression, or permissive policies ORed together; the policy
/// subquery is an operand of the comparison with the tenant column.
///
/// # Safety
/// `cell` must point at a node pointer (a List cell or a node's field) holding null or a valid
/// expression node of the parse tree, inside a transaction (see [`policy_subquery`]). With
/// a Replace, the operands found are replaced in place: nothing else may be reading the tree.
unsafe fn in_qual(cell: *mut *mut c_void, mut replace: Option<&mut Replace>) -> bool {
    // SAFETY: `cell` points at a node pointer (this function's contract).
    let node = unsafe { *cell } as *mut pg_sys::Node;
    if node.is_null() {
        return false;
    }
    let mut found = false;
    // SAFETY: `node` is a valid expression node (this function's contract, not null: checked
    // above), cast only to the struct its tag names; a BoolExpr's and an OpExpr's `args` are
    // Lists of expression nodes, whose cells are passed on. A replaced operand becomes a new
    // Param or Const (palloc'd in the current memory context) of the type of the subquery it
    // replaces (uuid, `allowed_tenant`'s result), so the OpExpr stays well typed.
    unsafe {
        match (*node).type_ {
            pg_sys::NodeTag::T_BoolExpr => {
                for_each_cell((*(node as *mut pg_sys::BoolExpr)).args, |c| {
                    found |= in_qual(c, replace.as_deref_mut())
                })
            }
            pg_sys::NodeTag::T_OpExpr => {
                for_each_cell((*(node as *mut pg_sys::OpExpr)).args, |c| {
                    let operand = *c as *mut pg_sys::Node;
                    let sub = policy_subquery(operand);
                    let bare = sub.is_none();
                    if let Some((relid, privilege)) = sub.or_else(|| allowed_tenant_call(operand)) {
                        let Some(r) = replace.as_deref_mut() else {
                            found |= reserve(relid, privilege).is_some();
                            return;
                        };
                        if r.wrap {
                            if bare {
                                found = true;
                                *c = scalar_subquery(operand) as *mut c_void;
                                r.wrapped += 1;
                            }
                            return;
                        }
                        let placed = reserve(relid, privilege).and_then(|id| {
                            found = true;
                            r.operand(id, relid, privilege)
                        });
                        match placed {
                            Some(new) => *c = new,
                            None if bare && r.wrap_leftovers => {
                                found = true;
                                *c = scalar_subquery(operand) as *mut c_void;
                                r.wrapped += 1;
                            }
                            None => {}
                        }
                    }
                })
            }
            _ => {}
        }
    }
    found
}

/// `(SELECT tenancy.allowed_tenant('<table>'::regclass, '<privilege>'))` exactly as the generated
/// policies write it, and nothing else: its table and privilege.
///
/// # Safety
/// `node` must be null or a valid expression node of a parse tree; inside a transaction (the
/// function's identity is checked in the catalog).
unsafe fn policy_subquery(node: *mut pg_sys::Node) -> Option<(pg_sys::Oid, &'static str)> {
    // SAFETY: `node` is null or a valid node (this function's contract); every pointer below
    // is checked for null and every node's tag checked before it is cast to the struct the
    // tag names. A SubLink's subselect is a Query, whose Lists are read only for their length
    // once checked non-null (a one-element target list's first cell is a TargetEntry); a
    // FuncExpr's `args` has two cells (checked) holding expression nodes. A Const's value is
    // read as the type its `consttype` says: a regclass (an oid by value) and a non-null text,
    // which is a varlena, read only if neither external nor compressed.
    unsafe {
        if node.is_null() || (*node).type_ != pg_sys::NodeTag::T_SubLink {
            return None;
        }
        let sl = node as *mut pg_sys::SubLink;
        if (*sl).subLinkType != pg_sys::SubLinkType::EXPR_SUBLINK
            || !(*sl).testexpr.is_null()
            || (*sl).subselect.is_null()
            || (*(*sl).subselect).type_ != pg_sys::NodeTag::T_Query
        {
            return None;
        }
        let q = (*sl).subselect as *mut pg_sys::Query;
        let q = &*q;
        let empty = |l: *mut pg_sys::List| l.is_null() || (*l).length == 0;
        if q.commandType != pg_sys::CmdType::CMD_SELECT
            || !q.utilityStmt.is_null()
            || !empty(q.rtable)
            || q.jointree.is_null()
            || !empty((*q.jointree).fromlist)
            || !(*q.jointree).quals.is_null()
            || q.targetList.is_null()
            || (*q.targetList).length != 1
            || !empty(q.cteList)
            || !empty(q.groupClause)
            || !empty(q.groupingSets)
            || !q.havingQual.is_null()
            || !empty(q.windowClause)
            || !empty(q.distinctClause)
            || !empty(q.sortClause)
            || !q.limitOffset.is_null()
            || !q.limitCount.is_null()
            || !empty(q.rowMarks)
            || !q.setOperations.is_null()
            || !empty(q.returningList)
            || !empty(q.withCheckOptions)
            || q.hasAggs
            || q.hasWindowFuncs
            || q.hasTargetSRFs
            || q.hasSubLinks
            || q.hasDistinctOn
            || q.hasRecursive
            || q.hasModifyingCTE
            || q.hasForUpdate
            || q.hasRowSecurity
        {
            return None;
        }
        let tle = (*(*q.targetList).elements).ptr_value as *mut pg_sys::TargetEntry;
        if tle.is_null() || (*tle).resjunk || (*tle).expr.is_null() {
            return None;
        }
        allowed_tenant_call((*tle).expr as *mut pg_sys::Node)
    }
}

/// `tenancy.allowed_tenant('<table>'::regclass, '<privilege>')`, a call with two constants, as
/// the generated policies write it (bare; inside a scalar subquery in tables protected before
/// 2026-12-06): its table and privilege.
///
/// # Safety
/// `f` must be null or a valid expression node of a parse tree; inside a transaction (the
/// function's identity is checked in the catalog).
unsafe fn allowed_tenant_call(f: *mut pg_sys::Node) -> Option<(pg_sys::Oid, &'static str)> {
    // SAFETY: `f` is null or a valid node (this function's contract), cast to a FuncExpr only
    // once its tag says so; its `args` has two cells (checked) holding expression nodes. A
    // Const's value is read as the type its `consttype` says: a regclass (an oid by value) and
    // a non-null text, which is a varlena, read only if neither external nor compressed.
    unsafe {
        if f.is_null() || (*f).type_ != pg_sys::NodeTag::T_FuncExpr {
            return None;
        }
        let f = &*(f as *mut pg_sys::FuncExpr);
        if f.funcretset
            || f.funcvariadic
            || f.funcresulttype != pg_sys::UUIDOID
            || f.args.is_null()
            || (*f.args).length != 2
            || !is_allowed_tenant(f.funcid)
        {
            return None;
        }
        let arg = |i: usize| {
            let n = (*(*f.args).elements.add(i)).ptr_value as *mut pg_sys::Node;
            if n.is_null() || (*n).type_ != pg_sys::NodeTag::T_Const {
                return None;
            }
            let c = &*(n as *mut pg_sys::Const);
            (!c.constisnull).then_some(c)
        };
        let (tbl, privilege) = (arg(0)?, arg(1)?);
        if tbl.consttype != pg_sys::REGCLASSOID || privilege.consttype != pg_sys::TEXTOID {
            return None;
        }
        let relid = pg_sys::Oid::from(tbl.constvalue.value() as u32);
        // A Const read back from a stored policy is a plain, uncompressed varlena.
        let v = privilege.constvalue.cast_mut_ptr::<pg_sys::varlena>();
        if pgrx::varlena::varatt_is_1b_e(v) || pgrx::varlena::varatt_is_4b_c(v) {
            return None;
        }
        let name = pgrx::varlena::varlena_to_byte_slice(v);
        PRIVILEGES
            .iter()
            .copied()
            .find(|p| p.as_bytes() == name)
            .map(|p| (relid, p))
    }
}

/// Whether `funcid` is pg_tenancy's `tenancy.allowed_tenant(regclass, text)`, this library's C
/// function (checked in the catalog, not by a remembered oid that a re-created extension would
/// have changed).
///
/// # Safety
/// Inside a transaction (a function not seen before is looked up in the catalog).
unsafe fn is_allowed_tenant(funcid: pg_sys::Oid) -> bool {
    if ALLOWED_TENANT.with(|a| a.get()) == Some(funcid) {
        return true;
    }
    // SAFETY: inside a transaction (this function's contract).
    let ours = unsafe { check_allowed_tenant(funcid) };
    if ours {
        ALLOWED_TENANT.with(|a| a.set(Some(funcid)));
    }
    ours
}

/// The pg_proc syscache callback: forget the checked oid of `allowed_tenant`.
///
/// # Safety
/// Called by PostgreSQL's invalidation processing, as registered by [`init`].
#[pg_guard]
unsafe extern "C-unwind" fn proc_invalidated(_arg: pg_sys::Datum, _cache: c_int, _hash: u32) {
    ALLOWED_TENANT.with(|a| a.set(None));
}

/// Whether `funcid` is `tenancy.allowed_tenant`, this library's C function, in the catalog.
///
/// # Safety
/// Inside a transaction (the catalog is read).
unsafe fn check_allowed_tenant(funcid: pg_sys::Oid) -> bool {
    // SAFETY: a syscache lookup inside a transaction (this function's contract). A found
    // tuple is a pg_proc row, whose fixed part GETSTRUCT gives as FormData_pg_proc; it is
    // read (the name is NUL-terminated within NAMEDATALEN) before ReleaseSysCache, after which
    // `form` is not used. get_namespace_name returns null or a palloc'd NUL-terminated copy,
    // freed once here.
    unsafe {
        let tup = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::PROCOID as c_int,
            pg_sys::Datum::from(funcid),
        );
        if tup.is_null() {
            return false;
        }
        let form = &*(pg_sys::GETSTRUCT(tup) as *mut pg_sys::FormData_pg_proc);
        let ours = CStr::from_ptr(form.proname.data.as_ptr()) == c"allowed_tenant"
            && form.prolang == C_LANGUAGE_ID
            && form.pronargs == 2
            && form.prorettype == pg_sys::UUIDOID;
        let namespace = form.pronamespace;
        pg_sys::ReleaseSysCache(tup);
        if !ours {
            return false;
        }
        let name = pg_sys::get_namespace_name(namespace);
        let in_tenancy = !name.is_null() && CStr::from_ptr(name) == c"tenancy";
        if !name.is_null() {
            pg_sys::pfree(name as *mut c_void);
        }
        in_tenancy
    }
}

/// The reserved number of (table, privilege) in this backend.
pub(crate) fn reserve(relid: pg_sys::Oid, privilege: &'static str) -> Option<i32> {
    let key = (u32::from(relid), privilege);
    let known = RESERVED_INDEX.with(|x| x.borrow().as_ref().and_then(|x| x.get(&key).copied()));
    let i = match known {
        Some(i) => i,
        None => {
            let i = RESERVED.with(|r| {
                let mut r = r.borrow_mut();
                (r.len() < RESERVE_CAP.with(|c| c.get())).then(|| {
                    r.push((relid, privilege));
                    r.len() - 1
                })
            })?;
            RESERVED_INDEX.with(|x| {
                x.borrow_mut()
                    .get_or_insert_with(Default::default)
                    .insert(key, i);
            });
            i
        }
    };
    Some(RESERVED_BASE + i as i32)
}

/// For a test of the statements planned once the reserved numbers run out: allow no pair
/// beyond those reserved already (`Some(())`), or MAX_RESERVED again (`None`).
#[cfg(any(test, feature = "pg_test"))]
pub(crate) fn cap_reserved_for_test(cap: Option<()>) {
    let n = match cap {
        Some(()) => RESERVED.with(|r| r.borrow().len()),
        None => MAX_RESERVED,
    };
    RESERVE_CAP.with(|c| c.set(n));
}

fn reserved(paramid: i32) -> Option<(pg_sys::Oid, &'static str)> {
    let i = usize::try_from(paramid.checked_sub(RESERVED_BASE)?).ok()?;
    RESERVED.with(|r| r.borrow().get(i).copied())
}

/// A new external Param node of type uuid numbered `paramid`.
///
/// # Safety
/// On the backend's thread; the node is palloc'd in the current memory context, which must
/// outlive its use.
pub(crate) unsafe fn reserved_param(paramid: i32) -> *mut pg_sys::Param {
    // SAFETY: palloc0 returns zeroed memory of a Param's size in the current memory context
    // (or raises), filled here as makeNode(Param) and the parser would fill it.
    unsafe {
        let p = pg_sys::palloc0(std::mem::size_of::<pg_sys::Param>()) as *mut pg_sys::Param;
        (*p).xpr.type_ = pg_sys::NodeTag::T_Param;
        (*p).paramkind = pg_sys::ParamKind::PARAM_EXTERN;
        (*p).paramid = paramid;
        (*p).paramtype = pg_sys::UUIDOID;
        (*p).paramtypmod = -1;
        (*p).paramcollid = pg_sys::InvalidOid;
        (*p).location = -1;
        p
    }
}

/// After a parameter list's entries, a wrapper keeps the compile hook it replaced.
type Trailer = pg_sys::ParamCompileHook;

/// The offset, in a parameter list of `numparams` entries, just after its last entry: where a
/// wrapper keeps its [`Trailer`].
///
/// # Safety
/// None: it only computes. (Only a list [`wrap`] made has a trailer at that offset.)
unsafe fn entries_end(numparams: usize) -> usize {
    std::mem::offset_of!(pg_sys::ParamListInfoData, params)
        + numparams * std::mem::size_of::<pg_sys::ParamExternData>()
}

thread_local! {
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
    /// What the pillars do at the start of every query (src/lifecycle: the resource limits
    /// and the tenant's write lock), registered at _PG_init.
    static QUERY_START: RefCell<Vec<fn(bool)>> = const { RefCell::new(Vec::new()) };
    /// What the pillars do before a statement is planned (src/lifecycle: the resource
    /// limits), registered at _PG_init.
    static PLAN_START: RefCell<Vec<fn()>> = const { RefCell::new(Vec::new()) };
    /// What the pillars do at the start of a query of the leader that writes or locks rows
    /// while a parallel plan runs (src/lifecycle: the tenant's write lock), registered at
    /// _PG_init.
    static PARALLEL_WRITE_START: RefCell<Vec<fn()>> = const { RefCell::new(Vec::new()) };
    /// The reserved parameters' value: the tenant a binding may act for on a table with a
    /// privilege (src/protection/privileges.rs), registered at _PG_init.
    static RESERVED_VALUE: Cell<Option<ReservedValue>> = const { Cell::new(None) };
}

/// Computes a reserved parameter's value: (table, privilege) to the tenant's uuid bytes.
pub type ReservedValue = fn(pg_sys::Oid, &'static str) -> [u8; 16];

/// Run `f(writes)` at the start of every query of the leader process, before parallel mode,
/// with whether the query writes (also through a data-modifying CTE).
pub fn at_query_start(f: fn(bool)) {
    QUERY_START.with(|q| q.borrow_mut().push(f));
}

/// Run `f()` at the start of a query of the leader process, in parallel mode (a function a
/// parallel plan's leader runs), that writes or locks rows: the query-start callbacks do not run
/// there ([`at_query_start`]).
pub fn at_parallel_write_start(f: fn()) {
    PARALLEL_WRITE_START.with(|q| q.borrow_mut().push(f));
}

/// Run `f()` before every statement of the leader process is planned, outside parallel mode.
pub fn at_plan_start(f: fn()) {
    PLAN_START.with(|q| q.borrow_mut().push(f));
}

/// Set how the reserved parameters get their value.
pub fn set_reserved_value(f: ReservedValue) {
    RESERVED_VALUE.with(|r| r.set(Some(f)));
}

/// Clears IN_HOOK when the hook's own work is done (also when it raises).
struct HookDone;
impl Drop for HookDone {
    fn drop(&mut self) {
        IN_HOOK.with(|h| h.set(false));
    }
}

/// The ExecutorStart hook: invalidations, the pillars' query-start work, and the statement's
/// parameter list wrapped so that reserved parameters compile to their value.
///
/// # Safety
/// Called by PostgreSQL as `ExecutorStart_hook`, with a valid QueryDesc.
#[pg_guard]
unsafe extern "C-unwind" fn executor_start(qd: *mut pg_sys::QueryDesc, eflags: c_int) {
    // Any executor started but one of pg_tenancy's own answers' queries ends the window (the
    // statement's own, or a query a function of the statement's planning ran: then a later
    // estimate raises as a read would, which refuses the statement, never lets it through).
    // The statement's own start for EXPLAIN without ANALYZE ends it when it returns instead:
    // its initial pruning evaluates the policies' calls left in the plan, and nothing runs
    // (a query started inside it still ends the window at once).
    let explain_only_start = eflags & pg_sys::EXEC_FLAG_EXPLAIN_ONLY as c_int != 0;
    let _window = if IN_WINDOW_ANSWER.with(|n| n.get()) == 0 {
        if explain_only_start && loaded_while_planning() {
            Some(EndWindowAtEnd)
        } else {
            end_window();
            None
        }
    } else {
        None
    };
    super::citus::note_connection_name();
    // SAFETY: ParallelWorkerNumber is this process's own variable, read on its only thread.
    if unsafe { pg_sys::ParallelWorkerNumber } < 0 {
        super::executor_end::started(qd);
        // Every query, also the ones a function or a DO block runs inside one long statement,
        // reads revocations committed before it started: the binding is checked again when
        // pg_tenancy's catalog changed (binding::with_current). Without messages waiting this
        // is one unlocked read of a flag.
        // SAFETY: at executor start, inside a transaction, in the leader (checked above),
        // where invalidations may be processed.
        unsafe { pg_sys::AcceptInvalidationMessages() };
        // Resource limits hold from the start of every query of a bound session, before a
        // parallel plan fixes its workers' settings (src/lifecycle/limits.rs).
        // Not again for the queries these run themselves (the tenant's row, on a cache miss).
        // A SELECT that locks rows (FOR UPDATE, FOR SHARE, ...) counts as a write: a bound
        // session holding the tenant's rows locked held a decommission's deletion for ever
        // without the tenant's write lock, which decommission ends (an attacker's pass).
        // SAFETY: `qd` is the QueryDesc being started (this function's contract), with its
        // planned statement.
        let writes = || unsafe {
            (*qd).operation != pg_sys::CmdType::CMD_SELECT
                || (*(*qd).plannedstmt).hasModifyingCTE
                || !(*(*qd).plannedstmt).rowMarks.is_null()
        };
        if !super::unguarded::in_parallel_mode() {
            if !IN_HOOK.with(|h| h.replace(true)) {
                let _done = HookDone;
                let writes = writes();
                // By index, with no borrow held while each runs, and no copy of the list.
                for i in 0..QUERY_START.with(|q| q.borrow().len()) {
                    QUERY_START.with(|q| q.borrow()[i])(writes);
                }
            }
        } else if writes() {
            // A function a parallel plan's leader runs, locking rows (the limits' SET LOCAL
            // cannot run here, the write lock can): it took no write lock, and held a
            // decommission for ever (an attacker's pass).
            for i in 0..PARALLEL_WRITE_START.with(|q| q.borrow().len()) {
                PARALLEL_WRITE_START.with(|q| q.borrow()[i])();
            }
        }
    }
    // A plan with the binding folded in is checked against the binding in force, after the
    // invalidations above (a revocation committed before the query started is seen).
    // SAFETY: ParallelWorkerNumber as above; `qd` is the QueryDesc being started, whose
    // planned statement is null or valid, in the leader, inside the transaction.
    let verified = unsafe {
        if FOLDED_EVER.with(|f| f.get()) && pg_sys::ParallelWorkerNumber < 0 {
            check_folded((*qd).plannedstmt)
        } else {
            Verified::new()
        }
    };
    // Until this ExecutorStart returns (or raises), these pairs are computed, and the permission
    // check adds its own; then the enclosing one's again.
    let _scope = VerifiedScope(
        VERIFIED.with(|v| std::mem::replace(&mut *v.borrow_mut(), verified)),
        STARTING.with(|s| s.replace(true)),
    );
    let _explain = ExplainOnlyScope(EXPLAIN_ONLY.with(|e| e.replace(explain_only_start)));
    // Never for a plan Citus made (it holds no reserved parameter, see the planner): Citus's
    // executor copies a parameter list with no entries to nothing and then reads it, which
    // crashed a node (an attacker's pass, in a connection named as Citus's that had planned a
    // shard query before).
    // SAFETY: ParallelWorkerNumber as above. `qd` is the QueryDesc being started; its planned
    // statement is null or valid, and its params are null or a valid parameter list, which
    // the copy replaces before the executor reads it. The copy is palloc'd in the current
    // memory context, the one the caller made the QueryDesc in, so it lives as long as the
    // query.
    unsafe {
        if IN_USE.with(|u| u.get())
            && pg_sys::ParallelWorkerNumber < 0
            && !(super::citus::in_database()
                && !(*qd).plannedstmt.is_null()
                && planned_by_citus((*qd).plannedstmt))
        {
            (*qd).params = wrap((*qd).params);
        }
    }
    // SAFETY: PREV_EXECUTOR_START is written once by init, before any query, on the backend's
    // only thread; it is copied out here.
    match unsafe { PREV_EXECUTOR_START } {
        // SAFETY: the hook installed before ours, with our own arguments, through the FFI guard
        // (its errors come back as a Rust panic, re-raised by #[pg_guard]).
        Some(prev) => unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| prev(qd, eflags)) },
        // SAFETY: the standard ExecutorStart with our own arguments; pgrx's binding guards the
        // call.
        None => unsafe { pg_sys::standard_ExecutorStart(qd, eflags) },
    }
}

/// How many of `list`'s entries a wrapper copies: none when the list's values are read through
/// its fetch hook (PostgreSQL then never reads the entries themselves, and PL/pgSQL's lists
/// say `numParams` entries while holding only the header: an attacker's pass had every
/// statement of a function with many variables copy far past the end of its list), else all.
///
/// # Safety
/// `list` must be null or a valid parameter list.
unsafe fn copied_entries(list: pg_sys::ParamListInfo) -> usize {
    // SAFETY: `list` is read only when not null: then a valid list (this function's contract).
    unsafe {
        if list.is_null() || (*list).paramFetch.is_some() {
            0
        } else {
            (*list).numParams.max(0) as usize
        }
    }
}

/// A copy of `orig` (its entries unless it is read through its fetch hook, which it keeps,
/// and its hooks' arguments) whose compile hook is [`compile_param`]; `orig`'s compile hook is
/// kept after the copied entries.
///
/// # Safety
/// `orig` must be null or a valid parameter list: one read through its fetch hook, or laid
/// out as makeParamList allocates it (its `numParams` entries in the same allocation). The
/// copy is palloc'd in the current memory context, which must outlive every use of it; it
/// shares `orig`'s hooks' arguments and its entries' values, which must live as long.
pub(crate) unsafe fn wrap(orig: pg_sys::ParamListInfo) -> pg_sys::ParamListInfo {
    // Never wrap a wrapper: its compile hook would call itself.
    // SAFETY: `orig` is read only when not null: then a valid list (this function's contract).
    if !orig.is_null() && is_ours(unsafe { (*orig).paramCompile }) {
        return orig;
    }
    // SAFETY: as above.
    let n = unsafe { copied_entries(orig) };
    // SAFETY: only computes an offset.
    let end = unsafe { entries_end(n) };
    // SAFETY: palloc0 returns zeroed, MAXALIGNed memory for the header, `n` entries and the
    // trailer (or raises). A non-null `orig` holds `end` bytes (its header, and its `n`
    // entries when it has them in the same allocation: this function's contract; a list
    // read through its fetch hook may have none, and none are copied), copied whole;
    // otherwise the zeroed header says 0 entries. `end` is a multiple of 8 (the header's size
    // before its entries, then 16-byte entries), so the trailer written after the entries is
    // aligned for a function pointer, inside the allocation.
    unsafe {
        let w = pg_sys::palloc0(end + std::mem::size_of::<Trailer>()) as pg_sys::ParamListInfo;
        if orig.is_null() {
            (*w).numParams = 0;
        } else {
            std::ptr::copy_nonoverlapping(orig as *const u8, w as *mut u8, end);
        }
        let trailer = (w as *mut u8).add(end) as *mut Trailer;
        trailer.write(if orig.is_null() {
            None
        } else {
            (*orig).paramCompile
        });
        (*w).paramCompile = Some(compile_param);
        w
    }
}

fn is_ours(hook: pg_sys::ParamCompileHook) -> bool {
    let ours: unsafe extern "C-unwind" fn(
        pg_sys::ParamListInfo,
        *mut pg_sys::Param,
        *mut pg_sys::ExprState,
        *mut pg_sys::Datum,
        *mut bool,
    ) = compile_param;
    hook.is_some_and(|h| std::ptr::fn_addr_eq(h, ours))
}

/// The per-statement state of one reserved parameter: its table and privilege, and the value
/// once computed. The value comes first, 8-byte aligned as a palloc'd uuid is: every row's
/// `uuid_eq` reads it.
#[repr(C)]
struct Reserved {
    tenant: [u8; 16],
    relid: pg_sys::Oid,
    privilege: &'static str,
    pending: bool,
    /// Only in a plan started for EXPLAIN without ANALYZE, where no binding is in force (see
    /// [`compute_reserved`]).
    null: bool,
    /// Compiled in an ExecutorStart for EXPLAIN without ANALYZE: the plan it belongs to is
    /// only shown, never run.
    explain_only: bool,
}

/// The compile hook of a list [`wrap`] made: a reserved parameter becomes a call of
/// [`eval_reserved`]; any other is compiled as the wrapped list would have compiled it.
///
/// # Safety
/// Called by PostgreSQL's expression compiler (ExecInitExprRec) as the `paramCompile` hook of
/// a list made by [`wrap`], with an external Param, the ExprState being built and the step's
/// result location.
#[pg_guard]
unsafe extern "C-unwind" fn compile_param(
    params: pg_sys::ParamListInfo,
    param: *mut pg_sys::Param,
    state: *mut pg_sys::ExprState,
    resv: *mut pg_sys::Datum,
    resnull: *mut bool,
) {
    // SAFETY: `param` is the Param being compiled (this function's contract).
    let id = unsafe { (*param).paramid };
    // SAFETY: ExprEvalStep is plain data (an opcode, pointers and a union of plain structs),
    // valid when zeroed, as ExecInitExprRec's scratch step starts out.
    let mut step: pg_sys::ExprEvalStep = unsafe { std::mem::zeroed() };
    step.resvalue = resv;
    step.resnull = resnull;
    if id >= RESERVED_BASE {
        let Some((relid, privilege)) = reserved(id) else {
            error!("pg_tenancy: parameter ${id} is reserved and unknown in this backend");
        };
        // In the executor's per-query memory: it lives as long as the statement's plan state.
        // Computed already when this statement started (its permission check), or at the
        // first evaluation.
        let start = computed_at_start(relid, privilege);
        // SAFETY: palloc0 returns memory of a Reserved's size, MAXALIGNed (enough for its
        // 8-byte alignment), in the current memory context (the executor's per-query one
        // while expressions are compiled) or raises; it is written whole before any read.
        let r = unsafe { pg_sys::palloc0(std::mem::size_of::<Reserved>()) } as *mut Reserved;
        // SAFETY: as above.
        unsafe {
            r.write(Reserved {
                relid,
                privilege,
                pending: start.is_none(),
                tenant: start.unwrap_or([0; 16]),
                null: false,
                explain_only: explain_only(),
            })
        };
        // One step calling [`eval_reserved`], which at its first evaluation computes the value
        // and then returns it kept. (Rewriting the step into a constant after the first
        // evaluation saved 2.1% of a sequential scan's instructions, too little to patch the
        // interpreter's steps for: src/pg/README.md.)
        step.opcode = pg_sys::ExprEvalOp::EEOP_PARAM_CALLBACK as isize;
        step.d.cparam = pg_sys::ExprEvalStep__bindgen_ty_1__bindgen_ty_13 {
            paramfunc: Some(eval_reserved),
            paramarg: r as *mut c_void,
            paramid: id,
            paramtype: pg_sys::UUIDOID,
        };
        // SAFETY: `state` is the ExprState being built (this function's contract); the step,
        // whose result goes where the compiler asked, is copied into its steps.
        unsafe { pg_sys::ExprEvalPushStep(state, &step) };
        return;
    }
    // SAFETY: `params` is a list made by `wrap` (this function's contract): its header, the
    // entries it copied (as many as copied_entries says, from the fetch hook it kept), then the
    // trailer `wrap` wrote, aligned, inside the allocation.
    let trailer = unsafe {
        let n = copied_entries(params);
        ((params as *mut u8).add(entries_end(n)) as *mut Trailer).read()
    };
    match trailer {
        // SAFETY: the compile hook of the list `params` copies, with the compiler's own
        // arguments; the copy carries that list's hook arguments, so the hook reads what it
        // would read from its own list. It is C code that may raise: called through the FFI
        // guard (its errors come back as a Rust panic, re-raised by #[pg_guard]) rather than
        // jumping over this frame.
        Some(orig_compile) => unsafe {
            pg_sys::ffi::pg_guard_ffi_boundary(|| orig_compile(params, param, state, resv, resnull))
        },
        None => {
            // What ExecInitExprRec emits for an external parameter without a compile hook.
            step.opcode = pg_sys::ExprEvalOp::EEOP_PARAM_EXTERN as isize;
            step.d.param = pg_sys::ExprEvalStep__bindgen_ty_1__bindgen_ty_12 {
                paramid: id,
                // SAFETY: `param` as above.
                paramtype: unsafe { (*param).paramtype },
            };
            // SAFETY: `state` as above.
            unsafe { pg_sys::ExprEvalPushStep(state, &step) };
        }
    }
}

/// A reserved parameter's evaluation: the first one in a compiled expression computes the
/// value, every one returns it. Without pgrx's guard (a `sigsetjmp`): it only reads and writes
/// memory, and computes the value in the guarded [`compute_reserved`] (whose errors leave
/// through this frame, which owns nothing to drop).
///
/// # Safety
/// Called by the expression interpreter for a step [`compile_param`] pushed, whose argument
/// is its [`Reserved`].
unsafe extern "C-unwind" fn eval_reserved(
    _state: *mut pg_sys::ExprState,
    op: *mut pg_sys::ExprEvalStep,
    _econtext: *mut pg_sys::ExprContext,
) {
    // SAFETY: `op` is the step compile_param pushed, whose argument is its Reserved, allocated
    // in the executor's per-query memory for as long as the expression lives; resvalue and
    // resnull point into the expression's state.
    unsafe {
        let r = (*op).d.cparam.paramarg as *mut Reserved;
        if (*r).pending {
            compute_reserved(r);
        }
        *(*op).resvalue = pg_sys::Datum::from((*r).tenant.as_ptr());
        *(*op).resnull = (*r).null;
    }
}

/// What `allowed_tenant` computes, once per compiled expression: the bound tenant, or its error.
///
/// # Safety
/// `r` must point at a live [`Reserved`] that nothing else refers to during the call.
#[pg_guard]
unsafe extern "C-unwind" fn compute_reserved(r: *mut Reserved) {
    // SAFETY: `r` is a live, initialised Reserved (this function's contract: compile_param
    // wrote it whole), aligned by palloc, and not referred to elsewhere during the call.
    let r = unsafe { &mut *r };
    // EXPLAIN without ANALYZE evaluates a reserved parameter only to show which partitions a
    // plan keeps (initial pruning, in ExecutorStart); the plan never runs. Unbound (or without
    // the privilege) the parameter is NULL there, which keeps no partition: the plan is shown
    // and nothing about any tenant is read. Every other evaluation raises as allowed_tenant,
    // also one of a parameter of another query evaluated while that EXPLAIN starts (a query
    // a function of its pruning runs, a cursor fetched from there): `explain_only` is the
    // flag of the start this parameter was compiled in, not of the start running now.
    if r.explain_only {
        let folded = FOLDED_VALUE
            .with(|v| v.get())
            .expect("pg_tenancy registers the folded value at load");
        match folded(r.relid, r.privilege) {
            Some(t) => r.tenant = t,
            None => r.null = true,
        }
        r.pending = false;
        return;
    }
    let value = RESERVED_VALUE
        .with(|v| v.get())
        .expect("pg_tenancy registers the reserved parameters' value at load");
    r.tenant = value(r.relid, r.privilege);
    r.pending = false;
}
