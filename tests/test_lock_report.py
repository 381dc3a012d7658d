"""Measured locks as users see them: per migration in the HTML report, the JSON evidence and the terminal, measured
on the rehearsal copy before the target is touched, and the plan's gates failing a run. One table of 100,000 rows
(tests/examples/locks), created once per test; durations are asserted positive, never bounded."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import Project, outcomes_of
from pytest_phase4.errors import PlanError
from pytest_phase4.plan.load import load_plan

PLAN = "checks/phase4.toml"
M1, M2 = f"{PLAN}::20250101000001_index_big", f"{PLAN}::20250101000002_widen_big"


def _lock(measured: dict[str, Any], mode: str) -> dict[str, Any]:
    [found] = [lock for lock in measured["locks"] if lock["relation"] == "public.big" and lock["mode"] == mode]
    return found


def _gate(p: Project, migration: str, line: str) -> None:
    plan = p.path / PLAN
    text = plan.read_text()
    plan.write_text(text.replace(f'file = "{migration}"', f'file = "{migration}"\n{line}'))


def test_locks_of_each_migration_measured_on_the_rehearsal_copy_then_the_target(
        project: Callable[..., Project]) -> None:
    p = project("locks")
    result = p.run("-v", "--phase4-rehearse", "--phase4-json=evidence.json", seed=True)
    assert result.ret == 0, result.stdout.str()
    assert outcomes_of(result)[f"{PLAN}::backup::rehearse"] == "PASSED"
    m1, m2 = json.loads((p.path / "evidence.json").read_text())["migrations"]
    for where in ("rehearsal", "measured"):  # the same measurement, on the copy first
        share = _lock(m1[where], "ShareLock")
        assert (share["line"], share["rows"], share["rewritten"]) == (2, 100000, False)
        assert share["held_ms"] > 0
        assert m1[where]["statements"][0]["line"] == 2
        assert m1[where]["statements"][0]["duration_ms"] > 0
        assert [h["kind"] for h in m1[where]["hazards"]] == ["create_index_not_concurrently"]
        exclusive = _lock(m2[where], "AccessExclusiveLock")
        assert (exclusive["rewritten"], exclusive["rows"]) == (True, 100000)
        assert exclusive["held_ms"] > 0
        assert [h["kind"] for h in m2[where]["hazards"]] == ["column_type_rewrite"]
        assert (m1[where]["outcome"], m2[where]["outcome"]) == ("committed", "committed")

    page = html.unescape(p.report())
    section = _locks_section(page)
    first, second = section.split("20250101000002_widen_big.sql")
    for row in (first, second):
        assert row.count("On the rehearsal copy, before this database was touched") == 1
        assert row.count("On this database") == 1
    assert len(re.findall(r"<li>SHARE on big \(100K rows, [0-9.]+ [kM]B\) held [0-9.]+ m?s</li>", first)) == 2
    assert len(re.findall(r"<li>ACCESS EXCLUSIVE on big \(100K rows, [0-9.]+ [kM]B\) held [0-9.]+ m?s, table "
                          r"rewritten</li>", second)) == 2
    assert second.count("<li>ACCESS EXCLUSIVE on index big_v (") == 2  # rebuilt as a new index: the old one dropped
    assert "line 2: CREATE INDEX without CONCURRENTLY on big (100K rows, " in first
    result.stdout.fnmatch_lines([
        "*phase4 locks (strongest held by each migration; all in the report)*",
        "20250101000001_index_big.sql (rehearsal): SHARE on big (100K rows, *) held *; 1 hazard(s)",
        "20250101000001_index_big.sql: SHARE on big (100K rows, *) held *; 1 hazard(s)",
        "20250101000002_widen_big.sql (rehearsal): ACCESS EXCLUSIVE on big (100K rows, *) held *, table rewritten*",
        "20250101000002_widen_big.sql: ACCESS EXCLUSIVE on big (100K rows, *) held *, table rewritten*",
    ])


def test_a_lock_gate_exceeded_on_the_rehearsal_copy_leaves_the_target_untouched(
        project: Callable[..., Project]) -> None:
    p = project("locks")
    _gate(p, "20250101000002_widen_big.sql", "max_exclusive_lock_ms = 0")
    result = p.run("-v", "--phase4-rehearse", "--phase4-json=evidence.json", seed=True)
    assert result.ret == 1
    outcomes = outcomes_of(result)
    assert outcomes[f"{PLAN}::backup::rehearse"] == "FAILED"
    assert outcomes[f"{M1}::apply"] == "SKIPPED"
    result.stdout.fnmatch_lines(["  FAILED checks/phase4.toml::20250101000002_widen_big::apply - "
                                 "20250101000002_widen_big.sql:2: ACCESS EXCLUSIVE on public.big (100K rows, *) "
                                 "held *, table rewritten, more than the plan's max_exclusive_lock_ms = 0*"])
    assert p.query("SELECT to_regclass('big_v'), to_regclass('pytest_phase4.ledger')") == [(None, None)]
    assert p.query("SELECT data_type FROM information_schema.columns WHERE table_name = 'big' AND "
                   "column_name = 'v'") == [("integer",)]
    m1, m2 = json.loads((p.path / "evidence.json").read_text())["migrations"]
    assert (m1["measured"], m2["measured"]) == (None, None)
    assert (m1["rehearsal"]["outcome"], m2["rehearsal"]["outcome"]) == ("committed", "rolled back")
    assert m2["rehearsal"]["gates"] == {"max_exclusive_lock_ms": 0}
    assert _lock(m2["rehearsal"], "AccessExclusiveLock")["rewritten"] is True
    assert ("On the rehearsal copy, before this database was touched</strong> (rolled back; gates: "
            "max_exclusive_lock_ms = 0)") in html.unescape(p.report())


def test_a_hazard_on_a_table_over_hazard_min_rows_fails_before_anything_runs(project: Callable[..., Project]) -> None:
    p = project("locks")
    plan = p.path / PLAN
    plan.write_text(plan.read_text().replace('migrations_dir = "migrations"',
                                             'migrations_dir = "migrations"\nhazard_min_rows = 50000'))
    result = p.run("-v", seed=True)
    assert result.ret == 1
    assert outcomes_of(result)[f"{M1}::apply"] == "FAILED"
    result.stdout.fnmatch_lines([
        "20250101000001_index_big.sql:2: CREATE INDEX without CONCURRENTLY on public.big (100K rows, *): index big_v; "
        "it holds SHARE on the table (INSERT, UPDATE and DELETE wait) while the whole index is built; the plan's "
        "gate hazard_min_rows = 50,000 refuses it before anything runs",
        "detail: fix: CREATE INDEX CONCURRENTLY, in a migration of its own with transaction = false",
        "statement:",
        "  CREATE INDEX big_v ON big (v)",
        "the migration's transaction was rolled back: nothing of this file was applied",
    ])
    assert p.query("SELECT to_regclass('big_v'), to_regclass('pytest_phase4.ledger')") == [(None, None)]


def test_gate_keys_are_validated_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations/a.sql").write_text("SELECT 1;")
    (tmp_path / "plan.toml").write_text('[phase4]\nname = "x"\nhazard_min_rows = "1M"\n\n[[migration]]\n'
                                        'file = "a.sql"\nmax_exclusive_lock_ms = -1\nhazard_min_rows = true\n')
    with pytest.raises(PlanError) as caught:
        load_plan(tmp_path / "plan.toml", display="plan.toml")
    assert [str(problem) for problem in caught.value.problems] == [
        "plan.toml:1 [phase4]: hazard_min_rows must be a whole number of rows, 0 or more, e.g. hazard_min_rows = "
        "1000000; found '1M'",
        "plan.toml:5 [[migration]] #1: max_exclusive_lock_ms must be a whole number of milliseconds, 0 or more, e.g. "
        "max_exclusive_lock_ms = 5000; found -1",
        "plan.toml:5 [[migration]] #1: hazard_min_rows must be a whole number of rows, 0 or more, e.g. "
        "hazard_min_rows = 1000000; found True",
    ]
    (tmp_path / "plan.toml").write_text('[phase4]\nname = "x"\nhazard_min_rows = 1000\nmax_exclusive_lock_ms = 100'
                                        '\n\n[[migration]]\nfile = "a.sql"\nmax_exclusive_lock_ms = 5000\n')
    migration = load_plan(tmp_path / "plan.toml").migrations[0]
    assert (migration.max_exclusive_lock_ms, migration.hazard_min_rows) == (5000, 1000)  # its own, else the plan's


def _locks_section(page: str) -> str:
    """The report's locks section: from its heading to the end of its block."""
    start = page.index("<h3>Locks held by each migration</h3>")
    return page[start:page.index("<h3>", start + 1)]
