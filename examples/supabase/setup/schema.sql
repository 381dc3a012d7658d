-- A multi-tenant ticketing app shaped like a Supabase project: uuid keys, tenant_id on every table, row-level
-- security on every table through auth.uid()-style functions reading request.jwt.claims, varchar CHECK (x IN
-- (...)) constraints, updated_at triggers, soft-delete views, and denormalized copies the plan will drop.

-- Supabase's API roles. Roles are cluster-wide: create them only where they do not exist yet.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN CREATE ROLE anon NOLOGIN; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN CREATE ROLE authenticated NOLOGIN; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
    CREATE ROLE service_role NOLOGIN BYPASSRLS;
  END IF;
END
$$;

-- As the Supabase CLI keeps it: pytest-phase4 writes each migration's row here too (and a rollback removes it).
CREATE SCHEMA IF NOT EXISTS supabase_migrations;
CREATE TABLE IF NOT EXISTS supabase_migrations.schema_migrations (version text PRIMARY KEY, statements text[], name text);

-- As the Supabase platform sets up a project: the API roles use schema public, and every table, view, sequence
-- and function postgres creates there later is granted to them (default privileges). Row-level security is what
-- keeps a role's rows its own; a view without security_invoker bypasses it (see README.md).
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;

CREATE SCHEMA IF NOT EXISTS auth;
-- As Supabase's auth.uid(): the caller's user id from the JWT claims PostgREST sets per request.
CREATE OR REPLACE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
  SELECT nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'sub', '')::uuid
$$;
CREATE OR REPLACE FUNCTION auth.tenant_id() RETURNS uuid LANGUAGE sql STABLE AS $$
  SELECT nullif(current_setting('request.jwt.claims', true)::jsonb ->> 'tenant_id', '')::uuid
$$;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;

CREATE OR REPLACE FUNCTION public.set_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END
$$;

CREATE TABLE public.tenants (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid NOT NULL,
    name       text NOT NULL,
    plan       varchar(20) NOT NULL DEFAULT 'free' CHECK (plan IN ('free', 'pro', 'enterprise')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.profiles (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid NOT NULL REFERENCES public.tenants (id),
    email        text NOT NULL UNIQUE,
    full_name    text NOT NULL,
    role         varchar(20) NOT NULL DEFAULT 'member' CHECK (role IN ('admin', 'member', 'viewer')),
    -- denormalized copies (dropped by the plan)
    tenant_name  text,
    tenant_plan  varchar(20) CHECK (tenant_plan IN ('free', 'pro', 'enterprise')),
    legacy_code  text UNIQUE,
    legacy_flags int NOT NULL DEFAULT 0,
    signup_note  text DEFAULT 'n/a',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz
);

CREATE TABLE public.projects (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES public.tenants (id),
    owner_id      uuid NOT NULL REFERENCES public.profiles (id),
    name          text NOT NULL,
    status        varchar(20) NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'archived')),
    -- denormalized copies (dropped by the plan)
    owner_name    text,
    owner_email   text,
    tenant_name   text,
    tenant_plan   varchar(20),
    budget_code   varchar(12) CHECK (budget_code ~ '^[A-Z]{2}-[0-9]+$'),
    archived_note text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz
);

CREATE TABLE public.tickets (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id        uuid NOT NULL REFERENCES public.tenants (id),
    project_id       uuid NOT NULL REFERENCES public.projects (id),
    reporter_id      uuid NOT NULL REFERENCES public.profiles (id),
    title            text NOT NULL,
    status           varchar(20) NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'in_progress', 'closed')),
    priority         varchar(10) NOT NULL DEFAULT 'medium' CHECK (priority IN ('low', 'medium', 'high')),
    -- denormalized copies (dropped by the plan)
    reporter_name    text,
    reporter_email   text,
    reporter_role    varchar(20),
    project_name     text,
    project_status   varchar(20),
    tenant_name      text,
    tenant_plan      varchar(20),
    legacy_state     varchar(12) NOT NULL DEFAULT 'new' CHECK (legacy_state IN ('new', 'triaged', 'done')),
    legacy_ref       text UNIQUE,
    sla_hours        int DEFAULT 48 CHECK (sla_hours > 0),
    external_url     text,
    customer_tier    varchar(10),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz
);
CREATE INDEX idx_tickets_reporter_email ON public.tickets (reporter_email);

CREATE TABLE public.comments (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES public.tenants (id),
    ticket_id     uuid NOT NULL REFERENCES public.tickets (id),
    author_id     uuid NOT NULL REFERENCES public.profiles (id),
    body          text NOT NULL,
    -- denormalized copies (dropped by the plan)
    author_name   text,
    author_email  text,
    author_role   varchar(20),
    ticket_title  text,
    ticket_status varchar(20),
    project_name  text,
    tenant_name   text,
    edited_count  int NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz
);

DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['tenants', 'profiles', 'projects', 'tickets', 'comments'] LOOP
    EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE ON public.%I FOR EACH ROW EXECUTE FUNCTION public.set_updated_at()',
                   t || '_updated_at', t);
    EXECUTE format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('CREATE POLICY tenant_isolation ON public.%I TO authenticated USING (tenant_id = auth.tenant_id())'
                   ' WITH CHECK (tenant_id = auth.tenant_id())', t);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON public.%I TO anon, authenticated, service_role', t);
  END LOOP;
END
$$;
-- Only the author edits a comment; everybody of the tenant reads it.
CREATE POLICY own_comments ON public.comments AS RESTRICTIVE FOR UPDATE TO authenticated
  USING (author_id = auth.uid());

-- Soft-deleted rows are hidden from the API's views.
CREATE VIEW public.open_tickets WITH (security_invoker = true) AS
  SELECT id, tenant_id, project_id, title, status, priority FROM public.tickets
  WHERE deleted_at IS NULL AND status IN ('open', 'in_progress');
CREATE VIEW public.active_projects WITH (security_invoker = true) AS
  SELECT p.id, p.tenant_id, p.name, count(t.id) AS tickets
  FROM public.projects p LEFT JOIN public.tickets t ON t.project_id = p.id AND t.deleted_at IS NULL
  WHERE p.deleted_at IS NULL GROUP BY p.id, p.tenant_id, p.name;
GRANT SELECT ON public.open_tickets, public.active_projects TO anon, authenticated, service_role;
