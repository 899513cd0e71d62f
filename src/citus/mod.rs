//! Scale-out on Citus: the same guarantees on a Citus cluster as on one node.
//!
//! What holds so far:
//! - **One catalog, everywhere.** On a Citus coordinator, pg_tenancy's catalog (tenants, keys,
//!   tenant roles, members, grants, role mappings, support grants, revocations, audit and
//!   certificate keys) is made of Citus reference tables: one copy on every node, written
//!   by Citus in the same distributed transaction as the change. A token therefore binds on
//!   any node, and a suspension or revocation committed on the coordinator reaches every
//!   node's sessions from their next statement: the catalog's triggers fire on every node's
//!   copy and invalidate that node's caches as on one node. [`citus_setup`] does it, once, on
//!   the coordinator after `CREATE EXTENSION pg_tenancy` (which says so in a NOTICE).
//! - In a superuser's connection that Citus opened for its own work, pg_tenancy's catalog work
//!   stands aside (`src/pg/citus.rs`), and its catalog reads are allowed inside the queries
//!   Citus runs on a node.
//!
//! - The binding travels with the transaction to the workers: `src/binding/carrier.rs`.
//! - Tables distributed by their tenant column are protected in a form Citus accepts and
//!   routes to the tenant's shard: `src/protection/policy.rs` (`citus_sql`), planned by
//!   `src/pg/binding_param.rs`.
//!
//! - `verify()` compares every shard of a protected table with the table, and reports grants
//!   that reach the shards past pg_tenancy's checks ([`citus_findings`]).
//!
//! - The guard holds on every node: a shard, or a worker's copy of a protected table, refuses
//!   DDL that would weaken it ([`guard`]).
//! - `decommission_tenant` deletes a tenant's rows on every node as each table's owner, its
//!   binding carried as a signed assertion (`src/lifecycle/mod.rs`, `src/binding/carrier.rs`).
//!
//! - Schema-based sharding: `auto_protect` and `protect_schema` protect the tables of a schema
//!   Citus distributes (`src/protection/policy.rs`, `protect_deferred`); distributing a table
//!   protected while local is refused with the order that works.
//!
//! - The audit trail is distributed by tenant and written beside each shard ([`trail`]).

mod calls;
pub mod guard;
pub mod trail;

use crate::errors;
use pgrx::prelude::*;

/// The catalog's tables that become reference tables: who the tenants are and who may act for
/// them. Each node keeps its own `protected_table` and `audit_exclusion` (they name tables by
/// `regclass`, and a table local to one node has no name on the others) and its security event
/// log; the audit trail is distributed by tenant ([`trail`]).
/// `role_privilege` names tables too: on Citus a grant names a table that exists on every node.
const REFERENCE_TABLES: &[&str] = &[
    "tenant",
    "tenant_role",
    "signing_key",
    "member",
    "role_mapping",
    "role_privilege",
    "auto_protect_schema",
    "support_grant",
    "subject_revocation",
    "token_revocation",
    "certificate_key",
    "audit_key",
    "citus_protection",
    "citus_audit_exclusion",
];

thread_local! {
    /// Creates the platform's certificate key if there is none (`src/lifecycle/certificate.rs`,
    /// registered by the lifecycle pillar, which builds on this module).
    static KEY_MAKER: std::cell::Cell<Option<fn()>> = const { std::cell::Cell::new(None) };
}

/// Set how `citus_setup()` makes sure the certificate key exists.
pub fn set_key_maker(f: fn()) {
    KEY_MAKER.with(|k| k.set(Some(f)));
}

pub fn init() {
    crate::pg::hooks::after_utility(after_utility);
    crate::pg::hooks::before_utility(crate::pg::citus::note_set_local);
    crate::pg::hooks::before_utility(guard::refuse_catalog_names);
    crate::pg::hooks::before_utility(guard::refuse_database_wide_settings);
    crate::pg::hooks::at_transaction_event(crate::pg::citus::at_transaction_event);
    calls::init();
}

/// After `CREATE EXTENSION pg_tenancy` on a Citus coordinator: say that the catalog is still
/// local, and how to distribute it. (Not done here: the shards Citus creates on the
/// coordinator itself go over a connection of their own, which cannot see the extension's
/// schema before this transaction commits.)
fn after_utility(stmt: *mut pg_sys::Node) {
    // SAFETY: `stmt` is the utility statement that just ran, or null; its tag says its type.
    let ours = unsafe {
        !stmt.is_null()
            && (*stmt).type_ == pg_sys::NodeTag::T_CreateExtensionStmt
            && !(*(stmt as *mut pg_sys::CreateExtensionStmt))
                .extname
                .is_null()
            && std::ffi::CStr::from_ptr((*(stmt as *mut pg_sys::CreateExtensionStmt)).extname)
                .to_bytes()
                == b"pg_tenancy"
    };
    if ours && crate::pg::citus::loaded() && citus_in_database() {
        pgrx::notice!(
            "pg_tenancy runs on a Citus cluster here: run SELECT tenancy.citus_setup(); on the coordinator, once its nodes are added, to make pg_tenancy's catalog reference tables on every node"
        );
    }
}

/// Whether the citus extension is created in this database.
fn citus_in_database() -> bool {
    // SAFETY: a catalog lookup by name, missing_ok.
    unsafe { pg_sys::get_extension_oid(c"citus".as_ptr(), true) != pg_sys::InvalidOid }
}

