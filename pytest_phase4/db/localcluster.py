"""A local PostgreSQL cluster for EmbeddedPostgres (embedded.py): a copy of one initdb template per process and
bindir, in a temp dir of its own (RAM when roomy) that also holds the socket and the log, run as `postgres` when
we are root. No pytest here."""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

from psycopg.conninfo import make_conninfo

# Durability is pointless for a cluster deleted at the end; these make start-up and writes fast.
_FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
_SHM = "/dev/shm"
_SHM_MIN_FREE = 4 << 30


class EmbeddedUnavailable(RuntimeError):
    """No throwaway server could be started; ``reasons`` maps each kind tried to why it failed."""

    def __init__(self, message: str, reasons: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.reasons = reasons or {}


def _free_port() -> int:
    # The server listens only on its socket, but the port names the socket file; a free TCP port keeps
    # clusters started side by side (or by another tool in /tmp) from ever colliding.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _postgres_owner() -> tuple[int, int] | None:
    """uid/gid to run initdb and pg_ctl as: they refuse root, so root delegates to `postgres`."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise EmbeddedUnavailable(
            "running as root, where initdb and pg_ctl refuse to run, and there is no 'postgres' "
            "system user to run them as (the PostgreSQL server package creates one)"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _traversable(path: str, uid: int, gid: int) -> bool:
    for parent in [Path(path), *Path(path).parents]:
        st = parent.stat()
        bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _default_base() -> str:
    # A new cluster writes ~40 MB in ~1,000 files: on this project's virtual disks that costs 0.5-1.5 s, in RAM
    # ~0.1 s. Use /dev/shm only when it is roomy (Docker's default is 64 MB) so test data still fits.
    with contextlib.suppress(OSError):
        fs = os.statvfs(_SHM)
        if fs.f_bavail * fs.f_frsize >= _SHM_MIN_FREE and os.access(_SHM, os.W_OK | os.X_OK):
            return _SHM
    return tempfile.gettempdir()


def _make_tmpdir(owner: tuple[int, int] | None, prefix: str, base: str | None) -> str:
    base = base or _default_base()
    if owner and not _traversable(base, *owner):
        base = "/tmp"  # TMPDIR (e.g. under /root) is unreachable for the postgres user
    tmpdir = tempfile.mkdtemp(prefix=prefix, dir=base)
    if owner:
        # Root clients still reach the socket in this 0700 dir: root bypasses permission checks.
        os.chown(tmpdir, *owner)
    return tmpdir


# In the server's environment, libpq's default for every connection its sessions open (dblink, postgres_fdw):
# GSSAPI encryption required, which fails at once over a local socket and without Kerberos credentials, so that
# nothing run on an isolated server reaches another one (unless a connection string says gssencmode itself).
NO_OUTBOUND = {"PGGSSENCMODE": "require"}


def _run(args: list[str], cwd: str, owner: tuple[int, int] | None,
         extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"} | (extra_env or {})
    uid, gid = owner or (None, None)
    return subprocess.run(
        args, capture_output=True, text=True, timeout=120, cwd=cwd, env=env,
        user=uid, group=gid, extra_groups=[] if owner else None, check=False,
    )  # fmt: skip


# initdb is most of a cluster's start-up time (0.5-1.1 s here), copying its output ~0.2 s: initdb once per
# process and bindir, then copy. The copies share a system identifier, which only replication cares about.
TEMPLATES: dict[str, str] = {}
_TEMPLATE_LOCK = threading.Lock()


def _template(bindir: str, owner: tuple[int, int] | None, base: str | None) -> str:
    with _TEMPLATE_LOCK:
        if (datadir := TEMPLATES.get(bindir)) and os.path.isdir(datadir):
            return datadir
        tmpdir = _make_tmpdir(owner, "phase4-pg-template-", base)
        datadir = os.path.join(tmpdir, "data")
        done = _run([os.path.join(bindir, "initdb"), "-D", datadir, "--no-sync", "-A", "trust",
                     "-U", "postgres", "-E", "UTF8", "--locale=C"], tmpdir, owner)  # fmt: skip
        if done.returncode != 0:
            shutil.rmtree(tmpdir, ignore_errors=True)
            out = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise RuntimeError(f"initdb failed (exit {done.returncode}):\n{out}")
        atexit.register(_remove_template, tmpdir, os.getpid())
        TEMPLATES[bindir] = datadir
        return datadir


def _remove_template(tmpdir: str, pid: int) -> None:
    if os.getpid() == pid:  # a forked child exiting must not delete its parent's template
        shutil.rmtree(tmpdir, ignore_errors=True)


def _copy_datadir(source: str, target: str, owner: tuple[int, int] | None) -> None:
    shutil.copytree(source, target, symlinks=True)
    if owner:  # root made the copy; the server must own its files
        for root, dirs, files in os.walk(target):
            for name in [*dirs, *files]:
                os.lchown(os.path.join(root, name), *owner)
        os.chown(target, *owner)


def _tail(path: str, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty server log)"


def _conf_value(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class LocalCluster:
    """A copy of the initdb template in its own temp dir, which also holds the socket and the log."""

    def __init__(self, bindir: str, base: str | None, settings: dict[str, str] | None = None,
                 isolated: bool = False) -> None:
        self.bindir = bindir
        self.env = NO_OUTBOUND if isolated else {}
        self.base = base
        self.settings = settings or {}
        self.owner = _postgres_owner()
        self.port = _free_port()
        self.tmpdir = _make_tmpdir(self.owner, "phase4-pg-", base)
        self.datadir = os.path.join(self.tmpdir, "data")
        self.logfile = os.path.join(self.tmpdir, "server.log")

    def start(self) -> str:
        _copy_datadir(_template(self.bindir, self.owner, self.base), self.datadir, self.owner)
        # Settings go in the config file, not `pg_ctl -o`: pg_ctl hands -o to a shell, which would mangle
        # socket paths with spaces or quotes.
        settings = {**_FAST_SETTINGS, **self.settings, "listen_addresses": "", "unix_socket_directories": self.tmpdir,
                    "port": str(self.port)}  # fmt: skip
        with open(os.path.join(self.datadir, "postgresql.conf"), "a") as conf:
            conf.writelines(f"{key} = {_conf_value(value)}\n" for key, value in settings.items())
        pg_ctl = os.path.join(self.bindir, "pg_ctl")
        done = _run([pg_ctl, "start", "-w", "-t", "60", "-D", self.datadir, "-l", self.logfile],
                    self.tmpdir, self.owner, self.env)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(
                f"pg_ctl start failed (exit {done.returncode}); the server log ends with:\n"
                f"{_tail(self.logfile)}"
            )
        return make_conninfo(host=self.tmpdir, port=self.port, user="postgres", dbname="postgres")

    def pg_ctl(self, *args: str) -> None:
        done = _run([os.path.join(self.bindir, "pg_ctl"), *args, "-D", self.datadir, "-l", self.logfile],
                    self.tmpdir, self.owner, self.env)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl {args[0]} failed (exit {done.returncode}):\n{_tail(self.logfile)}")

    def cleanup(self) -> None:
        if os.path.exists(os.path.join(self.datadir, "postmaster.pid")):
            pg_ctl = os.path.join(self.bindir, "pg_ctl")
            _run([pg_ctl, "stop", "-w", "-m", "fast", "-D", self.datadir], self.tmpdir, self.owner)
        shutil.rmtree(self.tmpdir, ignore_errors=True)
