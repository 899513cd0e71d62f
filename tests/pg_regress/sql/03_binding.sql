-- Binding: a session acts for one tenant only after tenancy.bind(token) (a compact JWS signed
-- with a registered key; regress.token() builds one with pgcrypto here, as an application's
-- token issuer would) or by logging in as a role mapped to a tenant. The binding lasts for
-- the transaction (or the session, until tenancy.unbind() or DISCARD ALL), carries the
-- subject and its tenant roles, applies the tenant's resource settings, and cannot be forged
-- through settings: the tenancy. prefix is reserved and its server settings are superuser's.
-- Unbound, every tenant function is loud. (The refusals of bind: 04_bind_errors.)
\getenv abs_srcdir PG_ABS_SRCDIR
\set ECHO none
\i :abs_srcdir/helpers/setup.sql
\set ECHO all
\set VERBOSITY default

SELECT tenancy.create_tenant('bind-acme', settings => '{"statement_timeout": "5s", "guardrails": {"pii": "redact"}}') IS NOT NULL AS created;
SELECT tenancy.create_tenant('bind-globex') IS NOT NULL AS created;
SELECT tenancy.add_key('bind-key', 'HS256', 'a-secret-that-is-at-least-32-bytes-long');
CREATE ROLE regress_bind_app LOGIN NOSUPERUSER NOBYPASSRLS;

-- Unbound: loud.
\c - regress_bind_app
SELECT tenancy.current_tenant();
SELECT tenancy.setting('guardrails');
SELECT tenancy.binding() IS NULL AS unbound;
\c - postgres

-- A subject without a membership binds with no role (the tenant sets no default_roles: every
-- protected statement is refused, 11_rbac); a membership gives it its roles.
\c - regress_bind_app
SELECT b->'roles' AS roles FROM tenancy.bind(regress.token('bind-acme', 'alice', 'bind-key')) b;
\c - postgres
SELECT tenancy.add_member('bind-acme', 'alice', 'member');

-- Bind in a transaction; the binding ends with it. bind() returns the binding (here without
-- the tenant's uuid and the token's expiry, which change from run to run).
\c - regress_bind_app
BEGIN;
SELECT tenancy.bind(regress.token('bind-acme', 'alice', 'bind-key')) - 'tenant' - 'expires_at' AS binding;
SELECT t.slug FROM tenancy.tenants t WHERE t.id = tenancy.current_tenant();
SELECT tenancy.current_subject(), tenancy.current_roles();
SELECT (tenancy.binding() ->> 'expires_at')::timestamptz > now() AS expiry_ahead;
SHOW statement_timeout;  -- the tenant's resource setting, applied for this transaction
SELECT tenancy.setting('guardrails');
SELECT tenancy.setting('no-such-setting') IS NULL AS unset;
-- A savepoint rolled back does not take the binding with it.
SAVEPOINT s;
SELECT tenancy.bind(regress.token('bind-acme', 'alice', 'bind-key')) IS NOT NULL AS bound_again;
ROLLBACK TO SAVEPOINT s;
SELECT tenancy.current_subject();
COMMIT;
SELECT tenancy.binding() IS NULL AS unbound_after_commit;
SHOW statement_timeout;
-- An application that does not read the binding can ask for a boolean (the same checks).
BEGIN;
SELECT tenancy.bind(regress.token('bind-acme', 'alice', 'bind-key'), 'transaction') IS NOT NULL AS bound;
ROLLBACK;

-- A session-scoped binding lasts across transactions, until unbind() or DISCARD ALL; until
-- then the session cannot bind another tenant.
SELECT tenancy.bind(regress.token('bind-acme', 'alice', 'bind-key'), 'session') ->> 'scope' AS scope;
SELECT tenancy.current_subject();
BEGIN;
SELECT tenancy.current_roles();
SHOW statement_timeout;
COMMIT;
SELECT tenancy.bind(regress.token('bind-globex', 'bob', 'bind-key'));
SELECT tenancy.unbind();
SELECT tenancy.binding() IS NULL AS unbound;
SELECT tenancy.bind(regress.token('bind-acme', 'alice', 'bind-key'), 'session') IS NOT NULL AS bound;
RESET ALL;
SELECT tenancy.current_subject() AS after_reset_all;
DISCARD ALL;
SELECT tenancy.binding() IS NULL AS unbound_after_discard_all;

-- The tenancy. prefix is reserved, and the server settings are superuser-only.
SET tenancy.tenant = 'bind-acme';
SELECT set_config('tenancy.current_tenant', 'bind-acme', false);
SET tenancy.region = 'anywhere';
SET tenancy.tenant_claim = 'sub';
SET tenancy.max_token_bytes = 1048576;
SET tenancy.allow_session_scope = on;
\c - postgres

-- Role mappings: a login role mapped to one tenant is bound without a token, from its first
-- statement, with the mapped tenant roles (no subject).
SELECT tenancy.map_role('regress_bind_app', 'bind-acme', '{viewer}');
SELECT tenancy.map_role('regress_bind_app', 'bind-acme', '{owner}');
SELECT role, tenant_roles FROM tenancy.role_mappings WHERE role::text LIKE 'regress_bind%';
SET ROLE regress_bind_app;
SELECT tenancy.current_tenant() IS NOT NULL AS bound;   -- still unbound: mappings follow the login role
RESET ROLE;
\c - regress_bind_app
SELECT t.slug, tenancy.current_subject(), tenancy.current_roles(), tenancy.binding() ->> 'source' AS source
  FROM tenancy.tenants t WHERE t.id = tenancy.current_tenant();
\c - postgres
SELECT tenancy.unmap_role('regress_bind_app', 'bind-acme');
SELECT tenancy.unmap_role('regress_bind_app', 'bind-acme');
\c - regress_bind_app
SELECT tenancy.binding() IS NULL AS unbound_once_unmapped;
\c - postgres

DROP ROLE regress_bind_app;
