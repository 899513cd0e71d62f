//! Shared helpers: connections as the test roles, token signing, fixtures.
//!
//! The cluster is started by scripts/test.sh, which exports PGHOST (socket directory), PGPORT
//! and TENANCY_IT_DB. Isolation is always checked as `tenancy_app`, a NOSUPERUSER NOBYPASSRLS
//! login role: a superuser bypasses row security and would prove nothing.
#![allow(dead_code)]

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use postgres::{Client, NoTls};
use std::sync::atomic::{AtomicU32, Ordering};

pub const APP: &str = "tenancy_app";
pub const APP2: &str = "tenancy_app2";
pub const OPERATOR: &str = "tenancy_op1";
/// A NOSUPERUSER login member of tenancy_key_admin (registers signing keys).
pub const KEY_ADMIN: &str = "tenancy_keyadm1";
pub const HS_SECRET: &str = "integration-secret-0123456789abcdef0123456789";

pub fn config(user: &str) -> postgres::Config {
    let mut c = postgres::Config::new();
    c.host(&std::env::var("PGHOST").expect("PGHOST: run through scripts/test.sh"));
    c.port(std::env::var("PGPORT").expect("PGPORT").parse().unwrap());
    c.dbname(&std::env::var("TENANCY_IT_DB").unwrap_or_else(|_| "tenancy_it".into()));
    c.user(user);
    c
}

pub fn connect(user: &str) -> Client {
    config(user)
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
}

/// A database of its own, dropped (with its connections) when the value is: for a test whose
/// counts must not see the other tests' changes, or whose many tenants must not burden them.
pub struct OwnDatabase {
    pub name: String,
    /// On the cluster that preloads pg_tenancy.
    pub preloaded: bool,
}

impl OwnDatabase {
    /// A new database, named after `prefix`, with the extension when `extension`.
    pub fn new(prefix: &str, extension: bool) -> OwnDatabase {
        Self::on(prefix, extension, false)
    }

    /// The same on the cluster that preloads pg_tenancy.
    pub fn preloaded(prefix: &str, extension: bool) -> OwnDatabase {
        Self::on(prefix, extension, true)
    }

    fn on(prefix: &str, extension: bool, preloaded: bool) -> OwnDatabase {
        let name = ident(prefix);
        let mut su = if preloaded {
            connect_preloaded("postgres")
        } else {
            superuser()
        };
        su.batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let db = OwnDatabase { name, preloaded };
        if extension {
            db.connect("postgres")
                .batch_execute("CREATE EXTENSION pg_tenancy")
                .unwrap();
        }
        db
    }

    pub fn connect(&self, user: &str) -> Client {
        let mut cfg = if self.preloaded {
            preloaded_config(user)
        } else {
            config(user)
        };
        cfg.dbname(&self.name);
        cfg.connect(NoTls)
            .unwrap_or_else(|e| panic!("connect to {} as {user}: {e}", self.name))
    }
}

impl Drop for OwnDatabase {
    fn drop(&mut self) {
        let drop = format!("DROP DATABASE {} WITH (FORCE)", self.name);
        let _ = if self.preloaded {
            connect_preloaded("postgres").batch_execute(&drop)
        } else {
            superuser().batch_execute(&drop)
        };
    }
}

pub fn superuser() -> Client {
    connect("postgres")
}

/// A connection to the cluster that preloads pg_tenancy (scripts/test.sh starts it with the
/// same database and roles as the main one).
pub fn connect_preloaded(user: &str) -> Client {
    preloaded_config(user)
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("connect to the preloaded cluster as {user}: {e}"))
}

pub fn preloaded_config(user: &str) -> postgres::Config {
    let mut c = postgres::Config::new();
    c.dbname(&std::env::var("TENANCY_IT_DB").unwrap_or_else(|_| "tenancy_it".into()));
    c.user(user);
    c.host(
        &std::env::var("TENANCY_PRELOADED_PGHOST")
            .expect("TENANCY_PRELOADED_PGHOST: run through scripts/test.sh"),
    );
    c.port(
        std::env::var("TENANCY_PRELOADED_PGPORT")
            .expect("TENANCY_PRELOADED_PGPORT")
            .parse()
            .unwrap(),
    );
    c
}

pub fn app() -> Client {
    let mut c = connect(APP);
    assert_not_privileged(&mut c);
    c
}

