#!/usr/bin/env bash
# Random queries against protected tables (issue #7, item 6), with Debian's sqlsmith.
#
#   tests/reliability/sqlsmith.sh          short mode: 30 s of sqlsmith, then the replay
#                                          (about 60 s in all)
#   tests/reliability/sqlsmith.sh --long   long mode: 10 minutes of sqlsmith, then the replay
#   SMITH_SECONDS=N                        override the sqlsmith time of either mode
#   SMITH_SEED=N                           first seed (later rounds use N+1, N+2, ...)
#
# A small protected schema holds rows of two tenants; tenant B's rows carry B's uuid and a
# marker text (also in jsonb); tenancy.audit_log holds both tenants' records. sqlsmith runs as
# smith_a, a NOSUPERUSER NOBYPASSRLS login role mapped to tenant A with its admin role (so
# bound without a token; statement_timeout 2s on the role), in rounds
# of --max-queries with successive seeds until the time is used. Its --dump-all-queries output
# is then replayed through psql as the same role (smith_replay.py) and every result and error
# message is scanned for B's uuid and marker. sqlsmith rolls back what its generated
# INSERT/UPDATE/DELETE/MERGE statements do, and so does the replay, so both see the same data
# (the script prints tenant A's row count before and after sqlsmith to show it). Checks:
#   - no replayed query's output contains B's uuid or marker (and, as a positive control,
#     some show A's own rows);
#   - tenant B's rows are unchanged, and no row of tenant A carries B's uuid or marker;
#   - the backend never crashed: no "terminated by signal", PANIC or TRAP in the server log,
#     and the server still answers.
# Installs Debian's sqlsmith if it is missing. Runs its own throwaway cluster in
# /tmp/pg_tenancy-sqlsmith on a free port; stops it on exit.
set -euo pipefail
source "$(dirname "$0")/common.sh"

SMITH_TIME=30
if [ "${1:-}" = "--long" ]; then
    SMITH_TIME=600
elif [ -n "${1:-}" ]; then
    die "usage: $0 [--long]"
fi
SMITH_TIME=${SMITH_SECONDS:-$SMITH_TIME}
SEED=${SMITH_SEED:-$(date +%s)}
QUERIES_PER_ROUND=2000
MARKER=ZZLEAKMARK
CLUSTER=/tmp/pg_tenancy-sqlsmith
PORT=$(free_port)
started=$(date +%s)

if ! command -v sqlsmith >/dev/null; then
    log "installing Debian's sqlsmith"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends sqlsmith >/dev/null
fi

trap 'cluster_stop "$CLUSTER"' EXIT
log "sqlsmith: starting a throwaway cluster in $CLUSTER on port $PORT"
cluster_start "$CLUSTER" "$PORT"

log "sqlsmith: protected schema with tenants A and B"
su_psql postgres -c 'CREATE DATABASE smith'
su_psql smith >/dev/null <<SQL
CREATE EXTENSION pg_tenancy;
CREATE ROLE smith_a LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
-- Bounds every generated query; idle sessions in an open transaction are ended too.
ALTER ROLE smith_a SET statement_timeout = '2s';
ALTER ROLE smith_a SET idle_in_transaction_session_timeout = '10s';
SELECT tenancy.create_tenant('smith-a'), tenancy.create_tenant('smith-b');

CREATE SCHEMA app;
GRANT USAGE ON SCHEMA app TO smith_a;
CREATE TABLE app.accounts (
    tenant_id uuid NOT NULL, id int NOT NULL, name text NOT NULL, tags text[], profile jsonb,
    created timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (tenant_id, id));
CREATE TABLE app.orders (
    tenant_id uuid NOT NULL, id int NOT NULL, account_id int NOT NULL, amount numeric(12, 2),
    memo text, ref uuid, PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, account_id) REFERENCES app.accounts (tenant_id, id));
CREATE TABLE app.events (
    tenant_id uuid NOT NULL, id int NOT NULL, at date NOT NULL, kind text, payload jsonb,
    PRIMARY KEY (tenant_id, id, at)) PARTITION BY RANGE (at);
CREATE TABLE app.events_2026 PARTITION OF app.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE app.events_2027 PARTITION OF app.events FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
SELECT tenancy.protect_schema('app');
CREATE VIEW app.order_totals WITH (security_invoker = true) AS
    SELECT a.tenant_id, a.id, a.name, sum(o.amount) AS total, count(*) AS orders
      FROM app.accounts a JOIN app.orders o ON o.tenant_id = a.tenant_id AND o.account_id = a.id
     GROUP BY 1, 2, 3;
