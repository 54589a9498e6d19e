"""Moving a directory file store into a bucket while the server goes on using it.

``meteorpi files migrate --to s3://BUCKET/PREFIX`` copies the bytes of every file the
index names (a ``stored_blob`` row) from the directory into the bucket:

- each copy is verified: the bytes are hashed as they stream (``S3FileStore.receive``)
  and published only if they have the row's md5. A file on disk whose bytes no longer
  match its row is reported and left out of the bucket;
- it is resumable: an object already at its key with the row's md5 in its metadata
  (``x-amz-meta-md5``) is left alone, so a second run copies only what is missing or
  different, whether the first was interrupted or files arrived since;
- it changes nothing the server uses: not the configuration, not the index, not the
  directory. After the switch to the bucket the server writes there itself, so each
  object is published under the placement lock of its id, with its row read again
  under that lock: bytes the server replaced meanwhile are never overwritten by the
  older ones from the directory.

Files on disk that no row names (what a crash between renaming and recording leaves)
are not copied, only counted.
"""
from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

from sqlalchemy import func, select

from . import store
from .backup import Progress, _format_bytes
from .blobs import Blobs
from .db import Database
from .files import LOCKS_DIR, UPLOADS_DIR, FileStore, FileStoreError, Md5Mismatch
from .orm import StoredBlobRow
from .s3 import S3FileStore, _error_code, is_s3_url


DEFAULT_JOBS = 4
# Rows read, and keys listed in the bucket, per step: bounded memory for any archive.
_BATCH = 1000
# A row whose md5 changes under us this many times in one run is left to the next run.
_ATTEMPTS = 3


class MigrateError(FileStoreError):
    """The migration cannot start; the message is one line saying why."""


@dataclass(frozen=True)
class Corrupt:
    """A file whose bytes on disk no longer have the md5 its row gives."""

    file_id: uuid.UUID
    expected: str
    actual: str


@dataclass
class MigrateResult:
    target: str
    copied: int = 0
    copied_bytes: int = 0
    present: int = 0
    unindexed: int = 0
    # Rows deleted while the run went on (swept orphans): nothing left to copy.
    gone: int = 0
    corrupt: list[Corrupt] = field(default_factory=list)
    missing: list[uuid.UUID] = field(default_factory=list)
    errors: list[tuple[uuid.UUID, str]] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return len(self.corrupt) + len(self.missing) + len(self.errors)

    @property
    def problems(self) -> list[str]:
        """One line per file that could not be copied."""
        return ([f"file {bad.file_id.hex}: bytes on disk have md5 {bad.actual}, the index says "
                 f"{bad.expected} (changed after they were stored); not copied"
                 for bad in self.corrupt]
                + [f"file {file_id.hex}: missing from the directory and from the bucket"
                   for file_id in self.missing]
                + [f"file {file_id.hex}: {reason}" for file_id, reason in self.errors])

    def summary(self) -> str:
        line = (f"copied {self.copied} files ({_format_bytes(self.copied_bytes)}) to "
                f"{self.target}, {self.present} already there, {self.unindexed} unindexed "
                f"skipped, {self.failed} failed")
        if self.gone:
            line += f", {self.gone} removed from the index meanwhile"
        line += f" in {self.seconds:.1f} s"
        if self.interrupted:
            line += "; interrupted: run the same command again to copy the rest"
        return line


def open_source(directory: str | Path) -> FileStore:
    """The directory store at ``directory``; MigrateError unless it looks like one."""
    text = str(directory)
    if is_s3_url(text):
        raise MigrateError(f"--from {text} is a bucket: migrate copies from a directory file "
                           "store (the file_store the server used before the bucket)")
    root = Path(directory)
    if not root.is_dir():
        raise MigrateError(f"--from {root}: no such directory (give the directory file store "
                           "the server used, its old file_store)")
    entries = [entry.name for entry in root.iterdir()]
    looks_like_store = any(name in (UPLOADS_DIR, LOCKS_DIR) or _is_shard(root / name)
                           for name in entries)
    if entries and not looks_like_store:
        raise MigrateError(f"--from {root} is not a directory file store: it has no shard "
                           "directories (such as ab/) of file contents; give the directory "
                           "that file_store named")
    return FileStore(root)


def _is_shard(path: Path) -> bool:
    name = path.name
    return len(name) == 2 and all(c in "0123456789abcdef" for c in name) and path.is_dir()


