-- The search index: a read model of the products, fed by the catalog's,
-- inventory's and reviews' events, searched with Postgres full-text search
-- (ranking, stemming, highlights) and pg_trgm (typo tolerance through the
-- vocabulary below). pg_trgm ships with Postgres and is a trusted extension
-- (Postgres 13+): the database's owner may create it, no superuser needed.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE search_products (
    product_id         UUID PRIMARY KEY,
    -- From the catalog's events; NULL until the product's first one arrives
    -- (an availability or rating event may come first) and again after its
    -- deletion (a tombstone, so that no older event brings it back).
    sku                TEXT,
    name               TEXT,
    description        TEXT NOT NULL DEFAULT '',
    category_id        UUID,
    price_units        BIGINT,
    currency           TEXT,
    active             BOOLEAN NOT NULL DEFAULT FALSE,
    -- When the applied catalog event happened: an older one is ignored.
    catalog_changed_at TIMESTAMPTZ,
    -- From inventory's StockRestocked and StockAvailabilityChanged.
    available          BIGINT NOT NULL DEFAULT 0,
    -- From the reviews' events; the highest version wins.
    review_count       BIGINT NOT NULL DEFAULT 0,
    stars_total        BIGINT NOT NULL DEFAULT 0,
    rating_version     BIGINT NOT NULL DEFAULT 0,
    -- Name and SKU weigh more than the description in the ranking.
    document           TSVECTOR GENERATED ALWAYS AS (
        setweight(to_tsvector('english', coalesce(name, '')), 'A')
        || setweight(to_tsvector('simple', coalesce(sku, '')), 'A')
        || setweight(to_tsvector('english', description), 'B')
    ) STORED,
    -- Unstemmed name words, for autocomplete's prefix matches.
    name_words         TSVECTOR GENERATED ALWAYS AS (to_tsvector('simple', coalesce(name, ''))) STORED
);
CREATE INDEX search_products_document ON search_products USING GIN (document);
CREATE INDEX search_products_name_words ON search_products USING GIN (name_words);

-- Every word of every indexed name and description, lower case: a query
-- word that is not here is replaced by the most similar word that is
-- (trigram similarity), which is how "ketle" finds "kettle". Words are
-- never removed: a stale word costs nothing but a correction that matches
-- no product.
CREATE TABLE search_words (
    word TEXT PRIMARY KEY
);
CREATE INDEX search_words_trigrams ON search_words USING GIN (word gin_trgm_ops);

-- The English stems of the same words: a query word whose stem is here
-- ("boiling" for "boils") is a known word, not a typo.
CREATE TABLE search_stems (
    stem TEXT PRIMARY KEY
);
