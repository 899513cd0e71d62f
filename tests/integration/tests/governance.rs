//! Governance (issue #30): the configuration as a canonical document, read by operators and
//! by a tenant's admin for its own tenant, as NOSUPERUSER roles over sockets.

mod common;
use common::*;

/// The tests here read the whole configuration: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn export_config_is_canonical_complete_and_never_holds_a_secret() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (f, mut c) = two_tenants();
    f.seat_admin(&f.a, "boss");
    let mut op = connect(OPERATOR);
    assert_not_privileged(&mut op);
    let export = |c: &mut postgres::Client, tenant: Option<&str>| -> String {
        c.query_one("SELECT tenancy.export_config($1)::text", &[&tenant])
            .unwrap_or_else(|e| panic!("export_config: {}", message(&e)))
            .get(0)
    };
    // The same database exported twice: byte-identical.
    let all = export(&mut op, None);
    assert_eq!(all, export(&mut op, None));
    let doc: serde_json::Value = serde_json::from_str(&all).unwrap();
    assert_eq!(doc["version"], 1);
    // Tenants by slug, without their uuids; A's member and admin; the protected tables with
    // their digests; keys by id and algorithm only.
    let a = doc["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["slug"] == f.a.as_str())
        .expect("tenant A");
    assert!(a.get("id").is_none());
    assert!(a["members"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["subject"] == "boss" && m["role"] == "admin"));
    assert!(a["roles"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["role"] == "member"));
    assert!(doc["protected_tables"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["table"] == "public.it_customers" && p["policy_digest"].is_string()));
    let keys: Vec<&serde_json::Value> = doc["platform_keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["kid"] == f.kid.as_str())
        .collect();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["alg"], "HS256");
    // Never a secret, a uuid of a tenant, or a row.
    assert!(!all.contains(HS_SECRET), "a key's secret in the export");
    assert!(!all.contains(&f.a_id), "a tenant's uuid in the export");
    assert!(!all.contains("-secret-"), "a row in the export");

    // A tenant's admin exports its own tenant (and nothing of the platform's); not another's.
    begin_bound_as(&mut c, &f, &f.a, "boss");
    let own: serde_json::Value = serde_json::from_str(&export(&mut c, Some(&f.a))).unwrap();
    assert_eq!(own["tenants"].as_array().unwrap().len(), 1);
    assert!(own.get("protected_tables").is_none());
    c.batch_execute("SAVEPOINT s").unwrap();
    expect_err(
        &mut c,
        &format!("SELECT tenancy.export_config('{}')", f.b),
        &["42501"],
    );
    c.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    expect_err(&mut c, "SELECT tenancy.export_config()", &["42501"]);
    c.batch_execute("ROLLBACK").unwrap();
    // A member that is not its admin, and an unbound application session: refused.
    begin_bound(&mut c, &f, &f.a);
    expect_err(
        &mut c,
        &format!("SELECT tenancy.export_config('{}')", f.a),
        &["42501"],
    );
    c.batch_execute("ROLLBACK").unwrap();
    expect_err(&mut c, "SELECT tenancy.export_config()", &["42501"]);
}

/// Begin a transaction of `c` bound to `tenant` as `subject`; the caller ends it.
fn begin_bound_as(c: &mut postgres::Client, f: &Fixture, tenant: &str, subject: &str) {
    c.batch_execute("BEGIN").unwrap();
    c.execute("SELECT tenancy.bind($1)", &[&f.token(tenant, subject)])
        .unwrap();
}

#[test]
fn plan_config_lists_each_change_with_its_risk_and_changes_nothing() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (f, _c) = two_tenants();
    let mut op = connect(OPERATOR);
    assert_not_privileged(&mut op);
    let now: serde_json::Value = op
        .query_one("SELECT tenancy.export_config()::text", &[])
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
        .unwrap();
    let plan = |op: &mut postgres::Client,
                doc: &serde_json::Value|
     -> Vec<(String, String, String, String)> {
        op.query(
            "SELECT action, object, detail, risk FROM tenancy.plan_config($1::text::jsonb)",
            &[&doc.to_string()],
        )
        .unwrap_or_else(|e| panic!("plan_config: {}", message(&e)))
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
    };
    // The database's own export: nothing to do.
    assert_eq!(plan(&mut op, &now), vec![]);
    // An edited document.
    let mut want = now.clone();
    let tenants = want["tenants"].as_array_mut().unwrap();
    for t in tenants.iter_mut() {
        if t["slug"] == f.a.as_str() {
            t["members"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"subject": "eve", "role": "admin"}));
            t["roles"]
                .as_array_mut()
                .unwrap()
                .retain(|r| r["role"] != "viewer");
            t["settings"]["x"] = 1.into();
            t["limits"] = serde_json::json!({"work_mem": 1024});
        }
        if t["slug"] == f.b.as_str() {
            t["status"] = "suspended".into();
        }
    }
    tenants.push(serde_json::json!({"slug": "brand-new", "status": "active"}));
    want["protected_tables"]
        .as_array_mut()
        .unwrap()
        .retain(|p| p["table"] != "public.it_customers");
    let rows = plan(&mut op, &want);
    let has = |action: &str, object: &str, risk: &str| {
        rows.iter()
            .any(|(a, o, _, r)| a == action && o.contains(object) && r == risk)
    };
    assert!(has("add_member", &f.a, "widening"), "{rows:?}");
    assert!(
        has("drop_role", &format!("{} role viewer", f.a), "destructive"),
        "{rows:?}"
    );
    assert!(has("suspend_tenant", &f.b, "narrowing"), "{rows:?}");
    assert!(
        has("set_setting", &format!("{} setting x", f.a), "widening"),
        "{rows:?}"
    );
    assert!(
        has("set_limit", &format!("{} limit work_mem", f.a), "narrowing"),
        "{rows:?}"
    );
    assert!(has("create_tenant", "brand-new", "safe"), "{rows:?}");
    assert!(
        has("unprotect", "public.it_customers", "destructive"),
        "{rows:?}"
    );
    // Other tenants of the shared test database are missing from nothing: the document is
    // the whole export, so none of them is to be decommissioned.
    assert!(
        !rows.iter().any(|(a, _, _, _)| a == "decommission_tenant"),
        "{rows:?}"
    );
    // It changed nothing.
    let after: String = op
        .query_one("SELECT tenancy.export_config()::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&after).unwrap(),
        now
    );
    // Not a configuration document; not an operator.
    expect_err(
        &mut op,
        "SELECT * FROM tenancy.plan_config('{}')",
        &["22023"],
    );
    // The document as a parameter: other tests' table names hold quotes.
    let mut app = app();
    let e = app
        .query(
            "SELECT * FROM tenancy.plan_config($1::text::jsonb)",
            &[&now.to_string()],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
}

#[test]
fn assert_clean_raises_with_every_verify_error_and_every_drift_from_a_document() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let db = OwnDatabase::new("gov_clean", true);
    let mut su = db.connect("postgres");
    su.batch_execute(
        "SELECT tenancy.create_tenant('clean-a', settings => '{\"default_roles\": [\"member\"]}')",
    )
    .unwrap();
    let mut op = db.connect(OPERATOR);
    assert_not_privileged(&mut op);
    // Whatever verify() reports as an error in this cluster (some rules look at its roles),
    // assert_clean() raises with exactly those.
    let errors: Vec<String> = op
        .query(
            "SELECT rule FROM tenancy.verify() WHERE severity = 'error'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let clean = op.batch_execute("SELECT tenancy.assert_clean()");
    match &clean {
        Ok(()) => assert!(errors.is_empty(), "{errors:?}"),
        Err(e) => {
            assert_eq!(sqlstate(e), "55000", "{}", message(e));
            for rule in &errors {
                assert!(message(e).contains(rule.as_str()), "{rule}: {}", message(e));
            }
        }
    }
    // A table with a tenant column left unprotected: an error of verify(), so not clean.
    su.batch_execute("CREATE TABLE public.loose (tenant_id uuid, v text)")
        .unwrap();
    let e = op
        .batch_execute("SELECT tenancy.assert_clean()")
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "{}", message(&e));
    assert!(
        message(&e).contains("unprotected_tenant_table"),
        "{}",
        message(&e)
    );
    su.batch_execute("DROP TABLE public.loose").unwrap();
    // Against the expected document: clean while the configuration is the document, and each
    // change since listed once it is not.
    let expected: String = op
        .query_one("SELECT tenancy.export_config()::text", &[])
        .unwrap()
        .get(0);
    let gate = |op: &mut postgres::Client| {
        op.execute("SELECT tenancy.assert_clean($1::text::jsonb)", &[&expected])
    };
    if clean.is_ok() {
        gate(&mut op).unwrap_or_else(|e| panic!("{}", message(&e)));
    }
    su.execute(
        "SELECT tenancy.add_member('clean-a', 'mallory', 'admin')",
        &[],
    )
    .unwrap();
    let e = gate(&mut op).unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "{}", message(&e));
    assert!(message(&e).contains("remove_member"), "{}", message(&e));
    assert!(message(&e).contains("mallory"), "{}", message(&e));
    // Operators only.
    let mut app = db.connect(APP);
    expect_err(&mut app, "SELECT tenancy.assert_clean()", &["42501"]);
}

