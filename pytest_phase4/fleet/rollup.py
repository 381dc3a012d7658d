"""The fleet's roll-up: one summary line and fleet.json, from every target's outcome. No pytest here."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pytest_phase4 import evidence_chain
from pytest_phase4.fleet.child import MIGRATED, Outcome

NOT_REPORTED = "not reported"
UNREPORTED = ("no outcome came back: its worker ended first (a crash, -x, Ctrl-C); its own run may have gone on "
              "after that: read the evidence in its folder before running it again")


def summary_line(outcomes: list[Outcome], expected: int) -> str:
    """"18 migrated, 1 halted at preflight, 1 halted at 2025..._index.sql": counts by verdict and step, migrated
    first, then in the order the targets are listed; targets with no outcome at all are counted as not reported."""
    counts: dict[str, int] = {}
    for o in sorted(outcomes, key=lambda o: o.verdict != MIGRATED):
        key = o.verdict + (f" at {o.step}" if o.step and o.verdict != MIGRATED else "")
        counts[key] = counts.get(key, 0) + 1
    if missing := expected - len(outcomes):
        counts[NOT_REPORTED] = missing
    return ", ".join(f"{n} {what}" for what, n in counts.items()) or "no target ran"


def document(plan: str, plan_sha256: str, targets: list[str], outcomes: list[Outcome], canary: int, run_id: str,
             summary: str) -> dict[str, Any]:
    """The roll-up of the session's targets (those selected), in the file's order."""
    by_name = {o.name: o for o in outcomes}
    rows = [by_name[n].to_json() if n in by_name else {"name": n, "verdict": NOT_REPORTED, "reason": UNREPORTED}
            for n in targets]
    doc: dict[str, Any] = {"plan": plan, "plan_sha256": plan_sha256, "run_id": run_id,
                           "written_at": datetime.now(UTC).isoformat(), "canary": canary, "summary": summary,
                           "targets": rows}
    doc["content_sha256"] = evidence_chain.content_sha256(doc)  # the evidence's own recipe
    return doc


def write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
