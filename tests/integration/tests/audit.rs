//! The audit trail: same-transaction writes, append-only, tamper evidence against a
//! superuser who bypasses the guards, retention with checkpoints, row security on the trail,
//! security events that survive rollback, and 8 concurrent writers of one tenant (pgbench).

mod common;
use common::*;
use postgres::Client;

fn verify(su: &mut Client, tenant: &str) -> (bool, Option<i64>, i64, String) {
    let r = su
        .query_one(
            "SELECT ok, first_bad_id, records, detail FROM tenancy.audit_verify($1)",
            &[&tenant],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

fn audit_count(su: &mut Client, tenant_id: &str, op: &str) -> i64 {
    su.query_one(
        "SELECT count(*) FROM tenancy.audit_log WHERE tenant_id = $1::text::uuid AND op = $2 AND table_name = 'public.it_orders'",
        &[&tenant_id, &op],
    )
    .unwrap()
    .get(0)
}

fn write(c: &mut Client, f: &Fixture, sql: &str, commit: bool) {
    c.batch_execute("BEGIN").unwrap();
    c.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "writer")])
        .unwrap();
    c.batch_execute(sql).unwrap();
    c.batch_execute(if commit { "COMMIT" } else { "ROLLBACK" })
        .unwrap();
}

#[test]
fn committed_changes_are_audited_and_rolled_back_ones_are_not() {
    let f = Fixture::new();
    let mut c = app();
    let mut su = superuser();
    write(
        &mut c,
        &f,
        "INSERT INTO it_orders (amount) SELECT g FROM generate_series(1, 100) g",
        true,
    );
    write(
        &mut c,
        &f,
        "INSERT INTO it_orders (amount) VALUES (999)",
        false,
    );
    write(
        &mut c,
        &f,
        "UPDATE it_orders SET amount = amount + 1 WHERE amount <= 10",
        true,
    );
    write(&mut c, &f, "DELETE FROM it_orders WHERE amount > 95", true);
    // A savepoint rolled back inside a committed transaction leaves no record.
    write(
        &mut c,
        &f,
        "INSERT INTO it_orders (amount) VALUES (5000); SAVEPOINT s; INSERT INTO it_orders (amount) VALUES (6000); ROLLBACK TO SAVEPOINT s",
        true,
    );
    assert_eq!(audit_count(&mut su, &f.a_id, "INSERT"), 101);
    assert_eq!(audit_count(&mut su, &f.a_id, "UPDATE"), 10);
    assert_eq!(audit_count(&mut su, &f.a_id, "DELETE"), 5);
    let r = su
        .query_one(
            "SELECT old_row::text, new_row::text, db_role, subject FROM tenancy.audit_log \
              WHERE tenant_id = $1::text::uuid AND op = 'UPDATE' ORDER BY id LIMIT 1",
            &[&f.a_id],
        )
        .unwrap();
    let (old, new): (String, String) = (r.get(0), r.get(1));
    assert!(
        old.starts_with("{\"amount\":") && !old.contains("tenant_id"),
        "changed columns only: {old}"
    );
    assert!(new.starts_with("{\"amount\":"), "{new}");
    assert_eq!(r.get::<_, String>(2), APP);
    assert_eq!(r.get::<_, String>(3), "writer");
    let (ok, bad, n, _) = verify(&mut su, &f.a);
    assert!(ok, "first bad {bad:?}");
    assert_eq!(n, 101 + 10 + 5 + 1 /* create_tenant */);
}

#[test]
fn the_trail_is_append_only() {
    let f = Fixture::new();
    let mut c = app();
    write(
        &mut c,
        &f,
        "INSERT INTO it_orders (amount) VALUES (1)",
        true,
    );
    let mut su = superuser();
    for sql in [
        "UPDATE tenancy.audit_log SET subject = 'nobody'",
        "DELETE FROM tenancy.audit_log",
        "TRUNCATE tenancy.audit_log",
        "DELETE FROM tenancy.audit_chain",
    ] {
        expect_err(&mut su, sql, &["42501"]);
    }
    let mut op = connect(OPERATOR);
    expect_err(&mut op, "DELETE FROM tenancy.audit_log", &["42501"]);
}

/// audit_verify's answer: ok, first bad record, records checked, detail.
type Verdict = (bool, Option<i64>, i64, String);

