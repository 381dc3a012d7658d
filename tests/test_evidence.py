"""Runbook Part 6.4 and Part 8: performance before/after, the execution summary and sign-off in the HTML report,
the JSON evidence, JUnit classnames with the stage (the heartbeat of long steps: test_progress.py)."""

from __future__ import annotations

import hashlib
import html
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import Project, outcomes_of
from pytest_phase4.errors import PlanError
from pytest_phase4.plan.load import load_plan

PLAN = "checks/phase4.toml"


def test_perf_is_timed_before_and_after_with_gates_table_and_explain(project: Callable[..., Project]) -> None:
    p = project("mini", "perf")
    result = p.run("-v", "--phase4-confirm-destructive", "--phase4-signoff", "dba=Jane Doe", seed=True)
    outcomes = outcomes_of(result)
    for name in ("sales_list", "regressed", "over_budget"):
        assert outcomes[f"{PLAN}::preflight::perf_before[{name}]"] == "PASSED"
    assert outcomes[f"{PLAN}::post::perf_after[sales_list]"] == "PASSED"
    assert outcomes[f"{PLAN}::post::perf_after[regressed]"] == "FAILED"
    assert outcomes[f"{PLAN}::post::perf_after[over_budget]"] == "FAILED"
    result.stdout.fnmatch_lines(["expected: at most 50% slower than before (* ms)", "found:    * ms (+*%)",
                                 "where:    regressed"])
    result.stdout.fnmatch_lines(["expected: median <= 1 ms", "found:    * ms", "where:    over_budget",
                                 "hint:     read the EXPLAIN attached to this row*"])
    result.stdout.fnmatch_lines([
        "*= phase4 performance (median ms) =*",
        "query             before ms   after ms  change (gate)",
        "Sales list query  *",
        "regressed         *",
        "over_budget       *",
        "average           *"])
    result.stdout.fnmatch_lines(["Rollback:        YES        2 check(s) failed after 3 migration(s) were applied "
                                 "in this run"])

    reports = sorted(f for f in (p.path / "reports").iterdir() if not f.name.endswith(".baseline.json"))
    assert [f.suffix for f in reports] == [".html", ".json"]
    assert reports[0].stem == reports[1].stem
    evidence = json.loads(reports[1].read_text())
    perf = {row["name"]: row for row in evidence["performance"]}
    assert list(perf) == ["sales_list", "regressed", "over_budget"]
    assert all(isinstance(row["before_ms"], float) and isinstance(row["after_ms"], float) for row in perf.values())
    assert perf["regressed"]["gate"] == "<= 50% slower"
    assert perf["regressed"]["outcome"] == "failed"
    assert {row["index"] for row in evidence["index_usage"]} == {"idx_sales_customer", "idx_tickets_customer"}
    assert evidence["rollback_required"]["required"] is True
    assert evidence["summary"]["Performance"]["verdict"] == "FAILED"
    assert evidence["signoff"] == [{"role": "dba", "title": "Database Administrator", "name": "Jane Doe"},
                                   {"role": "qa", "title": "QA Lead", "name": ""}]
    assert any(i.startswith("post::perf_after[regressed]: expected at most 50% slower") for i in evidence["issues"])
    # a failure's fields travel from the check to the JSON as data, not as text read back out of the terminal's
    failures = {c["id"].rsplit("::", 1)[1]: c["failure"] for c in evidence["checks"] if c["failure"]}
    assert set(failures) == {"perf_after[regressed]", "perf_after[over_budget]"}
    over = failures["perf_after[over_budget]"]
    assert (over["expected"], over["where"]) == ("median <= 1 ms", "over_budget")
    assert over["found"].endswith(" ms")
    assert over["hint"].startswith("read the EXPLAIN attached to this row")
    assert over["plan"].startswith("checks/phase4.toml:")
    assert over["plan"].endswith("check=perf_after")

    page = html.unescape(reports[0].read_text())
    assert page.count("<h2>Execution summary</h2>") == 1
    for text in ("Performance: query times before and after the migrations", "<h3>Sign-offs</h3>",
                 "<strong>Database Administrator</strong></td><td>Jane Doe</td>", "Rollback required",
                 "EXPLAIN (ANALYZE, BUFFERS)</strong></p><pre>", "Execution Time:"):
        assert text in page, text

    # A rerun has no "before" any more: no baseline, so no regression gate; max_ms still applies.
    result = p.run("-v", "--phase4-confirm-destructive")
    outcomes = outcomes_of(result)
    assert outcomes[f"{PLAN}::preflight::perf_before[regressed]"] == "SKIPPED"
    assert outcomes[f"{PLAN}::post::perf_after[regressed]"] == "PASSED"
    assert outcomes[f"{PLAN}::post::perf_after[over_budget]"] == "FAILED"
    # each skip is located at its own plan entry
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] checks/phase4.toml:*: no baseline: 3 migration(s) were already "
                                 "applied when the run started (ledger)"] * 3)


