"""The round-robin TCP proxy the multi-host tests put in front of several servers."""
from __future__ import annotations

import socket
import threading

import pytest
from round_robin_proxy import RoundRobinProxy


class Backend:
    """A TCP server that greets each connection with its name, then echoes what it reads
    upper-cased; ``closes_after`` bytes read, it closes the connection itself."""

    def __init__(self, name: bytes, closes_after: int | None = None):
        self.name, self.closes_after = name, closes_after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.saw_end = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._talk, args=(connection,), daemon=True).start()

    def _talk(self, connection: socket.socket) -> None:
        with connection:
            connection.sendall(self.name + b":")
            read = 0
            while data := connection.recv(4096):
                connection.sendall(data.upper())
                read += len(data)
                if self.closes_after is not None and read >= self.closes_after:
                    return
            self.saw_end.set()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def backends():
    made = [Backend(b"a"), Backend(b"b")]
    yield made
    for backend in made:
        backend.close()


def connect(proxy: RoundRobinProxy) -> socket.socket:
    sock = socket.create_connection(proxy.address, timeout=5)
    return sock


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"the connection ended after {data!r}"
        data += chunk
    return data


def test_connections_alternate_between_backends(backends):
    with RoundRobinProxy([("127.0.0.1", b.port) for b in backends]) as proxy:
        greetings = []
        for _ in range(5):
            with connect(proxy) as sock:
                greetings.append(read_exactly(sock, 2))
        assert greetings == [b"a:", b"b:", b"a:", b"b:", b"a:"]
        assert proxy.connections_per_backend == (3, 2)


def test_a_kept_open_connection_stays_with_its_backend(backends):
    with RoundRobinProxy([("127.0.0.1", b.port) for b in backends]) as proxy, \
            connect(proxy) as sock:
        assert read_exactly(sock, 2) == b"a:"
        for word in (b"one", b"two", b"three"):
            sock.sendall(word)
            assert read_exactly(sock, len(word)) == word.upper()
        assert proxy.connections_per_backend == (1, 0)


def test_bytes_flow_both_ways_unchanged(backends):
    payload = bytes(range(256)) * 4096  # 1 MiB, larger than any one pump's read
    with RoundRobinProxy([("127.0.0.1", backends[0].port)]) as proxy, connect(proxy) as sock:
        assert read_exactly(sock, 2) == b"a:"
        received = []
        reader = threading.Thread(target=lambda: received.append(read_exactly(sock, len(payload))))
        reader.start()
        sock.sendall(payload)
        reader.join(10)
        assert received == [payload.upper()]


def test_a_client_close_reaches_the_backend(backends):
    with RoundRobinProxy([("127.0.0.1", backends[0].port)]) as proxy:
        with connect(proxy) as sock:
            assert read_exactly(sock, 2) == b"a:"
            sock.shutdown(socket.SHUT_WR)
            assert backends[0].saw_end.wait(5), "the backend never saw the end of the stream"
            # The backend closed in turn, and that reached the client.
            assert sock.recv(10) == b""


def test_a_backend_close_reaches_the_client():
    backend = Backend(b"c", closes_after=3)
    try:
        with RoundRobinProxy([("127.0.0.1", backend.port)]) as proxy, connect(proxy) as sock:
            assert read_exactly(sock, 2) == b"c:"
            sock.sendall(b"bye")
            assert read_exactly(sock, 3) == b"BYE"
            assert sock.recv(10) == b""
    finally:
        backend.close()


def test_a_refusing_backend_closes_the_client_and_keeps_its_turn(backends):
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        dead_port = placeholder.getsockname()[1]
    with RoundRobinProxy([("127.0.0.1", dead_port), ("127.0.0.1", backends[1].port)]) as proxy:
        with connect(proxy) as sock:
            assert sock.recv(10) == b""
        with connect(proxy) as sock:
            assert read_exactly(sock, 2) == b"b:"
        assert proxy.connections_per_backend == (1, 1)


def test_stop_cuts_open_connections_and_can_be_called_twice(backends):
    proxy = RoundRobinProxy([("127.0.0.1", backends[0].port)]).start()
    with connect(proxy) as sock:
        assert read_exactly(sock, 2) == b"a:"
        proxy.stop()
        assert sock.recv(10) == b""
    assert proxy.open_connections == 0
    proxy.stop()
    with pytest.raises(RuntimeError):
        proxy.address
