"""Resumable chunked uploads: a file's bytes arrive as appends at known offsets.

The state of an upload is its partial file in the store's ``.uploads/`` directory, named
by file id and md5: its size is the offset the server holds, so any worker on the host
can continue any upload, and a server restart loses nothing that was acknowledged
(every chunk is fsynced before its reply). Beside it, ``<partial>.length`` pins the
file's size declared by the first chunk, so a later request cannot end the upload early
or make it longer. An exclusive ``flock`` on the partial file keeps two requests from
appending to one upload at once.

A checksummed chunk is received into an anonymous temporary file and appended only once
its digest matches, so the partial file never holds a byte that failed, or has not yet
passed, its check: not after a 422, a cut connection, nor a server killed mid-chunk.
A chunk without a checksum is written in place; after a crash the bytes that reached
the file count (the whole file's md5 checks them in the end).

When the last byte arrives the whole file's md5 is verified and the file is handed to
the receiver (which moves it into place); a mismatch discards it.
"""
from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import logging
import os
import re
import tempfile
import uuid
from dataclasses import dataclass
from typing import BinaryIO

from meteorpi_model import MD5Stream

from .. import protocol
from ..storage.files import CHUNK_SIZE, FileStore
from .activity import ImportActivity

log = logging.getLogger("meteorpi.upload")

CHECKSUM_ALGORITHMS = {"md5": hashlib.md5, "sha1": hashlib.sha1, "sha256": hashlib.sha256}


class UploadError(Exception):
    """A chunk that cannot be accepted; ``status`` and ``error`` shape the HTTP reply."""

    status = 400
    error = "bad_upload"

    def __init__(self, message: str, offset: int | None = None):
        super().__init__(message)
        self.message = message
        self.offset = offset


class OffsetMismatch(UploadError):
    status, error = 409, "offset_mismatch"


class UploadBusy(UploadError):
    status, error = 409, "upload_busy"


class ChecksumMismatch(UploadError):
    status, error = 422, "checksum_mismatch"


class FileMd5Mismatch(UploadError):
    status, error = 422, protocol.MD5_MISMATCH


class UploadTooLarge(UploadError):
    status, error = 413, protocol.TOO_LARGE


class LengthMismatch(UploadError):
    status, error = 409, "length_mismatch"

    def __init__(self, message: str, offset: int, length: int):
        super().__init__(message, offset)
        self.length = length


@dataclass(frozen=True)
class Checksum:
    """An ``Upload-Checksum`` header: an algorithm and the chunk's expected digest."""

    algorithm: str
    digest: bytes

    @classmethod
    def parse(cls, header: str) -> Checksum:
        algorithm, _, encoded = header.strip().partition(" ")
        if algorithm not in CHECKSUM_ALGORITHMS:
            raise UploadError(f"Upload-Checksum algorithm must be one of "
                              f"{', '.join(CHECKSUM_ALGORITHMS)} (got {algorithm!r})")
        try:
            digest = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise UploadError("Upload-Checksum must be '<algorithm> <base64 digest>'") from None
        if len(digest) != CHECKSUM_ALGORITHMS[algorithm]().digest_size:
            raise UploadError(f"Upload-Checksum digest has the wrong length for {algorithm}")
        return cls(algorithm, digest)


@dataclass(frozen=True)
class UploadState:
    """How far an upload has got: ``offset`` bytes held; ``complete`` once stored (the
    offset is then unknown when the bytes came some other way, e.g. a legacy upload)."""

    offset: int | None
    complete: bool = False

    def to_dict(self) -> dict:
        reply = {"complete": self.complete}
        if self.offset is not None:
            reply["offset"] = self.offset
        if self.complete:
            reply["state"] = protocol.CONTINUE  # what a legacy upload answers: go on with the import
        return reply


