//! Every refusal of pg_tenancy goes through here: an ERROR with a specific SQLSTATE, a message
//! naming the object, and a HINT saying what to do. Security events are also written to the
//! server log as one structured line, which survives the rollback of the statement that caused
//! them.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

pub use PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT as DUPLICATE_OBJECT;
pub use PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED as FEATURE_NOT_SUPPORTED;
pub use PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE as INSUFFICIENT_PRIVILEGE;
pub use PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION as INVALID_AUTHORIZATION;
pub use PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE as INVALID_PARAMETER;
pub use PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE as NOT_IN_PREREQUISITE_STATE;
pub use PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN as UNDEFINED_COLUMN;
pub use PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT as UNDEFINED_OBJECT;

/// `s` with every control character (newlines, carriage returns, tabs, escapes, DEL, and the
/// C1 range) and every invisible formatting character ([`is_invisible`]) written as `\u{..}`:
/// a value from SQL that reaches a message or a log line cannot start a line of its own there
/// (a forged "pg_tenancy security event" line, say), move the terminal's cursor, reorder the
/// text around it on screen (bidirectional overrides, as in "Trojan Source"), or pass for
/// another name by a character nobody sees.
pub fn clean(s: &str) -> String {
    let hidden = |c: char| c.is_control() || is_invisible(c);
    if !s.chars().any(hidden) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if hidden(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// Characters that change how the text around them is shown while showing nothing themselves:
/// Unicode's bidirectional formatting characters (the embeddings, overrides and isolates, the
/// left-to-right, right-to-left and Arabic letter marks) and the zero-width ones (space,
/// non-joiner, joiner, word joiner, the invisible operators, the byte order mark).
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

/// A refusal: its SQLSTATE, message and HINT, and, when it is a security event, the event's
/// kind and fields. Checks return one (`Result<_, Refusal>`), so the code that decides why
/// something is refused also decides its SQLSTATE; it is raised in one place,
/// [`Refusal::raise`].
///
/// Every refusal also carries a stable machine-readable code, sent as its DETAIL
/// (`pg_tenancy: no_tenant_bound`): an application maps it to what to do (the README's error
/// catalogue) without parsing the message. A refusal's code is set where it is decided
/// ([`Refusal::code`]); a security event's kind is its code unless one was set; otherwise the
/// code names the SQLSTATE's condition.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub sqlstate: PgSqlErrorCode,
    pub code: Option<&'static str>,
    pub message: String,
    pub hint: String,
    pub event: Option<(&'static str, serde_json::Map<String, serde_json::Value>)>,
}

impl Refusal {
    pub fn new(
        sqlstate: PgSqlErrorCode,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Refusal {
        Refusal {
            sqlstate,
            code: None,
            message: message.into(),
            hint: hint.into(),
            event: None,
        }
    }

    /// Its machine-readable code (see the README's error catalogue).
    pub fn code(mut self, code: &'static str) -> Refusal {
        self.code = Some(code);
        self
    }

    /// Report it as security event `event` with `fields` (and its message as the reason).
    pub fn event(
        mut self,
        event: &'static str,
        fields: serde_json::Map<String, serde_json::Value>,
    ) -> Refusal {
        self.event = Some((event, fields));
        self
    }

    /// The code sent in DETAIL.
    pub fn machine_code(&self) -> &'static str {
        self.code
            .or(self.event.as_ref().map(|(e, _)| *e))
            .unwrap_or_else(|| condition(self.sqlstate))
    }

    /// Report the security event, if any, then raise the ERROR, located where the caller
    /// raised it. Never returns.
    #[track_caller]
    pub fn raise(self) -> ! {
        let code = self.machine_code();
        if let Some((event, mut fields)) = self.event {
            fields.insert("reason".into(), self.message.clone().into());
            fields.entry("code").or_insert(code.into());
            security_event(event, fields);
        }
        ErrorReport::new(self.sqlstate, clean(&self.message), "pg_tenancy")
            .set_detail(format!("pg_tenancy: {code}"))
            .set_hint(clean(&self.hint))
            .report(PgLogLevel::ERROR);
        unreachable!("ereport(ERROR) returned")
    }
}

/// The condition name of the SQLSTATEs pg_tenancy raises, for refusals without a code of their
/// own.
fn condition(sqlstate: PgSqlErrorCode) -> &'static str {
    use PgSqlErrorCode::*;
    match sqlstate {
        ERRCODE_INSUFFICIENT_PRIVILEGE => "insufficient_privilege",
        ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION => "invalid_authorization_specification",
        ERRCODE_INVALID_PARAMETER_VALUE => "invalid_parameter_value",
        ERRCODE_NULL_VALUE_NOT_ALLOWED => "null_value_not_allowed",
        ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE => "object_not_in_prerequisite_state",
        ERRCODE_OBJECT_IN_USE => "object_in_use",
        ERRCODE_UNDEFINED_OBJECT => "undefined_object",
        ERRCODE_UNDEFINED_COLUMN => "undefined_column",
        ERRCODE_UNDEFINED_TABLE => "undefined_table",
        ERRCODE_INVALID_SCHEMA_NAME => "invalid_schema_name",
        ERRCODE_WRONG_OBJECT_TYPE => "wrong_object_type",
        ERRCODE_DATATYPE_MISMATCH => "datatype_mismatch",
        ERRCODE_DUPLICATE_OBJECT => "duplicate_object",
        ERRCODE_INVALID_TRANSACTION_STATE => "invalid_transaction_state",
        ERRCODE_NO_ACTIVE_SQL_TRANSACTION => "no_active_sql_transaction",
        ERRCODE_T_R_SERIALIZATION_FAILURE => "serialization_failure",
        ERRCODE_FEATURE_NOT_SUPPORTED => "feature_not_supported",
        ERRCODE_PROGRAM_LIMIT_EXCEEDED => "program_limit_exceeded",
        ERRCODE_E_R_I_E_EVENT_TRIGGER_PROTOCOL_VIOLATED => "event_trigger_protocol_violated",
        ERRCODE_INTERNAL_ERROR => "internal_error",
        ERRCODE_LOCK_NOT_AVAILABLE => "lock_not_available",
        // Every SQLSTATE pg_tenancy raises is named above (unit test `conditions_are_named`).
        _ => "error",
    }
}

/// Raise an ERROR with a SQLSTATE, a message and a HINT (both cleaned of control characters),
/// located where the caller raised it. Never returns.
#[track_caller]
pub fn raise(code: PgSqlErrorCode, message: impl Into<String>, hint: impl Into<String>) -> ! {
    Refusal::new(code, message, hint).raise()
}

/// The names in an array argument, none of them NULL: 22004 otherwise (an attacker's pass met
/// an internal error for `'{NULL}'`).
pub fn names(what: &str, v: Vec<Option<String>>) -> Vec<String> {
    v.into_iter()
        .collect::<Option<Vec<String>>>()
        .unwrap_or_else(|| {
            raise(
                PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                format!("{what}: the names may not hold NULL"),
                "Name each one, for example '{select,insert}'.",
            )
        })
}

/// An argument of a revocation that may not be NULL: 22004. A STRICT function returns NULL for
/// a NULL argument and does nothing, which a revocation's caller (`revoke_token(NULL)`, a
/// `jti` an application failed to read) could not tell from a revocation made.
#[track_caller]
pub fn not_null<T>(call: &str, arg: &str, v: Option<T>) -> T {
    v.unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{call}: {arg} may not be NULL, and nothing was changed"),
            format!("Check where the {arg} came from: {call} removes nothing without one."),
        )
    })
}

