"""Apply one migration file in its own transaction, with its ledger row, or nothing at all."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from pytest_phase4 import ledger, sqltext
from pytest_phase4.errors import MigrationFailed
from pytest_phase4.plan import Migration


@dataclass(frozen=True)
class Applied:
    file: str
    sha256: str
    duration_ms: float


def file_sha256(migration: Migration) -> str:
    return hashlib.sha256(migration.path.read_bytes()).hexdigest()


def apply(conn: psycopg.Connection[Any], migration: Migration, plan_name: str) -> Applied:
    """Run the whole file and record it in the ledger in one transaction; raise MigrationFailed on error."""
    raw = migration.path.read_bytes()
    text = raw.decode("utf-8")
    sha = hashlib.sha256(raw).hexdigest()
    if stmt := sqltext.transaction_control(text):
        raise MigrationFailed(
            migration.file, stmt.line, None,
            f"the file controls transactions itself ({stmt.code.split()[0].upper()}); pytest-phase4 runs each "
            "migration in its own transaction: remove BEGIN/COMMIT/ROLLBACK from the file", statement=stmt.code)
    started = time.perf_counter()
    try:
        with conn.transaction():
            conn.execute(text.encode())  # one simple-protocol query, no parameters: '%' stays literal
            if conn.info.transaction_status != TransactionStatus.INTRANS:
                raise MigrationFailed(migration.file, None, None, "the file ended the transaction itself")
            duration = (time.perf_counter() - started) * 1000
            ledger.record(conn, migration.file, sha, plan_name, duration)
    except psycopg.Error as exc:
        raise _translate(conn, migration, text, exc) from None
    return Applied(migration.file, sha, duration)


def _translate(conn: psycopg.Connection[Any], migration: Migration, text: str, exc: psycopg.Error) -> MigrationFailed:
    diag = exc.diag
    line: int | None = None
    statement = ""
    if diag.statement_position:
        line = sqltext.line_of(text, int(diag.statement_position))
        statement = next((s.code for s in reversed(sqltext.split(text)) if s.line <= line), "")
    elif not conn.closed:
        line, statement = _locate(conn, text, exc.sqlstate)
    return MigrationFailed(migration.file, line, exc.sqlstate, diag.message_primary or str(exc),
                           detail=diag.message_detail or diag.message_hint or "", statement=statement)


def _locate(conn: psycopg.Connection[Any], text: str, sqlstate: str | None) -> tuple[int | None, str]:
    """The server gave no position: replay the statements one by one in a transaction that is always rolled
    back, and report the first one that fails the same way."""
    statements = sqltext.split(text)
    if len(statements) < 2:
        return (statements[0].line, statements[0].code) if statements else (None, "")
    try:
        with conn.transaction(force_rollback=True):
            for stmt in statements:
                try:
                    conn.execute(stmt.text.encode())
                except psycopg.Error as exc:
                    return (stmt.line, stmt.code) if exc.sqlstate == sqlstate else (None, "")
    except psycopg.Error:
        pass
    return None, ""
