-- Application code of the mini CRM that reads the copy migration 2 drops (sales.customer_name).
CREATE FUNCTION sale_label(p_sale int) RETURNS text LANGUAGE sql STABLE AS $$
  SELECT s.id || ': ' ||
         s.customer_name
  FROM sales s WHERE s.id = p_sale
$$;

CREATE FUNCTION sales_fill_name() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  SELECT c.name INTO NEW.customer_name FROM customers c WHERE c.id = NEW.customer_id;
  RETURN NEW;
END
$$;
CREATE TRIGGER sales_fill_name BEFORE INSERT ON sales FOR EACH ROW EXECUTE FUNCTION sales_fill_name();

-- Not broken by the migrations: counted as checked, never as broken.
CREATE FUNCTION customer_total(p_customer int) RETURNS numeric LANGUAGE plpgsql STABLE AS $$
DECLARE total numeric;
BEGIN
  SELECT sum(s.value) INTO total FROM sales s WHERE s.customer_id = p_customer;
  EXECUTE format('SELECT %I FROM sales LIMIT 1', 'value');
  RETURN total;
END
$$;
