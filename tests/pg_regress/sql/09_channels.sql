-- Channels outside the policies: DDL a table's owner could use to run code over every tenant's
-- rows is refused before it runs (only built-in LEAKPROOF functions may appear), and verify()
-- reports what a schema leaves open, each with the SQL that fixes it.
\set VERBOSITY default
CREATE ROLE regress_owner LOGIN NOSUPERUSER NOBYPASSRLS;
CREATE SCHEMA chan AUTHORIZATION regress_owner;
SET ROLE regress_owner;
CREATE FUNCTION chan.leak(text) RETURNS boolean LANGUAGE plpgsql AS
$$ BEGIN RAISE NOTICE 'leaked: %', $1; RETURN true; END $$;
CREATE TABLE chan.notes (tenant_id uuid NOT NULL, id int NOT NULL, body text, PRIMARY KEY (tenant_id, id));
CREATE TABLE chan.mine (tenant_id uuid, id int, body text);
RESET ROLE;
SELECT tenancy.protect('chan.notes');
INSERT INTO chan.notes VALUES ((SELECT id FROM tenancy.tenants WHERE slug = 'acme'), 1, 'acme secret');

\c - regress_owner
-- Refused, and no NOTICE reaches the owner: nothing ran.
ALTER TABLE chan.notes ADD CONSTRAINT peek CHECK (chan.leak(body));
CREATE INDEX ON chan.notes (chan.leak(body));
CREATE INDEX ON chan.notes (id) WHERE chan.leak(body);
ALTER TABLE chan.notes ADD COLUMN g boolean GENERATED ALWAYS AS (chan.leak(body)) STORED;
ALTER TABLE chan.notes ALTER COLUMN body TYPE int USING body::int;
ALTER TABLE chan.notes INHERIT chan.mine;
CREATE RULE copy AS ON INSERT TO chan.notes DO ALSO INSERT INTO chan.mine VALUES (NEW.*);
-- Built-in leakproof expressions stay the owner's to add.
ALTER TABLE chan.notes ADD CONSTRAINT positive CHECK (id > 0);

\c - postgres
-- The owner can log in and bind: verify() reports it, and its fix clears the row.
SELECT severity, rule, object FROM tenancy.verify() WHERE object LIKE 'chan.%' ORDER BY rule, object;
SELECT fix FROM tenancy.verify() WHERE rule = 'owner_can_bind' AND object = 'chan.notes' \gset
:fix
SELECT count(*) AS owner_rows_left FROM tenancy.verify() WHERE rule = 'owner_can_bind' AND object LIKE 'chan.%';

DROP SCHEMA chan CASCADE;
DROP OWNED BY regress_owner;
DROP ROLE regress_owner;
