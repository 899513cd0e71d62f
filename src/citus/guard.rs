//! The guard on every node of a Citus cluster: the row security of a protected Citus table's
//! shards, and of its shell tables on the workers, cannot be changed there.
//!
//! On the coordinator the guard keeps a protected table as on one node (`tenancy.protected_table`
//! and its digest, `src/protection/guard.rs`). The workers hold the table's shards and a shell
//! of the table (Citus's metadata), which Citus does not stop a superuser or the table's owner
//! from changing there: a policy dropped on a shard, or row security disabled, serves every
//! tenant's rows from that shard. So `protect()` records, in the reference table
//! `tenancy.citus_protection` (one copy on every node), the table's name and the signature of
//! its row security ([`SIGNATURE`]: flags, policies, triggers other than pg_tenancy's), and the
//! event triggers' check on any node ([`refuse_drift`]) refuses a DDL command after which a shard
//! or shell of a recorded table no longer has that signature. A shard is mapped to its table by
//! Citus's metadata (`pg_dist_shard`, and `shard_name` to confirm the name).
//!
//! On the coordinator the table itself is kept by the guard of one node, which lets a superuser
//! (a trusted migration role) add a trigger, for example: its record then follows the table,
//! and Citus carries the change to the shards over its own connections. On Citus the table's
//! owner cannot add one: the workers refuse it on the shards.
//!
//! Citus's own connections stand aside (`src/pg/citus.rs`, a superuser's connection marked
//! `citus_…` by Citus): they carry `protect()`'s statements to the shards, create shards and
//! move them, one statement at a time. A superuser can mark a connection so, as it can disable
//! an event trigger; the guard is against the table's owner and against a superuser's mistake,
//! not against a superuser.

use crate::catalog;
use crate::errors;
use pgrx::prelude::*;

/// A trigger's definition as `pg_get_triggerdef` prints it, with its own name written `$n` and
/// its table's written `$t` (`t` is its `pg_trigger` row): a shard's trigger and its table's
/// then print the same (Citus creates a shard's from the table's definition, under the shard's
/// names), and one replaced under the same name with other events, columns, a WHEN condition
/// or arguments does not. Names print as under the statement's `search_path`, the same on
/// both sides where it is used.
macro_rules! trigger_body {
    () => {
        "pg_catalog.replace(pg_catalog.overlay(pg_catalog.pg_get_triggerdef(t.oid), '$n', \
            pg_catalog.strpos(pg_catalog.pg_get_triggerdef(t.oid), ' ' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(t.tgname::text) OPERATOR(pg_catalog.||) ' ') + 1, \
            pg_catalog.length(pg_catalog.quote_ident(t.tgname::text))), \
          ' ON ' OPERATOR(pg_catalog.||) t.tgrelid::pg_catalog.regclass::text OPERATOR(pg_catalog.||) ' ', ' ON $t ')"
    };
}

/// A trigger's name as the signatures compare it (`t` is its `pg_trigger` row; `$shard`, SQL
/// for the shard id of its relation, text, or NULL where the relation is not a shard). Citus
/// names a shard's trigger `<name>_<shard id>`, and where that is longer than PostgreSQL's 63
/// bytes, `<its first bytes>_<8 hex digits: hash_any of the name>_<shard id>` (a long name read
/// as drift: protect() refused the table, and the guard every DDL on its shards). So a name
/// of 40 bytes or more is compared as its first 7 characters and that hash (`hashtext`, the
/// same function over the same bytes), whether the shard's name carries it or the name is
/// whole. Citus's shortened names are 63 bytes long, or up to 3 fewer where it cut a multibyte
/// character, so a whole name that ends like one (`..._20250101_<id>`) is not read as one. A
/// shard's trigger without its shard's suffix is not its table's (renamed there, it
/// would fire in another order; a reviewer's pass). `OFFSET 0` keeps the shard id a value
/// computed once: a subquery pulled up puts the expression, a lookup in Citus's metadata, in
/// place of each use (the Citus suite ran twice as long).
macro_rules! trigger_key {
    ($shard:expr) => {
        concat!(
            "(SELECT CASE \
               WHEN k.s IS NOT NULL AND t.tgname::text OPERATOR(pg_catalog.~) ('^.+_[0-9a-f]{8}_' OPERATOR(pg_catalog.||) k.s OPERATOR(pg_catalog.||) '$') \
                    AND (pg_catalog.octet_length(t.tgname::text) OPERATOR(pg_catalog.=) 63 \
                         OR (pg_catalog.octet_length(t.tgname::text) OPERATOR(pg_catalog.>=) 60 \
                             AND pg_catalog.octet_length(t.tgname::text) OPERATOR(pg_catalog.<>) pg_catalog.length(t.tgname::text))) \
                 THEN pg_catalog.left(t.tgname::text, 7) OPERATOR(pg_catalog.||) '..#' \
                      OPERATOR(pg_catalog.||) pg_catalog.substring(t.tgname::text, '_([0-9a-f]{8})_' OPERATOR(pg_catalog.||) k.s OPERATOR(pg_catalog.||) '$') \
               WHEN k.s IS NOT NULL AND pg_catalog.right(t.tgname::text, pg_catalog.length('_' OPERATOR(pg_catalog.||) k.s)) OPERATOR(pg_catalog.<>) ('_' OPERATOR(pg_catalog.||) k.s) \
                 THEN t.tgname::text OPERATOR(pg_catalog.||) ' (without its shard''s suffix)' \
               WHEN pg_catalog.octet_length(k.r) OPERATOR(pg_catalog.>=) 40 \
                 THEN pg_catalog.left(k.r, 7) OPERATOR(pg_catalog.||) '..#' OPERATOR(pg_catalog.||) pg_catalog.lpad(pg_catalog.to_hex(pg_catalog.hashtext(k.r)), 8, '0') \
               ELSE k.r END \
             FROM (SELECT z.s, CASE WHEN z.s IS NULL THEN t.tgname::text \
                                    ELSE pg_catalog.left(t.tgname::text, -pg_catalog.length('_' OPERATOR(pg_catalog.||) z.s)) END AS r \
                     FROM (SELECT ",
            $shard,
            " AS s OFFSET 0) z OFFSET 0) k)"
        )
    };
}

/// The shard id of relation `rc` (its `pg_class` row), text, where it is that shard by Citus's
/// metadata (its name ends in the id, and Citus names that shard so); else NULL: a table
/// `events_202406` is not shard 202406 of another table (a reviewer's pass). Up to 18 digits, so the cast cannot fail, and the
/// lookup uses `pg_dist_shard`'s index.
macro_rules! shard_id_of_rc {
    () => {
        "(SELECT ds.shardid::text FROM pg_catalog.pg_dist_shard ds \
           WHERE ds.shardid OPERATOR(pg_catalog.=) pg_catalog.substring(rc.relname::text, '_([0-9]{1,18})$')::bigint \
             AND pg_catalog.to_regclass(pg_catalog.shard_name(ds.logicalrelid, ds.shardid, false)) OPERATOR(pg_catalog.=) rc.oid)"
    };
}

/// `set_config` calls, concatenated, that print values the same on every node and in every
/// session for the rest of the transaction (or GUC nest level): a trigger's WHEN condition or a
/// partial index's predicate prints its constants through their types' output functions, which
/// follow `DateStyle`, `TimeZone`, `IntervalStyle`, `extra_float_digits` and `bytea_output`. A
/// client's `TimeZone` made the coordinator print a timestamp another way than the workers'
/// connections (false drift, which refused `protect()`), and a table's owner on a worker could
/// set `extra_float_digits` so that a changed constant printed as the recorded one (a
/// reviewer's pass). A string constant with a backslash prints doubled, as `E'...'`, under
/// `standard_conforming_strings = off`, which any role may set (false drift for an operator
/// whose session has it off; and an owner on a worker could write a constant that prints as
/// the recorded one: a second reviewer's pass); `money` constants print through
/// `lc_monetary`.
macro_rules! pin_output {
    () => {
        "pg_catalog.set_config('DateStyle', 'ISO, MDY', true) \
         OPERATOR(pg_catalog.||) pg_catalog.set_config('TimeZone', 'UTC', true) \
         OPERATOR(pg_catalog.||) pg_catalog.set_config('IntervalStyle', 'postgres', true) \
         OPERATOR(pg_catalog.||) pg_catalog.set_config('extra_float_digits', '1', true) \
         OPERATOR(pg_catalog.||) pg_catalog.set_config('bytea_output', 'hex', true) \
         OPERATOR(pg_catalog.||) pg_catalog.set_config('quote_all_identifiers', 'off', true) \
         OPERATOR(pg_catalog.||) pg_catalog.set_config('standard_conforming_strings', 'on', true) \
         OPERATOR(pg_catalog.||) pg_catalog.set_config('lc_monetary', 'C', true)"
    };
}

/// The relation's unique and exclusion indexes (primary keys and unique constraints among
/// them) as a JSON array, one entry each: its kind, its columns in order (`*` for an
/// expression) and, for an exclusion constraint, its operators by schema and name. A unique
/// index without the tenant column, added to one shard by an owner on a worker, tells the
/// tenants on that shard whether another holds a value (an attacker's pass; `verify()` reports
/// it of a table as `unique_index_without_tenant`), and so does an exclusion constraint that
/// compares the tenant column with `<>`. JSON, so that no column's name can make two sets of
/// keys print alike (names joined by `+` and `,` could: a reviewer's pass). Index names are
/// left out: a shard's carry its id. `%1$L` is the relation's name as a quoted literal.
macro_rules! unique_keys {
    () => {
        "coalesce((SELECT pg_catalog.jsonb_agg(g ORDER BY g::text)::text FROM ( \
            SELECT pg_catalog.jsonb_build_array( \
                     CASE WHEN x.indisexclusion THEN 'x' ELSE 'u' END, \
                     (SELECT pg_catalog.jsonb_agg(coalesce(a.attname::text, '*') ORDER BY k.n) \
                        FROM pg_catalog.unnest(x.indkey::pg_catalog.int2[]) WITH ORDINALITY k(attnum, n) \
                        LEFT JOIN pg_catalog.pg_attribute a \
                          ON a.attrelid OPERATOR(pg_catalog.=) x.indrelid \
                         AND a.attnum OPERATOR(pg_catalog.=) k.attnum), \
                     (SELECT pg_catalog.jsonb_agg(pg_catalog.quote_ident(ns.nspname::text) OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) o.oprname::text ORDER BY e.n) \
                        FROM pg_catalog.pg_constraint con \
                        CROSS JOIN LATERAL pg_catalog.unnest(con.conexclop) WITH ORDINALITY e(op, n) \
                        JOIN pg_catalog.pg_operator o ON o.oid OPERATOR(pg_catalog.=) e.op \
                        JOIN pg_catalog.pg_namespace ns ON ns.oid OPERATOR(pg_catalog.=) o.oprnamespace \
                       WHERE con.conindid OPERATOR(pg_catalog.=) x.indexrelid)) AS g \
              FROM pg_catalog.pg_index x \
             WHERE x.indrelid OPERATOR(pg_catalog.=) %1$L::pg_catalog.regclass \
               AND (x.indisunique OR x.indisexclusion)) q), '[]')"
    };
}

