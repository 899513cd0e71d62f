-- pg_tenancy bootstrap: roles, catalog tables and their privileges.
-- Runs before any generated function is created. Everything lives in the schema `tenancy`
-- (created by CREATE EXTENSION from the control file). The tables are owned by the role that
-- ran CREATE EXTENSION; no other role gets any privilege on them: every read and write goes
-- through the extension's functions, which check the caller first.

DO $bootstrap$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'tenancy_operator') THEN
        CREATE ROLE tenancy_operator NOLOGIN NOINHERIT;
    END IF;
    -- Registers and revokes signing keys; not granted to operators (separation of duties: a
    -- role that registers keys can mint tokens for any subject).
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'tenancy_key_admin') THEN
        CREATE ROLE tenancy_key_admin NOLOGIN NOINHERIT;
    END IF;
END
$bootstrap$;

COMMENT ON SCHEMA tenancy IS 'pg_tenancy: tenant isolation enforced by the database';

-- Tenants. The id is what protected tables store; the slug is what people type. The nil uuid
-- is no tenant's: it stands for the platform in the audit trail.
CREATE TABLE tenancy.tenant (
    id                uuid        PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid()
                                  CHECK (id <> '00000000-0000-0000-0000-000000000000'),
    slug              text        NOT NULL UNIQUE
                                  CHECK (slug ~ '^[a-z][a-z0-9_-]{1,62}$'),
    name              text,
    status            text        NOT NULL DEFAULT 'active'
                                  CHECK (status IN ('active', 'suspended', 'decommissioned')),
    region            text,
    settings          jsonb       NOT NULL DEFAULT '{}'
                                  CHECK (pg_catalog.jsonb_typeof(settings) = 'object'),
    -- Ceilings an operator sets on the tenant's resource settings (statement_timeout,
    -- lock_timeout, work_mem): the tenant's admin cannot raise them (src/lifecycle/limits.rs).
    limits            jsonb       NOT NULL DEFAULT '{}'
                                  CHECK (pg_catalog.jsonb_typeof(limits) = 'object'),
    created_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    status_reason     text,
    status_changed_at timestamptz,
    -- When the tenant got its first admin (a member, a mapped role or default_roles with the
    -- admin role). Never cleared: from then on operators cannot widen access inside the
    -- tenant, also not after removing its admins (src/authz.rs, require_may_widen).
    admin_seated_at   timestamptz
);

-- Verification keys. key_material is secret for HMAC keys: nobody but the owner reads it.
CREATE TABLE tenancy.signing_key (
    kid          text        PRIMARY KEY CHECK (kid <> '' AND pg_catalog.length(kid) <= 200),
    alg          text        NOT NULL
                             CHECK (alg IN ('HS256', 'HS384', 'HS512', 'EdDSA', 'ES256', 'RS256')),
    key_material text        NOT NULL,
    tenant_id    uuid        REFERENCES tenancy.tenant (id),
    not_after    timestamptz,
    revoked_at   timestamptz,
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by   name        NOT NULL DEFAULT CURRENT_USER
);

-- Tenant-scoped roles (admin, member, viewer are seeded for every tenant).
CREATE TABLE tenancy.tenant_role (
    tenant_id  uuid NOT NULL REFERENCES tenancy.tenant (id),
    role       text NOT NULL CHECK (role ~ '^[a-z][a-z0-9_-]{0,62}$'),
    builtin    boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (tenant_id, role)
);

