"""Apply one migration file: in its own transaction with its ledger row (all or nothing), or, when the plan
says `transaction = false`, in autocommit for what cannot run in a transaction. Either way statement by
statement as PostgreSQL's parser splits the file, as `psql --single-transaction` runs a file: the statement that
fails is known as it fails, so an error names its line without running anything again (a lock wait is waited
once), and an Observer (locks.py) measures what each statement holds."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from pytest_phase4.db import changes, ledger, pgparse, sqltext
from pytest_phase4.db.locks import Observer
from pytest_phase4.errors import MigrationFailed, Phase4Error
from pytest_phase4.plan.model import Migration

# SQLSTATEs for "waited too long": lock_not_available (lock_timeout) and query_canceled (statement_timeout).
_WAITED = {"55P03", "57014"}


@dataclass(frozen=True)
class Applied:
    file: str
    sha256: str
    duration_ms: float


Blockers = Callable[[], list[str]]  # who blocked the migration last, as readable lines
Connect = Callable[[], psycopg.Connection[Any]]  # a new session on the target, when the migration's was lost


def file_sha256(migration: Migration) -> str:
    return hashlib.sha256(migration.path.read_bytes()).hexdigest()


def apply(conn: psycopg.Connection[Any], migration: Migration, plan_name: str, schema: str,
          blockers: Blockers = list, observer: Observer | None = None, connect: Connect | None = None,
          record: bool = True, skip: frozenset[int] = frozenset(), expected_sha256: str | None = None) -> Applied:
    """Run the file and record it in the ledger; raise MigrationFailed saying what was and was not applied.
    The observer, when given, weighs the file's hazards first and sees every statement (and may refuse).
    `connect` records what a transaction = false file committed when its own session was lost.
    `record=False` (a copy of the schema, blast.py): no ledger row and no record of the changes for a rollback;
    there, `skip` names the statements (by their offset in the file) that must not run on the copy.
    `expected_sha256` (the evidence the run relied on): the bytes read now must be those, or nothing runs."""
    raw = migration.path.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    if expected_sha256 is not None and sha != expected_sha256:
        raise MigrationFailed(migration.file, None, None, f"the file changed since the run checked it against the "
                              f"evidence it relies on (sha256 {expected_sha256[:12]} then, {sha[:12]} now): nothing "
                              "was applied; find out who changed it, then start the run again")
    text = raw.decode("utf-8")
    try:
        statements = sqltext.split(text, migration.file)
    except sqltext.SqlSyntaxError as exc:
        raise MigrationFailed(migration.file, exc.line, None, f"{exc.message} (PostgreSQL's parser): the server "
                              "would reject the file; nothing was run") from None
    if not statements:  # the ledger would record it, and its real content could never follow
        raise MigrationFailed(migration.file, None, None, "the file holds no SQL statement (empty, or only "
                              "comments): nothing was applied and nothing recorded; put the migration's SQL in it")
    if stmt := sqltext.transaction_control(statements):
        raise MigrationFailed(
            migration.file, stmt.line, None,
            f"the file controls transactions itself ({stmt.code.split()[0].upper()}); pytest-phase4 runs each "
            "migration in its own transaction: remove BEGIN/COMMIT/ROLLBACK from the file", statement=stmt.code)
    if skip and not record:
        statements = [s for s in statements if s.start not in skip]
        if not statements:
            return Applied(migration.file, sha, 0.0)
    watch = observer or Observer(migration, measure=False)
    started = time.perf_counter()
    try:
        if migration.transaction:
            _in_transaction(conn, migration, statements, text, sha, plan_name, started, watch, record)
        else:
            _statement_by_statement(conn, migration, statements, text, sha, plan_name, schema, started, watch,
                                    connect, record)
    except _StatementError as failed:
        watch.end(committed=False)
        failure = _translate(conn, migration, text, failed.error, failed.statement)
        if failed.error.sqlstate in _WAITED:
            failure.blockers = blockers()
        raise failure from None
    except psycopg.Error as exc:  # outside the file's statements: the measurement, the ledger row
        watch.end(committed=False)
        failure = _translate(conn, migration, text, exc)
        if exc.sqlstate in _WAITED:
            failure.blockers = blockers()
        raise failure from None
    except MigrationFailed as failure:
        watch.end(committed=False)
        if failure.sqlstate in _WAITED and not failure.blockers:
            failure.blockers = blockers()
        raise
    except BaseException:
        watch.end(committed=False)
        raise
    watch.end(committed=True)
    return Applied(migration.file, sha, (time.perf_counter() - started) * 1000)


class _StatementError(Exception):
    """A statement of the file failed: the server's error, and which statement it was."""

    def __init__(self, statement: sqltext.Statement, error: psycopg.Error) -> None:
        super().__init__(str(error))
        self.statement, self.error = statement, error


