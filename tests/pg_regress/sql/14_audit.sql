-- The audit trail: every change to a protected table (INSERT, UPDATE of changed columns,
-- DELETE) and every management action is recorded in tenancy.audit_log in the same
-- transaction, with a keyed hash of the record, and linked per tenant into a hash chain when
-- the transaction commits. The trail is append-only, even for a superuser; audit_verify()
-- finds any record changed, deleted, inserted or reordered behind the guard's back, and the
-- chain's heads can be anchored outside the database. A tenant's admins read its trail and
-- decide which columns it leaves out; operators read metadata only. (Retention: 15_purge.)
\getenv abs_srcdir PG_ABS_SRCDIR
\set ECHO none
\i :abs_srcdir/helpers/setup.sql
\set ECHO all
\set VERBOSITY default

SELECT tenancy.create_tenant('audit-acme') IS NOT NULL AS created;
CREATE SCHEMA shop;
CREATE TABLE shop.items (tenant_id uuid NOT NULL, id int NOT NULL, label text, secret text, PRIMARY KEY (tenant_id, id));
SELECT tenancy.protect('shop.items');
CREATE ROLE regress_audit_writer LOGIN NOSUPERUSER NOBYPASSRLS;
CREATE ROLE regress_audit_admin LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT USAGE ON SCHEMA shop TO regress_audit_writer, regress_audit_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON shop.items TO regress_audit_writer;
SELECT tenancy.map_role('regress_audit_writer', 'audit-acme', '{member}');
SELECT tenancy.map_role('regress_audit_admin', 'audit-acme', '{admin}');
-- What a tenant's trail leaves out is the tenant admin's decision, not the platform's.
SELECT tenancy.audit_exclude('shop.items', ARRAY['secret']);

\c - regress_audit_admin
SELECT tenancy.audit_exclude('shop.items', ARRAY['tenant_id']);
SELECT tenancy.audit_exclude('shop.items', ARRAY['secret']);
SELECT tenant_id IS NOT NULL AS tenant, "table", columns FROM tenancy.audit_exclusions;

\c - regress_audit_writer
INSERT INTO shop.items (id, label, secret) VALUES (1, 'first', 's1'), (2, 'second', 's2');
UPDATE shop.items SET label = 'second, renamed', secret = 's2b' WHERE id = 2;
DELETE FROM shop.items WHERE id = 1;
-- Values the record hash must quote exactly as tenancy._audit_hash does (audit_verify below
-- recomputes it in SQL): quotes, backslashes, a newline and non-ASCII text, an
-- application_name with a quote and a backslash. Then two UPDATEs that change nothing
-- audited (the same value; an excluded column only): their records have no old or new row.
SET application_name = 'it''s a \ test';
INSERT INTO shop.items (id, label, secret) VALUES (4, E'O''Brien \\ "quoted" \n ünïcødé ✓', 's4');
UPDATE shop.items SET label = label WHERE id = 4;
UPDATE shop.items SET secret = 's4b' WHERE id = 4;
RESET application_name;
BEGIN;
INSERT INTO shop.items (id, label) VALUES (3, 'rolled back');
ROLLBACK;
-- A member does not read the trail; the tenant's admins read their tenant's, and operators
-- the records' metadata only (no row contents).
SELECT count(*) FROM tenancy.audit_log;
\c - regress_audit_admin
SELECT op, count(*) FROM tenancy.audit_log WHERE table_name = 'shop.items' GROUP BY op ORDER BY op;
\c - postgres
CREATE ROLE regress_audit_ops LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT tenancy_operator TO regress_audit_ops;
GRANT USAGE ON SCHEMA shop TO regress_audit_ops;
\c - regress_audit_ops
SELECT count(*) AS rows_read FROM tenancy.audit_log;
SELECT op, count(*) FROM tenancy.audit_metadata WHERE table_name = 'shop.items' GROUP BY op ORDER BY op;
SELECT count(*) AS content_columns FROM information_schema.columns
 WHERE table_schema = 'tenancy' AND table_name = 'audit_metadata' AND column_name IN ('row_key', 'old_row', 'new_row');
SELECT ok, detail FROM tenancy.audit_verify('audit-acme');
SELECT tenancy.audit_exclude('shop.items', '{}');

\c - postgres
SELECT op, table_name, row_key - 'tenant_id' AS row_key, old_row - 'tenant_id' AS old_row,
       new_row - 'tenant_id' AS new_row, db_role, application_name, length(row_hash) AS hash_bytes
  FROM tenancy.audit_log WHERE table_name = 'shop.items' ORDER BY id;
SELECT ok, first_bad_id, detail FROM tenancy.audit_verify('audit-acme');

-- Append-only, even for a superuser.
UPDATE tenancy.audit_log SET db_role = 'someone' WHERE table_name = 'shop.items';
DELETE FROM tenancy.audit_log WHERE table_name = 'shop.items';
TRUNCATE tenancy.audit_log;

