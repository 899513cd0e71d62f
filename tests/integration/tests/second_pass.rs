//! A second attacker's pass: checks made at bind that must hold for every statement, support
//! access within its cap, key strength, and the smaller ones. As NOSUPERUSER roles; catalogued
//! in ATTACKS.md ("Operators", "Lifecycle", "Key strength").

mod common;
use common::*;

fn login_role(su: &mut postgres::Client, prefix: &str, extra: &str) -> String {
    let r = ident(prefix);
    su.batch_execute(&format!(
        "CREATE ROLE {r} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB {extra}"
    ))
    .unwrap();
    r
}

#[test]
fn an_operator_reads_nothing_through_an_application_role_it_belongs_to() {
    let f = Fixture::new();
    let mut su = superuser();
    let bob = login_role(&mut su, "ops_bob", "");
    su.batch_execute(&format!(
        "GRANT tenancy_operator TO {bob}; GRANT {APP} TO {bob}"
    ))
    .unwrap();
    let mut c = connect(&bob);
    c.batch_execute(&format!("SET ROLE {APP}")).unwrap();
    expect_err(
        &mut c,
        &format!("SELECT tenancy.bind('{}', 'session')", f.token(&f.b, "x")),
        &["42501"],
    );
    c.batch_execute("RESET ROLE").unwrap();
    expect_err(&mut c, "SELECT count(*) FROM it_customers", &["42501"]);
}

#[test]
fn a_key_past_its_not_after_ends_bindings_already_made() {
    let f = Fixture::new();
    let mut su = superuser();
    let kid = unique("short");
    su.execute(
        "SELECT tenancy.add_key($1, 'HS256', $2, not_after => clock_timestamp() + interval '2 seconds')",
        &[&kid, &HS_SECRET],
    )
    .unwrap();
    let token = sign(
        jsonwebtoken::Algorithm::HS256,
        &kid,
        &serde_json::json!({"tid": f.a, "sub": "u", "exp": now() + 600}),
    );
    let mut session = app();
    session
        .execute("SELECT tenancy.bind($1, 'session')", &[&token])
        .unwrap();
    let mut long = app();
    long.batch_execute("BEGIN").unwrap();
    bind(&mut long, &token);
    for c in [&mut session, &mut long] {
        c.query_one("SELECT count(*) FROM it_customers", &[])
            .unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(3100));
    for c in [&mut session, &mut long] {
        let e = c
            .query_one("SELECT count(*) FROM it_customers", &[])
            .unwrap_err();
        assert!(message(&e).contains("has expired"), "{}", message(&e));
    }
    expect_err(
        &mut session,
        "INSERT INTO it_customers (id, name) VALUES (1, 'late')",
        &["42501", "28000"],
    );
}

#[test]
fn a_region_change_ends_bindings_already_made() {
    // On the preloaded cluster, whose server settings no other test depends on.
    let mut su = connect_preloaded("postgres");
    let f = Fixture::on(&mut su);
    let eu = unique("eu");
    su.execute(
        "SELECT tenancy.create_tenant($1, region => 'eu', settings => '{\"default_roles\": [\"member\"]}')",
        &[&eu],
    )
    .unwrap();
    su.batch_execute("ALTER SYSTEM SET tenancy.region = 'eu'")
        .unwrap();
    su.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut c = connect_preloaded(APP);
    c.execute("SELECT tenancy.bind($1, 'session')", &[&f.token(&eu, "u")])
        .unwrap();
    c.query_one("SELECT count(*) FROM it_customers", &[])
        .unwrap();
    su.batch_execute("ALTER SYSTEM SET tenancy.region = 'us'")
        .unwrap();
    su.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let e = c
        .query_one("SELECT count(*) FROM it_customers", &[])
        .unwrap_err();
    su.batch_execute("ALTER SYSTEM RESET tenancy.region")
        .unwrap();
    su.batch_execute("SELECT pg_reload_conf()").unwrap();
    assert_eq!(sqlstate(&e), "42501");
    assert!(message(&e).contains("region"), "{}", message(&e));
}

#[test]
fn support_is_capped_on_its_expiry_and_granted_to_one_login_role() {
    let f = Fixture::new();
    let mut su = superuser();
    f.seat_admin(&f.a, "boss");
    let mut admin = f.session_as(&f.a, "boss");
    for (sql, code) in [
        (
            format!("SELECT tenancy.grant_support('{OPERATOR}', '1200 months -35970 days')"),
            "22023",
        ),
        (
            "SELECT tenancy.grant_support('tenancy_operator', '1 hour')".to_string(),
            "22023",
        ),
        (
            format!("SELECT tenancy.grant_support('{OPERATOR}', '-1 hour')"),
            "22023",
        ),
    ] {
        admin.batch_execute("SAVEPOINT s").unwrap();
        expect_err(&mut admin, &sql, &[code]);
        admin.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    }
    admin
        .execute(
            &format!("SELECT tenancy.grant_support('{OPERATOR}', '2 seconds')"),
            &[],
        )
        .unwrap();
    admin.batch_execute("COMMIT").unwrap();
    serialized_grant(
        &mut su,
        &format!("GRANT SELECT ON it_customers TO {OPERATOR}"),
    );
    // tenancy.clock_skew widens a token's exp, never a support grant's expiry.
    su.batch_execute(&format!(
        "ALTER ROLE {OPERATOR} SET tenancy.clock_skew = 600"
    ))
    .unwrap();
    let mut op = connect(OPERATOR);
    su.batch_execute(&format!("ALTER ROLE {OPERATOR} RESET tenancy.clock_skew"))
        .unwrap();
    op.execute("SELECT tenancy.enter_support($1)", &[&f.a])
        .unwrap();
    op.query_one("SELECT count(*) FROM it_customers", &[])
        .unwrap();
    // Its rows stay in the transaction that read them.
    op.batch_execute("BEGIN").unwrap();
    expect_err(
        &mut op,
        "DECLARE c CURSOR WITH HOLD FOR SELECT * FROM it_customers",
        &["0A000"],
    );
    op.batch_execute("ROLLBACK").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    expect_err(
        &mut op,
        "SELECT count(*) FROM it_customers",
        &["28000", "42501"],
    );
}

#[test]
fn a_cursor_opened_before_a_suspension_fetches_nothing_after_it() {
    let (f, mut c) = two_tenants();
    c.batch_execute("BEGIN").unwrap();
    bind(&mut c, &f.token(&f.a, "x"));
    c.batch_execute("DECLARE cur CURSOR FOR SELECT name FROM it_customers; FETCH 1 FROM cur")
        .unwrap();
    connect(OPERATOR)
        .execute("SELECT tenancy.suspend_tenant($1)", &[&f.a])
        .unwrap();
    expect_err(&mut c, "FETCH 1 FROM cur", &["42501"]);
    let _ = c.batch_execute("ROLLBACK");
    connect(OPERATOR)
        .execute("SELECT tenancy.resume_tenant($1)", &[&f.a])
        .unwrap();
}

/// A PL/pgSQL cursor whose query has a data-modifying WITH (its whole result computed and
/// stored at its first FETCH), opened in a transaction bound to A.
const OPEN_STORED: &str = "DO $$ DECLARE k refcursor := 'stored_cur'; r record; BEGIN \
       OPEN k FOR WITH w AS (UPDATE it_customers SET name = name WHERE false RETURNING 1) \
                  SELECT name FROM it_customers ORDER BY id; \
       FETCH k INTO r; END $$";

/// A later statement reading the rest of that cursor with PL/pgSQL's FETCH only (no query
/// starts: simple expressions), returning what it read, or the refusal.
fn fetch_the_stored_rest(c: &mut postgres::Client) -> String {
    let e = c
        .batch_execute(
            "DO $$ DECLARE k refcursor := 'stored_cur'; r record; s text := ''; BEGIN \
               LOOP FETCH k INTO r; EXIT WHEN NOT FOUND; s := s || ' ' || r.name; END LOOP; \
               RAISE EXCEPTION 'read:%', s; END $$",
        )
        .expect_err("the DO block always raises");
    format!("{} {}", sqlstate(&e), message(&e))
}

#[test]
fn a_cursors_stored_rows_are_not_read_after_a_suspension_or_once_unbound() {
    // Found by an attacker's pass: a cursor whose rows PostgreSQL stores at its first read
    // (a data-modifying WITH, RETURNING) is read by PL/pgSQL's FETCH with no query started, so
    // neither the later-run check nor a statement's start saw it: the tenant's rows were read
    // after its suspension committed, and after unbind() (allowed: the cursor was no SQL
    // DECLARE) and a revoke_subject, with nothing bound.
    let (f, mut c) = two_tenants();
    let mut su = superuser();
    begin_bound(&mut c, &f, &f.a);
    c.batch_execute(OPEN_STORED).unwrap();
    su.execute("SELECT tenancy.suspend_tenant($1)", &[&f.a])
        .unwrap();
    let got = fetch_the_stored_rest(&mut c);
    let _ = c.batch_execute("ROLLBACK");
    su.execute("SELECT tenancy.resume_tenant($1)", &[&f.a])
        .unwrap();
    assert!(got.starts_with("42501"), "after the suspension: {got}");
    assert!(!got.contains("-secret"), "{got}");

    // unbind() is refused while the cursor is open; a SELECT calling a function that fetches
    // is checked too.
    begin_bound(&mut c, &f, &f.a);
    c.batch_execute(OPEN_STORED).unwrap();
    let e = c
        .batch_execute("SELECT tenancy.unbind()")
        .expect_err("unbind() with a cursor open that was opened under the binding");
    assert_eq!(sqlstate(&e), "55006", "{}", message(&e));
    assert!(message(&e).contains("stored_cur"), "{}", message(&e));
    c.batch_execute("ROLLBACK").unwrap();
    begin_bound(&mut c, &f, &f.a);
    c.batch_execute(OPEN_STORED).unwrap();
    su.execute("SELECT tenancy.revoke_subject($1, 'attacker')", &[&f.a])
        .unwrap();
    let e = c
        .batch_execute("SELECT count(*) FROM pg_catalog.pg_cursors")
        .expect_err("a statement after the revocation, with the cursor open");
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    let _ = c.batch_execute("ROLLBACK");

    // Nor by a function the planner folds (IMMUTABLE), nor by one a utility statement runs
    // without the executor (a column's default, evaluated for every row an ALTER TABLE
    // rewrites): a reviewer's pass read the stored rows so.
    let fetcher = |volatility: &str| {
        format!(
            "CREATE OR REPLACE FUNCTION public.fetch_stored_{volatility}() RETURNS text LANGUAGE plpgsql {volatility} AS $f$ \
             DECLARE k refcursor := 'stored_cur'; r record; s text := ''; BEGIN \
               LOOP FETCH k INTO r; EXIT WHEN NOT FOUND; s := s || ' ' || r.name; END LOOP; \
               RAISE EXCEPTION 'read:%', s; END $f$"
        )
    };
    su.batch_execute(&format!(
        "{}; {}; GRANT EXECUTE ON FUNCTION public.fetch_stored_immutable(), public.fetch_stored_volatile() TO PUBLIC",
        fetcher("immutable"),
        fetcher("volatile")
    ))
    .unwrap();
    for statement in [
        "SELECT public.fetch_stored_immutable()",
        "ALTER TABLE pg_temp.stored_tmp ADD COLUMN c text DEFAULT public.fetch_stored_volatile()",
    ] {
        begin_bound(&mut c, &f, &f.b);
        c.batch_execute("CREATE TEMP TABLE stored_tmp (a int) ON COMMIT DROP; INSERT INTO stored_tmp VALUES (1)")
            .unwrap();
        c.batch_execute(OPEN_STORED).unwrap();
        su.execute("SELECT tenancy.suspend_tenant($1)", &[&f.b])
            .unwrap();
        let e = c
            .batch_execute(statement)
            .expect_err("a statement after the suspension");
        let _ = c.batch_execute("ROLLBACK");
        su.execute("SELECT tenancy.resume_tenant($1)", &[&f.b])
            .unwrap();
        assert_eq!(sqlstate(&e), "42501", "{statement}: {}", message(&e));
        assert!(!message(&e).contains("-secret"), "{}", message(&e));
    }

    // Control: closed, it asks nothing more of the next statements.
    let mut c = f.session_as(&f.b, "u");
    c.batch_execute(OPEN_STORED).unwrap();
    c.batch_execute("CLOSE stored_cur; SELECT tenancy.unbind(); COMMIT")
        .unwrap();
}

#[test]
fn a_cursor_read_from_plpgsql_the_protocol_or_held_fetches_nothing_after_a_suspension() {
    // Found by an attacker's pass: only SQL's FETCH checked the binding again. PL/pgSQL's
    // FETCH and the protocol's Execute of a portal read on with the plan made before the
    // suspension; a WITH HOLD cursor's stored rows were read once the binding had been ended.
    let (f, mut c) = two_tenants();
    let suspended = |yes: bool| {
        let call = if yes {
            "suspend_tenant"
        } else {
            "resume_tenant"
        };
        connect(OPERATOR)
            .execute(&format!("SELECT tenancy.{call}($1)"), &[&f.a])
            .unwrap();
    };
    c.batch_execute(
        "CREATE FUNCTION pg_temp.fetch1(c refcursor) RETURNS text LANGUAGE plpgsql AS
         $$ DECLARE r text; BEGIN FETCH c INTO r; RETURN r; END $$",
    )
    .unwrap();
    // PL/pgSQL.
    c.batch_execute("BEGIN").unwrap();
    bind(&mut c, &f.token(&f.a, "x"));
    c.batch_execute("DECLARE cur CURSOR FOR SELECT name FROM it_customers; FETCH 1 FROM cur")
        .unwrap();
    c.query_one("SELECT pg_temp.fetch1('cur')", &[]).unwrap();
    suspended(true);
    expect_err(&mut c, "SELECT pg_temp.fetch1('cur')", &["42501"]);
    let _ = c.batch_execute("ROLLBACK");
    suspended(false);
    // The protocol: a portal executed a row at a time.
    {
        let mut tx = c.transaction().unwrap();
        tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "x")])
            .unwrap();
        let stmt = tx.prepare("SELECT name FROM it_customers").unwrap();
        let portal = tx.bind(&stmt, &[]).unwrap();
        assert_eq!(tx.query_portal(&portal, 1).unwrap().len(), 1);
        suspended(true);
        let e = tx.query_portal(&portal, 1).unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{e}");
    }
    suspended(false);
    // A WITH HOLD cursor of a session binding would be read once the binding has ended, by
    // PL/pgSQL or the protocol's Execute, which read its stored rows unseen: refused
    // (held_cursors_never_outlive_a_binding).
    c.execute("SELECT tenancy.bind($1, 'session')", &[&f.token(&f.a, "x")])
        .unwrap();
    expect_err(
        &mut c,
        "BEGIN; DECLARE held CURSOR WITH HOLD FOR SELECT name FROM it_customers; COMMIT",
        &["0A000"],
    );
    c.batch_execute("ROLLBACK").unwrap();
    c.batch_execute("DISCARD ALL").unwrap();
    c.batch_execute(
        "CREATE FUNCTION pg_temp.loop_count() RETURNS bigint LANGUAGE plpgsql AS
         $$ DECLARE n bigint := 0; r record;
            BEGIN FOR r IN SELECT g FROM generate_series(1, 100) g LOOP n := n + 1; END LOOP; RETURN n; END $$",
    )
    .unwrap();
    // A plan started after the binding ended reads on in batches (a PL/pgSQL loop): it read
    // no tenant's rows, and is not refused.
    c.batch_execute("BEGIN").unwrap();
    bind(&mut c, &f.token(&f.a, "x"));
    c.query("SELECT name FROM it_customers", &[]).unwrap();
    c.batch_execute("SELECT tenancy.unbind()").unwrap();
    let n: i64 = c
        .query_one("SELECT pg_temp.loop_count()", &[])
        .map(|r| r.get(0))
        .unwrap_or_else(|e| panic!("{}", message(&e)));
    assert_eq!(n, 100);
    c.batch_execute("COMMIT").unwrap();
}

