//! Protected tables seen from a NOSUPERUSER NOBYPASSRLS application role: with two tenants'
//! rows present, no statement form reads, changes or creates the other tenant's rows, and an
//! unbound session gets an error instead of rows.

mod common;
use common::*;
use postgres::Client;

/// Two tenants with customers 1..=3 (names prefixed by the slug) and items, and orders.
fn seeded() -> (Fixture, Client) {
    let f = Fixture::new();
    let mut c = app();
    for t in [&f.a, &f.b] {
        bound_tx(&mut c, &f, t, true, |c| {
            c.execute(
                "INSERT INTO it_customers (id, name) SELECT g, $1 || '-' || g FROM generate_series(1, 3) g",
                &[t],
            )
            .unwrap();
            c.batch_execute(
                "INSERT INTO it_items (id, customer_id, qty) SELECT g, 1 + g % 3, g FROM generate_series(1, 6) g; \
                 INSERT INTO it_orders (amount) SELECT g FROM generate_series(1, 10) g; \
                 INSERT INTO it_events (id, at) VALUES (1, '2026-05-01'), (2, '2027-05-01')",
            )
            .unwrap();
        });
    }
    (f, c)
}

fn names(c: &mut Client, sql: &str) -> Vec<String> {
    c.query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

fn only_prefix(v: &[String], prefix: &str) {
    assert!(!v.is_empty(), "expected rows");
    assert!(
        v.iter().all(|n| n.starts_with(&format!("{prefix}-"))),
        "{v:?} leaks rows of another tenant than {prefix}"
    );
}

#[test]
fn unbound_sessions_get_an_error_not_rows() {
    let (_f, mut c) = seeded();
    for sql in [
        "SELECT * FROM it_customers",
        "SELECT count(*) FROM it_orders",
        "UPDATE it_customers SET name = 'x'",
        "DELETE FROM it_items",
        "INSERT INTO it_customers (id, name) VALUES (99, 'x')",
        "SELECT * FROM it_events_2026",
        "SELECT * FROM it_customer_totals",
    ] {
        let msg = expect_refusal(&mut c, sql, "42501", "no_tenant_bound");
        assert!(
            msg.starts_with("no tenant bound: table \"public.it_"),
            "{sql}: the refusal names the protected table: {msg}"
        );
    }
}

#[test]
fn reads_see_only_the_bound_tenant() {
    let (f, mut c) = seeded();
    bound_tx(&mut c, &f, &f.a, false, |c| {
        only_prefix(&names(c, "SELECT name FROM it_customers"), &f.a);
        only_prefix(
            &names(c, "SELECT name FROM it_customers WHERE id = 1"),
            &f.a,
        );
        only_prefix(
            &names(
                c,
                "WITH x AS (SELECT * FROM it_customers) SELECT name FROM x",
            ),
            &f.a,
        );
        only_prefix(
            &names(
                c,
                "SELECT name FROM it_customers WHERE id IN (SELECT customer_id FROM it_items)",
            ),
            &f.a,
        );
        only_prefix(
            &names(c, "SELECT (SELECT max(name) FROM it_customers)"),
            &f.a,
        );
        only_prefix(&names(c, "SELECT name FROM it_customer_totals"), &f.a);
        only_prefix(
            &names(c, "SELECT c.name FROM it_customers c JOIN it_items i ON i.customer_id = c.id AND i.tenant_id = c.tenant_id"),
            &f.a,
        );
        // Asking for the other tenant explicitly returns nothing.
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM it_customers WHERE tenant_id = $1::text::uuid",
                &[&f.b_id],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, 0);
        // Partitions, read directly, are protected too (including one created after protect()).
        let n: i64 = c
            .query_one("SELECT count(*) FROM it_events_2026", &[])
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
        let n: i64 = c
            .query_one("SELECT count(*) FROM it_events_2027", &[])
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
        let n: i64 = c
            .query_one("SELECT count(*) FROM it_events", &[])
            .unwrap()
            .get(0);
        assert_eq!(n, 2);
        let n: i64 = c
            .query_one("SELECT count(*) FROM it_orders", &[])
            .unwrap()
            .get(0);
        assert_eq!(n, 10);
    });
}

