"""The runbook's Part 8 as the first thing a change board reads: the execution summary, the performance table,
index usage and the sign-off block, for the HTML report and the terminal. Built from an Evidence only."""

from __future__ import annotations

import html
from typing import Any

from pytest_phase4 import lockwords
from pytest_phase4.evidence import Evidence, duration_text, migration_done

_STYLE = """<style>
#phase4-summary { font-size: 14px; max-width: 1100px; margin-bottom: 24px; }
#phase4-summary h2 { font-size: 22px; margin: 8px 0 4px; }
#phase4-summary h3 { font-size: 16px; margin: 18px 0 6px; border-bottom: 1px solid #ccc; padding-bottom: 2px; }
#phase4-summary table { border-collapse: collapse; margin: 4px 0; }
#phase4-summary td, #phase4-summary th { border: 1px solid #ddd; padding: 4px 10px; text-align: left;
  vertical-align: top; }
#phase4-summary th { background: #f2f2f2; }
#phase4-summary td.num { text-align: right; font-variant-numeric: tabular-nums; }
.phase4-banner { font-size: 18px; font-weight: bold; padding: 10px 14px; border-radius: 4px; margin: 6px 0 10px; }
.phase4-ok { color: #1b5e20; } .phase4-bad { color: #b71c1c; } .phase4-none { color: #666; }
.phase4-banner.phase4-ok { background: #e8f5e9; } .phase4-banner.phase4-bad { background: #ffebee; }
.phase4-word { font-weight: bold; white-space: nowrap; }
.phase4-badge { font-weight: bold; white-space: nowrap; padding: 1px 8px; border-radius: 3px; color: #fff; }
.phase4-badge.phase4-ok { background: #2e7d32; } .phase4-badge.phase4-bad { background: #c62828; }
.phase4-badge.phase4-none { background: #9e9e9e; }
#phase4-summary .phase4-facts td:first-child { font-weight: bold; white-space: nowrap; }
#phase4-summary p.phase4-note { color: #555; margin: 2px 0; }
.phase4-sign td { height: 30px; min-width: 170px; }
#phase4-locks ul { margin: 2px 0 6px 18px; padding: 0; } #phase4-locks p { margin: 4px 0 2px; }
.phase4-gate { color: #b71c1c; font-weight: bold; }
</style>"""
_STATE_CLASS = {"passed": "phase4-ok", "failed": "phase4-bad", "notrun": "phase4-none"}
_INDEX_ROWS = 20  # as the runbook's own query: LIMIT 20
_TICK = {"applied": "\u2611", "already applied": "\u2611", "failed": "\u2612"}


