"""Display and error-message helpers for PostgreSQL DSNs that never leak the password.

libpq and psycopg quote the DSN (password included) in some error messages, so every user-visible text about
a connection goes through this module.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

MASK = "***"
_SECRET_KEYS = ("password", "sslpassword")
_URL_SCHEME = re.compile(r"^\s*postgres(?:ql)?://", re.IGNORECASE)
# Greedy to the last "@": a malformed URL may hold a raw "@" or "/" in its password. The bare form catches
# "user:pw@host" typed without a scheme.
_URL_USERINFO = re.compile(r"^(\s*[a-z][a-z0-9+.-]*://[^\s:@/]*):([^@]*)@", re.IGNORECASE)
_BARE_USERINFO = re.compile(r"^(\s*[^\s:@/=]*):([^@]*)@")
# In a URL, query values end at "&"; in key=value form a value is quoted or runs to whitespace. A missing
# "=" (libpq's own parse error) still hides the next token, which is most likely the password.
_URL_QUERY_SECRET = re.compile(r"(?i)\b(ssl)?password\b(?:=|\s+)([^&#\s]*)")
_KV_SECRET = re.compile(r"(?i)\b(ssl)?password\b\s*=?\s*('(?:[^'\\]|\\.)*'?|\S*)")
_EXPECTED_FORMS = (
    "a URL like postgresql://user@host:5432/dbname or key=value pairs like host=... port=5432 dbname=..."
)


def _parse(dsn: str) -> dict[str, str] | None:
    try:
        return {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    except psycopg.ProgrammingError:
        return None


def _regex_redact(dsn: str) -> str:
    """Best-effort redaction for a DSN libpq cannot parse: over-redacting is fine, echoing a secret is not."""
    if _URL_SCHEME.match(dsn):
        text = _URL_USERINFO.sub(rf"\1:{MASK}@", dsn, count=1)
        return _URL_QUERY_SECRET.sub(lambda m: f"{m[1] or ''}password={MASK}", text)
    text = _KV_SECRET.sub(lambda m: f"{m[1] or ''}password={MASK}", dsn)
    return _BARE_USERINFO.sub(rf"\1:{MASK}@", text, count=1)


def redact(dsn: str) -> str:
    """Return ``dsn`` for display, with any password replaced by ``***``."""
    params = _parse(dsn)
    if params is None:
        return _regex_redact(dsn)
    for key in _SECRET_KEYS:
        if key in params:
            params[key] = MASK
    return make_conninfo(**params)


def _secrets_in(dsn: str, *, ssl: bool = True) -> list[str]:
    params = _parse(dsn)
    if params is not None:
        return [params[key] for key in _SECRET_KEYS if params.get(key) and (ssl or key == "password")]
    # Unparseable DSNs still reach error messages verbatim, so find the secrets to scrub by pattern.
    url = _URL_SCHEME.match(dsn) is not None
    userinfo = (_URL_USERINFO if url else _BARE_USERINFO).match(dsn)
    keyed = (_URL_QUERY_SECRET if url else _KV_SECRET).finditer(dsn)
    values = [userinfo[2]] if userinfo else []
    values += [m[2] for m in keyed if ssl or not m[1]]
    return [v.strip("'") or v for v in values if v]


def password_of(dsn: str) -> str | None:
    """The password written in ``dsn`` (not PGPASSWORD), also from a DSN libpq cannot parse."""
    found = _secrets_in(dsn, ssl=False)
    return found[0] if found else None


def secrets_from_env() -> list[str]:
    """Secrets libpq may take from the environment, to scrub them from messages too."""
    value = os.environ.get("PGPASSWORD")
    return [value] if value else []


def _encodable(char: str) -> str:
    # Each character matches itself or its percent-encoding, so any mix of encoded and raw characters is
    # caught; a space may also appear as "+" (form encoding).
    encoded = "".join(f"%{byte:02X}" for byte in char.encode())
    options = [re.escape(char), encoded, *(["\\+"] if char == " " else [])]
    return f"(?:{'|'.join(options)})"


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Replace every non-empty secret in ``text``, raw or percent-encoded, with ``***``."""
    patterns = {"".join(_encodable(c) for c in secret) for secret in secrets if secret}
    if not patterns:
        return text
    # Longest first so that one secret containing another is masked whole; hex digits may be either case.
    pattern = "|".join(sorted(patterns, key=len, reverse=True))
    return re.sub(pattern, MASK, text, flags=re.IGNORECASE)


