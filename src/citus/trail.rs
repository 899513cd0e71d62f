//! The audit trail on Citus: `tenancy.audit_log`, `tenancy.audit_chain` and
//! `tenancy.audit_checkpoint` distributed by `tenant_id` and colocated with each other, so that
//! a tenant's records, its chain and its checkpoints live in the shards that hold the tenant's
//! rows of every protected table colocated with them.
//!
//! - A write to a protected distributed table is recorded on the node that runs it, in the
//!   same (distributed) transaction: the shard's audit trigger writes into the colocated shard
//!   of `audit_log` there ([`shard_of`]), and links into the colocated shard of `audit_chain`
//!   when that node's part of the transaction commits or prepares ([`chain_shard`]).
//! - A record written through SQL (a management action on the coordinator) goes through Citus
//!   to the tenant's shard, where the `link_inserted` trigger of `audit_log`'s shards hands it
//!   to the same linking.
//! - Record ids come from each node's own sequence, offset by the node's Citus group
//!   ([`id_offset`]), so that ids never collide in a tenant's trail wherever it was written or
//!   moved.
//!
//! `audit_verify` reads the tenant's chain and records through Citus, from the coordinator,
//! as on one node (the queries name the tenant, so Citus sends them to its shard).

use crate::errors;
use pgrx::prelude::*;
use std::cell::Cell;

thread_local! {
    /// On a worker, the tenant whose records a purge carried from the coordinator may delete in
    /// this transaction (local transaction id), until when (Unix seconds).
    static PURGE_ASSERTED: Cell<Option<(u32, uuid::Uuid, i64)>> = const { Cell::new(None) };
    /// On the coordinator, how `audit_purge` carries its assertion to the workers and ends it
    /// (signing is the lifecycle pillar's, carrying the binding pillar's: registered by
    /// `src/lifecycle/mod.rs`).
    static PURGE_CARRIER: Cell<Option<PurgeCarrier>> = const { Cell::new(None) };
    /// On a worker, how a value carried from the coordinator is adopted now (the binding
    /// pillar's, registered by `src/binding/mod.rs`).
    static CARRIER_ADOPTER: Cell<Option<fn()>> = const { Cell::new(None) };
    /// Whether the trail is distributed here: `Some(true)` once seen (it is never undone), or
    /// `Some(false)` with the local transaction it was read in.
    static DISTRIBUTED: Cell<Option<(bool, u32)>> = const { Cell::new(None) };
    /// This node's offset of record ids (read once: a node keeps its Citus group).
    static OFFSET: Cell<Option<i64>> = const { Cell::new(None) };
}

/// How a purge is carried to the workers (start, for a tenant) and ended.
type PurgeCarrier = (fn(uuid::Uuid), fn());

/// Record ids of a node are its sequence's values plus its Citus group shifted this far: room
/// for 2^48 records per node (a node's group never changes).
const GROUP_SHIFT: u32 = 48;

fn local_xact() -> u32 {
    // SAFETY: MyProc is set for every backend that runs a transaction; lxid is its own.
    unsafe { (*pg_sys::MyProc).lxid }
}

/// Whether `tenancy.audit_log` is a distributed table in this database (after
/// `citus_setup()`).
pub fn distributed() -> bool {
    match DISTRIBUTED.with(|d| d.get()) {
        Some((true, _)) => return true,
        Some((false, x)) if x == local_xact() => return false,
        _ => {}
    }
    let d = crate::pg::citus::in_database()
        && crate::catalog::owner_rows(
            "Citus's metadata",
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition \
                             WHERE logicalrelid = 'tenancy.audit_log'::pg_catalog.regclass)",
            &[],
            |r| Ok(r.get::<bool>(1)?.unwrap_or(false)),
        )
        .first()
        .copied()
        .unwrap_or(false);
    DISTRIBUTED.with(|c| c.set(Some((d, local_xact()))));
    d
}

/// What is added to this node's sequence values to make a record id: 0 on one node and on the
/// coordinator (group 0), a worker's group shifted by [`GROUP_SHIFT`] bits otherwise.
pub fn id_offset() -> i64 {
    if let Some(o) = OFFSET.with(|o| o.get()) {
        return o;
    }
    if !distributed() {
        return 0;
    }
    let group = crate::catalog::owner_rows(
        "Citus's metadata",
        "SELECT groupid FROM pg_catalog.pg_dist_local_group",
        &[],
        |r| Ok(r.get::<i32>(1)?.unwrap_or(0)),
    )
    .first()
    .copied()
    .unwrap_or(0);
    let offset = (group.max(0) as i64) << GROUP_SHIFT;
    OFFSET.with(|o| o.set(Some(offset)));
    offset
}

