//! Row-level-security policy generation: protect, unprotect, protect_schema, auto_protect.
//!
//! `protect` enables and forces row security and generates, for a table and each of its
//! partitions:
//! - `tenancy_isolation_select|insert|update|delete`, RESTRICTIVE, one per command: the tenant
//!   column equals `tenancy.allowed_tenant(table, privilege)`, the bound tenant when the bound
//!   roles hold the command's privilege (42501 otherwise), in USING and in WITH CHECK;
//! - `tenancy_select|update|delete`, PERMISSIVE, per command: the same USING expression (so
//!   PostgreSQL keeps one copy of the qual and plans it once); `tenancy_insert` and
//!   `tenancy_update`'s WITH CHECK: the same condition, or else `tenancy._cross_tenant_write`,
//!   which logs the attempt and refuses the row with a clear error. Every permissive policy
//!   carries the tenant condition, so isolation holds even where RESTRICTIVE policies are
//!   re-created as permissive, as Citus does on shards.
//!
//! The binding and the privilege are read through one call, stored bare, which
//! `binding_param.rs` plans once per statement wherever the library is loaded: as the bound
//! tenant, a reserved executor parameter, or, planned as written, the scalar subquery
//! `(SELECT tenancy.allowed_tenant(...))`, an InitPlan (in the leader of a parallel query,
//! usable as an index-scan key), in security quals and in WITH CHECK options alike. The tenant column gets `DEFAULT tenancy.current_tenant()` and NOT NULL, an
//! index led by it is created when none exists, TRUNCATE is refused by a trigger, and the
//! SHA-256 digest of the resulting state is recorded for the guard and for verify().

use crate::authz;
use crate::catalog::{self, quote_ident, quote_literal, relation_name};
use crate::errors::{self, INVALID_PARAMETER, UNDEFINED_OBJECT};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::Cell;

thread_local! {
    /// > 0 while pg_tenancy itself runs DDL on protected tables (the guard lets it through).
    static MANAGED_DDL: Cell<u32> = const { Cell::new(0) };
}

/// Marks pg_tenancy's own DDL for the guard; released on drop (also when an error unwinds).
struct ManagedDdl;
impl ManagedDdl {
    fn enter() -> ManagedDdl {
        MANAGED_DDL.with(|m| m.set(m.get() + 1));
        ManagedDdl
    }
}
impl Drop for ManagedDdl {
    fn drop(&mut self) {
        MANAGED_DDL.with(|m| m.set(m.get().saturating_sub(1)));
    }
}

/// Whether pg_tenancy's own DDL is running, and the statement being checked is one of its own
/// statements (or a subcommand PostgreSQL made of one), not a statement that code reached by
/// one of them runs (a domain's CHECK, a trigger, a function in an expression): an attacker's
/// pass ran `ALTER TABLE ... NO FORCE ROW LEVEL SECURITY` from a domain's CHECK that
/// `attach_partition`'s ATTACH evaluated, and the guard stood aside for it.
pub fn in_managed_ddl() -> bool {
    MANAGED_DDL.with(|m| m.get() > 0)
        && MANAGED_STATEMENT.with(|m| {
            m.get()
                .is_none_or(|deepest| crate::pg::hooks::utility_depth() <= deepest)
        })
}

thread_local! {
    /// While [`run_all`] runs one of its statements: the deepest utility statement that is
    /// still its own (its depth; the statements that code it reaches runs are deeper).
    static MANAGED_STATEMENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Restores the enclosing [`MANAGED_STATEMENT`] when one of run_all's statements ends (also
/// when it raises).
struct ManagedStatement(Option<usize>);
impl Drop for ManagedStatement {
    fn drop(&mut self) {
        MANAGED_STATEMENT.with(|m| m.set(self.0));
    }
}

/// A restore (pg_restore, or psql running a pg_dump script) runs as a superuser with
/// `row_security = off`, and re-creates protected tables' policies and triggers one by one after
/// pg_tenancy's catalog has been loaded. The guard and auto-protection stand aside then: a
/// superuser bypasses them anyway, and verify() checks the restored state against the restored
/// digests. For everyone else `row_security = off` changes nothing here.
pub fn in_restore() -> bool {
    // SAFETY: row_security is this backend's GUC variable, read on its only thread; superuser()
    // reads the current user's catalog row (or its cache), as any privilege check does.
    unsafe { !pg_sys::row_security && pg_sys::superuser() }
}

pub fn reset_at_transaction_end() {
    MANAGED_DDL.with(|m| m.set(0));
}

/// Whether the guard and auto-protection stand aside for the DDL running now: pg_tenancy's own
/// (managed), a restore's, or a superuser's connection that Citus opened for its own work
/// (creating the shards of pg_tenancy's catalog on a node, say; src/pg/citus.rs). Superusers
/// pass the guard's checks in all three; the guard keeps mistakes out, it does not bind them.
pub fn guard_stands_aside() -> bool {
    in_managed_ddl() || in_restore() || crate::pg::citus::catalog_work_stands_aside()
}

/// Every policy `protect` generates (and `unprotect` drops). `tenancy_isolation`, the single
/// FOR ALL restrictive policy of earlier builds, stays in the list so that protecting such a
/// table again replaces it.
pub const GENERATED_POLICIES: &[&str] = &[
    "tenancy_isolation",
    "tenancy_isolation_select",
    "tenancy_isolation_insert",
    "tenancy_isolation_update",
    "tenancy_isolation_delete",
    "tenancy_select",
    "tenancy_insert",
    "tenancy_update",
    "tenancy_delete",
];

/// Who runs one of protect's statements: the table's owner (everything that could reach code
/// of the table), or pg_tenancy's catalog owner for two statements that evaluate none of the
/// table owner's code: `CREATE TRIGGER` with pg_tenancy's own trigger functions (whose EXECUTE
/// is not granted to table owners; creating a trigger fires none) and `CREATE INDEX` on the
/// plain tenant column (PostgreSQL builds it as the table's owner in a security-restricted
/// operation anyway).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    TableOwner,
    CatalogOwner,
}

struct TableInfo {
    /// Schema-qualified, quoted name as regclass prints it under `search_path = pg_catalog`.
    name: String,
    relkind: String,
    column_type: Option<String>,
    partitions: Vec<pg_sys::Oid>,
    has_tenant_index: bool,
    schema: String,
    /// On Citus, how the table is distributed (`pg_dist_partition.partmethod`: `h` hash, `n`
    /// none: a reference or single-shard table), and its distribution column; None for a
    /// table that is not a Citus table.
    citus: Option<(String, Option<String>)>,
    /// Whether the tenant column is NOT NULL DEFAULT tenancy.current_tenant() already.
    tenant_column_ready: bool,
    /// The table's owner, as regrole prints it (quoted where needed).
    owner: String,
}

/// What protect() needs to know of `rel`, read from the system catalogs.
///
/// `pg_get_expr` opens the relation whose expression it prints (ACCESS SHARE), so it is only
/// ever called in a projection of `rel`'s own rows: in a WHERE or an EXISTS the planner may
/// hash the subquery and print every column default of the database, waiting on whatever
/// table another transaction holds (CI met a deadlock: two owners' DDL on unrelated tables,
/// each waiting for the other's table). Tested in `channels.rs`
/// (`protect_waits_for_no_other_tables_lock`).
fn table_info(rel: pg_sys::Oid, column: &str) -> Option<TableInfo> {
    catalog::owner_rows(
        "the table's catalog",
        "SELECT c.oid::regclass::text, c.relkind::text, n.nspname::text, \
                        (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
                          WHERE a.attrelid = c.oid AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped), \
                        (SELECT coalesce(array_agg(i.inhrelid ORDER BY i.inhrelid), '{}') FROM pg_inherits i WHERE i.inhparent = c.oid), \
                        EXISTS (SELECT FROM pg_index x JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0] \
                                 WHERE x.indrelid = c.oid AND a.attname = $2), \
                        coalesce((SELECT pg_get_expr(d.adbin, d.adrelid) = 'tenancy.current_tenant()' \
                                    FROM pg_attribute a JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                                   WHERE a.attrelid = c.oid AND a.attname = $2 AND a.attnotnull), false), \
                        c.relowner::regrole::text \
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        &[rel.into(), column.into()],
        |r| {
            Ok(TableInfo {
                name: r.get::<String>(1)?.unwrap_or_default(),
                relkind: r.get::<String>(2)?.unwrap_or_default(),
                schema: r.get::<String>(3)?.unwrap_or_default(),
                column_type: r.get::<String>(4)?,
                partitions: r.get::<Vec<pg_sys::Oid>>(5)?.unwrap_or_default(),
                has_tenant_index: r.get::<bool>(6)?.unwrap_or(false),
                citus: None,
                tenant_column_ready: r.get::<bool>(7)?.unwrap_or(false),
                owner: r.get::<String>(8)?.unwrap_or_default(),
            })
        },
    )
    .into_iter()
    .next()
    .map(|mut info| {
        if crate::pg::citus::in_database() {
            info.citus = citus_distribution(rel);
        }
        info
    })
}

/// How Citus distributes `rel` (partmethod, distribution column), or None.
fn citus_distribution(rel: pg_sys::Oid) -> Option<(String, Option<String>)> {
    catalog::owner_rows(
        "Citus's metadata",
        "SELECT p.partmethod::text, \
                CASE WHEN p.partkey IS NOT NULL THEN pg_catalog.column_to_column_name(p.logicalrelid, p.partkey) END \
           FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = $1::oid::regclass",
        &[rel.into()],
        |r| Ok((r.get::<String>(1)?.unwrap_or_default(), r.get::<String>(2)?)),
    )
    .into_iter()
    .next()
}

