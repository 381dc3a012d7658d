-- Deterministic synthetic CRM data, generated in SQL (generate_series + modular arithmetic, no random()).
--
-- Size knob: the custom setting crm.scale (the plan passes it as [setup] settings = { "crm.scale" = "1000" };
-- by hand: SET crm.scale = 1000). It is the number of rows of each large table: sales, sale_items, tickets,
-- ticket_comments, job_works, product_sales. Smaller tables scale with it:
--   customers ~ scale/10, products ~ scale/20, users ~ scale/100 (multiples of the 3 tenants, with a floor),
--   contracts, service_contracts, complaints, attachments ~ scale/10, jobs, notifications ~ scale/5,
--   invoices, audit_logs, job_work_specifications ~ scale/2.
-- Unset, it defaults to 1000.
--
-- Every row belongs to one of 3 tenants; row id i of a tenant-owned table has tenant ((i-1) % 3) + 1, so a
-- reference to "a customer of tenant t" is ((k % customers_per_tenant) * 3 + t). Foreign keys therefore never
-- cross tenants, and denormalized columns are filled by joining the referenced row (they always agree with
-- the ids). A few nullable foreign keys are NULL on purpose (tickets.customer_id every 25th row,
-- sales/tickets/contracts/... assigned_to, complaints.product_id).
--
-- Plain SQL only (no psql meta-commands): the plugin runs the file as one string.

-- Bulk-load practice (PostgreSQL docs, "Populating a Database"): the foreign keys of schema.sql are dropped
-- here and re-added, under the same names, at the end of this file. Re-adding validates every row with
-- one join per constraint instead of one trigger call per inserted row (about twice as fast at scale).
CREATE TEMP TABLE crm_fk_defs AS
SELECT format('%I.%I', n.nspname, c.relname) AS tbl, con.conname, pg_get_constraintdef(con.oid) AS def
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE con.contype = 'f' AND n.nspname = 'public';

DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM crm_fk_defs LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', r.tbl, r.conname);
    END LOOP;
END
$$;

CREATE TEMP TABLE crm_sizes AS
SELECT s,
       3                              AS t,
       greatest(4, s / 300)           AS upt,      -- users per tenant (at least one of each role)
       greatest(2, s / 30)            AS cpt,      -- customers per tenant
       greatest(2, s / 60)            AS ppt,      -- products per tenant
       3 * greatest(4, s / 300)       AS n_users,
       3 * greatest(2, s / 30)        AS n_cust,
       3 * greatest(2, s / 60)        AS n_prod,
       greatest(3, s / 10)            AS n_contracts,
       greatest(3, s / 10)            AS n_svc,
       greatest(3, s / 10)            AS n_compl,
       greatest(3, s / 10)            AS n_attach,
       greatest(3, s / 5)             AS n_jobs,
       greatest(3, s / 5)             AS n_notif,
       greatest(1, s / 2)             AS n_inv,
       greatest(3, s / 2)             AS n_audit,
       greatest(3, s / 2)             AS n_specs
FROM (SELECT greatest(1, coalesce(nullif(current_setting('crm.scale', true), ''), '1000')::int)::bigint AS s) x;

-- ---------------------------------------------------------------- tenants and people

INSERT INTO tenants (id, name, slug, plan, created_at) OVERRIDING SYSTEM VALUE
VALUES (1, 'Northwind Field Services', 'northwind', 'enterprise', '2022-01-03 00:00:00+00'),
       (2, 'Bluebird Appliances',      'bluebird',  'standard',   '2022-03-14 00:00:00+00'),
       (3, 'Cedar Medical Devices',    'cedar',     'standard',   '2022-06-01 00:00:00+00');

INSERT INTO users (id, tenant_id, email, full_name, role, is_active, created_at) OVERRIDING SYSTEM VALUE
SELECT i,
       (i - 1) % 3 + 1,
       'user' || i || '@tenant' || ((i - 1) % 3 + 1) || '.example.com',
       (ARRAY['Aisha', 'Ben', 'Carla', 'Dev', 'Elena', 'Farid', 'Grace', 'Hiro',
              'Ines', 'Jonas', 'Kemi', 'Liam', 'Mei', 'Noah', 'Olga', 'Priya'])[1 + i % 16]
         || ' ' ||
       (ARRAY['Adams', 'Brown', 'Chen', 'Diaz', 'Evans', 'Fischer', 'Gupta', 'Hughes',
              'Ito', 'Jensen', 'Khan', 'Lopez', 'Moreau', 'Novak', 'Okafor', 'Patel'])[1 + (i / 16) % 16],
       (ARRAY['admin', 'sales', 'engineer', 'support'])[1 + ((i - 1) / 3) % 4],
       i % 17 <> 0,
       timestamptz '2022-01-01 00:00:00+00' + (i % 365) * interval '1 day'