-- An unprotected lookup table without tenant data, to join against.
CREATE TABLE app.kinds (kind text PRIMARY KEY, label text);
INSERT INTO app.kinds SELECT 'k' || g, 'kind ' || g FROM generate_series(1, 5) g;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA app TO smith_a;

-- Rows. Tenant A's carry 'tenant-a-row'; tenant B's carry the marker and B's uuid (also as
-- ref, inside jsonb and arrays), so any of them leaking into A's results is recognisable.
CREATE TEMP TABLE t AS SELECT (SELECT id FROM tenancy.tenants WHERE slug = 'smith-a') AS a,
                              (SELECT id FROM tenancy.tenants WHERE slug = 'smith-b') AS b;
INSERT INTO app.accounts
SELECT x.tid, g, format('%s account %s', x.label, g), ARRAY[x.label, 'tag' || g],
       jsonb_build_object('owner', x.label, 'tid', x.tid, 'n', g), now() - g * interval '1 day'
  FROM t, LATERAL (VALUES (t.a, 'tenant-a-row'), (t.b, '$MARKER-b-row')) x(tid, label),
       generate_series(1, 200) g;
INSERT INTO app.orders
SELECT x.tid, g, 1 + g % 200, g * 10.5, format('%s order %s', x.label, g), x.tid
  FROM t, LATERAL (VALUES (t.a, 'tenant-a-row'), (t.b, '$MARKER-b-row')) x(tid, label),
       generate_series(1, 1000) g;
INSERT INTO app.events
SELECT x.tid, g, date '2026-01-01' + g % 700, 'k' || (1 + g % 5), jsonb_build_object('label', x.label, 'tid', x.tid)
  FROM t, LATERAL (VALUES (t.a, 'tenant-a-row'), (t.b, '$MARKER-b-row')) x(tid, label),
       generate_series(1, 1000) g;
-- Mapped as the tenant's admin: the widest surface (it may also read its tenant's audit
-- records, while tenancy.audit_log holds B's too, and call tenant management functions).
SELECT tenancy.map_role('smith_a', 'smith-a', '{admin}');
ANALYZE;
SQL
A_ID=$(su_psql smith -c "SELECT id FROM tenancy.tenants WHERE slug = 'smith-a'")
B_ID=$(su_psql smith -c "SELECT id FROM tenancy.tenants WHERE slug = 'smith-b'")
# A digest of tenant B's rows, to compare after the run.
B_DIGEST_SQL="SELECT md5(string_agg(r, E'\n' ORDER BY r)) FROM (
    SELECT to_jsonb(x)::text FROM app.accounts x WHERE tenant_id = '$B_ID' UNION ALL
    SELECT to_jsonb(x)::text FROM app.orders x WHERE tenant_id = '$B_ID' UNION ALL
    SELECT to_jsonb(x)::text FROM app.events x WHERE tenant_id = '$B_ID') s(r)"
