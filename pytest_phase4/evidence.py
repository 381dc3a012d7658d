"""The evidence of a run (runbook Part 8): what each check did, the execution summary's verdicts, whether a
rollback is required, the sign-off block, and the JSON document. Built from the run and the outcomes the pytest
layer records; knows nothing of pytest. Every text that leaves here has passed through `Evidence.scrub`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pytest_phase4 import migrate
from pytest_phase4.run import ALREADY, APPLIED, BLOCKED, FAILED, REFUSED, Phase4Run

PERF_KINDS = frozenset({"perf_before", "perf_after", "explain_under"})


@dataclass
class CheckRecord:
    nodeid: str
    stage: str
    step: str
    kind: str  # the check kind; "apply" for a migration, "custom" for a plain pytest test
    outcome: str = "not run"  # passed, failed, skipped, error
    message: str = ""
    duration_ms: float = 0.0


@dataclass(frozen=True)
class Category:
    """A line of the runbook's execution summary and the checks that decide it."""

    label: str
    ok_word: str
    applies: Callable[[CheckRecord], bool]


CATEGORIES = (
    Category("Preflight", "VERIFIED", lambda r: r.stage == "preflight" and r.kind not in PERF_KINDS | {"command"}),
    Category("Migration checks", "VERIFIED", lambda r: r.stage == "migration" and r.kind not in ("apply", "custom")),
    Category("Data Integrity", "VERIFIED", lambda r: r.stage == "post" and r.kind not in PERF_KINDS | {"custom"}),
    Category("Tests Passed", "PASSED", lambda r: r.kind in ("command", "custom")),
    Category("Smoke Tests", "PASSED", lambda r: r.stage == "smoke"),
    Category("Performance", "ACCEPTABLE", lambda r: r.kind in PERF_KINDS),
)
ROLLBACK = Category("Rollback", "PROVEN", lambda r: r.stage == "rollback")


@dataclass(frozen=True)
class Verdict:
    label: str
    word: str  # the ok word, FAILED or NOT RUN
    detail: str
    state: str  # passed, failed, notrun: for styling


def verdict(category: Category, records: list[CheckRecord]) -> Verdict:
    mine = [r for r in records if category.applies(r)]
    counts = {o: sum(r.outcome == o for r in mine) for o in ("passed", "failed", "error", "skipped")}
    failed = counts["failed"] + counts["error"]
    detail = ", ".join(f"{n} {o}" for o, n in counts.items() if n)
    if failed:
        return Verdict(category.label, "FAILED", detail, "failed")
    if not counts["passed"]:
        reason = next((r.message for r in mine if r.outcome == "skipped" and r.message), "")
        why = f"{counts['skipped']} skipped" + (f": {reason}" if reason else "") if mine else "no check selected"
        return Verdict(category.label, "NOT RUN", why, "notrun")
    return Verdict(category.label, category.ok_word, detail, "passed")