/// A rule's definition as `pg_get_ruledef` prints it, with its table's name written `$t` (`r`
/// is its `pg_rewrite` row), as [`trigger_body`].
macro_rules! rule_body {
    () => {
        "pg_catalog.replace(pg_catalog.pg_get_ruledef(r.oid), ' TO ' OPERATOR(pg_catalog.||) r.ev_class::pg_catalog.regclass::text OPERATOR(pg_catalog.||) ' ', ' TO $t ')"
    };
}

/// The signature of a relation's row security: its two flags, then each policy (name,
/// command, permissive, USING, WITH CHECK) in name order, with `'...'::regclass` constants
/// written as `'?'::regclass`, then its triggers in order (name as [`trigger_key`] compares
/// it: a shard's without the trailing `_<shard id>` of its own shard, so that a trigger
/// `trg_2024`, or `trg_t_2024` of a table `t_2024`, stays itself; and function), pg_tenancy's audit triggers included, but not its TRUNCATE
/// trigger, which Citus does not put on shards. A format() string: `%1$L` is the relation's name
/// as a quoted literal, formatted by Citus's `run_command_on_shards` with each shard's name (and
/// by PostgreSQL's format() here): a name with a quote in it (a table's owner chooses it) stays
/// inside the literal. Then its unique and exclusion keys ([`unique_keys`]): the guard's record
/// does not hold them (a `CREATE INDEX` is not among the commands the guard checks), so a
/// unique index an owner adds to one shard on a worker is reported by `verify()` as the
/// shard's drift, not refused. Reads only `pg_class`, `pg_policy`, `pg_trigger`, `pg_index`
/// and `pg_attribute`.
pub const SIGNATURE: &str = concat!(
    "SELECT (SELECT c.relrowsecurity::text OPERATOR(pg_catalog.||) '/' OPERATOR(pg_catalog.||) c.relforcerowsecurity::text \
      FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) %1$L::pg_catalog.regclass) OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||) \
     coalesce((SELECT pg_catalog.string_agg(pg_catalog.regexp_replace(p.polname::text OPERATOR(pg_catalog.||) '|' OPERATOR(pg_catalog.||) p.polcmd::text OPERATOR(pg_catalog.||) '|' OPERATOR(pg_catalog.||) p.polpermissive::text \
          OPERATOR(pg_catalog.||) '|' OPERATOR(pg_catalog.||) coalesce(pg_catalog.pg_get_expr(p.polqual, p.polrelid), '') \
          OPERATOR(pg_catalog.||) '|' OPERATOR(pg_catalog.||) coalesce(pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid), ''), \
          '''([^'']|'''')*''::regclass', '''?''::regclass', 'g'), ';' ORDER BY p.polname) \
      FROM pg_catalog.pg_policy p WHERE p.polrelid OPERATOR(pg_catalog.=) %1$L::pg_catalog.regclass), '') OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||) \
     coalesce((SELECT pg_catalog.string_agg(g, ',' ORDER BY g) FROM ( \
        SELECT ", trigger_key!(shard_id_of_rc!()), " OPERATOR(pg_catalog.||) ':' \
          OPERATOR(pg_catalog.||) pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(f.proname) AS g \
      FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc f ON f.oid OPERATOR(pg_catalog.=) t.tgfoid JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) f.pronamespace \
      JOIN pg_catalog.pg_class rc ON rc.oid OPERATOR(pg_catalog.=) t.tgrelid \
      WHERE t.tgrelid OPERATOR(pg_catalog.=) %1$L::pg_catalog.regclass AND NOT t.tgisinternal \
       AND NOT (n.nspname OPERATOR(pg_catalog.=) 'tenancy' AND f.proname OPERATOR(pg_catalog.=) '_refuse_truncate')) q), '') OPERATOR(pg_catalog.||) ' keys:' OPERATOR(pg_catalog.||) ",
    unique_keys!()
);

/// Let this node's `pg_class` show Citus's shards to the statements that follow, inside
/// [`catalog::with_owner`] (which undoes every setting changed inside it on return): Citus hides
/// them from every connection but its own (`citus.override_table_visibility`).
pub(super) fn show_shards(c: &mut pgrx::spi::SpiClient<'_>) -> Result<(), pgrx::spi::Error> {
    c.update(
        "SELECT pg_catalog.set_config('citus.override_table_visibility', 'off', true)",
        None,
        &[],
    )?;
    Ok(())
}

/// This node's copy of `tenancy.citus_protection` as a name to put in a statement: the
/// reference table's placement here (its name printed by `regclass`), or the table itself
/// before `citus_setup()` made it a reference table.
pub(super) fn local_copy(c: &pgrx::spi::SpiClient<'_>) -> Result<String, pgrx::spi::Error> {
    local_copy_of(c, "tenancy.citus_protection")
}

/// This node's copy of pg_tenancy's reference table `table` (a fixed name of pg_tenancy's own
/// catalog) as a name to put in a statement, as [`local_copy`].
pub(super) fn local_copy_of(
    c: &pgrx::spi::SpiClient<'_>,
    table: &'static str,
) -> Result<String, pgrx::spi::Error> {
    Ok(c.select(
        "SELECT coalesce((SELECT pg_catalog.to_regclass(pg_catalog.shard_name(s.logicalrelid, s.shardid, false))::text \
                            FROM pg_catalog.pg_dist_shard s \
                           WHERE s.logicalrelid = $1::pg_catalog.regclass), \
                         $1)",
        Some(1),
        &[table.into()],
    )?
    .first()
    .get_one::<String>()?
    .unwrap_or_else(|| table.into()))
}

/// The guard's signature of a relation, stricter than [`SIGNATURE`] (which `verify()` runs on
/// the shards through Citus, where names print under the node's own `search_path`): row
/// security's flags; each policy with its roles, its expressions with the table's own name
/// (`%2$L`, the text `'<table>'::regclass` as printed under pg_tenancy's pinned `search_path`)
/// written as `'?'::regclass` and any other table's name kept; every trigger, pg_tenancy's audit
/// triggers included (name as [`trigger_key`] compares it, whether enabled, and
/// its definition, [`trigger_body`]: a trigger replaced under its name with other events or
/// arguments changes it), but not its TRUNCATE trigger, which Citus does not put on shards;
/// every rule, with its definition ([`rule_body`]);
/// every index expression and predicate. `%1$L` is the relation's name as a quoted literal.
/// Reads only the system catalogs.
const GUARD_SIGNATURE: &str = concat!(
    "SELECT (SELECT c.relrowsecurity::text || '/' || c.relforcerowsecurity::text \
      FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) %1$L::pg_catalog.regclass) || ' ' || \
     coalesce((SELECT pg_catalog.string_agg(pg_catalog.replace(p.polname::text || '|' || p.polcmd::text || '|' || p.polpermissive::text \
          || '|' || p.polroles::pg_catalog.regrole[]::text \
          || '|' || coalesce(pg_catalog.pg_get_expr(p.polqual, p.polrelid), '') \
          || '|' || coalesce(pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid), ''), \
          %2$L, '''?''::regclass'), ';' ORDER BY p.polname) \
      FROM pg_catalog.pg_policy p WHERE p.polrelid OPERATOR(pg_catalog.=) %1$L::pg_catalog.regclass), '') || ' ' || \
     coalesce((SELECT pg_catalog.string_agg(g, ',' ORDER BY g) FROM ( \
        SELECT ", trigger_key!(shard_id_of_rc!()), " || ':' \
          || t.tgenabled::text || ':' || " , trigger_body!(), "  AS g \
      FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc f ON f.oid OPERATOR(pg_catalog.=) t.tgfoid \
      JOIN pg_catalog.pg_class rc ON rc.oid OPERATOR(pg_catalog.=) t.tgrelid \
      WHERE t.tgrelid OPERATOR(pg_catalog.=) %1$L::pg_catalog.regclass AND NOT t.tgisinternal \
        AND NOT (f.pronamespace OPERATOR(pg_catalog.=) 'tenancy'::pg_catalog.regnamespace AND f.proname OPERATOR(pg_catalog.=) '_refuse_truncate')) q), '') || ' ' || \
     coalesce((SELECT pg_catalog.string_agg(g, ',' ORDER BY g) FROM ( \
        SELECT r.rulename::text || ':' || r.ev_enabled::text || ':' || " , rule_body!(), "  AS g \
      FROM pg_catalog.pg_rewrite r WHERE r.ev_class OPERATOR(pg_catalog.=) %1$L::pg_catalog.regclass AND r.rulename OPERATOR(pg_catalog.<>) '_RETURN') q), '') || ' ' || \
     coalesce((SELECT pg_catalog.string_agg(g, ',' ORDER BY g) FROM ( \
        SELECT coalesce(pg_catalog.pg_get_expr(x.indexprs, x.indrelid), '') || '/' \
          || coalesce(pg_catalog.pg_get_expr(x.indpred, x.indrelid), '') AS g \
      FROM pg_catalog.pg_index x WHERE x.indrelid OPERATOR(pg_catalog.=) %1$L::pg_catalog.regclass \
        AND (x.indexprs IS NOT NULL OR x.indpred IS NOT NULL)) q), '')"
);

/// The signature ([`SIGNATURE`]) of `relation` (a name as regclass prints it) on this node.
pub fn signature(c: &pgrx::spi::SpiClient<'_>, relation: &str) -> Result<String, pgrx::spi::Error> {
    run_signature(c, SIGNATURE, relation, "")
}

/// The guard's signature ([`GUARD_SIGNATURE`]) of `relation`, a shard or copy of protected
/// table `table` (both names as regclass prints them under pg_tenancy's pinned search_path).
fn guard_signature(
    c: &pgrx::spi::SpiClient<'_>,
    relation: &str,
    table: &str,
) -> Result<String, pgrx::spi::Error> {
    let own = format!("{}::regclass", catalog::quote_literal(table));
    // Inside catalog::with_owner (every caller), whose GUC nest level undoes these on return.
    c.select(concat!("SELECT ", pin_output!()), Some(1), &[])?;
    run_signature(c, GUARD_SIGNATURE, relation, &own)
}

/// `template` formatted by PostgreSQL's format() with `relation` and `own`, and run.
fn run_signature(
    c: &pgrx::spi::SpiClient<'_>,
    template: &str,
    relation: &str,
    own: &str,
) -> Result<String, pgrx::spi::Error> {
    let statement: String = c
        .select(
            "SELECT pg_catalog.format($1, $2, $3)",
            Some(1),
            &[template.into(), relation.into(), own.into()],
        )?
        .first()
        .get_one::<String>()?
        .unwrap_or_default();
    // With a snapshot taken now, not the transaction's: in a REPEATABLE READ transaction older
    // than protect(), the shard's pg_class row as that snapshot saw it was still live, beside
    // the one this very command wrote (two rows, SQLSTATE 21000), or alone, when the updates
    // between stayed on one page: then a stale signature could match the record (a reviewer's
    // pass on the records read the same way).
    Ok(
        catalog::fresh_select(&statement, Some(1), &[], |r| r.get::<String>(1))?
            .into_iter()
            .flatten()
            .next()
            .unwrap_or_default(),
    )
}

