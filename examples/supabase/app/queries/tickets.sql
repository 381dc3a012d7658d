-- Version 2 of the application's queries (the API's ticket views): each is PREPAREd against the schema after the
-- pending migrations ([[app_queries]] in phase4.toml). Parameters are $n, as the application sends them.

-- the ticket list, with who reported each ticket
SELECT t.id, t.title, t.status, r.full_name AS reporter, r.email AS reporter_email
FROM public.tickets t JOIN public.profiles r ON r.id = t.reporter_id
WHERE t.tenant_id = $1 AND t.deleted_at IS NULL
ORDER BY t.created_at DESC LIMIT $2;

-- a ticket's comments, with their authors
SELECT c.id, c.body, a.full_name AS author, c.created_at
FROM public.comments c JOIN public.profiles a ON a.id = c.author_id
WHERE c.ticket_id = $1 AND c.deleted_at IS NULL
ORDER BY c.created_at;

-- a new comment
INSERT INTO public.comments (tenant_id, ticket_id, author_id, body) VALUES ($1, $2, $3, $4) RETURNING id;
