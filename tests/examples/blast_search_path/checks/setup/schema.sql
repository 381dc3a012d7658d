-- The application's tables live in schema crm; its role finds them through its search_path.
CREATE SCHEMA crm;
CREATE TABLE crm.customers (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE crm.sales (id int PRIMARY KEY, customer_id int REFERENCES crm.customers (id), customer_name text,
                        value numeric NOT NULL);
INSERT INTO crm.customers SELECT g, 'customer ' || g FROM generate_series(1, 10) g;
INSERT INTO crm.sales SELECT g, 1 + g % 10, 'customer ' || (1 + g % 10), g * 10 FROM generate_series(1, 100) g;
-- Application code written for that search_path (no SET search_path of its own, as most is).
SET search_path = crm, public;
CREATE FUNCTION crm.sale_label(p_sale int) RETURNS text LANGUAGE sql STABLE AS $$
  SELECT s.id || ': ' || s.customer_name FROM sales s WHERE s.id = p_sale
$$;
