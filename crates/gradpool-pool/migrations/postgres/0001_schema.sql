-- The pool's schema on PostgreSQL: the same tables, columns, states and
-- CHECK constraints as the SQLite migrations in ../sqlite/ reach at 0023,
-- in one step. Integers are BIGINT (unix milliseconds, piconero), flags
-- are 0/1 BIGINT as on SQLite, and tables that queries order by insertion
-- carry an explicit `rowid` (SQLite's implicit one).
--
-- A change to the schema is a migration in both directories.

CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    -- sha256 (hex) of the API key; the key itself is never stored.
    key_hash    TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE providers (
    id                   TEXT PRIMARY KEY,
    public_key           TEXT NOT NULL,
    name                 TEXT NOT NULL,
    hardware             TEXT NOT NULL,   -- JSON of gradpool_core::hardware::Hardware
    device               TEXT NOT NULL,   -- 'cpu' | 'cuda'
    memory_bytes         BIGINT NOT NULL,
    class                TEXT NOT NULL,
    -- sha256 (hex) of the current session token.
    token_hash           TEXT UNIQUE,
    telemetry            TEXT,            -- JSON of the last heartbeat's telemetry
    registered_at        BIGINT NOT NULL,
    last_seen            BIGINT NOT NULL,
    price_per_hour       BIGINT NOT NULL DEFAULT 0,
    benchmark_gflops     DOUBLE PRECISION,
    unstake_requested_at BIGINT,
    validate             BIGINT NOT NULL DEFAULT 0 CHECK (validate IN (0, 1)),
    trains               BIGINT NOT NULL DEFAULT 1 CHECK (trains IN (0, 1)),
    streak               BIGINT NOT NULL DEFAULT 0,
    faults               BIGINT NOT NULL DEFAULT 0,
    validator_barred     BIGINT NOT NULL DEFAULT 0 CHECK (validator_barred IN (0, 1)),
    paused               TEXT,
    proven_gflops        DOUBLE PRECISION,
    held                 TEXT,
    gpu_uuid             TEXT,
    duplicate_of         TEXT,
    next_proof_at        BIGINT,
    disconnected_at      BIGINT,
    region               TEXT,
    containers           BIGINT NOT NULL DEFAULT 0 CHECK (containers IN (0, 1)),
    host_memory_bytes    BIGINT,
    encryption_key       TEXT,
    compliance           TEXT,
    next_compliance_at   BIGINT,
    compliance_asked_at  BIGINT
);

CREATE TABLE blobs (
    sha256      TEXT PRIMARY KEY,
    size        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE blob_uploads (
    sha256      TEXT NOT NULL REFERENCES blobs(sha256),
    principal   TEXT NOT NULL,
    uploaded_at BIGINT NOT NULL,
    PRIMARY KEY (sha256, principal)
);

CREATE TABLE bookings (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts(id),
    gpus        BIGINT NOT NULL,
    starts_at   BIGINT NOT NULL,
    ends_at     BIGINT NOT NULL,
    min_score   DOUBLE PRECISION,
    held        BIGINT NOT NULL,
    -- `reserved` before and during its window (shown as `active` in it).
    status      TEXT NOT NULL CHECK (status IN ('reserved', 'ended', 'cancelled')),
    created_at  BIGINT NOT NULL,
    -- The order rows were written in (what SQLite calls rowid).
    rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
);

CREATE TABLE booking_providers (
    booking_id     TEXT NOT NULL REFERENCES bookings(id),
    provider_id    TEXT NOT NULL REFERENCES providers(id),
    price_per_hour BIGINT NOT NULL,
    PRIMARY KEY (booking_id, provider_id),
    -- The order rows were written in (what SQLite calls rowid).
    rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
);

CREATE TABLE jobs (
    id                 TEXT PRIMARY KEY,
    account_id         TEXT NOT NULL REFERENCES accounts(id),
    name               TEXT NOT NULL,
    spec_toml          TEXT NOT NULL,
    data_sha256        TEXT NOT NULL REFERENCES blobs(sha256),
    device             TEXT NOT NULL CHECK (device IN ('any', 'cpu', 'cuda')),
    min_memory_bytes   BIGINT NOT NULL,
    status             TEXT NOT NULL
                       CHECK (status IN ('queued', 'running', 'succeeded', 'unverified', 'failed', 'cancelled')),
    steps              BIGINT NOT NULL,
    checkpoint_every   BIGINT NOT NULL,
    segments_total     BIGINT NOT NULL,
    step               BIGINT NOT NULL DEFAULT 0,
    segments_done      BIGINT NOT NULL DEFAULT 0,
    last_loss          DOUBLE PRECISION,
    checkpoint_sha256  TEXT,
    -- H_i of the last accepted commitment (the genesis hash before any).
    commitment         TEXT NOT NULL,
    error              TEXT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    budget             BIGINT NOT NULL DEFAULT 0,
    max_price_per_hour BIGINT,
    flops_per_step     DOUBLE PRECISION,
    verification       TEXT NOT NULL DEFAULT 'standard'
                       CHECK (verification IN ('none', 'standard', 'paranoid')),
    model              TEXT,
    memory_bytes       BIGINT,
    booking_id         TEXT REFERENCES bookings(id),
    eval_loss          DOUBLE PRECISION,
    workers            BIGINT,
    min_workers        BIGINT,
    region             TEXT,
    round              BIGINT NOT NULL DEFAULT 0,
    runtime            TEXT NOT NULL DEFAULT 'native' CHECK (runtime IN ('native', 'container')),
    confidential       BIGINT NOT NULL DEFAULT 0 CHECK (confidential IN (0, 1)),
    tier               TEXT CHECK (tier IS NULL OR tier IN ('isolated')),
    -- The order rows were written in (what SQLite calls rowid).
    rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
);

CREATE TABLE tasks (
    id                TEXT PRIMARY KEY,
    job_id            TEXT NOT NULL REFERENCES jobs(id),
    segment           BIGINT NOT NULL,
    start_step        BIGINT NOT NULL,
    end_step          BIGINT NOT NULL,
    status            TEXT NOT NULL
                      CHECK (status IN ('queued', 'leased', 'committed', 'expired', 'failed', 'released', 'cancelled')),
    provider_id       TEXT REFERENCES providers(id),
    lease_expires_at  BIGINT,
    step              BIGINT,
    reason            TEXT,
    created_at        BIGINT NOT NULL,
    assigned_at       BIGINT,
    updated_at        BIGINT NOT NULL,
    price_per_hour    BIGINT,
    billed_ms         BIGINT,
    price             BIGINT,
    kind              TEXT NOT NULL DEFAULT 'train' CHECK (kind IN ('train', 'replay', 'outer')),
    audit_id          TEXT,
    share             DOUBLE PRECISION,
    foreign_processes BIGINT,
    round             BIGINT,
    worker            BIGINT,
    slot_sha256       TEXT,
    -- The order rows were written in (what SQLite calls rowid).
    rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
);

CREATE TABLE audits (
    id                        TEXT PRIMARY KEY,
    job_id                    TEXT NOT NULL REFERENCES jobs(id),
    segment                   BIGINT NOT NULL,
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
    created_at                BIGINT NOT NULL,
    decided_at                BIGINT,
    -- The order rows were written in (what SQLite calls rowid).
    rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
);

CREATE TABLE commitments (
    job_id            TEXT NOT NULL REFERENCES jobs(id),
    segment           BIGINT NOT NULL,
    provider_id       TEXT NOT NULL REFERENCES providers(id),
    task_id           TEXT NOT NULL REFERENCES tasks(id),
    start_step        BIGINT NOT NULL,
    end_step          BIGINT NOT NULL,
    checkpoint_sha256 TEXT NOT NULL,
    prev              TEXT NOT NULL,
    hash              TEXT NOT NULL,
    signed            TEXT NOT NULL,      -- the SignedCommitment as received
    loss_trace        TEXT NOT NULL,      -- JSON array of f32
    committed_at      BIGINT NOT NULL,
    status            TEXT NOT NULL DEFAULT 'accepted'
                      CHECK (status IN ('accepted', 'auditing', 'verified')),
    eval_loss         DOUBLE PRECISION,
    pseudo_gradient_sha256 TEXT,
    PRIMARY KEY (job_id, segment)
);

CREATE TABLE discarded_commitments (
    job_id            TEXT NOT NULL REFERENCES jobs(id),
    segment           BIGINT NOT NULL,
    provider_id       TEXT NOT NULL,
    task_id           TEXT NOT NULL,
    checkpoint_sha256 TEXT NOT NULL,
    hash              TEXT NOT NULL,
    signed            TEXT NOT NULL,
    status            TEXT NOT NULL
                      CHECK (status IN ('accepted', 'auditing', 'verified')),
    committed_at      BIGINT NOT NULL,
    audit_id          TEXT NOT NULL,      -- the audit whose verdict discarded it
    discarded_at      BIGINT NOT NULL
);

CREATE TABLE outer_steps (
    id            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    job_id        TEXT NOT NULL REFERENCES jobs(id),
    -- The round whose inner segments entered; the global checkpoint it
    -- made starts round + 1.
    round         BIGINT NOT NULL,
    provider_id   TEXT NOT NULL REFERENCES providers(id),
    task_id       TEXT NOT NULL REFERENCES tasks(id),
    step          BIGINT NOT NULL,
    global_sha256 TEXT NOT NULL,
    prev          TEXT NOT NULL,
    hash          TEXT NOT NULL,
    signed        TEXT NOT NULL,      -- the SignedOuterCommitment as received
    -- The workers' mean last training loss and held-out loss.
    loss          DOUBLE PRECISION,
    eval_loss     DOUBLE PRECISION,
    committed_at  BIGINT NOT NULL,
    discarded_at  BIGINT,
    update_sha256 TEXT,
    from_global_sha256 TEXT,
    weights_sha256 TEXT
);

CREATE TABLE job_events (
    id      BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    job_id  TEXT NOT NULL REFERENCES jobs(id),
    at      BIGINT NOT NULL,
    body    TEXT NOT NULL                 -- JSON of the JobEventKind
);

CREATE TABLE job_bars (
    job_id      TEXT NOT NULL REFERENCES jobs(id),
    provider_id TEXT NOT NULL,
    audit_id    TEXT,
    task_id     TEXT,
    at          BIGINT NOT NULL,
    PRIMARY KEY (job_id, provider_id),
    CHECK (audit_id IS NOT NULL OR task_id IS NOT NULL)
);

CREATE TABLE job_blobs (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    sha256 TEXT NOT NULL,
    role   TEXT NOT NULL CHECK (role IN ('image', 'file', 'initial')),
    PRIMARY KEY (job_id, sha256)
);

CREATE TABLE job_keys (
    job_id      TEXT NOT NULL REFERENCES jobs(id),
    provider_id TEXT NOT NULL REFERENCES providers(id),
    -- gradpool_core::privacy::SealedKey, hex.
    sealed_key  TEXT NOT NULL,
    PRIMARY KEY (job_id, provider_id)
);

CREATE TABLE checkpoint_requests (
    job_id       TEXT NOT NULL REFERENCES jobs(id),
    sha256       TEXT NOT NULL,
    requested_at BIGINT NOT NULL,
    PRIMARY KEY (job_id, sha256)
);

CREATE TABLE replays (
    task_id      TEXT PRIMARY KEY REFERENCES tasks(id),
    audit_id     TEXT NOT NULL REFERENCES audits(id),
    validator_id TEXT NOT NULL,
    signed       TEXT NOT NULL,               -- JSON of the SignedReplay
    matches      BIGINT NOT NULL,            -- 1: agrees with the claim
    reported_at  BIGINT NOT NULL,
    -- The order rows were written in (what SQLite calls rowid).
    rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
);

CREATE TABLE proofs (
    id             TEXT PRIMARY KEY,
    provider_id    TEXT NOT NULL REFERENCES providers(id),
    seed           BIGINT NOT NULL,
    n              BIGINT NOT NULL,
    claimed_gflops DOUBLE PRECISION,
    issued_at      BIGINT NOT NULL,
    deadline_ms    BIGINT NOT NULL,
    status         TEXT NOT NULL
                   CHECK (status IN ('open', 'passed', 'wrong_answer', 'too_slow', 'no_answer', 'void')),
    elapsed_ms     BIGINT,
    proven_gflops  DOUBLE PRECISION
);

CREATE TABLE provider_status (
    provider_id TEXT NOT NULL REFERENCES providers(id),
    status      TEXT NOT NULL
                CHECK (status IN ('registered', 'connected', 'disconnected', 'paused', 'resumed', 'held', 'released', 'reserved', 'unreserved')),
    reason      TEXT,
    at          BIGINT NOT NULL,
    -- The order rows were written in (what SQLite calls rowid).
    rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
);

CREATE TABLE certifications (
    id           BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    provider_id  TEXT NOT NULL REFERENCES providers(id),
    tier         TEXT NOT NULL CHECK (tier IN ('isolated')),
    certified_at BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    revoked_at   BIGINT,
    reason       TEXT
);

CREATE TABLE ledger_accounts (
    -- '<kind>:<owner>', e.g. 'customer:acct_…', 'escrow:job_…', 'wallet:pool'.
    id              TEXT PRIMARY KEY,
    -- customer | escrow | provider_pending | provider_available |
    -- provider_stake | validator | pool_fees | wallet
    kind            TEXT NOT NULL,
    owner           TEXT NOT NULL,
    -- 1 only for 'wallet': money that entered or left through Monero.
    may_go_negative BIGINT NOT NULL CHECK (may_go_negative IN (0, 1)),
    created_at      BIGINT NOT NULL,
    UNIQUE (kind, owner)
);

CREATE TABLE journal_entries (
    id              BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    -- A retried request carries the same key and moves money once.
    idempotency_key TEXT NOT NULL UNIQUE,
    memo            TEXT NOT NULL,
    created_at      BIGINT NOT NULL
);

CREATE TABLE postings (
    entry_id    BIGINT NOT NULL REFERENCES journal_entries(id),
    account_id  TEXT NOT NULL REFERENCES ledger_accounts(id),
    amount      BIGINT NOT NULL CHECK (amount <> 0)   -- signed, piconero
);

CREATE TABLE payout_splits (
    provider_id TEXT NOT NULL REFERENCES providers(id),
    address     TEXT NOT NULL,
    share       BIGINT NOT NULL CHECK (share > 0),
    PRIMARY KEY (provider_id, address),
    -- The order rows were written in (what SQLite calls rowid).
    rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
);

CREATE TABLE deposit_addresses (
    address        TEXT PRIMARY KEY,
    subaddr_index  BIGINT NOT NULL UNIQUE,
    -- The ledger account credited: customer:acct_… or provider_stake:prov_….
    ledger_account TEXT NOT NULL UNIQUE REFERENCES ledger_accounts(id),
    created_at     BIGINT NOT NULL
);

CREATE TABLE deposits (
    txid           TEXT NOT NULL,
    subaddr_index  BIGINT NOT NULL,
    amount         BIGINT NOT NULL CHECK (amount > 0),
    height         BIGINT NOT NULL,
    ledger_account TEXT NOT NULL REFERENCES ledger_accounts(id),
    credited_at    BIGINT NOT NULL,
    PRIMARY KEY (txid, subaddr_index)
);

CREATE TABLE payouts (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('provider', 'withdrawal')),
    status      TEXT NOT NULL
                CHECK (status IN ('reserved', 'built', 'relayed', 'settled', 'cancelled')),
    txid        TEXT,
    -- The signed transaction as monero-wallet-rpc returned it with
    -- do_not_relay: relayed from here after a crash.
    tx_metadata TEXT,
    fee         BIGINT,
    error       TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    -- The order rows were written in (what SQLite calls rowid).
    rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
);

CREATE TABLE payout_destinations (
    payout_id      TEXT NOT NULL REFERENCES payouts(id),
    address        TEXT NOT NULL,
    amount         BIGINT NOT NULL CHECK (amount > 0),
    -- The account the money came from (provider_available:…, customer:…).
    ledger_account TEXT NOT NULL REFERENCES ledger_accounts(id),
    -- The order rows were written in (what SQLite calls rowid).
    rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
);

CREATE TABLE blob_transfers (
    id        BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    sha256    TEXT NOT NULL,
    principal TEXT NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('upload', 'download')),
    bytes     BIGINT NOT NULL,
    ms        BIGINT,
    at        BIGINT NOT NULL
);

