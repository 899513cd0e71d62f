#!/usr/bin/env bash
# Server cost per statement, counted exactly: the instructions one backend executes, under
# valgrind's callgrind, for a statement repeated N1 and N2 times in PostgreSQL's single-user
# mode (one backend, no other process): (I(N2) - I(N1)) / (N2 - N1). Unlike pgbench's tps,
# which moves by a tenth from run to run on these machines, the count repeats to a few
# instructions, so a change of a few percent in a backend's work is visible.
#
#   benches/callgrind.sh                 the installed build, every workload
#   benches/callgrind.sh -c name=value   the same with a server setting (repeatable)
#   benches/callgrind.sh --build         build and install a release first
#   benches/callgrind.sh --server        count in a backend of a running server instead: the
#             statements come from pgbench (-t N1, -t N2, one client, simple protocol) over a
#             socket, as benches/run.sh sends them. Single-user mode leaves out what a server's
#             backend does per statement besides (the protocol, statistics); the two have
#             differed by a few thousand instructions a statement. Workloads point_mapped
#             and filter only (WORKLOADS="point_mapped filter"), the pair benches/run.sh
#             compares for point lookups.
#   WORKLOADS="point bind" benches/callgrind.sh   only those workloads
#   CACHE_SIM=1 benches/callgrind.sh     also simulate the caches and print, per statement,
#             level-1 instruction and data cache misses beside the instructions (slower)
#   VALGRIND_EXTRA="--dump-instr=yes" benches/callgrind.sh   more valgrind options (with KEEP: per
#             instruction addresses, for which cache lines a statement runs)
#   KEEP=/some/dir benches/callgrind.sh  keep each profile there as WORKLOAD.N.out, for
#             callgrind_annotate (single-user mode only)
#
# Workloads (each statement runs as the NOSUPERUSER role cg_app, bound to one tenant with a
# token in session scope; 10 tenants x 1,000 rows):
#   point     SELECT of one row by key from a protected table
#   point_mapped  the same in a session of cg_mapped, a login role mapped to the tenant (bound
#             without a bind statement, as benches/run.sh's pg_tenancy variant connects)
#   filter    the same on an unprotected copy with the tenant in the WHERE clause (baseline)
#   seqscan   count(*) over the protected table with index scans off: a sequential scan that
#             evaluates the tenant condition on every one of the 10,000 rows
#   bind      SELECT tenancy.bind(token) (HS256)
#   bind_rs256, bind_eddsa    the same with an RS256 / an EdDSA token, as identity providers sign
#   bind_rs256_discard, bind_eddsa_discard    DISCARD ALL, then the bind (what a pooler's reset
#             does between requests); `discard` is DISCARD ALL alone, to subtract
#   point_prepared, filter_prepared    point and filter as a prepared statement without
#             parameters (PREPARE once, then EXECUTE): PostgreSQL runs its generic plan, in
#             which the binding is the reserved parameter, never a constant
#   filter_param    filter as an application prepares it, the tenant a parameter
#             (PREPARE p(uuid), EXECUTE p('...')): after five custom plans, the generic one
#   filter_unbound  filter in a session that binds nothing: what the hooks cost when there is
#             nothing for them to do
#   point_spi, filter_spi    point and filter run by PL/pgSQL's EXECUTE in a function
#             (SELECT cg.spi_point()): planned every time, through SPI, where the binding is
#             also the reserved parameter (what benches/run.sh's server-cost loop measures)
#   insert    one-row INSERT into an audited protected table
#   insert_noaudit  the same without audit
# Prints one line per workload: instructions per statement.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"

BUILD=0
SERVER=0
SETTINGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --build) BUILD=1 ;;
        --server) SERVER=1 ;;
        -c) shift; SETTINGS+=(-c "$1") ;;
        *) die "usage: $0 [--build] [--server] [-c name=value]..." ;;
    esac
    shift
done
WORKLOADS=${WORKLOADS:-"point point_mapped filter seqscan bind insert insert_noaudit"}
N1=${N1:-200}
N2=${N2:-1200}
CACHE_SIM=${CACHE_SIM:-0}
KEEP=${KEEP:-}
VALGRIND_ARGS=(--tool=callgrind)
[ "$CACHE_SIM" = 1 ] && VALGRIND_ARGS+=(--cache-sim=yes)
[ -n "${VALGRIND_EXTRA:-}" ] && read -r -a _extra <<<"$VALGRIND_EXTRA" && VALGRIND_ARGS+=("${_extra[@]}")

