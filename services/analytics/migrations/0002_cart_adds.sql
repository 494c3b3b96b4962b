-- The funnel's first step: which users put something in a cart, and when
-- they first did (one row per user and UTC day, so that a period counts a
-- user once and a replay writes the same rows).
CREATE TABLE cart_adds (
    user_id   TEXT NOT NULL,
    day       DATE NOT NULL,
    first_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, day)
);
CREATE INDEX cart_adds_first_at ON cart_adds (first_at);
