"""pg_dump / pg_restore: find the client tools, make a verified backup, restore it. No pytest here.

Passwords travel in the child's environment (PGPASSWORD), never on its command line (visible in `ps`) and
never in BACKUP_INFO.txt; every message that can quote a DSN goes through the target's scrub().
"""

from __future__ import annotations

import configparser
import contextlib
import glob
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pytest_phase4.db import dsn as dsnlib
from pytest_phase4.db import scratchdb
from pytest_phase4.errors import CheckFailed

DUMP, SCHEMA, SNAPSHOT, INFO = "full.dump", "schema.sql", "snapshot.json", "BACKUP_INFO.txt"
_TOOLS = ("pg_dump", "pg_restore")


@dataclass(frozen=True)
class Tools:
    bindir: str
    major: int
    version: str  # as the tool prints it, e.g. "15.18"

    def path(self, tool: str) -> str:
        return os.path.join(self.bindir, tool)


def _version(binary: str) -> tuple[int, str] | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=True).stdout
        if m := re.search(r"\)\s+((\d+)[.\d]*)", out):
            return int(m.group(2)), m.group(1)
    return None


def candidate_bindirs(tool: str = "pg_dump") -> list[str]:
    """Where a client tool may live: PATH, `pg_config --bindir`, then Debian's /usr/lib/postgresql/<major>/bin."""
    found: list[str] = []
    if on_path := shutil.which(tool):
        found.append(os.path.dirname(on_path))
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10, check=True)
        found.append(out.stdout.strip())
    versioned = glob.glob("/usr/lib/postgresql/*/bin")
    found += sorted(versioned, key=lambda p: [int(n) for n in re.findall(r"\d+", p)], reverse=True)
    return list(dict.fromkeys(d for d in found if d))


def find_tools(server_major: int) -> Tools:
    """pg_dump and pg_restore of the server's major version, else the newest newer one.

    pg_dump refuses a newer server ("server version mismatch"): say so before any backup is attempted."""
    seen = [t for t in locate("pg_dump") if os.access(t.path("pg_restore"), os.X_OK)]
    usable = [t for t in seen if t.major >= server_major]
    if usable:
        return min(usable, key=lambda t: (t.major != server_major, -t.major))
    found = ", ".join(f"pg_dump {t.version} in {t.bindir}" for t in seen) or "no pg_dump/pg_restore at all"
    raise CheckFailed(f"pg_dump and pg_restore of major version >= {server_major} (the server's)", found,
                      "PATH, pg_config --bindir, /usr/lib/postgresql/*/bin",
                      hint=f"install the PostgreSQL {server_major} client tools (e.g. apt-get install "
                           f"postgresql-client-{server_major}): an older pg_dump cannot back up this server")


def locate(tool: str) -> list[Tools]:
    """Every installed copy of a PostgreSQL client tool with its version, in search order."""
    found = []
    for bindir in candidate_bindirs(tool):
        binary = os.path.join(bindir, tool)
        if os.access(binary, os.X_OK) and (version := _version(binary)) is not None:
            found.append(Tools(bindir, *version))
    return found


@contextlib.contextmanager
def client_args(dsn: str) -> Iterator[tuple[str, dict[str, str]]]:
    """A conninfo for the command line with no secret in it (`ps` shows it to every local user), and the
    environment carrying the secrets: the password in PGPASSWORD; the SSL key's passphrase, which has no variable,
    in a service file of its own (mode 0600, in a private folder, deleted on leaving)."""
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None} if dsn else {}
    env = dict(os.environ)
    if password := params.pop("password", None):
        env["PGPASSWORD"] = password
    passphrase = params.pop("sslpassword", None)
    if not passphrase:
        yield make_conninfo(**params), env
        return
    with tempfile.TemporaryDirectory(prefix="phase4-libpq-") as tmp:
        section = {**_service(params.pop("service", None), env), "sslpassword": passphrase}
        path = Path(tmp) / "pg_service.conf"
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write("[phase4]\n" + "".join(f"{key}={value}\n" for key, value in section.items()))
        env["PGSERVICEFILE"] = str(path)
        yield make_conninfo(service="phase4", **params), env


