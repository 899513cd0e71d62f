//! Governance (issue #30): what a platform team reads and keeps as code without reading a
//! tenant's rows.
//!
//! So far: [`assert_clean`], the CI gate; [`plan_config`], what applying such a document would
//! change with each change's risk; and [`export_config`], a canonical document of the tenancy configuration (tenants with
//! their settings, limits, roles, grants, members, role mappings and keys' ids and algorithms;
//! protected tables with their policy digests; auto-protected schemas), never a secret and
//! never a row. Canonical: objects are jsonb (keys in jsonb's order), every list is sorted by
//! its natural key, times are UTC text, nulls are left out, and nothing that differs between
//! two databases holding the same configuration is in it (tenants' uuids, creation times).
//! The same database exported twice gives byte-identical output.

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
      'settings', t.settings, 'limits', t.limits,
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
        FROM tenancy.signing_key k WHERE k.tenant_id = t.id), '[]'))
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
            let row = catalog::require_tenant(t);
            authz::require_operator_or_tenant_admin("export the configuration of", &row);
            Some(row.id)
        }
        None => {
            authz::require_operator("export the configuration of every tenant");
            None
        }
    };
    JsonB(current(id))
}

/// One change a document would make: (action, object, detail, risk).
type Change = (String, String, String, &'static str);

/// Adds nothing that widens access.
const SAFE: &str = "safe";
/// Revokes or removes access.
const NARROWING: &str = "narrowing";
/// Grants access: privileges, members, mappings, keys, a resumed tenant.
const WIDENING: &str = "widening";
/// Removes protection or data: unprotect, audit off, drop role, decommission.
const DESTRUCTIVE: &str = "destructive";

/// The items of `list` (a jsonb array of objects) by the key `key_of` gives each.
fn by_key(
    list: &serde_json::Value,
    key_of: impl Fn(&serde_json::Value) -> String,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    list.as_array()
        .map(|a| a.iter().map(|v| (key_of(v), v.clone())).collect())
        .unwrap_or_default()
}

fn text(v: &serde_json::Value, key: &str) -> String {
    match &v[key] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Added, removed and changed items of two keyed lists, in key order.
fn compare<'a>(
    now: &'a std::collections::BTreeMap<String, serde_json::Value>,
    want: &'a std::collections::BTreeMap<String, serde_json::Value>,
) -> Vec<(
    &'a String,
    Option<&'a serde_json::Value>,
    Option<&'a serde_json::Value>,
)> {
    let mut keys: Vec<&String> = now.keys().chain(want.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|k| (k, now.get(k), want.get(k)))
        .filter(|(_, a, b)| a != b)
        .collect()
}

/// The changes of signing keys (`object` names their owner: a tenant's slug or "platform").
fn key_changes(
    owner: &str,
    now: &serde_json::Value,
    want: &serde_json::Value,
    out: &mut Vec<Change>,
) {
    let (now, want) = (
        by_key(now, |k| text(k, "kid")),
        by_key(want, |k| text(k, "kid")),
    );
    for (kid, a, b) in compare(&now, &want) {
        let object = format!("{owner} key {kid}");
        match (a, b) {
            (None, Some(b)) => out.push((
                "add_key".into(),
                object,
                format!(
                    "{} (its key material is not in the document: a key admin adds it)",
                    text(b, "alg")
                ),
                WIDENING,
            )),
            (Some(_), None) => out.push(("revoke_key".into(), object, String::new(), NARROWING)),
            (Some(a), Some(b)) => {
                if b["revoked"] == true && a["revoked"] != true {
                    out.push((
                        "revoke_key".into(),
                        object.clone(),
                        String::new(),
                        NARROWING,
                    ));
                } else if a["revoked"] == true && b["revoked"] != true {
                    out.push((
                        "add_key".into(),
                        object.clone(),
                        "a revoked key cannot be restored: add a new one".into(),
                        WIDENING,
                    ));
                }
                let (x, y) = (text(a, "not_after"), text(b, "not_after"));
                if x != y {
                    // Empty: no end. Later or none widens, earlier narrows.
                    let widens = y.is_empty() || (!x.is_empty() && y > x);
                    out.push((
                        "set_key_expiry".into(),
                        object,
                        format!(
                            "{} -> {}",
                            if x.is_empty() { "none" } else { &x },
                            if y.is_empty() { "none" } else { &y }
                        ),
                        if widens { WIDENING } else { NARROWING },
                    ));
                }
                if text(a, "alg") != text(b, "alg") {
                    out.push((
                        "add_key".into(),
                        format!("{owner} key {kid}"),
                        "a key's algorithm cannot change: add a new key".into(),
                        WIDENING,
                    ));
                }
            }
            (None, None) => {}
        }
    }
}

/// The changes of the keys of a tenant's jsonb object `field` (settings, limits), each as
/// `action` with its old and new value and the risk `risk` gives.
#[allow(clippy::too_many_arguments)]
fn key_value_changes(
    slug: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    field: &str,
    action: &str,
    label: &str,
    risk: impl Fn(Option<&serde_json::Value>, Option<&serde_json::Value>) -> &'static str,
    out: &mut Vec<Change>,
) {
    let empty = serde_json::json!({});
    let (xa, xb) = (
        a.get(field).unwrap_or(&empty),
        b.get(field).unwrap_or(&empty),
    );
    let keys: std::collections::BTreeSet<&String> = xa
        .as_object()
        .into_iter()
        .chain(xb.as_object())
        .flat_map(|o| o.keys())
        .collect();
    let shown = |v: Option<&serde_json::Value>| v.map_or("none".into(), |v| v.to_string());
    for k in keys {
        let (now, want) = (xa.get(k), xb.get(k));
        if now != want {
            out.push((
                action.into(),
                format!("{slug} {label} {k}"),
                format!("{} -> {}", shown(now), shown(want)),
                risk(now, want),
            ));
        }
    }
}

/// A ceiling removed or raised lets the tenant use more (widening); one added or lowered
/// narrows. Values that are not numbers cannot be compared: widening, to be read.
fn limit_risk(now: Option<&serde_json::Value>, want: Option<&serde_json::Value>) -> &'static str {
    match (now.and_then(|v| v.as_f64()), want.and_then(|v| v.as_f64())) {
        (_, None) if want.is_none() => WIDENING,
        (None, Some(_)) if now.is_none() => NARROWING,
        (Some(a), Some(b)) if b <= a => NARROWING,
        _ => WIDENING,
    }
}

