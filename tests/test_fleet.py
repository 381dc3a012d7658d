"""Fleets (--phase4-targets): one plan on many databases of one server, distributed by pytest-xdist's loadgroup,
each target's runbook its own (lock, ledger, backups, halting, evidence); the canary; the roll-up; refusals. Every
database is checked outside the plugin afterwards."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from fleets import FILES, SECRET, Fleet, rollup
from psycopg.conninfo import make_conninfo

from helpers import EXAMPLES
from pytest_phase4.db.embedded import EmbeddedPostgres
from pytest_phase4.fleet.rollup import UNREPORTED
from pytest_phase4.fleet.targets import FleetTarget, TargetsError, check_unique


def test_a_fleet_of_20_databases_on_4_workers_isolates_a_broken_target_and_a_locked_one(
        fleet: Callable[[int], Fleet]) -> None:
    """The issue's "done when": 20 tenant databases, -n 4; tenant_07 fails its preflight (no sales), tenant_13 meets
    a lock held by the application on a table its third migration needs. 18 migrate; those two halt with their
    reasons, nothing of theirs past the failure is applied, and each ledger is exact (read outside the plugin)."""
    f = fleet(20)
    f.targets_file()
    f.execute("tenant_07", "DELETE FROM sales")
    with psycopg.connect(f.dsns["tenant_13"]) as app:  # the application, mid-transaction on tickets
        app.execute("UPDATE tickets SET title = title WHERE id = 1")
        result = f.run("-n", "4", "--phase4-confirm-destructive", "--phase4-lock-timeout=1s", "--junitxml=junit.xml")
        app.rollback()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "phase4 fleet: 20 targets (--dist loadgroup, one group per target)",
        "fleet: 18 migrated, 1 halted at preflight, 1 blocked at 20250101000003_index_tickets.sql",
        "  tenant_07: halted at preflight: tables_have_rows[sales]: expected >= 1 rows, found 0",
        "  tenant_13: blocked at 20250101000003_index_tickets.sql: 20250101000003_index_tickets.sql:1: canceling "
        "statement due to lock timeout [SQLSTATE 55P03]",
    ])
    result.assert_outcomes(passed=18, failed=2)
    for name in f.names:
        if name == "tenant_07":
            assert f.ledger(name) == []
            assert f.has_column(name, "sales", "customer_name")
            assert f.query(name, "SELECT to_regclass('sales_with_details')") == [(None,)]
        elif name == "tenant_13":
            assert f.ledger(name) == FILES[:2]
            assert not f.has_column(name, "sales", "customer_name")
            assert not f.has_index(name, "idx_tickets_customer")
        else:
            assert f.ledger(name) == FILES, name
            assert not f.has_column(name, "sales", "customer_name")
            assert f.has_index(name, "idx_tickets_customer")
    doc = rollup(f)
    assert doc["summary"] == "18 migrated, 1 halted at preflight, 1 blocked at 20250101000003_index_tickets.sql"
    rows = {r["name"]: r for r in doc["targets"]}
    assert [r["name"] for r in doc["targets"]] == f.names
    assert {n: (r["verdict"], r["applied"]) for n, r in rows.items() if n not in ("tenant_07", "tenant_13")} == {
        n: ("migrated", 3) for n in f.names if n not in ("tenant_07", "tenant_13")}
    assert (rows["tenant_07"]["verdict"], rows["tenant_07"]["applied"], rows["tenant_07"]["step"]) == (
        "halted", 0, "preflight")
    assert (rows["tenant_13"]["verdict"], rows["tenant_13"]["applied"], rows["tenant_13"]["step"]) == (
        "blocked", 2, "20250101000003_index_tickets.sql")
    for name, row in rows.items():  # each target's evidence in its own folder, and its backups in its own
        evidence = Path(row["evidence"])
        assert evidence.parent.name == name
        assert f"dbname={f.dbs[name]}" in json.loads(evidence.read_text())["dsn"]
    written = f.written()
    assert SECRET not in written
    assert SECRET not in result.stdout.str() + result.stderr.str()


def test_a_failed_canary_stops_every_other_target_before_its_first_migration(fleet: Callable[[int], Fleet]) -> None:
    """--phase4-canary=1 on 2 workers: the canary fails its preflight, so no other target applies anything (checked
    in each database); they are reported not run, with the canary's reason, in the terminal and fleet.json."""
    f = fleet(4)
    f.targets_file()
    f.execute("tenant_01", "DELETE FROM sales")
    result = f.run("-n", "2", "--phase4-confirm-destructive", "--phase4-canary=1", "--phase4-canary-wait=60s")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    reason = "canary tenant_01 halted at preflight: tables_have_rows[sales]: expected >= 1 rows, found 0"
    result.stdout.fnmatch_lines([
        "phase4 fleet: 4 targets (--dist loadgroup, one group per target); canary: the first 1 (tenant_01)",
        "fleet: 1 halted at preflight, 3 not run",
        "  tenant_01: halted at preflight: tables_have_rows[sales]: expected >= 1 rows, found 0",
        *(f"  {n}: not run: {reason}" for n in f.names[1:]),
    ])
    result.assert_outcomes(failed=1, skipped=3)
    assert [f.ledger(n) for n in f.names] == [[], [], [], []]
    assert all(f.has_column(n, "sales", "customer_name") for n in f.names)
    doc = rollup(f)
    assert [(r["name"], r["verdict"], r["reason"]) for r in doc["targets"][1:]] == [
        (n, "not run", reason) for n in f.names[1:]]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_green_canary_lets_the_others_run_on_one_or_two_workers(fleet: Callable[[int], Fleet],
                                                                   pg_server: EmbeddedPostgres,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   workers: str) -> None:
    """The canary is collected first and xdist's loadgroup hands groups out in collection order: no worker waits
    for a canary queued behind it (no deadlock with -n 1), and the others start once it is green. The targets come
    from a [[source]]: a query on the server that returns the tenant databases' names."""
    f = fleet(3)
    monkeypatch.setenv("FLEET_SERVER_DSN", make_conninfo(pg_server.dsn, password=SECRET))
    prefix = f.template.removesuffix("template") + "tenant"
    query = "SELECT datname FROM pg_database WHERE datname LIKE 'PREFIX%' ORDER BY 1".replace("PREFIX", prefix)
    (f.pytester.path / "fleet.toml").write_text(
        f'[fleet]\ncanary = 1\n\n[[source]]\ndsn_env = "FLEET_SERVER_DSN"\nquery = "{query}"\n')
    result = f.run("-n", workers, "--phase4-confirm-destructive", "--phase4-canary-wait=120s")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    dbs = list(f.dbs.values())
    result.stdout.fnmatch_lines([f"phase4 fleet: 3 targets (*); canary: the first 1 ({dbs[0]})", "fleet: 3 migrated"])
    assert [f.ledger(n) for n in f.names] == [FILES] * 3
    assert [r["name"] for r in rollup(f)["targets"]] == dbs
    assert SECRET not in f.written()
    if workers == "2":  # run again: the canary's row in its database changes nothing; all is applied already
        shutil.rmtree(f.pytester.path / "reports")
        again = f.run("-n", workers, "--phase4-confirm-destructive", "--phase4-canary-wait=120s")
        assert again.ret == pytest.ExitCode.OK, again.stdout.str()
        assert [(r["verdict"], r["applied"], r["already"]) for r in rollup(f)["targets"]] == [("migrated", 0, 3)] * 3