/// What a relation has that `protect()` neither creates nor replaces, one entry each, as a
/// format() string (`%1$L`: the relation's name as a quoted literal, formatted by Citus's
/// `run_command_on_placements` with each placement's shard name; `@SHARD@`: `true` for a
/// shard, `false` for the table): its policies other than pg_tenancy's generated ones (name,
/// command, roles, expressions with `'...'::regclass` constants written as `'?'::regclass`;
/// not whether permissive: Citus makes every shard's policy permissive), its rules (name,
/// whether enabled, definition, [`rule_body`]), and its triggers (name as [`trigger_key`]
/// compares it, function, whether enabled, and definition, [`trigger_body`]: a
/// trigger of the table's replaced on a shard under its name with other events, or disabled
/// there, is one the table does not have). Printed as a text array. Reads only the system
/// catalogs. Expressions print under the same `search_path` and output settings
/// ([`pin_output`]) on every node: the statement sets them for its own transaction first (a
/// connection of its own on each worker, which Citus's `run_command_on_placements` opens and
/// closes; on the coordinator inside [`catalog::with_owner`], which undoes it), in a subquery
/// whose volatile call PostgreSQL evaluates before the array, an InitPlan evaluated when the
/// outer row is formed.
const FOREIGN_OBJECTS: &str = concat!(
    "SELECT CASE WHEN pinned.p IS NOT NULL THEN ARRAY( \
       SELECT 'policy ' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(p.polname::text) OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||) p.polcmd::text \
              OPERATOR(pg_catalog.||) ' to ' OPERATOR(pg_catalog.||) p.polroles::pg_catalog.regrole[]::text \
              OPERATOR(pg_catalog.||) pg_catalog.regexp_replace(' using ' OPERATOR(pg_catalog.||) coalesce(pg_catalog.pg_get_expr(p.polqual, p.polrelid), '') \
                   OPERATOR(pg_catalog.||) ' check ' OPERATOR(pg_catalog.||) coalesce(pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid), ''), \
                   '''([^'']|'''')*''::regclass', '''?''::regclass', 'g') \
         FROM pg_catalog.pg_policy p WHERE p.polrelid OPERATOR(pg_catalog.=) %1$L::pg_catalog.regclass \
          AND p.polname OPERATOR(pg_catalog.<>) ALL (ARRAY['tenancy_isolation', 'tenancy_isolation_select', 'tenancy_isolation_insert', \
                                      'tenancy_isolation_update', 'tenancy_isolation_delete', 'tenancy_select', \
                                      'tenancy_insert', 'tenancy_update', 'tenancy_delete']) \
       UNION ALL \
       SELECT 'rule ' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(r.rulename::text) OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||) r.ev_enabled::text OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||) " , rule_body!(), "  \
         FROM pg_catalog.pg_rewrite r \
        WHERE r.ev_class OPERATOR(pg_catalog.=) %1$L::pg_catalog.regclass AND r.rulename OPERATOR(pg_catalog.<>) '_RETURN' \
       UNION ALL \
       SELECT 'trigger ' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(", trigger_key!("CASE WHEN @SHARD@ THEN pg_catalog.substring(c.relname::text, '_([0-9]+)$') END"), ") \
              OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(f.proname::text) OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||) t.tgenabled::text OPERATOR(pg_catalog.||) ' ' OPERATOR(pg_catalog.||) " , trigger_body!(), "  \
         FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc f ON f.oid OPERATOR(pg_catalog.=) t.tgfoid \
         JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.tgrelid \
        WHERE t.tgrelid OPERATOR(pg_catalog.=) %1$L::pg_catalog.regclass AND NOT t.tgisinternal)::text END \
       FROM (SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true) OPERATOR(pg_catalog.||) " , pin_output!(), " AS p) AS pinned"
);

/// The functions every worker must have as the coordinator does: pg_tenancy's own (the
/// extension's members: its policies, triggers and binding call them on every node) and the
/// functions of protected Citus tables' triggers, and every function Citus distributed
/// (`pg_dist_object`: Citus keeps those on every node; one dropped on a worker is missing there), of those
/// [`FUNCTION_DEFINITIONS`] reads (not Citus's own TRUNCATE trigger's, which is PostgreSQL's
/// schema's and Citus's). Aggregates are in. Printed as `regprocedure` under the pinned
/// `search_path` of [`catalog::with_owner`], so schema-qualified.
const REQUIRED_FUNCTIONS: &str = "SELECT coalesce(pg_catalog.array_agg(f.oid::pg_catalog.regprocedure::text ORDER BY 1), '{}') \
       FROM pg_catalog.pg_proc f JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) f.pronamespace \
      WHERE n.nspname OPERATOR(pg_catalog.<>) ALL (ARRAY['pg_catalog', 'information_schema']) \
        AND n.nspname OPERATOR(pg_catalog.!~) '^pg_(toast|temp_)' \
        AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid OPERATOR(pg_catalog.=) d.refobjid \
                         WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid OPERATOR(pg_catalog.=) f.oid \
                           AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass \
                           AND d.deptype OPERATOR(pg_catalog.=) 'e' AND e.extname OPERATOR(pg_catalog.<>) 'pg_tenancy' \
                             AND (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) f.proowner)) \
        AND (f.oid IN (SELECT d.objid FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid OPERATOR(pg_catalog.=) d.refobjid \
                        WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass \
                          AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass \
                          AND d.deptype OPERATOR(pg_catalog.=) 'e' AND e.extname OPERATOR(pg_catalog.=) 'pg_tenancy') \
             OR f.oid IN (SELECT t.tgfoid FROM pg_catalog.pg_trigger t \
                           JOIN tenancy.protected_table p ON p.relid OPERATOR(pg_catalog.=) t.tgrelid \
                           JOIN pg_catalog.pg_dist_partition dp ON dp.logicalrelid OPERATOR(pg_catalog.=) p.relid) \
             OR f.oid IN (SELECT o.objid FROM pg_catalog.pg_dist_object o \
                           WHERE o.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass))";

/// Every function of the node that is not PostgreSQL's own nor another extension's (pg_tenancy's
/// are in: the functions of a database's schemas, which a trigger, a default, a constraint, an
/// index or a function they call may run) as `<regprocedure> <sha256 of its definition and
/// owner>`, printed as a text array. Another extension's member counts as its own only where a
/// superuser owns it (an extension's script made it): a role that owns an extension (a trusted
/// one any role with CREATE on the database may make) can add its own function to it, which
/// hid the function from the comparison (a fourth reviewer's pass). sha256, not md5: the
/// function's owner writes both definitions, and md5 collisions can be made to order. `pg_get_functiondef` prints the language, body,
/// volatility, `SECURITY DEFINER`, `LEAKPROOF` and `SET` clauses, under the pinned
/// `search_path` and output settings ([`pin_output`]: argument defaults print their
/// constants), set first in a subquery as [`FOREIGN_OBJECTS`] does; an aggregate, which it
/// does not print, by its `pg_aggregate` row and whether it is `VARIADIC` (which its
/// `regprocedure` name does not show; a worker's aggregate made to overload a function a
/// trigger function calls runs its own state function: a reviewer's pass). A PL/pgSQL trigger function
/// records no dependency on the functions it calls: a helper it calls, replaced on one worker
/// (or one made there to shadow it), is found only by comparing them all (a reviewer's pass).
/// `EXECUTE` grants are not compared: Citus does not carry grants on an extension's functions,
/// and pg_tenancy grants its trigger functions to each protected table's owner per node.
/// Reads only the system catalogs.
const FUNCTION_DEFINITIONS: &str = concat!(
    "SELECT CASE WHEN pinned.p IS NOT NULL THEN ARRAY( \
       SELECT f.oid::pg_catalog.regprocedure::text OPERATOR(pg_catalog.||) ' ' \
              OPERATOR(pg_catalog.||) pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(CASE WHEN f.prokind OPERATOR(pg_catalog.=) 'a' \
                   THEN (SELECT pg_catalog.concat_ws(' ', 'aggregate', a.aggkind, a.aggnumdirectargs, \
                                  a.aggtransfn::pg_catalog.regprocedure, a.aggfinalfn::pg_catalog.regprocedure, \
                                  a.aggcombinefn::pg_catalog.regprocedure, a.aggserialfn::pg_catalog.regprocedure, \
                                  a.aggdeserialfn::pg_catalog.regprocedure, a.aggmtransfn::pg_catalog.regprocedure, \
                                  a.aggminvtransfn::pg_catalog.regprocedure, a.aggmfinalfn::pg_catalog.regprocedure, \
                                  a.aggfinalextra, a.aggmfinalextra, a.aggfinalmodify, a.aggmfinalmodify, \
                                  a.aggsortop::pg_catalog.regoperator, a.aggtranstype::pg_catalog.regtype, \
                                  a.aggmtranstype::pg_catalog.regtype, pg_catalog.quote_nullable(a.agginitval), \
                                  pg_catalog.quote_nullable(a.aggminitval), f.proparallel, \
                                  f.provariadic::pg_catalog.regtype, f.proargmodes::text) \
                           FROM pg_catalog.pg_aggregate a WHERE a.aggfnoid OPERATOR(pg_catalog.=) f.oid) \
                   ELSE pg_catalog.pg_get_functiondef(f.oid) END \
                 OPERATOR(pg_catalog.||) ' owner ' OPERATOR(pg_catalog.||) pg_catalog.pg_get_userbyid(f.proowner), 'UTF8')), 'hex') \
         FROM pg_catalog.pg_proc f JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) f.pronamespace \
        WHERE n.nspname OPERATOR(pg_catalog.<>) ALL (ARRAY['pg_catalog', 'information_schema']) \
          AND n.nspname OPERATOR(pg_catalog.!~) '^pg_(toast|temp_)' \
          AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid OPERATOR(pg_catalog.=) d.refobjid \
                           WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid OPERATOR(pg_catalog.=) f.oid \
                             AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass \
                             AND d.deptype OPERATOR(pg_catalog.=) 'e' AND e.extname OPERATOR(pg_catalog.<>) 'pg_tenancy' \
                             AND (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) f.proowner)) \
        ORDER BY 1)::text END \
       FROM (SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true) OPERATOR(pg_catalog.||) ", pin_output!(), " AS p) AS pinned"
);

/// A worker whose functions differ from the coordinator's: (node, port, read, the names of the
/// functions that differ, or that it has alone, or that it lacks of [`REQUIRED_FUNCTIONS`],
/// what the node answered).
pub(crate) type NodeFunctions = (String, i32, bool, Vec<String>, String);

