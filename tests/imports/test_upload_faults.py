"""Resumable uploads survive cut connections, a killed server and a killed exporter.

In every case the upload completes with the right bytes, bytes the server confirmed are
not sent again, and no partial file is ever visible at the file's final path.
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass

import pytest
import requests
import yaml

from conftest import GunicornProcess, free_port
from meteorpi_model import md5_file
from meteorpi_server.exporter.resumable import ResumableUploader
from store_queries import stored_bytes

pytestmark = pytest.mark.slow

CHUNK = 1 << 20
HEADER_ALLOWANCE = 64 * 1024


@dataclass(frozen=True)
class AfterPatchBody:
    """A cut right after the last body byte of the ``n``th PATCH (counting from 1): the
    chunk arrives whole and the server stores it, but its reply is lost."""

    n: int


@dataclass(frozen=True)
class InPatchHeaders:
    """A cut in the middle of the ``n``th PATCH's headers: the chunk before it was
    acknowledged, and this request never reaches the application."""

    n: int


@dataclass(frozen=True)
class Request:
    """Where one request lies in its connection's client-to-server bytes."""

    method: str
    start: int
    headers_end: int
    body_end: int


class RequestFramer:
    """Follows the requests in one connection's client-to-server bytes.

    Enough HTTP/1.1 for what the exporter sends: bodies framed by Content-Length (no
    chunked encoding), one request at a time.
    """

    def __init__(self):
        self.position = 0  # bytes of this connection fed so far
        self._head = b""
        self._head_start = 0
        self._body_left = 0

    def feed(self, data: bytes) -> list[Request]:
        """The requests whose headers end within ``data``."""
        found = []
        data_start, index = self.position, 0
        self.position += len(data)
        while index < len(data):
            if self._body_left:
                step = min(self._body_left, len(data) - index)
                self._body_left -= step
                index += step
                continue
            if not self._head:
                self._head_start = data_start + index
            before = len(self._head)
            self._head += data[index:]
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                break
            index += end + 4 - before
            headers_end = self._head_start + end + 4
            length = re.search(rb"\r\ncontent-length:[ \t]*(\d+)", self._head[:end + 4],
                               re.IGNORECASE)
            self._body_left = int(length[1]) if length else 0
            method = self._head.split(b" ", 1)[0].decode()
            found.append(Request(method, self._head_start, headers_end,
                                 headers_end + self._body_left))
            self._head = b""
        return found


