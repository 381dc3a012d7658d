"""Attacks on the order-proof runbook (issue 11), each a way a real user's plan, options or plugins made a run
apply a migration twice or out of order, pass a step that did not pass, or report a halted run as green. Each
test asserts the safe behaviour, read from the ledger and the data with SQL, outside the plugin."""

from __future__ import annotations

import json
import re
import shlex
import threading
import time
from collections.abc import Callable

import psycopg
import pytest

from helpers import Project, outcomes_of

PLAN = "checks/phase4.toml"
M1 = f"{PLAN}::20250101000001_create_views"
M2 = f"{PLAN}::20250101000002_drop_denormalized"
M3 = f"{PLAN}::20250101000003_add_indexes"


def ledger(p: Project) -> list[str]:
    """The ledger's files in the order they were applied."""
    if p.query("SELECT to_regclass('pytest_phase4.ledger')") == [(None,)]:
        return []
    return [r[0] for r in p.query("SELECT file FROM pytest_phase4.ledger ORDER BY applied_at, file")]


def without_migration(p: Project, file: str) -> None:
    """The plan with one [[migration]] entry (and its verify checks) taken out."""
    plan = p.path / PLAN
    text = plan.read_text()
    start = text.index(f'[[migration]]\nfile = "{file}"')
    rest = text[start + 1:]
    end = start + 1 + min(i for i in (rest.find("\n[[migration]]"), rest.find("\n[[post]]")) if i >= 0) + 1
    plan.write_text(text[:start] + text[end:])


def cents(p: Project) -> int:
    return int(p.query("SELECT sum(value) FROM sales")[0][0])


def test_a_renamed_migration_already_in_the_ledger_is_not_applied_again(project: Callable[..., Project]) -> None:
    """A migration re-stamped after it was applied (a rebase moved it last) is a new file name to the plan: it was
    applied a second time, every price multiplied by 100 twice, and the run was green."""
    p = project("mini", "cents")
    without_migration(p, "20250101000003_add_indexes.sql")
    assert p.run(seed=True).ret == 0
    applied = ledger(p)
    assert applied == ["20250101000001_create_views.sql", "20250101000002_prices_to_cents.sql"]
    in_cents = cents(p)
    old = p.path / "checks/migrations/20250101000002_prices_to_cents.sql"
    old.rename(old.with_name("20250101000004_prices_to_cents.sql"))
    plan = p.path / PLAN
    plan.write_text(plan.read_text().replace("20250101000002_prices_to_cents", "20250101000004_prices_to_cents"))
    result = p.run("-v")
    assert outcomes_of(result)[f"{PLAN}::20250101000004_prices_to_cents::apply"] == "FAILED"
    result.stdout.fnmatch_lines(["*20250101000004_prices_to_cents.sql*20250101000002_prices_to_cents.sql*"])
    assert result.ret == 1
    assert cents(p) == in_cents, "the same migration ran twice"
    assert ledger(p) == applied


def test_a_migration_stamped_before_one_the_ledger_lists_is_refused_even_if_the_plan_omits_it(
        project: Callable[..., Project]) -> None:
    """Two branches: one applied 003 to staging; the other, whose plan has 002 and not yet 003, ran next. 002 was
    applied after 003, silently (the header even said '2 in plan, 2 already applied'); once the branches merge,
    the plan lists 002 before 003 and every run is green, the out-of-order application invisible."""
    p = project("mini", "cents")
    full = (p.path / PLAN).read_text()
    without_migration(p, "20250101000002_prices_to_cents.sql")  # branch A
    assert p.run(seed=True).ret == 0
    assert ledger(p) == ["20250101000001_create_views.sql", "20250101000003_add_indexes.sql"]
    before = cents(p)
    (p.path / PLAN).write_text(full)
    without_migration(p, "20250101000003_add_indexes.sql")  # branch B, from before 003
    result = p.run("-v")
    assert outcomes_of(result)[f"{PLAN}::20250101000002_prices_to_cents::apply"] == "FAILED"
    result.stdout.fnmatch_lines(["phase4 migrations: 2 in plan, 1 already applied (ledger); the ledger also lists 1 "
                                 "not in this plan (20250101000003_add_indexes.sql); *"])
    result.stdout.fnmatch_lines(["refusing to apply 20250101000002_prices_to_cents.sql: the ledger lists "
                                 "20250101000003_add_indexes.sql (plan *), stamped after it, which this plan does not "
                                 "list: *"])
    assert result.ret == 1
    assert cents(p) == before
    assert ledger(p) == ["20250101000001_create_views.sql", "20250101000003_add_indexes.sql"]