ensure_deps
if ! command -v valgrind >/dev/null; then
    log "installing valgrind"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends valgrind >/dev/null
fi
if [ "$BUILD" = 1 ]; then
    log "building and installing pg_tenancy (release)"
    install_extension --release
fi

DIR=${TENANCY_CALLGRIND_DIR:-/tmp/pg_tenancy-callgrind}
PORT=$(free_port)
cluster_stop "$DIR" 2>/dev/null || true
as_root rm -rf "$DIR"
cluster_start "$DIR" "$PORT" "shared_preload_libraries = 'pg_tenancy'
jit = off
max_parallel_workers_per_gather = 0
autovacuum = off"
SECRET=callgrind-secret-0123456789abcdef0123456789
"$PGBIN/psql" -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres -d postgres <<SQL
CREATE DATABASE cg;
\c cg
CREATE EXTENSION pg_tenancy;
CREATE ROLE cg_app LOGIN NOSUPERUSER NOBYPASSRLS;
CREATE ROLE cg_mapped LOGIN NOSUPERUSER NOBYPASSRLS IN ROLE cg_app;
CREATE SCHEMA cg; GRANT USAGE ON SCHEMA cg TO cg_app;
SELECT tenancy.create_tenant('t' || g, settings => '{"default_roles": ["member"]}') FROM generate_series(1, 10) g;
SELECT tenancy.add_key('cg', 'HS256', '$SECRET');
CREATE TABLE cg.items (tenant_id uuid NOT NULL, id int NOT NULL, v int, PRIMARY KEY (tenant_id, id));
INSERT INTO cg.items SELECT t.id, g, g FROM tenancy.tenant t, generate_series(1, 1000) g;
CREATE TABLE cg.plain AS SELECT * FROM cg.items; ALTER TABLE cg.plain ADD PRIMARY KEY (tenant_id, id);
CREATE TABLE cg.log (id bigserial, tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), v int, PRIMARY KEY (tenant_id, id));
CREATE TABLE cg.log_noaudit (LIKE cg.log INCLUDING ALL);
SELECT tenancy.protect('cg.items'), tenancy.protect('cg.log');
SELECT tenancy.protect('cg.log_noaudit', audit => false);
SELECT tenancy.map_role('cg_mapped', 't3');
GRANT SELECT ON cg.items, cg.plain TO cg_app;
GRANT SELECT, INSERT ON cg.log, cg.log_noaudit TO cg_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA cg TO cg_app;
CREATE FUNCTION cg.spi_point() RETURNS int LANGUAGE plpgsql
AS \$f\$ DECLARE r int; BEGIN EXECUTE 'SELECT v FROM cg.items WHERE id = 42' INTO r; RETURN r; END \$f\$;
-- The same statement text as the filter workload's, tenant t3 written into it.
DO \$d\$ BEGIN EXECUTE format(\$g\$CREATE FUNCTION cg.spi_filter() RETURNS int LANGUAGE plpgsql
AS \$f\$ DECLARE r int; BEGIN EXECUTE 'SELECT v FROM cg.plain WHERE tenant_id = ''%s'' AND id = 42' INTO r; RETURN r; END \$f\$\$g\$,
  (SELECT id FROM tenancy.tenant WHERE slug = 't3')); END \$d\$;
GRANT USAGE ON SCHEMA cg TO cg_app;
VACUUM ANALYZE;
SQL
# An identity provider's keys (RS256, EdDSA), made and used by openssl.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$DIR/rs256.pem" 2>/dev/null
openssl genpkey -algorithm ED25519 -out "$DIR/eddsa.pem" 2>/dev/null
for k in rs256 eddsa; do
    alg=$([ $k = rs256 ] && echo RS256 || echo EdDSA)
    openssl pkey -in "$DIR/$k.pem" -pubout -out "$DIR/$k.pub" 2>/dev/null
    "$PGBIN/psql" -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres -d cg \
        -c "SELECT tenancy.add_key('cg-$k', '$alg', \$\$$(cat "$DIR/$k.pub")\$\$)" >/dev/null
