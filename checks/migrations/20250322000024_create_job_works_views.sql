-- Migration 5: Create Job Works Views (CRITICAL)
-- job_works_with_details joins job_works to customers, products, product_categories, suppliers, users
-- (receiver engineer), tenants and the specification counts: 7 joins, all LEFT JOINs on keys unique on
-- the joined side, so the view has exactly one row per job work and COUNT(*) can skip the joins.
-- Names from joins only, security_invoker (see migration 2).

CREATE VIEW job_works_with_details WITH (security_invoker = true) AS
SELECT jw.id,
       jw.tenant_id,
       jw.customer_id,
       jw.product_id,
       jw.receiver_engineer_id,
       jw.job_number,
       jw.status,
       jw.charges,
       jw.received_at,
       jw.completed_at,
       t.name                        AS tenant_name,
       c.name                        AS customer_name,
       c.phone                       AS customer_phone,
       c.email                       AS customer_email,
       p.name                        AS product_name,
       p.sku                         AS product_sku,
       pc.name                       AS product_category,
       sup.name                      AS supplier_name,
       u.full_name                   AS receiver_engineer_name,
       u.email                       AS receiver_engineer_email,
       coalesce(sp.spec_count, 0)    AS specification_count
FROM job_works jw
LEFT JOIN tenants t             ON t.id = jw.tenant_id
LEFT JOIN customers c           ON c.id = jw.customer_id
LEFT JOIN products p            ON p.id = jw.product_id
LEFT JOIN product_categories pc ON pc.id = p.category_id
LEFT JOIN suppliers sup         ON sup.id = p.supplier_id
LEFT JOIN users u               ON u.id = jw.receiver_engineer_id
LEFT JOIN (
    SELECT job_work_id, count(*) AS spec_count
    FROM job_work_specifications
    GROUP BY job_work_id
) sp ON sp.job_work_id = jw.id;

CREATE VIEW job_work_specifications_with_details WITH (security_invoker = true) AS
SELECT s.id,
       s.tenant_id,
       s.job_work_id,
       s.spec_name,
       s.spec_value,
       s.unit,
       jw.job_number        AS job_work_ref,
       jw.status            AS job_work_status,
       jw.product_id,
       p.name               AS product_name,
       jw.customer_id,
       c.name               AS customer_name
FROM job_work_specifications s
LEFT JOIN job_works jw ON jw.id = s.job_work_id
LEFT JOIN products p   ON p.id = jw.product_id
LEFT JOIN customers c  ON c.id = jw.customer_id;