def migrate(database: Database, source: FileStore, target: S3FileStore,
            jobs: int = DEFAULT_JOBS, progress: Progress | None = None) -> MigrateResult:
    """Copy the bytes of every file ``database`` indexes from ``source`` into ``target``,
    ``jobs`` at a time (see the module's docstring). Ctrl-C (KeyboardInterrupt) stops it
    early: the result says so, and what was published stays."""
    return _Migration(database, source, target, jobs, progress or Progress()).run()


class _Stopped(Exception):
    """The run is being stopped; an upload in progress gives up."""


class _StoppableReader:
    """A file that raises _Stopped on its next read once ``stop`` is set, so Ctrl-C
    abandons large uploads (their multipart uploads aborted) instead of waiting for them."""

    def __init__(self, raw: BinaryIO, stop: threading.Event):
        self.raw, self.stop = raw, stop

    def read(self, size: int = -1) -> bytes:
        if self.stop.is_set():
            raise _Stopped()
        return self.raw.read(size)


@dataclass(frozen=True)
class _Outcome:
    kind: str  # copied, present, gone, corrupt, missing, error
    size: int = 0
    detail: object = None


class _Superseded(Exception):
    """The row changed (or went) while its bytes were on their way."""


class _Migration:
    def __init__(self, database: Database, source: FileStore, target: S3FileStore, jobs: int,
                 progress: Progress):
        self.database, self.source, self.target = database, source, target
        self.jobs = max(1, jobs)
        self.progress = progress
        self.locked = Blobs(database, target).locked
        self.stop = threading.Event()
        self.result = MigrateResult(target.describe())

    def run(self) -> MigrateResult:
        started = time.monotonic()
        with self.database.read() as session:
            count, total = session.execute(
                select(func.count(), func.coalesce(func.sum(StoredBlobRow.size), 0))).one()
        self.result.unindexed = self._count_unindexed()
        self.progress.start("migrate", count, int(total))
        pool = ThreadPoolExecutor(self.jobs, thread_name_prefix="migrate")
        running: set[Future] = set()
        try:
            try:
                for batch in self._batches():
                    listed = self._listed(batch)
                    for file_id, md5, size in batch:
                        if len(running) >= self.jobs * 4:
                            done, running = wait(running, return_when=FIRST_COMPLETED)
                            self._collect(done)
                        look = listed is None or file_id in listed
                        running.add(pool.submit(self._one, file_id, md5, size, look))
                done, running = wait(running)
                self._collect(done)
            except BaseException as error:
                self.stop.set()  # uploads under way give up rather than hold the exit up
                if not isinstance(error, KeyboardInterrupt):
                    raise
                self.result.interrupted = True
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            if self.result.interrupted:
                # Uploads that ended while the others stopped count: the summary is right.
                self._collect([future for future in running
                               if not future.cancelled() and future.exception() is None])
        finally:
            self.progress.close()
        self.result.seconds = time.monotonic() - started
        return self.result

    def _count_unindexed(self) -> int:
        unindexed = 0
        batch: list[uuid.UUID] = []
        for file_id, _ in self.source.iter_file_ids():
            batch.append(file_id)
            if len(batch) >= _BATCH:
                unindexed += self._unknown(batch)
                batch = []
        return unindexed + self._unknown(batch)

    def _unknown(self, file_ids: list[uuid.UUID]) -> int:
        if not file_ids:
            return 0
        with self.database.read() as session:
            return len(file_ids) - len(store.known_blob_ids(session, file_ids))

    def _batches(self) -> Iterator[list[tuple[uuid.UUID, str, int]]]:
        """Every row, in id order, a batch at a time (keyset pages: no long transaction)."""
        after = None
        while True:
            query = select(StoredBlobRow.file_id, StoredBlobRow.md5, StoredBlobRow.size)
            if after is not None:
                query = query.where(StoredBlobRow.file_id > after)
            with self.database.read() as session:
                rows = session.execute(query.order_by(StoredBlobRow.file_id).limit(_BATCH)).all()
            if not rows:
                return
            yield [tuple(row) for row in rows]
            after = rows[-1][0]

    def _listed(self, batch) -> set[uuid.UUID] | None:
        """Which of the batch's ids have an object: one listing of their range of keys,
        so that only those need a HEAD for their md5 (a first run needs none). None if
        the listing failed: then each is looked at on its own (and fails on its own)."""
        try:
            return self._list_range(batch)
        except Exception:
            return None

    def _list_range(self, batch) -> set[uuid.UUID]:
        wanted = {file_id for file_id, _, _ in batch}
        hexes = sorted(file_id.hex for file_id in wanted)
        last = self.target.key_for(uuid.UUID(hex=hexes[-1]))
        # Keys sort by id hex: everything from the smallest id's key up to the largest's.
        options = {"Bucket": self.target.bucket,
                   "StartAfter": self.target.key_for(uuid.UUID(hex=hexes[0]))[:-1]}
        found = set()
        while True:
            reply = self.target.client.list_objects_v2(**options)
            for entry in reply.get("Contents", ()):
                if entry["Key"] > last:
                    return found
                file_id = self.target._file_id_of(entry["Key"])
                if file_id in wanted:
                    found.add(file_id)
            if not reply.get("IsTruncated"):
                return found
            options["ContinuationToken"] = reply["NextContinuationToken"]

    def _collect(self, done) -> None:
        raised = None
        for future in done:
            if future.exception() is not None:
                if not isinstance(future.exception(), _Stopped):  # stopped: because of this
                    raised = future.exception()
                continue
            file_id, size, outcome = future.result()
            result = self.result
            if outcome.kind == "copied":
                result.copied += 1
                result.copied_bytes += outcome.size
            elif outcome.kind == "present":
                result.present += 1
            elif outcome.kind == "gone":
                result.gone += 1
            elif outcome.kind == "corrupt":
                result.corrupt.append(outcome.detail)
            elif outcome.kind == "missing":
                result.missing.append(file_id)
            else:
                result.errors.append((file_id, outcome.detail))
            self.progress.advance(size)
        if raised is not None:  # after counting the others, so the summary stays right
            raise raised

    # In the worker threads ------------------------------------------------------------

    def _one(self, file_id: uuid.UUID, md5: str, size: int, listed: bool):
        if self.stop.is_set():
            raise _Stopped()
        try:
            return file_id, size, self._migrate(file_id, md5, listed)
        except _Stopped:
            raise
        except Exception as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            return file_id, size, _Outcome("error", detail=reason[:300])
        except BaseException:
            self.stop.set()  # the others stop too, before the main thread hears of it
            raise

    def _migrate(self, file_id: uuid.UUID, md5: str, look: bool) -> _Outcome:
        for _ in range(_ATTEMPTS):
            if look and self._bucket_md5(file_id) == md5:
                return _Outcome("present")
            look = True  # a retry looks in the bucket: the server may have put it there
            try:
                return _Outcome("copied", self._copy(file_id, md5))
            except FileNotFoundError:
                problem = _Outcome("missing")
            except Md5Mismatch as mismatch:
                problem = _Outcome("corrupt", detail=Corrupt(file_id, md5, mismatch.actual))
            except _Superseded:
                problem = None
            current = self._row_md5(file_id)
            if current is None:
                return _Outcome("gone")
            if current == md5:
                # After the switch the server stores new files in the bucket only.
                if self._bucket_md5(file_id) == md5:
                    return _Outcome("present")
                return problem or _Outcome("error", detail="changed while copied; run again")
            md5 = current
        return _Outcome("error", detail="its bytes kept changing while copied; run again")

    def _copy(self, file_id: uuid.UUID, md5: str) -> int:
        """Stream the file into the bucket (verified), then publish it if its row still
        gives that md5; the number of bytes copied."""
        with open(self.source.path_for(file_id), "rb") as raw:
            pending = self.target.receive(file_id, _StoppableReader(raw, self.stop), md5)
        try:
            with self.locked([file_id]):
                if self._row_md5(file_id) != md5:
                    raise _Superseded()
                self.target.install(pending)
        finally:
            pending.discard()
        return pending.stored.size

    def _row_md5(self, file_id: uuid.UUID) -> str | None:
        with self.database.read() as session:
            return store.blob_md5s(session, [file_id]).get(file_id)

    def _bucket_md5(self, file_id: uuid.UUID) -> str | None:
        """The md5 the object's metadata gives, or None if there is no object."""
        try:
            head = self.target.client.head_object(Bucket=self.target.bucket,
                                                  Key=self.target.key_for(file_id))
        except Exception as error:
            if _error_code(error) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return head.get("Metadata", {}).get("md5")
