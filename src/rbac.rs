//! Role-to-tenant mappings (database login roles bound to a tenant without a token).
//! Tenant roles, members and privileges build on these tables.

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

#[pg_extern(
    volatile,
    parallel_unsafe,
    sql = r#"
CREATE FUNCTION tenancy.map_role("role" regrole, "tenant" text, "tenant_roles" text[] DEFAULT '{member}')
RETURNS void STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'map_role_wrapper';
"#
)]
fn map_role(role: pg_sys::Oid, tenant: &str, tenant_roles: Vec<String>) {
    authz::require_operator("map_role");
    let t = catalog::require_tenant(tenant);
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
            authz::role_name(role)
        );
    }
    catalog::write(
        "INSERT INTO tenancy.role_mapping (role, tenant_id, tenant_roles) VALUES ($1::oid::regrole, $2, $3) \
         ON CONFLICT (role, tenant_id) DO UPDATE SET tenant_roles = EXCLUDED.tenant_roles",
        &[role.into(), to_pg_uuid(t.id).into(), tenant_roles.clone().into()],
    );
    crate::audit::admin(
        "map_role",
        Some(t.id),
        serde_json::json!({"role": authz::role_name(role), "tenant_roles": tenant_roles}),
    );
}

#[pg_extern(
    volatile,
    parallel_unsafe,
    sql = r#"
CREATE FUNCTION tenancy.unmap_role("role" regrole, "tenant" text)
RETURNS void STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'unmap_role_wrapper';
"#
)]
fn unmap_role(role: pg_sys::Oid, tenant: &str) {
    authz::require_operator("unmap_role");
    let t = catalog::require_tenant(tenant);
    let n = catalog::write(
        "DELETE FROM tenancy.role_mapping WHERE role = $1::oid::regrole AND tenant_id = $2",
        &[role.into(), to_pg_uuid(t.id).into()],
    );
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
    crate::audit::admin(
        "unmap_role",
        Some(t.id),
        serde_json::json!({"role": authz::role_name(role)}),
    );
}
