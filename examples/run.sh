#!/usr/bin/env bash
# Runs the examples (examples/python, examples/node) as the test suite does: a database with the
# notes schema, PgBouncer in front of it in transaction mode, each example's packages installed
# from PyPI and npm, and each example's checks (no foreign row read or written, forged writes
# refused). Uses the cluster in PGHOST/PGPORT when set (scripts/test.sh's), or starts one.
#
#   examples/run.sh
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"

WORK=${TENANCY_EXAMPLES_DIR:-/tmp/pg_tenancy-examples}
mkdir -p "$WORK"
if [ -z "${PGHOST:-}" ]; then
    ensure_deps
    install_extension
    PORT=$(free_port)
    cluster_start "$WORK/cluster" "$PORT"
    trap 'cluster_stop "$WORK/cluster"' EXIT
    export PGHOST="$WORK/cluster" PGPORT="$PORT"
fi
export PGUSER=postgres
DB=tenancy_examples
APP_ROLE=tenancy_example_app

log "examples: database $DB with the notes schema"
"$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -d postgres \
    -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
"$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<SQL
CREATE EXTENSION pg_tenancy;
DO \$\$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$APP_ROLE') THEN
        CREATE ROLE $APP_ROLE LOGIN NOSUPERUSER NOBYPASSRLS;
    END IF;
END \$\$;
CREATE SCHEMA notes;
CREATE TABLE notes.notes (
    tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(),
    id        bigserial,
    body      text NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
SELECT tenancy.protect('notes.notes');
GRANT USAGE ON SCHEMA notes TO $APP_ROLE;
GRANT SELECT, INSERT, UPDATE, DELETE ON notes.notes TO $APP_ROLE;
GRANT USAGE ON SEQUENCE notes.notes_id_seq TO $APP_ROLE;
SQL

BOUNCER_PORT=$(free_port)
log "examples: PgBouncer in transaction mode on port $BOUNCER_PORT"
as_root rm -rf "$WORK/bouncer"
mkdir -p "$WORK/bouncer"
printf '"%s" ""\n' "$APP_ROLE" postgres > "$WORK/bouncer/users.txt"
# The settings the README's pooler guide gives: every server connection reset when a client is
# done with it (DISCARD ALL, also in transaction mode), and no transaction left open for long.
cat > "$WORK/bouncer/pgbouncer.ini" <<INI
[databases]
$DB = host=$PGHOST port=$PGPORT dbname=$DB
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $WORK/bouncer/users.txt
pool_mode = transaction
default_pool_size = 4
max_client_conn = 100
server_reset_query = DISCARD ALL
server_reset_query_always = 1
ignore_startup_parameters = extra_float_digits,options
logfile = $WORK/bouncer/pgbouncer.log
pidfile = $WORK/bouncer/pgbouncer.pid
INI
as_root chown -R postgres:postgres "$WORK/bouncer"
as_root runuser -u postgres -- /usr/sbin/pgbouncer -d "$WORK/bouncer/pgbouncer.ini"
stop_bouncer() { [ -f "$WORK/bouncer/pgbouncer.pid" ] && as_root kill "$(cat "$WORK/bouncer/pgbouncer.pid")" 2>/dev/null || true; }
trap 'stop_bouncer; [ -n "${PORT:-}" ] && cluster_stop "$WORK/cluster"' EXIT
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$BOUNCER_PORT") 2>/dev/null && break; sleep 0.1; done

export TENANCY_EXAMPLE_ADMIN="postgresql://postgres@/$DB?host=$PGHOST&port=$PGPORT"
export TENANCY_EXAMPLE_POOLER="postgresql://$APP_ROLE@127.0.0.1:$BOUNCER_PORT/$DB"
status=0

log "examples/python: installing its packages (PyPI) and running it"
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q --disable-pip-version-check -r examples/python/requirements.txt
(cd examples/python && "$WORK/venv/bin/python" run.py) || status=1

log "examples/node: installing its packages (npm) and running it"
(cd examples/node && npm ci --silent --no-audit --no-fund && node run.js) || status=1
exit $status
