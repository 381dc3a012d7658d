"""The catalog queries of the `rls_exposure` check (exposure.py): read-only, parameters passed, never formatted.
No pytest here."""

from pytest_phase4.rls.under_sql import with_under

# Views and materialized views, with the tables under them (through views, recursively) that have RLS enabled,
# and the roles their ACL grants SELECT to, and INSERT, UPDATE or DELETE to, that are subject to RLS (PUBLIC, or
# neither superuser nor BYPASSRLS).
VIEWS = with_under("""cand AS (
  SELECT c.oid, n.nspname, c.relname, c.relkind, c.relowner, c.relacl, c.reloptions
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relkind IN ('v', 'm') AND n.nspname = ANY(%(schemas)s)
     AND (%(all)s OR c.oid = ANY(%(oids)s)
          OR (pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname)) = ANY(%(names)s))
     AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = 'pg_catalog.pg_class'::regclass
                       AND e.objid = c.oid AND e.deptype = 'e')  -- an extension's own objects are not the plan's
)""", "cand", """
SELECT v.oid::int8, v.nspname::text, v.relname::text, v.relkind::text, v.relowner::regrole::text,
       coalesce(v.reloptions, '{}')::text[],
       coalesce((SELECT array_agg(DISTINCT tn.nspname || '.' || t.relname) FROM under u
                 JOIN pg_catalog.pg_class t ON t.oid = u.rel JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
                 WHERE u.view = v.oid AND t.relkind IN ('r', 'p') AND t.relrowsecurity), '{}'),
       coalesce((SELECT array_agg(DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END)
                 FROM (SELECT (aclexplode(v.relacl)).*
                       UNION ALL  -- column privileges (GRANT SELECT (col, ...)) read the rows as well
                       SELECT (aclexplode(at.attacl)).* FROM pg_catalog.pg_attribute at
                        WHERE at.attrelid = v.oid AND at.attacl IS NOT NULL AND NOT at.attisdropped) a
                 LEFT JOIN pg_catalog.pg_roles ro ON ro.oid = a.grantee
                 WHERE a.privilege_type = 'SELECT' AND a.grantee <> v.relowner
                   AND (a.grantee = 0 OR NOT (ro.rolsuper OR ro.rolbypassrls))), '{}'),
       -- who may write through it: an updatable view writes its tables with the rights it reads them with, and
       -- UPDATE or DELETE without a WHERE clause needs no SELECT
       coalesce((SELECT array_agg(DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END)
                 FROM (SELECT (aclexplode(v.relacl)).*
                       UNION ALL
                       SELECT (aclexplode(at.attacl)).* FROM pg_catalog.pg_attribute at
                        WHERE at.attrelid = v.oid AND at.attacl IS NOT NULL AND NOT at.attisdropped) a
                 LEFT JOIN pg_catalog.pg_roles ro ON ro.oid = a.grantee
                 WHERE a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE') AND a.grantee <> v.relowner
                   AND (a.grantee = 0 OR NOT (ro.rolsuper OR ro.rolbypassrls))), '{}'),
       -- what runs with its owner's rights under it: views without security_invoker and materialized views
       -- (any schema), and set-returning SECURITY DEFINER functions it or they call
       coalesce((SELECT array_agg(DISTINCT CASE c.relkind WHEN 'm' THEN 'materialized view ' ELSE 'view ' END
                                  || tn.nspname || '.' || c.relname)
                 FROM under u JOIN pg_catalog.pg_class c ON c.oid = u.rel
                 JOIN pg_catalog.pg_namespace tn ON tn.oid = c.relnamespace
                 WHERE u.view = v.oid AND (c.relkind = 'm' OR (c.relkind = 'v' AND NOT coalesce(c.reloptions, '{}')
                       && ARRAY['security_invoker=true', 'security_invoker=on', 'security_invoker=yes',
                                'security_invoker=1']))), '{}'),
       coalesce((SELECT array_agg(DISTINCT fn.nspname || '.' || f.proname)
                 FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_depend d
                   ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
                  AND d.refclassid = 'pg_catalog.pg_proc'::regclass
                 JOIN pg_catalog.pg_proc f ON f.oid = d.refobjid
                 JOIN pg_catalog.pg_namespace fn ON fn.oid = f.pronamespace
                 JOIN pg_catalog.pg_type ft ON ft.oid = f.prorettype
                 -- rows come out of a set, or of one value that carries many (json, jsonb, an array, a record)
                 WHERE f.prosecdef AND (f.proretset OR ft.typcategory = 'A' OR ft.typtype = 'c' OR f.prorettype IN
                       ('pg_catalog.json'::regtype, 'pg_catalog.jsonb'::regtype, 'pg_catalog.record'::regtype))
                   AND (r.ev_class = v.oid OR r.ev_class IN (SELECT u.rel FROM under u WHERE u.view = v.oid))), '{}')
  FROM cand v ORDER BY 2, 3
""")


