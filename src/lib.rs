//! pg_tenancy: the database enforces tenant isolation.
//!
//! One folder per pillar, each with a `mod.rs` that says what it guarantees:
//! - `binding`: who a session acts for: signed tokens, keys, the token cache, role mappings,
//!   transaction and session scope, support bindings; checked again on every statement
//! - `protection`: which rows a statement may see and write: generated row-level-security
//!   policies, the guard against weakening them, leakproof analysis, tenant privileges
//! - `rbac`: tenant roles, members, grants, role mappings and support grants
//! - `audit`: the tamper-evident trail: records, the per-tenant chain, verification, anchors
//! - `lifecycle`: tenants, their status, settings and limits, decommission and its certificate
//! - `citus`: the same guarantees on a Citus cluster (the catalog, the guard, the binding and
//!   the audit trail on every node)
//! - `governance`: what a platform team reads and keeps as code without reading a row: the
//!   configuration as a document (export, plan, apply, the CI gate), per-tenant telemetry and
//!   the metrics endpoint
//!
//! Shared ground beside them: `catalog` (pg_tenancy's tables, privileged access and the
//! per-backend cache), `errors` (refusals with SQLSTATE and HINT), `gucs` (settings under
//! `tenancy.`), `events` (security events), `telemetry` (per-tenant counts in shared memory),
//! `authz` (who may call what). PostgreSQL internals
//! (hooks, executor parameters, tuple forming) are fenced in `pg`.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

use pgrx::prelude::*;

mod audit;
mod authz;
mod binding;
mod catalog;
mod citus;
mod errors;
mod events;
mod governance;
mod gucs;
mod lifecycle;
mod pg;
mod protection;
mod rbac;
mod telemetry;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    errors::init();
    errors::set_event_sink(events::report);
    gucs::init();
    events::init();
    telemetry::init();
    catalog::init();
    pg::hooks::init();
    pg::fmgr_gate::init();
    binding::init();
    protection::init();
    pg::binding_param::init();
    audit::init();
    lifecycle::init();
    rbac::init();
    citus::init();
}

/// Verify a signed token and bind its tenant and subject for this transaction. Returns the
/// binding. A NULL token (a request without credentials) is refused, 28000.
#[pg_extern(volatile, parallel_unsafe, name = "bind")]
fn bind_transaction(token: Option<&str>) -> binding::JsonbBytes {
    binding::bind(binding::require_token(token), "transaction")
}

/// Verify a signed token and bind its tenant and subject for this transaction
/// (`'transaction'`) or this session (`'session'`). Returns the binding. Two functions rather
/// than one with a default: a call with one argument then reads no default from the catalog.
#[pg_extern(volatile, parallel_unsafe, name = "bind")]
fn bind_scoped(token: Option<&str>, scope: Option<&str>) -> binding::JsonbBytes {
    binding::bind(
        binding::require_token(token),
        scope.unwrap_or("transaction"),
    )
}

