//! Tenant scale: a change to one tenant reaches every backend as a change of that tenant only
//! (no backend drops or reloads what it knows of the others), a bound session still sees a
//! revocation from its next statement, and the per-backend cache holds at most
//! `tenancy.cache_tenants` tenants and `tenancy.token_cache_size` tokens, least recently used
//! first. Checked from the backend's own counters
//! (`tenancy.cache_stats()`), never from timing.

mod common;
use common::*;
use postgres::Client;

/// One test at a time: three of them count the times another backend dropped its whole cache,
/// which PostgreSQL also makes it do when it falls behind the shared invalidation queue (a
/// reset), as it did in CI while another test here created thousands of tenants.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A backend's cache counters.
fn stats(c: &mut Client) -> serde_json::Value {
    let s: String = c
        .query_one("SELECT tenancy.cache_stats()::text", &[])
        .unwrap()
        .get(0);
    serde_json::from_str(&s).unwrap()
}

fn n(v: &serde_json::Value, key: &str) -> i64 {
    v[key].as_i64().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// A token for `tenant` never used before (its own jti), so that binding it is not answered
/// from the token cache and reads the tenant through the catalog cache.
fn fresh_token(f: &Fixture, tenant: &str) -> String {
    f.token_with(serde_json::json!({
        "tid": tenant, "sub": "scale", "exp": now() + 3600, "iat": now(), "jti": unique("jti"),
    }))
}

/// Bind `tenant` in a transaction of its own.
fn touch(c: &mut Client, f: &Fixture, tenant: &str) {
    c.batch_execute("BEGIN").unwrap();
    c.execute("SELECT tenancy.bind($1)", &[&fresh_token(f, tenant)])
        .unwrap();
    c.batch_execute("COMMIT").unwrap();
}

/// `body` in a transaction of its own bound with `token`, committed.
fn in_bound_tx<T>(c: &mut Client, token: &str, body: impl FnOnce(&mut Client) -> T) -> T {
    c.batch_execute("BEGIN").unwrap();
    c.execute("SELECT tenancy.bind($1)", &[&token]).unwrap();
    let r = body(c);
    c.batch_execute("COMMIT").unwrap();
    r
}

/// Fresh tenants that take a fixture's tokens (default role member).
fn tenants(su: &mut Client, count: usize) -> Vec<String> {
    (0..count)
        .map(|_| {
            let t = unique("sc");
            su.execute(
                "SELECT tenancy.create_tenant($1, settings => '{\"default_roles\": [\"member\"]}')",
                &[&t],
            )
            .unwrap();
            t
        })
        .collect()
}

#[test]
fn a_change_to_one_tenant_drops_only_that_tenant_in_other_backends() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let db = OwnDatabase::new("scale", true);
    let mut su = db.connect("postgres");
    let f = Fixture::on(&mut su);
    let ts = tenants(&mut su, 6);
    let mut c = db.connect(APP);
    for t in &ts {
        touch(&mut c, &f, t);
    }
    let before = stats(&mut c);
    assert!(n(&before, "tenants_cached") >= 6, "{before}");
    // Another backend changes one tenant: a setting, then a member.
    su.execute(
        "SELECT tenancy.set_setting($1, 'plan', '\"gold\"')",
        &[&ts[0]],
    )
    .unwrap();
    su.execute(
        "SELECT tenancy.add_member($1, 'someone', 'member')",
        &[&ts[0]],
    )
    .unwrap();
    // The other tenants bind again without a catalog read; the changed one reads its row.
    for t in &ts[1..] {
        touch(&mut c, &f, t);
    }
    let after_others = stats(&mut c);
    assert!(
        n(&after_others, "targeted_invalidations") > n(&before, "targeted_invalidations"),
        "{before} -> {after_others}"
    );
    assert_eq!(
        n(&after_others, "full_invalidations"),
        n(&before, "full_invalidations"),
        "a tenant's change dropped the whole cache: {before} -> {after_others}"
    );
    assert_eq!(
        n(&after_others, "tenant_loads"),
        n(&before, "tenant_loads"),
        "the unchanged tenants were read again: {before} -> {after_others}"
    );
    touch(&mut c, &f, &ts[0]);
    let after = stats(&mut c);
    assert_eq!(
        n(&after, "tenant_loads"),
        n(&before, "tenant_loads") + 1,
        "the changed tenant was read once: {before} -> {after}"
    );
}