FROM crm_sizes z, generate_series(1::bigint, z.n_users) AS g(i);

INSERT INTO customers (id, tenant_id, name, email, phone, company_name, status, assigned_to, created_at,
                       assigned_to_name) OVERRIDING SYSTEM VALUE
SELECT b.id, b.tenant_id, b.name, b.email, b.phone, b.company_name, b.status, b.assigned_to, b.created_at,
       u.full_name
FROM (
    SELECT i AS id,
           (i - 1) % 3 + 1 AS tenant_id,
           (ARRAY['Acme', 'Globex', 'Initech', 'Umbrella', 'Stark', 'Wayne', 'Hooli', 'Vandelay',
                  'Tyrell', 'Cyberdyne', 'Soylent', 'Wonka'])[1 + i % 12]
             || ' ' ||
           (ARRAY['Industries', 'Logistics', 'Foods', 'Systems', 'Retail', 'Health', 'Energy', 'Labs'])[1 + (i / 12) % 8]
             || ' #' || i AS name,
           'contact' || i || '@customer' || i || '.example.net' AS email,
           '+1-555-' || lpad((i % 10000)::text, 4, '0') AS phone,
           'Company ' || i AS company_name,
           (ARRAY['active', 'active', 'active', 'active', 'active', 'active', 'active',
                  'prospect', 'prospect', 'inactive'])[1 + i % 10] AS status,
           CASE WHEN i % 8 = 0 THEN NULL ELSE (((i - 1) / 3 * 31) % z.upt) * 3 + (i - 1) % 3 + 1 END AS assigned_to,
           timestamptz '2022-01-01 00:00:00+00' + (i % 900) * interval '1 day' AS created_at
    FROM crm_sizes z, generate_series(1::bigint, z.n_cust) AS g(i)
) b
LEFT JOIN users u ON u.id = b.assigned_to;

INSERT INTO customer_contacts (id, tenant_id, customer_id, full_name, email, phone, is_primary, customer_name)
OVERRIDING SYSTEM VALUE
SELECT b.id, c.tenant_id, c.id,
       (ARRAY['Sam', 'Alex', 'Robin', 'Kim', 'Jo', 'Chris', 'Pat', 'Lee'])[1 + b.id % 8] || ' ' ||
       (ARRAY['Rivera', 'Walsh', 'Berg', 'Nakamura', 'Silva', 'Kowalski'])[1 + (b.id / 8) % 6],
       'person' || b.id || '@customer' || c.id || '.example.net',
       '+1-556-' || lpad((b.id % 10000)::text, 4, '0'),
       b.id <= z.n_cust,
       c.name
FROM crm_sizes z,
     LATERAL (SELECT i AS id, (i - 1) % z.n_cust + 1 AS customer_id
              FROM generate_series(1::bigint, 2 * z.n_cust) AS g(i)) b
JOIN customers c ON c.id = b.customer_id;

INSERT INTO tags (id, tenant_id, name) OVERRIDING SYSTEM VALUE
SELECT i, (i - 1) % 3 + 1, (ARRAY['vip', 'wholesale', 'retail', 'government', 'partner'])[1 + (i - 1) / 3]
FROM generate_series(1::bigint, 15) AS g(i);

INSERT INTO customer_tags (customer_id, tag_id, tenant_id)
SELECT c.id, ((c.id + j.off) % 5) * 3 + c.tenant_id, c.tenant_id
FROM customers c CROSS JOIN (VALUES (0), (2)) AS j(off);

-- ---------------------------------------------------------------- products and stock

INSERT INTO product_categories (id, tenant_id, name, description) OVERRIDING SYSTEM VALUE
SELECT i, (i - 1) % 3 + 1,
       (ARRAY['Air Conditioners', 'Refrigerators', 'Washing Machines', 'Water Purifiers'])[1 + (i - 1) / 3],
       'Category ' || i
FROM generate_series(1::bigint, 12) AS g(i);

