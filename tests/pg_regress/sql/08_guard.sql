-- The guard: DDL that would weaken a protected table (disabling or un-forcing row security,
-- dropping, altering or adding policies, changing the tenant column, disabling or dropping
-- pg_tenancy's triggers) is refused for every role, superusers and the table's owner
-- included, except through tenancy.unprotect() (operators, audited). So are the ways around a
-- table's row security that leave the table alone: a temporary relation named like a protected
-- table, and a materialized view over one. Harmless DDL passes. (DDL that would run code over
-- every tenant's rows: 09_channels.)
\getenv abs_srcdir PG_ABS_SRCDIR
\set ECHO none
\i :abs_srcdir/helpers/setup.sql
\set ECHO all
\set VERBOSITY default

CREATE ROLE regress_guard_owner LOGIN NOSUPERUSER NOBYPASSRLS;
CREATE SCHEMA guard AUTHORIZATION regress_guard_owner;
CREATE TABLE guard.notes (tenant_id uuid, id int, body text);
ALTER TABLE guard.notes OWNER TO regress_guard_owner;
SELECT tenancy.protect('guard.notes');

-- Refused, even for a superuser.
ALTER TABLE guard.notes DISABLE ROW LEVEL SECURITY;
ALTER TABLE guard.notes NO FORCE ROW LEVEL SECURITY;
DROP POLICY tenancy_isolation_select ON guard.notes;
DROP POLICY tenancy_select ON guard.notes;
ALTER POLICY tenancy_select ON guard.notes USING (true);
ALTER POLICY tenancy_isolation_select ON guard.notes RENAME TO x;
CREATE POLICY everyone ON guard.notes FOR SELECT USING (true);
ALTER TABLE guard.notes ALTER COLUMN tenant_id DROP NOT NULL;
ALTER TABLE guard.notes ALTER COLUMN tenant_id DROP DEFAULT;
ALTER TABLE guard.notes DROP COLUMN tenant_id CASCADE;
ALTER TABLE guard.notes DISABLE TRIGGER tenancy_no_truncate;
ALTER TABLE guard.notes DISABLE TRIGGER ALL;
DROP TRIGGER tenancy_audit_ins ON guard.notes;
-- PostgreSQL itself refuses to retype a column that policies use.
ALTER TABLE guard.notes ALTER COLUMN tenant_id TYPE text;
-- The owner is refused alike. (The guard is an event trigger at the end of each DDL command,
-- as the first refusal's CONTEXT shows: it fires for every role, whether or not the session
-- has loaded pg_tenancy, and its error rolls the command back.)
\c - regress_guard_owner
ALTER TABLE guard.notes DISABLE ROW LEVEL SECURITY;
DROP POLICY tenancy_select ON guard.notes;
CREATE POLICY mine ON guard.notes FOR ALL USING (true);
ALTER TABLE guard.notes ALTER COLUMN tenant_id DROP DEFAULT;
ALTER TABLE guard.notes DISABLE TRIGGER tenancy_audit_upd;
-- Harmless changes pass, for the owner and the superuser.
ALTER TABLE guard.notes ADD COLUMN note text;
CREATE INDEX ON guard.notes (tenant_id, id);
\c - postgres
ALTER TABLE guard.notes RENAME TO memos;
ALTER TABLE guard.memos RENAME TO notes;
ALTER TABLE guard.notes RENAME COLUMN body TO text;
-- Nothing weakened: the protection is what protect() recorded.
SELECT "table", length(policy_digest) AS digest_length FROM tenancy.protected_tables WHERE "table"::text LIKE 'guard.%';
SELECT count(*) AS findings FROM tenancy.verify() WHERE object LIKE 'guard.%' AND rule = 'protection_drift';

-- Ways around the table: a temporary relation named like a protected table would capture the
-- next pooled client's unqualified reads and writes; a materialized view stores rows without
-- row security. Both refused.
SET search_path = pg_temp, guard;
CREATE TEMP TABLE notes (tenant_id uuid, id int, body text);
CREATE TEMP VIEW notes AS SELECT 1 AS id;
RESET search_path;
CREATE MATERIALIZED VIEW guard.all_notes AS SELECT * FROM guard.notes;
CREATE VIEW guard.notes_v WITH (security_invoker = true) AS SELECT * FROM guard.notes;
CREATE MATERIALIZED VIEW guard.all_notes AS SELECT * FROM guard.notes_v;

-- The guard's internal functions are not for calling.
SELECT tenancy._forget_dropped();
SELECT tenancy._guard_check('{}');

-- An operator unprotects (audited); then the table is the owner's to change.
\c - regress_guard_owner
SELECT tenancy.unprotect('guard.notes');
\c - postgres
SELECT tenancy.unprotect('guard.notes');
SELECT count(*) AS policies_left FROM pg_policies WHERE schemaname = 'guard' AND tablename = 'notes';
\c - regress_guard_owner
ALTER TABLE guard.notes DISABLE ROW LEVEL SECURITY;
\c - postgres
SELECT new_row->>'action' AS action, new_row->>'table' AS tbl, db_role FROM tenancy.audit_log
 WHERE tenant_id = '00000000-0000-0000-0000-000000000000' AND new_row->>'table' = 'guard.notes' ORDER BY id;

DROP SCHEMA guard CASCADE;
DROP ROLE regress_guard_owner;