/// The SQL `protect` runs for one table (without its partitions). Also shown by
/// `tenancy.protect_sql()` so a reviewer can read exactly what is generated.
/// The audit triggers: name, event, transition tables.
const AUDIT_TRIGGERS: [(&str, &str, &str); 3] = [
    ("tenancy_audit_ins", "INSERT", "NEW TABLE AS tenancy_new"),
    (
        "tenancy_audit_upd",
        "UPDATE",
        "OLD TABLE AS tenancy_old NEW TABLE AS tenancy_new",
    ),
    ("tenancy_audit_del", "DELETE", "OLD TABLE AS tenancy_old"),
];

fn generated_sql(info: &TableInfo, column: &str, audit: bool) -> Vec<(Who, String)> {
    if info.citus.is_some() {
        return citus_sql(info, column, audit);
    }
    let t = &info.name;
    let c = quote_ident(column);
    let lit = quote_literal(t);
    // Every policy reads the binding and the privilege through one call,
    // `tenancy.allowed_tenant(table, privilege)`: the bound tenant when the bound roles hold the
    // privilege, 42501 otherwise. Stored bare, not as a scalar subquery: the rewriter copies a
    // policy's expression into every statement, and a subquery's Query cost a point lookup 5%
    // of its instructions (src/pg/README.md). The planner hook (src/pg/binding_param.rs) makes
    // the call the bound tenant as a constant, or a reserved parameter, or, planned as written,
    // `(SELECT tenancy.allowed_tenant(...))` again: one InitPlan per statement. (A statement
    // planned before this library is loaded in the session, the first of a session without it
    // preloaded, and a set-returning SQL function the planner inlines evaluate the call as
    // PostgreSQL plans it, per index scan or per row: the same tenant every time, within a
    // transaction bound to one.)
    let allowed_tenant = |p: &str| format!("{c} = tenancy.allowed_tenant({lit}::regclass, '{p}')");
    let mut sql = vec![
        format!("ALTER TABLE {t} ALTER COLUMN {c} SET DEFAULT tenancy.current_tenant()"),
        format!("ALTER TABLE {t} ALTER COLUMN {c} SET NOT NULL"),
        format!("ALTER TABLE {t} ENABLE ROW LEVEL SECURITY"),
        format!("ALTER TABLE {t} FORCE ROW LEVEL SECURITY"),
    ];
    for p in GENERATED_POLICIES {
        sql.push(format!("DROP POLICY IF EXISTS {p} ON {t}"));
    }
    // The RESTRICTIVE policies, one per command, confine every command to the bound tenant
    // whatever permissive policies a DBA adds. Their USING expressions are the permissive
    // policies' own, character for character: PostgreSQL then keeps one copy of the qual
    // (the rewriter appends security quals uniquely), so a read plans one InitPlan and no
    // one-time filter comparing two of them.
    sql.push(format!(
        "CREATE POLICY tenancy_isolation_select ON {t} AS RESTRICTIVE FOR SELECT TO PUBLIC USING ({})",
        allowed_tenant("select")
    ));
    sql.push(format!(
        "CREATE POLICY tenancy_isolation_insert ON {t} AS RESTRICTIVE FOR INSERT TO PUBLIC WITH CHECK ({})",
        allowed_tenant("insert")
    ));
    sql.push(format!(
        "CREATE POLICY tenancy_isolation_update ON {t} AS RESTRICTIVE FOR UPDATE TO PUBLIC USING ({}) WITH CHECK ({})",
        allowed_tenant("update"),
        allowed_tenant("update")
    ));
    sql.push(format!(
        "CREATE POLICY tenancy_isolation_delete ON {t} AS RESTRICTIVE FOR DELETE TO PUBLIC USING ({})",
        allowed_tenant("delete")
    ));
    sql.push(format!(
        "CREATE POLICY tenancy_select ON {t} FOR SELECT TO PUBLIC USING ({})",
        allowed_tenant("select")
    ));
    // A row for another tenant fails the check through _cross_tenant_write, which logs the
    // security event and raises a clear error; for the bound tenant's rows the OR
    // short-circuits and the function is never called.
    let own_row = |p: &str| {
        format!(
            "({} OR tenancy._cross_tenant_write({lit}::regclass, {c}))",
            allowed_tenant(p)
        )
    };
    sql.push(format!(
        "CREATE POLICY tenancy_insert ON {t} FOR INSERT TO PUBLIC WITH CHECK {}",
        own_row("insert")
    ));
    sql.push(format!(
        "CREATE POLICY tenancy_update ON {t} FOR UPDATE TO PUBLIC USING ({}) WITH CHECK {}",
        allowed_tenant("update"),
        own_row("update")
    ));
    sql.push(format!(
        "CREATE POLICY tenancy_delete ON {t} FOR DELETE TO PUBLIC USING ({})",
        allowed_tenant("delete")
    ));
    // CREATE INDEX: see the push below, after the table owner's statements.
    sql.push(format!("DROP TRIGGER IF EXISTS tenancy_no_truncate ON {t}"));
    let mut sql: Vec<(Who, String)> = sql.into_iter().map(|s| (Who::TableOwner, s)).collect();
    if !info.has_tenant_index {
        // As the catalog owner: the table's owner may lack CREATE on its schema, which CREATE
        // INDEX asks for, and CREATE INDEX itself builds the index as the table's owner in a
        // security-restricted operation (an index on a plain uuid column evaluates nothing).
        sql.push((Who::CatalogOwner, format!("CREATE INDEX ON {t} ({c})")));
    }
    sql.push((Who::CatalogOwner, format!(
        "CREATE TRIGGER tenancy_no_truncate BEFORE TRUNCATE ON {t} FOR EACH STATEMENT EXECUTE FUNCTION tenancy._refuse_truncate()"
    )));
    for (name, event, refs) in AUDIT_TRIGGERS {
        sql.push((
            Who::TableOwner,
            format!("DROP TRIGGER IF EXISTS {name} ON {t}"),
        ));
        if audit {
            sql.push((Who::CatalogOwner, format!(
                "CREATE TRIGGER {name} AFTER {event} ON {t} REFERENCING {refs} FOR EACH STATEMENT EXECUTE FUNCTION tenancy._audit()"
            )));
        }
    }
    sql
}

/// The SQL `protect` runs for a Citus table: the same guarantees in a form Citus accepts and
/// carries to every shard. Citus refuses subqueries in the policies of distributed tables and
/// drops `AS RESTRICTIVE` when it creates them on the shards, so the policies are permissive
/// only, one per command, each comparing the tenant column with
/// `tenancy.allowed_tenant(table, privilege)` itself (no subquery): planned as the bound tenant
/// for a statement of one execution (so that Citus routes it to the tenant's shard), evaluated
/// by each worker with the binding carried to it otherwise. With no restrictive policy beside
/// them, another permissive policy would widen them: the guard refuses any change of a
/// protected table's policies, as on one node. The tenant column's default and NOT NULL were
/// set before the table was distributed (Citus allows no change of its distribution column);
/// a reference table gets them here. No audit triggers: auditing distributed tables is to
/// come, and `protect` refuses `audit => true` on them.
fn citus_sql(info: &TableInfo, column: &str, audit: bool) -> Vec<(Who, String)> {
    let t = &info.name;
    let c = quote_ident(column);
    let lit = quote_literal(t);
    let allowed = |p: &str| format!("{c} = tenancy.allowed_tenant({lit}::regclass, '{p}')");
    let own_row = |p: &str| {
        format!(
            "({} OR tenancy._cross_tenant_write({lit}::regclass, {c}))",
            allowed(p)
        )
    };
    let mut sql = Vec::new();
    if !info.tenant_column_ready {
        sql.push(format!(
            "ALTER TABLE {t} ALTER COLUMN {c} SET DEFAULT tenancy.current_tenant()"
        ));
        sql.push(format!("ALTER TABLE {t} ALTER COLUMN {c} SET NOT NULL"));
    }
    sql.push(format!("ALTER TABLE {t} ENABLE ROW LEVEL SECURITY"));
    sql.push(format!("ALTER TABLE {t} FORCE ROW LEVEL SECURITY"));
    for p in GENERATED_POLICIES {
        sql.push(format!("DROP POLICY IF EXISTS {p} ON {t}"));
    }
    sql.push(format!(
        "CREATE POLICY tenancy_select ON {t} FOR SELECT TO PUBLIC USING ({})",
        allowed("select")
    ));
    sql.push(format!(
        "CREATE POLICY tenancy_insert ON {t} FOR INSERT TO PUBLIC WITH CHECK {}",
        own_row("insert")
    ));
    // Citus refuses VOLATILE functions anywhere in an UPDATE of a distributed table: a row
    // moved to another tenant fails PostgreSQL's own check here, without the security event.
    sql.push(format!(
        "CREATE POLICY tenancy_update ON {t} FOR UPDATE TO PUBLIC USING ({}) WITH CHECK ({})",
        allowed("update"),
        allowed("update")
    ));
    sql.push(format!(
        "CREATE POLICY tenancy_delete ON {t} FOR DELETE TO PUBLIC USING ({})",
        allowed("delete")
    ));
    sql.push(format!("DROP TRIGGER IF EXISTS tenancy_no_truncate ON {t}"));
    for (name, _, _) in AUDIT_TRIGGERS {
        sql.push(format!("DROP TRIGGER IF EXISTS {name} ON {t}"));
    }
    if !info.has_tenant_index {
        sql.push(format!("CREATE INDEX ON {t} ({c})"));
    }
    sql.push(format!(
        "CREATE TRIGGER tenancy_no_truncate BEFORE TRUNCATE ON {t} FOR EACH STATEMENT EXECUTE FUNCTION tenancy._refuse_truncate()"
    ));
    sql.push(crate::citus::trail::trigger_functions_grant(
        &info.owner,
        audit,
    ));
    if audit {
        // The same statement triggers as on one node, on every shard: each records into the
        // trail's shard beside it (src/citus/trail.rs; protect() checked the colocation).
        for (name, event, refs) in AUDIT_TRIGGERS {
            sql.push(format!(
                "CREATE TRIGGER {name} AFTER {event} ON {t} REFERENCING {refs} FOR EACH STATEMENT EXECUTE FUNCTION tenancy._audit()"
            ));
        }
    }
    // All as the catalog owner. Citus runs a distributed transaction's commands on a node over
    // one connection per role: the table owner's DDL and the catalog owner's on the same shards
    // would wait on each other's locks (a distributed deadlock, seen with a NOSUPERUSER owner).
    // None of these statements runs code of the table: no expression is evaluated (SET NOT NULL
    // only checks for nulls; the index is on the plain tenant column), and they fire no trigger.
    sql.into_iter().map(|s| (Who::CatalogOwner, s)).collect()
}

