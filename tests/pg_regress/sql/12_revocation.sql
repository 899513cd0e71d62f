-- Revocation, the kill switches: tenancy.revoke_subject(tenant, subject [, issued_before])
-- refuses every token of a subject issued before that instant (default: now; a token without
-- iat counts as issued before), whatever its memberships; tenancy.revoke_token(jti) refuses
-- one token until it expires, in the revoking admin's tenant, or in every tenant when an
-- operator revokes it. Both are for the tenant's admins and operators, audited, and listed in
-- tenancy.revocations; they reach a live binding at its next statement, as does removing a
-- subject's last membership.
\getenv abs_srcdir PG_ABS_SRCDIR
\set ECHO none
\i :abs_srcdir/helpers/setup.sql
\set ECHO all
\set VERBOSITY default

SELECT tenancy.create_tenant('rev-initech') IS NOT NULL AS created;
SELECT tenancy.create_tenant('rev-globex', settings => '{"default_roles": ["member"]}') IS NOT NULL AS created;
SELECT tenancy.add_key('rev-key', 'HS256', 'a-secret-that-is-at-least-32-bytes-long');
SELECT tenancy.add_member('rev-initech', 'peter', 'admin');
CREATE ROLE regress_rev_ops LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT tenancy_operator TO regress_rev_ops;
CREATE ROLE regress_rev_web LOGIN NOSUPERUSER NOBYPASSRLS;
CREATE SCHEMA rev;
CREATE TABLE rev.notes (tenant_id uuid NOT NULL, id int NOT NULL, body text, PRIMARY KEY (tenant_id, id));
SELECT tenancy.protect('rev.notes');
GRANT USAGE ON SCHEMA rev TO regress_rev_web;
GRANT SELECT, INSERT ON rev.notes TO regress_rev_web;

\c - regress_rev_web
BEGIN;
SELECT tenancy.bind(regress.token('rev-initech', 'peter', 'rev-key')) ->> 'roles' AS roles;
SELECT tenancy.add_member('rev-initech', 'milton', 'member');
SELECT tenancy.add_member('rev-initech', 'samir', 'viewer');
COMMIT;

-- The tenant's admin pulls both switches: every token of milton issued until now, and the
-- token with jti 'leaked-jti' (in this tenant).
BEGIN;
SELECT tenancy.bind(regress.token('rev-initech', 'peter', 'rev-key')) IS NOT NULL AS bound;
SELECT tenancy.revoke_subject('rev-initech', 'milton');
SELECT tenancy.revoke_token('leaked-jti');
SELECT kind, subject, jti, revoked_by, issued_before = revoked_at AS issued_before_is_now
  FROM tenancy.revocations ORDER BY kind;
COMMIT;
SELECT tenancy.bind(regress.token('rev-initech', 'milton', 'rev-key', jsonb_build_object('iat', regress.exp(-60))));
SELECT tenancy.bind(regress.token('rev-initech', 'milton', 'rev-key'));   -- no iat: issued before
SELECT tenancy.bind(regress.token('rev-initech', 'samir', 'rev-key', '{"jti": "leaked-jti"}'));
-- A token issued after the revocation binds (iat counts whole seconds, and may not lie in
-- the future: a second or two later).
SELECT pg_sleep(2.1);
BEGIN;
SELECT tenancy.bind(regress.token('rev-initech', 'milton', 'rev-key', jsonb_build_object('iat', regress.exp(-1)))) ->> 'subject' AS subject;
ROLLBACK;
-- The admin's token revocation is its tenant's: the same jti binds another tenant.
BEGIN;
SELECT tenancy.bind(regress.token('rev-globex', 'gina', 'rev-key', '{"jti": "leaked-jti"}')) ->> 'slug' AS slug;
ROLLBACK;

-- issued_before can be any instant: tokens issued after it still bind.
BEGIN;
SELECT tenancy.bind(regress.token('rev-initech', 'peter', 'rev-key')) IS NOT NULL AS bound;
SELECT tenancy.revoke_subject('rev-initech', 'samir', now() - interval '1 hour');
COMMIT;
SELECT tenancy.bind(regress.token('rev-initech', 'samir', 'rev-key', jsonb_build_object('iat', regress.exp(-7200))));
BEGIN;
SELECT tenancy.bind(regress.token('rev-initech', 'samir', 'rev-key', jsonb_build_object('iat', regress.exp(-60)))) ->> 'subject' AS subject;
ROLLBACK;

