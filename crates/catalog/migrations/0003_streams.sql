-- Stream tables, change capture from every worker, leases.

CREATE TABLE shoal.stream_table (
    stream_id serial PRIMARY KEY,
    -- The stream table itself, a regular table on the coordinator.
    relid oid NOT NULL UNIQUE,
    query text NOT NULL,
    -- Names in the query resolve as they did when it was defined.
    search_path text NOT NULL,
    requested_mode text NOT NULL CHECK (requested_mode IN ('auto', 'differential', 'full')),
    refresh_mode text NOT NULL CHECK (refresh_mode IN ('differential', 'full')),
    mode_reason text,
    schedule_ms int NOT NULL CHECK (schedule_ms > 0),
    -- Set when the topology changed in a way deltas cannot follow: the next refresh is a
    -- consistent full refresh.
    needs_reinit boolean NOT NULL DEFAULT false,
    -- Change buffer rows up to here are reflected in the stream table.
    consumed_seq bigint NOT NULL DEFAULT 0,
    last_refresh_at timestamptz,
    last_refresh_ms double precision,
    last_refresh_mode text,
    last_rows_changed bigint,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE shoal.stream_source (
    stream_id int NOT NULL REFERENCES shoal.stream_table ON DELETE CASCADE,
    table_id int NOT NULL REFERENCES shoal.distributed_table,
    PRIMARY KEY (stream_id, table_id)
);

-- One logical slot per capture point (every worker; node 0 is the coordinator, whose slot
-- captures reference tables, which are written there), shared by every stream table.
CREATE TABLE shoal.worker_slot (
    node_id int PRIMARY KEY,
    host text NOT NULL,
    port int NOT NULL,
    slot_name text NOT NULL,
    -- Commit LSN of the last transaction whose changes are stored: re-read changes at or below
    -- it are skipped, so a crash between storing and advancing the slot loses and doubles
    -- nothing.
    frontier pg_lsn NOT NULL,
    last_poll_at timestamptz,
    consecutive_failures int NOT NULL DEFAULT 0,
    alert boolean NOT NULL DEFAULT false,
    last_error text
);

CREATE TABLE shoal.change_buffer (
    seq bigserial PRIMARY KEY,
    table_id int NOT NULL,
    shard_id bigint NOT NULL,
    node_id int NOT NULL,
    commit_lsn pg_lsn NOT NULL,
    -- Column values as text, by column name; NULL row for an insert (old) or a delete (new).
    old_row jsonb,
    new_row jsonb
);

CREATE INDEX change_buffer_table ON shoal.change_buffer (table_id, seq);

CREATE TABLE shoal.lease (
    key text PRIMARY KEY,
    holder text NOT NULL,
    acquired_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);

CREATE VIEW shoal.stream_status AS
SELECT s.stream_id, s.relid::regclass AS stream_table, w.node_id,
       coalesce(n.host, w.host) AS host, coalesce(n.port, w.port) AS port,
       w.slot_name, w.frontier, w.last_poll_at, w.consecutive_failures, w.alert,
       l.holder AS lease_holder, l.acquired_at AS lease_acquired_at, l.expires_at AS lease_expires_at,
       CASE WHEN l.key IS NULL THEN 'free'
            WHEN l.expires_at < now() THEN 'expired'
            WHEN l.expires_at < now() + interval '2 seconds' THEN 'expiring'
            ELSE 'held' END AS lease_health,
       s.refresh_mode, s.last_refresh_at, s.last_refresh_ms, s.last_refresh_mode,
       s.last_rows_changed, s.needs_reinit, s.last_error
FROM shoal.stream_table s
CROSS JOIN shoal.worker_slot w
LEFT JOIN shoal.node n ON n.node_id = w.node_id
LEFT JOIN shoal.lease l ON l.key = 'stream:' || s.stream_id;

-- Reference tables are written on the coordinator: their changes are captured by a trigger in
-- the writing transaction (decoding the coordinator's WAL would mean decoding the change buffer's
-- own inserts too), and moved into the change buffer by the capture poll.
CREATE TABLE shoal.reference_change (
    table_id int NOT NULL,
    shard_id bigint NOT NULL,
    old_row jsonb,
    new_row jsonb
);

CREATE FUNCTION shoal.capture_reference_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE shoal.stream_table SET needs_reinit = true WHERE stream_id IN (
            SELECT stream_id FROM shoal.stream_source WHERE table_id = TG_ARGV[0]::int);
        RETURN NULL;
    END IF;
    INSERT INTO shoal.reference_change (table_id, shard_id, old_row, new_row)
    VALUES (TG_ARGV[0]::int, TG_ARGV[1]::bigint,
            CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN to_jsonb(OLD) END,
            CASE WHEN TG_OP IN ('UPDATE', 'INSERT') THEN to_jsonb(NEW) END);
    RETURN NULL;
END
$$;
