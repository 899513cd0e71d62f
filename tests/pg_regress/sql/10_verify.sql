-- verify(): every hazard a schema can hold that row security alone does not cover is reported
-- as a row (severity 'error' or 'warning', the rule, the object, why, and the SQL that fixes
-- it). Each case below builds one hazard, shows verify()'s row, runs its fix and shows the row
-- gone. A schema with no 'error' row is safe to serve tenants from. verify() is for operators.
\getenv abs_srcdir PG_ABS_SRCDIR
\set ECHO none
\i :abs_srcdir/helpers/setup.sql
\set ECHO all
\set VERBOSITY default

SELECT tenancy.create_tenant('ver-acme') IS NOT NULL AS created;
CREATE ROLE regress_ver_app LOGIN NOSUPERUSER NOBYPASSRLS;
CREATE ROLE regress_ver_ops LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT tenancy_operator TO regress_ver_ops;
CREATE SCHEMA ver;
GRANT USAGE ON SCHEMA ver TO regress_ver_app;
CREATE TABLE ver.parent (tenant_id uuid NOT NULL, id int NOT NULL, body text, PRIMARY KEY (tenant_id, id));
CREATE TABLE ver.child (tenant_id uuid NOT NULL, id int NOT NULL, parent_id int, PRIMARY KEY (tenant_id, id));
SELECT tenancy.protect('ver.parent');
SELECT tenancy.protect('ver.child');
GRANT SELECT, INSERT, UPDATE, DELETE ON ver.parent, ver.child TO regress_ver_app;
-- This file's findings: rows about schema ver or this file's roles (tenant uuids masked).
CREATE FUNCTION pg_temp.findings(rule_like text DEFAULT '%')
RETURNS TABLE (severity text, rule text, object text, detail text, fix text) LANGUAGE sql AS $$
    SELECT v.severity, v.rule, v.object,
           regexp_replace(v.detail, '[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}', '<uuid>', 'g'), v.fix
      FROM tenancy.verify() v
     WHERE v.rule LIKE rule_like
       AND (v.object ~ '(^|[ .])(ver\.|regress_ver)' OR v.detail ~ '(^|[ ,(])ver\.' OR v.object ~ '^regress_ver')
     ORDER BY v.rule, v.object
$$;

-- A protected schema, owned by a role no application session can be: nothing to report.
SELECT * FROM pg_temp.findings();
\x on

-- unprotected_tenant_table: a table with a tenant column that is not protected.
CREATE TABLE ver.loose (tenant_id uuid, note text);
SELECT * FROM pg_temp.findings();
SELECT fix FROM pg_temp.findings('unprotected_tenant_table') \gexec
SELECT count(*) AS left FROM pg_temp.findings('unprotected_tenant_table');

-- missing_tenant_index: no index led by the tenant column (protect() made one; dropped here).
SELECT indexrelid::regclass AS loose_index FROM pg_index WHERE indrelid = 'ver.loose'::regclass \gset
DROP INDEX :loose_index;
SELECT * FROM pg_temp.findings();
SELECT fix FROM pg_temp.findings('missing_tenant_index') \gexec
SELECT count(*) AS left FROM pg_temp.findings('missing_tenant_index');

-- unique_without_tenant, fk_without_tenant: a key without the tenant column is an existence
-- oracle across tenants, and a foreign key without it can point into another tenant.
ALTER TABLE ver.parent ADD CONSTRAINT parent_id_key UNIQUE (id);
ALTER TABLE ver.child ADD CONSTRAINT child_parent_fk FOREIGN KEY (parent_id) REFERENCES ver.parent (id);
SELECT * FROM pg_temp.findings();
SELECT fix FROM pg_temp.findings('fk_without_tenant') \gexec
SELECT fix FROM pg_temp.findings('unique_without_tenant') \gexec
SELECT count(*) AS left FROM pg_temp.findings('%_without_tenant');

