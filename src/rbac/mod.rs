//! Role-to-tenant mappings (database login roles bound to a tenant without a token).
//! Tenant roles, members and privileges build on these tables.

/// Roles every tenant starts with.
pub const SEEDED_ROLES: &[&str] = &["admin", "member", "viewer"];

use crate::authz;
use crate::catalog::{self, to_pg_uuid};
use crate::errors::{self, INVALID_PARAMETER, UNDEFINED_OBJECT};
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Refuse role names not defined in the tenant.
pub fn check_tenant_roles(tenant: &catalog::TenantRow, roles: &[String]) {
    let defined = catalog::tenant_roles(tenant.id);
    for r in roles {
        if !defined.contains(r) {
            errors::raise(
                UNDEFINED_OBJECT,
                format!("tenant \"{}\" has no role \"{r}\"", tenant.slug),
                format!("Its roles are: {}.", defined.join(", ")),
            );
        }
    }
}

#[pg_extern(volatile, parallel_unsafe)]
fn map_role(
    role: crate::pg::types::Regrole,
    tenant: &str,
    tenant_roles: default!(Vec<String>, "'{member}'"),
) {
    let role = role.0;
    authz::require_operator("map_role");
    let t = catalog::require_tenant(tenant);
    // A mapped login role reads the tenant's rows: once the tenant has an admin, only a
    // superuser maps roles into it (its admins cannot: a role mapping is a platform object).
    authz::require_may_widen("map_role", &t);
    if t.status == "decommissioned" {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!("tenant \"{}\" is decommissioned", t.slug),
            "Map roles to active tenants only.",
        );
    }
    if tenant_roles.is_empty() {
        errors::raise(
            INVALID_PARAMETER,
            "tenant_roles must name at least one role",
            "For example '{member}'.",
        );
    }
    check_tenant_roles(&t, &tenant_roles);
    if authz::is_platform_role(role) {
        errors::raise(
            errors::INSUFFICIENT_PRIVILEGE,
            format!("role \"{}\" is a platform operator or key admin and cannot be mapped to a tenant", authz::role_name(role)),
            "Platform roles do not read tenant rows; use tenancy.grant_support() for an operator's time-limited access.",
        );
    }
    // SAFETY: a syscache lookup whose tuple is released before the block ends.
    let bypass = unsafe {
        authz::is_superuser(role) || {
            let tup = pg_sys::SearchSysCache1(
                pg_sys::SysCacheIdentifier::AUTHOID as i32,
                pg_sys::Datum::from(role),
            );
            if tup.is_null() {
                false
            } else {
                let form = pg_sys::GETSTRUCT(tup) as *mut pg_sys::FormData_pg_authid;
                let b = (*form).rolbypassrls;
                pg_sys::ReleaseSysCache(tup);
                b
            }
        }
    };
    if bypass {
        pgrx::warning!(
            "role \"{}\" is a superuser or has BYPASSRLS: row security does not apply to it, so this mapping does not isolate it",
            errors::clean(&authz::role_name(role))
        );
    }
    // Not dropped while this runs (DROP ROLE ends a role's mappings first).
    authz::lock_role(role);
    // Serialized with unmap_role's rewrite of the tenant's mappings ([`delete_mapping`]).
    let t = lock_memberships(&t);
    // Checked again on the tenant as it is after the lock (an admin seated meanwhile).
    authz::require_may_widen("map_role", &t);
    catalog::write(
        "INSERT INTO tenancy.role_mapping (role, tenant_id, tenant_roles) VALUES ($1::oid::regrole, $2, $3) \
         ON CONFLICT (role, tenant_id) DO UPDATE SET tenant_roles = EXCLUDED.tenant_roles",
        &[role.into(), to_pg_uuid(t.id).into(), tenant_roles.clone().into()],
    );
    if tenant_roles.iter().any(|r| r == "admin") {
        catalog::seat_admin(t.id);
    }
    keep_mapping_dependencies(Some(&[role]));
    crate::audit::admin(
        "map_role",
        Some(t.id),
        serde_json::json!({"role": authz::role_name(role), "tenant_roles": tenant_roles}),
    );
}

#[pg_extern(volatile, parallel_unsafe)]
fn unmap_role(role: Option<crate::pg::types::Regrole>, tenant: Option<&str>) {
    authz::require_operator("unmap_role");
    let role = errors::not_null("unmap_role", "role", role).0;
    let tenant = errors::not_null("unmap_role", "tenant", tenant);
    let t = catalog::require_tenant(tenant);
    // A role mapped to one tenant is bound to it without a token: removing one of a role's two
    // mappings widens access in the tenant left (refused to an operator once it has an admin).
    // It also locks the tenant's row, as every change of its mappings must.
    let ((), ended) = as_kill_switch("unmap_role", t.id, None, || {
        authz::require_no_tokenless_binding("unmap_role", role, &[t.id])
    });
    let n = delete_mapping(role, t.id);
    if n == 0 {
        errors::raise(
            UNDEFINED_OBJECT,
            format!(
                "role \"{}\" is not mapped to tenant \"{}\"",
                authz::role_name(role),
                t.slug
            ),
            "SELECT * FROM tenancy.role_mappings lists the mappings.",
        );
    }
    keep_mapping_dependencies(Some(&[role]));
    crate::audit::admin(
        "unmap_role",
        Some(t.id),
        noting_ended(serde_json::json!({"role": authz::role_name(role)}), ended),
    );
}

/// An operator's call that takes access away from `tenant` is a kill switch: the tenant locks
/// it takes end the transactions that hold them for longer than `wait_ms`
/// ([`catalog::ending_holders`]; `tenancy.kill_switch_wait` unless given). A tenant admin's
/// waits. Returns `f`'s result and the process ids of the sessions ended that held `tenant`'s
/// lock, for the call's own record; those that held another tenant's (a role mapped to both)
/// are recorded in that tenant's trail, as `end_sessions` (an attacker's pass saw another
/// tenant's admin ended with no record there).
pub(crate) fn as_kill_switch<R>(
    action: &str,
    tenant: uuid::Uuid,
    wait_ms: Option<u64>,
    f: impl FnOnce() -> R,
) -> (R, Vec<i32>) {
    if !authz::is_operator(authz::caller()) {
        return (f(), Vec::new());
    }
    let wait = wait_ms.unwrap_or_else(crate::gucs::kill_switch_wait_ms);
    let (r, ended) = catalog::ending_holders(wait, f);
    let mut own = Vec::new();
    let mut elsewhere: std::collections::BTreeMap<uuid::Uuid, Vec<i32>> = Default::default();
    for (t, pid) in ended {
        if t == tenant {
            own.push(pid);
        } else {
            elsewhere.entry(t).or_default().push(pid);
        }
    }
    for (t, pids) in elsewhere {
        crate::audit::admin(
            "end_sessions",
            Some(t),
            // Not the tenant the call was for: this trail is another tenant's admins' to read.
            serde_json::json!({"by": action, "ended_sessions": pids}),
        );
    }
    (r, own)
}

