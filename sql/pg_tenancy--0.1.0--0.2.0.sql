-- pg_tenancy 0.1.0 -> 0.2.0 (ALTER EXTENSION pg_tenancy UPDATE TO '0.2.0').
-- Every change of the SQL surface ships here; tests/upgrade/run.sh checks that a 0.1.0
-- database updated by this script has exactly the objects of a fresh 0.2.0 install.
\echo Use "ALTER EXTENSION pg_tenancy UPDATE TO '0.2.0'" to load this file. \quit

-- Every mapped role holds USAGE on tenancy.mapped_role (src/rbac/mod.rs,
-- keep_mapping_dependencies), so that PostgreSQL refuses DROP ROLE of a mapped role where
-- pg_tenancy cannot end its mappings first. The roles mapped before this upgrade are not given
-- it here: a grant made by an extension's script is recorded as the type's initial privilege,
-- which pg_dump leaves out. verify() reports them (mapping_without_dependency), and its fix,
-- SELECT tenancy._keep_mapped_roles(), run after the upgrade, grants it.
CREATE TYPE tenancy.mapped_role AS ENUM ();
COMMENT ON TYPE tenancy.mapped_role IS
    'pg_tenancy: held by every role mapped to a tenant, so that PostgreSQL does not drop a mapped role where pg_tenancy cannot end its mappings first';

