-- Binding from SQL: a token signed with HS256 (pgcrypto builds it here, as an application's
-- token issuer would), the binding functions, and the refusals an application sees.
\set VERBOSITY default
CREATE EXTENSION IF NOT EXISTS pgcrypto;

-- In a schema of their own: 05_trust signs its tokens with them too.
CREATE SCHEMA regress;
GRANT USAGE ON SCHEMA regress TO PUBLIC;
CREATE FUNCTION regress.b64url(bytea) RETURNS text LANGUAGE sql IMMUTABLE AS
$$ SELECT translate(rtrim(encode($1, 'base64'), '='), E'+/\n', '-_') $$;
CREATE FUNCTION regress.jwt(claims jsonb, kid text DEFAULT 'hs-1',
                            secret text DEFAULT 'a-secret-that-is-at-least-32-bytes-long')
RETURNS text LANGUAGE sql AS $$
    SELECT h || '.' || p || '.' || regress.b64url(public.hmac(h || '.' || p, secret, 'sha256'))
      FROM (SELECT regress.b64url(convert_to(json_build_object('alg', 'HS256', 'typ', 'JWT', 'kid', kid)::text, 'UTF8')) AS h,
                   regress.b64url(convert_to(claims::text, 'UTF8')) AS p) s
$$;
CREATE FUNCTION regress.exp(seconds int) RETURNS bigint LANGUAGE sql AS
$$ SELECT extract(epoch FROM now())::bigint + seconds $$;

CREATE ROLE regress_app LOGIN NOSUPERUSER NOBYPASSRLS;

-- Unbound: loud.
SET ROLE regress_app;
SELECT tenancy.current_tenant();
SELECT tenancy.binding() IS NULL AS unbound;
RESET ROLE;

-- A subject without a membership binds with no role (the tenant sets no default_roles: every
-- protected statement is refused, 05_trust); a membership gives it its roles.
SELECT b->'roles' AS roles FROM tenancy.bind(regress.jwt(jsonb_build_object('tid', 'acme', 'sub', 'alice', 'exp', regress.exp(600)))) b;
SELECT tenancy.add_member('acme', 'alice', 'member');

-- Bind in a transaction; the binding ends with it.
BEGIN;
SELECT b->>'slug' AS slug, b->>'subject' AS subject, b->'roles' AS roles, b->>'scope' AS scope
  FROM tenancy.bind(regress.jwt(jsonb_build_object('tid', 'acme', 'sub', 'alice', 'exp', regress.exp(600)))) b;
SELECT t.slug FROM tenancy.tenants t WHERE t.id = tenancy.current_tenant();
SELECT tenancy.current_subject(), tenancy.current_roles();
SHOW statement_timeout;  -- acme's resource setting, applied for this transaction
SELECT tenancy.setting('guardrails');
COMMIT;
SELECT tenancy.binding() IS NULL AS unbound_after_commit;
SHOW statement_timeout;

-- Refusals.
SELECT tenancy.bind(regress.jwt(jsonb_build_object('tid', 'acme', 'sub', 'alice', 'exp', regress.exp(-60))));
SELECT tenancy.bind(regress.jwt(jsonb_build_object('tid', 'acme', 'sub', 'alice', 'exp', regress.exp(600), 'nbf', regress.exp(300))));
SELECT tenancy.bind(regress.jwt(jsonb_build_object('tid', 'acme', 'sub', 'alice', 'exp', regress.exp(600)), secret => 'the-wrong-secret-but-long-enough-to-pass'));
SELECT tenancy.bind(regress.jwt(jsonb_build_object('tid', 'acme', 'sub', 'alice', 'exp', regress.exp(600)), kid => 'hs-b64'));
SELECT tenancy.bind(regress.jwt(jsonb_build_object('tid', 'acme', 'sub', 'alice', 'exp', regress.exp(600)), kid => 'unknown'));
SELECT tenancy.bind(regress.jwt(jsonb_build_object('tid', 'nobody', 'sub', 'alice', 'exp', regress.exp(600))));
SELECT tenancy.bind(regress.jwt(jsonb_build_object('sub', 'alice', 'exp', regress.exp(600))));
SELECT tenancy.bind(regress.jwt(jsonb_build_object('tid', 'acme', 'exp', regress.exp(600))));
SELECT tenancy.bind(regress.jwt(jsonb_build_object('tid', 'globex', 'sub', 'bob', 'exp', regress.exp(600)), kid => 'scoped'));
SELECT tenancy.bind('');
SELECT tenancy.bind('garbage');
SELECT tenancy.bind(repeat('x', 100000));
SELECT tenancy.bind(regress.jwt(jsonb_build_object('tid', 'acme', 'sub', 'alice', 'exp', regress.exp(600))), 'forever');
SELECT tenancy.suspend_tenant('globex');
SELECT tenancy.bind(regress.jwt(jsonb_build_object('tid', 'globex', 'sub', 'bob', 'exp', regress.exp(600))));
SELECT tenancy.resume_tenant('globex');

-- Rebinding to another tenant in one transaction.
BEGIN;
SELECT tenancy.bind(regress.jwt(jsonb_build_object('tid', 'acme', 'sub', 'alice', 'exp', regress.exp(600)))) IS NOT NULL AS bound;
SELECT tenancy.bind(regress.jwt(jsonb_build_object('tid', 'globex', 'sub', 'bob', 'exp', regress.exp(600))));
ROLLBACK;

-- The tenancy. prefix is reserved, and the server settings are superuser-only.
SET tenancy.tenant = 'acme';
SELECT set_config('tenancy.current_tenant', 'acme', false);
SET ROLE regress_app;
SET tenancy.region = 'anywhere';
SET tenancy.tenant_claim = 'sub';
RESET ROLE;

-- Role mappings: a login role mapped to one tenant is bound without a token.
SELECT tenancy.map_role('regress_app', 'acme', '{viewer}');
SELECT tenancy.map_role('regress_app', 'acme', '{owner}');
SET ROLE regress_app;
SELECT tenancy.current_tenant() IS NOT NULL AS bound;   -- still unbound: mappings follow the login role
RESET ROLE;
\c - regress_app
SELECT t.slug, tenancy.current_subject(), tenancy.current_roles()
  FROM tenancy.tenants t WHERE t.id = tenancy.current_tenant();
\c - postgres
SELECT role, tenant_roles FROM tenancy.role_mappings;
SELECT tenancy.unmap_role('regress_app', 'acme');
SELECT tenancy.unmap_role('regress_app', 'acme');

DROP OWNED BY regress_app;
DROP ROLE regress_app;