done
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
signed() { # kid alg: a token of tenant t3
    local h p
    h=$(printf '{"alg":"%s","typ":"JWT","kid":"cg-%s"}' "$2" "$1" | b64url)
    p=$(printf '{"tid":"t3","sub":"cg","exp":%d,"iat":%d}' $(( $(date +%s) + 86400 )) "$(date +%s)" | b64url)
    if [ "$1" = rs256 ]; then
        printf '%s.%s.%s' "$h" "$p" "$(printf '%s.%s' "$h" "$p" | openssl dgst -sha256 -sign "$DIR/rs256.pem" -binary | b64url)"
    else
        printf '%s' "$h.$p" > "$DIR/eddsa.msg"
        printf '%s.%s.%s' "$h" "$p" "$(openssl pkeyutl -sign -inkey "$DIR/eddsa.pem" -rawin -in "$DIR/eddsa.msg" | b64url)"
    fi
}
TOKEN_RS256=$(signed rs256 RS256)
TOKEN_EDDSA=$(signed eddsa EdDSA)
TENANT=$("$PGBIN/psql" -qAt -h "$DIR" -p "$PORT" -U postgres -d cg -c "SELECT id FROM tenancy.tenant WHERE slug = 't3'")
TOKEN=$(python3 - "$SECRET" <<'PY'
import base64, hashlib, hmac, json, sys, time
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=").decode()
h = b(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "cg"}).encode())
p = b(json.dumps({"tid": "t3", "sub": "cg", "exp": int(time.time()) + 86400, "iat": int(time.time())}).encode())
s = b(hmac.new(sys.argv[1].encode(), f"{h}.{p}".encode(), hashlib.sha256).digest())
print(f"{h}.{p}.{s}")
PY
)
cluster_stop "$DIR"

statement() {
    case "$1" in
        point|point_mapped) echo "SELECT v FROM cg.items WHERE id = 42;" ;;
        filter|filter_unbound) echo "SELECT v FROM cg.plain WHERE tenant_id = '$TENANT' AND id = 42;" ;;
        point_prepared|filter_prepared) echo "EXECUTE p;" ;;
        filter_param) echo "EXECUTE p('$TENANT');" ;;
        point_spi) echo "SELECT cg.spi_point();" ;;
        filter_spi) echo "SELECT cg.spi_filter();" ;;
        seqscan) echo "SELECT count(*) FROM cg.items;" ;;
        bind) echo "SELECT tenancy.bind('$TOKEN');" ;;
        bind_rs256) echo "SELECT tenancy.bind('$TOKEN_RS256');" ;;
        bind_eddsa) echo "SELECT tenancy.bind('$TOKEN_EDDSA');" ;;
        bind_rs256_discard) echo "DISCARD ALL;"; echo "SELECT tenancy.bind('$TOKEN_RS256');" ;;
        bind_eddsa_discard) echo "DISCARD ALL;"; echo "SELECT tenancy.bind('$TOKEN_EDDSA');" ;;
        discard) echo "DISCARD ALL;" ;;
        insert) echo "INSERT INTO cg.log (v) VALUES (1);" ;;
        insert_noaudit) echo "INSERT INTO cg.log_noaudit (v) VALUES (1);" ;;
        *) die "unknown workload $1" ;;
    esac
}

# A profile's totals: instructions, and with the cache simulation level-1 instruction and data
# read misses, space-separated.
totals() {
    awk '/^events:/ { for (i = 2; i <= NF; i++) col[$i] = i }
         /^(summary|totals):/ { printf "%s", $(col["Ir"]);
             if ("I1mr" in col) printf " %s %s", $(col["I1mr"]), $(col["D1mr"]); print ""; exit }' "$1"
}

