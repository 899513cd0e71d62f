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

LIBDIR=$("$PG_CONFIG" --pkglibdir)
if [ ! -f "$LIBDIR/citus.so" ] || [ ! -f "$("$PG_CONFIG" --sharedir)/extension/citus.control" ]; then
    msg="Citus suite: SKIPPED: Citus is not installed ($LIBDIR/citus.so or citus.control is missing); install Citus 13.2 for PostgreSQL $PG_MAJOR from Citus's packages to run it"
    if [ "$REQUIRE" = 1 ]; then
        die "${msg/SKIPPED: /}"
    fi
    printf '\033[1m%s\033[0m\n' "$msg"
    exit 0
fi

WORK=${TENANCY_CITUS_DIR:-/tmp/pg_tenancy-citus}
NODES=(coordinator worker1 worker2)
declare -A PORTS
stop_all() {
    local n
    for n in "${NODES[@]}"; do cluster_stop "$WORK/$n"; done
}
trap stop_all EXIT

for n in "${NODES[@]}"; do
    PORTS[$n]=$(free_port)
    log "starting Citus node $n on 127.0.0.1:${PORTS[$n]}"
    # Citus refuses to start unless it is first in shared_preload_libraries. Settings reach
    # the workers' connections only as SET LOCAL with propagate_set_commands = 'local'.
    cluster_start "$WORK/$n" "${PORTS[$n]}" "shared_preload_libraries = 'citus,pg_tenancy'
citus.propagate_set_commands = 'local'
max_prepared_transactions = 40
wal_level = logical"
done

psql_on() { # node, then psql arguments
    local n=$1
    shift
    "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${PORTS[$n]}" -U postgres "$@"
}
DB=tenancy_citus
for n in "${NODES[@]}"; do
    psql_on "$n" -d postgres -c "CREATE DATABASE $DB"
    psql_on "$n" -d "$DB" -c "CREATE EXTENSION citus"
done
psql_on coordinator -d "$DB" \
    -c "SELECT citus_set_coordinator_host('127.0.0.1', ${PORTS[coordinator]})" \
    -c "SELECT citus_add_node('127.0.0.1', ${PORTS[worker1]})" \
    -c "SELECT citus_add_node('127.0.0.1', ${PORTS[worker2]})" >/dev/null
# The suite's roles and pg_tenancy itself, created on the coordinator (Citus propagates roles
# and the extension to the workers).
psql_on coordinator -d "$DB" -f tests/citus/setup.sql

log "Citus suite (coordinator 127.0.0.1:${PORTS[coordinator]}, workers ${PORTS[worker1]}, ${PORTS[worker2]})"
cd tests/integration
PGHOST=127.0.0.1 PGPORT=${PORTS[coordinator]} TENANCY_IT_DB=$DB \
    TENANCY_CITUS_PORTS="${PORTS[coordinator]},${PORTS[worker1]},${PORTS[worker2]}" \
    cargo test --test citus --no-fail-fast -- --test-threads=2