def test_a_run_halted_by_an_xfailed_check_never_exits_0(project: Callable[..., Project]) -> None:
    """A custom check marked xfail (a known issue) fails: the plugin rightly halts the run after migration 1, but
    pytest counts an xfail as no failure, so the run exited 0 with two of three migrations not applied (CI goes on
    to deploy the application) and the summary said 'Rollback: NO every check selected passed'."""
    p = project("mini", "known_issue")
    result = p.run("-v", "--phase4-confirm-destructive", seed=True)
    outcomes = outcomes_of(result)
    assert outcomes[f"{M2}::apply"] == "SKIPPED"
    result.stdout.fnmatch_lines(["halted after 20250101000001_create_views.sql: test_views_are_empty: *"])
    assert ledger(p) == ["20250101000001_create_views.sql"]
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "every check selected passed" not in result.stdout.str()


@pytest.mark.parametrize("override", ["python_files=check_*.py", "python_functions=check_*"])
def test_custom_checks_an_ini_override_leaves_out_refuse_the_migrations(
        project: Callable[..., Project], override: str) -> None:
    """-o python_files / python_functions (or PYTEST_ADDOPTS, or a project ini of its own) made pytest collect
    none of the plan folder's custom checks; the plugin reads the same ini, so it expected none: a failing check of
    migration 1's step never ran and the destructive migration 2 was applied, exit 0."""
    p = project("mini", "failing_custom")
    result = p.run("-v", "-o", override, "--phase4-confirm-destructive", seed=True)
    assert outcomes_of(result)[f"{M2}::apply"] == "FAILED"
    why = {"python_files=check_*.py": "python_files = check_*.py leaves it out",
           "python_functions=check_*": "test_views_are_empty not collected: python_functions = check_*"}[override]
    result.stdout.fnmatch_lines(["refusing to apply 20250101000002_drop_denormalized.sql: every step before it must "
                                 "pass in this run, and custom checks that may belong to a step before it were not "
                                 f"collected: checks/test_views_empty.py ({why}); collect the plan's whole folder: *"])
    result.stdout.fnmatch_lines([f"not collected    checks/test_views_empty.py ({why})"])
    assert result.ret == 1
    assert "customer_name" in p.columns("sales")
    assert ledger(p) == ["20250101000001_create_views.sql"]


@pytest.mark.parametrize("plugin", [
    "def pytest_collection_modifyitems(items):\n"
    "    for item in items:\n"
    "        if item.name == 'test_views_are_empty':\n"
    "            item.add_marker(pytest.mark.skip(reason='flaky on staging'))\n",
    "@pytest.hookimpl(tryfirst=True)\n"
    "def pytest_pyfunc_call(pyfuncitem):\n"
    "    return True if pyfuncitem.name == 'test_views_are_empty' else None\n",
], ids=["skip marker", "pytest_pyfunc_call"])
def test_a_plugin_cannot_pass_a_custom_check_off_as_done(project: Callable[..., Project], plugin: str) -> None:
    """What the plugin refuses for a plan check (a skip marker someone else added; a check reported passed without
    its function running) passed a custom check of migration 1's step, which fails: the destructive migration 2 was
    applied after it, exit 0."""
    p = project("mini", "failing_custom")
    (p.path / "conftest.py").write_text("import pytest\n\n\n" + plugin)
    result = p.run("-v", "--phase4-confirm-destructive", seed=True)
    assert outcomes_of(result)[f"{M2}::apply"] == "FAILED"
    why = ("reported without running: a plugin took over the test call" if "pyfunc" in plugin else
           "by a skip marker, a fixture or a plugin, before they ran")
    result.stdout.fnmatch_lines(["refusing to apply 20250101000002_drop_denormalized.sql: every step before it must "
                                 "pass in this run, and 20250101000001_create_views.sql did not: 1 of its 4 test(s) "
                                 f"were skipped: {why} (checks/test_views_empty.py::test_views_are_empty); *"])
    assert result.ret == 1
    assert "customer_name" in p.columns("sales")
    assert ledger(p) == ["20250101000001_create_views.sql"]


