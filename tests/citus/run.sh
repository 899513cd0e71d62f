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
# Every statement is logged, with the client's name (Citus's own connections are
# `citus_internal`), for the check of what Citus sent to the nodes at the end.
CITUS_EXTRA_SETTINGS="citus.log_distributed_deadlock_detection = on
log_statement = 'all'
log_line_prefix = '%m [%p] user=%u app=%a '
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

# The statements Citus printed again and sent to a node over its own connections, where they
# run with the node's default search_path, often as the superuser: one that touches
# pg_tenancy's objects must call no function of pg_catalog that has an overload taking a
# pseudo-type (polymorphic or "any") unqualified, where a role's exact-typed function of that
# name in public would be chosen instead (unnest, array_remove and array_agg were, each found
# by an attacker's pass). The calls listed below have an exact overload in pg_catalog for the
# arguments they are printed with (count() of no argument; min and max of bigint and
# timestamptz), which no function elsewhere on the path can beat.
cd "$REPO_ROOT"
poly=$("$PGBIN/psql" -X -At -h 127.0.0.1 -p "${CITUS_PORTS[0]}" -U postgres -d "$DB" -c \
    "SELECT string_agg(DISTINCT p.proname, '|') FROM pg_catalog.pg_proc p
      WHERE p.pronamespace = 'pg_catalog'::regnamespace
        AND EXISTS (SELECT FROM unnest(p.proargtypes::oid[]) a JOIN pg_catalog.pg_type t ON t.oid = a
                     WHERE t.typtype = 'p' AND t.typname NOT IN ('internal', 'cstring'))")
exact='count(*)
max(l.occurred_at)
max(r.occurred_at)
max(x.x)
min(c2.seq)'
found=$(for n in coordinator worker1 worker2; do grep -h 'app=citus_internal' "$WORK/$n/server.log" || true; done |
    grep -E '(statement|execute [^:]*): ' | sed -E 's/^.*(statement|execute [^:]*): //' | grep 'tenancy\.' |
    grep -oP "(?<![.\w\"])($poly)\([^()]*(\([^()]*\))?[^()]*\)" | grep -v -x -F -e "$exact" | sort | uniq -c || true)
if [ -n "$found" ]; then
    printf '%s\n' "$found"
    die "Citus sent the nodes pg_tenancy's statements calling pg_catalog functions that a function in public can take over (above, with their counts; the statements are in $WORK/*/server.log)"
fi
log "Citus suite: no statement sent to a node calls a pg_catalog function a function in public could take over"

