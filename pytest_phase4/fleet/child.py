"""One target of a fleet: the whole plan run on it by a child pytest, exactly as a single-target run, then read
back from its JSON evidence. No pytest here.

A child per target keeps every target's run apart by construction: its own process, connections, advisory lock,
ledger, halting, backup folder and evidence; nothing of one target's run can reach another's. The child gets its
DSN without the password on its command line (the password goes in PGPASSWORD) and inherits nothing that could
send it elsewhere (PYTEST_ADDOPTS, PHASE4_DSN, libpq's variables).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pytest_phase4.db import dsn as dsnlib
from pytest_phase4.fleet.identity import FLEET_TARGET_ENV
from pytest_phase4.fleet.resolve import EXPECT_ENV
from pytest_phase4.fleet.targets import FleetTarget

_NOT_INHERITED = ("PYTEST_ADDOPTS", "PHASE4_DSN", "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER",
                  "PGSERVICE", "PGOPTIONS", "PGTARGETSESSIONATTRS", "PGPASSWORD")
MIGRATED, HALTED, BLOCKED, NOT_RUN, ERROR = "migrated", "halted", "blocked", "not run", "error"
KILLED = "killed"  # ended by a signal (the OOM killer, a runner's timeout): what it applied is read in its ledger
CHECKED = "checked only"  # a green run that did not apply (or find applied) every migration: -m, a deselection
_DONE = ("applied", "already applied")


@dataclass
class Outcome:
    """What became of one target: the fleet roll-up's row."""
    name: str
    verdict: str  # migrated, halted, blocked (a lock, the point of no return), not run, error
    applied: int = 0  # migrations applied by this run
    already: int = 0  # migrations the ledger showed applied before it
    duration_s: float = 0.0
    step: str = ""  # where it halted
    reason: str = ""
    evidence: str = ""  # its JSON evidence (a path on the host that ran it)
    evidence_sha256: str = ""  # sha256 of that file's bytes
    content_sha256: str = ""  # the evidence's own content_sha256, when it has one
    report: str = ""
    host: str = field(default_factory=lambda: os.uname().nodename)

    @property
    def green(self) -> bool:
        """Its run passed: every migration applied, or (checked only) every check its selection ran."""
        return self.verdict == MIGRATED or self.verdict.startswith(CHECKED)

    def said(self) -> str:
        """What became of it: `migrated (3 applied, 0 already applied)`, `halted at preflight: <reason>`."""
        if self.verdict == MIGRATED:
            return f"migrated ({self.applied} applied, {self.already} already applied)"
        if self.verdict.startswith(CHECKED):
            return f"{self.verdict}: {self.applied} applied, {self.already} already applied, {self.reason}"
        where = f" at {self.step}" if self.step else ""
        return f"{self.verdict}{where}: {self.reason}" if self.reason else self.verdict

    def line(self) -> str:
        """One line a user reads: `tenant_07: halted at preflight: tables_have_rows[sales]: ...`."""
        return f"{self.name}: {self.said()}"

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        return cls(**data)


@dataclass(frozen=True)
class ChildOptions:
    plan: Path
    rootdir: Path
    cwd: Path
    reports: Path  # <reports>/<target>/ holds its HTML, JSON and JUnit
    backups: Path  # <backups>/<target>/ holds its backups
    passed: tuple[str, ...] = ()  # the user's phase4 options that every target's run takes as they are
    junit: bool = False


def command(target: FleetTarget, options: ChildOptions) -> tuple[list[str], dict[str, str]]:
    """The child's command line and environment: its DSN last, without the password (which goes in PGPASSWORD)."""
    dsn = target.dsn()
    # the conninfo the controller resolved (libpq's environment included), else the DSN as this process reads it
    params = {k: v for k, v in conninfo_to_dict(target.conninfo or dsn).items()
              if k not in ("password", "sslpassword")}
    folder = options.reports / target.name
    args = [sys.executable, "-m", "pytest", "--phase4", f"--phase4-plan={options.plan}",
            f"--phase4-backup-dir={options.backups / target.name}", f"--html={folder / 'report.html'}",
            f"--phase4-json={folder / 'evidence.json'}", f"--phase4-report-dir={folder}",
            "-p", "no:cacheprovider", "-p", "no:randomly", "-q", "-rfEs", f"--rootdir={options.rootdir}",
            *options.passed]
    if options.junit:
        args.append(f"--junitxml={folder / 'junit.xml'}")
    args.append(f"--dsn={make_conninfo('', **params)}")  # last: nothing before it outranks it
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    env.update({FLEET_TARGET_ENV: target.name, "COLUMNS": "400"})
    if target.expect:
        env[EXPECT_ENV] = target.expect
    password = dsnlib.password_of(dsn) or os.environ.get("PGPASSWORD")  # as the controller resolved it
    if password:
        env["PGPASSWORD"] = password
    return args, env