INSERT INTO products (id, tenant_id, category_id, sku, name, unit_price, status, created_at,
                      category, is_active, supplier_name) OVERRIDING SYSTEM VALUE
SELECT b.id, b.tenant_id, b.category_id, b.sku,
       pc.name || ' ' || (ARRAY['Lite', 'Plus', 'Pro', 'Max', 'Eco'])[1 + b.id % 5] || ' ' || b.id,
       b.unit_price, b.status, b.created_at,
       pc.name, b.status = 'active', b.supplier_name
FROM (
    SELECT i AS id,
           (i - 1) % 3 + 1 AS tenant_id,
           ((i * 7) % 4) * 3 + (i - 1) % 3 + 1 AS category_id,
           'SKU-' || lpad(i::text, 7, '0') AS sku,
           (50 + (i * 37) % 950)::numeric(12, 2) + 0.99 AS unit_price,
           CASE WHEN i % 9 = 0 THEN 'discontinued' ELSE 'active' END AS status,
           timestamptz '2021-06-01 00:00:00+00' + (i % 500) * interval '1 day' AS created_at,
           CASE WHEN i % 10 = 0 THEN NULL
                ELSE (ARRAY['Apex Components', 'Brightline Parts', 'Coastal Supply Co', 'Delta Industrial',
                            'Evergreen Traders'])[1 + i % 5] END AS supplier_name
    FROM crm_sizes z, generate_series(1::bigint, z.n_prod) AS g(i)
) b
JOIN product_categories pc ON pc.id = b.category_id;

INSERT INTO warehouses (id, tenant_id, name, city) OVERRIDING SYSTEM VALUE
SELECT i, (i - 1) % 3 + 1,
       (ARRAY['Central', 'North', 'South', 'East', 'West', 'Harbor'])[i] || ' Warehouse',
       (ARRAY['Leeds', 'Oslo', 'Porto', 'Gdansk', 'Lyon', 'Kiel'])[i]
FROM generate_series(1::bigint, 6) AS g(i);

INSERT INTO inventory (id, tenant_id, product_id, warehouse_id, quantity, updated_at, product_name, warehouse_name)
OVERRIDING SYSTEM VALUE
SELECT (p.id - 1) * 2 + w.n + 1, p.tenant_id, p.id, w.n * 3 + p.tenant_id,
       ((p.id * 13 + w.n * 7) % 500)::int,
       timestamptz '2024-01-01 00:00:00+00' + (p.id % 90) * interval '1 day',
       p.name, wh.name
FROM products p
CROSS JOIN (VALUES (0), (1)) AS w(n)
JOIN warehouses wh ON wh.id = w.n * 3 + p.tenant_id;

-- ---------------------------------------------------------------- sales

INSERT INTO sales (id, tenant_id, customer_id, assigned_to, sale_number, value, status, stage, sale_date,
                   created_at, customer_name, customer_email, assigned_to_name, amount) OVERRIDING SYSTEM VALUE
SELECT b.id, b.tenant_id, b.customer_id, b.assigned_to, b.sale_number, b.value, b.status, b.stage, b.sale_date,
       b.sale_date::timestamptz, c.name, c.email, u.full_name, b.value
FROM (
    SELECT i AS id,
           (i - 1) % 3 + 1 AS tenant_id,
           (((i - 1) / 3 * 7919) % z.cpt) * 3 + (i - 1) % 3 + 1 AS customer_id,
           CASE WHEN i % 20 = 0 THEN NULL ELSE (((i - 1) / 3 * 31) % z.upt) * 3 + (i - 1) % 3 + 1 END AS assigned_to,
           'S-' || lpad(i::text, 8, '0') AS sale_number,
           (100 + (i * 7717) % 9900)::numeric(14, 2) + (i % 100) / 100.0 AS value,
           (ARRAY['open', 'won', 'lost', 'won'])[1 + i % 4] AS status,
           (ARRAY['lead', 'qualified', 'proposal', 'negotiation', 'closed'])[1 + i % 5] AS stage,
           date '2023-01-01' + (i % 730)::int AS sale_date
    FROM crm_sizes z, generate_series(1::bigint, z.s) AS g(i)
) b
JOIN customers c ON c.id = b.customer_id
LEFT JOIN users u ON u.id = b.assigned_to;

