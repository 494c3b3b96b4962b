-- One payment per order (the order id is the provider's idempotency key) and
-- the refunds against it.
CREATE TABLE payments (
    id                   UUID PRIMARY KEY,
    order_id             TEXT NOT NULL UNIQUE,
    user_id              TEXT NOT NULL DEFAULT '',
    currency             TEXT NOT NULL DEFAULT '',
    amount_units         BIGINT NOT NULL DEFAULT 0 CHECK (amount_units >= 0),
    payment_method_token TEXT NOT NULL DEFAULT '',
    -- OrderPlaced arrived: amount, user and token are known.
    intent_received      BOOLEAN NOT NULL DEFAULT FALSE,
    -- StockReserved arrived: the stock is held, charging is allowed.
    stock_reserved       BOOLEAN NOT NULL DEFAULT FALSE,
    status               TEXT NOT NULL DEFAULT 'PENDING',
    -- Charge attempts that found the provider unavailable.
    attempts             INTEGER NOT NULL DEFAULT 0,
    next_attempt_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    provider             TEXT NOT NULL DEFAULT '',
    provider_reference   TEXT NOT NULL DEFAULT '',
    failure_reason       TEXT NOT NULL DEFAULT '',
    refunded_units       BIGINT NOT NULL DEFAULT 0 CHECK (refunded_units >= 0 AND refunded_units <= amount_units),
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The worker's scan for due charges.
CREATE INDEX payments_due ON payments (next_attempt_at)
    WHERE status = 'PENDING' AND intent_received AND stock_reserved;

CREATE TABLE refunds (
    id                 UUID PRIMARY KEY,
    payment_id         UUID NOT NULL REFERENCES payments (id),
    amount_units       BIGINT NOT NULL CHECK (amount_units > 0),
    reason             TEXT NOT NULL DEFAULT '',
    idempotency_key    TEXT NOT NULL,
    -- PENDING until the provider confirmed it, then COMPLETED.
    status             TEXT NOT NULL DEFAULT 'PENDING',
    provider_reference TEXT NOT NULL DEFAULT '',
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at       TIMESTAMPTZ,
    UNIQUE (payment_id, idempotency_key)
);

CREATE INDEX refunds_due ON refunds (next_attempt_at) WHERE status = 'PENDING';
