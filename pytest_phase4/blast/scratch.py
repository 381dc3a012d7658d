"""A scratch copy of the target's schema, without its data: where the blast radius applies the pending migrations
and asks its questions (no pytest here).

`pg_dump --schema-only` (ACCESS SHARE locks for the length of the dump, as any SELECT; `--lock-wait-timeout` so
it never queues behind another session's lock) restored with `pg_restore --no-owner --no-privileges` into a new
database on a throwaway server started here (the local binaries of the target's major version, else a container),
where the target's role names are created first so that policies naming them restore. Not on the target's server:
what the migrations call on the copy (a function's body, a trigger they fire, a DO block's EXECUTE) runs for real
where the copy is, and no static reading of the migrations sees it. Only when asked (TARGET: --phase4-blast-copy=
target) is the copy a database of this run's own on the target's server (scratchdb.py), which needs CREATEDB, saying
what that risks. User mappings are left out, so that no foreign table of the copy reaches a remote server, and so
is any extension the copy's server lacks or the role may not create there. Nothing is written to the target. The
copy is dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pytest_phase4.db import dsn as dsnlib
from pytest_phase4.db import scratchdb
from pytest_phase4.db.embedded import EmbeddedPostgres, EmbeddedUnavailable, bindir_for, start_embedded
from pytest_phase4.db.target import Target
from pytest_phase4.errors import Phase4Error
from pytest_phase4.safety import backup

TOOL_TIMEOUT_S = 600
THROWAWAY, TARGET = "throwaway", "target"  # where the copy goes (--phase4-blast-copy)
RISK = ("the copy is on the target's server (--phase4-blast-copy=target): what the migrations call there runs for "
        "real on that server as the run's role (a function's body, a trigger they fire, a DO block's EXECUTE, "
        "dblink): review it, or leave the option out for a throwaway server")
PURPOSE = "blast"  # the scratch database is <db>_<token>_phase4_blast
# Entries a schema copy does not need to answer questions about code and queries, and that a database owner
# who is not a superuser cannot create (Supabase's event triggers, publications, comments on extensions).
# User mappings are left out so that no foreign table of the copy reaches a remote server (a migration's DELETE of
# a postgres_fdw table would empty the real one).
_LEFT_OUT = ("EVENT TRIGGER ", "PUBLICATION ", "PUBLICATION TABLE ", "PUBLICATION TABLES IN SCHEMA ",
             "SUBSCRIPTION ", "COMMENT - EXTENSION ", "SECURITY LABEL ", "USER MAPPING ")
# Each extension of the dump: whether the copy's role may create it there (trusted, or a superuser).
_EXTENSIONS = b"""
SELECT a.name, coalesce(bool_or(v.trusted), false)
       OR (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
FROM pg_catalog.pg_available_extensions a LEFT JOIN pg_catalog.pg_available_extension_versions v ON v.name = a.name
GROUP BY a.name
"""
_EXTENSION_OBJECTS = b"""
SELECT n.nspname, coalesce(c.relname, p.proname)
FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
LEFT JOIN pg_catalog.pg_class c ON d.classid = 'pg_catalog.pg_class'::regclass AND c.oid = d.objid
LEFT JOIN pg_catalog.pg_proc p ON d.classid = 'pg_catalog.pg_proc'::regclass AND p.oid = d.objid
JOIN pg_catalog.pg_namespace n ON n.oid = coalesce(c.relnamespace, p.pronamespace)
WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e' AND e.extname = ANY (%s)
"""
_ENTRY = re.compile(r"^\d+; \d+ \d+ (.*)$")


class ScratchError(Phase4Error):
    """No scratch copy could be made; the message says what failed and how to fix it."""

    def __init__(self, message: str, hint: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message, self.hint, self.details = message, hint, details or []


@dataclass(frozen=True)
class Copy:
    dsn: str
    where: str  # "scratch database x on the target's server" or "... on a throwaway server (local)"
    notes: tuple[str, ...] = ()  # what of the target's schema the copy leaves out, and why
    extensions: tuple[str, ...] = ()  # the target's extensions the copy leaves out


def _tool(args: list[str], env: dict[str, str], secrets: list[str], what: str) -> str:
    try:
        proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False, timeout=TOOL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ScratchError(f"{what}: {Path(args[0]).name} ran longer than {TOOL_TIMEOUT_S} s",
                           "find what blocks it in pg_stat_activity") from None
    if proc.returncode != 0:
        lines = dsnlib.scrub((proc.stderr or proc.stdout).strip(), secrets).splitlines()
        raise ScratchError(f"{what}: {Path(args[0]).name} exited with {proc.returncode}"
                           + (f": {lines[-1]}" if lines else ""), "", lines[-12:])
    return proc.stdout


def dump_schema(tools: backup.Tools, target: Target, folder: Path,
                lock_timeout: str) -> tuple[Path, list[str], list[str]]:
    """The schema-only archive, its entries but those a copy leaves out (_LEFT_OUT), and what to say of them."""
    archive = folder / "schema.dump"
    try:
        with backup.client_args(target.dsn) as (conninfo, env):
            _tool([tools.path("pg_dump"), "--schema-only", "--format=custom", "--compress=0", "--no-sync",
                   f"--lock-wait-timeout={lock_timeout}", f"--file={archive}", f"--dbname={conninfo}"], env,
                  target.secrets, "a schema-only dump of the target")
    except ScratchError as exc:
        hint = ("another session holds a lock on a table (pg_stat_activity says which); wait or end it"
                if "lock" in exc.message.lower() else "")
        raise ScratchError(exc.message, hint or exc.hint, exc.details) from None
    listing = _tool([tools.path("pg_restore"), "--list", str(archive)], dict(os.environ), target.secrets,
                    "the entries of the schema dump")
    keep = [line for line in listing.splitlines()
            if not ((m := _ENTRY.match(line)) and m.group(1).startswith(_LEFT_OUT))]
    mappings = sum(1 for line in listing.splitlines() if (m := _ENTRY.match(line)) and
                   m.group(1).startswith("USER MAPPING "))
    notes = [f"{mappings} user mapping(s) left out of the copy: its foreign tables reach no remote server, so a "
             "statement that reads or writes one fails there"] if mappings else []
    return archive, keep, notes


def _creatable(entries: list[str], dsn: str) -> tuple[list[str], list[str], list[str]]:
    """The entries without the extensions this role cannot create in the copy (not trusted and no superuser, or
    not installed on that server), a note for each one left out, and their names."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        available = {str(r[0]): bool(r[1]) for r in conn.execute(_EXTENSIONS)}
    keep, notes, names = [], [], []
    for line in entries:
        if (m := _ENTRY.match(line)) and m.group(1).startswith("EXTENSION - "):
            name = m.group(1).split()[2]
            why = ("not installed on the copy's server" if name not in available else
                   "not a trusted extension: only a superuser may create it" if not available[name] else "")
            if why:
                notes.append(f"extension {name} left out of the copy ({why}): what uses it is checked without it")
                names.append(name)
                continue
        keep.append(line)
    return keep, notes, names


def extension_objects(conn: psycopg.Connection[Any], extensions: tuple[str, ...]) -> set[str]:
    """The relations and functions of these extensions on the target, as `name` and `schema.name`."""
    if not extensions:
        return set()
    rows = conn.execute(_EXTENSION_OBJECTS, (list(extensions),)).fetchall()
    return {str(r[1]) for r in rows} | {f"{r[0]}.{r[1]}" for r in rows}


@contextlib.contextmanager
def schema_copy(target: Target, tools: backup.Tools, dbname: str, lock_timeout: str, place: str = THROWAWAY,
                major: int = 0) -> Iterator[Copy]:
    """The target's schema restored into a new database of this run's own, dropped on leaving (even on SIGTERM):
    on a throwaway server of the target's major version `major`, or on the target's server if `place` is TARGET."""
    with scratchdb.terminate_as_interrupt(), tempfile.TemporaryDirectory(prefix="phase4-blast-") as tmp:
        archive, listed, left_out = dump_schema(tools, target, Path(tmp), lock_timeout)
        with _database(target, dbname, tools, place, major or tools.major) as (dsn, where, hidden, risks):
            keep, notes, extensions = _creatable(listed, dsn)
            entries = Path(tmp) / "schema.list"
            entries.write_text("\n".join(keep) + "\n")
            with backup.client_args(dsn) as (conninfo, env):
                _tool([tools.path("pg_restore"), "--no-owner", "--no-privileges", "--single-transaction",
                       "--exit-on-error", f"--use-list={entries}", f"--dbname={conninfo}", str(archive)], env,
                      hidden, f"the target's schema restored into {where}")
            yield Copy(dsn, where, (*risks, *left_out, *notes), tuple(extensions))


@contextlib.contextmanager
def _database(target: Target, dbname: str, tools: backup.Tools, place: str,
              major: int) -> Iterator[tuple[str, str, list[str], list[str]]]:
    """(dsn, where, secrets to scrub, what the place risks) of a new empty database for the copy."""
    if place == TARGET:
        try:
            made = scratchdb.create(target.dsn, dbname, PURPOSE)
        # No CREATEDB; or a hot standby, or a role made read-only (default_transaction_read_only): a throwaway
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction) as exc:
            refused = f"on the target's server, {target.scrub(exc.diag.message_primary or str(exc))}"
        else:
            try:
                yield made.dsn, f"scratch database {made.name} on the target's server", target.secrets, [RISK]
            finally:
                with contextlib.suppress(psycopg.Error):
                    scratchdb.drop(target.dsn, made)
            return
    else:
        refused = ""
    with _throwaway(target, tools, refused, major) as (server, notes):
        name = scratchdb.name_for(dbname, PURPOSE, secrets.token_hex(4))
        yield (server.create_database(name), f"scratch database {name} on a throwaway server ({server.kind})", [],
               notes)


