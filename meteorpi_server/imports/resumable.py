"""Resumable chunked uploads: a file's bytes arrive as appends at known offsets.

The state of an upload is its partial file in the store's ``.uploads/`` directory, named
by file id and md5, and beside it ``<partial>.length``, its pin: the file's size declared
by the first chunk (so a later request cannot end the upload early or make it longer) and
the offset held, the bytes of the partial that count. Any worker on the host can continue
any upload, and a server restart loses nothing that was acknowledged: each chunk is
written in place as it arrives, made durable, and only then counted by moving the pin's
offset on (durably too) before the reply. An exclusive ``flock`` on the partial file keeps
two requests from appending to one upload at once.

So a checksummed chunk counts only once its digest matches: the partial never holds a
counted byte that failed, or has not yet passed, its check, not after a 422, a cut
connection, nor a server killed mid-chunk (whose bytes past the pin's offset the next
request cuts off). A chunk without a checksum keeps the bytes that arrived before a cut
connection (the whole file's md5 checks them in the end).

When the last byte arrives the whole file's md5 is verified and the file is handed to
the receiver (which moves it into place); a mismatch discards it. The md5 is computed as
the chunks arrive and carried from one to the next in the process that took them; when
chunks went through several processes, the file is read again at the end instead.
"""
from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import logging
import os
import re
import secrets
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, BinaryIO

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


def whole_file_mismatch(receiver, activity: ImportActivity, file_id: uuid.UUID, md5: str,
                        actual: str, user: str) -> FileMd5Mismatch:
    """Tell the receiver, the activity log and the log of an upload discarded because the
    whole file's md5 is not its URL's; the error to raise."""
    receiver.upload_failed(file_id, md5, user)
    activity.files_received("resumable", user, None, discarded=[file_id])
    log.warning("upload of file %s from %s discarded: md5 %s, expected %s",
                file_id.hex, user, actual, md5)
    return FileMd5Mismatch(f"the whole file's md5 is {actual}, not {md5}; the upload was "
                           "discarded: check the file on the node and send it again", 0)


