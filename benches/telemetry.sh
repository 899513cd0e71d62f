#!/usr/bin/env bash
# Telemetry on against off, side by side (issue #30's bound: at most 3% of throughput).
#   benches/telemetry.sh            release build, a cluster that preloads pg_tenancy; writes benches/TELEMETRY.md
#   benches/telemetry.sh --smoke    the installed build, tiny data, one short round (no timing asserted)
# Extra arguments go to benches/telemetry.py (--tenants, --rows, --runs, --seconds, --clients).
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"

SMOKE=0
ARGS=()
for a in "$@"; do
    if [ "$a" = "--smoke" ]; then SMOKE=1; else ARGS+=("$a"); fi
done
# The settings of benches/run.sh, plus the preload telemetry needs.
SETTINGS="shared_preload_libraries = 'pg_tenancy'
shared_buffers = '1GB'
work_mem = '16MB'
max_parallel_workers_per_gather = 0
jit = off
autovacuum = off
max_wal_size = '8GB'
fsync = off
synchronous_commit = off
full_page_writes = off"

ensure_deps
DIR=${TENANCY_BENCH_DIR:-/tmp/pg_tenancy-telemetry-bench}
# Installing rewrites the library a preloading server has mapped: stop ours first.
cluster_stop "$DIR" 2>/dev/null || true
if [ "$SMOKE" = 1 ]; then
    BUILD=debug
    ARGS=(--tenants 4 --rows 50 --runs 1 --seconds 1 --warmup 1 --clients 2
          --out "${TENANCY_BENCH_OUT:-/tmp/pg_tenancy-telemetry-smoke.md}" "${ARGS[@]}")
else
    log "building and installing pg_tenancy (release)"
    install_extension --release
    BUILD=release
fi
PORT=$(free_port)
log "starting a throwaway PostgreSQL $PG_MAJOR cluster preloading pg_tenancy on port $PORT"
cluster_start "$DIR" "$PORT" "$SETTINGS"
trap 'cluster_stop "$DIR"' EXIT
export PGHOST=$DIR PGPORT=$PORT PGUSER=postgres
python3 benches/telemetry.py --build "$BUILD" "${ARGS[@]}"
