//! Tenant lifecycle: create, suspend, resume; per-tenant settings and resource limits.

pub mod certificate;
pub mod limits;

use crate::authz;
use crate::catalog::{self, to_pg_uuid};
use crate::errors::{self, DUPLICATE_OBJECT, INVALID_PARAMETER, NOT_IN_PREREQUISITE_STATE};
use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};

/// Tenant settings applied with SET LOCAL in every bound transaction (src/lifecycle/limits.rs).
pub const RESOURCE_SETTINGS: &[&str] = &crate::lifecycle::limits::NAMES;

/// A slug: 2 to 63 characters, a lowercase letter then lowercase letters, digits, `-` or `_`,
/// and not something that reads as a uuid (the `tenant` arguments and the token's tenant claim
/// take either, a uuid first).
pub fn valid_slug(slug: &str) -> bool {
    let b = slug.as_bytes();
    uuid::Uuid::parse_str(slug).is_err()
        && (2..=63).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// Check a resource setting's value the way SET would, without applying it.
fn check_resource_setting(name: &str, value: &serde_json::Value) {
    let text = match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => errors::raise(
            INVALID_PARAMETER,
            format!("tenant setting \"{name}\" must be a string or a number"),
            format!("For example '\"5s\"' or '5000' for {name}."),
        ),
    };
    let (Ok(n), Ok(v)) = (std::ffi::CString::new(name), std::ffi::CString::new(text)) else {
        errors::raise(
            INVALID_PARAMETER,
            format!("invalid value for tenant setting \"{name}\""),
            "Remove NUL bytes.",
        );
    };
    // Checked the way SET checks it (changeVal = false applies nothing); elevel DEBUG5 makes a
    // bad value return 0 instead of raising PostgreSQL's own error, so ours can carry a HINT.
    // SAFETY: name and value are NUL-terminated (CStrings made above); with changeVal = false
    // nothing is applied, and the setting is only looked up and checked.
    let ok = unsafe {
        pg_sys::set_config_option(
            n.as_ptr(),
            v.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SET,
            false,
            pgrx::PgLogLevel::DEBUG5 as i32,
            false,
        )
    };
    // +1 applied, -1 valid but not applied (changeVal = false), 0 invalid.
    if ok == 0 {
        errors::raise(
            INVALID_PARAMETER,
            format!("invalid value for tenant setting \"{name}\": {value}"),
            format!("Use a value that SET {name} accepts, for example '\"5s\"' for timeouts or '\"64MB\"' for work_mem."),
        );
    }
}

/// How deep a setting's value may nest. Settings travel inside documents (`export_config`
/// nests each tenant's settings three levels down) read back through serde_json, whose
/// recursion limit is 128: a tenant admin's `set_setting` of a value 126 levels deep made
/// `export_config`, `plan_config`, `apply_config` and `assert_clean` fail for every tenant
/// (an attacker's pass).
const MAX_SETTING_DEPTH: usize = 32;

fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn check_setting_depth(key: &str, v: &serde_json::Value) {
    if depth(v) > MAX_SETTING_DEPTH {
        errors::raise(
            INVALID_PARAMETER,
            format!("tenant setting \"{key}\" nests deeper than {MAX_SETTING_DEPTH} levels"),
            "Keep settings shallow: objects and arrays nested at most 32 levels.",
        );
    }
}

/// How large one setting's value and a tenant's settings may be, as JSON text. A tenant's
/// settings are read with the tenant on every backend's first bind of it and kept in its cache,
/// and travel whole in `export_config`: a tenant admin's two settings of 125 MB each made one
/// member's bind take 1 GB, an operator's export 1.6 GB, and a thousand `add_member` calls in
/// one transaction (each reloading the tenant) 24 GB, until the kernel ended the backend and
/// the postmaster every tenant's sessions (an attacker's pass).
const MAX_SETTING_BYTES: usize = 64 * 1024;
const MAX_SETTINGS_BYTES: usize = 1024 * 1024;

fn check_setting_size(key: &str, v: &serde_json::Value) {
    if serde_json::to_string(v).map_or(usize::MAX, |t| t.len()) > MAX_SETTING_BYTES {
        errors::raise(
            INVALID_PARAMETER,
            format!("tenant setting \"{key}\" is larger than {MAX_SETTING_BYTES} bytes as JSON"),
            "Keep settings small (each at most 64 KiB, a tenant's at most 1 MiB): store larger data in a protected table of the tenant.",
        );
    }
}

fn refuse_settings_too_large() -> ! {
    errors::raise(
        INVALID_PARAMETER,
        format!("a tenant's settings would be larger than {MAX_SETTINGS_BYTES} bytes as JSON"),
        "Keep settings small (each at most 64 KiB, a tenant's at most 1 MiB): remove some (set_setting(tenant, key, NULL)) or store larger data in a protected table of the tenant.",
    )
}

fn check_settings(settings: &serde_json::Value) {
    let Some(obj) = settings.as_object() else {
        errors::raise(
            INVALID_PARAMETER,
            "tenant settings must be a JSON object",
            "Pass settings like '{\"model\": \"small\", \"statement_timeout\": \"5s\"}'.",
        );
    };
    if serde_json::to_string(settings).map_or(usize::MAX, |t| t.len()) > MAX_SETTINGS_BYTES {
        refuse_settings_too_large();
    }
    for (k, v) in obj {
        check_setting_depth(k, v);
        check_setting_size(k, v);
        if RESOURCE_SETTINGS.contains(&k.as_str()) {
            check_resource_setting(k, v);
        }
    }
}

