-- Providers pause on their owner's limits (schedule, temperature, the
-- owner using the device) and say so in their heartbeats.
ALTER TABLE providers ADD COLUMN paused TEXT;     -- the reason; NULL while working

-- Every pause and resume, as reported.
CREATE TABLE provider_status (
    provider_id TEXT NOT NULL REFERENCES providers(id),
    status      TEXT NOT NULL,                    -- paused | resumed
    reason      TEXT,
    at          INTEGER NOT NULL
);
CREATE INDEX provider_status_provider ON provider_status(provider_id, at);
