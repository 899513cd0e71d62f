//! Tenant RBAC, operator separation, support access, immediate revocation and decommission,
//! as NOSUPERUSER NOBYPASSRLS roles over real sockets.

mod common;
use common::*;
use postgres::Client;
use serde_json::json;

/// A fixture whose tenant A has members: ann (admin), mia (member), vic (viewer).
fn with_members() -> Fixture {
    let f = Fixture::new();
    let mut su = superuser();
    for (s, r) in [("ann", "admin"), ("mia", "member"), ("vic", "viewer")] {
        su.execute("SELECT tenancy.add_member($1, $2, $3)", &[&f.a, &s, &r])
            .unwrap();
    }
    f
}

fn as_subject(c: &mut Client, f: &Fixture, tenant: &str, sub: &str) {
    c.batch_execute("BEGIN").unwrap();
    c.execute("SELECT tenancy.bind($1)", &[&f.token(tenant, sub)])
        .unwrap();
}

#[test]
fn viewer_reads_but_cannot_write_member_writes_but_cannot_manage() {
    let f = with_members();
    let mut c = app();
    as_subject(&mut c, &f, &f.a, "mia");
    c.batch_execute("INSERT INTO it_orders (amount) VALUES (1), (2)")
        .unwrap();
    let e = c
        .execute("SELECT tenancy.create_role($1, 'auditor')", &[&f.a])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    c.batch_execute("ROLLBACK").unwrap();
    as_subject(&mut c, &f, &f.a, "mia");
    c.batch_execute("INSERT INTO it_orders (amount) VALUES (1), (2); COMMIT")
        .unwrap();

    as_subject(&mut c, &f, &f.a, "vic");
    let n: i64 = c
        .query_one("SELECT count(*) FROM it_orders", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    for (sql, privilege) in [
        ("INSERT INTO it_orders (amount) VALUES (3)", "insert"),
        ("UPDATE it_orders SET amount = 0", "update"),
        ("DELETE FROM it_orders", "delete"),
    ] {
        c.batch_execute("SAVEPOINT s").unwrap();
        let msg = expect_err(&mut c, sql, &["42501"]);
        assert!(
            msg.contains(privilege) && msg.contains("it_orders"),
            "{msg}"
        );
        c.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    }
    c.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn custom_roles_with_per_table_privileges() {
    let f = with_members();
    let mut c = app();
    as_subject(&mut c, &f, &f.a, "ann");
    c.execute("SELECT tenancy.create_role($1, 'auditor')", &[&f.a])
        .unwrap();
    c.execute(
        "SELECT tenancy.grant($1, 'auditor', 'it_orders', '{select}')",
        &[&f.a],
    )
    .unwrap();
    c.execute("SELECT tenancy.add_member($1, 'aud', 'auditor')", &[&f.a])
        .unwrap();
    for (sql, code) in [
        (
            "SELECT tenancy.grant($1, 'auditor', 'it_orders', '{truncate}')",
            "22023",
        ),
        (
            "SELECT tenancy.grant($1, 'nobody', 'it_orders', '{select}')",
            "42704",
        ),
        (
            "SELECT tenancy.revoke($1, 'member', 'it_orders', '{delete}')",
            "55000",
        ),
        ("SELECT tenancy.create_role($1, 'auditor')", "42710"),
        ("SELECT tenancy.drop_role($1, 'admin')", "55000"),
    ] {
        c.batch_execute("SAVEPOINT s").unwrap();
        let e = c.execute(sql, &[&f.a]).unwrap_err();
        assert_eq!(sqlstate(&e), code, "{sql}: {e}");
        c.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    }
    c.batch_execute("COMMIT").unwrap();
    as_subject(&mut c, &f, &f.a, "aud");
    c.query("SELECT * FROM it_orders", &[]).unwrap();
    expect_err(&mut c, "SELECT * FROM it_customers", &["42501"]);
    c.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn token_roles_narrow_and_cannot_widen() {
    let f = with_members();
    let mut c = app();
    c.batch_execute("BEGIN").unwrap();
    let t = f.token_with(json!({"tid": f.a, "sub": "ann", "exp": now() + 60, "roles": ["viewer"]}));
    c.execute("SELECT tenancy.bind($1)", &[&t]).unwrap();
    let roles: Vec<String> = c
        .query_one("SELECT tenancy.current_roles()", &[])
        .unwrap()
        .get(0);
    assert!(
        roles.is_empty(),
        "ann is admin only: narrowing to viewer leaves nothing: {roles:?}"
    );
    expect_err(&mut c, "SELECT * FROM it_orders", &["42501"]);
    c.batch_execute("ROLLBACK; BEGIN").unwrap();
    let t = f.token_with(
        json!({"tid": f.a, "sub": "vic", "exp": now() + 60, "roles": ["admin", "viewer"]}),
    );
    c.execute("SELECT tenancy.bind($1)", &[&t]).unwrap();
    let roles: Vec<String> = c
        .query_one("SELECT tenancy.current_roles()", &[])
        .unwrap()
        .get(0);
    assert_eq!(roles, vec!["viewer"], "a token cannot add admin");
    c.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn admin_of_one_tenant_cannot_touch_another() {
    let f = with_members();
    let mut c = app();
    as_subject(&mut c, &f, &f.a, "ann");
    for other in [&f.b, &f.b_id] {
        for sql in [
            format!("SELECT tenancy.create_role('{other}', 'x')"),
            format!("SELECT tenancy.drop_role('{other}', 'viewer')"),
            format!("SELECT tenancy.grant('{other}', 'viewer', 'it_orders', '{{delete}}')"),
            format!("SELECT tenancy.revoke('{other}', 'member', NULL, '{{select}}')"),
            format!("SELECT tenancy.add_member('{other}', 'ann', 'admin')"),
            format!("SELECT tenancy.remove_member('{other}', 'x', 'member')"),
            format!("SELECT tenancy.set_setting('{other}', 'model', '\"x\"')"),
            format!("SELECT tenancy.suspend_tenant('{other}')"),
            format!("SELECT tenancy.decommission_tenant('{other}', '{other}')"),
        ] {
            c.batch_execute("SAVEPOINT s").unwrap();
            expect_err(&mut c, &sql, &["42501"]);
            c.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
        }
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM tenancy.members", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 3, "an admin sees its own tenant's members only");
    c.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn revocation_reaches_a_concurrently_bound_session_on_its_next_statement() {
    let f = with_members();
    let mut su = superuser();
    let mut c = app();
    // Session-scoped binding with a prepared (cached) plan, inside one long transaction.
    c.execute(
        "SELECT tenancy.bind($1, 'session')",
        &[&f.token(&f.a, "mia")],
    )
    .unwrap();
    let stmt = c.prepare("SELECT count(*) FROM it_orders").unwrap();
    c.batch_execute("BEGIN").unwrap();
    c.query_one(&stmt, &[]).unwrap();
    let start = std::time::Instant::now();
    su.execute("SELECT tenancy.remove_member($1, 'mia', 'member')", &[&f.a])
        .unwrap();
    let committed = start.elapsed();
    // mia now has no membership: she falls back to the default roles (member) unless the
    // tenant says otherwise; make the default empty so removal means no access.
    su.execute(
        "SELECT tenancy.set_setting($1, 'default_roles', '[]')",
        &[&f.a],
    )
    .unwrap();
    let e = c.query_one(&stmt, &[]).unwrap_err();
    let refused = start.elapsed();
    assert_eq!(sqlstate(&e), "42501", "{e}");
    println!(
        "revocation: committed after {:.2} ms, first refused statement {:.2} ms after the revoking call started",
        committed.as_secs_f64() * 1e3,
        refused.as_secs_f64() * 1e3
    );
    c.batch_execute("ROLLBACK").unwrap();

    // Revoking a privilege, dropping a role, suspending the tenant, revoking the key: same.
    su.execute("SELECT tenancy.create_role($1, 'clerk')", &[&f.a])
        .unwrap();
    su.execute(
        "SELECT tenancy.grant($1, 'clerk', NULL, '{select,insert}')",
        &[&f.a],
    )
    .unwrap();
    su.execute("SELECT tenancy.add_member($1, 'cal', 'clerk')", &[&f.a])
        .unwrap();
    let mut c = app();
    c.execute(
        "SELECT tenancy.bind($1, 'session')",
        &[&f.token(&f.a, "cal")],
    )
    .unwrap();
    c.query_one(&stmt_text(), &[]).unwrap();
    su.execute(
        "SELECT tenancy.revoke($1, 'clerk', NULL, '{select}')",
        &[&f.a],
    )
    .unwrap();
    let e = c.query_one(&stmt_text(), &[]).unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    su.execute(
        "SELECT tenancy.grant($1, 'clerk', NULL, '{select}')",
        &[&f.a],
    )
    .unwrap();
    c.query_one(&stmt_text(), &[]).unwrap();
    su.execute("SELECT tenancy.drop_role($1, 'clerk')", &[&f.a])
        .unwrap();
    let e = c.query_one(&stmt_text(), &[]).unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
}

fn stmt_text() -> String {
    "SELECT count(*) FROM it_orders".into()
}

#[test]
fn operators_never_read_tenant_rows_outside_support_access() {
    let f = with_members();
    let mut su = superuser();
    serialized_grant(
        &mut su,
        &format!("GRANT SELECT, INSERT, UPDATE, DELETE ON it_orders TO {OPERATOR}"),
    );
    let mut op = connect(OPERATOR);
    assert_not_privileged(&mut op);
    expect_err(&mut op, "SELECT * FROM it_orders", &["42501"]);
    // Not with a token either (an operator can register keys, so tokens are not for operators).
    let e = op
        .execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "ann")])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    // Nor through a role mapping.
    let e = su
        .execute(
            &format!("SELECT tenancy.map_role('{OPERATOR}', $1)"),
            &[&f.a],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    // Nor by entering support without a grant.
    let e = op
        .execute("SELECT tenancy.enter_support($1)", &[&f.a])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
}

#[test]
fn a_support_binding_is_undone_with_the_transaction_that_rolled_back_its_record() {
    // Found by an attacker's pass: enter_support's record in the tenant's trail rolled back
    // with its transaction, and the session-scoped support binding stayed. A session-scoped
    // binding is now undone with the (sub)transaction it was made in, as a SET is.
    let f = with_members();
    let mut su = superuser();
    serialized_grant(
        &mut su,
        &format!("GRANT SELECT, INSERT, UPDATE, DELETE ON it_orders TO {OPERATOR}"),
    );
    let mut c = app();
    as_subject(&mut c, &f, &f.a, "ann");
    c.batch_execute("INSERT INTO it_orders (amount) VALUES (7)")
        .unwrap();
    c.execute(
        &format!("SELECT tenancy.grant_support('{OPERATOR}', interval '1 hour')"),
        &[],
    )
    .unwrap();
    c.batch_execute("COMMIT").unwrap();
    let records = |su: &mut Client| -> i64 {
        su.query_one(
            "SELECT count(*) FROM tenancy.audit_log l JOIN tenancy.tenants t ON t.id = l.tenant_id \
              WHERE t.slug = $1 AND l.op = 'ADMIN' AND l.new_row->>'action' = 'enter_support'",
            &[&f.a],
        )
        .unwrap()
        .get(0)
    };
    let mut op = connect(OPERATOR);
    assert_not_privileged(&mut op);
    let unbound = |op: &mut Client| {
        let b: Option<String> = op
            .query_one("SELECT tenancy.binding()::text", &[])
            .unwrap()
            .get(0);
        assert_eq!(b, None);
        expect_err(op, "SELECT count(*) FROM it_orders", &["42501"]);
    };
    op.batch_execute("BEGIN").unwrap();
    op.execute("SELECT tenancy.enter_support($1)", &[&f.a])
        .unwrap();
    op.batch_execute("ROLLBACK").unwrap();
    unbound(&mut op);
    op.batch_execute("BEGIN; SAVEPOINT s").unwrap();
    op.execute("SELECT tenancy.enter_support($1)", &[&f.a])
        .unwrap();
    op.batch_execute("ROLLBACK TO SAVEPOINT s; COMMIT").unwrap();
    unbound(&mut op);
    // Nor can a prepared transaction carry it: its fate (a ROLLBACK PREPARED of the
    // operator's own) would be decided after the binding was in use.
    op.batch_execute("BEGIN").unwrap();
    op.execute("SELECT tenancy.enter_support($1)", &[&f.a])
        .unwrap();
    expect_err(&mut op, "PREPARE TRANSACTION 'support_2pc'", &["0A000"]);
    unbound(&mut op);
    assert_eq!(records(&mut su), 0);
    // Kept, with its record, when its transaction commits.
    op.execute("SELECT tenancy.enter_support($1)", &[&f.a])
        .unwrap();
    let n: i64 = op
        .query_one("SELECT count(*) FROM it_orders", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    assert_eq!(records(&mut su), 1);
    // A token's session binding likewise.
    let mut s = app();
    s.batch_execute("BEGIN").unwrap();
    s.execute(
        "SELECT tenancy.bind($1, 'session')",
        &[&f.token(&f.a, "mia")],
    )
    .unwrap();
    s.batch_execute("ROLLBACK").unwrap();
    assert_eq!(bound_tenant(&mut s), Err("42501".to_string()));
}

#[test]
fn support_access_is_granted_by_an_admin_bounded_and_expires() {
    let f = with_members();
    let mut su = superuser();
    serialized_grant(
        &mut su,
        &format!("GRANT SELECT, INSERT, UPDATE, DELETE ON it_orders TO {OPERATOR}"),
    );
    let mut c = app();
    as_subject(&mut c, &f, &f.a, "ann");
    c.batch_execute("INSERT INTO it_orders (amount) VALUES (7)")
        .unwrap();
    c.execute(
        &format!("SELECT tenancy.grant_support('{OPERATOR}', interval '3 seconds')"),
        &[],
    )
    .unwrap();
    c.batch_execute("COMMIT").unwrap();
    // A member cannot grant support.
    as_subject(&mut c, &f, &f.a, "mia");
    expect_err(
        &mut c,
        &format!("SELECT tenancy.grant_support('{OPERATOR}', interval '1 hour')"),
        &["42501"],
    );
    c.batch_execute("ROLLBACK").unwrap();

    let mut op = connect(OPERATOR);
    op.execute("SELECT tenancy.enter_support($1)", &[&f.a])
        .unwrap();
    let n: i64 = op
        .query_one("SELECT count(*) FROM it_orders", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "support sees the granting tenant's rows");
    expect_err(&mut op, "DELETE FROM it_orders", &["42501"]); // select only
                                                              // Not another tenant.
    expect_err(
        &mut op,
        &format!("SELECT tenancy.enter_support('{}')", f.b),
        &["42501"],
    );
    std::thread::sleep(std::time::Duration::from_millis(3500));
    let e = op
        .query_one("SELECT count(*) FROM it_orders", &[])
        .unwrap_err();
    assert!(["42501", "28000"].contains(&sqlstate(&e).as_str()), "{e}");
    let e = op
        .execute("SELECT tenancy.enter_support($1)", &[&f.a])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "an expired grant cannot be entered");
    let audited: i64 = su
        .query_one(
            "SELECT count(*) FROM tenancy.audit_log WHERE tenant_id = $1::text::uuid AND new_row->>'action' IN ('grant_support', 'enter_support')",
            &[&f.a_id],
        )
        .unwrap()
        .get(0);
    assert_eq!(audited, 2);

    // Revocation by the admin ends a live support session from its next statement.
    as_subject(&mut c, &f, &f.a, "ann");
    c.execute(
        &format!(
            "SELECT tenancy.grant_support('{OPERATOR}', interval '1 hour', '{{select,update}}')"
        ),
        &[],
    )
    .unwrap();
    c.batch_execute("COMMIT").unwrap();
    let mut op = connect(OPERATOR);
    op.execute("SELECT tenancy.enter_support($1)", &[&f.a])
        .unwrap();
    op.batch_execute("UPDATE it_orders SET amount = 8").unwrap();
    as_subject(&mut c, &f, &f.a, "ann");
    c.execute(&format!("SELECT tenancy.revoke_support('{OPERATOR}')"), &[])
        .unwrap();
    c.batch_execute("COMMIT").unwrap();
    expect_err(&mut op, "SELECT count(*) FROM it_orders", &["42501"]);
}

#[test]
fn decommission_removes_every_row_of_the_tenant_and_no_other() {
    let f = with_members();
    let mut c = app();
    for t in [&f.a, &f.b] {
        as_subject(&mut c, &f, t, "ann");
        c.batch_execute(
            "INSERT INTO it_customers (id, name) SELECT g, 'c' || g FROM generate_series(1, 5) g; \
             INSERT INTO it_items (id, customer_id, qty) SELECT g, 1 + g % 5, g FROM generate_series(1, 20) g; \
             INSERT INTO it_orders (amount) SELECT g FROM generate_series(1, 7) g; \
             INSERT INTO it_events (id, at) VALUES (1, '2026-03-01'), (2, '2027-03-01'); COMMIT",
        )
        .unwrap();
    }
    let mut su = superuser();
    let count = |su: &mut Client, id: &str| -> i64 {
        su.query_one(
            "SELECT (SELECT count(*) FROM it_customers WHERE tenant_id = $1::text::uuid) \
                  + (SELECT count(*) FROM it_items WHERE tenant_id = $1::text::uuid) \
                  + (SELECT count(*) FROM it_orders WHERE tenant_id = $1::text::uuid) \
                  + (SELECT count(*) FROM it_events WHERE tenant_id = $1::text::uuid)",
            &[&id],
        )
        .unwrap()
        .get(0)
    };
    let (a_before, b_before) = (count(&mut su, &f.a_id), count(&mut su, &f.b_id));
    assert_eq!((a_before, b_before), (34, 34));
    let mut op = connect(OPERATOR);
    let e = op
        .execute("SELECT tenancy.decommission_tenant($1, 'wrong')", &[&f.a])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22023");
    let cert: String = op
        .query_one("SELECT tenancy.decommission_tenant($1, $1)::text", &[&f.a])
        .unwrap()
        .get(0);
    let cert: serde_json::Value = serde_json::from_str(&cert).unwrap();
    assert_eq!(cert["total_rows_deleted"], 34);
    assert_eq!(cert["rows_deleted"]["public.it_items"], 20);
    assert_eq!(cert["signature"].as_str().unwrap().len(), 128);
    let signed: bool = op
        .query_one(
            "SELECT tenancy.verify_certificate($1::text::jsonb)",
            &[&cert.to_string()],
        )
        .unwrap()
        .get(0);
    assert!(signed);
    assert_eq!(
        (count(&mut su, &f.a_id), count(&mut su, &f.b_id)),
        (0, 34),
        "other tenants untouched"
    );
    // Tombstone: the slug cannot be reused, the tenant cannot be bound, its members are gone.
    expect_err(
        &mut su,
        &format!("SELECT tenancy.create_tenant('{}')", f.a),
        &["42710"],
    );
    let e = c
        .execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "ann")])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    let n: i64 = su
        .query_one(
            "SELECT count(*) FROM tenancy.member WHERE tenant_id = $1::text::uuid",
            &[&f.a_id],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let audited: String = su
        .query_one(
            "SELECT new_row->>'signature' FROM tenancy.audit_log WHERE tenant_id = $1::text::uuid AND new_row->>'action' = 'decommission_tenant'",
            &[&f.a_id],
        )
        .unwrap()
        .get(0);
    assert_eq!(audited, cert["signature"].as_str().unwrap());
}

/// Reading through pg_tenancy assigns no transaction id: a bound read-only transaction leaves
/// `txid_current_if_assigned()` NULL, in a backend's first use of pg_tenancy's catalog and
/// when a partition's privilege comes from a grant on its parent (the parent looked up in
/// pg_inherits). A transaction id on a read path fails inside a parallel operation and on a
/// hot standby, and costs a commit record everywhere.
#[test]
fn reads_assign_no_transaction_id() {
    let f = with_members();
    let mut c = app();
    as_subject(&mut c, &f, &f.a, "ann");
    c.execute("SELECT tenancy.create_role($1, 'evreader')", &[&f.a])
        .unwrap();
    c.execute(
        "SELECT tenancy.grant($1, 'evreader', 'it_events', '{select}')",
        &[&f.a],
    )
    .unwrap();
    c.execute("SELECT tenancy.add_member($1, 'eve', 'evreader')", &[&f.a])
        .unwrap();
    c.batch_execute(
        "INSERT INTO it_events (id, at) VALUES (1, '2026-05-01'), (2, '2026-06-01'); COMMIT",
    )
    .unwrap();

    for (sub, table, rows) in [
        ("mia", "it_orders", 0i64),
        ("eve", "it_events_2026", 2),
        ("eve", "it_events", 2),
    ] {
        let mut c = app();
        as_subject(&mut c, &f, &f.a, sub);
        let n: i64 = c
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .map_err(|e| message(&e))
            .unwrap()
            .get(0);
        assert_eq!(n, rows, "{sub} on {table}");
        let xid: Option<i64> = c
            .query_one("SELECT txid_current_if_assigned()", &[])
            .unwrap()
            .get(0);
        assert_eq!(
            xid, None,
            "{sub} reading {table} was given a transaction id"
        );
        c.batch_execute("COMMIT").unwrap();
    }
}

#[test]
fn grant_and_revoke_refuse_null_privileges_with_a_sqlstate() {
    // An attacker's pass: a NULL privilege list, or a NULL in it, met an internal error (XX000).
    let f = Fixture::new();
    let mut op = connect(OPERATOR);
    assert_not_privileged(&mut op);
    for sql in [
        "SELECT tenancy.grant($1, 'member', NULL, NULL)",
        "SELECT tenancy.grant($1, 'member', NULL, '{NULL}')",
        "SELECT tenancy.revoke($1, 'member', NULL, NULL)",
        "SELECT tenancy.revoke($1, 'member', NULL, '{select,NULL}')",
    ] {
        let e = op.execute(sql, &[&f.a]).unwrap_err();
        assert_eq!(sqlstate(&e), "22004", "{sql}: {}", message(&e));
    }
}

#[test]
fn grant_support_and_audit_exclude_refuse_a_null_name_with_a_sqlstate() {
    // An attacker's pass: '{NULL}' met an internal error (XX000).
    let f = Fixture::new();
    f.seat_admin(&f.a, "boss");
    let mut admin = app();
    assert_not_privileged(&mut admin);
    for sql in [
        format!("SELECT tenancy.grant_support('{OPERATOR}', '1 hour', '{{select,NULL}}')"),
        "SELECT tenancy.audit_exclude('it_orders', '{NULL}')".to_string(),
    ] {
        admin.batch_execute("BEGIN").unwrap();
        bind(&mut admin, &f.token(&f.a, "boss"));
        let e = admin.batch_execute(&sql).unwrap_err();
        assert_eq!(sqlstate(&e), "22004", "{sql}: {}", message(&e));
        admin.batch_execute("ROLLBACK").unwrap();
    }
}
