-- Tenant RBAC: every tenant has the roles admin, member (select, insert, update, delete on
-- every protected table) and viewer (select); its admins create more roles, grant and revoke
-- privileges per table (or on every protected table, present and future, with NULL), and add
-- and remove members (token subjects). A bound session holds its subject's roles, which a
-- token's roles claim can only narrow; a subject with no membership holds the tenant's
-- default_roles (default: none). Operators seat a tenant's first admin; from then on only its
-- admins widen access, and operators may only narrow it. An admin acts on its own tenant only.
\getenv abs_srcdir PG_ABS_SRCDIR
\set ECHO none
\i :abs_srcdir/helpers/setup.sql
\set ECHO all
\set VERBOSITY default

SELECT tenancy.create_tenant('rbac-acme') IS NOT NULL AS created;
SELECT tenancy.create_tenant('rbac-globex') IS NOT NULL AS created;
SELECT tenancy.add_key('rbac-key', 'HS256', 'a-secret-that-is-at-least-32-bytes-long');
CREATE ROLE regress_rbac_ops LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT tenancy_operator TO regress_rbac_ops;
CREATE ROLE regress_rbac_app LOGIN NOSUPERUSER NOBYPASSRLS;
CREATE SCHEMA rbac;
CREATE TABLE rbac.orders (tenant_id uuid NOT NULL, id int NOT NULL, amount int, PRIMARY KEY (tenant_id, id));
CREATE TABLE rbac.customers (tenant_id uuid NOT NULL, id int NOT NULL, name text, PRIMARY KEY (tenant_id, id));
SELECT tenancy.protect_schema('rbac');
GRANT USAGE ON SCHEMA rbac TO regress_rbac_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA rbac TO regress_rbac_app;
GRANT USAGE ON SCHEMA rbac TO regress_rbac_ops;

-- The built-in roles and their privileges (table NULL: every protected table).
SELECT role, "table", array_agg(privilege ORDER BY privilege) AS privileges
  FROM tenancy.role_privileges p JOIN tenancy.tenants t ON t.id = p.tenant_id
 WHERE t.slug = 'rbac-acme' GROUP BY role, "table" ORDER BY role;

-- An operator seats the tenant's first admin, and widens nothing after that.
\c - regress_rbac_ops
SELECT tenancy.add_member('rbac-acme', 'ann', 'admin');
SELECT tenancy.add_member('rbac-acme', 'mia', 'member');
SELECT tenancy.grant('rbac-acme', 'viewer', NULL, '{insert}');
SELECT tenancy.set_setting('rbac-acme', 'default_roles', '["member"]');
SELECT tenancy.map_role('regress_rbac_app', 'rbac-acme', '{member}');

-- The admin adds members.
\c - regress_rbac_app
BEGIN;
SELECT tenancy.bind(regress.token('rbac-acme', 'ann', 'rbac-key')) ->> 'roles' AS roles;
SELECT tenancy.add_member('rbac-acme', 'mia', 'member');
SELECT tenancy.add_member('rbac-acme', 'vic', 'viewer');
SAVEPOINT s;
SELECT tenancy.add_member('rbac-acme', 'vic', 'owner');
ROLLBACK TO SAVEPOINT s;
SELECT subject, role FROM tenancy.members ORDER BY subject, role;
COMMIT;

-- A member writes but does not manage; a viewer reads.
BEGIN;
SELECT tenancy.bind(regress.token('rbac-acme', 'mia', 'rbac-key')) ->> 'roles' AS roles;
INSERT INTO rbac.orders (id, amount) VALUES (1, 10), (2, 20);
INSERT INTO rbac.customers (id, name) VALUES (1, 'first');
SAVEPOINT s;
SELECT tenancy.create_role('rbac-acme', 'auditor');
ROLLBACK TO SAVEPOINT s;
COMMIT;
BEGIN;
SELECT tenancy.bind(regress.token('rbac-acme', 'vic', 'rbac-key')) ->> 'roles' AS roles;
SELECT count(*) AS orders FROM rbac.orders;
UPDATE rbac.orders SET amount = 0;
ROLLBACK;

