"""pytest layer of promotion on evidence: --phase4-require-evidence checked before anything connects (and the
target's identity before anything writes), the chain fields of this run's own evidence (its files, selection,
target, mode, the evidence it relied on), and the line that says which evidence the run relied on. The rules are
in safety/promotion.py and evidence_chain.py."""

from __future__ import annotations

import fnmatch
import html
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pytest_phase4.db import dsn
from pytest_phase4.db.target import Target
from pytest_phase4.errors import Phase4Error
from pytest_phase4.fleet.identity import target_name
from pytest_phase4.plan.files import FileHash, plan_files
from pytest_phase4.plan.model import Plan
from pytest_phase4.run import Phase4Run
from pytest_phase4.safety import promotion, rehearsal
from pytest_phase4.safety.pins import PinBroken, Pins
from pytest_phase4.safety.promotion import Relied


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("phase4")
    group.addoption("--phase4-require-evidence", default=None, metavar="PATH",
                    help="start only on the JSON evidence of an earlier green, complete run of the same plan and "
                         "files on another database (staging), no older than the plan's [promotion] "
                         "evidence_max_age (default 7d) (ini: phase4_require_evidence, relative to the rootdir)")
    parser.addini("phase4_require_evidence", "pytest-phase4: the staging evidence a run must rely on", default=None)


def evidence_path(config: pytest.Config) -> tuple[Path, str] | None:
    """The evidence file to rely on and how the user named it, or None."""
    if cli := config.getoption("phase4_require_evidence"):
        return config.invocation_params.dir / str(cli), str(cli)
    if ini := config.getini("phase4_require_evidence"):
        return config.rootpath / str(ini), str(ini)
    return None


