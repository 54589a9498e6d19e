"""Verified file bytes and the index rows that say they are there, kept in agreement.

A file's bytes live at one path (``FileStore.path_for``) and its ``stored_blob`` row says
which md5 they have; a record is stored only if that row matches it
(``store.claim_blobs``). Bytes waiting for their record may be replaced (an exporter that
sent the wrong ones first), and unclaimed ones are swept away, so every writer and
remover of bytes goes through here, and each does its work as one step:

1. under the placement lock of those ids, so one placement or removal of an id runs at a
   time, in any thread or process: the file store's lock (``FileStore.locked``) on
   SQLite, a single host; an advisory lock in the database (``db_locks``) on PostgreSQL,
   which any number of hosts sharing it and one bucket hold in common;
2. a transaction locks the rows, keeps the bytes a stored record relies on (or the very
   same bytes), and deletes the rows of the bytes about to be replaced, so from then on
   no record can claim them;
3. the new bytes are renamed into place, durably;
4. a second transaction records their rows.

A crash between 2 and 4 leaves bytes that no row names: no record can be stored against
them, and ``meteorpi files gc`` removes them. So a row never names bytes that are not at
its path, and bytes a stored record relies on are never replaced or removed.
"""
from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import BinaryIO

from . import store
from .db import Database
from .db_locks import PLACEMENT, AdvisoryLocks
from .files import FileGroup, FileStore, StoredFile
from .s3 import S3FileStore

log = logging.getLogger("meteorpi.blobs")


class Blobs:
    """Places and removes the bytes of ``files`` together with their rows in ``database``."""

    def __init__(self, database: Database, files: FileStore | S3FileStore):
        self.database = database
        self.files = files
        self.locked = (files.locked if database.is_sqlite
                       else AdvisoryLocks(database.engine, PLACEMENT).locked)

    def write(self, file_id: uuid.UUID, source: BinaryIO, md5: str,
              max_bytes: int | None = None) -> StoredFile | None:
        """Stream ``source`` to disk, verify it against ``md5`` and store it.

        Returns None if the bytes were not needed (the same bytes, or bytes a stored record
        relies on, are held). Raises as ``FileStore.receive`` does; nothing is stored then.
        """
        pending = self.files.receive(file_id, source, md5, max_bytes)
        try:
            with self.locked([file_id]):
                if self._release({file_id: md5}):
                    return None
                self.files.install(pending)
                self._record([pending.stored])
        finally:
            pending.discard()
        return pending.stored

    def adopt(self, file_id: uuid.UUID, md5: str, path: Path, size: int) -> bool:
        """Store a complete, verified file from ``.uploads/`` (moved, not copied); False
        if it was not needed (the caller then removes it)."""
        with self.locked([file_id]):
            if self._release({file_id: md5}):
                return False
            self.files.adopt(file_id, path, md5)
            self._record([StoredFile(file_id, md5, size)])
        return True

    def publish(self, pending) -> bool:
        """Store verified bytes that wait unpublished (a bucket's ``S3PendingFile``, say a
        finished resumable upload); False if they were not needed (they are dropped)."""
        try:
            with self.locked([pending.stored.file_id]):
                if self._release({pending.stored.file_id: pending.stored.md5}):
                    return False
                self.files.install(pending)
                self._record([pending.stored])
        finally:
            pending.discard()
        return True

    def commit_group(self, group: FileGroup) -> list[StoredFile]:
        """Store a group's verified files, all but those not needed; return the stored ones."""
        written = group.written()
        if not written:
            return []
        group.make_durable()  # before the lock: other writers wait only for the renames
        with self.locked(written):
            stored = group.commit(exclude=self._release(written))
            self._record(stored)
        return stored

    def remove_orphans(self, older_than_ms: int) -> int:
        """Remove the bytes no record claimed since ``older_than_ms``; return how many."""
        with self.database.read() as session:
            candidates = store.orphan_blob_ids(session, older_than_ms)
        removed = 0
        for start in range(0, len(candidates), _SWEEP_BATCH):
            batch = candidates[start:start + _SWEEP_BATCH]
            with self.locked(batch):
                # Looked at again under the lock: a record may have claimed some since.
                with self.database.write() as session:
                    orphans = store.delete_orphan_blobs(session, batch, older_than_ms)
                removed += sum(self.files.remove(file_id) for file_id in orphans)
        return removed

    def remove_unindexed(self, older_than: float) -> int:
        """Remove files at final paths that no row names, last changed before ``older_than``
        (a time.time()): what a crash between renaming and recording leaves."""
        old = [file_id for file_id, mtime in self.files.iter_file_ids() if mtime < older_than]
        removed = 0
        for start in range(0, len(old), _SWEEP_BATCH):
            batch = old[start:start + _SWEEP_BATCH]
            with self.locked(batch):
                with self.database.read() as session:
                    known = store.known_blob_ids(session, batch)
                removed += sum(self.files.remove(file_id, unless_newer_than=older_than)
                               for file_id in batch if file_id not in known)
        return removed

    def _release(self, files: dict[uuid.UUID, str]) -> set[uuid.UUID]:
        with self.database.write() as session:
            return store.release_blobs(session, files)

    def _record(self, stored: list[StoredFile]) -> None:
        if stored:
            with self.database.write() as session:
                store.record_blobs(session, [(f.file_id, f.md5, f.size) for f in stored])


# Ids looked at per lock and transaction by the sweeps: enough to take every stripe
# once, few enough that placements never wait long.
_SWEEP_BATCH = 500
