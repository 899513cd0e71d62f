//! The ExecutorEnd hook: tells one registered observer (telemetry) which relations a finished
//! statement read and wrote and how many rows it processed, read from the QueryDesc with no
//! SQL. Nothing else is done here, and nothing when no observer wants the statement.
//!
//! A statement may run in several steps (a cursor's FETCHes, a portal executed a few rows at a
//! time), and PostgreSQL 15 counts only the last step's rows in `es_processed` (16 adds
//! `es_total_processed` for this): an ExecutorRun hook adds up every step's rows, so that a
//! FETCH ALL followed by an empty FETCH still counts every row the cursor returned.

use pgrx::pg_sys;
use pgrx::prelude::*;

/// A relation a finished statement used: read (SELECT privilege checked) and/or written (a
/// result relation of INSERT, UPDATE, DELETE or MERGE, at the top or in a WITH); `counted`:
/// a result relation of the top-level statement, whose rows are the statement's processed
/// rows (PostgreSQL keeps no count of a data-modifying WITH's rows).
#[derive(Clone, Copy, Debug)]
pub struct Touched {
    pub relid: u32,
    pub read: bool,
    pub written: bool,
    pub counted: bool,
}

/// The observer: whether it wants statements now (cheap: called for every statement), and
/// what it does with one (`processed` rows: returned by a SELECT, written by the top-level
/// INSERT, UPDATE, DELETE or MERGE).
#[derive(Clone, Copy)]
pub struct Observer {
    pub wanted: fn() -> bool,
    pub finished: fn(processed: u64, touched: &[Touched]),
}

static mut OBSERVER: Option<Observer> = None;
/// The binding's check before a later run, and whether a binding is in force now
/// ([`before_later_runs`]).
static mut LATER_RUN: Option<LaterRun> = None;

/// What [`before_later_runs`] registers: the check, and whether a binding is in force now.
type LaterRun = (fn(bool), fn() -> bool);
static mut PREV_EXECUTOR_END: pg_sys::ExecutorEnd_hook_type = None;
static mut PREV_EXECUTOR_RUN: pg_sys::ExecutorRun_hook_type = None;

/// Rows processed so far by a statement that has run and not ended yet.
struct Run {
    /// The address of its QueryDesc.
    key: usize,
    rows: u64,
    /// The subtransaction depth it first ran at (see [`DEPTH`]).
    depth: u32,
}

