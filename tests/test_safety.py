"""Data safety, end to end on real PostgreSQL: verified backups, checksums, the point of no return, rollback
and rehearsal (runbook Parts 2, 4 and 7)."""

from __future__ import annotations

import getpass
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from helpers import Project, outcomes_of
from pytest_phase4.db.embedded import EmbeddedPostgres
from pytest_phase4.errors import CheckFailed
from pytest_phase4.safety import backup, snapshot
from pytest_phase4.safety.checks import compare

CRM = "checks/phase4.toml"
SAFE = "checks/phase4.toml"
M1 = f"{SAFE}::20250101000001_create_views"
M2 = f"{SAFE}::20250101000002_drop_denormalized"
M3 = f"{SAFE}::20250101000003_add_indexes"
DESTRUCTIVE = "20250328000026_remove_all_denormalized_fields.sql"
INDEXES = "20250328000027_add_performance_indexes.sql"
DELETE_TICKET = "DELETE FROM tickets WHERE id = 7;\n"
LOSE_DATA = "DELETE FROM tickets WHERE id = 7;\nUPDATE sales SET value = value + 1 WHERE id = 5;\n"
EXTRA_OBJECTS = """
CREATE TYPE ticket_state AS ENUM ('open', 'closed');
CREATE FUNCTION sale_total() RETURNS numeric LANGUAGE sql AS 'SELECT sum(value) FROM sales';
CREATE MATERIALIZED VIEW sales_summary AS SELECT customer_id, count(*) AS n FROM sales GROUP BY 1;
CREATE SEQUENCE invoice_no;
CREATE TABLE audit (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, state ticket_state);
"""
SECRET = "s3cret-Pw-4711"  # the test server trusts every local connection, so any password is accepted