/// `details` of a management record, with the sessions a kill switch ended (when it did).
pub(crate) fn noting_ended(mut details: serde_json::Value, ended: Vec<i32>) -> serde_json::Value {
    if !ended.is_empty() {
        details["ended_sessions"] = ended.into();
    }
    details
}

// ------------------------------------------------------------------------------------------
// Tenant roles, privileges and members. Operators, or the bound tenant's admins for their own
// tenant. Every change commits a catalog invalidation: other sessions see it from their next
// statement.

const PRIVILEGES: &[&str] = &["select", "insert", "update", "delete"];

fn valid_role_name(role: &str) -> bool {
    let b = role.as_bytes();
    (1..=63).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// The tenant, checked to be manageable by the caller and not decommissioned.
fn managed_tenant(tenant: &str, action: &str) -> std::rc::Rc<catalog::TenantRow> {
    let t = authz::require_manageable_tenant(action, tenant);
    if t.status == "decommissioned" {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!("tenant \"{}\" is decommissioned", t.slug),
            "Decommissioned tenants cannot change.",
        );
    }
    t
}

fn check_privileges(privileges: &[String]) {
    if privileges.is_empty() || privileges.iter().any(|p| !PRIVILEGES.contains(&p.as_str())) {
        errors::raise(
            INVALID_PARAMETER,
            format!("invalid privileges {privileges:?}"),
            "Privileges are among select, insert, update, delete; for example '{select,insert}'.",
        );
    }
}

#[pg_extern(volatile, parallel_unsafe)]
fn create_role(tenant: &str, role: &str) {
    let t = managed_tenant(tenant, "create_role");
    if !valid_role_name(role) || role == "support" {
        errors::raise(
            INVALID_PARAMETER,
            format!("invalid tenant role name \"{role}\""),
            "A role name is a lowercase letter, then up to 62 lowercase letters, digits, '-' or '_' (\"support\" is reserved).",
        );
    }
    if catalog::tenant_roles(t.id).iter().any(|r| r == role) {
        errors::raise(
            errors::DUPLICATE_OBJECT,
            format!("tenant \"{}\" already has a role \"{role}\"", t.slug),
            "Choose another name.",
        );
    }
    // Counted under the tenant's lock: concurrent transactions would not see each other's
    // uncommitted roles, and each could add up to the quota (an attacker's pass made 1,996).
    let t = lock_memberships(&t);
    refuse_over_quota(
        "SELECT count(*) FROM tenancy.tenant_role WHERE tenant_id = $1",
        Some(t.id),
        "roles",
        ROLE_QUOTA,
        "Drop the roles no member holds with tenancy.drop_role(), or give members several roles instead of one role per combination.",
    );
    catalog::write(
        "INSERT INTO tenancy.tenant_role (tenant_id, role) VALUES ($1, $2)",
        &[to_pg_uuid(t.id).into(), role.into()],
    );
    crate::audit::admin("create_role", Some(t.id), serde_json::json!({"role": role}));
}

#[pg_extern(volatile, parallel_unsafe)]
fn drop_role(tenant: Option<&str>, role: Option<&str>) {
    let tenant = errors::not_null("drop_role", "tenant", tenant);
    let role = errors::not_null("drop_role", "role", role);
    let t = managed_tenant(tenant, "drop_role");
    check_tenant_roles(&t, &[role.to_string()]);
    if SEEDED_ROLES.contains(&role) {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!("role \"{role}\" is seeded in every tenant and cannot be dropped"),
            "Revoke its privileges or remove its members instead.",
        );
    }
    let uuid = to_pg_uuid(t.id);
    let t = lock_memberships(&t);
    // Members whose only role this is fall back to the tenant's default_roles.
    if !default_roles(&t).is_empty() && !authz::may_widen(&t) {
        let only: Vec<String> = catalog::owner_rows(
            "tenancy.member",
            "SELECT m.subject FROM tenancy.member m WHERE m.tenant_id = $1 AND m.role = $2 \
               AND NOT EXISTS (SELECT FROM tenancy.member o WHERE o.tenant_id = m.tenant_id \
                                  AND o.subject = m.subject AND o.role <> m.role) \
             ORDER BY 1 LIMIT 1",
            &[uuid.into(), role.into()],
            |r| r.get::<String>(1).map(Option::unwrap_or_default),
        );
        if let Some(subject) = only.first() {
            refuse_fallback_gain("drop_role", &t, subject, &[role.to_string()]);
        }
    }
    catalog::write(
        "DELETE FROM tenancy.member WHERE tenant_id = $1 AND role = $2",
        &[uuid.into(), role.into()],
    );
    // The mappings' new role lists are computed here and written as values: on Citus, an
    // UPDATE of a reference table runs on every node as the superuser with the node's default
    // search_path, and Citus prints a function of a column without its schema, so a role's own
    // array_remove(text[], text) in public, an exact match where pg_catalog's is polymorphic,
    // was chosen there (an attacker's pass). The rows are found by their lists, not by role
    // (see [`delete_mapping`]).
    let lists: Vec<Vec<String>> = catalog::owner_rows(
        "tenancy.role_mapping",
        "SELECT DISTINCT m.tenant_roles FROM tenancy.role_mapping m \
          WHERE m.tenant_id = $1 AND $2 = ANY (m.tenant_roles) ORDER BY 1",
        &[uuid.into(), role.into()],
        |r| Ok(r.get::<Vec<String>>(1)?.unwrap_or_default()),
    );
    for roles in lists {
        let kept: Vec<String> = roles.iter().filter(|r| *r != role).cloned().collect();
        catalog::write(
            "UPDATE tenancy.role_mapping SET tenant_roles = $3 WHERE tenant_id = $1 AND tenant_roles = $2",
            &[uuid.into(), roles.into(), kept.into()],
        );
    }
    catalog::write(
        "DELETE FROM tenancy.tenant_role WHERE tenant_id = $1 AND role = $2",
        &[uuid.into(), role.into()],
    );
    crate::audit::admin("drop_role", Some(t.id), serde_json::json!({"role": role}));
}