/// For `verify()` on the coordinator (inside [`catalog::with_owner`]): every worker with a
/// function ([`FUNCTION_DEFINITIONS`], through Citus's `run_command_on_workers`: a connection of
/// its own to each worker, as the catalog owner) defined otherwise than here, or that the
/// coordinator does not have, or which lacks one of [`REQUIRED_FUNCTIONS`], or which could not be
/// read. A function only the coordinator has and none of its shards' triggers call is left
/// alone: Citus does not carry a function made before the node was added, or before Citus was.
/// A superuser on a worker, past the guard, could replace `tenancy.current_tenant()` there, and
/// the table's owner, with `citus.enable_ddl_propagation` off, a function that a protected
/// table's trigger function calls: the policies and triggers still read the same on every
/// node.
pub(crate) fn workers_with_other_functions(
    c: &pgrx::spi::SpiClient<'_>,
) -> Result<Vec<NodeFunctions>, pgrx::spi::Error> {
    let required: Vec<String> = c
        .select(REQUIRED_FUNCTIONS, Some(1), &[])?
        .first()
        .get_one::<Vec<String>>()?
        .unwrap_or_default();
    // Here, then on every worker, the same statement.
    let own: String = c
        .select(FUNCTION_DEFINITIONS, Some(1), &[])?
        .first()
        .get_one::<String>()?
        .unwrap_or_default();
    let rows = c.select(
        "SELECT w.nodename::text, w.nodeport, w.success, \
                CASE WHEN w.success THEN ARRAY( \
                  SELECT DISTINCT pg_catalog.regexp_replace(x, ' [^ ]*$', '') FROM ( \
                    (SELECT pg_catalog.unnest(w.result::text[]) EXCEPT SELECT pg_catalog.unnest($2::text[])) \
                    UNION ALL \
                    (SELECT r FROM pg_catalog.unnest($3::text[]) r \
                      EXCEPT SELECT pg_catalog.regexp_replace(y, ' [^ ]*$', '') FROM pg_catalog.unnest(w.result::text[]) y)) d(x) \
                  ORDER BY 1) END, \
                w.result \
           FROM pg_catalog.run_command_on_workers($1) w ORDER BY 1, 2",
        None,
        &[FUNCTION_DEFINITIONS.into(), own.into(), required.into()],
    )?;
    let mut out = Vec::new();
    for r in rows {
        out.push((
            r.get::<String>(1)?.unwrap_or_default(),
            r.get::<i32>(2)?.unwrap_or_default(),
            r.get::<bool>(3)?.unwrap_or(false),
            r.get::<Vec<String>>(4)?.unwrap_or_default(),
            r.get::<String>(5)?.unwrap_or_default(),
        ));
    }
    Ok(out
        .into_iter()
        .filter(|w| !w.2 || !w.3.is_empty())
        .collect())
}

/// Before `protect()` of Citus table `rel` (on the coordinator, its name `table` as regclass
/// prints it; `generated`, the names of the policies `protect()` makes): refuse when a placement of one of its shards has a policy, rule or trigger that
/// the table itself does not have ([`FOREIGN_OBJECTS`]). An attacker's pass, as the table's
/// owner connected to a worker before the table was protected, planted a policy `USING (true)`
/// on a shard (Citus lets any role set `citus.enable_manual_changes_to_shards`), and a rule
/// copying the shard's rows out: `protect()` left both in place (on Citus every policy is
/// permissive, so the planted one widened the tenant's), and its record of the table made them
/// the guard's reference. A table distributed in this transaction is not read: its placements
/// are the copies Citus made of it in this transaction, which no other session has seen (and
/// which Citus's `run_command_on_placements`, reading over connections of its own, cannot see
/// yet). Nothing is compared the other way: what a shard lacks, `protect()` creates.
pub fn refuse_foreign_objects_on_placements(rel: pg_sys::Oid, table: &str, generated: &[&str]) {
    // The table's own policies first. On Citus every policy is permissive on the shards
    // (Citus drops `AS RESTRICTIVE`), so any policy beside pg_tenancy's widens the tenant's:
    // a reviewer's RESTRICTIVE `USING (s <> 'b')` served every tenant's rows but those.
    let own_policies: Vec<String> = catalog::owner_rows(
        "the table's policies",
        "SELECT pg_catalog.quote_ident(p.polname::text) FROM pg_catalog.pg_policy p \
          WHERE p.polrelid = $1 AND p.polname::text <> ALL ($2) ORDER BY 1",
        &[
            rel.into(),
            generated
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .into(),
        ],
        |r| Ok(r.get::<String>(1)?.unwrap_or_default()),
    );
    if !own_policies.is_empty() {
        errors::raise(
            errors::NOT_IN_PREREQUISITE_STATE,
            format!(
                "Citus table \"{table}\" has policies of its own ({}): on its shards every policy is permissive, and these would widen each tenant's",
                own_policies.join(", ")
            ),
            "Drop them first (DROP POLICY ... ON the table, on the coordinator); pg_tenancy's policies confine each tenant to its rows, and a restriction of your own belongs in the application's queries or a view.",
        );
    }
    let found: Vec<Placement> = catalog::with_owner_reading_locally(|| {
        Spi::connect(|c| {
            // The table's Citus metadata: when each row was written (this transaction, or
            // before), how it is distributed, and whether Citus synced it to the workers with
            // metadata (it records the table in pg_dist_object only then: not for one
            // distributed with citus.enable_metadata_sync off, which the workers never learn).
            let (xmins, method, synced): (Vec<String>, String, bool) = c
                .select(
                    "SELECT ARRAY[d.xmin::text] || ARRAY(SELECT s.xmin::text FROM pg_catalog.pg_dist_shard s \
                                                     WHERE s.logicalrelid = d.logicalrelid), \
                            d.partmethod::text, \
                            EXISTS (SELECT FROM pg_catalog.pg_dist_object o \
                                     WHERE o.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                                       AND o.objid = d.logicalrelid::pg_catalog.oid AND o.objsubid = 0) \
                       FROM pg_catalog.pg_dist_partition d WHERE d.logicalrelid = $1",
                    Some(1),
                    &[rel.into()],
                )?
                .first()
                .get_three::<Vec<String>, String, bool>()
                .map(|(x, m, s)| (x.unwrap_or_default(), m.unwrap_or_default(), s.unwrap_or(false)))?;
            // Tables Citus syncs to the workers: hash-distributed, and those without a
            // distribution column (reference and local tables in the metadata).
            let syncs = method == "h" || method == "n";
            if syncs && !synced {
                errors::raise(
                    errors::NOT_IN_PREREQUISITE_STATE,
                    format!("Citus table \"{table}\" was distributed with citus.enable_metadata_sync off: the workers do not know its shards, and pg_tenancy's guard there could not tell them"),
                    "Distribute it again with citus.enable_metadata_sync on (the default): SELECT undistribute_table(...); SELECT create_distributed_table(...); then protect it.",
                );
            }
            // Distributed in this transaction (the table's row and every shard's): its shards
            // are as Citus has just made them, and the workers learn the metadata at commit.
            // A row rewritten since (update_distributed_table_colocation rewrites the table's)
            // is not enough (a reviewer's pass).
            let fresh = !xmins.is_empty()
                && xmins.iter().all(|x| {
                    x.parse::<u32>().ok().is_some_and(|x| {
                        // SAFETY: asks whether an xid is this transaction's (or one of its
                        // subtransactions').
                        unsafe {
                            pg_sys::TransactionIdIsCurrentTransactionId(pg_sys::TransactionId::from(x))
                        }
                    })
                });
            if fresh {
                return Ok(Vec::new());
            }
            if syncs {
                if let Some((node, port, ok, result)) = workers_without_table(c, rel)?.into_iter().next() {
                    errors::raise(
                        errors::NOT_IN_PREREQUISITE_STATE,
                        if ok {
                            format!("worker {node}:{port} does not know Citus table \"{table}\" in Citus's metadata: pg_tenancy's guard there could not tell its shards")
                        } else {
                            format!("worker {node}:{port} could not be asked whether it knows Citus table \"{table}\": {result}")
                        },
                        "Sync the node's metadata (SELECT start_metadata_sync_to_node(...) on the coordinator; a table there under the table's name that Citus did not make is dropped first), then protect the table; a node that cannot be reached is brought back first.",
                    );
                }
            }
            placements_with_foreign_objects(c, rel, table)
        })
    })
    .unwrap_or_else(|e| {
        pgrx::error!("pg_tenancy: reading the placements of a Citus table failed: {e}")
    });
    for (shard, node, port, ok, foreign, result) in found {
        if !ok {
            errors::raise(
                errors::NOT_IN_PREREQUISITE_STATE,
                format!("shard {shard} of Citus table \"{table}\" on {node}:{port} could not be read before protecting it: {result}"),
                "pg_tenancy protects a Citus table only when every placement of its shards is a copy of the table; bring the node back and protect again.",
            );
        }
        if !foreign.is_empty() {
            errors::raise(
                errors::NOT_IN_PREREQUISITE_STATE,
                format!(
                    "shard {shard} of Citus table \"{table}\" on {node}:{port} has what the table does not: {}",
                    foreign.join("; ")
                ),
                "Something was added to the shard on its node, past Citus. Remove it there (as the table's owner or a superuser, with SET citus.enable_manual_changes_to_shards = on), then protect the table again: its shards' policies, rules and triggers must be the table's.",
            );
        }
    }
}

/// The workers whose Citus metadata does not hold Citus table `rel`'s shards (the same shard
/// ids) as the coordinator's does (node, port, read, what the node answered); asked only of a
/// table Citus syncs (hash-distributed, or without a distribution column): a table distributed with
/// `citus.enable_metadata_sync` off, or a node whose metadata was taken off or never synced.
/// There the guard knows a shard only by its name, and a table of the owner's own under the
/// table's name passed for its copy (a reviewer's pass). Read through Citus's
/// `run_command_on_workers` with a fixed statement into which the table's qualified name is
/// formatted as a literal (`%L`).
pub(crate) fn workers_without_table(
    c: &pgrx::spi::SpiClient<'_>,
    rel: pg_sys::Oid,
) -> Result<Vec<(String, i32, bool, String)>, pgrx::spi::Error> {
    let rows = c.select(
        "WITH t AS (SELECT pg_catalog.quote_ident(n.nspname::text) || '.' || pg_catalog.quote_ident(r.relname::text) AS name, \
                           (SELECT COALESCE(pg_catalog.string_agg(s.shardid::text, ',' ORDER BY s.shardid), '') \
                              FROM pg_catalog.pg_dist_shard s WHERE s.logicalrelid = r.oid) AS shards \
                      FROM pg_catalog.pg_class r JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace WHERE r.oid = $1) \
         SELECT w.nodename::text, w.nodeport, w.success, w.result \
           FROM t, pg_catalog.run_command_on_workers(pg_catalog.format( \
                'SELECT COALESCE(pg_catalog.string_agg(s.shardid::text, '','' ORDER BY s.shardid), '''') FROM pg_catalog.pg_dist_shard s WHERE s.logicalrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(%L)', t.name)) w \
          WHERE NOT w.success OR w.result IS DISTINCT FROM t.shards ORDER BY 1, 2",
        None,
        &[rel.into()],
    )?;
    let mut out = Vec::new();
    for r in rows {
        out.push((
            r.get::<String>(1)?.unwrap_or_default(),
            r.get::<i32>(2)?.unwrap_or_default(),
            r.get::<bool>(3)?.unwrap_or(false),
            r.get::<String>(4)?.unwrap_or_default(),
        ));
    }
    Ok(out)
}

