"""The file store: file contents on local disk, named by file id.

A file appears at its final path only complete and verified: bytes are streamed into a
file under ``.uploads/`` (same file system) while their md5 is computed, fsynced,
compared with the md5 the sender claimed, and only then renamed into place (and the
directories fsynced, so the rename itself survives a crash). A crash at any moment
leaves either no file or the whole verified file (which, if no index row names it yet,
``meteorpi files gc`` removes: see ``blobs.py``), plus at worst a stale file in
``.uploads/`` that :meth:`FileStore.remove_stale_uploads` clears. Resumable uploads
grow there too, one file per (file id, md5), until they are complete.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import secrets
import stat
import struct
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Collection, Iterator

from meteorpi_model import MD5Stream

CHUNK_SIZE = 1 << 20
UPLOADS_DIR = ".uploads"
LOCKS_DIR = ".locks"
PLACEMENT_LOCK = "placement"

log = logging.getLogger("meteorpi.files")


def _load_syncfs():
    """Linux's syncfs(2), or None where the C library has none."""
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    return function


_SYNCFS = _load_syncfs()

# Open file description locks (Linux 3.15+): byte-range locks owned by an open file, not
# by a process, so they exclude threads as well as processes.
_OFD_SETLKW = getattr(fcntl, "F_OFD_SETLKW", None)
# struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for these locks), padded to 8.
_FLOCK = struct.Struct("@hhqqi0q")


def _lock_offset(file_id: uuid.UUID) -> int:
    """The byte of the placement lock file that stands for ``file_id`` (60 bits of its id:
    two ids sharing one only wait for each other)."""
    return int(file_id.hex[:15], 16)


def _lock_bytes(descriptor: int, offsets: list[int]) -> bool:
    """Lock one byte at each of ``offsets`` (sorted), waiting as long as it takes; False
    if the kernel refuses open file description locks (the caller then falls back)."""
    for offset in offsets:
        request = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
        try:
            fcntl.fcntl(descriptor, _OFD_SETLKW, request)
        except OSError as error:
            if error.errno == errno.EINVAL and offset == offsets[0]:
                return False
            raise
    return True


