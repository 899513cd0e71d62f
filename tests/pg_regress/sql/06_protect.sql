-- Protection: tenancy.protect(table) makes the database confine every statement on a table to
-- the bound tenant's rows: row security forced, with RESTRICTIVE and permissive policies per
-- command that read the binding and the bound roles' privilege, the tenant column defaulting
-- to the bound tenant, TRUNCATE refused and every change audited. protect_sql() shows exactly
-- what it runs; protect_schema() and auto_protect() protect many tables; partitions are
-- protected with their parent. A session reads and writes its own tenant's rows only, with no
-- WHERE clause; another tenant's rows are invisible, and writing one is refused. Operators
-- unprotect (audited). (The plans: 07_plans; DDL that would weaken a table: 08_guard.)
\getenv abs_srcdir PG_ABS_SRCDIR
\set ECHO none
\i :abs_srcdir/helpers/setup.sql
\set ECHO all
\set VERBOSITY default

SELECT tenancy.create_tenant('prot-acme') IS NOT NULL AS created;
SELECT tenancy.create_tenant('prot-globex') IS NOT NULL AS created;
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
-- protect_schema() protects every table of a schema that has the tenant column.
SELECT tenancy.protect_schema('app');
SELECT "table", tenant_column, audited, length(policy_digest) AS digest_length FROM tenancy.protected_tables
 WHERE "table"::text LIKE 'app.%' ORDER BY 1;
\d app.orders
-- protect() again regenerates the same protection: the same digest, and no second index on
-- the tenant column (here the primary key, led by it, serves; a table without one gets one).
SELECT policy_digest AS digest FROM tenancy.protected_tables WHERE "table" = 'app.orders'::regclass \gset
SELECT tenancy.protect('app.orders');
SELECT policy_digest = :'digest' AS same_digest FROM tenancy.protected_tables WHERE "table" = 'app.orders'::regclass;
SELECT indexname FROM pg_indexes WHERE schemaname = 'app' AND tablename = 'orders';

-- What protect() refuses: a tenant column that is not a uuid, a table without one, a view.
CREATE TABLE app.wrong (tenant_id text, id int);
CREATE TABLE app.nocol (id int);
CREATE VIEW app.v WITH (security_invoker = true) AS SELECT tenant_id, id FROM app.customers;
SELECT tenancy.protect('app.wrong');
SELECT tenancy.protect('app.nocol');
SELECT tenancy.protect('app.v');
DROP TABLE app.wrong, app.nocol;
DROP VIEW app.v;

-- Data for two tenants, written through bindings (role mappings make the demo short).
CREATE ROLE regress_prot_acme LOGIN NOSUPERUSER NOBYPASSRLS;
CREATE ROLE regress_prot_globex LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT USAGE ON SCHEMA app TO regress_prot_acme, regress_prot_globex;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA app TO regress_prot_acme, regress_prot_globex;
SELECT tenancy.map_role('regress_prot_acme', 'prot-acme', '{member}');
SELECT tenancy.map_role('regress_prot_globex', 'prot-globex', '{viewer}');
\c - regress_prot_acme
INSERT INTO app.customers (id, name) SELECT g, 'acme customer ' || g FROM generate_series(1, 200) g;
INSERT INTO app.orders (id, customer_id, amount) SELECT g, 1 + g % 200, g FROM generate_series(1, 5000) g;
\c - postgres
-- globex's rows, loaded by the superuser (superusers bypass row security by design).
INSERT INTO app.customers SELECT id, g, 'globex customer ' || g FROM tenancy.tenants, generate_series(1, 200) g WHERE slug = 'prot-globex';
INSERT INTO app.orders SELECT id, g, 1 + g % 200, g FROM tenancy.tenants, generate_series(1, 5000) g WHERE slug = 'prot-globex';

