"""The gunicorn worker `meteorpi serve` runs: gthread, made to hold against slow clients.

gunicorn's gthread worker hands each new connection to a thread, which then blocks in
the request parser until the whole request head has arrived. A client that sends half a
head and goes silent holds that thread until it disconnects, so a dozen such connections
stop the server answering anyone (``/health`` included). This worker reads each request's
head in its event loop instead, without blocking, and only hands the connection to a
thread once the head has arrived (with the body too, when it is small):

* a head (and small body) is read in the event loop; a connection whose head is not
  complete ``header_timeout_seconds`` after its first byte (or after it was accepted) is
  answered 408 and closed, as is one whose small body stops arriving for
  ``body_read_timeout_seconds``; a head larger than :data:`MAX_HEAD_BYTES` gets a 431;
* a body larger than :data:`SMALL_BODY_BYTES` (or chunked, or behind ``Expect:
  100-continue``) streams in the thread as before, but every read of it waits at most
  ``body_read_timeout_seconds`` (or the socket's own time-out, where a route set one:
  the uploads' ``upload_read_timeout_seconds``) and then raises TimeoutError;
* kept-alive connections wait in the event loop between requests, as in gthread, and their
  next request's head is read there too (bytes read ahead are carried over);
* a connection that closes after a reply that left request bytes unread lingers in the
  event loop, reading and discarding them for up to :data:`LINGER_SECONDS`, so that the
  client can finish sending and read the reply rather than meet a reset; gthread does
  that in its main thread, blocking it for up to two seconds per connection;
* a reply whose headers say ``Connection: close`` (the app's way of saying it left a
  request body unread, see :mod:`.api.unread_body`) closes the connection: gunicorn
  drops that header as hop-by-hop and would otherwise say keep-alive.

TLS (which ``meteorpi serve`` never terminates: nginx does) and HTTP/2 connections, and
the PROXY protocol, are left to gthread's own code unchanged.
"""
from __future__ import annotations

import errno
import heapq
import itertools
import re
import select
import selectors
import socket
import time
from functools import partial

from gunicorn import http
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, TConn, ThreadWorker

from .config import default

#: A request body up to this size is read in the event loop before a thread is used.
SMALL_BODY_BYTES = 64 * 1024
#: A request head larger than this is answered 431 (gunicorn's own limits are larger, but
#: no client of this server sends a head near this size).
MAX_HEAD_BYTES = 64 * 1024
#: How long a connection closed with request bytes unread goes on being read (and the
#: bytes discarded) so that the client can read the reply instead of meeting a reset.
LINGER_SECONDS = 5.0
#: Most bytes read from one connection per event-loop wake-up, so that one fast client
#: cannot keep the loop from the others.
READ_BYTES = 256 * 1024

_HEAD_END = b"\r\n\r\n"
_HEADER = re.compile(rb"^([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]*:[ \t]*(.*?)[ \t]*$")

_REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s")
_HEAD_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n"
                   b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s")


def _reply(template: bytes, error: str, message: str) -> bytes:
    body = b'{"error": "%s", "message": "%s"}' % (error.encode(), message.encode())
    return template % (len(body), body)


