//! The binding carried from a Citus coordinator to its workers, so that every node acts for
//! exactly the tenant, subject and roles the coordinator is bound to.
//!
//! Citus carries a setting to the connections it opens to the workers in one way only: `SET
//! LOCAL` inside a transaction block, with `citus.propagate_set_commands = 'local'`, for the
//! connections open and those opened later in the transaction. So:
//! - **Coordinator** (any node a client runs a distributed statement on): a token binding is
//!   carried as `SET LOCAL tenancy.carrier = '<token>'`, run by pg_tenancy through SPI in the
//!   client's transaction block: when `bind()` succeeds there, and at the first query of every
//!   later transaction block of a session-scoped binding; `unbind()` carries `''`. Outside a
//!   transaction block nothing is carried, and the workers refuse as unbound. Role-mapped
//!   bindings carry nothing: Citus connects to the workers as the same role, which the same
//!   mapping binds there.
//! - **Worker**: a session without a binding of its own binds the carried token for its
//!   transaction, verified and checked exactly as `tenancy.bind()` would (keys, tenants,
//!   members and revocations are the same on every node: `src/citus/mod.rs`), and checked again
//!   on every statement like any binding. A carrier that changes or ends takes the binding with
//!   it.
//! - **Never split.** A client's `SET` of `tenancy.carrier` is refused on the coordinator (Citus
//!   would carry it to the workers, which would act for another token than the one bound
//!   here), and on a worker in a session bound by its own `bind()` to another token. On a
//!   worker, setting it in an unbound session is binding that token, which takes having it.
//!   (`set_config()` is not carried by Citus, and the coordinator never reads the setting.)
//!
//! Like `SELECT tenancy.bind('<token>')` itself, the `SET LOCAL` carrying the token shows in the
//! workers' `pg_stat_activity` to sessions of the same role and to `pg_read_all_stats`.

use super::{Binding, Source};
use crate::errors::{self, INSUFFICIENT_PRIVILEGE};
use pgrx::pg_sys;
use std::cell::{Cell, RefCell};

/// The token of a binding, kept to carry it to Citus workers. Its `Debug` never shows it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CarriedToken(pub std::rc::Rc<str>);

impl std::fmt::Debug for CarriedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CarriedToken(..)")
    }
}

thread_local! {
    /// Whether this node is a Citus worker, once known.
    static ON_WORKER: Cell<Option<bool>> = const { Cell::new(None) };
    /// Set while pg_tenancy's own `SET LOCAL tenancy.carrier` runs.
    static SENDING: Cell<bool> = const { Cell::new(false) };
    /// (local transaction id, token) carried in that transaction.
    static SENT: RefCell<Option<(u32, std::rc::Rc<str>)>> = const { RefCell::new(None) };
    /// The local transaction id of the last transaction in which a SET statement of the
    /// carrier was allowed: only a carrier set that way, in the running transaction, is bound
    /// (not one from ALTER ROLE/DATABASE SET or set_config(), which Citus does not carry).
    static SET_IN: Cell<u32> = const { Cell::new(0) };
}

/// The current local transaction id (0 outside a transaction).
fn lxid() -> u32 {
    // SAFETY: MyProc is set for every backend that runs SQL; lxid is its own field.
    unsafe { (*pg_sys::MyProc).lxid }
}

/// Whether bindings are carried here: Citus is loaded and created in this database.
pub fn active() -> bool {
    crate::pg::citus::in_database()
}

/// Whether this node is a Citus worker (its group is not the coordinator's, 0).
pub fn on_worker() -> bool {
    if let Some(w) = ON_WORKER.with(|w| w.get()) {
        return w;
    }
    let w = active()
        && crate::catalog::read_one::<bool>(
            "SELECT groupid <> 0 FROM pg_catalog.pg_dist_local_group",
            &[],
        )
        .unwrap_or(false);
    ON_WORKER.with(|c| c.set(Some(w)));
    w
}

/// Whether the running transaction is a transaction block (BEGIN ... COMMIT).
fn in_transaction_block() -> bool {
    // SAFETY: reads the transaction state.
    unsafe { pg_sys::IsTransactionBlock() }
}

/// The token a binding carries: a token binding's own, none for the others.
pub fn token_of(b: &Binding) -> Option<std::rc::Rc<str>> {
    match &b.source {
        Source::Token { carried, .. } if !carried.0.is_empty() => Some(carried.0.clone()),
        _ => None,
    }
}

