-- The catalog's version (CatalogService.GetCatalogVersion): one counter that
-- every statement changing the products table increases, inside that
-- statement's transaction. A reader that saw version N before reading
-- products therefore read rows at least as new as every change counted in N,
-- and any later change moves the version; the gateway's read cache relies on
-- both. A trigger rather than code in each write path, so that the seed, a
-- future write path and an operator's hand-made fix are all counted.

CREATE TABLE catalog_version (
    -- One row only.
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   bigint  NOT NULL
);
INSERT INTO catalog_version (singleton, version) VALUES (true, 0);

CREATE FUNCTION bump_catalog_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- The row lock this takes serializes product writes until commit; they
    -- are rare admin operations, and readers never take it.
    UPDATE catalog_version SET version = version + 1;
    RETURN NULL;
END
$$;

-- Per statement: a statement that changed no row (the seed's
-- ON CONFLICT DO NOTHING) bumps it too, which only costs caches a refill.
CREATE TRIGGER products_bump_catalog_version
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON products
    FOR EACH STATEMENT EXECUTE FUNCTION bump_catalog_version();
