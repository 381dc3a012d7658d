-- The application's own database code as version 1 of the app deployed it: it reads and writes the denormalized
-- copies that migration 20250601000005 drops. PostgreSQL does not tie a function body to the columns it names, so
-- the DROP COLUMN succeeds and the first call afterwards fails. Load it to see the blast radius catch it:
--   psql "$DSN" -f app/v1.sql && psql "$DSN" -f app/v1_workload.sql && pytest --phase4 -m preflight --dsn="$DSN" ...

-- The ticket card of the API (PostgREST calls it as rpc/ticket_card): a SQL function.
CREATE OR REPLACE FUNCTION public.ticket_card(p_ticket uuid)
RETURNS TABLE (id uuid, title text, status varchar, reporter text, project text)
LANGUAGE sql STABLE SECURITY INVOKER AS $$
  SELECT t.id, t.title, t.status,
         t.reporter_name,
         t.project_name
  FROM public.tickets t
  WHERE t.id = p_ticket AND t.deleted_at IS NULL
$$;
GRANT EXECUTE ON FUNCTION public.ticket_card(uuid) TO authenticated, service_role;

-- Keeps the author's copies on each new comment: a PL/pgSQL trigger function.
CREATE OR REPLACE FUNCTION public.comments_copy_author() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  author public.profiles%ROWTYPE;
BEGIN
  SELECT * INTO author FROM public.profiles WHERE id = NEW.author_id;
  NEW.author_name := author.full_name;
  NEW.author_email := author.email;
  RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS comments_copy_author ON public.comments;
CREATE TRIGGER comments_copy_author BEFORE INSERT ON public.comments
  FOR EACH ROW EXECUTE FUNCTION public.comments_copy_author();
