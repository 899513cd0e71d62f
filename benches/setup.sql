-- Benchmark data set: the same orders and order items in seven schemas, one per variant, and
-- the orders once more in an eighth, bench_const.
--   bench_filter  unprotected; the application writes WHERE tenant_id = $t (the floor)
--   bench_naive   hand-written policy tenant_id = current_setting('app.tenant_id')::uuid
--   bench_tuned   the same, wrapped as (SELECT current_setting('app.tenant_id')::uuid)
--   bench_tenancy tenancy.protect(), RBAC on, bound by tenancy.bind(token)
--   bench_noaudit tenancy.protect(audit => false), for the audit comparison
--   bench_plaudit unprotected + a PL/pgSQL row-level audit trigger (audit-trigger style, slimmed)
--   bench_plfull  unprotected + the audit trigger as audit-trigger (wiki: Audit_trigger_91plus)
--                 publishes it, with jsonb for hstore
--   bench_const   orders only, under a policy on tenant 1 as a constant (server-cost reference)
-- psql variables: ntenants, nrows.
\set ON_ERROR_STOP 1
CREATE EXTENSION IF NOT EXISTS pg_tenancy;
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE SCHEMA bench;
CREATE ROLE bench_app LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT USAGE ON SCHEMA bench TO bench_app;

SELECT tenancy.add_key('bench', 'HS256', 'bench-secret-bench-secret-bench-secret!!');
CREATE FUNCTION bench.b64url(bytea) RETURNS text LANGUAGE sql IMMUTABLE AS
$$ SELECT translate(rtrim(encode($1, 'base64'), '='), E'+/\n', '-_') $$;
CREATE FUNCTION bench.token(tenant text, ttl int DEFAULT 86400) RETURNS text LANGUAGE sql AS $$
    SELECT h || '.' || p || '.' || bench.b64url(hmac(h || '.' || p, 'bench-secret-bench-secret-bench-secret!!', 'sha256'))
      FROM (SELECT bench.b64url(convert_to('{"alg":"HS256","kid":"bench"}', 'UTF8')) AS h,
                   bench.b64url(convert_to(json_build_object('tid', tenant, 'sub', 'bench-user',
                        'exp', extract(epoch FROM now())::bigint + ttl)::text, 'UTF8')) AS p) s
$$;

-- Tenants: n -> uuid and a token, looked up by every variant's script the same way.
CREATE TABLE bench.tenants (n int PRIMARY KEY, tid uuid NOT NULL, token text NOT NULL);
INSERT INTO bench.tenants (n, tid, token)
SELECT g, tenancy.create_tenant('bench-' || g, settings => '{"default_roles": ["member"]}'), '' FROM generate_series(1, :ntenants) g;
UPDATE bench.tenants SET token = bench.token(tid::text);
-- (the UPDATE left a dead version of every row, which each script's token lookup would visit)
VACUUM ANALYZE bench.tenants;
GRANT SELECT ON bench.tenants TO bench_app;
CREATE SEQUENCE bench.ids START 100000000;
GRANT USAGE ON SEQUENCE bench.ids TO bench_app;

-- A PL/pgSQL audit trigger in the style of the widely used audit-trigger: the row as jsonb
-- into a log table, one row trigger per changed row.
CREATE TABLE bench.logged_actions (
    event_id bigserial PRIMARY KEY, schema_name text, table_name text, relid oid,
    session_user_name text, action_tstamp timestamptz DEFAULT now(), transaction_id bigint,
    application_name text, client_addr inet, action text, row_data jsonb, changed_fields jsonb);
GRANT INSERT ON bench.logged_actions TO bench_app;
GRANT USAGE ON SEQUENCE bench.logged_actions_event_id_seq TO bench_app;
CREATE FUNCTION bench.if_modified() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench.logged_actions (schema_name, table_name, relid, session_user_name, transaction_id,
                                      application_name, client_addr, action, row_data, changed_fields)
    VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_RELID, session_user, txid_current(),
            current_setting('application_name'), inet_client_addr(), substring(TG_OP, 1, 1),
            CASE WHEN TG_OP = 'INSERT' THEN to_jsonb(NEW) ELSE to_jsonb(OLD) END,
            CASE WHEN TG_OP = 'UPDATE' THEN (SELECT jsonb_object_agg(key, value) FROM jsonb_each(to_jsonb(NEW)) n
                                              WHERE to_jsonb(OLD) -> key IS DISTINCT FROM value) END);
    RETURN NULL;
