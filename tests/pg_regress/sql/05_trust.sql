-- Trust boundaries from SQL: who may do what (operators, key admins, a tenant's admins), a
-- subject without a membership, the kill switches, and platform roles that never read rows.
\set VERBOSITY default
CREATE ROLE regress_ops LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT tenancy_operator TO regress_ops;
CREATE ROLE regress_keys LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT tenancy_key_admin TO regress_keys;
CREATE ROLE regress_web LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT regress_web TO regress_ops;
CREATE SCHEMA trust;
CREATE TABLE trust.notes (tenant_id uuid NOT NULL, id int NOT NULL, body text, PRIMARY KEY (tenant_id, id));
SELECT tenancy.protect('trust.notes');
GRANT USAGE ON SCHEMA trust TO regress_web;
GRANT SELECT, INSERT ON trust.notes TO regress_web;

-- Separation of duties: operators manage tenants, key admins register keys; neither does both.
\c - regress_ops
SELECT tenancy.create_tenant('initech') IS NOT NULL AS created;
SELECT tenancy.add_key('ops-key', 'HS256', 'a-secret-that-is-at-least-32-bytes-long');
\c - regress_keys
SELECT tenancy.add_key('trust-1', 'HS256', 'a-secret-that-is-at-least-32-bytes-long');
SELECT kid, alg FROM tenancy.keys WHERE kid = 'trust-1';
SELECT tenancy.create_tenant('nope');

-- The operator seats a tenant's first admin; from then on, widening access is the admins'.
\c - regress_ops
SELECT tenancy.add_member('initech', 'peter', 'admin');
SELECT tenancy.add_member('initech', 'milton', 'member');
SELECT tenancy.grant('initech', 'viewer', NULL, '{insert}');
SELECT tenancy.set_setting('initech', 'default_roles', '["member"]');
SELECT tenancy.set_setting('initech', 'model', '"small"');
\c - regress_web
BEGIN;
SELECT tenancy.bind(regress.jwt(jsonb_build_object('tid', 'initech', 'sub', 'peter', 'exp', regress.exp(600)), 'trust-1')) ->> 'roles' AS roles;
SELECT tenancy.add_member('initech', 'milton', 'member');
SELECT tenancy.add_member('initech', 'samir', 'viewer');
COMMIT;

-- A subject without a membership binds with no role and is refused every protected table.
BEGIN;
SELECT tenancy.bind(regress.jwt(jsonb_build_object('tid', 'initech', 'sub', 'bob', 'exp', regress.exp(600)), 'trust-1')) ->> 'roles' AS roles;
SELECT count(*) FROM trust.notes;
ROLLBACK;

-- Kill switches, pulled by the tenant's admin: every token of a subject issued until now, and
-- one token by its jti. Both are audited and listed.
BEGIN;
SELECT tenancy.bind(regress.jwt(jsonb_build_object('tid', 'initech', 'sub', 'peter', 'exp', regress.exp(600)), 'trust-1')) IS NOT NULL AS bound;
SELECT tenancy.revoke_subject('initech', 'milton');
SELECT tenancy.revoke_token('leaked-jti');
SELECT kind, subject, jti, revoked_by FROM tenancy.revocations ORDER BY kind;
SELECT new_row->>'action' AS action FROM tenancy.audit_log WHERE op = 'ADMIN' AND new_row->>'action' LIKE 'revoke%' ORDER BY id;
COMMIT;
SELECT tenancy.bind(regress.jwt(jsonb_build_object('tid', 'initech', 'sub', 'milton', 'exp', regress.exp(600), 'iat', regress.exp(-60)), 'trust-1'));
SELECT tenancy.bind(regress.jwt(jsonb_build_object('tid', 'initech', 'sub', 'samir', 'exp', regress.exp(600), 'jti', 'leaked-jti'), 'trust-1'));
SELECT tenancy.revoke_token('another-jti');
SELECT tenancy.revoke_subject('initech', 'samir');

-- Platform roles never read rows: not with a token, not through SET ROLE to the application.
\c - regress_ops
SELECT tenancy.bind(regress.jwt(jsonb_build_object('tid', 'initech', 'sub', 'peter', 'exp', regress.exp(600)), 'trust-1'));
SET ROLE regress_web;
SELECT tenancy.bind(regress.jwt(jsonb_build_object('tid', 'initech', 'sub', 'peter', 'exp', regress.exp(600)), 'trust-1'));
RESET ROLE;
-- Narrowing stays open to operators.
SELECT tenancy.revoke_subject('initech', 'samir');
SELECT kind, subject FROM tenancy.revocations WHERE kind = 'subject' ORDER BY subject;

-- Internal functions are not for calling.
SELECT tenancy._audit_hmac(gen_random_uuid(), 'a guessed row');
SELECT tenancy._forget_dropped();
SELECT secret FROM tenancy.audit_key;

\c - postgres
DROP SCHEMA trust CASCADE;
DROP OWNED BY regress_ops, regress_keys, regress_web;
DROP ROLE regress_ops, regress_keys, regress_web;