def check_declared(offset: int, length: int, chunk_length: int | None, max_chunk_bytes: int,
                   max_file_bytes: int) -> None:
    """Refuse a chunk whose headers already break a limit, before reading any of it."""
    if length > max_file_bytes:
        raise UploadTooLarge(f"the file is larger than this server's limit of "
                             f"{max_file_bytes} bytes")
    if chunk_length is not None and chunk_length > max_chunk_bytes:
        raise UploadTooLarge(f"a chunk may be at most {max_chunk_bytes} bytes")
    if offset + (chunk_length or 0) > length:
        raise UploadError(f"the chunk runs past the Upload-Length of {length} bytes")


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
        self._running = _RunningMd5s()

    def state(self, file_id: uuid.UUID, md5: str) -> UploadState:
        """The offset to send from next (0 for an upload never started)."""
        if self.receiver.has_file_data(file_id, md5):
            return UploadState(offset=None, complete=True)
        return UploadState(self.partial_offset(file_id, md5))

    def partial_offset(self, file_id: uuid.UUID, md5: str) -> int:
        """How many bytes of an unfinished upload are held (0 for none), for a caller
        that already knows the file is not stored."""
        path = self.files.upload_path(file_id, md5)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return 0
        return _held(size, _read_pin(_pin_path(path)))

    def append(self, file_id: uuid.UUID, md5: str, offset: int, length: int, body: BinaryIO,
               user: str, checksum: Checksum | None = None,
               chunk_length: int | None = None) -> UploadState:
        """Write ``body`` at ``offset`` of an upload whose whole size is ``length``.

        Raises an UploadError subclass for a chunk that cannot be taken; nothing of such a
        chunk is kept. If reading ``body`` fails (a cut connection), the bytes that did
        arrive are kept, unless a checksum was given (then a chunk is all or nothing), and
        the error propagates.
        """
        check_declared(offset, length, chunk_length, self.max_chunk_bytes, self.max_file_bytes)
        if self.receiver.has_file_data(file_id, md5):
            return UploadState(length, complete=True)
        path = self.files.upload_path(file_id, md5)
        descriptor = _open_locked(path)
        try:
            pin_path = _pin_path(path)
            pinned = _read_pin(pin_path)
            size = os.fstat(descriptor).st_size
            held = _held(size, pinned)
            if size > held:  # bytes past the pinned offset (a crash mid-chunk): never confirmed
                os.ftruncate(descriptor, held)
            # Until a byte is held there is nothing to protect, so a new declaration may
            # replace a pin (one left by an upload swept away, say).
            if held and pinned is not None and pinned.length != length:
                raise LengthMismatch(f"this upload is of {pinned.length} bytes, not {length}; it "
                                     f"holds {held} bytes", held, pinned.length)
            if offset != held:
                raise OffsetMismatch(f"this upload continues at byte {held}, not {offset}", held)
            pin = _pin_length(pin_path, pinned, length, held)
            running = hashlib.md5() if held == 0 else self._running.take(pin.token, held)
            written = self._write(descriptor, pin_path, pin, offset, length, body, checksum,
                                  running)
            self.activity.bytes_received("resumable_chunk", written - offset)
            if offset == 0 and written:
                self.activity.upload_started()
            if written < length:
                if running is not None:
                    self._running.keep(pin.token, written, running)
                return UploadState(written)
            return self._complete(file_id, md5, path, descriptor, length, user, running)
        finally:
            os.close(descriptor)

    def _write(self, descriptor: int, pin_path, pin: _Pin, offset: int, length: int,
               body: BinaryIO, checksum: Checksum | None, running) -> int:
        """Write the chunk in place as it arrives; once it is whole (and its digest, if
        any, matches), make it durable, then move the pin's offset past it. Returns the
        offset now held.

        Bytes past the pin's offset are not held: a crash in the middle of a chunk leaves
        them in the file, and the next request cuts them off (see :func:`_held`). So a
        checksummed chunk is all or nothing, yet written once, with no copy kept aside.
        """
        hasher = CHECKSUM_ALGORITHMS[checksum.algorithm]() if checksum else None
        position = offset
        try:
            while piece := body.read(CHUNK_SIZE):
                self._check_room(position - offset + len(piece), position + len(piece), length)
                os.pwrite(descriptor, piece, position)
                position += len(piece)
                if hasher is not None:
                    hasher.update(piece)
                if running is not None:
                    running.update(piece)  # dropped with the chunk if it is refused
            if hasher is not None and hasher.digest() != checksum.digest:
                raise ChecksumMismatch(
                    f"the chunk's {checksum.algorithm} does not match Upload-Checksum; it was "
                    f"discarded, send it again from byte {offset}", offset)
        except UploadError:
            os.ftruncate(descriptor, offset)  # a refused chunk is not taken at all
            raise
        except BaseException:  # a cut connection shows up as whatever the server raises
            # Without a checksum the bytes that arrived are as good as any (the whole
            # file's md5 checks them in the end); with one, none of them count.
            kept = offset if hasher is not None else position
            os.ftruncate(descriptor, kept)
            if kept > offset:
                self._hold(descriptor, pin_path, pin, kept)
            raise
        self._hold(descriptor, pin_path, pin, position)
        return position

    def _hold(self, descriptor: int, pin_path, pin: _Pin, offset: int) -> None:
        """Make the partial file's first ``offset`` bytes durable, then the pin's offset
        (in that order: the pin never counts bytes a crash could still lose)."""
        os.fdatasync(descriptor)
        _pin_offset(pin_path, pin, offset)

    def _check_room(self, chunk_bytes: int, end: int, length: int) -> None:
        if chunk_bytes > self.max_chunk_bytes:
            raise UploadTooLarge(f"a chunk may be at most {self.max_chunk_bytes} bytes")
        if end > length:
            raise UploadError(f"the chunk runs past the Upload-Length of {length} bytes")

    def _complete(self, file_id: uuid.UUID, md5: str, path, descriptor: int, length: int,
                  user: str, running) -> UploadState:
        if running is None:  # chunks went through other processes: read the file again
            running = hashlib.md5()
            position = 0
            while position < length:
                piece = os.pread(descriptor, CHUNK_SIZE, position)
                running.update(piece)
                position += len(piece)
        actual = running.hexdigest()
        if actual != md5:
            os.unlink(path)
            _pin_path(path).unlink(missing_ok=True)
            raise whole_file_mismatch(self.receiver, self.activity, file_id, md5, actual, user)
        try:
            self.receiver.receive_complete_upload(file_id, md5, path, user)
        finally:
            path.unlink(missing_ok=True)
            _pin_path(path).unlink(missing_ok=True)
        self.activity.files_received("resumable", user, None, kept=[length])
        return UploadState(length, complete=True)


