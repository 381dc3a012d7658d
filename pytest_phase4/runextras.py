"""Run state for the runbook parts beyond the migrations: smoke base URL and secrets, attachments shown under a
report row, performance timings, sign-off names. One object per run, held by Phase4Run and handed to checks
through their Context; it knows nothing of pytest."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pytest_phase4.db import dsn as dsnlib
from pytest_phase4.plan.model import CheckSpec
from pytest_phase4.safety.pins import Pins


@dataclass
class Timing:
    median_ms: float
    runs_ms: list[float]
    explain: str  # EXPLAIN (ANALYZE, BUFFERS) text of one more run


@dataclass
class PerfResult:
    name: str
    title: str
    query: str
    before: Timing | None = None
    after: Timing | None = None
    before_note: str = ""  # why there is no baseline, e.g. the migrations were already applied
    gate: str = ""  # the plan's max_ms / max_regression_pct, as text

    @property
    def improvement_pct(self) -> float | None:
        """Positive when faster after the migrations, as the runbook's "Calculated Improvement"."""
        if self.before is None or self.after is None or self.before.median_ms <= 0:
            return None
        return (self.before.median_ms - self.after.median_ms) / self.before.median_ms * 100


@dataclass
class RunExtras:
    base_url: str | None = None
    signoff: dict[str, str] = field(default_factory=dict)  # role key -> name given on the command line
    secrets: set[str] = field(default_factory=set)  # values expanded into smoke headers: never shown
    attachments: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)
    perf: dict[str, PerfResult] = field(default_factory=dict)
    index_usage: list[tuple[str, str, int, int]] = field(default_factory=list)  # index, table, scans, tuples
    pins: Pins | None = None  # the files held to the evidence the run relies on (--phase4-require-evidence)

    def attach(self, spec: CheckSpec, title: str, text: str) -> None:
        """Text shown under the check's report row (command output, EXPLAIN plans, response bodies)."""
        self.attachments.setdefault((spec.step, spec.test_id), []).append((title, self.scrub(text)))

    def attachments_of(self, spec: CheckSpec) -> list[tuple[str, str]]:
        return self.attachments.get((spec.step, spec.test_id), [])

    def add_secrets(self, values: Iterable[str]) -> None:
        self.secrets.update(v for v in values if v)

    def scrub(self, text: str) -> str:
        return dsnlib.scrub(text, self.secrets) if self.secrets else text
