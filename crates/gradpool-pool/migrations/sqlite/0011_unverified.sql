-- A drawn audit that no eligible validator serves before its deadline ends
-- `unserved`, and a job that finishes with such an audit ends `unverified`
-- (not `succeeded`): the customer is told, never left to believe it was
-- checked. A job may also be tied to one of its customer's bookings: it
-- then trains only on the booking's providers, inside its window.
-- Both tables are rebuilt to change their CHECK (see 0010).

CREATE TABLE jobs_new (
    id                 TEXT PRIMARY KEY,
    account_id         TEXT NOT NULL REFERENCES accounts(id),
    name               TEXT NOT NULL,
    spec_toml          TEXT NOT NULL,
    data_sha256        TEXT NOT NULL REFERENCES blobs(sha256),
    device             TEXT NOT NULL CHECK (device IN ('any', 'cpu', 'cuda')),
    min_memory_bytes   INTEGER NOT NULL,
    status             TEXT NOT NULL
                       CHECK (status IN ('queued', 'running', 'succeeded', 'unverified', 'failed', 'cancelled')),
    steps              INTEGER NOT NULL,
    checkpoint_every   INTEGER NOT NULL,
    segments_total     INTEGER NOT NULL,
    step               INTEGER NOT NULL DEFAULT 0,
    segments_done      INTEGER NOT NULL DEFAULT 0,
    last_loss          REAL,
    checkpoint_sha256  TEXT,
    -- H_i of the last accepted commitment (the genesis hash before any).
    commitment         TEXT NOT NULL,
    error              TEXT,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    budget             INTEGER NOT NULL DEFAULT 0,
    max_price_per_hour INTEGER,
    flops_per_step     REAL,
    verification       TEXT NOT NULL DEFAULT 'standard'
                       CHECK (verification IN ('none', 'standard', 'paranoid')),
    model              TEXT,
    memory_bytes       INTEGER,
    booking_id         TEXT REFERENCES bookings(id)
);
INSERT INTO jobs_new SELECT id, account_id, name, spec_toml, data_sha256, device,
    min_memory_bytes, status, steps, checkpoint_every, segments_total, step,
    segments_done, last_loss, checkpoint_sha256, commitment, error, created_at,
    updated_at, budget, max_price_per_hour, flops_per_step, verification, model,
    memory_bytes, NULL FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
CREATE INDEX jobs_account ON jobs(account_id, created_at);

CREATE TABLE audits_new (
    id                        TEXT PRIMARY KEY,
    job_id                    TEXT NOT NULL REFERENCES jobs(id),
    segment                   INTEGER NOT NULL,
    -- Who trained the segment.
    provider_id               TEXT NOT NULL,
    -- The trainer's SignedCommitment: the evidence.
    signed                    TEXT NOT NULL,
    start_checkpoint_sha256   TEXT,            -- NULL: the seeded initialisation
    claimed_checkpoint_sha256 TEXT NOT NULL,
    class                     TEXT NOT NULL,   -- the trainer's class
    reason                    TEXT NOT NULL
                              CHECK (reason IN ('sampled', 'paranoid', 'follow_up', 'planted')),
    -- Planted audits only: the right end checkpoint (the claim is known bad).
    truth_sha256              TEXT,
    status                    TEXT NOT NULL
                              CHECK (status IN ('open', 'verified', 'provider_fault', 'validator_fault', 'void', 'unserved')),
    at_fault                  TEXT,
    created_at                INTEGER NOT NULL,
    decided_at                INTEGER
);
INSERT INTO audits_new SELECT id, job_id, segment, provider_id, signed,
    start_checkpoint_sha256, claimed_checkpoint_sha256, class, reason,
    truth_sha256, status, at_fault, created_at, decided_at FROM audits;
DROP TABLE audits;
ALTER TABLE audits_new RENAME TO audits;
CREATE INDEX audits_job ON audits(job_id, status);
