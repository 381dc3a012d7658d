"""The row-level security kinds, which need the run (its changes records, its persona counts): `rls_exposure`
(exposure.py) and the `personas` checks a plan with [[persona]] gets (personas.py). No pytest here."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import psycopg

from pytest_phase4.errors import CheckFailed, sql_error, timeout_hint
from pytest_phase4.kinds.base import Kind, Param, register
from pytest_phase4.plan.model import CheckSpec
from pytest_phase4.plan.rls import PERSONA_KIND
from pytest_phase4.rls import exposure, personas

if TYPE_CHECKING:
    from pytest_phase4.run import Phase4Run


def _guarded(fn: Callable[[Phase4Run, CheckSpec], str]) -> Callable[[Any, CheckSpec], str]:
    @functools.wraps(fn)
    def run_check(run: Phase4Run, spec: CheckSpec) -> str:
        try:
            return fn(run, spec)
        except CheckFailed as exc:
            exc.origin = exc.origin or spec.where
            raise
        except psycopg.Error as exc:
            raise CheckFailed(f"check {spec.test_id} to run", run.target.scrub(sql_error(exc)), spec.where,
                              hint=spec.hint or timeout_hint(exc, run.check_timeout)) from None

    return run_check


def _scope(params: Mapping[str, Any]) -> str | None:
    return None if params["scope"] in ("plan", "schemas") else 'scope must be "plan" or "schemas"'


register(
    Kind("rls_exposure", "nothing the plan created or changed exposes rows to a role subject to row-level security "
         "(Supabase's splinter lints 0007, 0008, 0010, 0011, 0013, 0015, 0016, 0017, 0024, 0028/0029)",
         {"scope": Param("str", False, "plan"), "allow": Param("names", False, ())},
         label_fn=lambda p, _: str(p["scope"]), constraint=_scope, stages=("preflight", "migration", "post"),
         stage_reason="it reads what the migrations created or changed: list it in preflight, a migration's verify "
                      "checks or post",
         run_whole=_guarded(lambda run, spec: exposure.rls_exposure(run.ro, run.plan, spec))),
    # the plan adds one at the end of preflight and of each migration for its [[persona]] entries (rlsplan.py):
    # the personas read in a snapshot of their own
    Kind(PERSONA_KIND, "what each persona sees of every relation of the exposed schemas widens nowhere",
         {"personas": Param("names")}, run_whole=_guarded(personas.check), planned=False),
)