/// A tenant admin's token revocation reaches every backend as a change of its tenant only: a
/// loop of `revoke_token` (a no-op after the first) made every backend of every tenant drop
/// its whole cache each time, and cut another tenant's throughput by a third (an attacker's
/// pass). The revoked token is refused in another backend that had bound it.
#[test]
fn a_token_revocation_in_one_tenant_drops_only_that_tenant_in_other_backends() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let db = OwnDatabase::new("scale", true);
    let mut su = db.connect("postgres");
    let f = Fixture::on(&mut su);
    let ts = tenants(&mut su, 2);
    su.execute("SELECT tenancy.add_member($1, 'adm', 'admin')", &[&ts[1]])
        .unwrap();
    let jti = unique("jti");
    let token = |t: &str| {
        f.token_with(serde_json::json!({
            "tid": t, "sub": "scale", "exp": now() + 3600, "iat": now(), "jti": jti,
        }))
    };
    let mut c = db.connect(APP);
    touch(&mut c, &f, &ts[0]);
    in_bound_tx(&mut c, &token(&ts[1]), |_| ());
    let before = stats(&mut c);
    let mut admin = db.connect(APP);
    for _ in 0..3 {
        in_bound_tx(&mut admin, &f.token(&ts[1], "adm"), |a| {
            a.execute("SELECT tenancy.revoke_token($1)", &[&jti])
                .unwrap();
        });
    }
    touch(&mut c, &f, &ts[0]);
    let after = stats(&mut c);
    assert_eq!(
        n(&after, "full_invalidations"),
        n(&before, "full_invalidations"),
        "a tenant's token revocation dropped the whole cache: {before} -> {after}"
    );
    c.batch_execute("BEGIN").unwrap();
    let e = c
        .execute("SELECT tenancy.bind($1)", &[&token(&ts[1])])
        .unwrap_err();
    assert_eq!(sqlstate(&e), "28000", "{}", message(&e));
    c.batch_execute("ROLLBACK").unwrap();
    // The same token id in the other tenant is not revoked.
    in_bound_tx(&mut c, &token(&ts[0]), |_| ());
}

