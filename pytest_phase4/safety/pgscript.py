"""Run pg_restore's SQL inside a transaction of ours: the archive's table of contents, a chosen subset of its
entries, and their script streamed into a psycopg connection (COPY data included).

`pg_restore --single-transaction` commits on its own; a rollback must commit its drops, its restore, its
ledger rows and its proof together or not at all. pg_restore writes the script (`--file=-`) and this module
runs it on the rollback's connection: SQL between COPY blocks as one simple query, each `COPY ... FROM stdin`
block through psycopg's COPY, data line by line as pg_restore wrote it. psql meta-commands other than pg_dump's
`\\restrict`/`\\unrestrict` are refused; the script's `SET lock_timeout = 0` and `SET statement_timeout = 0` are
dropped so that the rollback keeps its own limits. No pytest here.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from pytest_phase4.db import dsn as dsnlib
from pytest_phase4.errors import CheckFailed
from pytest_phase4.safety.backup import Tools

# Entry descriptions pg_restore --list prints (longest first: "TABLE DATA" before "TABLE").
_DESCS = sorted(["TABLE", "TABLE DATA", "VIEW", "MATERIALIZED VIEW", "MATERIALIZED VIEW DATA", "SEQUENCE",
                 "SEQUENCE OWNED BY", "SEQUENCE SET", "INDEX", "INDEX ATTACH", "CONSTRAINT", "FK CONSTRAINT",
                 "CHECK CONSTRAINT", "DEFAULT", "TRIGGER", "POLICY", "ROW SECURITY", "FUNCTION", "PROCEDURE",
                 "AGGREGATE", "TYPE", "DOMAIN", "SCHEMA", "EXTENSION", "COMMENT", "ACL", "RULE", "STATISTICS",
                 "SECURITY LABEL", "DEFAULT ACL", "COLLATION", "FOREIGN TABLE", "EVENT TRIGGER", "PUBLICATION",
                 "PUBLICATION TABLE", "BLOB", "BLOBS", "LARGE OBJECT", "SHELL TYPE", "CAST", "OPERATOR",
                 "TABLE ATTACH", "ENCODING", "STDSTRINGS", "SEARCHPATH", "DATABASE", "DATABASE PROPERTIES"],
                key=len, reverse=True)
_LINE = re.compile(r"^(\d+); (\d+) (\d+) (.*)$")
_SKIPPED = (b"SET lock_timeout = 0;", b"SET statement_timeout = 0;", b"SET idle_in_transaction_session_timeout = 0;",
            b"SET transaction_timeout = 0;")
_COPY = re.compile(rb"^COPY (.+) FROM stdin;$")
_SESSION = ("search_path", "check_function_bodies", "client_min_messages", "row_security", "xmloption",
            "standard_conforming_strings", "default_table_access_method", "default_tablespace", "default_with_oids")
_LO_OPEN = re.compile(rb"^SELECT pg_catalog\.lo_open\('(\d+)', \d+\);$")


@dataclass(frozen=True)
class Entry:
    line: str  # as pg_restore --list printed it: fed back to pg_restore --use-list
    dump_id: int
    catalog: int  # the catalog's oid (pg_class = 1259, ...), 0 for entries that are not catalog objects
    oid: int  # the object's oid in the database the dump was taken from
    desc: str
    schema: str  # "-" when none
    tag: str
    owner: str


def parse_entry(line: str) -> Entry | None:
    m = _LINE.match(line)
    if not m:
        return None
    rest = m.group(4)
    desc = next((d for d in _DESCS if rest.startswith(d + " ")), None)
    if desc is None:
        return None
    words = rest[len(desc) + 1:].split(" ")
    schema, owner, tag = words[0], words[-1], " ".join(words[1:-1])
    return Entry(line, int(m.group(1)), int(m.group(2)), int(m.group(3)), desc, schema, tag, owner)


def listing(tools: Tools, archive: Path, secrets: list[str]) -> list[Entry]:
    """The archive's entries in pg_restore's own order (dependencies first)."""
    out = _check(subprocess.run([tools.path("pg_restore"), "--list", str(archive)], capture_output=True,
                                check=False), secrets, "pg_restore --list", archive)
    return [e for line in out.decode().splitlines() if not line.startswith(";") and (e := parse_entry(line))]


def table_data(toc: list[Entry], oid: int, schema: str, name: str) -> Entry | None:
    """The TABLE DATA entry of a table: by its oid, else by its name (a table re-created since has another oid)."""
    found = [e for e in toc if e.desc == "TABLE DATA"]
    return next((e for e in found if e.oid == oid), None) or next(
        (e for e in found if (e.schema, e.tag) == (schema, name)), None)


def _check(proc: subprocess.CompletedProcess[bytes], secrets: list[str], what: str, archive: Path) -> bytes:
    if proc.returncode != 0:
        message = dsnlib.scrub(proc.stderr.decode(errors="replace").strip(), secrets)
        raise CheckFailed(f"{what} to read the backup", f"exit {proc.returncode}: {message.splitlines()[-1:]}",
                          str(archive), details=message.splitlines()[-12:])
    return proc.stdout


CopyTarget = Callable[[bytes], bytes | None]  # COPY line -> the COPY statement to run instead (None: as is)


def run(conn: psycopg.Connection[Any], tools: Tools, archive: Path, secrets: list[str],
        entries: Iterable[Entry] | None = None, extra: tuple[str, ...] = (), copy_into: CopyTarget | None = None,
        or_replace: bool = False, blobs: set[int] | None = None) -> int:
    """Run the script of the given entries (in their order; all when None) on conn, inside its transaction.
    Returns the number of COPY rows written. The caller's transaction decides whether any of it stays.
    With or_replace, CREATE VIEW/FUNCTION/PROCEDURE become CREATE OR REPLACE (an altered object put back).
    Large objects' data (one BLOBS entry holds every one) is written for the `blobs` oids only (None: all)."""
    args = [tools.path("pg_restore"), "--file=-", *extra]
    listfile = None
    if entries is not None:
        chosen = list(entries)
        if not chosen:
            return 0
        fd, listfile = tempfile.mkstemp(prefix="phase4-", suffix=".list")
        with os.fdopen(fd, "w") as f:
            f.write("".join(e.line + "\n" for e in chosen))
        args.append(f"--use-list={listfile}")
    # The script SETs search_path = '' and more for the session: what runs after it gets the session's own back
    saved = conn.execute("SELECT name, setting FROM pg_catalog.pg_settings WHERE name = ANY(%s)",
                         (list(_SESSION),)).fetchall()
    proc = subprocess.Popen([*args, str(archive)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        rows = _feed(conn, proc.stdout, copy_into, or_replace, blobs)
        conn.execute("SELECT pg_catalog.set_config(n, v, false) FROM unnest(%s::text[], %s::text[]) AS s(n, v)",
                     ([n for n, _ in saved], [v for _, v in saved]))
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        if listfile:
            os.unlink(listfile)
    err = proc.stderr.read() if proc.stderr else b""
    if proc.wait() != 0:
        _check(subprocess.CompletedProcess(args, proc.returncode, b"", err), secrets, "pg_restore", archive)
    return rows


_REPLACEABLE = (b"CREATE VIEW ", b"CREATE FUNCTION ", b"CREATE PROCEDURE ")


def _feed(conn: psycopg.Connection[Any], stream: Any, copy_into: CopyTarget | None, or_replace: bool,
          blobs: set[int] | None = None) -> int:
    pending: list[bytes] = []
    rows, data_entry = 0, False  # COPY ... FROM stdin starts data only in a TABLE DATA entry
    in_blobs, writing = False, True  # in the BLOBS entry: the large object being written is a chosen one
    with conn.cursor() as cur:
        for raw in stream:
            line = raw.rstrip(b"\n")
            if line.startswith((b"\\restrict", b"\\unrestrict")) or line.strip() in _SKIPPED:
                continue
            if line.startswith(b"-- ") and b"; Type: " in line:
                in_blobs, writing = b"; Type: BLOBS;" in line, True
            if in_blobs:  # pg_restore wraps each large object in BEGIN/COMMIT: never in our transaction
                if line in (b"BEGIN;", b"COMMIT;"):
                    continue
                if (m := _LO_OPEN.match(line)) is not None:
                    writing = blobs is None or int(m.group(1)) in blobs
                if not writing:
                    continue
            if line.startswith(b"\\"):
                raise CheckFailed("a restore script of SQL and COPY data only", f"a psql meta-command: "
                                  f"{line[:60].decode(errors='replace')}", "pg_restore output")
            if line.startswith(b"-- ") and b"; Type: " in line:  # pg_restore's header of each entry
                data_entry = b"; Type: TABLE DATA;" in line
            m = _COPY.match(line)
            if m and data_entry and _statement_ended(pending):
                if pending:
                    cur.execute(b"\n".join(pending))
                    pending = []
                statement = (copy_into(line) if copy_into else None) or line[:-1]
                with cur.copy(statement) as copy:
                    for data in stream:
                        if data in (b"\\.\n", b"\\."):
                            break
                        copy.write(data)
                        rows += 1
                continue
            if or_replace and line.startswith(_REPLACEABLE):
                line = b"CREATE OR REPLACE " + line[len(b"CREATE "):]
            pending.append(line)
        if any(p.strip() and not p.startswith(b"--") for p in pending):
            cur.execute(b"\n".join(pending))
    return rows


def _statement_ended(pending: list[bytes]) -> bool:
    """A COPY line starts a data block only where a statement may start: after a ';' or a comment line."""
    for line in reversed(pending):
        text = line.strip()
        if not text or text.startswith(b"--"):
            continue
        return text.endswith(b";")
    return True


def copy_columns(copy_line: bytes) -> tuple[str, list[str]]:
    """`COPY schema.table (a, "b c") FROM stdin;` -> ('schema.table', ['a', 'b c'])."""
    m = re.match(rb"^COPY (.+?) \((.*)\) FROM stdin;$", copy_line)
    if not m:
        return copy_line.decode(), []
    names, current, quoted, i = [], "", False, 0
    text = m.group(2).decode()
    while i < len(text):
        c = text[i]
        if quoted:
            if c == '"' and text[i + 1:i + 2] == '"':
                current += '"'
                i += 1
            elif c == '"':
                quoted = False
            else:
                current += c
        elif c == '"':
            quoted = True
        elif c == ",":
            names.append(current.strip())
            current = ""
        else:
            current += c
        i += 1
    names.append(current.strip())
    return m.group(1).decode(), names
