"""What every item of the plugin shares: the run in the config's stash, and the item class whose failures print
expected/found/where instead of a Python traceback (the plan's steps, the rehearsal, the rollback's steps)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pytest_phase4.errors import CheckFailed, MigrationFailed, sql_error
from pytest_phase4.run import Phase4Run, Refused

RUN_KEY = pytest.StashKey[Phase4Run]()
ROLLBACK_STEP_KEY = pytest.StashKey[str]()  # the step of a --phase4-rollback item (evidence)


class Phase4Item(pytest.Function):
    """A step of the runbook; failures print expected/found/where instead of a Python traceback."""

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> Any:  # type: ignore[override]
        exc = excinfo.value
        run = self.config.stash[RUN_KEY]
        if isinstance(exc, CheckFailed | MigrationFailed):
            return run.target.scrub(exc.render())
        if isinstance(exc, Refused):
            return str(exc)
        if isinstance(exc, psycopg.Error):  # e.g. the connection was lost between two steps
            return run.target.scrub(sql_error(exc))
        return super().repr_failure(excinfo)

    line: int = 0  # plan line of the entry this item comes from

    def reportinfo(self) -> tuple[Any, int, str]:
        return self.path, max(self.line - 1, 0), self.nodeid.split("::", 1)[-1]