-- End-user memberships: subject (the token's `sub`) has role in tenant.
CREATE TABLE tenancy.member (
    tenant_id  uuid NOT NULL,
    subject    text NOT NULL CHECK (subject <> ''),
    role       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (tenant_id, subject, role),
    FOREIGN KEY (tenant_id, role) REFERENCES tenancy.tenant_role (tenant_id, role)
);

-- Database roles mapped to tenants.
CREATE TABLE tenancy.role_mapping (
    role         regrole NOT NULL,
    tenant_id    uuid    NOT NULL REFERENCES tenancy.tenant (id),
    tenant_roles text[]  NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (role, tenant_id)
);

REVOKE ALL ON ALL TABLES IN SCHEMA tenancy FROM PUBLIC;
GRANT USAGE ON SCHEMA tenancy TO PUBLIC;

-- pg_dump keeps the contents of these tables (tenants, keys, roles, members, mappings).
SELECT pg_catalog.pg_extension_config_dump('tenancy.tenant', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.signing_key', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.tenant_role', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.member', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.role_mapping', '');

-- The audit trail. Management actions are ADMIN entries; changes to protected tables are
-- INSERT/UPDATE/DELETE/TRUNCATE entries. Rows are written only by pg_tenancy, which computes
-- row_hash (HMAC-SHA-256 of the whole record's text, id included, src/audit/writer.rs record_text,
-- under the tenant's key in tenancy.audit_key) as it writes them; the per-tenant chain covering them lives in tenancy.audit_chain and is appended when
-- the writing transaction commits. Records of the platform (management actions that concern no
-- tenant) have the nil uuid as tenant_id, as their chain does.
--
-- The key is (tenant_id, id) and it is the table's only index: every read of the trail (a tenant's
-- records, verification, purge) names the tenant, a single index costs each record one index
-- insertion instead of two, and a table distributed by its tenant column (Citus) needs that column
-- in its unique keys and never NULL.
CREATE SEQUENCE tenancy.audit_log_id_seq;
CREATE TABLE tenancy.audit_log (
    id               bigint      NOT NULL DEFAULT pg_catalog.nextval('tenancy.audit_log_id_seq'),
    tenant_id        uuid        NOT NULL,
    occurred_at      timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    txid             bigint      NOT NULL DEFAULT pg_catalog.txid_current(),
    table_name       text,
    op               text        NOT NULL
                                 CHECK (op IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'ADMIN')),
    row_key          jsonb,
    old_row          jsonb,
    new_row          jsonb,
    db_role          text        NOT NULL,
    subject          text,
    application_name text,
    client_addr      inet,
    row_hash         bytea,
    PRIMARY KEY (tenant_id, id)
);
ALTER SEQUENCE tenancy.audit_log_id_seq OWNED BY tenancy.audit_log.id;

-- The per-tenant hash chains: one entry per committing transaction and tenant, covering its
-- records in id order. A tenant has up to 17 chains ("lanes", 0-16): a committing transaction
-- links into the first of lanes 0-15 no other committer of the tenant holds, so concurrent
-- writers of one tenant do not queue behind each other's commits; a transaction that links
-- more than 32 tenants (a backfill) takes one lock for all of them and links into lane 16 of
-- each. Each lane is a chain of its own:
--   batch_hash = sha256(id_1 || row_hash_1 || id_2 || row_hash_2 ...)   (ids as 8-byte big-endian)
--   chain_hash = sha256(prev_hash || seq || batch_hash)                  (seq as 8-byte big-endian)
-- A lane's first entry has seq 1 and a prev_hash of 32 zero bytes. Platform entries (no
-- tenant) form the chains of the nil uuid.
CREATE TABLE tenancy.audit_chain (
    tenant_id  uuid     NOT NULL,
    lane       smallint NOT NULL CHECK (lane BETWEEN 0 AND 16),
    seq        bigint   NOT NULL,
    record_ids bigint[] NOT NULL,
    batch_hash bytea    NOT NULL,
    prev_hash  bytea    NOT NULL,
    chain_hash bytea    NOT NULL,
    PRIMARY KEY (tenant_id, lane, seq)
);
-- A bulk statement's entry lists thousands of ids: lz4 compresses them several times faster
-- than the default pglz (where the server was built with lz4).
DO $$
BEGIN
    ALTER TABLE tenancy.audit_chain ALTER COLUMN record_ids SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;
END
$$;

