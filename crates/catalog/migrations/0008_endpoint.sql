-- Shoal's endpoint (`shoal serve --listen`): its commit decisions, its instances, and the
-- fences shard moves raise so that the endpoint's traffic waits at their cutover.

-- Shoal's endpoint commits a transaction that wrote on several servers with two-phase commit:
-- every participant prepares, then the decision to commit is recorded here, then every
-- participant commits. After a crash, recovery commits a prepared transaction whose decision
-- is recorded; for any other it first records the decision to roll back (`committed` false),
-- which the primary key makes race-free against a commit still in progress, then rolls it
-- back. A row is removed once no participant holds its transaction prepared.

CREATE TABLE shoal.commit_decision (
    -- 'shoal:<endpoint instance>:<transaction>'; each participant prepares it with ':<place>'.
    transaction_id text PRIMARY KEY,
    participants text[] NOT NULL,
    committed boolean NOT NULL DEFAULT true,
    decided_at timestamptz NOT NULL DEFAULT now()
);

-- Every running endpoint, holding pg_advisory_lock(0x53484f45, instance) for its lifetime.
CREATE TABLE shoal.endpoint_instance (
    instance integer PRIMARY KEY,
    address text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now()
);

-- A move's cutover raises a fence on its shard group: each live endpoint stops sending
-- statements to the group, waits for its transactions there to end, and acknowledges; the
-- move locks and switches, then lowers the fence, and the endpoints route to the new
-- placement. A fence left by a move that died expires.
CREATE TABLE shoal.endpoint_fence (
    operation_id bigint NOT NULL,
    colocation_id integer NOT NULL,
    shard_index integer NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (operation_id, colocation_id, shard_index)
);

CREATE TABLE shoal.endpoint_fence_ack (
    operation_id bigint NOT NULL,
    instance integer NOT NULL,
    PRIMARY KEY (operation_id, instance)
);