# Instructions of one single-user backend running `n` statements of workload `w` (after a
# warm-up of 50): callgrind's total.
count() {
    local w=$1 n=$2 script out
    script=$(mktemp)
    out=$(mktemp -u "$DIR/cg.XXXXXX")
    {
        if [ "$w" = point_mapped ]; then
            # The session's user is the mapped role, as if it had logged in.
            echo "SET SESSION AUTHORIZATION cg_mapped;"
        else
            echo "SET ROLE cg_app;"
        fi
        if [ "$w" = seqscan ]; then
            echo "SET enable_indexscan = off;"
            echo "SET enable_bitmapscan = off;"
        fi
        case "$w" in point_mapped|filter_unbound) ;; *) echo "SELECT tenancy.bind('$TOKEN', 'session') IS NOT NULL;" ;; esac
        case "$w" in
            point_prepared) echo "PREPARE p AS SELECT v FROM cg.items WHERE id = 42;" ;;
            filter_prepared) echo "PREPARE p AS SELECT v FROM cg.plain WHERE tenant_id = '$TENANT' AND id = 42;" ;;
            filter_param) echo "PREPARE p(uuid) AS SELECT v FROM cg.plain WHERE tenant_id = \$1 AND id = 42;" ;;
        esac
        for _ in $(seq 50); do statement "$w"; done
        for _ in $(seq "$n"); do statement "$w"; done
    } >"$script"
    chmod 644 "$script"
    as_root runuser -u postgres -- valgrind "${VALGRIND_ARGS[@]}" --callgrind-out-file="$out" \
        "$PGBIN/postgres" --single -D "$DIR/data" "${SETTINGS[@]}" cg <"$script" >/dev/null 2>&1 \
        || { rm -f "$script"; die "single-user run of $w failed"; }
    rm -f "$script"
    totals "$out"
    if [ -n "$KEEP" ]; then
        mkdir -p "$KEEP"
        cp "$out" "$KEEP/$w.$n.out"
    fi
    as_root rm -f "$out"
}

# The same under a server: the postmaster runs under callgrind, which follows its children
# and writes one profile per process when it exits.
count_server() {
    local w=$1 n=$2 script user before f
    case "$w" in
        point_mapped|filter) ;;
        *) die "--server counts point_mapped and filter (sessions bound without a bind statement)" ;;
    esac
    script=$(mktemp)
    chmod 644 "$script"
    statement "$w" >"$script"
    user=cg_app
    [ "$w" = point_mapped ] && user=cg_mapped
    before=$(ls "$DIR"/cgs.* 2>/dev/null | sort || true)
    PGHOST=$DIR PGPORT=$PORT "$PGBIN/pgbench" -n -c 1 -t "$n" -f "$script" -U "$user" cg >/dev/null 2>&1 \
        || { rm -f "$script"; die "pgbench run of $w failed"; }
    rm -f "$script"
    sleep 2
    # pgbench's own first connection ends too; the client's backend ran the statements and
    # counts the most.
    for f in $(comm -13 <(echo "$before") <(ls "$DIR"/cgs.* | sort)); do
        totals "$f"
    done | sort -n | tail -1
}

log "instructions per statement (N = $N2 - $N1; settings: ${SETTINGS[*]:-default}; $([ "$SERVER" = 1 ] && echo "a server's backend, over a socket" || echo "single-user mode"))"
if [ "$SERVER" = 1 ]; then
    as_root runuser -u postgres -- bash -c "valgrind --tool=callgrind --trace-children=yes \
        ${VALGRIND_ARGS[*]:1} --callgrind-out-file='$DIR/cgs.%p' '$PGBIN/postgres' -D '$DIR/data' ${SETTINGS[*]} \
        >'$DIR/valgrind.log' 2>&1 &"
    for _ in $(seq 120); do
        "$PGBIN/pg_isready" -q -h "$DIR" -p "$PORT" && break
        sleep 1
    done
    trap 'as_root pkill -f "valgrind.*$DIR/data" || true' EXIT
fi
for w in $WORKLOADS; do
    if [ "$SERVER" = 1 ]; then
        a=$(count_server "$w" "$N1")
        b=$(count_server "$w" "$N2")
    else
        a=$(count "$w" "$N1")
        b=$(count "$w" "$N2")
    fi
    read -r ai a1 ad <<<"$a"
    read -r bi b1 bd <<<"$b"
    if [ "$CACHE_SIM" = 1 ]; then
        printf '%-16s %12d instructions %8d I1 misses %8d D1 misses\n' "$w" \
            $(( (bi - ai) / (N2 - N1) )) $(( (b1 - a1) / (N2 - N1) )) $(( (bd - ad) / (N2 - N1) ))
    else
        printf '%-16s %12d\n' "$w" $(( (bi - ai) / (N2 - N1) ))
    fi
done
