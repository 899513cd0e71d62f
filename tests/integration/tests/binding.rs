//! Session binding, as a NOSUPERUSER NOBYPASSRLS application role over a real socket: every
//! way of forging or changing the binding listed in the spec fails; scopes end when they should.

mod common;
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

#[test]
fn unbound_session_gets_no_tenant_bound() {
    let mut c = app();
    assert_eq!(bound_tenant(&mut c), Err("42501".into()));
    let msg = expect_err(&mut c, "SELECT tenancy.current_tenant()", &["42501"]);
    assert_eq!(msg, "no tenant bound");
}

#[test]
fn bind_returns_the_binding_and_is_transaction_scoped() {
    let f = Fixture::new();
    let mut c = app();
    let mut tx = c.transaction().unwrap();
    let b: serde_json::Value = tx
        .query_one("SELECT tenancy.bind($1)::text", &[&f.token(&f.a, "alice")])
        .map(|r| serde_json::from_str(&r.get::<_, String>(0)).unwrap())
        .unwrap();
    assert_eq!(b["tenant"], f.a_id);
    assert_eq!(b["subject"], "alice");
    assert_eq!(b["scope"], "transaction");
    assert!(b["expires_at"].as_str().unwrap().ends_with('Z'));
    let t: String = tx
        .query_one("SELECT tenancy.current_tenant()::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(t, f.a_id);
    let s: String = tx
        .query_one("SELECT tenancy.current_subject()", &[])
        .unwrap()
        .get(0);
    assert_eq!(s, "alice");
    tx.commit().unwrap();
    assert_eq!(
        bound_tenant(&mut c),
        Err("42501".into()),
        "binding must end at COMMIT"
    );

    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "alice")])
        .unwrap();
    tx.rollback().unwrap();
    assert_eq!(
        bound_tenant(&mut c),
        Err("42501".into()),
        "binding must end at ROLLBACK"
    );
}

#[test]
fn implicit_transaction_of_a_multi_statement_query_keeps_the_binding() {
    let f = Fixture::new();
    let mut c = app();
    let rows = c
        .simple_query(&format!(
            "SELECT tenancy.bind('{}'); SELECT tenancy.current_tenant()::text",
            f.token(&f.a, "u")
        ))
        .unwrap();
    let got: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(got.last().unwrap(), &f.a_id);
    assert_eq!(bound_tenant(&mut c), Err("42501".into()));
}

#[test]
fn set_and_set_config_cannot_forge_a_binding() {
    let f = Fixture::new();
    let mut c = app();
    // Before the library is loaded in this backend: placeholders may be created, but they are
    // not the binding.
    let _ = c.batch_execute(&format!("SET tenancy.tenant = '{}'", f.a_id));
    let _ = c.batch_execute(&format!(
        "SELECT set_config('tenancy.current_tenant', '{}', false)",
        f.a_id
    ));
    assert_eq!(bound_tenant(&mut c), Err("42501".into()));
    // After it is loaded, the prefix is reserved: the attempts fail outright.
    expect_err(
        &mut c,
        &format!("SET tenancy.tenant = '{}'", f.a_id),
        &["42602", "42704"],
    );
    expect_err(
        &mut c,
        &format!(
            "SELECT set_config('tenancy.tenant_id', '{}', false)",
            f.a_id
        ),
        &["42602", "42704"],
    );
    expect_err(&mut c, "SET tenancy.tenant_claim = 'sub'", &["42501"]);
    expect_err(&mut c, "SET tenancy.region = 'anywhere'", &["42501"]);
    assert_eq!(bound_tenant(&mut c), Err("42501".into()));
}

#[test]
fn alter_role_and_database_settings_and_pgoptions_cannot_forge() {
    let f = Fixture::new();
    let mut su = superuser();
    su.batch_execute(&format!(
        "ALTER ROLE {APP2} SET tenancy.tenant = '{id}'; ALTER ROLE {APP2} SET tenancy.current_tenant = '{id}'",
        id = f.a_id
    ))
    .unwrap();
    let mut c = connect(APP2);
    assert_eq!(bound_tenant(&mut c), Err("42501".into()));
    su.batch_execute(&format!("ALTER ROLE {APP2} RESET ALL"))
        .unwrap();

    let db = std::env::var("TENANCY_IT_DB").unwrap_or_else(|_| "tenancy_it".into());
    su.batch_execute(&format!(
        "ALTER DATABASE {db} SET tenancy.tenant = '{}'",
        f.a_id
    ))
    .unwrap();
    let mut c = app();
    assert_eq!(bound_tenant(&mut c), Err("42501".into()));
    su.batch_execute(&format!("ALTER DATABASE {db} RESET tenancy.tenant"))
        .unwrap();

    // Connection options (PGOPTIONS).
    let mut cfg = config(APP);
    cfg.options(&format!(
        "-c tenancy.tenant={} -c tenancy.current_tenant={}",
        f.a_id, f.a_id
    ));
    if let Ok(mut c) = cfg.connect(postgres::NoTls) {
        assert_eq!(bound_tenant(&mut c), Err("42501".into()));
    }
}

