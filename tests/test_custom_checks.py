"""Custom checks: ordinary tests in the plan's folder, placed by phase4_after, halting like plan checks."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from helpers import Project, outcomes_of
from pytest_phase4.db import migrate
from pytest_phase4.errors import MigrationFailed
from pytest_phase4.plan.load import load_plan

CUSTOM = "checks/test_custom.py"


def test_custom_checks_run_after_their_migration(project: Callable[..., Project]) -> None:
    p = project("mini", "custom_checks")
    result = p.run("-v", "--phase4-confirm-destructive", seed=True)
    result.assert_outcomes(passed=29)
    ids = [line.split(" ")[0] for line in result.outlines if line.startswith("checks/")]
    after_m1 = ids.index(f"{CUSTOM}::test_view_names_come_from_customers")
    assert ids[after_m1 - 1] == ("checks/phase4.toml::20250101000001_create_views::"
                                 "view_rowcount_matches[sales_with_details=sales]")
    assert ids[after_m1 + 1] == "checks/phase4.toml::20250101000002_drop_denormalized::apply"
    after_m2 = ids.index(f"{CUSTOM}::test_verification_connection_cannot_write")
    assert ids[after_m2 - 1] == "checks/phase4.toml::20250101000002_drop_denormalized::column_present[sales.value]"
    assert ids[after_m2 + 1] == f"{CUSTOM}::test_sales_lost_the_copied_name"  # by fixture: the same step
    assert ids[after_m2 + 2] == "checks/phase4.toml::20250101000003_add_indexes::apply"
    # unmarked: first in the post step, before the plan's integrity checks
    unmarked = ids.index(f"{CUSTOM}::test_snapshot_recorded_before_migrating")
    assert ids[unmarked - 1] == "checks/phase4.toml::20250101000003_add_indexes::index_count[idx_%>=2]"
    assert ids[unmarked + 1].startswith("checks/phase4.toml::post::")


def test_failing_custom_check_halts_the_next_migration(project: Callable[..., Project]) -> None:
    p = project("mini", "custom_checks")
    (p.path / "checks/test_custom.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.phase4_after('20250101000001_create_views')\n"
        "def test_views_are_empty(phase4_db):\n"
        "    assert phase4_db.execute('SELECT count(*) FROM sales_with_details').fetchone() == (0,)\n")
    result = p.run("-v", "--phase4-confirm-destructive", seed=True)
    outcomes = outcomes_of(result)
    assert outcomes[f"{CUSTOM}::test_views_are_empty"] == "FAILED"
    assert outcomes["checks/phase4.toml::20250101000002_drop_denormalized::apply"] == "SKIPPED"
    result.stdout.fnmatch_lines(["*halted after 20250101000001_create_views.sql: test_views_are_empty: assert *"])
    assert "customer_name" in p.columns("sales")


def test_custom_checks_follow_stage_selection(project: Callable[..., Project]) -> None:
    p = project("mini", "custom_checks")
    result = p.run("-v", "-m", "preflight", seed=True)
    result.assert_outcomes(passed=8, deselected=21)


def test_phase4_after_naming_no_migration_is_a_usage_error(project: Callable[..., Project]) -> None:
    p = project("mini", "custom_checks")
    (p.path / "checks/test_custom.py").write_text(
        "import pytest\n\n@pytest.mark.phase4_after('20250101000009_nope.sql')\ndef test_x():\n    pass\n")
    result = p.run(seed=True)
    assert result.ret == 4
    result.stderr.fnmatch_lines(["ERROR: checks/test_custom.py::test_x: phase4_after('20250101000009_nope.sql') "
                                 "names no step of the plan; use one of: preflight, blast_radius, backup, "
                                 "20250101000001_*, post, smoke"])


def test_phase4_after_before_a_migration_the_check_requests_is_a_usage_error(project: Callable[..., Project]) -> None:
    p = project("mini", "custom_checks")
    (p.path / "checks/test_custom.py").write_text(
        "import pytest\n\n@pytest.mark.phase4_after('preflight')\n"
        "def test_x(migration_20250101000001_create_views):\n    pass\n")
    result = p.run(seed=True)
    assert result.ret == 4
    result.stderr.fnmatch_lines(["ERROR: checks/test_custom.py::test_x: phase4_after('preflight') places it before "
                                 "20250101000001_create_views.sql, which it requests as the fixture "
                                 "migration_20250101000001_create_views; drop the marker, or name that migration "
                                 "or a later step"])


def test_phase4_db_is_put_back_after_each_custom_check(project: Callable[..., Project]) -> None:
    p = project("mini", "custom_cleanup")
    # the open transaction would block migration 2's ALTER TABLE on sales past the lock timeout
    result = p.run("-v", "--phase4-confirm-destructive", "--phase4-lock-timeout=2s", seed=True)
    result.assert_outcomes(passed=27)
    assert "customer_name" not in p.columns("sales")


def test_migration_file_with_only_comments_is_never_applied(project: Callable[..., Project]) -> None:
    p = project("mini")
    (p.path / "checks/migrations/20250101000003_add_indexes.sql").write_text("-- to do\\n/* later */\\n")
    result = p.run("--phase4-confirm-destructive", seed=True)
    result.stdout.fnmatch_lines(["expected: SQL statements", "found:    only comments"])
    assert result.ret == 1
    assert p.query("SELECT to_regclass('pytest_phase4.ledger')") == [(None,)]
    # the migration step checks the same on its own, whatever preflight said
    plan = load_plan(p.path / "checks/phase4.toml")
    with psycopg.connect(p.dsn) as conn, pytest.raises(MigrationFailed, match="the file holds no SQL statement"):
        migrate.apply(conn, plan.migrations[2], plan.name, plan.schema)
    assert p.query("SELECT to_regclass('pytest_phase4.ledger')") == [(None,)]
