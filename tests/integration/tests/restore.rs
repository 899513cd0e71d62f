//! Dump and restore: pg_dump of a database with tenants, keys, roles, protected tables and an
//! audit trail, restored with pg_restore into a fresh database of the same cluster and into a
//! freshly initialised cluster (scripts/test.sh starts it and exports TENANCY_FRESH_PGHOST and
//! TENANCY_FRESH_PGPORT), keeps isolation, RBAC, the guard and a verifying trail.

mod common;
use common::*;

/// Where the restored database lives: a socket directory and a port.
#[derive(Clone)]
struct Cluster {
    host: String,
    port: String,
}

impl Cluster {
    fn under_test() -> Cluster {
        Cluster {
            host: std::env::var("PGHOST").unwrap(),
            port: std::env::var("PGPORT").unwrap(),
        }
    }

    fn fresh() -> Cluster {
        let var = |n: &str| {
            std::env::var(n).unwrap_or_else(|_| {
                panic!("{n} is not set: run through scripts/test.sh, which starts a fresh cluster")
            })
        };
        Cluster {
            host: var("TENANCY_FRESH_PGHOST"),
            port: var("TENANCY_FRESH_PGPORT"),
        }
    }

    fn tool(&self, name: &str) -> std::process::Command {
        let mut c = std::process::Command::new(format!("/usr/lib/postgresql/15/bin/{name}"));
        c.args(["-h", &self.host, "-p", &self.port, "-U", "postgres"]);
        c
    }

    fn config(&self, user: &str, db: &str) -> postgres::Config {
        let mut c = postgres::Config::new();
        c.host(&self.host)
            .port(self.port.parse().unwrap())
            .user(user)
            .dbname(db);
        c
    }
}