/// Carry `token` to the workers for the rest of this transaction block (once per transaction
/// and token). Nothing without Citus or outside a transaction block.
pub fn send(token: &std::rc::Rc<str>) {
    if !active() || !in_transaction_block() {
        return;
    }
    let lx = lxid();
    if SENT.with(|s| matches!(&*s.borrow(), Some((l, t)) if *l == lx && t == token)) {
        return;
    }
    // SAFETY: GetConfigOption with missing_ok returns NULL for an unknown setting, else the
    // setting's current value as a C string valid until it changes (read at once).
    let propagated = unsafe {
        let v = pg_sys::GetConfigOption(c"citus.propagate_set_commands".as_ptr(), true, false);
        !v.is_null() && std::ffi::CStr::from_ptr(v).to_bytes() == b"local"
    };
    if !propagated {
        pgrx::warning!(
            "pg_tenancy cannot carry this binding to the Citus workers: citus.propagate_set_commands is not 'local', so the workers will refuse this transaction's distributed statements as unbound; set citus.propagate_set_commands = 'local' (postgresql.conf, or ALTER DATABASE ... SET)"
        );
    }
    set_local(token);
    SENT.with(|s| *s.borrow_mut() = Some((lx, token.clone())));
}

/// End what this transaction carried (after `unbind()`).
pub fn clear() {
    let lx = lxid();
    if SENT.with(|s| matches!(&*s.borrow(), Some((l, _)) if *l == lx)) {
        set_local("");
        SENT.with(|s| *s.borrow_mut() = None);
    }
}

/// Forget what was carried (a subtransaction that carried it rolled back): the next query
/// carries it again.
pub fn forget_sent() {
    SENT.with(|s| *s.borrow_mut() = None);
}

/// `SET LOCAL tenancy.carrier = value`, run by pg_tenancy as a utility statement, so that
/// Citus's utility hook sees and carries it. The value is quoted by PostgreSQL's own
/// quote_literal.
fn set_local(value: &str) {
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            SENDING.with(|s| s.set(false));
        }
    }
    SENDING.with(|s| s.set(true));
    let _done = Done;
    let sql = format!(
        "SET LOCAL tenancy.carrier = {}",
        crate::catalog::quote_literal(value)
    );
    pgrx::spi::Spi::run(&sql).unwrap_or_else(|e| {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!("pg_tenancy could not carry the binding to the Citus workers: {e}"),
            "Bind inside a transaction block (BEGIN first).",
        )
    });
}

/// A client's `SET`/`RESET` of `tenancy.carrier` (a utility statement, before it runs): refused
/// unless pg_tenancy runs it, or on a Citus worker in a session with no binding of its own to
/// another token (Citus's connections from the coordinator; see the module's comment).
/// `own` is the session's explicit binding's token and whether it was adopted from a carrier.
pub fn check_client_set(
    stmt: *mut pg_sys::VariableSetStmt,
    own: Option<(Option<std::rc::Rc<str>>, bool)>,
) {
    // SAFETY: `stmt` is the VariableSetStmt about to run; its name is a C string or null.
    let name = unsafe {
        let n = (*stmt).name;
        if n.is_null() {
            return;
        }
        std::ffi::CStr::from_ptr(n)
    };
    if name.to_bytes() != b"tenancy.carrier" || SENDING.with(|s| s.get()) {
        return;
    }
    let refuse = |why: &str| -> ! {
        errors::raise(
            INSUFFICIENT_PRIVILEGE,
            format!("tenancy.carrier is set by pg_tenancy only: {why}"),
            "Bind with tenancy.bind(token) inside a transaction block: pg_tenancy carries the binding to the Citus workers itself.",
        )
    };
    if !on_worker() {
        refuse("this node is not a Citus worker");
    }
    if let Some((token, adopted)) = own {
        if !adopted {
            // SAFETY: the statement's kind and its argument list, read as PostgreSQL's
            // VariableSetStmt declares them; a constant's string is a C string.
            let value = unsafe { set_value(stmt) };
            if token.as_deref() != value.as_deref() {
                refuse("this session is bound to another token");
            }
        }
    }
    SET_IN.with(|s| s.set(lxid()));
}

/// The string a `SET name = 'value'` sets (None for RESET, DEFAULT or anything else).
///
/// # Safety
/// `stmt` must be a valid VariableSetStmt.
unsafe fn set_value(stmt: *mut pg_sys::VariableSetStmt) -> Option<String> {
    // SAFETY: the caller's contract; every node is read as its tag says.
    unsafe {
        if (*stmt).kind != pg_sys::VariableSetKind::VAR_SET_VALUE || (*stmt).args.is_null() {
            return None;
        }
        let arg = (*(*(*stmt).args).elements).ptr_value as *mut pg_sys::Node;
        if arg.is_null() || (*arg).type_ != pg_sys::NodeTag::T_A_Const {
            return None;
        }
        let c = arg as *mut pg_sys::A_Const;
        if (*c).val.node.type_ != pg_sys::NodeTag::T_String {
            return None;
        }
        let s = (*c).val.sval.sval;
        (!s.is_null()).then(|| std::ffi::CStr::from_ptr(s).to_string_lossy().into_owned())
    }
}

/// The token carried to this session (a worker's) by a SET statement of this transaction, if
/// any.
pub fn carried() -> Option<String> {
    if SET_IN.with(|s| s.get()) != lxid() {
        return None;
    }
    crate::gucs::CARRIER
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
}
