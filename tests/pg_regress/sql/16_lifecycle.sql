-- Lifecycle: an operator suspends a tenant (its sessions are refused from their next
-- statement, its rows kept) and resumes it; decommission_tenant(tenant, confirm) deletes the
-- tenant's rows from every protected table, removes its roles, members, keys, mappings and
-- grants, keeps a tombstone (the slug is never reused, the tenant never bound or changed
-- again) and returns a deletion certificate signed with the platform's Ed25519 key, also
-- written to the tenant's audit trail. tenancy.verify_certificate(cert) checks one, and so
-- can anyone outside the database with the public key in tenancy.certificate_keys.
\getenv abs_srcdir PG_ABS_SRCDIR
\set ECHO none
\i :abs_srcdir/helpers/setup.sql
\set ECHO all
\set VERBOSITY default

SELECT tenancy.create_tenant('life-acme', 'Acme Corp') IS NOT NULL AS created;
SELECT tenancy.create_tenant('life-globex', 'Globex') IS NOT NULL AS created;
SELECT tenancy.add_key('life-key', 'HS256', 'a-secret-that-is-at-least-32-bytes-long');
SELECT tenancy.add_key('life-acme-key', 'HS256', 'a-secret-that-is-at-least-32-bytes-long', 'life-acme');
SELECT tenancy.add_member('life-acme', 'ann', 'admin');
SELECT tenancy.add_member('life-globex', 'gus', 'admin');
CREATE ROLE regress_life_ops LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT tenancy_operator TO regress_life_ops;
CREATE ROLE regress_life_app LOGIN NOSUPERUSER NOBYPASSRLS;
CREATE ROLE regress_life_mapped LOGIN NOSUPERUSER NOBYPASSRLS;
SELECT tenancy.map_role('regress_life_mapped', 'life-acme', '{member}');
CREATE SCHEMA life;
CREATE TABLE life.customers (tenant_id uuid NOT NULL, id int NOT NULL, name text, PRIMARY KEY (tenant_id, id));
CREATE TABLE life.orders (tenant_id uuid NOT NULL, id int NOT NULL, customer_id int NOT NULL, PRIMARY KEY (tenant_id, id),
                          FOREIGN KEY (tenant_id, customer_id) REFERENCES life.customers (tenant_id, id));
SELECT tenancy.protect_schema('life');
GRANT USAGE ON SCHEMA life TO regress_life_app, regress_life_mapped;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA life TO regress_life_app, regress_life_mapped;
INSERT INTO life.customers SELECT id, g, slug || ' customer ' || g FROM tenancy.tenants, generate_series(1, 5) g WHERE slug LIKE 'life-%';
INSERT INTO life.orders SELECT id, g, 1 + g % 5 FROM tenancy.tenants, generate_series(1, 20) g WHERE slug LIKE 'life-%';

-- Suspend (with a reason) and resume, by slug or by uuid; an operator's calls.
\c - regress_life_ops
SELECT tenancy.suspend_tenant('life-globex', 'unpaid invoice');
SELECT slug, status, status_reason FROM tenancy.tenants WHERE slug LIKE 'life-%' ORDER BY slug;
SELECT tenancy.suspend_tenant('life-globex');   -- already suspended: nothing to do
\c - regress_life_app
SELECT tenancy.bind(regress.token('life-globex', 'gus', 'life-key'));
\c - regress_life_ops
SELECT tenancy.resume_tenant((SELECT id::text FROM tenancy.tenants WHERE slug = 'life-globex'));
SELECT slug, status, status_reason FROM tenancy.tenants WHERE slug = 'life-globex';
SELECT tenancy.resume_tenant('life-globex');  -- already active: nothing to do
\c - regress_life_app
BEGIN;
SELECT tenancy.bind(regress.token('life-globex', 'gus', 'life-key')) IS NOT NULL AS bound;
SELECT count(*) AS orders_kept FROM life.orders;
COMMIT;
-- Not for tenants' admins, nor for application roles.
BEGIN;
SELECT tenancy.bind(regress.token('life-acme', 'ann', 'life-key')) IS NOT NULL AS bound;
SELECT tenancy.suspend_tenant('life-acme');
ROLLBACK;

