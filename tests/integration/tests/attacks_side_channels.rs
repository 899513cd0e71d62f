//! Side channels: what a session bound to tenant A can learn about tenant B without reading
//! B's rows directly: existence oracles, error texts, sequences, statistics views, LISTEN/
//! NOTIFY, large objects, session state left on a pooled connection, materialized views,
//! triggers and locks. Each test fails if the channel leaks; where PostgreSQL cannot close a
//! channel, the test checks the mitigation pg_tenancy offers (verify(), a refusal) and
//! tests/integration/ATTACKS.md and the README say what the user should do.

mod common;
use common::*;

fn operator_findings(rule: &str) -> Vec<String> {
    texts(
        &mut connect(OPERATOR),
        &format!("SELECT object FROM tenancy.verify() WHERE rule = '{rule}'"),
    )
}

// ---- existence oracles -------------------------------------------------------------------

#[test]
fn a_key_without_the_tenant_column_is_an_existence_oracle_that_verify_reports() {
    // it_orders has a global primary key (a bigserial id): inserting B's id collides, which
    // PostgreSQL checks without row security. The channel is real, so verify() names it with
    // the fix (a key led by the tenant column).
    let (f, mut c) = two_tenants();
    let id: i64 = bound_tx(&mut c, &f, &f.b, true, |c| {
        c.query_one(
            "INSERT INTO it_orders (amount) VALUES (1) RETURNING id",
            &[],
        )
        .unwrap()
        .get(0)
    });
    begin_bound(&mut c, &f, &f.a);
    let e = c
        .execute("INSERT INTO it_orders (id, amount) VALUES ($1, 1)", &[&id])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23505");
    c.batch_execute("ROLLBACK").unwrap();
    assert!(
        operator_findings("unique_without_tenant")
            .iter()
            .any(|o| o == "public.it_orders.it_orders_pkey"),
        "verify() must report the oracle"
    );
}

#[test]
fn a_key_led_by_the_tenant_column_gives_no_existence_oracle() {
    let (f, mut c) = two_tenants();
    // B has customer ids 1..5 and A has too; a fresh id only B has:
    bound_tx(&mut c, &f, &f.b, true, |c| {
        c.batch_execute("INSERT INTO it_customers (id, name) VALUES (50, 'only-b')")
            .unwrap();
    });
    begin_bound(&mut c, &f, &f.a);
    c.batch_execute("INSERT INTO it_customers (id, name) VALUES (50, 'mine')")
        .expect("a key B uses must not collide for A");
    c.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn management_refusals_do_not_tell_which_tenants_exist() {
    // tenancy.tenants shows a tenant admin its own tenant only, so whether a slug is taken (or
    // which slug a uuid belongs to) is not the admin's to learn. Every management call that
    // names a tenant refuses another tenant and an unknown one alike: 42501, in the same words,
    // the reference echoed as written. Before, an unknown tenant raised 42704 and a known one
    // 42501 with its slug.
    let f = Fixture::new();
    let mut su = superuser();
    su.execute("SELECT tenancy.add_member($1, 'ann', 'admin')", &[&f.a])
        .unwrap();
    let calls = [
        "SELECT tenancy.create_role('{t}', 'x')",
        "SELECT tenancy.drop_role('{t}', 'viewer')",
        "SELECT tenancy.grant('{t}', 'viewer', 'it_orders', '{{delete}}')",
        "SELECT tenancy.revoke('{t}', 'member', NULL, '{{select}}')",
        "SELECT tenancy.add_member('{t}', 'ann', 'admin')",
        "SELECT tenancy.remove_member('{t}', 'x', 'member')",
        "SELECT tenancy.set_setting('{t}', 'model', '\"x\"')",
        "SELECT tenancy.revoke_subject('{t}', 'x')",
        "SELECT tenancy.export_config('{t}')",
        "SELECT * FROM tenancy.audit_verify('{t}')",
        "SELECT * FROM tenancy.audit_heads('{t}')",
    ];
    let unknown_slug = unique("no-such-tenant");
    let unknown_id: String = su
        .query_one("SELECT gen_random_uuid()::text", &[])
        .unwrap()
        .get(0);
    // (the reference, as another tenant's and as an unknown one)
    let pairs = [(&f.b, &unknown_slug), (&f.b_id, &unknown_id)];
    let mut c = app();
    for admin in [true, false] {
        c.batch_execute("BEGIN").unwrap();
        if admin {
            c.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "ann")])
                .unwrap();
        }
        for call in calls {
            for (known, unknown) in pairs {
                let mut said = Vec::new();
                for t in [known, unknown] {
                    let sql = call.replace("{t}", t).replace("{{", "{").replace("}}", "}");
                    c.batch_execute("SAVEPOINT s").unwrap();
                    let m = expect_err(&mut c, &sql, &["42501"]);
                    c.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
                    assert!(!m.contains(&f.b) || t == &f.b, "{sql}: names B: {m}");
                    said.push(m.replace(t.as_str(), "<tenant>"));
                }
                assert_eq!(
                    said[0], said[1],
                    "{call}: (admin: {admin}) tells B from no tenant"
                );
            }
        }
        c.batch_execute("ROLLBACK").unwrap();
    }
    // An operator may list every tenant, and hears that an unknown one does not exist.
    let mut op = connect(OPERATOR);
    expect_err(
        &mut op,
        &format!("SELECT tenancy.set_setting('{unknown_slug}', 'model', '\"x\"')"),
        &["42704"],
    );
    expect_err(
        &mut op,
        &format!("SELECT * FROM tenancy.audit_verify('{unknown_id}')"),
        &["42704"],
    );
}