-- A superuser who disables the guard can edit the table, but not the evidence.
SET session_replication_role = replica;
UPDATE tenancy.audit_log SET new_row = new_row || '{"label": "forged"}'
 WHERE table_name = 'shop.items' AND op = 'INSERT';
RESET session_replication_role;
SELECT ok, first_bad_id = (SELECT min(id) FROM tenancy.audit_log WHERE table_name = 'shop.items') AS points_at_first_edit,
       detail ~ 'was changed' AS says_changed
  FROM tenancy.audit_verify('audit-acme');

-- Anchoring: audit_heads() gives each lane's newest entry (which lanes a tenant's writers used
-- depends on their backends, so only its shape here); audit_verify_heads() checks an anchor
-- taken earlier (an edited record does not move a head) and refuses a malformed one.
SELECT count(*) > 0 AS has_heads, bool_and(length(chain_hash) = 64) AS hex_hashes
  FROM tenancy.audit_heads('audit-acme');
SELECT bool_and(ok) AS anchor_holds
  FROM tenancy.audit_verify_heads((SELECT jsonb_agg(h) FROM tenancy.audit_heads('audit-acme') h));
SELECT * FROM tenancy.audit_verify_heads('{}');

\c - regress_audit_writer
SELECT count(*) FROM shop.items;

-- Linking at commit allocates in a context of its own: a procedure that COMMITs in a loop
-- must not keep every commit's allocations until it returns (it did, about 4 kB a commit).
\c - postgres
GRANT EXECUTE ON FUNCTION pg_get_backend_memory_contexts() TO regress_audit_writer;
GRANT SELECT ON pg_backend_memory_contexts TO regress_audit_writer;
\c - regress_audit_writer
DO $$
DECLARE
    before bigint;
    after bigint;
BEGIN
    FOR i IN 1..2200 LOOP
        INSERT INTO shop.items (id, label) VALUES (1000 + i, 'loop');
        COMMIT;
        IF i = 200 THEN
            SELECT sum(total_bytes) INTO before FROM pg_backend_memory_contexts;
        END IF;
    END LOOP;
    SELECT sum(total_bytes) INTO after FROM pg_backend_memory_contexts;
    RAISE NOTICE 'backend memory grew by less than 1 MB over 2,000 audited commits: %',
        after - before < 1024 * 1024;
END
$$;
SELECT count(*) AS audited_in_the_loop FROM shop.items WHERE label = 'loop';
\c - postgres
REVOKE SELECT ON pg_backend_memory_contexts FROM regress_audit_writer;
REVOKE EXECUTE ON FUNCTION pg_get_backend_memory_contexts() FROM regress_audit_writer;
SELECT count(*) AS records FROM tenancy.audit_log
 WHERE table_name = 'shop.items' AND new_row ->> 'label' = 'loop';

-- What no row trigger sees is recorded before it runs, in each affected tenant's chain, with
-- how many of its rows it touches (for a column, how many hold a value in it): an operator's
-- DROP COLUMN, TRUNCATE and DROP TABLE (also through DROP SCHEMA).
ALTER TABLE shop.items DROP COLUMN secret;
TRUNCATE shop.items;
INSERT INTO shop.items (tenant_id, id, label) SELECT id, 1, 'last' FROM tenancy.tenants WHERE slug = 'audit-acme';
DROP SCHEMA shop CASCADE;
SELECT op, table_name, new_row->>'action' AS action, new_row->>'rows' AS rows, new_row->>'column' AS "column", db_role
  FROM tenancy.audit_log a JOIN tenancy.tenants t ON t.id = a.tenant_id
 WHERE t.slug = 'audit-acme' AND op IN ('TRUNCATE', 'ADMIN') AND table_name = 'shop.items' ORDER BY a.id;

-- A table protected with audit => false writes no records.
CREATE TABLE public.audit_quiet (tenant_id uuid NOT NULL, id int);
SELECT tenancy.protect('public.audit_quiet', audit => false);
SELECT audited FROM tenancy.protected_tables WHERE "table" = 'public.audit_quiet'::regclass;
INSERT INTO public.audit_quiet SELECT id, 1 FROM tenancy.tenants WHERE slug = 'audit-acme';
SELECT count(*) AS records FROM tenancy.audit_log WHERE table_name = 'public.audit_quiet';
DROP TABLE public.audit_quiet;

-- The record hashes are keyed per tenant with a secret only pg_tenancy's owner reads, so no
-- one can confirm a guessed row against its hash; the internal functions are not for calling.
\c - regress_audit_ops
SELECT secret FROM tenancy.audit_key;
SELECT tenancy._audit_row_hash(1, gen_random_uuid(), now(), 1, 't', 'INSERT', NULL, NULL, 'a guessed row', 'r', NULL, NULL, NULL);
\c - postgres
SELECT tenancy.unmap_role('regress_audit_writer', 'audit-acme');
DROP OWNED BY regress_audit_writer;
DROP ROLE regress_audit_writer;
SELECT tenancy.unmap_role('regress_audit_admin', 'audit-acme');
DROP ROLE regress_audit_admin, regress_audit_ops;
