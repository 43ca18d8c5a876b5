-- A sample of each connected provider's telemetry a minute, for the last
-- hour: what the dashboard charts.
CREATE TABLE telemetry_samples (
    provider_id TEXT NOT NULL REFERENCES providers(id),
    at          INTEGER NOT NULL,   -- the minute, ms since the epoch
    telemetry   TEXT NOT NULL,      -- JSON
    PRIMARY KEY (provider_id, at)
);
CREATE INDEX telemetry_samples_at ON telemetry_samples (at);
