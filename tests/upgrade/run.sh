#!/usr/bin/env bash
# The upgrade test: pg_tenancy 0.1.0 built from its commit installs a database from its
# committed SQL (sql/pg_tenancy--0.1.0.sql) and fills it with tenants, keys, role mappings,
# protected tables, rows, audit records and a deletion certificate; then this build's library
# replaces 0.1.0's and ALTER EXTENSION pg_tenancy UPDATE runs the upgrade scripts. The upgraded
# database must have exactly the objects of a fresh install of this version (pg_dump
# --schema-only --binary-upgrade, which lists an extension's member objects one by one, and the
# generated policies), and its data must still verify.
#
#   tests/upgrade/run.sh      (scripts/test.sh runs it; the extension must be installed)
set -euo pipefail
source "$(dirname "$0")/../../scripts/lib.sh"
cd "$REPO_ROOT"

# The commit 0.1.0 was released at, and the version this tree builds.
OLD_COMMIT=3cb80b15e1fca1f9930705e513606bd64271ab82
OLD_VERSION=0.1.0
NEW_VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
WORK=${TENANCY_UPGRADE_DIR:-/tmp/pg_tenancy-upgrade}
SHAREDIR=$("$PG_CONFIG" --sharedir)/extension
failures=0
passes=0
check() {
    if [ "$2" = "$3" ]; then
        printf '  PASS  %s: %s\n' "$1" "$2"
        passes=$((passes + 1))
    else
        printf '  FAIL  %s: got %s, expected %s\n' "$1" "$2" "$3"
        failures=$((failures + 1))
    fi
}

if ! git cat-file -e "$OLD_COMMIT^{commit}" 2>/dev/null; then
    printf '\033[1mupgrade %s -> %s: SKIPPED: commit %s is not in this clone (a shallow clone?); clone with its history to run it\033[0m\n' \
        "$OLD_VERSION" "$NEW_VERSION" "${OLD_COMMIT:0:7}"
    exit 0
fi
log "upgrade: building pg_tenancy $OLD_VERSION from commit ${OLD_COMMIT:0:7}"
as_root rm -rf "$WORK/src" "$WORK/pkg" "$WORK/lib"
mkdir -p "$WORK/src"
git archive "$OLD_COMMIT" | tar -x -C "$WORK/src"
# A target directory of its own, kept between runs of this script.
(cd "$WORK/src" && CARGO_TARGET_DIR="$REPO_ROOT/target/upgrade-$OLD_VERSION" \
    cargo pgrx package --pg-config "$PG_CONFIG" --debug --out-dir "$WORK/pkg" >/dev/null)
OLD_SO=$(find "$WORK/pkg" -name pg_tenancy.so | head -1)
OLD_SQL=$(find "$WORK/pkg" -name "pg_tenancy--$OLD_VERSION.sql" | head -1)
# The committed install script is the one that commit generates.
if cmp -s "$OLD_SQL" "sql/pg_tenancy--$OLD_VERSION.sql"; then
    check "sql/pg_tenancy--$OLD_VERSION.sql is what $OLD_VERSION generates" yes yes
else
    check "sql/pg_tenancy--$OLD_VERSION.sql is what $OLD_VERSION generates" no yes
fi
mkdir -p "$WORK/lib"
cp "$OLD_SO" "$WORK/lib/pg_tenancy.so"
chmod -R a+rX "$WORK"
as_root install -m 644 "sql/pg_tenancy--$OLD_VERSION.sql" "$SHAREDIR/pg_tenancy--$OLD_VERSION.sql"

PORT=$(free_port)
log "upgrade: a cluster loading $OLD_VERSION's library (dynamic_library_path) on port $PORT"
trap 'cluster_stop "$WORK/cluster"' EXIT
cluster_start "$WORK/cluster" "$PORT" "dynamic_library_path = '$WORK/lib:\$libdir'
max_prepared_transactions = 4"
export PGHOST="$WORK/cluster" PGPORT="$PORT" PGUSER=postgres
psql() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
value() { "$PGBIN/psql" -X -qAt -v ON_ERROR_STOP=1 "$@"; }

