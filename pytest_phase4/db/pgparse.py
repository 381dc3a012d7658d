"""SQL read with PostgreSQL's own parser (pglast, libpg_query): what a view's definition locks, and what a migration
file creates. No database and no pytest here; text in, names or text out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pglast
from pglast import ast, enums
from pglast.stream import RawStream
from pglast.visitors import Visitor

_STRENGTH = {enums.LockClauseStrength.LCS_FORKEYSHARE: "FOR KEY SHARE",
             enums.LockClauseStrength.LCS_FORSHARE: "FOR SHARE",
             enums.LockClauseStrength.LCS_FORNOKEYUPDATE: "FOR NO KEY UPDATE",
             enums.LockClauseStrength.LCS_FORUPDATE: "FOR UPDATE"}
_WAIT = {enums.LockWaitPolicy.LockWaitSkip: " SKIP LOCKED", enums.LockWaitPolicy.LockWaitError: " NOWAIT"}


class ParseError(ValueError):
    """The text is not SQL that PostgreSQL's parser accepts; the message is the parser's."""


def _parse(text: str) -> Any:
    try:
        return pglast.parse_sql(text)
    except pglast.parser.ParseError as exc:
        raise ParseError(str(exc)) from None


@dataclass
class Unlocked:
    """A query with its row-locking clauses (FOR SHARE, FOR UPDATE, ...) taken out, wherever they were."""

    text: str
    clauses: list[str] = field(default_factory=list)  # as written: "FOR SHARE", "FOR UPDATE SKIP LOCKED"

    @property
    def skips_rows(self) -> bool:
        """SKIP LOCKED: which rows the query returns depends on what other sessions lock at that moment."""
        return any(c.endswith("SKIP LOCKED") for c in self.clauses)


def without_row_locks(query: str) -> Unlocked:
    """The query without its locking clauses. The rows a query returns in a snapshot are the same with or without
    them (a lock decides which rows wait for other sessions), unless SKIP LOCKED skips some."""
    tree = _parse(query)
    clauses: list[str] = []

    class Strip(Visitor):
        def visit_SelectStmt(self, ancestors: Any, node: Any) -> None:
            for lock in node.lockingClause or ():
                clauses.append(_STRENGTH.get(lock.strength, "FOR UPDATE") + _WAIT.get(lock.waitPolicy, ""))
            node.lockingClause = None

    Strip()(tree)
    return Unlocked(RawStream()(tree), list(dict.fromkeys(clauses)))


@dataclass(frozen=True)
class Created:
    """Names a migration file creates, without schema (CREATE [OR REPLACE] [MATERIALIZED] VIEW, CREATE INDEX)."""

    views: tuple[str, ...] = ()
    indexes: tuple[str, ...] = ()  # CREATE INDEX name: it did not exist before
    indexes_if_absent: tuple[str, ...] = ()  # CREATE INDEX IF NOT EXISTS name: maybe it did
    unnamed_indexes: int = 0  # CREATE INDEX without a name: the server picks it


def created(text: str) -> Created:
    """What the statements of a migration file create, read from its text (a DO block's or a function's body is
    not looked into)."""
    views: list[str] = []
    indexes: list[str] = []
    if_absent: list[str] = []
    unnamed = 0
    for raw in _parse(text):
        stmt = raw.stmt
        if isinstance(stmt, ast.ViewStmt) and stmt.view is not None:
            views.append(str(stmt.view.relname))
        elif isinstance(stmt, ast.CreateTableAsStmt) and stmt.objtype == enums.ObjectType.OBJECT_MATVIEW \
                and stmt.into is not None and stmt.into.rel is not None:
            views.append(str(stmt.into.rel.relname))
        elif isinstance(stmt, ast.IndexStmt):
            if not stmt.idxname:
                unnamed += 1
            else:
                (if_absent if stmt.if_not_exists else indexes).append(stmt.idxname)
    return Created(tuple(dict.fromkeys(views)), tuple(dict.fromkeys(indexes)), tuple(dict.fromkeys(if_absent)),
                   unnamed)


def names_in(node: Any) -> set[str]:
    """Every relation, index and object name a statement's parse tree spells (without schema): what a statement
    run outside any transaction of ours (CREATE INDEX CONCURRENTLY) can have created, altered or dropped."""
    found: set[str] = set()

    class Names(Visitor):
        def visit_RangeVar(self, ancestors: Any, n: ast.RangeVar) -> None:
            found.add(str(n.relname))

        def visit_IndexStmt(self, ancestors: Any, n: ast.IndexStmt) -> None:
            if n.idxname:
                found.add(str(n.idxname))

        def visit_String(self, ancestors: Any, n: ast.String) -> None:
            found.add(str(n.sval))

    if node is not None:
        Names()(node)
    return found


def may_write_rows(node: Any) -> bool:
    """A statement that refuses to run in a transaction block and can still write rows: CALL or DO (their code
    may commit), unlike CREATE INDEX CONCURRENTLY, VACUUM or REINDEX."""
    return isinstance(node, ast.CallStmt | ast.DoStmt)
