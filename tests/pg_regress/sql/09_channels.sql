-- Channels outside the policies: DDL a table's owner could use to run code over every tenant's
-- rows (CHECK constraints, index expressions and predicates, generated columns, ALTER COLUMN
-- TYPE ... USING, inheriting from an unprotected table, rules) is refused before it runs: only
-- PostgreSQL's built-in LEAKPROOF functions may appear in such an expression, and nothing of
-- the refused DDL runs. verify() reports what a schema still leaves open, each with the SQL
-- that fixes it.
\getenv abs_srcdir PG_ABS_SRCDIR
\set ECHO none
\i :abs_srcdir/helpers/setup.sql
\set ECHO all
\set VERBOSITY default

SELECT tenancy.create_tenant('chan-acme') IS NOT NULL AS created;
CREATE ROLE regress_chan_owner LOGIN NOSUPERUSER NOBYPASSRLS;
CREATE SCHEMA chan AUTHORIZATION regress_chan_owner;
SET ROLE regress_chan_owner;
CREATE FUNCTION chan.leak(text) RETURNS boolean LANGUAGE plpgsql AS
$$ BEGIN RAISE NOTICE 'leaked: %', $1; RETURN true; END $$;
CREATE TABLE chan.notes (tenant_id uuid NOT NULL, id int NOT NULL, body text, PRIMARY KEY (tenant_id, id));
CREATE TABLE chan.mine (tenant_id uuid, id int, body text);
CREATE DOMAIN chan.label AS text;
CREATE DOMAIN chan.peeking AS text CHECK (chan.leak(VALUE));
CREATE TABLE chan.tagged (tenant_id uuid NOT NULL, id int NOT NULL, tag chan.label);
RESET ROLE;
SELECT tenancy.protect('chan.tagged');
SELECT tenancy.protect('chan.notes');
INSERT INTO chan.notes VALUES ((SELECT id FROM tenancy.tenants WHERE slug = 'chan-acme'), 1, 'acme secret');

\c - regress_chan_owner
-- Refused, and no NOTICE reaches the owner: nothing ran.
ALTER TABLE chan.notes ADD CONSTRAINT peek CHECK (chan.leak(body));
CREATE INDEX ON chan.notes (chan.leak(body));
CREATE INDEX ON chan.notes (id) WHERE chan.leak(body);
ALTER TABLE chan.notes ADD COLUMN g boolean GENERATED ALWAYS AS (chan.leak(body)) STORED;
ALTER TABLE chan.notes ALTER COLUMN body TYPE int USING body::int;
ALTER TABLE chan.notes INHERIT chan.mine;
CREATE RULE copy AS ON INSERT TO chan.notes DO ALSO INSERT INTO chan.mine VALUES (NEW.*);
CREATE STATISTICS peek_stats ON (chan.leak(body)) FROM chan.notes;
-- The code a column's type brings counts too: a domain whose constraint calls the owner's
-- function, as a new column's type or as a new constraint of a domain a protected column uses.
ALTER TABLE chan.notes ADD COLUMN p chan.peeking;
ALTER DOMAIN chan.label ADD CONSTRAINT peek CHECK (chan.leak(VALUE));
-- Built-in leakproof expressions stay the owner's to add.
ALTER TABLE chan.notes ADD CONSTRAINT positive CHECK (id > 0);

\c - postgres
-- The owner can log in and bind: verify() reports it, and its fix clears the row.
SELECT severity, rule, object FROM tenancy.verify() WHERE object LIKE 'chan.%' ORDER BY rule, object;
SELECT fix FROM tenancy.verify() WHERE rule = 'owner_can_bind' AND object = 'chan.notes' \gset
\echo :fix
:fix
SELECT count(*) AS owner_rows_left FROM tenancy.verify() WHERE rule = 'owner_can_bind' AND object = 'chan.notes';

DROP SCHEMA chan CASCADE;
DROP OWNED BY regress_chan_owner, app_owner;
DROP ROLE regress_chan_owner;