def test_confirmed_full_run_writes_json_evidence_and_junit_with_stages(project: Callable[..., Project]) -> None:
    p = project("crm")
    result = p.run("--phase4-confirm-destructive", "--phase4-json=evidence/run.json", "--junitxml=junit.xml",
                   seed=True)
    assert result.ret == 0
    evidence = json.loads((p.path / "evidence/run.json").read_text())
    migrations = evidence["migrations"]
    assert len(migrations) == 8
    for m in migrations:
        file = p.path / "checks/migrations" / m["file"]
        assert m["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
        assert m["status"] == "applied"
        assert isinstance(m["duration_ms"], float)
        # what each of the eight held, measured here: a lock on a table that existed before it, held until commit
        assert m["measured"]["outcome"] == "committed"
        assert m["measured"]["locks"], m["file"]
        assert all(lock["held_ms"] > 0 and lock["rows"] >= 0 for lock in m["measured"]["locks"])
        lines = [s["line"] for s in m["measured"]["statements"]]
        assert lines == sorted(lines)
        assert all(s["duration_ms"] > 0 for s in m["measured"]["statements"])
    modes = {m["file"]: {lock["mode"] for lock in m["measured"]["locks"]} for m in migrations}
    assert "AccessExclusiveLock" in modes["20250328000026_remove_all_denormalized_fields.sql"]  # DROP COLUMN
    assert modes["20250328000027_add_performance_indexes.sql"] >= {"ShareLock"}  # plain CREATE INDEX
    assert modes["20250322000021_create_sales_views.sql"] == {"AccessShareLock"}  # a view reads its tables
    page = html.unescape(p.report())
    locks = _locks_section(page)
    for m in migrations:
        row = locks[locks.index(f"<td>{m['file']}</td>"):]
        assert re.match(r"<td>[^<]+</td><td><p><strong>On this database</strong> \(committed\)</p><ul><li>"
                        r"(ACCESS EXCLUSIVE|SHARE|ACCESS SHARE|SHARE ROW EXCLUSIVE) on \w+ \([0-9,.K]+ rows, [0-9.,]+ "
                        r"(bytes|kB|MB)\) held [0-9.]+ m?s", row), row[:300]
    checks = evidence["checks"]
    assert len(checks) >= 40
    assert {c["stage"] for c in checks} == {"preflight", "blast_radius", "backup", "migration", "post", "smoke"}
    assert evidence["blast_radius"]["summary"] == "nothing breaks"
    assert evidence["summary"]["Blast radius"]["verdict"] == "VERIFIED"
    assert {c["outcome"] for c in checks} == {"passed", "skipped"}
    assert all(c["message"] for c in checks if c["outcome"] == "skipped")
    assert evidence["server_version"].startswith("15.")
    assert evidence["dsn"].startswith("user=postgres dbname=scratch_")
    assert evidence["plan"]["name"] == "CRM Phase 4: normalization (staging execution guide)"
    assert evidence["started_at"] < evidence["finished_at"]
    assert [row["title"] for row in evidence["performance"]] == ["Sales list query", "Tickets query",
                                                                  "Job works query", "Customer stats"]
    assert evidence["rollback_required"] == {"required": False, "reason": "every check selected passed"}
    assert evidence["summary"]["Data Integrity"]["verdict"] == "VERIFIED"
    assert evidence["summary"]["Smoke Tests"]["verdict"] == "NOT RUN"
    result.stdout.fnmatch_lines([f"phase4 evidence (JSON): {p.path / 'evidence/run.json'}"])

    cases = {(c.get("classname"), c.get("name")) for c in ET.parse(p.path / "junit.xml").iter("testcase")}
    assert ("checks.phase4.toml.migration.20250322000021_create_sales_views", "apply") in cases
    assert ("checks.phase4.toml.preflight", "server_version[>=13]") in cases
    assert ("checks.phase4.toml.smoke", "http[/api/sales]") in cases
    assert "record_property is incompatible" not in result.stdout.str()


def test_failed_migration_means_rollback_required_and_is_the_issue(project: Callable[..., Project]) -> None:
    p = project("mini")
    p.pytester.path.joinpath("checks/migrations/20250101000003_add_indexes.sql").write_text(
        "CREATE INDEX idx_tickets_customer ON tickets (customer_idd);\n")
    p.pytester.path.joinpath("reports").mkdir()
    p.pytester.path.joinpath("reports/evidence.json").mkdir()  # a folder where the file should go
    result = p.run("--phase4-confirm-destructive", "--phase4-json=evidence.json", seed=True)
    assert result.ret == 1
    evidence = json.loads((p.path / "evidence.json").read_text())
    assert evidence["rollback_required"] == {
        "required": True, "reason": "20250101000003_add_indexes.sql failed (its own transaction was rolled back); "
        "2 migration(s) of the plan stay applied (2 of this run): roll back with --phase4-rollback (Part 7) or fix "
        "and rerun"}
    assert [m["status"] for m in evidence["migrations"]] == ["applied", "applied", "failed"]
    assert evidence["issues"] == ["20250101000003_add_indexes::apply: 20250101000003_add_indexes.sql:1: column "
                                  "\"customer_idd\" does not exist [SQLSTATE 42703]"]
    page = html.unescape(p.report())
    assert "<span class='phase4-badge phase4-bad'>YES</span>" in page

    result = p.run("--phase4-confirm-destructive", "--phase4-json=reports/evidence.json")
    result.stdout.fnmatch_lines(["phase4 evidence (JSON): could not write */reports/evidence.json: Is a directory"])


def test_signoff_names_must_match_a_role_of_the_plan(project: Callable[..., Project]) -> None:
    p = project("mini", "perf")
    result = p.run("--phase4-signoff", "cto=Bob")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --phase4-signoff 'cto=Bob': the plan has no sign-off role 'cto'; its roles: "
                                 "dba, qa"])
    result = p.run("--phase4-signoff", "Jane")
    result.stderr.fnmatch_lines(["ERROR: --phase4-signoff 'Jane': expected ROLE=NAME, e.g. --phase4-signoff "
                                 "dba=\"Jane Doe\""])


def test_perf_and_signoff_plan_errors_name_their_line(tmp_path: Path) -> None:
    plan = tmp_path / "phase4.toml"
    plan.write_text('[phase4]\nname = "x"\n\n[[perf]]\nname = "a"\nquery = "SELECT 1"\nruns = 0\n\n'
                    '[[perf]]\nname = "b"\n\n[signoff]\ndba = 1\n')
    with pytest.raises(PlanError) as info:
        load_plan(plan, display="phase4.toml")
    assert [str(problem) for problem in info.value.problems] == [
        "phase4.toml [signoff]: [signoff] must be a table of role = \"title\", e.g. dba = \"Database Administrator\"",
        "phase4.toml:4 [[perf]] #1 check=perf_before: runs must be at least 1",
        "phase4.toml:9 [[perf]] #2 check=perf_before: missing key 'query' (str) for check 'perf_before'",
    ]


def _locks_section(page: str) -> str:
    """The report's locks section: from its heading to the end of its block."""
    start = page.index("<h3>Locks held by each migration</h3>")
    return page[start:page.index("<h3>", start + 1)]
