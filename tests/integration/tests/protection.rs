//! protect / unprotect / protect_schema / auto_protect, the guard against weakening, and
//! verify(): each rule's hazard is built, reported, fixed with the SQL verify() gives, and gone.

mod common;
use common::*;
use postgres::Client;

/// A fresh schema for one test (verify() is database-wide: tests filter on their schema).
fn schema(su: &mut Client) -> String {
    let s = unique("s").replace('-', "_");
    su.batch_execute(&format!(
        "CREATE SCHEMA {s}; GRANT USAGE ON SCHEMA {s} TO {APP}"
    ))
    .unwrap();
    s
}

fn findings(c: &mut Client, s: &str) -> Vec<(String, String, String, String)> {
    c.query(
        "SELECT severity, rule, object, fix FROM tenancy.verify() WHERE object LIKE $1 || '.%' OR object LIKE '% on ' || $1 || '.%' OR detail LIKE '%' || $1 || '.%' ORDER BY 2, 3",
        &[&s],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

fn rules(f: &[(String, String, String, String)]) -> Vec<String> {
    f.iter().map(|x| x.1.clone()).collect()
}

#[test]
fn guard_refuses_weakening_even_for_superusers_and_owners() {
    let mut su = superuser();
    let s = schema(&mut su);
    let owner = unique("owner").replace('-', "_");
    su.batch_execute(&format!(
        "CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS; GRANT CREATE, USAGE ON SCHEMA {s} TO {owner}"
    ))
    .unwrap();
    let mut o = connect(&owner);
    o.batch_execute(&format!("CREATE TABLE {s}.t (id int, tenant_id uuid)"))
        .unwrap();
    su.execute(&format!("SELECT tenancy.protect('{s}.t')"), &[])
        .unwrap();
    for c in [&mut su, &mut o] {
        for ddl in [
            format!("ALTER TABLE {s}.t DISABLE ROW LEVEL SECURITY"),
            format!("ALTER TABLE {s}.t NO FORCE ROW LEVEL SECURITY"),
            format!("DROP POLICY tenancy_isolation_select ON {s}.t"),
            format!("DROP POLICY tenancy_select ON {s}.t"),
            format!("ALTER POLICY tenancy_select ON {s}.t USING (true)"),
            format!("ALTER POLICY tenancy_isolation_select ON {s}.t RENAME TO x"),
            format!("CREATE POLICY open ON {s}.t FOR SELECT USING (true)"),
            format!("ALTER TABLE {s}.t DROP COLUMN tenant_id CASCADE"),
            format!("ALTER TABLE {s}.t ALTER COLUMN tenant_id TYPE text"),
            format!("ALTER TABLE {s}.t ALTER COLUMN tenant_id DROP NOT NULL"),
            format!("ALTER TABLE {s}.t ALTER COLUMN tenant_id DROP DEFAULT"),
            format!("ALTER TABLE {s}.t DISABLE TRIGGER tenancy_no_truncate"),
            format!("DROP TRIGGER tenancy_no_truncate ON {s}.t"),
        ] {
            // 0A000: PostgreSQL itself refuses to retype a column that policies use.
            let msg = expect_err(c, &ddl, &["42501", "0A000"]);
            assert!(
                msg.contains("protected table") || msg.contains("policy"),
                "{ddl}: {msg}"
            );
        }
        // Harmless DDL still works, and renaming keeps the protection intact.
        c.batch_execute(&format!(
            "ALTER TABLE {s}.t ADD COLUMN IF NOT EXISTS note text"
        ))
        .unwrap();
    }
    su.batch_execute(&format!(
        "ALTER TABLE {s}.t RENAME TO t2; ALTER TABLE {s}.t2 RENAME TO t"
    ))
    .unwrap();
    // The protection is intact; what verify() still says is that a login role owns the table
    // (channels.rs tests that rule).
    assert_eq!(
        rules(&findings(&mut su, &s)),
        vec!["owner_can_bind"],
        "{:?}",
        findings(&mut su, &s)
    );
    // Operators unprotect (audited); then the DDL is allowed.
    su.execute(&format!("SELECT tenancy.unprotect('{s}.t')"), &[])
        .unwrap();
    su.batch_execute(&format!("ALTER TABLE {s}.t DISABLE ROW LEVEL SECURITY"))
        .unwrap();
    let n: i64 = su
        .query_one(
            "SELECT count(*) FROM tenancy.audit_log WHERE op = 'ADMIN' AND new_row->>'action' = 'unprotect' AND new_row->>'table' = $1",
            &[&format!("{s}.t")],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    // unprotect is for operators only.
    su.execute(&format!("SELECT tenancy.protect('{s}.t')"), &[])
        .unwrap();
    expect_err(
        &mut o,
        &format!("SELECT tenancy.unprotect('{s}.t')"),
        &["42501"],
    );
}

#[test]
fn protect_is_idempotent_and_checks_its_input() {
    let mut su = superuser();
    let s = schema(&mut su);
    su.batch_execute(&format!(
        "CREATE TABLE {s}.t (id int, tenant_id uuid); CREATE TABLE {s}.wrong (tenant_id text); \
         CREATE TABLE {s}.nocol (id int); CREATE VIEW {s}.v AS SELECT 1 AS tenant_id"
    ))
    .unwrap();
    su.execute(&format!("SELECT tenancy.protect('{s}.t')"), &[])
        .unwrap();
    let d1: String = su
        .query_one("SELECT policy_digest FROM tenancy.protected_tables WHERE \"table\" = $1::text::regclass", &[&format!("{s}.t")])
        .unwrap()
        .get(0);
    su.execute(&format!("SELECT tenancy.protect('{s}.t')"), &[])
        .unwrap();
    let d2: String = su
        .query_one("SELECT policy_digest FROM tenancy.protected_tables WHERE \"table\" = $1::text::regclass", &[&format!("{s}.t")])
        .unwrap()
        .get(0);
    assert_eq!(d1, d2);
    assert_eq!(d1.len(), 64, "SHA-256 hex digest");
    let n: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND tablename = 't'",
            &[&s],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "one tenant index, not one per protect() call");
    expect_err(
        &mut su,
        &format!("SELECT tenancy.protect('{s}.wrong')"),
        &["42804"],
    );
    expect_err(
        &mut su,
        &format!("SELECT tenancy.protect('{s}.nocol')"),
        &["42703"],
    );
    expect_err(
        &mut su,
        &format!("SELECT tenancy.protect('{s}.v')"),
        &["42809"],
    );
    let mut a = app();
    expect_err(
        &mut a,
        &format!("SELECT tenancy.protect('{s}.t')"),
        &["42501"],
    );
}

#[test]
fn protect_schema_of_200_tables_then_verify_is_clean() {
    let mut su = superuser();
    let s = schema(&mut su);
    su.batch_execute(&format!(
        "DO $$ BEGIN FOR i IN 1..200 LOOP \
           EXECUTE format('CREATE TABLE {s}.t%s (tenant_id uuid NOT NULL, id int NOT NULL, v text, PRIMARY KEY (tenant_id, id))', i); \
         END LOOP; END $$"
    ))
    .unwrap();
    su.batch_execute(&format!("CREATE TABLE {s}.not_tenant (id int)"))
        .unwrap();
    let start = std::time::Instant::now();
    let n: i32 = su
        .query_one("SELECT tenancy.protect_schema($1)", &[&s])
        .unwrap()
        .get(0);
    let took = start.elapsed();
    println!(
        "protect_schema: {n} tables in {:.2}s ({:.1} ms/table)",
        took.as_secs_f64(),
        took.as_secs_f64() * 1000.0 / n as f64
    );
    assert_eq!(n, 200);
    let start = std::time::Instant::now();
    let f = findings(&mut su, &s);
    println!("verify(): {:.2}s", start.elapsed().as_secs_f64());
    assert!(f.iter().all(|x| x.0 != "error"), "{f:?}");
    assert!(f.is_empty(), "{f:?}");
}

#[test]
fn auto_protect_covers_tables_created_later() {
    let mut su = superuser();
    let s = schema(&mut su);
    su.execute("SELECT tenancy.auto_protect($1)", &[&s])
        .unwrap();
    su.batch_execute(&format!(
        "CREATE TABLE {s}.created (tenant_id uuid, id int); \
         CREATE TABLE {s}.plain (id int); \
         CREATE TABLE {s}.ctas AS SELECT NULL::uuid AS tenant_id, 1 AS id WHERE false; \
         SELECT NULL::uuid AS tenant_id, 1 AS id INTO {s}.selinto WHERE false; \
         CREATE TABLE {s}.later (id int); ALTER TABLE {s}.later ADD COLUMN tenant_id uuid; \
         CREATE TABLE {s}.parted (tenant_id uuid NOT NULL, at date NOT NULL) PARTITION BY RANGE (at); \
         CREATE TABLE {s}.p1 PARTITION OF {s}.parted FOR VALUES FROM ('2026-01-01') TO ('2027-01-01'); \
         CREATE TABLE {s}.p2 (tenant_id uuid NOT NULL, at date NOT NULL); \
         ALTER TABLE {s}.parted ATTACH PARTITION {s}.p2 FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')"
    ))
    .unwrap();
    let protected: Vec<String> = su
        .query(
            "SELECT relname::text FROM tenancy.protected_tables p JOIN pg_class c ON c.oid = p.\"table\" \
              JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 ORDER BY 1",
            &[&s],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        protected,
        vec!["created", "ctas", "later", "p1", "p2", "parted", "selinto"]
    );
    assert!(
        findings(&mut su, &s).iter().all(|x| x.0 != "error"),
        "{:?}",
        findings(&mut su, &s)
    );
    su.execute("SELECT tenancy.auto_protect($1, false)", &[&s])
        .unwrap();
    su.batch_execute(&format!("CREATE TABLE {s}.after_off (tenant_id uuid)"))
        .unwrap();
    assert_eq!(
        rules(&findings(&mut su, &s)),
        vec!["unprotected_tenant_table"]
    );
}

/// Every ALTER TABLE of a protected partitioned table reaches the auto-protection of its new
/// partitions: it protects those not protected yet and leaves the others as they are. It
/// protected every partition again, each a DDL command of its own under the event triggers: an
/// owner's ADD COLUMN or DETACH PARTITION on a table of 2,000 partitions ran for 12 s and ended
/// out of shared memory.
#[test]
fn altering_a_protected_parent_protects_only_its_new_partitions() {
    let mut su = superuser();
    let s = schema(&mut su);
    su.batch_execute(&format!(
        "CREATE TABLE {s}.parted (tenant_id uuid NOT NULL, id int NOT NULL) PARTITION BY LIST (id); \
         CREATE TABLE {s}.p1 PARTITION OF {s}.parted FOR VALUES IN (1); \
         SELECT tenancy.protect('{s}.parted')"
    ))
    .unwrap();
    let protected_at = |su: &mut Client, t: &str| -> Option<String> {
        su.query_opt(
            "SELECT protected_at::text FROM tenancy.protected_table WHERE relid = $1::text::regclass",
            &[&format!("{s}.{t}")],
        )
        .unwrap()
        .map(|r| r.get(0))
    };
    let before = protected_at(&mut su, "p1").expect("p1 protected with its parent");
    // Each statement its own transaction: a protection again would stamp a later time.
    su.batch_execute(&format!("ALTER TABLE {s}.parted ADD COLUMN note text"))
        .unwrap();
    su.batch_execute(&format!(
        "CREATE TABLE {s}.p2 (tenant_id uuid NOT NULL, id int NOT NULL, note text)"
    ))
    .unwrap();
    su.batch_execute(&format!(
        "ALTER TABLE {s}.parted ATTACH PARTITION {s}.p2 FOR VALUES IN (2)"
    ))
    .unwrap();
    su.batch_execute(&format!(
        "ALTER TABLE {s}.parted ALTER COLUMN note SET DEFAULT 'n'"
    ))
    .unwrap();
    assert_eq!(
        protected_at(&mut su, "p1").as_deref(),
        Some(before.as_str()),
        "p1 was protected again by an ALTER TABLE of its parent"
    );
    assert!(
        protected_at(&mut su, "p2").is_some(),
        "the attached partition was not protected"
    );
    assert!(
        findings(&mut su, &s).iter().all(|x| x.0 != "error"),
        "{:?}",
        findings(&mut su, &s)
    );
}

/// Build a hazard, see `rule` reported, apply verify()'s fix, see it gone.
fn hazard(su: &mut Client, s: &str, build: &str, rule: &str) {
    su.batch_execute(build).unwrap();
    let f = findings(su, s);
    let hit = f
        .iter()
        .find(|x| x.1 == rule)
        .unwrap_or_else(|| panic!("{rule} not reported: {f:?}"));
    let fix = hit.3.clone();
    su.batch_execute(&fix)
        .unwrap_or_else(|e| panic!("fix for {rule} failed: {fix}: {e}"));
    let f = findings(su, s);
    assert!(
        f.iter().all(|x| x.1 != rule),
        "{rule} still reported after {fix}: {f:?}"
    );
}

#[test]
fn verify_reports_each_hazard_with_a_working_fix() {
    let mut su = superuser();
    let s = schema(&mut su);
    su.batch_execute(&format!(
        "CREATE TABLE {s}.parent (tenant_id uuid NOT NULL, id int NOT NULL, PRIMARY KEY (tenant_id, id)); \
         CREATE TABLE {s}.child (tenant_id uuid NOT NULL, id int NOT NULL, parent_id int, PRIMARY KEY (tenant_id, id)); \
         SELECT tenancy.protect('{s}.parent'); SELECT tenancy.protect('{s}.child')"
    ))
    .unwrap();
    assert!(
        findings(&mut su, &s).is_empty(),
        "{:?}",
        findings(&mut su, &s)
    );
    hazard(
        &mut su,
        &s,
        &format!("CREATE TABLE {s}.loose (tenant_id uuid)"),
        "unprotected_tenant_table",
    );
    hazard(
        &mut su,
        &s,
        &format!("CREATE UNIQUE INDEX IF NOT EXISTS u1 ON {s}.parent (id); ALTER TABLE {s}.parent ADD CONSTRAINT parent_id_key UNIQUE USING INDEX u1"),
        "unique_without_tenant",
    );
    hazard(
        &mut su,
        &s,
        &format!("ALTER TABLE {s}.parent ADD CONSTRAINT pk_only UNIQUE (id); ALTER TABLE {s}.child ADD CONSTRAINT child_parent_fk FOREIGN KEY (parent_id) REFERENCES {s}.parent (id)"),
        "fk_without_tenant",
    );
    su.batch_execute(&format!("ALTER TABLE {s}.parent DROP CONSTRAINT pk_only"))
        .unwrap();
    hazard(
        &mut su,
        &s,
        &format!("CREATE VIEW {s}.v AS SELECT * FROM {s}.parent"),
        "view_without_security_invoker",
    );
    hazard(
        &mut su,
        &s,
        // The guard refuses new materialized views over protected tables (attacks.rs), so
        // the hazard is one that existed before its table was protected.
        &format!(
            "CREATE TABLE {s}.older (tenant_id uuid NOT NULL, id int); \
                  CREATE MATERIALIZED VIEW {s}.mv AS SELECT * FROM {s}.older; \
                  SELECT tenancy.protect('{s}.older')"
        ),
        "materialized_view",
    );
    hazard(
        &mut su,
        &s,
        // Also through a view: the materialized view stores the protected table's rows all
        // the same.
        &format!(
            "CREATE TABLE {s}.older2 (tenant_id uuid NOT NULL, id int); \
                  CREATE VIEW {s}.older2_v WITH (security_invoker = true) AS SELECT * FROM {s}.older2; \
                  CREATE MATERIALIZED VIEW {s}.mv2 AS SELECT * FROM {s}.older2_v; \
                  SELECT tenancy.protect('{s}.older2')"
        ),
        "materialized_view",
    );
    hazard(
        &mut su,
        &s,
        &format!("CREATE FUNCTION {s}.peek() RETURNS bigint LANGUAGE sql SECURITY DEFINER AS 'SELECT count(*) FROM {s}.parent'"),
        "security_definer_function",
    );
    hazard(
        &mut su,
        &s,
        &format!("CREATE TABLE {s}.parted (tenant_id uuid NOT NULL, at date NOT NULL) PARTITION BY RANGE (at); \
                  SELECT tenancy.protect('{s}.parted'); \
                  SET session_replication_role = replica; \
                  CREATE TABLE {s}.sneaky PARTITION OF {s}.parted FOR VALUES FROM ('2026-01-01') TO ('2027-01-01'); \
                  RESET session_replication_role"),
        "partition_unprotected",
    );
    let role = unique("bypass").replace('-', "_");
    hazard(
        &mut su,
        &s,
        &format!("CREATE ROLE {role} BYPASSRLS; GRANT SELECT ON {s}.parent TO {role}"),
        "bypass_role_with_access",
    );
    hazard(
        &mut su,
        &s,
        &format!("GRANT TRUNCATE ON {s}.child TO {APP}"),
        "truncate_granted",
    );
    hazard(
        &mut su,
        &s,
        &format!("SET session_replication_role = replica; ALTER TABLE {s}.child NO FORCE ROW LEVEL SECURITY; RESET session_replication_role"),
        "protection_drift",
    );
    su.batch_execute(&format!("DROP INDEX {s}.parent_tenant_id_idx"))
        .ok();
    assert!(
        findings(&mut su, &s).iter().all(|x| x.0 != "error"),
        "{:?}",
        findings(&mut su, &s)
    );
}

#[test]
fn verify_reports_bypass_mappings_and_tenancy_setting_grants() {
    let f = Fixture::new();
    let mut su = superuser();
    let role = unique("bypassmap").replace('-', "_");
    su.batch_execute(&format!("CREATE ROLE {role} LOGIN BYPASSRLS"))
        .unwrap();
    su.execute(&format!("SELECT tenancy.map_role('{role}', $1)"), &[&f.a])
        .unwrap();
    let hit: Vec<String> = su
        .query(
            "SELECT fix FROM tenancy.verify() WHERE rule = 'bypass_role_mapped' AND object = $1",
            &[&role],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(hit.len(), 1);
    su.batch_execute(&hit[0]).unwrap();
    let n: i64 = su
        .query_one("SELECT count(*) FROM tenancy.verify() WHERE rule = 'bypass_role_mapped' AND object = $1", &[&role])
        .unwrap()
        .get(0);
    assert_eq!(n, 0);

    su.batch_execute(&format!("GRANT SET ON PARAMETER tenancy.region TO {APP}"))
        .unwrap();
    let fix: String = su
        .query_one("SELECT fix FROM tenancy.verify() WHERE rule = 'tenancy_setting_granted' AND object LIKE '%' || $1", &[&APP])
        .unwrap()
        .get(0);
    su.batch_execute(&fix).unwrap();
    let n: i64 = su
        .query_one(
            "SELECT count(*) FROM tenancy.verify() WHERE rule = 'tenancy_setting_granted'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[test]
fn verify_is_for_operators() {
    let mut a = app();
    expect_err(&mut a, "SELECT * FROM tenancy.verify()", &["42501"]);
    let mut op = connect(OPERATOR);
    op.query("SELECT * FROM tenancy.verify()", &[]).unwrap();
}

/// The RESTRICTIVE policies, not the permissive ones, are what confine each command. A
/// permissive `USING (true)` policy slipped in past the guard (here by a superuser in restore
/// mode, as a Citus-style re-creation or a hand-restored dump could) widens nothing: for each
/// of SELECT, INSERT, UPDATE and DELETE the session still reaches only its own tenant's rows.
#[test]
fn restrictive_policies_confine_every_command_even_beside_an_open_permissive_policy() {
    let f = Fixture::new();
    let mut su = superuser();
    let s = schema(&mut su);
    su.batch_execute(&format!(
        "CREATE TABLE {s}.t (tenant_id uuid, id int, name text);
         GRANT SELECT, INSERT, UPDATE, DELETE ON {s}.t TO {APP};
         SELECT tenancy.protect('{s}.t');"
    ))
    .unwrap();
    let mut c = app();
    for t in [&f.a, &f.b] {
        bound_tx(&mut c, &f, t, true, |c| {
            c.execute(
                &format!("INSERT INTO {s}.t (id, name) SELECT g, $1 || '-secret-' || g FROM generate_series(1, 3) g"),
                &[t],
            )
            .unwrap();
        });
    }
    // Restore mode lets a superuser past the guard; the open policy covers every command.
    su.batch_execute(&format!(
        "SET row_security = off;
         CREATE POLICY open_all ON {s}.t FOR ALL TO PUBLIC USING (true) WITH CHECK (true);
         RESET row_security;"
    ))
    .unwrap();

    bound_tx(&mut c, &f, &f.a, false, |c| {
        let names = texts(c, &format!("SELECT name FROM {s}.t"));
        assert_eq!(names.len(), 3, "{names:?}");
        assert_only(&names, &f.a);
        // Statements that read no column need no SELECT policy: only the UPDATE or DELETE
        // policies stand between them and the other tenant's rows.
        for sql in [
            format!("UPDATE {s}.t SET name = name || '!'"),
            format!("UPDATE {s}.t SET name = 'overwritten'"),
        ] {
            let n = c.execute(&sql, &[]).unwrap();
            assert_eq!(n, 3, "{sql} reached another tenant's rows");
        }
        let deleted = c
            .execute(
                &format!("DELETE FROM {s}.t WHERE name LIKE $1"),
                &[&format!("{}-%", f.b)],
            )
            .unwrap();
        assert_eq!(deleted, 0, "DELETE reached another tenant's rows");
        let deleted = c.execute(&format!("DELETE FROM {s}.t"), &[]).unwrap();
        assert_eq!(deleted, 3, "DELETE reached another tenant's rows");
        let e = c
            .execute(
                &format!(
                    "INSERT INTO {s}.t (tenant_id, id, name) VALUES ($1::text::uuid, 9, 'planted')"
                ),
                &[&f.b_id],
            )
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    });
    // Moving an own row to the other tenant is refused too.
    bound_tx(&mut c, &f, &f.a, false, |c| {
        let e = c
            .execute(
                &format!("UPDATE {s}.t SET tenant_id = $1::text::uuid"),
                &[&f.b_id],
            )
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    });
    let b_rows: i64 = su
        .query_one(
            &format!("SELECT count(*) FROM {s}.t WHERE tenant_id = $1::text::uuid AND name LIKE '%-secret-_'"),
            &[&f.b_id],
        )
        .unwrap()
        .get(0);
    assert_eq!(b_rows, 3);
    // verify() reports the slipped-in policy as drift from the recorded digest.
    let f2 = findings(&mut su, &s);
    assert!(
        f2.iter().any(|x| x.0 == "error"),
        "verify() did not report the extra policy: {f2:?}"
    );
}

/// The guard reads the protected tables' records with a snapshot taken when it checks, not the
/// transaction's: a table's owner whose REPEATABLE READ transaction began before protect()
/// committed did not see the table's record, and turned its FORCE ROW LEVEL SECURITY off after
/// it, so that the owner read every tenant's rows (a reviewer's pass, reproduced).
#[test]
fn the_guard_holds_for_a_transaction_that_began_before_the_table_was_protected() {
    let mut su = superuser();
    let s = schema(&mut su);
    let owner = unique("early").replace('-', "_");
    su.batch_execute(&format!(
        "CREATE ROLE {owner} LOGIN NOSUPERUSER NOBYPASSRLS; GRANT CREATE, USAGE ON SCHEMA {s} TO {owner}"
    ))
    .unwrap();
    let mut o = connect(&owner);
    assert_not_privileged(&mut o);
    o.batch_execute(&format!("CREATE TABLE {s}.t (id int, tenant_id uuid)"))
        .unwrap();
    o.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .unwrap();
    su.execute(&format!("SELECT tenancy.protect('{s}.t')"), &[])
        .unwrap();
    for ddl in [
        format!("ALTER TABLE {s}.t NO FORCE ROW LEVEL SECURITY"),
        format!("ALTER TABLE {s}.t DISABLE ROW LEVEL SECURITY"),
        format!("DROP POLICY tenancy_select ON {s}.t"),
    ] {
        o.batch_execute("SAVEPOINT s").unwrap();
        let e = o.batch_execute(&ddl).expect_err(&format!(
            "{ddl} passed in a transaction older than the protection"
        ));
        assert_eq!(sqlstate(&e), "42501", "{ddl}: {}", message(&e));
        o.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    }
    o.batch_execute("COMMIT").unwrap();
    let forced: bool = su
        .query_one(
            &format!("SELECT relforcerowsecurity FROM pg_class WHERE oid = '{s}.t'::regclass"),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(forced);
}
