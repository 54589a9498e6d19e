"""The client half of resumable uploads: send a file in chunks from the server's offset.

Whatever happens to a connection, the server's offset is the truth: after a cut, a
time-out or a restart of either side, the uploader asks for it and carries on from
there, so bytes the server confirmed are never sent again. Memory holds two chunks: the
one being sent and the next, read ahead.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import os
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

import requests

from ..protocol import (
    LENGTH_MISMATCH,
    MD5_MISMATCH,
    RESUMABLE_MEDIA_TYPE,
    UPLOAD_BUSY,
    UPLOAD_CHECKSUM_HEADER,
    UPLOAD_LENGTH_HEADER,
    UPLOAD_OFFSET_HEADER,
)
from . import defaults
from .errors import UploadFailed, UploadRefused

log = logging.getLogger("meteorpi.exporter")

# export_chunk_bytes' default: 8 MiB, though on loopback 16 and 64 MiB chunks were a median
# 25% faster (bench/README.md, bench/resumable_upload.py): the benchmark's rounds overlap,
# so the gain is uncertain, while on a camera's slow link a cut costs a whole chunk of
# resending, and a bigger chunk saves little there. export_chunk_bytes changes it per node.
DEFAULT_CHUNK_SIZE = defaults.CHUNK_BYTES
# A target ends an upload request whose sender went silent after its
# upload_read_timeout_seconds (60 s by default); until then it answers 409 upload_busy.
# Waiting out a little more than that (half as much again: 90 s) lets a stale request of
# ours (from a link that dropped) end, while the longest pause keeps the wait after it
# ends short.
DEFAULT_BUSY_SECONDS = defaults.TARGET_UPLOAD_READ_TIMEOUT * 1.5
BUSY_PAUSE_MAX = 15.0

Progress = Callable[[int], None]


# Replies about the target (its credentials, its URL), not about the file being sent.
TARGET_STATUS_CODES = (401, 403, 404, 405)


@dataclass
class UploadOutcome:
    """``complete``: the server holds the verified file. ``md5_mismatch``: the server
    assembled the bytes but they did not match the md5 (it discarded them)."""

    complete: bool
    bytes_sent: int = 0
    md5_mismatch: bool = False


@dataclass
class _Upload:
    """One file's upload in progress: where it goes, and how it is going."""

    url: str
    file_id: uuid.UUID
    size: int
    progress: Progress | None
    outcome: UploadOutcome = field(default_factory=lambda: UploadOutcome(complete=False))
    # Failures since the offset last moved on, and seconds waited on upload_busy.
    failures: int = 0
    busy_waited: float = 0.0

    def sent(self, count: int) -> None:
        self.outcome.bytes_sent += count
        if self.progress:
            self.progress(count)


class _Md5Mismatch(Exception):
    """The server found the whole file's md5 wrong and discarded it."""


