-- Migration 1: Enhance Reference Tables
-- Adds the suppliers reference table (tenant-scoped, row level security) and links products to it.
-- products.supplier_name stays for now; migration 7 drops it once everything reads suppliers.name.
-- Plain SQL without transaction control statements: the runner wraps the file in one transaction.

CREATE TABLE suppliers (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      bigint NOT NULL REFERENCES tenants (id),
    name           text NOT NULL,
    contact_email  text,
    phone          text,
    is_active      boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

-- one supplier per distinct (tenant, supplier_name) found on products
INSERT INTO suppliers (tenant_id, name, contact_email)
SELECT DISTINCT p.tenant_id, p.supplier_name,
       'orders@' || lower(regexp_replace(p.supplier_name, '[^A-Za-z0-9]+', '-', 'g')) || '.example.org'
FROM products p
WHERE p.supplier_name IS NOT NULL
ORDER BY p.tenant_id, p.supplier_name;

ALTER TABLE products ADD COLUMN supplier_id bigint REFERENCES suppliers (id);

UPDATE products p
SET supplier_id = s.id
FROM suppliers s
WHERE s.tenant_id = p.tenant_id AND s.name = p.supplier_name;

-- reference data enhancements: categories and warehouses become switchable instead of deleted
ALTER TABLE product_categories ADD COLUMN is_active boolean NOT NULL DEFAULT true;
ALTER TABLE warehouses ADD COLUMN is_active boolean NOT NULL DEFAULT true;

-- tenant isolation: plain PostgreSQL, the application sets app.tenant_id per session/transaction
ALTER TABLE suppliers ENABLE ROW LEVEL SECURITY;

CREATE POLICY suppliers_select ON suppliers
    FOR SELECT
    TO PUBLIC
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::bigint);

CREATE POLICY suppliers_modify ON suppliers
    FOR ALL
    TO PUBLIC
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::bigint)
    WITH CHECK (tenant_id = nullif(current_setting('app.tenant_id', true), '')::bigint);
