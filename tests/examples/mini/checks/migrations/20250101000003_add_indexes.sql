CREATE INDEX idx_sales_customer ON sales (customer_id);
CREATE INDEX idx_tickets_customer ON tickets (customer_id);
