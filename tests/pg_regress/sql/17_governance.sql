-- Governance: the configuration as a canonical document (export_config), what a document would
-- change with each change's risk (plan_config), applying it all or nothing through the
-- management functions as the caller (apply_config), the CI gate (assert_clean), and the
-- telemetry a platform reads without reading a row (tenant_stats, metrics). This cluster does
-- not preload pg_tenancy: the telemetry says so (the integration tests count on one that does).
\getenv abs_srcdir PG_ABS_SRCDIR
\set ECHO none
\i :abs_srcdir/helpers/setup.sql
\set ECHO all
\set VERBOSITY default

CREATE ROLE regress_gov_ops LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT tenancy_operator TO regress_gov_ops;
CREATE ROLE regress_gov_app LOGIN NOSUPERUSER NOBYPASSRLS;
CREATE ROLE regress_gov_monitor LOGIN NOSUPERUSER NOBYPASSRLS IN ROLE pg_monitor;
CREATE SCHEMA gov;
CREATE TABLE gov.docs (tenant_id uuid NOT NULL, id int NOT NULL, body text, PRIMARY KEY (tenant_id, id));
SELECT tenancy.protect('gov.docs');
SELECT tenancy.create_tenant('gov-acme', 'Acme', 'eu') IS NOT NULL AS created;
SELECT tenancy.create_role('gov-acme', 'auditor');
SELECT tenancy.grant('gov-acme', 'auditor', 'gov.docs', '{select}');
SELECT tenancy.set_limit('gov-acme', 'work_mem', '4096');
SELECT tenancy.add_member('gov-acme', 'carol', 'auditor');

\c - regress_gov_ops
-- One tenant's part: canonical, no uuid, no time but a key's not_after, no secret.
SELECT jsonb_pretty(tenancy.export_config('gov-acme'));
SELECT tenancy.export_config()::text = tenancy.export_config()::text AS byte_identical;

-- A document of tenants only is compared for those tenants; a field a tenant leaves out
-- (gov-new's roles, members, ...) is left as it is.
\set doc '{"version": 1, "tenants": [{"slug": "gov-acme", "name": "Acme", "region": "eu", "status": "active", "settings": {"plan": "gold"}, "limits": {"work_mem": 8192}, "roles": [{"role": "admin", "builtin": true, "privileges": [{"table": "*", "privilege": "delete"}, {"table": "*", "privilege": "insert"}, {"table": "*", "privilege": "select"}, {"table": "*", "privilege": "update"}]}, {"role": "member", "builtin": true, "privileges": [{"table": "*", "privilege": "select"}]}, {"role": "viewer", "builtin": true, "privileges": [{"table": "*", "privilege": "select"}]}], "members": [{"subject": "dave", "role": "admin"}]}, {"slug": "gov-new", "status": "active"}]}'
SELECT * FROM tenancy.plan_config(:'doc') ORDER BY risk, action, object, detail;

-- Refused before anything changes: risks not allowed (42501, listed), a risk class that does
-- not exist (22023), a change no function makes (0A000).
SELECT * FROM tenancy.apply_config(:'doc');
SELECT * FROM tenancy.apply_config(:'doc', '{everything}');
SELECT * FROM tenancy.apply_config(jsonb_set(:'doc'::jsonb, '{tenants,0,name}', '"Acme Corp"'), '{safe,narrowing,widening,destructive}');
SELECT count(*) AS gov_new_exists FROM tenancy.tenants WHERE slug = 'gov-new';

SELECT * FROM tenancy.apply_config(:'doc', '{safe,narrowing,widening}');
SELECT count(*) AS gov_new_exists FROM tenancy.tenants WHERE slug = 'gov-new';

-- Allowed: applied in one transaction, each change by its management function, in
-- dependency order (the admin after the other widening changes, removals after it).
SELECT action, object, risk, status FROM tenancy.apply_config(:'doc', '{safe,narrowing,widening,destructive}') ORDER BY action, object, detail;
SELECT * FROM tenancy.plan_config(:'doc');
SELECT tenancy.assert_clean(:'doc');
SELECT * FROM tenancy.apply_config(:'doc', '{}');
SELECT subject, role FROM tenancy.members m JOIN tenancy.tenants t ON t.id = m.tenant_id WHERE t.slug = 'gov-acme' ORDER BY 1;

-- A seeded role cannot be dropped: listed, refused (0A000).
SELECT * FROM tenancy.apply_config(jsonb_set(:'doc'::jsonb, '{tenants,0,roles}', '[]'), '{safe,narrowing,widening,destructive}');

-- Drift from the document fails the gate, each change listed.
\c - postgres
SELECT tenancy.add_member('gov-acme', 'mallory', 'member');
\c - regress_gov_ops
SELECT tenancy.assert_clean(:'doc');

-- A schema's auto-protection moved to another tenant column: its next tables with the old
-- column would be left unprotected, so destructive.
SELECT tenancy.auto_protect('gov');
SELECT action, object, detail, risk FROM tenancy.plan_config(jsonb_set(tenancy.export_config(),
       '{auto_protect_schemas}', '[{"schema": "gov", "tenant_column": "owner_id"}]')) WHERE object = 'gov';
SELECT tenancy.auto_protect('gov', false);

-- Telemetry without preloading: the catalog and the statistics, and it says so.
SELECT tenant, status, source, binds, jsonb_array_length(tables) > 0 AS has_tables
  FROM tenancy.tenant_stats WHERE tenant LIKE 'gov-%' ORDER BY tenant;
SELECT line FROM regexp_split_to_table(tenancy.metrics(), E'\n') line WHERE line LIKE 'pg_tenancy_telemetry_up%';
\c - regress_gov_monitor
SELECT count(*) > 0 AS reads_every_tenant FROM tenancy.tenant_stats;
SELECT tenancy.create_tenant('gov-nope');

-- Not an operator: refused, every one of them.
\c - regress_gov_app
SELECT tenancy.export_config();
SELECT * FROM tenancy.plan_config('{"version": 1, "tenants": []}');
SELECT * FROM tenancy.apply_config('{"version": 1, "tenants": []}');
SELECT tenancy.assert_clean();
SELECT * FROM tenancy.tenant_stats;
SELECT tenancy.metrics();

\c - postgres
DROP ROLE regress_gov_ops, regress_gov_app, regress_gov_monitor;
