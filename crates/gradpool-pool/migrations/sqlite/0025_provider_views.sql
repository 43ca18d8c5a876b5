-- Read-only views of one provider that its owner opened with a node proof
-- (the dashboard's rig page): the token's sha256, whose page it shows, and
-- until when.
CREATE TABLE provider_views (
    token_hash  TEXT PRIMARY KEY,
    provider_id TEXT NOT NULL REFERENCES providers(id),
    expires_at  INTEGER NOT NULL
);
