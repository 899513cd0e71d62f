#!/usr/bin/env python3
"""Tenant scale (issue #31): bind+read throughput as the number of tenants grows, quiet and
under live management churn; a backend's memory after binding many tenants; a new
connection's first bind. The runner behind benches/scale.sh, which starts the cluster.

For each tenant count (ascending; the same database grows between counts):
  - the new tenants are onboarded with one tenancy.create_tenants call (one transaction,
    timed: the onboarding rate), then each gets a token (HS256, default role member) and one
    row in a protected table;
  - quiet and churn runs alternate for --rounds rounds: pgbench, --clients clients as the
    NOSUPERUSER role bench_app, each transaction
        BEGIN; SELECT tenancy.bind((SELECT token FROM sc.tenants WHERE n = :t)) IS NOT NULL;
               SELECT v FROM sc.items WHERE id = 1; COMMIT;
    for a random tenant :t. During a churn run one more session makes --churn management
    changes a second, each its own transaction, cycling through add_member (a random tenant),
    set_setting (a random tenant) and create_tenant (a new tenant);
  - memory: one backend binds min(count, --rss-tenants) distinct tenants, each with a token of
    its own, one transaction each; the growth of its private memory (RssAnon: VmRSS without
    the shared buffers it touched) from after its first bind, and tenancy.cache_stats(), are
    reported;
  - first bind: pgbench -C (a new connection per transaction), the transaction above; the
    median latency of a new connection's first transaction.

The churn/quiet ratio of a count is the median of its rounds' ratios (runs of a round are
back to back); count/smallest compares the quiet medians of two counts measured one after
the other in the same cluster. Nothing here asserts a time.
"""
import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time

PGBIN = "/usr/lib/postgresql/15/bin"
SECRET = "scale-secret-scale-secret-scale-secret!!"