thread_local! {
    /// The statements that have run and not ended yet (a few at most: one per open cursor or
    /// portal). A statement that fails never reaches ExecutorEnd: its portal is marked failed
    /// and dropped without it. Its entry must go then, or the next statement whose QueryDesc
    /// PostgreSQL allocates at the same address (likely: allocation is deterministic) would add
    /// the failed statement's rows to its own. A failure ends the transaction or the
    /// subtransaction it happened in: the entries of an aborted subtransaction go with it
    /// ([`subxact_callback`]), the rest at the end of the transaction ([`forget_runs`]).
    static RUNS: std::cell::RefCell<Vec<Run>> = const { std::cell::RefCell::new(Vec::new()) };
    /// How many subtransactions are open (0 at the transaction's own level).
    static DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    /// The statements started and not ended ([`started`]): a few at most (one per open
    /// cursor or portal, and the ones a statement's start runs itself, a hook's catalog read).
    /// A failed statement never ends: its entry goes with the (sub)transaction that failed, or
    /// when a new statement starts at its address and replaces it.
    static STARTED: std::cell::RefCell<Vec<Started>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A statement the executor started.
struct Started {
    /// The address of its QueryDesc.
    key: usize,
    /// When the top-level statement (or protocol message) that started it began.
    at: i64,
    /// Whether a binding was in force when it started.
    bound: bool,
    /// Whether it has run.
    ran: bool,
    /// The subtransaction depth it started at (see [`DEPTH`]).
    depth: u32,
}

/// `check(bound_at_start)` runs before every run of a statement but its first, when that
/// comes within the top-level statement (or protocol message) that started it: a cursor's
/// FETCH (from SQL, PL/pgSQL or the protocol's Execute of a portal, Bind's start then
/// Execute's run included), a SQL function's next row. Such a run reads with the plan made
/// when the statement started; `check` may refuse. `bound` tells whether a binding is in force
/// (read at every start: cheap). Once, from _PG_init.
pub fn before_later_runs(check: fn(bool), bound: fn() -> bool) {
    // SAFETY: called once from _PG_init, on the backend's only thread, before any statement
    // runs.
    unsafe { LATER_RUN = Some((check, bound)) };
}

/// The executor started the statement of `qd` (from the ExecutorStart hook, in the leader).
pub fn started(qd: *mut pg_sys::QueryDesc) {
    // SAFETY: LATER_RUN is written once by `before_later_runs` before any statement runs.
    let Some((_, bound)) = (unsafe { LATER_RUN }) else {
        return;
    };
    let entry = Started {
        key: qd as usize,
        at: super::unguarded::statement_start(),
        bound: bound(),
        ran: false,
        depth: DEPTH.with(|d| d.get()),
    };
    STARTED.with(|s| {
        let mut s = s.borrow_mut();
        s.retain(|e| e.key != entry.key);
        s.push(entry);
    });
}

/// Before a run of `key`'s statement: None for its first run within the top-level statement
/// that started it, else whether a binding was in force when it started. None too for a
/// statement not seen starting: one started before pg_tenancy was loaded in this backend (the
/// library is loaded by the first call of one of its functions, inside a statement's start),
/// when no binding can have been in force.
fn later_run(key: usize) -> Option<bool> {
    let now = super::unguarded::statement_start();
    STARTED.with(|s| {
        let mut s = s.borrow_mut();
        match s.iter_mut().find(|e| e.key == key) {
            Some(e) if !e.ran && e.at == now => {
                e.ran = true;
                None
            }
            Some(e) => {
                e.ran = true;
                Some(e.bound)
            }
            None => None,
        }
    })
}

/// Install the hooks with their observer (once, from _PG_init).
pub fn observe(observer: Observer) {
    // SAFETY: called once from _PG_init, on the backend's only thread, before any statement
    // runs: the hooks installed before ours are kept and called from ours; our functions stay
    // valid for the life of the backend (the library is not unloaded).
    unsafe {
        OBSERVER = Some(observer);
        PREV_EXECUTOR_END = pg_sys::ExecutorEnd_hook;
        pg_sys::ExecutorEnd_hook = Some(executor_end);
        PREV_EXECUTOR_RUN = pg_sys::ExecutorRun_hook;
        pg_sys::ExecutorRun_hook = Some(executor_run);
    }
}

/// The transaction ended: no statement of it is running any more.
pub fn forget_runs() {
    RUNS.with(|r| r.borrow_mut().clear());
    DEPTH.with(|d| d.set(0));
    STARTED.with(|s| s.borrow_mut().clear());
}

/// A subtransaction started, committed or aborted: keep [`DEPTH`], and forget the statements
/// that first ran in an aborted one (their portals were dropped with it, ended or not). The
/// statements of a committed one now belong to its parent: their portals live on there.
fn track_subxact(e: SubXact) {
    let depth = DEPTH.with(|d| d.get());
    match e {
        SubXact::Start => DEPTH.with(|d| d.set(depth + 1)),
        SubXact::Commit | SubXact::Abort => {
            let parent = depth.saturating_sub(1);
            RUNS.with(|r| {
                let mut r = r.borrow_mut();
                if e == SubXact::Abort {
                    r.retain(|run| run.depth < depth);
                    STARTED.with(|s| s.borrow_mut().retain(|e| e.depth < depth));
                } else {
                    for run in r.iter_mut().filter(|run| run.depth > parent) {
                        run.depth = parent;
                    }
                    STARTED.with(|s| {
                        for e in s.borrow_mut().iter_mut().filter(|e| e.depth > parent) {
                            e.depth = parent;
                        }
                    });
                }
            });
            DEPTH.with(|d| d.set(parent));
        }
    }
}

/// Whether the observer wants this process's statements now.
fn wanted() -> Option<Observer> {
    // SAFETY: OBSERVER is written once by `observe`, before any statement runs, on the
    // backend's only thread; it is copied out here. ParallelWorkerNumber is this process's own
    // variable, read on its only thread.
    unsafe { OBSERVER.filter(|o| pg_sys::ParallelWorkerNumber < 0 && (o.wanted)()) }
}

/// # Safety
/// Called by PostgreSQL as `ExecutorRun_hook`, with the QueryDesc of a started statement.
#[pg_guard]
unsafe extern "C-unwind" fn executor_run(
    qd: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
    execute_once: bool,
) {
    // SAFETY: ParallelWorkerNumber is this process's own variable, read on its only thread.
    if unsafe { pg_sys::ParallelWorkerNumber } < 0 {
        // SAFETY: LATER_RUN is written once by `before_later_runs` before any statement runs.
        if let (Some(bound), Some((check, _))) = (later_run(qd as usize), unsafe { LATER_RUN }) {
            check(bound);
        }
    }
    // SAFETY: PREV_EXECUTOR_RUN is written once by `observe` before any statement runs.
    match unsafe { PREV_EXECUTOR_RUN } {
        // SAFETY: the hook installed before ours, called with our own arguments through the
        // FFI guard (its errors come back as a Rust panic, re-raised by #[pg_guard]).
        Some(prev) => unsafe {
            pg_sys::ffi::pg_guard_ffi_boundary(|| prev(qd, direction, count, execute_once))
        },
        // SAFETY: the standard implementation, with the arguments PostgreSQL gave us.
        None => unsafe { pg_sys::standard_ExecutorRun(qd, direction, count, execute_once) },
    }
    if wanted().is_none() {
        return;
    }
    // SAFETY: `qd` is the statement's QueryDesc (this function's contract), its executor state
    // valid until ExecutorEnd; checked for null before it is read.
    let n = unsafe {
        if qd.is_null() || (*qd).estate.is_null() {
            return;
        }
        (*(*qd).estate).es_processed
    };
    let key = qd as usize;
    RUNS.with(|r| {
        let mut r = r.borrow_mut();
        match r.iter_mut().find(|run| run.key == key) {
            Some(run) => run.rows += n,
            None => r.push(Run {
                key,
                rows: n,
                depth: DEPTH.with(|d| d.get()),
            }),
        }
    });
}

/// # Safety
/// Called by PostgreSQL as `ExecutorEnd_hook`, with the QueryDesc of a statement that ran
/// (or was started for EXPLAIN only).
#[pg_guard]
unsafe extern "C-unwind" fn executor_end(qd: *mut pg_sys::QueryDesc) {
    // Every step's rows (see the module's documentation); a statement that started while the
    // observer did not want it has no entry, and its last step's rows are what is known.
    let key = qd as usize;
    STARTED.with(|s| s.borrow_mut().retain(|e| e.key != key));
    let steps = RUNS.with(|r| {
        let mut r = r.borrow_mut();
        let i = r.iter().position(|run| run.key == key)?;
        Some(r.swap_remove(i).rows)
    });
    if let Some(o) = wanted() {
        // SAFETY: `qd` is the finished statement's QueryDesc (this function's contract):
        // read before standard_ExecutorEnd frees its executor state.
        if let Some((processed, touched)) = unsafe { finished(qd) } {
            (o.finished)(steps.unwrap_or(processed), &touched);
        }
    }
    // SAFETY: PREV_EXECUTOR_END is written once by `observe` before any statement runs.
    match unsafe { PREV_EXECUTOR_END } {
        // SAFETY: the hook installed before ours, called with our own argument through the
        // FFI guard (its errors come back as a Rust panic, re-raised by #[pg_guard]).
        Some(prev) => unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| prev(qd)) },
        // SAFETY: the standard implementation, with the QueryDesc PostgreSQL gave us.
        None => unsafe { pg_sys::standard_ExecutorEnd(qd) },
    }
}

