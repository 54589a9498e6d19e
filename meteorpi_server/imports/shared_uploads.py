"""Resumable uploads into a bucket that any host can continue (the file store is S3).

On a directory store an upload grows in a partial file on the host that took its chunks
(``resumable.py``). With a bucket shared by several hosts behind a balancer, the next
chunk may reach another host, and every host may restart at once; so the upload's state
lives in the database (``resumable_upload``) and its bytes in the bucket:

- a multipart upload at the file's key, whose parts are ``part_size`` (8 MiB) each;
- bytes past the last whole part (S3 takes no part under 5 MiB but the last) in a *tail
  object*, read back and sent on with the next chunk (as tusd's s3store does);
- the whole file's md5 so far, as a saved OpenSSL MD5 state (``md5_state``), so the host
  that takes the last chunk verifies the file before completing the multipart upload,
  which is what makes the object visible, whole.

The offset a host reports is the row's, and the row is written only after the bytes it
counts are in the bucket. A crash in between leaves bytes the row does not count: a part
number that the next chunk uploads again, or a tail object longer than the row's
``tail_size`` (a tail object only ever grows by appending while the parts stay the same,
its key naming the part count, so the counted bytes are always its prefix).

One request at a time works on an upload: on PostgreSQL through an advisory lock, which
a host that dies releases with its session; on SQLite (one host) through a lock file.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from typing import BinaryIO, Iterator

from sqlalchemy import select

from ..storage import store
from ..storage.db import Database
from ..storage.db_locks import RESUMABLE_UPLOAD, AdvisoryLocks
from ..storage.files import CHUNK_SIZE, StoredFile
from ..storage.md5_state import ResumableMd5
from ..storage.orm import ResumableUploadRow
from ..storage.s3 import S3FileStore, S3PendingFile
from .activity import ImportActivity
from .resumable import (
    CHECKSUM_ALGORITHMS,
    Checksum,
    ChecksumMismatch,
    LengthMismatch,
    OffsetMismatch,
    UploadBusy,
    UploadError,
    UploadState,
    UploadTooLarge,
    check_declared,
    whole_file_mismatch,
)

log = logging.getLogger("meteorpi.upload")


class SharedUploads:
    """Resumable uploads kept in the database and the bucket (the interface of
    ``resumable.ResumableUploads``)."""

    def __init__(self, database: Database, files: S3FileStore, receiver, max_chunk_bytes: int,
                 max_file_bytes: int, activity: ImportActivity | None = None):
        self.database = database
        self.files = files
        self.receiver = receiver
        self.max_chunk_bytes = max_chunk_bytes
        self.max_file_bytes = max_file_bytes
        self.activity = activity or ImportActivity()

    # Asking -----------------------------------------------------------------------------

    def state(self, file_id: uuid.UUID, md5: str) -> UploadState:
        if self.receiver.has_file_data(file_id, md5):
            return UploadState(offset=None, complete=True)
        return UploadState(self.partial_offset(file_id, md5))

    def partial_offset(self, file_id: uuid.UUID, md5: str) -> int:
        with self.database.read() as session:
            row = session.get(ResumableUploadRow, (file_id, md5))
            return row.offset if row is not None else 0

    # Appending --------------------------------------------------------------------------

    def append(self, file_id: uuid.UUID, md5: str, offset: int, length: int, body: BinaryIO,
               user: str, checksum: Checksum | None = None,
               chunk_length: int | None = None) -> UploadState:
        """Take the chunk at ``offset`` of an upload of ``length`` bytes (see
        ``ResumableUploads.append``: the same replies and the same guarantees)."""
        check_declared(offset, length, chunk_length, self.max_chunk_bytes, self.max_file_bytes)
        if self.receiver.has_file_data(file_id, md5):
            return UploadState(length, complete=True)
        with exclusive(self.database, self.files, file_id, md5):
            upload = self._load(file_id, md5, length)
            if offset != upload.offset:
                raise OffsetMismatch(f"this upload continues at byte {upload.offset}, not "
                                     f"{offset}", upload.offset)
            written = self._take(upload, length, body, checksum)
            self.activity.bytes_received("resumable_chunk", written - offset)
            if offset == 0 and written:
                self.activity.upload_started()
            if written < length:
                return UploadState(written)
            return self._complete(upload, length, user)

    def _load(self, file_id: uuid.UUID, md5: str, length: int) -> _Upload:
        with self.database.read() as session:
            row = session.get(ResumableUploadRow, (file_id, md5))
            if row is not None and row.offset and row.length != length:
                raise LengthMismatch(f"this upload is of {row.length} bytes, not {length}; it "
                                     f"holds {row.offset} bytes", row.offset, row.length)
            if row is None or not row.offset:
                # Nothing held: a new declaration may replace an old one. Parts an
                # earlier attempt left in its multipart upload are simply uploaded again.
                return _Upload(self.database, self.files, file_id, md5, length,
                               upload_id=row.upload_id if row is not None else None)
            return _Upload(self.database, self.files, file_id, md5, row.length, offset=row.offset,
                           upload_id=row.upload_id, parts=json.loads(row.parts),
                           tail_size=row.tail_size, md5_state=row.md5_state)

    def _take(self, upload: _Upload, length: int, body: BinaryIO,
              checksum: Checksum | None) -> int:
        """Send the chunk on to the bucket as it arrives; once it is whole (and its
        digest, if any, matches), count it in the row. Returns the offset now held."""
        hasher = CHECKSUM_ALGORITHMS[checksum.algorithm]() if checksum else None
        start = upload.offset
        upload.begin_chunk()
        try:
            while piece := body.read(CHUNK_SIZE):
                if upload.position - start + len(piece) > self.max_chunk_bytes:
                    raise UploadTooLarge(f"a chunk may be at most {self.max_chunk_bytes} bytes")
                if upload.position + len(piece) > length:
                    raise UploadError(f"the chunk runs past the Upload-Length of {length} bytes")
                if hasher is not None:
                    hasher.update(piece)
                upload.add(piece)
            if hasher is not None and hasher.digest() != checksum.digest:
                raise ChecksumMismatch(
                    f"the chunk's {checksum.algorithm} does not match Upload-Checksum; it was "
                    f"discarded, send it again from byte {start}", start)
        except UploadError:
            raise  # nothing of a refused chunk is counted
        except BaseException:
            # A cut connection: without a checksum the bytes that arrived count (the whole
            # file's md5 checks them in the end); with one, none of them do.
            if hasher is None and upload.position > start:
                with contextlib.suppress(Exception):
                    upload.hold()
            raise
        upload.hold()
        return upload.position

    def _complete(self, upload: _Upload, length: int, user: str) -> UploadState:
        actual = upload.md5.hexdigest()
        file_id, md5 = upload.file_id, upload.expected_md5
        if actual != md5:
            upload.discard()
            raise whole_file_mismatch(self.receiver, self.activity, file_id, md5, actual, user)
        try:
            if self.receiver.receive_complete_pending(file_id, md5, upload.pending(), user):
                log.info("stored %d bytes for file %s from %s (resumable)", length,
                         file_id.hex, user)
        finally:
            upload.forget()
        self.activity.files_received("resumable", user, None, kept=[length])
        return UploadState(length, complete=True)

# A request that finds the upload held waits this long before answering upload_busy: a
# request that only asks (a wrong offset, an empty chunk) holds it for a moment, and the
# chunk that arrives meanwhile should not be turned away for that.
BUSY_WAIT_SECONDS = 1.0


@contextlib.contextmanager
def exclusive(database: Database, files: S3FileStore, file_id: uuid.UUID, md5: str) -> Iterator[None]:
    """Work on one upload, alone (UploadBusy if another request keeps it)."""
    deadline = time.monotonic() + BUSY_WAIT_SECONDS
    while True:
        with _held(database, files, file_id, md5) as held:
            if held:
                yield
                return
        if time.monotonic() >= deadline:
            raise UploadBusy("another request is writing to this upload; ask for the "
                             "offset again and resume from there")
        time.sleep(0.02)


@contextlib.contextmanager
def _held(database: Database, files: S3FileStore, file_id: uuid.UUID, md5: str) -> Iterator[bool]:
    """The upload's lock if it is free (yields whether it was): on PostgreSQL an advisory
    lock (any host), on SQLite (one host) a lock file."""
    if not database.is_sqlite:
        with AdvisoryLocks(database.engine, RESUMABLE_UPLOAD).try_locked([file_id]) as held:
            yield held
        return
    directory = files.staging.root / ".locks"
    directory.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(directory / f"upload-{file_id.hex}.{md5}", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(descriptor)


def sweep(database: Database, files: S3FileStore, older_than_seconds: float) -> int:
    """Abandon uploads no chunk reached for ``older_than_seconds``, and abort multipart
    uploads in the bucket that no upload counts on and that got no part for as long
    (a crash left them); how many in all."""
    cutoff = store.now_ms() - int(older_than_seconds * 1000)
    with database.read() as session:
        stale = session.execute(select(ResumableUploadRow.file_id, ResumableUploadRow.md5)
                                .where(ResumableUploadRow.updated_at < cutoff)).all()
    removed = 0
    for file_id, md5 in stale:
        try:
            with exclusive(database, files, file_id, md5):
                with database.read() as session:
                    row = session.get(ResumableUploadRow, (file_id, md5))
                    if row is None or row.updated_at >= cutoff:
                        continue  # a chunk came meanwhile
                    upload_id = row.upload_id
                _Upload(database, files, file_id, md5, 0, upload_id=upload_id).discard()
                removed += 1
        except UploadBusy:
            continue
    with database.read() as session:
        live = set(session.scalars(select(ResumableUploadRow.upload_id)
                                   .where(ResumableUploadRow.upload_id.is_not(None))))
    return removed + files.remove_stale_uploads(older_than_seconds, keep=live)


class _Upload:
    """One upload's state while a request works on it, and how it reaches the bucket: an
    ``S3PendingFile`` (the multipart upload and its parts, ``counted`` of them in the row)
    and the bytes past its last part."""

    def __init__(self, database: Database, files: S3FileStore, file_id: uuid.UUID, md5: str,
                 length: int, offset: int = 0, upload_id: str | None = None,
                 parts: list | None = None, tail_size: int = 0, md5_state: bytes | None = None):
        self.database, self.files = database, files
        self.file_id, self.expected_md5, self.length = file_id, md5, length
        self.offset = self.position = offset
        self.bucket_file = S3PendingFile(files, StoredFile(file_id, md5, length),
                                         upload_id=upload_id, parts=list(parts or []))
        self.counted = len(self.bucket_file.parts)
        self.tail_size = tail_size
        self.md5 = ResumableMd5(md5_state)
        self._buffer = bytearray()

    def _tail_key(self, part_count: int) -> str:
        return f"{self.files.prefix}uploads/{self.file_id.hex}.{self.expected_md5}.tail-{part_count}"

    # A chunk ----------------------------------------------------------------------------

    def begin_chunk(self) -> None:
        """Start from the tail the row counts: its bytes go out with this chunk's."""
        self._buffer = bytearray()
        if self.tail_size:
            reply = self.files.client.get_object(
                Bucket=self.files.bucket, Key=self._tail_key(self.counted),
                Range=f"bytes=0-{self.tail_size - 1}")
            self._buffer += reply["Body"].read()
            if len(self._buffer) != self.tail_size:
                raise UploadError("this upload's held bytes are missing from the bucket; "
                                  "send it again from byte 0", 0)

    def add(self, piece: bytes) -> None:
        self.md5.update(piece)
        self.position += len(piece)
        self._buffer += piece
        part_size = self.files.part_size
        while len(self._buffer) >= part_size:
            self.files._send_part(self.bucket_file, bytes(self._buffer[:part_size]))
            del self._buffer[:part_size]

    def hold(self) -> None:
        """Count what this chunk sent: its parts, and the rest as the new tail. The last
        chunk's rest is kept too: should completing fail, an empty chunk at the end (or
        the next request) completes the upload from what is held."""
        parts = len(self.bucket_file.parts)
        old_tail = self._tail_key(self.counted) if self.tail_size else None
        if self._buffer:
            self.files.client.put_object(Bucket=self.files.bucket, Key=self._tail_key(parts),
                                         Body=bytes(self._buffer))
        self._write_row()
        self.counted, self.offset, self.tail_size = parts, self.position, len(self._buffer)
        if old_tail is not None and old_tail != self._tail_key(parts):
            with contextlib.suppress(Exception):  # a leftover costs only space until the end
                self.files.client.delete_object(Bucket=self.files.bucket, Key=old_tail)

    def _write_row(self) -> None:
        with self.database.write() as session:
            row = session.get(ResumableUploadRow, (self.file_id, self.expected_md5))
            if row is None:
                row = ResumableUploadRow(file_id=self.file_id, md5=self.expected_md5)
                session.add(row)
            row.length, row.offset = self.length, self.position
            row.upload_id = self.bucket_file.upload_id
            row.parts = json.dumps(self.bucket_file.parts)
            row.tail_size, row.md5_state = len(self._buffer), self.md5.state()
            row.updated_at = store.now_ms()

    # The end ----------------------------------------------------------------------------

    def pending(self) -> S3PendingFile:
        """The verified file, ready to publish: the multipart upload with the rest as its
        last part, or (a file under one part) its bytes."""
        if self.bucket_file.upload_id is None:
            self.bucket_file.data = bytes(self._buffer)
        elif self._buffer:
            self.files._send_part(self.bucket_file, bytes(self._buffer))
        self._buffer = bytearray()
        return self.bucket_file

    def forget(self) -> None:
        """The upload is over: its row and tail objects go (the multipart upload was
        completed or aborted by whoever took the pending file)."""
        with self.database.write() as session:
            row = session.get(ResumableUploadRow, (self.file_id, self.expected_md5))
            if row is not None:
                session.delete(row)
        prefix = f"{self.files.prefix}uploads/{self.file_id.hex}.{self.expected_md5}.tail-"
        with contextlib.suppress(Exception):
            listing = self.files.client.list_objects_v2(Bucket=self.files.bucket, Prefix=prefix)
            for entry in listing.get("Contents", ()):
                self.files.client.delete_object(Bucket=self.files.bucket, Key=entry["Key"])

    def discard(self) -> None:
        """Drop everything of this upload: its multipart upload, tails and row."""
        self.bucket_file.discard()
        self.forget()