fn check_table(rel: pg_sys::Oid, column: &str) -> TableInfo {
    let info = table_info(rel, column).unwrap_or_else(|| {
        errors::raise(
            UNDEFINED_OBJECT,
            format!("relation with oid {} does not exist", u32::from(rel)),
            "Pass an existing table.",
        )
    });
    if info.relkind != "r" && info.relkind != "p" {
        errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("\"{}\" is not a table", info.name),
            "Only ordinary and partitioned tables can be protected; protect the tables a view or materialized view reads instead.",
        );
    }
    if info.schema == "tenancy"
        || info.schema == "pg_catalog"
        || info.schema == "information_schema"
    {
        errors::raise(
            INVALID_PARAMETER,
            format!("\"{}\" belongs to a system or pg_tenancy schema", info.name),
            "Protect your application's tables.",
        );
    }
    match info.column_type.as_deref() {
        None => errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!("table \"{}\" has no column \"{column}\"", info.name),
            format!("Add it first: ALTER TABLE {} ADD COLUMN {} uuid NOT NULL DEFAULT tenancy.current_tenant();", info.name, quote_ident(column)),
        ),
        Some("uuid") => {}
        Some(other) => errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            format!("tenant column \"{column}\" of table \"{}\" is {other}, not uuid", info.name),
            "Tenant columns hold the tenant's uuid (tenancy.tenants.id).",
        ),
    }
    if let Some((method, dist_column)) = &info.citus {
        let t = &info.name;
        if info.relkind == "p" {
            errors::raise(
                pgrx::PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!(
                    "\"{t}\" is a partitioned Citus table, which pg_tenancy does not protect yet"
                ),
                "Protect distributed tables that are not partitioned.",
            );
        }
        if method == "h" && dist_column.as_deref() != Some(column) {
            errors::raise(
                errors::NOT_IN_PREREQUISITE_STATE,
                format!(
                    "\"{t}\" is distributed by column \"{}\", not by its tenant column \"{column}\"",
                    dist_column.as_deref().unwrap_or("?")
                ),
                format!(
                    "Distribute it by the tenant column, so that a tenant's statements go to its shard: SELECT undistribute_table('{t}'); SELECT create_distributed_table('{t}', '{column}');"
                ),
            );
        }
        if method == "h" && !info.tenant_column_ready {
            errors::raise(
                errors::NOT_IN_PREREQUISITE_STATE,
                format!(
                    "the tenant column \"{column}\" of distributed table \"{t}\" is not NOT NULL DEFAULT tenancy.current_tenant(), and Citus allows no change of a distribution column"
                ),
                format!(
                    "Give it that definition before distributing: SELECT undistribute_table('{t}'); ALTER TABLE {t} ALTER COLUMN {} SET DEFAULT tenancy.current_tenant(), ALTER COLUMN {} SET NOT NULL; SELECT create_distributed_table('{t}', '{column}'); then protect it.",
                    quote_ident(column),
                    quote_ident(column)
                ),
            );
        }
    }
    info
}

/// Fix, to the end of the transaction, which tables the schema-qualified names of `rels` mean,
/// and return those names (None for a relation that does not exist, is not an ordinary or
/// partitioned table, or is in a system or pg_tenancy schema: it is not locked, and the
/// caller's checks report it). protect's, unprotect's and attach_partition's statements name
/// their tables (DDL takes no oid), and so do the `'name'::regclass` arguments of the generated
/// policies. Without this, a schema's owner who held a lock on the table while the call waited
/// for it could rename the schema (`ALTER SCHEMA ... RENAME` locks no table) and create a table
/// of the same name in a new schema of the old name: PostgreSQL resolves the name again once
/// the lock is granted, and the statements went to that table, while the catalog recorded the
/// one asked for as protected, with no row security at all (found by an attacker's pass;
/// tested in `tests/integration/tests/trust_boundaries.rs`).
///
/// In this order:
/// - A read-only transaction is refused first (25006), before any lock is waited for.
/// - Every table is locked in its mode (ACCESS EXCLUSIVE, as the statements would, or SHARE
///   UPDATE EXCLUSIVE for an ATTACH's parent; either makes the table's rename and its move to
///   another schema wait). Nothing that is not a table one may protect is locked: a lock on a
///   system catalog (`pg_authid`, shared by every database) queues every session's reads of it
///   behind the call (a reviewer's find: an operator could stall the cluster's logins).
/// - Then each table's schema row in `pg_namespace` FOR KEY SHARE: a rename or a drop of the
///   schema waits for this transaction. Nothing else changes what a schema-qualified name
///   resolves to. The tables first, the rows after: a session holding one of the tables that
///   then renamed a schema would otherwise close a deadlock (PostgreSQL breaks it by cancelling
///   one side). A call that locks more tables after this (partitions, protect_schema's next
///   table) can still meet that deadlock; it ends in an error, never in a wrong table.
/// - The invalidations of whatever committed while a lock was awaited are processed (waiting
///   for a row lock processes none), and the names are read from the system caches, not under
///   the transaction's snapshot, which in REPEATABLE READ predates the waits.
fn pin_names(rels: &[(pg_sys::Oid, u32)]) -> Vec<Option<String>> {
    // SAFETY: raises 25006 in a read-only transaction, reads nothing else.
    unsafe { pg_sys::PreventCommandIfReadOnly(c"a change of a table's protection".as_ptr()) };
    let eligible: Vec<bool> = rels.iter().map(|(rel, _)| protectable(*rel)).collect();
    for ((rel, mode), ok) in rels.iter().zip(&eligible) {
        if *ok {
            // SAFETY: a lock held to the end of the transaction, on a table that may have been
            // dropped meanwhile (then the lookup below finds nothing).
            unsafe { pg_sys::LockRelationOid(*rel, *mode as pg_sys::LOCKMODE) };
        }
    }
    let mut locked = Vec::new();
    for ((rel, _), ok) in rels.iter().zip(&eligible) {
        // SAFETY: a syscache lookup by oid, after the locks processed any invalidation of the
        // table's catalog row; InvalidOid for a relation that does not exist.
        let schema = unsafe { pg_sys::get_rel_namespace(*rel) };
        if *ok && schema != pg_sys::InvalidOid && !locked.contains(&schema) {
            // As the catalog owner (superuser: a row lock asks for UPDATE on pg_namespace).
            // The statement reads one catalog row by oid and evaluates nothing of a user's.
            catalog::lock_system_row(
                "SELECT FROM pg_catalog.pg_namespace WHERE oid OPERATOR(pg_catalog.=) $1 FOR KEY SHARE",
                &[schema.into()],
            );
            locked.push(schema);
        }
    }
    // SAFETY: processes the shared invalidation queue, as any lock acquisition does; the
    // callers hold no cache entry or relation pointer across this call, only owned values.
    unsafe { pg_sys::AcceptInvalidationMessages() };
    rels.iter()
        .zip(&eligible)
        .map(|((rel, _), ok)| {
            // SAFETY: as above.
            let exists = unsafe { pg_sys::get_rel_namespace(*rel) } != pg_sys::InvalidOid;
            (*ok && exists).then(|| crate::pg::relation_spi::qualified_name(*rel))
        })
        .collect()
}

/// Whether `rel` is an ordinary or partitioned table outside the system and pg_tenancy schemas,
/// read from the system caches without a lock (what [`check_table`] then checks under one).
fn protectable(rel: pg_sys::Oid) -> bool {
    // SAFETY: syscache lookups by oid (0 / InvalidOid / NULL when missing); the schema's name
    // is read at once.
    unsafe {
        let kind = pg_sys::get_rel_relkind(rel) as u8;
        if kind != pg_sys::RELKIND_RELATION && kind != pg_sys::RELKIND_PARTITIONED_TABLE {
            return false;
        }
        let schema = pg_sys::get_rel_namespace(rel);
        if schema == pg_sys::PG_CATALOG_NAMESPACE.into()
            || schema == pg_sys::PG_TOAST_NAMESPACE.into()
        {
            return false;
        }
        let name = pg_sys::get_namespace_name(schema);
        if name.is_null() {
            return false;
        }
        !matches!(
            std::ffi::CStr::from_ptr(name).to_bytes(),
            b"tenancy" | b"information_schema"
        )
    }
}