/// The relations one statement touched: a few, kept inline (no allocation per statement).
type TouchedList = smallvec::SmallVec<[Touched; 4]>;

/// What the statement did: the rows it processed, and the relations it read or wrote. None
/// for EXPLAIN without ANALYZE (nothing ran).
///
/// # Safety
/// `qd` must be a QueryDesc whose executor state has not been freed yet.
unsafe fn finished(qd: *mut pg_sys::QueryDesc) -> Option<(u64, TouchedList)> {
    // SAFETY: the QueryDesc, its planned statement and executor state are valid until
    // standard_ExecutorEnd (this function's contract); each pointer is checked for null
    // before it is read; a List's `elements` hold `length` cells, of pointers (the range
    // table: RangeTblEntry) or ints (resultRelations: range table indexes from 1).
    unsafe {
        if qd.is_null() || (*qd).estate.is_null() || (*qd).plannedstmt.is_null() {
            return None;
        }
        let estate = (*qd).estate;
        if (*estate).es_top_eflags & pg_sys::EXEC_FLAG_EXPLAIN_ONLY as i32 != 0 {
            return None;
        }
        let stmt = (*qd).plannedstmt;
        let has = |list: *mut pg_sys::List, index: i32| -> bool {
            !list.is_null()
                && (0..(*list).length as usize)
                    .any(|i| (*(*list).elements.add(i)).int_value == index)
        };
        // Result relations of every ModifyTable, a data-modifying WITH's included.
        let results = (*stmt).resultRelations;
        // The top-level statement's own: its plan's root is a ModifyTable (its rows are
        // `es_processed`); a data-modifying WITH's ModifyTable sits in a subplan.
        let top = (*stmt).planTree;
        let (top_results, top_root) = if (*qd).operation != pg_sys::CmdType::CMD_SELECT
            && !top.is_null()
            && (*top).type_ == pg_sys::NodeTag::T_ModifyTable
        {
            let m = top as *mut pg_sys::ModifyTable;
            ((*m).resultRelations, (*m).rootRelation as i32)
        } else {
            (std::ptr::null_mut(), 0)
        };
        let rtable = (*stmt).rtable;
        let mut touched = TouchedList::new();
        if !rtable.is_null() {
            for i in 0..(*rtable).length as usize {
                let rte = (*(*rtable).elements.add(i)).ptr_value as *mut pg_sys::RangeTblEntry;
                if rte.is_null() || (*rte).rtekind != pg_sys::RTEKind::RTE_RELATION {
                    continue;
                }
                let read = (*rte).requiredPerms & pg_sys::ACL_SELECT != 0;
                let index = i as i32 + 1;
                let wrote = has(results, index) || index == top_root && top_root != 0;
                if read || wrote {
                    touched.push(Touched {
                        relid: u32::from((*rte).relid),
                        read,
                        written: wrote,
                        counted: has(top_results, index) || index == top_root && top_root != 0,
                    });
                }
            }
        }
        Some(((*estate).es_processed, touched))
    }
}

