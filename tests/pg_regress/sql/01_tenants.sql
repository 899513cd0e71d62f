-- Tenants: a tenant is a slug, a name, a region and settings, created by an operator with its
-- three roles (admin, member, viewer); bad or duplicate slugs and unknown tenants are refused
-- with a HINT; tenancy.tenants shows an operator every tenant and a bound session only its
-- own; every management action is recorded in the audit trail.
-- (Every file starts with the same silent set-up: tests/pg_regress/helpers/setup.sql creates
-- the extension if needed and regress.token(), which signs tokens as an issuer would.)
\getenv abs_srcdir PG_ABS_SRCDIR
\set ECHO none
\i :abs_srcdir/helpers/setup.sql
\set ECHO all
\set VERBOSITY default

-- The extension's objects live in the schema tenancy; it cannot be moved.
SELECT extrelocatable, nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE extname = 'pg_tenancy';

-- create_tenant(slug, name, region, settings) returns the tenant's uuid.
SELECT tenancy.create_tenant('ten-acme', 'Acme Corp', 'eu-west', '{"model": "small"}') IS NOT NULL AS created;
SELECT tenancy.create_tenant('ten-globex', 'Globex') IS NOT NULL AS created;
SELECT slug, name, status, region, settings FROM tenancy.tenants WHERE slug LIKE 'ten-%' ORDER BY slug;
-- Each tenant starts with the roles admin, member and viewer.
SELECT slug, array_agg(role ORDER BY role) AS roles
  FROM tenancy.tenant_roles r JOIN tenancy.tenants t ON t.id = r.tenant_id
 WHERE slug LIKE 'ten-%' GROUP BY slug ORDER BY 1;

-- Refused: a slug in use, a slug that is not one (too short, capitals and spaces, a uuid:
-- tenants are named by slug or uuid alike), settings that are not an object, a resource
-- setting SET would refuse, and a tenant that does not exist.
SELECT tenancy.create_tenant('ten-acme');
SELECT tenancy.create_tenant('Not A Slug');
SELECT tenancy.create_tenant('x');
SELECT tenancy.create_tenant('aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee');
SELECT tenancy.create_tenant('ten-bad-settings', settings => '[1, 2]');
SELECT tenancy.create_tenant('ten-bad-timeout', settings => '{"statement_timeout": "forever"}');
SELECT tenancy.suspend_tenant('ten-nobody');
SELECT count(*) AS refused_tenants_made FROM tenancy.tenants WHERE slug LIKE 'ten-bad%';

-- Who creates tenants: superusers and members of tenancy_operator, not key admins nor
-- application roles.
CREATE ROLE regress_ten_ops LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT tenancy_operator TO regress_ten_ops;
CREATE ROLE regress_ten_keys LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT tenancy_key_admin TO regress_ten_keys;
CREATE ROLE regress_ten_app LOGIN NOSUPERUSER NOBYPASSRLS;
\c - regress_ten_ops
SELECT tenancy.create_tenant('ten-initech', 'Initech') IS NOT NULL AS created;
\c - regress_ten_keys
SELECT tenancy.create_tenant('ten-by-key-admin');
\c - regress_ten_app
SELECT tenancy.create_tenant('ten-by-app');

-- tenancy.tenants: an unbound application session sees no tenant, a bound one its own only.
SELECT count(*) AS tenants_seen FROM tenancy.tenants;
\c - postgres
SELECT tenancy.add_key('ten-key', 'HS256', 'a-secret-that-is-at-least-32-bytes-long');
\c - regress_ten_app
BEGIN;
SELECT tenancy.bind(regress.token('ten-globex', 'gina', 'ten-key')) IS NOT NULL AS bound;
SELECT slug, name FROM tenancy.tenants;
ROLLBACK;
-- Operators see every tenant.
\c - regress_ten_ops
SELECT slug FROM tenancy.tenants WHERE slug LIKE 'ten-%' ORDER BY slug;

-- Management actions are in the audit trail, in each tenant's own chain; those of the platform
-- (here: a key not scoped to a tenant) under the nil uuid, which no tenant can have.
\c - postgres
SELECT coalesce(t.slug, a.tenant_id::text) AS tenant, a.op, a.new_row->>'action' AS action, a.db_role
  FROM tenancy.audit_log a LEFT JOIN tenancy.tenants t ON t.id = a.tenant_id
 WHERE t.slug LIKE 'ten-%' OR a.new_row->>'kid' = 'ten-key'
 ORDER BY a.id;

DROP ROLE regress_ten_ops, regress_ten_keys, regress_ten_app;

-- The catalog's constraints, defaults, policies, trigger conditions and index expressions call
-- no polymorphic function or operator of pg_catalog. On Citus, the copies of these tables on the
-- other nodes are created from them as PostgreSQL prints them, unqualified, by the superuser
-- with the node's default search_path, where a role's own exact-typed function in public would
-- win over a polymorphic one and be fixed into the copy (none expected).
WITH exprs AS (
  SELECT format('constraint %s on %s', c.conname, c.conrelid::regclass) AS object, c.conbin::text AS tree
    FROM pg_constraint c WHERE c.connamespace = 'tenancy'::regnamespace AND c.conbin IS NOT NULL
  UNION ALL
  SELECT format('default of %s.%s', a.adrelid::regclass, t.attname), a.adbin::text
    FROM pg_attrdef a JOIN pg_attribute t ON t.attrelid = a.adrelid AND t.attnum = a.adnum
    JOIN pg_class r ON r.oid = a.adrelid WHERE r.relnamespace = 'tenancy'::regnamespace
  UNION ALL
  SELECT format('policy %s on %s', p.polname, p.polrelid::regclass), concat(p.polqual::text, p.polwithcheck::text)
    FROM pg_policy p JOIN pg_class r ON r.oid = p.polrelid WHERE r.relnamespace = 'tenancy'::regnamespace
  UNION ALL
  SELECT format('trigger %s on %s', t.tgname, t.tgrelid::regclass), t.tgqual::text
    FROM pg_trigger t JOIN pg_class r ON r.oid = t.tgrelid
   WHERE r.relnamespace = 'tenancy'::regnamespace AND t.tgqual IS NOT NULL
  UNION ALL
  SELECT format('index %s', i.indexrelid::regclass), concat(i.indexprs::text, i.indpred::text)
    FROM pg_index i JOIN pg_class r ON r.oid = i.indrelid WHERE r.relnamespace = 'tenancy'::regnamespace),
calls AS (
  SELECT e.object, m[1]::oid AS fn FROM exprs e, regexp_matches(e.tree, ':funcid (\d+)', 'g') m
  UNION
  SELECT e.object, o.oprcode::oid FROM exprs e, regexp_matches(e.tree, ':opno (\d+)', 'g') m
    JOIN pg_operator o ON o.oid = m[1]::oid)
SELECT c.object, c.fn::regprocedure AS calls
  FROM calls c JOIN pg_proc f ON f.oid = c.fn
 WHERE f.pronamespace = 'pg_catalog'::regnamespace
   AND EXISTS (SELECT FROM unnest(f.proargtypes::oid[]) a JOIN pg_type t ON t.oid = a WHERE t.typtype = 'p')
 ORDER BY 1, 2;
