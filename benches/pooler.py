#!/usr/bin/env python3
"""Per-request overhead of pg_tenancy directly and through PgBouncer (issue #33): the runner
behind benches/pooler.sh, which starts the cluster and the PgBouncer and passes their ports.

Each request is one transaction with a random tenant. The two sides, in pgbench's extended
protocol (parameters as $n, unnamed statements, as drivers send them behind a transaction
pooler):

  baseline (`filter`, the unprotected copy; the application names the tenant itself)
    reads   BEGIN; SELECT * FROM bench_filter.orders
                   WHERE tenant_id = (SELECT tid FROM bench.tenants WHERE n = $t) AND id = $k; COMMIT
    writes  BEGIN; INSERT INTO bench_filter.orders (tenant_id, id, amount, status)
                   VALUES ((SELECT tid FROM bench.tenants WHERE n = $t), nextval('bench.ids'), 1, 1); COMMIT
  pg_tenancy (the protected copy, RBAC on, audit on, as tenancy.protect() leaves it)
    reads   BEGIN; SELECT tenancy.bind((SELECT token FROM bench.tenants WHERE n = $t)) IS NOT NULL;
                   SELECT * FROM bench_tenancy.orders WHERE id = $k; COMMIT
    writes  BEGIN; SELECT tenancy.bind(...the same...) IS NOT NULL;
                   INSERT INTO bench_tenancy.orders (id, amount, status)
                   VALUES (nextval('bench.ids'), 1, 1); COMMIT       (tenant_id: the column default
                                                                     protect() sets, current_tenant())

Both sides look their tenant up the same way, once per request, inside their first statement:
one primary-key probe of bench.tenants (n -> tid for the baseline, n -> token for pg_tenancy).
A real application would have the tenant id or the token in hand; pgbench cannot draw a random
string, so both pay the same probe instead. Without pipelining that is 3 round trips for the
baseline (BEGIN, the statement, COMMIT) and 4 for pg_tenancy (the bind); pipelined
(`\\startpipeline` ... `\\endpipeline`, one Sync at the end) one for each, the bind travelling
with the query.

Every pair of runs is side by side: the baseline and pg_tenancy run at the same time, half the
clients each, one pgbench thread each, which one starts first alternating. Through PgBouncer each
side has its own pool (two database aliases of the same database), so neither queues for the
other's server connections. Rounds go over every pair, in reverse order every other round.
The overhead of a pair is baseline tps / pg_tenancy tps (1.20x: a request takes 20% longer).
Nothing here asserts a time.
"""
import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Bench, PGBIN  # noqa: E402  (pgbench runs and their steady-state seconds)

HERE = os.path.dirname(os.path.abspath(__file__))

LOOKUP_TID = "(SELECT tid FROM bench.tenants WHERE n = :t)"
LOOKUP_TOKEN = "(SELECT token FROM bench.tenants WHERE n = :t)"
BIND = f"SELECT tenancy.bind({LOOKUP_TOKEN}) IS NOT NULL;"
STATEMENTS = {
    ("reads", "base"): [f"SELECT * FROM bench_filter.orders WHERE tenant_id = {LOOKUP_TID} AND id = :k;"],
    ("reads", "tenancy"): [BIND, "SELECT * FROM bench_tenancy.orders WHERE id = :k;"],
    ("writes", "base"): ["INSERT INTO bench_filter.orders (tenant_id, id, amount, status) "
                         f"VALUES ({LOOKUP_TID}, nextval('bench.ids'), 1, 1);"],
    ("writes", "tenancy"): [BIND, "INSERT INTO bench_tenancy.orders (id, amount, status) "
                                  "VALUES (nextval('bench.ids'), 1, 1);"],
    # Beside: the protected copy without audit (tenancy.protect(audit => false)), to show how
    # much of the write overhead is the audit trail.
    ("writes", "noaudit"): [BIND, "INSERT INTO bench_noaudit.orders (id, amount, status) "
                                  "VALUES (nextval('bench.ids'), 1, 1);"],
}
TARGET = {"reads": 1.2, "writes": 1.3}  # issue #33, through PgBouncer


def script(workload, side, pipelined):
    lines = ["\\set t random(1, :ntenants)", "\\set k random(1, :nrows)"]
    if pipelined:
        lines.append("\\startpipeline")
    lines += ["BEGIN;", *STATEMENTS[(workload, side)], "COMMIT;"]
    if pipelined:
        lines.append("\\endpipeline")
    return "\n".join(lines) + "\n"