#[test]
fn function_set_clause_cannot_forge() {
    let f = Fixture::new();
    let mut c = app();
    let fname = format!("forge_{}", std::process::id());
    // Creating it may already fail (reserved prefix once the library is loaded); if it is
    // created, calling it must still find no tenant.
    let created = c.batch_execute(&format!(
        "CREATE FUNCTION pg_temp.{fname}() RETURNS uuid LANGUAGE sql SET tenancy.tenant = '{}' \
         AS 'SELECT tenancy.current_tenant()'",
        f.a_id
    ));
    if created.is_ok() {
        expect_err(
            &mut c,
            &format!("SELECT pg_temp.{fname}()"),
            &["42501", "42602"],
        );
    }
    bound_tenant(&mut c).ok();
    let loaded = c.batch_execute(&format!(
        "CREATE FUNCTION pg_temp.{fname}2() RETURNS uuid LANGUAGE sql SET tenancy.tenant = '{}' \
         AS 'SELECT tenancy.current_tenant()'",
        f.a_id
    ));
    assert!(
        loaded.is_err(),
        "with the library loaded the reserved prefix refuses the SET clause"
    );
}

#[test]
fn reset_all_set_role_and_savepoint_rollback_do_not_change_the_binding() {
    let f = Fixture::new();
    let mut c = f.session_as(&f.a, "u");
    c.batch_execute("RESET ALL").unwrap();
    assert_eq!(bound_tenant(&mut c), Ok(f.a_id.clone()));
    // SET ROLE to another application role (tenancy_app is a member of tenancy_app2).
    c.batch_execute(&format!("SET ROLE {APP2}")).unwrap();
    assert_eq!(bound_tenant(&mut c), Ok(f.a_id.clone()));
    c.batch_execute("RESET ROLE").unwrap();
    c.batch_execute("SAVEPOINT s1").unwrap();
    let _ = c.batch_execute("SELECT 1/0");
    c.batch_execute("ROLLBACK TO SAVEPOINT s1").unwrap();
    assert_eq!(bound_tenant(&mut c), Ok(f.a_id.clone()));
    // A rebind attempt inside a savepoint, rolled back, leaves the binding as it was.
    c.batch_execute("SAVEPOINT s2").unwrap();
    let _ = c.execute("SELECT tenancy.bind($1)", &[&f.token(&f.b, "u")]);
    c.batch_execute("ROLLBACK TO SAVEPOINT s2").unwrap();
    assert_eq!(bound_tenant(&mut c), Ok(f.a_id.clone()));
    c.batch_execute("COMMIT").unwrap();
}