-- Custom roles with per-table privileges.
BEGIN;
SELECT tenancy.bind(regress.token('rbac-acme', 'ann', 'rbac-key')) IS NOT NULL AS bound;
SELECT tenancy.create_role('rbac-acme', 'auditor');
SELECT tenancy.grant('rbac-acme', 'auditor', 'rbac.orders', '{select}');
SELECT tenancy.add_member('rbac-acme', 'aud', 'auditor');
SELECT role, "table", array_agg(privilege ORDER BY privilege) AS privileges
  FROM tenancy.role_privileges WHERE role = 'auditor' GROUP BY role, "table";
-- Refused, each with its SQLSTATE: a privilege that is not one, a role that does not exist,
-- revoking what a built-in role holds on every table per table, a role that exists, dropping
-- the admin role.
SAVEPOINT s;
SELECT tenancy.grant('rbac-acme', 'auditor', 'rbac.orders', '{truncate}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.grant('rbac-acme', 'nobody', 'rbac.orders', '{select}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.revoke('rbac-acme', 'member', 'rbac.orders', '{delete}');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.create_role('rbac-acme', 'auditor');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.drop_role('rbac-acme', 'admin');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.create_role('rbac-acme', 'Not A Role');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
COMMIT;
BEGIN;
SELECT tenancy.bind(regress.token('rbac-acme', 'aud', 'rbac-key')) ->> 'roles' AS roles;
SELECT count(*) AS orders FROM rbac.orders;
SELECT count(*) AS customers FROM rbac.customers;
ROLLBACK;

-- A token's roles claim narrows the subject's roles, and never widens them.
BEGIN;
SELECT tenancy.bind(regress.token('rbac-acme', 'ann', 'rbac-key', '{"roles": ["viewer"]}')) ->> 'roles' AS roles;  -- ann is admin only
ROLLBACK;
BEGIN;
SELECT tenancy.bind(regress.token('rbac-acme', 'vic', 'rbac-key', '{"roles": ["admin", "viewer"]}')) ->> 'roles' AS roles;
ROLLBACK;

-- A subject with no membership binds with the tenant's default_roles: none by default, so
-- every protected statement is refused, with a HINT naming the fix.
BEGIN;
SELECT tenancy.bind(regress.token('rbac-acme', 'bob', 'rbac-key')) ->> 'roles' AS roles;
SELECT count(*) FROM rbac.orders;
ROLLBACK;
-- Setting default_roles widens access: the tenant's admin's to do.
BEGIN;
SELECT tenancy.bind(regress.token('rbac-acme', 'ann', 'rbac-key')) IS NOT NULL AS bound;
SAVEPOINT s;
SELECT tenancy.set_setting('rbac-acme', 'default_roles', '"viewer"');
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.set_setting('rbac-acme', 'default_roles', '["viewer"]');
COMMIT;
BEGIN;
SELECT tenancy.bind(regress.token('rbac-acme', 'bob', 'rbac-key')) ->> 'roles' AS roles;
SELECT count(*) AS orders FROM rbac.orders;
ROLLBACK;

-- An admin acts on its own tenant only, whether the other is named by slug or by uuid; it
-- sees its own tenant's roles and members only. A tenant that does not exist is refused in
-- the same words as another tenant (the reference echoed as written), so the refusal does not
-- tell which slugs are taken, nor which slug a uuid belongs to.
\c - postgres
SELECT id AS globex_id FROM tenancy.tenants WHERE slug = 'rbac-globex' \gset
\c - regress_rbac_app
BEGIN;
SELECT tenancy.bind(regress.token('rbac-acme', 'ann', 'rbac-key')) IS NOT NULL AS bound;
SAVEPOINT s;
SELECT tenancy.create_role('rbac-globex', 'x');
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.create_role('rbac-no-such-tenant', 'x');
ROLLBACK TO SAVEPOINT s;
-- (the uuid differs from run to run: the SQLSTATE only)
\set VERBOSITY sqlstate
SELECT tenancy.add_member(:'globex_id', 'ann', 'admin');
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.add_member(gen_random_uuid()::text, 'ann', 'admin');
ROLLBACK TO SAVEPOINT s;
\set VERBOSITY default
SELECT tenancy.grant('rbac-globex', 'viewer', 'rbac.orders', '{delete}');
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.revoke('rbac-globex', 'member', NULL, '{select}');
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.remove_member('rbac-globex', 'x', 'member');
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.drop_role('rbac-globex', 'viewer');
ROLLBACK TO SAVEPOINT s;
SELECT count(*) AS members, count(DISTINCT tenant_id) AS tenants FROM tenancy.members;
SELECT count(DISTINCT tenant_id) AS tenants FROM tenancy.tenant_roles;
ROLLBACK;

-- Narrowing stays open to operators: revoke a privilege, remove a member. Dropping a role whose
-- members then fall back to the tenant's default_roles is a widening when those give more
-- (aud's auditor role holds nothing now; viewer reads every table): refused to an operator
-- once the tenant has an admin; its admin, or a superuser, may.
\c - regress_rbac_ops
SELECT tenancy.revoke('rbac-acme', 'auditor', 'rbac.orders', '{select}');
SELECT tenancy.remove_member('rbac-acme', 'vic', 'viewer');
SELECT tenancy.drop_role('rbac-acme', 'auditor');
\c - postgres
SELECT tenancy.drop_role('rbac-acme', 'auditor');
\c - regress_rbac_ops
SELECT subject, role FROM tenancy.members m JOIN tenancy.tenants t ON t.id = m.tenant_id
 WHERE t.slug = 'rbac-acme' ORDER BY subject, role;
\c - regress_rbac_app
BEGIN;
SELECT tenancy.bind(regress.token('rbac-acme', 'aud', 'rbac-key')) ->> 'roles' AS roles;  -- aud now holds the default
ROLLBACK;
-- A privilege that is none of the four is bad input (22023), not a missing grant.
BEGIN;
SELECT tenancy.bind(regress.token('rbac-acme', 'aud', 'rbac-key')) IS NOT NULL AS bound;
SELECT tenancy.allows('rbac.orders', 'explode');
ROLLBACK;
-- Application roles manage nothing unbound.
SELECT tenancy.add_member('rbac-acme', 'eve', 'admin');

-- A tenant holds at most 1,000 roles and 100,000 grants (54000, nothing written): its admin
-- cannot grow the catalog, and the memory of every backend that binds the tenant, without
-- bound. The superuser fills both here directly, and empties them after.
\c - postgres
INSERT INTO tenancy.tenant_role (tenant_id, role)
SELECT t.id, 'filler-' || g FROM tenancy.tenants t,
       generate_series(1, 1000 - (SELECT count(*) FROM tenancy.tenant_role r WHERE r.tenant_id = t.id)::int) g
 WHERE t.slug = 'rbac-acme';
INSERT INTO tenancy.role_privilege (tenant_id, role, relid, privilege)
SELECT t.id, 'filler-1', (4000000000 + g)::oid::regclass, 'select' FROM tenancy.tenants t,
       generate_series(1, 100000 - (SELECT count(*) FROM tenancy.role_privilege p WHERE p.tenant_id = t.id)::int) g
 WHERE t.slug = 'rbac-acme';
\c - regress_rbac_app
BEGIN;
SELECT tenancy.bind(regress.token('rbac-acme', 'ann', 'rbac-key')) IS NOT NULL AS bound;
SELECT tenancy.create_role('rbac-acme', 'one-too-many');
ROLLBACK;
BEGIN;
SELECT tenancy.bind(regress.token('rbac-acme', 'ann', 'rbac-key')) IS NOT NULL AS bound;
SELECT tenancy.grant('rbac-acme', 'viewer', 'rbac.orders', '{insert}');
ROLLBACK;
\c - postgres
DELETE FROM tenancy.tenant_role r USING tenancy.tenants t
 WHERE t.id = r.tenant_id AND t.slug = 'rbac-acme' AND r.role LIKE 'filler-%';

-- Every change is in the tenant's trail, with who made it.
\c - postgres
SELECT a.new_row->>'action' AS action, a.db_role, a.subject,
       jsonb_strip_nulls(jsonb_build_object('role', a.new_row->'role', 'subject', a.new_row->'subject',
           'table', a.new_row->'table', 'privileges', a.new_row->'privileges', 'key', a.new_row->'key')) AS details
  FROM tenancy.audit_log a JOIN tenancy.tenants t ON t.id = a.tenant_id
 WHERE t.slug = 'rbac-acme' AND a.op = 'ADMIN' AND a.new_row->>'action' <> 'create_tenant' ORDER BY a.id;

DROP SCHEMA rbac CASCADE;
DROP ROLE regress_rbac_ops, regress_rbac_app;
