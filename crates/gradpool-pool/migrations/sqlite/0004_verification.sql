-- Verification: audits of committed segments, validators' replays, verdicts,
-- reputation and rollbacks.

ALTER TABLE providers ADD COLUMN validate INTEGER NOT NULL DEFAULT 0;
-- 0 for a dedicated validator: replays only.
ALTER TABLE providers ADD COLUMN trains INTEGER NOT NULL DEFAULT 1;
-- Audits passed since the last fault (the reputation's input).
ALTER TABLE providers ADD COLUMN streak INTEGER NOT NULL DEFAULT 0;
ALTER TABLE providers ADD COLUMN faults INTEGER NOT NULL DEFAULT 0;
-- Set when a validator answered a planted audit wrongly: it gets no more
-- replays.
ALTER TABLE providers ADD COLUMN validator_barred INTEGER NOT NULL DEFAULT 0;

ALTER TABLE jobs ADD COLUMN verification TEXT NOT NULL DEFAULT 'standard';

-- 'train' or 'replay'; a replay task belongs to an audit.
ALTER TABLE tasks ADD COLUMN kind TEXT NOT NULL DEFAULT 'train';
ALTER TABLE tasks ADD COLUMN audit_id TEXT;
CREATE INDEX tasks_audit ON tasks(audit_id);

-- accepted (not drawn) | auditing | verified
ALTER TABLE commitments ADD COLUMN status TEXT NOT NULL DEFAULT 'accepted';

-- Commitments a rollback removed from a job's chain: the fraudulent one and
-- those built on it.
CREATE TABLE discarded_commitments (
    job_id            TEXT NOT NULL REFERENCES jobs(id),
    segment           INTEGER NOT NULL,
    provider_id       TEXT NOT NULL,
    task_id           TEXT NOT NULL,
    checkpoint_sha256 TEXT NOT NULL,
    hash              TEXT NOT NULL,
    signed            TEXT NOT NULL,
    status            TEXT NOT NULL,
    committed_at      INTEGER NOT NULL,
    audit_id          TEXT NOT NULL,      -- the audit whose verdict discarded it
    discarded_at      INTEGER NOT NULL
);
CREATE INDEX discarded_job ON discarded_commitments(job_id, segment);

CREATE TABLE audits (
    id                        TEXT PRIMARY KEY,
    job_id                    TEXT NOT NULL REFERENCES jobs(id),
    segment                   INTEGER NOT NULL,
    -- Who trained the segment.
    provider_id               TEXT NOT NULL,
    -- The trainer's SignedCommitment (JSON): the evidence.
    signed                    TEXT NOT NULL,
    start_checkpoint_sha256   TEXT,            -- NULL: the seeded initialisation
    claimed_checkpoint_sha256 TEXT NOT NULL,
    class                     TEXT NOT NULL,   -- the trainer's class
    -- sampled | paranoid | follow_up | planted
    reason                    TEXT NOT NULL,
    -- Planted audits only: the right end checkpoint (the claim is known bad).
    truth_sha256              TEXT,
    -- open | verified | provider_fault | validator_fault | void
    status                    TEXT NOT NULL,
    at_fault                  TEXT,
    created_at                INTEGER NOT NULL,
    decided_at                INTEGER
);
CREATE INDEX audits_job ON audits(job_id, status);

-- One validator's answer to an audit.
CREATE TABLE replays (
    task_id      TEXT PRIMARY KEY REFERENCES tasks(id),
    audit_id     TEXT NOT NULL REFERENCES audits(id),
    validator_id TEXT NOT NULL,
    signed       TEXT NOT NULL,               -- JSON of the SignedReplay
    matches      INTEGER NOT NULL,            -- 1: agrees with the claim
    reported_at  INTEGER NOT NULL
);
CREATE INDEX replays_audit ON replays(audit_id);

-- Providers found cheating on a job never get its segments again.
CREATE TABLE job_bars (
    job_id      TEXT NOT NULL REFERENCES jobs(id),
    provider_id TEXT NOT NULL,
    audit_id    TEXT NOT NULL,
    at          INTEGER NOT NULL,
    PRIMARY KEY (job_id, provider_id)
);