INSERT INTO sale_items (id, tenant_id, sale_id, product_id, quantity, unit_price, line_total,
                        product_name, product_sku) OVERRIDING SYSTEM VALUE
SELECT b.id, b.tenant_id, b.sale_id, p.id, b.quantity, p.unit_price, b.quantity * p.unit_price, p.name, p.sku
FROM (
    SELECT i AS id,
           x.sale_id,
           (x.sale_id - 1) % 3 + 1 AS tenant_id,
           (((i - 1) / 3 * 53) % z.ppt) * 3 + (x.sale_id - 1) % 3 + 1 AS product_id,
           (1 + i % 5)::int AS quantity
    FROM crm_sizes z,
         LATERAL generate_series(1::bigint, z.s) AS g(i),
         LATERAL (SELECT ((i * 7919) % z.s) * 3 / 4 + 1 AS sale_id) x
) b
JOIN products p ON p.id = b.product_id;

INSERT INTO product_sales (id, tenant_id, product_id, customer_id, sale_id, quantity, total_value, sale_date,
                           product_name, customer_name) OVERRIDING SYSTEM VALUE
SELECT b.id, b.tenant_id, p.id, c.id, b.sale_id, b.quantity, b.quantity * p.unit_price, b.sale_date,
       p.name, c.name
FROM (
    SELECT a.id, a.sale_id, a.quantity,
           coalesce(sa.tenant_id, (a.id - 1) % 3 + 1) AS tenant_id,
           coalesce(sa.customer_id, (((a.id - 1) / 3 * 7919) % z.cpt) * 3 + (a.id - 1) % 3 + 1) AS customer_id,
           (((a.id - 1) / 3 * 59) % z.ppt) * 3 + coalesce(sa.tenant_id, (a.id - 1) % 3 + 1) AS product_id,
           coalesce(sa.sale_date, date '2023-01-01' + (a.id % 730)::int) AS sale_date
    FROM crm_sizes z
    CROSS JOIN LATERAL (
        SELECT i AS id,
               CASE WHEN i % 10 = 0 THEN NULL ELSE (i * 7919) % z.s + 1 END AS sale_id,
               (1 + i % 7)::int AS quantity
        FROM generate_series(1::bigint, z.s) AS g(i)
    ) a
    LEFT JOIN sales sa ON sa.id = a.sale_id
) b
JOIN products p ON p.id = b.product_id
JOIN customers c ON c.id = b.customer_id;

INSERT INTO invoices (id, tenant_id, sale_id, customer_id, invoice_number, amount_due, status, issued_at, due_at,
                      customer_name) OVERRIDING SYSTEM VALUE
SELECT b.id, sa.tenant_id, sa.id, sa.customer_id, 'INV-' || lpad(b.id::text, 8, '0'), sa.value,
       (ARRAY['draft', 'sent', 'paid', 'overdue'])[1 + b.id % 4],
       sa.sale_date + 3, sa.sale_date + 33, c.name
FROM crm_sizes z
CROSS JOIN LATERAL (SELECT i AS id, ((i - 1) * 2) % z.s + 1 AS sale_id
                    FROM generate_series(1::bigint, z.n_inv) AS g(i)) b
JOIN sales sa ON sa.id = b.sale_id
JOIN customers c ON c.id = sa.customer_id;

INSERT INTO payments (id, tenant_id, invoice_id, amount, method, paid_at, invoice_number) OVERRIDING SYSTEM VALUE
SELECT iv.id, iv.tenant_id, iv.id,
       CASE WHEN iv.status = 'paid' THEN iv.amount_due ELSE round(iv.amount_due / 2, 2) END,
       (ARRAY['card', 'bank_transfer', 'cash'])[1 + iv.id % 3],
       iv.issued_at::timestamptz + (iv.id % 30) * interval '1 day',
       iv.invoice_number
FROM invoices iv
WHERE iv.status <> 'draft';

-- ---------------------------------------------------------------- support

INSERT INTO tickets (id, tenant_id, customer_id, assigned_to, reported_by, ticket_number, title, description, status,
                     priority, created_at, resolved_at, customer_name, customer_email, assigned_to_name,
                     reported_by_name) OVERRIDING SYSTEM VALUE
SELECT b.id, b.tenant_id, b.customer_id, b.assigned_to, b.reported_by, b.ticket_number, b.title,
       'Reported issue: ' || b.title || ' (ticket ' || b.id || ')',
       b.status, b.priority, b.created_at,
       CASE WHEN b.status IN ('resolved', 'closed') THEN b.created_at + (1 + b.id % 72) * interval '1 hour' END,
       c.name, c.email, ua.full_name, ur.full_name
