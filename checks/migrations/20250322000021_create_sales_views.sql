-- Migration 2: Create Sales Views
-- sales_with_details, sale_items_with_details, product_sales_with_details.
-- The names come from joins to the normalized tables, never from the denormalized columns that
-- migration 7 drops (a view that read them would make that DROP COLUMN fail). Every join is a
-- LEFT JOIN on a key that is unique on the joined side, so each view has exactly one row per base row.
-- security_invoker: a view reads with the rights of whoever queries it, so the tables' row-level security
-- applies to the application's role (crm_app). Without it a view runs with its owner's rights, and crm_app, to
-- which every new view is granted, would see every tenant's rows through it (corrected for issue 12).

CREATE VIEW sales_with_details WITH (security_invoker = true) AS
SELECT s.id,
       s.tenant_id,
       s.customer_id,
       s.assigned_to,
       s.sale_number,
       s.value,
       s.value                      AS amount,
       s.status,
       s.stage,
       s.sale_date,
       s.created_at,
       t.name                       AS tenant_name,
       c.name                       AS customer_name,
       c.email                      AS customer_email,
       c.phone                      AS customer_phone,
       u.full_name                  AS assigned_to_name,
       u.email                      AS assigned_to_email,
       coalesce(si.item_count, 0)   AS item_count,
       coalesce(si.items_total, 0)  AS items_total
FROM sales s
LEFT JOIN tenants t   ON t.id = s.tenant_id
LEFT JOIN customers c ON c.id = s.customer_id
LEFT JOIN users u     ON u.id = s.assigned_to
LEFT JOIN (
    SELECT sale_id, count(*) AS item_count, sum(line_total) AS items_total
    FROM sale_items
    GROUP BY sale_id
) si ON si.sale_id = s.id;

CREATE VIEW sale_items_with_details WITH (security_invoker = true) AS
SELECT si.id,
       si.tenant_id,
       si.sale_id,
       si.product_id,
       si.quantity,
       si.unit_price,
       si.line_total,
       s.sale_number,
       s.sale_date,
       s.status        AS sale_status,
       s.customer_id,
       c.name          AS customer_name,
       p.name          AS product_name,
       p.sku           AS product_sku,
       pc.name         AS product_category
FROM sale_items si
LEFT JOIN sales s               ON s.id = si.sale_id
LEFT JOIN customers c           ON c.id = s.customer_id
LEFT JOIN products p            ON p.id = si.product_id
LEFT JOIN product_categories pc ON pc.id = p.category_id;

CREATE VIEW product_sales_with_details WITH (security_invoker = true) AS
SELECT ps.id,
       ps.tenant_id,
       ps.product_id,
       ps.customer_id,
       ps.sale_id,
       ps.quantity,
       ps.total_value,
       ps.sale_date,
       p.name          AS product_name,
       p.sku           AS product_sku,
       pc.name         AS product_category,
       c.name          AS customer_name,
       s.sale_number
FROM product_sales ps
LEFT JOIN products p            ON p.id = ps.product_id
LEFT JOIN product_categories pc ON pc.id = p.category_id
LEFT JOIN customers c           ON c.id = ps.customer_id
LEFT JOIN sales s               ON s.id = ps.sale_id;