class ResumableUploads:
    """Appends chunks to partial uploads and completes them through the receiver."""

    def __init__(self, files: FileStore, receiver, max_chunk_bytes: int, max_file_bytes: int,
                 activity: ImportActivity | None = None):
        self.files = files
        self.receiver = receiver
        self.max_chunk_bytes = max_chunk_bytes
        self.max_file_bytes = max_file_bytes
        self.activity = activity or ImportActivity()

    def state(self, file_id: uuid.UUID, md5: str) -> UploadState:
        """The offset to send from next (0 for an upload never started)."""
        if self.receiver.has_file_data(file_id, md5):
            return UploadState(offset=None, complete=True)
        return UploadState(self.partial_offset(file_id, md5))

    def partial_offset(self, file_id: uuid.UUID, md5: str) -> int:
        """How many bytes of an unfinished upload are held (0 for none), for a caller
        that already knows the file is not stored."""
        try:
            return os.stat(self.files.upload_path(file_id, md5)).st_size
        except FileNotFoundError:
            return 0

    def append(self, file_id: uuid.UUID, md5: str, offset: int, length: int, body: BinaryIO,
               user: str, checksum: Checksum | None = None,
               chunk_length: int | None = None) -> UploadState:
        """Write ``body`` at ``offset`` of an upload whose whole size is ``length``.

        Raises an UploadError subclass for a chunk that cannot be taken; nothing of such a
        chunk is kept. If reading ``body`` fails (a cut connection), the bytes that did
        arrive are kept, unless a checksum was given (then a chunk is all or nothing), and
        the error propagates.
        """
        if length > self.max_file_bytes:
            raise UploadTooLarge(f"the file is larger than this server's limit of "
                                 f"{self.max_file_bytes} bytes")
        if chunk_length is not None and chunk_length > self.max_chunk_bytes:
            raise UploadTooLarge(f"a chunk may be at most {self.max_chunk_bytes} bytes")
        if offset + (chunk_length or 0) > length:
            raise UploadError(f"the chunk runs past the Upload-Length of {length} bytes")
        if self.receiver.has_file_data(file_id, md5):
            return UploadState(length, complete=True)
        path = self.files.upload_path(file_id, md5)
        descriptor = _open_locked(path)
        try:
            held = os.fstat(descriptor).st_size
            pin = _pin_path(path)
            pinned = _read_pin(pin)
            # Until a byte is held there is nothing to protect, so a new declaration may
            # replace a pin (one left by an upload swept away, say).
            if held and pinned is not None and pinned != length:
                raise LengthMismatch(f"this upload is of {pinned} bytes, not {length}; it "
                                     f"holds {held} bytes", held, pinned)
            if offset != held:
                raise OffsetMismatch(f"this upload continues at byte {held}, not {offset}", held)
            _pin_length(pin, pinned, length)
            if checksum is None:
                written = self._write_in_place(descriptor, offset, length, body)
            else:
                written = self._write_verified(descriptor, path, offset, length, body, checksum)
            self.activity.bytes_received("resumable_chunk", written - offset)
            if offset == 0 and written:
                self.activity.upload_started()
            if written < length:
                return UploadState(written)
            return self._complete(file_id, md5, path, descriptor, length, user)
        finally:
            os.close(descriptor)

    def _write_in_place(self, descriptor: int, offset: int, length: int, body: BinaryIO) -> int:
        position = offset
        try:
            while piece := body.read(CHUNK_SIZE):
                self._check_room(position - offset + len(piece), position + len(piece), length)
                os.pwrite(descriptor, piece, position)
                position += len(piece)
        except UploadError:
            os.ftruncate(descriptor, offset)  # a refused chunk is not taken at all
            raise
        except BaseException:  # a cut connection shows up as whatever the server raises
            # Without a checksum the bytes that arrived are as good as any, and the offset
            # stays truthful.
            os.ftruncate(descriptor, position)
            os.fsync(descriptor)
            raise
        os.fsync(descriptor)
        return position

    def _write_verified(self, descriptor: int, path, offset: int, length: int, body: BinaryIO,
                        checksum: Checksum) -> int:
        """Receive the chunk beside the partial file and append it once its digest matches.

        The temporary file has no name (or loses it at once), so a crash leaves nothing
        behind, and its pages are usually dropped before they are ever written to disk.
        """
        hasher = CHECKSUM_ALGORITHMS[checksum.algorithm]()
        with tempfile.TemporaryFile(dir=path.parent) as pending:
            received = 0
            while piece := body.read(CHUNK_SIZE):
                self._check_room(received + len(piece), offset + received + len(piece), length)
                hasher.update(piece)
                os.pwrite(pending.fileno(), piece, received)
                received += len(piece)
            if hasher.digest() != checksum.digest:
                raise ChecksumMismatch(
                    f"the chunk's {checksum.algorithm} does not match Upload-Checksum; it was "
                    f"discarded, send it again from byte {offset}", offset)
            try:
                copied = 0
                while copied < received:
                    piece = os.pread(pending.fileno(), min(CHUNK_SIZE, received - copied), copied)
                    if not piece:
                        raise OSError(f"the received chunk ends at {copied} of {received} bytes")
                    os.pwrite(descriptor, piece, offset + copied)
                    copied += len(piece)
                os.fsync(descriptor)
            except BaseException:
                os.ftruncate(descriptor, offset)  # e.g. a full disk: keep the offset truthful
                raise
        return offset + received

    def _check_room(self, chunk_bytes: int, end: int, length: int) -> None:
        if chunk_bytes > self.max_chunk_bytes:
            raise UploadTooLarge(f"a chunk may be at most {self.max_chunk_bytes} bytes")
        if end > length:
            raise UploadError(f"the chunk runs past the Upload-Length of {length} bytes")

    def _complete(self, file_id: uuid.UUID, md5: str, path, descriptor: int, length: int,
                  user: str) -> UploadState:
        hasher = MD5Stream()
        position = 0
        while position < length:
            piece = os.pread(descriptor, CHUNK_SIZE, position)
            hasher.update(piece)
            position += len(piece)
        actual = hasher.hexdigest()
        if actual != md5:
            os.unlink(path)
            _pin_path(path).unlink(missing_ok=True)
            self.receiver.upload_failed(file_id, md5, user)
            self.activity.files_received("resumable", user, None, discarded=[file_id])
            log.warning("upload of file %s from %s discarded: md5 %s, expected %s",
                        file_id.hex, user, actual, md5)
            raise FileMd5Mismatch(f"the whole file's md5 is {actual}, not {md5}; the upload "
                                  "was discarded: check the file on the node and send it again", 0)
        try:
            self.receiver.receive_complete_upload(file_id, md5, path, user)
        finally:
            path.unlink(missing_ok=True)
            _pin_path(path).unlink(missing_ok=True)
        self.activity.files_received("resumable", user, None, kept=[length])
        return UploadState(length, complete=True)