#[test]
fn duplicate_key_errors_carry_no_key_values_on_protected_tables() {
    // PostgreSQL leaves the "Key (...)=(...)" detail out for tables with row security.
    let (f, mut c) = two_tenants();
    begin_bound(&mut c, &f, &f.a);
    let e = c
        .batch_execute("INSERT INTO it_customers (id, name) VALUES (1, 'dup')")
        .unwrap_err();
    let detail = e
        .as_db_error()
        .and_then(|d| d.detail())
        .unwrap_or_default()
        .to_string();
    assert_eq!(sqlstate(&e), "23505");
    assert_eq!(detail, "", "key values in a duplicate-key error");
    assert_no_trace_of(&[message(&e)], &f);
    c.batch_execute("ROLLBACK").unwrap();
}

// ---- error texts and probes --------------------------------------------------------------

#[test]
fn error_messages_never_carry_another_tenants_values() {
    let (f, mut c) = two_tenants();
    for q in [
        "SELECT name::int FROM it_customers",
        "SELECT * FROM it_customers WHERE name::int > 0",
        "SELECT * FROM it_customers ORDER BY name::int",
        "SELECT * FROM it_customers WHERE id = 3 OR name::date IS NULL",
        "SELECT jsonb_build_object('n', name)::text::int FROM it_customers",
    ] {
        begin_bound(&mut c, &f, &f.a);
        let e = c.batch_execute(q).unwrap_err();
        let m = format!(
            "{} {:?}",
            message(&e),
            e.as_db_error().and_then(|d| d.detail())
        );
        assert!(m.contains(&f.a), "{q}: expected A's own value in: {m}");
        assert_no_trace_of(&[m], &f);
        c.batch_execute("ROLLBACK").unwrap();
    }
}

#[test]
fn a_division_by_zero_probe_never_fires_on_another_tenants_rows() {
    let (f, mut c) = two_tenants();
    begin_bound(&mut c, &f, &f.a);
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM it_customers WHERE 1 / (CASE WHEN name LIKE $1 || '%' THEN 0 ELSE 1 END) = 1",
            &[&f.b],
        )
        .expect("the probe fired: a row of B was evaluated")
        .get(0);
    assert_eq!(n, 5);
    c.batch_execute("ROLLBACK").unwrap();
}

// ---- sequences ---------------------------------------------------------------------------

