//! The binding's last successful validation, remembered while nothing it read has changed.
//!
//! [`super::with_current`] validates the binding in force each time it is read: the platform-role
//! and support checks, expiry, the signing key's `not_after`, the server's region, the tenant's
//! catalog rows. A statement reads it at least twice (the planner folds the tenant in, the
//! executor checks the plan against it when it starts), a function once per query it runs, and
//! a session every statement. Each repeats a validation whose every input may be unchanged; this
//! module lets it be skipped then, and only then.
//!
//! What a validation reads, and how each is part of the [`Key`]:
//! - the binding module's own state (the explicit, mapped and internal bindings, the carried
//!   binding, the platform-role cache): each is held in a [`Tracked`] or [`TrackedCell`], whose
//!   every write moves the module's epoch, so no write can be forgotten. The transaction's own
//!   bookkeeping (its tenant, subject, resource settings) is not an input: it still runs on a
//!   remembered validation;
//! - pg_tenancy's catalog: [`crate::catalog::fill_epoch`], which moves with every invalidation
//!   processed (a suspension, a revocation, a removed member or mapping). Invalidations are
//!   processed before the key is read, once per statement at least, so a revocation committed
//!   before a statement began is seen by it;
//! - role memberships (a role made a platform operator): their invalidations move a counter of
//!   changes from outside the validation;
//! - the settings the validation reads (`tenancy.region`, `tenancy.clock_skew`): their assign
//!   hooks (SET, RESET, a reload, the end of a transaction that set one) move
//!   [`crate::gucs::binding_settings_generation`];
//! - the current and session roles (SET ROLE, SET SESSION AUTHORIZATION, a SECURITY DEFINER
//!   function);
//! - the clock, to the second, as expiry reads it.
//!
//! With Citus, a worker adopts the binding its coordinator carries (`carrier.rs`) before the key
//! is read, and every adoption writes the tracked state. The memo is not used where
//! `citus::internal_backend()` holds (a connection named `citus_internal gpid=...` since it
//! started: the workers' shard queries), the one place where the role mapping is looked up or
//! not by the statement being run (`ensure_mapped`), with no write of this module's state.
//!
//! One assumption: the epoch is not compared by [`remember_unless_moved`], because the
//! validation's own writes move it. Writes made meanwhile by code the validation's catalog reads
//! reach (hooks at their queries' start: `ensure_mapped` through `tenant_in_effect_unchecked`)
//! are validating writes too. A new writer of the tracked state reachable from there that is not
//! must move [`roles_changed`]'s counter (or one like it) as well.

use pgrx::pg_sys;
use std::cell::{Cell, Ref, RefCell, RefMut};

thread_local! {
    /// Moves with every write of the binding module's state (see the module's comment).
    static EPOCH: Cell<u64> = const { Cell::new(0) };
    /// Moves with every change a validation reads that is not its own write: role memberships
    /// (their invalidations, which can arrive while a validation waits for a lock).
    static OUTSIDE: Cell<u64> = const { Cell::new(0) };
    /// The key under which the last full validation succeeded.
    static VALIDATED: Cell<Option<Key>> = const { Cell::new(None) };
}

fn moved() {
    EPOCH.with(|e| e.set(e.get().wrapping_add(1)));
}

/// Roles or role memberships changed (a role made a platform operator): forget any validation,
/// also one running now (see [`remember_unless_moved`]).
pub fn roles_changed() {
    OUTSIDE.with(|o| o.set(o.get().wrapping_add(1)));
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
    outside: u64,
    fill: u64,
    settings: u64,
    user: pg_sys::Oid,
    session: pg_sys::Oid,
    second: i64,
}

/// The key as things stand at `second`, or None where the memo is not used.
pub fn key(second: i64) -> Option<Key> {
    if crate::pg::citus::internal_backend() {
        return None;
    }
    Some(Key {
        epoch: EPOCH.with(|e| e.get()),
        outside: OUTSIDE.with(|o| o.get()),
        fill: crate::catalog::fill_epoch(),
        settings: crate::gucs::binding_settings_generation(),
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

/// A validation that began under `before` succeeded; `after` is the key once it has written
/// what it writes. Remembered only if nothing but the validation's own writes moved: its catalog
/// reads take locks, and taking a lock processes invalidations, so a suspension or revocation
/// committed during the validation can be processed after an earlier check read the row it
/// changes, and a role made a platform operator after the platform-role check passed (raised
/// by two attackers' passes). Then nothing is remembered, and the next read
/// validates again (as `catalog::store` keeps no fill that saw the generation move).
pub fn remember_unless_moved(before: Option<Key>, after: Option<Key>) {
    let same = match (before, after) {
        (Some(b), Some(a)) => {
            b.fill == a.fill
                && b.outside == a.outside
                && b.settings == a.settings
                && b.user == a.user
                && b.session == a.session
                && b.second == a.second
        }
        _ => false,
    };
    remember(if same { after } else { None });
}