-- Where a purged prefix of a lane ended: verification resumes from here.
CREATE TABLE tenancy.audit_checkpoint (
    tenant_id      uuid        NOT NULL,
    lane           smallint    NOT NULL,
    seq            bigint      NOT NULL,
    chain_hash     bytea       NOT NULL,
    last_record_id bigint      NOT NULL,
    -- When the newest purged record was written (what audit_heads reports for the lane).
    last_record_at timestamptz,
    purged_records bigint      NOT NULL,
    purged_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    purged_by      name        NOT NULL DEFAULT SESSION_USER,
    PRIMARY KEY (tenant_id, lane)
);
REVOKE ALL ON tenancy.audit_log, tenancy.audit_chain, tenancy.audit_checkpoint FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('tenancy.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.audit_log_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.audit_chain', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.audit_checkpoint', '');

-- Per-tenant role privileges on protected tables (relid NULL: every protected table, present
-- and future). Seeded for admin and member (all four) and viewer (select).
CREATE TABLE tenancy.role_privilege (
    tenant_id uuid     NOT NULL,
    role      text     NOT NULL,
    relid     regclass,
    privilege text     NOT NULL CHECK (privilege IN ('select', 'insert', 'update', 'delete')),
    UNIQUE NULLS NOT DISTINCT (tenant_id, role, relid, privilege),
    FOREIGN KEY (tenant_id, role) REFERENCES tenancy.tenant_role (tenant_id, role) ON DELETE CASCADE
);

-- Tables protected by tenancy.protect(), with the digest of what was generated.
CREATE TABLE tenancy.protected_table (
    relid         regclass    PRIMARY KEY,
    tenant_column name        NOT NULL,
    audited       boolean     NOT NULL,
    policy_digest text        NOT NULL,
    parent        regclass,
    protected_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    protected_by  name        NOT NULL DEFAULT SESSION_USER
);

-- Schemas whose future tables are protected when created (tenancy.auto_protect()).
CREATE TABLE tenancy.auto_protect_schema (
    schema_name   name        PRIMARY KEY,
    tenant_column name        NOT NULL,
    enabled_at    timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- On Citus, each protected Citus table's name and the signature of its row security, for the
-- guard on every node (a reference table there; empty elsewhere): src/citus/guard.rs.
CREATE TABLE tenancy.citus_protection (
    relation          text PRIMARY KEY,
    coordinator_relid oid  NOT NULL UNIQUE,
    signature         text NOT NULL
);
REVOKE ALL ON tenancy.citus_protection FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('tenancy.citus_protection', '');

-- On Citus, the columns a tenant keeps out of its records of a protected Citus table
-- (tenancy.audit_exclude), by the table's oid on the coordinator: a reference table there,
-- read by every node's audit triggers through tenancy.citus_protection (src/citus/trail.rs).
CREATE TABLE tenancy.citus_audit_exclusion (
    tenant_id         uuid        NOT NULL,
    coordinator_relid oid         NOT NULL,
    columns           text[]      NOT NULL,
    set_at            timestamptz NOT NULL DEFAULT pg_catalog.now(),
    set_by            name        NOT NULL DEFAULT SESSION_USER,
    PRIMARY KEY (tenant_id, coordinator_relid)
);
REVOKE ALL ON tenancy.citus_audit_exclusion FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('tenancy.citus_audit_exclusion', '');

REVOKE ALL ON tenancy.role_privilege, tenancy.protected_table, tenancy.auto_protect_schema FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('tenancy.role_privilege', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.protected_table', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.auto_protect_schema', '');

-- A support grant's privileges: one to four of the four. The check is a function of pg_tenancy's
-- schema: on Citus, the table's copies on other nodes are created from the constraint as
-- PostgreSQL prints it, pg_catalog's functions and operators unqualified, by the superuser with
-- the node's default search_path, where pg_catalog's polymorphic <@ and cardinality lost to a
-- role's own exact-typed ones in public, fixed into that copy's constraint and run as the
-- catalog's owner at every grant (an attacker's pass). A function of pg_tenancy's schema is
-- printed qualified, and runs with the search_path pinned.
CREATE FUNCTION tenancy._support_privileges_valid(privileges text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT privileges OPERATOR(pg_catalog.<@) '{select,insert,update,delete}'::text[]
             AND pg_catalog.cardinality(privileges) OPERATOR(pg_catalog.>) 0 $$;
REVOKE EXECUTE ON FUNCTION tenancy._support_privileges_valid(text[]) FROM PUBLIC;

-- Time-limited support access granted by a tenant admin to a platform operator.
CREATE TABLE tenancy.support_grant (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  uuid        NOT NULL REFERENCES tenancy.tenant (id),
    operator   regrole     NOT NULL,
    privileges text[]      NOT NULL
               CONSTRAINT support_grant_privileges_check CHECK (tenancy._support_privileges_valid(privileges)),
    granted_by text,
    granted_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz
);
-- The lookup of an operator's grant in a tenant (catalog::support_grant): without it, every
-- lookup read every tenant's grants (an attacker's pass made 45,000 of one tenant: 10 ms each).
CREATE INDEX ON tenancy.support_grant (tenant_id, operator);
REVOKE ALL ON tenancy.support_grant FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('tenancy.support_grant', '');

-- Kill switches. A subject's tokens issued before issued_before are refused
-- (tenancy.revoke_subject); a token is refused by its jti (tenancy.revoke_token), in one tenant
-- (tenant_id) or, when an operator revoked it, in every tenant (tenant_id NULL).
CREATE TABLE tenancy.subject_revocation (
    tenant_id     uuid        NOT NULL REFERENCES tenancy.tenant (id),
    subject       text        NOT NULL CHECK (subject <> ''),
    issued_before timestamptz NOT NULL,
    revoked_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    revoked_by    text        NOT NULL,
    PRIMARY KEY (tenant_id, subject)
);
CREATE TABLE tenancy.token_revocation (
    jti        text        NOT NULL CHECK (jti <> ''),
    tenant_id  uuid        REFERENCES tenancy.tenant (id),
    revoked_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    revoked_by text        NOT NULL,
    UNIQUE NULLS NOT DISTINCT (jti, tenant_id)
);
CREATE INDEX ON tenancy.token_revocation (tenant_id);
-- Neither has a primary key (a relid or a tenant NULL is a value of the key): Citus copies a
-- reference table to a node being added by logical replication, which needs a replica
-- identity; adding a node failed on these (an attacker's pass).
ALTER TABLE tenancy.role_privilege REPLICA IDENTITY FULL;
ALTER TABLE tenancy.token_revocation REPLICA IDENTITY FULL;
REVOKE ALL ON tenancy.subject_revocation, tenancy.token_revocation FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('tenancy.subject_revocation', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.token_revocation', '');

-- The per-tenant secrets that key the audit trail's record hashes (HMAC-SHA-256), so that a
-- row_hash never confirms a guessed row. Created with a tenant (the platform's, for the nil
-- uuid, on first use); readable by this table's owner only: no operator, key admin or tenant.
-- Columns a tenant's admin keeps out of its own audit records (old_row / new_row) of a table
-- and its partitions: the tenant's decision, recorded in its own chain. Never the tenant
-- column or the key's columns.
CREATE TABLE tenancy.audit_exclusion (
    tenant_id uuid        NOT NULL,
    relid     regclass    NOT NULL,
    columns   text[]      NOT NULL,
    set_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    set_by    text        NOT NULL,
    PRIMARY KEY (tenant_id, relid)
);
REVOKE ALL ON tenancy.audit_exclusion FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('tenancy.audit_exclusion', '');

-- The platform's Ed25519 key that signs deletion certificates (src/lifecycle/certificate.rs): the secret
-- is read by the catalog's owner alone; tenancy.certificate_keys shows the public halves.
CREATE TABLE tenancy.certificate_key (
    key_id     text        PRIMARY KEY,
    secret     bytea       NOT NULL,
    public_key bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
REVOKE ALL ON tenancy.certificate_key FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('tenancy.certificate_key', '');

CREATE TABLE tenancy.audit_key (
    tenant_id  uuid        PRIMARY KEY,
    secret     bytea       NOT NULL CHECK (pg_catalog.length(secret) = 32),
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
REVOKE ALL ON tenancy.audit_key FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('tenancy.audit_key', '');

-- Security events, persisted from shared memory by pg_tenancy's background workers when the
-- library is preloaded (src/events.rs): refused binds, cross-tenant writes, guard refusals,
-- refused privileges, revoked bindings, floods. Append-only; operators read it (metadata: no
-- row content is ever in an event).
CREATE TABLE tenancy.security_event_log (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at timestamptz NOT NULL,
    logged_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    event       text        NOT NULL,
    tenant_id   uuid,
    detail      jsonb       NOT NULL
);
CREATE INDEX ON tenancy.security_event_log (tenant_id, occurred_at);
REVOKE ALL ON tenancy.security_event_log FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('tenancy.security_event_log', '');