# The same user schema in both databases: a partitioned and a plain protected table.
USER_SCHEMA="
CREATE SCHEMA app;
CREATE TABLE app.orders (tenant_id uuid NOT NULL, id int NOT NULL, note text, PRIMARY KEY (tenant_id, id));
CREATE TABLE app.events (tenant_id uuid NOT NULL, id int NOT NULL, at date NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE app.events_2026 PARTITION OF app.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
-- Names a table's owner chose, which every statement the upgrade builds must quote.
CREATE SCHEMA \"Odd \"\"app\"\"\";
CREATE TABLE \"Odd \"\"app\"\"\".\"it's; DROP TABLE app.orders; --\" (\"Tenant Id\" uuid NOT NULL, v int);
SELECT tenancy.protect('app.orders'), tenancy.protect('app.events'),
       tenancy.protect('\"Odd \"\"app\"\"\".\"it''s; DROP TABLE app.orders; --\"', 'Tenant Id');
GRANT USAGE ON SCHEMA app TO upgrade_acme, upgrade_globex;
GRANT SELECT, INSERT, UPDATE, DELETE ON app.orders, app.events TO upgrade_acme, upgrade_globex;
"
psql -d postgres -c "DROP DATABASE IF EXISTS up WITH (FORCE)" -c "DROP DATABASE IF EXISTS fresh WITH (FORCE)" \
    -c "DROP DATABASE IF EXISTS tampered WITH (FORCE)" \
    -c "DROP ROLE IF EXISTS upgrade_acme" -c "DROP ROLE IF EXISTS upgrade_globex" \
    -c "DROP ROLE IF EXISTS upgrade_owner" \
    -c "CREATE ROLE upgrade_acme LOGIN NOSUPERUSER NOBYPASSRLS" \
    -c "CREATE ROLE upgrade_globex LOGIN NOSUPERUSER NOBYPASSRLS" \
    -c "CREATE ROLE upgrade_owner NOLOGIN NOSUPERUSER NOBYPASSRLS" \
    -c "CREATE DATABASE up" -c "CREATE DATABASE fresh" -c "CREATE DATABASE tampered"
psql -d up >/dev/null <<SQL
CREATE EXTENSION pg_tenancy VERSION '$OLD_VERSION';
SELECT tenancy.create_tenant(t) FROM unnest(ARRAY['acme', 'globex', 'initech']) t;
SELECT tenancy.add_key('upgrade-key', 'HS256', 'upgrade-secret-0123456789abcdef0123456789');
$USER_SCHEMA
SELECT tenancy.map_role('upgrade_acme', 'acme', '{member}'), tenancy.map_role('upgrade_globex', 'globex', '{member}');
SQL
for t in acme globex; do
    psql -d up -U "upgrade_$t" -c "INSERT INTO app.orders (tenant_id, id, note) SELECT tenancy.current_tenant(), g, '$t ' || g FROM generate_series(1, 20) g" \
        -c "UPDATE app.orders SET note = note || ' (seen)' WHERE id <= 5" \
        -c "INSERT INTO app.events (tenant_id, id, at) VALUES (tenancy.current_tenant(), 1, '2026-06-01')"
done
psql -d up -c "SELECT tenancy.decommission_tenant('initech', 'initech')" >/dev/null
CERT=$(value -d up -c "SELECT new_row::text FROM tenancy.audit_log WHERE new_row->>'action' = 'decommission_tenant'")
check "$OLD_VERSION: every chain verifies" "$(value -d up -c "SELECT bool_and(ok) FROM tenancy.audit_verify()")" t
# A table's owner (NOSUPERUSER) replaces one of pg_tenancy's triggers under $OLD_VERSION, whose
# guard let it and whose digest saw triggers by name only (an attacker's pass): the update must
# not take that table as protected.
psql -d tampered >/dev/null <<SQL
CREATE EXTENSION pg_tenancy VERSION '$OLD_VERSION';
CREATE SCHEMA own AUTHORIZATION upgrade_owner;
SET ROLE upgrade_owner;
CREATE TABLE own.t (tenant_id uuid NOT NULL, v int);
CREATE TABLE own.kept (tenant_id uuid NOT NULL, v int);
RESET ROLE;
SELECT tenancy.protect('own.t'), tenancy.protect('own.kept');
SET ROLE upgrade_owner;
CREATE OR REPLACE TRIGGER tenancy_audit_ins BEFORE UPDATE ON own.t FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger();
RESET ROLE;
SELECT tenancy.create_tenant('acme');
SELECT tenancy.add_key('window-key', 'HS256', 'window-secret-0123456789abcdef0123456789');
SQL
check "$OLD_VERSION: the replaced trigger goes unnoticed" "$(value -d tampered -c "SELECT count(*) FROM tenancy.verify() WHERE rule = 'protection_drift'")" 0
check "$OLD_VERSION: the library in use" "$(value -d up -c "SELECT count(*) FROM pg_extension WHERE extname = 'pg_tenancy' AND extversion = '$OLD_VERSION'")" 1

log "upgrade: the library of this build, then ALTER EXTENSION pg_tenancy UPDATE"
cluster_stop "$WORK/cluster"
as_root runuser -u postgres -- sed -i "/^dynamic_library_path/d" "$WORK/cluster/data/postgresql.conf"
as_root env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE runuser -u postgres -- \
    "$PGBIN/pg_ctl" -D "$WORK/cluster/data" -l "$WORK/cluster/server.log" -w start >/dev/null
psql -d up -c "ALTER EXTENSION pg_tenancy UPDATE"
check "the version after the update" "$(value -d up -c "SELECT extversion FROM pg_extension WHERE extname = 'pg_tenancy'")" "$NEW_VERSION"
# The roles mapped before: reported without their grant on tenancy.mapped_role (which the
# upgrade's own script cannot give: pg_dump would take it for the type's initial privilege), and
# given it by the fix, as README's upgrading section says.
check "$NEW_VERSION: the roles mapped by $OLD_VERSION are reported without their dependency" \
    "$(value -d up -c "SELECT string_agg(object, ',' ORDER BY object) FROM tenancy.verify() WHERE rule = 'mapping_without_dependency'")" \
    "role upgrade_acme,role upgrade_globex"
psql -d up -c "SELECT tenancy._keep_mapped_roles()" >/dev/null
check "$NEW_VERSION: after the fix, a mapped role is not dropped in another database" \
    "$("$PGBIN/psql" -X -qAt -d postgres -c "DROP ROLE upgrade_acme" 2>&1 | grep -c 'cannot be dropped because some objects depend on it')" 1
# The window between installing this build and the update: this library with $OLD_VERSION's SQL
# objects, whose event triggers do not fire before CREATE TRIGGER or a column renamed through
# ALTER VIEW (an attacker's pass: a trigger with a temporary function read another tenant's rows
# there). A session that has not loaded the library yet, as the table's owner.
window_refused() {
    value -d tampered -c "SET ROLE upgrade_owner" -c "$1" 2>&1 | grep -c 'waits for the update'
}
check "the window: a trigger with a temporary function on a protected table is refused" \
    "$(window_refused "CREATE FUNCTION pg_temp.spy() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'; CREATE TRIGGER zz_spy AFTER INSERT ON own.kept FOR EACH ROW EXECUTE FUNCTION pg_temp.spy()")" 1
# Where the library is loaded when the command starts (preloaded, or here LOADed), its utility
# hook checks the command as this version's event trigger would.
check "the window: with the library loaded, the command is checked before it runs" \
    "$(value -d tampered -c "LOAD 'pg_tenancy'" -c "SET ROLE upgrade_owner" -c "CREATE FUNCTION pg_temp.spy() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'" -c "CREATE TRIGGER zz_spy AFTER INSERT ON own.kept FOR EACH ROW EXECUTE FUNCTION pg_temp.spy()" 2>&1 | grep -c 'temporary function is refused')" 1
check "the window: a column of a protected table renamed through ALTER VIEW is refused" \
    "$(window_refused "ALTER VIEW own.kept RENAME COLUMN v TO w")" 1
WINDOW_TOKEN=$(python3 - <<'PY'
import base64, hashlib, hmac, json, time
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=").decode()
h = b(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "window-key"}).encode())
p = b(json.dumps({"tid": "acme", "sub": "u", "exp": int(time.time()) + 600, "iat": int(time.time()) - 5}).encode())
s = b(hmac.new(b"window-secret-0123456789abcdef0123456789", f"{h}.{p}".encode(), hashlib.sha256).digest())
print(f"{h}.{p}.{s}")
PY
)
check "the window: $OLD_VERSION's tenancy.bind(token, scope) still binds" \
    "$(value -d tampered -c "SELECT tenancy.bind('$WINDOW_TOKEN') ->> 'tenant' = (SELECT id::text FROM tenancy.tenant WHERE slug = 'acme')")" t
