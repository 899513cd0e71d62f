#!/usr/bin/env bash
# Runs the examples (examples/python, examples/node) as the test suite does: a database with the
# notes schema, PgBouncer in front of it in transaction mode, each example's packages installed
# from PyPI and npm, and each example's checks (no foreign row read or written, forged writes
# refused), then the governance gate, the monitoring collector and pgrls. Uses the cluster in
# PGHOST/PGPORT when set, or starts one of its own. The gate asserts a clean database, and roles
# are the cluster's, not a database's: scripts/test.sh therefore gives the examples their own
# cluster, so that roles other tests leave behind cannot make it unclean.
#
#   examples/run.sh               installs what is missing, builds and installs pg_tenancy
#   examples/run.sh --no-install  uses the pg_tenancy installed now (scripts/test.sh)
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"

INSTALL=1
case "${1:-}" in
    "") ;;
    --no-install) INSTALL=0 ;;
    *) die "usage: $0 [--no-install]" ;;
esac

WORK=${TENANCY_EXAMPLES_DIR:-/tmp/pg_tenancy-examples}
mkdir -p "$WORK"
if [ -z "${PGHOST:-}" ]; then
    if [ "$INSTALL" = 1 ]; then
        ensure_deps
        install_extension
    fi
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

# The CI gate (examples/governance/ci-gate.sh) and its pgTAP test, as an operator role: clean
# against the database's own export, not clean (listing the change) once the database drifts.
# The monitoring collector's queries (examples/monitoring), as a pg_monitor role.
governance() {
    local op=tenancy_example_operator mon=tenancy_example_monitor doc="$WORK/tenancy.json"
    "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<SQL
DO \$\$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$op') THEN
        CREATE ROLE $op LOGIN NOSUPERUSER NOBYPASSRLS IN ROLE tenancy_operator;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$mon') THEN
        CREATE ROLE $mon LOGIN NOSUPERUSER NOBYPASSRLS IN ROLE pg_monitor;
    END IF;
END \$\$;
SELECT tenancy.create_tenant('example-gate');
CREATE EXTENSION IF NOT EXISTS pgtap;
SQL
    PGDATABASE=$DB PGUSER=$op "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -c "SELECT tenancy.export_config()" > "$doc"
    PGDATABASE=$DB PGUSER=$op examples/governance/ci-gate.sh "$doc" || { echo "the gate refused a clean database" >&2; return 1; }
    PGDATABASE=$DB PGUSER=$op pg_prove -Q --set doc="$(cat "$doc")" examples/governance/tenancy_clean.pg \
        || { echo "pg_prove refused a clean database" >&2; return 1; }
    # Drift: a member added by hand, outside the document.
    "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -d "$DB" -c "SELECT tenancy.add_member('example-gate', 'drifter', 'member')" >/dev/null
    if PGDATABASE=$DB PGUSER=$op examples/governance/ci-gate.sh "$doc" 2> "$WORK/gate.err"; then
        echo "the gate passed a drifted database" >&2; return 1
    fi
    grep -q "remove_member example-gate member: drifter as member" "$WORK/gate.err" \
        || { cat "$WORK/gate.err" >&2; echo "the gate did not list the drift" >&2; return 1; }
    if PGDATABASE=$DB PGUSER=$op pg_prove -Q --set doc="$(cat "$doc")" examples/governance/tenancy_clean.pg >/dev/null 2>&1; then
        echo "pg_prove passed a drifted database" >&2; return 1
    fi
    # The collector's every query runs for a pg_monitor role and returns rows.
    PGDATABASE=$DB PGUSER=$mon /usr/bin/python3 - examples/monitoring/pg_tenancy.collector.yml <<'PY'
import subprocess, sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
names = {q["query_name"] for q in c["queries"]}
assert all(m["query_ref"] in names for m in c["metrics"]), "a metric names no query"
for q in c["queries"]:
    out = subprocess.run(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", q["query"]],
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip(), (q["query_name"], out.stderr)
    print(f"collector query {q['query_name']}: {len(out.stdout.splitlines())} row(s)")
PY
    echo "examples/governance: the gate and pg_prove pass a clean database and refuse a drifted one"
    # pgrls (PyPI), the RLS linter teams gate on: a schema protect_schema protected, and the
    # notes table, lint with errors without the generated configuration and clean with it.
    "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<SQL
CREATE SCHEMA IF NOT EXISTS lint;
CREATE TABLE IF NOT EXISTS lint.customers (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id bigserial, name text, PRIMARY KEY (tenant_id, id));
CREATE TABLE IF NOT EXISTS lint.orders (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id bigserial, amount int, PRIMARY KEY (tenant_id, id));
SELECT tenancy.protect_schema('lint');
SQL
    "$WORK/venv/bin/pip" install -q --disable-pip-version-check "pgrls==0.57.1"
    local url="postgresql://postgres@/$DB?host=$PGHOST&port=$PGPORT"
    # pgrls reads ./pgrls.toml when it is there: lint from an empty directory, and keep the
    # generated configuration under another name, so that the bare lint is bare on every run.
    rm -rf "$WORK/pgrls-run" && mkdir -p "$WORK/pgrls-run"
    if (cd "$WORK/pgrls-run" && "$WORK/venv/bin/pgrls" lint --database-url "$url" --schemas lint,notes > "$WORK/pgrls-bare.txt" 2>&1); then
        echo "pgrls found nothing without the configuration: did it lint?" >&2; return 1
    fi
    grep -q "SEC003" "$WORK/pgrls-bare.txt" || { cat "$WORK/pgrls-bare.txt" >&2; return 1; }
    "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -d "$DB" -f examples/pgrls/pgrls-config.sql > "$WORK/tenancy-pgrls.toml"
    (cd "$WORK/pgrls-run" && "$WORK/venv/bin/pgrls" lint --database-url "$url" --config "$WORK/tenancy-pgrls.toml" --schemas lint,notes) \
        || { echo "pgrls is not clean with the generated configuration" >&2; return 1; }
    echo "examples/pgrls: $(grep -c '^pgrls\|ERROR' "$WORK/pgrls-bare.txt") finding line(s) without the configuration, none with it"
}
log "examples/governance and examples/monitoring"
governance || status=1
exit $status
