#!/usr/bin/env bash
# Concurrency soak of pg_tenancy (issue #7, item 3).
#
#   tests/reliability/soak.sh            short mode: 8 clients for 20 s (about 25 s in all)
#   tests/reliability/soak.sh --long     long mode: 16 clients for 10 minutes
#   SOAK_SECONDS=N SOAK_CLIENTS=N        override either mode's duration / client count
#
# Many pgbench clients, connected over TCP loopback as a NOSUPERUSER NOBYPASSRLS role, each
# transaction binding a random pre-signed token (20 tenants, 3 subjects each; half name the
# tenant by slug, half by uuid) and then inserting, updating, deleting, trying a cross-tenant
# write, or inserting and rolling back. Inside every transaction the script asserts that the
# binding is the token's and that the session sees no row of another tenant; a violation
# raises an error, which aborts the pgbench client and fails the run.
#
# Afterwards, as the superuser:
#   - every row's tenant_id (filled in by the column default from the binding) equals the
#     tenant of the token that wrote it (claimed_tenant, copied from the token table), and its
#     subject belongs to that tenant;
#   - nothing from a rolled-back transaction or a refused cross-tenant write is present;
#   - the audit trail holds exactly the committed changes (see "audit replay" below);
#   - audit_verify() is ok for every tenant (and the platform chain);
#   - pgbench reports 0 failed transactions and no aborted client; the server log shows no
#     crash.
# Runs its own throwaway cluster in /tmp/pg_tenancy-soak on a free port; stops it on exit.
set -euo pipefail
source "$(dirname "$0")/common.sh"

SECONDS_RUN=20
CLIENTS=8
if [ "${1:-}" = "--long" ]; then
    SECONDS_RUN=600
    CLIENTS=16
elif [ -n "${1:-}" ]; then
    die "usage: $0 [--long]"
fi
SECONDS_RUN=${SOAK_SECONDS:-$SECONDS_RUN}
CLIENTS=${SOAK_CLIENTS:-$CLIENTS}
NTENANTS=20
SUBJECTS=3
SECRET='soak-secret-soak-secret-soak-secret-0123456789'
CLUSTER=/tmp/pg_tenancy-soak
PORT=$(free_port)
started=$(date +%s)

trap 'cluster_stop "$CLUSTER"' EXIT
log "soak: starting a throwaway cluster in $CLUSTER on port $PORT"
cluster_start "$CLUSTER" "$PORT"

log "soak: schema, $NTENANTS tenants, $((NTENANTS * SUBJECTS)) tokens"
su_psql postgres -c 'CREATE DATABASE soak'
su_psql soak >/dev/null <<SQL
CREATE EXTENSION pg_tenancy;
CREATE ROLE soak_app LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
SELECT tenancy.add_key('soak', 'HS256', '$SECRET');
SELECT count(tenancy.create_tenant(format('soak-%s', g), settings => '{"default_roles": ["member"]}')) AS tenants FROM generate_series(1, $NTENANTS) g;

-- The pre-signed tokens (unprotected, readable by the application role). tid: the tenant's
-- uuid; sub: the token's subject; other: the uuid of some other tenant, for the refused
-- cross-tenant writes.
CREATE TABLE soak_tokens (n int PRIMARY KEY, tid uuid NOT NULL, sub text NOT NULL, other uuid NOT NULL,
                          token text);
INSERT INTO soak_tokens (n, tid, sub, other)
SELECT (t.g - 1) * $SUBJECTS + s, t.id, format('user-%s-%s', t.g, s),
       (SELECT id FROM tenancy.tenants WHERE slug = format('soak-%s', t.g % $NTENANTS + 1))
  FROM (SELECT id, substr(slug, 6)::int AS g FROM tenancy.tenants WHERE slug LIKE 'soak-%') t,
       generate_series(1, $SUBJECTS) s;
GRANT SELECT ON soak_tokens TO soak_app;