/// A shard of a protected distributed table, as its audit trigger needs it.
pub struct ShardTable {
    /// The table's name (regclass's output), which its records carry.
    pub table: String,
    /// Its tenant (distribution) column.
    pub tenant_column: String,
    /// The name of the shard of `tenancy.audit_log` on this node that holds the same tenants.
    pub log_shard: String,
    /// The range of the tenant column's hash (Citus's, the type's standard hash function) the
    /// shard holds: a row outside it does not belong in the shard.
    pub range: (i32, i32),
}

/// Whether `tenant` hashes into `range`, as Citus places a uuid distribution column (its
/// standard hash function, `uuid_hash`).
pub fn in_range(tenant: uuid::Uuid, range: (i32, i32)) -> bool {
    // SAFETY: uuid_hash takes one non-null uuid datum (palloc'd in the current context) and
    // returns an int4.
    let h: i32 = unsafe {
        pgrx::direct_function_call(
            pg_sys::uuid_hash,
            &[crate::catalog::to_pg_uuid(tenant).into_datum()],
        )
    }
    .expect("uuid_hash");
    range.0 <= h && h <= range.1
}

/// The table of shard `rel`, its tenant column and the shard of the trail colocated with it,
/// when `rel` is a shard on this node of a table `protect()` recorded (`citus_protection`).
/// Raises when the table is protected but its trail's shard is not here (the table is not
/// colocated with `tenancy.audit_log`: its records would have nowhere to go in this
/// transaction). None when `rel` is no shard of a protected table.
pub fn shard_of(rel: pg_sys::Oid) -> Option<ShardTable> {
    let found = crate::catalog::with_owner_reading_locally(|| {
        Spi::connect_mut(|c| {
            super::guard::show_shards(c)?;
            let records = super::guard::local_copy(c)?;
            let row = c.select(
                &format!(
                    "SELECT d.logicalrelid::pg_catalog.regclass::text, \
                            pg_catalog.column_to_column_name(d.logicalrelid, p.partkey), \
                            (SELECT pg_catalog.shard_name(a.logicalrelid, a.shardid, false) \
                               FROM pg_catalog.pg_dist_partition pa \
                               JOIN pg_catalog.pg_dist_shard a ON a.logicalrelid = pa.logicalrelid \
                              WHERE pa.logicalrelid = 'tenancy.audit_log'::pg_catalog.regclass \
                                AND pa.colocationid = p.colocationid \
                                AND a.shardminvalue = d.shardminvalue \
                                AND EXISTS (SELECT FROM pg_catalog.pg_dist_placement pl \
                                             WHERE pl.shardid = a.shardid \
                                               AND pl.groupid = (SELECT groupid FROM pg_catalog.pg_dist_local_group))), \
                            d.shardminvalue::int, d.shardmaxvalue::int \
                       FROM pg_catalog.pg_class r \
                       JOIN pg_catalog.pg_dist_shard d \
                         ON d.shardid = pg_catalog.substring(r.relname::text, '_([0-9]{{1,18}})$')::bigint \
                        AND pg_catalog.to_regclass(pg_catalog.shard_name(d.logicalrelid, d.shardid, false)) = r.oid \
                       JOIN pg_catalog.pg_dist_partition p ON p.logicalrelid = d.logicalrelid AND p.partmethod = 'h' \
                      WHERE r.oid = $1 \
                        AND EXISTS (SELECT FROM {records} cp WHERE cp.relation = d.logicalrelid::pg_catalog.regclass::text)"
                ),
                Some(1),
                &[rel.into()],
            )?;
            if row.is_empty() {
                return Ok::<_, pgrx::spi::Error>(None);
            }
            let row = row.first();
            Ok(Some((
                row.get::<String>(1)?.unwrap_or_default(),
                row.get::<String>(2)?.unwrap_or_default(),
                row.get::<String>(3)?,
                (
                    row.get::<i32>(4)?.unwrap_or(i32::MIN),
                    row.get::<i32>(5)?.unwrap_or(i32::MAX),
                ),
            )))
        })
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: reading Citus's metadata failed: {e}"))?;
    let (table, tenant_column, log, range) = found;
    let Some(log) = log else {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!("{table} is audited but not colocated with tenancy.audit_log: its records cannot be written with its rows"),
            format!("Colocate it with the trail: SELECT alter_distributed_table('{table}', colocate_with => 'tenancy.audit_log');"),
        )
    };
    // The shard's name as shard_name printed it, schema-qualified: the relation's own name is
    // what follows "tenancy.".
    let log_shard = log.strip_prefix("tenancy.").unwrap_or(&log).to_string();
    Some(ShardTable {
        table,
        tenant_column,
        log_shard,
        range,
    })
}

/// The name (in schema `tenancy`) of the shard of `table` (`audit_chain` or
/// `audit_checkpoint`) that holds `tenant`'s rows, which must be on this node: a record is
/// only linked where it was written, and a tenant's records are written in its shards.
pub fn chain_shard(table: &str, tenant: uuid::Uuid) -> String {
    let name = crate::catalog::owner_rows(
        "Citus's metadata",
        "SELECT pg_catalog.shard_name(s.logicalrelid, s.shardid, false) \
           FROM pg_catalog.pg_dist_shard s \
          WHERE s.shardid = pg_catalog.get_shard_id_for_distribution_column($1::pg_catalog.regclass, $2) \
            AND EXISTS (SELECT FROM pg_catalog.pg_dist_placement pl WHERE pl.shardid = s.shardid \
                          AND pl.groupid = (SELECT groupid FROM pg_catalog.pg_dist_local_group))",
        &[
            format!("tenancy.{table}").into(),
            crate::catalog::to_pg_uuid(tenant).into(),
        ],
        |r| Ok(r.get::<String>(1)?.unwrap_or_default()),
    )
    .into_iter()
    .next()
    .unwrap_or_else(|| {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!("the shard of tenancy.{table} for tenant {tenant} is not on this node"),
            "A tenant's records are linked on the node that holds its shards; check the placements of tenancy.audit_log and tenancy.audit_chain (citus_shards).",
        )
    });
    name.strip_prefix("tenancy.").unwrap_or(&name).to_string()
}

