"""The runbook's Part 8 as a change board reads it: the verdict, what failed and why, the backup and the sign-off
first; then the run's facts, the migrations, performance, index usage and the catalog diff, folded where long.
Built from an Evidence only, for the HTML report and the terminal.

The summary is a sequence of sections (SECTIONS), each a function of the Evidence returning its HTML or "": a new
part of the report is one more function in that list."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import Any

from pytest_phase4.db import catalog, lockwords
from pytest_phase4.plugin import persona_report
from pytest_phase4.plugin.evidence import Evidence, change_words, duration_text, migration_done

e = html.escape

# pytest-html's page is one column: with the body a flex column, `order` puts the environment table after the
# summary, where a change board does not have to scroll past it. Long lines wrap instead of scrolling sideways.
_STYLE = """<style>
body { display: flex; flex-direction: column; }
body > h1, body > p { order: 0; } body > .summary { order: 1; } #environment-header, #environment { order: 2; }
.summary__data > h2 { display: none; }
#results-table { order: 3; } body > footer { order: 4; }
#results-table tbody.skipped > tr.extras-row { display: none; }
#results-table .col-observed { width: 38%; }
#phase4-summary { font-size: 14px; max-width: 1100px; margin-bottom: 24px; color: #222; }
#phase4-summary h2 { font-size: 22px; margin: 8px 0 4px; }
#phase4-summary h3 { font-size: 16px; margin: 16px 0 6px; border-bottom: 1px solid #ccc; padding-bottom: 2px; }
#phase4-summary table { border-collapse: collapse; margin: 4px 0; }
#phase4-summary td, #phase4-summary th { border: 1px solid #ddd; padding: 3px 10px; text-align: left;
  vertical-align: top; }
#phase4-summary th { background: #f2f2f2; }
#phase4-summary td.num { text-align: right; font-variant-numeric: tabular-nums; }
#phase4-summary details { margin: 4px 0; } #phase4-summary summary { cursor: pointer; }
#phase4-summary pre.phase4-wrap { white-space: pre-wrap; overflow-wrap: anywhere; background: #f6f6f6;
  padding: 6px 10px; margin: 4px 0; font-size: 12px; }
