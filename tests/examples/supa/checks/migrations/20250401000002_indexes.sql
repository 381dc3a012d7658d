-- idx_customers_name is older than this migration: IF NOT EXISTS finds it, and creates nothing
CREATE INDEX IF NOT EXISTS idx_customers_name ON customers (name);
CREATE INDEX idx_orders_customer ON orders (customer_id);
CREATE INDEX idx_orders_created ON orders (created_at);
