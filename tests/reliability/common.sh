# shellcheck shell=bash disable=SC2034,SC2153
# Shared by the reliability harnesses in tests/reliability (sourced, not run): the project's
# scripts/lib.sh, a superuser psql on the harness's throwaway cluster, HS256 token signing,
# and PASS/FAIL bookkeeping.
#
# A harness sets CLUSTER (directory under /tmp) and PORT, calls cluster_start, and ends with
# `summary NAME`, which prints every failed check and returns non-zero if there was one.

# shellcheck source=../../scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
RELIABILITY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

CHECKS_PASSED=0
CHECKS_FAILED=0
FAILED_CHECKS=()

# su_psql DB [psql args...]: superuser psql over the cluster's socket, unaligned, quiet,
# stopping at the first error.
su_psql() {
    local db=$1
    shift
    "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$CLUSTER" -p "$PORT" -U postgres -d "$db" "$@"
}

# check DESCRIPTION ACTUAL EXPECTED: one comparison, printed with both values.
check() {
    local what=$1 actual=$2 expected=$3
    if [ "$actual" = "$expected" ]; then
        CHECKS_PASSED=$((CHECKS_PASSED + 1))
        printf '  PASS  %s: %s\n' "$what" "$actual"
    else
        CHECKS_FAILED=$((CHECKS_FAILED + 1))
        FAILED_CHECKS+=("$what: got '$actual', expected '$expected'")
        printf '  FAIL  %s: got %s, expected %s\n' "$what" "$actual" "$expected"
    fi
}

# fail DESCRIPTION: a check that failed outright (a step that could not run).
fail() {
    CHECKS_FAILED=$((CHECKS_FAILED + 1))
    FAILED_CHECKS+=("$1")
    printf '  FAIL  %s\n' "$1"
}

# server_log_crashes: the lines of the server log that show a backend crash or assertion.
server_log_crashes() {
    grep -aE 'terminated by signal|was terminated by exception|server process .* was terminated|PANIC:|TRAP:|stuck spinlock' \
        "$CLUSTER/server.log" || true
}

summary() {
    local name=$1 f
    echo
    if [ "$CHECKS_FAILED" -eq 0 ]; then
        printf '\033[1m%s: PASS (%d checks passed)\033[0m\n' "$name" "$CHECKS_PASSED"
        return 0
    fi
    for f in "${FAILED_CHECKS[@]}"; do printf '  failed: %s\n' "$f"; done
    printf '\033[1m%s: FAIL (%d of %d checks failed; server log: %s)\033[0m\n' \
        "$name" "$CHECKS_FAILED" "$((CHECKS_PASSED + CHECKS_FAILED))" "$CLUSTER/server.log"
    return 1
}
