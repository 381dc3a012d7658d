"""Attacks on fleets (--phase4-targets): each test asserts the SAFE outcome (nothing applied that was not asked
for, no database migrated in another's name, no target counted migrated that was not, no password printed), so it
fails while its hole is open. Every database is read outside the plugin."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from fleets import FILES, SECRET, Fleet, rollup
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from helpers import EXAMPLES
from pytest_phase4.db.embedded import EmbeddedPostgres
from pytest_phase4.fleet.targets import TargetsError, read


def rows_of(f: Fleet) -> dict[str, dict[str, object]]:
    return {str(r["name"]): r for r in rollup(f)["targets"]}


def test_verify_only_given_as_an_ini_override_reaches_every_target(fleet: Callable[[int], Fleet]) -> None:
    """`-o phase4_verify_only=true` (or the same key in a `-c ci.ini`): the controller reads it (Settings), the
    children do not get it (only --phase4-* flags are passed on) and read their own ini file. The controller also
    demands --phase4-confirm-destructive for a verify-only fleet, so the drop column runs: data gone."""
    f = fleet(1)
    f.targets_file()
    f.run("-o", "phase4_verify_only=true", "--phase4-confirm-destructive")
    assert f.has_column("tenant_01", "sales", "customer_name"), "verify-only fleet dropped sales.customer_name"
    assert f.ledger("tenant_01") == []


def test_a_dsn_completed_by_the_libpq_environment_migrates_the_database_the_fleet_named(
        fleet: Callable[[int], Fleet], pg_server: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch) -> None:
    """The target's DSN names server and role; PGDATABASE (set for the whole job, as CI does) names its database.
    The controller checks tenant_01 (database_key reads PGDATABASE); the child, stripped of PG*, connects to the
    role's default database, the application's own, and migrates it: its column dropped, tenant_01 untouched, and
    the roll-up reads 'migrated'. The same goes for PGHOST/PGPORT (another server) and PGUSER (another role)."""
    f = fleet(1)
    app = f"fleet_app_{uuid.uuid4().hex[:8]}"  # a role, and its default database: the application's own
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(sql.Identifier(app)))
    pg_server.create_database(app, template=f.template)
    try:
        params = conninfo_to_dict(f.dsns["tenant_01"])
        monkeypatch.setenv("FLEET_TENANT_01_DSN", make_conninfo(host=params["host"], port=params["port"], user=app,
                                                                password=SECRET))
        monkeypatch.setenv("PGDATABASE", f.dbs["tenant_01"])
        f.targets_file()
        result = f.run("--phase4-confirm-destructive")
        with psycopg.connect(make_conninfo(pg_server.dsn, dbname=app), autocommit=True) as conn:
            kept = conn.execute("SELECT 1 FROM information_schema.columns WHERE table_name = 'sales' AND "
                                "column_name = 'customer_name'").fetchall()
        assert kept, "the fleet migrated the application's database, which no target names"
        assert result.ret != pytest.ExitCode.OK or f.ledger("tenant_01") == FILES
    finally:
        pg_server.drop_database(app)
        for db in f.dbs.values():  # what the target's run created there as that role
            with psycopg.connect(make_conninfo(pg_server.dsn, dbname=db), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(app)))
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(app)))


def test_two_targets_on_one_database_through_an_alias_are_not_both_migrated(
        fleet: Callable[[int], Fleet], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """tenant_02's DSN reaches tenant_01's database through another name for the server (here a symlink to the
    socket folder; on TCP localhost vs 127.0.0.1, a DNS alias, a service entry). The refusal of 'one database
    twice' does not see it: tenant_02 reports 'migrated (0 applied, 3 already applied)' and its real database is
    never touched. One database migrated: at most one target may say migrated."""
    f = fleet(2)
    alias = tmp_path / "alias"
    alias.symlink_to(conninfo_to_dict(f.dsns["tenant_01"])["host"])
    monkeypatch.setenv("FLEET_TENANT_02_DSN", make_conninfo(f.dsns["tenant_01"], host=str(alias)))
    f.targets_file()
    result = f.run("--phase4-confirm-destructive")
    assert f.ledger("tenant_02") == []  # its database was never reached
    result.stdout.no_fnmatch_line("fleet: 2 migrated*")
    # refused before any target starts (no roll-up then): the servers said both reach one database
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: fleet.toml: targets tenant_01 and tenant_02 reach the same database "
                                 f"({f.dbs['tenant_01']}, as its server says: cluster *); list each database once*"])
    assert f.ledger("tenant_01") == []


def test_a_workers_own_environment_neither_redirects_a_target_nor_prints_a_password(
        fleet: Callable[[int], Fleet]) -> None:
    """Remote workers read each dsn_env in their own environment (README). Here the worker's (xspec env:, as a
    remote host's profile would) differs from the controller's: tenant_02's variable names tenant_01's database,
    tenant_03's holds a passphrase with spaces, not quoted. Only the controller checked 'one database once' and
    'a valid DSN': tenant_02 is reported migrated while its own database is untouched, and tenant_03's failure
    quotes a word of the password (psycopg's 'missing "=" after ...') in the terminal and JUnit."""
    f = fleet(3)
    f.targets_file()
    params = conninfo_to_dict(f.dsns["tenant_03"])
    bad = f"host={params['host']} port={params['port']} dbname={params['dbname']} password=correct horse battery"
    result = f.run("--tx", f"popen//env:FLEET_TENANT_02_DSN={f.dsns['tenant_01']}//env:FLEET_TENANT_03_DSN={bad}",
                   "--phase4-confirm-destructive", "--junitxml=junit.xml")
    assert f.ledger("tenant_02") == []  # its database was never reached
    rows = rows_of(f)
    assert rows["tenant_02"]["verdict"] != "migrated", "tenant_02 counted migrated, its database untouched"
    shown = result.stdout.str() + result.stderr.str() + (f.pytester.path / "junit.xml").read_text() + f.written()
    assert "horse" not in shown
    assert "battery" not in shown


def test_a_source_query_returning_connection_strings_never_prints_their_passwords(
        pytester: pytest.Pytester, pg_server: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tenant registry keeps each tenant's DSN; a DBA writes `SELECT dsn FROM tenants`. The refusal lists up to
    five returned values with repr(): every password on the terminal and in the CI log."""
    shutil.copytree(EXAMPLES / "fleet", pytester.path, dirs_exist_ok=True)
    monkeypatch.setenv("FLEET_SERVER_DSN", pg_server.dsn)
    (pytester.path / "fleet.toml").write_text(
        '[[source]]\ndsn_env = "FLEET_SERVER_DSN"\nquery = "SELECT dsn FROM (VALUES '
        "('postgresql://app:PASSWORD@db.internal/tenant_01')) AS tenants (dsn)\"\n".replace("PASSWORD", SECRET))
    result = pytester.runpytest("--phase4", "-p", "no:cacheprovider", "--phase4-targets=fleet.toml",
                                "--phase4-confirm-destructive")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert SECRET not in result.stdout.str() + result.stderr.str()


def test_a_target_whose_migrations_did_not_run_is_not_counted_migrated(fleet: Callable[[int], Fleet]) -> None:
    """`-m preflight` (the dry run the plugin's own refusal suggests a variant of) goes to every target's run, which
    applies nothing and exits 0; the fleet's line to the change board reads '2 migrated'."""
    f = fleet(2)
    f.targets_file()
    result = f.run("-m", "preflight")
    assert [f.ledger(n) for n in f.names] == [[], []]
    result.stdout.no_fnmatch_line("fleet: 2 migrated*")
    assert [r["verdict"] for r in rows_of(f).values()].count("migrated") == 0
    result.stdout.fnmatch_lines(["fleet: 2 checked only (-m preflight)"])
    assert rows_of(f)["tenant_01"]["reason"] == "3 not applied (pending)"


def test_a_target_killed_mid_plan_is_not_reported_stopped_before_it_started(fleet: Callable[[int], Fleet]) -> None:
    """The child running tenant_01 is killed (SIGKILL: the OOM killer, a runner's timeout) after its first migration
    committed. With no evidence, the roll-up assumes 'the child stopped before its run started': 'error at start',
    applied 0. A DBA reads 'untouched'; the ledger holds one migration."""
    f = fleet(1)
    f.targets_file()
    (f.pytester.path / "conftest.py").write_text(
        "import os, signal\n\n"
        "def pytest_runtest_setup(item):\n"
        "    if os.environ.get('PHASE4_FLEET_TARGET') == 'tenant_01' and \\\n"
        "            item.nodeid.endswith('20250101000002_drop_denormalized::apply'):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n")
    result = f.run("--phase4-confirm-destructive")
    assert f.ledger("tenant_01") == FILES[:1]
    row = rows_of(f)["tenant_01"]
    assert row["step"] != "start", row
    result.stdout.no_fnmatch_line("*tenant_01: error at start*")
    result.stdout.fnmatch_lines([f"  tenant_01: killed: by signal 9 after 1 migration(s) applied: {FILES[0]}; "
                                 "the ledger says so*"])
    assert (row["verdict"], row["applied"]) == ("killed", 1)


def test_a_verify_only_fleet_writes_nothing_into_its_canary(fleet: Callable[[int], Fleet]) -> None:
    """Migrations applied by another tool; the fleet verifies them (--phase4-verify-only, which 'never writes to
    the target') with a canary. The canary's outcome goes into pytest_phase4.fleet_canary, created in the
    canary's database (and on a read-only replica or role the publish fails: the others wait 30 min, not run)."""
    f = fleet(2)
    for name in f.names:
        for file in FILES:
            f.execute(name, (EXAMPLES / "fleet" / "checks" / "migrations" / file).read_text())
    f.targets_file(extra="[fleet]\ncanary = 1\n\n")
    result = f.run("--phase4-verify-only", "--phase4-confirm-destructive", "--phase4-canary-wait=60s")
    assert f.query("tenant_01", "SELECT to_regclass('pytest_phase4.fleet_canary')") == [(None,)]
    result.stdout.fnmatch_lines(["fleet: 2 migrated", "  canary 1 not used: --phase4-verify-only applies nothing*"])


def test_a_path_that_leaves_every_target_out_is_not_green(pytester: pytest.Pytester,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`pytest --phase4 --phase4-targets=prod.toml tests/smoke` in a deploy job: the single-target run refuses a path
    that holds no part of the plan (exit 4); the fleet collects the smoke tests only and exits 0, and the job goes
    on to deploy code that needs the migrated schema."""
    shutil.copytree(EXAMPLES / "fleet", pytester.path, dirs_exist_ok=True)
    monkeypatch.setenv("T_A", "postgresql://app@127.0.0.1:1/tenant_a")
    (pytester.path / "fleet.toml").write_text('[[target]]\nname = "a"\ndsn_env = "T_A"\n')
    (pytester.path / "smoke").mkdir()
    # a module name no file of this suite has (pytester runs in this process, which imported tests/test_smoke.py)
    (pytester.path / "smoke" / "test_app_smoke_after_fleet.py").write_text("def test_ok():\n    pass\n")
    result = pytester.runpytest("--phase4", "-p", "no:cacheprovider", "-p", "no:randomly",
                                "--phase4-targets=fleet.toml", "--phase4-confirm-destructive", "smoke")
    assert result.ret != pytest.ExitCode.OK, result.stdout.str()


def test_a_worker_with_another_copy_of_the_plan_does_not_migrate_in_its_name(fleet: Callable[[int], Fleet],
                                                                            tmp_path: Path) -> None:
    """A remote worker (README: 'install it there at the same place', no --rsyncdir) holds last week's checkout,
    where the third migration indexes another column. The controller checked its own plan; the worker runs its
    copy; the roll-up says migrated and names the plan by path only: the change board approved one SQL, the
    databases got another."""
    f = fleet(1)
    f.targets_file()
    remote = tmp_path / "remote"
    for stale in (remote, remote / f.pytester.path.name):
        shutil.copytree(f.pytester.path / "checks", stale / "checks")
        (stale / "checks" / "migrations" / FILES[2]).write_text(
            "CREATE INDEX idx_tickets_customer ON tickets (title);\n")
    result = f.run("--tx", f"popen//chdir={remote}", "-W", "ignore::DeprecationWarning",
                   "--phase4-confirm-destructive")
    [[definition]] = f.query("tenant_01", "SELECT coalesce(pg_get_indexdef(to_regclass('idx_tickets_customer')), '')")
    if "(title)" in definition:  # the stale copy ran: the fleet must not count it migrated
        assert rows_of(f)["tenant_01"]["verdict"] != "migrated", result.stdout.str()
    assert f.ledger("tenant_01") == []  # refused before its run started
    row = rows_of(f)["tenant_01"]
    assert row["verdict"] == "not run"
    assert f"files that differ: migrations/{FILES[2]}" in str(row["reason"])
    assert len(str(rollup(f)["plan_sha256"])) == 64


def test_a_target_name_ending_in_a_newline_is_refused(tmp_path: Path) -> None:
    """`name = "tenant_01\\n"` (or a [[source]] database whose name ends in a newline) passes the check that names
    be letters, digits, '_', '.', '-': its folder has a newline in its name, and each line of the roll-up about it
    breaks in two ('  tenant_01' then ': halted at ...'), detached from the name a DBA greps for."""
    path = tmp_path / "fleet.toml"
    path.write_text('[[target]]\nname = "tenant_01\\n"\ndsn_env = "T_1"\n')
    with pytest.raises(TargetsError):
        read(path, "fleet.toml")