#[test]
fn cursors_prepared_statements_and_copy_to_see_only_the_bound_tenant() {
    let (f, mut c) = seeded();
    bound_tx(&mut c, &f, &f.b, false, |c| {
        c.batch_execute("DECLARE cur CURSOR FOR SELECT name FROM it_customers ORDER BY id")
            .unwrap();
        only_prefix(&names(c, "FETCH ALL FROM cur"), &f.b);
        c.batch_execute("PREPARE p AS SELECT name FROM it_customers WHERE id = $1")
            .unwrap();
        only_prefix(&names(c, "EXECUTE p(2)"), &f.b);
        let mut out = String::new();
        use std::io::Read;
        c.copy_out("COPY (SELECT name FROM it_customers) TO STDOUT")
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let rows: Vec<String> = out.lines().map(str::to_string).collect();
        only_prefix(&rows, &f.b);
        let mut out = String::new();
        c.copy_out("COPY it_customers (name) TO STDOUT")
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        only_prefix(&out.lines().map(str::to_string).collect::<Vec<_>>(), &f.b);
    });
}

#[test]
fn writes_touch_only_the_bound_tenant() {
    let (f, mut c) = seeded();
    bound_tx(&mut c, &f, &f.a, false, |c| {
        let n = c
            .execute("UPDATE it_customers SET name = name || '!'", &[])
            .unwrap();
        assert_eq!(n, 3);
        let n = c
            .execute("DELETE FROM it_items WHERE qty > 0", &[])
            .unwrap();
        assert_eq!(n, 6);
        let returned = names(c, "UPDATE it_customers SET name = name RETURNING name");
        only_prefix(&returned, &f.a);
        let n = c
            .execute(
                "UPDATE it_customers SET name = 'hijack' WHERE tenant_id = $1::text::uuid",
                &[&f.b_id],
            )
            .unwrap();
        assert_eq!(n, 0);
        let n = c
            .execute(
                "DELETE FROM it_customers WHERE tenant_id = $1::text::uuid",
                &[&f.b_id],
            )
            .unwrap();
        assert_eq!(n, 0);
        // Data-modifying CTE.
        let n: i64 = c
            .query_one(
                "WITH d AS (DELETE FROM it_orders RETURNING tenant_id) SELECT count(*) FROM d",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, 10);
        c.batch_execute("COMMIT").unwrap();
    });
    // B is intact.
    bound_tx(&mut c, &f, &f.b, false, |c| {
        let n: i64 = c
            .query_one("SELECT count(*) FROM it_items", &[])
            .unwrap()
            .get(0);
        assert_eq!(n, 6);
        let n: i64 = c
            .query_one("SELECT count(*) FROM it_orders", &[])
            .unwrap()
            .get(0);
        assert_eq!(n, 10);
        only_prefix(&names(c, "SELECT name FROM it_customers"), &f.b);
        assert!(names(c, "SELECT name FROM it_customers")
            .iter()
            .all(|n| !n.ends_with('!')));
    });
}

