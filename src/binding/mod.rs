//! Session binding: which tenant (and which end user, with which tenant roles) this backend acts
//! for.
//!
//! The binding lives only in this backend's memory. It is set by `tenancy.bind()` after a token's
//! signature is verified, by a role mapping of the login role, and by nothing else: no GUC holds
//! it, so SET, set_config(), RESET, ALTER ROLE/DATABASE SET, function SET clauses, connection
//! options and SET ROLE cannot touch it. A transaction-scoped binding is dropped by the
//! transaction callback at COMMIT, ROLLBACK or PREPARE; a session-scoped one by `unbind()`,
//! `DISCARD ALL` (utility hook), disconnect, or its token's expiry, checked on every use.
//!
//! Policies read the binding through `tenancy.current_tenant()` wrapped in a scalar subquery, so
//! it is evaluated once per statement (an InitPlan). The functions are PARALLEL RESTRICTED: the
//! leader evaluates the InitPlan and passes its value to parallel workers as a parameter.

pub mod carrier;
pub mod keys;
pub(crate) mod memo;
pub mod token;

use crate::catalog::{self, TenantRow};
use crate::errors::{
    self, Refusal, INSUFFICIENT_PRIVILEGE, INVALID_AUTHORIZATION, INVALID_PARAMETER,
};
use crate::gucs;
use memo::{Tracked, TrackedCell};
use pgrx::pg_sys;
use pgrx::prelude::*;
use sha2::{Digest, Sha256};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Transaction,
    Session,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::Transaction => "transaction",
            Scope::Session => "session",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Token {
        kid: String,
        claim_roles: Option<Vec<String>>,
        /// The token's `iat` and `jti`, checked against revocations on every revalidation.
        iat: Option<i64>,
        jti: Option<String>,
        /// Whether the subject held a membership when bound: losing its last one cuts the
        /// binding, whatever the tenant's `default_roles`.
        member: bool,
        /// The token itself, carried to Citus workers (`carrier.rs`).
        carried: carrier::CarriedToken,
    },
    Mapping {
        role: pg_sys::Oid,
    },
    /// A platform operator inside a tenant admin's support grant (tenancy.enter_support).
    Support {
        operator: pg_sys::Oid,
        grant_id: i64,
    },
    /// pg_tenancy's own deletion of a tenant's rows from one protected table (and its
    /// partitions) during tenancy.decommission_tenant: select and delete on that table only.
    Decommission {
        table: pg_sys::Oid,
    },
}

#[derive(Debug, Clone)]
pub struct Binding {
    pub tenant: Uuid,
    pub slug: String,
    pub subject: Option<String>,
    pub roles: Vec<String>,
    pub expires_at: Option<i64>,
    pub scope: Scope,
    pub source: Source,
    /// For support bindings: the privileges of the grant (tenant roles do not apply).
    pub support_privileges: Option<Vec<String>>,
    /// The tenant's grants to its roles ([`catalog::privileges`]), kept with the binding so
    /// that a statement's privilege checks look nothing up; refreshed with the roles.
    pub privileges: Rc<Vec<catalog::Privilege>>,
    /// The tenant's region and the signing key's `not_after`, as last validated: checked on
    /// every statement, since the server's region (a reload) and the clock change without any
    /// change of pg_tenancy's catalog.
    region: Option<String>,
    key_not_after: Option<i64>,
    /// Catalog generation this binding was last validated at.
    generation: u64,
}

thread_local! {
    /// The explicit binding made by bind().
    static BINDING: Tracked<Option<Binding>> = const { Tracked::new(None) };
    /// The session-scoped bindings made in the running transaction, in order: the
    /// subtransaction each was made in and the binding it replaced ([`install`]).
    static MADE: RefCell<Vec<(pg_sys::SubTransactionId, Option<Binding>)>> = const { RefCell::new(Vec::new()) };
    /// A binding pg_tenancy sets for the length of one of its own statements (decommission's
    /// deletes, run as the table's owner with row security forced); it takes precedence over
    /// every other binding and nothing can bind while it is set.
    static INTERNAL: Tracked<Option<Binding>> = const { Tracked::new(None) };
    /// The binding derived from the login role's mapping, cached per catalog generation.
    static MAPPED: Tracked<Option<(u64, pg_sys::Oid, Option<Binding>)>> = const { Tracked::new(None) };
    /// The tenant this transaction has been bound to: another tenant cannot be bound before it ends.
    static TXN_TENANT: Cell<Option<Uuid>> = const { Cell::new(None) };
    /// Cursors declared while a binding was in force (names; the closed ones are dropped
    /// whenever the list is read): tenancy.unbind() refuses while one is open.
    static BOUND_CURSORS: RefCell<Vec<(std::ffi::CString, Uuid)>> = const { RefCell::new(Vec::new()) };
    /// Named portals (cursors opened by PL/pgSQL or SPI, by the protocol's Bind, by DECLARE)
    /// whose query started while a binding was in force, in this transaction (names; the closed
    /// ones are dropped whenever the list is read). See [`portals_at_query_start`].
    static BOUND_PORTALS: RefCell<Vec<std::ffi::CString>> = const { RefCell::new(Vec::new()) };
    /// Cursors WITH HOLD declared while no binding was in force (names; the closed ones are
    /// dropped whenever the list is read): no binding is made while one is open.
    static HELD_CURSORS: RefCell<Vec<std::ffi::CString>> = const { RefCell::new(Vec::new()) };
    /// Whether the cursors WITH HOLD open before the library loaded were added to HELD_CURSORS.
    static HELD_ADOPTED: Cell<bool> = const { Cell::new(false) };
    /// The subject this transaction was bound for (a second token of the same tenant for
    /// another subject is refused like another tenant), and whether a statement has used the
    /// binding (until then, unbind() frees the transaction for another bind).
    static TXN_SUBJECT: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
    static TXN_USED: Cell<bool> = const { Cell::new(false) };
    /// Whether the tenant's resource settings were applied in this transaction.
    static LIMITS_APPLIED: Cell<bool> = const { Cell::new(false) };
    /// Verified tokens and what their last bind derived from the catalog, keyed by SHA-256 of
    /// the token text; at most `tenancy.token_cache_size` entries, the least recently used
    /// going first (None: the cache is off, or nothing was cached yet).
    static TOKEN_CACHE: RefCell<Option<lru::LruCache<[u8; 32], Rc<CachedToken>>>> =
        const { RefCell::new(None) };
    /// Tokens this backend has verified (not found in the cache).
    static TOKENS_VERIFIED: Cell<usize> = const { Cell::new(0) };
}

/// The token cache's entries and bound, for tenancy.cache_stats().
fn token_cache_counters() -> Vec<(&'static str, usize)> {
    let len = TOKEN_CACHE.with(|c| c.borrow().as_ref().map_or(0, |c| c.len()));
    let bound = gucs::TOKEN_CACHE_SIZE.get().max(0) as usize;
    vec![
        ("tokens_cached", len),
        ("tokens_capacity", bound),
        ("tokens_verified", TOKENS_VERIFIED.with(|v| v.get())),
    ]
}

/// A verified token, and what binding it last produced.
struct CachedToken {
    claims: token::VerifiedClaims,
    prepared: RefCell<Option<Prepared>>,
}

/// What `bind()` derived from a token's claims and the catalog (the tenant, the key, the
/// mapping check, the effective roles) and the binding's description as finished jsonb. Valid
/// for one catalog generation, login role and scope: anything that could change the outcome
/// (a suspended tenant, a revoked key or grant, a removed member or mapping) bumps the
/// generation. What depends on the clock or on server settings (the token's and the key's
/// expiry, the tenant's region against `tenancy.region`) is checked again on every bind.
struct Prepared {
    generation: u64,
    session_role: pg_sys::Oid,
    scope: Scope,
    /// Its status and region are checked on every bind, its settings applied; after a catalog
    /// change this may be an older copy than the catalog cache's until the next bind replaces
    /// it (one row per entry at most).
    tenant: Rc<TenantRow>,
    /// The key's `not_after`: the one property of the key that changes with the clock rather
    /// than the catalog (only this is kept, not the key: an entry prepared before a catalog
    /// change would otherwise keep an old copy of the key alive).
    key_not_after: Option<i64>,
    /// The subject's effective roles in the tenant, and whether it holds a membership.
    roles: Vec<String>,
    member: bool,
    privileges: Rc<Vec<catalog::Privilege>>,
    /// The binding's description (a `Binding` is built again on each bind from the claims and
    /// these: a few small copies, where keeping one here would double the entry's size).
    described: JsonbBytes,
}

impl Prepared {
    fn binding(&self, claims: &token::VerifiedClaims) -> Binding {
        Binding {
            tenant: self.tenant.id,
            slug: self.tenant.slug.clone(),
            subject: Some(claims.subject.clone()),
            roles: self.roles.clone(),
            expires_at: Some(claims.exp),
            scope: self.scope,
            source: Source::Token {
                kid: claims.kid.clone(),
                claim_roles: claims.roles.clone(),
                iat: claims.iat,
                jti: claims.jti.clone(),
                member: self.member,
                carried: carrier::CarriedToken::default(),
            },
            support_privileges: None,
            privileges: self.privileges.clone(),
            region: self.tenant.region.clone(),
            key_not_after: self.key_not_after,
            generation: self.generation,
        }
    }
}

/// A jsonb value as its finished varlena bytes: returned without building it again.
#[derive(Clone)]
pub struct JsonbBytes(Rc<[u8]>);

impl JsonbBytes {
    /// Take a palloc'd, untoasted jsonb (copied, then freed).
    ///
    /// # Safety
    /// `jsonb` must be a complete varlena that nothing else refers to.
    unsafe fn of(jsonb: *mut pg_sys::Jsonb) -> JsonbBytes {
        // SAFETY: `jsonb` is a complete, untoasted varlena (this function's contract), so its
        // header gives the size of the bytes copied; nothing else refers to it, so it is freed
        // once, after the copy.
        unsafe {
            let ptr = jsonb.cast::<pg_sys::varlena>();
            let bytes = std::slice::from_raw_parts(ptr as *const u8, pgrx::varsize_any(ptr));
            let copy = JsonbBytes(Rc::from(bytes));
            pg_sys::pfree(ptr.cast());
            copy
        }
    }
}

impl IntoDatum for JsonbBytes {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        // SAFETY: a palloc'd copy of a complete jsonb varlena.
        unsafe {
            let p = pg_sys::palloc(self.0.len()) as *mut u8;
            std::ptr::copy_nonoverlapping(self.0.as_ptr(), p, self.0.len());
            Some(pg_sys::Datum::from(p))
        }
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

// SAFETY: returns the datum `into_datum` built, a palloc'd jsonb in the function's context.
unsafe impl pgrx::callconv::BoxRet for JsonbBytes {
    /// The jsonb as the function's result.
    ///
    /// # Safety
    /// As [`pgrx::callconv::BoxRet::box_into`]: `fcinfo` is the call being returned from.
    unsafe fn box_into<'fcx>(
        self,
        fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
    ) -> pgrx::datum::Datum<'fcx> {
        match self.into_datum() {
            // SAFETY: a palloc'd jsonb, in the function's memory context, is a valid result of
            // a function returning jsonb, as this type says it is.
            Some(datum) => unsafe { fcinfo.return_raw_datum(datum) },
            None => fcinfo.return_null(),
        }
    }
}

pgrx::impl_sql_translatable!(JsonbBytes, "jsonb");

