-- Confidential jobs ([privacy] confidential = true): the pool holds only
-- their sealed dataset and checkpoints, and relays their data key sealed
-- to each provider the customer accepted (gradpool_core::privacy). Only
-- those providers are leased the job's tasks.
ALTER TABLE jobs ADD COLUMN confidential INTEGER NOT NULL DEFAULT 0
    CHECK (confidential IN (0, 1));
CREATE TABLE job_keys (
    job_id      TEXT NOT NULL REFERENCES jobs(id),
    provider_id TEXT NOT NULL REFERENCES providers(id),
    -- gradpool_core::privacy::SealedKey, hex.
    sealed_key  TEXT NOT NULL,
    PRIMARY KEY (job_id, provider_id)
);