-- Decommission: the confirmation must repeat the tenant's slug; an operator's call.
SELECT tenancy.decommission_tenant('life-acme', 'life-acme');
\c - regress_life_ops
SELECT tenancy.decommission_tenant('life-acme', 'acme');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- A prepared transaction that wrote for the tenant holds its write lock: decommission refuses
-- until it is finished (open writers are waited for, tenancy.decommission_wait, then ended).
-- A write takes the lock where pg_tenancy is loaded (at connection where it is preloaded, as
-- it should be in production; here, loaded by the session's first call into it).
\c - regress_life_mapped
SELECT tenancy.current_roles();
BEGIN;
INSERT INTO life.customers (id, name) VALUES (6, 'prepared');
PREPARE TRANSACTION 'regress_life_prepared';
\c - regress_life_ops
SELECT tenancy.decommission_tenant('life-acme', 'life-acme');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
\c - postgres
COMMIT PREPARED 'regress_life_prepared';
\c - regress_life_ops
SELECT tenancy.decommission_tenant('life-acme', 'life-acme') AS cert \gset
-- The certificate (here without the tenant's uuid, the time and the signature, which change
-- from run to run, and with this file's tables' counts only).
SELECT jsonb_pretty(cert - 'tenant' - 'decommissioned_at' - 'signature' - 'key_id' - 'rows_deleted'
                    || jsonb_build_object('rows_deleted', jsonb_build_object(
                           'life.customers', cert #> '{rows_deleted,life.customers}',
                           'life.orders', cert #> '{rows_deleted,life.orders}'))) AS certificate,
       length(cert->>'signature') AS signature_hex_length,
       cert->>'key_id' = (SELECT key_id FROM tenancy.certificate_keys ORDER BY created_at DESC LIMIT 1) AS signed_with_platform_key
  FROM (SELECT :'cert'::jsonb AS cert) c;

-- Anyone can verify a certificate; an edited one does not verify.
\c - regress_life_app
SELECT tenancy.verify_certificate(:'cert');
SELECT tenancy.verify_certificate(jsonb_set(:'cert', '{total_rows_deleted}', '5000'));
SELECT tenancy.verify_certificate(:'cert'::jsonb - 'signature');
SELECT count(*) > 0 AS public_keys, bool_and(length(public_key) = 64) AS ed25519_hex FROM tenancy.certificate_keys;
SELECT * FROM tenancy.certificate_key;

-- The tenant's rows are gone, every other tenant's are untouched.
\c - postgres
SELECT t.slug, (SELECT count(*) FROM life.customers c WHERE c.tenant_id = t.id) AS customers,
       (SELECT count(*) FROM life.orders o WHERE o.tenant_id = t.id) AS orders
  FROM tenancy.tenants t WHERE t.slug LIKE 'life-%' ORDER BY 1;
-- A tombstone: its roles, members, keys and mappings are gone; the slug is not reused; it is
-- never bound, changed or resumed again; rows for it are refused, even from a superuser.
SELECT slug, name, status FROM tenancy.tenants WHERE slug = 'life-acme';
SELECT (SELECT count(*) FROM tenancy.tenant_roles r WHERE r.tenant_id = t.id) AS roles,
       (SELECT count(*) FROM tenancy.members m WHERE m.tenant_id = t.id) AS members,
       (SELECT count(*) FROM tenancy.keys k WHERE k.tenant_id = t.id) AS keys,
       (SELECT count(*) FROM tenancy.role_mappings m WHERE m.tenant_id = t.id) AS mappings
  FROM tenancy.tenants t WHERE t.slug = 'life-acme';
SELECT tenancy.create_tenant('life-acme');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT tenancy.resume_tenant('life-acme');
SELECT tenancy.suspend_tenant('life-acme');
SELECT tenancy.set_setting('life-acme', 'model', '"big"');
SELECT tenancy.decommission_tenant('life-acme', 'life-acme');
CREATE FUNCTION pg_temp.try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN   -- (the tenant's uuid in the message masked)
    RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM, '[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}', '<uuid>', 'g');
END
$$;
SELECT pg_temp.try($$INSERT INTO life.customers (tenant_id, id, name)
                     SELECT id, 1, 'revenant' FROM tenancy.tenants WHERE slug = 'life-acme'$$);
\c - regress_life_app
SELECT tenancy.bind(regress.token('life-acme', 'ann', 'life-key'));
\c - regress_life_mapped
SELECT count(*) FROM life.customers;

-- The certificate is in the tenant's trail, with the same signature.
\c - postgres
SELECT a.op, a.new_row->>'action' AS action, a.new_row->>'signature' = :'cert'::jsonb->>'signature' AS same_signature
  FROM tenancy.audit_log a JOIN tenancy.tenants t ON t.id = a.tenant_id
 WHERE t.slug = 'life-acme' AND a.new_row->>'action' = 'decommission_tenant';
SELECT records > 0 AS has_records, ok, detail FROM tenancy.audit_verify('life-acme');

DROP SCHEMA life CASCADE;
DROP OWNED BY regress_life_app, regress_life_mapped;
DROP ROLE regress_life_ops, regress_life_app, regress_life_mapped;
