-- The isolated tier: the latest host compliance report a provider sent,
-- signed by its node key (gradpool_core::compliance::SignedCompliance,
-- JSON), for the operator to review. NULL for providers that sent none.
ALTER TABLE providers ADD COLUMN compliance TEXT;
