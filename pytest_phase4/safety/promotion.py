"""Promotion on evidence (--phase4-require-evidence): a run starts only on the JSON evidence of an earlier green,
complete run of the same plan and the same files on another database, recent enough. No pytest here.

Each refusal is one line: what was found, what was expected, what to do. The gate trusts no flag it can derive:
green and complete are worked out again from the evidence's checks and migrations, and the document's
content_sha256 must match its content (evidence_chain)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from pytest_phase4 import evidence_chain
from pytest_phase4.errors import Phase4Error
from pytest_phase4.plan.files import FileHash
from pytest_phase4.safety.snapshot import identity

DEFAULT_MAX_AGE = timedelta(days=7)  # when the plan's [promotion] sets no evidence_max_age
SKEW = timedelta(minutes=5)  # a clock this far ahead of ours is tolerated; evidence from further on is refused
APPLY_MODE = "apply"  # the only run whose evidence shows migrations applied and verified
MODE_WORDS = {"verify_only": "a --phase4-verify-only run (it applies nothing)",
              "rehearsal": "a --phase4-rehearse rehearsal on a scratch copy",
              "rollback": "a --phase4-rollback run (it undoes the plan)",
              "embedded": "a run on an embedded throwaway database (it proves the plan on its [setup] data only)"}
DONE = ("applied", "already applied")
NOT_PASSED = ("failed", "error", "not run", "not collected", "deselected")


class PromotionRefused(Phase4Error):
    """The run must not start on this evidence; the message is the one line the user reads."""


@dataclass(frozen=True)
class Relied:
    """The evidence a run relied on, as its own evidence and report name it."""

    path: str
    content_sha256: str
    target: Mapping[str, Any]
    finished: str
    document: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "content_sha256": self.content_sha256, "target": dict(self.target),
                "finished": self.finished}

    def describe(self) -> str:
        t = self.target
        where = f"{t.get('dbname') or '?'} on {t.get('host') or '?'}:{t.get('port') or '?'}"
        return f"{self.path} (content sha256 {self.content_sha256[:12]}, {where}, finished {self.finished})"


def check(path: Path, shown: str, plan_sha256: str, plan_shown: str, files: Sequence[FileHash],
          max_age: timedelta | None, now: datetime, address: Mapping[str, str | None],
          expected: Sequence[str] = (), migrations: Sequence[str] = (), may_skip: Sequence[str] = ()) -> Relied:
    """The evidence at `path`, checked before anything connects; PromotionRefused with one line otherwise.
    `expected`: the plan's checks as `<step>::<test id>`, and `migrations` its files: each must have its verdict in
    the evidence (a writer that left one out proves nothing of it). `may_skip`: the plan's [promotion] may_skip,
    globs over the check ids the evidence may show skipped (any other skipped check proves nothing)."""
    limit = max_age or DEFAULT_MAX_AGE
    limit_words = _duration(limit) + ("" if max_age else " (the default; set [promotion] evidence_max_age)")

    def refuse(found: str, expected: str, todo: str) -> PromotionRefused:
        return PromotionRefused(f"--phase4-require-evidence={shown} refused: {found}; expected {expected}; "
                                f"{todo}. Nothing was done (no connection made)")

    rerun = "run the plan on staging again and give its new evidence"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise refuse(f"cannot read it ({reason})", "the JSON evidence of the staging run (--phase4-json)",
                     "give the path of that file") from None
    try:
        doc = evidence_chain.strict_loads(text)
    except evidence_chain.EvidenceFormatError as exc:
        raise refuse(f"it is not evidence this run can trust: {exc}", "the JSON evidence as pytest-phase4 wrote it",
                     rerun) from None
    if why := evidence_chain.verify_content(doc):
        raise refuse(f"{why}, so it was edited after it was written", "the evidence exactly as it was written",
                     "use the file the staging run wrote, unedited, or " + rerun)
    sealed = str(doc[evidence_chain.KEY])
    shape = _shape(doc)
    if shape:
        raise refuse(f"{shape}", "the evidence of pytest-phase4's --phase4-json", rerun)
    mode = str(doc["mode"])
    if mode != APPLY_MODE:
        raise refuse(f"it is the evidence of {MODE_WORDS.get(mode, repr(mode))}",
                     "the evidence of a run that applied and verified the migrations on staging", rerun)
    if not_complete_why := not_complete(doc) or (
            "its selection is marked incomplete" if doc["selection"]["complete"] is not True else ""):
        raise refuse(f"the staging run was not complete: {not_complete_why}", "a complete run (no check deselected by "
                     "-k, -m, --lf, --sw, none left out, none skipped for want of a baseline)",
                     "run the whole plan on staging, without -k or -m, and give its evidence")
    if not_green_why := not_green(doc) or ("its green field is false" if doc["green"] is not True else ""):
        raise refuse(f"the staging run was not green: {not_green_why}", "a green run (every check passed, every "
                     "migration applied, nothing halted)", "fix what failed and " + rerun)
    if skipped := not_proved(doc, may_skip):
        raise refuse(f"the staging run skipped {len(skipped)} check(s), so it proves nothing of them: "
                     f"{'; '.join(skipped[:3])}{'; ...' if len(skipped) > 3 else ''}", "every check of the plan run "
                     "on staging, or listed in the plan's [promotion] may_skip", "make them run on staging (install "
                     "what they need, set what they ask for) and give its evidence, or list them in [promotion] "
                     "may_skip")
    if earlier := [str(m.get("file")) for m in doc["migrations"] if m.get("status") != "applied"]:
        raise refuse(f"the staging run did not apply {len(earlier)} of the plan's migrations itself ("
                     f"{', '.join(earlier[:3])}{', ...' if len(earlier) > 3 else ''} already applied before it "
                     "started), so it proves nothing of applying them", "the evidence of the run that applied every "
                     "migration of the plan and verified it", "use the evidence of the run that applied them, or "
                     "restore staging from its backup and run the plan there again")
    theirs = str(doc["plan"]["sha256"])
    if theirs != plan_sha256:
        raise refuse(f"it is the evidence of another plan: {doc['plan'].get('path', '?')} sha256 {theirs[:12]} "
                     f"there, {plan_shown} sha256 {plan_sha256[:12]} here", "the same plan, byte for byte",
                     "run this plan on staging and give its evidence, or run the plan the evidence is of")
    if missing := _verdicts_missing(doc, expected, migrations):
        raise refuse(missing, "a verdict for every check and migration of the plan", rerun)
    if differs := _files_differ(doc["files"], files) or _applied_differ(doc["migrations"], files):
        raise refuse(differs, "every file the run depends on the same as in the staging run (sha256)",
                     "run the plan on staging with these files and give its evidence, or restore the files "
                     "staging verified (version control)")
    finished = _when(doc.get("finished_at"))
    started = _when(doc.get("started_at"))
    if finished is None or started is None or started > finished:
        raise refuse(f"its times are not a run's (started_at {doc.get('started_at')!r}, finished_at "
                     f"{doc.get('finished_at')!r})", "ISO 8601 times with a UTC offset, the start before the end",
                     rerun)
    if finished > now + SKEW:
        raise refuse(f"it says the staging run finished at {finished.isoformat()}, {_duration(finished - now)} "
                     f"after this machine's time ({now.isoformat(timespec='seconds')})",
                     "evidence from the past (clocks more than 5 min apart are not trusted)",
                     "check both machines' clocks (NTP), then " + rerun)
    if now - finished > limit:
        raise refuse(f"it is {_duration(now - finished)} old (the staging run finished "
                     f"{finished.isoformat(timespec='seconds')})", f"evidence at most {limit_words} old",
                     rerun + " (staging may have changed since), or raise [promotion] evidence_max_age in the plan")
    target = doc["target"]
    if same := same_place(target, address):
        raise refuse(f"it is the evidence of this same database ({same})", "the evidence of another environment "
                     "(staging), so that production is not its own proof", "give the staging run's evidence")
    return Relied(shown, sealed, target, finished.isoformat(), doc)


def _shape(doc: Mapping[str, Any]) -> str:
    """What an evidence document this gate reads lacks, or ""."""
    wants: dict[str, type | tuple[type, ...]] = {
        "mode": str, "green": bool, "plan": dict, "files": list, "selection": dict, "target": dict,
        "checks": list, "migrations": list, "started_at": str, "finished_at": str}
    for key, kind in wants.items():
        if not isinstance(doc.get(key), kind):
            return f"it has no {key!r} of the right type (written by an older pytest-phase4?)"
    if not isinstance(doc["plan"].get("sha256"), str) or not isinstance(doc["selection"].get("complete"), bool):
        return "its plan or selection lacks the sha256 or complete field"
    for entry in [*doc["files"], *doc["checks"], *doc["migrations"]]:
        if not isinstance(entry, dict):
            return "its files, checks or migrations hold something else than objects"
    return ""


def not_green(doc: Mapping[str, Any]) -> str:
    """Why the document does not show a green run, worked out from its checks and migrations, or "" (the writer
    sets its green field with this very rule)."""
    for m in doc["migrations"]:
        if m.get("status") not in DONE:
            return f"migration {m.get('file')} {m.get('status')}" + (f" ({m['note']})" if m.get("note") else "")
    for c in doc["checks"]:
        if c.get("outcome") not in ("passed", "skipped"):
            return f"{c.get('id')} {c.get('outcome')}" + (f" ({c['message']})" if c.get("message") else "")
    if doc.get("halted"):
        return f"halted after {doc['halted'].get('step') if isinstance(doc['halted'], dict) else doc['halted']}"
    return ""


def not_proved(doc: Mapping[str, Any], may_skip: Sequence[str]) -> list[str]:
    """The checks the evidence shows skipped (any reason) that no glob of may_skip names, each with its reason.
    A glob matches a check's id as the evidence writes it, a plan check's without the plan's path
    (`smoke::http[...]`), a custom test's with or without its folder (`test_tenants.py::test_x`), or its last
    part (the test id, `git_status_clean`); only `*` and `?` are
    wildcards (ids hold brackets: `backup[restore]` is literal)."""
    out = []
    for c in doc["checks"]:
        if c.get("outcome") != "skipped":
            continue
        full = str(c.get("id", ""))
        first, _, rest = full.partition("::")
        shown = rest if first.endswith(".toml") else full  # a plan check by its step, a custom test by its path
        names = {full, shown, full.rsplit("::", 1)[-1], f"{first.rsplit('/', 1)[-1]}::{rest}"}
        if not any(_glob(g).fullmatch(n) for n in names for g in may_skip):
            out.append(f"{shown} ({c.get('message') or 'no reason given'})")
    return out


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern),
                      re.DOTALL)


def not_complete(doc: Mapping[str, Any]) -> str:
    for c in doc["checks"]:
        if c.get("outcome") in ("deselected", "not collected"):
            return f"{c.get('id')} {c.get('outcome')}" + (f" ({c['message']})" if c.get("message") else "")
        if c.get("no_baseline"):
            return f"{c.get('id')} skipped for want of a baseline"
    selection = doc["selection"]
    if selection.get("deselected"):
        return f"{selection['deselected']} test(s) deselected ({_selection_words(selection)})"
    return ""


def _selection_words(selection: Mapping[str, Any]) -> str:
    parts = [f"-m {selection['markexpr']!r}" if selection.get("markexpr") else "",
             f"-k {selection['keyword']!r}" if selection.get("keyword") else ""]
    return ", ".join(p for p in parts if p) or "args " + " ".join(str(a) for a in selection.get("args") or [])


def _files_differ(theirs: Sequence[Mapping[str, Any]], ours: Sequence[FileHash]) -> str:
    listed: dict[str, str] = {}
    for f in theirs:
        path, sha = f.get("path"), f.get("sha256")
        if not isinstance(path, str) or not isinstance(sha, str):
            return "its files list holds an entry without a path or sha256"
        if path in listed:
            return f"its files list names {path} twice"
        listed[path] = sha
    here = {mine.path: mine for mine in ours}
    for path, mine in here.items():
        if path not in listed:
            return f"{path} ({mine.role}) is not in the files the staging run verified (added since, or renamed)"
        if listed[path] != mine.sha256:
            return (f"{path} ({mine.role}) differs from the file the staging run verified: sha256 "
                    f"{listed[path][:12]} there, {mine.sha256[:12]} here")
    for path in listed:
        if path not in here:
            return f"{path} was verified by the staging run and is not part of this run (removed or renamed)"
    return ""


def _verdicts_missing(doc: Mapping[str, Any], expected: Sequence[str], migrations: Sequence[str]) -> str:
    ids = {str(c.get("id", "")).split("::", 1)[-1] for c in doc["checks"]}  # without the plan's path: a checkout's
    for key in expected:
        if key not in ids:
            return f"it holds no verdict for the plan's check {key}"
    applied = {str(m.get("file")) for m in doc["migrations"]}
    for file in migrations:
        if file not in applied:
            return f"it holds no verdict for the plan's migration {file}"
    return ""


def _applied_differ(migrations: Sequence[Mapping[str, Any]], ours: Sequence[FileHash]) -> str:
    """A migration the staging run applied with other bytes than its files list says (changed during that run)."""
    here = {Path(f.path).name: f for f in ours if f.role == "migration"}
    for m in migrations:
        f = here.get(str(m.get("file")))
        if f is None or m.get("sha256") != f.sha256:
            return (f"migration {m.get('file')} was applied on staging with sha256 {str(m.get('sha256'))[:12]}, "
                    f"this run's file has {f.sha256[:12] if f else 'no such migration'}")
    return ""


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _duration(span: timedelta) -> str:
    seconds = int(abs(span.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{minutes} min" if minutes else f"{seconds} s"


def address_of(dsn: str) -> dict[str, str | None]:
    """host, port and dbname the DSN (with libpq's environment) names, before connecting; None where unknown."""
    try:
        params = conninfo_to_dict(dsn) if dsn else {}
    except Exception:  # a malformed DSN is the target's own error, reported where it connects
        params = {}
    env = os.environ
    host = params.get("host") or params.get("hostaddr") or env.get("PGHOST") or env.get("PGHOSTADDR")
    port = params.get("port") or env.get("PGPORT") or "5432"
    dbname = params.get("dbname") or env.get("PGDATABASE") or params.get("user") or env.get("PGUSER")
    return {"host": str(host) if host else None, "port": str(port), "dbname": str(dbname) if dbname else None}


def place(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Where a connection landed, as the server says (a pooler or a service file may name the database otherwise):
    current_database(), the server's address and port (None over a Unix socket), the cluster's system identifier
    (None without superuser or pg_monitor), and the host, port and database name the DSN gave."""
    row = conn.execute("SELECT current_database(), host(inet_server_addr()), inet_server_port()").fetchone()
    ident = identity(conn)
    return {"name": None, "host": conn.info.host, "port": conn.info.port,
            "dbname": str(row[0]) if row else conn.info.dbname, "dsn_dbname": conn.info.dbname,
            "server_addr": row[1] if row else None, "server_port": row[2] if row else None,
            "system_identifier": ident.get("system_identifier") or None}


def same_place(theirs: Mapping[str, Any], here: Mapping[str, Any]) -> str:
    """Why the evidence's target is this run's database, or "": the same database name (the server's
    current_database() once connected) in the same cluster (system identifier); where either is unknown, at the
    same server address and port; before connecting, the same host, port and database name."""
    name, other = here.get("dbname"), theirs.get("dbname")
    if not name or not other or str(name) != str(other):
        return ""
    ours, their_id = here.get("system_identifier"), theirs.get("system_identifier")
    if ours and their_id:
        return f"database {name} of the cluster with system identifier {ours}" if str(ours) == str(their_id) else ""
    addr, port = here.get("server_addr"), here.get("server_port")
    if addr and port and (str(addr), str(port)) == (str(theirs.get("server_addr")), str(theirs.get("server_port"))):
        return f"database {name} at server address {addr}:{port}"
    host, port = here.get("host"), here.get("port")
    if host and str(host) == str(theirs.get("host")) and str(port) == str(theirs.get("port")):
        return f"database {name} on {host}:{port}"
    return ""
