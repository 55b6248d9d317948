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
