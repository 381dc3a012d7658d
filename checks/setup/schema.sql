-- Pre-Phase-4 CRM schema (the state the runbook starts from).
--
-- 27 base tables in schema public, multi-tenant (every table carries tenant_id), real foreign keys,
-- no views and no idx_* indexes (the preflight asserts 0 views; migration 8 adds the idx_* indexes),
-- no suppliers table (migration 1 creates it).
--
-- The 45 columns marked "denormalized" below are copies of data that lives in another table
-- (a customer's name next to customer_id, a product's name next to product_id, ...). Migration 7
-- drops all of them; the *_with_details views of migrations 2-6 give the names back through joins.
-- Each one carries a COMMENT starting with 'denormalized:' so it can be listed from the catalog.

-- ---------------------------------------------------------------- tenants and people

CREATE TABLE tenants (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL,
    slug        text NOT NULL UNIQUE,
    plan        text NOT NULL DEFAULT 'standard',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants (id),
    email       text NOT NULL UNIQUE,
    full_name   text NOT NULL,
    role        text NOT NULL CHECK (role IN ('admin', 'sales', 'engineer', 'support')),
    is_active   boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE customers (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id         bigint NOT NULL REFERENCES tenants (id),
    name              text NOT NULL,
    email             text,
    phone             text,
    company_name      text,
    status            text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'prospect', 'inactive')),
    assigned_to       bigint REFERENCES users (id),
    created_at        timestamptz NOT NULL DEFAULT now(),
    assigned_to_name  varchar(255)
);

CREATE TABLE customer_contacts (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      bigint NOT NULL REFERENCES tenants (id),
    customer_id    bigint NOT NULL REFERENCES customers (id),
    full_name      text NOT NULL,
    email          text,
    phone          text,
    is_primary     boolean NOT NULL DEFAULT false,
    customer_name  varchar(255)
);

CREATE TABLE tags (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  bigint NOT NULL REFERENCES tenants (id),
    name       text NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE customer_tags (
    customer_id  bigint NOT NULL REFERENCES customers (id),
    tag_id       bigint NOT NULL REFERENCES tags (id),
    tenant_id    bigint NOT NULL REFERENCES tenants (id),
    PRIMARY KEY (customer_id, tag_id)
);

-- ---------------------------------------------------------------- products and stock

CREATE TABLE product_categories (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    bigint NOT NULL REFERENCES tenants (id),
    name         text NOT NULL,
    description  text,
    UNIQUE (tenant_id, name)
);

CREATE TABLE products (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      bigint NOT NULL REFERENCES tenants (id),
    category_id    bigint NOT NULL REFERENCES product_categories (id),
    sku            text NOT NULL UNIQUE,
    name           text NOT NULL,
    unit_price     numeric(12, 2) NOT NULL,
    status         text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'discontinued')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    category       varchar(255),
    is_active      boolean DEFAULT true,
    supplier_name  varchar(255)
);

CREATE TABLE warehouses (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  bigint NOT NULL REFERENCES tenants (id),
    name       text NOT NULL,
    city       text
);

CREATE TABLE inventory (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       bigint NOT NULL REFERENCES tenants (id),
    product_id      bigint NOT NULL REFERENCES products (id),
    warehouse_id    bigint NOT NULL REFERENCES warehouses (id),
    quantity        integer NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    product_name    varchar(255),
    warehouse_name  varchar(255),
    UNIQUE (product_id, warehouse_id)
);

-- ---------------------------------------------------------------- sales

CREATE TABLE sales (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id         bigint NOT NULL REFERENCES tenants (id),
    customer_id       bigint NOT NULL REFERENCES customers (id),
    assigned_to       bigint REFERENCES users (id),
    sale_number       text NOT NULL UNIQUE,
    value             numeric(14, 2) NOT NULL,
    status            text NOT NULL CHECK (status IN ('open', 'won', 'lost')),
    stage             text NOT NULL,
    sale_date         date NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    customer_name     varchar(255),
    customer_email    varchar(255),
    assigned_to_name  varchar(255),
    amount            numeric(14, 2)
);

CREATE TABLE sale_items (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     bigint NOT NULL REFERENCES tenants (id),
    sale_id       bigint NOT NULL REFERENCES sales (id),
    product_id    bigint NOT NULL REFERENCES products (id),
    quantity      integer NOT NULL,
    unit_price    numeric(12, 2) NOT NULL,
    line_total    numeric(14, 2) NOT NULL,
    product_name  varchar(255),
    product_sku   varchar(64)
);

