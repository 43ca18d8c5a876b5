-- What a heartbeat asks of every provider: the checkpoints of parallel
-- workers' segments it keeps (pseudo-gradient sent, checkpoint not
-- uploaded) that the pool needs now (queue::wanted). Without an index it
-- read every commitment ever made, on every heartbeat.
CREATE INDEX commitments_provider_sent ON commitments(provider_id, checkpoint_sha256)
    WHERE pseudo_gradient_sha256 IS NOT NULL;