/// Every table of the round trip, made the same way in each database.
const ROUND_TRIP_SCHEMA: &str = "
    CREATE TABLE public.gv_docs (id bigserial, tenant_id uuid NOT NULL, body text);
    CREATE TABLE public.gv_parts (id bigint, tenant_id uuid NOT NULL, body text)
        PARTITION BY HASH (id);
    CREATE TABLE public.gv_parts_0 PARTITION OF public.gv_parts FOR VALUES WITH (MODULUS 2, REMAINDER 0);
    CREATE TABLE public.gv_parts_1 PARTITION OF public.gv_parts FOR VALUES WITH (MODULUS 2, REMAINDER 1);
    CREATE SCHEMA gv_auto;";

/// Removing a tenant's own resource setting lifts it to the platform's default: widening, not
/// narrowing (an attacker's pass saw it applied under the default `allow`). And apply_config
/// shows names as plan_config does, escaped: a setting's key with a right-to-left override
/// came back raw.
#[test]
fn apply_config_weighs_a_removed_resource_setting_and_escapes_what_it_shows() {
    let f = Fixture::new();
    let mut su = superuser();
    su.execute(
        "SELECT tenancy.set_setting($1, 'statement_timeout', '\"2s\"')",
        &[&f.a],
    )
    .unwrap();
    su.execute(
        "SELECT tenancy.set_setting($1, E'note\\u202Egnp.exe', '\"x\"')",
        &[&f.a],
    )
    .unwrap();
    let mut op = connect(OPERATOR);
    let mut want: serde_json::Value = serde_json::from_str(&export_of(&mut op)).unwrap();
    for t in want["tenants"].as_array_mut().unwrap() {
        if t["slug"] == f.a.as_str() {
            let settings = t["settings"].as_object_mut().unwrap();
            settings.remove("statement_timeout");
            settings.remove("note\u{202e}gnp.exe");
        }
    }
    let e = op
        .query(
            "SELECT * FROM tenancy.apply_config($1::text::jsonb)",
            &[&want.to_string()],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    let rows = op
        .query(
            "SELECT action, object, detail, status FROM tenancy.apply_config($1::text::jsonb, '{safe,narrowing,widening}')",
            &[&want.to_string()],
        )
        .unwrap();
    let shown: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {}",
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2),
                r.get::<_, String>(3)
            )
        })
        .collect();
    assert!(
        shown.iter().any(|r| r.contains("note\\u{202e}gnp.exe")),
        "{shown:?}"
    );
    assert!(!shown.iter().any(|r| r.contains('\u{202e}')), "{shown:?}");
    let left: Option<String> = su
        .query_one(
            "SELECT settings->>'statement_timeout' FROM tenancy.tenant WHERE slug = $1",
            &[&f.a],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, None, "applied once widening was allowed");
}

fn export_of(c: &mut postgres::Client) -> String {
    c.query_one("SELECT tenancy.export_config()::text", &[])
        .unwrap_or_else(|e| panic!("export_config: {}", message(&e)))
        .get(0)
}

fn apply(
    c: &mut postgres::Client,
    doc: &str,
    allow: &[&str],
) -> Result<Vec<(String, String, String)>, postgres::Error> {
    let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
    c.query(
        "SELECT action, risk, status FROM tenancy.apply_config($1::text::jsonb, $2)",
        &[&doc, &allow],
    )
    .map(|rows| {
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    })
}

#[test]
fn apply_config_round_trips_through_an_empty_database_and_refuses_what_was_not_allowed() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (src, dst) = (
        OwnDatabase::new("gv_src", true),
        OwnDatabase::new("gv_dst", true),
    );
    for db in [&src, &dst] {
        db.connect("postgres")
            .batch_execute(ROUND_TRIP_SCHEMA)
            .unwrap();
    }
    // A configuration of every kind, made by hand in the source, by the duties that may.
    let mut op = src.connect(OPERATOR);
    assert_not_privileged(&mut op);
    op.batch_execute(
        "SELECT tenancy.protect('public.gv_docs');
         SELECT tenancy.protect('public.gv_parts', audit => false);
         SELECT tenancy.auto_protect('gv_auto');
         SELECT tenancy.create_tenant('gv-acme', 'Acme', 'eu');
         SELECT tenancy.create_tenant('gv-beta');
         SELECT tenancy.create_tenant('gv-gone');
         SELECT tenancy.set_setting('gv-acme', 'default_roles', '[\"viewer\"]');
         SELECT tenancy.set_setting('gv-acme', 'plan', '\"gold\"');
         SELECT tenancy.set_limit('gv-acme', 'work_mem', '4096');
         SELECT tenancy.create_role('gv-acme', 'auditor');
         SELECT tenancy.grant('gv-acme', 'auditor', 'public.gv_docs', '{select}');
         SELECT tenancy.revoke('gv-acme', 'viewer', NULL, '{select}');
         SELECT tenancy.map_role('tenancy_app2', 'gv-beta', '{member}');
         SELECT tenancy.add_member('gv-acme', 'carol', 'auditor');
         SELECT tenancy.add_member('gv-acme', 'dave', 'admin');
         SELECT tenancy.suspend_tenant('gv-beta', 'unpaid');
         SELECT tenancy.decommission_tenant('gv-gone', 'gv-gone');",
    )
    .unwrap_or_else(|e| panic!("configuring the source: {}", message(&e)));
    let mut ka = src.connect(KEY_ADMIN);
    ka.batch_execute(&format!(
        "SELECT tenancy.add_key('gv-k1', 'HS256', '{HS_SECRET}', 'gv-acme', '2031-01-01T00:00:00Z');
         SELECT tenancy.add_key('gv-k2', 'HS256', '{HS_SECRET}');
         SELECT tenancy.revoke_key('gv-k2');"
    ))
    .unwrap_or_else(|e| panic!("registering keys: {}", message(&e)));
    let exported = export_of(&mut op);
    for part in [
        "\"gv-acme\"",
        "\"auditor\"",
        "public.gv_docs",
        "public.gv_parts_1",
        "gv_auto",
        "\"decommissioned\"",
        "\"suspended\"",
        "gv-k1",
        "gv-k2",
        "tenancy_app2",
        "carol",
        "\"gold\"",
        "\"work_mem\"",
        "\"eu\"",
    ] {
        assert!(exported.contains(part), "{part} not in {exported}");
    }

    // Applied to the empty database: the operator's part needs widening (grants, members,
    // mappings, a setting) and destructive (the decommissioned tenant, audit off) allowed.
    let mut op2 = dst.connect(OPERATOR);
    let err = apply(&mut op2, &exported, &["safe", "narrowing"]).unwrap_err();
    assert_eq!(sqlstate(&err), "42501", "{}", message(&err));
    assert!(
        message(&err).contains("widening add_member"),
        "{}",
        message(&err)
    );
    assert!(
        message(&err).contains("changed nothing"),
        "{}",
        message(&err)
    );
    // ... and it changed nothing.
    let empty = export_of(&mut op2);
    assert!(!empty.contains("gv-acme"), "{empty}");
    let all = ["safe", "narrowing", "widening", "destructive"];
    let rows = apply(&mut op2, &exported, &all)
        .unwrap_or_else(|e| panic!("apply_config: {}", message(&e)));
    assert!(rows
        .iter()
        .any(|(a, _, s)| a == "create_tenant" && s == "applied"));
    // The keys are the key admin's: left, with their material still to be given.
    assert!(
        rows.iter()
            .any(|(a, _, s)| a == "add_key" && s.starts_with("left for a key admin")),
        "{rows:?}"
    );
    let mut ka2 = dst.connect(KEY_ADMIN);
    let err = apply(&mut ka2, &exported, &all).unwrap_err();
    assert_eq!(sqlstate(&err), "0A000", "{}", message(&err));
    let mut with_keys: serde_json::Value = serde_json::from_str(&exported).unwrap();
    let give = |keys: &mut serde_json::Value| {
        for k in keys.as_array_mut().unwrap() {
            k["key"] = HS_SECRET.into();
        }
    };
    give(&mut with_keys["platform_keys"]);
    for t in with_keys["tenants"].as_array_mut().unwrap() {
        give(&mut t["keys"]);
    }
    let rows = apply(
        &mut ka2,
        &with_keys.to_string(),
        &["safe", "widening", "narrowing"],
    )
    .unwrap_or_else(|e| panic!("apply_config as the key admin: {}", message(&e)));
    assert!(rows.iter().all(|(a, _, _)| a.contains("key")), "{rows:?}");

    // Export, apply, export: the same document, byte for byte.
    assert_eq!(export_of(&mut op2), exported);
    // Applied again: nothing to do.
    assert_eq!(apply(&mut op2, &exported, &[]).unwrap(), vec![]);

    // A change that needs a widening not allowed: refused, listed, nothing changed (the
    // narrowing beside it is not made either).
    let mut doc: serde_json::Value = serde_json::from_str(&exported).unwrap();
    for t in doc["tenants"].as_array_mut().unwrap() {
        if t["slug"] == "gv-acme" {
            t["members"]
                .as_array_mut()
                .unwrap()
                .retain(|m| m["subject"] != "carol");
            t["limits"]["work_mem"] = 8192.into();
        }
    }
    let err = apply(&mut op2, &doc.to_string(), &["safe", "narrowing"]).unwrap_err();
    assert_eq!(sqlstate(&err), "42501", "{}", message(&err));
    assert!(
        message(&err).contains("widening set_limit gv-acme limit work_mem"),
        "{}",
        message(&err)
    );
    assert_eq!(export_of(&mut op2), exported);
    // The narrowing alone is applied, audited as the operator's.
    for t in doc["tenants"].as_array_mut().unwrap() {
        if t["slug"] == "gv-acme" {
            t["limits"]["work_mem"] = 4096.into();
        }
    }
    let rows = apply(&mut op2, &doc.to_string(), &["narrowing"]).unwrap();
    assert_eq!(
        rows,
        vec![(
            "remove_member".to_string(),
            "narrowing".to_string(),
            "applied".to_string()
        )]
    );
    let audited: i64 = dst
        .connect("postgres")
        .query_one(
            "SELECT count(*) FROM tenancy.audit_log WHERE op = 'ADMIN' \
              AND new_row->>'action' IN ('apply_config', 'remove_member')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(audited >= 2, "{audited}");
    // Not an operator or key admin; a risk class that does not exist.
    let mut app = dst.connect(APP);
    expect_err(
        &mut app,
        &format!("SELECT * FROM tenancy.apply_config('{exported}')"),
        &["42501"],
    );
    expect_err(
        &mut op2,
        &format!("SELECT * FROM tenancy.apply_config('{exported}', '{{all}}')"),
        &["22023"],
    );
}