def run(target: FleetTarget, options: ChildOptions) -> Outcome:
    started = time.monotonic()
    args, env = command(target, options)
    secrets = [s for s in (env.get("PGPASSWORD", ""), *dsnlib.secrets_from_env()) if s]
    before = ledger_files(target.dsn())
    proc = subprocess.run(args, cwd=options.cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, check=False)
    outcome = read(target.name, options.reports / target.name / "evidence.json", proc.returncode,
                   dsnlib.scrub(proc.stdout + proc.stderr, secrets), _markexpr(options.passed))
    if outcome.step == "start" and before is not None:
        _from_ledger(outcome, before, ledger_files(target.dsn()), proc.returncode)
    if options.junit:
        junit_target_classnames(options.reports / target.name / "junit.xml", target.name)
    outcome.duration_s = round(time.monotonic() - started, 1)
    outcome.report = str(options.reports / target.name / "report.html")
    return outcome


def ledger_files(dsn: str) -> list[str] | None:
    """The files the target's ledger lists, read-only; None when it cannot be read (then nothing is claimed)."""
    try:
        with psycopg.connect(make_conninfo(dsn, options="-c default_transaction_read_only=on"), autocommit=True,
                             connect_timeout=10) as conn:
            if conn.execute("SELECT to_regclass('pytest_phase4.ledger')").fetchone() == (None,):
                return []
            return [str(r[0]) for r in conn.execute("SELECT file FROM pytest_phase4.ledger ORDER BY applied_at, file")]
    except psycopg.Error:
        return None


def _from_ledger(outcome: Outcome, before: list[str], after: list[str] | None, returncode: int) -> None:
    """A run that left no evidence may still have applied migrations (killed mid-plan): its ledger says which."""
    new = [f for f in after or [] if f not in before]
    if not new:
        return
    how = f"by signal {-returncode}" if returncode < 0 else f"ended (exit {returncode}) without evidence"
    outcome.verdict, outcome.step, outcome.applied = (KILLED if returncode < 0 else ERROR), "", len(new)
    outcome.reason = (f"{how} after {len(new)} migration(s) applied: {', '.join(new)}; the ledger says so "
                      f"(its last output: {outcome.reason})")


def junit_target_classnames(path: Path, name: str) -> None:
    """The target first in each JUnit classname of its run: `tenant_07.checks.phase4.toml.migration.2025...`."""
    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError):
        return
    for case in tree.iter("testcase"):
        case.set("classname", f"{name}.{case.get('classname', '')}".rstrip("."))
    tree.write(path, encoding="utf-8", xml_declaration=True)


def _markexpr(passed: tuple[str, ...]) -> str:
    return next((passed[i + 1] for i, arg in enumerate(passed[:-1]) if arg == "-m"), "")


def read(name: str, path: Path, returncode: int, output: str, markexpr: str = "") -> Outcome:
    """The target's outcome from its evidence (what ran, what halted where and why), else from its output."""
    lines = [line for line in output.splitlines() if line.strip()]
    try:
        raw = path.read_bytes()
        doc = json.loads(raw)
    except (OSError, ValueError):
        # no evidence: the child stopped before its run started (a refused option, the target unreachable)
        errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR: ")]
        return Outcome(name, ERROR, step="start", reason=(errors or lines[-1:] or [f"exit {returncode}"])[0])
    migrations = doc.get("migrations") or []
    outcome = Outcome(name, MIGRATED if returncode == 0 else HALTED, evidence=str(path),
                      evidence_sha256=hashlib.sha256(raw).hexdigest(),
                      content_sha256=str(doc.get("content_sha256") or ""),
                      applied=sum(m.get("status") == "applied" for m in migrations),
                      already=sum(m.get("status") == "already applied" for m in migrations))
    if returncode == 0 and (left := [m for m in migrations if m.get("status") not in _DONE]):
        # green, but not migrated: its evidence must show every migration applied (or found applied)
        outcome.verdict = f"{CHECKED} (-m {markexpr})" if markexpr else CHECKED
        outcome.reason = f"{len(left)} not applied ({', '.join(sorted({str(m.get('status')) for m in left}))})"
    if returncode != 0:
        outcome.step, outcome.reason = _halt(doc, lines, returncode)
        blocked = [m for m in migrations if m.get("file") == outcome.step and (
            m.get("status") in ("refused", "blocked") or "[SQLSTATE 55P03]" in str(m.get("note")))]
        if blocked:  # waited for a lock past lock_timeout, or refused at the point of no return
            outcome.verdict = BLOCKED
    return outcome


def _halt(doc: dict[str, Any], lines: list[str], returncode: int) -> tuple[str, str]:
    """Where the target's run stopped and why: its first failed check, else its failed or refused migration,
    else the halt its skipped checks name, else its issues or last line of output."""
    for check in doc.get("checks") or []:
        if check.get("outcome") in ("failed", "error"):
            test = str(check.get("id", "")).rsplit("::", 1)[-1]
            message = str(check.get("message") or "failed").splitlines()[0]
            return str(check.get("step") or ""), f"{test}: {message}"
    for m in doc.get("migrations") or []:
        if m.get("status") in ("failed", "refused", "blocked"):
            return str(m.get("file")), str(m.get("note") or m.get("status")).splitlines()[0]
    for text in [str(c.get("message") or "") for c in doc.get("checks") or []] + [str(i) for i in doc.get("issues")
                                                                                  or []]:
        if found := re.match(r"halted after (.+?): (.*)", text):
            return found.group(1), found.group(2)
    issues = doc.get("issues") or []
    return "", str(issues[0]) if issues else (lines[-1].strip("= ") if lines else f"exit {returncode}")
