"""The custom checks a plan's folder defines, read from their source (no database): which files and tests, and
the earliest step each can belong to when pytest did not collect it."""

from __future__ import annotations

from pathlib import Path

from pytest_phase4.plugin import customfiles

FIXTURES = {"migration_001_a": 2, "migration_002_b": 3}  # fixture -> step group (preflight 0, backup 1)
STEPS = {"preflight": 0, "backup": 1, "001_a.sql": 2, "002_b.sql": 3, "post": 4}


def module(tmp_path: Path, source: str) -> customfiles.Module:
    path = tmp_path / "test_x.py"
    path.write_text(source)
    return customfiles.read_module(path, (), ())


def earliest(found: customfiles.Module, conftest: bool = False) -> int:
    return customfiles.earliest(found, list(found.tests), FIXTURES, 2, STEPS.get, conftest)


def test_files_are_found_by_pytests_default_names_whatever_the_ini_says(tmp_path: Path) -> None:
    for name in ("test_a.py", "b_test.py", "check_c.py", "helpers.py", "sub/test_d.py", ".venv/test_e.py",
                 "build/test_f.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    found = [p.relative_to(tmp_path).as_posix() for p in customfiles.files_with_tests(tmp_path, ["check_*.py"])]
    assert found == ["b_test.py", "check_c.py", "sub/test_d.py", "test_a.py"]


def test_a_test_is_placed_no_earlier_than_the_latest_migration_it_asks_for(tmp_path: Path) -> None:
    found = module(tmp_path, "import pytest\n\n"
                             "@pytest.fixture\ndef test_data():\n    pass\n\n"
                             "def test_one(migration_001_a, migration_002_b, phase4_db):\n    pass\n\n"
                             "class TestViews:\n    def test_two(self, migration_002_b):\n        pass\n\n"
                             "class TestHelper:\n    def helper(self):\n        pass\n")
    assert found.tests == {"test_one": [frozenset({"migration_001_a", "migration_002_b", "phase4_db"})],
                           "TestViews": [frozenset({"self", "migration_002_b"})]}
    assert earliest(found) == 3
    assert earliest(module(tmp_path, "def test_one(phase4_db):\n    pass\n")) == 2  # a fixture may ask for 001
    assert earliest(module(tmp_path, "def test_one(migration_002_b):\n    pass\n"), conftest=True) == 0


def test_a_phase4_after_marker_places_a_test_only_where_its_source_says(tmp_path: Path) -> None:
    marked = "import pytest\n\n@pytest.mark.phase4_after({})\ndef test_one(migration_002_b):\n    pass\n"
    assert earliest(module(tmp_path, marked.format("'backup'"))) == 1
    assert earliest(module(tmp_path, marked.format("STEP"))) == 0  # not a literal: any step
    assert earliest(module(tmp_path, marked.format("'no such step'"))) == 0
    alias = "import pytest\n\nafter = pytest.mark.phase4_after\n\n@after('post')\ndef test_one():\n    pass\n"
    assert earliest(module(tmp_path, alias)) == 0
    assert earliest(module(tmp_path, "def test_one(:\n")) == 0  # does not parse: any step


def test_a_conftest_on_the_way_that_names_the_marker_may_place_any_test(tmp_path: Path) -> None:
    (tmp_path / "checks/sub").mkdir(parents=True)
    assert not customfiles.marker_in_conftests(tmp_path / "checks/sub", tmp_path)
    (tmp_path / "conftest.py").write_text("# item.add_marker(pytest.mark.phase4_after('preflight'))\n")
    assert customfiles.marker_in_conftests(tmp_path / "checks/sub", tmp_path)
    assert not customfiles.marker_in_conftests(tmp_path / "checks/sub", tmp_path / "checks")
