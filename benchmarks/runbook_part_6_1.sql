-- The runbook's Part 6.1 "Data Integrity Check" script, verbatim: the SQL between `<< EOF` and `EOF` of
-- phase4-staging-execution-guide.md, Phase 6.1 (psql -h staging-host -U staging-user -d crm_staging).
-- benchmarks/run.py times it as written. It is kept as is on purpose, mistakes included (see RESULTS.md).

-- 1. Verify row counts unchanged
SELECT 'products' as table_name, COUNT(*) as row_count FROM products
UNION ALL
SELECT 'sales', COUNT(*) FROM sales
UNION ALL
SELECT 'customers', COUNT(*) FROM customers
UNION ALL
SELECT 'tickets', COUNT(*) FROM tickets
UNION ALL
SELECT 'contracts', COUNT(*) FROM contracts
UNION ALL
SELECT 'job_works', COUNT(*) FROM job_works
UNION ALL
SELECT 'complaints', COUNT(*) FROM complaints
ORDER BY table_name;

-- 2. Verify FK relationships intact
SELECT 'sales_customer_fk' as check_name, COUNT(*) as valid_count
FROM sales WHERE customer_id IS NULL;

SELECT 'tickets_customer_fk', COUNT(*)
FROM tickets WHERE customer_id IS NOT NULL 
  AND customer_id NOT IN (SELECT id FROM customers);

SELECT 'job_works_customer_fk', COUNT(*)
FROM job_works WHERE customer_id IS NOT NULL 
  AND customer_id NOT IN (SELECT id FROM customers);

-- 3. Verify no orphaned records
SELECT 'orphaned_sales', COUNT(*)
FROM sales WHERE customer_id NOT IN (SELECT id FROM customers WHERE customer_id IS NOT NULL);

SELECT 'orphaned_tickets', COUNT(*)
FROM tickets WHERE customer_id NOT IN (SELECT id FROM customers WHERE customer_id IS NOT NULL);

-- 4. Verify views return expected data
SELECT 'sales_view_rows', COUNT(*) FROM sales_with_details;
SELECT 'tickets_view_rows', COUNT(*) FROM tickets_with_details;
SELECT 'job_works_view_rows', COUNT(*) FROM job_works_with_details;

