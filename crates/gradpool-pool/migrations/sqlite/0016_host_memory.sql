-- A provider's host memory: what a container job's memory_gib (a cap on
-- the container's RAM) is matched against. A CPU rig's is its
-- memory_bytes; a GPU rig, whose memory_bytes is its GPU's, says it
-- apart (NULL from agents that did not).
ALTER TABLE providers ADD COLUMN host_memory_bytes INTEGER;