# Any URL's user info (https://deploy:token@api...), and a value given to a password-like key (--x-token=...,
# ?api_key=..., password=...): what a command line or a message may carry besides the DSN. Neither runs over a
# quote or a backslash, so that masking the text of a JSON document leaves it valid JSON.
_ANY_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:@/\"\\]*):([^\s@/\"\\]+)@")
_SECRET_VALUE = re.compile(r"(?i)\b((?:ssl)?password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)"
                           r"(\s*[=:]\s*)(?!\*\*\*)([^\s&#,;'\"\\]+)")
SECRET_OPTION = re.compile(r"(?i)^--?[\w-]*(password|passwd|secret|token|api[_-]?key|access[_-]?key|dsn)[\w-]*$")


def mask_secrets(text: str) -> str:
    """``text`` with every URL's user-info password and every password-like key's value replaced by ``***``
    (no secret needs to be known in advance: over-masking is fine, echoing a secret is not)."""
    text = _ANY_USERINFO.sub(lambda m: f"{m[1]}:{MASK}@" if m[2] != MASK else m[0], text)
    return _SECRET_VALUE.sub(lambda m: f"{m[1]}{m[2]}{MASK}", text)


def _host_port_pairs(params: dict[str, str]) -> list[tuple[str, str]]:
    hosts = (params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST", "")).split(",")
    ports = (params.get("port") or os.environ.get("PGPORT", "5432")).split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    return [(host, port or "5432") for host, port in zip(hosts, ports, strict=False)]


def target_label(dsn: str) -> str:
    """Short ``host:port/dbname`` (``socket DIR:port/dbname`` for unix sockets) naming a DSN's target."""
    params = _parse(dsn)
    if params is None:
        return "(unparseable DSN)"
    dbname = params.get("dbname") or os.environ.get("PGDATABASE") or params.get("user") or "(default)"
    places = []
    for host, port in _host_port_pairs(params):
        if not host or host.startswith(("/", "@")):
            places.append(f"socket {host or '(default socket dir)'}:{port}")
        elif ":" in host:
            places.append(f"[{host}]:{port}")
        else:
            places.append(f"{host}:{port}")
    return f"{','.join(places)}/{dbname}"


def _first_line(message: str) -> str:
    line = message.strip().splitlines()[0] if message.strip() else "(no message)"
    for prefix in ("connection failed: ", "connection is bad: "):
        line = line.removeprefix(prefix)
    return line.strip()


def _hint(reason: str, params: dict[str, str]) -> str:
    pairs = _host_port_pairs(params)
    host, port = pairs[-1] if pairs else ("", "5432")
    lower = reason.lower()
    if "connection refused" in lower:
        return f"is a PostgreSQL server running on {host} port {port}? Check --dsn / PHASE4_DSN."
    if "no such file or directory" in lower and "socket" in lower:
        return (
            f"is a PostgreSQL server running with its socket in {host or 'the default socket directory'}"
            f" and port {port}? Check --dsn / PHASE4_DSN."
        )
    if "password authentication failed" in lower or "no password supplied" in lower:
        return "check the user and password in --dsn / PHASE4_DSN (or PGPASSWORD / ~/.pgpass)."
    if "database" in lower and "does not exist" in lower:
        name = params.get("dbname") or params.get("user") or "(default)"
        return f'database "{name}" does not exist: create it (createdb {name}) or fix the dbname in the DSN.'
    if "role" in lower and "does not exist" in lower:
        return "check the user name in --dsn / PHASE4_DSN."
    if "resolve host" in lower or "translate host name" in lower:
        return f"host {host!r} could not be resolved: check the host name in --dsn / PHASE4_DSN."
    if "timeout expired" in lower:
        return f"no answer from {host} port {port}: check the host, port and any firewall in between."
    return "check --dsn / PHASE4_DSN and that the server accepts connections from this machine."


def connect_error_message(dsn: str, exc: psycopg.OperationalError | psycopg.ProgrammingError) -> str:
    """One user-facing message for a failed connection: target, reason (secrets scrubbed), what to do."""
    secrets = [*_secrets_in(dsn), *secrets_from_env()]
    # libpq may quote the whole DSN in its reason; show the redacted form in its place.
    raw = str(exc).replace(dsn, redact(dsn)) if dsn else str(exc)
    reason = scrub(_first_line(raw), secrets)
    params = _parse(dsn)
    if params is None or isinstance(exc, psycopg.ProgrammingError):
        return (
            f'could not parse the PostgreSQL DSN "{redact(dsn)}": {reason}\n'
            f"HINT: write it as {_EXPECTED_FORMS}"
        )
    shown = f" ({redact(dsn)})" if dsn.strip() else " (empty DSN: libpq defaults)"
    return (
        f"cannot connect to PostgreSQL at {target_label(dsn)}{shown}: {reason}\n"
        f"HINT: {_hint(reason, params)}"
    )