/// The changes inside one tenant that exists now (`a`) and in the document (`b`).
fn tenant_changes(slug: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<Change>) {
    let (sa, sb) = (text(a, "status"), text(b, "status"));
    if sa != sb {
        let (action, risk) = match sb.as_str() {
            "suspended" => ("suspend_tenant", NARROWING),
            "active" => ("resume_tenant", WIDENING),
            _ => ("decommission_tenant", DESTRUCTIVE),
        };
        out.push((action.into(), slug.into(), format!("{sa} -> {sb}"), risk));
    }
    if text(a, "name") != text(b, "name") {
        out.push((
            "set_name".into(),
            slug.into(),
            format!("{} -> {}", text(a, "name"), text(b, "name")),
            SAFE,
        ));
    }
    if text(a, "region") != text(b, "region") {
        out.push((
            "set_region".into(),
            slug.into(),
            format!("{} -> {}", text(a, "region"), text(b, "region")),
            WIDENING,
        ));
    }
    // A new or changed setting may widen (default_roles, say); one removed narrows.
    key_value_changes(
        slug,
        a,
        b,
        "settings",
        "set_setting",
        "setting",
        |_, want| {
            if want.is_none() {
                NARROWING
            } else {
                WIDENING
            }
        },
        out,
    );
    key_value_changes(slug, a, b, "limits", "set_limit", "limit", limit_risk, out);
    let roles = |v: &serde_json::Value| by_key(&v["roles"], |r| text(r, "role"));
    let (ra, rb) = (roles(a), roles(b));
    for (role, x, y) in compare(&ra, &rb) {
        let object = format!("{slug} role {role}");
        match (x, y) {
            (None, Some(_)) => {
                out.push(("create_role".into(), object.clone(), String::new(), SAFE))
            }
            (Some(_), None) => out.push((
                "drop_role".into(),
                object.clone(),
                String::new(),
                DESTRUCTIVE,
            )),
            _ => {}
        }
        let privileges = |r: Option<&serde_json::Value>| {
            r.map(|r| {
                by_key(&r["privileges"], |p| {
                    format!("{} on {}", text(p, "privilege"), text(p, "table"))
                })
            })
            .unwrap_or_default()
        };
        let (pa, pb) = (privileges(x), privileges(y));
        for (p, u, v) in compare(&pa, &pb) {
            match (u, v) {
                (None, Some(_)) => out.push(("grant".into(), object.clone(), p.clone(), WIDENING)),
                (Some(_), None) if y.is_some() => {
                    out.push(("revoke".into(), object.clone(), p.clone(), NARROWING))
                }
                _ => {}
            }
        }
    }
    let members = |v: &serde_json::Value| {
        by_key(&v["members"], |m| {
            format!("{} as {}", text(m, "subject"), text(m, "role"))
        })
    };
    for (m, x, y) in compare(&members(a), &members(b)) {
        match (x, y) {
            (None, Some(_)) => out.push((
                "add_member".into(),
                format!("{slug} member"),
                m.clone(),
                WIDENING,
            )),
            (Some(_), None) => out.push((
                "remove_member".into(),
                format!("{slug} member"),
                m.clone(),
                NARROWING,
            )),
            _ => {}
        }
    }
    let mappings = |v: &serde_json::Value| by_key(&v["mappings"], |m| text(m, "role"));
    for (role, x, y) in compare(&mappings(a), &mappings(b)) {
        let object = format!("{slug} mapping {role}");
        match (x, y) {
            (Some(_), None) => out.push(("unmap_role".into(), object, String::new(), NARROWING)),
            (_, Some(y)) => out.push((
                "map_role".into(),
                object,
                y["tenant_roles"].to_string(),
                WIDENING,
            )),
            _ => {}
        }
    }
    key_changes(slug, &a["keys"], &b["keys"], out);
}

