#!/usr/bin/env python3
"""Write load, crashes and the exact after-recovery checks of tests/reliability/faults.sh.

Writers are long-lived `psql` processes (one per writer, TCP loopback, the NOSUPERUSER
NOBYPASSRLS application role, ON_ERROR_STOP) fed one transaction at a time on stdin, each
followed by `\\echo ACK w k`. psql runs its input in order and stops at the first error or lost
connection, so a transaction whose ACK line arrived was acknowledged as committed (or, for a
ROLLBACK transaction, as rolled back); one whose ACK did not arrive because psql lost its
connection is in doubt: it may or may not have committed, but only as a whole. The next
transaction is sent only after the ACK, so at most one transaction per writer is in doubt at a
time.

Transactions (each binds a pre-signed token of a random tenant first):
  insert    INSERT 1-5 rows keyed (writer, txno, i), then COMMIT;
  rollback  the same, then ROLLBACK: never present, never audited;
  delete    DELETE the rows of an earlier acknowledged insert of this writer (binding that
            insert's tenant), asserting inside the transaction that exactly its rows went.
Some transactions sleep 20 ms before their COMMIT, so that there is a backend in a write
transaction to kill.

Faults, once per cycle (short mode: two cycles; --long: cycles until the duration is used):
  A. kill -9 a backend that holds a transaction id (pg_stat_activity.backend_xid), i.e. is in
     a write transaction: the postmaster resets every backend and runs crash recovery;
  a CHECKPOINT, so that the next recovery starts mid-load;
  B. kill -9 the postmaster; its children exit on noticing (stragglers after 10 s are killed);
     restart with pg_ctl, which recovers.
Writers reconnect and go on after each fault. Then the checks (printed as PASS/FAIL lines;
exit status 1 if any failed).
"""
import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # keep __pycache__ out of the work tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hs256  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--pgbin", required=True)
ap.add_argument("--cluster", required=True)
ap.add_argument("--port", required=True)
ap.add_argument("--db", required=True)
ap.add_argument("--app-role", required=True)
ap.add_argument("--secret", required=True)
ap.add_argument("--kid", required=True)
ap.add_argument("--writers", type=int, default=4)
ap.add_argument("--duration", type=int, default=0, help="seconds of fault cycles; 0: --cycles cycles")
ap.add_argument("--cycles", type=int, default=2)
ap.add_argument("--seed", type=int, default=None)
args = ap.parse_args()

DATA = os.path.join(args.cluster, "data")
WORK = os.path.join(args.cluster, "work")
os.makedirs(WORK, exist_ok=True)
seed = args.seed if args.seed is not None else int(time.time())
rng_global = random.Random(seed)
failures = []
passes = 0


def say(msg):
    print(msg, flush=True)


def check(what, actual, expected):
    global passes
    if actual == expected:
        passes += 1
        say(f"  PASS  {what}: {actual}")
    else:
        failures.append(f"{what}: got {actual!r}, expected {expected!r}")
        say(f"  FAIL  {what}: got {actual}, expected {expected}")


def su_sql(sql, timeout=60):
    """Run SQL as the superuser over the socket; rows as lists of strings."""
    out = subprocess.run(
        [f"{args.pgbin}/psql", "-X", "-q", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1",
         "-h", args.cluster, "-p", args.port, "-U", "postgres", "-d", args.db, "-c", sql],
        capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"psql failed: {out.stderr.strip()}")
    return [line.split("\t") for line in out.stdout.splitlines() if line != ""]


