//! Tenant-role privileges on protected tables, checked twice, both once per statement:
//! - at executor start, by an `ExecutorCheckPerms_hook`, for every protected relation the
//!   statement reads or writes (so a refused statement or a missing binding is loud even when
//!   the table is empty and no policy expression would ever be evaluated);
//! - by the generated policies, through
//!   `tenant_id = tenancy.allowed_tenant('table'::regclass, 'privilege')` (planned as the bound
//!   tenant or a reserved executor parameter, `src/pg/binding_param.rs`), which is the guarantee: it holds
//!   even in a backend where this library was not loaded yet when the statement started (the
//!   hook is installed when the library loads). `tenancy.allows` is the same check answering
//!   true or raising, for SQL of your own.

use crate::catalog;
use crate::errors;
use pgrx::pg_sys;
use pgrx::prelude::*;

static mut PREV_CHECK_PERMS: pg_sys::ExecutorCheckPerms_hook_type = None;

pub fn init() {
    // SAFETY: called once from _PG_init; the previous hook is kept and called from ours.
    unsafe {
        PREV_CHECK_PERMS = pg_sys::ExecutorCheckPerms_hook;
        pg_sys::ExecutorCheckPerms_hook = Some(check_perms);
    }
}

/// With `ereport` false (PostgreSQL asks whether it may run a statement, without raising: in
/// PostgreSQL 15 only to pick how to validate a new foreign key), a protected relation is
/// answered `false`, never raised.
///
/// # Safety
/// Called by PostgreSQL as `ExecutorCheckPerms_hook`, with the statement's range table (a List
/// of RangeTblEntry, or null).
#[pg_guard]
unsafe extern "C-unwind" fn check_perms(range_table: *mut pg_sys::List, ereport: bool) -> bool {
    // SAFETY: PREV_CHECK_PERMS is written once by init, before any statement runs, on the
    // backend's only thread; it is copied out here.
    if let Some(prev) = unsafe { PREV_CHECK_PERMS } {
        // SAFETY: the hook installed before ours, called with our own arguments through the
        // FFI guard (its errors come back as a Rust panic, re-raised by #[pg_guard]).
        if !unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| prev(range_table, ereport)) } {
            return false;
        }
    }
    // EXPLAIN without ANALYZE starts the executor only to show the plan: nothing is read, so
    // an unbound session may see how its statement would run. (A statement that runs, EXPLAIN
    // ANALYZE included, is checked: its ExecutorStart has no EXPLAIN_ONLY flag.)
    // SAFETY: ParallelWorkerNumber is this process's own variable, read on its only thread.
    let parallel_worker = unsafe { pg_sys::ParallelWorkerNumber } >= 0;
    if range_table.is_null() || parallel_worker || crate::pg::binding_param::explain_only() {
        return true;
    }
    let mut checks: Vec<(pg_sys::Oid, u32)> = Vec::new();
    // SAFETY: `range_table` is the statement's range table (this function's contract), not
    // null (checked above): `elements` holds `length` cells, each a pointer to a
    // RangeTblEntry (checked for null before it is read). check_enable_rls reads the catalog
    // inside the statement's transaction, with noError = true.
    unsafe {
        for i in 0..(*range_table).length as usize {
            let rte = (*(*range_table).elements.add(i)).ptr_value as *mut pg_sys::RangeTblEntry;
            if rte.is_null() || (*rte).rtekind != pg_sys::RTEKind::RTE_RELATION {
                continue;
            }
            let perms = (*rte).requiredPerms
                & (pg_sys::ACL_SELECT
                    | pg_sys::ACL_INSERT
                    | pg_sys::ACL_UPDATE
                    | pg_sys::ACL_DELETE);
            if perms == 0 {
                continue;
            }
            // Every pair this relation needs was computed in this ExecutorStart (a plan with
            // the tenant folded in, checked before PostgreSQL checks permissions): there is
            // nothing left to check, whether row security applies to it or not (below), and
            // asking the catalog whether it does is most of this hook's cost.
            if ereport && all_computed_at_start((*rte).relid, perms) {
                continue;
            }
            // Row security decides who is subject to the policies (not superusers, not BYPASSRLS,
            // not a view owner's access through a non-security_invoker view owned by such a role).
            if pg_sys::check_enable_rls((*rte).relid, (*rte).checkAsUser, true)
                != pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
            {
                continue;
            }
            checks.push(((*rte).relid, perms));
        }
    }
    if checks.is_empty() {
        return true;
    }
    let Some(protected) = catalog::protected_relids() else {
        return true;
    };
    for (relid, perms) in checks {
        if !protected.contains(&u32::from(relid)) {
            continue;
        }
        for &(bit, name) in &PRIVILEGES {
            if perms & bit == 0 {
                continue;
            }
            if !ereport {
                // PostgreSQL asks without raising when it would validate a new foreign key
                // with one query (RI_Initial_Check), which row security would confine to the
                // bound tenant's rows, leaving the other tenants' rows unchecked: answer "no",
                // so that it checks every row one by one as the tables' owner.
                return false;
            }
            // A plan with the tenant folded in has just had this pair computed again, in this
            // ExecutorStart, before PostgreSQL checks permissions (src/pg/binding_param.rs).
            if crate::pg::binding_param::computed_at_start(relid, name).is_some() {
                continue;
            }
            // What `allows` checks, raising as it raises; the tenant is kept for the reserved
            // parameters this ExecutorStart compiles next (they would compute the same).
            let tenant = allowed_tenant_id(relid, name);
            crate::pg::binding_param::note_computed_at_start(relid, name, *tenant.as_bytes());
        }
    }
    true
}