/// Keep PostgreSQL's own record of which roles are mapped: each mapped role holds `USAGE` on
/// the type `tenancy.mapped_role`, a grant, which PostgreSQL records among the dependencies
/// every database of the cluster sees (`pg_shdepend`). So `DROP ROLE` of a mapped role is
/// refused in every other database, on Citus's workers, and in this one where the library is not
/// loaded; where it is, the utility hook ends the role's mappings, and this the grant, first
/// ([`before_drop_role`]). A `regrole` column is no dependency: a role dropped elsewhere left its
/// mappings, and a role made later with its oid would have been bound to the tenant without a
/// token. Grants it to those of `roles` (None: every role) that are mapped and lack it, and
/// revokes it from those that hold it and are mapped to no tenant. The role's name in each
/// statement is quoted by PostgreSQL's `quote_identifier`; they run as the catalog owner,
/// which owns the type, through [`catalog::with_owner_ddl`] (a GRANT fires event triggers).
pub(crate) fn keep_mapping_dependencies(roles: Option<&[pg_sys::Oid]>) {
    // (role's name, mapped): the roles whose grant is to change. The statement is built here,
    // not by SQL's format(): on Citus this query, which reads a reference table, is printed
    // again by Citus with pg_catalog's functions unqualified, and format(text, VARIADIC "any")
    // is one a function in public could take over (the suite's scan of what Citus sends).
    let changes: Vec<(String, bool)> = catalog::owner_rows(
        "pg_catalog.pg_type",
        "SELECT r.rolname::pg_catalog.text, s.mapped \
           FROM pg_catalog.pg_authid r, pg_catalog.pg_type t \
          CROSS JOIN LATERAL (SELECT \
                EXISTS (SELECT FROM tenancy.role_mapping m \
                         WHERE m.role::pg_catalog.oid OPERATOR(pg_catalog.=) r.oid) AS mapped, \
                EXISTS (SELECT FROM pg_catalog.aclexplode(t.typacl) a \
                         WHERE a.grantee OPERATOR(pg_catalog.=) r.oid) AS held) s \
          WHERE t.oid OPERATOR(pg_catalog.=) 'tenancy.mapped_role'::pg_catalog.regtype \
            AND r.oid OPERATOR(pg_catalog.<>) t.typowner \
            AND ($1::pg_catalog.oid[] IS NULL OR r.oid OPERATOR(pg_catalog.=) ANY ($1)) \
            AND s.mapped OPERATOR(pg_catalog.<>) s.held \
          ORDER BY r.oid",
        &[roles.map(|r| r.to_vec()).into()],
        |r| {
            Ok((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<bool>(2)?.unwrap_or(false),
            ))
        },
    );
    // The role's name quoted by PostgreSQL (quote_identifier).
    let statements: Vec<String> = changes
        .into_iter()
        .map(|(role, mapped)| {
            let role = catalog::quote_ident(&role);
            if mapped {
                format!("GRANT USAGE ON TYPE tenancy.mapped_role TO {role}")
            } else {
                format!("REVOKE USAGE ON TYPE tenancy.mapped_role FROM {role}")
            }
        })
        .collect();
    if statements.is_empty() {
        return;
    }
    catalog::with_owner_ddl(|| {
        Spi::connect_mut(|c| {
            for s in &statements {
                c.update(s, None, &[])?;
            }
            Ok::<(), pgrx::spi::Error>(())
        })
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: keeping the mapped roles' grants failed: {e}"));
}

/// Restores [`keep_mapping_dependencies`]'s grants for every role: from the `ddl_command_end`
/// event trigger after `DROP OWNED` (which revokes every privilege granted to the roles it
/// names, the mapped roles' one included), from `verify()`'s fix of `mapping_without_dependency`,
/// and from the upgrade to 0.2.0. Idempotent, and changes nothing but those grants: executable
/// by anyone (an event trigger runs as the role whose command fired it).
#[pg_extern(volatile, parallel_unsafe, name = "_keep_mapped_roles")]
fn keep_mapped_roles() {
    if !catalog::installed() || crate::pg::citus::internal_backend() {
        return;
    }
    keep_mapping_dependencies(None);
}

/// Delete `role`'s mapping to `tenant`; returns how many rows went (0 or 1).
///
/// Never by the role's oid: on Citus, every node's copy of the catalog holds that node's own
/// oid for the role, and an oid in a statement that changes a reference table reaches the other
/// nodes as the coordinator's number (a parameter, or a name cast to regrole, which Citus
/// evaluates on the coordinator), naming no role there or another one: `unmap_role`,
/// `revoke_support` and `drop_role` left the workers' rows as they were, a mapping or grant
/// still in force for a client of a worker (found by a Citus test of this session's change to
/// drop_role), and Citus refuses the role's name read on each node (`role::text`, a STABLE
/// function of a column) in an UPDATE or DELETE. So the rows are found by what they hold
/// besides the role: the mapping's tenant, creation time and roles, read here; another role's
/// mapping caught by the same values is written back, its role by name (a single-row INSERT's
/// values are printed, a regrole by its name, and read by each node).
fn delete_mapping(role: pg_sys::Oid, tenant: uuid::Uuid) -> u64 {
    type Row = (pg_sys::Oid, Vec<String>, pgrx::datum::TimestampWithTimeZone);
    let rows: Vec<Row> = catalog::owner_rows(
        "tenancy.role_mapping",
        "SELECT m.role::oid, m.tenant_roles, m.created_at FROM tenancy.role_mapping m \
          WHERE m.tenant_id = $1 ORDER BY 1",
        &[to_pg_uuid(tenant).into()],
        |r| {
            Ok((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<Vec<String>>(2)?.unwrap_or_default(),
                r.get::<pgrx::datum::TimestampWithTimeZone>(3)?
                    .expect("created_at is NOT NULL"),
            ))
        },
    );
    let Some((_, roles, created_at)) = rows.iter().find(|r| r.0 == role).cloned() else {
        return 0;
    };
    catalog::write(
        "DELETE FROM tenancy.role_mapping WHERE tenant_id = $1 AND created_at = $2 AND tenant_roles = $3",
        &[to_pg_uuid(tenant).into(), created_at.into(), roles.clone().into()],
    );
    // A mapping of a role dropped since is not written back (PostgreSQL keeps no dependency
    // of a regrole column: the row would name a role that no longer exists, and a role made
    // later with its oid would find itself mapped).
    for (other, _, _) in rows
        .iter()
        .filter(|r| r.0 != role && r.1 == roles && r.2 == created_at && authz::role_exists(r.0))
    {
        catalog::write(
            "INSERT INTO tenancy.role_mapping (role, tenant_id, tenant_roles, created_at) \
             VALUES ($1::text::regrole, $2, $3, $4)",
            &[
                authz::role_input(*other).into(),
                to_pg_uuid(tenant).into(),
                roles.clone().into(),
                created_at.into(),
            ],
        );
    }
    1
}

/// Delete `role`'s grants of `privileges` on `tbl` (None: the grants on every table) in
/// `tenant`, never by the table's oid (see [`delete_mapping`]): every grant of those privileges
/// to the role goes, and the ones on other tables are written back, each table by name.
fn delete_grants(tenant: uuid::Uuid, role: &str, tbl: Option<pg_sys::Oid>, privileges: &[String]) {
    let rows: Vec<(Option<pg_sys::Oid>, String)> = catalog::owner_rows(
        "tenancy.role_privilege",
        "SELECT g.relid::oid, g.privilege FROM tenancy.role_privilege g \
          WHERE g.tenant_id = $1 AND g.role = $2 AND g.privilege = ANY ($3) ORDER BY 1, 2",
        &[
            to_pg_uuid(tenant).into(),
            role.into(),
            privileges.to_vec().into(),
        ],
        |r| {
            Ok((
                r.get::<pg_sys::Oid>(1)?,
                r.get::<String>(2)?.unwrap_or_default(),
            ))
        },
    );
    let gone: Vec<String> = rows
        .iter()
        .filter(|(relid, _)| *relid == tbl)
        .map(|(_, p)| p.clone())
        .collect();
    if gone.is_empty() {
        return;
    }
    catalog::write(
        "DELETE FROM tenancy.role_privilege WHERE tenant_id = $1 AND role = $2 AND privilege = ANY ($3)",
        &[to_pg_uuid(tenant).into(), role.into(), gone.clone().into()],
    );
    // A grant on a table dropped since is not written back: its name is gone (the oid would
    // name nothing on the workers, and on one node a table made later with it).
    for (relid, privilege) in rows.iter().filter(|(relid, p)| {
        *relid != tbl && gone.contains(p) && relid.is_none_or(catalog::relation_exists)
    }) {
        insert_grant(tenant, role, *relid, privilege);
    }
}

/// Remove every tenant's grants on `tables`, protected tables just dropped (from the DROP's
/// `sql_drop` event trigger, `reason` "DROP TABLE") or no longer protected (`unprotect`: a
/// grant kept through it came back unrecorded with a later `protect`, and outlived a later
/// DROP, which no longer saw a protected table), each recorded in its tenant's trail as a
/// `revoke`. A grant's
/// table is a `regclass` column, which keeps no dependency: left, the grant would name an oid
/// that a table made later may be given, and stop a revocation of the same privilege on
/// another table from being written back (an attacker's pass).
pub fn forget_grants_on(tables: &[pg_sys::Oid], reason: &str) {
    if tables.is_empty() {
        return;
    }
    type Grant = (uuid::Uuid, String, String, pg_sys::Oid);
    let grants: Vec<Grant> = catalog::owner_rows(
        "tenancy.role_privilege",
        "SELECT g.tenant_id, g.role, g.privilege, g.relid::pg_catalog.oid FROM tenancy.role_privilege g \
          WHERE g.relid::pg_catalog.oid OPERATOR(pg_catalog.=) ANY ($1) ORDER BY 1, 2, 3, 4",
        &[tables.to_vec().into()],
        |r| {
            Ok((
                catalog::from_pg_uuid(&r.get::<pgrx::Uuid>(1)?.expect("NOT NULL")),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<pg_sys::Oid>(4)?.unwrap_or(pg_sys::InvalidOid),
            ))
        },
    );
    for (tenant, role, privilege, relid) in grants {
        catalog::lock_tenant_row(tenant);
        delete_grants(tenant, &role, Some(relid), std::slice::from_ref(&privilege));
        crate::audit::admin(
            "revoke",
            Some(tenant),
            serde_json::json!({"role": role, "table": u32::from(relid).to_string(),
                               "privileges": [privilege], "reason": reason}),
        );
    }
}

/// One grant, the table by name (see [`delete_mapping`]).
fn insert_grant(tenant: uuid::Uuid, role: &str, tbl: Option<pg_sys::Oid>, privilege: &str) {
    catalog::write(
        "INSERT INTO tenancy.role_privilege (tenant_id, role, relid, privilege) \
         VALUES ($1, $2, $3::text::regclass, $4) ON CONFLICT DO NOTHING",
        &[
            to_pg_uuid(tenant).into(),
            role.into(),
            tbl.map(catalog::relation_name).into(),
            privilege.into(),
        ],
    );
}

/// Removals of a tenant's memberships one at a time: the tenant's row is locked for the rest of
/// the transaction, and what a subject holds is read afresh after the lock (under READ
/// COMMITTED, each statement's own snapshot). Two concurrent `remove_member` calls each saw the
/// other's membership still there, and together left the subject on richer default_roles (an
/// attacker's pass, as an operator).
///
/// The tenant's status is read again after the lock: a change that waited for
/// `decommission_tenant` would otherwise land in the tenant it had just emptied (a mapping or
/// a member left on a decommissioned tenant, missing from its certificate: a later pass).
fn lock_memberships(t: &catalog::TenantRow) -> std::rc::Rc<catalog::TenantRow> {
    catalog::lock_live_tenant(t)
}

/// Whether `rel` is a protected table.
fn is_protected(rel: pg_sys::Oid) -> bool {
    catalog::protected_relids().is_some_and(|p| p.contains(&u32::from(rel)))
}

/// A protected table (or NULL for every protected table, present and future).
fn check_grant_table(tbl: Option<pg_sys::Oid>) -> Option<String> {
    let rel = tbl?;
    let name = crate::catalog::relation_name(rel);
    if !is_protected(rel) {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!("table \"{name}\" is not protected"),
            // The name quoted as a literal: a table's owner chose it, and the hint is copied.
            format!(
                "Tenant privileges apply to protected tables: SELECT tenancy.protect({});",
                catalog::quote_literal(&name)
            ),
        );
    }
    Some(name)
}

/// A privilege list given to grant or revoke: NULL, or a NULL in it, is refused with 22004 (the
/// function takes a NULL table, so PostgreSQL does not answer NULL for it; an attacker's pass
/// met an internal error).
fn privilege_names(what: &str, privileges: Option<Vec<Option<String>>>) -> Vec<String> {
    match privileges {
        Some(p) => errors::names(what, p),
        None => errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{what}: the privileges may not be NULL"),
            "Name them, for example '{select,insert}'.",
        ),
    }
}