def _pin_length(pin, pinned: int | None, length: int) -> None:
    """Hold the upload to ``length`` from now on (the caller holds the partial's lock).

    A partial file from before pins existed takes the length it is next sent with.
    """
    if pinned == length:
        os.utime(pin)  # an upload in progress is not stale: keep the sweep off its pin
        return
    descriptor = os.open(pin, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(descriptor, f"{length}\n".encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _pin_path(path):
    return path.with_name(path.name + ".length")


def _read_pin(pin) -> int | None:
    """The pinned length, or None for none (or one a crash left half written)."""
    try:
        text = pin.read_bytes()[:32].strip()
    except FileNotFoundError:
        return None
    return int(text) if re.fullmatch(rb"[0-9]+", text) else None


def _open_locked(path) -> int:
    """Open (creating it if need be) and exclusively lock the partial file at ``path``.

    Raises UploadBusy if another request holds the lock. Opening and locking are two
    steps: a sweep of stale uploads may delete the file in between, and a chunk written
    to that unlinked file would be acknowledged and lost. So once locked, the descriptor
    must still be the file at ``path``; if it is not, open what is there now.
    """
    for _ in range(3):
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise UploadBusy("another request is writing to this upload; ask for the "
                             "offset again and resume from there") from None
        opened = os.fstat(descriptor)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current and (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
            return descriptor
        os.close(descriptor)
    raise UploadBusy("this upload's partial file keeps being replaced; ask for the offset "
                     "again and resume from there")
