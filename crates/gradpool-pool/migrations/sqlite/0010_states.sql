-- Every state column gets a CHECK constraint listing exactly the spellings
-- of its enum in gradpool_core::state (a unit test compares the two).
-- SQLite adds a CHECK only by rebuilding the table: each table below is
-- copied into one with the constraint, the old one dropped, the new one
-- renamed, and its indexes made again. Other tables reference these by
-- name: migrations run on a connection with foreign keys off (a DROP would
-- otherwise delete through them), and `store::open` checks every foreign
-- key once they are done.

CREATE TABLE jobs_new (
    id                 TEXT PRIMARY KEY,
    account_id         TEXT NOT NULL REFERENCES accounts(id),
    name               TEXT NOT NULL,
    spec_toml          TEXT NOT NULL,
    data_sha256        TEXT NOT NULL REFERENCES blobs(sha256),
    device             TEXT NOT NULL CHECK (device IN ('any', 'cpu', 'cuda')),
    min_memory_bytes   INTEGER NOT NULL,
    status             TEXT NOT NULL
                       CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
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
    memory_bytes       INTEGER
);
INSERT INTO jobs_new SELECT id, account_id, name, spec_toml, data_sha256, device,
    min_memory_bytes, status, steps, checkpoint_every, segments_total, step,
    segments_done, last_loss, checkpoint_sha256, commitment, error, created_at,
    updated_at, budget, max_price_per_hour, flops_per_step, verification, model,
    memory_bytes FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
CREATE INDEX jobs_account ON jobs(account_id, created_at);

CREATE TABLE tasks_new (
    id                TEXT PRIMARY KEY,
    job_id            TEXT NOT NULL REFERENCES jobs(id),
    segment           INTEGER NOT NULL,
    start_step        INTEGER NOT NULL,
    end_step          INTEGER NOT NULL,
    status            TEXT NOT NULL
                      CHECK (status IN ('queued', 'leased', 'committed', 'expired', 'failed', 'released', 'cancelled')),
    provider_id       TEXT REFERENCES providers(id),
    lease_expires_at  INTEGER,
    step              INTEGER,             -- last step the provider reported
    reason            TEXT,                -- why it failed
    created_at        INTEGER NOT NULL,
    assigned_at       INTEGER,
    updated_at        INTEGER NOT NULL,
    price_per_hour    INTEGER,
    billed_ms         INTEGER,
    price             INTEGER,
    -- A replay task belongs to an audit.
    kind              TEXT NOT NULL DEFAULT 'train' CHECK (kind IN ('train', 'replay')),
    audit_id          TEXT,
    share             REAL,
    foreign_processes INTEGER
);
INSERT INTO tasks_new SELECT id, job_id, segment, start_step, end_step, status,
    provider_id, lease_expires_at, step, reason, created_at, assigned_at,
    updated_at, price_per_hour, billed_ms, price, kind, audit_id, share,
    foreign_processes FROM tasks;
DROP TABLE tasks;
ALTER TABLE tasks_new RENAME TO tasks;
CREATE INDEX tasks_status ON tasks(status, created_at);
CREATE INDEX tasks_job ON tasks(job_id, segment);
CREATE INDEX tasks_provider ON tasks(provider_id, status);
CREATE INDEX tasks_audit ON tasks(audit_id);

CREATE TABLE commitments_new (
    job_id            TEXT NOT NULL REFERENCES jobs(id),
    segment           INTEGER NOT NULL,
    provider_id       TEXT NOT NULL REFERENCES providers(id),
    task_id           TEXT NOT NULL REFERENCES tasks(id),
    start_step        INTEGER NOT NULL,
    end_step          INTEGER NOT NULL,
    checkpoint_sha256 TEXT NOT NULL,
    prev              TEXT NOT NULL,
    hash              TEXT NOT NULL,
    signed            TEXT NOT NULL,      -- the SignedCommitment as received
    loss_trace        TEXT NOT NULL,      -- JSON array of f32
    committed_at      INTEGER NOT NULL,
    status            TEXT NOT NULL DEFAULT 'accepted'
                      CHECK (status IN ('accepted', 'auditing', 'verified')),
    PRIMARY KEY (job_id, segment)
);
INSERT INTO commitments_new SELECT job_id, segment, provider_id, task_id,
    start_step, end_step, checkpoint_sha256, prev, hash, signed, loss_trace,
    committed_at, status FROM commitments;
DROP TABLE commitments;
ALTER TABLE commitments_new RENAME TO commitments;
CREATE INDEX commitments_checkpoint ON commitments(checkpoint_sha256);

