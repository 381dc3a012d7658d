CREATE VIEW active_customers WITH (security_invoker = true) AS
    SELECT id, name FROM customers WHERE deleted_at IS NULL;
ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
CREATE POLICY orders_select_own ON orders FOR SELECT TO authenticated USING (customer_id = auth.uid());
CREATE POLICY orders_insert_own ON orders FOR INSERT TO authenticated WITH CHECK (customer_id = auth.uid());
CREATE POLICY orders_service ON orders FOR ALL TO service_role USING (true);