def test_the_rehearsal_runs_on_the_scratch_copy_when_the_dsn_comes_from_pytest_addopts(
        project: Callable[..., Project], monkeypatch: pytest.MonkeyPatch) -> None:
    """The DSN in PYTEST_ADDOPTS (so as not to type it each time): the rehearsal's child pytest reads it too, and its
    --dsn outranks the PHASE4_DSN that names the scratch copy, so the 'rehearsal' ran the whole plan, destructive
    migration confirmed, against the target itself. Only the run lock stopped it, with a message that sends the
    user hunting for 'another pytest-phase4 run' and tells them to end it: the pid it names is the run's own."""
    p = project("mini", "safe")
    monkeypatch.setenv("PYTEST_ADDOPTS", "--dsn=" + shlex.quote(p.dsn))
    result = p.run("-v", "--phase4-rehearse", "--phase4-confirm-destructive", seed=True, dsn=False)
    assert "another pytest-phase4 run holds" not in result.stdout.str()
    assert outcomes_of(result)[f"{PLAN}::backup::rehearse"] == "PASSED"
    assert result.ret == 0, result.stdout.str()
    child = json.loads(next((p.path / "_backups").rglob("rehearsal.json")).read_text())
    assert re.search(r"\bdbname=scratch_\d+_[0-9a-f]{8}_phase4_rehearsal\b", child["dsn"]), child["dsn"]
    assert ledger(p) == ["20250101000001_create_views.sql", "20250101000002_drop_denormalized.sql",
                         "20250101000003_add_indexes.sql"]


def test_a_non_transactional_migration_cut_off_midway_says_what_stayed_applied(
        project: Callable[..., Project]) -> None:
    """transaction = false, the connection killed in the file's second statement: the first CREATE INDEX
    CONCURRENTLY stays committed, yet the failure said 'nothing of this file was applied' and 'the migration's
    transaction was rolled back', and the summary 'its own transaction was rolled back'. A user who believes it
    reruns the file as it is (it then fails on the index that exists) or, for a batched data fix, applies its first
    part twice."""
    p = project("mini", "nontx_cut")

    def kill() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with psycopg.connect(p.dsn, autocommit=True) as conn:
                if conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE state = 'active'"
                                " AND query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()").fetchone() == (1,):
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    result = p.run("-v", "--phase4-confirm-destructive", seed=True)
    killer.join()
    assert outcomes_of(result)[f"{M3}::apply"] == "FAILED"
    assert p.query("SELECT indexname FROM pg_indexes WHERE indexname LIKE 'idx\\_%'") == [("idx_sales_customer",)]
    out = result.stdout.str()
    assert "nothing of this file was applied" not in out
    assert "transaction was rolled back" not in out
    result.stdout.fnmatch_lines(["*1 of 3 statement(s) were committed*"])


def test_a_run_that_lost_its_run_lock_applies_nothing_more(project: Callable[..., Project]) -> None:
    """A DBA ends the idle sessions between two steps (the runbook's own active_connections check lists them):
    the session holding the run lock is one. The run went on and applied all three migrations without the lock,
    so a second run could start beside it; nothing said the guarantee 'one run per database' was gone."""
    p = project("mini", "lock_lost")
    result = p.run("-v", "--phase4-confirm-destructive", seed=True)
    assert outcomes_of(result)["checks/test_dba_kills_idle_sessions.py::test_dba_ends_idle_sessions"] == "PASSED"
    assert outcomes_of(result)[f"{M1}::apply"] == "FAILED"
    result.stdout.fnmatch_lines(["refusing to apply 20250101000001_create_views.sql: this run no longer holds its run "
                                 "lock on *: the session that held it (pid *) ended (*). Another run may have started "
                                 "since, * so it applies nothing more (the lock is not taken again). *"])
    assert result.ret == 1
    assert ledger(p) == []