#[test]
fn an_operator_listening_hears_a_rolled_back_cross_tenant_write_within_a_second() {
    // On the cluster that preloads pg_tenancy (the security-event writer is a background
    // worker), in a database of its own with the alerts turned on.
    let db = OwnDatabase::preloaded("gv_alerts", true);
    let mut su = db.connect("postgres");
    let f = Fixture::on(&mut su);
    su.batch_execute(&format!(
        "CREATE TABLE public.gv_notes (id bigserial, tenant_id uuid NOT NULL, body text);
         SELECT tenancy.protect('public.gv_notes');
         GRANT SELECT, INSERT ON public.gv_notes TO {APP};
         GRANT USAGE ON SEQUENCE public.gv_notes_id_seq TO {APP};
         ALTER DATABASE {} SET tenancy.notify_security_events = on;",
        db.name
    ))
    .unwrap();
    let mut op = db.connect(OPERATOR);
    assert_not_privileged(&mut op);
    op.batch_execute("LISTEN tenancy_security").unwrap();
    let mut app = db.connect(APP);
    assert_not_privileged(&mut app);
    app.batch_execute("BEGIN").unwrap();
    app.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "mallory")])
        .unwrap();
    let err = app
        .execute(
            &format!(
                "INSERT INTO public.gv_notes (tenant_id, body) VALUES ('{}', 'gv-secret-body')",
                f.b_id
            ),
            &[],
        )
        .unwrap_err();
    let refused = std::time::Instant::now();
    assert_eq!(sqlstate(&err), "42501", "{}", message(&err));
    app.batch_execute("ROLLBACK").unwrap();
    let mut heard = None;
    let mut notes = op.notifications();
    use postgres::fallible_iterator::FallibleIterator;
    let mut it = notes.timeout_iter(std::time::Duration::from_secs(1));
    while let Some(n) = it.next().unwrap() {
        let payload: serde_json::Value = serde_json::from_str(n.payload()).unwrap();
        if payload["event"] == "cross_tenant_write_refused" {
            heard = Some((refused.elapsed(), n.payload().to_string(), payload));
            break;
        }
    }
    let (after, text, payload) =
        heard.expect("no tenancy_security notification within a second of the refusal");
    assert!(after < std::time::Duration::from_secs(1), "{after:?}");
    // The event's id, kind and tenant: never the row.
    assert_eq!(payload["tenant_id"], f.a_id.as_str(), "{text}");
    assert!(payload["id"].is_i64(), "{text}");
    assert_eq!(payload.as_object().unwrap().len(), 3, "{text}");
    assert!(
        !text.contains("gv-secret-body") && !text.contains(&f.b_id),
        "{text}"
    );
    eprintln!("alert heard {after:?} after the refusal");
}

/// The telemetry of tenants, by slug, as `who` reads it: (slug, the whole row as JSON).
fn stats(c: &mut postgres::Client) -> std::collections::BTreeMap<String, serde_json::Value> {
    c.query(
        "SELECT coalesce(tenant, '(other)'), to_jsonb(s)::text FROM tenancy.tenant_stats s",
        &[],
    )
    .unwrap_or_else(|e| panic!("tenant_stats: {}", message(&e)))
    .iter()
    .map(|r| {
        (
            r.get::<_, String>(0),
            serde_json::from_str(r.get::<_, &str>(1)).unwrap(),
        )
    })
    .collect()
}

/// Binds `first`, then `then` in the same transaction: refused (42501, `rebind_refused`), a
/// security event of `then`'s tenant.
fn refused_rebind(c: &mut postgres::Client, first: &str, then: &str) {
    c.batch_execute("BEGIN").unwrap();
    c.execute("SELECT tenancy.bind($1)", &[&first]).unwrap();
    expect_err(c, &format!("SELECT tenancy.bind('{then}')"), &["42501"]);
    c.batch_execute("ROLLBACK").unwrap();
}

fn count(row: &serde_json::Value, key: &str) -> i64 {
    row[key]
        .as_i64()
        .unwrap_or_else(|| panic!("{key} in {row}"))
}

