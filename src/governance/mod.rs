//! Governance (issue #30): what a platform team reads and keeps as code without reading a
//! tenant's rows.
//!
//! Configuration as code: [`export_config`], a canonical document of the tenancy
//! configuration; `plan_config` (plan.rs), what applying such a document would change, each
//! change with its risk; `apply_config` (apply.rs), which applies it or changes nothing; and
//! [`assert_clean`], the CI gate.
//!
//! The document holds tenants with their settings, limits, roles, grants, members, role
//! mappings, keys' ids and algorithms and audit exclusions (the columns each tenant's admin
//! keeps out of its trail);
//! protected tables with their policy digests; auto-protected schemas), never a secret and
//! never a row. Canonical: objects are jsonb (keys in jsonb's order), every list is sorted by
//! its natural key, times are UTC text, nulls are left out, and nothing that differs between
//! two databases holding the same configuration is in it (tenants' uuids, creation times).
//! The same database exported twice gives byte-identical output.
//!
//! Left out on purpose, as access state rather than configuration: support grants (an
//! operator's access for a limited time, given and ended by a tenant's admin), revocations of
//! tokens and subjects (they concern tokens already issued) and open bindings. Applying a
//! document neither makes nor ends any of them.

mod apply;
mod plan;
mod stats;

use crate::{authz, catalog, errors};
use pgrx::prelude::*;
use pgrx::JsonB;

/// The document; `$1` the one tenant's id, or NULL for all and the platform's part. Read as
/// the catalog owner with a pinned `search_path`, so tables print schema-qualified the same
/// way every time.
const EXPORT: &str = "SELECT pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
  'version', 1,
  'tenants', coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
      'slug', t.slug, 'name', t.name, 'status', t.status, 'region', t.region,
      'settings', coalesce(t.settings, '{}'), 'limits', coalesce(t.limits, '{}'),
      'roles', coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
            'role', r.role, 'builtin', r.builtin,
            'privileges', coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                  'table', coalesce(p.relid::text, '*'), 'privilege', p.privilege)
                  ORDER BY coalesce(p.relid::text, '*'), p.privilege)
                FROM tenancy.role_privilege p WHERE p.tenant_id = r.tenant_id AND p.role = r.role), '[]'))
          ORDER BY r.role)
        FROM tenancy.tenant_role r WHERE r.tenant_id = t.id), '[]'),
      'members', coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
            'subject', m.subject, 'role', m.role) ORDER BY m.subject, m.role)
        FROM tenancy.member m WHERE m.tenant_id = t.id), '[]'),
      'mappings', coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
            'role', g.role::text,
            'tenant_roles', (SELECT pg_catalog.jsonb_agg(x ORDER BY x) FROM pg_catalog.unnest(g.tenant_roles) x))
          ORDER BY g.role::text)
        FROM tenancy.role_mapping g WHERE g.tenant_id = t.id), '[]'),
      'keys', coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
            'kid', k.kid, 'alg', k.alg,
            'not_after', pg_catalog.to_char(k.not_after AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
            'revoked', k.revoked_at IS NOT NULL) ORDER BY k.kid)
        FROM tenancy.signing_key k WHERE k.tenant_id = t.id), '[]'),
      'audit_exclusions', coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
            'table', x.tbl, 'columns', pg_catalog.to_jsonb(x.columns)) ORDER BY x.tbl)
        FROM (SELECT e.relid::text AS tbl, e.columns FROM tenancy.audit_exclusion e WHERE e.tenant_id = t.id
              UNION ALL
              SELECT e.coordinator_relid::pg_catalog.regclass::text, e.columns
                FROM tenancy.citus_audit_exclusion e WHERE e.tenant_id = t.id) x), '[]'))
    ORDER BY t.slug)
    FROM tenancy.tenant t WHERE $1::uuid IS NULL OR t.id = $1), '[]'),
  'platform_keys', CASE WHEN $1::uuid IS NULL THEN coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
            'kid', k.kid, 'alg', k.alg,
            'not_after', pg_catalog.to_char(k.not_after AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
            'revoked', k.revoked_at IS NOT NULL) ORDER BY k.kid)
        FROM tenancy.signing_key k WHERE k.tenant_id IS NULL), '[]') END,
  'protected_tables', CASE WHEN $1::uuid IS NULL THEN coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
            'table', p.relid::text, 'tenant_column', p.tenant_column, 'audited', p.audited,
            'policy_digest', p.policy_digest, 'parent', p.parent::text) ORDER BY p.relid::text)
        FROM tenancy.protected_table p), '[]') END,
  'auto_protect_schemas', CASE WHEN $1::uuid IS NULL THEN coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
            'schema', s.schema_name, 'tenant_column', s.tenant_column) ORDER BY s.schema_name)
        FROM tenancy.auto_protect_schema s), '[]') END))";