@dataclass
class Evidence:
    run: Phase4Run
    records: dict[str, CheckRecord] = field(default_factory=dict)

    def scrub(self, text: str) -> str:
        return self.run.extras.scrub(self.run.target.scrub(text))

    @property
    def checks(self) -> list[CheckRecord]:
        return [r for r in self.records.values() if r.kind != "apply"]

    def verdicts(self) -> list[Verdict]:
        if self.run.safety.rollback:  # a rollback runs none of the plan's checks: its own steps are the verdict
            return [verdict(ROLLBACK, self.checks)]
        return [verdict(c, self.checks) for c in CATEGORIES]

    def issues(self) -> list[str]:
        found = [f"{r.nodeid.split('::', 1)[-1]}: {r.message}" for r in self.records.values()
                 if r.outcome in ("failed", "error")]
        if self.run.halt and not found:
            found.append(f"halted after {self.run.halt.step}: {self.run.halt.reason}")
        return [self.scrub(i) for i in found]

    def rollback(self) -> tuple[bool, str]:
        """Whether the database needs the runbook's Part 7, and why: a human decides, this says what happened."""
        states = list(self.run.states.values())
        applied = [s.migration.file for s in states if s.status == APPLIED]
        stayed = [s.migration.file for s in states if s.status in (APPLIED, ALREADY)]
        failed_migration = next((s for s in states if s.status == FAILED), None)
        failures = [r for r in self.records.values() if r.outcome in ("failed", "error")]
        if self.run.safety.rollback:  # this run was the rollback itself (runbook Part 7)
            return self._rollback_run(failures, stayed)
        if failed_migration is not None and not stayed:
            return False, (f"{failed_migration.migration.file} failed (its own transaction was rolled back) and no "
                           "migration of the plan is applied: nothing to roll back; fix it and rerun")
        if failed_migration is not None:
            return True, (f"{failed_migration.migration.file} failed (its own transaction was rolled back); "
                          f"{len(stayed)} migration(s) of the plan stay applied ({len(applied)} of this run): "
                          "roll back with --phase4-rollback (Part 7) or fix and rerun")
        refused = next((s for s in states if s.status == REFUSED), None)
        if refused is not None and not stayed:
            return False, (f"{refused.migration.file} was refused, not attempted ({refused.note}); no migration of "
                           "the plan is applied: nothing to roll back; fix the cause and rerun")
        if refused is not None:
            return False, (f"{refused.migration.file} was refused, not attempted ({refused.note}); {len(applied)} "
                           "migration(s) applied in this run stay applied: fix the cause and rerun the whole plan, "
                           "or undo them with --phase4-rollback (Part 7)")
        blocked = next((s for s in states if s.status == BLOCKED), None)
        if blocked is not None and not stayed:
            return False, (f"stopped before the point of no return ({blocked.migration.file}); no migration of the "
                           "plan is applied: nothing to roll back; confirm and rerun")
        if blocked is not None:
            return False, (f"stopped before the point of no return ({blocked.migration.file}); {len(applied)} "
                           "migration(s) applied, nothing destructive: confirm and rerun, or undo them with "
                           "--phase4-rollback (Part 7)")
        if failures and applied:
            return True, f"{len(failures)} check(s) failed after {len(applied)} migration(s) were applied in this run"
        if failures:
            return False, "checks failed, but this run changed nothing in the database"
        if not any(r.outcome == "passed" for r in self.records.values()):
            return False, "no check ran (none selected, or all skipped)"
        if applied and not any(r.outcome == "passed" for r in self.checks if r.stage == "migration"
                               and r.kind not in ("apply", "custom")):
            return False, f"{len(applied)} migration(s) applied in this run without any of their checks run"
        return False, "every check selected passed"

    def _rollback_run(self, failures: list[CheckRecord], stayed: list[str]) -> tuple[bool, str]:
        mode = f"--phase4-rollback={self.run.safety.rollback}"
        steps = [r for r in self.records.values() if r.stage == "rollback"]
        failed = next((r for r in steps if r.outcome in ("failed", "error")), None)
        if failed is None and steps and all(r.outcome == "passed" for r in steps):
            return False, f"this run was a rollback ({mode}): committed and proven (see the rollback steps)"
        if failed is not None and failed.step in ("locate_backup", "assess"):
            if not stayed:
                return False, f"this run was a rollback ({mode}), refused: {failed.message}"
            return True, (f"this run was a rollback ({mode}) and it was REFUSED at {failed.step} before any change "
                          f"({failed.message}); {len(stayed)} migration(s) of the plan are still applied")
        where = failed.step if failed is not None else "a step not run"
        return True, (f"this run was a rollback ({mode}) and it FAILED at {where}: its transaction was rolled back, "
                      f"the database and the ledger are as before it ({len(stayed)} migration(s) of the plan still "
                      "applied); fix the cause and run the rollback again")

    def migrations(self) -> list[dict[str, Any]]:
        rows = []
        for state in self.run.states.values():
            m = state.migration
            sha = state.sha256 or (migrate.file_sha256(m) if m.path.is_file() else "")
            verify = [r for r in self.checks if r.step == m.file]
            rows.append({"file": m.file, "title": m.title, "sha256": sha, "status": state.status,
                         "duration_ms": round(state.duration_ms, 1) if state.duration_ms is not None else None,
                         "destructive": m.destructive, "note": self.scrub(state.note),
                         "verify_passed": sum(r.outcome == "passed" for r in verify), "verify_total": len(verify),
                         # what it held: on this database as applied now, and on the rehearsal copy before
                         "measured": state.measured.to_json() if state.measured and state.measured.outcome != "not run"
                         else None, "rehearsal": state.rehearsed})
        return rows

    def performance(self) -> list[dict[str, Any]]:
        rows = []
        after = {rec.nodeid.rsplit("::", 1)[-1]: rec for rec in self.checks if rec.kind == "perf_after"}
        for r in self.run.extras.perf.values():
            pct = r.improvement_pct
            record = after.get(f"perf_after[{r.name}]")
            rows.append({"name": r.name, "title": r.title, "gate": r.gate,
                         "outcome": record.outcome if record else "not run",
                         "before_ms": round(r.before.median_ms, 2) if r.before else None,
                         "after_ms": round(r.after.median_ms, 2) if r.after else None,
                         "improvement_pct": round(pct, 1) if pct is not None else None, "note": r.before_note})
        return rows

    def average_improvement(self) -> float | None:
        values = [p["improvement_pct"] for p in self.performance() if p["improvement_pct"] is not None]
        return sum(values) / len(values) if values else None

    def signoff(self) -> list[dict[str, str]]:
        given, roles = self.run.extras.signoff, self.run.plan.signoff
        return [{"role": key, "title": title, "name": given.get(key, "")} for key, title in roles.items()]

    def started(self) -> datetime:
        return self.run.started_at

    def finished(self) -> datetime:
        return self.run.finished_at or datetime.now(UTC)

    def document(self) -> dict[str, Any]:
        plan, run = self.run.plan, self.run
        required, why = self.rollback()
        checks = []
        for r in self.checks:
            entry: dict[str, Any] = {"id": r.nodeid, "stage": r.stage, "step": r.step, "kind": r.kind,
                                     "outcome": r.outcome, "duration_ms": round(r.duration_ms, 1)}
            if r.outcome in ("failed", "error", "skipped") and r.message:
                entry["message"] = self.scrub(r.message)
            checks.append(entry)
        return {
            "plan": {"name": plan.name, "path": str(plan.path), "sha256": plan.sha256},
            "dsn": self.scrub(run.target.label),
            "target_source": run.target.source,
            "server_version": run.server_version,
            "started_at": self.started().isoformat(),
            "finished_at": self.finished().isoformat(),
            "duration_s": round((self.finished() - self.started()).total_seconds(), 1),
            "migrations": self.migrations(),
            "checks": checks,
            "summary": {v.label: {"verdict": v.word, "detail": self.scrub(v.detail)} for v in self.verdicts()},
            "issues": self.issues(),
            "rollback_required": {"required": required, "reason": why},
            "performance": self.performance(),
            "index_usage": [{"index": i, "table": t, "idx_scan": s, "idx_tup_read": n}
                            for i, t, s, n in run.extras.index_usage],
            "signoff": self.signoff(),
        }

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.scrub(json.dumps(self.document(), indent=2, ensure_ascii=False)) + "\n")


def migration_done(status: str) -> bool:
    return status in (APPLIED, ALREADY)


def duration_text(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"
