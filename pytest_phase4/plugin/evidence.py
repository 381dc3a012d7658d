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

from pytest_phase4 import evidence_chain
from pytest_phase4.blast import checks as blast_checks
from pytest_phase4.db import migrate
from pytest_phase4.kinds.base import KINDS
from pytest_phase4.rls import personas
from pytest_phase4.run import ALREADY, APPLIED, BLOCKED, FAILED, REFUSED, MigrationState, Phase4Run
from pytest_phase4.safety import promotion


def category(r: CheckRecord) -> str:
    """The summary line a plan check counts in besides its stage's, as its kind declares (kinds.Kind.category)."""
    kind = KINDS.get(r.kind)  # "apply", "custom" and the rollback's steps are no kinds
    return kind.category if kind else ""


NOT_RUN, DESELECTED, NOT_COLLECTED = "not run", "deselected", "not collected"


@dataclass
class CheckRecord:
    nodeid: str
    stage: str
    step: str
    kind: str  # the check kind; "apply" for a migration, "custom" for a plain pytest test
    outcome: str = NOT_RUN  # passed, failed, skipped, error; deselected, not collected, not run (not reached)
    message: str = ""  # what a passing check observed, why it failed, why it did not run
    duration_ms: float = 0.0
    key: tuple[str, ...] = ()  # the item's key in the run's StepBook (steps.py)
    failure: dict[str, str] | None = None  # a failed check's expected, found, where, hint and plan entry
    no_baseline: bool = False  # skipped for want of a baseline: the run does not prove what it compares


@dataclass(frozen=True)
class Category:
    """A line of the runbook's execution summary and the checks that decide it."""

    label: str
    ok_word: str
    applies: Callable[[CheckRecord], bool]


CATEGORIES = (
    Category("Preflight", "VERIFIED", lambda r: r.stage == "preflight" and not category(r)),
    # before the migrations, on the copy; its confirmations on the migrated database are post checks
    Category("Blast radius", "VERIFIED", lambda r: r.stage == "blast_radius"),
    Category("Migration checks", "VERIFIED", lambda r: r.stage == "migration" and r.kind not in ("apply", "custom")),
    Category("Data Integrity", "VERIFIED", lambda r: r.stage == "post" and category(r) != "Performance"
             and r.kind != "custom"),
    Category("Tests Passed", "PASSED", lambda r: category(r) == "Tests Passed" or r.kind == "custom"),
    Category("Smoke Tests", "PASSED", lambda r: r.stage == "smoke"),
    Category("Performance", "ACCEPTABLE", lambda r: category(r) == "Performance"),
)
ROLLBACK = Category("Rollback", "PROVEN", lambda r: r.stage == "rollback")


@dataclass(frozen=True)
class Verdict:
    label: str
    word: str  # the ok word only when every check of the kind ran and passed; else FAILED, INCOMPLETE or NOT RUN
    detail: str
    state: str  # passed, failed, partial, notrun: for styling
    passed: int = 0
    failed: int = 0
    not_run: tuple[tuple[int, str], ...] = ()  # (how many, why) of the checks that did not run, most first


_SHOWN = 2  # reasons for not running named in a verdict's detail (the JSON has them all)


def not_run_reasons(records: list[CheckRecord]) -> list[tuple[int, str]]:
    """Why the records did not run, grouped: (how many, reason), most frequent first."""
    counts: dict[str, int] = {}
    for r in records:
        why = r.message if r.outcome != "skipped" or r.message.startswith("halted after") else f"skipped: {r.message}"
        counts[why] = counts.get(why, 0) + 1
    return sorted(((n, why) for why, n in counts.items()), key=lambda c: -c[0])


def verdict(category: Category, records: list[CheckRecord]) -> Verdict:
    """VERIFIED (or the category's word) only when every check of its kind ran and passed; otherwise what did not
    run and why: deselected, not collected, halted, no baseline, its migration not applied or refused."""
    mine = [r for r in records if category.applies(r)]
    passed = sum(r.outcome == "passed" for r in mine)
    failed = sum(r.outcome in ("failed", "error") for r in mine)
    missing = not_run_reasons([r for r in mine if r.outcome not in ("passed", "failed", "error")])
    parts = [f"{passed} passed"] if passed else []
    parts += [f"{failed} failed"] if failed else []
    if missing:
        shown = [f"{n} {_short(_halted_step(why))}" for n, why in missing[:_SHOWN]]
        rest = sum(n for n, _ in missing[_SHOWN:])
        shown += [f"{rest} for other reasons"] if rest else []
        parts.append(f"{sum(n for n, _ in missing)} did not run: " + "; ".join(shown))
    detail = "; ".join(parts) or "none in this run"
    args = (passed, failed, tuple(missing))
    if failed:
        return Verdict(category.label, "FAILED", detail, "failed", *args)
    if not passed:
        return Verdict(category.label, "NOT RUN", detail, "notrun", *args)
    if missing:
        return Verdict(category.label, "INCOMPLETE", detail, "partial", *args)
    return Verdict(category.label, category.ok_word, detail, "passed", *args)


