//! PostgreSQL's row-security CVEs, each replayed against pg_tenancy's policies on the
//! PostgreSQL 15 the project runs, as a NOSUPERUSER NOBYPASSRLS role bound to tenant A.
//! Each test fails if the attack reaches tenant B. The CVE texts are summarised in
//! tests/integration/ATTACKS.md. (CVE-2024-4317, pg_stats_ext, is in attacks.rs.)

mod common;
use common::*;
use postgres::Client;

/// The leaky recorder of common.rs behind an operator whose selectivity estimator
/// (scalarltsel) calls it on the column's histogram while planning.
fn install_leaky_operator(c: &mut Client) {
    install_leak(c, true);
    c.batch_execute(
        "CREATE FUNCTION pg_temp.leaklt(a text, b text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 AS \
         $$ BEGIN PERFORM pg_temp.leak(a); RETURN a < b; END $$; \
         CREATE OPERATOR pg_temp.<<< (LEFTARG = text, RIGHTARG = text, FUNCTION = pg_temp.leaklt, \
                                      RESTRICT = scalarltsel)",
    )
    .unwrap();
}

/// A schema with a protected table holding only A's and B's names (so the statistics hold
/// every value), a partitioned copy and a security_invoker view, analysed.
fn stats_schema(f: &Fixture) -> String {
    let s = ident("cvestats");
    superuser()
        .batch_execute(&format!(
            "CREATE SCHEMA {s}; GRANT USAGE ON SCHEMA {s} TO {APP}; \
             CREATE TABLE {s}.t (tenant_id uuid NOT NULL, name text NOT NULL); \
             CREATE TABLE {s}.p (tenant_id uuid NOT NULL, k int NOT NULL, name text NOT NULL) PARTITION BY RANGE (k); \
             CREATE TABLE {s}.p1 PARTITION OF {s}.p FOR VALUES FROM (0) TO (1000); \
             SELECT tenancy.protect('{s}.t'); SELECT tenancy.protect('{s}.p'); \
             INSERT INTO {s}.t SELECT x.tid, x.slug || '-secret-' || g FROM generate_series(1, 40) g, \
                 (VALUES ('{a}'::uuid, '{an}'), ('{b}'::uuid, '{bn}')) x(tid, slug); \
             INSERT INTO {s}.p SELECT tenant_id, 1, name FROM {s}.t; \
             CREATE VIEW {s}.v WITH (security_invoker = true) AS SELECT name FROM {s}.t; \
             GRANT SELECT ON {s}.t, {s}.p, {s}.p1, {s}.v TO {APP}; \
             ANALYZE {s}.t; ANALYZE {s}.p",
            a = f.a_id,
            an = f.a,
            b = f.b_id,
            bn = f.b
        ))
        .unwrap();
    s
}

