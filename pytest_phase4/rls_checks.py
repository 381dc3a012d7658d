"""The row-level security kinds, which need the run (its changes records, its persona counts): `rls_exposure`
(exposure.py) and the `personas` checks a plan with [[persona]] gets (personas.py). No pytest here."""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg

from pytest_phase4 import checks, exposure, personas
from pytest_phase4.errors import CheckFailed
from pytest_phase4.planmodel import CheckSpec

if TYPE_CHECKING:
    from pytest_phase4.run import Phase4Run

KINDS = frozenset({"rls_exposure", "personas"})


def run_check(run: Phase4Run, spec: CheckSpec) -> str:
    try:
        if spec.kind == "rls_exposure":
            return exposure.rls_exposure(run.ro, run.plan, spec)
        return personas.check(run, spec)
    except CheckFailed as exc:
        exc.origin = exc.origin or spec.where
        raise
    except psycopg.Error as exc:
        raise CheckFailed(f"check {spec.test_id} to run", run.target.scrub(checks.sql_error(exc)), spec.where,
                          hint=spec.hint or checks.timeout_hint(exc, run.check_timeout)) from None