/// Whether this node is the coordinator and the cluster has at least one node (the
/// coordinator itself or a worker) to place the catalog's copies on.
fn on_coordinator_with_nodes() -> bool {
    Spi::get_one::<bool>(
        "SELECT pg_catalog.citus_is_coordinator() \
            AND EXISTS (SELECT FROM pg_catalog.pg_dist_node WHERE isactive AND noderole = 'primary')",
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// Make pg_tenancy's catalog Citus reference tables (a superuser, on the coordinator, once its
/// nodes are added, and again after adding a node: [`reseat_node_oids`] gives it its copy,
/// written by name). Returns the tables it distributed: none when already done.
///
/// Its statements run with `search_path = pg_catalog, pg_temp`: as the superuser who calls it,
/// they compared a regclass with a regclass, or an oid with a regnamespace, with a bare `=`, for
/// which pg_catalog has no exact match, so an operator a role made in a schema on the caller's
/// search_path (public) would have been chosen and run as the superuser (an attacker's pass).
#[pg_extern(volatile, parallel_unsafe)]
fn citus_setup() -> Vec<String> {
    // SAFETY: superuser() reads the current user's catalog row, as any privilege check does.
    if !unsafe { pg_sys::superuser() } {
        errors::raise(
            errors::INSUFFICIENT_PRIVILEGE,
            "permission denied: tenancy.citus_setup() is for superusers",
            "Run it as a superuser on the Citus coordinator.",
        );
    }
    crate::catalog::with_pinned_search_path(set_up)
}

fn set_up() -> Vec<String> {
    if !crate::pg::citus::loaded() || !citus_in_database() {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            "Citus is not installed in this database",
            "Put citus first in shared_preload_libraries ('citus,pg_tenancy'), run CREATE EXTENSION citus; and add the nodes, then call tenancy.citus_setup() again.",
        );
    }
    if !on_coordinator_with_nodes() {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            "pg_tenancy's catalog is distributed from the Citus coordinator, once it has nodes",
            "Run it on the coordinator after citus_set_coordinator_host() and citus_add_node().",
        );
    }
    // The key the coordinator signs its assertions to the workers with, on every node before
    // its first use (`src/binding/carrier.rs`).
    if let Some(ensure_key) = KEY_MAKER.with(|k| k.get()) {
        ensure_key();
    }
    let mut done = distribute_catalog();
    done.extend(distribute_trail());
    trail::regrant_trigger_functions();
    reseat_node_oids();
    done
}

/// Every node's copy of the catalog holds that node's own oid for a role or a table
/// (`role_mapping.role`, `support_grant.operator`, `role_privilege.relid`): a write names them
/// by name and each node reads the name. Citus copies a reference table to a node added later
/// in binary, the coordinator's oids with it: the new node's copy named whatever role has the
/// coordinator's oid there, and a role a CREATEROLE role made with it was bound to the tenant
/// without a token (an attacker's pass). Copies the catalog to every node now, then writes
/// those rows again by name, so that each node's copy holds its own oids; the nodes' triggers
/// keep their mapped roles' grants (`rbac::keep_mapping_dependencies`). Run by `citus_setup()`
/// (a superuser's, on the coordinator), which says to call it after adding a node.
fn reseat_node_oids() {
    let run = || -> Result<(), pgrx::spi::Error> {
        Spi::connect_mut(|c| {
            c.update(
                "SELECT pg_catalog.replicate_reference_tables('block_writes')",
                None,
                &[],
            )?;
            Ok::<(), pgrx::spi::Error>(())
        })?;
        // No mapping, grant or support grant changes until this commits: one committed while
        // the rows were read and written again was undone on every node (an unmapping read
        // before it, written back after), or kept on some nodes only (a later pass).
        crate::catalog::with_owner(|| {
            Spi::run(
                "LOCK TABLE tenancy.role_mapping, tenancy.role_privilege, tenancy.support_grant IN EXCLUSIVE MODE",
            )
        })?;
        // Each row's oids on the coordinator, read with the rows and compared after: a role
        // renamed meanwhile (a CREATEROLE role gave its own role a mapped role's name) would
        // have moved the mapping to another role by name.
        let oids = |sql: &str| -> Vec<String> {
            crate::catalog::owner_rows("pg_tenancy's catalog", sql, &[], |r| {
                Ok(r.get::<String>(1)?.unwrap_or_default())
            })
        };
        const MAPPING_OIDS: &str = "SELECT m.role::pg_catalog.oid::pg_catalog.text OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||) m.tenant_id::pg_catalog.text \
            FROM tenancy.role_mapping m ORDER BY 1";
        const GRANT_OIDS: &str = "SELECT g.tenant_id::pg_catalog.text OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||) g.role OPERATOR(pg_catalog.||) ' ' \
            OPERATOR(pg_catalog.||) g.relid::pg_catalog.oid::pg_catalog.text OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||) g.privilege \
            FROM tenancy.role_privilege g WHERE g.relid IS NOT NULL ORDER BY 1";
        const OPERATOR_OIDS: &str = "SELECT g.id::pg_catalog.text OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||) g.operator::pg_catalog.oid::pg_catalog.text \
            FROM tenancy.support_grant g ORDER BY 1";
        let before = (oids(MAPPING_OIDS), oids(GRANT_OIDS), oids(OPERATOR_OIDS));
        type Mapping = (
            String,
            pgrx::Uuid,
            Vec<String>,
            pgrx::datum::TimestampWithTimeZone,
        );
        let mappings: Vec<Mapping> = crate::catalog::owner_rows(
            "tenancy.role_mapping",
            "SELECT m.role::pg_catalog.text, m.tenant_id, m.tenant_roles, m.created_at FROM tenancy.role_mapping m ORDER BY 1, 2",
            &[],
            |r| {
                Ok((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<pgrx::Uuid>(2)?.expect("tenant_id is NOT NULL"),
                    r.get::<Vec<String>>(3)?.unwrap_or_default(),
                    r.get::<pgrx::datum::TimestampWithTimeZone>(4)?.expect("created_at is NOT NULL"),
                ))
            },
        );
        crate::catalog::write("DELETE FROM tenancy.role_mapping", &[]);
        insert_in_batches(
            "INSERT INTO tenancy.role_mapping (role, tenant_id, tenant_roles, created_at) VALUES ",
            &["::text::regrole", "", "", ""],
            mappings
                .into_iter()
                .map(|(role, tenant, roles, at)| {
                    vec![role.into(), tenant.into(), roles.into(), at.into()]
                })
                .collect(),
        );
        type Grant = (pgrx::Uuid, String, String, String);
        let grants: Vec<Grant> = crate::catalog::owner_rows(
            "tenancy.role_privilege",
            "SELECT g.tenant_id, g.role, g.relid::pg_catalog.text, g.privilege FROM tenancy.role_privilege g \
              WHERE g.relid IS NOT NULL ORDER BY 1, 2, 3, 4",
            &[],
            |r| {
                Ok((
                    r.get::<pgrx::Uuid>(1)?.expect("tenant_id is NOT NULL"),
                    r.get::<String>(2)?.unwrap_or_default(),
                    r.get::<String>(3)?.unwrap_or_default(),
                    r.get::<String>(4)?.unwrap_or_default(),
                ))
            },
        );
        crate::catalog::write(
            "DELETE FROM tenancy.role_privilege WHERE relid IS NOT NULL",
            &[],
        );
        insert_in_batches(
            "INSERT INTO tenancy.role_privilege (tenant_id, role, relid, privilege) VALUES ",
            &["", "", "::text::regclass", ""],
            grants
                .into_iter()
                .map(|(tenant, role, rel, privilege)| {
                    vec![tenant.into(), role.into(), rel.into(), privilege.into()]
                })
                .collect(),
        );
        let operators: Vec<(i64, String)> = crate::catalog::owner_rows(
            "tenancy.support_grant",
            "SELECT g.id, g.operator::pg_catalog.text FROM tenancy.support_grant g ORDER BY 1",
            &[],
            |r| {
                Ok((
                    r.get::<i64>(1)?.unwrap_or_default(),
                    r.get::<String>(2)?.unwrap_or_default(),
                ))
            },
        );
        for (id, operator) in operators {
            crate::catalog::write(
                "UPDATE tenancy.support_grant SET operator = $2::text::regrole WHERE id = $1",
                &[id.into(), operator.into()],
            );
        }
        if (oids(MAPPING_OIDS), oids(GRANT_OIDS), oids(OPERATOR_OIDS)) != before {
            errors::raise(
                pgrx::PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
                "a role or a table that pg_tenancy's catalog names was renamed while citus_setup() wrote it again by name",
                "Nothing was changed. Call tenancy.citus_setup() again; keep roles and tables that are mapped or granted from being renamed while it runs.",
            );
        }
        Ok(())
    };
    run().unwrap_or_else(|e| {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!("pg_tenancy's catalog could not be copied to every node by name: {e}"),
            "Check that every node is reachable (citus_check_cluster_node_health()) and call tenancy.citus_setup() again.",
        )
    });
}

