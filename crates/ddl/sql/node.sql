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
