"""Issue 14, hostile clients, over real sockets under ``meteorpi serve``.

* A reply that leaves a request body unread either reads the rest (a small body) or says
  ``Connection: close`` and closes: the client's next request, on the same
  ``requests.Session``, is always answered (it was lost when the reply said keep-alive
  and gunicorn then closed the connection after draining 64 KiB).
* Slow and silent clients hold no worker thread: with 50 connections that sent half a
  head or a head and nothing of their JSON body, ``/health`` and an exporter's import
  are answered within a second, and the slow connections are cut off after the
  configured time-outs.
"""
from __future__ import annotations

import base64
import os
import socket
import time
from hashlib import md5
from uuid import uuid4

import pytest
import requests

from meteorpi_server.protocol import RESUMABLE_MEDIA_TYPE
from meteorpi_server.imports.bundles import MEDIA_TYPE as BUNDLE_MEDIA_TYPE

BIG = 1 << 20  # well past the 64 KiB gunicorn drains
#: Generous bounds (a busy CI machine); the configured time-outs are 2 s.
TIMEOUT = 2
CUT_OFF_WITHIN = 15


# --- a reply to an unread body --------------------------------------------------------


@pytest.fixture
def early_reply_settings(settings):
    settings.update(max_chunk_bytes=512 * 1024, max_upload_bytes=4 * BIG,
                    max_json_bytes=256 * 1024, batch_max_bundle_bytes=256 * 1024)
    return settings


def _chunk_headers(offset: int, length: int, content_type: str = RESUMABLE_MEDIA_TYPE) -> dict:
    return {"Content-Type": content_type, "Upload-Length": str(length),
            "Upload-Offset": str(offset)}


def _early_replies(base: str, exporter: tuple, reader: tuple):
    """(what, status, send) for each route that answers before reading a large body;
    ``send(session)`` sends the request (on the session, with the exporter's credentials
    unless the case says otherwise) and returns the response."""
    data = os.urandom(5 * BIG)
    upload = f"{base}/import/data/{uuid4().hex}/{md5(data[:2 * BIG]).hexdigest()}"
    chunk = 400 * 1024  # within max_chunk_bytes, well past the 64 KiB gunicorn drains

    def offset_mismatch(session):
        first = session.patch(upload, data=data[:chunk], headers=_chunk_headers(0, 2 * BIG))
        assert first.status_code == 200, first.text
        return session.patch(upload, data=data[:chunk], headers=_chunk_headers(0, 2 * BIG))

    legacy = f"{base}/import/data/{uuid4().hex}/{md5(data).hexdigest()}"
    multipart = dict(files={"file": ("f.bin", data)})  # larger than max_upload_bytes

    def chunked_body():
        for start in range(0, BIG, 64 * 1024):
            yield data[start:start + 64 * 1024]

    return [
        ("resumable chunk at the wrong offset", 409, offset_mismatch),
        ("resumable chunk larger than max_chunk_bytes", 413,
         lambda s: s.patch(upload, data=data[:BIG], headers=_chunk_headers(chunk, 2 * BIG))),
        ("resumable chunk of the wrong type", 415,
         lambda s: s.patch(upload, data=data[:BIG],
                           headers=_chunk_headers(chunk, 2 * BIG, "application/octet-stream"))),
        ("legacy upload without credentials", 401,
         lambda s: s.post(legacy, auth=lambda request: request, **multipart)),
        ("legacy upload by a user without the import role", 403,
         lambda s: s.post(legacy, auth=reader, **multipart)),
        ("legacy upload larger than max_upload_bytes", 413,
         lambda s: s.post(legacy, **multipart)),
        ("JSON import larger than max_json_bytes", 413,
         lambda s: s.post(f"{base}/import", data=b"[" + b" " * BIG + b"]",
                          headers={"Content-Type": "application/json"})),
        ("bundle without a Content-Length", 411,
         lambda s: s.post(f"{base}/import/batch/files", data=chunked_body(),
                          headers={"Content-Type": BUNDLE_MEDIA_TYPE})),
        ("bundle larger than batch_max_bundle_bytes", 413,
         lambda s: s.post(f"{base}/import/batch/files", data=data[:BIG],
                          headers={"Content-Type": BUNDLE_MEDIA_TYPE})),
        ("bundle of the wrong type", 415,
         lambda s: s.post(f"{base}/import/batch/files", data=data[:BIG],
                          headers={"Content-Type": "application/octet-stream"})),
    ]