/// The audit trail distributed by tenant ([`trail::distribute`]), once; returns its tables
/// when it did it now.
fn distribute_trail() -> Vec<String> {
    let _distributing = crate::pg::citus::Distributing::start();
    Spi::connect_mut(|c| {
        c.update(
            "SELECT pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true)",
            None,
            &[],
        )?;
        trail::distribute(c)
    })
    .map(|done| {
        if done {
            ["tenancy.audit_log", "tenancy.audit_chain", "tenancy.audit_checkpoint"]
                .map(String::from)
                .to_vec()
        } else {
            Vec::new()
        }
    })
    .unwrap_or_else(|e| {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!("pg_tenancy's audit trail could not be distributed: {e}"),
            "Check that every node is reachable (citus_check_cluster_node_health()) and call tenancy.citus_setup() again.",
        )
    })
}

/// The work of [`citus_setup`]: every catalog table not yet a Citus table becomes a reference
/// table. Citus refuses to distribute a table that a local table references (or that
/// references one) by a foreign key, so the foreign keys among the catalog's tables are
/// dropped first and added back once every table is a reference table (Citus then keeps them
/// on every node). The catalog's triggers go along to every node's copy
/// (`citus.enable_unsafe_triggers` for the length of this transaction): they invalidate each
/// node's caches.
fn distribute_catalog() -> Vec<String> {
    let _distributing = crate::pg::citus::Distributing::start();
    let tables: Vec<String> = REFERENCE_TABLES
        .iter()
        .map(|t| format!("tenancy.{t}"))
        .collect();
    Spi::connect_mut(|c| {
        let pending: Vec<String> = c
            .select(
                "SELECT t FROM pg_catalog.unnest($1::text[]) WITH ORDINALITY u(t, n) \
                  WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition p \
                                     WHERE p.logicalrelid = pg_catalog.to_regclass(u.t)) \
                  ORDER BY n",
                None,
                &[tables.clone().into()],
            )?
            .map(|r| r.get::<String>(1).map(Option::unwrap_or_default))
            .collect::<Result<_, _>>()?;
        if pending.is_empty() {
            return Ok::<_, pgrx::spi::Error>(pending);
        }
        c.update(
            "SELECT pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true)",
            None,
            &[],
        )?;
        // (table, constraint, definition) of the foreign keys among the catalog's tables, as
        // PostgreSQL prints them (regclass and pg_get_constraintdef quote what they name).
        let fks: Vec<(String, String, String)> = c
            .select(
                "SELECT k.conrelid::regclass::text, k.conname::text, pg_catalog.pg_get_constraintdef(k.oid) \
                   FROM pg_catalog.pg_constraint k \
                  WHERE k.contype = 'f' AND k.connamespace = 'tenancy'::regnamespace \
                  ORDER BY 1, 2",
                None,
                &[],
            )?
            .map(|r| {
                Ok((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<String>(2)?.unwrap_or_default(),
                    r.get::<String>(3)?.unwrap_or_default(),
                ))
            })
            .collect::<Result<_, pgrx::spi::Error>>()?;
        for (table, name, _) in &fks {
            c.update(
                &format!(
                    "ALTER TABLE {table} DROP CONSTRAINT {}",
                    crate::catalog::quote_ident(name)
                ),
                None,
                &[],
            )?;
        }
        for t in &pending {
            c.update(
                "SELECT pg_catalog.create_reference_table($1::regclass)",
                None,
                &[t.clone().into()],
            )?;
        }
        // Now Citus carries each command to every node: the workers' own tables of the same
        // name (made by CREATE EXTENSION there; Citus uses them as the tables' shells) still
        // have their foreign keys, dropped first, and every node's copy gets them.
        // (Quietly: "does not exist, skipping" from every copy is no news.)
        let quiet = c
            .select(
                "SELECT pg_catalog.current_setting('client_min_messages'), \
                        pg_catalog.set_config('client_min_messages', 'warning', true)",
                None,
                &[],
            )?
            .first()
            .get_one::<String>()?
            .unwrap_or_else(|| "notice".into());
        for (table, name, def) in &fks {
            let name = crate::catalog::quote_ident(name);
            c.update(
                &format!("ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}"),
                None,
                &[],
            )?;
            c.update(
                &format!("ALTER TABLE {table} ADD CONSTRAINT {name} {def}"),
                None,
                &[],
            )?;
        }
        c.update(
            "SELECT pg_catalog.set_config('client_min_messages', $1, true)",
            None,
            &[quiet.into()],
        )?;
        Ok(pending)
    })
    .unwrap_or_else(|e| {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!("pg_tenancy's catalog could not be made Citus reference tables: {e}"),
            "Check that every node is reachable (citus_check_cluster_node_health()) and call tenancy.citus_setup() again.",
        )
    })
}