class ResumableUploader:
    """Uploads files to one server's ``/import/data/<id>/<md5>`` with a requests.Session.

    A failure (a cut connection, a 5xx, a reply that does not move the offset on) is
    retried from the server's offset, pausing ``retry_delay`` seconds, doubling, up to
    ``attempts`` failures in a row. An upload another request still holds (409
    ``upload_busy``) is waited out for up to ``busy_seconds`` in all.
    """

    def __init__(self, session: requests.Session, import_url: str, *,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, max_chunk_bytes: int | None = None,
                 timeout: tuple[float, float] = defaults.TIMEOUT, attempts: int = 5,
                 retry_delay: float = defaults.UPLOAD_RETRY_SECONDS, checksum: str | None = "sha256",
                 busy_seconds: float = DEFAULT_BUSY_SECONDS):
        self.session = session
        self.import_url = import_url.rstrip("/")
        self.chunk_size = min(chunk_size, max_chunk_bytes or chunk_size)
        self.timeout = timeout
        self.attempts = attempts
        self.retry_delay = retry_delay
        self.checksum = checksum
        self.busy_seconds = busy_seconds
        self.requests_sent = 0

    def upload(self, file_id: uuid.UUID, md5: str, source: BinaryIO,
               progress: Progress | None = None, offset: int | None = None) -> UploadOutcome:
        """Send ``source`` (an open file) until the server holds all of it.

        ``offset``, when the caller already knows the server's (a batch plan says it),
        saves asking for it first.
        """
        upload = _Upload(f"{self.import_url}/data/{file_id.hex}/{md5}", file_id,
                         os.fstat(source.fileno()).st_size, progress)
        if offset is None:
            offset = self._offset(upload.url)
        try:
            with _Chunks(source.fileno(), upload.size, self.checksum) as chunks:
                while offset is not None:
                    offset = self._send_chunk(upload, chunks.at(offset, self.chunk_size))
        except _Md5Mismatch:
            upload.outcome.md5_mismatch = True
            return upload.outcome
        upload.outcome.complete = True
        return upload.outcome

    def _send_chunk(self, upload: _Upload, chunk: _Chunk) -> int | None:
        """Send one chunk; where to send from next (see :meth:`_follow`). The chunk is
        let go on return, before the next is asked for, so two are held, not three."""
        try:
            response = self._send(upload.url, upload.size, chunk)
        except requests.RequestException as error:
            upload.failures = self._back_off(
                upload.failures, f"sending bytes {chunk.offset}+ of {upload.file_id.hex}: {error}")
            return self._offset(upload.url)
        return self._follow(upload, chunk, response)

    def _follow(self, upload: _Upload, chunk: _Chunk, response: requests.Response) -> int | None:
        """Where to send from after the reply to ``chunk`` (None: the server holds the
        whole file). Raises UploadFailed or UploadRefused when the upload cannot go on,
        _Md5Mismatch when the server found the whole file wrong."""
        url, reply, offset = upload.url, _json(response), chunk.offset
        status = response.status_code
        if status == 200 and reply.get("complete"):
            upload.sent(len(chunk.data))
            return None
        if status == 200:
            moved_to = reply.get("offset")
            if not isinstance(moved_to, int) or moved_to <= offset:
                # Only progress is success: a 200 that is not this protocol's reply, or
                # that leaves the offset where it was, would otherwise loop forever.
                upload.failures = self._back_off(upload.failures, f"{url} answered 200 without moving on "
                                                                  f"from byte {offset}: {response.text[:200]!r}")
                return self._offset(url)
            upload.failures, upload.busy_waited = 0, 0.0
            upload.sent(moved_to - offset)
            return moved_to
        if status == 409 and reply.get("error") == LENGTH_MISMATCH:
            # Bytes another sender put there under this md5 claim another size; they
            # fail their md5 or expire, so the target may take ours later.
            raise UploadFailed(f"{url} holds {reply.get('offset')} bytes of an upload of "
                               f"{reply.get('length')} bytes, not {upload.size}")
        if status == 413 and self._lower_chunk_size(len(chunk.data)):
            return offset  # the target lowered its max_chunk_bytes: send smaller chunks
        if status == 409 and reply.get("error") == UPLOAD_BUSY:
            # Another request still holds the upload (most likely our own, cut off on
            # its way): retrying at once cannot help until the target ends it.
            upload.busy_waited = self._wait_busy(upload.busy_waited, reply.get("message", "upload busy"))
            return self._offset(url)
        if status == 409:
            # Someone (a retry of ours whose reply was lost) got there first: resync.
            upload.failures = self._back_off(upload.failures, reply.get("message", "offset conflict"),
                                             pause=False)
            return reply["offset"] if "offset" in reply else self._offset(url)
        if status == 422 and reply.get("error") == MD5_MISMATCH:
            raise _Md5Mismatch()
        if status in (408, 422) or status >= 500:
            # 408: the target stopped waiting for the rest of a slow chunk; it kept what
            # arrived, so this is a cut connection like any other.
            upload.failures = self._back_off(
                upload.failures, f"{status}: {reply.get('message', response.text[:200])}")
            return self._offset(url)
        if status in TARGET_STATUS_CODES:
            raise UploadFailed(f"{url} answered {status}: "
                               f"{reply.get('message', response.text[:200])}", status)
        raise UploadRefused(f"{url} answered {status}: {reply.get('message', response.text[:200])}")

    def _send(self, url: str, size: int, chunk: _Chunk) -> requests.Response:
        headers = {"Content-Type": RESUMABLE_MEDIA_TYPE, UPLOAD_OFFSET_HEADER: str(chunk.offset),
                   UPLOAD_LENGTH_HEADER: str(size)}
        if chunk.checksum:
            headers[UPLOAD_CHECKSUM_HEADER] = chunk.checksum
        self.requests_sent += 1
        return self.session.patch(url, data=chunk.data, headers=headers, timeout=self.timeout)

    def _offset(self, url: str) -> int | None:
        """The server's offset, or None once it holds the whole file."""
        failures = 0
        while True:
            self.requests_sent += 1
            try:
                response = self.session.get(url, timeout=self.timeout)
                if response.status_code == 200:
                    reply = _json(response)
                    return None if reply.get("complete") else int(reply["offset"])
                message = f"{response.status_code} asking for the offset"
                if response.status_code in TARGET_STATUS_CODES:  # worded for the runner's advice
                    raise UploadFailed(f"{url} answered {response.status_code} asking for the "
                                       f"offset: {response.text[:200]}", response.status_code)
                if response.status_code < 500:
                    raise UploadRefused(f"{url}: {message}: {response.text[:200]}")
            except (requests.RequestException, KeyError, ValueError) as error:
                message = f"asking for the offset: {error}"
            failures = self._back_off(failures, message)

    def _lower_chunk_size(self, refused: int) -> bool:
        """After a 413 for a chunk of ``refused`` bytes, take the target's current
        max_chunk_bytes; False if it allows that much (the file itself is too large)."""
        self.requests_sent += 1
        try:
            response = self.session.get(self.import_url, timeout=self.timeout)
        except requests.RequestException as error:
            raise UploadFailed(f"{self.import_url}: asking for the limits after a 413: {error}") from error
        limits = ((_json(response).get("uploads") or {}).get("resumable") or {})
        limit = limits.get("max_chunk_bytes") if isinstance(limits, dict) else None
        if response.status_code != 200 or not isinstance(limit, int) or not 0 < limit < refused:
            return False
        log.info("%s takes chunks of at most %d bytes now, not %d", self.import_url, limit, refused)
        self.chunk_size = limit
        return True

    def _wait_busy(self, waited: float, message: str) -> float:
        """Pause before retrying an upload another request holds, in pauses that double
        (from ``retry_delay``, at least 0.1 s so the budget is spent whatever it is) up to
        BUSY_PAUSE_MAX; give up once ``busy_seconds`` have been waited. Returns the total."""
        if waited >= self.busy_seconds:
            raise UploadFailed(f"gave up after waiting {waited:.0f} s for the upload to be "
                               f"free: {message}")
        pause = min(max(self.retry_delay, 0.1, waited), BUSY_PAUSE_MAX, self.busy_seconds - waited)
        log.info("upload busy, waiting %.1f s: %s", pause, message)
        time.sleep(pause)
        return waited + pause

    def _back_off(self, failures: int, message: str, pause: bool = True) -> int:
        failures += 1
        if failures >= self.attempts:
            raise UploadFailed(f"gave up after {failures} attempts: {message}")
        log.info("upload retry %d/%d: %s", failures, self.attempts, message)
        if pause:
            time.sleep(self.retry_delay * 2 ** (failures - 1))
        return failures