#[pg_extern(volatile, parallel_unsafe)]
fn grant(
    tenant: &str,
    role: &str,
    tbl: Option<crate::pg::types::Regclass>,
    privileges: Option<Vec<Option<String>>>,
) {
    let tbl = tbl.map(|t| t.0);
    let privileges = privilege_names("grant", privileges);
    let t = managed_tenant(tenant, "grant");
    authz::require_may_widen("grant", &t);
    check_tenant_roles(&t, &[role.to_string()]);
    check_privileges(&privileges);
    // The table locked (to the end of the transaction) before it is found protected: an
    // `unprotect` or a `DROP TABLE` running meanwhile, which revoke the table's grants, waits
    // for this grant and then sees it, or this grant waits for them and finds the table no
    // longer protected (a grant made while the table was unprotected stayed: an attacker's
    // pass).
    if let Some(rel) = tbl {
        // SAFETY: a transaction-level lock of a relation by oid (it may be dropped meanwhile:
        // then nothing is locked, and the check below finds it not protected); processes the
        // invalidations of what it waited for.
        unsafe { pg_sys::LockRelationOid(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE) };
    }
    let table = check_grant_table(tbl);
    // Serialized with revoke's rewrite of the role's grants ([`delete_grants`]), and counted
    // under the lock (see create_role).
    let t = lock_memberships(&t);
    // Checked again on the tenant as it is after the lock (an admin seated meanwhile).
    authz::require_may_widen("grant", &t);
    refuse_over_quota(
        "SELECT count(*) FROM tenancy.role_privilege WHERE tenant_id = $1",
        Some(t.id),
        "grants",
        GRANT_QUOTA,
        "Grant a privilege on every protected table at once with tbl => NULL, or revoke the grants of roles no member holds.",
    );
    // One row at a time, the table by name: on Citus, an INSERT ... SELECT into a reference
    // table reaches the other nodes as binary rows, the coordinator's oid for the table in
    // them, which names no table there or another one (a worker then refused the grant, or
    // applied it to the table that has that oid there); the values of a single-row INSERT are
    // printed, a regclass by its name, and read by each node.
    for p in &privileges {
        insert_grant(t.id, role, tbl, p);
    }
    crate::audit::admin(
        "grant",
        Some(t.id),
        serde_json::json!({"role": role, "table": table, "privileges": privileges}),
    );
}

