"""The line per request an operator reads in the journal (api/request_log.py)."""
from __future__ import annotations

import json
import logging
import re
import threading

import pytest
import requests

from meteorpi_server.api.request_log import LOGGER_NAME

TEXT_LINE = re.compile(r"method=(\S+) path=(\S+) status=(\d+) user=(\S+) duration_ms=(\d+(\.\d+)?)$")


def request_lines(caplog) -> list[str]:
    """The request lines this test's own requests wrote: a stream that another test left
    open on a live server may end, and log its line, while this test runs."""
    return [record.getMessage() for record in caplog.records
            if record.name == LOGGER_NAME and record.thread == threading.get_ident()]


def as_fields(line: str, log_format: str) -> dict:
    if log_format == "json":
        return json.loads(line)
    match = TEXT_LINE.match(line)
    assert match, line
    method, path, status, user, duration = match.groups()[:5]
    return {"method": method, "path": path, "status": int(status), "user": user,
            "duration_ms": float(duration)}


@pytest.fixture(params=["text", "json"])
def log_format(request, settings) -> str:
    settings["log_format"] = request.param
    return request.param


def test_each_request_is_one_line_with_method_path_status_user_and_duration(
        log_format, client, make_user, caplog):
    viewer = make_user("viewer", "user")
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    client.get("/health", buffered=True)
    client.get("/cameras", auth=viewer, buffered=True)
    client.post("/import", json={}, auth=viewer, buffered=True)  # lacks the import role
    client.get("/cameras", auth=("viewer", "wrong password"), buffered=True)
    lines = request_lines(caplog)
    assert len(lines) == 4
    fields = [as_fields(line, log_format) for line in lines]
    assert [(f["method"], f["path"], f["status"], f["user"]) for f in fields] == [
        ("GET", "/health", 200, "-"),
        ("GET", "/cameras", 200, "viewer"),
        ("POST", "/import", 403, "viewer"),
        ("GET", "/cameras", 401, "-"),  # a name that failed to log in is not trusted
    ]
    assert all(set(f) == {"method", "path", "status", "user", "duration_ms"} for f in fields)
    assert all(isinstance(f["duration_ms"], float) and f["duration_ms"] >= 0 for f in fields)


def test_no_password_query_string_or_body_reaches_the_log(log_format, client, make_user,
                                                          caplog):
    name, password = make_user("node9", "import")
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    client.post("/import?token=hunter2", json={"type": "cached_entity",
                                               "cached_entity_id": "ab" * 16},
                auth=(name, password), buffered=True)
    client.get("/cameras", auth=("someone", password), buffered=True)
    logged = "\n".join(request_lines(caplog))
    assert logged.count("\n") == 1
    for secret in (password, "hunter2", "token", "cached_entity", "ab" * 16, "someone"):
        assert secret not in logged


@pytest.mark.slow
@pytest.mark.parametrize("chosen", ["text", "json"])
def test_the_running_server_writes_a_line_per_request_to_stdout(settings, gunicorn_server,
                                                                make_user, chosen):
    settings["log_format"] = chosen
    viewer = make_user("viewer", "user")
    server = gunicorn_server(workers=1)
    assert requests.get(f"{server.url}/cameras", auth=viewer, timeout=30).status_code == 200
    assert requests.get(f"{server.url}/no-such-page", timeout=30).status_code == 404
    server.stop()
    lines = [line for line in server.log_path.read_text().splitlines()
             if line.startswith(("method=", "{"))]
    # The fixture's own /health polls come first. A line is written once its response has
    # gone, so a worker's threads may write the two requests' lines in either order.
    fields = [as_fields(line, chosen) for line in lines if "/health" not in line]
    assert sorted((f["method"], f["path"], f["status"], f["user"]) for f in fields) == [
        ("GET", "/cameras", 200, "viewer"), ("GET", "/no-such-page", 404, "-")]
