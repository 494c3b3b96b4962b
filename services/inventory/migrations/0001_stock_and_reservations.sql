-- Stock per product and the reservations that hold it for orders.
--
-- Invariant (checked by the end-to-end tests once the system is quiet):
-- for every product, stock received = available + reserved + sold. The CHECK
-- constraints make a negative counter impossible even if the application
-- computed one: the transaction fails instead of overselling.

CREATE TABLE stock (
    -- Catalog id of the product (a UUID in practice; kept as text so that the
    -- catalog owns its id format).
    product_id  TEXT PRIMARY KEY CHECK (product_id <> ''),
    -- Units that can be reserved now.
    available   BIGINT NOT NULL DEFAULT 0 CHECK (available >= 0),
    -- Units held by HELD reservations.
    reserved    BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    -- Units sold through COMMITTED reservations.
    sold        BIGINT NOT NULL DEFAULT 0 CHECK (sold >= 0),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One reservation per order: the order id is the idempotency key of every
-- reserve attempt, whether it comes from the Reserve RPC or OrderPlaced.
CREATE TABLE reservations (
    id              UUID PRIMARY KEY,
    order_id        TEXT NOT NULL UNIQUE CHECK (order_id <> ''),
    status          TEXT NOT NULL CHECK (status IN ('HELD', 'COMMITTED', 'RELEASED')),
    -- Why a RELEASED reservation was released: EXPIRED, PAYMENT_FAILED or
    -- CANCELLED; NULL otherwise.
    release_reason  TEXT CHECK (release_reason IN ('EXPIRED', 'PAYMENT_FAILED', 'CANCELLED')),
    -- True when the reservation had been COMMITTED (sold) and its stock was
    -- returned to available because the order was cancelled afterwards.
    was_committed   BOOLEAN NOT NULL DEFAULT false,
    expires_at      TIMESTAMPTZ NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((status = 'RELEASED') = (release_reason IS NOT NULL)),
    CHECK (NOT was_committed OR status = 'RELEASED')
);

-- Held reservations by expiry, for operators looking for stale holds.
CREATE INDEX reservations_held_by_expiry ON reservations (expires_at) WHERE status = 'HELD';

CREATE TABLE reservation_lines (
    reservation_id  UUID NOT NULL REFERENCES reservations (id) ON DELETE CASCADE,
    product_id      TEXT NOT NULL,
    quantity        BIGINT NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (reservation_id, product_id)
);

-- Orders whose reservation was refused. Remembered so that a second attempt
-- for the same order (a replayed OrderPlaced, a retried Reserve call) gives
-- the same answer instead of holding stock for an order already rejected.
CREATE TABLE reservation_rejections (
    order_id    TEXT PRIMARY KEY CHECK (order_id <> ''),
    -- The shortfalls as [{"product_id", "requested", "available", "unknown"}].
    shortfalls  JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Audit trail of admin stock changes (Restock, SetStock).
CREATE TABLE stock_adjustments (
    id               BIGSERIAL PRIMARY KEY,
    product_id       TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('RESTOCK', 'SET')),
    -- Change of the available quantity; negative for a set that lowered it.
    quantity_delta   BIGINT NOT NULL,
    available_after  BIGINT NOT NULL,
    note             TEXT NOT NULL DEFAULT '',
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
