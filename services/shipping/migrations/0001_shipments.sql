-- One shipment per confirmed order and its tracking history.
CREATE TABLE shipments (
    id              UUID PRIMARY KEY,
    order_id        TEXT NOT NULL UNIQUE,
    user_id         TEXT NOT NULL,
    courier_id      TEXT NOT NULL DEFAULT '',
    status          TEXT NOT NULL,
    -- commerce.common.v1.Address, protobuf-encoded.
    address         BYTEA NOT NULL,
    tracking_number TEXT NOT NULL,
    halt_reason     TEXT NOT NULL DEFAULT '',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at    TIMESTAMPTZ
);

CREATE INDEX shipments_by_courier ON shipments (courier_id, created_at, id);
CREATE INDEX shipments_by_time ON shipments (created_at, id);

CREATE TABLE tracking_events (
    id          BIGSERIAL PRIMARY KEY,
    shipment_id UUID NOT NULL REFERENCES shipments (id),
    status      TEXT NOT NULL,
    description TEXT NOT NULL,
    location    TEXT NOT NULL DEFAULT '',
    actor_id    TEXT NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX tracking_events_by_shipment ON tracking_events (shipment_id, id);

-- Round-robin ticket for courier assignment, shared by every replica.
CREATE SEQUENCE courier_ticket;
