"""Runbook Part 6.3: the smoke stage against a local API (http.server on 127.0.0.1 in a thread)."""

from __future__ import annotations

import html
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers import Project, outcomes_of

TOKEN = "tok-3f9a1c77e2"  # a test value: the point is that it never shows
SMOKE = "checks/phase4.toml::smoke"
IDS = [f"{SMOKE}::http[/api/sales]", f"{SMOKE}::http[/api/tickets]", f"{SMOKE}::http[/api/job-works]"]


def _rows(normalized: bool) -> dict[str, list[dict[str, object]]]:
    ids = {"customer_id": 7, "assigned_to": 3, "product_id": 2, "receiver_engineer_id": 5}
    old = {"customer_name": "Acme", "customer_email": "a@acme.test", "assigned_to_name": "Kim",
           "product_name": "Pump", "receiver_engineer_name": "Lee"}
    row = {"id": 1, **ids, **({} if normalized else old)}
    return {"/api/sales": [row, {**row, "id": 2}], "/api/tickets": [row], "/api/job-works": [row]}


class Api:
    """A stand-in for the staging API: answers 401 without the bearer token, and echoes the token it was given
    in a header and the body (as careless APIs do), so any leak of it would show in the output."""

    def __init__(self) -> None:
        self.normalized = True
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                auth = self.headers.get("Authorization", "")
                rows = _rows(api.normalized).get(self.path)
                status = 401 if auth != f"Bearer {TOKEN}" else 404 if rows is None else 200
                body = json.dumps(rows if status == 200 else {"error": f"bad auth {auth}"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Seen-Auth", auth)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # keep the test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[Api]:
    server = Api()
    yield server
    server.close()


def _everything_written(p: Project, result: pytest.RunResult) -> str:
    files = [f.read_text() for f in (p.path / "reports").iterdir()]
    return "\n".join([result.stdout.str(), result.stderr.str(), *files, *map(html.unescape, files)])


def test_smoke_passes_against_normalized_api_and_never_shows_the_token(
        project: Callable[..., Project], api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGING_USER_TOKEN", TOKEN)
    p = project("crm")
    result = p.run("-v", "-m", "smoke", f"--phase4-base-url={api.url}")
    assert result.ret == 0, result.stdout.str()
    assert [outcomes_of(result)[i] for i in IDS] == ["PASSED"] * 3
    written = _everything_written(p, result)
    assert "GET /api/sales: HTTP 200, 2 object(s) with customer_id; without customer_name" in written
    assert TOKEN not in written


def test_smoke_fails_against_an_api_still_serving_customer_name(
        project: Callable[..., Project], api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGING_USER_TOKEN", TOKEN)
    api.normalized = False
    p = project("crm")
    result = p.run("-v", "-m", "smoke", f"--phase4-base-url={api.url}/", "--junitxml=reports/junit.xml")
    assert result.ret == 1
    assert [outcomes_of(result)[i] for i in IDS] == ["FAILED"] * 3
    result.stdout.fnmatch_lines([
        "expected: every element with keys customer_id and without customer_name",
        "found:    2 problem(s) in 2 element(s)",
        f"where:    GET {api.url}/api/sales",
        "  element 0: key 'customer_name' present",
        "  element 1: key 'customer_name' present",
        "hint:     the API still serves the old (denormalized) shape: is the new application code deployed?",
    ])
    assert TOKEN not in _everything_written(p, result)


def test_wrong_token_shows_the_status_and_a_scrubbed_body(
        project: Callable[..., Project], api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGING_USER_TOKEN", f"{TOKEN}-expired")
    p = project("crm")
    result = p.run("-m", "smoke", f"--phase4-base-url={api.url}")
    result.stdout.fnmatch_lines(["expected: HTTP 200", "found:    HTTP 401", '  {"error": "bad auth Bearer ***"}'])
    assert TOKEN not in _everything_written(p, result)
    evidence = json.loads(next((p.path / "reports").glob("*.json")).read_text())
    assert evidence["summary"]["Smoke Tests"]["verdict"] == "FAILED"


def test_smoke_is_skipped_without_base_url_and_fails_without_the_token(
        project: Callable[..., Project], api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STAGING_USER_TOKEN", raising=False)
    p = project("crm")
    result = p.run("-m", "smoke")
    assert result.ret == 0
    assert result.parseoutcomes()["skipped"] == 3
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] checks/phase4.toml:*: no --phase4-base-url given: smoke requests "
                                 "need the API's address, e.g. --phase4-base-url=https://staging.api.example.com"] * 3)
    result = p.run("-m", "smoke", f"--phase4-base-url={api.url}")
    result.stdout.fnmatch_lines([
        "expected: environment variable(s) STAGING_USER_TOKEN set for the request headers",
        "found:    not set",
        "hint:     export STAGING_USER_TOKEN=... (it is never printed) and rerun"])


def test_base_url_must_be_http(project: Callable[..., Project], tmp_path: Path) -> None:
    p = project("mini")
    result = p.run(f"--phase4-base-url=file://{tmp_path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --phase4-base-url='file://{tmp_path}': expected an http(s) URL such as "
                                 "https://staging.api.example.com"])
