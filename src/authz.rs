//! Who may call what, answered in one place.
//!
//! - Operators (`tenancy_operator`): tenants, role mappings, protection, cross-tenant metadata.
//! - Key admins (`tenancy_key_admin`): signing keys. Separation of duties: a role that is both
//!   (other than a superuser) may act as neither, so no single non-superuser role both mints
//!   credentials and manages who gets into a tenant.
//! - Tenant admins: a session bound to a tenant with its `admin` role (not a support binding),
//!   for that tenant only.
//!
//! Membership counts however it was granted: NOINHERIT members, who reach the role's privileges
//! only through `SET ROLE`, are members all the same (`is_member_of_role`). Once a tenant has an
//! admin, widening access inside it (members, privileges, `default_roles`, role mappings) is
//! for its admins, not for operators ([`require_may_widen`]).

use crate::errors::{self, INSUFFICIENT_PRIVILEGE};
use pgrx::pg_sys;
use std::rc::Rc;

pub const OPERATOR_ROLE: &str = "tenancy_operator";
pub const KEY_ADMIN_ROLE: &str = "tenancy_key_admin";

/// Name of a role, or its oid when it no longer exists.
/// The role's name as `regrole` input reads it (quoted where needed), for a single-row INSERT
/// into a reference table that names a role (`$1::text::regrole`): Citus prints the value by
/// name and each node reads its own oid for it (`rbac::delete_mapping` says why never an oid).
pub fn role_input(oid: pg_sys::Oid) -> String {
    crate::catalog::quote_ident(&role_name(oid))
}

/// Whether a role with this oid exists.
pub fn role_exists(oid: pg_sys::Oid) -> bool {
    // SAFETY: a syscache lookup by oid, missing_ok; the name is not kept.
    !unsafe { pg_sys::GetUserNameFromId(oid, true) }.is_null()
}

/// Lock `role` against `DROP ROLE` until the transaction ends (as PostgreSQL locks a role it
/// records a dependency on), and refuse (42704) if it was dropped meanwhile. A mapping or a
/// support grant made while a `DROP ROLE` of the role ran was left to a role that no longer
/// existed (an attacker's pass): `DROP ROLE` locks the role first, and pg_tenancy's hook before
/// it reads the role's mappings under the same lock.
pub fn lock_role(role: pg_sys::Oid) {
    // SAFETY: a transaction-level lock of a shared object by its catalog and oid (processes the
    // invalidations of what it waited for); GetUserNameFromId with noerr returns NULL for a
    // role that no longer exists, or a palloc'd name.
    let gone = unsafe {
        pg_sys::LockSharedObject(
            pg_sys::AuthIdRelationId,
            role,
            0,
            pg_sys::AccessShareLock as pg_sys::LOCKMODE,
        );
        pg_sys::GetUserNameFromId(role, true).is_null()
    };
    if gone {
        errors::raise(
            errors::UNDEFINED_OBJECT,
            format!("role with OID {} does not exist", role.to_u32()),
            "It was dropped while this call ran.",
        );
    }
}