def _halted_step(why: str) -> str:
    """"halted after <step>: <reason>" says <reason> once, in the issues; a verdict names the step."""
    return why.split(": ", 1)[0] if why.startswith("halted after ") else why


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _undone(state: MigrationState) -> tuple[bool, str]:
    """Whether part of a failed migration stayed applied, and the words for what happened to it."""
    if state.migration.transaction:
        return False, "its own transaction was rolled back"
    if not state.stayed or state.stayed.startswith("0 "):
        return False, "transaction = false, and none of its statements had committed"
    return True, (f"transaction = false: {state.stayed} committed one by one before the failure stay applied, and "
                  "the ledger does not list the file")


@dataclass
class Evidence:
    run: Phase4Run
    records: dict[str, CheckRecord] = field(default_factory=dict)
    chain: dict[str, Any] = field(default_factory=dict)  # files, selection, target, mode, relied_on (promotion)

    def scrub(self, text: str) -> str:
        return self.run.scrub(text)

    @property
    def checks(self) -> list[CheckRecord]:
        return [r for r in self.records.values() if r.kind != "apply"]

    def verdicts(self) -> list[Verdict]:
        if self.run.safety.rollback:  # a rollback runs none of the plan's checks: its own steps are the verdict
            return [verdict(ROLLBACK, self.checks)]
        found = [verdict(c, self.checks) for c in CATEGORIES]
        return [perf_verdict(v, self.performance()) if v.label == "Performance" else v for v in found]

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
        if failed_migration is not None:
            partly, undone = _undone(failed_migration)
            file = failed_migration.migration.file
            if not stayed and not partly:
                return False, (f"{file} failed ({undone}) and no migration of the plan is applied: nothing to roll "
                               "back; fix it and rerun")
            return True, (f"{file} failed ({undone}); {len(stayed)} migration(s) of the plan stay applied "
                          f"({len(applied)} of this run): roll back with --phase4-rollback (Part 7"
                          + (", it undoes the committed part too" if partly else "") + ") or fix and rerun")
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
        if self.run.halt is not None and not failures:  # halted by a check pytest counts as no failure (xfail)
            halt = self.run.halt
            return bool(applied), (f"halted after {halt.step}: {halt.reason}; " + (
                f"{len(applied)} migration(s) applied in this run stay applied" if applied else
                "this run changed nothing in the database"))
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
            rows.append({"name": r.name, "title": r.title, "gate": r.gate or "none (recorded)",
                         "outcome": record.outcome if record else "not run",
                         "before_ms": round(r.before.median_ms, 2) if r.before else None,
                         "after_ms": round(r.after.median_ms, 2) if r.after else None,
                         "improvement_pct": round(pct, 1) if pct is not None else None,
                         "change": change_words(pct), "note": r.before_note})
        return rows

    def average_improvement(self) -> float | None:
        values = [p["improvement_pct"] for p in self.performance() if p["improvement_pct"] is not None]
        return sum(values) / len(values) if values else None

    def point_of_no_return(self) -> list[dict[str, Any]]:
        """Each destructive migration: its status and how running it was confirmed (flag or prompt, by whom)."""
        rows = []
        for state in self.run.states.values():
            if not state.migration.destructive:
                continue
            c = self.run.confirmations.get(state.migration.file)
            rows.append({"migration": state.migration.file, "status": state.status,
                         "confirmed_by": c.by if c else None, "os_user": c.os_user if c else None,
                         "confirmed_at": c.at.isoformat() if c else None,
                         "note": self.scrub(state.note) if not c else ""})
        return rows

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
            entry["message"] = self.scrub(r.message) if r.message else None  # observed, or why not passed
            entry["failure"] = r.failure  # scrubbed as the report was made (report.attach_failure)
            if r.no_baseline:
                entry["no_baseline"] = True
            checks.append(entry)
        chain = self.chain
        document = {
            "plan": {"name": plan.name, "path": chain.get("plan_path", str(plan.path)), "sha256": plan.sha256},
            "mode": chain.get("mode", "apply"),
            "files": chain.get("files", []),
            "selection": chain.get("selection", {}),
            "target": chain.get("target", {}),
            "relied_on": chain.get("relied_on"),
            "halted": {"step": run.halt.step, "reason": self.scrub(run.halt.reason)} if run.halt else None,
            "dsn": self.scrub(run.target.label),
            "target_source": run.target.source,
            "server_version": run.server_version,
            "started_at": self.started().isoformat(),
            "finished_at": self.finished().isoformat(),
            "duration_s": round((self.finished() - self.started()).total_seconds(), 1),
            "migrations": self.migrations(),
            "checks": checks,
            "summary": {v.label: {"verdict": v.word, "detail": self.scrub(v.detail), "passed": v.passed,
                                  "failed": v.failed, "not_run": [{"count": n, "reason": self.scrub(why)}
                                                                  for n, why in v.not_run]}
                        for v in self.verdicts()},
            "point_of_no_return": self.point_of_no_return(),
            "issues": self.issues(),
            "rollback_required": {"required": required, "reason": why},
            "performance": self.performance(),
            "index_usage": [{"index": i, "table": t, "idx_scan": s, "idx_tup_read": n}
                            for i, t, s, n in run.extras.index_usage],
            "signoff": self.signoff(),
            "personas": personas.to_json(run),  # what each persona saw, moment by moment (None without personas)
            "baseline": run.baseline_summary(),  # what the comparisons were made with (baselines.py)
            "blast_radius": blast_checks.to_json(run),
        }
        complete = not promotion.not_complete(document) and not self.run.book.uncollected
        document["selection"] = {**document["selection"], "complete": complete}
        document["green"] = not promotion.not_green(document) and not self.run.book.uncollected
        return document

    def write_json(self, path: Path) -> None:
        """Scrubbed first, then sealed: the content_sha256 is over the text as written."""
        path.parent.mkdir(parents=True, exist_ok=True)
        scrubbed = json.loads(self.scrub(json.dumps(evidence_chain.finite(self.document()), ensure_ascii=False)))
        path.write_text(json.dumps(evidence_chain.seal(scrubbed), indent=2, ensure_ascii=False) + "\n")


