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
    su.execute("SELECT tenancy.add_member($1, 'boss', 'admin')", &[&f.a])
        .unwrap();
    let mut admin = app();
    admin.batch_execute("BEGIN").unwrap();
    bind(&mut admin, &f.token(&f.a, "boss"));
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
