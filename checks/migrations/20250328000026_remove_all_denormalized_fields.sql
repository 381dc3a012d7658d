-- Migration 7: Remove All Denormalized Fields (POINT OF NO RETURN)
-- Drops the 45 denormalized columns. The ids they were copied from stay (sales.customer_id,
-- sales.assigned_to, sales.value, ...); the *_with_details views of migrations 2-6 give the names back.
-- No CASCADE on purpose: if any view still read one of these columns, this migration must fail
-- instead of silently dropping the view.

ALTER TABLE customers
    DROP COLUMN assigned_to_name;

ALTER TABLE customer_contacts
    DROP COLUMN customer_name;

ALTER TABLE products
    DROP COLUMN category,
    DROP COLUMN is_active,
    DROP COLUMN supplier_name;

ALTER TABLE inventory
    DROP COLUMN product_name,
    DROP COLUMN warehouse_name;

ALTER TABLE sales
    DROP COLUMN customer_name,
    DROP COLUMN customer_email,
    DROP COLUMN assigned_to_name,
    DROP COLUMN amount;

ALTER TABLE sale_items
    DROP COLUMN product_name,
    DROP COLUMN product_sku;

ALTER TABLE product_sales
    DROP COLUMN product_name,
    DROP COLUMN customer_name;

ALTER TABLE invoices
    DROP COLUMN customer_name;

ALTER TABLE payments
    DROP COLUMN invoice_number;

ALTER TABLE tickets
    DROP COLUMN customer_name,
    DROP COLUMN customer_email,
    DROP COLUMN assigned_to_name,
    DROP COLUMN reported_by_name;

ALTER TABLE ticket_comments
    DROP COLUMN author_name,
    DROP COLUMN author_email;

ALTER TABLE complaints
    DROP COLUMN customer_name,
    DROP COLUMN product_name,
    DROP COLUMN assigned_to_name;

ALTER TABLE contracts
    DROP COLUMN customer_name,
    DROP COLUMN customer_email,
    DROP COLUMN assigned_to_name;

ALTER TABLE contract_approval_records
    DROP COLUMN approver_name,
    DROP COLUMN contract_title;

ALTER TABLE service_contracts
    DROP COLUMN customer_name,
    DROP COLUMN product_name,
    DROP COLUMN assigned_to_name;

ALTER TABLE job_works
    DROP COLUMN customer_name,
    DROP COLUMN customer_phone,
    DROP COLUMN product_name,
    DROP COLUMN product_sku,
    DROP COLUMN receiver_engineer_name,
    DROP COLUMN receiver_engineer_email;

ALTER TABLE job_work_specifications
    DROP COLUMN job_work_ref,
    DROP COLUMN product_name;

ALTER TABLE jobs
    DROP COLUMN customer_name,
    DROP COLUMN assigned_to_name;

ALTER TABLE audit_logs
    DROP COLUMN user_name;
