//! The policies' binding, planned as an executor parameter instead of an InitPlan.
//!
//! The generated policies compare the tenant column with
//! `(SELECT tenancy.allowed_tenant('t'::regclass, 'p'))`. Planned as written, every statement
//! plans that scalar subquery and runs it as an InitPlan: about 3 µs a statement, most of the
//! gap between a protected point lookup and the application's own `WHERE tenant_id = $1`.
//!
//! When `tenancy.plan_binding_as_param` is on (the default), a planner hook replaces exactly that
//! subquery, where the rewriter put it into the security quals of the statement's relations or
//! into its WITH CHECK options (in FROM, in views and in CTEs; elsewhere it stays an InitPlan),
//! with an external parameter whose number is reserved (`$1000000000` and up, one per table and
//! privilege in this backend). An `ExecutorStart` hook gives the statement a copy of its
//! parameter list whose compile hook turns a reserved parameter into a call of
//! [`eval_reserved`]: at its first evaluation in the statement it computes what `allowed_tenant`
//! computes (the bound tenant, or ERROR 42501 / "no tenant bound"), and keeps it for the rest of
//! the statement, as the InitPlan did; in an interpreted expression the call's step then becomes
//! a constant holding it. A plan therefore holds no tenant: a prepared statement, the unnamed
//! statement of the extended protocol or a PL/pgSQL plan reused under another binding reads the
//! new binding.
//!
//! Why this cannot read another tenant's rows, or fail open:
//! - a reserved number is above anything a real parameter list holds (65,535 protocol
//!   parameters, a function's arguments, PL/pgSQL's variables) and above what the parser
//!   accepts in SQL text (`$268435455`), so it is never answered by another value;
//! - where the copy with the compile hook is missing (a parallel worker, any path this hook does
//!   not see), PostgreSQL's own evaluation finds no value for the parameter and raises an error;
//! - the planner hook never leaves a reserved parameter in a parallel plan: when the planner
//!   chose one, the statement is planned again as written (InitPlans run in the leader);
//! - the value is computed by the same function as the policy's (`privileges::allowed_tenant`).

use crate::gucs;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::ffi::{c_int, c_void, CStr};

/// The first reserved parameter number. PostgreSQL numbers external parameters from 1; the
/// protocol allows 65,535, SQL functions 100 arguments, PL/pgSQL one per variable.
pub const RESERVED_BASE: i32 = 1_000_000_000;
/// Distinct (table, privilege) pairs given a number per backend; beyond it, InitPlans as written.
const MAX_RESERVED: usize = 100_000;
/// The privileges the generated policies pass to `allowed_tenant`.
const PRIVILEGES: [&str; 4] = ["select", "insert", "update", "delete"];
/// `ClanguageId` of pg_language.h (the bindings do not carry it).
const C_LANGUAGE_ID: pg_sys::Oid = pg_sys::Oid::from_u32(13);

