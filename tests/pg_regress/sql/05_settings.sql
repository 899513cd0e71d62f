-- Settings and limits: a tenant's settings are JSON its admin (or an operator) sets with
-- tenancy.set_setting and a bound session reads with tenancy.setting. Three of them,
-- statement_timeout, lock_timeout and work_mem, are applied to every bound transaction and
-- are limits: a bound session runs with at most the tenant's value, at most the ceiling an
-- operator sets for the tenant (tenancy.set_limit) and at most the superuser's ceiling for
-- every tenant (tenancy.max_*), whatever it SETs itself; it may always go lower. A tenant's
-- admin cannot set a value above a ceiling. Changes are recorded in the tenant's trail.
\getenv abs_srcdir PG_ABS_SRCDIR
\set ECHO none
\i :abs_srcdir/helpers/setup.sql
\set ECHO all
\set VERBOSITY default

SELECT tenancy.create_tenant('set-acme', settings => '{"model": "small"}') IS NOT NULL AS created;
SELECT tenancy.create_tenant('set-globex') IS NOT NULL AS created;
SELECT tenancy.add_key('set-key', 'HS256', 'a-secret-that-is-at-least-32-bytes-long');
SELECT tenancy.add_member('set-acme', 'boss', 'admin');
SELECT tenancy.add_member('set-acme', 'mia', 'member');
CREATE ROLE regress_set_ops LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT tenancy_operator TO regress_set_ops;
CREATE ROLE regress_set_app LOGIN NOSUPERUSER NOBYPASSRLS;

-- set_setting(tenant, key, value): any JSON; NULL removes the key. Resource settings are
-- checked as SET would check them.
\c - regress_set_ops
SELECT tenancy.set_setting('set-acme', 'guardrails', '{"pii": "redact"}');
SELECT tenancy.set_setting('set-acme', 'statement_timeout', '"5s"');
SELECT tenancy.set_setting('set-acme', 'work_mem', '"32MB"');
SELECT tenancy.set_setting('set-acme', 'model', NULL);
SELECT tenancy.set_setting('set-acme', 'work_mem', '"a lot"');
SELECT tenancy.set_setting('set-acme', 'lock_timeout', '[1]');
SELECT tenancy.set_setting('set-acme', '', '1');
SELECT settings FROM tenancy.tenants WHERE slug = 'set-acme';

-- A bound session reads its tenant's settings and runs with its resource settings; unbound,
-- setting() is refused.
\c - regress_set_app
SELECT tenancy.setting('guardrails');
BEGIN;
SELECT tenancy.bind(regress.token('set-acme', 'mia', 'set-key')) IS NOT NULL AS bound;
SELECT tenancy.setting('guardrails'), tenancy.setting('statement_timeout');
SHOW statement_timeout;
SHOW work_mem;
-- A member does not change them.
SELECT tenancy.set_setting('set-acme', 'model', '"big"');
ROLLBACK;
SHOW work_mem;

-- The tenant's admin does, for its own tenant only.
BEGIN;
SELECT tenancy.bind(regress.token('set-acme', 'boss', 'set-key')) IS NOT NULL AS bound;
SELECT tenancy.set_setting('set-acme', 'model', '"big"');
SELECT tenancy.set_setting('set-globex', 'model', '"big"');
ROLLBACK;

-- set_limit(tenant, name, value): an operator's ceiling for one tenant (NULL removes it).
-- Only the three resource settings, with a positive value.
\c - regress_set_ops
SELECT tenancy.set_limit('set-acme', 'work_mem', '"8MB"');
SELECT tenancy.set_limit('set-acme', 'statement_timeout', '"2s"');
SELECT tenancy.set_limit('set-acme', 'lock_timeout', '"1s"');
SELECT tenancy.set_limit('set-acme', 'lock_timeout', NULL);
SELECT tenancy.set_limit('set-acme', 'work_mem', '"lots"');
SELECT tenancy.set_limit('set-acme', 'model', '"small"');
SELECT slug, settings, limits FROM tenancy.tenants WHERE slug = 'set-acme';
\c - regress_set_app
SELECT tenancy.set_limit('set-acme', 'work_mem', '"1GB"');

-- The tenant's admin cannot set a value above the ceiling (a timeout of 0, none, is above
-- any); at or below it, it can.
BEGIN;
SELECT tenancy.bind(regress.token('set-acme', 'boss', 'set-key')) IS NOT NULL AS bound;
SAVEPOINT s;
SELECT tenancy.set_setting('set-acme', 'work_mem', '"64MB"');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.set_setting('set-acme', 'statement_timeout', '"0"');
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.set_setting('set-acme', 'statement_timeout', '"1500ms"');
COMMIT;

-- A bound session runs with at most the ceiling, whatever it SETs; lower is always allowed.
-- (The tenant's work_mem, 32MB, set before the limit, is brought down to it too.)
SET work_mem = '1GB';
SET statement_timeout = 0;
BEGIN;
SELECT tenancy.bind(regress.token('set-acme', 'mia', 'set-key')) IS NOT NULL AS bound;
SHOW work_mem;
SHOW statement_timeout;
SET LOCAL work_mem = '1GB';
SHOW work_mem;
SET LOCAL work_mem = '1MB';
SHOW work_mem;
-- Hash tables may use work_mem times hash_mem_multiplier: it is held at PostgreSQL's default.
SET LOCAL hash_mem_multiplier = 1000;
SHOW hash_mem_multiplier;
-- So is maintenance_work_mem (a session's own CREATE INDEX on a temporary table uses it).
SET LOCAL maintenance_work_mem = '512MB';
SHOW maintenance_work_mem;
-- The timeout holds, though the session lifted its own.
SET LOCAL statement_timeout = 0;
SELECT pg_sleep(3);
ROLLBACK;
-- Unbound, the session's own settings are its own.
SHOW work_mem;
SHOW statement_timeout;
RESET work_mem;
RESET statement_timeout;

-- tenancy.max_statement_timeout, tenancy.max_lock_timeout, tenancy.max_work_mem: the
-- superuser's ceilings for every tenant (0, the default: none). Here set for this role.
SET tenancy.max_work_mem = '1MB';
\c - postgres
ALTER ROLE regress_set_app SET tenancy.max_work_mem = '2MB';
\c - regress_set_app
SHOW tenancy.max_work_mem;
BEGIN;
SELECT tenancy.bind(regress.token('set-acme', 'mia', 'set-key')) IS NOT NULL AS bound;
SHOW work_mem;
ROLLBACK;
BEGIN;
SELECT tenancy.bind(regress.token('set-acme', 'boss', 'set-key')) IS NOT NULL AS bound;
SELECT tenancy.set_setting('set-acme', 'work_mem', '"4MB"');
ROLLBACK;
\c - postgres
ALTER ROLE regress_set_app RESET tenancy.max_work_mem;

-- Every change is in the tenant's trail, with who made it (a tenant admin's subject too).
SELECT a.new_row->>'action' AS action, a.new_row->>'key' AS key, a.db_role, a.subject
  FROM tenancy.audit_log a JOIN tenancy.tenants t ON t.id = a.tenant_id
 WHERE t.slug = 'set-acme' AND a.new_row->>'action' = 'set_setting' ORDER BY a.id;
SELECT a.new_row->>'action' AS action, a.new_row->>'name' AS name, a.new_row->'value' AS value, a.db_role
  FROM tenancy.audit_log a JOIN tenancy.tenants t ON t.id = a.tenant_id
 WHERE t.slug = 'set-acme' AND a.new_row->>'action' = 'set_limit' ORDER BY a.id;

DROP ROLE regress_set_ops, regress_set_app;
