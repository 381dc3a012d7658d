"""Plan format additions met encoding a real Supabase runbook (issue 13): a view's count against its base table's
rows meeting a condition (soft deletes), the indexes one migration created, policies by command and role, a
pre-migration "no views" check that holds on a rerun, ${ENV} in migrations_dir, and a query that must run. Plan
errors are tested without a database."""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import Project, outcomes_of
from pytest_phase4.errors import PlanError
from pytest_phase4.plan.load import load_plan

PLAN = "checks/phase4.toml"
PRE = f"{PLAN}::preflight"
M1 = f"{PLAN}::20250401000001_views_and_policies"
M2 = f"{PLAN}::20250401000002_indexes"


def observed(p: Project) -> str:
    return html.unescape(html.unescape(p.report()))


def test_a_supabase_shaped_plan_checks_what_its_runbook_means_and_holds_on_a_rerun(
        project: Callable[..., Project], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPA_MIGRATIONS", "migrations")  # migrations_dir = "${SUPA_MIGRATIONS}"
    p = project("supa")
    result = p.run("-v", seed=True)
    outcomes = outcomes_of(result)
    assert outcomes[f"{PRE}::no_views[schema]"] == "PASSED"
    assert outcomes[f"{M1}::view_rowcount_matches[active_customers=customers]"] == "PASSED"
    assert outcomes[f"{M1}::rls_policies[orders:select@authenticated]"] == "PASSED"
    assert outcomes[f"{M1}::rls_policies[orders:all@service_role]"] == "PASSED"
    assert outcomes[f"{M1}::query_runs[active_customers_with_orders]"] == "PASSED"
    # a schema-wide count is met by an index older than the runbook; what this migration created is not
    assert outcomes[f"{M2}::index_count[idx_%>=3]"] == "PASSED"
    assert outcomes[f"{M2}::indexes_created[idx_%>=3]"] == "FAILED"
    result.stdout.fnmatch_lines([
        "expected: >= 3 indexes like 'idx_%' created by 20250401000002_indexes.sql",
        "found:    2: idx_orders_created, idx_orders_customer",
        "where:    schema public",
        "  1 other indexes like 'idx_%' exist, not created by it: idx_customers_name",
        "hint:     an index that already existed (CREATE INDEX IF NOT EXISTS) was not created by this migration, "
        "whatever its name"])
    page = observed(p)
    for text in ("no views in schema public",
                 "active_customers: 36 rows = customers WHERE deleted_at IS NULL: 36 rows",
                 "public.orders: RLS on, policies FOR SELECT TO authenticated orders_select_own",
                 "public.orders: RLS on, policies FOR ALL TO service_role orders_service",
                 "public.orders: RLS on, policies orders_insert_own, orders_select_own, orders_service",
                 "active_customers_with_orders: ran without error, 36 row(s)"):
        assert text in page, text

    # The plan is fixed; meanwhile the application soft-deletes two customers and adds one.
    plan = p.path / PLAN
    plan.write_text(plan.read_text().replace('check = "indexes_created"\n  like = "idx_%"\n  min = 3',
                                             'check = "indexes_created"\n  like = "idx_%"\n  min = 2'))
    p.execute("UPDATE customers SET deleted_at = now() WHERE name IN ('customer 1', 'customer 2');"
              "INSERT INTO customers (name) VALUES ('customer 41')")
    result = p.run("-v")
    outcomes = outcomes_of(result)
    assert {o for i, o in outcomes.items() if not i.endswith("::apply")} == {"PASSED"}, outcomes
    page = observed(p)
    for text in ("no views in schema public but the 1 that migrations applied before this run create (ledger): "
                 "active_customers (20250401000001_views_and_policies.sql)",
                 "public.active_customers exists: 20250401000001_views_and_policies.sql creates it and was applied "
                 "before this run (ledger)",
                 "2 indexes like 'idx_%' created by 20250401000002_indexes.sql (as recorded when it was applied): "
                 "idx_orders_created, idx_orders_customer",
                 "active_customers: 35 rows = customers WHERE deleted_at IS NULL: 35 rows"):
        assert text in page, text

    # Applied without a record of what they created (an older version of the plugin): read from their files.
    p.execute("DELETE FROM pytest_phase4.changes")
    result = p.run("-v")
    assert {o for i, o in outcomes_of(result).items() if not i.endswith("::apply")} == {"PASSED"}
    page = observed(p)
    for text in ("no views in schema public but the 1 that migrations applied before this run create (ledger): "
                 "active_customers (20250401000001_views_and_policies.sql)",
                 "2 indexes like 'idx_%' created by 20250401000002_indexes.sql (named by its CREATE INDEX statements: "
                 "it was applied without a record of what it created; not counted: 1 of CREATE INDEX IF NOT EXISTS "
                 "or without a name, which the file alone cannot tell apart from older indexes): idx_orders_created, "
                 "idx_orders_customer"):
        assert text in page, text

    # Someone creates a view outside the runbook: the pre-migration check says so, on a rerun too.
    p.execute("CREATE VIEW stray AS SELECT 1 AS x")
    result = p.run("-v", "-m", "preflight")
    assert outcomes_of(result)[f"{PRE}::no_views[schema]"] == "FAILED"
    result.stdout.fnmatch_lines(["expected: no views in schema public before migrating but those the migrations "
                                 "applied before this run create", "found:    1: stray"])


def test_plan_errors_of_the_new_keys_and_kinds_name_their_line(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_DIR", raising=False)
    (tmp_path / "phase4.toml").write_text(
        '[phase4]\nname = "x"\nmigrations_dir = "${NO_SUCH_DIR}/migrations"\n\n'  # 1-4
        '[[preflight]]\ncheck = "indexes_created"\nmin = 2\n\n'  # 5-8
        '[[post]]\ncheck = "no_views"\n\n'  # 9-11
        '[[post]]\ncheck = "view_rowcount_matches"\npairs = { a = "t" }\nwhere = { b = "deleted_at IS NULL" }\n\n'
        '[[post]]\ncheck = "view_rowcount_matches"\npairs = { a = "t" }\nwhere = { a = 1 }\n\n'  # 17-20
        '[[post]]\ncheck = "rls_policies"\ntable = "t"\ncount = 1\ncommand = "read"\n\n'  # 22-26
        '[[post]]\ncheck = "query_runs"\nname = "q"\n')  # 28-30
    with pytest.raises(PlanError) as info:
        load_plan(tmp_path / "phase4.toml", display="phase4.toml")
    assert [str(problem) for problem in info.value.problems] == [
        "phase4.toml [phase4]: migrations_dir '${NO_SUCH_DIR}/migrations' uses ${NO_SUCH_DIR}, which is not set in "
        "the environment; set it (export NO_SUCH_DIR=...) or write the folder's path",
        "phase4.toml:5 [[preflight]] #1 check=indexes_created: indexes_created cannot be a preflight check: it "
        "checks what one migration created: list it under that migration's [[migration.verify]]",
        "phase4.toml:9 [[post]] #1 check=no_views: no_views cannot be a post check: it describes the database "
        "before the migrations: list it under [[preflight]]",
        "phase4.toml:12 [[post]] #2 check=view_rowcount_matches: where names 'b', not a view of pairs: give each "
        "condition under the name of the view it filters for",
        "phase4.toml:17 [[post]] #3 check=view_rowcount_matches: where must be a table of view = \"condition on its "
        "base table\", e.g. { active_customers = \"deleted_at IS NULL\" }, found {'a': 1}",
        "phase4.toml:22 [[post]] #4 check=rls_policies: command must be one of select, insert, update, delete, all "
        "(the policy's FOR clause), found 'read'",
        "phase4.toml:28 [[post]] #5 check=query_runs: missing key 'query' (str) for check 'query_runs'",
    ]

