#!/usr/bin/env bash
# Per-request overhead of pg_tenancy against the plain `WHERE tenant_id = $t` path, directly and
# through PgBouncer in transaction mode, with and without pipelining (issue #33: reads through
# PgBouncer within 1.2x, writes within 1.3x). Builds and installs a release of pg_tenancy, starts
# a throwaway PostgreSQL 15 cluster and a PgBouncer in front of it, loads benches/setup.sql's data
# and runs benches/pooler.py, which prints a table and writes benches/POOLER.md.
#
# What each side does, per request (one transaction, a random tenant, pgbench's extended protocol):
#   baseline    BEGIN;
#               SELECT * FROM bench_filter.orders
#                WHERE tenant_id = (SELECT tid FROM bench.tenants WHERE n = $t) AND id = $k;
#               COMMIT;
#   pg_tenancy  BEGIN;
#               SELECT tenancy.bind((SELECT token FROM bench.tenants WHERE n = $t)) IS NOT NULL;
#               SELECT * FROM bench_tenancy.orders WHERE id = $k;
#               COMMIT;
# Writes are the same with a one-row INSERT (the baseline names the tenant by the same lookup,
# pg_tenancy's tenant_id comes from the column default protect() sets). So each side looks its
# tenant up once, by one primary-key probe of bench.tenants (tid or token) in its first
# statement. Pipelined runs wrap the transaction in \startpipeline ... \endpipeline: one round
# trip per request on both sides, the bind in the same round trip as the query. The baseline and
# pg_tenancy always run side by side, at the same time; through PgBouncer each has its own pool.
#
#   benches/pooler.sh               full run (100 tenants x 1,000 rows, 5 rounds; about 8 minutes
#                                   after the build); writes benches/POOLER.md
#   benches/pooler.sh --smoke       tiny data, one short round; writes /tmp/pg_tenancy-pooler-smoke.md
#   benches/pooler.sh --no-install  use the pg_tenancy installed now (no build; the results say
#                                   "installed build"); combines with --smoke
# Extra arguments go to benches/pooler.py (--tenants, --rows, --rounds, --seconds, --clients,
# --protocol, --out, ...). Environment: TENANCY_POOLER_DIR (default /tmp/pg_tenancy-pooler),
# TENANCY_POOLER_PGPORT and TENANCY_POOLER_BOUNCER_PORT (default: free ports).
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

# benches/run.sh's settings, with shared_buffers for this smaller data set (it still holds all
# of it).
SETTINGS="shared_buffers = '1GB'
work_mem = '16MB'
maintenance_work_mem = '256MB'
effective_cache_size = '8GB'
max_parallel_workers_per_gather = 0
jit = off
autovacuum = off
max_wal_size = '8GB'"

ensure_deps
if [ "$SMOKE" = 1 ]; then
    BUILD=debug
    [ "$INSTALL" = 1 ] && { log "building and installing pg_tenancy (debug)"; install_extension; }
    ARGS=(--tenants 4 --rows 50 --rounds 1 --seconds 1 --warmup 0 --clients 4
          --out "${TENANCY_POOLER_OUT:-/tmp/pg_tenancy-pooler-smoke.md}" "${ARGS[@]}")
else
    BUILD=release
    [ "$INSTALL" = 1 ] && { log "building and installing pg_tenancy (release)"; install_extension --release; }
fi
[ "$INSTALL" = 1 ] || BUILD="installed (not rebuilt by this run)"

DIR=${TENANCY_POOLER_DIR:-/tmp/pg_tenancy-pooler}
PGPORT=${TENANCY_POOLER_PGPORT:-$(free_port)}
BOUNCER_PORT=${TENANCY_POOLER_BOUNCER_PORT:-$(free_port)}
[ "$PGPORT" != "$BOUNCER_PORT" ] || die "the cluster and PgBouncer need two different ports"
BOUNCER=$DIR/bouncer

stop_bouncer() {
    [ -f "$BOUNCER/pgbouncer.pid" ] && as_root kill "$(cat "$BOUNCER/pgbouncer.pid")" 2>/dev/null || true
}
trap 'stop_bouncer; cluster_stop "$DIR/pg"' EXIT

as_root mkdir -p "$DIR"
log "starting a throwaway PostgreSQL $PG_MAJOR cluster on port $PGPORT"
cluster_start "$DIR/pg" "$PGPORT" "$SETTINGS"

# Two database aliases of the same database, one per side of a pair, so that each side has its
# own pool (PgBouncer pools per database and user) and neither waits for the other's server
# connections. A pool as large as a side's clients: the run measures the work per request, not
# queueing in PgBouncer. The reset is the one the README's pooler guide gives.
CLIENTS=8
for ((i = 0; i < ${#ARGS[@]}; i++)); do
    [ "${ARGS[$i]}" = "--clients" ] && CLIENTS=${ARGS[$((i + 1))]}
done
POOL=$(( CLIENTS / 2 > 0 ? CLIENTS / 2 : 1 ))
BOUNCER_SETTINGS="pool_mode = transaction; server_reset_query = DISCARD ALL; server_reset_query_always = 1; pool_size = $POOL per side (one pool per side)"
log "starting PgBouncer in transaction mode on port $BOUNCER_PORT"
stop_bouncer
as_root rm -rf "$BOUNCER"
mkdir -p "$BOUNCER"
printf '"%s" ""\n' bench_app postgres > "$BOUNCER/users.txt"
cat > "$BOUNCER/pgbouncer.ini" <<INI
[databases]
pb_0 = host=$DIR/pg port=$PGPORT dbname=bench pool_size=$POOL
pb_1 = host=$DIR/pg port=$PGPORT dbname=bench pool_size=$POOL
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $BOUNCER/users.txt
pool_mode = transaction
default_pool_size = $POOL
max_client_conn = 200
server_reset_query = DISCARD ALL
server_reset_query_always = 1
ignore_startup_parameters = extra_float_digits,options
logfile = $BOUNCER/pgbouncer.log
pidfile = $BOUNCER/pgbouncer.pid
INI
as_root chown -R postgres:postgres "$BOUNCER"
as_root runuser -u postgres -- /usr/sbin/pgbouncer -d "$BOUNCER/pgbouncer.ini"
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$BOUNCER_PORT") 2>/dev/null && break; sleep 0.1; done

export PGUSER=postgres
python3 benches/pooler.py --pghost "$DIR/pg" --pgport "$PGPORT" --bouncer-port "$BOUNCER_PORT" --build "$BUILD" \
    --settings "$(echo "$SETTINGS" | tr '\n' ';' | sed 's/;/; /g') fsync = off; synchronous_commit = off; full_page_writes = off" \
    --bouncer-settings "$BOUNCER_SETTINGS" "${ARGS[@]}"
