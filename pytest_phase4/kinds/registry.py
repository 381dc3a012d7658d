"""Every family of check kinds, imported once: each registers its kinds in kinds.base.KINDS as it is imported. The
plan reader imports this module, so a plan is validated against every kind; a new family is one more name here."""

from __future__ import annotations

from pytest_phase4.blast import checks as blast_checks
from pytest_phase4.kinds import commands, objects, perf, queries, readiness, relations, smoke
from pytest_phase4.kinds.base import KINDS
from pytest_phase4.rls import checks as rls_checks
from pytest_phase4.safety import checks as safety_checks

# Each registered its kinds in KINDS as it was imported.
FAMILIES = (relations, objects, queries, readiness, commands, smoke, perf, safety_checks, rls_checks, blast_checks)

__all__ = ["FAMILIES", "KINDS"]
