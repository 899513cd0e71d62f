//! The Citus suite: pg_tenancy on a coordinator and two workers, started by
//! `tests/citus/run.sh` (which exports `PGHOST`/`PGPORT` of the coordinator,
//! `TENANCY_CITUS_PORTS` of every node, coordinator first, and `TENANCY_IT_DB`). Clients connect
//! over sockets as the NOSUPERUSER NOBYPASSRLS roles of `setup.sql`; the superuser only makes
//! tenants and keys.
//!
//! What it covers so far (issue #29): pg_tenancy's catalog is one set of Citus reference tables,
//! the same on every node, so a token binds on any node and a suspension or revocation made on
//! the coordinator reaches every node's sessions from their next statement.

#[path = "../integration/tests/common/mod.rs"]
mod common;
use common::*;
use postgres::{Client, NoTls};

/// The nodes' ports, the coordinator first.
fn ports() -> Vec<u16> {
    std::env::var("TENANCY_CITUS_PORTS")
        .expect("TENANCY_CITUS_PORTS: run through tests/citus/run.sh")
        .split(',')
        .map(|p| p.parse().unwrap())
        .collect()
}

/// A connection to node `i` (0 is the coordinator) as `user`.
/// A connection to the `postgres` database of node `i` as `user`: another database of the node,
/// where Citus is not created.
fn node_postgres_db(i: usize, user: &str) -> Client {
    let mut c = postgres::Config::new();
    c.host("127.0.0.1")
        .port(ports()[i])
        .dbname("postgres")
        .user(user);
    c.connect(NoTls)
        .unwrap_or_else(|e| panic!("connect to node {i}'s postgres database as {user}: {e}"))
}

fn node(i: usize, user: &str) -> Client {
    // A Config of its own: `host` and `port` add to a Config's lists, they do not replace them.
    let mut c = postgres::Config::new();
    c.host("127.0.0.1");
    c.port(ports()[i]);
    c.dbname(&std::env::var("TENANCY_IT_DB").expect("TENANCY_IT_DB"));
    c.user(user);
    let mut c = c
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("connect to node {i} as {user}: {e}"));
    // The node is the one asked for.
    let port: i32 = c
        .query_one("SELECT current_setting('port')::int", &[])
        .unwrap()
        .get(0);
    assert_eq!(port, i32::from(ports()[i]), "connected to the wrong node");
    c
}

/// A connection to node `i` as the application role, checked not to bypass row security.
fn app_on(i: usize) -> Client {
    let mut c = node(i, APP);
    assert_not_privileged(&mut c);
    c
}

/// A placement on a worker of a shard of `public.<table>` (the shard of `tenant`'s rows, or the
/// first): the shard's name without its schema, and the worker's index in [`ports`].
fn a_placement(su: &mut Client, table: &str, tenant: Option<&str>) -> (String, usize) {
    let r = su
        .query_one(
            &format!(
                "SELECT (SELECT i[pg_catalog.array_upper(i, 1)] FROM pg_catalog.parse_ident(shard_name('public.{table}'::regclass, s.shardid)::text) AS i), n.nodeport \
                   FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid) \
                   JOIN pg_dist_node n ON n.groupid = p.groupid \
                  WHERE s.logicalrelid = 'public.{table}'::regclass AND n.groupid <> 0 \
                    AND ($1::text IS NULL OR s.shardid = get_shard_id_for_distribution_column('public.{table}', $1::text::uuid)) \
                  ORDER BY s.shardid LIMIT 1"
            ),
            &[&tenant.map(|t| t.to_string())],
        )
        .unwrap();
    let port: i32 = r.get(1);
    let w = ports()
        .iter()
        .position(|p| i32::from(*p) == port)
        .expect("the placement's node is one of the cluster's");
    (r.get(0), w)
}

/// A NOSUPERUSER login role `owner` with CREATE on the database on every node (to make and
/// rename schemas there, with Citus's DDL propagation off on a worker).
fn owner_who_may_create_schemas(su: &mut Client, owner: &str) {
    su.batch_execute(&format!(
        "CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS"
    ))
    .unwrap();
    let db = std::env::var("TENANCY_IT_DB").unwrap();
    for i in 0..ports().len() {
        node(i, "postgres")
            .batch_execute(&format!(
                "SET citus.enable_ddl_propagation = off; GRANT CREATE ON DATABASE \"{db}\" TO {owner}"
            ))
            .unwrap();
    }
}

/// `table` (qualified) created, distributed by its tenant column, protected without the trail
/// and given to `owner`.
fn protected_table_of(su: &mut Client, table: &str, owner: &str) {
    setup_in_one_transaction(
        su,
        &[
            format!("CREATE TABLE {table} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int)"),
            format!("SELECT create_distributed_table('{table}', 'tenant_id')"),
            format!("SELECT tenancy.protect('{table}', audit => false)"),
            format!("ALTER TABLE {table} OWNER TO {owner}"),
        ],
    );
}

const CATALOG_TABLES: i64 = 14;

/// Run `statements` as the superuser in one transaction, one statement per query (Citus carries
/// a SET LOCAL to the workers as the text of the query it came in), in Citus's sequential mode
/// from the start: a table distributed and protected in one transaction has policies that name
/// it, which the workers see only over the connection that created it.
fn setup_in_one_transaction(su: &mut Client, statements: &[String]) {
    let mut tx = su.transaction().unwrap();
    tx.batch_execute("SET LOCAL citus.multi_shard_modify_mode = 'sequential'")
        .unwrap();
    for sql in statements {
        tx.batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {}", message(&e)));
    }
    tx.commit().unwrap();
}

/// Run `sql` (one management call, all or nothing) as a user would on Citus: once more if
/// Citus's distributed deadlock detector cancelled it (40P01). Seen twice in CI on the
/// operator's re-protect below; the cycle `tests/citus/run.sh` now logs showed protect()'s own
/// distributed transaction waiting for itself (its statements reached a worker's shards over
/// several connections in Citus's parallel mode), since fixed: protect() runs them in
/// sequential mode. Kept for the detector's other false cycles (it counts every backend of a
/// node outside a distributed transaction as one). Any other error, or a second
/// cancellation, fails the test.
fn run_once_more_after_a_distributed_deadlock(c: &mut Client, sql: &str) {
    if let Err(e) = c.batch_execute(sql) {
        assert_eq!(sqlstate(&e), "40P01", "{sql}: {}", message(&e));
        eprintln!("cancelled by Citus's distributed deadlock detector, run once more: {sql}");
        c.batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {}", message(&e)));
    }
}

/// Tenants A and B each insert one row (its slug in `v`) into `public.<table>` (or `table`
/// itself when schema-qualified), bound with a token in a transaction; then each reads back its
/// own row and nothing else.
fn each_tenant_writes_and_reads_only_its_own(c: &mut Client, f: &Fixture, table: &str) {
    let table = if table.contains('.') {
        table.to_string()
    } else {
        format!("public.{table}")
    };
    let table = table.as_str();
    for tenant in [&f.a, &f.b] {
        let mut tx = c.transaction().unwrap();
        tx.execute("SELECT tenancy.bind($1)", &[&f.token(tenant, "ann")])
            .unwrap();
        tx.execute(
            &format!("INSERT INTO {table} (id, v) VALUES (1, $1)"),
            &[tenant],
        )
        .unwrap();
        tx.commit().unwrap();
    }
    for tenant in [&f.a, &f.b] {
        let mut tx = c.transaction().unwrap();
        tx.execute("SELECT tenancy.bind($1)", &[&f.token(tenant, "ann")])
            .unwrap();
        let seen: Vec<String> = tx
            .query(&format!("SELECT v FROM {table}"), &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(seen, [tenant.clone()], "{table}");
        tx.rollback().unwrap();
    }
}

#[test]
fn the_catalog_is_one_set_of_reference_tables_on_every_node() {
    for i in 0..ports().len() {
        let n: i64 = node(i, "postgres")
            .query_one(
                "SELECT count(*) FROM pg_dist_partition \
                  WHERE logicalrelid::text LIKE 'tenancy.%' AND partmethod = 'n' AND repmodel = 't'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, CATALOG_TABLES, "node {i}");
    }
    // Done once: a second call finds nothing left to distribute.
    let again: Vec<String> = superuser()
        .query_one("SELECT tenancy.citus_setup()", &[])
        .unwrap()
        .get(0);
    assert!(again.is_empty(), "{again:?}");
}

/// What a role made in public takes no part in pg_tenancy's catalog work on any node: an
/// UPDATE of a reference table runs on every worker as the superuser with the worker's default
/// search_path, from Citus's print of it (pg_catalog's functions unqualified), and
/// `citus_setup()` runs as the superuser who calls it. A role's exact-typed
/// `array_remove(text[], text)` was chosen on the workers by `drop_role`, and its
/// `=(regclass, regclass)` by `citus_setup()` (an attacker's pass, by reading Citus's deparser).
#[test]
fn catalog_writes_and_citus_setup_run_nothing_a_role_made_in_public() {
    let f = Fixture::new();
    let role = format!("cit_shadowed_{}", std::process::id());
    let mut su = superuser();
    su.batch_execute(&format!("CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS"))
        .unwrap();
    let mut op = node(0, OPERATOR);
    op.execute("SELECT tenancy.create_role($1, 'auditor')", &[&f.a])
        .unwrap();
    op.execute(
        "SELECT tenancy.map_role($1::text::regrole, $2, '{member,auditor}')",
        &[&role, &f.a],
    )
    .unwrap();
    let plant = "SET citus.enable_ddl_propagation = off; \
                 CREATE FUNCTION public.array_remove(a text[], e text) RETURNS text[] LANGUAGE plpgsql \
                   AS $$ BEGIN RAISE EXCEPTION 'shadow array_remove called as %', current_user; END $$; \
                 CREATE FUNCTION public.shadow_eq(a regclass, b regclass) RETURNS boolean LANGUAGE plpgsql \
                   AS $$ BEGIN RAISE EXCEPTION 'shadow = called as %', current_user; END $$; \
                 CREATE OPERATOR public.= (LEFTARG = regclass, RIGHTARG = regclass, FUNCTION = public.shadow_eq)";
    let unplant = "SET citus.enable_ddl_propagation = off; \
                   DROP OPERATOR IF EXISTS public.= (regclass, regclass); \
                   DROP FUNCTION IF EXISTS public.shadow_eq(regclass, regclass); \
                   DROP FUNCTION IF EXISTS public.array_remove(text[], text)";
    for i in 0..ports().len() {
        node(i, "postgres").batch_execute(plant).unwrap();
    }
    let dropped = op.execute("SELECT tenancy.drop_role($1, 'auditor')", &[&f.a]);
    let setup = su.query_one("SELECT tenancy.citus_setup()", &[]);
    for i in 0..ports().len() {
        node(i, "postgres").batch_execute(unplant).unwrap();
    }
    dropped.unwrap_or_else(|e| panic!("drop_role: {}", message(&e)));
    let again: Vec<String> = setup
        .unwrap_or_else(|e| panic!("citus_setup: {}", message(&e)))
        .get(0);
    assert!(again.is_empty(), "{again:?}");
    // The mapping lost the dropped role on every node's copy, and kept the other.
    for i in 0..ports().len() {
        let roles: Vec<String> = node(i, "postgres")
            .query_one(
                "SELECT tenant_roles FROM tenancy.role_mapping WHERE role = $1::text::regrole",
                &[&role],
            )
            .unwrap()
            .get(0);
        assert_eq!(roles, ["member"], "node {i}");
    }
    // pg_tenancy's reads of its catalog may reach a node's copy over a connection (any session
    // can turn Citus's local execution off), printed again with pg_catalog's functions
    // unqualified and run with the node's default search_path: a role's exact-typed
    // array_agg(text) in public took part in the tenant's load at a bind, as the superuser (an
    // attacker's pass). The load calls no polymorphic function.
    let plant_agg = "SET citus.enable_ddl_propagation = off; \
         CREATE FUNCTION public.shadow_sfunc(s text[], v text) RETURNS text[] LANGUAGE plpgsql \
           AS $$ BEGIN RAISE EXCEPTION 'shadow array_agg called as %', current_user; END $$; \
         CREATE AGGREGATE public.array_agg(text) (sfunc = public.shadow_sfunc, stype = text[])";
    let unplant_agg = "SET citus.enable_ddl_propagation = off; \
         DROP AGGREGATE IF EXISTS public.array_agg(text); \
         DROP FUNCTION IF EXISTS public.shadow_sfunc(text[], text)";
    for i in 0..ports().len() {
        node(i, "postgres").batch_execute(plant_agg).unwrap();
    }
    // The mapped role's first statement loads its tenant (a token's bind with local
    // execution off is refused: its carrier would reach the node itself).
    let mut results = Vec::new();
    for i in 0..ports().len() {
        let mut c = node(i, &role);
        results.push(
            c.batch_execute(
                "SET citus.enable_local_execution = off; SELECT tenancy.current_tenant()",
            )
            .map_err(|e| format!("node {i}: {}", message(&e))),
        );
    }
    for i in 0..ports().len() {
        node(i, "postgres").batch_execute(unplant_agg).unwrap();
    }
    for r in results {
        r.unwrap_or_else(|e| panic!("bind: {e}"));
    }

    op.execute(
        "SELECT tenancy.unmap_role($1::text::regrole, $2)",
        &[&role, &f.a],
    )
    .unwrap();
    su.batch_execute(&format!("DROP ROLE {role}")).unwrap();

    // Citus's own statements to the workers call pg_catalog's lock_shard_resources(int,
    // bigint[]) unqualified with an int[] literal, as the superuser, before every write of a
    // reference table: a role's exact-typed one in public ran there, and so did one with a
    // third argument of a default (missed by the rule at first: a later pass). pg_tenancy
    // cannot change Citus's statements; verify() reports such functions as errors on Citus.
    let clean = op
        .query(
            "SELECT object FROM tenancy.verify() WHERE rule = 'catalog_name_shadowed'",
            &[],
        )
        .unwrap_or_else(|e| panic!("verify: {}", message(&e)));
    assert!(
        clean.is_empty(),
        "nothing of Citus's own or pg_tenancy's is reported: {:?}",
        clean
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    );
    su.batch_execute(
        "SET citus.enable_ddl_propagation = off; \
         CREATE FUNCTION public.lock_shard_resources(a int, b int[]) RETURNS void LANGUAGE sql AS 'SELECT'; \
         CREATE FUNCTION public.lock_shard_resources(a int, b int[], c int DEFAULT 0) RETURNS void LANGUAGE sql AS 'SELECT'",
    )
    .unwrap();
    let found = op.query(
        "SELECT severity, fix FROM tenancy.verify() WHERE rule = 'catalog_name_shadowed'",
        &[],
    );
    su.batch_execute(
        "SET citus.enable_ddl_propagation = off; DROP FUNCTION public.lock_shard_resources(int, int[]), \
         public.lock_shard_resources(int, int[], int)",
    )
    .unwrap();
    let found: Vec<(String, String)> = found
        .unwrap_or_else(|e| panic!("verify: {}", message(&e)))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for fix in [
        "DROP FUNCTION public.lock_shard_resources(integer,integer[]);",
        "DROP FUNCTION public.lock_shard_resources(integer,integer[],integer);",
    ] {
        assert!(found.contains(&("error".into(), fix.into())), "{found:?}");
    }
}

/// Every row of every catalog reference table, on node `i`, as JSON text sorted (roles and
/// tables by name: each node holds its own oids for them).
fn catalog_copy(i: usize) -> Vec<(String, Vec<String>)> {
    let mut c = node(i, "postgres");
    let tables: Vec<String> = c
        .query(
            "SELECT logicalrelid::text FROM pg_dist_partition \
              WHERE logicalrelid::text LIKE 'tenancy.%' AND partmethod = 'n' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    tables
        .into_iter()
        .map(|t| {
            let rows: Vec<String> = c
                .query(
                    &format!("SELECT to_jsonb(r)::text FROM {t} r ORDER BY 1"),
                    &[],
                )
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            (t, rows)
        })
        .collect()
}

/// The catalog's copies on the workers say what the coordinator's says.
fn assert_catalog_copies_agree(after: &str) {
    let coordinator = catalog_copy(0);
    for i in 1..ports().len() {
        let worker = catalog_copy(i);
        for ((t, want), (_, got)) in coordinator.iter().zip(worker.iter()) {
            let missing: Vec<_> = want.iter().filter(|r| !got.contains(r)).collect();
            let extra: Vec<_> = got.iter().filter(|r| !want.contains(r)).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "after {after}, node {i}'s {t}: missing {missing:?}, extra {extra:?}"
            );
        }
    }
}

/// Management calls change every node's copy of the catalog alike: a statement that changed
/// rows of a reference table by a role's or a table's oid, bound as a parameter, reached the
/// workers with the coordinator's number, which names nothing there (each node has its own
/// oids), so `unmap_role`, `revoke` of one table and `revoke_support` left the workers' rows
/// as they were: a mapping, a grant or a support grant still in force for a client of a
/// worker (found by the Citus test of drop_role's change).
#[test]
fn every_nodes_copy_of_the_catalog_follows_grants_revocations_and_unmappings() {
    let f = Fixture::new();
    let pid = std::process::id();
    let (t, role) = (format!("catcopies_{pid}"), format!("cit_copies_{pid}"));
    let mut su = superuser();
    // A role whose name must be quoted.
    setup_in_one_transaction(
        &mut su,
        &[
            format!("CREATE TABLE public.{t} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int)"),
            format!("SELECT create_distributed_table('public.{t}', 'tenant_id')"),
            format!("SELECT tenancy.protect('public.{t}', audit => false)"),
            format!("CREATE ROLE \"{role}X\" LOGIN NOSUPERUSER NOBYPASSRLS"),
            format!("GRANT SELECT ON public.{t} TO {APP}"),
        ],
    );
    let mut op = node(0, OPERATOR);
    let run = |c: &mut Client, sql: &str, args: &[&(dyn postgres::types::ToSql + Sync)]| {
        c.execute(sql, args)
            .unwrap_or_else(|e| panic!("{sql}: {}", message(&e)));
    };
    let mapped = format!("\"{role}X\"");
    run(
        &mut op,
        "SELECT tenancy.create_role($1, 'auditor')",
        &[&f.a],
    );
    run(
        &mut op,
        "SELECT tenancy.map_role($1::text::regrole, $2, '{member,auditor}')",
        &[&mapped, &f.a],
    );
    run(
        &mut op,
        &format!("SELECT tenancy.grant($1, 'auditor', 'public.{t}', '{{select,update}}')"),
        &[&f.a],
    );
    run(
        &mut op,
        "SELECT tenancy.grant($1, 'viewer', NULL, '{insert}')",
        &[&f.a],
    );
    // A key registered by the key admin names the key admin on every node (`session_user` in
    // the statement was evaluated on each node as the connection's user).
    node(0, KEY_ADMIN)
        .execute(
            "SELECT tenancy.add_key($1, 'HS256', $2)",
            &[&format!("copies-key-{pid}"), &HS_SECRET],
        )
        .unwrap();
    assert_catalog_copies_agree("map_role and grant");
    // The grant holds on the shards: a subject whose only role is auditor reads the table
    // (the workers refused it when their copy named the coordinator's oid for the table).
    run(
        &mut op,
        "SELECT tenancy.add_member($1, 'aud', 'auditor')",
        &[&f.a],
    );
    let mut c = app_on(0);
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "aud")])
        .unwrap();
    tx.query_one(&format!("SELECT count(*) FROM public.{t}"), &[])
        .unwrap_or_else(|e| panic!("auditor's select: {}", message(&e)));
    tx.rollback().unwrap();
    run(
        &mut op,
        &format!("SELECT tenancy.revoke($1, 'auditor', 'public.{t}', '{{update}}')"),
        &[&f.a],
    );
    run(
        &mut op,
        "SELECT tenancy.revoke($1, 'viewer', NULL, '{insert}')",
        &[&f.a],
    );
    assert_catalog_copies_agree("revoke");
    run(&mut op, "SELECT tenancy.drop_role($1, 'auditor')", &[&f.a]);
    assert_catalog_copies_agree("drop_role");
    run(
        &mut op,
        "SELECT tenancy.unmap_role($1::text::regrole, $2)",
        &[&mapped, &f.a],
    );
    assert_catalog_copies_agree("unmap_role");
    su.execute("SELECT tenancy.add_member($1, 'boss', 'admin')", &[&f.a])
        .unwrap();
    let mut admin = app_on(0);
    let mut tx = admin.transaction().unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "boss")])
        .unwrap();
    tx.execute(
        &format!("SELECT tenancy.grant_support('{OPERATOR}', '1 hour')"),
        &[],
    )
    .unwrap();
    tx.commit().unwrap();
    assert_catalog_copies_agree("grant_support");
    let mut tx = admin.transaction().unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "boss")])
        .unwrap();
    tx.execute(&format!("SELECT tenancy.revoke_support('{OPERATOR}')"), &[])
        .unwrap();
    tx.commit().unwrap();
    assert_catalog_copies_agree("revoke_support");
    // DROP ROLE on the coordinator ends the role's mapping on every node first (left, the
    // workers' copies named an oid that a role made later there may be given).
    run(
        &mut op,
        "SELECT tenancy.map_role($1::text::regrole, $2)",
        &[&mapped, &f.b],
    );
    assert_catalog_copies_agree("map_role again");
    su.batch_execute(&format!("DROP ROLE \"{role}X\"")).unwrap();
    assert_catalog_copies_agree("DROP ROLE");
    for i in 0..ports().len() {
        let left: i64 = node(i, "postgres")
            .query_one(
                "SELECT count(*) FROM tenancy.role_mapping WHERE tenant_id = $1::text::uuid",
                &[&f.b_id],
            )
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "node {i}'s copy still maps the dropped role");
    }
    // DROP TABLE of a protected table ends its grants on every node.
    run(
        &mut op,
        "SELECT tenancy.create_role($1, 'auditor')",
        &[&f.b],
    );
    run(
        &mut op,
        &format!("SELECT tenancy.grant($1, 'auditor', 'public.{t}', '{{select}}')"),
        &[&f.b],
    );
    assert_catalog_copies_agree("grant again");
    su.batch_execute(&format!("DROP TABLE public.{t}")).unwrap();
    assert_catalog_copies_agree("DROP TABLE");
    for i in 0..ports().len() {
        let left: i64 = node(i, "postgres")
            .query_one(
                "SELECT count(*) FROM tenancy.role_privilege WHERE tenant_id = $1::text::uuid AND role = 'auditor'",
                &[&f.b_id],
            )
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "node {i}'s copy still grants on the dropped table");
    }
}

/// Citus prints the values of the statements it sends the workers with the session's output
/// settings, and each worker reads them with its own: management calls made under
/// `DateStyle = 'SQL, DMY'` stored another date on the workers (a mapping's creation time, a
/// subject revocation's cut-off), and under `standard_conforming_strings = off` a backslash
/// doubled there, so that the mapping's removal matched nothing on the workers and the role
/// stayed bound to the tenant there (an attacker's pass; the date is ambiguous on the 1st to
/// the 12th of a month, the backslash always).
#[test]
fn every_nodes_copy_of_the_catalog_is_the_same_whatever_the_callers_output_settings() {
    let f = Fixture::new();
    let pid = std::process::id();
    let role = format!("cit_styles_{pid}");
    let mut su = superuser();
    su.batch_execute(&format!("CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS"))
        .unwrap();
    let styles = "SET DateStyle = 'SQL, DMY'; SET IntervalStyle = 'sql_standard'; \
                  SET standard_conforming_strings = off; SET extra_float_digits = -15; \
                  SET bytea_output = 'escape'";
    let mut op = node(0, OPERATOR);
    op.batch_execute(styles).unwrap();
    let run = |c: &mut Client, sql: &str, args: &[&(dyn postgres::types::ToSql + Sync)]| {
        c.execute(sql, args)
            .unwrap_or_else(|e| panic!("{sql}: {}", message(&e)));
    };
    run(
        &mut op,
        "SELECT tenancy.map_role($1::text::regrole, $2)",
        &[&role, &f.b],
    );
    run(
        &mut op,
        "SELECT tenancy.revoke_subject($1, $2)",
        &[&f.a, &"back\\slash"],
    );
    su.execute("SELECT tenancy.add_member($1, 'boss', 'admin')", &[&f.a])
        .unwrap();
    let mut admin = app_on(0);
    admin.batch_execute(styles).unwrap();
    let mut tx = admin.transaction().unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "boss")])
        .unwrap();
    tx.execute(
        &format!("SELECT tenancy.grant_support('{OPERATOR}', '1 hour')"),
        &[],
    )
    .unwrap();
    tx.commit().unwrap();
    assert_catalog_copies_agree("writes under the caller's output settings");
    run(
        &mut op,
        "SELECT tenancy.unmap_role($1::text::regrole, $2)",
        &[&role, &f.b],
    );
    assert_catalog_copies_agree("unmap_role under the caller's output settings");
    for i in 0..ports().len() {
        let left: i64 = node(i, "postgres")
            .query_one(
                "SELECT count(*) FROM tenancy.role_mapping WHERE tenant_id = $1::text::uuid",
                &[&f.b_id],
            )
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "node {i}'s copy still maps the role");
    }
    su.batch_execute(&format!("DROP ROLE {role}")).unwrap();

    // A copy that differs all the same (made so before the fix, or changed on one node past
    // Citus) is reported by verify(): here the revocation moved a year back on one worker.
    let drift = |op: &mut Client| -> Vec<String> {
        op.query(
            "SELECT object FROM tenancy.verify() WHERE rule = 'citus_catalog_drift'",
            &[],
        )
        .unwrap_or_else(|e| panic!("verify: {}", message(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    // A worker's own TimeZone and IntervalStyle are no drift (its rows printed otherwise).
    let db = std::env::var("TENANCY_IT_DB").expect("TENANCY_IT_DB");
    let defaults = |set: &str| {
        node(1, "postgres")
            .batch_execute(&format!(
                "SET citus.enable_ddl_propagation = off; ALTER DATABASE {db} {set}"
            ))
            .unwrap()
    };
    defaults("SET TimeZone = 'Asia/Kolkata'");
    defaults("SET IntervalStyle = 'sql_standard'");
    let control = drift(&mut op);
    defaults("RESET TimeZone");
    defaults("RESET IntervalStyle");
    assert_eq!(control, Vec::<String>::new(), "the control: no drift");
    let mut w = node(1, "postgres");
    let shard: String = w
        .query_one(
            "SELECT shard_name('tenancy.subject_revocation'::regclass, shardid) FROM pg_dist_shard \
              WHERE logicalrelid = 'tenancy.subject_revocation'::regclass",
            &[],
        )
        .unwrap()
        .get(0);
    let shift = |w: &mut Client, by: &str| {
        w.batch_execute(&format!(
            "SET citus.enable_manual_changes_to_shards = on; \
             UPDATE {shard} SET issued_before = issued_before {by} interval '1 year' \
              WHERE tenant_id = '{}' AND subject = 'back\\slash'",
            f.a_id
        ))
        .unwrap()
    };
    shift(&mut w, "-");
    let found = drift(&mut op);
    shift(&mut w, "+");
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("tenancy.subject_revocation on "),
        "{found:?}"
    );
    assert_eq!(drift(&mut op), Vec::<String>::new(), "mended");
}

/// Management calls made in a session of a worker wrote that node's copies with ids the
/// coordinator's sequences hand out too (`grant_support` failed on a duplicate key) and past
/// the coordinator's locks: refused there (55000), with nothing written on any node.
#[test]
fn management_calls_are_refused_on_a_worker() {
    let f = Fixture::new();
    let slug = format!("on-worker-{}", std::process::id());
    let mut op = node(1, OPERATOR);
    assert_not_privileged(&mut op);
    let e = op
        .query_one("SELECT tenancy.create_tenant($1)", &[&slug])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "{}", message(&e));
    assert!(message(&e).contains("coordinator"), "{}", message(&e));
    for i in 0..ports().len() {
        let n: i64 = node(i, "postgres")
            .query_one(
                "SELECT count(*) FROM tenancy.tenant WHERE slug = $1",
                &[&slug],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "node {i}");
    }
    superuser()
        .execute("SELECT tenancy.add_member($1, 'boss', 'admin')", &[&f.a])
        .unwrap();
    let mut admin = app_on(1);
    let mut tx = admin.transaction().unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "boss")])
        .unwrap();
    let e = tx
        .execute(
            &format!("SELECT tenancy.grant_support('{OPERATOR}', '1 hour')"),
            &[],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "{}", message(&e));
    tx.rollback().unwrap();
    assert_catalog_copies_agree("management refused on a worker");
}

