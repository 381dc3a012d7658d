-- The CRM application's queries, as it sends them ($n parameters): [[app_queries]] PREPAREs each against the
-- schema after the pending migrations. They read names through joins, so migration 7's DROP COLUMNs leave them be.

-- sales list
SELECT s.id, s.sale_number, c.name AS customer_name, u.full_name AS assigned_to_name, s.value, s.status
FROM sales s JOIN customers c ON c.id = s.customer_id LEFT JOIN users u ON u.id = s.assigned_to
WHERE s.tenant_id = $1 ORDER BY s.sale_date DESC, s.id LIMIT 50;

-- open tickets
SELECT t.id, t.ticket_number, t.title, c.name AS customer_name, t.priority
FROM tickets t LEFT JOIN customers c ON c.id = t.customer_id
WHERE t.tenant_id = $1 AND t.status IN ('open', 'in_progress') ORDER BY t.created_at DESC, t.id LIMIT 50;

-- customer page
SELECT c.id, c.name, c.email, customer_sales_total(c.id) AS won FROM customers c WHERE c.id = $1;

-- a ticket's headline
SELECT ticket_headline($1);