class Pair:
    """One row of the table: a workload, a connection, pipelined or not, and the two sides."""

    def __init__(self, workload, via, pipelined, base="base", other="tenancy", note=""):
        self.workload, self.via, self.pipelined = workload, via, pipelined
        self.base, self.other, self.note = base, other, note
        self.ratios, self.tps, self.lat = [], {base + "/0": [], other + "/1": []}, []

    @property
    def label(self):
        s = f"{self.workload}, {'PgBouncer' if self.via == 'bouncer' else 'direct'}"
        if self.pipelined:
            s += ", pipelined"
        return s + (f" ({self.note})" if self.note else "")

    @property
    def target(self):
        if self.via == "bouncer" and self.base == "base" and self.other == "tenancy":
            return TARGET[self.workload]
        return None


def pairs():
    out = []
    for w in ("reads", "writes"):
        for via in ("direct", "bouncer"):
            for pipelined in (False, True):
                out.append(Pair(w, via, pipelined))
    out.append(Pair("writes", "bouncer", False, other="noaudit", note="beside: pg_tenancy with audit off"))
    # The control: the baseline against itself (each side its own pool): the method's own spread.
    out.append(Pair("reads", "bouncer", False, other="base", note="control: baseline against itself"))
    return out


class PoolerBench(Bench):
    def __init__(self, args):
        a = argparse.Namespace(clients=args.clients)
        super().__init__(a)
        self.opts = args
        self.env["PGHOST"], self.env["PGPORT"] = args.pghost, str(args.pgport)

    def setup(self):
        a = self.opts
        print(f"data: {a.tenants} tenants x {a.rows} orders (benches/setup.sql)", flush=True)
        self.psql("CREATE DATABASE bench", db="postgres")
        with open(os.path.join(HERE, "setup.sql")) as f:
            self.psql(f.read(), vars={"ntenants": a.tenants, "nrows": a.rows})

    def conn(self, via, slot):
        """pgbench's connection arguments: over TCP to the server or to PgBouncer, where slot 0
        and 1 are the two pools (database aliases pb_0 and pb_1 of the same database)."""
        if via == "bouncer":
            return ["-h", "127.0.0.1", "-p", str(self.opts.bouncer_port), "-U", "bench_app", f"pb_{slot}"]
        return ["-h", "127.0.0.1", "-p", str(self.opts.pgport), "-U", "bench_app", "bench"]

    def pgbench_side(self, pair, side, slot):
        path = os.path.join(self.tmp, f"{pair.workload}-{side}-{int(pair.pipelined)}.sql")
        with open(path, "w") as f:
            f.write(script(pair.workload, side, pair.pipelined))
        mode = "extended" if pair.pipelined else self.opts.protocol
        args = ["-f", path, "-D", f"ntenants={self.opts.tenants}", "-D", f"nrows={self.opts.rows}",
                *self.conn(pair.via, slot)]
        return args, self.env, mode

    def run_pair(self, pair, seconds, r, record=True):
        """The two sides at the same time; which starts first alternates with the round."""
        half = max(1, self.opts.clients // 2)
        sides = [self.pgbench_side(pair, pair.base, 0), self.pgbench_side(pair, pair.other, 1)]
        order = [0, 1] if r % 2 == 0 else [1, 0]
        self.psql("CHECKPOINT", db="postgres")
        runs = {i: self.start_pgbench(sides[i][0], sides[i][1], seconds, sides[i][2], clients=half, jobs=1)
                for i in order}
        done = {i: self.finish_pgbench(runs[i], f"{pair.label} side {i}") for i in order}
        common = self.common_intervals([t for i in (0, 1) for t in done[i][1]])
        base_tps, other_tps = (self.steady(done[i][1], common, done[i][0]) for i in (0, 1))
        if record:
            pair.ratios.append(base_tps / other_tps)
            pair.tps[pair.base + "/0"].append(base_tps)
            pair.tps[pair.other + "/1"].append(other_tps)
            # Mean time per request at this load (clients per side / tps), and the difference.
            pair.lat.append((half / other_tps - half / base_tps) * 1e6)
        print(f"  {pair.label:<58} {'round ' + str(r + 1) if record else 'warm-up':<8} "
              f"{base_tps:9.1f} / {other_tps:9.1f} tps  overhead {base_tps / other_tps:.3f}", flush=True)

    def check(self):
        """Before timing: through PgBouncer, each side's read finds tenant 1's order 1, the same
        row; each side's write goes in under tenant 1."""
        tid = self.psql("SELECT tid FROM bench.tenants WHERE n = 1")
        rows = {}
        for side, slot in (("base", 0), ("tenancy", 1)):
            sql = "BEGIN;\n" + "\n".join(STATEMENTS[("reads", side)]) + "\nCOMMIT;\n"
            sql = sql.replace(":t", "1").replace(":k", "1")
            out = subprocess.run([f"{PGBIN}/psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", *self.conn("bouncer", slot)],
                                 input=sql, capture_output=True, text=True, env=self.env)
            if out.returncode != 0:
                sys.exit(f"check, reads, {side}: {out.stderr}")
            lines = [l for l in out.stdout.splitlines() if l not in ("t",)]
            if len(lines) != 1 or not lines[0].startswith(tid):
                sys.exit(f"check, reads, {side}: expected tenant 1's order 1, got {out.stdout!r}")
            rows[side] = lines[0]
        if rows["base"] != rows["tenancy"]:
            sys.exit(f"check: the two sides read different rows: {rows}")
        for side, schema in (("base", "bench_filter"), ("tenancy", "bench_tenancy"), ("noaudit", "bench_noaudit")):
            sql = "BEGIN;\n" + "\n".join(STATEMENTS[("writes", side)]) + "\nCOMMIT;\n"
            out = subprocess.run([f"{PGBIN}/psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", *self.conn("bouncer", 1)],
                                 input=sql.replace(":t", "1"), capture_output=True, text=True, env=self.env)
            if out.returncode != 0:
                sys.exit(f"check, writes, {side}: {out.stderr}")
            got = self.psql(f"SELECT tenant_id FROM {schema}.orders WHERE id >= 100000000 ORDER BY id DESC LIMIT 1")
            if got != tid:
                sys.exit(f"check, writes, {side}: the row went in under {got!r}, not tenant 1 ({tid})")
        # PgBouncer resets a server connection after every transaction (server_reset_query_always):
        # the idle server connections' last statement is the reset.
        for _ in range(50):
            last = self.psql("SELECT DISTINCT query FROM pg_stat_activity WHERE usename = 'bench_app' "
                             "AND state = 'idle'", db="postgres")
            if last == "DISCARD ALL":
                break
            time.sleep(0.1)
        else:
            sys.exit(f"check: PgBouncer's server connections did not end with DISCARD ALL: {last!r}")
        print("check: both sides read the same row and write under their tenant, through PgBouncer, "
              "which resets its server connections with DISCARD ALL", flush=True)


def fmt_q(xs, digits=2, suffix=""):
    return f"{statistics.median(xs):.{digits}f}{suffix} ({min(xs):.{digits}f}-{max(xs):.{digits}f})"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pghost", required=True, help="the cluster's socket directory (setup, CHECKPOINT)")
    p.add_argument("--pgport", type=int, required=True)
    p.add_argument("--bouncer-port", type=int, required=True)
    p.add_argument("--tenants", type=int, default=100)
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=int, default=7, help="steady seconds per run (each run is one more)")
    p.add_argument("--warmup", type=int, default=1, help="steady seconds of a discarded warm-up run per pair (0: none)")
    p.add_argument("--clients", type=int, default=8, help="clients in all, half on each side")
    p.add_argument("--protocol", default="extended", choices=["simple", "extended"],
                   help="pgbench protocol of the runs that are not pipelined (pipelined runs are extended)")
    p.add_argument("--out", default=os.path.join(HERE, "POOLER.md"))
    p.add_argument("--build", default="release")
    p.add_argument("--settings", default="")
    p.add_argument("--bouncer-settings", default="")
    args = p.parse_args()

    b = PoolerBench(args)
    b.setup()
    b.check()
    ps = pairs()
    if args.warmup > 0:
        print("warm-up (discarded)", flush=True)
        for pair in ps:
            b.run_pair(pair, args.warmup, 0, record=False)
    for r in range(args.rounds):
        print(f"round {r + 1} of {args.rounds}", flush=True)
        for pair in (ps if r % 2 == 0 else list(reversed(ps))):
            b.run_pair(pair, args.seconds, r)

    written = {s: int(b.psql(f"SELECT count(*) FROM {s}.orders WHERE id >= 100000000"))
               for s in ("bench_filter", "bench_tenancy", "bench_noaudit")}
    pgver = b.psql("SHOW server_version", db="postgres")
    extver = b.psql("SELECT extversion FROM pg_extension WHERE extname = 'pg_tenancy'")
    bouncer = subprocess.run(["/usr/sbin/pgbouncer", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    pgbench = subprocess.run([f"{PGBIN}/pgbench", "--version"], capture_output=True, text=True).stdout.strip()
    half = max(1, args.clients // 2)

    rows = ["| request | baseline tps | pg_tenancy tps | overhead: median (min-max) over rounds | "
            "added per request, µs | target (#33) |",
            "|---|---:|---:|---:|---:|---|"]
    for pair in ps:
        (bk, bt), (ok, ot) = pair.tps.items()
        tgt = "-"
        if pair.target:
            m = statistics.median(pair.ratios)
            tgt = f"<= {pair.target}: {'within' if m <= pair.target else 'over'}"
        rows.append(f"| {pair.label} | {statistics.median(bt):.0f} | {statistics.median(ot):.0f} | "
                    f"{fmt_q(pair.ratios)}× | {statistics.median(pair.lat):.0f} | {tgt} |")

    def sides(w):
        return "\n".join([
            f"- `{w}`, baseline (unprotected `bench_filter` copy):",
            "  `" + " ".join(["BEGIN;", *STATEMENTS[(w, "base")], "COMMIT;"]) + "`",
            f"- `{w}`, pg_tenancy (`bench_tenancy`, protected, RBAC and audit on):",
            "  `" + " ".join(["BEGIN;", *STATEMENTS[(w, "tenancy")], "COMMIT;"]) + "`",
        ])

    doc = [
        "# pg_tenancy per-request overhead, directly and through PgBouncer",
        "",
        f"Generated by `benches/pooler.sh` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}. "
        "The method is in `benches/README.md` (\"Per-request overhead through PgBouncer\") and at the top of "
        "`benches/pooler.py`; nothing in it asserts a time.",
        "",
        "## Machine, versions and settings",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB RAM, "
        f"{platform.system()} {platform.release()}",
        f"- PostgreSQL {pgver}; {pgbench}; {bouncer}; pg_tenancy {extver}, {args.build} build, not preloaded "
        "(loaded by a backend's first bind; the baseline's backends never load it)",
        f"- cluster settings: {args.settings}",
        f"- PgBouncer: {args.bouncer_settings}",
        f"- data: {args.tenants} tenants x {args.rows} orders (`benches/setup.sql`, identical copies per schema)",
        f"- pgbench: {args.clients} clients in all, {half} per side, one thread per side, over TCP to "
        "127.0.0.1 (directly or to PgBouncer; PgBouncer reaches the server by its Unix socket); "
        f"protocol `{args.protocol}` unless pipelined (pipelined: `extended`, `\\startpipeline` ... "
        "`\\endpipeline`, one round trip per request); a random tenant (`\\set t random(1, ntenants)`) and "
        "order (`\\set k random(1, nrows)`) per request",
        f"- {args.rounds} round(s) over every pair (reverse order every other round)"
        + (f" after a discarded {args.warmup} s warm-up of each pair" if args.warmup > 0 else ", no warm-up")
        + f"; every run is `pgbench -T {args.seconds + 1}` with a "
        "1-second aggregate log, and its tps counts the whole seconds both sides ran that start at least "
        "1 s after pgbench started (connection set-up and first binds excluded); a CHECKPOINT before each pair",
        "",
        "## What each side runs",
        "",
        sides("reads"),
        sides("writes"),
        "",
        "`:t` and `:k` go as parameters (`$1`, `$2`). Both sides look their tenant up the same way, one "
        "primary-key probe of `bench.tenants` in their first statement (an application would have the "
        "tenant id or the token in hand; pgbench cannot draw a random string). Without pipelining the "
        "baseline takes 3 round trips per request and pg_tenancy 4; pipelined, one each. The `audit off` "
        "row runs pg_tenancy's write on `bench_noaudit` (`tenancy.protect(audit => false)`); the control "
        "runs the baseline on both sides, each through its own pool.",
        "",
        "## Results",
        "",
        "Overhead is baseline tps / pg_tenancy tps of two runs at the same time (1.20×: pg_tenancy's "
        "request takes 20% longer); the table gives the median of the rounds' ratios and their range, "
        "the tps columns the medians of each side. `added per request` is the median over rounds of "
        f"{half} / tps(pg_tenancy) - {half} / tps(baseline): the mean time a request took longer at "
        "this load, queueing for the CPU included. The target column compares the median with issue "
        "#33's bounds (reads 1.2×, writes 1.3× through PgBouncer); it asserts nothing.",
        "",
        *rows,
        "",
        f"Rows written during the run: baseline {written['bench_filter']}, pg_tenancy {written['bench_tenancy']}, "
        f"pg_tenancy audit off {written['bench_noaudit']}.",
        "",
    ]
    text = "\n".join(doc)
    print(text)
    with open(args.out, "w") as f:
        f.write(text)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
