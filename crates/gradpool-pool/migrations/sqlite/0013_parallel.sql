-- Parallel (DiLoCo) jobs: each round, `workers` inner segments train at
-- once on different providers from the round's global checkpoint; then
-- one provider computes the outer step (a task of kind 'outer'), which the
-- pool computes again before accepting it.
--
-- A parallel job's inner segment of round r, worker w, is segment
-- r·workers + w: its commitment, audits and payment are those of any
-- segment. While round r runs, `jobs.checkpoint_sha256` is the round's
-- global checkpoint (NULL in round 0: the seeded initial weights),
-- `jobs.commitment` its chain hash G_r and `jobs.step` its step.

ALTER TABLE jobs ADD COLUMN workers INTEGER;          -- NULL: not a parallel job
-- The fewest workers a round may close with (parallel.min_workers).
ALTER TABLE jobs ADD COLUMN min_workers INTEGER;
-- Where a job trains (resources.region) and where a provider's owner says
-- it is (its config's region); NULL: anywhere, unsaid.
ALTER TABLE jobs ADD COLUMN region TEXT;
ALTER TABLE providers ADD COLUMN region TEXT;
ALTER TABLE jobs ADD COLUMN round INTEGER NOT NULL DEFAULT 0;

-- Rebuilt for the CHECK on kind (see 0010), with a parallel job's task
-- columns: its round, its worker slot (NULL for the outer step), and the
-- slot's checkpoint it continues (NULL: fresh AdamW moments).
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
    step              INTEGER,
    reason            TEXT,
    created_at        INTEGER NOT NULL,
    assigned_at       INTEGER,
    updated_at        INTEGER NOT NULL,
    price_per_hour    INTEGER,
    billed_ms         INTEGER,
    price             INTEGER,
    kind              TEXT NOT NULL DEFAULT 'train' CHECK (kind IN ('train', 'replay', 'outer')),
    audit_id          TEXT,
    share             REAL,
    foreign_processes INTEGER,
    round             INTEGER,
    worker            INTEGER,
    slot_sha256       TEXT
);
INSERT INTO tasks_new SELECT id, job_id, segment, start_step, end_step, status,
    provider_id, lease_expires_at, step, reason, created_at, assigned_at,
    updated_at, price_per_hour, billed_ms, price, kind, audit_id, share,
    foreign_processes, NULL, NULL, NULL FROM tasks;
DROP TABLE tasks;
ALTER TABLE tasks_new RENAME TO tasks;
CREATE INDEX tasks_status ON tasks(status, created_at);
CREATE INDEX tasks_job ON tasks(job_id, segment);
CREATE INDEX tasks_provider ON tasks(provider_id, status);
CREATE INDEX tasks_audit ON tasks(audit_id);

-- Accepted outer steps. A rollback marks those from the faulty round on
-- discarded (kept as evidence), never deletes them.
CREATE TABLE outer_steps (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id        TEXT NOT NULL REFERENCES jobs(id),
    -- The round whose inner segments entered; the global checkpoint it
    -- made starts round + 1.
    round         INTEGER NOT NULL,
    provider_id   TEXT NOT NULL REFERENCES providers(id),
    task_id       TEXT NOT NULL REFERENCES tasks(id),
    step          INTEGER NOT NULL,
    global_sha256 TEXT NOT NULL,
    prev          TEXT NOT NULL,
    hash          TEXT NOT NULL,
    signed        TEXT NOT NULL,      -- the SignedOuterCommitment as received
    -- The workers' mean last training loss and held-out loss.
    loss          REAL,
    eval_loss     REAL,
    committed_at  INTEGER NOT NULL,
    discarded_at  INTEGER
);
CREATE UNIQUE INDEX outer_steps_live ON outer_steps(job_id, round) WHERE discarded_at IS NULL;
CREATE INDEX outer_steps_global ON outer_steps(global_sha256);

-- A provider is also barred from a job for a forged outer step, which the
-- pool's own computation catches (no audit): the bar then names the task.
CREATE TABLE job_bars_new (
    job_id      TEXT NOT NULL REFERENCES jobs(id),
    provider_id TEXT NOT NULL,
    audit_id    TEXT,
    task_id     TEXT,
    at          INTEGER NOT NULL,
    PRIMARY KEY (job_id, provider_id),
    CHECK (audit_id IS NOT NULL OR task_id IS NOT NULL)
);
INSERT INTO job_bars_new SELECT job_id, provider_id, audit_id, NULL, at FROM job_bars;
DROP TABLE job_bars;
ALTER TABLE job_bars_new RENAME TO job_bars;

-- Every blob moved through the blob routes, for what a parallel job's
-- round moves and the transfer rate placement sees. `ms`: how long an
-- upload took (NULL for a download, served as a stream).
CREATE TABLE blob_transfers (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256    TEXT NOT NULL,
    principal TEXT NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('upload', 'download')),
    bytes     INTEGER NOT NULL,
    ms        INTEGER,
    at        INTEGER NOT NULL
);
CREATE INDEX blob_transfers_sha ON blob_transfers(sha256);
CREATE INDEX blob_transfers_principal ON blob_transfers(principal, at);
