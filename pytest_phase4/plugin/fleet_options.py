"""What a fleet hands every target's run and worker: the user's phase4 options and ini settings as the controller
reads them, and the check that a worker's copy of the plan is the controller's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_phase4.plan.files import plan_files
from pytest_phase4.plan.model import DURATION, Plan

# The user's options every target's run takes as given (flag, dest); -m goes to the targets' runs too.
PASSED = (("--phase4-confirm-destructive", "phase4_confirm_destructive"), ("--phase4-seed", "phase4_seed"),
          ("--phase4-check-timeout", "phase4_check_timeout"), ("--phase4-lock-timeout", "phase4_lock_timeout"),
          ("--phase4-workers", "phase4_workers"), ("--phase4-blast-copy", "phase4_blast_copy"),
          ("--phase4-base-url", "phase4_base_url"), ("--phase4-signoff", "phase4_signoff"),
          ("--phase4-verify-only", "phase4_verify_only"), ("--phase4-verify-restore", "phase4_verify_restore"),
          ("--phase4-rehearse", "phase4_rehearse"), ("--phase4-baseline", "phase4_baseline"),
          ("--phase4-require-evidence", "phase4_require_evidence"))


def passed(config: pytest.Config) -> Iterator[str]:
    for flag, dest in PASSED:
        value = config.getoption(dest, None)
        if value is True:
            yield flag
        elif isinstance(value, list):
            yield from (f"{flag}={v}" for v in value)
        elif value not in (None, False, ""):
            yield f"{flag}={value}"


# Every phase4 ini key (settings.py, safety.py, promotion.py) but those each target's run gets a flag for (its
# plan, its own report, JSON and backup folders); a key added there must be added here.
INI_KEYS = ("phase4_blast_copy", "phase4_verify_only", "phase4_base_url", "phase4_check_timeout",
            "phase4_lock_timeout", "phase4_workers", "phase4_seed", "phase4_verify_restore",
            "phase4_require_evidence")


def ini(config: pytest.Config) -> Iterator[str]:
    """Every phase4 ini setting as this run reads it (ini file, -c FILE, -o), as `-o key=value` for each target's
    run: a child reads no -c or -o of ours, and its flags (passed above) still outrank these, as here."""
    for name in INI_KEYS:
        value = config.getini(name)
        if isinstance(value, bool):
            yield from ("-o", f"{name}={'true' if value else 'false'}")
        elif value is not None and not isinstance(value, list):
            yield from ("-o", f"{name}={value}")


def stale(plan_sha256: str, files: tuple[tuple[str, str], ...], plan: Plan, rootdir: Path) -> str:
    """Why this worker's copy of the plan is not the controller's (sha256 of the plan and of every file), or ""."""
    if not plan_sha256:
        return ""
    here = {f.path: f.sha256 for f in plan_files(plan, rootdir)}
    there = dict(files)
    differ = sorted(p for p in set(here) | set(there) if here.get(p) != there.get(p))
    if plan.sha256 == plan_sha256 and not differ:
        return ""
    shown = ", ".join(differ[:5]) + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")
    return (f"this worker's copy of the plan ({plan.path}) differs from the controller's (plan sha256 "
            f"{plan.sha256[:12]}, expected {plan_sha256[:12]}; files that differ: {shown or 'none'}): nothing "
            "run on this target; give the worker the controller's plan (--rsyncdir, or the same checkout)")


def canary(config: pytest.Config, file_canary: int | None, count: int) -> int:
    given = config.getoption("phase4_canary")
    where = "--phase4-canary" if given is not None else "[fleet] canary"
    value: Any = given if given is not None else file_canary or 0
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if not 0 <= n <= count:
        raise pytest.UsageError(f"{where}: expected a whole number from 0 to {count} (the targets), found {value!r}")
    return n


def seconds(text: str) -> float:
    value = text.strip().replace(" ", "")
    if not DURATION.match(value):
        raise pytest.UsageError(f"--phase4-canary-wait: expected a duration like 90s or 30min, found {text!r}")
    number = float("".join(c for c in value if c.isdigit()))
    unit = value.lstrip("0123456789")
    return number * {"s": 1, "min": 60, "h": 3600}.get(unit, 0.001)  # a bare number is ms, as PostgreSQL reads it
