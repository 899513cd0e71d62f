//! Every refusal an application can meet, with its SQLSTATE and its machine-readable code (the
//! DETAIL line `pg_tenancy: <code>`) as the README's error catalogue lists them. An
//! application maps the code to what it does next (log in again, show 403, fix its own bug)
//! without parsing messages; these tests fail if a code or its SQLSTATE changes. As
//! NOSUPERUSER NOBYPASSRLS roles over real sockets.

mod common;
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;
use std::sync::{Arc, Mutex};

/// `bind(token)` in a transaction, expecting `state` and `code`; the transaction is rolled back.
fn bind_refused(c: &mut postgres::Client, token: &str, state: &str, code: &str) -> String {
    c.batch_execute("BEGIN").unwrap();
    let m = expect_refusal(
        c,
        &format!("SELECT tenancy.bind('{}')", token.replace('\'', "''")),
        state,
        code,
    );
    c.batch_execute("ROLLBACK").unwrap();
    m
}

// --- Authentication failures (28000): the request's credentials are not good. -----------

#[test]
fn token_missing_invalid_expired_and_not_yet_valid() {
    let f = Fixture::new();
    let mut c = app();
    c.batch_execute("BEGIN").unwrap();
    let m = expect_refusal(
        &mut c,
        "SELECT tenancy.bind(NULL)",
        "28000",
        "token_missing",
    );
    assert_eq!(m, "no token");
    c.batch_execute("ROLLBACK").unwrap();
    bind_refused(&mut c, "not.a.token", "28000", "token_invalid");
    bind_refused(
        &mut c,
        &f.token_with(json!({"tid": f.a, "sub": "u", "exp": now() - 30})),
        "28000",
        "token_expired",
    );
    bind_refused(
        &mut c,
        &f.token_with(json!({"tid": f.a, "sub": "u", "exp": now() + 600, "nbf": now() + 300})),
        "28000",
        "token_not_yet_valid",
    );
}

#[test]
fn unknown_tenant_is_an_authentication_failure() {
    let f = Fixture::new();
    let mut c = app();
    let m = bind_refused(
        &mut c,
        &f.token_with(json!({"tid": unique("nobody"), "sub": "u", "exp": now() + 60})),
        "28000",
        "unknown_tenant",
    );
    assert_eq!(m, "token names an unknown tenant");
}