/// Fail loudly if the role a test relies on could bypass row security.
pub fn assert_not_privileged(c: &mut Client) {
    let row = c
        .query_one(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .unwrap();
    let (sup, bypass): (bool, bool) = (row.get(0), row.get(1));
    assert!(!sup && !bypass, "test role must be NOSUPERUSER NOBYPASSRLS");
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process and call.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// The SQLSTATE of a failed statement.
pub fn sqlstate(e: &postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no sqlstate: {e}"))
}

pub fn message(e: &postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

/// Expect a statement to fail with one of `codes`; returns the error message.
pub fn expect_err(c: &mut Client, sql: &str, codes: &[&str]) -> String {
    match c.batch_execute(sql) {
        Ok(()) => panic!("expected an error from: {sql}"),
        Err(e) => {
            let code = sqlstate(&e);
            assert!(
                codes.contains(&code.as_str()),
                "{sql}: expected SQLSTATE {codes:?}, got {code}: {}",
                message(&e)
            );
            message(&e)
        }
    }
}

/// Expect a statement to be refused with `state` and the machine-readable code `code` (the
/// DETAIL line `pg_tenancy: <code>`); returns the error message.
pub fn expect_refusal(c: &mut Client, sql: &str, state: &str, code: &str) -> String {
    match c.batch_execute(sql) {
        Ok(()) => panic!("expected {state} {code} from: {sql}"),
        Err(e) => {
            assert_refusal(&e, state, code, sql);
            message(&e)
        }
    }
}

/// Assert that `e` (from `what`) is a refusal with `state` and the machine-readable code `code`
/// (the DETAIL line `pg_tenancy: <code>`).
pub fn assert_refusal(e: &postgres::Error, state: &str, code: &str, what: &str) {
    let got = sqlstate(e);
    let detail = e
        .as_db_error()
        .and_then(|d| d.detail())
        .unwrap_or_default()
        .to_string();
    assert!(
        got == state && detail.lines().any(|l| l == format!("pg_tenancy: {code}")),
        "{what}: expected {state} with DETAIL pg_tenancy: {code}, got {got} ({detail:?}): {}",
        message(e)
    );
}

pub fn sign(alg: Algorithm, kid: &str, claims: &serde_json::Value) -> String {
    let key = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            EncodingKey::from_secret(HS_SECRET.as_bytes())
        }
        Algorithm::RS256 => {
            EncodingKey::from_rsa_pem(include_bytes!("../../keys/rsa_private.pem")).unwrap()
        }
        Algorithm::ES256 => {
            EncodingKey::from_ec_pem(include_bytes!("../../keys/ec_private.pem")).unwrap()
        }
        Algorithm::EdDSA => {
            EncodingKey::from_ed_pem(include_bytes!("../../keys/ed_private.pem")).unwrap()
        }
        other => panic!("no test key for {other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

pub const RSA_PUBLIC: &str = include_str!("../../keys/rsa_public.pem");
pub const EC_PUBLIC: &str = include_str!("../../keys/ec_public.pem");
pub const ED_PUBLIC: &str = include_str!("../../keys/ed_public.pem");

/// Two fresh tenants and an HS256 key for them. The tenants opt in to `default_roles`
/// `["member"]`, so a token's subject acts as a member without a membership row (the default,
/// no role, is tested on tenants of their own).
pub struct Fixture {
    pub a: String,
    pub b: String,
    pub a_id: String,
    pub b_id: String,
    pub kid: String,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::on(&mut superuser())
    }

    /// The same, made by the superuser connection `su` (of either cluster).
    pub fn on(su: &mut Client) -> Fixture {
        let a = unique("ta");
        let b = unique("tb");
        let kid = unique("k");
        let create = "SELECT tenancy.create_tenant($1, settings => '{\"default_roles\": [\"member\"]}')::text";
        let a_id: String = su.query_one(create, &[&a]).unwrap().get(0);
        let b_id: String = su.query_one(create, &[&b]).unwrap().get(0);
        su.execute(
            "SELECT tenancy.add_key($1, 'HS256', $2)",
            &[&kid, &HS_SECRET],
        )
        .unwrap();
        Fixture {
            a,
            b,
            a_id,
            b_id,
            kid,
        }
    }

    /// A valid HS256 token for `tenant` and `sub`, valid for an hour.
    pub fn token(&self, tenant: &str, sub: &str) -> String {
        sign(
            Algorithm::HS256,
            &self.kid,
            &serde_json::json!({"tid": tenant, "sub": sub, "exp": now() + 3600, "iat": now()}),
        )
    }

    pub fn token_with(&self, claims: serde_json::Value) -> String {
        sign(Algorithm::HS256, &self.kid, &claims)
    }

    /// Seats `subject` as an admin of `tenant` (a member with the role `admin`), on the main
    /// cluster (for a fixture made by [`Fixture::new`]).
    pub fn seat_admin(&self, tenant: &str, subject: &str) {
        superuser()
            .execute(
                "SELECT tenancy.add_member($1, $2, 'admin')",
                &[&tenant, &subject],
            )
            .unwrap();
    }

    /// A new application session (NOSUPERUSER NOBYPASSRLS, checked) in a transaction bound as
    /// `subject` of `tenant`; the caller ends the transaction.
    pub fn session_as(&self, tenant: &str, subject: &str) -> Client {
        let mut c = app();
        assert_not_privileged(&mut c);
        c.batch_execute("BEGIN").unwrap();
        bind(&mut c, &self.token(tenant, subject));
        c
    }

    /// A new application session (NOSUPERUSER NOBYPASSRLS, checked) bound for the session as
    /// `subject` of `tenant`.
    pub fn session_bound_as(&self, tenant: &str, subject: &str) -> Client {
        let mut c = app();
        assert_not_privileged(&mut c);
        c.execute(
            "SELECT tenancy.bind($1, 'session')",
            &[&self.token(tenant, subject)],
        )
        .unwrap();
        c
    }
}

/// The tenant bound in this session, or the error's SQLSTATE.
pub fn bound_tenant(c: &mut Client) -> Result<String, String> {
    c.query_one("SELECT tenancy.current_tenant()::text", &[])
        .map(|r| r.get::<_, String>(0))
        .map_err(|e| sqlstate(&e))
}

pub fn bind(c: &mut Client, token: &str) {
    c.execute("SELECT tenancy.bind($1)", &[&token]).unwrap();
}

/// Run `body` in one transaction bound to `tenant` (subject "seed"), then commit or roll back.
pub fn bound_tx<T>(
    c: &mut Client,
    f: &Fixture,
    tenant: &str,
    commit: bool,
    body: impl FnOnce(&mut Client) -> T,
) -> T {
    c.batch_execute("BEGIN").unwrap();
    c.execute("SELECT tenancy.bind($1)", &[&f.token(tenant, "seed")])
        .unwrap();
    let r = body(c);
    if commit {
        c.batch_execute("COMMIT").unwrap();
    } else {
        // The body may have ended the transaction itself or left the connection in error.
        let _ = c.batch_execute("ROLLBACK");
    }
    r
}

/// Two fresh tenants with five customers each, named "<slug>-secret-<n>", and an application
/// session (NOSUPERUSER NOBYPASSRLS). Attack tests bind it to tenant A and try to reach B.
pub fn two_tenants() -> (Fixture, Client) {
    let f = Fixture::new();
    let mut c = app();
    for t in [&f.a, &f.b] {
        bound_tx(&mut c, &f, t, true, |c| {
            c.execute(
                "INSERT INTO it_customers (id, name) SELECT g, $1 || '-secret-' || g FROM generate_series(1, 5) g",
                &[t],
            )
            .unwrap();
        });
    }
    (f, c)
}

/// Begin a transaction of `c` bound to `tenant` (subject "attacker"); the caller ends it.
pub fn begin_bound(c: &mut Client, f: &Fixture, tenant: &str) {
    c.batch_execute("BEGIN").unwrap();
    c.execute("SELECT tenancy.bind($1)", &[&f.token(tenant, "attacker")])
        .unwrap();
}

/// The first column of every row, as text.
pub fn texts(c: &mut Client, sql: &str) -> Vec<String> {
    c.query(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", message(&e)))
        .iter()
        .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
        .collect()
}

/// Panic unless every value belongs to tenant `slug` (names are "<slug>-secret-<n>").
pub fn assert_only(values: &[String], slug: &str) {
    let prefix = format!("{slug}-");
    assert!(
        values.iter().all(|v| v.starts_with(&prefix)),
        "values of another tenant reached a session bound to {slug}: {values:?}"
    );
}

/// Panic if any value mentions tenant B's slug or id: a leak, whatever its form.
pub fn assert_no_trace_of(values: &[String], f: &Fixture) {
    for v in values {
        assert!(
            !v.contains(&f.b) && !v.contains(&f.b_id),
            "tenant B's data reached tenant A: {v}"
        );
    }
}

/// A lower-case identifier unique to this call.
pub fn ident(prefix: &str) -> String {
    unique(prefix).replace('-', "_")
}

/// A leaky function `pg_temp.leak(text) RETURNS boolean` (cost near zero, so the planner would
/// like to run it early) that records every value it is called with in the setting `leak.v`
/// (no writes: it also works where writes are not allowed) and returns `returns`.
pub fn install_leak(c: &mut Client, returns: bool) {
    c.batch_execute(&format!(
        "SELECT set_config('leak.v', '', false); \
         CREATE FUNCTION pg_temp.leak(t text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 AS \
         $$ BEGIN PERFORM set_config('leak.v', current_setting('leak.v') || t || chr(10), false); \
         RETURN {returns}; END $$"
    ))
    .unwrap();
}

/// What `pg_temp.leak` recorded (one value a line), then cleared.
pub fn leaked(c: &mut Client) -> Vec<String> {
    let v: String = c
        .query_one("SELECT current_setting('leak.v')", &[])
        .unwrap()
        .get(0);
    c.batch_execute("SELECT set_config('leak.v', '', false)")
        .unwrap();
    v.lines().map(str::to_string).collect()
}

/// Run SQL that changes the ACL of a table shared by the tests (GRANT / REVOKE), one test at a
/// time: two concurrent GRANTs on one relation fail with "tuple concurrently updated". The
/// batch is one implicit transaction, so the lock is held until it commits.
pub fn serialized_grant(su: &mut Client, sql: &str) {
    su.batch_execute(&format!("SELECT pg_advisory_xact_lock(717171); {sql}"))
        .unwrap_or_else(|e| panic!("{sql}: {}", message(&e)));
}

/// Wait until the backend `pid` waits for a lock (at most ten seconds): a race's second step is
/// taken only once the first is waiting, never after a guessed delay.
pub fn until_waiting_for_a_lock(su: &mut postgres::Client, pid: i32) {
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(10) {
        let waiting: bool = su
            .query_one(
                "SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .unwrap()
            .get(0);
        if waiting {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("backend {pid} never waited for a lock");
}
