"""The read path's exact shortcuts (shortcuts.py, readplan.py) against the plain queries a DBA would run, on a
Supabase-shaped schema: uuid keys, row-level security, soft-delete views, NULL keys, empty tables, orphans, and
checked as the table owner (no policy applies) and as a role the policies filter. Each value the step reads ahead
must equal `SELECT count(*) FROM view`, the anti-join, or `count(*) WHERE ...` run on a connection of the same
role: exactness as the plugin's connection sees the data is the contract."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from helpers import spec
from pytest_phase4.db import catalog
from pytest_phase4.db.facts import Facts
from pytest_phase4.db.pool import Pool
from pytest_phase4.kinds.base import Column, Relation

SCHEMA = """
CREATE TABLE org (id uuid PRIMARY KEY, name text NOT NULL, deleted_at timestamptz);
CREATE TABLE member (id uuid PRIMARY KEY, org_id uuid, boss_id uuid, email text NOT NULL, deleted_at timestamptz);
CREATE INDEX member_org ON member (org_id);  -- few distinct values: the loose index scan
CREATE TABLE note (id uuid PRIMARY KEY, member_id uuid, body text);  -- member_id unindexed: the anti-join
ALTER TABLE org ENABLE ROW LEVEL SECURITY;
ALTER TABLE member ENABLE ROW LEVEL SECURITY;
CREATE POLICY mine ON member FOR SELECT USING (email LIKE 'a%');
CREATE POLICY all_orgs ON org FOR SELECT USING (true);
-- soft deletes: one table, an inner join on a unique key, a filter on the joined side, owner and invoker rights
CREATE VIEW active_members WITH (security_invoker = true) AS SELECT id, email FROM member WHERE deleted_at IS NULL;
CREATE VIEW member_orgs AS
  SELECT m.id, o.name FROM member m JOIN org o ON o.id = m.org_id WHERE m.deleted_at IS NULL;
CREATE VIEW live_member_orgs WITH (security_invoker = true) AS
  SELECT m.id, o.name FROM member m JOIN org o ON o.id = m.org_id WHERE m.deleted_at IS NULL AND o.deleted_at IS NULL;
CREATE VIEW member_bosses AS SELECT m.id FROM member m JOIN member b ON b.id = m.boss_id;
"""
DATA = {
    "clean": """
INSERT INTO org SELECT md5('o' || g)::uuid, 'org ' || g, CASE WHEN g = 3 THEN now() END FROM generate_series(1, 4) g;
INSERT INTO member SELECT md5('m' || g)::uuid, CASE WHEN g % 9 = 0 THEN NULL ELSE md5('o' || (1 + g % 4))::uuid END,
  CASE WHEN g > 1 THEN md5('m' || (g - 1))::uuid END, (ARRAY['a', 'b'])[1 + g % 2] || g || '@x',
  CASE WHEN g % 5 = 0 THEN now() END FROM generate_series(1, 400) g;
INSERT INTO note SELECT md5('n' || g)::uuid, CASE WHEN g % 7 <> 0 THEN md5('m' || (1 + g % 400))::uuid END, 'n'
  FROM generate_series(1, 300) g;
""",
    "orphans": """
INSERT INTO org SELECT md5('o' || g)::uuid, 'org ' || g, NULL FROM generate_series(1, 4) g;
INSERT INTO member SELECT md5('m' || g)::uuid, md5('o' || (1 + g % 6))::uuid, md5('m' || (g + 1))::uuid,
  (ARRAY['a', 'b'])[1 + g % 2] || g || '@x', CASE WHEN g % 5 = 0 THEN now() END FROM generate_series(1, 400) g;
INSERT INTO note SELECT md5('n' || g)::uuid, md5('m' || g)::uuid, 'n' FROM generate_series(1, 450) g;
""",
    "null keys only": """