#[test]
fn rebinding_to_another_tenant_in_a_transaction_is_refused() {
    let f = Fixture::new();
    let mut c = f.session_as(&f.a, "u");
    let e = c
        .execute("SELECT tenancy.bind($1)", &[&f.token(&f.b, "u")])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    c.batch_execute("ROLLBACK").unwrap();
    // Unbinding first does not help: the transaction stays tied to the tenant it touched.
    c.batch_execute("BEGIN").unwrap();
    bind(&mut c, &f.token(&f.a, "u"));
    assert_eq!(bound_tenant(&mut c), Ok(f.a_id.clone()));
    c.batch_execute("SELECT tenancy.unbind()").unwrap();
    let e = c
        .execute("SELECT tenancy.bind($1)", &[&f.token(&f.b, "u")])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    c.batch_execute("ROLLBACK").unwrap();
    // The same subject of the same tenant may be bound again (token refresh)...
    c.batch_execute("BEGIN").unwrap();
    bind(&mut c, &f.token(&f.a, "u"));
    bind(&mut c, &f.token(&f.a, "u"));
    // ...but not another subject: its roles would change silently mid-transaction.
    expect_refusal(
        &mut c,
        &format!("SELECT tenancy.bind('{}')", f.token(&f.a, "u2")),
        "42501",
        "rebind_refused",
    );
    c.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn after_an_unused_binding_is_unbound_a_new_bind_works() {
    let f = Fixture::new();
    let mut c = f.session_as(&f.a, "u");
    c.batch_execute("SELECT tenancy.unbind()").unwrap();
    // No statement used the binding: the transaction may bind anyone, once.
    bind(&mut c, &f.token(&f.b, "u2"));
    assert_eq!(bound_tenant(&mut c), Ok(f.b_id.clone()));
    c.batch_execute("SELECT tenancy.unbind()").unwrap();
    expect_refusal(
        &mut c,
        &format!("SELECT tenancy.bind('{}')", f.token(&f.a, "u")),
        "42501",
        "rebind_refused",
    );
    c.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn session_scope_survives_commit_and_ends_at_unbind_discard_all_and_expiry() {
    let f = Fixture::new();
    let mut c = app();
    c.execute("SELECT tenancy.bind($1, 'session')", &[&f.token(&f.a, "u")])
        .unwrap();
    assert_eq!(bound_tenant(&mut c), Ok(f.a_id.clone()));
    assert_eq!(bound_tenant(&mut c), Ok(f.a_id.clone()));
    c.batch_execute("SELECT tenancy.unbind()").unwrap();
    assert_eq!(bound_tenant(&mut c), Err("42501".into()));

    c.execute("SELECT tenancy.bind($1, 'session')", &[&f.token(&f.a, "u")])
        .unwrap();
    c.batch_execute("DISCARD ALL").unwrap();
    assert_eq!(
        bound_tenant(&mut c),
        Err("42501".into()),
        "DISCARD ALL ends a session binding"
    );

    let short = f.token_with(json!({"tid": f.a, "sub": "u", "exp": now() + 3}));
    c.execute("SELECT tenancy.bind($1, 'session')", &[&short])
        .unwrap();
    assert_eq!(bound_tenant(&mut c), Ok(f.a_id.clone()));
    std::thread::sleep(std::time::Duration::from_millis(4100));
    let e = c
        .query_one("SELECT tenancy.current_tenant()", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "28000");
    assert!(message(&e).contains("expired"));
    assert_eq!(
        bound_tenant(&mut c),
        Err("42501".into()),
        "an expired binding is dropped"
    );
}

#[test]
fn every_supported_algorithm_binds() {
    let f = Fixture::new();
    let mut su = superuser();
    let mut c = app();
    for (alg, name, public) in [
        (Algorithm::HS384, "HS384", HS_SECRET),
        (Algorithm::HS512, "HS512", HS_SECRET),
        (Algorithm::RS256, "RS256", RSA_PUBLIC),
        (Algorithm::ES256, "ES256", EC_PUBLIC),
        (Algorithm::EdDSA, "EdDSA", ED_PUBLIC),
    ] {
        let kid = unique(name);
        su.execute(
            "SELECT tenancy.add_key($1, $2, $3)",
            &[&kid, &name, &public],
        )
        .unwrap();
        let t = sign(
            alg,
            &kid,
            &json!({"tid": f.a_id, "sub": "u", "exp": now() + 60}),
        );
        let mut tx = c.transaction().unwrap();
        tx.execute("SELECT tenancy.bind($1)", &[&t]).unwrap();
        let got: String = tx
            .query_one("SELECT tenancy.current_tenant()::text", &[])
            .unwrap()
            .get(0);
        assert_eq!(got, f.a_id, "{name}");
        tx.rollback().unwrap();
    }
}

/// Bind `token` and expect a refusal with one of `codes`; the backend must survive.
fn refused(c: &mut postgres::Client, token: &str, codes: &[&str]) -> String {
    let e = c.execute("SELECT tenancy.bind($1)", &[&token]).unwrap_err();
    let code = sqlstate(&e);
    assert!(
        codes.contains(&code.as_str()),
        "expected {codes:?}, got {code}: {}",
        message(&e)
    );
    let one: i32 = c.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1, "backend must survive a refused bind");
    message(&e)
}

#[test]
fn bad_tokens_are_refused_with_a_sqlstate() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let f = Fixture::new();
    let mut su = superuser();
    let mut c = app();
    let good = f.token(&f.a, "u");
    let parts: Vec<&str> = good.split('.').collect();

    // Bad signature: another tenant's payload under A's signature; a flipped signature byte.
    let other = f.token(&f.b, "u");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        other.split('.').nth(1).unwrap(),
        parts[2]
    );
    let m = refused(&mut c, &forged, &["28000"]);
    assert_eq!(m, "token signature is invalid");
    let mut sig = parts[2].to_string();
    let last = if sig.ends_with('A') { 'B' } else { 'A' };
    sig.pop();
    sig.push(last);
    refused(
        &mut c,
        &format!("{}.{}.{sig}", parts[0], parts[1]),
        &["28000"],
    );

    // alg: none.
    let h = b64.encode(format!(r#"{{"alg":"none","kid":"{}"}}"#, f.kid));
    refused(&mut c, &format!("{h}.{}.", parts[1]), &["28000"]);

    // HS256 signed with the RSA public key of an RS256 kid (algorithm confusion).
    let rs_kid = unique("rs");
    su.execute(
        "SELECT tenancy.add_key($1, 'RS256', $2)",
        &[&rs_kid, &RSA_PUBLIC],
    )
    .unwrap();
    let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
    header.kid = Some(rs_kid.clone());
    let confused = jsonwebtoken::encode(
        &header,
        &json!({"tid": f.a, "sub": "u", "exp": now() + 60}),
        &jsonwebtoken::EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
    )
    .unwrap();
    let m = refused(&mut c, &confused, &["28000"]);
    assert!(m.contains("algorithm"), "{m}");

    // Unknown and revoked kid.
    let unknown = sign(
        Algorithm::HS256,
        "no-such-kid",
        &json!({"tid": f.a, "sub": "u", "exp": now() + 60}),
    );
    refused(&mut c, &unknown, &["28000"]);
    let kid2 = unique("rev");
    su.execute(
        "SELECT tenancy.add_key($1, 'HS256', $2)",
        &[&kid2, &HS_SECRET],
    )
    .unwrap();
    let t2 = sign(
        Algorithm::HS256,
        &kid2,
        &json!({"tid": f.a, "sub": "u", "exp": now() + 60}),
    );
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&t2]).unwrap();
    tx.rollback().unwrap();
    su.execute("SELECT tenancy.revoke_key($1)", &[&kid2])
        .unwrap();
    refused(&mut c, &t2, &["28000"]);

    // exp in the past, nbf in the future, exp missing.
    refused(
        &mut c,
        &f.token_with(json!({"tid": f.a, "sub": "u", "exp": now() - 10})),
        &["28000"],
    );
    refused(
        &mut c,
        &f.token_with(json!({"tid": f.a, "sub": "u", "exp": now() + 600, "nbf": now() + 300})),
        &["28000"],
    );
    refused(
        &mut c,
        &f.token_with(json!({"tid": f.a, "sub": "u"})),
        &["28000"],
    );

    // Unknown tenant: an authentication failure like every other bad token.
    refused(
        &mut c,
        &f.token_with(json!({"tid": "nobody-here", "sub": "u", "exp": now() + 60})),
        &["28000"],
    );

    // Malformed input: empty, not base64, not three parts, huge, deeply nested JSON.
    refused(&mut c, "", &["28000"]);
    refused(&mut c, "not a token at all", &["28000"]);
    refused(&mut c, "a.b", &["28000"]);
    refused(&mut c, "%%%.$$$.***", &["28000"]);
    refused(&mut c, &"a".repeat(1_000_000), &["28000"]);
    let nested = "[".repeat(100_000) + &"]".repeat(100_000);
    let deep_header = b64.encode(format!(
        r#"{{"alg":"HS256","kid":"{}","x":{nested}}}"#,
        f.kid
    ));
    refused(
        &mut c,
        &format!("{deep_header}.{}.{}", parts[1], parts[2]),
        &["28000"],
    );
    let nested_small = "[".repeat(2000) + &"]".repeat(2000);
    let deep_small = b64.encode(format!(
        r#"{{"alg":"HS256","kid":"{}","x":{nested_small}}}"#,
        f.kid
    ));
    refused(
        &mut c,
        &format!("{deep_small}.{}.{}", parts[1], parts[2]),
        &["28000"],
    );
    // A validly signed token whose claims are deeply nested JSON.
    let deep_claims = f.token_with(json!({"tid": f.a, "sub": "u", "exp": now() + 60, "x": serde_json::from_str::<serde_json::Value>(&("[".repeat(100) + &"]".repeat(100))).unwrap()}));
    let _ = c.execute("SELECT tenancy.bind($1)", &[&deep_claims]);
    let one: i32 = c.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
}