#[test]
fn weak_keys_are_refused_in_every_form() {
    let mut ka = connect(KEY_ADMIN);
    for (alg, key) in [
        ("HS256", r#"{"kty": "oct", "k": ""}"#.to_string()),
        ("HS256", r#"{"kty": "oct", "k": "c2hvcnQ"}"#.to_string()),
        ("HS256", "base64:c2hvcnQ=".to_string()),
        ("HS256", "short-secret".to_string()),
        (
            "RS256",
            "-----BEGIN PUBLIC KEY-----\n\
             MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAKbgMan/80CescgV/Nld55mCyaMONPBj\n\
             01QV7/052bhoKECPHSzET0ZUmfpXUjdx3W8ummVaouubsKon3wH/OskCAwEAAQ==\n\
             -----END PUBLIC KEY-----"
                .to_string(),
        ),
    ] {
        let kid = unique("weak");
        let msg = expect_err(
            &mut ka,
            &format!("SELECT tenancy.add_key('{kid}', '{alg}', $k${key}$k$)"),
            &["22023"],
        );
        let why = if alg == "RS256" {
            "at least 2048 bits"
        } else {
            "at least 32 bytes"
        };
        assert!(msg.contains(why), "{alg}: {msg}");
    }
}

#[test]
fn slugs_that_read_as_uuids_are_refused() {
    let mut op = connect(OPERATOR);
    for slug in [
        "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        "abcdefabcdefabcdefabcdefabcdefab",
    ] {
        expect_err(
            &mut op,
            &format!("SELECT tenancy.create_tenant('{slug}')"),
            &["22023"],
        );
    }
}

#[test]
fn a_fractional_nbf_is_not_usable_early() {
    let f = Fixture::new();
    let soon = now() as f64 + 1.9;
    let token = f.token_with(serde_json::json!({
        "tid": f.a, "sub": "u", "exp": now() + 600, "nbf": soon
    }));
    let mut c = app();
    // Within the current second plus one, the token is not valid yet (its nbf rounds up).
    let e = c.execute("SELECT tenancy.bind($1)", &[&token]).unwrap_err();
    assert_eq!(sqlstate(&e), "28000", "{}", message(&e));
}

// Audit integrity -----------------------------------------------------------------------------

/// The tenant's records of `action` (ADMIN records' `action`), as their new_row text.
fn admin_records(su: &mut postgres::Client, tenant_id: &str, action: &str) -> Vec<String> {
    su.query(
        "SELECT new_row::text FROM tenancy.audit_log WHERE tenant_id = $1::text::uuid AND new_row->>'action' = $2 ORDER BY id",
        &[&tenant_id, &action],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn trail_ok(su: &mut postgres::Client, tenant: &str) -> bool {
    su.query_one("SELECT ok FROM tenancy.audit_verify($1)", &[&tenant])
        .unwrap()
        .get(0)
}

fn write_orders(f: &Fixture, tenant: &str, n: i32) {
    let mut c = app();
    bound_tx(&mut c, f, tenant, true, |c| {
        c.execute(
            "INSERT INTO it_orders (amount) SELECT g FROM generate_series(1, $1) g",
            &[&n],
        )
        .unwrap();
    });
}

#[test]
fn an_operator_cannot_erase_a_tenants_trail() {
    let f = Fixture::new();
    let mut su = superuser();
    write_orders(&f, &f.a, 3);
    let mut op = connect(OPERATOR);
    for before in [
        "'infinity'",
        "now()",
        "now() + interval '100 years'",
        "now() - interval '1 day'",
    ] {
        let e = op
            .batch_execute(&format!("SELECT tenancy.audit_purge('{}', {before})", f.a))
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{before}: {}", message(&e));
        assert!(e.as_db_error().and_then(|d| d.hint()).is_some());
    }
    let anchor: String = op
        .query_one(
            "SELECT jsonb_agg(h)::text FROM tenancy.audit_heads($1) h",
            &[&f.a],
        )
        .unwrap()
        .get(0);
    // A superuser lowers the floor for its own session: the purge records where it cut, in
    // the tenant's own chain.
    su.batch_execute("BEGIN; SET LOCAL tenancy.audit_min_retention = 0")
        .unwrap();
    let purged: i64 = su
        .query_one("SELECT tenancy.audit_purge($1, clock_timestamp())", &[&f.a])
        .unwrap()
        .get(0);
    su.batch_execute("COMMIT").unwrap();
    assert!(purged >= 4, "{purged}");
    let cut = admin_records(&mut su, &f.a_id, "audit_purge");
    assert_eq!(cut.len(), 1);
    let cut: serde_json::Value = serde_json::from_str(&cut[0]).unwrap();
    assert!(!cut["cut"].as_array().unwrap().is_empty(), "{cut}");
    assert!(trail_ok(&mut su, &f.a));
    // Under the floor an operator runs with, the anchored heads are young and gone: deleted.
    let bad: i64 = op
        .query_one(
            "SELECT count(*) FROM tenancy.audit_verify_heads($1::text::jsonb) WHERE NOT ok AND detail LIKE '%deleted, not purged%'",
            &[&anchor],
        )
        .unwrap()
        .get(0);
    assert!(bad > 0);
    // A deletion certificate is never purged.
    op.query_one("SELECT tenancy.decommission_tenant($1, $1)", &[&f.b])
        .unwrap();
    su.batch_execute("BEGIN; SET LOCAL tenancy.audit_min_retention = 0")
        .unwrap();
    su.query_one("SELECT tenancy.audit_purge($1, clock_timestamp())", &[&f.b])
        .unwrap();
    su.batch_execute("COMMIT").unwrap();
    assert_eq!(
        admin_records(&mut su, &f.b_id, "decommission_tenant").len(),
        1
    );
    assert!(trail_ok(&mut su, &f.b));
}

#[test]
fn what_a_trail_leaves_out_is_its_tenant_admins_decision() {
    let f = Fixture::new();
    let mut su = superuser();
    f.seat_admin(&f.a, "boss");
    // Not the operator's, nor a member's.
    let mut op = connect(OPERATOR);
    expect_err(
        &mut op,
        "SELECT tenancy.audit_exclude('public.it_orders', ARRAY['amount'])",
        &["42501"],
    );
    let mut member = f.session_as(&f.a, "worker");
    expect_err(
        &mut member,
        "SELECT tenancy.audit_exclude('public.it_orders', ARRAY['amount'])",
        &["42501"],
    );
    member.batch_execute("ROLLBACK").unwrap();
    let mut admin = f.session_as(&f.a, "boss");
    for key in ["tenant_id", "id"] {
        admin.batch_execute("SAVEPOINT s").unwrap();
        let e = admin
            .batch_execute(&format!(
                "SELECT tenancy.audit_exclude('public.it_orders', ARRAY['{key}'])"
            ))
            .unwrap_err();
        assert_eq!(sqlstate(&e), "22023", "{key}: {}", message(&e));
        admin.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    }
    admin
        .batch_execute("SELECT tenancy.audit_exclude('public.it_orders', ARRAY['amount']); COMMIT")
        .unwrap();
    // Recorded in the tenant's own chain; it applies to the tenant's records only.
    assert_eq!(admin_records(&mut su, &f.a_id, "audit_exclude").len(), 1);
    write_orders(&f, &f.a, 1);
    write_orders(&f, &f.b, 1);
    let rows: Vec<(String, bool)> = su
        .query(
            "SELECT tenant_id::text, new_row ? 'amount' FROM tenancy.audit_log \
              WHERE table_name = 'public.it_orders' AND tenant_id IN ($1::text::uuid, $2::text::uuid) AND op = 'INSERT'",
            &[&f.a_id, &f.b_id],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(rows.contains(&(f.a_id.clone(), false)), "{rows:?}");
    assert!(rows.contains(&(f.b_id.clone(), true)), "{rows:?}");
    assert!(trail_ok(&mut su, &f.a));
}

#[test]
fn writes_the_trail_never_saw_are_recorded_in_each_tenants_chain_or_refused() {
    let f = Fixture::new();
    let mut su = superuser();
    let s = ident("wr");
    let own = login_role(&mut su, "own", "");
    su.batch_execute(&format!(
        "CREATE SCHEMA {s} AUTHORIZATION {own}; GRANT USAGE ON SCHEMA {s} TO {APP}, {OPERATOR}; \
         SET ROLE {own}; \
         CREATE TABLE {s}.p (tenant_id uuid NOT NULL, id int NOT NULL, note text) PARTITION BY RANGE (id); \
         CREATE TABLE {s}.p1 PARTITION OF {s}.p FOR VALUES FROM (0) TO (100); \
         CREATE TABLE {s}.t (tenant_id uuid NOT NULL, id int NOT NULL, note text); \
         CREATE TYPE {s}.rowt AS (tenant_id uuid, id int); CREATE TABLE {s}.typed OF {s}.rowt; \
         RESET ROLE; \
         SELECT tenancy.protect('{s}.p'); SELECT tenancy.protect('{s}.t'); SELECT tenancy.protect('{s}.typed'); \
         GRANT SELECT, INSERT ON {s}.p, {s}.t, {s}.typed TO {APP}; GRANT TRUNCATE ON {s}.t TO {OPERATOR}"
    ))
    .unwrap();
    let mut c = app();
    for t in [&f.a, &f.b] {
        bound_tx(&mut c, &f, t, true, |c| {
            c.batch_execute(&format!(
                "INSERT INTO {s}.p VALUES (tenancy.current_tenant(), 1, 'n'); \
                 INSERT INTO {s}.t VALUES (tenancy.current_tenant(), 1, 'n'), (tenancy.current_tenant(), 2, NULL); \
                 INSERT INTO {s}.typed VALUES (tenancy.current_tenant(), 1)"
            ))
            .unwrap();
        });
    }
    // A table holding a row planted for B cannot be attached, by its owner or a superuser...
    let mut o = connect(&own);
    o.batch_execute(&format!(
        "CREATE TABLE {s}.planted (tenant_id uuid NOT NULL, id int NOT NULL, note text); \
         INSERT INTO {s}.planted VALUES ('{b}', 150, 'planted')",
        b = f.b_id
    ))
    .unwrap();
    let attach =
        format!("ALTER TABLE {s}.p ATTACH PARTITION {s}.planted FOR VALUES FROM (100) TO (200)");
    for who in [&mut o, &mut su] {
        let e = who.batch_execute(&attach).unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
        assert!(e.as_db_error().and_then(|d| d.hint()).is_some());
    }
    // ... but an operator attaches it through pg_tenancy, which records the row in B's chain.
    let mut op = connect(OPERATOR);
    expect_err(
        &mut op,
        &format!("SELECT tenancy.attach_partition('{s}.p', '{s}.planted', 'FOR VALUES FROM (100) TO (200); DROP TABLE {s}.t')"),
        &["22023", "42601"],
    );
    let n: i64 = op
        .query_one(
            &format!("SELECT tenancy.attach_partition('{s}.p', '{s}.planted', 'FOR VALUES FROM (100) TO (200)')"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let inserted: i64 = su
        .query_one(
            "SELECT count(*) FROM tenancy.audit_log WHERE tenant_id = $1::text::uuid AND op = 'INSERT' AND table_name = $2",
            &[&f.b_id, &format!("{s}.planted")],
        )
        .unwrap()
        .get(0);
    assert_eq!(inserted, 1);
    // DROP COLUMN, DETACH + DROP TABLE, DROP TABLE and an operator's TRUNCATE: each tenant's
    // chain records what it lost.
    o.batch_execute(&format!(
        "ALTER TABLE {s}.t DROP COLUMN note; ALTER TABLE {s}.p DETACH PARTITION {s}.p1; DROP TABLE {s}.p1"
    ))
    .unwrap();
    op.batch_execute(&format!("TRUNCATE {s}.t")).unwrap();
    for (tenant, id) in [(&f.a, &f.a_id), (&f.b, &f.b_id)] {
        let dropped_column = admin_records(&mut su, id, "drop_column");
        assert_eq!(dropped_column.len(), 1, "{tenant}: {dropped_column:?}");
        assert!(
            dropped_column[0].contains("\"rows\": 1"),
            "{dropped_column:?}"
        );
        assert_eq!(
            admin_records(&mut su, id, "drop_table").len(),
            1,
            "{tenant}"
        );
        let truncated: i64 = su
            .query_one(
                "SELECT count(*) FROM tenancy.audit_log WHERE tenant_id = $1::text::uuid AND op = 'TRUNCATE' AND new_row->>'rows' = '2'",
                &[id],
            )
            .unwrap()
            .get(0);
        assert_eq!(truncated, 1, "{tenant}");
    }
    // A cascade that would drop a protected table unrecorded is refused.
    let e = o
        .batch_execute(&format!("DROP TYPE {s}.rowt CASCADE"))
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    o.batch_execute(&format!("DROP TABLE {s}.typed")).unwrap();
    for t in [&f.a, &f.b] {
        assert!(trail_ok(&mut su, t), "{t}");
    }
}

// Lifecycle ------------------------------------------------------------------------------------

/// decommission_tenant deletes the tenant's rows as each table's owner, so the owner's
/// triggers run in the operator's session. PostgreSQL looks a name up in the session's
/// temporary schema first unless the search_path names `pg_temp`, a function's own `SET
/// search_path` too: an operator's temporary table named as the owner's history table received
/// the tenant's rows from the owner's ordinary history trigger (an attacker's pass; with a
/// view and an INSTEAD OF trigger of its own it ran code as the owner: a trigger planted for
/// every tenant's writes, or SUPERUSER where the owner was one). Refused while the session has
/// temporary objects; without them the decommission runs, and the owner's trigger writes its
/// own table.
#[test]
fn an_operators_temporary_objects_are_not_reached_by_an_owners_code_it_runs() {
    let f = Fixture::new();
    let mut su = superuser();
    let s = ident("tmpown");
    let owner = ident("tmpowner");
    su.batch_execute(&format!(
        "CREATE ROLE {owner} NOLOGIN NOSUPERUSER NOBYPASSRLS; \
         CREATE SCHEMA {s} AUTHORIZATION {owner}; GRANT USAGE ON SCHEMA {s} TO {APP}; \
         SET ROLE {owner}; \
         CREATE TABLE {s}.docs (tenant_id uuid NOT NULL, id int NOT NULL, body text NOT NULL, PRIMARY KEY (tenant_id, id)); \
         CREATE TABLE {s}.history (body text); \
         CREATE FUNCTION {s}.keep_history() RETURNS trigger LANGUAGE plpgsql SET search_path = {s} AS \
           $$ BEGIN INSERT INTO history VALUES (OLD.body); RETURN OLD; END $$; \
         CREATE TRIGGER keep_history AFTER DELETE ON {s}.docs FOR EACH ROW EXECUTE FUNCTION {s}.keep_history(); \
         RESET ROLE; SELECT tenancy.protect('{s}.docs'); \
         INSERT INTO {s}.docs VALUES ('{a}', 1, '{an}-secret-1'), ('{a}', 2, '{an}-secret-2')",
        a = f.a_id,
        an = f.a
    ))
    .unwrap();
    let mut op = connect(OPERATOR);
    assert_not_privileged(&mut op);
    op.batch_execute("CREATE TEMP TABLE history (body text); GRANT INSERT ON history TO PUBLIC")
        .unwrap();
    let e = op
        .query_one("SELECT tenancy.decommission_tenant($1, $1)", &[&f.a])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "{}", message(&e));
    assert!(e.as_db_error().and_then(|d| d.hint()).is_some());
    let got: i64 = op
        .query_one("SELECT count(*) FROM pg_temp.history", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        got, 0,
        "the owner's trigger wrote the tenant's rows into the operator's table"
    );
    op.batch_execute("DISCARD TEMP").unwrap();
    op.query_one("SELECT tenancy.decommission_tenant($1, $1)", &[&f.a])
        .unwrap();
    let kept: i64 = su
        .query_one(&format!("SELECT count(*) FROM {s}.history"), &[])
        .unwrap()
        .get(0);
    assert_eq!(kept, 2, "the owner's trigger wrote its own table");
}

/// pg_tenancy runs some DDL as the catalog owner (a superuser): the tenant column's index and
/// its triggers when it protects a table, a new partition of a protected table included. A
/// DBA's event trigger fires on that DDL as the catalog owner, and a name it looks up reaches
/// the session's temporary schema first: a table owner's temporary table named as the DBA's
/// log table, with a trigger of its own, ran as the superuser when the owner created a
/// partition, and made the owner a superuser (a reviewer's pass). Refused while the session
/// has temporary objects; without them the partition is protected and the DBA's trigger
/// writes its own table.
#[test]
fn a_dbas_event_trigger_does_not_reach_the_callers_temporary_objects() {
    let mut su = superuser();
    let dba = ident("dbalog");
    let s = ident("evown");
    let owner = ident("evowner");
    let guc = format!("it.{dba}");
    su.batch_execute(&format!(
        "CREATE SCHEMA {dba}; CREATE TABLE {dba}.ddl_log (who name, tag text); \
         CREATE FUNCTION {dba}.log_ddl() RETURNS event_trigger LANGUAGE plpgsql SET search_path = {dba} AS \
           $$ BEGIN IF current_setting('{guc}', true) = 'on' THEN \
                INSERT INTO ddl_log (who, tag) VALUES (current_user, tg_tag); END IF; END $$; \
         CREATE EVENT TRIGGER {dba} ON ddl_command_end EXECUTE FUNCTION {dba}.log_ddl(); \
         GRANT USAGE ON SCHEMA {dba} TO PUBLIC; GRANT INSERT ON {dba}.ddl_log TO PUBLIC; \
         CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS; CREATE SCHEMA {s} AUTHORIZATION {owner}; \
         SET ROLE {owner}; \
         CREATE TABLE {s}.ev (tenant_id uuid NOT NULL, id int NOT NULL) PARTITION BY LIST (id); \
         CREATE FUNCTION {s}.seen() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN NEW.who := current_user; RETURN NEW; END $$; \
         RESET ROLE; SELECT tenancy.protect('{s}.ev')"
    ))
    .unwrap();
    // The event trigger fires in every test's sessions: dropped whatever happens here.
    struct DropTrigger(String);
    impl Drop for DropTrigger {
        fn drop(&mut self) {
            // The DBA's SECURITY DEFINER function too: verify() warns of it in every test.
            let _ = superuser().batch_execute(&format!(
                "DROP EVENT TRIGGER IF EXISTS {0}; DROP FUNCTION IF EXISTS {0}.protect_for_me(regclass)",
                self.0
            ));
        }
    }
    let _drop = DropTrigger(dba.clone());
    let mut o = connect(&owner);
    assert_not_privileged(&mut o);
    o.batch_execute(&format!(
        "SET {guc} = 'on'; CREATE TEMP TABLE ddl_log (who name, tag text); \
         CREATE TRIGGER seen BEFORE INSERT ON ddl_log FOR EACH ROW EXECUTE FUNCTION {s}.seen()"
    ))
    .unwrap();
    let e = o
        .batch_execute(&format!(
            "CREATE TABLE {s}.ev1 PARTITION OF {s}.ev FOR VALUES IN (1)"
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "{}", message(&e));
    // The owner's own DDL above logged into its temporary table as the owner (harmless); no
    // row was written there as anyone else.
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
    // Nor through a DBA's SECURITY DEFINER function that protects a table for its caller: the
    // caller's temporary objects are there all the same, with a superuser current user.
    su.batch_execute(&format!(
        "CREATE FUNCTION {dba}.protect_for_me(t regclass) RETURNS void LANGUAGE sql SECURITY DEFINER            SET search_path = pg_catalog, pg_temp AS $$ SELECT tenancy.protect(t) $$;          GRANT EXECUTE ON FUNCTION {dba}.protect_for_me(regclass) TO {owner}"
    ))
    .unwrap();
    o.batch_execute(&format!(
        "CREATE TABLE {s}.plain (tenant_id uuid NOT NULL, id int NOT NULL)"
    ))
    .unwrap();
    let e = o
        .batch_execute(&format!("SELECT {dba}.protect_for_me('{s}.plain')"))
        .unwrap_err();
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
        "the DBA's trigger wrote into the caller's temporary table as a superuser"
    );
    o.batch_execute(&format!(
        "DISCARD TEMP; CREATE TABLE {s}.ev1 PARTITION OF {s}.ev FOR VALUES IN (1);          SELECT {dba}.protect_for_me('{s}.plain')"
    ))
    .unwrap();
    let protected: bool = su
        .query_one(
            &format!("SELECT EXISTS (SELECT FROM tenancy.protected_table WHERE relid = '{s}.ev1'::regclass)"),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(protected);
    let logged: i64 = su
        .query_one(
            &format!("SELECT count(*) FROM {dba}.ddl_log WHERE who <> '{owner}'"),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        logged > 0,
        "the DBA's trigger ran as the catalog owner into its own table"
    );
}

#[test]
fn decommission_refuses_a_prepared_transaction_and_ends_open_writers() {
    let f = Fixture::new();
    let mut su = superuser();
    write_orders(&f, &f.a, 2);
    // A prepared transaction of the tenant holds a row the delete cannot see.
    let mut p = f.session_as(&f.a, "u");
    let gid = unique("gid");
    p.batch_execute(&format!(
        "INSERT INTO it_orders (amount) VALUES (7); PREPARE TRANSACTION '{gid}'"
    ))
    .unwrap();
    let mut op = connect(OPERATOR);
    let e = op
        .query_one("SELECT tenancy.decommission_tenant($1, $1)", &[&f.a])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "{}", message(&e));
    assert!(e.as_db_error().and_then(|d| d.hint()).is_some());
    su.batch_execute(&format!("ROLLBACK PREPARED '{gid}'"))
        .unwrap();
    // A transaction that wrote and stays open: decommission waits, then ends its session.
    let mut w = f.session_as(&f.a, "u");
    w.batch_execute("INSERT INTO it_orders (amount) VALUES (8)")
        .unwrap();
    op.batch_execute("SET tenancy.decommission_wait = 300")
        .unwrap();
    let cert: String = op
        .query_one("SELECT tenancy.decommission_tenant($1, $1)::text", &[&f.a])
        .unwrap()
        .get(0);
    let cert: serde_json::Value = serde_json::from_str(&cert).unwrap();
    assert!(
        w.batch_execute("COMMIT").is_err(),
        "the open writer was not ended"
    );
    assert_eq!(cert["rows_deleted"]["public.it_orders"], 2, "{cert}");
    let left: i64 = su
        .query_one(
            "SELECT count(*) FROM it_orders WHERE tenant_id = $1::text::uuid",
            &[&f.a_id],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    // Rows for the decommissioned tenant are refused, even from a role row security does not
    // confine.
    expect_err(
        &mut su,
        &format!(
            "INSERT INTO it_orders (tenant_id, amount) VALUES ('{}', 1)",
            f.a_id
        ),
        &["42501"],
    );
    // The certificate is signed with the platform's key: an edited one does not verify.
    let verify = |c: &mut postgres::Client, v: &serde_json::Value| -> bool {
        c.query_one(
            "SELECT tenancy.verify_certificate($1::text::jsonb)",
            &[&v.to_string()],
        )
        .unwrap()
        .get(0)
    };
    let mut anyone = app();
    assert!(verify(&mut anyone, &cert));
    let mut forged = cert.clone();
    forged["total_rows_deleted"] = 5000.into();
    assert!(!verify(&mut anyone, &forged));
    let keys: i64 = anyone
        .query_one("SELECT count(*) FROM tenancy.certificate_keys", &[])
        .unwrap()
        .get(0);
    assert!(keys >= 1);
    expect_err(
        &mut anyone,
        "SELECT * FROM tenancy.certificate_key",
        &["42501"],
    );
}

// Limits ---------------------------------------------------------------------------------------

#[test]
fn the_statement_timeout_ceiling_holds_while_a_statement_is_planned() {
    // Found by an attacker's pass: the limits were applied when a statement started, after
    // the planner had run the IMMUTABLE calls it folds; a session that set statement_timeout
    // to 0 (or a session-scoped binding's later statements) folded seconds of work unbounded.
    let f = Fixture::new();
    let mut op = connect(OPERATOR);
    op.execute(
        "SELECT tenancy.set_limit($1, 'statement_timeout', '\"300ms\"')",
        &[&f.a],
    )
    .unwrap();
    let mut c = app();
    c.batch_execute(
        "CREATE FUNCTION pg_temp.spin(s float8) RETURNS int IMMUTABLE LANGUAGE plpgsql AS
         $$ DECLARE t timestamptz := clock_timestamp();
            BEGIN WHILE clock_timestamp() < t + make_interval(secs => s) LOOP END LOOP; RETURN 1; END $$",
    )
    .unwrap();
    c.batch_execute("BEGIN").unwrap();
    bind(&mut c, &f.token(&f.a, "x"));
    c.batch_execute("SET statement_timeout = 0").unwrap();
    // Cancelled by the timeout (57014), where it would otherwise return after 5 s.
    expect_err(&mut c, "SELECT 1 WHERE pg_temp.spin(5) > 0", &["57014"]);
    let _ = c.batch_execute("ROLLBACK");
    // A session-scoped binding's later statements too.
    c.execute("SELECT tenancy.bind($1, 'session')", &[&f.token(&f.a, "x")])
        .unwrap();
    // Cancelled by the timeout (57014), where it would otherwise return after 5 s.
    expect_err(&mut c, "SELECT 1 WHERE pg_temp.spin(5) > 0", &["57014"]);
    c.batch_execute("SELECT tenancy.unbind()").unwrap();
    // A statement that lifts its own timeout between its queries does not push the deadline
    // back at each of them (4 s of 0.1 s sleeps under the 300 ms ceiling).
    c.batch_execute("BEGIN").unwrap();
    bind(&mut c, &f.token(&f.a, "x"));
    expect_err(
        &mut c,
        "DO $$ BEGIN FOR i IN 1..40 LOOP
             PERFORM set_config('statement_timeout', '0', true); PERFORM pg_sleep(0.1);
           END LOOP; END $$",
        &["57014"],
    );
    let _ = c.batch_execute("ROLLBACK");
    op.execute(
        "SELECT tenancy.set_limit($1, 'statement_timeout', NULL)",
        &[&f.a],
    )
    .unwrap();
}

#[test]
fn a_tables_owner_cannot_move_a_tenants_audit_exclusion_by_renaming_columns() {
    // Found by an attacker's pass: exclusions name columns, so renaming the excluded column
    // away and another one onto its name left the second out of the trail, unseen.
    let f = Fixture::new();
    let mut su = superuser();
    let own = login_role(&mut su, "own_ren", "");
    let t = ident("ren");
    su.batch_execute(&format!(
        "CREATE TABLE public.{t} (tenant_id uuid NOT NULL, id int NOT NULL, note text, secret int, other int, PRIMARY KEY (tenant_id, id));
         ALTER TABLE public.{t} OWNER TO {own};
         SELECT tenancy.protect('public.{t}');
         GRANT SELECT, INSERT, UPDATE ON public.{t} TO {APP};
         SELECT tenancy.add_member('{}', 'boss', 'admin');",
        f.a
    ))
    .unwrap();
    let mut c = app();
    bound_tx(&mut c, &f, &f.a, true, |c| {
        c.batch_execute("SELECT 1").unwrap();
    });
    c.batch_execute("BEGIN").unwrap();
    bind(&mut c, &f.token(&f.a, "boss"));
    c.batch_execute(&format!(
        "SELECT tenancy.audit_exclude('public.{t}', '{{note}}'); COMMIT"
    ))
    .unwrap();
    let mut o = connect(&own);
    assert_not_privileged(&mut o);
    for sql in [
        format!("ALTER TABLE public.{t} RENAME COLUMN note TO note_old"),
        format!("ALTER TABLE public.{t} RENAME COLUMN secret TO note"),
        // PostgreSQL renames a table's column under these forms too.
        format!("ALTER VIEW public.{t} RENAME COLUMN note TO note_old"),
        format!("ALTER FOREIGN TABLE public.{t} RENAME COLUMN secret TO note"),
        format!("ALTER MATERIALIZED VIEW public.{t} RENAME COLUMN note TO note_old"),
    ] {
        expect_refusal(&mut o, &sql, "42501", "guard_refused");
    }
    o.batch_execute(&format!(
        "ALTER TABLE public.{t} RENAME COLUMN other TO other2"
    ))
    .unwrap();
    // Nor by dropping the excluded column and adding another under its name.
    o.batch_execute(&format!("ALTER TABLE public.{t} DROP COLUMN note"))
        .unwrap();
    expect_refusal(
        &mut o,
        &format!("ALTER TABLE public.{t} ADD COLUMN note int"),
        "42501",
        "guard_refused",
    );
    o.batch_execute(&format!("ALTER TABLE public.{t} ADD COLUMN remark int"))
        .unwrap();
}

#[test]
fn an_audit_exclusion_is_checked_against_the_columns_a_rename_in_flight_leaves() {
    // Found by an attacker's pass: audit_exclude checked the names it was given under its
    // snapshot, with no lock of the table, while the table's owner swapped column names in a
    // transaction still open: the primary key's column took the name of a plain column, and
    // the tenant admin's exclusion of that name, checked against the old names, left the key
    // out of every record. The call now waits for the rename and checks the names it leaves.
    let f = Fixture::new();
    let mut su = superuser();
    let own = login_role(&mut su, "own_excl", "");
    let t = ident("exclren");
    su.batch_execute(&format!(
        "CREATE TABLE public.{t} (tenant_id uuid NOT NULL, id int NOT NULL, note text, PRIMARY KEY (tenant_id, id));
         ALTER TABLE public.{t} OWNER TO {own};
         SELECT tenancy.protect('public.{t}');
         GRANT SELECT, INSERT, UPDATE ON public.{t} TO {APP};
         SELECT tenancy.add_member('{}', 'boss', 'admin');",
        f.a
    ))
    .unwrap();
    let mut o = connect(&own);
    assert_not_privileged(&mut o);
    o.batch_execute(&format!(
        "BEGIN; ALTER TABLE public.{t} RENAME COLUMN id TO tmp; \
         ALTER TABLE public.{t} RENAME COLUMN note TO id; \
         ALTER TABLE public.{t} RENAME COLUMN tmp TO note"
    ))
    .unwrap();
    let mut c = app();
    c.batch_execute("BEGIN").unwrap();
    bind(&mut c, &f.token(&f.a, "boss"));
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let sql = format!("SELECT tenancy.audit_exclude('public.{t}', '{{note}}')");
    let excluding = std::thread::spawn(move || {
        let r = c.batch_execute(&sql).map_err(|e| sqlstate(&e));
        let _ = c.batch_execute("COMMIT");
        r
    });
    until_waiting_for_a_lock(&mut su, pid);
    o.batch_execute("COMMIT").unwrap();
    assert_eq!(
        excluding.join().unwrap(),
        Err("22023".to_string()),
        "the primary key's column, now named note, cannot be left out of the trail"
    );
    let recorded: i64 = su
        .query_one(
            &format!(
                "SELECT count(*) FROM tenancy.audit_exclusion WHERE relid = 'public.{t}'::regclass"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(recorded, 0, "no exclusion was recorded");
}

#[test]
fn resource_limits_hold_within_the_platforms_ceilings() {
    let f = Fixture::new();
    let mut su = superuser();
    f.seat_admin(&f.a, "boss");
    let mut op = connect(OPERATOR);
    op.execute(
        "SELECT tenancy.set_limit($1, 'statement_timeout', '\"300ms\"'), tenancy.set_limit($1, 'work_mem', '\"8MB\"')",
        &[&f.a],
    )
    .unwrap();
    // The tenant's admin cannot lift them.
    let mut admin = f.session_as(&f.a, "boss");
    for (name, value) in [
        ("statement_timeout", "\"0\""),
        ("statement_timeout", "\"10min\""),
        ("work_mem", "\"2GB\""),
    ] {
        admin.batch_execute("SAVEPOINT s").unwrap();
        let e = admin
            .batch_execute(&format!(
                "SELECT tenancy.set_setting('{}', '{name}', '{value}')",
                f.a
            ))
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{name} {value}: {}", message(&e));
        admin.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    }
    admin.batch_execute("ROLLBACK").unwrap();
    // A session's own SET does not lift them either, nor does ROLLBACK TO SAVEPOINT.
    let mut c = app();
    c.batch_execute("SET work_mem = '2GB'; SET statement_timeout = 0; BEGIN")
        .unwrap();
    bind(&mut c, &f.token(&f.a, "u"));
    let setting = |c: &mut postgres::Client, name: &str| -> String {
        c.query_one("SELECT current_setting($1)", &[&name])
            .unwrap()
            .get(0)
    };
    assert_eq!(setting(&mut c, "work_mem"), "8MB");
    assert_eq!(setting(&mut c, "statement_timeout"), "300ms");
    c.batch_execute("SET LOCAL work_mem = '1GB'").unwrap();
    assert_eq!(setting(&mut c, "work_mem"), "8MB");
    c.batch_execute("SAVEPOINT a").unwrap();
    bind(&mut c, &f.token(&f.a, "u"));
    c.batch_execute("ROLLBACK TO SAVEPOINT a").unwrap();
    assert_eq!(setting(&mut c, "statement_timeout"), "300ms");
    // And the timeout fires, though the statement started under none.
    c.batch_execute("SET statement_timeout = 0").unwrap();
    let e = c.query_one("SELECT pg_sleep(2)", &[]).unwrap_err();
    assert_eq!(sqlstate(&e), "57014", "{}", message(&e));
    c.batch_execute("ROLLBACK").unwrap();
    // Unbound sessions are not the tenant's.
    let mut other = app();
    other.batch_execute("SET work_mem = '64MB'").unwrap();
    assert_eq!(setting(&mut other, "work_mem"), "64MB");
    // Limits are the operators'.
    expect_err(
        &mut other,
        &format!("SELECT tenancy.set_limit('{}', 'work_mem', '\"1GB\"')", f.a),
        &["42501"],
    );
    // Recorded in the tenant's chain.
    assert_eq!(admin_records(&mut su, &f.a_id, "set_limit").len(), 2);
}

// A third look: what a reviewer found in the second pass's own fixes ------------------------------

/// A connection that collects its NOTICEs.
fn with_notices(
    user: &str,
) -> (
    postgres::Client,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let mut cfg = config(user);
    cfg.notice_callback(move |n| sink.lock().unwrap().push(n.message().to_string()));
    (cfg.connect(postgres::NoTls).unwrap(), seen)
}

#[test]
fn no_role_runs_code_as_the_catalog_owner_through_a_joining_relation() {
    let _f = Fixture::new();
    let mut su = superuser();
    let eve = login_role(&mut su, "eve", "");
    su.batch_execute(&format!("GRANT USAGE ON SCHEMA public TO {eve}"))
        .unwrap();
    let (mut c, notices) = with_notices(&eve);
    c.batch_execute(
        "CREATE FUNCTION pg_temp.evil() RETURNS int LANGUAGE plpgsql AS $$ BEGIN \
           RAISE NOTICE 'evil ran as % (superuser: %)', current_user, \
             (SELECT rolsuper FROM pg_roles WHERE rolname = current_user); RETURN 1; END $$; \
         CREATE TEMP VIEW tv AS SELECT pg_temp.evil() AS x",
    )
    .unwrap();
    for sql in [
        "ALTER TABLE pg_temp.tv INHERIT public.it_customers",
        "ALTER TABLE public.it_events ATTACH PARTITION pg_temp.tv FOR VALUES FROM ('2030-01-01') TO ('2031-01-01')",
        "DROP TABLE public.it_customers",
    ] {
        let e = c.batch_execute(sql).unwrap_err();
        assert!(
            ["42501", "42809", "42P16"].contains(&sqlstate(&e).as_str()),
            "{sql}: {}",
            message(&e)
        );
    }
    let ran: Vec<String> = notices
        .lock()
        .unwrap()
        .iter()
        .filter(|n| n.starts_with("evil"))
        .cloned()
        .collect();
    assert!(ran.is_empty(), "code ran: {ran:?}");
}

/// An operator's partition bound cast to a temporary domain whose CHECK is the operator's
/// code: PostgreSQL evaluates it while attaching, as the parent's owner, inside pg_tenancy's own
/// DDL. An attacker's pass read every tenant's rows so as a NOLOGIN owner (its CHECK turned the
/// table's FORCE off, and the guard stood aside for it), and made itself a superuser where the
/// owner was one. Refused (22023): a bound casts only to built-in types that are not domains.
#[test]
fn an_operators_partition_bound_runs_no_code_of_its_own_as_the_tables_owner() {
    let f = Fixture::new();
    let mut su = superuser();
    let owner = ident("bound_owner");
    let s = ident("bound_s");
    su.batch_execute(&format!(
        "CREATE ROLE {owner} NOLOGIN; \
         CREATE SCHEMA {s} AUTHORIZATION {owner}; GRANT USAGE ON SCHEMA {s} TO tenancy_operator; \
         SET ROLE {owner}; \
         CREATE TABLE {s}.secrets (tenant_id uuid NOT NULL, id int NOT NULL, secret text NOT NULL, PRIMARY KEY (tenant_id, id)); \
         CREATE TABLE {s}.ev (tenant_id uuid NOT NULL, id int NOT NULL, at date NOT NULL, PRIMARY KEY (tenant_id, id, at)) PARTITION BY RANGE (at); \
         CREATE TABLE {s}.ev_2026 PARTITION OF {s}.ev FOR VALUES FROM ('2026-01-01') TO ('2027-01-01'); \
         CREATE TABLE {s}.staging (tenant_id uuid NOT NULL, id int NOT NULL, at date NOT NULL); \
         CREATE TABLE {s}.staging2 (tenant_id uuid NOT NULL, id int NOT NULL, at date NOT NULL); \
         RESET ROLE; \
         INSERT INTO {s}.secrets VALUES ('{a}', 1, '{an}-secret'), ('{b}', 1, '{bn}-secret'); \
         SELECT tenancy.protect('{s}.secrets'); SELECT tenancy.protect('{s}.ev')",
        a = f.a_id,
        an = f.a,
        b = f.b_id,
        bn = f.b
    ))
    .unwrap();
    let mut op = connect(OPERATOR);
    assert_not_privileged(&mut op);
    op.batch_execute(&format!(
        "CREATE FUNCTION pg_temp.leak(d date) RETURNS boolean LANGUAGE plpgsql AS $f$ \
         DECLARE r text; BEGIN \
           EXECUTE 'ALTER TABLE {s}.secrets NO FORCE ROW LEVEL SECURITY'; \
           SELECT string_agg(secret, ',' ORDER BY secret) INTO r FROM {s}.secrets; \
           RAISE EXCEPTION 'LOOT as %: %', current_user, r; END $f$; \
         CREATE DOMAIN pg_temp.d AS date CHECK (pg_temp.leak(VALUE)); \
         CREATE FUNCTION pg_temp.esc(d date) RETURNS boolean LANGUAGE plpgsql AS $f$ \
           BEGIN EXECUTE 'ALTER ROLE {OPERATOR} SUPERUSER'; RETURN true; END $f$; \
         CREATE DOMAIN pg_temp.d2 AS date CHECK (pg_temp.esc(VALUE))"
    ))
    .unwrap();
    for (domain, staging) in [("pg_temp.d", "staging"), ("pg_temp.d2", "staging2")] {
        let e = op
            .execute(
                "SELECT tenancy.attach_partition($1::text::regclass, $2::text::regclass, $3)",
                &[
                    &format!("{s}.ev"),
                    &format!("{s}.{staging}"),
                    &format!("FOR VALUES FROM ('2030-01-01'::{domain}) TO ('2031-01-01')"),
                ],
            )
            .expect_err("a bound cast to the operator's domain");
        assert_eq!(sqlstate(&e), "22023", "{}", message(&e));
        assert!(!message(&e).contains("-secret"), "{}", message(&e));
    }
    // A built-in type's name outside pg_catalog under the operator's own search_path, which the
    // ATTACH (run with pg_catalog, pg_temp) reads as the operator's temporary domain of that
    // name (a reviewer's pass).
    let mut op2 = connect(OPERATOR);
    op2.batch_execute(
        "CREATE FUNCTION pg_temp.esc(d date) RETURNS boolean LANGUAGE plpgsql AS $f$ \
           BEGIN EXECUTE 'ALTER ROLE tenancy_op1 SUPERUSER'; RETURN true; END $f$; \
         CREATE DOMAIN pg_temp.sql_features AS date CHECK (pg_temp.esc(VALUE)); \
         SET search_path = information_schema, pg_temp",
    )
    .unwrap();
    let e = op2
        .execute(
            "SELECT tenancy.attach_partition($1::text::regclass, $2::text::regclass, $3)",
            &[
                &format!("{s}.ev"),
                &format!("{s}.staging2"),
                &"FOR VALUES FROM ('2030-01-01'::sql_features) TO ('2031-01-01')",
            ],
        )
        .expect_err("a bound naming a type the ATTACH resolves to the operator's domain");
    assert_eq!(sqlstate(&e), "22023", "{}", message(&e));
    let superuser_now: bool = su
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = $1",
            &[&OPERATOR],
        )
        .unwrap()
        .get(0);
    if superuser_now {
        su.batch_execute(&format!("ALTER ROLE {OPERATOR} NOSUPERUSER"))
            .unwrap();
    }
    assert!(!superuser_now, "the operator made itself a superuser");
    // A bound cast to a built-in type still attaches, from a session without the temporary
    // objects of the attempts above (their session is refused: 55000).
    op.batch_execute("DISCARD TEMP").unwrap();
    op.execute(
        "SELECT tenancy.attach_partition($1::text::regclass, $2::text::regclass, $3)",
        &[
            &format!("{s}.ev"),
            &format!("{s}.staging"),
            &"FOR VALUES FROM ('2030-01-01'::date) TO ('2031-01-01')",
        ],
    )
    .unwrap();
}

#[test]
fn attach_partition_runs_no_one_elses_code_with_more_privilege_than_its_owner() {
    let f = Fixture::new();
    let mut su = superuser();
    let op = login_role(&mut su, "op", "");
    let s = ident("ap");
    su.batch_execute(&format!(
        "GRANT tenancy_operator TO {op}; CREATE SCHEMA {s} AUTHORIZATION {op}"
    ))
    .unwrap();
    let mut o = connect(&op);
    // The operator owns a type whose cast to json would make it a superuser, run as one. (A
    // cast with a function is a superuser's to create where tables are protected: made by one
    // here, its function then the operator's.)
    o.batch_execute(&format!(
        "CREATE TYPE {s}.mood AS ENUM ('ok', 'bad'); \
         CREATE FUNCTION {s}.mood_json({s}.mood) RETURNS json LANGUAGE plpgsql AS \
           $$ BEGIN EXECUTE 'ALTER ROLE {op} SUPERUSER'; RETURN to_json($1::text); END $$"
    ))
    .unwrap();
    su.batch_execute(&format!(
        "CREATE CAST ({s}.mood AS json) WITH FUNCTION {s}.mood_json({s}.mood)"
    ))
    .unwrap();
    o.batch_execute(&format!(
        "CREATE TABLE {s}.tasks (tenant_id uuid NOT NULL, id int NOT NULL, m {s}.mood, PRIMARY KEY (tenant_id, id)) PARTITION BY RANGE (id); \
         SELECT tenancy.protect('{s}.tasks'); \
         CREATE TABLE {s}.tasks_2 (tenant_id uuid NOT NULL, id int NOT NULL, m {s}.mood, PRIMARY KEY (tenant_id, id)); \
         INSERT INTO {s}.tasks_2 VALUES ('{a}', 101, 'ok'); \
         CREATE TABLE {s}.tasks_3 (LIKE {s}.tasks_2 INCLUDING ALL); \
         CREATE FUNCTION {s}.bf() RETURNS int LANGUAGE sql AS $$ SELECT 300 $$",
        a = f.a_id
    ))
    .unwrap();
    let _ = o.batch_execute(&format!(
        "SELECT tenancy.attach_partition('{s}.tasks', '{s}.tasks_2', 'FOR VALUES FROM (100) TO (200)')"
    ));
    let superuser_now: bool = su
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&op])
        .unwrap()
        .get(0);
    assert!(!superuser_now, "the operator's cast ran as a superuser");
    // A bound that calls a function would run it as the table's owner: refused.
    expect_err(
        &mut o,
        &format!("SELECT tenancy.attach_partition('{s}.tasks', '{s}.tasks_3', 'FOR VALUES FROM ({s}.bf()) TO (400)')"),
        &["22023"],
    );
}

#[test]
fn attach_partition_brings_in_no_other_roles_table_or_trigger() {
    // Found by an attacker's pass: pg_tenancy attaches as the parent's owner, which PostgreSQL
    // lets attach any table when it is a superuser. An operator attached its own table with a
    // SECURITY DEFINER trigger that copied every tenant's rows written to it.
    let f = Fixture::new();
    let mut su = superuser();
    let op = login_role(&mut su, "op", "");
    let s = ident("apo");
    su.batch_execute(&format!(
        "GRANT tenancy_operator TO {op}; CREATE SCHEMA {s}; GRANT USAGE, CREATE ON SCHEMA {s} TO {op};
         CREATE TABLE {s}.ev (tenant_id uuid NOT NULL, id int NOT NULL, PRIMARY KEY (tenant_id, id)) PARTITION BY RANGE (id);
         SELECT tenancy.protect('{s}.ev');
         CREATE TABLE {s}.ev_own (tenant_id uuid NOT NULL, id int NOT NULL, PRIMARY KEY (tenant_id, id));"
    ))
    .unwrap();
    let mut o = connect(&op);
    assert_not_privileged(&mut o);
    o.batch_execute(&format!(
        "CREATE TABLE {s}.loot (d jsonb);
         CREATE TABLE {s}.ev_op (tenant_id uuid NOT NULL, id int NOT NULL, PRIMARY KEY (tenant_id, id));
         CREATE FUNCTION {s}.grab() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog
           AS $$ BEGIN INSERT INTO {s}.loot VALUES (to_jsonb(new)); RETURN new; END $$;
         CREATE TRIGGER grab AFTER INSERT ON {s}.ev_op FOR EACH ROW EXECUTE FUNCTION {s}.grab();"
    ))
    .unwrap();
    let msg = expect_err(
        &mut o,
        &format!("SELECT tenancy.attach_partition('{s}.ev', '{s}.ev_op', 'FOR VALUES FROM (0) TO (100)')"),
        &["42501"],
    );
    assert!(msg.contains("is owned by"), "{msg}");
    // Given to the parent's owner, its trigger still calls the operator's function.
    su.batch_execute(&format!("ALTER TABLE {s}.ev_op OWNER TO CURRENT_USER"))
        .unwrap();
    let msg = expect_err(
        &mut o,
        &format!("SELECT tenancy.attach_partition('{s}.ev', '{s}.ev_op', 'FOR VALUES FROM (0) TO (100)')"),
        &["42501"],
    );
    assert!(msg.contains("trigger grab"), "{msg}");
    // The parent's owner's own table attaches.
    o.batch_execute(&format!(
        "SELECT tenancy.attach_partition('{s}.ev', '{s}.ev_own', 'FOR VALUES FROM (100) TO (200)')"
    ))
    .unwrap();
    let _ = f;
}

#[test]
fn a_cascade_or_a_rolled_back_savepoint_cannot_drop_protected_data_unrecorded() {
    let f = Fixture::new();
    let mut su = superuser();
    let own = login_role(&mut su, "own", "");
    let s = ident("cas");
    su.batch_execute(&format!(
        "CREATE SCHEMA {s} AUTHORIZATION {own}; GRANT USAGE ON SCHEMA {s} TO {APP}; \
         SET ROLE {own}; \
         CREATE VIEW {s}.addr AS SELECT ''::text AS street; \
         CREATE TYPE {s}.status AS ENUM ('open', 'paid', 'refunded'); \
         CREATE TABLE {s}.t (tenant_id uuid NOT NULL, id int NOT NULL, a {s}.addr, st {s}.status); \
         RESET ROLE; SELECT tenancy.protect('{s}.t'); GRANT SELECT, INSERT ON {s}.t TO {APP}"
    ))
    .unwrap();
    let mut c = app();
    bound_tx(&mut c, &f, &f.a, true, |c| {
        c.batch_execute(&format!("INSERT INTO {s}.t (id, st) VALUES (1, 'paid')"))
            .unwrap();
    });
    let mut o = connect(&own);
    // A view used as a column's type: DROP VIEW ... CASCADE drops the column.
    let e = o
        .batch_execute(&format!("DROP VIEW {s}.addr CASCADE"))
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    // The record of a drop rolled back with its savepoint does not cover a later cascade.
    let e = o
        .batch_execute(&format!(
            "BEGIN; SAVEPOINT s; ALTER TABLE {s}.t DROP COLUMN st; ROLLBACK TO s; DROP TYPE {s}.status CASCADE; COMMIT"
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    o.batch_execute("ROLLBACK").unwrap();
    // Renaming an enum's value would change every tenant's rows.
    let e = o
        .batch_execute(&format!(
            "ALTER TYPE {s}.status RENAME VALUE 'paid' TO 'settled'"
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    let st: String = su
        .query_one(&format!("SELECT st::text FROM {s}.t"), &[])
        .unwrap()
        .get(0);
    assert_eq!(st, "paid");
}

/// A connection to the preloading cluster as `user`.
fn preloaded(user: &str) -> postgres::Client {
    connect_preloaded(user)
}

/// The tenant's write lock, which decommission_tenant waits for, is held to the end of the
/// transaction even when the write that took it was in a savepoint or a PL/pgSQL exception
/// block that rolled back: it was released with them while the session went on writing
/// unlocked, and a row written after the savepoint outlived the decommission (a reviewer's
/// pass).
#[test]
fn a_rolled_back_savepoint_keeps_the_tenants_write_lock() {
    let f = Fixture::new();
    let mut su = superuser();
    let held = |su: &mut postgres::Client, pid: i32| -> i64 {
        su.query_one(
            "SELECT count(*) FROM pg_locks WHERE pid = $1 AND locktype = 'advisory' AND objsubid = 29952 AND granted",
            &[&pid],
        )
        .unwrap()
        .get(0)
    };
    let mut w = f.session_as(&f.a, "u");
    let pid: i32 = w.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    w.batch_execute(
        "SAVEPOINT s; INSERT INTO it_orders (amount) VALUES (7001); ROLLBACK TO s; \
         INSERT INTO it_orders (amount) VALUES (7002)",
    )
    .unwrap();
    assert_eq!(held(&mut su, pid), 1, "after ROLLBACK TO SAVEPOINT");
    w.batch_execute("ROLLBACK").unwrap();
    let mut w = f.session_as(&f.a, "u");
    let pid: i32 = w.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    w.batch_execute(
        "DO $$ BEGIN BEGIN INSERT INTO it_orders (amount) VALUES (7003); RAISE EXCEPTION 'undo'; \
         EXCEPTION WHEN raise_exception THEN NULL; END; END $$",
    )
    .unwrap();
    assert_eq!(held(&mut su, pid), 1, "after an exception block");
    w.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn every_write_of_a_tenant_holds_decommission_off() {
    // On the cluster that preloads pg_tenancy, as production runs it: where the library is
    // loaded by a session's first statement, that statement started before its hooks existed
    // (verify() warns of such a database: library_not_preloaded).
    let mut su = preloaded("postgres");
    let f = Fixture::on(&mut su);
    let mapped = login_role(&mut su, "mapped", "");
    su.batch_execute(&format!(
        "GRANT SELECT, INSERT ON it_orders TO {mapped}; GRANT USAGE ON SEQUENCE it_orders_id_seq TO {mapped}"
    ))
    .unwrap();
    su.execute(
        &format!("SELECT tenancy.map_role('{mapped}', $1, '{{member}}')"),
        &[&f.a],
    )
    .unwrap();
    // A data-modifying CTE, and a mapped session's very first statement, both write.
    let mut cte = preloaded(APP);
    cte.batch_execute("BEGIN").unwrap();
    bind(&mut cte, &f.token(&f.a, "u"));
    cte.batch_execute(
        "WITH x AS (INSERT INTO it_orders (amount) VALUES (6001) RETURNING *) SELECT count(*) FROM x",
    )
    .unwrap();
    let mut first = preloaded(&mapped);
    first
        .batch_execute("BEGIN; INSERT INTO it_orders (tenant_id, amount) VALUES (tenancy.current_tenant(), 1001)")
        .unwrap();
    let mut op = preloaded(OPERATOR);
    op.batch_execute("SET tenancy.decommission_wait = 300")
        .unwrap();
    op.query_one("SELECT tenancy.decommission_tenant($1, $1)", &[&f.a])
        .unwrap();
    assert!(cte.batch_execute("COMMIT").is_err());
    assert!(first.batch_execute("COMMIT").is_err());
    let left: i64 = su
        .query_one(
            "SELECT count(*) FROM it_orders WHERE tenant_id = $1::text::uuid",
            &[&f.a_id],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[test]
fn a_table_still_being_filled_cannot_slip_in_while_it_is_attached() {
    let f = Fixture::new();
    let mut su = superuser();
    let own = login_role(&mut su, "own", "");
    let s = ident("toc");
    su.batch_execute(&format!(
        "CREATE SCHEMA {s} AUTHORIZATION {own}; SET ROLE {own}; \
         CREATE TABLE {s}.p (tenant_id uuid NOT NULL, id int NOT NULL) PARTITION BY RANGE (id); \
         CREATE TABLE {s}.p2 (tenant_id uuid NOT NULL, id int NOT NULL); \
         RESET ROLE; SELECT tenancy.protect('{s}.p')"
    ))
    .unwrap();
    let mut filler = connect(&own);
    filler
        .batch_execute(&format!(
            "BEGIN; INSERT INTO {s}.p2 VALUES ('{}', 150)",
            f.b_id
        ))
        .unwrap();
    let attach =
        format!("ALTER TABLE {s}.p ATTACH PARTITION {s}.p2 FOR VALUES FROM (100) TO (200)");
    let own2 = own.clone();
    let t = std::thread::spawn(move || {
        let mut c = connect(&own2);
        c.batch_execute(&attach).map_err(|e| sqlstate(&e))
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    filler.batch_execute("COMMIT").unwrap();
    assert_eq!(t.join().unwrap(), Err("42501".to_string()));
}

/// A bound session's last statement sets lock_timeout to 0, and its COMMIT runs a deferred
/// trigger whose PL/pgSQL expression (cached by an earlier transaction) waits for a lock and
/// starts no query: the limits were held only at queries, planning and utility statements other
/// than COMMIT, so the transaction waited with its locks held (the tenant's write lock among
/// them, which decommission waits for) past the 1 s ceiling, for as long as the other session
/// held the lock (an attacker's pass). COMMIT now holds the limits too: cut at the ceiling.
/// (PostgreSQL disarms the statement timer before committing, for every role: a COMMIT's
/// deferred triggers run with no statement_timeout, which the README states.)
#[test]
fn the_lock_timeout_ceiling_holds_while_commit_runs_deferred_triggers() {
    let f = Fixture::new();
    let mut op = connect(OPERATOR);
    op.execute(
        "SELECT tenancy.set_limit($1, 'lock_timeout', '\"1s\"')",
        &[&f.a],
    )
    .unwrap();
    let key: i64 = 4_242_000 + i64::from(std::process::id() % 1000);
    let mut holder = superuser();
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .unwrap();
    let mut c = app();
    c.batch_execute(&format!(
        "CREATE TEMP TABLE wait_q (x int); \
         CREATE FUNCTION pg_temp.wait_for_it() RETURNS trigger LANGUAGE plpgsql AS $$ \
         DECLARE v text; BEGIN IF NEW.x > 0 THEN v := pg_advisory_xact_lock({key}); END IF; RETURN NULL; END $$; \
         CREATE CONSTRAINT TRIGGER wait_q_t AFTER INSERT ON wait_q DEFERRABLE INITIALLY DEFERRED \
           FOR EACH ROW EXECUTE FUNCTION pg_temp.wait_for_it(); \
         INSERT INTO wait_q VALUES (0)"
    ))
    .unwrap();
    begin_bound(&mut c, &f, &f.a);
    c.batch_execute(
        "INSERT INTO it_orders (amount) VALUES (1); INSERT INTO wait_q VALUES (1); \
         SELECT set_config('lock_timeout', '0', false)",
    )
    .unwrap();
    // The other session lets go after 5 s: without the ceiling, COMMIT succeeds then.
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(5));
        holder
            .execute("SELECT pg_advisory_unlock($1)", &[&key])
            .unwrap();
    });
    let committed = c.batch_execute("COMMIT");
    release.join().unwrap();
    let e = committed.expect_err("COMMIT waited for the lock past the ceiling");
    assert_eq!(sqlstate(&e), "55P03", "{}", message(&e));
}

#[test]
fn limits_hold_for_cursors_do_blocks_and_a_mapped_sessions_first_statement() {
    let mut su = preloaded("postgres");
    let f = Fixture::on(&mut su);
    let mapped = login_role(&mut su, "mapped", "");
    su.batch_execute(&format!("GRANT SELECT ON it_orders TO {mapped}"))
        .unwrap();
    su.execute(
        &format!("SELECT tenancy.map_role('{mapped}', $1, '{{member}}')"),
        &[&f.a],
    )
    .unwrap();
    let mut op = preloaded(OPERATOR);
    op.execute(
        "SELECT tenancy.set_limit($1, 'statement_timeout', '\"300ms\"'), tenancy.set_limit($1, 'work_mem', '\"1MB\"')",
        &[&f.a],
    )
    .unwrap();
    // A mapped session's first statement.
    let mut m = preloaded(&mapped);
    m.batch_execute("SET statement_timeout = 0").unwrap();
    let e = m
        .query_one("SELECT pg_sleep(2), (SELECT count(*) FROM it_orders)", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "57014", "{}", message(&e));
    // FETCH from a cursor, and a DO block.
    let mut c = preloaded(APP);
    c.batch_execute("BEGIN").unwrap();
    bind(&mut c, &f.token(&f.a, "u"));
    c.batch_execute("DECLARE cur CURSOR FOR SELECT pg_sleep(0.2) FROM generate_series(1, 10); SET statement_timeout = 0")
        .unwrap();
    let e = c.batch_execute("FETCH ALL cur").unwrap_err();
    assert_eq!(sqlstate(&e), "57014", "{}", message(&e));
    c.batch_execute("ROLLBACK; BEGIN").unwrap();
    bind(&mut c, &f.token(&f.a, "u"));
    c.batch_execute("SET statement_timeout = 0").unwrap();
    let e = c
        .batch_execute("DO $$ DECLARE x text; BEGIN x := pg_sleep(2)::text; END $$")
        .unwrap_err();
    assert_eq!(sqlstate(&e), "57014", "{}", message(&e));
    c.batch_execute("ROLLBACK; BEGIN").unwrap();
    bind(&mut c, &f.token(&f.a, "u"));
    c.batch_execute("SET hash_mem_multiplier = 1000").unwrap();
    let hm: String = c
        .query_one("SELECT current_setting('hash_mem_multiplier')", &[])
        .unwrap()
        .get(0);
    assert_eq!(hm, "2");
    c.batch_execute("SET maintenance_work_mem = '512MB'")
        .unwrap();
    let mwm: String = c
        .query_one("SELECT current_setting('maintenance_work_mem')", &[])
        .unwrap()
        .get(0);
    assert_eq!(mwm, "64MB");
    c.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn held_cursors_never_outlive_a_binding() {
    // Found by an attacker's pass: a cursor WITH HOLD stores its rows at COMMIT, and PL/pgSQL's
    // FETCH and the protocol's Execute read stored rows without a statement pg_tenancy sees.
    // Bound to B for the session, a client declared one, and once B's binding had ended (a
    // suspension, its token's expiry) and A was bound, a DO block fetched B's rows from it. A
    // role-mapped session's held cursor was read by plain FETCH after a suspension. And one
    // declared before bind() in the same transaction was filled at COMMIT under the binding.
    let (f, mut c) = two_tenants();
    let mut su = superuser();
    // Under a session binding: refused, so nothing is stored to be read later.
    c.execute("SELECT tenancy.bind($1, 'session')", &[&f.token(&f.b, "x")])
        .unwrap();
    expect_err(
        &mut c,
        "BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT name FROM it_customers ORDER BY 1; COMMIT",
        &["0A000"],
    );
    c.batch_execute("ROLLBACK").unwrap();
    c.batch_execute("DISCARD ALL").unwrap();
    // Under a role mapping: refused too (from the connection's first statement where the
    // library is loaded at connection, as the README asks; here it loads with the check below).
    let role = login_role(&mut su, "held", &format!("IN ROLE {APP}"));
    su.execute(&format!("SELECT tenancy.map_role('{role}', $1)"), &[&f.a])
        .unwrap();
    let mut m = connect(&role);
    assert_not_privileged(&mut m);
    m.batch_execute("SELECT tenancy.binding()").unwrap();
    expect_err(
        &mut m,
        "DECLARE c CURSOR WITH HOLD FOR SELECT name FROM it_customers",
        &["0A000"],
    );
    // A cursor of a mapped session (without HOLD) is not read after a suspension.
    m.batch_execute("BEGIN; DECLARE c CURSOR FOR SELECT name FROM it_customers; FETCH 1 FROM c")
        .unwrap();
    su.execute("SELECT tenancy.suspend_tenant($1)", &[&f.a])
        .unwrap();
    expect_err(&mut m, "FETCH 1 FROM c", &["42501"]);
    m.batch_execute("ROLLBACK").unwrap();
    su.execute("SELECT tenancy.resume_tenant($1)", &[&f.a])
        .unwrap();
    // Declared unbound, then a binding in the same transaction: its query would run at COMMIT
    // under it. No binding is made while one is open, in that transaction or a later one.
    // (A PL/pgSQL function's query is planned when it runs, at COMMIT, not at DECLARE.)
    c.batch_execute(
        "CREATE FUNCTION pg_temp.names() RETURNS SETOF text LANGUAGE plpgsql AS \
         $$ BEGIN RETURN QUERY SELECT name FROM it_customers; END $$",
    )
    .unwrap();
    c.batch_execute("BEGIN; DECLARE early CURSOR WITH HOLD FOR SELECT * FROM pg_temp.names()")
        .unwrap();
    let e = c
        .execute("SELECT tenancy.bind($1)", &[&f.token(&f.b, "x")])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55006", "{}", message(&e));
    c.batch_execute("ROLLBACK").unwrap();
    // Nor after a DECLARE under its name failed (a reviewer's bypass: the failed DECLARE made
    // pg_tenancy forget the open cursor), in a savepoint or a DO block's exception handler.
    for fail in [
        "SAVEPOINT s; DECLARE early CURSOR FOR SELECT 1",
        "DO $$ BEGIN EXECUTE 'DECLARE early CURSOR FOR SELECT 1'; \
         EXCEPTION WHEN duplicate_cursor THEN NULL; END $$",
    ] {
        c.batch_execute("BEGIN; DECLARE early CURSOR WITH HOLD FOR SELECT * FROM pg_temp.names()")
            .unwrap();
        let failed = c.batch_execute(fail);
        if failed.is_err() {
            c.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
        }
        let e = c
            .execute("SELECT tenancy.bind($1)", &[&f.token(&f.b, "x")])
            .unwrap_err();
        assert_eq!(sqlstate(&e), "55006", "after {fail}: {}", message(&e));
        c.batch_execute("ROLLBACK").unwrap();
    }
    c.batch_execute(
        "BEGIN; DECLARE later CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 3) g; COMMIT",
    )
    .unwrap();
    let e = c
        .execute("SELECT tenancy.bind($1, 'session')", &[&f.token(&f.b, "x")])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55006", "{}", message(&e));
    c.batch_execute("CLOSE later").unwrap();
    c.execute("SELECT tenancy.bind($1, 'session')", &[&f.token(&f.b, "x")])
        .unwrap();
    c.batch_execute("DISCARD ALL").unwrap();
}

#[test]
fn concurrent_removals_cannot_leave_a_subject_on_richer_default_roles() {
    // Found by an attacker's pass: two operators' sessions each removed one of a subject's two
    // memberships at once; each saw the other's still there, and together they left the
    // subject on the tenant's richer default_roles. Removals of a tenant's memberships now
    // wait for each other and read what is left afresh.
    let mut su = superuser();
    let t = unique("rm");
    su.batch_execute(&format!(
        "SELECT tenancy.create_tenant('{t}'); \
         SELECT tenancy.add_member('{t}', 'alice', 'admin'); \
         SELECT tenancy.create_role('{t}', 'auditor'); \
         SELECT tenancy.add_member('{t}', 'eve', 'viewer'); \
         SELECT tenancy.add_member('{t}', 'eve', 'auditor'); \
         SELECT tenancy.set_setting('{t}', 'default_roles', '[\"member\"]')"
    ))
    .unwrap();
    let mut op = connect("tenancy_op1");
    assert_not_privileged(&mut op);
    op.batch_execute(&format!(
        "BEGIN; SELECT tenancy.remove_member('{t}', 'eve', 'auditor')"
    ))
    .unwrap();
    let t2 = t.clone();
    let other = std::thread::spawn(move || {
        let mut c = connect("tenancy_op1");
        c.batch_execute(&format!(
            "SELECT tenancy.remove_member('{t2}', 'eve', 'viewer')"
        ))
        .map_err(|e| sqlstate(&e))
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    op.batch_execute("COMMIT").unwrap();
    assert_eq!(other.join().unwrap(), Err("42501".to_string()));
    let left: Vec<String> = texts(
        &mut su,
        &format!(
            "SELECT m.role FROM tenancy.member m JOIN tenancy.tenant t ON t.id = m.tenant_id \
              WHERE t.slug = '{t}' AND m.subject = 'eve'"
        ),
    );
    assert_eq!(left, vec!["viewer".to_string()]);
}

#[test]
fn no_status_change_undoes_a_decommission() {
    // Found by an attacker's pass: an operator's suspend_tenant waiting on a running
    // decommission_tenant then applied to the decommissioned row, and resume_tenant made the
    // tombstone an active tenant again, writable after its deletion certificate.
    let mut su = superuser();
    let t = unique("dc");
    su.batch_execute(&format!("SELECT tenancy.create_tenant('{t}')"))
        .unwrap();
    let mut op = connect("tenancy_op1");
    op.batch_execute(&format!(
        "BEGIN; SELECT tenancy.decommission_tenant('{t}', '{t}')"
    ))
    .unwrap();
    let t2 = t.clone();
    let other = std::thread::spawn(move || {
        let mut c = connect("tenancy_op1");
        c.batch_execute(&format!("SELECT tenancy.suspend_tenant('{t2}', 'race')"))
            .map_err(|e| sqlstate(&e))
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    op.batch_execute("COMMIT").unwrap();
    assert_eq!(other.join().unwrap(), Err("55000".to_string()));
    let status: String = su
        .query_one("SELECT status FROM tenancy.tenants WHERE slug = $1", &[&t])
        .unwrap()
        .get(0);
    assert_eq!(status, "decommissioned");
}

#[test]
fn an_admin_from_default_roles_at_creation_keeps_operators_from_widening() {
    // Found by an attacker's pass: a tenant created with default_roles naming admin was not
    // recorded as having an admin, so after an operator removed the default (a narrowing) it
    // could map a role of its own into the tenant as admin and read its rows and trail.
    let mut op = connect("tenancy_op1");
    let t = unique("da");
    op.batch_execute(&format!(
        "SELECT tenancy.create_tenant('{t}', settings => '{{\"default_roles\": [\"admin\"]}}'); \
         SELECT tenancy.set_setting('{t}', 'default_roles', NULL)"
    ))
    .unwrap();
    let e = op
        .batch_execute(&format!(
            "SELECT tenancy.map_role('{APP2}', '{t}', '{{admin}}')"
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    let e = op
        .batch_execute(&format!(
            "SELECT tenancy.add_member('{t}', 'mallory', 'admin')"
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
}

#[test]
fn a_support_binding_serves_only_the_operator_it_was_granted_to() {
    // Found by an attacker's pass: a member of the operator's login role SET ROLE to it,
    // entered support with its grant, RESET ROLE, and kept reading the tenant's rows as itself.
    let f = Fixture::new();
    let mut su = superuser();
    f.seat_admin(&f.a, "boss");
    let mut admin = f.session_as(&f.a, "boss");
    admin
        .execute(
            &format!("SELECT tenancy.grant_support('{OPERATOR}', '1 hour')"),
            &[],
        )
        .unwrap();
    admin.batch_execute("COMMIT").unwrap();
    serialized_grant(
        &mut su,
        &format!("GRANT SELECT ON it_customers TO {OPERATOR}"),
    );
    let other = login_role(&mut su, "op2", "");
    su.batch_execute(&format!("GRANT {OPERATOR} TO {other}"))
        .unwrap();
    let mut o = connect(&other);
    assert_not_privileged(&mut o);
    o.batch_execute(&format!("SET ROLE {OPERATOR}")).unwrap();
    o.execute("SELECT tenancy.enter_support($1)", &[&f.a])
        .unwrap();
    o.query_one("SELECT count(*) FROM it_customers", &[])
        .unwrap();
    o.batch_execute("RESET ROLE").unwrap();
    expect_refusal(
        &mut o,
        "SELECT count(*) FROM it_customers",
        "42501",
        "support_role_changed",
    );
    o.batch_execute(&format!("SET ROLE {OPERATOR}")).unwrap();
    o.query_one("SELECT count(*) FROM it_customers", &[])
        .unwrap();
    // Also inside one statement, after a read that validated the binding (the validation is
    // remembered only for the role it ran under: src/binding/memo.rs).
    expect_refusal(
        &mut o,
        "DO $$ BEGIN PERFORM count(*) FROM it_customers; \
             PERFORM set_config('role', 'none', true); \
             PERFORM count(*) FROM it_customers; END $$",
        "42501",
        "support_role_changed",
    );
    o.batch_execute(&format!("SET ROLE {OPERATOR}")).unwrap();
    o.batch_execute("RESET ROLE; SELECT tenancy.unbind()")
        .unwrap();
}

#[test]
fn a_support_binding_ends_when_its_role_is_no_longer_a_plain_operator() {
    // Found by an attacker's pass: enter_support asks for an operator that is neither a
    // superuser nor a key admin, but the binding only re-read its grant: a role taken out of
    // tenancy_operator, or made a key admin, kept reading the tenant's rows until the grant
    // expired.
    let f = Fixture::new();
    let mut su = superuser();
    let op = login_role(&mut su, "supop", "");
    su.batch_execute(&format!("GRANT tenancy_operator TO {op}"))
        .unwrap();
    serialized_grant(&mut su, &format!("GRANT SELECT ON it_customers TO {op}"));
    f.seat_admin(&f.a, "boss");
    let mut admin = f.session_as(&f.a, "boss");
    admin
        .execute(
            &format!("SELECT tenancy.grant_support('{op}', '1 hour')"),
            &[],
        )
        .unwrap();
    admin.batch_execute("COMMIT").unwrap();
    for (make, undo) in [
        (
            format!("GRANT tenancy_key_admin TO {op}"),
            format!("REVOKE tenancy_key_admin FROM {op}"),
        ),
        (
            format!("REVOKE tenancy_operator FROM {op}"),
            format!("GRANT tenancy_operator TO {op}"),
        ),
    ] {
        let mut o = connect(&op);
        assert_not_privileged(&mut o);
        o.execute("SELECT tenancy.enter_support($1)", &[&f.a])
            .unwrap();
        o.query_one("SELECT count(*) FROM it_customers", &[])
            .unwrap();
        su.batch_execute(&make).unwrap();
        expect_refusal(
            &mut o,
            "SELECT count(*) FROM it_customers",
            "42501",
            "support_ended",
        );
        su.batch_execute(&undo).unwrap();
    }
    serialized_grant(&mut su, &format!("REVOKE SELECT ON it_customers FROM {op}"));
}

#[test]
fn a_token_binding_ends_when_its_role_is_mapped_to_other_tenants() {
    // Found by an attacker's pass: a role mapped to tenants may bind only those, but a session
    // bound with a token before an operator confined its role to another tenant kept its
    // token's tenant until the token expired.
    let f = Fixture::new();
    let mut su = superuser();
    let r = login_role(&mut su, "mapme", "");
    serialized_grant(&mut su, &format!("GRANT SELECT ON it_customers TO {r}"));
    let mut c = connect(&r);
    assert_not_privileged(&mut c);
    c.execute(
        "SELECT tenancy.bind($1, 'session')",
        &[&f.token(&f.a, "bob")],
    )
    .unwrap();
    c.query_one("SELECT count(*) FROM it_customers", &[])
        .unwrap();
    su.batch_execute(&format!(
        "SELECT tenancy.map_role('{r}', '{}', '{{member}}')",
        f.b
    ))
    .unwrap();
    expect_refusal(
        &mut c,
        "SELECT count(*) FROM it_customers",
        "42501",
        "role_mapped_elsewhere",
    );
}

#[test]
fn a_transaction_acts_for_one_subject_and_its_trail_names_that_subject() {
    // Found by an attacker's pass: a session bound for one subject bound a second subject's
    // token in the statement that deleted (the record named the second, a viewer refused
    // DELETE on its own, and the rest of the transaction acted as it), or unbound in the
    // statement that updated (the record named no one): the audit trigger read the binding at
    // the statement's end, and a session's binding used first in a transaction did not fix its
    // subject.
    let f = Fixture::new();
    let mut su = superuser();
    su.execute(
        "SELECT tenancy.add_member($1, 'carol', 'admin'), tenancy.add_member($1, 'vic', 'viewer')",
        &[&f.a],
    )
    .unwrap();
    let mut c = app();
    assert_not_privileged(&mut c);
    bound_tx(&mut c, &f, &f.a, true, |c| {
        c.batch_execute("INSERT INTO it_orders (amount) VALUES (7001), (7003)")
            .unwrap();
    });
    c.execute(
        "SELECT tenancy.bind($1, 'session')",
        &[&f.token(&f.a, "carol")],
    )
    .unwrap();
    c.batch_execute("BEGIN").unwrap();
    let e = c
        .query_one(
            "WITH d AS (DELETE FROM it_orders WHERE amount = 7001 RETURNING 1) \
             SELECT tenancy.bind($1)->>'subject' FROM d",
            &[&f.token(&f.a, "vic")],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    assert!(message(&e).contains("another subject"), "{}", message(&e));
    c.batch_execute("ROLLBACK").unwrap();
    // Nor after a first statement of the transaction.
    c.batch_execute("BEGIN").unwrap();
    c.query("SELECT count(*) FROM it_orders", &[]).unwrap();
    expect_refusal(
        &mut c,
        &format!("SELECT tenancy.bind('{}')", f.token(&f.a, "vic")),
        "42501",
        "rebind_refused",
    );
    c.batch_execute("ROLLBACK").unwrap();
    // Unbinding in the statement that writes: the record still names the subject.
    c.batch_execute("BEGIN").unwrap();
    c.query(
        "WITH u AS (UPDATE it_orders SET amount = 7033 WHERE amount = 7003 RETURNING 1) \
         SELECT tenancy.unbind() FROM u",
        &[],
    )
    .unwrap();
    c.batch_execute("COMMIT").unwrap();
    let subject: Option<String> = su
        .query_one(
            "SELECT subject FROM tenancy.audit_log WHERE tenant_id = $1::text::uuid AND op = 'UPDATE' \
             ORDER BY id DESC LIMIT 1",
            &[&f.a_id],
        )
        .unwrap()
        .get(0);
    assert_eq!(subject.as_deref(), Some("carol"));
}

#[test]
fn no_function_parses_node_text_a_caller_gives() {
    // Found by an attacker's pass: tenancy._leaky_call(text, bool), EXECUTE granted to PUBLIC,
    // handed its text to PostgreSQL's node reader, which trusts its input: any role crashed
    // the server with SELECT tenancy._leaky_call('{CONST', true). verify() now names stored
    // expressions by where they are stored, and the function reads them itself.
    let mut c = app();
    assert_not_privileged(&mut c);
    let gone: bool = c
        .query_one(
            "SELECT to_regprocedure('tenancy._leaky_call(text, boolean)') IS NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(gone);
    expect_err(
        &mut c,
        "SELECT tenancy._leaky_expr('{CONST', 0, true)",
        &["22023"],
    );
    // A stored expression is read by its oid; an oid that names nothing reads nothing.
    let none: Option<String> = c
        .query_one("SELECT tenancy._leaky_expr('conbin', 0, true)", &[])
        .unwrap()
        .get(0);
    assert_eq!(none, None);
    c.query_one("SELECT 1", &[]).unwrap();
}

#[test]
fn a_cursor_with_hold_declared_before_the_library_loaded_holds_off_a_binding() {
    // Found by an attacker's pass: without the library preloaded, a backend's first transaction
    // declared a cursor WITH HOLD (no hook saw it), bound tenant B and committed, storing B's
    // rows; the next transaction, bound to A, fetched them.
    let f = Fixture::new();
    let mut c = app();
    assert_not_privileged(&mut c);
    // Over a function, so that declaring it plans nothing of a protected table (the
    // planner's estimate of a policy would load the library first).
    c.batch_execute(
        "CREATE FUNCTION pg_temp.rows() RETURNS SETOF text LANGUAGE plpgsql AS \
           $$ BEGIN RETURN QUERY SELECT tenant_id::text FROM it_orders; END $$; \
         BEGIN; DECLARE early CURSOR WITH HOLD FOR SELECT * FROM pg_temp.rows()",
    )
    .unwrap();
    let e = c
        .execute("SELECT tenancy.bind($1)", &[&f.token(&f.b, "u")])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55006", "{}", message(&e));
    c.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn an_expression_too_deep_to_walk_cannot_stop_verify() {
    // Found by an attacker's pass: a role with only TEMP made a temporary table with a CHECK of
    // 2,500 terms (PostgreSQL accepts it), and verify() and assert_clean failed for everyone
    // with "stack depth limit exceeded" while its session lasted.
    let mut c = app();
    assert_not_privileged(&mut c);
    let terms = vec!["a"; 2500].join(" + ");
    c.batch_execute(&format!(
        "CREATE TEMP TABLE t_deep (a int CHECK (({terms}) > -1)); INSERT INTO t_deep VALUES (1)"
    ))
    .unwrap();
    let mut op = connect(OPERATOR);
    assert_not_privileged(&mut op);
    op.query("SELECT * FROM tenancy.verify()", &[])
        .unwrap_or_else(|e| panic!("verify(): {}", message(&e)));
    let found: Option<String> = c
        .query_one(
            "SELECT tenancy._leaky_expr('conbin', oid, true) FROM pg_constraint \
              WHERE conrelid = 't_deep'::regclass",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        found.as_deref(),
        Some("an expression nested too deep to check")
    );
}

/// A transaction acts for one tenant: a savepoint rolled back brings back the session binding a
/// bind inside it replaced, but not for a transaction that has read another tenant's rows since
/// (an attacker's pass: SAVEPOINT, a session bind of A, unbind, a bind of B, B's rows read,
/// ROLLBACK TO SAVEPOINT, then A's rows read and written in the same transaction, the trail
/// naming B's token's subject).
#[test]
fn a_savepoint_rolled_back_does_not_bring_another_tenant_into_a_transaction_that_read_one() {
    let (f, mut c) = two_tenants();
    // In the simple protocol, as psql sends it (tokens are base64url and dots).
    let a = f.token(&f.a, "mallory");
    c.batch_execute(&format!("SELECT tenancy.bind('{a}', 'session')"))
        .unwrap();
    c.batch_execute(&format!(
        "BEGIN; SAVEPOINT s; SELECT tenancy.bind('{a}', 'session'); SELECT tenancy.unbind(); \
         SELECT tenancy.bind('{}')",
        f.token(&f.b, "ceo")
    ))
    .unwrap_or_else(|e| panic!("{}", message(&e)));
    assert_only(&texts(&mut c, "SELECT name FROM it_customers"), &f.b);
    c.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    let e = c
        .query("SELECT name FROM it_customers", &[])
        .expect_err("A's rows in a transaction that read B's");
    assert_refusal(&e, "42501", "rebind_refused", "after ROLLBACK TO SAVEPOINT");
    c.batch_execute("ROLLBACK").unwrap();
    // The session binding is A's again from the next transaction.
    assert_eq!(bound_tenant(&mut c), Ok(f.a_id.clone()));
    assert_only(&texts(&mut c, "SELECT name FROM it_customers"), &f.a);
}

/// Every later run of a statement's plan checks the binding against what has committed until
/// then: a PL/pgSQL loop over a query, whose body runs no query of its own, stops at its next
/// fetch once the tenant's suspension has committed (an attacker's pass: the loop fetched the
/// rest of the suspended tenant's rows seconds later).
#[test]
fn a_loop_over_a_query_stops_at_its_next_fetch_after_a_suspension() {
    let (f, mut c) = two_tenants();
    bound_tx(&mut c, &f, &f.a, true, |c| {
        c.execute(
            "INSERT INTO it_customers (id, name) SELECT g, $1 || '-secret-' || g FROM generate_series(100, 140) g",
            &[&f.a],
        )
        .unwrap();
    });
    let key = 7_100_000 + i64::from(std::process::id() % 100_000);
    let mut su = superuser();
    su.execute("SELECT pg_advisory_lock($1)", &[&key]).unwrap();
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let token = f.token(&f.a, "x");
    let looping = std::thread::spawn(move || {
        c.batch_execute("BEGIN").unwrap();
        bind(&mut c, &token);
        // The fifth row waits for the lock in a simple expression (no query starts).
        let r = c.batch_execute(&format!(
            "DO $$ DECLARE r record; v text; n int := 0; BEGIN \
               FOR r IN SELECT name FROM it_customers ORDER BY id LOOP \
                 n := n + 1; \
                 IF n = 5 THEN v := pg_advisory_lock({key})::text; END IF; \
               END LOOP; \
               RAISE EXCEPTION 'read % rows', n; END $$"
        ));
        let _ = c.batch_execute("ROLLBACK");
        r.map_err(|e| (sqlstate(&e), message(&e)))
    });
    until_waiting_for_a_lock(&mut su, pid);
    su.execute("SELECT tenancy.suspend_tenant($1)", &[&f.a])
        .unwrap();
    su.execute("SELECT pg_advisory_unlock($1)", &[&key])
        .unwrap();
    let got = looping.join().unwrap();
    su.execute("SELECT tenancy.resume_tenant($1)", &[&f.a])
        .unwrap();
    let (state, msg) = got.expect_err("the DO block always raises");
    assert_eq!(state, "42501", "{msg}");
}

/// Two concurrent removals of a role's mappings cannot each leave the other's role mapped
/// alone to a tenant with an admin: the check reads the mappings after locking every tenant
/// they name (an attacker's pass: `unmap_role` deleted a tenant's mappings made in one
/// transaction and wrote the others back, and a second `unmap_role` waiting on the row lock
/// skipped the row written back, saw its role mapped to one tenant fewer, and left it mapped
/// to the tenant with an admin alone: bound there without a token).
#[test]
fn concurrent_unmappings_cannot_leave_a_role_alone_in_a_tenant_with_an_admin() {
    let f = Fixture::new();
    let mut su = superuser();
    let (ra, rb) = (
        login_role(&mut su, "unmap_a", ""),
        login_role(&mut su, "unmap_b", ""),
    );
    // Mapped in one transaction, alike (same roles, same creation time), by the superuser.
    su.batch_execute(&format!(
        "BEGIN; SELECT tenancy.map_role('{ra}', '{a}'); SELECT tenancy.map_role('{rb}', '{a}'); COMMIT",
        a = f.a
    ))
    .unwrap();
    let mut op = connect(OPERATOR);
    op.execute(
        "SELECT tenancy.map_role($1::text::regrole, $2)",
        &[&rb, &f.b],
    )
    .unwrap();
    f.seat_admin(&f.a, "boss");
    let mut first = connect(OPERATOR);
    first.batch_execute("BEGIN").unwrap();
    first
        .execute(
            "SELECT tenancy.unmap_role($1::text::regrole, $2)",
            &[&ra, &f.a],
        )
        .unwrap();
    let pid: i32 = op.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let (rb2, b) = (rb.clone(), f.b.clone());
    let second = std::thread::spawn(move || {
        op.execute(
            "SELECT tenancy.unmap_role($1::text::regrole, $2)",
            &[&rb2, &b],
        )
        .map_err(|e| (sqlstate(&e), message(&e)))
    });
    until_waiting_for_a_lock(&mut su, pid);
    first.batch_execute("COMMIT").unwrap();
    let got = second.join().unwrap();
    let mapped: Vec<String> = su
        .query(
            "SELECT t.slug FROM tenancy.role_mapping m JOIN tenancy.tenant t ON t.id = m.tenant_id \
              WHERE m.role = $1::text::regrole ORDER BY 1",
            &[&rb],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    su.batch_execute(&format!(
        "SELECT tenancy.unmap_role('{rb}', '{}'); SELECT tenancy.unmap_role('{rb}', '{}')",
        f.a, f.b
    ))
    .ok();
    let (state, msg) = got.expect_err("the second unmapping leaves the role alone in A");
    assert_eq!(state, "42501", "{msg}");
    assert_eq!(mapped, [f.a.clone(), f.b.clone()]);
}

/// A tenant's quotas hold against concurrent transactions: each counts under the tenant's lock
/// (an attacker's pass: two sessions of a tenant admin each made 996 roles in one transaction,
/// and the tenant held 1,996 against 1,000).
#[test]
fn concurrent_transactions_cannot_pass_a_tenants_role_quota_together() {
    let f = Fixture::new();
    f.seat_admin(&f.a, "boss");
    let mut su = superuser();
    // 3 seeded roles and 996 more: one left.
    su.execute(
        "INSERT INTO tenancy.tenant_role (tenant_id, role) \
         SELECT t.id, 'filler-' || g FROM tenancy.tenant t, generate_series(1, 996) g WHERE t.slug = $1",
        &[&f.a],
    )
    .unwrap();
    let mut first = f.session_as(&f.a, "boss");
    first
        .execute("SELECT tenancy.create_role($1, 'last-one')", &[&f.a])
        .unwrap();
    let mut other = f.session_as(&f.a, "boss");
    let pid: i32 = other
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let a = f.a.clone();
    let second = std::thread::spawn(move || {
        let r = other
            .execute("SELECT tenancy.create_role($1, 'one-too-many')", &[&a])
            .map_err(|e| (sqlstate(&e), message(&e)));
        let _ = other.batch_execute("COMMIT");
        r
    });
    until_waiting_for_a_lock(&mut su, pid);
    first.batch_execute("COMMIT").unwrap();
    let got = second.join().unwrap();
    let n: i64 = su
        .query_one(
            "SELECT count(*) FROM tenancy.tenant_role r JOIN tenancy.tenant t ON t.id = r.tenant_id WHERE t.slug = $1",
            &[&f.a],
        )
        .unwrap()
        .get(0);
    su.execute(
        "DELETE FROM tenancy.tenant_role r USING tenancy.tenant t \
          WHERE t.id = r.tenant_id AND t.slug = $1 AND r.role LIKE 'filler-%'",
        &[&f.a],
    )
    .unwrap();
    let (state, msg) = got.expect_err("the second role is over the quota");
    assert_eq!(state, "54000", "{msg}");
    assert_eq!(n, 1000);
}

#[test]
fn a_mapped_role_is_not_dropped_where_its_mappings_would_outlive_it() {
    // DROP ROLE where pg_tenancy's hook does not run (a session that never loaded the library,
    // another database) left the role's mappings, and a role made later with its oid would have
    // been bound to the tenant without a token (verify() only reported it). A mapped role holds
    // USAGE on tenancy.mapped_role, a dependency PostgreSQL checks from every database: those
    // DROPs are refused (2BP01), by a role that may drop roles, as by the role itself.
    let mut su = superuser();
    let f = Fixture::on(&mut su);
    let victim = login_role(&mut su, "undroppable_app", "");
    let creator = login_role(&mut su, "undroppable_creator", "");
    su.batch_execute(&format!("ALTER ROLE {creator} CREATEROLE"))
        .unwrap();
    su.execute(
        "SELECT tenancy.map_role($1::text::regrole, $2)",
        &[&victim, &f.b],
    )
    .unwrap();
    let mappings = |su: &mut postgres::Client| -> i64 {
        su.query_one(
            "SELECT count(*) FROM tenancy.role_mapping WHERE role::text = $1",
            &[&victim],
        )
        .unwrap()
        .get(0)
    };
    // A fresh session of the cluster that does not preload the library: no hook sees the DROP.
    let mut cr = connect(&creator);
    let loaded: bool = cr
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_settings WHERE name = 'tenancy.kill_switch_wait')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        !loaded,
        "the control: the library is not loaded in this session"
    );
    expect_err(&mut cr, &format!("DROP ROLE {victim}"), &["2BP01"]);
    // Another database of the cluster.
    let mut other = config(&creator)
        .dbname("postgres")
        .connect(postgres::NoTls)
        .unwrap();
    let msg = expect_err(&mut other, &format!("DROP ROLE {victim}"), &["2BP01"]);
    assert_eq!(mappings(&mut su), 1, "{msg}");
    // The role's own DROP OWNED (or a DBA's) takes privileges granted to it: given back at once.
    let mut own = connect(&victim);
    own.batch_execute(&format!("DROP OWNED BY {victim}"))
        .unwrap();
    su.batch_execute(&format!("DROP OWNED BY {victim}"))
        .unwrap();
    let mut other = config(&creator)
        .dbname("postgres")
        .connect(postgres::NoTls)
        .unwrap();
    expect_err(&mut other, &format!("DROP ROLE {victim}"), &["2BP01"]);
    let findings: i64 = su
        .query_one(
            "SELECT count(*) FROM tenancy.verify() WHERE rule IN ('mapping_without_dependency', 'mapping_of_dropped_role')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(findings, 0);
    // Where the library is loaded, the DROP ends the mapping and the grant with the role.
    let oid: u32 = su
        .query_one("SELECT $1::text::regrole::oid", &[&victim])
        .unwrap()
        .get(0);
    cr.batch_execute("SELECT tenancy.is_operator()").unwrap();
    cr.batch_execute(&format!("DROP ROLE {victim}")).unwrap();
    assert_eq!(mappings(&mut su), 0);
    let held: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_type t, aclexplode(t.typacl) a \
              WHERE t.oid = 'tenancy.mapped_role'::regtype AND a.grantee = $1",
            &[&oid],
        )
        .unwrap()
        .get(0);
    assert_eq!(held, 0);
}

#[test]
fn drop_role_ends_the_roles_mappings_and_support_grants_and_only_for_those_who_may_drop_it() {
    // A regrole column keeps no dependency: DROP ROLE left the mapping, and a role made later
    // with the dropped role's oid would have been bound to the tenant without a token. On the
    // preloaded cluster: DROP ROLE is seen where the library is loaded at connection.
    let mut su = connect_preloaded("postgres");
    let f = Fixture::on(&mut su);
    let victim = login_role(&mut su, "dropped_app", "");
    let helper = login_role(&mut su, "dropped_op", "");
    let creator = login_role(&mut su, "role_creator", "");
    let nobody = login_role(&mut su, "role_nobody", "");
    su.batch_execute(&format!(
        "ALTER ROLE {creator} CREATEROLE; GRANT tenancy_operator TO {helper}"
    ))
    .unwrap();
    su.execute(
        "SELECT tenancy.map_role($1::text::regrole, $2)",
        &[&victim, &f.b],
    )
    .unwrap();
    su.execute("SELECT tenancy.add_member($1, 'ann', 'admin')", &[&f.a])
        .unwrap();
    let mut c = connect_preloaded(APP);
    c.batch_execute("BEGIN").unwrap();
    c.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "ann")])
        .unwrap();
    c.execute(
        "SELECT tenancy.grant_support($1::text::regrole, interval '1 hour')",
        &[&helper],
    )
    .unwrap();
    c.batch_execute("COMMIT").unwrap();
    let state = |su: &mut postgres::Client| -> (i64, i64, i64) {
        let row = su
            .query_one(
                "SELECT (SELECT count(*) FROM tenancy.role_mapping WHERE tenant_id = $1::text::uuid), \
                        (SELECT count(*) FROM tenancy.support_grant WHERE tenant_id = $2::text::uuid AND revoked_at IS NULL), \
                        (SELECT count(*) FROM tenancy.audit_log WHERE tenant_id IN ($1::text::uuid, $2::text::uuid))",
                &[&f.b_id, &f.a_id],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    let before = state(&mut su);
    assert_eq!((before.0, before.1), (1, 1), "the control: mapped, granted");

    // A role PostgreSQL does not let drop roles changes nothing, and writes nothing.
    let mut n = connect_preloaded(&nobody);
    for r in [&victim, &helper] {
        expect_err(&mut n, &format!("DROP ROLE {r}"), &["42501"]);
    }
    assert_eq!(state(&mut su), before);

    // A DROP that fails undoes the unmapping: in a transaction rolled back.
    let mut cr = connect_preloaded(&creator);
    cr.batch_execute(&format!("BEGIN; DROP ROLE {victim}, {helper}; ROLLBACK"))
        .unwrap();
    assert_eq!(state(&mut su), before);

    cr.batch_execute(&format!("DROP ROLE {victim}, {helper}"))
        .unwrap();
    let after = state(&mut su);
    assert_eq!((after.0, after.1), (0, 0), "the mapping and the grant end");
    let recorded: Vec<String> = su
        .query(
            "SELECT new_row->>'action' || ' ' || coalesce(new_row->>'role', new_row->>'operator') || ' ' || (new_row->>'reason') \
               FROM tenancy.audit_log WHERE tenant_id IN ($1::text::uuid, $2::text::uuid) AND op = 'ADMIN' AND id > 0 \
              ORDER BY occurred_at DESC, id DESC LIMIT 2",
            &[&f.b_id, &f.a_id],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut recorded = recorded;
    recorded.sort();
    assert_eq!(
        recorded,
        vec![
            format!("revoke_support {helper} DROP ROLE"),
            format!("unmap_role {victim} DROP ROLE")
        ]
    );
    for t in [&f.a, &f.b] {
        let ok: bool = su
            .query_one("SELECT ok FROM tenancy.audit_verify($1)", &[t])
            .unwrap()
            .get(0);
        assert!(ok, "{t}'s chain verifies");
    }
    let findings: i64 = su
        .query_one(
            "SELECT count(*) FROM tenancy.verify() WHERE rule = 'mapping_of_dropped_role'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(findings, 0);
}

#[test]
fn a_tables_grants_go_with_it_and_never_stop_a_revocation_elsewhere() {
    // A grant's table is a regclass column, which keeps no dependency: a grant on a dropped
    // table stayed, naming an oid a table made later may be given, and a revocation of the
    // same privilege on another table failed writing it back ("relation "18034" does not
    // exist": a Citus attacker's pass).
    let f = Fixture::new();
    let mut su = superuser();
    let owner = login_role(&mut su, "grant_owner", "");
    let s = ident("grants");
    su.batch_execute(&format!(
        "CREATE SCHEMA {s} AUTHORIZATION {owner}; SET ROLE {owner}; \
         CREATE TABLE {s}.kept (tenant_id uuid NOT NULL, id int); \
         CREATE TABLE {s}.dropped (tenant_id uuid NOT NULL, id int); \
         CREATE TABLE {s}.unprotected (tenant_id uuid NOT NULL, id int); \
         RESET ROLE; \
         SELECT tenancy.protect(t) FROM unnest(ARRAY['{s}.kept', '{s}.dropped', '{s}.unprotected']::regclass[]) t; \
         SELECT tenancy.create_role('{a}', 'reader'); \
         SELECT tenancy.grant('{a}', 'reader', t, '{{select}}') \
           FROM unnest(ARRAY['{s}.kept', '{s}.dropped', '{s}.unprotected']::regclass[]) t",
        a = f.a
    ))
    .unwrap();
    let grants = |su: &mut postgres::Client| -> i64 {
        su.query_one(
            "SELECT count(*) FROM tenancy.role_privilege WHERE tenant_id = $1::text::uuid AND role = 'reader'",
            &[&f.a_id],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(grants(&mut su), 3);
    // The table's owner drops it: its grant goes, recorded in the tenant's trail.
    let mut o = connect(&owner);
    o.batch_execute(&format!("DROP TABLE {s}.dropped")).unwrap();
    assert_eq!(grants(&mut su), 2);
    let reason: String = su
        .query_one(
            "SELECT new_row->>'reason' FROM tenancy.audit_log WHERE tenant_id = $1::text::uuid \
               AND op = 'ADMIN' AND new_row->>'action' = 'revoke' ORDER BY id DESC LIMIT 1",
            &[&f.a_id],
        )
        .unwrap()
        .get(0);
    assert_eq!(reason, "DROP TABLE");
    // Unprotected first, then dropped: the grant stays until a revocation of its privilege,
    // which is not stopped by it and does not write it back.
    su.execute(&format!("SELECT tenancy.unprotect('{s}.unprotected')"), &[])
        .unwrap();
    o.batch_execute(&format!("DROP TABLE {s}.unprotected"))
        .unwrap();
    su.execute(
        &format!("SELECT tenancy.revoke($1, 'reader', '{s}.kept', '{{select}}')"),
        &[&f.a],
    )
    .unwrap_or_else(|e| panic!("revoke on another table: {}", message(&e)));
    assert_eq!(grants(&mut su), 0);
    let ok: bool = su
        .query_one("SELECT ok FROM tenancy.audit_verify($1)", &[&f.a])
        .unwrap()
        .get(0);
    assert!(ok);
}

fn slugs_mapped(su: &mut postgres::Client, role: &str) -> Vec<String> {
    su.query(
        "SELECT t.slug FROM tenancy.role_mapping m JOIN tenancy.tenant t ON t.id = m.tenant_id \
          WHERE m.role = $1::text::regrole ORDER BY 1",
        &[&role],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// `decommission_tenant` read the tenant's mappings before locking the tenant and deleted them
/// all later: a mapping made in between was deleted unchecked. An operator mapped a role, also
/// mapped to a tenant with an admin (A) and one without (B), to the tenant being decommissioned,
/// unmapped it from B (two mappings were left), and the decommission took the third: the role
/// was bound to A alone, without a token (an attacker's pass, reproduced).
#[test]
fn a_mapping_made_while_a_tenant_is_decommissioned_waits_and_is_refused() {
    let f = Fixture::new();
    let mut su = superuser();
    let (rw, r0) = (
        login_role(&mut su, "deco_rw", ""),
        login_role(&mut su, "deco_r0", ""),
    );
    let (te, tf) = (unique("te"), unique("tf"));
    for t in [&te, &tf] {
        su.execute("SELECT tenancy.create_tenant($1)", &[t])
            .unwrap();
    }
    for (r, t) in [(&rw, &f.a), (&rw, &f.b), (&r0, &te), (&r0, &tf)] {
        su.execute("SELECT tenancy.map_role($1::text::regrole, $2)", &[r, t])
            .unwrap();
    }
    f.seat_admin(&f.a, "boss");
    // A management call of te, left open, holds te's lock: the decommission of tf waits for
    // it while checking r0 (also mapped to te).
    let mut x = connect(OPERATOR);
    x.batch_execute("BEGIN").unwrap();
    x.execute("SELECT tenancy.revoke_subject($1, 'nobody')", &[&te])
        .unwrap();
    let mut t1 = connect(OPERATOR);
    let t1_pid: i32 = t1.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let tf1 = tf.clone();
    let decommission = std::thread::spawn(move || {
        t1.query_one("SELECT tenancy.decommission_tenant($1, $1)::text", &[&tf1])
            .map(|_| ())
            .map_err(|e| (sqlstate(&e), message(&e)))
    });
    until_waiting_for_a_lock(&mut su, t1_pid);
    let mut t2 = connect(OPERATOR);
    let t2_pid: i32 = t2.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let (rw2, tf2) = (rw.clone(), tf.clone());
    let map = std::thread::spawn(move || {
        t2.execute(
            "SELECT tenancy.map_role($1::text::regrole, $2)",
            &[&rw2, &tf2],
        )
        .map(|_| ())
        .map_err(|e| (sqlstate(&e), message(&e)))
    });
    // The mapping either went through (the build before) or waits for the tenant's lock.
    let start = std::time::Instant::now();
    loop {
        if map.is_finished() {
            break;
        }
        let waiting: bool = su
            .query_opt(
                "SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1",
                &[&t2_pid],
            )
            .unwrap()
            .is_some_and(|r| r.get(0));
        if waiting || start.elapsed() > std::time::Duration::from_secs(10) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Then the role is unmapped from B: allowed only while it keeps two mappings.
    let unmapped = connect(OPERATOR)
        .execute(
            "SELECT tenancy.unmap_role($1::text::regrole, $2)",
            &[&rw, &f.b],
        )
        .map_err(|e| sqlstate(&e));
    x.batch_execute("ROLLBACK").unwrap();
    let decommissioned = decommission.join().unwrap();
    let mapped_to_tf = map.join().unwrap();
    let left = slugs_mapped(&mut su, &rw);
    assert_ne!(
        left,
        vec![f.a.clone()],
        "the role was left mapped to A alone"
    );
    decommissioned.unwrap_or_else(|e| panic!("decommission: {e:?}"));
    assert_eq!(unmapped, Err("42501".to_string()));
    let (state, msg) = mapped_to_tf.expect_err("a mapping into the decommissioned tenant");
    assert_eq!(state, "55000", "{msg}");
    assert_eq!(left, [f.a.clone(), f.b.clone()]);
}

/// A prepared transaction keeps its locks until it is ended by its owner or a superuser: a
/// tenant admin who prepared a management call held the tenant's lock, and every operator's
/// kill switch for the tenant waited for ever (an attacker's pass). Refused.
#[test]
fn a_transaction_that_made_a_management_call_cannot_be_prepared() {
    let f = Fixture::new();
    f.seat_admin(&f.a, "boss");
    // Each call a tenant admin may make that locks or writes the tenant's catalog rows
    // (set_setting updated the tenant's row without the tenant's lock: a later pass).
    let gid = unique("pg_tenancy_held");
    for call in [
        "SELECT tenancy.create_role($1, 'held')",
        "SELECT tenancy.set_setting($1, 'held', '1'::jsonb)",
        "SELECT tenancy.revoke_subject($1, 'held')",
    ] {
        let mut c = f.session_as(&f.a, "boss");
        c.execute(call, &[&f.a]).unwrap();
        let e = c
            .batch_execute(&format!("PREPARE TRANSACTION '{gid}'"))
            .unwrap_err();
        assert_eq!(sqlstate(&e), "0A000", "{call}: {}", message(&e));
    }
    // Nothing was prepared, and the tenant's kill switch is not held up.
    let mut op = connect(OPERATOR);
    op.batch_execute("SET lock_timeout = '5s'").unwrap();
    op.execute("SELECT tenancy.suspend_tenant($1, 'held')", &[&f.a])
        .unwrap_or_else(|e| panic!("suspend: {}", message(&e)));
    let prepared: i64 = superuser()
        .query_one(
            "SELECT count(*) FROM pg_prepared_xacts WHERE gid = $1",
            &[&gid],
        )
        .unwrap()
        .get(0);
    assert_eq!(prepared, 0);
}

/// A tenant admin who left a management call's transaction open held every operator's kill
/// switch for the tenant: `suspend_tenant`, `revoke_subject` and `decommission_tenant` waited on
/// the tenant's lock for as long as the session stayed (an attacker's pass, as a tenant admin).
/// After `tenancy.kill_switch_wait` (`tenancy.decommission_wait` for a decommission) the
/// holder's session is ended, its change rolled back, and the kill switch goes through,
/// recorded with the sessions it ended. Another admin's revocation still waits, and an
/// operator's own open transaction is waited for, not ended.
#[test]
fn an_operators_kill_switch_ends_a_tenant_admins_open_management_transaction() {
    let f = Fixture::new();
    f.seat_admin(&f.a, "boss");
    f.seat_admin(&f.a, "boss2");
    let mut su = superuser();
    // A tenant admin's session holding the tenant's lock in an open management call, and its
    // process id.
    let holder = || -> (postgres::Client, i32) {
        let mut admin = f.session_as(&f.a, "boss");
        let pid: i32 = admin
            .query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        admin
            .execute(
                "SELECT tenancy.set_setting($1, 'held', '1'::jsonb)",
                &[&f.a],
            )
            .unwrap();
        (admin, pid)
    };
    // An operator's session with a short kill_switch_wait (or decommission_wait).
    let operator = |wait: &str| -> postgres::Client {
        let mut op = connect(OPERATOR);
        op.batch_execute(&format!(
            "SET {wait} = '200ms'; SET statement_timeout = '30s'"
        ))
        .unwrap();
        op
    };
    // The sessions the latest record of `action` says its kill switch ended.
    let ended_by = |su: &mut postgres::Client, action: &str| -> String {
        su.query_one(
            "SELECT coalesce(new_row->>'ended_sessions', '') FROM tenancy.audit_log \
              WHERE tenant_id = $1::text::uuid AND op = 'ADMIN' AND new_row->>'action' = $2 \
              ORDER BY id DESC LIMIT 1",
            &[&f.a_id, &action],
        )
        .unwrap()
        .get(0)
    };
    for (call, action, wait) in [
        (
            "SELECT tenancy.revoke_subject($1, 'someone')",
            "revoke_subject",
            "tenancy.kill_switch_wait",
        ),
        (
            "SELECT tenancy.suspend_tenant($1, 'held')",
            "suspend_tenant",
            "tenancy.kill_switch_wait",
        ),
    ] {
        let (mut admin, pid) = holder();
        // Another admin's revocation waits for it (cancelled here by its statement_timeout).
        let mut other = f.session_as(&f.a, "boss2");
        other
            .batch_execute("SET LOCAL statement_timeout = '300ms'")
            .unwrap();
        let e = other
            .execute("SELECT tenancy.revoke_subject($1, 'someone')", &[&f.a])
            .unwrap_err();
        assert_eq!(sqlstate(&e), "57014", "{action}: {}", message(&e));
        other.batch_execute("ROLLBACK").unwrap();
        // An operator's own open management transaction is waited for, not ended.
        let mut op2 = connect(OPERATOR);
        op2.batch_execute("BEGIN").unwrap();
        let mut op = operator(wait);
        op.execute(call, &[&f.a])
            .unwrap_or_else(|e| panic!("{action}: {}", message(&e)));
        assert!(
            admin.execute("SELECT 1", &[]).is_err(),
            "{action}: the holder's session was ended"
        );
        let kept: bool = su
            .query_one(
                "SELECT settings ? 'held' FROM tenancy.tenant WHERE slug = $1",
                &[&f.a],
            )
            .unwrap()
            .get(0);
        assert!(!kept, "{action}: the holder's change rolled back");
        assert_eq!(
            ended_by(&mut su, action),
            format!("[{pid}]"),
            "{action}: recorded"
        );
        // The operator's transaction holding the lock: the next kill switch waits for it.
        op2.execute(
            "SELECT tenancy.set_setting($1, 'op_held', '1'::jsonb)",
            &[&f.a],
        )
        .unwrap();
        op.batch_execute("SET statement_timeout = '1s'").unwrap();
        let e = op
            .execute("SELECT tenancy.revoke_subject($1, 'someone else')", &[&f.a])
            .unwrap_err();
        assert_eq!(sqlstate(&e), "57014", "{action}: {}", message(&e));
        op2.batch_execute("ROLLBACK").unwrap();
    }
    su.execute("SELECT tenancy.resume_tenant($1)", &[&f.a])
        .unwrap();
    // The operator's other calls that take access away, and a holder that is a table's owner
    // in an open DROP TABLE (it locks every tenant with a grant on the table).
    let owner = login_role(&mut su, "kill_switch_owner", "");
    let table = format!("public.{}", ident("kill_switch_t"));
    su.batch_execute(&format!(
        "CREATE TABLE {table} (id int, tenant_id uuid NOT NULL); SELECT tenancy.protect('{table}'); \
         ALTER TABLE {table} OWNER TO {owner}"
    ))
    .unwrap();
    su.execute("SELECT tenancy.create_role($1, 'ks_reader')", &[&f.a])
        .unwrap();
    let mapped = login_role(&mut su, "kill_switch_mapped", "");
    for (setup, call, action) in [
        (
            "SELECT tenancy.add_member($1, 'ks_member', 'member')".to_string(),
            "SELECT tenancy.remove_member($1, 'ks_member', 'member')".to_string(),
            "remove_member",
        ),
        (
            format!("SELECT tenancy.grant($1, 'ks_reader', '{table}', '{{select}}')"),
            format!("SELECT tenancy.revoke($1, 'ks_reader', '{table}', '{{select}}')"),
            "revoke",
        ),
        (
            format!("SELECT tenancy.map_role('{mapped}', $1)"),
            format!("SELECT tenancy.unmap_role('{mapped}', $1)"),
            "unmap_role",
        ),
    ] {
        su.execute(&setup, &[&f.a]).unwrap();
        let (mut admin, pid) = holder();
        let mut op = operator("tenancy.kill_switch_wait");
        op.execute(&call, &[&f.a])
            .unwrap_or_else(|e| panic!("{action}: {}", message(&e)));
        assert!(admin.execute("SELECT 1", &[]).is_err(), "{action}");
        assert_eq!(
            ended_by(&mut su, action),
            format!("[{pid}]"),
            "{action}: recorded"
        );
    }
    su.execute(
        &format!("SELECT tenancy.grant($1, 'ks_reader', '{table}', '{{select}}')"),
        &[&f.a],
    )
    .unwrap();
    let mut o = connect(&owner);
    o.batch_execute(&format!("BEGIN; DROP TABLE {table}"))
        .unwrap();
    let mut op = operator("tenancy.kill_switch_wait");
    op.execute(
        "SELECT tenancy.revoke_subject($1, 'after the owner')",
        &[&f.a],
    )
    .unwrap_or_else(|e| panic!("revoke_subject behind a DROP TABLE: {}", message(&e)));
    assert!(
        o.batch_execute("COMMIT").is_err(),
        "the owner's session was ended"
    );
    let still: bool = su
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .unwrap()
        .get(0);
    assert!(still, "the DROP rolled back");
    // decommission_tenant, after tenancy.decommission_wait.
    let (mut admin, _) = holder();
    operator("tenancy.decommission_wait")
        .execute("SELECT tenancy.decommission_tenant($1, $1)", &[&f.a])
        .unwrap_or_else(|e| panic!("decommission: {}", message(&e)));
    assert!(admin.execute("SELECT 1", &[]).is_err());
}

/// A kill switch that ends another tenant's holder (a role mapped to both: `unmap_role` and
/// `decommission_tenant` lock every tenant the role is mapped to) records it in that tenant's
/// trail (`end_sessions`), not only in its own; a decommission held by another tenant's admin
/// waited for ever; a kill switch that fails after ending a session says so in a NOTICE and
/// the server's log, which its rollback does not take back (attackers' passes).
#[test]
fn a_kill_switch_says_whom_it_ended_in_each_tenant_and_when_it_fails() {
    let f = Fixture::new();
    let mut su = superuser();
    let c = unique("tc");
    su.execute("SELECT tenancy.create_tenant($1)", &[&c])
        .unwrap();
    f.seat_admin(&f.b, "boss");
    let r = login_role(&mut su, "ks_multi", "");
    for t in [&f.a, &f.b] {
        su.execute("SELECT tenancy.map_role($1::text::regrole, $2)", &[&r, t])
            .unwrap();
    }
    let hold_b = || -> (postgres::Client, i32) {
        let mut admin = f.session_as(&f.b, "boss");
        let pid: i32 = admin
            .query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        admin
            .execute(
                "SELECT tenancy.set_setting($1, 'held', '1'::jsonb)",
                &[&f.b],
            )
            .unwrap();
        (admin, pid)
    };
    let end_records = |su: &mut postgres::Client| -> Vec<String> {
        su.query(
            "SELECT new_row->>'ended_sessions' FROM tenancy.audit_log WHERE tenant_id = $1::text::uuid \
               AND op = 'ADMIN' AND new_row->>'action' = 'end_sessions' ORDER BY id",
            &[&f.b_id],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    // Removing A's mapping would leave the role mapped to B alone, which has an admin: refused,
    // after B's holder was ended; the NOTICE says so.
    let (mut admin, pid) = hold_b();
    let (mut op, notices) = with_notices(OPERATOR);
    op.batch_execute("SET tenancy.kill_switch_wait = '200ms'; SET statement_timeout = '25s'")
        .unwrap();
    let e = op
        .execute(
            "SELECT tenancy.unmap_role($1::text::regrole, $2)",
            &[&r, &f.a],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    assert!(admin.execute("SELECT 1", &[]).is_err(), "B's holder ended");
    assert!(
        notices
            .lock()
            .unwrap()
            .iter()
            .any(|n| n.contains("ended sessions") && n.contains(&pid.to_string())),
        "{:?}",
        notices.lock().unwrap()
    );
    assert!(end_records(&mut su).is_empty(), "rolled back with the call");
    // Mapped to C too, the removal goes through, and B's trail records whom it ended there.
    su.execute("SELECT tenancy.map_role($1::text::regrole, $2)", &[&r, &c])
        .unwrap();
    let (mut admin, pid) = hold_b();
    op.execute(
        "SELECT tenancy.unmap_role($1::text::regrole, $2)",
        &[&r, &f.a],
    )
    .unwrap_or_else(|e| panic!("unmap_role: {}", message(&e)));
    assert!(admin.execute("SELECT 1", &[]).is_err());
    assert_eq!(end_records(&mut su), vec![format!("[{pid}]")]);
    // A decommission of A, the role mapped to A, B and C: B's holder is ended after
    // decommission_wait, not waited for.
    su.execute(
        "SELECT tenancy.map_role($1::text::regrole, $2)",
        &[&r, &f.a],
    )
    .unwrap();
    let (mut admin, pid) = hold_b();
    op.batch_execute("SET tenancy.decommission_wait = '200ms'")
        .unwrap();
    op.execute("SELECT tenancy.decommission_tenant($1, $1)", &[&f.a])
        .unwrap_or_else(|e| panic!("decommission: {}", message(&e)));
    assert!(admin.execute("SELECT 1", &[]).is_err());
    assert_eq!(end_records(&mut su).last(), Some(&format!("[{pid}]")));
}

/// A bound session holding the tenant's rows locked (`SELECT ... FOR UPDATE`, `FOR KEY SHARE`)
/// took no write lock, so a decommission neither waited for it nor ended it, and its deletion
/// waited on the rows for ever (an attacker's pass). A SELECT that locks rows holds the
/// tenant's write lock as a write does.
#[test]
fn a_session_holding_a_tenants_rows_locked_does_not_hold_a_decommission() {
    // Also from a function the leader of a parallel plan runs (no query-start work runs in
    // parallel mode: a later pass locked the rows so, without the write lock).
    let parallel = "CREATE FUNCTION pg_temp.lk() RETURNS int LANGUAGE plpgsql PARALLEL RESTRICTED AS \
                      $f$ DECLARE n int := 0; r record; BEGIN \
                        FOR r IN SELECT * FROM it_orders FOR UPDATE LOOP n := n + 1; END LOOP; RETURN n; END $f$; \
                    SELECT txid_current(); \
                    SET LOCAL parallel_setup_cost = 0; SET LOCAL parallel_tuple_cost = 0; \
                    SET LOCAL min_parallel_table_scan_size = 0; SET LOCAL enable_indexscan = off; \
                    SET LOCAL enable_bitmapscan = off; SET LOCAL enable_indexonlyscan = off; \
                    SELECT pg_temp.lk(), count(*) FROM it_orders";
    for lock in [
        "SELECT id FROM it_orders FOR UPDATE",
        "SELECT id FROM it_orders FOR KEY SHARE",
        parallel,
    ] {
        let f2 = Fixture::new();
        let mut w = f2.session_as(&f2.a, "writer");
        w.execute("INSERT INTO it_orders (amount) VALUES (1)", &[])
            .unwrap();
        w.batch_execute("COMMIT").unwrap();
        let mut holder = f2.session_as(&f2.a, "writer");
        let pid: i32 = holder
            .query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        holder
            .batch_execute(lock)
            .unwrap_or_else(|e| panic!("{lock}: {}", message(&e)));
        let mut op = connect(OPERATOR);
        op.batch_execute("SET tenancy.decommission_wait = '200ms'; SET statement_timeout = '25s'")
            .unwrap();
        let cert: serde_json::Value = op
            .query_one("SELECT tenancy.decommission_tenant($1, $1)::text", &[&f2.a])
            .map(|r| serde_json::from_str(&r.get::<_, String>(0)).unwrap())
            .unwrap_or_else(|e| panic!("{lock}: decommission: {}", message(&e)));
        assert!(holder.execute("SELECT 1", &[]).is_err(), "{lock}: ended");
        assert_eq!(
            cert["ended_sessions"],
            serde_json::json!([pid]),
            "{lock}: the certificate lists it"
        );
    }
    // A session that holds none of the tenant's locks but its row (a foreign key's check from
    // another tenant's session, PostgreSQL's own, without row security): the deletion waits
    // `tenancy.decommission_wait` for it, then fails (55P03) with nothing changed, instead of
    // waiting for ever with every writer of the tenant held off (a later pass).
    let f3 = Fixture::new();
    let mut su = superuser();
    let refs = format!("public.{}", ident("cross_refs"));
    let mut w = f3.session_as(&f3.a, "writer");
    let order: i64 = w
        .query_one(
            "INSERT INTO it_orders (amount) VALUES (1) RETURNING id",
            &[],
        )
        .unwrap()
        .get(0);
    w.batch_execute("COMMIT").unwrap();
    su.batch_execute(&format!(
        "CREATE TABLE {refs} (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int, \
           order_id bigint REFERENCES it_orders (id)); SELECT tenancy.protect('{refs}'); \
         GRANT INSERT ON {refs} TO {APP}"
    ))
    .unwrap();
    let mut other = f3.session_as(&f3.b, "writer");
    other
        .execute(
            &format!("INSERT INTO {refs} (id, order_id) VALUES (1, $1)"),
            &[&order],
        )
        .unwrap();
    let mut op = connect(OPERATOR);
    op.batch_execute("SET tenancy.decommission_wait = '1s'; SET statement_timeout = '25s'")
        .unwrap();
    let started = std::time::Instant::now();
    let e = op
        .execute("SELECT tenancy.decommission_tenant($1, $1)", &[&f3.a])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55P03", "{}", message(&e));
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    other.batch_execute("ROLLBACK").unwrap();
    su.batch_execute(&format!("DROP TABLE {refs}")).unwrap();
}

/// A grant made while its table was unprotected or dropped stayed on the table (the grant took
/// no lock of the table): it waits for them now, or they for it, and the grant goes. A grant
/// that outlived its table anyway (`verify()`'s `grant_on_unprotected_table`) is revoked by
/// its fix, also where the role holds the privilege on every table.
#[test]
fn a_grant_racing_unprotect_goes_with_the_tables_protection() {
    let f = Fixture::new();
    f.seat_admin(&f.a, "boss");
    let mut su = superuser();
    let table = format!("public.{}", ident("racing_grant"));
    su.batch_execute(&format!(
        "CREATE TABLE {table} (id int, tenant_id uuid NOT NULL); SELECT tenancy.protect('{table}')"
    ))
    .unwrap();
    su.execute("SELECT tenancy.create_role($1, 'racer')", &[&f.a])
        .unwrap();
    let mut admin = f.session_as(&f.a, "boss");
    admin
        .execute(
            &format!("SELECT tenancy.grant($1, 'racer', '{table}', '{{select}}')"),
            &[&f.a],
        )
        .unwrap();
    let t2 = table.clone();
    let unprotect = std::thread::spawn(move || {
        connect(OPERATOR)
            .execute(&format!("SELECT tenancy.unprotect('{t2}')"), &[])
            .map(|_| ())
            .map_err(|e| message(&e))
    });
    let pid: i32 = {
        // The unprotect waits for the grant's transaction (its lock of the table).
        std::thread::sleep(std::time::Duration::from_millis(300));
        su.query_one(
            "SELECT pid FROM pg_stat_activity WHERE query LIKE '%tenancy.unprotect(%' AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0)
    };
    until_waiting_for_a_lock(&mut su, pid);
    admin.batch_execute("COMMIT").unwrap();
    unprotect.join().unwrap().unwrap();
    let left: i64 = su
        .query_one(
            &format!(
                "SELECT count(*) FROM tenancy.role_privilege WHERE relid = '{table}'::regclass"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the grant went with the protection");
    // A stale grant of a role that holds the privilege on every table too: verify's fix
    // revokes it.
    su.execute(
        "SELECT tenancy.grant($1, 'racer', NULL, '{select}')",
        &[&f.a],
    )
    .unwrap();
    su.execute(
        &format!("INSERT INTO tenancy.role_privilege (tenant_id, role, relid, privilege) VALUES ($1::text::uuid, 'racer', '{table}', 'select')"),
        &[&f.a_id],
    )
    .unwrap();
    let fix: String = connect(OPERATOR)
        .query_one(
            "SELECT fix FROM tenancy.verify() WHERE rule = 'grant_on_unprotected_table' AND object LIKE '%' || $1 || '%'",
            &[&f.a_id],
        )
        .unwrap()
        .get(0);
    connect(OPERATOR)
        .batch_execute(&fix)
        .unwrap_or_else(|e| panic!("{fix}: {}", message(&e)));
    let left: i64 = su
        .query_one(
            &format!(
                "SELECT count(*) FROM tenancy.role_privilege WHERE relid = '{table}'::regclass"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    su.batch_execute(&format!("DROP TABLE {table}")).unwrap();
}

/// Changes that waited for a decommission's lock find the tenant decommissioned: a bound
/// admin's `revoke_token` and `grant_support`, a key admin's `add_key`, and a second
/// `decommission_tenant` landed in it (a row the signed certificate had listed removed, a live
/// support grant, a key, a second certificate: an attacker's pass).
#[test]
fn changes_that_waited_for_a_decommission_find_the_tenant_decommissioned() {
    let f = Fixture::new();
    f.seat_admin(&f.a, "boss");
    let mut op = connect(OPERATOR);
    op.batch_execute("BEGIN").unwrap();
    op.execute("SELECT tenancy.decommission_tenant($1, $1)", &[&f.a])
        .unwrap_or_else(|e| panic!("decommission: {}", message(&e)));
    let mut waiting = Vec::new();
    for (who, sql) in [
        ("admin", "SELECT tenancy.revoke_token('waited-jti')".to_string()),
        (
            "admin",
            format!("SELECT tenancy.grant_support('{OPERATOR}', interval '1 hour')"),
        ),
        (
            KEY_ADMIN,
            format!(
                "SELECT tenancy.add_key('waited-{}', 'HS256', 'another-secret-another-secret-0123456789', tenant => '{}')",
                std::process::id(),
                f.a
            ),
        ),
        (OPERATOR, format!("SELECT tenancy.decommission_tenant('{0}', '{0}')", f.a)),
    ] {
        // Bound (an admin) before the decommission is committed.
        let mut c = if who == "admin" {
            f.session_as(&f.a, "boss")
        } else {
            let mut c = connect(who);
            c.batch_execute("BEGIN").unwrap();
            c
        };
        waiting.push(std::thread::spawn(move || {
            let r = c.batch_execute(&sql);
            c.batch_execute("ROLLBACK").ok();
            (sql, r.err().map(|e| (sqlstate(&e), message(&e))))
        }));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    op.batch_execute("COMMIT").unwrap();
    for w in waiting {
        let (sql, e) = w.join().unwrap();
        let (state, msg) =
            e.unwrap_or_else(|| panic!("{sql}: succeeded on a decommissioned tenant"));
        assert_eq!(state, "55000", "{sql}: {msg}");
    }
    let mut su = superuser();
    let certificates: i64 = su
        .query_one(
            "SELECT count(*) FROM tenancy.audit_log WHERE tenant_id = $1::text::uuid \
               AND op = 'ADMIN' AND new_row->>'action' = 'decommission_tenant'",
            &[&f.a_id],
        )
        .unwrap()
        .get(0);
    assert_eq!(certificates, 1);
}

/// A role dropped while a mapping of it was being made kept the mapping (DROP ROLE's hook read
/// the mappings before the new one was committed): an attacker's pass. DROP ROLE's hook locks
/// the role first, as `map_role` and `grant_support` do, so one waits for the other.
#[test]
fn a_role_dropped_while_it_is_being_mapped_keeps_no_mapping() {
    let mut su = connect_preloaded("postgres");
    let f = Fixture::on(&mut su);
    let victim = login_role(&mut su, "mapped_while_dropped", "");
    let creator = login_role(&mut su, "drops_while_mapped", "");
    su.batch_execute(&format!("ALTER ROLE {creator} CREATEROLE"))
        .unwrap();
    let oid: u32 = su
        .query_one("SELECT oid FROM pg_roles WHERE rolname = $1", &[&victim])
        .unwrap()
        .get(0);
    let mut op = connect_preloaded(OPERATOR);
    op.batch_execute("BEGIN").unwrap();
    op.execute(
        "SELECT tenancy.map_role($1::text::regrole, $2)",
        &[&victim, &f.b],
    )
    .unwrap();
    let mut cr = connect_preloaded(&creator);
    let drop = std::thread::spawn(move || cr.batch_execute(&format!("DROP ROLE {victim}")));
    std::thread::sleep(std::time::Duration::from_millis(500));
    op.batch_execute("COMMIT").unwrap();
    drop.join()
        .unwrap()
        .unwrap_or_else(|e| panic!("DROP ROLE: {}", message(&e)));
    let left: i64 = su
        .query_one(
            "SELECT count(*) FROM tenancy.role_mapping WHERE role::oid = $1",
            &[&oid],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the mapping of the dropped role");
    // The other order: a mapping of a role dropped while it waited is refused.
    let victim = login_role(&mut su, "dropped_while_mapping", "");
    let mut cr = connect_preloaded(&creator);
    cr.batch_execute(&format!("BEGIN; DROP ROLE {victim}"))
        .unwrap();
    let mut op = connect_preloaded(OPERATOR);
    let rid: u32 = su
        .query_one("SELECT oid FROM pg_roles WHERE rolname = $1", &[&victim])
        .unwrap()
        .get(0);
    let b = f.b.clone();
    let map = std::thread::spawn(move || {
        op.execute("SELECT tenancy.map_role($1::oid::regrole, $2)", &[&rid, &b])
            .map(|_| ())
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    cr.batch_execute("COMMIT").unwrap();
    let e = map.join().unwrap().expect_err("mapped a dropped role");
    assert_eq!(sqlstate(&e), "42704", "{}", message(&e));
}

/// The platform's token revocations were counted under `pg_advisory_xact_lock` of a key of
/// pg_tenancy's: any role could take it (in a prepared transaction, for ever) and stop every
/// operator's `revoke_token` (an attacker's pass). The lock is one no SQL can take now.
#[test]
fn no_role_can_hold_the_platforms_token_revocations() {
    let mut app = app();
    app.batch_execute("BEGIN; SELECT pg_advisory_xact_lock(x'74656e616e637901'::bigint)")
        .unwrap();
    let mut op = connect(OPERATOR);
    op.batch_execute("SET lock_timeout = '5s'").unwrap();
    op.execute("SELECT tenancy.revoke_token($1)", &[&unique("jti")])
        .unwrap_or_else(|e| panic!("revoke_token: {}", message(&e)));
    app.batch_execute("ROLLBACK").unwrap();
}

/// Under REPEATABLE READ, a management call read the catalog afresh and wrote with the
/// transaction's older snapshot: an `unmap_role` of a mapping made after the transaction began
/// reported success, was recorded, and removed nothing (an attacker's pass). It fails with
/// 40001 now, to be run again, and leaves no record.
#[test]
fn an_unmapping_in_an_older_snapshot_fails_rather_than_removing_nothing() {
    let f = Fixture::new();
    let mut su = superuser();
    let r = login_role(&mut su, "rr_map", "");
    let mut t1 = connect(OPERATOR);
    t1.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .unwrap();
    connect(OPERATOR)
        .execute(
            "SELECT tenancy.map_role($1::text::regrole, $2)",
            &[&r, &f.b],
        )
        .unwrap();
    let records = |su: &mut postgres::Client| -> i64 {
        su.query_one(
            "SELECT count(*) FROM tenancy.audit_log WHERE tenant_id = $1::text::uuid \
               AND new_row->>'action' = 'unmap_role'",
            &[&f.b_id],
        )
        .unwrap()
        .get(0)
    };
    let e = t1
        .execute(
            "SELECT tenancy.unmap_role($1::text::regrole, $2)",
            &[&r, &f.b],
        )
        .map(|_| ())
        .and_then(|_| t1.batch_execute("COMMIT"));
    t1.batch_execute("ROLLBACK").ok();
    let e = e.expect_err("the unmapping of a row its snapshot does not show");
    assert_eq!(sqlstate(&e), "40001", "{}", message(&e));
    assert_eq!(slugs_mapped(&mut su, &r), vec![f.b.clone()]);
    assert_eq!(records(&mut su), 0);
    // Run again, it removes the mapping.
    connect(OPERATOR)
        .execute(
            "SELECT tenancy.unmap_role($1::text::regrole, $2)",
            &[&r, &f.b],
        )
        .unwrap();
    assert!(slugs_mapped(&mut su, &r).is_empty());
}

/// A change that waited for the tenant's lock is checked against the tenant as the lock's
/// holder left it: an operator's `remove_member` that waited for a tenant admin's `set_setting`
/// of richer `default_roles` checked the old, empty ones and let the subject fall back to the
/// new (an attacker's pass); `set_setting` and `set_limit` that waited for a decommission
/// wrote to the tombstone.
#[test]
fn a_change_that_waited_for_the_tenants_lock_sees_what_the_holder_committed() {
    let f = Fixture::new();
    let mut su = superuser();
    su.batch_execute(&format!(
        "SELECT tenancy.set_setting('{a}', 'default_roles', '[]'::jsonb); \
         SELECT tenancy.create_role('{a}', 'editor'); \
         SELECT tenancy.grant('{a}', 'editor', 'it_orders', '{{select,insert}}'); \
         SELECT tenancy.create_role('{a}', 'looker'); \
         SELECT tenancy.add_member('{a}', 'sam', 'looker')",
        a = f.a
    ))
    .unwrap();
    f.seat_admin(&f.a, "boss");
    let mut admin = f.session_as(&f.a, "boss");
    admin
        .execute(
            "SELECT tenancy.set_setting($1, 'default_roles', '[\"editor\"]'::jsonb)",
            &[&f.a],
        )
        .unwrap();
    let mut op = connect(OPERATOR);
    let pid: i32 = op.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let a = f.a.clone();
    let removal = std::thread::spawn(move || {
        op.execute("SELECT tenancy.remove_member($1, 'sam', 'looker')", &[&a])
            .map(|_| ())
            .map_err(|e| (sqlstate(&e), message(&e)))
    });
    until_waiting_for_a_lock(&mut su, pid);
    admin.batch_execute("COMMIT").unwrap();
    let (state, msg) = removal
        .join()
        .unwrap()
        .expect_err("the subject would fall back to the richer default_roles");
    assert_eq!(state, "42501", "{msg}");

    // Settings and limits of a tenant decommissioned while they waited are refused.
    let mut deco = connect(OPERATOR);
    deco.batch_execute("BEGIN").unwrap();
    deco.query_one("SELECT tenancy.decommission_tenant($1, $1)::text", &[&f.b])
        .unwrap();
    let mut waiting = Vec::new();
    for call in [
        "SELECT tenancy.set_setting($1, 'model', '\"x\"'::jsonb)",
        "SELECT tenancy.set_limit($1, 'work_mem', '\"64MB\"'::jsonb)",
    ] {
        let mut op = connect(OPERATOR);
        let pid: i32 = op.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        let b = f.b.clone();
        waiting.push((
            call,
            std::thread::spawn(move || {
                op.execute(call, &[&b])
                    .map(|_| ())
                    .map_err(|e| (sqlstate(&e), message(&e)))
            }),
        ));
        until_waiting_for_a_lock(&mut su, pid);
    }
    deco.batch_execute("COMMIT").unwrap();
    for (call, w) in waiting {
        let (state, msg) = w.join().unwrap().expect_err(call);
        assert_eq!(state, "55000", "{call}: {msg}");
    }
    let row: (String, String) = su
        .query_one(
            "SELECT settings::text, limits::text FROM tenancy.tenant WHERE id = $1::text::uuid",
            &[&f.b_id],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(row, ("{}".to_string(), "{}".to_string()));
}