/// Tamper as a superuser who disables the append-only triggers; audit_verify points at the
/// first bad record.
fn tampered(how: &str) -> (Fixture, Vec<i64>, Verdict) {
    let f = Fixture::new();
    let mut c = app();
    write(
        &mut c,
        &f,
        "INSERT INTO it_orders (amount) SELECT g FROM generate_series(1, 5) g",
        true,
    );
    let mut su = superuser();
    let ids: Vec<i64> = su
        .query(
            "SELECT id FROM tenancy.audit_log WHERE tenant_id = $1::text::uuid AND op = 'INSERT' ORDER BY id",
            &[&f.a_id],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(verify(&mut su, &f.a).0);
    let sql = how
        .replace("$ID2", &ids[1].to_string())
        .replace("$ID3", &ids[2].to_string())
        .replace("$T", &f.a_id)
        .replace("$B", &f.b_id);
    su.batch_execute(&format!(
        "SET session_replication_role = replica; {sql}; RESET session_replication_role"
    ))
    .unwrap();
    let v = verify(&mut su, &f.a);
    (f, ids, v)
}

#[test]
fn a_changed_record_is_detected() {
    let (_f, ids, (ok, bad, _, detail)) =
        tampered("UPDATE tenancy.audit_log SET new_row = '{\"amount\": 1000000}' WHERE id = $ID2");
    assert!(!ok);
    assert_eq!(bad, Some(ids[1]), "{detail}");
}

#[test]
fn a_deleted_record_is_detected() {
    let (_f, ids, (ok, bad, _, detail)) = tampered("DELETE FROM tenancy.audit_log WHERE id = $ID3");
    assert!(!ok);
    assert_eq!(bad, Some(ids[2]), "{detail}");
}

#[test]
fn an_inserted_record_is_detected() {
    let (_f, _ids, (ok, bad, _, detail)) = tampered(
        "INSERT INTO tenancy.audit_log (tenant_id, op, table_name, new_row, db_role) \
         VALUES ('$T', 'INSERT', 'public.it_orders', '{\"amount\": 1}', 'tenancy_app')",
    );
    assert!(!ok);
    assert!(bad.is_some(), "{detail}");
    assert!(detail.contains("not in the chain"), "{detail}");
}

#[test]
fn swapped_records_are_detected() {
    let (_f, ids, (ok, bad, _, detail)) = tampered(
        "UPDATE tenancy.audit_log l SET new_row = o.new_row, row_hash = o.row_hash FROM tenancy.audit_log o \
          WHERE (l.id, o.id) IN (($ID2, $ID3), ($ID3, $ID2))",
    );
    assert!(!ok);
    assert_eq!(bad, Some(ids[1]), "{detail}");
}

#[test]
fn a_record_moved_to_another_tenant_is_detected_in_both_trails() {
    let (f, ids, (ok, bad, _, detail)) =
        tampered("UPDATE tenancy.audit_log SET tenant_id = '$B' WHERE id = $ID2");
    assert!(!ok);
    assert_eq!(bad, Some(ids[1]), "{detail}");
    assert!(detail.contains("deleted or moved"), "{detail}");
    let (ok, bad, _, detail) = verify(&mut superuser(), &f.b);
    assert!(!ok);
    assert_eq!(bad, Some(ids[1]), "{detail}");
    assert!(detail.contains("not in the chain"), "{detail}");
}

#[test]
fn a_deleted_chain_entry_is_detected() {
    let (_f, ids, (ok, bad, _, detail)) =
        tampered("DELETE FROM tenancy.audit_chain WHERE $ID2 = ANY (record_ids)");
    assert!(!ok);
    assert!(bad.unwrap() <= ids[2], "{detail}");
}

/// Tests that change the trail's definition (ALTER TABLE) and the test that keeps a prepared
/// writer open take this lock for their whole run: a prepared transaction's locks on the trail
/// would hold the ALTER up, and every reader of the trail would queue behind the ALTER, the
/// test's own verification included.
fn trail_exclusive(su: &mut Client) {
    su.batch_execute("SELECT pg_advisory_lock(717172)").unwrap();
}

/// Rolls a prepared transaction back if the test that prepared it fails before committing it
/// (a dangling one would hold its locks in the shared test database).
struct Prepared(String);

impl Drop for Prepared {
    fn drop(&mut self) {
        let _ = superuser().batch_execute(&format!("ROLLBACK PREPARED '{}'", self.0));
    }
}

#[test]
fn a_writer_of_a_tenant_does_not_wait_for_another_writers_commit() {
    // A prepared transaction has linked its records and holds its chain lane until COMMIT
    // PREPARED: the longest a commit of the tenant can ever take. Another writer of the same
    // tenant links into another lane and commits at once; with one chain per tenant it would
    // queue behind it (here: fail on lock_timeout).
    let f = Fixture::new();
    let mut su = superuser();
    trail_exclusive(&mut su);
    let gid = unique("pgt_lane");
    let mut p = app();
    write(
        &mut p,
        &f,
        &format!("INSERT INTO it_orders (amount) VALUES (1); PREPARE TRANSACTION '{gid}'"),
        false,
    );
    let prepared = Prepared(gid.clone());
    let mut c = app();
    c.batch_execute("SET lock_timeout = '3s'").unwrap();
    write(
        &mut c,
        &f,
        "INSERT INTO it_orders (amount) VALUES (2)",
        true,
    );
    let (ok, bad, records, detail) = verify(&mut su, &f.a);
    assert!(ok, "{bad:?} {detail}");
    assert_eq!(records, 1 + 1, "create_tenant and the committed insert");
    p.batch_execute(&format!("COMMIT PREPARED '{gid}'"))
        .unwrap();
    std::mem::forget(prepared);
    let (ok, bad, records, detail) = verify(&mut su, &f.a);
    assert!(ok, "{bad:?} {detail}");
    assert_eq!(records, 1 + 2, "and the prepared insert, once committed");
    let lanes: i64 = su
        .query_one(
            "SELECT count(DISTINCT lane) FROM tenancy.audit_chain c, unnest(c.record_ids) r \
               JOIN tenancy.audit_log l ON l.id = r WHERE c.tenant_id = $1::text::uuid AND l.op = 'INSERT'",
            &[&f.a_id],
        )
        .unwrap()
        .get(0);
    assert_eq!(lanes, 2, "the two writers linked into two lanes");
}

/// The heads of tenant `t` as an anchor (jsonb text), read by an operator.
fn heads(op: &mut Client, t: &str) -> String {
    op.query_one(
        "SELECT jsonb_agg(h)::text FROM tenancy.audit_heads($1) h",
        &[&t],
    )
    .unwrap()
    .get(0)
}

/// (lane, ok, detail) of every anchored head.
fn check_heads(c: &mut Client, anchor: &str) -> Vec<(i16, bool, String)> {
    c.query(
        "SELECT lane, ok, detail FROM tenancy.audit_verify_heads($1::text::jsonb) ORDER BY lane",
        &[&anchor],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// A tenant with one audited insert, an app session, an operator session, and the operator's
/// anchor of the tenant's heads.
fn one_insert_anchored() -> (Fixture, Client, Client, String) {
    let f = Fixture::new();
    let mut c = app();
    let mut op = connect(OPERATOR);
    write(
        &mut c,
        &f,
        "INSERT INTO it_orders (amount) VALUES (1)",
        true,
    );
    let anchor = heads(&mut op, &f.a);
    (f, c, op, anchor)
}

#[test]
fn anchored_heads_expose_deleted_newest_entries_that_verify_cannot_see() {
    let (f, mut c, mut op, anchor) = one_insert_anchored();
    let mut su = superuser();
    let anchored = check_heads(&mut op, &anchor);
    assert!(!anchored.is_empty());
    assert!(anchored.iter().all(|h| h.1), "{anchored:?}");
    // Later writes leave the anchor valid.
    write(
        &mut c,
        &f,
        "INSERT INTO it_orders (amount) VALUES (2)",
        true,
    );
    assert!(check_heads(&mut op, &anchor).iter().all(|h| h.1));
    // A superuser bypassing the guards deletes the lane's entries from the anchored insert on,
    // with their records: every remaining lane still links, so audit_verify cannot tell.
    let r = su
        .query_one(
            "SELECT c.lane, c.seq FROM tenancy.audit_chain c JOIN tenancy.audit_log l ON l.id = ANY (c.record_ids) \
              WHERE c.tenant_id = $1::text::uuid AND l.op = 'INSERT' ORDER BY l.id LIMIT 1",
            &[&f.a_id],
        )
        .unwrap();
    let (lane, seq): (i16, i64) = (r.get(0), r.get(1));
    su.batch_execute(&format!(
        "SET session_replication_role = replica; \
         DELETE FROM tenancy.audit_log WHERE id IN (SELECT unnest(record_ids) FROM tenancy.audit_chain \
          WHERE tenant_id = '{t}' AND lane = {lane} AND seq >= {seq}); \
         DELETE FROM tenancy.audit_chain WHERE tenant_id = '{t}' AND lane = {lane} AND seq >= {seq}; \
         RESET session_replication_role",
        t = f.a_id
    ))
    .unwrap();
    let (ok, _, _, detail) = verify(&mut su, &f.a);
    assert!(ok, "the limit of verification alone: {detail}");
    let after = check_heads(&mut op, &anchor);
    let bad: Vec<_> = after.iter().filter(|h| !h.1).collect();
    assert_eq!(bad.len(), 1, "{after:?}");
    assert_eq!(bad[0].0, lane);
    assert!(bad[0].2.contains("is gone"), "{}", bad[0].2);
}

#[test]
fn anchors_are_checked_only_by_whom_may_verify_the_tenant_and_must_be_well_formed() {
    let (f, mut c, mut op, anchor) = one_insert_anchored();
    // A session bound to tenant B neither reads A's heads nor checks an anchor of A.
    for sql in [
        format!("SELECT * FROM tenancy.audit_heads('{}')", f.a),
        format!("SELECT * FROM tenancy.audit_verify_heads('{anchor}')"),
    ] {
        c.batch_execute("BEGIN").unwrap();
        c.execute("SELECT tenancy.bind($1)", &[&f.token(&f.b, "writer")])
            .unwrap();
        expect_err(&mut c, &sql, &["42501"]);
        c.batch_execute("ROLLBACK").unwrap();
    }
    // Bound to A with a role other than admin, neither (a trail's metadata is the admins'):
    // channels.rs, only_a_tenants_admin_reads_its_trails_metadata.
    c.batch_execute("BEGIN").unwrap();
    c.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "writer")])
        .unwrap();
    expect_err(
        &mut c,
        &format!("SELECT * FROM tenancy.audit_verify_heads('{anchor}')"),
        &["42501"],
    );
    c.batch_execute("ROLLBACK").unwrap();
    // Bound to A as its admin, it checks its own.
    superuser()
        .execute("SELECT tenancy.add_member($1, 'auditor', 'admin')", &[&f.a])
        .unwrap();
    c.batch_execute("BEGIN").unwrap();
    c.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "auditor")])
        .unwrap();
    let own = check_heads(&mut c, &anchor);
    assert!(!own.is_empty() && own.iter().all(|h| h.1), "{own:?}");
    c.batch_execute("ROLLBACK").unwrap();
    let t = "00000000-0000-0000-0000-000000000001";
    for bad in [
        "{}".to_string(),
        r#"[{"tenant": "x", "lane": 0, "seq": 1, "chain_hash": "00"}]"#.to_string(),
        format!(r#"[{{"tenant": "{t}", "lane": 17, "seq": 1, "chain_hash": "00"}}]"#),
        format!(r#"[{{"tenant": "{t}", "lane": 0, "seq": 1, "chain_hash": "zz"}}]"#),
    ] {
        let msg = expect_err(
            &mut op,
            &format!("SELECT * FROM tenancy.audit_verify_heads('{bad}')"),
            &["22023"],
        );
        assert!(msg.contains("invalid anchor"), "{msg}");
    }
}

#[test]
fn purge_leaves_a_checkpoint_and_the_rest_still_verifies() {
    let f = Fixture::new();
    let mut c = app();
    write(
        &mut c,
        &f,
        "INSERT INTO it_orders (amount) SELECT g FROM generate_series(1, 20) g",
        true,
    );
    let mut su = superuser();
    let mut op = connect(OPERATOR);
    // Anchored before the purge: the anchored entries are purged, and the anchor still holds.
    let anchor = heads(&mut op, &f.a);
    let cut: String = su
        .query_one("SELECT clock_timestamp()::text", &[])
        .unwrap()
        .get(0);
    write(
        &mut c,
        &f,
        "INSERT INTO it_orders (amount) SELECT g FROM generate_series(1, 5) g",
        true,
    );
    expect_err(
        &mut c,
        &format!("SELECT tenancy.audit_purge('{}', now())", f.a),
        &["42501"],
    );
    // Records younger than the retention floor (90 days by default) are never purged...
    expect_err(
        &mut op,
        &format!("SELECT tenancy.audit_purge('{}', '{cut}')", f.a),
        &["42501"],
    );
    // ... unless a superuser lowers it (its own setting).
    su.batch_execute("BEGIN; SET LOCAL tenancy.audit_min_retention = 0")
        .unwrap();
    let n: i64 = su
        .query_one(
            "SELECT tenancy.audit_purge($1, $2::text::timestamptz)",
            &[&f.a, &cut],
        )
        .unwrap()
        .get(0);
    su.batch_execute("COMMIT").unwrap();
    assert_eq!(n, 21, "create_tenant + 20 inserts are older than the cut");
    let (ok, bad, records, detail) = verify(&mut su, &f.a);
    assert!(ok, "{bad:?} {detail}");
    assert_eq!(
        records,
        5 + 1,
        "5 inserts and the purge's own ADMIN entry remain"
    );
    // Checked under the floor the purge ran with, the anchored entries were purged; under the
    // default floor their being gone is what a deletion looks like.
    su.batch_execute("SET tenancy.audit_min_retention = 0")
        .unwrap();
    let anchored = check_heads(&mut su, &anchor);
    assert!(
        anchored.iter().all(|h| h.1 && h.2.starts_with("ok (")),
        "{anchored:?}"
    );
    let anchored = check_heads(&mut op, &anchor);
    assert!(anchored.iter().any(|h| !h.1), "{anchored:?}");
    write(
        &mut c,
        &f,
        "INSERT INTO it_orders (amount) VALUES (1)",
        true,
    );
    assert!(verify(&mut su, &f.a).0);
    // Purged again: the lanes' checkpoints move on (an UPDATE that the trail's append-only
    // trigger lets through for a purge, with its new values), and the rest still verifies.
    let cut: String = su
        .query_one("SELECT clock_timestamp()::text", &[])
        .unwrap()
        .get(0);
    write(
        &mut c,
        &f,
        "INSERT INTO it_orders (amount) VALUES (2)",
        true,
    );
    su.batch_execute("BEGIN; SET LOCAL tenancy.audit_min_retention = 0")
        .unwrap();
    let n: i64 = su
        .query_one(
            "SELECT tenancy.audit_purge($1, $2::text::timestamptz)",
            &[&f.a, &cut],
        )
        .unwrap()
        .get(0);
    su.batch_execute("COMMIT").unwrap();
    assert!(n >= 1, "{n}");
    let (ok, bad, _, detail) = verify(&mut su, &f.a);
    assert!(ok, "{bad:?} {detail}");
}

#[test]
fn tenants_read_their_own_trail_and_operators_only_metadata() {
    let f = Fixture::new();
    f.seat_admin(&f.a, "boss");
    let mut c = app();
    write(
        &mut c,
        &f,
        "INSERT INTO it_orders (amount) VALUES (42)",
        true,
    );
    // A member reads nothing; an admin reads only its tenant's records.
    c.batch_execute("BEGIN").unwrap();
    c.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "worker")])
        .unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM tenancy.audit_log", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    c.batch_execute("ROLLBACK; BEGIN").unwrap();
    c.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "boss")])
        .unwrap();
    let tenants: Vec<String> = c
        .query(
            "SELECT DISTINCT tenant_id::text FROM tenancy.audit_log",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tenants, vec![f.a_id.clone()]);
    let (ok,): (bool,) = c
        .query_one("SELECT ok FROM tenancy.audit_verify($1)", &[&f.a])
        .map(|r| (r.get(0),))
        .unwrap();
    assert!(ok);
    c.batch_execute("SAVEPOINT s").unwrap();
    expect_err(
        &mut c,
        &format!("SELECT * FROM tenancy.audit_verify('{}')", f.b),
        &["42501"],
    );
    c.batch_execute("ROLLBACK").unwrap();
    // Operators: no rows of the trail itself, metadata through audit_metadata.
    let mut op = connect(OPERATOR);
    let n: i64 = op
        .query_one("SELECT count(*) FROM tenancy.audit_log", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let n: i64 = op
        .query_one(
            "SELECT count(*) FROM tenancy.audit_metadata WHERE tenant_id = $1::text::uuid",
            &[&f.a_id],
        )
        .unwrap()
        .get(0);
    assert!(n >= 2);
    let cols: Vec<String> = op
        .query(
            "SELECT column_name::text FROM information_schema.columns WHERE table_schema = 'tenancy' AND table_name = 'audit_metadata'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !cols.iter().any(|c| c == "new_row" || c == "old_row"),
        "{cols:?}"
    );
}