/// With `citus.propagate_set_commands = 'local'`, Citus sends a transaction's `SET LOCAL`
/// commands to every connection it uses in it, those it opens as the catalog's owner for
/// pg_tenancy's writes included: a tenant admin's or an operator's `SET LOCAL search_path` to
/// a schema of its own made Citus's own unqualified calls run its function as the superuser on
/// every worker (an attacker's pass). A management call after a `SET LOCAL` (and a `SET
/// LOCAL` after one) is refused in a transaction on Citus, nothing written.
#[test]
fn management_calls_and_set_local_do_not_share_a_transaction() {
    let f = Fixture::new();
    let subject = format!("set-local-{}", std::process::id());
    let mut op = node(0, OPERATOR);
    // A SET LOCAL of search_path is not carried at all (see
    // a_roles_carried_settings_never_reach_citus_superuser_connections): the management call
    // after it runs, nothing of it reaches another node. One that is carried refuses the
    // management call after it.
    let mut tx = op.transaction().unwrap();
    tx.batch_execute("SET LOCAL search_path = public, pg_catalog")
        .unwrap();
    tx.execute("SELECT tenancy.revoke_subject($1, $2)", &[&f.a, &subject])
        .unwrap_or_else(|e| panic!("after a SET LOCAL not carried: {}", message(&e)));
    tx.rollback().unwrap();
    let mut tx = op.transaction().unwrap();
    tx.batch_execute("SET LOCAL work_mem = '1MB'").unwrap();
    let e = tx
        .execute("SELECT tenancy.revoke_subject($1, $2)", &[&f.a, &subject])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "{}", message(&e));
    tx.rollback().unwrap();
    let mut tx = op.transaction().unwrap();
    tx.execute("SELECT tenancy.revoke_subject($1, $2)", &[&f.a, &subject])
        .unwrap();
    let e = tx.batch_execute("SET LOCAL work_mem = '2MB'").unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "{}", message(&e));
    tx.rollback().unwrap();
    // One that is not carried (applied on this node only) follows it.
    let mut tx = op.transaction().unwrap();
    tx.execute("SELECT tenancy.revoke_subject($1, $2)", &[&f.a, &subject])
        .unwrap();
    tx.batch_execute("SET LOCAL standard_conforming_strings = off")
        .unwrap();
    tx.rollback().unwrap();
    // A tenant admin's call, the same.
    superuser()
        .execute("SELECT tenancy.add_member($1, 'boss', 'admin')", &[&f.a])
        .unwrap();
    let mut admin = app_on(0);
    let mut tx = admin.transaction().unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "boss")])
        .unwrap();
    tx.batch_execute("SET LOCAL statement_timeout = '1min'")
        .unwrap();
    let e = tx
        .execute("SELECT tenancy.add_member($1, 'bob', 'member')", &[&f.a])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "{}", message(&e));
    tx.rollback().unwrap();
    // Whatever form the carried command takes (Citus carries RESET, RESET ALL and SET
    // TRANSACTION too, with the rest of the query's text: a later pass ran a DO block so),
    // and whichever call then runs statements as the catalog's owner (audit_verify reads the
    // trail through Citus).
    for (carried, call) in [
        ("RESET work_mem", "SELECT tenancy.revoke_subject($1, 'x')"),
        (
            "SET LOCAL work_mem TO DEFAULT",
            "SELECT tenancy.revoke_subject($1, 'x')",
        ),
        (
            "SET TRANSACTION READ WRITE",
            "SELECT tenancy.revoke_subject($1, 'x')",
        ),
        (
            "SET LOCAL work_mem = '8MB'",
            "SELECT count(*) FROM tenancy.audit_verify($1)",
        ),
        (
            "DO $$ BEGIN EXECUTE 'RESET work_mem'; END $$",
            "SELECT tenancy.revoke_subject($1, 'x')",
        ),
    ] {
        let mut tx = op.transaction().unwrap();
        tx.batch_execute(carried).unwrap();
        let e = tx.execute(call, &[&f.a]).unwrap_err();
        assert_eq!(sqlstate(&e), "0A000", "{carried}; {call}: {}", message(&e));
        tx.rollback().unwrap();
    }
    // A setting that is not carried with a value is not carried to its default, nor reset,
    // either (an attacker's pass had `RESET search_path` and `SET LOCAL role TO DEFAULT` sent to
    // Citus's superuser connections); RESET ALL runs on this node only. The management call
    // after them runs.
    for local in [
        "RESET search_path",
        "SET LOCAL search_path TO DEFAULT",
        "SET LOCAL search_path FROM CURRENT",
        "SET LOCAL role TO DEFAULT",
        "SET LOCAL DateStyle TO DEFAULT",
        "RESET ALL",
    ] {
        let mut tx = op.transaction().unwrap();
        tx.batch_execute(local).unwrap();
        tx.execute("SELECT tenancy.revoke_subject($1, $2)", &[&f.a, &subject])
            .unwrap_or_else(|e| panic!("after {local}, not carried: {}", message(&e)));
        tx.rollback().unwrap();
    }
    // A DDL command is no management call: a SET LOCAL after it is carried as ever, and one
    // before it (Citus's own before its loopback DDL, in create_distributed_table_concurrently)
    // does not refuse it (the guard's check of every DDL was taken for a routed call: an
    // attacker's pass).
    for script in [
        "CREATE TEMP TABLE set_local_ddl (id int); SET LOCAL work_mem = '1MB'",
        "SET LOCAL citus.allow_nested_distributed_execution TO on; CREATE TEMP TABLE set_local_ddl (id int)",
    ] {
        let mut tx = op.transaction().unwrap();
        tx.batch_execute(script)
            .unwrap_or_else(|e| panic!("{script}: {}", message(&e)));
        tx.rollback().unwrap();
    }
    let mut tx = op.transaction().unwrap();
    tx.execute("SELECT tenancy.revoke_subject($1, $2)", &[&f.a, &subject])
        .unwrap();
    let e = tx.batch_execute("RESET work_mem").unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "{}", message(&e));
    tx.rollback().unwrap();
    // A prepared transaction's carried settings are not read afterwards: Citus left its
    // record pointing into the prepared transaction's freed memory (a reviewer's pass).
    let gid = format!("set_local_prepared_{}", std::process::id());
    op.batch_execute("BEGIN").unwrap();
    op.batch_execute("SET LOCAL work_mem = '1MB'").unwrap();
    op.batch_execute(&format!("PREPARE TRANSACTION '{gid}'"))
        .unwrap();
    superuser()
        .batch_execute(&format!("ROLLBACK PREPARED '{gid}'"))
        .unwrap();
    for _ in 0..2 {
        let mut tx = op.transaction().unwrap();
        tx.execute("SELECT tenancy.revoke_subject($1, $2)", &[&f.a, &subject])
            .unwrap_or_else(|e| panic!("after a prepared SET LOCAL: {}", message(&e)));
        tx.rollback().unwrap();
    }
    // set_config(..., true), which Citus does not carry, and SET LOCAL tenancy.carrier are not
    // refused; nothing was written by the refused calls.
    let mut tx = op.transaction().unwrap();
    tx.batch_execute("SELECT set_config('search_path', 'public, pg_catalog', true)")
        .unwrap();
    tx.execute("SELECT tenancy.revoke_subject($1, $2)", &[&f.a, &subject])
        .unwrap();
    tx.rollback().unwrap();
    for i in 0..ports().len() {
        let n: i64 = node(i, "postgres")
            .query_one(
                "SELECT count(*) FROM tenancy.subject_revocation WHERE subject = $1 \
                    OR (tenant_id = $2::text::uuid AND subject = 'bob')",
                &[&subject, &f.a_id],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "node {i}");
    }
}

/// Citus sends a transaction's `SET LOCAL` (`RESET`, `SET TRANSACTION`), with the whole text
/// of the query it came in, to every connection of the transaction, also those it opens as its
/// own superuser for its own work: a table's owner (NOSUPERUSER) ran a DO block so, as the
/// superuser on every worker, before Citus's `update_distributed_table_colocation`, and made
/// itself a superuser there; a `SET LOCAL search_path` to its own schema did the same through
/// a function of a name Citus calls unqualified (an attacker's pass). On Citus such a command
/// is sent alone, without a backslash, and `SET LOCAL` gives values only to settings that
/// change no statement's meaning; what is left runs harmlessly.
#[test]
fn a_roles_carried_settings_never_reach_citus_superuser_connections() {
    let pid = std::process::id();
    let owner = format!("carried_owner_{pid}");
    let table = format!("public.carried_{pid}");
    let mut su = superuser();
    su.batch_execute(&format!(
        "CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS; GRANT CREATE ON SCHEMA public TO {owner}"
    ))
    .unwrap();
    let mut o = node(0, &owner);
    assert_not_privileged(&mut o);
    o.batch_execute(&format!(
        "CREATE TABLE {table} (tenant_id uuid NOT NULL, id int)"
    ))
    .unwrap();
    o.batch_execute(&format!(
        "SELECT create_distributed_table('{table}', 'tenant_id')"
    ))
    .unwrap();
    // Its own function or operator of a name pg_catalog has, which Citus calls unqualified on
    // the connections it opens as its superuser, where a better-matching overload in public is
    // chosen (the next pass: `(int, int, text)` made on the workers with
    // run_command_on_workers made the owner a superuser there at Citus's next distributed
    // transaction, no SET LOCAL needed): refused on every node.
    let shadow = format!(
        "CREATE FUNCTION public.assign_distributed_transaction_id(int, int, text) RETURNS void \
           LANGUAGE plpgsql AS $f$ BEGIN \
             IF current_setting('is_superuser') = 'on' THEN EXECUTE 'ALTER ROLE {owner} SUPERUSER'; END IF; \
             PERFORM pg_catalog.assign_distributed_transaction_id($1, $2::bigint, $3::timestamptz); END $f$"
    );
    for attempt in [
        shadow.clone(),
        "CREATE FUNCTION public.shadow_eq(a bigint, b int) RETURNS boolean LANGUAGE sql AS $f$SELECT true$f$; \
         CREATE OPERATOR public.= (LEFTARG = bigint, RIGHTARG = int, FUNCTION = public.shadow_eq)"
            .to_string(),
        "CREATE FUNCTION public.not_yet(int) RETURNS int LANGUAGE sql AS $f$SELECT 1$f$; \
         ALTER FUNCTION public.not_yet(int) RENAME TO lock_shard_resources"
            .to_string(),
        "CREATE FUNCTION public.own_sfunc(s bigint, v int) RETURNS bigint LANGUAGE sql AS $f$SELECT s$f$; \
         CREATE AGGREGATE public.count(int) (sfunc = public.own_sfunc, stype = bigint)"
            .to_string(),
        // A procedure of a better-matching signature stopped every distributed transaction;
        // a shell operator made through COMMUTATOR stopped the statements that met it.
        "CREATE PROCEDURE public.assign_distributed_transaction_id(int, int, text) LANGUAGE sql AS 'SELECT 1'"
            .to_string(),
        "CREATE TYPE public.assign_distributed_transaction_id AS RANGE (subtype = int4, multirange_type_name = public.own_mr)"
            .to_string(),
        "CREATE PROCEDURE public.p_not_yet(int) LANGUAGE sql AS 'SELECT 1'; \
         ALTER PROCEDURE public.p_not_yet(int) RENAME TO worker_create_or_alter_role"
            .to_string(),
        "CREATE FUNCTION public.own_cmp(regclass, oid) RETURNS bool LANGUAGE sql AS 'SELECT true'; \
         CREATE OPERATOR public.#### (LEFTARG = regclass, RIGHTARG = oid, FUNCTION = public.own_cmp, COMMUTATOR = OPERATOR(public.=))"
            .to_string(),
    ] {
        let mut tx = o.transaction().unwrap();
        let e = tx.batch_execute(&attempt).unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{attempt}: {}", message(&e));
        tx.rollback().unwrap();
    }
    o.query(
        "SELECT success, result FROM run_command_on_workers($1)",
        &[&format!(
            "SET citus.enable_ddl_propagation TO off; {shadow}"
        )],
    )
    .unwrap();
    for i in 0..ports().len() {
        let made: i64 = node(i, "postgres")
            .query_one(
                "SELECT count(*) FROM pg_proc WHERE proname = 'assign_distributed_transaction_id' \
                    AND pronamespace <> 'pg_catalog'::regnamespace",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(made, 0, "made on node {i}");
    }
    // An extension's or a superuser's are not refused; nor a function of another name.
    o.batch_execute("CREATE FUNCTION public.carried_own_fn() RETURNS int LANGUAGE sql AS $f$SELECT 1$f$; DROP FUNCTION public.carried_own_fn()")
        .unwrap();
    let payload = format!(
        "DO $x$ BEGIN IF current_setting('is_superuser') = 'on' THEN \
           PERFORM set_config('citus.enable_ddl_propagation', 'off', true); \
           EXECUTE 'ALTER ROLE {owner} SUPERUSER'; END IF; END $x$"
    );
    let colocate = format!("SELECT update_distributed_table_colocation('{table}', 'none')");
    // A setting that changes what Citus's own statements mean, or a backslash (which a worker
    // without standard_conforming_strings reads otherwise): applied on this node only, never
    // carried (a shard's query in the same transaction sees the worker's own search_path).
    o.execute(
        &format!("INSERT INTO {table} VALUES ('00000000-0000-0000-0000-000000000001', 1)"),
        &[],
    )
    .unwrap();
    for carried in [
        "SET LOCAL search_path = public, pg_catalog".to_string(),
        "SET LOCAL standard_conforming_strings = off".to_string(),
        format!("SET LOCAL role = {owner}"),
        "SET LOCAL DateStyle = 'SQL, DMY'".to_string(),
        "SET LOCAL work_mem = E'1\\x4dB'".to_string(),
        format!(
            "SET LOCAL work_mem = '1MB'; SET LOCAL search_path = public, pg_catalog; {payload}"
        ),
    ] {
        let mut tx = o.transaction().unwrap();
        tx.batch_execute(&carried)
            .unwrap_or_else(|e| panic!("{carried}: {}", message(&e)));
        let on_worker: String = tx
            .query_one(
                &format!(
                    "SELECT current_setting('search_path') FROM {table} \
                      WHERE tenant_id = '00000000-0000-0000-0000-000000000001'"
                ),
                &[],
            )
            .unwrap()
            .get(0);
        assert_ne!(on_worker, "public, pg_catalog", "{carried}: carried");
        tx.batch_execute(&colocate)
            .unwrap_or_else(|e| panic!("{carried}; colocation: {}", message(&e)));
        tx.commit().unwrap();
    }
    // Another statement in its query, before or after Citus's call: Citus is given the
    // command's own text, and the DO block runs here only, as the owner.
    for (before, carried) in [
        (false, format!("SET LOCAL work_mem = '1MB'; {payload}")),
        (true, format!("SET LOCAL work_mem = '1MB'; {payload}")),
        (false, format!("RESET work_mem; {payload}")),
        (true, format!("RESET ALL; {payload}")),
        (false, format!("SET TRANSACTION READ WRITE; {payload}")),
        (
            false,
            format!("{payload}; SET LOCAL statement_timeout = '1min'; {payload}"),
        ),
        (false, "SET LOCAL work_mem = '1MB'".to_string()),
        (false, "SET LOCAL myapp.user_id = '42'".to_string()),
        (false, "SET LOCAL TIME ZONE 'UTC'".to_string()),
        (
            false,
            "SET LOCAL work_mem = '1MB' -- a comment to the end".to_string(),
        ),
        (false, "/* a driver's comment */ RESET work_mem".to_string()),
        (false, "RESET search_path".to_string()),
        (false, "SET LOCAL search_path TO DEFAULT".to_string()),
        (
            false,
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED".to_string(),
        ),
    ] {
        let mut tx = o.transaction().unwrap();
        if before {
            tx.batch_execute(&colocate).unwrap();
        }
        tx.batch_execute(&carried)
            .unwrap_or_else(|e| panic!("{carried}: {}", message(&e)));
        tx.batch_execute(&colocate)
            .unwrap_or_else(|e| panic!("{carried}; colocation: {}", message(&e)));
        tx.commit().unwrap();
    }
    // Citus's own `SET LOCAL search_path` on the owner's connections to the workers, for its
    // DDL, is taken there (refusing it broke an owner's ALTER TABLE of its distributed table).
    o.batch_execute(&format!(
        "ALTER TABLE {table} ADD CONSTRAINT carried_positive CHECK (id > 0)"
    ))
    .unwrap_or_else(|e| panic!("the owner's ALTER TABLE: {}", message(&e)));
    // Set for the session or with set_config: not carried, not refused.
    o.batch_execute(
        "SET search_path = public, pg_catalog; BEGIN; SELECT set_config('work_mem', '2MB', true)",
    )
    .unwrap();
    o.batch_execute(&colocate).unwrap();
    o.batch_execute("COMMIT").unwrap();
    // The database's search_path, with which Citus's maintenance daemon runs its queries as
    // its superuser (it names pg_prepared_xacts unqualified): a database owner (NOSUPERUSER)
    // put its schema before pg_catalog, made a view of that name over a function of its own,
    // and was a superuser on every node at the daemon's next round (an attacker's pass).
    // Refused on Citus to a non-superuser; a path that leaves pg_catalog out (searched first)
    // is not.
    let db: String = su
        .query_one("SELECT current_database()::text", &[])
        .unwrap()
        .get(0);
    su.batch_execute(&format!("ALTER DATABASE {db} OWNER TO {owner}"))
        .unwrap();
    // Also for every role in the database, and from another database of the node (a later
    // pass set both so); nor a role, which made every superuser connection there the owner.
    let mut elsewhere = node_postgres_db(1, &owner);
    for refused in [
        format!("ALTER DATABASE {db} SET search_path = public, pg_catalog"),
        format!("ALTER DATABASE {db} SET search_path TO \"$user\", public, \"pg_catalog\""),
        format!("ALTER DATABASE {db} SET search_path FROM CURRENT"),
        format!("ALTER ROLE ALL IN DATABASE {db} SET search_path = public, pg_catalog"),
        format!("ALTER DATABASE {db} SET role = {owner}"),
    ] {
        for (c, from) in [
            (&mut o, "its database"),
            (&mut elsewhere, "another database"),
        ] {
            let e = c.batch_execute(&refused).unwrap_err();
            assert_eq!(
                sqlstate(&e),
                "42501",
                "{refused}, from {from}: {}",
                message(&e)
            );
            assert!(
                message(&e).contains("only a superuser sets, for a whole database"),
                "{refused}, from {from}: {}",
                message(&e)
            );
        }
    }
    drop(elsewhere);
    o.batch_execute(&format!(
        "ALTER DATABASE {db} SET search_path = public; ALTER DATABASE {db} RESET search_path"
    ))
    .unwrap();
    su.batch_execute(&format!("ALTER DATABASE {db} OWNER TO postgres"))
        .unwrap();
    for i in 0..ports().len() {
        let superuser: bool = node(i, "postgres")
            .query_one(
                "SELECT rolsuper FROM pg_roles WHERE rolname = $1",
                &[&owner],
            )
            .unwrap()
            .get(0);
        assert!(!superuser, "{owner} became a superuser on node {i}");
    }
    drop(o);
    su.batch_execute(&format!(
        "DROP TABLE {table}; REVOKE CREATE ON SCHEMA public FROM {owner}; DROP ROLE {owner}"
    ))
    .unwrap();
}

/// A mapped role holds USAGE on `tenancy.mapped_role` on every node, so that PostgreSQL refuses
/// to drop it where pg_tenancy cannot end its mappings first: on a worker, from another
/// database, a CREATEROLE role dropped it while the worker's copy of the catalog kept the
/// mapping under its oid (an attacker's pass; each node's copy holds that node's oid for the
/// role). Each node keeps its own grants as its copy of the mappings changes.
#[test]
fn a_mapped_role_is_not_dropped_on_a_worker_where_its_mapping_would_stay() {
    let f = Fixture::new();
    let pid = std::process::id();
    let mapped = format!("worker_mapped_{pid}");
    let dropper = format!("worker_dropper_{pid}");
    let mut su = superuser();
    su.batch_execute(&format!(
        "CREATE ROLE {mapped} LOGIN NOSUPERUSER NOBYPASSRLS; CREATE ROLE {dropper} LOGIN NOSUPERUSER CREATEROLE"
    ))
    .unwrap();
    let held = |want: bool| {
        for i in 0..ports().len() {
            let n: i64 = node(i, "postgres")
                .query_one(
                    "SELECT count(*) FROM pg_type t, aclexplode(t.typacl) a \
                      WHERE t.oid = 'tenancy.mapped_role'::regtype AND a.grantee = $1::text::regrole::oid",
                    &[&mapped],
                )
                .unwrap()
                .get(0);
            assert_eq!(n == 1, want, "node {i}: the grant held {}", n == 1);
        }
    };
    su.execute(
        "SELECT tenancy.map_role($1::text::regrole, $2)",
        &[&mapped, &f.a],
    )
    .unwrap();
    held(true);
    for i in 1..ports().len() {
        let mut elsewhere = node_postgres_db(i, &dropper);
        let e = elsewhere
            .batch_execute(&format!("DROP ROLE {mapped}"))
            .unwrap_err();
        assert_eq!(sqlstate(&e), "2BP01", "worker {i}: {}", message(&e));
    }
    su.execute(
        "SELECT tenancy.unmap_role($1::text::regrole, $2)",
        &[&mapped, &f.a],
    )
    .unwrap();
    held(false);
    su.execute(
        "SELECT tenancy.map_role($1::text::regrole, $2)",
        &[&mapped, &f.b],
    )
    .unwrap();
    held(true);
    // A worker's own hazards, which the coordinator's rules do not see there: the grant
    // revoked on a worker, and a search_path before pg_catalog set for the database there
    // (from another database, past Citus's refusal in this one). verify() reports both; the
    // first one's fix gives the grant back.
    let findings = || -> Vec<String> {
        node(0, OPERATOR)
            .query(
                "SELECT rule || ' ' || object FROM tenancy.verify() \
                  WHERE rule IN ('mapping_without_dependency', 'catalog_behind_a_schema') ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    assert_eq!(findings(), Vec::<String>::new());
    let db: String = su
        .query_one("SELECT current_database()::text", &[])
        .unwrap()
        .get(0);
    node(1, "postgres")
        .batch_execute(&format!(
            "REVOKE USAGE ON TYPE tenancy.mapped_role FROM {mapped}"
        ))
        .unwrap();
    let mut worker_postgres = node_postgres_db(1, "postgres");
    worker_postgres
        .batch_execute(&format!(
            "ALTER DATABASE {db} SET search_path = public, pg_catalog"
        ))
        .unwrap();
    let found = findings();
    worker_postgres
        .batch_execute(&format!("ALTER DATABASE {db} RESET search_path"))
        .unwrap();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].starts_with("catalog_behind_a_schema the database on "),
        "{found:?}"
    );
    assert!(
        found[1].starts_with(&format!("mapping_without_dependency role {mapped} on ")),
        "{found:?}"
    );
    su.batch_execute("SELECT run_command_on_workers('SELECT tenancy._keep_mapped_roles()')")
        .unwrap();
    assert_eq!(findings(), Vec::<String>::new());
    held(true);
    // Citus copies a reference table to a node added later in binary: the copy holds the
    // coordinator's oids, naming whatever role has them there (a later pass had a role made
    // with the mapped role's coordinator oid bound to the tenant on the new node). As that
    // copy: worker 1's row set to the coordinator's oid; citus_setup(), which the reference
    // says to run after adding a node, writes the rows again by name.
    let coordinator_oid: u32 = su
        .query_one("SELECT $1::text::regrole::oid", &[&mapped])
        .unwrap()
        .get(0);
    node(1, "postgres")
        .batch_execute(&format!(
            "SET citus.enable_manual_changes_to_shards = on; \
             DO $$ BEGIN EXECUTE format('UPDATE %s SET role = %s', \
                 (SELECT shard_name('tenancy.role_mapping'::regclass, shardid) FROM pg_dist_shard \
                   WHERE logicalrelid = 'tenancy.role_mapping'::regclass), {coordinator_oid}); END $$"
        ))
        .unwrap();
    let named_on_worker = || -> String {
        node(1, "postgres")
            .query_one("SELECT role::text FROM tenancy.role_mapping", &[])
            .unwrap()
            .get(0)
    };
    assert_ne!(
        named_on_worker(),
        mapped,
        "the control: the copy names another oid"
    );
    su.batch_execute("SELECT tenancy.citus_setup()").unwrap();
    assert_eq!(named_on_worker(), mapped);
    held(true);
    assert_catalog_copies_agree("citus_setup() after a copy by oid");
    // DROP ROLE on the coordinator ends the mapping and the grants on every node first.
    su.batch_execute(&format!("DROP ROLE {mapped}; DROP ROLE {dropper}"))
        .unwrap();
    assert_catalog_copies_agree("DROP ROLE of a mapped role");
}

/// A client that names its connection to a worker as Citus names its own is not exempt from
/// the refusal of management there; `DROP ROLE` of a mapped role on a worker is refused
/// (Citus carries it to every node, and the mappings could not be ended from there); a worker
/// whose database has `standard_conforming_strings` off takes no catalog write (it read a
/// backslash in a sent value as an escape, and kept another value than the coordinator).
#[test]
fn a_worker_takes_management_only_from_the_coordinator_and_reads_its_values_alike() {
    let f = Fixture::new();
    let pid = std::process::id();
    let mut c = postgres::Config::new();
    c.host("127.0.0.1");
    c.port(ports()[1]);
    c.dbname(&std::env::var("TENANCY_IT_DB").expect("TENANCY_IT_DB"));
    c.user(OPERATOR);
    c.application_name("citus_internal gpid=10000099999");
    let mut spoofed = c.connect(NoTls).unwrap();
    let e = spoofed
        .execute("SELECT tenancy.revoke_subject($1, 'w1only')", &[&f.a])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "{}", message(&e));

    let role = format!("cit_worker_drop_{pid}");
    let mut su = superuser();
    su.batch_execute(&format!("CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS"))
        .unwrap();
    node(0, OPERATOR)
        .execute(
            "SELECT tenancy.map_role($1::text::regrole, $2)",
            &[&role, &f.b],
        )
        .unwrap();
    let e = node(1, "postgres")
        .batch_execute(&format!("DROP ROLE {role}"))
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "{}", message(&e));
    su.batch_execute(&format!("DROP ROLE {role}")).unwrap();
    assert_catalog_copies_agree("DROP ROLE on the coordinator");

    let db = std::env::var("TENANCY_IT_DB").expect("TENANCY_IT_DB");
    let mut w = node(1, "postgres");
    w.batch_execute(&format!(
        "SET citus.enable_ddl_propagation = off; ALTER DATABASE {db} SET standard_conforming_strings = off"
    ))
    .unwrap();
    w.batch_execute("SELECT pg_catalog.pg_reload_conf()")
        .unwrap();
    // A new session of the coordinator: Citus opens new connections to the worker, which
    // take the database's new default.
    let mut op = node(0, OPERATOR);
    let got = op.execute(
        "SELECT tenancy.revoke_subject($1, $2)",
        &[&f.a, &"back\\tslash"],
    );
    w.batch_execute(&format!(
        "SET citus.enable_ddl_propagation = off; ALTER DATABASE {db} RESET standard_conforming_strings"
    ))
    .unwrap();
    let e = got.expect_err("a catalog write reaching a node with standard_conforming_strings off");
    assert_eq!(sqlstate(&e), "55000", "{}", message(&e));
    assert_catalog_copies_agree("a write refused on a node");
}

