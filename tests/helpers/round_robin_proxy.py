"""A threaded round-robin TCP proxy: a stand-in for the load balancer in front of several
server hosts (issue 16), for tests and benchmarks.

Each client connection it accepts goes to the next backend in turn, as a TCP (layer 4)
balancer does: every request a client sends over one kept-alive connection reaches the
same backend, and only a new connection moves on to the next. Bytes are pumped both ways
unchanged, and a close (or half-close) on either side is passed on to the other::

    with RoundRobinProxy([("127.0.0.1", port_a), ("127.0.0.1", port_b)]) as proxy:
        requests.get(f"{proxy.url}/health")
        assert proxy.connections_per_backend == (1, 0)
"""
from __future__ import annotations

import socket
import threading
from typing import Sequence

Address = tuple[str, int]
_CHUNK = 64 * 1024


class RoundRobinProxy:
    """Listens on ``host``:``port`` (port 0: a free one) and spreads connections over
    ``backends`` in turn, starting with the first.

    A backend that refuses the connection is not skipped: the client's connection is
    closed at once, as a balancer without health checks would, and it still counts as
    that backend's turn.
    """

    def __init__(self, backends: Sequence[Address], host: str = "127.0.0.1", port: int = 0):
        if not backends:
            raise ValueError("a proxy needs at least one backend")
        self.backends: tuple[Address, ...] = tuple((str(h), int(p)) for h, p in backends)
        self._bind = (host, port)
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._counts = [0] * len(self.backends)
        self._next = 0
        self._open: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._stopping = threading.Event()
        self._acceptor: threading.Thread | None = None

    # Lifecycle --------------------------------------------------------------------------

    def start(self) -> RoundRobinProxy:
        """Listen and start accepting; returns the proxy. Raises OSError if it cannot bind."""
        if self._listener is not None:
            raise RuntimeError("the proxy is already started")
        listener = socket.create_server(self._bind, reuse_port=False)
        # A timeout lets the accept loop notice stop() without relying on close() waking
        # a blocked accept(), which is not portable.
        listener.settimeout(0.1)
        self._listener = listener
        self._stopping.clear()
        self._acceptor = threading.Thread(target=self._accept_loop, name="round-robin-accept",
                                          daemon=True)
        self._acceptor.start()
        return self

    def stop(self) -> None:
        """Stop accepting, cut every open connection (both sides) and wait for the pumps."""
        if self._listener is None:
            return
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join()
        self._listener.close()
        with self._lock:
            sockets, threads = list(self._open), list(self._threads)
        for sock in sockets:
            _shut(sock, socket.SHUT_RDWR)
        for thread in threads:
            thread.join(5)
        self._listener, self._acceptor = None, None

    def __enter__(self) -> RoundRobinProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # What it did ------------------------------------------------------------------------

    @property
    def address(self) -> Address:
        """Where clients connect (the port chosen if 0 was asked for)."""
        if self._listener is None:
            raise RuntimeError("the proxy is not started")
        host, port = self._listener.getsockname()[:2]
        return host, port

    @property
    def url(self) -> str:
        """``http://host:port`` of the proxy, to put in front of a path."""
        host, port = self.address
        return f"http://{host}:{port}"

    @property
    def connections_per_backend(self) -> tuple[int, ...]:
        """Client connections handed to each backend so far, in the order of ``backends``."""
        with self._lock:
            return tuple(self._counts)

    @property
    def open_connections(self) -> int:
        """Client connections being proxied now."""
        with self._lock:
            return len(self._open) // 2

    # Inside -----------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                index = self._next
                self._next = (self._next + 1) % len(self.backends)
                self._counts[index] += 1
            try:
                backend = socket.create_connection(self.backends[index], timeout=5)
            except OSError:
                client.close()
                continue
            backend.settimeout(None)
            for sock in (client, backend):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._relay(client, backend)

    def _relay(self, client: socket.socket, backend: socket.socket) -> None:
        """Two pumps, one per direction; the last to finish closes both sockets."""
        remaining = [2]

        def pump(source: socket.socket, sink: socket.socket) -> None:
            try:
                while True:
                    data = source.recv(_CHUNK)
                    if not data:
                        break
                    sink.sendall(data)
            except OSError:
                # A reset on one side: cut the other too, so neither waits for ever.
                _shut(source, socket.SHUT_RDWR)
                _shut(sink, socket.SHUT_RDWR)
            else:
                # The sender closed its half: pass the end of stream on, and let the
                # other direction run until its own end (HTTP clients may half-close).
                _shut(sink, socket.SHUT_WR)
            finally:
                with self._lock:
                    remaining[0] -= 1
                    last = remaining[0] == 0
                    self._threads.discard(threading.current_thread())
                    if last:
                        self._open.difference_update((client, backend))
                if last:
                    client.close()
                    backend.close()

        threads = [threading.Thread(target=pump, args=pair, daemon=True,
                                    name="round-robin-pump")
                   for pair in ((client, backend), (backend, client))]
        with self._lock:
            self._open.update((client, backend))
            self._threads.update(threads)
        for thread in threads:
            thread.start()


def _shut(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:  # already closed or never connected
        pass
