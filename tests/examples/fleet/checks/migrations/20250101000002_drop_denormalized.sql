ALTER TABLE sales DROP COLUMN customer_name;
