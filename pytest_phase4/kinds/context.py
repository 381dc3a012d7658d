"""How a check kind runs: the step's Context (one read-only connection, the plan, the step's facts, the baseline's
row counts), CheckSkipped for a check that does not apply, and run_check, which runs one check of the plan and turns
an SQL error into a failure naming the check. Nothing here writes to the database."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pytest_phase4.db import catalog
from pytest_phase4.db.facts import Facts
from pytest_phase4.errors import CheckFailed, Phase4Error, sql_error, timeout_hint
from pytest_phase4.kinds.base import KINDS
from pytest_phase4.plan.model import CheckSpec, Plan
from pytest_phase4.runextras import RunExtras


class CheckSkipped(Phase4Error):
    """The check does not apply to this run; the message says why."""


class NoBaseline(CheckSkipped):
    """Skipped for want of a baseline to compare with: the run does not prove what the check compares."""


NO_BASELINE = "no baseline from before the plan's migrations to compare with"


@dataclass
class BaselineCounts:
    """Row counts of every base table in the baseline the comparisons use (baselines.py): this run's, taken before
    its first migration, or an earlier run's from before the plan's first applied migration."""

    counts: dict[str, int]
    why_not: str = ""  # why there is no baseline to compare with ("" when there is one)
    used: str = ""  # which baseline, in words

    @property
    def is_baseline(self) -> bool:
        """Whether "after" compared with it says anything about the migrations: a baseline from before them."""
        return not self.why_not


@dataclass
class Context:
    conn: psycopg.Connection[Any]
    plan: Plan
    baseline: Callable[[], BaselineCounts]  # asked only by the checks that compare with it
    ledger: Mapping[str, Any] = field(default_factory=dict)  # file -> ledger.Entry, as the run started
    extras: RunExtras = field(default_factory=RunExtras)
    facts: Facts | None = None  # the step's shared catalog facts and row counts; one of its own if not given
    verified: frozenset[str] = frozenset()  # applied without a ledger row, as --phase4-verify-only found them

    @property
    def schema(self) -> str:
        return self.plan.schema

    @property
    def applied_before_run(self) -> frozenset[str]:
        """Migration files the ledger showed as applied when the run started (and, verifying only, those the
        database proves applied)."""
        return frozenset(self.ledger) | self.verified

    @property
    def known(self) -> Facts:
        if self.facts is None:
            self.facts = Facts(self.conn, self.schema)
        return self.facts


Impl = Callable[[Context, CheckSpec], str]


def q(name: str, schema: str) -> str:
    return f"{schema}.{name}"


def fmt(n: int) -> str:
    return f"{n:,}"


def require_relation(ctx: Context, spec: CheckSpec, name: str, kinds: str, what: str) -> None:
    kind = ctx.known.relkind(name)
    if kind is None or kind not in kinds:
        found = "no such relation" if kind is None else f"{catalog.relkind_words(kind)}, not a {what}"
        raise CheckFailed(f"{what} {q(name, ctx.schema)} to exist", found, q(name, ctx.schema),
                          hint=spec.hint or f"check the name in the plan, or that an earlier migration creates {name}")


def _applied_after(ctx: Context, step: str) -> str | None:
    """The last migration after `step` that the ledger showed applied at the start of the run, if any."""
    migration = ctx.plan.migration(step)
    if migration is None:
        return None
    later = [m.file for m in ctx.plan.migrations if m.index > migration.index and m.file in ctx.applied_before_run]
    return later[-1] if later else None


def run_check(ctx: Context, spec: CheckSpec) -> str:
    """Run one check; SQL errors become failures naming the check, never tracebacks."""
    kind = KINDS[spec.kind]
    if kind.as_of_step and (later := _applied_after(ctx, spec.step)):
        raise CheckSkipped(f"describes the state right after {spec.step}, and {later} was already applied when "
                           "this run started (ledger): no longer checkable")
    try:
        assert kind.run is not None, spec.kind  # a run_whole kind is run by Phase4Run.check
        return kind.run(ctx, spec)
    except CheckFailed as exc:
        exc.origin = exc.origin or spec.where
        raise
    except psycopg.Error as exc:
        raise CheckFailed(f"check {spec.test_id} to run", sql_error(exc), spec.where,
                          hint=timeout_hint(exc, "") or spec.hint or (exc.diag.message_hint or "")) from None