#[test]
fn citus_setup_is_for_a_superuser_on_the_coordinator() {
    let mut op = node(0, OPERATOR);
    assert_not_privileged(&mut op);
    let e = op
        .query_one("SELECT tenancy.citus_setup()", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    let e = node(1, "postgres")
        .query_one("SELECT tenancy.citus_setup()", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "{}", message(&e));
    assert!(message(&e).contains("coordinator"), "{}", message(&e));
}

/// A tenant and a key made on the coordinator are on every node: a token binds there, to the
/// same tenant, and a token of an unknown key is refused there as on the coordinator.
#[test]
fn a_token_binds_to_the_same_tenant_on_every_node() {
    let f = Fixture::new();
    for i in 0..ports().len() {
        let mut c = app_on(i);
        for (tenant, id) in [(&f.a, &f.a_id), (&f.b, &f.b_id)] {
            let mut tx = c.transaction().unwrap();
            tx.execute("SELECT tenancy.bind($1)", &[&f.token(tenant, "ann")])
                .unwrap();
            let bound: String = tx
                .query_one("SELECT tenancy.current_tenant()::text", &[])
                .unwrap()
                .get(0);
            assert_eq!(&bound, id, "node {i}");
            tx.rollback().unwrap();
        }
        let forged = sign(
            jsonwebtoken::Algorithm::HS256,
            "no-such-key",
            &serde_json::json!({"tid": f.a, "sub": "ann", "exp": now() + 60}),
        );
        let e = c
            .execute("SELECT tenancy.bind($1)", &[&forged])
            .unwrap_err();
        assert!(
            message(&e).contains("no-such-key") || message(&e).contains("key"),
            "node {i}: {}",
            message(&e)
        );
    }
}

/// A suspension, a subject's revocation (both made by an operator) and a revoked key (by a key
/// admin), made on the coordinator, end the bindings held on the workers at their next
/// statement.
#[test]
fn a_suspension_or_revocation_on_the_coordinator_reaches_every_worker_at_its_next_statement() {
    let f = Fixture::new();
    let mut op = node(0, OPERATOR);
    assert_not_privileged(&mut op);
    let bound_sessions = |who: &str| -> Vec<Client> {
        (1..ports().len())
            .map(|i| {
                let mut c = app_on(i);
                c.execute("SELECT tenancy.bind($1, 'session')", &[&f.token(&f.a, who)])
                    .unwrap();
                assert_eq!(bound_tenant(&mut c).unwrap(), f.a_id);
                c
            })
            .collect()
    };

    let mut sessions = bound_sessions("ann");
    op.execute("SELECT tenancy.suspend_tenant($1, 'citus test')", &[&f.a])
        .unwrap();
    for (i, c) in sessions.iter_mut().enumerate() {
        let e = c
            .query_one("SELECT tenancy.current_tenant()", &[])
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "worker {}: {}", i + 1, message(&e));
        assert!(message(&e).contains("suspended"), "{}", message(&e));
    }
    op.execute("SELECT tenancy.resume_tenant($1)", &[&f.a])
        .unwrap();

    let mut sessions = bound_sessions("bob");
    op.execute("SELECT tenancy.revoke_subject($1, 'bob')", &[&f.a])
        .unwrap();
    for (i, c) in sessions.iter_mut().enumerate() {
        let e = c
            .query_one("SELECT tenancy.current_tenant()", &[])
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "worker {}: {}", i + 1, message(&e));
    }
    // Another subject of the tenant still binds on the workers.
    let mut sessions = bound_sessions("carol");

    // A revoked signing key: a platform-wide row, whose change drops every cache, on every
    // node (the trigger fires on each node's copy, a table of another name there).
    let mut keys = node(0, KEY_ADMIN);
    assert_not_privileged(&mut keys);
    keys.execute("SELECT tenancy.revoke_key($1)", &[&f.kid])
        .unwrap();
    for (i, c) in sessions.iter_mut().enumerate() {
        let e = c
            .query_one("SELECT tenancy.current_tenant()", &[])
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "worker {}: {}", i + 1, message(&e));
        assert!(message(&e).contains("revoked"), "{}", message(&e));
    }
}

/// A table that stays local to the coordinator is protected as on one node: its policies read
/// the binding and the catalog (reference tables now) through Citus. Each tenant's session
/// reads and writes its own rows only; an unbound one is refused. (Without the audit trail: once
/// the trail is distributed by tenant, only tables colocated with it are audited.)
#[test]
fn a_table_local_to_the_coordinator_is_protected_as_on_one_node() {
    let f = Fixture::new();
    let t = format!("citus_local_{}", std::process::id());
    let mut su = superuser();
    su.batch_execute(&format!(
        "CREATE TABLE public.{t} (tenant_id uuid NOT NULL, id int NOT NULL, v text); \
         SELECT tenancy.protect('public.{t}', audit => false); \
         GRANT SELECT, INSERT ON public.{t} TO {APP}"
    ))
    .unwrap();
    let mut c = app_on(0);
    each_tenant_writes_and_reads_only_its_own(&mut c, &f, &t);
    let e = c
        .query(&format!("SELECT v FROM public.{t}"), &[])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    su.batch_execute(&format!("DROP TABLE public.{t}")).unwrap();
}

/// A distributed table of `rows` rows over every shard, readable by the application role
/// (not protected: these tests read the binding the workers act for, with
/// `tenancy.current_tenant()` in the statement, which Citus runs on each shard's worker).
fn spread_table(name: &str, rows: i32) {
    superuser()
        .batch_execute(&format!(
            "CREATE TABLE public.{name} (id int, v int); \
             SELECT create_distributed_table('public.{name}', 'id'); \
             INSERT INTO public.{name} SELECT g, g FROM generate_series(1, {rows}) g; \
             GRANT SELECT ON public.{name} TO {APP}"
        ))
        .unwrap();
}

/// (tenant, subject, port of the worker) of every row, as the workers computed them.
fn as_seen_by_workers(
    c: &mut impl postgres::GenericClient,
    table: &str,
) -> Vec<(String, String, i32)> {
    c.query(
        &format!(
            "SELECT DISTINCT tenancy.current_tenant()::text, tenancy.current_subject(), inet_server_port() \
               FROM public.{table} ORDER BY 3"
        ),
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// Bound on the coordinator, a distributed statement runs on both workers for the same tenant
/// and subject: the token travels with the transaction (`SET LOCAL tenancy.carrier`) and each
/// worker binds it as `bind()` would. A session-scoped binding is carried in each of its
/// transaction blocks.
#[test]
fn every_worker_acts_for_the_coordinators_binding() {
    let f = Fixture::new();
    let t = format!("carried_{}", std::process::id());
    spread_table(&t, 64);
    let mut workers: Vec<i32> = ports()[1..].iter().map(|p| i32::from(*p)).collect();
    workers.sort();
    let mut c = app_on(0);
    for (tenant, id, sub) in [(&f.a, &f.a_id, "ann"), (&f.b, &f.b_id, "bob")] {
        let mut tx = c.transaction().unwrap();
        tx.execute("SELECT tenancy.bind($1)", &[&f.token(tenant, sub)])
            .unwrap();
        let seen = as_seen_by_workers(&mut tx, &t);
        let expected: Vec<(String, String, i32)> = workers
            .iter()
            .map(|p| (id.clone(), sub.to_string(), *p))
            .collect();
        assert_eq!(seen, expected);
        tx.commit().unwrap();
    }
    c.execute(
        "SELECT tenancy.bind($1, 'session')",
        &[&f.token(&f.a, "carol")],
    )
    .unwrap();
    for _ in 0..2 {
        let mut tx = c.transaction().unwrap();
        let seen = as_seen_by_workers(&mut tx, &t);
        assert_eq!(seen.len(), workers.len());
        assert!(
            seen.iter()
                .all(|(id, sub, _)| *id == f.a_id && sub == "carol"),
            "{seen:?}"
        );
        tx.commit().unwrap();
    }
    c.execute("SELECT tenancy.unbind()", &[]).unwrap();
}

/// Without a binding the workers refuse; outside a transaction block nothing is carried (Citus
/// carries settings only as SET LOCAL in one), so they refuse too; and a binding ended by
/// unbind() ends on the workers from the next statement.
#[test]
fn the_workers_refuse_what_the_coordinator_does_not_carry() {
    let f = Fixture::new();
    let t = format!("uncarried_{}", std::process::id());
    spread_table(&t, 16);
    let mut c = app_on(0);
    let refused = |c: &mut Client, sql: &str| {
        let e = c.batch_execute(sql).unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{sql}: {}", message(&e));
        assert!(
            message(&e).contains("no tenant bound"),
            "{sql}: {}",
            message(&e)
        );
    };
    let q = format!("SELECT DISTINCT tenancy.current_tenant() FROM public.{t}");
    refused(&mut c, &q);
    c.execute(
        "SELECT tenancy.bind($1, 'session')",
        &[&f.token(&f.a, "ann")],
    )
    .unwrap();
    refused(&mut c, &q);
    c.execute("SELECT tenancy.unbind()", &[]).unwrap();

    c.batch_execute("BEGIN").unwrap();
    c.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "ann")])
        .unwrap();
    c.batch_execute(&q).unwrap();
    c.execute("SELECT tenancy.unbind()", &[]).unwrap();
    refused(&mut c, &q);
    let _ = c.batch_execute("ROLLBACK");
}

