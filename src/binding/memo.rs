//! The statement's validated binding, remembered.
//!
//! [`super::with_current`] validates the binding in force each time it is read: the carrier,
//! invalidations, the platform-role and support checks, expiry, the tenant's catalog rows, the
//! transaction's tenant and subject. A statement reads it at least twice (the planner folds the
//! tenant in, the executor checks the plan against it when it starts), and a function reads it
//! once per query it runs. The second and later reads of the same statement repeat a validation
//! whose every input is unchanged; this module lets them skip it, and only then.
//!
//! What a validation depends on, and how each is part of the [`Key`]:
//! - the binding module's own state (the explicit, mapped and internal bindings, the
//!   transaction's tenant, subject and limits, the carried binding, the platform-role cache):
//!   every one is held in a [`Tracked`] or [`TrackedCell`], whose every write moves the
//!   module's epoch, so no write can be forgotten;
//! - pg_tenancy's catalog: [`crate::catalog::fill_epoch`], which moves with every invalidation
//!   processed (a suspension, a revocation, a removed member or mapping, a change of roles);
//! - the current and session roles (SET ROLE, a SECURITY DEFINER function);
//! - the statement and the transaction (a procedure's COMMIT starts another): the statement's
//!   start and the local transaction id, so nothing is remembered from one statement to the
//!   next, and revocations still take effect from the next statement;
//! - the clock, to the second, as expiry reads it.
//!
//! Server settings the validation reads (`tenancy.region`, `tenancy.clock_skew`) change for a
//! running statement only by a superuser's SET inside it; the statement after it sees them.
//! The memo is not used in a database with Citus, whose connections change what a binding
//! resolves to inside one statement (the carrier, Citus's own connection names).

use pgrx::pg_sys;
use std::cell::{Cell, Ref, RefCell, RefMut};

thread_local! {
    /// Moves with every write of the binding module's state (see the module's comment).
    static EPOCH: Cell<u64> = const { Cell::new(0) };
    /// The key under which the last full validation succeeded.
    static VALIDATED: Cell<Option<Key>> = const { Cell::new(None) };
}

fn moved() {
    EPOCH.with(|e| e.set(e.get().wrapping_add(1)));
}

/// A `RefCell` whose every mutable borrow moves the epoch.
pub struct Tracked<T>(RefCell<T>);

impl<T> Tracked<T> {
    pub const fn new(value: T) -> Self {
        Tracked(RefCell::new(value))
    }

    pub fn borrow(&self) -> Ref<'_, T> {
        self.0.borrow()
    }

    pub fn borrow_mut(&self) -> RefMut<'_, T> {
        moved();
        self.0.borrow_mut()
    }
}

/// A `Cell` whose every change moves the epoch.
pub struct TrackedCell<T: Copy + PartialEq>(Cell<T>);

impl<T: Copy + PartialEq> TrackedCell<T> {
    pub const fn new(value: T) -> Self {
        TrackedCell(Cell::new(value))
    }

    pub fn get(&self) -> T {
        self.0.get()
    }

    pub fn set(&self, value: T) {
        if self.0.get() != value {
            moved();
            self.0.set(value);
        }
    }
}

/// What a validation's outcome depends on (see the module's comment).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key {
    epoch: u64,
    fill: u64,
    statement: pg_sys::TimestampTz,
    lxid: pg_sys::LocalTransactionId,
    user: pg_sys::Oid,
    session: pg_sys::Oid,
    second: i64,
}

/// The key as things stand, or None where the memo is not used.
pub fn key(second: i64) -> Option<Key> {
    if crate::pg::citus::loaded() {
        return None;
    }
    Some(Key {
        epoch: EPOCH.with(|e| e.get()),
        fill: crate::catalog::fill_epoch(),
        statement: crate::pg::unguarded::statement_start(),
        // SAFETY: MyProc is set for every backend that runs SQL; lxid is its own field.
        lxid: unsafe { (*pg_sys::MyProc).lxid },
        user: crate::pg::unguarded::user_id(),
        session: crate::pg::unguarded::session_user_id(),
        second,
    })
}

/// Whether a validation succeeded under `key`.
pub fn validated(key: Option<Key>) -> bool {
    key.is_some() && VALIDATED.with(|v| v.get()) == key
}

/// A validation succeeded under `key` (None: forget any).
pub fn remember(key: Option<Key>) {
    VALIDATED.with(|v| v.set(key));
}