class LocalPlacementLocks:
    """Placement locks of one host: a byte per file id of a lock file in ``directory``.

    Whoever puts bytes at a final path or removes them holds the lock of their ids, so
    the check of what is stored, the placement and the index row it goes with happen as
    one step.

    Each id has its own lock: a byte of one lock file, locked with Linux's open file
    description locks (one descriptor per holder, so threads of a process exclude each
    other too). Two bundles of different files never wait for each other; with a lock
    per shard (the fallback where those locks are missing) two bundles of a few hundred
    files shared nearly every shard and ran one after the other. Locks are taken in
    order, so two holders never wait for each other in a cycle.
    """

    def __init__(self, directory: Path):
        self.directory = directory

    @contextlib.contextmanager
    def locked(self, file_ids: Collection[uuid.UUID]) -> Iterator[None]:
        directory = self.directory
        directory.mkdir(parents=True, exist_ok=True)
        if _OFD_SETLKW is not None:
            descriptor = os.open(directory / PLACEMENT_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if _lock_bytes(descriptor, sorted({_lock_offset(file_id) for file_id in file_ids})):
                    yield
                    return
            finally:
                os.close(descriptor)  # releases every lock taken through it
        with self._stripes_locked(file_ids):
            yield

    @contextlib.contextmanager
    def _stripes_locked(self, file_ids: Collection[uuid.UUID]) -> Iterator[None]:
        """The fallback: a lock file per shard (256), each held with flock."""
        stripes = sorted({file_id.hex[:2] for file_id in file_ids})
        with contextlib.ExitStack() as stack:
            for stripe in stripes:
                descriptor = os.open(self.directory / stripe, os.O_RDWR | os.O_CREAT, 0o644)
                stack.callback(os.close, descriptor)
                fcntl.flock(descriptor, fcntl.LOCK_EX)  # released when closed
            yield


class FileStoreError(Exception):
    """Base class for file store failures."""


class Md5Mismatch(FileStoreError):
    def __init__(self, file_id: uuid.UUID, expected: str, actual: str, size: int):
        super().__init__(
            f"bytes of file {file_id.hex} have md5 {actual}, expected {expected} ({size} bytes)")
        self.expected, self.actual, self.size = expected, actual, size


class TooLarge(FileStoreError):
    def __init__(self, limit: int):
        super().__init__(f"file is larger than the limit of {limit} bytes")
        self.limit = limit


class IncompleteUpload(FileStoreError):
    """The sender stopped before the end of the file (a dropped connection)."""


@dataclass(frozen=True)
class StoredFile:
    file_id: uuid.UUID
    md5: str
    size: int


@dataclass
class PendingFile:
    """Verified bytes under ``.uploads/``, not yet at their final path.

    Its descriptor holds an exclusive lock, so the stale-upload sweep leaves it alone
    however long the caller takes; :meth:`FileStore.install` or :meth:`discard` ends it.
    """

    stored: StoredFile
    path: Path
    descriptor: int | None

    def discard(self) -> None:
        """Remove the bytes unless they were installed; safe to call more than once."""
        if self.descriptor is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.descriptor)
            self.descriptor = None


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _receive(file_id: uuid.UUID, source: BinaryIO, expected_md5: str, max_bytes: int | None,
             out: BinaryIO) -> StoredFile:
    """Copy ``source`` to ``out`` in 1 MiB pieces, checking its size and md5 as it goes."""
    hasher = MD5Stream()
    while chunk := source.read(CHUNK_SIZE):
        hasher.update(chunk)
        if max_bytes is not None and hasher.bytes_seen > max_bytes:
            raise TooLarge(max_bytes)
        out.write(chunk)
    actual = hasher.hexdigest()
    if actual != expected_md5:
        raise Md5Mismatch(file_id, expected_md5, actual, hasher.bytes_seen)
    return StoredFile(file_id, actual, hasher.bytes_seen)


