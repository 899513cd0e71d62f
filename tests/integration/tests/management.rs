//! Management calls check their caller; key material is unreadable; the tenants view shows a
//! bound session only its own tenant; failed binds are logged as security events.

mod common;
use common::*;

#[test]
fn application_roles_cannot_manage_tenants_or_keys() {
    let f = Fixture::new();
    let mut c = app();
    for sql in [
        "SELECT tenancy.create_tenant('sneaky')".to_string(),
        format!("SELECT tenancy.suspend_tenant('{}')", f.a),
        format!("SELECT tenancy.resume_tenant('{}')", f.a),
        format!("SELECT tenancy.add_key('mine', 'HS256', '{HS_SECRET}')"),
        format!("SELECT tenancy.revoke_key('{}')", f.kid),
        format!("SELECT tenancy.map_role('{APP}', '{}')", f.a),
        format!("SELECT tenancy.unmap_role('{APP}', '{}')", f.a),
        format!("SELECT tenancy.set_setting('{}', 'model', '\"x\"')", f.a),
    ] {
        expect_err(&mut c, &sql, &["42501"]);
    }
}

#[test]
fn operators_manage_tenants_without_being_superusers() {
    let mut op = connect(OPERATOR);
    assert_not_privileged(&mut op);
    let slug = unique("op");
    op.execute(
        "SELECT tenancy.create_tenant($1, 'Made by operator')",
        &[&slug],
    )
    .unwrap();
    op.execute("SELECT tenancy.suspend_tenant($1, 'test')", &[&slug])
        .unwrap();
    let status: String = op
        .query_one(
            "SELECT status FROM tenancy.tenants WHERE slug = $1",
            &[&slug],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "suspended");
    op.execute("SELECT tenancy.resume_tenant($1)", &[&slug])
        .unwrap();
    // Keys are the key admins' (separation of duties): an operator cannot register one.
    let kid = unique("opk");
    expect_err(
        &mut op,
        &format!("SELECT tenancy.add_key('{kid}', 'HS256', '{HS_SECRET}', '{slug}')"),
        &["42501"],
    );
    let mut ka = connect(KEY_ADMIN);
    assert_not_privileged(&mut ka);
    ka.execute(
        "SELECT tenancy.add_key($1, 'HS256', $2, $3)",
        &[&kid, &HS_SECRET, &slug],
    )
    .unwrap();
    for c in [&mut op, &mut ka] {
        let n: i64 = c
            .query_one("SELECT count(*) FROM tenancy.keys WHERE kid = $1", &[&kid])
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "operators and key admins read key metadata");
    }
}

#[test]
fn key_material_is_unreadable_by_application_and_operators() {
    let f = Fixture::new();
    for user in [APP, OPERATOR] {
        let mut c = connect(user);
        expect_err(&mut c, "SELECT * FROM tenancy.signing_key", &["42501"]);
        expect_err(&mut c, "COPY tenancy.signing_key TO STDOUT", &["42501"]);
        let cols: Vec<String> = c
            .query(
                "SELECT column_name::text FROM information_schema.columns \
                 WHERE table_schema = 'tenancy' AND table_name = 'keys'",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(!cols.iter().any(|c| c.contains("material")), "{cols:?}");
    }
    // pg_dump run as the application role does not get the secrets.
    let out = std::process::Command::new("/usr/lib/postgresql/15/bin/pg_dump")
        .args([
            "-h",
            &std::env::var("PGHOST").unwrap(),
            "-p",
            &std::env::var("PGPORT").unwrap(),
        ])
        .args(["-U", APP, "-d", "tenancy_it"])
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !all.contains(HS_SECRET),
        "pg_dump as the application role leaked a key"
    );
    // Errors about keys never echo the material.
    let mut su = superuser();
    let secret = "not-long-enough-secret";
    let e = su
        .execute(
            "SELECT tenancy.add_key($1, 'HS256', $2)",
            &[&unique("k"), &secret],
        )
        .unwrap_err();
    assert!(!format!("{e:?}").contains(secret));
    let _ = f;
}

