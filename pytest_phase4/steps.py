"""What each step of the plan must have done in this run before a later migration may apply (no pytest here).

A migration applies only when every earlier step passed in this run: each of its items (the plan's checks, an
earlier migration's apply row, the rehearsal, the custom checks placed in it) ran and passed, or skipped itself
because it does not apply to this run. An item that was deselected, never collected, halted, skipped because its
migration is not applied, or simply not reached yet has not passed, whatever order the items ran in and whatever
plugin chose it. The pytest layer records outcomes here from its report hook; the run asks before each migration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pytest_phase4.plan.model import CheckSpec, Migration, Plan

Key = tuple[str, ...]  # identifies one item of a step across collection and reports

PASSED, FAILED, HELD = "passed", "failed", "held"  # held: skipped by the plugin itself (halted, not applied)
NOT_RUN_YET = "not run yet"


def check_key(spec: CheckSpec) -> Key:
    return ("check", spec.step, spec.test_id, str(spec.line))


def apply_key(migration: Migration) -> Key:
    return ("apply", migration.file)


def custom_key(nodeid: str) -> Key:
    return ("custom", nodeid)


REHEARSE_KEY: Key = ("rehearse",)


@dataclass
class StepBook:
    plan: Plan
    required: dict[int, dict[Key, str]] = field(default_factory=dict)  # group -> item -> label, in plan order
    outcomes: dict[Key, str] = field(default_factory=dict)
    watched: set[Key] = field(default_factory=set)  # items whose function notes that it ran (items.noting_it_ran)
    ran: set[Key] = field(default_factory=set)  # ... and those whose own function ran to its end or skipped itself
    reasons: dict[Key, str] = field(default_factory=dict)  # why a held item was skipped
    collected: set[Key] = field(default_factory=set)
    selected: set[Key] | None = None  # None until collection has finished
    deselected: set[Key] = field(default_factory=set)
    deselected_by: str = ""  # the options that deselect, as typed ("-k 'x'", "--lf"), or "" if none
    uncollected: list[tuple[int, str]] = field(default_factory=list)  # custom checks left out: (the earliest
    # step they can belong to, which file and why)
    skipped_files: list[str] = field(default_factory=list)  # modules of custom checks that skipped themselves whole
    label_of: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for step in self.plan.steps:
            items: dict[Key, str] = {}
            if step.migration is not None:
                items[apply_key(step.migration)] = "apply"
            for spec in step.checks:
                items[check_key(spec)] = spec.test_id
            self.required[step.group] = items
            self.label_of[step.group] = step.name

    def require(self, group: int, key: Key, label: str) -> None:
        self.required[group].setdefault(key, label)

    def record(self, key: Key, outcome: str, reason: str = "") -> None:
        """An item's outcome in this run; a failure is final (a rerun of the item does not clear it)."""
        if self.outcomes.get(key) == FAILED:
            return
        if outcome == PASSED and self.outcomes.get(key) == HELD:
            return  # the skip report of an item the plugin held back
        self.outcomes[key] = outcome
        if reason:
            self.reasons[key] = reason

    def problem_before(self, group: int) -> tuple[str, str] | None:
        """Why the steps before `group` have not all passed in this run, as (what, what to do), or None.
        `what` completes "every step before it must pass in this run, and ..."."""
        if left_out := [text for earliest, text in self.uncollected if earliest < group]:
            by = f" ({self.deselected_by})" if self.deselected_by else ""
            return (f"custom checks that may belong to a step before it were not collected{by}: "
                    f"{'; '.join(left_out)}",
                    "collect the plan's whole folder: no --ignore or narrower path, no python_files, "
                    "python_functions, python_classes or norecursedirs (-o, ini, PYTEST_ADDOPTS) that leaves its "
                    "checks out; fix any collection error")
        for g in range(group):
            items = self.required.get(g, {})
            step = self.label_of[g]
            failed = [label for key, label in items.items() if self.outcomes.get(key) == FAILED]
            if failed:
                more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
                return f"{step} did not: {failed[0]} failed{more}", "fix it and rerun the whole plan"
            missing = [(key, label) for key, label in items.items() if self.outcomes.get(key) != PASSED]
            if missing:
                return self._missing(step, len(items), missing)
        return None

    def _missing(self, step: str, total: int, missing: list[tuple[Key, str]]) -> tuple[str, str]:
        why, labels = "", []
        for key, label in missing:  # the first reason, with the items it applies to
            reason = self._why(key)
            why = why or reason
            if reason == why:
                labels.append(label)
        example = ", ".join(labels[:2]) + (", ..." if len(labels) > 2 else "")
        what = f"{step} did not: {len(labels)} of its {total} test(s) {why} ({example})"
        if why.startswith("were skipped"):
            return what, "see why they were skipped, fix it and rerun the whole plan"
        if why.startswith("have not run"):
            return what, "something ran the tests out of plan order: rerun without the plugin or option that did"
        return what, ("run the whole plan, deselecting no step before the last migration you mean to apply "
                      "(-m preflight alone checks without migrating)")

    def why_not(self, key: Key) -> str:
        """Why an item has not passed in this run, said of it: "skipped: <reason>", "deselected by -k 'x'", "not
        collected (...)" or "not run yet" (the evidence's verdicts say it too)."""
        if self.outcomes.get(key) == HELD:
            return f"skipped: {self.reasons.get(key, 'held back')}"
        if key in self.deselected:
            return f"deselected {self.deselected_by or 'by a plugin'}"
        if key not in self.collected or (self.selected is not None and key not in self.selected):
            by = f", {self.deselected_by}" if self.deselected_by else ""
            return f"not collected (the command line named part of the plan{by})"
        return NOT_RUN_YET

    def _why(self, key: Key) -> str:
        why = self.why_not(key)
        return "have not run yet" if why == NOT_RUN_YET else f"were {why}"