#[pg_extern(volatile, parallel_unsafe)]
fn revoke(
    tenant: &str,
    role: &str,
    tbl: Option<crate::pg::types::Regclass>,
    privileges: Option<Vec<Option<String>>>,
) {
    let tbl = tbl.map(|t| t.0);
    let privileges = privilege_names("revoke", privileges);
    let t = managed_tenant(tenant, "revoke");
    check_tenant_roles(&t, &[role.to_string()]);
    check_privileges(&privileges);
    // A grant on a table no longer protected (dropped, or unprotected, where it outlived the
    // table: verify()'s grant_on_unprotected_table) is revoked as any other.
    let stale = tbl.is_some_and(|rel| {
        !is_protected(rel)
            && catalog::privileges(t.id)
                .iter()
                .any(|p| p.role == role && p.relid == Some(rel))
    });
    let table = if stale {
        tbl.map(catalog::relation_name)
    } else {
        check_grant_table(tbl)
    };
    if tbl.is_some() && !stale {
        // A grant on every table cannot be narrowed by revoking one table: say so instead of
        // pretending the privilege is gone.
        let wide: Vec<String> = catalog::privileges(t.id)
            .iter()
            .filter(|p| p.role == role && p.relid.is_none() && privileges.contains(&p.privilege))
            .map(|p| p.privilege.clone())
            .collect();
        if !wide.is_empty() {
            errors::raise(
                errors::NOT_IN_PREREQUISITE_STATE,
                format!(
                    "role \"{role}\" holds {} on every protected table; revoking it on one table would not take it away",
                    wide.join(", ")
                ),
                format!(
                    "Revoke it everywhere with tbl => NULL, then grant it on the tables that keep it: SELECT tenancy.revoke('{}', '{role}', NULL, '{{{}}}');",
                    t.slug,
                    wide.join(",")
                ),
            );
        }
    }
    let (t, ended) = as_kill_switch("revoke", t.id, None, || lock_memberships(&t));
    delete_grants(t.id, role, tbl, &privileges);
    crate::audit::admin(
        "revoke",
        Some(t.id),
        noting_ended(
            serde_json::json!({"role": role, "table": table, "privileges": privileges}),
            ended,
        ),
    );
}

#[pg_extern(volatile, parallel_unsafe)]
fn add_member(tenant: &str, subject: &str, role: &str) {
    let t = managed_tenant(tenant, "add_member");
    authz::require_may_widen("add_member", &t);
    check_tenant_roles(&t, &[role.to_string()]);
    if subject.is_empty() || subject.len() > 1000 {
        errors::raise(
            INVALID_PARAMETER,
            "subjects are 1 to 1000 characters",
            "Use the token's \"sub\" claim.",
        );
    }
    let t = lock_memberships(&t);
    // Checked again on the tenant as it is after the lock (an admin seated meanwhile).
    authz::require_may_widen("add_member", &t);
    catalog::write(
        "INSERT INTO tenancy.member (tenant_id, subject, role) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        &[to_pg_uuid(t.id).into(), subject.into(), role.into()],
    );
    if role == "admin" {
        catalog::seat_admin(t.id);
    }
    crate::audit::admin(
        "add_member",
        Some(t.id),
        serde_json::json!({"subject": subject, "role": role}),
    );
}

