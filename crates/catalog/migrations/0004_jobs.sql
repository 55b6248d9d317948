-- Background jobs (a rebalance, a drain), their tasks and the dependencies between tasks; the
-- daemons that run them; rebalance strategies; the progress view with jobs and tasks.

-- Every process that runs tasks (`shoal serve`, or a command running a job in the foreground)
-- registers here. It holds the advisory lock (1397247812, daemon_id) on its catalog session for
-- its whole life, so a lock that nobody holds means a daemon that is gone.
CREATE TABLE shoal.daemon (
    daemon_id serial PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('serve', 'foreground')),
    host text NOT NULL,
    pid int NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at timestamptz
);

CREATE TABLE shoal.job (
    job_id bigserial PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('rebalance', 'drain')),
    description text NOT NULL,
    -- Follows from the states of the job's tasks (see shoal-jobs).
    state text NOT NULL DEFAULT 'scheduled' CHECK (state IN (
        'scheduled', 'running', 'finished', 'cancelling', 'cancelled', 'failing', 'failed')),
    -- How the job was asked for: strategy, mode, parallel flags, per-job limits.
    options jsonb NOT NULL DEFAULT '{}',
    -- The plan the tasks were built from, for the record.
    plan jsonb,
    -- The first task error that failed the job.
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz
);

-- One rebalance or drain at a time: two would plan against the same placements.
CREATE UNIQUE INDEX job_one_rebalance ON shoal.job ((true))
    WHERE kind IN ('rebalance', 'drain') AND finished_at IS NULL;

CREATE TABLE shoal.task (
    task_id bigserial PRIMARY KEY,
    job_id bigint NOT NULL REFERENCES shoal.job ON DELETE CASCADE,
    -- The task's key in the task graph it was built from.
    position int NOT NULL,
    state text NOT NULL CHECK (state IN (
        'blocked', 'runnable', 'running', 'done', 'cancelling', 'error', 'unscheduled',
        'cancelled')),
    -- What the task does, as structured data (shoal-rebalance's TaskOp).
    operation jsonb NOT NULL,
    description text NOT NULL,
    -- Nodes the task works on, for the per-node limit.
    nodes int[] NOT NULL DEFAULT '{}',
    -- Planned size of what it transfers, for progress.
    bytes_total bigint NOT NULL DEFAULT 0,
    retry_count int NOT NULL DEFAULT 0,
    -- A retried task waits until then.
    not_before timestamptz,
    -- The last error, or what recovery did.
    message text,
    -- The daemon running it, and when that daemon last said it still does.
    owner int,
    heartbeat_at timestamptz,
    -- The transfer of its latest attempt.
    operation_id bigint,
    started_at timestamptz,
    finished_at timestamptz,
    UNIQUE (job_id, position)
);

CREATE INDEX task_unfinished ON shoal.task (job_id)
    WHERE state IN ('blocked', 'runnable', 'running', 'cancelling');

CREATE TABLE shoal.task_dependency (
    task_id bigint NOT NULL REFERENCES shoal.task ON DELETE CASCADE,
    depends_on bigint NOT NULL REFERENCES shoal.task ON DELETE CASCADE,
    PRIMARY KEY (task_id, depends_on),
    CHECK (task_id <> depends_on)
);

CREATE INDEX task_dependency_depends_on ON shoal.task_dependency (depends_on);

-- Rebalance strategies, as data: what a shard group costs, node capacities, where colocation
-- groups may not go, and the thresholds (see shoal-rebalance's Strategy).
CREATE TABLE shoal.rebalance_strategy (
    name text PRIMARY KEY,
    is_default boolean NOT NULL DEFAULT false,
    -- {"kind": "shard_count"} or {"kind": "disk_size", "base_cost_bytes": N}
    cost jsonb NOT NULL,
    -- [[node_id, capacity], ...]: nodes not listed have capacity 1.
    capacity_overrides jsonb NOT NULL DEFAULT '[]',
    -- [[colocation_id, node_id], ...]: pairs where the colocation group's shards may not be.
    disallowed jsonb NOT NULL DEFAULT '[]',
    default_threshold double precision NOT NULL CHECK (default_threshold >= 0),
    minimum_threshold double precision NOT NULL DEFAULT 0 CHECK (minimum_threshold >= 0),
    improvement_threshold double precision NOT NULL DEFAULT 0 CHECK (improvement_threshold >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX rebalance_strategy_one_default ON shoal.rebalance_strategy ((true))
    WHERE is_default;

INSERT INTO shoal.rebalance_strategy
    (name, is_default, cost, default_threshold, minimum_threshold, improvement_threshold)
VALUES ('by_shard_count', true, '{"kind": "shard_count"}', 0, 0, 0),
       ('by_disk_size', false, '{"kind": "disk_size", "base_cost_bytes": 104857600}', 0.1, 0.01,
        0.5);

-- Every transfer (as before, plus the job and task that ran it), and every task of an
-- unfinished job that has no transfer yet.
DROP VIEW shoal.rebalance_progress;

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
       t.started_at, t.finished_at, t.write_block_ms,
       k.job_id, k.task_id, k.state AS task_state, k.description AS task
FROM shoal.transfer t
JOIN shoal.transfer_shard s USING (operation_id)
LEFT JOIN shoal.task k ON k.operation_id = t.operation_id
LEFT JOIN shoal.node src ON src.node_id = t.source_node
LEFT JOIN shoal.node tgt ON tgt.node_id = t.target_node
WHERE t.finished_at IS NULL OR t.finished_at > now() - interval '1 day'
UNION ALL
SELECT NULL, NULL, (k.operation ->> 'anchor_shard_id')::bigint, k.bytes_total,
       src.host, src.port, tgt.host, tgt.port,
       CASE WHEN k.state = 'done' THEN 1.0 ELSE 0.0 END,
       k.bytes_total, NULL, NULL, NULL, NULL, NULL,
       CASE k.state WHEN 'done' THEN 'Completed' ELSE 'Not Started Yet' END, k.message,
       k.started_at, k.finished_at, NULL,
       k.job_id, k.task_id, k.state, k.description
FROM shoal.task k
JOIN shoal.job j USING (job_id)
LEFT JOIN shoal.node src ON src.node_id = (k.operation ->> 'from')::int
LEFT JOIN shoal.node tgt ON tgt.node_id = coalesce((k.operation ->> 'to')::int,
                                                   (k.operation ->> 'node_id')::int)
WHERE j.finished_at IS NULL AND k.operation_id IS NULL;
