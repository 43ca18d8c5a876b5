-- A parallel job's round moves pseudo-gradients up and outer updates down
-- (gradpool_core::delta); a worker's checkpoint reaches the pool only when
-- an audit or a slot's move asks for it.
ALTER TABLE commitments ADD COLUMN pseudo_gradient_sha256 TEXT;
CREATE INDEX commitments_pseudo_gradient ON commitments(pseudo_gradient_sha256);
ALTER TABLE outer_steps ADD COLUMN update_sha256 TEXT;
CREATE INDEX outer_steps_update ON outer_steps(update_sha256);
-- The global checkpoint an outer step started from (round 0's is the
-- seeded initial weights, which the pool computes and stores too), and
-- the digest of the weights file a worker rebuilds from it and the update.
ALTER TABLE outer_steps ADD COLUMN from_global_sha256 TEXT;
ALTER TABLE outer_steps ADD COLUMN weights_sha256 TEXT;
-- Checkpoints a customer asked for (`job verify` replaying a parallel
-- job's segments): the workers that keep them upload them when asked.
CREATE TABLE checkpoint_requests (
    job_id       TEXT NOT NULL REFERENCES jobs(id),
    sha256       TEXT NOT NULL,
    requested_at INTEGER NOT NULL,
    PRIMARY KEY (job_id, sha256)
);
