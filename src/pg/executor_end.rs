//! The ExecutorEnd hook: tells one registered observer (telemetry) which relations a finished
//! statement read and wrote and how many rows it processed, read from the QueryDesc with no
//! SQL. Nothing else is done here, and nothing when no observer wants the statement.

use pgrx::pg_sys;
use pgrx::prelude::*;

/// A relation a finished statement used: read (SELECT privilege checked) and/or written (a
/// result relation of INSERT, UPDATE, DELETE or MERGE, at the top or in a WITH).
#[derive(Clone, Copy, Debug)]
pub struct Touched {
    pub relid: u32,
    pub read: bool,
    pub written: bool,
}

/// The observer: whether it wants statements now (cheap: called for every statement), and
/// what it does with one (the statement wrote when `writes`; `processed` rows).
#[derive(Clone, Copy)]
pub struct Observer {
    pub wanted: fn() -> bool,
    pub finished: fn(writes: bool, processed: u64, touched: &[Touched]),
}

static mut OBSERVER: Option<Observer> = None;
static mut PREV_EXECUTOR_END: pg_sys::ExecutorEnd_hook_type = None;

/// Install the hook with its observer (once, from _PG_init).
pub fn observe(observer: Observer) {
    // SAFETY: called once from _PG_init, on the backend's only thread, before any statement
    // runs: the hook installed before ours is kept and called from ours; our function stays
    // valid for the life of the backend (the library is not unloaded).
    unsafe {
        OBSERVER = Some(observer);
        PREV_EXECUTOR_END = pg_sys::ExecutorEnd_hook;
        pg_sys::ExecutorEnd_hook = Some(executor_end);
    }
}

/// # Safety
/// Called by PostgreSQL as `ExecutorEnd_hook`, with the QueryDesc of a statement that ran
/// (or was started for EXPLAIN only).
#[pg_guard]
unsafe extern "C-unwind" fn executor_end(qd: *mut pg_sys::QueryDesc) {
    // SAFETY: OBSERVER is written once by `observe`, before any statement runs, on the
    // backend's only thread; it is copied out here.
    if let Some(o) = unsafe { OBSERVER } {
        // SAFETY: ParallelWorkerNumber is this process's own variable, read on its only thread.
        let leader = unsafe { pg_sys::ParallelWorkerNumber } < 0;
        if leader && (o.wanted)() {
            // SAFETY: `qd` is the finished statement's QueryDesc (this function's contract):
            // read before standard_ExecutorEnd frees its executor state.
            if let Some((writes, processed, touched)) = unsafe { finished(qd) } {
                (o.finished)(writes, processed, &touched);
            }
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

/// What the statement did: whether it wrote, the rows it processed, and the relations it
/// read or wrote. None for EXPLAIN without ANALYZE (nothing ran).
///
/// # Safety
/// `qd` must be a QueryDesc whose executor state has not been freed yet.
unsafe fn finished(qd: *mut pg_sys::QueryDesc) -> Option<(bool, u64, Vec<Touched>)> {
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
        // The top-level statement wrote (its rows are `es_processed`); a SELECT with a
        // data-modifying WITH writes too, but PostgreSQL keeps no count of those rows.
        let writes = (*qd).operation != pg_sys::CmdType::CMD_SELECT;
        let results = (*stmt).resultRelations;
        let written = |index: i32| -> bool {
            !results.is_null()
                && (0..(*results).length as usize)
                    .any(|i| (*(*results).elements.add(i)).int_value == index)
        };
        let rtable = (*stmt).rtable;
        let mut touched = Vec::new();
        if !rtable.is_null() {
            for i in 0..(*rtable).length as usize {
                let rte = (*(*rtable).elements.add(i)).ptr_value as *mut pg_sys::RangeTblEntry;
                if rte.is_null() || (*rte).rtekind != pg_sys::RTEKind::RTE_RELATION {
                    continue;
                }
                let read = (*rte).requiredPerms & pg_sys::ACL_SELECT != 0;
                // Result relations of every ModifyTable, a data-modifying WITH's included.
                let wrote = written(i as i32 + 1);
                if read || wrote {
                    touched.push(Touched {
                        relid: u32::from((*rte).relid),
                        read,
                        written: wrote,
                    });
                }
            }
        }
        Some((writes, (*estate).es_processed, touched))
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
    unsafe {
        SUBXACT = Some(f);
        pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
    }
}

/// # Safety
/// Called by PostgreSQL at the subtransactions' events, as registered by [`on_subxact`].
#[pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    _my_subid: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    let e = match event {
        SUBXACT_EVENT_START_SUB => SubXact::Start,
        SUBXACT_EVENT_COMMIT_SUB => SubXact::Commit,
        SUBXACT_EVENT_ABORT_SUB => SubXact::Abort,
        _ => return,
    };
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
