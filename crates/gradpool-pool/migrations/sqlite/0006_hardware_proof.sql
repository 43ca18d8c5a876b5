-- Hardware proofs: a seeded matrix multiplication each provider answers at
-- registration, checked with Freivalds' algorithm and timed.
CREATE TABLE proofs (
    id            TEXT PRIMARY KEY,
    provider_id   TEXT NOT NULL REFERENCES providers(id),
    seed          INTEGER NOT NULL,
    n             INTEGER NOT NULL,
    claimed_gflops REAL,
    issued_at     INTEGER NOT NULL,
    deadline_ms   INTEGER NOT NULL,
    -- open | passed | wrong_answer | too_slow | no_answer
    status        TEXT NOT NULL,
    elapsed_ms    INTEGER,
    proven_gflops REAL
);
CREATE INDEX proofs_provider ON proofs(provider_id, issued_at);

-- What the last passed proof measured: the provider's performance score.
ALTER TABLE providers ADD COLUMN proven_gflops REAL;
-- Why the provider gets no work until it proves its hardware again.
ALTER TABLE providers ADD COLUMN held TEXT;
