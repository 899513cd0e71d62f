#!/usr/bin/env bash
# The main job: install what is missing, build and install pg_tenancy, start a throwaway
# PostgreSQL 15 cluster (run by the unprivileged `postgres` user, on a free local port) and run
# a short demo of what the extension does. The cluster is left running for you to explore.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

ensure_deps
log "building and installing pg_tenancy"
install_extension

DIR=${TENANCY_DEMO_DIR:-/tmp/pg_tenancy-demo}
PORT=${TENANCY_DEMO_PORT:-$(free_port)}
log "starting a throwaway PostgreSQL $PG_MAJOR cluster in $DIR on port $PORT"
cluster_start "$DIR" "$PORT"
export PGHOST=$DIR PGPORT=$PORT PGUSER=postgres

"$PGBIN/psql" -q -d postgres -c "CREATE DATABASE demo"
log "running the demo (scripts/demo.sql)"
"$PGBIN/psql" -X -d demo -v ON_ERROR_STOP=0 --echo-all -f scripts/demo.sql 2>&1

cat <<MSG

The cluster is still running. Connect with:
    psql -h $DIR -p $PORT -U postgres demo
    psql -h $DIR -p $PORT -U demo_app demo       # the NOSUPERUSER NOBYPASSRLS application role
Stop it with:
    runuser -u postgres -- $PGBIN/pg_ctl -D $DIR/data stop
MSG
