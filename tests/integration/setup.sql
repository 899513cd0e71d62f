-- Run by scripts/test.sh as the superuser before the integration tests: a fresh database with
-- the extension, and the client roles the tests connect as. The application roles are
-- NOSUPERUSER NOBYPASSRLS: row security applies to them.
DROP DATABASE IF EXISTS tenancy_it WITH (FORCE);
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
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tenancy_keyadm1') THEN
        CREATE ROLE tenancy_keyadm1 LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB;
    END IF;
END $$;
GRANT tenancy_key_admin TO tenancy_keyadm1;
GRANT tenancy_app2 TO tenancy_app;
GRANT tenancy_operator TO tenancy_op1;
GRANT CREATE ON SCHEMA public TO tenancy_app;

-- Tables of tenant rows, protected by pg_tenancy.
CREATE TABLE public.it_orders (
    id        bigserial PRIMARY KEY,
    tenant_id uuid NOT NULL,
    amount    int NOT NULL
);
CREATE INDEX ON public.it_orders (tenant_id, id);
SELECT tenancy.protect('public.it_orders');
GRANT SELECT, INSERT, UPDATE, DELETE ON public.it_orders TO tenancy_app, tenancy_app2;
GRANT USAGE ON SEQUENCE public.it_orders_id_seq TO tenancy_app, tenancy_app2;

CREATE TABLE public.it_customers (
    tenant_id uuid NOT NULL,
    id        int  NOT NULL,
    name      text NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE TABLE public.it_items (
    tenant_id   uuid NOT NULL,
    id          int  NOT NULL,
    customer_id int  NOT NULL,
    qty         int  NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES public.it_customers (tenant_id, id)
);
CREATE TABLE public.it_events (
    tenant_id uuid NOT NULL,
    id        int  NOT NULL,
    at        date NOT NULL,
    PRIMARY KEY (tenant_id, id, at)
) PARTITION BY RANGE (at);
CREATE TABLE public.it_events_2026 PARTITION OF public.it_events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
SELECT tenancy.protect('public.it_customers');
SELECT tenancy.protect('public.it_items');
SELECT tenancy.protect('public.it_events');
-- A partition created after protection is protected at creation.
CREATE TABLE public.it_events_2027 PARTITION OF public.it_events FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
CREATE VIEW public.it_customer_totals WITH (security_invoker = true) AS
    SELECT c.tenant_id, c.id, c.name, sum(i.qty) AS qty
      FROM public.it_customers c JOIN public.it_items i ON i.tenant_id = c.tenant_id AND i.customer_id = c.id
     GROUP BY 1, 2, 3;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.it_customers, public.it_items, public.it_events,
    public.it_events_2026, public.it_events_2027, public.it_customer_totals TO tenancy_app, tenancy_app2;