#[test]
fn suspended_tenant_wrong_region_and_tenant_scoped_key_are_refused() {
    let f = Fixture::new();
    let mut su = superuser();
    let mut c = app();
    su.execute("SELECT tenancy.suspend_tenant($1, 'unpaid')", &[&f.b])
        .unwrap();
    let m = refused(&mut c, &f.token(&f.b, "u"), &["42501"]);
    assert!(m.contains("suspended"), "{m}");
    su.execute("SELECT tenancy.resume_tenant($1)", &[&f.b])
        .unwrap();
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.b, "u")])
        .unwrap();
    tx.rollback().unwrap();

    // A tenant-scoped key cannot bind another tenant.
    let scoped = unique("scoped");
    su.execute(
        "SELECT tenancy.add_key($1, 'HS256', $2, $3)",
        &[&scoped, &HS_SECRET, &f.a],
    )
    .unwrap();
    let t = sign(
        Algorithm::HS256,
        &scoped,
        &json!({"tid": f.b, "sub": "u", "exp": now() + 60}),
    );
    refused(&mut c, &t, &["28000"]);
    let ok = sign(
        Algorithm::HS256,
        &scoped,
        &json!({"tid": f.a, "sub": "u", "exp": now() + 60}),
    );
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&ok]).unwrap();
    tx.rollback().unwrap();

    // Region: a tenant in another region than the server is refused.
    let eu = unique("eu");
    su.execute(
        "SELECT tenancy.create_tenant($1, region => 'eu-west')",
        &[&eu],
    )
    .unwrap();
    su.batch_execute(&format!("ALTER ROLE {APP2} SET tenancy.region = 'us-east'"))
        .unwrap();
    let mut c2 = connect(APP2);
    let m = refused(&mut c2, &f.token(&eu, "u"), &["42501"]);
    assert!(m.contains("region"), "{m}");
    let mut tx = c2.transaction().unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "u")])
        .unwrap(); // no region set: allowed
    tx.rollback().unwrap();
    su.batch_execute(&format!("ALTER ROLE {APP2} RESET tenancy.region"))
        .unwrap();
}

