//! The binding carried from a Citus coordinator to its workers, so that every node acts for
//! exactly the tenant, subject and roles the coordinator is bound to.
//!
//! Citus carries a setting to the connections it opens to the workers in one way only: `SET
//! LOCAL` inside a transaction block, with `citus.propagate_set_commands = 'local'`, for the
//! connections open and those opened later in the transaction. So:
//! - **Coordinator** (any node a client runs a distributed statement on): a token binding is
//!   carried as `SET LOCAL tenancy.carrier = '<token>'`, run by pg_tenancy through SPI in the
//!   client's transaction block: when `bind()` succeeds there, and at the first query of every
//!   later transaction block of a session-scoped binding; `unbind()` carries `''`. Outside a
//!   transaction block nothing is carried, and the workers refuse as unbound. Role-mapped
//!   bindings carry nothing: Citus connects to the workers as the same role, which the same
//!   mapping binds there.
//! - **Worker**: a session without a binding of its own binds the carried token for its
//!   transaction, verified and checked exactly as `tenancy.bind()` would (keys, tenants,
//!   members and revocations are the same on every node: `src/citus/mod.rs`), and checked again
//!   on every statement like any binding. A carrier that changes or ends takes the binding with
//!   it.
//! - **Never split.** A client's `SET` of `tenancy.carrier` is refused on the coordinator (Citus
//!   would carry it to the workers, which would act for another token than the one bound
//!   here), and on a worker in a session bound by its own `bind()` to another token. On a
//!   worker, setting it in an unbound session is binding that token, which takes having it.
//!   (`set_config()` is not carried by Citus, and the coordinator never reads the setting.)
//!
//! Like `SELECT tenancy.bind('<token>')` itself, the `SET LOCAL` carrying the token shows in the
//! workers' `pg_stat_activity` to sessions of the same role and to `pg_read_all_stats`.

use super::{Binding, Source};
use crate::errors::{self, INSUFFICIENT_PRIVILEGE};
use pgrx::pg_sys;
use std::cell::{Cell, RefCell};

/// The token of a binding, kept to carry it to Citus workers. Its `Debug` never shows it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CarriedToken(pub std::rc::Rc<str>);

impl std::fmt::Debug for CarriedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CarriedToken(..)")
    }
}

thread_local! {
    /// Whether this node is a Citus worker, once known.
    static ON_WORKER: Cell<Option<bool>> = const { Cell::new(None) };
    /// Set while pg_tenancy's own `SET LOCAL tenancy.carrier` runs.
    static SENDING: Cell<bool> = const { Cell::new(false) };
    /// (local transaction id, token) carried in that transaction.
    static SENT: RefCell<Option<(u32, std::rc::Rc<str>)>> = const { RefCell::new(None) };
    /// The local transaction id of the last transaction in which a SET statement of the
    /// carrier was allowed: only a carrier set that way, in the running transaction, is bound
    /// (not one from ALTER ROLE/DATABASE SET or set_config(), which Citus does not carry).
    static SET_IN: Cell<u32> = const { Cell::new(0) };
}

/// The current local transaction id (0 outside a transaction).
fn lxid() -> u32 {
    // SAFETY: MyProc is set for every backend that runs SQL; lxid is its own field.
    unsafe { (*pg_sys::MyProc).lxid }
}

/// Whether bindings are carried here: Citus is loaded and created in this database.
pub fn active() -> bool {
    crate::pg::citus::in_database()
}

/// Whether this node is a Citus worker (its group is not the coordinator's, 0).
pub fn on_worker() -> bool {
    if let Some(w) = ON_WORKER.with(|w| w.get()) {
        return w;
    }
    let w = active()
        && crate::catalog::read_one::<bool>(
            "SELECT groupid <> 0 FROM pg_catalog.pg_dist_local_group",
            &[],
        )
        .unwrap_or(false);
    ON_WORKER.with(|c| c.set(Some(w)));
    w
}

/// Whether the running transaction is a transaction block (BEGIN ... COMMIT).
fn in_transaction_block() -> bool {
    // SAFETY: reads the transaction state.
    unsafe { pg_sys::IsTransactionBlock() }
}

/// The token a binding carries: a token binding's own, none for the others.
pub fn token_of(b: &Binding) -> Option<std::rc::Rc<str>> {
    match &b.source {
        Source::Token { carried, .. } if !carried.0.is_empty() => Some(carried.0.clone()),
        _ => None,
    }
}

