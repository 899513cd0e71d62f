//! The guard: the database refuses DDL that would weaken a protected table (disabling or
//! un-forcing row security, dropping, altering or adding policies, dropping or changing the
//! tenant column, disabling pg_tenancy's triggers), except through tenancy.protect/unprotect.
//!
//! Event triggers at ddl_command_end (ALTER TABLE, CREATE/ALTER POLICY, triggers) and sql_drop
//! (dropped policies, triggers, columns) call `_guard_check(tables)` with the tables the command
//! touched; it recomputes their protection-state digest and refuses the command when one
//! differs from the recorded digest. Event
//! triggers fire for every role, whether or not this library is loaded in the session, and
//! the error rolls the command back.

use crate::catalog;
use crate::errors;
use pgrx::prelude::*;

/// Refuse the running DDL command when one of the protected tables it touched no longer has
/// the protection state recorded for it.
#[pg_extern(volatile, parallel_unsafe, name = "_guard_check")]
fn guard_check(touched: Vec<Option<pgrx::pg_sys::Oid>>) {
    if crate::policy::in_managed_ddl()
        || crate::policy::in_restore()
        || touched.iter().all(Option::is_none)
    {
        return;
    }
    let drifted: Vec<String> = catalog::with_owner(|| {
        Spi::connect(|c| {
            let t = c.select(
                "SELECT p.relid::text FROM tenancy.protected_table p \
                  WHERE p.relid::oid = ANY ($1) AND EXISTS (SELECT FROM pg_class WHERE oid = p.relid) \
                    AND p.policy_digest IS DISTINCT FROM tenancy._protection_digest(p.relid, p.tenant_column) \
                  ORDER BY 1",
                None,
                &[touched.clone().into()],
            )?;
            let mut out = Vec::new();
            for r in t {
                out.push(r.get::<String>(1)?.unwrap_or_default());
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: guard check failed: {e}"));
    if let Some(table) = drifted.first() {
        let mut f = serde_json::Map::new();
        f.insert("table".into(), table.clone().into());
        errors::refuse(
            "guard_refused",
            f,
            errors::INSUFFICIENT_PRIVILEGE,
            format!("cannot change the row-level security of protected table \"{table}\""),
            format!(
                "Row security, policies, the tenant column and pg_tenancy's triggers of protected tables are managed by pg_tenancy. \
                 An operator can run SELECT tenancy.unprotect('{table}'); first (audited), or SELECT tenancy.protect('{table}'); to regenerate."
            ),
        );
    }
}

/// sql_drop: forget protected tables that were dropped.
#[pg_extern(volatile, parallel_unsafe, name = "_forget_dropped")]
fn forget_dropped() {
    catalog::write(
        "DELETE FROM tenancy.protected_table p WHERE NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = p.relid)",
        &[],
    );
}
