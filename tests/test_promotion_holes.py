"""Attacks on --phase4-require-evidence that still get through (each xfail strict: a fixer removes the mark).
Evidence that does not prove what it claims must not let a production run change production."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from test_promotion import REQUIRE, staging_dsn, staging_run  # noqa: F401 (a fixture)
from test_promotion_attacks import gate, root, sealed, staged  # noqa: F401 (root is a fixture)

from helpers import Project
from pytest_phase4.plugin.promotion import _redacted


@pytest.mark.xfail(strict=True, reason="attack: checks skipped because a tool is missing count as green")
def test_evidence_whose_checks_all_skipped_proves_nothing(root: Path) -> None:  # noqa: F811
    doc = staged(root)
    for c in doc["checks"]:
        c.update(outcome="skipped", message="psql is not installed (not found on PATH): 'psql -c ...' was not run")
    assert gate(root, sealed(doc)) != ""


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
    assert result.errlines[0].startswith("ERROR: --phase4-require-evidence=staging.json refused: the staging run did "
                                         "not apply 3 of the plan's migrations itself (20250101000001_create_views."
                                         "sql, "), result.errlines
    assert "; use the evidence of the run that applied them" in result.errlines[0]


def test_production_does_not_overwrite_the_staging_evidence_it_relied_on(
        project: Callable[..., Project], staging_dsn: str) -> None:  # noqa: F811
    p = project("mini")
    staging_run(p, staging_dsn)
    kept = (p.path / "staging.json").read_text()
    result = p.run(REQUIRE, "--phase4-confirm-destructive", "--phase4-json=staging.json", seed=True)
    assert result.ret in (0, pytest.ExitCode.USAGE_ERROR), result.stdout.str()
    # the change ticket's proof of staging is gone: the file now holds production's own evidence
    assert (p.path / "staging.json").read_text() == kept
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert ("ERROR: --phase4-require-evidence=staging.json refused: this run would write its own JSON evidence "
            "(--phase4-json) to that very file") in result.errlines[0]
    # the same file by another name (a symlink) or beside the --html report: refused as well, nothing connected
    (p.path / "out").mkdir()
    (p.path / "out/prod.json").symlink_to(p.path / "staging.json")
    result = p.run(REQUIRE, "--phase4-confirm-destructive", "--phase4-json=out/prod.json", seed=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result = p.run(REQUIRE, "--phase4-confirm-destructive", "--html=staging.html", seed=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    assert "(beside the --html report)" in result.errlines[0]
    assert (p.path / "staging.json").read_text() == kept
    assert p.query("SELECT to_regnamespace('pytest_phase4')") == [(None,)]


@pytest.mark.xfail(strict=True, reason="attack: a script a command check runs is hashed in the evidence but not "
                                       "pinned: changed after the gate, its new bytes run against production")
def test_a_command_script_changed_after_the_gate_does_not_run_on_production(
        project: Callable[..., Project], staging_dsn: str) -> None:  # noqa: F811
    p = project("mini")
    plan = p.path / "checks/phase4.toml"
    plan.write_text(plan.read_text().replace(
        "[[preflight]]\ncheck = \"migration_files\"\n",
        f"[[preflight]]\ncheck = \"migration_files\"\n\n[[preflight]]\ncheck = \"command\"\n"
        f"run = '\"{sys.executable}\" verify.py'\n", 1))
    (p.path / "checks/verify.py").write_text("print('build ok')\n")
    staged = staging_run(p, staging_dsn)
    assert ("verify.py", "command") in {(f["path"], f["role"]) for f in staged["files"]}
    assert staged["green"] is True
    # swapped after the gate read it (a plugin here; a deploy, a git pull or a colleague in real life)
    (p.path / "plugins").mkdir()
    (p.path / "plugins/evil.txt").write_text(
        f"import psycopg\npsycopg.connect({p.dsn!r}, autocommit=True).execute('DROP TABLE tickets CASCADE')\n")
    (p.path / "plugins/swap_script.py").write_text(
        "from pathlib import Path\n\n\ndef pytest_collection_finish(session):\n"
        "    Path('checks/verify.py').write_text(Path('plugins/evil.txt').read_text())\n")
    p.pytester.syspathinsert(p.path / "plugins")
    result = p.run(REQUIRE, "--phase4-confirm-destructive", "-p", "swap_script", seed=True)
    result.stdout.fnmatch_lines(["phase4 relied on evidence: staging.json *"])  # the gate let it start
    assert p.query("SELECT to_regclass('public.tickets') IS NOT NULL") == [(True,)]


def test_a_huge_evidence_max_age_is_one_clear_line(project: Callable[..., Project]) -> None:
    p = project("mini")
    plan = p.path / "checks/phase4.toml"
    plan.write_text(plan.read_text() + '\n[promotion]\nevidence_max_age = "99999999999d"\n')
    (p.path / "staging.json").write_text("{}")
    result = p.run(REQUIRE, "--phase4-confirm-destructive")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    assert "evidence_max_age must be between 1min and 366d; found '99999999999d'" in result.stderr.str()
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_the_evidence_args_hold_no_password() -> None:
    args = _redacted(["--phase4", "--phase4-base-url=https://deploy:s3cret-token@api.example.com",
                      "--phase4-base-url", "https://deploy:s3cret-token@api.example.com",
                      "--api-token", "t0ken-value", "--dsn=postgresql://me:pw-value@db/crm"])
    assert "s3cret-token" not in json.dumps(args)
    assert args == ["--phase4", "--phase4-base-url=https://deploy:***@api.example.com", "--phase4-base-url",
                    "https://deploy:***@api.example.com", "--api-token", "***", "--dsn=***"]


@pytest.mark.xfail(strict=True, reason="attack: a command check whose cwd names an environment variable has its "
                                       "script left out of the evidence: production may run another script")
def test_a_command_script_under_an_env_cwd_is_part_of_the_evidence(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    (root / "checks/tools").mkdir()
    (root / "checks/tools/verify.sh").write_text("#!/bin/sh\nexit 0\n")
    monkeypatch.setenv("PHASE4_TOOLS", "tools")
    plan = root / "checks/phase4.toml"
    plan.write_text(plan.read_text().replace(
        "[[preflight]]\ncheck = \"migration_files\"\n",
        "[[preflight]]\ncheck = \"migration_files\"\n\n[[preflight]]\ncheck = \"command\"\n"
        "run = \"sh verify.sh\"\ncwd = \"${PHASE4_TOOLS}\"\n", 1))
    doc = staged(root)  # what staging wrote, verify.sh as it was
    (root / "checks/tools/verify.sh").write_text("#!/bin/sh\npsql -c 'TRUNCATE customers CASCADE'\nexit 0\n")
    assert gate(root, sealed(doc)) != ""


def test_production_cannot_deselect_the_checks_staging_proved(
        project: Callable[..., Project], staging_dsn: str) -> None:  # noqa: F811
    p = project("mini")
    assert staging_run(p, staging_dsn)["selection"]["complete"] is True
    result = p.run(REQUIRE, "--phase4-confirm-destructive", "-m", "not post", seed=True)
    # today: exit 0, all three migrations applied, no_orphans and row_counts_unchanged never run on production
    assert result.ret != pytest.ExitCode.OK, result.stdout.str()
    applied = p.query("SELECT count(*) FROM pytest_phase4.ledger") if p.query(
        "SELECT to_regclass('pytest_phase4.ledger')") != [(None,)] else [(0,)]
    assert applied == [(0,)]  # refused before migrating, as -m preflight alone is the one way to check only
    assert result.errlines[0] == (
        "ERROR: --phase4-require-evidence=staging.json refused: this run would not run every check of the plan (-m "
        "'not post'), and the evidence proves staging only for the whole plan; expected production to run every "
        "check staging ran; drop -m 'not post' (run the whole plan). Nothing was done (no connection made)")
    assert p.query("SELECT to_regnamespace('pytest_phase4')") == [(None,)]
    for args in (("-k", "not no_orphans"), ("--deselect", "checks/phase4.toml::post"),
                 ("checks/phase4.toml::preflight",)):
        result = p.run(REQUIRE, "--phase4-confirm-destructive", *args, seed=True)
        assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
        assert "refused: this run would not run every check of the plan" in result.errlines[0]
    assert p.query("SELECT to_regnamespace('pytest_phase4')") == [(None,)]
    # a plugin that deselects on its own (the gate cannot see it on the command line): stopped before any item runs
    (p.path / "plugins").mkdir()
    (p.path / "plugins/drop_post.py").write_text(
        "def pytest_collection_modifyitems(config, items):\n"
        "    gone = [i for i in items if '::post::' in i.nodeid]\n"
        "    items[:] = [i for i in items if i not in gone]\n"
        "    config.hook.pytest_deselected(items=gone)\n")
    p.pytester.syspathinsert(p.path / "plugins")
    result = p.run(REQUIRE, "--phase4-confirm-destructive", "-p", "drop_post", seed=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result.stdout.fnmatch_lines(["*--phase4-require-evidence=staging.json refused: * check(s) of the plan deselected "
                                 "(post::*); expected production to run every check staging ran; run the whole plan."
                                 " Nothing of the runbook was run*"])
    assert p.query("SELECT to_regclass('pytest_phase4.ledger')") in ([(None,)],) or p.query(
        "SELECT count(*) FROM pytest_phase4.ledger") == [(0,)]


def test_a_number_too_long_for_python_is_one_refusal_line(root: Path) -> None:  # noqa: F811
    text = sealed(staged(root)).replace('"deselected": 0', '"deselected": ' + "1" * 5000, 1)
    try:
        line = gate(root, text)
    except ValueError as exc:  # what the plugin's gate does not catch: pytest prints INTERNALERROR
        line = f"crashed: {type(exc).__name__}"
    refusal = "--phase4-require-evidence=staging.json refused: it is not evidence this run can trust"
    assert line.startswith(refusal), line