/// Run protect's or unprotect's statements for the table `rel`: each as its [`Who`].
fn run_all(rel: pg_sys::Oid, sql: &[(Who, String)]) {
    // On Citus the statements reach the workers as their user, after the transaction's SET
    // LOCAL commands (refused then).
    crate::pg::citus::before_routing_as_another();
    // "does not exist, skipping" notices of the idempotent DROPs are noise for the caller.
    // SAFETY: opens a GUC nesting level, closed by the AtEOXact_GUC below (or by the
    // transaction's abort on an error).
    let nest = unsafe { pg_sys::NewGUCNestLevel() };
    // SAFETY: inside the nest level opened above, closed below (or by the abort).
    unsafe { crate::pg::guc::set_in_nest_level(c"client_min_messages", c"warning") };
    // The tenant column's index, created as the catalog owner, goes to the database's default
    // tablespace, not to one the caller named in its own default_tablespace, which the catalog
    // owner may create in and the caller may not (found by an attacker's pass).
    // SAFETY: as above.
    unsafe { crate::pg::guc::set_in_nest_level(c"default_tablespace", c"") };
    if crate::pg::citus::in_database() {
        // Citus creates pg_tenancy's TRUNCATE trigger on every shard only with this on (the
        // setting exists where Citus is loaded).
        // SAFETY: as above.
        unsafe { crate::pg::guc::set_in_nest_level(c"citus.enable_unsafe_triggers", c"on") };
        // One connection per worker: in Citus's parallel mode the statements reach a worker's
        // shards over several connections of the one distributed transaction, which then wait
        // for each other there, and Citus's deadlock detector cancels the call (seen in CI:
        // "transaction 164 waits for 164", logged by tests/citus/run.sh).
        // SAFETY: as above.
        unsafe {
            crate::pg::guc::set_in_nest_level(c"citus.multi_shard_modify_mode", c"sequential")
        };
    }
    for (who, s) in sql {
        // The statement itself is one utility statement deeper than the code running now.
        let _statement = ManagedStatement(
            MANAGED_STATEMENT.with(|m| m.replace(Some(crate::pg::hooks::utility_depth() + 1))),
        );
        let run = || Spi::connect_mut(|c| c.update(s.as_str(), None, &[]).map(|_| ()));
        match who {
            Who::TableOwner => catalog::as_table_owner(rel, run),
            Who::CatalogOwner => catalog::with_owner_ddl(run),
        }
        .unwrap_or_else(|e| pgrx::error!("pg_tenancy: protecting the table failed: {e}"));
    }
    // false: nothing the statements (or code of the table's owner they reached) set outlives
    // them.
    // SAFETY: closes the nesting level opened above, the innermost one still open (each
    // statement's own levels were closed with it).
    unsafe { pg_sys::AtEOXact_GUC(false, nest) };
}

/// On Citus the trail is written beside each shard (`src/citus/trail.rs`): only tables
/// distributed by their tenant column and colocated with `tenancy.audit_log` are audited, and
/// once the trail is distributed no table on the coordinator alone is.
fn refuse_audit_on_citus(rel: pg_sys::Oid, info: &TableInfo) {
    use crate::citus::trail;
    let t = &info.name;
    let lit = quote_literal(t);
    let refuse = |why: String, hint: String| {
        errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            why,
            hint,
        )
    };
    match &info.citus {
        None if trail::distributed() => refuse(
            format!("\"{t}\" is a table on the coordinator only, and the audit trail is distributed by tenant"),
            format!("Distribute it by its tenant column, colocated with the trail (SELECT create_distributed_table({lit}, '<tenant column>', colocate_with => 'tenancy.audit_log');), or protect it with audit => false."),
        ),
        None => {}
        Some(_) if !trail::distributed() => refuse(
            format!("auditing Citus table \"{t}\" needs the audit trail distributed"),
            format!("Run SELECT tenancy.citus_setup(); as a superuser on the coordinator, or protect it without the trail: SELECT tenancy.protect({lit}, audit => false);"),
        ),
        Some((method, _)) if method != "h" || !trail::colocated_with_trail(rel) => refuse(
            format!("Citus table \"{t}\" is not distributed by its tenant column colocated with tenancy.audit_log, so its changes cannot be recorded beside its rows"),
            format!("Colocate it with the trail (SELECT alter_distributed_table({lit}, colocate_with => 'tenancy.audit_log');) or protect it without the trail: SELECT tenancy.protect({lit}, audit => false);"),
        ),
        Some(_) => {}
    }
}

/// Protect one table and, recursively, its partitions. Returns the number of tables protected.
pub fn protect_table(
    rel: pg_sys::Oid,
    column: &str,
    audit: bool,
    parent: Option<pg_sys::Oid>,
) -> i32 {
    let _managed = ManagedDdl::enter();
    // The name check_table reads (and the statements use) is the table's name from here on.
    pin_names(&[(rel, pg_sys::AccessExclusiveLock)]);
    // Crash recovery empties an UNLOGGED table, unrecorded (a reviewer's pass: an owner made
    // one for an operator to protect).
    if crate::protection::guard::unlogged(rel) {
        crate::protection::guard::refuse_unlogged(rel);
    }
    let info = check_table(rel, column);
    if audit {
        refuse_audit_on_citus(rel, &info);
    }
    if info.citus.is_some() {
        crate::citus::guard::refuse_foreign_objects_on_placements(
            rel,
            &info.name,
            GENERATED_POLICIES,
        );
    }
    run_all(rel, &generated_sql(&info, column, audit));
    catalog::write(
        "INSERT INTO tenancy.protected_table (relid, tenant_column, audited, policy_digest, parent) \
         VALUES ($1::oid::regclass, $2, $3, tenancy._protection_digest($1::oid::regclass, $2), $4::oid::regclass) \
         ON CONFLICT (relid) DO UPDATE SET tenant_column = EXCLUDED.tenant_column, audited = EXCLUDED.audited, \
             policy_digest = EXCLUDED.policy_digest, parent = EXCLUDED.parent, protected_at = EXCLUDED.protected_at, protected_by = EXCLUDED.protected_by",
        &[rel.into(), column.into(), audit.into(), parent.into()],
    );
    if info.citus.is_some() {
        crate::citus::guard::record(rel);
        crate::citus::trail::grant_trigger_functions_on_workers(&info.owner, audit);
    }
    let mut n = 1;
    for part in &info.partitions {
        n += protect_table(*part, column, audit, Some(rel));
    }
    n
}

#[pg_extern(volatile, parallel_unsafe)]
fn protect(
    tbl: crate::pg::types::Regclass,
    tenant_column: default!(&str, "'tenant_id'"),
    audit: default!(bool, true),
) {
    let tbl = tbl.0;
    authz::require_operator("protect");
    let n = protect_table(tbl, tenant_column, audit, None);
    let name = table_info(tbl, tenant_column)
        .map(|i| i.name)
        .unwrap_or_default();
    crate::audit::admin(
        "protect",
        None,
        serde_json::json!({"table": name, "tenant_column": tenant_column, "tables": n}),
    );
}

/// The SQL protect() runs for a table (not its partitions), for review. Changes nothing, but
/// reads the catalog as its owner (a user switch and a pinned search_path), so it is labelled
/// VOLATILE PARALLEL UNSAFE.
#[pg_extern(volatile, parallel_unsafe)]
fn protect_sql(
    tbl: crate::pg::types::Regclass,
    tenant_column: default!(&str, "'tenant_id'"),
) -> SetOfIterator<'static, String> {
    let tbl = tbl.0;
    let info = check_table(tbl, tenant_column);
    SetOfIterator::new(
        generated_sql(&info, tenant_column, true)
            .into_iter()
            .map(|(_, s)| s),
    )
}

