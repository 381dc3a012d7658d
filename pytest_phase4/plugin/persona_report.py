"""The persona table of the HTML report: each relation, what each persona saw of it before the first migration
and after the last one counted, the widenings marked. Built from the run's PersonaBook only; no pytest here."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from pytest_phase4.rls.persona_seen import Counted, Seen

if TYPE_CHECKING:
    from pytest_phase4.run import Phase4Run

_STYLE = """<style>
#phase4-personas td.phase4-leak { background: #ffebee; color: #b71c1c; font-weight: bold; }
#phase4-personas td.phase4-moved { background: #fff8e1; }
#phase4-personas th.phase4-persona { text-align: center; }
</style>"""


def _cell(seen: Seen | None) -> str:
    if seen is None:
        return "-"
    if seen.rows is None:
        return "no access" if seen.note == "no SELECT privilege" else f"not counted: {seen.note}"
    text = f"{seen.rows:,}"
    if seen.own is not None and seen.own != seen.rows:
        text += f" (own rights: {seen.own:,})"
    return text


def _leaks(seen: Seen | None) -> bool:
    return seen is not None and seen.rows is not None and seen.own is not None and seen.rows > seen.own


def section(run: Phase4Run) -> str:
    book, personas = run.personas, [p.name for p in run.plan.rls.personas]
    if not personas or not book.moments:
        return ""
    e = html.escape
    first, last = book.moments[0], book.moments[-1]
    moments: list[Counted] = [first.counted] if last is first else [first.counted, last.counted]
    names = sorted({n for m in moments for n in m.relations},
                   key=lambda n: next(((r.schema, r.relname) for m in moments if (r := m.relations.get(n))), ("", n)))
    head = "<tr><th rowspan='2'>Relation</th>" + "".join(
        f"<th class='phase4-persona' colspan='{len(moments)}'>{e(p)}</th>" for p in personas) + "</tr><tr>" + "".join(
        ("<th>before</th><th>after</th>" if len(moments) == 2 else "<th>before</th>") for _ in personas) + "</tr>"
    rows = []
    for name in names:
        rel = next(m.relations[name] for m in reversed(moments) if name in m.relations)
        kind = {"r": "table", "p": "table", "v": "view", "m": "materialized view"}.get(rel.kind, rel.kind)
        flags = " (security_invoker)" if rel.invoker else " (owner's rights)" if rel.kind == "v" else ""
        cells = [f"<td>{e(name)} <span class='phase4-note'>{e(kind + flags)}</span></td>"]
        for persona in personas:
            seen = [m.seen.get(persona, {}).get(name) if name in m.relations else None for m in moments]
            moved = len(seen) == 2 and seen[0] is not None and seen[1] is not None and seen[0].rows != seen[1].rows
            for s in seen:
                cls = "phase4-leak" if _leaks(s) else "phase4-moved" if moved else ""
                cells.append(f"<td class='num {cls}'>{e(_cell(s))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    after = f"after {last.label}" if last is not first else "(no migration counted yet)"
    note = (f"Rows each persona sees, counted as that persona (SET LOCAL ROLE and its settings) in one read-only "
            f"snapshot per moment: before = {first.label}; after = {after}. A view's own-rights count is its "
            "definition read with the persona's own rights (what security_invoker shows), given when it differs: "
            "red, the view shows more than that; yellow, the count moved between before and after. Counts by tenant "
            "and every moment are in the JSON evidence (personas).")
    found = "".join(f"<li>{e(step)}: {e(text)}</li>" for step, text in book.findings[:20])
    return (f"{_STYLE}<div id='phase4-personas'><h3>Row-level security: rows each persona sees</h3>"
            f"<p class='phase4-note'>{e(note)}</p><table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"
            + (f"<p>Widenings found:</p><ul>{found}</ul>" if found else "") + "</div>")