#[test]
fn excluded_columns_never_reach_the_trail() {
    let f = Fixture::new();
    let mut su = superuser();
    let s = unique("ex").replace('-', "_");
    su.batch_execute(&format!(
        "CREATE SCHEMA {s}; GRANT USAGE ON SCHEMA {s} TO {APP}; \
         CREATE TABLE {s}.secrets (tenant_id uuid NOT NULL, id int PRIMARY KEY, label text, api_key text); \
         GRANT SELECT, INSERT, UPDATE ON {s}.secrets TO {APP}; \
         SELECT tenancy.protect('{s}.secrets')"
    ))
    .unwrap();
    f.seat_admin(&f.a, "boss");
    // The tenant's admin decides what its own trail leaves out.
    let mut admin = app();
    admin.batch_execute("BEGIN").unwrap();
    admin
        .execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "boss")])
        .unwrap();
    admin
        .batch_execute(&format!(
            "SELECT tenancy.audit_exclude('{s}.secrets', ARRAY['api_key']); COMMIT"
        ))
        .unwrap();
    let mut c = app();
    c.batch_execute("BEGIN").unwrap();
    c.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "u")])
        .unwrap();
    c.batch_execute(&format!(
        "INSERT INTO {s}.secrets (id, label, api_key) VALUES (1, 'prod', 'sk-live-SECRET'); \
         UPDATE {s}.secrets SET api_key = 'sk-live-OTHER', label = 'prod2'; COMMIT"
    ))
    .unwrap();
    let trail: Vec<String> = su
        .query(
            "SELECT coalesce(old_row::text, '') || coalesce(new_row::text, '') FROM tenancy.audit_log WHERE table_name = $1 ORDER BY id",
            &[&format!("{s}.secrets")],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(trail.len(), 2);
    assert!(trail.iter().all(|t| !t.contains("sk-live")), "{trail:?}");
    assert!(trail[1].contains("prod2"));
}

