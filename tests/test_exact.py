"""Checks that never lie (issue 13): each check reads the moment it verifies, in the step's one snapshot, and a
view it cannot count says why instead of an SQL error. Each test failed before its fix."""

from __future__ import annotations

from collections.abc import Callable

from conftest import Project, outcomes_of

PLAN = "checks/phase4.toml"


def test_tables_have_rows_after_a_migration_reads_the_table_now_not_the_snapshot(
        project: Callable[..., Project]) -> None:
    p = project("mini")
    (p.path / "checks/migrations/20250101000004_purge_tickets.sql").write_text("DELETE FROM tickets;\n")
    with (p.path / PLAN).open("a") as plan:
        plan.write('\n[[migration]]\nfile = "20250101000004_purge_tickets.sql"\n'
                   '  [[migration.verify]]\n  check = "tables_have_rows"\n  tables = ["tickets"]\n'
                   '  min_rows = 50\n')
    result = p.run("-v", "--phase4-confirm-destructive", seed=True)
    outcomes = outcomes_of(result)
    # before the fix: PASSED with "public.tickets: 50 rows (recorded)", the pre-migration count; the table is empty
    assert outcomes[f"{PLAN}::20250101000004_purge_tickets::tables_have_rows[tickets]"] == "FAILED"
    result.stdout.fnmatch_lines(["expected: >= 50 rows", "found:    0", "where:    public.tickets"])
    # in preflight it reads the table as it is then, and says nothing of a recording
    assert "public.customers: 10 rows (recorded)" not in p.report()
    assert "public.customers: 10 rows" in p.report()
