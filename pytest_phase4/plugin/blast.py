"""The blast radius in the terminal: one section saying what the pending migrations would break (blast_checks.py
words it; the report rows and the JSON carry the same)."""

from __future__ import annotations

from typing import Any

from pytest_phase4.blast import checks as blast_checks
from pytest_phase4.run import Phase4Run


class BlastHooks:
    def __init__(self, run: Phase4Run) -> None:
        self.run = run

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        lines = blast_checks.terminal_lines(self.run)
        if not lines:
            return
        terminalreporter.section("phase4 blast radius")
        for line, bad in lines:
            terminalreporter.write_line(line, red=bad, bold=bad)