FROM (
    SELECT i AS id,
           (i - 1) % 3 + 1 AS tenant_id,
           CASE WHEN i % 25 = 0 THEN NULL ELSE (((i - 1) / 3 * 7919) % z.cpt) * 3 + (i - 1) % 3 + 1 END AS customer_id,
           CASE WHEN i % 10 = 0 THEN NULL ELSE (((i - 1) / 3 * 37) % z.upt) * 3 + (i - 1) % 3 + 1 END AS assigned_to,
           (((i - 1) / 3 * 17) % z.upt) * 3 + (i - 1) % 3 + 1 AS reported_by,
           'T-' || lpad(i::text, 8, '0') AS ticket_number,
           (ARRAY['Unit not cooling', 'Noise from compressor', 'Water leakage', 'Error code E4',
                  'Installation request', 'Remote not working', 'Billing question', 'Warranty claim'])[1 + i % 8]
             AS title,
           (ARRAY['open', 'in_progress', 'resolved', 'closed', 'closed'])[1 + i % 5] AS status,
           (ARRAY['low', 'medium', 'medium', 'high', 'urgent'])[1 + (i / 5) % 5] AS priority,
           timestamptz '2023-01-01 00:00:00+00' + (i % 700) * interval '1 day' + (i % 1440) * interval '1 minute'
             AS created_at
    FROM crm_sizes z, generate_series(1::bigint, z.s) AS g(i)
) b
LEFT JOIN customers c ON c.id = b.customer_id
LEFT JOIN users ua ON ua.id = b.assigned_to
JOIN users ur ON ur.id = b.reported_by;

INSERT INTO ticket_comments (id, tenant_id, ticket_id, author_id, body, is_internal, created_at,
                             author_name, author_email) OVERRIDING SYSTEM VALUE
SELECT b.id, tk.tenant_id, tk.id, u.id,
       (ARRAY['Called the customer', 'Engineer visit scheduled', 'Spare part ordered', 'Issue reproduced',
              'Waiting for customer reply', 'Resolved on site'])[1 + b.id % 6] || ' (#' || b.id || ')',
       b.id % 4 = 0,
       tk.created_at + (1 + b.id % 48) * interval '1 hour',
       u.full_name, u.email
FROM (
    SELECT i AS id,
           x.ticket_id,
           (((i - 1) / 3 * 29) % z.upt) * 3 + (x.ticket_id - 1) % 3 + 1 AS author_id
    FROM crm_sizes z,
         LATERAL generate_series(1::bigint, z.s) AS g(i),
         LATERAL (SELECT (i * 7919) % z.s + 1 AS ticket_id) x
) b
JOIN tickets tk ON tk.id = b.ticket_id
JOIN users u ON u.id = b.author_id;

INSERT INTO complaints (id, tenant_id, customer_id, product_id, assigned_to, complaint_number, title, status,
                        severity, created_at, customer_name, product_name, assigned_to_name) OVERRIDING SYSTEM VALUE
SELECT b.id, b.tenant_id, b.customer_id, b.product_id, b.assigned_to, 'C-' || lpad(b.id::text, 7, '0'),
       (ARRAY['Late delivery', 'Damaged unit', 'Rude technician', 'Repeated failure', 'Wrong invoice'])[1 + b.id % 5],
       (ARRAY['new', 'investigating', 'resolved', 'rejected'])[1 + b.id % 4],
       (ARRAY['minor', 'major', 'critical'])[1 + b.id % 3],
       timestamptz '2023-02-01 00:00:00+00' + (b.id % 600) * interval '1 day',
       c.name, p.name, u.full_name
FROM (
    SELECT i AS id,
           (i - 1) % 3 + 1 AS tenant_id,
           (((i - 1) / 3 * 7919) % z.cpt) * 3 + (i - 1) % 3 + 1 AS customer_id,
           CASE WHEN i % 5 = 0 THEN NULL ELSE (((i - 1) / 3 * 43) % z.ppt) * 3 + (i - 1) % 3 + 1 END AS product_id,
           CASE WHEN i % 4 = 0 THEN NULL ELSE (((i - 1) / 3 * 19) % z.upt) * 3 + (i - 1) % 3 + 1 END AS assigned_to
    FROM crm_sizes z, generate_series(1::bigint, z.n_compl) AS g(i)
) b
JOIN customers c ON c.id = b.customer_id
LEFT JOIN products p ON p.id = b.product_id
LEFT JOIN users u ON u.id = b.assigned_to;