/// One node's answer to [`on_all_nodes`]: (node, port, group, whether it ran, its result).
type NodeResult = (String, i32, i32, bool, String);

/// `statement` (a fixed one of pg_tenancy's) run on every node by Citus's
/// `run_command_on_all_nodes`: (node, port, group, whether it ran, its result), the coordinator
/// (group 0) first.
fn on_all_nodes(
    c: &pgrx::spi::SpiClient<'_>,
    statement: String,
) -> Result<Vec<NodeResult>, pgrx::spi::Error> {
    c.select(
        "SELECT n.nodename, n.nodeport, n.groupid, a.success, a.result \
           FROM pg_catalog.run_command_on_all_nodes($1) a \
           JOIN pg_catalog.pg_dist_node n ON n.nodeid OPERATOR(pg_catalog.=) a.nodeid \
          ORDER BY n.groupid, n.nodename, n.nodeport",
        None,
        &[statement.into()],
    )?
    .map(|r| {
        Ok((
            r.get::<String>(1)?.unwrap_or_default(),
            r.get::<i32>(2)?.unwrap_or_default(),
            r.get::<i32>(3)?.unwrap_or_default(),
            r.get::<bool>(4)?.unwrap_or(false),
            r.get::<String>(5)?.unwrap_or_default(),
        ))
    })
    .collect()
}