B_DIGEST=$(su_psql smith -c "$B_DIGEST_SQL")
B_ROWS=$(su_psql smith -c "SELECT (SELECT count(*) FROM app.accounts WHERE tenant_id = '$B_ID')
                                 + (SELECT count(*) FROM app.orders WHERE tenant_id = '$B_ID')
                                 + (SELECT count(*) FROM app.events WHERE tenant_id = '$B_ID')")
echo "  tenant A $A_ID, tenant B $B_ID ($B_ROWS rows, digest $B_DIGEST)"
CONNINFO="host=$CLUSTER port=$PORT dbname=smith user=smith_a"
check "smith_a is bound to tenant A without a token" \
    "$("$PGBIN/psql" -X -At -d "$CONNINFO" -c 'SELECT tenancy.current_tenant()')" "$A_ID"
check "smith_a sees no row of tenant B (direct query)" \
    "$("$PGBIN/psql" -X -At -d "$CONNINFO" -c "SELECT count(*) FROM app.accounts WHERE tenant_id = '$B_ID'")" 0
check "smith_a is NOSUPERUSER NOBYPASSRLS" \
    "$(su_psql smith -c "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = 'smith_a'")" f

A_ROWS_SQL="SELECT (SELECT count(*) FROM app.accounts WHERE tenant_id = '$A_ID')
                  + (SELECT count(*) FROM app.orders WHERE tenant_id = '$A_ID')
                  + (SELECT count(*) FROM app.events WHERE tenant_id = '$A_ID')"
echo "  tenant A rows before sqlsmith: $(su_psql smith -c "$A_ROWS_SQL")"

log "sqlsmith: generating and running queries as smith_a for ${SMITH_TIME}s (seeds from $SEED)"
WORK=$CLUSTER/work
mkdir -p "$WORK"
round=0
generated=0
deadline=$(($(date +%s) + SMITH_TIME))
while [ "$(date +%s)" -lt "$deadline" ]; do
    left=$((deadline - $(date +%s)))
    seed=$((SEED + round))
    # sqlsmith stops at --max-queries; `timeout` bounds a round (a query is bounded by the
    # role's statement_timeout). sqlsmith exits non-zero when its connection is lost, for
    # example after a generated pg_terminate_backend(): that is not a failure here, a crash is
    # (checked in the server log below).
    smith_rc=0
    timeout --kill-after=5 "$((left > 1 ? left : 1))" sqlsmith --target="$CONNINFO" --seed="$seed" \
        --max-queries="$QUERIES_PER_ROUND" --exclude-catalog --dump-all-queries --verbose \
        >"$WORK/queries-$round.sql" 2>"$WORK/sqlsmith-$round.log" || smith_rc=$?
    # Complete statements only, split exactly as smith_replay.py splits them (a round cut short
    # by `timeout` can end in half a statement).
    n=$(python3 -c 'import re, sys
p = re.split(r";\n", open(sys.argv[1], errors="replace").read())
p.pop()
print(sum(1 for x in p if x.strip()))' "$WORK/queries-$round.sql")
    generated=$((generated + n))
    echo "  round $round (seed $seed): $n queries, sqlsmith exit status $smith_rc"
    round=$((round + 1))
done
echo "  sqlsmith ran $generated queries in $round rounds; tenant A rows now: $(su_psql smith -c "$A_ROWS_SQL")"
check "sqlsmith generated queries" "$([ "$generated" -gt 0 ] && echo yes || echo no)" yes
echo "  most frequent sqlsmith errors:"
cat "$WORK"/sqlsmith-*.log | grep -aP '^\d+\tERROR' | awk -F'\t' '{c[$2]+=$1} END {for (e in c) print c[e] "\t" e}' |
    sort -rn | head -8 | sed 's/^/    /' || true

log "sqlsmith: replaying the queries through psql as smith_a and scanning the results"
replay_rc=0
python3 "$RELIABILITY_DIR/smith_replay.py" --psql "$PGBIN/psql" --conninfo "$CONNINFO" \
    --forbid "$B_ID" --forbid "${B_ID//-/}" --forbid "$MARKER" --expect tenant-a-row \
    --out "$WORK" "$WORK"/queries-*.sql >"$WORK/replay.out" 2>&1 || replay_rc=$?
grep -v '^REPLAYED=' "$WORK/replay.out" || true
replayed=$(sed -nE 's/^REPLAYED=([0-9]+) .*/\1/p' "$WORK/replay.out")
leaks=$(sed -nE 's/^REPLAYED=.* LEAKS=([0-9]+) .*/\1/p' "$WORK/replay.out")
positive=$(sed -nE 's/.* POSITIVE=([0-9]+)$/\1/p' "$WORK/replay.out")
check "replayed statements = generated" "${replayed:-none}" "$generated"
check "replayed statements whose output shows tenant B's uuid or marker" "${leaks:-replay failed}" 0
check "replay exit status" "$replay_rc" 0
check "replayed statements showing tenant A's rows (positive control) > 0" \
    "$([ "${positive:-0}" -gt 0 ] && echo yes || echo no)" yes

log "sqlsmith: data and server checks"
check "tenant B's rows unchanged (digest)" "$(su_psql smith -c "$B_DIGEST_SQL")" "$B_DIGEST"
check "rows of tenant A carrying B's uuid or marker" \
    "$(su_psql smith -c "SELECT (SELECT count(*) FROM app.accounts x WHERE tenant_id <> '$B_ID' AND (to_jsonb(x)::text ILIKE '%$MARKER%' OR to_jsonb(x)::text ILIKE '%$B_ID%'))
                              + (SELECT count(*) FROM app.orders x WHERE tenant_id <> '$B_ID' AND (to_jsonb(x)::text ILIKE '%$MARKER%' OR to_jsonb(x)::text ILIKE '%$B_ID%'))
                              + (SELECT count(*) FROM app.events x WHERE tenant_id <> '$B_ID' AND (to_jsonb(x)::text ILIKE '%$MARKER%' OR to_jsonb(x)::text ILIKE '%$B_ID%'))")" 0
check "server still answers" "$(su_psql smith -c 'SELECT 1')" 1
crashes=$(server_log_crashes)
check "crash lines in the server log (terminated by signal, PANIC, TRAP)" "$(printf '%s' "$crashes" | grep -c . || true)" 0
[ -z "$crashes" ] || printf '%s\n' "$crashes" | head -5 | sed 's/^/    /'

echo "  elapsed: $(($(date +%s) - started)) s"
summary "sqlsmith (${SMITH_TIME}s, $generated queries)"