def test_a_targets_file_is_refused_before_anything_connects(pytester: pytest.Pytester,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """No server is there (port 1): every refusal comes before a connection. A password or DSN in the file, a bad
    name and an unknown key are listed at once; then an unset variable; then a duplicate name and one database
    listed twice; --dsn, another --dist, and a point of no return without the confirm flag."""
    shutil.copytree(EXAMPLES / "fleet", pytester.path, dirs_exist_ok=True)
    nowhere = "postgresql://app:hunter2@127.0.0.1:1/tenant_a"
    monkeypatch.setenv("T_A", nowhere)
    monkeypatch.setenv("T_B", "postgresql://app@127.0.0.1:1/tenant_b")
    monkeypatch.setenv("T_C", "postgresql://app@127.0.0.1:1/tenant_c")
    monkeypatch.setenv("T_A_AGAIN", "host=127.0.0.1 port=1 dbname=tenant_a user=other")
    monkeypatch.delenv("T_UNSET", raising=False)
    targets = pytester.path / "fleet.toml"

    def refused(text: str, *args: str) -> list[str]:
        targets.write_text(text)
        result = pytester.runpytest("--phase4", "-p", "no:cacheprovider", "--phase4-targets=fleet.toml", *args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert "hunter2" not in result.stdout.str() + result.stderr.str()
        return [line.removeprefix("ERROR: ") for line in result.stderr.lines if line.strip()]

    assert refused('[[target]]\nname = "a"\ndsn = "postgresql://app:hunter2@db/a"\n\n'
                   '[[target]]\nname = "b"\ndsn_env = "T_B"\npassword = "hunter2"\n\n'
                   '[[target]]\nname = "bad name"\ndsn_env = "T_B"\n\n[[target]]\nname = "c"\nenv = "T_B"\n') == [
        "fleet.toml: [[target]] #1: dsn refused: never a DSN or password in the targets file; put the DSN in an "
        "environment variable and name it with dsn_env",
        "fleet.toml: [[target]] #2: password refused: never a DSN or password in the targets file; put the DSN in an "
        "environment variable and name it with dsn_env",
        "fleet.toml: [[target]] #3: name = 'bad name': expected letters, digits, '_', '.', '-' (up to 63), e.g. "
        "name = \"tenant_07\"",
        "fleet.toml: [[target]] #4: unknown key(s) env; expected dsn_env, name"]
    ok = '[[target]]\nname = "a"\ndsn_env = "T_A"\n\n[[target]]\nname = "b"\ndsn_env = "T_B"\n'
    assert refused(ok + '\n[[target]]\nname = "c"\ndsn_env = "T_UNSET"\n', "--phase4-confirm-destructive") == [
        "fleet.toml: environment variable(s) not set: T_UNSET; set each to its target's DSN (nothing connected)"]
    assert refused(ok + '\n[[target]]\nname = "a"\ndsn_env = "T_C"\n\n[[target]]\nname = "a2"\ndsn_env = "T_A_AGAIN"\n',
                   "--phase4-confirm-destructive") == [
        "fleet.toml: target name(s) given twice: a; each target needs its own name (its reports and backups go in a "
        "folder of that name)",
        "fleet.toml: targets a and a2 are the same database (tenant_a on 127.0.0.1:1); list each database once"]
    assert refused(ok, "--phase4-confirm-destructive", f"--dsn={nowhere}") == [
        "--phase4-targets names every database of the fleet (each through its dsn_env), and --dsn names one: give "
        "one of them"]
    assert refused(ok, "--phase4-confirm-destructive", "-n", "2", "--dist=load") == [
        "--dist=load: a fleet is distributed one target per worker at a time, with --dist loadgroup (the default "
        "with --phase4-targets); drop --dist or give --dist loadgroup"]
    assert refused(ok) == [
        "phase4.toml has a point of no return (20250101000002_drop_denormalized.sql), and no target of a fleet can "
        "ask for it at a prompt: add --phase4-confirm-destructive to run it on every target, or -m 'not "
        "destructive'; nothing connected"]


def test_two_names_that_differ_only_in_case_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """On a case-insensitive filesystem (macOS, Windows) Tenant_01 and tenant_01 would share one report and backup
    folder: one target's backup written into another's. Refused like a duplicate."""
    monkeypatch.setenv("T_1", "dbname=one host=127.0.0.1 port=1")
    monkeypatch.setenv("T_2", "dbname=two host=127.0.0.1 port=1")
    with pytest.raises(TargetsError) as refused:
        check_unique([FleetTarget("Tenant_01", "T_1"), FleetTarget("tenant_01", "T_2")], "fleet.toml")
    assert str(refused.value) == ("fleet.toml: target name(s) given twice: tenant_01 (as Tenant_01, tenant_01); each "
                                  "target needs its own name, whatever its case (its reports and backups go in a "
                                  "folder of that name)")


def test_without_n_the_targets_run_one_after_another_each_in_its_own_folders(
        fleet: Callable[[int], Fleet], monkeypatch: pytest.MonkeyPatch) -> None:
    """No -n: the same items, in this process, target after target. With a backup stage, each target's backup is
    in its own folder and of its own database; -k leaves a target out (untouched, counted as deselected); the
    JUnit classnames of each target's run start with the target; the HTML report has the fleet's section. A target
    whose server does not answer is an error of its own, its password masked."""
    f = fleet(3)
    plan = f.pytester.path / "checks" / "phase4.toml"
    plan.write_text(plan.read_text().replace("[[migration]]", '[[backup]]\ncheck = "backup"\n\n[[migration]]', 1))
    monkeypatch.setenv("FLEET_GONE_DSN", f"postgresql://app:{SECRET}@127.0.0.1:1/gone")
    f.targets_file(after='[[target]]\nname = "gone"\ndsn_env = "FLEET_GONE_DSN"\n')
    result = f.run("-k", "not tenant_03", "--phase4-confirm-destructive", "--junitxml=junit.xml")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines(["phase4 fleet: 4 targets (one after another, in this process)",
                                 "fleet: 2 migrated, 1 error at start, 1 deselected",
                                 "  gone: error at start: cannot connect to *127.0.0.1*1*"])
    assert [f.ledger(n) for n in f.names] == [FILES, FILES, []]
    backups = f.pytester.path / "_backups" / "fleet-tenant-normalization"
    assert sorted(p.name for p in backups.iterdir()) == ["tenant_01", "tenant_02"]
    for name in ("tenant_01", "tenant_02"):
        [info] = list((backups / name).glob("*/BACKUP_INFO.txt"))
        assert f"dbname={f.dbs[name]}" in info.read_text()
        assert sum(other in info.read_text() for other in f.dbs.values()) == 1
    [folder] = list((f.pytester.path / "reports").glob("fleet-*"))
    # the fleet's run id after its time: two fleets started in the same second never share a folder
    assert re.fullmatch(r"fleet-\d{8}-\d{6}-[0-9a-f]{6}", folder.name), folder.name
    for name in ("tenant_01", "tenant_02"):
        cases = ET.parse(folder / name / "junit.xml").getroot().iter("testcase")
        classnames = {c.get("classname", "") for c in cases}
        assert len(classnames) > 3
        assert all(c.startswith(f"{name}.checks.phase4.toml.") for c in classnames), classnames
        evidence = json.loads((folder / name / "evidence.json").read_text())
        assert (evidence["target"]["name"], evidence["target"]["dbname"]) == (name, f.dbs[name])
    assert [c.get("name") for c in ET.parse(f.pytester.path / "junit.xml").getroot().iter("testcase")] == [
        "tenant_01", "tenant_02", "gone"]
    page = (folder / "fleet.html").read_text()
    assert '<section id="phase4-fleet"><h2>Fleet</h2><p>2 migrated, 1 error at start, 1 deselected</p>' in page
    assert '<a href="tenant_01/report.html">tenant_01</a>' in page
    doc = rollup(f)
    assert (doc["summary"], [r["name"] for r in doc["targets"]]) == ("2 migrated, 1 error at start, 1 deselected",
                                                                    [*f.names[:2], "gone"])
    assert SECRET not in f.written() + (f.pytester.path / "junit.xml").read_text() + result.stdout.str()


def test_reordering_plugins_never_run_a_target_before_its_canary(fleet: Callable[[int], Fleet]) -> None:
    """pytest-randomly (and --ff, --nf) reorder items: without -n, a target placed before its canary would wait for a
    canary that this same process runs only after it, and be reported not run. Targets run in the file's order."""
    f = fleet(3)
    f.targets_file(extra="[fleet]\ncanary = 1\n\n")
    f.execute("tenant_01", "DELETE FROM sales")
    result = f.pytester.runpytest("--phase4", "-p", "no:cacheprovider", "-p", "randomly", "--randomly-seed=2",
                                  "--phase4-targets=fleet.toml", "--phase4-confirm-destructive",
                                  "--phase4-canary-wait=3s", "-v")
    result.stdout.fnmatch_lines(["checks/phase4.toml::tenant_01 FAILED*", "checks/phase4.toml::tenant_02 SKIPPED*",
                                 "checks/phase4.toml::tenant_03 SKIPPED*",
                                 "  tenant_02: not run: canary tenant_01 halted at preflight: *"])
    assert [f.ledger(n) for n in f.names] == [[], [], []]


def test_a_worker_that_dies_mid_target_leaks_nothing_into_the_others(fleet: Callable[[int], Fleet]) -> None:
    """The worker running tenant_02 dies while that target's run is going on: the other targets migrate as usual,
    and the roll-up says tenant_02 told no outcome, and where to look, instead of counting it anywhere else."""
    f = fleet(3)
    f.targets_file()
    (f.pytester.path / "conftest.py").write_text(
        "import os, threading\n\n"
        "def pytest_runtest_call(item):\n"
        "    if item.name == 'tenant_02' and os.environ.get('PYTEST_XDIST_WORKER'):\n"
        "        threading.Timer(0.5, lambda: os._exit(3)).start()\n")
    result = f.run("-n", "2", "--phase4-confirm-destructive", "--max-worker-restart=1")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*worker 'gw*' crashed while running 'checks/phase4.toml::tenant_02*",
                                 "fleet: 2 migrated, 1 not reported"])
    assert [f.ledger(n) for n in ("tenant_01", "tenant_03")] == [FILES, FILES]
    rows = {r["name"]: r for r in rollup(f)["targets"]}
    assert (rows["tenant_02"]["verdict"], rows["tenant_02"]["reason"]) == ("not reported", UNREPORTED)


