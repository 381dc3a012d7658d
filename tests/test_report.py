"""The HTML report as a change board reads it (issue 13): the verdict, what failed and why, the backup and the
sign-off first; skipped rows as one line of text, never pytest's raw (file, line, reason) tuple; pytest-html's
environment table below the summary; the restore command wrapped; the catalog diff grouped and folded; a link from
the summary to the results table. (Looked at in headless Chromium while building it; this suite needs no browser.)"""

from __future__ import annotations

import html
import re
from collections.abc import Callable

from helpers import Project, outcomes_of

PLAN = "checks/phase4.toml"


def test_the_report_puts_what_a_change_board_decides_on_first(project: Callable[..., Project]) -> None:
    p = project("mini", "safe")
    with (p.path / PLAN).open("a") as plan:
        plan.write('\n[signoff]\ndba = "Database Administrator"\n')
    result = p.run("-v", "--phase4-confirm-destructive", "--phase4-signoff", "dba=Jane Doe", seed=True)
    assert outcomes_of(result)[f"{PLAN}::backup::backup[restore]"] == "SKIPPED"
    page = p.report()
    data = html.unescape(html.unescape(page))  # the rows live in a JSON attribute, escaped twice

    # a skipped row: one line in its Observed cell, no box holding pytest's tuple (before: "('/tmp/.../phase4.toml',
    # 33, 'Skipped: restore into a scratch database not requested ...')")
    assert "<td class='col-observed'>skipped: restore into a scratch database not requested (--phase4-verify-restore)" \
           "</td>" in data
    assert not re.search(r"\('[^']*', \d+, '", data), "a raw (file, line, reason) tuple in the report"
    assert "Skipped: " not in data

    summary = page[page.index("<section id='phase4-summary'>"):page.index("</section>")]
    headings = ["id='phase4-verdict'", "<h3>What failed and why</h3>", "<h3>Verification</h3>", "<h3>Backup</h3>",
                "<h3>Sign-offs</h3>", "<h3>The run</h3>", "<h3>Migrations</h3>", "<h3>Catalog diff"]
    places = [summary.index(h) for h in headings]
    assert places == sorted(places)
    assert "<a href='#results-table'>" in summary
    assert "<strong>Database Administrator</strong></td><td>Jane Doe</td>" in summary
    assert ("<li>20250101000002_drop_denormalized.sql: applied; confirmed by --phase4-confirm-destructive (OS user "
            in summary)
    # the exact pg_restore command, wrapped instead of scrolling sideways
    assert re.search(r"<pre class='phase4-wrap'>\S*pg_restore --clean --if-exists --single-transaction", summary)
    assert "#phase4-summary pre.phase4-wrap { white-space: pre-wrap;" in page
    # pytest-html's environment table follows the summary
    assert "body > .summary { order: 1; } #environment-header, #environment { order: 2; }" in page
    # the catalog diff: one folded group per verdict, kind and change
    assert "<details class='phase4-expected'><summary><span class='phase4-ok'>expected</span>: 1 view added" \
           "</summary>" in summary
