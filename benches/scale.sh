#!/usr/bin/env bash
# Tenant scale (issue #31): bind+read throughput at 1,000, 10,000 and 100,000 tenants, quiet and
# under 10 management changes a second; a backend's memory after binding many tenants; a new
# connection's first bind. Builds and installs a release of pg_tenancy, starts a throwaway
# PostgreSQL 15 cluster and runs benches/scale.py, which prints a table and writes
# benches/SCALE.md.
#
#   benches/scale.sh                 full run (about 15 minutes after the build)
#   benches/scale.sh --smoke         1,000 and 10,000 tenants, one short round (the test suite's functional
#                                    check; no timing asserted); writes /tmp/pg_tenancy-scale-smoke.md
#   benches/scale.sh --no-install    use the pg_tenancy installed now (no build); combines with --smoke
# Extra arguments go to benches/scale.py (--counts 1000,10000,100000,1000000, --rounds,
# --seconds, --churn, ...). Environment: TENANCY_SCALE_DIR (default /tmp/pg_tenancy-scale),
# TENANCY_SCALE_PGPORT (default: a free port).
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"

SMOKE=0
INSTALL=1
ARGS=()
for a in "$@"; do
    case "$a" in
        --smoke) SMOKE=1 ;;
        --no-install) INSTALL=0 ;;
        *) ARGS+=("$a") ;;
    esac
done

# The tenants and their rows stay in memory; autovacuum off so that no ANALYZE of pg_tenancy's
# catalog (a relcache invalidation of the table) lands in one run and not the other.
SETTINGS="shared_buffers = '2GB'
work_mem = '16MB'
maintenance_work_mem = '256MB'
max_parallel_workers_per_gather = 0
jit = off
autovacuum = off
max_wal_size = '8GB'"

ensure_deps
if [ "$SMOKE" = 1 ]; then
    BUILD=debug
    [ "$INSTALL" = 1 ] && { log "building and installing pg_tenancy (debug)"; install_extension; }
    ARGS=(--counts 1000,10000 --rounds 1 --seconds 2 --rss-tenants 300 --first-binds 20
          --out "${TENANCY_SCALE_OUT:-/tmp/pg_tenancy-scale-smoke.md}" "${ARGS[@]}")
else
    BUILD=release
    [ "$INSTALL" = 1 ] && { log "building and installing pg_tenancy (release)"; install_extension --release; }
fi
[ "$INSTALL" = 1 ] || BUILD="installed (not rebuilt by this run)"

DIR=${TENANCY_SCALE_DIR:-/tmp/pg_tenancy-scale}
PGPORT=${TENANCY_SCALE_PGPORT:-$(free_port)}
trap 'cluster_stop "$DIR/pg"' EXIT
as_root mkdir -p "$DIR"
log "starting a throwaway PostgreSQL $PG_MAJOR cluster on port $PGPORT"
cluster_start "$DIR/pg" "$PGPORT" "$SETTINGS"
python3 benches/scale.py --pghost "$DIR/pg" --pgport "$PGPORT" --build "$BUILD" \
    --settings "$(echo "$SETTINGS" | tr '\n' ';' | sed 's/;/; /g')" "${ARGS[@]}"
