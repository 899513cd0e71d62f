//! The binding as seen by the planner and executor: parallel workers, generic cached plans,
//! prepared statements. Run as a NOSUPERUSER NOBYPASSRLS role against `it_orders`, whose policy
//! reads the binding through `(SELECT tenancy.current_tenant())` as generated policies do.

mod common;
use common::*;

fn seed(f: &Fixture, rows_a: i64, rows_b: i64) {
    let mut c = app();
    for (tenant, n) in [(&f.a, rows_a), (&f.b, rows_b)] {
        let mut tx = c.transaction().unwrap();
        tx.execute("SELECT tenancy.bind($1)", &[&f.token(tenant, "seed")])
            .unwrap();
        tx.execute(
            "INSERT INTO it_orders (amount) SELECT g FROM generate_series(1, $1::int8) g",
            &[&n],
        )
        .unwrap();
        tx.commit().unwrap();
    }
}

#[test]
fn parallel_query_sees_the_binding() {
    let f = Fixture::new();
    seed(&f, 30_000, 20_000);
    let mut c = app();
    c.batch_execute(
        "SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; \
         SET min_parallel_table_scan_size = 0; SET max_parallel_workers_per_gather = 2; \
         SET enable_indexscan = off; SET enable_bitmapscan = off; SET enable_indexonlyscan = off",
    )
    .unwrap();
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "u")])
        .unwrap();
    let plan: Vec<String> = tx
        .query("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT count(*), sum(amount) FROM it_orders", &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    let text = plan.join("\n");
    assert!(text.contains("Gather"), "expected a parallel plan:\n{text}");
    assert!(
        text.contains("Workers Launched: 2") || text.contains("Workers Launched: 1"),
        "workers must run:\n{text}"
    );
    let (n, s): (i64, i64) = tx
        .query_one("SELECT count(*), sum(amount) FROM it_orders", &[])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(n, 30_000);
    assert_eq!(s, 30_000 * 30_001 / 2);
    tx.rollback().unwrap();
}

#[test]
fn generic_cached_plan_follows_the_binding() {
    let f = Fixture::new();
    seed(&f, 3, 5);
    let mut c = app();
    c.batch_execute("SET plan_cache_mode = force_generic_plan")
        .unwrap();
    c.batch_execute("PREPARE q AS SELECT count(*) FROM it_orders WHERE amount > $1")
        .unwrap();
    let count = |c: &mut postgres::Client, tenant: &str| -> i64 {
        c.batch_execute("BEGIN").unwrap();
        c.execute("SELECT tenancy.bind($1)", &[&f.token(tenant, "u")])
            .unwrap();
        let n: i64 = c.query_one("EXECUTE q(0)", &[]).unwrap().get(0);
        c.batch_execute("COMMIT").unwrap();
        n
    };
    assert_eq!(count(&mut c, &f.a), 3);
    assert_eq!(count(&mut c, &f.b), 5);
    assert_eq!(count(&mut c, &f.a), 3);
    // The extended protocol's own prepared statement, reused across bindings.
    let stmt = c.prepare("SELECT count(*) FROM it_orders").unwrap();
    for (tenant, want) in [(&f.a, 3i64), (&f.b, 5), (&f.a, 3)] {
        let mut tx = c.transaction().unwrap();
        tx.execute("SELECT tenancy.bind($1)", &[&f.token(tenant, "u")])
            .unwrap();
        let n: i64 = tx.query_one(&stmt, &[]).unwrap().get(0);
        assert_eq!(n, want);
        tx.commit().unwrap();
    }
    // Unbound, the cached plan errors instead of returning rows.
    let e = c.query_one(&stmt, &[]).unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
}

#[test]
fn binding_is_evaluated_once_per_statement_and_keeps_the_index() {
    let f = Fixture::new();
    seed(&f, 50, 50);
    let mut c = app();
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "u")])
        .unwrap();
    let plan: Vec<String> = tx
        .query(
            "EXPLAIN (COSTS OFF) SELECT * FROM it_orders WHERE id = 42",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    let text = plan.join("\n");
    assert!(
        text.contains("InitPlan"),
        "the binding must be an InitPlan:\n{text}"
    );
    assert!(
        !text.contains("Seq Scan"),
        "must keep an index scan:\n{text}"
    );
    tx.rollback().unwrap();
}
