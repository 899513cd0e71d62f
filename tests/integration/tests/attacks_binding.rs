//! Binding forgery and escape, beyond the Binding guarantees tested one by one in binding.rs:
//! hostile token headers and claims, role tricks, internal functions and leftovers of an
//! ended binding. Every case runs as a NOSUPERUSER NOBYPASSRLS role and fails if a session
//! ends up bound to a tenant its token does not name, or reads rows while unbound.

mod common;
use base64::Engine;
use common::*;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// An HS256 token over exactly these header and claims texts, signed with `secret`.
fn raw_token(header: &str, claims: &str, secret: &str) -> String {
    let signing_input = format!("{}.{}", b64(header), b64(claims));
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    let sig = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &key,
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap();
    format!("{signing_input}.{sig}")
}

/// Bind must fail with 28000 or 42501, and the session must stay unbound.
fn refused(token: &str) -> String {
    let mut c = app();
    let e = c
        .execute("SELECT tenancy.bind($1)", &[&token])
        .expect_err("a hostile token was accepted");
    let code = sqlstate(&e);
    assert!(
        code == "28000" || code == "42501",
        "{code}: {}",
        message(&e)
    );
    assert_eq!(bound_tenant(&mut c), Err("42501".into()));
    message(&e)
}

fn exp() -> i64 {
    now() + 3600
}