def test_a_worker_elsewhere_finds_the_plan_in_its_copy_and_the_canary_in_the_database(
        fleet: Callable[[int], Fleet], tmp_path: Path) -> None:
    """A worker started in another folder (`--tx popen//chdir=...`, as `ssh=` would on another host) with the project
    copied by --rsyncdir: it runs from its copy, writes its targets' reports there, learns the canary's outcome from
    the canary's database and sends each outcome back in its reports; the controller writes the roll-up."""
    f = fleet(2)
    f.targets_file(extra="[fleet]\ncanary = 1\n\n")
    remote = tmp_path / "remote"
    remote.mkdir()
    result = f.run("--tx", f"popen//chdir={remote}", f"--rsyncdir={f.pytester.path}", "--phase4-canary-wait=120s",
                   "-W", "ignore::DeprecationWarning", "--phase4-confirm-destructive")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.stdout.fnmatch_lines(["fleet: 2 migrated"])
    assert [f.ledger(n) for n in f.names] == [FILES, FILES]
    evidence = [Path(r["evidence"]) for r in rollup(f)["targets"]]  # written where the worker runs, read there
    assert [(p.parent.name, remote in p.parents, p.is_file()) for p in evidence] == [(n, True, True) for n in f.names]
    assert list((f.pytester.path / "reports").glob("fleet-*/tenant_*")) == []


def test_require_evidence_refuses_a_fleet_with_an_edited_migration_before_any_target_connects(
        fleet: Callable[[int], Fleet], pg_server: EmbeddedPostgres) -> None:
    """--phase4-require-evidence gates the whole fleet: the staging run's evidence is of the plan's files; a migration
    edited since is refused once, in the controller, before any target is resolved or run (no ledger, no report)."""
    f = fleet(2)
    f.targets_file()
    staging = f"{f.template}_staging"
    dsn = pg_server.create_database(staging, template=f.template)
    try:
        result = f.pytester.runpytest("--phase4", "-p", "no:cacheprovider", "-p", "no:randomly", f"--dsn={dsn}",
                                      "--phase4-confirm-destructive", "--phase4-json=staging.json")
        assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    finally:
        pg_server.drop_database(staging)
    migration = f.pytester.path / "checks" / "migrations" / FILES[2]
    migration.write_text(migration.read_text() + "-- edited after staging\n")
    result = f.run("--phase4-confirm-destructive", "--phase4-require-evidence=staging.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --phase4-require-evidence=staging.json refused: migrations/{FILES[2]} *"])
    assert [f.ledger(n) for n in f.names] == [[], []]
    assert not list((f.pytester.path / "reports").glob("fleet-*"))