#[test]
fn a_shared_sequence_state_is_not_readable_and_currval_is_per_session() {
    let (f, mut c) = two_tenants();
    begin_bound(&mut c, &f, &f.a);
    expect_err(
        &mut c,
        "SELECT last_value FROM it_orders_id_seq",
        &["42501"],
    );
    c.batch_execute("ROLLBACK").unwrap();
    // B's inserts do not move A's currval (its own last value).
    begin_bound(&mut c, &f, &f.a);
    let mine: i64 = c
        .query_one(
            "INSERT INTO it_orders (amount) VALUES (1) RETURNING id",
            &[],
        )
        .unwrap()
        .get(0);
    c.batch_execute("COMMIT").unwrap();
    let mut b = app();
    bound_tx(&mut b, &f, &f.b, true, |b| {
        b.batch_execute("INSERT INTO it_orders (amount) VALUES (1)")
            .unwrap();
    });
    let cur: i64 = c
        .query_one("SELECT currval('it_orders_id_seq')", &[])
        .unwrap()
        .get(0);
    assert_eq!(cur, mine);
}

// ---- statistics and activity views -------------------------------------------------------

#[test]
fn pg_stat_activity_shows_no_bound_parameter_values_of_another_session() {
    let (f, mut c) = two_tenants();
    let secret = format!("{}-secret-param", f.b);
    let mut victim = app();
    victim.batch_execute("BEGIN").unwrap();
    victim
        .execute("SELECT tenancy.bind($1)", &[&f.token(&f.b, "victim")])
        .unwrap();
    victim
        .execute(
            "INSERT INTO it_customers (id, name) VALUES (900, $1)",
            &[&secret],
        )
        .unwrap();
    // The victim is idle in transaction; its last statement is visible to the same role.
    let seen = texts(
        &mut c,
        "SELECT coalesce(query, '') FROM pg_stat_activity WHERE usename = current_user",
    );
    assert!(seen.iter().any(|q| q.contains("INSERT INTO it_customers")));
    assert!(seen.iter().all(|q| !q.contains(&secret)), "{seen:?}");
    victim.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn pg_stat_statements_never_shows_another_tenants_constants() {
    let (f, mut c) = two_tenants();
    let mut su = superuser();
    let preloaded: String = su
        .query_one("SHOW shared_preload_libraries", &[])
        .unwrap()
        .get(0);
    assert!(
        preloaded.contains("pg_stat_statements"),
        "the test cluster must preload pg_stat_statements (scripts/test.sh)"
    );
    su.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .unwrap();
    let secret = format!("{}-secret-literal", f.b);
    let mut victim = app();
    bound_tx(&mut victim, &f, &f.b, false, |v| {
        v.batch_execute(&format!(
            "SELECT count(*) FROM it_customers WHERE name = '{secret}'"
        ))
        .unwrap();
    });
    begin_bound(&mut c, &f, &f.a);
    let seen = texts(
        &mut c,
        "SELECT coalesce(query, '') FROM pg_stat_statements WHERE query LIKE '%it_customers%'",
    );
    assert!(
        seen.iter().any(|q| q.contains("WHERE name = $1")),
        "{seen:?}"
    );
    assert!(seen.iter().all(|q| !q.contains(&secret)), "{seen:?}");
    c.batch_execute("ROLLBACK").unwrap();
}

// ---- LISTEN / NOTIFY and large objects ---------------------------------------------------

#[test]
fn pg_tenancy_never_publishes_tenant_data_on_notification_channels() {
    // Channels are database-wide and any role may LISTEN to any of them: PostgreSQL cannot
    // scope them to a tenant (documented; payloads should carry ids, never tenant data). What
    // pg_tenancy controls is what it notifies itself: none of its SQL functions (event
    // triggers, views and helpers included) says NOTIFY or pg_notify, and its library's only
    // notification is the security-event writer's `tenancy_security`, off unless a superuser
    // sets tenancy.notify_security_events, whose payload is an event's id, kind and tenant id
    // (channels.rs and src/events.rs).
    let mut su = superuser();
    let notifying = texts(
        &mut su,
        "SELECT p.oid::regprocedure::text FROM pg_proc p \
           JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e' \
           JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_tenancy' \
          WHERE p.prosrc ~* '(\\mnotify\\M|pg_notify)'",
    );
    assert!(notifying.is_empty(), "{notifying:?}");
    let libdir = std::process::Command::new("/usr/lib/postgresql/15/bin/pg_config")
        .arg("--pkglibdir")
        .output()
        .unwrap();
    let lib = format!(
        "{}/pg_tenancy.so",
        String::from_utf8_lossy(&libdir.stdout).trim()
    );
    let imports = std::process::Command::new("nm")
        .args(["-D", "--undefined-only", &lib])
        .output()
        .unwrap();
    assert!(imports.status.success(), "nm {lib}");
    let imports = String::from_utf8_lossy(&imports.stdout);
    assert!(
        imports.contains("SPI_connect"),
        "nm did not list the imports of {lib}"
    );
    for symbol in ["Async_Notify", "pg_notify"] {
        assert!(
            !imports.lines().any(|l| l.trim_end().ends_with(symbol)),
            "{lib} imports {symbol}"
        );
    }
    let bytes = std::fs::read(&lib).unwrap();
    let text = String::from_utf8_lossy(&bytes).to_lowercase();
    assert!(
        !text.contains("notify "),
        "{lib} carries a NOTIFY statement"
    );
    assert_eq!(
        text.matches("pg_notify(").count(),
        1,
        "{lib}: pg_notify( should appear once, in the security-event writer"
    );
    assert!(text.contains("pg_catalog.pg_notify('tenancy_security', $1)"));
    // Off unless a superuser turns it on (the library defines the setting once loaded).
    su.batch_execute("SELECT tenancy.is_operator()").unwrap();
    let on: String = su
        .query_one("SHOW tenancy.notify_security_events", &[])
        .unwrap()
        .get(0);
    assert_eq!(on, "off");
}

#[test]
fn large_objects_of_another_role_are_unreadable_and_verify_reports_application_owned_ones() {
    // Large objects have no row security: every session of the owning role reads them. A
    // different role cannot (lo_compat_privileges is off), and verify() reports large objects
    // owned by roles that use protected tables, with the way out.
    let f = Fixture::new();
    let mut c = app();
    begin_bound(&mut c, &f, &f.b);
    let oid: u32 = c
        .query_one("SELECT lo_from_bytea(0, 'b-secret-blob')", &[])
        .unwrap()
        .get(0);
    c.batch_execute("COMMIT").unwrap();
    let mut other = connect(OPERATOR);
    let e = other.query_one("SELECT lo_get($1)", &[&oid]).unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    let found = operator_findings("large_objects");
    assert!(
        found.iter().any(|o| o.contains(APP)),
        "verify() must report large objects of {APP}: {found:?}"
    );
    c.execute("SELECT lo_unlink($1)", &[&oid]).unwrap();
}

// ---- session state that outlives the binding ---------------------------------------------

#[test]
fn a_temporary_relation_cannot_shadow_a_protected_table() {
    // pg_temp is searched first: a temp table named it_customers, left on a pooled server
    // connection, would receive the next client's unqualified reads and writes.
    let (f, mut c) = two_tenants();
    for ddl in [
        "CREATE TEMP TABLE it_customers (tenant_id uuid, id int, name text)",
        "CREATE TEMP VIEW it_customers AS SELECT 1",
        "CREATE TEMP SEQUENCE it_items",
        "SELECT * INTO TEMP it_orders FROM it_orders",
        "CREATE TEMP TABLE it_customers AS SELECT * FROM it_customers",
        "CREATE TEMP TABLE harmless (a int); ALTER TABLE harmless RENAME TO it_customers",
        "CREATE TEMP VIEW harmless_v AS SELECT 1; ALTER VIEW harmless_v RENAME TO it_events",
    ] {
        begin_bound(&mut c, &f, &f.a);
        let m = expect_err(&mut c, ddl, &["42501"]);
        assert!(m.contains("would shadow protected table"), "{ddl}: {m}");
        c.batch_execute("ROLLBACK").unwrap();
    }
    // Unbound and outside a transaction too.
    expect_err(&mut c, "CREATE TEMP TABLE it_items (a int)", &["42501"]);
    c.batch_execute("CREATE TEMP TABLE it_scratch (a int); DROP TABLE it_scratch")
        .unwrap();
}

#[test]
fn a_cursor_with_hold_cannot_carry_rows_past_the_binding() {
    let (f, mut c) = two_tenants();
    begin_bound(&mut c, &f, &f.a);
    let m = expect_err(
        &mut c,
        "DECLARE keep CURSOR WITH HOLD FOR SELECT name FROM it_customers",
        &["0A000"],
    );
    assert!(m.contains("WITH HOLD"), "{m}");
    c.batch_execute("ROLLBACK").unwrap();
    // Without HOLD the cursor ends with the transaction, as usual.
    begin_bound(&mut c, &f, &f.a);
    c.batch_execute("DECLARE t CURSOR FOR SELECT name FROM it_customers; COMMIT")
        .unwrap();
    expect_err(&mut c, "FETCH ALL FROM t", &["34000"]);
}

#[test]
fn a_materialized_view_over_a_protected_table_is_refused() {
    // A materialized view stores the rows its creator could see and has no row security:
    // readable later by sessions bound to other tenants.
    let (f, mut c) = two_tenants();
    let mv = ident("mv");
    begin_bound(&mut c, &f, &f.a);
    let m = expect_err(
        &mut c,
        &format!("CREATE MATERIALIZED VIEW public.{mv} AS SELECT name FROM it_customers"),
        &["42501"],
    );
    assert!(m.contains("materialized view"), "{m}");
    c.batch_execute("ROLLBACK").unwrap();
    begin_bound(&mut c, &f, &f.a);
    expect_err(
        &mut c,
        &format!("CREATE MATERIALIZED VIEW public.{mv} AS SELECT count(*) FROM it_customer_totals"),
        &["42501"],
    );
    c.batch_execute("ROLLBACK").unwrap();
    // Not for superusers either (verify() reports ones that existed before protection).
    let mut su = superuser();
    let e = su
        .batch_execute(&format!(
            "CREATE MATERIALIZED VIEW public.{mv} AS SELECT name FROM public.it_customers"
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
}

// ---- code that runs as the table owner ---------------------------------------------------

#[test]
fn a_security_definer_trigger_of_the_table_owner_sees_only_the_bound_tenant() {
    let (f, mut c) = two_tenants();
    let s = ident("trig");
    let owner = ident("towner");
    let mut su = superuser();
    su.batch_execute(&format!(
        "CREATE ROLE {owner} NOLOGIN NOSUPERUSER NOBYPASSRLS; \
         CREATE SCHEMA {s} AUTHORIZATION {owner}; GRANT USAGE ON SCHEMA {s} TO {APP}; \
         CREATE TABLE {s}.census_rows (tenant_id uuid NOT NULL, name text NOT NULL); ALTER TABLE {s}.census_rows OWNER TO {owner}; \
         SELECT tenancy.protect('{s}.census_rows'); \
         INSERT INTO {s}.census_rows VALUES ('{b}', '{bn}-secret-t'); \
         CREATE FUNCTION {s}.census() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS \
         $$ BEGIN RAISE EXCEPTION 'seen: %', (SELECT string_agg(name, ',') FROM {s}.census_rows); END $$; \
         ALTER FUNCTION {s}.census() OWNER TO {owner}; \
         CREATE TRIGGER census AFTER INSERT ON {s}.census_rows FOR EACH ROW EXECUTE FUNCTION {s}.census(); \
         GRANT SELECT, INSERT ON {s}.census_rows TO {APP}",
        b = f.b_id,
        bn = f.b
    ))
    .unwrap();
    begin_bound(&mut c, &f, &f.a);
    let m = expect_err(
        &mut c,
        &format!(
            "INSERT INTO {s}.census_rows (name) VALUES ('{}-secret-new')",
            f.a
        ),
        &["P0001"],
    );
    assert_eq!(m, format!("seen: {}-secret-new", f.a));
    c.batch_execute("ROLLBACK").unwrap();
}

// ---- locks -------------------------------------------------------------------------------

#[test]
fn advisory_locks_cannot_stall_another_tenants_audited_commits() {
    // The audit chain serialises a tenant's commits on a lock. If it were an ordinary advisory
    // lock, a session of tenant A could take B's and hold it. Take every advisory key derived
    // from B's id that SQL can express, then commit an audited write of B.
    let (f, mut c) = two_tenants();
    let b = uuid_bytes(&f.b_id);
    let hi = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let lo = i32::from_be_bytes([b[12], b[13], b[14], b[15]]);
    begin_bound(&mut c, &f, &f.a);
    for (k1, k2) in [
        (0x7465_6e61, hi ^ lo),
        (hi, lo),
        (lo, hi),
        (0x7465_6e61, hi),
        (0x7465_6e61, lo),
    ] {
        c.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&k1, &k2])
            .unwrap();
    }
    for k in [
        ((hi as i64) << 32) | (lo as u32 as i64),
        ((lo as i64) << 32) | (hi as u32 as i64),
    ] {
        c.execute("SELECT pg_advisory_xact_lock($1)", &[&k])
            .unwrap();
    }
    let mut victim = app();
    bound_tx(&mut victim, &f, &f.b, true, |v| {
        v.batch_execute(
            "SET LOCAL lock_timeout = '3s'; INSERT INTO it_customers (id, name) VALUES (60, 'b-after-locks')",
        )
        .unwrap();
    });
    c.batch_execute("ROLLBACK").unwrap();
}

/// `pg_locks` is readable by every role. A tenant's write lock (held from its first write to
/// the end of the transaction) and its chain's locks were tagged with bytes of the tenant's
/// id: any session, bound or not, saw which tenants were writing and in which backend, tied
/// that to the backend's statements in `pg_stat_activity`, and could terminate one chosen
/// tenant's sessions (an attacker's pass). The tags are now keyed by the tenant's audit key:
/// the lock is there, and no field of it carries the tenant's id.
#[test]
fn pg_locks_does_not_name_the_tenant_that_is_writing() {
    let (f, mut c) = two_tenants();
    let b = uuid_bytes(&f.b_id);
    let id_words: Vec<u32> = (0..4)
        .map(|i| u32::from_be_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]))
        .collect();
    let mut watcher = app();
    bound_tx(&mut c, &f, &f.b, false, |c| {
        c.batch_execute("UPDATE it_customers SET name = name WHERE id = 1")
            .unwrap();
        let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        let tags = advisory_tags(&mut watcher, pid);
        assert!(
            tags.iter().any(|t| t.2 == 0x7500),
            "the writer holds no tenant write lock: {tags:?}"
        );
        for (f2, f3, _) in &tags {
            assert!(
                !id_words.contains(f2) && !id_words.contains(f3),
                "a lock tag carries bytes of the writing tenant's id: {tags:?}, id {id_words:x?}"
            );
        }
    });
}