/// `citus_catalog_drift` (one per table and node): the nodes whose copy of one of pg_tenancy's
/// reference tables holds other rows than the coordinator's. Every node's copy is digested by
/// the same fixed statement through `run_command_on_all_nodes` (the coordinator's too, each
/// over a connection of Citus's with the node's defaults: a role or a table prints by name),
/// which pins the output settings first, as a count and two sums of the rows' hashes.
/// A copy differs when a write reached one node otherwise than the others (values printed
/// under a caller's `DateStyle` before 0.2.0's fix, a write by oid, a change made on one node
/// past Citus): a mapping or a revocation then holds on some nodes only.
fn catalog_copies_that_differ(
    c: &pgrx::spi::SpiClient<'_>,
) -> Result<Vec<(String, String, String, String)>, pgrx::spi::Error> {
    let tables: Vec<String> = c
        .select(
            "SELECT d.logicalrelid::pg_catalog.regclass::pg_catalog.text FROM pg_catalog.pg_dist_partition d \
               JOIN pg_catalog.pg_class k ON k.oid OPERATOR(pg_catalog.=) d.logicalrelid \
              WHERE k.relnamespace OPERATOR(pg_catalog.=) 'tenancy'::pg_catalog.regnamespace \
                AND d.partmethod OPERATOR(pg_catalog.=) 'n' ORDER BY 1",
            None,
            &[],
        )?
        .map(|r| Ok(r.get::<String>(1)?.unwrap_or_default()))
        .collect::<Result<_, pgrx::spi::Error>>()?;
    let mut out = Vec::new();
    for table in tables {
        // The table's name comes from the catalog of pg_tenancy's own schema (pinned
        // search_path: printed qualified) and is quoted as an identifier path by regclass's
        // output; the statement calls pg_catalog's functions by their schema.
        // The output settings are set first on each node (a CTE the hashed text depends on):
        // a node's own TimeZone or IntervalStyle printed its rows otherwise (false drift, a
        // later pass). Two sums of 60-bit hashes, so that no order and no memory for a large
        // table is needed.
        let digest = format!(
            "WITH s AS MATERIALIZED (SELECT pg_catalog.set_config('TimeZone', 'UTC', true) \
                      OPERATOR(pg_catalog.||) pg_catalog.set_config('DateStyle', 'ISO, MDY', true) \
                      OPERATOR(pg_catalog.||) pg_catalog.set_config('IntervalStyle', 'postgres', true) \
                      OPERATOR(pg_catalog.||) pg_catalog.set_config('extra_float_digits', '1', true) \
                      OPERATOR(pg_catalog.||) pg_catalog.set_config('bytea_output', 'hex', true) AS pinned), \
                  h AS (SELECT pg_catalog.md5(s.pinned OPERATOR(pg_catalog.||) pg_catalog.to_jsonb(r)::pg_catalog.text) AS m \
                          FROM s, {table} r) \
             SELECT pg_catalog.count(*)::pg_catalog.text OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) \
                    COALESCE(pg_catalog.sum(('x' OPERATOR(pg_catalog.||) pg_catalog.substr(h.m, 1, 15))::pg_catalog.bit(60)::pg_catalog.int8), 0)::pg_catalog.text \
                    OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) \
                    COALESCE(pg_catalog.sum(('x' OPERATOR(pg_catalog.||) pg_catalog.substr(h.m, 16, 15))::pg_catalog.bit(60)::pg_catalog.int8), 0)::pg_catalog.text \
               FROM h"
        );
        let results = on_all_nodes(c, digest)?;
        // Without the coordinator in Citus's node list, there is no copy to compare with.
        let Some(expected) = results
            .iter()
            .find(|r| r.2 == 0 && r.3)
            .map(|r| r.4.clone())
        else {
            continue;
        };
        for (node, port, _, ok, result) in results.iter().filter(|r| r.2 != 0) {
            if *ok && *result == expected {
                continue;
            }
            out.push((
                "citus_catalog_drift".to_string(),
                format!("{table} on {node}:{port}"),
                if *ok {
                    format!("worker {node}:{port}'s copy of {table} holds other rows than the coordinator's (rows:digest {result} there, {expected} on the coordinator): a mapping, a grant or a revocation in it holds on some nodes only")
                } else {
                    format!("worker {node}:{port}'s copy of {table} could not be read: {result}")
                },
                if ["tenancy.role_mapping", "tenancy.role_privilege", "tenancy.support_grant"].contains(&table.as_str()) {
                    // A node added later holds the coordinator's oids there (Citus's copy).
                    format!(
                        "SELECT tenancy.citus_setup(); -- as a superuser: copies the catalog to every node and writes the rows naming roles and tables again by name; verify() again, and if {} still differs, compare SELECT * FROM {table} there with the coordinator's",
                        format!("{node}:{port}").replace(['\n', '\r'], " ")
                    )
                } else {
                    format!(
                        "-- compare SELECT * FROM {table} on the coordinator and on {}, then make the worker's copy right as a superuser there (its shard of {table}, with SET citus.enable_manual_changes_to_shards = on), or remove the differing rows through pg_tenancy's functions on the coordinator and make them again",
                        format!("{node}:{port}").replace(['\n', '\r'], " ")
                    )
                },
            ));
        }
    }
    Ok(out)
}

