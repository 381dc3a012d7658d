"""Options and ini keys, read once into a frozen settings object."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_phase4.plan.model import DURATION

DEFAULT_PLAN = "checks/phase4.toml"
DEFAULT_REPORT_DIR = "reports"
DEFAULT_WORKERS = 2
BLAST_COPY = ("throwaway", "target")  # where the blast radius's copy of the schema goes; the first is the default


@dataclass(frozen=True)
class Settings:
    enabled: bool
    dsn: str | None
    plan: Path
    seed: bool
    confirm_destructive: bool
    report_root: str | None
    check_timeout: str
    lock_timeout: str
    base_url: str | None = None
    signoff: tuple[str, ...] = ()  # ROLE=NAME, as given
    json_path: str | None = None
    workers: int = DEFAULT_WORKERS
    verify_only: bool = False
    baselines: tuple[str, ...] = ()  # --phase4-baseline: files or folders, as given
    blast_copy: str = BLAST_COPY[0]

    @staticmethod
    def add_options(parser: pytest.Parser) -> None:
        group = parser.getgroup("phase4", "pytest-phase4: run a database migration runbook as tests")
        group.addoption("--phase4", action="store_true", default=False,
                        help="run the phase4 plan (without it the plugin does nothing)")
        group.addoption("--dsn", default=None, metavar="DSN",
                        help="target database (URL or key=value); default: PHASE4_DSN, then libpq's PG* "
                             "environment, else an embedded throwaway PostgreSQL. Kept out of ini files on "
                             "purpose: a DSN may carry a password")
        group.addoption("--phase4-plan", default=None, metavar="PATH",
                        help=f"the plan file, relative to the working directory (ini: phase4_plan, relative "
                             f"to the rootdir; default: {DEFAULT_PLAN} in the rootdir)")
        group.addoption("--phase4-seed", action="store_true", default=None,
                        help="load the plan's [setup] into the --dsn database, then run the plan as usual (add "
                             "-m preflight to run only the read-only checks); refused if the schema holds tables; "
                             "the embedded throwaway database is always loaded (ini: phase4_seed)")
        group.addoption("--phase4-confirm-destructive", action="store_true", default=None,
                        help="allow migrations marked destructive = true (the point of no return) to run "
                             "against --dsn; the embedded throwaway database never needs it")
        group.addoption("--phase4-report-dir", default=None, metavar="DIR",
                        help=f"where the HTML report goes when --html is not given (ini: phase4_report_dir; "
                             f"default: {DEFAULT_REPORT_DIR})")
        group.addoption("--phase4-workers", default=None, metavar="N",
                        help=f"read-only connections that run a step's heavy counts and orphan queries side by "
                             f"side (ini: phase4_workers; default: {DEFAULT_WORKERS}; 1 runs them one by one)")
        group.addoption("--phase4-check-timeout", default=None, metavar="DURATION",
                        help="statement_timeout of the read-only verification connection, e.g. 60s "
                             "(ini: phase4_check_timeout; default 60s)")
        group.addoption("--phase4-lock-timeout", default=None, metavar="DURATION",
                        help="lock_timeout of the migration connection: a migration waiting longer for a lock "
                             "fails and names who holds it (ini: phase4_lock_timeout; default 10s)")
        group.addoption("--phase4-base-url", default=None, metavar="URL",
                        help="the API the smoke stage requests (ini: phase4_base_url); without it smoke "
                             "requests are skipped")
        group.addoption("--phase4-signoff", action="append", default=[], metavar="ROLE=NAME",
                        help="a name for a sign-off role of the plan's [signoff], e.g. dba=\"Jane Doe\" "
                             "(repeat per role); roles left out are blank lines to sign")
        group.addoption("--phase4-json", default=None, metavar="PATH",
                        help="write the run's evidence as JSON (ini: phase4_json; default: beside the HTML "
                             "report, same name with .json)")
        group.addoption("--phase4-verify-only", action="store_true", default=None,
                        help="apply nothing: run the plan's checks before or after migrations applied by another "
                             "tool (supabase db push, Flyway, psql); a migration counts as applied when its checks "
                             "verify against the database and the ledger or supabase_migrations.schema_migrations, "
                             "where one exists, lists it (ini: phase4_verify_only)")
        group.addoption("--phase4-baseline", action="append", default=[], metavar="PATH",
                        help="also look here for the baseline to compare with: a *.baseline.json file or a folder "
                             "of them (repeatable; always looked in: the report folder and the backup folders)")
        group.addoption("--phase4-blast-copy", default=None, metavar="WHERE",
                        help="where the blast radius applies the pending migrations to a copy of the schema: "
                             "throwaway (default: a throwaway server started here, so that nothing they call acts "
                             "on the real server) or target (a scratch database on the target's server, where what "
                             "they call, a function's body, a trigger, a DO block's EXECUTE, runs for real; needs "
                             "CREATEDB) (ini: phase4_blast_copy)")
        parser.addini("phase4_blast_copy", "pytest-phase4: where the blast radius's copy goes (throwaway, target)",
                      default=None)
        parser.addini("phase4_verify_only", "pytest-phase4: apply nothing, verify only", type="bool", default=False)
        parser.addini("phase4_base_url", "pytest-phase4 smoke stage API base URL", default=None)
        parser.addini("phase4_json", "pytest-phase4 JSON evidence path", default=None)
        parser.addini("phase4_plan", "pytest-phase4 plan file", default=None)
        parser.addini("phase4_check_timeout", "statement_timeout for checks", default="60s")
        parser.addini("phase4_lock_timeout", "lock_timeout for migrations", default="10s")
        parser.addini("phase4_workers", "pytest-phase4 read-only connections for heavy checks (1 to 16)",
                      type="int", default=None)
        parser.addini("phase4_seed", "load the plan's [setup] into the target, then run the plan", type="bool",
                      default=False)
        parser.addini("phase4_report_dir", "pytest-phase4 default HTML report folder", default=None)

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        opt = config.getoption
        return cls(
            enabled=bool(opt("phase4")) and not (opt("help", False) or opt("version", False)),
            dsn=opt("dsn"),
            plan=_plan_path(config),
            seed=bool(opt("phase4_seed") or config.getini("phase4_seed")),
            confirm_destructive=bool(opt("phase4_confirm_destructive")),
            report_root=opt("phase4_report_dir") or config.getini("phase4_report_dir"),
            check_timeout=_duration(config, "phase4_check_timeout"),
            lock_timeout=_duration(config, "phase4_lock_timeout"),
            base_url=opt("phase4_base_url") or config.getini("phase4_base_url"),
            signoff=tuple(opt("phase4_signoff") or ()),
            json_path=opt("phase4_json") or config.getini("phase4_json"),
            workers=_workers(config),
            verify_only=bool(opt("phase4_verify_only") or config.getini("phase4_verify_only")),
            baselines=tuple(opt("phase4_baseline") or ()),
            blast_copy=_blast_copy(config),
        )

    def report_dir(self, rootpath: Path) -> Path:
        return rootpath / (self.report_root or DEFAULT_REPORT_DIR)


def _plan_path(config: pytest.Config) -> Path:
    """A CLI path is relative to where pytest was started; an ini or default path to the rootdir."""
    if cli := config.getoption("phase4_plan"):
        return (config.invocation_params.dir / str(cli)).resolve()
    return (config.rootpath / (config.getini("phase4_plan") or DEFAULT_PLAN)).resolve()


def missing_plan(config: pytest.Config, path: Path) -> str | None:
    """Why there is no plan file at `path`, where it was looked for, and how to point at one; None if it is there."""
    if path.is_file():
        return None
    if cli := config.getoption("phase4_plan"):
        given = f"--phase4-plan={cli}, relative to the working directory"
    elif ini := config.getini("phase4_plan"):
        given = f"phase4_plan = {ini!r} in {config.inipath}, relative to the rootdir {config.rootpath}"
    else:
        given = (f"the default {DEFAULT_PLAN}, relative to the rootdir {config.rootpath} (the folder of pytest's "
                 "ini file, else the working directory)")
    found = "a folder, not a plan file" if path.is_dir() else "no such file"
    return (f"no phase4 plan at {path}: {found}\n"
            f"  looked for: {given}\n"
            f"  working directory: {config.invocation_params.dir}\n"
            "  point at your plan with --phase4-plan=PATH (relative to the working directory), or with "
            "phase4_plan = \"PATH\" in your pytest ini file (pytest.ini, or [tool.pytest.ini_options] in "
            "pyproject.toml; relative to the rootdir); the bundled example is checks/phase4.toml in a clone of "
            "pytest-phase4")


def _workers(config: pytest.Config) -> int:
    value: str | int | None = config.getoption("phase4_workers")
    source = "--phase4-workers"
    if value is None:
        source = "ini phase4_workers"
        try:
            value = config.getini("phase4_workers")
        except (pytest.UsageError, TypeError, ValueError) as exc:  # pytest's own int conversion refused it
            raise pytest.UsageError(f"{source}: expected a whole number from 1 to 16, found a value that is not "
                                    f"one ({exc}); use 1 to run heavy checks one by one") from None
    if value is None or value == "":
        return DEFAULT_WORKERS
    try:
        workers = int(value)
    except (TypeError, ValueError):
        workers = 0
    if not 1 <= workers <= 16:
        raise pytest.UsageError(f"{source}: expected a whole number from 1 to 16, found {value!r}; use 1 to run "
                                "heavy checks one by one on the verification connection")
    return workers


def _blast_copy(config: pytest.Config) -> str:
    value = config.getoption("phase4_blast_copy")
    source = "--phase4-blast-copy"
    if value is None:
        value, source = config.getini("phase4_blast_copy"), "ini phase4_blast_copy"
    value = str(value or BLAST_COPY[0]).strip()
    if value not in BLAST_COPY:
        raise pytest.UsageError(f"{source}: expected throwaway or target, found {value!r}; throwaway (the default) "
                                "copies the schema to a throwaway server started here, target to a scratch database "
                                "on the target's server, where what the migrations call runs for real")
    return value


def _duration(config: pytest.Config, name: str) -> str:
    value = str(config.getoption(name) or config.getini(name)).strip()
    flag = "--" + name.replace("_", "-")
    if not DURATION.match(value):
        raise pytest.UsageError(f"{flag}: expected a duration like 500ms, 30s or 5min, found {value!r}")
    if int(re.match(r"\d+", value).group()) == 0:  # type: ignore[union-attr]
        raise pytest.UsageError(f"{flag}: 0 turns the timeout off in PostgreSQL (wait forever), which is what this "
                                "guard is for; give a positive duration like 10s")
    return value.replace(" ", "")
