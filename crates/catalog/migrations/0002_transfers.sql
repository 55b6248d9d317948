-- Shard transfers (moves and copies) and their progress.

CREATE TABLE shoal.transfer (
    operation_id bigint PRIMARY KEY,
    operation text NOT NULL CHECK (operation IN ('move', 'copy')),
    mode text NOT NULL CHECK (mode IN ('force_logical', 'block_writes')),
    colocation_id int NOT NULL,
    shard_index int NOT NULL,
    -- The shard the user named; the whole group of its index in its colocation group moves.
    anchor_shard_id bigint NOT NULL,
    source_node int NOT NULL,
    target_node int NOT NULL,
    status text NOT NULL,
    error text,
    cancel_requested boolean NOT NULL DEFAULT false,
    bytes_total bigint,
    bytes_done bigint,
    source_lsn pg_lsn,
    target_lsn pg_lsn,
    -- The source's WAL position when writes were blocked at cutover: changes captured from the
    -- source up to here precede the target's changes of this shard group.
    final_source_lsn pg_lsn,
    cutover_at timestamptz,
    -- How long writes to the group were blocked, in milliseconds.
    write_block_ms double precision,
    -- Which backend waits for a lock at cutover, when it waits.
    waiting_for_pid int,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

-- At most one unfinished transfer per shard group: the catalog's half of the per-shard lock
-- (the other half, an advisory lock, tells whether its process is still alive).
CREATE UNIQUE INDEX transfer_one_per_group ON shoal.transfer (colocation_id, shard_index)
    WHERE finished_at IS NULL;

CREATE TABLE shoal.transfer_shard (
    operation_id bigint NOT NULL REFERENCES shoal.transfer ON DELETE CASCADE,
    shard_id bigint NOT NULL,
    table_name text NOT NULL,
    source_size bigint,
    target_size bigint,
    PRIMARY KEY (operation_id, shard_id)
);

CREATE VIEW shoal.rebalance_progress AS
SELECT t.operation_id, s.table_name, s.shard_id, s.source_size AS shard_size,
       src.host AS source_host, src.port AS source_port,
       tgt.host AS target_host, tgt.port AS target_port,
       CASE WHEN t.status = 'Completed' THEN 1.0
            WHEN coalesce(s.source_size, 0) = 0 THEN 0.0
            ELSE least(1.0, round(s.target_size::numeric / s.source_size, 3)) END AS progress,
       s.source_size AS source_shard_size, s.target_size AS target_shard_size,
       t.operation AS operation_type, t.mode,
       t.source_lsn, t.target_lsn, t.status, t.error,
       t.started_at, t.finished_at, t.write_block_ms
FROM shoal.transfer t
JOIN shoal.transfer_shard s USING (operation_id)
LEFT JOIN shoal.node src ON src.node_id = t.source_node
LEFT JOIN shoal.node tgt ON tgt.node_id = t.target_node
WHERE t.finished_at IS NULL OR t.finished_at > now() - interval '1 day';
