"""How measured locks and weighed hazards read, in the report, the terminal and failure messages:
"ACCESS EXCLUSIVE on sales (1.2M rows, 310 MB) held 4.2 s, table rewritten". Built from their JSON form, so a
rehearsal's measurement read back from its evidence file reads the same as this run's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pytest_phase4.db.catalog import RELKIND_WORDS

KINDS = RELKIND_WORDS
# pg_locks' mode names, weakest first, and how the documentation writes them (and what they make others wait for).
MODES = {
    "AccessShareLock": ("ACCESS SHARE", "only ACCESS EXCLUSIVE"),
    "RowShareLock": ("ROW SHARE", "EXCLUSIVE and ACCESS EXCLUSIVE"),
    "RowExclusiveLock": ("ROW EXCLUSIVE", "SHARE and stronger: CREATE INDEX, most ALTER TABLE"),
    "ShareUpdateExclusiveLock": ("SHARE UPDATE EXCLUSIVE", "other schema changes and VACUUM, not reads or writes"),
    "ShareLock": ("SHARE", "writes: INSERT, UPDATE, DELETE"),
    "ShareRowExclusiveLock": ("SHARE ROW EXCLUSIVE", "writes: INSERT, UPDATE, DELETE"),
    "ExclusiveLock": ("EXCLUSIVE", "everything but plain reads"),
    "AccessExclusiveLock": ("ACCESS EXCLUSIVE", "everything, reads included"),
}
_ORDER = {mode: i for i, mode in enumerate(MODES)}


def mode(name: str) -> str:
    return MODES.get(name, (name, ""))[0]


def strength(name: str) -> int:
    return _ORDER.get(name, -1)


def rows(n: int) -> str:
    if n < 10_000:
        return f"{n:,} row{'' if n == 1 else 's'}"
    value, unit = (n / 1e9, "B") if n >= 1e9 else (n / 1e6, "M") if n >= 1e6 else (n / 1e3, "K")
    text = f"{value:.1f}" if value < 100 else f"{value:.0f}"
    return f"{text.removesuffix('.0')}{unit} rows"


def size(n: int) -> str:
    if n < 10 * 1024:
        return f"{n:,} bytes"
    value, units = n / 1024, ["kB", "MB", "GB", "TB"]
    while value >= 1024 and len(units) > 1:
        value, units = value / 1024, units[1:]
    unit = units[0]
    return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"


def ms(value: float) -> str:
    if value < 10:
        return f"{value:.1f} ms"
    if value < 1000:
        return f"{value:.0f} ms"
    if value < 60_000:
        return f"{value / 1000:.1f} s"
    minutes, seconds = divmod(round(value / 1000), 60)
    return f"{minutes} min {seconds:02d} s"


def relation(name: str, schema: str = "") -> str:
    """schema.name, without the plan's own schema."""
    return name.removeprefix(f"{schema}.") if schema else name


def lock(d: Mapping[str, Any], schema: str = "") -> str:
    """One lock: 'ACCESS EXCLUSIVE on sales (1.2M rows, 310 MB) held 4.2 s, table rewritten'."""
    kind = d.get("kind", "table")
    what = relation(d["relation"], schema) if kind == "table" else f"{kind} {relation(d['relation'], schema)}"
    facts = [rows(d["rows"])] if kind in ("table", "partitioned table", "materialized view") else []
    facts += [size(d["bytes"])] if d.get("bytes") else []
    text = f"{mode(d['mode'])} on {what}" + (f" ({', '.join(facts)})" if facts else "")
    text += f" held {ms(d['held_ms'])}"
    if d.get("rewritten"):
        text += f", {kind} rewritten" if kind in ("table", "materialized view") else ", rebuilt"
    if d.get("dropped"):
        text += ", dropped"
    return text


def hazard(d: Any, schema: str = "") -> str:
    """A weighed hazard (a weigh.Hazard or its JSON): what, on which table of what size, and what it does."""
    h = d if isinstance(d, Mapping) else d.to_json()
    return (f"{h['title']} on {relation(h['relation'], schema)} ({rows(h['rows'])}, {size(h['bytes'])}): "
            f"{h['detail']}; it {h['effect']}")


def ordered(locks: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Strongest first, then longest held."""
    return sorted(locks, key=lambda d: (-strength(d["mode"]), -d["held_ms"], d["relation"]))


def summary(measured: Mapping[str, Any], schema: str = "") -> str:
    """One line for a migration: its strongest lock, and how many more."""
    if not measured.get("transactional", True):
        return "transaction = false: each statement's locks ended with it (not measured)"
    locks = ordered(list(measured.get("locks", [])))
    if not locks:
        return "no lock on a relation that existed before it"
    more = f"; {len(locks) - 1} more lock(s)" if len(locks) > 1 else ""
    return lock(locks[0], schema) + more