-- ---------------------------------------------------------------- contracts

INSERT INTO contracts (id, tenant_id, customer_id, assigned_to, contract_number, title, value, status, start_date,
                       end_date, created_at, customer_name, customer_email, assigned_to_name) OVERRIDING SYSTEM VALUE
SELECT b.id, b.tenant_id, b.customer_id, b.assigned_to, 'K-' || lpad(b.id::text, 7, '0'),
       (ARRAY['Annual maintenance', 'Supply agreement', 'Installation contract', 'Extended warranty'])[1 + b.id % 4]
         || ' ' || b.id,
       (1000 + (b.id * 7717) % 49000)::numeric(14, 2),
       (ARRAY['draft', 'pending_approval', 'active', 'active', 'expired'])[1 + b.id % 5],
       b.start_date, b.start_date + 365, b.start_date::timestamptz - interval '10 days',
       c.name, c.email, u.full_name
FROM (
    SELECT i AS id,
           (i - 1) % 3 + 1 AS tenant_id,
           (((i - 1) / 3 * 7919) % z.cpt) * 3 + (i - 1) % 3 + 1 AS customer_id,
           CASE WHEN i % 7 = 0 THEN NULL ELSE (((i - 1) / 3 * 23) % z.upt) * 3 + (i - 1) % 3 + 1 END AS assigned_to,
           date '2022-01-01' + (i % 1000)::int AS start_date
    FROM crm_sizes z, generate_series(1::bigint, z.n_contracts) AS g(i)
) b
JOIN customers c ON c.id = b.customer_id
LEFT JOIN users u ON u.id = b.assigned_to;

INSERT INTO contract_approval_records (id, tenant_id, contract_id, approver_id, decision, comments, decided_at,
                                       approver_name, contract_title) OVERRIDING SYSTEM VALUE
SELECT b.id, k.tenant_id, k.id, u.id, b.decision,
       CASE b.decision WHEN 'rejected' THEN 'Pricing needs review' WHEN 'approved' THEN 'OK' END,
       CASE WHEN b.decision <> 'pending' THEN k.created_at + (1 + b.id % 5) * interval '1 day' END,
       u.full_name, k.title
FROM (
    SELECT i AS id,
           (i - 1) % z.n_contracts + 1 AS contract_id,
           (((i - 1) / 3 * 13) % z.upt) * 3 + ((i - 1) % z.n_contracts) % 3 + 1 AS approver_id,
           (ARRAY['approved', 'approved', 'rejected', 'pending'])[1 + i % 4] AS decision
    FROM crm_sizes z, generate_series(1::bigint, 2 * z.n_contracts) AS g(i)
) b
JOIN contracts k ON k.id = b.contract_id
JOIN users u ON u.id = b.approver_id;

INSERT INTO service_contracts (id, tenant_id, customer_id, product_id, assigned_to, contract_number, annual_value,
                               status, start_date, end_date, customer_name, product_name, assigned_to_name)
OVERRIDING SYSTEM VALUE
SELECT b.id, b.tenant_id, b.customer_id, b.product_id, b.assigned_to, 'SC-' || lpad(b.id::text, 7, '0'),
       (200 + (b.id * 389) % 4800)::numeric(14, 2),
       (ARRAY['active', 'active', 'expired', 'cancelled'])[1 + b.id % 4],
       b.start_date, b.start_date + 365,
       c.name, p.name, u.full_name
FROM (
    SELECT i AS id,
           (i - 1) % 3 + 1 AS tenant_id,
           (((i - 1) / 3 * 7919) % z.cpt) * 3 + (i - 1) % 3 + 1 AS customer_id,
           (((i - 1) / 3 * 47) % z.ppt) * 3 + (i - 1) % 3 + 1 AS product_id,
           CASE WHEN i % 6 = 0 THEN NULL ELSE (((i - 1) / 3 * 41) % z.upt) * 3 + (i - 1) % 3 + 1 END AS assigned_to,
           date '2022-06-01' + (i % 900)::int AS start_date
    FROM crm_sizes z, generate_series(1::bigint, z.n_svc) AS g(i)
) b
JOIN customers c ON c.id = b.customer_id
JOIN products p ON p.id = b.product_id
LEFT JOIN users u ON u.id = b.assigned_to;