END
$$;

-- The same trigger as audit-trigger publishes it (wiki.postgresql.org/wiki/Audit_trigger_91plus),
-- with jsonb where it uses hstore: three timestamps, the client's port and the top-level query
-- text in every record (its default, audit_query_text), the row built as a composite and
-- inserted whole, and the three indexes its script creates on the log table.
CREATE TABLE bench.logged_actions_full (
    event_id bigserial PRIMARY KEY, schema_name text NOT NULL, table_name text NOT NULL, relid oid NOT NULL,
    session_user_name text, action_tstamp_tx timestamptz NOT NULL, action_tstamp_stm timestamptz NOT NULL,
    action_tstamp_clk timestamptz NOT NULL, transaction_id bigint, application_name text, client_addr inet,
    client_port integer, client_query text, action text NOT NULL CHECK (action IN ('I', 'D', 'U', 'T')),
    row_data jsonb, changed_fields jsonb, statement_only boolean NOT NULL);
CREATE INDEX logged_actions_full_relid_idx ON bench.logged_actions_full (relid);
CREATE INDEX logged_actions_full_action_tstamp_tx_stm_idx ON bench.logged_actions_full (action_tstamp_stm);
CREATE INDEX logged_actions_full_action_idx ON bench.logged_actions_full (action);
CREATE FUNCTION bench.if_modified_full() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    audit_row bench.logged_actions_full;
BEGIN
    audit_row = ROW(nextval('bench.logged_actions_full_event_id_seq'), TG_TABLE_SCHEMA::text, TG_TABLE_NAME::text,
        TG_RELID, session_user::text, current_timestamp, statement_timestamp(), clock_timestamp(), txid_current(),
        current_setting('application_name'), inet_client_addr(), inet_client_port(), current_query(),
        substring(TG_OP, 1, 1), NULL, NULL, 'f');
    IF TG_OP = 'UPDATE' THEN
        audit_row.row_data = to_jsonb(OLD);
        audit_row.changed_fields = (SELECT jsonb_object_agg(key, value) FROM jsonb_each(to_jsonb(NEW))
                                     WHERE audit_row.row_data -> key IS DISTINCT FROM value);
        IF audit_row.changed_fields IS NULL THEN
            RETURN NULL;
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        audit_row.row_data = to_jsonb(OLD);
    ELSIF TG_OP = 'INSERT' THEN
        audit_row.row_data = to_jsonb(NEW);
    END IF;
    INSERT INTO bench.logged_actions_full VALUES (audit_row.*);
    RETURN NULL;
END
$$;

DO $$
DECLARE
    s text;
BEGIN
    FOREACH s IN ARRAY ARRAY['bench_filter', 'bench_naive', 'bench_tuned', 'bench_tenancy', 'bench_noaudit', 'bench_plaudit', 'bench_plfull'] LOOP
        EXECUTE format('CREATE SCHEMA %I', s);
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO bench_app', s);
        EXECUTE format($f$
            CREATE TABLE %1$I.orders (
                tenant_id uuid NOT NULL, id bigint NOT NULL, amount numeric NOT NULL, status int NOT NULL,
                note text, PRIMARY KEY (tenant_id, id))$f$, s);
        EXECUTE format($f$
            CREATE TABLE %1$I.items (
                tenant_id uuid NOT NULL, order_id bigint NOT NULL, line int NOT NULL, qty int NOT NULL,
                PRIMARY KEY (tenant_id, order_id, line))$f$, s);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO bench_app', s);
    END LOOP;
END
$$;

INSERT INTO bench_filter.orders
SELECT t.tid, g, (g * 7919) % 1000, g % 5, 'order ' || g
  FROM bench.tenants t, generate_series(1, :nrows) g;
INSERT INTO bench_filter.items
SELECT o.tenant_id, o.id, l, 1 + (o.id + l) % 9 FROM bench_filter.orders o, generate_series(1, 2) l;
DO $$
DECLARE
    s text;
