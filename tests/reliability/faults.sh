#!/usr/bin/env bash
# Crash faults under write load (issue #7, item 4).
#
#   tests/reliability/faults.sh          short mode: two cycles of faults, about 35 s in all
#   tests/reliability/faults.sh --long   long mode: fault cycles for 10 minutes
#   FAULTS_SECONDS=N FAULTS_WRITERS=N    override the long duration / the writer count (4)
#   FAULTS_SEED=N                        replay a run's random choices (the seed is printed)
#
# A durable cluster (fsync, synchronous_commit, full_page_writes on) takes write load from
# writers bound to random tenants as a NOSUPERUSER NOBYPASSRLS role over TCP loopback, while
# faults.py kills (A) a backend in the middle of a write transaction and (B) the postmaster
# itself, and restarts it. After recovery it checks, against its record of which transactions
# were acknowledged, rolled back or in doubt (faults.py's docstring has the method):
#   - no acknowledged row is missing, nothing from a rolled-back transaction is present, an
#     in-doubt transaction is present as a whole or not at all;
#   - the audit trail matches exactly: one INSERT record per committed row, one DELETE record
#     per committed delete, nothing else, in the right tenant, one txid per transaction;
#   - audit_verify() is ok for every tenant;
# and the server log shows no PANIC, assertion failure or crash other than our SIGKILLs.
# Runs its own throwaway cluster in /tmp/pg_tenancy-faults on a free port; stops it on exit.
set -euo pipefail
source "$(dirname "$0")/common.sh"

DURATION=0
if [ "${1:-}" = "--long" ]; then
    DURATION=${FAULTS_SECONDS:-600}
elif [ -n "${1:-}" ]; then
    die "usage: $0 [--long]"
fi
WRITERS=${FAULTS_WRITERS:-4}
NTENANTS=5
SECRET='faults-secret-faults-secret-faults-secret-0123'
CLUSTER=/tmp/pg_tenancy-faults
PORT=$(free_port)
started=$(date +%s)

trap 'cluster_stop "$CLUSTER"' EXIT
log "faults: starting a durable throwaway cluster in $CLUSTER on port $PORT"
# Later lines override lib.sh's non-durable defaults.
cluster_start "$CLUSTER" "$PORT" "fsync = on
synchronous_commit = on
full_page_writes = on
restart_after_crash = on"
check "durability settings (fsync, synchronous_commit, full_page_writes)" \
    "$(su_psql postgres -c "SELECT string_agg(setting, ',' ORDER BY name) FROM pg_settings
                            WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes')")" "on,on,on"

log "faults: schema and $NTENANTS tenants"
su_psql postgres -c 'CREATE DATABASE faults'
su_psql faults >/dev/null <<SQL
CREATE EXTENSION pg_tenancy;
CREATE ROLE fault_app LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
SELECT tenancy.add_key('faults', 'HS256', '$SECRET');
SELECT count(tenancy.create_tenant(format('fault-%s', g), settings => '{"default_roles": ["member"]}')) FROM generate_series(1, $NTENANTS) g;
-- Rows are keyed by the driver's (writer, transaction, row) numbers; tenant_id comes from the
-- binding, claimed_tenant from the driver.
CREATE TABLE fault_rows (
    tenant_id      uuid NOT NULL,
    writer         int  NOT NULL,
    txno           int  NOT NULL,
    i              int  NOT NULL,
    claimed_tenant uuid NOT NULL,
    payload        text NOT NULL,
    PRIMARY KEY (tenant_id, writer, txno, i)
);
CREATE INDEX ON fault_rows (tenant_id, writer, txno);
SELECT tenancy.protect('public.fault_rows');
GRANT SELECT, INSERT, UPDATE, DELETE ON fault_rows TO fault_app;
SQL

log "faults: write load with faults ($WRITERS writers)"
driver_rc=0
python3 "$RELIABILITY_DIR/faults.py" --pgbin "$PGBIN" --cluster "$CLUSTER" --port "$PORT" --db faults \
    --app-role fault_app --secret "$SECRET" --kid faults --writers "$WRITERS" --duration "$DURATION" \
    ${FAULTS_SEED:+--seed "$FAULTS_SEED"} || driver_rc=$?
check "driver checks (listed above)" "$driver_rc" 0

log "faults: server log"
echo "  backends terminated by our SIGKILL: $(grep -ac 'terminated by signal 9' "$CLUSTER/server.log" || true)"
check "crash lines other than our SIGKILLs (PANIC, TRAP, other signals)" \
    "$(server_log_crashes | grep -avc 'terminated by signal 9' || true)" 0
{ server_log_crashes | grep -av 'terminated by signal 9' || true; } | head -5 | sed 's/^/    /'

echo "  elapsed: $(($(date +%s) - started)) s"
summary "faults ($([ "$DURATION" -gt 0 ] && echo "${DURATION}s" || echo short))"
