-- Customers list their own shipments (GET /api/shipments without order_id).
CREATE INDEX IF NOT EXISTS shipments_user_created_idx ON shipments (user_id, created_at, id);