def psql(args, sql, db="bench", user="postgres"):
    out = subprocess.run([f"{PGBIN}/psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                          "-h", args.pghost, "-p", str(args.pgport), "-U", user, "-d", db],
                         input=sql, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"psql failed: {out.stderr}\n{sql[:400]}")
    return out.stdout.strip()


SETUP = f"""
CREATE EXTENSION IF NOT EXISTS pg_tenancy;
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE SCHEMA sc;
CREATE ROLE bench_app LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT USAGE ON SCHEMA sc TO bench_app;
SELECT tenancy.add_key('scale', 'HS256', '{SECRET}');
CREATE FUNCTION sc.b64url(bytea) RETURNS text LANGUAGE sql IMMUTABLE AS
$$ SELECT translate(rtrim(encode($1, 'base64'), '='), E'+/\\n', '-_') $$;
CREATE FUNCTION sc.token(tenant text, jti text DEFAULT NULL) RETURNS text LANGUAGE sql AS $$
    SELECT h || '.' || p || '.' || sc.b64url(hmac(h || '.' || p, '{SECRET}', 'sha256'))
      FROM (SELECT sc.b64url(convert_to('{{"alg":"HS256","kid":"scale"}}', 'UTF8')) AS h,
                   sc.b64url(convert_to(json_strip_nulls(json_build_object('tid', tenant, 'sub', 'scale-user',
                        'exp', extract(epoch FROM now())::bigint + 86400, 'jti', jti))::text, 'UTF8')) AS p) s
$$;
CREATE TABLE sc.tenants (n int PRIMARY KEY, tid uuid NOT NULL, token text NOT NULL);
GRANT SELECT ON sc.tenants TO bench_app;
CREATE TABLE sc.items (tenant_id uuid NOT NULL, id int NOT NULL, v int NOT NULL, PRIMARY KEY (tenant_id, id));
SELECT tenancy.protect('sc.items');
GRANT SELECT ON sc.items TO bench_app;
"""


def grow(args, have, want):
    """Onboard tenants have+1 .. want with one tenancy.create_tenants call, one transaction
    (timed), then give each a token and a row (not timed); returns tenants per second."""
    start = time.monotonic()
    psql(args, f"""
SELECT count(*) FROM tenancy.create_tenants(
  (SELECT jsonb_agg(jsonb_build_object('slug', 'sc-' || g, 'settings', '{{"default_roles": ["member"]}}'::jsonb))
     FROM generate_series({have + 1}, {want}) g));""")
    rate = (want - have) / (time.monotonic() - start)
    psql(args, f"""
BEGIN;
INSERT INTO sc.tenants (n, tid, token)
SELECT substr(slug, 4)::int, id, sc.token(id::text) FROM tenancy.tenants
 WHERE slug LIKE 'sc-%' AND substr(slug, 4)::int > {have};
INSERT INTO sc.items SELECT tid, 1, n FROM sc.tenants WHERE n > {have};
COMMIT;""")
    psql(args, "VACUUM ANALYZE sc.tenants; VACUUM ANALYZE sc.items; CHECKPOINT;")
    return rate


def script(tmp, count):
    path = os.path.join(tmp, f"read-{count}.sql")
    with open(path, "w") as f:
        f.write(f"\\set t random(1, {count})\n"
                "BEGIN;\n"
                "SELECT tenancy.bind((SELECT token FROM sc.tenants WHERE n = :t)) IS NOT NULL;\n"
                "SELECT v FROM sc.items WHERE id = 1;\n"
                "COMMIT;\n")
    return path


def pgbench(args, path, seconds, extra=()):
    out = subprocess.run([f"{PGBIN}/pgbench", "-n", "-M", "extended", "-f", path, "-c", str(args.clients),
                          "-j", str(args.clients), "-T", str(seconds), *extra,
                          "-h", args.pghost, "-p", str(args.pgport), "-U", "bench_app", "bench"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"pgbench failed: {out.stderr}{out.stdout}")
    for line in out.stdout.splitlines():
        if line.startswith("tps = "):
            return float(line.split()[2])
    sys.exit(f"no tps in pgbench output: {out.stdout}")


class Churn(threading.Thread):
    """--churn management changes a second, each its own transaction, in one session."""

    def __init__(self, args, count, tag):
        super().__init__(daemon=True)
        self.args, self.count, self.stop, self.done = args, count, threading.Event(), 0
        self.tag = tag  # unique per run: the tenants it creates are new
        self.errors = ""

    def run(self):
        # Not ON_ERROR_STOP: a change that fails (none should) must not end the churn.
        p = subprocess.Popen([f"{PGBIN}/psql", "-X", "-q", "-At",
                              "-h", self.args.pghost, "-p", str(self.args.pgport), "-U", "postgres", "-d", "bench"],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        interval = 1.0 / self.args.churn
        k = 0
        nxt = time.monotonic()
        while not self.stop.is_set():
            t = f"(SELECT 'sc-' || (1 + floor(random() * {self.count}))::int)"
            sql = [f"SELECT tenancy.add_member({t}, 'churn-' || {k}, 'member');",
                   f"SELECT tenancy.set_setting({t}, 'churn', to_jsonb({k}));",
                   f"SELECT tenancy.create_tenant('churn-{self.tag}-{k}');"][k % 3]
            p.stdin.write(sql + "\n")
            p.stdin.flush()
            k += 1
            self.done = k
            nxt += interval
            time.sleep(max(0.0, nxt - time.monotonic()))
        p.stdin.close()
        self.errors = p.stderr.read()
        p.wait()


def rss_after_binds(args, count):
    """A backend binds `n` distinct tenants (tokens of their own); its VmRSS growth from after
    its first bind, and its cache counters."""
    n = min(count, args.rss_tenants)
    p = subprocess.Popen([f"{PGBIN}/psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                          "-h", args.pghost, "-p", str(args.pgport), "-U", "bench_app", "-d", "bench"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(sql):
        p.stdin.write(sql + "\n")
        p.stdin.flush()
        return p.stdout.readline().strip()

    def rss_kib(pid):
        # RssAnon: the backend's own memory. VmRSS also counts the pages of shared buffers the
        # backend has touched, which grow with the data it reads, not with what it keeps.
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
        return 0

    # Tokens of their own (a jti each), made by the superuser beforehand: the token cache and
    # the catalog cache both fill as an application's would.
    psql(args, f"""DROP TABLE IF EXISTS sc.rss_tokens;
CREATE TABLE sc.rss_tokens AS SELECT n, sc.token(tid::text, 'rss-' || n) AS token
  FROM sc.tenants ORDER BY random() LIMIT {n};
GRANT SELECT ON sc.rss_tokens TO bench_app;""")
    pid = int(ask("SELECT pg_backend_pid();"))
    ask("BEGIN; SELECT tenancy.bind(token) IS NOT NULL FROM sc.rss_tokens LIMIT 1; COMMIT;")
    before = rss_kib(pid)
    # One transaction per bind, as an application binds; the statements go in one stream.
    tokens = psql(args, "SELECT token FROM sc.rss_tokens").splitlines()
    for tok in tokens:
        p.stdin.write(f"BEGIN; SELECT tenancy.bind('{tok}') IS NULL; COMMIT;\n")
    p.stdin.flush()
    # Each bind prints one line ("f"); then the counters.
    for _ in tokens:
        p.stdout.readline()
    stats = ask("SELECT tenancy.cache_stats();")
    after = rss_kib(pid)
    p.stdin.close()
    p.wait()
    return n, (after - before) / 1024.0, stats


def first_bind_ms(args, path, tmp):
    """pgbench -C: every transaction on a new connection; the median of the per-transaction
    latencies (the connection's set-up is not part of them)."""
    prefix = os.path.join(tmp, "conn")
    for f in os.listdir(tmp):
        if f.startswith("conn"):
            os.remove(os.path.join(tmp, f))
    out = subprocess.run([f"{PGBIN}/pgbench", "-n", "-M", "extended", "-C", "-f", path, "-c", "1", "-t",
                          str(args.first_binds), "-l", "--log-prefix", prefix,
                          "-h", args.pghost, "-p", str(args.pgport), "-U", "bench_app", "bench"],
                         capture_output=True, text=True, cwd=tmp)
    if out.returncode != 0:
        sys.exit(f"pgbench -C failed: {out.stderr}")
    lat = []
    for f in os.listdir(tmp):
        if f.startswith("conn"):
            with open(os.path.join(tmp, f)) as fh:
                lat += [int(line.split()[2]) / 1000.0 for line in fh if line.strip()]
    return statistics.median(lat), min(lat), max(lat)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pghost", required=True)
    ap.add_argument("--pgport", type=int, required=True)
    ap.add_argument("--counts", default="1000,10000,100000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--churn", type=float, default=10.0)
    ap.add_argument("--rss-tenants", type=int, default=20000)
    ap.add_argument("--first-binds", type=int, default=200)
    ap.add_argument("--build", default="release")
    ap.add_argument("--settings", default="")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "SCALE.md"))
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    psql(args, "CREATE DATABASE bench", db="postgres")
    psql(args, SETUP)
    tmp = tempfile.mkdtemp(prefix="pg_tenancy-scale-")
    rows = []
    have = 0
    for count in counts:
        rate = grow(args, have, count)
        have = count
        print(f"{count} tenants (onboarded at {rate:.0f} per second)", flush=True)
        path = script(tmp, count)
        pgbench(args, path, 2)  # warm-up, discarded
        quiet, churn, ratios, changes = [], [], [], []
        for r in range(args.rounds):
            q = pgbench(args, path, args.seconds)
            ch = Churn(args, count, f"{os.getpid()}-{count}-{r}")
            ch.start()
            c = pgbench(args, path, args.seconds)
            ch.stop.set()
            ch.join()
            if "ERROR" in ch.errors:
                sys.exit(f"a churn change failed: {ch.errors}")
            quiet.append(q)
            churn.append(c)
            ratios.append(c / q)
            changes.append(ch.done / args.seconds)
            print(f"  round {r + 1}: quiet {q:8.1f} tps, churn {c:8.1f} tps ({ch.done} changes), "
                  f"churn/quiet {c / q:.3f}", flush=True)
        n, growth, stats = rss_after_binds(args, count)
        med, lo, hi = first_bind_ms(args, path, tmp)
        print(f"  memory: {growth:.1f} MiB after binding {n} tenants ({stats}); "
              f"first bind on a new connection: median {med:.2f} ms", flush=True)
        rows.append(dict(count=count, rate=rate, quiet=quiet, churn=churn, ratios=ratios,
                         changes=statistics.median(changes), rss_n=n, rss=growth, stats=stats,
                         first=(med, lo, hi)))
    write(args, rows)


def write(args, rows):
    base = statistics.median(rows[0]["quiet"])
    version = psql(args, "SELECT version()", db="postgres").split(" on ")[0]
    lines = [
        "# pg_tenancy at tenant scale",
        "",
        f"Generated by `benches/scale.sh` on {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC. The "
        "method is at the top of `benches/scale.py` and in `benches/README.md` (\"Tenant scale\"); "
        "nothing in it asserts a time.",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores; {version}; pg_tenancy {args.build} build, not preloaded",
        f"- settings: {args.settings or 'benches/scale.sh defaults'}",
        f"- pgbench: {args.clients} clients as NOSUPERUSER bench_app, extended protocol, {args.seconds} s runs, "
        f"{args.rounds} rounds of a quiet run then a churn run; churn: {args.churn:g} changes a second "
        "(add_member, set_setting, create_tenant in turn), each its own transaction",
        "",
        "| tenants | onboarding, tenants/s | quiet tps (median) | churn tps (median) | churn / quiet: median (min-max) | "
        f"quiet vs {rows[0]['count']:,} tenants | backend private memory (RssAnon) growth after binding N tenants | "
        "first bind on a new connection, median (min-max) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        q, c = statistics.median(r["quiet"]), statistics.median(r["churn"])
        med, lo, hi = r["first"]
        lines.append(
            f"| {r['count']:,} | {r['rate']:,.0f} | {q:,.0f} | {c:,.0f} | "
            f"{statistics.median(r['ratios']):.2f} ({min(r['ratios']):.2f}-{max(r['ratios']):.2f}) | "
            f"{q / base:.2f} | {r['rss']:.1f} MiB (N = {r['rss_n']:,}) | {med:.2f} ms ({lo:.2f}-{hi:.2f}) |")
    lines += ["", "Cache counters of the memory run's backend, per tenant count:", ""]
    for r in rows:
        lines.append(f"- {r['count']:,}: `{r['stats']}`")
    lines.append("")
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
