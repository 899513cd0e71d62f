-- Purge: the audit trail is append-only, and its records leave only for retention:
-- tenancy.audit_purge(tenant, before), an operator's call, removes the tenant's records older
-- than before (a prefix of each chain lane), leaves a checkpoint per lane so the rest still
-- verifies, and records in the tenant's own chain where it cut. It never removes records
-- younger than tenancy.audit_min_retention (90 days; a superuser's setting) nor a tenant's
-- deletion certificate. Anchored heads that were purged still check out; heads younger than
-- the floor that are gone were deleted, not purged.
\getenv abs_srcdir PG_ABS_SRCDIR
\set ECHO none
\i :abs_srcdir/helpers/setup.sql
\set ECHO all
\set VERBOSITY default

SELECT tenancy.create_tenant('purge-acme') IS NOT NULL AS created;
CREATE SCHEMA purge;
CREATE TABLE purge.events (tenant_id uuid NOT NULL, id int NOT NULL, PRIMARY KEY (tenant_id, id));
SELECT tenancy.protect('purge.events');
CREATE ROLE regress_purge_ops LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT tenancy_operator TO regress_purge_ops;
CREATE ROLE regress_purge_app LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT USAGE ON SCHEMA purge TO regress_purge_app;
GRANT SELECT, INSERT ON purge.events TO regress_purge_app;
SELECT tenancy.map_role('regress_purge_app', 'purge-acme');
\c - regress_purge_app
INSERT INTO purge.events (id) SELECT g FROM generate_series(1, 20) g;

-- The floor: 90 days unless a superuser sets it; an operator cannot lower it.
\c - regress_purge_ops
SELECT tenancy.is_operator();   -- (loads the library, which defines its settings)
SHOW tenancy.audit_min_retention;
SET tenancy.audit_min_retention = 0;
-- An operator anchors the tenant's chain heads somewhere the database cannot write ...
SELECT jsonb_agg(h)::text AS anchor FROM tenancy.audit_heads('purge-acme') h \gset
-- ... and cannot purge anything younger than the floor: 42501, with a HINT.
SELECT tenancy.audit_purge('purge-acme', now());
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT tenancy.audit_purge('purge-acme', 'infinity');
SELECT tenancy.audit_purge('purge-acme', now() - interval '89 days');
-- Older than the floor is allowed, and here there is nothing that old.
SELECT tenancy.audit_purge('purge-acme', now() - interval '91 days') AS purged;
-- Application roles do not purge.
\c - regress_purge_app
SELECT tenancy.audit_purge('purge-acme', now() - interval '1 year');

-- A superuser lowers the floor for its own transaction: every record until then goes (the
-- 20 inserts, and the management records: create_tenant, map_role, the empty purge above), a
-- checkpoint is left in each lane it cut (which lanes a tenant's writers used depends on their
-- backends), and the purge records in the tenant's chain where it cut. The trail still
-- verifies.
\c - postgres
BEGIN;
SET LOCAL tenancy.audit_min_retention = 0;
SELECT tenancy.audit_purge('purge-acme', clock_timestamp()) AS purged;
COMMIT;
SELECT op, new_row->>'action' AS action, (new_row->>'records')::int AS records,
       (new_row->>'min_retention_seconds')::int AS floor_seconds,
       jsonb_array_length(new_row->'cut') = (SELECT count(*) FROM tenancy.audit_checkpoint c WHERE c.tenant_id = a.tenant_id) AS cut_per_checkpoint
  FROM tenancy.audit_log a JOIN tenancy.tenants t ON t.id = a.tenant_id
 WHERE t.slug = 'purge-acme' ORDER BY a.id;
SELECT sum(purged_records) AS purged_records
  FROM tenancy.audit_checkpoint c JOIN tenancy.tenants t ON t.id = c.tenant_id WHERE t.slug = 'purge-acme';
SELECT records, ok, detail FROM tenancy.audit_verify('purge-acme');
\c - regress_purge_app
INSERT INTO purge.events (id) VALUES (21);
\c - regress_purge_ops
SELECT records, ok, detail FROM tenancy.audit_verify('purge-acme');

-- The anchor taken before the purge: under the floor the purge ran with, its heads were
-- purged; under the default floor, heads that young being gone is what a deletion looks like.
\c - postgres
SET tenancy.audit_min_retention = 0;
SELECT bool_and(ok) AS anchor_holds, bool_and(detail LIKE 'ok (%') AS says_purged
  FROM tenancy.audit_verify_heads(:'anchor');
RESET tenancy.audit_min_retention;
\c - regress_purge_ops
SELECT bool_or(NOT ok) AS anchor_fails, bool_or(detail LIKE '%deleted, not purged%') AS says_deleted
  FROM tenancy.audit_verify_heads(:'anchor');

-- A deletion certificate is never purged.
\c - postgres
SELECT tenancy.create_tenant('purge-gone') IS NOT NULL AS created;
SELECT tenancy.decommission_tenant('purge-gone', 'purge-gone') IS NOT NULL AS decommissioned;
BEGIN;
SET LOCAL tenancy.audit_min_retention = 0;
SELECT tenancy.audit_purge('purge-gone', clock_timestamp()) AS purged;
COMMIT;
SELECT a.new_row->>'action' AS action
  FROM tenancy.audit_log a JOIN tenancy.tenants t ON t.id = a.tenant_id
 WHERE t.slug = 'purge-gone' ORDER BY a.id;
SELECT records, ok, detail FROM tenancy.audit_verify('purge-gone');

DROP SCHEMA purge CASCADE;
SELECT tenancy.unmap_role('regress_purge_app', 'purge-acme');
DROP OWNED BY regress_purge_app;
DROP ROLE regress_purge_ops, regress_purge_app;