INSERT INTO org SELECT md5('o' || g)::uuid, 'org ' || g, NULL FROM generate_series(1, 4) g;
INSERT INTO member SELECT md5('m' || g)::uuid, NULL, NULL, 'a' || g, NULL FROM generate_series(1, 50) g;
INSERT INTO note SELECT md5('n' || g)::uuid, NULL, 'n' FROM generate_series(1, 20) g;
""",
    "empty": "",
}
ORG = Relation(Column("member", "org_id"), Column("org", "id"))
BOSS = Relation(Column("member", "boss_id"), Column("member", "id"))
NOTE = Relation(Column("note", "member_id"), Column("member", "id"))
VIEWS = {"active_members": "deleted_at IS NULL", "member_orgs": "deleted_at IS NULL",
         "live_member_orgs": "deleted_at IS NULL", "member_bosses": None}
SPECS = (spec("no_orphans", ORG), spec("no_orphans", BOSS), spec("no_orphans", NOTE),
         *(spec("view_rowcount_matches", (view, "member")) for view in VIEWS),
         spec("row_counts_unchanged", "member"), spec("row_counts_unchanged", "org"))
for s in SPECS:
    if s.kind == "view_rowcount_matches":
        s.params["where"] = {k: v for k, v in VIEWS.items() if v}


@pytest.fixture(params=list(DATA))
def app(request: pytest.FixtureRequest, scratch_dsn: str) -> Iterator[tuple[str, str]]:
    with psycopg.connect(scratch_dsn, autocommit=True) as conn:
        conn.execute(SCHEMA + DATA[request.param])
        conn.execute("ANALYZE")  # the statistics that choose the loose scan
        conn.execute("DROP ROLE IF EXISTS filtered_reader")
        conn.execute("CREATE ROLE filtered_reader LOGIN")
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO filtered_reader")
    yield scratch_dsn, request.param
    with psycopg.connect(scratch_dsn, autocommit=True) as conn:
        conn.execute("DROP OWNED BY filtered_reader; DROP ROLE filtered_reader")


def plain(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """The answers of the plain queries, on the caller's connection."""
    found = {f"count {v}": catalog.count_rows(conn, "public", v) for v in [*VIEWS, "member", "org"]}
    found["where member"] = catalog.count_where(conn, "public", "member", catalog.condition("deleted_at IS NULL"))
    for rel in (ORG, BOSS, NOTE):
        c, p = rel.child, rel.parent
        found[f"orphans {rel}"] = catalog.count(conn, catalog.orphans_query(
            "public", c.table, c.column, p.table, p.column, sql.SQL("count(*)")))
        found[f"nulls {rel}"] = catalog.count_nulls(conn, "public", c.table, c.column)
    return found


def read_ahead(conn: psycopg.Connection[Any], dsn: str) -> tuple[dict[str, int], Facts]:
    pool = Pool(lambda: psycopg.connect(dsn, autocommit=True), 2)
    try:
        facts = Facts(conn, "public", SPECS, pool)
        found = {f"count {v}": facts.count(v) for v in [*VIEWS, "member", "org"]}
        found["where member"] = facts.together(("where", "member", "deleted_at IS NULL"))[0]
        for rel in (ORG, BOSS, NOTE):
            counted = facts.orphans(rel)
            found[f"orphans {rel}"], found[f"nulls {rel}"] = counted.orphans, counted.nulls
        facts.close()
        return found, facts
    finally:
        pool.close()


def test_every_value_read_ahead_is_the_plain_querys_as_the_owner_sees_it(app: tuple[str, str]) -> None:
    dsn, data = app
    with psycopg.connect(dsn, autocommit=True) as conn:
        truth = plain(conn)
        found, facts = read_ahead(conn, dsn)
    assert found == truth
    assert facts._ahead is not None
    plan = facts._ahead.plan
    if data == "empty":
        return  # no statistics, and the planner's plans for empty tables: plain queries, still equal
    assert ("orphans", "member", "org_id", "org", "id") in plan.loose  # 4-6 distinct org_id in 400 rows
    # a filter on the base table and inner joins on unique keys: counted in member's scan; not the view whose join
    # side is filtered (o.deleted_at)
    assert set(plan.derived) >= {"active_members", "member_orgs"}
    assert "live_member_orgs" not in plan.derived
    clean = truth[f"orphans {ORG}"] == 0
    assert facts.how_counted("member_orgs").startswith("counted in one scan of member") == clean


def test_every_value_read_ahead_is_the_plain_querys_as_a_filtered_role_sees_it(app: tuple[str, str]) -> None:
    # The policy `mine` shows filtered_reader a's rows of member; member_orgs and member_bosses read member with
    # their owner's rights (every row), active_members and live_member_orgs with the reader's (a's rows only).
    dsn = make_conninfo(app[0], user="filtered_reader")
    with psycopg.connect(dsn, autocommit=True) as conn:
        truth = plain(conn)
        found, facts = read_ahead(conn, dsn)
    assert found == truth
    assert facts._ahead is not None
    assert facts._ahead.plan.derived == {}  # policies apply to this role: no shortcut through member