thread_local! {
    /// Reserved number - RESERVED_BASE -> (table, privilege), for this backend's plans.
    static RESERVED: RefCell<Vec<(pg_sys::Oid, &'static str)>> = const { RefCell::new(Vec::new()) };
    /// The oid of `tenancy.allowed_tenant` once checked in the catalog (reset by pg_proc
    /// invalidations, so a re-created extension is checked again).
    static ALLOWED_TENANT: Cell<Option<pg_sys::Oid>> = const { Cell::new(None) };
    /// Set once this backend has planned a reserved parameter: only then are lists wrapped.
    static IN_USE: Cell<bool> = const { Cell::new(false) };
}

static mut PREV_PLANNER: pg_sys::planner_hook_type = None;
static mut PREV_EXECUTOR_START: pg_sys::ExecutorStart_hook_type = None;

pub fn init() {
    unsafe {
        PREV_PLANNER = pg_sys::planner_hook;
        pg_sys::planner_hook = Some(planner);
        PREV_EXECUTOR_START = pg_sys::ExecutorStart_hook;
        pg_sys::ExecutorStart_hook = Some(executor_start);
        pg_sys::CacheRegisterSyscacheCallback(
            pg_sys::SysCacheIdentifier::PROCOID as c_int,
            Some(proc_invalidated),
            pg_sys::Datum::from(0),
        );
    }
}

unsafe fn plan(
    parse: *mut pg_sys::Query,
    query_string: *const std::ffi::c_char,
    cursor_options: c_int,
    bound: pg_sys::ParamListInfo,
) -> *mut pg_sys::PlannedStmt {
    match PREV_PLANNER {
        // SAFETY: the hook installed before ours, with the planner's own arguments, through the
        // FFI guard (its errors come back as a Rust panic, re-raised by #[pg_guard]).
        Some(prev) => {
            pg_sys::ffi::pg_guard_ffi_boundary(|| prev(parse, query_string, cursor_options, bound))
        }
        None => pg_sys::standard_planner(parse, query_string, cursor_options, bound),
    }
}

/// Whether the planner may choose a parallel plan for this statement (then the statement is
/// kept as written, to be planned again if it does). A superset of standard_planner's own
/// condition for `parallelModeOK` in PostgreSQL 15.
unsafe fn parallel_possible(parse: *mut pg_sys::Query, cursor_options: c_int) -> bool {
    (cursor_options & pg_sys::CURSOR_OPT_PARALLEL_OK as c_int) != 0
        && (*parse).commandType == pg_sys::CmdType::CMD_SELECT
        && (pg_sys::max_parallel_workers_per_gather > 0 || pg_sys::force_parallel_mode != 0)
}

#[pg_guard]
unsafe extern "C-unwind" fn planner(
    parse: *mut pg_sys::Query,
    query_string: *const std::ffi::c_char,
    cursor_options: c_int,
    bound: pg_sys::ParamListInfo,
) -> *mut pg_sys::PlannedStmt {
    if !gucs::PLAN_BINDING_AS_PARAM.get() || pg_sys::ParallelWorkerNumber >= 0 || parse.is_null() {
        return plan(parse, query_string, cursor_options, bound);
    }
    // The planner scribbles on its input: keep the statement as written while a parallel plan
    // is possible.
    let mut original = std::ptr::null_mut();
    if parallel_possible(parse, cursor_options) {
        if !visit_query(parse, false) {
            return plan(parse, query_string, cursor_options, bound);
        }
        original = pg_sys::copyObjectImpl(parse as *const c_void) as *mut pg_sys::Query;
    }
    if !visit_query(parse, true) {
        return plan(parse, query_string, cursor_options, bound);
    }
    IN_USE.with(|u| u.set(true));
    let stmt = plan(parse, query_string, cursor_options, bound);
    if (*stmt).parallelModeNeeded {
        if original.is_null() {
            // parallel_possible() covers every statement PostgreSQL 15 may plan in parallel;
            // should that ever change, fail rather than hand workers a parameter they lack.
            error!("pg_tenancy: a parallel plan for a statement not expected to have one");
        }
        return plan(original, query_string, cursor_options, bound);
    }
    stmt
}

/// Finds (and with `replace`, replaces) the policy subqueries in the security quals of the
/// statement's relations and in its WITH CHECK options (INSERT, UPDATE, ON CONFLICT), of its
/// subqueries in FROM (views included) and of its CTEs, and returns whether there was one.
/// WITH CHECK options are compiled by ModifyTable with the statement's parameter list, like
/// any qual of the plan. Subqueries elsewhere (in WHERE, in the select list, inside
/// policies) are left as written: their policies stay InitPlans, which is correct, only slower.
/// Plain Rust over the parse tree, no PostgreSQL calls: it runs for every planned statement.
unsafe fn visit_query(q: *mut pg_sys::Query, replace: bool) -> bool {
    let mut found = false;
    for_each_cell((*q).rtable, |cell| {
        let rte = *cell as *mut pg_sys::RangeTblEntry;
        if rte.is_null() {
            return;
        }
        for_each_cell((*rte).securityQuals, |c| found |= in_qual(c, replace));
        if (*rte).rtekind == pg_sys::RTEKind::RTE_SUBQUERY && !(*rte).subquery.is_null() {
            found |= visit_query((*rte).subquery, replace);
        }
    });
    for_each_cell((*q).withCheckOptions, |cell| {
        let wco = *cell as *mut pg_sys::WithCheckOption;
        if !wco.is_null() && (*wco).type_ == pg_sys::NodeTag::T_WithCheckOption {
            found |= in_qual(std::ptr::addr_of_mut!((*wco).qual).cast(), replace);
        }
    });
    for_each_cell((*q).cteList, |cell| {
        let cte = *cell as *mut pg_sys::CommonTableExpr;
        if !cte.is_null() {
            let sub = (*cte).ctequery;
            if !sub.is_null() && (*sub).type_ == pg_sys::NodeTag::T_Query {
                found |= visit_query(sub as *mut pg_sys::Query, replace);
            }
        }
    });
    found
}

unsafe fn for_each_cell(list: *mut pg_sys::List, mut f: impl FnMut(*mut *mut c_void)) {
    if list.is_null() {
        return;
    }
    for i in 0..(*list).length as usize {
        f(&mut (*(*list).elements.add(i)).ptr_value);
    }
}

/// A security qual is a policy's expression, or permissive policies ORed together; the policy
/// subquery is an operand of the comparison with the tenant column.
unsafe fn in_qual(cell: *mut *mut c_void, replace: bool) -> bool {
    let node = *cell as *mut pg_sys::Node;
    if node.is_null() {
        return false;
    }
    let mut found = false;
    match (*node).type_ {
        pg_sys::NodeTag::T_BoolExpr => {
            for_each_cell((*(node as *mut pg_sys::BoolExpr)).args, |c| {
                found |= in_qual(c, replace)
            })
        }
        pg_sys::NodeTag::T_OpExpr => for_each_cell((*(node as *mut pg_sys::OpExpr)).args, |c| {
            if let Some((relid, privilege)) = policy_subquery(*c as *mut pg_sys::Node) {
                if let Some(id) = reserve(relid, privilege) {
                    found = true;
                    if replace {
                        *c = reserved_param(id) as *mut c_void;
                    }
                }
            }
        }),
        _ => {}
    }
    found
}

/// `(SELECT tenancy.allowed_tenant('<table>'::regclass, '<privilege>'))` exactly as the generated
/// policies write it, and nothing else: its table and privilege.
unsafe fn policy_subquery(node: *mut pg_sys::Node) -> Option<(pg_sys::Oid, &'static str)> {
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
    let f = (*tle).expr as *mut pg_sys::Node;
    if (*f).type_ != pg_sys::NodeTag::T_FuncExpr {
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

/// Whether `funcid` is pg_tenancy's `tenancy.allowed_tenant(regclass, text)`, this library's C
/// function (checked in the catalog, not by a remembered oid that a re-created extension would
/// have changed).
unsafe fn is_allowed_tenant(funcid: pg_sys::Oid) -> bool {
    if ALLOWED_TENANT.with(|a| a.get()) == Some(funcid) {
        return true;
    }
    let ours = check_allowed_tenant(funcid);
    if ours {
        ALLOWED_TENANT.with(|a| a.set(Some(funcid)));
    }
    ours
}

#[pg_guard]
unsafe extern "C-unwind" fn proc_invalidated(_arg: pg_sys::Datum, _cache: c_int, _hash: u32) {
    ALLOWED_TENANT.with(|a| a.set(None));
}

unsafe fn check_allowed_tenant(funcid: pg_sys::Oid) -> bool {
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

/// The reserved number of (table, privilege) in this backend.
pub(crate) fn reserve(relid: pg_sys::Oid, privilege: &'static str) -> Option<i32> {
    RESERVED.with(|r| {
        let mut r = r.borrow_mut();
        let i = match r.iter().position(|(o, p)| *o == relid && *p == privilege) {
            Some(i) => i,
            None if r.len() < MAX_RESERVED => {
                r.push((relid, privilege));
                r.len() - 1
            }
            None => return None,
        };
        Some(RESERVED_BASE + i as i32)
    })
}

fn reserved(paramid: i32) -> Option<(pg_sys::Oid, &'static str)> {
    let i = usize::try_from(paramid.checked_sub(RESERVED_BASE)?).ok()?;
    RESERVED.with(|r| r.borrow().get(i).copied())
}

pub(crate) unsafe fn reserved_param(paramid: i32) -> *mut pg_sys::Param {
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

/// After a parameter list's entries, a wrapper keeps the compile hook it replaced.
type Trailer = pg_sys::ParamCompileHook;

unsafe fn entries_end(numparams: usize) -> usize {
    std::mem::offset_of!(pg_sys::ParamListInfoData, params)
        + numparams * std::mem::size_of::<pg_sys::ParamExternData>()
}

thread_local! {
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
    /// What the pillars do at the start of every query (src/lifecycle: the resource limits
    /// and the tenant's write lock), registered at _PG_init.
    static QUERY_START: RefCell<Vec<fn(bool)>> = const { RefCell::new(Vec::new()) };
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

#[pg_guard]
unsafe extern "C-unwind" fn executor_start(qd: *mut pg_sys::QueryDesc, eflags: c_int) {
    if pg_sys::ParallelWorkerNumber < 0 {
        // Every query, also the ones a function or a DO block runs inside one long statement,
        // reads revocations committed before it started: the binding is checked again when
        // pg_tenancy's catalog changed (binding::with_current). Without messages waiting this
        // is one unlocked read of a flag.
        pg_sys::AcceptInvalidationMessages();
        // Resource limits hold from the start of every query of a bound session, before a
        // parallel plan fixes its workers' settings (src/lifecycle/limits.rs).
        // Not again for the queries these run themselves (the tenant's row, on a cache miss).
        if !pg_sys::IsInParallelMode() && !IN_HOOK.with(|h| h.replace(true)) {
            let _done = HookDone;
            let writes = (*qd).operation != pg_sys::CmdType::CMD_SELECT
                || (*(*qd).plannedstmt).hasModifyingCTE;
            for f in QUERY_START.with(|q| q.borrow().clone()) {
                f(writes);
            }
        }
    }
    if IN_USE.with(|u| u.get()) && pg_sys::ParallelWorkerNumber < 0 {
        (*qd).params = wrap((*qd).params);
    }
    match PREV_EXECUTOR_START {
        // SAFETY: as for the planner hook above.
        Some(prev) => pg_sys::ffi::pg_guard_ffi_boundary(|| prev(qd, eflags)),
        None => pg_sys::standard_ExecutorStart(qd, eflags),
    }
}

/// A copy of `orig` (entries, fetch hook and arguments alike) whose compile hook is
/// [`compile_param`]; `orig`'s compile hook is kept after the entries.
pub(crate) unsafe fn wrap(orig: pg_sys::ParamListInfo) -> pg_sys::ParamListInfo {
    // Never wrap a wrapper: its compile hook would call itself.
    if !orig.is_null() && is_ours((*orig).paramCompile) {
        return orig;
    }
    let n = if orig.is_null() {
        0
    } else {
        (*orig).numParams.max(0) as usize
    };
    let end = entries_end(n);
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
}

#[pg_guard]
unsafe extern "C-unwind" fn compile_param(
    params: pg_sys::ParamListInfo,
    param: *mut pg_sys::Param,
    state: *mut pg_sys::ExprState,
    resv: *mut pg_sys::Datum,
    resnull: *mut bool,
) {
    let id = (*param).paramid;
    let mut step: pg_sys::ExprEvalStep = std::mem::zeroed();
    step.resvalue = resv;
    step.resnull = resnull;
    if id >= RESERVED_BASE {
        let Some((relid, privilege)) = reserved(id) else {
            error!("pg_tenancy: parameter ${id} is reserved and unknown in this backend");
        };
        // In the executor's per-query memory: it lives as long as the statement's plan state.
        let r = pg_sys::palloc0(std::mem::size_of::<Reserved>()) as *mut Reserved;
        r.write(Reserved {
            relid,
            privilege,
            pending: true,
            tenant: [0; 16],
        });
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
        pg_sys::ExprEvalPushStep(state, &step);
        return;
    }
    let n = (*params).numParams.max(0) as usize;
    let trailer = ((params as *mut u8).add(entries_end(n)) as *mut Trailer).read();
    match trailer {
        Some(orig_compile) => orig_compile(params, param, state, resv, resnull),
        None => {
            // What ExecInitExprRec emits for an external parameter without a compile hook.
            step.opcode = pg_sys::ExprEvalOp::EEOP_PARAM_EXTERN as isize;
            step.d.param = pg_sys::ExprEvalStep__bindgen_ty_1__bindgen_ty_12 {
                paramid: id,
                paramtype: (*param).paramtype,
            };
            pg_sys::ExprEvalPushStep(state, &step);
        }
    }
}

/// A reserved parameter's evaluation: the first one in a compiled expression computes the
/// value, every one returns it. Without pgrx's guard (a `sigsetjmp`): it only reads and writes
/// memory, and computes the value in the guarded [`compute_reserved`] (whose errors leave
/// through this frame, which owns nothing to drop).
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
        *(*op).resnull = false;
    }
}

/// What `allowed_tenant` computes, once per compiled expression: the bound tenant, or its error.
#[pg_guard]
unsafe extern "C-unwind" fn compute_reserved(r: *mut Reserved) {
    let r = &mut *r;
    let value = RESERVED_VALUE
        .with(|v| v.get())
        .expect("pg_tenancy registers the reserved parameters' value at load");
    r.tenant = value(r.relid, r.privilege);
    r.pending = false;
}
