-- Beside the Supabase-shaped app (examples/supabase): a table tied to no other by a foreign key (SET UNLOGGED
-- refuses tables that are), a role to own things, and a publication as Supabase Realtime keeps one.
CREATE TABLE public.events (
    id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text NOT NULL,
    at   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO public.events (kind) SELECT 'event ' || g FROM generate_series(1, 20) g;
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'phase4_app') THEN CREATE ROLE phase4_app NOLOGIN; END IF;
END
$$;
CREATE PUBLICATION phase4_realtime;
