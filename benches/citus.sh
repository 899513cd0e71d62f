#!/usr/bin/env bash
# The Citus benchmark (issue #29): a point lookup and a tenant aggregate on a table distributed
# by its tenant column, on a local Citus cluster of three nodes (a coordinator and two workers,
# all on this machine), under three variants:
#   pg_tenancy  protected by tenancy.protect(); the transaction binds a token
#               (BEGIN; SELECT tenancy.bind(...); <statement>; COMMIT)
#   hand        hand-written RLS as Citus allows it: USING (tenant_id =
#               current_setting('app.tenant_id')::uuid), with SET LOCAL app.tenant_id in the
#               transaction (the one way Citus carries a setting to the workers)
#   filter      no RLS: the statement names the tenant (WHERE tenant_id = '<uuid>')
# Each statement names no tenant itself under pg_tenancy and hand. Then the same statements in
# a session of one tenant, as benches/run.sh measures the per-statement cost on one node:
# pg_tenancy as a login role mapped to the tenant (bound without a bind statement; Citus
# connects to the workers as that role, which binds there too) against filter, one statement
# per transaction. Ratios are pg_tenancy's tps
# over the other variant's, measured side by side: both pgbench runs at once (2 clients each),
# so that they meet the same machine; the median of the rounds. Also reports the shard tasks
# per statement (EXPLAIN's Task Count) for each variant.
#
#   benches/citus.sh            full run (writes benches/CITUS.md)
#   benches/citus.sh --smoke    tiny data, one short round: checks that it runs (scripts/test.sh)
#
# Runs where Citus is installed (Citus's own packages); prints one line saying it was skipped
# otherwise. A full run builds and installs a release of pg_tenancy first (a debug build costs
# several times more per statement); --smoke uses the build installed.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"

SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
if ! citus_installed; then
    printf '\033[1mCitus benchmark: SKIPPED: Citus is not installed (install Citus 13.2 for PostgreSQL %s from Citus'"'"'s packages to run it)\033[0m\n' "$PG_MAJOR"
    exit 0
fi
BUILD="the build installed"
if [ "$SMOKE" = 1 ]; then
    TENANTS=4 ROWS=50 SECONDS_PER_RUN=1 ROUNDS=1
else
    TENANTS=${TENANTS:-200} ROWS=${ROWS:-1000} SECONDS_PER_RUN=${SECONDS_PER_RUN:-10} ROUNDS=${ROUNDS:-5}
    log "building and installing pg_tenancy (release)"
    install_extension --release
    BUILD="a release build of pg_tenancy"
fi
WORK=${TENANCY_CITUS_BENCH_DIR:-/tmp/pg_tenancy-citus-bench}
DB=bench
SECRET=citus-bench-secret-0123456789abcdef0123456789
# TENANCY_CITUS_BENCH_KEEP=1 leaves the cluster running (for profiling by hand).
[ -n "${TENANCY_CITUS_BENCH_KEEP:-}" ] || trap 'citus_cluster_stop "$WORK"' EXIT
CITUS_EXTRA_SETTINGS="shared_buffers = '512MB'
max_connections = 200
jit = off" citus_cluster_start "$WORK" "$DB"
PORT=${CITUS_PORTS[0]}
on_coordinator() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d "$DB" "$@"; }

log "loading $TENANTS tenants x $ROWS rows into three tables distributed by tenant"
on_coordinator <<SQL >/dev/null
CREATE EXTENSION pg_tenancy;
SELECT tenancy.citus_setup();
CREATE ROLE bench_app LOGIN NOSUPERUSER NOBYPASSRLS;
CREATE ROLE bench_session LOGIN NOSUPERUSER NOBYPASSRLS;
SELECT tenancy.add_key('bench', 'HS256', '$SECRET');
SELECT tenancy.create_tenants(jsonb_agg(jsonb_build_object('slug', 't' || g, 'settings', '{"default_roles": ["member"]}'::jsonb)))
  FROM generate_series(1, $TENANTS) g;
