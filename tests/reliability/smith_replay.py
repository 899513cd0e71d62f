#!/usr/bin/env python3
"""Replays the queries sqlsmith generated (its --dump-all-queries output) through psql as the
same mapped application role, and scans every result for tenant B's data.

sqlsmith does not show results, so this is how "no result ever contains another tenant's row"
is checked: one long-lived psql session (restarted whenever the server ends it, for example
because a query called pg_terminate_backend(pg_backend_pid())) runs the statements one by one,
each followed by `\\echo <marker>`, so every line of output (results and errors alike) is
attributed to its query; each runs in a transaction that is rolled back. A query whose output contains one of the forbidden strings
(case-insensitive: tenant B's uuid with or without dashes, B's marker text) is a leak.
A positive control counts the queries whose output shows tenant A's own rows.

Usage: smith_replay.py --psql PSQL --conninfo CONNINFO --forbid S [--forbid S...]
                       --expect S --out DIR [--query-timeout SECONDS] DUMP...
Prints counts and up to 5 leaking queries; exits 1 on any leak.
"""
import argparse
import collections
import os
import re
import subprocess
import sys
import threading
import time
import uuid

ap = argparse.ArgumentParser()
ap.add_argument("--psql", required=True)
ap.add_argument("--conninfo", required=True)
ap.add_argument("--forbid", action="append", required=True)
ap.add_argument("--expect", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--query-timeout", type=float, default=15.0)
ap.add_argument("dumps", nargs="+")
args = ap.parse_args()

forbid = [s.lower() for s in args.forbid]
expect = args.expect.lower()

# sqlsmith prints each statement followed by ";" and a newline; statements are built from
# generated expressions and hardly ever contain string literals, let alone ";\n" in one.
statements = []
for path in args.dumps:
    with open(path, errors="replace") as f:
        text = f.read()
    pieces = re.split(r";\n", text)
    # A round cut short by `timeout` may end in half a statement (no ";\n" after it): it was
    # never sent, so it is neither replayed nor counted (sqlsmith.sh counts the same way).
    pieces.pop()
    statements += [s.strip() for s in pieces if s.strip()]

token = uuid.uuid4().hex  # markers no query can print by accident


class Session:
    def __init__(self):
        self.proc = None
        self.lines = collections.deque()
        self.cond = threading.Condition()
        self.starts = 0

    def start(self):
        self.starts += 1
        self.proc = subprocess.Popen(
            [args.psql, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=0", args.conninfo],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1, errors="replace")
        self.lines = collections.deque()
        threading.Thread(target=self.reader, args=(self.proc,), daemon=True).start()

    def reader(self, proc):
        for line in proc.stdout:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.lines.append(None)  # EOF
            self.cond.notify_all()

    def run(self, sql, n):
        """Output lines of one statement, or (lines, 'lost'/'timeout')."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        marker = f"@@{token} {n}"
        try:
            # In a transaction rolled back at once: the replay reads what sqlsmith saw and
            # leaves the data as it is (generated DELETEs would otherwise empty the tables).
            self.proc.stdin.write(f"BEGIN;\n{sql};\nROLLBACK;\n\\echo {marker}\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.kill()
            return [], "lost"
        deadline = time.time() + args.query_timeout
        out = []
        with self.cond:
            while True:
                while self.lines:
                    line = self.lines.popleft()
                    if line is None:
                        self.proc = None
                        return out, "lost"
                    if line.rstrip("\n") == marker:
                        return out, "ok"
                    out.append(line)
                left = deadline - time.time()
                if left <= 0:
                    self.kill()
                    return out, "timeout"
                self.cond.wait(timeout=left)

    def kill(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def close(self):
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()


s = Session()
counts = {"ok": 0, "lost": 0, "timeout": 0}
errors = with_rows = with_expect = 0
leaks = []
os.makedirs(args.out, exist_ok=True)
started = time.time()
slowest = []  # (seconds, n, how, output lines)
for n, sql in enumerate(statements, 1):
    t0 = time.time()
    out, how = s.run(sql, n)
    slowest = sorted(slowest + [(time.time() - t0, n, how, len(out))], reverse=True)[:3]
    counts[how] += 1
    text = "".join(out)
    low = text.lower()
    if any("ERROR:" in line for line in out):
        errors += 1
    elif out:
        with_rows += 1
    if expect in low:
        with_expect += 1
    hit = [f for f in forbid if f in low]
    if hit:
        leaks.append((n, hit, sql, text))
s.close()

print(f"  replayed {len(statements)} statements in {time.time() - started:.0f} s through "
      f"{s.starts} psql session(s): {counts['ok']} completed, {counts['lost']} lost their "
      f"connection, {counts['timeout']} timed out client-side")
print("  slowest: " + ", ".join(f"statement {n} {t:.1f} s ({how}, {lines} output lines)"
                               for t, n, how, lines in slowest))
print(f"  of the completed: {errors} errors, {with_rows} with output, "
      f"{with_expect} showing tenant A's own rows (positive control)")
for n, hit, sql, text in leaks[:5]:
    path = os.path.join(args.out, f"leak-{n}.sql")
    with open(path, "w") as f:
        f.write(sql + ";\n")
    print(f"  LEAK in statement {n} (saved as {path}): found {hit}; output starts:")
    print("    " + text[:800].replace("\n", "\n    "))
print(f"REPLAYED={len(statements)} LEAKS={len(leaks)} POSITIVE={with_expect}")
sys.exit(1 if leaks else 0)
