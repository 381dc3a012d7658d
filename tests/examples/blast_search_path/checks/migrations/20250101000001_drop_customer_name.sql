ALTER TABLE crm.sales DROP COLUMN customer_name;
