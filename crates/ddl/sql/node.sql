-- What a node needs to take DDL from the coordinator: an inbox the coordinator writes to through
-- its postgres_fdw connection. A row's statements run inside that connection's transaction, so
-- they commit or roll back with the coordinator's, savepoints included, and later statements of
-- the same coordinator transaction (a backfill after ADD COLUMN) see them.
--
-- Rows stay as a record of what each node applied (with the coordinator transaction's id).

CREATE SCHEMA IF NOT EXISTS shoal_worker;
REVOKE ALL ON SCHEMA shoal_worker FROM PUBLIC;

CREATE TABLE IF NOT EXISTS shoal_worker.ddl_inbox (
    id bigserial PRIMARY KEY,
    coordinator_xid text,
    statements text[] NOT NULL,
    -- A table to describe once the statements ran (its definition goes back in `result`).
    describe text,
    result jsonb,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION shoal_worker.apply_ddl() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    statement text;
BEGIN
    FOREACH statement IN ARRAY NEW.statements LOOP
        EXECUTE statement;
    END LOOP;
    IF NEW.describe IS NOT NULL THEN
        NEW.result := shoal_worker.describe_table(NEW.describe::regclass);
    END IF;
    RETURN NEW;
END
$fn$;

DROP TRIGGER IF EXISTS apply_ddl ON shoal_worker.ddl_inbox;
CREATE TRIGGER apply_ddl BEFORE INSERT ON shoal_worker.ddl_inbox
    FOR EACH ROW EXECUTE FUNCTION shoal_worker.apply_ddl();

-- Shoal's endpoint sends a node an INSERT that leaves columns out (the shard, which keeps no
-- defaults, gives them NULL) only while its view of the tables is current: it runs this first,
-- in the INSERT's transaction. The lock is the one the INSERT takes anyway, and DDL on the
-- shard needs a stronger one, so no DDL lands between this check and the INSERT; every DDL a
-- node applies adds an inbox row, whose id is the tables' version.
CREATE OR REPLACE FUNCTION shoal_worker.expect_tables(known bigint, shard regclass)
RETURNS boolean LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format('LOCK TABLE %s IN ROW EXCLUSIVE MODE', shard);
    IF coalesce((SELECT max(id) FROM shoal_worker.ddl_inbox), 0) <> known THEN
        RAISE EXCEPTION 'table % changed while Shoal''s endpoint routed this statement', shard
            USING ERRCODE = '40001', HINT = 'Run the statement again.';
    END IF;
    RETURN true;
END
$fn$;

-- The tables' version, as the endpoint reads it.
CREATE OR REPLACE FUNCTION shoal_worker.tables_version() RETURNS bigint
LANGUAGE sql STABLE AS $fn$
    SELECT coalesce(max(id), 0) FROM shoal_worker.ddl_inbox
$fn$;