/// Whether `rel` is a Citus table (distributed or reference).
pub fn citus_table(rel: pg_sys::Oid) -> bool {
    crate::pg::citus::in_database()
        && crate::catalog::owner_rows(
            "Citus's metadata",
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition WHERE logicalrelid = $1)",
            &[rel.into()],
            |r| Ok(r.get::<bool>(1)?.unwrap_or(false)),
        )
        .first()
        .copied()
        .unwrap_or(false)
}

/// Whether `rel` is a hash-distributed table colocated with the distributed trail, which
/// `protect()` may audit.
pub fn colocated_with_trail(rel: pg_sys::Oid) -> bool {
    distributed()
        && crate::catalog::owner_rows(
            "Citus's metadata",
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition p \
                              JOIN pg_catalog.pg_dist_partition a ON a.colocationid = p.colocationid \
                             WHERE p.logicalrelid = $1 AND p.partmethod = 'h' \
                               AND a.logicalrelid = 'tenancy.audit_log'::pg_catalog.regclass)",
            &[rel.into()],
            |r| Ok(r.get::<bool>(1)?.unwrap_or(false)),
        )
        .first()
        .copied()
        .unwrap_or(false)
}

/// The part of [`super::citus_setup`] that distributes the trail (once; a no-op after). The
/// policy through which tenant admins read their records loses its subquery (Citus refuses
/// subqueries in the policies of distributed tables); the trail's append-only triggers go to
/// every shard (`citus.enable_unsafe_triggers`, set by the caller for its transaction), and so
/// does the `link_inserted` trigger, added after the records already written were moved into
/// the shards (they are linked already). Protected tables on this node that are audited and
/// not distributed are refused first: their trigger writes into this node's `audit_log`, which
/// would no longer be read.
pub fn distribute(c: &mut pgrx::spi::SpiClient<'_>) -> Result<bool, pgrx::spi::Error> {
    let done = c
        .select(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition \
                             WHERE logicalrelid = 'tenancy.audit_log'::pg_catalog.regclass)",
            None,
            &[],
        )?
        .first()
        .get_one::<bool>()?
        .unwrap_or(false);
    if done {
        return Ok(false);
    }
    let local = c
        .select(
            "SELECT pg_catalog.string_agg(p.relid::text, ', ' ORDER BY p.relid::text) FROM tenancy.protected_table p \
              WHERE p.audited AND NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition d WHERE d.logicalrelid = p.relid)",
            None,
            &[],
        )?
        .first()
        .get_one::<String>()?;
    if let Some(tables) = local {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!("audited tables on the coordinator only would lose their trail once it is distributed: {tables}"),
            "Distribute them by their tenant column, or protect them with audit => false, then call tenancy.citus_setup() again.",
        );
    }
    for s in [
        "DROP POLICY tenant_admins ON tenancy.audit_log",
        "CREATE POLICY tenant_admins ON tenancy.audit_log FOR SELECT USING (tenant_id = tenancy._audit_reader_tenant())",
        "SELECT pg_catalog.create_distributed_table('tenancy.audit_log', 'tenant_id')",
        "SELECT pg_catalog.create_distributed_table('tenancy.audit_chain', 'tenant_id', colocate_with => 'tenancy.audit_log')",
        "SELECT pg_catalog.create_distributed_table('tenancy.audit_checkpoint', 'tenant_id', colocate_with => 'tenancy.audit_log')",
        "CREATE TRIGGER link_inserted AFTER INSERT ON tenancy.audit_log REFERENCING NEW TABLE AS tenancy_new \
           FOR EACH STATEMENT EXECUTE FUNCTION tenancy._audit_link_inserted()",
    ] {
        c.update(s, None, &[])?;
    }
    Ok(true)
}