class Promotion:
    """What this run relies on and what its evidence says of itself."""

    def __init__(self, config: pytest.Config, plan: Plan) -> None:
        self.config, self.plan = config, plan
        self.files: list[FileHash] = plan_files(plan, config.rootpath)
        self.relied: Relied | None = None
        self.pins: Pins | None = None  # once the gate let the run start: every file held to the evidence
        self.run: Phase4Run | None = None
        self.deselected = 0
        self.chain_fields: dict[str, Any] = {}  # the evidence document's chain fields, filled as the run goes

    def gate(self, dsn: str | None) -> None:
        """Before anything connects: refuse (pytest.UsageError) unless the evidence lets this run start."""
        given = evidence_path(self.config)
        if given is None:
            return
        path, shown = given
        if clash := self._written_over(path):
            raise pytest.UsageError(f"--phase4-require-evidence={shown} refused: this run would write its own "
                                    f"{clash} to that very file, and the staging evidence it relies on would be gone "
                                    "from the change ticket; expected the run's outputs elsewhere; give "
                                    "--phase4-json (or --html, --junitxml) another path, e.g. --phase4-json="
                                    "production.json. Nothing was done (no connection made)")
        if narrowed := self._narrowed():
            raise pytest.UsageError(f"--phase4-require-evidence={shown} refused: this run would not run every check "
                                    f"of the plan ({'; '.join(narrowed)}), and the evidence proves staging only for "
                                    "the whole plan; expected production to run every check staging ran; drop "
                                    f"{', '.join(n.split(' (')[0] for n in narrowed)} (run the whole plan). Nothing "
                                    "was done (no connection made)")
        address = promotion.address_of(dsn or os.environ.get("PHASE4_DSN", ""))
        max_age = self.plan.evidence_max_age_s
        try:
            self.relied = promotion.check(path, shown, self.plan.sha256, self.plan.path.name, self.files,
                                          timedelta(seconds=max_age) if max_age else None, datetime.now(UTC),
                                          address, *expected(self.plan), may_skip=self.plan.may_skip)
        except promotion.PromotionRefused as exc:
            raise pytest.UsageError(str(exc)) from None
        self.pins = Pins(self.plan.folder, tuple(self.files))

    def read(self, path: Path) -> str:
        """A file's text, held to the evidence's bytes when the run relies on one ([setup] files when seeding)."""
        try:
            return self.pins.text(path) if self.pins is not None else path.read_text(encoding="utf-8")
        except PinBroken as exc:
            raise pytest.UsageError(f"phase4: {exc}") from None

    def _narrowed(self) -> list[str]:
        """What on the command line (or addopts) would leave a check of the plan out of this run, each in words."""
        opt, here, folder = self.config.option, self.config.invocation_params.dir, self.plan.folder.resolve()
        found = [f"-m {opt.markexpr!r}" if getattr(opt, "markexpr", "") else "",
                 f"-k {opt.keyword!r}" if getattr(opt, "keyword", "") else "",
                 *(f"--deselect {d}" for d in getattr(opt, "deselect", None) or ()),
                 "--lf (only the tests that failed last)" if getattr(opt, "lf", False) else "",
                 "--sw (from the last failure on)" if getattr(opt, "stepwise", False) else "",
                 "--sw-skip" if getattr(opt, "stepwise_skip", False) else ""]
        ignored = [*(getattr(opt, "ignore", None) or ()), *(getattr(opt, "ignore_glob", None) or ())]
        checks = [folder / f.path for f in self.files if f.role in ("check", "conftest")]
        for pattern in ignored:
            hit = (here / str(pattern)).resolve()
            if any(c == hit or hit in c.parents or fnmatch.fnmatch(str(c), str(here / str(pattern)))
                   for c in checks):
                found.append(f"--ignore {pattern} (a check file of the plan)")
        if self.config.args_source == pytest.Config.ArgsSource.ARGS:
            for arg in self.config.args:
                path = (here / arg.split("::")[0]).resolve()
                if "::" in arg or folder in path.parents:
                    found.append(f"{arg} (a part of the plan's folder)")
        return [f for f in found if f]

    def _written_over(self, evidence: Path) -> str:
        """Which output of this run is the evidence file itself (the same path, a symlink or a hard link to it),
        or ""."""
        option, here = self.config.option, self.config.invocation_params.dir
        json_path = self.config.getoption("phase4_json", None) or self.config.getini("phase4_json")
        html_path = getattr(option, "htmlpath", None) if self.config.pluginmanager.hasplugin("html") else None
        outputs = [("JSON evidence (--phase4-json)", json_path),
                   ("HTML report (--html)", html_path),
                   ("JSON evidence (beside the --html report)", Path(str(html_path)).with_suffix(".json")
                    if html_path and not json_path else None),
                   ("JUnit XML (--junitxml)", getattr(option, "xmlpath", None))]
        for what, out in outputs:
            if out and _same_file(here / str(out), evidence):
                return what
        return ""

    def vet(self, target: Target) -> None:
        """Once the target is known and before anything writes to it (seeding included): refuse the evidence of
        this same database, told by its cluster's system identifier and name, whatever host name reached it."""
        if self.relied is None:
            return
        try:
            with target.connect(read_only=True, autocommit=True) as conn:
                here = promotion.place(conn)
        except (Phase4Error, psycopg.Error):
            return  # the run's own connection reports it, before anything writes
        if same := promotion.same_place(self.relied.target, here):
            target.close()
            raise pytest.UsageError(f"--phase4-require-evidence={self.relied.path} refused: it is the evidence of "
                                    f"this same database ({same}); expected the evidence of another environment "
                                    "(staging), so that production is not its own proof; give the staging run's "
                                    "evidence. Nothing was done (nothing written)")

    def start(self, run: Phase4Run) -> None:
        """Connected, nothing written yet: the migrations are held to the bytes the evidence verified."""
        if self.relied is None:
            return
        self.run = run
        if self.pins is not None:
            run.pin(self.pins)

    def chain(self, run: Phase4Run) -> dict[str, Any]:
        """The fields of this run's evidence that a later run's gate reads."""
        try:
            target = {**promotion.place(run.ro), "name": target_name()}
        except (Phase4Error, psycopg.Error):
            target = {"name": target_name(), **promotion.address_of(run.target.dsn), "system_identifier": None}
        mode = ("rollback" if run.safety.rollback else "verify_only" if run.verify_only else
                "rehearsal" if rehearsal.is_child() else "embedded" if run.target.embedded is not None else "apply")
        try:
            plan_path = self.plan.path.resolve().relative_to(self.config.rootpath.resolve()).as_posix()
        except ValueError:
            plan_path = str(self.plan.path)
        return {"plan_path": plan_path, "mode": mode, "files": [f.to_json() for f in self.files], "target": target,
                "relied_on": self.relied.to_json() if self.relied else None}

    # -- hooks -----------------------------------------------------------------------------------------------
    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += len(items)
        # a plugin deselected what the gate could not see (a rollback runs none of the plan's checks, by design)
        if self.relied is not None and not (self.run is not None and self.run.safety.rollback):
            names = ", ".join(i.nodeid.split("::", 1)[-1] for i in items[:3]) + (", ..." if len(items) > 3 else "")
            pytest.exit(f"--phase4-require-evidence={self.relied.path} refused: {len(items)} check(s) of the plan "
                        f"deselected ({names}); expected production to run every check staging ran; run the whole "
                        "plan. Nothing of the runbook was run", returncode=pytest.ExitCode.USAGE_ERROR)

    @pytest.hookimpl(trylast=True)  # after every other plugin's: what they changed while collecting is seen
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.chain_fields["selection"] = self.selection()
        if self.pins is not None:  # the custom checks' modules and conftests are imported by now: as verified?
            try:
                self.pins.check_all()
            except PinBroken as exc:
                pytest.exit(f"phase4: {exc}", returncode=pytest.ExitCode.TESTS_FAILED)

    def selection(self) -> dict[str, Any]:
        option = self.config.option
        return {"args": _redacted(list(self.config.invocation_params.args)),
                "markexpr": getattr(option, "markexpr", "") or "", "keyword": getattr(option, "keyword", "") or "",
                "deselected": self.deselected}

    def line(self) -> str | None:
        return f"phase4 relied on evidence: {self.relied.describe()}" if self.relied else None

    def pytest_report_header(self) -> list[str]:
        return [line] if (line := self.line()) else []

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if line := self.line():
            terminalreporter.write_line(line)

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_summary(self, prefix: list[str], summary: list[str], postfix: list[str],
                                    session: pytest.Session) -> None:
        if self.relied is not None:
            prefix.append(f"<p id='phase4-relied-on'><strong>Relied on evidence:</strong> "
                          f"{html.escape(self.relied.describe())}</p>")


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except (OSError, RuntimeError):  # a symlink loop: not the evidence file
        return False


def expected(plan: Plan) -> tuple[list[str], list[str]]:
    """The plan's checks as the evidence names them after its path (`<step>::<test id>`), and its migrations."""
    checks = [f"{step.migration.name if step.migration else step.name}::{spec.test_id}"
              for step in plan.steps for spec in step.checks]
    return checks, [m.file for m in plan.migrations]


def _redacted(args: list[str]) -> list[str]:
    """The command line with every secret-bearing value masked: the value of an option named like a DSN, password,
    token, secret or key, and in every argument any URL's user info or password-like value (dsn.mask_secrets, as
    the run's scrubber masks every other text of the evidence)."""
    out: list[str] = []
    hide = False
    for arg in args:
        if hide:
            out.append(dsn.MASK)
            hide = False
        elif "=" in arg and dsn.SECRET_OPTION.match(arg.split("=", 1)[0]):
            out.append(f"{arg.split('=', 1)[0]}={dsn.MASK}")
        elif dsn.SECRET_OPTION.match(arg):
            out.append(arg)
            hide = True
        else:
            out.append(dsn.mask_secrets(arg))
    return out
