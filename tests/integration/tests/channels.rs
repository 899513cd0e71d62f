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
    let mut c = f.session_as(&f.a, "x");
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

/// The table's owner adds a cascade of its own: PostgreSQL runs a referential action as the
/// referencing table's owner with no row security, so an update of the owner's lookup table
/// rewrote every tenant's rows (or moved them to another tenant through the tenant column, or
/// deleted them), and the owner's trigger on the protected table copied each row it rewrote
/// (an attacker's pass, unbound). Refused when the command that made the key ends; a cascade
/// from a protected table with the tenant column in the key stays the owner's to add.
#[test]
fn a_tables_owner_cannot_add_a_cascade_that_rewrites_every_tenants_rows() {
    let f = Fixture::new();
    let mut su = superuser();
    let (s, owner) = owned_table(&mut su, &f);
    let mut o = connect(&owner);
    assert_not_privileged(&mut o);
    o.batch_execute(&format!(
        "CREATE TABLE {s}.pk (id int PRIMARY KEY); INSERT INTO {s}.pk VALUES (1), (2); \
         CREATE TABLE {s}.tenants (tid uuid PRIMARY KEY); \
         INSERT INTO {s}.tenants VALUES ('{a}'), ('{b}')",
        a = f.a_id,
        b = f.b_id
    ))
    .unwrap();
    for statement in [
        format!("ALTER TABLE {s}.t ADD CONSTRAINT fk FOREIGN KEY (id) REFERENCES {s}.pk (id) ON UPDATE CASCADE"),
        format!("ALTER TABLE {s}.t ADD CONSTRAINT fk FOREIGN KEY (id) REFERENCES {s}.pk (id) ON DELETE CASCADE"),
        format!("ALTER TABLE {s}.t ADD CONSTRAINT fk FOREIGN KEY (id) REFERENCES {s}.pk (id) ON DELETE SET NULL"),
        format!("ALTER TABLE {s}.t ADD CONSTRAINT fk FOREIGN KEY (tenant_id) REFERENCES {s}.tenants (tid) ON UPDATE CASCADE"),
        format!("ALTER TABLE {s}.t ADD COLUMN kind int REFERENCES {s}.pk (id) ON UPDATE SET DEFAULT"),
    ] {
        let e = o
            .batch_execute(&statement)
            .expect_err("the owner added a writing cascade to its protected table");
        assert_eq!(sqlstate(&e), "42501", "{statement}: {}", message(&e));
        assert!(
            message(&e).contains("every tenant's rows"),
            "{}",
            message(&e)
        );
    }
    // Then the owner's updates of its own tables reach no tenant's row.
    o.batch_execute(&format!(
        "UPDATE {s}.pk SET id = id + 100; UPDATE {s}.tenants SET tid = gen_random_uuid()"
    ))
    .unwrap();
    let rows: Vec<String> = texts(
        &mut su,
        &format!("SELECT tenant_id || ':' || id || ':' || body FROM {s}.t ORDER BY 1"),
    );
    let mut expected = vec![
        format!("{}:1:{}-secret", f.a_id, f.a),
        format!("{}:1:{}-secret", f.b_id, f.b),
    ];
    expected.sort();
    assert_eq!(rows, expected);
    // A key that cannot write (NO ACTION), and a cascade from a protected table with the tenant
    // column in the key (a referenced row's change reaches its own tenant's rows only), pass.
    su.batch_execute(&format!(
        "SET ROLE {owner}; \
         CREATE TABLE {s}.parent (tenant_id uuid NOT NULL, id int NOT NULL, PRIMARY KEY (tenant_id, id)); \
         RESET ROLE; SELECT tenancy.protect('{s}.parent')"
    ))
    .unwrap();
    o.batch_execute(&format!(
        "ALTER TABLE {s}.t ADD CONSTRAINT plain FOREIGN KEY (id) REFERENCES {s}.pk (id) NOT VALID; \
         ALTER TABLE {s}.t DROP CONSTRAINT plain; \
         ALTER TABLE {s}.t ADD CONSTRAINT led FOREIGN KEY (tenant_id, id) REFERENCES {s}.parent (tenant_id, id) ON DELETE CASCADE NOT VALID"
    ))
    .unwrap();
    // From a protected table by a key without the tenant column: refused too (a row of one
    // tenant's would cascade into another's rows).
    su.batch_execute(&format!(
        "SET ROLE {owner}; \
         CREATE TABLE {s}.shared_key (tenant_id uuid NOT NULL, id int NOT NULL UNIQUE); \
         RESET ROLE; SELECT tenancy.protect('{s}.shared_key')"
    ))
    .unwrap();
    let e = o
        .batch_execute(&format!(
            "ALTER TABLE {s}.t ADD CONSTRAINT unled FOREIGN KEY (id) REFERENCES {s}.shared_key (id) ON DELETE CASCADE NOT VALID"
        ))
        .expect_err("a cascade from a protected table by a key without the tenant column");
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    // A table joining a protected parent brings the keys of every partition and child below
    // it (a reviewer's pass attached a partitioned table whose partition held one, and a
    // table whose child did).
    su.batch_execute(&format!(
        "SET ROLE {owner}; \
         CREATE TABLE {s}.p (tenant_id uuid NOT NULL, id int NOT NULL, k int) PARTITION BY RANGE (id); \
         RESET ROLE; SELECT tenancy.protect('{s}.p')"
    ))
    .unwrap();
    o.batch_execute(&format!(
        "CREATE TABLE {s}.mid (tenant_id uuid NOT NULL, id int NOT NULL, k int) PARTITION BY RANGE (id); \
         CREATE TABLE {s}.leaf PARTITION OF {s}.mid FOR VALUES FROM (0) TO (100); \
         ALTER TABLE {s}.leaf ADD CONSTRAINT leaf_fk FOREIGN KEY (k) REFERENCES {s}.pk (id) ON UPDATE CASCADE; \
         CREATE TABLE {s}.c1 (tenant_id uuid NOT NULL, id int NOT NULL, body text); \
         CREATE TABLE {s}.c2 (k int REFERENCES {s}.pk (id) ON DELETE CASCADE) INHERITS ({s}.c1)"
    ))
    .unwrap();
    for statement in [
        format!("ALTER TABLE {s}.p ATTACH PARTITION {s}.mid FOR VALUES FROM (0) TO (100)"),
        format!("ALTER TABLE {s}.c1 INHERIT {s}.t"),
    ] {
        let e = o
            .batch_execute(&statement)
            .expect_err("a writing key below a table joining a protected parent");
        assert_eq!(sqlstate(&e), "42501", "{statement}: {}", message(&e));
    }
    // A table created protected (in a schema of auto_protect) with one: refused too.
    su.batch_execute(&format!("SELECT tenancy.auto_protect('{s}')"))
        .unwrap();
    let e = o
        .batch_execute(&format!(
            "CREATE TABLE {s}.born (tenant_id uuid NOT NULL, id int REFERENCES {s}.pk (id) ON DELETE CASCADE)"
        ))
        .expect_err("a table created protected with a cascade from the owner's table");
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
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

/// Refused with 42501 and a HINT, as the owner `c` runs it.
fn refused(c: &mut Client, sql: &str, what: &str) {
    let e = c
        .batch_execute(sql)
        .expect_err(&format!("{what} was allowed"));
    assert_eq!(sqlstate(&e), "42501", "{what}: {}", message(&e));
    assert!(
        e.as_db_error().and_then(|d| d.hint()).is_some(),
        "{what}: no HINT"
    );
}

#[test]
fn a_tables_owner_cannot_run_code_through_a_columns_type_or_cast() {
    let f = Fixture::new();
    let mut su = superuser();
    let (s, owner) = owned_table(&mut su, &f);
    leaky_function(&mut su, &s, &owner);
    // A domain whose check shows its values, and a composite type whose assignment cast does
    // (a cast with a function is a superuser's to create where tables are protected: made by
    // one here, with the owner's function).
    su.batch_execute(&format!(
        "SET ROLE {owner}; \
         CREATE DOMAIN {s}.leakdom AS text CHECK ({s}.leak(VALUE)); \
         CREATE TYPE {s}.comp AS (x text); \
         CREATE FUNCTION {s}.tocomp(text) RETURNS {s}.comp LANGUAGE plpgsql AS \
           $$ BEGIN RAISE NOTICE 'cast: %', $1; RETURN ROW($1); END $$; \
         CREATE TYPE {s}.rowt AS (tenant_id uuid, id int, body text); \
         CREATE TABLE {s}.typed OF {s}.rowt; \
         RESET ROLE; \
         CREATE CAST (text AS {s}.comp) WITH FUNCTION {s}.tocomp(text) AS ASSIGNMENT; \
         SELECT tenancy.protect('{s}.typed'); \
         INSERT INTO {s}.typed VALUES ('{b}', 1, '{bn}-typed-secret')",
        b = f.b_id,
        bn = f.b
    ))
    .unwrap();
    let (mut c, notices) = with_notices(&owner);
    assert_not_privileged(&mut c);
    for (sql, what) in [
        (
            format!("ALTER TABLE {s}.t ALTER COLUMN body TYPE {s}.leakdom"),
            "ALTER COLUMN TYPE to a leaky domain",
        ),
        (
            format!("ALTER TABLE {s}.t ALTER COLUMN body TYPE {s}.leakdom USING body"),
            "the same with USING",
        ),
        (
            format!("ALTER TABLE {s}.t ALTER COLUMN body TYPE {s}.comp"),
            "ALTER COLUMN TYPE through a user's cast",
        ),
        (
            format!("ALTER TABLE {s}.t ADD COLUMN g {s}.leakdom GENERATED ALWAYS AS (body) STORED"),
            "a generated column of a leaky domain",
        ),
        (
            format!("ALTER TABLE {s}.t ADD COLUMN g2 {s}.comp GENERATED ALWAYS AS (body) STORED"),
            "a generated column through a user's cast",
        ),
        (
            format!("ALTER TABLE {s}.t ADD COLUMN later {s}.leakdom"),
            "a column whose domain sees every later write",
        ),
        (
            format!("ALTER TYPE {s}.rowt ALTER ATTRIBUTE body TYPE {s}.comp CASCADE"),
            "ALTER TYPE of a protected typed table",
        ),
    ] {
        refused(&mut c, &sql, what);
    }
    let leaked = notices.lock().unwrap().clone();
    assert!(leaked.is_empty(), "values reached the owner: {leaked:?}");
    // What an owner does every day still works: a new column with its CHECK (in one command
    // or two), and a plain built-in cast.
    c.batch_execute(&format!(
        "ALTER TABLE {s}.t ADD COLUMN qty int CHECK (qty > 0); \
         ALTER TABLE {s}.t ADD COLUMN qty2 int, ADD CONSTRAINT q2 CHECK (qty2 > 0); \
         ALTER TABLE {s}.t ALTER COLUMN id TYPE bigint"
    ))
    .unwrap();
}

#[test]
fn a_table_cannot_bring_a_users_code_into_protection() {
    let f = Fixture::new();
    let mut su = superuser();
    let s = schema(&mut su);
    let owner = ident("own");
    su.batch_execute(&format!(
        "CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS; ALTER SCHEMA {s} OWNER TO {owner}; \
         SET ROLE {owner}; \
         CREATE TABLE {s}.p (tenant_id uuid NOT NULL, id int NOT NULL, body text) PARTITION BY RANGE (id); \
         CREATE TABLE {s}.p1 PARTITION OF {s}.p FOR VALUES FROM (0) TO (100); \
         CREATE TABLE {s}.t (tenant_id uuid NOT NULL, id int NOT NULL, body text); \
         CREATE TABLE {s}.base (tenant_id uuid, id int, body text); \
         RESET ROLE; \
         SELECT tenancy.protect('{s}.p'); SELECT tenancy.protect('{s}.t'); \
         GRANT SELECT, INSERT ON {s}.p, {s}.t TO {APP}"
    ))
    .unwrap();
    leaky_function(&mut su, &s, &owner);
    su.batch_execute(&format!(
        "SET ROLE {owner}; \
         CREATE FUNCTION {s}.leaki(text) RETURNS int LANGUAGE plpgsql IMMUTABLE AS \
           $$ BEGIN RAISE NOTICE 'leaked: %', $1; RETURN 250; END $$; \
         CREATE TABLE {s}.prepared (tenant_id uuid NOT NULL, id int NOT NULL, body text, CHECK ({s}.leak(body))); \
         CREATE TABLE {s}.indexed (tenant_id uuid NOT NULL, id int NOT NULL, body text); \
         CREATE INDEX ON {s}.indexed (({s}.leaki(body))); \
         CREATE TABLE {s}.child_to_be (tenant_id uuid NOT NULL, id int NOT NULL, body text) INHERITS ({s}.base); \
         RESET ROLE"
    ))
    .unwrap();
    let (mut c, notices) = with_notices(&owner);
    for (sql, what) in [
        (format!("CREATE TABLE {s}.p2 PARTITION OF {s}.p (CONSTRAINT c CHECK ({s}.leak(body))) FOR VALUES FROM (100) TO (200)"), "a partition's CHECK"),
        (format!("CREATE TABLE {s}.p3 PARTITION OF {s}.p FOR VALUES FROM (200) TO (300) PARTITION BY RANGE (({s}.leaki(body)))"), "a partition's partition key"),
        (format!("ALTER TABLE {s}.p ATTACH PARTITION {s}.prepared FOR VALUES FROM (300) TO (400)"), "ATTACH of a table with a CHECK"),
        (format!("ALTER TABLE {s}.p ATTACH PARTITION {s}.indexed FOR VALUES FROM (400) TO (500)"), "ATTACH of a table with an index expression"),
        (format!("CREATE TABLE {s}.c () INHERITS ({s}.t, {s}.base)"), "a child of a protected and an unprotected parent"),
        (format!("ALTER TABLE {s}.child_to_be INHERIT {s}.t"), "INHERIT by a table with an unprotected parent"),
    ] {
        refused(&mut c, &sql, what);
    }
    // Tenant B writes into every partition and child there is: no code of the owner's runs.
    let (mut b, b_notices) = with_notices(APP);
    b.batch_execute("BEGIN").unwrap();
    bind(&mut b, &f.token(&f.b, "x"));
    b.batch_execute(&format!(
        "INSERT INTO {s}.p (id, body) VALUES (50, '{bn}-secret'); INSERT INTO {s}.t (id, body) VALUES (1, '{bn}-secret'); COMMIT",
        bn = f.b
    ))
    .unwrap();
    let base: i64 = c
        .query_one(&format!("SELECT count(*) FROM {s}.base"), &[])
        .unwrap()
        .get(0);
    assert_eq!(base, 0);
    let leaked: Vec<String> = notices
        .lock()
        .unwrap()
        .iter()
        .chain(b_notices.lock().unwrap().iter())
        .filter(|n| n.starts_with("leaked"))
        .cloned()
        .collect();
    assert!(leaked.is_empty(), "the owner's code ran: {leaked:?}");
    // A partition like any other is still the owner's to add, and protected on creation.
    c.batch_execute(&format!(
        "CREATE TABLE {s}.p4 PARTITION OF {s}.p (CONSTRAINT len CHECK (id > 0)) FOR VALUES FROM (500) TO (600)"
    ))
    .unwrap();
    let protected: bool = su
        .query_one(
            &format!("SELECT EXISTS (SELECT FROM tenancy.protected_tables WHERE \"table\" = '{s}.p4'::regclass)"),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(protected);
}

#[test]
fn a_users_code_in_a_protected_columns_type_or_trigger_is_reported() {
    let f = Fixture::new();
    let mut su = superuser();
    let s = schema(&mut su);
    let fnown = ident("fnown");
    let owner = ident("towner");
    su.batch_execute(&format!(
        "CREATE ROLE {fnown} LOGIN NOSUPERUSER NOBYPASSRLS; CREATE ROLE {owner} NOLOGIN; \
         GRANT USAGE, CREATE ON SCHEMA {s} TO {fnown}, {owner}"
    ))
    .unwrap();
    leaky_function(&mut su, &s, &fnown);
    // Made by a trusted migration (a superuser), with functions a login role owns: a range
    // type whose subtype difference ANALYZE calls, a domain whose check every write calls, a
    // partition key and a trigger.
    su.batch_execute(&format!(
        "SET ROLE {fnown}; \
         CREATE FUNCTION {s}.d(int, int) RETURNS float8 LANGUAGE sql IMMUTABLE AS $$ SELECT ($1 - $2)::float8 $$; \
         CREATE FUNCTION {s}.keyof(text) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN RETURN 1; END $$; \
         CREATE FUNCTION {s}.touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$; \
         RESET ROLE; \
         CREATE TYPE {s}.rr AS RANGE (subtype = int, subtype_diff = {s}.d); \
         CREATE DOMAIN {s}.dom AS text CHECK ({s}.leak(VALUE)); \
         CREATE TABLE {s}.t (tenant_id uuid NOT NULL, id int NOT NULL, r {s}.rr, l {s}.dom[], body text) PARTITION BY LIST (({s}.keyof(body))); \
         CREATE TABLE {s}.t1 PARTITION OF {s}.t FOR VALUES IN (1); \
         CREATE TRIGGER touch BEFORE INSERT ON {s}.t1 FOR EACH ROW EXECUTE FUNCTION {s}.touch(); \
         ALTER TABLE {s}.t OWNER TO {owner}; ALTER TABLE {s}.t1 OWNER TO {owner}; \
         SELECT tenancy.protect('{s}.t')"
    ))
    .unwrap();
    let rows = verify_rows(&mut su, &s, "leaky_expression");
    for needle in ["DROP COLUMN", "DROP CONSTRAINT", "partition key"] {
        assert!(
            rows.iter().any(|(sev, o, fix)| sev == "error" && (o.contains(needle) || fix.contains(needle))),
            "no leaky_expression row about {needle}: {rows:?}"
        );
    }
    // The domain's and the range's rows clear with their fixes; the partition key's fix is
    // advice (a partition key cannot be changed).
    for (_, object, fix) in rows.iter().filter(|(_, o, _)| !o.contains("partition key")) {
        su.batch_execute(fix)
            .unwrap_or_else(|e| panic!("fix of {object} failed: {fix}: {}", message(&e)));
    }
    let left = verify_rows(&mut su, &s, "leaky_expression");
    assert!(
        left.iter().all(|(_, o, _)| o.contains("partition key")),
        "left after the fixes: {left:?}"
    );
    reported_and_fixed(&mut su, &s, "trigger_function_owner_can_bind");
    // A login role's range type cannot be added to a protected table by its owner either.
    su.batch_execute(&format!(
        "CREATE TABLE {s}.u (tenant_id uuid NOT NULL, id int NOT NULL); ALTER TABLE {s}.u OWNER TO {fnown}; \
         SELECT tenancy.protect('{s}.u')"
    ))
    .unwrap();
    let mut c = connect(&fnown);
    refused(
        &mut c,
        &format!("ALTER TABLE {s}.u ADD COLUMN r {s}.rr"),
        "a column of a range type with a user's subtype_diff",
    );
    let _ = f;
}

#[test]
fn a_protected_table_with_an_unprotected_parent_is_reported() {
    let _f = Fixture::new();
    let mut su = superuser();
    let s = schema(&mut su);
    su.batch_execute(&format!(
        "CREATE TABLE {s}.t (tenant_id uuid NOT NULL, id int NOT NULL); SELECT tenancy.protect('{s}.t'); \
         CREATE TABLE {s}.base (id int); \
         CREATE TABLE {s}.c (tenant_id uuid NOT NULL, id int NOT NULL) INHERITS ({s}.t, {s}.base)"
    ))
    .unwrap();
    reported_and_fixed(&mut su, &s, "unprotected_parent");
}

/// The table's owner makes it UNLOGGED: crash recovery (or a failover to a standby) would then
/// empty every tenant's rows with no record in any trail (an attacker's pass). Refused, also for
/// an UNLOGGED partition created under a protected table.
#[test]
fn a_tables_owner_cannot_make_it_unlogged() {
    let f = Fixture::new();
    let mut su = superuser();
    let (s, owner) = owned_table(&mut su, &f);
    let mut o = connect(&owner);
    assert_not_privileged(&mut o);
    let e = o
        .batch_execute(&format!("ALTER TABLE {s}.t SET UNLOGGED"))
        .expect_err("the owner made its protected table UNLOGGED");
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    su.batch_execute(&format!(
        "SET ROLE {owner}; \
         CREATE TABLE {s}.p (tenant_id uuid NOT NULL, id int NOT NULL) PARTITION BY RANGE (id); \
         RESET ROLE; SELECT tenancy.protect('{s}.p')"
    ))
    .unwrap();
    let e = o
        .batch_execute(&format!(
            "CREATE UNLOGGED TABLE {s}.p1 PARTITION OF {s}.p FOR VALUES FROM (0) TO (10)"
        ))
        .expect_err("an UNLOGGED partition of a protected table");
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    let persistence: String = su
        .query_one(
            &format!("SELECT relpersistence::text FROM pg_class WHERE oid = '{s}.t'::regclass"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(persistence, "p");
    // Nor does an operator protect one (a reviewer's pass: the owner prepared it).
    su.batch_execute(&format!(
        "SET ROLE {owner}; CREATE UNLOGGED TABLE {s}.ul (tenant_id uuid NOT NULL, id int); RESET ROLE"
    ))
    .unwrap();
    let mut op = connect(OPERATOR);
    let e = op
        .execute(
            "SELECT tenancy.protect($1::text::regclass)",
            &[&format!("{s}.ul")],
        )
        .expect_err("an operator protected an UNLOGGED table");
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
}

/// `ALTER TYPE ... ALTER ATTRIBUTE ... TYPE ... CASCADE` rewrites the column of every table of
/// the composite type: every tenant's amounts were rounded with no record (an attacker's pass,
/// as the type's and the table's owner). Recorded in each tenant's trail, as ALTER COLUMN TYPE
/// is.
#[test]
fn a_composite_types_change_of_a_protected_typed_table_is_recorded() {
    let f = Fixture::new();
    let mut su = superuser();
    let s = schema(&mut su);
    let owner = ident("typown");
    su.batch_execute(&format!(
        "CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS; ALTER SCHEMA {s} OWNER TO {owner}; \
         SET ROLE {owner}; \
         CREATE TYPE {s}.ty AS (tenant_id uuid, id int, amount numeric); \
         CREATE TABLE {s}.typed OF {s}.ty (PRIMARY KEY (tenant_id, id), tenant_id WITH OPTIONS NOT NULL); \
         CREATE TABLE {s}.typedp OF {s}.ty (tenant_id WITH OPTIONS NOT NULL) PARTITION BY LIST (id); \
         CREATE TABLE {s}.typedp1 PARTITION OF {s}.typedp FOR VALUES IN (1, 2); \
         CREATE TABLE {s}.typedq OF {s}.ty (tenant_id WITH OPTIONS NOT NULL) PARTITION BY LIST (id); \
         CREATE TABLE {s}.typedq1 PARTITION OF {s}.typedq FOR VALUES IN (1, 2); \
         RESET ROLE; SELECT tenancy.protect('{s}.typed'); SELECT tenancy.protect('{s}.typedp'); \
         SELECT tenancy.protect('{s}.typedq1'); \
         GRANT SELECT, INSERT ON {s}.typed, {s}.typedp, {s}.typedq1 TO {APP}"
    ))
    .unwrap();
    let mut c = app();
    for t in [&f.a, &f.b] {
        bound_tx(&mut c, &f, t, true, |c| {
            c.batch_execute(&format!(
                "INSERT INTO {s}.typed (id, amount) VALUES (1, 1.4), (2, 2.6); \
                 INSERT INTO {s}.typedp (id, amount) VALUES (1, 1.4); \
                 INSERT INTO {s}.typedq1 (id, amount) VALUES (1, 1.4)"
            ))
            .unwrap();
        });
    }
    let before: i64 = su
        .query_one("SELECT coalesce(max(id), 0) FROM tenancy.audit_log", &[])
        .unwrap()
        .get(0);
    let mut o = connect(&owner);
    assert_not_privileged(&mut o);
    o.batch_execute(&format!(
        "ALTER TYPE {s}.ty ALTER ATTRIBUTE amount TYPE int CASCADE"
    ))
    .unwrap();
    for (tenant, id) in [(&f.a, &f.a_id), (&f.b, &f.b_id)] {
        let recorded: i64 = su
            .query_one(
                "SELECT count(*) FROM tenancy.audit_log WHERE id > $1 AND tenant_id = $2::text::uuid \
                   AND op = 'ADMIN' AND new_row->>'action' = 'alter_column_type'",
                &[&before, id],
            )
            .unwrap()
            .get(0);
        // One for the typed table, one for the partition of the partitioned typed table (a
        // reviewer's pass: its partitions are not of the type themselves), and one for the
        // protected partition of a typed table that is not protected itself (the next pass:
        // only the protected tables of the type were descended from).
        assert_eq!(
            recorded, 3,
            "the rewrite of {tenant}'s rows was not recorded"
        );
        let ok: bool = su
            .query_one(
                "SELECT bool_and(ok) FROM tenancy.audit_verify($1)",
                &[tenant],
            )
            .unwrap()
            .get(0);
        assert!(ok, "{tenant}'s chain");
    }
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

/// The owner of a domain that no protected column is of, but that a protected table's default,
/// CHECK and index expression convert a value to: a CHECK added to the domain runs in every
/// tenant's inserts (an attacker's pass read every tenant's rows through it, and dropped it
/// again, leaving verify() nothing to see). Refused; a domain no protected table uses stays
/// its owner's.
#[test]
fn a_domains_owner_cannot_check_what_a_protected_tables_expressions_convert_to_it() {
    let f = Fixture::new();
    let mut su = superuser();
    let s = schema(&mut su);
    let owner = ident("down");
    su.batch_execute(&format!(
        "CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS; GRANT CREATE, USAGE ON SCHEMA {s} TO {owner}; \
         CREATE DOMAIN {s}.l_def AS text; CREATE DOMAIN {s}.l_chk AS text; CREATE DOMAIN {s}.l_idx AS text; \
         CREATE DOMAIN {s}.l_free AS text; \
         ALTER DOMAIN {s}.l_def OWNER TO {owner}; ALTER DOMAIN {s}.l_chk OWNER TO {owner}; \
         ALTER DOMAIN {s}.l_idx OWNER TO {owner}; ALTER DOMAIN {s}.l_free OWNER TO {owner}; \
         CREATE TABLE {s}.t (tenant_id uuid NOT NULL, id int NOT NULL, body text, \
                             tag text DEFAULT ('x'::{s}.l_def), CHECK ((body::{s}.l_chk) IS NOT NULL)); \
         CREATE INDEX t_body ON {s}.t (((body::{s}.l_idx)::text)); \
         SELECT tenancy.protect('{s}.t'); GRANT SELECT, INSERT ON {s}.t TO {APP}; \
         INSERT INTO {s}.t (tenant_id, id, body) VALUES ('{a}', 1, 'a-body'), ('{b}', 1, '{bn}-secret-body')",
        a = f.a_id,
        b = f.b_id,
        bn = f.b
    ))
    .unwrap();
    leaky_function(&mut su, &s, &owner);
    let (mut c, notices) = with_notices(&owner);
    assert_not_privileged(&mut c);
    for domain in ["l_def", "l_chk", "l_idx"] {
        for statement in [
            format!("ALTER DOMAIN {s}.{domain} ADD CONSTRAINT peek CHECK ({s}.leak(VALUE))"),
            format!(
                "ALTER DOMAIN {s}.{domain} ADD CONSTRAINT peek CHECK ({s}.leak(VALUE)) NOT VALID"
            ),
        ] {
            let e = c
                .batch_execute(&statement)
                .expect_err("the domain's owner added a CHECK that protected rows run");
            assert_eq!(sqlstate(&e), "42501", "{statement}: {}", message(&e));
        }
    }
    assert!(
        notices.lock().unwrap().is_empty(),
        "{:?}",
        notices.lock().unwrap()
    );
    // A domain no protected table uses is its owner's to change.
    c.batch_execute(&format!(
        "ALTER DOMAIN {s}.l_free ADD CONSTRAINT peek CHECK ({s}.leak(VALUE))"
    ))
    .unwrap();
    // verify() names the three domains (their owner can log in; it could replace what a
    // superuser's constraint on them calls), and its fix clears them.
    let mut found: Vec<String> = verify_rows(&mut su, &s, "domain_owner_can_bind")
        .into_iter()
        .map(|(_, object, _)| object)
        .collect();
    found.sort();
    assert_eq!(
        found,
        ["l_chk", "l_def", "l_idx"].map(|d| format!("{s}.{d}")),
        "verify() on the domains of the table's expressions"
    );
    reported_and_fixed(&mut su, &s, "domain_owner_can_bind");

    // A domain a column's values reach only through another domain's CHECK, which converts to
    // it (a reviewer's pass): refused too.
    su.batch_execute(&format!(
        "CREATE DOMAIN {s}.inner_d AS int; ALTER DOMAIN {s}.inner_d OWNER TO {owner}; \
         CREATE DOMAIN {s}.outer_d AS int CHECK ((VALUE::{s}.inner_d) IS NOT NULL); \
         CREATE TABLE {s}.t2 (tenant_id uuid NOT NULL, id int NOT NULL, v {s}.outer_d); \
         SELECT tenancy.protect('{s}.t2')"
    ))
    .unwrap();
    let e = c
        .batch_execute(&format!(
            "ALTER DOMAIN {s}.inner_d ADD CONSTRAINT peek CHECK ({s}.leak(VALUE::text))"
        ))
        .expect_err("a domain reached through another domain's CHECK");
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
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
    let mut c = f.session_as(&f.a, "x");
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
    // Nor through a view, which locks the tables it reads.
    c.batch_execute("BEGIN; CREATE TEMP VIEW v_lock AS SELECT * FROM it_customers")
        .unwrap();
    let e = c
        .batch_execute("LOCK TABLE v_lock IN ACCESS EXCLUSIVE MODE")
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    c.batch_execute("ROLLBACK").unwrap();
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

#[test]
fn protect_waits_for_no_other_tables_lock() {
    // protect() reads what it needs of the table it protects, and nothing of any other table:
    // a transaction holding an unrelated table (a migration, another owner's DDL) does not make
    // it wait. CI met the opposite as a deadlock: two owners' DDL on unrelated tables, each
    // printing the other's column defaults. A plan without index scans is the plan PostgreSQL
    // picked there (the catalog query hashed, printing every default of the database).
    let _f = Fixture::new();
    let mut su = superuser();
    let s = schema(&mut su);
    let owner = ident("lockown");
    su.batch_execute(&format!(
        "CREATE TABLE {s}.other (id int DEFAULT 1, tenant_id uuid NOT NULL DEFAULT gen_random_uuid()); \
         CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS; ALTER SCHEMA {s} OWNER TO {owner}; \
         SET ROLE {owner}; \
         CREATE TABLE {s}.t (tenant_id uuid NOT NULL, id int NOT NULL) PARTITION BY RANGE (id); \
         CREATE TABLE {s}.t1 PARTITION OF {s}.t FOR VALUES FROM (0) TO (100); \
         RESET ROLE"
    ))
    .unwrap();
    let mut holder = superuser();
    holder
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE {s}.other IN ACCESS EXCLUSIVE MODE"
        ))
        .unwrap();
    let no_index_scans =
        "SET enable_indexscan = off; SET enable_bitmapscan = off; SET lock_timeout = '3s'";
    // protect() by a superuser (a migration role).
    su.batch_execute(no_index_scans).unwrap();
    su.batch_execute(&format!("SELECT tenancy.protect('{s}.t')"))
        .unwrap_or_else(|e| panic!("protect waited for another table: {}", message(&e)));
    // The table's owner, NOSUPERUSER NOBYPASSRLS, adds a partition: protected on creation,
    // again without waiting (the statement CI saw deadlock).
    let mut c = connect(&owner);
    assert_not_privileged(&mut c);
    c.batch_execute(no_index_scans).unwrap();
    c.batch_execute(&format!(
        "CREATE TABLE {s}.t2 PARTITION OF {s}.t FOR VALUES FROM (100) TO (200)"
    ))
    .unwrap_or_else(|e| panic!("a new partition waited for another table: {}", message(&e)));
    holder.batch_execute("ROLLBACK").unwrap();
    let protected: bool = su
        .query_one(
            &format!("SELECT EXISTS (SELECT FROM tenancy.protected_tables WHERE \"table\" = '{s}.t2'::regclass)"),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(protected);
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

#[test]
fn a_binding_lost_to_a_suspension_is_an_event_of_its_tenant() {
    // The event of a binding that ended mid-transaction names the tenant the token verified
    // for, as a refused bind's does: it was kept with no tenant (in telemetry's `other` row,
    // out of the tenant admin's view; a documentation reviewer's pass).
    let mut su = connect_preloaded("postgres");
    let f = Fixture::on(&mut su);
    let mut c = connect_preloaded(APP);
    assert_not_privileged(&mut c);
    c.batch_execute("BEGIN").unwrap();
    c.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "u")])
        .unwrap();
    c.query_one("SELECT count(*) FROM it_orders", &[]).unwrap();
    su.execute("SELECT tenancy.suspend_tenant($1)", &[&f.a])
        .unwrap();
    let e = c
        .query_one("SELECT count(*) FROM it_orders", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    let _ = c.batch_execute("ROLLBACK");
    let mut op = connect_preloaded(OPERATOR);
    let of_tenant: i64 = op
        .query_one(
            "SELECT count(*) FROM tenancy.security_events() \
              WHERE event = 'binding_revoked' AND tenant_id = $1::text::uuid",
            &[&f.a_id],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        of_tenant, 1,
        "the lost binding is not an event of its tenant"
    );
    su.execute("SELECT tenancy.resume_tenant($1)", &[&f.a])
        .unwrap();
}

#[test]
fn the_event_writer_gives_up_a_dropped_databases_events() {
    // An event queued in a database that is dropped before its writer connects: the launcher
    // tries a few writers, then gives the events up (it used to start one every half second,
    // for ever).
    let host = std::env::var("TENANCY_PRELOADED_PGHOST").expect("TENANCY_PRELOADED_PGHOST");
    let port: u16 = std::env::var("TENANCY_PRELOADED_PGPORT")
        .expect("TENANCY_PRELOADED_PGPORT")
        .parse()
        .unwrap();
    let log_path = format!("{host}/server.log");
    let log_start = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
    let mut su = connect_preloaded("postgres");
    let mut oids = Vec::new();
    for _ in 0..3 {
        let db = ident("gone");
        su.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
        let oid: u32 = su
            .query_one("SELECT oid FROM pg_database WHERE datname = $1", &[&db])
            .unwrap()
            .get(0);
        oids.push(oid);
        let mut c = postgres::Config::new()
            .host(&host)
            .port(port)
            .user("postgres")
            .dbname(&db)
            .connect(postgres::NoTls)
            .unwrap();
        c.batch_execute("CREATE EXTENSION pg_tenancy").unwrap();
        for i in 0..5 {
            let _ = c.execute("SELECT tenancy.bind($1)", &[&format!("garbage-{i}")]);
        }
        drop(c);
        su.batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
            .unwrap();
    }
    std::thread::sleep(std::time::Duration::from_secs(5));
    let log = std::fs::read(&log_path).unwrap();
    let tail = String::from_utf8_lossy(&log[log_start as usize..]);
    for oid in oids {
        let failed = tail
            .lines()
            .filter(|l| l.contains(&format!("database {oid} does not exist")))
            .count();
        assert!(
            failed <= 3,
            "{failed} writers started for dropped database {oid}"
        );
        if failed > 0 {
            assert!(
                tail.contains(&format!(
                    "security events of database {oid} were not persisted"
                )),
                "database {oid}: writers failed but the events were not given up"
            );
        }
    }
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

#[test]
fn a_value_from_sql_cannot_reorder_or_hide_text_in_a_message_or_a_plan() {
    // A right-to-left override, an isolate and a zero-width space reach a message and a row of
    // plan_config's written out, not as the characters a terminal or a web page would obey.
    let mut c = app();
    let tricky = "zz\u{202E}lanigiro\u{2066}x\u{200B}y";
    let e = c
        .query_one("SELECT * FROM tenancy.audit_verify($1)", &[&tricky])
        .unwrap_err();
    let msg = message(&e);
    for (ch, shown) in [
        ('\u{202E}', "\\u{202e}"),
        ('\u{2066}', "\\u{2066}"),
        ('\u{200B}', "\\u{200b}"),
    ] {
        assert!(!msg.contains(ch), "{msg:?}");
        assert!(msg.contains(shown), "{msg:?}");
    }
    let mut op = connect(OPERATOR);
    let doc = serde_json::json!({"version": 1, "tenants": [{"slug": tricky, "name": tricky}]});
    let rows = op
        .query(
            "SELECT object || ' ' || detail FROM tenancy.plan_config($1::text::jsonb)",
            &[&doc.to_string()],
        )
        .unwrap();
    assert!(!rows.is_empty());
    for r in rows {
        let shown: String = r.get(0);
        assert!(
            !shown
                .chars()
                .any(|ch| ch == '\u{202E}' || ch == '\u{2066}' || ch == '\u{200B}'),
            "{shown:?}"
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
    f.seat_admin(&f.a, "boss");
    let mut c = f.session_as(&f.a, "nobody-special");
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

/// A trigger on a protected table runs in every tenant's sessions, with their bindings: an
/// application role holding the TRIGGER privilege (GRANT ALL gives it) could plant one that
/// copies each tenant's rows to a channel it listens on. pg_tenancy refuses CREATE TRIGGER on
/// a protected table to everyone but its owner and superusers, and a trigger with a temporary
/// function to its owner too (found by the attacker's review of the Citus mode, on one node
/// too). Refused before the library is loaded in the session (the DDL event trigger).
#[test]
fn an_application_role_cannot_plant_a_trigger_on_a_protected_table() {
    let mut su = superuser();
    let s = schema(&mut su);
    su.batch_execute(&format!(
        "CREATE TABLE {s}.t (tenant_id uuid NOT NULL, id int); SELECT tenancy.protect('{s}.t'); \
         GRANT ALL ON {s}.t TO {APP}; \
         CREATE FUNCTION {s}.touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$"
    ))
    .unwrap();
    let mut c = app();
    c.batch_execute("CREATE FUNCTION pg_temp.spy() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_notify('spy', row_to_json(NEW)::text); RETURN NEW; END $$")
        .unwrap();
    for f in ["pg_temp.spy()".to_string(), format!("{s}.touch()")] {
        let e = c
            .batch_execute(&format!(
                "CREATE TRIGGER zz AFTER INSERT ON {s}.t FOR EACH ROW EXECUTE FUNCTION {f}"
            ))
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{f}: {}", message(&e));
    }
    // Its owner (a migration role, NOSUPERUSER) may, with a function of a real schema; not with
    // a temporary one.
    let owner = ident("ch_owner");
    su.batch_execute(&format!(
        "CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS; GRANT USAGE ON SCHEMA {s} TO {owner}; \
         ALTER TABLE {s}.t OWNER TO {owner}"
    ))
    .unwrap();
    let mut o = connect(&owner);
    o.batch_execute(&format!(
        "CREATE TRIGGER touch BEFORE UPDATE ON {s}.t FOR EACH ROW EXECUTE FUNCTION {s}.touch()"
    ))
    .unwrap();
    o.batch_execute("CREATE FUNCTION pg_temp.spy() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$")
        .unwrap();
    let e = o
        .batch_execute(&format!(
            "CREATE TRIGGER zz AFTER INSERT ON {s}.t FOR EACH ROW EXECUTE FUNCTION pg_temp.spy()"
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
}
