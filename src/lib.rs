//! pg_tenancy: the database enforces tenant isolation.
//!
//! Modules, one concern each:
//! - `binding`: who this session acts for (tokens, role mappings, transaction scope)
//! - `binding_param`: the policies' binding planned as an executor parameter (planner hook)
//! - `bind_default_arg`: `tenancy.bind(token)`'s default argument, read once per backend
//! - `token`: JWS/JWT parsing and signature verification (pure Rust)
//! - `catalog`: pg_tenancy's tables, privileged access and the per-backend cache
//! - `lifecycle`: tenants, their status and settings
//! - `keys`: verification keys
//! - `policy`: row-level-security policy generation (protect, protect_schema, auto_protect)
//! - `guard`: refusal of DDL that would weaken a protected table
//! - `privileges`: tenant-role privileges checked by the generated policies
//! - `verify`: the isolation health report (SQL, in sql/finalize.sql)
//! - `rbac`: role-to-tenant mappings and tenant roles
//! - `audit`: the audit trail (`audit_writer` forms and writes records, `audit_row_json` turns
//!   rows into jsonb, `audit_anchor` anchors the chain's heads outside the database)
//! - `jsonb_build`: jsonb values built without JSON text (audit rows, a binding's description)
//! - `authz`: who may call what
//! - `gucs`: server settings under `tenancy.`
//! - `errors`: refusals with SQLSTATE and HINT, security events in the server log
//! - `events`: security-event counters and recent events in shared memory (when preloaded)

use pgrx::prelude::*;

mod audit;
mod audit_anchor;
mod audit_row_json;
mod audit_writer;
mod authz;
mod bind_default_arg;
mod binding;
mod binding_param;
mod catalog;
mod errors;
mod events;
mod guard;
mod gucs;
mod jsonb_build;
mod keys;
mod lifecycle;
mod policy;
mod privileges;
mod rbac;
mod token;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    events::init();
    catalog::init();
    binding::init();
    privileges::init();
    binding_param::init();
    bind_default_arg::init();
    audit::init();
}

/// Verify a signed token and bind its tenant and subject for this transaction (default) or
/// this session. Returns the binding.
#[pg_extern(volatile, parallel_unsafe)]
fn bind(token: &str, scope: default!(&str, "'transaction'")) -> binding::JsonbBytes {
    binding::bind(token, scope)
}

/// Drop the binding made by bind().
#[pg_extern(volatile, parallel_unsafe)]
fn unbind() {
    binding::unbind()
}

/// The bound tenant; raises 42501 "no tenant bound" when none.
#[pg_extern(stable, parallel_restricted)]
fn current_tenant() -> pgrx::Uuid {
    binding::with_required(|b| catalog::to_pg_uuid(b.tenant))
}

/// The bound end user (the token's `sub`); NULL for a role-mapped binding.
#[pg_extern(stable, parallel_restricted)]
fn current_subject() -> Option<String> {
    binding::require().subject
}

/// The bound end user's effective tenant roles.
#[pg_extern(stable, parallel_restricted)]
fn current_roles() -> Vec<String> {
    binding::require().roles
}

/// The binding in force as JSON, or NULL when unbound (never raises for an unbound session).
#[pg_extern(stable, parallel_restricted, name = "binding")]
fn binding_info() -> Option<binding::JsonbBytes> {
    binding::current_if_bound().map(|b| binding::describe(&b))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    include!("tests.rs");
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        // Preloaded here (the integration cluster is not): security_events() needs it.
        vec!["shared_preload_libraries = 'pg_tenancy'"]
    }
}
