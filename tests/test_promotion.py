"""Promotion on evidence (--phase4-require-evidence): a production run starts only on the JSON evidence of a green,
complete staging run of the same plan and files on another database, recent enough; otherwise one line, and
nothing done to production (checked outside the plugin: no schema seeded, no ledger, no backup)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from helpers import Project
from pytest_phase4 import evidence_chain
from pytest_phase4.db.embedded import EmbeddedPostgres

_names = itertools.count(1)
REQUIRE = "--phase4-require-evidence=staging.json"


@pytest.fixture
def staging_dsn(pg_server: EmbeddedPostgres) -> Iterator[str]:
    """A second database: the staging environment (production is the project's own scratch database)."""
    name = f"staging_{next(_names)}"
    yield pg_server.create_database(name)
    pg_server.drop_database(name)


def staging_run(p: Project, dsn: str, *args: str, seed: bool = True) -> dict:
    result = p.run("--phase4-confirm-destructive", "--phase4-json=staging.json", *args, f"--dsn={dsn}",
                   *(["--phase4-seed"] if seed else []), dsn=False)
    result.stdout.fnmatch_lines([f"phase4 evidence (JSON): {p.path / 'staging.json'}"])
    return json.loads((p.path / "staging.json").read_text())


def untouched(p: Project) -> None:
    """Production as it was: no table seeded, no ledger, no backup folder."""
    assert p.query("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                   " WHERE n.nspname IN ('public', 'pytest_phase4')") == [(0,)]
    assert p.query("SELECT to_regnamespace('pytest_phase4')") == [(None,)]
    assert not (p.path / "_backups").exists()


def refused(p: Project, *args: str, dsn: bool = True) -> str:
    """The production run refused: exit 4, one line on stderr; the line returned."""
    result = p.run(REQUIRE, "--phase4-confirm-destructive", *args, seed=dsn, dsn=dsn)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    lines = [line for line in result.errlines if "phase4-require-evidence" in line]
    assert len(lines) == 1, result.errlines
    untouched(p)
    return lines[0].removeprefix("ERROR: ")


def reseal(path: Path, edit: Callable[[dict], None]) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(evidence_chain.seal(doc), indent=2))


def test_staging_evidence_lets_production_start_and_every_refusal_changes_nothing(
        project: Callable[..., Project], staging_dsn: str) -> None:
    p = project("mini")
    staged = staging_run(p, staging_dsn)
    assert staged["green"] is True
    assert staged["mode"] == "apply"
    assert staged["selection"]["complete"] is True
    assert staged["selection"]["deselected"] == 0
    assert staged["plan"]["path"] == "checks/phase4.toml"
    assert {(f["path"], f["role"]) for f in staged["files"]} == {
        ("phase4.toml", "plan"), ("setup/schema.sql", "setup"),
        *((f"migrations/{m['file']}", "migration") for m in staged["migrations"])}
    assert staged["target"]["dbname"] == staging_dsn.rsplit("dbname=", 1)[1].split()[0]
    assert staged["target"]["system_identifier"].isdigit()
    assert "password" not in json.dumps(staged["target"])
    assert staged["content_sha256"] == evidence_chain.content_sha256(staged)
    evidence = p.path / "staging.json"
    kept = evidence.read_text()
    sha = staged["content_sha256"][:12]

    # the same database as the staging run, named as staging named it: refused before connecting
    assert refused(p, f"--dsn={staging_dsn}", dsn=False) == (
        f"--phase4-require-evidence=staging.json refused: it is the evidence of this same database (database "
        f"{staged['target']['dbname']} on {staged['target']['host']}:{staged['target']['port']}); expected the "
        "evidence of another environment (staging), so that production is not its own proof; give the staging "
        "run's evidence. Nothing was done (no connection made)")
    # ... and reached by another name (the evidence's host differs): told by the cluster once connected
    reseal(evidence, lambda d: d["target"].update(host="staging.example.com"))
    assert refused(p, f"--dsn={staging_dsn}", dsn=False).startswith(
        "--phase4-require-evidence=staging.json refused: it is the evidence of this same database (database "
        f"{staged['target']['dbname']} of the cluster with system identifier {staged['target']['system_identifier']}"
        "); expected")
    assert p.query("SELECT count(*) FROM pg_database WHERE datname = %s", (staged["target"]["dbname"],)) == [(1,)]

    # an edited evidence file: one check's outcome flipped, its content_sha256 kept
    evidence.write_text(kept.replace('"outcome": "passed"', '"outcome": "failed"', 1))
    assert refused(p).startswith(
        f"--phase4-require-evidence=staging.json refused: its content does not match its content_sha256: it states "
        f"{sha}, the content hashes to ")
    evidence.write_text(kept)

    # an edited migration file
    migration = p.path / "checks/migrations/20250101000003_add_indexes.sql"
    original = migration.read_text()
    migration.write_text(original + "\nCREATE INDEX idx_sales_value ON sales (value);\n")
    assert refused(p) == (
        "--phase4-require-evidence=staging.json refused: migrations/20250101000003_add_indexes.sql (migration) "
        f"differs from the file the staging run verified: sha256 "
        f"{next(m['sha256'] for m in staged['migrations'] if m['file'].endswith('indexes.sql'))[:12]} there, "
        f"{evidence_chain.hashlib.sha256(migration.read_bytes()).hexdigest()[:12]} here; expected every file the run "
        "depends on the same as in the staging run (sha256); run the plan on staging with these files and give its "
        "evidence, or restore the files staging verified (version control). Nothing was done (no connection made)")
    migration.write_text(original)

    # a different plan (one title changed)
    plan = p.path / "checks/phase4.toml"
    text = plan.read_text()
    plan.write_text(text.replace('title = "Add performance indexes"', 'title = "Add indexes"'))
    assert refused(p).startswith(
        f"--phase4-require-evidence=staging.json refused: it is the evidence of another plan: checks/phase4.toml "
        f"sha256 {staged['plan']['sha256'][:12]} there, phase4.toml sha256 ")
    plan.write_text(text)

    # too old: the same evidence, eight days on (the plan sets no limit: 7 days)
    def aged(d: dict) -> None:
        for key in ("started_at", "finished_at"):
            d[key] = (datetime.fromisoformat(d[key]) - timedelta(days=8)).isoformat()

    reseal(evidence, aged)
    assert refused(p).startswith("--phase4-require-evidence=staging.json refused: it is 8 d old (the staging run "
                                 "finished ")
    assert "; expected evidence at most 7 d (the default; set [promotion] evidence_max_age) old;" in refused(p)
    evidence.write_text(kept)

    # a migration changed after the gate checked it, before it is applied (a plugin the files do not list)
    (p.path / "plugins").mkdir()
    (p.path / "plugins/swap.py").write_text(
        "from pathlib import Path\n\n\ndef pytest_collection_finish(session):\n"
        "    f = Path('checks/migrations/20250101000001_create_views.sql')\n"
        "    f.write_text(f.read_text() + '\\nDROP TABLE tickets;\\n')\n")
    p.pytester.syspathinsert(p.path / "plugins")
    views = (p.path / "checks/migrations/20250101000001_create_views.sql").read_text()
    result = p.run(REQUIRE, "--phase4-confirm-destructive", "-p", "swap", seed=True)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    # caught once collection ends (every plugin's hooks done), before anything runs: the session stops there
    result.stdout.fnmatch_lines(["*phase4: migrations/20250101000001_create_views.sql (migration) changed since the "
                                 "gate checked it against the evidence this run relies on: sha256 * expected, * "
                                 "found; nothing more of the runbook runs; find out who changed it, restore the "
                                 "bytes staging verified, then start the run again*"])
    assert p.query("SELECT count(*) FROM tickets") == [(50,)]
    assert p.query("SELECT to_regclass('public.sales_with_details')") == [(None,)]
    (p.path / "checks/migrations/20250101000001_create_views.sql").write_text(views)

    # the evidence as written: production starts, says what it relied on, and carries the chain on
    result = p.run(REQUIRE, "--phase4-confirm-destructive", "--phase4-json=production.json")
    assert result.ret == 0, result.stdout.str()
    relied = (f"phase4 relied on evidence: staging.json (content sha256 {sha}, {staged['target']['dbname']} on "
              f"{staged['target']['host']}:{staged['target']['port']}, finished {staged['finished_at']})")
    assert result.outlines.count(relied) == 2  # the header and the end of the run
    production = json.loads((p.path / "production.json").read_text())
    assert production["relied_on"] == {"path": "staging.json", "content_sha256": staged["content_sha256"],
                                       "target": staged["target"], "finished": staged["finished_at"]}
    assert production["green"] is True
    assert production["target"]["dbname"] != staged["target"]["dbname"]
    assert "<strong>Relied on evidence:</strong> staging.json (content sha256 " + sha in p.report()
    assert p.query("SELECT count(*) FROM pytest_phase4.ledger") == [(3,)]


def test_a_red_or_incomplete_staging_run_refuses_production(project: Callable[..., Project], staging_dsn: str,
                                                            pg_server: EmbeddedPostgres) -> None:
    p = project("mini")
    # red: staging's data holds an orphan the post checks find, after every migration applied
    p.run("--phase4-seed", "-m", "preflight", f"--dsn={staging_dsn}", dsn=False)
    with psycopg.connect(staging_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO tickets VALUES (999, 12345, 'orphan')")
    red = staging_run(p, staging_dsn, seed=False)
    assert red["green"] is False
    assert red["selection"]["complete"] is True
    assert refused(p) == (
        "--phase4-require-evidence=staging.json refused: the staging run was not green: checks/phase4.toml::post::"
        "no_orphans[tickets.customer_id->customers.id] failed (" + next(
            c["message"] for c in red["checks"] if c["outcome"] == "failed") + "); expected a green run (every check "
        "passed, every migration applied, nothing halted); fix what failed and run the plan on staging again and "
        "give its new evidence. Nothing was done (no connection made)")

    # incomplete: -k left a check out
    name = f"staging_k_{next(_names)}"
    other = pg_server.create_database(name)
    try:
        partial = staging_run(p, other, "-k", "not row_counts_unchanged")
    finally:
        pg_server.drop_database(name)
    assert partial["selection"]["complete"] is False
    assert partial["selection"]["keyword"] == "not row_counts_unchanged"
    assert partial["selection"]["deselected"] == 3  # one check per table
    line = refused(p)
    assert line.startswith("--phase4-require-evidence=staging.json refused: the staging run was not complete: "
                           "checks/phase4.toml::post::row_counts_unchanged[customers] deselected (deselected by -k "
                           "'not row_counts_unchanged'); expected")
    assert line.endswith("; expected a complete run (no check deselected by -k, -m, --lf, --sw, none left out, none "
                         "skipped for want of a baseline); run the whole plan on staging, without -k or -m, and give "
                         "its evidence. Nothing was done (no connection made)")