/// A placement of a shard: (shard, node, port, read, what it has that its table does not,
/// what the node answered).
pub(crate) type Placement = (i64, String, i32, bool, Vec<String>, String);

/// Every placement of Citus table `rel`'s shards (`table`, its name as regclass prints it),
/// read through Citus's `run_command_on_placements` ([`FOREIGN_OBJECTS`]), with what it has
/// that the table on the coordinator does not: the rows where that is something, or where the
/// placement could not be read.
pub(crate) fn placements_with_foreign_objects(
    c: &pgrx::spi::SpiClient<'_>,
    rel: pg_sys::Oid,
    table: &str,
) -> Result<Vec<Placement>, pgrx::spi::Error> {
    let own_sql: String = c
        .select(
            "SELECT pg_catalog.format($1, $2)",
            Some(1),
            &[
                FOREIGN_OBJECTS.replace("@SHARD@", "false").into(),
                table.into(),
            ],
        )?
        .first()
        .get_one::<String>()?
        .unwrap_or_default();
    // Here, not over a connection of its own: this transaction holds the table's lock.
    let own: String = c
        .select(&own_sql, Some(1), &[])?
        .first()
        .get_one::<String>()?
        .unwrap_or_default();
    let rows = c.select(
        "SELECT s.shardid, s.nodename::text, s.nodeport, s.success, \
                CASE WHEN s.success THEN ARRAY(SELECT pg_catalog.unnest(s.result::text[]) \
                                               EXCEPT SELECT pg_catalog.unnest($3::text[]) ORDER BY 1) END, \
                s.result \
           FROM pg_catalog.run_command_on_placements($1::pg_catalog.regclass, $2) s ORDER BY 1, 2, 3",
        None,
        &[
            rel.into(),
            FOREIGN_OBJECTS.replace("@SHARD@", "true").into(),
            own.into(),
        ],
    )?;
    let mut out = Vec::new();
    for r in rows {
        out.push((
            r.get::<i64>(1)?.unwrap_or_default(),
            r.get::<String>(2)?.unwrap_or_default(),
            r.get::<i32>(3)?.unwrap_or_default(),
            r.get::<bool>(4)?.unwrap_or(false),
            r.get::<Vec<String>>(5)?.unwrap_or_default(),
            r.get::<String>(6)?.unwrap_or_default(),
        ));
    }
    Ok(out
        .into_iter()
        .filter(|p| !p.3 || !p.4.is_empty())
        .collect())
}

