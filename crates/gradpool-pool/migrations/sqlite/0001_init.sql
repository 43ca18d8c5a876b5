-- gradpool pool schema. Times are unix milliseconds (UTC).

CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    -- sha256 (hex) of the API key; the key itself is never stored.
    key_hash    TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE providers (
    id            TEXT PRIMARY KEY,
    public_key    TEXT NOT NULL,
    name          TEXT NOT NULL,
    hardware      TEXT NOT NULL,          -- JSON of gradpool_core::hardware::Hardware
    device        TEXT NOT NULL,          -- 'cpu' | 'cuda'
    memory_bytes  INTEGER NOT NULL,
    class         TEXT NOT NULL,
    -- sha256 (hex) of the current session token.
    token_hash    TEXT UNIQUE,
    telemetry     TEXT,                   -- JSON of the last heartbeat's telemetry
    registered_at INTEGER NOT NULL,
    last_seen     INTEGER NOT NULL
);

CREATE TABLE blobs (
    sha256      TEXT PRIMARY KEY,
    size        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);

-- Who uploaded a blob: an account id (acct_…) or a provider id (prov_…).
CREATE TABLE blob_uploads (
    sha256      TEXT NOT NULL REFERENCES blobs(sha256),
    principal   TEXT NOT NULL,
    uploaded_at INTEGER NOT NULL,
    PRIMARY KEY (sha256, principal)
);

CREATE TABLE jobs (
    id                TEXT PRIMARY KEY,
    account_id        TEXT NOT NULL REFERENCES accounts(id),
    name              TEXT NOT NULL,
    spec_toml         TEXT NOT NULL,
    data_sha256       TEXT NOT NULL REFERENCES blobs(sha256),
    device            TEXT NOT NULL,      -- 'any' | 'cpu' | 'cuda'
    min_memory_bytes  INTEGER NOT NULL,
    status            TEXT NOT NULL,      -- queued | running | succeeded | failed | cancelled
    steps             INTEGER NOT NULL,
    checkpoint_every  INTEGER NOT NULL,
    segments_total    INTEGER NOT NULL,
    step              INTEGER NOT NULL DEFAULT 0,
    segments_done     INTEGER NOT NULL DEFAULT 0,
    last_loss         REAL,
    checkpoint_sha256 TEXT,
    -- H_i of the last accepted commitment (the genesis hash before any).
    commitment        TEXT NOT NULL,
    error             TEXT,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);
CREATE INDEX jobs_account ON jobs(account_id, created_at);

-- One lease of one segment. A segment gets a new task each time it is
-- (re)queued.
CREATE TABLE tasks (
    id               TEXT PRIMARY KEY,
    job_id           TEXT NOT NULL REFERENCES jobs(id),
    segment          INTEGER NOT NULL,
    start_step       INTEGER NOT NULL,
    end_step         INTEGER NOT NULL,
    status           TEXT NOT NULL,       -- queued | leased | committed | expired | failed | cancelled
    provider_id      TEXT REFERENCES providers(id),
    lease_expires_at INTEGER,
    step             INTEGER,             -- last step the provider reported
    reason           TEXT,                -- why it failed
    created_at       INTEGER NOT NULL,
    assigned_at      INTEGER,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX tasks_status ON tasks(status, created_at);
CREATE INDEX tasks_job ON tasks(job_id, segment);
CREATE INDEX tasks_provider ON tasks(provider_id, status);

-- Accepted commitments: one per segment of a job.
CREATE TABLE commitments (
    job_id            TEXT NOT NULL REFERENCES jobs(id),
    segment           INTEGER NOT NULL,
    provider_id       TEXT NOT NULL REFERENCES providers(id),
    task_id           TEXT NOT NULL REFERENCES tasks(id),
    start_step        INTEGER NOT NULL,
    end_step          INTEGER NOT NULL,
    checkpoint_sha256 TEXT NOT NULL,
    prev              TEXT NOT NULL,
    hash              TEXT NOT NULL,
    signed            TEXT NOT NULL,      -- JSON of the SignedCommitment
    loss_trace        TEXT NOT NULL,      -- JSON array of f32
    committed_at      INTEGER NOT NULL,
    PRIMARY KEY (job_id, segment)
);
CREATE INDEX commitments_checkpoint ON commitments(checkpoint_sha256);

CREATE TABLE job_events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id  TEXT NOT NULL REFERENCES jobs(id),
    at      INTEGER NOT NULL,
    body    TEXT NOT NULL                 -- JSON of the JobEventKind
);
CREATE INDEX job_events_job ON job_events(job_id, id);
