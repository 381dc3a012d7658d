"""Check kinds as objects: each family registers its kinds, each kind declares how it runs, and the example of
docs/adding-a-check-kind.md works as written there (validated without a database, run against a real one)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from helpers import REPO
from pytest_phase4.errors import CheckFailed
from pytest_phase4.kinds import context as checkcontext
from pytest_phase4.kinds import readiness
from pytest_phase4.kinds.base import Kind, register
from pytest_phase4.kinds.registry import KINDS
from pytest_phase4.plan.load import load_plan

DOC = REPO / "docs" / "adding-a-check-kind.md"


def test_every_kind_is_one_object_that_says_how_it_runs_and_is_documented() -> None:
    reference = (REPO / "docs" / "plan-reference.md").read_text()
    assert len(KINDS) >= 39
    for name, kind in KINDS.items():
        assert kind.name == name
        assert (kind.run is None) != (kind.run_whole is None), name
        assert kind.summary, name
        assert not kind.planned or f"`{name}`" in reference, f"{name} is missing from docs/plan-reference.md"
    assert {k.category for k in KINDS.values()} == {"", "Performance", "Tests Passed"}
    assert sorted(n for n, k in KINDS.items() if k.compares) == [
        "catalog_diff", "checksum_unchanged", "row_counts_match", "row_counts_unchanged"]
    with pytest.raises(AssertionError, match="declared twice"):
        register(KINDS["table_count"])


@pytest.fixture
def documented_kind() -> Iterator[Kind]:
    """The documentation's example, exec'd where it says it goes: at the end of readiness.py."""
    (code,) = [block for block in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S) if "register(" in block]
    scope: dict[str, Any] = dict(vars(readiness))
    exec(compile(code, str(DOC), "exec"), scope)
    yield KINDS["extensions_installed"]
    del KINDS["extensions_installed"]


def test_the_documented_example_kind_is_one_module_change(documented_kind: Kind, tmp_path: Path,
                                                          scratch_dsn: str) -> None:
    (toml,) = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)
    plan_file = tmp_path / "phase4.toml"
    plan_file.write_text('[phase4]\nname = "Doc"\n' + toml)
    plan = load_plan(plan_file, display="phase4.toml")
    assert [c.test_id for c in plan.preflight] == ["extensions_installed[pgcrypto]", "extensions_installed[pg_trgm]"]

    with psycopg.connect(scratch_dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pgcrypto")
        ctx = checkcontext.Context(conn, plan, lambda: checkcontext.BaselineCounts({}))
        assert re.fullmatch(r"extension pgcrypto [0-9.]+ installed", checkcontext.run_check(ctx, plan.preflight[0]))
        with pytest.raises(CheckFailed) as failed:
            checkcontext.run_check(ctx, plan.preflight[1])
    assert failed.value.fields()["expected"] == "extension pg_trgm installed"
    assert failed.value.fields()["found"] == "not installed"
    assert failed.value.fields()["plan"] == "phase4.toml:3 [[preflight]] #1 check=extensions_installed"