@dataclass(frozen=True)
class _Pin:
    """Beside each partial file: the upload's declared length; a token naming this growth
    of the partial from empty (a new one whenever the pin is written afresh), under which
    processes remember the md5 of the bytes held; and the offset held. Bytes of the
    partial past that offset were written by a chunk not confirmed (a crash mid-chunk)."""

    length: int
    token: str | None
    offset: int | None  # None in a pin from before offsets were pinned: the file's size


# One line of fixed width, so that moving the offset on rewrites the same bytes in place.
_PIN_LINE = "{length} {token} {offset:020d}\n"


def _held(size: int, pin: _Pin | None) -> int:
    """How many bytes of a partial file of ``size`` bytes count."""
    if pin is None or pin.offset is None:
        return size
    return min(size, pin.offset)


def _pin_length(pin_path, pinned: _Pin | None, length: int, held: int) -> _Pin:
    """Hold the upload to ``length`` from now on (the caller holds the partial's lock);
    returns the pin in force.

    The pin is written afresh, with a new token and the offset held, whenever the partial
    file is empty or its pin does not describe it: bytes a process hashed under an older
    token can then never be taken for the bytes of a partial made again since (swept
    away, discarded, begun anew).
    """
    if (held and pinned is not None and pinned.length == length and pinned.token
            and pinned.offset == held):
        os.utime(pin_path)  # an upload in progress is not stale: keep the sweep off its pin
        return pinned
    pin = _Pin(length, secrets.token_hex(8), held)
    descriptor = os.open(pin_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(descriptor, _PIN_LINE.format(**vars(pin)).encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return pin


def _pin_offset(pin_path, pin: _Pin, offset: int) -> None:
    """Move the pin's offset to ``offset``, durably: one short write over the same bytes
    (well within a disk sector, which is written whole)."""
    descriptor = os.open(pin_path, os.O_WRONLY)
    try:
        line = _PIN_LINE.format(length=pin.length, token=pin.token, offset=offset)
        os.pwrite(descriptor, line.encode(), 0)
        os.fdatasync(descriptor)
    finally:
        os.close(descriptor)


def _pin_path(path):
    return path.with_name(path.name + ".length")


def _read_pin(pin_path) -> _Pin | None:
    """The pin, or None for none. A pin a crash left half written cannot say how many
    bytes count, so none do: the upload starts again from byte 0."""
    try:
        text = pin_path.read_bytes()[:128].strip()
    except FileNotFoundError:
        return None
    match = re.fullmatch(rb"([0-9]+)(?: ([0-9a-f]{16}) ([0-9]{20}))?", text)
    if not match:
        return _Pin(0, None, 0)
    if match[2] is None:  # a pin from before tokens and offsets
        return _Pin(int(match[1]), None, None)
    return _Pin(int(match[1]), match[2].decode(), int(match[3]))


class _RunningMd5s:
    """The md5 of each upload's held bytes, carried from chunk to chunk in this process.

    Completing a 1 GiB upload read the whole file again for its md5 (a fifth of the
    server's time). A state is valid only for the pin token and the offset it was left
    at: a chunk another process took moves the offset on, and the state is dropped (the
    file is then read again at the end, as before). At most ``capacity`` are kept.
    """

    def __init__(self, capacity: int = 256):
        self.capacity = capacity
        self._states: OrderedDict[str, tuple[int, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, token: str | None, offset: int):
        """The md5 of the first ``offset`` bytes under ``token``, or None; it is removed:
        the caller keeps it again once its chunk is held."""
        with self._lock:
            state = self._states.pop(token, None) if token else None
        return state[1] if state is not None and state[0] == offset else None

    def keep(self, token: str, offset: int, running) -> None:
        with self._lock:
            self._states[token] = (offset, running)
            while len(self._states) > self.capacity:
                self._states.popitem(last=False)


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
