-- The isolated tier: an operator's certifications of providers, each for
-- a limited time. One ends early when revoked by the operator or when a
-- compliance report of the provider fails (`reason`). A job may ask for
-- a tier (`jobs.tier`, from `resources.tier`, or a confidential job's
-- `privacy.providers = "isolated"`): only providers certified into it now
-- claim its tasks.
CREATE TABLE certifications (
    id           INTEGER PRIMARY KEY,
    provider_id  TEXT NOT NULL REFERENCES providers(id),
    tier         TEXT NOT NULL CHECK (tier IN ('isolated')),
    certified_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    revoked_at   INTEGER,
    reason       TEXT
);
CREATE INDEX certifications_provider ON certifications(provider_id);
ALTER TABLE jobs ADD COLUMN tier TEXT CHECK (tier IS NULL OR tier IN ('isolated'));