class FileStore:
    """Files under ``root``, sharded by the first two hex digits of their id."""

    kind = "local"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.uploads = self.root / UPLOADS_DIR
        self._locks = LocalPlacementLocks(self.root / LOCKS_DIR)

    def describe(self) -> str:
        return str(self.root)

    def check(self, quick: bool = True) -> None:
        """Nothing to check at start-up: the directory is made by the first upload, and
        GET /health/ready reports whether it is writable."""

    def path_for(self, file_id: uuid.UUID) -> Path:
        name = file_id.hex
        return self.root / name[:2] / name

    def upload_path(self, file_id: uuid.UUID, md5: str) -> Path:
        """Where a resumable upload of these bytes grows until it is complete."""
        self.uploads.mkdir(parents=True, exist_ok=True)
        return self.uploads / f"{file_id.hex}.{md5}"

    def adopt(self, file_id: uuid.UUID, path: Path, md5: str | None = None) -> None:
        """Move a complete file from ``.uploads/``, already verified (to have ``md5``), to
        its final path, durably."""
        final = self.path_for(file_id)
        new_shard = self._make_shard(final.parent)
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(path, final)
        self.sync_directories([final.parent], new_shard)

    def _make_shard(self, shard: Path) -> bool:
        """Create ``shard`` if need be; True if it is new (the root must then be synced
        too, or a crash could lose the directory and every file renamed into it)."""
        if shard.is_dir():
            return False
        shard.mkdir(parents=True, exist_ok=True)
        return True

    def sync_directories(self, directories, new_shard: bool = False) -> None:
        """Make renames into ``directories`` (and out of ``.uploads/``) survive a crash."""
        extra = {self.uploads, self.root} if new_shard else {self.uploads}
        for directory in set(directories) | extra:
            _fsync_directory(directory)

    def locked(self, file_ids: Collection[uuid.UUID]):
        """Hold the placement lock of ``file_ids`` on this host (see :class:`LocalPlacementLocks`)."""
        return self._locks.locked(file_ids)

    def exists(self, file_id: uuid.UUID) -> bool:
        return self.path_for(file_id).is_file()

    def stat(self, file_id: uuid.UUID) -> tuple[int, float] | None:
        """The file's size and modification time (a time.time()), or None if missing."""
        try:
            found = os.stat(self.path_for(file_id))
        except FileNotFoundError:
            return None
        return (found.st_size, found.st_mtime) if stat.S_ISREG(found.st_mode) else None

    def group(self) -> FileGroup:
        """A :class:`FileGroup` of this store, for many small files made durable at once."""
        return FileGroup(self)

    def open(self, file_id: uuid.UUID, size: int | None = None) -> BinaryIO:
        return open(self.path_for(file_id), "rb")

    def receive(self, file_id: uuid.UUID, source: BinaryIO, expected_md5: str,
                max_bytes: int | None = None) -> PendingFile:
        """Stream ``source`` under ``.uploads/`` and check that its md5 is ``expected_md5``.

        ``source`` is read in 1 MiB pieces until it returns b"". Raises Md5Mismatch or
        TooLarge (the bytes are discarded) or whatever reading ``source`` raises. The
        bytes reach their final path only through :meth:`install`.
        """
        self.uploads.mkdir(parents=True, exist_ok=True)
        temporary = self._temporary_path(file_id)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        pending = PendingFile(StoredFile(file_id, expected_md5, 0), temporary, descriptor)
        try:
            # Held until the file is installed or discarded: remove_stale_uploads skips
            # locked files, so a slow sender's upload is never deleted from under it.
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            with os.fdopen(os.dup(descriptor), "wb") as out:
                pending.stored = _receive(file_id, source, expected_md5, max_bytes, out)
        except BaseException:
            pending.discard()
            raise
        return pending

    def install(self, pending: PendingFile) -> None:
        """Put received bytes at their final path, durably (see :meth:`adopt`)."""
        try:
            self.adopt(pending.stored.file_id, pending.path)
        finally:
            pending.discard()

    def write(self, file_id: uuid.UUID, source: BinaryIO, expected_md5: str,
              max_bytes: int | None = None) -> StoredFile:
        """:meth:`receive` and :meth:`install` at once, for a caller that holds no index
        of the store (the index's own writers go through ``blobs.Blobs``)."""
        pending = self.receive(file_id, source, expected_md5, max_bytes)
        self.install(pending)
        return pending.stored

    def _temporary_path(self, file_id: uuid.UUID) -> Path:
        """A new name under ``.uploads/`` for bytes of ``file_id`` being received."""
        return self.uploads / f"{file_id.hex}.{secrets.token_hex(4)}.part"

    def remove(self, file_id: uuid.UUID, unless_newer_than: float | None = None) -> bool:
        """Delete a file at its final path (only if last changed before the time.time()
        ``unless_newer_than``, when given); True if one was deleted."""
        path = self.path_for(file_id)
        try:
            if unless_newer_than is not None and path.stat().st_mtime >= unless_newer_than:
                return False
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def _shards(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for shard in self.root.iterdir():
            if shard.is_dir() and len(shard.name) == 2:
                yield shard

    def iter_file_ids(self) -> Iterator[tuple[uuid.UUID, float]]:
        """Every complete file in the store, with its modification time."""
        for shard in self._shards():
            for entry in os.scandir(shard):
                if entry.name.startswith(".") or not entry.is_file():
                    continue
                try:
                    yield uuid.UUID(hex=entry.name), entry.stat().st_mtime
                except (ValueError, FileNotFoundError):
                    continue

    def remove_stale_uploads(self, older_than_seconds: float) -> int:
        """Delete unfinished uploads untouched for ``older_than_seconds``.

        An upload being written holds an exclusive lock on its file, so one that is in
        progress is never removed, however slow it is.
        """
        if not self.uploads.is_dir():
            return 0
        cutoff = time.time() - older_than_seconds
        removed = 0
        for entry in os.scandir(self.uploads):
            try:
                if entry.stat().st_mtime >= cutoff:
                    continue
                with open(entry.path, "rb") as handle:
                    try:
                        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue
                    # Between the look and the lock, a chunk may have been appended (and
                    # acknowledged), or the name may now be another file: look again.
                    mine = os.fstat(handle.fileno())
                    if mine.st_mtime >= cutoff or os.stat(entry.path).st_ino != mine.st_ino:
                        continue
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


class FileGroup:
    """Files written one after another and made durable and visible together.

    A night's images are tens of KB each: an fsync per file and per directory would cost
    more than writing them. A group verifies each file's md5 as it arrives and keeps it
    under ``.uploads/``; :meth:`commit` (or :meth:`make_durable` before it) makes them all
    durable with one ``syncfs`` of the store's file system; :meth:`commit` then renames
    the verified files into place and makes the renames durable with a second one. Where
    syncfs is missing it falls back to an fsync per file and per directory. Until
    :meth:`commit` returns, no file of the group is at its final path unless complete and
    verified; a crash leaves at worst files under ``.uploads/`` (removed by the sweep) or
    verified files whose blob rows were never written (removed by ``meteorpi files gc``).
    """

    def __init__(self, store: FileStore):
        self.store = store
        self._written: list[tuple[StoredFile, Path]] = []
        self._durable: set[uuid.UUID] = set()
        store.uploads.mkdir(parents=True, exist_ok=True)

    def write(self, file_id: uuid.UUID, source: BinaryIO, expected_md5: str,
              max_bytes: int | None = None) -> StoredFile:
        """Write ``source`` under ``.uploads/`` and check its md5 (Md5Mismatch, TooLarge:
        the bytes are discarded); it is stored by :meth:`commit`."""
        temporary = self.store._temporary_path(file_id)
        try:
            with open(temporary, "xb") as out:
                stored = _receive(file_id, source, expected_md5, max_bytes, out)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        self._written.append((stored, temporary))
        return stored

    def written(self) -> dict[uuid.UUID, str]:
        """The files verified so far and not yet committed: id: md5."""
        return {stored.file_id: stored.md5 for stored, _ in self._written}

    def make_durable(self) -> None:
        """Make the verified files' bytes durable where they are, under ``.uploads/``.

        Nothing there is visible, so this needs no placement lock: done before
        :meth:`commit`, it leaves the lock holder only the renames and their sync.
        """
        pending = [(stored, temporary) for stored, temporary in self._written
                   if stored.file_id not in self._durable]
        self._sync_bytes(pending)
        self._durable.update(stored.file_id for stored, _ in pending)

    def _sync_bytes(self, files: list[tuple[StoredFile, Path]]) -> None:
        if files and (_SYNCFS is None or not self._syncfs()):
            for _, temporary in files:
                with open(temporary, "rb") as handle:
                    os.fsync(handle.fileno())

    def commit(self, exclude: Collection[uuid.UUID] = ()) -> list[StoredFile]:
        """Make every verified file durable and move it into place; return them.

        Files in ``exclude`` are dropped instead (the caller found their bytes held).
        """
        written, self._written = self._written, []
        for stored, temporary in written:
            if stored.file_id in exclude:
                temporary.unlink(missing_ok=True)
        written = [(stored, temporary) for stored, temporary in written
                   if stored.file_id not in exclude]
        durable, self._durable = self._durable, set()
        if not written:
            return []
        self._sync_bytes([(stored, temporary) for stored, temporary in written
                          if stored.file_id not in durable])
        directories, new_shard = set(), False
        for stored, temporary in written:
            final = self.store.path_for(stored.file_id)
            if final.parent not in directories:
                new_shard = self.store._make_shard(final.parent) or new_shard
                directories.add(final.parent)
            os.replace(temporary, final)
        if _SYNCFS is None or not self._syncfs():
            self.store.sync_directories(directories, new_shard)
        return [stored for stored, _ in written]

    def _syncfs(self) -> bool:
        descriptor = os.open(self.store.uploads, os.O_RDONLY)
        try:
            if _SYNCFS(descriptor) == 0:
                return True
        finally:
            os.close(descriptor)
        log.warning("syncfs failed (%s); falling back to fsync", os.strerror(ctypes.get_errno()))
        return False