def _table(head: list[str], rows: list[list[str]], cls: str = "", num: tuple[int, ...] = ()) -> str:
    """Cells are HTML already escaped by the caller; no head, no header row."""
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head) if head else ""
    body = "".join("<tr>" + "".join(f"<td class='num'>{c}</td>" if i in num else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table class='{cls}'><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _ms(value: Any) -> str:
    return f"{value:,.1f}" if isinstance(value, float | int) else "-"


def _pct(value: Any) -> str:
    return f"{value:+.1f}%" if isinstance(value, float | int) else "-"


def summary_html(ev: Evidence) -> str:
    e = html.escape
    run = ev.run
    verdicts = ev.verdicts()
    required, why = ev.rollback()
    failed = any(v.word == "FAILED" for v in verdicts) or required or run.halt is not None
    counts = {o: sum(r.outcome == o for r in ev.records.values()) for o in ("passed", "failed", "error", "skipped")}
    tally = ", ".join(f"{n} {o}" for o, n in counts.items() if n) or "nothing ran"
    banner_cls, banner = (("phase4-bad", f"FAILED ({tally}): see Issues encountered") if failed
                          else ("phase4-ok", f"PASSED ({tally}; skipped checks are listed under Verification)"
                                if counts["skipped"] else f"PASSED ({tally})"))
    started, finished = ev.started(), ev.finished()
    facts = [
        ["Plan", e(f"{run.plan.name} ({run.plan.path.name}, sha256 {run.plan.sha256[:12]})")],
        ["Target", e(f"{ev.scrub(run.target.label)} via {run.target.source}; PostgreSQL {run.server_version}")],
        ["Migration Start Time", e(started.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"))],
        ["Migration End Time", e(finished.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"))],
        ["Total Duration", e(duration_text((finished - started).total_seconds()))],
    ]
    parts = [_STYLE, "<section id='phase4-summary'><h2>Execution summary</h2>",
             f"<div class='phase4-banner {banner_cls}'>{e(banner)}</div>", _table([], facts, "phase4-facts")]
    rows = []
    for m in ev.migrations():
        stamp = m["file"].partition("_")[0]
        name = f"{stamp} - {m['title']}" if m["title"] != m["file"] else m["file"]
        tick = _TICK.get(m["status"], "\u2610")
        duration = f"{m['duration_ms']:,.0f} ms" if m["duration_ms"] is not None else ""
        verify = f"{m['verify_passed']}/{m['verify_total']} passed" if m["verify_total"] else "-"
        cls = "phase4-ok" if migration_done(m["status"]) else "phase4-bad" if m["status"] == "failed" else ""
        rows.append([f"<span class='{cls}' style='font-size:18px'>{tick}</span>", e(name),
                     f"<span class='{cls}'>{e(m['status'])}</span>" + (" (destructive)" if m["destructive"] else ""),
                     e(duration), e(verify), f"<code>{e(m['sha256'][:12])}</code>"])
    parts += ["<h3>Migrations applied</h3>",
              _table(["", "Migration", "Status", "Duration", "Verify checks", "sha256"], rows, num=(3,))]
    parts.append(_locks_html(ev))
    vrows = [[e(v.label), f"<span class='phase4-badge {_STATE_CLASS[v.state]}'>{e(v.word)}</span>",
              e(ev.scrub(v.detail))] for v in verdicts]
    parts += ["<h3>Verification</h3>", _table(["", "Result", "Checks"], vrows)]
    issues = ev.issues()
    parts.append("<h3>Issues encountered</h3>" + (
        "<p>NONE</p>" if not issues else "<ol>" + "".join(f"<li>{e(i)}</li>" for i in issues[:30]) + "</ol>"))
    parts.append(f"<h3>Rollback required</h3><p><span class='phase4-badge {'phase4-bad' if required else 'phase4-ok'}'>"
                 f"{'YES' if required else 'NO'}</span>: {e(why)}</p>")
    parts.append(_perf_html(ev))
    parts.append(_signoff_html(ev))
    parts.append("</section>")
    return "".join(parts)


def _locks_html(ev: Evidence) -> str:
    """Per migration: what it held and for how long (on the rehearsal copy, then here), and its hazards."""
    e, schema = html.escape, ev.run.plan.schema
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
    e = html.escape
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


def _perf_html(ev: Evidence) -> str:
    e = html.escape
    perf = ev.performance()
    out = []
    if perf:
        rows = [[e(p["title"]), _ms(p["before_ms"]), _ms(p["after_ms"]), _pct(p["improvement_pct"]), e(p["gate"]),
                 _outcome_badge(p["outcome"]), e(p["note"])] for p in perf]
        avg = ev.average_improvement()
        rows.append(["<strong>Average improvement</strong>", "", "", f"<strong>{_pct(avg)}</strong>", "", "", ""])
        out += ["<h3>Performance: query times before and after the migrations</h3>",
                "<p class='phase4-note'>Median of several runs with every row fetched; improvement is positive "
                "when faster after. Each row of the results below holds the query's EXPLAIN (ANALYZE, BUFFERS).</p>",
                _table(["Query", "Before (ms)", "After (ms)", "Improvement", "Gate", "Result", "Note"], rows,
                       num=(1, 2, 3))]
    usage = ev.run.extras.index_usage
    if usage:
        shown = usage[:_INDEX_ROWS]
        rows = [[f"<code>{e(i)}</code>", e(t), f"{s:,}", f"{n:,}"] for i, t, s, n in shown]
        rest = usage[_INDEX_ROWS:]
        more = (f"<p class='phase4-note'>{len(rest)} more of the plan's indexes, with "
                f"{sum(r[2] for r in rest):,} scans between them (all in the JSON evidence).</p>" if rest else "")
        out += ["<h3>Index usage after the migrations (pg_stat_user_indexes, the plan's indexes)</h3>",
                _table(["Index", "Table", "Scans", "Tuples read"], rows, num=(2, 3)), more]
    return "".join(out)


def _outcome_badge(outcome: str) -> str:
    cls = {"passed": "phase4-ok", "failed": "phase4-bad", "error": "phase4-bad"}.get(outcome, "phase4-none")
    return f"<span class='phase4-badge {cls}'>{html.escape(outcome)}</span>"


def _signoff_html(ev: Evidence) -> str:
    roles = ev.signoff()
    if not roles:
        return ""
    e = html.escape
    rows = [[f"<strong>{e(r['title'])}</strong>", e(r["name"]), "", "", ""] for r in roles]
    return "<h3>Sign-offs</h3>" + _table(["Role", "Name", "Signature", "Date", "Time"], rows, "phase4-sign")


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
    width = max(len(p["title"]) for p in perf)
    lines = [f"{'query':<{width}} {'before ms':>10} {'after ms':>10} {'improvement':>12}"]
    lines += [f"{p['title']:<{width}} {_ms(p['before_ms']):>10} {_ms(p['after_ms']):>10} "
              f"{_pct(p['improvement_pct']):>12}" for p in perf]
    lines.append(f"{'average':<{width}} {'':>10} {'':>10} {_pct(ev.average_improvement()):>12}")
    return lines
