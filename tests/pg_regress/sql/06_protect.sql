-- Protection: exactly what protect() generates for one table, the plans it leads to, the
-- guard, and verify().
\set VERBOSITY default
CREATE SCHEMA app;
CREATE TABLE app.customers (
    tenant_id uuid NOT NULL,
    id        int  NOT NULL,
    name      text NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE TABLE app.orders (
    tenant_id   uuid    NOT NULL,
    id          int     NOT NULL,
    customer_id int     NOT NULL,
    amount      numeric NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES app.customers (tenant_id, id)
);

-- The SQL protect() runs, for review.
SELECT * FROM tenancy.protect_sql('app.orders');
SELECT tenancy.protect_schema('app');
SELECT "table", tenant_column, audited, length(policy_digest) AS digest_length FROM tenancy.protected_tables
 WHERE "table"::text LIKE 'app.%' ORDER BY 1;
\d app.orders

-- Data for two tenants, written through bindings (role mappings make the demo short).
CREATE ROLE regress_acme LOGIN NOSUPERUSER NOBYPASSRLS;
CREATE ROLE regress_globex LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT USAGE ON SCHEMA app TO regress_acme, regress_globex;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA app TO regress_acme, regress_globex;
SELECT tenancy.map_role('regress_acme', 'acme', '{member}');
SELECT tenancy.map_role('regress_globex', 'globex', '{viewer}');
\c - regress_acme
INSERT INTO app.customers (id, name) SELECT g, 'acme customer ' || g FROM generate_series(1, 200) g;
INSERT INTO app.orders (id, customer_id, amount) SELECT g, 1 + g % 200, g FROM generate_series(1, 5000) g;
\c - postgres
-- globex's rows, loaded by the superuser (superusers bypass row security by design).
INSERT INTO app.customers SELECT id, g, 'globex customer ' || g FROM tenancy.tenants, generate_series(1, 200) g WHERE slug = 'globex';
INSERT INTO app.orders SELECT id, g, 1 + g % 200, g FROM tenancy.tenants, generate_series(1, 5000) g WHERE slug = 'globex';
ANALYZE app.customers, app.orders;

-- Each tenant sees its own rows only, with no WHERE clause in the query.
\c - regress_acme
SELECT count(*), min(name), max(name) FROM app.customers;
SELECT count(*), sum(amount) FROM app.orders;
\c - regress_globex
SELECT count(*), min(name), max(name) FROM app.customers;
-- A viewer may not write: a loud error naming the table and the privilege.
UPDATE app.orders SET amount = 0 WHERE id = 1;
DELETE FROM app.orders WHERE id = 1;
INSERT INTO app.customers (id, name) VALUES (999, 'nope');

-- Plans. Planned as written, the binding and the privilege are one InitPlan per table (once
-- per statement; the restrictive and the permissive policy share it). That is how a session's
-- statements are planned before the library is loaded: it loads with the first call into it,
-- or at connection with session_preload_libraries / shared_preload_libraries.
\c - regress_acme
EXPLAIN (COSTS OFF) SELECT * FROM app.orders WHERE id = 42;
-- Once loaded, its planner hook makes that subquery a reserved parameter, $1000000000 and up,
-- one per table and privilege, answered at run time with the binding (no subquery to plan or
-- run). The tenant index serves point lookups, aggregates and joins alike.
EXPLAIN (COSTS OFF) SELECT * FROM app.orders WHERE id = 42;
EXPLAIN (COSTS OFF) SELECT count(*), sum(amount) FROM app.orders;
EXPLAIN (COSTS OFF) SELECT c.name, sum(o.amount) FROM app.orders o
    JOIN app.customers c ON c.tenant_id = o.tenant_id AND c.id = o.customer_id
   WHERE c.id = 7 GROUP BY c.name;
SELECT count(*), sum(amount) FROM app.orders WHERE id <= 10;
-- Only that exact subquery: a hand-written policy reading the binding another way is planned
-- as written.
\c - postgres
CREATE SCHEMA handmade;
CREATE TABLE handmade.notes (tenant_id uuid NOT NULL, id int PRIMARY KEY, body text);
ALTER TABLE handmade.notes ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY notes_tenant ON handmade.notes
    USING (tenant_id = (SELECT tenancy.allowed_tenant('handmade.notes'::regclass, 'select') LIMIT 1));
GRANT USAGE ON SCHEMA handmade TO regress_acme;
GRANT SELECT ON handmade.notes TO regress_acme;
INSERT INTO handmade.notes SELECT id, 1, 'acme' FROM tenancy.tenants WHERE slug = 'acme';
INSERT INTO handmade.notes SELECT id, 2, 'globex' FROM tenancy.tenants WHERE slug = 'globex';
\c - regress_acme
SELECT body FROM handmade.notes;
EXPLAIN (COSTS OFF) SELECT * FROM handmade.notes WHERE id = 1;
\c - postgres
DROP SCHEMA handmade CASCADE;
-- tenancy.plan_binding_as_param = off (a superuser's setting) plans the policies as written.
-- A tenant role cannot turn it back on: before the library is loaded its SET only makes a
-- placeholder, which the library drops with a WARNING when it loads; after that SET is refused.
ALTER ROLE regress_acme SET tenancy.plan_binding_as_param = off;
\c - regress_acme
SET tenancy.plan_binding_as_param = on;
SELECT count(*), sum(amount) FROM app.orders WHERE id <= 10;
SHOW tenancy.plan_binding_as_param;
SET tenancy.plan_binding_as_param = on;
EXPLAIN (COSTS OFF) SELECT * FROM app.orders WHERE id = 42;
\c - postgres
ALTER ROLE regress_acme RESET tenancy.plan_binding_as_param;
-- Writing another tenant's rows, or moving a row to another tenant, is refused.
\c - postgres
SELECT id AS globex_id FROM tenancy.tenants WHERE slug = 'globex' \gset
\c - regress_acme
-- (the tenant's uuid in the message changes from run to run: masked here)
CREATE FUNCTION pg_temp.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM, '[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}', '<uuid>', 'g');
END
$$;
SELECT pg_temp.try(format('INSERT INTO app.customers (tenant_id, id, name) VALUES (%L, 1000, %L)', :'globex_id', 'planted'));
SELECT pg_temp.try(format('UPDATE app.customers SET tenant_id = %L WHERE id = 1', :'globex_id'));
UPDATE app.customers SET name = 'hijacked' WHERE tenant_id = :'globex_id';
DELETE FROM app.orders WHERE tenant_id = :'globex_id';
\c - postgres

-- The guard: weakening a protected table is refused, even for a superuser.
ALTER TABLE app.orders DISABLE ROW LEVEL SECURITY;
ALTER TABLE app.orders NO FORCE ROW LEVEL SECURITY;
DROP POLICY tenancy_isolation_select ON app.orders;
ALTER POLICY tenancy_select ON app.orders USING (true);
CREATE POLICY everyone ON app.orders FOR SELECT USING (true);
ALTER TABLE app.orders ALTER COLUMN tenant_id DROP NOT NULL;
ALTER TABLE app.orders DROP COLUMN tenant_id CASCADE;
-- Harmless changes pass.
ALTER TABLE app.orders ADD COLUMN note text;
ALTER TABLE app.orders RENAME TO purchases;
ALTER TABLE app.purchases RENAME TO orders;

-- verify(): clean for this schema, then a hazard and its fix.
SELECT severity, rule, object FROM tenancy.verify() WHERE object LIKE 'app.%';
CREATE VIEW app.big_orders AS SELECT * FROM app.orders WHERE amount > 100;
SELECT severity, rule, object, fix FROM tenancy.verify() WHERE object LIKE 'app.%';
ALTER VIEW app.big_orders SET (security_invoker = true);
SELECT severity, rule, object FROM tenancy.verify() WHERE object LIKE 'app.%';

-- unprotect is audited, after which the table is ordinary again.
SELECT tenancy.unprotect('app.orders');
SELECT new_row->>'action' AS action, new_row->>'table' AS tbl FROM tenancy.audit_log
 WHERE new_row->>'action' IN ('protect_schema', 'unprotect') ORDER BY id;
ALTER TABLE app.orders DISABLE ROW LEVEL SECURITY;

DROP SCHEMA app CASCADE;
SELECT tenancy.unmap_role('regress_acme', 'acme');
SELECT tenancy.unmap_role('regress_globex', 'globex');
DROP OWNED BY regress_acme, regress_globex;
DROP ROLE regress_acme, regress_globex;
