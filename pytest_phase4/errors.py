"""Exceptions that carry data; the pytest layer turns them into what users read."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg


class Phase4Error(Exception):
    """Base class: every error of ours has a message meant for the user."""


@dataclass(frozen=True)
class Problem:
    """One problem found in a plan: where it is and what was expected."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class PlanError(Phase4Error):
    """The plan is invalid; lists every problem found, not only the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = [f"invalid phase4 plan ({len(problems)} problem{'s' if len(problems) != 1 else ''}):"]
        lines += [f"  {p}" for p in problems]
        super().__init__("\n".join(lines))


class TargetError(Phase4Error):
    """The target database cannot be reached or prepared; the message says what to do."""


@dataclass
class CheckFailed(Phase4Error):
    """A check found something other than its explicit expectation."""

    expected: str
    found: str
    where: str
    sql: str = ""
    details: list[str] = field(default_factory=list)
    hint: str = ""
    origin: str = ""  # the plan entry that declared the check

    def __post_init__(self) -> None:
        super().__init__(self.summary)

    @property
    def summary(self) -> str:
        return f"expected {self.expected}, found {self.found}"

    def fields(self, scrub: Callable[[str], str] = str) -> dict[str, str]:
        """What every report carries of the failure (the HTML row, the JSON evidence), read from here rather than
        from the rendered text; `scrub` hides passwords."""
        return {"expected": scrub(self.expected), "found": scrub(self.found), "where": scrub(self.where),
                "hint": scrub(self.hint), "plan": scrub(self.origin)}

    def render(self) -> str:
        lines = [f"expected: {self.expected}", f"found:    {self.found}", f"where:    {self.where}"]
        lines += [f"  {d}" for d in self.details]
        if self.hint:
            lines.append(f"hint:     {self.hint}")
        if self.origin:
            lines.append(f"plan:     {self.origin}")
        if self.sql:
            lines += ["sql:", *[f"  {line}" for line in self.sql.strip().splitlines()]]
        return "\n".join(lines)


@dataclass
class MigrationFailed(Phase4Error):
    """A migration file raised an SQL error; nothing of it was committed."""

    file: str
    line: int | None
    sqlstate: str | None
    message: str
    detail: str = ""
    statement: str = ""
    blockers: list[str] = field(default_factory=list)  # sessions that held the locks it waited for
    rolled_back: bool = True  # false for transaction = false migrations, whose statements commit one by one
    committed: str = ""  # ... and then how many stayed committed: "1 of 3 statement(s)"

    def __post_init__(self) -> None:
        super().__init__(self.summary)

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}" if self.line else f"{self.file} (line not reported)"

    @property
    def summary(self) -> str:
        state = f" [SQLSTATE {self.sqlstate}]" if self.sqlstate else ""
        return f"{self.location}: {self.message}{state}"

    def render(self) -> str:
        lines = [self.summary]
        if self.detail:
            lines.append(f"detail: {self.detail}")
        if self.statement:
            lines += ["statement:", *[f"  {line}" for line in self.statement.strip().splitlines()]]
        if self.blockers:
            lines += ["blocked by:", *[f"  {b}" for b in self.blockers],
                      "hint: end the blocking session if it is safe (SELECT pg_terminate_backend(<pid>)) or wait "
                      "for it, then rerun (the runbook's 'Migration Hangs' appendix)"]
        if self.rolled_back:
            lines.append("the migration's transaction was rolled back: nothing of this file was applied")
        return "\n".join(lines)


def sql_error(exc: psycopg.Error) -> str:
    """One line for an SQL error: the server's message and its SQLSTATE, never a traceback. A data error (class
    22) quotes the value that failed, a row's (an e-mail, a token): masked, as literals are in the texts shown."""
    lines = str(exc).strip().splitlines()
    message = exc.diag.message_primary or (lines[0] if lines else type(exc).__name__)
    if (exc.sqlstate or "").startswith("22"):
        message = re.sub(r'"(?:[^"]|"")*"', '"***"', message)
    return f"SQL error: {message}" + (f" [SQLSTATE {exc.sqlstate}]" if exc.sqlstate else "")


def timeout_hint(exc: psycopg.Error, limit: str) -> str:
    if exc.sqlstate != "57014":
        return ""
    within = f" ({limit})" if limit else ""
    return (f"the query ran past the check timeout{within}: a lock held by another session blocks it, or it is "
            "slow at this size; find blockers in pg_stat_activity, or raise --phase4-check-timeout")