def wait_ready(timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            su_sql("SELECT 1", timeout=10)
            return True
        except Exception:
            time.sleep(0.2)
    return False


# Tenants and one token per tenant (exp far enough for any run).
tenants = [(r[0], r[1]) for r in su_sql("SELECT id, slug FROM tenancy.tenants WHERE slug LIKE 'fault-%' ORDER BY slug")]
ttl = max(args.duration, 600) + 3600
tokens = {tid: hs256.token(args.secret, args.kid, tid if i % 2 else slug, f"writer-of-{slug}", ttl)
          for i, (tid, slug) in enumerate(tenants)}

# Every transaction the driver sent: (writer, txno) -> dict(kind, tenant, n, target, status),
# status one of 'sent' (not yet answered), 'acked', 'in-doubt'.
txs = {}
txs_lock = threading.Lock()
stop = threading.Event()
unexpected_errors = []
connects = collections.Counter()


class Writer(threading.Thread):
    def __init__(self, w):
        super().__init__(daemon=True)
        self.w = w
        self.rng = random.Random(seed * 1000 + w)
        self.proc = None
        self.errfile = None
        self.k = 0
        self.deletable = []  # acked insert txnos of this writer not yet targeted by a delete

    def connect(self):
        n = connects[self.w]
        connects[self.w] += 1
        path = os.path.join(WORK, f"writer{self.w}-{n}.err")
        self.errpath = path
        self.errfile = open(path, "w")
        self.proc = subprocess.Popen(
            [f"{args.pgbin}/psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
             "-p", args.port, "-U", args.app_role, "-d", args.db],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errfile, text=True, bufsize=1)
        # psql connects before reading input: READY proves the session is up.
        if self.send_and_wait("SELECT 1 \\g /dev/null\n\\echo READY\n", "READY"):
            return True
        self.close()
        return False

    def send_and_wait(self, text, marker):
        try:
            self.proc.stdin.write(text)
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError, ValueError):
            return False
        return line.strip() == marker

    def close(self):
        if self.proc is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.errfile.close()
            with open(self.errpath) as f:
                for line in f:
                    # Crash fallout (lost connections, recovery, refused connections) is expected;
                    # an ERROR is not: the transactions are written to succeed.
                    if "ERROR:" in line:
                        unexpected_errors.append(f"writer {self.w}: {line.strip()}")
            self.proc = None

    def transaction(self):
        self.k += 1
        k, w, rng = self.k, self.w, self.rng
        r = rng.random()
        if r < 0.15 and self.deletable:
            target = self.deletable.pop(rng.randrange(len(self.deletable)))
            t = txs[(w, target)]
            kind, tenant, n = "delete", t["tenant"], t["n"]
            body = (f"DO $$ DECLARE c int; BEGIN DELETE FROM fault_rows WHERE writer = {w} AND txno = {target}; "
                    f"GET DIAGNOSTICS c = ROW_COUNT; IF c <> {n} THEN RAISE EXCEPTION "
                    f"'delete of transaction {w}/{target} removed % rows, expected {n}', c; END IF; END $$;\n")
        else:
            kind = "rollback" if r > 0.85 else "insert"
            target = None
            tenant = rng.choice(tenants)[0]
            n = rng.randint(1, 5)
            body = (f"INSERT INTO fault_rows (writer, txno, i, claimed_tenant, payload) "
                    f"SELECT {w}, {k}, g, '{tenant}', repeat(md5(g::text), 8) FROM generate_series(1, {n}) g;\n")
        if rng.random() < 0.3:
            body += "SELECT pg_sleep(0.02) \\g /dev/null\n"
        end = "ROLLBACK" if kind == "rollback" else "COMMIT"
        text = (f"BEGIN;\nSELECT tenancy.bind('{tokens[tenant]}') \\g /dev/null\n{body}{end};\n"
                f"\\echo ACK {w} {k}\n")
        with txs_lock:
            txs[(w, k)] = dict(kind=kind, tenant=tenant, n=n, target=target, status="sent", at=time.time())
        acked = self.send_and_wait(text, f"ACK {w} {k}")
        with txs_lock:
            txs[(w, k)]["status"] = "acked" if acked else "in-doubt"
        if acked and kind == "insert":
            self.deletable.append(k)
        if not acked:
            self.close()
            if kind == "delete":
                pass  # in doubt: its target stays out of deletable (it may be gone)

    def run(self):
        while not stop.is_set():
            if self.proc is None and not self.connect():
                time.sleep(0.2)
                continue
            self.transaction()
        self.close()


def acked_count():
    with txs_lock:
        return sum(1 for t in txs.values() if t["status"] == "acked")


def run_for(seconds):
    time.sleep(seconds)


def postmaster_pid():
    with open(os.path.join(DATA, "postmaster.pid")) as f:
        return int(f.readline())


def children_of(pid):
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
                if int(st[st.rindex(")") + 2:].split()[1]) == pid:
                    kids.append(int(d))
            except (OSError, ValueError):
                pass
    return kids


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


events = []


def phase_a():
    """kill -9 a backend that is in a write transaction."""
    deadline = time.time() + 15
    while time.time() < deadline:
        rows = su_sql(f"SELECT pid, backend_xid, state, left(query, 60) FROM pg_stat_activity "
                      f"WHERE usename = '{args.app_role}' AND backend_xid IS NOT NULL LIMIT 1")
        if rows:
            pid, xid, state, query = rows[0]
            before = acked_count()
            os.kill(int(pid), signal.SIGKILL)
            say(f"  phase A: kill -9 backend {pid} (xid {xid}, {state}: {query!r}); {before} transactions acknowledged so far")
            events.append(("A", int(pid)))
            t0 = time.time()
            if not wait_ready():
                failures.append("phase A: the server did not come back within 120 s")
                say("  FAIL  phase A: the server did not come back within 120 s")
                return False
            say(f"  phase A: server accepting connections again after {time.time() - t0:.1f} s")
            return True
        time.sleep(0.01)
    failures.append("phase A: found no backend in a write transaction within 15 s")
    say("  FAIL  phase A: found no backend in a write transaction within 15 s")
    return False