pub fn role_name(oid: pg_sys::Oid) -> String {
    // SAFETY: a syscache lookup by oid; the returned name is copied before anything else runs.
    unsafe {
        let p = pg_sys::GetUserNameFromId(oid, true);
        if p.is_null() {
            format!("{}", u32::from(oid))
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

fn role_oid(name: &std::ffi::CStr) -> pg_sys::Oid {
    // SAFETY: a syscache lookup by name that returns InvalidOid when the role is missing.
    unsafe { pg_sys::get_role_oid(name.as_ptr(), true) }
}

/// The role the calling SQL runs as (functions of pg_tenancy are SECURITY INVOKER).
pub fn caller() -> pg_sys::Oid {
    crate::pg::unguarded::user_id()
}

/// The login role of this session.
pub fn session_user() -> pg_sys::Oid {
    crate::pg::unguarded::session_user_id()
}

/// Whether `role` has LOGIN.
pub fn can_login(role: pg_sys::Oid) -> bool {
    // SAFETY: a syscache lookup whose tuple is released before returning.
    unsafe {
        let tup = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::AUTHOID as i32,
            pg_sys::Datum::from(role),
        );
        if tup.is_null() {
            return false;
        }
        let login = (*(pg_sys::GETSTRUCT(tup) as *mut pg_sys::FormData_pg_authid)).rolcanlogin;
        pg_sys::ReleaseSysCache(tup);
        login
    }
}

pub fn is_superuser(role: pg_sys::Oid) -> bool {
    // SAFETY: a syscache lookup by oid.
    unsafe { pg_sys::superuser_arg(role) }
}

/// Whether `role` is a member of `group`, directly or through other roles, whether or not it
/// inherits the group's privileges (superusers are members of every role).
fn member_of(role: pg_sys::Oid, group: &std::ffi::CStr) -> bool {
    let g = role_oid(group);
    // SAFETY: membership lookup through the syscache.
    g != pg_sys::InvalidOid && unsafe { pg_sys::is_member_of_role(role, g) }
}

/// Superusers and members of tenancy_operator (NOINHERIT members included).
pub fn is_operator(role: pg_sys::Oid) -> bool {
    is_superuser(role) || member_of(role, c"tenancy_operator")
}

/// Superusers and members of tenancy_key_admin (NOINHERIT members included).
pub fn is_key_admin(role: pg_sys::Oid) -> bool {
    is_superuser(role) || member_of(role, c"tenancy_key_admin")
}

/// A non-superuser platform role (operator or key admin): it never reads tenant rows, so it
/// never binds with a token or a role mapping, and no binding is in effect while it is the
/// current or the session role.
pub fn is_platform_role(role: pg_sys::Oid) -> bool {
    !is_superuser(role) && (is_operator(role) || is_key_admin(role))
}

fn refuse_management(action: &str, message: String, hint: String) -> ! {
    let mut f = serde_json::Map::new();
    f.insert("action".into(), action.into());
    errors::refuse(
        "management_refused",
        f,
        INSUFFICIENT_PRIVILEGE,
        message,
        hint,
    )
}

/// Refuse unless the caller is an operator and not also a key admin.
pub fn require_operator(action: &str) {
    let who = caller();
    if !is_operator(who) {
        refuse_management(
            action,
            format!(
                "permission denied: {action} is for platform operators, and role \"{}\" is not one",
                role_name(who)
            ),
            format!("Run it as a member of {OPERATOR_ROLE}: GRANT {OPERATOR_ROLE} TO <role>;"),
        );
    }
    refuse_both_duties(action, who);
}

/// Refuse unless the caller is an operator or has the privileges of `pg_monitor` (a metrics
/// scraper: it reads counts and tenants' slugs, never a row, and manages nothing).
pub fn require_operator_or_monitor(action: &str) {
    let who = caller();
    if is_monitor(who) {
        return;
    }
    if !is_operator(who) {
        refuse_management(
            action,
            format!(
                "permission denied: {action} is for platform operators and monitoring roles, and role \"{}\" is neither",
                role_name(who)
            ),
            format!("Run it as a member of {OPERATOR_ROLE} or of pg_monitor: GRANT pg_monitor TO <role>;"),
        );
    }
    require_operator(action);
}

/// Whether `role` has the privileges of `pg_monitor` (superusers have every role's).
pub fn is_monitor(role: pg_sys::Oid) -> bool {
    let monitor = role_oid(c"pg_monitor");
    // SAFETY: privilege lookup through the syscache.
    monitor != pg_sys::InvalidOid && unsafe { pg_sys::has_privs_of_role(role, monitor) }
}

/// Refuse unless the caller is a key admin and not also an operator.
pub fn require_key_admin(action: &str) {
    let who = caller();
    if !is_key_admin(who) {
        refuse_management(
            action,
            format!(
                "permission denied: {action} is for key admins, and role \"{}\" is not one",
                role_name(who)
            ),
            format!(
                "Signing keys are registered by members of {KEY_ADMIN_ROLE}, which operators are not: GRANT {KEY_ADMIN_ROLE} TO <role>;"
            ),
        );
    }
    refuse_both_duties(action, who);
}

/// Whether `role` can make itself a member of `group`: CREATEROLE grants any non-superuser
/// role in PostgreSQL 15, ADMIN OPTION grants that one (also held through a membership:
/// PostgreSQL's own check follows them).
fn can_join(role: pg_sys::Oid, group: &std::ffi::CStr) -> bool {
    let g = role_oid(group);
    // SAFETY: a privilege lookup through the syscache.
    g != pg_sys::InvalidOid
        && (unsafe { pg_sys::is_admin_of_role(role, g) } || can_create_roles(role))
}

/// Whether `role` has CREATEROLE or can take it: PostgreSQL 15 lets a member SET ROLE to any
/// role it belongs to, directly or through others, whatever INHERIT says, and a CREATEROLE
/// role reached so grants any non-superuser role (a superuser role reached so, anything). The memberships are read with
/// `pg_has_role(..., 'MEMBER')`, PostgreSQL's own test of them; schema-qualified, no operator.
/// An error reading them counts as yes.
fn can_create_roles(role: pg_sys::Oid) -> bool {
    // SAFETY: a privilege lookup through the syscache.
    let own = unsafe { pg_sys::has_createrole_privilege(role) };
    own || crate::catalog::read_one::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_roles c \
              WHERE (c.rolcreaterole OR c.rolsuper) AND pg_catalog.pg_has_role($1, c.oid, 'MEMBER'))",
        &[role.into()],
    )
    .unwrap_or(true)
}

