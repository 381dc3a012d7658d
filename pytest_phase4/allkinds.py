"""Every family of check kinds, imported once: each registers its kinds in kinds.KINDS as it is imported. The plan
reader imports this module, so a plan is validated against every kind; a new family is one more name here."""

from __future__ import annotations

from pytest_phase4 import (  # noqa: F401  (imported for their registrations)
    blast_checks,
    checks,
    commands,
    objects,
    perf,
    queries,
    readiness,
    rls_checks,
    safety,
    smoke,
)
from pytest_phase4.kinds import KINDS

__all__ = ["KINDS"]
