//! Behind PgBouncer in transaction pooling mode (a small pool shared by clients of different
//! tenants), no client ever sees another client's binding or rows; a session-scoped bind is
//! refused for pooled roles once `tenancy.allow_session_scope` is off for them.

mod common;
use common::*;
use std::io::Write;

struct Bouncer {
    port: u16,
    dir: std::path::PathBuf,
}

impl Bouncer {
    fn start() -> Bouncer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("pgbouncer-{}", unique("b")));
        std::fs::create_dir_all(&dir).unwrap();
        let ini = dir.join("pgbouncer.ini");
        let users = dir.join("users.txt");
        let mut f = std::fs::File::create(&users).unwrap();
        for u in [APP, APP2, "postgres"] {
            writeln!(f, "\"{u}\" \"\"").unwrap();
        }
        std::fs::write(
            &ini,
            format!(
                "[databases]\ntenancy_it = host={host} port={pgport} dbname=tenancy_it\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {users}\npool_mode = transaction\n\
                 default_pool_size = 2\nmax_client_conn = 50\nserver_reset_query =\n\
                 ignore_startup_parameters = extra_float_digits,options\n\
                 logfile = {log}\npidfile = {pid}\n",
                host = std::env::var("PGHOST").unwrap(),
                pgport = std::env::var("PGPORT").unwrap(),
                users = users.display(),
                log = dir.join("pgbouncer.log").display(),
                pid = dir.join("pgbouncer.pid").display(),
            ),
        )
        .unwrap();
        std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap();
        // PgBouncer refuses to run as root.
        let st = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--", "/usr/sbin/pgbouncer", "-d"])
            .arg(&ini)
            .status()
            .unwrap();
        assert!(st.success(), "pgbouncer did not start");
        for _ in 0..50 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Bouncer { port, dir }
    }

    fn connect(&self, user: &str) -> postgres::Client {
        let mut c = postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.port)
            .dbname("tenancy_it")
            .user(user);
        c.connect(postgres::NoTls).unwrap()
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid")) {
            let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        }
    }
}

#[test]
fn interleaved_tenants_on_a_small_pool_never_see_each_other() {
    let f = Fixture::new();
    // Rows of each tenant, written directly.
    let mut c = app();
    for t in [&f.a, &f.b] {
        bound_tx(&mut c, &f, t, true, |c| {
            c.batch_execute("INSERT INTO it_orders (amount) SELECT g FROM generate_series(1, 10) g")
                .unwrap()
        });
    }
    let bouncer = Bouncer::start();
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let tenant = if i % 2 == 0 {
                (f.a.clone(), f.a_id.clone())
            } else {
                (f.b.clone(), f.b_id.clone())
            };
            let tok = f.token(&tenant.0, &format!("client{i}"));
            let port = bouncer.port;
            std::thread::spawn(move || {
                let mut c = {
                    let mut cfg = postgres::Config::new();
                    cfg.host("127.0.0.1")
                        .port(port)
                        .dbname("tenancy_it")
                        .user(APP);
                    cfg.connect(postgres::NoTls).unwrap()
                };
                // Simple protocol only: named prepared statements do not survive transaction
                // pooling.
                let rows =
                    |c: &mut postgres::Client, sql: &str| -> Result<Vec<String>, postgres::Error> {
                        Ok(c.simple_query(sql)?
                            .into_iter()
                            .filter_map(|m| match m {
                                postgres::SimpleQueryMessage::Row(r) => {
                                    Some(r.get(0).unwrap_or("").to_string())
                                }
                                _ => None,
                            })
                            .collect())
                    };
                for _ in 0..60 {
                    // A transaction of this client: bind, read, commit.
                    c.simple_query("BEGIN").unwrap();
                    rows(&mut c, &format!("SELECT tenancy.bind('{tok}') IS NOT NULL")).unwrap();
                    let seen =
                        rows(&mut c, "SELECT DISTINCT tenant_id::text FROM it_orders").unwrap();
                    assert_eq!(
                        seen,
                        vec![tenant.1.clone()],
                        "a client saw another tenant's rows"
                    );
                    c.simple_query("COMMIT").unwrap();
                    // The next transaction of this client, maybe on another server connection,
                    // carries no binding (its own or anybody else's).
                    let unbound = rows(&mut c, "SELECT tenancy.binding() IS NULL").unwrap();
                    assert_eq!(
                        unbound,
                        vec!["t"],
                        "a binding outlived its transaction behind the pooler"
                    );
                    let e = rows(&mut c, "SELECT count(*) FROM it_orders").unwrap_err();
                    assert_eq!(sqlstate(&e), "42501");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn session_scope_is_refused_for_pooled_roles() {
    let f = Fixture::new();
    let mut su = superuser();
    su.batch_execute(&format!(
        "ALTER ROLE {APP2} SET tenancy.allow_session_scope = off"
    ))
    .unwrap();
    let bouncer = Bouncer::start();
    let mut c = bouncer.connect(APP2);
    let e = c
        .simple_query(&format!(
            "SELECT tenancy.bind('{}', 'session')",
            f.token(&f.a, "u")
        ))
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    // Transaction scope still works.
    c.simple_query(&format!(
        "BEGIN; SELECT tenancy.bind('{}'); COMMIT",
        f.token(&f.a, "u")
    ))
    .unwrap();
    su.batch_execute(&format!(
        "ALTER ROLE {APP2} RESET tenancy.allow_session_scope"
    ))
    .unwrap();
}