/// 0.1.0's `tenancy.bind(token, scope DEFAULT 'transaction')`, whose SQL names the symbol
/// `bind_wrapper`: kept, with no SQL of this version naming it, for the time between installing
/// this library and `ALTER EXTENSION pg_tenancy UPDATE`, when that SQL is still in place (an
/// attacker's pass found every token bind failing there).
#[pg_extern(volatile, parallel_unsafe, sql = false)]
fn bind(token: Option<&str>, scope: Option<&str>) -> binding::JsonbBytes {
    bind_scoped(token, scope)
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
    pub(super) const SOURCES: &[(&str, &str)] = &[
        ("src/audit/anchor.rs", include_str!("audit/anchor.rs")),
        ("src/audit/mod.rs", include_str!("audit/mod.rs")),
        ("src/audit/writer.rs", include_str!("audit/writer.rs")),
        ("src/authz.rs", include_str!("authz.rs")),
        ("src/binding/carrier.rs", include_str!("binding/carrier.rs")),
        ("src/binding/keys.rs", include_str!("binding/keys.rs")),
        ("src/binding/mod.rs", include_str!("binding/mod.rs")),
        ("src/binding/token.rs", include_str!("binding/token.rs")),
        ("src/catalog.rs", include_str!("catalog.rs")),
        ("src/citus/mod.rs", include_str!("citus/mod.rs")),
        ("src/citus/calls.rs", include_str!("citus/calls.rs")),
        ("src/citus/guard.rs", include_str!("citus/guard.rs")),
        ("src/citus/trail.rs", include_str!("citus/trail.rs")),
        ("src/governance/mod.rs", include_str!("governance/mod.rs")),
        ("src/governance/plan.rs", include_str!("governance/plan.rs")),
        (
            "src/governance/stats.rs",
            include_str!("governance/stats.rs"),
        ),
        (
            "src/governance/apply.rs",
            include_str!("governance/apply.rs"),
        ),
        ("src/errors.rs", include_str!("errors.rs")),
        ("src/events.rs", include_str!("events.rs")),
        ("src/gucs.rs", include_str!("gucs.rs")),
        (
            "src/lifecycle/certificate.rs",
            include_str!("lifecycle/certificate.rs"),
        ),
        (
            "src/lifecycle/limits.rs",
            include_str!("lifecycle/limits.rs"),
        ),
        ("src/lifecycle/mod.rs", include_str!("lifecycle/mod.rs")),
        (
            "src/pg/binding_param.rs",
            include_str!("pg/binding_param.rs"),
        ),
        ("src/pg/citus.rs", include_str!("pg/citus.rs")),
        ("src/pg/guc.rs", include_str!("pg/guc.rs")),
        ("src/pg/jsonb_build.rs", include_str!("pg/jsonb_build.rs")),
        ("src/pg/lock_wait.rs", include_str!("pg/lock_wait.rs")),
        ("src/pg/row_json.rs", include_str!("pg/row_json.rs")),
        (
            "src/protection/guard.rs",
            include_str!("protection/guard.rs"),
        ),
        (
            "src/protection/leakproof.rs",
            include_str!("protection/leakproof.rs"),
        ),
        (
            "src/protection/policy.rs",
            include_str!("protection/policy.rs"),
        ),
        (
            "src/protection/privileges.rs",
            include_str!("protection/privileges.rs"),
        ),
        ("src/rbac/mod.rs", include_str!("rbac/mod.rs")),
        ("src/telemetry.rs", include_str!("telemetry.rs")),
        ("src/pg/executor_end.rs", include_str!("pg/executor_end.rs")),
        ("src/tests.rs", include_str!("tests.rs")),
        ("src/binding/memo.rs", include_str!("binding/memo.rs")),
        ("src/lib.rs", include_str!("lib.rs")),
        ("src/pg/fmgr_gate.rs", include_str!("pg/fmgr_gate.rs")),
        ("src/pg/hooks.rs", include_str!("pg/hooks.rs")),
        ("src/pg/mod.rs", include_str!("pg/mod.rs")),
        ("src/pg/relation_spi.rs", include_str!("pg/relation_spi.rs")),
        ("src/pg/table_scan.rs", include_str!("pg/table_scan.rs")),
        (
            "src/pg/targeted_inval.rs",
            include_str!("pg/targeted_inval.rs"),
        ),
        ("src/pg/types.rs", include_str!("pg/types.rs")),
        ("src/pg/unguarded.rs", include_str!("pg/unguarded.rs")),
        ("src/protection/mod.rs", include_str!("protection/mod.rs")),
    ];
    const INVENTORY: &str = include_str!("TRUST_BOUNDARIES.md");
    const SWITCHES: &[&str] = &[
        "with_owner(",
        "with_owner_reading_locally(",
        "with_owner_ddl(",
        "as_owner_running_no_sql(",
        "as_table_owner(",
        "owner_rows(",
        "catalog::write(",
        "lock_system_row(",
        "switch_user(",
    ];

    /// Every Rust file under `src/` is one of SOURCES, which this inventory and the layering
    /// and FFI-guard checks below read: a file left out would be a place none of them looks.
    #[test]
    fn every_source_file_is_read_by_these_checks() {
        fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p.to_string_lossy().into_owned());
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        walk(&root.join("src"), &mut files);
        let listed: std::collections::BTreeSet<&str> = SOURCES.iter().map(|(p, _)| *p).collect();
        let missing: Vec<String> = files
            .iter()
            .map(|f| {
                f.strip_prefix(&format!("{}/", root.display()))
                    .unwrap_or(f)
                    .to_string()
            })
            .filter(|f| !listed.contains(f.as_str()))
            .collect();
        assert!(missing.is_empty(), "not in SOURCES: {missing:?}");
    }

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

