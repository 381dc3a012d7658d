-- Changes of properties only (no object dropped): each one a rollback must put back.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO PUBLIC;
ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
ALTER PUBLICATION phase4_realtime ADD TABLE public.comments;
ALTER TABLE public.comments REPLICA IDENTITY FULL;
ALTER TABLE public.projects DISABLE TRIGGER ALL;
ALTER FUNCTION public.set_updated_at() SECURITY DEFINER;
ALTER FUNCTION auth.uid() SET search_path = public;
ALTER TABLE public.profiles FORCE ROW LEVEL SECURITY;
ALTER TABLE public.events OWNER TO phase4_app;
CREATE RULE comments_keep AS ON DELETE TO public.comments DO INSTEAD NOTHING;
ALTER TABLE public.tickets ALTER COLUMN priority SET DEFAULT 'high';
GRANT SELECT ON public.tickets TO PUBLIC;
