-- Nodes, colocation groups, distributed tables, shards, placements and cleanup records.

CREATE TABLE shoal.setting (
    key text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE shoal.node (
    node_id serial PRIMARY KEY,
    host text NOT NULL,
    port int NOT NULL CHECK (port BETWEEN 1 AND 65535),
    dbname text NOT NULL,
    username text NOT NULL,
    is_active boolean NOT NULL DEFAULT true,
    should_have_shards boolean NOT NULL DEFAULT true,
    server_version_num int NOT NULL,
    fdw_server text NOT NULL UNIQUE,
    added_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (host, port, dbname)
);

CREATE TABLE shoal.colocation_group (
    colocation_id serial PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('hash', 'reference', 'schema')),
    shard_count int NOT NULL CHECK (shard_count BETWEEN 1 AND 4096),
    -- The distribution column's type, as `format_type` prints it; hash groups only.
    distribution_type text,
    -- The default group of a shard count and type is reused by `table distribute` unless told
    -- otherwise; `--colocate-with none` makes a group that is never picked by default.
    is_default boolean NOT NULL DEFAULT false,
    schema_name text UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX colocation_group_default
    ON shoal.colocation_group (shard_count, distribution_type) WHERE is_default;

CREATE TABLE shoal.distributed_table (
    table_id serial PRIMARY KEY,
    -- The coordinator relation (partitioned table, foreign table, or the reference table itself).
    relid oid NOT NULL UNIQUE,
    kind text NOT NULL CHECK (kind IN ('hash', 'reference', 'schema')),
    distribution_column text,
    colocation_id int NOT NULL REFERENCES shoal.colocation_group,
    -- Constraints and indexes the coordinator table had before distribution (they now live on the
    -- shards); restored by `table undistribute`.
    original_ddl jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE SEQUENCE shoal.shard_id_seq START 102008;

CREATE TABLE shoal.shard (
    shard_id bigint PRIMARY KEY DEFAULT nextval('shoal.shard_id_seq'),
    table_id int NOT NULL REFERENCES shoal.distributed_table ON DELETE CASCADE,
    shard_index int NOT NULL,
    -- Name of the shard table on the workers, and of the foreign partition on the coordinator.
    schema_name text NOT NULL,
    shard_name text NOT NULL,
    UNIQUE (table_id, shard_index)
);

CREATE TABLE shoal.placement (
    placement_id bigserial PRIMARY KEY,
    shard_id bigint NOT NULL REFERENCES shoal.shard ON DELETE CASCADE,
    node_id int NOT NULL REFERENCES shoal.node,
    size_bytes bigint,
    size_measured_at timestamptz,
    UNIQUE (shard_id, node_id)
);

CREATE INDEX placement_node ON shoal.placement (node_id);

CREATE SEQUENCE shoal.operation_id_seq;

-- Written before any object is created on a node, so nothing is ever left behind: after a failure
-- (or a crash) `shoal cleanup` removes what the records name.
CREATE TABLE shoal.cleanup_record (
    record_id bigserial PRIMARY KEY,
    operation_id bigint NOT NULL,
    object_type text NOT NULL
        CHECK (object_type IN ('shard_table', 'publication', 'subscription', 'replication_slot')),
    schema_name text,
    object_name text NOT NULL,
    node_id int NOT NULL REFERENCES shoal.node,
    policy text NOT NULL CHECK (policy IN ('always', 'on_failure', 'deferred_on_success')),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE VIEW shoal.nodes AS
SELECT n.node_id, n.host, n.port, n.dbname, n.is_active, n.should_have_shards,
       n.server_version_num,
       (SELECT count(*) FROM shoal.placement p WHERE p.node_id = n.node_id) AS placements,
       (SELECT coalesce(sum(p.size_bytes), 0) FROM shoal.placement p WHERE p.node_id = n.node_id)
           AS size_bytes
FROM shoal.node n;

CREATE VIEW shoal.shards AS
SELECT t.relid::regclass AS table_name, t.kind, s.shard_id, s.shard_index,
       format('%I.%I', s.schema_name, s.shard_name) AS shard_table,
       p.node_id, n.host, n.port, p.size_bytes, p.size_measured_at
FROM shoal.shard s
JOIN shoal.distributed_table t USING (table_id)
JOIN shoal.placement p USING (shard_id)
JOIN shoal.node n USING (node_id);