def _assert_next_request_answered(base: str, exporter: tuple, reader: tuple) -> None:
    for what, status, send in _early_replies(base, exporter, reader):
        with requests.Session() as session:
            session.auth = exporter
            assert session.get(f"{base}/health", timeout=30).status_code == 200  # kept alive
            reply = send(session)
            assert reply.status_code == status, (what, reply.text)
            try:
                after = session.get(f"{base}/import", timeout=30)
            except requests.ConnectionError as error:
                raise AssertionError(f"{what}: the next request on the session got no "
                                     f"reply ({error}); the {status} said "
                                     f"Connection: {reply.headers.get('Connection')}") from None
            assert after.status_code == 200, (what, after.text)


def test_the_next_request_after_a_reply_to_an_unread_body_is_answered(
        early_reply_settings, gunicorn_server, make_user, exporter_auth):
    server = gunicorn_server(workers=1)
    _assert_next_request_answered(server.url, exporter_auth, make_user("reader", "user"))


def test_the_same_holds_under_werkzeugs_server(early_reply_settings, live_server, make_user,
                                               exporter_auth):
    _assert_next_request_answered(live_server, exporter_auth, make_user("reader", "user"))


def test_a_reply_that_leaves_a_large_body_unread_says_close_and_closes(
        early_reply_settings, gunicorn_server, exporter_auth):
    server = gunicorn_server(workers=1)
    data = os.urandom(BIG)
    url = f"{server.url}/import/data/{uuid4().hex}/{md5(data).hexdigest()}"
    with _connect(server.url) as sock:
        sock.sendall(_request("PATCH", url, exporter_auth, data,
                              _chunk_headers(0, len(data), "text/plain")))
        head, _ = _read_reply(sock)
        assert head.startswith(b"HTTP/1.1 415 ")
        assert b"\r\nConnection: close\r\n" in head
        assert _closed_by_server(sock)


def test_a_small_unread_body_is_read_and_the_connection_kept(
        early_reply_settings, gunicorn_server, exporter_auth):
    server = gunicorn_server(workers=1)
    data = os.urandom(20 * 1024)
    url = f"{server.url}/import/data/{uuid4().hex}/{md5(data).hexdigest()}"
    with _connect(server.url) as sock:
        sock.sendall(_request("PATCH", url, exporter_auth, data,
                              _chunk_headers(0, len(data), "text/plain")))
        head, _ = _read_reply(sock)
        assert head.startswith(b"HTTP/1.1 415 ")
        assert b"\r\nConnection: keep-alive\r\n" in head
        sock.sendall(_request("GET", f"{server.url}/health"))
        head, body = _read_reply(sock)
        assert head.startswith(b"HTTP/1.1 200 "), head


# --- slow and silent clients ------------------------------------------------------------


@pytest.fixture
def slow_client_settings(settings):
    settings.update(header_timeout_seconds=TIMEOUT, body_read_timeout_seconds=TIMEOUT)
    return settings


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    return sock


def _basic(auth: tuple) -> str:
    return "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()


