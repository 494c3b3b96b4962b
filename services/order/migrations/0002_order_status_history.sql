-- Every status each order entered, in order: the live order streams
-- (OrderService.WatchOrders) replay it after a reconnect. Written by
-- triggers, so that no code path that changes a status can forget it, and
-- announced by NOTIFY order_status, which Postgres delivers at commit to every
-- replica that listens.
ALTER TABLE orders ADD COLUMN status_version INTEGER NOT NULL DEFAULT 1;

CREATE TABLE order_status_history (
    order_id       UUID NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    -- 1 for the placement, then one more per change: gap-free per order.
    version        INTEGER NOT NULL CHECK (version > 0),
    user_id        TEXT NOT NULL,
    status         TEXT NOT NULL,
    failure_reason TEXT NOT NULL,
    changed_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (order_id, version)
);

-- Orders placed before this migration start their history where they are.
INSERT INTO order_status_history (order_id, version, user_id, status, failure_reason, changed_at)
SELECT id, 1, user_id, status, failure_reason, updated_at FROM orders;

-- The next version, under the row lock the UPDATE itself holds.
CREATE FUNCTION order_status_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.status_version := OLD.status_version + 1;
    RETURN NEW;
END
$$;

CREATE FUNCTION order_status_record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO order_status_history (order_id, version, user_id, status, failure_reason, changed_at)
    VALUES (NEW.id, NEW.status_version, NEW.user_id, NEW.status, NEW.failure_reason, NEW.updated_at);
    -- The payload stays far below NOTIFY's 8000 bytes: the reason is cut.
    PERFORM pg_notify('order_status', json_build_object(
        'order_id', NEW.id,
        'user_id', NEW.user_id,
        'version', NEW.status_version,
        'status', NEW.status,
        'failure_reason', left(NEW.failure_reason, 1000),
        'changed_at', NEW.updated_at
    )::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER order_status_version BEFORE UPDATE OF status ON orders
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION order_status_version();
CREATE TRIGGER order_status_placed AFTER INSERT ON orders
    FOR EACH ROW EXECUTE FUNCTION order_status_record();
CREATE TRIGGER order_status_changed AFTER UPDATE OF status ON orders
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION order_status_record();