/// A subtransaction's event, for [`on_subxact`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SubXact {
    Start,
    Commit,
    Abort,
}

static mut SUBXACT: Option<fn(SubXact)> = None;

/// Calls `f` when a subtransaction starts, commits or aborts (once, from _PG_init).
pub fn on_subxact(f: fn(SubXact)) {
    // SAFETY: called once from _PG_init, on the backend's only thread, before any statement
    // runs; the callback stays valid for the life of the backend.
    unsafe { SUBXACT = Some(f) };
    super::hooks::at_subtransaction_event(subxact_callback);
}

/// At the subtransactions' events, as registered by [`on_subxact`].
fn subxact_callback(event: pg_sys::SubXactEvent::Type, _my_subid: pg_sys::SubTransactionId) {
    use pg_sys::SubXactEvent::*;
    let e = match event {
        SUBXACT_EVENT_START_SUB => SubXact::Start,
        SUBXACT_EVENT_COMMIT_SUB => SubXact::Commit,
        SUBXACT_EVENT_ABORT_SUB => SubXact::Abort,
        _ => return,
    };
    track_subxact(e);
    // SAFETY: SUBXACT is written once by `on_subxact` before any statement runs.
    if let Some(f) = unsafe { SUBXACT } {
        f(e);
    }
}

/// This backend's index among PostgreSQL's process slots (`MyProc->pgprocno`), None outside a
/// backend with one.
pub fn my_procno() -> Option<usize> {
    // SAFETY: MyProc is this process's own PGPROC pointer (null before it has one); read on
    // the backend's only thread.
    unsafe {
        let p = pg_sys::MyProc;
        (!p.is_null()).then(|| (*p).pgprocno as usize)
    }
}

/// Runs `f` when this backend exits (normally or by FATAL), before it leaves shared memory.
pub fn at_exit(f: extern "C-unwind" fn(i32, pg_sys::Datum)) {
    // SAFETY: registers a callback PostgreSQL calls once, at exit, with our argument; the
    // function stays valid for the life of the backend (the library is not unloaded).
    unsafe { pg_sys::before_shmem_exit(Some(f), pg_sys::Datum::from(0)) };
}
