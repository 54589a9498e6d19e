"""Uploads through a real gunicorn server: disconnects, chunked bodies, bounded memory."""
from __future__ import annotations

import base64
import socket
import time
import uuid

import pytest
import requests

from meteorpi_model import md5_bytes
from meteorpi_server.exporter.multipart import MultipartFileBody
from store_queries import everything_in_store, stored_bytes

pytestmark = pytest.mark.slow


def raw_upload_head(server_url: str, auth, file_id: uuid.UUID, md5: str, length: int) -> bytes:
    host = server_url.removeprefix("http://")
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    return (f"POST /import/data/{file_id.hex}/{md5} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Basic {token}\r\n"
            "Content-Type: multipart/form-data; boundary=cut\r\n"
            f"Content-Length: {length}\r\n\r\n"
            "--cut\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n").encode()


def files_on_disk(services):
    return everything_in_store(services.files)


def test_a_client_that_vanishes_mid_upload_leaves_no_file(gunicorn_server, exporter_auth, services):
    server = gunicorn_server(workers=1)
    data = b"x" * (4 << 20)
    file_id = uuid.uuid4()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(raw_upload_head(server.url, exporter_auth, file_id, md5_bytes(data),
                                           len(data) + 200))
        connection.sendall(data[: len(data) // 2])
        time.sleep(0.5)  # let the server write the first half to its temporary file
    # The server notices the cut, discards the partial bytes and goes on serving.
    deadline = time.monotonic() + 10
    while files_on_disk(services) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert files_on_disk(services) == []
    assert requests.get(f"{server.url}/health", timeout=5).status_code == 200


def basic_auth_header(auth) -> str:
    return "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()


def go_silent_mid_request(server_url: str, head: bytes, some_body: bytes) -> socket.socket:
    """Send a request's headers and part of its body, then nothing more, without closing:
    what the server sees of a sender behind a link that died (a half-open connection)."""
    host, port = server_url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)))
    connection.sendall(head + some_body)
    return connection


def reply_status(connection: socket.socket) -> int:
    connection.settimeout(60)  # a bound for a broken server, not a measurement
    status_line = connection.makefile("rb").readline()
    return int(status_line.split()[1])


