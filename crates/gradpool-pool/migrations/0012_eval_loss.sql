-- The loss on a job's held-out data at each committed checkpoint, as its
-- provider measured it, and the job's at its last accepted checkpoint.
ALTER TABLE commitments ADD COLUMN eval_loss REAL;
ALTER TABLE jobs ADD COLUMN eval_loss REAL;