BEGIN
    FOREACH s IN ARRAY ARRAY['bench_naive', 'bench_tuned', 'bench_tenancy', 'bench_noaudit', 'bench_plaudit',
                             'bench_plfull'] LOOP
        EXECUTE format('INSERT INTO %I.orders SELECT * FROM bench_filter.orders', s);
        EXECUTE format('INSERT INTO %I.items SELECT * FROM bench_filter.items', s);
    END LOOP;
END
$$;

-- naive and tuned: hand-written policies on the application's setting.
DO $$
DECLARE
    s text; t text; expr text;
BEGIN
    FOREACH s IN ARRAY ARRAY['bench_naive', 'bench_tuned'] LOOP
        expr := CASE s WHEN 'bench_naive' THEN $e$current_setting('app.tenant_id')::uuid$e$
                       ELSE $e$(SELECT current_setting('app.tenant_id')::uuid)$e$ END;
        FOREACH t IN ARRAY ARRAY['orders', 'items'] LOOP
            EXECUTE format('ALTER TABLE %I.%I ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY', s, t);
            EXECUTE format('CREATE POLICY tenant ON %I.%I USING (tenant_id = %s) WITH CHECK (tenant_id = %s)', s, t, expr, expr);
            EXECUTE format($f$ALTER TABLE %I.%I ALTER COLUMN tenant_id SET DEFAULT current_setting('app.tenant_id')::uuid$f$, s, t);
        END LOOP;
    END LOOP;
END
$$;

-- const: the orders under a policy whose qual is tenant 1 as a constant. Not a design anyone
-- could ship (one tenant per table); the server-cost table's reference for what a policy costs
-- when the binding reaches the planner as a constant (no scalar subquery, no InitPlan).
CREATE SCHEMA bench_const;
GRANT USAGE ON SCHEMA bench_const TO bench_app;
CREATE TABLE bench_const.orders (LIKE bench_filter.orders INCLUDING ALL);
INSERT INTO bench_const.orders SELECT * FROM bench_filter.orders;
GRANT SELECT ON bench_const.orders TO bench_app;
ALTER TABLE bench_const.orders ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
DO $$
BEGIN
    EXECUTE format('CREATE POLICY tenant ON bench_const.orders USING (tenant_id = %L::uuid)',
                   (SELECT tid FROM bench.tenants WHERE n = 1));
END
$$;

SELECT tenancy.protect('bench_tenancy.orders');
SELECT tenancy.protect('bench_tenancy.items');
SELECT tenancy.protect('bench_noaudit.orders', audit => false);
SELECT tenancy.protect('bench_noaudit.items', audit => false);
CREATE TRIGGER audit_trigger_row AFTER INSERT OR UPDATE OR DELETE ON bench_plaudit.orders
    FOR EACH ROW EXECUTE FUNCTION bench.if_modified();
CREATE TRIGGER audit_trigger_row AFTER INSERT OR UPDATE OR DELETE ON bench_plfull.orders
    FOR EACH ROW EXECUTE FUNCTION bench.if_modified_full();

-- A login role mapped to tenant 1: a bound session without a bind statement, to measure the
-- per-statement cost of the policies alone ("bound session" targets).
CREATE ROLE bench_mapped LOGIN NOSUPERUSER NOBYPASSRLS;
GRANT USAGE ON SCHEMA bench, bench_tenancy, bench_noaudit TO bench_mapped;
GRANT SELECT ON bench.tenants TO bench_mapped;
GRANT USAGE ON SEQUENCE bench.ids TO bench_mapped;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA bench_tenancy, bench_noaudit TO bench_mapped;
SELECT tenancy.map_role('bench_mapped', (SELECT tid::text FROM bench.tenants WHERE n = 1), '{member}');
-- The same session with tenancy.plan_binding_as_param off: pg_tenancy's policies planned as
-- written (an InitPlan per table), to show what the planner hook of src/pg/binding_param.rs saves.
CREATE ROLE bench_written LOGIN NOSUPERUSER NOBYPASSRLS IN ROLE bench_mapped;
ALTER ROLE bench_written SET tenancy.plan_binding_as_param = off;
SELECT tenancy.map_role('bench_written', (SELECT tid::text FROM bench.tenants WHERE n = 1), '{member}');
VACUUM ANALYZE;
