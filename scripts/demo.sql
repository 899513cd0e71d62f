-- pg_tenancy demo. Everything below runs in a throwaway cluster.
\set VERBOSITY default
\pset footer off
CREATE EXTENSION pg_tenancy;
CREATE EXTENSION pgcrypto;   -- only to sign demo tokens in SQL; your token issuer does this

-- 1. An operator creates two tenants and registers the key the token issuer signs with.
SELECT tenancy.create_tenant('acme', 'Acme Corp', settings => '{"model": "gpt-small", "statement_timeout": "5s"}') AS acme_id \gset
SELECT tenancy.create_tenant('globex', 'Globex') AS globex_id \gset
SELECT tenancy.add_key('issuer-2026', 'HS256', 'demo-secret-demo-secret-demo-secret-42');  -- a key admin's call
SELECT slug, name, status, settings FROM tenancy.tenants ORDER BY slug;
-- A token's subject acts with the roles of its memberships (a subject without one has none).
SELECT tenancy.add_member('acme', 'alice@acme.example', 'member'),
       tenancy.add_member('acme', 'alice', 'member'),
       tenancy.add_member('globex', 'gina@globex.example', 'member');

-- A demo token issuer (HS256); in production the identity provider signs tokens.
CREATE FUNCTION public.demo_token(tenant text, sub text, ttl int DEFAULT 600) RETURNS text
LANGUAGE sql AS $$
    WITH p AS (
        SELECT translate(rtrim(encode(convert_to('{"alg":"HS256","typ":"JWT","kid":"issuer-2026"}', 'UTF8'), 'base64'), '='), E'+/\n', '-_') AS h,
               translate(rtrim(encode(convert_to(json_build_object('tid', tenant, 'sub', sub,
                   'exp', extract(epoch FROM now())::bigint + ttl)::text, 'UTF8'), 'base64'), '='), E'+/\n', '-_') AS c)
    SELECT h || '.' || c || '.' || translate(rtrim(encode(hmac(h || '.' || c, 'demo-secret-demo-secret-demo-secret-42', 'sha256'), 'base64'), '='), E'+/\n', '-_')
      FROM p
$$;

-- 2. One call protects a table: forced row security, generated policies, tenant default.
CREATE TABLE public.documents (
    tenant_id uuid NOT NULL,
    id        bigint GENERATED ALWAYS AS IDENTITY,
    title     text NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
SELECT tenancy.protect('public.documents');
SELECT "table", tenant_column, left(policy_digest, 16) AS digest FROM tenancy.protected_tables;

-- The application connects as an ordinary role: NOSUPERUSER, NOBYPASSRLS.
CREATE ROLE demo_app LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT EXECUTE ON FUNCTION public.demo_token(text, text, int) TO demo_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.documents TO demo_app;
\c - demo_app

-- Each request binds its tenant and writes without naming it.
BEGIN;
SELECT tenancy.bind(public.demo_token('acme', 'alice@acme.example')) IS NOT NULL AS bound;
INSERT INTO public.documents (title) VALUES ('acme roadmap'), ('acme prompts');
COMMIT;
BEGIN;
SELECT tenancy.bind(public.demo_token('globex', 'gina@globex.example')) IS NOT NULL AS bound;
INSERT INTO public.documents (title) VALUES ('globex secrets');
COMMIT;

-- Unbound, the session has no tenant: loud, not empty.
SELECT tenancy.current_tenant();

-- 3. Bind a signed token for one request (one transaction).
BEGIN;
SELECT tenancy.bind(public.demo_token('acme', 'alice@acme.example'));
SELECT tenancy.current_subject(), tenancy.current_roles(), tenancy.setting('model');
SHOW statement_timeout;   -- acme's resource setting, for this transaction only
SELECT slug FROM tenancy.tenants;   -- a bound session sees only its own tenant
SELECT id, title FROM public.documents;   -- no WHERE clause: only acme's rows
SELECT count(*) FROM public.documents WHERE tenant_id <> tenancy.current_tenant();   -- even when asked
COMMIT;
SELECT tenancy.binding() IS NULL AS "unbound after COMMIT";

-- 4. Forgery attempts an injected query might try: all refused.
SET tenancy.tenant = 'globex';
SELECT set_config('tenancy.current_tenant', :'globex_id', false);
SET tenancy.tenant_claim = 'sub';
SELECT tenancy.bind(split_part(public.demo_token('acme', 'a'), '.', 1) || '.' ||
                    split_part(public.demo_token('globex', 'a'), '.', 2) || '.' ||
                    split_part(public.demo_token('acme', 'a'), '.', 3));   -- globex claims, acme signature
SELECT count(*) FROM public.documents;   -- unbound: an error, not an empty result
BEGIN;
SELECT tenancy.bind(public.demo_token('acme', 'alice')) IS NOT NULL AS bound_to_acme;
INSERT INTO public.documents (tenant_id, title) VALUES (:'globex_id', 'planted');   -- write into globex
ROLLBACK;
ALTER TABLE public.documents DISABLE ROW LEVEL SECURITY;
BEGIN;
SELECT tenancy.bind(public.demo_token('acme', 'alice')) IS NOT NULL AS bound_to_acme;
SELECT tenancy.bind(public.demo_token('globex', 'mallory'));   -- rebinding in one transaction
ROLLBACK;
SELECT tenancy.create_tenant('evil');   -- management is for operators

-- 5. Suspension: new binds are refused (bound sessions lose access from their next statement).
SELECT tenancy.bind(public.demo_token('acme', 'alice'), 'session') IS NOT NULL AS session_bound;
\c - postgres
SELECT tenancy.suspend_tenant('acme', 'demo: unpaid invoice');
\c - demo_app
SELECT tenancy.bind(public.demo_token('acme', 'alice'));
\c - postgres
SELECT tenancy.resume_tenant('acme');

-- 6. The guard: even a superuser cannot quietly weaken a protected table.
DROP POLICY tenancy_select ON public.documents;
ALTER TABLE public.documents NO FORCE ROW LEVEL SECURITY;
SELECT severity, rule, object FROM tenancy.verify();   -- no error rows: clean

-- 7. Every change and every management action is in the tamper-evident audit trail.
SELECT id, op, coalesce(table_name, new_row->>'action') AS what, new_row - 'tenant_id' AS new_row,
       db_role, subject
  FROM tenancy.audit_log ORDER BY id;
SELECT tenant, records, ok FROM tenancy.audit_verify() ORDER BY records DESC;