#[test]
fn a_denied_cross_tenant_write_leaves_a_security_event_after_rollback() {
    let f = Fixture::new();
    let mut c = app();
    c.batch_execute("BEGIN").unwrap();
    c.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "mallory")])
        .unwrap();
    let msg = expect_err(
        &mut c,
        &format!(
            "INSERT INTO it_orders (tenant_id, amount) VALUES ('{}', 1)",
            f.b_id
        ),
        &["42501"],
    );
    assert!(msg.contains("belongs to tenant"), "{msg}");
    c.batch_execute("ROLLBACK").unwrap();
    let log = std::fs::read_to_string(format!("{}/server.log", std::env::var("PGHOST").unwrap()))
        .unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("\"event\":\"cross_tenant_write_refused\"") && l.contains(&f.b_id))
        .expect("security event in the server log");
    for needle in [
        "\"table\":\"public.it_orders\"",
        "\"subject\":\"mallory\"",
        &format!("\"tenant\":\"{}\"", f.a),
    ] {
        assert!(line.contains(needle), "{needle} missing from {line}");
    }
}

#[test]
fn eight_concurrent_writers_of_one_tenant_keep_one_chain() {
    let f = Fixture::new();
    let mut su = superuser();
    let role = unique("bench").replace('-', "_");
    su.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS; \
         GRANT SELECT, INSERT, UPDATE ON it_orders TO {role}; GRANT USAGE ON SEQUENCE it_orders_id_seq TO {role}"
    ))
    .unwrap();
    su.execute(&format!("SELECT tenancy.map_role('{role}', $1)"), &[&f.a])
        .unwrap();
    let script = std::env::temp_dir().join(format!("{role}.sql"));
    std::fs::write(
        &script,
        "BEGIN;\nINSERT INTO it_orders (amount) VALUES (1);\nUPDATE it_orders SET amount = amount + 1 WHERE id = (SELECT max(id) FROM it_orders);\nCOMMIT;\n",
    )
    .unwrap();
    for isolation in ["read committed", "repeatable read"] {
        let out = std::process::Command::new("/usr/lib/postgresql/15/bin/pgbench")
            .args(["-n", "-c", "8", "-j", "2", "-T", "4", "-f"])
            .arg(&script)
            .args([
                "-h",
                &std::env::var("PGHOST").unwrap(),
                "-p",
                &std::env::var("PGPORT").unwrap(),
            ])
            .args(["-U", &role, "tenancy_it"])
            .env(
                "PGOPTIONS",
                format!(
                    "-c default_transaction_isolation={}",
                    isolation.replace(' ', "\\ ")
                ),
            )
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let processed: i64 = text
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|v| v.split('/').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "pgbench output: {text}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        println!("pgbench ({isolation}): {processed} transactions by 8 writers of one tenant");
        assert!(processed > 0);
    }
    let rows: i64 = su
        .query_one(
            "SELECT count(*) FROM it_orders WHERE tenant_id = $1::text::uuid",
            &[&f.a_id],
        )
        .unwrap()
        .get(0);
    // Every committed INSERT is in the trail exactly once (failed transactions left nothing).
    assert_eq!(audit_count(&mut su, &f.a_id, "INSERT"), rows);
    let (ok, bad, records, detail) = verify(&mut su, &f.a);
    assert!(ok, "{bad:?} {detail}");
    let chained: i64 = su
        .query_one(
            "SELECT count(*) FROM tenancy.audit_chain c, unnest(c.record_ids) WHERE c.tenant_id = $1::text::uuid",
            &[&f.a_id],
        )
        .unwrap()
        .get(0);
    let logged: i64 = su
        .query_one(
            "SELECT count(*) FROM tenancy.audit_log WHERE tenant_id = $1::text::uuid",
            &[&f.a_id],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        (records, chained),
        (logged, logged),
        "no fork, no lost record"
    );
}

