#!/usr/bin/env bash
# The benchmark command: builds a release of pg_tenancy, starts a throwaway PostgreSQL 15
# cluster with the settings below, generates the data set and runs every variant side by side.
#   benches/run.sh            full run (1,000 tenants x 1,000 rows; about 30 minutes); writes benches/RESULTS.md
#   benches/run.sh --smoke    tiny data, one short run (the test suite runs this; no timing asserted)
# Extra arguments go to benches/bench.py (--tenants, --rows, --runs, --seconds, --clients, ...).
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"

SMOKE=0
ARGS=()
for a in "$@"; do
    if [ "$a" = "--smoke" ]; then SMOKE=1; else ARGS+=("$a"); fi
done

# shared_buffers holds the whole data set (about 2 GB at the default size, plus what the write
# workloads add): with 1 GB, which variant's pages happened to be resident decided a sequential
# scan's speed (pg_tenancy / tuned measured 0.87 in a full run and 1.10 alone on the same data).
SETTINGS="shared_buffers = '4GB'
work_mem = '16MB'
maintenance_work_mem = '256MB'
effective_cache_size = '8GB'
max_parallel_workers_per_gather = 0
jit = off
autovacuum = off
max_wal_size = '8GB'"

if [ "$SMOKE" = 1 ]; then
    ensure_deps
    [ -n "${PGHOST:-}" ] || { log "building and installing pg_tenancy (debug)"; install_extension; }
    BUILD=debug
    ARGS=(--tenants 4 --rows 50 --runs 1 --seconds 1 --warmup 1 --clients 2 --scale-small 2 --scale-large 20
          --scale-rows-total 200 --tokens 2000 --cost-rounds 1 --cost-statements 200 --out "${TENANCY_BENCH_OUT:-/tmp/pg_tenancy-bench-smoke.md}" "${ARGS[@]}")
else
    ensure_deps
    log "building and installing pg_tenancy (release)"
    install_extension --release
    BUILD=release
fi

if [ -z "${PGHOST:-}" ] || [ "$SMOKE" = 0 ]; then
    DIR=${TENANCY_BENCH_DIR:-/tmp/pg_tenancy-bench}
    PORT=$(free_port)
    log "starting a throwaway PostgreSQL $PG_MAJOR cluster on port $PORT"
    cluster_start "$DIR" "$PORT" "$SETTINGS"
    trap 'cluster_stop "$DIR"' EXIT
    export PGHOST=$DIR PGPORT=$PORT
fi
export PGUSER=postgres
python3 benches/bench.py --build "$BUILD" --settings "$(echo "$SETTINGS" | tr '\n' ';' | sed 's/;/; /g') fsync = off; synchronous_commit = off; full_page_writes = off" "${ARGS[@]}"
