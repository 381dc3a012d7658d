-- Migration 8: Add Performance Indexes
-- 41 indexes, all named idx_*, on columns that survive migration 7: the foreign keys the
-- *_with_details views join on, tenant-scoped lookups, and the usual list filters.
-- Plain CREATE INDEX, no concurrent builds: the runner wraps the file in one transaction.

-- sales
CREATE INDEX idx_sales_tenant_customer            ON sales (tenant_id, customer_id);
CREATE INDEX idx_sales_assigned_to                ON sales (assigned_to);
CREATE INDEX idx_sales_tenant_status              ON sales (tenant_id, status);
CREATE INDEX idx_sales_sale_date                  ON sales (sale_date);
CREATE INDEX idx_sale_items_sale_id               ON sale_items (sale_id);
CREATE INDEX idx_sale_items_product_id            ON sale_items (product_id);
CREATE INDEX idx_product_sales_product_id         ON product_sales (product_id);
CREATE INDEX idx_product_sales_tenant_customer    ON product_sales (tenant_id, customer_id);
CREATE INDEX idx_product_sales_sale_id            ON product_sales (sale_id);
CREATE INDEX idx_invoices_sale_id                 ON invoices (sale_id);
CREATE INDEX idx_invoices_tenant_customer         ON invoices (tenant_id, customer_id);
CREATE INDEX idx_payments_invoice_id              ON payments (invoice_id);

-- customers and products
CREATE INDEX idx_customers_tenant_status          ON customers (tenant_id, status);
CREATE INDEX idx_customers_assigned_to            ON customers (assigned_to);
CREATE INDEX idx_customer_contacts_customer_id    ON customer_contacts (customer_id);
CREATE INDEX idx_customer_tags_tag_id             ON customer_tags (tag_id);
CREATE INDEX idx_products_tenant_category         ON products (tenant_id, category_id);
CREATE INDEX idx_products_supplier_id             ON products (supplier_id);
CREATE INDEX idx_inventory_warehouse_id           ON inventory (warehouse_id);

-- support
CREATE INDEX idx_tickets_status_priority          ON tickets (status, priority);
CREATE INDEX idx_tickets_tenant_customer          ON tickets (tenant_id, customer_id);
CREATE INDEX idx_tickets_assigned_to              ON tickets (assigned_to);
CREATE INDEX idx_tickets_reported_by              ON tickets (reported_by);
CREATE INDEX idx_ticket_comments_ticket_id        ON ticket_comments (ticket_id);
CREATE INDEX idx_ticket_comments_author_id        ON ticket_comments (author_id);
CREATE INDEX idx_complaints_tenant_customer       ON complaints (tenant_id, customer_id);
CREATE INDEX idx_complaints_status_severity       ON complaints (status, severity);

-- contracts
CREATE INDEX idx_contracts_tenant_customer        ON contracts (tenant_id, customer_id);
CREATE INDEX idx_contracts_status_end_date        ON contracts (status, end_date);
CREATE INDEX idx_contract_approval_records_contract_id ON contract_approval_records (contract_id);
CREATE INDEX idx_contract_approval_records_approver_id ON contract_approval_records (approver_id);
CREATE INDEX idx_service_contracts_tenant_customer ON service_contracts (tenant_id, customer_id);
CREATE INDEX idx_service_contracts_product_id     ON service_contracts (product_id);

-- field work
CREATE INDEX idx_job_works_engineer_tenant        ON job_works (receiver_engineer_id, tenant_id);
CREATE INDEX idx_job_works_tenant_customer        ON job_works (tenant_id, customer_id);
CREATE INDEX idx_job_works_product_id             ON job_works (product_id);
CREATE INDEX idx_job_works_status                 ON job_works (status);
CREATE INDEX idx_job_work_specifications_job_work_id ON job_work_specifications (job_work_id);
CREATE INDEX idx_jobs_tenant_customer             ON jobs (tenant_id, customer_id);

-- platform
CREATE INDEX idx_notifications_user_unread        ON notifications (user_id) WHERE read_at IS NULL;
CREATE INDEX idx_audit_logs_entity                ON audit_logs (entity_type, entity_id);
