-- Bind errors: every way tenancy.bind() refuses, each with its SQLSTATE (echoed after each
-- error) and a HINT that says what to do. A token that cannot be trusted (its form, claims,
-- signature, key, time, or a revocation) is 28000 (invalid_authorization_specification); a
-- genuine token that may not bind here (its tenant unknown, suspended, decommissioned or of
-- another region, a key scoped to another tenant, a second tenant in one transaction, a role
-- that may not bind it) is 42501 (insufficient_privilege); a bad argument is 22023
-- (invalid_parameter_value). A refused bind binds nothing, and never says which part of a
-- signature was wrong.
\getenv abs_srcdir PG_ABS_SRCDIR
\set ECHO none
\i :abs_srcdir/helpers/setup.sql
\set ECHO all
\set VERBOSITY default

SELECT tenancy.create_tenant('be-acme', region => 'eu-west') IS NOT NULL AS created;
SELECT tenancy.create_tenant('be-globex') IS NOT NULL AS created;
SELECT tenancy.add_key('be-key', 'HS256', 'a-secret-that-is-at-least-32-bytes-long');
SELECT tenancy.add_key('be-384', 'HS384', 'a-secret-that-is-at-least-32-bytes-long');
SELECT tenancy.add_key('be-revoked', 'HS256', 'a-secret-that-is-at-least-32-bytes-long');
SELECT tenancy.revoke_key('be-revoked');
SELECT tenancy.add_key('be-old', 'HS256', 'a-secret-that-is-at-least-32-bytes-long', NULL, now() + interval '1 second');
-- A key already past its not_after is refused: it could never verify anything.
SELECT tenancy.add_key('be-older', 'HS256', 'a-secret-that-is-at-least-32-bytes-long', NULL, '2020-01-01');
SELECT tenancy.add_key('be-acme-only', 'HS256', 'a-secret-that-is-at-least-32-bytes-long', 'be-acme');
CREATE ROLE regress_be_app LOGIN NOSUPERUSER NOBYPASSRLS;
\c - regress_be_app
-- The token that binds, for reference.
BEGIN;
SELECT tenancy.bind(regress.token('be-acme', 'alice', 'be-key')) ->> 'slug' AS bound_to;
ROLLBACK;