-- Each tenant sees its own rows only, with no WHERE clause in the query.
\c - regress_prot_acme
SELECT count(*), min(name), max(name) FROM app.customers;
SELECT count(*), sum(amount) FROM app.orders;
\c - regress_prot_globex
SELECT count(*), min(name), max(name) FROM app.customers;
-- A viewer may not write: a loud error naming the table and the privilege.
UPDATE app.orders SET amount = 0 WHERE id = 1;
DELETE FROM app.orders WHERE id = 1;
INSERT INTO app.customers (id, name) VALUES (999, 'nope');
-- TRUNCATE would empty every tenant's rows: refused to a bound session even where the role
-- holds the privilege (an operator's TRUNCATE is recorded instead: 14_audit).
\c - postgres
GRANT TRUNCATE ON app.orders TO regress_prot_acme;
\c - regress_prot_acme
TRUNCATE app.orders;
\c - postgres
REVOKE TRUNCATE ON app.orders FROM regress_prot_acme;
-- Unbound, a protected table is loud; once the library is loaded in the session (at its
-- first call into pg_tenancy, or at connection where it is preloaded), even a statement that
-- reads no row is.
CREATE ROLE regress_prot_unbound LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT USAGE ON SCHEMA app TO regress_prot_unbound;
GRANT SELECT ON app.orders TO regress_prot_unbound;
\c - regress_prot_unbound
SELECT count(*) FROM app.orders;
SELECT count(*) FROM app.orders WHERE false;

-- Writing another tenant's rows, or moving a row to another tenant, is refused; a statement
-- aimed at another tenant's rows finds none.
\c - postgres
SELECT id AS globex_id FROM tenancy.tenants WHERE slug = 'prot-globex' \gset
\c - regress_prot_acme
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
SELECT count(*) AS globex_rows_intact FROM app.customers WHERE tenant_id = :'globex_id' AND name LIKE 'globex customer %';

-- Partitions: a partition created or attached under a protected table is protected with it.
CREATE TABLE app.events (tenant_id uuid NOT NULL, id int NOT NULL, at date NOT NULL, PRIMARY KEY (tenant_id, id, at))
    PARTITION BY RANGE (at);
CREATE TABLE app.events_2026 PARTITION OF app.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
SELECT tenancy.protect('app.events');
CREATE TABLE app.events_2027 PARTITION OF app.events FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
CREATE TABLE app.events_2028 (tenant_id uuid NOT NULL, id int NOT NULL, at date NOT NULL);
ALTER TABLE app.events ATTACH PARTITION app.events_2028 FOR VALUES FROM ('2028-01-01') TO ('2029-01-01');
SELECT "table" FROM tenancy.protected_tables WHERE "table"::text LIKE 'app.events%' ORDER BY 1;
GRANT SELECT ON app.events TO regress_prot_acme;
-- A table that holds rows joins a protected parent through tenancy.attach_partition(), which
-- checks that every row belongs to an active tenant and records each in its tenant's trail.
CREATE TABLE app.events_2029 (tenant_id uuid NOT NULL, id int NOT NULL, at date NOT NULL);
INSERT INTO app.events_2029 SELECT id, 1, '2029-06-01' FROM tenancy.tenants WHERE slug = 'prot-acme';
ALTER TABLE app.events ATTACH PARTITION app.events_2029 FOR VALUES FROM ('2029-01-01') TO ('2030-01-01');
SELECT tenancy.attach_partition('app.events', 'app.events_2029', 'FOR VALUES FROM (''2029-01-01'') TO (''2030-01-01'')');
SELECT op, table_name, row_key - 'tenant_id' AS row_key, db_role FROM tenancy.audit_log WHERE table_name = 'app.events_2029';
\c - regress_prot_acme
SELECT count(*) AS acme_events FROM app.events;

-- auto_protect(schema): tables created later in the schema with the tenant column are
-- protected when they are created; off again with auto_protect(schema, false).
\c - postgres
CREATE SCHEMA later;
SELECT tenancy.auto_protect('later');
CREATE TABLE later.created (tenant_id uuid, id int);
CREATE TABLE later.plain (id int);
CREATE TABLE later.ctas AS SELECT NULL::uuid AS tenant_id, 1 AS id WHERE false;
CREATE TABLE later.added (id int);
ALTER TABLE later.added ADD COLUMN tenant_id uuid;
SELECT tenancy.auto_protect('later', false);
CREATE TABLE later.after_off (tenant_id uuid);
SELECT c.relname, p."table" IS NOT NULL AS protected
  FROM pg_class c LEFT JOIN tenancy.protected_tables p ON p."table" = c.oid
 WHERE c.relnamespace = 'later'::regnamespace AND c.relkind = 'r' ORDER BY 1;

-- Who protects: operators; not a table's owner, nor an application role.
\c - regress_prot_acme
SELECT tenancy.protect('app.orders');
SELECT tenancy.unprotect('app.orders');

-- unprotect is audited, after which the table is ordinary again.
\c - postgres
SELECT tenancy.unprotect('app.orders');
SELECT new_row->>'action' AS action, new_row->>'table' AS tbl FROM tenancy.audit_log
 WHERE tenant_id = '00000000-0000-0000-0000-000000000000' AND new_row->>'table' LIKE 'app.orders%' ORDER BY id;
ALTER TABLE app.orders DISABLE ROW LEVEL SECURITY;
SELECT count(*) AS every_tenants_orders FROM app.orders;

DROP SCHEMA app, later CASCADE;
SELECT tenancy.unmap_role('regress_prot_acme', 'prot-acme');
SELECT tenancy.unmap_role('regress_prot_globex', 'prot-globex');
DROP OWNED BY regress_prot_acme, regress_prot_globex, regress_prot_unbound;
DROP ROLE regress_prot_acme, regress_prot_globex, regress_prot_unbound;
