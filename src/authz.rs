//! Who may call what. Platform calls (tenants, keys, role mappings, protection) are for
//! operators: superusers and members of `tenancy_operator`. Tenant calls (roles, members,
//! settings) are also open to the bound tenant's admins, for their own tenant only.

use crate::errors::{self, INSUFFICIENT_PRIVILEGE};
use pgrx::pg_sys;

pub const OPERATOR_ROLE: &str = "tenancy_operator";

/// Name of a role, or its oid when it no longer exists.
pub fn role_name(oid: pg_sys::Oid) -> String {
    unsafe {
        let p = pg_sys::GetUserNameFromId(oid, true);
        if p.is_null() {
            format!("{}", u32::from(oid))
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

fn operator_role_oid() -> pg_sys::Oid {
    unsafe { pg_sys::get_role_oid(c"tenancy_operator".as_ptr(), true) }
}

/// The role the calling SQL runs as (functions of pg_tenancy are SECURITY INVOKER).
pub fn caller() -> pg_sys::Oid {
    unsafe { pg_sys::GetUserId() }
}

pub fn is_superuser(role: pg_sys::Oid) -> bool {
    unsafe { pg_sys::superuser_arg(role) }
}

/// Superusers and members of tenancy_operator (with its privileges, i.e. INHERIT or SET ROLE).
pub fn is_operator(role: pg_sys::Oid) -> bool {
    if is_superuser(role) {
        return true;
    }
    let op = operator_role_oid();
    op != pg_sys::InvalidOid && unsafe { pg_sys::has_privs_of_role(role, op) }
}

/// Refuse unless the caller is an operator.
pub fn require_operator(action: &str) {
    let who = caller();
    if !is_operator(who) {
        let mut f = serde_json::Map::new();
        f.insert("action".into(), action.into());
        errors::refuse(
            "management_refused",
            f,
            INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied: {action} is for platform operators, and role \"{}\" is not one",
                role_name(who)
            ),
            format!("Run it as a member of {OPERATOR_ROLE}: GRANT {OPERATOR_ROLE} TO <role>;"),
        );
    }
}

/// Refuse unless the caller is an operator or an admin bound to `tenant`.
pub fn require_operator_or_tenant_admin(action: &str, tenant: &crate::catalog::TenantRow) {
    let who = caller();
    if is_operator(who) {
        return;
    }
    if let Some(b) = crate::binding::current_if_bound() {
        if b.tenant == tenant.id && b.roles.iter().any(|r| r == "admin") {
            return;
        }
    }
    let mut f = serde_json::Map::new();
    f.insert("action".into(), action.into());
    f.insert("tenant".into(), tenant.slug.clone().into());
    errors::refuse(
        "management_refused",
        f,
        INSUFFICIENT_PRIVILEGE,
        format!(
            "permission denied: {action} on tenant \"{}\" needs an operator or that tenant's admin",
            tenant.slug
        ),
        "Bind a token of an admin of this tenant, or run it as a member of tenancy_operator.",
    );
}