# Tables: RLS on or off, their policies, who may read them.
TABLES = """
SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relrowsecurity, n.nspname = ANY(%(schemas)s),
       coalesce((SELECT array_agg(p.polname::text ORDER BY p.polname) FROM pg_catalog.pg_policy p
                 WHERE p.polrelid = c.oid), '{}'),
       coalesce((SELECT array_agg(DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END)
                 FROM (SELECT (aclexplode(c.relacl)).*
                       UNION ALL  -- column privileges read the rows as well
                       SELECT (aclexplode(at.attacl)).* FROM pg_catalog.pg_attribute at
                        WHERE at.attrelid = c.oid AND at.attacl IS NOT NULL AND NOT at.attisdropped) a
                 LEFT JOIN pg_catalog.pg_roles ro ON ro.oid = a.grantee
                 WHERE a.privilege_type = 'SELECT' AND a.grantee <> c.relowner
                   AND (a.grantee = 0 OR NOT (ro.rolsuper OR ro.rolbypassrls))), '{}')
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p')
   AND ((%(all)s AND n.nspname = ANY(%(schemas)s)) OR c.oid = ANY(%(oids)s)
        OR (pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname)) = ANY(%(names)s))
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = 'pg_catalog.pg_class'::regclass
                     AND e.objid = c.oid AND e.deptype = 'e')
 ORDER BY 2, 3
"""


# Permissive policies of tables with RLS on, the roles they apply to, their expressions.
POLICIES = """
SELECT p.oid::int8, n.nspname::text, c.relname::text, p.polname::text, p.polcmd::text,
       (SELECT array_agg(CASE WHEN r = 0 THEN 'PUBLIC' ELSE r::regrole::text END ORDER BY 1) FROM unnest(p.polroles) r),
       pg_catalog.pg_get_expr(p.polqual, p.polrelid), pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid),
       EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attname = %(tenant)s
                 AND a.attnum > 0 AND NOT a.attisdropped)
  FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE p.polpermissive AND c.relrowsecurity
   AND ((%(all)s AND n.nspname = ANY(%(schemas)s)) OR p.oid = ANY(%(oids)s))
 ORDER BY 2, 3, 4
"""


# SECURITY DEFINER functions: whether the API serves them, a fixed search_path, and who may execute them (PUBLIC, or
# the API roles that exist).
FUNCTIONS = """
SELECT p.oid::int8, n.nspname::text, p.proname::text, pg_catalog.pg_get_function_identity_arguments(p.oid),
       p.proowner::regrole::text,
       -- /rpc serves it, whatever it returns (a set, or one json value of every row), but a trigger function
       n.nspname = ANY(%(exposed)s)
         AND p.prorettype NOT IN ('pg_catalog.trigger'::regtype, 'pg_catalog.event_trigger'::regtype),
       EXISTS (SELECT 1 FROM unnest(coalesce(p.proconfig, '{}')) cfg WHERE cfg LIKE 'search\\_path=%%'),
       EXISTS (SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
               WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'),
       coalesce((SELECT array_agg(ro.rolname::text ORDER BY ro.rolname) FROM pg_catalog.pg_roles ro
                 WHERE ro.rolname = ANY(%(roles)s) AND pg_catalog.has_function_privilege(ro.oid, p.oid, 'EXECUTE')),
                '{}')
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
 WHERE p.prosecdef AND p.prokind IN ('f', 'p')
   AND ((%(all)s AND n.nspname = ANY(%(schemas)s)) OR p.oid = ANY(%(oids)s))
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = 'pg_catalog.pg_proc'::regclass
                     AND e.objid = p.oid AND e.deptype = 'e')
 ORDER BY 2, 3
"""