-- Neither has a primary key (a relid or a tenant NULL is a value of the key): Citus copies a
-- reference table to a node being added by logical replication, which needs a replica
-- identity; adding a node failed on these (an attacker's pass).
ALTER TABLE tenancy.role_privilege REPLICA IDENTITY FULL;
ALTER TABLE tenancy.token_revocation REPLICA IDENTITY FULL;

-- tenancy.bind: two functions instead of one with a default, so that a call with one
-- argument reads no default from the catalog (src/pg/README.md). Not STRICT: bind(NULL)
-- (a missing Authorization header) is refused with 28000 token_missing, not answered NULL.
DROP FUNCTION tenancy.bind(text, text);
CREATE FUNCTION tenancy."bind"("token" text) RETURNS jsonb
VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'bind_transaction_wrapper';
CREATE FUNCTION tenancy."bind"("token" text, "scope" text) RETURNS jsonb
VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'bind_scoped_wrapper';

-- The revocations are not STRICT: a NULL argument is refused with 22004 rather than answered
-- NULL, which a caller could not tell from a revocation made.
ALTER FUNCTION tenancy.revoke_key(text) CALLED ON NULL INPUT;
ALTER FUNCTION tenancy.revoke_token(text) CALLED ON NULL INPUT;
ALTER FUNCTION tenancy.remove_member(text, text, text) CALLED ON NULL INPUT;
ALTER FUNCTION tenancy.drop_role(text, text) CALLED ON NULL INPUT;
ALTER FUNCTION tenancy.unmap_role(regrole, text) CALLED ON NULL INPUT;
ALTER FUNCTION tenancy.revoke_support(regrole) CALLED ON NULL INPUT;

-- protect_sql reads a table's catalog as the extension owner: for whoever protects tables.
REVOKE EXECUTE ON FUNCTION tenancy.protect_sql(regclass, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenancy.protect_sql(regclass, text) TO tenancy_operator;

-- The record hash: one Rust definition for every path (_audit_record_text and _audit_hmac
-- go). Internal: with it anyone could confirm a guessed row against its hash.
CREATE FUNCTION tenancy."_audit_row_hash"("id" bigint, "tenant_id" uuid, "occurred_at" timestamp with time zone,
        "txid" bigint, "table_name" text, "op" text, "row_key" text, "old_row" text, "new_row" text,
        "db_role" text, "subject" text, "application_name" text, "client_addr" text) RETURNS bytea
STABLE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'audit_row_hash_wrapper';
REVOKE EXECUTE ON FUNCTION tenancy._audit_row_hash(bigint, uuid, timestamptz, bigint, text, text, text,
    text, text, text, text, text, text) FROM PUBLIC;
DROP FUNCTION tenancy._audit_hmac(uuid, text);
DROP FUNCTION tenancy._audit_record_text(bigint, uuid, timestamptz, bigint, text, text, jsonb, jsonb, jsonb,
    text, text, text, inet);

-- verify() locks the protected tables it reads, lists its findings in the order their fixes
-- run, and its foreign-key fixes are SQL.
-- Internal, for verify()'s fixes: the definition of foreign key con with the tenant columns
-- matched first (src_col of the referencing table to dst_col of the referenced one), its other
-- columns, MATCH type, actions and deferrability kept. ON DELETE SET NULL / SET DEFAULT name the
-- foreign key's own columns, so that a deletion never clears a row's tenant.
CREATE FUNCTION tenancy._fk_with_tenant(con oid, src_col name, dst_col name) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
SELECT format('FOREIGN KEY (%s) REFERENCES %s (%s)%s%s%s%s',
              concat_ws(', ', quote_ident(src_col), string_agg(quote_ident(a.attname), ', ' ORDER BY k.ord)),
              c.confrelid::regclass,
              concat_ws(', ', quote_ident(dst_col), string_agg(quote_ident(b.attname), ', ' ORDER BY k.ord)),
              CASE c.confmatchtype WHEN 'f' THEN ' MATCH FULL' ELSE '' END,
              CASE c.confupdtype WHEN 'r' THEN ' ON UPDATE RESTRICT' WHEN 'c' THEN ' ON UPDATE CASCADE'
                                 WHEN 'n' THEN ' ON UPDATE SET NULL' WHEN 'd' THEN ' ON UPDATE SET DEFAULT' ELSE '' END,
              CASE WHEN c.confdeltype IN ('n', 'd')
                   THEN format(' ON DELETE %s (%s)', CASE c.confdeltype WHEN 'n' THEN 'SET NULL' ELSE 'SET DEFAULT' END,
                               (SELECT string_agg(quote_ident(s.attname), ', ' ORDER BY s.attnum)
                                  FROM pg_attribute s
                                 WHERE s.attrelid = c.conrelid
                                   AND s.attnum = ANY (coalesce(c.confdelsetcols, c.conkey))
                                   AND s.attname <> src_col))
                   ELSE CASE c.confdeltype WHEN 'r' THEN ' ON DELETE RESTRICT' WHEN 'c' THEN ' ON DELETE CASCADE' ELSE '' END END,
              CASE WHEN c.condeferred THEN ' DEFERRABLE INITIALLY DEFERRED' WHEN c.condeferrable THEN ' DEFERRABLE' ELSE '' END)
  FROM pg_constraint c
  LEFT JOIN LATERAL unnest(c.conkey, c.confkey) WITH ORDINALITY AS k(src, dst, ord) ON true
  LEFT JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.src
  LEFT JOIN pg_attribute b ON b.attrelid = c.confrelid AND b.attnum = k.dst
 WHERE c.oid = con AND a.attname IS DISTINCT FROM src_col AND b.attname IS DISTINCT FROM dst_col
 GROUP BY c.oid, c.confrelid, c.confmatchtype, c.confupdtype, c.confdeltype, c.confdelsetcols, c.conkey,
          c.conrelid, c.condeferred, c.condeferrable
$$;
REVOKE EXECUTE ON FUNCTION tenancy._fk_with_tenant(oid, name, name) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenancy._fk_with_tenant(oid, name, name) TO tenancy_operator;
CREATE FUNCTION tenancy."_lock_protected_tables"() RETURNS SETOF oid
STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'lock_protected_tables_wrapper';
-- verify() on Citus: shards compared with their tables, grants that reach them (src/citus/mod.rs).
CREATE FUNCTION tenancy."_citus_findings"() RETURNS TABLE ("rule" text, "object" text, "detail" text, "fix" text)
STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'citus_findings_wrapper';
REVOKE EXECUTE ON FUNCTION tenancy._citus_findings() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenancy._citus_findings() TO tenancy_operator;
-- Internal, for verify(): the role mappings and the auto-protected schemas' tenant columns,
-- each read by a query of its own. On Citus both tables are reference tables, and Citus runs a
-- statement that reads one as its own SQL text, where pg_roles becomes pg_authid, which
-- operators may not read.
CREATE FUNCTION tenancy._role_mappings() RETURNS TABLE (role oid, tenant_id uuid)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ BEGIN RETURN QUERY SELECT m.role::oid, m.tenant_id FROM tenancy.role_mapping m; END $$;
REVOKE EXECUTE ON FUNCTION tenancy._role_mappings() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenancy._role_mappings() TO tenancy_operator;
-- Internal, for verify(): the tenants' grants on tables that are not protected (read as for
-- _role_mappings(); operators read every tenant's grants, as in tenancy.role_privileges).
GRANT SELECT ON tenancy.role_privilege TO tenancy_operator;
CREATE FUNCTION tenancy._grants_off_protection() RETURNS TABLE (tenant_id uuid, role text, relid oid, privilege text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ BEGIN RETURN QUERY SELECT g.tenant_id, g.role, g.relid::oid, g.privilege FROM tenancy.role_privilege g
  WHERE g.relid IS NOT NULL AND g.relid::oid NOT IN (SELECT p.relid::oid FROM tenancy.protected_table p); END $$;
REVOKE EXECUTE ON FUNCTION tenancy._grants_off_protection() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenancy._grants_off_protection() TO tenancy_operator;
CREATE FUNCTION tenancy._auto_protect_columns() RETURNS SETOF name
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ BEGIN RETURN QUERY SELECT s.tenant_column FROM tenancy.auto_protect_schema s; END $$;
REVOKE EXECUTE ON FUNCTION tenancy._auto_protect_columns() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenancy._auto_protect_columns() TO tenancy_operator;
-- verify()'s reading of stored expressions names them by where they are stored: the function
-- reads the node tree from the catalog itself. _leaky_call(text, ...) parsed whatever node text
-- its caller gave, and PostgreSQL's node reader trusts its input: any role crashed the server
-- with SELECT tenancy._leaky_call('{CONST', true).
DROP FUNCTION tenancy._leaky_call(text, boolean);
CREATE FUNCTION tenancy."_leaky_expr"("source" text, "objid" oid, "user_code_only" bool) RETURNS text
STRICT STABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'leaky_expr_wrapper';
CREATE OR REPLACE FUNCTION tenancy.verify()
RETURNS TABLE (severity text, rule text, object text, detail text, fix text)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
-- Its patterns and their backslashes read as written, whatever the session's setting, and
-- names print as PostgreSQL prints them by default.
SET standard_conforming_strings = on
SET quote_all_identifiers = off
-- One large query whose cross joins of roles and tables estimate high: JIT compiled its
-- thousand expressions for seconds on every call (6.7 s of 9.4 s with 200 protected tables
-- and 1,000 roles), to run each a few hundred times.
SET jit = off
AS $verify$
-- The protected tables, each locked ACCESS SHARE for the rest of the transaction first
-- (tenancy._lock_protected_tables): a table dropped or altered concurrently is then either
-- gone before verify looks, or stays as it is while verify reads its definition.
WITH prot AS MATERIALIZED (
    SELECT p.relid, p.tenant_column, p.policy_digest,
           (SELECT a.attnum FROM pg_attribute a
             WHERE a.attrelid = p.relid AND a.attname = p.tenant_column AND NOT a.attisdropped) AS tenant_attnum
      FROM tenancy.protected_table p
     WHERE p.relid::oid IN (SELECT tenancy._lock_protected_tables())
),
-- The types of the protected tables' columns and of what their expressions convert to or
-- name (pg_depend), and every type each is made of, followed once per type however many
-- tables use it (per table, 2,000 partitions of one table made verify() take seconds).
prot_types AS MATERIALIZED (
    SELECT a.attrelid AS relid, a.atttypid AS typ
      FROM prot p JOIN pg_attribute a ON a.attrelid = p.relid AND a.attnum > 0 AND NOT a.attisdropped
    UNION
    SELECT o.relid, d.refobjid
      FROM (SELECT p.relid::oid AS relid, 'pg_class'::regclass::oid AS classid, p.relid::oid AS objid FROM prot p
            UNION ALL SELECT i.indrelid, 'pg_class'::regclass, i.indexrelid FROM prot p JOIN pg_index i ON i.indrelid = p.relid
            UNION ALL SELECT x.adrelid, 'pg_attrdef'::regclass, x.oid FROM prot p JOIN pg_attrdef x ON x.adrelid = p.relid
            UNION ALL SELECT x.conrelid, 'pg_constraint'::regclass, x.oid FROM prot p JOIN pg_constraint x ON x.conrelid = p.relid
            UNION ALL SELECT x.tgrelid, 'pg_trigger'::regclass, x.oid FROM prot p JOIN pg_trigger x ON x.tgrelid = p.relid
            UNION ALL SELECT x.polrelid, 'pg_policy'::regclass, x.oid FROM prot p JOIN pg_policy x ON x.polrelid = p.relid
            UNION ALL SELECT x.ev_class, 'pg_rewrite'::regclass, x.oid FROM prot p JOIN pg_rewrite x ON x.ev_class = p.relid
            UNION ALL SELECT x.stxrelid, 'pg_statistic_ext'::regclass, x.oid FROM prot p JOIN pg_statistic_ext x ON x.stxrelid = p.relid) o
      JOIN pg_depend d ON d.classid = o.classid AND d.objid = o.objid
                      AND d.refclassid = 'pg_type'::regclass AND d.refobjid >= 16384
),
prot_type_reach AS MATERIALIZED (
    SELECT t.typ, r.oid FROM (SELECT DISTINCT typ FROM prot_types) t
    CROSS JOIN LATERAL tenancy._reachable_types(t.typ) r(oid)
),
tenant_columns AS (
    SELECT DISTINCT tenant_column FROM prot
    UNION SELECT 'tenant_id'::name
    UNION SELECT c FROM tenancy._auto_protect_columns() c
),
-- Views and materialized views reading a protected table (base), directly or through views.
dependents AS (
    WITH RECURSIVE reads(dep, relkind, base) AS (
        SELECT v.oid, v.relkind, d.refobjid
          FROM pg_rewrite rw
          JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid
                          AND d.refclassid = 'pg_class'::regclass
          JOIN pg_class v ON v.oid = rw.ev_class
         WHERE d.refobjid IN (SELECT relid FROM prot) AND v.oid <> d.refobjid AND v.relkind IN ('v', 'm')
        UNION
        SELECT v.oid, v.relkind, r.base
          FROM reads r
          JOIN pg_depend d ON d.refobjid = r.dep AND d.classid = 'pg_rewrite'::regclass
                          AND d.refclassid = 'pg_class'::regclass
          JOIN pg_rewrite rw ON rw.oid = d.objid
          JOIN pg_class v ON v.oid = rw.ev_class
         WHERE r.relkind = 'v' AND v.oid <> r.dep AND v.relkind IN ('v', 'm')
    )
    SELECT DISTINCT dep, relkind, base FROM reads
),
-- The login roles an application session can use: not superusers, not platform roles.
app_logins AS MATERIALIZED (
    SELECT r.oid, r.rolname FROM pg_roles r
     WHERE r.rolcanlogin AND NOT r.rolsuper
       AND NOT pg_has_role(r.oid, 'tenancy_operator', 'MEMBER')
       AND NOT pg_has_role(r.oid, 'tenancy_key_admin', 'MEMBER')
),
-- Every role each of them can be (pg_has_role(login, role, 'MEMBER')): itself, or a role that
-- has members (pg_database_owner's are implicit), asked once per pair. The rules below used to
-- ask pg_has_role for every login role against every role and table, and PostgreSQL
-- remembers one role's memberships at a time: with 5,000 login roles and 200 protected tables,
-- verify() took 147 s.
groups AS MATERIALIZED (
    SELECT m.roleid AS oid FROM pg_auth_members m
    UNION SELECT 'pg_database_owner'::regrole::oid
),
app_can_be AS MATERIALIZED (
    SELECT l.oid AS login, l.rolname AS login_name, g.role
      FROM app_logins l
      CROSS JOIN LATERAL (
          SELECT l.oid
          UNION
          SELECT x.oid FROM groups x WHERE pg_has_role(l.oid, x.oid, 'MEMBER')) g(role)
),
-- For each role an application session can be, a login role to name in findings: the role
-- itself where it is one, else the first by name.
app_role_login AS MATERIALIZED (
    SELECT DISTINCT ON (cb.role) cb.role, cb.login_name
      FROM app_can_be cb
     ORDER BY cb.role, cb.login <> cb.role, cb.login_name
),
-- Those of them with a privilege on a protected table that reads or writes its rows (each
-- role asked about one table after another, which PostgreSQL answers from the memberships it
-- remembers).
roles_with_access AS MATERIALIZED (
    SELECT y.role FROM app_role_login y
     WHERE EXISTS (SELECT FROM prot p
                    WHERE has_table_privilege(y.role, p.relid, 'SELECT, INSERT, UPDATE, DELETE')
                       OR has_any_column_privilege(y.role, p.relid, 'SELECT, INSERT, UPDATE'))
),
-- Schemas, and the database (oid 0: CREATE there makes a schema of one's own).
schemas AS MATERIALIZED (
    SELECT n.oid, n.nspname, n.nspowner, n.nspacl FROM pg_namespace n
     WHERE n.nspname !~ '^pg_(temp|toast_temp)_' AND n.nspname <> 'pg_toast'
    UNION ALL
    SELECT 0::oid, NULL::name, d.datdba, d.datacl FROM pg_database d WHERE d.datname = current_database()
),
-- Which of those roles can create objects in which schema (each role asked about one schema
-- after another: OFFSET 0 keeps the role the outer loop).
roles_that_create AS MATERIALIZED (
    SELECT y.role, n.nsp
      FROM app_role_login y
      CROSS JOIN LATERAL (
          SELECT n.oid FROM schemas n
           WHERE CASE WHEN n.oid = 0 THEN has_database_privilege(y.role, current_database(), 'CREATE')
                      ELSE has_schema_privilege(y.role, n.oid, 'CREATE') END
          OFFSET 0) n(nsp)
),
-- For each application login role: whether it can be a role that reads or writes a protected
-- table, and whether it can be a protected table's owner.
app_login_access AS MATERIALIZED (
    SELECT cb.login, bool_or(w.role IS NOT NULL) AS reads, bool_or(k.role IS NOT NULL) AS owns
      FROM app_can_be cb
      LEFT JOIN roles_with_access w ON w.role = cb.role
      LEFT JOIN (SELECT DISTINCT c.relowner AS role FROM prot p JOIN pg_class c ON c.oid = p.relid) k
             ON k.role = cb.role
     GROUP BY cb.login
)
SELECT f.severity, f.rule, f.object, f.detail, f.fix FROM (
-- 1. Protected tables whose state differs from what protect() recorded.
SELECT 'error', 'protection_drift', p.relid::text,
       'row security, policies, tenant column or pg_tenancy triggers differ from the recorded digest',
       format('SELECT tenancy.protect(%L, %L);', p.relid::text, p.tenant_column)
  FROM prot p
 WHERE p.policy_digest IS DISTINCT FROM tenancy._protection_digest(p.relid, p.tenant_column)
UNION ALL
-- 2. Tables with a tenant column that are not protected.
SELECT 'error', 'unprotected_tenant_table', c.oid::regclass::text,
       format('column %I (uuid) suggests tenant rows, but the table has no pg_tenancy protection', a.attname),
       format('SELECT tenancy.protect(%L, %L);', c.oid::regclass::text, a.attname)
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND NOT a.attisdropped AND a.attnum > 0
 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
   AND a.attname IN (SELECT tenant_column FROM tenant_columns) AND a.atttypid = 'uuid'::regtype
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'tenancy') AND n.nspname NOT LIKE 'pg\_toast%'
   AND c.oid NOT IN (SELECT relid FROM prot)
UNION ALL
-- 3. Partitions of protected tables without their own protection (direct access bypasses the parent's policies).
SELECT 'error', 'partition_unprotected', i.inhrelid::regclass::text,
       format('partition of protected table %s is not protected', i.inhparent::regclass),
       format('SELECT tenancy.protect(%L, %L);', i.inhparent::regclass::text, p.tenant_column)
  FROM pg_inherits i JOIN prot p ON p.relid = i.inhparent
 WHERE i.inhrelid NOT IN (SELECT relid FROM prot)
UNION ALL
-- 4. Unique constraints and primary keys without the tenant column: an insert that collides
--    with another tenant's row reveals that the row exists.
SELECT 'warning', 'unique_without_tenant', format('%s.%I', p.relid::regclass, con.conname),
       format('%s constraint on (%s) does not include %I: a duplicate-key error reveals that another tenant has the value',
              CASE con.contype WHEN 'p' THEN 'primary key' ELSE 'unique' END,
              (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.ord)
                 FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum),
              p.tenant_column),
       -- The foreign keys of protected tables that reference this key go first (each is added
       -- back with the tenant column by its fk_without_tenant fix, which comes after); a
       -- foreign key of a table that is not protected stops the fix with PostgreSQL's error.
       format('%sALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s (%I, %s);',
              (SELECT string_agg(format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I; ', fk.conrelid::regclass, fk.conname),
                                 '' ORDER BY fk.conrelid, fk.conname)
                 FROM pg_constraint fk
                WHERE fk.contype = 'f' AND fk.conindid = con.conindid AND fk.conrelid IN (SELECT relid FROM prot)),
              p.relid::regclass, con.conname, con.conname,
              CASE con.contype WHEN 'p' THEN 'PRIMARY KEY' ELSE 'UNIQUE' END, p.tenant_column,
              (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.ord)
                 FROM unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum))
  FROM prot p JOIN pg_constraint con ON con.conrelid = p.relid
 WHERE con.contype IN ('p', 'u') AND NOT p.tenant_attnum = ANY (con.conkey)
UNION ALL
-- 5. Foreign keys between protected tables that do not include the tenant column on both sides.
SELECT 'error', 'fk_without_tenant', format('%s.%I', p.relid::regclass, con.conname),
       format('foreign key to %s does not match %I: a row can reference another tenant''s row',
              con.confrelid::regclass, p.tenant_column),
       -- The referenced columns with the tenant column are unique: the key referenced
       -- either has the tenant column, or its unique_without_tenant (or
       -- unique_index_without_tenant) fix, which comes first, adds it.
       format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I, ADD CONSTRAINT %I %s;',
              p.relid::regclass, con.conname, con.conname,
              tenancy._fk_with_tenant(con.oid, p.tenant_column, r.tenant_column))
  FROM prot p
  JOIN pg_constraint con ON con.conrelid = p.relid AND con.contype = 'f'
  JOIN prot r ON r.relid = con.confrelid
 WHERE NOT EXISTS (SELECT FROM unnest(con.conkey, con.confkey) AS k(src, dst)
                    WHERE k.src = p.tenant_attnum AND k.dst = r.tenant_attnum)
UNION ALL
-- 6. Views over protected tables that run with their owner's privileges.
SELECT 'error', 'view_without_security_invoker', d.dep::regclass::text,
       format('view reads protected table %s with its owner''s privileges', d.base::regclass),
       format('ALTER VIEW %s SET (security_invoker = true);', d.dep::regclass)
  FROM dependents d JOIN pg_class v ON v.oid = d.dep
 WHERE d.relkind = 'v'
   AND NOT coalesce((SELECT lower(option_value) IN ('true', 'on', '1', 'yes')
                       FROM pg_options_to_table(v.reloptions) WHERE option_name = 'security_invoker'), false)
UNION ALL
-- 7. Materialized views over protected tables: their rows are stored without row security.
SELECT 'error', 'materialized_view', d.dep::regclass::text,
       format('materialized view stores rows of protected table %s without row security', d.base::regclass),
       format('DROP MATERIALIZED VIEW %s; -- use a view WITH (security_invoker = true) instead', d.dep::regclass)
  FROM dependents d WHERE d.relkind = 'm'
UNION ALL
-- 8. SECURITY DEFINER functions that read protected tables.
SELECT 'warning', 'security_definer_function', f.oid::regprocedure::text,
       format('SECURITY DEFINER function mentions protected table %s; it runs with its owner''s privileges', p.relid::regclass),
       format('ALTER FUNCTION %s SECURITY INVOKER;', f.oid::regprocedure)
  FROM pg_proc f JOIN pg_namespace n ON n.oid = f.pronamespace
  JOIN prot p ON f.prosrc ~* ('\m' || regexp_replace((SELECT relname FROM pg_class WHERE oid = p.relid),
                                                      '([^[:alnum:]_])', '\\\1', 'g') || '\M')
 WHERE f.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'tenancy')
UNION ALL
-- 9. Superuser or BYPASSRLS roles mapped to tenants: row security does not apply to them.
SELECT 'error', 'bypass_role_mapped', m.role::regrole::text,
       format('role is %s and mapped to tenant %s: row security does not apply to it',
              CASE WHEN r.rolsuper THEN 'a superuser' ELSE 'BYPASSRLS' END, m.tenant_id),
       CASE WHEN r.rolsuper THEN format('SELECT tenancy.unmap_role(%L, %L);', m.role::regrole::text, m.tenant_id)
            ELSE format('ALTER ROLE %I NOBYPASSRLS;', r.rolname) END
  FROM tenancy._role_mappings() m JOIN pg_roles r ON r.oid = m.role
 WHERE r.rolsuper OR r.rolbypassrls
UNION ALL
-- 10. Non-superuser BYPASSRLS roles with privileges on protected tables.
SELECT 'warning', 'bypass_role_with_access', format('%I on %s', r.rolname, p.relid::regclass),
       'role has BYPASSRLS and privileges on a protected table: it reads every tenant''s rows',
       format('ALTER ROLE %I NOBYPASSRLS;', r.rolname)
  FROM pg_roles r CROSS JOIN prot p
 WHERE r.rolbypassrls AND NOT r.rolsuper AND r.rolname NOT LIKE 'pg\_%'
   AND has_table_privilege(r.oid, p.relid, 'SELECT, INSERT, UPDATE, DELETE')
UNION ALL
-- 11. TRUNCATE granted on protected tables (TRUNCATE ignores row security).
SELECT 'warning', 'truncate_granted', format('%s to %s', p.relid::regclass,
              CASE WHEN acl.grantee = 0 THEN 'PUBLIC' ELSE acl.grantee::regrole::text END),
       'TRUNCATE ignores row security (pg_tenancy''s trigger refuses it, but the grant invites trouble)',
       format('REVOKE TRUNCATE ON %s FROM %s;', p.relid::regclass,
              CASE WHEN acl.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(acl.grantee::regrole::text) END)
  FROM prot p JOIN pg_class c ON c.oid = p.relid
  CROSS JOIN LATERAL aclexplode(c.relacl) AS acl
 WHERE acl.privilege_type = 'TRUNCATE' AND acl.grantee <> c.relowner
UNION ALL
-- 12. Settings under tenancy. granted with GRANT SET.
SELECT 'error', 'tenancy_setting_granted', format('%s to %s', pa.parname,
              CASE WHEN acl.grantee = 0 THEN 'PUBLIC' ELSE acl.grantee::regrole::text END),
       'a pg_tenancy setting can be changed by a role that is not a superuser',
       format('REVOKE %s ON PARAMETER %s FROM %s;', acl.privilege_type, pa.parname,
              CASE WHEN acl.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(acl.grantee::regrole::text) END)
  FROM pg_parameter_acl pa CROSS JOIN LATERAL aclexplode(pa.paracl) AS acl
 WHERE pa.parname LIKE 'tenancy.%'
UNION ALL
-- 13. Protected tables without an index led by the tenant column.
SELECT 'warning', 'missing_tenant_index', p.relid::text,
       format('no index starts with %I: every query scans the whole table', p.tenant_column),
       -- Unless a fix before it (a key rewritten to lead with the tenant column) made one.
       format('DO %L;',
              format('BEGIN IF NOT EXISTS (SELECT FROM pg_catalog.pg_index WHERE indrelid = %L::pg_catalog.regclass AND indkey[0] = %s) THEN CREATE INDEX ON %s (%I); END IF; END',
                     p.relid::regclass, p.tenant_attnum, p.relid::regclass, p.tenant_column))
  FROM prot p
 WHERE NOT EXISTS (SELECT FROM pg_index x WHERE x.indrelid = p.relid AND x.indkey[0] = p.tenant_attnum)
UNION ALL
-- 13b. An index on the tenant column alone (protect() makes one) beside another index led by
--      the tenant column: the other serves every query the short one serves, and each write
--      maintains both.
SELECT 'warning', 'redundant_tenant_index', x.indexrelid::regclass::text,
       format('index on (%I) alone is redundant: %s also starts with %I', p.tenant_column, w.indexrelid::regclass, p.tenant_column),
       format('DROP INDEX %s;', x.indexrelid::regclass)
  FROM prot p
  JOIN pg_index x ON x.indrelid = p.relid AND x.indnatts = 1 AND x.indkey[0] = p.tenant_attnum
                 AND NOT x.indisunique AND x.indexprs IS NULL AND x.indpred IS NULL
  JOIN pg_class xc ON xc.oid = x.indexrelid
  JOIN pg_am am ON am.oid = xc.relam AND am.amname = 'btree'
  CROSS JOIN LATERAL (
      SELECT w.indexrelid FROM pg_index w JOIN pg_class wc ON wc.oid = w.indexrelid
       WHERE w.indrelid = p.relid AND w.indexrelid <> x.indexrelid AND w.indkey[0] = p.tenant_attnum
         AND w.indnkeyatts > 1 AND w.indpred IS NULL AND w.indisvalid AND wc.relam = xc.relam
       ORDER BY w.indisprimary DESC, w.indexrelid LIMIT 1) w
UNION ALL
-- 14. Large objects owned by roles that use protected tables: large objects have no row
--     security, so every session of the owning role reads them, whichever tenant it is bound to.
SELECT 'warning', 'large_objects', format('%s large object(s) owned by %I', count(*), r.rolname),
       'large objects have no row security: every session of the owning role can read them, whichever tenant it is bound to',
       format('-- move the contents into a protected table (bytea column), then:%sSELECT lo_unlink(oid) FROM pg_largeobject_metadata WHERE lomowner = %L::regrole;',
              chr(10), r.rolname)
  FROM pg_largeobject_metadata lo JOIN pg_roles r ON r.oid = lo.lomowner
 WHERE NOT r.rolsuper
   AND (EXISTS (SELECT FROM prot p WHERE has_table_privilege(r.oid, p.relid, 'SELECT, INSERT, UPDATE, DELETE'))
        OR EXISTS (SELECT FROM tenancy._role_mappings() m WHERE m.role = r.oid))
 GROUP BY r.rolname
UNION ALL
-- 15. Protected tables owned by a role that an application session can be: a login role (other
--     than a superuser or a platform role) or a role such a login role is a member of. The
--     owner writes CHECK constraints, index expressions, triggers and rules that see every
--     tenant's rows: application roles own nothing.
SELECT 'error', 'owner_can_bind', p.relid::text,
       format('owned by %I, which %s: the owner''s constraints, indexes, triggers and rules see every tenant''s rows',
              o.rolname,
              CASE WHEN o.rolcanlogin THEN 'can log in and bind'
                   ELSE format('login role %I can SET ROLE to', l.rolname) END),
       CASE WHEN o.rolcanlogin
            THEN format('DO $fix$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = %L) THEN CREATE ROLE %I NOLOGIN; END IF; END $fix$; GRANT USAGE, CREATE ON SCHEMA %I TO %I; ALTER TABLE %s OWNER TO %I;',
                        'app_owner', 'app_owner', (SELECT nspname FROM pg_namespace WHERE oid = c.relnamespace), 'app_owner',
                        p.relid::regclass, 'app_owner')
            ELSE format('REVOKE %I FROM %I;', o.rolname, l.rolname) END
  FROM prot p JOIN pg_class c ON c.oid = p.relid JOIN pg_roles o ON o.oid = c.relowner
  JOIN (SELECT role, login_name AS rolname FROM app_role_login) l ON l.role = o.oid
 WHERE NOT o.rolsuper
UNION ALL
-- 16. Domains of protected columns owned by such a role (the column's type, or a type it is
--     made of: a domain's base, an array's element, a composite's attribute, a range's
--     subtype): ALTER DOMAIN ... ADD CONSTRAINT runs the owner's check over every tenant's values.
--     Also a domain that an expression of the table converts a value to (a default, a CHECK, an
--     index expression...: the types PostgreSQL records in pg_depend), whose check runs in every
--     tenant's writes.
SELECT DISTINCT 'error', 'domain_owner_can_bind', format_type(t.oid, NULL),
       format('domain of a column or an expression of protected table %s is owned by %I, which an application session can be',
              u.relid::regclass, o.rolname),
       format('DO $fix$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = %L) THEN CREATE ROLE %I NOLOGIN; END IF; END $fix$; GRANT USAGE, CREATE ON SCHEMA %I TO %I; ALTER DOMAIN %s OWNER TO %I;',
              'app_owner', 'app_owner', (SELECT nspname FROM pg_namespace WHERE oid = t.typnamespace), 'app_owner',
              format_type(t.oid, NULL), 'app_owner')
  FROM prot_types u
  JOIN prot_type_reach reach ON reach.typ = u.typ
  JOIN pg_type t ON t.typtype = 'd' AND t.oid = reach.oid
  JOIN pg_roles o ON o.oid = t.typowner
 WHERE NOT o.rolsuper
   AND o.oid IN (SELECT role FROM app_role_login)
UNION ALL
-- 16b. Casts to or from a type a protected column is made of, with a user's function that an
--      application session's role may replace (CREATE OR REPLACE FUNCTION): the cast runs in
--      every tenant's sessions that convert such a value, with their bindings.
SELECT DISTINCT 'error', 'cast_function_owner_can_bind',
       format('CAST (%s AS %s)', format_type(k.castsource, NULL), format_type(k.casttarget, NULL)),
       format('a cast of a type of a column of protected table %s calls %s, owned by %I, which an application session can be',
              a.attrelid::regclass, k.castfunc::regprocedure, o.rolname),
       format('DO $fix$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = %L) THEN CREATE ROLE %I NOLOGIN; END IF; END $fix$; GRANT USAGE, CREATE ON SCHEMA %I TO %I; ALTER FUNCTION %s OWNER TO %I;',
              'app_owner', 'app_owner', (SELECT nspname FROM pg_namespace WHERE oid = fn.pronamespace), 'app_owner',
              k.castfunc::regprocedure, 'app_owner')
  FROM prot p JOIN pg_attribute a ON a.attrelid = p.relid AND a.attnum > 0 AND NOT a.attisdropped
  CROSS JOIN LATERAL tenancy._reachable_types(a.atttypid) reach(oid)
  JOIN pg_cast k ON k.castfunc >= 16384 AND reach.oid >= 16384
                AND (k.castsource = reach.oid OR k.casttarget = reach.oid)
  JOIN pg_proc fn ON fn.oid = k.castfunc
  JOIN pg_roles o ON o.oid = fn.proowner
 WHERE NOT o.rolsuper
   AND o.oid IN (SELECT role FROM app_role_login)
UNION ALL
-- 17. Foreign keys of protected tables that cascade from a table the application can write
--     and that is not protected: referential actions bypass row security, so a session bound
--     to one tenant deletes or rewrites another tenant's rows through the shared table.
SELECT 'error', 'fk_cascade_from_shared_table', format('%s.%I', p.relid::regclass, con.conname),
       format('ON %s from %s, which is not protected and which %s can write: its rows'' changes reach every tenant''s rows',
              concat_ws(' / ', CASE WHEN con.confupdtype IN ('c', 'n', 'd') THEN 'UPDATE ' ||
                                     CASE con.confupdtype WHEN 'c' THEN 'CASCADE' WHEN 'n' THEN 'SET NULL' ELSE 'SET DEFAULT' END END,
                                   CASE WHEN con.confdeltype IN ('c', 'n', 'd') THEN 'DELETE ' ||
                                     CASE con.confdeltype WHEN 'c' THEN 'CASCADE' WHEN 'n' THEN 'SET NULL' ELSE 'SET DEFAULT' END END),
              con.confrelid::regclass, w.writer),
       -- Rebuilt from the catalog, never edited from the printed definition: the owner names
       -- the columns, and a name can hold what an edit looks for (an attacker's pass made the
       -- fix end a quoted name early and run its own SQL under a DBA's \gexec).
       format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I FOREIGN KEY (%s) REFERENCES %s (%s)%s%s%s;',
              p.relid::regclass, con.conname, con.conname,
              (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.n)
                 FROM unnest(con.conkey) WITH ORDINALITY k(attnum, n)
                 JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum),
              con.confrelid::regclass,
              (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.n)
                 FROM unnest(con.confkey) WITH ORDINALITY k(attnum, n)
                 JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum),
              CASE con.confmatchtype WHEN 'f' THEN ' MATCH FULL' ELSE '' END,
              CASE WHEN con.condeferrable THEN ' DEFERRABLE' || CASE WHEN con.condeferred THEN ' INITIALLY DEFERRED' ELSE '' END ELSE '' END,
              CASE WHEN con.convalidated THEN '' ELSE ' NOT VALID' END)
  FROM prot p JOIN pg_constraint con ON con.conrelid = p.relid AND con.contype = 'f'
  CROSS JOIN LATERAL (
      SELECT coalesce(max(quote_ident(r.rolname)), 'PUBLIC') AS writer FROM pg_roles r
       WHERE r.rolcanlogin AND NOT r.rolsuper
         AND NOT pg_has_role(r.oid, 'tenancy_operator', 'MEMBER')
         AND has_table_privilege(r.oid, con.confrelid, 'UPDATE, DELETE')) w
 WHERE (con.confupdtype IN ('c', 'n', 'd') OR con.confdeltype IN ('c', 'n', 'd'))
   AND con.confrelid NOT IN (SELECT relid FROM prot)
   AND EXISTS (SELECT FROM pg_roles r
                WHERE r.rolcanlogin AND NOT r.rolsuper
                  AND NOT pg_has_role(r.oid, 'tenancy_operator', 'MEMBER')
                  AND has_table_privilege(r.oid, con.confrelid, 'UPDATE, DELETE'))
