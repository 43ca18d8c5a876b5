-- A parallel container job's initial checkpoint (container.initial_sha256)
-- is one of its blobs: the weights every worker of round 0 starts from,
-- readable by the providers it leases to. SQLite changes a CHECK only by
-- rebuilding the table (see 0010).
CREATE TABLE job_blobs_new (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    sha256 TEXT NOT NULL,
    role   TEXT NOT NULL CHECK (role IN ('image', 'file', 'initial')),
    PRIMARY KEY (job_id, sha256)
);
INSERT INTO job_blobs_new SELECT job_id, sha256, role FROM job_blobs;
DROP TABLE job_blobs;
ALTER TABLE job_blobs_new RENAME TO job_blobs;
CREATE INDEX job_blobs_sha256 ON job_blobs(sha256);