/// The hazards of `verify()`'s one-node rules that a worker may hold on its own, read on every
/// worker by one fixed statement through `run_command_on_all_nodes` (as
/// [`catalog_copies_that_differ`]): `mapping_without_dependency`, the roles of the worker's
/// copy of the mappings that do not hold `USAGE` on `tenancy.mapped_role` there (each node
/// keeps its own grants: `rbac::keep_mapping_dependencies`), and `catalog_behind_a_schema`,
/// a `search_path` of the database, of a superuser or of every role, set on the worker, that
/// puts a schema before pg_catalog (Citus's maintenance daemon there runs with it). An
/// attacker's pass found both on a worker while the coordinator's rules saw nothing.
fn worker_hazards(
    c: &pgrx::spi::SpiClient<'_>,
) -> Result<Vec<(String, String, String, String)>, pgrx::spi::Error> {
    const STATEMENT: &str = "SELECT pg_catalog.json_build_object(\
        'roles', ARRAY(SELECT m.role::pg_catalog.text FROM tenancy.role_mapping m \
                        WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_type t, pg_catalog.aclexplode(t.typacl) a \
                                           WHERE t.oid OPERATOR(pg_catalog.=) 'tenancy.mapped_role'::pg_catalog.regtype \
                                             AND a.grantee OPERATOR(pg_catalog.=) m.role::pg_catalog.oid) \
                        ORDER BY 1), \
        'paths', ARRAY(SELECT CASE WHEN d.setrole OPERATOR(pg_catalog.=) 0 THEN '' ELSE d.setrole::pg_catalog.regrole::pg_catalog.text END \
                              OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||) cfg \
                         FROM pg_catalog.pg_db_role_setting d, pg_catalog.unnest(d.setconfig) cfg \
                        WHERE d.setdatabase OPERATOR(pg_catalog.=) ANY (ARRAY[0, (SELECT b.oid FROM pg_catalog.pg_database b \
                                  WHERE b.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())]::pg_catalog.oid[]) \
                          AND (d.setrole OPERATOR(pg_catalog.=) 0 OR d.setrole OPERATOR(pg_catalog.=) ANY (ARRAY( \
                                  SELECT r.oid FROM pg_catalog.pg_authid r WHERE r.rolsuper))) \
                          AND pg_catalog.starts_with(cfg, 'search_path=') \
                          AND pg_catalog.array_position(ARRAY(SELECT pg_catalog.btrim(x, ' \"') \
                                  FROM pg_catalog.unnest(pg_catalog.string_to_array(pg_catalog.substr(cfg, 13), ',')) x), \
                                'pg_catalog') OPERATOR(pg_catalog.>) 1 \
                        ORDER BY 1))::pg_catalog.text";
    let results = on_all_nodes(c, STATEMENT.to_string())?;
    let mut out = Vec::new();
    for (node, port, _, ok, result) in results.into_iter().filter(|r| r.2 != 0) {
        let at = format!("{node}:{port}").replace(['\n', '\r'], " ");
        let found: serde_json::Value = if ok {
            serde_json::from_str(&result).unwrap_or_default()
        } else {
            serde_json::Value::Null
        };
        let list = |k: &str| -> Vec<String> {
            found[k]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        for role in list("roles") {
            out.push((
                "mapping_without_dependency".to_string(),
                format!("role {role} on {at}"),
                format!("on worker {at}, mapped role {role} does not hold USAGE on tenancy.mapped_role: PostgreSQL would let it be dropped there from another database, leaving that worker's copy of its mappings to a role created later with its oid"),
                format!("SELECT pg_catalog.run_command_on_workers('SELECT tenancy._keep_mapped_roles()'); -- {at}"),
            ));
        }
        for path in list("paths") {
            out.push((
                "catalog_behind_a_schema".to_string(),
                format!("{} on {at}", path.split(" search_path=").next().filter(|r| !r.is_empty()).unwrap_or("the database")),
                format!("on worker {at}, {} puts a schema before pg_catalog: Citus's maintenance daemon there, and a superuser's session, resolve names of pg_catalog's relations, types and functions to that schema's first", path.trim()),
                format!("-- on {at}, as a superuser: ALTER DATABASE (or ALTER ROLE ... IN DATABASE) ... RESET search_path"),
            ));
        }
        if !ok {
            out.push((
                "citus_node_drift".to_string(),
                at.clone(),
                format!(
                    "worker {at}'s mapped roles and database settings could not be read: {}",
                    result.replace(['\n', '\r'], " ")
                ),
                format!("-- check that {at} is reachable (citus_check_cluster_node_health())"),
            ));
        }
    }
    Ok(out)
}

/// Insert `rows` with `head` (`INSERT INTO table (columns) VALUES `), a few hundred rows a
/// statement, each value a parameter followed by its cast in `casts`: one distributed write,
/// and one firing of each node's statement trigger, per batch rather than per row (writing the
/// rows one by one, each firing every node's mapped-role check, took 55 s for 300 mappings: an
/// attacker's pass). Citus prints each value for every node, a role or a table by its name.
fn insert_in_batches(
    head: &str,
    casts: &[&str],
    rows: Vec<Vec<pgrx::datum::DatumWithOid<'static>>>,
) {
    const ROWS_A_STATEMENT: usize = 500;
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let batch: Vec<_> = rows.by_ref().take(ROWS_A_STATEMENT).collect();
        let mut sql = String::from(head);
        let mut args = Vec::with_capacity(batch.len() * casts.len());
        for (r, row) in batch.into_iter().enumerate() {
            debug_assert_eq!(row.len(), casts.len());
            sql.push_str(if r == 0 { "(" } else { ", (" });
            for (c, (value, cast)) in row.into_iter().zip(casts).enumerate() {
                args.push(value);
                if c > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("${}{cast}", args.len()));
            }
            sql.push(')');
        }
        crate::catalog::write(&sql, &args);
    }
}

/// Internal, for `tenancy.verify()`, its findings on Citus (nothing where Citus is not
/// created), each (rule, object, detail, fix):
/// - `citus_shard_drift` (one per shard): the shards of protected Citus tables whose row
///   security, policies, triggers (other than pg_tenancy's) or unique keys differ from their table's on the
///   coordinator (a change the guard on the workers refuses, made past it: event triggers
///   disabled by a superuser, or a node restored from an older backup), or that could not be
///   read;
/// - `citus_node_drift` (one per worker): a worker on which a function of the database's
///   schemas or of pg_tenancy is defined otherwise than on the coordinator (body, language,
///   security, volatility, settings or owner), or exists there alone, or on which one of
///   pg_tenancy's functions or a protected Citus table's trigger function is missing, or which
///   could not be read ([`guard::workers_with_other_functions`]): changed on one node past
///   Citus, by a superuser past the guard or, with `citus.enable_ddl_propagation` off, by a
///   function's owner (a function a PL/pgSQL trigger function calls is not known to the guard);
/// - `citus_node_without_metadata` (one per worker): an active worker without Citus's
///   metadata, or with metadata Citus marks out of date, while Citus tables are protected: the
///   guard there cannot tell a shard (`stop_metadata_sync_to_node`, refused now, or a node added
///   with `citus.enable_metadata_sync` off);
/// - `citus_grant_reaches_shards`: TRUNCATE or TRIGGER granted on a protected Citus table to a
///   role other than its owner. Citus carries both to the shards, where pg_tenancy's TRUNCATE
///   trigger does not run: the grantee can empty every tenant's rows
///   (`run_command_on_shards`); a trigger it plants on a shard is refused by the guard there
///   (`guard.rs`), and the grant serves no tenant's session.
///
/// Reads each shard through Citus's `run_command_on_shards`, as the catalog owner (Citus reads
/// node metadata an operator may not), with a fixed statement into which Citus formats each
/// shard's name, and reads nothing but `pg_class` and `pg_policy` there. Policy expressions are compared with the tables'
/// names in them left out (a shard's policies name its table as the coordinator's do, printed
/// under the caller's `search_path` there).
#[pg_extern(volatile, parallel_unsafe, name = "_citus_findings")]
fn citus_findings() -> TableIterator<
    'static,
    (
        name!(rule, String),
        name!(object, String),
        name!(detail, String),
        name!(fix, String),
    ),
