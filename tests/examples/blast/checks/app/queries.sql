-- The application's queries ($n parameters, as the application sends them).
SET search_path = public;

SELECT s.id, s.customer_name, s.value FROM sales s WHERE s.customer_id = $1;

SELECT s.id, c.name, s.value FROM sales s JOIN customers c ON c.id = s.customer_id WHERE s.id = $1;

-- fails before the migrations already (no such table): not counted
SELECT * FROM invoices WHERE id = $1;