def _service(name: str | None, env: dict[str, str]) -> dict[str, str]:
    """The settings of the DSN's own service, which the service file above takes the place of."""
    if not name:
        return {}
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read([env.get("PGSERVICEFILE") or os.path.expanduser("~/.pg_service.conf"),
                 os.path.join(env.get("PGSYSCONFDIR", ""), "pg_service.conf")])
    return dict(parser[name]) if parser.has_section(name) else {}


def command_line_conninfo(dsn: str) -> str:
    """The conninfo a person types, with no secret in it."""
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None} if dsn else {}
    return make_conninfo(**{k: v for k, v in params.items() if k not in ("password", "sslpassword")})


def with_dbname(dsn: str, dbname: str) -> str:
    return make_conninfo(dsn, dbname=dbname)


def _run(args: list[str], env: dict[str, str], secrets: list[str], what: str, where: str) -> str:
    # umask 077: what the tool writes (a dump holds every row) is readable by its owner only
    proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False, umask=0o077)
    if proc.returncode != 0:
        message = dsnlib.scrub((proc.stderr or proc.stdout).strip(), secrets)
        last = message.splitlines()[-1] if message else ""
        raise CheckFailed(what, f"{Path(args[0]).name} exited with {proc.returncode}" + (f": {last}" if last else ""),
                          where, details=message.splitlines()[-12:])
    return proc.stdout


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def private_folder(folder: Path) -> Path:
    """A backup folder only its owner can enter (mode 0700): the files in it hold every row of the database."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)
    return folder


def write_private(path: Path, text: str) -> Path:
    """A file of a backup, readable by its owner only (mode 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    path.chmod(0o600)
    return path


def dump(tools: Tools, dsn: str, folder: Path, secrets: list[str], exported: str | None = None,
         name: str = DUMP, lock_wait: str | None = None) -> Path:
    """`pg_dump --format=custom` of the whole database into folder/full.dump; with `exported` (the id of a
    transaction snapshot exported by a transaction that stays open meanwhile), of exactly what it sees; with
    `lock_wait`, failing rather than waiting longer for a table's lock (--lock-wait-timeout)."""
    private_folder(folder)
    target = folder / name
    wait = [f"--lock-wait-timeout={lock_wait}"] if lock_wait else []
    with client_args(dsn) as (conninfo, env):
        _run([tools.path("pg_dump"), "--format=custom", f"--file={target}", f"--dbname={conninfo}", *wait,
              *_snapshot_arg(exported)], env, secrets, "a custom-format dump of the whole database", str(target))
    target.chmod(0o600)
    return target


def dump_schema(tools: Tools, dsn: str, folder: Path, secrets: list[str], exported: str | None = None) -> Path:
    target = folder / SCHEMA
    with client_args(dsn) as (conninfo, env):
        _run([tools.path("pg_dump"), "--schema-only", f"--file={target}", f"--dbname={conninfo}",
              *_snapshot_arg(exported)], env, secrets, "a schema-only dump", str(target))
    target.chmod(0o600)
    return target


def _snapshot_arg(exported: str | None) -> list[str]:
    return [f"--snapshot={exported}"] if exported else []


def markers_in_dump(tools: Tools, archive: Path, secrets: list[str]) -> set[str]:
    """The backup markers (pytest_phase4.backups ids) the archive holds: what ties a dump to its snapshot.json."""
    out = _run([tools.path("pg_restore"), "--data-only", "--schema=pytest_phase4", "--table=backups",
                "--file=-", str(archive)], dict(os.environ), secrets, "pg_restore to read the backup's marker",
               str(archive))
    found, inside = set(), False
    for line in out.splitlines():
        if line.startswith("COPY pytest_phase4.backups "):
            inside = True
        elif inside and line == "\\.":
            inside = False
        elif inside:
            found.add(line.split("\t", 1)[0])
    return found


def restore_command(tools: Tools, dsn: str, archive: Path) -> str:
    """The exact command a person runs to put the backup back (Part 7, full rollback); no password in it."""
    return shlex.join([tools.path("pg_restore"), "--clean", "--if-exists", "--single-transaction",
                       "--exit-on-error", f"--dbname={command_line_conninfo(dsn)}", str(archive.resolve())])


def write_info(folder: Path, *, plan: str, source: str, server: str, tools: Tools, archive: Path, sha: str,
               command: str, made_at: datetime) -> Path:
    size = archive.stat().st_size
    lines = [
        "pytest-phase4 backup (runbook Part 2), taken before the first migration",
        f"plan:      {plan}",
        f"date:      {made_at:%Y-%m-%d %H:%M:%S %Z}",
        f"source:    {source}",  # already redacted by the caller: no password is ever written here
        f"server:    PostgreSQL {server}",
        f"pg_dump:   {tools.version} ({tools.path('pg_dump')})",
        f"file:      {archive.name}",
        f"size:      {size:,} bytes",
        f"sha256:    {sha}",
        f"schema:    {SCHEMA} (schema-only dump)",
        f"snapshot:  {SNAPSHOT} (row counts, content checksums, catalog fingerprint)",
        "",
        "Restore (drops and recreates every object in the dump; drop objects created after the backup first,",
        "or run `pytest --phase4 --phase4-rollback` which does both and proves the result):",
        f"  {command}",
        "The password, if any, comes from PGPASSWORD or ~/.pgpass; it is never written here.",
    ]
    return write_private(folder / INFO, "\n".join(lines) + "\n")


def read_info_sha(folder: Path) -> str | None:
    with contextlib.suppress(OSError):
        for line in (folder / INFO).read_text().splitlines():
            if line.startswith("sha256:"):
                return line.split(":", 1)[1].strip()
    return None


def verify_archive(tools: Tools, archive: Path, expected_sha: str | None, secrets: list[str]) -> int:
    """The archive is the file that was written and pg_restore reads all of it; returns its TOC entry count.

    `pg_restore --list` reads only the table of contents, so a truncated data section passes it: the sha256
    and a full read to /dev/null (every data block decompressed) catch that."""
    where = str(archive)
    if not archive.is_file():
        raise CheckFailed("the backup file to exist", "no such file", where)
    if expected_sha is not None and (actual := sha256_of(archive)) != expected_sha:
        raise CheckFailed(f"sha256 {expected_sha[:16]} (recorded when the backup was made)",
                          f"sha256 {actual[:16]}, {archive.stat().st_size:,} bytes: the file changed or is "
                          "truncated", where, hint="do not migrate: take a new backup (rerun the backup stage)")
    env = dict(os.environ)
    listing = _run([tools.path("pg_restore"), "--list", str(archive)], env, secrets,
                   "pg_restore --list to read the archive", where)
    _run([tools.path("pg_restore"), f"--file={os.devnull}", str(archive)], env, secrets,
         "pg_restore to read every block of the archive", where)
    return sum(1 for line in listing.splitlines() if line and not line.startswith(";"))


def restore(tools: Tools, dsn: str, archive: Path, secrets: list[str], *, clean: bool, owner: bool = True) -> None:
    args = [tools.path("pg_restore"), "--single-transaction", "--exit-on-error"]
    if clean:
        args += ["--clean", "--if-exists"]
    if not owner:
        args += ["--no-owner", "--no-privileges"]
    with client_args(dsn) as (conninfo, env):
        _run([*args, f"--dbname={conninfo}", str(archive)], env, secrets, "pg_restore to restore the backup",
             dsnlib.redact(dsn))


@contextlib.contextmanager
def scratch_database(dsn: str, dbname: str, purpose: str) -> Iterator[scratchdb.Scratch]:
    """An empty database of this run's own on the target's server, dropped afterwards even on failure (only that
    one: scratchdb.py never drops a database it did not create)."""
    with scratchdb.scratch_database(dsn, dbname, purpose) as made:
        yield made


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "plan"
