-- Foreign-key columns on existing tables, each referencing another table's primary key.
ALTER TABLE public.tickets ADD COLUMN assignee_id uuid REFERENCES public.profiles (id);
ALTER TABLE public.comments ADD COLUMN reply_to_id uuid REFERENCES public.comments (id);
CREATE INDEX idx_tickets_assignee ON public.tickets (assignee_id);
CREATE INDEX idx_comments_ticket ON public.comments (ticket_id);