> {
    crate::authz::require_operator("verify");
    if !crate::pg::citus::in_database() {
        return TableIterator::new(Vec::new());
    }
    const SIGNATURE: &str = guard::SIGNATURE;
    // As the catalog owner: Citus's run_command_on_shards reads its node and placement
    // metadata, which an operator may not; the statements are this function's own.
    let rows = crate::catalog::with_owner(|| Spi::connect(|c| {
        let tables: Vec<(String, bool, pg_sys::Oid)> = c
            .select(
                "SELECT p.relid::text, p.audited, p.relid::oid FROM tenancy.protected_table p \
                   JOIN pg_catalog.pg_dist_partition d ON d.logicalrelid = p.relid ORDER BY 1",
                None,
                &[],
            )?
            .map(|r| {
                Ok((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<bool>(2)?.unwrap_or(false),
                    r.get::<pg_sys::Oid>(3)?.unwrap_or(pg_sys::InvalidOid),
                ))
            })
            .collect::<Result<_, pgrx::spi::Error>>()?;
        let mut out = Vec::new();
        let any_protected = !tables.is_empty();
        for (table, audited, rel) in tables {
            // Policies, rules and triggers a placement has and its table does not (a rule or a
            // policy's roles are outside the signature below); protect() refuses such a table
            // until they are removed on the node.
            let mut foreign_found = Vec::new();
            for (shard, node, port, ok, foreign, _) in guard::placements_with_foreign_objects(c, rel, &table)? {
                if ok {
                    // One finding per shard: this one says more than the signature's below.
                    foreign_found.push(shard);
                    out.push((
                        "citus_shard_drift".to_string(),
                        table.clone(),
                        format!("shard {shard} on {node}:{port} has what the table does not: {}", foreign.join("; ")),
                        format!(
                            "-- on {node}:{port}, as the table's owner or a superuser, with SET citus.enable_manual_changes_to_shards = on: drop those from the shard (protect() refuses the table until then): {}",
                            foreign.join("; ").replace(['\n', '\r'], " ")
                        ),
                    ));
                }
            }
            // Workers whose metadata does not hold the table's shards (of a table Citus syncs
            // to them: hash-distributed, or without a distribution column).
            let syncs: bool = c
                .select(
                    "SELECT d.partmethod IN ('h', 'n') FROM pg_catalog.pg_dist_partition d WHERE d.logicalrelid = $1",
                    Some(1),
                    &[rel.into()],
                )?
                .first()
                .get_one::<bool>()?
                .unwrap_or(false);
            let unknown = if syncs { guard::workers_without_table(c, rel)? } else { Vec::new() };
            for (node, port, ok, result) in unknown {
                out.push((
                    "citus_node_without_metadata".to_string(),
                    format!("{node}:{port}"),
                    if ok {
                        format!("worker {node}:{port} does not know protected table {table} in Citus's metadata as the coordinator does (its shards there: {}): pg_tenancy's guard there knows its shards only by name, and cannot tell a table of the owner's own under the table's name from its copy", if result.is_empty() { "none" } else { "others" })
                    } else {
                        format!("worker {node}:{port} could not be asked whether it knows protected table {table}: {result}")
                    },
                    format!(
                        "SELECT pg_catalog.start_metadata_sync_to_node({}, {port}); -- a table there under the table's name that Citus did not make is dropped first; then protect the Citus tables again: syncing drops the policies of their shards on that node",
                        crate::catalog::quote_literal(&node)
                    ),
                ));
            }
            // The table's own signature, read here.
            let expected: String = guard::signature(c, &table)?;
            let shards = c.select(
                "SELECT s.shardid, s.success, s.result \
                   FROM pg_catalog.run_command_on_shards($1::pg_catalog.regclass, $2) s ORDER BY 1",
                None,
                &[table.clone().into(), SIGNATURE.into()],
            )?;
            for r in shards {
                let shard = r.get::<i64>(1)?.unwrap_or_default();
                let ok = r.get::<bool>(2)?.unwrap_or(false);
                let result = r.get::<String>(3)?.unwrap_or_default();
                if foreign_found.contains(&shard) {
                    continue;
                }
                let fix = format!(
                    "SELECT tenancy.protect({}, audit => {audited});",
                    crate::catalog::quote_literal(&table)
                );
                if !ok {
                    out.push((
                        "citus_shard_drift".to_string(),
                        table.clone(),
                        format!("shard {shard} could not be read: {result}"),
                        fix,
                    ));
                } else if result != expected {
                    // The signature's last part is the unique and exclusion keys, after
                    // ` keys:` (which a column's name in them could also hold: then the finding
                    // is the general one): a shard that differs there alone has a unique index
                    // or constraint the table does not have, which protect() does not drop.
                    let keys = |sig: &str| sig.rsplit_once(" keys:").map(|(a, b)| (a.to_string(), b.to_string()));
                    let keys_only = match (keys(&result), keys(&expected)) {
                        (Some((r, rk)), Some((e, ek))) => r == e && rk != ek,
                        _ => false,
                    };
                    if keys_only {
                        out.push((
                            "citus_shard_drift".to_string(),
                            table.clone(),
                            format!(
                                "shard {shard}: its unique or exclusion keys differ from the table's on the coordinator (shard: {result}; table: {expected}): a unique index without the tenant column tells the tenants on that shard whether another holds a value"
                            ),
                            format!(
                                "-- on the node of shard {shard}, as its owner or a superuser (SET citus.enable_manual_changes_to_shards = on): drop the index or constraint the table does not have, listed by SELECT indexrelid::regclass FROM pg_index WHERE indrelid = pg_catalog.shard_name({}, {shard})::regclass AND (indisunique OR indisexclusion);",
                                crate::catalog::quote_literal(&table)
                            ),
                        ));
                    } else {
                        out.push((
                            "citus_shard_drift".to_string(),
                            table.clone(),
                            format!(
                                "shard {shard}: row security, policies, triggers or unique keys differ from the table's on the coordinator (shard: {result}; table: {expected}); a trigger planted on a shard is dropped there by its owner or a superuser"
                            ),
                            fix,
                        ));
                    }
                }
            }
        }
        // The functions of every worker against the coordinator's.
        for (node, port, ok, functions, result) in guard::workers_with_other_functions(c)? {
            if !ok {
                out.push((
                    "citus_node_drift".to_string(),
                    format!("{node}:{port}"),
                    format!("worker {node}:{port} could not be read: {result}"),
                    "-- check that every node is reachable: SELECT * FROM pg_catalog.citus_check_cluster_node_health();".to_string(),
                ));
                continue;
            }
            let listed = functions
                .iter()
                .map(|f| crate::catalog::quote_literal(f))
                .collect::<Vec<_>>()
                .join(", ");
            out.push((
                "citus_node_drift".to_string(),
                format!("{node}:{port}"),
                format!(
                    "on worker {node}:{port} these functions differ from the coordinator's (definition or owner), or exist on one of the two only: {}; the shards' triggers, defaults, constraints and indexes, and pg_tenancy's policies and binding, run the node's own",
                    functions.join(", ")
                ),
                // A statement, not a comment: a name is a quoted literal, which may hold a line
                // break (a function's name is its owner's choice); in a comment it ended the
                // comment and the rest of the name ran as SQL in an operator's \gexec of the
                // fixes (a reviewer's pass). Nothing but the node's address is in the comment. Its
                // operators are named in pg_catalog: an operator's session may search a schema
                // the function's owner writes to before it (a fourth pass).
                format!(
                    "SELECT f AS function, (SELECT CASE WHEN p.prokind OPERATOR(pg_catalog.=) 'a' THEN (SELECT a::text FROM pg_catalog.pg_aggregate a WHERE a.aggfnoid OPERATOR(pg_catalog.=) p.oid) ELSE pg_catalog.pg_get_functiondef(p.oid) END FROM pg_catalog.pg_proc p WHERE p.oid OPERATOR(pg_catalog.=) pg_catalog.to_regprocedure(f)) AS definition FROM pg_catalog.unnest(ARRAY[{listed}]::pg_catalog.text[]) AS f; -- run it on the coordinator and on {}, compare, and as a superuser make the node that is wrong right (on a worker with SET citus.enable_ddl_propagation = off; on the coordinator with it on, which carries the change to every worker)",
                    format!("{node}:{port}").replace(['\n', '\r'], " ")
                ),
            ));
        }
        // Workers without Citus's metadata, or with metadata Citus marks out of date: the guard
        // there knows a shard through it, and stop_metadata_sync_to_node dropped the shards'
        // policies there with the shell tables (found trying it; refused now, calls.rs).
        if any_protected {
            let nodes = c.select(
                "SELECT n.nodename, n.nodeport, n.hasmetadata FROM pg_catalog.pg_dist_node n \
                  WHERE n.groupid OPERATOR(pg_catalog.<>) 0 AND n.isactive \
                    AND n.noderole OPERATOR(pg_catalog.=) 'primary' \
                    AND NOT (n.hasmetadata AND n.metadatasynced) ORDER BY 1, 2",
                None,
                &[],
            )?;
            for r in nodes {
                let node = r.get::<String>(1)?.unwrap_or_default();
                let port = r.get::<i32>(2)?.unwrap_or_default();
                let has = r.get::<bool>(3)?.unwrap_or(false);
                out.push((
                    "citus_node_without_metadata".to_string(),
                    format!("{node}:{port}"),
                    format!(
                        "worker {node}:{port} {} Citus's metadata: pg_tenancy's guard there knows a protected table's shards through it, and without it cannot tell them from other tables, so the table's owner can change their row security on that node",
                        if has { "does not yet have the current" } else { "has none of" }
                    ),
                    format!(
                        "SELECT pg_catalog.start_metadata_sync_to_node({}, {port}); -- then verify() again: a shard whose policies went with the node's metadata is citus_shard_drift, fixed by protect()",
                        crate::catalog::quote_literal(&node)
                    ),
                ));
            }
        }
        let grants = c.select(
            "SELECT p.relid::text, a.privilege_type, \
                    CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(a.grantee::regrole::text) END \
               FROM tenancy.protected_table p \
               JOIN pg_catalog.pg_dist_partition d ON d.logicalrelid = p.relid \
               JOIN pg_catalog.pg_class c ON c.oid = p.relid \
               CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) a \
              WHERE a.privilege_type IN ('TRUNCATE', 'TRIGGER') AND a.grantee <> c.relowner \
              ORDER BY 1, 2, 3",
            None,
            &[],
        )?;
        for r in grants {
            let table = r.get::<String>(1)?.unwrap_or_default();
            let privilege = r.get::<String>(2)?.unwrap_or_default();
            let grantee = r.get::<String>(3)?.unwrap_or_default();
            out.push((
                "citus_grant_reaches_shards".to_string(),
                format!("{table} to {grantee}"),
                format!(
                    "{privilege} on a distributed table reaches its shards on the workers: {}",
                    if privilege == "TRUNCATE" {
                        "pg_tenancy's TRUNCATE trigger does not run there, so the grantee can empty every tenant's rows (run_command_on_shards)"
                    } else {
                        "the grantee may try to plant a trigger on a shard that copies each tenant's rows out (the guard on the workers refuses it; the grant serves no tenant's session)"
                    }
                ),
                format!("REVOKE {privilege} ON {table} FROM {grantee};"),
            ));
        }
        out.extend(catalog_copies_that_differ(c)?);
        out.extend(worker_hazards(c)?);
        Ok::<_, pgrx::spi::Error>(out)
    }))
    .unwrap_or_else(|e| {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!("the shards of protected tables could not be read: {e}"),
            "Check that every node is reachable (citus_check_cluster_node_health()).",
        )
    });
    TableIterator::new(rows)
}