/// Keep Rust backtraces out of error reports: pgrx appends a captured backtrace (frames with
/// the build's source paths) to an error's DETAIL when `RUST_BACKTRACE` or
/// `RUST_LIB_BACKTRACE` asks for one in the server's environment. `RUST_LIB_BACKTRACE=0` takes
/// precedence over both for `Backtrace::capture`, which reads it once per process. Called from
/// `_PG_init`, before anything of pg_tenancy can raise (in the postmaster when preloaded, so
/// every backend inherits it).
pub fn init() {
    // SAFETY (of the call, which is safe in edition 2021): a PostgreSQL backend or postmaster
    // runs one thread, and nothing reads the environment concurrently.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
}

/// Where security events go (src/events.rs reports them), set at _PG_init. Until then (and
/// in unit tests) an event is dropped and the refusal still raised.
pub type EventSink = fn(&str, serde_json::Map<String, serde_json::Value>);

thread_local! {
    static SINK: std::cell::Cell<Option<EventSink>> = const { std::cell::Cell::new(None) };
}

/// Set where security events go.
pub fn set_event_sink(f: EventSink) {
    SINK.with(|s| s.set(Some(f)));
}

/// Report a security event (a LOG line that survives the rollback of the statement that caused
/// it, and the shared-memory counters when preloaded).
pub fn security_event(event: &str, fields: serde_json::Map<String, serde_json::Value>) {
    if let Some(f) = SINK.with(|s| s.get()) {
        f(event, fields);
    }
}

/// Log a security event, then raise the refusal (its code is the event's kind).
#[track_caller]
pub fn refuse(
    event: &'static str,
    fields: serde_json::Map<String, serde_json::Value>,
    code: PgSqlErrorCode,
    message: impl Into<String>,
    hint: impl Into<String>,
) -> ! {
    Refusal::new(code, message, hint)
        .event(event, fields)
        .raise()
}