-- The protected table. tenant_id is left to its default (the bound tenant); claimed_tenant
-- and claimed_sub are what the client believes it is bound as; version counts updates.
CREATE TABLE soak_rows (
    tenant_id      uuid   NOT NULL,
    id             bigserial,
    claimed_tenant uuid   NOT NULL,
    claimed_sub    text   NOT NULL,
    client         int    NOT NULL,
    version        int    NOT NULL DEFAULT 1,
    note           text   NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
SELECT tenancy.protect('public.soak_rows');
GRANT SELECT, INSERT, UPDATE, DELETE ON soak_rows TO soak_app;
GRANT USAGE ON SEQUENCE soak_rows_id_seq TO soak_app;

-- For the audit replay: folds a row's INSERT and UPDATE images in order (a || b).
CREATE AGGREGATE soak_merge(jsonb) (sfunc = jsonb_concat, stype = jsonb, initcond = '{}');
SQL

# Sign the tokens here (stdlib HMAC-SHA256): even n names the tenant by uuid, odd n by slug.
su_psql soak -F $'\t' -c \
    "SELECT k.n, CASE WHEN k.n % 2 = 0 THEN k.tid::text ELSE t.slug END, k.sub
       FROM soak_tokens k JOIN tenancy.tenants t ON t.id = k.tid ORDER BY k.n" |
    python3 "$RELIABILITY_DIR/hs256.py" "$SECRET" soak $((SECONDS_RUN + 3600)) |
    su_psql soak -c "CREATE TEMP TABLE signed (n int, token text)" -c '\copy signed FROM pstdin' \
        -c "UPDATE soak_tokens k SET token = s.token FROM signed s WHERE s.n = k.n"
check "tokens signed" "$(su_psql soak -c 'SELECT count(token) FROM soak_tokens')" "$((NTENANTS * SUBJECTS))"

# The pgbench transaction. op picks what it does:
#   1-45 insert 1-3 rows; 46-65 update the tenant's newest row; 66-75 delete its oldest row;
#   76-85 insert rows marked 'rolled-back', then ROLLBACK; 86-92 try to insert a row of
#   another tenant and to move a row to another tenant, both must fail with 42501 (inside a
#   subtransaction, so the binding must survive its rollback); 93-100 read only.
WORK=$CLUSTER/work
mkdir -p "$WORK"
cat >"$WORK/soak.pgbench" <<'PGBENCH'
\set n random(1, :ntokens)
\set op random(1, 100)
SELECT tid AS claimed, sub AS claimed_sub, token, other FROM soak_tokens WHERE n = :n \gset
BEGIN;
SELECT tenancy.bind(':token');
SELECT (tenancy.current_tenant() = ':claimed'::uuid AND tenancy.current_subject() = ':claimed_sub')::int AS bind_ok,
       count(*) FILTER (WHERE tenant_id <> ':claimed' OR claimed_tenant <> ':claimed') AS foreign_rows
  FROM soak_rows \gset
\if :bind_ok = 0 OR :foreign_rows > 0
DO $$ BEGIN RAISE EXCEPTION 'ISOLATION VIOLATION: token % bound %, % rows of other tenants visible', :n, :bind_ok, :foreign_rows; END $$;
\endif
\if :op <= 45
INSERT INTO soak_rows (claimed_tenant, claimed_sub, client, note)
SELECT ':claimed', ':claimed_sub', :client_id, 'inserted' FROM generate_series(1, 1 + :op % 3);
\elif :op <= 65
UPDATE soak_rows SET version = version + 1, note = 'updated' WHERE id = (SELECT max(id) FROM soak_rows);
\elif :op <= 75
DELETE FROM soak_rows WHERE id = (SELECT min(id) FROM soak_rows);
\elif :op <= 85
INSERT INTO soak_rows (claimed_tenant, claimed_sub, client, note)
SELECT ':claimed', ':claimed_sub', :client_id, 'rolled-back' FROM generate_series(1, 2);
\elif :op <= 92
DO $$
BEGIN
    BEGIN
        INSERT INTO soak_rows (tenant_id, claimed_tenant, claimed_sub, client, note)
        VALUES (':other', ':other', 'intruder', :client_id, 'cross-tenant');
        RAISE EXCEPTION 'ISOLATION VIOLATION: insert of a row of tenant :other accepted';
    EXCEPTION WHEN insufficient_privilege THEN NULL;
    END;
    BEGIN
        UPDATE soak_rows SET tenant_id = ':other', note = 'cross-tenant' WHERE id = (SELECT max(id) FROM soak_rows);
        IF FOUND THEN
            RAISE EXCEPTION 'ISOLATION VIOLATION: row moved to tenant :other';
        END IF;
    EXCEPTION WHEN insufficient_privilege THEN NULL;
    END;
    IF tenancy.current_tenant() <> ':claimed' THEN
        RAISE EXCEPTION 'ISOLATION VIOLATION: binding changed by a subtransaction rollback';
    END IF;
END $$;
\endif
\if :op > 75 AND :op <= 85
ROLLBACK;
\else
COMMIT;
\endif
PGBENCH

log "soak: pgbench, $CLIENTS clients, ${SECONDS_RUN}s, over 127.0.0.1 as soak_app"
pgbench_rc=0
"$PGBIN/pgbench" -n -h 127.0.0.1 -p "$PORT" -U soak_app -c "$CLIENTS" -j 2 -T "$SECONDS_RUN" \
    -D ntokens=$((NTENANTS * SUBJECTS)) -f "$WORK/soak.pgbench" soak \
    >"$WORK/pgbench.out" 2>"$WORK/pgbench.err" || pgbench_rc=$?
cat "$WORK/pgbench.out"
grep -a -m 20 -E 'aborted|ERROR|VIOLATION' "$WORK/pgbench.err" || true

log "soak: checks"
processed=$(sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' "$WORK/pgbench.out")
failed_tx=$(sed -nE 's/^number of failed transactions: ([0-9]+).*/\1/p' "$WORK/pgbench.out")
check "pgbench exit status" "$pgbench_rc" 0
check "pgbench failed transactions" "${failed_tx:-missing}" 0
check "pgbench aborted clients" "$(grep -ac 'aborted in command' "$WORK/pgbench.err" || true)" 0
echo "  pgbench transactions processed: ${processed:-none}"
check "pgbench processed some transactions" "$([ "${processed:-0}" -gt 0 ] && echo yes || echo no)" yes

q() { su_psql soak -c "$1"; }
echo "  rows now: $(q 'SELECT count(*) FROM soak_rows'), in $(q 'SELECT count(DISTINCT tenant_id) FROM soak_rows') tenants"
check "rows whose tenant_id differs from the writing token's tenant" \
    "$(q 'SELECT count(*) FROM soak_rows WHERE tenant_id <> claimed_tenant')" 0
check "rows whose subject is not one of their tenant's tokens" \
    "$(q 'SELECT count(*) FROM soak_rows r WHERE NOT EXISTS
            (SELECT FROM soak_tokens k WHERE k.tid = r.tenant_id AND k.sub = r.claimed_sub)')" 0
check "rows of rolled-back transactions or refused cross-tenant writes" \
    "$(q "SELECT count(*) FROM soak_rows WHERE note IN ('rolled-back', 'cross-tenant')")" 0

# Audit replay. The trail of soak_rows must be exactly the committed changes. For every row key
# (tenant_id, id) that ever existed, its records in id order must be: one INSERT (the full row),
# then UPDATEs (changed columns only), then at most one DELETE (the full old row), last. Folding
# INSERT || UPDATE... must reproduce the row as it is now (or, for a deleted key, the DELETE's
# old row), and the UPDATE records must carry versions 2, 3, ... without gap or repeat: a lost,
# duplicated or phantom record (or one from a rolled-back transaction) breaks one of these.
# Row locks serialize the changes of one row, and a record's id is drawn while the lock is
# held, so a row's records are in id order. Committed rows with no record are caught by the
# full join.
AUDIT="tenancy.audit_log WHERE table_name IN ('soak_rows', 'public.soak_rows')"
cat >"$WORK/replay.sql" <<SQL
CREATE TEMP VIEW replay AS
WITH a AS (
    SELECT id, tenant_id, op, subject, new_row, old_row,
           (row_key ->> 'tenant_id')::uuid AS key_tenant, (row_key ->> 'id')::bigint AS key_id
      FROM $AUDIT
), k AS (
    SELECT key_tenant, key_id,
           count(*) FILTER (WHERE op = 'INSERT') AS ins,
           count(*) FILTER (WHERE op = 'UPDATE') AS upd,
           count(*) FILTER (WHERE op = 'DELETE') AS del,
           count(*) FILTER (WHERE op NOT IN ('INSERT', 'UPDATE', 'DELETE')) AS other_ops,
           bool_and(tenant_id = key_tenant) AS tenant_ok,
           min(id) FILTER (WHERE op = 'INSERT') = min(id) AS insert_first,
           coalesce(max(id) FILTER (WHERE op = 'DELETE') = max(id), true) AS delete_last,
           bool_and(op <> 'INSERT' OR subject = new_row ->> 'claimed_sub') AS insert_subject_ok,
           coalesce(array_agg((new_row ->> 'version')::int ORDER BY id) FILTER (WHERE op = 'UPDATE'), '{}')
             = coalesce(array_agg(v::int ORDER BY id) FILTER (WHERE op = 'UPDATE'), '{}') AS versions_ok,
           soak_merge(new_row ORDER BY id) FILTER (WHERE op IN ('INSERT', 'UPDATE')) AS state,
           max(old_row::text) FILTER (WHERE op = 'DELETE')::jsonb AS deleted_row
      FROM (SELECT a.*, 1 + row_number() OVER (PARTITION BY key_tenant, key_id, op = 'UPDATE' ORDER BY id) AS v FROM a) a
     GROUP BY 1, 2
)
SELECT coalesce(k.key_tenant, r.tenant_id) AS tenant_id, coalesce(k.key_id, r.id) AS id, k.*,
       to_jsonb(r) AS row_now,
       CASE
         WHEN k.key_id IS NULL THEN 'committed row without audit records'
         WHEN k.ins <> 1 THEN format('%s INSERT records', k.ins)
         WHEN k.del > 1 THEN format('%s DELETE records', k.del)
         WHEN k.other_ops > 0 THEN 'unexpected record kinds'
         WHEN NOT k.tenant_ok THEN 'record tenant differs from the row key'
         WHEN NOT k.insert_first THEN 'INSERT is not the first record'
         WHEN NOT k.delete_last THEN 'DELETE is not the last record'
         WHEN NOT k.insert_subject_ok THEN 'INSERT record subject differs from the token subject'
         WHEN NOT k.versions_ok THEN 'UPDATE records lost, duplicated or out of order'
         WHEN k.del = 0 AND r.id IS NULL THEN 'row absent but not deleted in the trail'
         WHEN k.del = 1 AND r.id IS NOT NULL THEN 'row present but deleted in the trail'
         WHEN k.del = 0 AND k.state <> to_jsonb(r) THEN 'replayed trail differs from the row'
         WHEN k.del = 1 AND k.state <> k.deleted_row THEN 'DELETE record differs from the replayed row'
       END AS problem
  FROM k FULL JOIN soak_rows r ON r.tenant_id = k.key_tenant AND r.id = k.key_id;
SQL
su_psql soak -f "$WORK/replay.sql" -c "\copy (SELECT tenant_id, id, problem FROM replay WHERE problem IS NOT NULL LIMIT 20) TO '$WORK/replay-problems.txt'" || true
read -r ins upd del keys <<<"$(q "SELECT count(*) FILTER (WHERE op = 'INSERT'), count(*) FILTER (WHERE op = 'UPDATE'),
                                          count(*) FILTER (WHERE op = 'DELETE'),
                                          count(DISTINCT (row_key ->> 'tenant_id', row_key ->> 'id'))
                                     FROM $AUDIT" | tr '|' ' ')"
echo "  audit records of soak_rows: $ins INSERT, $upd UPDATE, $del DELETE, $keys row keys"
check "rows now = audit INSERTs - audit DELETEs" "$(q 'SELECT count(*) FROM soak_rows')" "$((ins - del))"
check "row keys whose trail does not replay to the row (exact audit)" \
    "$(su_psql soak -f "$WORK/replay.sql" -c 'SELECT count(*) FROM replay WHERE problem IS NOT NULL')" 0
if [ -s "$WORK/replay-problems.txt" ]; then
    echo "  first problems (tenant, id, problem):"
    sed 's/^/    /' "$WORK/replay-problems.txt"
fi
check "audit records of rolled-back or refused writes" \
    "$(q "SELECT count(*) FROM $AUDIT AND coalesce(new_row, old_row) ->> 'note' IN ('rolled-back', 'cross-tenant')")" 0
check "audit records whose tenant is not the row's tenant" \
    "$(q "SELECT count(*) FROM $AUDIT AND tenant_id IS DISTINCT FROM (row_key ->> 'tenant_id')::uuid")" 0

read -r chains bad records <<<"$(q "SELECT count(*), count(*) FILTER (WHERE NOT ok), coalesce(sum(records), 0)
                                   FROM tenancy.audit_verify()" | tr '|' ' ')"
echo "  audit_verify(): $chains chains, $records records"
check "audit chains that fail audit_verify" "$bad" 0
q "SELECT tenant, records, first_bad_id, detail FROM tenancy.audit_verify() WHERE NOT ok" | sed 's/^/    /'
check "tenants with a verified audit chain" \
    "$(q "SELECT count(*) FROM tenancy.tenants t, tenancy.audit_verify(t.id::text) v
           WHERE t.slug LIKE 'soak-%' AND v.ok AND v.records > 0")" "$NTENANTS"

crashes=$(server_log_crashes)
check "crash lines in the server log" "$(printf '%s' "$crashes" | grep -c . || true)" 0

echo "  elapsed: $(($(date +%s) - started)) s"
summary "soak ($CLIENTS clients, ${SECONDS_RUN}s)"
