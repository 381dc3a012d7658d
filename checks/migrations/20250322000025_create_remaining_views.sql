-- Migration 6: Create Remaining Views
-- service_contracts_with_details, complaints_with_details.
-- Names from joins only, security_invoker (see migration 2); one row per base row.

CREATE VIEW service_contracts_with_details WITH (security_invoker = true) AS
SELECT sc.id,
       sc.tenant_id,
       sc.customer_id,
       sc.product_id,
       sc.assigned_to,
       sc.contract_number,
       sc.annual_value,
       sc.status,
       sc.start_date,
       sc.end_date,
       c.name          AS customer_name,
       c.email         AS customer_email,
       p.name          AS product_name,
       p.sku           AS product_sku,
       u.full_name     AS assigned_to_name
FROM service_contracts sc
LEFT JOIN customers c ON c.id = sc.customer_id
LEFT JOIN products p  ON p.id = sc.product_id
LEFT JOIN users u     ON u.id = sc.assigned_to;

CREATE VIEW complaints_with_details WITH (security_invoker = true) AS
SELECT cp.id,
       cp.tenant_id,
       cp.customer_id,
       cp.product_id,
       cp.assigned_to,
       cp.complaint_number,
       cp.title,
       cp.status,
       cp.severity,
       cp.created_at,
       c.name          AS customer_name,
       c.email         AS customer_email,
       p.name          AS product_name,
       u.full_name     AS assigned_to_name
FROM complaints cp
LEFT JOIN customers c ON c.id = cp.customer_id
LEFT JOIN products p  ON p.id = cp.product_id
LEFT JOIN users u     ON u.id = cp.assigned_to;
