-- The isolated tier's checks again at random times: when a certified
-- provider's next one is due, and when the pool asked for it (cleared by
-- the report; past the deadline unanswered, the tier is lost).
ALTER TABLE providers ADD COLUMN next_compliance_at INTEGER;
ALTER TABLE providers ADD COLUMN compliance_asked_at INTEGER;