.phase4-banner { font-size: 18px; font-weight: bold; padding: 10px 14px; border-radius: 4px; margin: 6px 0 4px; }
.phase4-banner a { font-size: 13px; font-weight: normal; margin-left: 12px; white-space: nowrap; }
.phase4-ok { color: #1b5e20; } .phase4-bad { color: #b71c1c; } .phase4-partial { color: #8a5300; }
.phase4-none { color: #666; }
.phase4-banner.phase4-ok { background: #e8f5e9; } .phase4-banner.phase4-bad { background: #ffebee; }
.phase4-banner.phase4-partial { background: #fff4e0; }
.phase4-badge { font-weight: bold; white-space: nowrap; padding: 1px 8px; border-radius: 3px; color: #fff; }
.phase4-badge.phase4-ok { background: #2e7d32; } .phase4-badge.phase4-bad { background: #c62828; }
.phase4-badge.phase4-partial { background: #b26a00; } .phase4-badge.phase4-none { background: #9e9e9e; }
#phase4-summary .phase4-facts td:first-child { font-weight: bold; white-space: nowrap; }
#phase4-summary p.phase4-note { color: #555; margin: 2px 0; }
#phase4-summary ol.phase4-issues li { margin: 2px 0; }
.phase4-sign td { height: 26px; min-width: 160px; }
#phase4-locks ul { margin: 2px 0 6px 18px; padding: 0; } #phase4-locks p { margin: 4px 0 2px; }
.phase4-gate { color: #b71c1c; font-weight: bold; }
</style>"""
_STATE_CLASS = {"passed": "phase4-ok", "failed": "phase4-bad", "partial": "phase4-partial", "notrun": "phase4-none"}
_INDEX_ROWS = 20  # as the runbook's own query: LIMIT 20
_TICK = {"applied": "\u2611", "already applied": "\u2611", "failed": "\u2612"}
_ISSUES_SHOWN = 30
_YES, _NO = ("YES", "phase4-bad"), ("NO", "phase4-ok")


def _table(head: list[str], rows: list[list[str]], cls: str = "", num: tuple[int, ...] = ()) -> str:
    """Cells are HTML already escaped by the caller; no head, no header row."""
    th = "".join(f"<th>{e(h)}</th>" for h in head) if head else ""
    body = "".join("<tr>" + "".join(f"<td class='num'>{c}</td>" if i in num else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table class='{cls}'><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _ms(value: Any) -> str:
    return f"{value:,.1f}" if isinstance(value, float | int) else "-"


def _badge(word: str, cls: str) -> str:
    return f"<span class='phase4-badge {cls}'>{e(word)}</span>"


def overall(ev: Evidence) -> tuple[str, str, str]:
    """(css class, word, what it rests on): FAILED when anything failed, PASSED only when every check of every
    category in this run ran and passed, else PASSED, NOT ALL VERIFIED, naming the categories that were not."""
    verdicts = ev.verdicts()
    required, _ = ev.rollback()
    counts = {o: sum(r.outcome == o for r in ev.records.values()) for o in ("passed", "failed", "error", "skipped")}
    tally = ", ".join(f"{n} {o}" for o, n in counts.items() if n) or "nothing ran"
    if any(v.word == "FAILED" for v in verdicts) or required or ev.run.halt is not None or counts["error"]:
        return "phase4-bad", "FAILED", f"{tally}: see What failed and why"
    gaps = [f"{v.label} {v.word.lower()}" for v in verdicts if v.word in ("INCOMPLETE", "NOT RUN", "RECORDED")
            and v.passed + v.failed + sum(n for n, _ in v.not_run)]
    if gaps:
        return "phase4-partial", "PASSED, NOT ALL VERIFIED", f"{tally}; {', '.join(gaps)}: see Verification"
    return "phase4-ok", "PASSED", f"{tally}; every check ran and passed"


def _banner(ev: Evidence) -> str:
    cls, word, why = overall(ev)
    required, reason = ev.rollback()
    return (f"<div class='phase4-banner {cls}' id='phase4-verdict'>{e(word)}: {e(why)}"
            "<a href='#results-table'>every check: the results table \u2193</a></div>"
            f"<p><strong>Rollback required:</strong> {_badge(*_YES if required else _NO)} {e(reason)}</p>")


def _issues(ev: Evidence) -> str:
    issues = ev.issues()
    if not issues:
        return "<h3>What failed and why</h3><p>Nothing failed.</p>"
    more = (f"<p class='phase4-note'>{len(issues) - _ISSUES_SHOWN} more in the results table and the JSON "
            "evidence.</p>" if len(issues) > _ISSUES_SHOWN else "")
    items = "".join(f"<li>{e(i)}</li>" for i in issues[:_ISSUES_SHOWN])
    return f"<h3>What failed and why</h3><ol class='phase4-issues'>{items}</ol>{more}"


def _verification(ev: Evidence) -> str:
    rows = [[e(v.label), _badge(v.word, _STATE_CLASS[v.state]), e(ev.scrub(v.detail))] for v in ev.verdicts()]
    return ("<h3>Verification</h3><p class='phase4-note'>VERIFIED only when every check of the kind ran and passed; "
            "otherwise what did not run, and why.</p>" + _table(["", "Result", "Checks"], rows))


def _backup(ev: Evidence) -> str:
    from pytest_phase4.safety import backup

    run, s = ev.run, ev.run.safety
    if s.rollback:
        return ""
    if s.folder is None or not (s.folder / backup.INFO).is_file():
        if s.has_backup_stage(run.plan):
            return ("<h3>Backup</h3><p class='phase4-bad'><strong>No verified backup was made by this run</strong>: "
                    "see the backup stage in the results table.</p>")
        return "<h3>Backup</h3><p class='phase4-note'>The plan has no backup stage: this run made no backup.</p>"
    archive = s.folder / backup.DUMP
    size = f"{archive.stat().st_size:,} bytes" if archive.is_file() else "missing"
    state = ("verified: sha256 and a full read by pg_restore" if s.verified else "NOT verified") + (
        "; restored into a scratch database and compared" if s.restore_verified else "")
    parts = [f"<h3>Backup</h3><p><code>{e(str(archive))}</code>, {e(size)}, sha256 <code>{e((s.sha256 or '')[:16])}"
             f"</code>: <span class='{'phase4-ok' if s.verified else 'phase4-bad'}'>{e(state)}</span></p>"]
    try:
        command = backup.restore_command(s.tools, run.target.dsn, archive) if s.tools else ""
    except Exception:  # the command is a convenience: BACKUP_INFO.txt below holds it too
        command = ""
    if command:
        parts.append(f"<p class='phase4-note'>To put it back (runbook Part 7), or run <code>pytest --phase4 "
                     f"--phase4-rollback</code>:</p><pre class='phase4-wrap'>{e(ev.scrub(command))}</pre>")
    info = ev.scrub((s.folder / backup.INFO).read_text())
    parts.append(f"<details><summary>{e(backup.INFO)}</summary><pre class='phase4-wrap' id='phase4-backup'>"
                 f"{e(info)}</pre></details>")
    return "".join(parts)


def _signoff(ev: Evidence) -> str:
    gates = ev.point_of_no_return()
    lines = []
    for g in gates:
        if g["confirmed_by"]:
            lines.append(f"<li>{e(g['migration'])}: {e(g['status'])}; confirmed by {e(g['confirmed_by'])} "
                         f"(OS user {e(g['os_user'])}, {e(g['confirmed_at'][:19].replace('T', ' '))} UTC)</li>")
        else:
            lines.append(f"<li>{e(g['migration'])}: {e(g['status'])}" + (f" ({e(g['note'])})" if g["note"] else "")
                         + "</li>")
    out = ["<h3>Sign-offs</h3>"] if ev.signoff() or gates else []
    if gates:
        out.append("<p><strong>Point of no return</strong></p><ul>" + "".join(lines) + "</ul>")
    roles = ev.signoff()
    if roles:
        rows = [[f"<strong>{e(r['title'])}</strong>", e(r["name"]), "", "", ""] for r in roles]
        out.append(_table(["Role", "Name", "Signature", "Date", "Time"], rows, "phase4-sign"))
    return "".join(out)


def _run_facts(ev: Evidence) -> str:
    run = ev.run
    started, finished = ev.started(), ev.finished()
    facts = [
        ["Plan", e(f"{run.plan.name} ({run.plan.path.name}, sha256 {run.plan.sha256[:12]})")],
        ["Target", e(f"{ev.scrub(run.target.label)} via {run.target.source}; PostgreSQL {run.server_version}")],
        ["Migration Start Time", e(started.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"))],
        ["Migration End Time", e(finished.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"))],
        ["Total Duration", e(duration_text((finished - started).total_seconds()))],
    ]
    if (used := run.baseline_summary()) is not None:  # what the comparisons were made with (baselines.py)
        facts.append(["Baseline", f"<span id='phase4-baseline'>{e(ev.scrub(used['text']))}</span>"])
    return "<h3>The run</h3>" + _table([], facts, "phase4-facts")


def _migrations(ev: Evidence) -> str:
    rows = []
    for m in ev.migrations():
        stamp = m["file"].partition("_")[0]
        name = f"{stamp} - {m['title']}" if m["title"] != m["file"] else m["file"]
        tick = _TICK.get(m["status"], "\u2610")
        duration = f"{m['duration_ms']:,.0f} ms" if m["duration_ms"] is not None else ""
        verify = f"{m['verify_passed']}/{m['verify_total']} passed" if m["verify_total"] else "-"
        cls = "phase4-ok" if migration_done(m["status"]) else "phase4-bad" if m["status"] == "failed" else ""
        status = f"<span class='{cls}'>{e(m['status'])}</span>" + (" (destructive)" if m["destructive"] else "")
        rows.append([f"<span class='{cls}' style='font-size:18px'>{tick}</span>", e(name),
                     status + (f"<br><span class='phase4-note'>{e(m['note'])}</span>" if m["note"] and not
                               migration_done(m["status"]) else ""),
                     e(duration), e(verify), f"<code>{e(m['sha256'][:12])}</code>"])
    if not rows:
        return ""
    return "<h3>Migrations</h3>" + _table(["", "Migration", "Status", "Duration", "Verify checks", "sha256"], rows,
                                          num=(3,))


def _locks_html(ev: Evidence) -> str:
    """Per migration: what it held and for how long (on the rehearsal copy, then here), and its hazards."""
    schema = ev.run.plan.schema
    rows = []
    for m in ev.migrations():
        cell = "".join(_measured_html(title, m[key], schema) for key, title in (
            ("rehearsal", "On the rehearsal copy, before this database was touched"), ("measured", "On this database")
        ) if m[key])
        if cell:
            rows.append([e(m["file"]), cell])
    if not rows:
        return ""
    note = ("After each statement, the migration's own session reads pg_locks: each relation that existed before "
            "it, in each mode, held from the start of the statement that took it until the commit; rows are the "
            "live estimate and size the table had, a rewrite is a new relfilenode. Hazards are read from "
            "PostgreSQL's parse tree and weighed by the table's live size; a gated one failed the plan's "
            "hazard_min_rows.")
    return (f"<div id='phase4-locks'><h3>Locks held by each migration</h3><p class='phase4-note'>{e(note)}</p>"
            + _table(["Migration", "Locks, statements and hazards"], rows) + "</div>")


def _measured_html(title: str, measured: dict[str, Any], schema: str) -> str:
    locks = lockwords.ordered(measured["locks"])
    gates = ", ".join(f"{k} = {v:,}" for k, v in measured.get("gates", {}).items())
    head = f"<p><strong>{e(title)}</strong> ({e(measured['outcome'])}{'; gates: ' + e(gates) if gates else ''})</p>"
    items = [lockwords.summary(measured, schema)] if not locks else [lockwords.lock(d, schema) for d in locks]
    shown = "".join(f"<li>{e(i)}</li>" for i in items[:5])
    more = (f"<details><summary>{len(items) - 5} more lock(s)</summary><ul>"
            + "".join(f"<li>{e(i)}</li>" for i in items[5:]) + "</ul></details>") if len(items) > 5 else ""
    statements = measured["statements"]
    timing = (f"<details><summary>{len(statements)} statement(s), "
              f"{lockwords.ms(sum(s['duration_ms'] for s in statements))}</summary><ul>"
              + "".join(f"<li>line {s['line']}: <code>{e(s['statement'])}</code> "
                        f"{e(lockwords.ms(s['duration_ms']))}</li>" for s in statements) + "</ul></details>"
              if statements else "")
    hazards = "".join(
        f"<li>{'<span class=phase4-gate>GATE</span> ' if h['gated'] else ''}line {h['line']}: "
        f"{e(lockwords.hazard(h, schema))}; fix: {e(h['fix'])}</li>" for h in measured["hazards"])
    return head + f"<ul>{shown}</ul>{more}{timing}" + (f"<p>Hazards:</p><ul>{hazards}</ul>" if hazards else "")


def _performance(ev: Evidence) -> str:
    perf = ev.performance()
    if not perf:
        return ""
    rows = []
    for p in perf:
        slower = p["improvement_pct"] is not None and p["improvement_pct"] < 0
        change = f"<span class='phase4-bad'>{e(p['change'])}</span>" if slower else e(p["change"])
        rows.append([e(p["title"]), _ms(p["before_ms"]), _ms(p["after_ms"]), change, e(p["gate"]),
                     _badge(p["outcome"], {"passed": "phase4-ok", "failed": "phase4-bad", "error": "phase4-bad"}
                            .get(p["outcome"], "phase4-none")), e(p["note"])])
    rows.append(["<strong>Average</strong>", "", "", f"<strong>{e(change_words(ev.average_improvement()))}</strong>",
                 "", "", ""])
    return ("<h3>Performance: query times before and after the migrations</h3>"
            "<p class='phase4-note'>Median of several runs with every row fetched. A query slower after is shown "
            "as slower even when its gate passes; each row of the results table holds its EXPLAIN (ANALYZE, "
            "BUFFERS).</p>" + _table(["Query", "Before (ms)", "After (ms)", "Change", "Gate", "Result", "Note"],
                                     rows, num=(1, 2)))


def _index_usage(ev: Evidence) -> str:
    usage = ev.run.extras.index_usage
    if not usage:
        return ""
    shown = usage[:_INDEX_ROWS]
    rows = [[f"<code>{e(i)}</code>", e(t), f"{s:,}", f"{n:,}"] for i, t, s, n in shown]
    rest = usage[_INDEX_ROWS:]
    more = (f"<p class='phase4-note'>{len(rest)} more of the plan's indexes, with {sum(r[2] for r in rest):,} scans "
            "between them (all in the JSON evidence).</p>" if rest else "")
    used = sum(1 for _, _, s, _ in usage if s)
    return (f"<h3>Index usage after the migrations</h3><details><summary>{len(usage)} of the plan's indexes, {used} "
            "used since the statistics were reset (pg_stat_user_indexes)</summary>"
            + _table(["Index", "Table", "Scans", "Tuples read"], rows, num=(2, 3)) + more + "</details>")


def _catalog_diff(ev: Evidence) -> str:
    changes = ev.run.safety.catalog_changes
    if changes is None:
        return ""
    groups: dict[tuple[bool, str, str, str], list[Any]] = {}
    for change, ok in changes:  # by kind and, for a changed object, the property that changed
        groups.setdefault((ok, catalog.kind_words(change.kind), change.what, change.change), []).append(change)
    unexpected = sum(not ok for _, ok in changes)
    out = [f"<h3>Catalog diff: the baseline / now</h3><p>{len(changes)} change(s), "
           + (f"<span class='phase4-bad'><strong>{unexpected} UNEXPECTED</strong></span>" if unexpected
              else "all expected by the plan") + "</p>"]
    for (ok, kind, prop, what), found in sorted(groups.items(), key=lambda g: g[0]):
        rows = [[e(c.name), e(c.before), e(c.after)] for c in found]
        verdict, cls, color = ("expected", "phase4-expected", "phase4-ok") if ok else (
            "UNEXPECTED", "phase4-unexpected", "phase4-bad")
        title = " ".join(w for w in (str(len(found)), _plural(kind, len(found)), prop, what) if w)
        out.append(f"<details class='{cls}'{'' if ok else ' open'}><summary><span class='{color}'>{verdict}</span>: "
                   f"{e(title)}</summary>" + _table(["Name", "Before", "After"], rows, "phase4-catalog-diff")
                   + "</details>")
    return "".join(out)


def _plural(word: str, n: int) -> str:
    if n == 1:
        return word
    return word[:-1] + "ies" if word.endswith("y") else word + "es" if word.endswith(("x", "s")) else word + "s"


Section = Callable[[Evidence], str]
# In the order a change board reads them: the first five fit the first screen of a finished run.
def _personas(ev: Evidence) -> str:
    return persona_report.section(ev.run)


SECTIONS: Sequence[Section] = (_banner, _issues, _verification, _backup, _signoff, _run_facts, _migrations,
                               _locks_html, _personas, _performance, _index_usage, _catalog_diff)


def summary_html(ev: Evidence, sections: Sequence[Section] = SECTIONS) -> str:
    return "".join([_STYLE, "<section id='phase4-summary'><h2>Execution summary</h2>",
                    *(section(ev) for section in sections), "</section>"])


def summary_lines(ev: Evidence) -> list[str]:
    """The same facts for the terminal."""
    started, finished = ev.started(), ev.finished()
    lines = [f"start {started.astimezone():%Y-%m-%d %H:%M:%S}, end {finished.astimezone():%H:%M:%S}, "
             f"duration {duration_text((finished - started).total_seconds())}"]
    lines += [f"{v.label + ':':<16} {v.word:<10} {ev.scrub(v.detail)}" for v in ev.verdicts()]
    required, why = ev.rollback()
    lines.append(f"{'Rollback:':<16} {'YES' if required else 'NO':<10} {why}")
    return lines


def perf_lines(ev: Evidence) -> list[str]:
    perf = ev.performance()
    if not perf:
        return []
    width = max(len(p["title"]) for p in [*perf, {"title": "average"}])
    lines = [f"{'query':<{width}} {'before ms':>10} {'after ms':>10}  change (gate)"]
    lines += [f"{p['title']:<{width}} {_ms(p['before_ms']):>10} {_ms(p['after_ms']):>10}  {p['change']} "
              f"({p['gate']})" for p in perf]
    lines.append(f"{'average':<{width}} {'':>10} {'':>10}  {change_words(ev.average_improvement())}")
    return lines
