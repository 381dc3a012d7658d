"""The plan as pytest nodes: the plan file collects one collector per step, each holding its tests.

Tests are `pytest.Function` items built from small closures, so they get fixtures, markers and reporting
exactly like hand-written tests; their node ids read like the runbook:
`checks/phase4.toml::20250322000021_create_sales_views::view_exists[sales_with_details]`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from pytest_phase4.checks import sql_error
from pytest_phase4.errors import CheckFailed, MigrationFailed
from pytest_phase4.plan import CheckSpec, Migration, Step
from pytest_phase4.run import ALREADY, Phase4Run, Refused

RUN_KEY = pytest.StashKey[Phase4Run]()
GROUP_KEY = pytest.StashKey[int]()
IS_MIGRATION_KEY = pytest.StashKey[bool]()
SPEC_KEY = pytest.StashKey[CheckSpec]()  # the plan entry behind a check item (report attachments, evidence)
ORDER_STRIDE = 100_000  # order numbers: group * stride + position, so custom checks can slot in after a step


def check_function(spec: CheckSpec) -> Callable[..., None]:
    def phase4_check(phase4_run: Phase4Run, record_property: Callable[[str, object], None]) -> None:
        from pytest_phase4.checks import CheckSkipped

        try:
            observed = phase4_run.check(spec)
        except CheckSkipped as exc:
            pytest.skip(str(exc))
        record_property("observed", observed)

    phase4_check.__doc__ = f"{spec.kind}: {spec.test_id} ({spec.where})"
    return phase4_check


def migration_function(migration: Migration) -> Callable[..., None]:
    def phase4_migration(phase4_run: Phase4Run, record_property: Callable[[str, object], None]) -> None:
        state = phase4_run.migrate(migration)
        record_property("sha256", state.sha256)
        if state.status == ALREADY:
            pytest.skip(f"already applied: {state.note}; verifying only")
        record_property("duration_ms", round(state.duration_ms or 0, 1))

    phase4_migration.__doc__ = f"apply {migration.file}: {migration.title}"
    return phase4_migration


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


class StepCollector(pytest.Collector):
    """A stage's checks, or one migration and its verify checks: a group that halting treats as one step."""

    def __init__(self, *, step: Step, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.specs, self.migration, self.group, self.stage = step.checks, step.migration, step.group, step.stage

    def collect(self) -> Iterator[pytest.Item]:
        position = 0
        if self.migration is not None:
            yield self._item("apply", migration_function(self.migration), position, self.migration.line, True)
        for spec in self.specs:
            position += 1
            item = self._item(spec.test_id, check_function(spec), position, spec.line, False)
            item.stash[SPEC_KEY] = spec
            yield item
        from pytest_phase4.safety_plugin import rehearsal_items  # imports this module

        yield from rehearsal_items(self, position)

    def _item(self, name: str, fn: Callable[..., None], position: int, line: int, is_migration: bool) -> pytest.Item:
        item = Phase4Item.from_parent(self, name=name, callobj=fn)
        item.line = line
        item.add_marker(getattr(pytest.mark, self.stage))
        if self.migration is not None and self.migration.destructive:
            item.add_marker(pytest.mark.destructive)
        item.add_marker(pytest.mark.order(self.group * ORDER_STRIDE + position))
        item.stash[GROUP_KEY] = self.group
        item.stash[IS_MIGRATION_KEY] = is_migration
        return item


class PlanFile(pytest.File):
    def collect(self) -> Iterator[pytest.Collector]:
        if self.config.stash[RUN_KEY].safety.rollback:  # a rollback runs its own steps, not the plan's
            from pytest_phase4.safety_plugin import rollback_collectors

            yield from rollback_collectors(self)
            return
        for step in self.config.stash[RUN_KEY].plan.steps:
            name = step.migration.name if step.migration else step.name
            yield StepCollector.from_parent(self, name=name, step=step)
