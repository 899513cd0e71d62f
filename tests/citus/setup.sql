-- Run by tests/citus/run.sh as the superuser on the coordinator, once its workers are added:
-- pg_tenancy, its catalog made Citus reference tables, and the roles the suite connects as
-- (Citus creates roles and grants on every node). The application and operator roles are
-- NOSUPERUSER NOBYPASSRLS: row security applies to them.
CREATE EXTENSION pg_tenancy;
SELECT tenancy.citus_setup() IS NOT NULL AS catalog_distributed;
CREATE ROLE tenancy_app LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB;
CREATE ROLE tenancy_op1 LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB;
CREATE ROLE tenancy_keyadm1 LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB;
GRANT tenancy_operator TO tenancy_op1;
GRANT tenancy_key_admin TO tenancy_keyadm1;