def change_words(improvement_pct: float | None) -> str:
    """A timing change as a change board reads it: "67.7% faster", "20.5% slower", "3.1x slower", never a bare
    "-205.9%"."""
    if improvement_pct is None:
        return "-"
    if round(improvement_pct, 1) == 0:
        return "unchanged"
    if improvement_pct <= -100:  # twice the time or more: a factor reads better than "12,603.9% slower"
        return f"{1 - improvement_pct / 100:,.1f}x slower"
    return f"{abs(improvement_pct):,.1f}% {'faster' if improvement_pct > 0 else 'slower'}"


def perf_verdict(v: Verdict, rows: list[dict[str, Any]]) -> Verdict:
    """The Performance line states its gates and shows a slower query as slower even when its gate passes; with
    no gate at all nothing was judged, and it says RECORDED, not ACCEPTABLE."""
    if not rows:
        return v
    gates: dict[str, int] = {}
    for row in rows:
        gates[row["gate"]] = gates.get(row["gate"], 0) + 1
    gate_text = "gate " + ", ".join(f"{g} ({n} quer{'y' if n == 1 else 'ies'})" for g, n in gates.items())
    slower = [r for r in rows if r["improvement_pct"] is not None and r["improvement_pct"] < 0]
    parts = [v.detail]
    if slower:
        parts.append(f"{len(slower)} slower after the migrations: "
                     + ", ".join(f"{r['title']} {r['change']}" for r in slower))
    parts.append(gate_text)
    word, state = v.word, v.state
    if word == "ACCEPTABLE" and set(gates) == {"none (recorded)"}:
        word = "RECORDED"  # no gate: the times are the evidence, nobody judged them
    if slower and state == "passed":
        state = "partial"
    return Verdict(v.label, word, "; ".join(parts), state, v.passed, v.failed, v.not_run)


def migration_done(status: str) -> bool:
    return status in (APPLIED, ALREADY)


def duration_text(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {secs:02d} s" if hours else f"{minutes} min {secs:02d} s"