#[pg_extern(volatile, parallel_unsafe)]
fn unprotect(tbl: crate::pg::types::Regclass) {
    let tbl = tbl.0;
    authz::require_operator("unprotect");
    let _managed = ManagedDdl::enter();
    let rels: Vec<(pg_sys::Oid, String)> = catalog::with_owner(|| {
        Spi::connect(|c| {
            let t = c.select(
                "WITH RECURSIVE tree(relid) AS (SELECT $1::oid::regclass UNION ALL \
                    SELECT p.relid FROM tenancy.protected_table p JOIN tree ON p.parent = tree.relid) \
                 SELECT relid::oid, relid::text FROM tree WHERE relid IN (SELECT relid FROM tenancy.protected_table)",
                None,
                &[tbl.into()],
            )?;
            let mut out = Vec::new();
            for r in t {
                out.push((r.get::<pg_sys::Oid>(1)?.expect("oid"), r.get::<String>(2)?.unwrap_or_default()));
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: unprotect failed: {e}"));
    if rels.is_empty() {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!("table with oid {} is not protected", u32::from(tbl)),
            "SELECT * FROM tenancy.protected_tables lists the protected tables.",
        );
    }
    // Locked first (its DDL will lock it so anyway): a transaction still writing rows, or a
    // prepared one, is waited for, and its rows are seen by the check below. The names the
    // statements use are read once they mean these tables to the end ([`pin_names`]: every
    // table is locked before any schema's row).
    lock_tree(tbl);
    let pinned = pin_names(
        &rels
            .iter()
            .map(|(oid, _)| (*oid, pg_sys::AccessExclusiveLock))
            .collect::<Vec<_>>(),
    );
    let rels: Vec<(pg_sys::Oid, String)> = rels
        .into_iter()
        .zip(pinned)
        .map(|((oid, _), name)| {
            let name = name.unwrap_or_else(|| {
                errors::raise(
                    UNDEFINED_OBJECT,
                    format!("table with oid {} was dropped meanwhile", u32::from(oid)),
                    "Nothing was changed; call unprotect() again if it still exists.",
                )
            });
            (oid, name)
        })
        .collect();
    refuse_unprotect_to_a_reader(&rels);
    refuse_unprotect_of_tenant_rows(&rels);
    // The tenants' grants on them go with their protection.
    crate::rbac::forget_grants_on(
        &rels.iter().map(|(oid, _)| *oid).collect::<Vec<_>>(),
        "unprotect",
    );
    for (oid, t) in &rels {
        let mut sql = Vec::new();
        for p in GENERATED_POLICIES {
            sql.push(format!("DROP POLICY IF EXISTS {p} ON {t}"));
        }
        sql.push(format!("DROP TRIGGER IF EXISTS tenancy_no_truncate ON {t}"));
        for name in [
            "tenancy_audit_ins",
            "tenancy_audit_upd",
            "tenancy_audit_del",
        ] {
            sql.push(format!("DROP TRIGGER IF EXISTS {name} ON {t}"));
        }
        sql.push(format!("ALTER TABLE {t} NO FORCE ROW LEVEL SECURITY"));
        sql.push(format!("ALTER TABLE {t} DISABLE ROW LEVEL SECURITY"));
        // On Citus as the catalog owner, as protect() runs them (`citus_sql`): the workers'
        // guard lets Citus's superuser connections through, and none of these statements
        // evaluates code of the table.
        let who = if crate::pg::citus::in_database() && citus_distribution(*oid).is_some() {
            Who::CatalogOwner
        } else {
            Who::TableOwner
        };
        let sql: Vec<(Who, String)> = sql.into_iter().map(|s| (who, s)).collect();
        run_all(*oid, &sql);
    }
    for (oid, _) in &rels {
        catalog::write(
            "DELETE FROM tenancy.protected_table WHERE relid = $1::oid::regclass",
            &[(*oid).into()],
        );
        crate::citus::guard::forget(*oid);
    }
    crate::audit::admin(
        "unprotect",
        None,
        serde_json::json!({"table": rels[0].1, "tables": rels.len()}),
    );
}

/// Attach a table that holds rows to a protected partitioned table: every row's tenant is
/// checked (an active tenant), every row is recorded as an INSERT in its tenant's audit trail,
/// and the table is protected with its new parent. `bound` is the partition bound, as ALTER
/// TABLE ... ATTACH PARTITION takes it (`FOR VALUES ...` or `DEFAULT`). Operators only; runs as
/// the parent's owner (who must own the table too). Returns the number of rows recorded.
///
/// The statement is `ALTER TABLE parent ATTACH PARTITION table ` followed by `bound`, and is
/// run only after PostgreSQL's parser has read it as exactly that: one ALTER TABLE of `parent`
/// with one ATTACH PARTITION of `table` (no second statement can ride along).
#[pg_extern(volatile, parallel_unsafe)]
fn attach_partition(
    parent: crate::pg::types::Regclass,
    partition: crate::pg::types::Regclass,
    bound: &str,
) -> i64 {
    let (parent, partition) = (parent.0, partition.0);
    authz::require_operator("attach_partition");
    let meta = catalog::owner_rows(
        "tenancy.protected_table",
        "SELECT p.tenant_column::text, p.audited, \
                coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_index x \
                   CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord) \
                   JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum \
                  WHERE x.indrelid = p.relid AND x.indisprimary), '{}'), \
                ARRAY(WITH RECURSIVE up(rel) AS (SELECT $1::oid UNION SELECT i.inhparent FROM pg_inherits i JOIN up ON i.inhrelid = up.rel) \
                      SELECT rel FROM up), \
                EXISTS (SELECT FROM tenancy.protected_table q WHERE q.relid = $2::oid::regclass) \
           FROM tenancy.protected_table p WHERE p.relid = $1::oid::regclass",
        &[parent.into(), partition.into()],
        |r| {
            Ok((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<bool>(2)?.unwrap_or(true),
                r.get::<Vec<String>>(3)?.unwrap_or_default(),
                r.get::<Vec<pg_sys::Oid>>(4)?.unwrap_or_default(),
                r.get::<bool>(5)?.unwrap_or(false),
            ))
        },
    );
    let Some((column, audited, key, ancestors, already)) = meta.into_iter().next() else {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!("table \"{}\" is not protected", relation_name(parent)),
            "attach_partition attaches to a protected partitioned table; ATTACH PARTITION to other tables as usual.",
        );
    };
    if already {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!(
                "table \"{}\" is already protected",
                relation_name(partition)
            ),
            "Attach it with ALTER TABLE ... ATTACH PARTITION.",
        );
    }
    // The names the ATTACH statement uses mean these two tables to the end ([`pin_names`]),
    // locked only once the checks above passed: the parent as ATTACH locks it (its readers go
    // on), the table as lock_tree will.
    let mut names = pin_names(&[
        (parent, pg_sys::ShareUpdateExclusiveLock),
        (partition, pg_sys::AccessExclusiveLock),
    ])
    .into_iter();
    let (parent_name, part_name) = (names.next().flatten(), names.next().flatten());
    let (Some(parent_name), Some(part_name)) = (parent_name.clone(), part_name) else {
        // The parent passed the checks above (a protected table), so only a drop meanwhile
        // leaves it without a name; the table may also be no table one may protect.
        let missing = if parent_name.is_none() {
            parent
        } else {
            partition
        };
        errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!(
                "relation with oid {} is not a table pg_tenancy protects, or was dropped meanwhile",
                u32::from(missing)
            ),
            "Attach an ordinary or partitioned table of your application's schemas.",
        )
    };
    let sql = format!("ALTER TABLE {parent_name} ATTACH PARTITION {part_name} {bound}");
    require_one_attach(&sql, parent, partition);
    // As ATTACH will, the table and everything below it: no transaction is still writing them
    // when their rows are read, nor changing their owners or triggers once they are checked.
    lock_tree(partition);
    refuse_foreign_code(parent, partition, &parent_name, &part_name);
    // What it brings must not run a user's code over every tenant's rows.
    crate::protection::guard::refuse_leaky_members(partition, parent);
    let recorded = crate::audit::record_joining_rows(partition, &column, &key, &ancestors);
    {
        let _managed = ManagedDdl::enter();
        run_all(parent, &[(Who::TableOwner, sql)]);
    }
    for rel in std::iter::once(partition).chain(check_table(partition, &column).partitions) {
        protect_table(rel, &column, audited, Some(parent));
    }
    crate::audit::admin(
        "attach_partition",
        None,
        serde_json::json!({"table": parent_name, "partition": part_name, "rows": recorded}),
    );
    recorded
}

/// Lock `rel` and every partition and child below it ACCESS EXCLUSIVE, to the end of the
/// transaction: `rel` first, so that nothing is attached below it meanwhile and its tree, read
/// after, is the whole tree. No transaction still writes them when their rows are read after.
fn lock_tree(rel: pg_sys::Oid) {
    // SAFETY: locks held to the end of the transaction.
    unsafe { pg_sys::LockRelationOid(rel, pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE) };
    for below in catalog::owner_rows(
        "pg_inherits",
        "WITH RECURSIVE d(rel) AS (SELECT $1::pg_catalog.oid UNION \
            SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN d ON i.inhparent OPERATOR(pg_catalog.=) d.rel) \
         SELECT rel FROM d WHERE rel OPERATOR(pg_catalog.<>) $1 ORDER BY 1",
        &[rel.into()],
        |r| Ok(r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid)),
    ) {
        // SAFETY: as above.
        unsafe { pg_sys::LockRelationOid(below, pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE) };
    }
}

/// An operator may not unprotect a table that it can read or write (a column of it too) or put a
/// trigger on, itself or as a role it can
/// SET ROLE to (its current role or its login role; the role named is one it belongs to that
/// holds the privilege, itself last, since its own comes through that one when inherited): unprotected, every tenant's rows would be
/// its to read (an attacker's pass unprotected, read every tenant and protected again; operators
/// hold table privileges for support access). Superusers may; they read everything anyway.
fn refuse_unprotect_to_a_reader(rels: &[(pg_sys::Oid, String)]) {
    let who = authz::caller();
    if authz::is_superuser(who) {
        return;
    }
    let oids: Vec<pg_sys::Oid> = rels.iter().map(|(o, _)| *o).collect();
    for role in [who, authz::session_user()] {
        let readable = catalog::owner_rows(
            "pg_class",
            "SELECT t.oid::pg_catalog.regclass::text, x.rolname::text FROM pg_catalog.unnest($2::pg_catalog.oid[]) t(oid), \
                    pg_catalog.pg_roles x \
              WHERE pg_catalog.pg_has_role($1, x.oid, 'MEMBER') \
                AND (pg_catalog.has_table_privilege(x.oid, t.oid, 'SELECT, INSERT, UPDATE, DELETE, TRIGGER') \
                     OR pg_catalog.has_any_column_privilege(x.oid, t.oid, 'SELECT, INSERT, UPDATE, REFERENCES')) \
              ORDER BY x.oid OPERATOR(pg_catalog.=) $1, 2, 1 LIMIT 1",
            &[role.into(), oids.clone().into()],
            |r| {
                Ok((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<String>(2)?.unwrap_or_default(),
                ))
            },
        );
        if let Some((table, through)) = readable.into_iter().next() {
            refuse_unprotect(
                &table,
                format!(
                    "permission denied: role \"{}\" may not unprotect \"{table}\", which it can read or write (as \"{through}\"): unprotected, every tenant's rows would be its to read",
                    authz::role_name(role)
                ),
                format!(
                    "Revoke those privileges first (REVOKE ALL ON {table} FROM {}; support access needs them only while it is used), or have a superuser unprotect it.",
                    catalog::quote_ident(&through)
                ),
            );
        }
    }
}