psql -d tampered -c "ALTER EXTENSION pg_tenancy UPDATE"
check "$NEW_VERSION: the table whose trigger its owner replaced reports drift, the other does not" \
    "$(value -d tampered -c "SELECT string_agg(object, ',' ORDER BY object) FROM tenancy.verify() WHERE rule = 'protection_drift'")" own.t
psql -d tampered -c "SELECT tenancy.protect('own.t')" >/dev/null
check "$NEW_VERSION: protect() again restores it" \
    "$(value -d tampered -c "SELECT count(*) FROM tenancy.verify() WHERE rule = 'protection_drift'")/$(value -d tampered -c "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'own.t'::regclass AND tgname = 'tenancy_audit_ins' AND tgfoid = 'tenancy._audit()'::regprocedure")" 0/1
psql -d fresh >/dev/null <<SQL
CREATE EXTENSION pg_tenancy;
SELECT tenancy.create_tenant(t) FROM unnest(ARRAY['acme', 'globex']) t;
$USER_SCHEMA
SELECT tenancy.map_role('upgrade_acme', 'acme', '{member}'), tenancy.map_role('upgrade_globex', 'globex', '{member}');
SQL

# The schema of both, the extension's members included, without what binary-upgrade mode adds
# for pg_upgrade (oids) and the dump's session key.
dump() {
    "$PGBIN/pg_dump" --schema-only --binary-upgrade -d "$1" > "$WORK/$1.full.sql"
    # binary-upgrade mode also sets each table's relfrozenxid (an UPDATE of pg_class over three
    # lines) and the sequences' positions: data of the cluster, not the schema.
    awk '/^UPDATE pg_catalog.pg_class$/ { skip = 1 } !skip { print } skip && /;$/ { skip = 0 }' "$WORK/$1.full.sql" \
        | grep -v -e binary_upgrade -e '^\\restrict' -e '^\\unrestrict' -e '^--' -e '^$' -e '^SELECT pg_catalog.setval(' \
        > "$WORK/$1.sql"
}
dump up
dump fresh
check "the schema dump lists pg_tenancy's members" "$(grep -c 'ALTER EXTENSION pg_tenancy ADD' "$WORK/fresh.sql" | awk '{print ($1 > 100)}')" 1
if diff "$WORK/up.sql" "$WORK/fresh.sql" > "$WORK/schema.diff"; then
    check "the upgraded schema equals a fresh $NEW_VERSION install" same same
