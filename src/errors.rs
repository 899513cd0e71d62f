//! Every refusal of pg_tenancy goes through here: an ERROR with a specific SQLSTATE, a message
//! naming the object, and a HINT saying what to do. Security events are also written to the
//! server log as one structured line, which survives the rollback of the statement that caused
//! them.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

pub use PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT as DUPLICATE_OBJECT;
pub use PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE as INSUFFICIENT_PRIVILEGE;
pub use PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION as INVALID_AUTHORIZATION;
pub use PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE as INVALID_PARAMETER;
pub use PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE as NOT_IN_PREREQUISITE_STATE;
pub use PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT as UNDEFINED_OBJECT;

/// Raise an ERROR with a SQLSTATE, a message and a HINT. Never returns.
pub fn raise(code: PgSqlErrorCode, message: impl Into<String>, hint: impl Into<String>) -> ! {
    ErrorReport::new(code, message.into(), "pg_tenancy")
        .set_hint(hint)
        .report(PgLogLevel::ERROR);
    unreachable!("ereport(ERROR) returned")
}

/// Write a security event to the server log as one line of JSON. A LOG line is emitted at once,
/// so it survives the rollback of the transaction whose statement caused it.
pub fn security_event(event: &str, mut fields: serde_json::Map<String, serde_json::Value>) {
    fields.insert("event".into(), event.into());
    let (role, session_role) = unsafe {
        (
            crate::authz::role_name(pgrx::pg_sys::GetUserId()),
            crate::authz::role_name(pgrx::pg_sys::GetSessionUserId()),
        )
    };
    fields.entry("role").or_insert(role.into());
    fields.entry("session_role").or_insert(session_role.into());
    let line = serde_json::Value::Object(fields).to_string();
    crate::events::record(event, &line);
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
        format!("pg_tenancy security event: {line}"),
        "pg_tenancy",
    )
    .report(PgLogLevel::LOG);
}

/// Log a security event, then raise the refusal.
pub fn refuse(
    event: &str,
    fields: serde_json::Map<String, serde_json::Value>,
    code: PgSqlErrorCode,
    message: impl Into<String>,
    hint: impl Into<String>,
) -> ! {
    let message = message.into();
    let mut fields = fields;
    fields.insert("reason".into(), message.clone().into());
    security_event(event, fields);
    raise(code, message, hint)
}
