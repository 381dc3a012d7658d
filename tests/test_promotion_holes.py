"""Attacks on --phase4-require-evidence that got through the first gate, each now refused or stopped (and the
tests of the fixes: may_skip, files held to the evidence where they are used, the target as the server names it).
Evidence that does not prove what it claims must not let a production run change production."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from test_promotion import REQUIRE, staging_dsn, staging_run  # noqa: F401 (a fixture)
from test_promotion_attacks import found, gate, plan_of, root, sealed, staged  # noqa: F401 (root is a fixture)

from helpers import Project
from pytest_phase4.blast import appqueries
from pytest_phase4.plan.files import plan_files
from pytest_phase4.plugin.promotion import _redacted
from pytest_phase4.safety import promotion
from pytest_phase4.safety.pins import PinBroken, Pins


def test_evidence_whose_checks_all_skipped_proves_nothing(root: Path) -> None:  # noqa: F811
    doc = staged(root)
    for c in doc["checks"]:
        c.update(outcome="skipped", message="psql is not installed (not found on PATH): 'psql -c ...' was not run")
    assert gate(root, sealed(doc)) != ""
    line = found(gate(root, sealed(doc)))
    assert line.startswith(f"the staging run skipped {len(doc['checks'])} check(s), so it proves nothing of them: "
                           "preflight::server_version[>=13] (psql is not installed (not found on PATH): 'psql -c ...' "
                           "was not run); preflight::"), line
    assert gate(root, sealed(doc)).endswith("; expected every check of the plan run on staging, or listed in the "
                                            "plan's [promotion] may_skip; make them run on staging (install what "
                                            "they need, set what they ask for) and give its evidence, or list them "
                                            "in [promotion] may_skip. Nothing was done (no connection made)")


def test_the_plan_may_let_named_checks_skip(root: Path) -> None:  # noqa: F811
    plan = root / "checks/phase4.toml"
    text = plan.read_text()

    def skipping(may_skip: str) -> str:
        plan.write_text(text + f"\n[promotion]\nmay_skip = {may_skip}\n")
        doc = staged(root)
        for c in doc["checks"]:
            if "::post::" in c["id"]:
                c.update(outcome="skipped", message="no --phase4-base-url given")
        doc["checks"].append({"id": "checks/test_x.py::test_y", "outcome": "skipped", "message": "pytest.skip"})
        return gate(root, sealed(doc))

    # brackets in a glob are literal: row_counts_unchanged[customers] names that one check only
    line = found(skipping('["post::no_*", "row_counts_unchanged[customers]", "view_rowcount_matches*", '
                          '"test_x.py::*"]'))
    assert line == ("the staging run skipped 2 check(s), so it proves nothing of them: post::row_counts_unchanged"
                    "[sales] (no --phase4-base-url given); post::row_counts_unchanged[tickets] (no --phase4-base-url "
                    "given)"), line
    assert found(skipping('["post::*"]')).endswith(": checks/test_x.py::test_y (pytest.skip)")
    assert skipping('["post::*", "checks/test_x.py::test_y"]') == ""
    with pytest.raises(Exception, match=r"may_skip must be a list of globs over check ids, e\.g\. \[\"smoke::\*\", "
                                        r"\"preflight::command\[npm_\*\"\]; found 'post::\*'"):
        skipping('"post::*"')


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
    sha = staged["files"][[f["path"] for f in staged["files"]].index("verify.py")]["sha256"]
    result.stdout.fnmatch_lines([f"*phase4: verify.py (command) changed since the gate checked it against the evidence "
                                 f"this run relies on: sha256 {sha} expected, * found; nothing more of the runbook "
                                 "runs; find out who changed it, restore the bytes staging verified, then start the "
                                 "run again*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert p.query("SELECT to_regnamespace('pytest_phase4')") == [(None,)]  # no migration, no ledger


def test_a_command_script_changed_during_the_run_stops_it_before_it_runs(
        project: Callable[..., Project], staging_dsn: str) -> None:  # noqa: F811
    # changed while the run runs, after the migrations (a custom post check stands for a deploy): the script is
    # checked right before it runs, and the session stops there
    p = project("mini")
    plan = p.path / "checks/phase4.toml"
    plan.write_text(plan.read_text() + f"\n[[post]]\ncheck = \"command\"\nrun = '\"{sys.executable}\" verify.py'\n")
    (p.path / "checks/verify.py").write_text("print('build ok')\n")
    (p.path / "checks/test_late.py").write_text(
        "import pytest\nfrom pathlib import Path\n\n\n"
        "@pytest.mark.phase4_after('20250101000003_add_indexes.sql')\ndef test_deploy():\n"
        "    if Path('swap.flag').exists():\n"
        "        Path('checks/verify.py').write_text(\"open('ran.flag', 'w').write('evil')\")\n")
    assert staging_run(p, staging_dsn)["green"] is True
    (p.path / "swap.flag").write_text("")
    result = p.run(REQUIRE, "--phase4-confirm-destructive", "--phase4-json=production.json", seed=True)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines(["*phase4: verify.py (command) changed since the gate checked it against the evidence "
                                 "this run relies on: sha256 * expected, * found; nothing more of the runbook runs;*"])
    assert not (p.path / "ran.flag").exists()
    assert p.query("SELECT count(*) FROM pytest_phase4.ledger") == [(3,)]  # the migrations ran before the change
    production = json.loads((p.path / "production.json").read_text())
    assert production["green"] is False
    assert production["halted"]["reason"].startswith("verify.py (command) changed since the gate checked it")


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


def test_every_file_read_later_is_held_to_the_evidence(root: Path) -> None:  # noqa: F811
    """[setup] files (seeding) and [[app_queries]] files (the blast radius) are read after the gate: each read is
    checked against the sha256 the gate accepted, and a changed one is refused as it is read."""
    (root / "checks/queries").mkdir()
    (root / "checks/queries/app.sql").write_text("SELECT id FROM customers;\n")
    plan = root / "checks/phase4.toml"
    plan.write_text(plan.read_text() + '\n[[app_queries]]\nfile = "queries/*.sql"\n')
    loaded = plan_of(root)
    pins = Pins(loaded.folder, tuple(plan_files(loaded, root)))
    assert pins.text(root / "checks/setup/schema.sql") == (root / "checks/setup/schema.sql").read_text()
    assert appqueries.from_files(loaded.folder, "queries/*.sql", pins)[0][0].text.startswith("SELECT id")
    (root / "checks/queries/app.sql").write_text("SELECT 1;\n")
    with pytest.raises(PinBroken, match=r"^queries/app\.sql \(sql\) changed since the gate checked it against the "
                                        r"evidence this run relies on: sha256 [0-9a-f]{64} expected, [0-9a-f]{64} "
                                        r"found; nothing more of the runbook runs"):
        appqueries.from_files(loaded.folder, "queries/*.sql", pins)
    (root / "checks/setup/schema.sql").write_text("DROP TABLE IF EXISTS customers;\n")
    with pytest.raises(PinBroken, match=r"^setup/schema\.sql \(setup\) changed since the gate checked it"):
        pins.text(root / "checks/setup/schema.sql")
    with pytest.raises(PinBroken, match=r"^queries/app\.sql \(sql\) changed"):  # the first, in path order
        pins.check_all()


def test_the_target_is_told_by_what_the_server_says_not_by_the_dsn(scratch_dsn: str) -> None:
    """A pooler alias (pgbouncer's [databases] crm_prod = dbname=crm) names the database otherwise than the server:
    the evidence records current_database() and the server's address, and compares those."""
    with psycopg.connect(scratch_dsn, autocommit=True) as conn:
        here = promotion.place(conn)
        assert here["dbname"] == conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        assert here["dsn_dbname"] == conn.info.dbname
        assert here["system_identifier"].isdigit()
        assert "password" not in json.dumps(here)
    staging = {**here, "host": "staging-pooler.example.com", "dsn_dbname": "crm_staging"}
    alias = {**here, "host": "prod-pooler.example.com", "dsn_dbname": "crm_prod"}
    assert promotion.same_place(staging, alias) == (f"database {here['dbname']} of the cluster with system "
                                                    f"identifier {here['system_identifier']}")
    # no system identifier on either side (no pg_monitor): the server's address and port decide
    tcp = {"dbname": "crm", "server_addr": "10.0.0.5", "server_port": 5432, "system_identifier": None}
    assert promotion.same_place({**tcp, "host": "a"}, {**tcp, "host": "b"}) == ("database crm at server address "
                                                                                "10.0.0.5:5432")
    assert promotion.same_place({**tcp, "host": "a"}, {**tcp, "host": "b", "server_addr": "10.0.0.6"}) == ""


def test_the_blast_radius_copy_applies_only_the_verified_bytes(
        project: Callable[..., Project], staging_dsn: str) -> None:  # noqa: F811
    # --phase4-blast-copy=target: the copy is made on the target's own server, so what it applies matters too
    p = project("mini")
    plan = p.path / "checks/phase4.toml"
    plan.write_text(plan.read_text() + '\n[[blast_radius]]\ncheck = "database_code"\nplpgsql = "prepare"\n')
    (p.path / "conftest.py").write_text(
        "from pathlib import Path\n\n\ndef pytest_runtest_setup(item):\n"
        "    if '::blast_radius::' in item.nodeid and Path('swap.flag').exists():\n"
        "        f = Path('checks/migrations/20250101000001_create_views.sql')\n"
        "        f.write_text(f.read_text() + '\\nCREATE TABLE swapped (id int);\\n')\n")
    assert staging_run(p, staging_dsn, "--phase4-blast-copy=target")["green"] is True
    (p.path / "swap.flag").write_text("")
    result = p.run(REQUIRE, "--phase4-confirm-destructive", "--phase4-blast-copy=target", "-v", seed=True)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines(["*20250101000001_create_views.sql*the file changed since the run checked it against "
                                 "the evidence it relies on (sha256 * then, * now)*"])
    result.stdout.fnmatch_lines(["Migration checks: NOT RUN    8 did not run: 8 halted after blast_radius"])
    assert p.query("SELECT to_regclass('public.swapped'), to_regclass('public.sales_with_details')") == [(None, None)]
    assert p.query("SELECT count(*) FROM pg_database WHERE datname LIKE '%phase4_blast%'") == [(0,)]
