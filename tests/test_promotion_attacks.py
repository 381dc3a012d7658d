"""Evidence that does not prove what it claims must not let a production run start: each attack on the gate of
--phase4-require-evidence (safety/promotion.py), checked without a database on a copy of the mini example."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from helpers import EXAMPLES
from pytest_phase4 import evidence_chain
from pytest_phase4.plan.files import plan_files
from pytest_phase4.plan.load import load_plan
from pytest_phase4.plan.model import Plan
from pytest_phase4.plugin.promotion import expected
from pytest_phase4.safety import promotion

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
HERE = {"host": "prod.example.com", "port": "5432", "dbname": "crm"}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    shutil.copytree(EXAMPLES / "mini", tmp_path, dirs_exist_ok=True)
    return tmp_path


def plan_of(root: Path) -> Plan:
    return load_plan(root / "checks/phase4.toml")


def staged(root: Path) -> dict[str, Any]:
    """What a green, complete staging run of the plan as it is now would have written."""
    plan = plan_of(root)
    files = plan_files(plan, root)
    by_name = {Path(f.path).name: f.sha256 for f in files if f.role == "migration"}
    return {"plan": {"name": plan.name, "path": "checks/phase4.toml", "sha256": plan.sha256}, "mode": "apply",
            "files": [f.to_json() for f in files],
            "selection": {"args": [], "markexpr": "", "keyword": "", "deselected": 0, "complete": True},
            "target": {"name": None, "host": "staging.example.com", "port": 5432, "dbname": "crm",
                       "system_identifier": "7312345678901234567"},
            "relied_on": None, "halted": None, "green": True,
            "started_at": (NOW - timedelta(hours=2)).isoformat(), "finished_at": (NOW - timedelta(hours=1)).isoformat(),
            "migrations": [{"file": m.file, "sha256": by_name[m.file], "status": "applied"} for m in plan.migrations],
            "checks": [{"id": f"checks/phase4.toml::{key}", "outcome": "passed", "message": "ok"}
                       for key in expected(plan)[0]]}


def gate(root: Path, text: str) -> str:
    """The gate's verdict on evidence `text` for a run of the plan in `root`: "" when it may start, else its line."""
    (root / "staging.json").write_text(text)
    plan = plan_of(root)
    try:
        promotion.check(root / "staging.json", "staging.json", plan.sha256, "phase4.toml", plan_files(plan, root),
                        timedelta(seconds=plan.evidence_max_age_s) if plan.evidence_max_age_s else None, NOW, HERE,
                        *expected(plan), may_skip=plan.may_skip)
    except promotion.PromotionRefused as exc:
        return str(exc)
    return ""


def sealed(doc: dict[str, Any]) -> str:
    return json.dumps(evidence_chain.seal(doc), indent=2)


def found(line: str) -> str:
    """The part of a refusal that says what was found."""
    assert line.startswith("--phase4-require-evidence=staging.json refused: "), line
    assert line.endswith(". Nothing was done (no connection made)"), line
    return line.removeprefix("--phase4-require-evidence=staging.json refused: ").split("; expected ")[0]


def test_honest_evidence_passes(root: Path) -> None:
    assert gate(root, sealed(staged(root))) == ""


def test_a_key_twice_cannot_say_two_things(root: Path) -> None:
    # sealed over what json.loads keeps (the last "green"); the first says what the run was
    doc = staged(root)
    text = sealed(doc).replace('"green": true', '"green": false, "green": true', 1)
    assert found(gate(root, text)) == ("it is not evidence this run can trust: the key 'green' appears twice in one "
                                       "object (a JSON reader keeps one of them, so the file can say two things)")


def test_nan_is_no_number(root: Path) -> None:
    text = sealed(staged(root)).replace('"deselected": 0', '"deselected": NaN')
    assert found(gate(root, text)) == "it is not evidence this run can trust: NaN is not a JSON number"