#[test]
fn cached_tokens_still_honour_expiry_revocation_and_suspension() {
    let f = Fixture::new();
    let mut su = superuser();
    let mut c = app();
    // A token bound twice is served from the cache the second time; revocation still applies.
    let kid = unique("cache");
    su.execute(
        "SELECT tenancy.add_key($1, 'HS256', $2)",
        &[&kid, &HS_SECRET],
    )
    .unwrap();
    let t = sign(
        Algorithm::HS256,
        &kid,
        &json!({"tid": f.a, "sub": "u", "exp": now() + 3}),
    );
    for _ in 0..2 {
        let mut tx = c.transaction().unwrap();
        tx.execute("SELECT tenancy.bind($1)", &[&t]).unwrap();
        tx.rollback().unwrap();
    }
    su.execute("SELECT tenancy.suspend_tenant($1)", &[&f.a])
        .unwrap();
    refused(&mut c, &t, &["42501"]);
    su.execute("SELECT tenancy.resume_tenant($1)", &[&f.a])
        .unwrap();
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&t]).unwrap();
    tx.rollback().unwrap();
    su.execute("SELECT tenancy.revoke_key($1)", &[&kid])
        .unwrap();
    refused(&mut c, &t, &["28000"]);
    // Expiry of a cached token.
    let t2 = f.token_with(json!({"tid": f.a, "sub": "u", "exp": now() + 3}));
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&t2]).unwrap();
    tx.rollback().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(4100));
    refused(&mut c, &t2, &["28000"]);
}

