#!/usr/bin/env bash
# Runs every test of pg_tenancy and exits non-zero on any failure:
#   1. formatting and lints          (cargo fmt --check, cargo clippy)
#   2. unit and #[pg_test] tests      (cargo pgrx test, backends run by the `postgres` user)
#   3. pg_regress suite               (tests/pg_regress, against a throwaway cluster)
#   4. client integration tests       (tests/integration, NOSUPERUSER NOBYPASSRLS roles over sockets)
# Installs whatever is missing first (Debian packages, cargo-pgrx). Idempotent.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

ensure_deps

WORK=${TENANCY_TEST_DIR:-/tmp/pg_tenancy-test}
PORT=$(free_port)
passed=0
failed=0
failures=()
trap 'cluster_stop "$WORK/cluster"' EXIT

run_step() {
    local name=$1
    shift
    log "$name"
    if "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        failures+=("$name")
    fi
}

run_step "cargo fmt --check" cargo fmt --check
run_step "cargo clippy" cargo clippy --all-targets --features "pg15 pg_test" --no-default-features -- -D warnings
run_step "unit and #[pg_test] tests" \
    cargo pgrx test pg15 --runas postgres --pgdata "$WORK/pgrx-data"

log "installing the extension"
install_extension

log "starting a throwaway PostgreSQL $PG_MAJOR cluster on port $PORT"
cluster_start "$WORK/cluster" "$PORT"
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
    (cd tests/integration && TENANCY_IT_DB=tenancy_it cargo test -- --test-threads=4)
}
run_step "integration tests" integration

echo
for f in "${failures[@]}"; do echo "FAILED: $f"; done
echo "tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