/// After `protect()` of a Citus table (on the coordinator, as the catalog owner, its statements
/// run): record its name and signature for every node's guard.
pub fn record(rel: pg_sys::Oid) {
    catalog::with_owner(|| {
        Spi::connect_mut(|c| {
            let name: String = c
                .select("SELECT $1::pg_catalog.oid::pg_catalog.regclass::text", Some(1), &[rel.into()])?
                .first()
                .get_one::<String>()?
                .unwrap_or_default();
            let sig = guard_signature(c, &name, &name)?;
            c.update(
                "INSERT INTO tenancy.citus_protection (relation, coordinator_relid, signature) VALUES ($1, $2, $3) \
                 ON CONFLICT (coordinator_relid) DO UPDATE SET relation = EXCLUDED.relation, signature = EXCLUDED.signature",
                None,
                &[name.into(), rel.into(), sig.into()],
            )?;
            Ok::<_, pgrx::spi::Error>(())
        })
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: recording a protected Citus table failed: {e}"));
}

/// After `unprotect()`: the table's shards are no longer guarded.
pub fn forget(rel: pg_sys::Oid) {
    if !crate::pg::citus::in_database() {
        return;
    }
    catalog::write(
        "DELETE FROM tenancy.citus_protection WHERE coordinator_relid = $1",
        &[rel.into()],
    );
}

/// In the guard's check of a DDL command (any node; not in Citus's own connections nor in
/// pg_tenancy's own DDL, which the caller leaves out): refuse the command when a relation it
/// touched is a shard or shell of a protected Citus table and no longer has the table's
/// recorded signature. On the coordinator, a protected table renamed keeps its record (under
/// its new name).
pub fn refuse_drift(touched: &[Option<pg_sys::Oid>]) {
    // SAFETY: creating_extension is this backend's own flag (set while an extension's script
    // runs: pg_tenancy's own, before its catalog is complete, or another extension's).
    if !crate::pg::citus::in_database() || unsafe { pg_sys::creating_extension } {
        return;
    }
    // Read as this node's own (its copies of the catalog, its shards): a DDL command's check
    // was taken for a routed management call, so that every DDL refused a SET LOCAL after it
    // in its transaction, and Citus's own `SET LOCAL citus.allow_nested_distributed_execution`
    // before `create_distributed_table_concurrently`'s loopback DDL refused the command (an
    // attacker's pass). Only a record to update reaches every node, checked as routed then.
    let drifted: Option<(String, String, bool)> = catalog::with_owner_reading_locally(|| {
        Spi::connect_mut(|c| {
            show_shards(c)?;
            // Read this node's copy of tenancy.citus_protection itself: inside an ALTER TABLE
            // of a shard, Citus answers a query on a reference table with no rows at all.
            let records = local_copy(c)?;
            // On the coordinator a protected table itself is kept by the guard of one node
            // (`src/protection/guard.rs`), which lets a superuser add a trigger, for example,
            // and refuses what weakens it: its record follows what it is now (renamed, or
            // changed) for the workers' guard. Read first: writing a reference table reaches
            // every node.
            let changed: Vec<(pg_sys::Oid, String, String)> = c
                .select(
                    &format!("SELECT p.coordinator_relid, r.oid::pg_catalog.regclass::text, p.relation, p.signature FROM {records} p \
                               JOIN pg_catalog.pg_class r ON r.oid = p.coordinator_relid \
                              WHERE p.coordinator_relid = ANY ($1) AND pg_catalog.citus_is_coordinator() \
                              ORDER BY 1"),
                    None,
                    &[touched.to_vec().into()],
                )?
                .map(|r| {
                    Ok((
                        r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                        r.get::<String>(2)?.unwrap_or_default(),
                        r.get::<String>(3)?.unwrap_or_default(),
                        r.get::<String>(4)?.unwrap_or_default(),
                    ))
                })
                .collect::<Result<Vec<_>, pgrx::spi::Error>>()?
                .into_iter()
                .map(|(rel, name, recorded_name, recorded)| {
                    let now = guard_signature(c, &name, &name)?;
                    Ok((name != recorded_name || now != recorded).then_some((rel, name, now)))
                })
                .collect::<Result<Vec<_>, pgrx::spi::Error>>()?
                .into_iter()
                .flatten()
                .collect();
            if !changed.is_empty() {
                crate::pg::citus::before_routing_as_another();
            }
            for (rel, name, now) in changed {
                // Citus refuses a STABLE function (regclass's output) in an UPDATE of a
                // reference table: the values are parameters.
                c.update(
                    "UPDATE tenancy.citus_protection SET relation = $2, signature = $3 WHERE coordinator_relid = $1",
                    None,
                    &[rel.into(), name.into(), now.into()],
                )?;
            }
            // Each touched relation that belongs to a recorded table: its shell (a Citus table
            // on a worker); on a worker, a relation named as a shard of a recorded table
            // (`<table>_<shard id>` in its schema) whether or not Citus's metadata still knows
            // it (a table's owner took a shard out of the metadata with Citus's
            // worker_drop_distributed_table under Citus's connection name, after which the
            // guard no longer knew it; found by an attacker's pass; a long name Citus shortens
            // to `<its first bytes>_<8 hex digits>_<shard id>`); a shard found by its name (its table's with `_<shardid>`, the id
            // looked up and the name confirmed by Citus's shard_name()) that has a placement on
            // this node in Citus's metadata (a placement a shard move is still building is not
            // registered until the move ends, and Citus sends nothing to it before: its
            // triggers and policies arrive one statement at a time, each in its own
            // transaction; verify() checks it once registered), or any relation whose
            // policies name a recorded table (a shard renamed: it keeps its policies, which
            // name its table by oid).
            // With a snapshot taken now, not the transaction's: a session in REPEATABLE READ
            // that began before protect() committed would otherwise not see its record, and
            // change a shard's row security after it (a reviewer's pass).
            let guarded: Vec<(String, String, String, bool, bool)> = catalog::fresh_select(
                    &format!("WITH t AS ( \
                        SELECT r.oid, r.oid::regclass::text AS relation, \
                               (SELECT d.logicalrelid::text FROM pg_catalog.pg_dist_partition d WHERE d.logicalrelid = r.oid) AS shell_of, \
                               (SELECT s.logicalrelid::text FROM pg_catalog.pg_dist_shard s \
                                 WHERE s.shardid = pg_catalog.substring(r.relname::text, '_([0-9]{{1,18}})$')::bigint \
                                   AND pg_catalog.to_regclass(pg_catalog.shard_name(s.logicalrelid, s.shardid, false)) = r.oid \
                                   AND EXISTS (SELECT FROM pg_catalog.pg_dist_placement pl WHERE pl.shardid = s.shardid \
                                                 AND pl.groupid = (SELECT groupid FROM pg_catalog.pg_dist_local_group))) AS shard_of, \
                               ARRAY(SELECT DISTINCT d.refobjid::regclass::text FROM pg_catalog.pg_policy pp \
                                       JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_policy'::regclass AND d.objid = pp.oid \
                                        AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid <> r.oid \
                                      WHERE pp.polrelid = r.oid) AS named, \
                               EXISTS (SELECT FROM pg_catalog.pg_dist_shard s \
                                 WHERE s.shardid = pg_catalog.substring(r.relname::text, '_([0-9]{{1,18}})$')::bigint \
                                   AND pg_catalog.to_regclass(pg_catalog.shard_name(s.logicalrelid, s.shardid, false)) = r.oid \
                                   AND NOT EXISTS (SELECT FROM pg_catalog.pg_dist_placement pl WHERE pl.shardid = s.shardid \
                                                     AND pl.groupid = (SELECT groupid FROM pg_catalog.pg_dist_local_group))) AS building, \
                               NOT pg_catalog.citus_is_coordinator() \
                                 AND NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition d WHERE d.logicalrelid = r.oid) AS may_be_shard, \
                               (SELECT n.nspname::text FROM pg_catalog.pg_namespace n WHERE n.oid = r.relnamespace) AS nsp, \
                               r.relname::text AS relname \
                          FROM pg_catalog.unnest($1::oid[]) AS u(oid) JOIN pg_catalog.pg_class r ON r.oid = u.oid \
                         WHERE NOT (pg_catalog.citus_is_coordinator() AND EXISTS (SELECT FROM {records} q WHERE q.coordinator_relid = u.oid))), \
                      named_like AS ( \
                        SELECT t.oid, p.relation FROM t CROSS JOIN {records} p \
                               CROSS JOIN LATERAL pg_catalog.parse_ident(p.relation) AS i(parts) \
                         WHERE t.may_be_shard AND pg_catalog.cardinality(i.parts) = 2 AND i.parts[1] = t.nsp \
                           AND ((pg_catalog.starts_with(t.relname, i.parts[2] || '_') \
                                 AND pg_catalog.substr(t.relname, pg_catalog.length(i.parts[2]) + 2) ~ '^[0-9]{{6,18}}$') \
                             OR (pg_catalog.octet_length(i.parts[2]) >= 40 \
                                 AND pg_catalog.starts_with(t.relname, pg_catalog.left(i.parts[2], 20)) \
                                 AND t.relname ~ '_[0-9a-f]{{8}}_[0-9]{{6,18}}$'))) \
                      SELECT t.relation, p.relation, p.signature, \
                             (t.shell_of IS NOT NULL OR t.shard_of IS NOT NULL \
                              OR EXISTS (SELECT FROM named_like l WHERE l.oid = t.oid AND l.relation = p.relation)), \
                             (t.shell_of IS NULL AND t.shard_of IS NULL) \
                        FROM t JOIN {records} p ON p.relation = t.shell_of OR p.relation = t.shard_of OR p.relation = ANY (t.named) \
                             OR EXISTS (SELECT FROM named_like l WHERE l.oid = t.oid AND l.relation = p.relation) \
                       WHERE NOT t.building \
                       ORDER BY 1, 2"),
                    None,
                    &[touched.to_vec().into()],
                |r| {
                    Ok((
                        r.get::<String>(1)?.unwrap_or_default(),
                        r.get::<String>(2)?.unwrap_or_default(),
                        r.get::<String>(3)?.unwrap_or_default(),
                        r.get::<bool>(4)?.unwrap_or(false),
                        r.get::<bool>(5)?.unwrap_or(false),
                    ))
                },
            )?;
            for (relation, table, recorded, by_name, unknown_to_citus) in guarded {
                if by_name
                    && unknown_to_citus
                    && crate::pg::hooks::running(&[pg_sys::NodeTag::T_DropStmt])
                    && crate::pg::citus::internal_backend()
                {
                    // A shard Citus's metadata no longer knows, dropped: the coordinator's
                    // DROP TABLE takes the table's metadata off the workers before it drops
                    // the shards (whose policies went with the worker's copy of the table).
                    // Only in Citus's own connection: the table's owner, on a worker that
                    // never knew the table (made with citus.enable_metadata_sync off), dropped
                    // a table of its own named as the table's copy there, and every shard's
                    // policies with it (a reviewer's pass).
                    continue;
                }
                let now = guard_signature(c, &relation, &table)?;
                if !by_name {
                    // Not its table's shell nor found under its shard's name, yet its policies
                    // name a protected table. With the table's own row security, it is a shard
                    // renamed (Citus would lose it, and the guard with it), or a copy of one;
                    // another table whose policies merely read the protected one is not.
                    if now == recorded {
                        return Ok(Some((relation, table, true)));
                    }
                    continue;
                }
                let created_now = c
                    .select("SELECT $1::pg_catalog.regclass::pg_catalog.oid", Some(1), &[relation.as_str().into()])?
                    .first()
                    .get_one::<pg_sys::Oid>()?
                    .is_some_and(crate::pg::citus::created_in_this_transaction);
                if created_now {
                    // A placement Citus is building in this transaction (a shard moved or
                    // copied), which gets its policies one statement at a time. Its name is
                    // free only if the shard it stands for was dropped, which the guard
                    // refuses to anyone but a superuser.
                    continue;
                }
                if now != recorded {
                    return Ok(Some((relation, table, false)));
                }
            }
            Ok::<_, pgrx::spi::Error>(None)
        })
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: guard check on Citus failed: {e}"));
    if let Some((relation, table, renamed)) = drifted {
        let mut f = serde_json::Map::new();
        f.insert("table".into(), table.clone().into());
        f.insert("relation".into(), relation.clone().into());
        errors::refuse(
            "guard_refused",
            f,
            errors::INSUFFICIENT_PRIVILEGE,
            if renamed {
                format!("\"{relation}\" is a shard of protected table \"{table}\" and keeps the name Citus gave it")
            } else if relation == table {
                format!("cannot change the row-level security of protected table \"{table}\" on this node")
            } else {
                format!("cannot change the row-level security of \"{relation}\", a shard of protected table \"{table}\"")
            },
            format!(
                "The shards of a protected Citus table keep the table's row security, policies and triggers. \
                 Change the table on the coordinator: an operator can run SELECT tenancy.unprotect({lit}); first (audited), or SELECT tenancy.protect({lit}, audit => false); to regenerate.",
                lit = catalog::quote_literal(&table)
            ),
        );
    }
}

/// The functions a DDL command changed (`CREATE OR REPLACE FUNCTION`, `ALTER FUNCTION` or
/// `ALTER ROUTINE`, at `ddl_command_end`) that this node's shard or shell of a protected Citus
/// table runs, each (function, that table as recorded, whether it is pg_tenancy's own): a
/// trigger, policy, rule, index expression or predicate, column default or constraint of the
/// relation depends on it, or a domain's constraint or default, or a type's function (a
/// range's canonical or subtype-difference function), of a type its columns' values are made
/// of (a reviewer's pass: a domain's CHECK function; then the types a value is made of as the
/// one-node check follows them, `leakproof::REACHABLE_TYPES`: the base of a domain over a
/// domain, an array's element, a composite's attributes, a range's subtype), directly or
/// through an operator it implements; or it is a member of pg_tenancy. Not followed: an
/// operator class's support functions (only a superuser makes an operator class), and what a
/// function's body calls, which PostgreSQL does not record (`verify()` compares every
/// function, [`FUNCTION_DEFINITIONS`]). Reads this node's copy of the records (`{records}`)
/// and the system catalogs.
const CHANGED_FUNCTIONS_RUN_HERE: &str = concat!(
    "WITH RECURSIVE changed AS ( \
        SELECT DISTINCT d.objid AS fn FROM pg_catalog.pg_event_trigger_ddl_commands() d \
         WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid IS NOT NULL), \
      recorded AS ( \
        SELECT pg_catalog.to_regclass(p.relation) AS rel, p.relation FROM {records} p), \
      guarded AS ( \
        SELECT r.rel, r.relation FROM recorded r WHERE r.rel IS NOT NULL \
        UNION ALL \
        SELECT pg_catalog.to_regclass(pg_catalog.shard_name(s.logicalrelid, s.shardid, false)), r.relation \
          FROM pg_catalog.pg_dist_shard s JOIN recorded r ON s.logicalrelid = r.rel), \
      column_types(rel, typ) AS ( \
        SELECT a.attrelid, a.atttypid FROM pg_catalog.pg_attribute a JOIN guarded g ON a.attrelid = g.rel \
         WHERE a.attnum > 0 AND NOT a.attisdropped \
        UNION \
        SELECT g.rel, d.refobjid FROM guarded g JOIN pg_catalog.pg_depend d \
            ON d.refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass \
         WHERE ",
    crate::catalog::expression_dependency_of!("g.rel"),
    " \
        UNION \
        SELECT ct.rel, x.child FROM column_types ct JOIN pg_catalog.pg_type ty ON ty.oid = ct.typ ",
    crate::catalog::type_parts!(),
    "), \
      uses AS ( \
        SELECT c.fn, d.classid, d.objid FROM changed c JOIN pg_catalog.pg_depend d \
            ON d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.refobjid = c.fn \
        UNION ALL \
        SELECT c.fn, d.classid, d.objid FROM changed c JOIN pg_catalog.pg_operator o ON o.oprcode = c.fn \
          JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass AND d.refobjid = o.oid), \
      used_by AS ( \
        SELECT u.fn, t.tgrelid AS rel FROM uses u JOIN pg_catalog.pg_trigger t \
            ON u.classid = 'pg_catalog.pg_trigger'::pg_catalog.regclass AND t.oid = u.objid \
        UNION ALL SELECT u.fn, p.polrelid FROM uses u JOIN pg_catalog.pg_policy p \
            ON u.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass AND p.oid = u.objid \
        UNION ALL SELECT u.fn, w.ev_class FROM uses u JOIN pg_catalog.pg_rewrite w \
            ON u.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND w.oid = u.objid \
        UNION ALL SELECT u.fn, a.adrelid FROM uses u JOIN pg_catalog.pg_attrdef a \
            ON u.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND a.oid = u.objid \
        UNION ALL SELECT u.fn, k.conrelid FROM uses u JOIN pg_catalog.pg_constraint k \
            ON u.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass AND k.oid = u.objid AND k.conrelid <> 0 \
        UNION ALL SELECT u.fn, coalesce(x.indrelid, u.objid) FROM uses u LEFT JOIN pg_catalog.pg_index x ON x.indexrelid = u.objid \
         WHERE u.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
        UNION ALL SELECT u.fn, ct.rel FROM uses u JOIN pg_catalog.pg_constraint k \
            ON u.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass AND k.oid = u.objid AND k.contypid <> 0 \
          JOIN column_types ct ON ct.typ = k.contypid \
        UNION ALL SELECT u.fn, ct.rel FROM uses u JOIN column_types ct \
            ON u.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND ct.typ = u.objid) \
    SELECT q.f, q.t, q.own FROM ( \
      SELECT c.fn::pg_catalog.regprocedure::text AS f, \
             (SELECT pg_catalog.min(g.relation) FROM used_by b JOIN guarded g ON g.rel = b.rel WHERE b.fn = c.fn) AS t, \
             EXISTS (SELECT FROM pg_catalog.pg_depend e JOIN pg_catalog.pg_extension x ON x.oid = e.refobjid \
                      WHERE e.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND e.objid = c.fn \
                        AND e.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass \
                        AND e.deptype = 'e' AND x.extname = 'pg_tenancy') AS own \
        FROM changed c) q \
     WHERE q.t IS NOT NULL OR q.own \
     ORDER BY q.own DESC, 1 LIMIT 1"
);

/// In the guard's check at `ddl_command_end` (every node; not in a superuser's connection that
/// Citus opened for its own work, nor in pg_tenancy's own DDL, nor in an extension's script):
/// on a worker, refuse a command that changed a function a shard or shell of a protected table
/// runs there, or one of pg_tenancy's functions ([`CHANGED_FUNCTIONS_RUN_HERE`]). The table's
/// owner could replace its trigger function on one worker with `citus.enable_ddl_propagation`
/// off (Citus allows it): the shard's trigger, which the guard compares, still read the same
/// while it ran other code, unseen from the coordinator (a second reviewer's pass). A
/// function changes on the coordinator, where Citus carries the change to every node over its
/// own connections: as a superuser's connection, which the guard lets pass. Citus opens them
/// as the current user, and a connection of the table's owner cannot be told from one Citus
/// opened for the owner, so on Citus a function a protected table runs is changed by a
/// superuser (a trusted migration role), as its triggers are created by one. On the
/// coordinator, the same for every role but a superuser: the table's owner there, with
/// `citus.enable_ddl_propagation` off, changed the coordinator's alone (a reviewer's pass).
/// `verify()` reports a change made past the guard (`citus_node_drift`).
pub fn refuse_function_changes() {
    // SAFETY: creating_extension is this backend's own flag (set while an extension's script
    // runs, where pg_tenancy's functions are created and replaced).
    if !crate::pg::citus::in_database() || unsafe { pg_sys::creating_extension } {
        return;
    }
    // The command's role, read before switching to the catalog owner.
    let superuser = crate::authz::is_superuser(crate::authz::caller());
    let found: Option<(String, Option<String>, bool)> = catalog::with_owner_reading_locally(|| {
        Spi::connect_mut(|c| {
            // Most commands the guard sees change no function.
            let functions = c
                .select(
                    "SELECT EXISTS (SELECT FROM pg_catalog.pg_event_trigger_ddl_commands() d \
                                     WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass)",
                    Some(1),
                    &[],
                )?
                .first()
                .get_one::<bool>()?
                .unwrap_or(false);
            if !functions {
                return Ok(None);
            }
            let coordinator = c
                .select("SELECT pg_catalog.citus_is_coordinator()", Some(1), &[])?
                .first()
                .get_one::<bool>()?
                .unwrap_or(true);
            // On the coordinator a superuser (a trusted migration role) changes them, and
            // Citus carries the change to every worker over its own connections.
            if coordinator && superuser {
                return Ok(None);
            }
            show_shards(c)?;
            let records = local_copy(c)?;
            // With a snapshot taken now (see refuse_drift).
            let rows = catalog::fresh_select(
                &CHANGED_FUNCTIONS_RUN_HERE.replace("{records}", &records),
                Some(1),
                &[],
                |r| {
                    Ok((
                        r.get::<String>(1)?.unwrap_or_default(),
                        r.get::<String>(2)?,
                        r.get::<bool>(3)?.unwrap_or(false),
                    ))
                },
            )?;
            Ok::<_, pgrx::spi::Error>(rows.into_iter().next())
        })
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: guard check of a function on Citus failed: {e}"));
    let Some((function, table, own)) = found else {
        return;
    };
    let mut f = serde_json::Map::new();
    f.insert("function".into(), function.clone().into());
    if let Some(t) = &table {
        f.insert("table".into(), t.clone().into());
    }
    if own {
        errors::refuse(
            "guard_refused",
            f,
            errors::INSUFFICIENT_PRIVILEGE,
            format!("function {function} is pg_tenancy's and is not changed on a worker: every node's policies and triggers run it"),
            "pg_tenancy's functions change with the extension: run ALTER EXTENSION pg_tenancy UPDATE on the coordinator, which Citus carries to every node.",
        );
    }
    let table = table.unwrap_or_default();
    errors::refuse(
        "guard_refused",
        f,
        errors::INSUFFICIENT_PRIVILEGE,
        format!("function {function} is run by protected Citus table \"{table}\" and its shards: on Citus it is changed on the coordinator, by a superuser"),
        "Change it on the coordinator, as a superuser (a trusted migration role), with citus.enable_ddl_propagation on: Citus carries it to every node over its own connections. A change on one node alone would run there unseen from the coordinator.",
    );
}

/// Whether `rel` is, on this node, a shard or copy of a protected Citus table (its shell on a
/// worker, or a shard found by its name; not the coordinator's table itself, which
/// `tenancy.protected_table` lists): the DDL guard's checks
/// before a command runs (`src/protection/guard.rs`) apply to it as to a protected table.
pub fn guarded(rel: pg_sys::Oid) -> bool {
    guarded_relation(rel, false)
}

/// Whether `rel` is a protected Citus table on this node: the coordinator's table itself, its
/// shell on a worker, or one of its shards (found by its name). Renaming one, or moving it to
/// another schema, would break the name by which Citus and the guard find its shards.
pub fn citus_protected_anywhere(rel: pg_sys::Oid) -> bool {
    guarded_relation(rel, true)
}

/// Whether schema `schema` (by name) holds a protected Citus table, or on a worker its shards
/// or shells: whether a record of `tenancy.citus_protection` names a relation of that schema.
/// Shards live in their table's schema, so the records' names, read on any node, answer for
/// every node.
pub fn schema_holds_guarded(schema: &str) -> bool {
    // SAFETY: creating_extension is this backend's own flag.
    if unsafe { pg_sys::creating_extension } {
        return false;
    }
    catalog::with_owner_reading_locally(|| {
        Spi::connect_mut(|c| {
            let records = local_copy(c)?;
            Ok::<_, pgrx::spi::Error>(
                catalog::fresh_select(
                    &format!(
                        "SELECT EXISTS (SELECT FROM {records} p \
                           CROSS JOIN LATERAL pg_catalog.parse_ident(p.relation) AS i(parts) \
                          WHERE pg_catalog.cardinality(i.parts) = 2 AND i.parts[1] = $1)"
                    ),
                    Some(1),
                    &[schema.into()],
                    |r| r.get::<bool>(1),
                )?
                .into_iter()
                .flatten()
                .next()
                .unwrap_or(false),
            )
        })
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: guard check on Citus failed: {e}"))
}

/// On a worker, also a relation Citus's metadata does not know that is named as a
/// shard of a recorded table in its schema (`<table>_<shard id>`, or a long name as Citus
/// shortens it), whose shard id the metadata does not know either (a placement a shard move is
/// building is a known shard without a placement here yet, and is Citus's to build), as the
/// DDL check after a command finds one: a table's owner whose connection
/// carried Citus's name took a shard out of the metadata with `worker_drop_distributed_table`,
/// renamed it, turned its row security off and read every tenant's rows (a reviewer's pass;
/// the rename was refused only where the metadata knew the shard).
fn guarded_relation(rel: pg_sys::Oid, with_coordinators: bool) -> bool {
    if rel == pg_sys::InvalidOid
        || !crate::pg::citus::in_database()
        // SAFETY: creating_extension is this backend's own flag.
        || unsafe { pg_sys::creating_extension }
    {
        return false;
    }
    catalog::with_owner_reading_locally(|| {
        Spi::connect_mut(|c| {
            show_shards(c)?;
            let records = local_copy(c)?;
            // With a snapshot taken now (see refuse_drift).
            Ok::<_, pgrx::spi::Error>(
                catalog::fresh_select(
                    &format!("SELECT EXISTS (SELECT FROM pg_catalog.pg_class r JOIN {records} p ON \
                          p.relation = (SELECT d.logicalrelid::text FROM pg_catalog.pg_dist_partition d WHERE d.logicalrelid = r.oid) \
                       OR p.relation = (SELECT s.logicalrelid::text FROM pg_catalog.pg_dist_shard s \
                                 WHERE s.shardid = pg_catalog.substring(r.relname::text, '_([0-9]{{1,18}})$')::bigint \
                                   AND pg_catalog.to_regclass(pg_catalog.shard_name(s.logicalrelid, s.shardid, false)) = r.oid \
                                   AND EXISTS (SELECT FROM pg_catalog.pg_dist_placement pl WHERE pl.shardid = s.shardid \
                                                 AND pl.groupid = (SELECT groupid FROM pg_catalog.pg_dist_local_group))) \
                       OR (NOT pg_catalog.citus_is_coordinator() \
                           AND NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition d WHERE d.logicalrelid = r.oid) \
                           AND NOT EXISTS (SELECT FROM pg_catalog.pg_dist_shard s \
                                            WHERE s.shardid = pg_catalog.substring(r.relname::text, '_([0-9]{{1,18}})$')::bigint) \
                           AND EXISTS (SELECT FROM pg_catalog.parse_ident(p.relation) AS i(parts) \
                                        WHERE pg_catalog.cardinality(i.parts) = 2 \
                                          AND i.parts[1] = (SELECT n.nspname::text FROM pg_catalog.pg_namespace n WHERE n.oid = r.relnamespace) \
                                          AND ((pg_catalog.starts_with(r.relname::text, i.parts[2] || '_') \
                                                AND pg_catalog.substr(r.relname::text, pg_catalog.length(i.parts[2]) + 2) ~ '^[0-9]{{6,18}}$') \
                                            OR (pg_catalog.octet_length(i.parts[2]) >= 40 \
                                                AND pg_catalog.starts_with(r.relname::text, pg_catalog.left(i.parts[2], 20)) \
                                                AND r.relname::text ~ '_[0-9a-f]{{8}}_[0-9]{{6,18}}$')))) \
                      WHERE r.oid = $1 \
                        AND ($2 OR NOT (pg_catalog.citus_is_coordinator() AND p.coordinator_relid = r.oid)))"),
                    Some(1),
                    &[rel.into(), with_coordinators.into()],
                    |r| r.get::<bool>(1),
                )?
                .into_iter()
                .flatten()
                .next()
                .unwrap_or(false),
            )
        })
    })
    .unwrap_or_else(|e| pgrx::error!("pg_tenancy: guard check on Citus failed: {e}"))
}

/// What a statement creates, or renames a function to, that could bear a name of pg_catalog's:
/// (whether it is a function, its name) for each (an operator's `COMMUTATOR` and `NEGATOR`
/// create shell operators of the names they give).
///
/// # Safety
/// `stmt` is a utility statement's parse tree, or null.
unsafe fn created_names(stmt: *mut pg_sys::Node) -> Vec<(bool, String)> {
    // SAFETY: (the caller's) a node's tag is its first field; each node is read as the type
    // its tag says, and its name lists are Lists of String nodes (the parser's).
    unsafe {
        if stmt.is_null() {
            return Vec::new();
        }
        let text = |s: *mut pg_sys::String| -> Option<String> {
            (!s.is_null() && !(*s).sval.is_null()).then(|| {
                std::ffi::CStr::from_ptr((*s).sval)
                    .to_string_lossy()
                    .into_owned()
            })
        };
        let last = |l: *mut pg_sys::List| -> Option<String> {
            if l.is_null() || (*l).length == 0 {
                return None;
            }
            text((*(*l).elements.add((*l).length as usize - 1)).ptr_value as *mut pg_sys::String)
        };
        let named = |n: *mut pg_sys::Node| -> Option<String> {
            if n.is_null() {
                return None;
            }
            match (*n).type_ {
                pg_sys::NodeTag::T_List => last(n as *mut pg_sys::List),
                pg_sys::NodeTag::T_TypeName => last((*(n as *mut pg_sys::TypeName)).names),
                pg_sys::NodeTag::T_String => text(n as *mut pg_sys::String),
                _ => None,
            }
        };
        match (*stmt).type_ {
            // Procedures too: one of a better-matching signature is chosen, and fails, where
            // Citus calls a function (an attacker's pass stopped every distributed transaction
            // with `public.assign_distributed_transaction_id(int, int, text)` as a procedure).
            pg_sys::NodeTag::T_CreateFunctionStmt => {
                let f = stmt as *mut pg_sys::CreateFunctionStmt;
                last((*f).funcname).map(|n| (true, n)).into_iter().collect()
            }
            pg_sys::NodeTag::T_DefineStmt => {
                let d = stmt as *mut pg_sys::DefineStmt;
                match (*d).kind {
                    // An aggregate is a function to the lookup of a call.
                    pg_sys::ObjectType::OBJECT_AGGREGATE => {
                        last((*d).defnames).map(|n| (true, n)).into_iter().collect()
                    }
                    pg_sys::ObjectType::OBJECT_OPERATOR => {
                        let mut out: Vec<(bool, String)> = last((*d).defnames)
                            .map(|n| (false, n))
                            .into_iter()
                            .collect();
                        let defs = (*d).definition;
                        if !defs.is_null() {
                            for k in 0..(*defs).length as usize {
                                let e =
                                    (*(*defs).elements.add(k)).ptr_value as *mut pg_sys::DefElem;
                                if e.is_null() || (*e).defname.is_null() {
                                    continue;
                                }
                                let key = std::ffi::CStr::from_ptr((*e).defname).to_bytes();
                                if key.eq_ignore_ascii_case(b"commutator")
                                    || key.eq_ignore_ascii_case(b"negator")
                                {
                                    out.extend(named((*e).arg).map(|n| (false, n)));
                                }
                            }
                        }
                        out
                    }
                    _ => Vec::new(),
                }
            }
            // A range type makes constructor functions of its own name and of its multirange
            // type's (a later pass shadowed Citus's call so with `CREATE TYPE
            // public.assign_distributed_transaction_id AS RANGE`).
            pg_sys::NodeTag::T_CreateRangeStmt => {
                let r = stmt as *mut pg_sys::CreateRangeStmt;
                let mut out = Vec::new();
                if let Some(n) = last((*r).typeName) {
                    // PostgreSQL's default multirange name: the first "range" made
                    // "multirange", or "_multirange" appended.
                    let multi = match n.find("range") {
                        Some(at) => format!("{}multirange{}", &n[..at], &n[at + 5..]),
                        None => format!("{n}_multirange"),
                    };
                    out.push((true, n));
                    out.push((true, multi));
                }
                let params = (*r).params;
                if !params.is_null() {
                    for k in 0..(*params).length as usize {
                        let e = (*(*params).elements.add(k)).ptr_value as *mut pg_sys::DefElem;
                        if !e.is_null()
                            && !(*e).defname.is_null()
                            && std::ffi::CStr::from_ptr((*e).defname)
                                .to_bytes()
                                .eq_ignore_ascii_case(b"multirange_type_name")
                        {
                            out.extend(named((*e).arg).map(|n| (true, n)));
                        }
                    }
                }
                out
            }
            pg_sys::NodeTag::T_RenameStmt => {
                let r = stmt as *mut pg_sys::RenameStmt;
                if matches!(
                    (*r).renameType,
                    pg_sys::ObjectType::OBJECT_FUNCTION
                        | pg_sys::ObjectType::OBJECT_PROCEDURE
                        | pg_sys::ObjectType::OBJECT_ROUTINE
                        | pg_sys::ObjectType::OBJECT_AGGREGATE
                ) && !(*r).newname.is_null()
                {
                    vec![(
                        true,
                        std::ffi::CStr::from_ptr((*r).newname)
                            .to_string_lossy()
                            .into_owned(),
                    )]
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }
    }
}

/// On Citus, before a utility statement (every node): no role but a superuser creates a
/// function, a procedure, an aggregate, a range type (its constructors) or an operator (also a
/// shell one, through another's `COMMUTATOR` or `NEGATOR`) of a name pg_catalog has, or renames
/// a routine to one, outside an extension's script. Citus's statements call pg_catalog's functions and operators
/// unqualified on the connections it opens as its superuser, and PostgreSQL chooses a better
/// matching overload in a schema on that connection's `search_path` (`public`) over
/// pg_catalog's: a table's owner with CREATE on `public` made
/// `public.assign_distributed_transaction_id(int, int, text)` on the workers (through
/// `run_command_on_workers`) and was a superuser there after Citus's next distributed
/// transaction (an attacker's pass). `verify()` reports such objects made before
/// (`catalog_name_shadowed`).
pub fn refuse_catalog_names(stmt: *mut pg_sys::Node) {
    // SAFETY: `stmt` is the statement being run (this callback's contract).
    let names = unsafe { created_names(stmt) };
    if names.is_empty()
        || !crate::pg::citus::in_database()
        // SAFETY: creating_extension is this backend's own flag (an extension's script runs).
        || unsafe { pg_sys::creating_extension }
        || crate::authz::is_superuser(crate::authz::caller())
    {
        return;
    }
    for (function, name) in names {
        let sql = if function {
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_proc WHERE proname OPERATOR(pg_catalog.=) $1 \
                AND pronamespace OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace)"
        } else {
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_operator WHERE oprname OPERATOR(pg_catalog.=) $1 \
                AND oprnamespace OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace)"
        };
        if catalog::read_one::<bool>(sql, &[name.as_str().into()]).unwrap_or(false) {
            refuse_catalog_name(function, &name);
        }
    }
}

/// On a Citus node, before a utility statement (every database of the node, since Citus is
/// preloaded in each): no role but a superuser sets, for a whole database
/// (`ALTER DATABASE ... SET`, `ALTER ROLE ALL IN DATABASE ... SET`), a `search_path` that puts
/// a schema before pg_catalog or is the session's own (`FROM CURRENT`), nor a `role` or
/// `session_authorization`. Citus's maintenance daemon runs its queries as its superuser in
/// every database with the database's settings, and names pg_catalog's relations unqualified
/// (`SELECT gid FROM pg_prepared_xacts ...`): a database owner that set `search_path = own,
/// pg_catalog` (which Citus carries to every node) and made a view `own.pg_prepared_xacts`
/// over a function of its own was a superuser on every node after the daemon's next round;
/// checked first only in the database connected to, it was set from another database, or for
/// every role in the database (attackers' passes). A `role` there made every superuser
/// connection, Citus's own, that role. A path that leaves pg_catalog out is searched after it,
/// and is let be. `verify()` reports such a setting made before (`catalog_behind_a_schema`).
pub fn refuse_database_wide_settings(stmt: *mut pg_sys::Node) {
    // SAFETY: `stmt` is the statement being run (this callback's contract); each node is read
    // as its tag says: an AlterDatabaseSetStmt's, or an AlterRoleSetStmt's (its role null for
    // ALL), VariableSetStmt, whose name is a NUL-terminated string and whose args are a List of
    // A_Const (one per element of the path, each a String for a schema's name).
    let refused = unsafe {
        if stmt.is_null() {
            return;
        }
        let set = match (*stmt).type_ {
            pg_sys::NodeTag::T_AlterDatabaseSetStmt => {
                (*(stmt as *mut pg_sys::AlterDatabaseSetStmt)).setstmt
            }
            pg_sys::NodeTag::T_AlterRoleSetStmt
                if (*(stmt as *mut pg_sys::AlterRoleSetStmt)).role.is_null() =>
            {
                (*(stmt as *mut pg_sys::AlterRoleSetStmt)).setstmt
            }
            _ => return,
        };
        if set.is_null() || (*set).name.is_null() {
            return;
        }
        let name = std::ffi::CStr::from_ptr((*set).name)
            .to_bytes()
            .to_ascii_lowercase();
        use pg_sys::VariableSetKind::*;
        match (name.as_slice(), (*set).kind) {
            (b"role" | b"session_authorization", VAR_SET_VALUE | VAR_SET_CURRENT) => true,
            (b"search_path", VAR_SET_CURRENT) => true,
            (b"search_path", VAR_SET_VALUE) if !(*set).args.is_null() => {
                let args = (*set).args;
                (0..(*args).length as usize)
                    .map(|i| (*(*args).elements.add(i)).ptr_value as *mut pg_sys::Node)
                    .position(|n| {
                        !n.is_null()
                            && (*n).type_ == pg_sys::NodeTag::T_A_Const
                            && (*(n as *mut pg_sys::A_Const)).val.node.type_
                                == pg_sys::NodeTag::T_String
                            && !(*(n as *mut pg_sys::A_Const)).val.sval.sval.is_null()
                            && std::ffi::CStr::from_ptr(
                                (*(n as *mut pg_sys::A_Const)).val.sval.sval,
                            )
                            .to_bytes()
                                == b"pg_catalog"
                    })
                    .is_some_and(|i| i > 0)
            }
            _ => false,
        }
    };
    if !refused || !crate::pg::citus::loaded() || crate::authz::is_superuser(crate::authz::caller())
    {
        return;
    }
    errors::refuse(
        "guard_refused",
        serde_json::Map::new(),
        errors::INSUFFICIENT_PRIVILEGE,
        "on Citus, only a superuser sets, for a whole database, a search_path that puts a schema before pg_catalog (or the session's own), a role or a session_authorization",
        "Citus's maintenance daemon runs as its superuser with the database's settings and names pg_catalog's relations unqualified: leave pg_catalog out of the path (it is then searched first), or name it first.",
    );
}

fn refuse_catalog_name(function: bool, name: &str) -> ! {
    let what = if function { "function" } else { "operator" };
    let mut f = serde_json::Map::new();
    f.insert(what.into(), name.into());
    errors::refuse(
        "guard_refused",
        f,
        errors::INSUFFICIENT_PRIVILEGE,
        format!("on Citus, only a superuser makes a {what} named \"{}\", as one of pg_catalog's", errors::clean(name)),
        "Citus calls pg_catalog's functions and operators unqualified on its own superuser connections, where one of the same name in a schema on the search_path may be chosen instead: name it otherwise.",
    );
}

#[cfg(test)]
mod tests {
    /// The statements sent to the workers run there over Citus's own connections, as the
    /// superuser, with that node's default search_path, on which a table's owner may create
    /// operators: an `=` (oid, regclass), an exact match pg_catalog lacks, was picked over
    /// pg_catalog's and ran as the superuser when an operator ran verify() (an attacker's pass).
    /// So every comparison in them names pg_catalog's operator.
    #[test]
    fn statements_run_on_the_workers_name_every_comparison_operator() {
        for (name, sql) in [
            ("SIGNATURE", super::SIGNATURE),
            ("FOREIGN_OBJECTS", super::FOREIGN_OBJECTS),
            ("FUNCTION_DEFINITIONS", super::FUNCTION_DEFINITIONS),
        ] {
            let words: Vec<&str> = sql.split_whitespace().collect();
            for (i, w) in words.iter().enumerate() {
                // `||` too: `text || name` (pg_get_userbyid's) has no exact match in
                // pg_catalog either (a reviewer's pass).
                let bare = matches!(
                    *w,
                    "=" | "<>" | "!=" | "~" | "!~" | "<" | ">" | "<=" | ">=" | "||"
                ) || w.eq_ignore_ascii_case("IN")
                    || w.eq_ignore_ascii_case("LIKE")
                    || w.eq_ignore_ascii_case("BETWEEN");
                assert!(
                    !bare,
                    "{name}: a bare operator `{w}` at `{}`",
                    words[i.saturating_sub(4)..(i + 4).min(words.len())].join(" ")
                );
            }
        }
    }
}