#[pg_extern(volatile, parallel_unsafe)]
fn create_tenant(
    slug: &str,
    name: default!(Option<&str>, "NULL"),
    region: default!(Option<&str>, "NULL"),
    settings: default!(JsonB, "'{}'"),
) -> pgrx::Uuid {
    authz::require_operator("create_tenant");
    crate::pg::citus::before_routing_as_another();
    if !valid_slug(slug) {
        errors::raise(
            INVALID_PARAMETER,
            format!("invalid tenant slug \"{slug}\""),
            "A slug is 2 to 63 characters: a lowercase letter, then lowercase letters, digits, '-' or '_', and does not read as a uuid.",
        );
    }
    check_settings(&settings.0);
    if let Some(existing) = catalog::tenant_by_ref(slug) {
        let hint = if existing.status == "decommissioned" {
            "The slug belonged to a decommissioned tenant and is kept as a tombstone; choose another slug."
        } else {
            "Slugs are unique; choose another, or use the existing tenant."
        };
        errors::raise(
            DUPLICATE_OBJECT,
            format!("tenant \"{slug}\" already exists"),
            hint,
        );
    }
    let id = catalog::with_owner(|| {
        Spi::connect_mut(|c| {
            let t = c.update(
                // A tenant whose default_roles name admin has an admin from its first binding:
                // seated now, as set_setting seats it (an attacker's pass, as an operator,
                // removed such default_roles later and then mapped a role of its own as admin).
                "INSERT INTO tenancy.tenant (slug, name, region, settings, admin_seated_at) \
                 VALUES ($1, $2, $3, $4, CASE WHEN coalesce($4::jsonb -> 'default_roles' ? 'admin', false) THEN now() END) \
                 RETURNING id",
                None,
                &[slug.into(), name.into(), region.into(), settings.into()],
            )?;
            let id = t.first().get::<pgrx::Uuid>(1)?.expect("id");
            c.update(
                "INSERT INTO tenancy.tenant_role (tenant_id, role, builtin) \
                 SELECT $1, r, true FROM unnest($2::text[]) AS r",
                None,
                &[id.into(), crate::rbac::SEEDED_ROLES.iter().map(|s| s.to_string()).collect::<Vec<_>>().into()],
            )?;
            c.update(
                "INSERT INTO tenancy.role_privilege (tenant_id, role, relid, privilege) \
                 SELECT $1, r.role, NULL, p FROM (VALUES ('admin'), ('member')) r(role), \
                        unnest('{select,insert,update,delete}'::text[]) p \
                 UNION ALL SELECT $1, 'viewer', NULL, 'select'",
                None,
                &[id.into()],
            )?;
            Ok::<_, pgrx::spi::Error>(id)
        })
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: create_tenant failed: {e}"));
    // The secret that keys the tenant's audit hashes, created with the tenant.
    crate::audit::audit_mac(catalog::from_pg_uuid(&id));
    crate::audit::admin(
        "create_tenant",
        Some(catalog::from_pg_uuid(&id)),
        serde_json::json!({"slug": slug, "region": region}),
    );
    id
}

/// Most tenants one `create_tenants` call onboards.
const CREATE_TENANTS_MAX: usize = 1_000_000;

/// Onboard many tenants in one call and one transaction: `tenants` is a JSON array of objects
/// with a `slug` and optionally `name`, `region` and `settings`, as `create_tenant` takes them.
/// All are checked first and all are created, or none. Each tenant gets what `create_tenant`
/// gives it (built-in roles and grants, an audit key, a `create_tenant` record in its own
/// chain), written set by set instead of tenant by tenant; the platform's chain records the
/// call. Returns each slug with its new id, in the order given.
#[pg_extern(volatile, parallel_unsafe)]
fn create_tenants(
    tenants: JsonB,
) -> TableIterator<'static, (name!(slug, String), name!(id, pgrx::Uuid))> {
    authz::require_operator("create_tenants");
    crate::pg::citus::before_routing_as_another();
    let bad = |detail: String| -> ! {
        errors::raise(
            INVALID_PARAMETER,
            format!("invalid tenants for create_tenants: {detail}"),
            "Pass a JSON array of objects with \"slug\" and optionally \"name\", \"region\" and \"settings\", e.g. '[{\"slug\": \"acme\"}, {\"slug\": \"globex\", \"region\": \"eu\"}]'.",
        )
    };
    let Some(items) = tenants.0.as_array() else {
        bad("not a JSON array".into())
    };
    if items.len() > CREATE_TENANTS_MAX {
        bad(format!(
            "{} tenants; at most {CREATE_TENANTS_MAX} per call",
            items.len()
        ));
    }
    let mut slugs: Vec<String> = Vec::with_capacity(items.len());
    let mut names: Vec<Option<String>> = Vec::with_capacity(items.len());
    let mut regions: Vec<Option<String>> = Vec::with_capacity(items.len());
    let mut settings: Vec<JsonB> = Vec::with_capacity(items.len());
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Some(obj) = item.as_object() else {
            bad(format!("element {i} is not an object"))
        };
        if let Some(k) = obj
            .keys()
            .find(|k| !matches!(k.as_str(), "slug" | "name" | "region" | "settings"))
        {
            bad(format!("element {i} has the unknown key \"{k}\""));
        }
        let text = |key: &str| -> Option<String> {
            match obj.get(key) {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(_) => bad(format!("element {i}: \"{key}\" is not a string")),
            }
        };
        let Some(slug) = text("slug") else {
            bad(format!("element {i} has no \"slug\""))
        };
        if !valid_slug(&slug) {
            errors::raise(
                INVALID_PARAMETER,
                format!("invalid tenant slug \"{slug}\""),
                "A slug is 2 to 63 characters: a lowercase letter, then lowercase letters, digits, '-' or '_', and does not read as a uuid.",
            );
        }
        if !seen.insert(slug.clone()) {
            errors::raise(
                DUPLICATE_OBJECT,
                format!("tenant \"{slug}\" is given twice"),
                "Slugs are unique; give each tenant once.",
            );
        }
        let set = match obj.get("settings") {
            None | Some(serde_json::Value::Null) => serde_json::json!({}),
            Some(v) => v.clone(),
        };
        check_settings(&set);
        names.push(text("name"));
        regions.push(text("region"));
        settings.push(JsonB(set));
        slugs.push(slug);
    }
    if slugs.is_empty() {
        return TableIterator::new(Vec::new());
    }
    let existing = catalog::owner_rows(
        "tenancy.tenant",
        "SELECT slug FROM tenancy.tenant WHERE slug = ANY ($1) ORDER BY slug LIMIT 1",
        &[slugs.clone().into()],
        |r| Ok(r.get::<String>(1)?.unwrap_or_default()),
    );
    if let Some(slug) = existing.first() {
        errors::raise(
            DUPLICATE_OBJECT,
            format!("tenant \"{slug}\" already exists"),
            "Slugs are unique (a decommissioned tenant's slug is kept as a tombstone); leave out the tenants that exist.",
        );
    }
    // The audit keys, from the server's strong random source, 32 bytes each.
    let mut secrets: Vec<Vec<u8>> = Vec::with_capacity(slugs.len());
    for _ in 0..slugs.len() {
        let mut secret = vec![0u8; 32];
        // SAFETY: writes exactly 32 bytes into the buffer.
        if !unsafe { pg_sys::pg_strong_random(secret.as_mut_ptr().cast(), secret.len()) } {
            pgrx::error!("pg_tenancy: the server's strong random source failed");
        }
        secrets.push(secret);
    }
    let ids: Vec<pgrx::Uuid> = catalog::with_owner(|| {
        Spi::connect_mut(|c| {
            // The ids come back in the order given (WITH ORDINALITY, then sorted).
            let t = c.update(
                "WITH ins AS ( \
                   INSERT INTO tenancy.tenant (slug, name, region, settings, admin_seated_at) \
                   SELECT x.slug, x.name, x.region, x.settings, \
                          CASE WHEN coalesce(x.settings -> 'default_roles' ? 'admin', false) THEN now() END \
                     FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[]) AS x(slug, name, region, settings) \
                   RETURNING id, slug) \
                 SELECT ins.id FROM ins JOIN unnest($1::text[]) WITH ORDINALITY AS o(slug, n) ON o.slug = ins.slug \
                  ORDER BY o.n",
                None,
                &[
                    slugs.clone().into(),
                    names.into(),
                    regions.clone().into(),
                    settings.into(),
                ],
            )?;
            let mut ids = Vec::with_capacity(slugs.len());
            for row in t {
                ids.push(row.get::<pgrx::Uuid>(1)?.expect("id"));
            }
            c.update(
                "INSERT INTO tenancy.tenant_role (tenant_id, role, builtin) \
                 SELECT t, r, true FROM unnest($1::uuid[]) AS t CROSS JOIN unnest($2::text[]) AS r",
                None,
                &[
                    ids.clone().into(),
                    crate::rbac::SEEDED_ROLES
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .into(),
                ],
            )?;
            c.update(
                "INSERT INTO tenancy.role_privilege (tenant_id, role, relid, privilege) \
                 SELECT t, g.role, NULL, g.privilege FROM unnest($1::uuid[]) AS t CROSS JOIN ( \
                   SELECT r.role, p AS privilege FROM (VALUES ('admin'), ('member')) r(role), \
                          unnest('{select,insert,update,delete}'::text[]) p \
                   UNION ALL SELECT 'viewer', 'select') g",
                None,
                &[ids.clone().into()],
            )?;
            c.update(
                "INSERT INTO tenancy.audit_key (tenant_id, secret) \
                 SELECT * FROM unnest($1::uuid[], $2::bytea[]) ON CONFLICT (tenant_id) DO NOTHING",
                None,
                &[ids.clone().into(), secrets.clone().into()],
            )?;
            Ok::<_, pgrx::spi::Error>(ids)
        })
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: create_tenants failed: {e}"));
    if ids.len() != slugs.len() {
        pgrx::error!(
            "pg_tenancy: create_tenants created {} of {} tenants",
            ids.len(),
            slugs.len()
        );
    }
    let uuids: Vec<uuid::Uuid> = ids.iter().map(catalog::from_pg_uuid).collect();
    crate::audit::prime_keys(uuids.iter().copied().zip(secrets.iter().map(Vec::as_slice)));
    crate::audit::admin_each(
        "create_tenant",
        uuids
            .iter()
            .zip(slugs.iter().zip(regions.iter()))
            .map(|(id, (slug, region))| (*id, serde_json::json!({"slug": slug, "region": region})))
            .collect(),
    );
    crate::audit::admin(
        "create_tenants",
        None,
        serde_json::json!({"tenants": slugs.len()}),
    );
    TableIterator::new(slugs.into_iter().zip(ids))
}

fn set_status(tenant: &str, action: &str, from: &[&str], to: &str, reason: Option<&str>) {
    let past = if action == "resume_tenant" {
        "resumed"
    } else {
        "suspended"
    };
    authz::require_operator(action);
    let t = catalog::require_tenant(tenant);
    if t.status == to {
        return;
    }
    if !from.contains(&t.status.as_str()) {
        errors::raise(
            NOT_IN_PREREQUISITE_STATE,
            format!("tenant \"{}\" is {} and cannot be {past}", t.slug, t.status),
            "Decommissioned tenants are kept as tombstones and cannot change status.",
        );
    }
    // Only from a status it may leave, checked again on the row the UPDATE changes: under READ
    // COMMITTED a concurrent decommission_tenant's row is what the UPDATE waits for and then
    // sees (an attacker's pass, as an operator, turned a decommissioned tenant back to active by
    // suspending it while the decommission ran).
    let from: Vec<String> = from.iter().map(|s| s.to_string()).collect();
    // The tenant's management lock first: a suspension is a kill switch, and does not wait for
    // ever on a tenant admin's open management transaction (its session is ended after
    // `tenancy.kill_switch_wait`).
    let ended = if action == "suspend_tenant" {
        crate::rbac::as_kill_switch(action, t.id, None, || catalog::lock_tenant_row(t.id)).1
    } else {
        catalog::lock_tenant_row(t.id);
        Vec::new()
    };
    let changed = catalog::write(
        "UPDATE tenancy.tenant SET status = $2, status_reason = $3, status_changed_at = now() \
          WHERE id = $1 AND status = ANY ($4) RETURNING 1",
        &[
            to_pg_uuid(t.id).into(),
            to.into(),
            reason.into(),
            from.into(),
        ],
    );
    if changed == 0 {
        let now = catalog::require_tenant(tenant);
        errors::raise(
            NOT_IN_PREREQUISITE_STATE,
            format!(
                "tenant \"{}\" is {} and cannot be {past}",
                now.slug, now.status
            ),
            "Decommissioned tenants are kept as tombstones and cannot change status.",
        );
    }
    crate::audit::admin(
        action,
        Some(t.id),
        crate::rbac::noting_ended(serde_json::json!({"slug": t.slug, "reason": reason}), ended),
    );
}

#[pg_extern(volatile, parallel_unsafe)]
fn suspend_tenant(tenant: &str, reason: default!(Option<&str>, "NULL")) {
    set_status(tenant, "suspend_tenant", &["active"], "suspended", reason);
}

#[pg_extern(volatile, parallel_unsafe)]
fn resume_tenant(tenant: &str) {
    set_status(tenant, "resume_tenant", &["suspended"], "active", None);
}

#[pg_extern(volatile, parallel_unsafe)]
fn set_setting(tenant: &str, key: &str, value: Option<JsonB>) {
    let t = authz::require_manageable_tenant("set_setting", tenant);
    // Locked, and read again after the lock (the widening check below reads whether it has an
    // admin; a decommissioned tenant is refused).
    let t = catalog::lock_live_tenant(&t);
    if key == "default_roles" && value.is_some() {
        // Roles for every token subject without a membership: widening.
        authz::require_may_widen("set_setting", &t);
    }
    if key.is_empty() || key.len() > 100 {
        errors::raise(
            INVALID_PARAMETER,
            "setting keys are 1 to 100 characters",
            "For example 'model' or 'statement_timeout'.",
        );
    }
    if t.status == "decommissioned" {
        errors::raise(
            NOT_IN_PREREQUISITE_STATE,
            format!("tenant \"{}\" is decommissioned", t.slug),
            "Decommissioned tenants cannot change.",
        );
    }
    if let Some(v) = value.as_ref() {
        check_setting_depth(key, &v.0);
        check_setting_size(key, &v.0);
        if RESOURCE_SETTINGS.contains(&key) {
            check_resource_setting(key, &v.0);
            crate::lifecycle::limits::check_setting(&t, key, &v.0);
        }
        if key == "default_roles"
            && !v
                .0
                .as_array()
                .is_some_and(|a| a.iter().all(|r| r.is_string()))
        {
            errors::raise(
                INVALID_PARAMETER,
                "default_roles must be an array of role names",
                "For example '[\"member\"]' or '[]'.",
            );
        }
    }
    let value_names_admin = value
        .as_ref()
        .and_then(|v| v.0.as_array().map(|a| a.iter().any(|r| r == "admin")))
        .unwrap_or(false);
    // The record says what was set (NULL: removed): a widening of default_roles is visible
    // in the tenant's trail as what it became.
    let recorded = value.as_ref().map(|v| v.0.clone());
    match value {
        // The total is checked on the row as updated (the row locked: a concurrent
        // set_setting's value is counted).
        Some(v) => {
            let n = catalog::write(
                "UPDATE tenancy.tenant SET settings = settings || jsonb_build_object($2::text, $3::jsonb) WHERE id = $1 \
                   AND pg_catalog.octet_length((settings || jsonb_build_object($2::text, $3::jsonb))::text) <= $4",
                &[
                    to_pg_uuid(t.id).into(),
                    key.into(),
                    v.into(),
                    (MAX_SETTINGS_BYTES as i32).into(),
                ],
            );
            if n == 0 {
                refuse_settings_too_large();
            }
        }
        None => {
            catalog::write(
                "UPDATE tenancy.tenant SET settings = settings - $2::text WHERE id = $1",
                &[to_pg_uuid(t.id).into(), key.into()],
            );
        }
    };
    if key == "default_roles" && value_names_admin {
        catalog::seat_admin(t.id);
    }
    crate::audit::admin(
        "set_setting",
        Some(t.id),
        serde_json::json!({"key": key, "value": recorded}),
    );
}

/// The bound tenant's setting `key` (NULL when unset).
#[pg_extern(stable, parallel_restricted)]
fn setting(key: &str) -> Option<JsonB> {
    let b = crate::binding::require();
    let t = catalog::tenant_by_id(b.tenant)?;
    t.settings.get(key).cloned().map(JsonB)
}

/// Whether the caller may see a tenant's row in tenancy.tenants.
#[pg_extern(stable, parallel_restricted, name = "_sees_tenant")]
fn sees_tenant(id: pgrx::Uuid) -> bool {
    if authz::is_operator(authz::caller()) {
        return true;
    }
    let id = catalog::from_pg_uuid(&id);
    crate::binding::current_if_bound().is_some_and(|b| b.tenant == id)
}

/// Whether the caller is a platform operator (superuser or member of tenancy_operator, however
/// the membership was granted).
#[pg_extern(stable, parallel_safe)]
fn is_operator() -> bool {
    authz::is_operator(authz::caller())
}

/// Whether the caller is a key admin (superuser or member of tenancy_key_admin, however the
/// membership was granted).
#[pg_extern(stable, parallel_safe)]
fn is_key_admin() -> bool {
    authz::is_key_admin(authz::caller())
}

/// Protected tables that hold rows of their own (partitions are emptied through their parent),
/// children before the tables their foreign keys reference: (oid, name, tenant column).
fn deletion_order() -> Vec<(pg_sys::Oid, String, String)> {
    let rows: Vec<(pg_sys::Oid, String, String, Vec<pg_sys::Oid>)> = catalog::with_owner(|| {
        Spi::connect(|c| {
            let t = c.select(
                "SELECT p.relid::oid, p.relid::text, p.tenant_column::text, \
                        coalesce((SELECT array_agg(DISTINCT con.confrelid) FROM pg_constraint con \
                                   WHERE con.conrelid = p.relid AND con.contype = 'f' AND con.confrelid <> p.relid), '{}'), \
                        has_schema_privilege(c.relowner, c.relnamespace, 'USAGE'), \
                        c.relowner::regrole::text, c.relnamespace::regnamespace::text \
                   FROM tenancy.protected_table p JOIN pg_class c ON c.oid = p.relid \
                  WHERE NOT EXISTS (SELECT FROM pg_inherits i JOIN tenancy.protected_table q ON q.relid = i.inhparent \
                                     WHERE i.inhrelid = p.relid) \
                  ORDER BY p.relid::oid",
                None,
                &[],
            )?;
            let mut out = Vec::new();
            for r in t {
                let table = r.get::<String>(2)?.unwrap_or_default();
                // The deletes run as each table's owner, who must be able to name its table.
                if !r.get::<bool>(5)?.unwrap_or(false) {
                    let owner = r.get::<String>(6)?.unwrap_or_default();
                    let schema = r.get::<String>(7)?.unwrap_or_default();
                    errors::raise(
                        NOT_IN_PREREQUISITE_STATE,
                        format!("the owner {owner} of protected table {table} has no USAGE on its schema {schema}"),
                        format!("decommission_tenant deletes as each table's owner: GRANT USAGE ON SCHEMA {schema} TO {owner};"),
                    );
                }
                out.push((
                    r.get::<pg_sys::Oid>(1)?.expect("relid"),
                    table,
                    r.get::<String>(3)?.unwrap_or_default(),
                    r.get::<Vec<pg_sys::Oid>>(4)?.unwrap_or_default(),
                ));
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: reading protected tables failed: {e}"));
    // Kahn's algorithm on "child references parent": emit a table once no remaining table
    // references it.
    let mut remaining: Vec<usize> = (0..rows.len()).collect();
    let mut order = Vec::new();
    while !remaining.is_empty() {
        let ready: Vec<usize> = remaining
            .iter()
            .copied()
            .filter(|&i| {
                !remaining
                    .iter()
                    .any(|&j| j != i && rows[j].3.contains(&rows[i].0))
            })
            .collect();
        if ready.is_empty() {
            // A cycle of foreign keys: delete in any order; deferrable constraints are deferred.
            order.append(&mut remaining);
            break;
        }
        remaining.retain(|i| !ready.contains(i));
        order.extend(ready);
    }
    order
        .into_iter()
        .map(|i| (rows[i].0, rows[i].1.clone(), rows[i].2.clone()))
        .collect()
}

/// Delete a tenant's rows from every protected table, remove its roles, members, keys,
/// mappings and support grants, keep a tombstone, and return a deletion certificate (also
/// written to the audit trail). One transaction: any failure changes nothing.
#[pg_extern(volatile, parallel_unsafe)]
fn decommission_tenant(tenant: &str, confirm: &str) -> JsonB {
    authz::require_operator("decommission_tenant");
    let t = catalog::require_tenant(tenant);
    if t.status == "decommissioned" {
        errors::raise(
            NOT_IN_PREREQUISITE_STATE,
            format!("tenant \"{}\" is already decommissioned", t.slug),
            "Its deletion certificate is in the audit trail.",
        );
    }
    if confirm != t.slug {
        errors::raise(
            INVALID_PARAMETER,
            format!("confirmation \"{confirm}\" does not match tenant \"{}\"", t.slug),
            format!("Pass the tenant's slug as confirm: SELECT tenancy.decommission_tenant('{0}', '{0}');", t.slug),
        );
    }
    let uuid = to_pg_uuid(t.id);
    // The tenant is locked first, so that no mapping, member, role, grant, key or revocation is
    // added to it from here on (each takes the lock, then finds the tenant decommissioned; its
    // mappings were read unlocked once, and one committed after the read was deleted
    // unchecked: an attacker's pass). A transaction that holds the lock longer than
    // `tenancy.decommission_wait` (a tenant admin's open management call) is ended; a
    // decommission that waited for another finds the tenant decommissioned (two certificates
    // were signed: an attacker's pass). Its mappings go: a role mapped to it and to one other
    // tenant would be left bound there without a token (checked before take_tenant ends any
    // writer; the other tenants' locks this takes end their holders as its own does: another
    // tenant's admin held a decommission so).
    let (mapped, mut ended) = crate::rbac::as_kill_switch(
        "decommission_tenant",
        t.id,
        Some(crate::gucs::decommission_wait_ms()),
        || {
            catalog::lock_live_tenant(&t);
            let roles = mapped_roles(&t);
            for &role in &roles {
                authz::require_no_tokenless_binding("decommission_tenant", role, &[t.id]);
            }
            roles
        },
    );
    // No transaction of the tenant writes from here on: those that wrote finish (or are
    // terminated), later ones wait and then find the tenant decommissioned. A prepared
    // transaction holding the tenant's writes is refused.
    ended.extend(take_tenant(&t));
    let mut rows = serde_json::Map::new();
    let mut total: u64 = 0;
    // Every deferrable constraint fires at the end of the statement that queued it, inside
    // the table owner's security-restricted operation, never at COMMIT (where a deferred
    // trigger of the owner would run as the operator). PostgreSQL refuses to defer a trigger
    // event inside such an operation anyway, so an owner's code that defers one fails the
    // decommission. Run as the caller: it fires the caller's own pending events, nobody
    // else's. Tables are emptied children first, so foreign keys hold after each statement.
    Spi::run("SET CONSTRAINTS ALL IMMEDIATE")
        .unwrap_or_else(|e| pgrx::error!("pg_tenancy: setting constraints immediate failed: {e}"));
    // On Citus, each Citus table's deletion reaches the workers with an assertion of its
    // binding that the coordinator signs (`src/binding/carrier.rs`).
    let citus = crate::pg::citus::in_database();
    let citus_tables = if citus {
        citus_preflight(&t)
    } else {
        Default::default()
    };
    // No deletion waits for a row lock longer than `tenancy.decommission_wait` (at least 1 s):
    // a session that holds none of the tenant's locks may hold its rows locked (a foreign key's
    // check from another tenant's or an unbound session, or a prepared transaction's), and the
    // decommission, holding every writer of the tenant off, waited for it for ever (an
    // attacker's pass). It fails then (55P03), with nothing changed. Set as the caller, put
    // back after the deletions.
    let wait_ms = crate::gucs::decommission_wait_ms().max(1000);
    let set_lock_timeout = |value: String| -> Option<String> {
        Spi::get_one_with_args::<String>(
            "SELECT pg_catalog.current_setting('lock_timeout') || pg_catalog.left(pg_catalog.set_config('lock_timeout', $1, true), 0)",
            &[value.into()],
        )
        .ok()
        .flatten()
    };
    let saved_lock_timeout = set_lock_timeout(format!("{wait_ms}ms"));
    for (relid, table, column) in deletion_order() {
        if citus_tables.untouched.contains(&relid) {
            // Held no row of the tenant (counted by the preflight): not written at all.
            continue;
        }
        // Locked as the delete will lock it, first: a table dropped after the list was read
        // (by another session's DDL, while this call ran or waited) took its rows with it, and
        // is passed over rather than failing the whole decommission (seen in CI: a test's own
        // table dropped beside another test's decommission). The lock processes invalidations,
        // so the lookup below sees the drop.
        // SAFETY: a lock held to the end of the transaction, on a relation that may no longer
        // exist (then the lookup finds nothing).
        unsafe { pg_sys::LockRelationOid(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE) };
        if crate::catalog::relation_owner(relid).is_none() {
            continue;
        }
        // As the table's owner in a security-restricted operation, with row security forced
        // and bound to this tenant for this table alone: the table's triggers, rules and
        // foreign-key actions run with the owner's privileges, and its policies confine the
        // delete to the tenant's rows. The table is named by its oid as the statement is
        // prepared, and the prepared statement checked to name it alone (`pg::relation_spi`):
        // an earlier table owner's trigger renamed the schema and put its own table under this
        // one's name, where it ran as this table's owner (an attacker's pass). The tenant is a
        // bound parameter.
        let column_sql = crate::catalog::quote_ident(&column);
        let tenant_datum = uuid
            .into_datum()
            .unwrap_or_else(|| pgrx::error!("pg_tenancy: the tenant's uuid"));
        let n = as_decommission(
            &t,
            relid,
            &table,
            citus_tables.distributed.contains(&relid),
            || {
                Spi::connect_mut(|_c| {
                    // SAFETY: inside the SPI connection just opened, in the transaction; the
                    // one argument is the tenant's uuid datum.
                    unsafe {
                        crate::pg::relation_spi::run_on(
                            relid,
                            pg_sys::RowExclusiveLock,
                            |name| format!("DELETE FROM {name} WHERE {column_sql} = $1"),
                            &[(pg_sys::UUIDOID, tenant_datum)],
                        )
                    }
                    .0
                })
            },
        );
        total += n;
        rows.insert(table, n.into());
    }
    if let Some(saved) = saved_lock_timeout {
        set_lock_timeout(saved);
    }
    // Certify only what is true: no row of the tenant is left in any protected table.
    let remaining = remaining_rows(&t, &citus_tables);
    if citus {
        crate::binding::carrier::end_assertion();
    }
    if let Some((table, n)) = remaining {
        errors::raise(
            NOT_IN_PREREQUISITE_STATE,
            format!("{n} rows of tenant \"{}\" remain in {table} after deletion", t.slug),
            "A role that bypasses row security wrote them concurrently, or a table is outside pg_tenancy's partition tree; remove them and decommission again (nothing was changed).",
        );
    }
    let mut removed = serde_json::Map::new();
    for (what, sql) in [
        ("members", "DELETE FROM tenancy.member WHERE tenant_id = $1"),
        (
            "role_privileges",
            "DELETE FROM tenancy.role_privilege WHERE tenant_id = $1",
        ),
        (
            "roles",
            "DELETE FROM tenancy.tenant_role WHERE tenant_id = $1",
        ),
        (
            "role_mappings",
            "DELETE FROM tenancy.role_mapping WHERE tenant_id = $1",
        ),
        (
            "support_grants",
            "DELETE FROM tenancy.support_grant WHERE tenant_id = $1",
        ),
        (
            "keys",
            "DELETE FROM tenancy.signing_key WHERE tenant_id = $1",
        ),
        (
            "subject_revocations",
            "DELETE FROM tenancy.subject_revocation WHERE tenant_id = $1",
        ),
        (
            "token_revocations",
            "DELETE FROM tenancy.token_revocation WHERE tenant_id = $1",
        ),
    ] {
        removed.insert(what.into(), catalog::write(sql, &[uuid.into()]).into());
    }
    // Roles mapped to no tenant now lose their grant on tenancy.mapped_role.
    crate::rbac::keep_mapping_dependencies(Some(&mapped));
    catalog::write(
        "UPDATE tenancy.tenant SET status = 'decommissioned', settings = '{}', status_reason = 'decommissioned', \
                status_changed_at = now() WHERE id = $1",
        &[uuid.into()],
    );
    let when = Spi::get_one::<String>(
        "SELECT pg_catalog.to_char(pg_catalog.timezone('UTC', pg_catalog.now()), 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    let mut cert = serde_json::json!({
        "certificate": "pg_tenancy deletion certificate",
        "tenant": t.id.to_string(),
        "slug": t.slug,
        "decommissioned_at": when,
        "decommissioned_by": authz::role_name(authz::caller()),
        // SAFETY: reads the session user's oid, set once the backend has authenticated.
        "session_user": authz::role_name(unsafe { pg_sys::GetSessionUserId() }),
        "rows_deleted": rows,
        "total_rows_deleted": total,
        "removed": removed,
    });
    // The sessions it ended (holding the tenant's management or write lock), as a kill
    // switch's record lists them.
    if !ended.is_empty() {
        cert["ended_sessions"] = ended.into();
    }
    crate::lifecycle::certificate::sign(&mut cert);
    crate::audit::admin("decommission_tenant", Some(t.id), cert.clone());
    JsonB(cert)
}

/// The fourth field of a tenant's write lock tag (SQL's advisory lock functions use 1 and 2
/// only, so no session can take it; the chain's locks use 0x7400 + lane).
const WRITE_LOCK_FIELD4: u16 = 0x7500;

/// The tenant's write lock: its fields 2 and 3 keyed by the tenant's audit key
/// ([`crate::audit::lock_tag_fields`]), so that `pg_locks` does not name the tenant.
fn write_lock_tag(tenant: uuid::Uuid) -> pg_sys::LOCKTAG {
    let (field2, field3) = crate::audit::lock_tag_fields(tenant);
    pg_sys::LOCKTAG {
        // SAFETY: MyDatabaseId is set for every backend connected to a database.
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: field2,
        locktag_field3: field3,
        locktag_field4: WRITE_LOCK_FIELD4,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    }
}

thread_local! {
    /// The tenant whose write lock this transaction holds.
    static WRITING: std::cell::Cell<Option<uuid::Uuid>> = const { std::cell::Cell::new(None) };
}

fn reset_at_transaction_end() {
    WRITING.with(|w| w.set(None));
}

/// Transaction ends (registered at _PG_init).
pub fn init() {
    crate::pg::hooks::at_transaction_event(xact_callback);
    crate::pg::binding_param::at_query_start(at_query_start);
    crate::pg::binding_param::at_parallel_write_start(at_parallel_write_start);
    crate::pg::binding_param::at_plan_start(at_plan_start);
    crate::pg::hooks::before_utility(before_utility);
    crate::binding::on_transaction_bound(limits::apply);
    crate::citus::set_key_maker(certificate::ensure_key);
    crate::citus::trail::set_purge_carrier(carry_purge, crate::binding::carrier::end_assertion);
}

/// The start of every query of a bound session: resource limits hold from it, before a
/// parallel plan fixes its workers' settings; a write holds the tenant's write lock
/// (decommission waits for it, and it waits for decommission).
fn at_query_start(writes: bool) {
    if let Some(tenant) = crate::binding::tenant_in_effect_unchecked() {
        limits::enforce(tenant);
        if writes {
            hold_for_write(tenant);
        }
    }
}

/// A query of a bound session that locks rows inside a parallel plan's leader: the tenant's
/// write lock, as at any write's start.
fn at_parallel_write_start() {
    if let Some(tenant) = crate::binding::tenant_in_effect_unchecked() {
        hold_for_write(tenant);
    }
}

/// Before a statement of a bound session is planned: its resource limits hold while the
/// planner folds constant calls (they run before the statement's start).
fn at_plan_start() {
    if let Some(tenant) = crate::binding::tenant_in_effect_unchecked() {
        limits::enforce(tenant);
    }
}

/// Resource limits hold for utility statements too (FETCH of a cursor, a DO block or a CALL
/// run no ExecutorStart of their own for their first rows or expressions), and for COMMIT and
/// PREPARE TRANSACTION: they run the transaction's deferred triggers, whose cached PL/pgSQL
/// expressions start no query, and PostgreSQL arms no statement timer for a COMMIT while
/// `statement_timeout` is 0 (an attacker's pass set both timeouts to 0 in its last statement and
/// held its locks through a 4 s COMMIT under a 1 s ceiling). Not the other transaction
/// statements, nor in an aborted transaction (where the limits would have to read the catalog).
fn before_utility(stmt: *mut pg_sys::Node) {
    // SAFETY: reads the statement's tag (`stmt` is null or the statement being run), and a
    // TransactionStmt's kind; IsAbortedTransactionBlockState reads this backend's transaction
    // state.
    let skip = unsafe {
        !stmt.is_null()
            && (*stmt).type_ == pg_sys::NodeTag::T_TransactionStmt
            && (!matches!(
                (*(stmt as *mut pg_sys::TransactionStmt)).kind,
                pg_sys::TransactionStmtKind::TRANS_STMT_COMMIT
                    | pg_sys::TransactionStmtKind::TRANS_STMT_PREPARE
            ) || pg_sys::IsAbortedTransactionBlockState())
    } || crate::pg::unguarded::in_parallel_mode();
    if !skip {
        if let Some(tenant) = crate::binding::tenant_in_effect_unchecked() {
            limits::enforce(tenant);
        }
    }
}

/// The transaction callback: the tenant write lock this transaction held went with it.
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
        reset_at_transaction_end();
    }
}

/// Before a bound session's statement that writes: hold the tenant's write lock (shared with
/// the tenant's other writers) to the end of the transaction. When decommission_tenant holds it,
/// wait, then read the catalog again: the binding's next check then finds the tenant gone.
fn hold_for_write(tenant: uuid::Uuid) {
    if WRITING.with(|w| w.get()) == Some(tenant) {
        return;
    }
    let tag = write_lock_tag(tenant);
    let mode = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
    // Held by the top transaction, not by the subtransaction running now: a lock taken inside
    // a savepoint or a PL/pgSQL exception block was released when it rolled back, while
    // WRITING still said it was held, so the transaction's later writes went on unlocked and
    // decommission_tenant did not wait for them (a reviewer's pass: a row written after the
    // savepoint outlived the decommission its certificate signed).
    struct Restore(pg_sys::ResourceOwner);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: puts back the resource owner that was current before (also when the
            // lock's wait raises and unwinds through here).
            unsafe { pg_sys::CurrentResourceOwner = self.0 };
        }
    }
    // SAFETY: CurrentResourceOwner and TopTransactionResourceOwner are this backend's own,
    // both valid inside a transaction (a statement is running); restored on every exit.
    let _restore = unsafe {
        let r = Restore(pg_sys::CurrentResourceOwner);
        pg_sys::CurrentResourceOwner = pg_sys::TopTransactionResourceOwner;
        r
    };
    // SAFETY: a transaction-level lock of a tag only pg_tenancy takes, owned by the top
    // transaction and released at its end (or kept by a prepared transaction, which
    // decommission_tenant refuses to wait for).
    unsafe {
        if pg_sys::LockAcquire(&tag, mode, false, true)
            == pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
        {
            pg_sys::LockAcquire(&tag, mode, false, false);
            pg_sys::AcceptInvalidationMessages();
        }
    }
    WRITING.with(|w| w.set(Some(tenant)));
}

/// The roles mapped to `t`.
fn mapped_roles(t: &catalog::TenantRow) -> Vec<pg_sys::Oid> {
    catalog::owner_rows(
        "tenancy.role_mapping",
        "SELECT m.role::pg_catalog.oid FROM tenancy.role_mapping m WHERE m.tenant_id OPERATOR(pg_catalog.=) $1",
        &[to_pg_uuid(t.id).into()],
        |r| r.get::<pg_sys::Oid>(1),
    )
    .into_iter()
    .flatten()
    .collect()
}

/// decommission_tenant: hold the tenant's write lock alone. Refused while a prepared
/// transaction holds it; waits `tenancy.decommission_wait` for running transactions, then
/// terminates the sessions that still hold it, and returns their process ids.
fn take_tenant(t: &catalog::TenantRow) -> Vec<i32> {
    catalog::take_lock_ending_holders(
        &write_lock_tag(t.id),
        pg_sys::ExclusiveLock as pg_sys::LOCKMODE,
        crate::gucs::decommission_wait_ms(),
        false,
        &format!("the write lock of tenant \"{}\"", t.slug),
        format!("a prepared transaction holds writes of tenant \"{}\"", t.slug),
        "Finish it first (SELECT gid FROM pg_prepared_xacts; then COMMIT PREPARED or ROLLBACK PREPARED), and decommission again.",
    )
}

/// The protected Citus tables, as decommission treats them.
#[derive(Default)]
struct CitusTables {
    /// Distributed tables: emptied as their owners, the binding carried to the workers.
    distributed: Vec<pg_sys::Oid>,
    /// Tables found to hold no row of the tenant: not written, not counted again.
    untouched: Vec<pg_sys::Oid>,
}

/// On Citus, before anything is written: the protected Citus tables, and what Citus cannot do
/// in one transaction refused with a HINT. Citus lets one user only modify the placements of
/// colocated tables on a node in a transaction: every reference table is colocated with
/// pg_tenancy's catalog (reference tables written here as the catalog's owner), so a
/// protected reference table that holds rows of the tenant is refused (its rows are deleted
/// first, by a session bound to the tenant); distributed tables colocated with each other are
/// emptied as their owners, so colocated tables of different owners are refused.
fn citus_preflight(t: &catalog::TenantRow) -> CitusTables {
    if !crate::lifecycle::certificate::has_key() {
        errors::raise(
            NOT_IN_PREREQUISITE_STATE,
            "the platform's certificate key, with which the coordinator signs its deletions for the Citus workers, does not exist yet",
            "Run SELECT tenancy.citus_setup(); as a superuser on the coordinator (it creates the key on every node), then decommission again.",
        );
    }
    let rows: Vec<(pg_sys::Oid, String, String, i32, String)> = catalog::owner_rows(
        "Citus's metadata",
        "SELECT p.relid::oid, p.relid::text, p.tenant_column::text, d.colocationid, \
                c.relowner::regrole::text \
           FROM tenancy.protected_table p \
           JOIN pg_catalog.pg_dist_partition d ON d.logicalrelid = p.relid \
           JOIN pg_catalog.pg_class c ON c.oid = p.relid \
          ORDER BY d.colocationid, p.relid::oid",
        &[],
        |r| {
            Ok((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<i32>(4)?.unwrap_or_default(),
                r.get::<String>(5)?.unwrap_or_default(),
            ))
        },
    );
    let mut out = CitusTables::default();
    let mut owners: std::collections::BTreeMap<i32, (String, String)> = Default::default();
    for (relid, table, column, colocation, owner) in rows {
        let reference = catalog::owner_rows(
            "Citus's metadata",
            "SELECT p.repmodel = 't' AND p.partmethod = 'n' FROM pg_catalog.pg_dist_partition p \
              WHERE p.logicalrelid = $1::pg_catalog.oid::pg_catalog.regclass",
            &[relid.into()],
            |r| Ok(r.get::<bool>(1)?.unwrap_or(false)),
        )
        .first()
        .copied()
        .unwrap_or(false);
        // The tenant's rows, counted before anything is written (a read, which Citus allows
        // beside the writes of other users that follow), as the catalog owner: a scan with a
        // uuid comparison (the guard keeps an owner's code out of a protected table's and its
        // shards' index expressions). A table without them is not written at all, so that
        // only the tables decommission changes meet Citus's one-user rule.
        let sql = format!(
            "SELECT pg_catalog.count(*) FROM {{table}} WHERE {} = $1",
            crate::catalog::quote_ident(&column)
        );
        let n = if runs_owner_code(relid) {
            if reference {
                // Read on this node's copy, as the owner.
                count_as_decommission(t, relid, &table, false, &sql)
            } else {
                // Not counted before anything is written: Citus carries the binding to the
                // workers only once the transaction writes. Treated as holding rows: deleted,
                // and counted after, as its owner.
                1
            }
        } else {
            count_as_catalog_owner(relid, &sql, t.id)
        };
        if n == 0 {
            out.untouched.push(relid);
            continue;
        }
        if reference {
            errors::raise(
                NOT_IN_PREREQUISITE_STATE,
                format!("Citus reference table {table} holds {n} rows of tenant \"{}\", which decommission cannot delete on Citus", t.slug),
                format!(
                    "Citus lets one user only change reference tables on a node in a transaction, and decommission changes pg_tenancy's own (as their owner): delete the tenant's rows from {table} first, in a session bound to the tenant (DELETE FROM {table};), then decommission."
                ),
            );
        }
        if let Some((other_table, other_owner)) = owners.get(&colocation) {
            if *other_owner != owner {
                errors::raise(
                    NOT_IN_PREREQUISITE_STATE,
                    format!("colocated Citus tables {other_table} and {table} have different owners ({other_owner}, {owner}), whose deletions Citus cannot run in one transaction"),
                    format!("Give colocated protected tables one owner: ALTER TABLE {table} OWNER TO {other_owner};"),
                );
            }
        } else {
            let can_login = catalog::owner_rows(
                "the owner's role",
                "SELECT r.rolcanlogin FROM pg_catalog.pg_roles r WHERE r.rolname = $1",
                &[owner.as_str().into()],
                |r| Ok(r.get::<bool>(1)?.unwrap_or(false)),
            )
            .first()
            .copied()
            .unwrap_or(false);
            if !can_login {
                errors::raise(
                    NOT_IN_PREREQUISITE_STATE,
                    format!("the owner {owner} of Citus table {table} cannot log in, and Citus connects to the workers as the role that runs a statement"),
                    format!("decommission_tenant deletes as each table's owner, whom Citus must be able to connect as: ALTER ROLE {owner} LOGIN;"),
                );
            }
            owners.insert(colocation, (table.clone(), owner));
        }
        out.distributed.push(relid);
    }
    out
}

/// Run `f` as `relid`'s owner, bound to `t` for decommissioning it from that table alone
/// (select and delete; its partitions too), in a security-restricted operation. With `carry`
/// (a Citus distributed table) the workers receive that binding as an assertion the coordinator
/// signs with the platform's certificate key (`src/binding/carrier.rs`).
fn as_decommission<R>(
    t: &catalog::TenantRow,
    relid: pg_sys::Oid,
    table: &str,
    carry: bool,
    f: impl FnOnce() -> R,
) -> R {
    let _bound = crate::binding::internal_decommission_binding(t, relid);
    if carry {
        use crate::binding::carrier;
        carrier::send_assertion(&carrier::assertion(
            &carrier::Assertion::Decommission {
                tenant: t.id,
                table: table.to_string(),
            },
            crate::lifecycle::certificate::sign_assertion,
        ));
    }
    catalog::as_table_owner(relid, f)
}

/// `sql` (a count of a Citus table's rows of `tenant`, its one parameter) run as the catalog
/// owner: Citus plans it on the coordinator and the workers, so only for a table whose
/// definition runs none of its owner's code ([`runs_owner_code`]).
fn count_as_catalog_owner(relid: pg_sys::Oid, sql: &str, tenant: uuid::Uuid) -> i64 {
    let tenant_datum = to_pg_uuid(tenant)
        .into_datum()
        .unwrap_or_else(|| pgrx::error!("pg_tenancy: the tenant's uuid"));
    // Named from its oid as the count is prepared (`pg::relation_spi`): an earlier table's
    // count may have run its owner's code, which could rename a schema (a reviewer's note).
    catalog::with_owner(|| {
        Spi::connect(|_c| {
            // SAFETY: inside the SPI connection just opened, in the transaction; the one
            // argument is the tenant's uuid datum.
            unsafe {
                crate::pg::relation_spi::run_on(
                    relid,
                    pg_sys::AccessShareLock,
                    |name| sql.replace("{table}", name),
                    &[(pg_sys::UUIDOID, tenant_datum)],
                )
            }
            .1
        })
    })
    .unwrap_or(0)
}

/// Whether a statement on `relid` would run code of its owner while it is planned: its
/// definition calls a function that is not built in (an index expression or predicate, an
/// extended statistics expression, whose constant calls the planner evaluates; a CHECK
/// constraint, for constraint exclusion; ...; `tenancy.verify()` reports each as
/// `leaky_expression`), or the definition of a partition or child the statement expands to
/// does. Such a Citus table's rows are counted as its owner, never as the catalog's (a plain
/// table's are read by `pg::table_scan`, which plans nothing).
fn runs_owner_code(relid: pg_sys::Oid) -> bool {
    crate::protection::guard::tree_calls_owner_code(relid)
}

/// The rows of `tenant` in plain table `relid`, read by `pg::table_scan` (every tenant's rows
/// are visible to it; it plans nothing, so no code of the table's owner runs).
fn count_by_scan(relid: pg_sys::Oid, table: &str, column: &str, tenant: uuid::Uuid) -> i64 {
    crate::pg::table_scan::count(
        relid,
        crate::pg::table_scan::Count::OfTenant {
            tenant_column: column,
            tenant,
        },
    )
    .unwrap_or_else(|e| {
        pgrx::error!("pg_tenancy: counting the tenant's rows in {table} failed: {e}")
    })
    .values()
    .sum()
}

/// `sql` (a count) run by [`as_decommission`] (with `carry`, the binding carried to the
/// workers).
/// The statement is `sql` with `{table}` standing for the table's name, which is read from
/// `relid` as the statement is prepared (see `pg::relation_spi`).
fn count_as_decommission(
    t: &catalog::TenantRow,
    relid: pg_sys::Oid,
    table: &str,
    carry: bool,
    sql: &str,
) -> i64 {
    let tenant_datum = to_pg_uuid(t.id)
        .into_datum()
        .unwrap_or_else(|| pgrx::error!("pg_tenancy: the tenant's uuid"));
    as_decommission(t, relid, table, carry, || {
        Spi::connect(|_c| {
            // SAFETY: inside the SPI connection just opened, in the transaction; the one
            // argument is the tenant's uuid datum.
            unsafe {
                crate::pg::relation_spi::run_on(
                    relid,
                    pg_sys::AccessShareLock,
                    |name| sql.replace("{table}", name),
                    &[(pg_sys::UUIDOID, tenant_datum)],
                )
            }
            .1
        })
    })
    .unwrap_or(0)
}

/// The first protected table that still holds rows of the tenant, and how many: read by
/// `pg::table_scan` (the tenant's index, or a scan); a Citus distributed table's as
/// [`as_decommission`] reads it (its rows are on the workers; Citus refuses a read of
/// placements another user modified in the transaction, and the workers plan it with the
/// tables' owners' code).
fn remaining_rows(t: &catalog::TenantRow, citus: &CitusTables) -> Option<(String, i64)> {
    let tables: Vec<(pg_sys::Oid, String, String)> = catalog::owner_rows(
        "tenancy.protected_table",
        "SELECT p.relid::oid, p.relid::text, p.tenant_column::text FROM tenancy.protected_table p \
           JOIN pg_attribute a ON a.attrelid = p.relid AND a.attname = p.tenant_column AND a.atttypid = 'uuid'::regtype \
           JOIN pg_class c ON c.oid = p.relid AND c.relkind = 'r' \
          ORDER BY p.relid::oid",
        &[],
        |r| {
            Ok((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
            ))
        },
    );
    tables.into_iter().find_map(|(relid, table, column)| {
        if citus.untouched.contains(&relid) {
            return None;
        }
        let n = if citus.distributed.contains(&relid) {
            let sql = format!(
                "SELECT pg_catalog.count(*) FROM ONLY {{table}} WHERE {} = $1",
                crate::catalog::quote_ident(&column)
            );
            count_as_decommission(t, relid, &table, true, &sql)
        } else {
            count_by_scan(relid, &table, &column, t.id)
        };
        (n > 0).then_some((table, n))
    })
}

/// Whether the caller manages a tenant: an operator, or an admin bound to it.
#[pg_extern(stable, parallel_restricted, name = "_manages_tenant")]
fn manages_tenant(id: pgrx::Uuid) -> bool {
    authz::manages_tenant(catalog::from_pg_uuid(&id))
}

/// `audit_purge` on Citus (`src/citus/trail.rs`): carry to the workers an assertion, signed
/// with the platform's certificate key, that lets the trail's append-only triggers there pass
/// the deletion of `tenant`'s purged records, for this transaction and a minute at most.
fn carry_purge(tenant: uuid::Uuid) {
    let assertion = crate::binding::carrier::assertion(
        &crate::binding::carrier::Assertion::Purge { tenant },
        certificate::sign_assertion,
    );
    crate::binding::carrier::send_assertion(&assertion);
}
