//! PostgreSQL's utility hook and transaction callbacks, and the registry of what the pillars do
//! in them.
//!
//! The pillars above register plain functions at `_PG_init` (`before_utility`,
//! `after_utility`, `at_transaction_event`, `at_subtransaction_event`); this module owns the
//! hook and the one transaction and one subtransaction callback registered with PostgreSQL,
//! and calls the hook installed before it through pgrx's FFI guard, so none of them depends on
//! another through the hook. One callback for all of them enters pgrx's guard once per event
//! (a statement in autocommit has two, COMMIT and its PRE_COMMIT), not once per pillar.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};

/// Called with a utility statement's parse tree before (and after) it runs.
pub type UtilityCallback = fn(*mut pg_sys::Node);

thread_local! {
    static BEFORE: RefCell<Vec<UtilityCallback>> = const { RefCell::new(Vec::new()) };
    static AFTER: RefCell<Vec<UtilityCallback>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` before every utility statement (it may refuse it by raising, or change the
/// statement: the tree is this call's own).
pub fn before_utility(f: UtilityCallback) {
    BEFORE.with(|b| b.borrow_mut().push(f));
}

/// Run `f` after every utility statement that did not fail.
pub fn after_utility(f: UtilityCallback) {
    AFTER.with(|b| b.borrow_mut().push(f));
}

thread_local! {
    /// The tags of the utility statements running now, outermost first.
    static RUNNING: RefCell<Vec<pg_sys::NodeTag>> = const { RefCell::new(Vec::new()) };
}

thread_local! {
    /// The query text of the utility statement handed to the `before_utility` callbacks now,
    /// and the statement's place in it (PlannedStmt's `stmt_location`, `stmt_len`).
    static TEXT: Cell<(*const std::ffi::c_char, i32, i32)> =
        const { Cell::new((std::ptr::null(), -1, 0)) };
}

thread_local! {
    /// Whether a `before_utility` callback asked for the statement's own text alone to be
    /// passed on ([`pass_on_the_statements_text_alone`]).
    static TEXT_ALONE: Cell<bool> = const { Cell::new(false) };
}

/// For a `before_utility` callback: the statement's own text (its part of the query text it
/// came in), or None when there is no text.
pub fn statement_text() -> Option<String> {
    let (text, location, len) = TEXT.with(|t| t.get());
    if text.is_null() {
        return None;
    }
    // SAFETY: the query text PostgreSQL passed to the utility hook, NUL-terminated, valid while
    // the hook's callbacks run (TEXT is read by them only).
    let whole = unsafe { std::ffi::CStr::from_ptr(text) }.to_bytes();
    let (start, end) = statement_span(whole.len(), location, len);
    Some(String::from_utf8_lossy(&whole[start..end]).into_owned())
}

/// Where a statement lies in a query text of `whole` bytes (`stmt_location` -1: unknown, the
/// whole text; `stmt_len` 0: to the end).
fn statement_span(whole: usize, location: i32, len: i32) -> (usize, usize) {
    let start = usize::try_from(location).unwrap_or(0).min(whole);
    let end = match usize::try_from(len) {
        Ok(n) if n > 0 => (start + n).min(whole),
        _ => whole,
    };
    (start, end)
}

thread_local! {
    /// Whether a `before_utility` callback asked for the statement to skip the hooks installed
    /// before pg_tenancy's ([`run_past_the_hooks_before`]).
    static PAST_HOOKS: Cell<bool> = const { Cell::new(false) };
}

/// For a `before_utility` callback: run the statement with PostgreSQL's own ProcessUtility,
/// past the hooks installed before pg_tenancy's (Citus's among them), which then do not see it.
pub fn run_past_the_hooks_before() {
    PAST_HOOKS.with(|t| t.set(true));
}

/// For a `before_utility` callback: pass the statement on (to the hooks installed before
/// pg_tenancy's, Citus's among them, and to PostgreSQL) with its own text as the query text,
/// not the whole text it came in with the other statements beside it.
pub fn pass_on_the_statements_text_alone() {
    TEXT_ALONE.with(|t| t.set(true));
}

/// Whether a utility statement of one of `tags` is running now (this statement, or one that
/// the code running now was reached from: an event trigger of a DROP, say).
pub fn running(tags: &[pg_sys::NodeTag]) -> bool {
    RUNNING.with(|r| r.borrow().iter().any(|t| tags.contains(t)))
}

/// Pops the statement's tag when the statement ends, by returning or by an error unwinding
/// through the hook.
struct Running;
impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.with(|r| {
            r.borrow_mut().pop();
        });
    }
}

/// Called at each of the transaction's events.
pub type XactCallback = fn(pg_sys::XactEvent::Type);
/// Called at each of a subtransaction's events, with the subtransaction's id.
pub type SubXactCallback = fn(pg_sys::SubXactEvent::Type, pg_sys::SubTransactionId);

/// At most this many of each (the pillars register five and four).
const CALLBACKS: usize = 8;

thread_local! {
    static XACT: Cell<([Option<XactCallback>; CALLBACKS], usize)> =
        const { Cell::new(([None; CALLBACKS], 0)) };
    static SUBXACT: Cell<([Option<SubXactCallback>; CALLBACKS], usize)> =
        const { Cell::new(([None; CALLBACKS], 0)) };
}

/// Run `f` at each of the transaction's events (from _PG_init). The functions registered run
/// latest first, as PostgreSQL runs its own list of callbacks (and ran the pillars' when each
/// registered one of its own); an error raised by one ends the event's callbacks there, as in
/// PostgreSQL's list.
pub fn at_transaction_event(f: XactCallback) {
    XACT.with(|x| {
        let (mut fs, n) = x.get();
        assert!(n < CALLBACKS, "pg_tenancy: too many transaction callbacks");
        if n == 0 {
            // SAFETY: called from _PG_init, before any transaction event; the callback stays
            // valid for the backend's life.
            unsafe { pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut()) };
        }
        fs[n] = Some(f);
        x.set((fs, n + 1));
    });
}

/// Run `f` at each of a subtransaction's events (from _PG_init), as [`at_transaction_event`].
pub fn at_subtransaction_event(f: SubXactCallback) {
    SUBXACT.with(|x| {
        let (mut fs, n) = x.get();
        assert!(
            n < CALLBACKS,
            "pg_tenancy: too many subtransaction callbacks"
        );
        if n == 0 {
            // SAFETY: as in at_transaction_event.
            unsafe {
                pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut())
            };
        }
        fs[n] = Some(f);
        x.set((fs, n + 1));
    });
}

/// The transaction callback: every registered function, latest first.
///
/// # Safety
/// Called by PostgreSQL at the transaction's events, as registered by [`at_transaction_event`].
#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    let (fs, n) = XACT.with(|x| x.get());
    for f in fs[..n].iter().rev().flatten() {
        f(event);
    }
}

/// The subtransaction callback: every registered function, latest first.
///
/// # Safety
/// Called by PostgreSQL at the subtransactions' events, as registered by
/// [`at_subtransaction_event`].
#[pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    let (fs, n) = SUBXACT.with(|x| x.get());
    for f in fs[..n].iter().rev().flatten() {
        f(event, my_subid);
    }
}

thread_local! {
    /// How many utility statements are running now, one inside another (subcommands that
    /// PostgreSQL makes of one statement not counted): counted before the callbacks run.
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// How many utility statements are running now, one inside another: 1 inside a top-level
/// statement's callbacks and event triggers, 2 inside those of a statement that code it
/// reached runs. PostgreSQL's own subcommands of a statement count as that statement.
pub fn utility_depth() -> usize {
    DEPTH.with(|d| d.get())
}

/// Counts one running utility statement until it ends (also when it raises).
struct Depth(bool);
impl Drop for Depth {
    fn drop(&mut self) {
        if self.0 {
            DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
        }
    }
}

static mut PREV_UTILITY_HOOK: pg_sys::ProcessUtility_hook_type = None;

/// Install the utility hook (once, from _PG_init).
pub fn init() {
    // SAFETY: called once from _PG_init, before any statement runs; the previous hook is kept
    // and called from ours.
    unsafe {
        PREV_UTILITY_HOOK = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(utility_hook);
    }
}

/// The utility hook: the registered callbacks before and after the statement.
///
/// # Safety
/// Called by PostgreSQL as `ProcessUtility_hook`, with ProcessUtility's arguments.
#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn utility_hook(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    super::citus::note_connection_name();
    let counted = context != pg_sys::ProcessUtilityContext::PROCESS_UTILITY_SUBCOMMAND;
    if counted {
        DEPTH.with(|d| d.set(d.get() + 1));
    }
    let _depth = Depth(counted);
    // The callbacks may change the statement (the guard qualifies the names it checked): a
    // tree PostgreSQL hands over as read-only (a cached plan's, from SPI or PL/pgSQL) is copied
    // first, as standard_ProcessUtility would copy it, and passed on as this call's own.
    let (pstmt, read_only_tree) = if read_only_tree {
        // SAFETY: copies a valid node tree into the current memory context, which lives as
        // long as the statement runs (standard_ProcessUtility copies into the same).
        (
            unsafe { pg_sys::copyObjectImpl(pstmt as *const std::ffi::c_void) }
                as *mut pg_sys::PlannedStmt,
            false,
        )
    } else {
        (pstmt, read_only_tree)
    };
    // SAFETY: PostgreSQL calls the hook with a valid planned utility statement.
    let stmt = unsafe { (*pstmt).utilityStmt };
    // SAFETY: as above.
    let place = unsafe { ((*pstmt).stmt_location, (*pstmt).stmt_len) };
    let outer = TEXT.with(|t| t.replace((query_string, place.0, place.1)));
    let outer_alone = TEXT_ALONE.with(|t| t.replace(false));
    let outer_past = PAST_HOOKS.with(|t| t.replace(false));
    for f in BEFORE.with(|b| b.borrow().clone()) {
        f(stmt);
    }
    TEXT.with(|t| t.set(outer));
    let alone = TEXT_ALONE.with(|t| t.replace(outer_alone));
    let past = PAST_HOOKS.with(|t| t.replace(outer_past));
    let (pstmt, query_string) = if alone && !query_string.is_null() {
        // SAFETY: the query text is NUL-terminated and valid for the call; the copy of the
        // statement's part of it (and a line end, which ends a `--` comment there before
        // anything is put after it) is palloc'd in the statement's memory context, as is the
        // copy of the planned statement, whose place in the text now is the whole copy.
        unsafe {
            let whole = std::ffi::CStr::from_ptr(query_string).to_bytes();
            let (start, end) = statement_span(whole.len(), place.0, place.1);
            let mut own = whole[start..end].to_vec();
            own.extend_from_slice(b"\n\0");
            let text = pg_sys::palloc(own.len()) as *mut u8;
            std::ptr::copy_nonoverlapping(own.as_ptr(), text, own.len());
            let copy = pg_sys::copyObjectImpl(pstmt as *const std::ffi::c_void)
                as *mut pg_sys::PlannedStmt;
            (*copy).stmt_location = 0;
            (*copy).stmt_len = 0;
            (copy, text as *const std::ffi::c_char)
        }
    } else {
        (pstmt, query_string)
    };
    // SAFETY: the planned statement passed on (PostgreSQL's, or its copy made above).
    let stmt = unsafe { (*pstmt).utilityStmt };
    if !stmt.is_null() {
        // SAFETY: a node's tag is its first field.
        RUNNING.with(|r| r.borrow_mut().push(unsafe { (*stmt).type_ }));
    }
    let _running = (!stmt.is_null()).then_some(Running);
    // SAFETY: the hook that was installed before ours (or the standard one), called with our
    // own arguments; its errors come back through the FFI guard as a Rust panic, re-raised by
    // #[pg_guard].
    unsafe {
        match PREV_UTILITY_HOOK.filter(|_| !past) {
            Some(prev) => pg_sys::ffi::pg_guard_ffi_boundary(|| {
                prev(
                    pstmt,
                    query_string,
                    read_only_tree,
                    context,
                    params,
                    query_env,
                    dest,
                    qc,
                )
            }),
            None => pg_sys::standard_ProcessUtility(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
        }
    }
    for f in AFTER.with(|b| b.borrow().clone()) {
        f(stmt);
    }
}
