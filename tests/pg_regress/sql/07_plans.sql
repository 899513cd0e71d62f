-- Plans: the policies protect() writes cost a protected query no more than a hand-written
-- WHERE tenant_id = $1. Planned as written, the binding and the privilege are one InitPlan per
-- table, evaluated once per statement; once pg_tenancy is loaded in the backend, a planner
-- hook makes that subquery a reserved parameter ($1000000000 and up) answered with the binding
-- at run time. Either way the tenant column's index serves point lookups, aggregates and joins,
-- and no cached plan holds a tenant: it reads the binding in force when it runs. A statement
-- planned for one execution only holds the bound tenant as a constant (the end of this file).
\getenv abs_srcdir PG_ABS_SRCDIR
\set ECHO none
\i :abs_srcdir/helpers/setup.sql
\set ECHO all
\set VERBOSITY default

SELECT tenancy.create_tenant('plans-acme') IS NOT NULL AS created;
SELECT tenancy.create_tenant('plans-globex') IS NOT NULL AS created;
CREATE SCHEMA shop;
CREATE TABLE shop.customers (tenant_id uuid NOT NULL, id int NOT NULL, name text NOT NULL, PRIMARY KEY (tenant_id, id));
CREATE TABLE shop.orders (
    tenant_id   uuid    NOT NULL,
    id          int     NOT NULL,
    customer_id int     NOT NULL,
    amount      numeric NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES shop.customers (tenant_id, id)
);
SELECT tenancy.protect_schema('shop');
CREATE ROLE regress_plans_acme LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT USAGE ON SCHEMA shop TO regress_plans_acme;
GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA shop TO regress_plans_acme;
SELECT tenancy.map_role('regress_plans_acme', 'plans-acme', '{member}');
-- (Until the end of this file, psql's statements keep the reserved parameter too: each is
-- planned for one execution, and would hold the tenant, whose id differs in every run.)
ALTER ROLE regress_plans_acme SET tenancy.plan_binding_as_const = off;
-- (and an application role that binds with tokens, of subjects that hold no membership: the
-- tenants make them members by default)
CREATE ROLE regress_plans_app LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT USAGE ON SCHEMA shop TO regress_plans_app;
GRANT SELECT ON ALL TABLES IN SCHEMA shop TO regress_plans_app;
SELECT tenancy.add_key('plans-key', 'HS256', 'a-secret-that-is-at-least-32-bytes-long');
SELECT tenancy.set_setting(slug, 'default_roles', '["member"]') FROM tenancy.tenants WHERE slug LIKE 'plans-%' ORDER BY slug;
INSERT INTO shop.customers SELECT t.id, g, t.slug || ' customer ' || g FROM tenancy.tenants t, generate_series(1, 200) g WHERE t.slug LIKE 'plans-%';
INSERT INTO shop.orders SELECT t.id, g, 1 + g % 200, g FROM tenancy.tenants t, generate_series(1, 5000) g WHERE t.slug LIKE 'plans-%';
ANALYZE shop.customers, shop.orders;

-- Before the library is loaded, the policies' call is planned as PostgreSQL finds it in them
-- (the restrictive and the permissive policy share it): in an index condition it runs once per
-- scan, in a filter once per row, always for the one tenant a transaction is bound to. The
-- library loads with the first call into it, or at connection with session_preload_libraries /
-- shared_preload_libraries; from then on nothing is planned so.
\c - regress_plans_acme
EXPLAIN (COSTS OFF) SELECT * FROM shop.orders WHERE id = 42;
-- Once loaded, the subquery is a reserved parameter, one per table and privilege, answered at
-- run time with the binding (no subquery to plan or run).
EXPLAIN (COSTS OFF) SELECT * FROM shop.orders WHERE id = 42;
EXPLAIN (COSTS OFF) SELECT count(*), sum(amount) FROM shop.orders;
EXPLAIN (COSTS OFF) SELECT c.name, sum(o.amount) FROM shop.orders o
    JOIN shop.customers c ON c.tenant_id = o.tenant_id AND c.id = o.customer_id
   WHERE c.id = 7 GROUP BY c.name;
SELECT count(*), sum(amount) FROM shop.orders WHERE id <= 10;
-- No plan holds a tenant: one generic plan, cached, serves whichever tenant is bound.
\c - regress_plans_app
SET plan_cache_mode = force_generic_plan;
PREPARE first_customer AS SELECT min(name) FROM shop.customers WHERE id <= 10;
BEGIN;
SELECT tenancy.bind(regress.token('plans-acme', 'ann', 'plans-key')) IS NOT NULL AS bound;
EXECUTE first_customer;
COMMIT;
BEGIN;
SELECT tenancy.bind(regress.token('plans-globex', 'gus', 'plans-key')) IS NOT NULL AS bound;
EXECUTE first_customer;
COMMIT;
-- Unbound, a statement can be explained (nothing runs) but not run: EXPLAIN ANALYZE runs it.
EXPLAIN (COSTS OFF) SELECT * FROM shop.orders WHERE id = 42;
EXPLAIN (COSTS OFF) EXECUTE first_customer;
EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT * FROM shop.orders WHERE id = 42;
SELECT * FROM shop.orders WHERE id = 42;

