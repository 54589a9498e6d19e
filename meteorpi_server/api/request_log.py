"""One log line per request: method, path, status, user and duration.

The line goes to the ``meteorpi.requests`` logger at INFO; ``meteorpi serve`` sends that
logger to standard output (journald, under systemd) whatever ``log_level`` says, as an
access log. The ``log_format`` setting chooses ``text`` (``key=value`` pairs) or
``json`` (one object per line, the same fields).

It is WSGI middleware rather than a Flask hook so that the duration covers the whole
response, a streamed download or a ``/changes/stream`` connection included: the line is
written when the server closes the response. Only the path is logged: never the query
string, a header (credentials) or a body.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, Iterable

#: Where the security module leaves the authenticated user's name for this log.
USER_KEY = "meteorpi.user"
#: Where :func:`note_route` leaves the matched route's template (``/exports/<name>``).
ROUTE_KEY = "meteorpi.route"
UNMATCHED = "unmatched"

LOGGER_NAME = "meteorpi.requests"
log = logging.getLogger(LOGGER_NAME)


def format_line(fields: dict[str, Any], log_format: str) -> str:
    """``fields`` as one line: a JSON object, or ``key=value`` pairs where a value with
    spaces, quotes or ``=`` is JSON-quoted so that the line still splits unambiguously."""
    if log_format == "json":
        return json.dumps(fields, ensure_ascii=False)
    parts = []
    for name, value in fields.items():
        text = str(value)
        if not text or any(char in text for char in ' "=\\') or not text.isprintable():
            text = json.dumps(text)
        parts.append(f"{name}={text}")
    return " ".join(parts)


def note_route() -> None:
    """A Flask before-request hook: keep the route's template for :class:`RequestLog`'s
    observers (metrics count by template: a path would make a series per file id)."""
    from flask import request

    request.environ[ROUTE_KEY] = request.url_rule.rule if request.url_rule else UNMATCHED


#: Told of each finished request: route template, method, status and duration (seconds).
Observer = Callable[[str, str, int, float], None]


class RequestLog:
    """WSGI middleware that logs each request once its response is closed, and tells
    ``observers`` (the metrics) of it."""

    def __init__(self, app: Callable, log_format: str = "text",
                 observers: Iterable[Observer] = ()):
        self.app = app
        self.log_format = log_format
        self.observers = tuple(observers)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        started = time.perf_counter()
        status: list[int] = []

        def recording_start_response(status_line: str, headers, exc_info=None):
            status[:] = [int(status_line.split(" ", 1)[0])]
            return start_response(status_line, headers, exc_info)

        def write() -> None:
            seconds = time.perf_counter() - started
            fields = {
                "method": environ.get("REQUEST_METHOD", ""),
                "path": environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""),
                "status": status[0] if status else 500,
                "user": environ.get(USER_KEY) or "-",
                "duration_ms": round(seconds * 1000, 1),
            }
            log.info("%s", format_line(fields, self.log_format))
            for observe in self.observers:
                observe(environ.get(ROUTE_KEY, UNMATCHED), fields["method"], fields["status"],
                        seconds)

        try:
            result = self.app(environ, recording_start_response)
        except BaseException:
            write()
            raise
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(result, file_wrapper):
            # A file download: wrapping it would hide it from gunicorn, which sends a
            # file wrapper with sendfile(); its close is replaced instead.
            _close_then(result, write)
            return result
        return _Closing(result, write)


def _close_then(result: Any, after: Callable[[], None]) -> None:
    original = getattr(result, "close", None)

    def close() -> None:
        try:
            if original is not None:
                original()
        finally:
            after()

    result.close = close


class _Closing:
    """A response iterable that calls ``after`` once, when the server closes it."""

    def __init__(self, result: Iterable[bytes], after: Callable[[], None]):
        self._result = result
        self._after = after

    def __iter__(self):
        return iter(self._result)

    def close(self) -> None:
        try:
            if hasattr(self._result, "close"):
                self._result.close()
        finally:
            after, self._after = self._after, None
            if after is not None:
                after()
