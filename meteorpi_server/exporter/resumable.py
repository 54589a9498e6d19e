"""The client half of resumable uploads: send a file in chunks from the server's offset.

Whatever happens to a connection, the server's offset is the truth: after a cut, a
time-out or a restart of either side, the uploader asks for it and carries on from
there, so bytes the server confirmed are never sent again. Memory holds one chunk.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import BinaryIO, Callable

import requests

log = logging.getLogger("meteorpi.exporter")

# 8 MiB: on loopback, throughput is within a few percent of 16-64 MiB chunks (see
# bench/resumable_upload.py), while a cut costs at most 8 MiB of resending on a slow link.
DEFAULT_CHUNK_SIZE = 8 << 20
MEDIA_TYPE = "application/offset+octet-stream"

Progress = Callable[[int], None]


class UploadFailed(Exception):
    """The upload cannot go on now: the target could not be reached or kept failing."""


class UploadRefused(UploadFailed):
    """The target refuses this file (too large, say): trying again will not help."""


@dataclass
class UploadOutcome:
    """``complete``: the server holds the verified file. ``md5_mismatch``: the server
    assembled the bytes but they did not match the md5 (it discarded them)."""

    complete: bool
    bytes_sent: int = 0
    md5_mismatch: bool = False


class ResumableUploader:
    """Uploads files to one server's ``/import/data/<id>/<md5>`` with a requests.Session."""

    def __init__(self, session: requests.Session, import_url: str, *,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, max_chunk_bytes: int | None = None,
                 timeout: tuple[float, float] = (10.0, 300.0), attempts: int = 5,
                 retry_delay: float = 1.0, checksum: str | None = "sha256"):
        self.session = session
        self.import_url = import_url.rstrip("/")
        self.chunk_size = min(chunk_size, max_chunk_bytes or chunk_size)
        self.timeout = timeout
        self.attempts = attempts
        self.retry_delay = retry_delay
        self.checksum = checksum
        self.requests_sent = 0

    def upload(self, file_id: uuid.UUID, md5: str, source: BinaryIO,
               progress: Progress | None = None, offset: int | None = None) -> UploadOutcome:
        """Send ``source`` (an open file) until the server holds all of it.

        ``offset``, when the caller already knows the server's (a batch plan says it),
        saves asking for it first.
        """
        url = f"{self.import_url}/data/{file_id.hex}/{md5}"
        size = os.fstat(source.fileno()).st_size
        outcome = UploadOutcome(complete=False)
        failures = 0
        if offset is None:
            offset = self._offset(url)
        while offset is not None:
            source.seek(offset)
            chunk = source.read(min(self.chunk_size, size - offset))
            try:
                response = self._send(url, offset, size, chunk)
            except requests.RequestException as error:
                failures = self._back_off(failures, f"sending bytes {offset}+ of {file_id.hex}: {error}")
                offset = self._offset(url)
                continue
            reply = _json(response)
            if response.status_code == 200:
                failures = 0
                outcome.bytes_sent += len(chunk)
                if progress:
                    progress(len(chunk))
                offset = None if reply.get("complete") else reply.get("offset", offset + len(chunk))
            elif response.status_code == 409:
                # Someone (a retry of ours whose reply was lost) got there first: resync.
                failures = self._back_off(failures, reply.get("message", "offset conflict"), pause=False)
                offset = reply["offset"] if "offset" in reply else self._offset(url)
            elif response.status_code == 422 and reply.get("error") == "md5_mismatch":
                outcome.md5_mismatch = True
                return outcome
            elif response.status_code == 422 or response.status_code >= 500:
                failures = self._back_off(failures, f"{response.status_code}: {reply.get('message', response.text[:200])}")
                offset = self._offset(url)
            else:
                raise UploadRefused(f"{url} answered {response.status_code}: "
                                    f"{reply.get('message', response.text[:200])}")
        outcome.complete = True
        return outcome

    def _send(self, url: str, offset: int, size: int, chunk: bytes) -> requests.Response:
        headers = {"Content-Type": MEDIA_TYPE, "Upload-Offset": str(offset),
                   "Upload-Length": str(size)}
        if self.checksum:
            digest = hashlib.new(self.checksum, chunk).digest()
            headers["Upload-Checksum"] = f"{self.checksum} {base64.b64encode(digest).decode()}"
        self.requests_sent += 1
        return self.session.patch(url, data=chunk, headers=headers, timeout=self.timeout)

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
                if response.status_code < 500:
                    raise UploadRefused(f"{url}: {message}: {response.text[:200]}")
            except (requests.RequestException, KeyError, ValueError) as error:
                message = f"asking for the offset: {error}"
            failures = self._back_off(failures, message)

    def _back_off(self, failures: int, message: str, pause: bool = True) -> int:
        failures += 1
        if failures >= self.attempts:
            raise UploadFailed(f"gave up after {failures} attempts: {message}")
        log.info("upload retry %d/%d: %s", failures, self.attempts, message)
        if pause:
            time.sleep(self.retry_delay * 2 ** (failures - 1))
        return failures


def _json(response: requests.Response) -> dict:
    try:
        reply = response.json()
    except ValueError:
        return {}
    return reply if isinstance(reply, dict) else {}