-- Only that exact subquery: a hand-written policy reading the binding another way is planned
-- as written.
\c - postgres
CREATE SCHEMA handmade;
CREATE TABLE handmade.notes (tenant_id uuid NOT NULL, id int PRIMARY KEY, body text);
ALTER TABLE handmade.notes ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY notes_tenant ON handmade.notes
    USING (tenant_id = (SELECT tenancy.allowed_tenant('handmade.notes'::regclass, 'select') LIMIT 1));
GRANT USAGE ON SCHEMA handmade TO regress_plans_acme;
GRANT SELECT ON handmade.notes TO regress_plans_acme;
INSERT INTO handmade.notes SELECT id, 1, 'acme' FROM tenancy.tenants WHERE slug = 'plans-acme';
INSERT INTO handmade.notes SELECT id, 2, 'globex' FROM tenancy.tenants WHERE slug = 'plans-globex';
\c - regress_plans_acme
SELECT body FROM handmade.notes;
EXPLAIN (COSTS OFF) SELECT * FROM handmade.notes WHERE id = 1;
\c - postgres
DROP SCHEMA handmade CASCADE;

-- tenancy.plan_binding_as_param = off (a superuser's setting) plans the policies as written.
-- A tenant role cannot turn it back on: before the library is loaded its SET only makes a
-- placeholder, which the library drops with a WARNING when it loads; after that SET is refused.
ALTER ROLE regress_plans_acme SET tenancy.plan_binding_as_param = off;
\c - regress_plans_acme
SET tenancy.plan_binding_as_param = on;
SELECT count(*), sum(amount) FROM shop.orders WHERE id <= 10;
SHOW tenancy.plan_binding_as_param;
SET tenancy.plan_binding_as_param = on;
EXPLAIN (COSTS OFF) SELECT * FROM shop.orders WHERE id = 42;
-- A sequential scan as written compares every row with the InitPlan's value: the policies' call
-- is planned once per statement, never per row.
SET enable_indexscan = off;
SET enable_bitmapscan = off;
EXPLAIN (COSTS OFF) SELECT count(*) FROM shop.orders;
RESET enable_indexscan;
RESET enable_bitmapscan;
\c - postgres
ALTER ROLE regress_plans_acme RESET tenancy.plan_binding_as_param;
ALTER ROLE regress_plans_acme RESET tenancy.plan_binding_as_const;

-- A statement planned for one execution only, as psql's simple-protocol statements are (and a
-- custom plan, made with its parameters' values), compares the tenant column with the bound
-- tenant itself, a constant, as the application's own WHERE tenant_id = '...' would: nothing to
-- estimate, compile or evaluate per statement. The statement checks the constant against the
-- binding again when it starts. A generic plan, which PostgreSQL caches, keeps the reserved
-- parameter. (The plan is compared with the tenant's id, which differs in every run.)
\getenv abs_builddir PG_ABS_BUILDDIR
\set planfile :abs_builddir/results/07_plans_folded.txt
\c - regress_plans_acme
SELECT tenancy.current_tenant() IS NOT NULL AS bound;
EXPLAIN (COSTS OFF) SELECT * FROM shop.orders WHERE id = 42 \g (format=unaligned tuples_only=on) :planfile
\set plan `cat :planfile`
SELECT strpos(:'plan', tenancy.current_tenant()::text) > 0 AS tenant_is_a_constant,
       strpos(:'plan', '$1000000000') = 0 AS no_reserved_parameter,
       strpos(:'plan', 'Index Scan') > 0 AS index_scan;
PREPARE by_id(int) AS SELECT id, amount FROM shop.orders WHERE id = $1;
SET plan_cache_mode = force_custom_plan;
EXPLAIN (COSTS OFF) EXECUTE by_id(42) \g (format=unaligned tuples_only=on) :planfile
\set plan `cat :planfile`
SELECT strpos(:'plan', tenancy.current_tenant()::text) > 0 AS custom_plan_holds_the_tenant;
SET plan_cache_mode = force_generic_plan;
EXPLAIN (COSTS OFF) EXECUTE by_id(42);
SELECT count(*), sum(amount) FROM shop.orders WHERE id <= 10;
EXECUTE by_id(42);
\c - postgres

DROP SCHEMA shop CASCADE;
SELECT tenancy.unmap_role('regress_plans_acme', 'plans-acme');
DROP OWNED BY regress_plans_acme, regress_plans_app;
DROP ROLE regress_plans_acme, regress_plans_app;