-- The token's form: 28000.
SELECT tenancy.bind('');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT tenancy.bind('garbage');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT tenancy.bind(repeat('x', 100000));   -- over tenancy.max_token_bytes (8192), not parsed
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT tenancy.bind(regress.jws('{"alg": "none", "kid": "be-key"}', '{"tid": "be-acme", "sub": "alice", "exp": 4102444800}', 'a-secret-that-is-at-least-32-bytes-long'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT tenancy.bind(regress.jws('{"alg": "HS256"}', '{"tid": "be-acme", "sub": "alice", "exp": 4102444800}', 'a-secret-that-is-at-least-32-bytes-long'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- A repeated header parameter or claim: an issuer's parser and ours could read different ones.
SELECT tenancy.bind(regress.jws('{"alg": "HS256", "kid": "be-key", "kid": "be-384"}', '{"tid": "be-acme", "sub": "alice", "exp": 4102444800}', 'a-secret-that-is-at-least-32-bytes-long'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT tenancy.bind(regress.jws('{"alg": "HS256", "kid": "be-key"}', '{"tid": "be-acme", "tid": "be-globex", "sub": "alice", "exp": 4102444800}', 'a-secret-that-is-at-least-32-bytes-long'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT tenancy.bind(regress.jws('{"alg": "HS256", "kid": "be-key", "crit": ["exp"]}', '{"tid": "be-acme", "sub": "alice", "exp": 4102444800}', 'a-secret-that-is-at-least-32-bytes-long'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- Claims: tid, sub and exp are required; each claim has its type.
SELECT tenancy.bind(regress.jwt('{"sub": "alice", "exp": 4102444800}', 'be-key'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT tenancy.bind(regress.jwt('{"tid": "be-acme", "exp": 4102444800}', 'be-key'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT tenancy.bind(regress.jwt('{"tid": "be-acme", "sub": "alice"}', 'be-key'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT tenancy.bind(regress.jwt('{"tid": "be-acme", "sub": "alice", "exp": "tomorrow"}', 'be-key'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT tenancy.bind(regress.jwt('{"tid": "be-acme", "sub": "", "exp": 4102444800}', 'be-key'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT tenancy.bind(regress.token('be-acme', 'alice', 'be-key', '{"roles": "admin"}'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT tenancy.bind(regress.token('be-acme', 'alice', 'be-key', '{"iat": "now"}'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- The signature and the key: 28000, but for a key scoped to another tenant (42501).
SELECT tenancy.bind(regress.jwt(jsonb_build_object('tid', 'be-acme', 'sub', 'alice', 'exp', regress.exp(600)), 'be-key', 'the-wrong-secret-but-long-enough-to-pass'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- A key embedded in the header (jwk) is never trusted: the kid's registered key decides.
SELECT tenancy.bind(regress.jws(
    json_build_object('alg', 'HS256', 'kid', 'be-key',
                      'jwk', json_build_object('kty', 'oct', 'k', regress.b64url('an-attackers-secret-of-32-bytes-or-more')))::text,
    json_build_object('tid', 'be-acme', 'sub', 'alice', 'exp', regress.exp(600))::text,
    'an-attackers-secret-of-32-bytes-or-more'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- HS256 in the header, and an HS384 key under the kid.
SELECT tenancy.bind(regress.jwt(jsonb_build_object('tid', 'be-acme', 'sub', 'alice', 'exp', regress.exp(600)), 'be-384'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT tenancy.bind(regress.token('be-acme', 'alice', 'be-unknown'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT tenancy.bind(regress.token('be-acme', 'alice', 'be-revoked'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT pg_sleep(1.2) AS wait_for_be_old_to_expire;
SELECT tenancy.bind(regress.token('be-acme', 'alice', 'be-old'));   -- past its not_after
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- A tenant-scoped key signing for another tenant: the token is genuine, and may not bind it.
SELECT tenancy.bind(regress.token('be-globex', 'alice', 'be-acme-only'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- Time: 28000.
SELECT tenancy.bind(regress.jwt(jsonb_build_object('tid', 'be-acme', 'sub', 'alice', 'exp', regress.exp(-60)), 'be-key'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT tenancy.bind(regress.token('be-acme', 'alice', 'be-key', jsonb_build_object('nbf', regress.exp(300))));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- tenancy.clock_skew (a superuser's setting, here for this role) tolerates clocks that differ.
\c - postgres
ALTER ROLE regress_be_app SET tenancy.clock_skew = 120;
\c - regress_be_app
BEGIN;
SELECT tenancy.bind(regress.jwt(jsonb_build_object('tid', 'be-acme', 'sub', 'alice', 'exp', regress.exp(-60)), 'be-key')) IS NOT NULL AS bound_within_skew;
ROLLBACK;
\c - postgres
ALTER ROLE regress_be_app RESET tenancy.clock_skew;
\c - regress_be_app

-- The tenant: unknown, suspended, decommissioned, or of another region: 42501.
SELECT tenancy.bind(regress.token('be-nobody', 'alice', 'be-key'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
\c - postgres
SELECT tenancy.suspend_tenant('be-globex', 'unpaid invoice');
\c - regress_be_app
SELECT tenancy.bind(regress.token('be-globex', 'bob', 'be-key'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
\c - postgres
SELECT tenancy.resume_tenant('be-globex');
SELECT tenancy.create_tenant('be-gone') IS NOT NULL AS created;
SELECT tenancy.decommission_tenant('be-gone', 'be-gone') IS NOT NULL AS decommissioned;
\c - regress_be_app
SELECT tenancy.bind(regress.token('be-gone', 'alice', 'be-key'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- tenancy.region is this server's region (a superuser's setting; here for this role).
\c - postgres
ALTER ROLE regress_be_app SET tenancy.region = 'us-east';
\c - regress_be_app
SELECT tenancy.bind(regress.token('be-acme', 'alice', 'be-key'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
BEGIN;
SELECT tenancy.bind(regress.token('be-globex', 'bob', 'be-key')) ->> 'slug' AS bound_to;   -- no region: anywhere
ROLLBACK;
\c - postgres
ALTER ROLE regress_be_app RESET tenancy.region;
\c - regress_be_app

-- The session: a bad scope is 22023; a second tenant in one transaction, and a session scope
-- the server turned off (tenancy.allow_session_scope, for roles behind a pooler), are 42501.
SELECT tenancy.bind(regress.token('be-acme', 'alice', 'be-key'), 'forever');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
BEGIN;
SELECT tenancy.bind(regress.token('be-acme', 'alice', 'be-key')) IS NOT NULL AS bound;
SELECT tenancy.bind(regress.token('be-globex', 'bob', 'be-key'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ROLLBACK;
\c - postgres
ALTER ROLE regress_be_app SET tenancy.allow_session_scope = off;
\c - regress_be_app
SELECT tenancy.bind(regress.token('be-acme', 'alice', 'be-key'), 'session');
\echo SQLSTATE :LAST_ERROR_SQLSTATE
\c - postgres
ALTER ROLE regress_be_app RESET tenancy.allow_session_scope;

-- The role: a role mapped to a tenant binds that tenant only; platform roles (operators, key
-- admins) bind none. Both 42501.
CREATE ROLE regress_be_mapped LOGIN NOSUPERUSER NOBYPASSRLS;
SELECT tenancy.map_role('regress_be_mapped', 'be-globex', '{viewer}');
CREATE ROLE regress_be_ops LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT tenancy_operator TO regress_be_ops;
\c - regress_be_mapped
SELECT tenancy.bind(regress.token('be-acme', 'alice', 'be-key'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
\c - regress_be_ops
SELECT tenancy.bind(regress.token('be-acme', 'alice', 'be-key'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- Revoked tokens (tenancy.revoke_token, tenancy.revoke_subject: 12_revocation): 28000.
\c - postgres
SELECT tenancy.revoke_token('be-leaked');
SELECT tenancy.revoke_subject('be-acme', 'mallory');
\c - regress_be_app
SELECT tenancy.bind(regress.token('be-acme', 'alice', 'be-key', '{"jti": "be-leaked"}'));
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT tenancy.bind(regress.token('be-acme', 'mallory', 'be-key', jsonb_build_object('iat', regress.exp(-60))));
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- A binding that stops holding ends at the next statement: its token expired (28000), or its
-- tenant was suspended (42501).
SELECT tenancy.bind(regress.jwt(jsonb_build_object('tid', 'be-acme', 'sub', 'alice', 'exp', regress.exp(2)), 'be-key'), 'session') IS NOT NULL AS bound;
SELECT pg_sleep(3);
SELECT tenancy.current_tenant();
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT tenancy.binding() IS NULL AS unbound;
-- (Shown in one session as the superuser, who may both bind and suspend.)
\c - postgres
SELECT tenancy.bind(regress.token('be-globex', 'bob', 'be-key'), 'session') IS NOT NULL AS bound;
SELECT tenancy.suspend_tenant('be-globex');
SELECT tenancy.current_tenant();
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT tenancy.binding() IS NULL AS unbound;
SELECT tenancy.resume_tenant('be-globex');

DROP ROLE regress_be_app, regress_be_ops;
SELECT tenancy.unmap_role('regress_be_mapped', 'be-globex');
DROP ROLE regress_be_mapped;