def test_a_sender_gone_silent_mid_chunk_does_not_hold_the_upload(gunicorn_server, settings,
                                                                 exporter_auth, services):
    # Long enough that a loaded machine's probe below still finds the silent request
    # holding the upload; short enough to wait out.
    settings["upload_read_timeout_seconds"] = 3
    server = gunicorn_server(workers=1)
    # Past the 64 KiB meteorpi serve reads ahead of the app: a silent chunk that small
    # never reaches the app, and so never holds the upload (the worker ends it).
    chunk = 128 * 1024
    data = bytes(range(256)) * (3 * chunk // 256)
    file_id, md5 = uuid.uuid4(), md5_bytes(data)
    url = f"{server.url}/import/data/{file_id.hex}/{md5}"
    session = requests.Session()
    session.auth = exporter_auth

    def patch(offset: int, body: bytes):
        return session.patch(url, data=body, timeout=30, headers={
            "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": str(offset), "Upload-Length": str(len(data))})

    assert patch(0, data[:chunk]).json()["offset"] == chunk
    head = (f"PATCH /import/data/{file_id.hex}/{md5} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {basic_auth_header(exporter_auth)}\r\n"
            "Content-Type: application/offset+octet-stream\r\n"
            f"Upload-Offset: {chunk}\r\nUpload-Length: {len(data)}\r\n"
            f"Content-Length: {chunk}\r\n\r\n").encode()
    silent = go_silent_mid_request(server.url, head, data[chunk:chunk + chunk // 2])
    # Wait until the silent request holds the upload (a probe at a wrong offset writes
    # nothing: it is told either upload_busy or the right offset).
    for _ in range(600):
        if patch(0, b"").json()["error"] == "upload_busy":
            break
        time.sleep(0.05)
    else:
        pytest.fail("the silent request never took the upload")
    # The sender, back on a working link, resumes from whatever offset the server states.
    offset = None
    for _ in range(600):
        state = session.get(url, timeout=30).json()
        offset = state["offset"]
        reply = patch(offset, data[offset:offset + chunk])
        if reply.status_code == 409:  # still busy, or the offset moved meanwhile: ask again
            time.sleep(0.05)
            continue
        assert reply.status_code == 200, reply.text
        if reply.json()["complete"]:
            break
    else:
        pytest.fail(f"the upload stayed locked by the silent sender (last offset {offset})")
    assert stored_bytes(services.files, file_id) == data
    assert reply_status(silent) == 408  # the silent request was ended, and told why
    silent.close()


def test_a_legacy_upload_gone_silent_is_ended_and_leaves_nothing(gunicorn_server, settings,
                                                                 exporter_auth, services):
    settings["upload_read_timeout_seconds"] = 1
    server = gunicorn_server(workers=1)
    data = b"x" * (256 * 1024)
    silent = go_silent_mid_request(
        server.url, raw_upload_head(server.url, exporter_auth, uuid.uuid4(), md5_bytes(data),
                                    len(data) + 200), data[:len(data) // 2])
    assert reply_status(silent) == 408
    silent.close()
    assert files_on_disk(services) == []


def test_a_chunked_upload_is_accepted(gunicorn_server, exporter_auth, services):
    server = gunicorn_server(workers=1)
    data = bytes(range(256)) * 4096
    file_id = uuid.uuid4()

    def chunked(body):  # a generator: requests sends Transfer-Encoding: chunked
        yield from body

    body = MultipartFileBody("file", "f.bin", _temporary_file(data))
    response = requests.post(f"{server.url}/import/data/{file_id.hex}/{md5_bytes(data)}",
                             data=chunked(body), headers={"Content-Type": body.content_type},
                             auth=exporter_auth, timeout=30)
    assert response.json() == {"state": "continue"}
    assert stored_bytes(services.files, file_id) == data


def _temporary_file(data: bytes):
    import tempfile

    handle = tempfile.TemporaryFile()
    handle.write(data)
    handle.seek(0)
    return handle


def _peak_rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _worker_pid(server) -> int:
    import subprocess

    children = subprocess.run(["pgrep", "-P", str(server.process.pid)], capture_output=True,
                              text=True).stdout.split()
    assert len(children) == 1, children
    return int(children[0])


def _write_file(path, size: int):
    piece = bytes(range(256)) * 4096
    with open(path, "wb") as out:
        for _ in range(size // len(piece)):
            out.write(piece)
    return path


def _legacy_upload(url, auth, path) -> None:
    from meteorpi_model import md5_file

    with open(path, "rb") as source:
        body = MultipartFileBody("file", "f.bin", source)
        response = requests.post(f"{url}/import/data/{uuid.uuid4().hex}/{md5_file(path)}", data=body,
                                 headers={"Content-Type": body.content_type}, auth=auth, timeout=120)
    assert response.json() == {"state": "continue"}


def _resumable_upload(url, auth, path) -> None:
    from meteorpi_model import md5_file
    from meteorpi_server.exporter.resumable import ResumableUploader

    session = requests.Session()
    session.auth = auth
    with open(path, "rb") as source:
        outcome = ResumableUploader(session, f"{url}/import", chunk_size=4 << 20).upload(
            uuid.uuid4(), md5_file(path), source)
    assert outcome.complete


@pytest.mark.parametrize("send", [_legacy_upload, _resumable_upload], ids=["legacy", "resumable"])
def test_the_server_memory_does_not_grow_with_the_upload_size(gunicorn_server, exporter_auth, tmp_path, send):
    server = gunicorn_server(workers=1)
    worker = _worker_pid(server)

    def upload(size: int) -> int:
        path = _write_file(tmp_path / f"upload-{size}", size)
        send(server.url, exporter_auth, path)
        path.unlink()
        return _peak_rss_kib(worker)

    # The smaller upload is already several parts long: into a bucket, an upload holds a
    # part or two in memory whatever its size, and that constant is not growth.
    after_small = upload(32 << 20)
    after_large = upload(256 << 20)
    # 8x the bytes; the peak may move by a few read buffers, not by the file.
    assert after_large - after_small < 32 * 1024, (after_small, after_large)


@pytest.mark.local_store_only  # the exporter's memory: the server's store makes no odds
def test_the_exporter_memory_does_not_grow_with_the_file_size(gunicorn_server, exporter_auth, tmp_path):
    import tracemalloc

    server = gunicorn_server(workers=1)

    def peak(size: int) -> int:
        path = _write_file(tmp_path / f"upload-{size}", size)
        tracemalloc.start()
        _resumable_upload(server.url, exporter_auth, path)
        _, highest = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        path.unlink()
        return highest

    small, large = peak(8 << 20), peak(128 << 20)
    # Two 4 MiB chunks in memory either way (one sent, one read ahead), not the file.
    assert large < small + (1 << 20), (small, large)
    assert large < 16 << 20