/// An operator may unprotect a table only while it holds no tenant's rows. Once unprotected, its
/// rows are read by every role with a way to the table, and not all of them can be listed: a
/// view or a SECURITY DEFINER function of its owner's that the operator may use reads every
/// tenant's rows as the owner (an attacker's pass did so after the reader check above). A
/// superuser, who reads everything anyway, may unprotect a table that holds rows. The rows are
/// read by `pg::table_scan` (no code of the owner's runs); a Citus table's rows are on the
/// workers, counted by SQL as the catalog owner only where no table the count expands to calls
/// its owner's code, and taken to hold rows otherwise.
fn refuse_unprotect_of_tenant_rows(rels: &[(pg_sys::Oid, String)]) {
    if authz::is_superuser(authz::caller()) {
        return;
    }
    let citus = crate::pg::citus::in_database();
    let holding = rels.iter().find(|(rel, _)| {
        if citus && citus_distribution(*rel).is_some() {
            crate::protection::guard::tree_calls_owner_code(*rel)
                // A row of it, if any: Citus plans `EXISTS (SELECT FROM ...)` of a distributed
                // table as a function returning record, and refuses it.
                // Named from its oid as the statement is prepared (`pg::relation_spi`).
                || catalog::with_owner(|| {
                    Spi::connect(|_c| {
                        // SAFETY: inside the SPI connection just opened, in the transaction;
                        // no arguments.
                        unsafe {
                            crate::pg::relation_spi::run_on(
                                *rel,
                                pg_sys::AccessShareLock,
                                |name| format!("SELECT 1 FROM ONLY {name} LIMIT 1"),
                                &[],
                            )
                        }
                        .0
                    })
                }) > 0
        } else {
            crate::audit::holds_rows(*rel)
        }
    });
    if let Some((_, table)) = holding {
        refuse_unprotect(
            table,
            format!("permission denied: \"{table}\" holds tenants' rows, which an operator may not unprotect"),
            "Unprotected, every role with a way to the table (its owner's views and functions, the application's roles) reads every tenant's rows. Decommission the tenants or delete their rows first, or have a superuser unprotect it.",
        );
    }
}

/// unprotect refused to an operator (42501, a security event naming the table).
fn refuse_unprotect(table: &str, message: String, hint: impl Into<String>) -> ! {
    let mut f = serde_json::Map::new();
    f.insert("action".into(), "unprotect".into());
    f.insert("table".into(), table.into());
    errors::refuse(
        "management_refused",
        f,
        errors::INSUFFICIENT_PRIVILEGE,
        message,
        hint,
    )
}

/// A table attach_partition brings into protected table `parent` (with its own partitions)
/// must be the parent's owner's, and its triggers must call functions of that owner or of a
/// superuser: PostgreSQL would let the parent's owner attach another role's table (a superuser
/// owns every table), and that role's triggers would then see every tenant's rows written to
/// it (an attacker's pass attached an operator's table with a SECURITY DEFINER trigger copying
/// each row out). Refused with 42501 before anything is attached.
fn refuse_foreign_code(
    parent: pg_sys::Oid,
    partition: pg_sys::Oid,
    parent_name: &str,
    part_name: &str,
) {
    let found = catalog::owner_rows(
        "pg_class",
        "WITH RECURSIVE d(rel) AS (SELECT $2::oid UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN d ON i.inhparent = d.rel) \
         SELECT pg_catalog.format('table %s is owned by %s, not by %s', c.oid::pg_catalog.regclass, \
                                  c.relowner::pg_catalog.regrole, p.relowner::pg_catalog.regrole), \
                pg_catalog.format('ALTER TABLE %s OWNER TO %s;', c.oid::pg_catalog.regclass, p.relowner::pg_catalog.regrole) \
           FROM d JOIN pg_catalog.pg_class c ON c.oid = d.rel, pg_catalog.pg_class p \
          WHERE p.oid = $1 AND c.relowner OPERATOR(pg_catalog.<>) p.relowner \
         UNION ALL \
         SELECT pg_catalog.format('trigger %I of %s calls %s, owned by %s', t.tgname, t.tgrelid::pg_catalog.regclass, \
                                  t.tgfoid::pg_catalog.regprocedure, f.proowner::pg_catalog.regrole), \
                pg_catalog.format('DROP TRIGGER %I ON %s;', t.tgname, t.tgrelid::pg_catalog.regclass) \
           FROM d JOIN pg_catalog.pg_trigger t ON t.tgrelid = d.rel AND NOT t.tgisinternal \
           JOIN pg_catalog.pg_proc f ON f.oid = t.tgfoid JOIN pg_catalog.pg_roles a ON a.oid = f.proowner, \
                pg_catalog.pg_class p \
          WHERE p.oid = $1 AND f.proowner OPERATOR(pg_catalog.<>) p.relowner AND NOT a.rolsuper \
          LIMIT 1",
        &[parent.into(), partition.into()],
        |r| {
            Ok((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
            ))
        },
    );
    if let Some((why, fix)) = found.into_iter().next() {
        errors::raise(
            errors::INSUFFICIENT_PRIVILEGE,
            format!("table \"{part_name}\" cannot be attached to \"{parent_name}\": {why}"),
            format!("What joins a protected table is its owner's, code included (every tenant's rows will reach it): {fix}"),
        );
    }
}

/// Whether a raw partition bound holds constants only: literals, casts of literals to built-in
/// types that are not domains, MINVALUE / MAXVALUE, DEFAULT, and a hash bound's numbers.
/// PostgreSQL evaluates a bound's expressions when it attaches, as the table's owner: a
/// function there would run an operator's code with the owner's privileges, and so would a
/// cast to a domain (its CHECK) or to a type of the operator's: an attacker's pass cast a bound
/// to a temporary domain whose CHECK read every tenant's rows as a NOLOGIN owner, and made the
/// operator a superuser where the owner was one. The type is resolved as the ALTER will
/// resolve it (the same session, its search_path and temporary schema).
///
/// # Safety
/// `bound` must be null or a valid raw (not yet analyzed) PartitionBoundSpec.
unsafe fn constant_bound(bound: *mut pg_sys::PartitionBoundSpec) -> bool {
    // SAFETY: `bound` is null or the raw PartitionBoundSpec of the parsed statement; a cast's
    // type name is looked up in the catalog (inside the caller's transaction), as the parser
    // would, and its kind read from the type cache.
    unsafe {
        if bound.is_null() {
            return false;
        }
        let constant = |n: *mut pg_sys::Node| -> bool {
            let mut n = n;
            while !n.is_null() && (*n).type_ == pg_sys::NodeTag::T_TypeCast {
                let cast = n as *mut pg_sys::TypeCast;
                // Resolved under the search_path the ATTACH runs with (`run_all`, as the
                // table's owner: pg_catalog, pg_temp), not the caller's: a reviewer's pass named
                // a built-in type of information_schema under its own search_path, which the
                // ATTACH then read as the operator's temporary domain of that name.
                // typenameTypeId raises for a type that does not exist, as the ALTER would.
                let name = (*cast).typeName;
                let typ = crate::catalog::with_pinned_search_path(|| {
                    pg_sys::typenameTypeId(std::ptr::null_mut(), name)
                });
                if u32::from(typ) >= pg_sys::FirstNormalObjectId
                    || pg_sys::get_typtype(typ) == pg_sys::TYPTYPE_DOMAIN as std::ffi::c_char
                {
                    return false;
                }
                n = (*cast).arg;
            }
            if n.is_null() {
                return false;
            }
            match (*n).type_ {
                pg_sys::NodeTag::T_A_Const => true,
                // MINVALUE and MAXVALUE are parsed as column references.
                pg_sys::NodeTag::T_ColumnRef => {
                    let fields = (*(n as *mut pg_sys::ColumnRef)).fields;
                    !fields.is_null() && (*fields).length == 1
                }
                _ => false,
            }
        };
        [
            (*bound).listdatums,
            (*bound).lowerdatums,
            (*bound).upperdatums,
        ]
        .into_iter()
        .filter(|l| !l.is_null())
        .all(|l| {
            (0..(*l).length as usize).all(|i| constant((*(*l).elements.add(i)).ptr_value.cast()))
        })
    }
}

