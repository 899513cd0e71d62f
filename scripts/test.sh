#!/usr/bin/env bash
# Runs every test of pg_tenancy and exits non-zero on any failure:
#   1. formatting and lints          (cargo fmt --check, cargo clippy)
#   2. unit and #[pg_test] tests      (cargo pgrx test, backends run by the `postgres` user)
#   3. pg_regress suite               (tests/pg_regress, against a throwaway cluster)
#   4. client integration tests       (tests/integration, NOSUPERUSER NOBYPASSRLS roles over sockets)
#   5. the examples                   (examples/run.sh: Python and Node through PgBouncer, the
#                                      CI gate and its pgTAP test, the monitoring collector, pgrls)
#   6. the upgrade test               (tests/upgrade/run.sh: 0.1.0 -> this version)
#   7. reliability harnesses          (tests/reliability: pgbench soak, SIGKILL faults, sqlsmith)
#   8. the benchmarks in smoke mode   (benches/run.sh, benches/pooler.sh, benches/scale.sh,
#                                      benches/telemetry.sh and,
#                                      where Citus is installed, benches/citus.sh --smoke)
#   9. the Citus suite                (tests/citus/run.sh: a local coordinator and two workers;
#                                      skipped, with one line saying so, where Citus is not
#                                      installed)
# Installs whatever is missing first (Debian packages, cargo-pgrx). Idempotent.
#
#   scripts/test.sh           the whole suite (about 5 minutes when built)
#   scripts/test.sh --long    the same, with the reliability harnesses in their long mode
#                             (10 minutes each: soak with 16 clients, fault cycles, sqlsmith)
#   scripts/test.sh --citus   the Citus suite alone; fails where Citus is not installed (Citus
#                             is in no Debian registry: install it from Citus's packages)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

LONG=()
CITUS_ONLY=0
case "${1:-}" in
    "") ;;
    --long) LONG=(--long) ;;
    --citus) CITUS_ONLY=1 ;;
    *) die "usage: $0 [--long | --citus]" ;;
esac

ensure_deps

if [ "$CITUS_ONLY" = 1 ]; then
    log "installing the extension"
    install_extension
    exec tests/citus/run.sh --require
fi

# A CI run builds once from a clean clone: incremental compilation caches would only take disk.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi

WORK=${TENANCY_TEST_DIR:-/tmp/pg_tenancy-test}
PORT=$(free_port)
steps_failed=0
failures=()
tests_passed=0
tests_failed=0
trap 'cluster_stop "$WORK/cluster"; cluster_stop "$WORK/fresh"; cluster_stop "$WORK/preloaded"' EXIT

# Run one step, keep its output, and add up the tests its runner reports.
run_step() {
    local name=$1
    shift
    log "$name"
    local out="$WORK/step.log"
    mkdir -p "$WORK"
    if "$@" 2>&1 | tee "$out"; then :; else
        steps_failed=$((steps_failed + 1))
        failures+=("$name")
    fi
    local p f
    p=$( (grep -aoE 'test result: [a-zA-Z]+\. [0-9]+ passed' "$out" || true) | awk '{s+=$4} END {print s+0}')
    f=$( (grep -aoE '[0-9]+ failed;' "$out" || true) | awk '{s+=$1} END {print s+0}')
    # reliability harnesses: one summary line each
    p=$((p + $(grep -acE ': PASS \([0-9]+ checks passed\)' "$out" || true)))
    f=$((f + $(grep -acE ': FAIL \([0-9]+ of [0-9]+ checks failed' "$out" || true)))
    # pg_regress: "ok"/"FAILED" per test
    p=$((p + $(grep -acE '^test .* \.\.\. ok +[0-9]+ ms$' "$out" || true)))
    f=$((f + $(grep -acE '^test .* \.\.\. FAILED +[0-9]+ ms$' "$out" || true)))
    tests_passed=$((tests_passed + p))
    tests_failed=$((tests_failed + f))
}

run_step "cargo fmt --check" cargo fmt --check
run_step "cargo clippy" cargo clippy --all-targets --features "pg15 pg_test" --no-default-features -- -D warnings
# pgrx initdb's its cluster as `postgres` in a directory of its own under --pgdata, which
# `postgres` must be able to create: on a machine where $WORK is new it is root's.
as_root mkdir -p "$WORK/pgrx-data"
as_root chown postgres:postgres "$WORK/pgrx-data"
# pgrx's installer rewrites the installed library in place; detach it first so a server
# elsewhere on the machine that has it loaded keeps its own copy.
detach_installed_library
run_step "unit and #[pg_test] tests" \
    cargo pgrx test pg15 --runas postgres --pgdata "$WORK/pgrx-data"

log "installing the extension"
install_extension