/// Carry `token` to the workers for the rest of this transaction block (once per transaction
/// and token). Nothing without Citus or outside a transaction block.
pub fn send(token: &std::rc::Rc<str>) {
    if !active() || !in_transaction_block() {
        return;
    }
    let lx = lxid();
    if SENT.with(|s| matches!(&*s.borrow(), Some((l, t)) if *l == lx && t == token)) {
        return;
    }
    // SAFETY: GetConfigOption with missing_ok returns NULL for an unknown setting, else the
    // setting's current value as a C string valid until it changes (read at once).
    let propagated = unsafe {
        let v = pg_sys::GetConfigOption(c"citus.propagate_set_commands".as_ptr(), true, false);
        !v.is_null() && std::ffi::CStr::from_ptr(v).to_bytes() == b"local"
    };
    if !propagated {
        pgrx::warning!(
            "pg_tenancy cannot carry this binding to the Citus workers: citus.propagate_set_commands is not 'local', so the workers will refuse this transaction's distributed statements as unbound; set citus.propagate_set_commands = 'local' (postgresql.conf, or ALTER DATABASE ... SET)"
        );
    }
    set_local(token);
    SENT.with(|s| *s.borrow_mut() = Some((lx, token.clone())));
}

/// End what this transaction carried (after `unbind()`).
pub fn clear() {
    let lx = lxid();
    if SENT.with(|s| matches!(&*s.borrow(), Some((l, _)) if *l == lx)) {
        set_local("");
        SENT.with(|s| *s.borrow_mut() = None);
    }
}

/// Forget what was carried (a subtransaction that carried it rolled back): the next query
/// carries it again.
pub fn forget_sent() {
    SENT.with(|s| *s.borrow_mut() = None);
}

/// `SET LOCAL tenancy.carrier = value`, run by pg_tenancy as a utility statement, so that
/// Citus's utility hook sees and carries it. The value is quoted by PostgreSQL's own
/// quote_literal.
fn set_local(value: &str) {
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            SENDING.with(|s| s.set(false));
        }
    }
    SENDING.with(|s| s.set(true));
    let _done = Done;
    let mut sql = format!(
        "SET LOCAL tenancy.carrier = {}",
        crate::catalog::quote_literal(value)
    );
    if !in_transaction_block() {
        // Outside a transaction block (pg_tenancy's own work in a function called by an
        // autocommit statement) Citus carries a SET LOCAL only from inside a DO block: the
        // statement is the block's body, quoted again by quote_literal.
        sql = format!(
            "DO {}",
            crate::catalog::quote_literal(&format!("BEGIN {sql}; END"))
        );
    }
    let own = format!(
        "SET LOCAL tenancy.carrier = {}",
        crate::catalog::quote_literal(value)
    );
    crate::pg::citus::own_setting(&own, || pgrx::spi::Spi::run(&sql)).unwrap_or_else(|e| {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!("pg_tenancy could not carry the binding to the Citus workers: {e}"),
            "Bind inside a transaction block (BEGIN first).",
        )
    });
}

/// A client's `SET`/`RESET` of `tenancy.carrier` (a utility statement, before it runs): refused
/// unless pg_tenancy runs it, or on a Citus worker in a session with no binding of its own to
/// another token (Citus's connections from the coordinator; see the module's comment).
/// `own` is the session's explicit binding's token and whether it was adopted from a carrier.
pub fn check_client_set(
    stmt: *mut pg_sys::VariableSetStmt,
    own: Option<(Option<std::rc::Rc<str>>, bool)>,
) {
    // SAFETY: `stmt` is the VariableSetStmt about to run; its name is a C string or null.
    let name = unsafe {
        let n = (*stmt).name;
        if n.is_null() {
            return;
        }
        std::ffi::CStr::from_ptr(n)
    };
    // PostgreSQL finds a setting whatever the case of its name (`SET "TENANCY.CARRIER"` sets
    // this one: an attacker's pass split a binding that way).
    if !name.to_bytes().eq_ignore_ascii_case(b"tenancy.carrier") || SENDING.with(|s| s.get()) {
        return;
    }
    let refuse = |why: &str| -> ! {
        errors::raise(
            INSUFFICIENT_PRIVILEGE,
            format!("tenancy.carrier is set by pg_tenancy only: {why}"),
            "Bind with tenancy.bind(token) inside a transaction block: pg_tenancy carries the binding to the Citus workers itself.",
        )
    };
    if !on_worker() {
        refuse("this node is not a Citus worker");
    }
    if let Some((token, adopted)) = own {
        if !adopted {
            // SAFETY: the statement's kind and its argument list, read as PostgreSQL's
            // VariableSetStmt declares them; a constant's string is a C string.
            let value = unsafe { set_value(stmt) };
            if token.as_deref() != value.as_deref() {
                refuse("this session is bound to another token");
            }
        }
    }
    SET_IN.with(|s| s.set(lxid()));
}

