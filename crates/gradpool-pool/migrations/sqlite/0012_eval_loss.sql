-- The loss on a job's held-out data at each committed checkpoint, as its
-- provider measured it, and the job's at its last accepted checkpoint.
ALTER TABLE commitments ADD COLUMN eval_loss REAL;
ALTER TABLE jobs ADD COLUMN eval_loss REAL;

-- Text specs that do not say `data.eval_fraction` used to hold nothing out;
-- they now hold out a tenth. The jobs submitted before keep what they were
-- trained with: `store::migrate` writes `eval_fraction = 0.0` into each
-- listed spec that does not say, once, then empties the list.
CREATE TABLE held_out_pins (job_id TEXT PRIMARY KEY);
INSERT INTO held_out_pins SELECT id FROM jobs;
