-- The trace context of the event that made the payment chargeable (its
-- traceparent and tracestate), so that the worker's charge, and the
-- PaymentCaptured or PaymentFailed it publishes, continue the order's
-- trace; empty for payments written before.
ALTER TABLE payments
    ADD COLUMN traceparent TEXT NOT NULL DEFAULT '',
    ADD COLUMN tracestate TEXT NOT NULL DEFAULT '';