#[test]
fn telemetry_counts_a_scripted_workload_exactly_and_never_a_value() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let db = OwnDatabase::preloaded("gv_telemetry", true);
    let mut su = db.connect("postgres");
    let f = Fixture::on(&mut su);
    su.batch_execute(&format!(
        "CREATE TABLE public.gv_t (id bigserial, tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), body text);
         SELECT tenancy.protect('public.gv_t');
         GRANT SELECT, INSERT, UPDATE ON public.gv_t TO {APP};
         GRANT USAGE ON SEQUENCE public.gv_t_id_seq TO {APP};
         SELECT tenancy.add_member('{}', 'boss', 'admin');",
        f.a
    ))
    .unwrap();
    let mut op = db.connect(OPERATOR);
    assert_not_privileged(&mut op);
    let before = stats(&mut op);
    let mut app = db.connect(APP);
    assert_not_privileged(&mut app);
    let secret = "gv-telemetry-secret-value";
    // A: three committed transactions, each inserting two rows and reading them all back.
    for _ in 0..3 {
        app.batch_execute("BEGIN").unwrap();
        app.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "u1")])
            .unwrap();
        app.execute(
            "INSERT INTO public.gv_t (body) VALUES ($1), ($1)",
            &[&secret],
        )
        .unwrap();
        app.query("SELECT body FROM public.gv_t", &[]).unwrap();
        app.batch_execute("COMMIT").unwrap();
    }
    // A: a rolled-back transaction: its statement and bind count, its rows written do not.
    app.batch_execute("BEGIN").unwrap();
    app.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "u1")])
        .unwrap();
    app.execute("UPDATE public.gv_t SET body = $1", &[&secret])
        .unwrap();
    app.batch_execute("ROLLBACK").unwrap();
    // B, then A in the same transaction: A's bind is refused (a security event of A's).
    refused_rebind(&mut app, &f.token(&f.b, "u2"), &f.token(&f.a, "u1"));

    // A session bound now, in an open transaction.
    let mut open = db.connect(APP);
    open.batch_execute("BEGIN").unwrap();
    open.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "u3")])
        .unwrap();
    open.query("SELECT 1 FROM public.gv_t LIMIT 1", &[])
        .unwrap();

    let after = stats(&mut op);
    let delta = |slug: &str, key: &str| count(&after[slug], key) - count(&before[slug], key);
    assert_eq!(after[&f.a]["source"], "shared memory", "{}", after[&f.a]);
    // Three committed, one rolled back; the open transaction's are published when it ends.
    assert_eq!(delta(&f.a, "binds"), 4);
    assert_eq!(delta(&f.a, "refused_binds"), 1);
    // 3 inserts, 3 selects and the rolled-back update (the open session's not yet).
    assert_eq!(delta(&f.a, "statements"), 7);
    assert_eq!(delta(&f.a, "rows_written"), 6);
    assert_eq!(delta(&f.a, "rows_read"), 2 + 4 + 6);
    assert_eq!(delta(&f.a, "audit_records"), 6);
    assert_eq!(count(&after[&f.a], "bound_sessions"), 1);
    assert_eq!(
        after[&f.a]["security_events"]["bind_refused"].as_i64(),
        Some(
            before[&f.a]["security_events"]["bind_refused"]
                .as_i64()
                .unwrap_or(0)
                + 1
        )
    );
    assert!(after[&f.a]["last_write"].is_string());
    assert_eq!(delta(&f.b, "binds"), 1);
    assert_eq!(delta(&f.b, "statements"), 0);
    let table = after[&f.a]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "public.gv_t")
        .cloned()
        .unwrap();
    assert_eq!(count(&table, "rows_written"), 6, "{table}");
    // A data-modifying WITH counts as a write of its table (PostgreSQL counts none of its
    // rows); a rolled-back savepoint's rows are not counted as written.
    let before_cte = stats(&mut op);
    app.batch_execute("BEGIN").unwrap();
    app.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "u1")])
        .unwrap();
    app.query(
        "WITH d AS (UPDATE public.gv_t SET body = body RETURNING 1) SELECT count(*) FROM d",
        &[],
    )
    .unwrap();
    app.batch_execute(
        "SAVEPOINT s; INSERT INTO public.gv_t (body) SELECT 'x' FROM generate_series(1, 100);          ROLLBACK TO SAVEPOINT s; INSERT INTO public.gv_t (body) VALUES ('y'); COMMIT",
    )
    .unwrap();
    let after_cte = stats(&mut op);
    let d = |key: &str| count(&after_cte[&f.a], key) - count(&before_cte[&f.a], key);
    assert_eq!(d("statements"), 3);
    assert_eq!(d("rows_written"), 1);
    assert_ne!(
        after_cte[&f.a]["last_write"],
        before_cte[&f.a]["last_write"]
    );
    su.batch_execute("DELETE FROM public.gv_t WHERE body = 'y'")
        .unwrap();

    // Rows and bytes from the statistics, not a scan.
    su.batch_execute("ANALYZE public.gv_t").unwrap();
    let analyzed = stats(&mut op);
    let table = analyzed[&f.a]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "public.gv_t")
        .cloned()
        .unwrap();
    assert_eq!(count(&table, "estimated_rows"), 6, "{table}");
    assert!(count(&table, "estimated_bytes") > 0, "{table}");
    // Never a value of a row.
    let all: String = op
        .query_one("SELECT json_agg(s)::text FROM tenancy.tenant_stats s", &[])
        .unwrap()
        .get(0);
    assert!(!all.contains(secret));

    // Time to revoke: the open session's next statement after its subject is revoked.
    op.execute("SELECT tenancy.revoke_subject($1, 'u3', now())", &[&f.a])
        .unwrap();
    expect_err(&mut open, "SELECT 1 FROM public.gv_t LIMIT 1", &["42501"]);
    open.batch_execute("ROLLBACK").unwrap();
    let revoked = stats(&mut op);
    assert!(
        revoked[&f.a]["time_to_revoke"].is_string(),
        "{}",
        revoked[&f.a]
    );
    assert_eq!(count(&revoked[&f.a], "bound_sessions"), 0);
    // A login role mapped to the tenant is a bound session too, until it disconnects.
    su.execute(
        "SELECT tenancy.map_role($1::text::regrole, $2)",
        &[&APP2, &f.b],
    )
    .unwrap();
    su.batch_execute(&format!("GRANT SELECT ON public.gv_t TO {APP2}"))
        .unwrap();
    let mut mapped = db.connect(APP2);
    mapped
        .query("SELECT count(*) FROM public.gv_t", &[])
        .unwrap();
    assert_eq!(count(&stats(&mut op)[&f.b], "bound_sessions"), 1);
    drop(mapped);
    let mut gone = false;
    for _ in 0..50 {
        if count(&stats(&mut op)[&f.b], "bound_sessions") == 0 {
            gone = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(gone, "a disconnected mapped session still counted");

    // A tenant's admin sees its own row only; a member, an unbound session: refused.
    let mut admin = db.connect(APP);
    admin.batch_execute("BEGIN").unwrap();
    admin
        .execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "boss")])
        .unwrap();
    let own = stats(&mut admin);
    assert_eq!(own.keys().collect::<Vec<_>>(), vec![&f.a], "{own:?}");
    admin.batch_execute("ROLLBACK").unwrap();
    admin.batch_execute("BEGIN").unwrap();
    admin
        .execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "u1")])
        .unwrap();
    expect_err(&mut admin, "SELECT * FROM tenancy.tenant_stats", &["42501"]);
    admin.batch_execute("ROLLBACK").unwrap();
    expect_err(&mut admin, "SELECT * FROM tenancy.tenant_stats", &["42501"]);
    expect_err(&mut admin, "SELECT tenancy.metrics()", &["42501"]);
}

