-- The views the application reads after the normalization: names joined back from the tables that own them,
-- soft-deleted rows hidden. Created by postgres in schema public, so the platform's default privileges grant them
-- to anon and authenticated: without security_invoker they would run with postgres's rights and show every
-- tenant's rows to every caller (the leak measured in README.md). With it, each caller's own policies apply.
CREATE VIEW public.tickets_with_details WITH (security_invoker = true) AS
  SELECT t.id, t.tenant_id, t.title, t.status, t.priority, t.kind, p.name AS project_name,
         r.full_name AS reporter_name, a.full_name AS assignee_name
  FROM public.tickets t
  JOIN public.projects p ON p.id = t.project_id
  LEFT JOIN public.profiles r ON r.id = t.reporter_id
  LEFT JOIN public.profiles a ON a.id = t.assignee_id
  WHERE t.deleted_at IS NULL;

CREATE VIEW public.comments_with_details WITH (security_invoker = true) AS
  SELECT c.id, c.tenant_id, c.ticket_id, c.body, c.created_at, t.title AS ticket_title,
         u.full_name AS author_name
  FROM public.comments c
  JOIN public.tickets t ON t.id = c.ticket_id
  LEFT JOIN public.profiles u ON u.id = c.author_id
  WHERE c.deleted_at IS NULL;
