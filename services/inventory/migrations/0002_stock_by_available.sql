-- The admin dashboard's low-stock list: the fewest available first.
CREATE INDEX stock_by_available ON stock (available, product_id);