/// The privileges checked, by their ACL bit.
const PRIVILEGES: [(pg_sys::AclMode, &str); 4] = [
    (pg_sys::ACL_SELECT, "select"),
    (pg_sys::ACL_INSERT, "insert"),
    (pg_sys::ACL_UPDATE, "update"),
    (pg_sys::ACL_DELETE, "delete"),
];

/// Whether each privilege of `perms` on `relid` was computed in the ExecutorStart running now.
fn all_computed_at_start(relid: pg_sys::Oid, perms: pg_sys::AclMode) -> bool {
    PRIVILEGES.iter().all(|(bit, name)| {
        perms & bit == 0 || crate::pg::binding_param::computed_at_start(relid, name).is_some()
    })
}

/// True when the bound roles hold `privilege` on `tbl`; otherwise ERROR 42501 naming the table
/// and the missing privilege (a refused statement is loud, never silently empty).
#[pg_extern(stable, parallel_restricted)]
fn allows(tbl: crate::pg::types::Regclass, privilege: &str) -> bool {
    let tbl = tbl.0;
    // Raised outside with_current: naming the table runs a query, which may reach the binding
    // again (hooks, invalidations) while with_current holds it.
    match crate::binding::with_current(|b| b.map(|b| permitted(b, tbl, privilege))) {
        Some(true) => true,
        Some(false) => refuse(tbl, privilege),
        None => crate::binding::no_tenant_bound_on(Some(tbl)),
    }
}

/// Whether the binding's roles (or its support grant) hold `privilege` on `tbl`. pg_tenancy's
/// own decommission binding may select and delete in the one table it empties (and its
/// partitions).
fn permitted(b: &crate::binding::Binding, tbl: pg_sys::Oid, privilege: &str) -> bool {
    if let crate::binding::Source::Decommission { table } = b.source {
        return matches!(privilege, "select" | "delete") && within(tbl, table);
    }
    match &b.support_privileges {
        Some(granted) => granted.iter().any(|p| p == privilege),
        None => catalog::roles_allow(&b.privileges, &b.roles, tbl, privilege),
    }
}

/// Whether `rel` is `table` or one of its partitions or inheritance children.
fn within(rel: pg_sys::Oid, table: pg_sys::Oid) -> bool {
    let mut r = rel;
    for _ in 0..64 {
        if r == table {
            return true;
        }
        match crate::catalog::parent_of(r) {
            Some(p) => r = p,
            None => return false,
        }
    }
    false
}

/// ERROR 42501 naming the table, the privilege and the bound roles, logged as a security event;
/// 22023 for a privilege that is none of the four (no grant could give it, so the 42501's hint,
/// a grant of it, would only fail in its turn).
fn refuse(tbl: pg_sys::Oid, privilege: &str) -> ! {
    if !PRIVILEGES.iter().any(|(_, p)| *p == privilege) {
        crate::errors::raise(
            crate::errors::INVALID_PARAMETER,
            format!("\"{privilege}\" is not a privilege pg_tenancy checks"),
            "The privileges are select, insert, update and delete.",
        );
    }
    let b = crate::binding::require();
    let table = crate::catalog::relation_name(tbl);
    let roles = if b.roles.is_empty() {
        "(none)".to_string()
    } else {
        b.roles.join(", ")
    };
    let hint = match (&b.subject, b.roles.is_empty(), &b.source) {
        (
            Some(subject),
            true,
            crate::binding::Source::Token {
                member: true,
                claim_roles: Some(_),
                ..
            },
        ) => format!(
            "The token's roles claim leaves subject \"{subject}\" no role it holds in tenant \"{}\"; issue a token whose roles claim names one of its roles (or none).",
            b.slug
        ),
        (Some(subject), true, crate::binding::Source::Token { .. }) => format!(
            "Subject \"{subject}\" holds no role in tenant \"{}\" (it is not a member, and the tenant sets no default_roles). A tenant admin can add it: SELECT tenancy.add_member('{}', '{subject}', 'member');",
            b.slug, b.slug
        ),
        _ => format!(
            "A tenant admin can grant it: SELECT tenancy.grant('{}', '<role>', '{table}', '{{{privilege}}}');",
            b.slug
        ),
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
        hint,
    )
}

