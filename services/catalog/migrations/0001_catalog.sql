-- The catalog's tables: categories and products.

CREATE TABLE categories (
    id         uuid        PRIMARY KEY,
    name       text        NOT NULL CHECK (btrim(name) <> ''),
    -- URL-safe unique identifier (domain::validate_category).
    slug       text        NOT NULL UNIQUE,
    -- NULL for a top-level category.
    parent_id  uuid        REFERENCES categories (id),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX categories_parent ON categories (parent_id);

CREATE TABLE products (
    id          uuid        PRIMARY KEY,
    sku         text        NOT NULL UNIQUE,
    name        text        NOT NULL CHECK (btrim(name) <> ''),
    description text        NOT NULL DEFAULT '',
    category_id uuid        NOT NULL REFERENCES categories (id),
    -- Money as integer minor units plus ISO 4217 code; never floats.
    price_units bigint      NOT NULL CHECK (price_units >= 0),
    currency    text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    active      boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- The listing's sort key and keyset cursor: (name, id).
CREATE INDEX products_name_id ON products (name, id);
CREATE INDEX products_category_name_id ON products (category_id, name, id);
