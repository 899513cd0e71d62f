-- Run by scripts/test.sh as the superuser before the integration tests: a fresh database with
-- the extension, and the client roles the tests connect as. The application roles are
-- NOSUPERUSER NOBYPASSRLS: row security applies to them.
DROP DATABASE IF EXISTS tenancy_it;
CREATE DATABASE tenancy_it;
\connect tenancy_it
CREATE EXTENSION pg_tenancy;
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tenancy_app') THEN
        CREATE ROLE tenancy_app LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tenancy_app2') THEN
        CREATE ROLE tenancy_app2 LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tenancy_op1') THEN
        CREATE ROLE tenancy_op1 LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB;
    END IF;
END $$;
GRANT tenancy_app2 TO tenancy_app;
GRANT tenancy_operator TO tenancy_op1;
GRANT CREATE ON SCHEMA public TO tenancy_app;

-- A table of tenant rows with a policy written the way generated policies read the binding:
-- once per statement, through a scalar subquery. (tenancy.protect() replaces this by hand-made
-- policy once the protection capability lands.)
CREATE TABLE public.it_orders (
    id        bigserial PRIMARY KEY,
    tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant(),
    amount    int NOT NULL
);
CREATE INDEX ON public.it_orders (tenant_id, id);
ALTER TABLE public.it_orders ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON public.it_orders
    USING (tenant_id = (SELECT tenancy.current_tenant()))
    WITH CHECK (tenant_id = (SELECT tenancy.current_tenant()));
GRANT SELECT, INSERT, UPDATE, DELETE ON public.it_orders TO tenancy_app, tenancy_app2;
GRANT USAGE ON SEQUENCE public.it_orders_id_seq TO tenancy_app, tenancy_app2;
