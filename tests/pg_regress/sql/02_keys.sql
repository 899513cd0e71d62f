-- Signing keys: tokens are verified against keys that members of tenancy_key_admin register
-- (and no one else: not operators, not application roles, not a role that is both operator
-- and key admin). Each algorithm's key format is checked, and weak keys are refused: HMAC
-- secrets under 32 bytes in any form, RSA keys under 2048 bits. A key can be scoped to one
-- tenant and given an expiry; it is revoked, never deleted, and its kid never reused. Key
-- material is never shown.
\getenv abs_srcdir PG_ABS_SRCDIR
\set ECHO none
\i :abs_srcdir/helpers/setup.sql
\set ECHO all
\set VERBOSITY default

SELECT tenancy.create_tenant('keys-acme') IS NOT NULL AS created;
SELECT tenancy.create_tenant('keys-globex') IS NOT NULL AS created;
CREATE ROLE regress_keys_admin LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT tenancy_key_admin TO regress_keys_admin;
CREATE ROLE regress_keys_ops LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT tenancy_operator TO regress_keys_ops;
CREATE ROLE regress_keys_both LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT tenancy_operator, tenancy_key_admin TO regress_keys_both;
CREATE ROLE regress_keys_app LOGIN NOSUPERUSER NOBYPASSRLS;

\c - regress_keys_admin
-- add_key(kid, alg, key [, tenant [, not_after]]). HMAC: a secret of at least 32 bytes, raw,
-- as 'base64:' and its base64, or as an oct JWK.
SELECT tenancy.add_key('keys-hs256', 'HS256', 'a-secret-that-is-at-least-32-bytes-long');
SELECT tenancy.add_key('keys-hs384', 'HS384', 'base64:' || encode(convert_to(repeat('k', 48), 'UTF8'), 'base64'));
SELECT tenancy.add_key('keys-hs512', 'HS512',
    json_build_object('kty', 'oct', 'k', regress.b64url(convert_to(repeat('s', 64), 'UTF8')))::text);