CREATE TABLE bench_tokens (n int PRIMARY KEY, tid uuid NOT NULL, token text NOT NULL);
GRANT SELECT ON bench_tokens TO bench_app;
SET citus.multi_shard_modify_mode = 'sequential';
CREATE TABLE t_tenancy (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(), id int NOT NULL, v int NOT NULL, PRIMARY KEY (tenant_id, id));
CREATE TABLE t_hand (tenant_id uuid NOT NULL, id int NOT NULL, v int NOT NULL, PRIMARY KEY (tenant_id, id));
CREATE TABLE t_filter (tenant_id uuid NOT NULL, id int NOT NULL, v int NOT NULL, PRIMARY KEY (tenant_id, id));
SELECT create_distributed_table(t, 'tenant_id') FROM unnest(ARRAY['t_tenancy', 't_hand', 't_filter']) t;
RESET citus.multi_shard_modify_mode;
INSERT INTO t_tenancy SELECT t.id, g, g FROM tenancy.tenants t, generate_series(1, $ROWS) g;
INSERT INTO t_hand SELECT * FROM t_tenancy;
INSERT INTO t_filter SELECT * FROM t_tenancy;
SELECT tenancy.protect('t_tenancy', audit => false);
ALTER TABLE t_hand ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON t_hand USING (tenant_id = current_setting('app.tenant_id')::uuid);
GRANT SELECT ON t_tenancy, t_hand, t_filter TO bench_app, bench_session;
SELECT tenancy.map_role('bench_session', 't1');
VACUUM ANALYZE;
SQL
on_coordinator -At -c "SELECT row_number() OVER (ORDER BY slug), id, slug FROM tenancy.tenants" |
python3 -c '
import base64, hashlib, hmac, json, sys, time
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=").decode()
secret = sys.argv[1].encode()
for line in sys.stdin:
    n, tid, slug = line.strip().split("|")
    h = b(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "bench"}).encode())
    p = b(json.dumps({"tid": slug, "sub": "bench", "exp": int(time.time()) + 86400}).encode())
    s = b(hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest())
    print(f"{n}\t{tid}\t{h}.{p}.{s}")
' "$SECRET" | on_coordinator -c "COPY bench_tokens FROM STDIN"

SCRIPTS=$(mktemp -d)
chmod 755 "$SCRIPTS"
script() { # name, then the statement lines between the shared prologue and COMMIT
    local name=$1
    shift
    {
        echo '\set t random(1, :ntenants)'
        echo '\set k random(1, :nrows)'
        echo 'SELECT tid, token FROM bench_tokens WHERE n = :t \gset'
        echo 'BEGIN;'
        printf '%s\n' "$@"
        echo 'COMMIT;'
    } >"$SCRIPTS/$name.sql"
}
script point_tenancy "SELECT tenancy.bind(':token') IS NOT NULL;" "SELECT v FROM t_tenancy WHERE id = :k;"
script point_hand "SET LOCAL app.tenant_id = ':tid';" "SELECT v FROM t_hand WHERE id = :k;"
script point_filter "SELECT v FROM t_filter WHERE tenant_id = ':tid' AND id = :k;"
script aggregate_tenancy "SELECT tenancy.bind(':token') IS NOT NULL;" "SELECT count(*), sum(v) FROM t_tenancy;"
script aggregate_hand "SET LOCAL app.tenant_id = ':tid';" "SELECT count(*), sum(v) FROM t_hand;"
script aggregate_filter "SELECT count(*), sum(v) FROM t_filter WHERE tenant_id = ':tid';"

# Shard tasks per statement, from EXPLAIN, for tenant 1.
read -r TID TOKEN < <(on_coordinator -At -F ' ' -c "SELECT tid, token FROM bench_tokens WHERE n = 1")
# A session of tenant t1 (bench_session is mapped to it): one statement per transaction.
session_script() { # name, statement
    printf '%s\n' '\set k random(1, :nrows)' "$2" >"$SCRIPTS/$1.sql"
}
session_script session_point_tenancy "SELECT v FROM t_tenancy WHERE id = :k;"
session_script session_point_filter "SELECT v FROM t_filter WHERE tenant_id = '$TID' AND id = :k;"
session_script session_aggregate_tenancy "SELECT count(*), sum(v) FROM t_tenancy;"
session_script session_aggregate_filter "SELECT count(*), sum(v) FROM t_filter WHERE tenant_id = '$TID';"
tasks() { # variant, statement
    # One statement per query: Citus carries a SET LOCAL to the workers as the text of the query
    # it came in.
    local pre="SELECT 1" user=bench_app
    case "$1" in
        tenancy) pre="SELECT tenancy.bind('$TOKEN') IS NOT NULL" ;;
        hand) pre="SET LOCAL app.tenant_id = '$TID'" ;;
        session) user=bench_session ;;
    esac
    "$PGBIN/psql" -X -q -At -h 127.0.0.1 -p "$PORT" -U "$user" -d "$DB" \
        -c "BEGIN" -c "$pre" -c "EXPLAIN (COSTS OFF) $2" -c "COMMIT" | sed -n 's/.*Task Count: \([0-9]*\).*/\1/p' | head -1
}

