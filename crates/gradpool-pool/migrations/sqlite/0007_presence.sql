-- A GPU is one physical device: the UUID a provider claims, so that two
-- providers claiming the same one are both held.
ALTER TABLE providers ADD COLUMN gpu_uuid TEXT;
CREATE INDEX providers_gpu_uuid ON providers(gpu_uuid);
-- The other provider claiming the same GPU (NULL: none): held until that
-- one is gone.
ALTER TABLE providers ADD COLUMN duplicate_of TEXT;
-- When the next hardware proof is due (NULL: none planned).
ALTER TABLE providers ADD COLUMN next_proof_at INTEGER;
-- When the pool recorded the provider disconnected (NULL: it is not).
ALTER TABLE providers ADD COLUMN disconnected_at INTEGER;

-- Proof of time-lock: the device's share a segment got and the foreign
-- processes seen while it trained, as its provider reported them.
ALTER TABLE tasks ADD COLUMN share REAL;
ALTER TABLE tasks ADD COLUMN foreign_processes INTEGER;

-- proofs.status may also be 'void': replaced by a newer challenge before
-- it was answered.