def outside_fingerprint(p: Project) -> tuple[list[str], list[tuple[str, int]]]:
    """What a DBA would compare, computed without the plugin: the schema-only dump minus comments and the
    plugin's ledger schema, and the exact row count of every table."""
    out = subprocess.run([str(shutil.which("pg_dump")), "--schema-only", "--exclude-schema=pytest_phase4",
                          f"--dbname={p.dsn}"], capture_output=True, text=True, check=True).stdout
    # \restrict / \unrestrict carry a random key per dump (pg_dump 15.14+): not part of the schema
    lines = [line for line in out.splitlines() if line.strip() and not line.startswith(("--", "\\restrict",
                                                                                        "\\unrestrict"))]
    tables = [r[0] for r in p.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
    counts = [(t, _scalar(p, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", t))))
              for t in tables]
    return lines, counts


def backup_folder(p: Project) -> Path:
    found = sorted(p.path.glob("_backups/*/*/BACKUP_INFO.txt"))
    assert len(found) == 1, found
    return found[0].parent


def test_confirmed_run_leaves_a_verified_dump_and_rollback_brings_back_schema_and_rows(
        project: Callable[..., Project]) -> None:
    p = project("crm")
    p.dsn = f"{p.dsn} password={SECRET}"
    assert p.run("-m", "preflight", seed=True).ret == 0
    before = outside_fingerprint(p)

    result = p.run("-v", "--phase4-confirm-destructive", "--phase4-verify-restore")
    assert result.ret == 0
    outcomes = outcomes_of(result)
    for step in ("dump", "schema", "snapshot", "info", "verify", "restore"):
        assert outcomes[f"{CRM}::backup::backup[{step}]"] == "PASSED"
    assert outcomes[f"{CRM}::post::catalog_diff[schema]"] == "PASSED"
    assert outcomes[f"{CRM}::post::checksum_unchanged[sales]"] == "PASSED"
    folder = backup_folder(p)
    listing = subprocess.run([str(shutil.which("pg_restore")), "--list", str(folder / "full.dump")],
                             capture_output=True, text=True, check=True).stdout
    assert "TABLE DATA public sales" in listing
    info = (folder / "BACKUP_INFO.txt").read_text()
    assert re.search(r"^sha256: +" + backup.sha256_of(folder / "full.dump") + "$", info, re.M)
    assert re.search(r"^  \S*pg_restore --clean --if-exists --single-transaction --exit-on-error "
                     r"'--dbname=[^']*dbname=scratch_\d+[^']*' \S+/full\.dump$", info, re.M)
    for text in (info, result.stdout.str(), p.report(), (folder / "snapshot.json").read_text()):
        assert SECRET not in text
    assert "customer_name" not in p.columns("sales")
    assert outside_fingerprint(p) != before
    assert p.run("-m", "backup").ret == 0  # a backup of the migrated state: the rollback must not pick it
    assert len(list(p.path.glob("_backups/*/*/BACKUP_INFO.txt"))) == 2

    result = p.run("-v", "--phase4-rollback=restore", "--phase4-accept-loss")
    assert result.ret == 0, result.stdout.str()
    assert list(outcomes_of(result).items()) == [
        (f"{CRM}::rollback::{step}", "PASSED")
        for step in ("locate_backup", "assess", "safety_dump", "drop_created", "restore", "ledger", "row_counts",
                     "checksums", "fingerprint", "commit")]
    result.stdout.fnmatch_lines(["*phase4 ROLLBACK (restore: the whole backup back, with consent) with the newest "
                                 "pre-migration backup in *"])
    result.stdout.fnmatch_lines(["*phase4 rollback*",
                                 f"locate_backup    {folder}: full.dump sha256 * matches BACKUP_INFO.txt, * entries "
                                 "readable; marker * in this database and in the dump; taken before any migration of "
                                 "the plan",
                                 "assess           restore the backup over 8 applied migration(s): * loss(es) "
                                 "accepted: *view public.sales_with_details: not in the backup, dropped*",
                                 "safety_dump      *before-rollback-*/full.dump: * bytes, sha256 *: the state before "
                                 "this rollback, taken while the rollback holds * table(s) against writes until it "
                                 "ends; the losses listed by assess are unchanged",
                                 "drop_created     dropped * object(s) not in the backup: *",
                                 "restore          pg_restore --clean --if-exists script of * run in the rollback's "
                                 "transaction (* rows)",
                                 "ledger           ledger: 8 migration(s) no longer applied *",
                                 "row_counts       * tables of every schema: rows as in the backup's snapshot",
                                 "checksums        * tables of every schema: content checksums as in the backup's "
                                 "snapshot",
                                 "fingerprint      * catalog objects of every schema as in the backup's snapshot",
                                 "commit           committed: 8 migration(s) rolled back (restore); *"])
    assert outside_fingerprint(p) == before
    assert p.query("SELECT to_regclass('pytest_phase4.ledger')") == [(None,)]  # the backup's: none yet
    assert p.query("SELECT mode FROM pytest_phase4.rollbacks") == [("restore",)]
    # the evidence says what the database now is: every migration undone, none "already applied"
    result.stdout.fnmatch_lines([f"rolled back * 20250315000003_enhance_reference_tables.sql * undone by this "
                                 f"run's rollback ({folder.name})"])
    assert "already applied" not in result.stdout.str()


def test_without_flag_or_terminal_the_destructive_migrations_never_run(project: Callable[..., Project]) -> None:
    p = project("crm")
    assert p.run("-m", "preflight", seed=True).ret == 0
    # A child process with stdin closed: no terminal to ask, so it must neither wait nor proceed.
    result = p.pytester.runpytest_subprocess("--phase4", "-p", "no:cacheprovider", "-v", f"--dsn={p.dsn}",
                                             timeout=120)
    assert result.ret == 1
    outcomes = outcomes_of(result)
    assert outcomes[f"{CRM}::backup::backup[verify]"] == "PASSED"
    assert outcomes[f"{CRM}::20250328000026_remove_all_denormalized_fields::apply"] == "FAILED"
    assert outcomes[f"{CRM}::20250328000027_add_performance_indexes::apply"] == "SKIPPED"
    result.stdout.fnmatch_lines(["phase4 point of no return: needs this run's verified backup and "
                                 "--phase4-confirm-destructive or 'yes' at a terminal prompt; without a terminal the "
                                 "run stops there"])
    result.stdout.fnmatch_lines([
        f"stopped at the point of no return: {DESTRUCTIVE} is destructive (Remove All Denormalized Fields) and "
        "was not confirmed; verify the backup, then rerun with --phase4-confirm-destructive"])
    result.stdout.fnmatch_lines([f"blocked * {DESTRUCTIVE} * point of no return: was not confirmed*",
                                 f"blocked * {INDEXES} * blocked at the point of no return ({DESTRUCTIVE})"])
    assert "customer_name" in p.columns("sales")
    assert p.query("SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'idx_%'") == [(0,)]
    assert p.query("SELECT count(*) FROM pytest_phase4.ledger") == [(6,)]


def test_truncated_dump_is_caught_before_the_point_of_no_return(project: Callable[..., Project]) -> None:
    p = project("mini", "safe")
    p.pytester.makepyfile(**{"checks/test_damage.py": """
        import pytest

        @pytest.mark.phase4_after("backup")
        def test_disk_trouble(phase4_run):
            dump = phase4_run.safety.folder / "full.dump"
            dump.write_bytes(dump.read_bytes()[:-200])
    """})
    result = p.run("-v", "--phase4-confirm-destructive", seed=True)
    outcomes = outcomes_of(result)
    assert outcomes[f"{SAFE}::backup::backup[verify]"] == "PASSED"
    assert outcomes[f"{M1}::apply"] == "PASSED"
    assert outcomes[f"{M2}::apply"] == "FAILED"
    result.stdout.fnmatch_lines([
        "stopped at the point of no return: 20250101000002_drop_denormalized.sql is destructive (Remove "
        "denormalized fields) and the backup no longer verifies: expected sha256 * (recorded when the backup was "
        "made), found sha256 *, *,* bytes: the file changed or is truncated (*/full.dump)"])
    assert result.ret == 1
    assert "customer_name" in p.columns("sales")


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_pg_restore_reads_the_whole_archive_not_only_its_table_of_contents(
        project: Callable[..., Project], tmp_path: Path, damage: str) -> None:
    p = project("mini")
    p.run("-m", "preflight", seed=True)
    tools = backup.find_tools(15)
    archive = backup.dump(tools, p.dsn, tmp_path, [])
    assert backup.verify_archive(tools, archive, backup.sha256_of(archive), []) > 5
    data = archive.read_bytes()
    archive.write_bytes(data[:-300] if damage == "truncate" else data[:-300] + bytes(b ^ 0xFF for b in data[-300:]))
    # without the recorded hash, pg_restore's full read still fails where --list alone would pass
    assert subprocess.run([tools.path("pg_restore"), "--list", str(archive)], capture_output=True).returncode == 0
    with pytest.raises(CheckFailed) as info:
        backup.verify_archive(tools, archive, None, [])
    assert info.value.expected == "pg_restore to read every block of the archive"


def test_client_tools_older_than_the_server_are_a_clear_failure() -> None:
    with pytest.raises(CheckFailed) as info:
        backup.find_tools(99)
    assert info.value.expected == "pg_dump and pg_restore of major version >= 99 (the server's)"
    assert re.fullmatch(r"pg_dump 15\.\d+ in \S+(, pg_dump 15\.\d+ in \S+)*", info.value.found)
    assert "postgresql-client-99" in info.value.hint


def test_row_deleted_or_changed_by_a_migration_fails_the_checksum_naming_the_table(
        project: Callable[..., Project]) -> None:
    p = project("mini", "safe")
    migration = p.pytester.path / "checks/migrations/20250101000002_drop_denormalized.sql"
    migration.write_text(migration.read_text() + LOSE_DATA)
    result = p.run("-v", "--phase4-confirm-destructive", seed=True)
    outcomes = outcomes_of(result)
    assert outcomes[f"{SAFE}::post::checksum_unchanged[tickets]"] == "FAILED"
    assert outcomes[f"{SAFE}::post::checksum_unchanged[sales]"] == "FAILED"
    assert outcomes[f"{SAFE}::post::checksum_unchanged[customers]"] == "PASSED"
    assert outcomes[f"{SAFE}::post::row_counts_unchanged[sales]"] == "PASSED"  # a count cannot see an update
    result.stdout.fnmatch_lines([
        "expected: public.tickets: 50 rows, checksum * of (id, customer_id, title) (recorded before migrating)",
        "found:    49 rows (-1), checksum *",
        "where:    public.tickets",
    ])
    result.stdout.fnmatch_lines([
        "expected: public.sales: 100 rows, checksum * of (id, customer_id, value) (recorded before migrating)",
        "found:    100 rows, same count, checksum *",
        "where:    public.sales",
    ])
    assert outcomes[f"{SAFE}::post::row_counts_match[every_table]"] == "FAILED"
    result.stdout.fnmatch_lines([
        "expected: every table's row count as before migrating, plus the plan's deltas (0)",
        "found:    1 table(s) differ",
        "where:    schema public",
        "  table   | before | delta allowed | expected | found",
        "  tickets | 50     | +0            | 50       | 49",
    ])


def test_declared_row_delta_is_allowed(project: Callable[..., Project]) -> None:
    p = project("mini", "safe")
    plan = p.pytester.path / "checks/phase4.toml"
    plan.write_text(plan.read_text().replace('check = "row_counts_match"',
                                             'check = "row_counts_match"\ndeltas = { tickets = -1 }'))
    migration = p.pytester.path / "checks/migrations/20250101000002_drop_denormalized.sql"
    migration.write_text(migration.read_text() + DELETE_TICKET)
    result = p.run("-v", "--phase4-confirm-destructive", seed=True)
    outcomes = outcomes_of(result)
    assert outcomes[f"{SAFE}::post::row_counts_match[every_table]"] == "PASSED"
    assert outcomes[f"{SAFE}::post::checksum_unchanged[tickets]"] == "FAILED"  # a delta does not excuse content
    assert "3 tables, 159 rows: every count as before, with deltas tickets -1" in p.report()


def test_unexpected_catalog_change_is_reported_as_a_table(project: Callable[..., Project]) -> None:
    p = project("mini", "safe")
    migration = p.pytester.path / "checks/migrations/20250101000003_add_indexes.sql"
    migration.write_text(migration.read_text() + "ALTER TABLE customers ADD COLUMN notes text;\n")
    result = p.run("-v", "--phase4-confirm-destructive", seed=True)
    assert outcomes_of(result)[f"{SAFE}::post::catalog_diff[schema]"] == "FAILED"
    result.stdout.fnmatch_lines([
        "expected: every catalog change to be expected by the plan",
        "found:    1 unexpected change(s) of 5",
        "where:    every schema",
        "  change | kind   | name            | before | after",
        "  added  | column | customers.notes |        | text",
    ])
    report = p.report()
    # grouped by verdict, kind and change; the unexpected groups open, the expected ones folded
    assert ("<details class='phase4-unexpected' open><summary><span class='phase4-bad'>UNEXPECTED</span>: 1 column "
            "added</summary><table class='phase4-catalog-diff'><thead><tr><th>Name</th><th>Before</th><th>After</th>"
            "</tr></thead><tbody><tr><td>customers.notes</td><td></td><td>text</td></tr>") in report
    assert ("<details class='phase4-expected'><summary><span class='phase4-ok'>expected</span>: 1 column removed"
            "</summary><table class='phase4-catalog-diff'><thead><tr><th>Name</th><th>Before</th><th>After</th></tr>"
            "</thead><tbody><tr><td>sales.customer_name</td>") in report
    assert "id='phase4-backup'>pytest-phase4 backup" in report


def test_partial_rollback_restores_every_dropped_column(project: Callable[..., Project]) -> None:
    p = project("crm")
    assert p.run("-m", "preflight", seed=True).ret == 0
    dropped = _denormalized(p)
    assert len(dropped) == 45
    values = {(t, c): _column_digest(p, t, c) for t, c in dropped}
    assert p.run("--phase4-confirm-destructive").ret == 0
    assert "customer_name" not in p.columns("sales")

    result = p.run("-v", "--phase4-rollback")
    assert result.ret == 0, result.stdout.str()
    assert list(outcomes_of(result).values()) == ["PASSED"] * 11
    result.stdout.fnmatch_lines(["restore_dropped  * public.sales: re-added customer_name*; * row(s) refilled from "
                                 "the backup by (id), 0 inserted since the backup have no value (NULL)*",
                                 "prove_values     values equal the backup's, by checksum: *"])
    assert {(t, c): _column_digest(p, t, c) for t, c in dropped} == values
    assert p.query("SELECT count(*) FROM pg_views WHERE schemaname = 'public'") == [(0,)]  # the plan's views went


def _denormalized(p: Project) -> list[tuple[str, str]]:
    plan = (p.path / "checks/phase4.toml").read_text()
    block = plan.split('check = "column_absent"', 1)[1].split("column_present", 1)[0]
    return [tuple(c.split(".")) for c in re.findall(r'"(\w+\.\w+)"', block)]  # type: ignore[misc]


def _scalar(p: Project, query: sql.Composable) -> object:
    with psycopg.connect(p.dsn, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def _column_digest(p: Project, table: str, column: str) -> str:
    """Every value of the column, keyed by id, as one digest."""
    return str(_scalar(p, sql.SQL("SELECT md5(string_agg(id::text || ':' || coalesce({}::text, '~'), ',' ORDER BY id))"
                                  " FROM {}").format(sql.Identifier(column), sql.Identifier("public", table))))


def test_failed_rehearsal_leaves_the_target_untouched(project: Callable[..., Project]) -> None:
    p = project("mini", "safe")
    p.pytester.path.joinpath("checks/migrations/20250101000003_add_indexes.sql").write_text(
        "CREATE INDEX idx_sales_customer ON sales (customer_idd);\n")
    assert p.run("-m", "preflight", seed=True).ret == 0
    result = p.run("-v", "--phase4-rehearse", "--phase4-confirm-destructive")
    assert result.ret == 1
    outcomes = outcomes_of(result)
    assert outcomes[f"{SAFE}::backup::rehearse"] == "FAILED"
    assert outcomes[f"{M1}::apply"] == "SKIPPED"
    result.stdout.fnmatch_lines([
        "expected: the whole plan green on a scratch copy restored from the backup",
        "found:    exit 1: *failed*",
        "where:    scratch database scratch_*_phase4_rehearsal",
        "  FAILED checks/phase4.toml::20250101000003_add_indexes::apply*",
    ])
    assert "customer_name" in p.columns("sales")
    assert p.query("SELECT count(*) FROM pg_views WHERE schemaname = 'public'") == [(0,)]
    assert p.query("SELECT to_regclass('pytest_phase4.ledger')") == [(None,)]
    assert p.query("SELECT count(*) FROM pg_database WHERE datname LIKE '%rehearsal'") == [(0,)]


def test_green_rehearsal_then_migrates_the_target(project: Callable[..., Project]) -> None:
    p = project("mini", "safe")
    result = p.run("-v", "--phase4-rehearse", "--phase4-confirm-destructive", seed=True)
    assert result.ret == 0
    assert outcomes_of(result)[f"{SAFE}::backup::rehearse"] == "PASSED"
    result.stdout.fnmatch_lines(["*rehearse PASSED*"])
    assert "customer_name" not in p.columns("sales")


@pytest.mark.parametrize(("answer", "ret"), [("yes", 0), ("no", 1)])
def test_prompt_on_a_terminal_decides_the_point_of_no_return(project: Callable[..., Project], answer: str,
                                                              ret: int) -> None:
    p = project("mini", "safe")
    assert p.run("-m", "preflight", seed=True).ret == 0
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "--phase4", "-p", "no:cacheprovider", "-v",
                             f"--dsn={p.dsn}"], cwd=p.path, stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True)
    os.close(slave)
    seen = _read_until(master, b"Run it now? [yes/no] ")
    assert b"20250101000002_drop_denormalized.sql is destructive (Remove denormalized fields); backup " in seen
    os.write(master, f"{answer}\n".encode())
    seen += _read_until(master, None)
    assert proc.wait(timeout=60) == ret
    os.close(master)
    assert ("customer_name" in p.columns("sales")) == (answer == "no")
    (gate,) = json.loads(sorted((p.path / "reports").glob("*.json"))[-1].read_text())["point_of_no_return"]
    if answer == "no":
        assert b"and the confirmation prompt was answered no" in seen
        assert (gate["status"], gate["confirmed_by"]) == ("blocked", None)
    else:  # the evidence says how it was passed, and by whom
        assert (gate["confirmed_by"], gate["os_user"]) == ("'yes' at the prompt", getpass.getuser())


def _read_until(fd: int, marker: bytes | None, timeout: float = 60) -> bytes:
    """Terminal output until `marker` (or the end); fails instead of hanging."""
    data = b""
    deadline = time.monotonic() + timeout
    while marker is None or marker not in data:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no {marker!r} within {timeout} s; got: {data[-2000:]!r}"
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        if not chunk:
            assert marker is None, f"ended before {marker!r}: {data[-2000:]!r}"
            return data
        data += chunk
    return data


def test_rollback_drops_every_kind_of_object_the_run_created(project: Callable[..., Project]) -> None:
    p = project("mini", "safe")
    migration = p.pytester.path / "checks/migrations/20250101000001_create_views.sql"
    migration.write_text(migration.read_text() + EXTRA_OBJECTS)
    assert p.run("-m", "preflight", seed=True).ret == 0
    before = outside_fingerprint(p)
    result = p.run("-v", "--phase4-confirm-destructive")
    assert outcomes_of(result)[f"{SAFE}::post::catalog_diff[schema]"] == "FAILED"
    result.stdout.fnmatch_lines(["found:    10 unexpected change(s) of 14", "*",
                                 "  added  | function          | sale_total()     |        | security invoker",
                                 "  added  | index             | audit_pkey       |        | CREATE UNIQUE INDEX *",
                                 "  added  | materialized view | sales_summary    |        | SELECT sales.*",
                                 "  added  | sequence          | audit_id_seq     |        | bigint",
                                 "  added  | sequence          | invoice_no       |        | bigint",
                                 "  added  | table             | audit            |        | row level security off",
                                 "  added  | column            | audit.id         |        | bigint not null gen*",
                                 "  added  | column            | audit.state      |        | public.ticket_state",
                                 "  added  | constraint        | audit.audit_pkey |        | PRIMARY KEY (id)",
                                 "  added  | type              | ticket_state     |        | enum open, closed"])

    result = p.run("-v", "--phase4-rollback")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["drop_created     dropped 8 object(s) the plan created, none reaching anything else: "
                                 "index public.idx_sales_customer, index public.idx_tickets_customer, materialized "
                                 "view public.sales_summary, view public.sales_with_details, table public.audit, "
                                 "sequence public.invoice_no, function public.sale_total(), type public.ticket_state"])
    # a revert re-adds sales.customer_name last: the same schema, one column in another place
    assert _unordered(outside_fingerprint(p)) == _unordered(before)


def _unordered(found: tuple[list[str], list[tuple[str, int]]]) -> tuple[list[str], list[tuple[str, int]]]:
    return sorted(line.rstrip(",") for line in found[0]), found[1]


def test_client_tools_get_the_password_in_their_environment_only() -> None:
    with backup.client_args(f"postgresql://me:{SECRET}@db.example:5433/crm") as (conninfo, env):
        assert SECRET not in conninfo
        assert "host=db.example" in conninfo
        assert "dbname=crm" in conninfo
        assert env["PGPASSWORD"] == SECRET
        assert "PGSERVICEFILE" not in env or env["PGSERVICEFILE"] == os.environ.get("PGSERVICEFILE")


def test_client_tools_get_the_ssl_key_passphrase_in_a_private_service_file_only() -> None:
    """libpq has no variable for sslpassword: a service file of the run's own (0600), gone afterwards."""
    with backup.client_args(f"host=db.example dbname=crm sslpassword={SECRET} password=pw") as (conninfo, env):
        assert SECRET not in conninfo
        assert "service=phase4" in conninfo
        service = Path(env["PGSERVICEFILE"])
        assert service.read_text() == f"[phase4]\nsslpassword={SECRET}\n"
        assert service.stat().st_mode & 0o777 == 0o600
        assert env["PGPASSWORD"] == "pw"
    assert not service.exists()
    assert SECRET not in backup.command_line_conninfo(f"host=db.example sslpassword={SECRET}")


def test_compare_names_every_difference() -> None:
    before = snapshot.Snapshot("public", {"a": 3, "b": 1}, {"a": snapshot.Checksum(("id",), 3, "12")},
                               {"table a": "rls off", "column a.x": "text", "view v": "SELECT 1"})
    after = snapshot.Snapshot("public", {"a": 3}, {"a": snapshot.Checksum(("id",), 3, "13")},
                              {"table a": "rls on", "view v": "SELECT 1", "index i": "CREATE INDEX i"})
    assert compare(before, after) == [
        "checksum of public.a: expected 12, found 13",
        "rows of public.b: expected 1, found no such table",
        "change  | kind   | name | before  | after",
        "removed | column | a.x  | text    |",
        "added   | index  | i    |         | CREATE INDEX i",
        "changed | table  | a    | rls off | rls on",
    ]


def test_no_migration_runs_without_this_runs_backup_even_when_confirmed(project: Callable[..., Project]) -> None:
    p = project("mini", "safe")
    result = p.run("-v", "-m", "not backup", "--phase4-confirm-destructive", seed=True)
    assert result.ret == 1
    outcomes = outcomes_of(result)
    assert outcomes[f"{M1}::apply"] == "FAILED"
    assert outcomes[f"{M2}::apply"] == "SKIPPED"
    result.stdout.fnmatch_lines([
        "refusing to apply 20250101000001_create_views.sql: every step before it must pass in this run, and backup "
        "did not: 6 of its 6 test(s) were deselected by -m 'not backup' (backup[[]dump[]], backup[[]schema[]], ...); "
        "run the whole plan, deselecting no step before the last migration you mean to apply (-m preflight alone "
        "checks without migrating)"])
    assert p.query("SELECT to_regclass('public.sales_with_details'), to_regclass('pytest_phase4.ledger')") == [
        (None, None)]


def test_mode_options_that_cannot_work_are_usage_errors(project: Callable[..., Project]) -> None:
    p = project("mini")  # a plan without [[backup]]
    result = p.run("--phase4-rehearse", seed=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --phase4-rehearse restores this run's backup, but phase4.toml has no "
                                 '[[][[]backup[]][]] entry: add one with check = "backup"'])
    result = p.run("--phase4-rehearse", "--phase4-rollback")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --phase4-rollback and --phase4-rehearse are separate modes: give one of "
                                 "them"])
    assert "customer_name" in p.columns("sales")


def test_rollback_never_restores_another_databases_backup(project: Callable[..., Project],
                                                          pg_server: EmbeddedPostgres) -> None:
    p = project("mini", "safe")
    assert p.run("--phase4-confirm-destructive", seed=True).ret == 0  # database A: backed up and migrated
    other = pg_server.create_database("other_db")  # database B, same plan, same backup folder, never backed up
    a_dsn, p.dsn = p.dsn, other
    try:
        assert p.run("-m", "preflight", seed=True).ret == 0
        p.execute("CREATE TABLE precious (x int); INSERT INTO precious VALUES (42)")
        for args in (["--phase4-rollback"], ["--phase4-rollback=restore", "--phase4-accept-loss"],
                     [f"--phase4-backup-dir={backup_folder(p)}", "--phase4-rollback"]):
            result = p.run("-v", *args)
            assert result.ret == 1, result.stdout.str()
            result.stdout.fnmatch_lines(["expected: a backup of this database (database other_db (oid *)*",
                                         "found:    *database scratch_* (oid *)*"])
            assert p.query("SELECT x FROM precious") == [(42,)]
            assert "customer_name" in p.columns("sales")
    finally:
        p.dsn = a_dsn
        pg_server.drop_database("other_db")
