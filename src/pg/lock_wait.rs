//! Waiting in a heavyweight lock's queue for a bounded time. PostgreSQL's lock manager has no
//! timed wait but `lock_timeout`, which ends the wait with an error: the wait runs in an
//! internal subtransaction, as a PL's exception block runs its statements, whose rollback
//! leaves the queue and keeps the transaction.

use pgrx::pg_sys;
use pgrx::prelude::*;

/// Take `tag` in `mode` for the transaction, waiting at most `ms` milliseconds in its queue
/// (those who ask for it after this call queue behind it). Whether it was taken. Any other
/// error of the wait (a cancel, a deadlock) is raised again once the subtransaction is gone.
pub fn acquire_within(tag: &pg_sys::LOCKTAG, mode: pg_sys::LOCKMODE, ms: i32) -> bool {
    // SAFETY: an internal subtransaction around one lock wait, released (its lock passing to the
    // transaction, as any subtransaction's) or rolled back before the caller's memory context
    // and resource owner are restored, as PL handlers do; LockTimeout is this backend's own
    // setting, put back however the wait ends.
    unsafe {
        let cxt = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        let saved = pg_sys::LockTimeout;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        let result = PgTryBuilder::new(|| {
            pg_sys::LockTimeout = ms.max(1);
            pg_sys::LockAcquire(tag, mode, false, false);
            Ok(true)
        })
        .catch_when(PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE, |_| Ok(false))
        .catch_others(|e| Err(Box::new(e)))
        .execute();
        pg_sys::LockTimeout = saved;
        if matches!(result, Ok(true)) {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(cxt);
        pg_sys::CurrentResourceOwner = owner;
        match result {
            Ok(taken) => taken,
            Err(e) => e.rethrow(),
        }
    }
}