#[test]
fn unknown_expired_and_wrong_tenant_keys() {
    let f = Fixture::new();
    let mut su = superuser();
    let mut c = app();
    let claims = json!({"tid": f.a, "sub": "u", "exp": now() + 60});
    bind_refused(
        &mut c,
        &sign(Algorithm::HS256, &unique("nokid"), &claims),
        "28000",
        "key_unknown",
    );
    // A key scoped to tenant B cannot vouch for tenant A.
    let scoped = unique("scoped");
    su.execute(
        "SELECT tenancy.add_key($1, 'HS256', $2, $3)",
        &[&scoped, &HS_SECRET, &f.b],
    )
    .unwrap();
    bind_refused(
        &mut c,
        &sign(Algorithm::HS256, &scoped, &claims),
        "28000",
        "key_wrong_tenant",
    );
    // A key past its not_after (kept to the second).
    let short = unique("short");
    su.execute(
        "SELECT tenancy.add_key($1, 'HS256', $2, not_after => now() + interval '1 second')",
        &[&short, &HS_SECRET],
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    bind_refused(
        &mut c,
        &sign(Algorithm::HS256, &short, &claims),
        "28000",
        "key_expired",
    );
}

#[test]
fn revoked_tokens_and_subjects() {
    let f = Fixture::new();
    let mut su = superuser();
    let mut c = app();
    let jti = unique("jti");
    let t = f.token_with(json!({"tid": f.a, "sub": "u", "exp": now() + 60, "jti": jti}));
    su.execute("SELECT tenancy.revoke_token($1)", &[&jti])
        .unwrap();
    bind_refused(&mut c, &t, "28000", "token_revoked");
    let sub = unique("sub");
    let t = f.token_with(json!({"tid": f.a, "sub": sub, "iat": now() - 5, "exp": now() + 60}));
    su.execute("SELECT tenancy.revoke_subject($1, $2)", &[&f.a, &sub])
        .unwrap();
    bind_refused(&mut c, &t, "28000", "token_revoked");
}

#[test]
fn a_binding_whose_token_expires_ends_at_the_next_statement() {
    let f = Fixture::new();
    let mut c = app();
    c.batch_execute("BEGIN").unwrap();
    bind(
        &mut c,
        &f.token_with(json!({"tid": f.a, "sub": "u", "exp": now() + 2})),
    );
    std::thread::sleep(std::time::Duration::from_millis(3100));
    expect_refusal(
        &mut c,
        "SELECT count(*) FROM it_orders",
        "28000",
        "binding_expired",
    );
    c.batch_execute("ROLLBACK").unwrap();
}

// --- The tenant or subject may not act now (42501): the credentials are good. -------------

#[test]
fn suspended_tenant_and_wrong_region() {
    let f = Fixture::new();
    let mut su = superuser();
    let mut c = app();
    su.execute("SELECT tenancy.suspend_tenant($1, 'unpaid')", &[&f.b])
        .unwrap();
    bind_refused(&mut c, &f.token(&f.b, "u"), "42501", "tenant_unavailable");
    let eu = unique("eu");
    su.execute(
        "SELECT tenancy.create_tenant($1, region => 'eu-west')",
        &[&eu],
    )
    .unwrap();
    c.batch_execute("BEGIN").unwrap();
    // tenancy.region is for the platform: an application cannot claim another region.
    expect_err(&mut c, "SET LOCAL tenancy.region = 'eu-west'", &["42501"]);
    c.batch_execute("ROLLBACK").unwrap();
    let mut region_role = superuser();
    region_role
        .batch_execute(&format!(
            "CREATE ROLE {r} LOGIN NOSUPERUSER NOBYPASSRLS; ALTER ROLE {r} SET tenancy.region = 'us-east'",
            r = "it_err_region"
        ))
        .or_else(|_| {
            region_role.batch_execute("ALTER ROLE it_err_region SET tenancy.region = 'us-east'")
        })
        .unwrap();
    let mut us = connect("it_err_region");
    assert_not_privileged(&mut us);
    bind_refused(&mut us, &f.token(&eu, "u"), "42501", "wrong_region");
}

#[test]
fn a_binding_ends_at_the_next_statement_when_the_servers_region_changes() {
    // tenancy.region changes without any change of pg_tenancy's catalog (SET by a superuser, or
    // a reload): a binding validated before is checked against it again (src/binding/memo.rs).
    let f = Fixture::new();
    let eu = unique("eu");
    let mut su = superuser();
    su.execute(
        "SELECT tenancy.create_tenant($1, region => 'eu-west')",
        &[&eu],
    )
    .unwrap();
    su.batch_execute("SET tenancy.region = 'eu-west'").unwrap();
    su.execute("SELECT tenancy.bind($1, 'session')", &[&f.token(&eu, "u")])
        .unwrap();
    su.batch_execute("SELECT tenancy.current_tenant()").unwrap();
    su.batch_execute("SELECT tenancy.current_tenant()").unwrap();
    su.batch_execute("SET tenancy.region = 'us-east'").unwrap();
    expect_refusal(
        &mut su,
        "SELECT tenancy.current_tenant()",
        "42501",
        "wrong_region",
    );
}

#[test]
fn a_removed_membership_ends_the_binding_at_the_next_statement() {
    let f = Fixture::new();
    let mut su = superuser();
    let sub = unique("member");
    su.execute("SELECT tenancy.add_member($1, $2, 'viewer')", &[&f.a, &sub])
        .unwrap();
    let mut c = app();
    c.batch_execute("BEGIN").unwrap();
    bind(&mut c, &f.token(&f.a, &sub));
    c.batch_execute("SELECT count(*) FROM it_orders").unwrap();
    su.execute(
        "SELECT tenancy.remove_member($1, $2, 'viewer')",
        &[&f.a, &sub],
    )
    .unwrap();
    expect_refusal(
        &mut c,
        "SELECT count(*) FROM it_orders",
        "42501",
        "membership_removed",
    );
    c.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn a_removed_mapping_ends_the_binding_and_a_mapped_role_binds_nothing_else() {
    let f = Fixture::new();
    let mut su = superuser();
    let role = unique("errmap").replace('-', "_");
    su.batch_execute(&format!("CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS"))
        .unwrap();
    su.batch_execute(&format!(
        "GRANT SELECT ON it_orders TO {role}; GRANT USAGE ON SCHEMA tenancy TO {role}"
    ))
    .ok();
    su.execute(&format!("SELECT tenancy.map_role('{role}', $1)"), &[&f.a])
        .unwrap();
    let mut c = connect(&role);
    assert_not_privileged(&mut c);
    bind_refused(
        &mut c,
        &f.token(&f.b, "u"),
        "42501",
        "role_mapped_elsewhere",
    );
    c.batch_execute("BEGIN").unwrap();
    assert_eq!(bound_tenant(&mut c), Ok(f.a_id.clone()));
    su.execute(&format!("SELECT tenancy.unmap_role('{role}', $1)"), &[&f.a])
        .unwrap();
    expect_refusal(
        &mut c,
        "SELECT tenancy.current_tenant()",
        "42501",
        "mapping_removed",
    );
    c.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn a_revoked_support_grant_ends_the_operators_access() {
    let f = Fixture::new();
    let mut su = superuser();
    let admin = unique("boss");
    su.execute(
        "SELECT tenancy.add_member($1, $2, 'admin')",
        &[&f.a, &admin],
    )
    .unwrap();
    let mut c = app();
    c.batch_execute("BEGIN").unwrap();
    bind(&mut c, &f.token(&f.a, &admin));
    c.batch_execute(&format!(
        "SELECT tenancy.grant_support('{OPERATOR}', interval '1 hour'); COMMIT"
    ))
    .unwrap();
    let mut op = connect(OPERATOR);
    op.execute("SELECT tenancy.enter_support($1)", &[&f.a])
        .unwrap();
    assert_eq!(bound_tenant(&mut op), Ok(f.a_id.clone()));
    c.batch_execute("BEGIN").unwrap();
    bind(&mut c, &f.token(&f.a, &admin));
    c.batch_execute(&format!(
        "SELECT tenancy.revoke_support('{OPERATOR}'); COMMIT"
    ))
    .unwrap();
    expect_refusal(
        &mut op,
        "SELECT tenancy.current_tenant()",
        "42501",
        "support_ended",
    );
}

// --- The application's own bugs (42501, 25P01): fix the code, do not retry. ------------

#[test]
fn no_tenant_bound_names_the_table() {
    let mut c = app();
    let m = expect_refusal(
        &mut c,
        "SELECT count(*) FROM it_orders",
        "42501",
        "no_tenant_bound",
    );
    assert_eq!(
        m,
        "no tenant bound: table \"public.it_orders\" is protected"
    );
    let m = expect_refusal(
        &mut c,
        "SELECT tenancy.current_tenant()",
        "42501",
        "no_tenant_bound",
    );
    assert_eq!(m, "no tenant bound");
}

#[test]
fn bind_outside_a_transaction_block_warns_like_set_local() {
    let warnings: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let seen = warnings.clone();
    let mut config = config(APP);
    config.notice_callback(move |n| {
        seen.lock().unwrap().push((
            n.code().code().to_string(),
            n.detail().unwrap_or_default().to_string(),
        ))
    });
    let mut c = config.connect(postgres::NoTls).unwrap();
    assert_not_privileged(&mut c);
    let f = Fixture::new();
    c.batch_execute(&format!("SELECT tenancy.bind('{}')", f.token(&f.a, "u")))
        .unwrap();
    assert_eq!(
        warnings.lock().unwrap().as_slice(),
        &[(
            "25P01".to_string(),
            "pg_tenancy: not_in_transaction".to_string()
        )]
    );
    // It bound nothing that outlives its own statement.
    expect_refusal(
        &mut c,
        "SELECT count(*) FROM it_orders",
        "42501",
        "no_tenant_bound",
    );
    // In a transaction block: no warning.
    c.batch_execute(&format!(
        "BEGIN; SELECT tenancy.bind('{}'); ROLLBACK",
        f.token(&f.a, "u")
    ))
    .unwrap();
    assert_eq!(warnings.lock().unwrap().len(), 1);
    // Nor in a DO block (or a procedure) that commits: the transaction, and the binding, go
    // on past the bind's statement to the block's COMMIT, as SET LOCAL's do.
    c.batch_execute(&format!(
        "DO $$ DECLARE n bigint; BEGIN \
           PERFORM tenancy.bind('{}'); \
           SELECT count(*) INTO n FROM it_orders; \
           COMMIT; \
         END $$",
        f.token(&f.a, "u")
    ))
    .unwrap();
    assert_eq!(warnings.lock().unwrap().len(), 1);
    expect_refusal(
        &mut c,
        "SELECT count(*) FROM it_orders",
        "42501",
        "no_tenant_bound",
    );
}

#[test]
fn rebinding_another_tenant_or_subject_is_refused() {
    let f = Fixture::new();
    let mut c = f.session_as(&f.a, "alice");
    c.batch_execute("SELECT count(*) FROM it_orders").unwrap();
    expect_refusal(
        &mut c,
        &format!("SELECT tenancy.bind('{}')", f.token(&f.b, "alice")),
        "42501",
        "rebind_refused",
    );
    c.batch_execute("ROLLBACK; BEGIN").unwrap();
    bind(&mut c, &f.token(&f.a, "alice"));
    expect_refusal(
        &mut c,
        &format!("SELECT tenancy.bind('{}')", f.token(&f.a, "alice2")),
        "42501",
        "rebind_refused",
    );
    c.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn session_scope_disabled() {
    let f = Fixture::new();
    let mut su = superuser();
    let role = unique("pooled").replace('-', "_");
    su.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS; ALTER ROLE {role} SET tenancy.allow_session_scope = off"
    ))
    .unwrap();
    let mut c = connect(&role);
    assert_not_privileged(&mut c);
    expect_refusal(
        &mut c,
        &format!("SELECT tenancy.bind('{}', 'session')", f.token(&f.a, "u")),
        "42501",
        "session_scope_disabled",
    );
}

#[test]
fn platform_roles_cannot_bind() {
    let f = Fixture::new();
    let mut op = connect(OPERATOR);
    assert_not_privileged(&mut op);
    bind_refused(&mut op, &f.token(&f.a, "u"), "42501", "platform_role");
}

#[test]
fn cross_tenant_writes_and_missing_privileges() {
    let f = Fixture::new();
    let mut su = superuser();
    let viewer = unique("viewer");
    su.execute(
        "SELECT tenancy.add_member($1, $2, 'viewer')",
        &[&f.a, &viewer],
    )
    .unwrap();
    let mut c = f.session_as(&f.a, "u");
    expect_refusal(
        &mut c,
        &format!(
            "INSERT INTO it_orders (tenant_id, amount) VALUES ('{}', 1)",
            f.b_id
        ),
        "42501",
        "cross_tenant_write_refused",
    );
    c.batch_execute("ROLLBACK; BEGIN").unwrap();
    bind(&mut c, &f.token(&f.a, &viewer));
    expect_refusal(
        &mut c,
        "INSERT INTO it_orders (amount) VALUES (1)",
        "42501",
        "privilege_refused",
    );
    c.batch_execute("ROLLBACK").unwrap();
}
