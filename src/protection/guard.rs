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
        "SELECT pg_catalog.count(*) FROM pg_catalog.pg_event_trigger_ddl_commands()",
        &[],
    );
    if crate::protection::policy::guard_stands_aside() {
        return;
    }
    // On a Citus worker: functions that the shards of protected tables run (CREATE FUNCTION,
    // ALTER FUNCTION, ALTER ROUTINE; they touch no table).
    crate::citus::guard::refuse_function_changes();
    if touched.iter().all(Option::is_none) {
        return;
    }
    refuse_while_sql_objects_lag(&touched);
    // On Citus: the shards of protected tables, and their shells on the workers.
    crate::citus::guard::refuse_drift(&touched);
    if crate::pg::citus::in_database() {
        // A protected Citus table given to another owner: Citus builds its moved shards as
        // that owner.
        crate::citus::trail::grant_new_owners(&touched);
    }
    // With a snapshot taken now, not the transaction's: a table's owner whose REPEATABLE READ
    // transaction began before protect() committed did not see the table's record, and turned
    // its FORCE ROW LEVEL SECURITY off after it (a reviewer's pass, reproduced).
    let drifted: Vec<String> = catalog::with_owner_reading_locally(|| {
        Spi::connect(|_| {
            catalog::fresh_select(
                "SELECT p.relid::text FROM tenancy.protected_table p \
                  WHERE p.relid::oid = ANY ($1) AND EXISTS (SELECT FROM pg_class WHERE oid = p.relid) \
                    AND p.policy_digest IS DISTINCT FROM tenancy._protection_digest(p.relid, p.tenant_column) \
                  ORDER BY 1",
                None,
                &[touched.clone().into()],
                |r| Ok(r.get::<String>(1)?.unwrap_or_default()),
            )
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

/// Between installing this library and `ALTER EXTENSION pg_tenancy UPDATE` (see
/// [`unwatched_by_older_event_triggers`]): a role other than a superuser may not change a
/// protected table's triggers or columns through a command the older event triggers let start
/// unchecked. Run at `ddl_command_end`, which fires whether or not the library was loaded when
/// the command started; the error rolls the command back.
fn refuse_while_sql_objects_lag(touched: &[Option<pg_sys::Oid>]) {
    if crate::authz::is_superuser(crate::authz::caller()) {
        return;
    }
    let tag = catalog::read_one::<String>(
        "SELECT pg_catalog.string_agg(DISTINCT command_tag, ',') FROM pg_catalog.pg_event_trigger_ddl_commands()",
        &[],
    )
    .unwrap_or_default();
    if !tag.split(',').any(|t| {
        matches!(
            t,
            "CREATE TRIGGER" | "ALTER VIEW" | "ALTER MATERIALIZED VIEW"
        )
    }) {
        return;
    }
    let Some(protected) = catalog::protected_relids() else {
        return;
    };
    let Some(table) = touched
        .iter()
        .flatten()
        .find(|t| protected.contains(&u32::from(**t)))
    else {
        return;
    };
    if !catalog::sql_objects_of_another_version() {
        return;
    }
    let name = catalog::relation_name(*table);
    errors::raise(
        errors::NOT_IN_PREREQUISITE_STATE,
        format!(
            "pg_tenancy's objects in this database are of another version than its library: \"{tag}\" on protected table \"{name}\" waits for the update"
        ),
        "A superuser runs ALTER EXTENSION pg_tenancy UPDATE; in this database; then run the command again.",
    );
}

/// After CREATE TABLE and ALTER TABLE (ddl_command_end, once new tables are auto-protected):
/// - a protected table may not have an unprotected parent (multiple inheritance, `CREATE TABLE
///   c () INHERITS (protected, unprotected)`): the unprotected parent's queries read its rows;
/// - a table created protected (a partition or child of a protected table, or in a schema of
///   auto_protect) may not bring a user's code that would see every tenant's writes (CHECK
///   constraints, index and statistics expressions, its partition key, column types): see
///   [`stored_leaky_call`]. It is empty, so built-in functions that are not LEAKPROOF pass.
///
/// Superusers (a trusted migration role) pass; verify() reports what they leave.
/// Only inside a DDL command (`pg_event_trigger_ddl_commands()` refuses to run elsewhere).
#[pg_extern(volatile, parallel_unsafe, name = "_guard_members")]
fn guard_members(touched: Vec<Option<pgrx::pg_sys::Oid>>, created: Vec<Option<pgrx::pg_sys::Oid>>) {
    catalog::read_one::<i64>(
        "SELECT pg_catalog.count(*) FROM pg_catalog.pg_event_trigger_ddl_commands()",
        &[],
    );
    if crate::protection::policy::guard_stands_aside()
        || crate::authz::is_superuser(crate::authz::caller())
    {
        return;
    }
    let orphans = catalog::owner_rows(
        "tenancy.protected_table",
        "SELECT i.inhrelid, i.inhparent FROM pg_catalog.pg_inherits i \
           JOIN tenancy.protected_table p ON p.relid = i.inhrelid \
          WHERE i.inhrelid = ANY ($1) \
            AND NOT EXISTS (SELECT FROM tenancy.protected_table q WHERE q.relid = i.inhparent) \
          LIMIT 1",
        &[touched.clone().into()],
        |r| {
            Ok((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
            ))
        },
    );
    if let Some(&(child, parent)) = orphans.first() {
        refuse_channel(
            child,
            format!(
                "protected table \"{}\" cannot inherit from unprotected table \"{}\"",
                crate::catalog::relation_name(child),
                crate::catalog::relation_name(parent)
            ),
            format!(
                "A parent's queries read its children's rows under the parent's policies only. Have an operator protect the parent first: SELECT tenancy.protect({});",
                crate::catalog::quote_literal(&crate::catalog::relation_name(parent))
            ),
        );
    }
    let created: Vec<pg_sys::Oid> = created.into_iter().flatten().collect();
    let protected = catalog::owner_rows(
        "tenancy.protected_table",
        "SELECT relid::oid FROM tenancy.protected_table WHERE relid::oid = ANY ($1) ORDER BY 1",
        &[created.into()],
        |r| Ok(r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid)),
    );
    for rel in protected {
        refuse_what_a_member_brings(rel, false);
    }
    refuse_writing_foreign_keys(&touched.into_iter().flatten().collect::<Vec<_>>(), None);
}

/// Whether relation `rel` is UNLOGGED.
pub(crate) fn unlogged(rel: pg_sys::Oid) -> bool {
    // SAFETY: a syscache lookup of the relation's row (it raises for a relation that does not
    // exist, which the callers' relations do), inside the caller's transaction.
    unsafe {
        pg_sys::get_rel_persistence(rel) == pg_sys::RELPERSISTENCE_UNLOGGED as std::ffi::c_char
    }
}

/// Refuse a protected table (or one becoming protected) that is UNLOGGED: crash recovery
/// empties it, and a standby promoted in a failover has none of its rows, with no record in
/// any tenant's trail.
pub(crate) fn refuse_unlogged(rel: pg_sys::Oid) -> ! {
    refuse_channel(
        rel,
        format!(
            "protected table \"{}\" cannot be UNLOGGED: a crash or a failover would empty every tenant's rows with no record in their trails",
            crate::catalog::relation_name(rel)
        ),
        "Keep protected tables logged (ALTER TABLE ... SET LOGGED); load data through an unprotected staging table instead.",
    )
}

/// A foreign key of a protected table among `rels` whose referential action writes (`ON
/// UPDATE` / `ON DELETE` `CASCADE`, `SET NULL`, `SET DEFAULT`) is refused to a role that is
/// not a superuser, unless it references a protected table with the tenant column in its key
/// (then a referenced row's change reaches only its own tenant's rows). PostgreSQL runs a
/// referential action as the referencing table's owner with no row security
/// (`SECURITY_NOFORCE_RLS` in `ri_triggers.c`): from a table the owner writes, a key's update
/// rewrote every tenant's rows, moved them between tenants through the tenant column, or
/// deleted them, and the owner's own trigger on the protected table copied each row it
/// rewrote (an attacker's pass, as the table's unbound owner). Checked when the command that
/// made the key ends (`ddl_command_end`: ALTER TABLE ... ADD CONSTRAINT, ADD COLUMN ...
/// REFERENCES, a protected table created with one), and for a table joining a protected parent.
/// verify() reports what a superuser leaves (`fk_cascade_from_shared_table`). `joining`: None,
/// only the protected tables among `rels` (after the command); else `rels` are about to join a
/// protected parent whose tenant column this is.
pub(crate) fn refuse_writing_foreign_keys(rels: &[pg_sys::Oid], joining: Option<&str>) {
    if rels.is_empty() {
        return;
    }
    let found = catalog::owner_rows(
        "the protected tables' foreign keys",
        "SELECT con.conrelid, con.conname::pg_catalog.text, con.confrelid \
           FROM pg_catalog.pg_constraint con LEFT JOIN tenancy.protected_table p ON p.relid = con.conrelid \
          WHERE con.conrelid = ANY ($1) AND con.contype = 'f' AND (p.relid IS NOT NULL OR $2::pg_catalog.name IS NOT NULL) \
            AND (con.confupdtype IN ('c', 'n', 'd') OR con.confdeltype IN ('c', 'n', 'd')) \
            AND NOT EXISTS ( \
                  SELECT FROM ROWS FROM (pg_catalog.unnest(con.conkey), pg_catalog.unnest(con.confkey)) k(c, f) \
                    JOIN pg_catalog.pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.c \
                    JOIN pg_catalog.pg_attribute b ON b.attrelid = con.confrelid AND b.attnum = k.f \
                    JOIN tenancy.protected_table q ON q.relid = con.confrelid \
                   WHERE a.attname = COALESCE(p.tenant_column, $2::pg_catalog.name) \
                     AND b.attname = q.tenant_column) \
          ORDER BY 1, 2 LIMIT 1",
        &[rels.to_vec().into(), joining.into()],
        |r| {
            Ok((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<pg_sys::Oid>(3)?.unwrap_or(pg_sys::InvalidOid),
            ))
        },
    );
    if let Some((rel, name, parent)) = found.into_iter().next() {
        refuse_channel(
            rel,
            format!(
                "foreign key \"{name}\" of protected table \"{}\" would rewrite or delete every tenant's rows when rows of \"{}\" change: PostgreSQL runs its referential action with no row security",
                crate::catalog::relation_name(rel),
                crate::catalog::relation_name(parent)
            ),
            "Use ON UPDATE / ON DELETE NO ACTION or RESTRICT, or reference a protected table with the tenant column in the key (FOREIGN KEY (tenant_id, ...) REFERENCES parent (tenant_id, ...)); or have a superuser (a trusted migration role) add it, which tenancy.verify() then reports where the referenced table is shared.",
        );
    }
}

/// Lock every protected table ACCESS SHARE for the rest of the transaction and return those
/// that still exist: verify() reads their definitions (indexes, constraints, column types)
/// without a concurrent DROP or ALTER pulling them away mid-read.
#[pg_extern(volatile, parallel_unsafe, name = "_lock_protected_tables")]
fn lock_protected_tables() -> SetOfIterator<'static, pg_sys::Oid> {
    let rels = catalog::owner_rows(
        "tenancy.protected_table",
        "SELECT relid::oid FROM tenancy.protected_table ORDER BY 1",
        &[],
        |r| Ok(r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid)),
    );
    let mut kept = Vec::with_capacity(rels.len());
    for rel in rels {
        // SAFETY: a lock by oid (waits for a concurrent DROP to finish), then a syscache
        // existence check of the relation.
        let exists = unsafe {
            pg_sys::LockRelationOid(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
            pg_sys::SearchSysCacheExists(
                pg_sys::SysCacheIdentifier::RELOID as i32,
                pg_sys::Datum::from(rel),
                pg_sys::Datum::from(0),
                pg_sys::Datum::from(0),
                pg_sys::Datum::from(0),
            )
        };
        if exists {
            kept.push(rel);
        } else {
            // SAFETY: releases the lock just taken on an oid that no longer names a relation.
            unsafe { pg_sys::UnlockRelationOid(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE) };
        }
    }
    SetOfIterator::new(kept)
}

/// Two ways around row security that need no change to the protected table itself:
/// - a temporary relation named like a protected table shadows it (pg_temp is searched first).
///   Behind a connection pooler it outlives the transaction that created it, so the next
///   client's unqualified reads and writes on that server connection would go to it;
/// - a materialized view stores the rows its creator could see, and has no row security.
fn refuse_shadows_and_copies(touched: &[Option<pgrx::pg_sys::Oid>]) {
    let found: Option<(String, String, bool)> = catalog::with_owner_reading_locally(|| {
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
    if crate::pg::citus::catalog_work_stands_aside() {
        // Citus dropping a node's copy of a table: a shard, not a table pg_tenancy protects.
        return;
    }
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
        "SELECT p.relid::pg_catalog.oid FROM tenancy.protected_table p \
          WHERE NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = p.relid) ORDER BY 1",
        &[],
        |r| Ok(r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid)),
    );
    if !gone.is_empty() {
        catalog::write(
            "DELETE FROM tenancy.protected_table p WHERE NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = p.relid)",
            &[],
        );
        crate::rbac::forget_grants_on(&gone, "DROP TABLE");
    }
}

// ------------------------------------------------------------------------------------------
// Channels outside the policies, refused before the command runs (utility hook): DDL that
// would run code over every tenant's rows, or make them readable through another table, and
// locks that stall every tenant. Superusers (a trusted migration role) pass: row security does
// not apply to them anyway, and verify() reports what they leave behind.

use pgrx::pg_sys;

fn is_protected(rel: pg_sys::Oid) -> bool {
    rel != pg_sys::InvalidOid
        && (catalog::protected_relids().is_some_and(|p| p.contains(&u32::from(rel)))
            // On Citus, a protected table's shards and its shells on the workers.
            || crate::citus::guard::guarded(rel))
}

/// The relation a RangeVar names, or InvalidOid (no lock; the command itself locks it).
///
/// # Safety
/// `rv` must be null or a valid RangeVar; inside a transaction (the catalog is read).
unsafe fn relid_of(rv: *mut pg_sys::RangeVar) -> pg_sys::Oid {
    if rv.is_null() {
        return pg_sys::InvalidOid;
    }
    // SAFETY: a catalog lookup by name that returns InvalidOid when the relation is missing.
    unsafe {
        pg_sys::RangeVarGetRelidExtended(
            rv,
            pg_sys::NoLock as pg_sys::LOCKMODE,
            pg_sys::RVROption::RVR_MISSING_OK,
            None,
            std::ptr::null_mut(),
        )
    }
}

/// What pg_tenancy knows of a schema by its name, not its oid, cannot be renamed away under it
/// (an attacker's pass, as a schema's owner with CREATE on the database):
/// - an auto-protected schema (`tenancy.auto_protect_schema` holds its name): renamed, its new
///   tables were no longer protected, and a schema created later under the old name would be;
/// - on Citus, a schema holding a protected Citus table, its shards or its shells: every node's
///   guard knows them by name (`tenancy.citus_protection`), and after a rename on the
///   coordinator (carried to the workers by Citus) the guard no longer knew any of them: the
///   owner's `run_command_on_shards` added a policy `USING (true)` to every shard and one
///   tenant read every tenant's rows. On a worker, the same rename let the owner put a schema
///   of its own, with a table named as the shard, in its place.
///
/// Refused to every role, superusers included (a superuser's rename would turn the guard off
/// as silently); Citus's own connections and pg_tenancy's own DDL stand aside
/// ([`check_ddl`]'s caller).
fn refuse_renaming_a_schema_known_by_name(schema: &str) {
    let auto = !catalog::owner_rows(
        "tenancy.auto_protect_schema",
        "SELECT true FROM tenancy.auto_protect_schema WHERE schema_name = $1",
        &[schema.into()],
        |r| Ok(r.get::<bool>(1)?.unwrap_or(true)),
    )
    .is_empty();
    if auto {
        errors::refuse(
            "guard_refused",
            serde_json::Map::from_iter([("schema".to_string(), schema.into())]),
            errors::NOT_IN_PREREQUISITE_STATE,
            format!("schema \"{schema}\" cannot be renamed while it is auto-protected: auto-protection follows its name, and its new tables would be left unprotected"),
            format!(
                "An operator turns auto-protection off first (SELECT tenancy.auto_protect({}, false);), and on again under the new name after the rename.",
                catalog::quote_literal(schema)
            ),
        );
    }
    if crate::pg::citus::in_database() && crate::citus::guard::schema_holds_guarded(schema) {
        errors::refuse(
            "guard_refused",
            serde_json::Map::from_iter([("schema".to_string(), schema.into())]),
            errors::NOT_IN_PREREQUISITE_STATE,
            format!("schema \"{schema}\" cannot be renamed: it holds protected Citus tables (or their shards), which the guard of every node knows by name"),
            "An operator unprotects its tables first (SELECT tenancy.unprotect(tbl);), the schema is renamed on the coordinator, and the tables are protected again.",
        );
    }
}

/// Whether the lock of a relation named in a command may be taken before PostgreSQL's own
/// permission check: PostgreSQL checks ownership before it locks for most DDL (a role may not
/// queue a lock on a table it does not own just by naming it), and locks first for a few
/// (`CREATE TRIGGER`, `CREATE RULE`, `CREATE STATISTICS`; and, once the altered table's
/// ownership passed, the table an `ATTACH PARTITION` attaches and an `INHERIT` parent).
#[derive(Clone, Copy, PartialEq, Eq)]
enum LockFirst {
    /// Only when the current user has the privileges of the relation's owner.
    IfOwner,
    /// Always, as PostgreSQL's command does itself.
    Always,
    /// When the current user owns the relation or may TRUNCATE it (as PostgreSQL checks
    /// before it locks a TRUNCATE's tables).
    IfTruncatable,
}

/// Pin the relation a command names to the one pg_tenancy checks, before the checks run
/// (`ddl_command_start`). PostgreSQL looks the name up again, under its lock, after this
/// trigger: a table's owner held a lock on an unprotected table named in its own `ALTER TABLE
/// ... USING its_function(...)`, `CREATE RULE` or `ATTACH PARTITION`, renamed a protected table
/// to that name while the command waited, and the command then ran on the protected table,
/// which the guard had never checked (an attacker's pass: every tenant's rows through the
/// function, a rule copying every tenant's writes out, another tenant's rows attached
/// unrecorded). So, as `pin_names` does for protect():
/// - the name is looked up, the relation locked in the mode the command takes (PostgreSQL's
///   retry: looked up again after the lock, until the two agree);
/// - its schema's `pg_namespace` row is locked FOR KEY SHARE, which a rename or drop of the
///   schema waits for (the schema's owner renames it without any lock of the table);
/// - the RangeVar is qualified with that schema's name, read from the system caches after the
///   locks, so that a table created meanwhile earlier on the `search_path` is not the one the
///   command's own lookup finds.
///
/// The relation's name then means the checked relation until the transaction ends. Returns
/// nothing: the checks look the (now qualified) name up again and find the same relation. A
/// name that resolves to nothing is left alone (the command creates it, or fails).
///
/// # Safety
/// `rv` must be null or a RangeVar of the parse tree the command runs, a private copy
/// (`ddl_command_start` receives ProcessUtility's own copy of a read-only tree); inside the
/// command's transaction.
unsafe fn pin(rv: *mut pg_sys::RangeVar, mode: u32, first: LockFirst) -> pg_sys::Oid {
    if rv.is_null() {
        return pg_sys::InvalidOid;
    }
    let mode = mode as pg_sys::LOCKMODE;
    // SAFETY: lookups by name (InvalidOid when missing), a lock taken and, when the name moved
    // to another relation while it was awaited, released (PostgreSQL's RangeVarGetRelidExtended
    // does the same), a syscache read of the schema's name copied into the command's memory.
    unsafe {
        let rel = loop {
            let rel = relid_of(rv);
            if rel == pg_sys::InvalidOid {
                return pg_sys::InvalidOid;
            }
            let may = match first {
                LockFirst::Always => true,
                LockFirst::IfOwner => owns(rel),
                LockFirst::IfTruncatable => {
                    owns(rel)
                        || pg_sys::pg_class_aclcheck(
                            rel,
                            pg_sys::GetUserId(),
                            pg_sys::ACL_TRUNCATE as pg_sys::AclMode,
                        ) == pg_sys::AclResult::ACLCHECK_OK
                }
            };
            if !may {
                return pg_sys::InvalidOid;
            }
            pg_sys::LockRelationOid(rel, mode);
            if relid_of(rv) == rel {
                break rel;
            }
            pg_sys::UnlockRelationOid(rel, mode);
        };
        let schema = pg_sys::get_rel_namespace(rel);
        if schema == pg_sys::InvalidOid {
            return pg_sys::InvalidOid;
        }
        // As the catalog owner (a row lock asks for UPDATE on pg_namespace); the statement
        // reads one catalog row by oid and evaluates nothing of a user's.
        catalog::lock_system_row(
            "SELECT FROM pg_catalog.pg_namespace WHERE oid OPERATOR(pg_catalog.=) $1 FOR KEY SHARE",
            &[schema.into()],
        );
        pg_sys::AcceptInvalidationMessages();
        let name = if pg_sys::isTempNamespace(schema) {
            c"pg_temp".as_ptr() as *mut std::ffi::c_char
        } else {
            pg_sys::get_namespace_name(schema)
        };
        if !name.is_null() {
            // In the parse tree's own memory: this trigger's memory is freed when it returns,
            // before the command reads the name.
            let cx = pg_sys::GetMemoryChunkContext(rv as *mut std::ffi::c_void);
            (*rv).schemaname = pg_sys::MemoryContextStrdup(cx, name);
            (*rv).catalogname = std::ptr::null_mut();
        }
        rel
    }
}

/// Pin every relation that the guard's checks of `stmt` look up by name ([`pin`]), each in
/// the lock mode PostgreSQL's command takes for it, in the order the command takes them.
///
/// # Safety
/// `stmt` must be the valid, non-null parse tree the command runs (a private copy), inside its
/// transaction.
unsafe fn pin_named_relations(stmt: *mut pg_sys::Node) {
    use pg_sys::NodeTag::*;
    // SAFETY: every pointer below is part of `stmt`, a parse tree of the type its tag says.
    unsafe {
        match (*stmt).type_ {
            T_AlterTableStmt => {
                let s = stmt as *mut pg_sys::AlterTableStmt;
                // ALTER TYPE of a composite type too: PostgreSQL looks its relation up by this
                // RangeVar, as it does a table's (a reviewer swapped a decoy type's name with a
                // protected typed table's type while `ALTER TYPE ... CASCADE` waited).
                let main = pin(
                    (*s).relation,
                    pg_sys::AlterTableGetLockLevel((*s).cmds) as u32,
                    LockFirst::IfOwner,
                );
                // PostgreSQL locks the table a subcommand names (an ATTACH's partition, an
                // INHERIT's parent) before checking its ownership, but only once the altered
                // table's ownership was checked and it was locked: so here.
                if main == pg_sys::InvalidOid {
                    return;
                }
                for cmd in list::<pg_sys::AlterTableCmd>((*s).cmds) {
                    match (*cmd).subtype {
                        pg_sys::AlterTableType::AT_AttachPartition
                            if !(*cmd).def.is_null() && (*(*cmd).def).type_ == T_PartitionCmd =>
                        {
                            pin(
                                (*((*cmd).def as *mut pg_sys::PartitionCmd)).name,
                                pg_sys::AccessExclusiveLock,
                                LockFirst::Always,
                            );
                        }
                        pg_sys::AlterTableType::AT_AddInherit
                            if !(*cmd).def.is_null() && (*(*cmd).def).type_ == T_RangeVar =>
                        {
                            pin(
                                (*cmd).def as *mut pg_sys::RangeVar,
                                pg_sys::ShareUpdateExclusiveLock,
                                LockFirst::Always,
                            );
                        }
                        _ => {}
                    }
                }
            }
            T_RenameStmt => {
                let r = stmt as *mut pg_sys::RenameStmt;
                if matches!(
                    (*r).renameType,
                    pg_sys::ObjectType::OBJECT_COLUMN | pg_sys::ObjectType::OBJECT_ATTRIBUTE
                ) {
                    pin(
                        (*r).relation,
                        pg_sys::AccessExclusiveLock,
                        LockFirst::IfOwner,
                    );
                }
            }
            T_IndexStmt => {
                let s = stmt as *mut pg_sys::IndexStmt;
                let mode = if (*s).concurrent {
                    pg_sys::ShareUpdateExclusiveLock
                } else {
                    pg_sys::ShareLock
                };
                pin((*s).relation, mode, LockFirst::IfOwner);
            }
            T_CreateStatsStmt => {
                // The first relation only: PostgreSQL locks it before checking ownership and
                // refuses a list of more before locking any other.
                if let Some(&rv) =
                    list::<pg_sys::Node>((*(stmt as *mut pg_sys::CreateStatsStmt)).relations)
                        .first()
                {
                    if !rv.is_null() && (*rv).type_ == T_RangeVar {
                        pin(
                            rv as *mut pg_sys::RangeVar,
                            pg_sys::ShareUpdateExclusiveLock,
                            LockFirst::Always,
                        );
                    }
                }
            }
            T_CreateTrigStmt => {
                pin(
                    (*(stmt as *mut pg_sys::CreateTrigStmt)).relation,
                    pg_sys::ShareRowExclusiveLock,
                    LockFirst::Always,
                );
            }
            T_RuleStmt => {
                pin(
                    (*(stmt as *mut pg_sys::RuleStmt)).relation,
                    pg_sys::AccessExclusiveLock,
                    LockFirst::Always,
                );
            }
            T_DropStmt
                if (*(stmt as *mut pg_sys::DropStmt)).removeType
                    == pg_sys::ObjectType::OBJECT_TABLE =>
            {
                for n in list::<pg_sys::List>((*(stmt as *mut pg_sys::DropStmt)).objects) {
                    // The names of a DROP are lists of strings, turned into a RangeVar for the
                    // lookup; the command reads the list: qualified in place below.
                    let rv = pg_sys::makeRangeVarFromNameList(n);
                    pin(rv, pg_sys::AccessExclusiveLock, LockFirst::IfOwner);
                    qualify_name_list(n, rv);
                }
            }
            _ => {}
        }
    }
}

/// After [`pin`] qualified `rv`, made from the name list `n` of a DROP: put the schema into the
/// list the command reads (`schema.table` for a bare `table`).
///
/// # Safety
/// `n` must be the DROP's own List of String nodes that `rv` was made from.
unsafe fn qualify_name_list(n: *mut pg_sys::List, rv: *mut pg_sys::RangeVar) {
    // SAFETY: `n` is a List of String nodes (this function's contract); the new node is
    // allocated in the command's memory context, where the list lives.
    unsafe {
        if (*rv).schemaname.is_null() || n.is_null() || (*n).length != 1 {
            return;
        }
        // In the list's own memory, as the name in [`pin`]. lcons on a List that is not NIL
        // inserts into that same List (enlarging its array in the List's memory when needed)
        // and returns it: the DROP's objects list keeps pointing at it.
        let cx = pg_sys::GetMemoryChunkContext(n as *mut std::ffi::c_void);
        pgrx::PgMemoryContexts::For(cx).switch_to(|_| {
            let schema = pg_sys::makeString(pg_sys::MemoryContextStrdup(cx, (*rv).schemaname));
            pg_sys::lcons(schema as *mut std::ffi::c_void, n);
        });
    }
}

/// The elements of a List of pointers, as pointers to `T`.
///
/// # Safety
/// `l` must be null or a valid List of pointers (not an integer or oid List). The pointers are
/// returned as they are: that they point at a `T` is the caller's to know.
unsafe fn list<T>(l: *mut pg_sys::List) -> Vec<*mut T> {
    // SAFETY: `l` is null or a pointer List.
    unsafe {
        if l.is_null() {
            return Vec::new();
        }
        (0..(*l).length as usize)
            .map(|i| (*(*l).elements.add(i)).ptr_value as *mut T)
            .collect()
    }
}

/// Refuse a change of a shard (or a worker's shell) of a protected Citus table made on its node.
fn refuse_shard_change(rel: pg_sys::Oid, hint: &str) -> ! {
    refuse_channel(
        rel,
        format!(
            "\"{}\" is a shard of a protected Citus table: it cannot be truncated, dropped or inherited from here",
            crate::catalog::relation_name(rel)
        ),
        hint,
    )
}

fn refuse_channel(table: pg_sys::Oid, message: String, hint: impl Into<String>) -> ! {
    let mut f = serde_json::Map::new();
    f.insert("table".into(), crate::catalog::relation_name(table).into());
    errors::refuse(
        "guard_refused",
        f,
        errors::INSUFFICIENT_PRIVILEGE,
        message,
        hint,
    )
}

const EXPRESSION_HINT: &str = "On a protected table such an expression runs over every tenant's rows with no row security, so only PostgreSQL's built-in LEAKPROOF functions may appear in it. Have a superuser (a trusted migration role) run it, or write the expression with built-in leakproof functions; tenancy.verify() reports what is left.";

/// A column a command adds: the command's other expressions may name it before it exists.
struct NewColumn {
    name: String,
    typ: pg_sys::Oid,
    typmod: i32,
}

/// The type and typmod a column definition names (an error, as PostgreSQL's own, if none).
///
/// # Safety
/// `col` must point at a valid ColumnDef; inside a transaction (the type is looked up).
unsafe fn column_type(col: *mut pg_sys::ColumnDef) -> (pg_sys::Oid, i32) {
    let mut typ = pg_sys::InvalidOid;
    let mut typmod = -1;
    // SAFETY: `col` is a ColumnDef of the command's parse tree; the lookup reads the catalog.
    unsafe {
        if !(*col).typeName.is_null() {
            pg_sys::typenameTypeIdAndMod(
                std::ptr::null_mut(),
                (*col).typeName,
                &mut typ,
                &mut typmod,
            );
        }
    }
    (typ, typmod)
}

/// The parser's last resort for a column name it cannot find in the table: a column the same
/// command adds, as a typed NULL (only the calls in the expression matter here).
///
/// # Safety
/// Called by the parser as `p_post_columnref_hook` of a parse state whose hook state is null
/// or a `Vec<NewColumn>` alive for the analysis (as [`leaky_raw`] sets it).
#[pg_guard]
unsafe extern "C-unwind" fn new_column_ref(
    pstate: *mut pg_sys::ParseState,
    cref: *mut pg_sys::ColumnRef,
    var: *mut pg_sys::Node,
) -> *mut pg_sys::Node {
    // SAFETY: the parse state's hook state is the command's new columns (set below, for the
    // length of the analysis); `cref` is the column reference being resolved.
    unsafe {
        if !var.is_null() || (*pstate).p_ref_hook_state.is_null() {
            return std::ptr::null_mut();
        }
        let cols = &*((*pstate).p_ref_hook_state as *const Vec<NewColumn>);
        let Some(last) = list::<pg_sys::Node>((*cref).fields).last().copied() else {
            return std::ptr::null_mut();
        };
        if last.is_null() || (*last).type_ != pg_sys::NodeTag::T_String {
            return std::ptr::null_mut();
        }
        let name =
            std::ffi::CStr::from_ptr((*(last as *mut pg_sys::String)).sval).to_string_lossy();
        match cols.iter().find(|c| c.name == name) {
            Some(c) => {
                pg_sys::makeNullConst(c.typ, c.typmod, pg_sys::get_typcollation(c.typ)).cast()
            }
            None => std::ptr::null_mut(),
        }
    }
}

/// Analyze a raw expression of a DDL command against the columns of `rel` (and the columns
/// the same command adds), as PostgreSQL would, coerced to `coerce_to` if given, and name the
/// first call that is not a built-in LEAKPROOF function (with `user_code_only`, not built in).
/// Evaluates nothing.
///
/// # Safety
/// Inside a transaction; `rel` must name an existing relation, `raw` be null or a valid raw
/// (not yet analyzed) expression tree, and `query` null or the command's NUL-terminated source
/// text.
unsafe fn leaky_raw(
    rel: pg_sys::Oid,
    raw: *mut pg_sys::Node,
    kind: pg_sys::ParseExprKind::Type,
    query: *const std::ffi::c_char,
    new_columns: &Vec<NewColumn>,
    coerce_to: Option<(pg_sys::Oid, i32)>,
    user_code_only: bool,
) -> Option<String> {
    if raw.is_null() {
        return None;
    }
    // SAFETY: parse analysis of a copy of the raw tree against the relation, opened with the
    // lock the command takes anyway; the parse state is freed, the lock kept to the end of the
    // transaction (as the command would). The hook state points at `new_columns`, which
    // outlives the parse state.
    unsafe {
        let r = pg_sys::relation_open(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        (*pstate).p_sourcetext = query;
        (*pstate).p_post_columnref_hook = Some(new_column_ref);
        (*pstate).p_ref_hook_state = (new_columns as *const Vec<NewColumn>).cast_mut().cast();
        let nsitem = pg_sys::addRangeTableEntryForRelation(
            pstate,
            r,
            pg_sys::AccessShareLock as i32,
            std::ptr::null_mut(),
            false,
            true,
        );
        pg_sys::addNSItemToQuery(pstate, nsitem, true, true, true);
        let mut expr = pg_sys::transformExpr(
            pstate,
            pg_sys::copyObjectImpl(raw as *const std::ffi::c_void) as *mut pg_sys::Node,
            kind,
        );
        if let Some((typ, typmod)) = coerce_to {
            // As ALTER COLUMN TYPE does: NULL when there is no such cast (the command fails).
            expr = pg_sys::coerce_to_target_type(
                pstate,
                expr,
                pg_sys::exprType(expr),
                typ,
                typmod,
                pg_sys::CoercionContext::COERCION_ASSIGNMENT,
                pg_sys::CoercionForm::COERCE_IMPLICIT_CAST,
                -1,
            );
        }
        let leaky = crate::protection::leakproof::first_leaky_call(expr, user_code_only);
        pg_sys::free_parsestate(pstate);
        pg_sys::relation_close(r, pg_sys::NoLock as pg_sys::LOCKMODE);
        leaky
    }
}

fn refuse_leaky(rel: pg_sys::Oid, what: &str, call: Option<String>) {
    if let Some(call) = call {
        refuse_channel(
            rel,
            format!(
                "{what} on protected table \"{}\" calls {call}, which is not a built-in leakproof function",
                crate::catalog::relation_name(rel)
            ),
            EXPRESSION_HINT,
        );
    }
}

/// [`leaky_raw`] with a strict reading (built-in LEAKPROOF functions only), refused.
///
/// # Safety
/// As [`leaky_raw`].
unsafe fn refuse_leaky_raw(
    rel: pg_sys::Oid,
    raw: *mut pg_sys::Node,
    kind: pg_sys::ParseExprKind::Type,
    what: &str,
    query: *const std::ffi::c_char,
    new_columns: &Vec<NewColumn>,
) {
    // SAFETY: this function's contract is leaky_raw's, and the arguments are passed on as
    // they came.
    let call = unsafe { leaky_raw(rel, raw, kind, query, new_columns, None, false) };
    refuse_leaky(rel, what, call);
}

/// A column of type `typ` on a protected table: the constraints of the domains it is made of
/// run on every write, and a range's functions in ANALYZE and GiST indexes, over every
/// tenant's values. With `rewrite`, the column is about to be computed for every existing row,
/// so the domains' constraints are read as strictly as a CHECK constraint.
fn refuse_leaky_type(rel: pg_sys::Oid, column: &str, typ: pg_sys::Oid, rewrite: bool) {
    if typ == pg_sys::InvalidOid {
        return;
    }
    let domains = catalog::owner_rows(
        "the domains of a type",
        &format!(
            "SELECT r.oid FROM ({}) r JOIN pg_catalog.pg_type ty ON ty.oid = r.oid \
              WHERE ty.typtype = 'd' ORDER BY 1",
            crate::protection::leakproof::REACHABLE_TYPES
        ),
        &[typ.into()],
        |r| Ok(r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid)),
    );
    lock_domains(&domains, pg_sys::ShareLock);
    refuse_leaky(
        rel,
        &format!("the type of column \"{column}\""),
        crate::protection::leakproof::type_leaky_call(typ, !rewrite),
    );
}

/// Lock the domains `domains` (as objects, to the end of the transaction) before what they
/// hold is read: a column of a domain added to a protected table takes SHARE, a change of a
/// domain's default or constraints (`check_alter_domain`) ACCESS EXCLUSIVE. A reviewer changed
/// a domain's default to its own function in a transaction still open, while no protected
/// column used it, and added a column of that domain to a protected table meanwhile: each
/// check passed on what the other had not committed yet, and every tenant's later inserts ran
/// the function. Now the second waits for the first to end and then fails with 40001, to be
/// retried (and then checked on what the first committed): it does not go on after the wait,
/// during which the type's name could have been given to another type (a reviewer: PostgreSQL
/// looks the name up again after these checks, and renaming a type takes no lock).
fn lock_domains(domains: &[pg_sys::Oid], mode: u32) {
    for &d in domains {
        // SAFETY: transaction-level locks of type objects, which PostgreSQL itself takes for
        // no statement of ours to conflict with; released at the transaction's end.
        let waited = unsafe {
            !pg_sys::ConditionalLockDatabaseObject(
                pg_sys::TypeRelationId,
                d,
                0,
                mode as pg_sys::LOCKMODE,
            ) && {
                pg_sys::LockDatabaseObject(pg_sys::TypeRelationId, d, 0, mode as pg_sys::LOCKMODE);
                true
            }
        };
        if waited {
            errors::raise(
                pgrx::PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
                "could not serialize access due to a concurrent change of a domain a protected column uses",
                "Retry the transaction.",
            );
        }
    }
    // SAFETY: processes the shared invalidation queue, as any lock acquisition does; nothing
    // of the catalog is held across it.
    unsafe { pg_sys::AcceptInvalidationMessages() };
}

/// Refuse a stored expression (a constraint about to be validated) that is leaky.
fn refuse_leaky_stored(rel: pg_sys::Oid, stored: Option<String>, what: &str) {
    if let Some(call) =
        stored.and_then(|text| crate::protection::leakproof::leaky_call_text(&text, false))
    {
        refuse_channel(
            rel,
            format!(
                "{what} on protected table \"{}\" calls {call}, which is not a built-in leakproof function",
                crate::catalog::relation_name(rel)
            ),
            EXPRESSION_HINT,
        );
    }
}

/// An application session, for LOCK: anyone but a superuser or an operator with no binding.
fn application_session() -> bool {
    let who = crate::authz::caller();
    !crate::authz::is_superuser(who)
        && (!crate::authz::is_operator(who) || crate::binding::peek().is_some())
}

/// Refuse, before it runs, a DDL command that opens a channel around the policies of a
/// protected table. Called by the `ddl_command_start` event trigger, which fires for every role
/// in every session, whether or not this library was loaded when the command started.
///
/// # Safety
/// `stmt` is the parse tree of the command that fired the trigger, `query` its source text or
/// null.
pub unsafe fn check_ddl(stmt: *mut pg_sys::Node, query: *const std::ffi::c_char) {
    // SAFETY: every pointer below is part of `stmt`, a parse tree of the type its tag says.
    unsafe {
        if stmt.is_null() || crate::protection::policy::guard_stands_aside() {
            return;
        }
        // For every role, superusers included: changes to protected tables' rows that no row
        // trigger sees are recorded in each affected tenant's chain before they run.
        record_row_changes(stmt);
        if (*stmt).type_ == pg_sys::NodeTag::T_RenameStmt
            && (*(stmt as *mut pg_sys::RenameStmt)).renameType == pg_sys::ObjectType::OBJECT_SCHEMA
            && !(*(stmt as *mut pg_sys::RenameStmt)).subname.is_null()
        {
            refuse_renaming_a_schema_known_by_name(
                &std::ffi::CStr::from_ptr((*(stmt as *mut pg_sys::RenameStmt)).subname)
                    .to_string_lossy(),
            );
        }
        if crate::authz::is_superuser(crate::authz::caller()) {
            return;
        }
        if (*stmt).type_ == pg_sys::NodeTag::T_DropStmt
            && (*(stmt as *mut pg_sys::DropStmt)).removeType == pg_sys::ObjectType::OBJECT_TABLE
            && crate::pg::citus::in_database()
        {
            for n in list::<pg_sys::List>((*(stmt as *mut pg_sys::DropStmt)).objects) {
                let rel = relid_of(pg_sys::makeRangeVarFromNameList(n));
                // The table itself, on the coordinator: Citus would drop its copies on the
                // workers as its owner, which the workers refuse to anyone but a superuser
                // (`src/citus/calls.rs`); said here, before Citus starts.
                if crate::citus::guard::citus_protected_anywhere(rel)
                    && !crate::citus::guard::guarded(rel)
                {
                    let name = crate::catalog::relation_name(rel);
                    refuse_channel(
                        rel,
                        format!("protected Citus table \"{name}\" is dropped by a superuser, or by its owner once an operator has unprotected it"),
                        format!("A superuser (a trusted migration role) runs the DROP TABLE, or an operator runs SELECT tenancy.unprotect({}); first (audited; refused while the table holds tenants' rows).", crate::catalog::quote_literal(&name)),
                    );
                }
                if crate::citus::guard::guarded(rel) {
                    refuse_shard_change(rel, "Drop the table on the coordinator (Citus drops its shards); a tenant's rows are removed by tenancy.decommission_tenant().");
                }
            }
        }
        match (*stmt).type_ {
            pg_sys::NodeTag::T_AlterTableStmt => {
                check_alter_table(stmt as *mut pg_sys::AlterTableStmt, query)
            }
            pg_sys::NodeTag::T_RenameStmt => {
                // A column's rename, whatever the statement's form says the relation is
                // (PostgreSQL renames a table's column under ALTER VIEW or ALTER FOREIGN TABLE
                // too), and a composite type's attribute, which renames the column of every
                // table of that type (CASCADE).
                let r = stmt as *mut pg_sys::RenameStmt;
                let kind = (*r).renameType;
                if (kind == pg_sys::ObjectType::OBJECT_COLUMN
                    || kind == pg_sys::ObjectType::OBJECT_ATTRIBUTE)
                    && !(*r).relation.is_null()
                    && !(*r).subname.is_null()
                    && !(*r).newname.is_null()
                {
                    let old = std::ffi::CStr::from_ptr((*r).subname).to_string_lossy();
                    let new = std::ffi::CStr::from_ptr((*r).newname).to_string_lossy();
                    let rel = relid_of((*r).relation);
                    let mut rels = vec![rel];
                    if kind == pg_sys::ObjectType::OBJECT_ATTRIBUTE {
                        rels.extend(typed_tables(rel));
                    }
                    for rel in rels {
                        refuse_renaming_an_excluded_column(rel, &old, &new);
                    }
                }
            }
            pg_sys::NodeTag::T_IndexStmt => {
                let s = stmt as *mut pg_sys::IndexStmt;
                let rel = relid_of((*s).relation);
                if is_protected(rel) && !(*s).transformed {
                    for e in list::<pg_sys::IndexElem>((*s).indexParams)
                        .into_iter()
                        .chain(list::<pg_sys::IndexElem>((*s).indexIncludingParams))
                    {
                        refuse_leaky_raw(
                            rel,
                            (*e).expr,
                            pg_sys::ParseExprKind::EXPR_KIND_INDEX_EXPRESSION,
                            "an index expression",
                            query,
                            &Vec::new(),
                        );
                    }
                    refuse_leaky_raw(
                        rel,
                        (*s).whereClause,
                        pg_sys::ParseExprKind::EXPR_KIND_INDEX_PREDICATE,
                        "an index predicate",
                        query,
                        &Vec::new(),
                    );
                }
            }
            pg_sys::NodeTag::T_CreateStatsStmt => {
                let s = stmt as *mut pg_sys::CreateStatsStmt;
                for rv in list::<pg_sys::Node>((*s).relations) {
                    if (*rv).type_ != pg_sys::NodeTag::T_RangeVar {
                        continue;
                    }
                    let rel = relid_of(rv as *mut pg_sys::RangeVar);
                    if !is_protected(rel) {
                        continue;
                    }
                    for e in list::<pg_sys::StatsElem>((*s).exprs) {
                        refuse_leaky_raw(
                            rel,
                            (*e).expr,
                            pg_sys::ParseExprKind::EXPR_KIND_STATS_EXPRESSION,
                            "a statistics expression",
                            query,
                            &Vec::new(),
                        );
                    }
                }
            }
            pg_sys::NodeTag::T_AlterDomainStmt => {
                check_alter_domain(stmt as *mut pg_sys::AlterDomainStmt, query)
            }
            pg_sys::NodeTag::T_CreateTrigStmt => {
                check_create_trigger(stmt as *mut pg_sys::CreateTrigStmt)
            }
            pg_sys::NodeTag::T_CreateCastStmt => {
                check_create_cast(stmt as *mut pg_sys::CreateCastStmt)
            }
            // A rule's actions run for every tenant's writes with the rule owner's privileges
            // (DO ALSO INSERT INTO elsewhere VALUES (NEW.*) copies every tenant's rows out).
            pg_sys::NodeTag::T_RuleStmt => {
                let rel = relid_of((*(stmt as *mut pg_sys::RuleStmt)).relation);
                if is_protected(rel) {
                    refuse_channel(
                        rel,
                        format!(
                            "rules on protected table \"{}\" are refused: a rule's actions see every tenant's rows",
                            crate::catalog::relation_name(rel)
                        ),
                        "Use a trigger that writes into another protected table, or have a superuser (a trusted migration role) create the rule; tenancy.verify() reports rules on protected tables.",
                    );
                }
            }
            _ => {}
        }
    }
}

// ------------------------------------------------------------------------------------------
// Row changes that no row trigger sees: DROP TABLE (and DROP SCHEMA, DROP OWNED), DROP COLUMN,
// ALTER COLUMN TYPE, and tables joining a protected parent with rows of their own. Recorded in
// each affected tenant's own chain before the command runs (in its transaction: rolled back
// with it), or refused. sql_drop then refuses the drop of a protected table or column that
// was not recorded (one that a cascade reached: DROP TYPE ... CASCADE, say).

thread_local! {
    /// (table, column or 0 for the whole table, subtransaction) recorded in this transaction.
    static RECORDED: std::cell::RefCell<Vec<(u32, i16, pg_sys::SubTransactionId)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

pub fn reset_at_transaction_end() {
    RECORDED.with(|r| r.borrow_mut().clear());
}

/// A subtransaction rolled back: so did the records it wrote.
pub fn subtransaction_aborted(subxact: pg_sys::SubTransactionId) {
    RECORDED.with(|r| r.borrow_mut().retain(|e| e.2 < subxact));
}

fn mark_recorded(rel: pg_sys::Oid, attnum: i16) {
    // SAFETY: reads the current subtransaction's id.
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    RECORDED.with(|r| r.borrow_mut().push((u32::from(rel), attnum, subxact)));
}

/// Protected tables among `rels` and their descendants (partitions, inheritance children).
fn protected_with_descendants(rels: &[pg_sys::Oid]) -> Vec<pg_sys::Oid> {
    if rels.is_empty() {
        return Vec::new();
    }
    catalog::owner_rows(
        "tenancy.protected_table",
        "WITH RECURSIVE d(rel) AS (SELECT unnest($1::oid[]) \
              UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN d ON i.inhparent = d.rel) \
         SELECT d.rel FROM d JOIN tenancy.protected_table p ON p.relid = d.rel ORDER BY 1",
        &[rels.to_vec().into()],
        |r| Ok(r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid)),
    )
}

/// Whether the current user may run a command on relation `rel` that needs its ownership:
/// only then does pg_tenancy look at the relation's rows for the command (PostgreSQL checks
/// ownership after ddl_command_start; looking first would let anyone make the catalog owner
/// scan any table, or learn whether one holds rows).
fn owns(rel: pg_sys::Oid) -> bool {
    // SAFETY: a syscache lookup of the relation's owner against the current user.
    rel != pg_sys::InvalidOid && unsafe { pg_sys::pg_class_ownercheck(rel, pg_sys::GetUserId()) }
}

/// Record in the trail the rows a DDL command is about to remove or rewrite on protected
/// tables, and refuse the commands that would change them unrecorded.
///
/// # Safety
/// `stmt` must be the valid, non-null parse tree of the command that fired the
/// `ddl_command_start` trigger, inside its transaction.
unsafe fn record_row_changes(stmt: *mut pg_sys::Node) {
    // SAFETY: every pointer below is part of `stmt`, a parse tree of the type its tag says.
    unsafe {
        match (*stmt).type_ {
            pg_sys::NodeTag::T_DropStmt => {
                let s = stmt as *mut pg_sys::DropStmt;
                let names = list::<pg_sys::List>((*s).objects);
                let tables: Vec<pg_sys::Oid> = match (*s).removeType {
                    pg_sys::ObjectType::OBJECT_TABLE => {
                        let rels: Vec<pg_sys::Oid> = names
                            .into_iter()
                            .map(|n| relid_of(pg_sys::makeRangeVarFromNameList(n)))
                            .filter(|r| owns(*r))
                            .collect();
                        protected_with_descendants(&rels)
                    }
                    pg_sys::ObjectType::OBJECT_SCHEMA => {
                        let schemas: Vec<String> = list::<pg_sys::Node>((*s).objects)
                            .into_iter()
                            .filter(|n| !n.is_null() && (**n).type_ == pg_sys::NodeTag::T_String)
                            .map(|n| {
                                std::ffi::CStr::from_ptr((*(n as *mut pg_sys::String)).sval)
                                    .to_string_lossy()
                                    .into_owned()
                            })
                            .filter(|name| {
                                let c = std::ffi::CString::new(name.as_str()).unwrap_or_default();
                                let nsp = pg_sys::get_namespace_oid(c.as_ptr(), true);
                                nsp != pg_sys::InvalidOid
                                    && pg_sys::pg_namespace_ownercheck(nsp, pg_sys::GetUserId())
                            })
                            .collect();
                        catalog::owner_rows(
                            "tenancy.protected_table",
                            "SELECT p.relid::oid FROM tenancy.protected_table p JOIN pg_catalog.pg_class c ON c.oid = p.relid \
                               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY ($1) ORDER BY 1",
                            &[schemas.into()],
                            |r| Ok(r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid)),
                        )
                    }
                    _ => Vec::new(),
                };
                for t in tables {
                    crate::audit::record_rows_changed(t, "drop_table", None);
                    mark_recorded(t, 0);
                }
            }
            pg_sys::NodeTag::T_DropOwnedStmt => {
                let s = stmt as *mut pg_sys::DropOwnedStmt;
                let roles: Vec<pg_sys::Oid> = list::<pg_sys::RoleSpec>((*s).roles)
                    .into_iter()
                    .map(|r| pg_sys::get_rolespec_oid(r, true))
                    .filter(|r| {
                        *r != pg_sys::InvalidOid
                            && pg_sys::has_privs_of_role(pg_sys::GetUserId(), *r)
                    })
                    .collect();
                let tables = catalog::owner_rows(
                    "tenancy.protected_table",
                    "SELECT p.relid::oid FROM tenancy.protected_table p JOIN pg_catalog.pg_class c ON c.oid = p.relid \
                      WHERE c.relowner = ANY ($1) ORDER BY 1",
                    &[roles.into()],
                    |r| Ok(r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid)),
                );
                for t in tables {
                    crate::audit::record_rows_changed(t, "drop_table", None);
                    mark_recorded(t, 0);
                }
            }
            // Renaming an enum's value changes the value of every row that holds it, in every
            // tenant, with no record: refused while a protected column uses the enum.
            pg_sys::NodeTag::T_AlterEnumStmt => {
                let s = stmt as *mut pg_sys::AlterEnumStmt;
                if (*s).oldVal.is_null() {
                    return;
                }
                let typ = pg_sys::typenameTypeId(
                    std::ptr::null_mut(),
                    pg_sys::makeTypeNameFromNameList((*s).typeName),
                );
                if let Some(table) = protected_table_using(typ) {
                    refuse_channel(
                        table,
                        format!(
                            "renaming a value of an enum that a column or an expression of protected table \"{}\" uses would change every tenant's rows unrecorded",
                            crate::catalog::relation_name(table)
                        ),
                        "Add the new value (ALTER TYPE ... ADD VALUE), let each tenant UPDATE its rows (each update is recorded in its trail), then stop using the old one.",
                    );
                }
            }
            pg_sys::NodeTag::T_AlterTableStmt => {
                let s = stmt as *mut pg_sys::AlterTableStmt;
                // ALTER TYPE ... ALTER ATTRIBUTE ... TYPE ... CASCADE rewrites the column of
                // every table of the composite type, as ALTER COLUMN TYPE does its table's (an
                // attacker's pass changed every tenant's amounts so, unrecorded).
                let typed = (*s).objtype == pg_sys::ObjectType::OBJECT_TYPE;
                if (*s).objtype != pg_sys::ObjectType::OBJECT_TABLE && !typed {
                    return;
                }
                let rel = relid_of((*s).relation);
                for cmd in list::<pg_sys::AlterTableCmd>((*s).cmds) {
                    match (*cmd).subtype {
                        pg_sys::AlterTableType::AT_AlterColumnType
                            if typed && owns(rel) && !(*cmd).name.is_null() =>
                        {
                            let column = std::ffi::CStr::from_ptr((*cmd).name)
                                .to_string_lossy()
                                .into_owned();
                            // The typed tables' partitions too (a partitioned typed table's
                            // partitions are not of the type themselves: a reviewer's pass).
                            for t in typed_tables(rel) {
                                let attnum = pg_sys::get_attnum(t, (*cmd).name);
                                if attnum > 0 {
                                    crate::audit::record_rows_changed(
                                        t,
                                        "alter_column_type",
                                        Some(&column),
                                    );
                                }
                            }
                        }
                        // The other ALTER TYPE commands drop or add attributes: a drop
                        // of a protected column is refused by the drop guard (sql_drop).
                        _ if typed => {}
                        pg_sys::AlterTableType::AT_DropColumn
                        | pg_sys::AlterTableType::AT_DropColumnRecurse
                        | pg_sys::AlterTableType::AT_AlterColumnType
                            if is_protected(rel) && owns(rel) && !(*cmd).name.is_null() =>
                        {
                            let column = std::ffi::CStr::from_ptr((*cmd).name)
                                .to_string_lossy()
                                .into_owned();
                            let action =
                                if (*cmd).subtype == pg_sys::AlterTableType::AT_AlterColumnType {
                                    "alter_column_type"
                                } else {
                                    "drop_column"
                                };
                            let tables = if (*s).relation.is_null() || (*(*s).relation).inh {
                                protected_with_descendants(&[rel])
                            } else {
                                vec![rel]
                            };
                            for t in tables {
                                let attnum = pg_sys::get_attnum(t, (*cmd).name);
                                if attnum > 0 {
                                    crate::audit::record_rows_changed(t, action, Some(&column));
                                    mark_recorded(t, attnum);
                                }
                            }
                        }
                        // Rows of a table that joins a protected parent become tenants' rows,
                        // written by no one the trail knows.
                        pg_sys::AlterTableType::AT_AttachPartition if is_protected(rel) => {
                            let part = relid_of((*((*cmd).def as *mut pg_sys::PartitionCmd)).name);
                            if owns(rel) && owns(part) {
                                refuse_joining_rows(rel, part, true);
                            }
                        }
                        pg_sys::AlterTableType::AT_AddInherit if !is_protected(rel) => {
                            let parent = relid_of((*cmd).def as *mut pg_sys::RangeVar);
                            if is_protected(parent) && owns(rel) && owns(parent) {
                                refuse_joining_rows(parent, rel, false);
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

/// The first protected table with a column whose type is, or is made of, type `typ`.
fn protected_table_using(typ: pg_sys::Oid) -> Option<pg_sys::Oid> {
    catalog::owner_rows(
        "the protected tables' columns and expressions",
        PROTECTED_TABLE_REACHING_TYPE,
        &[typ.into()],
        |r| Ok(r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid)),
    )
    .first()
    .copied()
}

/// A table that auto-protection is about to protect because a statement other than its
/// CREATE TABLE put it under an auto-protected schema (SET SCHEMA, CREATE TABLE AS, a column
/// renamed or added as the tenant column): its rows would become tenants' rows that no
/// tenant wrote, unrecorded, and its own CHECK, index or statistics code would run over every
/// tenant's writes (an attacker's pass planted another tenant's rows all four ways). Refused
/// unless it is empty and brings no user's code; superusers and operators (who may protect a
/// table holding rows with `tenancy.protect()`) pass.
pub(crate) fn refuse_joining_an_auto_protected_schema(rel: pg_sys::Oid) {
    let caller = crate::authz::caller();
    if crate::authz::is_superuser(caller) || crate::authz::is_operator(caller) {
        return;
    }
    lock_tree(rel);
    let table = crate::catalog::relation_name(rel);
    if crate::audit::holds_rows(rel) {
        refuse_channel(
            rel,
            format!("table \"{table}\" holds rows and cannot be protected by its schema's auto_protect unrecorded: its rows would become tenants' rows that no tenant wrote"),
            format!(
                "Have an operator protect it first (SELECT tenancy.protect({});), which takes its rows as they are, or create it empty and INSERT its rows as the tenants (each insert is recorded in its tenant's trail).",
                crate::catalog::quote_literal(&table)
            ),
        );
    }
    if let Some((what, call)) = stored_leaky_call(rel) {
        refuse_channel(
            rel,
            format!("{what} of table \"{table}\", which its schema's auto_protect would protect, calls {call}, which would see every tenant's writes"),
            EXPRESSION_HINT,
        );
    }
}

/// Lock `rel` (ACCESS EXCLUSIVE, as the statement changing it does) and every partition and
/// child under it (SHARE: until the transaction ends, none takes a write, and the writes still
/// open end first), so that a count of their rows holds: a reviewer's pass inserted into a
/// partition directly, in a transaction still open while its parent was counted empty.
fn lock_tree(rel: pg_sys::Oid) {
    // SAFETY: a lock the command takes anyway, held to the end of the transaction.
    unsafe { pg_sys::LockRelationOid(rel, pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE) };
    let mut locked: Vec<pg_sys::Oid> = Vec::new();
    // Read again after each round of locks (a fresh snapshot each time), until no descendant is
    // left unlocked: one attached meanwhile is found in the next round.
    loop {
        let found = catalog::owner_rows(
            "pg_inherits",
            "WITH RECURSIVE d(oid) AS ( \
                 SELECT i.inhrelid FROM pg_catalog.pg_inherits i WHERE i.inhparent = $1 \
                 UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN d ON i.inhparent = d.oid) \
             SELECT oid FROM d",
            &[rel.into()],
            |r| Ok(r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid)),
        );
        let new: Vec<pg_sys::Oid> = found
            .into_iter()
            .filter(|o| *o != pg_sys::InvalidOid && !locked.contains(o))
            .collect();
        if new.is_empty() {
            return;
        }
        for o in new {
            // SAFETY: a lock that only waits for the descendant's open writers and holds off
            // new ones, held to the end of the transaction.
            unsafe { pg_sys::LockRelationOid(o, pg_sys::ShareLock as pg_sys::LOCKMODE) };
            locked.push(o);
        }
    }
}

/// Refuse a table holding rows (any of its partitions too) that would join protected table
/// `parent`: its rows would appear in tenants' tables with no record of who wrote them. The
/// table is locked first (as ATTACH and INHERIT will lock it), so no transaction can still be
/// adding rows, and read with a snapshot taken after the lock.
fn refuse_joining_rows(parent: pg_sys::Oid, table: pg_sys::Oid, partition: bool) {
    if table == pg_sys::InvalidOid {
        return;
    }
    lock_tree(table);
    if !crate::audit::holds_rows(table) {
        return;
    }
    refuse_channel(
        table,
        format!(
            "table \"{}\" holds rows and cannot {} protected table \"{}\" unrecorded",
            crate::catalog::relation_name(table),
            if partition {
                "be attached to"
            } else {
                "inherit from"
            },
            crate::catalog::relation_name(parent)
        ),
        if partition {
            format!(
                "An operator attaches it with SELECT tenancy.attach_partition({}, {}, 'FOR VALUES ...'); which checks every row's tenant and records each row in that tenant's audit trail. Or attach it empty and INSERT the rows as the tenants.",
                crate::catalog::quote_literal(&crate::catalog::relation_name(parent)),
                crate::catalog::quote_literal(&crate::catalog::relation_name(table))
            )
        } else {
            "Make it inherit while it is empty, then INSERT the rows as the tenants (each insert is recorded in its tenant's trail).".to_string()
        },
    );
}

/// sql_drop: refuse the drop of a protected table or of a column of one that was not recorded
/// in the affected tenants' chains when the command started (one a cascade reached).
/// Only in a sql_drop event trigger (`pg_event_trigger_dropped_objects()` refuses elsewhere).
#[pg_extern(volatile, parallel_unsafe, name = "_guard_drops")]
fn guard_drops() {
    let dropped: Vec<(pg_sys::Oid, i32)> = Spi::connect(|c| {
        let t = c.select(
            "SELECT objid, objsubid FROM pg_catalog.pg_event_trigger_dropped_objects() \
              WHERE classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND object_type IN ('table', 'table column')",
            None,
            &[],
        )?;
        let mut out = Vec::new();
        for r in t {
            out.push((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<i32>(2)?.unwrap_or(0),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: reading the dropped objects failed: {e}"));
    if dropped.is_empty() || crate::protection::policy::guard_stands_aside() {
        return;
    }
    let relids: Vec<pg_sys::Oid> = dropped.iter().map(|d| d.0).collect();
    let protected: Vec<(pg_sys::Oid, String)> = catalog::owner_rows(
        "tenancy.protected_table",
        "SELECT relid::oid, relid::oid::text FROM tenancy.protected_table WHERE relid::oid = ANY ($1)",
        &[relids.into()],
        |r| {
            Ok((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<String>(2)?.unwrap_or_default(),
            ))
        },
    );
    for (rel, attnum) in dropped {
        let Some((_, name)) = protected.iter().find(|(p, _)| *p == rel) else {
            continue;
        };
        let recorded = RECORDED.with(|r| {
            r.borrow()
                .iter()
                .any(|e| e.0 == u32::from(rel) && (e.1 == 0 || e.1 == attnum as i16))
        });
        if !recorded {
            let mut f = serde_json::Map::new();
            f.insert("table".into(), name.clone().into());
            errors::refuse(
                "guard_refused",
                f,
                errors::INSUFFICIENT_PRIVILEGE,
                format!(
                    "this command would drop {} of protected table with oid {name} without recording it in its tenants' audit trails",
                    if attnum == 0 { "the whole table".to_string() } else { format!("column {attnum}") }
                ),
                "Drop protected tables with DROP TABLE (or DROP SCHEMA, DROP OWNED) and their columns with ALTER TABLE ... DROP COLUMN, which record what each tenant loses; or have an operator unprotect the table first.",
            );
        }
    }
}

/// The `ddl_command_start` event trigger (`tenancy._on_ddl_command_start`): a C-language
/// function, because only those receive the command's parse tree.
///
/// # Safety
/// Called by PostgreSQL's function manager with a valid `fcinfo`.
#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn tenancy_ddl_command_start(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: `fcinfo` is valid for the call; its context is checked to be the event trigger's
    // data before it is read as such.
    unsafe {
        let ctx = (*fcinfo).context;
        if ctx.is_null() || (*ctx).type_ != pg_sys::NodeTag::T_EventTriggerData {
            errors::raise(
                pgrx::PgSqlErrorCode::ERRCODE_E_R_I_E_EVENT_TRIGGER_PROTOCOL_VIOLATED,
                "tenancy._on_ddl_command_start() is pg_tenancy's event trigger and cannot be called",
                "It runs at the start of every DDL command.",
            );
        }
        if catalog::installed() {
            let data = ctx as *mut pg_sys::EventTriggerData;
            let stmt = (*data).parsetree;
            if !stmt.is_null()
                && !pg_sys::creating_extension
                && !crate::protection::policy::guard_stands_aside()
            {
                pin_named_relations(stmt);
            }
            check_ddl(stmt, pg_sys::debug_query_string);
        }
        pg_sys::Datum::from(0usize)
    }
}

/// Function-manager information for [`tenancy_ddl_command_start`] (PG_FUNCTION_INFO_V1).
#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_tenancy_ddl_command_start() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `LOCK TABLE` runs no event trigger: checked by the utility hook, so only where the library
/// is loaded (preloaded, or called earlier in the session; verify() reports a database that
/// does not preload it).
///
/// # Safety
/// `stmt` is the utility statement being run.
pub unsafe fn check_utility(stmt: *mut pg_sys::Node) {
    // SAFETY: the tag is read before the node is used as a LockStmt.
    unsafe {
        if !stmt.is_null() && (*stmt).type_ == pg_sys::NodeTag::T_LockStmt && catalog::installed() {
            check_lock(stmt as *mut pg_sys::LockStmt);
        }
        // Where pg_tenancy is installed (a database of a cluster that preloads it may not be).
        if !stmt.is_null() && crate::pg::citus::in_database() && catalog::installed() {
            check_citus_shard_utility(stmt);
        }
        if !stmt.is_null()
            && unwatched_by_older_event_triggers(stmt)
            && catalog::sql_objects_of_another_version()
        {
            check_ddl(stmt, pg_sys::debug_query_string);
        }
    }
}

/// The commands this library's `ddl_command_start` trigger checks that 0.1.0's did not fire for:
/// `CREATE TRIGGER`, `CREATE CAST`, a column renamed through `ALTER VIEW`, `ALTER
/// MATERIALIZED VIEW` or `ALTER FOREIGN TABLE` (PostgreSQL renames a table's column under any
/// of them), and `ALTER SCHEMA ... RENAME`. Between installing this library and `ALTER EXTENSION pg_tenancy UPDATE`, the
/// utility hook checks them itself (an attacker's pass: a trigger with a temporary function read
/// another tenant's rows there, and a rename moved a tenant's audit exclusion). Where the
/// library is not loaded yet when such a command starts, `_guard_check` at `ddl_command_end`
/// refuses the first two forms on a protected table until the update.
///
/// # Safety
/// `stmt` must be a valid, non-null parse tree.
unsafe fn unwatched_by_older_event_triggers(stmt: *mut pg_sys::Node) -> bool {
    // SAFETY: the tag is read before the node is read as a RenameStmt.
    unsafe {
        match (*stmt).type_ {
            pg_sys::NodeTag::T_CreateTrigStmt | pg_sys::NodeTag::T_CreateCastStmt => true,
            pg_sys::NodeTag::T_RenameStmt => {
                matches!(
                    (*(stmt as *mut pg_sys::RenameStmt)).relationType,
                    pg_sys::ObjectType::OBJECT_VIEW
                        | pg_sys::ObjectType::OBJECT_MATVIEW
                        | pg_sys::ObjectType::OBJECT_FOREIGN_TABLE
                ) || (*(stmt as *mut pg_sys::RenameStmt)).renameType
                    == pg_sys::ObjectType::OBJECT_SCHEMA
            }
            _ => false,
        }
    }
}

/// On Citus, before a utility statement that no event trigger sees: a shard (or a worker's
/// shell) of a protected table may not be emptied by TRUNCATE (which row security does not
/// confine, and whose trigger shards do not carry), nor become the parent of a new table (whose
/// rows the shard's readers would then see, without its policies), except by a superuser.
///
/// # Safety
/// `stmt` must be a valid, non-null parse tree; inside a transaction.
unsafe fn check_citus_shard_utility(stmt: *mut pg_sys::Node) {
    // SAFETY: each node is read as its tag says; relation lists hold RangeVars; the tree is
    // the utility hook's own (`crate::pg::hooks`), so [`pin`] may qualify its names.
    unsafe {
        // The relations are pinned first ([`pin`], as the guard's event trigger pins a DDL
        // command's): a reviewer, as a shard's owner on a worker, held a lock on a decoy table
        // named as the shard earlier on its search_path while its TRUNCATE (or CREATE TABLE
        // ... INHERITS) of that name waited, then dropped the decoy, and the command reached
        // the shard unchecked. Not for those the checks below let through anyway.
        let checked = !crate::protection::policy::guard_stands_aside()
            && !crate::authz::is_superuser(crate::authz::caller());
        let rels: Vec<pg_sys::Oid> = match (*stmt).type_ {
            pg_sys::NodeTag::T_TruncateStmt => {
                list::<pg_sys::RangeVar>((*(stmt as *mut pg_sys::TruncateStmt)).relations)
                    .into_iter()
                    .map(|rv| {
                        // Not a Citus table itself: Citus takes its TRUNCATE's locks on every
                        // node in one order (its hook runs after this one), which a lock taken
                        // here first would break (a reviewer: two TRUNCATEs from two nodes
                        // then deadlocked). Its shards and any other table are pinned.
                        if checked && !crate::citus::trail::citus_table(relid_of(rv)) {
                            pin(rv, pg_sys::AccessExclusiveLock, LockFirst::IfTruncatable);
                        }
                        relid_of(rv)
                    })
                    .collect()
            }
            pg_sys::NodeTag::T_CreateStmt => {
                let s = stmt as *mut pg_sys::CreateStmt;
                // PostgreSQL opens a new table's parents before checking anything of them: a
                // partition's parent ACCESS EXCLUSIVE, an inheritance parent SHARE UPDATE
                // EXCLUSIVE.
                let mode = if (*s).partbound.is_null() {
                    pg_sys::ShareUpdateExclusiveLock
                } else {
                    pg_sys::AccessExclusiveLock
                };
                list::<pg_sys::RangeVar>((*s).inhRelations)
                    .into_iter()
                    .map(|rv| {
                        if checked {
                            pin(rv, mode, LockFirst::Always);
                        }
                        relid_of(rv)
                    })
                    .collect()
            }
            pg_sys::NodeTag::T_RenameStmt => {
                let r = stmt as *mut pg_sys::RenameStmt;
                // Whatever is renamed, when its relation is one: the relation itself in any of
                // its forms (`ALTER INDEX t RENAME` renames a table too), or its columns,
                // constraints, triggers, policies and rules (a column renamed on one shard
                // misplaces values; a trigger renamed there escapes the name the guard compares).
                if !(*r).relation.is_null() {
                    if checked {
                        let mode = if (*r).renameType == pg_sys::ObjectType::OBJECT_INDEX {
                            pg_sys::ShareUpdateExclusiveLock
                        } else {
                            pg_sys::AccessExclusiveLock
                        };
                        pin((*r).relation, mode, LockFirst::IfOwner);
                    }
                    refuse_citus_rename(relid_of((*r).relation));
                }
                return;
            }
            pg_sys::NodeTag::T_AlterObjectSchemaStmt => {
                let r = stmt as *mut pg_sys::AlterObjectSchemaStmt;
                if !(*r).relation.is_null() {
                    if checked {
                        pin(
                            (*r).relation,
                            pg_sys::AccessExclusiveLock,
                            LockFirst::IfOwner,
                        );
                    }
                    refuse_citus_rename(relid_of((*r).relation));
                }
                return;
            }
            _ => return,
        };
        if rels.is_empty()
            || crate::protection::policy::guard_stands_aside()
            || crate::authz::is_superuser(crate::authz::caller())
        {
            return;
        }
        for rel in rels {
            if crate::citus::guard::guarded(rel) {
                refuse_shard_change(rel, "Change the table on the coordinator; a tenant's rows are removed by tenancy.decommission_tenant().");
            }
        }
    }
}

/// A tenant's audit exclusions name columns of a protected table (or of a parent whose
/// exclusions its partitions follow, or of a partition, whose column a rename of the parent
/// renames too): renaming an excluded column, or renaming a column to an
/// excluded name, would move the tenant admin's decision onto another column unseen (an
/// attacker's pass, as the table's owner, had a column the admin kept in the trail go
/// unrecorded that way). Refused to everyone but superusers; the admins clear the exclusion
/// first (`audit_exclude(tbl, '{}')`).
fn refuse_renaming_an_excluded_column(rel: pg_sys::Oid, old: &str, new: &str) {
    if let Some(table) = exclusion_naming(rel, old, new) {
        refuse_channel(
            rel,
            format!(
                "column \"{old}\" of \"{}\" cannot be renamed to \"{new}\": a tenant's audit exclusions on {table} name one of them",
                crate::catalog::relation_name(rel)
            ),
            "Exclusions name columns: the tenants' admins clear theirs first (SELECT tenancy.audit_exclude(tbl, '{}');) and set them again after the rename.",
        );
    }
}

/// A column added under a name a tenant's audit exclusions still name (its column was
/// dropped) would be left out of the trail from its first value: refused as a rename onto
/// that name is ([`refuse_renaming_an_excluded_column`]).
fn refuse_adding_an_excluded_column(rel: pg_sys::Oid, name: &str) {
    if let Some(table) = exclusion_naming(rel, name, name) {
        refuse_channel(
            rel,
            format!(
                "column \"{name}\" cannot be added to \"{}\": a tenant's audit exclusions on {table} still name it",
                crate::catalog::relation_name(rel)
            ),
            "Exclusions name columns, and outlive a dropped one: the tenants' admins clear theirs first (SELECT tenancy.audit_exclude(tbl, '{}');), or choose another name.",
        );
    }
}

/// The table (`rel`, a parent or a partition of it) whose audit exclusion names `a` or `b`,
/// for a caller the guard holds (not a superuser, nor a restore).
fn exclusion_naming(rel: pg_sys::Oid, a: &str, b: &str) -> Option<String> {
    if rel == pg_sys::InvalidOid
        || crate::protection::policy::guard_stands_aside()
        || crate::authz::is_superuser(crate::authz::caller())
    {
        return None;
    }
    catalog::owner_rows(
        "tenancy.audit_exclusion",
        "WITH RECURSIVE up(rel) AS (SELECT $1::pg_catalog.oid UNION \
            SELECT i.inhparent FROM pg_catalog.pg_inherits i JOIN up ON i.inhrelid OPERATOR(pg_catalog.=) up.rel), \
           down(rel) AS (SELECT $1::pg_catalog.oid UNION \
            SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN down ON i.inhparent OPERATOR(pg_catalog.=) down.rel) \
         SELECT e.relid::pg_catalog.text FROM tenancy.audit_exclusion e \
          WHERE e.relid::pg_catalog.oid IN (SELECT rel FROM up UNION SELECT rel FROM down) \
            AND e.columns OPERATOR(pg_catalog.&&) ARRAY[$2, $3]::pg_catalog.text[] LIMIT 1",
        &[rel.into(), a.into(), b.into()],
        |r| Ok(r.get::<String>(1)?.unwrap_or_default()),
    )
    .into_iter()
    .next()
}

/// On Citus, a protected table's name is how Citus finds its shards on every node, and how the
/// guard there finds them: renaming the table, one of its shards or a worker's copy (shell) of
/// it, or moving one to another schema, is a superuser's change (a trusted migration role),
/// which Citus carries to every node. A table owner renaming a shard away on a worker could put
/// a table of its own, without row security or audit triggers, where Citus sends the tenants'
/// statements (an attacker's review, 2026-12-05); a worker cannot tell Citus carrying the
/// owner's rename of the table from the owner renaming a shard there itself, so the owner's
/// renames are refused everywhere.
fn refuse_citus_rename(rel: pg_sys::Oid) {
    if crate::protection::policy::guard_stands_aside()
        || crate::authz::is_superuser(crate::authz::caller())
        || !crate::citus::guard::citus_protected_anywhere(rel)
    {
        return;
    }
    refuse_channel(
        rel,
        format!(
            "\"{}\" is a protected Citus table, or a shard or copy of one: only a superuser renames it (or its columns, constraints, triggers, policies, rules) or moves it to another schema",
            crate::catalog::relation_name(rel)
        ),
        "Citus finds a table's shards on every node by its name. Have a superuser (a trusted migration role) rename the table on the coordinator; Citus renames its shards and copies on every node.",
    )
}

/// CREATE TRIGGER on a protected table, before it runs (ddl_command_start, for every role but
/// superusers, loaded or not). A trigger's function runs in every tenant's sessions, with
/// each session's binding: it can copy the rows that tenant writes, or reads, to where another
/// tenant reads them (NOTIFY, a table without row security, a setting). PostgreSQL lets any
/// role holding the TRIGGER privilege create one, which an application role may hold (GRANT
/// ALL); pg_tenancy lets only the table's owner (a migration role, which application sessions
/// cannot be: verify's `owner_can_bind`), and not with a function in a temporary schema,
/// which its session can replace at will and which no one else sees.
///
/// # Safety
/// `s` must be a valid CreateTrigStmt parse tree; inside the command's transaction.
unsafe fn check_create_trigger(s: *mut pg_sys::CreateTrigStmt) {
    if crate::protection::policy::guard_stands_aside() {
        return;
    }
    // SAFETY: `s` is a CreateTrigStmt (this function's contract); its relation is a RangeVar
    // and its function name a List of String nodes, looked up in the catalog (missing ok).
    unsafe {
        let rel = relid_of((*s).relation);
        if !is_protected(rel) {
            return;
        }
        let table = crate::catalog::relation_name(rel);
        // pg_tenancy's own triggers (audit, TRUNCATE refusal) are made by protect() only:
        // CREATE OR REPLACE TRIGGER under their name swapped in the owner's function, and every
        // tenant's writes then went unrecorded and TRUNCATE through (an attacker's pass). The
        // protection digest reads each of them whole too, so verify() reports a superuser's.
        if !(*s).trigname.is_null()
            && std::ffi::CStr::from_ptr((*s).trigname)
                .to_bytes()
                .starts_with(b"tenancy_")
        {
            refuse_channel(
                rel,
                format!(
                    "trigger \"{}\" on protected table \"{table}\" is refused: triggers named tenancy_... are pg_tenancy's own",
                    std::ffi::CStr::from_ptr((*s).trigname).to_string_lossy()
                ),
                "pg_tenancy creates and replaces its triggers itself (SELECT tenancy.protect(tbl);); name your own triggers otherwise.",
            );
        }
        let caller = crate::authz::caller();
        let func = pg_sys::LookupFuncName((*s).funcname, 0, std::ptr::null(), true);
        let temp_function = func != pg_sys::InvalidOid
            && pg_sys::isAnyTempNamespace(pg_sys::get_func_namespace(func));
        if temp_function {
            refuse_channel(
                rel,
                format!("a trigger on protected table \"{table}\" with a temporary function is refused: it would run in every tenant's sessions"),
                "Create the trigger function in a schema of its own, owned by a migration role, and have that role (the table's owner) create the trigger.",
            );
        }
        let owner = crate::catalog::relation_owner(rel).unwrap_or(pg_sys::InvalidOid);
        if !pg_sys::has_privs_of_role(caller, owner) {
            refuse_channel(
                rel,
                format!(
                    "CREATE TRIGGER on protected table \"{table}\" is refused for role \"{}\", which does not own it: a trigger runs in every tenant's sessions and sees their rows",
                    crate::authz::role_name(caller)
                ),
                format!("The table's owner (a migration role) or a superuser creates its triggers. Application roles need no TRIGGER privilege: REVOKE TRIGGER ON {table} FROM {};", crate::catalog::quote_ident(&crate::authz::role_name(caller))),
            );
        }
    }
}

/// The checks of an ALTER TABLE (or ALTER TYPE of a composite type) on protected tables.
///
/// # Safety
/// `s` must be a valid AlterTableStmt parse tree, `query` null or its NUL-terminated source
/// text; inside the command's transaction.
unsafe fn check_alter_table(s: *mut pg_sys::AlterTableStmt, query: *const std::ffi::c_char) {
    // SAFETY: `s` and its commands are a parse tree of ALTER TABLE (or ALTER TYPE).
    unsafe {
        let rel = relid_of((*s).relation);
        let cmds = list::<pg_sys::AlterTableCmd>((*s).cmds);
        if (*s).objtype == pg_sys::ObjectType::OBJECT_TYPE {
            // ALTER TYPE ... ADD/ALTER ATTRIBUTE ... CASCADE changes (and rewrites) the tables
            // of that type: each protected one is checked as if altered itself.
            for table in typed_tables(rel) {
                check_alter_table_cmds(table, true, &cmds, query);
            }
            return;
        }
        check_alter_table_cmds(rel, is_protected(rel), &cmds, query);
    }
}

/// The protected tables a change of the composite type whose relation is `rel` reaches with
/// CASCADE: its typed tables (CREATE TABLE ... OF) and their partitions and children, which are
/// not of the type themselves, whether or not the typed table is protected (a reviewer's pass:
/// a protected partition under an unprotected typed parent).
fn typed_tables(rel: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    if rel == pg_sys::InvalidOid {
        return Vec::new();
    }
    let typed = catalog::owner_rows(
        "the tables of a type",
        "SELECT c.oid FROM pg_catalog.pg_class c \
          WHERE c.reloftype = (SELECT reltype FROM pg_catalog.pg_class WHERE oid = $1) ORDER BY c.oid",
        &[rel.into()],
        |r| Ok(r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid)),
    );
    protected_with_descendants(&typed)
}

/// The checks of the commands of an ALTER TABLE on `rel` (`protected`: a protected table).
///
/// # Safety
/// `cmds` must be valid AlterTableCmd nodes of the statement's parse tree, `query` null or its
/// NUL-terminated source text; inside the command's transaction.
unsafe fn check_alter_table_cmds(
    rel: pg_sys::Oid,
    protected: bool,
    cmds: &[*mut pg_sys::AlterTableCmd],
    query: *const std::ffi::c_char,
) {
    // SAFETY: every command is an AlterTableCmd of the statement's parse tree.
    unsafe {
        // Columns this statement adds, which its constraints may name.
        let mut new_columns = Vec::new();
        if protected {
            for &cmd in cmds {
                if matches!(
                    (*cmd).subtype,
                    pg_sys::AlterTableType::AT_AddColumn
                        | pg_sys::AlterTableType::AT_AddColumnRecurse
                ) {
                    let col = (*cmd).def as *mut pg_sys::ColumnDef;
                    if !(*col).colname.is_null() {
                        let (typ, typmod) = column_type(col);
                        new_columns.push(NewColumn {
                            name: std::ffi::CStr::from_ptr((*col).colname)
                                .to_string_lossy()
                                .into_owned(),
                            typ,
                            typmod,
                        });
                    }
                }
            }
        }
        for &cmd in cmds {
            let def = (*cmd).def;
            match (*cmd).subtype {
                // The table's rows would be read through a parent without its policies.
                pg_sys::AlterTableType::AT_AddInherit if protected => {
                    let parent = relid_of(def as *mut pg_sys::RangeVar);
                    if !is_protected(parent) {
                        refuse_channel(
                            rel,
                            format!(
                                "protected table \"{}\" cannot inherit from unprotected table \"{}\"",
                                crate::catalog::relation_name(rel),
                                crate::catalog::relation_name(parent)
                            ),
                            format!(
                                "A parent's queries read its children's rows under the parent's policies only. Have an operator protect the parent first: SELECT tenancy.protect({});",
                                crate::catalog::quote_literal(&crate::catalog::relation_name(parent))
                            ),
                        );
                    }
                }
                // An unprotected table becomes protected by joining a protected parent: what it
                // brings (its constraints, indexes, partition key, column types) then runs over
                // every tenant's rows.
                pg_sys::AlterTableType::AT_AddInherit => {
                    let parent = relid_of(def as *mut pg_sys::RangeVar);
                    if crate::pg::citus::in_database()
                        && !crate::authz::is_superuser(crate::authz::caller())
                        && crate::citus::guard::guarded(parent)
                    {
                        refuse_shard_change(parent, "Change the table on the coordinator.");
                    }
                    if is_protected(parent) {
                        refuse_leaky_members(rel, parent);
                    }
                }
                pg_sys::AlterTableType::AT_AttachPartition => {
                    let part = relid_of((*(def as *mut pg_sys::PartitionCmd)).name);
                    if protected {
                        refuse_leaky_members(part, rel);
                    } else if is_protected(part) {
                        refuse_channel(
                            part,
                            format!(
                                "protected table \"{}\" cannot become a partition of unprotected table \"{}\"",
                                crate::catalog::relation_name(part),
                                crate::catalog::relation_name(rel)
                            ),
                            format!(
                                "Queries of the parent read its partitions under the parent's policies only. Have an operator protect the parent first: SELECT tenancy.protect({});",
                                crate::catalog::quote_literal(&crate::catalog::relation_name(rel))
                            ),
                        );
                    }
                }
                _ if !protected => {}
                // On a Citus worker, a shard made UNLOGGED loses every tenant's rows in it at
                // the next crash, while the table on the coordinator says nothing of it.
                pg_sys::AlterTableType::AT_SetUnLogged if crate::citus::guard::guarded(rel) => {
                    refuse_channel(
                        rel,
                        format!(
                            "\"{}\" is a shard of a protected Citus table: it cannot be made UNLOGGED here",
                            crate::catalog::relation_name(rel)
                        ),
                        "Change the table on the coordinator.",
                    )
                }
                // An UNLOGGED table is emptied by crash recovery (and is empty on a standby
                // promoted in a failover): every tenant's rows would be gone with no record in
                // any trail (an attacker's pass, as the table's owner).
                pg_sys::AlterTableType::AT_SetUnLogged => refuse_unlogged(rel),
                // A default is evaluated in the session of whoever inserts: in every tenant's
                // sessions, with their bindings, where a function of the owner's would read
                // their rows (or, on a Citus worker, what the session carries) and keep them.
                pg_sys::AlterTableType::AT_ColumnDefault => {
                    check_default(rel, def, query, &new_columns)
                }
                pg_sys::AlterTableType::AT_AddConstraint
                | pg_sys::AlterTableType::AT_AddConstraintRecurse => check_constraint(
                    rel,
                    def as *mut pg_sys::Constraint,
                    query,
                    &new_columns,
                    None,
                ),
                pg_sys::AlterTableType::AT_AddColumn
                | pg_sys::AlterTableType::AT_AddColumnRecurse => {
                    let col = def as *mut pg_sys::ColumnDef;
                    let (typ, typmod) = column_type(col);
                    let name = if (*col).colname.is_null() {
                        String::new()
                    } else {
                        std::ffi::CStr::from_ptr((*col).colname)
                            .to_string_lossy()
                            .into_owned()
                    };
                    let generated = list::<pg_sys::Constraint>((*col).constraints)
                        .into_iter()
                        .any(|c| {
                            !c.is_null() && (*c).contype == pg_sys::ConstrType::CONSTR_GENERATED
                        });
                    // A generated column is computed for every row now; any other new column
                    // holds its default, and its type's code sees each tenant's later writes.
                    refuse_leaky_type(rel, &name, typ, generated);
                    if protected {
                        refuse_adding_an_excluded_column(rel, &name);
                    }
                    for c in list::<pg_sys::Constraint>((*col).constraints) {
                        check_constraint(rel, c, query, &new_columns, Some((typ, typmod)));
                    }
                }
                pg_sys::AlterTableType::AT_AlterColumnType => {
                    let col = def as *mut pg_sys::ColumnDef;
                    let name = if (*cmd).name.is_null() {
                        String::new()
                    } else {
                        std::ffi::CStr::from_ptr((*cmd).name)
                            .to_string_lossy()
                            .into_owned()
                    };
                    let (typ, typmod) = column_type(col);
                    // The USING expression runs over every row...
                    refuse_leaky_raw(
                        rel,
                        (*col).raw_default,
                        pg_sys::ParseExprKind::EXPR_KIND_ALTER_COL_TRANSFORM,
                        "ALTER COLUMN TYPE ... USING",
                        query,
                        &new_columns,
                    );
                    // ... and so does the cast to the new type (a plain built-in cast passes;
                    // one made with a user's function does not) ...
                    let value = if (*col).raw_default.is_null() {
                        column_ref(&name)
                    } else {
                        (*col).raw_default
                    };
                    refuse_leaky(
                        rel,
                        "ALTER COLUMN TYPE",
                        leaky_raw(
                            rel,
                            value,
                            pg_sys::ParseExprKind::EXPR_KIND_ALTER_COL_TRANSFORM,
                            query,
                            &new_columns,
                            Some((typ, typmod)),
                            true,
                        ),
                    );
                    // ... and the constraints of the new type's domains.
                    refuse_leaky_type(rel, &name, typ, true);
                }
                pg_sys::AlterTableType::AT_ValidateConstraint
                | pg_sys::AlterTableType::AT_ValidateConstraintRecurse => {
                    let name = std::ffi::CStr::from_ptr((*cmd).name)
                        .to_string_lossy()
                        .into_owned();
                    let stored = catalog::read_one::<String>(
                        "SELECT conbin::text FROM pg_catalog.pg_constraint WHERE conrelid = $1 AND conname = $2",
                        &[rel.into(), name.as_str().into()],
                    );
                    refuse_leaky_stored(rel, stored, "the constraint to validate");
                }
                _ => {}
            }
        }
    }
}

/// A raw reference to column `name`, as the parser would build it.
///
/// # Safety
/// On the backend's thread; the nodes are palloc'd in the current memory context, which must
/// outlive their use.
unsafe fn column_ref(name: &str) -> *mut pg_sys::Node {
    // SAFETY: a ColumnRef node allocated in the current memory context, as makeNode would.
    unsafe {
        let cref =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::ColumnRef>()) as *mut pg_sys::ColumnRef;
        (*cref).type_ = pg_sys::NodeTag::T_ColumnRef;
        let cname = std::ffi::CString::new(name).unwrap_or_default();
        (*cref).fields = pg_sys::lappend(
            std::ptr::null_mut(),
            pg_sys::makeString(pg_sys::pstrdup(cname.as_ptr())).cast(),
        );
        (*cref).location = -1;
        cref.cast()
    }
}

/// What an existing table brings when it becomes protected by joining protected table
/// `parent` (ATTACH PARTITION, INHERIT): its own code then runs over every tenant's rows
/// written to it, and so does that of every partition or child below it, which becomes
/// protected with it (a reviewer's pass attached a partitioned table whose own partition held
/// a leaky CHECK or a writing foreign key). Its rows are its owner's own, so only a user's code
/// is refused (as for a new table), and writing foreign keys
/// ([`refuse_writing_foreign_keys`], with the parent's tenant column).
pub(crate) fn refuse_leaky_members(rel: pg_sys::Oid, parent: pg_sys::Oid) {
    if rel == pg_sys::InvalidOid {
        return;
    }
    let tree = inheritance_tree(rel);
    let column = catalog::owner_rows(
        "tenancy.protected_table",
        "SELECT tenant_column::pg_catalog.text FROM tenancy.protected_table WHERE relid OPERATOR(pg_catalog.=) $1",
        &[parent.into()],
        |r| Ok(r.get::<String>(1)?.unwrap_or_default()),
    )
    .into_iter()
    .next()
    .unwrap_or_else(|| "tenant_id".to_string());
    refuse_writing_foreign_keys(&tree, Some(&column));
    for member in tree {
        refuse_what_a_member_brings(member, true);
    }
}

/// Refuse a table that is protected now (`joining` false: created protected) or is about to
/// be (`joining`: it joins a protected parent) for what its own definition brings: UNLOGGED
/// storage ([`refuse_unlogged`]) or a user's code run over every tenant's rows written to it
/// ([`stored_leaky_call`]). One place for the new table's check ([`guard_members`]) and the
/// joining tree's ([`refuse_leaky_members`]).
fn refuse_what_a_member_brings(rel: pg_sys::Oid, joining: bool) {
    if unlogged(rel) {
        refuse_unlogged(rel);
    }
    if let Some((what, call)) = stored_leaky_call(rel) {
        let name = crate::catalog::relation_name(rel);
        refuse_channel(
            rel,
            if joining {
                format!("{what} of \"{name}\" calls {call}, which would run over every tenant's rows once it is protected")
            } else {
                format!("{what} of protected table \"{name}\" calls {call}, which would see every tenant's writes")
            },
            EXPRESSION_HINT,
        );
    }
}

/// `rel` and every partition and child below it, recursively.
fn inheritance_tree(rel: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    catalog::owner_rows(
        "pg_inherits",
        "WITH RECURSIVE d(rel) AS (SELECT $1::pg_catalog.oid UNION \
            SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN d ON i.inhparent OPERATOR(pg_catalog.=) d.rel) \
         SELECT rel FROM d ORDER BY 1",
        &[rel.into()],
        |r| Ok(r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid)),
    )
}

/// Whether a statement planned on `rel` would run a user's code: [`stored_leaky_call`] of
/// `rel` or of any partition or child a statement on it expands to.
pub(crate) fn tree_calls_owner_code(rel: pg_sys::Oid) -> bool {
    inheritance_tree(rel)
        .into_iter()
        .any(|r| stored_leaky_call(r).is_some())
}

/// The first user's code (not built in) that a table's own definition runs over the rows
/// written to it: CHECK constraints, index expressions and predicates, its extended
/// statistics' expressions (ANALYZE, and autovacuum's, evaluates them over every row), its
/// partition key, generated columns, the types of its columns; and its rules. `(what, call)`,
/// or None.
pub(crate) fn stored_leaky_call(rel: pg_sys::Oid) -> Option<(String, String)> {
    let rows = catalog::owner_rows(
        "a table's definition",
        "SELECT format('CHECK constraint %I', conname), conbin::text, NULL::oid FROM pg_catalog.pg_constraint \
          WHERE conrelid = $1 AND contype = 'c' \
         UNION ALL SELECT format('index %s', indexrelid::regclass), indexprs::text, NULL FROM pg_catalog.pg_index \
          WHERE indrelid = $1 AND indexprs IS NOT NULL \
         UNION ALL SELECT format('index %s', indexrelid::regclass), indpred::text, NULL FROM pg_catalog.pg_index \
          WHERE indrelid = $1 AND indpred IS NOT NULL \
         UNION ALL SELECT 'partition key', partexprs::text, NULL FROM pg_catalog.pg_partitioned_table \
          WHERE partrelid = $1 AND partexprs IS NOT NULL \
         UNION ALL SELECT format('statistics object %I.%I', n.nspname, s.stxname), s.stxexprs::text, NULL \
           FROM pg_catalog.pg_statistic_ext s JOIN pg_catalog.pg_namespace n ON n.oid = s.stxnamespace \
          WHERE s.stxrelid = $1 AND s.stxexprs IS NOT NULL \
         UNION ALL SELECT format('generated column %I', a.attname), d.adbin::text, NULL \
           FROM pg_catalog.pg_attrdef d JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum \
          WHERE d.adrelid = $1 AND a.attgenerated <> '' \
         UNION ALL SELECT format('the default of column %I', a.attname), d.adbin::text, NULL \
           FROM pg_catalog.pg_attrdef d JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum \
          WHERE d.adrelid = $1 AND a.attgenerated = '' \
         UNION ALL SELECT format('the type of column %I', attname), NULL, atttypid FROM pg_catalog.pg_attribute \
          WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped \
         UNION ALL SELECT format('rule %I', rulename), NULL, NULL FROM pg_catalog.pg_rewrite \
          WHERE ev_class = $1 AND rulename <> '_RETURN'",
        &[rel.into()],
        |r| {
            Ok((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?,
                r.get::<pg_sys::Oid>(3)?,
            ))
        },
    );
    rows.into_iter().find_map(|(what, expr, typ)| {
        let call = match (expr, typ) {
            (Some(e), _) => crate::protection::leakproof::leaky_call_text(&e, true),
            (None, Some(t)) => crate::protection::leakproof::type_leaky_call(t, true),
            (None, None) => Some("actions that see every tenant's writes".into()),
        }?;
        Some((what, call))
    })
}

/// A column default a command sets on protected table `rel`: no user's function (built-in
/// functions, leakproof or not, and pg_tenancy's own pass: `tenancy.current_tenant()`), and no
/// VOLATILE one that acts beyond its value (`pg_notify`, `tenancy.add_key`; `nextval` passes).
///
/// # Safety
/// As [`check_constraint`]: `raw` null or a raw expression of the command's parse tree, `query`
/// null or its source text, `rel` an existing relation; inside the command's transaction.
unsafe fn check_default(
    rel: pg_sys::Oid,
    raw: *mut pg_sys::Node,
    query: *const std::ffi::c_char,
    new_columns: &Vec<NewColumn>,
) {
    // SAFETY: this function's contract is leaky_raw's.
    let call = unsafe {
        leaky_raw(
            rel,
            raw,
            pg_sys::ParseExprKind::EXPR_KIND_COLUMN_DEFAULT,
            query,
            new_columns,
            None,
            true,
        )
    };
    refuse_leaky(rel, "a column default", call);
}

/// The checks of a constraint a command adds to `rel` (or to a column of type `column_type`).
///
/// # Safety
/// `c` must be null or a valid node of the command's parse tree, `query` null or its
/// NUL-terminated source text, `rel` an existing relation; inside the command's transaction.
unsafe fn check_constraint(
    rel: pg_sys::Oid,
    c: *mut pg_sys::Constraint,
    query: *const std::ffi::c_char,
    new_columns: &Vec<NewColumn>,
    column_type: Option<(pg_sys::Oid, i32)>,
) {
    // SAFETY: `c` is a Constraint node of the command's parse tree.
    unsafe {
        if c.is_null() || (*c).type_ != pg_sys::NodeTag::T_Constraint {
            return;
        }
        match (*c).contype {
            pg_sys::ConstrType::CONSTR_CHECK => refuse_leaky_raw(
                rel,
                (*c).raw_expr,
                pg_sys::ParseExprKind::EXPR_KIND_CHECK_CONSTRAINT,
                "a CHECK constraint",
                query,
                new_columns,
            ),
            pg_sys::ConstrType::CONSTR_DEFAULT => {
                check_default(rel, (*c).raw_expr, query, new_columns);
            }
            pg_sys::ConstrType::CONSTR_GENERATED => {
                refuse_leaky_raw(
                    rel,
                    (*c).raw_expr,
                    pg_sys::ParseExprKind::EXPR_KIND_GENERATED_COLUMN,
                    "a generated column",
                    query,
                    new_columns,
                );
                // Its value is cast to the column's type for every row (a user's cast).
                refuse_leaky(
                    rel,
                    "a generated column",
                    leaky_raw(
                        rel,
                        (*c).raw_expr,
                        pg_sys::ParseExprKind::EXPR_KIND_GENERATED_COLUMN,
                        query,
                        new_columns,
                        column_type,
                        true,
                    ),
                );
            }
            pg_sys::ConstrType::CONSTR_EXCLUSION => {
                for pair in list::<pg_sys::List>((*c).exclusions) {
                    let elem = list::<pg_sys::IndexElem>(pair).first().copied();
                    if let Some(e) = elem {
                        refuse_leaky_raw(
                            rel,
                            (*e).expr,
                            pg_sys::ParseExprKind::EXPR_KIND_INDEX_EXPRESSION,
                            "an exclusion constraint's expression",
                            query,
                            new_columns,
                        );
                    }
                }
                refuse_leaky_raw(
                    rel,
                    (*c).where_clause,
                    pg_sys::ParseExprKind::EXPR_KIND_INDEX_PREDICATE,
                    "an exclusion constraint's predicate",
                    query,
                    new_columns,
                );
            }
            _ => {}
        }
    }
}

/// A protected table (one, as its oid) whose values or stored expressions reach type `$1`: a
/// column's type, or a type that a default, generated column, constraint, index, partition
/// key, trigger, policy, rule or statistics object of the table names (PostgreSQL records
/// those in `pg_depend`: a conversion to a domain, a constant of a type), and every type such a
/// type is made of (`tenancy._reachable_types`). An attacker's pass owned only a domain that a
/// protected table's default and CHECK converted a value to (no column was of it), added a
/// CHECK calling its function, and read every tenant's rows from their own inserts. The tables'
/// objects are the ones [`crate::catalog::expression_dependency_of`] names for one table,
/// collected for all protected tables at once and looked up in `pg_depend` by its index, and
/// each type used is followed once: written per table (that macro's correlated form), 2,000
/// partitions of one protected table made a domain owner's ALTER DOMAIN take 17 s.
const PROTECTED_TABLE_REACHING_TYPE: &str =
    "WITH p(relid) AS (SELECT relid::pg_catalog.oid FROM tenancy.protected_table), \
      objects(relid, classid, objid) AS ( \
      SELECT p.relid, 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid, p.relid FROM p \
      UNION ALL SELECT i.indrelid, 'pg_catalog.pg_class'::pg_catalog.regclass, i.indexrelid \
        FROM pg_catalog.pg_index i JOIN p ON p.relid = i.indrelid \
      UNION ALL SELECT x.adrelid, 'pg_catalog.pg_attrdef'::pg_catalog.regclass, x.oid \
        FROM pg_catalog.pg_attrdef x JOIN p ON p.relid = x.adrelid \
      UNION ALL SELECT x.conrelid, 'pg_catalog.pg_constraint'::pg_catalog.regclass, x.oid \
        FROM pg_catalog.pg_constraint x JOIN p ON p.relid = x.conrelid \
      UNION ALL SELECT x.tgrelid, 'pg_catalog.pg_trigger'::pg_catalog.regclass, x.oid \
        FROM pg_catalog.pg_trigger x JOIN p ON p.relid = x.tgrelid \
      UNION ALL SELECT x.polrelid, 'pg_catalog.pg_policy'::pg_catalog.regclass, x.oid \
        FROM pg_catalog.pg_policy x JOIN p ON p.relid = x.polrelid \
      UNION ALL SELECT x.ev_class, 'pg_catalog.pg_rewrite'::pg_catalog.regclass, x.oid \
        FROM pg_catalog.pg_rewrite x JOIN p ON p.relid = x.ev_class \
      UNION ALL SELECT x.stxrelid, 'pg_catalog.pg_statistic_ext'::pg_catalog.regclass, x.oid \
        FROM pg_catalog.pg_statistic_ext x JOIN p ON p.relid = x.stxrelid), \
      used(relid, typ) AS ( \
      SELECT a.attrelid, a.atttypid FROM pg_catalog.pg_attribute a JOIN p ON p.relid = a.attrelid \
       WHERE a.attnum > 0 AND NOT a.attisdropped \
      UNION ALL \
      SELECT o.relid, d.refobjid FROM objects o JOIN pg_catalog.pg_depend d \
          ON d.classid = o.classid AND d.objid = o.objid \
         AND d.refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass), \
      reached(typ) AS ( \
      SELECT t.typ FROM (SELECT DISTINCT typ FROM used WHERE typ >= 16384) t \
       WHERE $1 IN (SELECT tenancy._reachable_types(t.typ)) LIMIT 1) \
     SELECT u.relid FROM used u JOIN reached r ON r.typ = u.typ LIMIT 1";

/// `ALTER DOMAIN ... ADD CONSTRAINT` / `VALIDATE CONSTRAINT` checks the constraint against every
/// value stored in a column of the domain, as the domain's owner, with no row security; and
/// every later conversion to the domain runs it, in an expression of a protected table too
/// ([`PROTECTED_TABLE_REACHING_TYPE`]: a default, a CHECK, an index expression), in every
/// tenant's session.
/// `ALTER DOMAIN ... SET DEFAULT` sets what every tenant's inserts that leave such a column out
/// run: like a column's default, no user's function (an attacker's pass, owning only the
/// domain, had its function read every tenant's rows from their own inserts).
///
/// # Safety
/// `s` must be a valid AlterDomainStmt parse tree, `query` null or the command's source text;
/// inside the command's transaction.
unsafe fn check_alter_domain(s: *mut pg_sys::AlterDomainStmt, query: *const std::ffi::c_char) {
    // SAFETY: `s` is a parse tree of ALTER DOMAIN.
    unsafe {
        let subtype = (*s).subtype as u8;
        let default = subtype == b'T' && !(*s).def.is_null();
        if subtype != b'C' && subtype != b'V' && !default {
            return;
        }
        let typ = pg_sys::typenameTypeId(
            std::ptr::null_mut(),
            pg_sys::makeTypeNameFromNameList((*s).typeName),
        );
        // Its owner's command only: PostgreSQL checks the ownership after this trigger, and
        // another role's ALTER DOMAIN may not queue a lock on it.
        if pg_sys::pg_type_ownercheck(typ, pg_sys::GetUserId()) {
            lock_domains(&[typ], pg_sys::AccessExclusiveLock);
        }
        let used = catalog::owner_rows(
            "the protected tables' columns and expressions",
            PROTECTED_TABLE_REACHING_TYPE,
            &[typ.into()],
            |r| Ok(r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid)),
        );
        if let Some(&table) = used.first() {
            if default {
                // Analyzed as a column default of the table (a default reads no column).
                let call = leaky_raw(
                    table,
                    (*s).def,
                    pg_sys::ParseExprKind::EXPR_KIND_COLUMN_DEFAULT,
                    query,
                    &Vec::new(),
                    None,
                    true,
                );
                refuse_leaky(
                    table,
                    "the default of a domain used by a column or an expression",
                    call,
                );
                return;
            }
            refuse_channel(
                table,
                format!(
                    "the domain is used by a column or an expression of protected table \"{}\", and its new or validated constraint would run over every tenant's values",
                    crate::catalog::relation_name(table)
                ),
                "Have a superuser (a trusted migration role) change the domain, or use a domain that no protected table's column or expression uses.",
            );
        }
    }
}

/// `CREATE CAST ... WITH FUNCTION` by a role that is not a superuser, in a database with
/// protected tables: the function runs in every tenant's session that converts such a value
/// (an INSERT of a text into an enum column, a built-in's conversion of its argument to text or
/// json in a column's default), with their bindings, and its owner may replace it at any time.
/// An attacker's pass made one after a protected column of its type existed; a reviewer's, for
/// a type a default only names. Casts are the trusted migration role's (a superuser's).
///
/// # Safety
/// `s` must be a valid CreateCastStmt parse tree; inside the command's transaction.
unsafe fn check_create_cast(s: *mut pg_sys::CreateCastStmt) {
    // SAFETY: `s` is a parse tree of CREATE CAST.
    if unsafe { (*s).func.is_null() } {
        return;
    }
    if catalog::protected_relids().is_none_or(|p| p.is_empty()) {
        return;
    }
    errors::refuse(
        "guard_refused",
        serde_json::Map::new(),
        errors::INSUFFICIENT_PRIVILEGE,
        "CREATE CAST with a function is refused in a database with protected tables: the function would run in every tenant's sessions that convert such a value".to_string(),
        "Have a superuser (a trusted migration role) create the cast, or convert values with a function the application calls itself.",
    );
}

/// `LOCK TABLE` in a mode stronger than ROW EXCLUSIVE on a protected table stalls every tenant's
/// statements: refused from application sessions (anyone but an unbound operator or superuser).
///
/// # Safety
/// `s` must be a valid LockStmt parse tree; inside the command's transaction.
unsafe fn check_lock(s: *mut pg_sys::LockStmt) {
    // SAFETY: `s` is a parse tree of LOCK.
    unsafe {
        if (*s).mode <= pg_sys::RowExclusiveLock as i32 || !application_session() {
            return;
        }
        for rv in list::<pg_sys::RangeVar>((*s).relations) {
            let named = relid_of(rv);
            // LOCK of a view locks the tables it reads, and of a parent its children (as
            // PostgreSQL's LockViewRecurse and LockTableRecurse do).
            let rel = if is_protected(named) {
                named
            } else {
                protected_behind(named)
            };
            if is_protected(rel) {
                refuse_channel(
                    rel,
                    format!(
                        "LOCK TABLE \"{}\" in a mode stronger than ROW EXCLUSIVE is refused: it would stall every tenant's statements",
                        crate::catalog::relation_name(rel)
                    ),
                    "Rows are locked with SELECT ... FOR UPDATE, which locks the bound tenant's rows only. A migration that needs the table to itself runs as an operator or a superuser.",
                );
            }
        }
    }
}

/// The first protected table that `LOCK` of `rel` also locks: the tables a view reads (through
/// nested views) and the children of a table, or InvalidOid.
fn protected_behind(rel: pg_sys::Oid) -> pg_sys::Oid {
    if rel == pg_sys::InvalidOid {
        return rel;
    }
    catalog::owner_rows(
        "tenancy.protected_table",
        "WITH RECURSIVE r(rel) AS ( \
              SELECT $1::pg_catalog.oid \
              UNION \
              SELECT x.rel FROM r CROSS JOIN LATERAL ( \
                  SELECT d.refobjid FROM pg_catalog.pg_class v \
                    JOIN pg_catalog.pg_rewrite rw ON rw.ev_class = v.oid \
                    JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = rw.oid \
                                   AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid <> v.oid \
                   WHERE v.oid = r.rel AND v.relkind = 'v' \
                  UNION ALL \
                  SELECT i.inhrelid FROM pg_catalog.pg_inherits i WHERE i.inhparent = r.rel) x(rel)) \
         SELECT r.rel FROM r JOIN tenancy.protected_table p ON p.relid = r.rel LIMIT 1",
        &[rel.into()],
        |r| Ok(r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid)),
    )
    .first()
    .copied()
    .unwrap_or(pg_sys::InvalidOid)
}

#[cfg(test)]
mod reaching_type {
    /// [`super::PROTECTED_TABLE_REACHING_TYPE`] collects, for all protected tables at once, the
    /// objects [`crate::catalog::expression_dependency_of`] names for one table (the Citus
    /// guard's form): the two lists of catalogs stay the same, or a kind of expression one of
    /// them follows would escape the other.
    #[test]
    fn the_set_wise_and_per_table_object_lists_name_the_same_catalogs() {
        let per_table = crate::catalog::expression_dependency_of!("r");
        for catalog in [
            "pg_class",
            "pg_index",
            "pg_attrdef",
            "pg_constraint",
            "pg_trigger",
            "pg_policy",
            "pg_rewrite",
            "pg_statistic_ext",
        ] {
            let named = format!("pg_catalog.{catalog}");
            assert!(
                per_table.contains(&named),
                "{catalog} in the per-table form"
            );
            assert!(
                super::PROTECTED_TABLE_REACHING_TYPE.contains(&named),
                "{catalog} in the set-wise form"
            );
        }
        let kinds = |s: &str| s.matches("::pg_catalog.regclass").count();
        // The per-table form names pg_class for the table and its indexes in one branch.
        assert_eq!(
            kinds(per_table) + 1,
            kinds(super::PROTECTED_TABLE_REACHING_TYPE) - 1,
            "a catalog was added to one form only"
        );
    }
}
