"""catalog_diff sees every catalog change that alters what the database does, in every schema, and expects a
change only where the plan says so specifically (issue 13, wrong answers 2 and 3)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg

from helpers import Project, outcomes_of
from pytest_phase4.db import inventory
from pytest_phase4.plan.load import load_plan
from pytest_phase4.safety import catdiff

DIFF = "checks/phase4.toml::post::catalog_diff[schema]"

# Every change of migration 20250701000001_harden.sql (tests/examples/catalog), one line each, as the failure lists
# them: those on tables named only by a preflight table_exists (wrong answer 2), and those a diff of names and
# types does not see (wrong answer 3).
UNEXPECTED = [
    "  changed | default privileges              | for role postgres in schema public on tables |*| PUBLIC=r/postgres",
    "  changed | function settings               | auth.uid()  * | none  * | search_path=public",
    "  changed | function security definer       | set_updated_at()  * | off  * | on",
    "  removed | policy                          | comments.own_comments  * | AS RESTRICTIVE FOR UPDATE TO *",
    "  added   | publication table               | comments in publication phase4_realtime  * |*",
    "  added   | rule                            | comments.comments_keep  * |*| CREATE RULE comments_keep AS ON *",
    # a new owner is the grantor of every privilege on the table and its sequence
    "  changed | sequence privileges             | events_id_seq  * | anon=rwU/postgres, *| anon=rwU/phase4_app, *",
    "  changed | table replica identity          | comments  * | default (primary key)  * | full",
    "  changed | table privileges                | events  * | anon=arwdDxt/postgres, *| anon=arwdDxt/phase4_app, *",
    "  changed | table owner                     | events  * | postgres  * | phase4_app",
    "  changed | table persistence               | events  * | logged  * | unlogged",
    "  changed | table forced row level security | profiles  * | off  * | on",
    "  changed | table row level security        | tenants  * | on  * | off",
    "  changed | table privileges                | tickets  * |*| PUBLIC=r/postgres",
    "  removed | column                          | tickets.customer_tier  * | character varying(10)*",
    "  changed | column default                  | tickets.priority  * | 'medium'::character varying*| 'high'::*",
    "  changed | column privileges               | tickets.title  * |*| anon=w/postgres",
    "  removed | constraint                      | comments.comments_author_id_fkey  * | FOREIGN KEY (author_id)*",
    "  changed | constraint enforced             | projects.projects_owner_id_fkey  * | yes  * | no",
    "  changed | constraint enforced             | projects.projects_tenant_id_fkey  * | yes  * | no",
    "  changed | constraint enforced             | tickets.tickets_project_id_fkey  * | yes  * | no",
    "  added   | trigger                         | profiles.profiles_touch  * |*| CREATE TRIGGER profiles_touch*",
    "  changed | trigger enabled                 | projects.projects_updated_at  * | enabled  * | disabled",
    "  changed | view options                    | open_tickets  * | security_invoker=true  * | security_invoker=false",
]

# The same changes, each expected by name: a verify check for the dropped column, `expect` for the others.
EXPECT = '''check = "catalog_diff"
expect = [
  "constraint comments.comments_author_id_fkey", "table tenants", "policy comments.own_comments",
  "column tickets.priority", "rule comments.comments_keep", "trigger profiles.profiles_touch", "projects.projects_%",
  "tickets.tickets_project_id_fkey", "events", "tickets", "tickets.title", "profiles", "comments",
  "default privileges for role postgres in schema public on tables", "set_updated_at()", "auth.uid()",
  "view open_tickets", "comments in publication phase4_realtime", "events_id_seq",
]'''


def test_catalog_diff_sees_what_changes_behaviour_and_expects_only_what_the_plan_names(
        project: Callable[..., Project]) -> None:
    p = project("supabase", "catalog")
    result = p.run("-v", seed=True)
    assert outcomes_of(result)[DIFF] == "FAILED", result.stdout.str()
    result.stdout.fnmatch_lines(["expected: every catalog change to be expected by the plan",
                                 f"found:    {len(UNEXPECTED)} unexpected change(s) of {len(UNEXPECTED)}",
                                 "where:    every schema", "  change  | kind * | name * | before * | after",
                                 *UNEXPECTED], consecutive=True)

    # The twin: the plan names each change. The migration is applied already: the next run compares with the
    # baseline the first one recorded beside its report.
    plan = p.pytester.path / "checks/phase4.toml"
    text = plan.read_text().replace('check = "catalog_diff"', EXPECT)
    plan.write_text(text.replace('columns = ["tickets.title"]', 'columns = ["tickets.title"]\n  [[migration.verify]]\n'
                                 '  check = "column_absent"\n  columns = ["tickets.customer_tier"]'))
    result = p.run("-v")
    assert outcomes_of(result)[DIFF] == "PASSED", result.stdout.str()
    report = p.report()
    assert f"{len(UNEXPECTED)} catalog change(s), all expected by the plan: 1 column default changed, " in report
    assert ("<summary><span class='phase4-ok'>expected</span>: 3 constraints enforced changed</summary><table "
            "class='phase4-catalog-diff'>") in report
    assert "<td>projects.projects_owner_id_fkey</td><td>yes</td><td>no</td>" in report


def test_revert_puts_every_property_catalog_diff_sees_back(project: Callable[..., Project]) -> None:
    p = project("supabase", "catalog", "catalog_revert")
    result = p.run("-v", seed=True)
    assert result.ret == 0, result.stdout.str()
    assert "17 catalog change(s), all expected by the plan" in p.report()
    before = p.query("SELECT count(*) FROM pg_default_acl")

    result = p.run("-v", "--phase4-rollback")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["prove_catalog    * object(s) the plan created, dropped or altered: each as it was "
                                 "before the plan"])
    assert before == [(4,)]  # Supabase's three (tables, sequences, functions in public) and the plan's global one
    assert p.query("SELECT count(*) FROM pg_default_acl") == [(3,)]
    assert p.query("SELECT count(*) FROM pg_default_acl, unnest(defaclacl) a WHERE a::text LIKE '=%'") == [(0,)]
    assert p.query("SELECT count(*) FROM pg_publication_tables WHERE pubname = 'phase4_realtime'") == [(0,)]
    assert p.query("SELECT relreplident, relforcerowsecurity FROM pg_class WHERE relname IN ('comments', "
                   "'profiles') ORDER BY relname") == [("d", False), ("d", False)]
    assert p.query("SELECT DISTINCT tgenabled FROM pg_trigger WHERE tgrelid = 'public.projects'::regclass") == [("O",)]
    assert p.query("SELECT prosecdef, proconfig FROM pg_proc WHERE proname IN ('set_updated_at', 'uid')") == \
        [(False, None), (False, None)]
    assert p.query("SELECT relowner::regrole::text FROM pg_class WHERE relname LIKE 'events%' ORDER BY 1") == \
        [("postgres",)] * 3


def test_what_comes_with_a_column_the_plan_adds_or_drops_is_expected(scratch_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "m.sql").write_text("SELECT 1;\n")
    (tmp_path / "plan.toml").write_text(PLAN)
    plan = load_plan(tmp_path / "plan.toml")
    with psycopg.connect(scratch_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE p (id int PRIMARY KEY); CREATE TABLE t (id int PRIMARY KEY, old int, kept int);"
                     "CREATE INDEX t_old ON t (old); CREATE INDEX t_kept ON t (kept)")
        before = inventory.take(conn).values()
        conn.execute("ALTER TABLE t ADD COLUMN n serial, ADD COLUMN i bigint GENERATED ALWAYS AS IDENTITY,"
                     " ADD COLUMN p_id int REFERENCES p (id), DROP COLUMN old, DROP COLUMN kept;"
                     " CREATE INDEX t_p ON t (p_id); CREATE SEQUENCE loose")
        found = catdiff.diff(before, inventory.take(conn).values(), "public")
    judged = {(c.change, c.kind, c.name): ok for c, ok in catdiff.judge(found, catdiff.Expected.of(plan, ()))}
    assert judged == {
        ("added", "column", "t.n"): True, ("added", "column", "t.i"): True, ("added", "column", "t.p_id"): True,
        ("added", "sequence", "t_n_seq"): True, ("added", "sequence", "t_i_seq"): True,  # the columns' own
        ("added", "constraint", "t.t_p_id_fkey"): True, ("added", "index", "t_p"): True,  # on an added column
        ("removed", "column", "t.old"): True, ("removed", "index", "t_old"): True,  # with a dropped column
        ("removed", "column", "t.kept"): False, ("removed", "index", "t_kept"): False,  # named by no check
        ("added", "sequence", "loose"): False,
    }


PLAN = """
[phase4]
name = "columns"
migrations_dir = "."

[[migration]]
file = "m.sql"
  [[migration.verify]]
  check = "column_present"
  columns = ["t.n", "t.i", "t.p_id"]
  [[migration.verify]]
  check = "column_absent"
  columns = ["t.old"]

[[preflight]]
check = "column_present"
columns = ["t.kept"]
"""
