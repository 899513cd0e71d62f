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

const CATALOG_TABLES: i64 = 12;

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
/// reads and writes its own rows only; an unbound one is refused.
#[test]
fn a_table_local_to_the_coordinator_is_protected_as_on_one_node() {
    let f = Fixture::new();
    let t = format!("citus_local_{}", std::process::id());
    let mut su = superuser();
    su.batch_execute(&format!(
        "CREATE TABLE public.{t} (tenant_id uuid NOT NULL, id int NOT NULL, v text); \
         SELECT tenancy.protect('public.{t}'); \
         GRANT SELECT, INSERT ON public.{t} TO {APP}"
    ))
    .unwrap();
    let mut c = app_on(0);
    for tenant in [&f.a, &f.b] {
        let mut tx = c.transaction().unwrap();
        tx.execute("SELECT tenancy.bind($1)", &[&f.token(tenant, "ann")])
            .unwrap();
        tx.execute(
            &format!("INSERT INTO public.{t} (id, v) VALUES (1, $1)"),
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
            .query(&format!("SELECT v FROM public.{t}"), &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(seen, [tenant.clone()]);
        tx.rollback().unwrap();
    }
    let e = c
        .query(&format!("SELECT v FROM public.{t}"), &[])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    su.batch_execute(&format!("DROP TABLE public.{t}")).unwrap();
}
