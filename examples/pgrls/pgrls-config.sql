-- Writes a pgrls.toml (pgrls, the RLS linter on PyPI) for this database's tables protected by
-- pg_tenancy: every allowlist entry names one object pg_tenancy generated, under a comment that
-- says why the rule does not apply to it. Nothing else is allowlisted: a policy or trigger of
-- your own on the same tables is linted as usual. Run it again after protecting tables.
--
--   psql -X -At -d <database> -f examples/pgrls/pgrls-config.sql > pgrls.toml
--   pgrls lint --database-url postgresql://.../<database> --config pgrls.toml --schemas app
--
-- Names are written as TOML basic strings through to_json() (its escapes are TOML's).
WITH protected AS (
    SELECT c.oid AS relid, n.nspname || '.' || c.relname AS tbl
      FROM tenancy.protected_tables p
      JOIN pg_catalog.pg_class c ON c.oid = p."table"
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
), policies AS (
    SELECT pr.tbl || '.' || pol.polname AS id, pol.polname, pol.polcmd
      FROM protected pr
      JOIN pg_catalog.pg_policy pol ON pol.polrelid = pr.relid
     WHERE pol.polpermissive AND pol.polname IN ('tenancy_select', 'tenancy_insert', 'tenancy_update', 'tenancy_delete')
), triggers AS (
    SELECT pr.tbl || '.' || t.tgname AS id
      FROM protected pr
      JOIN pg_catalog.pg_trigger t ON t.tgrelid = pr.relid
     WHERE t.tgname IN ('tenancy_audit_ins', 'tenancy_audit_upd', 'tenancy_audit_del', 'tenancy_no_truncate')
       AND t.tgfoid IN ('tenancy._audit()'::regprocedure, 'tenancy._refuse_truncate()'::regprocedure)
)
SELECT concat_ws(E'\n',
'# pgrls configuration for the tables pg_tenancy protects (examples/pgrls/pgrls-config.sql).',
'[lint]',
'fail_on = "warning"',
'',
'# SEC003 (permissive policy TO PUBLIC): pg_tenancy''s permissive policies are TO PUBLIC on',
'# purpose, so that every role reaching the table, including roles created later, is confined.',
'# They do not carry the boundary alone: each is paired with a RESTRICTIVE policy of the same',
'# predicate, also TO PUBLIC, which AND-combines with any permissive policy of yours. The',
'# predicate, tenant_id = (SELECT tenancy.allowed_tenant(<table>, <privilege>)), serves no',
'# anonymous or unbound session: allowed_tenant raises 42501 when no tenant is bound.',
'[lint.rules.SEC003]',
'allowlist = [',
coalesce((SELECT string_agg('  ' || to_json(id)::text || ',', E'\n' ORDER BY id) FROM policies), ''),
']',
'',
'# PERF004 (indexed column wrapped in a function): the function is in WITH CHECK only',
'# (tenancy._cross_tenant_write(<table>, tenant_id), which refuses a row written for another',
'# tenant with a security event). WITH CHECK is evaluated on each new row, never used to find',
'# rows, so no index could serve it; the USING clauses compare the bare column.',
'[lint.rules.PERF004]',
'allowlist = [',
coalesce((SELECT string_agg('  ' || to_json(id)::text || ',', E'\n' ORDER BY id) FROM policies WHERE polcmd IN ('a', 'w')), ''),
']',
'',
'# SEC013 (trigger on an RLS table): pg_tenancy''s own triggers. tenancy._audit() writes the',
'# audit record of the row the statement changed (as the statement''s own transaction, into',
'# tenancy.audit_log, which only pg_tenancy writes) and reads no other table''s rows;',
'# tenancy._refuse_truncate() refuses TRUNCATE. Neither is SECURITY DEFINER, and neither returns',
'# anything to the caller.',
'[lint.rules.SEC013]',
'allowlist = [',
coalesce((SELECT string_agg('  ' || to_json(id)::text || ',', E'\n' ORDER BY id) FROM triggers), ''),
']');
