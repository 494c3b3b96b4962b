-- Orders, their priced lines and the saga state that drives them.
CREATE TABLE orders (
    id                     UUID PRIMARY KEY,
    user_id                TEXT NOT NULL,
    idempotency_key        TEXT NOT NULL,
    -- Normalized lines of the placement, to tell a retry from a reused key.
    request_fingerprint    TEXT NOT NULL,
    status                 TEXT NOT NULL,
    currency               TEXT NOT NULL,
    total_units            BIGINT NOT NULL CHECK (total_units >= 0),
    -- commerce.common.v1.Address, protobuf-encoded.
    shipping_address       BYTEA NOT NULL,
    failure_reason         TEXT NOT NULL DEFAULT '',
    reservation_id         TEXT,
    reservation_expires_at TIMESTAMPTZ,
    payment_id             TEXT,
    shipment_id            TEXT,
    refunded               BOOLEAN NOT NULL DEFAULT FALSE,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (user_id, idempotency_key)
);

CREATE INDEX orders_by_user ON orders (user_id, created_at DESC, id DESC);
CREATE INDEX orders_by_time ON orders (created_at DESC, id DESC);
-- The reservation sweeper's scan.
CREATE INDEX orders_awaiting_payment ON orders (reservation_expires_at) WHERE status IN ('PENDING', 'RESERVED');

CREATE TABLE order_lines (
    order_id         UUID NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    position         INTEGER NOT NULL,
    product_id       TEXT NOT NULL,
    sku              TEXT NOT NULL,
    name             TEXT NOT NULL,
    quantity         INTEGER NOT NULL CHECK (quantity > 0),
    unit_price_units BIGINT NOT NULL CHECK (unit_price_units >= 0),
    line_total_units BIGINT NOT NULL CHECK (line_total_units >= 0),
    PRIMARY KEY (order_id, position)
);