/// A connection keeps what a token's bind derived from the catalog (tenant, key, roles, the
/// result) for the next bind of the same token. Attack that cache: every change since the first
/// bind must show in the second, on the same connection.
#[test]
fn a_token_bound_before_is_checked_again_against_what_changed_since() {
    let f = Fixture::new();
    let mut su = superuser();
    let mut c = app();
    let bind_roles = |c: &mut postgres::Client, t: &str| -> Vec<String> {
        let mut tx = c.transaction().unwrap();
        let roles: String = tx
            .query_one("SELECT (tenancy.bind($1) -> 'roles')::text", &[&t])
            .unwrap()
            .get(0);
        tx.rollback().unwrap();
        serde_json::from_str(&roles).unwrap()
    };
    // A membership added after the first bind shows in the second bind's roles.
    let sub = unique("sub");
    let t = f.token(&f.a, &sub);
    assert_eq!(bind_roles(&mut c, &t), vec!["member"]);
    su.execute("SELECT tenancy.add_member($1, $2, 'viewer')", &[&f.a, &sub])
        .unwrap();
    assert_eq!(bind_roles(&mut c, &t), vec!["viewer"]);
    su.execute(
        "SELECT tenancy.remove_member($1, $2, 'viewer')",
        &[&f.a, &sub],
    )
    .unwrap();
    assert_eq!(bind_roles(&mut c, &t), vec!["member"]);

    // A key's not_after passes without any catalog change: the cached bind still refuses it.
    let kid = unique("short");
    su.execute(
        "SELECT tenancy.add_key($1, 'HS256', $2, not_after => now() + interval '2 seconds')",
        &[&kid, &HS_SECRET],
    )
    .unwrap();
    let short = sign(
        Algorithm::HS256,
        &kid,
        &json!({"tid": f.a, "sub": "u", "exp": now() + 60}),
    );
    bind_roles(&mut c, &short);
    bind_roles(&mut c, &short);
    // not_after is kept to the second.
    std::thread::sleep(std::time::Duration::from_millis(3100));
    let m = refused(&mut c, &short, &["28000"]);
    assert!(m.contains("expired"), "{m}");

    // A suspension committed while this connection's transaction is open refuses its next bind.
    bind_roles(&mut c, &t);
    let mut tx = c.transaction().unwrap();
    tx.query_one("SELECT 1", &[]).unwrap();
    su.execute("SELECT tenancy.suspend_tenant($1)", &[&f.a])
        .unwrap();
    let e = tx.execute("SELECT tenancy.bind($1)", &[&t]).unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    assert!(message(&e).contains("suspended"), "{}", message(&e));
    tx.rollback().unwrap();
    su.execute("SELECT tenancy.resume_tenant($1)", &[&f.a])
        .unwrap();

    // A login role mapped to another tenant after the first bind can no longer bind this one.
    let role = unique("later").replace('-', "_");
    su.batch_execute(&format!("CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS"))
        .unwrap();
    let mut m = connect(&role);
    let tb = f.token(&f.b, "u");
    bind_roles(&mut m, &tb);
    su.execute(&format!("SELECT tenancy.map_role('{role}', $1)"), &[&f.a])
        .unwrap();
    let msg = refused(&mut m, &tb, &["42501"]);
    assert!(msg.contains("mapped to other tenants"), "{msg}");
}

#[test]
fn suspension_reaches_a_bound_session_from_its_next_statement() {
    let f = Fixture::new();
    let mut su = superuser();
    let mut c = app();
    c.execute("SELECT tenancy.bind($1, 'session')", &[&f.token(&f.a, "u")])
        .unwrap();
    assert_eq!(bound_tenant(&mut c), Ok(f.a_id.clone()));
    su.execute("SELECT tenancy.suspend_tenant($1)", &[&f.a])
        .unwrap();
    let e = c
        .query_one("SELECT tenancy.current_tenant()", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    assert!(message(&e).contains("suspended"), "{}", message(&e));
    su.execute("SELECT tenancy.resume_tenant($1)", &[&f.a])
        .unwrap();
    assert_eq!(
        bound_tenant(&mut c),
        Err("42501".into()),
        "the binding was dropped, not paused"
    );
}

#[test]
fn role_mapping_binds_without_a_token_and_restricts_tokens() {
    let f = Fixture::new();
    let mut su = superuser();
    let role = unique("mapped").replace('-', "_");
    su.batch_execute(&format!("CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS"))
        .unwrap();
    su.execute(
        &format!("SELECT tenancy.map_role('{role}', $1, '{{viewer}}')"),
        &[&f.a],
    )
    .unwrap();
    let mut c = connect(&role);
    assert_not_privileged(&mut c);
    assert_eq!(bound_tenant(&mut c), Ok(f.a_id.clone()));
    let roles: Vec<String> = c
        .query_one("SELECT tenancy.current_roles()", &[])
        .unwrap()
        .get(0);
    assert_eq!(roles, vec!["viewer"]);
    // A role mapped to A cannot bind B with a token.
    refused(&mut c, &f.token(&f.b, "u"), &["42501"]);
    // Unmapping takes effect from the next statement.
    su.execute(&format!("SELECT tenancy.unmap_role('{role}', $1)"), &[&f.a])
        .unwrap();
    assert_eq!(bound_tenant(&mut c), Err("42501".into()));
}

#[test]
fn token_roles_narrow_and_never_widen() {
    let f = Fixture::new();
    let mut c = app();
    let mut tx = c.transaction().unwrap();
    let t = f.token_with(
        json!({"tid": f.a, "sub": "bob", "exp": now() + 60, "roles": ["admin", "member"]}),
    );
    tx.execute("SELECT tenancy.bind($1)", &[&t]).unwrap();
    let roles: Vec<String> = tx
        .query_one("SELECT tenancy.current_roles()", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        roles,
        vec!["member"],
        "a token cannot add admin to a subject who only has member"
    );
    tx.rollback().unwrap();
}

#[test]
fn resource_settings_apply_to_the_bound_transaction_only() {
    let f = Fixture::new();
    let mut su = superuser();
    su.execute(
        "SELECT tenancy.set_setting($1, 'statement_timeout', '\"1500ms\"')",
        &[&f.a],
    )
    .unwrap();
    su.execute(
        "SELECT tenancy.set_setting($1, 'work_mem', '\"8MB\"')",
        &[&f.a],
    )
    .unwrap();
    let mut c = app();
    let before: String = c.query_one("SHOW statement_timeout", &[]).unwrap().get(0);
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "u")])
        .unwrap();
    let st: String = tx.query_one("SHOW statement_timeout", &[]).unwrap().get(0);
    let wm: String = tx.query_one("SHOW work_mem", &[]).unwrap().get(0);
    assert_eq!((st.as_str(), wm.as_str()), ("1500ms", "8MB"));
    let e = tx.batch_execute("SELECT pg_sleep(3)").unwrap_err();
    assert_eq!(
        sqlstate(&e),
        "57014",
        "the tenant's statement_timeout cancels long statements"
    );
    tx.rollback().unwrap();
    let after: String = c.query_one("SHOW statement_timeout", &[]).unwrap().get(0);
    assert_eq!(before, after);
}

