-- Included by every file of tests/pg_regress (silently: \set ECHO none) so that each file runs
-- alone or in any order: the extension, pgcrypto, and functions that sign tokens as an
-- application's token issuer would. Idempotent; nothing here prints anything.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_tenancy;
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE SCHEMA IF NOT EXISTS regress;
GRANT USAGE ON SCHEMA regress TO PUBLIC;
RESET client_min_messages;

-- base64url without padding, as JWS segments are encoded.
CREATE OR REPLACE FUNCTION regress.b64url(bytea) RETURNS text LANGUAGE sql IMMUTABLE AS
$$ SELECT translate(rtrim(encode($1, 'base64'), '='), E'+/\n', '-_') $$;

-- A compact JWS from a header and claims given as JSON text (text, not jsonb, so that a test
-- can repeat a member), signed with HMAC: sha256, sha384 or sha512 for HS256, HS384, HS512.
CREATE OR REPLACE FUNCTION regress.jws(header text, claims text, secret text, hash text DEFAULT 'sha256')
RETURNS text LANGUAGE sql AS $$
    SELECT h || '.' || p || '.' || regress.b64url(public.hmac(h || '.' || p, secret, hash))
      FROM (SELECT regress.b64url(convert_to(header, 'UTF8')) AS h,
                   regress.b64url(convert_to(claims, 'UTF8')) AS p) s
$$;

-- An HS256 token with these claims, signed with key kid.
CREATE OR REPLACE FUNCTION regress.jwt(claims jsonb, kid text,
                                       secret text DEFAULT 'a-secret-that-is-at-least-32-bytes-long')
RETURNS text LANGUAGE sql AS $$
    SELECT regress.jws(json_build_object('alg', 'HS256', 'typ', 'JWT', 'kid', kid)::text, claims::text, secret)
$$;

-- Unix time, seconds from now.
CREATE OR REPLACE FUNCTION regress.exp(seconds int) RETURNS bigint LANGUAGE sql AS
$$ SELECT extract(epoch FROM now())::bigint + seconds $$;

-- The usual token: tenant tid, subject sub, valid for ten minutes, signed with key kid;
-- extra claims are added (or replace these).
CREATE OR REPLACE FUNCTION regress.token(tid text, sub text, kid text, extra jsonb DEFAULT '{}')
RETURNS text LANGUAGE sql AS $$
    SELECT regress.jwt(jsonb_build_object('tid', tid, 'sub', sub, 'exp', regress.exp(600)) || extra, kid)
$$;