/// A tenant admin's audit exclusions and a transaction of many changes to its own tenant
/// reach other backends as a change of that tenant only: a loop of `audit_exclude`, and one
/// transaction of 310 `set_setting` calls (each statement counted against the 256
/// announcements a transaction may make), made every backend drop its whole cache (an
/// attacker's pass).
#[test]
fn a_tenant_admins_exclusions_and_many_changes_drop_only_its_tenant_in_other_backends() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let db = OwnDatabase::new("scale", true);
    let mut su = db.connect("postgres");
    let f = Fixture::on(&mut su);
    let ts = tenants(&mut su, 2);
    su.execute("SELECT tenancy.add_member($1, 'adm', 'admin')", &[&ts[1]])
        .unwrap();
    su.batch_execute(&format!(
        "CREATE TABLE docs (tenant_id uuid NOT NULL, id int NOT NULL, body text, PRIMARY KEY (tenant_id, id)); \
         SELECT tenancy.protect('docs'); GRANT SELECT, INSERT ON docs TO {APP}"
    ))
    .unwrap();
    let mut c = db.connect(APP);
    // This backend reads ts[1]'s exclusions (none) with a write of its own first.
    let member = f.token(&ts[1], "scale");
    let write = |c: &mut Client, id: i32| {
        in_bound_tx(c, &member, |c| {
            c.execute(
                "INSERT INTO docs (tenant_id, id, body) VALUES (tenancy.current_tenant(), $1, 'secret')",
                &[&id],
            )
            .unwrap();
        })
    };
    write(&mut c, 1);
    touch(&mut c, &f, &ts[0]);
    let before = stats(&mut c);
    let mut admin = db.connect(APP);
    let adm = f.token(&ts[1], "adm");
    for cols in ["{body}", "{}", "{body}"] {
        in_bound_tx(&mut admin, &adm, |a| {
            a.execute(
                "SELECT tenancy.audit_exclude('docs', $1::text::text[])",
                &[&cols],
            )
            .unwrap();
        });
    }
    in_bound_tx(&mut admin, &adm, |a| {
        for i in 0..310 {
            a.execute(
                "SELECT tenancy.set_setting($1, 'k', to_jsonb($2::int))",
                &[&ts[1], &i],
            )
            .unwrap();
        }
    });
    touch(&mut c, &f, &ts[0]);
    let after = stats(&mut c);
    assert_eq!(
        n(&after, "full_invalidations"),
        n(&before, "full_invalidations"),
        "a tenant's admin dropped every backend's whole cache: {before} -> {after}"
    );
    assert_eq!(
        n(&after, "tenant_loads"),
        n(&before, "tenant_loads"),
        "the other tenant was read again: {before} -> {after}"
    );
    // The exclusion set last holds in this backend's next write of the tenant.
    write(&mut c, 2);
    let kept: bool = su
        .query_one(
            "SELECT new_row ? 'body' FROM tenancy.audit_log WHERE table_name LIKE '%docs' AND op = 'INSERT' \
              AND new_row->>'id' = '2'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!kept, "the exclusion did not reach the other backend");
    // The last value set is what the tenant's next session reads.
    let k: String = in_bound_tx(&mut c, &member, |c| {
        c.query_one("SELECT tenancy.setting('k')::text", &[])
            .unwrap()
            .get(0)
    });
    assert_eq!(k, "309");
}

#[test]
fn a_bound_session_sees_a_change_to_its_tenant_from_its_next_statement() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let db = OwnDatabase::new("scale", true);
    let mut su = db.connect("postgres");
    let f = Fixture::on(&mut su);
    let ts = tenants(&mut su, 2);
    let mut c = db.connect(APP);
    c.batch_execute("BEGIN").unwrap();
    c.execute("SELECT tenancy.bind($1)", &[&f.token(&ts[0], "scale")])
        .unwrap();
    assert!(bound_tenant(&mut c).is_ok());
    // A change to another tenant leaves the binding as it is.
    su.execute("SELECT tenancy.suspend_tenant($1, 'test')", &[&ts[1]])
        .unwrap();
    assert!(bound_tenant(&mut c).is_ok());
    // Its own tenant suspended: the next statement is refused.
    su.execute("SELECT tenancy.suspend_tenant($1, 'test')", &[&ts[0]])
        .unwrap();
    let err = bound_tenant(&mut c).unwrap_err();
    assert_eq!(
        err, "42501",
        "the suspension did not reach the bound session"
    );
    let _ = c.batch_execute("ROLLBACK");
    // The subject's roles, through a session-scoped binding: a revoked subject's next
    // statement is refused too.
    let mut s = db.connect(APP);
    // ts[1] is suspended.
    assert!(s
        .execute(
            "SELECT tenancy.bind($1, 'session')",
            &[&f.token(&ts[1], "scale")]
        )
        .is_err());
    su.execute("SELECT tenancy.resume_tenant($1)", &[&ts[1]])
        .unwrap();
    s.execute(
        "SELECT tenancy.bind($1, 'session')",
        &[&f.token(&ts[1], "scale")],
    )
    .unwrap();
    assert!(bound_tenant(&mut s).is_ok());
    su.execute("SELECT tenancy.revoke_subject($1, 'scale')", &[&ts[1]])
        .unwrap();
    // A binding that ends in the middle of a session is 42501.
    let err = bound_tenant(&mut s).unwrap_err();
    assert_eq!(
        err, "42501",
        "the subject's revocation did not reach the bound session"
    );
}

