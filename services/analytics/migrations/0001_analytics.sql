-- The analytics read model: one row per order with the moment of each step
-- it reached, its lines, and the products' categories. Every column is set
-- from events in a way that does not depend on their order (the first
-- moment of a step wins; refunds only grow), so replaying the topics into
-- empty tables gives the same rows, and so the same figures.

CREATE TABLE orders (
    order_id       TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL DEFAULT '',
    currency       TEXT NOT NULL DEFAULT '',
    total_units    BIGINT NOT NULL DEFAULT 0,
    -- NULL until OrderPlaced arrives (a later step's event may come first).
    placed_at      TIMESTAMPTZ,
    confirmed_at   TIMESTAMPTZ,
    shipped_at     TIMESTAMPTZ,
    delivered_at   TIMESTAMPTZ,
    rejected_at    TIMESTAMPTZ,
    failed_at      TIMESTAMPTZ,
    cancelled_at   TIMESTAMPTZ,
    refunded_units BIGINT NOT NULL DEFAULT 0 CHECK (refunded_units >= 0)
);
CREATE INDEX orders_placed ON orders (placed_at);
CREATE INDEX orders_confirmed ON orders (confirmed_at);
-- The dashboard's stuck orders: those not yet at an end.
CREATE INDEX orders_open ON orders (placed_at)
    WHERE delivered_at IS NULL AND rejected_at IS NULL AND failed_at IS NULL AND cancelled_at IS NULL;

CREATE TABLE order_lines (
    order_id         TEXT NOT NULL REFERENCES orders (order_id),
    product_id       TEXT NOT NULL,
    -- The product's name when ordered.
    name             TEXT NOT NULL,
    quantity         BIGINT NOT NULL CHECK (quantity > 0),
    line_total_units BIGINT NOT NULL,
    PRIMARY KEY (order_id, product_id)
);
CREATE INDEX order_lines_product ON order_lines (product_id);

-- Each product's current name and category (the latest catalog event).
CREATE TABLE products (
    product_id  TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    category_id TEXT NOT NULL DEFAULT '',
    changed_at  TIMESTAMPTZ NOT NULL
);
