CREATE INDEX CONCURRENTLY idx_sales_customer ON sales (customer_id);

SELECT pg_sleep(30);

CREATE INDEX CONCURRENTLY idx_tickets_customer ON tickets (customer_id);