/// A database of its own with its superuser connection and fixture, and a NOSUPERUSER login
/// role that has one setting of its own; [`RoleSetup::finish`] drops the role after the
/// database.
struct RoleSetup {
    db: OwnDatabase,
    su: Client,
    f: Fixture,
    role: String,
}

impl RoleSetup {
    fn new(setting: &str) -> RoleSetup {
        let db = OwnDatabase::new("scale", true);
        let mut su = db.connect("postgres");
        let f = Fixture::on(&mut su);
        let role = ident("scale_app");
        su.batch_execute(&format!(
            "CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS; \
             GRANT USAGE ON SCHEMA tenancy TO {role}; \
             ALTER ROLE {role} SET {setting}"
        ))
        .unwrap();
        RoleSetup { db, su, f, role }
    }

    fn connect(&self) -> Client {
        self.db.connect(&self.role)
    }

    fn finish(self) {
        let RoleSetup { db, su, role, .. } = self;
        drop(su);
        drop(db);
        superuser()
            .batch_execute(&format!("DROP ROLE {role}"))
            .unwrap();
    }
}

#[test]
fn the_cache_holds_at_most_cache_tenants_tenants() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut setup = RoleSetup::new("tenancy.cache_tenants = 16");
    let ts = tenants(&mut setup.su, 40);
    let f = &setup.f;
    let mut c = setup.connect();
    for t in &ts {
        touch(&mut c, f, t);
    }
    let s = stats(&mut c);
    assert_eq!(n(&s, "tenants_capacity"), 16, "{s}");
    assert!(n(&s, "tenants_cached") <= 16, "{s}");
    assert!(n(&s, "tenants_cached") >= 1, "{s}");
    // The most recently used tenant is still there: binding it again reads nothing.
    let loads = n(&s, "tenant_loads");
    touch(&mut c, f, &ts[39]);
    assert_eq!(n(&stats(&mut c), "tenant_loads"), loads);
    // The least recently used was dropped: binding it reads its row again.
    touch(&mut c, f, &ts[0]);
    assert_eq!(n(&stats(&mut c), "tenant_loads"), loads + 1);
    drop(c);
    setup.finish();
}

#[test]
fn the_token_cache_holds_at_most_token_cache_size_tokens_least_recently_used_first() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut setup = RoleSetup::new("tenancy.token_cache_size = 8");
    let t = &tenants(&mut setup.su, 1)[0];
    let tokens: Vec<String> = (0..12).map(|_| fresh_token(&setup.f, t)).collect();
    let mut c = setup.connect();
    let bind = |c: &mut Client, tok: &str| {
        c.batch_execute("BEGIN").unwrap();
        c.execute("SELECT tenancy.bind($1)", &[&tok]).unwrap();
        c.batch_execute("COMMIT").unwrap();
    };
    let verified = |c: &mut Client| n(&stats(c), "tokens_verified");
    // Fill the cache: tokens 0..8.
    for tok in &tokens[..8] {
        bind(&mut c, tok);
    }
    let s = stats(&mut c);
    assert_eq!(n(&s, "tokens_capacity"), 8, "{s}");
    assert_eq!(n(&s, "tokens_cached"), 8, "{s}");
    let base = n(&s, "tokens_verified");
    // Token 0 used again: found, and now the most recently used.
    bind(&mut c, &tokens[0]);
    assert_eq!(verified(&mut c), base);
    // Token 8 makes room by dropping the least recently used, token 1, not token 0.
    bind(&mut c, &tokens[8]);
    assert_eq!(verified(&mut c), base + 1);
    bind(&mut c, &tokens[0]);
    assert_eq!(
        verified(&mut c),
        base + 1,
        "token 0 was used recently and stays"
    );
    bind(&mut c, &tokens[1]);
    assert_eq!(
        verified(&mut c),
        base + 2,
        "token 1 was the least recently used and went"
    );
    // Whatever is bound, the cache never holds more than its bound.
    for tok in &tokens {
        bind(&mut c, tok);
    }
    let s = stats(&mut c);
    assert_eq!(n(&s, "tokens_cached"), 8, "{s}");
    drop(c);
    setup.finish();
}

