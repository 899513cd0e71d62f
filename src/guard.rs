//! The guard: the database refuses DDL that would weaken a protected table (disabling or
//! un-forcing row security, dropping, altering or adding policies, dropping or changing the
//! tenant column, disabling pg_tenancy's triggers), except through tenancy.protect/unprotect.
//!
//! Event triggers at ddl_command_end (ALTER TABLE, CREATE/ALTER POLICY, triggers) and sql_drop
//! (dropped policies, triggers, columns) call `_guard_check(tables)` with the tables the command
//! touched; it recomputes their protection-state digest and refuses the command when one
//! differs from the recorded digest. The same check refuses relations that get around row
//! security without touching the table: temporary relations that shadow a protected table's
//! name, and materialized views that store its rows. Event
//! triggers fire for every role, whether or not this library is loaded in the session, and
//! the error rolls the command back.

use crate::catalog;
use crate::errors;
use pgrx::prelude::*;

/// Refuse the running DDL command when one of the protected tables it touched no longer has
/// the protection state recorded for it.
/// Only inside a DDL command (`pg_event_trigger_ddl_commands()` refuses to run elsewhere).
#[pg_extern(volatile, parallel_unsafe, name = "_guard_check")]
fn guard_check(touched: Vec<Option<pgrx::pg_sys::Oid>>) {
    // Raises "can only be called in an event trigger function" outside a DDL command.
    catalog::read_one::<i64>(
        "SELECT count(*) FROM pg_catalog.pg_event_trigger_ddl_commands()",
        &[],
    );
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
    refuse_shadows_and_copies(&touched);
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

/// Two ways around row security that need no change to the protected table itself:
/// - a temporary relation named like a protected table shadows it (pg_temp is searched first).
///   Behind a connection pooler it outlives the transaction that created it, so the next
///   client's unqualified reads and writes on that server connection would go to it;
/// - a materialized view stores the rows its creator could see, and has no row security.
fn refuse_shadows_and_copies(touched: &[Option<pgrx::pg_sys::Oid>]) {
    let found: Option<(String, String, bool)> = catalog::with_owner(|| {
        Spi::connect(|c| {
            let t = c.select(
                "SELECT c.oid::regclass::text, p.relid::regclass::text, true \
                   FROM pg_class c \
                   JOIN pg_class pc ON pc.relname = c.relname AND pc.oid <> c.oid \
                   JOIN tenancy.protected_table p ON p.relid = pc.oid \
                  WHERE c.oid = ANY ($1) AND c.relpersistence = 't' \
                 UNION ALL \
                 (WITH RECURSIVE reads(mv, rel) AS ( \
                      SELECT c.oid, d.refobjid FROM pg_class c \
                        JOIN pg_rewrite rw ON rw.ev_class = c.oid \
                        JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid \
                                        AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> c.oid \
                       WHERE c.oid = ANY ($1) AND c.relkind = 'm' \
                      UNION \
                      SELECT r.mv, d.refobjid FROM reads r \
                        JOIN pg_class v ON v.oid = r.rel AND v.relkind = 'v' \
                        JOIN pg_rewrite rw ON rw.ev_class = v.oid \
                        JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid \
                                        AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> v.oid) \
                  SELECT r.mv::regclass::text, r.rel::regclass::text, false \
                    FROM reads r JOIN tenancy.protected_table p ON p.relid = r.rel) \
                 LIMIT 1",
                None,
                &[touched.to_vec().into()],
            )?;
            let mut out = None;
            for r in t {
                out = Some((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<String>(2)?.unwrap_or_default(),
                    r.get::<bool>(3)?.unwrap_or_default(),
                ));
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: guard check failed: {e}"));
    let Some((relation, table, shadow)) = found else {
        return;
    };
    let mut f = serde_json::Map::new();
    f.insert("relation".into(), relation.clone().into());
    f.insert("table".into(), table.clone().into());
    if shadow {
        errors::refuse(
            "guard_refused",
            f,
            errors::INSUFFICIENT_PRIVILEGE,
            format!("temporary relation \"{relation}\" would shadow protected table \"{table}\""),
            "A temporary relation outlives the transaction on a pooled connection and would capture \
             the next client's unqualified reads and writes. Choose another name.",
        );
    }
    errors::refuse(
        "guard_refused",
        f,
        errors::INSUFFICIENT_PRIVILEGE,
        format!("materialized view \"{relation}\" would store rows of protected table \"{table}\" without row security"),
        "Use a view WITH (security_invoker = true), or a protected table that the application fills.",
    );
}

/// sql_drop: forget protected tables that were dropped. Only in a sql_drop event trigger
/// (`pg_event_trigger_dropped_objects()` refuses to run elsewhere), and it writes (so every
/// backend's cache is invalidated) only when a protected table is in fact gone.
#[pg_extern(volatile, parallel_unsafe, name = "_forget_dropped")]
fn forget_dropped() {
    // Raises "can only be called in a sql_drop event trigger function" anywhere else.
    let dropped_tables = catalog::read_one::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_event_trigger_dropped_objects() WHERE object_type = 'table')",
        &[],
    )
    .unwrap_or(false);
    if !dropped_tables {
        return;
    }
    let gone = catalog::owner_rows(
        "tenancy.protected_table",
        "SELECT EXISTS (SELECT FROM tenancy.protected_table p WHERE NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = p.relid))",
        &[],
        |r| Ok(r.get::<bool>(1)?.unwrap_or(false)),
    );
    if gone.first() == Some(&true) {
        catalog::write(
            "DELETE FROM tenancy.protected_table p WHERE NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = p.relid)",
            &[],
        );
    }
}
