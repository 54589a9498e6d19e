"""A reply that leaves the request body unread either reads the rest, if small, or closes.

A route may answer before reading its request body: a resumable chunk at the wrong
offset (409), a body too large (413) or of the wrong type (415), a missing length (411),
credentials missing or wrong (401, 403). The server must then skip the unread bytes
before it can read the client's next request on that connection. gunicorn skips at most
64 KiB and otherwise closes the connection, after a reply that said ``Connection:
keep-alive``: the client sends its next request on it and gets no reply at all.

:class:`UnreadBody` counts what the app reads of the body. When the app starts its
reply with part of the body unread, the rest is read and dropped if it is at most
:data:`DRAIN_BYTES` (and arrives within :data:`DRAIN_SECONDS`); otherwise the reply says
``Connection: close``, and the server closes the connection after it (the client sends
its next request on a new one). ``meteorpi serve``'s worker (:mod:`..worker`) honours that
header; werkzeug's development server closes every connection anyway.

A read of the body that times out (the server's ``body_read_timeout_seconds``, or a
route's own) raises :class:`BodyReadTimeout`: a TimeoutError, so that the code around
the read sees the time-out it saw before, and an HTTP 408, so that a route that does not
handle it answers 408 ``request_timeout`` rather than 500.
"""
from __future__ import annotations

import contextlib
import socket
import time
from typing import Callable, Iterable

from werkzeug.exceptions import RequestTimeout

#: Unread body up to this size is read and dropped so that the connection stays open.
DRAIN_BYTES = 64 * 1024
#: ...provided it arrives within this long.
DRAIN_SECONDS = 1.0
_READ = 16 * 1024


class BodyReadTimeout(RequestTimeout, TimeoutError):
    """The client went silent in the middle of the request body."""

    description = "the client was silent too long in the middle of the request body"


class CountingInput:
    """``wsgi.input``, counting what is read, and noting a read that failed."""

    def __init__(self, stream, length: int | None, connection: socket.socket | None = None):
        self._stream = stream
        self._connection = connection if isinstance(connection, socket.socket) else None
        self.length = length  # None: chunked, the end is where the stream ends
        self.read_bytes = 0
        self.ended = length == 0
        self.failed = False

    def _read(self, method: Callable, *args) -> bytes:
        if self.ended and self.length is not None:
            return b""
        try:
            data = method(*args)
        except TimeoutError as error:
            self.failed = True
            raise BodyReadTimeout() from error
        except BaseException:
            self.failed = True
            raise
        self._count(len(data), args)
        return data

    def _count(self, count: int, args) -> None:
        self.read_bytes += count
        if self.length is not None:
            self.ended = self.read_bytes >= self.length
        elif count == 0 and not (args and args[0] == 0):
            self.ended = True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self._read(self._stream.read)
        return self._read(self._stream.read, size)

    def readline(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self._read(self._stream.readline)
        return self._read(self._stream.readline, size)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def __iter__(self):
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()

    def unread_fits(self) -> bool:
        """Whether the rest of the body is read and dropped (True), or the connection
        has to close (False)."""
        if self.ended:
            return True
        if self.failed:  # where the body stands is unknown; a silent client stays silent
            return False
        if self.length is not None and self.length - self.read_bytes > DRAIN_BYTES:
            return False
        deadline = time.monotonic() + DRAIN_SECONDS
        previous = self._connection.gettimeout() if self._connection is not None else None
        dropped = 0
        try:
            while not self.ended:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if self._connection is not None:  # each read waits at most what is left
                    self._connection.settimeout(left)
                wanted = _READ if self.length is None else min(_READ,
                                                                self.length - self.read_bytes)
                data = self._stream.read(wanted)
                if not data:
                    # The client stopped early (the app will see no more of it either).
                    return self.length is None
                self._count(len(data), (wanted,))
                dropped += len(data)
                if self.length is None and dropped > DRAIN_BYTES:
                    return False
        except Exception:
            self.failed = True
            return False
        finally:
            if self._connection is not None:
                with contextlib.suppress(OSError):
                    self._connection.settimeout(previous)
        return True


class UnreadBody:
    """WSGI middleware: see the module's documentation."""

    def __init__(self, app: Callable):
        self.app = app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        stream = environ.get("wsgi.input")
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        try:
            length = None if chunked else max(0, int(environ.get("CONTENT_LENGTH") or 0))
        except ValueError:
            length = 0  # the server rejects such a request before the app sees it
        if stream is None or length == 0:
            return self.app(environ, start_response)
        body = CountingInput(stream, length,
                             environ.get("gunicorn.socket") or environ.get("werkzeug.socket"))
        environ["wsgi.input"] = body

        def start(status: str, headers: list, exc_info=None):
            if not body.unread_fits():
                headers = [(name, value) for name, value in headers
                           if name.lower() != "connection"] + [("Connection", "close")]
            return start_response(status, headers, exc_info)

        return self.app(environ, start)