#[test]
fn tenants_view_shows_a_bound_session_only_its_tenant() {
    let f = Fixture::new();
    let mut c = app();
    let n: i64 = c
        .query_one("SELECT count(*) FROM tenancy.tenants", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "an unbound application session sees no tenant");
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "u")])
        .unwrap();
    let slugs: Vec<String> = tx
        .query("SELECT slug FROM tenancy.tenants", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(slugs, vec![f.a.clone()]);
    tx.rollback().unwrap();
    let mut op = connect(OPERATOR);
    let n: i64 = op
        .query_one(
            "SELECT count(*) FROM tenancy.tenants WHERE slug IN ($1, $2)",
            &[&f.a, &f.b],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "operators see every tenant's metadata");
}

#[test]
fn tenant_settings_read_by_the_bound_session_and_written_by_its_admin_only() {
    let f = Fixture::new();
    let mut su = superuser();
    su.execute(
        "SELECT tenancy.set_setting($1, 'model', '\"small\"')",
        &[&f.a],
    )
    .unwrap();
    su.execute(
        "INSERT INTO tenancy.member (tenant_id, subject, role) VALUES ($1::text::uuid, 'root-admin', 'admin')",
        &[&f.a_id],
    )
    .unwrap();
    let mut c = app();
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "someone")])
        .unwrap();
    let m: String = tx
        .query_one("SELECT tenancy.setting('model')::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(m, "\"small\"");
    let e = tx
        .execute(
            "SELECT tenancy.set_setting($1, 'model', '\"big\"')",
            &[&f.a],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "a member is not an admin");
    tx.rollback().unwrap();
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "root-admin")])
        .unwrap();
    tx.execute(
        "SELECT tenancy.set_setting($1, 'model', '\"big\"')",
        &[&f.a],
    )
    .unwrap();
    let e = tx
        .execute(
            "SELECT tenancy.set_setting($1, 'model', '\"big\"')",
            &[&f.b],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "an admin of A cannot touch B");
    tx.commit().unwrap();
}

/// A tenant's settings are read with it on every backend's first bind and kept in its cache:
/// a tenant admin's settings of 125 MB each made a member's bind take 1 GB and a thousand
/// add_member calls in one transaction 24 GB (an attacker's pass). One value is at most
/// 64 KiB as JSON and a tenant's settings at most 1 MiB, through set_setting and at creation.
#[test]
fn a_tenants_settings_are_bounded_in_size() {
    let f = Fixture::new();
    let mut su = superuser();
    su.execute(
        "INSERT INTO tenancy.member (tenant_id, subject, role) VALUES ($1::text::uuid, 'root-admin', 'admin')",
        &[&f.a_id],
    )
    .unwrap();
    let mut c = app();
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "root-admin")])
        .unwrap();
    let e = tx
        .execute(
            "SELECT tenancy.set_setting($1, 'big', to_jsonb(repeat('x', 70000)))",
            &[&f.a],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22023", "{}", message(&e));
    tx.rollback().unwrap();
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "root-admin")])
        .unwrap();
    // Sixteen values of 65,000 characters fit (1,040,000 bytes and their keys); the
    // seventeenth passes 1 MiB.
    for i in 0..16 {
        tx.execute(
            "SELECT tenancy.set_setting($1, 'part' || $2::int, to_jsonb(repeat('x', 65000)))",
            &[&f.a, &i],
        )
        .unwrap();
    }
    let e = tx
        .execute(
            "SELECT tenancy.set_setting($1, 'part16', to_jsonb(repeat('x', 65000)))",
            &[&f.a],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22023", "{}", message(&e));
    tx.rollback().unwrap();
    let e = su
        .execute(
            "SELECT tenancy.create_tenant($1, settings => jsonb_build_object('big', repeat('x', 70000)))",
            &[&unique("big")],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22023", "{}", message(&e));
}

#[test]
fn failed_binds_are_logged_as_security_events() {
    let f = Fixture::new();
    let log = format!("{}/server.log", std::env::var("PGHOST").unwrap());
    let marker = unique("evt");
    let mut c = app();
    let bad = f.token_with(serde_json::json!({"tid": marker, "sub": "u", "exp": now() + 60}));
    c.batch_execute("BEGIN").unwrap();
    let _ = c.execute("SELECT tenancy.bind($1)", &[&bad]);
    c.batch_execute("ROLLBACK").unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("pg_tenancy security event") && l.contains(&marker))
        .expect("a security event line for the refused bind");
    assert!(line.contains("\"event\":\"bind_refused\""), "{line}");
    assert!(
        line.contains(&format!("\"session_role\":\"{APP}\"")),
        "{line}"
    );
}