fn run(mut cmd: std::process::Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dump_and_restore_into_a_fresh_database_keep_isolation_rbac_guard_and_audit() {
    dump_and_restore(Cluster::under_test());
}

#[test]
fn dump_and_restore_into_a_fresh_cluster_keep_isolation_rbac_guard_and_audit() {
    dump_and_restore(Cluster::fresh());
}

fn dump_and_restore(target: Cluster) {
    let here = Cluster::under_test();
    let src = unique("dumpsrc").replace('-', "_");
    let dst = unique("dumpdst").replace('-', "_");
    let mut su = superuser();
    su.batch_execute(&format!("CREATE DATABASE {src}")).unwrap();
    let mut tsu = target
        .config("postgres", "postgres")
        .connect(postgres::NoTls)
        .unwrap();
    if target.port != here.port {
        // Roles are cluster-wide: a fresh cluster gets them first, the documented way
        // (pg_dumpall --roles-only; "role postgres already exists" is expected and harmless).
        let roles = std::env::temp_dir().join(format!("{src}.roles.sql"));
        run({
            let mut c = here.tool("pg_dumpall");
            c.args(["--roles-only", "-f"]).arg(&roles);
            c
        });
        let out = target
            .tool("psql")
            .args(["-q", "-d", "postgres", "-f"])
            .arg(&roles)
            .output()
            .unwrap();
        assert!(out.status.success());
        let _ = std::fs::remove_file(roles);
    }
    tsu.batch_execute(&format!("CREATE DATABASE {dst}"))
        .unwrap();
    let mut cfg = config("postgres");
    cfg.dbname(&src);
    let mut s = cfg.connect(postgres::NoTls).unwrap();
    s.batch_execute(&format!(
        "CREATE EXTENSION pg_tenancy; \
         SELECT tenancy.create_tenant('acme'); SELECT tenancy.create_tenant('globex'); \
         SELECT tenancy.add_key('k', 'HS256', '{HS_SECRET}'); \
         SELECT tenancy.add_member('acme', 'vic', 'viewer'); \
         SELECT tenancy.add_member(t, 'writer', 'member') FROM unnest('{{acme,globex}}'::text[]) t; \
         CREATE TABLE public.docs (tenant_id uuid NOT NULL, id int NOT NULL, body text, PRIMARY KEY (tenant_id, id)); \
         SELECT tenancy.protect('public.docs'); \
         GRANT SELECT, INSERT, UPDATE, DELETE ON public.docs TO {APP}"
    ))
    .unwrap();
    let token = |tenant: &str, sub: &str| {
        sign(
            jsonwebtoken::Algorithm::HS256,
            "k",
            &serde_json::json!({"tid": tenant, "sub": sub, "exp": now() + 600}),
        )
    };
    let mut acfg = config(APP);
    acfg.dbname(&src);
    let mut a = acfg.connect(postgres::NoTls).unwrap();
    for (t, n) in [("acme", 3), ("globex", 2)] {
        a.batch_execute("BEGIN").unwrap();
        a.execute("SELECT tenancy.bind($1)", &[&token(t, "writer")])
            .unwrap();
        a.execute(
            "INSERT INTO docs (id, body) SELECT g, $1 || g FROM generate_series(1, $2::int) g",
            &[&t, &n],
        )
        .unwrap();
        a.batch_execute("COMMIT").unwrap();
    }
    let dump = std::env::temp_dir().join(format!("{src}.dump"));
    run({
        let mut c = here.tool("pg_dump");
        c.args(["-Fc", "-f"]).arg(&dump).arg(&src);
        c
    });
    run({
        let mut c = target.tool("pg_restore");
        c.args(["--exit-on-error", "-d", &dst]).arg(&dump);
        c
    });

    // Isolation and RBAC in the restored database, with the old token.
    let mut a = target.config(APP, &dst).connect(postgres::NoTls).unwrap();
    assert_not_privileged(&mut a);
    expect_err(&mut a, "SELECT * FROM docs", &["42501"]);
    a.batch_execute("BEGIN").unwrap();
    a.execute("SELECT tenancy.bind($1)", &[&token("acme", "writer")])
        .unwrap();
    let bodies: Vec<String> = a
        .query("SELECT body FROM docs ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(bodies, vec!["acme1", "acme2", "acme3"]);
    a.batch_execute("ROLLBACK; BEGIN").unwrap();
    a.execute("SELECT tenancy.bind($1)", &[&token("acme", "vic")])
        .unwrap();
    expect_err(&mut a, "DELETE FROM docs", &["42501"]);
    a.batch_execute("ROLLBACK").unwrap();

    // The guard, verify() and the audit trail.
    let mut d = target
        .config("postgres", &dst)
        .connect(postgres::NoTls)
        .unwrap();
    expect_err(
        &mut d,
        "DROP POLICY tenancy_isolation_select ON public.docs",
        &["42501"],
    );
    let errors: Vec<String> = d
        .query(
            "SELECT rule || ' ' || object FROM tenancy.verify() WHERE severity = 'error'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    let bad: Vec<String> = d
        .query(
            "SELECT coalesce(detail, '') FROM tenancy.audit_verify() WHERE NOT ok",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(bad.is_empty(), "{bad:?}");
    let audited: i64 = d
        .query_one("SELECT count(*) FROM tenancy.audit_log WHERE op = 'INSERT' AND table_name = 'public.docs'", &[])
        .unwrap()
        .get(0);
    assert_eq!(audited, 5);
    // Writes after the restore keep linking into the restored chains.
    a.batch_execute("BEGIN").unwrap();
    a.execute("SELECT tenancy.bind($1)", &[&token("globex", "writer")])
        .unwrap();
    a.batch_execute("INSERT INTO docs (id, body) VALUES (9, 'after restore'); COMMIT")
        .unwrap();
    let ok: bool = d
        .query_one("SELECT ok FROM tenancy.audit_verify('globex')", &[])
        .unwrap()
        .get(0);
    assert!(ok);
    drop(a);
    drop(d);
    drop(s);
    let _ = std::fs::remove_file(dump);
    su.batch_execute(&format!("DROP DATABASE {src} WITH (FORCE)"))
        .unwrap();
    tsu.batch_execute(&format!("DROP DATABASE {dst} WITH (FORCE)"))
        .unwrap();
}