CREATE TABLE product_sales (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      bigint NOT NULL REFERENCES tenants (id),
    product_id     bigint NOT NULL REFERENCES products (id),
    customer_id    bigint NOT NULL REFERENCES customers (id),
    sale_id        bigint REFERENCES sales (id),
    quantity       integer NOT NULL,
    total_value    numeric(14, 2) NOT NULL,
    sale_date      date NOT NULL,
    product_name   varchar(255),
    customer_name  varchar(255)
);

CREATE TABLE invoices (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       bigint NOT NULL REFERENCES tenants (id),
    sale_id         bigint NOT NULL REFERENCES sales (id),
    customer_id     bigint NOT NULL REFERENCES customers (id),
    invoice_number  text NOT NULL UNIQUE,
    amount_due      numeric(14, 2) NOT NULL,
    status          text NOT NULL CHECK (status IN ('draft', 'sent', 'paid', 'overdue')),
    issued_at       date NOT NULL,
    due_at          date NOT NULL,
    customer_name   varchar(255)
);

CREATE TABLE payments (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       bigint NOT NULL REFERENCES tenants (id),
    invoice_id      bigint NOT NULL REFERENCES invoices (id),
    amount          numeric(14, 2) NOT NULL,
    method          text NOT NULL,
    paid_at         timestamptz NOT NULL,
    invoice_number  varchar(64)
);

-- ---------------------------------------------------------------- support

CREATE TABLE tickets (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id         bigint NOT NULL REFERENCES tenants (id),
    customer_id       bigint REFERENCES customers (id),
    assigned_to       bigint REFERENCES users (id),
    reported_by       bigint NOT NULL REFERENCES users (id),
    ticket_number     text NOT NULL UNIQUE,
    title             text NOT NULL,
    description       text,
    status            text NOT NULL CHECK (status IN ('open', 'in_progress', 'resolved', 'closed')),
    priority          text NOT NULL CHECK (priority IN ('low', 'medium', 'high', 'urgent')),
    created_at        timestamptz NOT NULL DEFAULT now(),
    resolved_at       timestamptz,
    customer_name     varchar(255),
    customer_email    varchar(255),
    assigned_to_name  varchar(255),
    reported_by_name  varchar(255)
);

CREATE TABLE ticket_comments (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     bigint NOT NULL REFERENCES tenants (id),
    ticket_id     bigint NOT NULL REFERENCES tickets (id),
    author_id     bigint NOT NULL REFERENCES users (id),
    body          text NOT NULL,
    is_internal   boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    author_name   varchar(255),
    author_email  varchar(255)
);

CREATE TABLE complaints (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id         bigint NOT NULL REFERENCES tenants (id),
    customer_id       bigint NOT NULL REFERENCES customers (id),
    product_id        bigint REFERENCES products (id),
    assigned_to       bigint REFERENCES users (id),
    complaint_number  text NOT NULL UNIQUE,
    title             text NOT NULL,
    status            text NOT NULL CHECK (status IN ('new', 'investigating', 'resolved', 'rejected')),
    severity          text NOT NULL CHECK (severity IN ('minor', 'major', 'critical')),
    created_at        timestamptz NOT NULL DEFAULT now(),
    customer_name     varchar(255),
    product_name      varchar(255),
    assigned_to_name  varchar(255)
);

-- ---------------------------------------------------------------- contracts

CREATE TABLE contracts (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id         bigint NOT NULL REFERENCES tenants (id),
    customer_id       bigint NOT NULL REFERENCES customers (id),
    assigned_to       bigint REFERENCES users (id),
    contract_number   text NOT NULL UNIQUE,
    title             text NOT NULL,
    value             numeric(14, 2) NOT NULL,
    status            text NOT NULL CHECK (status IN ('draft', 'pending_approval', 'active', 'expired')),
    start_date        date NOT NULL,
    end_date          date NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    customer_name     varchar(255),
    customer_email    varchar(255),
    assigned_to_name  varchar(255)
);

CREATE TABLE contract_approval_records (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       bigint NOT NULL REFERENCES tenants (id),
    contract_id     bigint NOT NULL REFERENCES contracts (id),
    approver_id     bigint NOT NULL REFERENCES users (id),
    decision        text NOT NULL CHECK (decision IN ('pending', 'approved', 'rejected')),
    comments        text,
    decided_at      timestamptz,
    approver_name   varchar(255),
    contract_title  varchar(255)
);

