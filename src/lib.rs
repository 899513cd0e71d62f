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
mod certificate;
mod errors;
mod events;
mod guard;
mod gucs;
mod jsonb_build;
mod keys;
mod leakproof;
mod lifecycle;
mod limits;
mod policy;
mod privileges;
mod rbac;
mod token;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    errors::init();
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

/// `src/TRUST_BOUNDARIES.md` lists every function that switches user; these tests keep that
/// inventory and the code in step.
#[cfg(test)]
mod trust_inventory {
    const SOURCES: &[(&str, &str)] = &[
        ("src/audit.rs", include_str!("audit.rs")),
        ("src/audit_anchor.rs", include_str!("audit_anchor.rs")),
        ("src/audit_row_json.rs", include_str!("audit_row_json.rs")),
        ("src/audit_writer.rs", include_str!("audit_writer.rs")),
        ("src/authz.rs", include_str!("authz.rs")),
        (
            "src/bind_default_arg.rs",
            include_str!("bind_default_arg.rs"),
        ),
        ("src/binding.rs", include_str!("binding.rs")),
        ("src/binding_param.rs", include_str!("binding_param.rs")),
        ("src/catalog.rs", include_str!("catalog.rs")),
        ("src/certificate.rs", include_str!("certificate.rs")),
        ("src/errors.rs", include_str!("errors.rs")),
        ("src/events.rs", include_str!("events.rs")),
        ("src/guard.rs", include_str!("guard.rs")),
        ("src/gucs.rs", include_str!("gucs.rs")),
        ("src/jsonb_build.rs", include_str!("jsonb_build.rs")),
        ("src/keys.rs", include_str!("keys.rs")),
        ("src/leakproof.rs", include_str!("leakproof.rs")),
        ("src/lib.rs", include_str!("lib.rs")),
        ("src/lifecycle.rs", include_str!("lifecycle.rs")),
        ("src/limits.rs", include_str!("limits.rs")),
        ("src/policy.rs", include_str!("policy.rs")),
        ("src/privileges.rs", include_str!("privileges.rs")),
        ("src/rbac.rs", include_str!("rbac.rs")),
        ("src/token.rs", include_str!("token.rs")),
    ];
    const INVENTORY: &str = include_str!("TRUST_BOUNDARIES.md");
    const SWITCHES: &[&str] = &[
        "with_owner(",
        "as_owner(",
        "as_table_owner(",
        "owner_rows(",
        "catalog::write(",
        "switch_user(",
    ];

    /// (file, function) of every function whose body calls a user-switching helper.
    fn switching_functions() -> std::collections::BTreeSet<(String, String)> {
        let mut found = std::collections::BTreeSet::new();
        for (file, text) in SOURCES {
            let mut current: Option<String> = None;
            for line in text.lines() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                if let Some(i) = code.find("fn ") {
                    let head = &code[..i];
                    if head.split_whitespace().all(|w| {
                        matches!(
                            w,
                            "pub" | "pub(crate)" | "unsafe" | "extern" | "\"C-unwind\""
                        )
                    }) {
                        let name: String = code[i + 3..]
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        current = Some(name);
                    }
                }
                let calls = SWITCHES.iter().any(|s| {
                    code.match_indices(s).any(|(at, _)| {
                        // a call, not a definition or a longer name ending the same way
                        !code[..at].ends_with("fn ")
                            && !code[..at]
                                .ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                    })
                });
                if calls && !file.ends_with("lib.rs") {
                    found.insert((file.to_string(), current.clone().unwrap_or_default()));
                }
            }
        }
        found
    }

    fn inventory_rows() -> std::collections::BTreeSet<(String, String)> {
        INVENTORY
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let file = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
                let function = cells.get(2)?.strip_prefix('`')?.strip_suffix('`')?;
                file.starts_with("src/")
                    .then(|| (file.to_string(), function.to_string()))
            })
            .collect()
    }

    #[test]
    fn trust_boundaries_inventory_lists_every_switch() {
        let code = switching_functions();
        let listed = inventory_rows();
        let missing: Vec<_> = code.difference(&listed).collect();
        let stale: Vec<_> = listed.difference(&code).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "src/TRUST_BOUNDARIES.md is out of step with the code: missing {missing:?}, stale {stale:?}"
        );
        assert!(code.len() > 40, "the scanner found too little: {code:?}");
    }
}
