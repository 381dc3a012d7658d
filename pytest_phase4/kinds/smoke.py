"""The `http` check kind (runbook Part 6.3, smoke tests): a request under --phase4-base-url, its status and the
JSON shape of its answer. Standard library only (urllib).

Header values may name environment variables (`Bearer ${STAGING_USER_TOKEN}`); the values expanded are added to
the run's secrets before the request is sent, so every message, attachment and report scrubs them.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from pytest_phase4.errors import CheckFailed
from pytest_phase4.kinds.base import Kind, Param, register
from pytest_phase4.kinds.context import CheckSkipped, Context
from pytest_phase4.plan.model import CheckSpec, expand_env

_BODY_SHOWN = 4000  # characters of a response body attached to the report row


def join_url(base: str, path: str) -> str:
    return f"{base.rstrip('/')}/{path.lstrip('/')}"


def http(ctx: Context, spec: CheckSpec) -> str:

    p, extras = spec.params, ctx.extras
    if not extras.base_url:
        raise CheckSkipped("no --phase4-base-url given: smoke requests need the API's address, e.g. "
                           "--phase4-base-url=https://staging.api.example.com")
    headers: dict[str, str] = {}
    unset: list[str] = []
    for name, template in p["headers"].items():
        value, missing, used = expand_env(template)
        extras.add_secrets(used)
        unset += missing
        headers[name] = value
    url = join_url(extras.base_url, p["path"])
    method = p["method"].upper()
    where = f"{method} {url}"

    def fail(expected: str, found: str, details: list[str] | None = None, hint: str = "") -> CheckFailed:
        s = extras.scrub
        return CheckFailed(s(expected), s(found), s(where), details=[s(d) for d in details or []],
                           hint=s(spec.hint or hint))

    if unset:
        raise fail(f"environment variable(s) {', '.join(unset)} set for the request headers", "not set",
                   hint=f"export {unset[0]}=... (it is never printed) and rerun")
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=p["timeout"]) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise fail(f"an answer within {p['timeout']:g} s", f"no answer: {reason}",
                   hint="is the application started (runbook 6.2) and the base URL right?") from None
    text = body.decode("utf-8", errors="replace")
    extras.attach(spec, f"{method} {p['path']}: HTTP {status}, {len(body):,} bytes (first {_BODY_SHOWN:,} shown)",
                  text[:_BODY_SHOWN])
    if status != p["status"]:
        raise fail(f"HTTP {p['status']}", f"HTTP {status}", details=[text[:300]])
    present, absent = p["keys_present"], p["keys_absent"]
    if not (present or absent or p["items"]):
        return extras.scrub(f"{method} {p['path']}: HTTP {status}")
    try:
        doc: Any = json.loads(text)
    except ValueError:
        raise fail("a JSON body", "not JSON", details=[text[:300]]) from None
    if p["items"]:
        if not isinstance(doc, dict) or p["items"] not in doc:
            raise fail(f"a JSON object with key {p['items']!r} holding the rows", _shape(doc))
        doc = doc[p["items"]]
    objects = doc if isinstance(doc, list) else [doc]
    if not objects:
        raise fail("at least one row to check the keys on", "an empty list",
                   hint="an empty answer proves nothing: point the smoke test at data that exists")
    problems: list[str] = []
    for i, obj in enumerate(objects):
        if not isinstance(obj, dict):
            problems.append(f"element {i}: {_shape(obj)}, not an object")
            continue
        problems += [f"element {i}: no key {k!r}" for k in present if k not in obj]
        problems += [f"element {i}: key {k!r} present" for k in absent if k in obj]
    if problems:
        wanted = " and ".join(w for w in (f"keys {', '.join(present)}" if present else "",
                                          f"without {', '.join(absent)}" if absent else "") if w)
        raise fail(f"every element with {wanted}", f"{len(problems)} problem(s) in {len(objects)} element(s)",
                   details=problems[:10],
                   hint="the API still serves the old (denormalized) shape: is the new application code deployed?")
    keys = "; ".join(w for w in (f"with {', '.join(present)}" if present else "",
                                 f"without {', '.join(absent)}" if absent else "") if w)
    return extras.scrub(f"{method} {p['path']}: HTTP {status}, {len(objects)} object(s) {keys}".rstrip())


def _shape(doc: Any) -> str:
    if isinstance(doc, dict):
        return f"an object with keys {', '.join(list(doc)[:10]) or '(none)'}"
    return f"a JSON {type(doc).__name__}"


_PARAMS = {"path": Param("str"), "method": Param("str", False, "GET"), "headers": Param("strmap", False, {}),
           "status": Param("int", False, 200), "keys_present": Param("names", False, ()),
           "keys_absent": Param("names", False, ()), "items": Param("str", False),
           "timeout": Param("number", False, 10.0)}
register(Kind("http", "the request under --phase4-base-url answers status with the JSON keys expected", _PARAMS,
              label_fn=lambda p, _: str(p["path"]), run=http, state=False))