#[test]
fn telemetry_counts_what_a_statement_did_however_it_ran() {
    // Found by an attacker's pass: reads through a cursor, writes behind two-phase commit or a
    // data-modifying WITH, and copies out of a protected table were counted as nothing or as
    // something else; and a database cloned from another counted into the original's tenants.
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let db = OwnDatabase::preloaded("gv_how", true);
    let mut su = db.connect("postgres");
    let f = Fixture::on(&mut su);
    su.batch_execute(&format!(
        "CREATE TABLE public.gv_h (id bigserial, tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), body text);
         SELECT tenancy.protect('public.gv_h');
         GRANT SELECT, INSERT, UPDATE ON public.gv_h TO {APP};
         GRANT USAGE ON SEQUENCE public.gv_h_id_seq TO {APP};
         GRANT CREATE ON SCHEMA public TO {APP};"
    ))
    .unwrap();
    let mut op = db.connect(OPERATOR);
    let mut app = db.connect(APP);
    assert_not_privileged(&mut app);
    let bind = |c: &mut postgres::Client| {
        c.batch_execute("BEGIN").unwrap();
        c.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "u1")])
            .unwrap();
    };
    bind(&mut app);
    app.batch_execute(
        "INSERT INTO public.gv_h (body) SELECT 'r' || i FROM generate_series(1, 50) i; COMMIT",
    )
    .unwrap();
    let delta =
        |before: &std::collections::BTreeMap<String, serde_json::Value>,
         op: &mut postgres::Client,
         key: &str| { count(&stats(op)[&f.a], key) - count(&before[&f.a], key) };

    // A cursor: FETCH ALL, then an empty FETCH (PostgreSQL 15 keeps only the last step's count).
    let before = stats(&mut op);
    bind(&mut app);
    app.batch_execute(
        "DECLARE c CURSOR FOR SELECT * FROM public.gv_h; FETCH ALL FROM c; FETCH NEXT FROM c; CLOSE c;
         DECLARE d CURSOR FOR SELECT * FROM public.gv_h; FETCH 20 FROM d; FETCH 20 FROM d; FETCH 20 FROM d; CLOSE d;
         COMMIT",
    )
    .unwrap();
    assert_eq!(delta(&before, &mut op, "rows_read"), 100);
    assert_eq!(delta(&before, &mut op, "rows_written"), 0);

    // A cursor of a subtransaction that failed never ends: its rows are not counted, as no
    // failed statement's are, and not to the next statement either (PostgreSQL allocates that
    // one's QueryDesc where the failed one's was). A cursor of a released savepoint lives on
    // past a later savepoint's failure, and counts every row it returned.
    let before = stats(&mut op);
    bind(&mut app);
    // One statement a round trip, as an application sends them.
    for sql in [
        "SAVEPOINT s",
        "DECLARE c CURSOR FOR SELECT * FROM public.gv_h",
        "FETCH 30 FROM c",
        "SELECT 1/0",
        "ROLLBACK TO SAVEPOINT s",
        "DECLARE c2 CURSOR FOR SELECT * FROM public.gv_h",
        "FETCH 1 FROM c2",
        "CLOSE c2",
        "SAVEPOINT r",
        "DECLARE d CURSOR FOR SELECT * FROM public.gv_h",
        "FETCH 5 FROM d",
        "RELEASE SAVEPOINT r",
        "SAVEPOINT t",
        "SELECT 1/0",
        "ROLLBACK TO SAVEPOINT t",
        "FETCH 5 FROM d",
        "CLOSE d",
        "COMMIT",
    ] {
        let r = app.batch_execute(sql);
        assert_eq!(r.is_err(), sql == "SELECT 1/0", "{sql}: {r:?}");
    }
    assert_eq!(delta(&before, &mut op, "rows_read"), 1 + 10);

    // Rows copied out of a protected table into one of the session's own: read, not written.
    let before = stats(&mut op);
    bind(&mut app);
    app.batch_execute(
        "CREATE TEMP TABLE loot AS SELECT * FROM public.gv_h WHERE false;
         INSERT INTO loot SELECT * FROM public.gv_h; COMMIT",
    )
    .unwrap();
    assert_eq!(delta(&before, &mut op, "rows_read"), 50);
    assert_eq!(delta(&before, &mut op, "rows_written"), 0);

    // A data-modifying WITH under an INSERT elsewhere: a write of the table (its statement and
    // last write), without rows PostgreSQL does not count; never rows of another table.
    let before = stats(&mut op);
    bind(&mut app);
    app.batch_execute(
        "CREATE TEMP TABLE sink (x int);
         WITH u AS (UPDATE public.gv_h SET body = body || '-x' RETURNING 1)
             INSERT INTO sink SELECT 1 FROM u;
         COMMIT",
    )
    .unwrap();
    let after = stats(&mut op);
    assert_eq!(
        count(&after[&f.a], "rows_written"),
        count(&before[&f.a], "rows_written")
    );
    assert_eq!(
        count(&after[&f.a], "statements"),
        count(&before[&f.a], "statements") + 1
    );
    assert_ne!(
        after[&f.a]["last_write"], before[&f.a]["last_write"],
        "{}",
        after[&f.a]
    );

    // Two-phase commit: the prepared transaction's writes count as committed.
    let before = stats(&mut op);
    bind(&mut app);
    app.batch_execute(
        "INSERT INTO public.gv_h (body) SELECT 'p' || i FROM generate_series(1, 7) i;
         PREPARE TRANSACTION 'gv_how_2pc'",
    )
    .unwrap();
    su.batch_execute("COMMIT PREPARED 'gv_how_2pc'").unwrap();
    assert_eq!(delta(&before, &mut op, "rows_written"), 7);
    assert_eq!(delta(&before, &mut op, "audit_records"), 7);

    // A database cloned from this one has the same tenant ids: its activity is its own, not
    // this database's tenant's (here it is in the other bucket).
    drop((app, op, su));
    let clone = ident("gv_how_clone");
    let mut top = connect_preloaded("postgres");
    top.batch_execute(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
        db.name
    ))
    .unwrap();
    top.batch_execute(&format!("CREATE DATABASE {clone} TEMPLATE {}", db.name))
        .unwrap();
    let mut op = db.connect(OPERATOR);
    let before = stats(&mut op);
    {
        let mut cfg = preloaded_config(APP);
        cfg.dbname(&clone);
        let mut other = cfg.connect(postgres::NoTls).unwrap();
        other.batch_execute("BEGIN").unwrap();
        other
            .execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "u1")])
            .unwrap();
        other
            .batch_execute(
                "INSERT INTO public.gv_h (body) SELECT 'c' || i FROM generate_series(1, 30) i; COMMIT",
            )
            .unwrap();
    }
    let after = stats(&mut op);
    assert_eq!(
        count(&after[&f.a], "rows_written"),
        count(&before[&f.a], "rows_written")
    );
    assert_eq!(count(&after[&f.a], "binds"), count(&before[&f.a], "binds"));
    assert!(
        count(&after["(other)"], "rows_written") >= count(&before["(other)"], "rows_written") + 30,
        "{}",
        after["(other)"]
    );
    drop(op);
    top.batch_execute(&format!("DROP DATABASE {clone} WITH (FORCE)"))
        .unwrap();
}

#[test]
fn metrics_parse_as_prometheus_text_with_a_bounded_label_set() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let db = OwnDatabase::preloaded("gv_metrics", true);
    let mut su = db.connect("postgres");
    let f = Fixture::on(&mut su);
    let scraper = ident("gv_scraper");
    su.batch_execute(&format!(
        "CREATE ROLE {scraper} LOGIN NOSUPERUSER NOBYPASSRLS IN ROLE pg_monitor;
         SELECT tenancy.create_tenants(
             (SELECT jsonb_agg(jsonb_build_object('slug', 'gv-m' || i)) FROM generate_series(1, 30) i));
         SELECT tenancy.create_tenant('other');"
    ))
    .unwrap();
    let mut app = db.connect(APP);
    for i in 1..=30 {
        let t = format!("gv-m{i}");
        app.execute("SELECT tenancy.bind($1)", &[&f.token(&t, "u")])
            .ok();
    }
    // A tenant named `other`, among the most active: its label is not the other bucket's.
    for _ in 0..3 {
        app.execute("SELECT tenancy.bind($1)", &[&f.token("other", "u")])
            .ok();
    }
    app.execute("SELECT tenancy.bind($1)", &[&f.token(&f.a, "u")])
        .ok();
    let mut c = db.connect(&scraper);
    assert_not_privileged(&mut c);
    let text: String = c
        .query_one("SELECT tenancy.metrics()", &[])
        .unwrap_or_else(|e| panic!("metrics(): {}", message(&e)))
        .get(0);
    // A real Prometheus parser (Debian's python3-prometheus-client): every family and
    // sample, and the tenant labels: at most tenancy.metrics_top_tenants (10) and "(other)".
    let out = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys, json\n\