def phase_b():
    """kill -9 the postmaster, let its children go, restart."""
    pm = postmaster_pid()
    kids = children_of(pm)
    before = acked_count()
    os.kill(pm, signal.SIGKILL)
    say(f"  phase B: kill -9 postmaster {pm} ({len(kids)} children); {before} transactions acknowledged so far")
    events.append(("B", pm))
    deadline = time.time() + 10
    while time.time() < deadline and any(alive(p) for p in kids):
        time.sleep(0.1)
    stragglers = [p for p in kids if alive(p)]
    for p in stragglers:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if stragglers:
        say(f"  phase B: killed {len(stragglers)} children still alive after 10 s")
    deadline = time.time() + 10
    while time.time() < deadline and any(alive(p) for p in kids):
        time.sleep(0.1)
    # The killed postmaster may linger as a zombie (in a container, PID 1 may be slow to reap
    # orphans), and PostgreSQL takes a postmaster.pid naming a live or zombie process for a
    # running server. The process is gone in every sense that matters, so remove the stale file.
    # The same goes for the socket's lock file.
    if not alive(pm):
        for stale in (os.path.join(DATA, "postmaster.pid"),
                      os.path.join(args.cluster, f".s.PGSQL.{args.port}.lock")):
            try:
                os.unlink(stale)
            except FileNotFoundError:
                pass
    t0 = time.time()
    env = {k: v for k, v in os.environ.items() if k not in ("RUST_BACKTRACE", "RUST_LIB_BACKTRACE")}
    # A stale postmaster.pid whose process is gone is ignored by the new postmaster; shared
    # memory is free once every old child has exited (waited for above).
    r = subprocess.run(["runuser", "-u", "postgres", "--", f"{args.pgbin}/pg_ctl", "-D", DATA, "-l",
                        os.path.join(args.cluster, "server.log"), "-w", "-t", "60", "start"],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0 or not wait_ready():
        failures.append(f"phase B: restart failed: {r.stdout.strip()} {r.stderr.strip()}")
        say(f"  FAIL  phase B: restart failed: {r.stdout.strip()} {r.stderr.strip()}")
        return False
    say(f"  phase B: restarted and recovered in {time.time() - t0:.1f} s")
    return True


# ---- load and faults ------------------------------------------------------------------------
say(f"  seed {seed}; {args.writers} writers; {len(tenants)} tenants")
writers = [Writer(w) for w in range(1, args.writers + 1)]
for wr in writers:
    wr.start()
start = time.time()
cycles = 0
ok = True
while ok:
    cycles += 1
    run_for(5)
    ok = phase_a()
    if not ok:
        break
    run_for(4)
    su_sql("CHECKPOINT")
    run_for(2)
    ok = phase_b()
    if not ok:
        break
    if args.duration == 0 and cycles >= args.cycles:
        break
    if args.duration > 0 and time.time() - start + 12 > args.duration:
        break
after_restart = acked_count()
run_for(5)
stop.set()
for wr in writers:
    wr.join(timeout=60)
hung = [wr.w for wr in writers if wr.is_alive()]
for wr in writers:
    if wr.proc is not None:
        wr.proc.kill()
say(f"  load ran {time.time() - start:.0f} s, {cycles} cycle(s)")

# ---- checks -------------------------------------------------------------------------------------
by_status = collections.Counter((t["kind"], t["status"]) for t in txs.values())
say("  transactions: " + ", ".join(f"{k} {s}: {n}" for (k, s), n in sorted(by_status.items())))
check("writers hung at the end", hung, [])
check("unexpected ERRORs reported to writers", unexpected_errors[:5], [])
check("transactions acknowledged after the last restart > 0",
      acked_count() - after_restart > 0, True)
check("faults injected (A: backend, B: postmaster)", [e[0] for e in events], ["A", "B"] * cycles)
if not wait_ready():
    failures.append("server not reachable for the checks")
    say("  FAIL  server not reachable for the checks")
    sys.exit(1)

rows = {}
for wr_, k, i, tenant, claimed in su_sql("SELECT writer, txno, i, tenant_id, claimed_tenant FROM fault_rows"):
    rows[(int(wr_), int(k), int(i))] = (tenant, claimed)
audit = collections.defaultdict(list)  # row key -> [(id, op, tenant, txid)]
for aid, op, tenant, txid, wr_, k, i in su_sql(
        "SELECT id, op, tenant_id, txid, r ->> 'writer', r ->> 'txno', r ->> 'i' "
        "FROM tenancy.audit_log, coalesce(new_row, old_row) r "
        "WHERE table_name IN ('fault_rows', 'public.fault_rows') ORDER BY id"):
    audit[(int(wr_), int(k), int(i))].append((int(aid), op, tenant, txid))
say(f"  rows present: {len(rows)}; audit records of fault_rows: {sum(len(v) for v in audit.values())}")

# What each insert transaction's rows must look like now. An acknowledged delete removed them;
# an in-doubt delete may or may not have (as a whole).
deleted_by = {}
for (w, k), t in txs.items():
    if t["kind"] == "delete":
        deleted_by[(w, t["target"])] = t["status"]

problems = collections.Counter()
examples = []
outcomes = collections.Counter()


def problem(kind, detail):
    problems[kind] += 1
    if len(examples) < 10:
        examples.append(f"{kind}: {detail}")


known_keys = set()
for (w, k), t in sorted(txs.items()):
    if t["kind"] == "delete":
        continue
    keys = [(w, k, i) for i in range(1, t["n"] + 1)]
    known_keys.update(keys)
    present = [key in rows for key in keys]
    ops = [tuple(op for _, op, _, _ in audit.get(key, [])) for key in keys]
    if t["kind"] == "rollback":
        if any(present) or any(ops):
            problem("rolled-back transaction present or audited", f"{w}/{k} {t}")
        continue
    committed = t["status"] == "acked" or any(present) or any(ops)
    if t["status"] != "acked":  # in doubt (or, had a writer hung, never answered)
        outcomes["in-doubt insert committed" if committed else "in-doubt insert absent"] += 1
        if not committed:
            continue
    if len(set(present)) > 1:
        problem("transaction partly present", f"{w}/{k} present {present}")
        continue
    deleter = deleted_by.get((w, k))
    gone = not present[0]
    if gone and deleter is None:
        problem("acknowledged row missing", f"{w}/{k} ({t['status']})")
        continue
    if gone and deleter not in ("acked", "in-doubt"):
        problem("row deleted by a transaction that did not commit", f"{w}/{k} deleter {deleter}")
        continue
    if not gone and deleter == "acked":
        problem("row of an acknowledged delete still present", f"{w}/{k}")
        continue
    if deleter == "in-doubt":
        outcomes["in-doubt delete committed" if gone else "in-doubt delete absent"] += 1
    expected_ops = ("INSERT", "DELETE") if gone else ("INSERT",)
    for key, o in zip(keys, ops):
        if o != expected_ops:
            problem("audit records differ from the committed changes", f"{key}: {o}, expected {expected_ops}")
    for key in keys:
        recs = audit.get(key, [])
        if any(rec[2] != t["tenant"] for rec in recs):
            problem("audit record of the wrong tenant", f"{key}")
        if not gone and rows[key] != (t["tenant"], t["tenant"]):
            problem("row of the wrong tenant", f"{key}: {rows[key]}, token tenant {t['tenant']}")
    # One transaction, one txid: the INSERT records of all its rows.
    txids = {rec[3] for key in keys for rec in audit.get(key, []) if rec[1] == "INSERT"}
    if len(txids) > 1:
        problem("INSERT records of one transaction carry several txids", f"{w}/{k}: {txids}")

for key in rows:
    if key not in known_keys:
        problem("row from no transaction the driver sent", f"{key}")
for key in audit:
    if key not in known_keys:
        problem("audit record for no transaction the driver sent", f"{key}")

say("  in-doubt outcomes: " + (", ".join(f"{k}: {n}" for k, n in sorted(outcomes.items())) or "none"))
acked_inserts = sum(1 for t in txs.values() if t["kind"] == "insert" and t["status"] == "acked")
check("acknowledged insert transactions checked", acked_inserts > 0, True)
for kind in ("acknowledged row missing", "transaction partly present", "rolled-back transaction present or audited",
             "row of an acknowledged delete still present", "row deleted by a transaction that did not commit",
             "audit records differ from the committed changes", "audit record of the wrong tenant",
             "row of the wrong tenant", "INSERT records of one transaction carry several txids",
             "row from no transaction the driver sent", "audit record for no transaction the driver sent"):
    check(kind, problems.get(kind, 0), 0)
for e in examples:
    say(f"    {e}")

verify = su_sql("SELECT coalesce(tenant::text, '-'), records, ok, coalesce(first_bad_id::text, '-'), detail "
                "FROM tenancy.audit_verify()")
say(f"  audit_verify(): {len(verify)} chains, {sum(int(v[1]) for v in verify)} records")
check("audit chains that fail audit_verify", [v for v in verify if v[2] != "t"], [])
ok_tenants = {v[0] for v in verify if v[2] == "t" and int(v[1]) > 0}
check("tenants with a verified, non-empty chain", sum(1 for tid, _ in tenants if tid in ok_tenants), len(tenants))

say(f"  driver: {passes} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
