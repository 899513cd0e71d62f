//! In-database audit trail. Management actions are recorded as ADMIN entries in the same
//! transaction as the change they describe, so a rolled-back action leaves no entry.

use crate::catalog::{self, to_pg_uuid};
use pgrx::JsonB;
use uuid::Uuid;

/// Record a management action in tenancy.audit_log.
pub fn admin(action: &str, tenant: Option<Uuid>, detail: serde_json::Value) {
    let subject = crate::binding::peek().and_then(|b| b.subject);
    let role = crate::authz::role_name(crate::authz::caller());
    let mut detail = detail;
    if let Some(obj) = detail.as_object_mut() {
        obj.insert("action".into(), action.into());
    }
    catalog::write(
        "INSERT INTO tenancy.audit_log (tenant_id, op, new_row, db_role, subject) \
         VALUES ($1, 'ADMIN', $2, $3, $4)",
        &[
            tenant.map(to_pg_uuid).into(),
            JsonB(detail).into(),
            role.into(),
            subject.into(),
        ],
    );
}