CREATE INDEX job_events_job ON job_events(job_id, id);

CREATE INDEX postings_by_account ON postings(account_id);

CREATE INDEX postings_by_entry ON postings(entry_id);

CREATE INDEX payout_destinations_payout ON payout_destinations(payout_id);

CREATE INDEX payout_destinations_account ON payout_destinations(ledger_account);

CREATE INDEX replays_audit ON replays(audit_id);

CREATE INDEX providers_gpu_uuid ON providers(gpu_uuid);

CREATE INDEX booking_providers_provider ON booking_providers(provider_id);

CREATE INDEX commitments_checkpoint ON commitments(checkpoint_sha256);

CREATE INDEX discarded_job ON discarded_commitments(job_id, segment);

CREATE INDEX payouts_status ON payouts(status);

CREATE INDEX proofs_provider ON proofs(provider_id, issued_at);

CREATE INDEX bookings_account ON bookings(account_id, created_at);

CREATE INDEX provider_status_provider ON provider_status(provider_id, at);

CREATE INDEX jobs_account ON jobs(account_id, created_at);

CREATE INDEX audits_job ON audits(job_id, status);

CREATE INDEX tasks_status ON tasks(status, created_at);

CREATE INDEX tasks_job ON tasks(job_id, segment);

CREATE INDEX tasks_provider ON tasks(provider_id, status);

CREATE INDEX tasks_audit ON tasks(audit_id);

CREATE UNIQUE INDEX outer_steps_live ON outer_steps(job_id, round) WHERE discarded_at IS NULL;

CREATE INDEX outer_steps_global ON outer_steps(global_sha256);

CREATE INDEX blob_transfers_sha ON blob_transfers(sha256);

CREATE INDEX blob_transfers_principal ON blob_transfers(principal, at);

CREATE INDEX commitments_pseudo_gradient ON commitments(pseudo_gradient_sha256);

CREATE INDEX outer_steps_update ON outer_steps(update_sha256);

CREATE INDEX job_blobs_sha256 ON job_blobs(sha256);

CREATE INDEX certifications_provider ON certifications(provider_id);

CREATE INDEX commitments_provider_sent ON commitments(provider_id, checkpoint_sha256)
    WHERE pseudo_gradient_sha256 IS NOT NULL;