#[test]
fn a_record_rewritten_with_a_recomputed_hash_is_detected() {
    // The attacker is a superuser: it reads the tenant's audit key and recomputes row_hash after
    // the edit. The chain entry's batch hash still exposes it.
    let (_f, ids, (ok, bad, _, detail)) = tampered(
        "UPDATE tenancy.audit_log SET new_row = new_row || '{\"amount\": 7}' WHERE id = $ID2; \
         UPDATE tenancy.audit_log SET row_hash = tenancy._audit_row_hash(id, tenant_id, occurred_at, txid, \
             table_name, op, row_key::text, old_row::text, new_row::text, db_role, subject, \
             application_name, client_addr::text) WHERE id = $ID2",
    );
    assert!(!ok);
    assert!(bad.unwrap() <= ids[1], "{detail}");
    assert!(detail.contains("recomputed"), "{detail}");
}

/// Records are written without SQL, but CHECK constraints and row triggers a DBA adds to the
/// trail still apply to them (the writer then takes the executor's full insert path).
#[test]
fn constraints_and_triggers_added_to_the_trail_apply_to_written_records() {
    let f = Fixture::new();
    let mut c = app();
    let mut su = superuser();
    trail_exclusive(&mut su);
    let tag = unique("trail");
    let name = tag.replace('-', "_");
    c.batch_execute(&format!("SET application_name = '{tag}'"))
        .unwrap();

    su.batch_execute(&format!(
        "ALTER TABLE tenancy.audit_log ADD CONSTRAINT {name} CHECK (application_name IS DISTINCT FROM '{tag}') NOT VALID"
    ))
    .unwrap();
    c.batch_execute("BEGIN").unwrap();
    c.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "writer")])
        .unwrap();
    let err = c
        .batch_execute("INSERT INTO it_orders (amount) VALUES (1)")
        .expect_err("the added CHECK constraint must refuse the record");
    assert_eq!(
        err.code(),
        Some(&postgres::error::SqlState::CHECK_VIOLATION),
        "{err}"
    );
    c.batch_execute("ROLLBACK").unwrap();
    su.batch_execute(&format!(
        "ALTER TABLE tenancy.audit_log DROP CONSTRAINT {name}"
    ))
    .unwrap();

    su.batch_execute(&format!(
        "CREATE TABLE public.{name} (record_id bigint); \
         CREATE FUNCTION public.{name}() RETURNS trigger LANGUAGE plpgsql AS \
           'BEGIN INSERT INTO public.{name} VALUES (NEW.id); RETURN NULL; END'; \
         CREATE TRIGGER {name} AFTER INSERT ON tenancy.audit_log FOR EACH ROW \
           WHEN (NEW.application_name = '{tag}') EXECUTE FUNCTION public.{name}()"
    ))
    .unwrap();
    write(
        &mut c,
        &f,
        "INSERT INTO it_orders (amount) VALUES (2), (3)",
        true,
    );
    su.batch_execute(&format!(
        "DROP TRIGGER {name} ON tenancy.audit_log; DROP FUNCTION public.{name}()"
    ))
    .unwrap();
    let seen: Vec<i64> = su
        .query(
            &format!("SELECT record_id FROM public.{name} ORDER BY 1"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let written: Vec<i64> = su
        .query(
            "SELECT id FROM tenancy.audit_log WHERE application_name = $1 ORDER BY 1",
            &[&tag],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(written.len(), 2, "{written:?}");
    assert_eq!(seen, written, "the added trigger saw every record");
    su.batch_execute(&format!("DROP TABLE public.{name}"))
        .unwrap();
    assert!(verify(&mut su, &f.a).0);
}

/// Records of one tenant counted through `plan` (SET LOCAL lines forcing a scan), as the
/// superuser.
fn records_through(su: &mut Client, tenant_id: &str, table: &str, plan: &str) -> i64 {
    su.batch_execute(&format!("BEGIN; {plan}")).unwrap();
    let n = su
        .query_one(
            "SELECT count(*) FROM tenancy.audit_log WHERE tenant_id = $1::text::uuid AND table_name = $2",
            &[&tenant_id, &table],
        )
        .unwrap()
        .get(0);
    su.batch_execute("COMMIT").unwrap();
    n
}

#[test]
fn a_statement_of_thousands_of_rows_leaves_one_record_per_row_in_the_table_and_its_key() {
    // The writer hands records to the table in batches (by rows and by bytes): every batch,
    // the last partial one included, must reach the heap and the trail's key (tenant_id, id).
    let f = Fixture::new();
    let mut c = app();
    let mut su = superuser();
    write(
        &mut c,
        &f,
        "INSERT INTO it_orders (amount) SELECT g FROM generate_series(1, 2600) g",
        true,
    );
    // Wide rows: 300 records of about 4 kB each, in a table of their own (the shared tables'
    // page layout is what other tests' TID scans rely on).
    let wide = ident("it_wide");
    su.batch_execute(&format!(
        "CREATE TABLE public.{wide} (tenant_id uuid NOT NULL, id int NOT NULL, name text NOT NULL, \
           PRIMARY KEY (tenant_id, id)); \
         SELECT tenancy.protect('public.{wide}'); \
         GRANT SELECT, INSERT ON public.{wide} TO {APP}"
    ))
    .unwrap();
    write(
        &mut c,
        &f,
        &format!(
            "INSERT INTO {wide} (id, name) SELECT g, repeat(md5(g::text), 128) FROM generate_series(1, 300) g"
        ),
        true,
    );
    let wide_name = format!("public.{wide}");
    for (table, rows) in [("public.it_orders", 2600), (wide_name.as_str(), 300)] {
        for plan in [
            "SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_indexonlyscan = off",
            // the key, (tenant_id, id)
            "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off",
        ] {
            assert_eq!(records_through(&mut su, &f.a_id, table, plan), rows, "{table} {plan}");
        }
    }
    // Every record found through the key by its tenant and id, as verification looks them up.
    su.batch_execute("BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off")
        .unwrap();
    let by_key: i64 = su
        .query_one(
            "SELECT count(*) FROM unnest(ARRAY(SELECT id FROM tenancy.audit_log \
               WHERE tenant_id = $1::text::uuid AND table_name IN ('public.it_orders', $2))) x \
              WHERE EXISTS (SELECT FROM tenancy.audit_log l WHERE l.tenant_id = $1::text::uuid AND l.id = x)",
            &[&f.a_id, &wide_name],
        )
        .unwrap()
        .get(0);
    su.batch_execute("COMMIT").unwrap();
    assert_eq!(by_key, 2900);
    let names: i64 = su
        .query_one(
            "SELECT count(DISTINCT new_row->>'name') FROM tenancy.audit_log \
              WHERE tenant_id = $1::text::uuid AND table_name = $2 \
                AND length(new_row->>'name') = 4096",
            &[&f.a_id, &wide_name],
        )
        .unwrap()
        .get(0);
    assert_eq!(names, 300, "each wide record kept its own row");
    let (ok, bad, n, detail) = verify(&mut su, &f.a);
    assert!(ok, "first bad {bad:?}: {detail}");
    assert_eq!(n, 2600 + 300 + 1 /* create_tenant */);
}

#[test]
fn records_hold_each_row_exactly_as_to_jsonb_gives_it_for_every_kind_of_column() {
    // The writer converts integers, numerics, booleans, text, varchar and uuid itself and
    // leaves every other type to to_jsonb of the value: the record must be the text
    // to_jsonb(row) gives, for values at the edges of each type, NULLs, escapes and toasted
    // values.
    let f = Fixture::new();
    let mut su = superuser();
    let s = ident("kinds");
    su.batch_execute(&format!(
        "CREATE SCHEMA {s}; GRANT USAGE ON SCHEMA {s} TO {APP}; \
         CREATE DOMAIN {s}.positive AS int CHECK (VALUE > 0); \
         CREATE TYPE {s}.mood AS ENUM ('calm', 'tense'); \
         CREATE TYPE {s}.pair AS (a int, b text); \
         CREATE TABLE {s}.t (tenant_id uuid NOT NULL, id int NOT NULL, i2 int2, i8 int8, n numeric, \
           n5 numeric(10, 5), f4 float4, f8 float8, b bool, tx text, vc varchar(12), ch char(5), u uuid, \
           ts timestamptz, tl timestamp, d date, j jsonb, js json, arr int[], dom {s}.positive, en {s}.mood, \
           pr {s}.pair, by bytea, PRIMARY KEY (tenant_id, id)); \
         GRANT SELECT, INSERT, UPDATE, DELETE ON {s}.t TO {APP}; \
         SELECT tenancy.protect('{s}.t')"
    ))
    .unwrap();
    let mut c = app();
    write(
        &mut c,
        &f,
        &format!(
            "INSERT INTO {s}.t (id, i2, i8, n, n5, f4, f8, b, tx, vc, ch, u, ts, tl, d, j, js, arr, dom, en, pr, by) VALUES \
             (1, -32768, -9223372036854775808, 0.000001230, 1.5, 1.5e-7, -1e308, true, \
              E'quote \" backslash \\\\ tab \\t newline \\n \\u00e9 \\u0001', 'varchar', 'ab', \
              'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2026-11-22 10:00:00.123456+02', '1999-12-31 23:59:59.5', '2026-02-28', \
              '{{\"z\": [1, 2.50, null], \"a\": {{\"b\": \"c\"}}}}', '{{\"keep\":  \"spacing\" }}', '{{1,NULL,3}}', 7, 'tense', \
              ROW(1, 'x'), '\\x00ff'), \
             (2, 32767, 9223372036854775807, 'NaN', 'NaN', 'NaN', '-Infinity', false, \
              (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 200) g), \
              '', '', '00000000-0000-0000-0000-000000000000', 'infinity', '-infinity', '-infinity', '\"scalar\"', 'null', '{{}}', \
              1, 'calm', ROW(NULL, NULL), ''), \
             (3, NULL, NULL, -12345678901234567890.123456789, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
              NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL), \
             (4, 0, 0, '-Infinity', 0, 0, 0, NULL, 'plain', 'x', 'x', NULL, NULL, '4713-01-01 00:00:00 BC', NULL, '[]', '[]', NULL, 2, NULL, NULL, NULL)"
        ),
        true,
    );
    let table = format!("{s}.t");
    let mismatched = |su: &mut Client, sql: &str, table: &str| -> Vec<String> {
        su.query(sql, &[&table])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let inserts = format!(
        "SELECT format('%s: %s <> %s', t.id, l.new_row, to_jsonb(t)) FROM {s}.t t \
           JOIN tenancy.audit_log l ON l.table_name = $1 AND l.op = 'INSERT' AND (l.row_key->>'id')::int = t.id \
          WHERE l.new_row::text IS DISTINCT FROM to_jsonb(t)::text \
             OR l.row_key::text IS DISTINCT FROM jsonb_build_object('tenant_id', t.tenant_id, 'id', t.id)::text"
    );
    assert_eq!(mismatched(&mut su, &inserts, &table), Vec::<String>::new());
    let n: i64 = su
        .query_one(
            "SELECT count(*) FROM tenancy.audit_log WHERE table_name = $1 AND op = 'INSERT'",
            &[&table],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 4);
    // UPDATE keeps the changed columns; DELETE the whole row as it was.
    su.batch_execute(&format!("CREATE TABLE {s}.before AS SELECT * FROM {s}.t"))
        .unwrap();
    write(
        &mut c,
        &f,
        &format!("UPDATE {s}.t SET i8 = i8 / 2, tx = coalesce(tx, '') || '!', pr = ROW(9, 'y'); DELETE FROM {s}.t"),
        true,
    );
    let updates = format!(
        "SELECT format('%s: %s', w.id, l.new_row) FROM {s}.before w \
           JOIN tenancy.audit_log l ON l.table_name = $1 AND l.op = 'UPDATE' AND (l.row_key->>'id')::int = w.id \
          WHERE l.new_row::text IS DISTINCT FROM (jsonb_build_object('tx', coalesce(w.tx, '') || '!', 'pr', ROW(9, 'y')::{s}.pair) \
                  || CASE WHEN w.i8 IS DISTINCT FROM w.i8 / 2 THEN jsonb_build_object('i8', w.i8 / 2) ELSE '{{}}' END)::text"
    );
    assert_eq!(mismatched(&mut su, &updates, &table), Vec::<String>::new());
    let deletes = format!(
        "SELECT format('%s: %s <> %s', w.id, l.old_row, to_jsonb(w)) FROM {s}.before w \
           JOIN tenancy.audit_log l ON l.table_name = $1 AND l.op = 'DELETE' AND (l.row_key->>'id')::int = w.id \
          WHERE l.old_row::text IS DISTINCT FROM to_jsonb(w)::text"
    );
    // (before has the rows as they were before the UPDATE; compare with the updated values)
    su.batch_execute(&format!(
        "UPDATE {s}.before SET i8 = i8 / 2, tx = coalesce(tx, '') || '!', pr = ROW(9, 'y')"
    ))
    .unwrap();
    assert_eq!(mismatched(&mut su, &deletes, &table), Vec::<String>::new());

    // A table of only the types whose record text the writer also writes itself (for the
    // hash, which audit_verify recomputes from the stored jsonb's text): escapes, NULLs and
    // edge values must hash as jsonb_out writes them.
    su.batch_execute(&format!(
        "CREATE TABLE {s}.plain (tenant_id uuid NOT NULL, id int NOT NULL, i2 int2, i8 int8, n numeric, \
           b bool, tx text, vc varchar(40), ts timestamptz, tl timestamp, d date, \"odd \"\"key\\\" text, \
           PRIMARY KEY (tenant_id, id)); \
         GRANT SELECT, INSERT, UPDATE, DELETE ON {s}.plain TO {APP}; \
         SELECT tenancy.protect('{s}.plain')"
    ))
    .unwrap();
    write(
        &mut c,
        &f,
        &format!(
            "INSERT INTO {s}.plain VALUES \
             (DEFAULT, 1, -1, 1, 1.10, true, E'\\b\\f\\n\\r\\t \" \\\\ \\u001f \\u007f \\u00e9 \\u2603', \
              'it''s', '2026-01-01 00:00:00+00', '2026-01-01 12:34:56.789', '2026-01-01', '{{}}'), \
             (DEFAULT, 2, NULL, NULL, 'NaN', NULL, NULL, NULL, NULL, NULL, NULL, NULL), \
             (DEFAULT, 3, 0, -1, '-Infinity', false, '', '', '-infinity', 'infinity', 'infinity', 'x')"
        ),
        true,
    );
    let plain = format!(
        "SELECT format('%s: %s <> %s', t.id, l.new_row, to_jsonb(t)) FROM {s}.plain t \
           JOIN tenancy.audit_log l ON l.table_name = $1 AND l.op = 'INSERT' AND (l.row_key->>'id')::int = t.id \
          WHERE l.new_row::text IS DISTINCT FROM to_jsonb(t)::text"
    );
    assert_eq!(
        mismatched(&mut su, &plain, &format!("{s}.plain")),
        Vec::<String>::new()
    );
    // UPDATE records the columns whose values changed as jsonb, old and new: a numeric whose
    // bits changed but whose jsonb did not (1.10 -> 1.100) is left out, and a statement that
    // changed no value as jsonb leaves both NULL.
    for (sql, old, new) in [
        (
            "UPDATE {s}.plain SET n = 1.100, vc = 'changed' WHERE id = 1",
            Some(r#"{"vc": "it's"}"#),
            Some(r#"{"vc": "changed"}"#),
        ),
        (
            "UPDATE {s}.plain SET n = 1.1000, vc = 'changed' WHERE id = 1",
            None,
            None,
        ),
        (
            "UPDATE {s}.plain SET i2 = 7, n = n, ts = ts WHERE id = 2",
            Some(r#"{"i2": null}"#),
            Some(r#"{"i2": 7}"#),
        ),
    ] {
        write(&mut c, &f, &sql.replace("{s}", &s), true);
        let r = su
            .query_one(
                "SELECT old_row::text, new_row::text FROM tenancy.audit_log \
                  WHERE tenant_id = $1::text::uuid AND table_name = $2 AND op = 'UPDATE' ORDER BY id DESC LIMIT 1",
                &[&f.a_id, &format!("{s}.plain")],
            )
            .unwrap();
        let got: (Option<String>, Option<String>) = (r.get(0), r.get(1));
        assert_eq!(got, (old.map(String::from), new.map(String::from)), "{sql}");
    }
    write(&mut c, &f, &format!("DELETE FROM {s}.plain"), true);
    let (ok, bad, _, detail) = verify(&mut su, &f.a);
    assert!(ok, "first bad {bad:?}: {detail}");
}

/// A backfill across 20,000 tenants in one transaction. With a chain lock per tenant at commit
/// it ran out of shared memory under the default max_locks_per_transaction (so did onboarding
/// thousands of tenants in one transaction); a commit that links more than 32 tenants takes one lock
/// and links into each tenant's bulk lane, and every tenant's chain verifies.
#[test]
fn an_audited_backfill_across_20000_tenants_in_one_transaction_commits_and_every_chain_verifies() {
    // In a database of its own: the other tests' databases keep their few tenants.
    let db = OwnDatabase::new("backfill", true);
    let mut su = db.connect("postgres");
    let max_locks: String = su
        .query_one("SHOW max_locks_per_transaction", &[])
        .unwrap()
        .get(0);
    assert_eq!(max_locks, "64", "the test is about the default lock table");
    let prefix = unique("bf");
    let table = ident("it_backfill");
    // One statement, one transaction: 2,000 tenants one create_tenant call each, 18,000 more in
    // one create_tenants call; each with its creation's ADMIN record.
    su.execute(
        "SELECT count(tenancy.create_tenant($1 || '-' || g)) FROM generate_series(1, 2000) g",
        &[&prefix],
    )
    .unwrap();
    su.execute(
        "SELECT count(*) FROM tenancy.create_tenants( \
           (SELECT jsonb_agg(jsonb_build_object('slug', $1 || '-' || g)) FROM generate_series(2001, 20000) g))",
        &[&prefix],
    )
    .unwrap();
    su.batch_execute(&format!(
        "CREATE TABLE public.{table} (tenant_id uuid NOT NULL, n int NOT NULL); \
         SELECT tenancy.protect('public.{table}')"
    ))
    .unwrap();
    let pattern = format!("{prefix}-%");
    let rows = su
        .execute(
            &format!(
                "INSERT INTO public.{table} SELECT id, 0 FROM tenancy.tenants WHERE slug LIKE $1"
            ),
            &[&pattern],
        )
        .unwrap();
    assert_eq!(rows, 20_000);
    // The backfill: one UPDATE, one transaction, a record for each of 20,000 tenants.
    let rows = su
        .execute(&format!("UPDATE public.{table} SET n = n + 1"), &[])
        .unwrap();
    assert_eq!(rows, 20_000);
    let linked: i64 = su
        .query_one(
            "SELECT count(DISTINCT c.tenant_id) FROM tenancy.audit_chain c \
               JOIN tenancy.tenants t ON t.id = c.tenant_id \
              WHERE c.lane = 16 AND t.slug LIKE $1",
            &[&pattern],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        linked, 20_000,
        "each tenant's records linked in its bulk lane"
    );
    let (bad, records): (i64, i64) = {
        let r = su
            .query_one(
                "SELECT count(*) FILTER (WHERE NOT v.ok), sum(v.records)::int8 \
                   FROM tenancy.tenants t CROSS JOIN LATERAL tenancy.audit_verify(t.slug) v \
                  WHERE t.slug LIKE $1",
                &[&pattern],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(bad, 0, "every tenant's chain verifies");
    // Per tenant: the creation, the INSERT's record and the UPDATE's.
    assert!(records >= 60_000, "{records} records verified");
    // An ordinary commit of a few tenants still links into lanes 0-15.
    let few = su
        .query_one(
            &format!(
                "WITH u AS (UPDATE public.{table} SET n = n + 1 WHERE tenant_id IN \
                   (SELECT id FROM tenancy.tenants WHERE slug LIKE $1 ORDER BY slug LIMIT 3) RETURNING tenant_id) \
                 SELECT count(*) FROM u"
            ),
            &[&pattern],
        )
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(few, 3);
    let lanes: Vec<i16> = su
        .query(
            "SELECT DISTINCT c.lane FROM tenancy.audit_chain c JOIN tenancy.tenants t ON t.id = c.tenant_id \
              WHERE t.slug LIKE $1 AND c.lane < 16",
            &[&pattern],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!lanes.is_empty(), "the small commit used an ordinary lane");
}
