-- Shaped like a Supabase project: uuid keys, an auth schema whose uid() reads the request's JWT claims, the API's
-- roles, soft deletes, and an idx_ index older than the runbook.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'service_role') THEN
        CREATE ROLE service_role NOLOGIN BYPASSRLS;
    END IF;
END $$;
CREATE SCHEMA auth;
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('request.jwt.claims', true)::json ->> 'sub', '')::uuid $$;
CREATE TABLE customers (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL,
    deleted_at timestamptz
);
CREATE TABLE orders (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id uuid NOT NULL REFERENCES customers (id),
    total numeric NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_customers_name ON customers (name);
-- every tenth customer is soft-deleted
INSERT INTO customers (name, deleted_at)
SELECT 'customer ' || g, CASE WHEN g % 10 = 0 THEN now() END FROM generate_series(1, 40) g;
INSERT INTO orders (customer_id, total) SELECT id, 10 FROM customers;