def test_a_files_list_that_leaves_a_file_out_is_refused(root: Path) -> None:
    doc = staged(root)
    doc["files"] = [f for f in doc["files"] if f["role"] != "setup"]
    assert found(gate(root, sealed(doc))) == ("setup/schema.sql (setup) is not in the files the staging run verified "
                                              "(added since, or renamed)")


def test_flags_are_worked_out_again_not_trusted(root: Path) -> None:
    doc = staged(root)
    doc["checks"].append({"id": "checks/phase4.toml::post::row_counts_unchanged[sales]", "outcome": "failed",
                          "message": "expected 100, found 99"})
    assert found(gate(root, sealed(doc))) == ("the staging run was not green: checks/phase4.toml::post::"
                                              "row_counts_unchanged[sales] failed (expected 100, found 99)")
    doc = staged(root)
    doc["checks"][-1] |= {"outcome": "skipped", "no_baseline": True}
    assert found(gate(root, sealed(doc))) == ("the staging run was not complete: checks/phase4.toml::post::"
                                              "view_rowcount_matches[sales_with_details=sales] skipped for want of a "
                                              "baseline")
    doc = staged(root)
    doc["migrations"][1]["status"] = "not run"
    assert found(gate(root, sealed(doc))).startswith("the staging run was not green: migration "
                                                     "20250101000002_drop_denormalized.sql not run")


@pytest.mark.parametrize("mode", ["verify_only", "rehearsal", "rollback", "embedded"])
def test_evidence_of_a_run_that_applied_nothing_is_refused(root: Path, mode: str) -> None:
    doc = staged(root) | {"mode": mode}
    assert found(gate(root, sealed(doc))) == f"it is the evidence of {promotion.MODE_WORDS[mode]}"


def test_future_and_naive_times_are_refused(root: Path) -> None:
    doc = staged(root) | {"finished_at": (NOW + timedelta(days=1)).isoformat()}
    assert found(gate(root, sealed(doc))) == ("it says the staging run finished at 2026-12-01T12:00:00+00:00, 1 d "
                                              "after this machine's time (2026-11-30T12:00:00+00:00)")
    doc = staged(root) | {"finished_at": "2026-11-30T11:00:00"}
    assert found(gate(root, sealed(doc))).startswith("its times are not a run's")


def test_the_plan_sets_the_age_limit(root: Path) -> None:
    plan = root / "checks/phase4.toml"
    plan.write_text(plan.read_text() + '\n[promotion]\nevidence_max_age = "30min"\n')
    assert found(gate(root, sealed(staged(root)))) == ("it is 1 h old (the staging run finished "
                                                       "2026-11-30T11:00:00+00:00)")


def test_a_helper_module_a_check_imports_is_part_of_the_evidence(root: Path) -> None:
    # the custom check's own file is unchanged; what it asserts lives in a module beside the plan's folder
    (root / "checks/test_tenants.py").write_text("from rules import LIMIT\n\n\ndef test_limit():\n"
                                                  "    assert LIMIT == 3\n")
    (root / "rules.py").write_text("LIMIT = 3\n")
    (root / "conftest.py").write_text("import pytest\n")
    doc = staged(root)
    assert {(f["path"], f["role"]) for f in doc["files"]} >= {
        ("test_tenants.py", "check"), ("../rules.py", "python"), ("../conftest.py", "conftest")}
    text = sealed(doc)
    (root / "rules.py").write_text("LIMIT = 0\n")
    assert found(gate(root, text)).startswith("../rules.py (python) differs from the file the staging run verified")
    (root / "rules.py").write_text("LIMIT = 3\n")
    (root / "conftest.py").write_text("import pytest  # changed\n")
    assert found(gate(root, text)).startswith("../conftest.py (conftest) differs from the file the staging run")


