//! Settings changed for the length of a GUC nest level, as a function's `SET` clause does.

use pgrx::pg_sys;
use std::ffi::CStr;

/// Set `name` to `value` in the GUC nest level open now (`NewGUCNestLevel`), as a session-level
/// change the nest level's close (`AtEOXact_GUC`) undoes, like a function's `SET` clause. For
/// settings any role may change (USERSET); an invalid value raises.
///
/// # Safety
/// Inside a transaction, with a GUC nest level opened by the caller that the caller closes with
/// `AtEOXact_GUC` (or that a (sub)transaction abort closes).
pub unsafe fn set_in_nest_level(name: &CStr, value: &CStr) {
    // SAFETY: the caller's contract (a nest level of its own, closed after); both strings are
    // NUL-terminated; GUC_ACTION_SAVE keeps the previous value for the close to restore, and
    // elevel 0 raises on any failure.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
    }
}
