-- A provider's encryption key, as it announced it at registration
-- (gradpool_core::privacy::AnnouncedKey, JSON): the X25519 key customers
-- seal confidential jobs' data keys to, signed by its node key. NULL for
-- agents that announced none.
ALTER TABLE providers ADD COLUMN encryption_key TEXT;