/// Citus builds a moved or copied shard, its triggers included, as the table's owner, who must
/// be able to name the triggers' functions on the node it is built on (their EXECUTE is
/// revoked from PUBLIC; a trigger fires without it). `owner` is regrole's output (quoted where
/// needed).
pub fn trigger_functions_grant(owner: &str, audit: bool) -> String {
    format!(
        "GRANT EXECUTE ON FUNCTION tenancy._refuse_truncate(){} TO {owner}",
        if audit { ", tenancy._audit()" } else { "" },
    )
}

/// The grant of [`trigger_functions_grant`] on every worker: Citus does not carry grants on an
/// extension's functions. Through Citus's `run_command_on_workers` (its own connections, as
/// the catalog owner), checked; [`regrant_trigger_functions`] makes them again for nodes added
/// later.
pub fn grant_trigger_functions_on_workers(owner: &str, audit: bool) {
    let command = trigger_functions_grant(owner, audit);
    let failed = crate::catalog::owner_rows(
        "Citus's workers",
        "SELECT pg_catalog.string_agg(nodename || ':' || nodeport || ': ' || result, '; ' ORDER BY nodename, nodeport) \
           FROM pg_catalog.run_command_on_workers($1) WHERE NOT success",
        &[command.into()],
        |r| r.get::<String>(1),
    )
    .into_iter()
    .next()
    .flatten();
    if let Some(failed) = failed {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!("granting a protected table's owner its triggers' functions failed on a worker: {failed}"),
            "Check that every node is reachable (citus_check_cluster_node_health()) and call tenancy.citus_setup() again.",
        );
    }
}

/// For [`super::citus_setup`]: the grants of [`grant_trigger_functions_on_workers`] for every
/// protected Citus table, on every worker (nodes added since the tables were protected).
pub fn regrant_trigger_functions() {
    let owners: Vec<(String, bool)> = crate::catalog::owner_rows(
        "tenancy.protected_table",
        "SELECT c.relowner::pg_catalog.regrole::text, pg_catalog.bool_or(p.audited) \
           FROM tenancy.protected_table p JOIN pg_catalog.pg_class c ON c.oid = p.relid \
          WHERE EXISTS (SELECT FROM pg_catalog.pg_dist_partition d WHERE d.logicalrelid = p.relid) \
          GROUP BY 1 ORDER BY 1",
        &[],
        |r| {
            Ok((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<bool>(2)?.unwrap_or(false),
            ))
        },
    );
    for (owner, audit) in owners {
        grant_trigger_functions_on_workers(&owner, audit);
    }
}

/// On the coordinator, after DDL touched protected Citus tables (`rels`): an owner given one of
/// them since it was protected (`ALTER TABLE ... OWNER TO`) gets the grants of
/// [`trigger_functions_grant`] here and on every worker, so that Citus can still move its
/// shards.
pub fn grant_new_owners(rels: &[Option<pg_sys::Oid>]) {
    let owners: Vec<(String, bool)> = crate::catalog::owner_rows(
        "tenancy.protected_table",
        "SELECT c.relowner::pg_catalog.regrole::text, p.audited \
           FROM tenancy.protected_table p JOIN pg_catalog.pg_class c ON c.oid = p.relid \
          WHERE p.relid::pg_catalog.oid = ANY ($1) \
            AND EXISTS (SELECT FROM pg_catalog.pg_dist_partition d WHERE d.logicalrelid = p.relid) \
            AND (NOT pg_catalog.has_function_privilege(c.relowner, 'tenancy._refuse_truncate()', 'EXECUTE') \
                 OR (p.audited AND NOT pg_catalog.has_function_privilege(c.relowner, 'tenancy._audit()', 'EXECUTE')))",
        &[rels.to_vec().into()],
        |r| {
            Ok((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<bool>(2)?.unwrap_or(false),
            ))
        },
    );
    for (owner, audit) in owners {
        // A GRANT fires event triggers: a DBA's, as the catalog owner, would reach the caller's
        // temporary objects (a reviewer's pass made a table's owner a superuser through
        // ALTER TABLE ... OWNER TO here).
        crate::catalog::with_owner_ddl(|| {
            Spi::connect_mut(|c| {
                c.update(&trigger_functions_grant(&owner, audit), None, &[])
                    .map(|_| ())
            })
        })
        .unwrap_or_else(|e| pgrx::error!("pg_tenancy: granting the table's owner failed: {e}"));
        grant_trigger_functions_on_workers(&owner, audit);
    }
}