/// The tenant's `default_roles`: what a subject without a membership binds with.
fn default_roles(t: &catalog::TenantRow) -> Vec<String> {
    t.settings
        .get("default_roles")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether holding `after` instead of `before` gives a subject more: the `admin` role, or a
/// privilege on a table (or on every table) that `before` did not give.
fn gains(t: &catalog::TenantRow, before: &[String], after: &[String]) -> bool {
    let admin = |roles: &[String]| roles.iter().any(|r| r == "admin");
    if admin(after) && !admin(before) {
        return true;
    }
    let privileges = catalog::privileges(t.id);
    let held = |roles: &[String]| -> Vec<(Option<pg_sys::Oid>, String)> {
        privileges
            .iter()
            .filter(|p| roles.contains(&p.role))
            .map(|p| (p.relid, p.privilege.clone()))
            .collect()
    };
    let had = held(before);
    held(after)
        .iter()
        .any(|(rel, p)| !had.iter().any(|(r, q)| q == p && (r.is_none() || r == rel)))
}

/// A removal that leaves `subject` (holding `before`) with no membership gives it the tenant's
/// `default_roles`: refused when that is more than it had and the caller may not widen access
/// in the tenant (an operator once the tenant has an admin), as a grant would be.
fn refuse_fallback_gain(action: &str, t: &catalog::TenantRow, subject: &str, before: &[String]) {
    let defaults = default_roles(t);
    if defaults.is_empty() || !gains(t, before, &defaults) || authz::may_widen(t) {
        return;
    }
    let mut f = serde_json::Map::new();
    f.insert("action".into(), action.into());
    f.insert("tenant".into(), t.slug.clone().into());
    errors::refuse(
        "management_refused",
        f,
        errors::INSUFFICIENT_PRIVILEGE,
        format!(
            "permission denied: {action} would leave \"{}\" with no membership in tenant \"{}\", so with its default_roles {defaults:?}, which give more than it holds; operators cannot widen access inside a tenant that has an admin",
            errors::clean(subject),
            t.slug
        ),
        "End the subject's access with tenancy.revoke_subject(), or ask the tenant's admin to remove the membership.",
    );
}

#[pg_extern(volatile, parallel_unsafe)]
fn remove_member(tenant: Option<&str>, subject: Option<&str>, role: Option<&str>) {
    let tenant = errors::not_null("remove_member", "tenant", tenant);
    let subject = errors::not_null("remove_member", "subject", subject);
    let role = errors::not_null("remove_member", "role", role);
    let t = managed_tenant(tenant, "remove_member");
    let (t, ended) = as_kill_switch("remove_member", t.id, None, || lock_memberships(&t));
    let before: Vec<String> = catalog::owner_rows(
        "tenancy.member",
        "SELECT role FROM tenancy.member WHERE tenant_id = $1 AND subject = $2 ORDER BY 1",
        &[to_pg_uuid(t.id).into(), subject.into()],
        |r| r.get::<String>(1).map(Option::unwrap_or_default),
    );
    if !before.is_empty() && before.iter().all(|r| r == role) {
        refuse_fallback_gain("remove_member", &t, subject, &before);
    }
    let n = catalog::write(
        "DELETE FROM tenancy.member WHERE tenant_id = $1 AND subject = $2 AND role = $3",
        &[to_pg_uuid(t.id).into(), subject.into(), role.into()],
    );
    if n == 0 {
        errors::raise(
            UNDEFINED_OBJECT,
            format!(
                "\"{subject}\" is not a member of tenant \"{}\" with role \"{role}\"",
                t.slug
            ),
            "SELECT * FROM tenancy.members lists the memberships.",
        );
    }
    crate::audit::admin(
        "remove_member",
        Some(t.id),
        noting_ended(serde_json::json!({"subject": subject, "role": role}), ended),
    );
}

// ------------------------------------------------------------------------------------------
// Support access: a bound tenant admin lets a platform operator in, for a while.

#[pg_extern(volatile, parallel_unsafe)]
fn grant_support(
    operator: crate::pg::types::Regrole,
    duration: pgrx::datum::Interval,
    privileges: default!(Vec<Option<String>>, "'{select}'"),
) -> pgrx::JsonB {
    let operator = operator.0;
    let privileges = errors::names("grant_support", privileges);
    // Before its id is drawn (on a worker, from that node's sequence), and before its writes.
    catalog::refuse_on_a_citus_worker();
    crate::pg::citus::before_routing_as_another();
    let b = crate::binding::require();
    let require_admin = || {
        if !authz::is_tenant_admin(b.tenant) {
            errors::raise(
                errors::INSUFFICIENT_PRIVILEGE,
                "permission denied: grant_support is for the bound tenant's admins",
                "Bind a token of an admin of the tenant that grants the access.",
            );
        }
    };
    require_admin();
    if !authz::can_login(operator) {
        errors::raise(
            INVALID_PARAMETER,
            format!("role \"{}\" cannot log in", authz::role_name(operator)),
            "Support access is granted to one operator's login role, never to a group such as tenancy_operator (every member could then enter).",
        );
    }
    if !authz::is_operator(operator)
        || authz::is_superuser(operator)
        || authz::is_key_admin(operator)
    {
        errors::raise(
            INVALID_PARAMETER,
            format!("role \"{}\" is not a platform operator", authz::role_name(operator)),
            "Support access is granted to members of tenancy_operator (superusers need no grant and get none).",
        );
    }
    check_privileges(&privileges);
    // Not dropped while this runs (DROP ROLE revokes a role's support grants first); under the
    // tenant's lock, which a decommission takes (a grant made while one ran was left live on
    // the decommissioned tenant: an attacker's pass), and within a bound.
    authz::lock_role(operator);
    let t = catalog::tenant_by_id(b.tenant).unwrap_or_else(|| {
        errors::raise(
            UNDEFINED_OBJECT,
            "the bound tenant does not exist",
            "Bind again.",
        )
    });
    let t = lock_memberships(&t);
    // Still an admin of it after the lock (removed by an operator while this waited).
    require_admin();
    refuse_over_quota(
        "SELECT count(*) FROM tenancy.support_grant \
          WHERE tenant_id = $1 AND revoked_at IS NULL AND expires_at > now()",
        Some(t.id),
        "live support grants",
        SUPPORT_GRANT_QUOTA,
        "Revoke grants no longer needed with tenancy.revoke_support(), or let them expire.",
    );
    let row = catalog::with_owner(|| {
        Spi::connect_mut(|c| {
            // The expiry first, then a single-row INSERT naming the operator: on Citus, an
            // INSERT ... SELECT into a reference table reaches the other nodes as binary rows,
            // the coordinator's oid for the role in them (see `grant`).
            let within = c.select(
                "SELECT now() + $1, (now() + $1)::text \
                  WHERE now() + $1 > now() AND now() + $1 <= now() + interval '30 days'",
                Some(1),
                &[duration.into()],
            )?;
            if within.is_empty() {
                return Ok::<_, pgrx::spi::Error>(None);
            }
            let (Some(expires), Some(expires_text)) = within
                .first()
                .get_two::<pgrx::datum::TimestampWithTimeZone, String>()?
            else {
                return Ok(None);
            };
            // RETURNING only the id: Citus refuses a STABLE cast there.
            let t = c.update(
                "INSERT INTO tenancy.support_grant (tenant_id, operator, privileges, granted_by, expires_at) \
                 VALUES ($1, $2::text::regrole, $3, $4, $5) RETURNING id",
                None,
                &[to_pg_uuid(b.tenant).into(), authz::role_input(operator).into(), privileges.clone().into(), b.subject.clone().into(), expires.into()],
            )?;
            if t.is_empty() {
                return Ok::<_, pgrx::spi::Error>(None);
            }
            let r = t.first();
            Ok(Some((r.get::<i64>(1)?.unwrap_or_default(), expires_text)))
        })
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: grant_support failed: {e}"));
    let Some((id, expires_at)) = row else {
        errors::raise(
            INVALID_PARAMETER,
            "support access ends after now and at most 30 days from now",
            "For example interval '2 hours'.",
        );
    };
    let detail = serde_json::json!({
        "grant_id": id, "operator": authz::role_name(operator), "privileges": privileges, "expires_at": expires_at,
    });
    crate::audit::admin("grant_support", Some(b.tenant), detail.clone());
    pgrx::JsonB(detail)
}

#[pg_extern(volatile, parallel_unsafe)]
fn revoke_support(operator: Option<crate::pg::types::Regrole>) {
    let operator = errors::not_null("revoke_support", "operator", operator).0;
    let b = crate::binding::require();
    if !authz::is_tenant_admin(b.tenant) {
        errors::raise(
            errors::INSUFFICIENT_PRIVILEGE,
            "permission denied: revoke_support is for the bound tenant's admins",
            "Bind a token of an admin of the tenant.",
        );
    }
    // By id, read here: each node's copy holds its own oid for the operator (see
    // [`delete_mapping`]).
    let ids: Vec<i64> = catalog::owner_rows(
        "tenancy.support_grant",
        "SELECT id FROM tenancy.support_grant \
          WHERE tenant_id = $1 AND operator = $2::oid::regrole AND revoked_at IS NULL ORDER BY 1",
        &[to_pg_uuid(b.tenant).into(), operator.into()],
        |r| Ok(r.get::<i64>(1)?.unwrap_or_default()),
    );
    let revoked = if ids.is_empty() {
        0
    } else {
        catalog::write(
            "UPDATE tenancy.support_grant SET revoked_at = now() \
              WHERE tenant_id = $1 AND id = ANY ($2) AND revoked_at IS NULL RETURNING 1",
            &[to_pg_uuid(b.tenant).into(), ids.into()],
        )
    };
    if revoked == 0 {
        // Not answered as done, nor recorded: a revocation that revoked nothing (a mistyped
        // role, a grant already gone) is the admin's to see (a reviewer's pass).
        errors::raise(
            errors::UNDEFINED_OBJECT,
            format!(
                "role \"{}\" holds no support grant of this tenant that is not revoked",
                authz::role_name(operator)
            ),
            "SELECT * FROM tenancy.support_grants lists the tenant's grants.",
        );
    }
    crate::audit::admin(
        "revoke_support",
        Some(b.tenant),
        serde_json::json!({"operator": authz::role_name(operator)}),
    );
}

/// By an operator: bind to `tenant` with the privileges of its live support grant, until the
/// grant expires or is revoked.
#[pg_extern(volatile, parallel_unsafe)]
fn enter_support(tenant: &str) -> crate::binding::JsonbBytes {
    let who = authz::caller();
    if !authz::is_operator(who) || authz::is_superuser(who) || authz::is_key_admin(who) {
        errors::raise(
            errors::INSUFFICIENT_PRIVILEGE,
            "permission denied: enter_support is for platform operators",
            "Application sessions bind with tenancy.bind(token).",
        );
    }
    crate::binding::refuse_in_citus_connection("tenancy.enter_support()");
    let t = catalog::require_tenant(tenant);
    let Some(grant) = catalog::support_grant(t.id, who) else {
        let mut f = serde_json::Map::new();
        f.insert("tenant".into(), t.slug.clone().into());
        errors::refuse(
            "support_refused",
            f,
            errors::INSUFFICIENT_PRIVILEGE,
            format!("role \"{}\" has no live support grant from tenant \"{}\"", authz::role_name(who), t.slug),
            "A tenant admin grants time-limited access with tenancy.grant_support(); grants expire and can be revoked.",
        );
    };
    let b = crate::binding::enter_support(&t, who, &grant);
    crate::audit::admin(
        "enter_support",
        Some(t.id),
        serde_json::json!({"operator": authz::role_name(who), "grant_id": grant.id, "privileges": grant.privileges}),
    );
    crate::binding::describe(&b)
}

// ------------------------------------------------------------------------------------------
// Kill switches: refuse a subject's tokens, or one token, from the next statement on.

/// Refuse `subject`'s tokens in `tenant` issued before `issued_before` (tokens without `iat`
/// count as issued before it), whatever its memberships and the tenant's `default_roles`;
/// sessions bound with such a token lose access from their next statement. Operators and the
/// tenant's admins; audited in the tenant's chain. A later call can only move the instant
/// forward.
#[pg_extern(volatile, parallel_unsafe)]
fn revoke_subject(
    tenant: &str,
    subject: &str,
    issued_before: default!(Option<pgrx::datum::TimestampWithTimeZone>, "now()"),
) {
    let t = authz::require_manageable_tenant("revoke_subject", tenant);
    if subject.is_empty() || subject.len() > 1000 {
        errors::raise(
            INVALID_PARAMETER,
            "subjects are 1 to 1000 characters",
            "Pass the token's \"sub\" claim.",
        );
    }
    let Some(issued_before) = issued_before else {
        errors::raise(
            INVALID_PARAMETER,
            "issued_before must not be NULL",
            "Leave it out to refuse every token issued until now.",
        );
    };
    // An operator's revocation is a kill switch: it does not wait for ever on a tenant admin's
    // open management transaction (its session is ended after `tenancy.kill_switch_wait`).
    let (t, ended) = as_kill_switch("revoke_subject", t.id, None, || lock_memberships(&t));
    refuse_over_quota(
        "SELECT count(*) FROM tenancy.subject_revocation WHERE tenant_id = $1",
        Some(t.id),
        "subject revocations",
        REVOCATION_QUOTA,
        REVOCATION_HINT,
    );
    catalog::write(
        "INSERT INTO tenancy.subject_revocation (tenant_id, subject, issued_before, revoked_by) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, subject) DO UPDATE \
            SET issued_before = greatest(tenancy.subject_revocation.issued_before, EXCLUDED.issued_before), \
                revoked_at = EXCLUDED.revoked_at, revoked_by = EXCLUDED.revoked_by",
        &[
            to_pg_uuid(t.id).into(),
            subject.into(),
            issued_before.into(),
            revoker().into(),
        ],
    );
    crate::audit::admin(
        "revoke_subject",
        Some(t.id),
        noting_ended(
            serde_json::json!({"subject": subject, "issued_before": format!("{issued_before}")}),
            ended,
        ),
    );
}

/// Refuse the token whose `jti` claim is `jti` until it expires: in every tenant when an
/// operator revokes it, in the bound tenant when its admin does. Audited.
#[pg_extern(volatile, parallel_unsafe)]
fn revoke_token(jti: Option<&str>) {
    let jti = errors::not_null("revoke_token", "jti", jti);
    if jti.is_empty() || jti.len() > 1000 {
        errors::raise(
            INVALID_PARAMETER,
            "a jti is 1 to 1000 characters",
            "Pass the token's \"jti\" claim; tokens without one are revoked through their subject with tenancy.revoke_subject().",
        );
    }
    let bound_admin = crate::binding::current_if_bound()
        .map(|b| b.tenant)
        .filter(|t| authz::is_tenant_admin(*t));
    let tenant = match bound_admin {
        Some(t) => Some(t),
        None if authz::is_operator(authz::caller()) => {
            authz::require_operator("revoke_token");
            None
        }
        None => {
            let mut f = serde_json::Map::new();
            f.insert("action".into(), "revoke_token".into());
            errors::refuse(
                "management_refused",
                f,
                errors::INSUFFICIENT_PRIVILEGE,
                format!(
                    "permission denied: revoke_token needs an operator or a bound admin of the token's tenant, and role \"{}\" is neither",
                    authz::role_name(authz::caller())
                ),
                "Bind a token of an admin of the tenant (the jti is then revoked in that tenant), or run it as a member of tenancy_operator (revoked in every tenant).",
            )
        }
    };
    // Counted under a lock (see create_role): the tenant's row, or for the platform's
    // revocations a lock of pg_tenancy's own that no SQL can take.
    // A tenant found decommissioned after the lock is refused (a bound admin's revocation that
    // waited for a decommission landed in it: an attacker's pass).
    match tenant {
        Some(t) => match catalog::tenant_by_id(t) {
            Some(row) => {
                catalog::lock_live_tenant(&row);
            }
            None => catalog::lock_tenant_row(t),
        },
        None => catalog::lock_platform_revocations(),
    }
    refuse_over_quota(
        // Two branches, each an index scan (`IS NOT DISTINCT FROM` cannot use the index: every
        // call counted every tenant's revocations, an attacker's pass).
        "SELECT CASE WHEN $1::uuid IS NULL \
                THEN (SELECT count(*) FROM tenancy.token_revocation WHERE tenant_id IS NULL) \
                ELSE (SELECT count(*) FROM tenancy.token_revocation WHERE tenant_id = $1) END",
        tenant,
        "token revocations",
        REVOCATION_QUOTA,
        REVOCATION_HINT,
    );
    catalog::write(
        "INSERT INTO tenancy.token_revocation (jti, tenant_id, revoked_by) VALUES ($1, $2, $3) \
         ON CONFLICT (jti, tenant_id) DO NOTHING",
        &[jti.into(), tenant.map(to_pg_uuid).into(), revoker().into()],
    );
    crate::audit::admin(
        "revoke_token",
        tenant,
        serde_json::json!({"jti": jti, "every_tenant": tenant.is_none()}),
    );
}

/// Revocations one tenant (or the platform, for tokens revoked everywhere) may hold: a bound on
/// the catalog's growth, not on backends' memory (revocations are looked up one by one).
const REVOCATION_QUOTA: i64 = 100_000;
const REVOCATION_HINT: &str =
    "Revoke a subject's tokens at once with tenancy.revoke_subject(), or let short-lived tokens expire.";

/// Roles one tenant may hold, its three seeded roles included. A backend that binds the tenant
/// keeps all of them, and its grants, in memory, and `verify()` and `export_config()` list
/// them: a tenant admin must not be able to grow the catalog, and every backend serving the
/// tenant, without bound (an attacker's pass).
const ROLE_QUOTA: i64 = 1_000;

/// Live support grants one tenant may hold (each one operator's, for at most 30 days).
const SUPPORT_GRANT_QUOTA: i64 = 100;

/// Grants (one table's or every table's privilege, for one role) one tenant may hold: the same
/// bound, for the rows a backend loads at the tenant's first bind.
const GRANT_QUOTA: i64 = 100_000;

/// Refuse with 54000 when the tenant (or, with `tenant` None, the platform) already holds
/// `quota` of what `count_sql` counts.
fn refuse_over_quota(
    count_sql: &str,
    tenant: Option<uuid::Uuid>,
    what: &str,
    quota: i64,
    hint: &str,
) {
    let n = catalog::owner_rows(what, count_sql, &[tenant.map(to_pg_uuid).into()], |r| {
        Ok(r.get::<i64>(1)?.unwrap_or(0))
    })
    .into_iter()
    .next()
    .unwrap_or(0);
    if n >= quota {
        errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!("{what} are limited to {quota} a tenant"),
            hint,
        );
    }
}

/// Who revoked: the bound subject of a tenant admin, else the database role.
fn revoker() -> String {
    crate::binding::peek()
        .and_then(|b| b.subject)
        .unwrap_or_else(|| authz::role_name(authz::caller()))
}

/// Registered at `_PG_init`.
pub fn init() {
    crate::pg::hooks::before_utility(before_drop_role);
    catalog::on_mappings_changed(|| keep_mapping_dependencies(None));
}

/// `DROP ROLE` of roles that are mapped to tenants, or hold support grants, in this database
/// ends those first, recorded in each tenant's trail as the dropping role's `unmap_role` and
/// `revoke_support`, in the statement's transaction (a DROP that fails undoes them).
/// PostgreSQL keeps no dependency of a `regrole` column: the mapping would stay, naming an oid
/// that a role made later may be given, and that role would be bound to the tenant without a
/// token. Done only for a caller PostgreSQL lets drop roles (a superuser, or a role with
/// CREATEROLE; the DROP's own checks follow), so that no one else makes pg_tenancy lock a
/// tenant or write its trail. A DROP ROLE run in another database, or on a Citus worker,
/// leaves this database's mappings: `verify()` reports them (`mapping_of_dropped_role`).
fn before_drop_role(stmt: *mut pg_sys::Node) {
    // SAFETY: `stmt` is the statement's parse tree (or null); its tag is read before the node
    // is used as the DropRoleStmt it says, whose `roles` is a List of RoleSpec pointers.
    let roles: Vec<pg_sys::Oid> = unsafe {
        if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_DropRoleStmt {
            return;
        }
        let list = (*(stmt as *mut pg_sys::DropRoleStmt)).roles;
        if list.is_null() {
            return;
        }
        (0..(*list).length as usize)
            .map(|i| (*(*list).elements.add(i)).ptr_value as *const pg_sys::RoleSpec)
            .map(|r| pg_sys::get_rolespec_oid(r, true))
            .filter(|r| *r != pg_sys::InvalidOid)
            .collect()
    };
    if roles.is_empty() || !catalog::installed() || crate::pg::citus::internal_backend() {
        return;
    }
    // SAFETY: a syscache lookup of the current user's CREATEROLE attribute (superusers have it).
    if !unsafe { pg_sys::has_createrole_privilege(authz::caller()) } {
        return;
    }
    // Each role locked as DROP ROLE will lock it, before its mappings are read: a mapping or
    // a support grant being made now (under the role's lock) is committed first, and read.
    for role in &roles {
        // SAFETY: a transaction-level lock of a shared object by its catalog and oid.
        unsafe {
            pg_sys::LockSharedObject(
                pg_sys::AuthIdRelationId,
                *role,
                0,
                pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE,
            )
        };
    }
    if crate::binding::carrier::on_worker() {
        // Citus carries a DROP ROLE made on a worker to every node, and the mappings could
        // not be ended from here (the catalog is written from the coordinator): refused for a
        // role that is mapped or holds a support grant.
        let held = catalog::owner_rows(
            "tenancy.role_mapping",
            "SELECT EXISTS (SELECT FROM tenancy.role_mapping m WHERE m.role::pg_catalog.oid OPERATOR(pg_catalog.=) ANY ($1)) \
                 OR EXISTS (SELECT FROM tenancy.support_grant g WHERE g.operator::pg_catalog.oid OPERATOR(pg_catalog.=) ANY ($1) \
                              AND g.revoked_at IS NULL)",
            &[roles.clone().into()],
            |r| r.get::<bool>(1),
        );
        if held.first().copied().flatten().unwrap_or(false) {
            errors::raise(
                errors::NOT_IN_PREREQUISITE_STATE,
                "a role mapped to a tenant, or holding a support grant, is dropped on the Citus coordinator",
                "Run DROP ROLE on the coordinator: it ends the role's mappings and support grants on every node first.",
            );
        }
        return;
    }
    for &role in &roles {
        let tenants: Vec<uuid::Uuid> = catalog::owner_rows(
            "tenancy.role_mapping",
            "SELECT m.tenant_id FROM tenancy.role_mapping m \
              WHERE m.role::pg_catalog.oid OPERATOR(pg_catalog.=) $1 \
             UNION SELECT g.tenant_id FROM tenancy.support_grant g \
              WHERE g.operator::pg_catalog.oid OPERATOR(pg_catalog.=) $1 AND g.revoked_at IS NULL ORDER BY 1",
            &[role.into()],
            |r| r.get::<pgrx::Uuid>(1),
        )
        .into_iter()
        .flatten()
        .map(|u| catalog::from_pg_uuid(&u))
        .collect();
        let name = authz::role_name(role);
        for tenant in tenants {
            catalog::lock_tenant_row(tenant);
            if delete_mapping(role, tenant) > 0 {
                crate::audit::admin(
                    "unmap_role",
                    Some(tenant),
                    serde_json::json!({"role": name, "reason": "DROP ROLE"}),
                );
            }
            // By id, read here, as revoke_support does: on Citus each node's copy holds its own
            // oid for the role.
            let ids: Vec<i64> = catalog::owner_rows(
                "tenancy.support_grant",
                "SELECT g.id FROM tenancy.support_grant g WHERE g.tenant_id = $1 \
                    AND g.operator::pg_catalog.oid OPERATOR(pg_catalog.=) $2 AND g.revoked_at IS NULL ORDER BY 1",
                &[to_pg_uuid(tenant).into(), role.into()],
                |r| Ok(r.get::<i64>(1)?.unwrap_or_default()),
            );
            if !ids.is_empty() {
                catalog::write(
                    "UPDATE tenancy.support_grant SET revoked_at = now() \
                      WHERE tenant_id = $1 AND id = ANY ($2) AND revoked_at IS NULL",
                    &[to_pg_uuid(tenant).into(), ids.into()],
                );
                crate::audit::admin(
                    "revoke_support",
                    Some(tenant),
                    serde_json::json!({"operator": name, "reason": "DROP ROLE"}),
                );
            }
        }
    }
    // Their grants on tenancy.mapped_role go with their mappings: PostgreSQL would refuse the
    // DROP for them.
    keep_mapping_dependencies(Some(&roles));
}
