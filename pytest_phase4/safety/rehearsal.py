"""The rehearsal (--phase4-rehearse): the whole plan run on a scratch copy restored from this run's backup, in a
child pytest, before the target is touched. No pytest here.

The child must reach the scratch copy and nothing else, whatever the user's environment says: its DSN is the
last option of its command line (nothing before it outranks it), with every part that names a server spelled out
and the password in its environment, and it inherits no PYTEST_ADDOPTS, PHASE4_DSN or libpq variable that could
send it elsewhere. It knows it is a rehearsal (PHASE4_REHEARSAL names its scratch copy) and refuses any other
target.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pytest_phase4.db import guard, locks
from pytest_phase4.errors import CheckFailed
from pytest_phase4.safety import backup
from pytest_phase4.safety.checks import tools

if TYPE_CHECKING:
    from pytest_phase4.run import Phase4Run

# What the rehearsal's child must not inherit: options that could point it elsewhere than its scratch copy
# (PYTEST_ADDOPTS, PHASE4_DSN) and libpq's variables that name a server, a database or a user.
_NOT_INHERITED = ("PYTEST_ADDOPTS", "PHASE4_DSN", "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER",
                  "PGSERVICE", "PGOPTIONS", "PGTARGETSESSIONATTRS")
REHEARSAL_ENV = "PHASE4_REHEARSAL"  # the scratch database a child run rehearses on


def is_child() -> bool:
    """Whether this process is a rehearsal's child run (its target was checked: plugin.py, `refuse_other_target`)."""
    return bool(os.environ.get(REHEARSAL_ENV))


def refuse_other_target(dbname: str | None) -> str | None:
    """In a rehearsal's child run, why its target is not its scratch copy (a usage error), else None."""
    scratch = os.environ.get(REHEARSAL_ENV)
    if not scratch or dbname == scratch:
        return None
    return (f"this is the rehearsal run of --phase4-rehearse ({REHEARSAL_ENV}={scratch}), but its target is "
            f"database {dbname or '(libpq default)'}, not its scratch copy {scratch}: refusing to run there; nothing "
            f"was done. If this is not a rehearsal, unset {REHEARSAL_ENV}")


def explicit_dsn(dsn: str, conn: psycopg.Connection[Any]) -> tuple[str, str]:
    """`dsn`, which `conn` connected with, with every part that names where it goes spelled out (host, port,
    user, database, whatever the environment supplied), and its password apart: it never reaches a command line.
    (Not conn.info.dsn: a newer libpq adds options, e.g. sslcertmode, that the server's pg_dump refuses.)"""
    info = conn.info
    params: dict[str, Any] = {k: v for k, v in conninfo_to_dict(dsn).items()
                              if k not in ("password", "sslpassword", "hostaddr")}  # secrets stay off the command line
    params.update(host=info.host, port=str(info.port), user=info.user, dbname=info.dbname)
    if info.hostaddr:
        params["hostaddr"] = info.hostaddr
    return make_conninfo("", **params), info.password or ""


def child_env(password: str, scratch: str, lock_pid: int) -> dict[str, str]:
    """The environment of the rehearsal's child run: the user's, minus what could redirect it, plus its own."""
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    env.update({REHEARSAL_ENV: scratch, guard.PARENT_LOCK_ENV: str(lock_pid),
                "COLUMNS": "400"})  # a wide terminal: the failure lines quoted back are not cut at 80 columns
    if password:
        env["PGPASSWORD"] = password
    return env


def rehearse(run: Phase4Run, rootdir: Path) -> str:
    """Run the whole plan against a scratch copy restored from this run's backup, in a child pytest."""
    s = run.safety
    if s.folder is None or not s.verified:
        raise CheckFailed("a verified backup made by this run to rehearse on", "none", "backup stage",
                          hint="the rehearsal restores this run's backup: keep the backup stage selected")
    with backup.scratch_database(run.target.dsn, str(run.ro.info.dbname), "rehearsal") as made:
        name, dsn = made.name, made.dsn
        backup.restore(tools(run), dsn, s.folder / backup.DUMP, run.target.secrets, clean=False, owner=False)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("ANALYZE")  # a restore leaves no statistics: the locks' row estimates and hazards need them
            copy, password = explicit_dsn(dsn, conn)
        evidence = s.folder / "rehearsal.json"
        args = [sys.executable, "-m", "pytest", "--phase4", f"--phase4-plan={run.plan.path}",
                "--phase4-confirm-destructive", f"--phase4-backup-dir={s.folder / 'rehearsal'}",
                f"--html={s.folder / 'rehearsal.html'}", f"--phase4-json={evidence}", "-p", "no:cacheprovider",
                "-q", "-rfEs", f"--rootdir={rootdir}",
                f"--dsn={copy}"]  # last: no --dsn before it (ini addopts, PYTEST_ADDOPTS) outranks it
        proc = subprocess.run(args, cwd=rootdir, env=child_env(password, name, run.lock_pid),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    for file, measured in locks.from_evidence(evidence).items():  # what the real run will hold, green or not
        if file in run.states:
            run.states[file].rehearsed = measured
    output = run.target.scrub(proc.stdout + proc.stderr)
    lines = [line for line in output.splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else "no output"
    if proc.returncode != 0:
        failed = [line for line in lines if re.match(r"^(FAILED|ERROR) ", line)]
        raise CheckFailed("the whole plan green on a scratch copy restored from the backup",
                          f"exit {proc.returncode}: {summary}", f"scratch database {name}",
                          details=failed[:20] or lines[-20:],
                          hint="nothing was done to the target: fix the plan or migration, then run again")
    return f"rehearsal on {name} green: {summary}; report {s.folder / 'rehearsal.html'}"
