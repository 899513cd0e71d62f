//! PostgreSQL functions that only read a variable of this backend (or the clock), called
//! without pgrx's FFI guard.
//!
//! pgrx wraps every `pg_sys` function in a guard that saves a `sigsetjmp` point, so that an
//! ERROR raised inside comes back to Rust as a panic instead of a `longjmp` across Rust frames.
//! That costs about 200 instructions a call. The functions below cannot raise an ERROR: in
//! PostgreSQL 15 each returns a backend-local variable and does nothing else (an `Assert` in
//! assertion-enabled builds is their only other statement), or, `GetCurrentTimestamp`, returns
//! what `gettimeofday()` says, so there is nothing to guard.
//! They run on every statement (the hooks ask who the user is and whether a transaction or
//! parallel mode is in progress), about 1,000 instructions of a point lookup's 168,000
//! (`benches/callgrind.sh`, `point_mapped`). Only functions of that kind belong here.

use pgrx::pg_sys::Oid;

mod ffi {
    use pgrx::pg_sys::Oid;
    // Declared again without pgrx's wrapper; the same symbols, the same signatures as
    // PostgreSQL 15's miscadmin.h and access/xact.h.
    unsafe extern "C" {
        pub fn GetUserId() -> Oid;
        pub fn GetSessionUserId() -> Oid;
        pub fn IsInParallelMode() -> bool;
        pub fn IsTransactionState() -> bool;
        pub fn GetCurrentStatementStartTimestamp() -> i64;
        pub fn GetCurrentTimestamp() -> i64;
    }
}

/// When the current top-level statement (or protocol message) started, as
/// `GetCurrentStatementStartTimestamp()`: the same for every query a function runs inside it.
pub fn statement_start() -> i64 {
    // SAFETY: GetCurrentStatementStartTimestamp returns the backend's stmtStartTimestamp and
    // raises no ERROR.
    unsafe { ffi::GetCurrentStatementStartTimestamp() }
}

/// The time now, as `GetCurrentTimestamp()`.
pub fn now() -> i64 {
    // SAFETY: GetCurrentTimestamp reads the clock with gettimeofday() and raises no ERROR.
    unsafe { ffi::GetCurrentTimestamp() }
}

/// The current user (`current_user`), as `GetUserId()`.
pub fn user_id() -> Oid {
    // SAFETY: GetUserId returns the backend's CurrentUserId and raises no ERROR.
    unsafe { ffi::GetUserId() }
}

/// The session's user (`session_user`), as `GetSessionUserId()`.
pub fn session_user_id() -> Oid {
    // SAFETY: GetSessionUserId returns the backend's SessionUserId and raises no ERROR.
    unsafe { ffi::GetSessionUserId() }
}

/// Whether the current transaction is in parallel mode, as `IsInParallelMode()`.
pub fn in_parallel_mode() -> bool {
    // SAFETY: IsInParallelMode reads the current transaction state's parallelModeLevel (the
    // state always exists, also outside a transaction) and raises no ERROR.
    unsafe { ffi::IsInParallelMode() }
}

/// Whether a transaction is in progress and not aborted, as `IsTransactionState()`.
pub fn in_transaction() -> bool {
    // SAFETY: IsTransactionState reads the current transaction state's state and raises no
    // ERROR.
    unsafe { ffi::IsTransactionState() }
}
