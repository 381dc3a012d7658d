CREATE INDEX idx_tickets_customer ON tickets (customer_id);
