CREATE VIEW sales_with_details AS
SELECT s.id, s.customer_id, c.name AS customer_name, s.value
FROM sales s
LEFT JOIN customers c ON c.id = s.customer_id;