CREATE TABLE service_contracts (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id         bigint NOT NULL REFERENCES tenants (id),
    customer_id       bigint NOT NULL REFERENCES customers (id),
    product_id        bigint NOT NULL REFERENCES products (id),
    assigned_to       bigint REFERENCES users (id),
    contract_number   text NOT NULL UNIQUE,
    annual_value      numeric(14, 2) NOT NULL,
    status            text NOT NULL CHECK (status IN ('active', 'expired', 'cancelled')),
    start_date        date NOT NULL,
    end_date          date NOT NULL,
    customer_name     varchar(255),
    product_name      varchar(255),
    assigned_to_name  varchar(255)
);

-- ---------------------------------------------------------------- field work

CREATE TABLE job_works (
    id                        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id                 bigint NOT NULL REFERENCES tenants (id),
    customer_id               bigint REFERENCES customers (id),
    product_id                bigint NOT NULL REFERENCES products (id),
    receiver_engineer_id      bigint NOT NULL REFERENCES users (id),
    job_number                text NOT NULL UNIQUE,
    status                    text NOT NULL CHECK (status IN ('received', 'in_progress', 'completed', 'delivered')),
    charges                   numeric(12, 2) NOT NULL DEFAULT 0,
    received_at               timestamptz NOT NULL,
    completed_at              timestamptz,
    customer_name             varchar(255),
    customer_phone            varchar(64),
    product_name              varchar(255),
    product_sku               varchar(64),
    receiver_engineer_name    varchar(255),
    receiver_engineer_email   varchar(255)
);

CREATE TABLE job_work_specifications (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     bigint NOT NULL REFERENCES tenants (id),
    job_work_id   bigint NOT NULL REFERENCES job_works (id),
    spec_name     text NOT NULL,
    spec_value    text NOT NULL,
    unit          text,
    job_work_ref  varchar(64),
    product_name  varchar(255)
);

CREATE TABLE jobs (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id         bigint NOT NULL REFERENCES tenants (id),
    customer_id       bigint NOT NULL REFERENCES customers (id),
    assigned_to       bigint REFERENCES users (id),
    title             text NOT NULL,
    status            text NOT NULL CHECK (status IN ('scheduled', 'in_progress', 'done', 'cancelled')),
    scheduled_at      timestamptz NOT NULL,
    customer_name     varchar(255),
    assigned_to_name  varchar(255)
);

-- ---------------------------------------------------------------- platform

CREATE TABLE notifications (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants (id),
    user_id     bigint NOT NULL REFERENCES users (id),
    title       text NOT NULL,
    body        text,
    read_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audit_logs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    bigint NOT NULL REFERENCES tenants (id),
    user_id      bigint REFERENCES users (id),
    action       text NOT NULL,
    entity_type  text NOT NULL,
    entity_id    bigint NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    user_name    varchar(255)
);