/// The carrier is pg_tenancy's: a client on the coordinator cannot SET it (Citus would carry it
/// to the workers, which would then act for another token than the one bound), set_config()
/// changes nothing the workers see, and on a worker a session bound by its own bind() cannot
/// take another token through it. An unbound session on a worker that sets it binds that token,
/// as bind() would: it needs the token.
#[test]
fn a_client_cannot_set_the_carrier_or_split_a_binding() {
    let f = Fixture::new();
    let t = format!("forged_{}", std::process::id());
    spread_table(&t, 16);
    let mut c = app_on(0);
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "ann")])
        .unwrap();
    tx.batch_execute("SAVEPOINT s").unwrap();
    let e = tx
        .batch_execute(&format!(
            "SET LOCAL tenancy.carrier = '{}'",
            f.token(&f.b, "bob")
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    tx.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    // PostgreSQL finds a setting whatever the case of its name (an attacker's pass split the
    // binding with this spelling).
    tx.batch_execute("SAVEPOINT s").unwrap();
    let e = tx
        .batch_execute(&format!(
            "SET LOCAL \"TENANCY.CARRIER\" = '{}'",
            f.token(&f.b, "bob")
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    tx.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    // set_config() returns the value, which only a superuser may read (what is carried to a
    // worker must not be readable by code running there): refused outright.
    tx.batch_execute("SAVEPOINT s").unwrap();
    let e = tx
        .execute(
            "SELECT set_config('tenancy.carrier', $1, true)",
            &[&f.token(&f.b, "bob")],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    tx.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    let seen = as_seen_by_workers(&mut tx, &t);
    assert!(seen.iter().all(|(id, _, _)| *id == f.a_id), "{seen:?}");
    tx.rollback().unwrap();

    let mut w = app_on(1);
    let mut tx = w.transaction().unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "ann")])
        .unwrap();
    let e = tx
        .batch_execute(&format!(
            "SET LOCAL tenancy.carrier = '{}'",
            f.token(&f.b, "bob")
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    tx.rollback().unwrap();

    let mut tx = w.transaction().unwrap();
    tx.batch_execute(&format!(
        "SET LOCAL tenancy.carrier = '{}'",
        f.token(&f.b, "bob")
    ))
    .unwrap();
    assert_eq!(bound_tenant_tx(&mut tx), f.b_id);
    tx.rollback().unwrap();

    // Only a SET statement of the running transaction carries (what Citus sends): not
    // set_config(), nor a value from ALTER ROLE/DATABASE SET.
    // (set_config() is refused outright: it returns the value, which only a superuser reads.)
    let mut tx = w.transaction().unwrap();
    let e = tx
        .execute(
            "SELECT set_config('tenancy.carrier', $1, true)",
            &[&f.token(&f.b, "bob")],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    tx.rollback().unwrap();

    // A bind() pushed down to the workers (unbound on the coordinator) is refused there: a
    // worker binds what the coordinator carries, nothing else.
    let mut tx = c.transaction().unwrap();
    let e = tx
        .query(
            &format!("SELECT tenancy.bind($1) FROM public.{t}"),
            &[&f.token(&f.b, "bob")],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    assert!(message(&e).contains("coordinator"), "{}", message(&e));
    tx.rollback().unwrap();
    // Also after the pushed-down expression renames the worker's connection first (a
    // reviewer's lead: a connection seen under another name is never Citus's own again, which
    // let the bind through).
    let mut tx = c.transaction().unwrap();
    let e = tx
        .query(
            &format!(
                "SELECT set_config('application_name', 'mine', true), tenancy.bind($1) FROM public.{t}"
            ),
            &[&f.token(&f.b, "bob")],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    assert!(message(&e).contains("coordinator"), "{}", message(&e));
    tx.rollback().unwrap();
}

/// An operator with a support grant cannot enter support on the workers alone: pushed down in
/// a shard query (unbound on the coordinator), `enter_support()` is refused there as `bind()`
/// is, also after the expression renamed the worker's connection.
#[test]
fn enter_support_pushed_down_to_the_workers_is_refused() {
    let f = Fixture::new();
    let t = format!("support_{}", std::process::id());
    spread_table(&t, 16);
    let mut su = superuser();
    su.batch_execute(&format!("GRANT SELECT ON public.{t} TO {OPERATOR}"))
        .unwrap();
    su.execute("SELECT tenancy.add_member($1, 'boss', 'admin')", &[&f.a])
        .unwrap();
    let mut admin = app_on(0);
    let mut tx = admin.transaction().unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "boss")])
        .unwrap();
    tx.execute(
        &format!("SELECT tenancy.grant_support('{OPERATOR}', '1 hour')"),
        &[],
    )
    .unwrap();
    tx.commit().unwrap();
    let mut op = node(0, OPERATOR);
    for pushed in [
        format!("SELECT tenancy.enter_support($1) FROM public.{t}"),
        format!(
            "SELECT set_config('application_name', 'mine', true), tenancy.enter_support($1) FROM public.{t}"
        ),
    ] {
        let mut tx = op.transaction().unwrap();
        let e = tx.query(&pushed, &[&f.a]).unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{pushed}: {}", message(&e));
        assert!(message(&e).contains("coordinator"), "{pushed}: {}", message(&e));
        tx.rollback().unwrap();
    }
}

fn bound_tenant_tx(c: &mut impl postgres::GenericClient) -> String {
    c.query_one("SELECT tenancy.current_tenant()::text", &[])
        .unwrap()
        .get(0)
}

/// A table distributed by its tenant column, protected: each tenant reads and writes its own
/// rows only, whichever shard they are on; a write for another tenant and an unbound read are
/// refused; and a bound tenant's point lookup, with no tenant condition written, goes to one
/// shard (EXPLAIN: one task), where hand-written RLS on Citus goes to every shard.
#[test]
fn a_distributed_table_is_protected_and_a_tenants_statement_goes_to_its_shard() {
    let f = Fixture::new();
    let pid = std::process::id();
    let (t, hand) = (format!("p_orders_{pid}"), format!("hand_orders_{pid}"));
    let mut su = superuser();
    setup_in_one_transaction(
        &mut su,
        &[
        format!("CREATE TABLE public.{t} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int, v int)"),
        format!("SELECT create_distributed_table('public.{t}', 'tenant_id')"),
        format!("SELECT tenancy.protect('public.{t}', audit => false)"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON public.{t} TO {APP}"),
        format!("CREATE TABLE public.{hand} (tenant_id uuid NOT NULL, id int, v int)"),
        format!("SELECT create_distributed_table('public.{hand}', 'tenant_id')"),
        format!("ALTER TABLE public.{hand} ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY"),
        format!("CREATE POLICY tenant ON public.{hand} USING (tenant_id = current_setting('app.tenant_id')::uuid)"),
        format!("GRANT SELECT ON public.{hand} TO {APP}"),
        ],
    );
    let mut c = app_on(0);
    for (tenant, n) in [(&f.a, 12), (&f.b, 7)] {
        let mut tx = c.transaction().unwrap();
        tx.execute("SELECT tenancy.bind($1)", &[&f.token(tenant, "ann")])
            .unwrap();
        for i in 1..=n {
            tx.execute(
                &format!("INSERT INTO public.{t} (id, v) VALUES ($1, $1)"),
                &[&i],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    for (tenant, id, n) in [(&f.a, &f.a_id, 12i64), (&f.b, &f.b_id, 7)] {
        let mut tx = c.transaction().unwrap();
        tx.execute("SELECT tenancy.bind($1)", &[&f.token(tenant, "ann")])
            .unwrap();
        let row = tx
            .query_one(
                &format!("SELECT count(*), count(DISTINCT tenant_id), min(tenant_id::text) FROM public.{t}"),
                &[],
            )
            .unwrap();
        let (count, tenants, seen): (i64, i64, String) = (row.get(0), row.get(1), row.get(2));
        assert_eq!((count, tenants, &seen), (n, 1, id));
        let plan = tx
            .query(
                &format!("EXPLAIN (COSTS OFF) SELECT * FROM public.{t} WHERE id = 3"),
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(plan.contains("Task Count: 1\n"), "one shard:\n{plan}");
        // A write for another tenant: refused on the worker, with pg_tenancy's reason.
        let other = if tenant == &f.a { &f.b_id } else { &f.a_id };
        tx.batch_execute("SAVEPOINT w").unwrap();
        let e = tx
            .execute(
                &format!(
                    "INSERT INTO public.{t} (tenant_id, id, v) VALUES ($1::text::uuid, 99, 99)"
                ),
                &[other],
            )
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
        tx.batch_execute("ROLLBACK TO SAVEPOINT w").unwrap();
        // Updates and deletes reach the tenant's rows only.
        let updated = tx
            .execute(&format!("UPDATE public.{t} SET v = v + 1"), &[])
            .unwrap();
        assert_eq!(updated as i64, n);
        tx.rollback().unwrap();
    }
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT set_config('app.tenant_id', $1, true)", &[&f.a_id])
        .unwrap();
    let plan = tx
        .query(
            &format!("EXPLAIN (COSTS OFF) SELECT * FROM public.{hand} WHERE id = 3"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !plan.contains("Task Count: 1\n"),
        "hand-written RLS goes to every shard:\n{plan}"
    );
    tx.rollback().unwrap();
    let e = c
        .query(&format!("SELECT count(*) FROM public.{t}"), &[])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
}

/// What protect() cannot do on Citus is refused with a HINT saying what to do instead, and
/// changes nothing: a table distributed by another column, a distributed tenant column that
/// lacks its default (Citus allows no change of it), and the audit trail.
#[test]
fn protect_refuses_what_it_cannot_do_on_citus_with_a_hint() {
    let pid = std::process::id();
    let mut su = superuser();
    su.batch_execute(&format!(
        "CREATE TABLE public.by_id_{pid} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int); \
         SELECT create_distributed_table('public.by_id_{pid}', 'id'); \
         CREATE TABLE public.no_default_{pid} (tenant_id uuid, id int); \
         SELECT create_distributed_table('public.no_default_{pid}', 'tenant_id'); \
         CREATE TABLE public.audited_{pid} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int); \
         SELECT create_distributed_table('public.audited_{pid}', 'tenant_id', colocate_with => 'none'); \
         CREATE TABLE public.audited_ref_{pid} (tenant_id uuid, id int); \
         SELECT create_reference_table('public.audited_ref_{pid}'); \
         CREATE TABLE public.audited_local_{pid} (tenant_id uuid, id int)"
    ))
    .unwrap();
    let mut op = node(0, OPERATOR);
    assert_not_privileged(&mut op);
    for (sql, state, expected_hint) in [
        (
            format!("SELECT tenancy.protect('public.by_id_{pid}', audit => false)"),
            "55000",
            "create_distributed_table",
        ),
        (
            format!("SELECT tenancy.protect('public.no_default_{pid}', audit => false)"),
            "55000",
            "SET DEFAULT tenancy.current_tenant()",
        ),
        // The trail is written beside each shard: a table not colocated with it, a reference
        // table, a table on the coordinator only are not audited.
        (
            format!("SELECT tenancy.protect('public.audited_{pid}')"),
            "0A000",
            "colocate_with => 'tenancy.audit_log'",
        ),
        (
            format!("SELECT tenancy.protect('public.audited_ref_{pid}')"),
            "0A000",
            "audit => false",
        ),
        (
            format!("SELECT tenancy.protect('public.audited_local_{pid}')"),
            "0A000",
            "colocate_with => 'tenancy.audit_log'",
        ),
    ] {
        let e = op.batch_execute(&sql).unwrap_err();
        assert_eq!(sqlstate(&e), state, "{sql}: {}", message(&e));
        let hint = e
            .as_db_error()
            .and_then(|d| d.hint())
            .unwrap_or_default()
            .to_string();
        assert!(hint.contains(expected_hint), "{sql}: {hint}");
    }
    let n: i64 = su
        .query_one(
            &format!(
                "SELECT count(*) FROM tenancy.protected_table WHERE relid::text IN \
                 ('public.by_id_{pid}', 'public.no_default_{pid}', 'public.audited_{pid}', \
                  'public.audited_ref_{pid}', 'public.audited_local_{pid}')"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing protected");

    // Protecting first, then distributing, is the other order: refused with the one that
    // works, for a table and for a schema that holds one; following the HINT works.
    let (local, schema) = (
        format!("public.local_first_{pid}"),
        format!("local_schema_{pid}"),
    );
    su.batch_execute(&format!(
        "CREATE TABLE {local} (tenant_id uuid, id int); \
         CREATE SCHEMA {schema}; CREATE TABLE {schema}.t (tenant_id uuid, id int); \
         GRANT USAGE ON SCHEMA {schema} TO {OPERATOR}"
    ))
    .unwrap();
    op.batch_execute(&format!(
        "SELECT tenancy.protect('{local}', audit => false); SELECT tenancy.protect('{schema}.t', audit => false)"
    ))
    .unwrap();
    for sql in [
        format!("SELECT create_distributed_table('{local}', 'tenant_id')"),
        format!("SELECT create_reference_table('{local}')"),
        format!("SELECT citus_schema_distribute('{schema}')"),
    ] {
        let e = su.batch_execute(&sql).unwrap_err();
        assert_eq!(sqlstate(&e), "55000", "{sql}: {}", message(&e));
        let hint = e.as_db_error().and_then(|d| d.hint()).unwrap_or_default();
        assert!(
            hint.contains("Distribute first, then protect"),
            "{sql}: {hint}"
        );
    }
    op.batch_execute(&format!("SELECT tenancy.unprotect('{local}')"))
        .unwrap();
    su.batch_execute(&format!(
        "SELECT create_distributed_table('{local}', 'tenant_id')"
    ))
    .unwrap();
    op.batch_execute(&format!(
        "SELECT tenancy.protect('{local}', audit => false)"
    ))
    .unwrap();
}

/// A shard changed on a worker past pg_tenancy's guard there (its policy dropped, or its row
/// security disabled, by a superuser with event triggers off) is reported by verify() on the
/// coordinator, as an error naming the table and the shard, with a fix that works.
#[test]
fn verify_reports_a_shard_changed_on_a_worker() {
    let t = format!("drift_{}", std::process::id());
    let mut su = superuser();
    setup_in_one_transaction(
        &mut su,
        &[
            format!("CREATE TABLE public.{t} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int)"),
            format!("SELECT create_distributed_table('public.{t}', 'tenant_id')"),
            format!("SELECT tenancy.protect('public.{t}', audit => false)"),
        ],
    );
    let mut op = node(0, OPERATOR);
    assert_not_privileged(&mut op);
    let drift = |op: &mut Client| -> Vec<(String, String, String)> {
        op.query(
            "SELECT object, detail, fix FROM tenancy.verify() WHERE rule = 'citus_shard_drift'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
    };
    assert!(drift(&mut op).is_empty(), "{:?}", drift(&mut op));

    // Two shards on worker 1, changed there by its superuser past pg_tenancy's guard (which
    // refuses it: the_shards_of_a_protected_table_refuse_changes_made_on_a_worker) with event
    // triggers off, as only a superuser can.
    let shards: Vec<String> = su
        .query(
            &format!(
                "SELECT shard_name('public.{t}'::regclass, shardid) FROM citus_shards \
                  WHERE table_name = 'public.{t}'::regclass AND nodeport = $1 ORDER BY shardid LIMIT 2"
            ),
            &[&i32::from(ports()[1])],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(shards.len(), 2);
    let mut w = node(1, "postgres");
    w.batch_execute(&format!(
        "SET citus.enable_manual_changes_to_shards = on; SET session_replication_role = replica; \
         DROP POLICY tenancy_select ON {}; \
         ALTER TABLE {} DISABLE ROW LEVEL SECURITY",
        shards[0], shards[1]
    ))
    .unwrap();
    let found = drift(&mut op);
    assert_eq!(found.len(), 2, "{found:?}");
    // TRUNCATE or TRIGGER granted on the table reaches its shards past pg_tenancy's checks.
    su.batch_execute(&format!("GRANT TRUNCATE, TRIGGER ON public.{t} TO {APP}"))
        .unwrap();
    let grants: Vec<(String, String)> = op
        .query(
            "SELECT object, fix FROM tenancy.verify() WHERE rule = 'citus_grant_reaches_shards'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(grants.len(), 2, "{grants:?}");
    for (_, fix) in &grants {
        su.batch_execute(fix).unwrap();
    }
    assert!(
        found
            .iter()
            .all(|(object, _, _)| object == &format!("public.{t}")),
        "{found:?}"
    );
    // The fix it gives restores both shards.
    let fix = found[0].2.clone();
    run_once_more_after_a_distributed_deadlock(&mut op, &fix);
    assert!(drift(&mut op).is_empty(), "{:?}", drift(&mut op));
    // A trigger planted on a shard there (found by the attacker's review: with the TRIGGER
    // grant, a trigger on a shard copies each tenant's rows out).
    w.batch_execute(&format!(
        "SET citus.enable_manual_changes_to_shards = on; SET session_replication_role = replica; \
         CREATE TRIGGER zz_spy BEFORE UPDATE ON {} FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()",
        shards[0]
    ))
    .unwrap();
    let found = drift(&mut op);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].1.contains("zz_spy"), "{found:?}");
    w.batch_execute(&format!(
        "SET citus.enable_manual_changes_to_shards = on; SET session_replication_role = replica; DROP TRIGGER zz_spy ON {}",
        shards[0]
    ))
    .unwrap();
    assert!(drift(&mut op).is_empty(), "{:?}", drift(&mut op));
    // A unique index without the tenant column added to one shard there (an attacker's pass,
    // as the table's owner on the worker: a conflict told the tenants on that shard whether
    // another held a value, and verify() compared no index).
    w.batch_execute(&format!(
        "SET citus.enable_manual_changes_to_shards = on; CREATE UNIQUE INDEX zz_oracle ON {} (id)",
        shards[0]
    ))
    .unwrap();
    let found = drift(&mut op);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].1.contains("unique"), "{found:?}");
    assert!(found[0].2.contains("indisunique"), "{found:?}");
    w.batch_execute("SET citus.enable_manual_changes_to_shards = on; DROP INDEX public.zz_oracle")
        .unwrap();
    assert!(drift(&mut op).is_empty(), "{:?}", drift(&mut op));
    // A unique key the table has is on every shard: no drift (the table's own primary key,
    // and a unique index on a column whose name looks like the keys' old separators).
    setup_in_one_transaction(
        &mut su,
        &[
            format!("ALTER TABLE public.{t} ADD PRIMARY KEY (tenant_id, id)"),
            format!("ALTER TABLE public.{t} ADD COLUMN zz int"),
            format!("ALTER TABLE public.{t} ADD COLUMN \"id,u:zz\" int"),
            format!("CREATE UNIQUE INDEX {t}_odd ON public.{t} (tenant_id, \"id,u:zz\")"),
        ],
    );
    assert!(drift(&mut op).is_empty(), "{:?}", drift(&mut op));
    // On one shard, that index swapped for the primary key's columns again and a unique index
    // on zz: keys joined by `+` and `,` printed alike (a reviewer's pass); not as JSON.
    let odd: String = w
        .query_one(
            &format!(
                "SELECT indexrelid::regclass::text FROM pg_index \
                  WHERE indrelid = '{}'::regclass AND pg_get_indexdef(indexrelid) LIKE '%id,u:zz%'",
                shards[0]
            ),
            &[],
        )
        .unwrap()
        .get(0);
    w.batch_execute(&format!(
        "SET citus.enable_manual_changes_to_shards = on; DROP INDEX {odd}; \
         CREATE UNIQUE INDEX zz_same ON {0} (tenant_id, id); CREATE UNIQUE INDEX zz_oracle ON {0} (zz)",
        shards[0]
    ))
    .unwrap();
    let found = drift(&mut op);
    assert_eq!(found.len(), 1, "{found:?}");
    w.batch_execute(&format!(
        "SET citus.enable_manual_changes_to_shards = on; DROP INDEX public.zz_same, public.zz_oracle; \
         CREATE UNIQUE INDEX {odd_name} ON {0} (tenant_id, \"id,u:zz\")",
        shards[0],
        odd_name = odd.rsplit('.').next().unwrap_or_default()
    ))
    .unwrap();
    assert!(drift(&mut op).is_empty(), "{:?}", drift(&mut op));
    // An operator the worker's search_path offers, with argument types pg_catalog has no exact
    // match for, takes no part in the statements verify() sends there (an attacker's pass:
    // the table's owner's own `=` (oid, regclass) ran as the superuser). It raises when planned.
    w.batch_execute(
        "SET citus.enable_ddl_propagation = off; \
         CREATE FUNCTION public.zz_boom() RETURNS bool LANGUAGE plpgsql IMMUTABLE \
           AS $$ BEGIN RAISE EXCEPTION 'shadow operator called'; END $$; \
         CREATE FUNCTION public.zz_eq(oid, regclass) RETURNS bool LANGUAGE sql IMMUTABLE AS $$ SELECT public.zz_boom() $$; \
         CREATE FUNCTION public.zz_eq(regclass, oid) RETURNS bool LANGUAGE sql IMMUTABLE AS $$ SELECT public.zz_boom() $$; \
         CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = regclass, FUNCTION = public.zz_eq); \
         CREATE OPERATOR public.= (LEFTARG = regclass, RIGHTARG = oid, FUNCTION = public.zz_eq)",
    )
    .unwrap();
    let shadowed: Vec<String> = op
        .query(
            "SELECT rule || ': ' || detail FROM tenancy.verify() WHERE detail LIKE '%shadow operator called%'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    w.batch_execute(
        "SET citus.enable_ddl_propagation = off; \
         DROP OPERATOR public.= (oid, regclass); DROP OPERATOR public.= (regclass, oid); \
         DROP FUNCTION public.zz_eq(oid, regclass), public.zz_eq(regclass, oid), public.zz_boom()",
    )
    .unwrap();
    assert!(shadowed.is_empty(), "{shadowed:?}");
}

/// A trigger replaced on a shard under its own name, with other events: pg_tenancy's audit
/// trigger on one shard made to fire on DELETE instead of INSERT left that shard's inserts out
/// of every tenant's trail, and verify() said nothing, nor did the guard on the worker refuse
/// the table's owner the same replacement of a trigger a superuser had added: both compared a
/// shard's triggers with the table's by name and function only (found by trying it,
/// 2026-12-06). Both now compare their definitions.
#[test]
fn a_shard_trigger_replaced_under_its_own_name_is_drift() {
    let pid = std::process::id();
    let (t, owner) = (format!("retrig_{pid}"), format!("retrig_owner_{pid}"));
    let mut su = superuser();
    su.batch_execute(&format!(
        "CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS"
    ))
    .unwrap();
    setup_in_one_transaction(
        &mut su,
        &[
            format!("CREATE TABLE public.{t} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int)"),
            format!("SELECT create_distributed_table('public.{t}', 'tenant_id', colocate_with => 'tenancy.audit_log')"),
            format!("SELECT tenancy.protect('public.{t}')"),
            format!("ALTER TABLE public.{t} OWNER TO {owner}"),
        ],
    );
    let table = format!("public.{t}");
    assert_eq!(op_drift(&table), 0);
    let (shard, w) = a_placement(&mut su, &t, None);
    let id = shard.rsplit('_').next().unwrap().to_string();

    // A superuser on the worker, past the guard (event triggers off, as only a superuser can):
    // the shard's audit trigger, same name and function, now fires on DELETE.
    let mut ws = node(w, "postgres");
    let audit_trigger = |on: &str, transition: &str| {
        format!(
            "SET citus.enable_manual_changes_to_shards = on; SET session_replication_role = replica; \
             CREATE OR REPLACE TRIGGER tenancy_audit_ins_{id} AFTER {on} ON public.{shard} \
             REFERENCING {transition} FOR EACH STATEMENT EXECUTE FUNCTION tenancy._audit()"
        )
    };
    ws.batch_execute(&audit_trigger("DELETE", "OLD TABLE AS tenancy_old"))
        .unwrap();
    let found: Vec<String> = node(0, OPERATOR)
        .query(
            "SELECT detail FROM tenancy.verify() WHERE rule = 'citus_shard_drift' AND object = $1",
            &[&table],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains(&format!("shard {id} "))
            && found[0].contains("tenancy_audit_ins")
            && found[0].contains("AFTER DELETE"),
        "{found:?}"
    );
    // Put back as it was, it is the table's again.
    ws.batch_execute(&audit_trigger("INSERT", "NEW TABLE AS tenancy_new"))
        .unwrap();
    assert_eq!(op_drift(&table), 0);
    // Disabled there (a reviewer's pass: pg_get_triggerdef does not print it), the same.
    let toggle = |how: &str| {
        format!(
            "SET citus.enable_manual_changes_to_shards = on; SET session_replication_role = replica; \
             ALTER TABLE public.{shard} {how} TRIGGER tenancy_audit_ins_{id}"
        )
    };
    ws.batch_execute(&toggle("DISABLE")).unwrap();
    assert_eq!(op_drift(&table), 1);
    ws.batch_execute(&toggle("ENABLE")).unwrap();
    assert_eq!(op_drift(&table), 0);

    // The guard on the worker. A superuser adds a trigger to the table on the coordinator
    // (Citus carries it to the shards); the table's owner, on the worker, may not replace it on
    // a shard with other events, under its name and with its function.
    setup_in_one_transaction(
        &mut su,
        &[
            "SET LOCAL citus.enable_unsafe_triggers = on".to_string(),
            format!("CREATE FUNCTION public.retrig_fn_{pid}() RETURNS trigger LANGUAGE plpgsql AS $f$BEGIN RETURN NEW; END$f$"),
            // A constant in its condition prints through the session's TimeZone: compared in
            // another zone on the workers, it read as drift (a reviewer's pass).
            "SET LOCAL TimeZone = 'Europe/Berlin'".to_string(),
            format!("CREATE TRIGGER zz_note BEFORE UPDATE ON public.{t} FOR EACH ROW \
                     WHEN (now() < '2100-01-01 00:00+00'::timestamptz) EXECUTE FUNCTION public.retrig_fn_{pid}()"),
        ],
    );
    assert_eq!(op_drift(&table), 0);
    let mut berlin = node(0, OPERATOR);
    berlin
        .batch_execute("SET TimeZone = 'Europe/Berlin'")
        .unwrap();
    let found: i64 = berlin
        .query_one(
            "SELECT count(*) FROM tenancy.verify() WHERE rule = 'citus_shard_drift' AND object = $1",
            &[&table],
        )
        .unwrap()
        .get(0);
    assert_eq!(found, 0, "an operator in another time zone saw drift");
    let mut o = node(w, &owner);
    assert_not_privileged(&mut o);
    o.batch_execute("SET citus.enable_manual_changes_to_shards = on")
        .unwrap();
    let replace = |on: &str| {
        format!(
            "CREATE OR REPLACE TRIGGER zz_note_{id} BEFORE {on} ON public.{shard} \
             FOR EACH ROW WHEN (now() < '2100-01-01 00:00+00'::timestamptz) \
             EXECUTE FUNCTION public.retrig_fn_{pid}()"
        )
    };
    let e = o
        .batch_execute(&replace("INSERT"))
        .expect_err("the owner replaced a shard's trigger with other events");
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    // Nor touch pg_tenancy's, refused by name; the refusal names the shard (read from the
    // system caches: a query on pg_class, which Citus filters on a worker, printed its oid).
    let e = o
        .batch_execute(&format!(
            "CREATE OR REPLACE TRIGGER tenancy_audit_ins_{id} AFTER DELETE ON public.{shard} \
             REFERENCING OLD TABLE AS tenancy_old FOR EACH STATEMENT EXECUTE FUNCTION tenancy._audit()"
        ))
        .expect_err("the owner replaced pg_tenancy's trigger on a shard");
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    assert!(
        message(&e).contains(&format!("\"public.{shard}\"")),
        "{}",
        message(&e)
    );
    // The same definition again changes nothing, and passes.
    o.batch_execute(&replace("UPDATE"))
        .unwrap_or_else(|e| panic!("{}", message(&e)));
    assert_eq!(op_drift(&table), 0);
}

/// Citus names a shard's trigger `<name>_<shard id>`, and shortens one that would be longer than
/// 63 bytes to its first bytes, a hash of the name and the shard id: such a trigger read as
/// drift, so that `verify()` reported every shard, `protect()` refused the table ("a shard has
/// what the table does not") and the guard on the workers refused the owner's every DDL on
/// its shards. And a shard's trigger renamed there without its suffix (it then fires in
/// another order) read as its table's.
#[test]
fn a_long_trigger_name_is_its_tables_on_every_shard() {
    let pid = std::process::id();
    let (t, owner) = (format!("longtrig_{pid}"), format!("longtrig_owner_{pid}"));
    // 60 bytes: shortened on the shards. 45: whole there, compared by its hash.
    let long = format!("{:a<60}", format!("note_{pid}_"));
    let mid = format!("{:b<45}", format!("mid_{pid}_"));
    let mut su = superuser();
    su.batch_execute(&format!(
        "CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS"
    ))
    .unwrap();
    setup_in_one_transaction(
        &mut su,
        &[
            format!("CREATE TABLE public.{t} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int)"),
            // Colocated with no other test's table (so not audited: the trail is colocated with
            // the audited tables): decommission_tenant deletes a tenant's rows of colocated
            // tables in one transaction, which Citus runs as one owner.
            format!("SELECT create_distributed_table('public.{t}', 'tenant_id', colocate_with => 'none')"),
            format!("SELECT tenancy.protect('public.{t}', audit => false)"),
            format!("ALTER TABLE public.{t} OWNER TO {owner}"),
            "SET LOCAL citus.enable_unsafe_triggers = on".to_string(),
            format!("CREATE FUNCTION public.longtrig_fn_{pid}() RETURNS trigger LANGUAGE plpgsql AS $f$BEGIN RETURN NEW; END$f$"),
            format!("CREATE TRIGGER {long} BEFORE INSERT ON public.{t} FOR EACH ROW EXECUTE FUNCTION public.longtrig_fn_{pid}()"),
            format!("CREATE TRIGGER {mid} BEFORE UPDATE ON public.{t} FOR EACH ROW EXECUTE FUNCTION public.longtrig_fn_{pid}()"),
        ],
    );
    let table = format!("public.{t}");
    let (shard, w) = a_placement(&mut su, &t, None);
    let id = shard.rsplit('_').next().unwrap().to_string();
    let mut ws = node(w, "postgres");
    let on_shard: Vec<String> = ws
        .query(
            &format!("SELECT tgname::text FROM pg_trigger WHERE tgrelid = 'public.{shard}'::regclass AND (tgname LIKE 'note%' OR tgname LIKE 'mid%') ORDER BY 1"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(on_shard.len(), 2, "{on_shard:?}");
    assert_eq!(on_shard[0], format!("{mid}_{id}"), "{on_shard:?}");
    assert!(
        on_shard[1] != format!("{long}_{id}") && on_shard[1].ends_with(&format!("_{id}")),
        "Citus did not shorten the long name: {on_shard:?}"
    );
    assert_eq!(op_drift(&table), 0, "a long trigger name read as drift");
    // protect() again passes: the shards have nothing the table does not.
    su.execute(
        "SELECT tenancy.protect($1::text::regclass, audit => false)",
        &[&table],
    )
    .unwrap_or_else(|e| panic!("{}", message(&e)));
    // The guard on the worker lets the owner's DDL that leaves the shard's row security alone.
    let mut o = node(w, &owner);
    assert_not_privileged(&mut o);
    o.batch_execute(&format!(
        "SET citus.enable_manual_changes_to_shards = on; \
         ALTER TABLE public.{shard} ALTER COLUMN id SET STATISTICS 200"
    ))
    .unwrap_or_else(|e| panic!("{}", message(&e)));
    // A shard's trigger renamed there without its shard's suffix is not its table's.
    let e = ws
        .batch_execute(&format!(
            "SET citus.enable_manual_changes_to_shards = on; \
             ALTER TRIGGER {mid}_{id} ON public.{shard} RENAME TO {mid}"
        ))
        .expect_err("a shard's trigger lost its suffix");
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    su.batch_execute(&format!(
        "SELECT tenancy.unprotect('{table}'); DROP TABLE {table}"
    ))
    .unwrap();
}

/// verify()'s `citus_node_drift` findings, (object, detail), read by an operator.
fn op_node_drift() -> Vec<(String, String)> {
    node(0, OPERATOR)
        .query(
            "SELECT object, detail FROM tenancy.verify() WHERE rule = 'citus_node_drift' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// verify()'s `citus_node_drift` findings while `make` holds: run on `o` (a connection to a
/// worker) with DDL propagation off, then `undo` there before returning.
fn node_drift_while(o: &mut Client, make: &str, undo: &str) -> Vec<(String, String)> {
    o.batch_execute(&format!("SET citus.enable_ddl_propagation = off; {make}"))
        .unwrap_or_else(|e| panic!("{make}: {}", message(&e)));
    let found = op_node_drift();
    o.batch_execute(&format!("SET citus.enable_ddl_propagation = off; {undo}"))
        .unwrap_or_else(|e| panic!("{undo}: {}", message(&e)));
    found
}

/// One `citus_node_drift` finding, for the worker on `port`, naming `function`.
fn assert_node_drift_names(found: &[(String, String)], port: u16, function: &str) {
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, format!("127.0.0.1:{port}"), "{found:?}");
    assert!(found[0].1.contains(function), "{found:?}");
}

/// A function replaced on one worker: the policies and triggers there still read as the
/// coordinator's, but what they run is not. The guard on the workers refuses it: the table's
/// owner (NOSUPERUSER NOBYPASSRLS) replacing its trigger function on a worker with
/// `citus.enable_ddl_propagation` off (Citus allows that), or from the coordinator (Citus
/// carries it to the workers as the owner, which a worker cannot tell from the owner's own
/// connection), and a superuser replacing pg_tenancy's own functions there. Past the guard (a
/// superuser with event triggers off), `verify()` on the coordinator compares every worker's
/// definitions with its own and names the node and the functions.
#[test]
fn a_function_replaced_on_a_worker_is_refused_or_drift() {
    let pid = std::process::id();
    let (t, owner) = (format!("refn_{pid}"), format!("refn_owner_{pid}"));
    let function = format!("public.refn_fn_{pid}()");
    let mut su = superuser();
    su.batch_execute(&format!(
        "CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS; GRANT CREATE ON SCHEMA public TO {owner}"
    ))
    .unwrap();
    let body = |raise: &str| {
        format!(
            "CREATE OR REPLACE FUNCTION {function} RETURNS trigger LANGUAGE plpgsql \
             AS $f$BEGIN PERFORM public.refn_help_{pid}(); {raise} RETURN NEW; END$f$"
        )
    };
    // A function the trigger function calls (PostgreSQL records no dependency on it), and one a
    // domain of a column checks with.
    let helper = |raise: &str| {
        format!(
            "CREATE OR REPLACE FUNCTION public.refn_help_{pid}() RETURNS void LANGUAGE plpgsql \
             AS $h$BEGIN {raise} END$h$"
        )
    };
    let check = |body: &str| {
        format!(
            "CREATE OR REPLACE FUNCTION public.refn_ok_{pid}(v text) RETURNS boolean LANGUAGE sql IMMUTABLE \
             AS $c${body}$c$"
        )
    };
    // And one a domain checks with that a column's values reach only through another domain
    // over it, in an array (a reviewer's pass: the guard followed a column's own type alone).
    let deep = |body: &str| {
        format!(
            "CREATE OR REPLACE FUNCTION public.refn_deep_{pid}(v text) RETURNS boolean LANGUAGE sql IMMUTABLE \
             AS $c${body}$c$"
        )
    };
    // And one of a domain that no column is of, but that a column's default converts to (a
    // reviewer's pass: the guard followed the columns' types alone).
    let expr = |body: &str| {
        format!(
            "CREATE OR REPLACE FUNCTION public.refn_xok_{pid}(v text) RETURNS boolean LANGUAGE sql IMMUTABLE \
             AS $c${body}$c$"
        )
    };
    setup_in_one_transaction(
        &mut su,
        &[
            helper(""),
            format!("ALTER FUNCTION public.refn_help_{pid}() OWNER TO {owner}"),
            check("SELECT v <> ''"),
            format!("ALTER FUNCTION public.refn_ok_{pid}(text) OWNER TO {owner}"),
            format!("CREATE DOMAIN public.refn_code_{pid} AS text CHECK (public.refn_ok_{pid}(VALUE))"),
            deep("SELECT v <> ''"),
            format!("ALTER FUNCTION public.refn_deep_{pid}(text) OWNER TO {owner}"),
            format!("CREATE DOMAIN public.refn_base_{pid} AS text CHECK (public.refn_deep_{pid}(VALUE))"),
            format!("CREATE DOMAIN public.refn_wrap_{pid} AS public.refn_base_{pid}"),
            expr("SELECT v <> ''"),
            format!("ALTER FUNCTION public.refn_xok_{pid}(text) OWNER TO {owner}"),
            format!("CREATE DOMAIN public.refn_expr_{pid} AS text CHECK (public.refn_xok_{pid}(VALUE))"),
            format!("CREATE TABLE public.{t} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int, note text, code public.refn_code_{pid}, deep public.refn_wrap_{pid}[], \
                     tag text DEFAULT ('x'::public.refn_expr_{pid}))"),
            // Colocated with no other test's table (so not audited: the trail is colocated with
            // the audited tables): decommission_tenant deletes a tenant's rows of colocated
            // tables in one transaction, which Citus runs as one owner.
            format!("SELECT create_distributed_table('public.{t}', 'tenant_id', colocate_with => 'none')"),
            format!("SELECT tenancy.protect('public.{t}', audit => false)"),
            format!("ALTER TABLE public.{t} OWNER TO {owner}"),
            "SET LOCAL citus.enable_unsafe_triggers = on".to_string(),
            body(""),
            format!("ALTER FUNCTION {function} OWNER TO {owner}"),
            // A backslash in a constant prints doubled, as E'...', in a session with
            // standard_conforming_strings off (a reviewer's pass: false drift).
            format!("CREATE TRIGGER note BEFORE INSERT ON public.{t} FOR EACH ROW \
                     WHEN (NEW.note IS DISTINCT FROM 'a\\b') EXECUTE FUNCTION {function}"),
        ],
    );
    let table = format!("public.{t}");
    assert_eq!(op_node_drift(), vec![], "drift before anything changed");
    assert_eq!(op_drift(&table), 0);
    let mut old_strings = node(0, OPERATOR);
    old_strings
        .batch_execute("SET standard_conforming_strings = off")
        .unwrap();
    let found: i64 = old_strings
        .query_one(
            "SELECT count(*) FROM tenancy.verify() WHERE rule = 'citus_shard_drift' AND object = $1",
            &[&table],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        found, 0,
        "an operator with standard_conforming_strings off saw drift"
    );
    let port = ports()[1];

    // The table's owner, on worker 1: its trigger function would copy every tenant's rows
    // (here: a notice stands for the copy). Citus refuses it with DDL propagation on; the guard
    // with it off, and ALTER FUNCTION too.
    let mut o = node(1, &owner);
    assert_not_privileged(&mut o);
    let e = o
        .batch_execute(&body("RAISE NOTICE 'copied';"))
        .expect_err("Citus let the owner replace a distributed function on a worker");
    assert!(
        message(&e).contains("not allowed on this node"),
        "{}",
        message(&e)
    );
    for (statement, changed) in [
        (body("RAISE NOTICE 'copied';"), format!("refn_fn_{pid}()")),
        (
            format!("ALTER FUNCTION {function} SECURITY DEFINER"),
            format!("refn_fn_{pid}()"),
        ),
        (
            format!("ALTER FUNCTION {function} SET search_path = public"),
            format!("refn_fn_{pid}()"),
        ),
        // The domain's check, which every write of a tenant's row runs.
        (check("SELECT true"), format!("refn_ok_{pid}(text)")),
        // The check of the domain under the array's domain.
        (deep("SELECT true"), format!("refn_deep_{pid}(text)")),
        // The check of the domain the default converts to.
        (expr("SELECT true"), format!("refn_xok_{pid}(text)")),
    ] {
        let e = o
            .batch_execute(&format!(
                "SET citus.enable_ddl_propagation = off; {statement}"
            ))
            .expect_err("the owner changed a function a protected table runs, on a worker");
        assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
        assert!(
            message(&e).contains(&changed) && message(&e).contains(&table),
            "{}",
            message(&e)
        );
        o.batch_execute("RESET citus.enable_ddl_propagation")
            .unwrap();
    }
    // The function the trigger function calls is not known to the guard: verify() finds it
    // changed on the worker.
    let found = node_drift_while(&mut o, &helper("RAISE NOTICE 'copied';"), &helper(""));
    assert_node_drift_names(&found, port, &format!("refn_help_{pid}()"));
    assert_eq!(op_node_drift(), vec![]);
    // Nor a function made on the worker alone (one that would shadow another there).
    let found = node_drift_while(
        &mut o,
        &format!("CREATE FUNCTION public.refn_shadow_{pid}(v text) RETURNS text LANGUAGE sql AS $s$SELECT v$s$"),
        &format!("DROP FUNCTION public.refn_shadow_{pid}(text)"),
    );
    assert_node_drift_names(&found, port, &format!("refn_shadow_{pid}(text)"));
    // Nor an aggregate made there alone to overload a function a trigger function calls (an
    // aggregate runs its own state function; pg_get_functiondef does not print one).
    let found = node_drift_while(
        &mut o,
        &format!("CREATE AGGREGATE public.refn_agg_{pid}(text) (SFUNC = pg_catalog.textcat, STYPE = text)"),
        &format!("DROP AGGREGATE public.refn_agg_{pid}(text)"),
    );
    assert_node_drift_names(&found, port, &format!("refn_agg_{pid}(text)"));
    // Nor one hidden there as a member of an extension the owner made (a trusted one, which any
    // role with CREATE on the database may make; its script's own functions are a
    // superuser's): a fourth reviewer's pass.
    let db = std::env::var("TENANCY_IT_DB").unwrap();
    let mut ws = node(1, "postgres");
    ws.batch_execute(&format!(
        "SET citus.enable_ddl_propagation = off; GRANT CREATE ON DATABASE {db} TO {owner}"
    ))
    .unwrap();
    let found = node_drift_while(
        &mut o,
        &format!(
            "CREATE EXTENSION pgcrypto SCHEMA public; \
             CREATE FUNCTION public.refn_hidden_{pid}(v text) RETURNS text LANGUAGE sql AS $s$SELECT v$s$; \
             ALTER EXTENSION pgcrypto ADD FUNCTION public.refn_hidden_{pid}(text)"
        ),
        "DROP EXTENSION pgcrypto",
    );
    ws.batch_execute(&format!(
        "SET citus.enable_ddl_propagation = off; REVOKE CREATE ON DATABASE {db} FROM {owner}"
    ))
    .unwrap();
    assert_node_drift_names(&found, port, &format!("refn_hidden_{pid}(text)"));
    // Nor a function Citus distributed, dropped there (made a member of another extension
    // there, it would be hidden the same way).
    let found = node_drift_while(
        &mut o,
        &format!("DROP FUNCTION public.refn_help_{pid}()"),
        &helper(""),
    );
    assert_node_drift_names(&found, port, &format!("refn_help_{pid}()"));
    assert_eq!(op_node_drift(), vec![]);
    // A function's name is its owner's choice: one with a line break in it made on a worker
    // alone stays inside a literal of verify()'s fix, which an operator may run as it is
    // (`\gexec`): in a comment it ended the comment, and the rest of the name ran.
    let odd = format!("refn_nl_{pid}\nSELECT 1/0; --");
    o.batch_execute(&format!(
        "SET citus.enable_ddl_propagation = off; \
         CREATE FUNCTION public.\"{odd}\"() RETURNS int LANGUAGE sql AS $n$SELECT 1$n$"
    ))
    .unwrap();
    let fix: Vec<String> = node(0, OPERATOR)
        .query(
            "SELECT fix FROM tenancy.verify() WHERE rule = 'citus_node_drift'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    o.batch_execute(&format!(
        "SET citus.enable_ddl_propagation = off; DROP FUNCTION public.\"{odd}\"()"
    ))
    .unwrap();
    assert_eq!(fix.len(), 1, "{fix:?}");
    node(0, OPERATOR)
        .batch_execute(&fix[0])
        .unwrap_or_else(|e| panic!("the fix ran the name's text: {}\n{}", message(&e), fix[0]));
    // On the coordinator the owner may not either (Citus would carry the change to the workers
    // as the owner, which they refuse), nor change the coordinator's alone with propagation off.
    let mut oc = node(0, &owner);
    for propagation in ["on", "off"] {
        let e = oc
            .batch_execute(&format!(
                "SET citus.enable_ddl_propagation = {propagation}; {}",
                body("RAISE NOTICE 'copied';")
            ))
            .expect_err("the owner changed a protected Citus table's trigger function");
        assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    }
    assert_eq!(op_node_drift(), vec![]);
    // A superuser (a trusted migration role) changes it on the coordinator: Citus carries it
    // over its own connections, and every node has the same.
    su.batch_execute(&body("RAISE NOTICE 'checked';"))
        .unwrap_or_else(|e| panic!("{}", message(&e)));
    assert_eq!(op_node_drift(), vec![]);

    // Past the guard: a superuser on worker 1 with event triggers off.
    let mut ws = node(1, "postgres");
    let found = node_drift_while(
        &mut ws,
        &format!(
            "SET session_replication_role = replica; {}",
            body("RAISE NOTICE 'copied';")
        ),
        &body("RAISE NOTICE 'checked';"),
    );
    assert_node_drift_names(&found, port, &format!("refn_fn_{pid}()"));
    assert_eq!(op_node_drift(), vec![]);

    // pg_tenancy's own current_tenant() (a C function), replaced on worker 1 by a superuser
    // with one that returns no tenant: refused; past the guard, drift. Restored from the
    // coordinator's definition before asserting.
    let original: String = su
        .query_one(
            "SELECT pg_get_functiondef('tenancy.current_tenant()'::regprocedure)",
            &[],
        )
        .unwrap()
        .get(0);
    let replace = "SET citus.enable_ddl_propagation = off; \
         CREATE OR REPLACE FUNCTION tenancy.current_tenant() RETURNS uuid LANGUAGE sql STABLE \
         AS $f$SELECT NULL::uuid$f$";
    let mut ws = node(1, "postgres");
    let e = ws
        .batch_execute(replace)
        .expect_err("a superuser replaced pg_tenancy's function on a worker");
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    assert!(
        message(&e).contains("tenancy.current_tenant()"),
        "{}",
        message(&e)
    );
    let mut ws = node(1, "postgres");
    let found = node_drift_while(
        &mut ws,
        &format!("SET session_replication_role = replica; {replace}"),
        &original,
    );
    assert_node_drift_names(&found, port, "tenancy.current_tenant()");
    assert_eq!(
        op_node_drift(),
        vec![],
        "restored from the coordinator's definition"
    );
    su.batch_execute(&format!(
        "SELECT tenancy.unprotect('{table}'); DROP TABLE {table}"
    ))
    .unwrap();
}

/// verify()'s `citus_shard_drift` findings for one table, read by an operator.
fn op_drift(table: &str) -> i64 {
    node(0, OPERATOR)
        .query_one(
            "SELECT count(*) FROM tenancy.verify() WHERE rule = 'citus_shard_drift' AND object = $1",
            &[&table],
        )
        .unwrap()
        .get(0)
}

/// The guard on the workers: the row security of a protected table's shards, and of its shell
/// on a worker, cannot be changed there, by its superuser or by the table's owner (who cannot
/// pass for Citus's own connection by its `application_name`); changes that leave row security
/// alone pass, and a renamed table stays guarded.
#[test]
fn the_shards_of_a_protected_table_refuse_changes_made_on_a_worker() {
    let pid = std::process::id();
    let (t, r, owner) = (
        format!("guarded_{pid}"),
        format!("guarded_ref_{pid}"),
        format!("guard_owner_{pid}"),
    );
    let mut su = superuser();
    su.batch_execute(&format!(
        "CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS"
    ))
    .unwrap();
    setup_in_one_transaction(
        &mut su,
        &[
            format!("CREATE TABLE public.{t} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int)"),
            format!("SELECT create_distributed_table('public.{t}', 'tenant_id')"),
            format!("SELECT tenancy.protect('public.{t}', audit => false)"),
            format!("CREATE TABLE public.{r} (tenant_id uuid, id int)"),
            format!("SELECT create_reference_table('public.{r}')"),
            format!("SELECT tenancy.protect('public.{r}', audit => false)"),
            format!("ALTER TABLE public.{t} OWNER TO {owner}"),
        ],
    );
    let shard_on_worker = |table: &str| -> String {
        superuser()
            .query_one(
                &format!(
                    "SELECT shard_name('public.{table}'::regclass, shardid) FROM citus_shards \
                      WHERE table_name = 'public.{table}'::regclass AND nodeport = $1 ORDER BY shardid LIMIT 1"
                ),
                &[&i32::from(ports()[1])],
            )
            .unwrap()
            .get(0)
    };
    let (shard, ref_copy) = (shard_on_worker(&t), shard_on_worker(&r));
    let refused = |c: &mut Client, sql: &str| {
        let e = c
            .batch_execute(sql)
            .expect_err(&format!("{sql} was not refused"));
        assert_eq!(sqlstate(&e), "42501", "{sql}: {}", message(&e));
        assert!(
            message(&e).contains(&format!("protected table \"public.")),
            "{sql}: {}",
            message(&e)
        );
    };
    let mut w = node(1, "postgres");
    w.batch_execute("SET citus.enable_manual_changes_to_shards = on")
        .unwrap();
    for sql in [
        format!("DROP POLICY tenancy_select ON {shard}"),
        format!("ALTER TABLE {shard} DISABLE ROW LEVEL SECURITY"),
        format!("ALTER TABLE {shard} NO FORCE ROW LEVEL SECURITY"),
        format!("CREATE POLICY widen ON {shard} USING (true)"),
        format!("ALTER POLICY tenancy_select ON {shard} USING (true)"),
        format!("CREATE TRIGGER zz_spy BEFORE UPDATE ON {shard} FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()"),
        format!("ALTER POLICY tenancy_select ON {ref_copy} USING (true)"),
        format!("DROP POLICY tenancy_select ON public.{t}"),
        format!("DROP POLICY tenancy_select ON public.{r}"),
    ] {
        refused(&mut w, &sql);
    }
    // What leaves row security alone passes.
    w.batch_execute(&format!("CREATE INDEX ON {shard} (id); ANALYZE {shard}"))
        .unwrap();

    // The table's owner, on the worker, naming its connection as Citus names its own.
    let mut cfg = postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(ports()[1])
        .dbname(&std::env::var("TENANCY_IT_DB").unwrap())
        .user(&owner)
        .application_name("citus_internal gpid=10000000001");
    let mut o = cfg.connect(NoTls).unwrap();
    assert_not_privileged(&mut o);
    o.batch_execute("SET citus.enable_manual_changes_to_shards = on")
        .unwrap();
    refused(&mut o, &format!("DROP POLICY tenancy_select ON {shard}"));
    refused(
        &mut o,
        &format!("ALTER TABLE {shard} DISABLE ROW LEVEL SECURITY"),
    );
    // What an attacker's review found past the first version of the guard, as the owner on the
    // worker: a trigger named like pg_tenancy's, a rule, an index expression running the
    // owner's code, a policy naming another table or role, a shard renamed away and back.
    su.batch_execute(&format!(
        "CREATE FUNCTION public.owners_trg_{pid}() RETURNS trigger LANGUAGE plpgsql AS $f$BEGIN RETURN OLD; END$f$; \
         CREATE FUNCTION public.owners_imm_{pid}() RETURNS int LANGUAGE plpgsql IMMUTABLE AS $f$BEGIN RETURN 1; END$f$; \
         ALTER FUNCTION public.owners_trg_{pid}() OWNER TO {owner}; ALTER FUNCTION public.owners_imm_{pid}() OWNER TO {owner}"
    ))
    .unwrap_or_else(|e| panic!("{}", message(&e)));
    for sql in [
        format!("CREATE TRIGGER tenancy_x BEFORE DELETE ON {shard} FOR EACH ROW EXECUTE FUNCTION public.owners_trg_{pid}()"),
        format!("CREATE RULE r1 AS ON DELETE TO {shard} DO ALSO SELECT 1"),
        format!("CREATE INDEX ON {shard} ((id + public.owners_imm_{pid}()))"),
        format!("ALTER POLICY tenancy_select ON {shard} USING (tenant_id = tenancy.allowed_tenant('public.{r}'::regclass, 'select'))"),
        format!("ALTER POLICY tenancy_select ON {shard} TO {owner}"),
        format!("ALTER TABLE {shard} RENAME TO zz_{pid}"),
        // Found by a second review: emptying a shard, dropping it (its name then free for a
        // table without row security), a child table whose rows the shard's readers see.
        format!("TRUNCATE {shard}"),
        format!("DROP TABLE {shard}"),
        format!("CREATE TABLE public.child_{pid} () INHERITS ({shard})"),
    ] {
        let e = o
            .batch_execute(&sql)
            .expect_err(&format!("{sql} was not refused"));
        assert_eq!(sqlstate(&e), "42501", "{sql}: {}", message(&e));
    }
    // A table of the owner's whose policy merely reads the protected table is not a shard.
    su.batch_execute(&format!(
        "CREATE TABLE public.reads_{pid} (id int); ALTER TABLE public.reads_{pid} ENABLE ROW LEVEL SECURITY; \
         CREATE POLICY p ON public.reads_{pid} USING (EXISTS (SELECT 1 FROM public.{t})); \
         ALTER TABLE public.reads_{pid} ADD COLUMN y int; DROP TABLE public.reads_{pid}"
    ))
    .unwrap_or_else(|e| panic!("{}", message(&e)));
    // Citus moves a protected table's shard: the new placement is built one statement at a
    // time, in the move's own transaction.
    let moved = format!("moved_{pid}");
    setup_in_one_transaction(
        &mut su,
        &[
            format!("CREATE TABLE public.{moved} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int)"),
            format!("SELECT create_distributed_table('public.{moved}', 'tenant_id', colocate_with => 'none', shard_count => 2)"),
            format!("SELECT tenancy.protect('public.{moved}', audit => false)"),
        ],
    );
    let (shardid, from): (i64, i32) = {
        let r = su
            .query_one(
                &format!("SELECT shardid, nodeport FROM citus_shards WHERE table_name = 'public.{moved}'::regclass ORDER BY shardid LIMIT 1"),
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    let to = ports()[1..]
        .iter()
        .map(|p| i32::from(*p))
        .find(|p| *p != from)
        .unwrap();
    su.execute(
        "SELECT citus_move_shard_placement($1, '127.0.0.1', $2, '127.0.0.1', $3, shard_transfer_mode => 'block_writes')",
        &[&shardid, &from, &to],
    )
    .unwrap_or_else(|e| panic!("move: {}", message(&e)));
    let drift: i64 = op_drift(&format!("public.{moved}"));
    assert_eq!(drift, 0, "the moved shard keeps its policies");

    // Renamed on the coordinator, still guarded under its new name.
    su.batch_execute(&format!("ALTER TABLE public.{t} RENAME TO {t}_renamed"))
        .unwrap();
    refused(
        &mut w,
        &format!("DROP POLICY tenancy_select ON public.{t}_renamed"),
    );
    let shard = shard_on_worker(&format!("{t}_renamed"));
    refused(&mut w, &format!("DROP POLICY tenancy_select ON {shard}"));
    // Nothing was changed: verify() finds no drift.
    let mut op = node(0, OPERATOR);
    let drift: i64 = op
        .query_one(
            "SELECT count(*) FROM tenancy.verify() WHERE rule = 'citus_shard_drift' AND object LIKE 'public.guarded%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(drift, 0);
    // Unprotected (by a superuser: it may hold tenants' rows, which an operator may not
    // unprotect), its shards are the owner's again.
    su.batch_execute(&format!("SELECT tenancy.unprotect('public.{t}_renamed')"))
        .unwrap();
    o.batch_execute(&format!(
        "CREATE POLICY mine ON {shard} USING (true); DROP POLICY mine ON {shard}"
    ))
    .unwrap();
}

/// `decommission_tenant` on Citus, by an operator, with tables owned by a NOSUPERUSER role:
/// the tenant's rows are deleted from a distributed table's shard on its worker as the table's
/// owner (a trigger of the owner there runs, and not as a superuser), with the deletion's
/// binding carried to the worker as an assertion the coordinator signs; the other tenant's rows
/// stay; the certificate verifies. What Citus cannot do in one transaction is refused with a
/// HINT first, changing nothing: a reference table that holds rows of the tenant, colocated
/// tables of different owners.
#[test]
fn decommission_removes_the_tenants_rows_on_every_node() {
    let f = Fixture::new();
    let pid = std::process::id();
    let (d, d2, r, owner) = (
        format!("dec_{pid}"),
        format!("dec2_{pid}"),
        format!("dec_ref_{pid}"),
        format!("dec_owner_{pid}"),
    );
    let mut su = superuser();
    su.batch_execute(&format!(
        "CREATE ROLE {owner} NOLOGIN NOSUPERUSER NOBYPASSRLS"
    ))
    .unwrap();
    setup_in_one_transaction(
        &mut su,
        &[
            format!("CREATE TABLE public.{d} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int, v text)"),
            format!("SELECT create_distributed_table('public.{d}', 'tenant_id', colocate_with => 'none')"),
            format!("SELECT tenancy.protect('public.{d}', audit => false)"),
            format!("CREATE TABLE public.{d2} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int, v text)"),
            format!("SELECT create_distributed_table('public.{d2}', 'tenant_id', colocate_with => 'public.{d}')"),
            format!("SELECT tenancy.protect('public.{d2}', audit => false)"),
            format!("CREATE TABLE public.{r} (tenant_id uuid, id int, v text)"),
            format!("SELECT create_reference_table('public.{r}')"),
            format!("SELECT tenancy.protect('public.{r}', audit => false)"),
            format!("GRANT SELECT, INSERT, UPDATE, DELETE ON public.{d}, public.{d2}, public.{r} TO {APP}"),
            format!("ALTER TABLE public.{d} OWNER TO {owner}"),
            format!("ALTER TABLE public.{r} OWNER TO {owner}"),
            // A trigger of the owner on the shards: it must never run as a superuser.
            "SET LOCAL citus.enable_unsafe_triggers = on".to_string(),
            format!(
                "CREATE FUNCTION public.dec_trg_{pid}() RETURNS trigger LANGUAGE plpgsql AS $f$ \
                 BEGIN IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN \
                 RAISE EXCEPTION 'the trigger ran as a superuser'; END IF; RETURN OLD; END $f$"
            ),
            format!("ALTER FUNCTION public.dec_trg_{pid}() OWNER TO {owner}"),
            format!("CREATE TRIGGER owners_code BEFORE DELETE ON public.{d} FOR EACH ROW EXECUTE FUNCTION public.dec_trg_{pid}()"),
        ],
    );
    let mut app = app_on(0);
    each_tenant_writes_and_reads_only_its_own(&mut app, &f, &d);
    each_tenant_writes_and_reads_only_its_own(&mut app, &f, &d2);
    each_tenant_writes_and_reads_only_its_own(&mut app, &f, &r);
    let count = |su: &mut Client, table: &str, tenant: &str| -> i64 {
        su.query_one(
            &format!("SELECT count(*) FROM public.{table} WHERE tenant_id = $1::text::uuid"),
            &[&tenant],
        )
        .unwrap()
        .get(0)
    };
    let mut op = node(0, OPERATOR);
    assert_not_privileged(&mut op);
    let refused = |op: &mut Client, hint_says: &str| {
        let e = op
            .query_one("SELECT tenancy.decommission_tenant($1, $1)", &[&f.a])
            .unwrap_err();
        assert_eq!(sqlstate(&e), "55000", "{}", message(&e));
        let hint = e.as_db_error().and_then(|d| d.hint()).unwrap_or_default();
        assert!(hint.contains(hint_says), "{hint}");
    };
    // A reference table with a row of the tenant: deleted first by the tenant's own session.
    refused(&mut op, "session bound to the tenant");
    for table in [&d, &d2, &r] {
        assert_eq!(count(&mut su, table, &f.a_id), 1, "nothing changed");
    }
    let mut tx = app.transaction().unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "ann")])
        .unwrap();
    tx.execute(&format!("DELETE FROM public.{r}"), &[]).unwrap();
    tx.commit().unwrap();
    // An owner Citus cannot connect as.
    refused(&mut op, &format!("ALTER ROLE {owner} LOGIN"));
    su.batch_execute(&format!("ALTER ROLE {owner} LOGIN"))
        .unwrap();
    // Colocated tables of two owners.
    refused(&mut op, &format!("OWNER TO {owner}"));
    for table in [&d, &d2] {
        assert_eq!(count(&mut su, table, &f.a_id), 1, "nothing changed");
    }
    su.batch_execute(&format!("ALTER TABLE public.{d2} OWNER TO {owner}"))
        .unwrap();

    let cert: String = op
        .query_one("SELECT tenancy.decommission_tenant($1, $1)::text", &[&f.a])
        .unwrap()
        .get(0);
    let ok: bool = op
        .query_one(
            "SELECT tenancy.verify_certificate($1::text::jsonb)",
            &[&cert],
        )
        .unwrap()
        .get(0);
    assert!(ok);
    let cert: serde_json::Value = serde_json::from_str(&cert).unwrap();
    assert_eq!(cert["rows_deleted"][format!("public.{d}")], 1, "{cert}");
    assert_eq!(cert["rows_deleted"][format!("public.{d2}")], 1, "{cert}");
    // Gone from the shards on the workers; the other tenant's rows stay.
    for table in [&d, &d2, &r] {
        assert_eq!(count(&mut su, table, &f.a_id), 0, "{table}");
        assert_eq!(count(&mut su, table, &f.b_id), 1, "{table}");
    }
}

/// A worker acts on an assertion (pg_tenancy's own work carried from the coordinator) only when
/// the platform's certificate key signed it: one made up by a client, or signed by another
/// key, is refused.
#[test]
fn a_worker_refuses_an_assertion_the_coordinator_did_not_sign() {
    use base64::Engine;
    let f = Fixture::new();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = serde_json::json!({
        "purpose": "decommission",
        "tenant": f.a_id,
        "table": "public.anything",
        "iat": now(),
    })
    .to_string();
    let key_id: String = superuser()
        .query_one("SELECT key_id FROM tenancy.certificate_keys LIMIT 1", &[])
        .unwrap()
        .get(0);
    for (kid, why) in [
        (key_id.as_str(), "bad signature"),
        ("nokey", "no certificate key"),
    ] {
        let forged = format!(
            "tenancy-assertion.v1.{kid}.{}.{}",
            b64.encode(payload.as_bytes()),
            b64.encode([0u8; 64])
        );
        let mut w = app_on(1);
        let mut tx = w.transaction().unwrap();
        tx.batch_execute(&format!("SET LOCAL tenancy.carrier = '{forged}'"))
            .unwrap();
        let e = tx
            .query_one("SELECT tenancy.current_tenant()", &[])
            .unwrap_err();
        assert_eq!(sqlstate(&e), "28000", "{}", message(&e));
        assert!(message(&e).contains(why), "{}", message(&e));
    }
}

/// An assertion read from a worker's activity (here: from the coordinator's log of what it
/// sends) serves no role but the table's owner, whom Citus connects as, and only for its one
/// tenant and table.
#[test]
fn a_captured_assertion_serves_no_role_but_the_tables_owner() {
    let f = Fixture::new();
    let pid = std::process::id();
    let (t, other, owner) = (
        format!("captured_{pid}"),
        format!("captured_other_{pid}"),
        format!("captured_owner_{pid}"),
    );
    let mut su = superuser();
    su.batch_execute(&format!(
        "CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS"
    ))
    .unwrap();
    setup_in_one_transaction(
        &mut su,
        &[
            format!("CREATE TABLE public.{t} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int, v text)"),
            format!("SELECT create_distributed_table('public.{t}', 'tenant_id', colocate_with => 'none')"),
            format!("SELECT tenancy.protect('public.{t}', audit => false)"),
            format!("CREATE TABLE public.{other} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int, v text)"),
            format!("SELECT create_distributed_table('public.{other}', 'tenant_id', colocate_with => 'public.{t}')"),
            format!("SELECT tenancy.protect('public.{other}', audit => false)"),
            format!("GRANT SELECT, INSERT ON public.{t}, public.{other} TO {APP}"),
            format!("ALTER TABLE public.{t} OWNER TO {owner}"),
            format!("ALTER TABLE public.{other} OWNER TO {owner}"),
        ],
    );
    let mut app = app_on(0);
    each_tenant_writes_and_reads_only_its_own(&mut app, &f, &t);
    each_tenant_writes_and_reads_only_its_own(&mut app, &f, &other);

    // A decommission of tenant A, rolled back, with Citus's log of the commands it sends.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut cfg = postgres::Config::new();
    let sink = seen.clone();
    cfg.host("127.0.0.1")
        .port(ports()[0])
        .dbname(&std::env::var("TENANCY_IT_DB").unwrap())
        .user("postgres")
        .notice_callback(move |n| sink.lock().unwrap().push(n.message().to_string()));
    let mut logged = cfg.connect(NoTls).unwrap();
    let mut tx = logged.transaction().unwrap();
    tx.batch_execute("SET LOCAL citus.log_remote_commands = on")
        .unwrap();
    tx.query_one("SELECT tenancy.decommission_tenant($1, $1)", &[&f.a])
        .unwrap();
    tx.rollback().unwrap();
    let assertion = seen
        .lock()
        .unwrap()
        .iter()
        .find_map(|m| {
            let at = m.find("tenancy-assertion.v1.")?;
            let rest = &m[at..];
            Some(rest[..rest.find('\'').unwrap_or(rest.len())].to_string())
        })
        .expect("the coordinator carried an assertion");

    // Shard of tenant A's rows: on whichever worker.
    let port: i32 = su
        .query_one(
            &format!(
                "SELECT nodeport FROM citus_shards WHERE shardid = get_shard_id_for_distribution_column('public.{t}', $1::text::uuid)"
            ),
            &[&f.a_id],
        )
        .unwrap()
        .get(0);
    let i = ports().iter().position(|p| i32::from(*p) == port).unwrap();
    let use_it = |c: &mut Client, table: &str| -> Result<i64, postgres::Error> {
        let mut tx = c.transaction()?;
        tx.batch_execute(&format!("SET LOCAL tenancy.carrier = '{assertion}'"))?;
        let n: i64 = tx
            .query_one(&format!("SELECT count(*) FROM public.{table}"), &[])?
            .get(0);
        tx.rollback()?;
        Ok(n)
    };
    // The application role, on the worker: refused.
    let e = use_it(&mut app_on(i), &t).unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    assert!(message(&e).contains("for the owner"), "{}", message(&e));
    // The owner (the documented residual, within the minute): its one tenant and table only.
    let mut o = node(i, &owner);
    assert_not_privileged(&mut o);
    assert_eq!(use_it(&mut o, &t).unwrap(), 1);
    let e = use_it(&mut o, &other).unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
}

/// Decommission counts rows as the catalog's owner, and the planner evaluates an index
/// expression's constant calls while it plans: a protected table whose definition calls its
/// owner's code is counted as that owner, so the code never runs as a superuser (it raises if
/// it does).
#[test]
fn decommission_never_runs_a_tables_index_expression_as_a_superuser() {
    let f = Fixture::new();
    let pid = std::process::id();
    let (t, owner) = (format!("leaky_{pid}"), format!("leaky_owner_{pid}"));
    let mut su = superuser();
    su.batch_execute(&format!(
        "CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS"
    ))
    .unwrap();
    setup_in_one_transaction(
        &mut su,
        &[
            format!(
                "CREATE FUNCTION public.leaky_imm_{pid}() RETURNS int LANGUAGE plpgsql IMMUTABLE AS $f$ \
                 BEGIN IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN \
                 RAISE EXCEPTION 'the owner''s code ran as a superuser'; END IF; RETURN 1; END $f$"
            ),
            format!("ALTER FUNCTION public.leaky_imm_{pid}() OWNER TO {owner}"),
            format!("CREATE TABLE public.{t} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int)"),
            format!("SELECT create_distributed_table('public.{t}', 'tenant_id', colocate_with => 'none')"),
            format!("ALTER TABLE public.{t} OWNER TO {owner}"),
            // Created before the table is protected (the guard refuses it on a protected table).
            format!("CREATE INDEX ON public.{t} ((id + public.leaky_imm_{pid}()))"),
            format!("SELECT tenancy.protect('public.{t}', audit => false)"),
        ],
    );
    let mut op = node(0, OPERATOR);
    assert_not_privileged(&mut op);
    op.query_one("SELECT tenancy.decommission_tenant($1, $1)", &[&f.a])
        .unwrap_or_else(|e| panic!("{}", message(&e)));
    // Leave the cluster as the other tests expect it (a superuser unprotects: the table's
    // index calls its owner's code, so an operator may not take it for empty).
    su.batch_execute(&format!("SELECT tenancy.unprotect('public.{t}')"))
        .unwrap();
    su.batch_execute(&format!("DROP TABLE public.{t}")).unwrap();
}

/// Schema-based sharding: a table created in a schema Citus distributes and pg_tenancy
/// auto-protects is protected once Citus has made it a single-shard table (Citus's CREATE TABLE
/// used to fail); `protect_schema` protects a distributed schema's tables. Both without the
/// audit trail (said in a NOTICE), both confine each tenant to its rows, and the guard holds on
/// their shards.
#[test]
fn auto_protect_and_protect_schema_protect_a_schema_citus_distributes() {
    let f = Fixture::new();
    let pid = std::process::id();
    let (auto, whole) = (format!("auto_{pid}"), format!("whole_{pid}"));
    let mut su = superuser();
    su.batch_execute(&format!(
        "CREATE SCHEMA {auto}; SELECT citus_schema_distribute('{auto}'); \
         CREATE SCHEMA {whole}; SELECT citus_schema_distribute('{whole}'); \
         CREATE TABLE {whole}.items (tenant_id uuid, id int, v text); \
         GRANT USAGE ON SCHEMA {auto}, {whole} TO {APP}"
    ))
    .unwrap();
    let mut op = node(0, OPERATOR);
    assert_not_privileged(&mut op);
    op.batch_execute(&format!("SELECT tenancy.auto_protect('{auto}')"))
        .unwrap();
    su.batch_execute(&format!(
        "CREATE TABLE {auto}.notes (tenant_id uuid, id int, v text); \
         GRANT SELECT, INSERT ON {auto}.notes, {whole}.items TO {APP}"
    ))
    .unwrap();
    let n: i32 = op
        .query_one(&format!("SELECT tenancy.protect_schema('{whole}')"), &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    for table in [format!("{auto}.notes"), format!("{whole}.items")] {
        let method: String = su
            .query_one(
                "SELECT partmethod::text FROM pg_dist_partition WHERE logicalrelid = $1::text::regclass",
                &[&table],
            )
            .unwrap()
            .get(0);
        assert_eq!(method, "n", "{table} is a single-shard Citus table");
        let mut app = app_on(0);
        each_tenant_writes_and_reads_only_its_own(&mut app, &f, &table);
        let e = app
            .query(&format!("SELECT * FROM {table}"), &[])
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
        // Its shard is guarded on its worker.
        let (shard, port): (String, i32) = {
            let r = su
                .query_one(
                    "SELECT shard_name(table_name, shardid), nodeport FROM citus_shards WHERE table_name = $1::text::regclass",
                    &[&table],
                )
                .unwrap();
            (r.get(0), r.get(1))
        };
        let i = ports().iter().position(|p| i32::from(*p) == port).unwrap();
        let mut w = node(i, "postgres");
        let e = w
            .batch_execute(&format!(
                "SET citus.enable_manual_changes_to_shards = on; DROP POLICY tenancy_select ON {shard}"
            ))
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    }
}

/// A protected reference table (one copy on every node) is confined like a distributed one,
/// and refuses an unbound statement; EXPLAIN without a binding plans a protected distributed
/// table's statement (nothing runs) instead of refusing it.
#[test]
fn reference_tables_refuse_unbound_statements_and_unbound_explain_plans() {
    let f = Fixture::new();
    let pid = std::process::id();
    let (r, d) = (format!("ref_{pid}"), format!("unbound_{pid}"));
    let mut su = superuser();
    setup_in_one_transaction(
        &mut su,
        &[
        format!("CREATE TABLE public.{r} (tenant_id uuid, id int, v text)"),
        format!("SELECT create_reference_table('public.{r}')"),
        format!("SELECT tenancy.protect('public.{r}', audit => false)"),
        format!("GRANT SELECT, INSERT ON public.{r} TO {APP}"),
        format!("CREATE TABLE public.{d} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int)"),
        format!("SELECT create_distributed_table('public.{d}', 'tenant_id')"),
        format!("SELECT tenancy.protect('public.{d}', audit => false)"),
        format!("GRANT SELECT ON public.{d} TO {APP}"),
        ],
    );
    let mut c = app_on(0);
    each_tenant_writes_and_reads_only_its_own(&mut c, &f, &r);
    for sql in [
        format!("SELECT v FROM public.{r}"),
        format!("SELECT * FROM public.{d}"),
    ] {
        let e = c.query(&sql, &[]).unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{sql}: {}", message(&e));
    }
    let plan: Vec<String> = c
        .query(
            &format!("EXPLAIN (COSTS OFF) SELECT * FROM public.{d} WHERE id = 1"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(
        plan.iter()
            .any(|l| l.contains("Custom Scan (Citus Adaptive)")),
        "{plan:?}"
    );
}

/// A role mapped to a tenant needs nothing carried: Citus connects to the workers as the same
/// role, which the same mapping binds there, also for a statement outside a transaction
/// block. But a session that SET ROLEs to a mapped role would have the workers act for that
/// role's tenant while it is bound here as its login role: refused. And a bind made inside a
/// savepoint that is released is still carried.
#[test]
fn mapped_roles_act_on_the_workers_and_set_role_cannot_split_a_binding() {
    let f = Fixture::new();
    let pid = std::process::id();
    let (t, role) = (format!("mapped_{pid}"), format!("cit_mapped_{pid}"));
    let mut su = superuser();
    setup_in_one_transaction(
        &mut su,
        &[
        format!("CREATE TABLE public.{t} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int)"),
        format!("SELECT create_distributed_table('public.{t}', 'tenant_id')"),
        format!("SELECT tenancy.protect('public.{t}', audit => false)"),
        format!("CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS"),
        format!("GRANT SELECT, INSERT ON public.{t} TO {role}, {APP}"),
        format!("GRANT {role} TO {APP}"),
        ],
    );
    su.execute(
        "SELECT tenancy.map_role($1::text::regrole, $2)",
        &[&role, &f.a],
    )
    .unwrap();
    let mut m = node(0, &role);
    assert_not_privileged(&mut m);
    m.batch_execute(&format!("INSERT INTO public.{t} (id) VALUES (1), (2)"))
        .unwrap();
    let n: i64 = m
        .query_one(&format!("SELECT count(*) FROM public.{t}"), &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 2);

    let mut c = app_on(0);
    c.batch_execute(&format!("SET ROLE {role}")).unwrap();
    let e = c
        .query_one(&format!("SELECT count(*) FROM public.{t}"), &[])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    c.batch_execute("RESET ROLE").unwrap();

    let mut tx = c.transaction().unwrap();
    tx.batch_execute("SAVEPOINT a").unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.b, "bob")])
        .unwrap();
    tx.batch_execute("RELEASE SAVEPOINT a").unwrap();
    let n: i64 = tx
        .query_one(&format!("SELECT count(*) FROM public.{t}"), &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "tenant B has no rows");
    tx.rollback().unwrap();
}

/// verify() reads every shard through Citus as the catalog owner, with the shards' names in
/// its statement: a table's owner who names its table with a quote must not get SQL of its own
/// run there (found by reading the change: the names were once spliced into a literal).
#[test]
fn an_operator_cannot_unprotect_a_distributed_table_holding_rows() {
    // unprotect counts a Citus table's rows with SQL built from its name (regclass's output):
    // the name here would close a literal or a statement if it were spliced unquoted.
    let f = Fixture::new();
    let pid = std::process::id();
    let victim = format!("unp_victim_{pid}");
    let t = format!("u') ; DROP TABLE public.{victim}; SELECT ('x_{pid}");
    let quoted = format!("public.\"{}\"", t.replace('"', "\"\""));
    let mut su = superuser();
    su.batch_execute(&format!("CREATE TABLE public.{victim} (id int)"))
        .unwrap();
    su.batch_execute(&format!(
        "CREATE TABLE {quoted} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int)"
    ))
    .unwrap();
    su.execute(
        "SELECT create_distributed_table($1::text::regclass, 'tenant_id')",
        &[&quoted],
    )
    .unwrap();
    su.execute(
        "SELECT tenancy.protect($1::text::regclass, audit => false)",
        &[&quoted],
    )
    .unwrap();
    su.batch_execute(&format!("GRANT SELECT, INSERT ON {quoted} TO {APP}"))
        .unwrap();
    let mut c = app_on(0);
    bound_write(
        &mut c,
        &f.token(&f.a, "u"),
        &format!("INSERT INTO {quoted} (id) VALUES (1)"),
    );
    let mut op = node(0, OPERATOR);
    assert_not_privileged(&mut op);
    let e = op
        .execute("SELECT tenancy.unprotect($1::text::regclass)", &[&quoted])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    assert!(
        message(&e).contains("holds tenants' rows"),
        "{}",
        message(&e)
    );
    let victim_left: bool = su
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("public.{victim}")],
        )
        .unwrap()
        .get(0);
    assert!(victim_left, "the table's name ran as SQL");
    // A superuser may.
    su.execute("SELECT tenancy.unprotect($1::text::regclass)", &[&quoted])
        .unwrap();
    su.batch_execute(&format!("DROP TABLE {quoted}; DROP TABLE public.{victim}"))
        .unwrap();
}

#[test]
fn verify_quotes_the_names_of_shards_it_reads() {
    let pid = std::process::id();
    let (owner, victim) = (format!("cit_owner_{pid}"), format!("victim_{pid}"));
    // Under the old template the name closed the literal, and the rest ran as the catalog owner.
    let t = format!("q')::regclass; DROP TABLE public.{victim}; SELECT ('x_{pid}");
    let mut su = superuser();
    su.batch_execute(&format!(
        "CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS; GRANT CREATE ON SCHEMA public TO {owner}; \
         CREATE TABLE public.{victim} (id int)"
    ))
    .unwrap();
    let mut o = node(0, &owner);
    assert_not_privileged(&mut o);
    let quoted = format!("public.\"{}\"", t.replace('"', "\"\""));
    o.batch_execute(&format!(
        "CREATE TABLE {quoted} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int)"
    ))
    .unwrap();
    o.execute(
        "SELECT create_distributed_table($1::text::regclass, 'tenant_id')",
        &[&quoted],
    )
    .unwrap();
    let mut op = node(0, OPERATOR);
    op.execute(
        "SELECT tenancy.protect($1::text::regclass, audit => false)",
        &[&quoted],
    )
    .unwrap();
    let rows = op
        .query(
            "SELECT rule, object FROM tenancy.verify() WHERE rule LIKE 'citus%'",
            &[],
        )
        .unwrap();
    assert!(rows.is_empty(), "no drift: {} rows", rows.len());
    let left: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_class WHERE oid = to_regclass($1)",
            &[&format!("public.{victim}")],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 1, "the victim table still exists");
}

/// The node (index into `ports()`) and the name of the shard of `tenancy.<table>` that holds
/// `tenant`'s rows.
fn trail_shard(table: &str, tenant_id: &str) -> (usize, String) {
    let r = superuser()
        .query_one(
            &format!(
                "SELECT n.nodeport, shard_name('tenancy.{table}'::regclass, s.shardid) \
                   FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid) \
                   JOIN pg_dist_node n ON n.groupid = p.groupid \
                  WHERE s.shardid = get_shard_id_for_distribution_column('tenancy.{table}', $1::text::uuid)"
            ),
            &[&tenant_id],
        )
        .unwrap();
    let port: i32 = r.get(0);
    let node = ports()
        .iter()
        .position(|p| i32::from(*p) == port)
        .expect("a node of the cluster");
    (node, r.get(1))
}

/// In one transaction of `c`, bound with `token`: run `sql` and commit.
fn bound_write(c: &mut Client, token: &str, sql: &str) {
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&token]).unwrap();
    tx.batch_execute(sql)
        .unwrap_or_else(|e| panic!("{sql}: {}", message(&e)));
    tx.commit().unwrap();
}

#[test]
fn writes_to_a_distributed_table_are_audited_in_each_tenants_chain_on_its_shard() {
    // Two tenants whose trails are on different workers (so that a transaction writing both
    // commits in two phases).
    let f = (0..16)
        .map(|_| Fixture::new())
        .find(|f| trail_shard("audit_log", &f.a_id).0 != trail_shard("audit_log", &f.b_id).0)
        .expect("two tenants on different workers");
    let pid = std::process::id();
    let (t, owner) = (format!("trail_{pid}"), format!("trail_owner_{pid}"));
    let mut su = superuser();
    su.batch_execute(&format!(
        "CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS"
    ))
    .unwrap();
    setup_in_one_transaction(
        &mut su,
        &[
            format!("CREATE TABLE public.{t} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int, v text, PRIMARY KEY (tenant_id, id))"),
            format!("SELECT create_distributed_table('public.{t}', 'tenant_id', colocate_with => 'tenancy.audit_log')"),
            format!("SELECT tenancy.protect('public.{t}')"),
            format!("GRANT SELECT, INSERT, UPDATE, DELETE ON public.{t} TO {APP}"),
            format!("ALTER TABLE public.{t} OWNER TO {owner}"),
        ],
    );
    // Citus builds a moved shard as its table's owner; and so that what refuses the owner's
    // renames below is pg_tenancy, not a missing privilege.
    for i in 0..ports().len() {
        node(i, "postgres")
            .batch_execute(&format!(
                "SET citus.enable_ddl_propagation = off; GRANT CREATE ON SCHEMA public TO {owner}"
            ))
            .unwrap();
    }
    su.execute("SELECT tenancy.add_member($1, 'boss', 'admin')", &[&f.a])
        .unwrap();
    // Each tenant writes: an INSERT, an UPDATE of two rows, a DELETE; A in one transaction
    // across two statements, B with an INSERT of two rows.
    let mut app = app_on(0);
    {
        bound_write(
            &mut app,
            &f.token(&f.a, "ann"),
            &format!(
                "INSERT INTO public.{t} (id, v) VALUES (1, 'a1'), (2, 'a2'), (3, 'a3'); \
                 UPDATE public.{t} SET v = v || '!' WHERE id <= 2; \
                 DELETE FROM public.{t} WHERE id = 3"
            ),
        );
        bound_write(
            &mut app,
            &f.token(&f.b, "bob"),
            &format!("INSERT INTO public.{t} (id, v) VALUES (1, 'b1'), (2, 'b2')"),
        );
        // A rolled-back write leaves nothing in the trail.
        let mut tx = app.transaction().unwrap();
        tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.b, "bob")])
            .unwrap();
        tx.batch_execute(&format!(
            "INSERT INTO public.{t} (id, v) VALUES (9, 'gone')"
        ))
        .unwrap();
        tx.rollback().unwrap();
    }
    // The records, read through Citus on the coordinator: the table's name (not a shard's),
    // each row once, in the tenant's trail only.
    let records = |tenant_id: &str| -> Vec<String> {
        superuser()
            .query(
                "SELECT op || ':' || coalesce(new_row->>'v', old_row->>'v') || ':' || subject \
                   FROM tenancy.audit_log WHERE tenant_id = $1::text::uuid AND table_name = $2 ORDER BY id",
                &[&tenant_id, &format!("public.{t}")],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    assert_eq!(
        records(&f.a_id),
        [
            "INSERT:a1:ann",
            "INSERT:a2:ann",
            "INSERT:a3:ann",
            "UPDATE:a1!:ann",
            "UPDATE:a2!:ann",
            "DELETE:a3:ann"
        ]
    );
    assert_eq!(records(&f.b_id), ["INSERT:b1:bob", "INSERT:b2:bob"]);
    // The records were written where the tenant's shard is, and the management action on the
    // coordinator (add_member, written through Citus) went to the same trail.
    let (log_node, log_shard) = trail_shard("audit_log", &f.a_id);
    let on_shard: i64 = node(log_node, "postgres")
        .query_one(
            &format!("SELECT count(*) FROM {log_shard} WHERE tenant_id = $1::text::uuid"),
            &[&f.a_id],
        )
        .unwrap()
        .get(0);
    let everywhere: i64 = superuser()
        .query_one(
            "SELECT count(*) FROM tenancy.audit_log WHERE tenant_id = $1::text::uuid",
            &[&f.a_id],
        )
        .unwrap()
        .get(0);
    assert_eq!(on_shard, everywhere);
    assert!(everywhere >= 7, "{everywhere}");
    // One chain per tenant, checked from the coordinator by an operator: intact, and covering
    // every record (writes and management actions).
    let mut op = node(0, OPERATOR);
    assert_not_privileged(&mut op);
    let verify = |op: &mut Client, tenant: &str| -> (i64, bool, String) {
        let r = op
            .query_one(
                "SELECT records, ok, detail FROM tenancy.audit_verify($1)",
                &[&tenant],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(verify(&mut op, &f.a), (everywhere, true, "ok".into()));
    let (n, ok, detail) = verify(&mut op, &f.b);
    assert!(ok && n >= 2, "{n} {detail}");
    // Citus prints these queries again for the workers, pg_catalog's functions unqualified,
    // and runs them there as the superuser with the worker's search_path: a role's own
    // exact-typed unnest(bigint[]) there, one that raises here, takes no part (an attacker's
    // pass: it made its owner a superuser on every worker through audit_heads()).
    let plant = "SET citus.enable_ddl_propagation = off; \
                 CREATE FUNCTION public.unnest(a bigint[]) RETURNS SETOF bigint LANGUAGE plpgsql \
                   AS $$ BEGIN RAISE EXCEPTION 'shadow function called'; END $$";
    let unplant =
        "SET citus.enable_ddl_propagation = off; DROP FUNCTION IF EXISTS public.unnest(bigint[])";
    for i in 1..=2 {
        node(i, "postgres").batch_execute(plant).unwrap();
    }
    let heads = op.query("SELECT * FROM tenancy.audit_heads($1)", &[&f.a]);
    let verified = op.query("SELECT * FROM tenancy.audit_verify($1)", &[&f.a]);
    for i in 1..=2 {
        node(i, "postgres").batch_execute(unplant).unwrap();
    }
    heads.unwrap_or_else(|e| panic!("audit_heads: {}", message(&e)));
    verified.unwrap_or_else(|e| panic!("audit_verify: {}", message(&e)));

    // A transaction that writes both tenants' rows (a superuser's migration, on two workers:
    // committed in two phases, each worker linking its tenant's records at PREPARE), and
    // writers of one tenant at the same time: each chain stays whole.
    superuser()
        .batch_execute(&format!(
            "BEGIN; UPDATE public.{t} SET v = v || '+'; COMMIT"
        ))
        .unwrap_or_else(|e| panic!("{}", message(&e)));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let token = f.token(&f.a, "ann");
            let t = t.clone();
            std::thread::spawn(move || {
                let mut c = app_on(0);
                for i in 0..10 {
                    let mut tx = c.transaction().unwrap();
                    tx.execute("SELECT tenancy.bind($1)", &[&token]).unwrap();
                    tx.execute(
                        &format!("INSERT INTO public.{t} (id, v) VALUES ($1, 'w')"),
                        &[&(100 + w * 100 + i)],
                    )
                    .unwrap();
                    tx.commit().unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let everywhere: i64 = superuser()
        .query_one(
            "SELECT count(*) FROM tenancy.audit_log WHERE tenant_id = $1::text::uuid",
            &[&f.a_id],
        )
        .unwrap()
        .get(0);
    assert_eq!(verify(&mut op, &f.a), (everywhere, true, "ok".into()));
    let (n, ok, detail) = verify(&mut op, &f.b);
    assert!(ok && n >= 4, "{n} {detail}");

    // The tenant's admin reads its own trail through Citus, and only its own.
    {
        let mut tx = app.transaction().unwrap();
        tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "boss")])
            .unwrap();
        let tenants: Vec<String> = tx
            .query(
                "SELECT DISTINCT tenant_id::text FROM tenancy.audit_log",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(tenants, [f.a_id.clone()]);
        tx.rollback().unwrap();
    }

    // Citus moves A's shard to the other worker: the colocated shards of the trail go with it
    // (same colocation group), and A's chain goes on there. Citus builds each moved shard as
    // its table's owner, who needs CREATE on the schema there (the group holds other tests'
    // tables too).
    let owners: Vec<String> = superuser()
        .query(
            "SELECT DISTINCT pg_get_userbyid(c.relowner)::text FROM pg_dist_partition p \
               JOIN pg_class c ON c.oid = p.logicalrelid \
              WHERE p.colocationid = (SELECT colocationid FROM pg_dist_partition \
                                       WHERE logicalrelid = 'tenancy.audit_log'::regclass)",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for i in 0..ports().len() {
        for o in &owners {
            node(i, "postgres")
                .batch_execute(&format!(
                    "SET citus.enable_ddl_propagation = off; GRANT CREATE ON SCHEMA public TO \"{o}\""
                ))
                .unwrap();
        }
    }
    let (from, _) = trail_shard("audit_log", &f.a_id);
    let to = if from == 1 { 2 } else { 1 };
    superuser()
        .execute(
            &format!(
                "SELECT citus_move_shard_placement(get_shard_id_for_distribution_column('public.{t}', $1::text::uuid), \
                        '127.0.0.1', $2, '127.0.0.1', $3, shard_transfer_mode => 'block_writes')"
            ),
            &[&f.a_id, &i32::from(ports()[from]), &i32::from(ports()[to])],
        )
        .unwrap_or_else(|e| panic!("move: {}", message(&e)));
    assert_eq!(trail_shard("audit_log", &f.a_id).0, to);
    bound_write(
        &mut app,
        &f.token(&f.a, "ann"),
        &format!("INSERT INTO public.{t} (id, v) VALUES (900, 'moved')"),
    );
    let everywhere: i64 = superuser()
        .query_one(
            "SELECT count(*) FROM tenancy.audit_log WHERE tenant_id = $1::text::uuid",
            &[&f.a_id],
        )
        .unwrap()
        .get(0);
    assert_eq!(verify(&mut op, &f.a), (everywhere, true, "ok".into()));
    let (log_node, log_shard) = trail_shard("audit_log", &f.a_id);

    // Retention on the distributed trail: the purge runs on A's worker (its append-only
    // triggers let the deletions through for an assertion carried from the coordinator),
    // leaves checkpoints, and the rest of A's chain still verifies; B's is untouched.
    let b_before = verify(&mut op, &f.b);
    let mut su = superuser();
    su.batch_execute("BEGIN; SET LOCAL tenancy.audit_min_retention = 0")
        .unwrap();
    let purged: i64 = su
        .query_one("SELECT tenancy.audit_purge($1, clock_timestamp())", &[&f.a])
        .unwrap_or_else(|e| panic!("purge: {}", message(&e)))
        .get(0);
    su.batch_execute("COMMIT").unwrap();
    assert_eq!(
        purged, everywhere,
        "every record of A was older than the cut"
    );
    let (n, ok, detail) = verify(&mut op, &f.a);
    assert!(ok && n == 1, "the purge's own record remains: {n} {detail}");
    assert_eq!(verify(&mut op, &f.b), b_before);
    let checkpoints: i64 = superuser()
        .query_one(
            "SELECT count(*) FROM tenancy.audit_checkpoint WHERE tenant_id = $1::text::uuid",
            &[&f.a_id],
        )
        .unwrap()
        .get(0);
    assert!(checkpoints >= 1);
    bound_write(
        &mut app,
        &f.token(&f.a, "ann"),
        &format!("INSERT INTO public.{t} (id, v) VALUES (901, 'after purge')"),
    );
    let (n, ok, detail) = verify(&mut op, &f.a);
    assert!(ok && n == 2, "{n} {detail}");

    // A's admin keeps column v out of A's records of the table (set on the coordinator, read by
    // the worker that writes A's records); B's records keep it.
    {
        let mut tx = app.transaction().unwrap();
        tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "boss")])
            .unwrap();
        tx.execute(
            &format!("SELECT tenancy.audit_exclude('public.{t}', ARRAY['v'])"),
            &[],
        )
        .unwrap_or_else(|e| panic!("audit_exclude: {}", message(&e)));
        let listed: i64 = tx
            .query_one(
                &format!("SELECT count(*) FROM tenancy.audit_exclusions WHERE \"table\" = 'public.{t}'::regclass"),
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(listed, 1);
        tx.commit().unwrap();
    }
    for (tenant, sub) in [(&f.a, "ann"), (&f.b, "bob")] {
        bound_write(
            &mut app,
            &f.token(tenant, sub),
            &format!("INSERT INTO public.{t} (id, v) VALUES (902, 'private')"),
        );
    }
    let recorded = |tenant_id: &str| -> Option<String> {
        superuser()
            .query_one(
                "SELECT new_row->>'v' FROM tenancy.audit_log \
                  WHERE tenant_id = $1::text::uuid AND op = 'INSERT' AND (new_row->>'id')::int = 902",
                &[&tenant_id],
            )
            .unwrap()
            .get(0)
    };
    assert_eq!(recorded(&f.a_id), None, "A's record leaves v out");
    assert_eq!(recorded(&f.b_id).as_deref(), Some("private"));
    assert!(verify(&mut op, &f.a).1);

    // Attackers on the worker that holds A's trail.
    // The application role cannot write the trail's shard.
    let mut w_app = app_on(log_node);
    let e = w_app
        .batch_execute(&format!(
            "INSERT INTO {log_shard} (tenant_id, op, db_role) VALUES ('{}', 'ADMIN', 'x')",
            f.a_id
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    // The table's owner cannot drop or disable the audit trigger of its shard there.
    let data_shard: String = superuser()
        .query_one(
            &format!(
                "SELECT shard_name('public.{t}'::regclass, get_shard_id_for_distribution_column('public.{t}', $1::text::uuid))"
            ),
            &[&f.a_id],
        )
        .unwrap()
        .get(0);
    let mut cfg = postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(ports()[log_node])
        .dbname(&std::env::var("TENANCY_IT_DB").unwrap())
        .user(&owner);
    let mut o = cfg.connect(NoTls).unwrap();
    assert_not_privileged(&mut o);
    o.batch_execute("SET citus.enable_manual_changes_to_shards = on")
        .unwrap();
    let suffix = data_shard.rsplit('_').next().unwrap().to_string();
    // ... nor rename the shard away (an attacker's review: a table of its own, without row
    // security or triggers, then took the shard's name and received the tenant's writes
    // unaudited; or the renamed shard was dropped), move it to another schema, or rename the
    // worker's copy of the table (which the shards' names follow there).
    superuser()
        .batch_execute(&format!(
            "CREATE SCHEMA own_{pid}; GRANT ALL ON SCHEMA own_{pid} TO {owner}; \
             CREATE FUNCTION public.owners_default_{pid}() RETURNS text LANGUAGE sql AS $f$SELECT 'x'$f$; \
             ALTER FUNCTION public.owners_default_{pid}() OWNER TO {owner}"
        ))
        .unwrap();
    for sql in [
        format!("DROP TRIGGER tenancy_audit_ins_{suffix} ON {data_shard}"),
        format!("ALTER TABLE {data_shard} DISABLE TRIGGER tenancy_audit_upd_{suffix}"),
        format!("ALTER TABLE {data_shard} DISABLE TRIGGER ALL"),
        format!("ALTER TABLE {data_shard} RENAME TO away_{pid}"),
        format!("ALTER TABLE {data_shard} SET SCHEMA own_{pid}"),
        format!("ALTER TABLE public.{t} RENAME TO {t}_x"),
        format!("SET citus.enable_ddl_propagation = off; ALTER TABLE public.{t} RENAME TO {t}_x"),
        // A fourth review: the same renames in other forms, and what a rename inside the
        // shard breaks (a column's values, the trigger name the guard compares).
        format!("ALTER INDEX {data_shard} RENAME TO away_{pid}"),
        format!("SET citus.enable_ddl_propagation = off; ALTER INDEX public.{t} RENAME TO {t}_x"),
        format!("ALTER TABLE {data_shard} RENAME COLUMN v TO w"),
        format!("ALTER TABLE {data_shard} SET UNLOGGED"),
        format!("ALTER TRIGGER tenancy_audit_ins_{suffix} ON {data_shard} RENAME TO tenancy_audit_ins_1"),
        // A default of the owner's runs in every tenant's sessions (on a worker, with what the
        // session carries from the coordinator).
        format!("ALTER TABLE {data_shard} ALTER COLUMN v SET DEFAULT public.owners_default_{pid}()"),
        format!("SET citus.enable_ddl_propagation = off; ALTER TABLE public.{t} ALTER COLUMN v SET DEFAULT public.owners_default_{pid}()"),
    ] {
        let e = o
            .batch_execute(&sql)
            .expect_err(&format!("{sql} was not refused"));
        assert_eq!(sqlstate(&e), "42501", "{sql}: {}", message(&e));
        assert!(message(&e).contains("protected"), "{sql}: {}", message(&e));
        o.batch_execute("RESET citus.enable_ddl_propagation")
            .unwrap();
    }
    // The owner's default refused on the coordinator as well.
    let e = node(0, &owner)
        .batch_execute(&format!(
            "ALTER TABLE public.{t} ALTER COLUMN v SET DEFAULT public.owners_default_{pid}()"
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    // What the coordinator carries to a worker cannot be read there by SQL (code of the
    // owner's running in the tenant's session would read the token and bind it elsewhere).
    {
        let mut w_app = app_on(log_node);
        let mut tx = w_app.transaction().unwrap();
        tx.batch_execute(&format!(
            "SET LOCAL tenancy.carrier = '{}'",
            f.token(&f.a, "ann")
        ))
        .unwrap();
        let e = tx
            .query_one("SELECT current_setting('tenancy.carrier', true)", &[])
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
        tx.rollback().unwrap();
    }
    // On the coordinator too: the owner's rename would reach the workers as the owner's.
    let e = node(0, &owner)
        .batch_execute(&format!("ALTER TABLE public.{t} RENAME TO {t}_x"))
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    assert!(
        message(&e).contains("only a superuser renames"),
        "{}",
        message(&e)
    );
    // A member of A, on the worker, writing A's row straight into a shard that holds other
    // tenants' hashes: refused (the row would sit where Citus never looks for A, and its
    // record outside A's chain).
    let other_shard: Option<String> = superuser()
        .query_opt(
            &format!(
                "SELECT shard_name('public.{t}'::regclass, shardid) FROM citus_shards \
                  WHERE table_name = 'public.{t}'::regclass AND nodeport = $1 \
                    AND shardid <> get_shard_id_for_distribution_column('public.{t}', $2::text::uuid) \
                  ORDER BY shardid LIMIT 1"
            ),
            &[&i32::from(ports()[log_node]), &f.a_id],
        )
        .unwrap()
        .map(|r| r.get(0));
    if let Some(other) = other_shard {
        let mut w_app = app_on(log_node);
        let mut tx = w_app.transaction().unwrap();
        tx.batch_execute("SET LOCAL citus.enable_manual_changes_to_shards = on")
            .unwrap();
        tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "ann")])
            .unwrap();
        let e = tx
            .batch_execute(&format!(
                "INSERT INTO public.{other} (id, v) VALUES (77, 'misplaced')"
            ))
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
        assert!(
            message(&e).contains("does not belong in this shard"),
            "{}",
            message(&e)
        );
    }
    // A superuser on that worker changes one of A's records past the append-only trigger:
    // audit_verify on the coordinator finds it.
    let mut w = node(log_node, "postgres");
    w.batch_execute(&format!(
        "SET session_replication_role = replica; \
         UPDATE {log_shard} SET new_row = '{{\"v\": \"forged\"}}' \
          WHERE tenant_id = '{}' AND op = 'INSERT' AND new_row->>'v' = 'after purge'; \
         RESET session_replication_role",
        f.a_id
    ))
    .unwrap();
    let (_, ok, detail) = verify(&mut op, &f.a);
    assert!(!ok && detail.contains("was changed"), "{detail}");
}

/// Found by an attacker's pass: a table's owner took its protected table apart with Citus's
/// own functions, which change the catalog in C with no DDL command for the guard to see:
/// `undistribute_table` (bound to one tenant, it kept that tenant's rows in a local table,
/// unprotected, and dropped the others'), `citus_drop_all_shards` after
/// `master_remove_distributed_table_metadata_from_workers` (every tenant's shards dropped,
/// unrecorded), and on a worker `worker_drop_distributed_table` or `citus_internal`'s metadata
/// functions (under Citus's connection name), after which the guard there no longer knew the
/// shards and the owner changed their row security. Each is refused, in any form of call. The
/// owner's DROP TABLE, which Citus would carry out with some of them as the owner, is refused
/// on the coordinator with a HINT: a superuser drops a protected Citus table (a second
/// reviewer's pass took a table's metadata off a worker with `worker_drop_distributed_table`
/// under Citus's connection name, then renamed a shard and read it).
#[test]
fn a_tables_owner_cannot_take_its_protection_apart_with_citus_functions() {
    let pid = std::process::id();
    let (t, owner) = (format!("apart_{pid}"), format!("apart_owner_{pid}"));
    let mut su = superuser();
    su.batch_execute(&format!(
        "CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS"
    ))
    .unwrap();
    setup_in_one_transaction(
        &mut su,
        &[
            format!("CREATE TABLE public.{t} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int)"),
            format!("SELECT create_distributed_table('public.{t}', 'tenant_id')"),
            format!("SELECT tenancy.protect('public.{t}', audit => false)"),
            format!("ALTER TABLE public.{t} OWNER TO {owner}"),
        ],
    );
    let placement: i64 = su
        .query_one(
            &format!(
                "SELECT pl.placementid FROM pg_dist_placement pl JOIN pg_dist_shard s USING (shardid) \
                  WHERE s.logicalrelid = 'public.{t}'::regclass ORDER BY 1 LIMIT 1"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    let count_shards = |su: &mut Client| -> i64 {
        su.query_one(
            &format!("SELECT count(*) FROM citus_shards WHERE table_name = 'public.{t}'::regclass"),
            &[],
        )
        .unwrap()
        .get(0)
    };
    let shards = count_shards(&mut su);
    let refused = |c: &mut Client, sql: &str| {
        let e = c
            .batch_execute(sql)
            .expect_err(&format!("{sql} was not refused"));
        assert_eq!(sqlstate(&e), "42501", "{sql}: {}", message(&e));
        assert!(message(&e).contains("Citus's"), "{sql}: {}", message(&e));
    };
    let mut o = node(0, &owner);
    assert_not_privileged(&mut o);
    for sql in [
        format!("SELECT undistribute_table('public.{t}')"),
        format!("SELECT alter_distributed_table('public.{t}', shard_count => 4)"),
        format!("SELECT alter_table_set_access_method('public.{t}', 'heap')"),
        format!("SELECT master_remove_distributed_table_metadata_from_workers('public.{t}'::regclass, 'public', '{t}')"),
        format!("SELECT citus_drop_all_shards('public.{t}'::regclass, 'public', '{t}')"),
        // Forms that name the table only when they run.
        format!("SELECT undistribute_table(x) FROM (VALUES ('public.{t}'::regclass)) v(x)"),
        format!("DO $$ BEGIN PERFORM citus_drop_all_shards('public.{t}'::regclass, 'public', '{t}'); END $$"),
    ] {
        refused(&mut o, &sql);
    }
    // Reached without a statement naming it: a SQL function the planner inlines (the call
    // runs from the plan, through the function manager's gate).
    o.batch_execute(
        "CREATE FUNCTION pg_temp.reshape(r regclass) RETURNS void LANGUAGE sql AS $$ SELECT undistribute_table(r) $$",
    )
    .unwrap();
    refused(&mut o, &format!("SELECT pg_temp.reshape('public.{t}')"));
    // ... and a constraint's expression, which no planner sees.
    o.batch_execute(&format!(
        "CREATE TEMP TABLE trap (x int CHECK ((undistribute_table('public.{t}'))::text IS NOT NULL))"
    ))
    .unwrap();
    refused(&mut o, "INSERT INTO trap VALUES (1)");
    o.batch_execute("DROP TABLE trap").unwrap();
    // An argument the check would fold by running the caller's IMMUTABLE function, which calls
    // one of these itself (a reviewer's bypass): not folded, so not known, so refused.
    o.batch_execute(&format!(
        "CREATE FUNCTION pg_temp.inner_call() RETURNS text LANGUAGE plpgsql AS \
           $$ BEGIN PERFORM undistribute_table('public.{t}'); RETURN 'nothing'; END $$; \
         CREATE FUNCTION pg_temp.folded() RETURNS text IMMUTABLE LANGUAGE sql AS $$ SELECT pg_temp.inner_call() $$"
    ))
    .unwrap();
    refused(
        &mut o,
        "SELECT worker_drop_distributed_table(pg_temp.folded())",
    );
    let mut w = node(1, &owner);
    assert_not_privileged(&mut w);
    refused(
        &mut w,
        &format!("SELECT worker_drop_distributed_table('public.{t}')"),
    );
    // Under the name Citus gives its own connections.
    let mut c = postgres::Config::new();
    c.host("127.0.0.1")
        .port(ports()[1])
        .dbname(&std::env::var("TENANCY_IT_DB").expect("TENANCY_IT_DB"))
        .user(&owner)
        .application_name("citus_internal gpid=10000000001");
    let mut spoofed = c.connect(NoTls).unwrap();
    assert_not_privileged(&mut spoofed);
    for sql in [
        format!("SELECT citus_internal.delete_placement_metadata({placement})"),
        format!("SELECT citus_internal.delete_partition_metadata('public.{t}'::regclass)"),
        // The same C functions under their older names (a reviewer's bypass).
        format!("SELECT pg_catalog.citus_internal_delete_placement_metadata({placement})"),
        format!(
            "SELECT pg_catalog.citus_internal_delete_partition_metadata('public.{t}'::regclass)"
        ),
    ] {
        refused(&mut spoofed, &sql);
    }
    // Nothing was taken apart: the shards are all there. The owner's DROP TABLE is refused
    // before Citus starts, with a HINT; a superuser's works.
    assert!(shards > 0);
    assert_eq!(count_shards(&mut su), shards);
    let e = o
        .batch_execute(&format!("DROP TABLE public.{t}"))
        .expect_err("the owner dropped a protected Citus table");
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    assert!(
        e.as_db_error()
            .and_then(|d| d.hint())
            .is_some_and(|h| h.contains("superuser")),
        "{}",
        message(&e)
    );
    su.batch_execute(&format!("DROP TABLE public.{t}"))
        .unwrap_or_else(|e| panic!("DROP TABLE: {}", message(&e)));

    // Under Citus's connection name the owner cannot drop a worker's copy of its table either,
    // as Citus's DROP would (a second reviewer's pass took the metadata off the node so).
    let t2 = format!("apart_two_{pid}");
    setup_in_one_transaction(
        &mut su,
        &[
            format!("CREATE TABLE public.{t2} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int)"),
            format!("SELECT create_distributed_table('public.{t2}', 'tenant_id')"),
            format!("SELECT tenancy.protect('public.{t2}', audit => false)"),
            format!("ALTER TABLE public.{t2} OWNER TO {owner}"),
        ],
    );
    refused(
        &mut spoofed,
        &format!("SELECT worker_drop_distributed_table('public.{t2}')"),
    );
    refused(
        &mut spoofed,
        &format!("SELECT worker_drop_shell_table('public.{t2}')"),
    );
    su.batch_execute(&format!("DROP TABLE public.{t2}"))
        .unwrap_or_else(|e| panic!("DROP TABLE: {}", message(&e)));
}

#[test]
fn a_connection_named_as_citus_after_it_started_is_not_citus() {
    // Found by an attacker's pass. Citus names its own connections when it opens them, and
    // trusts the name from any role. (1) A table's owner, on the coordinator only, opened a
    // connection to each worker with run_command_on_workers (any role may), renamed it
    // `citus_internal` there and dropped the worker's copy of its table and then its shards.
    // (2) Any role that named its connection so and read a protected table crashed the node:
    // pg_tenancy placed its reserved parameter in a plan Citus distributes.
    let pid = std::process::id();
    let (t, r, owner) = (
        format!("renamed_{pid}"),
        format!("renamed_ref_{pid}"),
        format!("renamed_owner_{pid}"),
    );
    let mut su = superuser();
    su.batch_execute(&format!(
        "CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS; GRANT CREATE ON SCHEMA public TO {owner}"
    ))
    .unwrap();
    setup_in_one_transaction(
        &mut su,
        &[
            format!("CREATE TABLE public.{t} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int)"),
            format!("SELECT create_distributed_table('public.{t}', 'tenant_id')"),
            format!("SELECT tenancy.protect('public.{t}', audit => false)"),
            format!("ALTER TABLE public.{t} OWNER TO {owner}"),
            format!("CREATE TABLE public.{r} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int)"),
            format!("SELECT create_reference_table('public.{r}')"),
            format!("SELECT tenancy.protect('public.{r}', audit => false)"),
            format!("GRANT SELECT ON public.{t}, public.{r} TO {APP}"),
        ],
    );
    let shards = |su: &mut Client| -> i64 {
        su.query_one(
            &format!("SELECT count(*) FROM citus_shards WHERE table_name = 'public.{t}'::regclass"),
            &[],
        )
        .unwrap()
        .get(0)
    };
    let before = shards(&mut su);
    let mut o = node(0, &owner);
    assert_not_privileged(&mut o);
    let ran: Vec<bool> = o
        .query(
            &format!(
                "SELECT success FROM run_command_on_workers($c$DO $x$ BEGIN \
                   PERFORM set_config('application_name', 'citus_internal gpid=10000000001', false); \
                   PERFORM worker_drop_distributed_table('public.{t}'); END $x$$c$)"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        ran,
        vec![false, false],
        "a worker ran the renamed connection's drop"
    );
    // Citus opens these connections under its internal name and renames them before the
    // client's command: named back with RESET (a reviewer's pass), they are not Citus's either.
    let ran: Vec<bool> = o
        .query(
            &format!(
                "SELECT success FROM run_command_on_workers($c$DO $x$ BEGIN \
                   RESET application_name; \
                   PERFORM worker_drop_distributed_table('public.{t}'); END $x$$c$)"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        ran,
        vec![false, false],
        "a worker ran the reset connection's drop"
    );
    // Nor from inside a statement Citus sends in its own connections: the owner's function
    // pushed down to the workers in a shard query (a reviewer's pass).
    for sql in [
        format!("CREATE TABLE public.{t}_mine (k int, v int)"),
        format!("SELECT create_distributed_table('public.{t}_mine', 'k')"),
        format!("INSERT INTO public.{t}_mine VALUES (1, 1), (2, 2)"),
        format!(
            "CREATE FUNCTION public.{t}_dropper() RETURNS text LANGUAGE plpgsql AS $$ \
             BEGIN PERFORM worker_drop_distributed_table('public.{t}'); RETURN 'dropped'; END $$"
        ),
    ] {
        o.batch_execute(&sql)
            .unwrap_or_else(|e| panic!("{sql}: {}", message(&e)));
    }
    let e = o
        .batch_execute(&format!(
            "SELECT k, public.{t}_dropper() FROM public.{t}_mine"
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    assert_eq!(shards(&mut su), before);
    let workers_tables: Vec<String> = o
        .query(
            &format!(
                "SELECT result FROM run_command_on_workers($c$SELECT count(*) FROM pg_class WHERE relname = '{t}'$c$)"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(workers_tables, vec!["1".to_string(), "1".to_string()]);

    // Renamed in the session, and named so from the start: refused or served, never a crash.
    for renamed_at_start in [false, true] {
        let mut c = if renamed_at_start {
            let mut cfg = postgres::Config::new();
            cfg.host("127.0.0.1")
                .port(ports()[0])
                .dbname(&std::env::var("TENANCY_IT_DB").expect("TENANCY_IT_DB"))
                .user(APP)
                .application_name("citus_internal gpid=10000000001");
            cfg.connect(NoTls).unwrap()
        } else {
            let mut c = app_on(0);
            c.batch_execute("SET application_name = 'citus_internal gpid=10000000001'")
                .unwrap();
            c
        };
        assert_not_privileged(&mut c);
        for sql in [
            format!("SELECT count(*) FROM public.{r}"),
            format!("SELECT count(*) FROM public.{t}"),
            "SELECT count(*) FROM tenancy.audit_log".to_string(),
            format!("SELECT count(*) FROM public.{r}"),
            "SELECT count(*) FROM tenancy.audit_log".to_string(),
        ] {
            let _ = c.batch_execute(&sql);
        }
        let alive: i32 = c.query_one("SELECT 1", &[]).unwrap().get(0);
        assert_eq!(alive, 1, "the connection (or the node) died");
    }
    // Every node still answers.
    for i in 0..3 {
        let mut c = node(i, APP);
        let one: i32 = c.query_one("SELECT 1", &[]).unwrap().get(0);
        assert_eq!(one, 1);
    }
    su.batch_execute(&format!("DROP TABLE public.{t}")).unwrap();
    su.batch_execute(&format!("DROP TABLE public.{r} CASCADE"))
        .unwrap();
}

#[test]
fn a_schema_holding_protected_citus_tables_cannot_be_renamed_on_any_node() {
    // Found by an attacker's pass: every node's guard knows a protected Citus table, its shards
    // and shells by name (tenancy.citus_protection). The owner of the table's schema, with
    // CREATE on the database, renamed the schema on the coordinator (Citus carried it to the
    // workers): no node knew the shards any more, and the owner's run_command_on_shards added a
    // policy USING (true) to each, through which one tenant read every tenant's rows. On a
    // worker, the same rename let the owner put a schema of its own, with a table named as the
    // shard, in its place. Such a rename is refused on every node, to superusers too.
    let pid = std::process::id();
    let (s, owner) = (format!("ren_{pid}"), format!("ren_owner_{pid}"));
    let mut su = superuser();
    owner_who_may_create_schemas(&mut su, &owner);
    su.batch_execute(&format!("CREATE SCHEMA {s} AUTHORIZATION {owner}"))
        .unwrap();
    protected_table_of(&mut su, &format!("{s}.t"), &owner);
    let refused = |c: &mut Client, sql: &str| {
        let e = c
            .batch_execute(sql)
            .expect_err(&format!("{sql} was not refused"));
        assert_eq!(sqlstate(&e), "55000", "{sql}: {}", message(&e));
        assert!(
            message(&e).contains("cannot be renamed"),
            "{sql}: {}",
            message(&e)
        );
    };
    let mut o = node(0, &owner);
    assert_not_privileged(&mut o);
    refused(&mut o, &format!("ALTER SCHEMA {s} RENAME TO {s}_x"));
    refused(&mut su, &format!("ALTER SCHEMA {s} RENAME TO {s}_x"));
    for w in 1..ports().len() {
        let mut ow = node(w, &owner);
        refused(
            &mut ow,
            &format!("SET citus.enable_ddl_propagation = off; ALTER SCHEMA {s} RENAME TO {s}_x"),
        );
    }
    // The guard still knows the shards: a policy added on them is refused.
    let took: i64 = o
        .query_one(
            &format!(
                "SELECT count(*) FILTER (WHERE success) FROM run_command_on_shards('{s}.t', $$CREATE POLICY open ON %s USING (true)$$)"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(took, 0, "no shard took the policy");
    // Unprotected, the schema is the owner's to rename.
    su.batch_execute(&format!("SELECT tenancy.unprotect('{s}.t')"))
        .unwrap();
    o.batch_execute(&format!("ALTER SCHEMA {s} RENAME TO {s}_x"))
        .expect("a schema with no protected table is renamed");
    su.batch_execute(&format!("DROP SCHEMA {s}_x CASCADE"))
        .unwrap();
}

#[test]
fn protect_refuses_a_table_whose_shard_has_what_the_table_does_not() {
    // Found by an attacker's pass: the table's owner, connected to a worker before the table
    // was protected, planted a policy USING (true) on one of its shards (any role may set
    // citus.enable_manual_changes_to_shards) and a rule copying the shard's rows out. protect()
    // left both in place: on Citus every policy is permissive, so one tenant read another's
    // rows, and verify()'s fix, protect() again, repaired nothing. protect() now reads every
    // placement first and refuses, naming what the shard has.
    let pid = std::process::id();
    let (t, owner) = (format!("planted_{pid}"), format!("planted_owner_{pid}"));
    let mut su = superuser();
    for sql in [
        format!("CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS"),
        format!("CREATE TABLE public.{t} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int)"),
        format!("SELECT create_distributed_table('public.{t}', 'tenant_id')"),
        format!("ALTER TABLE public.{t} OWNER TO {owner}"),
    ] {
        su.batch_execute(&sql).unwrap();
    }
    let (shard, w) = a_placement(&mut su, &t, None);
    let mut ow = node(w, &owner);
    assert_not_privileged(&mut ow);
    for sql in [
        "SET citus.enable_manual_changes_to_shards = on".to_string(),
        format!("CREATE POLICY backdoor ON public.{shard} USING (true)"),
        format!("CREATE RULE copy_out AS ON INSERT TO public.{shard} DO ALSO NOTHING"),
    ] {
        ow.batch_execute(&sql).unwrap();
    }
    let e = su
        .batch_execute(&format!(
            "SELECT tenancy.protect('public.{t}', audit => false)"
        ))
        .expect_err("a table whose shard has a planted policy is not protected");
    assert_eq!(sqlstate(&e), "55000", "{}", message(&e));
    assert!(
        message(&e).contains("backdoor") && message(&e).contains("copy_out"),
        "the refusal names what the shard has: {}",
        message(&e)
    );
    let protected: bool = su
        .query_one(
            &format!("SELECT EXISTS (SELECT FROM tenancy.protected_table WHERE relid = 'public.{t}'::regclass)"),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!protected, "nothing was recorded");
    for sql in [
        format!("DROP POLICY backdoor ON public.{shard}"),
        format!("DROP RULE copy_out ON public.{shard}"),
    ] {
        ow.batch_execute(&sql).unwrap();
    }
    su.batch_execute(&format!(
        "SELECT tenancy.protect('public.{t}', audit => false)"
    ))
    .expect("protected once the shard is the table's copy");
    // Past the guard (a superuser with event triggers off on the worker), a rule planted on a
    // shard is reported by verify(), with the node to remove it on.
    let mut sw = node(w, "postgres");
    sw.batch_execute(&format!(
        "SET session_replication_role = replica; SET citus.enable_manual_changes_to_shards = on; \
         CREATE RULE copy_out AS ON INSERT TO public.{shard} DO ALSO NOTHING"
    ))
    .unwrap();
    let mut op = node(0, OPERATOR);
    let reported: Vec<String> = op
        .query(
            &format!(
                "SELECT detail FROM tenancy.verify() WHERE rule = 'citus_shard_drift' AND object = 'public.{t}'"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        reported.iter().any(|d| d.contains("rule copy_out")),
        "verify() reports the rule: {reported:?}"
    );
    sw.batch_execute(&format!("DROP RULE copy_out ON public.{shard}"))
        .unwrap();
    su.batch_execute(&format!("SELECT tenancy.unprotect('public.{t}')"))
        .unwrap();
    su.batch_execute(&format!("DROP TABLE public.{t}")).unwrap();
}

#[test]
fn a_decoy_dropped_while_a_truncate_waits_on_a_worker_leaves_the_shard_alone() {
    // A reviewer of the guard's pin: the checks the utility hook makes on a worker (TRUNCATE of
    // a shard, CREATE TABLE ... INHERITS one, its rename) looked the name up without a lock.
    // The table's owner, on the worker, held a lock on a decoy named as the shard in a schema
    // earlier on its search_path while its own TRUNCATE of that name waited, then dropped the
    // decoy: the TRUNCATE emptied the shard, every tenant's rows in it, unrecorded. Now the
    // name is pinned first, and the shard it comes to mean is refused.
    let pid = std::process::id();
    let (t, owner) = (format!("trunc_{pid}"), format!("trunc_owner_{pid}"));
    let mut su = superuser();
    owner_who_may_create_schemas(&mut su, &owner);
    protected_table_of(&mut su, &format!("public.{t}"), &owner);
    let tenant: String = su
        .query_one(
            "SELECT tenancy.create_tenant($1)::text",
            &[&unique("trunc")],
        )
        .unwrap()
        .get(0);
    su.batch_execute(&format!(
        "INSERT INTO public.{t} SELECT '{tenant}', g FROM generate_series(1, 10) g"
    ))
    .unwrap();
    let (shard, w) = a_placement(&mut su, &t, Some(&tenant));
    let mut sw = node(w, "postgres");
    let mut a = node(w, &owner);
    assert_not_privileged(&mut a);
    for sql in [
        "SET citus.enable_ddl_propagation = off".to_string(),
        format!("CREATE SCHEMA dec_{pid}"),
        format!("CREATE TABLE dec_{pid}.{shard} (tenant_id uuid, id int)"),
        "BEGIN".to_string(),
        format!("LOCK TABLE dec_{pid}.{shard} IN ACCESS EXCLUSIVE MODE"),
    ] {
        a.batch_execute(&sql).unwrap();
    }
    let mut b = node(w, &owner);
    let b_pid: i32 = b.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let sql = format!("SET search_path = dec_{pid}, public; TRUNCATE {shard}");
    let truncating = std::thread::spawn(move || b.batch_execute(&sql).map_err(|e| sqlstate(&e)));
    until_waiting_for_a_lock(&mut sw, b_pid);
    a.batch_execute(&format!("DROP TABLE dec_{pid}.{shard}; COMMIT"))
        .unwrap();
    assert_eq!(
        truncating.join().unwrap(),
        Err("42501".to_string()),
        "the TRUNCATE that reaches the shard is refused"
    );
    let rows: i64 = su
        .query_one(&format!("SELECT count(*) FROM public.{t}"), &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 10, "the tenant's rows are still there");
    a.batch_execute(&format!(
        "SET citus.enable_ddl_propagation = off; DROP SCHEMA dec_{pid}"
    ))
    .unwrap();
}

#[test]
fn protect_takes_a_table_whose_shards_are_its_copies_whatever_they_hold() {
    // A reviewer of the placement check: it refused tables whose shards were the table's exact
    // copies: a trigger whose name ends in digits (`trg_2024`, `trg_2024_<shard id>` on the
    // shard), and verify() reported them as drift. The same reviewer's RESTRICTIVE policy is no
    // copy, though: Citus makes it permissive on the shards, where it widened every tenant's
    // rows; such a table is refused, with the policies named.
    let pid = std::process::id();
    let t = format!("copies_{pid}");
    let mut su = superuser();
    for sql in [
        format!("CREATE TYPE public.st_{pid} AS ENUM ('a', 'b')"),
        format!("CREATE TABLE public.{t} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int, s public.st_{pid})"),
        format!("SELECT create_distributed_table('public.{t}', 'tenant_id')"),
        format!("CREATE POLICY extra ON public.{t} AS RESTRICTIVE USING (s IS DISTINCT FROM 'b'::public.st_{pid})"),
        format!("CREATE FUNCTION public.trgf_{pid}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$"),
        "SET citus.enable_unsafe_triggers = on".to_string(),
        format!("CREATE TRIGGER trg_2024 BEFORE INSERT ON public.{t} FOR EACH ROW EXECUTE FUNCTION public.trgf_{pid}()"),
        // Ending in the table's own digits (a reviewer: trg_events_2024 of events_2024).
        format!("CREATE TRIGGER trg_{t} BEFORE UPDATE ON public.{t} FOR EACH ROW EXECUTE FUNCTION public.trgf_{pid}()"),
    ] {
        su.batch_execute(&sql).unwrap_or_else(|e| panic!("{sql}: {}", message(&e)));
    }
    let e = su
        .batch_execute(&format!(
            "SELECT tenancy.protect('public.{t}', audit => false)"
        ))
        .expect_err("a Citus table with a policy of its own is not protected");
    assert_eq!(sqlstate(&e), "55000", "{}", message(&e));
    assert!(message(&e).contains("extra"), "{}", message(&e));
    su.batch_execute(&format!("DROP POLICY extra ON public.{t}"))
        .unwrap();
    su.batch_execute(&format!(
        "SELECT tenancy.protect('public.{t}', audit => false)"
    ))
    .unwrap_or_else(|e| panic!("the shards are the table's copies: {}", message(&e)));
    let foreign: i64 = node(0, OPERATOR)
        .query_one(
            "SELECT count(*) FROM tenancy.verify() WHERE rule = 'citus_shard_drift' AND object = $1 \
               AND detail LIKE '%has what the table does not%'",
            &[&format!("public.{t}")],
        )
        .unwrap()
        .get(0);
    assert_eq!(foreign, 0, "verify() finds nothing foreign on the shards");
    let drift: Vec<String> = node(0, OPERATOR)
        .query(
            "SELECT detail FROM tenancy.verify() WHERE rule = 'citus_shard_drift' AND object = $1",
            &[&format!("public.{t}")],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        drift.is_empty(),
        "no drift either (a trigger named trg_2024 is itself on its shards): {drift:?}"
    );
    su.batch_execute(&format!("SELECT tenancy.unprotect('public.{t}')"))
        .unwrap();
    su.batch_execute(&format!("DROP TABLE public.{t}")).unwrap();
}

/// Citus's `stop_metadata_sync_to_node()` drops a worker's shell tables, and with them the
/// policies of every protected table's shards on that worker (they name their table), and
/// leaves the guard there without the metadata through which it knows a shard: the table's
/// owner then turned a shard's row security off on that worker and read every tenant's rows
/// from it (found trying it on the dev cluster). Refused now, to a superuser too, however it is
/// called, in Citus's own connections too (`run_command_on_coordinator`, a reviewer's pass).
/// Syncing a node in Citus's non-transactional mode commits the metadata's removal before it
/// is written again, a moment the owner polled for (a reviewer's pass): refused too. A worker
/// that lacks the metadata, or whose metadata Citus marks out of date, is a verify() finding
/// whose fix syncs it.
#[test]
fn a_worker_cannot_be_taken_off_citus_metadata_while_tables_are_protected() {
    let pid = std::process::id();
    let (t, owner) = (format!("nometa_{pid}"), format!("nometa_owner_{pid}"));
    let mut su = superuser();
    su.batch_execute(&format!(
        "CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS"
    ))
    .unwrap();
    protected_table_of(&mut su, &format!("public.{t}"), &owner);
    let port = ports()[1];
    let refused = |c: &mut Client, sql: &str, hint_has: &str| {
        let e = c
            .batch_execute(sql)
            .expect_err(&format!("{sql} was not refused"));
        assert_eq!(sqlstate(&e), "42501", "{sql}: {}", message(&e));
        let all = format!(
            "{} {}",
            message(&e),
            e.as_db_error().and_then(|d| d.hint()).unwrap_or_default()
        );
        assert!(all.contains(hint_has), "{sql}: {all}");
    };
    let stop = format!("SELECT stop_metadata_sync_to_node('127.0.0.1', {port})");
    for sql in [
        stop.clone(),
        format!("SELECT stop_metadata_sync_to_node('127.0.0.1', {port}, clear_metadata => false)"),
        format!("DO $$ BEGIN PERFORM stop_metadata_sync_to_node('127.0.0.1', {port}); END $$"),
        // In a connection named as Citus's.
        format!("BEGIN; SET LOCAL application_name = 'citus_internal gpid=1'; {stop}; COMMIT"),
    ] {
        su.batch_execute("ROLLBACK").ok();
        refused(&mut su, &sql, "citus_drain_node");
    }
    su.batch_execute("ROLLBACK").ok();
    // In a connection Citus opens for a superuser, which answers instead of raising.
    let r = su
        .query_one(
            &format!("SELECT success, result FROM run_command_on_coordinator($c${stop}$c$)"),
            &[],
        )
        .unwrap();
    let (ok, result): (bool, String) = (r.get(0), r.get(1));
    assert!(
        !ok && result.contains("stop_metadata_sync_to_node"),
        "{ok} {result}"
    );
    // Syncing a node again in the non-transactional mode.
    for call in [
        format!("SELECT start_metadata_sync_to_node('127.0.0.1', {port})"),
        format!("SELECT citus_activate_node('127.0.0.1', {port})"),
        "SELECT start_metadata_sync_to_all_nodes()".to_string(),
    ] {
        refused(
            &mut su,
            &format!("SET citus.metadata_sync_mode = 'nontransactional'; {call}"),
            "metadata_sync_mode = 'transactional'",
        );
        su.batch_execute("RESET citus.metadata_sync_mode").unwrap();
    }
    // The worker still knows the table's shards, and its guard still refuses the owner there.
    let mut w = node(1, "postgres");
    let shard: String = w
        .query_one(
            "SELECT pg_catalog.shard_name(s.logicalrelid, s.shardid) FROM pg_dist_shard s \
               JOIN pg_dist_placement pl USING (shardid) \
              WHERE s.logicalrelid = $1::text::regclass \
                AND pl.groupid = (SELECT groupid FROM pg_dist_local_group) LIMIT 1",
            &[&format!("public.{t}")],
        )
        .unwrap()
        .get(0);
    let mut o = node(1, &owner);
    assert_not_privileged(&mut o);
    expect_err(
        &mut o,
        &format!("ALTER TABLE public.{shard} NO FORCE ROW LEVEL SECURITY"),
        &["42501"],
    );
    let policies: i64 = w
        .query_one(
            "SELECT count(*) FROM pg_policy WHERE polrelid = $1::text::regclass",
            &[&format!("public.{shard}")],
        )
        .unwrap()
        .get(0);
    assert_eq!(policies, 4, "the shard's policies are all there");
    // A worker whose metadata Citus marks out of date: one finding, for that worker.
    let findings = || -> Vec<(String, String, String)> {
        node(0, OPERATOR)
            .query(
                "SELECT object, detail, fix FROM tenancy.verify() WHERE rule = 'citus_node_without_metadata'",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    };
    assert!(findings().is_empty(), "{:?}", findings());
    su.batch_execute(&format!(
        "UPDATE pg_dist_node SET metadatasynced = false WHERE nodeport = {port}"
    ))
    .unwrap();
    let found = findings();
    su.batch_execute(&format!(
        "UPDATE pg_dist_node SET metadatasynced = true WHERE nodeport = {port}"
    ))
    .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let (object, detail, fix) = &found[0];
    assert_eq!(object, &format!("127.0.0.1:{port}"));
    assert!(detail.contains("guard"), "{detail}");
    assert!(
        fix.starts_with(&format!(
            "SELECT pg_catalog.start_metadata_sync_to_node('127.0.0.1', {port});"
        )),
        "{fix}"
    );
    // A worker whose metadata has lost the table (a superuser past Citus; or a table
    // distributed with citus.enable_metadata_sync off): a finding, and there the owner cannot
    // drop the worker's copy of the table, which would take every shard's policies with it (a
    // reviewer's pass dropped a copy of its own so, after which a renamed shard was nobody's).
    let keep = format!(
        "CREATE TEMP TABLE kept_partition AS SELECT * FROM pg_dist_partition WHERE logicalrelid = 'public.{t}'::regclass; \
         CREATE TEMP TABLE kept_shard AS SELECT * FROM pg_dist_shard WHERE logicalrelid = 'public.{t}'::regclass; \
         CREATE TEMP TABLE kept_placement AS SELECT * FROM pg_dist_placement WHERE shardid IN (SELECT shardid FROM kept_shard); \
         DELETE FROM pg_dist_placement WHERE shardid IN (SELECT shardid FROM kept_shard); \
         DELETE FROM pg_dist_shard WHERE logicalrelid = 'public.{t}'::regclass; \
         DELETE FROM pg_dist_partition WHERE logicalrelid = 'public.{t}'::regclass"
    );
    w.batch_execute(&keep).unwrap();
    let found = findings();
    // The guard knows the shard by its name there: renamed, it would be known by no name.
    let refused_by_name: Vec<Option<String>> = [
        format!("ALTER TABLE public.{shard} RENAME TO stolen_{pid}"),
        format!("ALTER TABLE public.{shard} NO FORCE ROW LEVEL SECURITY"),
    ]
    .iter()
    .map(|sql| o.batch_execute(sql).err().map(|e| sqlstate(&e)))
    .collect();
    let refused_drop = o.batch_execute(&format!("DROP TABLE public.{t} CASCADE"));
    w.batch_execute(
        "INSERT INTO pg_dist_partition SELECT * FROM kept_partition; \
         INSERT INTO pg_dist_shard SELECT * FROM kept_shard; \
         INSERT INTO pg_dist_placement SELECT * FROM kept_placement",
    )
    .unwrap();
    assert!(
        found.iter().any(
            |(object, detail, _)| object == &format!("127.0.0.1:{port}") && detail.contains(&t)
        ),
        "{found:?}"
    );
    assert_eq!(
        refused_by_name,
        vec![Some("42501".to_string()), Some("42501".to_string())]
    );
    let e = refused_drop.expect_err("the owner dropped the worker's copy of the table");
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    assert_eq!(
        w.query_one(
            "SELECT count(*) FROM pg_policy WHERE polrelid = $1::text::regclass",
            &[&format!("public.{shard}")],
        )
        .unwrap()
        .get::<_, i64>(0),
        4
    );
    assert!(findings().is_empty(), "{:?}", findings());
    su.batch_execute(&format!("DROP TABLE public.{t}")).unwrap();
}

/// A table distributed with `citus.enable_metadata_sync` off is unknown to the workers' metadata,
/// where the guard then knows its shards only by name: its owner made a table of its own under
/// the table's name on each worker, had it protected, and then dropped that table there, and
/// every shard's policies with it (a reviewer's pass). protect() refuses such a table.
#[test]
fn protect_refuses_a_table_the_workers_metadata_does_not_know() {
    let pid = std::process::id();
    let (t, owner) = (format!("unsynced_{pid}"), format!("unsynced_owner_{pid}"));
    let mut su = superuser();
    su.batch_execute(&format!(
        "CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS; GRANT CREATE ON SCHEMA public TO {owner}"
    ))
    .unwrap();
    let mut o = node(0, &owner);
    assert_not_privileged(&mut o);
    o.batch_execute(&format!(
        "SET citus.enable_metadata_sync = off; \
         CREATE TABLE public.{t} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int); \
         SELECT create_distributed_table('public.{t}', 'tenant_id', colocate_with => 'none')"
    ))
    .unwrap();
    for i in 1..ports().len() {
        node(i, &owner)
            .batch_execute(&format!(
                "CREATE TABLE public.{t} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int)"
            ))
            .unwrap();
    }
    let e = su
        .batch_execute(&format!(
            "SELECT tenancy.protect('public.{t}', audit => false)"
        ))
        .expect_err("a table the workers do not know was protected");
    assert_eq!(sqlstate(&e), "55000", "{}", message(&e));
    assert!(
        message(&e).contains("enable_metadata_sync"),
        "{}",
        message(&e)
    );
    // In the same transaction as its distribution, with the metadata sync off.
    let mut tx = su.transaction().unwrap();
    for sql in [
        "SET LOCAL citus.enable_metadata_sync = off".to_string(),
        format!("CREATE TABLE public.{t}_2 (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int)"),
        format!("SELECT create_distributed_table('public.{t}_2', 'tenant_id', colocate_with => 'none')"),
    ] {
        tx.batch_execute(&sql).unwrap();
    }
    let e = tx
        .batch_execute(&format!(
            "SELECT tenancy.protect('public.{t}_2', audit => false)"
        ))
        .expect_err("a table distributed with the metadata sync off was protected");
    tx.rollback().unwrap();
    assert_eq!(sqlstate(&e), "55000", "{}", message(&e));
    assert!(
        message(&e).contains("enable_metadata_sync"),
        "{}",
        message(&e)
    );
    for i in 1..ports().len() {
        node(i, &owner)
            .batch_execute(&format!("DROP TABLE public.{t}"))
            .unwrap();
    }
    su.batch_execute(&format!("DROP TABLE public.{t}")).unwrap();
}

/// The guard on a worker reads the protected tables' records with a snapshot taken when it
/// checks, not the transaction's: a table's owner whose REPEATABLE READ transaction on a worker
/// began before protect() committed did not see the table's record, and turned a shard's row
/// security off after it (a reviewer's pass).
#[test]
fn a_shard_is_guarded_for_a_transaction_that_began_before_its_table_was_protected() {
    let pid = std::process::id();
    let (t, owner) = (format!("early_{pid}"), format!("early_owner_{pid}"));
    let mut su = superuser();
    su.batch_execute(&format!(
        "CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS"
    ))
    .unwrap();
    setup_in_one_transaction(
        &mut su,
        &[
            format!("CREATE TABLE public.{t} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int)"),
            format!("SELECT create_distributed_table('public.{t}', 'tenant_id')"),
            format!("ALTER TABLE public.{t} OWNER TO {owner}"),
        ],
    );
    let shard: String = su
        .query_one(
            &format!(
                "SELECT shard_name('public.{t}'::regclass, shardid) FROM citus_shards \
                  WHERE table_name = 'public.{t}'::regclass AND nodeport = $1 ORDER BY shardid LIMIT 1"
            ),
            &[&i32::from(ports()[1])],
        )
        .unwrap()
        .get(0);
    let mut o = node(1, &owner);
    assert_not_privileged(&mut o);
    o.batch_execute(
        "BEGIN ISOLATION LEVEL REPEATABLE READ; SET LOCAL citus.override_table_visibility = off; \
         SELECT count(*) FROM pg_class",
    )
    .unwrap();
    // (Citus's deadlock detector counts the owner's open transaction on the worker into a false
    // cycle now and then: run_once_more_after_a_distributed_deadlock.)
    run_once_more_after_a_distributed_deadlock(
        &mut su,
        &format!("SELECT tenancy.protect('public.{t}', audit => false)"),
    );
    let e = o
        .batch_execute(&format!("ALTER TABLE {shard} NO FORCE ROW LEVEL SECURITY"))
        .expect_err("a shard's row security was changed in a transaction older than its record");
    // 42501 from the guard; or 0A000 first, as the guard's read of the records would follow
    // the owner's carried SET LOCAL on the catalog owner's connections.
    assert!(
        ["42501", "0A000"].contains(&sqlstate(&e).as_str()),
        "{}: {}",
        sqlstate(&e),
        message(&e)
    );
    o.batch_execute("ROLLBACK").unwrap();
    su.batch_execute(&format!("DROP TABLE public.{t}")).unwrap();
}

/// After DDL on a protected Citus table, a new owner lacking EXECUTE on pg_tenancy's trigger
/// functions is granted it as the catalog owner (`citus::trail::grant_new_owners`). A GRANT
/// fires event triggers: a DBA's `ddl_command_end` trigger (`SET search_path = its schema`) ran
/// as the superuser and inserted into the owner's temporary table named as its log table,
/// whose trigger made the owner a superuser on every node (a reviewer's pass, through `ALTER
/// TABLE ... OWNER TO`). Refused while the session has temporary objects.
#[test]
fn a_dbas_event_trigger_does_not_reach_the_owners_temporary_objects_through_a_grant() {
    let pid = std::process::id();
    let (t, owner, new_owner, log) = (
        format!("public.evg_{pid}"),
        format!("evg_owner_{pid}"),
        format!("evg_new_{pid}"),
        format!("evg_log_{pid}"),
    );
    let guc = format!("it.{log}");
    let mut su = superuser();
    su.batch_execute(&format!(
        "CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS; CREATE ROLE {new_owner} NOLOGIN; \
         GRANT {new_owner} TO {owner}; GRANT CREATE, USAGE ON SCHEMA public TO {new_owner}"
    ))
    .unwrap();
    // The DBA's objects on the coordinator only, from a connection of their own: with DDL
    // propagation off for the rest of a session, a later DROP TABLE there left the table's
    // Citus metadata behind (and a shard move of its colocation group failed).
    node(0, "postgres")
        .batch_execute(&format!(
        "SET citus.enable_ddl_propagation = off; \
         CREATE SCHEMA {log}; CREATE TABLE {log}.ddl_log (who name, tag text); \
         CREATE FUNCTION {log}.log_ddl() RETURNS event_trigger LANGUAGE plpgsql SET search_path = {log} AS \
           $$ BEGIN IF current_setting('{guc}', true) = 'on' THEN \
                INSERT INTO ddl_log (who, tag) VALUES (current_user, tg_tag); END IF; END $$; \
         CREATE EVENT TRIGGER {log} ON ddl_command_end EXECUTE FUNCTION {log}.log_ddl(); \
         GRANT USAGE ON SCHEMA {log} TO PUBLIC; GRANT INSERT ON {log}.ddl_log TO PUBLIC; \
         CREATE FUNCTION {log}.seen() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN NEW.who := current_user; RETURN NEW; END $$; \
         GRANT EXECUTE ON FUNCTION {log}.seen() TO PUBLIC"
    ))
    .unwrap();
    struct DropTrigger(String);
    impl Drop for DropTrigger {
        fn drop(&mut self) {
            let _ = superuser().batch_execute(&format!("DROP EVENT TRIGGER IF EXISTS {}", self.0));
        }
    }
    let _drop = DropTrigger(log.clone());
    protected_table_of(&mut su, &t, &owner);
    let mut o = node(0, &owner);
    assert_not_privileged(&mut o);
    o.batch_execute(&format!(
        "SET {guc} = 'on'; CREATE TEMP TABLE ddl_log (who name, tag text); \
         CREATE TRIGGER seen BEFORE INSERT ON ddl_log FOR EACH ROW EXECUTE FUNCTION {log}.seen()"
    ))
    .unwrap();
    let e = o
        .batch_execute(&format!("ALTER TABLE {t} OWNER TO {new_owner}"))
        .expect_err(
            "a new owner's grant ran as the catalog owner with the session's temporary objects",
        );
    assert_eq!(sqlstate(&e), "55000", "{}", message(&e));
    let reached: i64 = o
        .query_one(
            "SELECT count(*) FROM pg_temp.ddl_log WHERE who <> current_user",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        reached, 0,
        "the DBA's trigger wrote into the owner's temporary table as another role"
    );
    // Without temporary objects the owner's change goes through: Citus's own `SET LOCAL
    // search_path TO public` for its DDL propagation is applied on the node only, never
    // carried to the catalog owner's connection that grants the new owner (it was, and the
    // change was refused with 0A000 for it), and the new owner is granted the trigger
    // function. One statement a query: Citus sends a DDL's text to the workers as it came.
    o.batch_execute("DISCARD TEMP").unwrap();
    o.batch_execute(&format!("ALTER TABLE {t} OWNER TO {new_owner}"))
        .unwrap_or_else(|e| panic!("the owner's ALTER TABLE OWNER TO: {}", message(&e)));
    let granted: bool = su
        .query_one(
            &format!(
                "SELECT has_function_privilege('{new_owner}', 'tenancy._refuse_truncate()', 'EXECUTE')"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        granted,
        "the new owner was not granted the trigger function"
    );
    su.batch_execute(&format!("DROP TABLE {t}")).unwrap();
}
