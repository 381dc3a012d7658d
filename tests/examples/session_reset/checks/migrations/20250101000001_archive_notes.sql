SET search_path TO archive, public;
CREATE TABLE archive.notes (id int PRIMARY KEY, body text);
SET lock_timeout = 0;
SET statement_timeout = 0;
-- what the next migration's session sees is written here by it
CREATE TABLE public.observed (migration text, search_path text, lock_timeout text, statement_timeout text);