pub fn init() {
    catalog::report_cache(token_cache_counters);
    // The trail's append-only triggers on a Citus worker read a purge carried from the
    // coordinator before anything else of the transaction has read the binding.
    crate::citus::trail::set_carrier_adopter(adopt_carrier);
    crate::pg::hooks::at_transaction_event(xact_callback);
    crate::pg::hooks::at_subtransaction_event(subxact_callback);
    // SAFETY: called once from _PG_init, before any statement runs; the callbacks stay valid
    // for the backend's life.
    unsafe {
        for cache in [
            pg_sys::SysCacheIdentifier::AUTHOID,
            pg_sys::SysCacheIdentifier::AUTHMEMMEMROLE,
        ] {
            pg_sys::CacheRegisterSyscacheCallback(
                cache as std::ffi::c_int,
                Some(roles_changed),
                pg_sys::Datum::from(0),
            );
        }
    }
    crate::pg::hooks::before_utility(before_utility);
    crate::pg::executor_end::before_later_runs(before_a_later_run, bound_now);
    crate::pg::hooks::after_utility(after_utility);
    crate::pg::binding_param::at_query_start(carry_at_query_start);
    crate::pg::binding_param::at_query_start(portals_at_query_start);
    // And before planning: the planner runs the IMMUTABLE functions it folds, which may FETCH
    // (a reviewer's pass read the stored rows so before the statement's start refused it).
    crate::pg::binding_param::at_plan_start(check_again_while_bound_portals_are_open);
    crate::authz::provide_acting(crate::authz::ActingProvider {
        checked: || current_if_bound().as_ref().map(acting),
        unchecked: || peek().as_ref().map(acting),
        tenant: statement_tenant,
        transaction_subject,
    });
}

/// The subject the running transaction acts for, fixed at its first use of a binding (the inner
/// None: a binding without one, a role mapping's), or None when it has used none, or while
/// pg_tenancy's own internal binding is in force.
fn transaction_subject() -> Option<Option<String>> {
    if INTERNAL.with(|i| i.borrow().is_some()) || !TXN_USED.with(|u| u.get()) {
        return None;
    }
    TXN_SUBJECT.with(|t| t.borrow().clone())
}

/// The tenant the session's statements act for, as it stands (a token or support binding, or
/// the login role's mapping; none during pg_tenancy's own internal binding): for telemetry.
fn statement_tenant() -> Option<Uuid> {
    if INTERNAL.with(|i| i.borrow().is_some()) {
        return None;
    }
    current_binding_tenant().or_else(|| {
        MAPPED.with(|m| {
            m.borrow()
                .as_ref()
                .and_then(|(_, _, b)| b.as_ref().map(|b| b.tenant))
        })
    })
}

/// What authorization decisions below this pillar need of a binding.
fn acting(b: &Binding) -> crate::authz::Acting {
    crate::authz::Acting {
        tenant: b.tenant,
        subject: b.subject.clone(),
        roles: b.roles.clone(),
        support: b.support_privileges.is_some(),
    }
}

/// The transaction callback: a transaction-scoped binding ends with its transaction.
fn xact_callback(event: pg_sys::XactEvent::Type) {
    use pg_sys::XactEvent::*;
    if event == XACT_EVENT_PRE_PREPARE && MADE.with(|m| !m.borrow().is_empty()) {
        // A prepared transaction's fate is decided later, perhaps by a ROLLBACK PREPARED of
        // this session's own: a session-scoped binding made in it would outlive what it was
        // made with (enter_support's record) either way.
        errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "cannot PREPARE a transaction that made a session-scoped binding",
            "Bind for the session (or enter support) in a transaction of its own, committed.",
        );
    }
    if matches!(
        event,
        XACT_EVENT_COMMIT
            | XACT_EVENT_ABORT
            | XACT_EVENT_PARALLEL_COMMIT
            | XACT_EVENT_PARALLEL_ABORT
            | XACT_EVENT_PREPARE
    ) {
        if matches!(event, XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT) {
            undo_made(0);
        }
        MADE.with(|m| m.borrow_mut().clear());
        // Portals without HOLD end with their transaction (WITH HOLD is refused under a
        // binding).
        BOUND_PORTALS.with(|b| b.borrow_mut().clear());
        // The binding module's tracked state is written only where it changes: a session's
        // binding validated in one transaction stays validated in the next (memo.rs).
        if BINDING.with(|b| {
            b.borrow()
                .as_ref()
                .is_some_and(|x| x.scope == Scope::Transaction)
        }) {
            BINDING.with(|b| *b.borrow_mut() = None);
        }
        TXN_TENANT.with(|t| t.set(None));
        TXN_SUBJECT.with(|t| *t.borrow_mut() = None);
        TXN_USED.with(|u| u.set(false));
        LIMITS_APPLIED.with(|l| l.set(false));
        if INTERNAL.with(|i| i.borrow().is_some()) {
            INTERNAL.with(|i| *i.borrow_mut() = None);
        }
        if ADOPTED_ASSERTION.with(|a| a.borrow().is_some()) {
            ADOPTED_ASSERTION.with(|a| *a.borrow_mut() = None);
        }
        // Unwinding clears it; should anything ever skip the unwinding, validation resumes
        // with the next transaction all the same.
        IN_WITH_CURRENT.with(|c| c.set(false));
        // A prepared transaction's writes are published as committed: nothing is published
        // at COMMIT PREPARED (another session, perhaps), and counting them at PREPARE keeps a
        // tenant from hiding its writes behind two-phase commit; a ROLLBACK PREPARED leaves
        // them counted, an overcount the reference states.
        crate::telemetry::end_of_transaction(
            event == XACT_EVENT_COMMIT || event == XACT_EVENT_PREPARE,
            statement_tenant(),
        );
    }
}

/// Before a utility statement: a cursor WITH HOLD would outlive the binding in force (any:
/// its rows are stored at COMMIT, and the binding may end or change before they are read);
/// FETCH and MOVE read rows of a cursor whose plan read the binding when it was opened, so the
/// binding is checked again first (a suspension or revocation since then ends the cursor too),
/// and refused once the transaction's binding has been ended; a cursor declared while bound is
/// remembered, so that tenancy.unbind() refuses while it is open; one WITH HOLD declared
/// unbound is remembered too, so that no binding is made while it is open (its query would run
/// at COMMIT under it).
fn before_utility(stmt: *mut pg_sys::Node) {
    // SAFETY: `stmt` is the statement's parse tree (or null); its tag is read before the node
    // is used as the type it says.
    unsafe {
        if stmt.is_null() {
            return;
        }
        let declared = ((*stmt).type_ == pg_sys::NodeTag::T_DeclareCursorStmt).then(|| {
            (*(stmt as *mut pg_sys::DeclareCursorStmt)).options & pg_sys::CURSOR_OPT_HOLD as i32
                != 0
        });
        if let Some(hold) = declared {
            // The binding in force for this statement, a role mapping's included (checked: a
            // binding that has ended raises here, as it would at the cursor's first read).
            let tenant = if INTERNAL.with(|i| i.borrow().is_some()) {
                None
            } else {
                with_current(|b| b.map(|b| b.tenant))
            };
            if hold
                && (tenant.is_some()
                    || INTERNAL.with(|i| i.borrow().is_some())
                    || ADOPTED_ASSERTION.with(|a| a.borrow().is_some())
                    || carrier::carried().is_some())
            {
                // Its rows would be stored at COMMIT and stay readable on the connection after
                // the binding ended or changed: by PL/pgSQL's FETCH and the protocol's Execute,
                // which read stored rows without a statement pg_tenancy sees; behind a pooler,
                // by the next client. (An attacker's pass read tenant B's rows so, bound to A.)
                errors::raise(
                    pgrx::PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    "a cursor WITH HOLD would outlive the tenant binding in force",
                    "Fetch the rows before COMMIT with a cursor without HOLD; its rows belong to the transaction that read them.",
                );
            }
            // The cursor is remembered once it is declared (after_utility): a DECLARE that
            // fails (its name taken by an open cursor) must not make pg_tenancy forget the
            // open one (a reviewer's bypass: a failed DECLARE dropped a held cursor from the
            // list, and bind() then let its query run at COMMIT under the binding).
        }
        if (*stmt).type_ == pg_sys::NodeTag::T_VariableSetStmt {
            let own = BINDING.with(|b| {
                b.borrow()
                    .as_ref()
                    .map(|b| (carrier::token_of(b), adopted_token().is_some()))
            });
            carrier::check_client_set(stmt as *mut pg_sys::VariableSetStmt, own);
        }
        if !matches!(
            (*stmt).type_,
            pg_sys::NodeTag::T_TransactionStmt
                | pg_sys::NodeTag::T_ClosePortalStmt
                | pg_sys::NodeTag::T_DiscardStmt
                | pg_sys::NodeTag::T_FetchStmt
        ) {
            // A DO block's or a procedure's PL/pgSQL may FETCH from a portal whose rows are
            // stored, with no query of its own, and so may a function any utility statement
            // runs without the executor (a column's default in COPY FROM, an expression an
            // ALTER TABLE rewrites with; a reviewer's pass): see portals_at_query_start.
            // Ending the transaction, closing cursors and FETCH (checked below) stay open.
            check_again_while_bound_portals_are_open();
        }
        if (*stmt).type_ == pg_sys::NodeTag::T_FetchStmt {
            let name = (*(stmt as *mut pg_sys::FetchStmt)).portalname;
            before_reading_a_cursor(
                (!name.is_null()).then(|| std::ffi::CStr::from_ptr(name).to_owned()),
            );
        }
    }
}

/// A cursor is read (FETCH or MOVE from SQL, which reads a WITH HOLD cursor's stored rows too;
/// and every later run of a statement's plan: a cursor from PL/pgSQL or the protocol's Execute
/// of a portal, `pg::executor_end::before_later_runs`): its plan read the binding when it
/// started, so the binding is checked again first (a suspension or revocation since then ends
/// the cursor too); refused once the transaction's binding has been ended, and for a cursor
/// declared while bound (`name`) once no binding is in force.
fn before_reading_a_cursor(name: Option<std::ffi::CString>) {
    let declared_for = name.and_then(|n| {
        BOUND_CURSORS
            .with(|c| c.borrow().iter().find(|(b, _)| *b == n).map(|(_, t)| *t))
            .filter(|_| portal_open(&n))
    });
    if BINDING.with(|b| b.borrow().is_some()) {
        let now = with_current(|b| b.map(|b| b.tenant));
        if let (Some(declared), Some(now)) = (declared_for, now) {
            if declared != now {
                // Its rows (a WITH HOLD cursor's, kept at a COMMIT) are another tenant's.
                errors::raise(
                    INSUFFICIENT_PRIVILEGE,
                    "this cursor was declared for another tenant than the one bound now",
                    "Close cursors before binding another tenant; DISCARD ALL closes them all.",
                );
            }
        }
        return;
    }
    if (TXN_USED.with(|u| u.get()) || declared_for.is_some()) && !with_current(|b| b.is_some()) {
        // The transaction read as a tenant and its binding has been ended since, or the
        // cursor was declared under a binding that has ended: it holds that tenant's plan
        // (or rows) and is not read unbound.
        no_tenant_bound_on(None);
    }
}

/// Before a later run of a statement's plan (`pg::executor_end::before_later_runs`): a
/// statement started unbound read no tenant's rows; one started bound is read under a binding
/// that still holds, checked again now, and not once the binding has ended.
fn before_a_later_run(bound_at_start: bool) {
    if !bound_at_start {
        return;
    }
    // The binding is checked against what has changed until now, not at the top-level
    // statement's start only (`accept_invalidations_once_per_statement`): a PL/pgSQL loop over
    // a query, whose body ran no query of its own, fetched the rest of a suspended tenant's
    // rows seconds after the suspension committed, and a procedure's COMMIT filled its loop's
    // portal with them (an attacker's pass).
    // SAFETY: between two runs of a started statement, inside its transaction, where
    // PostgreSQL itself processes invalidations whenever it takes a lock.
    unsafe { pg_sys::AcceptInvalidationMessages() };
    if BINDING.with(|b| b.borrow().is_some()) {
        with_current(|_| ());
    } else if !with_current(|b| b.is_some()) {
        no_tenant_bound_on(None);
    }
}

/// Whether a binding is in force now, as far as this backend knows without reading anything
/// (an explicit, internal or role-mapped one): read at every statement's start.
fn bound_now() -> bool {
    BINDING.with(|b| b.borrow().is_some())
        || INTERNAL.with(|i| i.borrow().is_some())
        || MAPPED.with(|m| matches!(&*m.borrow(), Some((_, _, Some(_)))))
}

