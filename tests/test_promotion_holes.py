"""Attacks on --phase4-require-evidence that still get through (each xfail strict: a fixer removes the mark).
Evidence that does not prove what it claims must not let a production run change production."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from test_promotion import REQUIRE, staging_dsn, staging_run  # noqa: F401 (a fixture)
from test_promotion_attacks import gate, root, sealed, staged  # noqa: F401 (root is a fixture)

from helpers import Project


@pytest.mark.xfail(strict=True, reason="attack: checks skipped because a tool is missing count as green")
def test_evidence_whose_checks_all_skipped_proves_nothing(root: Path) -> None:  # noqa: F811
    doc = staged(root)
    for c in doc["checks"]:
        c.update(outcome="skipped", message="psql is not installed (not found on PATH): 'psql -c ...' was not run")
    assert gate(root, sealed(doc)) != ""


@pytest.mark.xfail(strict=True, reason="attack: the evidence of a staging re-run that applied nothing (every "
                                       "migration 'already applied') passes as a run that applied the migrations")
def test_a_staging_rerun_that_applied_nothing_is_no_evidence_of_applying(
        project: Callable[..., Project], staging_dsn: str) -> None:  # noqa: F811
    p = project("mini")
    staging_run(p, staging_dsn)
    rerun = staging_run(p, staging_dsn, seed=False)  # e.g. after the first run was red, or run by another tool
    assert {m["status"] for m in rerun["migrations"]} == {"already applied"}
    assert rerun["green"] is True
    assert rerun["mode"] == "apply"
    result = p.run(REQUIRE, "--phase4-confirm-destructive", seed=True)
    # README: the gate requires "a run that applied and verified the migrations"; this one applied none
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    assert p.query("SELECT to_regnamespace('pytest_phase4')") == [(None,)]


@pytest.mark.xfail(strict=True, reason="attack: the production run's --phase4-json may be the very evidence file "
                                       "it relies on, and overwrites the staging evidence")
def test_production_does_not_overwrite_the_staging_evidence_it_relied_on(
        project: Callable[..., Project], staging_dsn: str) -> None:  # noqa: F811
    p = project("mini")
    staging_run(p, staging_dsn)
    kept = (p.path / "staging.json").read_text()
    result = p.run(REQUIRE, "--phase4-confirm-destructive", "--phase4-json=staging.json", seed=True)
    assert result.ret in (0, pytest.ExitCode.USAGE_ERROR), result.stdout.str()
    # the change ticket's proof of staging is gone: the file now holds production's own evidence
    assert (p.path / "staging.json").read_text() == kept