/// What applying `doc` (a document of [`export_config`]'s form) to this database would change,
/// one row per change, each with its risk: `safe` (adds nothing that widens access),
/// `narrowing` (revokes or removes access), `widening` (grants, members, mappings, keys, a
/// resumed tenant, a raised or removed ceiling), `destructive` (unprotect, audit off, drop role,
/// decommission). A document with the platform's parts
/// (`protected_tables`, `platform_keys`, `auto_protect_schemas`) describes the whole
/// configuration, so a tenant missing from it would be decommissioned; a document of tenants
/// only is compared for those tenants. Changes nothing. Operators only.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::type_complexity)]
fn plan_config(
    doc: JsonB,
) -> TableIterator<
    'static,
    (
        name!(action, String),
        name!(object, String),
        name!(detail, String),
        name!(risk, String),
    ),
> {
    authz::require_operator("plan a configuration change");
    TableIterator::new(
        plan(doc.0)
            .into_iter()
            .map(|(a, o, d, r)| (a, o, d, r.to_string())),
    )
}

/// The changes of [`plan_config`].
fn plan(want: serde_json::Value) -> Vec<Change> {
    if want["version"] != 1 || !want["tenants"].is_array() {
        errors::raise(
            errors::INVALID_PARAMETER,
            "not a pg_tenancy configuration document (version 1 with a tenants array)",
            "Start from SELECT tenancy.export_config(); and edit it.",
        );
    }
    let whole = ["protected_tables", "platform_keys", "auto_protect_schemas"]
        .iter()
        .any(|k| want.get(*k).is_some());
    let now = current(None);
    let mut out: Vec<Change> = Vec::new();
    let (ta, tb) = (
        by_key(&now["tenants"], |t| text(t, "slug")),
        by_key(&want["tenants"], |t| text(t, "slug")),
    );
    for (slug, a, b) in compare(&ta, &tb) {
        match (a, b) {
            (None, Some(b)) => {
                out.push(("create_tenant".into(), slug.clone(), String::new(), SAFE));
                // Against a tenant as create_tenant makes it: its built-in roles are seeded.
                let seeded = serde_json::json!({
                    "status": "active",
                    "roles": b["roles"].as_array().map(|r| r.iter().filter(|r| r["builtin"] == true).cloned().collect::<Vec<_>>()),
                    "settings": {}, "limits": {},
                });
                tenant_changes(slug, &seeded, b, &mut out);
            }
            (Some(_), None) if whole => out.push((
                "decommission_tenant".into(),
                slug.clone(),
                "not in the document".into(),
                DESTRUCTIVE,
            )),
            (Some(a), Some(b)) => tenant_changes(slug, a, b, &mut out),
            _ => {}
        }
    }
    if whole {
        key_changes(
            "platform",
            &now["platform_keys"],
            &want["platform_keys"],
            &mut out,
        );
        let tables = |v: &serde_json::Value| by_key(&v["protected_tables"], |t| text(t, "table"));
        for (table, a, b) in compare(&tables(&now), &tables(&want)) {
            let object = table.clone();
            match (a, b) {
                (None, Some(b)) => out.push((
                    "protect".into(),
                    object,
                    format!(
                        "tenant column {}, audit {}",
                        text(b, "tenant_column"),
                        b["audited"]
                    ),
                    SAFE,
                )),
                (Some(_), None) => {
                    out.push(("unprotect".into(), object, String::new(), DESTRUCTIVE))
                }
                (Some(a), Some(b)) => {
                    if a["audited"] == true && b["audited"] != true {
                        out.push(("protect".into(), object, "audit off".into(), DESTRUCTIVE));
                    } else if text(a, "tenant_column") != text(b, "tenant_column") {
                        out.push((
                            "protect".into(),
                            object,
                            format!(
                                "tenant column {} -> {}",
                                text(a, "tenant_column"),
                                text(b, "tenant_column")
                            ),
                            DESTRUCTIVE,
                        ));
                    } else {
                        out.push((
                            "protect".into(),
                            object,
                            if a["audited"] != b["audited"] {
                                "audit on".into()
                            } else {
                                "policies regenerated (their digest differs)".into()
                            },
                            SAFE,
                        ));
                    }
                }
                (None, None) => {}
            }
        }
        let schemas =
            |v: &serde_json::Value| by_key(&v["auto_protect_schemas"], |s| text(s, "schema"));
        for (schema, a, b) in compare(&schemas(&now), &schemas(&want)) {
            match (a, b) {
                (Some(_), None) => out.push((
                    "auto_protect_off".into(),
                    schema.clone(),
                    String::new(),
                    DESTRUCTIVE,
                )),
                (_, Some(b)) => out.push((
                    "auto_protect".into(),
                    schema.clone(),
                    format!("tenant column {}", text(b, "tenant_column")),
                    SAFE,
                )),
                _ => {}
            }
        }
    }
    out
}

/// The CI gate: raises 55000, listing them, when `tenancy.verify()` reports an error or (with
/// `expected`, a document of [`export_config`]'s form) the configuration differs from the
/// document; returns nothing when clean. Operators only.
#[pg_extern(volatile, parallel_unsafe)]
fn assert_clean(expected: default!(Option<JsonB>, "NULL")) {
    authz::require_operator("check the configuration");
    let mut problems: Vec<String> = Spi::connect(|c| {
        c.select(
            "SELECT rule || ' ' || object || ': ' || detail FROM tenancy.verify() \
              WHERE severity = 'error' ORDER BY rule, object",
            None,
            &[],
        )?
        .map(|r| r.get::<String>(1).map(Option::unwrap_or_default))
        .collect::<Result<Vec<_>, _>>()
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: verify() failed: {e}"));
    let verify_errors = problems.len();
    if let Some(doc) = expected {
        problems.extend(
            plan(doc.0)
                .into_iter()
                .map(|(action, object, detail, risk)| {
                    format!(
                        "{risk} {action} {object}{}",
                        if detail.is_empty() {
                            String::new()
                        } else {
                            format!(": {detail}")
                        }
                    )
                }),
        );
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