def _execute(conn: psycopg.Connection[Any], stmt: sqltext.Statement, watch: Observer) -> None:
    started = time.perf_counter()
    try:
        conn.execute(stmt.text.encode())  # simple protocol, no parameters: '%' stays literal
    except psycopg.Error as exc:
        raise _StatementError(stmt, exc) from exc
    watch.after(conn, stmt, started)


def _in_transaction(conn: psycopg.Connection[Any], m: Migration, statements: list[sqltext.Statement], text: str,
                    sha: str, plan: str, started: float, watch: Observer, record: bool = True) -> None:
    with conn.transaction():
        if m.statement_timeout:
            conn.execute("SELECT pg_catalog.set_config('statement_timeout', %s, true)", (m.statement_timeout,))
        seen = changes.before(conn) if record else None  # the catalog before: what the rollback reverts
        watch.begin(conn, statements)
        for stmt in statements:
            _execute(conn, stmt, watch)
            if conn.info.transaction_status != TransactionStatus.INTRANS:
                raise MigrationFailed(m.file, stmt.line, None, "the file ended the transaction itself",
                                      statement=stmt.code)
        if seen is None:
            return
        ledger.record(conn, m.file, sha, plan, (time.perf_counter() - started) * 1000)
        changes.store(conn, m.file, seen)
        ledger.sync_supabase(conn, m.file, text)


def _statement_by_statement(conn: psycopg.Connection[Any], m: Migration, statements: list[sqltext.Statement],
                            text: str, sha: str, plan: str, schema: str, started: float, watch: Observer,
                            connect: Connect | None, record: bool = True) -> None:
    """Each statement commits as it ends: whatever fails (a statement, the connection, the ledger row, Ctrl-C),
    what the committed ones did stays applied. Each runs in a transaction of its own with the record of what it
    did (changes.store), so what another session does meanwhile is never taken for the migration's; one that
    refuses a transaction block (CREATE INDEX CONCURRENTLY, VACUUM, a CALL that commits) runs on its own and is
    recorded by the objects it names. The failure says how many stay committed; nothing done to clean up may
    take the place of the real error."""
    conn.autocommit = True
    done = 0
    bare: tuple[changes.Seen, sqltext.Statement] | None = None  # a statement running outside our transactions
    try:
        if m.statement_timeout:
            conn.execute("SELECT pg_catalog.set_config('statement_timeout', %s, false)", (m.statement_timeout,))
        watch.begin(conn, statements)
        for stmt in statements:
            if not record:  # a copy of the schema (blast.py): nothing recorded
                _execute(conn, stmt, watch)
                done += 1
                continue
            try:
                with conn.transaction():
                    seen = changes.before(conn)
                    _execute(conn, stmt, watch)
                    changes.store(conn, m.file, seen, part=True)
            except _StatementError as failed:
                if failed.error.sqlstate not in _NO_BLOCK:
                    raise
                bare = (changes.before(conn), stmt)
                _execute(conn, stmt, watch)
                with conn.transaction():
                    changes.store_bare(conn, m.file, bare[0], pgparse.names_in(stmt.node),
                                       pgparse.may_write_rows(stmt.node))
                bare = None
            done += 1
        if invalid := invalid_indexes(conn, schema):
            raise MigrationFailed(m.file, None, None, f"left INVALID index(es) behind: {', '.join(invalid)}",
                                  detail=f"a failed or cancelled CREATE INDEX CONCURRENTLY leaves an invalid index: "
                                         f"DROP INDEX CONCURRENTLY {invalid[0]}; then rerun")
        if m.statement_timeout:
            conn.execute("RESET statement_timeout")
        conn.autocommit = False
        if not record:
            return
        with conn.transaction():
            ledger.record(conn, m.file, sha, plan, (time.perf_counter() - started) * 1000)
            changes.finish(conn, m.file)
            ledger.sync_supabase(conn, m.file, text)
    except _StatementError as failed:
        failure = _translate(conn, m, text, failed.error, failed.statement)
        raise _partly(failure, done, len(statements), _record_partial(conn, m, bare, schema, connect, record)) from None
    except psycopg.Error as exc:  # outside the statements: the connection, the ledger row
        failure = _translate(conn, m, text, exc)
        raise _partly(failure, done, len(statements), _record_partial(conn, m, bare, schema, connect, record)) from None
    except MigrationFailed as failure:
        raise _partly(failure, done, len(statements), _record_partial(conn, m, bare, schema, connect, record)) from None
    except BaseException:  # Ctrl-C: the statement running is cancelled, the ones before it stay committed
        _record_partial(conn, m, bare, schema, connect, record)
        raise