from prometheus_client.parser import text_string_to_metric_families\n\
fams = list(text_string_to_metric_families(sys.stdin.read()))\n\
print(json.dumps({f.name: [[s.labels, s.value] for s in f.samples] for f in fams}))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut p| {
            use std::io::Write;
            p.stdin.take().unwrap().write_all(text.as_bytes())?;
            p.wait_with_output()
        })
        .expect("run /usr/bin/python3 (scripts/lib.sh installs python3-prometheus-client)");
    assert!(
        out.status.success(),
        "the parser refused the metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for family in [
        "pg_tenancy_tenants",
        "pg_tenancy_telemetry_up",
        "pg_tenancy_tracked_tenants",
        "pg_tenancy_security_events",
        "pg_tenancy_tenant_binds",
        "pg_tenancy_tenant_statements",
        "pg_tenancy_tenant_bound_sessions",
    ] {
        assert!(parsed.get(family).is_some(), "{family} missing: {text}");
    }
    let labels: Vec<String> = parsed["pg_tenancy_tenant_binds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[0]["tenant"].as_str().unwrap().to_string())
        .collect();
    let tenants: std::collections::BTreeSet<String> = labels.iter().cloned().collect();
    assert_eq!(tenants.len(), labels.len(), "a label twice: {text}");
    assert!(tenants.len() <= 11, "{tenants:?}");
    assert!(tenants.contains("(other)"), "{tenants:?}");
    assert!(tenants.contains("other"), "{tenants:?}");
    let binds_of = |t: &str| {
        parsed["pg_tenancy_tenant_binds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s[0]["tenant"] == t)
            .map(|s| s[1].as_f64().unwrap())
    };
    assert_eq!(binds_of("other"), Some(3.0), "{text}");
    let active: f64 = parsed["pg_tenancy_tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s[0]["status"] == "active")
        .map(|s| s[1].as_f64().unwrap())
        .unwrap();
    assert_eq!(active, 33.0);
    assert_eq!(
        parsed["pg_tenancy_telemetry_up"][0][1].as_f64(),
        Some(1.0),
        "{text}"
    );
    // The scraper reads every tenant's telemetry too (and the other bucket), managing nothing.
    let rows = stats(&mut c);
    assert_eq!(rows.len(), 34, "{:?}", rows.keys());
    expect_err(
        &mut c,
        "SELECT tenancy.create_tenant('gv-nope')",
        &["42501"],
    );
    drop(c);
    connect_preloaded("postgres")
        .batch_execute(&format!("DROP ROLE {scraper}"))
        .ok();
}

#[test]
fn the_cap_on_tracked_tenants_holds_with_ten_thousand_tenants() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let db = OwnDatabase::preloaded("gv_cap", true);
    let mut su = db.connect("postgres");
    let f = Fixture::on(&mut su);
    let cap: i64 = su
        .query_one(
            "SELECT current_setting('tenancy.telemetry_tenants')::int8",
            &[],
        )
        .unwrap()
        .get(0);
    su.batch_execute(
        "SELECT tenancy.create_tenants(
             (SELECT jsonb_agg(jsonb_build_object('slug', 'gv-c' || i)) FROM generate_series(1, 10000) i))",
    )
    .unwrap();
    // Each tenant binds once, in turn (autocommit: the bind is counted at its statement's end).
    let mut app = db.connect(APP);
    app.batch_execute("SET client_min_messages = error")
        .unwrap();
    for i in 1..=10_000 {
        app.execute(
            "SELECT tenancy.bind($1)",
            &[&f.token(&format!("gv-c{i}"), "u")],
        )
        .unwrap();
    }
    let mut op = db.connect(OPERATOR);
    let rows = stats(&mut op);
    let tracked: Vec<&String> = rows
        .iter()
        .filter(|(slug, r)| slug.starts_with("gv-c") && r["source"] == "shared memory")
        .map(|(slug, _)| slug)
        .collect();
    assert!(
        tracked.len() as i64 <= cap,
        "{} tracked over a cap of {cap}",
        tracked.len()
    );
    // The least recently active went first: the last ones bound are tracked, with their bind.
    for i in (10_001 - cap.min(500))..=10_000 {
        let r = &rows[&format!("gv-c{i}")];
        assert_eq!(r["source"], "shared memory", "gv-c{i}: {r}");
        assert_eq!(count(r, "binds"), 1, "gv-c{i}: {r}");
    }
    assert!(rows["gv-c1"]["binds"].is_null(), "{}", rows["gv-c1"]);
    let other = &rows["(other)"];
    assert!(count(other, "binds") >= 10_000 - cap, "{other}");
    let text: String = op
        .query_one("SELECT tenancy.metrics()", &[])
        .unwrap()
        .get(0);
    let tracked_metric: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("pg_tenancy_tracked_tenants "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(tracked_metric as i64 <= cap, "{text}");
}

#[test]
fn without_preloading_tenant_stats_says_so_and_shows_what_statistics_tell() {
    // The main test cluster does not preload pg_tenancy: no counts, and every row says why.
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (f, _c) = two_tenants();
    let mut op = connect(OPERATOR);
    assert_not_privileged(&mut op);
    let rows = stats(&mut op);
    let a = &rows[&f.a];
    assert_eq!(
        a["source"], "statistics only: pg_tenancy is not in shared_preload_libraries",
        "{a}"
    );
    assert!(a["binds"].is_null() && a["statements"].is_null(), "{a}");
    assert!(
        a["tables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["table"] == "public.it_orders"),
        "{a}"
    );
    assert!(!rows.contains_key("(other)"), "{:?}", rows.keys());
    let text: String = op
        .query_one("SELECT tenancy.metrics()", &[])
        .unwrap()
        .get(0);
    assert!(text.contains("pg_tenancy_telemetry_up 0"), "{text}");
}

#[test]
fn a_nul_in_a_tokens_claims_cannot_stop_the_security_events() {
    // A token of any registered key naming a tenant with a NUL: jsonb cannot hold NUL, and the
    // event writer used to fail on the refused bind's event carrying the claim and lose its
    // whole batch, and security_events() failed for operators. Claims with control characters
    // are now refused as invalid before anything reads them (an attacker's pass hid a subject
    // behind a NUL); the events keep flowing.
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let db = OwnDatabase::preloaded("gv_nul", true);
    let mut su = db.connect("postgres");
    let f = Fixture::on(&mut su);
    let mut app = db.connect(APP);
    let poison = f.token_with(serde_json::json!({
        "tid": "globex\u{0}", "sub": "x\u{0}y", "exp": now() + 3600, "iat": now()
    }));
    let refused = expect_err(
        &mut app,
        &format!("SELECT tenancy.bind('{poison}')"),
        &["28000"],
    );
    assert!(refused.contains("is invalid"), "{refused}");
    // Then an event of tenant A's, in the same batch or the next.
    refused_rebind(&mut app, &f.token(&f.b, "u"), &f.token(&f.a, "u"));
    let mut op = db.connect(OPERATOR);
    assert_not_privileged(&mut op);
    let recent: i64 = op
        .query_one("SELECT count(*) FROM tenancy.security_events()", &[])
        .unwrap_or_else(|e| panic!("security_events(): {}", message(&e)))
        .get(0);
    assert!(recent >= 2, "{recent}");
    let mut logged = false;
    for _ in 0..50 {
        let n: i64 = op
            .query_one(
                "SELECT count(*) FROM tenancy.security_event_log WHERE tenant_id = $1::text::uuid",
                &[&f.a_id],
            )
            .unwrap()
            .get(0);
        if n > 0 {
            logged = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(logged, "tenant A's event never reached the log");
}

#[test]
fn an_operator_cannot_widen_access_by_removing_a_last_membership() {
    // A subject with no membership binds with the tenant's default_roles: removing the last
    // membership of a subject whose roles give less is a widening, refused to an operator once
    // the tenant has an admin (and labelled widening by plan_config).
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (f, _c) = two_tenants();
    let mut su = superuser();
    su.batch_execute(&format!(
        "SELECT tenancy.add_member('{a}', 'boss', 'admin');
         SELECT tenancy.create_role('{a}', 'auditor');
         SELECT tenancy.add_member('{a}', 'intern', 'viewer');
         SELECT tenancy.add_member('{a}', 'contractor', 'auditor');
         SELECT tenancy.add_member('{a}', 'lead', 'admin');",
        a = f.a
    ))
    .unwrap();
    let mut op = connect(OPERATOR);
    assert_not_privileged(&mut op);
    // The tenant's default_roles are ["member"] (the fixture's): more than viewer.
    let doc: serde_json::Value = op
        .query_one("SELECT tenancy.export_config($1)::text", &[&f.a])
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
        .unwrap();
    let mut want = doc.clone();
    want["tenants"][0]["members"]
        .as_array_mut()
        .unwrap()
        .retain(|m| m["subject"] != "intern");
    let risk: String = op
        .query_one(
            "SELECT risk FROM tenancy.plan_config($1::text::jsonb) WHERE action = 'remove_member'",
            &[&want.to_string()],
        )
        .unwrap()
        .get(0);
    assert_eq!(risk, "widening");
    let e = expect_err(
        &mut op,
        &format!(
            "SELECT tenancy.remove_member('{}', 'intern', 'viewer')",
            f.a
        ),
        &["42501"],
    );
    assert!(e.contains("default_roles"), "{e}");
    expect_err(
        &mut op,
        &format!("SELECT tenancy.drop_role('{}', 'auditor')", f.a),
        &["42501"],
    );
    // Narrowing stays an operator's: an admin's last membership (member gives no more).
    op.execute("SELECT tenancy.remove_member($1, 'lead', 'admin')", &[&f.a])
        .unwrap_or_else(|e| panic!("remove_member of an admin: {}", message(&e)));
}

#[test]
fn apply_config_runs_no_operator_another_role_put_on_the_callers_search_path() {
    // Found by an attacker's pass: apply_config's own SQL compared regclass values with an
    // unqualified `=`, which the caller's search_path resolved, and pg_catalog has no exact
    // match for regclass: a role that could create in a schema on that path ran its own code
    // as the operator (or superuser) applying the document.
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let db = OwnDatabase::new("gv_path", true);
    let mut su = db.connect("postgres");
    su.batch_execute(ROUND_TRIP_SCHEMA).unwrap();
    su.batch_execute(&format!(
        "SELECT tenancy.protect('public.gv_docs');
         CREATE SCHEMA gv_trap;
         GRANT CREATE, USAGE ON SCHEMA gv_trap TO {APP};
         GRANT USAGE ON SCHEMA gv_trap TO PUBLIC;"
    ))
    .unwrap();
    let mut app = db.connect(APP);
    assert_not_privileged(&mut app);
    for (left, right) in [
        ("regclass", "regclass"),
        ("oid", "oid"),
        ("text", "text"),
        ("name", "text"),
        ("boolean", "boolean"),
    ] {
        let f = format!("gv_trap.trap_{}_{}", left, right);
        app.batch_execute(&format!(
            "CREATE FUNCTION {f}(a {left}, b {right}) RETURNS boolean LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'gv_trap ran as %', current_user; END $$;
             CREATE OPERATOR gv_trap.= (LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = {f});"
        ))
        .unwrap();
    }
    // The operator's document: protect the partitioned table (its partitions are protected
    // already by then, so each is protected only where it is left), unprotect gv_docs.
    let mut op = db.connect(OPERATOR);
    op.batch_execute("BEGIN; SELECT tenancy.protect('public.gv_parts');")
        .unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&export_of(&mut op)).unwrap();
    op.batch_execute("ROLLBACK").unwrap();
    doc["protected_tables"]
        .as_array_mut()
        .unwrap()
        .retain(|t| t["table"] != "public.gv_docs");
    op.batch_execute("SET search_path = gv_trap, pg_catalog, public")
        .unwrap();
    let applied = apply(
        &mut op,
        &doc.to_string(),
        &["safe", "narrowing", "destructive"],
    )
    .unwrap_or_else(|e| panic!("apply_config: {}", message(&e)));
    assert!(
        applied.iter().any(|(a, _, _)| a == "unprotect"),
        "{applied:?}"
    );
    assert!(
        applied.iter().any(|(a, _, _)| a == "protect"),
        "{applied:?}"
    );
    let protected: Vec<String> = su
        .query(
            "SELECT \"table\"::text FROM tenancy.protected_tables ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        protected,
        ["gv_parts", "gv_parts_0", "gv_parts_1"],
        "{protected:?}"
    );
}

#[test]
fn an_operator_cannot_widen_by_removing_one_of_a_roles_two_mappings() {
    // Found by an attacker's pass: a role mapped to one tenant is bound to it without a token,
    // so removing one of a role's two mappings gave it the other tenant's rows tokenless; it
    // was labelled narrowing and allowed to an operator after the tenant had an admin.
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let db = OwnDatabase::new("gv_unmap", true);
    let mut su = db.connect("postgres");
    let f = Fixture::on(&mut su);
    let shared = ident("gv_shared");
    su.batch_execute(&format!(
        "CREATE ROLE {shared} LOGIN NOSUPERUSER NOBYPASSRLS;
         SELECT tenancy.map_role('{shared}', '{a}', '{{member}}');
         SELECT tenancy.map_role('{shared}', '{b}', '{{member}}');
         SELECT tenancy.add_member('{b}', 'bob', 'admin');",
        a = f.a,
        b = f.b
    ))
    .unwrap();
    let mut op = db.connect(OPERATOR);
    assert_not_privileged(&mut op);
    let doc = serde_json::json!({"version": 1, "tenants": [{"slug": f.a, "mappings": []}]});
    let planned: Vec<(String, String, String)> = op
        .query(
            "SELECT action, detail, risk FROM tenancy.plan_config($1::text::jsonb)",
            &[&doc.to_string()],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(planned.len(), 1, "{planned:?}");
    assert_eq!(planned[0].0, "unmap_role");
    assert_eq!(planned[0].2, "widening", "{planned:?}");
    let e = apply(&mut op, &doc.to_string(), &["safe", "narrowing"]).unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    // Allowed as a widening, or called directly: refused, since the tenant left has an admin.
    let e = apply(
        &mut op,
        &doc.to_string(),
        &["safe", "narrowing", "widening"],
    )
    .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    expect_err(
        &mut op,
        &format!("SELECT tenancy.unmap_role('{shared}', '{}')", f.a),
        &["42501"],
    );
    // Nothing changed: the role still needs a token.
    let mut c = db.connect(&shared);
    assert!(bound_tenant(&mut c).is_err(), "bound without a token");
    let n: i64 = su
        .query_one(
            &format!("SELECT count(*) FROM tenancy.role_mapping WHERE role = '{shared}'::regrole"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    drop(c);

    // Found by a review of that fix: the same end reached in steps. Through a throwaway
    // tenant: map there (no admin), remove the first mapping (two left), then decommission the
    // throwaway, whose mappings go with it: refused.
    op.batch_execute(&format!(
        "SELECT tenancy.create_tenant('gv-junk');
         SELECT tenancy.map_role('{shared}', 'gv-junk', '{{member}}');
         SELECT tenancy.unmap_role('{shared}', '{}');",
        f.a
    ))
    .unwrap();
    expect_err(
        &mut op,
        "SELECT tenancy.decommission_tenant('gv-junk', 'gv-junk')",
        &["42501"],
    );
    // Two removals in concurrent transactions, each leaving two mappings: the second waits for
    // the first and is refused.
    op.batch_execute(&format!(
        "SELECT tenancy.create_tenant('gv-third');
         SELECT tenancy.map_role('{shared}', 'gv-third', '{{member}}');"
    ))
    .unwrap();
    op.batch_execute(&format!(
        "BEGIN; SELECT tenancy.unmap_role('{shared}', 'gv-junk');"
    ))
    .unwrap();
    let (dbname, role) = (db.name.clone(), shared.clone());
    let second = std::thread::spawn(move || {
        let mut cfg = config(OPERATOR);
        cfg.dbname(&dbname);
        let mut op2 = cfg.connect(postgres::NoTls).unwrap();
        op2.batch_execute(&format!("SELECT tenancy.unmap_role('{role}', 'gv-third')"))
            .map_err(|e| sqlstate(&e))
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    op.batch_execute("COMMIT").unwrap();
    assert_eq!(second.join().unwrap(), Err("42501".to_string()));
    // A document removing two of a role's three mappings leaves it one: both removals are
    // widenings, though each alone would leave two.
    let three = ident("gv_three");
    su.batch_execute(&format!(
        "CREATE ROLE {three} LOGIN NOSUPERUSER NOBYPASSRLS;
         SELECT tenancy.create_tenant('gv-x'); SELECT tenancy.create_tenant('gv-y'); SELECT tenancy.create_tenant('gv-z');
         SELECT tenancy.map_role('{three}', 'gv-x', '{{member}}');
         SELECT tenancy.map_role('{three}', 'gv-y', '{{member}}');
         SELECT tenancy.map_role('{three}', 'gv-z', '{{member}}');"
    ))
    .unwrap();
    let doc = serde_json::json!({"version": 1, "tenants": [
        {"slug": "gv-x", "mappings": []}, {"slug": "gv-y", "mappings": []}]});
    let risks: Vec<(String, String)> = op
        .query(
            "SELECT action, risk FROM tenancy.plan_config($1::text::jsonb)",
            &[&doc.to_string()],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        risks,
        [
            ("unmap_role".to_string(), "widening".to_string()),
            ("unmap_role".to_string(), "widening".to_string())
        ],
        "{risks:?}"
    );
    su.batch_execute(&format!("DROP ROLE IF EXISTS {three}"))
        .ok();
    su.batch_execute(&format!("DROP ROLE IF EXISTS {shared}"))
        .ok();
}

#[test]
fn a_tenants_audit_exclusions_are_exported_and_their_drift_is_left_to_its_admin() {
    // What a tenant's trail leaves out is configuration too: exported, and a document that
    // differs is planned (keeping more out is destructive), flagged by assert_clean, and left
    // to the tenant's admin by apply_config (an operator cannot decide it).
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (f, mut c) = two_tenants();
    f.seat_admin(&f.a, "boss");
    begin_bound_as(&mut c, &f, &f.a, "boss");
    c.batch_execute("SELECT tenancy.audit_exclude('public.it_customers', '{name}')")
        .unwrap();
    c.batch_execute("COMMIT").unwrap();
    let mut op = connect(OPERATOR);
    assert_not_privileged(&mut op);
    let exported: String = op
        .query_one("SELECT tenancy.export_config($1)::text", &[&f.a])
        .unwrap()
        .get(0);
    let mut doc: serde_json::Value = serde_json::from_str(&exported).unwrap();
    assert_eq!(
        doc["tenants"][0]["audit_exclusions"],
        serde_json::json!([{"table": "public.it_customers", "columns": ["name"]}]),
        "{exported}"
    );
    let plan = |op: &mut postgres::Client, doc: &serde_json::Value| -> Vec<(String, String)> {
        op.query(
            "SELECT action, risk FROM tenancy.plan_config($1::text::jsonb)",
            &[&doc.to_string()],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    };
    assert!(plan(&mut op, &doc).is_empty());
    // Keeping one more column out: destructive; recording every column again: safe.
    doc["tenants"][0]["audit_exclusions"][0]["columns"] = serde_json::json!(["id_extra", "name"]);
    assert_eq!(
        plan(&mut op, &doc),
        [("audit_exclude".to_string(), "destructive".to_string())]
    );
    doc["tenants"][0]["audit_exclusions"] = serde_json::json!([]);
    assert_eq!(
        plan(&mut op, &doc),
        [("audit_exclude".to_string(), "safe".to_string())]
    );
    // assert_clean flags the drift; apply_config leaves it to the tenant's admin and changes
    // nothing.
    let e = op
        .execute(
            "SELECT tenancy.assert_clean($1::text::jsonb)",
            &[&doc.to_string()],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000");
    assert!(message(&e).contains("audit_exclude"), "{}", message(&e));
    let applied = apply(&mut op, &doc.to_string(), &["safe", "narrowing"]).unwrap();
    assert_eq!(applied.len(), 1, "{applied:?}");
    assert!(
        applied[0].2.starts_with("left for the tenant's admin")
            && applied[0]
                .2
                .contains("tenancy.audit_exclude('public.it_customers', '{}')"),
        "{applied:?}"
    );
    let still: String = op
        .query_one("SELECT tenancy.export_config($1)::text", &[&f.a])
        .unwrap()
        .get(0);
    assert_eq!(still, exported);
}

#[test]
fn a_document_cannot_hide_a_change_behind_a_member_named_like_another() {
    // Found by an attacker's pass: members were compared by "<subject> as <role>", so a
    // document naming subject `alice` with role `bob as viewer` was taken for the member
    // `alice as bob` (role viewer): the plan hid that entry and labelled the removal of
    // alice's viewer membership narrowing, which apply_config made by default, leaving alice
    // with the tenant's default_roles.
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut su = superuser();
    let slug = unique("nob");
    su.batch_execute(&format!(
        "SELECT tenancy.create_tenant('{slug}', settings => '{{\"default_roles\": [\"member\"]}}'); \
         SELECT tenancy.add_member('{slug}', 'alice', 'viewer'); \
         SELECT tenancy.add_member('{slug}', 'alice as bob', 'viewer')"
    ))
    .unwrap();
    let mut op = connect(OPERATOR);
    assert_not_privileged(&mut op);
    let doc = serde_json::json!({"version": 1, "tenants": [{"slug": slug,
        "members": [{"subject": "alice", "role": "bob as viewer"}]}]})
    .to_string();
    let planned: Vec<(String, String, String)> = op
        .query(
            "SELECT action, detail, risk FROM tenancy.plan_config($1::text::jsonb)",
            &[&doc],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert!(
        planned
            .iter()
            .any(|(a, d, r)| a == "add_member" && d == "alice as bob as viewer" && r == "widening"),
        "{planned:?}"
    );
    let e = apply(&mut op, &doc, &["safe", "narrowing"]).unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{}", message(&e));
    let members: i64 = su
        .query_one(
            "SELECT count(*) FROM tenancy.member m JOIN tenancy.tenant t ON t.id = m.tenant_id WHERE t.slug = $1",
            &[&slug],
        )
        .unwrap()
        .get(0);
    assert_eq!(members, 2, "apply_config changed the members");
}

#[test]
fn a_tenants_deep_setting_cannot_stop_the_platforms_configuration_documents() {
    // Found by an attacker's pass: a tenant admin set a value nested 126 levels deep, and
    // export_config, plan_config, apply_config and assert_clean failed for every tenant
    // (serde_json's recursion limit, three levels further down in the document).
    let f = Fixture::new();
    f.seat_admin(&f.a, "boss");
    let mut admin = f.session_as(&f.a, "boss");
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let e = admin
        .execute(
            &format!(
                "SELECT tenancy.set_setting($1, 'deep', '{}'::jsonb)",
                deep(126)
            ),
            &[&f.a],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22023", "{}", message(&e));
    admin.batch_execute("ROLLBACK; BEGIN").unwrap();
    bind(&mut admin, &f.token(&f.a, "boss"));
    admin
        .execute(
            &format!(
                "SELECT tenancy.set_setting($1, 'shallow', '{}'::jsonb)",
                deep(30)
            ),
            &[&f.a],
        )
        .unwrap();
    admin.batch_execute("COMMIT").unwrap();
    let mut op = connect(OPERATOR);
    assert_not_privileged(&mut op);
    op.query_one("SELECT tenancy.export_config()", &[])
        .unwrap_or_else(|e| panic!("export_config(): {}", message(&e)));
}

#[test]
fn a_document_may_spell_a_tables_name_as_postgresql_reads_it() {
    // A protected table named `PUBLIC."it_customers"` in a document is the export's
    // `public.it_customers`: the plan showed it unprotected (destructive) and protected anew,
    // and apply_config then failed on its own order of the two.
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_f, _c) = two_tenants();
    let mut op = connect(OPERATOR);
    assert_not_privileged(&mut op);
    let now = export_of(&mut op);
    assert!(now.contains("\"public.it_customers\""), "{now}");
    let respelled = now
        .replace("\"public.it_customers\"", r#""PUBLIC.\"it_customers\"""#)
        .replace("\"public.it_orders\"", "\"Public.IT_ORDERS\"");
    assert_ne!(respelled, now);
    // Other tests' tenants change meanwhile (settings, members): only the tables are looked
    // at, and nothing is applied (an apply of this snapshot would undo their changes).
    let plan: Vec<(String, String)> = op
        .query(
            "SELECT action, object FROM tenancy.plan_config($1::text::jsonb) \
              WHERE action IN ('protect', 'unprotect', 'grant', 'revoke', 'audit_exclude')",
            &[&respelled],
        )
        .unwrap_or_else(|e| panic!("plan_config: {}", message(&e)))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(plan, vec![]);
    // A name no table has where apply_config's calls look (pg_catalog, then pg_temp): refused
    // by the plan, with what to write instead.
    let unqualified = now.replace("\"public.it_customers\"", "\"it_customers\"");
    let e = op
        .query(
            "SELECT * FROM tenancy.plan_config($1::text::jsonb)",
            &[&unqualified],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42P01", "{}", message(&e));
    let hint = e
        .as_db_error()
        .and_then(|d| d.hint())
        .unwrap_or_default()
        .to_string();
    assert!(hint.contains("with its schema"), "{hint}");
    // One table twice, in two spellings, saying two things of it: refused (the last won).
    let mut doc: serde_json::Value = serde_json::from_str(&now).unwrap();
    let tables = doc["protected_tables"].as_array_mut().unwrap();
    let mut twice = tables
        .iter()
        .find(|t| t["table"] == "public.it_customers")
        .cloned()
        .unwrap();
    twice["table"] = "PUBLIC.it_customers".into();
    twice["audited"] = false.into();
    tables.push(twice);
    let e = op
        .query(
            "SELECT * FROM tenancy.plan_config($1::text::jsonb)",
            &[&doc.to_string()],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22023", "{}", message(&e));
    assert!(message(&e).contains("twice"), "{}", message(&e));
}
