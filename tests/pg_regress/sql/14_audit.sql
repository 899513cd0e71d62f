-- The audit trail as a DBA sees it: records of changes, the chain, verification, the
-- append-only guard, tamper detection and retention.
\set VERBOSITY default
CREATE SCHEMA shop;
CREATE TABLE shop.items (tenant_id uuid NOT NULL, id int NOT NULL, label text, secret text, PRIMARY KEY (tenant_id, id));
SELECT tenancy.protect('shop.items');
CREATE ROLE regress_writer LOGIN NOSUPERUSER NOBYPASSRLS;
CREATE ROLE regress_auditor LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT USAGE ON SCHEMA shop TO regress_writer, regress_auditor;
GRANT SELECT, INSERT, UPDATE, DELETE ON shop.items TO regress_writer;
SELECT tenancy.map_role('regress_writer', 'acme', '{member}');
SELECT tenancy.map_role('regress_auditor', 'acme', '{admin}');
-- What a tenant's trail leaves out is the tenant admin's decision, not the platform's.
SELECT tenancy.audit_exclude('shop.items', ARRAY['secret']);

\c - regress_auditor
SELECT tenancy.audit_exclude('shop.items', ARRAY['tenant_id']);
SELECT tenancy.audit_exclude('shop.items', ARRAY['secret']);
SELECT tenant_id IS NOT NULL AS tenant, "table", columns FROM tenancy.audit_exclusions;

\c - regress_writer
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
-- A member does not read the trail (admins of the tenant do).
SELECT count(*) FROM tenancy.audit_log;

\c - postgres
SELECT op, table_name, row_key - 'tenant_id' AS row_key, old_row - 'tenant_id' AS old_row,
       new_row - 'tenant_id' AS new_row, db_role, application_name, length(row_hash) AS hash_bytes
  FROM tenancy.audit_log WHERE table_name = 'shop.items' ORDER BY id;
SELECT ok, first_bad_id, detail FROM tenancy.audit_verify('acme');

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
  FROM tenancy.audit_verify('acme');

-- Anchoring: audit_heads() gives each lane's newest entry (which lanes a tenant's writers used
-- depends on their backends, so only its shape here); audit_verify_heads() checks an anchor
-- taken earlier (an edited record does not move a head) and refuses a malformed one.
SELECT count(*) > 0 AS has_heads, bool_and(length(chain_hash) = 64) AS hex_hashes
  FROM tenancy.audit_heads('acme');
SELECT bool_and(ok) AS anchor_holds
  FROM tenancy.audit_verify_heads((SELECT jsonb_agg(h) FROM tenancy.audit_heads('acme') h));
SELECT * FROM tenancy.audit_verify_heads('{}');

-- The record's text must be inlined into the queries that hash it (management records and
-- audit_verify; see _audit_record_text in finalize.sql): not inlined, the SQL function would
-- be planned again at every call.
DO $$
DECLARE
    line text;
    inlined boolean := false;
BEGIN
    FOR line IN EXPLAIN (VERBOSE, COSTS OFF)
        SELECT tenancy._audit_record_text(s.id, s.t, s.at, s.x, 'tbl', 'INSERT', NULL, NULL, '{}', 'r', 's', 'a', NULL)
          FROM (SELECT nextval('tenancy.audit_log_id_seq') AS id, gen_random_uuid() AS t,
                       clock_timestamp() AS at, 1::bigint AS x) s
    LOOP
        inlined := inlined OR line LIKE '%quote_nullable(%';
    END LOOP;
    RAISE NOTICE 'record text inlined into the writer''s query: %', inlined;
END
$$;

\c - regress_writer
SELECT count(*) FROM shop.items;

-- Linking at commit allocates in a context of its own: a procedure that COMMITs in a loop
-- must not keep every commit's allocations until it returns (it did, about 4 kB a commit).
\c - postgres
GRANT EXECUTE ON FUNCTION pg_get_backend_memory_contexts() TO regress_writer;
GRANT SELECT ON pg_backend_memory_contexts TO regress_writer;
\c - regress_writer
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
REVOKE SELECT ON pg_backend_memory_contexts FROM regress_writer;
REVOKE EXECUTE ON FUNCTION pg_get_backend_memory_contexts() FROM regress_writer;
SELECT count(*) AS records FROM tenancy.audit_log
 WHERE table_name = 'shop.items' AND new_row ->> 'label' = 'loop';
DROP SCHEMA shop CASCADE;
SELECT tenancy.unmap_role('regress_writer', 'acme');
DROP OWNED BY regress_writer;
DROP ROLE regress_writer;
SELECT tenancy.unmap_role('regress_auditor', 'acme');
DROP ROLE regress_auditor;
