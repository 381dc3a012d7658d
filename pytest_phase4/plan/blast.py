"""The plan's blast-radius entries: `[[blast_radius]]` checks and `[[app_queries]]` (no database, no pytest).

`[[app_queries]]` entries become `app_queries` checks of the blast_radius stage, as `[[perf]]` entries become
perf checks; every blast-radius check is asked again in post, on the migrated database, unless its
`confirm_after = false`. (That the blast-radius kinds belong in `[[blast_radius]]` only is their `Kind.stages`.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_phase4.plan.model import CheckSpec

STAGE = "blast_radius"
MARKERS = {STAGE: (STAGE, "preflight")}  # read-only and nothing migrated: part of the CI gate -m preflight


def markers(stage: str) -> tuple[str, ...]:
    """The pytest markers of a stage's items."""
    return MARKERS.get(stage, (stage,))


def add_blast(r: Any, entries: Any, stages: dict[str, tuple[CheckSpec, ...]],
              stage_of: Callable[..., tuple[CheckSpec, ...]]) -> None:
    """`r` is the plan's reader (problems with file:line), `stage_of` how plan.py reads a stage's entries."""
    if not isinstance(entries, list) or any(isinstance(e, dict) and "check" in e for e in entries):
        r.problem(r.display, "app_queries must be an array of tables without a check key: [[app_queries]] with "
                             'file = "queries/*.sql", or with name = "..." and query = "SELECT ..."')
        return
    marked = [{**e, "check": "app_queries"} if isinstance(e, dict) else e for e in entries]
    stages[STAGE] = (*stages[STAGE], *stage_of(r, marked, STAGE, STAGE, "app_queries", ()))
    twins = [replace(s, stage="post", step="post") for s in stages[STAGE] if s.params.get("confirm_after")]
    stages["post"] = (*twins, *stages["post"])
