-- The CRM application's own database code: a SQL function and a PL/pgSQL function its API calls. Both read the
-- names through the tables they come from, not the denormalized copies migration 7 drops: the blast radius
-- ([[blast_radius]] database_code) checks that against the schema after the pending migrations.
CREATE FUNCTION customer_sales_total(p_customer bigint) RETURNS numeric LANGUAGE sql STABLE AS $$
  SELECT coalesce(sum(s.value), 0) FROM sales s WHERE s.customer_id = p_customer AND s.status = 'won'
$$;

CREATE FUNCTION ticket_headline(p_ticket bigint) RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
  headline text;
BEGIN
  SELECT t.ticket_number || ' ' || t.title || coalesce(' (' || c.name || ')', '') INTO headline
  FROM tickets t LEFT JOIN customers c ON c.id = t.customer_id
  WHERE t.id = p_ticket;
  RETURN headline;
END
$$;