#[test]
fn a_kid_carrying_sql_or_a_path_is_just_an_unknown_key() {
    let f = Fixture::new();
    for kid in [
        format!("{}' OR '1'='1", f.kid),
        format!("{}'; DROP TABLE public.it_customers; --", f.kid),
        "../../../../etc/passwd".to_string(),
        format!("{}\\u0000", f.kid),
    ] {
        let header = serde_json::json!({"alg": "HS256", "kid": kid}).to_string();
        let claims = format!(r#"{{"tid":"{}","sub":"u","exp":{}}}"#, f.a, exp());
        refused(&raw_token(&header, &claims, HS_SECRET));
    }
    let still_there: bool = superuser()
        .query_one("SELECT to_regclass('public.it_customers') IS NOT NULL", &[])
        .unwrap()
        .get(0);
    assert!(still_there);
}

#[test]
fn an_embedded_jwk_or_jku_header_is_never_trusted() {
    let f = Fixture::new();
    let attacker = "attacker-secret-0123456789abcdef0123456789";
    let header = serde_json::json!({
        "alg": "HS256", "kid": f.kid,
        "jwk": {"kty": "oct", "k": b64(attacker)},
        "jku": "https://attacker.example/keys", "x5u": "https://attacker.example/cert"
    })
    .to_string();
    let claims = format!(r#"{{"tid":"{}","sub":"u","exp":{}}}"#, f.b, exp());
    let m = refused(&raw_token(&header, &claims, attacker));
    assert!(m.contains("signature"), "{m}");
}

#[test]
fn a_repeated_tenant_claim_is_refused_whichever_comes_first() {
    let f = Fixture::new();
    let header = format!(r#"{{"alg":"HS256","kid":"{}"}}"#, f.kid);
    for claims in [
        format!(
            r#"{{"tid":"{}","tid":"{}","sub":"u","exp":{}}}"#,
            f.a,
            f.b,
            exp()
        ),
        format!(
            r#"{{"tid":"{}","sub":"u","exp":{},"tid":"{}"}}"#,
            f.a,
            exp(),
            f.b
        ),
    ] {
        let m = refused(&raw_token(&header, &claims, HS_SECRET));
        assert!(m.contains("repeat"), "{m}");
    }
}

#[test]
fn a_repeated_header_parameter_and_a_crit_header_are_refused() {
    let f = Fixture::new();
    let claims = format!(r#"{{"tid":"{}","sub":"u","exp":{}}}"#, f.a, exp());
    refused(&raw_token(
        &format!(r#"{{"alg":"HS256","kid":"nope","kid":"{}"}}"#, f.kid),
        &claims,
        HS_SECRET,
    ));
    refused(&raw_token(
        &format!(r#"{{"alg":"none","alg":"HS256","kid":"{}"}}"#, f.kid),
        &claims,
        HS_SECRET,
    ));
    let m = refused(&raw_token(
        &format!(
            r#"{{"alg":"HS256","kid":"{}","crit":["b64"],"b64":false}}"#,
            f.kid
        ),
        &claims,
        HS_SECRET,
    ));
    assert!(m.contains("crit"), "{m}");
}

#[test]
fn tenant_claims_of_the_wrong_type_are_refused() {
    let f = Fixture::new();
    let header = format!(r#"{{"alg":"HS256","kid":"{}"}}"#, f.kid);
    for tid in [
        format!(r#"["{}"]"#, f.a),
        format!(r#"{{"id":"{}"}}"#, f.a),
        "1".to_string(),
        "true".to_string(),
        r#""""#.to_string(),
        format!(r#""{} ""#, f.a),
        format!(r#""{}""#, f.a.to_uppercase()),
    ] {
        let claims = format!(r#"{{"tid":{tid},"sub":"u","exp":{}}}"#, exp());
        refused(&raw_token(&header, &claims, HS_SECRET));
    }
}

#[test]
fn time_claims_that_are_not_plain_numbers_are_refused() {
    let f = Fixture::new();
    let header = format!(r#"{{"alg":"HS256","kid":"{}"}}"#, f.kid);
    for times in [
        format!(r#""exp":"{}""#, exp()),
        r#""exp":1e20"#.to_string(),
        r#""exp":-1"#.to_string(),
        r#""exp":null"#.to_string(),
        format!(r#""exp":{},"nbf":"0""#, exp()),
        format!(r#""exp":{},"iat":[1]"#, exp()),
    ] {
        let claims = format!(r#"{{"tid":"{}","sub":"u",{times}}}"#, f.a);
        refused(&raw_token(&header, &claims, HS_SECRET));
    }
}

#[test]
fn claims_with_control_or_direction_characters_are_refused() {
    // Found by an attacker's pass: a subject "alice\u0000mallory" bound, showed and was audited
    // as "alice" (PostgreSQL's text ends at the NUL) while alice's revocation, looked up with
    // the whole text, did not apply; no SQL could name the subject to revoke it.
    let f = Fixture::new();
    let header = format!(r#"{{"alg":"HS256","kid":"{}"}}"#, f.kid);
    for claims in [
        format!(
            r#"{{"tid":"{}","sub":"alice\u0000mallory","exp":{}}}"#,
            f.a,
            exp()
        ),
        format!(r#"{{"tid":"{}","sub":"alice\n","exp":{}}}"#, f.a, exp()),
        format!(r#"{{"tid":"{}","sub":"\u202eecila","exp":{}}}"#, f.a, exp()),
        format!(
            r#"{{"tid":"{}","sub":"u","roles":["member\u0000x"],"exp":{}}}"#,
            f.a,
            exp()
        ),
        format!(
            r#"{{"tid":"{}","sub":"u","jti":"j\u0000","exp":{}}}"#,
            f.a,
            exp()
        ),
        format!(r#"{{"tid":"{}\u0000","sub":"u","exp":{}}}"#, f.a, exp()),
    ] {
        refused(&raw_token(&header, &claims, HS_SECRET));
    }
}

#[test]
fn a_token_issued_in_the_future_is_not_valid_yet() {
    // Found by an attacker's pass: a token whose iat lay in the future counted as issued after
    // any revocation of its subject, so it outlived revoke_subject.
    let f = Fixture::new();
    let mut su = superuser();
    su.execute("SELECT tenancy.revoke_subject($1, 'carol', now())", &[&f.a])
        .unwrap();
    let token = f.token_with(serde_json::json!({
        "tid": f.a, "sub": "carol", "exp": exp(), "iat": 253402300799i64
    }));
    let mut c = app();
    expect_refusal(
        &mut c,
        &format!("SELECT tenancy.bind('{token}')"),
        "28000",
        "token_not_yet_valid",
    );
    assert_eq!(bound_tenant(&mut c), Err("42501".into()));
}

#[test]
fn a_subject_carrying_sql_is_data_not_code() {
    let f = Fixture::new();
    let sub = "x'); DELETE FROM public.it_customers; SELECT ('";
    let mut c = app();
    c.batch_execute("BEGIN").unwrap();
    c.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, sub)])
        .unwrap();
    let got: String = c
        .query_one("SELECT tenancy.current_subject()", &[])
        .unwrap()
        .get(0);
    assert_eq!(got, sub);
    c.batch_execute("INSERT INTO it_customers (id, name) VALUES (1, 'a')")
        .unwrap();
    c.batch_execute("COMMIT").unwrap();
    let mut su = superuser();
    let (n, subject): (i64, Option<String>) = {
        let r = su
            .query_one(
                "SELECT (SELECT count(*) FROM public.it_customers WHERE tenant_id = $1::text::uuid), \
                        (SELECT subject FROM tenancy.audit_log WHERE tenant_id = $1::text::uuid AND table_name LIKE '%it_customers' LIMIT 1)",
                &[&f.a_id],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(n, 1);
    assert_eq!(subject.as_deref(), Some(sub));
}

#[test]
fn set_role_to_a_role_mapped_to_another_tenant_binds_nothing() {
    // Role mappings bind the session's login role, never a role reached by SET ROLE.
    let (f, mut c) = two_tenants();
    let mapped = ident("mapped_b");
    let mut su = superuser();
    su.batch_execute(&format!(
        "CREATE ROLE {mapped} NOLOGIN NOSUPERUSER NOBYPASSRLS; GRANT {mapped} TO {APP}; \
         GRANT SELECT ON public.it_customers TO {mapped}"
    ))
    .unwrap();
    su.execute(&format!("SELECT tenancy.map_role('{mapped}', $1)"), &[&f.b])
        .unwrap();
    c.batch_execute(&format!("SET ROLE {mapped}")).unwrap();
    assert_eq!(bound_tenant(&mut c), Err("42501".into()));
    expect_err(&mut c, "SELECT name FROM it_customers", &["42501"]);
    c.batch_execute("RESET ROLE").unwrap();
    begin_bound(&mut c, &f, &f.a);
    c.batch_execute(&format!("SET LOCAL ROLE {mapped}"))
        .unwrap();
    assert_eq!(bound_tenant(&mut c), Ok(f.a_id.clone()));
    assert_only(&texts(&mut c, "SELECT name FROM it_customers"), &f.a);
    c.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn bind_of_null_is_refused_and_binds_nothing() {
    let (_f, mut c) = two_tenants();
    c.batch_execute("BEGIN").unwrap();
    expect_refusal(
        &mut c,
        "SELECT tenancy.bind(NULL)",
        "28000",
        "token_missing",
    );
    c.batch_execute("ROLLBACK; BEGIN").unwrap();
    expect_refusal(
        &mut c,
        "SELECT tenancy.bind(NULL, 'transaction')",
        "28000",
        "token_missing",
    );
    c.batch_execute("ROLLBACK; BEGIN").unwrap();
    expect_err(&mut c, "SELECT count(*) FROM it_customers", &["42501"]);
    c.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn a_statement_prepared_while_bound_returns_nothing_after_the_binding_ends() {
    let (f, mut c) = two_tenants();
    begin_bound(&mut c, &f, &f.a);
    c.batch_execute("PREPARE mine AS SELECT name FROM it_customers; EXECUTE mine; COMMIT")
        .unwrap();
    for _ in 0..6 {
        expect_err(&mut c, "EXECUTE mine", &["42501"]);
    }
    let st = c.prepare("SELECT name FROM it_customers").unwrap();
    begin_bound(&mut c, &f, &f.a);
    assert_eq!(c.query(&st, &[]).unwrap().len(), 5);
    c.batch_execute("COMMIT").unwrap();
    let e = c.query(&st, &[]).unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
}

#[test]
fn internal_functions_cannot_bind_unprotect_or_forge() {
    let (f, mut c) = two_tenants();
    let before: i64 = superuser()
        .query_one("SELECT count(*) FROM tenancy.protected_table", &[])
        .unwrap()
        .get(0);
    begin_bound(&mut c, &f, &f.a);
    for (sql, codes) in [
        ("SELECT tenancy._audit()", &["42501"][..]),
        ("SELECT tenancy._audit_append_only()", &["42501"][..]),
        ("SELECT tenancy._refuse_truncate()", &["42501"][..]),
        (
            "SELECT tenancy._cross_tenant_write('public.it_customers', tenancy.current_tenant())",
            &["42501"][..],
        ),
    ] {
        c.batch_execute("SAVEPOINT s").unwrap();
        expect_err(&mut c, sql, codes);
        c.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    }
    // The event triggers' helpers refuse to run outside a DDL command (39P03, PostgreSQL's own
    // refusal of pg_event_trigger_ddl_commands() / _dropped_objects() out of context);
    // pg_tenancy's hash and digest helpers are not executable at all (42501).
    for (sql, codes) in [
        ("SELECT tenancy._forget_dropped()", &["39P03"][..]),
        ("SELECT tenancy._guard_check('{}')", &["39P03"][..]),
        (
            "SELECT tenancy._auto_protect_table('public.it_customers'::regclass)",
            &["39P03"][..],
        ),
        (
            "SELECT tenancy._audit_row_hash(1, tenancy.current_tenant(), now(), 1, 't', 'INSERT', NULL, NULL, 'x', 'r', NULL, NULL, NULL)",
            &["42501"][..],
        ),
        (
            "SELECT tenancy._protection_state('public.it_customers', 'tenant_id')",
            &["42501"][..],
        ),
    ] {
        c.batch_execute("SAVEPOINT s").unwrap();
        expect_err(&mut c, sql, codes);
        c.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    }
    assert_eq!(bound_tenant(&mut c), Ok(f.a_id.clone()));
    assert_only(&texts(&mut c, "SELECT name FROM it_customers"), &f.a);
    c.batch_execute("COMMIT").unwrap();
    let after: i64 = superuser()
        .query_one("SELECT count(*) FROM tenancy.protected_table", &[])
        .unwrap()
        .get(0);
    assert!(after >= before, "protections disappeared");
}

#[test]
fn the_library_cannot_be_reloaded_to_reset_its_state() {
    let (f, mut c) = two_tenants();
    begin_bound(&mut c, &f, &f.a);
    expect_err(&mut c, "LOAD 'pg_tenancy'", &["42501"]);
    c.batch_execute("ROLLBACK").unwrap();
    expect_err(&mut c, "LOAD '$libdir/pg_tenancy'", &["42501"]);
}

#[test]
fn a_decommissioned_tenants_token_is_refused() {
    let f = Fixture::new();
    let token = f.token(&f.b, "u");
    let mut su = superuser();
    su.execute("SELECT tenancy.decommission_tenant($1, $1)", &[&f.b])
        .unwrap();
    refused(&token);
    let by_id = f.token_with(serde_json::json!({"tid": f.b_id, "sub": "u", "exp": exp()}));
    refused(&by_id);
}
