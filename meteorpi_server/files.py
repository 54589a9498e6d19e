"""The file store: file contents on local disk, named by file id.

A file appears at its final path only complete and verified: bytes are streamed into a
file under ``.uploads/`` (same file system) while their md5 is computed, fsynced,
compared with the md5 the sender claimed, and only then renamed into place (and the
directories fsynced, so the rename itself survives a crash). A crash at any moment
leaves either no file or the whole verified file, plus at worst a stale file in
``.uploads/`` that :meth:`FileStore.remove_stale_uploads` clears. Resumable uploads
grow there too, one file per (file id, md5), until they are complete.
"""
from __future__ import annotations

import fcntl
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from meteorpi_model import MD5Stream

CHUNK_SIZE = 1 << 20
UPLOADS_DIR = ".uploads"


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


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class FileStore:
    """Files under ``root``, sharded by the first two hex digits of their id."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.uploads = self.root / UPLOADS_DIR

    def path_for(self, file_id: uuid.UUID) -> Path:
        name = file_id.hex
        return self.root / name[:2] / name

    def upload_path(self, file_id: uuid.UUID, md5: str) -> Path:
        """Where a resumable upload of these bytes grows until it is complete."""
        self.uploads.mkdir(parents=True, exist_ok=True)
        return self.uploads / f"{file_id.hex}.{md5}"

    def adopt(self, file_id: uuid.UUID, path: Path, sync_directories: bool = True) -> Path:
        """Move a complete, verified file from ``.uploads/`` to its final path, durably.

        With ``sync_directories=False`` the rename is not yet durable: the caller moves a
        group of files and then calls :meth:`sync_directories` once for all of them, before
        it records or acknowledges any. Returns the final path.
        """
        final = self.path_for(file_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(path, final)
        if sync_directories:
            self.sync_directories([final.parent])
        return final

    def sync_directories(self, directories) -> None:
        """Make renames into ``directories`` (and out of ``.uploads/``) survive a crash."""
        for directory in set(directories) | {self.uploads}:
            _fsync_directory(directory)

    def exists(self, file_id: uuid.UUID) -> bool:
        return self.path_for(file_id).is_file()

    def open(self, file_id: uuid.UUID) -> BinaryIO:
        return open(self.path_for(file_id), "rb")

    def write(self, file_id: uuid.UUID, source: BinaryIO, expected_md5: str,
              max_bytes: int | None = None, sync_directories: bool = True) -> StoredFile:
        """Stream ``source`` to disk and make it visible only if its md5 is ``expected_md5``.

        ``source`` is read in 1 MiB pieces until it returns b"". Raises Md5Mismatch or
        TooLarge (the bytes are discarded) or whatever reading ``source`` raises.
        ``sync_directories`` is as for :meth:`adopt`.
        """
        self.uploads.mkdir(parents=True, exist_ok=True)
        temporary = self.uploads / f"{file_id.hex}.{secrets.token_hex(4)}.part"
        hasher = MD5Stream()
        try:
            with open(temporary, "xb") as out:
                # Held until the file is in place: remove_stale_uploads skips locked files,
                # so a slow sender's upload is never deleted from under it.
                fcntl.flock(out.fileno(), fcntl.LOCK_EX)
                while chunk := source.read(CHUNK_SIZE):
                    hasher.update(chunk)
                    if max_bytes is not None and hasher.bytes_seen > max_bytes:
                        raise TooLarge(max_bytes)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
                actual = hasher.hexdigest()
                if actual != expected_md5:
                    raise Md5Mismatch(file_id, expected_md5, actual, hasher.bytes_seen)
                self.adopt(file_id, temporary, sync_directories)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return StoredFile(file_id, actual, hasher.bytes_seen)

    def remove(self, file_id: uuid.UUID) -> bool:
        try:
            self.path_for(file_id).unlink()
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
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