/// Whether a portal (a cursor) of this name is open.
/// Whether the cursor `name` is open and WITH HOLD.
fn held_open(name: &std::ffi::CStr) -> bool {
    // SAFETY: as in portal_open; a portal found is valid until dropped, and only its
    // cursorOptions field is read.
    unsafe {
        let p = pg_sys::GetPortalByName(name.as_ptr());
        !p.is_null() && (*p).cursorOptions & pg_sys::CURSOR_OPT_HOLD as i32 != 0
    }
}

/// Before a binding is made (`what`): refused while a cursor WITH HOLD declared unbound is
/// open. Its query runs at the COMMIT of the transaction that declared it, under the binding
/// in force then, and its stored rows would be read after that binding ends or changes.
fn refuse_while_held_cursors_open(what: &str) {
    // Cursors WITH HOLD declared before this library was loaded in the session (no hook saw
    // their DECLARE): read once, at the first binding after the load. Without the library
    // preloaded, a backend's first transaction declared one unbound, then bound, and a later
    // transaction bound to another tenant fetched the rows stored at the first one's COMMIT
    // (an attacker's pass).
    if !HELD_ADOPTED.with(|a| a.replace(true)) {
        let names: Vec<String> = Spi::connect(|c| {
            let t = c.select(
                "SELECT name::pg_catalog.text FROM pg_catalog.pg_cursors WHERE is_holdable",
                None,
                &[],
            )?;
            let mut out = Vec::new();
            for r in t {
                if let Some(n) = r.get::<String>(1)? {
                    out.push(n);
                }
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
        .unwrap_or_else(|e| pgrx::error!("pg_tenancy: reading the session's cursors failed: {e}"));
        HELD_CURSORS.with(|c| {
            let mut c = c.borrow_mut();
            for n in names {
                if let Ok(n) = std::ffi::CString::new(n) {
                    if !c.contains(&n) {
                        c.push(n);
                    }
                }
            }
        });
    }
    let open: Vec<String> = HELD_CURSORS.with(|c| {
        let mut c = c.borrow_mut();
        c.retain(|n| held_open(n));
        c.iter().map(|n| n.to_string_lossy().into_owned()).collect()
    });
    if !open.is_empty() {
        errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            format!(
                "{what} with cursors WITH HOLD open: {}",
                errors::clean(&open.join(", "))
            ),
            "Close them first (CLOSE name, or CLOSE ALL): a cursor WITH HOLD stores its rows at COMMIT, under the binding made now, and they would outlive it.",
        );
    }
}

fn portal_open(name: &std::ffi::CStr) -> bool {
    // SAFETY: GetPortalByName looks the NUL-terminated name up in the backend's portal table
    // (a hash lookup; it does not raise) and returns null when there is none.
    !unsafe { pg_sys::GetPortalByName(name.as_ptr()) }.is_null()
}

/// At the start of every query (in the leader; not for the queries pg_tenancy's own checks
/// run): while a named portal that started under a binding is open, the binding is checked
/// again ([`check_again_while_bound_portals_are_open`]); and a named portal whose query starts
/// now under a binding is remembered.
///
/// A portal whose query has a data-modifying WITH or RETURNING (or is an EXPLAIN ANALYZE) has
/// its whole result computed at its first read and stored; PL/pgSQL's later FETCHes read the
/// stored rows with no query started, which the later-run check of `pg::executor_end` never
/// sees. An attacker's pass read its tenant's rows so after the tenant's suspension had
/// committed, and after `tenancy.unbind()` and a `revoke_subject` with nothing bound (the
/// protocol's Execute of such a portal is documented as not defended: it starts no statement
/// pg_tenancy sees). So every statement that could read one (a query, a DO block, a CALL)
/// checks the binding first while one is open, and unbind() refuses while one is open.
fn portals_at_query_start(_writes: bool) {
    check_again_while_bound_portals_are_open();
    // SAFETY: ActivePortal is PostgreSQL's global of the portal being run (null outside one),
    // read on the backend's only thread; a portal's name is a NUL-terminated string that lives
    // as long as the portal, copied at once.
    let name = unsafe {
        let p = pg_sys::ActivePortal;
        if p.is_null() || (*p).name.is_null() {
            return;
        }
        std::ffi::CStr::from_ptr((*p).name)
    };
    // The unnamed portal is the statement's own (simple query, or the protocol's unnamed one),
    // read by no later statement.
    if name.to_bytes().is_empty() || !bound_now() {
        return;
    }
    BOUND_PORTALS.with(|b| {
        let mut b = b.borrow_mut();
        if !b.iter().any(|n| n.as_c_str() == name) {
            b.push(name.to_owned());
        }
    });
}

/// While a named portal that started under a binding in this transaction is open: the binding
/// is checked again (a suspension or revocation committed since raises), and a transaction
/// whose binding has ended is refused ([`before_a_later_run`]).
fn check_again_while_bound_portals_are_open() {
    let open = BOUND_PORTALS.with(|b| {
        let mut b = b.borrow_mut();
        if b.is_empty() {
            return false;
        }
        b.retain(|n| portal_open(n));
        !b.is_empty()
    });
    if open {
        before_a_later_run(true);
    }
}

/// After a DECLARE that succeeded: the cursor is remembered, with the tenant bound (a role
/// mapping's included) when there is one, and as held when WITH HOLD (then declared unbound:
/// before_utility refused it otherwise). After DISCARD ALL: the session's binding goes too.
fn after_utility(stmt: *mut pg_sys::Node) {
    // SAFETY: as in before_utility.
    let declared = unsafe {
        (!stmt.is_null() && (*stmt).type_ == pg_sys::NodeTag::T_DeclareCursorStmt)
            .then(|| {
                let d = stmt as *mut pg_sys::DeclareCursorStmt;
                (!(*d).portalname.is_null()).then(|| {
                    (
                        (*d).options & pg_sys::CURSOR_OPT_HOLD as i32 != 0,
                        std::ffi::CStr::from_ptr((*d).portalname).to_owned(),
                    )
                })
            })
            .flatten()
    };
    if let Some((hold, name)) = declared {
        // The name was free (PostgreSQL refuses a DECLARE of an open cursor's name): an entry
        // under it is of a cursor closed since.
        let tenant = statement_tenant();
        BOUND_CURSORS.with(|c| {
            let mut c = c.borrow_mut();
            c.retain(|(n, _)| *n != name && portal_open(n));
            if let Some(t) = tenant {
                c.push((name.clone(), t));
            }
        });
        HELD_CURSORS.with(|c| {
            let mut c = c.borrow_mut();
            c.retain(|n| *n != name && held_open(n));
            if hold {
                c.push(name);
            }
        });
    }
    // SAFETY: as in before_utility.
    let discard_all = unsafe {
        !stmt.is_null()
            && (*stmt).type_ == pg_sys::NodeTag::T_DiscardStmt
            && (*(stmt as *mut pg_sys::DiscardStmt)).target == pg_sys::DiscardMode::DISCARD_ALL
    };
    // The verified-token cache stays: it holds signatures checked, not a binding, and every
    // entry is checked again against the catalog and the clock when it is used.
    if discard_all {
        BINDING.with(|b| *b.borrow_mut() = None);
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn in_parallel_worker() -> bool {
    // SAFETY: ParallelWorkerNumber is this process's own variable, read on its only thread.
    unsafe { pg_sys::ParallelWorkerNumber >= 0 }
}

fn fields(pairs: &[(&str, serde_json::Value)]) -> serde_json::Map<String, serde_json::Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// Refuse a bind: log the security event, raise. Never says which part of a signature was wrong.
#[track_caller]
fn refuse_bind(refusal: Refusal, tenant: Option<&str>) -> ! {
    let mut f = fields(&[]);
    if let Some(t) = tenant {
        f.insert("tenant".into(), t.into());
    }
    refusal.event("bind_refused", f).raise()
}

/// Refuse a bind whose tenant is known (the token's signature verified and its tenant claim
/// named this tenant): the security event is kept with the tenant's other events.
#[track_caller]
fn refuse_bind_in(refusal: Refusal, tenant: &TenantRow) -> ! {
    let f = fields(&[
        ("tenant", tenant.slug.clone().into()),
        ("tenant_id", tenant.id.to_string().into()),
    ]);
    refusal.event("bind_refused", f).raise()
}

/// A binding in force can no longer be used (revoked, suspended, expired key, region): the
/// session loses it, with a security event. Whatever the check's own SQLSTATE, losing a
/// binding one had is a privilege refusal (42501).
#[track_caller]
fn binding_ended(refusal: Refusal, tenant_slug: String, tenant: Uuid) -> ! {
    let code = refusal.code.unwrap_or("binding_revoked");
    crate::telemetry::revocation_noticed(tenant);
    Refusal {
        sqlstate: INSUFFICIENT_PRIVILEGE,
        ..refusal
    }
    .code(code)
    .event(
        "binding_revoked",
        fields(&[
            ("tenant", tenant_slug.into()),
            ("tenant_id", tenant.to_string().into()),
        ]),
    )
    .raise()
}

fn token_refusal(e: token::TokenError) -> ! {
    let hint = match e {
        token::TokenError::TooLarge(_) => "Tokens longer than tenancy.max_token_bytes are refused.",
        token::TokenError::MissingKid => "Sign tokens with a \"kid\" header naming a key registered with tenancy.add_key().",
        token::TokenError::BadSignature | token::TokenError::AlgorithmMismatch => {
            "Sign the token with the key registered for its \"kid\", using that key's algorithm."
        }
        token::TokenError::DuplicateMember => {
            "Each header parameter and claim may appear once (RFC 7519, section 4)."
        }
        token::TokenError::CriticalExtension => {
            "Issue tokens without a \"crit\" header: pg_tenancy supports no JWS extensions."
        }
        _ => "Pass a compact JWS: base64url(header).base64url(claims).base64url(signature), with claims tid, sub and exp.",
    };
    refuse_bind(
        Refusal::new(INVALID_AUTHORIZATION, e.message(), hint).code("token_invalid"),
        None,
    )
}

/// The effective roles of `subject` in `tenant`, and whether it is a member: its memberships,
/// or the tenant's `default_roles` setting when it has none (default: none, so a subject
/// without a membership binds but may touch no protected table); narrowed by the token's
/// `roles` claim when present. A token can never add a role.
fn effective_roles(
    tenant: &TenantRow,
    subject: &str,
    claim_roles: Option<&[String]>,
) -> (Vec<String>, bool) {
    let members = catalog::member_roles(tenant.id, subject);
    let member = !members.is_empty();
    let held: Vec<String> = if member {
        members.as_ref().clone()
    } else {
        match tenant.settings.get("default_roles") {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    };
    let roles = match claim_roles {
        Some(narrow) => held.into_iter().filter(|r| narrow.contains(r)).collect(),
        None => held,
    };
    (roles, member)
}

/// Check a tenant may be bound now: it exists, is active, and its region matches the server's.
fn check_tenant(tenant: &TenantRow) -> Result<(), Refusal> {
    if !tenant.is_active() {
        return Err(Refusal::new(INSUFFICIENT_PRIVILEGE,
            format!("tenant \"{}\" is {}", tenant.slug, tenant.status),
            "An operator can resume a suspended tenant with tenancy.resume_tenant(); decommissioned tenants cannot be bound.",
        ).code("tenant_unavailable"));
    }
    if let (Some(server), Some(region)) = (gucs::region(), tenant.region.as_ref()) {
        if &server != region {
            return Err(Refusal::new(INSUFFICIENT_PRIVILEGE,
                format!(
                    "tenant \"{}\" resides in region \"{region}\", and this server is in region \"{server}\"",
                    tenant.slug
                ),
                "Connect to a server of the tenant's region (data residency).",
            ).code("wrong_region"));
        }
    }
    Ok(())
}

/// Validate a binding against the current catalog: tenant still active and in region, key not
/// revoked or expired, token and subject not revoked, membership not lost, mapping still
/// present; recompute its roles. The binding is stamped with its tenant's generation read
/// before the catalog was, so an invalidation that arrives during the checks makes the next
/// statement check again.
fn revalidate(b: &mut Binding) -> Result<(), Refusal> {
    let generation = catalog::generation_of(b.tenant);
    let tenant = catalog::tenant_by_id(b.tenant).ok_or_else(|| {
        Refusal::new(
            INSUFFICIENT_PRIVILEGE,
            format!("tenant \"{}\" no longer exists", b.slug),
            "Bind again with a token of an existing tenant.",
        )
        .code("tenant_unavailable")
    })?;
    check_tenant(&tenant)?;
    match &b.source {
        Source::Token {
            kid,
            claim_roles,
            iat,
            jti,
            member,
            ..
        } => {
            let key = catalog::key(kid, crate::binding::token::decode_key);
            check_key(key.as_deref(), now(), tenant.id)?;
            b.key_not_after = key.as_ref().and_then(|k| k.not_after);
            let subject = b.subject.clone().unwrap_or_default();
            if let Some(why) = catalog::token_revocation(tenant.id, &subject, *iat, jti.as_deref())
            {
                return Err(
                    Refusal::new(INSUFFICIENT_PRIVILEGE, why, REVOKED_HINT).code("token_revoked")
                );
            }
            // A login role mapped to tenants may only bind those tenants, also after the
            // mapping changed (an attacker's pass kept a session binding to its token's tenant
            // after an operator confined its role to another one).
            let session_role = crate::authz::session_user();
            let maps = catalog::mappings(session_role);
            if !maps.is_empty() && !maps.iter().any(|m| m.tenant == tenant.id) {
                return Err(Refusal::new(
                    INSUFFICIENT_PRIVILEGE,
                    format!(
                        "role \"{}\" is mapped to other tenants and cannot stay bound to tenant \"{}\"",
                        crate::authz::role_name(session_role),
                        b.slug
                    ),
                    "Connect with a role mapped to this tenant, or unmap the role.",
                )
                .code("role_mapped_elsewhere"));
            }
            let (roles, still_member) = effective_roles(&tenant, &subject, claim_roles.as_deref());
            if *member && !still_member {
                return Err(Refusal::new(INSUFFICIENT_PRIVILEGE,
                    format!(
                        "subject \"{subject}\" is no longer a member of tenant \"{}\"",
                        b.slug
                    ),
                    "Its last membership was removed; a tenant admin can add it again with tenancy.add_member().",
                ).code("membership_removed"));
            }
            b.roles = roles;
        }
        Source::Support { operator, .. } => {
            let grant = catalog::support_grant(b.tenant, *operator).ok_or_else(|| {
                Refusal::new(
                    INSUFFICIENT_PRIVILEGE,
                    format!(
                        "the support grant of tenant \"{}\" has expired or was revoked",
                        b.slug
                    ),
                    "Ask a tenant admin for a new grant with tenancy.grant_support().",
                )
                .code("support_ended")
            })?;
            b.support_privileges = Some(grant.privileges.clone());
            b.expires_at = Some(grant.expires_at);
        }
        Source::Mapping { role } => {
            let maps = catalog::mappings(*role);
            let m = maps.iter().find(|m| m.tenant == b.tenant).ok_or_else(|| {
                Refusal::new(
                    INSUFFICIENT_PRIVILEGE,
                    format!(
                        "role \"{}\" is no longer mapped to tenant \"{}\"",
                        crate::authz::role_name(*role),
                        b.slug
                    ),
                    "An operator maps roles with tenancy.map_role().",
                )
                .code("mapping_removed")
            })?;
            b.roles = m.roles.clone();
        }
        Source::Decommission { .. } => {}
    }
    b.privileges = catalog::privileges(b.tenant);
    b.region = tenant.region.clone();
    b.generation = generation;
    Ok(())
}

/// What can end a binding with no change of pg_tenancy's catalog, checked on every statement:
/// its signing key passing its `not_after`, and the server's region (`tenancy.region`, changed
/// by a reload) no longer the tenant's.
fn still_in_force(b: &Binding, now: i64) -> Result<(), Refusal> {
    if let Source::Token { kid, .. } = &b.source {
        check_key_expiry(kid, b.key_not_after, now)?;
    }
    if let Some(region) = &b.region {
        if let Some(server) = gucs::region() {
            if &server != region {
                return Err(Refusal::new(INSUFFICIENT_PRIVILEGE,
                    format!(
                        "tenant \"{}\" resides in region \"{region}\", and this server is now in region \"{server}\"",
                        b.slug
                    ),
                    "Connect to a server of the tenant's region (data residency).",
                ).code("wrong_region"));
            }
        }
    }
    Ok(())
}

const REVOKED_HINT: &str = "The token was revoked (tenancy.revoke_token) or its subject's tokens were (tenancy.revoke_subject); obtain a token issued after the revocation.";

const KEY_HINT: &str = "Sign tokens with a key registered by tenancy.add_key() that is neither revoked nor past its not_after.";

fn check_key(key: Option<&catalog::KeyRow>, now: i64, tenant: Uuid) -> Result<(), Refusal> {
    let key = key.ok_or_else(|| {
        Refusal::new(
            INVALID_AUTHORIZATION,
            "token signing key is unknown or revoked".to_string(),
            KEY_HINT,
        )
        .code("key_unknown")
    })?;
    if key.revoked || key.key.is_none() {
        return Err(Refusal::new(
            INVALID_AUTHORIZATION,
            "token signing key is unknown or revoked",
            KEY_HINT,
        )
        .code("key_unknown"));
    }
    check_key_expiry(&key.kid, key.not_after, now)?;
    if key.tenant.is_some_and(|t| t != tenant) {
        // The key cannot vouch for this tenant: an authentication failure (28000).
        return Err(Refusal::new(
            INVALID_AUTHORIZATION,
            format!(
                "token signing key \"{}\" may only bind its own tenant",
                key.kid
            ),
            "A tenant-scoped key signs tokens for that tenant only.",
        )
        .code("key_wrong_tenant"));
    }
    Ok(())
}

/// Refuse a key past its `not_after`.
fn check_key_expiry(kid: &str, not_after: Option<i64>, now: i64) -> Result<(), Refusal> {
    if not_after.is_some_and(|na| now >= na) {
        return Err(Refusal::new(
            INVALID_AUTHORIZATION,
            format!("token signing key \"{kid}\" has expired"),
            KEY_HINT,
        )
        .code("key_expired"));
    }
    Ok(())
}

/// Verify a token (or find it in the cache of verified tokens).
fn verified_token(token_text: &str) -> Rc<CachedToken> {
    let max = gucs::MAX_TOKEN_BYTES.get().max(0) as usize;
    if token_text.len() > max {
        token_refusal(token::TokenError::TooLarge(token_text.len()));
    }
    let digest: [u8; 32] = Sha256::digest(token_text.as_bytes()).into();
    if let Some(hit) = TOKEN_CACHE.with(|c| c.borrow_mut().as_mut()?.get(&digest).cloned()) {
        return hit;
    }
    TOKENS_VERIFIED.with(|v| v.set(v.get() + 1));
    let parsed = token::parse(token_text, max).unwrap_or_else(|e| token_refusal(e));
    let key = catalog::key(&parsed.kid, crate::binding::token::decode_key);
    let key = match key.as_deref() {
        Some(k) if !k.revoked && k.key.is_some() => k,
        _ => refuse_bind(
            Refusal::new(
                INVALID_AUTHORIZATION,
                "token signing key is unknown or revoked",
                "Sign tokens with a key registered by tenancy.add_key() that is not revoked.",
            )
            .code("key_unknown"),
            None,
        ),
    };
    let claims = token::verify(
        parsed,
        key.alg,
        key.key.as_ref().expect("checked above"),
        &gucs::tenant_claim(),
    )
    .unwrap_or_else(|e| token_refusal(e));
    let entry = Rc::new(CachedToken {
        claims,
        prepared: RefCell::new(None),
    });
    let evicted = TOKEN_CACHE.with(|c| {
        let mut c = c.borrow_mut();
        match std::num::NonZeroUsize::new(gucs::TOKEN_CACHE_SIZE.get().max(0) as usize) {
            // The bound is read on every insert: a lowered one takes effect at once.
            Some(cap) => {
                let cache = c.get_or_insert_with(|| lru::LruCache::new(cap));
                if cache.cap() != cap {
                    cache.resize(cap);
                }
                cache.push(digest, entry.clone())
            }
            None => c.take().map(|_| (digest, entry.clone())),
        }
    });
    // Freed outside the borrow.
    drop(evicted);
    entry
}

/// tenancy.bind(token, scope): verify a token and bind its tenant and subject.
/// A bind's token, or 28000 "no token" for NULL (a request that came without credentials).
#[track_caller]
pub fn require_token(token: Option<&str>) -> &str {
    token.unwrap_or_else(|| {
        refuse_bind(
            Refusal::new(
                INVALID_AUTHORIZATION,
                "no token",
                "Pass the request's token: a NULL token usually means the request carried no Authorization header.",
            )
            .code("token_missing"),
            None,
        )
    })
}

pub fn bind(token_text: &str, scope: &str) -> JsonbBytes {
    if in_parallel_worker() {
        errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_INVALID_TRANSACTION_STATE,
            "tenancy.bind() cannot run in a parallel worker",
            "Call tenancy.bind() as a statement of its own.",
        );
    }
    let scope = match scope {
        "transaction" => Scope::Transaction,
        "session" => Scope::Session,
        other => errors::raise(
            INVALID_PARAMETER,
            format!("invalid binding scope \"{other}\""),
            "Use 'transaction' (the default) or 'session'.",
        ),
    };
    if scope == Scope::Session && !gucs::ALLOW_SESSION_SCOPE.get() {
        Refusal::new(
            INSUFFICIENT_PRIVILEGE,
            "session-scoped bindings are disabled on this server",
            "tenancy.allow_session_scope is off (for example behind a pooler in transaction mode): bind in every transaction instead.",
        )
        .code("session_scope_disabled")
        .raise();
    }
    // A transaction-scoped binding made outside a transaction block ends with its own
    // statement: warned as SET LOCAL is, once the bind has succeeded. Not in a procedure or a
    // DO block that commits (a nonatomic SPI caller): there the transaction goes on past this
    // statement, to the caller's next COMMIT, and the binding with it.
    // SAFETY: reads the transaction block state, and whether the SPI connection calling this
    // function (if any) may commit.
    let outside_block = scope == Scope::Transaction
        && !unsafe { pg_sys::IsTransactionBlock() || pg_sys::SPI_inside_nonatomic_context() };
    refuse_inside_internal("tenancy.bind()");
    refuse_while_held_cursors_open("tenancy.bind()");
    if !ADOPTING.with(|a| a.get()) {
        refuse_in_citus_connection("tenancy.bind()");
    }
    if let Some(role) = platform_role_in_effect() {
        refuse_bind(
            Refusal::new(
                INSUFFICIENT_PRIVILEGE,
                format!(
                    "role \"{}\" is a platform operator or key admin and cannot bind a tenant with a token",
                    crate::authz::role_name(role)
                ),
                "Operators and key admins manage the platform but do not read tenant rows, also not through SET ROLE; a tenant admin can grant an operator time-limited access with tenancy.grant_support(), used through tenancy.enter_support().",
            )
            .code("platform_role"),
            None,
        );
    }
    // A suspension or revocation committed by another session counts from this statement on,
    // even inside a transaction that started before it.
    accept_invalidations_once_per_statement();
    let entry = verified_token(token_text);
    let claims = &entry.claims;
    let now = now();
    let skew = gucs::CLOCK_SKEW.get() as i64;
    if claims.exp + skew <= now {
        refuse_bind(
            Refusal::new(
                INVALID_AUTHORIZATION,
                "token has expired",
                "Obtain a new token.",
            )
            .code("token_expired"),
            Some(&claims.tenant),
        );
    }
    if claims.nbf.is_some_and(|nbf| nbf - skew > now) {
        refuse_bind(
            Refusal::new(
                INVALID_AUTHORIZATION,
                "token is not valid yet (nbf is in the future)",
                "Check the clocks of the token issuer and the database server.",
            )
            .code("token_not_yet_valid"),
            Some(&claims.tenant),
        );
    }
    // A token issued in the future would also count as issued after any revocation of its
    // subject (an attacker's pass: `iat` 9999-12-31 outlived revoke_subject).
    if claims.iat.is_some_and(|iat| iat - skew > now) {
        refuse_bind(
            Refusal::new(
                INVALID_AUTHORIZATION,
                "token is not valid yet (iat is in the future)",
                "Check the clocks of the token issuer and the database server.",
            )
            .code("token_not_yet_valid"),
            Some(&claims.tenant),
        );
    }
    let session_role = crate::authz::session_user();
    // Read before the entry is borrowed again: reading it may process invalidations.
    let prepared_tenant = entry.prepared.borrow().as_ref().map(|p| p.tenant.id);
    let tenant_gen = prepared_tenant.map(catalog::generation_of);
    let cached = entry.prepared.borrow().as_ref().is_some_and(|p| {
        Some(p.generation) == tenant_gen && p.session_role == session_role && p.scope == scope
    });
    if !cached {
        // Checks everything, the clock and the region included. The tenant is known only once
        // read: the entry is stamped with the tenant's generation if no invalidation of any
        // kind arrived while prepare() read (then that generation is the one before the
        // reads), else with 0, which no generation equals, so the next bind prepares again.
        let epoch = catalog::fill_epoch();
        let mut prepared = prepare(claims, scope, 0, session_role, now);
        if catalog::fill_epoch() == epoch {
            prepared.generation = catalog::generation_of(prepared.tenant.id);
        }
        *entry.prepared.borrow_mut() = Some(prepared);
    }
    let prepared = entry.prepared.borrow();
    let p = prepared.as_ref().expect("prepared above");
    if cached {
        // The clock and the server's region are not part of the catalog generation: a cached
        // entry is checked against them again, in the order prepare() checks them.
        if let Err(r) = check_key_expiry(&claims.kid, p.key_not_after, now) {
            refuse_bind_in(r, &p.tenant);
        }
        if let Err(r) = check_tenant(&p.tenant) {
            refuse_bind_in(r, &p.tenant);
        }
    }
    // No rebinding to another tenant inside a transaction that has been bound.
    let current = current_binding_tenant();
    if let Some(bound) = TXN_TENANT.with(|t| t.get()).or(current) {
        if bound != p.tenant.id {
            refuse_bind_in(Refusal::new(INSUFFICIENT_PRIVILEGE, format!("this transaction is bound to another tenant and cannot bind tenant \"{}\"", p.tenant.slug),
                "End the transaction (COMMIT or ROLLBACK) first; a session-scoped binding must also be ended with tenancy.unbind().").code("rebind_refused"), &p.tenant);
        }
    }
    // Nor to another subject of the same tenant: its roles would change silently mid-way.
    let subject = Some(claims.subject.clone());
    if let Some(bound_subject) = TXN_SUBJECT.with(|t| t.borrow().clone()) {
        if bound_subject != subject {
            refuse_bind_in(
                Refusal::new(
                    INSUFFICIENT_PRIVILEGE,
                    format!(
                        "this transaction is bound to another subject of tenant \"{}\" and cannot bind subject \"{}\"",
                        p.tenant.slug, claims.subject
                    ),
                    "End the transaction (COMMIT or ROLLBACK) first: a transaction acts for one tenant and one subject.",
                )
                .code("rebind_refused"),
                &p.tenant,
            );
        }
    }
    TXN_TENANT.with(|t| t.set(Some(p.tenant.id)));
    TXN_SUBJECT.with(|t| *t.borrow_mut() = Some(subject));
    let token: Rc<str> = token_text.into();
    let mut b = p.binding(claims);
    if let Source::Token { carried, .. } = &mut b.source {
        *carried = carrier::CarriedToken(token.clone());
    }
    install(b);
    crate::telemetry::bound(p.tenant.id);
    apply_limits(&p.tenant);
    // On Citus, the workers act for the same token from the next distributed statement of this
    // transaction block (a worker adopting a carried token carries nothing further).
    if !ADOPTING.with(|a| a.get()) {
        carrier::send(&token);
    }
    if outside_block {
        pgrx::pg_sys::panic::ErrorReport::new(
            pgrx::PgSqlErrorCode::ERRCODE_NO_ACTIVE_SQL_TRANSACTION,
            "tenancy.bind() outside a transaction block binds nothing after this statement",
            "pg_tenancy",
        )
        .set_detail("pg_tenancy: not_in_transaction")
        .set_hint("BEGIN first: a binding lasts for its transaction (or bind with scope => 'session' on a connection that is not pooled).")
        .report(pgrx::PgLogLevel::WARNING);
    }
    p.described.clone()
}

/// Everything a bind of these claims needs from the catalog, checked: the tenant exists, the
/// key and the tenant may be used now, the login role may bind this tenant; the effective roles
/// and the binding's description.
fn prepare(
    claims: &token::VerifiedClaims,
    scope: Scope,
    generation: u64,
    session_role: pg_sys::Oid,
    now: i64,
) -> Prepared {
    let key = catalog::key(&claims.kid, crate::binding::token::decode_key);
    let tenant = match catalog::tenant_by_ref(&claims.tenant) {
        Some(t) => t,
        // An authentication failure like every other thing wrong with a token (28000).
        None => refuse_bind(
            Refusal::new(
                INVALID_AUTHORIZATION,
                "token names an unknown tenant",
                "The token's tenant claim must hold the uuid or slug of an existing tenant.",
            )
            .code("unknown_tenant"),
            Some(&claims.tenant),
        ),
    };
    if let Err(r) = check_key(key.as_deref(), now, tenant.id) {
        refuse_bind_in(r, &tenant);
    }
    if let Err(r) = check_tenant(&tenant) {
        refuse_bind_in(r, &tenant);
    }
    // A login role mapped to tenants may only bind those tenants.
    let maps = catalog::mappings(session_role);
    if !maps.is_empty() && !maps.iter().any(|m| m.tenant == tenant.id) {
        refuse_bind_in(
            Refusal::new(
                INSUFFICIENT_PRIVILEGE,
                format!(
                    "role \"{}\" is mapped to other tenants and cannot bind tenant \"{}\"",
                    crate::authz::role_name(session_role),
                    tenant.slug
                ),
                "Connect with a role mapped to this tenant, or unmap the role.",
            )
            .code("role_mapped_elsewhere"),
            &tenant,
        );
    }
    if let Some(why) = catalog::token_revocation(
        tenant.id,
        &claims.subject,
        claims.iat,
        claims.jti.as_deref(),
    ) {
        refuse_bind_in(
            Refusal::new(INVALID_AUTHORIZATION, why, REVOKED_HINT).code("token_revoked"),
            &tenant,
        );
    }
    let (roles, member) = effective_roles(&tenant, &claims.subject, claims.roles.as_deref());
    let mut prepared = Prepared {
        generation,
        session_role,
        scope,
        roles,
        member,
        privileges: catalog::privileges(tenant.id),
        key_not_after: key.as_ref().and_then(|k| k.not_after),
        tenant,
        described: JsonbBytes(Rc::from(&[][..])),
    };
    prepared.described = describe(&prepared.binding(claims));
    prepared
}

fn current_binding_tenant() -> Option<Uuid> {
    BINDING.with(|b| b.borrow().as_ref().map(|b| b.tenant))
}

/// JSON description of a binding, as returned by bind(), tenancy.binding() and
/// tenancy.enter_support().
pub fn describe(b: &Binding) -> JsonbBytes {
    use crate::pg::jsonb_build::{object, Field};
    let tenant = b.tenant.to_string();
    let expires_at = b.expires_at.map(unix_to_rfc3339);
    let source = match &b.source {
        Source::Token { .. } => "token",
        Source::Mapping { .. } => "role_mapping",
        Source::Support { .. } => "support",
        Source::Decommission { .. } => "decommission",
    };
    // In jsonb's key order (shorter first, then bytewise), so `object` need not sort them.
    // SAFETY: `object` returns a fresh palloc'd jsonb.
    unsafe {
        JsonbBytes::of(object(&[
            ("slug", Field::Str(&b.slug)),
            ("roles", Field::Strs(&b.roles)),
            ("scope", Field::Str(b.scope.name())),
            ("source", Field::Str(source)),
            ("tenant", Field::Str(&tenant)),
            ("subject", b.subject.as_deref().into()),
            ("expires_at", expires_at.as_deref().into()),
            (
                "support_privileges",
                b.support_privileges
                    .as_deref()
                    .map_or(Field::Null, Field::Strs),
            ),
        ]))
    }
}

fn unix_to_rfc3339(secs: i64) -> String {
    // Days-from-civil inverse (Howard Hinnant's algorithm); UTC, second precision.
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// tenancy.unbind(): drop the explicit binding (a role mapping still applies).
pub fn unbind() {
    refuse_inside_internal("tenancy.unbind()");
    // A cursor declared while bound reads that tenant's rows: its plan holds the tenant, or its
    // rows were kept at COMMIT (WITH HOLD). It must not be read after the binding ends, by this
    // client or, behind a pooler, by the next one.
    let mut open: Vec<String> = BOUND_CURSORS.with(|c| {
        let mut c = c.borrow_mut();
        c.retain(|(n, _)| portal_open(n));
        c.iter()
            .map(|(n, _)| n.to_string_lossy().into_owned())
            .collect()
    });
    // And the portals opened under it otherwise (PL/pgSQL's OPEN, the protocol's Bind): a
    // stored result is read by FETCH with no query started (portals_at_query_start).
    BOUND_PORTALS.with(|b| {
        let mut b = b.borrow_mut();
        b.retain(|n| portal_open(n));
        for n in b.iter() {
            let n = n.to_string_lossy().into_owned();
            if !open.contains(&n) {
                open.push(n);
            }
        }
    });
    if !open.is_empty() {
        errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            format!(
                "tenancy.unbind() with cursors open that were declared while bound: {}",
                open.join(", ")
            ),
            "Close them first (CLOSE name, or CLOSE ALL): their rows belong to the tenant bound when they were declared.",
        );
    }
    BINDING.with(|b| *b.borrow_mut() = None);
    carrier::clear();
    // A transaction whose binding no statement has used yet may bind again, for anyone; one
    // that has read or written as a tenant stays that tenant's until it ends.
    if !TXN_USED.with(|u| u.get()) {
        TXN_TENANT.with(|t| t.set(None));
        TXN_SUBJECT.with(|t| *t.borrow_mut() = None);
    }
}

/// Apply the tenant's resource settings, within the platform's ceilings, for the rest of this
/// transaction (SET LOCAL; src/lifecycle/limits.rs).
fn apply_limits(tenant: &TenantRow) {
    if crate::pg::unguarded::in_parallel_mode() {
        return;
    }
    // By index, with no borrow held while each runs, and no copy of the list.
    for i in 0..ON_BOUND.with(|o| o.borrow().len()) {
        ON_BOUND.with(|o| o.borrow()[i])(tenant);
    }
    LIMITS_APPLIED.with(|l| l.set(true));
}

thread_local! {
    /// What runs when a transaction first acts for a tenant (src/lifecycle: the tenant's
    /// resource settings), registered at _PG_init.
    static ON_BOUND: RefCell<Vec<fn(&TenantRow)>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` when a transaction first acts for a tenant (at bind, or at the first use of a
/// binding in a transaction, and again after a rolled-back subtransaction undid its SET LOCAL).
pub fn on_transaction_bound(f: fn(&TenantRow)) {
    ON_BOUND.with(|o| o.borrow_mut().push(f));
}

/// The tenant of the binding in effect, without checking the binding (the statement's own
/// reads check it): for holding the resource limits and the tenant's write lock at the start
/// of every query, before parallel mode. A role mapping is resolved here if it was not yet,
/// so a mapped session's very first statement is held too.
pub fn tenant_in_effect_unchecked() -> Option<Uuid> {
    if let Some(t) = BINDING
        .with(|b| b.borrow().as_ref().map(|b| b.tenant))
        .or_else(|| TXN_TENANT.with(|t| t.get()))
    {
        return Some(t);
    }
    // Not in an aborted transaction (it reads no catalog), nor while CREATE EXTENSION runs
    // (pg_tenancy's tables may not exist yet).
    if !crate::pg::unguarded::in_transaction()
        // SAFETY: creating_extension is this backend's own flag.
        || unsafe { pg_sys::creating_extension }
        || !catalog::installed()
    {
        return None;
    }
    ensure_mapped(catalog::generation());
    MAPPED.with(|m| {
        m.borrow()
            .as_ref()
            .and_then(|(_, _, b)| b.as_ref().map(|b| b.tenant))
    })
}

/// Make MAPPED hold the validated role-mapped binding of the session user (or None) for the
/// current catalog generation.
fn ensure_mapped(gen: u64) {
    let role = crate::authz::session_user();
    // Read before MAPPED is borrowed: reading it may process invalidations.
    let tenant_gen = MAPPED
        .with(|m| {
            m.borrow()
                .as_ref()
                .and_then(|(_, _, b)| b.as_ref().map(|b| b.tenant))
        })
        .map(catalog::generation_of);
    let fresh = MAPPED.with(|m| {
        matches!(&*m.borrow(), Some((g, r, b)) if *g == gen && *r == role
            && b.as_ref().is_none_or(|b| Some(b.generation) == tenant_gen))
    });
    if fresh {
        return;
    }
    // In a connection Citus opened, the statement that gives the transaction its distributed
    // id may not be preceded by a read of the catalog (reference tables, whose read takes one):
    // during it no mapping is looked up, nor kept: the statement runs unbound, and the next one
    // looks again. (A client that names its connection as Citus does and sends the same text
    // gets only that: an attacker's pass kept the binding of a suspended tenant, or of a
    // removed mapping, for every statement so marked.)
    if crate::pg::citus::internal_backend() && crate::pg::citus::assigning_distributed_transaction()
    {
        MAPPED.with(|m| *m.borrow_mut() = None);
        return;
    }
    // A superuser's connection that Citus opened for its own work maps to no tenant: Citus's
    // metadata synchronisation runs statements there while a catalog table is half registered
    // (src/pg/citus.rs), and a superuser is subject to no policy anyway.
    let maps = if crate::pg::citus::catalog_work_stands_aside() {
        Default::default()
    } else {
        catalog::mappings(role)
    };
    let candidate = if maps.len() == 1 && !crate::authz::is_platform_role(role) {
        let m = &maps[0];
        catalog::tenant_by_id(m.tenant).map(|t| Binding {
            tenant: t.id,
            slug: t.slug.clone(),
            subject: None,
            roles: m.roles.clone(),
            expires_at: None,
            scope: Scope::Session,
            source: Source::Mapping { role },
            support_privileges: None,
            privileges: Rc::default(),
            region: None,
            key_not_after: None,
            generation: 0,
        })
    } else {
        None
    };
    let Some(mut b) = candidate else {
        // The mapping this role was bound through is gone: say so once, from the next
        // statement, as for any other binding that ends (later statements find none bound).
        let removed = MAPPED.with(|m| match &*m.borrow() {
            Some((_, r, Some(old)))
                if *r == role && !maps.iter().any(|m| m.tenant == old.tenant) =>
            {
                Some((old.slug.clone(), old.tenant))
            }
            _ => None,
        });
        MAPPED.with(|m| *m.borrow_mut() = Some((gen, role, None)));
        if let Some((slug, tenant)) = removed {
            binding_ended(
                Refusal::new(
                    INSUFFICIENT_PRIVILEGE,
                    format!(
                        "role \"{}\" is no longer mapped to tenant \"{slug}\"",
                        crate::authz::role_name(role)
                    ),
                    "An operator maps roles with tenancy.map_role().",
                )
                .code("mapping_removed"),
                slug,
                tenant,
            );
        }
        return;
    };
    if let Err(r) = revalidate(&mut b) {
        MAPPED.with(|m| *m.borrow_mut() = Some((gen, role, None)));
        binding_ended(r, b.slug.clone(), b.tenant);
    }
    MAPPED.with(|m| *m.borrow_mut() = Some((gen, role, Some(b))));
}

thread_local! {
    /// Set while [`with_current`] runs (see there).
    static IN_WITH_CURRENT: Cell<bool> = const { Cell::new(false) };
}

/// Clears IN_WITH_CURRENT when dropped, also when an error unwinds.
struct ReentryGuard;
impl Drop for ReentryGuard {
    fn drop(&mut self) {
        IN_WITH_CURRENT.with(|c| c.set(false));
    }
}

/// The binding in force, validated, or None when unbound. Raises when a binding exists but is no
/// longer valid (expired token, suspended tenant, revoked key, removed mapping), and drops it.
pub fn current_if_bound() -> Option<Binding> {
    with_current(|b| b.cloned())
}

/// Validate the binding in force in place (expiry on every use; the catalog only when it
/// changed) and run `f` on it without copying it. This is the per-statement hot path of the
/// generated policies. A validation is skipped while nothing it reads has changed since the
/// last one succeeded (memo.rs).
pub fn with_current<R>(f: impl FnOnce(Option<&Binding>) -> R) -> R {
    if in_parallel_worker() {
        errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_INVALID_TRANSACTION_STATE,
            "the tenant binding cannot be read in a parallel worker",
            "Wrap tenancy.current_tenant() in a scalar subquery, (SELECT tenancy.current_tenant()), as generated policies do.",
        );
    }
    if INTERNAL.with(|i| i.borrow().is_some()) {
        if ADOPTED_ASSERTION.with(|a| a.borrow().is_some()) {
            // Adopted from a carried assertion: it ends or changes with the carrier.
            adopt_carrier();
        }
        if INTERNAL.with(|i| i.borrow().is_some()) {
            return INTERNAL.with(|i| f(i.borrow().as_ref()));
        }
    }
    if IN_WITH_CURRENT.with(|c| c.get()) {
        // Reached again from inside an outer call (a query its `f` or its validation runs,
        // through a hook): the outer call validates the binding for this statement and may
        // hold it borrowed, so read it as it is and change nothing.
        return if BINDING.with(|b| b.borrow().is_some()) {
            BINDING.with(|b| f(b.borrow().as_ref()))
        } else {
            MAPPED.with(|m| f(m.borrow().as_ref().and_then(|(_, _, b)| b.as_ref())))
        };
    }
    adopt_carrier();
    if INTERNAL.with(|i| i.borrow().is_some()) {
        // Adopted just now from an assertion the coordinator carried.
        return INTERNAL.with(|i| f(i.borrow().as_ref()));
    }
    IN_WITH_CURRENT.with(|c| c.set(true));
    let _reentry = ReentryGuard;
    accept_invalidations_once_per_statement();
    // Validated already, with nothing it depends on changed since (memo.rs): read the binding
    // as the validation left it (the transaction's own bookkeeping still runs).
    let second = now();
    // Read before the validation reads anything: what it validates is the state as of here.
    let before = memo::key(second);
    if memo::validated(before) {
        let noted = |b: Option<&Binding>| {
            if let Some(x) = b {
                note_transaction(x.tenant, &x.subject);
            }
            f(b)
        };
        return if BINDING.with(|b| b.borrow().is_some()) {
            BINDING.with(|b| noted(b.borrow().as_ref()))
        } else {
            MAPPED.with(|m| noted(m.borrow().as_ref().and_then(|(_, _, b)| b.as_ref())))
        };
    }
    let gen = catalog::generation();
    // The tenant's generation is read before the binding is borrowed: reading it may process
    // invalidations.
    let tenant_gen = current_binding_tenant().map(catalog::generation_of);
    let mut support_operator = None;
    let explicit = BINDING.with(|b| {
        b.borrow().as_ref().map(|b| {
            if let Source::Support { operator, .. } = b.source {
                support_operator = Some(operator);
            }
            (
                b.expires_at,
                Some(b.generation) == tenant_gen,
                matches!(b.source, Source::Support { .. }),
            )
        })
    });
    // A support binding serves the operator role it was granted to only: entered after SET
    // ROLE to that role, it ended with RESET ROLE for the session's own role (an attacker's
    // pass, as a member of the operator's login role).
    if let Some(operator) = support_operator {
        let caller = crate::authz::caller();
        if caller != operator {
            errors::refuse(
                "support_role_changed",
                fields(&[("platform_role", crate::authz::role_name(caller).into())]),
                INSUFFICIENT_PRIVILEGE,
                format!(
                    "the support binding of this session serves role \"{}\", not \"{}\"",
                    crate::authz::role_name(operator),
                    crate::authz::role_name(caller)
                ),
                "Support access is the granted operator's own: SET ROLE back to it, or end the binding with SELECT tenancy.unbind();.",
            );
        }
        // What enter_support required, still: an operator that is neither a superuser nor a
        // key admin. A role taken out of tenancy_operator, or made a key admin, kept reading
        // the tenant's rows until the grant expired (an attacker's pass): role memberships
        // are not the tenant's catalog, so this is checked on every validation (the memo
        // forgets one when memberships change).
        if !crate::authz::is_operator(operator)
            || crate::authz::is_superuser(operator)
            || crate::authz::is_key_admin(operator)
        {
            let slug = BINDING.with(|b| b.borrow().as_ref().map(|b| (b.slug.clone(), b.tenant)));
            BINDING.with(|slot| *slot.borrow_mut() = None);
            if let Some((slug, tenant)) = slug {
                binding_ended(
                    Refusal::new(
                        INSUFFICIENT_PRIVILEGE,
                        format!(
                            "role \"{}\" is no longer a platform operator, and its support binding of tenant \"{slug}\" has ended",
                            crate::authz::role_name(operator)
                        ),
                        "Support bindings are for operators that are neither superusers nor key admins.",
                    )
                    .code("support_ended"),
                    slug,
                    tenant,
                );
            }
        }
    }
    if !explicit.is_some_and(|(_, _, support)| support) {
        if let Some(role) = platform_role_in_effect() {
            if explicit.is_some() || mapped_binding_exists(gen) {
                errors::refuse(
                    "platform_role_bound",
                    fields(&[("platform_role", crate::authz::role_name(role).into())]),
                    INSUFFICIENT_PRIVILEGE,
                    format!(
                        "no tenant binding is in effect while role \"{}\", a platform operator or key admin, is the current or session role",
                        crate::authz::role_name(role)
                    ),
                    "Platform roles never read tenant rows, also not through SET ROLE: RESET ROLE, or connect as the application role. Operators get time-limited access through tenancy.enter_support().",
                );
            }
        }
    }
    match explicit {
        Some((expires_at, fresh, support)) => {
            // A token's exp is read with the clock skew the issuer's clock may have; a support
            // grant's expiry is this server's own instant, read as it is.
            let skew = if support {
                0
            } else {
                gucs::int(&gucs::CLOCK_SKEW) as i64
            };
            if expires_at.is_some_and(|exp| exp + skew <= second) {
                let slug = BINDING.with(|b| {
                    b.borrow()
                        .as_ref()
                        .map(|b| b.slug.clone())
                        .unwrap_or_default()
                });
                BINDING.with(|slot| *slot.borrow_mut() = None);
                let refusal = if support {
                    Refusal::new(
                        INSUFFICIENT_PRIVILEGE,
                        format!("the support grant of tenant \"{slug}\" has expired"),
                        "Ask a tenant admin for a new grant with tenancy.grant_support().",
                    )
                    .code("support_ended")
                } else {
                    Refusal::new(
                        INVALID_AUTHORIZATION,
                        "the token of this binding has expired",
                        "Bind again with a fresh token.",
                    )
                    .code("binding_expired")
                };
                refusal
                    .event("binding_expired", fields(&[("tenant", slug.into())]))
                    .raise();
            }
            if !fresh {
                let mut b = BINDING.with(|b| b.borrow().clone()).expect("bound");
                if let Err(r) = revalidate(&mut b) {
                    BINDING.with(|slot| *slot.borrow_mut() = None);
                    binding_ended(r, b.slug.clone(), b.tenant);
                }
                BINDING.with(|slot| *slot.borrow_mut() = Some(b));
            }
            let ended = BINDING.with(|b| {
                b.borrow().as_ref().and_then(|b| {
                    still_in_force(b, second)
                        .err()
                        .map(|e| (b.slug.clone(), b.tenant, e))
                })
            });
            if let Some((slug, tenant, r)) = ended {
                BINDING.with(|slot| *slot.borrow_mut() = None);
                binding_ended(r, slug, tenant);
            }
            BINDING.with(|b| {
                let b = b.borrow();
                if let Some(x) = b.as_ref() {
                    note_transaction(x.tenant, &x.subject);
                }
                // What it succeeded under, unless an invalidation arrived while it read.
                memo::remember_unless_moved(before, memo::key(second));
                f(b.as_ref())
            })
        }
        None => {
            ensure_mapped(gen);
            let ended = MAPPED.with(|m| {
                m.borrow()
                    .as_ref()
                    .and_then(|(_, _, b)| b.as_ref())
                    .and_then(|b| {
                        still_in_force(b, second)
                            .err()
                            .map(|e| (b.slug.clone(), b.tenant, e))
                    })
            });
            if let Some((slug, tenant, r)) = ended {
                binding_ended(r, slug, tenant);
            }
            MAPPED.with(|m| {
                let m = m.borrow();
                let b = m.as_ref().and_then(|(_, _, b)| b.as_ref());
                if let Some(x) = b {
                    note_transaction(x.tenant, &x.subject);
                }
                memo::remember_unless_moved(before, memo::key(second));
                f(b)
            })
        }
    }
}

thread_local! {
    /// (local transaction id, token) of the binding this worker session adopted from the
    /// carrier in that transaction (`carrier.rs`).
    static ADOPTED: Tracked<Option<(u32, Rc<str>)>> = const { Tracked::new(None) };
    /// Set while a carried token is being bound.
    static ADOPTING: Cell<bool> = const { Cell::new(false) };
    /// (local transaction id, assertion) this worker session acts on as an internal binding
    /// in that transaction (`carrier.rs`).
    static ADOPTED_ASSERTION: Tracked<Option<(u32, Rc<str>, i64)>> = const { Tracked::new(None) };
}

/// The token the explicit binding was adopted from, when it was adopted in this transaction
/// and is still the binding in force.
fn adopted_token() -> Option<Rc<str>> {
    // SAFETY: MyProc is set for every backend that runs SQL; lxid is its own field.
    let lx = unsafe { (*pg_sys::MyProc).lxid };
    let adopted = ADOPTED.with(|a| a.borrow().clone());
    match adopted {
        Some((l, t))
            if l == lx
                && BINDING.with(|b| {
                    b.borrow()
                        .as_ref()
                        .and_then(carrier::token_of)
                        .is_some_and(|own| own == t)
                }) =>
        {
            Some(t)
        }
        _ => None,
    }
}

/// On a Citus worker, before the binding is read: bind the token the coordinator carried, for
/// this transaction, as `tenancy.bind()` would (`carrier.rs`). A carrier that ends or changes
/// takes its binding with it; a session bound here by its own `bind()` to another token is
/// refused (a binding is never split between nodes). Nothing without Citus, and nothing on
/// the coordinator, which never reads the carrier.
fn adopt_carrier() {
    if ADOPTING.with(|a| a.get()) || !carrier::active() {
        return;
    }
    let carried = carrier::carried();
    if adopt_assertion(carried.as_deref()) {
        return;
    }
    let adopted = adopted_token();
    let Some(token) = carried else {
        if adopted.is_some() {
            BINDING.with(|b| *b.borrow_mut() = None);
            ADOPTED.with(|a| *a.borrow_mut() = None);
        }
        return;
    };
    if adopted.as_deref() == Some(token.as_str()) || !carrier::on_worker() {
        return;
    }
    let own = BINDING.with(|b| b.borrow().as_ref().map(carrier::token_of));
    match (own, adopted) {
        // Bound here by bind() with this very token: nothing to adopt.
        (Some(Some(t)), None) if *t == *token => {}
        // The carried token changed within the transaction: bind() refuses another tenant or
        // subject of a transaction that has been bound.
        (Some(_), Some(_)) => {
            BINDING.with(|b| *b.borrow_mut() = None);
        }
        (Some(_), None) => {
            Refusal::new(
                INSUFFICIENT_PRIVILEGE,
                "this session's binding and the binding carried from the Citus coordinator differ",
                "A session acts for one binding on every node: bind on the coordinator only, inside the transaction block.",
            )
            .code("binding_split")
            .raise();
        }
        (None, _) => {}
    }
    if BINDING.with(|b| b.borrow().is_none()) {
        struct Done;
        impl Drop for Done {
            fn drop(&mut self) {
                ADOPTING.with(|a| a.set(false));
            }
        }
        ADOPTING.with(|a| a.set(true));
        let _done = Done;
        bind(&token, "transaction");
    }
    // SAFETY: MyProc is set for every backend that runs SQL; lxid is its own field.
    let lx = unsafe { (*pg_sys::MyProc).lxid };
    ADOPTED.with(|a| *a.borrow_mut() = Some((lx, token.as_str().into())));
}

/// On a Citus worker: act on an assertion the coordinator carried (pg_tenancy's own work, signed
/// by the coordinator: `carrier.rs`) as the internal binding it asserts, for as long as it is
/// carried in this transaction; end that internal binding when the carrier changes. Returns
/// whether the carried value was an assertion (then the token path has nothing to do).
fn adopt_assertion(carried: Option<&str>) -> bool {
    // SAFETY: MyProc is set for every backend that runs SQL; lxid is its own field.
    let lx = unsafe { (*pg_sys::MyProc).lxid };
    let current = ADOPTED_ASSERTION.with(|a| {
        a.borrow()
            .as_ref()
            .filter(|(l, _, _)| *l == lx)
            .map(|(_, v, e)| (v.clone(), *e))
    });
    if let (Some((c, expires)), Some(v)) = (&current, carried) {
        if **c == *v {
            carrier::refuse_expired(*expires);
            return true;
        }
    }
    if current.is_some() {
        INTERNAL.with(|i| *i.borrow_mut() = None);
        ADOPTED_ASSERTION.with(|a| *a.borrow_mut() = None);
        crate::citus::trail::clear_purge_asserted();
    }
    let Some(value) = carried.filter(|v| carrier::is_assertion(v)) else {
        return false;
    };
    if !carrier::on_worker() {
        return true;
    }
    if BINDING.with(|b| b.borrow().is_some()) && adopted_token().is_none() {
        Refusal::new(
            INSUFFICIENT_PRIVILEGE,
            "this session's binding and the assertion carried from the Citus coordinator differ",
            "A session acts for one binding on every node: bind on the coordinator only, inside the transaction block.",
        )
        .code("binding_split")
        .raise();
    }
    let (asserted, expires) = carrier::verify_assertion(value);
    let (tenant, table) = match asserted {
        carrier::Assertion::Decommission { tenant, table } => (tenant, table),
        carrier::Assertion::Purge { tenant } => {
            adopt_purge(tenant, expires, lx);
            ADOPTED_ASSERTION.with(|a| *a.borrow_mut() = Some((lx, value.into(), expires)));
            return true;
        }
    };
    let refuse = |what: String| -> ! {
        Refusal::new(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!("the assertion carried from the Citus coordinator names {what}, which this node does not have"),
            "The catalog and the tables are the same on every node of a Citus cluster: check that every node is reachable and up to date.",
        )
        .code("assertion_refused")
        .raise()
    };
    let row = catalog::tenant_by_id(tenant).unwrap_or_else(|| refuse(format!("tenant {tenant}")));
    let rel = catalog::read_one::<pg_sys::Oid>(
        "SELECT pg_catalog.to_regclass($1)::pg_catalog.oid",
        &[table.as_str().into()],
    )
    .unwrap_or_else(|| refuse(format!("table {table}")));
    // The coordinator runs the deletion as the table's owner, whom Citus connects to the
    // workers as: any other role that read the assertion (in a worker's activity) cannot use it.
    // SAFETY: GetUserId reads this backend's current user; pg_class_ownercheck looks the table
    // up in the syscache (it exists: found by name just above).
    if !unsafe { pg_sys::pg_class_ownercheck(rel, pg_sys::GetUserId()) } {
        Refusal::new(
            INSUFFICIENT_PRIVILEGE,
            format!("the assertion carried from the Citus coordinator is for the owner of {table}"),
            "Assertions are made by pg_tenancy on the coordinator for its own work.",
        )
        .code("assertion_refused")
        .raise();
    }
    BINDING.with(|b| *b.borrow_mut() = None);
    ADOPTED.with(|a| *a.borrow_mut() = None);
    INTERNAL.with(|i| *i.borrow_mut() = Some(decommission_binding(&row, rel)));
    ADOPTED_ASSERTION.with(|a| *a.borrow_mut() = Some((lx, value.into(), expires)));
    true
}

/// A purge assertion (`audit_purge` on the coordinator): the coordinator runs the trail's
/// deletions as the catalog owner, whom Citus connects to the workers as; any other role that
/// read the assertion cannot use it. No binding: the trail's append-only triggers let this
/// transaction's deletions of the tenant's records through (`src/citus/trail.rs`), nothing
/// else.
fn adopt_purge(tenant: uuid::Uuid, expires: i64, lx: u32) {
    let log = catalog::read_one::<pg_sys::Oid>(
        "SELECT pg_catalog.to_regclass('tenancy.audit_log')::pg_catalog.oid",
        &[],
    )
    .unwrap_or(pg_sys::InvalidOid);
    let owner = log != pg_sys::InvalidOid
        // SAFETY: GetUserId reads this backend's current user; pg_class_ownercheck looks the
        // table up in the syscache (checked to exist first).
        && unsafe { pg_sys::pg_class_ownercheck(log, pg_sys::GetUserId()) };
    if !owner {
        Refusal::new(
            INSUFFICIENT_PRIVILEGE,
            "the assertion carried from the Citus coordinator is for the owner of pg_tenancy's audit trail",
            "Assertions are made by pg_tenancy on the coordinator for its own work.",
        )
        .code("assertion_refused")
        .raise();
    }
    crate::citus::trail::set_purge_asserted(tenant, expires, lx);
}

/// At the start of every query of a transaction block: on Citus, carry the explicit token
/// binding to the workers if this transaction has not yet (a session-scoped binding's later
/// transactions).
fn carry_at_query_start(_writes: bool) {
    if !carrier::active() {
        return;
    }
    // Citus connects to the workers as the current role, whose own role mapping binds it there:
    // a session that has SET ROLE to a role mapped to a tenant would read that tenant's rows
    // on the workers while bound here as its login role. Refused from the first statement.
    let current = crate::pg::unguarded::user_id();
    if current != crate::authz::session_user() && !catalog::mappings(current).is_empty() {
        Refusal::new(
            INSUFFICIENT_PRIVILEGE,
            format!(
                "role \"{}\" is mapped to a tenant, and on Citus the workers would act for its mapping: SET ROLE to it is refused here",
                crate::authz::role_name(current)
            ),
            "RESET ROLE: a session acts for its login role's binding on every node.",
        )
        .code("binding_split")
        .raise();
    }
    let token = BINDING.with(|b| b.borrow().as_ref().and_then(carrier::token_of));
    if let Some(token) = token {
        if adopted_token().is_none() {
            carrier::send(&token);
        }
    }
}

/// Whether the session's login role has a role-mapped binding (validated for `gen`).
fn mapped_binding_exists(gen: u64) -> bool {
    ensure_mapped(gen);
    MAPPED.with(|m| matches!(&*m.borrow(), Some((_, _, Some(_)))))
}

thread_local! {
    /// (current user, session user) -> the platform role among them, if any; forgotten at any
    /// change of roles or role memberships (see [`roles_changed`]).
    static PLATFORM_ROLE: TrackedCell<Option<(pg_sys::Oid, pg_sys::Oid, Option<pg_sys::Oid>)>> =
        const { TrackedCell::new(None) };
}

/// Syscache callback on pg_authid and pg_auth_members: memberships may have changed.
///
/// # Safety
/// Called by PostgreSQL's invalidation processing, as registered by [`init`].
#[pg_guard]
unsafe extern "C-unwind" fn roles_changed(
    _arg: pg_sys::Datum,
    _cache: std::ffi::c_int,
    _hash: u32,
) {
    PLATFORM_ROLE.with(|p| p.set(None));
    // Memberships are read by the mapping's validation too (a platform role maps to no tenant).
    memo::roles_changed();
}

/// The current role, or else the session's login role, when it is a non-superuser platform
/// role (a member of tenancy_operator or tenancy_key_admin, however granted). Kept per pair of
/// roles until roles or memberships change (invalidations are read at every statement).
pub fn platform_role_in_effect() -> Option<pg_sys::Oid> {
    use crate::authz;
    let (current, session) = (authz::caller(), authz::session_user());
    if let Some((c, s, found)) = PLATFORM_ROLE.with(|p| p.get()) {
        if c == current && s == session {
            return found;
        }
    }
    let found = [current, session]
        .into_iter()
        .find(|&r| authz::is_platform_role(r));
    PLATFORM_ROLE.with(|p| p.set(Some((current, session, found))));
    found
}

/// Refuse a change of the binding while pg_tenancy runs one of its own statements under an
/// internal binding (code of a table's owner reached from there cannot bind).
fn refuse_inside_internal(what: &str) {
    if INTERNAL.with(|i| i.borrow().is_some()) {
        errors::raise(
            INSUFFICIENT_PRIVILEGE,
            format!("{what} cannot run inside a pg_tenancy management operation"),
            "Triggers and other code reached from tenancy.decommission_tenant() run as the table's owner and cannot change the binding.",
        );
    }
}

/// Clears the internal binding when dropped, also when an error unwinds.
pub struct InternalBinding;
impl Drop for InternalBinding {
    fn drop(&mut self) {
        INTERNAL.with(|i| *i.borrow_mut() = None);
    }
}

/// Bind `tenant` for pg_tenancy's own deletion of its rows from `table` (decommission): select
/// and delete on that table and its partitions, nothing else, until the guard is dropped.
pub fn internal_decommission_binding(tenant: &TenantRow, table: pg_sys::Oid) -> InternalBinding {
    let b = decommission_binding(tenant, table);
    INTERNAL.with(|i| *i.borrow_mut() = Some(b));
    InternalBinding
}

/// The internal binding of pg_tenancy's deletion of `tenant`'s rows from `table`.
fn decommission_binding(tenant: &TenantRow, table: pg_sys::Oid) -> Binding {
    Binding {
        tenant: tenant.id,
        slug: tenant.slug.clone(),
        subject: Some(format!(
            "decommission:{}",
            crate::authz::role_name(crate::authz::caller())
        )),
        roles: Vec::new(),
        expires_at: None,
        scope: Scope::Transaction,
        source: Source::Decommission { table },
        support_privileges: None,
        privileges: Rc::default(),
        region: None,
        key_not_after: None,
        generation: catalog::generation_of(tenant.id),
    }
}

/// First use of a binding in a transaction: tie the transaction to the tenant and apply the
/// tenant's resource settings.
fn note_transaction(tenant: Uuid, subject: &Option<String>) {
    // A transaction acts for one tenant and one subject, whatever brought another binding into
    // force since it was tied to them: a subtransaction rolled back restores the session-scoped
    // binding a bind inside it replaced, after another tenant's rows were read in between (an
    // attacker's pass: SAVEPOINT, a session bind, unbind, a bind of another tenant, its rows
    // read, ROLLBACK TO SAVEPOINT, and the first tenant's rows read and written in the same
    // transaction, its trail naming the other token's subject); an unbind after the binding was
    // used, and a role mapping that applies then.
    let other_tenant = TXN_TENANT.with(|t| t.get()).is_some_and(|t| t != tenant);
    let other_subject = TXN_SUBJECT.with(|t| t.borrow().as_ref().is_some_and(|s| s != subject));
    if other_tenant || other_subject {
        Refusal::new(
            INSUFFICIENT_PRIVILEGE,
            if other_tenant {
                "this transaction acted for another tenant than the binding in force now"
            } else {
                "this transaction acted for another subject than the binding in force now"
            },
            "End the transaction (COMMIT or ROLLBACK) first: a transaction acts for one tenant and one subject.",
        )
        .code("rebind_refused")
        .raise();
    }
    if TXN_TENANT.with(|t| t.get()).is_none() {
        TXN_TENANT.with(|t| t.set(Some(tenant)));
    }
    // The subject too, whatever bound it (a session's binding or a role mapping used first in
    // the transaction): a bind of another subject is then refused, and the trail names this one
    // even for a write whose statement ended the binding (an attacker's pass bound a second
    // subject, and unbound, in the statement that wrote, and the record named that subject, or
    // none).
    if TXN_SUBJECT.with(|t| t.borrow().is_none()) {
        TXN_SUBJECT.with(|t| *t.borrow_mut() = Some(subject.clone()));
    }
    TXN_USED.with(|u| u.set(true));
    if !LIMITS_APPLIED.with(|l| l.get()) {
        if let Some(t) = catalog::tenant_by_id(tenant) {
            apply_limits(&t);
        }
    }
}

/// A subtransaction rolled back: its SET LOCALs are undone, the tenant's settings with them
/// (the binding itself lives on). Apply them again at the next use.
fn subxact_callback(event: pg_sys::SubXactEvent::Type, my_subid: pg_sys::SubTransactionId) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        LIMITS_APPLIED.with(|l| l.set(false));
        undo_made(my_subid);
    }
    // A SET LOCAL of the carrier made inside a subtransaction is undone with it, and Citus
    // forgets it when the subtransaction is released too: carried again at the next query.
    if matches!(
        event,
        pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB
            | pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB
    ) {
        carrier::forget_sent();
    }
}

thread_local! {
    static LAST_STATEMENT: Cell<pg_sys::TimestampTz> = const { Cell::new(0) };
}

/// Revocations (suspensions, removed members, revoked grants and keys) reach this session from
/// its next statement even inside a long transaction: PostgreSQL processes shared invalidations
/// at transaction start and when it takes a new lock; this makes sure it also happens once at
/// the start of every statement that reads the binding.
fn accept_invalidations_once_per_statement() {
    let stmt = crate::pg::unguarded::statement_start();
    if LAST_STATEMENT.with(|l| l.replace(stmt)) != stmt {
        // SAFETY: callers read the binding inside a transaction, where invalidations may be
        // processed (as at any lock acquisition).
        unsafe { pg_sys::AcceptInvalidationMessages() };
    }
}

/// Refuse `what` (a function that binds) in a connection the Citus coordinator opened: a
/// statement the coordinator runs on a worker binds what the coordinator carries, nothing else,
/// and a bind pushed down to the workers would make them act for another binding than the
/// coordinator's. Also once the pushed-down expression has renamed the connection (a reviewer's
/// lead, confirmed on a cluster): the name it opened under decides.
pub fn refuse_in_citus_connection(what: &str) {
    // (Covers internal_backend() too: a connection Citus's now and since it started opened
    // under that name.)
    if crate::pg::citus::opened_as_internal() {
        Refusal::new(
            INSUFFICIENT_PRIVILEGE,
            format!("{what} cannot run in a connection the Citus coordinator opened: the binding comes from the coordinator"),
            format!("Call {what} as a statement of its own on the coordinator, inside the transaction block."),
        )
        .code("binding_split")
        .raise();
    }
}

/// Bind a platform operator to `tenant` inside a support grant (tenancy.enter_support).
pub fn enter_support(
    tenant: &TenantRow,
    operator: pg_sys::Oid,
    grant: &catalog::SupportGrant,
) -> Binding {
    refuse_inside_internal("tenancy.enter_support()");
    refuse_while_held_cursors_open("tenancy.enter_support()");
    if let Some(bound) = TXN_TENANT.with(|t| t.get()).or(current_binding_tenant()) {
        if bound != tenant.id {
            refuse_bind_in(
                Refusal::new(
                    INSUFFICIENT_PRIVILEGE,
                    format!(
                        "this transaction is bound to another tenant and cannot bind tenant \"{}\"",
                        tenant.slug
                    ),
                    "End the transaction first.",
                )
                .code("rebind_refused"),
                tenant,
            );
        }
    }
    if let Err(r) = check_tenant(tenant) {
        refuse_bind_in(r, tenant);
    }
    let b = Binding {
        tenant: tenant.id,
        slug: tenant.slug.clone(),
        subject: Some(format!("support:{}", crate::authz::role_name(operator))),
        roles: vec!["support".into()],
        expires_at: Some(grant.expires_at),
        scope: Scope::Session,
        source: Source::Support {
            operator,
            grant_id: grant.id,
        },
        support_privileges: Some(grant.privileges.clone()),
        // A support binding is confined by its grant's privileges, not by tenant roles.
        privileges: Rc::default(),
        region: tenant.region.clone(),
        key_not_after: None,
        generation: catalog::generation_of(tenant.id),
    };
    TXN_TENANT.with(|t| t.set(Some(tenant.id)));
    install(b.clone());
    b
}

/// Make `b` the explicit binding. A session-scoped binding outlives its transaction, but not
/// a transaction (or subtransaction) that aborts: as a SET would be, it is undone with it, and
/// the binding it replaced is in force again. Otherwise what the binding was made with could
/// be rolled back while the binding stayed: `enter_support`'s record in the tenant's trail, say
/// (an attacker's pass bound a support session and rolled its record back).
fn install(b: Binding) {
    let session = b.scope == Scope::Session;
    let replaced = BINDING.with(|slot| slot.borrow_mut().replace(b));
    if session {
        // SAFETY: reads the running transaction's state.
        let sub = unsafe { pg_sys::GetCurrentSubTransactionId() };
        MADE.with(|m| m.borrow_mut().push((sub, replaced)));
    }
}

/// Undo the session-scoped bindings made in the subtransaction `from` and after it (every one
/// of the transaction with `from` 0): the earliest one's predecessor is in force again.
fn undo_made(from: pg_sys::SubTransactionId) {
    let undone = MADE.with(|m| {
        let mut m = m.borrow_mut();
        let keep = m
            .iter()
            .position(|(sub, _)| *sub >= from)
            .unwrap_or(m.len());
        let first = m.drain(keep..).next();
        first
    });
    if let Some((_, replaced)) = undone {
        BINDING.with(|slot| *slot.borrow_mut() = replaced);
    }
}

#[track_caller]
fn no_tenant_bound() -> ! {
    no_tenant_bound_on(None)
}

/// ERROR 42501 "no tenant bound", naming the protected table the statement touched when known.
#[track_caller]
pub fn no_tenant_bound_on(table: Option<pg_sys::Oid>) -> ! {
    let message = match table {
        Some(t) => format!(
            "no tenant bound: table \"{}\" is protected",
            catalog::relation_name(t)
        ),
        None => "no tenant bound".to_string(),
    };
    Refusal::new(
        INSUFFICIENT_PRIVILEGE,
        message,
        "Call tenancy.bind(token) in this transaction before touching tenant data, or connect with a role mapped to one tenant.",
    )
    .code("no_tenant_bound")
    .raise()
}

/// Run `f` on the binding in force, or ERROR 42501 "no tenant bound".
pub fn with_required<R>(f: impl FnOnce(&Binding) -> R) -> R {
    with_current(|b| match b {
        Some(b) => f(b),
        None => no_tenant_bound(),
    })
}

/// The binding in force, or ERROR 42501 "no tenant bound".
#[track_caller]
pub fn require() -> Binding {
    current_if_bound().unwrap_or_else(|| no_tenant_bound())
}

/// The explicit (or internal) binding as it stands, without validation (for audit records).
pub fn peek() -> Option<Binding> {
    INTERNAL
        .with(|i| i.borrow().clone())
        .or_else(|| BINDING.with(|b| b.borrow().clone()))
}