/// Set how `audit_purge` carries its assertion (sign and send it) and ends it.
pub fn set_purge_carrier(start: fn(uuid::Uuid), end: fn()) {
    PURGE_CARRIER.with(|c| c.set(Some((start, end))));
}

/// On the coordinator: carry a purge of `tenant`'s trail to the workers for what follows in
/// this transaction ([`end_purge`] ends it).
pub fn carry_purge(tenant: uuid::Uuid) {
    match PURGE_CARRIER.with(|c| c.get()) {
        Some((start, _)) => start(tenant),
        None => errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            "pg_tenancy cannot carry a purge to the workers",
            "Load pg_tenancy through shared_preload_libraries on every node.",
        ),
    }
}

pub fn end_purge() {
    if let Some((_, end)) = PURGE_CARRIER.with(|c| c.get()) {
        end();
    }
}

/// On a worker: a verified purge assertion for `tenant` was adopted in local transaction `lx`.
pub fn set_purge_asserted(tenant: uuid::Uuid, expires: i64, lx: u32) {
    PURGE_ASSERTED.with(|p| p.set(Some((lx, tenant, expires))));
}

/// The carried assertion ended (or another replaced it).
pub fn clear_purge_asserted() {
    PURGE_ASSERTED.with(|p| p.set(None));
}

/// Set how a carried value is adopted on a worker.
pub fn set_carrier_adopter(f: fn()) {
    CARRIER_ADOPTER.with(|c| c.set(Some(f)));
}

/// Whether this transaction on a worker carries a purge of `tenant`'s trail that is still
/// valid.
pub fn purge_asserted(tenant: uuid::Uuid) -> bool {
    if !crate::pg::citus::in_database() {
        return false;
    }
    // Adopt what the coordinator carried now: a deletion of the trail reads no binding that
    // would have adopted it already.
    if let Some(adopt) = CARRIER_ADOPTER.with(|c| c.get()) {
        adopt();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(i64::MAX);
    PURGE_ASSERTED
        .with(|p| p.get())
        .is_some_and(|(lx, t, expires)| lx == local_xact() && t == tenant && now <= expires)
}

/// Whether this node is the Citus coordinator.
pub fn on_coordinator() -> bool {
    crate::pg::citus::in_database()
        && crate::catalog::owner_rows(
            "Citus's metadata",
            "SELECT pg_catalog.citus_is_coordinator()",
            &[],
            |r| Ok(r.get::<bool>(1)?.unwrap_or(false)),
        )
        .first()
        .copied()
        .unwrap_or(false)
}

/// The columns `tenant` keeps out of its records of the protected Citus table `table` (its
/// name as regclass prints it), read from this node's copies of `tenancy.citus_audit_exclusion`
/// and `tenancy.citus_protection` (inside a statement Citus runs on a node, a query of a
/// reference table itself is refused: the copies are read instead, as the guard does).
pub fn shard_exclusions(table: &str, tenant: uuid::Uuid) -> Vec<String> {
    crate::catalog::with_owner_reading_locally(|| {
        Spi::connect_mut(|c| {
            super::guard::show_shards(c)?;
            let records = super::guard::local_copy(c)?;
            let excluded = super::guard::local_copy_of(c, "tenancy.citus_audit_exclusion")?;
            c.select(
                &format!(
                    "SELECT coalesce((SELECT e.columns FROM {excluded} e JOIN {records} p ON p.coordinator_relid = e.coordinator_relid \
                                       WHERE p.relation = $1 AND e.tenant_id = $2), '{{}}')"
                ),
                Some(1),
                &[table.into(), crate::catalog::to_pg_uuid(tenant).into()],
            )?
            .first()
            .get_one::<Vec<String>>()
            .map(Option::unwrap_or_default)
        })
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: reading the audit exclusions failed: {e}"))
}