/// The bound tenant when the bound roles hold `privilege` on `tbl`; otherwise ERROR 42501 as
/// [`allows`]. Every generated policy (restrictive and permissive alike, with the same
/// expression, in USING and WITH CHECK) compares the tenant column with it, so one evaluation per
/// table and command carries both the tenant and the privilege.
///
/// Called by the planner to estimate a policy's selectivity, in the statement whose planning
/// loaded this library (the first of a session without it preloaded; the hook that plans the
/// call otherwise was not installed yet), it refuses nothing: NULL where it would raise, which
/// matches no row and passes no check. An unbound EXPLAIN plans, and the statement, if it
/// runs, is refused when the executor starts (`ExecutorCheckPerms`, installed with the library).
/// Where no estimate called it first (a WITH CHECK option is not estimated), the library loads
/// while the statement runs and the rest of that statement gets the same NULLs: an unbound
/// INSERT is refused by the check failing rather than by "no tenant bound"; nothing is let
/// through either way.
///
/// The window lasts through the start of that statement when it is an EXPLAIN without
/// ANALYZE (the call left in a plan made before the library loaded, evaluated by initial
/// partition pruning): nothing runs, and an unbound session may see how its statement would run
/// (an attacker's pass met "no tenant bound" for the first EXPLAIN of a partitioned table in a
/// session). Outside that window a call always raises as above, also while another EXPLAIN
/// starts: only the reserved parameters compiled in an EXPLAIN's own plan answer there. The
/// window also ends with its transaction, and when it ends the backend's cached plans, made
/// without the planner hook, are planned again (`binding_param::end_window`).
#[pg_extern(stable, parallel_restricted)]
fn allowed_tenant(tbl: crate::pg::types::Regclass, privilege: &str) -> Option<pgrx::Uuid> {
    let tbl = tbl.0;
    if crate::pg::binding_param::loaded_while_planning() {
        if let Some(p) = ["select", "insert", "update", "delete"]
            .into_iter()
            .find(|p| *p == privilege)
        {
            return crate::pg::binding_param::answer_in_window(|| folded_value(tbl, p))
                .map(pgrx::Uuid::from_bytes);
        }
    }
    Some(allowed_tenant_id(tbl, privilege))
}

/// What `allowed_tenant` returns; also the value of its reserved parameter (`binding_param.rs`).
pub fn allowed_tenant_id(tbl: pg_sys::Oid, privilege: &str) -> pgrx::Uuid {
    // Raised outside with_current, as in [`allows`].
    match crate::binding::with_current(|b| {
        b.map(|b| permitted(b, tbl, privilege).then_some(b.tenant))
    }) {
        Some(Some(tenant)) => catalog::to_pg_uuid(tenant),
        Some(None) => refuse(tbl, privilege),
        None => crate::binding::no_tenant_bound_on(Some(tbl)),
    }
}

/// What [`allowed_tenant_id`] would return, or None where it would refuse (no binding, or the
/// privilege not granted): the constant a statement planned for one execution compares the
/// tenant column with (src/pg/binding_param.rs). Raises only where reading the binding raises.
pub fn folded_value(tbl: pg_sys::Oid, privilege: &'static str) -> Option<[u8; 16]> {
    crate::binding::with_current(|b| {
        b.and_then(|b| permitted(b, tbl, privilege).then_some(b.tenant))
    })
    .map(|t| *catalog::to_pg_uuid(t).as_bytes())
}

/// [`allowed_tenant_id`] as the reserved parameters' value (src/pg/binding_param.rs).
pub fn reserved_value(tbl: pg_sys::Oid, privilege: &'static str) -> [u8; 16] {
    *allowed_tenant_id(tbl, privilege).as_bytes()
}
