"""Scratch databases on the target's server: created under a name no one else uses, closed to every other role, and
dropped only when they are the one this run created (no pytest here).

A fixed name such as `<db>_phase4_blast` may be a real database (someone's, or a longer name the 63-byte limit
truncates onto), and two runs on one server would share it: so each scratch database gets a random token in its
name, is created without dropping anything first (a name in use is never taken over), carries a comment with that
token (how leftovers are found), and is dropped only while its name still belongs to the oid it was created with: a
comment can be changed by what runs in it (COMMENT ON DATABASE in a migration), an oid cannot. A new database lets
PUBLIC connect: that is revoked at once, so what is restored there (every object owned by the run's role) is
reachable by no other role. SIGTERM (a cancelled CI job) is turned into KeyboardInterrupt while one exists, so it
is dropped as on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

MARK = "pytest-phase4 scratch database "  # + the token: its comment
MAX_NAME = 63  # NAMEDATALEN - 1, in bytes
# pg_stat_statements is the server's, with room for pg_stat_statements.max entries: what is done in and to a
# scratch database must not push the application's queries out (a superuser's setting; others cannot, and leave it).
_UNTRACKED = "SET pg_stat_statements.track = 'none'"


@dataclass(frozen=True)
class Scratch:
    name: str
    dsn: str
    mark: str
    oid: int = 0  # pg_database.oid when created: what a drop checks


def name_for(dbname: str, purpose: str, token: str) -> str:
    """`<db>_<token>_phase4_<purpose>`, the database's part shortened (by bytes, whole characters) to fit."""
    suffix = f"_{token}_phase4_{purpose}"
    head = dbname.encode()[:MAX_NAME - len(suffix.encode())].decode("utf-8", "ignore")
    return head + suffix


def create(dsn: str, dbname: str, purpose: str) -> Scratch:
    """A new, empty database of this run's own, which only the run's role (and superusers) may connect to."""
    with psycopg.connect(dsn, autocommit=True) as conn:  # CREATE DATABASE refuses transactions
        _untracked(conn)
        for _attempt in range(5):
            token = secrets.token_hex(4)
            name = name_for(dbname, purpose, token)
            try:
                conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
            except psycopg.errors.DuplicateDatabase:
                continue  # someone's database, or another run's: never ours to take
            break
        else:
            raise psycopg.errors.DuplicateDatabase(f"no free name for a scratch database like {name}")
        mark = MARK + token
        try:
            oid = int(conn.execute("SELECT oid FROM pg_catalog.pg_database WHERE datname = %s",
                                   (name,)).fetchone()[0])  # type: ignore[index]
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(mark)))
            with contextlib.suppress(psycopg.Error):  # every session of the copy: the restore, the migrations
                conn.execute(sql.SQL("ALTER DATABASE {} " + _UNTRACKED).format(sql.Identifier(name)))
        except BaseException:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))  # just created
            raise
    return Scratch(name, make_conninfo(dsn, dbname=name), mark, oid)


def drop(dsn: str, scratch: Scratch) -> bool:
    """Drop the scratch database if it still is the one create() made (the same name and oid)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        _untracked(conn)
        row = conn.execute("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s AND oid = %s",
                           (scratch.name, scratch.oid)).fetchone()
        if row is None:
            return False
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(scratch.name)))
        return True


def _untracked(conn: psycopg.Connection[Any]) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.execute(_UNTRACKED)


@contextlib.contextmanager
def scratch_database(dsn: str, dbname: str, purpose: str) -> Iterator[Scratch]:
    """create() ... drop(), even on failure, Ctrl-C or SIGTERM."""
    with terminate_as_interrupt():
        made = create(dsn, dbname, purpose)
        try:
            yield made
        finally:
            with contextlib.suppress(psycopg.Error):
                drop(dsn, made)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While inside: SIGTERM raises KeyboardInterrupt, as SIGINT does, so `finally` blocks clean up. Only the main
    thread may set signal handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: Any = signal.getsignal(signal.SIGTERM)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum} (SIGTERM)")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
