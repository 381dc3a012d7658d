-- Version 2 of the application's queries (the project overview).
SELECT p.id, p.name, o.full_name AS owner, tn.plan
FROM public.projects p
JOIN public.profiles o ON o.id = p.owner_id
JOIN public.tenants tn ON tn.id = p.tenant_id
WHERE p.tenant_id = $1 AND p.deleted_at IS NULL
ORDER BY p.name;
