-- The products as the catalog's events describe them: what a
-- recommendation shows, and whether it may be shown (active).
CREATE TABLE products (
    product_id  UUID PRIMARY KEY,
    name        TEXT NOT NULL DEFAULT '',
    category_id UUID,
    price_units BIGINT NOT NULL DEFAULT 0,
    currency    TEXT NOT NULL DEFAULT '',
    active      BOOLEAN NOT NULL DEFAULT FALSE,
    -- When the applied catalog event happened: an older one is ignored.
    changed_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX products_by_category ON products (category_id) WHERE active;

-- Orders placed and not yet confirmed, with their products (OrderPlaced);
-- the confirmation turns them into purchases.
CREATE TABLE placed_orders (
    order_id    TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    product_ids UUID[] NOT NULL
);

-- Who bought what, once per user and product however often they bought it.
CREATE TABLE purchases (
    user_id         TEXT NOT NULL,
    product_id      UUID NOT NULL,
    first_bought_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, product_id)
);

-- How many customers bought each product.
CREATE TABLE product_buyers (
    product_id UUID PRIMARY KEY,
    buyers     BIGINT NOT NULL
);

-- How many customers bought both products, in both directions: a pair is
-- counted once per customer, when the later of the two is bought.
CREATE TABLE product_pairs (
    product_id UUID NOT NULL,
    other_id   UUID NOT NULL,
    buyers     BIGINT NOT NULL,
    PRIMARY KEY (product_id, other_id)
);
CREATE INDEX product_pairs_ranked ON product_pairs (product_id, buyers DESC);

-- What each signed-in user viewed, the latest 50.
CREATE TABLE views (
    user_id    TEXT NOT NULL,
    product_id UUID NOT NULL,
    viewed_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, product_id)
);
CREATE INDEX views_latest ON views (user_id, viewed_at DESC);
