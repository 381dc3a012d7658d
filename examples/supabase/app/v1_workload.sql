-- What version 1 of the application asks the database, as its API does for a signed-in user (PostgREST: SET ROLE
-- authenticated and the JWT's claims). pg_stat_statements records each statement with its calls and time.
BEGIN;
SET LOCAL ROLE authenticated;
SELECT set_config('request.jwt.claims', '{"sub": "' || md5('profile4')::uuid || '", "tenant_id": "'
                  || md5('tenant2')::uuid || '"}', true);
-- the ticket list shows who reported each ticket
SELECT t.id, t.title, t.status, t.reporter_name, t.reporter_email FROM public.tickets t
WHERE t.deleted_at IS NULL ORDER BY t.created_at DESC LIMIT 20;
SELECT t.id, t.title, t.status, t.reporter_name, t.reporter_email FROM public.tickets t
WHERE t.deleted_at IS NULL ORDER BY t.created_at DESC LIMIT 20;
-- a ticket's comments, with their authors
SELECT c.id, c.body, c.author_name, c.created_at FROM public.comments c
WHERE c.ticket_id = md5('ticket5')::uuid ORDER BY c.created_at;
-- the project overview
SELECT p.name, p.owner_name, p.tenant_plan FROM public.projects p WHERE p.deleted_at IS NULL;
-- the ticket card
SELECT * FROM public.ticket_card(md5('ticket5')::uuid);
-- a comment
INSERT INTO public.comments (tenant_id, ticket_id, author_id, body)
VALUES (md5('tenant2')::uuid, md5('ticket5')::uuid, md5('profile4')::uuid, 'Looking into it');
ROLLBACK;
