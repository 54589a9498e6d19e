"""Removing file data that nothing will ever use: uploads whose record never arrived."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from . import store
from .blobs import Blobs
from .db import Database
from .files import FileStore

log = logging.getLogger("meteorpi.maintenance")


@dataclass(frozen=True)
class SweepResult:
    orphaned_files: int = 0
    unindexed_files: int = 0
    partial_files: int = 0

    @property
    def total(self) -> int:
        return self.orphaned_files + self.unindexed_files + self.partial_files


def sweep_orphan_data(database: Database, files: FileStore, older_than_seconds: int,
                      upload_expiry_seconds: int, scan_disk: bool = False) -> SweepResult:
    """Remove bytes that waited longer than ``older_than_seconds`` for their file record,
    and unfinished uploads idle for longer than ``upload_expiry_seconds``.

    Rows are deleted (and committed) before their files, so a crash in between leaves
    files no row names, which is what ``scan_disk`` clears. The disk scan reads the whole
    store, so the server leaves it to ``meteorpi files gc``.
    """
    blobs = Blobs(database, files)
    removed = blobs.remove_orphans(store.now_ms() - older_than_seconds * 1000)
    if files.kind == "s3":
        from ..imports import shared_uploads  # the uploads' rows say which the bucket keeps

        partial = shared_uploads.sweep(database, files, upload_expiry_seconds)
    else:
        partial = files.remove_stale_uploads(upload_expiry_seconds)
    unindexed = blobs.remove_unindexed(time.time() - older_than_seconds) if scan_disk else 0
    result = SweepResult(removed, unindexed, partial)
    if result.total:
        log.info("removed %d orphaned, %d unindexed and %d partial files",
                 result.orphaned_files, result.unindexed_files, result.partial_files)
    return result


class PeriodicSweep:
    """Runs :func:`sweep_orphan_data` at most every ``interval_seconds`` in this process.

    Triggered by /import requests (entities, uploads, discovery), so a server that
    exporters talk to cleans up after itself without a scheduler; concurrent triggers in
    other threads skip rather than wait.
    """

    def __init__(self, database: Database, files: FileStore, config, interval_seconds: float = 600,
                 on_swept: Callable[[SweepResult], None] | None = None):
        self.database = database
        self.files = files
        self.config = config
        self.interval = interval_seconds
        self.on_swept = on_swept
        self._next_run = 0.0
        self._lock = threading.Lock()

    def maybe_run(self) -> None:
        """Sweep now if the last sweep in this process was ``interval_seconds`` ago or more."""
        now = time.monotonic()
        if now < self._next_run or not self._lock.acquire(blocking=False):
            return
        try:
            self._next_run = now + self.interval
            result = sweep_orphan_data(self.database, self.files, self.config.orphan_data_seconds,
                                       self.config.upload_expiry_seconds)
            if self.on_swept is not None:
                self.on_swept(result)
        except Exception:  # a failed sweep must not fail the request that triggered it
            log.exception("sweeping orphaned file data failed")
        finally:
            self._lock.release()