class TimedReads:
    """The client socket as gunicorn's request parser reads it: each ``recv`` waits at
    most ``seconds`` for data, then raises TimeoutError. Writes are not bounded (a large
    download to a slow client may take long), and a time-out the socket has itself (a
    route may set one, as the uploads do) governs instead of ``seconds``."""

    def __init__(self, sock: socket.socket, seconds: float):
        self._sock = sock
        self._seconds = seconds

    def recv(self, size: int, flags: int = 0) -> bytes:
        sock = self._sock
        if sock.gettimeout() is not None:  # a route's own time-out, or gunicorn's drain
            return sock.recv(size, flags)
        try:
            return sock.recv(size, flags | socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        if not poller.poll(self._seconds * 1000):
            raise TimeoutError(f"no request data for {self._seconds:g} s")
        return sock.recv(size, flags)

    def __getattr__(self, name):
        return getattr(self._sock, name)


class _Waiting:
    """A connection whose next request head (and small body) is being read in the loop."""

    __slots__ = ("buffer", "deadline", "watched", "scanned", "head_end", "body_length",
                 "started")

    def __init__(self, data: bytes, deadline: float, started: bool):
        self.buffer = bytearray(data)
        self.deadline = deadline
        self.watched = 0.0  # the deadline last put on the worker's heap
        self.scanned = 0  # bytes of buffer known not to hold the head's end
        self.head_end: int | None = None
        self.body_length = 0
        self.started = started  # a byte of the request has arrived


class Worker(ThreadWorker):
    """gunicorn's gthread worker, reading request heads in its event loop (see module)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        config = getattr(self.app, "meteorpi_config", None)
        self.header_timeout = (config.header_timeout_seconds if config is not None
                               else default("header_timeout_seconds"))
        self.body_timeout = (config.body_read_timeout_seconds if config is not None
                             else default("body_read_timeout_seconds"))
        self._waiting: dict[TConn, _Waiting] = {}
        self._lingering: dict[TConn, float] = {}
        self._deadlines: list[tuple[float, int, TConn]] = []
        self._sequence = itertools.count()

    # --- the WSGI app: honour an app's "Connection: close" --------------------------------

    def load_wsgi(self):
        super().load_wsgi()
        self.wsgi = _honour_connection_close(self.wsgi)

    # --- which connections this worker reads itself -----------------------------------

    def _reads_heads(self, client) -> bool:
        return not (self.cfg.is_ssl or self.cfg.proxy_protocol != "off"
                    or negotiation.prior_knowledge_allowed(self.cfg, client))

    def accept(self, listener):
        try:
            client_sock, client_addr = listener.accept()
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, client_sock, client_addr, listener.getsockname())
        if not self._reads_heads(client_addr):
            client_sock.setblocking(True)
            self.enqueue_req(conn)
            return
        conn.head_first = True
        self._await_request(conn, b"", kept_alive=False)

    def finish_request(self, conn, fs):
        if not getattr(conn, "head_first", False):
            return super().finish_request(conn, fs)
        try:
            result = fs.result() if not fs.cancelled() else False
            if result:
                # Kept alive: wait for the next request's head here, beginning with any
                # bytes of it the thread read ahead.
                self._await_request(conn, conn.parser.unreader.take_buffered(),
                                    kept_alive=True)
            else:
                self.nr_conns -= 1
                self._linger(conn)
        except Exception:
            self.log.exception("Error after a request from %s", _address(conn.client))
            self._waiting.pop(conn, None)
            self._unregister(conn)
            self.nr_conns -= 1
            conn.close()

    # --- reading a request head (and small body) in the loop -------------------------------

    def _await_request(self, conn, data: bytes, kept_alive: bool) -> None:
        now = time.monotonic()
        if kept_alive and not data:
            wait = self.cfg.keepalive if self.alive else min(self.cfg.keepalive,
                                                               STOP_KEEPALIVE_LINGER)
            state = _Waiting(b"", now + wait, started=False)
        else:
            state = _Waiting(data, now + self.header_timeout, started=bool(data))
        conn.sock.setblocking(False)
        self._waiting[conn] = state
        if data and self._progress(conn, state, now):
            return
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._guarded, conn))
        self._watch(conn, state)

    def _guarded(self, conn, sock) -> None:
        # An error here would otherwise end the worker's loop, and the worker with it.
        try:
            self._readable(conn, sock)
        except Exception:
            self.log.exception("Error reading a request head from %s", _address(conn.client))
            if conn in self._waiting:
                self._drop(conn)

    def _watch(self, conn, state: _Waiting) -> None:
        """Put the connection's deadline on the heap (an entry per deadline it had: a
        stale one is skipped when it comes up)."""
        if state.deadline != state.watched:
            state.watched = state.deadline
            self._push(conn, state.deadline)

    def _push(self, conn, deadline: float) -> None:
        heapq.heappush(self._deadlines, (deadline, next(self._sequence), conn))

    def _readable(self, conn, sock) -> None:
        state = self._waiting.get(conn)
        if state is None:
            return
        try:
            data = sock.recv(READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        now = time.monotonic()
        if not data:  # the client closed (or reset) the connection
            self._drop(conn)
            return
        if not state.started:
            state.started = True
            state.deadline = now + self.header_timeout
        state.buffer += data
        if state.head_end is not None:  # a small body: each read may wait body_timeout
            state.deadline = now + self.body_timeout
        if not self._progress(conn, state, now):
            self._watch(conn, state)

    def _progress(self, conn, state: _Waiting, now: float) -> bool:
        """Look at what has arrived; True if the connection left the loop's reading
        (handed to a thread, or answered and closed)."""
        buffer = state.buffer
        if state.head_end is None:
            # Only what arrived since the last look (and 3 bytes before it) is searched.
            start = max(0, state.scanned - 3)
            end = buffer.find(_HEAD_END, start)
            if end < 0:
                new = buffer[state.scanned:]
                bare = new.count(b"\n") - new.count(b"\r\n")
                if new[:1] == b"\n" and buffer[state.scanned - 1:state.scanned] == b"\r":
                    bare -= 1  # the CRLF straddles two reads
                if bare:
                    # A bare LF: gunicorn's parser rejects it (400) without waiting.
                    self._dispatch(conn, state)
                    return True
                state.scanned = len(buffer)
                if len(buffer) > MAX_HEAD_BYTES:
                    _count_cut("head_too_large")
                    self._refuse(conn, _reply(
                        _HEAD_TOO_LARGE, "head_too_large",
                        f"the request head is larger than {MAX_HEAD_BYTES} bytes"))
                    return True
                return False
            state.head_end = end + len(_HEAD_END)
            state.body_length = _small_body_length(bytes(buffer[:end]))
            state.deadline = now + self.body_timeout
        if len(buffer) >= state.head_end + state.body_length:
            self._dispatch(conn, state)
            return True
        return False

    def _dispatch(self, conn, state: _Waiting) -> None:
        """Hand the connection to a thread, its parser holding what arrived."""
        del self._waiting[conn]
        self._unregister(conn)
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
            conn.parser.unreader.sock = TimedReads(conn.sock, self.body_timeout)
        conn.parser.unreader.unread(bytes(state.buffer))
        conn.data_ready = True
        self.enqueue_req(conn)

    def _refuse(self, conn, reply: bytes) -> None:
        del self._waiting[conn]
        self._unregister(conn)
        try:
            conn.sock.send(reply)
        except OSError:
            pass
        self.nr_conns -= 1
        self._linger(conn)

    def _unregister(self, conn) -> None:
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _drop(self, conn) -> None:
        """Close a waiting connection."""
        self._waiting.pop(conn, None)
        self._unregister(conn)
        self.nr_conns -= 1
        conn.close()

    # --- closing: lingering while the client may still be sending ----------------------

    def _linger(self, conn) -> None:
        sock = conn.sock
        self._unregister(conn)
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            self.poller.register(sock, selectors.EVENT_READ, partial(self._discard, conn))
        except (OSError, ValueError):
            conn.close()
            return
        deadline = time.monotonic() + LINGER_SECONDS
        self._lingering[conn] = deadline
        self._push(conn, deadline)

    def _discard(self, conn, sock) -> None:
        try:
            data = sock.recv(READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._end_linger(conn)

    def _end_linger(self, conn) -> None:
        self._lingering.pop(conn, None)
        self._unregister(conn)
        conn.close()

    # --- time-outs --------------------------------------------------------------------

    def wait_for_and_dispatch_events(self, timeout):
        if self._deadlines:
            timeout = max(0.0, min(timeout, self._deadlines[0][0] - time.monotonic()))
        super().wait_for_and_dispatch_events(timeout)

    def murder_pending(self):
        super().murder_pending()
        self._expire(force=False)

    def murder_keepalived(self, force=False):
        super().murder_keepalived(force)
        if force:
            self._expire(force=True)
        elif not self.alive:
            # Stopping: idle kept-alive connections close soon (gthread's linger).
            limit = time.monotonic() + STOP_KEEPALIVE_LINGER
            for conn, state in self._waiting.items():
                if not state.started and state.deadline > limit:
                    state.deadline = limit
                    self._watch(conn, state)

    def _expire(self, force: bool) -> None:
        now = time.monotonic()
        if force:
            for conn in list(self._waiting):
                self._drop(conn)
            for conn in list(self._lingering):
                self._end_linger(conn)
            self._deadlines.clear()
            return
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, _, conn = heapq.heappop(self._deadlines)
            state = self._waiting.get(conn)
            if state is not None and state.deadline <= now:
                self._time_out(conn, state)
            elif conn in self._lingering and self._lingering[conn] <= now:
                self._end_linger(conn)

    def _time_out(self, conn, state: _Waiting) -> None:
        if not state.started:  # an idle kept-alive (or never used) connection
            self._drop(conn)
            return
        if state.head_end is None:
            what = f"the request head was not complete within {self.header_timeout:g} s"
            _count_cut("head_timeout")
        else:
            what = f"the request body stopped arriving for {self.body_timeout:g} s"
            _count_cut("body_timeout")
        self.log.info("Closed the connection from %s: %s", _address(conn.client), what)
        self._refuse(conn, _reply(_REQUEST_TIMEOUT, "request_timeout", what))


def _count_cut(reason: str) -> None:
    # Imported here, in the worker process: the arbiter imports this module too.
    from .observe.metrics import CONNECTIONS_CUT

    CONNECTIONS_CUT.labels(reason).inc()


def _address(client) -> str:
    if isinstance(client, tuple) and len(client) >= 2:
        return f"{client[0]}:{client[1]}"
    return str(client)


def _small_body_length(head: bytes) -> int:
    """How many body bytes to read in the loop before the request goes to a thread: the
    Content-Length when the head has one, valid, of at most SMALL_BODY_BYTES, and no
    Transfer-Encoding or Expect: 100-continue (the client waits for the 100); else 0
    (the thread reads the body, or the parser rejects the head)."""
    length = None
    for line in head.split(b"\r\n")[1:]:
        match = _HEADER.match(line)
        if match is None:
            return 0
        name, value = match.group(1).lower(), match.group(2)
        if name == b"content-length":
            if length is not None or not value.isdigit() or len(value) > 18:
                return 0
            length = int(value)
        elif name == b"transfer-encoding":
            return 0
        elif name == b"expect" and value.lower() == b"100-continue":
            return 0
    if length is None or length > SMALL_BODY_BYTES:
        return 0
    return length


def _honour_connection_close(app):
    """``app``, with gunicorn closing the connection after a reply whose headers say
    ``Connection: close`` (gunicorn drops hop-by-hop headers and decides by itself)."""

    def wrapped(environ, start_response):
        def start(status, headers, exc_info=None):
            write = start_response(status, headers, exc_info)
            if any(name.lower() == "connection"
                   and "close" in (token.strip() for token in value.lower().split(","))
                   for name, value in headers):
                response = getattr(start_response, "__self__", None)
                if hasattr(response, "force_close"):
                    response.force_close()
            return write

        return app(environ, start)

    return wrapped
