-- Support access: operators never read tenant rows, not with a token, not through a role
-- mapping, not through SET ROLE to an application role. A tenant's admin can let one operator
-- in for a while: tenancy.grant_support(operator, duration, privileges) (at most 30 days,
-- select by default); the operator then calls tenancy.enter_support(tenant) and reads (or
-- writes, as granted) that tenant's rows only, until the grant expires or the admin revokes it
-- with tenancy.revoke_support(operator). Every step is audited.
\getenv abs_srcdir PG_ABS_SRCDIR
\set ECHO none
\i :abs_srcdir/helpers/setup.sql
\set ECHO all
\set VERBOSITY default

SELECT tenancy.create_tenant('sup-acme') IS NOT NULL AS created;
SELECT tenancy.create_tenant('sup-globex') IS NOT NULL AS created;
SELECT tenancy.add_key('sup-key', 'HS256', 'a-secret-that-is-at-least-32-bytes-long');
SELECT tenancy.add_member('sup-acme', 'ann', 'admin');
SELECT tenancy.add_member('sup-acme', 'mia', 'member');
CREATE ROLE regress_sup_ops LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT tenancy_operator TO regress_sup_ops;
CREATE ROLE regress_sup_web LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT regress_sup_web TO regress_sup_ops;
CREATE SCHEMA sup;
CREATE TABLE sup.tickets (tenant_id uuid NOT NULL, id int NOT NULL, body text, PRIMARY KEY (tenant_id, id));
SELECT tenancy.protect('sup.tickets');
GRANT USAGE ON SCHEMA sup TO regress_sup_web, regress_sup_ops;
GRANT SELECT, INSERT, UPDATE, DELETE ON sup.tickets TO regress_sup_web, regress_sup_ops;
INSERT INTO sup.tickets SELECT id, 1, slug || ' ticket' FROM tenancy.tenants WHERE slug LIKE 'sup-%';

-- Operators never read rows: not unbound, not with a token, not through SET ROLE to the
-- application's role, not through a role mapping, not by entering support without a grant.
\c - regress_sup_ops
SELECT count(*) FROM sup.tickets;
SELECT tenancy.bind(regress.token('sup-acme', 'ann', 'sup-key'));
SET ROLE regress_sup_web;
SELECT tenancy.bind(regress.token('sup-acme', 'ann', 'sup-key'));
RESET ROLE;
SELECT tenancy.enter_support('sup-acme');
\c - postgres
SELECT tenancy.map_role('regress_sup_ops', 'sup-globex');

-- The tenant's admin grants support: to one operator's login role, for at most 30 days.
\c - regress_sup_web
BEGIN;
SELECT tenancy.bind(regress.token('sup-acme', 'ann', 'sup-key')) IS NOT NULL AS bound;
SAVEPOINT s;
SELECT tenancy.grant_support('tenancy_operator', interval '1 hour');
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.grant_support('regress_sup_web', interval '1 hour');
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.grant_support('regress_sup_ops', interval '31 days');
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.grant_support('regress_sup_ops', interval '-1 hour');
ROLLBACK TO SAVEPOINT s;
SELECT g ->> 'expires_at' AS support_expires FROM tenancy.grant_support('regress_sup_ops', interval '4 seconds') g \gset
SELECT operator, privileges, granted_by, expires_at - granted_at AS duration, revoked_at FROM tenancy.support_grants;
COMMIT;
-- A member cannot grant support.
BEGIN;
SELECT tenancy.bind(regress.token('sup-acme', 'mia', 'sup-key')) IS NOT NULL AS bound;
SELECT tenancy.grant_support('regress_sup_ops', interval '1 hour');
ROLLBACK;

-- The operator enters: it reads that tenant's rows, as granted (select only), and no other
-- tenant's.
\c - regress_sup_ops
SELECT b - 'tenant' - 'expires_at' AS binding FROM tenancy.enter_support('sup-acme') b;
SELECT body FROM sup.tickets;
DELETE FROM sup.tickets;
SELECT tenancy.enter_support('sup-globex');
-- The grant expires (here after 4 seconds): the session's next statement is refused (with
-- SQLSTATE 28000 or 42501), and the grant can no longer be entered.
CREATE FUNCTION pg_temp.refused(sql text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN false;
EXCEPTION WHEN invalid_authorization_specification OR insufficient_privilege THEN
    RETURN true;
END
$$;
SELECT pg_sleep_until(:'support_expires'::timestamptz + interval '200 milliseconds');
SELECT pg_temp.refused('SELECT body FROM sup.tickets') AS refused;
SELECT tenancy.binding() IS NULL AS unbound;
SELECT tenancy.enter_support('sup-acme');

-- A new grant, with update; then the admin revokes it (a live support session is cut at its
-- next statement, as any binding is: 12_revocation).
\c - regress_sup_web
BEGIN;
SELECT tenancy.bind(regress.token('sup-acme', 'ann', 'sup-key')) IS NOT NULL AS bound;
SELECT tenancy.grant_support('regress_sup_ops', interval '1 hour', '{select,update}') ? 'expires_at' AS granted;
COMMIT;
\c - regress_sup_ops
SELECT tenancy.enter_support('sup-acme') ->> 'support_privileges' AS privileges;
UPDATE sup.tickets SET body = body || ', answered';
SELECT body FROM sup.tickets;
\c - regress_sup_web
BEGIN;
SELECT tenancy.bind(regress.token('sup-acme', 'ann', 'sup-key')) IS NOT NULL AS bound;
SELECT tenancy.revoke_support('regress_sup_ops');
SELECT operator, privileges, revoked_at IS NOT NULL AS revoked FROM tenancy.support_grants ORDER BY granted_at;
-- Nothing left to revoke: said (42704), not answered as done nor recorded.
SAVEPOINT again;
SELECT tenancy.revoke_support('regress_sup_ops');
ROLLBACK TO SAVEPOINT again;
COMMIT;
-- Revoking is the admin's too.
BEGIN;
SELECT tenancy.bind(regress.token('sup-acme', 'mia', 'sup-key')) IS NOT NULL AS bound;
SELECT tenancy.revoke_support('regress_sup_ops');
ROLLBACK;
\c - regress_sup_ops
SELECT tenancy.enter_support('sup-acme');
-- Application roles do not enter support.
\c - regress_sup_web
SELECT tenancy.enter_support('sup-acme');

-- Granting, entering and revoking are in the tenant's trail.
\c - postgres
SELECT a.new_row->>'action' AS action, a.db_role, a.subject, a.new_row->>'operator' AS operator,
       a.new_row->'privileges' AS privileges
  FROM tenancy.audit_log a JOIN tenancy.tenants t ON t.id = a.tenant_id
 WHERE t.slug = 'sup-acme' AND a.new_row->>'action' LIKE '%support' ORDER BY a.id;
-- and the operator's update, as any other write.
SELECT op, db_role, old_row->>'body' AS old_body, new_row->>'body' AS new_body
  FROM tenancy.audit_log a JOIN tenancy.tenants t ON t.id = a.tenant_id
 WHERE t.slug = 'sup-acme' AND a.table_name = 'sup.tickets' AND a.op = 'UPDATE';

DROP SCHEMA sup CASCADE;
DROP OWNED BY regress_sup_ops, regress_sup_web;
DROP ROLE regress_sup_ops, regress_sup_web;