/// The tenancy configuration as a canonical jsonb document (see the module's documentation):
/// of every tenant and the platform for operators, of one tenant (slug or uuid) for operators
/// and that tenant's admin (a session bound with its admin role). Reads the catalog as its
/// owner (a user switch), so VOLATILE PARALLEL UNSAFE.
#[pg_extern(volatile, parallel_unsafe)]
fn export_config(tenant: default!(Option<&str>, "NULL")) -> JsonB {
    let id = match tenant {
        Some(t) => {
            let row = authz::require_manageable_tenant("export the configuration of", t);
            Some(row.id)
        }
        None => {
            authz::require_operator("export the configuration of every tenant");
            None
        }
    };
    JsonB(current(id))
}

/// The CI gate: raises 55000, listing them, when `tenancy.verify()` reports an error or (with
/// `expected`, a document of [`export_config`]'s form) the configuration differs from the
/// document; returns nothing when clean. Operators only.
#[pg_extern(volatile, parallel_unsafe)]
fn assert_clean(expected: default!(Option<JsonB>, "NULL")) {
    authz::require_operator("check the configuration");
    // As the caller (verify() is the operator's), with the search_path pinned: an operator's
    // own `=` (text, text) on its search_path made the gate pass over verify()'s errors (an
    // attacker's pass).
    let mut problems: Vec<String> = catalog::with_pinned_search_path(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT rule || ' ' || object || ': ' || detail FROM tenancy.verify() \
                  WHERE severity = 'error' ORDER BY rule, object",
                None,
                &[],
            )?
            .map(|r| r.get::<String>(1).map(Option::unwrap_or_default))
            .collect::<Result<Vec<_>, _>>()
        })
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: verify() failed: {e}"));
    let verify_errors = problems.len();
    if let Some(doc) = expected {
        problems.extend(plan::plan(doc.0).iter().map(plan::Change::shown));
    }
    if problems.is_empty() {
        return;
    }
    let shown = 50;
    let mut list = problems
        .iter()
        .take(shown)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > shown {
        list.push_str(&format!("; and {} more", problems.len() - shown));
    }
    errors::Refusal::new(
        errors::NOT_IN_PREREQUISITE_STATE,
        format!(
            "the tenancy configuration is not clean ({verify_errors} error(s) from tenancy.verify(), {} change(s) from the expected document): {list}",
            problems.len() - verify_errors
        ),
        "SELECT * FROM tenancy.verify() WHERE severity = 'error'; and SELECT * FROM tenancy.plan_config(expected); say each and how to fix it.",
    )
    .code("configuration_not_clean")
    .raise()
}

/// The configuration now, as [`export_config`] gives it (without its permission check: the
/// callers check theirs).
fn current(tenant: Option<uuid::Uuid>) -> serde_json::Value {
    catalog::owner_rows(
        "the tenancy configuration",
        EXPORT,
        &[tenant.map(catalog::to_pg_uuid).into()],
        |r| r.get::<JsonB>(1),
    )
    .into_iter()
    .next()
    .flatten()
    .map(|j| j.0)
    .unwrap_or_else(|| {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            "the tenancy configuration could not be read",
            "Check that pg_tenancy's catalog is intact: SELECT * FROM tenancy.verify();",
        )
    })
}
