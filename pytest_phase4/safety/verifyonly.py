"""--phase4-verify-only: the plan's checks before and after migrations that another tool applies (`supabase db
push`, Flyway, psql). Nothing is applied. A migration the ledger lists is applied; any other counts as applied when
the plan's checks of it verify against the database, and Supabase's history table, where the target has one,
lists it too; the rest are not applied. No pytest here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_phase4.db import ledger
from pytest_phase4.errors import CheckFailed
from pytest_phase4.kinds.base import KINDS
from pytest_phase4.kinds.context import CheckSkipped

if TYPE_CHECKING:
    from pytest_phase4.plan.model import Migration
    from pytest_phase4.run import Phase4Run

HISTORY = "supabase_migrations.schema_migrations"


def probe(run: Phase4Run) -> None:
    """Set each migration's state from the database, last first: a check that describes the state right after its
    own migration (view_count) is not checkable once a later one is applied, which is known by then."""
    from pytest_phase4.run import ALREADY, NOT_RUN, REFUSED

    history = ledger.supabase_versions(run.ro)
    for migration in reversed(run.plan.migrations):
        state = run.states[migration.file]
        if state.status == ALREADY:  # the ledger lists it: its checks run as for any applied migration
            continue
        passed, failed = _checks_of(run, migration)
        version = ledger.supabase_version(migration.file)
        checks = (f"its {len(passed)} check(s) verify" if passed and not failed else
                  f"{failed[0]}" if failed else "the plan has no check of it that can verify it")
        if history is not None and version in history:
            state.status, state.note = ALREADY, f"by another tool: {HISTORY} lists {version}; {checks}"
        elif history is not None:
            state.status, state.note = NOT_RUN, f"verification only: {HISTORY} does not list {version}" + (
                f" (though its {len(passed)} check(s) verify)" if passed and not failed else "")
        elif passed and not failed:
            state.status, state.note = ALREADY, (f"by another tool: its {len(passed)} check(s) verify against the "
                                                 "database (no ledger or migration history lists it)")
        else:
            state.status, state.note = NOT_RUN, f"verification only: {checks}"
        if state.status == ALREADY:
            run.verified.add(migration.file)
    run.end_reads()
    applied = [m for m in run.plan.migrations if run.states[m.file].applied]
    for migration in run.plan.migrations:
        state = run.states[migration.file]
        later = [m.file for m in applied if m.index > migration.index]
        if state.status == NOT_RUN and later:
            state.status = REFUSED
            state.note = (f"{migration.file} is not applied ({state.note.removeprefix('verification only: ')}), yet "
                          f"{later[0]}, after it in the plan, is: the migrations were applied out of plan order, or "
                          "its checks do not hold; find out which before going on")


def _checks_of(run: Phase4Run, migration: Migration) -> tuple[list[str], list[str]]:
    """The migration's plan checks run now: those that passed, and each failure as 'check id: what was found'."""
    passed, failed = [], []
    for spec in migration.checks:
        if not KINDS[spec.kind].state:  # a comparison, a program, a request, a timing, the environment
            continue
        try:
            run.check(spec)
        except CheckSkipped:
            continue
        except CheckFailed as exc:
            failed.append(f"{spec.test_id} fails: expected {exc.expected}, found {exc.found}")
            continue
        passed.append(spec.test_id)
    return passed, failed


def unverifiable(run: Phase4Run, group: int) -> str | None:
    """Why an item after the last migration (post, smoke) cannot be verified yet, or None."""
    last = run.plan.migrations[-1].file if run.plan.migrations else None
    if not run.verify_only or last is None or group <= run.group_of(last):
        return None
    missing = [f for f, s in run.states.items() if not s.applied]
    if not missing:
        return None
    return (f"verification only: {len(missing)} migration(s) of the plan not applied ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}): the checks after them describe the state they leave")
