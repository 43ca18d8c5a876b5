-- The model a job trains (JSON of gradpool_core::model::ModelMeta), learnt
-- from its data at submit, and the memory a training step of it takes:
-- every committed checkpoint is checked against the model. NULL for jobs
-- submitted before; the pool fills in those still running when it opens.
ALTER TABLE jobs ADD COLUMN model TEXT;
ALTER TABLE jobs ADD COLUMN memory_bytes INTEGER;
