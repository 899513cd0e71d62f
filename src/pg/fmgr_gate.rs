//! A gate on calls of chosen functions, however they are reached: PostgreSQL's function-manager
//! hooks (`needs_fmgr_hook`, `fmgr_hook`, as sepgsql uses them). A function the gate names is
//! called through `fmgr_security_definer`, which calls the gate before each call with the call's
//! expression (`fn_expr`), so a check sees calls that no planned statement shows: a CHECK or
//! domain constraint, an index expression, an inlined SQL function's body, a column's
//! `USING` expression.
//!
//! Only functions that are not built in can be gated (PostgreSQL looks built-in functions up
//! without the hook), and the gate's `needs` is asked for every such function a backend looks
//! up, so it must be cheap and never raise.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::Cell;

/// Whether calls of a function are gated (cheap; never raises).
pub type Needs = fn(pg_sys::Oid) -> bool;
/// Before a gated call: the function and its call expression (null when the caller gave none,
/// as a direct call from C does); may refuse it by raising.
pub type Before = fn(pg_sys::Oid, *mut pg_sys::Node);

thread_local! {
    static GATE: Cell<Option<(Needs, Before)>> = const { Cell::new(None) };
}

static mut PREV_NEEDS: pg_sys::needs_fmgr_hook_type = None;
static mut PREV_HOOK: pg_sys::fmgr_hook_type = None;

/// Set the gate (once, from `_PG_init`, by the pillar that owns the check).
pub fn set(needs: Needs, before: Before) {
    GATE.with(|g| g.set(Some((needs, before))));
}

/// Install the hooks (once, from `_PG_init`); the hooks installed before are kept and called.
pub fn init() {
    // SAFETY: called once from _PG_init, before any function is looked up in this backend;
    // the previous hooks are kept and called from ours.
    unsafe {
        PREV_NEEDS = pg_sys::needs_fmgr_hook;
        PREV_HOOK = pg_sys::fmgr_hook;
        pg_sys::needs_fmgr_hook = Some(needs);
        pg_sys::fmgr_hook = Some(hook);
    }
}

/// # Safety
/// Called by PostgreSQL as `needs_fmgr_hook` with a function's OID.
#[pg_guard]
unsafe extern "C-unwind" fn needs(fn_oid: pg_sys::Oid) -> bool {
    // SAFETY: the previous hook (set once at _PG_init, read on the backend's only thread),
    // called with the argument we were given, through the FFI guard (an ERROR it raises comes
    // back as a Rust panic, re-raised by #[pg_guard], instead of a longjmp across Rust frames).
    if let Some(prev) = unsafe { PREV_NEEDS } {
        // SAFETY: as above.
        if unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| prev(fn_oid)) } {
            return true;
        }
    }
    GATE.with(|g| g.get()).is_some_and(|(n, _)| n(fn_oid))
}

/// # Safety
/// Called by PostgreSQL as `fmgr_hook`, from `fmgr_security_definer`, with the call's private
/// FmgrInfo (its `fn_expr` the call expression, or null) and the hooks' private datum.
#[pg_guard]
unsafe extern "C-unwind" fn hook(
    event: pg_sys::FmgrHookEventType::Type,
    flinfo: *mut pg_sys::FmgrInfo,
    arg: *mut pg_sys::Datum,
) {
    // SAFETY: the previous hook (set once at _PG_init, read on the backend's only thread),
    // called with the arguments we were given, through the FFI guard: sepgsql's raises an
    // ERROR for a call it denies, which comes back as a Rust panic, re-raised by #[pg_guard].
    if let Some(prev) = unsafe { PREV_HOOK } {
        // SAFETY: as above.
        unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| prev(event, flinfo, arg)) };
    }
    if event != pg_sys::FmgrHookEventType::FHET_START || flinfo.is_null() {
        return;
    }
    if let Some((n, before)) = GATE.with(|g| g.get()) {
        // SAFETY: `flinfo` is the call's FmgrInfo (this function's contract).
        let (oid, expr) = unsafe { ((*flinfo).fn_oid, (*flinfo).fn_expr) };
        if n(oid) {
            before(oid, expr);
        }
    }
}