CREATE TABLE attachments (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     bigint NOT NULL REFERENCES tenants (id),
    entity_type   text NOT NULL,
    entity_id     bigint NOT NULL,
    file_name     text NOT NULL,
    content_type  text NOT NULL,
    size_bytes    bigint NOT NULL,
    uploaded_by   bigint NOT NULL REFERENCES users (id),
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------- the 45 denormalized columns

COMMENT ON COLUMN customers.assigned_to_name                 IS 'denormalized: users.full_name of assigned_to';
COMMENT ON COLUMN customer_contacts.customer_name            IS 'denormalized: customers.name of customer_id';
COMMENT ON COLUMN products.category                          IS 'denormalized: product_categories.name of category_id';
COMMENT ON COLUMN products.is_active                         IS 'denormalized: status = ''active''';
COMMENT ON COLUMN products.supplier_name                     IS 'denormalized: supplier name (migration 1 moves it to suppliers)';
COMMENT ON COLUMN inventory.product_name                     IS 'denormalized: products.name of product_id';
COMMENT ON COLUMN inventory.warehouse_name                   IS 'denormalized: warehouses.name of warehouse_id';
COMMENT ON COLUMN sales.customer_name                        IS 'denormalized: customers.name of customer_id';
COMMENT ON COLUMN sales.customer_email                       IS 'denormalized: customers.email of customer_id';
COMMENT ON COLUMN sales.assigned_to_name                     IS 'denormalized: users.full_name of assigned_to';
COMMENT ON COLUMN sales.amount                               IS 'denormalized: copy of value';
COMMENT ON COLUMN sale_items.product_name                    IS 'denormalized: products.name of product_id';
COMMENT ON COLUMN sale_items.product_sku                     IS 'denormalized: products.sku of product_id';
COMMENT ON COLUMN product_sales.product_name                 IS 'denormalized: products.name of product_id';
COMMENT ON COLUMN product_sales.customer_name                IS 'denormalized: customers.name of customer_id';
COMMENT ON COLUMN invoices.customer_name                     IS 'denormalized: customers.name of customer_id';
COMMENT ON COLUMN payments.invoice_number                    IS 'denormalized: invoices.invoice_number of invoice_id';
COMMENT ON COLUMN tickets.customer_name                      IS 'denormalized: customers.name of customer_id';
COMMENT ON COLUMN tickets.customer_email                     IS 'denormalized: customers.email of customer_id';
COMMENT ON COLUMN tickets.assigned_to_name                   IS 'denormalized: users.full_name of assigned_to';
COMMENT ON COLUMN tickets.reported_by_name                   IS 'denormalized: users.full_name of reported_by';
COMMENT ON COLUMN ticket_comments.author_name                IS 'denormalized: users.full_name of author_id';
COMMENT ON COLUMN ticket_comments.author_email               IS 'denormalized: users.email of author_id';
COMMENT ON COLUMN complaints.customer_name                   IS 'denormalized: customers.name of customer_id';
COMMENT ON COLUMN complaints.product_name                    IS 'denormalized: products.name of product_id';
COMMENT ON COLUMN complaints.assigned_to_name                IS 'denormalized: users.full_name of assigned_to';
COMMENT ON COLUMN contracts.customer_name                    IS 'denormalized: customers.name of customer_id';
COMMENT ON COLUMN contracts.customer_email                   IS 'denormalized: customers.email of customer_id';
COMMENT ON COLUMN contracts.assigned_to_name                 IS 'denormalized: users.full_name of assigned_to';
COMMENT ON COLUMN contract_approval_records.approver_name    IS 'denormalized: users.full_name of approver_id';
COMMENT ON COLUMN contract_approval_records.contract_title   IS 'denormalized: contracts.title of contract_id';
COMMENT ON COLUMN service_contracts.customer_name            IS 'denormalized: customers.name of customer_id';
COMMENT ON COLUMN service_contracts.product_name             IS 'denormalized: products.name of product_id';
COMMENT ON COLUMN service_contracts.assigned_to_name         IS 'denormalized: users.full_name of assigned_to';
COMMENT ON COLUMN job_works.customer_name                    IS 'denormalized: customers.name of customer_id';
COMMENT ON COLUMN job_works.customer_phone                   IS 'denormalized: customers.phone of customer_id';
COMMENT ON COLUMN job_works.product_name                     IS 'denormalized: products.name of product_id';
COMMENT ON COLUMN job_works.product_sku                      IS 'denormalized: products.sku of product_id';
COMMENT ON COLUMN job_works.receiver_engineer_name           IS 'denormalized: users.full_name of receiver_engineer_id';
COMMENT ON COLUMN job_works.receiver_engineer_email          IS 'denormalized: users.email of receiver_engineer_id';
COMMENT ON COLUMN job_work_specifications.job_work_ref       IS 'denormalized: job_works.job_number of job_work_id';
COMMENT ON COLUMN job_work_specifications.product_name       IS 'denormalized: products.name of the job work''s product';
COMMENT ON COLUMN jobs.customer_name                         IS 'denormalized: customers.name of customer_id';
COMMENT ON COLUMN jobs.assigned_to_name                      IS 'denormalized: users.full_name of assigned_to';
COMMENT ON COLUMN audit_logs.user_name                       IS 'denormalized: users.full_name of user_id';

-- ---------------------------------------------------------------- the application's role, row-level security
-- The application connects as crm_app (created only where it does not exist: roles are cluster-wide) and sets
-- app.tenant_id in each transaction; every table keeps each tenant's rows to that tenant. The schema's owner, who
-- runs the migrations and the checks, is not subject to it. Tables and views created in public later are granted
-- to crm_app too (default privileges), as a hosted platform does for its API roles: a view that runs with its
-- owner's rights would show crm_app every tenant's rows, so the plan's views are security_invoker.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'crm_app') THEN CREATE ROLE crm_app NOLOGIN; END IF;
END
$$;
GRANT USAGE ON SCHEMA public TO crm_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO crm_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO crm_app;
DO $$
DECLARE t text;
BEGIN
  FOR t IN SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 1 LOOP
    EXECUTE format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('CREATE POLICY tenant_isolation ON public.%I TO crm_app USING (%I = nullif(current_setting('
                   '''app.tenant_id'', true), '''')::bigint)', t, CASE WHEN t = 'tenants' THEN 'id' ELSE 'tenant_id' END);
  END LOOP;
END
$$;
