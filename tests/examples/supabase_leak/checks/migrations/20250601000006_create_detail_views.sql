-- The leaking twin of the Supabase example's migration 6 (what the real CRM's Phase 4 did): the same views
-- without security_invoker, so they run with postgres's rights, and the platform's default privileges grant them
-- to anon and authenticated. And a careless read policy on a kept table.
CREATE VIEW public.tickets_with_details AS
  SELECT t.id, t.tenant_id, t.title, t.status, t.priority, t.kind, p.name AS project_name,
         r.full_name AS reporter_name, a.full_name AS assignee_name
  FROM public.tickets t
  JOIN public.projects p ON p.id = t.project_id
  LEFT JOIN public.profiles r ON r.id = t.reporter_id
  LEFT JOIN public.profiles a ON a.id = t.assignee_id
  WHERE t.deleted_at IS NULL;

CREATE VIEW public.comments_with_details AS
  SELECT c.id, c.tenant_id, c.ticket_id, c.body, c.created_at, t.title AS ticket_title,
         u.full_name AS author_name
  FROM public.comments c
  JOIN public.tickets t ON t.id = c.ticket_id
  LEFT JOIN public.profiles u ON u.id = c.author_id
  WHERE c.deleted_at IS NULL;

-- "Everybody signed in may read every comment": widens what each tenant's users see of a table they already read.
CREATE POLICY read_all_comments ON public.comments FOR SELECT TO authenticated USING (true);
