-- Each product's rating, kept from the reviews service's events
-- (commerce.reviews.v1). Every event carries the product's whole rating and
-- a version; the row keeps the highest version's, so a redelivered or late
-- event never moves it back. Not part of updated_at, which tells shoppers
-- when the product itself changed.
ALTER TABLE products
    ADD COLUMN review_count   bigint NOT NULL DEFAULT 0 CHECK (review_count >= 0),
    ADD COLUMN stars_total    bigint NOT NULL DEFAULT 0 CHECK (stars_total >= 0),
    ADD COLUMN rating_version bigint NOT NULL DEFAULT 0;
