#!/usr/bin/env bash
# A/B rounds with the server and the load generator on separate cores, for decomposing a gap
# the full benchmark shows (benches/README.md, "Binding per transaction"). With pgbench and the
# backends sharing the cores, a run's speed depends on how the scheduler places them; pinned,
# the server's cores stay busy and tps follows the server's cost per transaction. Not a
# replacement for benches/run.sh: on a small machine the client core can become the limit for
# cheap statements.
#
#   benches/pinned.sh ROUNDS SECONDS SCRIPT:USER [SCRIPT:USER ...]
#
# Runs on the cluster benches/run.sh left in $TENANCY_BENCH_DIR (default /tmp/pg_tenancy-bench),
# starting it if it is stopped and stopping it again at the end. The server gets every core but
# the last, pgbench the last. Each run is `pgbench -T SECONDS -P 1` with 4 clients; its figure
# is the median of the per-second tps from the third second on. PGBENCH_ARGS adds arguments
# (for example "-D ntenants=1000 -D nrows=1000"). Prints one line per round. The server runs
# the pg_tenancy library installed now: benches/run.sh installs a release build, scripts/test.sh
# a debug one.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"

[ $# -ge 3 ] || die "usage: $0 ROUNDS SECONDS SCRIPT:USER [SCRIPT:USER ...]"
ROUNDS=$1
SECONDS_PER_RUN=$2
shift 2
DIR=${TENANCY_BENCH_DIR:-/tmp/pg_tenancy-bench}
[ -f "$DIR/data/postgresql.conf" ] || die "no bench cluster in $DIR: run benches/run.sh first"
CORES=$(nproc)
[ "$CORES" -ge 2 ] || die "needs at least 2 cores"
SERVER_CPUS="0-$((CORES - 2))"
CLIENT_CPU=$((CORES - 1))

started=0
if ! as_root runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
    as_root env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE runuser -u postgres -- \
        "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w start >/dev/null
    started=1
fi
postmaster=$(head -1 "$DIR/data/postmaster.pid")
pin() { # pin the postmaster and its children; new backends inherit the postmaster's cores
    for pid in "$postmaster" $(pgrep -P "$postmaster"); do taskset -a -cp "$1" "$pid" >/dev/null; done
}
cleanup() {
    pin "0-$((CORES - 1))" || true
    if [ "$started" = 1 ]; then cluster_stop "$DIR"; fi
}
trap cleanup EXIT
pin "$SERVER_CPUS"

PGPORT=$(sed -n 's/^port = \([0-9]*\).*/\1/p' "$DIR/data/postgresql.conf" | tail -1)
export PGHOST=$DIR PGPORT
read -r -a extra <<<"${PGBENCH_ARGS:-}"
for round in $(seq 1 "$ROUNDS"); do
    line="round $round:"
    for spec in "$@"; do
        script=${spec%%:*}
        user=${spec##*:}
        "$PGBIN/psql" -X -q -U postgres -d postgres -c CHECKPOINT
        tps=$(taskset -c "$CLIENT_CPU" "$PGBIN/pgbench" -n -P 1 -c 4 -j 2 -T "$SECONDS_PER_RUN" \
                "${extra[@]}" -f "$script" -U "$user" bench 2>&1 |
            sed -n 's/^progress: \([0-9]*\)\.0 s, \([0-9.]*\) tps.*/\1 \2/p' |
            awk '$1 >= 3 { print $2 }' | sort -n |
            awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "n/a" }')
        line="$line $(basename "$script" .sql)=$tps"
    done
    echo "$line"
done