/// The same for a tenant's management lock, held from a management call to the end of its
/// transaction: its tag was the tenant's id folded to 64 bits, so a session that knew or guessed
/// the id saw the tenant being managed, and, the caller holding the tenant's keyed write lock
/// too, learnt which keyed tags were the tenant's (an attacker's pass).
#[test]
fn pg_locks_does_not_name_the_tenant_being_managed() {
    let (f, _c) = two_tenants();
    let b = uuid_bytes(&f.b_id);
    let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut named: Vec<u32> = (0..4).map(|i| word(4 * i)).collect();
    named.extend([word(0) ^ word(8), word(4) ^ word(12)]);
    let mut su = superuser();
    su.batch_execute("BEGIN").unwrap();
    su.execute(
        "SELECT tenancy.create_role($1, $2)",
        &[&f.b, &ident("managed_role")],
    )
    .unwrap();
    let pid: i32 = su.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let tags = advisory_tags(&mut app(), pid);
    su.batch_execute("ROLLBACK").unwrap();
    assert!(
        tags.iter().any(|t| t.2 == 0x7700),
        "the call holds no management lock: {tags:?}"
    );
    for (f2, f3, _) in &tags {
        assert!(
            !named.contains(f2) && !named.contains(f3),
            "a lock tag carries the managed tenant's id: {tags:?}, id {named:x?}"
        );
    }
}

/// The advisory locks `pid` holds, as `pg_locks` shows them to any role: (field 2, field 3,
/// field 4) of each tag.
fn advisory_tags(watcher: &mut postgres::Client, pid: i32) -> Vec<(u32, u32, i16)> {
    watcher
        .query(
            "SELECT classid::oid::int8, objid::oid::int8, objsubid FROM pg_locks \
              WHERE locktype = 'advisory' AND pid = $1",
            &[&pid],
        )
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get::<_, i64>(0) as u32,
                r.get::<_, i64>(1) as u32,
                r.get::<_, i16>(2),
            )
        })
        .collect()
}

fn uuid_bytes(s: &str) -> [u8; 16] {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}
