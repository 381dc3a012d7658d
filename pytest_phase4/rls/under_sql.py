"""The relations under each view, through views and materialized views, recursively: one CTE piece that the
`rls_exposure` views query (exposure_sql.py) and the personas' relations (persona_count.py) share. No pytest here."""

from __future__ import annotations

from psycopg import sql

# `under(view, rel)`: every relation a view's or materialized view's rewrite rule depends on (pg_rewrite ->
# pg_depend), then those of the views and materialized views found, and so on; `base` is the CTE of the views.
_UNDER = """under(view, rel) AS (
  SELECT v.oid, d.refobjid FROM {base} v JOIN pg_catalog.pg_rewrite r ON r.ev_class = v.oid
    JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
     AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid <> v.oid
  UNION
  SELECT u.view, d.refobjid FROM under u
    JOIN pg_catalog.pg_class c ON c.oid = u.rel AND c.relkind IN ('v', 'm')
    JOIN pg_catalog.pg_rewrite r ON r.ev_class = c.oid
    JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid
     AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid <> c.oid
)"""


def under(base: str) -> sql.Composed:
    """The `under` CTE (for a WITH RECURSIVE list) over the views of the CTE named `base`."""
    return sql.SQL(_UNDER).format(base=sql.Identifier(base))


def with_under(base_cte: str, base: str, select: str) -> sql.Composed:
    """WITH RECURSIVE `base_cte` (the CTE named `base`), `under`, then `select`. The texts are joined, not
    formatted: they hold '{}' literals."""
    return sql.Composed([sql.SQL("WITH RECURSIVE "), sql.SQL(base_cte), sql.SQL(", "), under(base),
                         sql.SQL(select)])