/// The pillars and the shared ground import each other in one direction only: no top-level
/// module uses, directly or through others, a module that uses it back.
#[cfg(test)]
mod layering {
    use super::trust_inventory::SOURCES;
    use std::collections::{BTreeMap, BTreeSet};

    /// `use crate::x` / `crate::x::` edges between top-level modules (a folder or a file under
    /// `src/`), from every line that is not a comment.
    fn edges() -> BTreeMap<String, BTreeSet<String>> {
        let top = |path: &str| -> String {
            let rel = path.trim_start_matches("src/");
            rel.split('/')
                .next()
                .unwrap_or(rel)
                .trim_end_matches(".rs")
                .to_string()
        };
        let modules: BTreeSet<String> = SOURCES.iter().map(|(p, _)| top(p)).collect();
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (path, text) in SOURCES {
            let from = top(path);
            if from == "tests" {
                continue;
            }
            for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (i, _) in line.match_indices("crate::") {
                    let to: String = line[i + 7..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if to != from && modules.contains(&to) && to != "tests" {
                        out.entry(from.clone()).or_default().insert(to);
                    }
                }
            }
        }
        out
    }

    /// The calls, in `text`, of a hook installed before one of ours made outside
    /// `pg_guard_ffi_boundary` (not on its line or one of the two before it): through whatever
    /// name a `PREV_` static is bound to (`if let Some(p) = PREV_X`, a `match` arm's
    /// `Some(p) =>`), or through the static itself (`PREV_X.unwrap()(`).
    fn unguarded_previous_hook_calls(path: &str, text: &str) -> Vec<String> {
        let lines: Vec<&str> = text
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect();
        let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
        let guarded = |k: usize| {
            lines[k.saturating_sub(2)..=k]
                .iter()
                .any(|l| l.contains("pg_guard_ffi_boundary("))
        };
        let mut out = Vec::new();
        let flag = |k: usize, out: &mut Vec<String>| {
            if !guarded(k) {
                out.push(format!("{path}:{}: {}", k + 1, lines[k].trim()));
            }
        };
        for (i, code) in lines.iter().enumerate() {
            for (at, _) in code.match_indices("PREV_") {
                let name: String = code[at..].chars().take_while(|c| ident(*c)).collect();
                let rest = &code[at + name.len()..];
                let assigned =
                    rest.trim_start().starts_with('=') && !rest.trim_start().starts_with("==");
                if code[..at].ends_with(ident) || code.contains("static mut") || assigned {
                    continue;
                }
                if rest.starts_with(".unwrap()(") || rest.starts_with(".expect(") {
                    flag(i, &mut out);
                }
                // The names it is bound to, on its line and the next few (a match's arms).
                let mut bound = Vec::new();
                for l in &lines[i..(i + 8).min(lines.len())] {
                    for (s, _) in l.match_indices("Some(") {
                        let n: String = l[s + 5..].chars().take_while(|c| ident(*c)).collect();
                        let after = &l[s + 5 + n.len()..];
                        if !n.is_empty() && after.starts_with(')') {
                            let tail = after[1..].trim_start();
                            if tail.starts_with("=>")
                                || (tail.starts_with('=') && !tail.starts_with("=="))
                            {
                                bound.push(n);
                            }
                        }
                    }
                }
                for n in bound {
                    let call = format!("{n}(");
                    let end = (i + 30).min(lines.len());
                    for (k, l) in lines.iter().enumerate().take(end).skip(i) {
                        let called = l
                            .match_indices(&call)
                            .any(|(c, _)| !l[..c].ends_with(ident) && !l[..c].ends_with("Some("));
                        if called {
                            flag(k, &mut out);
                        }
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// A hook installed before one of ours is C code that may raise an ERROR, whose `longjmp`
    /// must not cross Rust frames: every call of one is made through `pg_guard_ffi_boundary`.
    #[test]
    fn every_previous_hook_is_called_through_the_ffi_guard() {
        // The check finds what it is for: calls under any name, and the static called itself.
        // Spelled PREVIOUS_ here, so that this file holds no previous hook of its own.
        let sample = "    if let Some(p) = unsafe { PREVIOUS_X } {\n        unsafe { p(1) };\n    }\n\
                      match unsafe { PREVIOUS_Y } {\n        Some(f) => unsafe { f(2) },\n        None => {}\n    }\n\
                      unsafe { PREVIOUS_Z.unwrap()(3) };\n\
                      if let Some(g) = unsafe { PREVIOUS_W } {\n        pg_sys::ffi::pg_guard_ffi_boundary(|| g(4));\n    }\n"
            .replace("PREVIOUS_", "PREV_");
        assert_eq!(unguarded_previous_hook_calls("sample", &sample).len(), 3);
        let unguarded: Vec<String> = SOURCES
            .iter()
            .flat_map(|(path, text)| unguarded_previous_hook_calls(path, text))
            .collect();
        assert!(
            unguarded.is_empty(),
            "previous hooks called without the FFI guard:\n{}",
            unguarded.join("\n")
        );
    }

    #[test]
    fn no_module_imports_one_that_imports_it_back() {
        let edges = edges();
        // Depth-first search for a path back to the start.
        fn reaches(
            edges: &BTreeMap<String, BTreeSet<String>>,
            from: &str,
            to: &str,
            seen: &mut BTreeSet<String>,
            path: &mut Vec<String>,
        ) -> bool {
            for next in edges.get(from).into_iter().flatten() {
                path.push(next.clone());
                if next == to {
                    return true;
                }
                if seen.insert(next.clone()) && reaches(edges, next, to, seen, path) {
                    return true;
                }
                path.pop();
            }
            false
        }
        for module in edges.keys() {
            let mut path = vec![module.clone()];
            assert!(
                !reaches(&edges, module, module, &mut BTreeSet::new(), &mut path),
                "import cycle: {} (edges: {edges:?})",
                path.join(" -> ")
            );
        }
        // The scanner sees the pillars' use of the shared ground.
        assert!(edges.get("binding").is_some_and(|e| e.contains("catalog")));
    }
}

/// Every SQLSTATE pg_tenancy raises has its condition name in the DETAIL of a refusal without
/// a code of its own (`errors::condition`), never the placeholder `error`.
#[cfg(test)]
mod sqlstates {
    use super::trust_inventory::SOURCES;

    #[test]
    fn conditions_are_named() {
        let errors = SOURCES
            .iter()
            .find(|(p, _)| *p == "src/errors.rs")
            .map(|(_, text)| *text)
            .unwrap();
        let condition = &errors[errors.find("fn condition(").unwrap()..];
        let condition = &condition[..condition.find("\n}\n").unwrap()];
        let mut missing = std::collections::BTreeSet::new();
        for (path, text) in SOURCES {
            let mut rest = *text;
            while let Some(at) = rest.find("ERRCODE_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                if name.len() > "ERRCODE_".len()
                    && name != "ERRCODE_SUCCESSFUL_COMPLETION"
                    && !condition.contains(&format!("{name} =>"))
                {
                    missing.insert(format!("{name} ({path})"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "not named in errors::condition: {missing:?}"
        );
    }
}

/// On Citus, the queries over the trail's distributed tables are printed again for the workers
/// (pg_catalog's functions unqualified) and run there as the superuser under the worker's
/// search_path, where a role's own exact-typed `unnest(bigint[])` beat pg_catalog's
/// `unnest(anyarray)`: a chain entry's record ids are read through `tenancy._record_ids`.
#[cfg(test)]
mod distributed_sql {
    use super::trust_inventory::SOURCES;

    #[test]
    fn record_ids_are_read_through_pg_tenancys_own_function() {
        for (path, text) in SOURCES {
            for (n, line) in text.lines().enumerate() {
                let bare = line.contains("unnest(")
                    && line.contains("record_ids")
                    && !line.contains("_record_ids");
                assert!(!bare, "{path}:{}: {line}", n + 1);
            }
        }
    }
}
