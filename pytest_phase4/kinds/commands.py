"""The `command` check kind (runbook Part 1 A): build, lint, test and a clean git tree, or any program.

The command runs without a shell (arguments split like a shell would), in its own process group so that a
timeout kills what it started too; stdout and stderr are read together and their tail is attached to the row.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_phase4.errors import CheckFailed
from pytest_phase4.kinds.base import Kind, Param, register
from pytest_phase4.kinds.context import CheckSkipped, Context
from pytest_phase4.plan.files import command_cwd, command_files
from pytest_phase4.plan.model import CheckSpec, expand_env


def tail_lines(text: str, count: int) -> list[str]:
    lines = text.rstrip().splitlines()
    return lines[-count:] if count else []


def command(ctx: Context, spec: CheckSpec) -> str:

    p = spec.params
    run = p["run"]
    argv = shlex.split(run)
    cwd = ctx.plan.folder
    if p["cwd"]:
        _, missing, _ = expand_env(p["cwd"])
        if missing:
            raise CheckSkipped(f"{run!r} not run: {', '.join(missing)} is not set (the working directory "
                               f"{p['cwd']}); set it to run this check")
        cwd = command_cwd(p["cwd"], ctx.plan.folder)
        if not cwd.is_dir():
            raise CheckFailed(f"working directory {cwd} for {run!r}", "no such directory", spec.where,
                              hint=spec.hint or "fix cwd in the plan or the variable it names")
    if "/" in argv[0]:  # a path: relative to the working directory, as a shell there would see it
        program = cwd / Path(argv[0]).expanduser()
        if not (program.is_file() and os.access(program, os.X_OK)):
            raise CheckSkipped(f"{program} is not an executable file: {run!r} was not run")
        argv[0] = str(program)
    elif shutil.which(argv[0]) is None:
        raise CheckSkipped(f"{argv[0]} is not installed (not found on PATH): {run!r} was not run")
    if ctx.extras.pins is not None:  # the program and script as the evidence verified them, right before they run
        ctx.extras.pins.check(command_files(run, p["cwd"], ctx.plan.folder))
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        raw, _ = proc.communicate(timeout=p["timeout"])
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: npm leaves children behind otherwise
        raw, _ = proc.communicate()
        timed_out = True
    seconds = time.perf_counter() - started
    output = raw.decode("utf-8", errors="replace")
    tail = tail_lines(output, p["tail"])
    ctx.extras.attach(spec, f"{run} (exit {proc.returncode}, {seconds:.1f} s): last {len(tail)} lines of output",
                      "\n".join(tail) or "(no output)")
    where = f"{run} in {cwd}"
    if timed_out:
        raise CheckFailed(f"{run!r} to finish within {p['timeout']:g} s", "still running: killed", where,
                          details=tail[-10:], hint=spec.hint or "raise timeout in the plan if it is just slow")
    if proc.returncode != p["exit_status"]:
        raise CheckFailed(f"exit status {p['exit_status']}", f"exit status {proc.returncode}", where,
                          details=tail[-10:], hint=spec.hint)
    if p["expect_empty_output"] and output.strip():
        lines = output.rstrip().splitlines()
        raise CheckFailed("no output", f"{len(lines)} line(s) of output", where, details=lines[:10], hint=spec.hint)
    last = f"; last line: {tail[-1]}" if tail else "; no output"
    return f"{run}: exit {proc.returncode} in {seconds:.1f} s{last}"


def _command_line(params: Mapping[str, Any]) -> str | None:
    import shlex

    try:
        return None if shlex.split(params["run"]) else "run must name a program"
    except ValueError as exc:  # e.g. an unclosed quote
        return f"run is not a valid command line ({exc}): {params['run']!r}"


_PARAMS = {"run": Param("str"), "cwd": Param("str", False), "timeout": Param("number", False, 600.0),
           "exit_status": Param("int", False, 0), "expect_empty_output": Param("bool", False, False),
           "tail": Param("int", False, 20)}
register(Kind("command", "the command exits with exit_status (and prints nothing if expect_empty_output)", _PARAMS,
              label_fn=lambda p, _: "_".join(p["run"].split()), constraint=_command_line, run=command,
              category="Tests Passed", state=False))
