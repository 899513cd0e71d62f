//! Attacks an injected query would try, as a NOSUPERUSER NOBYPASSRLS role bound to tenant A
//! while tenant B has rows: each test fails if the attack works. (The binding forgeries are in
//! binding.rs, statement forms in isolation.rs, DDL in protection.rs.)

mod common;
use common::*;

#[test]
fn a_leaky_function_in_the_where_clause_sees_only_the_bound_tenants_rows() {
    let (f, mut c) = two_tenants();
    begin_bound(&mut c, &f, &f.a);
    install_leak(&mut c, true);
    c.batch_execute("SELECT count(*) FROM it_customers WHERE pg_temp.leak(name)")
        .unwrap();
    let l = leaked(&mut c);
    assert_eq!(l.len(), 5, "{l:?}");
    assert_only(&l, &f.a);
    c.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn a_leaky_operator_sees_only_the_bound_tenants_rows() {
    let (f, mut c) = two_tenants();
    begin_bound(&mut c, &f, &f.a);
    install_leak(&mut c, true);
    c.batch_execute(
        "CREATE FUNCTION pg_temp.leakop(a text, b text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 AS \
         $$ BEGIN RETURN pg_temp.leak(a); END $$; \
         CREATE OPERATOR pg_temp.<<~>> (LEFTARG = text, RIGHTARG = text, FUNCTION = pg_temp.leakop, RESTRICT = eqsel); \
         SELECT count(*) FROM it_customers WHERE name OPERATOR(pg_temp.<<~>>) 'x'",
    )
    .unwrap();
    let l = leaked(&mut c);
    assert_eq!(l.len(), 5, "{l:?}");
    assert_only(&l, &f.a);
    c.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn where_current_of_updates_only_the_bound_tenants_rows() {
    let (f, mut c) = two_tenants();
    begin_bound(&mut c, &f, &f.a);
    c.batch_execute("DECLARE cur CURSOR FOR SELECT * FROM it_customers FOR UPDATE")
        .unwrap();
    let mut updated = 0;
    loop {
        let rows = c.query("FETCH NEXT FROM cur", &[]).unwrap();
        if rows.is_empty() {
            break;
        }
        updated += c
            .execute(
                "UPDATE it_customers SET name = name || '*' WHERE CURRENT OF cur",
                &[],
            )
            .unwrap();
    }
    assert_eq!(updated, 5);
    c.batch_execute("COMMIT").unwrap();
    begin_bound(&mut c, &f, &f.b);
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM it_customers WHERE name LIKE '%*'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    c.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn planner_statistics_views_do_not_show_protected_columns() {
    let (f, mut c) = two_tenants();
    superuser().batch_execute("ANALYZE it_customers; CREATE STATISTICS IF NOT EXISTS it_customers_st (mcv) ON id, name FROM it_customers; ANALYZE it_customers").unwrap();
    begin_bound(&mut c, &f, &f.a);
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stats WHERE tablename = 'it_customers' AND attname = 'name'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "pg_stats must hide statistics of row-secured tables");
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stats_ext WHERE tablename = 'it_customers'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        n, 0,
        "pg_stats_ext must hide extended statistics of row-secured tables"
    );
    c.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn tokens_bound_as_parameters_are_not_visible_in_pg_stat_activity() {
    let (f, mut c) = two_tenants();
    // Another session of the same database role (as behind one application role).
    let mut victim = app();
    let token = f.token(&f.b, "victim");
    victim.batch_execute("BEGIN").unwrap();
    victim
        .execute("SELECT tenancy.bind($1)", &[&token])
        .unwrap();
    let queries: Vec<String> = c
        .query(
            "SELECT coalesce(query, '') FROM pg_stat_activity WHERE usename = current_user",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        queries.iter().all(|q| !q.contains(&token)),
        "a bound token leaked through pg_stat_activity"
    );
    victim.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn a_security_definer_function_of_the_table_owner_still_sees_only_the_bound_tenant() {
    let (f, mut c) = two_tenants();
    // The owner is a superuser here, so row security would not apply to it: verify() flags
    // this function; with a non-superuser owner, FORCE ROW LEVEL SECURITY keeps isolation.
    let mut su = superuser();
    let owner = unique("owner").replace('-', "_");
    serialized_grant(&mut su, &format!(
        "CREATE ROLE {owner} NOLOGIN NOSUPERUSER NOBYPASSRLS; GRANT SELECT ON it_customers TO {owner}; \
         CREATE FUNCTION public.{owner}_all() RETURNS SETOF text LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog \
         AS 'SELECT name FROM public.it_customers'; ALTER FUNCTION public.{owner}_all() OWNER TO {owner}; \
         GRANT EXECUTE ON FUNCTION public.{owner}_all() TO {APP}"
    ));
    begin_bound(&mut c, &f, &f.a);
    let names: Vec<String> = c
        .query(&format!("SELECT * FROM public.{owner}_all()"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        names.iter().all(|n| n.starts_with(&format!("{}-", f.a))),
        "{names:?}"
    );
    c.batch_execute("ROLLBACK").unwrap();
    let flagged: i64 = su
        .query_one(
            "SELECT count(*) FROM tenancy.verify() WHERE rule = 'security_definer_function' AND object LIKE $1",
            &[&format!("%{owner}_all%")],
        )
        .unwrap()
        .get(0);
    assert_eq!(flagged, 1);
}

#[test]
fn a_view_owned_by_a_non_bypass_role_without_security_invoker_still_isolates() {
    // FORCE ROW LEVEL SECURITY applies the policies to the view owner too, and the policies
    // read the session's binding, not the role: the view cannot widen access.
    let (f, mut c) = two_tenants();
    let mut su = superuser();
    let owner = unique("vowner").replace('-', "_");
    serialized_grant(&mut su, &format!(
        "CREATE ROLE {owner} NOLOGIN NOSUPERUSER NOBYPASSRLS; GRANT SELECT ON it_customers TO {owner}; \
         CREATE VIEW public.{owner}_v AS SELECT name FROM public.it_customers; ALTER VIEW public.{owner}_v OWNER TO {owner}; \
         GRANT SELECT ON public.{owner}_v TO {APP}"
    ));
    begin_bound(&mut c, &f, &f.a);
    let names: Vec<String> = c
        .query(&format!("SELECT name FROM public.{owner}_v"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !names.is_empty() && names.iter().all(|n| n.starts_with(&format!("{}-", f.a))),
        "{names:?}"
    );
    c.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn set_session_authorization_and_reset_role_are_not_escapes() {
    let (f, mut c) = two_tenants();
    begin_bound(&mut c, &f, &f.a);
    expect_err(&mut c, "SET SESSION AUTHORIZATION postgres", &["42501"]);
    c.batch_execute("ROLLBACK").unwrap();
    begin_bound(&mut c, &f, &f.a);
    c.batch_execute(&format!("SET ROLE {APP2}; RESET ROLE"))
        .unwrap();
    assert_eq!(bound_tenant(&mut c), Ok(f.a_id.clone()));
    c.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn a_replayed_token_binds_only_its_own_tenant() {
    // Replay is not prevented by design (tokens are bearer credentials until exp), but a
    // replayed token never binds another tenant than the one it names.
    let (f, mut c) = two_tenants();
    let t = f.token(&f.a, "u");
    for _ in 0..3 {
        c.batch_execute("BEGIN").unwrap();
        c.execute("SELECT tenancy.bind($1)", &[&t]).unwrap();
        assert_eq!(bound_tenant(&mut c), Ok(f.a_id.clone()));
        c.batch_execute("ROLLBACK").unwrap();
    }
}