-- ---------------------------------------------------------------- field work

-- receiver engineers: users whose per-tenant index j has j % 4 = 2 (role 'engineer')
INSERT INTO job_works (id, tenant_id, customer_id, product_id, receiver_engineer_id, job_number, status, charges,
                       received_at, completed_at, customer_name, customer_phone, product_name, product_sku,
                       receiver_engineer_name, receiver_engineer_email) OVERRIDING SYSTEM VALUE
SELECT b.id, b.tenant_id, b.customer_id, b.product_id, b.engineer_id, 'JW-' || lpad(b.id::text, 8, '0'),
       b.status, (b.id * 97 % 2500)::numeric(12, 2), b.received_at,
       CASE WHEN b.status IN ('completed', 'delivered') THEN b.received_at + (1 + b.id % 14) * interval '1 day' END,
       c.name, c.phone, p.name, p.sku, u.full_name, u.email
FROM (
    SELECT i AS id,
           (i - 1) % 3 + 1 AS tenant_id,
           (((i - 1) / 3 * 7919) % z.cpt) * 3 + (i - 1) % 3 + 1 AS customer_id,
           (((i - 1) / 3 * 61) % z.ppt) * 3 + (i - 1) % 3 + 1 AS product_id,
           (4 * (((i - 1) / 3 * 11) % (z.upt / 4)) + 2) * 3 + (i - 1) % 3 + 1 AS engineer_id,
           (ARRAY['received', 'in_progress', 'completed', 'delivered'])[1 + i % 4] AS status,
           timestamptz '2023-01-01 00:00:00+00' + (i % 700) * interval '1 day' + (i % 600) * interval '1 minute'
             AS received_at
    FROM crm_sizes z, generate_series(1::bigint, z.s) AS g(i)
) b
JOIN customers c ON c.id = b.customer_id
JOIN products p ON p.id = b.product_id
JOIN users u ON u.id = b.engineer_id;

INSERT INTO job_work_specifications (id, tenant_id, job_work_id, spec_name, spec_value, unit, job_work_ref,
                                     product_name) OVERRIDING SYSTEM VALUE
SELECT b.id, jw.tenant_id, jw.id,
       (ARRAY['Serial number', 'Model year', 'Fault code', 'Refrigerant charge', 'Power draw'])[1 + b.id % 5],
       CASE b.id % 5 WHEN 0 THEN 'SN' || lpad((b.id * 7)::text, 9, '0')
                     WHEN 1 THEN (2015 + b.id % 10)::text
                     WHEN 2 THEN 'E' || (b.id % 9)
                     WHEN 3 THEN (400 + b.id % 600)::text
                     ELSE (800 + b.id % 1700)::text END,
       (ARRAY[NULL, NULL, NULL, 'g', 'W'])[1 + b.id % 5],
       jw.job_number, p.name
FROM (
    SELECT i AS id, (i * 7919) % z.s + 1 AS job_work_id
    FROM crm_sizes z, generate_series(1::bigint, z.n_specs) AS g(i)
) b
JOIN job_works jw ON jw.id = b.job_work_id
JOIN products p ON p.id = jw.product_id;

INSERT INTO jobs (id, tenant_id, customer_id, assigned_to, title, status, scheduled_at, customer_name,
                  assigned_to_name) OVERRIDING SYSTEM VALUE
SELECT b.id, b.tenant_id, b.customer_id, b.assigned_to,
       (ARRAY['Site survey', 'Installation', 'Preventive maintenance', 'Repair visit', 'Removal'])[1 + b.id % 5],
       (ARRAY['scheduled', 'in_progress', 'done', 'done', 'cancelled'])[1 + b.id % 5],
       timestamptz '2023-03-01 08:00:00+00' + (b.id % 650) * interval '1 day' + (b.id % 9) * interval '1 hour',
       c.name, u.full_name