#[test]
fn cve_2019_10130_selectivity_estimation_does_not_run_leaky_operators_on_other_tenants_statistics()
{
    let f = Fixture::new();
    let s = stats_schema(&f);
    // Control: without row security (a superuser), planning alone feeds the histogram, B's
    // values included, to the leaky operator. This is the channel the CVE fix closed.
    let mut su = superuser();
    install_leaky_operator(&mut su);
    su.batch_execute(&format!(
        "EXPLAIN SELECT * FROM {s}.t WHERE name OPERATOR(pg_temp.<<<) 'zzz'"
    ))
    .unwrap();
    let control = leaked(&mut su);
    assert!(
        control.iter().any(|v| v.starts_with(&f.b)),
        "control: the planner did not call the operator on the statistics: {control:?}"
    );
    let mut c = app();
    begin_bound(&mut c, &f, &f.a);
    install_leaky_operator(&mut c);
    c.batch_execute(&format!(
        "EXPLAIN SELECT * FROM {s}.t WHERE name OPERATOR(pg_temp.<<<) 'zzz'"
    ))
    .unwrap();
    assert_no_trace_of(&leaked(&mut c), &f);
    c.batch_execute(&format!(
        "SELECT count(*) FROM {s}.t WHERE name OPERATOR(pg_temp.<<<) 'zzz'"
    ))
    .unwrap();
    let l = leaked(&mut c);
    assert!(!l.is_empty());
    assert_only(&l, &f.a);
    c.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn cve_2025_8713_statistics_of_partitions_and_views_do_not_reach_leaky_operators() {
    let f = Fixture::new();
    let s = stats_schema(&f);
    let mut c = app();
    begin_bound(&mut c, &f, &f.a);
    install_leaky_operator(&mut c);
    for q in [
        format!("SELECT * FROM {s}.p WHERE name OPERATOR(pg_temp.<<<) 'zzz'"),
        format!("SELECT * FROM {s}.p1 WHERE name OPERATOR(pg_temp.<<<) 'zzz'"),
        format!("SELECT * FROM {s}.v WHERE name OPERATOR(pg_temp.<<<) 'zzz'"),
    ] {
        c.batch_execute(&format!("EXPLAIN {q}")).unwrap();
        assert_no_trace_of(&leaked(&mut c), &f);
        c.batch_execute(&q).unwrap();
        assert_only(&leaked(&mut c), &f.a);
    }
    c.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn cve_2016_2193_a_plan_cached_under_one_role_is_not_reused_for_another() {
    let (f, mut c) = two_tenants();
    c.batch_execute("PREPARE cached AS SELECT name FROM it_customers")
        .unwrap();
    for round in 0..6 {
        let tenant = if round % 2 == 0 { &f.a } else { &f.b };
        begin_bound(&mut c, &f, tenant);
        if round % 3 == 1 {
            c.batch_execute(&format!("SET LOCAL ROLE {APP2}")).unwrap();
        }
        let names = texts(&mut c, "EXECUTE cached");
        assert_eq!(names.len(), 5, "round {round}");
        assert_only(&names, tenant);
        c.batch_execute("COMMIT").unwrap();
    }
}

#[test]
fn cve_2023_2455_an_inlined_sql_function_follows_role_and_binding_changes() {
    let (f, mut c) = two_tenants();
    c.batch_execute(
        "CREATE FUNCTION pg_temp.names() RETURNS SETOF text LANGUAGE sql STABLE \
         AS 'SELECT name FROM public.it_customers'; \
         PREPARE inlined AS SELECT * FROM pg_temp.names()",
    )
    .unwrap();
    for round in 0..6 {
        let tenant = if round % 2 == 0 { &f.a } else { &f.b };
        begin_bound(&mut c, &f, tenant);
        if round >= 3 {
            c.batch_execute(&format!("SET LOCAL ROLE {APP2}")).unwrap();
        }
        let names = texts(&mut c, "EXECUTE inlined");
        assert_eq!(names.len(), 5, "round {round}");
        assert_only(&names, tenant);
        c.batch_execute("COMMIT").unwrap();
    }
}

#[test]
fn cve_2024_10976_subqueries_and_sublinks_follow_role_and_binding_changes() {
    let (f, mut c) = two_tenants();
    c.batch_execute(
        "PREPARE sub AS SELECT (SELECT string_agg(name, ',') FROM (SELECT name FROM it_customers) s) \
                        WHERE EXISTS (SELECT 1 FROM it_customers WHERE id = 1)",
    )
    .unwrap();
    for round in 0..6 {
        let tenant = if round % 2 == 0 { &f.a } else { &f.b };
        begin_bound(&mut c, &f, tenant);
        if round % 2 == 1 {
            c.batch_execute(&format!("SET LOCAL ROLE {APP2}")).unwrap();
        }
        let v = texts(&mut c, "EXECUTE sub");
        let names: Vec<String> = v[0].split(',').map(str::to_string).collect();
        assert_eq!(names.len(), 5, "round {round}");
        assert_only(&names, tenant);
        c.batch_execute("COMMIT").unwrap();
    }
}

#[test]
fn cve_2023_39418_merge_update_cannot_move_a_row_to_another_tenant() {
    let (f, mut c) = two_tenants();
    begin_bound(&mut c, &f, &f.a);
    expect_err(
        &mut c,
        &format!(
            "MERGE INTO it_customers t USING (VALUES (1)) s(id) ON t.id = s.id \
             WHEN MATCHED THEN UPDATE SET tenant_id = '{}'",
            f.b_id
        ),
        &["42501"],
    );
    c.batch_execute("ROLLBACK").unwrap();
    begin_bound(&mut c, &f, &f.b);
    assert_eq!(
        texts(&mut c, "SELECT count(*)::text FROM it_customers"),
        vec!["5"]
    );
    c.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn cve_2023_39418_merge_conditions_see_only_the_bound_tenants_rows() {
    let (f, mut c) = two_tenants();
    begin_bound(&mut c, &f, &f.a);
    install_leak(&mut c, false);
    c.batch_execute(
        "MERGE INTO it_customers t USING (SELECT g AS id FROM generate_series(1, 5) g) s ON t.id = s.id \
         WHEN MATCHED AND pg_temp.leak(t.name) THEN DELETE",
    )
    .unwrap();
    let l = leaked(&mut c);
    assert_eq!(l.len(), 5, "{l:?}");
    assert_only(&l, &f.a);
    c.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn cve_2017_15099_on_conflict_do_update_reveals_nothing_of_a_hidden_row() {
    let (f, mut c) = two_tenants();
    let id: i64 = bound_tx(&mut c, &f, &f.b, true, |c| {
        c.query_one(
            "INSERT INTO it_orders (amount) VALUES (424242) RETURNING id",
            &[],
        )
        .unwrap()
        .get(0)
    });
    begin_bound(&mut c, &f, &f.a);
    let msg = match c.query(
        "INSERT INTO it_orders (id, amount) VALUES ($1, 1) \
         ON CONFLICT (id) DO UPDATE SET amount = it_orders.amount + 1 RETURNING it_orders.amount",
        &[&id],
    ) {
        Ok(rows) => panic!(
            "upsert on another tenant's row returned {} rows",
            rows.len()
        ),
        Err(e) => {
            assert_eq!(sqlstate(&e), "42501");
            format!("{e:?}")
        }
    };
    assert!(!msg.contains("424242"), "{msg}");
    assert_no_trace_of(&[msg], &f);
    c.batch_execute("ROLLBACK").unwrap();
}
