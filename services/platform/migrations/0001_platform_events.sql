-- The platform's own tables, in schema commerce_platform (see src/db.rs for
-- why they live apart from the service's tables and migration history).

-- Transactional outbox: a service inserts a row in the same transaction as
-- its state change; the relay publishes unpublished rows in `position` order
-- and stamps `published_at` once the broker acknowledged them.
CREATE TABLE commerce_platform.outbox (
    -- CloudEvents ce_id (UUID v7): the event's identity on the wire and the
    -- key consumers deduplicate on.
    id           uuid        PRIMARY KEY,
    -- Publication order. A database sequence rather than the UUID v7's
    -- timestamp: replicas' clocks differ, the sequence does not.
    position     bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    -- Catalog topic name (without any deployment prefix).
    topic        text        NOT NULL,
    -- Kafka record key: the aggregate id, so one aggregate's events share a
    -- partition and stay in order.
    key          text        NOT NULL,
    -- CloudEvents ce_type, kept as a column for operators' queries.
    event_type   text        NOT NULL,
    -- Protobuf-encoded event.
    payload      bytea       NOT NULL,
    -- Every Kafka header to send (ce_*, content-type, traceparent), as a JSON
    -- array of [name, value] string pairs, in sending order.
    headers      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- NULL until the broker acknowledged the record.
    published_at timestamptz
);

-- The relay's work queue: only unpublished rows, in order. Stays small
-- because published rows drop out of it.
CREATE INDEX outbox_unpublished ON commerce_platform.outbox (position) WHERE published_at IS NULL;
-- For purging old published rows.
CREATE INDEX outbox_published_at ON commerce_platform.outbox (published_at) WHERE published_at IS NOT NULL;

-- Idempotent consumers: a consumer inserts (group, event id) in the same
-- transaction as the event's effect; a redelivered event finds its row and
-- is skipped.
CREATE TABLE commerce_platform.processed_events (
    consumer_group text        NOT NULL,
    event_id       uuid        NOT NULL,
    event_type     text        NOT NULL,
    -- Where the first delivery came from, for debugging.
    topic          text        NOT NULL,
    kafka_partition integer    NOT NULL,
    kafka_offset   bigint      NOT NULL,
    processed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, event_id)
);

-- For purging ids older than any possible redelivery (the topics' retention).
CREATE INDEX processed_events_processed_at ON commerce_platform.processed_events (processed_at);
