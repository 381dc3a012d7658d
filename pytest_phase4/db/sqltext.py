"""Migration text as PostgreSQL's own parser sees it (libpg_query, through pglast): its statements, each with
its line, the exact text sent to the server, its offset in the file and its parse tree.

Migrations run statement by statement, so the split decides what the server receives; it also finds
transaction-control statements before anything runs, and gives the static hazards (hazards.py) their trees.
A file the parser rejects is refused before anything runs, naming file:line: the server would reject it too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pglast import ast, parse_sql
from pglast.parser import ParseError, scan

from pytest_phase4.errors import Phase4Error

# A literal after the word PASSWORD (CREATE ROLE ... PASSWORD '...', OPTIONS (password '...')): never shown.
_PASSWORD = re.compile(r"(\bpassword\b\s*=?\s*)E?'(?:[^']|'')*'?", re.I)


@dataclass(frozen=True)
class Statement:
    line: int  # 1-based line of the statement's first token
    text: str  # from its first token to its end, without the ';': what is sent to the server
    start: int = 0  # character offset of `text` in the file
    node: Any = field(default=None, compare=False, repr=False)  # the parse tree (a pglast.ast.Node)

    @property
    def code(self) -> str:
        """The statement as written (comments before it are not part of it)."""
        return self.text

    @property
    def head(self) -> str:
        """Its first line, shortened, any password literal masked: how a report names the statement."""
        first = mask_passwords(self.text).strip().splitlines()[0] if self.text.strip() else ""
        return first if len(first) <= 100 else first[:99] + "\u2026"


class SqlSyntaxError(Phase4Error):
    """PostgreSQL's parser rejects the text; carries the file and line of the error."""

    def __init__(self, file: str, line: int, message: str) -> None:
        self.file, self.line, self.message = file, line, message
        super().__init__(f"{file}:{line}: {message} (PostgreSQL's parser; the server would reject the file too: "
                         "fix the SQL; psql meta-commands such as \\set or COPY ... FROM stdin data are not SQL)")


def split(text: str, file: str = "<sql>") -> list[Statement]:
    """The statements of `text`, in order; [] for a text of only comments and blanks. Raise SqlSyntaxError."""
    try:
        raw = parse_sql(text)
    except ParseError as exc:
        message, index = (*exc.args, 0)[:2]
        raise SqlSyntaxError(file, line_of(text, int(index) + 1), str(message)) from None
    statements = []
    for r in raw:
        start = int(r.stmt_location or 0)
        end = start + int(r.stmt_len) if r.stmt_len else len(text)
        chunk = text[start:end]
        lead = len(chunk) - len(chunk.lstrip())
        start += lead
        body = chunk.strip()
        if body.endswith(";"):  # the parser's length stops before it; be sure it is never sent twice
            body = body[:-1].rstrip()
        statements.append(Statement(line_of(text, start + 1), body, start, r.stmt))
    return statements


def transaction_control(text: str | list[Statement]) -> Statement | None:
    """The first statement that would end or nest the migration's transaction (BEGIN, COMMIT, END, ROLLBACK,
    SAVEPOINT, RELEASE, PREPARE TRANSACTION, ...), if any. A BEGIN ATOMIC function body is not one."""
    statements = split(text) if isinstance(text, str) else text
    return next((s for s in statements if isinstance(s.node, ast.TransactionStmt)), None)


def mask_passwords(text: str) -> str:
    """The text with any literal after the word PASSWORD shown as ***."""
    return _PASSWORD.sub(r"\1***", text)


def line_of(text: str, position: int) -> int:
    """Line of a 1-based character position, as PostgreSQL reports statement positions."""
    return text.count("\n", 0, max(position - 1, 0)) + 1


_COMMENTS = ("SQL_COMMENT", "C_COMMENT")
_LITERALS = ("SCONST", "USCONST", "BCONST", "XCONST")
MASKED = "'***'"
WITHHELD = "<not shown: PostgreSQL's scanner cannot read it, so its literals and comments cannot be masked>"


def redact(text: str, leading: bool = True) -> str:
    """The text with every comment shown as `/* *** */` and every string literal as '***', by PostgreSQL's own
    scanner: comments (an sqlcommenter tag, a debugging note) and literals (a key in `pgp_sym_decrypt(col, '...')`) are
    what a query or a function body holds that a report must not show. Line breaks inside them are kept, so a
    line number still points at the same line. `leading=False`: the comments before the first token are left out
    (a query's header, not part of it)."""
    try:
        tokens = scan(text)
    except ParseError:
        return WITHHELD
    out, at, code = [], 0, False
    for token in tokens:
        if token.name in _COMMENTS or token.name in _LITERALS:
            gone = text[token.start:token.end + 1]
            shown = (MASKED if token.name in _LITERALS else "/* *** */" if code or leading  # -- too: shown on one line
                     else "")
            out += [text[at:token.start], shown, "\n" * gone.count("\n")]
            at = token.end + 1
        code = code or token.name not in _COMMENTS
    return "".join([*out, text[at:]])
