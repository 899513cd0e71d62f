//! Channels outside the policies: what PostgreSQL lets a table's or a domain's owner do, what
//! verify() must see, locks, security events, log lines and error texts. One test per channel,
//! as NOSUPERUSER roles; each shows a refusal with its SQLSTATE and HINT, or an `error` row of
//! verify() whose fixing SQL, once applied, clears it. Catalogued in ATTACKS.md ("Channels
//! outside the policies").

mod common;
use common::*;
use postgres::Client;
use std::sync::{Arc, Mutex};

fn schema(su: &mut Client) -> String {
    let s = ident("ch");
    su.batch_execute(&format!(
        "CREATE SCHEMA {s}; GRANT USAGE ON SCHEMA {s} TO {APP}"
    ))
    .unwrap();
    s
}

/// verify()'s rows of `rule` about objects of schema `s`: (severity, object, fix).
fn verify_rows(su: &mut Client, s: &str, rule: &str) -> Vec<(String, String, String)> {
    su.query(
        "SELECT severity, object, fix FROM tenancy.verify() WHERE rule = $1 AND (object LIKE $2 || '.%' OR detail LIKE '%' || $2 || '.%')",
        &[&rule, &s],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// `rule` is reported as an error about schema `s`; its fix, run by the superuser, clears it.
fn reported_and_fixed(su: &mut Client, s: &str, rule: &str) {
    let rows = verify_rows(su, s, rule);
    assert!(!rows.is_empty(), "{rule} not reported for {s}");
    for (severity, object, fix) in &rows {
        assert_eq!(severity, "error", "{rule} {object}");
        su.batch_execute(fix)
            .unwrap_or_else(|e| panic!("fix of {rule} {object} failed: {fix}: {}", message(&e)));
    }
    let left = verify_rows(su, s, rule);
    assert!(
        left.is_empty(),
        "{rule} still reported after its fix: {left:?}"
    );
}

/// A connection as `user` that collects the NOTICEs the server sends it.
fn with_notices(user: &str) -> (Client, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let mut cfg = config(user);
    cfg.notice_callback(move |n| sink.lock().unwrap().push(n.message().to_string()));
    (cfg.connect(postgres::NoTls).unwrap(), seen)
}

/// A leaky function owned by `owner`: it shows every value it sees as a NOTICE.
fn leaky_function(su: &mut Client, s: &str, owner: &str) {
    su.batch_execute(&format!(
        "SET ROLE {owner}; \
         CREATE FUNCTION {s}.leak(text) RETURNS boolean LANGUAGE plpgsql AS \
         $$ BEGIN RAISE NOTICE 'leaked: %', $1; RETURN true; END $$; \
         RESET ROLE"
    ))
    .unwrap();
}

/// A NOSUPERUSER login role owning schema `s`, with a protected table `s.t` holding
/// `<slug>-secret` rows of both tenants.
fn owned_table(su: &mut Client, f: &Fixture) -> (String, String) {
    let s = schema(su);
    let owner = ident("own");
    su.batch_execute(&format!(
        "CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS; ALTER SCHEMA {s} OWNER TO {owner}; \
         SET ROLE {owner}; \
         CREATE TABLE {s}.t (tenant_id uuid NOT NULL, id int NOT NULL, body text, PRIMARY KEY (tenant_id, id)); \
         CREATE TABLE {s}.own_parent (tenant_id uuid, id int, body text); \
         RESET ROLE; \
         SELECT tenancy.protect('{s}.t'); \
         INSERT INTO {s}.t VALUES ('{a}', 1, '{an}-secret'), ('{b}', 1, '{bn}-secret')",
        a = f.a_id,
        an = f.a,
        b = f.b_id,
        bn = f.b
    ))
    .unwrap();
    (s, owner)
}

// 1. Foreign-key cascades from a shared table -------------------------------------------------

#[test]
fn a_cascade_from_a_shared_table_is_reported_and_its_fix_stops_it() {
    let f = Fixture::new();
    let mut su = superuser();
    let s = schema(&mut su);
    su.batch_execute(&format!(
        "CREATE TABLE {s}.lookup (id int PRIMARY KEY); INSERT INTO {s}.lookup VALUES (1), (2); \
         GRANT SELECT, UPDATE, DELETE ON {s}.lookup TO {APP}; \
         CREATE TABLE {s}.docs (tenant_id uuid NOT NULL, id int NOT NULL, kind int REFERENCES {s}.lookup ON DELETE CASCADE ON UPDATE CASCADE, \
                                PRIMARY KEY (tenant_id, id)); \
         SELECT tenancy.protect('{s}.docs'); GRANT SELECT ON {s}.docs TO {APP}; \
         INSERT INTO {s}.docs VALUES ('{a}', 1, 1), ('{b}', 1, 2)",
        a = f.a_id,
        b = f.b_id
    ))
    .unwrap();
    reported_and_fixed(&mut su, &s, "fk_cascade_from_shared_table");
    // After the fix, a session bound to A cannot delete B's rows through the lookup table.
    let mut c = app();
    c.batch_execute("BEGIN").unwrap();
    bind(&mut c, &f.token(&f.a, "x"));
    expect_err(
        &mut c,
        &format!("DELETE FROM {s}.lookup WHERE id = 2"),
        &["23503"],
    );
    c.batch_execute("ROLLBACK").unwrap();
    let b_rows: i64 = su
        .query_one(
            &format!(
                "SELECT count(*) FROM {s}.docs WHERE tenant_id = '{}'",
                f.b_id
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(b_rows, 1);
}

// 2. The table's owner ---------------------------------------------------------------------------

#[test]
fn a_tables_owner_cannot_run_code_over_every_tenants_rows() {
    let f = Fixture::new();
    let mut su = superuser();
    let (s, owner) = owned_table(&mut su, &f);
    leaky_function(&mut su, &s, &owner);
    let (mut c, notices) = with_notices(&owner);
    assert_not_privileged(&mut c);
    for (sql, what) in [
        (format!("ALTER TABLE {s}.t ADD CONSTRAINT peek CHECK ({s}.leak(body))"), "CHECK"),
        (format!("CREATE INDEX ON {s}.t ({s}.leak(body))"), "index expression"),
        (format!("CREATE INDEX ON {s}.t (id) WHERE {s}.leak(body)"), "index predicate"),
        (format!("ALTER TABLE {s}.t ADD COLUMN g boolean GENERATED ALWAYS AS ({s}.leak(body)) STORED"), "generated column"),
        (format!("ALTER TABLE {s}.t ALTER COLUMN id TYPE text USING {s}.leak(body)::text"), "ALTER TYPE USING"),
        (format!("ALTER TABLE {s}.t ALTER COLUMN body TYPE int USING body::int"), "a cast that quotes its input"),
        (format!("CREATE STATISTICS {s}.st ON ({s}.leak(body)) FROM {s}.t"), "statistics expression"),
        (format!("ALTER TABLE {s}.t INHERIT {s}.own_parent"), "INHERIT"),
    ] {
        let e = c.batch_execute(&sql).unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{what}: {}", message(&e));
        assert!(
            e.as_db_error().and_then(|d| d.hint()).is_some(),
            "{what}: no HINT"
        );
    }
    let leaked = notices.lock().unwrap().clone();
    assert!(leaked.is_empty(), "values reached the owner: {leaked:?}");
    // Nothing reads B's rows through the unprotected parent either.
    let through_parent: i64 = c
        .query_one(&format!("SELECT count(*) FROM {s}.own_parent"), &[])
        .unwrap()
        .get(0);
    assert_eq!(through_parent, 0);
    // Built-in leakproof expressions stay the owner's to add.
    c.batch_execute(&format!(
        "ALTER TABLE {s}.t ADD CONSTRAINT positive CHECK (id > 0)"
    ))
    .unwrap();
    // The owner can log in and bind: verify() says so, and its fix moves the table away.
    reported_and_fixed(&mut su, &s, "owner_can_bind");
}

#[test]
fn a_leaky_constraint_made_before_protection_is_reported_and_refused_validation() {
    let f = Fixture::new();
    let mut su = superuser();
    let s = schema(&mut su);
    let owner = ident("own");
    su.batch_execute(&format!(
        "CREATE ROLE {owner} NOLOGIN NOSUPERUSER NOBYPASSRLS; ALTER SCHEMA {s} OWNER TO {owner}"
    ))
    .unwrap();
    leaky_function(&mut su, &s, &owner);
    su.batch_execute(&format!(
        "SET ROLE {owner}; \
         CREATE TABLE {s}.t (tenant_id uuid NOT NULL, id int NOT NULL, body text); \
         ALTER TABLE {s}.t ADD CONSTRAINT peek CHECK ({s}.leak(body)) NOT VALID; \
         RESET ROLE; SELECT tenancy.protect('{s}.t'); \
         INSERT INTO {s}.t VALUES ('{a}', 1, 'x')",
        a = f.a_id
    ))
    .unwrap();
    // Validating it would run it over every tenant's rows: refused for the owner.
    su.batch_execute(&format!("GRANT {owner} TO {APP}"))
        .unwrap();
    let mut c = app();
    c.batch_execute(&format!("SET ROLE {owner}")).unwrap();
    expect_err(
        &mut c,
        &format!("ALTER TABLE {s}.t VALIDATE CONSTRAINT peek"),
        &["42501"],
    );
    c.batch_execute("RESET ROLE").unwrap();
    reported_and_fixed(&mut su, &s, "leaky_expression");
}

// 3. The owner of a domain -----------------------------------------------------------------------

#[test]
fn a_domains_owner_cannot_check_every_tenants_values() {
    let f = Fixture::new();
    let mut su = superuser();
    let s = schema(&mut su);
    let owner = ident("down");
    su.batch_execute(&format!(
        "CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS; GRANT CREATE, USAGE ON SCHEMA {s} TO {owner}; \
         CREATE DOMAIN {s}.label AS text; ALTER DOMAIN {s}.label OWNER TO {owner}; \
         CREATE TABLE {s}.t (tenant_id uuid NOT NULL, id int NOT NULL, l {s}.label); \
         SELECT tenancy.protect('{s}.t'); \
         INSERT INTO {s}.t VALUES ('{a}', 1, 'a-label'), ('{b}', 1, '{bn}-secret-label')",
        a = f.a_id,
        b = f.b_id,
        bn = f.b
    ))
    .unwrap();
    leaky_function(&mut su, &s, &owner);
    let (mut c, notices) = with_notices(&owner);
    assert_not_privileged(&mut c);
    let e = c
        .batch_execute(&format!(
            "ALTER DOMAIN {s}.label ADD CONSTRAINT peek CHECK ({s}.leak(VALUE))"
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    assert!(
        notices.lock().unwrap().is_empty(),
        "{:?}",
        notices.lock().unwrap()
    );
    reported_and_fixed(&mut su, &s, "domain_owner_can_bind");
}

// 4. Existence oracles ---------------------------------------------------------------------------

#[test]
fn expression_and_partial_unique_indexes_and_exclusions_without_the_tenant_are_reported() {
    let f = Fixture::new();
    let mut su = superuser();
    let s = schema(&mut su);
    // Made by a superuser (the guard refuses lower() to anyone else on a protected table).
    su.batch_execute(&format!(
        "CREATE TABLE {s}.t (tenant_id uuid NOT NULL, id int NOT NULL, title text, room int, live boolean, \
                             PRIMARY KEY (tenant_id, id)); \
         CREATE UNIQUE INDEX t_title ON {s}.t (lower(title)); \
         CREATE UNIQUE INDEX t_live ON {s}.t (room) WHERE live; \
         ALTER TABLE {s}.t ADD CONSTRAINT t_room EXCLUDE USING btree (room WITH =) WHERE (NOT live); \
         SELECT tenancy.protect('{s}.t'); GRANT SELECT, INSERT ON {s}.t TO {APP}; \
         INSERT INTO {s}.t VALUES ('{b}', 1, 'Merger Plan', 7, true)",
        b = f.b_id
    ))
    .unwrap();
    // The oracle: A learns that someone holds "merger plan".
    let mut c = app();
    c.batch_execute("BEGIN").unwrap();
    bind(&mut c, &f.token(&f.a, "x"));
    expect_err(
        &mut c,
        &format!("INSERT INTO {s}.t (id, title) VALUES (1, 'merger plan')"),
        &["23505"],
    );
    c.batch_execute("ROLLBACK").unwrap();
    reported_and_fixed(&mut su, &s, "unique_index_without_tenant");
    // After the fixes the same inserts tell A nothing.
    c.batch_execute("BEGIN").unwrap();
    bind(&mut c, &f.token(&f.a, "x"));
    c.batch_execute(&format!(
        "INSERT INTO {s}.t (id, title, room, live) VALUES (1, 'merger plan', 7, true), (2, 'x', 7, false)"
    ))
    .unwrap();
    c.batch_execute("ROLLBACK").unwrap();
}

// 5. Locks ---------------------------------------------------------------------------------------

#[test]
fn an_application_session_cannot_lock_a_protected_table_against_every_tenant() {
    // On the cluster that preloads pg_tenancy: the refusal needs the library loaded before the
    // session's first statement.
    let mut c = connect_preloaded(APP);
    assert_not_privileged(&mut c);
    c.batch_execute("BEGIN").unwrap();
    for mode in [
        "ACCESS EXCLUSIVE",
        "EXCLUSIVE",
        "SHARE",
        "SHARE ROW EXCLUSIVE",
    ] {
        c.batch_execute("SAVEPOINT s").unwrap();
        let e = c
            .batch_execute(&format!("LOCK TABLE it_customers IN {mode} MODE"))
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{mode}: {}", message(&e));
        assert!(e.as_db_error().and_then(|d| d.hint()).is_some());
        c.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    }
    c.batch_execute("LOCK TABLE it_customers IN ROW EXCLUSIVE MODE; ROLLBACK")
        .unwrap();
    // An unbound operator may (a migration that needs the table to itself).
    serialized_grant(
        &mut connect_preloaded("postgres"),
        &format!("GRANT UPDATE ON it_customers TO {OPERATOR}"),
    );
    let mut op = connect_preloaded(OPERATOR);
    op.batch_execute("BEGIN; LOCK TABLE it_customers IN SHARE MODE; ROLLBACK")
        .unwrap();
    // Where the library is not preloaded, verify() says the refusal depends on it.
    let warned: i64 = superuser()
        .query_one(
            "SELECT count(*) FROM tenancy.verify() WHERE rule = 'library_not_preloaded'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(warned, 1);
    let warned: i64 = connect_preloaded("postgres")
        .query_one(
            "SELECT count(*) FROM tenancy.verify() WHERE rule = 'library_not_preloaded'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(warned, 0);
}

// 6. Hiding security events ----------------------------------------------------------------------

#[test]
fn a_flood_of_refused_binds_cannot_push_another_tenants_events_away() {
    let mut su = connect_preloaded("postgres");
    let f = Fixture::on(&mut su);
    let nobody = ident("flood");
    su.batch_execute(&format!(
        "CREATE ROLE {nobody} LOGIN NOSUPERUSER NOBYPASSRLS"
    ))
    .unwrap();
    // Tenant B's session tries to write a row for A: a security event of B.
    let mut b = connect_preloaded(APP);
    b.batch_execute("BEGIN").unwrap();
    b.execute("SELECT tenancy.bind($1)", &[&f.token(&f.b, "mallory")])
        .unwrap();
    let e = b
        .execute(
            "INSERT INTO it_customers (tenant_id, id, name) VALUES ($1::text::uuid, 1, 'x')",
            &[&f.a_id],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    b.batch_execute("ROLLBACK").unwrap();
    // A role with no privileges floods refused binds.
    let mut n = connect_preloaded(&nobody);
    for i in 0..150 {
        let _ = n.execute("SELECT tenancy.bind($1)", &[&format!("garbage-{i}")]);
    }
    let mut op = connect_preloaded(OPERATOR);
    let kept: i64 = op
        .query_one(
            "SELECT count(*) FROM tenancy.security_events() \
              WHERE event = 'cross_tenant_write_refused' AND tenant_id = $1::text::uuid",
            &[&f.b_id],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        kept, 1,
        "tenant B's event was pushed out of security_events()"
    );
    let floods: Vec<String> = op
        .query(
            "SELECT detail::text FROM tenancy.security_events() WHERE event = 'event_flood' AND detail->>'role' = $1",
            &[&nobody],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(floods.len(), 1, "the flood is itself an event: {floods:?}");
    // Persisted by the background worker, for operators, within a few seconds.
    let start = std::time::Instant::now();
    loop {
        let logged: i64 = op
            .query_one(
                "SELECT count(*) FROM tenancy.security_event_log \
                  WHERE event = 'cross_tenant_write_refused' AND tenant_id = $1::text::uuid",
                &[&f.b_id],
            )
            .unwrap()
            .get(0);
        if logged == 1 {
            break;
        }
        assert!(start.elapsed().as_secs() < 10, "not persisted");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    expect_err(
        &mut n,
        "SELECT * FROM tenancy.security_event_log",
        &["42501"],
    );
}

// 7. Forged log lines ----------------------------------------------------------------------------

#[test]
fn a_value_from_sql_cannot_start_a_line_of_the_server_log() {
    let mut c = app();
    let marker = unique("forged");
    let forged = format!(
        "zz\npg_tenancy security event: {{\"event\": \"cross_tenant_write_refused\", \"tenant\": \"{marker}\"}}"
    );
    let e = c
        .query_one("SELECT * FROM tenancy.audit_verify($1)", &[&forged])
        .unwrap_err();
    let msg = message(&e);
    assert!(!msg.contains('\n'), "{msg:?}");
    assert!(msg.contains("\\u{a}"), "{msg:?}");
    let log =
        std::fs::read_to_string(std::env::var("TENANCY_SERVER_LOG").expect("TENANCY_SERVER_LOG"))
            .unwrap_or_default();
    for line in log.lines().filter(|l| l.contains(&marker)) {
        assert!(
            !line.trim_start().starts_with("pg_tenancy security event:"),
            "a forged line: {line}"
        );
    }
}

// 8. Internals in error texts --------------------------------------------------------------------

#[test]
fn errors_carry_no_backtrace_or_build_path() {
    // The server runs with RUST_BACKTRACE=1 (scripts/test.sh).
    let f = Fixture::new();
    let mut c = app();
    for sql in [
        "SELECT tenancy.current_tenant()".to_string(),
        "SELECT tenancy.bind('not a token')".to_string(),
        "SELECT tenancy.create_tenant('x')".to_string(),
        format!("SELECT tenancy.bind('{}', 'forever')", f.token(&f.a, "u")),
        "SELECT count(*) FROM it_customers".to_string(),
    ] {
        let e = c.batch_execute(&sql).unwrap_err();
        let d = e.as_db_error().unwrap();
        let all = format!(
            "{} {} {}",
            d.message(),
            d.detail().unwrap_or(""),
            d.hint().unwrap_or("")
        );
        for bad in ["backtrace", ".rs:", "/root/", "/work/", "cargo"] {
            assert!(!all.contains(bad), "{sql}: {bad} in {all:?}");
        }
    }
}

// 9. Audit metadata without a role ---------------------------------------------------------------

#[test]
fn only_a_tenants_admin_reads_its_trails_metadata() {
    let f = Fixture::new();
    let mut su = superuser();
    su.execute("SELECT tenancy.add_member($1, 'boss', 'admin')", &[&f.a])
        .unwrap();
    let mut c = app();
    c.batch_execute("BEGIN").unwrap();
    bind(&mut c, &f.token(&f.a, "nobody-special"));
    for sql in [
        format!("SELECT * FROM tenancy.audit_verify('{}')", f.a),
        format!("SELECT * FROM tenancy.audit_heads('{}')", f.a),
    ] {
        c.batch_execute("SAVEPOINT s").unwrap();
        expect_err(&mut c, &sql, &["42501"]);
        c.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    }
    c.batch_execute("ROLLBACK").unwrap();
    c.batch_execute("BEGIN").unwrap();
    bind(&mut c, &f.token(&f.a, "boss"));
    c.query(
        &format!("SELECT * FROM tenancy.audit_verify('{}')", f.a),
        &[],
    )
    .unwrap();
    c.query(
        &format!("SELECT * FROM tenancy.audit_heads('{}')", f.a),
        &[],
    )
    .unwrap();
    c.batch_execute("ROLLBACK").unwrap();
}
