"""Custom checks: ordinary tests in the plan's folder, placed by phase4_after, halting like plan checks."""

from __future__ import annotations

from collections.abc import Callable

from conftest import Project, outcomes_of

CUSTOM = "checks/test_custom.py"


def test_custom_checks_run_after_their_migration(project: Callable[..., Project]) -> None:
    p = project("mini", "custom_checks")
    result = p.run("-v", "--phase4-confirm-destructive", seed=True)
    result.assert_outcomes(passed=28)
    ids = [line.split(" ")[0] for line in result.outlines if line.startswith("checks/")]
    after_m1 = ids.index(f"{CUSTOM}::test_view_names_come_from_customers")
    assert ids[after_m1 - 1] == ("checks/phase4.toml::20250101000001_create_views::"
                                 "view_rowcount_matches[sales_with_details=sales]")
    assert ids[after_m1 + 1] == "checks/phase4.toml::20250101000002_drop_denormalized::apply"
    after_m2 = ids.index(f"{CUSTOM}::test_verification_connection_cannot_write")
    assert ids[after_m2 + 1] == "checks/phase4.toml::20250101000003_add_indexes::apply"
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
    result.assert_outcomes(passed=8, deselected=20)


def test_phase4_after_naming_no_migration_is_a_usage_error(project: Callable[..., Project]) -> None:
    p = project("mini", "custom_checks")
    (p.path / "checks/test_custom.py").write_text(
        "import pytest\n\n@pytest.mark.phase4_after('20250101000009_nope.sql')\ndef test_x():\n    pass\n")
    result = p.run(seed=True)
    assert result.ret == 4
    result.stderr.fnmatch_lines(["ERROR: checks/test_custom.py::test_x: phase4_after('20250101000009_nope.sql') "
                                 "names no step of the plan; use one of: preflight, backup, 20250101000001_*, post, "
                                 "smoke"])


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
    result = p.run("-m", "not preflight", "--phase4-confirm-destructive")
    result.stdout.fnmatch_lines(["*20250101000003_add_indexes.sql (line not reported): the file holds no SQL "
                                 "statement (empty, or only comments): nothing was applied and nothing recorded*"])
    assert [r[0] for r in p.query("SELECT file FROM pytest_phase4.ledger ORDER BY 1")] == [
        "20250101000001_create_views.sql", "20250101000002_drop_denormalized.sql"]