# "cannot run inside a transaction block", "invalid transaction termination" (a procedure that commits)
_NO_BLOCK = {"25001", "2D000"}


def _record_partial(conn: psycopg.Connection[Any], m: Migration, bare: tuple[changes.Seen, sqltext.Statement] | None,
                    schema: str, connect: Connect | None, record: bool = True) -> tuple[bool, list[str]]:
    """Whether what the committed statements did is recorded (each recorded itself as it committed; one that
    ran outside any transaction of ours and failed, e.g. CREATE INDEX CONCURRENTLY leaving an INVALID index, is
    recorded now, in a new session if the migration's was lost), and the INVALID indexes left behind."""
    if not record:  # a copy of the schema (blast.py): nothing to record
        return True, []
    fresh = None
    try:
        if conn.closed or conn.broken:
            if connect is None:
                return bare is None, []
            conn = fresh = connect()
        conn.autocommit = True
        if bare is not None:
            seen, stmt = bare
            with conn.transaction():
                changes.store_bare(conn, m.file, seen, pgparse.names_in(stmt.node), pgparse.may_write_rows(stmt.node))
        return True, invalid_indexes(conn, schema)
    except (psycopg.Error, Phase4Error):
        return False, []
    finally:
        if fresh is not None:
            fresh.close()


def _partly(failure: MigrationFailed, done: int, total: int, record: tuple[bool, list[str]]) -> MigrationFailed:
    """The failure of a transaction = false migration: how many statements stayed committed, and what else."""
    recorded, invalid = record
    failure.rolled_back = False
    failure.committed = f"{done} of {total} statement(s)"
    notes = [failure.detail, _partial(done, total)]
    if not recorded:
        notes.append("what they did could not be recorded for --phase4-rollback: undo it by hand if needed")
    if invalid and not failure.message.startswith("left INVALID"):  # that failure names them with the fix
        notes.append(f"INVALID index(es) left behind: {', '.join(invalid)}: DROP INDEX CONCURRENTLY {invalid[0]}")
    failure.detail = "; ".join(filter(None, notes))
    return failure


def _partial(done: int, total: int) -> str:
    return (f"transaction = false: {done} of {total} statement(s) were committed before this point and stay "
            "applied; the ledger does not list the file, so make its statements idempotent (IF NOT EXISTS) "
            "before rerunning")


def invalid_indexes(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE NOT i.indisvalid AND n.nspname = %s"
        " ORDER BY 1", (schema,)).fetchall()]


def _translate(conn: psycopg.Connection[Any], migration: Migration, text: str, exc: psycopg.Error,
               stmt: sqltext.Statement | None = None) -> MigrationFailed:
    diag = exc.diag
    line, statement = (stmt.line, stmt.code) if stmt is not None else (None, "")
    if stmt is not None and diag.statement_position:  # a position in the statement sent: its line in the file
        line = sqltext.line_of(text, stmt.start + int(diag.statement_position))
    lines = str(exc).strip().splitlines()
    message = diag.message_primary or (lines[0] if lines else type(exc).__name__)
    if (conn.closed or conn.broken) and migration.transaction:
        message = (f"{message} (the connection to the server was lost: the server rolls back the open "
                   "transaction, so nothing of this file was applied)")
    elif conn.closed or conn.broken:
        message = f"{message} (the connection to the server was lost)"
    return MigrationFailed(migration.file, line, exc.sqlstate, message,
                           detail=diag.message_detail or diag.message_hint or "", statement=statement)
