"""Honest verdicts (issue 13): a category is VERIFIED only when every check of its kind ran and passed; otherwise
the summary says what did not run and why (deselected, halted, no baseline). Performance shows a slower query as
slower and states its gate. The JSON carries what each passing check observed and how the point of no return was
confirmed. Each test failed before its fix."""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable

from helpers import Project

M3_FILE = "checks/migrations/20250101000003_add_indexes.sql"


def evidence(p: Project) -> dict:  # type: ignore[type-arg]
    (latest,) = sorted((p.path / "reports").glob("*.json"))[-1:]
    return dict(json.loads(latest.read_text()))


def test_a_verdict_says_what_did_not_run_and_why(project: Callable[..., Project]) -> None:
    p = project("mini")
    # -k: one preflight check of eight ran (before the fix: "Preflight: VERIFIED 1 passed")
    result = p.run("-k", "server_version", seed=True)
    result.stdout.fnmatch_lines([
        "Preflight:       INCOMPLETE 1 passed; 7 did not run: 7 deselected by -k server_version",
        "Migration checks: NOT RUN    8 did not run: 8 deselected by -k server_version"])
    assert evidence(p)["summary"]["Preflight"] == {
        "verdict": "INCOMPLETE", "detail": "1 passed; 7 did not run: 7 deselected by -k server_version",
        "passed": 1, "failed": 0, "not_run": [{"count": 7, "reason": "deselected by -k server_version"}]}

    # a migration fails: its checks and everything after it are halted (before: "Migration checks: VERIFIED")
    original = (p.path / M3_FILE).read_text()
    (p.path / M3_FILE).write_text("CREATE INDEX idx_tickets_customer ON tickets (customer_idd);\n")
    result = p.run("--phase4-confirm-destructive")
    halted = "halted after 20250101000003_add_indexes.sql"  # its reason is said once, under the migrations
    result.stdout.fnmatch_lines([f"Migration checks: INCOMPLETE 5 passed; 3 did not run: 3 {halted}",
                                 f"Data Integrity:  NOT RUN    6 did not run: 6 {halted}",
                                 f"{halted}: apply: 20250101000003_add_indexes.sql:1: column \"customer_idd\" does "
                                 "not exist [SQLSTATE 42703]"])
    found = evidence(p)
    assert found["summary"]["Data Integrity"]["not_run"] == [{"count": 6, "reason": (
        f"{halted}: apply: 20250101000003_add_indexes.sql:1: column \"customer_idd\" does not exist [SQLSTATE 42703]")}]
    # what each passing check observed, and how the point of no return was passed and by whom
    assert all(c["message"] for c in found["checks"]), [c for c in found["checks"] if not c["message"]]
    observed = {c["id"].split("::", 1)[1]: c["message"] for c in found["checks"]}
    assert observed["20250101000001_create_views::view_rowcount_matches[sales_with_details=sales]"] == (
        "sales_with_details: 100 rows = sales: 100 rows (its plan reads sales alone, unfiltered: one row per sales "
        "row whatever the data)")
    ((gate),) = found["point_of_no_return"]
    assert {k: gate[k] for k in ("migration", "status", "confirmed_by", "os_user")} == {
        "migration": "20250101000002_drop_denormalized.sql", "status": "applied",
        "confirmed_by": "--phase4-confirm-destructive", "os_user": getpass.getuser()}

    # fixed and applied; then a rerun with everything applied compares with the first run's baseline, from
    # before migration 1, and verifies every check; with no baseline, it says so
    (p.path / M3_FILE).write_text(original)
    p.run("--phase4-confirm-destructive").stdout.fnmatch_lines(["Data Integrity:  VERIFIED   6 passed"])
    result = p.run("--phase4-confirm-destructive")
    result.stdout.fnmatch_lines(["Data Integrity:  VERIFIED   6 passed"])
    for baseline in (p.path / "reports").glob("*.baseline.json"):
        baseline.unlink()
    result = p.run("--phase4-confirm-destructive")
    result.stdout.fnmatch_lines(["Data Integrity:  INCOMPLETE 3 passed; 3 did not run: 3 skipped: no baseline of "
                                 "this database from before 20250101000001_create_views.sql was found *"])


def test_performance_shows_a_slower_query_as_slower_and_states_the_gate(project: Callable[..., Project]) -> None:
    p = project("mini")
    with (p.path / "checks/phase4.toml").open("a") as plan:
        plan.write('\n[[perf]]\nname = "slower"\nruns = 1\nmax_ms = 10000\nquery = "SELECT pg_sleep(CASE WHEN '
                   "to_regclass('sales_with_details') IS NULL THEN 0 ELSE 0.05 END)\"\n")
    result = p.run("--phase4-confirm-destructive", seed=True)
    # before the fix: "Performance: ACCEPTABLE 2 passed" beside an improvement of "-99900.0%"
    result.stdout.fnmatch_lines([
        "Performance:     ACCEPTABLE 2 passed; 1 slower after the migrations: slower *x slower; gate <= 10000 ms "
        "(1 query)",
        "*= phase4 performance (median ms) =*",
        "query    before ms   after ms  change (gate)",
        "slower * *x slower (<= 10000 ms)",  # column widths move with the timings
        "average                        *x slower"])
    (row,) = evidence(p)["performance"]
    assert row["change"].endswith("x slower")
    assert row["improvement_pct"] < -100


def test_the_evidence_counts_the_verify_checks_a_run_deselected(project: Callable[..., Project]) -> None:
    """Found by the attack on the order-proof runbook: with -k 'not index_count', migration 3 was applied with one of
    its three verify checks deselected, and the evidence said 'verify 2/2 passed' and 'Migration checks: VERIFIED',
    naming no deselected check."""
    p = project("mini")
    result = p.run("-k", "not index_count", "--phase4-confirm-destructive", seed=True)
    assert result.ret == 0
    m3 = evidence(p)["migrations"][2]
    assert (m3["file"], m3["verify_passed"], m3["verify_total"]) == ("20250101000003_add_indexes.sql", 2, 3)
    assert "deselected" in result.stdout.str().split("phase4 execution summary", 1)[1]