#[test]
fn inserting_or_moving_rows_into_another_tenant_is_refused() {
    let (f, mut c) = seeded();
    bound_tx(&mut c, &f, &f.a, false, |c| {
        let sql = format!(
            "INSERT INTO it_customers (tenant_id, id, name) VALUES ('{}', 50, 'planted')",
            f.b_id
        );
        expect_err(c, &sql, &["42501"]);
    });
    bound_tx(&mut c, &f, &f.a, false, |c| {
        let sql = format!(
            "UPDATE it_customers SET tenant_id = '{}' WHERE id = 1",
            f.b_id
        );
        expect_err(c, &sql, &["42501"]);
    });
    // COPY FROM into a table with row security is refused by PostgreSQL itself (0A000), for
    // this tenant's rows as for another's: the bulk path is INSERT ... SELECT from a staging table.
    let mut fresh = app(); // a failed COPY leaves the client connection unusable
    bound_tx(&mut fresh, &f, &f.a, false, |c| {
        let data = format!("{}\t60\tcopied\n", f.b_id);
        match c.copy_in("COPY it_customers (tenant_id, id, name) FROM STDIN") {
            Err(e) => assert_eq!(sqlstate(&e), "0A000", "{e}"),
            Ok(mut w) => {
                use std::io::Write;
                let _ = w.write_all(data.as_bytes());
                let e = w.finish().unwrap_err();
                assert!(["0A000", "42501"].contains(&sqlstate(&e).as_str()), "{e}");
            }
        }
    });
    bound_tx(&mut c, &f, &f.a, false, |c| {
        c.batch_execute("CREATE TEMP TABLE staging (id int, name text)")
            .unwrap();
        let mut w = c.copy_in("COPY staging FROM STDIN").unwrap();
        use std::io::Write;
        w.write_all(format!("70\t{}-copied\n", f.a).as_bytes())
            .unwrap();
        w.finish().unwrap();
        c.batch_execute("INSERT INTO it_customers (id, name) SELECT id, name FROM staging")
            .unwrap();
        let t: String = c
            .query_one(
                "SELECT tenant_id::text FROM it_customers WHERE id = 70",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(t, f.a_id, "the tenant column defaults to the bound tenant");
    });
}

#[test]
fn on_conflict_and_merge_never_reach_the_other_tenant() {
    let (f, mut c) = seeded();
    bound_tx(&mut c, &f, &f.a, false, |c| {
        // Same id as B's customer 1: the conflict is with A's own row (the key includes tenant_id).
        c.batch_execute("INSERT INTO it_customers (id, name) VALUES (1, 'upserted') ON CONFLICT (tenant_id, id) DO UPDATE SET name = EXCLUDED.name")
            .unwrap();
        let sql = format!(
            "INSERT INTO it_customers (tenant_id, id, name) VALUES ('{}', 1, 'x') ON CONFLICT (tenant_id, id) DO UPDATE SET name = 'stolen'",
            f.b_id
        );
        expect_err(c, &sql, &["42501"]);
    });
    bound_tx(&mut c, &f, &f.a, false, |c| {
        c.batch_execute(
            "MERGE INTO it_customers t USING (SELECT g AS id FROM generate_series(1, 5) g) s ON t.id = s.id \
             WHEN MATCHED THEN UPDATE SET name = t.name || '+' \
             WHEN NOT MATCHED THEN INSERT (id, name) VALUES (s.id, 'merged-' || s.id)",
        )
        .unwrap();
        c.batch_execute("COMMIT").unwrap();
    });
    bound_tx(&mut c, &f, &f.b, false, |c| {
        let v = names(c, "SELECT name FROM it_customers ORDER BY id");
        assert_eq!(v.len(), 3, "{v:?}");
        only_prefix(&v, &f.b);
        assert!(v.iter().all(|n| !n.ends_with('+')));
    });
}

#[test]
fn truncate_is_refused_for_application_sessions() {
    let (f, mut c) = seeded();
    c.batch_execute("SET ROLE NONE").ok();
    // The application role has no TRUNCATE privilege; grant it to prove the trigger refuses anyway.
    superuser()
        .batch_execute("GRANT TRUNCATE ON it_orders TO tenancy_app")
        .unwrap();
    bound_tx(&mut c, &f, &f.a, false, |c| {
        expect_err(c, "TRUNCATE it_orders", &["42501"]);
    });
    expect_err(&mut c, "TRUNCATE it_orders", &["42501"]);
    superuser()
        .batch_execute("REVOKE TRUNCATE ON it_orders FROM tenancy_app")
        .unwrap();
}

#[test]
fn row_security_off_and_owner_tricks_do_not_help() {
    let (f, mut c) = seeded();
    bound_tx(&mut c, &f, &f.a, false, |c| {
        c.batch_execute("SET row_security = off").unwrap();
        let e = c.query("SELECT * FROM it_customers", &[]).unwrap_err();
        assert_eq!(
            sqlstate(&e),
            "42501",
            "row_security=off must error, not bypass"
        );
    });
}
