#!/usr/bin/env python3
"""Telemetry on against off (issue #30's bound: at most 3% of throughput), side by side.

Run through benches/telemetry.sh, which builds a release, starts a cluster that preloads
pg_tenancy (telemetry needs its shared memory) and calls this. It reuses bench.py's data set and
workloads: the point lookup in a bound session, the point lookup with a bind per transaction
(random tenants) and the single-row insert with a bind per transaction. Each runs twice at the
same time, half the clients each: as a role with `tenancy.telemetry` on, and as the same
privileges in a role with it off (`ALTER ROLE ... SET`, which only a superuser can do), for
--runs rounds; a round's ratio is on / off. A control runs "on" against itself.
"""
import argparse
import datetime
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def with_user(pgbench_args, user):
    args, env, mode = pgbench_args
    args = list(args)
    args[args.index("-U") + 1] = user
    return args, env, mode


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tenants", type=int, default=200)
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--scale-small", type=int, default=2)
    p.add_argument("--scale-large", type=int, default=4)
    p.add_argument("--scale-rows-total", type=int, default=100)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "TELEMETRY.md"))
    p.add_argument("--settings", default="")
    p.add_argument("--build", default="release")
    a = p.parse_args()
    b = bench.Bench(a)
    b.setup()
    on = b.psql("SHOW tenancy.telemetry", db="bench", user="bench_app")
    if on != "on":
        sys.exit(f"tenancy.telemetry is {on!r} for bench_app: is pg_tenancy preloaded?")
    # The same privileges, telemetry off: members of the roles the workloads run as.
    b.psql("""
        DROP ROLE IF EXISTS bench_app_notel;
        DROP ROLE IF EXISTS bench_mapped_notel;
        CREATE ROLE bench_app_notel LOGIN NOSUPERUSER NOBYPASSRLS IN ROLE bench_app;
        CREATE ROLE bench_mapped_notel LOGIN NOSUPERUSER NOBYPASSRLS IN ROLE bench_mapped;
        ALTER ROLE bench_app_notel SET tenancy.telemetry = off;
        ALTER ROLE bench_mapped_notel SET tenancy.telemetry = off;
    """, db="postgres")
    b.psql(f"SELECT tenancy.map_role('bench_mapped_notel', '{b.tid}')")
    off = b.psql("SHOW tenancy.telemetry", db="bench", user="bench_app_notel")
    if off != "off":
        sys.exit(f"tenancy.telemetry is {off!r} for bench_app_notel")
    pairs = []
    for w, label in (("point", "point lookup, bound session"),
                     ("binding", "point lookup, bind per transaction"),
                     ("insertbind", "single-row insert, bind per transaction")):
        args = b.pgbench_args(w, "tenancy", a.tenants, a.rows)
        user = args[0][args[0].index("-U") + 1]
        pairs.append(((w, "on", "off", label), with_user(args, user + "_notel"), args))
    control = b.pgbench_args("binding", "tenancy", a.tenants, a.rows)
    pairs.append((("binding", "on", "on", "control: bind per transaction, on against on"), control, control))
    # bench.side_by_side labels by (workload, other, base).
    out = b.side_by_side([((l[0], l[1], l[2]), base, other) for l, base, other in pairs])
    lines = ["| workload | on / off: median | range | rounds | cost (1 - median) |", "|---|---:|---|---:|---:|"]
    for (w, o, f, label), _, _ in pairs:
        r = out[(w, o, f)]
        med = statistics.median(r)
        lines.append(f"| {label} | {med:.3f} | {min(r):.3f} to {max(r):.3f} | {len(r)} | {100 * (1 - med):.1f}% |")
    doc = "\n".join([
        "# Telemetry on / off",
        "",
        f"{datetime.date.today()}, {a.build} build, {a.tenants} tenants x {a.rows} rows, "
        f"{a.clients} clients ({max(1, a.clients // 2)} per side), {a.runs} rounds of {a.seconds} s, "
        "side by side (see benches/README.md). Bound: cost at most 3%, that is on / off at least 0.97.",
        "",
        *lines,
        "",
    ])
    print(doc)
    with open(a.out, "w") as f:
        f.write(doc)
    print(f"written: {a.out}")


if __name__ == "__main__":
    main()
