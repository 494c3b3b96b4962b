-- Orders placed and not yet delivered, with their products (from
-- OrderPlaced); the row becomes purchases on OrderDelivered and goes when
-- the order ends otherwise.
CREATE TABLE placed_orders (
    order_id    TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    product_ids TEXT[] NOT NULL,
    placed_at   TIMESTAMPTZ NOT NULL
);

-- What each user bought and received: a row entitles its user to review
-- the product.
CREATE TABLE purchases (
    user_id      TEXT NOT NULL,
    product_id   TEXT NOT NULL,
    order_id     TEXT NOT NULL,
    delivered_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, product_id, order_id)
);

-- One review per product and user. A removed review stays (its author
-- cannot write another) but is hidden and not counted.
CREATE TABLE reviews (
    id            UUID PRIMARY KEY,
    product_id    TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    rating        SMALLINT NOT NULL CHECK (rating BETWEEN 1 AND 5),
    title         TEXT NOT NULL DEFAULT '',
    body          TEXT NOT NULL DEFAULT '',
    status        TEXT NOT NULL DEFAULT 'published' CHECK (status IN ('published', 'flagged', 'removed')),
    helpful_count BIGINT NOT NULL DEFAULT 0 CHECK (helpful_count >= 0),
    -- Reports since the review was last moderated.
    report_count  BIGINT NOT NULL DEFAULT 0 CHECK (report_count >= 0),
    -- When the first of those reports came: the queue's order.
    flagged_at    TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (product_id, user_id),
    CHECK ((status = 'flagged') = (flagged_at IS NOT NULL))
);
CREATE INDEX reviews_visible_by_product ON reviews (product_id, created_at DESC) WHERE status <> 'removed';
CREATE INDEX reviews_moderation_queue ON reviews (flagged_at, id) WHERE status = 'flagged';

CREATE TABLE helpful_votes (
    review_id  UUID NOT NULL REFERENCES reviews (id),
    user_id    TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (review_id, user_id)
);

-- One report per user and review, ever; moderation settles the open ones.
CREATE TABLE reports (
    review_id  UUID NOT NULL REFERENCES reviews (id),
    user_id    TEXT NOT NULL,
    reason     TEXT NOT NULL,
    settled    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (review_id, user_id)
);

-- Each product's rating over its visible reviews, with the version the
-- reviews topic carries. Every change of a product's reviews locks this row
-- first, so the recount after the change sees every committed review.
CREATE TABLE product_ratings (
    product_id   TEXT PRIMARY KEY,
    review_count BIGINT NOT NULL DEFAULT 0,
    stars_total  BIGINT NOT NULL DEFAULT 0,
    version      BIGINT NOT NULL DEFAULT 0
);