/// Separation of duties: refuse a caller that holds, or can give itself, both duties: the
/// current role or the session's login role (which can SET ROLE back and forth), when not a
/// superuser.
fn refuse_both_duties(action: &str, who: pg_sys::Oid) {
    for role in [who, session_user()] {
        if is_superuser(role) {
            continue;
        }
        let operator = is_operator(role) || can_join(role, c"tenancy_operator");
        let key_admin = is_key_admin(role) || can_join(role, c"tenancy_key_admin");
        if (is_operator(role) || is_key_admin(role)) && operator && key_admin {
            refuse_management(
                action,
                format!(
                    "permission denied: role \"{}\" is, or can make itself, both a platform operator and a key admin",
                    role_name(role)
                ),
                format!(
                    "Separation of duties: whoever registers signing keys must not manage tenants' access. Keep the role in one of {OPERATOR_ROLE} and {KEY_ADMIN_ROLE}, without CREATEROLE (its own, or a role's it belongs to) and without ADMIN OPTION on the other."
                ),
            );
        }
    }
}

/// What the binding in force says, for the decisions here and for everything below the binding
/// pillar (the audit trail's subject, security events' tenant). The binding pillar provides it
/// at _PG_init ([`provide_acting`]).
#[derive(Clone, Debug)]
pub struct Acting {
    pub tenant: uuid::Uuid,
    pub subject: Option<String>,
    pub roles: Vec<String>,
    /// An operator's support binding (tenancy.enter_support), not the tenant's own.
    pub support: bool,
}

/// How the binding pillar answers: checked (the binding validated as on every statement) and
/// unchecked (as it stands, for reports that must never raise).
#[derive(Clone, Copy)]
pub struct ActingProvider {
    pub checked: fn() -> Option<Acting>,
    pub unchecked: fn() -> Option<Acting>,
    /// The tenant of `unchecked`, copying nothing else (for every statement's telemetry).
    pub tenant: fn() -> Option<uuid::Uuid>,
    /// The subject the running transaction acts for (see [`transaction_subject`]).
    pub transaction_subject: fn() -> Option<Option<String>>,
}

thread_local! {
    static ACTING: std::cell::Cell<Option<ActingProvider>> = const { std::cell::Cell::new(None) };
}

/// Set at _PG_init by the binding pillar.
pub fn provide_acting(p: ActingProvider) {
    ACTING.with(|a| a.set(Some(p)));
}

