#!/usr/bin/env bash
# The Citus suite: pg_tenancy on a local Citus cluster of three nodes (a coordinator and two
# workers, each a throwaway PostgreSQL 15 cluster on a loopback port, preloading
# `citus,pg_tenancy` in that order), tested by clients over sockets as NOSUPERUSER roles
# (tests/citus/citus.rs, run through the integration crate).
#
#   tests/citus/run.sh            runs the suite where Citus is installed; otherwise prints one
#                                 line saying it was skipped and why, and succeeds
#   tests/citus/run.sh --require  the same, but fails where Citus is missing
#                                 (scripts/test.sh --citus)
#
# Citus is not in the package registries CI reaches: install it from Citus's own packages
# (Citus 13.2, the last release for PostgreSQL 15). The extension pg_tenancy must be installed.
set -euo pipefail
source "$(dirname "$0")/../../scripts/lib.sh"
cd "$REPO_ROOT"

REQUIRE=0
case "${1:-}" in
    "") ;;
    --require) REQUIRE=1 ;;
    *) die "usage: $0 [--require]" ;;
esac

if ! citus_installed; then
    msg="Citus suite: SKIPPED: Citus is not installed ($("$PG_CONFIG" --pkglibdir)/citus.so or citus.control is missing); install Citus 13.2 for PostgreSQL $PG_MAJOR from Citus's packages to run it"
    if [ "$REQUIRE" = 1 ]; then
        die "${msg/SKIPPED: /}"
    fi
    printf '\033[1m%s\033[0m\n' "$msg"
    exit 0
fi

WORK=${TENANCY_CITUS_DIR:-/tmp/pg_tenancy-citus}
DB=tenancy_citus
trap 'citus_cluster_stop "$WORK"' EXIT
# Citus's distributed deadlock detector writes the cycle it broke to the node's log (printed
# below when the suite fails).
CITUS_EXTRA_SETTINGS="citus.log_distributed_deadlock_detection = on
${CITUS_EXTRA_SETTINGS:-}" citus_cluster_start "$WORK" "$DB"
# The suite's roles and pg_tenancy itself, created on the coordinator (Citus propagates roles
# and the extension to the workers).
"$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${CITUS_PORTS[0]}" -U postgres -d "$DB" \
    -f tests/citus/setup.sql

log "Citus suite (coordinator 127.0.0.1:${CITUS_PORTS[0]}, workers ${CITUS_PORTS[1]}, ${CITUS_PORTS[2]})"
cd tests/integration
# One test at a time: two tests' DDL and writes to pg_tenancy's reference tables at once can
# meet in a distributed deadlock, which Citus resolves by cancelling one of them (seen in CI).
PGHOST=127.0.0.1 PGPORT=${CITUS_PORTS[0]} TENANCY_IT_DB=$DB \
    TENANCY_CITUS_PORTS="$(IFS=,; echo "${CITUS_PORTS[*]}")" \
    cargo test --test citus --no-fail-fast -- --test-threads=1 || {
    rc=$?
    for n in coordinator worker1 worker2; do
        grep -h -B2 -A12 -i "deadlock" "$WORK/$n/server.log" 2>/dev/null | sed "s/^/$n: /" | tail -n 80 || true
    done
    exit "$rc"
}