/// Refuse `sql` unless PostgreSQL's parser reads it as one ALTER TABLE of `parent` with one
/// ATTACH PARTITION of `partition` whose bound holds constants only.
fn require_one_attach(sql: &str, parent: pg_sys::Oid, partition: pg_sys::Oid) {
    let c = std::ffi::CString::new(sql).unwrap_or_else(|_| {
        errors::raise(
            errors::INVALID_PARAMETER,
            "the partition bound holds a NUL byte",
            "Pass FOR VALUES ... or DEFAULT.",
        )
    });
    // SAFETY: raw parsing of a NUL-terminated string (a syntax error raises); the nodes read
    // are checked for their tags first.
    let ok = unsafe {
        let stmts = pg_sys::raw_parser(c.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        if stmts.is_null() || (*stmts).length != 1 {
            false
        } else {
            let raw = (*(*stmts).elements).ptr_value as *mut pg_sys::RawStmt;
            let stmt = (*raw).stmt;
            if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_AlterTableStmt {
                false
            } else {
                let a = stmt as *mut pg_sys::AlterTableStmt;
                let cmds = (*a).cmds;
                if cmds.is_null()
                    || (*cmds).length != 1
                    || (*a).objtype != pg_sys::ObjectType::OBJECT_TABLE
                {
                    false
                } else {
                    let cmd = (*(*cmds).elements).ptr_value as *mut pg_sys::AlterTableCmd;
                    let pc = (*cmd).def as *mut pg_sys::PartitionCmd;
                    (*cmd).subtype == pg_sys::AlterTableType::AT_AttachPartition
                        && !pc.is_null()
                        && (*pc).type_ == pg_sys::NodeTag::T_PartitionCmd
                        && constant_bound((*pc).bound)
                        && pg_sys::RangeVarGetRelidExtended(
                            (*a).relation,
                            pg_sys::NoLock as i32,
                            0,
                            None,
                            std::ptr::null_mut(),
                        ) == parent
                        && pg_sys::RangeVarGetRelidExtended(
                            (*pc).name,
                            pg_sys::NoLock as i32,
                            0,
                            None,
                            std::ptr::null_mut(),
                        ) == partition
                }
            }
        }
    };
    if !ok {
        errors::raise(
            errors::INVALID_PARAMETER,
            "the partition bound is not a bound of constants",
            "Pass only the bound, with literal values: 'FOR VALUES FROM (...) TO (...)', 'FOR VALUES IN (...)', 'FOR VALUES WITH (...)' or 'DEFAULT'.",
        );
    }
}

/// Tables of `schema` that have the tenant column and are not partitions.
fn schema_tables(schema: &str, column: &str) -> Vec<pg_sys::Oid> {
    catalog::with_owner_reading_locally(|| {
        Spi::connect(|c| {
            let t = c.select(
                "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                   JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = $2 AND NOT a.attisdropped \
                  WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY c.oid",
                None,
                &[schema.into(), column.into()],
            )?;
            let mut out = Vec::new();
            for r in t {
                out.push(r.get::<pg_sys::Oid>(1)?.expect("oid"));
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: listing tables failed: {e}"))
}

fn require_schema(schema: &str) {
    let c = std::ffi::CString::new(schema).unwrap_or_default();
    // SAFETY: a catalog lookup of a NUL-terminated name inside the caller's transaction;
    // InvalidOid when it is missing (missing_ok = true).
    if unsafe { pg_sys::get_namespace_oid(c.as_ptr(), true) } == pg_sys::InvalidOid {
        errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_INVALID_SCHEMA_NAME,
            format!("schema \"{schema}\" does not exist"),
            "Name an existing schema.",
        );
    }
    if schema == "tenancy" || schema == "pg_catalog" || schema == "information_schema" {
        errors::raise(
            INVALID_PARAMETER,
            format!("schema \"{schema}\" cannot be protected"),
            "Protect your application's schemas.",
        );
    }
}

#[pg_extern(volatile, parallel_unsafe)]
fn protect_schema(schema: &str, tenant_column: default!(&str, "'tenant_id'")) -> i32 {
    authz::require_operator("protect_schema");
    require_schema(schema);
    let tables = schema_tables(schema, tenant_column);
    let mut n = 0;
    for t in &tables {
        protect_table(*t, tenant_column, !citus_without_audit(*t), None);
        n += 1;
    }
    crate::audit::admin(
        "protect_schema",
        None,
        serde_json::json!({"schema": schema, "tables": n}),
    );
    n
}

#[pg_extern(volatile, parallel_unsafe)]
fn auto_protect(
    schema: &str,
    enabled: default!(bool, true),
    tenant_column: default!(&str, "'tenant_id'"),
) {
    authz::require_operator("auto_protect");
    require_schema(schema);
    if enabled {
        catalog::write(
            "INSERT INTO tenancy.auto_protect_schema (schema_name, tenant_column) VALUES ($1, $2) \
             ON CONFLICT (schema_name) DO UPDATE SET tenant_column = EXCLUDED.tenant_column",
            &[schema.into(), tenant_column.into()],
        );
    } else {
        catalog::write(
            "DELETE FROM tenancy.auto_protect_schema WHERE schema_name = $1",
            &[schema.into()],
        );
    }
    crate::audit::admin(
        "auto_protect",
        None,
        serde_json::json!({"schema": schema, "enabled": enabled}),
    );
}

/// Called by the ddl_command_end event trigger for every table a command created or altered:
/// protects new partitions (and attached ones) of protected tables, and new tables with the
/// tenant column in auto-protected schemas.
///
/// Only for the event trigger: `rel` must be a table the running DDL command created or
/// altered (PostgreSQL's `pg_event_trigger_ddl_commands()`, which itself refuses to run outside
/// a DDL command), so no role can make pg_tenancy lock or protect a table it did not just
/// change itself.
#[pg_extern(volatile, parallel_unsafe, name = "_auto_protect_table")]
fn auto_protect_table(rel: pg_sys::Oid) {
    if guard_stands_aside() {
        return;
    }
    require_current_ddl_command(rel);
    // The system catalogs and pg_tenancy's own tables each by a query of its own, never one
    // that joins them: on a Citus node that has no copy of pg_tenancy's reference tables yet (a
    // node being added, whose reference tables' shards Citus creates as their owner), Citus
    // plans a reference table beside a local catalog as a distributed join and refuses it, and
    // adding a node failed for any reference table a non-superuser owned (an attacker's pass).
    let row = catalog::with_owner_reading_locally(|| {
        Spi::connect(|c| {
            let t = c.select(
                "SELECT c.relkind::text, n.nspname::text, \
                        ARRAY(SELECT i.inhparent FROM pg_inherits i WHERE i.inhrelid = c.oid ORDER BY i.inhseqno) \
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
                Some(1),
                &[rel.into()],
            )?;
            if t.is_empty() {
                return Ok::<_, pgrx::spi::Error>(None);
            }
            let r = t.first();
            let relkind = r.get::<String>(1)?.unwrap_or_default();
            let nspname = r.get::<String>(2)?.unwrap_or_default();
            let parents = r.get::<Vec<pg_sys::Oid>>(3)?.unwrap_or_default();
            let own: Vec<(Option<String>, bool)> = c
                .select(
                    "SELECT p.tenant_column::text, p.audited FROM tenancy.protected_table p \
                      WHERE p.relid::oid = $1",
                    Some(1),
                    &[rel.into()],
                )?
                .map(|r| Ok((r.get::<String>(1)?, r.get::<bool>(2)?.unwrap_or(true))))
                .collect::<Result<_, pgrx::spi::Error>>()?;
            let (protected_col, audited) = own.into_iter().next().unwrap_or((None, true));
            // The first parent, in inheritance order, that is protected.
            let mut parent = None;
            if !parents.is_empty() {
                let protected: Vec<(pg_sys::Oid, String)> = c
                    .select(
                        "SELECT p.relid::oid, p.tenant_column::text || ',' || p.audited FROM tenancy.protected_table p \
                          WHERE p.relid::oid = ANY ($1)",
                        None,
                        &[parents.clone().into()],
                    )?
                    .map(|r| {
                        Ok((
                            r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                            r.get::<String>(2)?.unwrap_or_default(),
                        ))
                    })
                    .collect::<Result<_, pgrx::spi::Error>>()?;
                parent = parents
                    .iter()
                    .find_map(|p| protected.iter().find(|(o, _)| o == p).map(|(_, v)| v.clone()));
            }
            let schema_col: Option<String> = c
                .select(
                    "SELECT s.tenant_column::text FROM tenancy.auto_protect_schema s WHERE s.schema_name = $1",
                    Some(1),
                    &[nspname.as_str().into()],
                )?
                .map(|r| r.get::<String>(1))
                .collect::<Result<Vec<_>, pgrx::spi::Error>>()?
                .into_iter()
                .next()
                .flatten();
            let schema_col = match schema_col {
                Some(col) => c
                    .select(
                        "SELECT EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = $1 AND a.attname = $2 AND NOT a.attisdropped)",
                        Some(1),
                        &[rel.into(), col.as_str().into()],
                    )?
                    .first()
                    .get::<bool>(1)?
                    .unwrap_or(false)
                    .then_some(col),
                None => None,
            };
            Ok(Some((relkind, protected_col, parent, schema_col, audited)))
        })
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: auto-protect lookup failed: {e}"));
    let Some((relkind, protected_col, parent, schema_col, audited)) = row else {
        return;
    };
    if relkind != "r" && relkind != "p" {
        return;
    }
    if let Some(col) = protected_col {
        // Already protected: a partition may just have been attached to it. Only partitions
        // not yet protected as its own (with its tenant column and audit setting) are
        // protected: every ALTER TABLE of a partitioned table ends here, and protecting all of
        // its partitions again made an owner's ADD COLUMN or DETACH PARTITION on a table of
        // 2,000 partitions run for 12 s and end out of shared memory (locks).
        if relkind == "p" {
            let info = check_table(rel, &col);
            let done: Vec<pg_sys::Oid> = catalog::owner_rows(
                "tenancy.protected_table",
                "SELECT relid::pg_catalog.oid FROM tenancy.protected_table \
                  WHERE parent OPERATOR(pg_catalog.=) $1::pg_catalog.oid::pg_catalog.regclass \
                    AND tenant_column OPERATOR(pg_catalog.=) $2::pg_catalog.name AND audited OPERATOR(pg_catalog.=) $3",
                &[rel.into(), col.as_str().into(), audited.into()],
                |r| Ok(r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid)),
            );
            for part in info.partitions.into_iter().filter(|p| !done.contains(p)) {
                protect_table(part, &col, audited, Some(rel));
            }
        }
        return;
    }
    // Partitions, and children that inherit from a protected table (CREATE TABLE ... INHERITS,
    // ALTER TABLE ... INHERIT): reading the child directly must not bypass the parent's policies.
    if let Some(p) = parent {
        let (col, audit) = p.rsplit_once(',').unwrap_or((p.as_str(), "true"));
        let parent_oid = catalog::parent_of(rel);
        protect_table(rel, col, audit == "true", parent_oid);
        return;
    }
    if let Some(col) = schema_col {
        if !created_by_this_command(rel) {
            crate::protection::guard::refuse_joining_an_auto_protected_schema(rel);
        }
        if in_citus_distributed_schema(rel) && citus_distribution(rel).is_none() {
            // Citus makes it a single-shard distributed table once this statement is done,
            // creating its shard on a worker before that worker has the table's own name, which
            // the policies name: protected at the end of the statement, distributed
            // ([`protect_deferred`]).
            // SAFETY: MyProc is set for every backend that runs SQL; lxid is its own field.
            let lx = unsafe { (*pg_sys::MyProc).lxid };
            DEFERRED.with(|d| d.borrow_mut().push((lx, rel, col)));
        } else {
            protect_table(rel, &col, !citus_without_audit(rel), None);
        }
    }
}

thread_local! {
    /// (local transaction id, table, tenant column) of tables created in an auto-protected
    /// schema that Citus distributes, to protect once the statement that created them is done.
    static DEFERRED: std::cell::RefCell<Vec<(u32, pg_sys::Oid, String)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// After every utility statement (pg_tenancy's utility hook runs outside Citus's, so after
/// Citus has distributed what the statement created): protect the tables
/// [`auto_protect_table`] deferred in this transaction, now Citus tables.
pub fn protect_deferred(_stmt: *mut pg_sys::Node) {
    if DEFERRED.with(|d| d.borrow().is_empty()) {
        return;
    }
    let pending = DEFERRED.with(|d| std::mem::take(&mut *d.borrow_mut()));
    // SAFETY: MyProc is set for every backend that runs SQL; lxid is its own field.
    let lx = unsafe { (*pg_sys::MyProc).lxid };
    for (l, rel, col) in pending {
        // Of an earlier transaction (one that ended in an error): gone with it.
        let exists = catalog::read_one::<bool>(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_class WHERE oid = $1)",
            &[rel.into()],
        )
        .unwrap_or(false);
        if l != lx || !exists {
            continue;
        }
        citus_without_audit(rel);
        protect_table(rel, &col, false, None);
    }
}

/// Before a top-level `SELECT f(<constant>, ...)` is planned (`src/pg/binding_param.rs`): on
/// Citus, refuse to distribute a table protected in the form of a table local to one node
/// (`create_distributed_table`, `create_distributed_table_concurrently`,
/// `create_reference_table`), or a schema that holds one (`citus_schema_distribute`), with the
/// order that works in the HINT. Citus itself refuses it too, but for a reason (the TRUNCATE
/// trigger, then the policies' subqueries) whose own hint leads nowhere.
pub fn refuse_distributing_protected(func: pg_sys::Oid, arg: pg_sys::Datum, argtype: pg_sys::Oid) {
    if argtype != pg_sys::REGCLASSOID && argtype != pg_sys::REGNAMESPACEOID {
        return;
    }
    if !crate::pg::citus::in_database() {
        return;
    }
    // SAFETY: syscache lookups of a function the parser resolved (it exists); the returned
    // name is a palloc'd C string or null.
    let name = unsafe {
        if pg_sys::get_func_namespace(func) != pg_sys::Oid::from(pg_sys::PG_CATALOG_NAMESPACE) {
            return;
        }
        let n = pg_sys::get_func_name(func);
        if n.is_null() {
            return;
        }
        std::ffi::CStr::from_ptr(n).to_string_lossy().into_owned()
    };
    let oid = pg_sys::Oid::from(arg.value() as u32);
    let table = match (name.as_str(), argtype) {
        (
            "create_distributed_table"
            | "create_distributed_table_concurrently"
            | "create_reference_table",
            pg_sys::REGCLASSOID,
        ) => catalog::owner_rows(
            "tenancy.protected_table",
            "SELECT p.relid::text FROM tenancy.protected_table p WHERE p.relid = $1::oid::regclass",
            &[oid.into()],
            |r| r.get::<String>(1),
        ),
        ("citus_schema_distribute", pg_sys::REGNAMESPACEOID) => catalog::owner_rows(
            "tenancy.protected_table",
            "SELECT p.relid::text FROM tenancy.protected_table p JOIN pg_catalog.pg_class c ON c.oid = p.relid \
              WHERE c.relnamespace = $1 ORDER BY 1 LIMIT 1",
            &[oid.into()],
            |r| r.get::<String>(1),
        ),
        _ => return,
    }
    .into_iter()
    .flatten()
    .next();
    let Some(table) = table else {
        return;
    };
    let lit = catalog::quote_literal(&table);
    errors::raise(
        errors::NOT_IN_PREREQUISITE_STATE,
        format!("{table} is protected in the form of a table on one node, which Citus cannot distribute"),
        format!(
            "Distribute first, then protect: SELECT tenancy.unprotect({lit}); then distribute it (the tenant column keeps its NOT NULL DEFAULT tenancy.current_tenant()); then SELECT tenancy.protect({lit}, audit => false);"
        ),
    );
}

/// Whether `rel` is a Citus table that `protect_schema` and `auto_protect` protect without the
/// audit trail, saying so in a NOTICE: one not colocated with the distributed trail (a
/// reference table, a schema's single-shard table, another colocation), or any while the
/// trail is not distributed; and a table on the coordinator only once the trail is.
fn citus_without_audit(rel: pg_sys::Oid) -> bool {
    let citus = crate::pg::citus::in_database()
        && (citus_distribution(rel).is_some() || in_citus_distributed_schema(rel));
    let without = if citus {
        !crate::citus::trail::colocated_with_trail(rel)
    } else {
        crate::citus::trail::distributed()
    };
    if without {
        pgrx::notice!(
            "{} is protected without the audit trail: on Citus only tables distributed by their tenant column and colocated with tenancy.audit_log are audited",
            catalog::relation_name(rel)
        );
    }
    without
}

/// Whether `rel` is in a schema Citus distributes (schema-based sharding,
/// `citus_schema_distribute`), where every table is a single-shard distributed table.
fn in_citus_distributed_schema(rel: pg_sys::Oid) -> bool {
    crate::pg::citus::in_database()
        && catalog::owner_rows(
            "Citus's metadata",
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_schema s JOIN pg_catalog.pg_class c ON c.relnamespace = s.schemaid::oid \
                             WHERE c.oid = $1)",
            &[rel.into()],
            |r| Ok(r.get::<bool>(1)?.unwrap_or(false)),
        )
        .first()
        .copied()
        .unwrap_or(false)
}

/// Refuse unless `rel` is one of the objects the running DDL command created or altered.
/// Whether the running DDL command is the plain CREATE TABLE of `rel` (then the table is
/// empty, and `_guard_members` checks the code it brings): not CREATE TABLE AS, SELECT INTO,
/// or an ALTER TABLE of a table that may hold rows.
fn created_by_this_command(rel: pg_sys::Oid) -> bool {
    crate::catalog::read_one::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_event_trigger_ddl_commands() \
                         WHERE objid = $1 AND command_tag = 'CREATE TABLE')",
        &[rel.into()],
    )
    .unwrap_or(false)
}

fn require_current_ddl_command(rel: pg_sys::Oid) {
    let listed = crate::catalog::read_one::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_event_trigger_ddl_commands() WHERE objid = $1)",
        &[rel.into()],
    )
    .unwrap_or(false);
    if !listed {
        errors::raise(
            errors::INSUFFICIENT_PRIVILEGE,
            "tenancy._auto_protect_table() is called by pg_tenancy's event trigger only",
            "Protect tables with tenancy.protect() or tenancy.auto_protect().",
        );
    }
}

/// Called by the generated WITH CHECK expressions only for a row whose tenant column is not
/// the bound tenant: logs a security event (it survives the rollback) and refuses the row.
#[pg_extern(volatile, parallel_restricted)]
fn _cross_tenant_write(tbl: crate::pg::types::Regclass, row_tenant: Option<pgrx::Uuid>) -> bool {
    let tbl = tbl.0;
    let b = crate::binding::require();
    let table = relation_name(tbl);
    let row_tenant = row_tenant.map(|u| catalog::from_pg_uuid(&u).to_string());
    let mut f = serde_json::Map::new();
    f.insert("table".into(), table.clone().into());
    f.insert("tenant".into(), b.slug.clone().into());
    f.insert("subject".into(), b.subject.clone().into());
    f.insert("row_tenant".into(), row_tenant.clone().into());
    errors::refuse(
        "cross_tenant_write_refused",
        f,
        errors::INSUFFICIENT_PRIVILEGE,
        format!(
            "new row for table \"{table}\" belongs to tenant {}, and this session is bound to tenant \"{}\"",
            row_tenant.as_deref().unwrap_or("NULL"),
            b.slug
        ),
        "Rows are written for the bound tenant only: leave the tenant column out, it defaults to the bound tenant.",
    )
}

/// BEFORE TRUNCATE trigger of protected tables: refused for bound sessions and for every role
/// that is not an operator (TRUNCATE would bypass row security and empty every tenant).
#[pg_trigger]
fn _refuse_truncate<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, pgrx::PgTriggerError> {
    let who = authz::caller();
    let bound = crate::binding::peek().is_some();
    if bound || !authz::is_operator(who) {
        let table = relation_name(trigger.relid()?);
        let mut f = serde_json::Map::new();
        f.insert("table".into(), table.clone().into());
        errors::refuse(
            "truncate_refused",
            f,
            errors::INSUFFICIENT_PRIVILEGE,
            format!("TRUNCATE of protected table \"{table}\" is refused"),
            "TRUNCATE bypasses row security and would empty every tenant's rows; delete the bound tenant's rows with DELETE, or have an operator decommission a tenant.",
        );
    }
    // Each tenant whose rows go loses them in its own chain (the rows are still there:
    // BEFORE TRUNCATE).
    crate::audit::record_rows_changed(trigger.relid()?, "truncate", None);
    Ok(None)
}