/// The string a `SET name = 'value'` sets (None for RESET, DEFAULT or anything else).
///
/// # Safety
/// `stmt` must be a valid VariableSetStmt.
unsafe fn set_value(stmt: *mut pg_sys::VariableSetStmt) -> Option<String> {
    // SAFETY: the caller's contract; every node is read as its tag says.
    unsafe {
        if (*stmt).kind != pg_sys::VariableSetKind::VAR_SET_VALUE || (*stmt).args.is_null() {
            return None;
        }
        let arg = (*(*(*stmt).args).elements).ptr_value as *mut pg_sys::Node;
        if arg.is_null() || (*arg).type_ != pg_sys::NodeTag::T_A_Const {
            return None;
        }
        let c = arg as *mut pg_sys::A_Const;
        if (*c).val.node.type_ != pg_sys::NodeTag::T_String {
            return None;
        }
        let s = (*c).val.sval.sval;
        (!s.is_null()).then(|| std::ffi::CStr::from_ptr(s).to_string_lossy().into_owned())
    }
}

/// The token carried to this session (a worker's) by a SET statement of this transaction, if
/// any.
pub fn carried() -> Option<String> {
    if SET_IN.with(|s| s.get()) != lxid() {
        return None;
    }
    crate::gucs::CARRIER
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
}

// ------------------------------------------------------------------------------------------
// Assertions: pg_tenancy's own work carried to the workers.
//
// A binding that has no token (today: `decommission_tenant()`'s deletion of one tenant's rows
// from one table) is carried as an assertion that the coordinator signs with the platform's
// Ed25519 certificate key (`src/lifecycle/certificate.rs`, a secret only the catalog's owner
// reads; its public half is in the reference table `tenancy.certificate_key` on every node):
// `tenancy-assertion.v1.<key id>.<payload>.<signature>`, the payload and signature in
// unpadded base64url. The signed bytes are a fixed context line followed by the payload (JSON),
// so that no deletion certificate (signed bytes start with `{`) is ever an assertion, nor the
// reverse. A worker acts on one only after verifying it, for its purpose and nothing else, and
// only for `ASSERTION_LIFETIME_SECS` after it was signed: read from a worker's log or activity,
// it is no use to anyone later.

/// The prefix of a carried assertion (a token never starts so).
const ASSERTION: &str = "tenancy-assertion.v1.";
/// The bytes an assertion's signature covers start with this line.
const ASSERTION_CONTEXT: &[u8] = b"pg_tenancy carried assertion v1\n";
/// How long after signing a worker accepts an assertion (seconds, either way for clock skew).
const ASSERTION_LIFETIME_SECS: i64 = 60;

/// What a verified assertion lets a worker do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assertion {
    /// Delete (and read) `tenant`'s rows of `table` (a name as regclass prints it).
    Decommission { tenant: uuid::Uuid, table: String },
    /// Remove a prefix of `tenant`'s audit trail for retention (`audit_purge`): the trail's
    /// append-only triggers on the worker let its deletions through, for that tenant's records
    /// only.
    Purge { tenant: uuid::Uuid },
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The signed bytes of `payload`.
fn assertion_message(payload: &[u8]) -> Vec<u8> {
    let mut m = ASSERTION_CONTEXT.to_vec();
    m.extend_from_slice(payload);
    m
}

/// An assertion of `what`, signed by `sign` (which returns the key id and the signature of the
/// bytes it is given).
pub fn assertion(what: &Assertion, sign: impl FnOnce(&[u8]) -> (String, Vec<u8>)) -> String {
    use base64::Engine;
    let payload = match what {
        Assertion::Decommission { tenant, table } => serde_json::json!({
            "purpose": "decommission",
            "tenant": tenant.to_string(),
            "table": table,
            "iat": unix_now(),
        }),
        Assertion::Purge { tenant } => serde_json::json!({
            "purpose": "purge",
            "tenant": tenant.to_string(),
            "iat": unix_now(),
        }),
    }
    .to_string();
    let (key_id, signature) = sign(&assertion_message(payload.as_bytes()));
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{ASSERTION}{key_id}.{}.{}",
        b64.encode(payload.as_bytes()),
        b64.encode(signature)
    )
}

/// Refuse an adopted assertion once it has expired (checked at every use, not only when it was
/// adopted: a transaction on a worker outlives no assertion).
pub fn refuse_expired(expires: i64) {
    if unix_now() > expires {
        errors::Refusal::new(
            errors::INVALID_AUTHORIZATION,
            "the assertion carried from the Citus coordinator is refused: expired",
            "Assertions are made by pg_tenancy on the coordinator for its own work and expire within a minute.",
        )
        .code("assertion_refused")
        .raise()
    }
}

/// Whether a carried value is an assertion (not a token).
pub fn is_assertion(value: &str) -> bool {
    value.starts_with(ASSERTION)
}

