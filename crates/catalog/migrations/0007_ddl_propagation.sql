-- DDL propagation: what each statement on a managed table did to its shards and replicas.
-- The event triggers and functions that do it are installed (and replaced) by `shoal init`.

CREATE TABLE shoal.ddl_change (
    change_id bigserial PRIMARY KEY,
    -- No foreign key: a table's history outlives it (a DROP is recorded too).
    table_id int NOT NULL,
    command_tag text NOT NULL,
    -- The operations sent to every shard, as `shoal.ddl_plan` planned them.
    operations jsonb NOT NULL,
    coordinator_xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    changed_by text NOT NULL DEFAULT current_user,
    changed_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX ddl_change_table ON shoal.ddl_change (table_id, change_id);
