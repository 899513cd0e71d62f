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
        Bouncer::start_with(2, "")
    }

    /// `reset`: the server_reset_query, run after every transaction when not empty.
    fn start_with(pool_size: u32, reset: &str) -> Bouncer {
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
                 default_pool_size = {pool_size}\nmax_client_conn = 50\nserver_reset_query = {reset}\n\
                 server_reset_query_always = {always}\n\
                 ignore_startup_parameters = extra_float_digits,options\n\
                 logfile = {log}\npidfile = {pid}\n",
                host = std::env::var("PGHOST").unwrap(),
                pgport = std::env::var("PGPORT").unwrap(),
                users = users.display(),
                log = dir.join("pgbouncer.log").display(),
                pid = dir.join("pgbouncer.pid").display(),
                always = if reset.is_empty() { 0 } else { 1 },
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

/// Session state that outlives a transaction on a pooled server connection: pg_tenancy refuses
/// the forms that would capture or keep tenant rows by themselves (temp relations shadowing a
/// protected table, WITH HOLD cursors); a temp table the application fills itself stays on
/// the server connection unless PgBouncer resets it: the README asks for
/// `server_reset_query = DISCARD ALL` with `server_reset_query_always = 1`.
#[test]
fn session_state_left_on_a_pooled_connection_does_not_reach_the_next_tenant() {
    let f = Fixture::new();
    let simple_rows = |c: &mut postgres::Client,
                       sql: &str|
     -> Result<Vec<String>, postgres::Error> {
        Ok(c.simple_query(sql)?
            .into_iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_string()),
                _ => None,
            })
            .collect())
    };
    for (reset, leftover_visible) in [("", true), ("DISCARD ALL", false)] {
        let bouncer = Bouncer::start_with(1, reset);
        let mut x = bouncer.connect(APP);
        let mut y = bouncer.connect(APP);
        let bind_a = format!("BEGIN; SELECT tenancy.bind('{}');", f.token(&f.a, "x"));
        for refused in [
            "CREATE TEMP TABLE it_customers (tenant_id uuid, id int, name text)",
            "DECLARE keep CURSOR WITH HOLD FOR SELECT name FROM it_customers",
        ] {
            let e = x.simple_query(&format!("{bind_a} {refused}")).unwrap_err();
            assert!(
                ["42501", "0A000"].contains(&sqlstate(&e).as_str()),
                "{refused}: {e}"
            );
            x.simple_query("ROLLBACK").unwrap();
        }
        x.simple_query(&format!(
            "{bind_a} INSERT INTO it_customers (id, name) VALUES (1, '{}-secret-1') ON CONFLICT DO NOTHING; \
             CREATE TEMP TABLE scratch AS SELECT name FROM it_customers; COMMIT",
            f.a
        ))
        .unwrap();
        let pid_x = simple_rows(&mut x, "SELECT pg_backend_pid()::text").unwrap();
        let pid_y = simple_rows(&mut y, "SELECT pg_backend_pid()::text").unwrap();
        assert_eq!(
            pid_x, pid_y,
            "a pool of one must reuse the server connection"
        );
        let seen = simple_rows(&mut y, "SELECT name FROM pg_temp.scratch");
        if leftover_visible {
            // Control: without a reset query the channel is real; this is why the README
            // asks for one.
            assert_eq!(seen.unwrap(), vec![format!("{}-secret-1", f.a)]);
        } else {
            assert_eq!(sqlstate(&seen.unwrap_err()), "42P01");
        }
    }
}
