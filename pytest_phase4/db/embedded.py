"""A throwaway PostgreSQL server: a local cluster in a temp dir, else a testcontainers container."""

from __future__ import annotations

import contextlib
import glob
import importlib
import os
import re
import secrets
import shutil
import subprocess
import warnings
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pytest_phase4.db.dsn import connect_error_message, scrub
from pytest_phase4.db.localcluster import EmbeddedUnavailable, LocalCluster

# Callers import EmbeddedUnavailable from here; it lives with the local cluster, which raises it too.
__all__ = ["EmbeddedPostgres", "EmbeddedUnavailable", "Kind", "bindir_for", "default_image",
           "find_bindir", "start_embedded"]

Kind = Literal["local", "container"]
_TOOLS = ("initdb", "pg_ctl")
_SEARCHED = "`pg_config --bindir`, PATH and /usr/lib/postgresql/*/bin"


def _has_tools(bindir: str) -> bool:
    return all(os.access(os.path.join(bindir, tool), os.X_OK) for tool in _TOOLS)


def find_bindir() -> str | None:
    """Directory holding initdb and pg_ctl, which Debian keeps off PATH; None if not installed."""
    candidates: list[str] = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, timeout=10, check=True
        )
        candidates.append(out.stdout.strip())
    if (initdb := shutil.which("initdb")) is not None:
        candidates.append(os.path.dirname(os.path.realpath(initdb)))
    # pg_config comes with libpq-dev even without the server, so fall back to the newest installed server.
    versioned = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(versioned, key=lambda p: [int(n) for n in re.findall(r"\d+", p)], reverse=True)
    return next((c for c in candidates if c and _has_tools(c)), None)


def bindir_for(major: int) -> str | None:
    """initdb and pg_ctl of this major version (Debian keeps each in /usr/lib/postgresql/<major>/bin), else the
    newest find_bindir() finds; None if there are none."""
    candidates = [d for d in glob.glob(f"/usr/lib/postgresql/{major}/bin") if _has_tools(d)]
    return candidates[0] if candidates else find_bindir()


def _client_major(bindir: str | None) -> int | None:
    pg_dump = os.path.join(bindir, "pg_dump") if bindir else shutil.which("pg_dump")
    if not pg_dump or not os.access(pg_dump, os.X_OK):
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([pg_dump, "--version"], capture_output=True, text=True, timeout=10, check=True)
        if found := re.search(r"\)\s+(\d+)", out.stdout):
            return int(found[1])
    return None


def default_image() -> str:
    """Container image matching the local pg_dump major, since pg_dump refuses newer servers."""
    return f"postgres:{_client_major(find_bindir()) or 16}-alpine"