def test_a_migration_folder_moved_by_the_environment_is_another_set_of_files(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = root / "checks/phase4.toml"
    plan.write_text(plan.read_text().replace('migrations_dir = "migrations"', 'migrations_dir = "${MIGDIR}"'))
    monkeypatch.setenv("MIGDIR", "migrations")
    text = sealed(staged(root))
    shutil.copytree(root / "checks/migrations", root / "elsewhere")
    (root / "elsewhere/20250101000002_drop_denormalized.sql").write_text("DROP TABLE sales;\n")
    monkeypatch.setenv("MIGDIR", "../elsewhere")
    assert found(gate(root, text)) == ("../elsewhere/20250101000001_create_views.sql (migration) is not in the files "
                                       "the staging run verified (added since, or renamed)")


def test_a_symlinked_migration_is_hashed_by_what_it_points_to(root: Path) -> None:
    migration = root / "checks/migrations/20250101000003_add_indexes.sql"
    (root / "real.sql").write_text(migration.read_text())
    migration.unlink()
    os.symlink(root / "real.sql", migration)
    text = sealed(staged(root))
    assert gate(root, text) == ""
    (root / "other.sql").write_text("DROP TABLE customers CASCADE;\n")
    migration.unlink()
    os.symlink(root / "other.sql", migration)
    assert found(gate(root, text)).startswith("migrations/20250101000003_add_indexes.sql (migration) differs from")


def test_a_migration_applied_with_other_bytes_than_its_files_list_says(root: Path) -> None:
    doc = staged(root)
    doc["migrations"][0]["sha256"] = "0" * 64  # changed while the staging run ran, after it listed the files
    assert found(gate(root, sealed(doc))).startswith("migration 20250101000001_create_views.sql was applied on "
                                                     "staging with sha256 000000000000, this run's file has ")


def test_the_plans_age_key_is_validated(root: Path) -> None:
    plan = root / "checks/phase4.toml"
    plan.write_text(plan.read_text() + '\n[promotion]\nevidence_max_age = 72\nmax_age = "1h"\n')
    with pytest.raises(Exception) as failed:
        plan_of(root)
    text = str(failed.value)
    assert "[promotion]: unknown key 'max_age'; expected one of ['evidence_max_age', 'may_skip']" in text
    assert ('[promotion]: evidence_max_age must be a positive duration in minutes, hours or days, e.g. "90min", '
            '"72h" or "7d"; found 72') in text


def test_sealing_is_canonical(root: Path) -> None:
    doc = staged(root)
    assert evidence_chain.content_sha256(doc) == evidence_chain.content_sha256(json.loads(json.dumps(doc, indent=4)))
    assert evidence_chain.seal({"x": float("nan")}) == {"x": None, "content_sha256": evidence_chain.content_sha256(
        {"x": None})}




def test_evidence_that_leaves_a_check_or_migration_out_proves_nothing_of_it(root: Path) -> None:
    doc = staged(root)
    doc["checks"] = [c for c in doc["checks"] if "no_orphans" not in c["id"]]
    assert found(gate(root, sealed(doc))) == ("it holds no verdict for the plan's check "
                                              "post::no_orphans[sales.customer_id->customers.id]")
    doc = staged(root)
    doc["migrations"].pop()
    assert found(gate(root, sealed(doc))) == ("it holds no verdict for the plan's migration "
                                              "20250101000003_add_indexes.sql")


def test_a_script_a_command_check_runs_is_part_of_the_evidence(root: Path) -> None:
    plan = root / "checks/phase4.toml"
    plan.write_text(plan.read_text() + '\n[[post]]\ncheck = "command"\nrun = "bash scripts/verify.sh --strict"\n')
    (root / "checks/scripts").mkdir()
    (root / "checks/scripts/verify.sh").write_text("test -s /etc/hostname\n")
    text = sealed(staged(root))
    (root / "checks/scripts/verify.sh").write_text("exit 0\n")
    assert found(gate(root, text)).startswith("scripts/verify.sh (command) differs from the file the staging run "
                                              "verified")