-- The fixes run in verify()'s order, top to bottom, all succeed: a primary key without the
-- tenant column that foreign keys (one of them its own table's) reference is rewritten after
-- those foreign keys are dropped, and they come back with the tenant column, their actions
-- kept; a unique index that is no constraint's is rebuilt led by the tenant column. A second
-- verify() then finds the tenant index protect() made redundant beside the new keys.
CREATE TABLE ver.notes (tenant_id uuid NOT NULL, id int PRIMARY KEY, body text, parent int REFERENCES ver.notes (id));
CREATE TABLE ver.comments (tenant_id uuid NOT NULL, id int NOT NULL,
                           note_id int REFERENCES ver.notes (id) ON DELETE SET NULL, PRIMARY KEY (tenant_id, id));
CREATE TABLE ver.codes (tenant_id uuid NOT NULL, code text NOT NULL);
CREATE UNIQUE INDEX codes_code ON ver.codes (code);
CREATE TABLE ver.code_refs (tenant_id uuid NOT NULL, code text REFERENCES ver.codes (code) MATCH FULL DEFERRABLE);
SELECT tenancy.protect(t) FROM unnest(ARRAY['ver.notes', 'ver.comments', 'ver.codes', 'ver.code_refs']::regclass[]) t;
CREATE FUNCTION pg_temp.in_order() RETURNS TABLE (rule text, object text, fix text) LANGUAGE sql AS $$
    SELECT v.rule, v.object, v.fix FROM tenancy.verify() v
     WHERE v.object ~ '^ver\.(notes|comments|codes|code_refs)'
$$;
SELECT * FROM pg_temp.in_order();
SET client_min_messages = warning;
SELECT fix FROM pg_temp.in_order() \gexec
RESET client_min_messages;
SELECT * FROM pg_temp.in_order();
SELECT fix FROM pg_temp.in_order() \gexec
SELECT count(*) AS left FROM pg_temp.in_order();
SELECT conrelid::regclass AS "table", conname, pg_get_constraintdef(oid) AS definition
  FROM pg_constraint WHERE conrelid IN ('ver.notes'::regclass, 'ver.comments'::regclass, 'ver.code_refs'::regclass)
 ORDER BY 1, 2;
-- The foreign key now refuses a reference into another tenant's note.
INSERT INTO ver.notes VALUES ('00000000-0000-0000-0000-00000000000a', 1, 'a note');
INSERT INTO ver.comments VALUES ('00000000-0000-0000-0000-00000000000b', 1, 1);
DROP TABLE ver.code_refs, ver.codes, ver.comments, ver.notes;

-- unique_index_without_tenant: a partial unique index (or an expression index, or an
-- exclusion constraint) not led by the tenant column.
CREATE UNIQUE INDEX parent_open_id ON ver.parent (id) WHERE body IS NULL;
SELECT * FROM pg_temp.findings();
SELECT fix FROM pg_temp.findings('unique_index_without_tenant') \gexec
SELECT count(*) AS left FROM pg_temp.findings('unique_index_without_tenant');

-- view_without_security_invoker: a view reads with its owner's privileges.
CREATE VIEW ver.big_parents AS SELECT * FROM ver.parent WHERE id > 100;
SELECT * FROM pg_temp.findings();
SELECT fix FROM pg_temp.findings('view_without_security_invoker') \gexec
SELECT count(*) AS left FROM pg_temp.findings('view_without_security_invoker');

-- materialized_view: one made before its table was protected (a new one is refused, 08_guard).
CREATE TABLE ver.older (tenant_id uuid NOT NULL, id int);
CREATE MATERIALIZED VIEW ver.older_copy AS SELECT * FROM ver.older;
SELECT tenancy.protect('ver.older');
SELECT * FROM pg_temp.findings();
SELECT fix FROM pg_temp.findings('materialized_view') \gexec
SELECT count(*) AS left FROM pg_temp.findings('materialized_view');

-- security_definer_function: a function that reads a protected table as its owner.
CREATE FUNCTION ver.count_parents() RETURNS bigint LANGUAGE sql SECURITY DEFINER AS 'SELECT count(*) FROM ver.parent';
SELECT * FROM pg_temp.findings();
SELECT fix FROM pg_temp.findings('security_definer_function') \gexec
SELECT count(*) AS left FROM pg_temp.findings('security_definer_function');

-- leaky_expression, builtin_nonleakproof_expression: what a superuser (the trusted migration
-- role, whom the guard lets through) adds that runs over every tenant's rows.
CREATE FUNCTION ver.peek(text) RETURNS boolean LANGUAGE sql AS 'SELECT true';
ALTER TABLE ver.parent ADD CONSTRAINT parent_peek CHECK (ver.peek(body));
ALTER TABLE ver.parent ADD CONSTRAINT parent_numeric CHECK (body::numeric > 0) NOT VALID;
SELECT * FROM pg_temp.findings();
SELECT fix FROM pg_temp.findings('%_expression') \gexec
SELECT count(*) AS left FROM pg_temp.findings('%_expression');

-- rule_on_protected_table: a rule's actions see every tenant's writes.
CREATE TABLE ver.copies (id int);
CREATE RULE parent_copy AS ON INSERT TO ver.parent DO ALSO INSERT INTO ver.copies VALUES (NEW.id);
SELECT * FROM pg_temp.findings();
SELECT fix FROM pg_temp.findings('rule_on_protected_table') \gexec
SELECT count(*) AS left FROM pg_temp.findings('rule_on_protected_table');

-- unprotected_parent, partition_unprotected: inheritance a superuser made around the guard.
CREATE TABLE ver.base (tenant_id uuid NOT NULL, id int);
ALTER TABLE ver.child INHERIT ver.base;
CREATE TABLE ver.events (tenant_id uuid NOT NULL, at date NOT NULL) PARTITION BY RANGE (at);
SELECT tenancy.protect('ver.events');
SET session_replication_role = replica;
CREATE TABLE ver.events_2026 PARTITION OF ver.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
RESET session_replication_role;
SELECT * FROM pg_temp.findings();
SELECT fix FROM pg_temp.findings('unprotected_parent') \gexec
SELECT fix FROM pg_temp.findings('partition_unprotected') \gexec
DROP TABLE ver.base;
SELECT count(*) AS left FROM pg_temp.findings('%unprotected%');

-- protection_drift: a protected table no longer as protect() left it.
SET session_replication_role = replica;
ALTER TABLE ver.child NO FORCE ROW LEVEL SECURITY;
RESET session_replication_role;
SELECT * FROM pg_temp.findings();
SELECT fix FROM pg_temp.findings('protection_drift') \gexec
SELECT count(*) AS left FROM pg_temp.findings('protection_drift');

-- truncate_granted, bypass_role_with_access, bypass_role_mapped, tenancy_setting_granted:
-- grants and role attributes that reach around row security.
GRANT TRUNCATE ON ver.child TO regress_ver_app;
CREATE ROLE regress_ver_bypass NOLOGIN BYPASSRLS;
GRANT SELECT ON ver.parent TO regress_ver_bypass;
CREATE ROLE regress_ver_mapped LOGIN BYPASSRLS;
SELECT tenancy.map_role('regress_ver_mapped', 'ver-acme');
GRANT SET ON PARAMETER tenancy.region TO regress_ver_app;
SELECT * FROM pg_temp.findings();
SELECT fix FROM pg_temp.findings() \gexec
SELECT count(*) AS left FROM pg_temp.findings();

-- fk_cascade_from_shared_table: a foreign key of a protected table that cascades from a table
-- the application can write: a write there changes every tenant's rows.
CREATE TABLE ver.shared (id int PRIMARY KEY);
GRANT SELECT, UPDATE, DELETE ON ver.shared TO regress_ver_app;
ALTER TABLE ver.child ADD CONSTRAINT child_shared_fk FOREIGN KEY (parent_id) REFERENCES ver.shared (id) ON DELETE CASCADE;
SELECT * FROM pg_temp.findings();
SELECT fix FROM pg_temp.findings('fk_cascade_from_shared_table') \gexec
SELECT count(*) AS left FROM pg_temp.findings('fk_cascade_from_shared_table');

-- duties_combinable: a platform role that is, or can make itself, both operator and key admin.
CREATE ROLE regress_ver_both LOGIN NOSUPERUSER;
GRANT tenancy_operator, tenancy_key_admin TO regress_ver_both;
SELECT * FROM pg_temp.findings();
SELECT fix FROM pg_temp.findings('duties_combinable') \gexec
SELECT count(*) AS left FROM pg_temp.findings('duties_combinable');

-- trigger_function_owner_can_bind: a trigger function an application role owns (and could
-- replace with a body that sees every tenant's writes).
CREATE FUNCTION ver.touch() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
ALTER FUNCTION ver.touch() OWNER TO regress_ver_app;
CREATE TRIGGER parent_touch BEFORE INSERT ON ver.parent FOR EACH ROW EXECUTE FUNCTION ver.touch();
SELECT * FROM pg_temp.findings();
SELECT fix FROM pg_temp.findings('trigger_function_owner_can_bind') \gexec
SELECT count(*) AS left FROM pg_temp.findings('trigger_function_owner_can_bind');

-- large_objects: large objects have no row security.
SELECT lo_create(0) AS lo \gset
ALTER LARGE OBJECT :lo OWNER TO regress_ver_app;
SELECT * FROM pg_temp.findings();
SELECT fix FROM pg_temp.findings('large_objects') \gexec
SELECT count(*) AS left FROM pg_temp.findings('large_objects');

-- library_not_preloaded: a warning about the server, not the schema (this test's server does
-- not preload pg_tenancy): without it a session's first statement is not held to the limits,
-- and LOCK TABLE on protected tables is not refused.
SELECT severity, rule, object, detail FROM tenancy.verify() WHERE rule = 'library_not_preloaded';
\x off

-- application_role_can_create: a role that reads or writes protected tables and can create in
-- a schema. Every tenant's sessions of the role share it, and a role may set its own
-- search_path: an operator or a function made there runs in other tenants' sessions.
GRANT CREATE ON SCHEMA ver TO regress_ver_app;
SELECT * FROM pg_temp.findings('application_role_can_create');
SELECT fix FROM pg_temp.findings('application_role_can_create') \gexec
SELECT count(*) AS left FROM pg_temp.findings('application_role_can_create');

-- The same through roles: CREATE held by a group role that one login role inherits and
-- another can only SET ROLE to (NOINHERIT), which reads through pg_read_all_data, also only
-- by SET ROLE. Each finding names the role that holds the privilege, from which its fix
-- revokes it (revoking it from a role that inherits it would remove nothing).
CREATE ROLE regress_ver_creators NOLOGIN;
GRANT CREATE ON SCHEMA ver TO regress_ver_creators;
CREATE ROLE regress_ver_inh LOGIN IN ROLE regress_ver_creators;
GRANT SELECT ON ver.parent TO regress_ver_inh;
CREATE ROLE regress_ver_noinh LOGIN NOINHERIT IN ROLE regress_ver_creators, pg_read_all_data;
SELECT * FROM pg_temp.findings('application_role_can_create');
SELECT fix FROM pg_temp.findings('application_role_can_create') \gexec
SELECT count(*) AS left FROM pg_temp.findings('application_role_can_create');

-- The schema is clean again.
SELECT * FROM pg_temp.findings();
SELECT count(*) AS errors FROM pg_temp.findings() WHERE severity = 'error';

-- A session that quotes every identifier protects and verifies as any other: pg_tenancy reads
-- names, types and policies as PostgreSQL prints them by default.
SET quote_all_identifiers = on;
CREATE TABLE ver.quoted (tenant_id uuid NOT NULL, v int);
SELECT tenancy.protect('ver.quoted');
SELECT * FROM pg_temp.findings();
RESET quote_all_identifiers;

-- A function or an operator outside pg_catalog with the name of one of pg_catalog's and
-- arguments of its types is chosen over pg_catalog's polymorphic or coercing one by an
-- unqualified call from a session that has its schema on its search_path (on Citus, Citus's
-- own statements to the workers, as the superuser: an error there). A function of a type of
-- the database's own, or of another name, is not reported.
CREATE FUNCTION public.array_remove(a text[], e text) RETURNS text[] LANGUAGE sql AS 'SELECT a';
CREATE FUNCTION ver.shadow_eq(a regclass, b regclass) RETURNS boolean LANGUAGE sql AS 'SELECT true';
CREATE OPERATOR ver.= (LEFTARG = regclass, RIGHTARG = regclass, FUNCTION = ver.shadow_eq);
CREATE TYPE ver.mine AS (v int);
CREATE FUNCTION ver.cardinality(a ver.mine) RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE FUNCTION ver.not_a_catalog_name(a text[]) RETURNS int LANGUAGE sql AS 'SELECT 1';
-- With a default or VARIADIC, a function matches calls of fewer or more arguments.
CREATE FUNCTION ver.array_position(a int[], e int, s int, extra int DEFAULT 0) RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE FUNCTION ver.concat_ws(VARIADIC a text[]) RETURNS text LANGUAGE sql AS 'SELECT 1';
SELECT severity, object, detail, fix FROM tenancy.verify() WHERE rule = 'catalog_name_shadowed';
DROP FUNCTION public.array_remove(text[], text);
DROP FUNCTION ver.array_position(int[], int, int, int), ver.concat_ws(text[]);
DROP OPERATOR ver.= (regclass, regclass);

-- PostgreSQL keeps no dependency of a regrole column: a mapping of a dropped role would stay,
-- and a role made later with its oid would be bound to the tenant. DROP ROLE in this database
-- unmaps the role first, recorded in the tenant's trail; the DROP undone undoes it.
CREATE ROLE regress_ver_gone LOGIN;
SELECT tenancy.map_role('regress_ver_gone', 'ver-acme');
BEGIN;
DROP ROLE regress_ver_gone;
SELECT count(*) AS mappings_of_no_role FROM tenancy.role_mappings m WHERE NOT EXISTS (SELECT FROM pg_roles r WHERE r.oid = m.role);
ROLLBACK;
SELECT count(*) AS mappings_after_rollback FROM tenancy.role_mappings WHERE role::text = 'regress_ver_gone';
DROP ROLE regress_ver_gone;
SELECT a.new_row->>'action' AS action, a.new_row->>'role' AS role, a.new_row->>'reason' AS reason
  FROM tenancy.audit_log a JOIN tenancy.tenants t ON t.id = a.tenant_id
 WHERE t.slug = 'ver-acme' AND a.op = 'ADMIN' ORDER BY a.id DESC LIMIT 1;
-- In another database, the DROP is refused: a mapped role holds USAGE on tenancy.mapped_role,
-- a dependency PostgreSQL sees from every database.
CREATE ROLE regress_ver_gone LOGIN;
SELECT tenancy.map_role('regress_ver_gone', 'ver-acme');
SELECT has_type_privilege('regress_ver_gone', 'tenancy.mapped_role', 'USAGE') AS holds_the_grant;
\set here :DBNAME
\c postgres
DROP ROLE regress_ver_gone;
\c :here
-- Without that grant (revoked by hand, or mapped before 0.2.0) it is reported, with the fix
-- that gives it back.
REVOKE USAGE ON TYPE tenancy.mapped_role FROM regress_ver_gone;
SELECT severity, rule, object, fix FROM tenancy.verify() WHERE rule = 'mapping_without_dependency';
DO $$ BEGIN EXECUTE (SELECT fix FROM tenancy.verify() WHERE rule = 'mapping_without_dependency'); END $$;
SELECT count(*) AS left_over FROM tenancy.verify() WHERE rule = 'mapping_without_dependency';
-- DROP OWNED revokes it too, and pg_tenancy gives it back at once.
DROP OWNED BY regress_ver_gone;
SELECT count(*) AS left_over FROM tenancy.verify() WHERE rule = 'mapping_without_dependency';
-- Dropped in another database without it, the role leaves its mapping here: reported, with the
-- unmapping that removes it.
REVOKE USAGE ON TYPE tenancy.mapped_role FROM regress_ver_gone;
\c postgres
DROP ROLE regress_ver_gone;
\c :here
SELECT severity, rule, detail FROM tenancy.verify() WHERE rule = 'mapping_of_dropped_role';
DO $$ BEGIN EXECUTE (SELECT fix FROM tenancy.verify() WHERE rule = 'mapping_of_dropped_role'); END $$;
SELECT count(*) AS left_over FROM tenancy.verify() WHERE rule = 'mapping_of_dropped_role';

-- fk_from_shared_table: a table that is not protected, which the application writes, with a
-- foreign key into a protected table: its check runs without row security, so a session of
-- one tenant learns whether another tenant's row exists (and holds it locked). The fix
-- protects it.
CREATE TABLE ver.shared_note (tenant_id uuid NOT NULL, parent_id int NOT NULL,
    FOREIGN KEY (tenant_id, parent_id) REFERENCES ver.parent (tenant_id, id));
GRANT INSERT ON ver.shared_note TO regress_ver_app;
SELECT severity, rule, object, detail FROM tenancy.verify() WHERE rule = 'fk_from_shared_table';
SELECT fix FROM tenancy.verify() WHERE rule = 'fk_from_shared_table' \gexec
SELECT count(*) AS left_over FROM tenancy.verify() WHERE rule = 'fk_from_shared_table';
DROP TABLE ver.shared_note;
-- Every way the application writes such a table counts (an attacker's pass found each one
-- unreported): a group its login role may SET ROLE to though it does not inherit it, a grant
-- on one partition alone, a view whose owner can write the table, and a SECURITY DEFINER
-- function whose owner can and whose text names the table.
CREATE ROLE regress_ver_writers NOLOGIN;
CREATE ROLE regress_ver_noinherit LOGIN NOINHERIT NOSUPERUSER NOBYPASSRLS IN ROLE regress_ver_writers;
CREATE ROLE regress_ver_definer NOLOGIN;
CREATE TABLE ver.shared_grouped (tenant_id uuid NOT NULL, parent_id int NOT NULL,
    FOREIGN KEY (tenant_id, parent_id) REFERENCES ver.parent (tenant_id, id));
GRANT INSERT ON ver.shared_grouped TO regress_ver_writers;
CREATE TABLE ver.shared_parted (k int, tenant_id uuid NOT NULL, parent_id int NOT NULL,
    FOREIGN KEY (tenant_id, parent_id) REFERENCES ver.parent (tenant_id, id)) PARTITION BY RANGE (k);
CREATE TABLE ver.shared_parted_1 PARTITION OF ver.shared_parted FOR VALUES FROM (0) TO (100);
GRANT INSERT ON ver.shared_parted_1 TO regress_ver_app;
CREATE TABLE ver.shared_viewed (tenant_id uuid NOT NULL, parent_id int NOT NULL,
    FOREIGN KEY (tenant_id, parent_id) REFERENCES ver.parent (tenant_id, id));
CREATE VIEW ver.shared_view AS SELECT tenant_id, parent_id FROM ver.shared_viewed;
GRANT INSERT ON ver.shared_view TO regress_ver_app;
CREATE TABLE ver.shared_defined (tenant_id uuid NOT NULL, parent_id int NOT NULL,
    FOREIGN KEY (tenant_id, parent_id) REFERENCES ver.parent (tenant_id, id));
GRANT REFERENCES ON ver.parent TO regress_ver_definer;
GRANT USAGE ON SCHEMA ver TO regress_ver_definer;
ALTER TABLE ver.shared_defined OWNER TO regress_ver_definer;
CREATE FUNCTION ver.put_note(t uuid, p int) RETURNS void LANGUAGE sql SECURITY DEFINER
    SET search_path = pg_catalog AS $$ INSERT INTO ver.shared_defined VALUES (t, p) $$;
ALTER FUNCTION ver.put_note(uuid, int) OWNER TO regress_ver_definer;
REVOKE EXECUTE ON FUNCTION ver.put_note(uuid, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ver.put_note(uuid, int) TO regress_ver_app;
SELECT object, split_part(detail, ', references', 1) AS writer, fix
  FROM tenancy.verify() WHERE rule = 'fk_from_shared_table' ORDER BY object;
DROP TABLE ver.shared_grouped, ver.shared_parted, ver.shared_viewed, ver.shared_defined CASCADE;
DROP FUNCTION ver.put_note(uuid, int);
REVOKE ALL ON ver.parent FROM regress_ver_definer;
REVOKE ALL ON SCHEMA ver FROM regress_ver_definer;
DROP ROLE regress_ver_noinherit, regress_ver_writers, regress_ver_definer;

-- A tenant role's grants go with the table's protection: unprotect() revokes them, recorded
-- in the tenant's trail. A grant that outlived it (kept by an older version's unprotect, made
-- here by hand) is reported, and revoke() removes it.
CREATE TABLE public.ver_granted (id int, tenant_id uuid NOT NULL);
SELECT tenancy.protect('public.ver_granted');
SELECT tenancy.create_role('ver-acme', 'ver_reader');
SELECT tenancy.grant('ver-acme', 'ver_reader', 'public.ver_granted', '{select}');
SELECT tenancy.unprotect('public.ver_granted');
SELECT count(*) AS grants_left FROM tenancy.role_privileges WHERE role = 'ver_reader';
SELECT a.new_row->>'action' AS action, a.new_row->>'role' AS role, a.new_row->>'reason' AS reason
  FROM tenancy.audit_log a JOIN tenancy.tenants t ON t.id = a.tenant_id
 WHERE t.slug = 'ver-acme' AND a.op = 'ADMIN' ORDER BY a.id DESC LIMIT 1;
INSERT INTO tenancy.role_privilege (tenant_id, role, relid, privilege)
SELECT id, 'ver_reader', 'public.ver_granted', 'select' FROM tenancy.tenants WHERE slug = 'ver-acme';
SELECT severity, rule, detail FROM tenancy.verify() WHERE rule = 'grant_on_unprotected_table';
DO $$ BEGIN EXECUTE (SELECT fix FROM tenancy.verify() WHERE rule = 'grant_on_unprotected_table'); END $$;
SELECT count(*) AS left_over FROM tenancy.verify() WHERE rule = 'grant_on_unprotected_table';
SELECT count(*) AS grants_left FROM tenancy.role_privileges WHERE role = 'ver_reader';
DROP TABLE public.ver_granted;

-- catalog_behind_a_schema: a search_path of the database (or of a superuser) that puts a
-- schema before pg_catalog: a superuser's session, and Citus's maintenance daemon, find that
-- schema's relations and functions first. Its fix resets it.
ALTER DATABASE :"DBNAME" SET search_path = public, pg_catalog;
SELECT severity, rule, object, fix FROM tenancy.verify() WHERE rule = 'catalog_behind_a_schema';
SELECT fix FROM tenancy.verify() WHERE rule = 'catalog_behind_a_schema' \gexec
SELECT count(*) AS left_over FROM tenancy.verify() WHERE rule = 'catalog_behind_a_schema';

-- verify() runs without JIT: its one large query estimates high, and compiling its thousand
-- expressions took seconds on every call, most of verify()'s time.
SELECT 'jit=off' = ANY (proconfig) AS verify_without_jit
  FROM pg_proc WHERE oid = 'tenancy.verify()'::regprocedure;

-- verify() is for operators.
\c - regress_ver_ops
SET quote_all_identifiers = on;
SELECT count(*) AS drift FROM tenancy.verify() WHERE rule = 'protection_drift';
RESET quote_all_identifiers;
SELECT count(*) >= 0 AS ran FROM tenancy.verify();
\c - regress_ver_app
SELECT count(*) FROM tenancy.verify();
\c - postgres

DROP SCHEMA ver CASCADE;
SELECT tenancy.unmap_role('regress_ver_mapped', 'ver-acme');
DROP OWNED BY regress_ver_app, regress_ver_bypass, regress_ver_mapped, app_owner;
DROP ROLE regress_ver_creators, regress_ver_inh, regress_ver_noinh, regress_ver_app, regress_ver_ops, regress_ver_bypass, regress_ver_mapped, regress_ver_both;