else
    check "the upgraded schema equals a fresh $NEW_VERSION install" "$(wc -l < "$WORK/schema.diff") lines differ (see $WORK/schema.diff)" same
    head -40 "$WORK/schema.diff"
fi
policies="SELECT string_agg(l, E'\n' ORDER BY l) FROM (SELECT format('%s %s %s %s %s', polrelid::regclass, polname, polcmd, pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid)) AS l FROM pg_policy) p"
check "the generated policies equal a fresh install's" "$(value -d up -c "$policies" | md5sum | cut -c1-12)" "$(value -d fresh -c "$policies" | md5sum | cut -c1-12)"

# The data written by $OLD_VERSION, read and extended by $NEW_VERSION.
check "$NEW_VERSION: every chain written by $OLD_VERSION verifies" "$(value -d up -c "SELECT bool_and(ok) FROM tenancy.audit_verify()")" t
check "$NEW_VERSION: the $OLD_VERSION deletion certificate verifies" "$(value -d up -c "SELECT tenancy.verify_certificate(\$\$$CERT\$\$::jsonb - 'action')")" t
check "$NEW_VERSION: verify() finds no error" "$(value -d up -c "SELECT count(*) FROM tenancy.verify() WHERE severity = 'error'")" 0
for t in acme globex; do
    psql -d up -U "upgrade_$t" -c "INSERT INTO app.orders (tenant_id, id, note) VALUES (tenancy.current_tenant(), 100, 'after the upgrade')"
    check "$NEW_VERSION: $t sees only its own rows" "$(value -d up -U "upgrade_$t" -c "SELECT count(*) FILTER (WHERE tenant_id <> tenancy.current_tenant()) || '/' || count(*) FROM app.orders")" "0/21"
done
check "$NEW_VERSION: the chains verify with records of both versions" "$(value -d up -c "SELECT bool_and(ok) FROM tenancy.audit_verify()")" t
check "$NEW_VERSION: bind with one argument refuses a missing token" "$(value -d up -c "SELECT tenancy.bind(NULL)" 2>&1 | grep -c 'pg_tenancy: token_missing')" 1

if [ "$failures" -eq 0 ]; then
    printf '\033[1mupgrade %s -> %s: PASS (%d checks passed)\033[0m\n' "$OLD_VERSION" "$NEW_VERSION" "$passes"
else
    printf '\033[1mupgrade %s -> %s: FAIL (%d of %d checks failed)\033[0m\n' "$OLD_VERSION" "$NEW_VERSION" "$failures" "$((passes + failures))"
    exit 1
fi
