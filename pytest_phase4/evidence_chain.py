"""The evidence document's own integrity: its canonical form, the sha256 of its content, and a strict reader.

`content_sha256` is the sha256 of the canonical JSON (sorted keys, no spaces, UTF-8, no NaN) of the document
without that key. It tells a later run that the file was not edited since it was written; it is no signature
(whoever edits the file can compute it again), so the promotion gate also re-derives what it relies on (green,
complete) from the checks and migrations themselves. No pytest here; the fleet roll-up uses it too.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

KEY = "content_sha256"


class EvidenceFormatError(ValueError):
    """The text is not an evidence document this reader trusts (the message says why)."""


def canonical(document: dict[str, Any]) -> bytes:
    """The canonical JSON of the document without its own content_sha256: what the sha256 is computed over."""
    body = {k: v for k, v in document.items() if k != KEY}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def content_sha256(document: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(document)).hexdigest()


def finite(value: Any) -> Any:
    """The value with every NaN or infinite float replaced by None: JSON has no such numbers, and a reader that
    accepted them would let two different texts mean the same document."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def seal(document: dict[str, Any]) -> dict[str, Any]:
    """The document with its content_sha256 last (computed over everything else)."""
    body = finite({k: v for k, v in document.items() if k != KEY})
    return {**body, KEY: content_sha256(body)}


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise EvidenceFormatError(f"the key {key!r} appears twice in one object (a JSON reader keeps one of "
                                      "them, so the file can say two things)")
        seen[key] = value
    return seen


def _no_constant(name: str) -> Any:
    raise EvidenceFormatError(f"{name} is not a JSON number")


def strict_loads(text: str) -> dict[str, Any]:
    """Parse an evidence document: an object, no key twice in one object, no NaN or Infinity, no number longer
    than Python reads, no nesting deeper than it reads (each refused as an EvidenceFormatError, one line)."""
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise EvidenceFormatError(f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except EvidenceFormatError:
        raise
    except ValueError as exc:  # an integer longer than Python converts (sys.get_int_max_str_digits)
        raise EvidenceFormatError(f"it holds a number this reader refuses ({str(exc).split(';')[0]})") from None
    except RecursionError:
        raise EvidenceFormatError("its objects or arrays are nested too deep for a JSON reader") from None
    if not isinstance(document, dict):
        raise EvidenceFormatError(f"expected a JSON object, found a {type(document).__name__}")
    return document


def verify_content(document: dict[str, Any]) -> str | None:
    """Why the document's content_sha256 does not prove its content, or None when it does."""
    stated = document.get(KEY)
    if not isinstance(stated, str) or not stated:
        return f"it has no {KEY} (written by an older pytest-phase4, or edited)"
    try:
        actual = content_sha256(document)
    except ValueError:  # a NaN got in by another way than the reader (never from strict_loads)
        return "it holds a number JSON cannot hold"
    if actual != stated:
        return f"its content does not match its {KEY}: it states {stated[:12]}, the content hashes to {actual[:12]}"
    return None
