-- Container jobs: the customer's script in an OCI image, run under podman
-- on providers whose owners opted in.
--
-- A job's runtime (gradpool_core::state::Runtime); a container job's
-- image and files are blobs of its own (job_blobs), readable by the
-- providers it leases to, like its data.
ALTER TABLE jobs ADD COLUMN runtime TEXT NOT NULL DEFAULT 'native'
    CHECK (runtime IN ('native', 'container'));
-- 1: its owner set accept_containers and podman works on the rig.
ALTER TABLE providers ADD COLUMN containers INTEGER NOT NULL DEFAULT 0
    CHECK (containers IN (0, 1));
CREATE TABLE job_blobs (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    sha256 TEXT NOT NULL,
    role   TEXT NOT NULL CHECK (role IN ('image', 'file')),
    PRIMARY KEY (job_id, sha256)
);
CREATE INDEX job_blobs_sha256 ON job_blobs(sha256);
