"""The steps of each rollback mode, in order: each is one test of the report. No pytest here.

Every step from the first change to `commit` runs in the rollback's one transaction (rollback.begin); when a
step fails, the pytest layer calls rollback.abort and the database and the ledger stay as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pytest_phase4.errors import CheckFailed
from pytest_phase4.safety import restore_mode, revert_assess, revert_drop, revert_prove, rollback, rollback_sources
from pytest_phase4.safety.revert_apply import Reverter
from pytest_phase4.safety.rollback import RollbackState

if TYPE_CHECKING:
    from pytest_phase4.run import Phase4Run

Step = Callable[["Phase4Run", RollbackState], str]


def _reverter(run: Phase4Run, state: RollbackState) -> Reverter:
    rv = state.reverter
    assert rv is not None
    rv.conn = rollback.begin(run, state)
    return rv


def drop_created(run: Phase4Run, state: RollbackState) -> str:
    done = revert_drop.drop_created(_reverter(run, state))
    return f"dropped {len(done)} object(s) the plan created, none reaching anything else" + (
        f": {', '.join(done)}" if done else "")


def alter_back(run: Phase4Run, state: RollbackState) -> str:
    done = _reverter(run, state).alter_back()
    return f"{len(done)} object(s) altered back" + (f": {', '.join(done)}" if done else "")


def restore_dropped(run: Phase4Run, state: RollbackState) -> str:
    done = _reverter(run, state).restore_dropped()
    return f"{len(done)} object(s) back from the backup" + (f": {'; '.join(done)}" if done else "")


def prove_catalog(run: Phase4Run, state: RollbackState) -> str:
    total, wrong = revert_prove.prove_catalog(_reverter(run, state))
    if wrong:
        raise CheckFailed("every object the plan touched as it was before the plan", f"{len(wrong)} difference(s)",
                          "the database (not committed)", details=wrong[:40],
                          hint="the transaction was rolled back: nothing changed")
    return f"{total} object(s) the plan created, dropped or altered: each as it was before the plan"


def prove_values(run: Phase4Run, state: RollbackState) -> str:
    found = _reverter(run, state).prove_values()
    wrong = [f"{name}: {text}" for name, ok, text in found if not ok]
    if wrong:
        raise CheckFailed("every refilled column's values equal the backup's, for the rows it holds",
                          f"{len(wrong)} table(s) differ", "the database (not committed)", details=wrong,
                          hint="the transaction was rolled back: nothing changed")
    return ("values equal the backup's, by checksum: " + "; ".join(f"{n}: {t}" for n, _, t in found)
            if found else "no column to refill")


def prove_kept(run: Phase4Run, state: RollbackState) -> str:
    found = revert_prove.prove_kept(_reverter(run, state))
    wrong = [f"{name}: {text}" for name, ok, text in found if not ok]
    if wrong:
        raise CheckFailed("the rows of every table the revert touched unchanged by it", f"{len(wrong)} table(s) "
                          "changed", "the database (not committed)", details=wrong,
                          hint="the transaction was rolled back: nothing changed")
    return (f"{len(found)} table(s) touched by the revert hold the same rows as before it: "
            + "; ".join(f"{n}: {t}" for n, _, t in found)) if found else "no existing table was touched"


REVERT_STEPS: tuple[tuple[str, Step], ...] = (
    ("locate_backup", rollback_sources.locate),
    ("assess", revert_assess.assess_revert),
    ("safety_dump", rollback.safety_dump),
    ("drop_created", drop_created),
    ("alter_back", alter_back),
    ("restore_dropped", restore_dropped),
    ("ledger", rollback.ledger_step),
    ("prove_catalog", prove_catalog),
    ("prove_values", prove_values),
    ("prove_kept", prove_kept),
    ("commit", rollback.commit),
)
RESTORE_STEPS: tuple[tuple[str, Step], ...] = (
    ("locate_backup", rollback_sources.locate),
    ("assess", restore_mode.assess),
    ("safety_dump", rollback.safety_dump),
    ("drop_created", restore_mode.drop_extra),
    ("restore", restore_mode.restore),
    ("ledger", rollback.ledger_step),
    ("row_counts", lambda run, st: restore_mode.prove(run, st, "row_counts")),
    ("checksums", lambda run, st: restore_mode.prove(run, st, "checksums")),
    ("fingerprint", lambda run, st: restore_mode.prove(run, st, "fingerprint")),
    ("commit", rollback.commit),
)


def steps(mode: str) -> tuple[tuple[str, Step], ...]:
    return RESTORE_STEPS if mode == rollback.RESTORE else REVERT_STEPS