# Foreign tables (splinter 0017): no row-level security is possible on them; readable by an API role in an
# exposed schema, they show whatever the remote side gives their user mapping.
FOREIGN = """
SELECT c.oid::int8, n.nspname::text, c.relname::text, s.srvname::text,
       coalesce((SELECT array_agg(ro.rolname::text ORDER BY ro.rolname) FROM pg_catalog.pg_roles ro
                 WHERE ro.rolname = ANY(%(roles)s) AND pg_catalog.has_any_column_privilege(ro.oid, c.oid, 'SELECT')),
                '{}')
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_foreign_table f ON f.ftrelid = c.oid JOIN pg_catalog.pg_foreign_server s ON s.oid = f.ftserver
 WHERE c.relkind = 'f' AND n.nspname = ANY(%(schemas)s)
   AND (%(all)s OR c.oid = ANY(%(oids)s)
        OR (pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname)) = ANY(%(names)s))
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = 'pg_catalog.pg_class'::regclass
                     AND e.objid = c.oid AND e.deptype = 'e')
 ORDER BY 2, 3
"""


# The schemas PostgREST serves when it reads them from the database (ALTER ROLE authenticator SET
# pgrst.db_schemas, or a database setting), as splinter does: they are exposed whatever the plan says.
LIVE = """
SELECT cfg FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) AS cfg
 WHERE cfg LIKE 'pgrst.db\\_schemas=%%'
   AND s.setdatabase IN (0, (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = current_database()))
UNION ALL
SELECT 'pgrst.db_schemas=' || pg_catalog.current_setting('pgrst.db_schemas', true)
 WHERE coalesce(pg_catalog.current_setting('pgrst.db_schemas', true), '') <> ''
"""


# Rules with actions (not DO INSTEAD NOTHING) on relations of the exposed schemas, and the API roles that may fire
# them (the privilege of the rule's event): a rule's actions run with the relation owner's rights, row-level
# security included.
RULES = """
SELECT r.oid::int8, n.nspname::text, c.relname::text, r.rulename::text,
       CASE r.ev_type WHEN '2' THEN 'UPDATE' WHEN '3' THEN 'INSERT' ELSE 'DELETE' END, c.relowner::regrole::text,
       coalesce((SELECT array_agg(ro.rolname::text ORDER BY ro.rolname) FROM pg_catalog.pg_roles ro
                 WHERE ro.rolname = ANY(%(roles)s) AND NOT (ro.rolsuper OR ro.rolbypassrls)
                   AND CASE r.ev_type WHEN '4' THEN pg_catalog.has_table_privilege(ro.oid, c.oid, 'DELETE')
                       ELSE pg_catalog.has_any_column_privilege(ro.oid, c.oid,
                              CASE r.ev_type WHEN '2' THEN 'UPDATE' ELSE 'INSERT' END) END), '{}')
  FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE r.rulename <> '_RETURN' AND r.ev_type IN ('2', '3', '4')
   AND pg_catalog.pg_get_ruledef(r.oid) !~ 'DO (INSTEAD |ALSO )?NOTHING;?[[:space:]]*$'
   AND n.nspname = ANY(%(schemas)s) AND (%(all)s OR r.oid = ANY(%(oids)s))
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e WHERE e.classid = 'pg_catalog.pg_class'::regclass
                     AND e.objid = c.oid AND e.deptype = 'e')
 ORDER BY 2, 3, 4
"""
