-- Shoal's endpoint commits a transaction that wrote on several servers with two-phase commit:
-- every participant prepares, then the decision to commit is recorded here, then every
-- participant commits. After a crash, a prepared transaction whose decision is recorded is
-- committed, any other rolled back. A row is removed once no participant holds its
-- transaction prepared.

CREATE TABLE shoal.commit_decision (
    -- 'shoal:<endpoint instance>:<transaction>'; each participant prepares it with ':<place>'.
    transaction_id text PRIMARY KEY,
    participants text[] NOT NULL,
    decided_at timestamptz NOT NULL DEFAULT now()
);