def _container_class() -> Any:
    # testcontainers 4 moved the module; the old path still imports with a DeprecationWarning.
    for name in ("testcontainers.community.postgres", "testcontainers.postgres"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return importlib.import_module(name).PostgresContainer
        except ImportError:
            continue
    return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class EmbeddedPostgres:
    """A throwaway server with superuser `postgres` and dbname `postgres`; ``stop()`` deletes everything."""

    def __init__(
        self, kind: Kind = "local", *, bindir: str | None = None, image: str | None = None,
        base_dir: str | None = None, settings: dict[str, str] | None = None, isolated: bool = False,
    ) -> None:  # fmt: skip
        self.kind: Kind = kind
        self.isolated = isolated  # its sessions open no connection to another server (NO_OUTBOUND)
        self.settings = settings or {}  # server settings of a local cluster (e.g. shared_preload_libraries)
        self.bindir = bindir
        self.image = image
        self.base_dir = base_dir  # where a local cluster's temp dir goes; default /dev/shm if roomy, else TMPDIR
        self.server_version: str | None = None
        self._dsn: str | None = None
        self._finalizer: Callable[[], Any] | None = None
        self._cluster: LocalCluster | None = None

    @property
    def dsn(self) -> str:
        if self._dsn is None:
            raise RuntimeError("EmbeddedPostgres is not started; call start() or use it as a context manager")
        return self._dsn

    def start(self) -> EmbeddedPostgres:
        if self._dsn is not None:
            return self
        if self.kind == "local":
            self._start_local()
        else:
            self._start_container()
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                row = conn.execute("SHOW server_version").fetchone()
        except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:
            dsn = self.dsn
            self.stop()
            reason = connect_error_message(dsn, exc)
            raise RuntimeError(f"the {self.kind} server started but {reason}") from None
        except BaseException:
            self.stop()
            raise
        self.server_version = str(row[0]) if row else None
        return self

    def _start_local(self) -> None:
        self.bindir = self.bindir or find_bindir()
        if self.bindir is None or not _has_tools(self.bindir):
            where = self.bindir or _SEARCHED
            raise EmbeddedUnavailable(f"initdb and pg_ctl were not found in {where}")
        cluster = LocalCluster(self.bindir, self.base_dir, self.settings, self.isolated)
        self._cluster = cluster
        # A finalizer, not __del__, so the cluster is stopped and deleted even if the caller forgets.
        self._finalizer = weakref.finalize(self, cluster.cleanup)
        try:
            self._dsn = cluster.start()
        except BaseException:
            self._finalizer()
            raise

    def _start_container(self) -> None:
        container_class = _container_class()
        if container_class is None:
            raise EmbeddedUnavailable("testcontainers (with its postgres module) is not installed")
        self.image = self.image or default_image()
        password = secrets.token_urlsafe(16)
        try:
            # driver=None: the default URL is SQLAlchemy's postgresql+psycopg2://, which psycopg rejects.
            container = container_class(
                self.image, username="postgres", password=password, dbname="postgres", driver=None,
                docker_client_kw={"timeout": 3},
            )  # fmt: skip
        except Exception as exc:  # docker.errors.DockerException, or whatever a half-configured engine raises
            raise EmbeddedUnavailable(f"no Docker engine is reachable ({_one_line(exc)})") from None
        self._finalizer = weakref.finalize(self, container.stop)
        try:
            container.start()
            self._dsn = str(container.get_connection_url(driver=None))
        except Exception as exc:
            self._finalizer()
            reason = scrub(_one_line(exc), [password])
            raise EmbeddedUnavailable(f"the {self.image} container did not start ({reason})") from None

    def crash(self) -> None:
        """Stop the local server the hard way (pg_ctl stop -m immediate): no checkpoint, open transactions cut
        off, crash recovery at the next start. For fault tests."""
        self._local().pg_ctl("stop", "-w", "-m", "immediate")

    def restart(self) -> None:
        """Start the local server again on the same data directory (after crash())."""
        self._local().pg_ctl("start", "-w", "-t", "60")

    def _local(self) -> LocalCluster:
        if self._cluster is None or self._dsn is None:
            raise RuntimeError("crash() and restart() need a started local cluster")
        return self._cluster

    def stop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # runs at most once
        self._dsn = None

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create database ``name`` (from ``template`` if given) and return a DSN for it."""
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            query = sql.SQL("{} TEMPLATE {}").format(query, sql.Identifier(template))
        with psycopg.connect(self.dsn, autocommit=True) as conn:  # CREATE DATABASE refuses transactions
            conn.execute(query)
        return make_conninfo(self.dsn, dbname=name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting its sessions (PostgreSQL 13+)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_embedded(
    *, bindir: str | None = None, image: str | None = None, base_dir: str | None = None, isolated: bool = False
) -> EmbeddedPostgres:
    """Start a local cluster, else a container; raise EmbeddedUnavailable explaining both failures. `isolated`: a
    local cluster's sessions open no connection to another server (NO_OUTBOUND); a container's still may."""
    reasons: dict[str, str] = {}
    kinds: tuple[Kind, ...] = ("local", "container")
    for kind in kinds:
        server = EmbeddedPostgres(kind, bindir=bindir, image=image, base_dir=base_dir, isolated=isolated)
        try:
            return server.start()
        except Exception as exc:  # any failure means "try the next kind"; all are reported below
            # Keep multi-line reasons (a server log tail) readable inside the bulleted message.
            reasons[kind] = str(exc).strip().replace("\n", "\n      ") or type(exc).__name__
    raise EmbeddedUnavailable(
        "no PostgreSQL server to run against: no DSN was given and no throwaway server could be started.\n"
        f"  - local cluster: {reasons['local']}\n"
        f"  - Docker container: {reasons['container']}\n"
        "Do one of:\n"
        "  - install the PostgreSQL server package, which provides initdb and pg_ctl "
        "(e.g. `apt-get install postgresql`);\n"
        "  - start a Docker engine (testcontainers then runs a postgres image);\n"
        "  - pass --dsn (or set PHASE4_DSN) to use an existing server.",
        reasons,
    )