UNION ALL
-- 18. Unique expression indexes, partial unique indexes and exclusion constraints not led by
--     the tenant column: a conflict tells one tenant that another holds the value.
SELECT 'error', 'unique_index_without_tenant', x.indexrelid::regclass::text,
       format('%s not led by %I: a conflict reveals that another tenant holds the value',
              CASE WHEN x.indisexclusion THEN 'exclusion constraint'
                   WHEN x.indpred IS NOT NULL THEN 'partial unique index' ELSE 'unique expression index' END,
              p.tenant_column),
       CASE WHEN x.indisexclusion
            THEN format('%sALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I %s;',
                        CASE WHEN pg_get_constraintdef(con.oid) LIKE 'EXCLUDE USING gist %'
                             THEN 'CREATE EXTENSION IF NOT EXISTS btree_gist; ' ELSE '' END,
                        p.relid::regclass, con.conname, con.conname,
                        regexp_replace(pg_get_constraintdef(con.oid), '^EXCLUDE USING (\S+) \(',
                                       'EXCLUDE USING \1 (' || quote_ident(p.tenant_column) || ' WITH =, '))
            ELSE format('%sDROP INDEX %s; %s;',
                        (SELECT string_agg(format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I; ', fk.conrelid::regclass, fk.conname),
                                           '' ORDER BY fk.conrelid, fk.conname)
                           FROM pg_constraint fk
                          WHERE fk.contype = 'f' AND fk.conindid = x.indexrelid AND fk.conrelid IN (SELECT relid FROM prot)),
                        x.indexrelid::regclass,
                        -- the first USING after the index's and the table's names, which a
                        -- pattern for (quoted) identifiers steps over: a name may hold " USING x ("
                        regexp_replace(pg_get_indexdef(x.indexrelid),
                                       '^(CREATE UNIQUE INDEX (?:"(?:[^"]|"")*"|[^\s"]+) ON (?:ONLY )?(?:(?:"(?:[^"]|"")*"|[^\s."]+)\.)?(?:"(?:[^"]|"")*"|[^\s."]+)) USING (\S+) \(',
                                       '\1 USING \2 (' || replace(quote_ident(p.tenant_column), '\', '\\') || ', ')) END
  FROM prot p JOIN pg_index x ON x.indrelid = p.relid
  LEFT JOIN pg_constraint con ON con.conindid = x.indexrelid AND con.contype = 'x'
 WHERE (x.indisexclusion
        OR (x.indisunique AND (x.indexprs IS NOT NULL OR x.indpred IS NOT NULL) AND x.indkey[0] IS DISTINCT FROM p.tenant_attnum)
        -- a unique index that is not a constraint's (rule 4 reports those) and lacks the column
        OR (x.indisunique AND x.indexprs IS NULL AND x.indpred IS NULL
            AND NOT EXISTS (SELECT FROM generate_series(0, x.indnkeyatts - 1) k WHERE x.indkey[k] = p.tenant_attnum)
            AND NOT EXISTS (SELECT FROM pg_constraint uc WHERE uc.conindid = x.indexrelid AND uc.conrelid = p.relid)))
   AND x.indkey[0] IS DISTINCT FROM p.tenant_attnum
   -- one that calls a function not built in is dropped by its leaky_expression fix instead
   AND tenancy._leaky_expr('indexprs', x.indexrelid, true) IS NULL AND tenancy._leaky_expr('indpred', x.indexrelid, true) IS NULL
UNION ALL
-- 19. CHECK constraints, index expressions and predicates, statistics expressions, generated
--     columns, partition keys and the types of columns (domains' constraints, ranges'
--     functions) of protected tables that call functions not built in: validating, building,
--     computing or analyzing them runs those functions over every tenant's rows. (Built-in functions that are not
--     LEAKPROOF may quote a value in an error: rule 20.)
SELECT 'error', 'leaky_expression', e.object,
       format('%s calls %s, which sees every tenant''s rows when it is validated, built or analyzed', e.what, e.call),
       e.fix
  FROM (SELECT format('%s.%I', p.relid::regclass, con.conname) AS object, 'CHECK constraint' AS what,
               tenancy._leaky_expr('conbin', con.oid, true) AS call,
               format('ALTER TABLE %s DROP CONSTRAINT %I;', p.relid::regclass, con.conname) AS fix
          FROM prot p JOIN pg_constraint con ON con.conrelid = p.relid AND con.contype = 'c'
        UNION ALL
        SELECT x.indexrelid::regclass::text, 'index',
               coalesce(tenancy._leaky_expr('indexprs', x.indexrelid, true), tenancy._leaky_expr('indpred', x.indexrelid, true)),
               CASE WHEN con.oid IS NULL THEN format('DROP INDEX %s;', x.indexrelid::regclass)
                    ELSE format('ALTER TABLE %s DROP CONSTRAINT %I;', p.relid::regclass, con.conname) END
          FROM prot p JOIN pg_index x ON x.indrelid = p.relid
          LEFT JOIN pg_constraint con ON con.conindid = x.indexrelid AND con.conrelid = p.relid
        UNION ALL
        SELECT format('%I.%I', sn.nspname, s.stxname), 'statistics object', tenancy._leaky_expr('stxexprs', s.oid, true),
               format('DROP STATISTICS %I.%I;', sn.nspname, s.stxname)
          FROM prot p JOIN pg_statistic_ext s ON s.stxrelid = p.relid JOIN pg_namespace sn ON sn.oid = s.stxnamespace
        UNION ALL
        SELECT format('%s.%I', p.relid::regclass, a.attname), format('generated column %I', a.attname),
               tenancy._leaky_expr('adbin', d.oid, true),
               format('ALTER TABLE %s ALTER COLUMN %I DROP EXPRESSION;', p.relid::regclass, a.attname)
          FROM prot p JOIN pg_attrdef d ON d.adrelid = p.relid
          JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum AND a.attgenerated <> '' AND a.attinhcount = 0
        UNION ALL
        SELECT format('%s (partition key)', p.relid::regclass), 'the partition key',
               tenancy._leaky_expr('partexprs', pt.partrelid, true),
               format('-- a partition key cannot be changed: move the rows into a table partitioned by built-in expressions, then drop %s',
                      translate(p.relid::regclass::text, E'\n\r', '  '))
          FROM prot p JOIN pg_partitioned_table pt ON pt.partrelid = p.relid AND pt.partexprs IS NOT NULL
        UNION ALL
        -- The type of a column, and every type it is made of: a domain's constraints run on
        -- every write (and over every row when a column is changed to it), a range's
        -- functions in ANALYZE and GiST indexes. (Types of built-in oids are made of built-in
        -- types only; an inherited column is reported on the table that defines it.)
        SELECT format('%s.%I', p.relid::regclass, a.attname),
               format('constraint %I of domain %s, the type (or part of the type) of column %I', con.conname,
                      format_type(con.contypid, NULL), a.attname),
               tenancy._leaky_expr('conbin', con.oid, true),
               format('ALTER DOMAIN %s DROP CONSTRAINT IF EXISTS %I;', format_type(con.contypid, NULL), con.conname)
          FROM prot p JOIN pg_attribute a ON a.attrelid = p.relid AND a.attnum > 0 AND NOT a.attisdropped
                                         AND a.atttypid >= 16384 AND a.attinhcount = 0
          CROSS JOIN LATERAL tenancy._reachable_types(a.atttypid) reach(oid)
          JOIN pg_constraint con ON con.contypid = reach.oid AND con.conbin IS NOT NULL
        UNION ALL
        SELECT format('%s.%I', p.relid::regclass, a.attname),
               format('range type %s, the type (or part of the type) of column %I', format_type(r.rngtypid, NULL), a.attname),
               (SELECT 'function ' || f::regprocedure::text
                  FROM unnest(ARRAY[r.rngcanonical, r.rngsubdiff]::oid[]) f WHERE f >= 16384 ORDER BY f LIMIT 1),
               format('ALTER TABLE %s DROP COLUMN %I; -- drops its values: a range type''s functions cannot be changed, so keep them in a column of a built-in range type instead',
                      p.relid::regclass, a.attname)
          FROM prot p JOIN pg_attribute a ON a.attrelid = p.relid AND a.attnum > 0 AND NOT a.attisdropped
                                         AND a.atttypid >= 16384 AND a.attinhcount = 0
          CROSS JOIN LATERAL tenancy._reachable_types(a.atttypid) reach(oid)
          JOIN pg_range r ON r.rngtypid = reach.oid) e
 WHERE e.call IS NOT NULL
UNION ALL
-- 20. The same with built-in functions that are not LEAKPROOF: they cannot be made to show
--     rows, but some quote a value in their errors (a failed cast, a division by zero) while
--     they run over every tenant's rows. pg_tenancy refuses to create them for anyone but a
--     superuser; keep them only if a trusted migration role made them.
SELECT 'warning', 'builtin_nonleakproof_expression', e.object,
       format('%s calls %s, a built-in function that is not LEAKPROOF', e.what, e.call),
       format('-- keep it if a trusted migration role created it; otherwise:%s%s', chr(10), e.fix)
  FROM (SELECT format('%s.%I', p.relid::regclass, con.conname) AS object, 'CHECK constraint' AS what,
               tenancy._leaky_expr('conbin', con.oid, false) AS call,
               tenancy._leaky_expr('conbin', con.oid, true) AS user_call,
               format('ALTER TABLE %s DROP CONSTRAINT %I;', p.relid::regclass, con.conname) AS fix
          FROM prot p JOIN pg_constraint con ON con.conrelid = p.relid AND con.contype = 'c'
        UNION ALL
        SELECT x.indexrelid::regclass::text, 'index',
               coalesce(tenancy._leaky_expr('indexprs', x.indexrelid, false), tenancy._leaky_expr('indpred', x.indexrelid, false)),
               coalesce(tenancy._leaky_expr('indexprs', x.indexrelid, true), tenancy._leaky_expr('indpred', x.indexrelid, true)),
               CASE WHEN con.oid IS NULL THEN format('DROP INDEX %s;', x.indexrelid::regclass)
                    ELSE format('ALTER TABLE %s DROP CONSTRAINT %I;', p.relid::regclass, con.conname) END
          FROM prot p JOIN pg_index x ON x.indrelid = p.relid
          LEFT JOIN pg_constraint con ON con.conindid = x.indexrelid AND con.conrelid = p.relid
        UNION ALL
        SELECT format('%I.%I', sn.nspname, s.stxname), 'statistics object',
               tenancy._leaky_expr('stxexprs', s.oid, false), tenancy._leaky_expr('stxexprs', s.oid, true),
               format('DROP STATISTICS %I.%I;', sn.nspname, s.stxname)
          FROM prot p JOIN pg_statistic_ext s ON s.stxrelid = p.relid JOIN pg_namespace sn ON sn.oid = s.stxnamespace) e
 WHERE e.call IS NOT NULL AND e.user_call IS NULL
UNION ALL
-- 21. Rules on protected tables: their actions run for every tenant's writes with the rule
--     owner's privileges and can copy the rows elsewhere.
SELECT 'error', 'rule_on_protected_table', format('%s.%I', p.relid::regclass, r.rulename),
       'a rule''s actions run for every tenant''s writes and can copy their rows to another table',
       format('DROP RULE %I ON %s;', r.rulename, p.relid::regclass)
  FROM prot p JOIN pg_rewrite r ON r.ev_class = p.relid
 WHERE r.rulename <> '_RETURN'
UNION ALL
-- 22. Platform roles that can give themselves the other duty: CREATEROLE (their own, or a
--     role's they belong to, or a superuser role's: PostgreSQL 15 lets a member SET ROLE to
--     it), or ADMIN OPTION on
--     the other role (separation of duties: pg_tenancy refuses such roles both duties).
SELECT 'error', 'duties_combinable', r.rolname::text,
       'a platform role that can make itself both operator and key admin: whoever registers keys can mint tokens for any subject',
       CASE WHEN r.rolcreaterole THEN format('ALTER ROLE %I NOCREATEROLE;', r.rolname)
            WHEN c.creator IS NOT NULL THEN format('REVOKE %I FROM %I;', c.via, r.rolname)
            WHEN pg_has_role(r.oid, 'tenancy_operator', 'MEMBER') AND pg_has_role(r.oid, 'tenancy_key_admin', 'MEMBER')
                 AND NOT pg_has_role(r.oid, 'tenancy_key_admin', 'MEMBER WITH ADMIN OPTION')
                 AND NOT pg_has_role(r.oid, 'tenancy_operator', 'MEMBER WITH ADMIN OPTION')
                 THEN format('REVOKE tenancy_key_admin FROM %I;', r.rolname)
            ELSE format('REVOKE ADMIN OPTION FOR %s FROM %I;',
                        CASE WHEN pg_has_role(r.oid, 'tenancy_operator', 'MEMBER') THEN 'tenancy_key_admin' ELSE 'tenancy_operator' END,
                        r.rolname) END
  FROM pg_roles r
  -- A role it can SET ROLE to that has CREATEROLE (or is a superuser), and the role it
  -- belongs to directly on the way there (the membership the fix revokes).
  LEFT JOIN LATERAL (SELECT g.rolname AS creator, v.rolname AS via FROM pg_roles g, pg_auth_members m
                       JOIN pg_roles v ON v.oid = m.roleid
                      WHERE (g.rolcreaterole OR g.rolsuper) AND g.oid <> r.oid AND m.member = r.oid
                        AND pg_has_role(m.roleid, g.oid, 'MEMBER')
                      ORDER BY g.rolname, v.rolname LIMIT 1) c ON true
 WHERE NOT r.rolsuper AND r.rolname NOT IN ('tenancy_operator', 'tenancy_key_admin')
   AND (pg_has_role(r.oid, 'tenancy_operator', 'MEMBER') OR pg_has_role(r.oid, 'tenancy_key_admin', 'MEMBER'))
   AND (r.rolcreaterole OR c.creator IS NOT NULL
        OR pg_has_role(r.oid, 'tenancy_operator', 'MEMBER') AND pg_has_role(r.oid, 'tenancy_key_admin', 'MEMBER')
        OR pg_has_role(r.oid, 'tenancy_operator', 'MEMBER') AND pg_has_role(r.oid, 'tenancy_key_admin', 'MEMBER WITH ADMIN OPTION')
        OR pg_has_role(r.oid, 'tenancy_key_admin', 'MEMBER') AND pg_has_role(r.oid, 'tenancy_operator', 'MEMBER WITH ADMIN OPTION'))
UNION ALL
-- 23. The library not loaded at connection: the refusal of LOCK TABLE on protected tables, the
--     resource limits and the tenant's write lock need pg_tenancy's hooks in the session
--     before its first statement.
SELECT 'warning', 'library_not_preloaded', current_database()::text,
       'pg_tenancy is in neither shared_preload_libraries nor session_preload_libraries: a session''s first statement runs before pg_tenancy''s hooks exist, so it can LOCK a protected table and stall every tenant, run above the tenant''s resource limits, and write while decommission_tenant runs',
       format('ALTER DATABASE %I SET session_preload_libraries = %L;', current_database(), 'pg_tenancy')
 WHERE NOT tenancy._library_preloaded()
UNION ALL
-- 24. Trigger functions of protected tables owned by a role an application session can be:
--     the owner can replace the function's body, which sees every tenant's writes.
SELECT DISTINCT 'error', 'trigger_function_owner_can_bind', format('%s.%I', p.relid::regclass, t.tgname),
       format('trigger function %s is owned by %I, which an application session can be: it can replace the body that sees every tenant''s writes',
              t.tgfoid::regprocedure, o.rolname),
       format('DO $fix$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = %L) THEN CREATE ROLE %I NOLOGIN; END IF; END $fix$; GRANT USAGE, CREATE ON SCHEMA %I TO %I; ALTER FUNCTION %s OWNER TO %I;',
              'app_owner', 'app_owner', fn.nspname, 'app_owner', t.tgfoid::regprocedure, 'app_owner')
  FROM prot p JOIN pg_trigger t ON t.tgrelid = p.relid AND NOT t.tgisinternal
  JOIN pg_proc f ON f.oid = t.tgfoid JOIN pg_namespace fn ON fn.oid = f.pronamespace
  JOIN pg_roles o ON o.oid = f.proowner
 WHERE NOT o.rolsuper AND fn.nspname <> 'tenancy'
   AND o.oid IN (SELECT role FROM app_role_login)
UNION ALL
-- 25. Protected tables with a parent that is not protected (multiple inheritance, or made by a
--     superuser): the parent's queries read the table's rows without its policies.
SELECT 'error', 'unprotected_parent', p.relid::regclass::text,
       format('inherits from %s, which is not protected: queries of the parent read this table''s rows without its policies',
              i.inhparent::regclass),
       CASE WHEN c.relispartition THEN format('ALTER TABLE %s DETACH PARTITION %s;', i.inhparent::regclass, p.relid::regclass)
            ELSE format('ALTER TABLE %s NO INHERIT %s;', p.relid::regclass, i.inhparent::regclass) END
  FROM prot p JOIN pg_class c ON c.oid = p.relid JOIN pg_inherits i ON i.inhrelid = p.relid
 WHERE i.inhparent NOT IN (SELECT relid FROM prot)
UNION ALL
-- 26. On Citus: shards of protected tables whose row security, policies or triggers differ
--     from their table's on the coordinator (changed on a worker, where the guard does not
--     run yet), workers whose pg_tenancy functions or protected tables' trigger functions
--     differ from the coordinator's, workers without Citus's metadata (where the guard cannot
--     tell a shard), and TRUNCATE or TRIGGER granted on protected Citus
--     tables, which reach the shards past pg_tenancy's checks. Nothing without Citus.
SELECT 'error', d.rule, d.object, d.detail, d.fix
  FROM tenancy._citus_findings() d
UNION ALL
-- 27. Application roles (login roles that read or write protected tables, own none and are
--     neither platform roles nor superusers) that can create objects in a schema, themselves
--     or through a role they can SET ROLE to: every tenant's sessions of the role share it,
--     and a role may change its own settings (ALTER ROLE ... SET search_path), so a function
--     or an operator it creates runs in the next sessions of every tenant, with their bindings.
SELECT * FROM (
SELECT DISTINCT ON (r.rolname) 'error', 'application_role_can_create', r.rolname::text,
       format('role %I reads or writes protected tables and can create objects in %s (as %I): a function or an operator made there runs in every tenant''s sessions of the role that find it, with their bindings (a role may set its own search_path)',
              r.rolname, CASE WHEN n.oid = 0 THEN 'a schema of its own (CREATE on the database)' ELSE format('schema %I', n.nspname) END, g.rolname),
       CASE WHEN n.oid = 0 AND EXISTS (SELECT FROM aclexplode(n.nspacl) a WHERE a.grantee = 0 AND a.privilege_type = 'CREATE')
            THEN format('REVOKE CREATE ON DATABASE %I FROM PUBLIC;', current_database())
            WHEN n.oid = 0 THEN format('REVOKE CREATE ON DATABASE %I FROM %I;', current_database(), g.rolname)
            WHEN n.nspowner = g.oid
            THEN format('ALTER SCHEMA %I OWNER TO %I;', n.nspname, (SELECT rolname FROM pg_roles WHERE oid = 10))
            WHEN EXISTS (SELECT FROM aclexplode(n.nspacl) a WHERE a.grantee = 0 AND a.privilege_type = 'CREATE')
            THEN format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC;', n.nspname)
            ELSE format('REVOKE CREATE ON SCHEMA %I FROM %I;', n.nspname, g.rolname) END
  FROM app_can_be cb
  JOIN app_login_access f ON f.login = cb.login AND f.reads AND NOT f.owns
  JOIN app_logins r ON r.oid = cb.login
  JOIN roles_that_create c ON c.role = cb.role
  JOIN schemas n ON n.oid = c.nsp
  JOIN pg_roles g ON g.oid = cb.role
 -- One finding per login role: its first schema by name (the database last), as the role that
 -- holds the privilege itself where there is one (its fix revokes it there: a REVOKE from a
 -- role that only inherits the privilege removes nothing), then as the login role itself.
 ORDER BY r.rolname, n.nspname NULLS LAST,
          NOT EXISTS (SELECT FROM aclexplode(coalesce(n.nspacl, acldefault(CASE WHEN n.oid = 0 THEN 'd' ELSE 'n' END::"char", n.nspowner))) a
                       WHERE a.grantee = g.oid AND a.privilege_type = 'CREATE'),
          g.oid <> r.oid, g.rolname) app_create
UNION ALL
-- 28. Functions and operators outside pg_catalog that bear a pg_catalog function's or
--     operator's name and number of arguments, all of pg_catalog's types (extensions' own
--     excepted): a session that calls pg_catalog's unqualified, with their schema on its
--     search_path, gets one of them instead wherever pg_catalog's is not an exact match (a
--     polymorphic function, an argument that needs a cast), and runs it as itself. On Citus,
--     Citus's own statements to the workers (lock_shard_resources before a write of a
--     reference table, assign_distributed_transaction_id) call pg_catalog's functions so, as
--     the superuser, with the workers' default search_path: a role's exact-typed
--     public.lock_shard_resources(int, int[]) ran as the superuser on every worker at the next
--     catalog write (an attacker's pass). An error there, a warning elsewhere. A function
--     with defaults or VARIADIC matches calls of fewer or more arguments (a role's
--     public.lock_shard_resources(int, int[], int DEFAULT 0) was chosen so: a later pass); on
--     Citus every function and operator of a pg_catalog one's name is reported, whatever its
--     arguments (a domain or a type of the role's own can be a closer match for a literal).
SELECT CASE WHEN EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN 'error' ELSE 'warning' END,
       'catalog_name_shadowed', s.object,
       format('%s has the name of pg_catalog''s %s and arguments of its types: an unqualified call of pg_catalog''s by a session with schema %I on its search_path can run it instead, as that session''s role%s',
              s.object, s.kind, s.nspname,
              CASE WHEN EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')
                   THEN ' (Citus''s statements to the workers run so as the superuser)' ELSE '' END),
       s.fix
  FROM (SELECT f.oid::regprocedure::text AS object, 'function ' || quote_ident(f.proname::text) AS kind, n.nspname,
               format('DROP %s %s;', CASE f.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END,
                      f.oid::regprocedure) AS fix
          FROM pg_proc f JOIN pg_namespace n ON n.oid = f.pronamespace
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'tenancy') AND n.nspname !~ '^pg_'
           AND NOT EXISTS (SELECT FROM pg_depend e WHERE e.classid = 'pg_proc'::regclass AND e.objid = f.oid AND e.deptype = 'e')
           AND EXISTS (SELECT FROM pg_proc c WHERE c.pronamespace = 'pg_catalog'::regnamespace
                          AND c.proname = f.proname
                          AND (c.pronargs BETWEEN f.pronargs - f.pronargdefaults AND f.pronargs
                               OR f.provariadic <> 0
                               OR EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')))
           AND (EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')
                OR NOT EXISTS (SELECT FROM unnest(f.proargtypes::oid[]) a JOIN pg_type t ON t.oid = a
                                WHERE t.typnamespace <> 'pg_catalog'::regnamespace))
        UNION ALL
        SELECT o.oid::regoperator::text, 'operator ' || o.oprname, n.nspname,
               format('DROP OPERATOR %s;', o.oid::regoperator)
          FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'tenancy') AND n.nspname !~ '^pg_'
           AND NOT EXISTS (SELECT FROM pg_depend e WHERE e.classid = 'pg_operator'::regclass AND e.objid = o.oid AND e.deptype = 'e')
           AND EXISTS (SELECT FROM pg_operator c WHERE c.oprnamespace = 'pg_catalog'::regnamespace
                          AND c.oprname = o.oprname AND (c.oprleft = 0) = (o.oprleft = 0))
           AND (EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')
                OR NOT EXISTS (SELECT FROM pg_type t WHERE t.oid IN (o.oprleft, o.oprright)
                                AND t.typnamespace <> 'pg_catalog'::regnamespace))) s
UNION ALL
-- 29. Role mappings that name a role no longer there: PostgreSQL keeps no dependency of a
--     regrole column, so DROP ROLE leaves the mapping, and a role made later that PostgreSQL
--     gives the same oid would be bound to the tenant without a token.
-- (The tenant by its id: a join with the tenants, a Citus reference table, would have Citus
-- print this query again, with pg_roles as pg_authid, which operators may not read.)
SELECT 'error', 'mapping_of_dropped_role', format('role %s in tenant %s', m.role, m.tenant_id),
       'a role mapping names a role that no longer exists: a role created later with its oid would be bound to this tenant without a token',
       format('SELECT tenancy.unmap_role(%s::oid::regrole, %L);', m.role, m.tenant_id)
  FROM tenancy._role_mappings() m
 WHERE NOT EXISTS (SELECT FROM pg_roles r WHERE r.oid = m.role)
UNION ALL
-- 32. A mapped role without its grant on tenancy.mapped_role (mapped before 0.2.0, or revoked
--     by hand): PostgreSQL then lets it be dropped where pg_tenancy does not end its mappings
--     first (another database, a session without the library), which leaves rule 29's hazard.
SELECT 'warning', 'mapping_without_dependency', format('role %s', m.role::regrole),
       'a mapped role does not hold USAGE on tenancy.mapped_role: PostgreSQL would let it be dropped in another database, or in a session without pg_tenancy loaded, leaving its mappings to a role created later with its oid',
       'SELECT tenancy._keep_mapped_roles();'
  FROM (SELECT DISTINCT role FROM tenancy._role_mappings()) m
 WHERE EXISTS (SELECT FROM pg_roles r WHERE r.oid = m.role)
   AND NOT EXISTS (SELECT FROM pg_type t, aclexplode(t.typacl) a
                    WHERE t.oid = 'tenancy.mapped_role'::regtype AND a.grantee = m.role)
UNION ALL
-- 30. A tenant role's grant on a table that is not protected: dropped, or unprotected, where
--     the grant outlived it (before 0.2.0, or a DROP no event trigger saw). Protecting the
--     table again, or a table PostgreSQL later gives its oid, would hand the role the privilege
--     without a record.
SELECT 'warning', 'grant_on_unprotected_table',
       format('%s of role %s in tenant %s on table %s', g.privilege, g.role, g.tenant_id, g.relid),
       'a tenant role''s grant names a table that is not protected (dropped or unprotected): protecting it again, or a table created later with its oid, would give the role this privilege unrecorded',
       format('SELECT tenancy.revoke(%L, %L, %s::oid::regclass, ARRAY[%L]);', g.tenant_id, g.role, g.relid, g.privilege)
  FROM tenancy._grants_off_protection() g
UNION ALL
-- 31. Foreign keys into a protected table from a table that is not protected and that the
--     application can write: PostgreSQL checks a foreign key without row security, so a
--     session bound to one tenant learns whether another tenant's row exists (its insert fails
--     or not), and holds that row locked, where decommission_tenant's deletion waits for it.
--     A writer is a role an application session can be (itself, a group it may SET ROLE to, the
--     table's owner) with a privilege to write the table or any partition of it (pg_partition_tree
--     lists a partitioned table's, none for a table that is not), or to write a
--     view over them whose owner can, or to run a SECURITY DEFINER function whose owner can and
--     whose text names the table (a function that builds the name is not seen).
SELECT 'error', 'fk_from_shared_table', format('%s.%I', con.conrelid::regclass, con.conname),
       format('%s, which is not protected and which %s can write, references protected table %s: a session of one tenant learns whether another tenant''s row exists, and holds it locked against that tenant''s decommission',
              con.conrelid::regclass, w.writer, con.confrelid::regclass),
       -- The root of a partition tree: protecting a partition alone leaves its parent not.
       format('SELECT tenancy.protect(%L);', coalesce(pg_partition_root(con.conrelid), con.conrelid)::regclass::text)
  FROM pg_constraint con
  JOIN pg_class src ON src.oid = con.conrelid
  CROSS JOIN LATERAL (
      SELECT min(x.writer) AS writer FROM (
          -- A column's privilege counts (has_any_column_privilege also answers for the table's).
          SELECT quote_ident(y.login_name) AS writer
            FROM app_role_login y, (SELECT con.conrelid AS relid UNION SELECT relid FROM pg_partition_tree(con.conrelid)) t
           WHERE has_any_column_privilege(y.role, t.relid, 'INSERT, UPDATE')
          UNION ALL
          SELECT format('%s (through view %s)', quote_ident(y.login_name), v.oid::regclass)
            FROM (SELECT con.conrelid AS relid UNION SELECT relid FROM pg_partition_tree(con.conrelid)) t
            JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = t.relid
                            AND d.classid = 'pg_rewrite'::regclass
            JOIN pg_rewrite rw ON rw.oid = d.objid
            JOIN pg_class v ON v.oid = rw.ev_class AND v.relkind = 'v'
            JOIN app_role_login y ON has_any_column_privilege(y.role, v.oid, 'INSERT, UPDATE')
           WHERE has_any_column_privilege(v.relowner, t.relid, 'INSERT, UPDATE')
          UNION ALL
          SELECT format('%s (through function %s)', quote_ident(y.login_name), p.oid::regprocedure)
            FROM pg_proc p
            JOIN app_role_login y ON has_function_privilege(y.role, p.oid, 'EXECUTE')
           WHERE p.prosecdef AND strpos(p.prosrc, src.relname) > 0
             AND EXISTS (SELECT FROM (SELECT con.conrelid AS relid UNION SELECT relid FROM pg_partition_tree(con.conrelid)) t
                          WHERE has_any_column_privilege(p.proowner, t.relid, 'INSERT, UPDATE'))) x) w
 WHERE con.contype = 'f'
   -- Once per foreign key, not again for each partition that inherits it.
   AND con.conparentid = 0
   AND con.confrelid IN (SELECT relid FROM prot)
   AND con.conrelid NOT IN (SELECT relid FROM prot)
   AND w.writer IS NOT NULL
UNION ALL
-- 33. A search_path of the database (or a superuser's, or every role's) that puts a schema
--     before pg_catalog: a superuser's session, and on Citus its maintenance daemon, then
--     finds a schema's relations, types and functions before pg_catalog's of the same name (a
--     database owner's view public.pg_prepared_xacts ran as Citus's superuser: an attacker's
--     pass). On Citus the guard refuses such a setting to non-superusers.
SELECT CASE WHEN EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN 'error' ELSE 'warning' END,
       'catalog_behind_a_schema',
       CASE WHEN s.setrole = 0 AND s.setdatabase = 0 THEN 'every role'
            WHEN s.setrole = 0 THEN format('database %I', current_database())
            ELSE format('role %s', s.setrole::regrole) END,
       format('%s puts a schema before pg_catalog: a superuser''s session (on Citus, its maintenance daemon) resolves names of pg_catalog''s relations, types and functions to that schema''s first',
              s.cfg),
       CASE WHEN s.setrole = 0 AND s.setdatabase = 0 THEN 'ALTER ROLE ALL RESET search_path;'
            WHEN s.setrole = 0 THEN format('ALTER DATABASE %I RESET search_path;', current_database())
            WHEN s.setdatabase = 0 THEN format('ALTER ROLE %s RESET search_path;', s.setrole::regrole)
            ELSE format('ALTER ROLE %s IN DATABASE %I RESET search_path;', s.setrole::regrole, current_database()) END
  FROM (SELECT d.setdatabase, d.setrole, c AS cfg
          FROM pg_db_role_setting d, unnest(d.setconfig) c
         WHERE d.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
           AND (d.setrole = 0 OR d.setrole IN (SELECT oid FROM pg_roles WHERE rolsuper))
           AND c LIKE 'search\_path=%') s
 WHERE array_position(ARRAY(SELECT btrim(x, ' "') FROM unnest(string_to_array(substr(s.cfg, 13), ',')) x),
                      'pg_catalog') > 1
) f(severity, rule, object, detail, fix)
-- The order the fixes run in: protection and ownership first; then the expressions that call
-- functions not built in (an index dropped there is not rebuilt by a key's fix); then keys, so
-- that each key leads with the tenant column before the foreign keys that reference it are
-- added back and before the tenant index is looked for; the rest touch nothing the others do.
ORDER BY array_position(ARRAY['protection_drift', 'citus_shard_drift', 'citus_node_drift', 'citus_catalog_drift', 'citus_node_without_metadata', 'citus_grant_reaches_shards', 'unprotected_tenant_table', 'partition_unprotected',
                              'unprotected_parent', 'owner_can_bind', 'domain_owner_can_bind',
                              'cast_function_owner_can_bind',
                              'trigger_function_owner_can_bind', 'leaky_expression',
                              'unique_without_tenant', 'unique_index_without_tenant',
                              'fk_without_tenant', 'fk_cascade_from_shared_table',
                              'builtin_nonleakproof_expression', 'missing_tenant_index',
                              'redundant_tenant_index', 'application_role_can_create'], f.rule) NULLS LAST,
         f.rule, f.object
$verify$;
REVOKE EXECUTE ON FUNCTION tenancy._lock_protected_tables() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenancy._lock_protected_tables() TO tenancy_operator;

-- tenancy.add_keys: import a JWKS document as identity providers publish it.
CREATE FUNCTION tenancy."add_keys"("jwks" jsonb, "tenant" text DEFAULT NULL, "not_after" timestamp with time zone DEFAULT NULL)
RETURNS TABLE ("kid" text, "alg" text, "status" text)
VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'add_keys_wrapper';
REVOKE EXECUTE ON FUNCTION tenancy.add_keys(jsonb, text, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenancy.add_keys(jsonb, text, timestamptz) TO tenancy_key_admin;

-- The bulk lane: a transaction that links more than 32 tenants (a backfill, bulk onboarding)
-- takes one lock instead of one per tenant and links into lane 16 of each tenant's chain.
ALTER TABLE tenancy.audit_chain DROP CONSTRAINT audit_chain_lane_check,
    ADD CONSTRAINT audit_chain_lane_check CHECK (lane BETWEEN 0 AND 16);

-- Invalidation as fine as the change: a change to one tenant's rows drops that tenant's cached
-- rows in every backend, not every backend's whole cache (src/pg/targeted_inval.rs).
CREATE FUNCTION tenancy."tenant_changed"() RETURNS TRIGGER
LANGUAGE c AS 'MODULE_PATHNAME', 'tenant_changed_wrapper';
REVOKE EXECUTE ON FUNCTION tenancy.tenant_changed() FROM PUBLIC;
CREATE FUNCTION tenancy."tenant_changes_announce"() RETURNS TRIGGER
LANGUAGE c AS 'MODULE_PATHNAME', 'tenant_changes_announce_wrapper';
REVOKE EXECUTE ON FUNCTION tenancy.tenant_changes_announce() FROM PUBLIC;
DROP TRIGGER catalog_changed ON tenancy.tenant;
CREATE TRIGGER catalog_changed AFTER TRUNCATE ON tenancy.tenant
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.catalog_changed();
CREATE TRIGGER tenant_changed AFTER INSERT OR UPDATE OR DELETE ON tenancy.tenant
    FOR EACH ROW EXECUTE FUNCTION tenancy.tenant_changed('id');
CREATE TRIGGER tenant_changes_announce AFTER INSERT OR UPDATE OR DELETE ON tenancy.tenant
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.tenant_changes_announce();
DROP TRIGGER catalog_changed ON tenancy.tenant_role;
CREATE TRIGGER catalog_changed AFTER TRUNCATE ON tenancy.tenant_role
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.catalog_changed();
CREATE TRIGGER tenant_changed AFTER INSERT OR UPDATE OR DELETE ON tenancy.tenant_role
    FOR EACH ROW EXECUTE FUNCTION tenancy.tenant_changed('tenant_id');
CREATE TRIGGER tenant_changes_announce AFTER INSERT OR UPDATE OR DELETE ON tenancy.tenant_role
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.tenant_changes_announce();
DROP TRIGGER catalog_changed ON tenancy.member;
CREATE TRIGGER catalog_changed AFTER TRUNCATE ON tenancy.member
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.catalog_changed();
CREATE TRIGGER tenant_changed AFTER INSERT OR UPDATE OR DELETE ON tenancy.member
    FOR EACH ROW EXECUTE FUNCTION tenancy.tenant_changed('tenant_id');
CREATE TRIGGER tenant_changes_announce AFTER INSERT OR UPDATE OR DELETE ON tenancy.member
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.tenant_changes_announce();
DROP TRIGGER catalog_changed ON tenancy.subject_revocation;
CREATE TRIGGER catalog_changed AFTER TRUNCATE ON tenancy.subject_revocation
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.catalog_changed();
CREATE TRIGGER tenant_changed AFTER INSERT OR UPDATE OR DELETE ON tenancy.subject_revocation
    FOR EACH ROW EXECUTE FUNCTION tenancy.tenant_changed('tenant_id');
CREATE TRIGGER tenant_changes_announce AFTER INSERT OR UPDATE OR DELETE ON tenancy.subject_revocation
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.tenant_changes_announce();
DROP TRIGGER catalog_changed ON tenancy.role_privilege;
CREATE TRIGGER catalog_changed AFTER TRUNCATE ON tenancy.role_privilege
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.catalog_changed();
CREATE TRIGGER tenant_changed AFTER INSERT OR UPDATE OR DELETE ON tenancy.role_privilege
    FOR EACH ROW EXECUTE FUNCTION tenancy.tenant_changed('tenant_id');
CREATE TRIGGER tenant_changes_announce AFTER INSERT OR UPDATE OR DELETE ON tenancy.role_privilege
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.tenant_changes_announce();
DROP TRIGGER catalog_changed ON tenancy.support_grant;
CREATE TRIGGER catalog_changed AFTER TRUNCATE ON tenancy.support_grant
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.catalog_changed();
CREATE TRIGGER tenant_changed AFTER INSERT OR UPDATE OR DELETE ON tenancy.support_grant
    FOR EACH ROW EXECUTE FUNCTION tenancy.tenant_changed('tenant_id');
CREATE TRIGGER tenant_changes_announce AFTER INSERT OR UPDATE OR DELETE ON tenancy.support_grant
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.tenant_changes_announce();
DROP TRIGGER catalog_changed ON tenancy.audit_exclusion;
-- A tenant's audit exclusions drop that tenant's cached exclusions only (a tenant admin's loop
-- of audit_exclude made every backend drop its whole cache each time).
CREATE TRIGGER catalog_changed AFTER TRUNCATE ON tenancy.audit_exclusion
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.catalog_changed();
CREATE TRIGGER tenant_changed AFTER INSERT OR UPDATE OR DELETE ON tenancy.audit_exclusion
    FOR EACH ROW EXECUTE FUNCTION tenancy.tenant_changed('tenant_id');
CREATE TRIGGER tenant_changes_announce AFTER INSERT OR UPDATE OR DELETE ON tenancy.audit_exclusion
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.tenant_changes_announce();
-- A token revocation of one tenant drops that tenant's cache only (a tenant admin's loop of
-- revoke_token, a no-op after the first, made every backend drop its whole cache each time);
-- one for every tenant (tenant_id NULL) drops every cache.
DROP TRIGGER catalog_changed ON tenancy.token_revocation;
CREATE TRIGGER catalog_changed AFTER TRUNCATE ON tenancy.token_revocation
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.catalog_changed();
CREATE TRIGGER tenant_changed AFTER INSERT OR UPDATE OR DELETE ON tenancy.token_revocation
    FOR EACH ROW EXECUTE FUNCTION tenancy.tenant_changed('tenant_id');
CREATE TRIGGER tenant_changes_announce AFTER INSERT OR UPDATE OR DELETE ON tenancy.token_revocation
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.tenant_changes_announce();

-- A backend's catalog cache counters (tenants cached, rows read, invalidations received).
CREATE FUNCTION tenancy."cache_stats"() RETURNS jsonb
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c AS 'MODULE_PATHNAME', 'cache_stats_wrapper';

-- Bulk onboarding: many tenants in one call, as create_tenant makes each.
CREATE FUNCTION tenancy."create_tenants"("tenants" jsonb)
RETURNS TABLE ("slug" text, "id" uuid)
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'create_tenants_wrapper';
REVOKE EXECUTE ON FUNCTION tenancy.create_tenants(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenancy.create_tenants(jsonb) TO tenancy_operator;

-- A new audit key invalidates nothing (each create_tenant dropped every backend's cache).
DROP TRIGGER catalog_changed ON tenancy.audit_key;
CREATE TRIGGER catalog_changed AFTER UPDATE OR DELETE OR TRUNCATE ON tenancy.audit_key
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.catalog_changed();

-- Citus: makes pg_tenancy's catalog reference tables on a coordinator (src/citus/mod.rs).
CREATE FUNCTION tenancy."citus_setup"() RETURNS text[]
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'citus_setup_wrapper';

-- The DDL guard sees CREATE TRIGGER too: on a protected table only its owner or a superuser
-- creates one, never with a temporary function, and none under pg_tenancy's own names; and
-- CREATE CAST, with a function, to or from a type a protected column is made of
-- (src/protection/guard.rs).
DROP EVENT TRIGGER tenancy_ddl_command_start;
CREATE EVENT TRIGGER tenancy_ddl_command_start ON ddl_command_start
    WHEN TAG IN ('ALTER TABLE', 'ALTER TYPE', 'CREATE INDEX', 'CREATE STATISTICS', 'ALTER DOMAIN', 'CREATE RULE',
                 'CREATE TRIGGER', 'CREATE CAST', 'DROP TABLE', 'DROP SCHEMA', 'DROP OWNED',
                 -- a schema that pg_tenancy knows by name (auto-protected; on Citus, holding
                 -- protected tables) is not renamed
                 'ALTER SCHEMA',
                 -- PostgreSQL renames a table's column under any of these forms
                 'ALTER VIEW', 'ALTER MATERIALIZED VIEW', 'ALTER FOREIGN TABLE')
    EXECUTE FUNCTION tenancy._on_ddl_command_start();

-- On Citus, each protected Citus table's name and the signature of its row security, for the
-- guard on every node (a reference table there; empty elsewhere): src/citus/guard.rs.
CREATE TABLE tenancy.citus_protection (
    relation          text PRIMARY KEY,
    coordinator_relid oid  NOT NULL UNIQUE,
    signature         text NOT NULL
);
REVOKE ALL ON tenancy.citus_protection FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('tenancy.citus_protection', '');

-- On Citus, the records a statement of SQL inserts into a shard of the distributed trail are
-- linked on that node (src/citus/trail.rs; tenancy.citus_setup() creates the trigger).
CREATE FUNCTION tenancy."_audit_link_inserted"() RETURNS TRIGGER
LANGUAGE c AS 'MODULE_PATHNAME', '_audit_link_inserted_wrapper';
REVOKE EXECUTE ON FUNCTION tenancy._audit_link_inserted() FROM PUBLIC;

-- On Citus, a tenant's audit exclusions of a protected Citus table, read by every node's audit
-- triggers (a reference table there, made by tenancy.citus_setup()).
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
CREATE TRIGGER catalog_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tenancy.citus_audit_exclusion
    FOR EACH STATEMENT EXECUTE FUNCTION tenancy.catalog_changed();
CREATE FUNCTION tenancy."_citus_audit_exclusions"() RETURNS TABLE ("tenant_id" uuid, "relid" oid,
        "columns" text[], "set_at" timestamp with time zone, "set_by" text)
VOLATILE PARALLEL UNSAFE STRICT LANGUAGE c AS 'MODULE_PATHNAME', 'citus_audit_exclusions_wrapper';
CREATE OR REPLACE VIEW tenancy.audit_exclusions WITH (security_barrier) AS
    SELECT tenant_id, relid AS "table", columns, set_at, set_by
      FROM tenancy.audit_exclusion WHERE tenancy._manages_tenant(tenant_id)
    UNION ALL
    SELECT tenant_id, relid::regclass, columns, set_at, set_by::name
      FROM tenancy._citus_audit_exclusions();

-- Governance: the tenancy configuration as a canonical document (src/governance/mod.rs).
CREATE FUNCTION tenancy."export_config"("tenant" text DEFAULT NULL) RETURNS jsonb
VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'export_config_wrapper';
CREATE FUNCTION tenancy."plan_config"("doc" jsonb) RETURNS TABLE ("action" text, "object" text,
        "detail" text, "risk" text)
VOLATILE PARALLEL UNSAFE STRICT LANGUAGE c AS 'MODULE_PATHNAME', 'plan_config_wrapper';
CREATE FUNCTION tenancy."apply_config"("doc" jsonb, "allow" text[] DEFAULT '{safe,narrowing}')
        RETURNS TABLE ("action" text, "object" text, "detail" text, "risk" text, "status" text)
VOLATILE PARALLEL UNSAFE STRICT LANGUAGE c AS 'MODULE_PATHNAME', 'apply_config_wrapper';
CREATE FUNCTION tenancy."assert_clean"("expected" jsonb DEFAULT NULL) RETURNS void
VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'assert_clean_wrapper';

-- Per-tenant telemetry and the metrics endpoint (#30).
CREATE FUNCTION tenancy."tenant_stats"() RETURNS TABLE ("tenant" text, "tenant_id" uuid,
        "status" text, "source" text, "binds" bigint, "refused_binds" bigint, "statements" bigint,
        "rows_read" bigint, "rows_written" bigint, "audit_records" bigint,
        "security_events" jsonb, "last_bind" timestamptz, "last_write" timestamptz,
        "bound_sessions" bigint, "time_to_revoke" interval, "tables" jsonb)
VOLATILE PARALLEL UNSAFE STRICT LANGUAGE c AS 'MODULE_PATHNAME', 'tenant_stats_wrapper';
CREATE FUNCTION tenancy."metrics"() RETURNS text
VOLATILE PARALLEL UNSAFE STRICT LANGUAGE c AS 'MODULE_PATHNAME', 'metrics_wrapper';
CREATE VIEW tenancy.tenant_stats AS SELECT * FROM tenancy.tenant_stats();
GRANT SELECT ON tenancy.tenant_stats TO PUBLIC;

-- The protection state digests pg_tenancy's triggers whole (function, events, WHEN,
-- arguments), and pins quote_all_identifiers off (a session's setting made verify() report
-- false drift). The digests recorded by 0.1.0 are recomputed for the tables that had not
-- drifted, and only for them: a table that had drifted still reports it.
-- 0.1.0's digest saw pg_tenancy's triggers by name and enabled state only, and its guard let a
-- table's owner replace one (CREATE OR REPLACE TRIGGER tenancy_audit_ins ... with a function
-- of its choice: writes unaudited, TRUNCATE allowed; an attacker's pass). So a table counts as
-- undrifted only if its tenancy_* triggers are exactly the ones protect() creates: the
-- function, the events (pg_trigger.tgtype: BEFORE 2, INSERT 4, DELETE 8, UPDATE 16, TRUNCATE
-- 32; statement level), the transition tables, no arguments, columns or WHEN, enabled as
-- created, and no other. Any other table keeps its 0.1.0 digest, and verify() reports its drift.
SELECT pg_catalog.set_config('pg_tenancy_upgrade.undrifted',
           coalesce(pg_catalog.string_agg(p.relid::pg_catalog.oid::pg_catalog.text, ','), ''), true)
  FROM tenancy.protected_table p
 WHERE EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) p.relid::pg_catalog.oid)
   AND p.policy_digest OPERATOR(pg_catalog.=) tenancy._protection_digest(p.relid, p.tenant_column)
   AND (SELECT pg_catalog.count(*) FROM pg_catalog.pg_trigger t
         WHERE t.tgrelid OPERATOR(pg_catalog.=) p.relid::pg_catalog.oid
           AND t.tgname OPERATOR(pg_catalog.~~) 'tenancy\_%')
       OPERATOR(pg_catalog.=) CASE WHEN p.audited THEN 4 ELSE 1 END
   AND (SELECT pg_catalog.count(*) FROM pg_catalog.pg_trigger t
          JOIN (VALUES ('tenancy_no_truncate', 34, 'tenancy._refuse_truncate()', NULL, NULL, false),
                       ('tenancy_audit_ins', 4, 'tenancy._audit()', NULL, 'tenancy_new', true),
                       ('tenancy_audit_upd', 16, 'tenancy._audit()', 'tenancy_old', 'tenancy_new', true),
                       ('tenancy_audit_del', 8, 'tenancy._audit()', 'tenancy_old', NULL, true))
               AS e (name, type, func, old, new, audit)
            ON t.tgname OPERATOR(pg_catalog.=) e.name::pg_catalog.name
         WHERE t.tgrelid OPERATOR(pg_catalog.=) p.relid::pg_catalog.oid
           AND (p.audited OR NOT e.audit)
           AND t.tgtype OPERATOR(pg_catalog.=) e.type
           AND t.tgfoid OPERATOR(pg_catalog.=) e.func::pg_catalog.regprocedure::pg_catalog.oid
           AND t.tgoldtable IS NOT DISTINCT FROM e.old::pg_catalog.name
           AND t.tgnewtable IS NOT DISTINCT FROM e.new::pg_catalog.name
           AND t.tgenabled OPERATOR(pg_catalog.=) 'O'
           AND t.tgnargs OPERATOR(pg_catalog.=) 0
           AND t.tgqual IS NULL
           AND pg_catalog.cardinality(t.tgattr::pg_catalog.int2[]) OPERATOR(pg_catalog.=) 0
           AND t.tgconstraint OPERATOR(pg_catalog.=) 0)
       OPERATOR(pg_catalog.=) CASE WHEN p.audited THEN 4 ELSE 1 END;
CREATE OR REPLACE FUNCTION tenancy._protection_state(tbl regclass, col name) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
SET standard_conforming_strings = on
SET quote_all_identifiers = off
AS $$
    SELECT concat_ws(E'\n',
        format('rowsecurity=%s force=%s', c.relrowsecurity, c.relforcerowsecurity),
        (SELECT string_agg(format('policy %s cmd=%s permissive=%s roles=%s using=%s check=%s',
                    p.polname, p.polcmd, p.polpermissive,
                    (SELECT string_agg(CASE WHEN r = 0 THEN 'public' ELSE r::regrole::text END, ',' ORDER BY 1)
                       FROM unnest(p.polroles) AS r),
                    replace(pg_get_expr(p.polqual, p.polrelid),
                            '''' || replace(c.oid::regclass::text, '''', '''''') || '''::regclass', '$table'),
                    replace(pg_get_expr(p.polwithcheck, p.polrelid),
                            '''' || replace(c.oid::regclass::text, '''', '''''') || '''::regclass', '$table')),
                  E'\n' ORDER BY p.polname)
           FROM pg_policy p WHERE p.polrelid = c.oid),
        (SELECT format('column %s type=%s notnull=%s default=%s', a.attname,
                       format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid))
           FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
          WHERE a.attrelid = c.oid AND a.attname = col AND NOT a.attisdropped),
        (SELECT string_agg(format('trigger %s enabled=%s %s', t.tgname, t.tgenabled,
                    replace(pg_get_triggerdef(t.oid), ' ON ' || c.oid::regclass::text || ' ', ' ON $table ')),
                  E'\n' ORDER BY t.tgname)
           FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname LIKE 'tenancy\_%'))
      FROM pg_class c WHERE c.oid = tbl
$$;
-- The generated policies call tenancy.allowed_tenant(table, privilege) bare, not inside a
-- scalar subquery (the rewriter copies a policy's expression into every statement; the planner
-- hook plans the call as the bound tenant, a reserved parameter, or the subquery again). The
-- policies of the tables that had not drifted are rewritten as protect() now writes them, with
-- the guard's ddl_command_end trigger off for the length of it (it would refuse the change of
-- a protected table's policies) and then firing as it did before; tables protected in
-- Citus's form have no restrictive
-- policies and are bare already. Each table is named by its oid as regclass (quoted by
-- PostgreSQL), its tenant column through quote_ident.
DO $upgrade$
DECLARE
    t record;
    tbl pg_catalog.text;
    lit pg_catalog.text;
    col pg_catalog.text;
    -- How the trigger fires now ('O' origin, 'A' always, 'R' replica, 'D' disabled), restored
    -- as it was after the loop.
    mode "char" := (SELECT evtenabled FROM pg_catalog.pg_event_trigger
                     WHERE evtname OPERATOR(pg_catalog.=) 'tenancy_ddl_command_end');
BEGIN
    ALTER EVENT TRIGGER tenancy_ddl_command_end DISABLE;
    FOR t IN
        SELECT p.relid::pg_catalog.oid AS relid, p.tenant_column
          FROM tenancy.protected_table p
         WHERE p.relid::pg_catalog.oid::pg_catalog.text OPERATOR(pg_catalog.=) ANY (
                   pg_catalog.string_to_array(pg_catalog.current_setting('pg_tenancy_upgrade.undrifted'), ','))
           AND EXISTS (SELECT FROM pg_catalog.pg_policy y
                        WHERE y.polrelid OPERATOR(pg_catalog.=) p.relid::pg_catalog.oid
                          AND y.polname OPERATOR(pg_catalog.=) 'tenancy_isolation_select')
    LOOP
        tbl := t.relid::pg_catalog.regclass::pg_catalog.text;
        lit := pg_catalog.quote_literal(t.relid::pg_catalog.text) OPERATOR(pg_catalog.||) '::regclass';
        col := pg_catalog.quote_ident(t.tenant_column);
        EXECUTE pg_catalog.format('ALTER POLICY tenancy_isolation_select ON %s USING (%s = tenancy.allowed_tenant(%s, %L))', tbl, col, lit, 'select');
        EXECUTE pg_catalog.format('ALTER POLICY tenancy_isolation_insert ON %s WITH CHECK (%s = tenancy.allowed_tenant(%s, %L))', tbl, col, lit, 'insert');
        EXECUTE pg_catalog.format('ALTER POLICY tenancy_isolation_update ON %s USING (%s = tenancy.allowed_tenant(%s, %L)) WITH CHECK (%s = tenancy.allowed_tenant(%s, %L))', tbl, col, lit, 'update', col, lit, 'update');
        EXECUTE pg_catalog.format('ALTER POLICY tenancy_isolation_delete ON %s USING (%s = tenancy.allowed_tenant(%s, %L))', tbl, col, lit, 'delete');
        EXECUTE pg_catalog.format('ALTER POLICY tenancy_select ON %s USING (%s = tenancy.allowed_tenant(%s, %L))', tbl, col, lit, 'select');
        EXECUTE pg_catalog.format('ALTER POLICY tenancy_insert ON %s WITH CHECK ((%s = tenancy.allowed_tenant(%s, %L) OR tenancy._cross_tenant_write(%s, %s)))', tbl, col, lit, 'insert', lit, col);
        EXECUTE pg_catalog.format('ALTER POLICY tenancy_update ON %s USING (%s = tenancy.allowed_tenant(%s, %L)) WITH CHECK ((%s = tenancy.allowed_tenant(%s, %L) OR tenancy._cross_tenant_write(%s, %s)))', tbl, col, lit, 'update', col, lit, 'update', lit, col);
        EXECUTE pg_catalog.format('ALTER POLICY tenancy_delete ON %s USING (%s = tenancy.allowed_tenant(%s, %L))', tbl, col, lit, 'delete');
    END LOOP;
    EXECUTE 'ALTER EVENT TRIGGER tenancy_ddl_command_end ' OPERATOR(pg_catalog.||)
        CASE mode WHEN 'A' THEN 'ENABLE ALWAYS' WHEN 'R' THEN 'ENABLE REPLICA'
                  WHEN 'D' THEN 'DISABLE' ELSE 'ENABLE' END;
END
$upgrade$;
UPDATE tenancy.protected_table p
   SET policy_digest = tenancy._protection_digest(p.relid, p.tenant_column)
 WHERE p.relid::pg_catalog.oid::pg_catalog.text OPERATOR(pg_catalog.=) ANY (
           pg_catalog.string_to_array(pg_catalog.current_setting('pg_tenancy_upgrade.undrifted'), ','));

-- A tenant created with default_roles naming admin has had an admin since its first binding:
-- seated, so that removing the default later does not reopen it to operators' widening.
UPDATE tenancy.tenant SET admin_seated_at = pg_catalog.now()
 WHERE admin_seated_at IS NULL
   AND coalesce(settings OPERATOR(pg_catalog.->) 'default_roles' OPERATOR(pg_catalog.?) 'admin', false);

-- The guard's ddl_command_end trigger sees function DDL too: on a Citus worker, a function the
-- shards of protected tables run, or one of pg_tenancy's, is not changed (src/citus/guard.rs,
-- refuse_function_changes).
DROP EVENT TRIGGER tenancy_ddl_command_end;
CREATE EVENT TRIGGER tenancy_ddl_command_end ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE',
                 'CREATE VIEW', 'ALTER VIEW', 'CREATE MATERIALIZED VIEW', 'ALTER MATERIALIZED VIEW',
                 'CREATE SEQUENCE', 'ALTER SEQUENCE',
                 'CREATE POLICY', 'ALTER POLICY', 'DROP POLICY', 'DROP TRIGGER',
                 'ALTER TRIGGER', 'CREATE TRIGGER',
                 -- on a Citus worker, a function the shards of protected tables run
                 'CREATE FUNCTION', 'ALTER FUNCTION', 'ALTER ROUTINE',
                 -- the mapped roles' grants on tenancy.mapped_role, given back
                 'DROP OWNED')
    EXECUTE FUNCTION tenancy._on_ddl_command_end();

CREATE FUNCTION tenancy."_keep_mapped_roles"() RETURNS void
STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'keep_mapped_roles_wrapper';
CREATE OR REPLACE FUNCTION tenancy._on_ddl_command_end() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cmd record;
    touched oid[] := '{}';
    created oid[] := '{}';
BEGIN
    FOR cmd IN SELECT DISTINCT objid, object_type, command_tag FROM pg_event_trigger_ddl_commands() WHERE objid IS NOT NULL
    LOOP
        IF cmd.object_type IN ('table', 'table column') THEN
            PERFORM tenancy._auto_protect_table(cmd.objid);
            touched := touched || cmd.objid;
            IF cmd.command_tag = 'CREATE TABLE' THEN
                created := created || cmd.objid;
            END IF;
        ELSIF cmd.object_type IN ('view', 'materialized view', 'sequence') THEN
            touched := touched || cmd.objid;
        ELSIF cmd.object_type = 'policy' THEN
            touched := touched || (SELECT polrelid FROM pg_policy WHERE oid = cmd.objid);
        ELSIF cmd.object_type = 'trigger' THEN
            touched := touched || (SELECT tgrelid FROM pg_trigger WHERE oid = cmd.objid);
        END IF;
    END LOOP;
    PERFORM tenancy._guard_check(touched);
    PERFORM tenancy._guard_members(touched, created);
    -- DROP OWNED revoked every privilege of the roles it named, a mapped role's grant on
    -- tenancy.mapped_role included: given back to those still mapped.
    IF TG_TAG = 'DROP OWNED' THEN
        PERFORM tenancy._keep_mapped_roles();
    END IF;
END
$$;

-- Every tenant has an audit key from its creation in 0.2.0 (0.1.0 made one at a tenant's first
-- audited write): the tags of a tenant's write and chain locks are keyed by it
-- (audit::lock_tag_fields), and every backend must read the same committed key. Thirty-two
-- bytes from the server's strong random source (two gen_random_uuid(): 244 random bits).
INSERT INTO tenancy.audit_key (tenant_id, secret)
SELECT t.id, pg_catalog.uuid_send(pg_catalog.gen_random_uuid()) OPERATOR(pg_catalog.||) pg_catalog.uuid_send(pg_catalog.gen_random_uuid())
  FROM tenancy.tenant t
 WHERE NOT EXISTS (SELECT FROM tenancy.audit_key k WHERE k.tenant_id OPERATOR(pg_catalog.=) t.id);

-- The lookup of an operator's support grant in a tenant reads one tenant's grants only.
CREATE INDEX ON tenancy.support_grant (tenant_id, operator);

-- Internal: the record ids of an audit chain entry, one row each. On Citus the queries over the
-- trail's distributed tables are printed again for the workers, where they run as the superuser
-- with the worker's default search_path, and a pg_catalog function is printed unqualified:
-- pg_catalog.unnest(anyarray) there lost to any role's own exact-typed unnest(bigint[]) on that
-- path, which ran as the superuser (an attacker's pass). A function of pg_tenancy's schema is
-- printed qualified, and runs with the search_path pinned.
CREATE FUNCTION tenancy._record_ids(ids bigint[]) RETURNS SETOF bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.unnest(ids) $$;
REVOKE EXECUTE ON FUNCTION tenancy._record_ids(bigint[]) FROM PUBLIC;

-- A support grant's privileges are checked by a function of pg_tenancy's schema, which Citus
-- prints qualified when it creates the table's copy on a node (bootstrap.sql).
CREATE FUNCTION tenancy._support_privileges_valid(privileges text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT privileges OPERATOR(pg_catalog.<@) '{select,insert,update,delete}'::text[]
             AND pg_catalog.cardinality(privileges) OPERATOR(pg_catalog.>) 0 $$;
REVOKE EXECUTE ON FUNCTION tenancy._support_privileges_valid(text[]) FROM PUBLIC;
ALTER TABLE tenancy.support_grant
    DROP CONSTRAINT support_grant_privileges_check,
    ADD CONSTRAINT support_grant_privileges_check CHECK (tenancy._support_privileges_valid(privileges));
