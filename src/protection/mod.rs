//! Protection: which rows a statement may see and write.
//!
//! `tenancy.protect()` generates restrictive row-level-security policies that confine every
//! command to the bound tenant's rows and the bound roles' privileges (`policy`); the database
//! refuses later weakening of them and the DDL that would run code over every tenant's rows
//! (`guard`, with `leakproof` deciding which expressions may); `privileges` answers the
//! policies' question "may this binding do this to this table". `tenancy.verify()` (SQL, in
//! `sql/finalize.sql`) reports drift and hazards with the SQL that fixes them.

pub mod guard;
pub mod leakproof;
pub mod policy;
pub mod privileges;

use pgrx::pg_sys;

/// Transaction and subtransaction ends (registered at _PG_init).
pub fn init() {
    crate::pg::hooks::at_transaction_event(xact_callback);
    crate::pg::hooks::at_subtransaction_event(subxact_callback);
    privileges::init();
    crate::pg::binding_param::set_reserved_value(privileges::reserved_value);
    crate::pg::binding_param::set_folded_value(privileges::folded_value);
    crate::pg::hooks::before_utility(check_utility);
    crate::pg::hooks::after_utility(policy::protect_deferred);
    crate::pg::binding_param::set_call_check(policy::refuse_distributing_protected);
}

/// LOCK TABLE of protected tables, refused before it runs (the guard's DDL checks run in the
/// ddl_command_start event trigger).
fn check_utility(stmt: *mut pg_sys::Node) {
    // SAFETY: `stmt` is the utility statement about to run, or null.
    unsafe { guard::check_utility(stmt) }
}

/// The transaction callback: the guard's and the policies' per-transaction state ends with it.
fn xact_callback(event: pg_sys::XactEvent::Type) {
    use pg_sys::XactEvent::*;
    if matches!(
        event,
        XACT_EVENT_COMMIT
            | XACT_EVENT_ABORT
            | XACT_EVENT_PARALLEL_COMMIT
            | XACT_EVENT_PARALLEL_ABORT
            | XACT_EVENT_PREPARE
    ) {
        policy::reset_at_transaction_end();
        guard::reset_at_transaction_end();
        crate::pg::binding_param::end_window();
    }
}

/// The subtransaction callback: what a rolled-back subtransaction recorded is forgotten.
fn subxact_callback(event: pg_sys::SubXactEvent::Type, my_subid: pg_sys::SubTransactionId) {
    // The records of dropped tables and columns a rolled-back subtransaction wrote went with it.
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        guard::subtransaction_aborted(my_subid);
    }
}