/// The binding in force, checked; None when unbound.
pub fn acting() -> Option<Acting> {
    ACTING.with(|a| a.get()).and_then(|p| (p.checked)())
}

/// The binding in force as it stands, not checked (never raises).
pub fn acting_unchecked() -> Option<Acting> {
    ACTING.with(|a| a.get()).and_then(|p| (p.unchecked)())
}

/// The subject the running transaction acts for, fixed at its first use of a binding: a
/// transaction acts for one subject, and its records name that one even where the statement that
/// wrote also ended the binding. None when it has used no binding.
pub fn transaction_subject() -> Option<Option<String>> {
    ACTING
        .with(|a| a.get())
        .and_then(|p| (p.transaction_subject)())
}

/// The tenant of the binding in force as it stands, not checked (never raises; cheap).
pub fn acting_tenant_unchecked() -> Option<uuid::Uuid> {
    ACTING.with(|a| a.get()).and_then(|p| (p.tenant)())
}

/// The tenant whose admin the binding in force makes the caller: bound to it with its `admin`
/// role, not through a support grant. The one answer to "is a tenant admin" for everyone.
pub fn admin_of() -> Option<uuid::Uuid> {
    acting()
        .filter(|a| !a.support && a.roles.iter().any(|r| r == "admin"))
        .map(|a| a.tenant)
}

/// Whether the binding in force makes the caller an admin of `tenant`.
pub fn is_tenant_admin(tenant: uuid::Uuid) -> bool {
    admin_of() == Some(tenant)
}

/// Whether the caller may manage `tenant`: an operator, or that tenant's admin.
pub fn manages_tenant(tenant: uuid::Uuid) -> bool {
    is_operator(caller()) || is_tenant_admin(tenant)
}

/// Refuse unless the caller is an operator or an admin bound to `tenant`.
pub fn require_operator_or_tenant_admin(action: &str, tenant: &crate::catalog::TenantRow) {
    if is_tenant_admin(tenant.id) {
        return;
    }
    let who = caller();
    if is_operator(who) {
        refuse_both_duties(action, who);
        return;
    }
    refuse_not_manager(action, &tenant.slug);
}

/// The tenant `reference` (a slug or a uuid) names, for a call that only an operator or that
/// tenant's admin may make: [`require_operator_or_tenant_admin`], with the lookup inside it.
/// Which tenants exist is the platform's to know (`tenancy.tenants` shows a tenant admin its
/// own tenant only), so the refusal must not tell: [`tenant_for_manager`].
pub fn require_manageable_tenant(action: &str, reference: &str) -> Rc<crate::catalog::TenantRow> {
    let who = caller();
    let operator = is_operator(who);
    let t = tenant_for_manager(reference, operator, |shown| {
        refuse_not_manager(action, shown)
    });
    if operator && !is_tenant_admin(t.id) {
        refuse_both_duties(action, who);
    }
    t
}

/// The tenant `reference` names, when the caller may act on it: `operator` (the caller is
/// one), or the binding in force makes it the tenant's admin. Anyone else is refused by
/// `refuse`, which is given the reference exactly as the caller wrote it, for a tenant that
/// is not theirs and for one that does not exist alike: the same SQLSTATE (42501) and the same
/// words, so that neither the error nor its text tells whether a slug is taken, nor which slug
/// a uuid belongs to. Only an operator, who may list every tenant, hears 42704 for an unknown
/// tenant.
pub fn tenant_for_manager(
    reference: &str,
    operator: bool,
    refuse: impl FnOnce(&str),
) -> Rc<crate::catalog::TenantRow> {
    match crate::catalog::tenant_by_ref(reference) {
        Some(t) if operator || is_tenant_admin(t.id) => t,
        None if operator => crate::catalog::require_tenant(reference),
        _ => {
            refuse(reference);
            unreachable!("a refusal returned")
        }
    }
}

