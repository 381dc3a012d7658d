-- Data migration: every open ticket is assigned to its project's owner.
UPDATE public.tickets t SET assignee_id = p.owner_id
FROM public.projects p WHERE p.id = t.project_id AND t.status <> 'closed';