class CuttingProxy:
    """A TCP proxy that cuts connections, and counts what it forwarded client-to-server.

    Each cut is a byte count of client-to-server traffic (counted over all connections)
    or a place in the request stream (:class:`AfterPatchBody`, :class:`InPatchHeaders`,
    counting PATCH requests over all connections), found by following the requests.
    """

    def __init__(self, upstream_port: int, cuts: list, delay_per_piece: float = 0.0):
        self.upstream_port = upstream_port
        self.cuts = sorted(cut for cut in cuts if isinstance(cut, int))
        self.pending = [cut for cut in cuts if not isinstance(cut, int)]
        self.delay = delay_per_piece
        self.forwarded = 0
        self.cut_count = 0
        self.patches = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:  # the server is down: so is this connection, as it would be
                client.close()
                continue
            threading.Thread(target=self._pump_up, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump_down, args=(upstream, client), daemon=True).start()

    def _place_cuts(self, framer: RequestFramer, data: bytes) -> None:
        """Turn the pending cuts that fall in requests starting in ``data`` into byte counts."""
        data_start = framer.position
        # Connection position p is total byte count self.forwarded + (p - data_start).
        for request in framer.feed(data):
            if request.method != "PATCH":
                continue
            self.patches += 1
            for cut in list(self.pending):
                if cut.n != self.patches:
                    continue
                if isinstance(cut, AfterPatchBody):
                    position = request.body_end
                else:
                    position = max((request.start + request.headers_end) // 2, data_start)
                self.pending.remove(cut)
                self.cuts = sorted(self.cuts + [self.forwarded + position - data_start])

    def _pump_up(self, client: socket.socket, upstream: socket.socket) -> None:
        framer = RequestFramer()
        try:
            while data := client.recv(65536):
                with self._lock:
                    self._place_cuts(framer, data)
                    limit = self.cuts[0] - self.forwarded if self.cuts else len(data)
                    piece = data[:max(limit, 0)]
                    self.forwarded += len(piece)
                    cut = bool(self.cuts) and self.forwarded >= self.cuts[0]
                    if cut:
                        self.cuts.pop(0)
                        self.cut_count += 1
                upstream.sendall(piece)
                if cut:
                    break
                if self.delay:
                    time.sleep(self.delay)
        except OSError:
            pass
        for sock in (client, upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    @staticmethod
    def _pump_down(upstream: socket.socket, client: socket.socket) -> None:
        try:
            while data := upstream.recv(65536):
                client.sendall(data)
        except OSError:
            pass
        # The server closed its end (or died): so does the proxy, or a client waiting for
        # an answer would wait out its read timeout instead of seeing the connection go.
        for sock in (client, upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._stopped = True
        self._listener.close()


class FinalPathWatcher:
    """Polls a file's final path (or key) and notes any moment it held other than the
    whole file."""

    def __init__(self, files, file_id, size: int):
        self.files, self.file_id, self.size = files, file_id, size
        self.partial_sightings: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            found = self.files.stat(self.file_id)
            if found is not None and found[0] != self.size:
                self.partial_sightings.append(found[0])
            time.sleep(0.002)

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join()
        return self.partial_sightings


def settled_offset(services, file_id, md5: str, quiet_seconds: float = 0.5) -> int:
    """The upload's held offset once the server has finished with what was in flight."""
    offset = -1
    while offset != (offset := services.uploads.partial_offset(file_id, md5)):
        time.sleep(quiet_seconds)
    return offset


@pytest.fixture
def big_file(tmp_path):
    path = tmp_path / "video.bin"
    piece = os.urandom(CHUNK)
    with open(path, "wb") as out:
        for index in range(12):
            out.write(piece[index:] + piece[:index])
    return path


@pytest.fixture
def server_config(settings, tmp_path, app, exporter_auth):
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump({**settings, "log_level": "warning"}))
    return path


def uploader_for(url: str, auth, **options) -> ResumableUploader:
    session = requests.Session()
    session.auth = auth
    return ResumableUploader(session, f"{url}/import", chunk_size=CHUNK, retry_delay=0.05,
                             attempts=12, timeout=(2, 10), **options)


@pytest.mark.parametrize("cut_points", [
    [100],                                  # inside the first request's headers
    [CHUNK // 2],                           # inside the first chunk
    [AfterPatchBody(1)],                    # the first chunk arrives whole, its reply is lost
    [InPatchHeaders(2)],                    # the first chunk is confirmed, the next cut short
    [3 * CHUNK + 7, 5 * CHUNK + 12345, 9 * CHUNK + 1],  # several cuts along the way
], ids=["in-headers", "mid-chunk", "reply-lost", "between-chunks", "several"])
@pytest.mark.parametrize("checksum", ["sha256", None], ids=["checksummed", "plain"])
def test_an_upload_survives_cut_connections(gunicorn_server, exporter_auth, services, big_file,
                                            cut_points, checksum):
    server = gunicorn_server(workers=2)
    port = int(server.url.rsplit(":", 1)[1])
    proxy = CuttingProxy(port, cut_points)
    file_id, md5, size = uuid.uuid4(), md5_file(big_file), big_file.stat().st_size
    watcher = FinalPathWatcher(services.files, file_id, size)
    uploader = uploader_for(f"http://127.0.0.1:{proxy.port}", exporter_auth, checksum=checksum)
    with open(big_file, "rb") as source:
        outcome = uploader.upload(file_id, md5, source)
    proxy.close()
    assert outcome.complete
    assert watcher.stop() == []
    assert proxy.cut_count == len(cut_points)
    assert stored_bytes(services.files, file_id) == big_file.read_bytes()
    # Each cut costs at most the chunk in flight; request headers add a few KB in all.
    assert proxy.forwarded < size + len(cut_points) * CHUNK + HEADER_ALLOWANCE


def test_an_upload_survives_the_server_being_killed_and_restarted(server_config, exporter_auth,
                                                                   services, big_file):
    port = free_port()
    server = GunicornProcess(server_config, port, workers=2)
    proxy = CuttingProxy(port, [], delay_per_piece=0.002)  # slow the transfer so the kill lands mid-upload
    file_id, md5, size = uuid.uuid4(), md5_file(big_file), big_file.stat().st_size
    watcher = FinalPathWatcher(services.files, file_id, size)
    uploader = uploader_for(f"http://127.0.0.1:{proxy.port}", exporter_auth)
    outcome = {}

    def upload():
        with open(big_file, "rb") as source:
            outcome["result"] = uploader.upload(file_id, md5, source)

    thread = threading.Thread(target=upload)
    thread.start()
    while proxy.forwarded < size // 3:
        time.sleep(0.01)
    server.kill()
    offset_at_kill = services.uploads.partial_offset(file_id, md5)
    server = GunicornProcess(server_config, port, workers=2)
    thread.join(120)
    server.stop()
    proxy.close()
    assert outcome["result"].complete
    assert watcher.stop() == []
    assert 0 < offset_at_kill < size
    assert stored_bytes(services.files, file_id) == big_file.read_bytes()
    assert proxy.forwarded < size + 2 * CHUNK + HEADER_ALLOWANCE


def read_by_the_server(connection: socket.socket) -> bool:
    """Whether the server process has read everything sent on ``connection`` (a loopback
    IPv4 connection): its end's receive queue in /proc/net/tcp is empty. A checksummed
    chunk may wait for its digest in the server's memory, where no file shows it."""
    client = "%08X:%04X" % (0x0100007F, connection.getsockname()[1])
    server = "%08X:%04X" % (0x0100007F, connection.getpeername()[1])
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == server and fields[2] == client:
                return int(fields[4].split(":")[1], 16) == 0
    return False


def test_a_checksummed_chunk_cut_by_a_server_crash_is_not_counted(server_config, exporter_auth,
                                                                   services, big_file):
    port = free_port()
    server = GunicornProcess(server_config, port, workers=1)
    file_id, md5, size = uuid.uuid4(), md5_file(big_file), big_file.stat().st_size
    data = big_file.read_bytes()
    uploader = uploader_for(server.url, exporter_auth)
    url = f"{server.url}/import/data/{file_id.hex}/{md5}"
    first = uploader.session.patch(url, data=data[:CHUNK], timeout=30, headers={
        "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0",
        "Upload-Length": str(size)})
    assert first.json()["offset"] == CHUNK
    second = data[CHUNK:4 * CHUNK]  # the server reads a body a CHUNK at a time
    digest = base64.b64encode(hashlib.sha256(second).digest()).decode()
    token = base64.b64encode(":".join(exporter_auth).encode()).decode()
    head = (f"PATCH /import/data/{file_id.hex}/{md5} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Basic {token}\r\nContent-Type: application/offset+octet-stream\r\n"
            f"Upload-Offset: {CHUNK}\r\nUpload-Length: {size}\r\n"
            f"Upload-Checksum: sha256 {digest}\r\nContent-Length: {len(second)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.sendall(head + second[:2 * CHUNK + 1000])
        deadline = time.monotonic() + 60  # a bound for a broken server, not a measurement
        while not read_by_the_server(connection):
            assert time.monotonic() < deadline, "the server never took in part of the chunk"
            time.sleep(0.01)
        server.kill()  # two thirds of a chunk in, its checksum not yet checked
    server = GunicornProcess(server_config, port, workers=1)
    try:
        assert requests.get(url, auth=exporter_auth, timeout=10).json()["offset"] == CHUNK
        with open(big_file, "rb") as source:
            assert uploader.upload(file_id, md5, source).complete
    finally:
        server.stop()
    assert stored_bytes(services.files, file_id) == data


EXPORTER_SCRIPT = textwrap.dedent('''
    import sys, uuid, requests
    from meteorpi_server.exporter.resumable import ResumableUploader
    url, user, password, file_id, md5, path, chunk = sys.argv[1:8]
    session = requests.Session()
    session.auth = (user, password)
    uploader = ResumableUploader(session, url + "/import", chunk_size=int(chunk), retry_delay=0.05)
    with open(path, "rb") as source:
        outcome = uploader.upload(uuid.UUID(file_id), md5, source,
                                  progress=lambda n: print("sent", n, flush=True))
    print("done", outcome.complete, outcome.bytes_sent, flush=True)
''')


def test_an_upload_resumes_after_the_exporter_is_killed(gunicorn_server, exporter_auth, services,
                                                         big_file, tmp_path):
    server = gunicorn_server(workers=2)
    port = int(server.url.rsplit(":", 1)[1])
    proxy = CuttingProxy(port, [], delay_per_piece=0.002)
    file_id, md5, size = uuid.uuid4(), md5_file(big_file), big_file.stat().st_size
    watcher = FinalPathWatcher(services.files, file_id, size)
    script = tmp_path / "exporter.py"
    script.write_text(EXPORTER_SCRIPT)
    command = [sys.executable, str(script), f"http://127.0.0.1:{proxy.port}", *exporter_auth,
               file_id.hex, md5, str(big_file), str(CHUNK)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    confirmed = 0
    for line in first.stdout:  # kill it once a few chunks are confirmed, mid-way through another
        confirmed += int(line.split()[1])
        if confirmed >= 4 * CHUNK:
            time.sleep(0.05)
            break
    first.send_signal(signal.SIGKILL)
    first.wait()
    held = settled_offset(services, file_id, md5)
    second = subprocess.run(command, capture_output=True, text=True, timeout=120)
    proxy.close()
    assert second.returncode == 0, second.stderr
    done = second.stdout.strip().splitlines()[-1].split()
    assert done[:2] == ["done", "True"]
    assert int(done[2]) == size - held  # the second run sent only what the server lacked
    assert watcher.stop() == []
    assert stored_bytes(services.files, file_id) == big_file.read_bytes()
