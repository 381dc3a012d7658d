-- Deterministic rows (uuid keys derived from md5), sized by the setting supabase.scale (tickets per project).
INSERT INTO public.tenants (id, tenant_id, name, plan)
SELECT md5('tenant' || g)::uuid, md5('tenant' || g)::uuid, 'Tenant ' || g, (ARRAY['free', 'pro', 'enterprise'])[g]
FROM generate_series(1, 3) g;

INSERT INTO public.profiles (id, tenant_id, email, full_name, role, tenant_name, tenant_plan, legacy_code,
                             legacy_flags, signup_note)
SELECT md5('profile' || g)::uuid, md5('tenant' || (1 + g % 3))::uuid, 'user' || g || '@example.com', 'User ' || g,
       (ARRAY['admin', 'member', 'viewer'])[1 + g % 3], 'Tenant ' || (1 + g % 3),
       (ARRAY['free', 'pro', 'enterprise'])[1 + g % 3], 'L' || g, g % 4, CASE WHEN g % 5 = 0 THEN NULL ELSE 'note ' || g END
FROM generate_series(1, 30) g;

INSERT INTO public.projects (id, tenant_id, owner_id, name, status, owner_name, owner_email, tenant_name, tenant_plan,
                             budget_code, archived_note, deleted_at)
SELECT md5('project' || g)::uuid, md5('tenant' || (1 + g % 3))::uuid, md5('profile' || (3 + g % 27))::uuid,
       'Project ' || g, CASE WHEN g % 6 = 0 THEN 'archived' ELSE 'active' END, 'User ' || (3 + g % 27),
       'user' || (3 + g % 27) || '@example.com', 'Tenant ' || (1 + g % 3), 'pro', 'BC-' || g,
       CASE WHEN g % 6 = 0 THEN 'archived in review ' || g END,
       CASE WHEN g = 12 THEN '2025-01-01 00:00:00+00'::timestamptz END
FROM generate_series(1, 12) g;

INSERT INTO public.tickets (id, tenant_id, project_id, reporter_id, title, status, priority, reporter_name,
                            reporter_email, reporter_role, project_name, project_status, tenant_name, tenant_plan,
                            legacy_state, legacy_ref, sla_hours, external_url, deleted_at)
SELECT md5('ticket' || g)::uuid, md5('tenant' || (1 + (g % 12 + 1) % 3))::uuid, md5('project' || (g % 12 + 1))::uuid,
       md5('profile' || (1 + g % 30))::uuid, 'Ticket ' || g, (ARRAY['open', 'in_progress', 'closed'])[1 + g % 3],
       (ARRAY['low', 'medium', 'high'])[1 + g % 3], 'User ' || (1 + g % 30), 'user' || (1 + g % 30) || '@example.com',
       'member', 'Project ' || (g % 12 + 1), 'active', 'Tenant ' || (1 + (g % 12 + 1) % 3), 'pro',
       (ARRAY['new', 'triaged', 'done'])[1 + g % 3], 'T-' || g, 24 + g % 48,
       CASE WHEN g % 7 = 0 THEN 'https://tracker.example.com/' || g END,
       CASE WHEN g % 50 = 0 THEN '2025-02-01 00:00:00+00'::timestamptz END
FROM generate_series(1, 12 * current_setting('supabase.scale')::int) g;

INSERT INTO public.comments (id, tenant_id, ticket_id, author_id, body, author_name, author_email, author_role,
                             ticket_title, ticket_status, project_name, tenant_name)
SELECT md5('comment' || g)::uuid, t.tenant_id, t.id, md5('profile' || (1 + g % 30))::uuid, 'Comment ' || g,
       'User ' || (1 + g % 30), 'user' || (1 + g % 30) || '@example.com', 'member', t.title, t.status,
       'Project', 'Tenant'
FROM generate_series(1, 24 * current_setting('supabase.scale')::int) g
JOIN public.tickets t ON t.id = md5('ticket' || (1 + g % (12 * current_setting('supabase.scale')::int)))::uuid;
