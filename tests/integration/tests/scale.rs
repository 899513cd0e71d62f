//! Tenant scale: a change to one tenant reaches every backend as a change of that tenant only
//! (no backend drops or reloads what it knows of the others), a bound session still sees a
//! revocation from its next statement, and the per-backend cache holds at most
//! `tenancy.cache_tenants` tenants. Checked from the backend's own counters
//! (`tenancy.cache_stats()`), never from timing.

mod common;
use common::*;
use postgres::Client;

/// A database of its own with the extension, so that no other test's change of keys or
/// mappings (which drops every backend's cache in its database) is counted here; dropped when
/// the value is.
struct Db {
    name: String,
}

impl Db {
    fn new() -> Db {
        let name = ident("scale");
        superuser()
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let db = Db { name };
        db.connect("postgres")
            .batch_execute("CREATE EXTENSION pg_tenancy")
            .unwrap();
        db
    }

    fn connect(&self, user: &str) -> Client {
        let mut cfg = config(user);
        cfg.dbname(&self.name);
        cfg.connect(postgres::NoTls).unwrap()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = superuser().batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.name));
    }
}

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
    let db = Db::new();
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

#[test]
fn a_bound_session_sees_a_change_to_its_tenant_from_its_next_statement() {
    let db = Db::new();
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

#[test]
fn the_cache_holds_at_most_cache_tenants_tenants() {
    let db = Db::new();
    let mut su = db.connect("postgres");
    let f = Fixture::on(&mut su);
    let role = ident("scale_app");
    su.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS; \
         GRANT USAGE ON SCHEMA tenancy TO {role}; \
         ALTER ROLE {role} SET tenancy.cache_tenants = 16"
    ))
    .unwrap();
    let ts = tenants(&mut su, 40);
    let mut c = db.connect(&role);
    for t in &ts {
        touch(&mut c, &f, t);
    }
    let s = stats(&mut c);
    assert_eq!(n(&s, "tenants_capacity"), 16, "{s}");
    assert!(n(&s, "tenants_cached") <= 16, "{s}");
    assert!(n(&s, "tenants_cached") >= 1, "{s}");
    // The most recently used tenant is still there: binding it again reads nothing.
    let loads = n(&s, "tenant_loads");
    touch(&mut c, &f, &ts[39]);
    assert_eq!(n(&stats(&mut c), "tenant_loads"), loads);
    // The least recently used was dropped: binding it reads its row again.
    touch(&mut c, &f, &ts[0]);
    assert_eq!(n(&stats(&mut c), "tenant_loads"), loads + 1);
    drop(c);
    drop(su);
    drop(db);
    superuser()
        .batch_execute(&format!("DROP ROLE {role}"))
        .unwrap();
}
