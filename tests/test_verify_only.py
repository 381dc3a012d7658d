"""Before and after, across runs: baselines recorded where a later run finds them, and --phase4-verify-only for
migrations another tool applies (issue 13)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import psycopg

from helpers import EXAMPLES, Project, outcomes_of
from pytest_phase4.db.seed import load_setup
from pytest_phase4.db.target import Target
from pytest_phase4.plan.load import load_plan
from pytest_phase4.run import Phase4Run
from pytest_phase4.safety import verifyonly
from pytest_phase4.safety.backup import locate

SAFE = "checks/phase4.toml"
MIGRATIONS = ["20250101000001_create_views.sql", "20250101000002_drop_denormalized.sql",
              "20250101000003_add_indexes.sql"]
COMPARISONS = ["post::row_counts_unchanged[tickets]", "post::checksum_unchanged[tickets]", "post::catalog_diff[schema]",
               "post::row_counts_match[every_table]"]


def psql(p: Project, *files: str) -> None:
    """Apply migrations as a team without pytest-phase4 would: psql, one transaction per file."""
    binary = locate("psql")[0].path("psql")
    for name in files:
        path = p.pytester.path / "checks/migrations" / name
        subprocess.run([binary, "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-d", p.dsn, "-f",
                        str(path)], check=True, capture_output=True)


def evidence(p: Project) -> dict[str, object]:
    return dict(json.loads(sorted((p.path / "reports").glob("phase4-*[0-9].json"))[-1].read_text()))


def test_verification_only_before_and_after_psql_compares_with_the_baseline_from_before(
        project: Callable[..., Project]) -> None:
    p = project("mini", "safe")
    assert p.run("-m", "preflight", seed=True).ret == 0

    # Before: nothing is applied; the run records its baseline beside its report and with its backup.
    result = p.run("-v", "--phase4-verify-only")
    outcomes = outcomes_of(result)
    assert result.ret == 0, result.stdout.str()
    assert {outcomes[f"{SAFE}::{m.removesuffix('.sql')}::apply"] for m in MIGRATIONS} == {"SKIPPED"}
    assert all(outcomes[f"{SAFE}::{c}"] == "SKIPPED" for c in COMPARISONS)
    result.stdout.fnmatch_lines([
        "phase4 mode: verification only, nothing is applied: 0 of 3 migration(s) applied (0 in the ledger, 0 proven "
        "by their checks)",
        "SKIPPED [[]1] checks/phase4.toml:*: not applied: verification only: view_exists[[]sales_with_details] "
        "fails: expected view public.sales_with_details to exist, found no such relation",
        "SKIPPED [[]11] checks/phase4.toml:* verification only: 3 migration(s) of the plan not applied "
        "(20250101000001_create_views.sql, *): the checks after them describe the state they leave"])
    before = sorted((p.path / "reports").glob("*.baseline.json"))
    assert len(before) == 1
    assert len(list((p.path / "_backups").glob("*/*/baseline.json"))) == 1
    assert p.query("SELECT count(*) FROM information_schema.views WHERE table_name = 'sales_with_details'") == [(0,)]

    # psql applies the first migration; a run then records a newer baseline, taken with it applied.
    psql(p, MIGRATIONS[0])
    result = p.run("-v", "--phase4-verify-only")
    assert outcomes_of(result)[f"{SAFE}::20250101000001_create_views::view_exists[sales_with_details]"] == "PASSED"
    assert len(list((p.path / "reports").glob("*.baseline.json"))) == 2

    # psql applies the rest, and the application deletes a ticket.
    psql(p, *MIGRATIONS[1:])
    p.execute("DELETE FROM tickets WHERE id = 7")
    result = p.run("-v", "--phase4-verify-only")
    outcomes = outcomes_of(result)
    assert p.query("SELECT to_regclass('pytest_phase4.ledger')") == [(None,)]  # nothing applied by the plugin
    result.stdout.fnmatch_lines([
        "phase4 mode: verification only, nothing is applied: 3 of 3 migration(s) applied (0 in the ledger, 3 proven "
        "by their checks)",
        "SKIPPED [[]1] checks/phase4.toml:45: already applied: by another tool: its 3 check(s) verify against the "
        "database (no ledger or migration history lists it); verifying only"])
    assert outcomes[f"{SAFE}::preflight::views_absent[sales_with_details]"] == "PASSED"  # an applied one made it
    # Every comparison ran, against the first run's baseline: the newer one was taken with a migration applied.
    assert outcomes[f"{SAFE}::post::catalog_diff[schema]"] == "PASSED"
    assert {outcomes[f"{SAFE}::{c}"] for c in COMPARISONS if "catalog" not in c} == {"FAILED"}
    result.stdout.fnmatch_lines(["expected: 50 rows (recorded before migrating)", "found:    49 (-1)",
                                 "where:    public.tickets"])
    result.stdout.fnmatch_lines(["*phase4 baseline*", f"compared with {before[0]} (taken *)"])
    used = evidence(p)["baseline"]
    assert isinstance(used, dict)
    assert used["used"] == str(before[0])
    assert used["applied_then"] == []
    assert "baseline" not in " ".join(line for line in result.outlines if "SKIPPED" in line)


def test_a_rerun_after_the_migrations_compares_with_the_first_runs_baseline(project: Callable[..., Project]) -> None:
    p = project("mini", "safe")
    assert p.run("--phase4-confirm-destructive", seed=True).ret == 0
    p.execute("DELETE FROM tickets WHERE id = 7")
    result = p.run("-v")  # everything applied: the rerun used to skip every comparison for want of a baseline
    outcomes = outcomes_of(result)
    assert {outcomes[f"{SAFE}::{c}"] for c in COMPARISONS if "catalog" not in c} == {"FAILED"}
    assert outcomes[f"{SAFE}::post::catalog_diff[schema]"] == "PASSED"
    first = sorted((p.path / "reports").glob("*.baseline.json"))
    assert len(first) == 1  # the rerun applied nothing and records none
    result.stdout.fnmatch_lines([f"compared with {first[0]} (taken *)"])
    backup = next(Path(p.path / "_backups").glob("*/*/baseline.json"))
    assert json.loads(backup.read_text())["counts"] == json.loads(first[0].read_text())["counts"]


def probed(dsn: str) -> dict[str, tuple[str, str]]:
    """Each migration of the mini plan as --phase4-verify-only finds it: (status, note)."""
    plan = load_plan(EXAMPLES / "mini" / "checks" / "phase4.toml")
    run = Phase4Run(plan, Target(dsn, "test"), False, verify_only=True)
    try:
        run.open()
        verifyonly.probe(run)
        return {f: (s.status, s.note) for f, s in run.states.items()}
    finally:
        run.close()


def test_applied_is_what_the_checks_verify_and_the_history_agrees_with(scratch_dsn: str) -> None:
    plan = load_plan(EXAMPLES / "mini" / "checks" / "phase4.toml")
    with psycopg.connect(scratch_dsn) as conn:
        load_setup(conn, plan)
        conn.execute((EXAMPLES / "mini/checks/migrations" / MIGRATIONS[0]).read_text())  # applied with psql, say
    found = probed(scratch_dsn)
    assert found[MIGRATIONS[0]] == ("already applied", "by another tool: its 2 check(s) verify against the database "
                                                       "(no ledger or migration history lists it)")
    assert found[MIGRATIONS[1]] == ("not run", "verification only: column_absent[sales.customer_name] fails: "
                                               "expected column sales.customer_name absent, found it exists")

    # Supabase's history, where there is one, must list a migration too: its checks alone do not make it applied.
    with psycopg.connect(scratch_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA supabase_migrations; CREATE TABLE supabase_migrations.schema_migrations "
                     "(version text PRIMARY KEY, name text)")
    assert probed(scratch_dsn)[MIGRATIONS[0]] == (
        "not run", "verification only: supabase_migrations.schema_migrations does not list 20250101000001 (though "
                   "its 2 check(s) verify)")
    with psycopg.connect(scratch_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO supabase_migrations.schema_migrations VALUES ('20250101000001', 'create_views'), "
                     "('20250101000003', 'add_indexes')")
    found = probed(scratch_dsn)
    assert found[MIGRATIONS[0]] == ("already applied", "by another tool: supabase_migrations.schema_migrations lists "
                                                       "20250101000001; its 2 check(s) verify")
    # The history says the last one is applied, its checks say it is not, and the one before it is not applied:
    # applied it is (its checks then fail as any applied migration's), and the one before it is out of order.
    assert found[MIGRATIONS[2]][0] == "already applied"
    assert found[MIGRATIONS[2]][1].startswith("by another tool: supabase_migrations.schema_migrations lists "
                                              "20250101000003; index_exists[idx_sales_customer] fails")
    assert found[MIGRATIONS[1]] == ("refused", f"{MIGRATIONS[1]} is not applied (supabase_migrations.schema_migrations "
                                               "does not list 20250101000002), yet 20250101000003_add_indexes.sql, "
                                               "after it in the plan, is: the migrations were applied out of plan "
                                               "order, or its checks do not hold; find out which before going on")
