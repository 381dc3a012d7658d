"""Split migration text into statements, aware of quotes, dollar quotes, comments, parentheses and
BEGIN ATOMIC bodies.

Migrations run statement by statement (migrate.py), so the split decides what is sent to the server; it also
finds transaction-control statements before anything runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z_0-9]*)?\$")
_TX_CONTROL = re.compile(
    r"^(BEGIN|START\s+TRANSACTION|COMMIT|END|ROLLBACK|ABORT|SAVEPOINT|RELEASE|PREPARE\s+TRANSACTION)\b", re.I)
_ATOMIC = re.compile(r"\bBEGIN\s+ATOMIC\b", re.I)
_LEADING_COMMENTS = re.compile(r"^(\s+|--[^\n]*\n?|/\*.*?\*/)*", re.S)


@dataclass(frozen=True)
class Statement:
    line: int  # 1-based line of the statement's first token
    text: str
    start: int = 0  # character offset of `text` in the file

    @property
    def code(self) -> str:
        """The statement without leading blanks and comments."""
        return _LEADING_COMMENTS.sub("", self.text, count=1).strip()


def split(text: str) -> list[Statement]:
    pieces: list[tuple[int, int]] = []
    i, start, depth, n = 0, 0, 0, len(text)
    while i < n:
        c = text[i]
        if c == "-" and text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif c == "/" and text.startswith("/*", i):
            i = _block_comment_end(text, i)
        elif c in "'\"":
            i = _quote_end(text, i, c, escapes=c == "'" and _escape_string(text, i))
        elif c == "$" and (m := _DOLLAR.match(text, i)) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            end = text.find(m.group(0), m.end())
            i = n if end < 0 else end + len(m.group(0))
        elif c == "(":
            depth, i = depth + 1, i + 1
        elif c == ")":
            depth, i = max(depth - 1, 0), i + 1
        elif c == ";" and depth == 0:
            pieces.append((start, i))
            start = i = i + 1
        else:
            i += 1
    pieces.append((start, n))
    return _merge_atomic(text, [p for p in pieces if _LEADING_COMMENTS.sub("", text[p[0]:p[1]], count=1).strip()])


def _merge_atomic(text: str, pieces: list[tuple[int, int]]) -> list[Statement]:
    """A BEGIN ATOMIC body holds ';' and ends at a lone END: keep it in one statement."""
    out: list[Statement] = []
    open_start: int | None = None
    for start, end in pieces:
        chunk = text[start:end]
        if open_start is None and _ATOMIC.search(chunk):
            open_start = start
            continue
        if open_start is not None:
            if re.fullmatch(r"END", Statement(0, chunk).code, re.I):
                out.append(_statement(text, open_start, end))
                open_start = None
            continue
        out.append(_statement(text, start, end))
    if open_start is not None:
        out.append(_statement(text, open_start, len(text)))
    return out


def _statement(text: str, start: int, end: int) -> Statement:
    chunk = text[start:end]
    lead = len(chunk) - len(_LEADING_COMMENTS.sub("", chunk, count=1))
    return Statement(text.count("\n", 0, start + lead) + 1, chunk, start)


def _block_comment_end(text: str, i: int) -> int:
    depth = 0
    while i < len(text):
        if text.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif text.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    return i


def _escape_string(text: str, i: int) -> bool:
    """E'...' (or e'...'): a backslash escapes the next character, \' included."""
    return i > 0 and text[i - 1] in "Ee" and (i < 2 or not (text[i - 2].isalnum() or text[i - 2] == "_"))


def _quote_end(text: str, i: int, q: str, escapes: bool = False) -> int:
    i += 1
    while i < len(text):
        if escapes and text[i] == "\\":
            i += 2
            continue
        if text[i] == q:
            if text.startswith(q * 2, i):
                i += 2
                continue
            return i + 1
        i += 1
    return i


def transaction_control(text: str) -> Statement | None:
    """The first statement that would end or nest the migration's transaction, if any."""
    for stmt in split(text):
        if _TX_CONTROL.match(stmt.code) and not _ATOMIC.match(stmt.code):
            return stmt
    return None


def line_of(text: str, position: int) -> int:
    """Line of a 1-based character position, as PostgreSQL reports statement positions."""
    return text.count("\n", 0, max(position - 1, 0)) + 1