-- Not for anyone else: an unbound application session, a member, an admin of another tenant.
SELECT tenancy.revoke_token('another-jti');
SELECT tenancy.revoke_subject('rev-initech', 'samir');
SELECT pg_sleep(2.1);
BEGIN;
SELECT tenancy.bind(regress.token('rev-initech', 'samir', 'rev-key', jsonb_build_object('iat', regress.exp(-1)))) IS NOT NULL AS bound;
SELECT tenancy.revoke_subject('rev-initech', 'peter');
ROLLBACK;

-- Operators narrow anywhere: a subject of a tenant that has an admin, and a jti in every
-- tenant.
\c - regress_rev_ops
SELECT tenancy.revoke_subject('rev-initech', 'bill');
SELECT tenancy.revoke_token('stolen-jti');
-- A revocation of NULL (a jti the application failed to read) is refused, never answered NULL
-- as if it had been made.
SELECT tenancy.revoke_token(NULL);
SELECT tenancy.remove_member('rev-initech', NULL, 'member');
SELECT tenancy.drop_role(NULL, 'member');
SELECT tenancy.unmap_role(NULL, 'rev-initech');
SELECT t.slug, r.kind, r.subject, r.jti, r.revoked_by
  FROM tenancy.revocations r LEFT JOIN tenancy.tenants t ON t.id = r.tenant_id
 WHERE r.jti IN ('leaked-jti', 'stolen-jti') OR t.slug LIKE 'rev-%' ORDER BY r.kind, r.subject, r.jti;
\c - regress_rev_web
SELECT tenancy.bind(regress.token('rev-globex', 'gina', 'rev-key', '{"jti": "stolen-jti"}'));
SELECT tenancy.bind(regress.token('rev-initech', 'bill', 'rev-key'));

-- A live binding is cut at its next statement. Shown in one session: a tenant admin, bound for
-- the session, removes its own membership (and then revokes its own tokens).
BEGIN;
SELECT tenancy.bind(regress.token('rev-initech', 'peter', 'rev-key')) IS NOT NULL AS bound;
SELECT tenancy.add_member('rev-initech', 'pat', 'admin');
SELECT tenancy.add_member('rev-initech', 'pat', 'member');
COMMIT;
SELECT tenancy.bind(regress.token('rev-initech', 'pat', 'rev-key'), 'session') ->> 'roles' AS roles;
SELECT count(*) AS notes FROM rev.notes;
SELECT tenancy.remove_member('rev-initech', 'pat', 'member');
SELECT count(*) AS notes FROM rev.notes;                  -- still an admin: admins may read
SELECT tenancy.remove_member('rev-initech', 'pat', 'admin');
SELECT count(*) AS notes FROM rev.notes;                  -- no membership left: cut
SELECT tenancy.binding() IS NULL AS unbound;
BEGIN;
SELECT tenancy.bind(regress.token('rev-initech', 'peter', 'rev-key'), 'session') IS NOT NULL AS bound;
COMMIT;
SELECT tenancy.revoke_subject('rev-initech', 'peter');
SELECT count(*) AS notes FROM rev.notes;
SELECT tenancy.binding() IS NULL AS unbound;

\c - postgres
-- Every revocation is in its tenant's trail; an operator's jti, for every tenant, in the
-- platform's.
SELECT coalesce(t.slug, 'platform') AS trail, a.new_row->>'action' AS action, a.db_role, a.subject,
       coalesce(a.new_row->>'subject', a.new_row->>'jti') AS target
  FROM tenancy.audit_log a LEFT JOIN tenancy.tenants t ON t.id = a.tenant_id
 WHERE a.new_row->>'action' IN ('revoke_subject', 'revoke_token', 'remove_member')
   AND (t.slug LIKE 'rev-%' OR a.new_row->>'jti' IN ('leaked-jti', 'stolen-jti'))
 ORDER BY a.id;

DROP SCHEMA rev CASCADE;
DROP ROLE regress_rev_ops, regress_rev_web;