/// Verify a carried assertion: signed by a certificate key of this cluster, within its
/// lifetime, for a purpose pg_tenancy knows. Refused with 28000 otherwise. Returns what it
/// asserts and when it expires (Unix seconds).
pub fn verify_assertion(value: &str) -> (Assertion, i64) {
    let refuse = |why: &str| -> ! {
        errors::Refusal::new(
            errors::INVALID_AUTHORIZATION,
            format!("the assertion carried from the Citus coordinator is refused: {why}"),
            "Assertions are made by pg_tenancy on the coordinator for its own work; nothing else sets tenancy.carrier to one.",
        )
        .code("assertion_refused")
        .raise()
    };
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let rest = value.strip_prefix(ASSERTION).unwrap_or_default();
    let mut parts = rest.splitn(3, '.');
    let (Some(key_id), Some(payload), Some(signature)) = (parts.next(), parts.next(), parts.next())
    else {
        refuse("malformed")
    };
    let (Ok(payload), Ok(signature)) = (b64.decode(payload), b64.decode(signature)) else {
        refuse("malformed")
    };
    let public: Option<Vec<u8>> = crate::catalog::owner_rows(
        "tenancy.certificate_key",
        "SELECT public_key FROM tenancy.certificate_key WHERE key_id = $1",
        &[key_id.into()],
        |r| r.get::<Vec<u8>>(1).map(Option::unwrap_or_default),
    )
    .into_iter()
    .next();
    let key = public
        .and_then(|p| <[u8; 32]>::try_from(p).ok())
        .and_then(|p| ed25519_dalek::VerifyingKey::from_bytes(&p).ok())
        .unwrap_or_else(|| refuse("signed by no certificate key of this cluster"));
    let signature = <[u8; 64]>::try_from(signature.as_slice())
        .map(|s| ed25519_dalek::Signature::from_bytes(&s))
        .unwrap_or_else(|_| refuse("malformed"));
    if key
        .verify_strict(&assertion_message(&payload), &signature)
        .is_err()
    {
        refuse("bad signature");
    }
    let claims: serde_json::Value =
        serde_json::from_slice(&payload).unwrap_or_else(|_| refuse("malformed"));
    let iat = claims["iat"].as_i64().unwrap_or(i64::MIN);
    if (unix_now() - iat).abs() > ASSERTION_LIFETIME_SECS {
        refuse("expired");
    }
    let tenant = || {
        claims["tenant"]
            .as_str()
            .and_then(|t| uuid::Uuid::parse_str(t).ok())
            .unwrap_or_else(|| refuse("malformed"))
    };
    match claims["purpose"].as_str() {
        Some("purge") => (
            Assertion::Purge { tenant: tenant() },
            iat + ASSERTION_LIFETIME_SECS,
        ),
        Some("decommission") => {
            let tenant = tenant();
            let table = claims["table"]
                .as_str()
                .unwrap_or_else(|| refuse("malformed"))
                .to_string();
            (
                Assertion::Decommission { tenant, table },
                iat + ASSERTION_LIFETIME_SECS,
            )
        }
        _ => refuse("unknown purpose"),
    }
}

/// Carry `assertion` to the workers for what follows in this transaction (pg_tenancy's own
/// work; also outside a transaction block, inside the function doing it, where Citus carries a
/// SET LOCAL as well). Nothing without Citus.
pub fn send_assertion(assertion: &str) {
    if !active() {
        return;
    }
    set_local(assertion);
    SENT.with(|s| *s.borrow_mut() = None);
}

/// End a carried assertion.
pub fn end_assertion() {
    if active() {
        set_local("");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
    }

    #[test]
    fn an_assertion_is_not_a_token_and_says_what_it_signs() {
        use ed25519_dalek::Signer;
        let what = Assertion::Decommission {
            tenant: uuid::Uuid::nil(),
            table: "public.docs".into(),
        };
        let mut signed = Vec::new();
        let a = assertion(&what, |m| {
            signed = m.to_vec();
            ("k1".into(), key().sign(m).to_bytes().to_vec())
        });
        assert!(is_assertion(&a));
        assert!(!is_assertion("eyJhbGciOiJIUzI1NiJ9.e30.x"));
        // The signed bytes start with the context line, never with a certificate's `{`.
        assert!(signed.starts_with(ASSERTION_CONTEXT));
        assert!(a.starts_with("tenancy-assertion.v1.k1."));
    }

    #[test]
    fn a_purge_assertion_names_its_purpose_and_tenant_only() {
        use base64::Engine;
        use ed25519_dalek::Signer;
        let tenant = uuid::Uuid::from_u128(42);
        let a = assertion(&Assertion::Purge { tenant }, |m| {
            ("k1".into(), key().sign(m).to_bytes().to_vec())
        });
        let payload = a
            .strip_prefix("tenancy-assertion.v1.k1.")
            .and_then(|rest| rest.split('.').next())
            .unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["purpose"], "purge");
        assert_eq!(claims["tenant"], tenant.to_string());
        assert!(claims.get("table").is_none());
    }
}
