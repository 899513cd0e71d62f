//! Tenant-role privileges on protected tables, checked by the generated policies once per
//! statement through `(SELECT tenancy.allows('table'::regclass, 'privilege'))`.

use crate::catalog;
use crate::errors;
use pgrx::pg_sys;
use pgrx::prelude::*;

/// True when the bound roles hold `privilege` on `tbl`; otherwise ERROR 42501 naming the table
/// and the missing privilege (a refused statement is loud, never silently empty).
#[pg_extern(
    stable,
    parallel_restricted,
    sql = r#"
CREATE FUNCTION tenancy.allows("tbl" regclass, "privilege" text)
RETURNS boolean STRICT STABLE PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'allows_wrapper';
"#
)]
fn allows(tbl: pg_sys::Oid, privilege: &str) -> bool {
    let b = crate::binding::require();
    if catalog::roles_allow(b.tenant, &b.roles, tbl, privilege) {
        return true;
    }
    let table = crate::policy::relation_name(tbl);
    let roles = if b.roles.is_empty() {
        "(none)".to_string()
    } else {
        b.roles.join(", ")
    };
    let mut f = serde_json::Map::new();
    f.insert("table".into(), table.clone().into());
    f.insert("privilege".into(), privilege.into());
    f.insert("tenant".into(), b.slug.clone().into());
    f.insert("subject".into(), b.subject.clone().into());
    errors::refuse(
        "privilege_refused",
        f,
        errors::INSUFFICIENT_PRIVILEGE,
        format!("permission denied: {privilege} on table \"{table}\" is not granted to tenant roles {{{roles}}}"),
        format!(
            "A tenant admin can grant it: SELECT tenancy.grant('{}', '<role>', '{table}', '{{{privilege}}}');",
            b.slug
        ),
    )
}
