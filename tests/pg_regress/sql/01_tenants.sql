-- Tenants, settings and keys: the SQL surface an operator uses, and its refusals.
CREATE EXTENSION pg_tenancy;
\set VERBOSITY default

-- The extension's objects live in the schema tenancy.
SELECT extrelocatable, nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE extname = 'pg_tenancy';

-- Tenants: create, look at, refuse bad or duplicate slugs and unknown tenants.
SELECT tenancy.create_tenant('acme', 'Acme Corp', 'eu-west', '{"model": "small"}') IS NOT NULL AS created;
SELECT tenancy.create_tenant('globex', 'Globex') IS NOT NULL AS created;
SELECT slug, name, status, region, settings FROM tenancy.tenants ORDER BY slug;
SELECT t.slug, array_agg(r.role ORDER BY r.role) AS roles
  FROM tenancy.tenant_role r JOIN tenancy.tenant t ON t.id = r.tenant_id GROUP BY t.slug ORDER BY 1;
SELECT tenancy.create_tenant('acme');
SELECT tenancy.create_tenant('Not A Slug');
SELECT tenancy.create_tenant('x');
SELECT tenancy.create_tenant('bad-settings', settings => '[1, 2]');
SELECT tenancy.create_tenant('bad-timeout', settings => '{"statement_timeout": "forever"}');
SELECT tenancy.suspend_tenant('nobody');

-- Lifecycle: suspend and resume, by slug or by uuid.
SELECT tenancy.suspend_tenant('globex', 'unpaid invoice');
SELECT slug, status, status_reason FROM tenancy.tenants WHERE slug = 'globex';
SELECT tenancy.resume_tenant((SELECT id::text FROM tenancy.tenants WHERE slug = 'globex'));
SELECT slug, status FROM tenancy.tenants WHERE slug = 'globex';
SELECT tenancy.resume_tenant('globex');  -- already active: nothing to do

-- Settings: set, replace, remove; resource settings are checked like SET would.
SELECT tenancy.set_setting('acme', 'guardrails', '{"pii": "redact"}');
SELECT tenancy.set_setting('acme', 'statement_timeout', '"5s"');
SELECT tenancy.set_setting('acme', 'work_mem', '"a lot"');
SELECT tenancy.set_setting('acme', 'model', NULL);
SELECT settings FROM tenancy.tenants WHERE slug = 'acme';
SELECT tenancy.setting('model');

-- Keys: every algorithm's key format is checked when registered.
SELECT tenancy.add_key('hs-1', 'HS256', 'a-secret-that-is-at-least-32-bytes-long');
SELECT tenancy.add_key('hs-b64', 'HS512', 'base64:' || encode(convert_to(repeat('k', 40), 'UTF8'), 'base64'));
SELECT tenancy.add_key('hs-1', 'HS256', 'another-secret-that-is-at-least-32-bytes');
SELECT tenancy.add_key('short', 'HS256', 'too-short');
SELECT tenancy.add_key('none', 'none', 'whatever-whatever-whatever-whatever');
SELECT tenancy.add_key('rs-bad', 'RS256', 'not a pem');
SELECT tenancy.add_key('scoped', 'HS256', 'a-secret-that-is-at-least-32-bytes-long', 'acme', '2999-01-01');
SELECT tenancy.add_key('scoped-nobody', 'HS256', 'a-secret-that-is-at-least-32-bytes-long', 'nobody');
SELECT kid, alg, tenant_id IS NOT NULL AS tenant_scoped, not_after, revoked_at IS NOT NULL AS revoked
  FROM tenancy.keys ORDER BY kid;
SELECT tenancy.revoke_key('hs-b64');
SELECT tenancy.revoke_key('no-such-key');
SELECT kid, revoked_at IS NOT NULL AS revoked FROM tenancy.keys ORDER BY kid;

-- Management actions are in the audit trail; those of the platform (here: keys that are not
-- scoped to a tenant) under the nil uuid.
SELECT op, tenant_id <> '00000000-0000-0000-0000-000000000000' AS has_tenant, new_row->>'action' AS action
  FROM tenancy.audit_log ORDER BY id;
