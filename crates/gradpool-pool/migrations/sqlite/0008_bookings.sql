-- Bookings: providers reserved by a customer for a future window, their
-- price for the window held in the escrow account `escrow:<booking id>`.
CREATE TABLE bookings (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts(id),
    gpus        INTEGER NOT NULL,
    starts_at   INTEGER NOT NULL,
    ends_at     INTEGER NOT NULL,
    min_score   REAL,
    held        INTEGER NOT NULL,
    -- reserved (before and during its window) | ended | cancelled
    status      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX bookings_account ON bookings(account_id, created_at);

CREATE TABLE booking_providers (
    booking_id     TEXT NOT NULL REFERENCES bookings(id),
    provider_id    TEXT NOT NULL REFERENCES providers(id),
    price_per_hour INTEGER NOT NULL,
    PRIMARY KEY (booking_id, provider_id)
);
CREATE INDEX booking_providers_provider ON booking_providers(provider_id);
