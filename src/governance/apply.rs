//! `apply_config`: makes this database's configuration the document's, in the caller's
//! transaction, or changes nothing.
//!
//! Trust boundary: it runs SQL, but only the constant texts of [`super::plan::Step`], each a
//! call of one of pg_tenancy's management functions whose every value (slugs, roles, tables,
//! settings) is a bound text parameter, cast inside the text; nothing of the document is
//! spliced into SQL. The calls run as the caller, not as the catalog owner: each checks the
//! caller's permissions (an operator cannot widen inside a tenant that has an admin, cannot
//! register keys; a key admin cannot manage tenants) and writes its own audit record, exactly
//! as if the caller had made it by hand.

use super::plan::{plan, Change, Duty, Step, RISKS};
use crate::{authz, catalog, errors};
use pgrx::prelude::*;
use pgrx::JsonB;

/// What it refuses to apply, listed (at most 50) in a message.
fn listed(changes: &[&Change], with: impl Fn(&Change) -> String) -> String {
    let mut list = changes
        .iter()
        .take(50)
        .map(|c| with(c))
        .collect::<Vec<_>>()
        .join("; ");
    if changes.len() > 50 {
        list.push_str(&format!("; and {} more", changes.len() - 50));
    }
    list
}

/// Applies `doc` (a document of `export_config`'s form, see `plan_config`) in the caller's
/// transaction: the caller's part of it (an operator's: everything but signing keys; a key
/// admin's: the signing keys, whose material the document carries as `"key"` for each key to
/// add), each change made by the management function that makes it by hand, as the caller, so
/// audited and permission-checked as that call is. Before it changes anything it refuses
/// (42501) when a change's risk is not in `allow`, and (0A000) a change no function makes,
/// listing each. After, it checks that the caller's part now matches the document (55000 if
/// not, and the transaction's changes are undone with the error). Returns each change with
/// `applied`, or what is left for the other duty.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::type_complexity)]
fn apply_config(
    doc: JsonB,
    allow: default!(Vec<String>, "'{safe,narrowing}'"),
) -> TableIterator<
    'static,
    (
        name!(action, String),
        name!(object, String),
        name!(detail, String),
        name!(risk, String),
        name!(status, String),
    ),
> {
    let who = authz::caller();
    let duty = if authz::is_key_admin(who) && !authz::is_operator(who) {
        authz::require_key_admin("apply the signing keys of a configuration");
        Duty::KeyAdmin
    } else {
        authz::require_operator("apply a configuration");
        Duty::Operator
    };
    if let Some(bad) = allow.iter().find(|r| !RISKS.contains(&r.as_str())) {
        errors::raise(
            errors::INVALID_PARAMETER,
            format!("\"{}\" is not a risk class", errors::clean(bad)),
            "allow lists some of safe, narrowing, widening, destructive.",
        );
    }
    let doc = doc.0;
    let changes = plan(doc.clone());
    let mine: Vec<&Change> = changes.iter().filter(|c| c.duty() == duty).collect();

    let unsupported: Vec<&Change> = mine
        .iter()
        .copied()
        .filter(|c| matches!(c.step, Step::Unsupported(_)))
        .collect();
    if !unsupported.is_empty() {
        errors::raise(
            errors::FEATURE_NOT_SUPPORTED,
            format!(
                "apply_config cannot make {} change(s), and changed nothing: {}",
                unsupported.len(),
                listed(&unsupported, |c| match &c.step {
                    Step::Unsupported(why) => format!("{} ({why})", c.shown()),
                    _ => c.shown(),
                })
            ),
            "Make them by hand as each says, or take them out of the document; then apply it again.",
        );
    }
    let refused: Vec<&Change> = mine
        .iter()
        .copied()
        .filter(|c| !allow.iter().any(|a| a == c.risk))
        .collect();
    if !refused.is_empty() {
        errors::Refusal::new(
            errors::INSUFFICIENT_PRIVILEGE,
            format!(
                "apply_config refused {} change(s) whose risk was not allowed ({}), and changed nothing: {}",
                refused.len(),
                allow.join(", "),
                listed(&refused, Change::shown)
            ),
            "Review them with SELECT * FROM tenancy.plan_config(doc); then allow their risk, for example tenancy.apply_config(doc, allow => '{safe,narrowing,widening}').",
        )
        .code("risk_not_allowed")
        .raise();
    }

    let mut ordered: Vec<&Change> = mine.clone();
    ordered.sort_by_key(|c| match c.step {
        Step::Calls { phase, .. } => phase,
        Step::Unsupported(_) | Step::TenantAdmin(_) => u8::MAX,
    });
    // As the caller (see the module's documentation), with search_path pinned to pg_catalog
    // for the calls: their names and operators are schema-qualified, the document's tables
    // are too (as export_config prints them), and nothing another role created on the
    // caller's search_path can take part in them.
    catalog::with_pinned_search_path(|| {
        for c in &ordered {
            if let Step::Calls { calls, .. } = &c.step {
                for (sql, args) in calls {
                    let args: Vec<pgrx::datum::DatumWithOid> =
                        args.iter().map(|a| a.clone().into()).collect();
                    Spi::run_with_args(sql, &args).unwrap_or_else(|e| {
                        pgrx::error!(
                            "pg_tenancy: apply_config: {} failed: {e}",
                            errors::clean(&c.shown())
                        )
                    });
                }
            }
        }
    });

    let left: Vec<Change> = plan(doc).into_iter().filter(|c| c.duty() == duty).collect();
    if !left.is_empty() {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!(
                "apply_config did not reach the document, and changed nothing: {}",
                listed(&left.iter().collect::<Vec<_>>(), Change::shown)
            ),
            "SELECT * FROM tenancy.plan_config(doc); shows what differs; report it as a bug of pg_tenancy with the document.",
        );
    }
    if !ordered.is_empty() {
        crate::audit::admin(
            "apply_config",
            None,
            serde_json::json!({"changes": ordered.len(), "allow": allow}),
        );
    }
    let rows: Vec<_> = changes
        .into_iter()
        // A key admin sees the keys' changes only; an operator also the keys it left.
        .filter(|c| duty == Duty::Operator || c.duty() == Duty::KeyAdmin)
        .map(|c| {
            let status = match (&c.step, c.duty()) {
                (_, d) if d == duty => "applied".to_string(),
                (Step::TenantAdmin(how), _) => format!("left for the tenant's admin: {how}"),
                _ => "left for a key admin: tenancy.apply_config(doc) as a member of tenancy_key_admin"
                    .to_string(),
            };
            // Escaped as plan_config shows them: a name in the document cannot reorder or
            // hide the text of the rows (an attacker's pass found them raw here).
            (
                c.action,
                errors::clean(&c.object),
                errors::clean(&c.detail),
                c.risk.to_string(),
                errors::clean(&status),
            )
        })
        .collect();
    TableIterator::new(rows)
}