log "starting a throwaway PostgreSQL $PG_MAJOR cluster on port $PORT"
# pg_stat_statements is preloaded so the attack suite can show it never exposes another
# tenant's constants; prepared transactions are enabled for the audit chain's lane test. The
# server runs with RUST_BACKTRACE=1: no error a client sees may carry a backtrace anyway.
CLUSTER_ENV="RUST_BACKTRACE=1" cluster_start "$WORK/cluster" "$PORT" "shared_preload_libraries = 'pg_stat_statements'
max_prepared_transactions = 8"
export PGHOST="$WORK/cluster" PGPORT="$PORT" PGUSER=postgres

regress() {
    local out="$WORK/regress-out"
    rm -rf "$out"
    mkdir -p "$out"
    chmod 777 "$out"
    local tests
    tests=$(cd tests/pg_regress/sql && ls *.sql | sed 's/\.sql$//' | sort)
    if ! "$(dirname "$PG_CONFIG")/../lib/pgxs/src/test/regress/pg_regress" \
        --host="$PGHOST" --port="$PGPORT" --user=postgres --bindir="$PGBIN" \
        --inputdir=tests/pg_regress --outputdir="$out" --dbname=tenancy_regress $tests; then
        [ -f "$out/regression.diffs" ] && cat "$out/regression.diffs"
        return 1
    fi
}
run_step "pg_regress" regress

integration() {
    "$PGBIN/psql" -q -v ON_ERROR_STOP=1 -d postgres -f tests/integration/setup.sql
    # A second, freshly initialised cluster: restore.rs restores a dump into it.
    local fresh_port
    fresh_port=$(free_port)
    cluster_start "$WORK/fresh" "$fresh_port"
    # A third, with pg_tenancy in shared_preload_libraries (as production runs it): security
    # events in shared memory and their log table, and refusals that need the library loaded
    # before a session's first statement (LOCK TABLE); prepared transactions for the
    # telemetry's count of a two-phase commit.
    local pre_port
    pre_port=$(free_port)
    cluster_start "$WORK/preloaded" "$pre_port" "shared_preload_libraries = 'pg_tenancy'
max_prepared_transactions = 4"
    PGHOST="$WORK/preloaded" PGPORT="$pre_port" \
        "$PGBIN/psql" -q -v ON_ERROR_STOP=1 -d postgres -f tests/integration/setup.sql
    (cd tests/integration && TENANCY_IT_DB=tenancy_it TENANCY_FRESH_PGHOST="$WORK/fresh" \
        TENANCY_FRESH_PGPORT="$fresh_port" TENANCY_PRELOADED_PGHOST="$WORK/preloaded" \
        TENANCY_PRELOADED_PGPORT="$pre_port" TENANCY_SERVER_LOG="$WORK/cluster/server.log" \
        cargo test --no-fail-fast -- --test-threads=4)
}
run_step "integration tests" integration

# pg_tenancy on a local Citus cluster (a coordinator and two workers), where Citus is installed.
run_step "Citus suite" tests/citus/run.sh

# The examples an application developer starts from (Python and Node behind PgBouncer in
# transaction mode; their packages from PyPI and npm), with their leak checks, then the governance
# gate: on a cluster of their own, since the gate asserts that no platform role anywhere in the
# cluster holds combinable duties, and the integration tests leave such roles behind on purpose.
run_step "examples" env -u PGHOST -u PGPORT examples/run.sh --no-install

# The upgrade from the last release: its build and committed SQL, ALTER EXTENSION UPDATE, the
# result compared with a fresh install (its own cluster).
run_step "upgrade" tests/upgrade/run.sh

# Reliability harnesses (each on its own throwaway cluster, with the installed extension).
run_step "reliability: concurrency soak" tests/reliability/soak.sh "${LONG[@]}"
run_step "reliability: crash faults" tests/reliability/faults.sh "${LONG[@]}"
run_step "reliability: sqlsmith" tests/reliability/sqlsmith.sh "${LONG[@]}"

# The benchmark in smoke mode (tiny data, one short run) so that it cannot rot; no timing is
# asserted.
run_step "benchmark smoke" benches/run.sh --smoke
run_step "pooler benchmark smoke" benches/pooler.sh --smoke --no-install
run_step "scale benchmark smoke (10,000 tenants)" benches/scale.sh --smoke --no-install
run_step "telemetry benchmark smoke" benches/telemetry.sh --smoke
run_step "Citus benchmark smoke" benches/citus.sh --smoke

echo
for f in "${failures[@]}"; do echo "FAILED step: $f"; done
[ "$steps_failed" -eq 0 ] || [ "$tests_failed" -gt 0 ] || tests_failed=$steps_failed
echo "tests: $tests_passed passed, $tests_failed failed"
[ "$steps_failed" -eq 0 ]