run_pgbench() { # script, output file
    local user=bench_app
    [[ "$1" == session_* ]] && user=bench_session
    "$PGBIN/pgbench" -n -h 127.0.0.1 -p "$PORT" -U "$user" -c 2 -j 1 -T "$SECONDS_PER_RUN" \
        -D ntenants="$TENANTS" -D nrows="$ROWS" -f "$SCRIPTS/$1.sql" "$DB" >"$2" 2>&1
}
tps_of() { sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' "$1"; }

# One side-by-side round: both scripts at once; prints "tps_a tps_b".
round() {
    local a=$1 b=$2 first=$3
    if [ "$first" = a ]; then
        run_pgbench "$a" "$SCRIPTS/a.out" & sleep 0.2; run_pgbench "$b" "$SCRIPTS/b.out" &
    else
        run_pgbench "$b" "$SCRIPTS/b.out" & sleep 0.2; run_pgbench "$a" "$SCRIPTS/a.out" &
    fi
    wait
    echo "$(tps_of "$SCRIPTS/a.out") $(tps_of "$SCRIPTS/b.out")"
}

# "median | min | max" of the ratios given.
summarize() {
    printf '%s\n' "$@" | sort -n | python3 -c '
import sys, statistics
v = [float(x) for x in sys.stdin]
print(f"{statistics.median(v):.2f} | {min(v):.2f} | {max(v):.2f}")'
}

OUT=benches/CITUS.md
[ "$SMOKE" = 1 ] && OUT=${TENANCY_BENCH_OUT:-/tmp/pg_tenancy-citus-bench-smoke.md}
{
    echo "# pg_tenancy on Citus: benchmark"
    echo
    echo "Generated by \`benches/citus.sh\` on $(date -u '+%Y-%m-%d %H:%M') UTC: $(uname -m), $(nproc) cores;"
    echo "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'), Citus $(on_coordinator -At -c "SELECT extversion FROM pg_extension WHERE extname = 'citus'"), $BUILD,"
    echo "a coordinator and two workers on this machine, 32 shards; $TENANTS tenants x $ROWS rows per table;"
    echo "$ROUNDS rounds of ${SECONDS_PER_RUN} s, two pgbench runs at once (2 clients each), alternating which starts first."
    echo
    echo "| workload | ratio | median | min | max | shard tasks (pg_tenancy / other) |"
    echo "|---|---|---:|---:|---:|---|"
} >"$OUT"
for w in point aggregate; do
    for other in filter hand; do
        ratios=()
        for r in $(seq "$ROUNDS"); do
            first=$([ $((r % 2)) = 1 ] && echo a || echo b)
            read -r ta tb < <(round "${w}_tenancy" "${w}_$other" "$first")
            ratios+=("$(python3 -c "print(f'{$ta / $tb:.2f}')")")
            log "$w: pg_tenancy $ta tps, $other $tb tps (round $r)"
        done
        stmt_t=$([ "$w" = point ] && echo "SELECT v FROM t_tenancy WHERE id = 1" || echo "SELECT count(*), sum(v) FROM t_tenancy")
        case "$other" in
            filter) stmt_o=$([ "$w" = point ] && echo "SELECT v FROM t_filter WHERE tenant_id = '$TID' AND id = 1" || echo "SELECT count(*), sum(v) FROM t_filter WHERE tenant_id = '$TID'") ;;
            hand) stmt_o=$([ "$w" = point ] && echo "SELECT v FROM t_hand WHERE id = 1" || echo "SELECT count(*), sum(v) FROM t_hand") ;;
        esac
        summary=$(summarize "${ratios[@]}")
        echo "| $w | pg_tenancy / $other | $summary | $(tasks tenancy "$stmt_t") / $(tasks "$other" "$stmt_o") |" >>"$OUT"
    done
done
for w in point aggregate; do
    ratios=()
    for r in $(seq "$ROUNDS"); do
        first=$([ $((r % 2)) = 1 ] && echo a || echo b)
        read -r ta tb < <(round "session_${w}_tenancy" "session_${w}_filter" "$first")
        ratios+=("$(python3 -c "print(f'{$ta / $tb:.2f}')")")
        log "$w in a session of one tenant: pg_tenancy $ta tps, filter $tb tps (round $r)"
    done
    summary=$(summarize "${ratios[@]}")
    stmt_t=$([ "$w" = point ] && echo "SELECT v FROM t_tenancy WHERE id = 1" || echo "SELECT count(*), sum(v) FROM t_tenancy")
    stmt_o=$([ "$w" = point ] && echo "SELECT v FROM t_filter WHERE tenant_id = '$TID' AND id = 1" || echo "SELECT count(*), sum(v) FROM t_filter WHERE tenant_id = '$TID'")
    echo "| $w, a session of one tenant (mapped role) | pg_tenancy / filter | $summary | $(tasks session "$stmt_t") / $(tasks session "$stmt_o") |" >>"$OUT"
done
cat "$OUT"
