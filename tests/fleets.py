"""What the fleet tests share (tests/test_fleet.py, tests/test_fleet_attacks.py): N tenant databases of the fleet
example on the session's server, the project that runs them, and the roll-up it wrote. The `fleet` fixture that
makes them is in conftest.py."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from helpers import EXAMPLES
from pytest_phase4.db.embedded import EmbeddedPostgres

FILES = ["20250101000001_create_views.sql", "20250101000002_drop_denormalized.sql",
         "20250101000003_index_tickets.sql"]
SECRET = "s3cr3t-fleet-pw"  # in every DSN (trust auth ignores it): it must appear in no file the fleet writes


class Fleet:
    """N tenant databases on the session's server, each loaded with the fleet example's schema, and the project."""

    def __init__(self, pytester: pytest.Pytester, server: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch,
                 count: int) -> None:
        self.pytester, self.server = pytester, server
        token = uuid.uuid4().hex[:8]
        self.template = f"fleet_{token}_template"
        dsn = server.create_database(self.template)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute((EXAMPLES / "fleet" / "checks" / "setup" / "schema.sql").read_bytes())
        self.names = [f"tenant_{i:02d}" for i in range(1, count + 1)]
        self.dbs = {name: f"fleet_{token}_{name}" for name in self.names}
        self.dsns = {name: make_conninfo(server.create_database(db, template=self.template), password=SECRET)
                     for name, db in self.dbs.items()}
        for name, value in self.dsns.items():
            monkeypatch.setenv(f"FLEET_{name.upper()}_DSN", value)
        shutil.copytree(EXAMPLES / "fleet", pytester.path, dirs_exist_ok=True)
        (pytester.path / "pyproject.toml").write_text("[tool.pytest.ini_options]\ninitial_sort = \"original\"\n")

    def targets_file(self, extra: str = "", after: str = "") -> Path:
        text = "".join(f'[[target]]\nname = "{n}"\ndsn_env = "FLEET_{n.upper()}_DSN"\n\n' for n in self.names)
        path = self.pytester.path / "fleet.toml"
        path.write_text(extra + text + after)
        return path

    def run(self, *args: str) -> pytest.RunResult:
        return self.pytester.runpytest("--phase4", "-p", "no:cacheprovider", "-p", "no:randomly",
                                       "--phase4-targets=fleet.toml", *args)

    def query(self, name: str, text: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsns[name], autocommit=True) as conn:
            return conn.execute(text.encode(), params or None).fetchall()

    def execute(self, name: str, text: str) -> None:
        with psycopg.connect(self.dsns[name], autocommit=True) as conn:
            conn.execute(text.encode())

    def ledger(self, name: str) -> list[str]:
        if self.query(name, "SELECT to_regclass('pytest_phase4.ledger')") == [(None,)]:
            return []
        return [r[0] for r in self.query(name, "SELECT file FROM pytest_phase4.ledger ORDER BY file")]

    def has_column(self, name: str, table: str, column: str) -> bool:
        return bool(self.query(name, "SELECT 1 FROM information_schema.columns WHERE table_name = %s AND "
                                     "column_name = %s", (table, column)))

    def has_index(self, name: str, index: str) -> bool:
        return self.query(name, "SELECT to_regclass(%s) IS NOT NULL", (index,)) == [(True,)]

    def written(self) -> str:
        """Every file the fleet wrote (reports, evidence, roll-up, JUnit, backups), as text."""
        found = []
        for folder in ("reports", "_backups"):
            for path in sorted((self.pytester.path / folder).rglob("*")):
                if path.is_file():
                    found.append(path.read_bytes().decode("utf-8", "replace"))
        return "\n".join(found)

    def drop(self) -> None:
        for db in [*self.dbs.values(), self.template]:
            self.server.drop_database(db)


def rollup(f: Fleet) -> dict[str, Any]:
    found = sorted((f.pytester.path / "reports").glob("fleet-*/fleet.json"))
    assert len(found) == 1
    doc: dict[str, Any] = json.loads(found[0].read_text())
    return doc