/// The refusal of a tenant's management to a caller who is neither an operator nor the
/// tenant's admin. `shown` is the tenant as the caller named it.
fn refuse_not_manager(action: &str, shown: &str) -> ! {
    let mut f = serde_json::Map::new();
    f.insert("action".into(), action.into());
    f.insert("tenant".into(), shown.into());
    errors::refuse(
        "management_refused",
        f,
        INSUFFICIENT_PRIVILEGE,
        format!("permission denied: {action} on tenant \"{shown}\" needs an operator or that tenant's admin"),
        "Bind a token of an admin of this tenant, or run it as a member of tenancy_operator.",
    )
}

/// For calls that widen access inside a tenant (new members, new privileges, `default_roles`,
/// role mappings): the tenant's admins may; operators only while the tenant has no admin yet
/// (to seat its first one), so that no operator can give itself or anyone a tenant's rows once
/// the tenant manages its own access. Superusers may always (they bypass everything anyway).
/// Whether the caller may widen access inside `tenant`: its admin, a superuser, or an operator
/// while the tenant has no admin.
pub fn may_widen(tenant: &crate::catalog::TenantRow) -> bool {
    is_tenant_admin(tenant.id) || is_superuser(caller()) || !crate::catalog::has_admin(tenant.id)
}

/// Removing `role`'s mappings to `removing` would leave it mapped to one tenant, where it is
/// then bound without a token: a widening inside that tenant, refused to a caller who may not
/// widen there ([`require_may_widen`]). Used by every removal of mappings (`unmap_role`,
/// `decommission_tenant`). The rows of every tenant the role is mapped to, and of the ones
/// removed, are locked first (in id order, until the transaction ends; every change of a
/// tenant's mappings takes its tenant's lock), and the mappings are read after the locks with
/// a fresh snapshot: a concurrent removal of another of its mappings either committed before
/// (and is seen) or waits for this one (and sees it). The mappings' own rows were locked
/// instead (`FOR UPDATE`), which a removal that rewrites a tenant's mappings (`delete_mapping`
/// deletes rows and writes another role's back) let a waiting session skip: two concurrent
/// unmappings then each saw the other's role mapping gone and left a role mapped to a tenant
/// with an admin alone (an attacker's pass).
pub fn require_no_tokenless_binding(action: &str, role: pg_sys::Oid, removing: &[uuid::Uuid]) {
    let read = || -> Vec<uuid::Uuid> {
        crate::catalog::owner_rows(
            "tenancy.role_mapping",
            "SELECT m.tenant_id FROM tenancy.role_mapping m \
              WHERE m.role::pg_catalog.oid OPERATOR(pg_catalog.=) $1 ORDER BY 1",
            &[role.into()],
            |r| r.get::<pgrx::Uuid>(1),
        )
        .into_iter()
        .flatten()
        .map(|u| crate::catalog::from_pg_uuid(&u))
        .collect()
    };
    let mut lock: Vec<uuid::Uuid> = read();
    lock.extend_from_slice(removing);
    lock.sort();
    lock.dedup();
    for t in lock {
        crate::catalog::lock_tenant_row(t);
    }
    let mapped = read();
    let left: Vec<uuid::Uuid> = mapped
        .into_iter()
        .filter(|t| !removing.contains(t))
        .collect();
    if let [only] = left.as_slice() {
        if let Some(t) = crate::catalog::tenant_by_id(*only) {
            require_may_widen(
                &format!(
                    "{action}: role \"{}\" would be left mapped to \"{}\" alone, and bound there without a token",
                    role_name(role),
                    t.slug
                ),
                &t,
            );
        }
    }
}

pub fn require_may_widen(action: &str, tenant: &crate::catalog::TenantRow) {
    require_operator_or_tenant_admin(action, tenant);
    if may_widen(tenant) {
        return;
    }
    {
        let mut f = serde_json::Map::new();
        f.insert("action".into(), action.into());
        f.insert("tenant".into(), tenant.slug.clone().into());
        errors::refuse(
            "management_refused",
            f,
            INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied: tenant \"{}\" has an admin, and operators cannot widen access inside it ({action})",
                tenant.slug
            ),
            "Once a tenant has an admin, its admins add members, grant privileges and set default_roles; operators can only narrow access (remove_member, revoke, revoke_subject).",
        );
    }
}