@pytest.mark.parametrize("name", ["phase4-evidence", "phase4-report", "phase4-safety"])
def test_p_no_of_any_part_of_the_plugin_is_refused(project: Callable[..., Project], name: str) -> None:
    """README: '-p no:' of the plugin's own parts is refused. -p no:phase4-evidence ran the runbook without the
    execution summary and the JSON evidence, -p no:phase4-report without the migrations table, silently."""
    p = project("mini")
    result = p.run("-p", f"no:{name}", "-m", "preflight", seed=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: -p no:{name}*"])


# The attacker's doubtful items, decided.

def test_two_migrations_of_the_plan_with_the_same_content_the_later_is_refused(
        project: Callable[..., Project]) -> None:
    """A migration copied under a new name and the old one left in the plan: both would apply the same SQL."""
    p = project("mini", "cents")
    migrations = p.path / "checks/migrations"
    (migrations / "20250101000003_add_indexes.sql").write_bytes(
        (migrations / "20250101000002_prices_to_cents.sql").read_bytes())
    result = p.run("-v", seed=True)
    assert outcomes_of(result)[f"{M3}::apply"] == "FAILED"
    result.stdout.fnmatch_lines(["refusing to apply 20250101000003_add_indexes.sql: its content (sha256 *) is that "
                                 "of 20250101000002_prices_to_cents.sql, applied * (ledger): it is the same migration "
                                 "under another name, *"])
    assert result.ret == 1
    assert ledger(p) == ["20250101000001_create_views.sql", "20250101000002_prices_to_cents.sql"]
    assert cents(p) == 100 * 10 * sum(range(1, 101)), "the prices were multiplied by 100 more than once"


def test_a_custom_check_module_that_skips_itself_is_listed_as_not_run(project: Callable[..., Project]) -> None:
    """pytest.importorskip at a module's top: its checks do not run, said plainly in the summary, not only in
    pytest's 'N skipped'."""
    p = project("mini")
    (p.path / "checks/test_with_requests.py").write_text(
        "import pytest\n\nrequests = pytest.importorskip('phase4_no_such_module')\n\n\n"
        "def test_api_answers(phase4_db):\n    assert False\n")
    result = p.run("-m", "preflight", seed=True)
    result.stdout.fnmatch_lines(["not run          checks/test_with_requests.py: could not import "
                                 "'phase4_no_such_module': No module named 'phase4_no_such_module' (the module "
                                 "skipped itself whole: none of its checks ran)"])
    assert result.ret == 0


def test_a_command_line_path_that_holds_no_part_of_the_plan_is_refused(project: Callable[..., Project]) -> None:
    """pytest --phase4 tests/: nothing of the runbook would run, and the run said nothing of it (exit 0)."""
    p = project("mini")
    (p.path / "tests").mkdir()
    (p.path / "tests/test_app.py").write_text("def test_app():\n    pass\n")
    result = p.run("tests", seed=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --phase4 runs the plan checks/phase4.toml, but the command line names only "
                                 "tests, which holds no part of it: nothing of the runbook would run. Give no path *"])
    assert p.query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]  # not even seeded
    assert p.run("tests", "checks", "-m", "preflight", seed=True).ret == 0


def test_a_rehearsal_run_refuses_any_target_but_its_scratch_copy(
        project: Callable[..., Project], monkeypatch: pytest.MonkeyPatch) -> None:
    """The child of --phase4-rehearse knows its scratch copy by name: whatever DSN reaches it, it runs nowhere
    else."""
    p = project("mini")
    monkeypatch.setenv("PHASE4_REHEARSAL", "crm_phase4_rehearsal")
    result = p.run("-m", "preflight", seed=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: this is the rehearsal run of --phase4-rehearse (PHASE4_REHEARSAL="
                                 "crm_phase4_rehearsal), but its target is database scratch_*, not its scratch copy "
                                 "crm_phase4_rehearsal: refusing to run there; nothing was done*"])
    assert p.query("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