@contextlib.contextmanager
def _throwaway(target: Target, tools: backup.Tools, refused: str,
               major: int) -> Iterator[tuple[EmbeddedPostgres, list[str]]]:
    if refused:  # --phase4-blast-copy=target, and the target's server refused the database
        head = f"no database for a scratch copy of the schema: {refused}; "
        fix = (f"grant the role CREATEDB (ALTER ROLE {_current_role(target)} CREATEDB) so that the copy is made on "
               f"the target's server, or install the PostgreSQL {major} server binaries (initdb, pg_ctl) here for a "
               "throwaway one")
    else:
        head = "no throwaway server for a scratch copy of the schema: "
        fix = (f"install the PostgreSQL {major} server binaries here (initdb, pg_ctl: apt-get install "
               f"postgresql-{major}) or start a Docker engine; or copy the schema to the target's server with "
               "--phase4-blast-copy=target (needs CREATEDB), where what the migrations call (a function's body, a "
               "trigger, a DO block's EXECUTE) runs for real")
    try:
        server = start_embedded(bindir=bindir_for(major), image=f"postgres:{major}-alpine", isolated=True)
    except EmbeddedUnavailable as exc:
        raise ScratchError(head + "none could be started", fix,
                           [f"{kind}: {why.splitlines()[0]}" for kind, why in exc.reasons.items()]) from None
    try:
        found = int(str(server.server_version or "0").split(".")[0])
        if found < major:
            raise ScratchError(head + f"the throwaway server is PostgreSQL {found}, older than the target's {major}",
                               fix)
        notes = [f"the throwaway server is PostgreSQL {found}, the target {major}: a migration may behave "
                 f"differently there (install the PostgreSQL {major} server binaries for the same version)"
                 ] if found > major else []
        if server.kind == "container":
            notes.append("the throwaway server is a container, whose sessions may connect to other servers: code "
                         "the migrations call that connects out with a connection string (dblink) reaches it")
        _copy_roles(target, server)
        yield server, notes
    finally:
        server.stop()


def _current_role(target: Target) -> str:
    with target.connect(read_only=True, autocommit=True) as conn:
        return str(conn.execute("SELECT current_user").fetchone()[0])  # type: ignore[index]


def _copy_roles(target: Target, server: EmbeddedPostgres) -> None:
    """The target's role names, as NOLOGIN roles: policies and SET ROLE in the dump name them."""
    with target.connect(read_only=True, autocommit=True) as conn:
        names = [str(r[0]) for r in conn.execute("SELECT rolname FROM pg_catalog.pg_roles WHERE rolname !~ '^pg_'")]
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        present = {str(r[0]) for r in conn.execute("SELECT rolname FROM pg_catalog.pg_roles")}
        for role in names:
            if role not in present:
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))


def connect(copy: Copy, search_path: str, statement_timeout: str) -> psycopg.Connection[Any]:
    """An autocommit session on the copy, with the target's search_path and the checks' timeout."""
    conn = psycopg.connect(copy.dsn, autocommit=True)
    conn.execute("SELECT pg_catalog.set_config('statement_timeout', %s, false)", (statement_timeout,))
    conn.execute("SELECT pg_catalog.set_config('search_path', %s, false)", (search_path,))
    return conn
