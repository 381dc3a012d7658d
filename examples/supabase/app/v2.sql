-- Version 2 of the application's database code: the same ticket card read through the tables the copies came
-- from, and no trigger keeping copies that are about to go. Deploy it (and the v2 application, whose queries are
-- in queries/) before the destructive migration; then reset pg_stat_statements so that it forgets v1's queries.
CREATE OR REPLACE FUNCTION public.ticket_card(p_ticket uuid)
RETURNS TABLE (id uuid, title text, status varchar, reporter text, project text)
LANGUAGE sql STABLE SECURITY INVOKER AS $$
  SELECT t.id, t.title, t.status, r.full_name, p.name
  FROM public.tickets t
  JOIN public.profiles r ON r.id = t.reporter_id
  JOIN public.projects p ON p.id = t.project_id
  WHERE t.id = p_ticket AND t.deleted_at IS NULL
$$;
GRANT EXECUTE ON FUNCTION public.ticket_card(uuid) TO authenticated, service_role;
DROP TRIGGER IF EXISTS comments_copy_author ON public.comments;
DROP FUNCTION IF EXISTS public.comments_copy_author();
