-- The mini example's first migration, made slow on demand so a test can strike while it runs:
-- ALTER DATABASE ... SET faults.sleep = '30' before the run, RESET it before the rerun (or faults.gate: see below).
CREATE VIEW sales_with_details AS
SELECT s.id, s.customer_id, c.name AS customer_name, s.value
FROM sales s
LEFT JOIN customers c ON c.id = s.customer_id;

COMMENT ON TABLE tickets IS 'customer tickets';  -- takes a SHARE UPDATE EXCLUSIVE lock

SELECT pg_sleep(coalesce(nullif(current_setting('faults.sleep', true), ''), '0')::float8);

-- faults.gate = 'on': wait exactly as long as a test holds pg_advisory_lock(4242) in its own session.
SELECT pg_advisory_xact_lock(4242) WHERE current_setting('faults.gate', true) = 'on';