def _request(method: str, url: str, auth: tuple | None = None, body: bytes = b"",
             headers: dict | None = None) -> bytes:
    path = "/" + url.removeprefix("http://").split("/", 1)[1]
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    if auth:
        lines.append(f"Authorization: {_basic(auth)}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


_LEFT_OVER: dict[int, bytes] = {}  # bytes of the next reply(s), by socket


def _read_reply(sock: socket.socket) -> tuple[bytes, bytes]:
    """One reply with a Content-Length: its head (with the final CRLF CRLF) and body."""
    data = _LEFT_OVER.pop(sock.fileno(), b"")
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before a whole reply: {data!r}"
        data += chunk
    end = data.index(b"\r\n\r\n") + 4
    head, body = data[:end], data[end:]
    length = int([line.split(b":", 1)[1] for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:")][0])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed in the middle of a reply"
        body += chunk
    if body[length:]:
        _LEFT_OVER[sock.fileno()] = body[length:]
    return head, body[:length]


def _closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(CUT_OFF_WITHIN)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def _half_sent_head(url: str) -> socket.socket:
    sock = _connect(url)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\nX-Slow: ")
    return sock


def _silent_json_body(url: str, auth: tuple, length: int = 100) -> socket.socket:
    sock = _connect(url)
    sock.sendall(f"POST /import HTTP/1.1\r\nHost: test\r\nAuthorization: {_basic(auth)}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
                 .encode())
    return sock


def _ended_with(sock: socket.socket) -> bytes:
    """What the server sent before it closed the connection (within CUT_OFF_WITHIN)."""
    sock.settimeout(CUT_OFF_WITHIN)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"still open after {CUT_OFF_WITHIN} s: {data!r}") from None
    return data


@pytest.mark.slow
def test_fifty_slow_connections_do_not_keep_health_or_an_exporter_waiting(
        slow_client_settings, gunicorn_server, exporter_auth, camera):
    server = gunicorn_server(workers=1)
    document = {"type": "status", "status": camera.to_dict()}
    # The worker's first import is slower (modules loaded, the first sweep): not measured.
    assert requests.post(f"{server.url}/import", auth=exporter_auth, json=document,
                         timeout=30).status_code == 200
    slow = [_half_sent_head(server.url) if n % 2 else _silent_json_body(server.url, exporter_auth)
            for n in range(50)]
    try:
        time.sleep(0.5)  # each is accepted (and, with gthread, held a thread)
        opened = time.monotonic()
        for _ in range(3):
            assert requests.get(f"{server.url}/health", timeout=1).status_code == 200
        reply = requests.post(f"{server.url}/import", auth=exporter_auth, timeout=1,
                              json=document)
        assert reply.status_code == 200, reply.text
        assert reply.json()["state"] != "failed"
        endings = [_ended_with(sock) for sock in slow]
        assert time.monotonic() - opened < CUT_OFF_WITHIN
        assert all(ending.startswith(b"HTTP/1.1 408 ") for ending in endings), endings
        assert requests.get(f"{server.url}/health", timeout=1).status_code == 200
    finally:
        for sock in slow:
            sock.close()


def test_a_half_sent_head_is_cut_off(slow_client_settings, gunicorn_server):
    server = gunicorn_server(workers=1)
    with _half_sent_head(server.url) as sock:
        started = time.monotonic()
        ending = _ended_with(sock)
        assert time.monotonic() - started >= TIMEOUT - 0.5
    assert ending.startswith(b"HTTP/1.1 408 "), ending
    assert b"request_timeout" in ending
    metrics = requests.get(f"{server.url}/metrics", timeout=30).text
    assert 'meteorpi_connections_cut_total{reason="head_timeout"} 1.0' in metrics


@pytest.mark.parametrize("length", [100, 200 * 1024], ids=["small", "streamed"])
def test_a_silent_json_body_is_cut_off(slow_client_settings, gunicorn_server, exporter_auth,
                                       length):
    """A small body is read in the worker's event loop; a larger one in a thread, whose
    reads wait at most body_read_timeout_seconds."""
    server = gunicorn_server(workers=1)
    with _silent_json_body(server.url, exporter_auth, length) as sock:
        sock.sendall(b"[")  # a start, then silence
        ending = _ended_with(sock)
    assert ending.startswith(b"HTTP/1.1 408 "), ending
    assert b"request_timeout" in ending
    assert requests.get(f"{server.url}/health", timeout=1).status_code == 200


def test_keep_alive_still_serves_an_exporters_requests_on_one_connection(
        slow_client_settings, gunicorn_server, exporter_auth, camera):
    import json

    server = gunicorn_server(workers=1)
    document = json.dumps({"type": "status", "status": camera.to_dict()}).encode()
    with _connect(server.url) as sock:
        for _ in range(3):
            sock.sendall(_request("POST", f"{server.url}/import", exporter_auth, document,
                                  {"Content-Type": "application/json"}))
            head, body = _read_reply(sock)
            assert head.startswith(b"HTTP/1.1 200 "), head + body
            assert b"\r\nConnection: keep-alive\r\n" in head
        # Idle for longer than header_timeout_seconds (but not keepalive's 5 s): still open.
        time.sleep(TIMEOUT + 1)
        # Two requests at once (pipelined), the second split in the middle of its head.
        second = _request("GET", f"{server.url}/import", exporter_auth)
        sock.sendall(_request("GET", f"{server.url}/health") + second[:20])
        time.sleep(0.2)
        sock.sendall(second[20:])
        head, body = _read_reply(sock)
        assert head.startswith(b"HTTP/1.1 200 ") and b'"ok"' in body, head + body
        head, body = _read_reply(sock)
        assert head.startswith(b"HTTP/1.1 200 "), head + body
    with requests.Session() as session:
        session.auth = exporter_auth
        for _ in range(5):
            assert session.post(f"{server.url}/import", data=document, timeout=5,
                                headers={"Content-Type": "application/json"}).status_code == 200


def test_a_head_and_body_sent_a_byte_at_a_time_are_answered(slow_client_settings,
                                                              gunicorn_server, exporter_auth):
    """Slow but within the time-outs: the head's end (CRLF CRLF) arrives split across
    reads, and so does every CRLF before it."""
    server = gunicorn_server(workers=1)
    request = _request("POST", f"{server.url}/import", exporter_auth, b'{"type": "x"}',
                       {"Content-Type": "application/json"})
    with _connect(server.url) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in range(len(request)):
            sock.sendall(request[byte:byte + 1])
            time.sleep(0.004)
        head, body = _read_reply(sock)
    assert head.startswith(b"HTTP/1.1 400 "), head + body  # answered by the app
    assert b"bad_request" in body or b"invalid" in body, body