-- Asymmetric algorithms: the issuer's public key, in PEM form (or a JWK).
SELECT tenancy.add_key('keys-rs256', 'RS256', '-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAkHXf9b96wZj25PCUkJw4
4ob9MwXNEwi9SybdsDu32S3IR86+0c1M1r8wkMaC/7aXJbPnTe6GvRnD+8nsKoMR
NTSib5cWN7R30Ssl5ijZhnhUyp8yGZKA3SxscGYsnXgD+UDI/3+C76xBQiYJ1flu
0L5IMbEONUNWN92hlspCfgtF4q+sP3XYPpzENmvACwbYeHnd/y2g2ZEuMpxOMmun
Rcd2Qv9lf3bE33TbBEasTz34srF8dr2hqtjyEaWeh2DBBIBsfyaX8A3wNfSta2FU
68r3lUW16qBXB+QdC3Bkw+mGcwsGzPAOjglWE6bAqKsoQ0+xm4bKs14RpOofq4yO
oQIDAQAB
-----END PUBLIC KEY-----');
SELECT tenancy.add_key('keys-es256', 'ES256', '-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqljoCstVjudnOB80k0ng6uuNAXf0
YhIgtrUG7IbGzqaitYu9qosG2SXDNMlhdfx/fBMt4ycs0fe6/LVz/0gjrw==
-----END PUBLIC KEY-----');
SELECT tenancy.add_key('keys-eddsa', 'EdDSA', '-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAyACcLAXCrckpJDIxhRaxwfEmLG0irNXwxmfrNCdB1jA=
-----END PUBLIC KEY-----');
-- Scoped to one tenant, and valid until a date.
SELECT tenancy.add_key('keys-acme-only', 'HS256', 'a-secret-that-is-at-least-32-bytes-long', 'keys-acme', '2999-01-01');

-- Weak keys are refused in every form: a short secret raw, in base64 or in a JWK (empty, too),
-- and an RSA key of 512 bits.
SELECT tenancy.add_key('keys-weak-1', 'HS256', 'too-short');
SELECT tenancy.add_key('keys-weak-2', 'HS256', 'base64:c2hvcnQ=');
SELECT tenancy.add_key('keys-weak-3', 'HS256', '{"kty": "oct", "k": "c2hvcnQ"}');
SELECT tenancy.add_key('keys-weak-4', 'HS256', '{"kty": "oct", "k": ""}');
SELECT tenancy.add_key('keys-weak-5', 'RS256', '-----BEGIN PUBLIC KEY-----
MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAKbgMan/80CescgV/Nld55mCyaMONPBj
01QV7/052bhoKECPHSzET0ZUmfpXUjdx3W8ummVaouubsKon3wH/OskCAwEAAQ==
-----END PUBLIC KEY-----');
-- Malformed: not a PEM, an HMAC secret given for an asymmetric algorithm, an algorithm that is
-- not supported (none included), an empty or overlong kid, a kid in use, an unknown tenant.
SELECT tenancy.add_key('keys-bad-1', 'RS256', 'not a pem');
SELECT tenancy.add_key('keys-bad-2', 'EdDSA', 'a-secret-that-is-at-least-32-bytes-long');
SELECT tenancy.add_key('keys-bad-3', 'none', 'whatever-whatever-whatever-whatever');
SELECT tenancy.add_key('keys-bad-4', 'HS1', 'a-secret-that-is-at-least-32-bytes-long');
SELECT tenancy.add_key('', 'HS256', 'a-secret-that-is-at-least-32-bytes-long');
SELECT tenancy.add_key(repeat('k', 201), 'HS256', 'a-secret-that-is-at-least-32-bytes-long');
SELECT tenancy.add_key('keys-hs256', 'HS256', 'another-secret-that-is-at-least-32-bytes');
SELECT tenancy.add_key('keys-bad-5', 'HS256', 'a-secret-that-is-at-least-32-bytes-long', 'keys-nobody');

-- tenancy.keys lists the keys' metadata, never their material; the table that holds it is the
-- extension owner's alone.
SELECT kid, alg, tenant_id IS NOT NULL AS tenant_scoped, not_after, revoked_at IS NOT NULL AS revoked, created_by
  FROM tenancy.keys WHERE kid LIKE 'keys-%' ORDER BY kid;
SELECT count(*) AS material_columns FROM information_schema.columns
 WHERE table_schema = 'tenancy' AND table_name = 'keys' AND column_name LIKE '%material%';
SELECT * FROM tenancy.signing_key;

-- A key works until it is revoked.
SELECT tenancy.revoke_key('keys-hs384');
SELECT tenancy.revoke_key('keys-no-such-key');
SELECT kid, revoked_at IS NOT NULL AS revoked FROM tenancy.keys WHERE kid LIKE 'keys-hs%' ORDER BY kid;
-- A revoked kid is not registered again.
SELECT tenancy.add_key('keys-hs384', 'HS384', 'base64:' || encode(convert_to(repeat('n', 48), 'UTF8'), 'base64'));

\c - regress_keys_app
BEGIN;
SELECT tenancy.bind(regress.token('keys-acme', 'alice', 'keys-hs256')) ->> 'slug' AS bound_to;
ROLLBACK;
\c - postgres
SELECT tenancy.revoke_key('keys-hs256');
\c - regress_keys_app
SELECT tenancy.bind(regress.token('keys-acme', 'alice', 'keys-hs256'));
-- A tenant-scoped key binds its own tenant only.
BEGIN;
SELECT tenancy.bind(regress.token('keys-acme', 'alice', 'keys-acme-only')) ->> 'slug' AS bound_to;
ROLLBACK;
SELECT tenancy.bind(regress.token('keys-globex', 'alice', 'keys-acme-only'));

-- Separation of duties: operators manage tenants, not keys; a role that is both may act as
-- neither; application roles may do neither, nor read the keys.
\c - regress_keys_ops
SELECT tenancy.add_key('keys-by-ops', 'HS256', 'a-secret-that-is-at-least-32-bytes-long');
SELECT tenancy.revoke_key('keys-rs256');
SELECT count(*) > 0 AS operators_read_key_metadata FROM tenancy.keys WHERE kid LIKE 'keys-%';
\c - regress_keys_both
SELECT tenancy.add_key('keys-by-both', 'HS256', 'a-secret-that-is-at-least-32-bytes-long');
SELECT tenancy.create_tenant('keys-by-both');
\c - regress_keys_app
SELECT tenancy.add_key('keys-by-app', 'HS256', 'a-secret-that-is-at-least-32-bytes-long');
SELECT tenancy.revoke_key('keys-rs256');
SELECT kid FROM tenancy.keys;

-- Registering and revoking are audited: a key scoped to a tenant in that tenant's chain, the
-- others under the nil uuid (the platform's).
\c - postgres
SELECT a.tenant_id = '00000000-0000-0000-0000-000000000000' AS platform, t.slug,
       a.new_row->>'action' AS action, a.new_row->>'kid' AS kid, a.new_row->>'alg' AS alg, a.db_role
  FROM tenancy.audit_log a LEFT JOIN tenancy.tenants t ON t.id = a.tenant_id
 WHERE a.new_row->>'kid' LIKE 'keys-%' ORDER BY a.id;

DROP ROLE regress_keys_admin, regress_keys_ops, regress_keys_both, regress_keys_app;