CREATE TABLE discarded_commitments_new (
    job_id            TEXT NOT NULL REFERENCES jobs(id),
    segment           INTEGER NOT NULL,
    provider_id       TEXT NOT NULL,
    task_id           TEXT NOT NULL,
    checkpoint_sha256 TEXT NOT NULL,
    hash              TEXT NOT NULL,
    signed            TEXT NOT NULL,
    status            TEXT NOT NULL
                      CHECK (status IN ('accepted', 'auditing', 'verified')),
    committed_at      INTEGER NOT NULL,
    audit_id          TEXT NOT NULL,      -- the audit whose verdict discarded it
    discarded_at      INTEGER NOT NULL
);
INSERT INTO discarded_commitments_new SELECT job_id, segment, provider_id,
    task_id, checkpoint_sha256, hash, signed, status, committed_at, audit_id,
    discarded_at FROM discarded_commitments;
DROP TABLE discarded_commitments;
ALTER TABLE discarded_commitments_new RENAME TO discarded_commitments;
CREATE INDEX discarded_job ON discarded_commitments(job_id, segment);

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
                              CHECK (status IN ('open', 'verified', 'provider_fault', 'validator_fault', 'void')),
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

-- Money leaving the pool: provider payouts (batched) and customer
-- withdrawals. status: reserved → built → relayed (settled on the dev
-- backend), or reserved → cancelled.
CREATE TABLE payouts_new (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('provider', 'withdrawal')),
    status      TEXT NOT NULL
                CHECK (status IN ('reserved', 'built', 'relayed', 'settled', 'cancelled')),
    txid        TEXT,
    -- The signed transaction as monero-wallet-rpc returned it with
    -- do_not_relay: relayed from here after a crash.
    tx_metadata TEXT,
    fee         INTEGER,
    error       TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
INSERT INTO payouts_new SELECT id, kind, status, txid, tx_metadata, fee, error,
    created_at, updated_at FROM payouts;
DROP TABLE payouts;
ALTER TABLE payouts_new RENAME TO payouts;
CREATE INDEX payouts_status ON payouts(status);

CREATE TABLE proofs_new (
    id             TEXT PRIMARY KEY,
    provider_id    TEXT NOT NULL REFERENCES providers(id),
    seed           INTEGER NOT NULL,
    n              INTEGER NOT NULL,
    claimed_gflops REAL,
    issued_at      INTEGER NOT NULL,
    deadline_ms    INTEGER NOT NULL,
    status         TEXT NOT NULL
                   CHECK (status IN ('open', 'passed', 'wrong_answer', 'too_slow', 'no_answer', 'void')),
    elapsed_ms     INTEGER,
    proven_gflops  REAL
);
INSERT INTO proofs_new SELECT id, provider_id, seed, n, claimed_gflops,
    issued_at, deadline_ms, status, elapsed_ms, proven_gflops FROM proofs;
DROP TABLE proofs;
ALTER TABLE proofs_new RENAME TO proofs;
CREATE INDEX proofs_provider ON proofs(provider_id, issued_at);

CREATE TABLE bookings_new (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts(id),
    gpus        INTEGER NOT NULL,
    starts_at   INTEGER NOT NULL,
    ends_at     INTEGER NOT NULL,
    min_score   REAL,
    held        INTEGER NOT NULL,
    -- `reserved` before and during its window (shown as `active` in it).
    status      TEXT NOT NULL CHECK (status IN ('reserved', 'ended', 'cancelled')),
    created_at  INTEGER NOT NULL
);
INSERT INTO bookings_new SELECT id, account_id, gpus, starts_at, ends_at,
    min_score, held, status, created_at FROM bookings;
DROP TABLE bookings;
ALTER TABLE bookings_new RENAME TO bookings;
CREATE INDEX bookings_account ON bookings(account_id, created_at);

CREATE TABLE provider_status_new (
    provider_id TEXT NOT NULL REFERENCES providers(id),
    status      TEXT NOT NULL
                CHECK (status IN ('registered', 'connected', 'disconnected', 'paused', 'resumed', 'held', 'released', 'reserved', 'unreserved')),
    reason      TEXT,
    at          INTEGER NOT NULL
);
INSERT INTO provider_status_new SELECT provider_id, status, reason, at
    FROM provider_status;
DROP TABLE provider_status;
ALTER TABLE provider_status_new RENAME TO provider_status;
CREATE INDEX provider_status_provider ON provider_status(provider_id, at);