#[test]
fn revoking_the_key_ends_a_live_session_binding_from_its_next_statement() {
    let f = Fixture::new();
    let mut su = superuser();
    let kid = unique("live");
    su.execute(
        "SELECT tenancy.add_key($1, 'HS256', $2)",
        &[&kid, &HS_SECRET],
    )
    .unwrap();
    let t = sign(
        Algorithm::HS256,
        &kid,
        &json!({"tid": f.a, "sub": "u", "exp": now() + 600}),
    );
    let mut c = app();
    c.execute("SELECT tenancy.bind($1, 'session')", &[&t])
        .unwrap();
    c.batch_execute("BEGIN").unwrap();
    assert_eq!(bound_tenant(&mut c), Ok(f.a_id.clone()));
    su.execute("SELECT tenancy.revoke_key($1)", &[&kid])
        .unwrap();
    // Inside the same open transaction, the next statement is refused.
    let e = c
        .query_one("SELECT tenancy.current_tenant()", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    assert!(message(&e).contains("revoked"), "{}", message(&e));
    c.batch_execute("ROLLBACK").unwrap();
}

/// The test keys as an identity provider publishes them (a JWKS), derived from the PEM files in
/// `keys/` with openssl (`openssl rsa -pubin -modulus`; the last 32 bytes of the Ed25519 and the
/// last 64 of the P-256 SubjectPublicKeyInfo). Tokens signed with the private keys bind, which
/// proves each JWK is the same key.
fn test_jwks(prefix: &str) -> serde_json::Value {
    json!({"keys": [
        {"kty": "RSA", "kid": format!("{prefix}-rsa"), "use": "sig", "e": "AQAB",
         "n": "kHXf9b96wZj25PCUkJw44ob9MwXNEwi9SybdsDu32S3IR86-0c1M1r8wkMaC_7aXJbPnTe6GvRnD-8nsKoMRNTSib5cWN7R30Ssl5ijZhnhUyp8yGZKA3SxscGYsnXgD-UDI_3-C76xBQiYJ1flu0L5IMbEONUNWN92hlspCfgtF4q-sP3XYPpzENmvACwbYeHnd_y2g2ZEuMpxOMmunRcd2Qv9lf3bE33TbBEasTz34srF8dr2hqtjyEaWeh2DBBIBsfyaX8A3wNfSta2FU68r3lUW16qBXB-QdC3Bkw-mGcwsGzPAOjglWE6bAqKsoQ0-xm4bKs14RpOofq4yOoQ"},
        {"kty": "OKP", "crv": "Ed25519", "kid": format!("{prefix}-ed"), "alg": "EdDSA",
         "x": "yACcLAXCrckpJDIxhRaxwfEmLG0irNXwxmfrNCdB1jA"},
        {"kty": "EC", "crv": "P-256", "kid": format!("{prefix}-ec"),
         "x": "qljoCstVjudnOB80k0ng6uuNAXf0YhIgtrUG7IbGzqY", "y": "orWLvaqLBtklwzTJYXX8f3wTLeMnLNH3uvy1c_9II68"},
        {"kty": "RSA", "kid": format!("{prefix}-enc"), "use": "enc", "e": "AQAB", "n": "AQAB"}
    ]})
}

#[test]
fn add_keys_imports_a_jwks_each_key_by_its_kid() {
    let f = Fixture::new();
    let mut ka = connect(KEY_ADMIN);
    assert_not_privileged(&mut ka);
    let p = unique("idp");
    let jwks = test_jwks(&p);
    let status = |ka: &mut postgres::Client, jwks: &serde_json::Value| -> Vec<String> {
        ka.query(
            "SELECT kid || ' ' || coalesce(alg, '-') || ' ' || status FROM tenancy.add_keys($1::text::jsonb) ORDER BY kid",
            &[&jwks.to_string()],
        )
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
    };
    assert_eq!(
        status(&mut ka, &jwks),
        vec![
            format!("{p}-ec ES256 added"),
            format!("{p}-ed EdDSA added"),
            format!("{p}-enc - skipped: an encryption key"),
            format!("{p}-rsa RS256 added"),
        ]
    );
    let mut c = app();
    for (alg, kid) in [
        (Algorithm::RS256, "rsa"),
        (Algorithm::EdDSA, "ed"),
        (Algorithm::ES256, "ec"),
    ] {
        let t = sign(
            alg,
            &format!("{p}-{kid}"),
            &json!({"tid": f.a, "sub": "u", "exp": now() + 60}),
        );
        let mut tx = c.transaction().unwrap();
        tx.execute("SELECT tenancy.bind($1)", &[&t]).unwrap();
        tx.rollback().unwrap();
    }
    // Imported again (the provider's document, fetched again): nothing changes.
    assert!(status(&mut ka, &jwks)
        .iter()
        .all(|s| s.ends_with("unchanged") || s.ends_with("encryption key")));
    // A kid already registered with another key is refused, and nothing of the document is
    // registered (all or nothing).
    let mut other = test_jwks(&p);
    other["keys"][2]["x"] = other["keys"][1]["x"].clone();
    other["keys"][0]["kid"] = json!(format!("{p}-new"));
    let e = ka
        .query(
            "SELECT * FROM tenancy.add_keys($1::text::jsonb)",
            &[&other.to_string()],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42710", "{}", message(&e));
    let n: i64 = superuser()
        .query_one(
            "SELECT count(*) FROM tenancy.keys WHERE kid = $1",
            &[&format!("{p}-new")],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "a refused document registers nothing");
    // Not a JWKS, a key without kid, an oct key without alg: 22023 with a hint.
    for bad in [
        json!({"kty": "RSA", "e": "AQAB", "n": "AQAB"}),
        json!({"keys": []}),
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "yACcLAXCrckpJDIxhRaxwfEmLG0irNXwxmfrNCdB1jA"}]}),
        json!({"keys": [{"kty": "oct", "kid": unique("oct"), "k": "c2VjcmV0"}]}),
    ] {
        let e = ka
            .query(
                "SELECT * FROM tenancy.add_keys($1::text::jsonb)",
                &[&bad.to_string()],
            )
            .unwrap_err();
        assert_eq!(sqlstate(&e), "22023", "{bad}: {}", message(&e));
    }
    // A JWKS passed to add_key is pointed to add_keys.
    let e = ka
        .execute(
            "SELECT tenancy.add_key($1, 'RS256', $2)",
            &[&unique("one"), &jwks.to_string()],
        )
        .unwrap_err();
    let hint = e.as_db_error().and_then(|d| d.hint()).unwrap_or_default();
    assert!(hint.contains("tenancy.add_keys"), "{hint}");
    // Operators and applications cannot import keys.
    for role in [OPERATOR, APP] {
        let e = connect(role)
            .query(
                "SELECT * FROM tenancy.add_keys($1::text::jsonb)",
                &[&test_jwks(&unique("x")).to_string()],
            )
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{role}");
    }
}
