-- A payment whose order died while its charge's outcome was unknown (the
-- last provider call failed, maybe after the provider took the money) is
-- voided with the provider: void_pending until the provider confirmed, and
-- what the void found (nothing_charged or reversed).
ALTER TABLE payments
    ADD COLUMN void_pending BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN void_outcome TEXT NOT NULL DEFAULT '';

-- The worker's scan for due voids.
CREATE INDEX payments_void_due ON payments (next_attempt_at) WHERE void_pending;
