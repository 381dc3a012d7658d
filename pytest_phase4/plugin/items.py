"""The plan as pytest nodes: the plan file collects one collector per step, each holding its tests.

Tests are `pytest.Function` items built from small closures, so they get fixtures, markers and reporting
exactly like hand-written tests; their node ids read like the runbook:
`checks/phase4.toml::20250322000021_create_sales_views::view_exists[sales_with_details]`.
Each migration is a session fixture (`migration_<file name>`, ordering.py); its step's items use it.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from pytest_phase4.kinds.context import CheckSkipped, NoBaseline
from pytest_phase4.plan.blast import markers
from pytest_phase4.plan.model import CheckSpec, Migration, Step
from pytest_phase4.plugin.nodes import RUN_KEY, Phase4Item
from pytest_phase4.plugin.safety import rehearsal_items, rollback_collectors
from pytest_phase4.run import ALREADY, NOT_RUN
from pytest_phase4.safety.pins import PinBroken
from pytest_phase4.steps import REHEARSE_KEY, Key, StepBook, apply_key, check_key

GROUP_KEY = pytest.StashKey[int]()
IS_MIGRATION_KEY = pytest.StashKey[bool]()
SPEC_KEY = pytest.StashKey[CheckSpec]()  # the plan entry behind a check item (report attachments, evidence)

# Where an item stands in the runbook: its step (group), its rank in the step (APPLY first, then the plan's
# checks, then the custom checks placed after them; custom checks of the post stage come first there, so the
# plan's integrity checks see what they did), its key in the run's StepBook, and the migrations it needs.
APPLY, CHECKS, PLACED = 0, 1, 2


@dataclass(frozen=True)
class Place:
    group: int
    rank: int
    key: Key
    needs: tuple[str, ...] = ()  # migration fixtures to set up first; not applied means skipped


PLACE_KEY = pytest.StashKey[Place]()


def fixture_name(migration: Migration) -> str:
    """The session fixture of a migration: `migration_` and its file name without .sql, e.g.
    `migration_20250322000021_create_sales_views` (characters not allowed in a name become `_`)."""
    return "migration_" + re.sub(r"\W", "_", migration.name)


def check_function(spec: CheckSpec) -> Callable[..., None]:
    # The run comes from the config, not from the phase4_run fixture: a conftest may override a fixture, never
    # what the plan's own checks check with.
    def phase4_check(request: pytest.FixtureRequest, record_property: Callable[[str, object], None]) -> None:
        try:
            observed = request.config.stash[RUN_KEY].check(spec)
        except PinBroken as exc:
            stop(request.config, spec.step, exc)
        except CheckSkipped as exc:
            if isinstance(exc, NoBaseline):  # the evidence marks the run incomplete (promotion)
                record_property("no_baseline", True)
            pytest.skip(str(exc))
        record_property("observed", observed)

    phase4_check.__doc__ = f"{spec.kind}: {spec.test_id} ({spec.where})"
    return phase4_check


def stop(config: pytest.Config, step: str, exc: PinBroken) -> None:
    """A file the run relies on is not the one the evidence verified: the run halts there and the session ends
    before anything else runs (the line says which file, the sha256 expected and the one found)."""
    run = config.stash[RUN_KEY]
    run.record_failure(run.group_of(step), str(exc), is_migration=step != "preflight" and step != "post")
    pytest.exit(f"phase4: {exc}", returncode=pytest.ExitCode.TESTS_FAILED)


def migration_function(migration: Migration) -> Callable[..., None]:
    def phase4_migration(request: pytest.FixtureRequest, record_property: Callable[[str, object], None]) -> None:
        phase4_run = request.config.stash[RUN_KEY]
        state = phase4_run.ensure(migration)  # done already by the migration's fixture, in this item's setup
        record_property("sha256", state.sha256)
        if (error := phase4_run.errors.get(migration.file)) is not None:
            if isinstance(error, PinBroken):
                stop(request.config, migration.file, error)
            raise error
        if state.status == ALREADY:
            pytest.skip(f"already applied: {state.note}; verifying only")
        if state.status == NOT_RUN:
            pytest.skip(f"not applied: {state.note}")
        record_property("duration_ms", round(state.duration_ms or 0, 1))

    phase4_migration.__doc__ = f"apply {migration.file}: {migration.title}"
    return phase4_migration


def noting_it_ran(fn: Callable[..., Any], key: Key, book: StepBook) -> Callable[..., Any]:
    """The item's function, noting in the run's StepBook that it ran to its end (or skipped itself): a plugin that
    reports the test passed without calling it (-p no:python, a pytest_pyfunc_call of its own) passes nothing.
    Used for the plan's items and for custom checks alike."""
    book.watched.add(key)
    if inspect.iscoroutinefunction(fn):  # stays a coroutine function for the plugin that runs it (pytest-asyncio)
        @functools.wraps(fn)
        async def noted_async(*args: Any, **kwargs: Any) -> Any:
            try:
                result = await fn(*args, **kwargs)
            except pytest.skip.Exception:
                book.ran.add(key)
                raise
            book.ran.add(key)
            return result

        return noted_async

    @functools.wraps(fn)  # pytest reads the fixtures from the wrapped function's signature
    def noted(*args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except pytest.skip.Exception:
            book.ran.add(key)
            raise
        book.ran.add(key)
        return result

    return noted


class StepCollector(pytest.Collector):
    """A stage's checks, or one migration and its verify checks: a group that halting treats as one step."""

    def __init__(self, *, step: Step, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.specs, self.migration, self.group, self.stage = step.checks, step.migration, step.group, step.stage
        self.needs = (fixture_name(self.migration),) if self.migration is not None else ()
        if self.needs:  # every item of the step uses the migration's fixture (pytest's --setup-plan shows it)
            self.add_marker(pytest.mark.usefixtures(*self.needs))

    def collect(self) -> Iterator[pytest.Item]:
        position = 0
        if self.migration is not None:
            yield self._item("apply", migration_function(self.migration), position, self.migration.line, True,
                             apply_key(self.migration))
        for spec in self.specs:
            position += 1
            item = self._item(spec.test_id, check_function(spec), position, spec.line, False, check_key(spec))
            item.stash[SPEC_KEY] = spec
            yield item
        yield from rehearsal_items(self, position)

    def _item(self, name: str, fn: Callable[..., None], position: int, line: int, is_migration: bool,
              key: Key = REHEARSE_KEY) -> pytest.Item:
        book = self.config.stash[RUN_KEY].book
        item = Phase4Item.from_parent(self, name=name, callobj=noting_it_ran(fn, key, book))
        item.line = line
        for name in markers(self.stage):
            item.add_marker(getattr(pytest.mark, name))
        if self.migration is not None and self.migration.destructive:
            item.add_marker(pytest.mark.destructive)
        item.stash[GROUP_KEY] = self.group
        item.stash[IS_MIGRATION_KEY] = is_migration
        item.stash[PLACE_KEY] = Place(self.group, APPLY if is_migration else CHECKS, key, self.needs)
        return item


class PlanFile(pytest.File):
    def collect(self) -> Iterator[pytest.Collector]:
        if self.config.stash[RUN_KEY].safety.rollback:  # a rollback runs its own steps, not the plan's
            yield from rollback_collectors(self)
            return
        for step in self.config.stash[RUN_KEY].plan.steps:
            name = step.migration.name if step.migration else step.name
            yield StepCollector.from_parent(self, name=name, step=step)
