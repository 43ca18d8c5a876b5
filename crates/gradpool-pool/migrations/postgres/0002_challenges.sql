-- The key registration challenges are MACed under, kept so that every
-- process serving the pool (and the same one after a restart) recognises
-- the others' nonces.
CREATE TABLE pool_secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL          -- hex
);

-- Nonces used, until they expire: single use across processes (a pool on
-- PostgreSQL; one process keeps them in memory).
CREATE TABLE used_nonces (
    body       TEXT PRIMARY KEY, -- hex of the nonce's body
    expires_at BIGINT NOT NULL
);
