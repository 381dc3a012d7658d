-- The API's views live in their own schema, over the public tables; soft-deleted rows stay hidden.
CREATE SCHEMA api;
GRANT USAGE ON SCHEMA api TO anon, authenticated, service_role;
CREATE VIEW api.tickets WITH (security_invoker = true) AS
  SELECT t.id, t.tenant_id, t.title, t.status, t.priority, p.name AS project_name, t.assignee_id
  FROM public.tickets t JOIN public.projects p ON p.id = t.project_id
  WHERE t.deleted_at IS NULL AND p.deleted_at IS NULL;
CREATE VIEW api.accounts WITH (security_invoker = true) AS
  SELECT id, tenant_id, email, full_name, role FROM public.profiles WHERE deleted_at IS NULL;
GRANT SELECT ON api.tickets, api.accounts TO authenticated, service_role;