FROM (
    SELECT i AS id,
           (i - 1) % 3 + 1 AS tenant_id,
           (((i - 1) / 3 * 7919) % z.cpt) * 3 + (i - 1) % 3 + 1 AS customer_id,
           CASE WHEN i % 9 = 0 THEN NULL ELSE (((i - 1) / 3 * 11) % z.upt) * 3 + (i - 1) % 3 + 1 END AS assigned_to
    FROM crm_sizes z, generate_series(1::bigint, z.n_jobs) AS g(i)
) b
JOIN customers c ON c.id = b.customer_id
LEFT JOIN users u ON u.id = b.assigned_to;

-- ---------------------------------------------------------------- platform

INSERT INTO notifications (id, tenant_id, user_id, title, body, read_at, created_at) OVERRIDING SYSTEM VALUE
SELECT b.id, u.tenant_id, u.id,
       (ARRAY['New ticket assigned', 'Contract awaiting approval', 'Job work completed', 'Invoice overdue'])[1 + b.id % 4],
       'Notification ' || b.id,
       CASE WHEN b.id % 3 = 0 THEN NULL
            ELSE timestamptz '2024-01-01 00:00:00+00' + (b.id % 300) * interval '1 day' + interval '2 hours' END,
       timestamptz '2024-01-01 00:00:00+00' + (b.id % 300) * interval '1 day'
FROM (
    SELECT i AS id, (i * 13) % z.n_users + 1 AS user_id
    FROM crm_sizes z, generate_series(1::bigint, z.n_notif) AS g(i)
) b
JOIN users u ON u.id = b.user_id;

-- audit entries are about sales: same tenant as the sale they describe
INSERT INTO audit_logs (id, tenant_id, user_id, action, entity_type, entity_id, created_at, user_name)
OVERRIDING SYSTEM VALUE
SELECT b.id, b.tenant_id, b.user_id, (ARRAY['create', 'update', 'update', 'delete', 'export'])[1 + b.id % 5],
       'sale', b.sale_id,
       timestamptz '2023-01-01 00:00:00+00' + (b.id % 700) * interval '1 day' + (b.id % 1000) * interval '1 second',
       u.full_name
FROM (
    SELECT i AS id, x.sale_id,
           (x.sale_id - 1) % 3 + 1 AS tenant_id,
           CASE WHEN i % 10 = 0 THEN NULL ELSE (((i - 1) / 3 * 7) % z.upt) * 3 + (x.sale_id - 1) % 3 + 1 END AS user_id
    FROM crm_sizes z,
         LATERAL generate_series(1::bigint, z.n_audit) AS g(i),
         LATERAL (SELECT (i * 7919) % z.s + 1 AS sale_id) x
) b
LEFT JOIN users u ON u.id = b.user_id;

-- attachments hang off tickets: same tenant as the ticket
INSERT INTO attachments (id, tenant_id, entity_type, entity_id, file_name, content_type, size_bytes, uploaded_by,
                         created_at) OVERRIDING SYSTEM VALUE
SELECT i, (x.ticket_id - 1) % 3 + 1, 'ticket', x.ticket_id,
       'attachment-' || i || (ARRAY['.jpg', '.pdf', '.png'])[1 + i % 3],
       (ARRAY['image/jpeg', 'application/pdf', 'image/png'])[1 + i % 3],
       10000 + (i * 4099) % 5000000,
       (((i - 1) / 3 * 5) % z.upt) * 3 + (x.ticket_id - 1) % 3 + 1,
       timestamptz '2023-01-01 00:00:00+00' + (i % 700) * interval '1 day'
FROM crm_sizes z,
     LATERAL generate_series(1::bigint, z.n_attach) AS g(i),
     LATERAL (SELECT (i * 7919) % z.s + 1 AS ticket_id) x;

-- ---------------------------------------------------------------- finish

-- rows were inserted with explicit ids: move every identity sequence past the highest id
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT c.table_name, c.column_name
        FROM information_schema.columns c
        WHERE c.table_schema = 'public' AND c.is_identity = 'YES'
    LOOP
        EXECUTE format('SELECT setval(pg_get_serial_sequence(%L, %L), coalesce(max(%I), 0) + 1, false) FROM %I.%I',
                       'public.' || quote_ident(r.table_name), r.column_name, r.column_name, 'public', r.table_name);
    END LOOP;
END
$$;

-- re-add the foreign keys dropped at the top: each one is validated against all rows here
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM crm_fk_defs ORDER BY tbl, conname LOOP
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', r.tbl, r.conname, r.def);
    END LOOP;
END
$$;

DROP TABLE crm_sizes;
DROP TABLE crm_fk_defs;

ANALYZE;