@dataclass(frozen=True)
class _Chunk:
    offset: int
    data: bytes
    checksum: str | None  # the Upload-Checksum header's value


class _Chunks:
    """A file's chunks, each read (and its checksum computed) while the one before it is
    on its way: the next chunk is read ahead in a thread, so the server's work on one
    chunk and ours on the next overlap (reading and hashing one after the other, the
    uploader's thread waited 64-70% of the time). Memory holds two chunks at most.
    """

    def __init__(self, descriptor: int, size: int, algorithm: str | None):
        self.descriptor, self.size, self.algorithm = descriptor, size, algorithm
        self._ahead: Future | None = None
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> _Chunks:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def at(self, offset: int, chunk_size: int) -> _Chunk:
        """The chunk at ``offset``; the one after it starts being read."""
        length = min(chunk_size, self.size - offset)
        ahead, self._ahead = self._ahead, None
        chunk = ahead.result() if ahead is not None else None
        if chunk is None or chunk.offset != offset or len(chunk.data) != length:
            chunk = self._read(offset, length)  # a resent or resized chunk: not the one read ahead
        following = offset + length
        if following < self.size:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="meteorpi-read-ahead")
            self._ahead = self._pool.submit(self._read, following,
                                            min(chunk_size, self.size - following))
        return chunk

    def _read(self, offset: int, length: int) -> _Chunk:
        parts, position = [], offset
        while position < offset + length:
            part = os.pread(self.descriptor, offset + length - position, position)
            if not part:
                break  # the file shrank: the server's md5 check will say so
            parts.append(part)
            position += len(part)
        data = b"".join(parts)  # (one part is returned as it is, not copied)
        checksum = None
        if self.algorithm:
            digest = hashlib.new(self.algorithm, data).digest()
            checksum = f"{self.algorithm} {base64.b64encode(digest).decode()}"
        return _Chunk(offset, data, checksum)


def _json(response: requests.Response) -> dict:
    try:
        reply = response.json()
    except ValueError:
        return {}
    return reply if isinstance(reply, dict) else {}