/// Bulk onboarding: create_tenants makes every tenant as create_tenant would (roles, grants, an
/// audit key, a record in its own chain) in one call, all or nothing, and only for operators.
#[test]
fn create_tenants_onboards_many_tenants_at_once_all_or_nothing() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let db = OwnDatabase::new("scale", true);
    let mut su = db.connect("postgres");
    let f = Fixture::on(&mut su);
    let p = unique("bulk");
    let list = |from: i32, to: i32| -> String {
        let v: Vec<serde_json::Value> = (from..=to)
            .map(|i| serde_json::json!({"slug": format!("{p}-{i}"), "settings": {"default_roles": ["member"]}}))
            .collect();
        serde_json::Value::Array(v).to_string()
    };
    let rows = su
        .query(
            "SELECT slug, id::text FROM tenancy.create_tenants($1::text::jsonb)",
            &[&list(1, 500)],
        )
        .unwrap();
    assert_eq!(rows.len(), 500);
    // In the order given, each with the id the catalog has.
    for (i, r) in rows.iter().enumerate() {
        let slug: String = r.get(0);
        assert_eq!(slug, format!("{p}-{}", i + 1));
        let id: String = su
            .query_one(
                "SELECT id::text FROM tenancy.tenants WHERE slug = $1",
                &[&slug],
            )
            .unwrap()
            .get(0);
        assert_eq!(id, r.get::<_, String>(1));
    }
    // As create_tenant makes them: the built-in roles and grants, and a bind works.
    let same: bool = su
        .query_one(
            "SELECT (SELECT array_agg(role ORDER BY role) FROM tenancy.tenant_role WHERE tenant_id = a.id) \
                  = (SELECT array_agg(role ORDER BY role) FROM tenancy.tenant_role WHERE tenant_id = b.id) \
                AND (SELECT count(*) FROM tenancy.role_privilege WHERE tenant_id = a.id) \
                  = (SELECT count(*) FROM tenancy.role_privilege WHERE tenant_id = b.id) \
               FROM tenancy.tenants a, tenancy.tenants b WHERE a.slug = $1 AND b.slug = $2",
            &[&format!("{p}-7"), &f.a],
        )
        .unwrap()
        .get(0);
    assert!(same, "a bulk tenant differs from one create_tenant made");
    let mut c = db.connect(APP);
    touch(&mut c, &f, &format!("{p}-7"));
    // Audited: a record in each tenant's chain, and the chains verify.
    let bad: i64 = su
        .query_one(
            "SELECT count(*) FROM tenancy.tenants t CROSS JOIN LATERAL tenancy.audit_verify(t.slug) v \
              WHERE t.slug LIKE $1 AND NOT (v.ok AND v.records >= 1)",
            &[&format!("{p}-%")],
        )
        .unwrap()
        .get(0);
    assert_eq!(bad, 0);
    // All or nothing: one existing slug, or one given twice, creates none of the others.
    for (json, state) in [
        (
            list(501, 510).replace(&format!("{p}-510"), &format!("{p}-3")),
            "42710",
        ),
        (
            list(511, 520).replace(&format!("{p}-520"), &format!("{p}-511")),
            "42710",
        ),
        ("{\"slug\": \"x\"}".to_string(), "22023"),
        (
            format!("[{{\"slug\": \"{p}-521\", \"colour\": 1}}]"),
            "22023",
        ),
        ("[{\"slug\": \"Not A Slug\"}]".to_string(), "22023"),
    ] {
        expect_err(
            &mut su,
            &format!("SELECT count(*) FROM tenancy.create_tenants('{json}')"),
            &[state],
        );
    }
    let left: i64 = su
        .query_one(
            "SELECT count(*) FROM tenancy.tenants WHERE slug LIKE $1",
            &[&format!("{p}-%")],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 500, "a refused call created tenants");
    // Operators only.
    let mut app = db.connect(APP);
    expect_err(
        &mut app,
        &format!(
            "SELECT count(*) FROM tenancy.create_tenants('{}')",
            list(600, 601)
        ),
        &["42501"],
    );
}
